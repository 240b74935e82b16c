//! `glimpse-train eval`: score an exported ONNX bundle on a dataset through the runtime, as
//! the board will run it, and write the report next to the model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use glimpse_runtime::{Classifier, Overrides};
use glimpse_trainer::data::{self, Dataset, Example, LoadOptions};
use glimpse_trainer::eval::{self, Report, ReportPaths};

use super::data_args::DataArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX bundle to evaluate.
    model: PathBuf,
    /// The dataset (same formats as `train --data`).
    data: PathBuf,
    /// Which part of the dataset to score.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Also write each image's probabilities to FILE, one JSON object per line (image,
    /// label, predicted, probabilities in the model's label order).
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// (`--class-names` defaults to the model's labels.)
    #[command(flatten)]
    data_args: DataArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Split {
    Train,
    Val,
    Test,
    /// Every image of the dataset.
    All,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let classifier = Classifier::load(&args.model, &Overrides::default())
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let ds = dataset_for(&classifier.labels, &args.data, &args.data_args)?;
    let examples: Vec<Example> = match args.split {
        Split::Train => ds.train.clone(),
        Split::Val => ds.val.clone(),
        Split::Test => ds.test.clone(),
        Split::All => [ds.train.clone(), ds.val.clone(), ds.test.clone()].concat(),
    };
    if examples.is_empty() {
        bail!(
            "the {:?} split of {} is empty",
            args.split,
            args.data.display()
        );
    }
    let probs = eval::predict(&classifier, &examples)?;
    if let Some(path) = &args.predictions {
        let lines = eval::predictions_jsonl(&examples, &probs, &classifier.labels);
        glimpse_runtime::fsutil::atomic_write(path, lines.as_bytes())?;
    }
    let metrics = eval::score_predictions(&examples, probs, &classifier.labels);

    // A report written at the end of training keeps its training section.
    let paths = ReportPaths::next_to(&args.model);
    // What the training run recorded stays: its summary and the rejection's evaluation.
    let previous = std::fs::read(&paths.json)
        .ok()
        .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
    let (training, reject) = previous.map_or((None, None), |r| (r.training, r.reject));
    let report = Report {
        model: args.model.display().to_string(),
        data: args.data.display().to_string(),
        split: format!("{:?} split; {}", args.split, ds.report.split).to_lowercase(),
        metrics,
        skipped: ds.report.skipped.clone(),
        small_classes: Vec::new(),
        training,
        reject,
    };
    eval::write_report(&report, &paths)?;
    print!("{}", eval::markdown(&report));
    println!(
        "\nwrote {}, {}, {}",
        paths.json.display(),
        paths.markdown.display(),
        paths.confusion_png.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The dataset at `data`, split as `train` split it, each example's label an index into
/// the model's `labels` (matched by name). Nothing is shrunk: images are scored from the
/// pixels the board would see.
pub(super) fn dataset_for(labels: &[String], data: &Path, data_args: &DataArgs) -> Result<Dataset> {
    let opts = LoadOptions {
        flag_below: 0,
        max_short_side: None,
        ..data_args.load_options(Some(labels.to_vec()))?
    };
    let mut ds = data::load(data, &opts).with_context(|| format!("loading {}", data.display()))?;
    let map: Vec<usize> = ds
        .classes
        .iter()
        .map(|c| {
            labels.iter().position(|l| l == c).with_context(|| {
                format!(
                    "dataset class {c:?} is not one of the model's {} labels",
                    labels.len()
                )
            })
        })
        .collect::<Result<_>>()?;
    for split in [&mut ds.train, &mut ds.val, &mut ds.test] {
        for e in split.iter_mut() {
            e.label = map[e.label];
        }
    }
    ds.classes = labels.to_vec();
    Ok(ds)
}
