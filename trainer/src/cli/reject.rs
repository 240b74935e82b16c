//! `glimpse-train reject`: add (or recalibrate) the "none of the above" of an existing
//! bundle, as `train` does at its end: for models trained before it did, and for any ONNX
//! classifier whose last layer is a `Gemm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use glimpse_runtime::{Classifier, Overrides};
use glimpse_trainer::{eval, reject};

use super::data_args::DataArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX bundle.
    model: PathBuf,
    /// The data it was trained on (same formats and split options as `train --data`):
    /// prototypes from its training split, the threshold from its validation split, the
    /// evaluation on its test split.
    data: PathBuf,
    /// Where to write the bundle with its rejection (default: MODEL itself, replaced
    /// atomically).
    #[arg(short, long, value_name = "OUT.onnx")]
    out: Option<PathBuf>,
    /// The share of images of the known classes the threshold accepts.
    #[arg(long, default_value_t = 0.95, value_name = "SHARE")]
    reject_target: f64,
    /// Photos of things that belong to none of the classes: the rejection is measured on
    /// them (false accepts, AUROC).
    #[arg(long, value_name = "DIR")]
    negatives: Option<PathBuf>,
    /// (`--class-names` defaults to the model's labels.)
    #[command(flatten)]
    data_args: DataArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let out = args.out.clone().unwrap_or_else(|| args.model.clone());
    // Checked before any work: a bad share or folder is refused at once.
    reject::check_target(args.reject_target)?;
    let negatives = match &args.negatives {
        Some(dir) => reject::load_negatives(dir)?,
        None => Vec::new(),
    };
    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("reading model {}", args.model.display()))?;
    let labels = Classifier::load(&args.model, &Overrides::default())
        .with_context(|| format!("loading model {}", args.model.display()))?
        .labels;
    let ds = super::eval::dataset_for(&labels, &args.data, &args.data_args)?;
    if ds.train.is_empty() {
        bail!(
            "{}: no training images to find the classes' prototypes in",
            args.data.display()
        );
    }
    let cal = reject::calibrate(&bytes, labels.len(), &ds.train, &ds.val, args.reject_target)
        .with_context(|| args.model.display().to_string())?;
    let test = ds.held_out();
    let scores = eval::predict_scores(&cal.classifier, test, "evaluating")?;
    let ev = reject::evaluate(&cal.classifier, &cal.reject, (test, &scores), &negatives)?;
    print!("{}", eval::reject_markdown(&ev));
    // The evaluation first, then the model: when the model exists, its record does too.
    let record = out.with_extension("reject.json");
    let json = serde_json::to_vec_pretty(&ev).expect("an evaluation serializes");
    glimpse_runtime::fsutil::atomic_write(&record, &json)?;
    glimpse_runtime::fsutil::atomic_write(&out, &cal.bytes)?;
    println!("\nwrote {} and {}", out.display(), record.display());
    Ok(ExitCode::SUCCESS)
}
