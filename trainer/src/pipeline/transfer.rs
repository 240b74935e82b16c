//! Transfer learning: features from a frozen pretrained backbone (cached), a head trained
//! on them (with the backbone's last blocks, `--fine-tune`), and one bundle out.

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::Device;
use glimpse_runtime::{Preprocess, Resize};

use super::{save_config, Run, Trained};
use crate::export;
use crate::training;
use crate::transfer::backbone::Cut;
use crate::transfer::blocks::Split;
use crate::transfer::features::{self, Extraction, View};
use crate::transfer::tail::{Tail, Tuned};
use crate::transfer::{backbone, blocks, cache, graft, head, Backbone, FeatureCache};
use crate::transfer::{FineTuneConfig, HeadConfig, HeadOutcome, HeadTrainingConfig, OnFeatures};

/// The settings of a transfer run.
pub struct Transfer {
    /// A known backbone name (efficientnet-lite0) or a path to an ONNX classifier.
    pub backbone: String,
    /// Hidden layer width of the head (0: a linear head).
    pub hidden: usize,
    /// Augmented views of each training image to extract and train on, besides the
    /// plain one.
    pub feature_views: usize,
    /// Where features are cached (default: `cache::default_dir`).
    pub feature_cache: Option<PathBuf>,
    /// `--base`: the model trained again.
    pub base: Option<BaseModel>,
    /// `--fine-tune`: the backbone's last blocks trained with the head.
    pub fine_tune: Option<FineTune>,
}

/// How many of the backbone's last blocks to train, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct FineTune {
    pub blocks: usize,
    /// Their learning rate, as a fraction of the head's.
    pub backbone_lr_scale: f64,
}

/// The model `--base` names, as its configuration describes it.
pub struct BaseModel {
    pub path: PathBuf,
    /// This run's backbone must be the same file.
    pub backbone_sha256: String,
    /// This run keeps it, so that the model sees what it saw before and the old images'
    /// features come from the cache.
    pub preprocess: Preprocess,
}

/// Transfer learning: features from the frozen backbone (cached), a head trained on them,
/// the head grafted onto the backbone as one bundle. With `--fine-tune N`, the cache holds
/// the activations N blocks lower, and those blocks train with the head.
pub fn transfer(run: &Run, opts: &Transfer) -> Result<Trained> {
    let backbone = load_backbone(&opts.backbone, run.uniform_small, opts.base.as_ref())?;
    if let Some(base) = &opts.base {
        anyhow::ensure!(
            base.backbone_sha256 == backbone.sha256,
            "--base {}: it was trained on a backbone with sha256 {}, expected this run's {} ({}): give the same --backbone",
            base.path.display(),
            base.backbone_sha256,
            backbone.sha256,
            opts.backbone
        );
    }
    let (backbone, split) = match opts.fine_tune {
        Some(ft) => {
            let (b, split, [c, h, w]) = backbone.split_off(ft.blocks)?;
            println!(
                "fine-tuning: {} blocks above {:?} ({c}×{h}×{w} values cached per image), at {} times the head's learning rate",
                ft.blocks, split.at, ft.backbone_lr_scale
            );
            (b, Some((split, [c, h, w])))
        }
        None => (backbone, None),
    };
    let cfg = config_of(run, opts, &backbone, split.as_ref().map(|(s, _)| s));
    let config = save_config(&cfg, &run.config_path)?;
    // 1. Features (or activations), from the cache where it has them; 2. the training.
    let (train, val, extraction) = extract(run, opts, &backbone, &cfg)?;
    let (train, val) = ((&train.0[..], &train.1[..]), (&val.0[..], &val.1[..]));
    let parts = Parts {
        run,
        opts,
        backbone: &backbone,
        cfg: &cfg,
        config,
        extraction,
    };
    match split {
        None => {
            let outcome = head::train(&cfg, train, val)?;
            parts.finish(&backbone.cut, outcome)
        }
        Some((split, shape)) => {
            let init = |device: &Device| {
                Ok(Tuned::new(
                    Tail::new(&split, shape, device)?,
                    &cfg.head,
                    device,
                ))
            };
            let outcome = head::train_model(&cfg, init, backbone.dim(), train, val)?;
            let whole = blocks::with_weights(&split.whole, &outcome.model.tail.initializers())?;
            parts.finish(&whole, outcome)
        }
    }
}

/// The run's configuration, as saved next to the model.
fn config_of(
    run: &Run,
    opts: &Transfer,
    backbone: &Backbone,
    split: Option<&Split>,
) -> HeadTrainingConfig {
    HeadTrainingConfig {
        head: HeadConfig {
            // The head's input: the pooled features, under fine-tuned blocks or not.
            features: split.map_or(backbone.dim(), |s| s.whole.dim),
            classes: run.ds.classes.len(),
            hidden: (opts.hidden > 0).then_some(opts.hidden),
            dropout: run.dropout.unwrap_or(0.2),
        },
        backbone: backbone.name.clone(),
        backbone_sha256: backbone.sha256.clone(),
        preprocess: backbone.preprocess.clone(),
        feature_views: opts.feature_views,
        augment: run.augment(),
        optim: run.optim(30),
        data: run
            .datasets
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
        reject: run.reject.clone(),
        fine_tune: opts.fine_tune.zip(split).map(|(ft, s)| FineTuneConfig {
            blocks: ft.blocks,
            cut: s.at.clone(),
            backbone_lr_scale: ft.backbone_lr_scale,
        }),
    }
}

/// What a transfer run has once its model is trained.
struct Parts<'a> {
    run: &'a Run<'a>,
    opts: &'a Transfer,
    backbone: &'a Backbone,
    cfg: &'a HeadTrainingConfig,
    /// The configuration as saved.
    config: serde_json::Value,
    extraction: Extraction,
}

impl Parts<'_> {
    /// Step 3: one bundle (`features` then the model's head), proven against backbone +
    /// the trained model on real images.
    fn finish<M: OnFeatures>(self, features: &Cut, outcome: HeadOutcome<M>) -> Result<Trained> {
        let (run, opts, backbone, cfg) = (self.run, self.opts, self.backbone, self.cfg);
        let pp = &backbone.preprocess;
        let source = format!(
            "glimpse-train {} train --data {} --backbone {}{}{} --epochs {} --seed {} (head {}, best epoch {} of {}); backbone: {}; config in {}",
            env!("CARGO_PKG_VERSION"),
            run.data.display(),
            opts.backbone,
            opts.base
                .as_ref()
                .map_or_else(String::new, |b| format!(" --base {}", b.path.display())),
            cfg.fine_tune
                .as_ref()
                .map_or_else(String::new, |f| format!(" --fine-tune {}", f.blocks)),
            cfg.optim.epochs,
            cfg.optim.seed,
            cfg.head.hidden.map_or_else(|| "linear".to_string(), |h| format!("hidden {h}")),
            outcome.best_epoch,
            outcome.history.len(),
            backbone.file.meta.source.as_deref().unwrap_or(&backbone.name),
            run.config_file_name()
        );
        let mut meta = export::bundle_meta(pp, run.ds.classes.clone(), &run.name, source);
        // The weights derive from the backbone's: its license travels with them.
        meta.license = backbone.file.meta.license.clone();
        let proto = graft::graft(backbone, features, outcome.model.head(), &meta);
        let bytes = prost::Message::encode_to_vec(&proto);
        let mut resizer = fast_image_resize::Resizer::new();
        let fitted: Vec<_> = run
            .probe()
            .iter()
            .map(|e| pp.fit(&e.image, &mut resizer))
            .collect();
        let (classifier, parity) = graft::check_parity(backbone, &outcome.model, &bytes, &fitted)?;
        Ok(Trained {
            bytes,
            classifier,
            parity,
            history: outcome.history,
            best_epoch: outcome.best_epoch,
            stopped_early: outcome.stopped_early,
            seconds: outcome.seconds + self.extraction.seconds,
            device: outcome.device,
            config: self.config,
            extraction: Some(self.extraction),
        })
    }
}

/// The backbone named by `spec`. Small uniform images (28x28 clothes, say) are stretched
/// whole to its input: its centre crop would cut away the object's edges for nothing.
/// A `--base` model's preprocessing is kept as it was.
fn load_backbone(spec: &str, uniform_small: bool, base: Option<&BaseModel>) -> Result<Backbone> {
    let path = backbone::resolve(spec)?;
    let backbone = Backbone::load(&path, |pp| {
        if let Some(base) = base {
            base.preprocess.clone()
        } else if uniform_small {
            Preprocess {
                resize: Resize::Stretch,
                ..pp
            }
        } else {
            pp
        }
    })?;
    println!(
        "backbone: {} ({} features from {:?}), {}",
        backbone.name,
        backbone.dim(),
        backbone.cut.features,
        path.display()
    );
    println!("preprocess: {}", backbone.preprocess);
    Ok(backbone)
}

/// Features and labels of one split.
type Features = (Vec<Vec<f32>>, Vec<usize>);

/// The features of the training images (with `feature_views` augmented views of each)
/// and of the validation images, from the cache where it has them.
fn extract(
    run: &Run,
    opts: &Transfer,
    backbone: &Backbone,
    cfg: &HeadTrainingConfig,
) -> Result<(Features, Features, Extraction)> {
    let context = format!(
        "backbone sha256 {} features {} preprocess {}",
        backbone.sha256,
        backbone.cut.features,
        serde_json::to_string(&backbone.preprocess)?
    );
    let cache_dir = opts
        .feature_cache
        .clone()
        .unwrap_or_else(cache::default_dir);
    let mut cache = FeatureCache::open(&cache_dir, &context, backbone.dim())?;
    let mut items = Vec::new();
    let mut labels = Vec::new();
    for (i, e) in run.ds.train.iter().enumerate() {
        items.push((&*e.image, View::Plain));
        labels.push(e.label);
        for v in 1..=cfg.feature_views {
            let seed = training::image_seed(cfg.optim.seed, v, i);
            let augment = &cfg.augment;
            items.push((&*e.image, View::Augmented { augment, seed }));
            labels.push(e.label);
        }
    }
    let (train_x, a) = features::extract(backbone, &mut cache, &context, &items, "train")?;
    let val_items: Vec<_> = run
        .ds
        .val
        .iter()
        .map(|e| (&*e.image, View::Plain))
        .collect();
    let val_labels: Vec<usize> = run.ds.val.iter().map(|e| e.label).collect();
    let (val_x, b) = features::extract(backbone, &mut cache, &context, &val_items, "val")?;
    let extraction = Extraction {
        computed: a.computed + b.computed,
        from_cache: a.from_cache + b.from_cache,
        seconds: a.seconds + b.seconds,
        // The size after the last save, which the second extraction made.
        cache_bytes: b.cache_bytes,
    };
    println!(
        "features: {} extracted, {} from cache in {:.1} s ({}, {:.1} MB)",
        extraction.computed,
        extraction.from_cache,
        extraction.seconds,
        cache.path().display(),
        extraction.cache_bytes as f64 / 1e6
    );
    Ok(((train_x, labels), (val_x, val_labels), extraction))
}
