//! The training loop: seeded shuffling and augmentation, AdamW or SGD with a cosine or step
//! schedule, validation every epoch, early stopping, and a checkpoint after every epoch
//! that `--resume` continues from after a crash or a kill.
//!
//! Reproducibility: the data order, the augmentation of every image and the dropout masks
//! are all derived from `(seed, epoch, index)`, so the same seed and data give the same
//! model, and a resumed run continues exactly where the interrupted one was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Gradients};
use fast_image_resize::Resizer;
use glimpse_runtime::Preprocess;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::data::Example;
use crate::device::{Accelerator, TrainDevice};
use crate::model::{Classifier, ModelConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    Adamw,
    /// SGD with Nesterov momentum.
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Cosine decay to 1% of the learning rate, after the warm-up.
    Cosine,
    /// Divide by 10 at 1/2 and 3/4 of the epochs.
    Step,
    Constant,
}

/// Everything that determines a training run; saved next to the model and in checkpoints.
#[derive(Config, Debug)]
pub struct TrainingConfig {
    pub model: ModelConfig,
    pub preprocess: Preprocess,
    pub augment: Augment,
    pub optim: OptimConfig,
    /// The "none of the above" calibrated after training; `None`: off.
    #[config(default = "None")]
    pub reject: Option<crate::reject::RejectConfig>,
}

/// How weights are optimized: shared by training from scratch and head training.
#[derive(Config, Debug)]
pub struct OptimConfig {
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    #[config(default = 10)]
    pub epochs: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = 1e-3)]
    pub lr: f64,
    #[config(default = 1e-4)]
    pub weight_decay: f64,
    #[config(default = 0.9)]
    pub momentum: f64,
    #[config(default = 0)]
    pub warmup_epochs: usize,
    pub label_smoothing: Option<f32>,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    /// Seeds initialization, data order, augmentation and dropout.
    #[config(default = 42)]
    pub seed: u64,
    /// The training loss's weight of each class (`--class-weights`); `None`: all 1.
    pub class_weights: Option<Vec<f32>>,
    /// Draw every class equally often in an epoch (`--balanced-sampling`).
    #[config(default = false)]
    pub balanced_sampling: bool,
    /// What the steps run on (`--device`). A checkpoint resumes on either.
    #[config(default = "Accelerator::Cpu")]
    pub device: Accelerator,
}

impl OptimConfig {
    /// The optimizer of a run: AdamW, or SGD with Nesterov momentum.
    pub fn optimizer(&self) -> ModuleOptimizer {
        match self.optimizer {
            Optimizer::Adamw => AdamWConfig::new()
                .with_weight_decay(self.weight_decay as f32)
                .with_epsilon(1e-8)
                .init(),
            Optimizer::Sgd => SgdConfig::new()
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(self.momentum)
                        .with_dampening(0.0)
                        .with_nesterov(true),
                ))
                .with_weight_decay(Some(WeightDecayConfig::new(self.weight_decay as f32)))
                .init(),
        }
    }

    /// The learning rate at `step` (warm-up is linear from 0).
    pub fn learning_rate(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let total = (self.epochs * steps_per_epoch).max(1);
        let warmup = self.warmup_epochs * steps_per_epoch;
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let p = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let min = self.lr * 0.01;
                min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::Step => {
                self.lr
                    * if p < 0.5 {
                        1.0
                    } else if p < 0.75 {
                        0.1
                    } else {
                        0.01
                    }
            }
        }
    }
}

/// The optimizer with what a step needs besides the model: the loss, the learning-rate
/// schedule and the batches per epoch. Training from scratch and head training both step
/// through it.
pub struct Optimization {
    pub optim: ModuleOptimizer,
    loss_fn: CrossEntropyLoss,
    cfg: OptimConfig,
    steps_per_epoch: usize,
    /// What diverged, for the error ("training", "head training").
    what: &'static str,
}

/// What one optimizer step did.
pub struct Stepped<M> {
    pub model: M,
    pub loss: f32,
    /// How many of the batch the model had right before the step.
    pub correct: usize,
    /// The learning rate the step used.
    pub lr: f64,
}

impl Optimization {
    pub fn new(
        cfg: &OptimConfig,
        optim: ModuleOptimizer,
        steps_per_epoch: usize,
        device: &Device,
        what: &'static str,
    ) -> Self {
        let loss_fn = CrossEntropyLossConfig::new()
            .with_smoothing(cfg.label_smoothing)
            .with_weights(cfg.class_weights.clone())
            .init(device);
        Optimization {
            optim,
            loss_fn,
            cfg: cfg.clone(),
            steps_per_epoch,
            what,
        }
    }

    /// One step on batch `batch` of `epoch`, whose logits `model` computed: the loss
    /// (refused when it is not finite: the run diverged), then the update at the rate the
    /// schedule gives this batch.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        logits: Tensor<2>, // [batch, classes]
        y: Tensor<1, Int>, // [batch]
        epoch: usize,
        batch: usize,
    ) -> Result<Stepped<M>> {
        self.step_parts(model, logits, y, (epoch, batch), |_, _| None)
    }

    /// `step`, where `slow` may take some parameters' gradients out, with a factor: those
    /// parameters are updated at the schedule's rate times the factor (a pretrained
    /// backbone's blocks, fine-tuned under a new head).
    pub fn step_parts<M: Module>(
        &mut self,
        model: M,
        logits: Tensor<2>,
        y: Tensor<1, Int>,
        (epoch, batch): (usize, usize),
        slow: impl FnOnce(&M, &mut Gradients) -> Option<(GradientsParams, f64)>,
    ) -> Result<Stepped<M>> {
        let loss = self.loss_fn.forward(logits.clone(), y.clone());
        let l: f32 = loss.clone().into_scalar();
        ensure!(
            l.is_finite(),
            "{} diverged at epoch {} (loss {l}); lower --lr",
            self.what,
            epoch + 1
        );
        let correct = count_correct(logits, y);
        let mut grads = loss.backward();
        let slow = slow(&model, &mut grads);
        let rest = GradientsParams::from_grads(grads, &model);
        let lr = self
            .cfg
            .learning_rate(epoch * self.steps_per_epoch + batch, self.steps_per_epoch);
        let mut model = model;
        if let Some((grads, factor)) = slow {
            model = self.optim.step(lr * factor, model, grads);
        }
        let model = self.optim.step(lr, model, rest);
        Ok(Stepped {
            model,
            loss: l,
            correct,
            lr,
        })
    }
}

/// What one epoch achieved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The state a checkpoint holds besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    epochs_done: usize,
    history: Vec<EpochStats>,
    best_epoch: usize,
    best_val_loss: f64,
    stale_epochs: usize,
    config: String,
    /// The images it was trained and validated on.
    data: DataFingerprint,
}

/// What identifies a run's training and validation images: a checkpoint resumes only on
/// the same ones (other images would reshuffle the splits, and validation images could
/// leak into training).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DataFingerprint {
    train: usize,
    val: usize,
    /// sha256 over every image's label, size and pixels, training then validation.
    sha256: String,
}

impl DataFingerprint {
    fn of(train: &[Example], val: &[Example]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (split, examples) in [(b"train", train), (b"valid", val)] {
            h.update(split);
            h.update((examples.len() as u64).to_le_bytes());
            for e in examples {
                h.update((e.label as u64).to_le_bytes());
                h.update(e.image.width().to_le_bytes());
                h.update(e.image.height().to_le_bytes());
                h.update(e.image.as_raw());
            }
        }
        DataFingerprint {
            train: train.len(),
            val: val.len(),
            sha256: format!("{:x}", h.finalize()),
        }
    }
}

pub struct Outcome {
    /// The inference copy of the best model (lowest validation loss).
    pub model: Classifier,
    pub history: Vec<EpochStats>,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub seconds: f64,
    /// What it trained on: `cpu` or `gpu: ADAPTER`.
    pub device: String,
}

/// Format 2: the parts, then the sha256 of everything before it (hex). Format 1 had no
/// checksum and no data fingerprint.
const MAGIC: &[u8; 12] = b"GLIMPSECKPT2";
const MAGIC_V1: &[u8; 12] = b"GLIMPSECKPT1";
const CHECKSUM_LEN: usize = 64;

/// The checkpoint file of a run writing `out`: `<out>.ckpt/checkpoint.bin`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut dir = out.as_os_str().to_owned();
    dir.push(".ckpt");
    PathBuf::from(dir).join("checkpoint.bin")
}

fn to_bytes(model: &Classifier) -> Result<Vec<u8>> {
    // valid() first: it syncs the batch-norm running statistics into the record.
    Ok(model
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .to_vec())
}

fn from_bytes(fresh: Classifier, bytes: Vec<u8>) -> Result<Classifier> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    fresh
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("checkpoint does not match the model: {e:?}"))
}

fn write_checkpoint(
    path: &Path,
    progress: &Progress,
    model: &[u8],
    optim: &[u8],
    best: &[u8],
) -> Result<()> {
    let meta = serde_json::to_vec(progress).expect("progress serializes");
    let mut buf =
        Vec::with_capacity(MAGIC.len() + 32 + meta.len() + model.len() + optim.len() + best.len());
    buf.extend_from_slice(MAGIC);
    for part in [&meta[..], model, optim, best] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    let checksum = glimpse_runtime::fsutil::sha256_hex(&buf);
    buf.extend_from_slice(checksum.as_bytes());
    Ok(glimpse_runtime::fsutil::atomic_write(path, &buf)?)
}

/// What a checkpoint file holds: progress, current model and optimizer, best model.
struct Checkpoint {
    progress: Progress,
    model: Vec<u8>,
    optim: Vec<u8>,
    best: Vec<u8>,
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let buf =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let bad = || {
        anyhow::anyhow!(
            "{}: not a glimpse checkpoint (or a damaged one)",
            path.display()
        )
    };
    if buf.starts_with(MAGIC_V1) {
        bail!(
            "{}: written by an older glimpse-train (checkpoint format 1, without a checksum or a record of its data); start afresh without --resume",
            path.display()
        );
    }
    if !buf.starts_with(MAGIC) || buf.len() < MAGIC.len() + CHECKSUM_LEN {
        return Err(bad());
    }
    let (buf, checksum) = buf.split_at(buf.len() - CHECKSUM_LEN);
    if glimpse_runtime::fsutil::sha256_hex(buf).as_bytes() != checksum {
        bail!(
            "{}: the checkpoint is damaged (its contents do not match their sha256); start afresh without --resume",
            path.display()
        );
    }
    let mut at = MAGIC.len();
    let mut parts = Vec::new();
    for _ in 0..4 {
        let len_bytes: [u8; 8] = buf
            .get(at..at + 8)
            .ok_or_else(bad)?
            .try_into()
            .expect("8 bytes");
        let len = u64::from_le_bytes(len_bytes) as usize;
        at += 8;
        parts.push(
            buf.get(at..at.checked_add(len).ok_or_else(bad)?)
                .ok_or_else(bad)?
                .to_vec(),
        );
        at += len;
    }
    if at != buf.len() {
        return Err(bad());
    }
    let progress: Progress = serde_json::from_slice(&parts[0]).map_err(|_| bad())?;
    let best = parts.pop().expect("4 parts");
    let optim = parts.pop().expect("3 parts");
    let model = parts.pop().expect("2 parts");
    Ok(Checkpoint {
        progress,
        model,
        optim,
        best,
    })
}

/// The preprocessed, non-augmented input of every example (`C*H*W` floats each).
pub fn preprocess_all(examples: &[Example], pp: &Preprocess) -> Vec<Vec<f32>> {
    let per: usize = pp.shape(1)[1..].iter().product();
    examples
        .par_iter()
        .map_init(Resizer::new, |resizer, e| {
            let mut out = vec![0f32; per];
            pp.normalize_into(&pp.fit(&e.image, resizer), &mut out);
            out
        })
        .collect()
}

/// Mean and standard deviation of each input channel over (up to 2,000 of) the training
/// images, in 0–255 units: the normalization a model trained here uses.
pub fn channel_stats(examples: &[Example], pp: &Preprocess) -> (Vec<f32>, Vec<f32>) {
    let c = pp.channels.count();
    let raw = Preprocess {
        mean: vec![0.0; c],
        std: vec![1.0; c],
        layout: glimpse_runtime::Layout::Nchw,
        ..pp.clone()
    };
    let step = (examples.len() / 2000).max(1);
    let sample: Vec<Example> = examples.iter().step_by(step).cloned().collect();
    let tensors = preprocess_all(&sample, &raw);
    let hw = (pp.width * pp.height) as usize;
    let (mut sum, mut sq) = (vec![0f64; c], vec![0f64; c]);
    for t in &tensors {
        for ch in 0..c {
            for v in &t[ch * hw..(ch + 1) * hw] {
                sum[ch] += *v as f64;
                sq[ch] += (*v as f64) * (*v as f64);
            }
        }
    }
    let n = (tensors.len() * hw).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - (*m as f64).powi(2)).max(1.0)).sqrt() as f32)
        .collect();
    (mean, std)
}

/// Validation loss (plain cross-entropy) and accuracy of the inference copy of `model`,
/// on `device` (the model's, without autodiff).
fn validate(
    model: &Classifier,
    inputs: &[Vec<f32>],
    labels: &[usize],
    pp: &Preprocess,
    device: &Device,
) -> (f64, f64) {
    if inputs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let eval = model.valid();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut loss, mut correct) = (0f64, 0usize);
    for (xs, ys) in inputs.chunks(256).zip(labels.chunks(256)) {
        let n = xs.len();
        let x = Tensor::<4>::from_data(TensorData::new(xs.concat(), pp.shape(n)), device);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(ys.iter().map(|l| *l as i64).collect::<Vec<_>>(), [n]),
            device,
        );
        let logits = eval.forward(x);
        let l: f32 = loss_fn.forward(logits.clone(), y.clone()).into_scalar();
        loss += l as f64 * n as f64;
        let pred: Vec<i64> = logits
            .argmax(1)
            .squeeze_dim::<1>(1)
            .try_into_vec_as::<i64>()
            .expect("int argmax");
        correct += pred
            .iter()
            .zip(ys)
            .filter(|(p, y)| **p as usize == **y)
            .count();
    }
    (
        loss / inputs.len() as f64,
        correct as f64 / inputs.len() as f64,
    )
}

/// How many rows of `logits` (`[N, classes]`) have their maximum at the label in `y`.
pub fn count_correct(logits: Tensor<2>, y: Tensor<1, Int>) -> usize {
    let c: i64 = logits
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(y)
        .int()
        .sum()
        .into_scalar();
    c as usize
}

/// A per-image seed: independent streams for every (run, epoch, image).
pub fn image_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    // SplitMix64 finalizer over the combined key.
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains on `train`, validating on `val`; checkpoints to `checkpoint` after every epoch and,
/// with `resume`, continues from it.
pub fn train(
    cfg: &TrainingConfig,
    train: &[Example],
    val: &[Example],
    checkpoint: &Path,
    resume: bool,
) -> Result<Outcome> {
    ensure!(!train.is_empty(), "no training images");
    ensure!(
        cfg.optim.batch_size >= 2,
        "batch size must be at least 2 (batch norm needs a batch), got {}",
        cfg.optim.batch_size
    );
    let on = TrainDevice::open(cfg.optim.device)?;
    log::info!("training on {}", on.name());
    let device = on.autodiff();
    device.seed(cfg.optim.seed);
    let data = DataFingerprint::of(train, val);
    let (mut model, optim, mut progress, mut best_bytes) =
        start(cfg, checkpoint, resume, data, &device)?;
    let pp = &cfg.preprocess;
    let val_inputs = preprocess_all(val, pp);
    let val_labels: Vec<usize> = val.iter().map(|e| e.label).collect();
    let steps_per_epoch = train.len().div_ceil(cfg.optim.batch_size);
    let mut opt = Optimization::new(&cfg.optim, optim, steps_per_epoch, &device, "training");
    let started = Instant::now();
    let mut stopped_early = false;

    for epoch in progress.epochs_done..cfg.optim.epochs {
        if cfg
            .optim
            .patience
            .is_some_and(|patience| progress.stale_epochs >= patience)
        {
            stopped_early = true;
            break;
        }
        let t0 = Instant::now();
        let totals;
        (model, totals) = train_epoch(cfg, train, model, &mut opt, epoch, &device)?;
        let train_secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) =
            validate(&model, &val_inputs, &val_labels, pp, &on.inference());
        let stats = EpochStats {
            epoch: epoch + 1,
            lr: totals.lr,
            train_loss: totals.loss_sum / totals.seen.max(1) as f64,
            train_accuracy: totals.correct as f64 / totals.seen.max(1) as f64,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_second: totals.seen as f64 / train_secs.max(1e-9),
        };
        log_epoch(&stats, cfg.optim.epochs);
        let model_bytes = to_bytes(&model)?;
        if progress.record(stats) {
            best_bytes = model_bytes.clone();
        }
        let optim_bytes = opt
            .optim
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .to_vec();
        write_checkpoint(
            checkpoint,
            &progress,
            &model_bytes,
            &optim_bytes,
            &best_bytes,
        )?;
    }
    ensure!(
        !best_bytes.is_empty(),
        "no epoch was trained (is --epochs 0?)"
    );
    let best = from_bytes(cfg.model.init(&Device::flex()), best_bytes)?;
    Ok(Outcome {
        model: best.valid(),
        history: progress.history,
        best_epoch: progress.best_epoch,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
        device: on.name().to_string(),
    })
}

/// A fresh model and optimizer, or (`resume`) the state of the checkpoint, with its
/// progress and best model so far.
fn start(
    cfg: &TrainingConfig,
    checkpoint: &Path,
    resume: bool,
    data: DataFingerprint,
    device: &Device,
) -> Result<(Classifier, ModuleOptimizer, Progress, Vec<u8>)> {
    let config_json = resume_key(cfg);
    let model = cfg.model.init(device);
    let optim = cfg.optim.optimizer();
    if !resume {
        let progress = Progress {
            epochs_done: 0,
            history: Vec::new(),
            best_epoch: 0,
            best_val_loss: f64::INFINITY,
            stale_epochs: 0,
            config: config_json,
            data,
        };
        return Ok((model, optim, progress, Vec::new()));
    }
    ensure!(
        checkpoint.is_file(),
        "--resume: no checkpoint at {}",
        checkpoint.display()
    );
    let Checkpoint {
        progress,
        model: m,
        optim: o,
        best,
    } = read_checkpoint(checkpoint)?;
    // The images first: they also change settings measured on them (mean, std).
    if progress.data != data {
        let was = &progress.data;
        bail!(
            "--resume: the images changed since the checkpoint {} was written ({} training and {} validation images then, {} and {} now, or the same number with other contents): the splits would differ and validation images could leak into training; start afresh without --resume",
            checkpoint.display(),
            was.train,
            was.val,
            data.train,
            data.val
        );
    }
    if progress.config != config_json {
        bail!(
            "--resume: the checkpoint {} was made with other settings ({}); run with the same options or start afresh without --resume",
            checkpoint.display(),
            setting_changes(&progress.config, &config_json)
        );
    }
    // The model first: the optimizer state is keyed by the model's parameter ids.
    let model = from_bytes(model, m)?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(o))
        .map_err(|e| anyhow::anyhow!("checkpoint optimizer state: {e:?}"))?;
    log::info!(
        "resuming after epoch {} of {}",
        progress.epochs_done,
        cfg.optim.epochs
    );
    Ok((model, optim, progress, best))
}

/// The configuration a checkpoint must match to be resumed: all of it but the device,
/// since the same steps can go on on the CPU or a GPU.
fn resume_key(cfg: &TrainingConfig) -> String {
    let mut cfg = cfg.clone();
    cfg.optim.device = Accelerator::default();
    burn::config::config_to_json(&cfg)
}

/// The settings that differ between two training configurations (JSON), as
/// `optim.epochs: 4 then, 5 now`.
fn setting_changes(then: &str, now: &str) -> String {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, va) in a {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, va, b.get(k).unwrap_or(&serde_json::Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} then, {b} now")),
            _ => {}
        }
    }
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
    let mut out = Vec::new();
    walk("", &parse(then), &parse(now), &mut out);
    if out.is_empty() {
        return "its configuration is in the checkpoint".into();
    }
    out.join("; ")
}

/// The sums over one epoch's batches.
struct EpochTotals {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    /// The learning rate of the last step.
    lr: f64,
}

/// One pass over the training images, in the epoch's seeded order and augmentation.
fn train_epoch(
    cfg: &TrainingConfig,
    train: &[Example],
    mut model: Classifier,
    opt: &mut Optimization,
    epoch: usize,
    device: &Device,
) -> Result<(Classifier, EpochTotals)> {
    // Dropout draws from the backend's global generator: reseed it per epoch so a resumed
    // run draws what the uninterrupted run would have.
    device.seed(image_seed(cfg.optim.seed, epoch, usize::MAX));
    let labels: Vec<usize> = train.iter().map(|e| e.label).collect();
    let order =
        crate::balance::epoch_order(&labels, cfg.optim.balanced_sampling, cfg.optim.seed, epoch);
    let steps = train.len().div_ceil(cfg.optim.batch_size);
    let bar = crate::progress::bar(
        steps as u64,
        &format!("epoch {}/{}", epoch + 1, cfg.optim.epochs),
    );
    let mut t = EpochTotals {
        loss_sum: 0.0,
        correct: 0,
        seen: 0,
        lr: cfg.optim.lr,
    };
    let pp = &cfg.preprocess;
    for (b, idx) in order.chunks(cfg.optim.batch_size).enumerate() {
        let n = idx.len();
        if n < 2 {
            continue; // batch norm cannot train on a single image
        }
        let data = augmented_batch(cfg, train, idx, epoch);
        let labels: Vec<i64> = idx.iter().map(|&i| train[i].label as i64).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, pp.shape(n)), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device);
        let logits = model.forward(x);
        let step = opt.step(model, logits, y, epoch, b)?;
        (model, t.lr) = (step.model, step.lr);
        t.loss_sum += step.loss as f64 * n as f64;
        t.correct += step.correct;
        t.seen += n;
        bar.inc(1);
        bar.set_prefix(format!(
            "loss {:.4} acc {:.2}%",
            t.loss_sum / t.seen as f64,
            100.0 * t.correct as f64 / t.seen as f64
        ));
    }
    bar.finish_and_clear();
    Ok((model, t))
}

/// The input of one batch: each image's augmented view of this epoch, normalized.
fn augmented_batch(
    cfg: &TrainingConfig,
    train: &[Example],
    idx: &[usize],
    epoch: usize,
) -> Vec<f32> {
    let pp = &cfg.preprocess;
    let per: usize = pp.shape(1)[1..].iter().product();
    let mut data = vec![0f32; per * idx.len()];
    data.par_chunks_mut(per).zip(idx.par_iter()).for_each_init(
        Resizer::new,
        |resizer, (out, &i)| {
            let mut rng = ChaCha8Rng::seed_from_u64(image_seed(cfg.optim.seed, epoch, i + 1));
            let view = cfg.augment.apply(&train[i].image, pp, &mut rng, resizer);
            pp.normalize_into(&view, out);
        },
    );
    data
}

fn log_epoch(stats: &EpochStats, epochs: usize) {
    log::info!(
        "epoch {}/{epochs}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | {:.0} img/s, {:.0} s",
        stats.epoch,
        stats.train_loss,
        stats.train_accuracy * 100.0,
        stats.val_loss,
        stats.val_accuracy * 100.0,
        stats.images_per_second,
        stats.seconds
    );
}

impl Progress {
    /// Adds an epoch; whether it is the best so far (the lowest validation loss; without
    /// validation data every epoch is).
    fn record(&mut self, stats: EpochStats) -> bool {
        let val_loss = stats.val_loss;
        let improved = val_loss.is_nan() || val_loss < self.best_val_loss - 1e-6;
        if improved {
            self.best_val_loss = if val_loss.is_nan() {
                f64::INFINITY
            } else {
                val_loss
            };
            self.best_epoch = stats.epoch;
            self.stale_epochs = 0;
        } else {
            self.stale_epochs += 1;
        }
        self.epochs_done = stats.epoch;
        self.history.push(stats);
        improved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_seeds_differ_per_image_and_epoch() {
        let a = image_seed(1, 0, 1);
        assert_ne!(a, image_seed(1, 0, 2));
        assert_ne!(a, image_seed(1, 1, 1));
        assert_ne!(a, image_seed(2, 0, 1));
        assert_eq!(a, image_seed(1, 0, 1));
    }

    #[test]
    fn a_checkpoint_resumes_on_either_device_but_not_with_other_settings() {
        let pp = Preprocess {
            width: 16,
            height: 16,
            resize: glimpse_runtime::Resize::Stretch,
            mean: vec![127.5],
            std: vec![127.5],
            channels: glimpse_runtime::Channels::Gray,
            layout: glimpse_runtime::Layout::Nchw,
        };
        let model = ModelConfig::new(crate::model::Arch::SmallCnn, 2, 1, [16, 16]);
        let optim = OptimConfig::new(Optimizer::Adamw, Schedule::Constant);
        let cpu = TrainingConfig::new(model, pp, Augment::NONE, optim);
        let mut gpu = cpu.clone();
        gpu.optim.device = Accelerator::Gpu;
        assert_eq!(resume_key(&cpu), resume_key(&gpu));
        gpu.optim.epochs += 1;
        let changes = setting_changes(&resume_key(&cpu), &resume_key(&gpu));
        assert_eq!(changes, "optim.epochs: 10 then, 11 now");
    }
}
