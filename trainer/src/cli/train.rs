//! `glimpse-train train`: a dataset in; a checked ONNX bundle, its evaluation report,
//! plots and training configuration out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use glimpse_runtime::classifier::Scores;
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::Channels;
use glimpse_trainer::augment::Augment;
use glimpse_trainer::balance::{self, WeightsSpec};
use glimpse_trainer::data::{self, Dataset, LoadOptions};
use glimpse_trainer::device::{Accelerator, TrainDevice};
use glimpse_trainer::eval::{self, Report, ReportPaths};
use glimpse_trainer::export;
use glimpse_trainer::model::Arch;
use glimpse_trainer::pipeline::{self, BaseModel, FineTune, Run, Scratch, Trained, Transfer};
use glimpse_trainer::plot::{self, Series};
use glimpse_trainer::reject::{self, RejectConfig};
use glimpse_trainer::training::{self, EpochStats, OptimConfig, Optimizer, Schedule};
use glimpse_trainer::transfer::HeadTrainingConfig;

use super::data_args::DataArgs;
use super::quantize::QuantArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dataset: a folder with one sub-folder per class (optionally split into train/
    /// val/ test/), a CSV of path,label, or a folder of IDX files (MNIST format).
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Where to write the ONNX bundle; the report, plots and config go next to it.
    #[arg(short, long, value_name = "MODEL.onnx")]
    out: PathBuf,
    /// Network architecture (when training from scratch).
    #[arg(long, value_enum, default_value_t = Arch::SmallCnn)]
    arch: Arch,
    /// Transfer learning: train a head on this frozen pretrained classifier's features and
    /// graft it on, giving one bundle. A known name (efficientnet-lite0, found where the
    /// runtime finds its default model) or a path to an ONNX classifier ending in a Gemm.
    #[arg(long, value_name = "NAME|MODEL.onnx", conflicts_with_all = ["arch", "input_size", "channels", "width", "resume"])]
    backbone: Option<String>,
    /// Transfer learning: train PREVIOUS.onnx (a model `--backbone` made, with its
    /// PREVIOUS.config.json beside it) again on the data it was trained on plus --data:
    /// the classes of both, the old images' features from the cache. New photos of a
    /// board's camera, collected and labelled, join what the model knew.
    #[arg(long, value_name = "PREVIOUS.onnx", requires = "backbone")]
    base: Option<PathBuf>,
    /// Transfer learning: hidden layer width of the head (0: a linear head).
    #[arg(long, default_value_t = 0, requires = "backbone")]
    hidden: usize,
    /// Transfer learning: augmented views of each training image to extract and train on,
    /// besides the plain one (cached like the plain features).
    #[arg(long, default_value_t = 0, requires = "backbone")]
    feature_views: usize,
    /// Transfer learning: also train the backbone's last N blocks with the head (its final
    /// 1x1 conv counts as one; EfficientNet-Lite0 has 16). The cache then holds each
    /// image's activations under them; 0: the head alone.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "backbone", conflicts_with_all = ["base", "patience"])]
    fine_tune: usize,
    /// With --fine-tune: the blocks' learning rate as a fraction of the head's.
    #[arg(long, value_name = "F", default_value_t = 0.3, value_parser = positive, requires = "fine_tune")]
    backbone_lr_scale: f64,
    /// Transfer learning: where extracted features are cached (default:
    /// $XDG_CACHE_HOME/glimpse/features or ~/.cache/glimpse/features).
    #[arg(long, value_name = "DIR", requires = "backbone")]
    feature_cache: Option<PathBuf>,
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
    /// Dropout before the dense layers (default: 0.25 from scratch, 0.2 for a head).
    #[arg(long)]
    dropout: Option<f64>,
    /// Epochs (default: 10 from scratch, 30 for a head on cached features).
    #[arg(long)]
    epochs: Option<usize>,
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
    /// Weigh each class's loss: `auto` (inverse class frequency, for imbalanced data) or
    /// a JSON file of class name to weight, like {"cat": 2.0} (classes it does not name
    /// weigh 1).
    #[arg(long, value_name = "auto|FILE")]
    class_weights: Option<WeightsSpec>,
    /// Draw every class equally often in each epoch (images of small classes repeat),
    /// for imbalanced data.
    #[arg(long)]
    balanced_sampling: bool,
    /// "None of the above": after training, calibrate a rejection stored in the bundle
    /// (`glimpse.reject`) that accepts this share of the validation images; `glimpse`
    /// then answers `unknown` for images far from every class. 0: no rejection.
    #[arg(long, default_value_t = 0.95, value_name = "SHARE")]
    reject_target: f64,
    /// Photos of things that belong to none of the classes (any folder of images): the
    /// report measures the rejection on them (false accepts, AUROC).
    #[arg(long, value_name = "DIR")]
    negatives: Option<PathBuf>,
    /// Augmentations: any of crop[:MIN_AREA], flip, rotate[:DEGREES], color[:AMOUNT], or
    /// none (default: crop, flip, rotate, color for photos; crop:0.8 for small images).
    #[arg(long, value_delimiter = ',')]
    augment: Option<Vec<String>>,
    #[command(flatten)]
    data_args: DataArgs,
    /// Train on at most this many images per class (a seeded subset); validation images
    /// are limited in proportion to --val-fraction.
    #[arg(long)]
    limit_per_class: Option<usize>,
    /// Refuse to train when a class has fewer training images than this (classes with
    /// fewer than 20 are trained but flagged). Applies to transfer learning too.
    #[arg(long, default_value_t = 5)]
    min_per_class: usize,
    /// Continue an interrupted run from its checkpoint (<out>.ckpt/).
    #[arg(long)]
    resume: bool,
    /// Keep the checkpoint folder after a successful run.
    #[arg(long)]
    keep_checkpoint: bool,
    /// After training, also write MODEL.int8.onnx as `glimpse-train quantize` does,
    /// calibrated on training images and gated on the test split.
    #[arg(long)]
    quantize: bool,
    #[command(flatten)]
    quant: QuantArgs,
    /// What to train on: the CPU, or a GPU through wgpu (Vulkan, Metal, DX12; in a build
    /// with the `gpu` feature). The same seed gives a model of the same quality on
    /// either, not the same bits.
    #[arg(long, value_enum, default_value_t = Accelerator::Cpu)]
    device: Accelerator,
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
    // Before any work: a missing GPU is refused at once, not after loading the data.
    TrainDevice::open(args.device)?;
    let base = args.base.as_deref().map(base_config).transpose()?;
    let mut datasets = base.as_ref().map_or_else(Vec::new, |b| b.data.clone());
    let data = std::fs::canonicalize(&args.data)
        .with_context(|| format!("--data {}", args.data.display()))?;
    if !datasets.contains(&data) {
        datasets.push(data);
    }
    let ds = load(&args, &datasets)?;
    if args.reject_target != 0.0 {
        reject::check_target(args.reject_target)?;
    }
    // Read before training: a bad folder is refused before any work is done.
    let negatives = match &args.negatives {
        Some(dir) => reject::load_negatives(dir)?,
        None => Vec::new(),
    };
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let paths = ReportPaths::next_to(&args.out);
    let run = Run {
        ds: &ds,
        data: &args.data,
        datasets,
        out: &args.out,
        config_path: paths.json.with_file_name(format!("{name}.config.json")),
        name,
        uniform_small: pipeline::uniform_small(&ds),
        augment: args.augment.as_deref().map(augment_from).transpose()?,
        dropout: args.dropout,
        optim: optim_config(&args, &ds)?,
        epochs: args.epochs,
        reject: (args.reject_target > 0.0)
            .then(|| RejectConfig::new().with_target(args.reject_target)),
    };
    let trained = match &args.backbone {
        Some(spec) => pipeline::transfer(&run, &transfer_options(&args, spec, base))?,
        None => pipeline::scratch(&run, &scratch_options(&args))?,
    };
    println!(
        "export parity: max |logit difference| {:.2e} over {} images (limit {:.0e})",
        trained.parity.max_abs_logit_diff,
        trained.parity.images,
        export::PARITY_TOLERANCE
    );
    let trained = match &run.reject {
        Some(cfg) => with_rejection(trained, &ds, cfg)?,
        None => trained,
    };
    let report = report(&args, &ds, &trained, &negatives)?;
    let curves = curves_png(&trained.history)?;

    // The model last: when it exists, everything describing it exists too.
    eval::write_report(&report, &paths)?;
    glimpse_runtime::fsutil::atomic_write(&paths.curves_png, &curves)?;
    glimpse_runtime::fsutil::atomic_write(&args.out, &trained.bytes)?;
    if !args.keep_checkpoint {
        if let Some(dir) = training::checkpoint_path(&args.out).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let m = &report.metrics;
    println!(
        "test accuracy {:.2}% (top-5 {:.2}%, macro F1 {:.3}) on {} images; trained {} epochs in {:.0} s on {}",
        m.accuracy * 100.0,
        m.top5 * 100.0,
        m.macro_avg.f1,
        m.images,
        trained.history.len(),
        trained.seconds,
        trained.device
    );
    println!("lowest recall: {}", lowest_recall(&m.per_class, 3));
    if args.quantize {
        super::quantize::after_training(&args.out, &ds, args.data_args.seed, &args.quant)?;
    }
    println!(
        "wrote {} and {}, {}, {}, {}, {}",
        args.out.display(),
        paths.json.display(),
        paths.markdown.display(),
        paths.confusion_png.display(),
        paths.curves_png.display(),
        run.config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The trained bundle with its calibrated rejection.
fn with_rejection(trained: Trained, ds: &Dataset, cfg: &RejectConfig) -> Result<Trained> {
    let classes = ds.classes.len();
    let cal = reject::calibrate(&trained.bytes, classes, &ds.train, &ds.val, cfg.target)?;
    Ok(Trained {
        bytes: cal.bytes,
        classifier: cal.classifier,
        ..trained
    })
}

/// How the bundle's rejection does on the test split (`known`, its scores) and on the
/// negatives, printed.
fn rejection_report(
    trained: &Trained,
    test: (&[data::Example], &[Scores]),
    negatives: &[data::Example],
) -> Result<Option<reject::Evaluation>> {
    let Some(r) = &trained.classifier.file.meta.reject else {
        return Ok(None);
    };
    let ev = reject::evaluate(&trained.classifier, r, test, negatives)?;
    let against = ev.negatives.as_ref().map_or(String::new(), |n| {
        format!(
            "; {} negatives: {:.1}% accepted, AUROC {:.3} (max probability: {:.3})",
            n.images,
            n.false_accept_rate * 100.0,
            n.auroc,
            n.auroc_max_probability
        )
    });
    println!(
        "rejection: {r}: accepts {:.1}% of test images (accuracy {:.2}% on them, {:.2}% on all){against}",
        ev.test_accepted * 100.0,
        ev.accuracy_accepted * 100.0,
        ev.accuracy_all * 100.0
    );
    Ok(Some(ev))
}

/// What `--base` takes from the previous model's configuration.
struct Base {
    model: BaseModel,
    /// The datasets it was trained on.
    data: Vec<PathBuf>,
}

/// The training configuration saved beside `--base PREVIOUS.onnx`.
fn base_config(base: &Path) -> Result<Base> {
    let stem = base.file_stem().unwrap_or_default().to_string_lossy();
    let path = base.with_file_name(format!("{stem}.config.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--base {}: reading its training configuration {} (a model `glimpse-train train --backbone` made has one beside it)",
            base.display(),
            path.display()
        )
    })?;
    let cfg: HeadTrainingConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "--base {}: {} is not the configuration of a --backbone run",
            base.display(),
            path.display()
        )
    })?;
    if cfg.data.is_empty() {
        bail!(
            "--base {}: {} does not say which data it was trained on (glimpse-train records it since this version): train it once more without --base",
            base.display(),
            path.display()
        );
    }
    Ok(Base {
        model: BaseModel {
            path: base.to_path_buf(),
            backbone_sha256: cfg.backbone_sha256,
            preprocess: cfg.preprocess,
        },
        data: cfg.data.iter().map(PathBuf::from).collect(),
    })
}

/// Loads the datasets as one, refuses classes below --min-per-class, and says what it
/// holds.
fn load(args: &Args, datasets: &[PathBuf]) -> Result<Dataset> {
    let opts = LoadOptions {
        limit_per_class: args.limit_per_class,
        ..args.data_args.load_options(None)?
    };
    let mut sets = Vec::new();
    for path in datasets {
        let ds = data::load(path, &opts).with_context(|| format!("loading {}", path.display()))?;
        sets.push(ds);
    }
    let ds = match sets.len() {
        1 => sets.remove(0),
        _ => data::merge(sets, &opts)?,
    };
    let too_few: Vec<String> = ds
        .report
        .class_counts
        .iter()
        .filter(|(_, n)| *n < args.min_per_class)
        .map(|(c, n)| format!("{c} ({n})"))
        .collect();
    if !too_few.is_empty() {
        bail!(
            "every class needs at least {} training images (--min-per-class); too few in: {}",
            args.min_per_class,
            too_few.join(", ")
        );
    }
    let skipped = match ds.report.skipped.len() {
        0 => String::new(),
        n => format!("; {n} unreadable files skipped"),
    };
    println!(
        "data: {} classes, {} train / {} val / {} test images; {}{skipped}",
        ds.classes.len(),
        ds.train.len(),
        ds.val.len(),
        ds.test.len(),
        ds.report.split,
    );
    Ok(ds)
}

fn scratch_options(args: &Args) -> Scratch {
    Scratch {
        arch: args.arch,
        input_size: args.input_size,
        channels: args.channels,
        width: args.width,
        resume: args.resume,
    }
}

fn transfer_options(args: &Args, spec: &str, base: Option<Base>) -> Transfer {
    Transfer {
        backbone: spec.to_string(),
        hidden: args.hidden,
        feature_views: args.feature_views,
        feature_cache: args.feature_cache.clone(),
        base: base.map(|b| b.model),
        fine_tune: (args.fine_tune > 0).then_some(FineTune {
            blocks: args.fine_tune,
            backbone_lr_scale: args.backbone_lr_scale,
        }),
    }
}

/// A number above 0, for a command-line value.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("expected a number above 0, got {v}")),
        Err(e) => Err(format!("expected a number above 0, got {s:?} ({e})")),
    }
}

/// The optimization settings of the command line (epochs are the pipeline's default
/// when not given), with `--class-weights` resolved against the training split.
fn optim_config(args: &Args, ds: &Dataset) -> Result<OptimConfig> {
    let counts = balance::class_counts(ds.train.iter().map(|e| e.label), ds.classes.len());
    let class_weights = args
        .class_weights
        .as_ref()
        .map(|spec| balance::resolve(spec, &ds.classes, &counts))
        .transpose()?;
    Ok(OptimConfig {
        optimizer: args.optimizer,
        schedule: args.schedule,
        epochs: 0,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        momentum: args.momentum,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: (args.label_smoothing > 0.0).then_some(args.label_smoothing),
        patience: args.patience,
        seed: args.data_args.seed,
        class_weights,
        balanced_sampling: args.balanced_sampling,
        device: args.device,
    })
}

/// The evaluation of the bundle on the test split (val when there is none), with the
/// training section and the rejection's (each test image classified once for both).
fn report(
    args: &Args,
    ds: &Dataset,
    trained: &Trained,
    negatives: &[data::Example],
) -> Result<Report> {
    let test = ds.held_out();
    let scores = eval::predict_scores(&trained.classifier, test, "evaluating")?;
    let probs = scores.iter().map(|s| s.probs.clone()).collect();
    let metrics = eval::score_predictions(test, probs, &ds.classes);
    let reject = rejection_report(trained, (test, &scores), negatives)?;
    let last = trained.history.last().cloned();
    let mut training = serde_json::json!({
        "config": trained.config,
        "epochs_run": trained.history.len(),
        "best_epoch": trained.best_epoch,
        "stopped_early": trained.stopped_early,
        "wall_seconds": trained.seconds,
        "device": trained.device,
        "images_per_second": last.as_ref().map(|l| l.images_per_second),
        "history": trained.history,
        "export_parity": trained.parity,
        "threads": rayon::current_num_threads(),
    });
    if let Some(extraction) = &trained.extraction {
        training["feature_extraction"] = serde_json::to_value(extraction)?;
    }
    Ok(Report {
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
        reject,
    })
}

/// The `n` classes with the lowest recall, as `Shirt 0.782, Coat 0.801`: where an
/// imbalanced dataset shows first.
fn lowest_recall(per_class: &[eval::ClassMetrics], n: usize) -> String {
    let mut by_recall: Vec<&eval::ClassMetrics> = per_class.iter().collect();
    by_recall.sort_by(|a, b| a.recall.total_cmp(&b.recall));
    by_recall
        .iter()
        .take(n)
        .map(|c| format!("{} {:.3}", c.class, c.recall))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loss and accuracy per epoch, train and val, as a PNG.
fn curves_png(history: &[EpochStats]) -> Result<Vec<u8>> {
    let col = |f: fn(&EpochStats) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    let (tl, vl, ta, va) = (
        col(|e| e.train_loss),
        col(|e| e.val_loss),
        col(|e| e.train_accuracy),
        col(|e| e.val_accuracy),
    );
    let series = |train, val| {
        [
            Series {
                name: "train",
                values: train,
            },
            Series {
                name: "val",
                values: val,
            },
        ]
    };
    plot::curves_png(&series(&tl, &vl), &series(&ta, &va))
}
