//! The flags that say where frames come from, how often they are classified and when a
//! label becomes the state: shared by `glimpse camera` and `glimpse serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::stream::open::NoCamera;
use glimpse_runtime::stream::{DebounceConfig, PixelFormat, SourceSpec};
use glimpse_runtime::Crop;

/// Where frames come from (shared with `glimpse serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
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
    /// With --images: start over after the last image instead of ending.
    #[arg(long = "loop", requires = "images", help_heading = "Source")]
    pub looping: bool,
    /// Read raw frames from a file or `-` (stdin), e.g. from
    /// `ffmpeg -i URL -f rawvideo -pix_fmt yuyv422 -s 640x480 -`; needs --size and --format.
    #[arg(long, value_name = "FILE|-", help_heading = "Source")]
    pub raw: Option<PathBuf>,
    /// Frame size WxH: asked of the camera, or the size of --raw frames.
    #[arg(long, value_name = "WxH", value_parser = parse_size, help_heading = "Source")]
    pub size: Option<(u32, u32)>,
    /// Frames per second: asked of the camera, or the pace of --images / --raw.
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
    #[arg(short, long, default_value_t = 0.5, help_heading = "Events")]
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
}

impl EventArgs {
    pub fn debounce(&self) -> DebounceConfig {
        DebounceConfig {
            threshold: self.threshold,
            hold_frames: self.hold_frames,
            hold: self.hold_ms.map(Duration::from_millis),
            watch: self.watch.clone(),
        }
    }
}

impl SourceArgs {
    /// The source these flags name (`None`: none was given).
    pub fn spec(&self) -> Result<Option<SourceSpec>> {
        if let Some(dir) = &self.images {
            Ok(Some(SourceSpec::Images {
                dir: dir.clone(),
                looping: self.looping,
                fps: self.fps,
            }))
        } else if let Some(raw) = &self.raw {
            let size = self
                .size
                .context("--raw needs --size WxH (the size of each frame)")?;
            let format = self
                .format
                .context("--raw needs --format (yuyv, nv12, i420, rgb24 or grey)")?;
            Ok(Some(SourceSpec::Raw {
                path: raw.clone(),
                size,
                format,
                fps: self.fps,
            }))
        } else {
            Ok(self.device.as_ref().map(|d| self.camera(d)))
        }
    }

    /// The region of interest, checked against --size when frames have a known size (a
    /// camera may answer with another size: then it is checked on each frame).
    pub fn crop(&self) -> Result<Option<Crop>> {
        if let (Some(crop), Some((w, h))) = (self.crop, self.size) {
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
