//! Transfer learning: features from a frozen pretrained backbone (cached), a head trained
//! on them, and the head grafted onto the backbone as one bundle.

use std::path::PathBuf;

use anyhow::Result;
use glimpse_runtime::{Preprocess, Resize};

use super::{save_config, Run, Trained};
use crate::export;
use crate::training;
use crate::transfer::features::{self, Extraction, View};
use crate::transfer::{backbone, cache, graft, head, Backbone, FeatureCache};
use crate::transfer::{HeadConfig, HeadTrainingConfig};

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
/// the head grafted onto the backbone as one bundle.
pub fn transfer(run: &Run, opts: &Transfer) -> Result<Trained> {
    let ds = run.ds;
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
    let pp = backbone.preprocess.clone();
    let cfg = HeadTrainingConfig {
        head: HeadConfig {
            features: backbone.dim(),
            classes: ds.classes.len(),
            hidden: (opts.hidden > 0).then_some(opts.hidden),
            dropout: run.dropout.unwrap_or(0.2),
        },
        backbone: backbone.name.clone(),
        backbone_sha256: backbone.sha256.clone(),
        preprocess: pp.clone(),
        feature_views: opts.feature_views,
        augment: run.augment(),
        optim: run.optim(30),
        data: run
            .datasets
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
        reject: run.reject.clone(),
    };
    let config = save_config(&cfg, &run.config_path)?;
    // 1. Features, from the cache where it has them; 2. the head.
    let (train, val, extraction) = extract(run, opts, &backbone, &cfg)?;
    let outcome = head::train(&cfg, (&train.0, &train.1), (&val.0, &val.1))?;

    // 3. One bundle, proven against backbone + head on real images.
    let source = format!(
        "glimpse-train {} train --data {} --backbone {}{} --epochs {} --seed {} (head {}, best epoch {} of {}); backbone: {}; config in {}",
        env!("CARGO_PKG_VERSION"),
        run.data.display(),
        opts.backbone,
        opts.base
            .as_ref()
            .map_or_else(String::new, |b| format!(" --base {}", b.path.display())),
        cfg.optim.epochs,
        cfg.optim.seed,
        cfg.head.hidden.map_or_else(|| "linear".to_string(), |h| format!("hidden {h}")),
        outcome.best_epoch,
        outcome.history.len(),
        backbone.file.meta.source.as_deref().unwrap_or(&backbone.name),
        run.config_file_name()
    );
    let mut meta = export::bundle_meta(&pp, ds.classes.clone(), &run.name, source);
    // The weights derive from the backbone's: its license travels with them.
    meta.license = backbone.file.meta.license.clone();
    let proto = graft::graft(&backbone, &outcome.model, &meta);
    let bytes = prost::Message::encode_to_vec(&proto);
    let mut resizer = fast_image_resize::Resizer::new();
    let fitted: Vec<_> = run
        .probe()
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
        device: outcome.device,
        config,
        extraction: Some(extraction),
    })
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
    };
    println!(
        "features: {} extracted, {} from cache in {:.1} s ({})",
        extraction.computed,
        extraction.from_cache,
        extraction.seconds,
        cache.path().display()
    );
    Ok(((train_x, labels), (val_x, val_labels), extraction))
}
