//! `glimpse-train bench`: training steps per second of a network on a batch of real images,
//! as a table or JSON (the PyTorch side of the comparison is `benches/torch_train.py`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::ValueEnum;
use fast_image_resize::Resizer;
use glimpse_runtime::classifier::percentile;
use glimpse_runtime::{Channels, Layout, Preprocess, Resize};
use glimpse_trainer::data::{self, Format, LoadOptions};
use glimpse_trainer::device::{Accelerator, TrainDevice};
use glimpse_trainer::model::{Arch, ModelConfig};
use glimpse_trainer::training::{OptimConfig, Optimizer, Schedule};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset (IDX folder, class folders or CSV): its first --batch-size training images
    /// are the batch.
    data: PathBuf,
    /// Network to train.
    #[arg(long, value_enum, default_value_t = Arch::SmallCnn)]
    arch: Arch,
    /// Channel multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Untimed steps first (allocator, caches).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// What to train on (as `glimpse-train train --device`).
    #[arg(long, value_enum, default_value_t = Accelerator::Cpu)]
    device: Accelerator,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    format: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(n) = args.threads {
        // Before the first parallel operation; an error means a pool already exists.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let device = TrainDevice::open(args.device)?;
    let ds = data::load(&args.data, &LoadOptions::default())?;
    ensure!(
        ds.train.len() >= args.batch_size,
        "{}: expected at least {} training images for the batch, got {}",
        args.data.display(),
        args.batch_size,
        ds.train.len()
    );
    // The images at their own size (the first one's), grey for IDX as `train` does.
    let (width, height) = ds.train[0].image.dimensions();
    let channels = if ds.format == Format::Idx {
        Channels::Gray
    } else {
        Channels::Rgb
    };
    let pp = Preprocess {
        width,
        height,
        resize: Resize::Stretch,
        mean: vec![127.5; channels.count()],
        std: vec![127.5; channels.count()],
        channels,
        layout: Layout::Nchw,
    };
    let shape = pp.shape(args.batch_size);
    let per: usize = shape[1..].iter().product();
    let mut x = vec![0f32; per * args.batch_size];
    let mut resizer = Resizer::new();
    for (out, ex) in x.chunks_mut(per).zip(&ds.train) {
        pp.normalize_into(&pp.fit(&ex.image, &mut resizer), out);
    }
    let y: Vec<i64> = ds.train[..args.batch_size]
        .iter()
        .map(|e| e.label as i64)
        .collect();
    let model = ModelConfig::new(
        args.arch,
        ds.classes.len(),
        channels.count(),
        [height as usize, width as usize],
    )
    .with_width(args.width);
    // What `glimpse-train train` runs by default: AdamW, lr 2e-3, weight decay 5e-4.
    let optim = OptimConfig::new(Optimizer::Adamw, Schedule::Constant)
        .with_lr(2e-3)
        .with_weight_decay(5e-4);
    let times = glimpse_trainer::bench::training_steps(
        &model,
        &optim,
        &device,
        x,
        shape,
        y,
        args.warmup,
        args.steps,
    )
    .context("timing training steps")?;
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let total: f64 = ms.iter().sum::<f64>() / 1e3;
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| percentile(&ms, q);
    let report = serde_json::json!({
        "framework": "burn 0.22",
        "device": device.name(),
        "arch": args.arch,
        "width": args.width,
        "input": shape,
        "classes": ds.classes.len(),
        "threads": rayon::current_num_threads(),
        "steps": args.steps,
        "step_ms": {"p50": at(0.5), "p90": at(0.9), "min": ms[0]},
        "steps_per_second": args.steps as f64 / total,
        "images_per_second": (args.steps * args.batch_size) as f64 / total,
    });
    match args.format {
        Output::Json => println!("{report:#}"),
        Output::Table => {
            println!(
                "{:?} width {} on {:?} (batch, channels, height, width), {}, {} threads, {} timed steps",
                args.arch,
                args.width,
                shape,
                device.name(),
                rayon::current_num_threads(),
                args.steps
            );
            println!("| step p50 | step p90 | steps/s | images/s |\n|---:|---:|---:|---:|");
            println!(
                "| {:.1} ms | {:.1} ms | {:.2} | {:.0} |",
                at(0.5),
                at(0.9),
                report["steps_per_second"].as_f64().unwrap_or(0.0),
                report["images_per_second"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
