//! `glimpse camera`: live classification of a camera, a folder of images played as video,
//! or raw frames on stdin, printing a label stream (per-frame latency, achieved FPS,
//! dropped frames) and debounced state-change events as JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::stream::{
    live, Classified, DebounceConfig, Debouncer, FolderSource, FrameSource, LiveOptions, Opener,
    PixelFormat, RawSource,
};
use glimpse_runtime::Limits;
use serde_json::json;

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// List the cameras and the formats and frame sizes they offer, then exit.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pace: PaceArgs,
    /// Stop after this many classified frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Keep every classified frame as DIR/<frame>-<label>.png.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    #[command(flatten)]
    events: EventArgs,
    /// Print only the state-change events, not every frame.
    #[arg(long, help_heading = "Events")]
    events_only: bool,
    /// How frames are printed (events are always JSON lines).
    #[arg(short = 'f', long, value_enum, default_value_t = FrameFormat::Table)]
    output: FrameFormat,
}

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
    /// Opens the source given (`None`: none was): its opener, whether a failure is
    /// retried (a camera) and a description.
    pub fn opener(&self, limits: Limits) -> Result<Option<(Opener, bool, String)>> {
        if let Some(dir) = &self.images {
            let source = FolderSource::open(dir.clone(), self.fps, limits)?.looping(self.looping);
            let describe = source.describe();
            Ok(Some((once(Box::new(source)), false, describe)))
        } else if let Some(raw) = &self.raw {
            let size = self
                .size
                .context("--raw needs --size WxH (the size of each frame)")?;
            let format = self
                .format
                .context("--raw needs --format (yuyv, nv12, i420, rgb24 or grey)")?;
            let (name, reader): (String, Box<dyn std::io::Read + Send>) = if raw.as_os_str() == "-"
            {
                ("stdin".into(), Box::new(std::io::stdin()))
            } else {
                (
                    raw.display().to_string(),
                    Box::new(
                        std::fs::File::open(raw)
                            .with_context(|| format!("opening {}", raw.display()))?,
                    ),
                )
            };
            let source = RawSource::new(name, reader, size, format, self.fps, &limits)?;
            let describe = source.describe();
            Ok(Some((once(Box::new(source)), false, describe)))
        } else if let Some(device) = &self.device {
            Ok(Some((
                camera_opener(self, device.clone())?,
                true,
                device.display().to_string(),
            )))
        } else {
            Ok(None)
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FrameFormat {
    /// One readable line per frame.
    Table,
    /// One JSON object per frame.
    Json,
}

/// The top-1 of one frame.
struct Prediction {
    label: String,
    index: usize,
    probability: f32,
    infer: Duration,
}

#[cfg(feature = "camera")]
fn camera_opener(args: &SourceArgs, device: PathBuf) -> Result<Opener> {
    use glimpse_runtime::stream::v4l2::{CameraRequest, CameraSource};
    let req = CameraRequest {
        device,
        size: args.size,
        fps: args.fps.map(|f| f.round().max(1.0) as u32),
        format: args.format,
    };
    Ok(Box::new(move || {
        Ok(Box::new(CameraSource::open(&req)?) as Box<dyn FrameSource>)
    }))
}

#[cfg(not(feature = "camera"))]
fn camera_opener(_: &SourceArgs, _: PathBuf) -> Result<Opener> {
    Err(anyhow::anyhow!(NO_CAMERA))
}

#[cfg(not(feature = "camera"))]
const NO_CAMERA: &str = "this glimpse was built without camera support (the `camera` feature, which needs libclang at build time): rebuild with `cargo build --release -p glimpse-runtime --features camera`, or read frames with --raw or --images";

/// A source that is opened once: an ended or failed stream is not reopened.
fn once(source: Box<dyn FrameSource>) -> Opener {
    let mut source = Some(source);
    Box::new(move || source.take().context("the stream cannot be reopened"))
}

fn list_devices() -> Result<ExitCode> {
    #[cfg(feature = "camera")]
    {
        let mut text = String::new();
        for line in glimpse_runtime::stream::v4l2::describe_devices() {
            text.push_str(&line);
            text.push('\n');
        }
        super::print(&text).context("writing output")?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "camera"))]
    Err(anyhow::anyhow!(NO_CAMERA))
}

/// A label made safe for a file name.
fn file_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    s.trim_matches('_').to_string()
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.list {
        return list_devices();
    }
    let (path, file) = args.model.read()?;
    let classifier = args.model.classifier_for(&path, file)?;
    let limits = Limits::default();
    let (open, reopen, _) = match args.source.opener(limits)? {
        Some(source) => source,
        None => {
            let device = PathBuf::from("/dev/video0");
            (
                camera_opener(&args.source, device.clone())?,
                true,
                device.display().to_string(),
            )
        }
    };
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // `stop` ends the loop (a signal, or --frames reached); `signalled` remembers why.
    let stop = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, signalled.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, signalled.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    let opts = LiveOptions {
        every: args.pace.every,
        max_fps: args.pace.max_fps,
        frames: args.frames,
        reopen,
        ..LiveOptions::default()
    };
    let mut debouncer = Debouncer::new(args.events.debounce());
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut failed_saves = 0u64;
    let classify =
        |frame: &glimpse_runtime::stream::Frame| -> Result<(Prediction, image::RgbImage)> {
            let img = frame.to_rgb(&limits)?;
            let (probs, t) = classifier.classify(&img)?;
            let top = classifier.top_k(&probs, 1);
            let best = top.first().context("the model gives no classes")?;
            Ok((
                Prediction {
                    label: best.label.to_string(),
                    index: best.index,
                    probability: best.probability,
                    infer: t.preprocess + t.inference,
                },
                img,
            ))
        };
    let report = |c: Classified<(Prediction, image::RgbImage)>| {
        let (p, img) = &c.result;
        let mut out = stdout.lock();
        if !args.events_only {
            let line = match args.output {
                FrameFormat::Table => format!(
                    "frame {:>6}  {:<30} {:>6.2}%  latency {:>5.1} ms  {:>5.1} fps  dropped {}",
                    c.frame.seq,
                    p.label,
                    p.probability * 100.0,
                    c.latency.as_secs_f64() * 1e3,
                    c.fps,
                    c.stats.dropped
                ),
                FrameFormat::Json => json!({
                    "type": "frame",
                    "frame": c.frame.seq,
                    "label": p.label,
                    "index": p.index,
                    "probability": p.probability,
                    "latency_ms": (c.latency.as_secs_f64() * 1e3 * 1e3).round() / 1e3,
                    "inference_ms": (p.infer.as_secs_f64() * 1e3 * 1e3).round() / 1e3,
                    "fps": (c.fps * 100.0).round() / 100.0,
                    "dropped": c.stats.dropped,
                })
                .to_string(),
            };
            let _ = writeln!(out, "{line}");
        }
        if let Some(e) = debouncer.update(&p.label, p.probability, Instant::now()) {
            let _ = writeln!(
                out,
                "{}",
                json!({
                    "type": "event",
                    "frame": c.frame.seq,
                    "time_s": (started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
                    "state": e.label,
                    "previous": e.previous,
                    "confidence": e.confidence,
                    "held_frames": e.frames,
                    "held_ms": e.held_ms,
                })
            );
        }
        let _ = out.flush();
        if let Some(dir) = &args.save {
            let name = format!("{:06}-{}.png", c.frame.seq, file_label(&p.label));
            let mut png = Vec::new();
            let saved = img
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(anyhow::Error::from)
                .and_then(|_| glimpse_runtime::fsutil::atomic_write(&dir.join(&name), &png));
            if let Err(e) = saved {
                failed_saves += 1;
                log::warn!("{}: {e:#}", dir.join(&name).display());
            }
        }
    };
    let stats = live::run(open, classify, report, &opts, stop.clone());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "glimpse camera: {} frames captured, {} classified ({:.1}/s), {} dropped, {} skipped, {} failed, {} source errors{}",
        stats.captured,
        stats.classified,
        stats.classified as f64 / secs.max(1e-9),
        stats.dropped,
        stats.skipped,
        stats.errors,
        stats.source_errors,
        if signalled.load(Ordering::Relaxed) {
            "; stopped by a signal"
        } else {
            ""
        }
    );
    Ok(super::exit_code(
        stats.errors > 0 || failed_saves > 0 || (stats.source_errors > 0 && !reopen),
    ))
}
