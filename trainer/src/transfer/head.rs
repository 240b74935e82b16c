//! The classification head trained on frozen backbone features: linear, or one hidden
//! layer with ReLU, with dropout and optional label smoothing. Training runs on cached
//! feature vectors, so an epoch over a few thousand images takes well under a second and
//! needs no checkpoint: the expensive part (extraction) is what the cache keeps.

use std::time::Instant;

use anyhow::{ensure, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Gradients;
use glimpse_runtime::Preprocess;

use super::tail::Tail;
use crate::augment::Augment;
use crate::device::TrainDevice;
use crate::training::{count_correct, image_seed, EpochStats, OptimConfig, Optimization};

#[derive(Config, Debug)]
pub struct HeadConfig {
    /// Feature vector length (the backbone's).
    pub features: usize,
    pub classes: usize,
    /// Width of the hidden layer; `None`: a linear head.
    pub hidden: Option<usize>,
    #[config(default = 0.2)]
    pub dropout: f64,
}

#[derive(Module, Debug)]
pub struct Head {
    pub dropout: Dropout,
    pub hidden: Option<Linear>,
    pub out: Linear,
}

impl HeadConfig {
    pub fn init(&self, device: &Device) -> Head {
        let (hidden, d) = match self.hidden {
            Some(h) => (Some(LinearConfig::new(self.features, h).init(device)), h),
            None => (None, self.features),
        };
        Head {
            dropout: DropoutConfig::new(self.dropout).init(),
            hidden,
            out: LinearConfig::new(d, self.classes).init(device),
        }
    }
}

impl Head {
    /// `[N, features]` -> `[N, classes]` logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = self.dropout.forward(x);
        if let Some(h) = &self.hidden {
            x = self.dropout.forward(Relu::new().forward(h.forward(x)));
        }
        self.out.forward(x)
    }
}

/// A model trained on cached vectors: the head on pooled features, or the backbone's last
/// blocks with a head on the activations under them (`--fine-tune`).
pub trait OnFeatures: Module {
    /// `[N, cached values]` -> `[N, classes]` logits.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;

    /// The head on the pooled features: what is grafted after them.
    fn head(&self) -> &Head;

    /// The backbone blocks it trains, at `--backbone-lr-scale` times the head's rate.
    fn backbone(&self) -> Option<&Tail> {
        None
    }

    /// Logits of one batch of cached vectors (inference copy, on the CPU).
    fn logits(&self, cached: &[&[f32]]) -> Vec<Vec<f32>> {
        if cached.is_empty() {
            return Vec::new();
        }
        let dim = cached[0].len();
        let x = Tensor::<2>::from_data(
            TensorData::new(cached.concat(), [cached.len(), dim]),
            &Device::flex(),
        );
        let flat = OnFeatures::forward(self, x)
            .try_into_vec_as::<f32>()
            .expect("float logits");
        let k = flat.len() / cached.len();
        flat.chunks(k).map(<[f32]>::to_vec).collect()
    }
}

impl OnFeatures for Head {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        Head::forward(self, x)
    }

    fn head(&self) -> &Head {
        self
    }
}

/// `--fine-tune`: the backbone's last blocks, trained with the head; the last epoch is
/// kept, not the one with the best validation loss.
#[derive(Config, Debug)]
pub struct FineTuneConfig {
    /// How many blocks above the cut.
    pub blocks: usize,
    /// The tensor the backbone is cut at: what the cache holds per image.
    pub cut: String,
    /// Their learning rate, as a fraction of the head's.
    #[config(default = 0.3)]
    pub backbone_lr_scale: f64,
}

/// Everything that determines a transfer-learning run; saved next to the model.
#[derive(Config, Debug)]
pub struct HeadTrainingConfig {
    pub head: HeadConfig,
    /// The backbone: its name and the sha256 of its file.
    pub backbone: String,
    pub backbone_sha256: String,
    pub preprocess: Preprocess,
    /// Augmented views of each training image added to the plain one (0: none).
    #[config(default = 0)]
    pub feature_views: usize,
    pub augment: Augment,
    pub optim: OptimConfig,
    /// The datasets the head was trained on (absolute paths): what `--base` trains on
    /// again.
    #[config(default = "Vec::new()")]
    pub data: Vec<String>,
    /// The "none of the above" calibrated after training; `None`: off.
    #[config(default = "None")]
    pub reject: Option<crate::reject::RejectConfig>,
    /// The backbone blocks trained with the head; `None`: the head alone.
    #[config(default = "None")]
    pub fine_tune: Option<FineTuneConfig>,
}

/// What head training produced.
pub struct HeadOutcome<M = Head> {
    /// The inference copy of the best model (lowest validation loss), or of the last epoch
    /// when fine-tuning.
    pub model: M,
    pub history: Vec<EpochStats>,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub seconds: f64,
    /// What it trained on: `cpu` or `gpu: ADAPTER`.
    pub device: String,
}

fn batch(features: &[Vec<f32>], idx: &[usize], device: &Device) -> Tensor<2> {
    let dim = features[0].len();
    let mut data = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        data.extend_from_slice(&features[i]);
    }
    Tensor::from_data(TensorData::new(data, [idx.len(), dim]), device)
}

fn labels(labels: &[usize], idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let ys: Vec<i64> = idx.iter().map(|&i| labels[i] as i64).collect();
    Tensor::from_data(TensorData::new(ys, [idx.len()]), device)
}

/// Validation loss (plain cross-entropy) and accuracy of an inference copy, on `device`
/// (the head's, without autodiff).
fn validate<M: OnFeatures>(
    model: &M,
    features: &[Vec<f32>],
    ys: &[usize],
    device: &Device,
) -> (f64, f64) {
    if features.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut loss, mut correct) = (0f64, 0usize);
    let all: Vec<usize> = (0..features.len()).collect();
    for idx in all.chunks(1024) {
        let logits = model.forward(batch(features, idx, device));
        let y = labels(ys, idx, device);
        let l: f32 = loss_fn.forward(logits.clone(), y.clone()).into_scalar();
        loss += l as f64 * idx.len() as f64;
        correct += count_correct(logits, y);
    }
    (
        loss / features.len() as f64,
        correct as f64 / features.len() as f64,
    )
}

/// Trains the head on `(features, label)` pairs, keeping the epoch with the best
/// validation loss (every epoch counts as best when there is no validation data).
pub fn train(
    cfg: &HeadTrainingConfig,
    train: (&[Vec<f32>], &[usize]),
    val: (&[Vec<f32>], &[usize]),
) -> Result<HeadOutcome> {
    let init = |device: &Device| Ok(cfg.head.init(device));
    train_model(cfg, init, cfg.head.features, train, val)
}

/// Trains the model `init` builds on `(cached vector of length dim, label)` pairs, the
/// way `train` trains a head.
pub fn train_model<M: OnFeatures>(
    cfg: &HeadTrainingConfig,
    init: impl FnOnce(&Device) -> Result<M>,
    dim: usize,
    train: (&[Vec<f32>], &[usize]),
    val: (&[Vec<f32>], &[usize]),
) -> Result<HeadOutcome<M>> {
    let (xs, ys) = train;
    ensure!(!xs.is_empty(), "no training features");
    ensure!(xs.len() == ys.len(), "features and labels differ in number");
    ensure!(
        xs.iter().chain(val.0).all(|x| x.len() == dim),
        "expected cached vectors of length {dim}"
    );
    let on = TrainDevice::open(cfg.optim.device)?;
    log::info!("training the head on {}", on.name());
    let device = on.autodiff();
    device.seed(cfg.optim.seed);
    let mut model = init(&device)?;
    let factor = cfg.fine_tune.as_ref().map_or(1.0, |f| f.backbone_lr_scale);
    let steps_per_epoch = xs.len().div_ceil(cfg.optim.batch_size);
    let mut opt = Optimization::new(
        &cfg.optim,
        cfg.optim.optimizer(),
        steps_per_epoch,
        &device,
        "head training",
    );
    let started = Instant::now();
    let (mut history, mut best, mut best_epoch, mut best_loss, mut stale) =
        (Vec::new(), None, 0, f64::INFINITY, 0);
    let mut stopped_early = false;
    // Fine-tuned blocks keep the last epoch: on a few validation images the loss tracks
    // confidence, and its minimum comes in the first epochs, before the blocks have moved
    // (BENCHMARKS.md: 82.80% by validation loss, 86.24% at the last epoch).
    let keep_last = cfg.fine_tune.is_some();
    let bar = crate::progress::bar(cfg.optim.epochs as u64, "training head");
    for epoch in 0..cfg.optim.epochs {
        if cfg.optim.patience.is_some_and(|p| stale >= p) {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        device.seed(image_seed(cfg.optim.seed, epoch, usize::MAX));
        let order =
            crate::balance::epoch_order(ys, cfg.optim.balanced_sampling, cfg.optim.seed, epoch);
        let (mut loss_sum, mut correct, mut lr) = (0f64, 0usize, cfg.optim.lr);
        for (b, idx) in order.chunks(cfg.optim.batch_size).enumerate() {
            let logits = OnFeatures::forward(&model, batch(xs, idx, &device));
            let y = labels(ys, idx, &device);
            let slow = |m: &M, grads: &mut Gradients| {
                let tail = m.backbone()?;
                Some((GradientsParams::from_module(grads, tail), factor))
            };
            let step = opt.step_parts(model, logits, y, (epoch, b), slow)?;
            (model, lr) = (step.model, step.lr);
            loss_sum += step.loss as f64 * idx.len() as f64;
            correct += step.correct;
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let current = model.valid();
        let (val_loss, val_accuracy) = validate(&current, val.0, val.1, &on.inference());
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / xs.len() as f64,
            train_accuracy: correct as f64 / xs.len() as f64,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: xs.len() as f64 / train_secs.max(1e-9),
        };
        log::info!(
            "head epoch {}/{}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}%",
            stats.epoch,
            cfg.optim.epochs,
            stats.train_loss,
            stats.train_accuracy * 100.0,
            stats.val_loss,
            stats.val_accuracy * 100.0
        );
        if keep_last || val_loss.is_nan() || val_loss < best_loss - 1e-6 {
            best_loss = if val_loss.is_nan() {
                f64::INFINITY
            } else {
                val_loss
            };
            best_epoch = epoch + 1;
            best = Some(current);
            stale = 0;
        } else {
            stale += 1;
        }
        history.push(stats);
        bar.inc(1);
        bar.set_prefix(format!("val acc {:.2}%", val_accuracy * 100.0));
    }
    bar.finish_and_clear();
    let Some(model) = best else {
        anyhow::bail!("no epoch was trained (is --epochs 0?)");
    };
    Ok(HeadOutcome {
        // Back on the CPU, where the graft and its parity check run.
        model: model.to_device(&Device::flex()),
        history,
        best_epoch,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
        device: on.name().to_string(),
    })
}
