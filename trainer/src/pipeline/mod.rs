//! Whole training runs, from a loaded dataset to an exported, checked bundle: from scratch
//! (`scratch`) or as a head on a frozen pretrained backbone (`transfer`). The command line
//! (`glimpse-train train`) fills in a [`Run`] and writes what comes out.

mod scratch;
mod transfer;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::augment::Augment;
use crate::data::{Dataset, Example};
use crate::export;
use crate::training::{EpochStats, OptimConfig};
use crate::transfer::features::Extraction;

pub use scratch::{scratch, Scratch};
pub use transfer::{transfer, BaseModel, FineTune, Transfer};

/// What every run is given.
pub struct Run<'a> {
    pub ds: &'a Dataset,
    /// The dataset's path, for the bundle's provenance line.
    pub data: &'a Path,
    /// Every dataset the examples come from (with `--base`, the previous model's and
    /// `data`), as absolute paths.
    pub datasets: Vec<PathBuf>,
    /// Where the bundle will be written (its checkpoint folder is next to it).
    pub out: &'a Path,
    /// The bundle's name (`glimpse.name`).
    pub name: String,
    /// Where the training configuration is saved.
    pub config_path: PathBuf,
    /// The dataset's images are small and all of one size (thumbnails, IDX): they keep
    /// their size, or are stretched whole to a backbone's input.
    pub uniform_small: bool,
    /// `None`: the default for the images (see [`default_augment`]).
    pub augment: Option<Augment>,
    /// `None`: 0.25 from scratch, 0.2 for a head.
    pub dropout: Option<f64>,
    /// The optimization settings; their `epochs` is replaced by [`Run::epochs`].
    pub optim: OptimConfig,
    /// `None`: 10 from scratch, 30 for a head on cached features.
    pub epochs: Option<usize>,
    /// The rejection to calibrate after training (recorded in the configuration).
    pub reject: Option<crate::reject::RejectConfig>,
}

impl Run<'_> {
    fn augment(&self) -> Augment {
        self.augment
            .clone()
            .unwrap_or_else(|| default_augment(self.uniform_small))
    }

    fn optim(&self, default_epochs: usize) -> OptimConfig {
        OptimConfig {
            epochs: self.epochs.unwrap_or(default_epochs),
            ..self.optim.clone()
        }
    }

    /// Validation examples to prove an export on (training ones when there is no
    /// validation).
    fn probe(&self) -> &[Example] {
        let from = if self.ds.val.is_empty() {
            &self.ds.train
        } else {
            &self.ds.val
        };
        &from[..from.len().min(64)]
    }

    fn config_file_name(&self) -> String {
        self.config_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Whether a dataset's training images are small (64 px or less) and all of one size.
pub fn uniform_small(ds: &Dataset) -> bool {
    let native = ds.train[0].image.dimensions();
    native.0.max(native.1) <= 64 && ds.train.iter().all(|e| e.image.dimensions() == native)
}

/// Photos get every augmentation; small uniform images only a mild crop.
pub fn default_augment(uniform_small: bool) -> Augment {
    if uniform_small {
        Augment {
            crop_scale_min: 0.8,
            ..Augment::NONE
        }
    } else {
        Augment {
            crop_scale_min: 0.6,
            flip: true,
            rotate_degrees: 10.0,
            color_jitter: 0.2,
        }
    }
}

/// A trained, exported and checked model, whichever way it was trained.
pub struct Trained {
    pub bytes: Vec<u8>,
    /// The exported bundle loaded in the runtime.
    pub classifier: glimpse_runtime::Classifier,
    pub parity: export::Parity,
    pub history: Vec<EpochStats>,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub seconds: f64,
    /// What it trained on: `cpu` or `gpu: ADAPTER`.
    pub device: String,
    /// The training configuration as saved next to the model.
    pub config: serde_json::Value,
    /// Feature extraction work (transfer learning only).
    pub extraction: Option<Extraction>,
}

/// The spelling of a value on the command line, so a provenance line can be run again.
fn cli_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// Saves a run's configuration (burn's `Config` JSON) and returns it.
fn save_config<C: burn::config::Config>(cfg: &C, path: &Path) -> Result<serde_json::Value> {
    let json = burn::config::config_to_json(cfg);
    glimpse_runtime::fsutil::atomic_write(path, json.as_bytes())?;
    Ok(serde_json::from_str(&json)?)
}
