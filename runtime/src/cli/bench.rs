//! `glimpse bench`: how fast a model runs here, stage by stage: model load and first
//! inference, then decode, preprocessing and inference latency percentiles over real
//! images, throughput with N worker threads, and peak memory. A table, or JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use fast_image_resize::Resizer;
use glimpse_runtime::classifier::percentile;
use glimpse_runtime::decode::image_files_in;
use glimpse_runtime::{decode, Classifier, Limits};
use image::metadata::Orientation;
use serde::Serialize;

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of images to run (default: the shipped sample photos).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Worker threads classifying images concurrently (each runs one image at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Passes over the images after the warm-up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Passes before measuring (caches, allocator, CPU frequency).
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = BenchFormat::Table)]
    format: BenchFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchFormat {
    Table,
    Json,
}

/// Latency percentiles of one stage, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn percentiles(v: Vec<Duration>) -> Percentiles {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    Percentiles {
        p50: percentile(&ms, 0.50),
        p90: percentile(&ms, 0.90),
        p99: percentile(&ms, 0.99),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    images: usize,
    threads: u32,
    intra_threads: u32,
    iterations: u32,
    load_ms: f64,
    first_inference_ms: f64,
    decode_ms: Percentiles,
    preprocess_ms: Percentiles,
    inference_ms: Percentiles,
    total_ms: Percentiles,
    images_per_second: f64,
    peak_rss_mib: Option<f64>,
}

/// The process's peak resident memory (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn image_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let files = image_files_in(dir).with_context(|| format!("reading {}", dir.display()))?;
    if files.is_empty() {
        bail!("{}: no images to benchmark", dir.display());
    }
    files
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), bytes))
        })
        .collect()
}

/// One timed classification: (decode, preprocess, inference).
fn timed(c: &Classifier, bytes: &[u8], resizer: &mut Resizer) -> Result<[Duration; 3]> {
    let t0 = Instant::now();
    let img = decode(bytes, &Limits::default())?;
    let t1 = Instant::now();
    let input = c.fed_tensor(&img, Orientation::NoTransforms, resizer);
    let t2 = Instant::now();
    c.run_fed(input)?;
    Ok([t1 - t0, t2 - t1, t2.elapsed()])
}

pub fn run(args: Args) -> Result<ExitCode> {
    let dir = args
        .images
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../samples")));
    let images = image_files(&dir)?;
    let t0 = Instant::now();
    let (path, file) = args.model.read()?;
    let classifier = args.model.classifier_for(&path, file)?;
    let load = t0.elapsed();
    let mut resizer = Resizer::new();
    let first =
        timed(&classifier, &images[0].1, &mut resizer).with_context(|| images[0].0.clone())?[2];
    for _ in 0..args.warmup {
        for (name, bytes) in &images {
            timed(&classifier, bytes, &mut resizer).with_context(|| name.clone())?;
        }
    }

    let started = Instant::now();
    let samples = measure(&classifier, &images, args.threads, args.iterations)?;
    let wall = started.elapsed();
    let stage = |i: usize| percentiles(samples.iter().map(|s| s[i]).collect());
    let report = Report {
        model: path.display().to_string(),
        images: images.len(),
        threads: args.threads,
        intra_threads: args.model.intra_threads,
        iterations: args.iterations,
        load_ms: load.as_secs_f64() * 1e3,
        first_inference_ms: first.as_secs_f64() * 1e3,
        decode_ms: stage(0),
        preprocess_ms: stage(1),
        inference_ms: stage(2),
        total_ms: percentiles(samples.iter().map(|s| s[0] + s[1] + s[2]).collect()),
        images_per_second: samples.len() as f64 / wall.as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
    };
    let text = match args.format {
        BenchFormat::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
        BenchFormat::Table => table(&report)?,
    };
    super::print(&text).context("writing output")?;
    Ok(ExitCode::SUCCESS)
}

/// Per-stage timings of `iterations` passes over `images` by `threads` workers, which take
/// image indices from a shared counter until every pass is done.
fn measure(
    classifier: &Classifier,
    images: &[(String, Vec<u8>)],
    threads: u32,
    iterations: u32,
) -> Result<Vec<[Duration; 3]>> {
    let total = images.len() * iterations as usize;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Vec<[Duration; 3]>> {
                    let mut resizer = Resizer::new();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok(out);
                        }
                        let (name, bytes) = &images[i % images.len()];
                        out.push(
                            timed(classifier, bytes, &mut resizer).with_context(|| name.clone())?,
                        );
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench worker panicked"))
            .collect::<Result<Vec<_>>>()
            .map(|v| v.concat())
    })
}

/// The report as a readable table.
fn table(report: &Report) -> Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "{}: {} images x {} passes, {} worker thread(s), {} thread(s) per inference",
        report.model, report.images, report.iterations, report.threads, report.intra_threads
    )?;
    writeln!(
        text,
        "model load {:.1} ms, first inference {:.1} ms",
        report.load_ms, report.first_inference_ms
    )?;
    writeln!(
        text,
        "| stage | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---:|---:|---:|---:|"
    )?;
    for (name, p) in [
        ("decode", &report.decode_ms),
        ("preprocess", &report.preprocess_ms),
        ("inference", &report.inference_ms),
        ("total", &report.total_ms),
    ] {
        writeln!(
            text,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.p50, p.p90, p.p99, p.mean
        )?;
    }
    let rss = report
        .peak_rss_mib
        .map_or_else(|| "unknown".into(), |m| format!("{m:.1} MiB"));
    writeln!(
        text,
        "throughput {:.1} images/s; peak RSS {rss}",
        report.images_per_second
    )?;
    Ok(text)
}
