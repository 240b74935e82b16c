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
use glimpse_runtime::stream::{live, Classified, Debouncer, LiveOptions, OpenedSource};
use glimpse_runtime::Limits;
use serde_json::json;

use super::source_args::{EventArgs, PaceArgs, SourceArgs};
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
    let source = args
        .source
        .spec()?
        .unwrap_or_else(|| args.source.camera("/dev/video0"));
    let OpenedSource { opener, reopen, .. } =
        source.open(limits).map_err(super::source_args::hint)?;
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
                .and_then(|_| {
                    Ok(glimpse_runtime::fsutil::atomic_write(
                        &dir.join(&name),
                        &png,
                    )?)
                });
            if let Err(e) = saved {
                failed_saves += 1;
                log::warn!("{}: {e:#}", dir.join(&name).display());
            }
        }
    };
    let stats = live::run(opener, classify, report, &opts, stop.clone());
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
