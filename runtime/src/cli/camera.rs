//! `glimpse camera`: live classification of a camera, a folder of images played as video,
//! or raw frames on stdin, printing a label stream (per-frame latency, achieved FPS,
//! dropped frames) and debounced state-change events as JSON lines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use glimpse_runtime::classifier::millis;
use glimpse_runtime::fsutil::safe_name;
use glimpse_runtime::stream::collect::{Offer, Outcome};
use glimpse_runtime::stream::{
    live, Classified, Collector, Debouncer, Frame, LiveOptions, OpenedSource,
};
use glimpse_runtime::{Crop, Limits, Ranked};
use image::RgbImage;
use serde_json::json;

use super::source_args::{CollectArgs, EventArgs, PaceArgs, SourceArgs};
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
    #[command(flatten)]
    collect: CollectArgs,
    /// Print only the state-change events, not every frame.
    #[arg(long, help_heading = "Events")]
    events_only: bool,
    /// How frames are printed (events are always JSON lines).
    #[arg(short = 'f', long, value_enum, default_value_t = FrameFormat::Table)]
    output: FrameFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FrameFormat {
    /// One readable line per frame.
    Table,
    /// One JSON object per frame.
    Json,
}

/// The top-1 of one frame.
/// What a rejected frame is called in the table and in --save file names.
const UNKNOWN: &str = "unknown";

struct Prediction {
    /// The best class (even when the image is rejected: what the model guessed).
    label: String,
    /// The model's "none of the above" (`glimpse.reject`) refused the frame.
    rejected: bool,
    index: usize,
    probability: f32,
    infer: Duration,
    /// The top-5, best first.
    top: Vec<Ranked<'static>>,
}

impl Prediction {
    /// The label the frame line and `--save` show: `unknown` when rejected.
    fn shown(&self) -> &str {
        if self.rejected {
            UNKNOWN
        } else {
            &self.label
        }
    }
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
    Err(super::source_args::hint(
        glimpse_runtime::stream::open::NoCamera.into(),
    ))
}

/// A label made safe for a file name (at most 40 characters).
fn file_label(label: &str) -> String {
    let s: String = safe_name(label).chars().take(40).collect();
    s.trim_matches('_').to_string()
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.list {
        return list_devices();
    }
    let (path, file) = args.model.read()?;
    let classifier = args.model.classifier_for(&path, file)?;
    args.events
        .debounce()
        .check_labels(&classifier.labels)
        .context("--watch or --label-threshold")?;
    let limits = Limits::default();
    let source = args
        .source
        .spec()?
        .unwrap_or_else(|| args.source.camera("/dev/video0"));
    let crop = args.source.crop(&source)?;
    let OpenedSource { opener, reopen, .. } = source
        .open(limits, false)
        .map_err(super::source_args::hint)?;
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let collector = match args.collect.config() {
        Some(cfg) => Some(CollectTo {
            model_sha256: glimpse_runtime::fsutil::sha256_hex(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            ),
            crop: crop.map(|c| c.to_string()),
            collector: Collector::new(cfg, "camera").context("--collect")?,
            kept: 0,
            duplicates: 0,
            rate_limited: 0,
            failed: 0,
        }),
        None => None,
    };
    let (stop, signalled) = stop_on_signals()?;
    let opts = LiveOptions {
        every: args.pace.every,
        max_fps: args.pace.max_fps,
        frames: args.frames,
        reopen,
        ..LiveOptions::default()
    };
    let mut printer = Printer::new(&args, stop.clone(), collector);
    let classify = |frame: &Frame| predict(&classifier, frame, &limits, crop);
    let stats = live::run(opener, classify, |c| printer.report(c), &opts, stop);
    if let Some(err) = printer.write_error {
        // A closed pipe ends quietly in `main`; anything else is reported.
        return Err(anyhow::Error::from(err).context("writing output"));
    }
    let secs = printer.started.elapsed().as_secs_f64();
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
    if let Some(c) = &printer.collector {
        eprintln!(
            "glimpse camera: {} frames collected into {} ({} failed), {} near-duplicates and {} over the rate limit skipped",
            c.kept,
            args.collect.collect.as_deref().unwrap_or(Path::new("")).display(),
            c.failed,
            c.duplicates,
            c.rate_limited
        );
    }
    Ok(super::exit_code(
        stats.errors > 0
            || printer.failed_saves > 0
            || printer.collector.as_ref().is_some_and(|c| c.failed > 0)
            || (stats.source_errors > 0 && !reopen),
    ))
}

/// `stop` ends the loop (a signal, or --frames reached); `signalled` remembers a signal.
/// A second signal while stopping ends the process at once.
fn stop_on_signals() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, signalled.clone())
            .and_then(|_| signal_hook::flag::register(signal, signalled.clone()))
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .context("installing the signal handler")?;
    }
    Ok((stop, signalled))
}

/// The top-1 of a frame, with the frame's pixels (to save).
fn predict(
    classifier: &glimpse_runtime::Classifier,
    frame: &Frame,
    limits: &Limits,
    crop: Option<Crop>,
) -> Result<(Prediction, RgbImage)> {
    let img = frame.to_rgb_within(limits, crop)?;
    let (scores, t) = classifier.classify(&img)?;
    let top: Vec<Ranked<'static>> = classifier
        .top_k(&scores.probs, 5)
        .into_iter()
        .map(Ranked::into_owned)
        .collect();
    let best = top.first().context("the model gives no classes")?;
    let prediction = Prediction {
        label: best.label.to_string(),
        rejected: scores.rejected,
        index: best.index,
        probability: best.probability,
        infer: t.preprocess + t.inference,
        top,
    };
    Ok((prediction, img))
}

/// Where --collect keeps frames, and what it did.
struct CollectTo {
    collector: Collector,
    model_sha256: String,
    crop: Option<String>,
    kept: u64,
    duplicates: u64,
    rate_limited: u64,
    failed: u64,
}

/// Prints each classified frame and each state change, saves frames (--save) and keeps
/// those worth labelling (--collect).
struct Printer<'a> {
    args: &'a Args,
    collector: Option<CollectTo>,
    debouncer: Debouncer,
    started: Instant,
    failed_saves: u64,
    /// Set on the first failed write to stdout (a closed pipe, say), which ends the run.
    write_error: Option<std::io::Error>,
    stop: Arc<AtomicBool>,
}

impl<'a> Printer<'a> {
    fn new(args: &'a Args, stop: Arc<AtomicBool>, collector: Option<CollectTo>) -> Self {
        Printer {
            args,
            collector,
            debouncer: Debouncer::new(args.events.debounce()),
            started: Instant::now(),
            failed_saves: 0,
            write_error: None,
            stop,
        }
    }

    fn report(&mut self, c: Classified<(Prediction, RgbImage)>) {
        let (p, img) = &c.result;
        let mut text = String::new();
        if !self.args.events_only {
            text.push_str(&self.frame_line(&c, p));
            text.push('\n');
        }
        let now = Instant::now();
        let event = match p.rejected {
            true => self.debouncer.update_rejected(now),
            false => self.debouncer.update(&p.label, p.probability, now),
        };
        if let Some(collect) = &mut self.collector {
            collect.offer(c.frame.seq, p, img, event.is_some());
        }
        if let Some(e) = event {
            let event = json!({
                "type": "event",
                "frame": c.frame.seq,
                "time_s": (self.started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
                "state": e.label,
                "previous": e.previous,
                "confidence": e.confidence,
                "held_frames": e.frames,
                "held_ms": e.held_ms,
            });
            text.push_str(&format!("{event}\n"));
        }
        if let Err(e) = super::print(&text) {
            self.stop.store(true, Ordering::Relaxed);
            self.write_error.get_or_insert(e);
        }
        if let Some(dir) = &self.args.save {
            self.save(dir, c.frame.seq, p.shown(), img);
        }
    }

    fn frame_line(&self, c: &Classified<(Prediction, RgbImage)>, p: &Prediction) -> String {
        match self.args.output {
            FrameFormat::Table => format!(
                "frame {:>6}  {:<30} {:>6.2}%  latency {:>5.1} ms  {:>5.1} fps  dropped {}",
                c.frame.seq,
                p.shown(),
                p.probability * 100.0,
                c.latency.as_secs_f64() * 1e3,
                c.fps,
                c.stats.dropped
            ),
            FrameFormat::Json => json!({
                "type": "frame",
                "frame": c.frame.seq,
                "label": (!p.rejected).then_some(&p.label),
                "rejected": p.rejected,
                "index": p.index,
                "probability": p.probability,
                "latency_ms": millis(c.latency),
                "inference_ms": millis(p.infer),
                "fps": (c.fps * 100.0).round() / 100.0,
                "dropped": c.stats.dropped,
            })
            .to_string(),
        }
    }

    /// Writes the frame as DIR/<frame>-<label>.png; a failure is warned about and counted.
    fn save(&mut self, dir: &Path, seq: u64, label: &str, img: &RgbImage) {
        let path = dir.join(format!("{seq:06}-{}.png", file_label(label)));
        let mut png = Vec::new();
        let saved = img
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(glimpse_runtime::fsutil::atomic_write(&path, &png)?));
        if let Err(e) = saved {
            self.failed_saves += 1;
            log::warn!("{}: {e:#}", path.display());
        }
    }
}

impl CollectTo {
    /// Offers a classified frame; a failure to keep it is warned about and counted.
    fn offer(&mut self, seq: u64, p: &Prediction, img: &RgbImage, state_change: bool) {
        let offer = Offer {
            image: img,
            top: &p.top,
            state_change,
            rejected: p.rejected,
            frame: seq,
            model_sha256: &self.model_sha256,
            crop: self.crop.clone(),
        };
        match self.collector.offer(&offer, Instant::now()) {
            Ok(Some(Outcome::Kept { id, reason })) => {
                self.kept += 1;
                log::info!("collected frame {seq} as {id} ({reason:?})");
            }
            Ok(Some(Outcome::Duplicate)) => self.duplicates += 1,
            Ok(Some(Outcome::RateLimited)) => self.rate_limited += 1,
            Ok(None) => {}
            Err(e) => {
                self.failed += 1;
                log::warn!("--collect: frame {seq}: {e}");
            }
        }
    }
}
