//! Datasets: labelled images from a folder per class (`folder`), a CSV of `path,label`
//! (`csv`), or IDX files (MNIST / Fashion-MNIST, `idx`), decoded once, checked, and split
//! into train / val / test (`split`).

mod csv;
mod folder;
mod idx;
mod split;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use image::RgbImage;

pub use idx::read_idx;
pub use split::{limit_per_class, stratified_split, Labelled};

/// One decoded training example.
#[derive(Clone)]
pub struct Example {
    pub image: Arc<RgbImage>,
    pub label: usize,
    /// Where it came from: its file, or `<IDX file>#<index>`.
    pub name: Arc<str>,
}

/// Where the examples came from and what went wrong while reading them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// `(path, reason)` of every file that could not be used.
    pub skipped: Vec<(String, String)>,
    /// Training images per class, in class order.
    pub class_counts: Vec<(String, usize)>,
    /// Classes with fewer training images than [`LoadOptions::flag_below`]: usable, but
    /// their scores deserve suspicion.
    pub small_classes: Vec<(String, usize)>,
    /// How the train / val / test split was made.
    pub split: String,
}

/// The kind of source a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Folder,
    Csv,
    Idx,
}

#[derive(Clone)]
pub struct Dataset {
    pub format: Format,
    pub classes: Vec<String>,
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub test: Vec<Example>,
    pub report: LoadReport,
}

impl Dataset {
    /// The images a model is judged on: the test split, or the validation split when there
    /// is no test split.
    pub fn held_out(&self) -> &[Example] {
        if self.test.is_empty() {
            &self.val
        } else {
            &self.test
        }
    }
}

/// How to read and split a dataset.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Class names for formats that have none (IDX); one per line.
    pub class_names: Option<Vec<String>>,
    /// Fraction of the training images held out for validation when not pre-split.
    pub val_fraction: f64,
    /// Fraction held out for testing when the dataset has no test split.
    pub test_fraction: f64,
    pub seed: u64,
    /// Training photos are stored with their short side at most this (a memory bound;
    /// augmentation crops and resizes them again anyway). Validation and test photos are
    /// kept whole, so that they are scored from the pixels the board would see.
    pub max_short_side: Option<u32>,
    /// Use at most this many training images per class (a seeded, stratified subset);
    /// validation is cut in proportion (`val_fraction`), so a few-shot run does not select
    /// its model on thousands of held-out labels a few-shot user would not have.
    pub limit_per_class: Option<usize>,
    /// Classes with fewer training images than this are flagged (a warning and a note in
    /// the report).
    pub flag_below: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            class_names: None,
            val_fraction: 0.1,
            test_fraction: 0.1,
            seed: 42,
            max_short_side: Some(320),
            limit_per_class: None,
            flag_below: 20,
        }
    }
}

/// Reads a dataset, recognizing its format: a `.csv` file, a folder holding IDX files, or
/// a folder with one sub-folder per class (optionally under `train/`, `val/`, `test/`).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let ds = if path.is_file() {
        ensure!(
            path.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
            "{}: expected a folder or a .csv file of path,label rows",
            path.display()
        );
        csv::load(path, opts)?
    } else if path.is_dir() {
        if idx::holds_idx(path) {
            idx::load(path, opts)?
        } else {
            folder::load(path, opts)?
        }
    } else {
        bail!("{}: no such file or folder", path.display());
    };
    check(ds, opts)
}

/// Several datasets as one: the classes of all (sorted; a class in several is one class)
/// and each split the union of theirs, checked again as one dataset.
pub fn merge(sets: Vec<Dataset>, opts: &LoadOptions) -> Result<Dataset> {
    let mut classes: Vec<String> = sets.iter().flat_map(|d| d.classes.clone()).collect();
    classes.sort();
    classes.dedup();
    let mut out = Dataset {
        format: sets.first().map_or(Format::Folder, |d| d.format),
        classes,
        train: Vec::new(),
        val: Vec::new(),
        test: Vec::new(),
        report: LoadReport::default(),
    };
    let mut splits = Vec::new();
    for d in sets {
        let remap: Vec<usize> = d
            .classes
            .iter()
            .map(|c| out.classes.binary_search(c).expect("a class of the union"))
            .collect();
        let moved = |v: Vec<Example>| {
            v.into_iter().map(|e| Example {
                label: remap[e.label],
                ..e
            })
        };
        out.train.extend(moved(d.train));
        out.val.extend(moved(d.val));
        out.test.extend(moved(d.test));
        out.report.skipped.extend(d.report.skipped);
        splits.push(d.report.split);
    }
    out.report.split = splits.join("; ");
    check(out, opts)
}

fn check(mut ds: Dataset, opts: &LoadOptions) -> Result<Dataset> {
    ensure!(
        !ds.classes.is_empty() && !ds.train.is_empty(),
        "the dataset holds no usable images"
    );
    ensure!(
        ds.classes.len() >= 2,
        "a classifier needs at least 2 classes, the dataset has 1 ({})",
        ds.classes[0]
    );
    let mut counts = vec![0usize; ds.classes.len()];
    for e in &ds.train {
        counts[e.label] += 1;
    }
    let empty: Vec<&str> = counts
        .iter()
        .zip(&ds.classes)
        .filter(|(n, _)| **n == 0)
        .map(|(_, c)| c.as_str())
        .collect();
    ensure!(
        empty.is_empty(),
        "classes with no training images: {}",
        empty.join(", ")
    );
    ds.report.class_counts = ds
        .classes
        .iter()
        .cloned()
        .zip(counts.iter().copied())
        .collect();
    ds.report.small_classes = ds
        .report
        .class_counts
        .iter()
        .filter(|(_, n)| *n < opts.flag_below)
        .cloned()
        .collect();
    for (class, n) in &ds.report.small_classes {
        log::warn!("class {class:?} has only {n} training images (fewer than {}): expect its scores to be unreliable", opts.flag_below);
    }
    if !ds.report.skipped.is_empty() {
        log::warn!("skipped {} unreadable files:", ds.report.skipped.len());
        for (path, reason) in &ds.report.skipped {
            log::warn!("  {path}: {reason}");
        }
    }
    Ok(ds)
}

/// Splits the files of an unsplit dataset by the options and decodes them.
fn decode_and_split(
    files: Vec<(PathBuf, usize)>,
    classes: usize,
    opts: &LoadOptions,
    report: &mut LoadReport,
) -> Splits {
    let split = stratified_split(
        files,
        classes,
        opts.val_fraction,
        opts.test_fraction,
        opts.seed,
    );
    decode_splits(split, opts, report)
}

/// Decodes the files of each split; only the training images are shrunk.
fn decode_splits(
    (train, val, test): FileSplits,
    opts: &LoadOptions,
    report: &mut LoadReport,
) -> Splits {
    (
        decode_files(train, opts.max_short_side, report),
        decode_files(val, None, report),
        decode_files(test, None, report),
    )
}

/// Train, validation and test examples.
pub type Splits = (Vec<Example>, Vec<Example>, Vec<Example>);

/// Train, validation and test files, each with its class.
type FileSplits = (
    Vec<(PathBuf, usize)>,
    Vec<(PathBuf, usize)>,
    Vec<(PathBuf, usize)>,
);

/// Decodes files in parallel (each `(file, class)`, shrunk to `max_short_side`);
/// unreadable ones are recorded in `report` as skipped, never fatal.
pub fn decode_files(
    files: Vec<(PathBuf, usize)>,
    max_short_side: Option<u32>,
    report: &mut LoadReport,
) -> Vec<Example> {
    use rayon::prelude::*;
    let limits = glimpse_runtime::Limits::default();
    let results: Vec<std::result::Result<Example, (String, String)>> = files
        .par_iter()
        .map(|(path, label)| {
            let bytes = glimpse_runtime::decode::read_image_file(path, &limits)
                .map_err(|e| (path.display().to_string(), e.to_string().to_lowercase()))?;
            let img = glimpse_runtime::decode(&bytes, &limits)
                .map_err(|e| (path.display().to_string(), e.to_string()))?;
            Ok(Example {
                image: Arc::new(match max_short_side {
                    Some(side) => shrink(img, side),
                    None => img,
                }),
                label: *label,
                name: path.display().to_string().into(),
            })
        })
        .collect();
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(e) => out.push(e),
            Err(skip) => report.skipped.push(skip),
        }
    }
    out
}

/// Downscales so the short side is at most `max_short` (training never needs more).
fn shrink(img: RgbImage, max_short: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short <= max_short {
        return img;
    }
    let scale = max_short as f64 / short as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    glimpse_runtime::preprocess::resize(&img, nw, nh, &mut fast_image_resize::Resizer::new())
}
