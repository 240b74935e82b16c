//! The flags that say where frames come from, how often they are classified and when a
//! label becomes the state: shared by `glimpse camera` and `glimpse serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::stream::open::NoCamera;
use glimpse_runtime::stream::{
    CollectConfig, DebounceConfig, FfmpegRequest, Named, PixelFormat, SourceSpec,
};
use glimpse_runtime::Crop;

/// Where frames come from (shared with `glimpse serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Where frames come from: /dev/videoN, rtsp://, rtsps:// or http(s):// (MJPEG and
    /// anything else ffmpeg reads), a video file (played at its own rate), a folder of
    /// images, or a FIFO or `-` of raw frames (with --size and --format).
    #[arg(long, value_name = "SOURCE", conflicts_with_all = ["device", "images", "raw"], help_heading = "Source")]
    pub source: Option<String>,
    /// The camera to read (`glimpse camera` reads /dev/video0 when no other source is
    /// given).
    #[arg(long, value_name = "DEV", conflicts_with_all = ["images", "raw"], help_heading = "Source")]
    pub device: Option<PathBuf>,
    /// Play the images of a folder (in name order) as frames, at --fps (without it, as
    /// fast as they decode: frames the classifier cannot keep up with are dropped).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "raw",
        help_heading = "Source"
    )]
    pub images: Option<PathBuf>,
    /// Start over after the last image or at the end of a video file instead of ending.
    #[arg(long = "loop", help_heading = "Source")]
    pub looping: bool,
    /// Decode a video file as fast as possible instead of at its own rate, and classify
    /// every frame (none is dropped for a newer one).
    #[arg(long, help_heading = "Source")]
    pub as_fast_as_possible: bool,
    /// Seconds without a frame from a network stream or video file before ffmpeg is
    /// killed and started again.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs, help_heading = "Source")]
    pub stall_timeout: f64,
    /// Read raw frames from a file or `-` (stdin), e.g. from
    /// `ffmpeg -i URL -f rawvideo -pix_fmt yuyv422 -s 640x480 -`; needs --size and --format.
    #[arg(long, value_name = "FILE|-", help_heading = "Source")]
    pub raw: Option<PathBuf>,
    /// Frame size WxH: asked of the camera, the size of --raw frames, or the box a network
    /// stream or video is scaled to fit in, keeping its aspect ratio (640x480 by default).
    #[arg(long, value_name = "WxH", value_parser = parse_size, help_heading = "Source")]
    pub size: Option<(u32, u32)>,
    /// Frames per second: asked of the camera, the pace of --images / --raw, or the rate a
    /// network stream or video is thinned to.
    #[arg(long, help_heading = "Source")]
    pub fps: Option<f64>,
    /// Pixel format: mjpeg, yuyv, nv12, i420 (yuv420p), rgb24 or grey (asked of the
    /// camera, or the layout of --raw frames).
    #[arg(long, value_parser = |s: &str| s.parse::<PixelFormat>(), help_heading = "Source")]
    pub format: Option<PixelFormat>,
    /// Classify only this region of each frame: x,y,w,h in pixels (100,40,320,240) or as
    /// fractions of the frame (0.5,0,0.5,1).
    #[arg(long, value_name = "X,Y,W,H", help_heading = "Source")]
    pub crop: Option<Crop>,
}

/// How often frames are classified (shared with `glimpse serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct PaceArgs {
    /// Classify only every Nth frame (saves power).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Source")]
    pub every: u64,
    /// Classify at most this many frames per second (saves power).
    #[arg(long, help_heading = "Source")]
    pub max_fps: Option<f64>,
}

/// When a label becomes the state (shared with `glimpse serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct EventArgs {
    /// A label becomes the state only at or above this probability.
    #[arg(short, long, default_value_t = 0.5, value_parser = probability, help_heading = "Events")]
    pub threshold: f32,
    /// Frames a new label must hold before the state changes.
    #[arg(long, default_value_t = 3, help_heading = "Events")]
    pub hold_frames: u32,
    /// Milliseconds a new label must hold, instead of a frame count.
    #[arg(long, help_heading = "Events")]
    pub hold_ms: Option<u64>,
    /// Only these labels are states (comma-separated); anything else is "none".
    #[arg(long, value_delimiter = ',', help_heading = "Events")]
    pub watch: Option<Vec<String>>,
    /// A label's own threshold instead of --threshold, as LABEL=P (repeat it for more
    /// labels; in the config file, `thresholds = { espresso = 0.8 }`).
    #[arg(long = "label-threshold", value_name = "LABEL=P", value_parser = label_threshold, help_heading = "Events")]
    pub label_thresholds: Vec<(String, f32)>,
}

/// `LABEL=P`: split at the last `=` (labels may hold one), P a probability.
fn label_threshold(s: &str) -> Result<(String, f32), String> {
    let (label, p) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected LABEL=P, got {s:?}"))?;
    if label.is_empty() {
        return Err(format!("expected a label before '=', got {s:?}"));
    }
    probability(p).map(|p| (label.to_string(), p))
}

/// A probability, 0 to 1.
fn probability(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a probability from 0 to 1, got {s:?}")),
    }
}

impl EventArgs {
    pub fn debounce(&self) -> DebounceConfig {
        DebounceConfig {
            threshold: self.threshold,
            thresholds: self.label_thresholds.clone(),
            hold_frames: self.hold_frames,
            hold: self.hold_ms.map(Duration::from_millis),
            watch: self.watch.clone(),
        }
    }
}

/// Which frames to keep for labelling (shared with `glimpse serve`, per camera there).
#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// Keep the frames worth a person's look in DIR/unlabelled/ (a JPEG of what the model
    /// saw and a JSON sidecar each): unsure ones, the first of each state, and a sample
    /// with --collect-every. Filed into DIR/labelled/<label>/ (by hand, or over serve's
    /// API) they are what `glimpse-train train --data DIR/labelled` reads.
    #[arg(long, value_name = "DIR", help_heading = "Collect")]
    pub collect: Option<PathBuf>,
    /// Keep frames whose top-1 probability is below this.
    #[arg(long, value_name = "P", default_value_t = 0.6, value_parser = probability, requires = "collect", help_heading = "Collect")]
    pub collect_below: f32,
    /// Keep frames whose top-1 and top-2 probabilities are closer than this.
    #[arg(long, value_name = "P", value_parser = probability, requires = "collect", help_heading = "Collect")]
    pub collect_margin: Option<f32>,
    /// Also keep about one frame every SECS (jittered), whatever the model says.
    #[arg(long, value_name = "SECS", value_parser = positive_secs, requires = "collect", help_heading = "Collect")]
    pub collect_every: Option<f64>,
    /// Keep at most this many frames a minute.
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..), requires = "collect", help_heading = "Collect")]
    pub collect_max_per_minute: u32,
    /// The unlabelled frames take at most this many MiB; the oldest go first (labelled
    /// frames are never removed).
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..), requires = "collect", help_heading = "Collect")]
    pub collect_max_mb: u64,
}

impl CollectArgs {
    /// The collector's settings, with --collect.
    pub fn config(&self) -> Option<CollectConfig> {
        let dir = self.collect.clone()?;
        Some(CollectConfig {
            below: self.collect_below,
            margin: self.collect_margin,
            every: self.collect_every.map(Duration::from_secs_f64),
            max_per_minute: self.collect_max_per_minute,
            max_bytes: self.collect_max_mb << 20,
            ..CollectConfig::new(dir)
        })
    }
}

/// A positive number of seconds.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

impl SourceArgs {
    /// The source these flags name (`None`: none was given).
    pub fn spec(&self) -> Result<Option<SourceSpec>> {
        let spec = if let Some(source) = &self.source {
            self.named(Named::parse(source)?)?
        } else if let Some(dir) = &self.images {
            self.named(Named::Folder(dir.clone()))?
        } else if let Some(raw) = &self.raw {
            self.raw(raw)?
        } else {
            match &self.device {
                Some(d) => self.camera(d),
                None => return Ok(None),
            }
        };
        let loops = matches!(
            &spec,
            SourceSpec::Images { .. } | SourceSpec::Ffmpeg(FfmpegRequest { network: false, .. })
        );
        anyhow::ensure!(
            !self.looping || loops,
            "--loop is for a folder of images or a video file"
        );
        Ok(Some(spec))
    }

    /// The source a `--source` (or `--images`) names, with the flags that go with it.
    fn named(&self, named: Named) -> Result<SourceSpec> {
        Ok(match named {
            Named::Device(device) => self.camera(device),
            Named::Folder(dir) => SourceSpec::Images {
                dir,
                looping: self.looping,
                fps: self.fps,
            },
            Named::Pipe(path) => self.raw(&path)?,
            // A raw pixel format says a file holds raw frames, not a video.
            Named::File(path) if self.format.is_some_and(|f| f != PixelFormat::Mjpeg) => {
                self.raw(&path)?
            }
            Named::File(path) => self.ffmpeg(path.display().to_string(), false)?,
            Named::Url(url) => self.ffmpeg(url, true)?,
        })
    }

    /// Raw frames of --size and --format from `path` (`-`: stdin).
    fn raw(&self, path: &std::path::Path) -> Result<SourceSpec> {
        let size = self
            .size
            .context("raw frames need --size WxH (the size of each frame)")?;
        let format = self
            .format
            .context("raw frames need --format (yuyv, nv12, i420, rgb24 or grey)")?;
        Ok(SourceSpec::Raw {
            path: path.to_owned(),
            size,
            format,
            fps: self.fps,
        })
    }

    /// A network stream or video file, decoded by ffmpeg.
    fn ffmpeg(&self, input: String, network: bool) -> Result<SourceSpec> {
        anyhow::ensure!(
            self.format.is_none(),
            "--format is for cameras and raw frames: ffmpeg decodes {} whatever its format",
            glimpse_runtime::stream::ffmpeg::redact(&input)
        );
        Ok(SourceSpec::Ffmpeg(FfmpegRequest {
            input,
            network,
            size: self.size.unwrap_or((640, 480)),
            fps: self.fps,
            fast: self.as_fast_as_possible,
            looping: self.looping,
            stall: Duration::from_secs_f64(self.stall_timeout),
        }))
    }

    /// The region of interest, checked against the frame size when frames have a known
    /// size (a camera may answer with another size: then it is checked on each frame).
    pub fn crop(&self, spec: &SourceSpec) -> Result<Option<Crop>> {
        if let (Some(crop), Some((w, h))) = (self.crop, spec.frame_size()) {
            crop.rect(w, h)?;
        }
        Ok(self.crop)
    }

    /// The camera at `device`, with the size, rate and format asked for.
    pub fn camera(&self, device: impl Into<PathBuf>) -> SourceSpec {
        SourceSpec::Camera {
            device: device.into(),
            size: self.size,
            fps: self.fps,
            format: self.format,
        }
    }
}

/// Adds what to do to the error of opening a camera in a build without cameras.
pub fn hint(err: anyhow::Error) -> anyhow::Error {
    if err.is::<NoCamera>() {
        anyhow::anyhow!("{err}: rebuild with `cargo build --release -p glimpse-runtime --features camera`, or read frames with --raw or --images")
    } else {
        err
    }
}
