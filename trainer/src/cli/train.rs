//! `glimpse-train train`: a dataset in; a checked ONNX bundle, its evaluation report,
//! plots and training configuration out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::{bundle::default_short_side, Channels, Layout, Preprocess, Resize};
use glimpse_trainer::augment::Augment;
use glimpse_trainer::data::{self, Format, LoadOptions};
use glimpse_trainer::eval::{self, Report, ReportPaths};
use glimpse_trainer::export;
use glimpse_trainer::model::{Arch, ModelConfig};
use glimpse_trainer::plot::{self, Series};
use glimpse_trainer::training::{self, Optimizer, Schedule, TrainingConfig};

use super::data_args::DataArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dataset: a folder with one sub-folder per class (optionally split into train/
    /// val/ test/), a CSV of path,label, or a folder of IDX files (MNIST format).
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Where to write the ONNX bundle; the report, plots and config go next to it.
    #[arg(short, long, value_name = "MODEL.onnx")]
    out: PathBuf,
    /// Network architecture.
    #[arg(long, value_enum, default_value_t = Arch::SmallCnn)]
    arch: Arch,
    /// Model input size WxH (default: the IDX image size, else 64x64 for small-cnn and
    /// 128x128 for mobilenet).
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    input_size: Option<(u32, u32)>,
    /// Input channels (default: gray for IDX, rgb otherwise).
    #[arg(long, value_parser = |s: &str| s.parse::<Channels>())]
    channels: Option<Channels>,
    /// Channel-width multiplier of the network.
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    #[arg(long, default_value_t = 0.25)]
    dropout: f64,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    #[arg(long, value_enum, default_value_t = Optimizer::Adamw)]
    optimizer: Optimizer,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Momentum for SGD.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Label smoothing for the loss (0 = off).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long)]
    patience: Option<usize>,
    /// Augmentations: any of crop[:MIN_AREA], flip, rotate[:DEGREES], color[:AMOUNT], or
    /// none (default: crop, flip, rotate, color for photos; crop:0.8 for small images).
    #[arg(long, value_delimiter = ',')]
    augment: Option<Vec<String>>,
    #[command(flatten)]
    data_args: DataArgs,
    /// Train on at most this many images per class (a seeded subset).
    #[arg(long)]
    limit_per_class: Option<usize>,
    /// Refuse to train when a class has fewer training images than this (classes with
    /// fewer than 20 are trained but flagged).
    #[arg(long, default_value_t = 5)]
    min_per_class: usize,
    /// Continue an interrupted run from its checkpoint (<out>.ckpt/).
    #[arg(long)]
    resume: bool,
    /// Keep the checkpoint folder after a successful run.
    #[arg(long)]
    keep_checkpoint: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn augment_from(names: &[String]) -> Result<Augment> {
    let mut a = Augment::NONE;
    for n in names {
        let (name, value) = n
            .trim()
            .split_once(':')
            .map_or((n.trim(), None), |(a, b)| (a, Some(b)));
        let value = |default: f32| -> Result<f32> {
            value.map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| anyhow::anyhow!("augmentation {n:?}: expected a number after ':'"))
            })
        };
        match name {
            "none" => {}
            "crop" => a.crop_scale_min = value(0.6)?.clamp(0.05, 1.0),
            "flip" => a.flip = true,
            "rotate" => a.rotate_degrees = value(10.0)?,
            "color" => a.color_jitter = value(0.2)?,
            other => bail!("unknown augmentation {other:?}: expected crop[:MIN_AREA], flip, rotate[:DEGREES], color[:AMOUNT] or none"),
        }
    }
    Ok(a)
}

pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(n) = args.threads {
        // Must happen before the first parallel operation; an error means it already did.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let opts = LoadOptions {
        limit_per_class: args.limit_per_class,
        ..args.data_args.load_options(None)?
    };
    let ds = data::load(&args.data, &opts)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let too_few: Vec<String> = ds
        .report
        .class_counts
        .iter()
        .filter(|(_, n)| *n < args.min_per_class)
        .map(|(c, n)| format!("{c} ({n})"))
        .collect();
    if !too_few.is_empty() {
        let list = too_few;
        bail!(
            "every class needs at least {} training images (--min-per-class); too few in: {}",
            args.min_per_class,
            list.join(", ")
        );
    }
    println!(
        "data: {} classes, {} train / {} val / {} test images; {}{}",
        ds.classes.len(),
        ds.train.len(),
        ds.val.len(),
        ds.test.len(),
        ds.report.split,
        if ds.report.skipped.is_empty() {
            String::new()
        } else {
            format!("; {} unreadable files skipped", ds.report.skipped.len())
        }
    );

    // IDX data (digits, clothes) is small and grey and used as it is. Other small images
    // of one size (28x28 thumbnails, say) keep their size too; photos get a centre crop
    // at the architecture's usual input size.
    let native = ds.train[0].image.dimensions();
    let uniform_small =
        native.0.max(native.1) <= 64 && ds.train.iter().all(|e| e.image.dimensions() == native);
    let (width, height) = args.input_size.unwrap_or(if uniform_small {
        native
    } else if args.arch == Arch::Mobilenet {
        (128, 128)
    } else {
        (64, 64)
    });
    let channels = args.channels.unwrap_or(if ds.format == Format::Idx {
        Channels::Gray
    } else {
        Channels::Rgb
    });
    let resize = if uniform_small && (width, height) == native {
        Resize::Stretch
    } else {
        Resize::CenterCrop {
            short_side: default_short_side(width.max(height)),
        }
    };
    let mut pp = Preprocess {
        width,
        height,
        resize,
        mean: vec![0.0; channels.count()],
        std: vec![1.0; channels.count()],
        channels,
        layout: Layout::Nchw,
    };
    let (mean, std) = training::channel_stats(&ds.train, &pp);
    (pp.mean, pp.std) = (mean, std);
    let augment = match &args.augment {
        Some(names) => augment_from(names)?,
        None if uniform_small => Augment {
            crop_scale_min: 0.8,
            ..Augment::NONE
        },
        None => augment_from(&[
            "crop".into(),
            "flip".into(),
            "rotate".into(),
            "color".into(),
        ])?,
    };
    let cfg = TrainingConfig {
        model: ModelConfig {
            arch: args.arch,
            classes: ds.classes.len(),
            in_channels: channels.count(),
            input_size: [height as usize, width as usize],
            width: args.width,
            dropout: args.dropout,
        },
        preprocess: pp.clone(),
        augment,
        optimizer: args.optimizer,
        schedule: args.schedule,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        momentum: args.momentum,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: (args.label_smoothing > 0.0).then_some(args.label_smoothing),
        patience: args.patience,
        seed: args.data_args.seed,
    };
    println!("preprocess: {pp}");

    let paths = ReportPaths::next_to(&args.out);
    let config_path = paths.json.with_file_name(format!(
        "{}.config.json",
        args.out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    glimpse_runtime::fsutil::atomic_write(
        &config_path,
        burn::config::config_to_json(&cfg).as_bytes(),
    )?;
    let checkpoint = training::checkpoint_path(&args.out);
    let outcome = training::train(&cfg, &ds.train, &ds.val, &checkpoint, args.resume)?;

    // Export, then prove the file against the trained model on real validation images.
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let source = format!(
        "glimpse-train {} train --data {} --arch {} --epochs {} --seed {} (best epoch {} of {}); config in {}",
        env!("CARGO_PKG_VERSION"),
        args.data.display(),
        // The CLI spelling, so the line can be run again.
        clap::ValueEnum::to_possible_value(&args.arch).map_or_else(String::new, |v| v.get_name().to_string()),
        cfg.epochs,
        cfg.seed,
        outcome.best_epoch,
        outcome.history.len(),
        config_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    );
    let meta = export::bundle_meta(&pp, ds.classes.clone(), &name, source);
    let proto = export::to_onnx(&outcome.model, &pp, &meta, ds.classes.len());
    let bytes = prost::Message::encode_to_vec(&proto);
    let probe: Vec<_> = if ds.val.is_empty() {
        &ds.train
    } else {
        &ds.val
    }
    .iter()
    .take(64)
    .cloned()
    .collect();
    let (classifier, parity) = export::check_parity(
        &outcome.model,
        &bytes,
        &pp,
        &training::preprocess_all(&probe, &pp),
    )?;
    println!(
        "export parity: max |logit difference| {:.2e} over {} images (limit {:.0e})",
        parity.max_abs_logit_diff,
        parity.images,
        export::PARITY_TOLERANCE
    );

    let test = if ds.test.is_empty() {
        &ds.val
    } else {
        &ds.test
    };
    let metrics = eval::evaluate(&classifier, test, &ds.classes)?;
    let last = outcome.history.last().cloned();
    let training = serde_json::json!({
        "config": serde_json::from_str::<serde_json::Value>(&burn::config::config_to_json(&cfg)).unwrap_or_default(),
        "epochs_run": outcome.history.len(),
        "best_epoch": outcome.best_epoch,
        "stopped_early": outcome.stopped_early,
        "wall_seconds": outcome.seconds,
        "images_per_second": last.as_ref().map(|l| l.images_per_second),
        "history": outcome.history,
        "export_parity": parity,
        "threads": rayon::current_num_threads(),
    });
    let report = Report {
        model: args.out.display().to_string(),
        data: args.data.display().to_string(),
        split: if ds.test.is_empty() {
            format!("{}; evaluated on val", ds.report.split)
        } else {
            ds.report.split.clone()
        },
        metrics,
        skipped: ds.report.skipped.clone(),
        small_classes: ds.report.small_classes.clone(),
        training: Some(training),
    };
    let h = &outcome.history;
    let col = |f: fn(&training::EpochStats) -> f64| h.iter().map(f).collect::<Vec<f64>>();
    let (tl, vl, ta, va) = (
        col(|e| e.train_loss),
        col(|e| e.val_loss),
        col(|e| e.train_accuracy),
        col(|e| e.val_accuracy),
    );
    let curves = plot::curves_png(
        &[
            Series {
                name: "train",
                values: &tl,
            },
            Series {
                name: "val",
                values: &vl,
            },
        ],
        &[
            Series {
                name: "train",
                values: &ta,
            },
            Series {
                name: "val",
                values: &va,
            },
        ],
    )?;

    // The model last: when it exists, everything describing it exists too.
    eval::write_report(&report, &paths)?;
    glimpse_runtime::fsutil::atomic_write(&paths.curves_png, &curves)?;
    glimpse_runtime::fsutil::atomic_write(&args.out, &bytes)?;
    if !args.keep_checkpoint {
        if let Some(dir) = checkpoint.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let m = &report.metrics;
    println!(
        "test accuracy {:.2}% (top-5 {:.2}%, macro F1 {:.3}) on {} images; trained {} epochs in {:.0} s",
        m.accuracy * 100.0,
        m.top5 * 100.0,
        m.macro_avg.f1,
        m.images,
        outcome.history.len(),
        outcome.seconds
    );
    println!(
        "wrote {} and {}, {}, {}, {}, {}",
        args.out.display(),
        paths.json.display(),
        paths.markdown.display(),
        paths.confusion_png.display(),
        paths.curves_png.display(),
        config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
