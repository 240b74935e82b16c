//! Dataset options shared by `train` and `eval`: both must read and split a dataset the
//! same way, or `eval` would score images the model was trained on.

use std::path::PathBuf;

use anyhow::Result;
use glimpse_runtime::classifier::read_labels;
use glimpse_trainer::data::LoadOptions;

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Class names, one per line (IDX files carry only numbers).
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
    /// Fraction of training images held out for validation (when not pre-split).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Fraction held out for testing (when the data has no test split).
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Seed for the split (and, in training, initialization, data order, augmentation
    /// and dropout).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl DataArgs {
    /// Load options; `default_names` stands in when no `--class-names` file is given.
    pub fn load_options(&self, default_names: Option<Vec<String>>) -> Result<LoadOptions> {
        Ok(LoadOptions {
            class_names: match &self.class_names {
                Some(p) => Some(read_labels(p)?),
                None => default_names,
            },
            val_fraction: self.val_fraction,
            test_fraction: self.test_fraction,
            seed: self.seed,
            ..LoadOptions::default()
        })
    }
}
