//! Training one of our architectures from scratch, with checkpoints, then exporting it.

use anyhow::Result;
use glimpse_runtime::bundle::default_short_side;
use glimpse_runtime::{Channels, Layout, Preprocess, Resize};

use super::{cli_name, save_config, Run, Trained};
use crate::data::Format;
use crate::export;
use crate::model::{Arch, ModelConfig};
use crate::training::{self, TrainingConfig};

/// The settings of a run from scratch.
pub struct Scratch {
    pub arch: Arch,
    /// Default: the images' size when small and uniform, else 64x64 for small-cnn and
    /// 128x128 for mobilenet.
    pub input_size: Option<(u32, u32)>,
    /// Default: gray for IDX, rgb otherwise.
    pub channels: Option<Channels>,
    /// Channel-width multiplier of the network.
    pub width: f32,
    /// Continue from the checkpoint next to the output.
    pub resume: bool,
}

/// Trains one of our architectures from scratch, with checkpoints, and exports it.
pub fn scratch(run: &Run, opts: &Scratch) -> Result<Trained> {
    let (ds, uniform_small) = (run.ds, run.uniform_small);
    let native = ds.train[0].image.dimensions();
    let (width, height) = opts.input_size.unwrap_or(if uniform_small {
        native
    } else if opts.arch == Arch::Mobilenet {
        (128, 128)
    } else {
        (64, 64)
    });
    let channels = opts.channels.unwrap_or(if ds.format == Format::Idx {
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
            arch: opts.arch,
            classes: ds.classes.len(),
            in_channels: channels.count(),
            input_size: [height as usize, width as usize],
            width: opts.width,
            dropout: run.dropout.unwrap_or(0.25),
        },
        preprocess: pp.clone(),
        augment: run.augment(),
        optim: run.optim(10),
        reject: run.reject.clone(),
    };
    println!("preprocess: {pp}");
    let config = save_config(&cfg, &run.config_path)?;
    let checkpoint = training::checkpoint_path(run.out);
    let outcome = training::train(&cfg, &ds.train, &ds.val, &checkpoint, opts.resume)?;

    // Export, then prove the file against the trained model on real validation images.
    let source = format!(
        "glimpse-train {} train --data {} --arch {} --epochs {} --seed {} (best epoch {} of {}); config in {}",
        env!("CARGO_PKG_VERSION"),
        run.data.display(),
        cli_name(&opts.arch),
        cfg.optim.epochs,
        cfg.optim.seed,
        outcome.best_epoch,
        outcome.history.len(),
        run.config_file_name()
    );
    let meta = export::bundle_meta(&pp, ds.classes.clone(), &run.name, source);
    let proto = export::to_onnx(&outcome.model, &pp, &meta, ds.classes.len());
    let bytes = prost::Message::encode_to_vec(&proto);
    let (classifier, parity) = export::check_parity(
        &outcome.model,
        &bytes,
        &pp,
        &training::preprocess_all(run.probe(), &pp),
    )?;
    Ok(Trained {
        bytes,
        classifier,
        parity,
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        stopped_early: outcome.stopped_early,
        seconds: outcome.seconds,
        device: outcome.device,
        config,
        extraction: None,
    })
}
