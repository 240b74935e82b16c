//! `glimpse-train train`: a dataset in; a checked ONNX bundle, its evaluation report,
//! plots and training configuration out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use glimpse_runtime::preprocess::parse_size;
use glimpse_runtime::{
    bundle::default_short_side, Channels, Classifier as RuntimeClassifier, Layout, Preprocess,
    Resize,
};
use glimpse_trainer::augment::Augment;
use glimpse_trainer::data::{self, Format, LoadOptions};
use glimpse_trainer::eval::{self, Report, ReportPaths};
use glimpse_trainer::export;
use glimpse_trainer::model::{Arch, ModelConfig};
use glimpse_trainer::plot::{self, Series};
use glimpse_trainer::training::{
    self, EpochStats, OptimConfig, Optimizer, Schedule, TrainingConfig,
};
use glimpse_trainer::transfer::features::{self, Extraction, View};
use glimpse_trainer::transfer::{backbone, cache, graft, head, Backbone, FeatureCache};
use glimpse_trainer::transfer::{HeadConfig, HeadTrainingConfig};

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
    /// Transfer learning: hidden layer width of the head (0: a linear head).
    #[arg(long, default_value_t = 0, requires = "backbone")]
    hidden: usize,
    /// Transfer learning: augmented views of each training image to extract and train on,
    /// besides the plain one (cached like the plain features).
    #[arg(long, default_value_t = 0, requires = "backbone")]
    feature_views: usize,
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
    // of one size (28x28 thumbnails, say) keep their size too, or are stretched whole to a
    // backbone's input; photos get a centre crop.
    let native = ds.train[0].image.dimensions();
    let uniform_small =
        native.0.max(native.1) <= 64 && ds.train.iter().all(|e| e.image.dimensions() == native);
    let name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let paths = ReportPaths::next_to(&args.out);
    let config_path = paths.json.with_file_name(format!("{name}.config.json"));
    let trained = match &args.backbone {
        Some(spec) => transfer(&args, &ds, spec, uniform_small, &name, &config_path)?,
        None => scratch(&args, &ds, uniform_small, &name, &config_path)?,
    };
    println!(
        "export parity: max |logit difference| {:.2e} over {} images (limit {:.0e})",
        trained.parity.max_abs_logit_diff,
        trained.parity.images,
        export::PARITY_TOLERANCE
    );
    let classifier = &trained.classifier;

    let test = if ds.test.is_empty() {
        &ds.val
    } else {
        &ds.test
    };
    let metrics = eval::evaluate(classifier, test, &ds.classes)?;
    let last = trained.history.last().cloned();
    let mut training = serde_json::json!({
        "config": trained.config,
        "epochs_run": trained.history.len(),
        "best_epoch": trained.best_epoch,
        "stopped_early": trained.stopped_early,
        "wall_seconds": trained.seconds,
        "images_per_second": last.as_ref().map(|l| l.images_per_second),
        "history": trained.history,
        "export_parity": trained.parity,
        "threads": rayon::current_num_threads(),
    });
    if let Some(extraction) = &trained.extraction {
        training["feature_extraction"] = serde_json::to_value(extraction)?;
    }
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
    let h = &trained.history;
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
    glimpse_runtime::fsutil::atomic_write(&args.out, &trained.bytes)?;
    if !args.keep_checkpoint {
        if let Some(dir) = training::checkpoint_path(&args.out).parent() {
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
        trained.history.len(),
        trained.seconds
    );
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
        config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A trained, exported and checked model, whichever way it was trained.
struct Trained {
    bytes: Vec<u8>,
    /// The exported bundle loaded in the runtime.
    classifier: RuntimeClassifier,
    parity: export::Parity,
    history: Vec<EpochStats>,
    best_epoch: usize,
    stopped_early: bool,
    seconds: f64,
    /// The training configuration as saved next to the model.
    config: serde_json::Value,
    /// Feature extraction work (transfer learning only).
    extraction: Option<Extraction>,
}

/// The CLI spelling of a value, so a provenance line can be run again.
fn cli_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

fn save_config<C: burn::config::Config>(
    cfg: &C,
    path: &std::path::Path,
) -> Result<serde_json::Value> {
    let json = burn::config::config_to_json(cfg);
    glimpse_runtime::fsutil::atomic_write(path, json.as_bytes())?;
    Ok(serde_json::from_str(&json)?)
}

fn default_augment(args: &Args, uniform_small: bool) -> Result<Augment> {
    match &args.augment {
        Some(names) => augment_from(names),
        None if uniform_small => Ok(Augment {
            crop_scale_min: 0.8,
            ..Augment::NONE
        }),
        None => augment_from(&[
            "crop".into(),
            "flip".into(),
            "rotate".into(),
            "color".into(),
        ]),
    }
}

/// The optimization settings of the command line (`default_epochs` when not given).
fn optim_config(args: &Args, default_epochs: usize) -> OptimConfig {
    OptimConfig {
        optimizer: args.optimizer,
        schedule: args.schedule,
        epochs: args.epochs.unwrap_or(default_epochs),
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        momentum: args.momentum,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: (args.label_smoothing > 0.0).then_some(args.label_smoothing),
        patience: args.patience,
        seed: args.data_args.seed,
    }
}

/// Validation examples to prove an export on (training ones when there is no validation).
fn probe(ds: &data::Dataset) -> &[data::Example] {
    let from = if ds.val.is_empty() {
        &ds.train
    } else {
        &ds.val
    };
    &from[..from.len().min(64)]
}

/// Trains one of our architectures from scratch, with checkpoints, and exports it.
fn scratch(
    args: &Args,
    ds: &data::Dataset,
    uniform_small: bool,
    name: &str,
    config_path: &std::path::Path,
) -> Result<Trained> {
    let native = ds.train[0].image.dimensions();
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
    let cfg = TrainingConfig {
        model: ModelConfig {
            arch: args.arch,
            classes: ds.classes.len(),
            in_channels: channels.count(),
            input_size: [height as usize, width as usize],
            width: args.width,
            dropout: args.dropout.unwrap_or(0.25),
        },
        preprocess: pp.clone(),
        augment: default_augment(args, uniform_small)?,
        optim: optim_config(args, 10),
    };
    println!("preprocess: {pp}");
    let config = save_config(&cfg, config_path)?;
    let checkpoint = training::checkpoint_path(&args.out);
    let outcome = training::train(&cfg, &ds.train, &ds.val, &checkpoint, args.resume)?;

    // Export, then prove the file against the trained model on real validation images.
    let source = format!(
        "glimpse-train {} train --data {} --arch {} --epochs {} --seed {} (best epoch {} of {}); config in {}",
        env!("CARGO_PKG_VERSION"),
        args.data.display(),
        cli_name(&args.arch),
        cfg.optim.epochs,
        cfg.optim.seed,
        outcome.best_epoch,
        outcome.history.len(),
        config_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    );
    let meta = export::bundle_meta(&pp, ds.classes.clone(), name, source);
    let proto = export::to_onnx(&outcome.model, &pp, &meta, ds.classes.len());
    let bytes = prost::Message::encode_to_vec(&proto);
    let (classifier, parity) = export::check_parity(
        &outcome.model,
        &bytes,
        &pp,
        &training::preprocess_all(probe(ds), &pp),
    )?;
    Ok(Trained {
        bytes,
        classifier,
        parity,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        stopped_early: outcome.stopped_early,
        seconds: outcome.seconds,
        config,
        extraction: None,
    })
}

/// Transfer learning: features from the frozen backbone (cached), a head trained on them,
/// the head grafted onto the backbone as one bundle.
fn transfer(
    args: &Args,
    ds: &data::Dataset,
    spec: &str,
    uniform_small: bool,
    name: &str,
    config_path: &std::path::Path,
) -> Result<Trained> {
    let path = backbone::resolve(spec)?;
    // Small uniform images (28x28 clothes, say) are stretched whole to the backbone's
    // input: its centre crop would cut away the object's edges for nothing.
    let backbone = Backbone::load(&path, |pp| {
        if uniform_small {
            Preprocess {
                resize: Resize::Stretch,
                ..pp
            }
        } else {
            pp
        }
    })?;
    let pp = backbone.preprocess.clone();
    println!(
        "backbone: {} ({} features from {:?}), {}",
        backbone.name,
        backbone.dim(),
        backbone.cut.features,
        path.display()
    );
    println!("preprocess: {pp}");
    let cfg = HeadTrainingConfig {
        head: HeadConfig {
            features: backbone.dim(),
            classes: ds.classes.len(),
            hidden: (args.hidden > 0).then_some(args.hidden),
            dropout: args.dropout.unwrap_or(0.2),
        },
        backbone: backbone.name.clone(),
        backbone_sha256: backbone.sha256.clone(),
        preprocess: pp.clone(),
        feature_views: args.feature_views,
        augment: default_augment(args, uniform_small)?,
        optim: optim_config(args, 30),
    };
    let config = save_config(&cfg, config_path)?;

    // 1. Features, from the cache where it has them.
    let context = format!(
        "backbone sha256 {} features {} preprocess {}",
        backbone.sha256,
        backbone.cut.features,
        serde_json::to_string(&pp)?
    );
    let cache_dir = args
        .feature_cache
        .clone()
        .unwrap_or_else(cache::default_dir);
    let mut cache = FeatureCache::open(&cache_dir, &context, backbone.dim())?;
    let mut items = Vec::new();
    let mut labels = Vec::new();
    for (i, e) in ds.train.iter().enumerate() {
        items.push((&*e.image, View::Plain));
        labels.push(e.label);
        for v in 1..=cfg.feature_views {
            items.push((
                &*e.image,
                View::Augmented {
                    augment: &cfg.augment,
                    seed: training::image_seed(cfg.optim.seed, v, i),
                },
            ));
            labels.push(e.label);
        }
    }
    let (train_x, a) = features::extract(&backbone, &mut cache, &context, &items, "train")?;
    let val_items: Vec<_> = ds.val.iter().map(|e| (&*e.image, View::Plain)).collect();
    let val_labels: Vec<usize> = ds.val.iter().map(|e| e.label).collect();
    let (val_x, b) = features::extract(&backbone, &mut cache, &context, &val_items, "val")?;
    let extraction = Extraction {
        computed: a.computed + b.computed,
        from_cache: a.from_cache + b.from_cache,
        seconds: a.seconds + b.seconds,
    };
    println!(
        "features: {} extracted, {} from cache in {:.1} s ({})",
        extraction.computed,
        extraction.from_cache,
        extraction.seconds,
        cache.path().display()
    );

    // 2. The head.
    let outcome = head::train(&cfg, (&train_x, &labels), (&val_x, &val_labels))?;

    // 3. One bundle, proven against backbone + head on real images.
    let source = format!(
        "glimpse-train {} train --data {} --backbone {} --epochs {} --seed {} (head {}, best epoch {} of {}); backbone: {}; config in {}",
        env!("CARGO_PKG_VERSION"),
        args.data.display(),
        spec,
        cfg.optim.epochs,
        cfg.optim.seed,
        cfg.head.hidden.map_or_else(|| "linear".to_string(), |h| format!("hidden {h}")),
        outcome.best_epoch,
        outcome.history.len(),
        backbone.file.meta.source.as_deref().unwrap_or(&backbone.name),
        config_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    );
    let mut meta = export::bundle_meta(&pp, ds.classes.clone(), name, source);
    // The weights derive from the backbone's: its license travels with them.
    meta.license = backbone.file.meta.license.clone();
    let proto = graft::graft(&backbone, &outcome.model, &meta);
    let bytes = prost::Message::encode_to_vec(&proto);
    let mut resizer = fast_image_resize::Resizer::new();
    let fitted: Vec<_> = probe(ds)
        .iter()
        .map(|e| pp.fit(&e.image, &mut resizer))
        .collect();
    let (classifier, parity) = graft::check_parity(&backbone, &outcome.model, &bytes, &fitted)?;
    Ok(Trained {
        bytes,
        classifier,
        parity,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        stopped_early: outcome.stopped_early,
        seconds: outcome.seconds + extraction.seconds,
        config,
        extraction: Some(extraction),
    })
}
