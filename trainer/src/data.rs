//! Datasets: labelled images from a folder per class, a CSV of `path,label`, or IDX files
//! (MNIST / Fashion-MNIST), decoded once, checked, and split into train / val / test.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One decoded training example.
#[derive(Clone)]
pub struct Example {
    pub image: Arc<RgbImage>,
    pub label: usize,
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
    /// Decoded photos are stored with their short side at most this (memory bound).
    pub max_short_side: u32,
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
            max_short_side: 320,
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
        load_csv(path, opts)?
    } else if path.is_dir() {
        if find_idx(path, "train", 3).is_some() {
            load_idx(path, opts)?
        } else {
            load_folder(path, opts)?
        }
    } else {
        bail!("{}: no such file or folder", path.display());
    };
    check(ds, opts)
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

// ---------------------------------------------------------------------------------------
// Folder per class

fn load_folder(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let split_dir = |name: &str| Some(root.join(name)).filter(|p| p.is_dir());
    let (train_dir, val_dir, test_dir) = (
        split_dir("train"),
        split_dir("val").or(split_dir("valid")),
        split_dir("test"),
    );
    let mut report = LoadReport::default();
    let Some(train_dir) = train_dir else {
        let (classes, files) = list_class_folders(root)?;
        let (train, val, test) = decode_and_split(files, classes.len(), opts, &mut report);
        report.split = format!(
            "one folder per class, split {:.0}/{:.0}/{:.0} (train/val/test) by seed {}",
            (1.0 - opts.val_fraction - opts.test_fraction) * 100.0,
            opts.val_fraction * 100.0,
            opts.test_fraction * 100.0,
            opts.seed
        );
        return finish(Format::Folder, classes, train, val, test, report, opts);
    };
    let (classes, files) = list_class_folders(&train_dir)?;
    let class_index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let read_split =
        |dir: &Option<PathBuf>, report: &mut LoadReport| -> Result<Option<Vec<Example>>> {
            let Some(dir) = dir else { return Ok(None) };
            let (names, files) = list_class_folders(dir)?;
            let unknown: Vec<&String> = names
                .iter()
                .filter(|n| !class_index.contains_key(n.as_str()))
                .collect();
            ensure!(
                unknown.is_empty(),
                "{}: classes not in train/: {unknown:?}",
                dir.display()
            );
            let files = files
                .into_iter()
                .map(|(p, l)| (p, class_index[names[l].as_str()]))
                .collect();
            Ok(Some(decode_all(files, opts, report)))
        };
    let val = read_split(&val_dir, &mut report)?;
    let test = read_split(&test_dir, &mut report)?;
    let train = decode_all(files, opts, &mut report);
    let (train, val, test) = match (val, test) {
        (Some(v), Some(t)) => (train, v, t),
        (Some(v), None) => {
            let (tr, _, te) =
                stratified_split(train, classes.len(), 0.0, opts.test_fraction, opts.seed);
            (tr, v, te)
        }
        (None, Some(t)) => {
            let (tr, va, _) =
                stratified_split(train, classes.len(), opts.val_fraction, 0.0, opts.seed);
            (tr, va, t)
        }
        (None, None) => stratified_split(
            train,
            classes.len(),
            opts.val_fraction,
            opts.test_fraction,
            opts.seed,
        ),
    };
    report.split =
        "pre-split folders (train/ val/ test/), missing splits held out from train by seed".into();
    finish(Format::Folder, classes, train, val, test, report, opts)
}

/// Sub-folders of `dir` are the classes (sorted); the images inside them their examples.
/// Class names, and every image file with its class index.
type ClassFiles = (Vec<String>, Vec<(PathBuf, usize)>);

fn list_class_folders(dir: &Path) -> Result<ClassFiles> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    ensure!(
        !classes.is_empty(),
        "{}: expected one sub-folder per class, found none",
        dir.display()
    );
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let walk = walkdir::WalkDir::new(dir.join(class)).sort_by_file_name();
        for entry in walk.into_iter().filter_map(|e| e.ok()) {
            let p = entry.path();
            let is_image = glimpse_runtime::decode::has_image_extension(p);
            if entry.file_type().is_file()
                && is_image
                && !entry.file_name().to_string_lossy().starts_with('.')
            {
                files.push((p.to_path_buf(), label));
            }
        }
    }
    Ok((classes, files))
}

// ---------------------------------------------------------------------------------------
// CSV of path,label

fn load_csv(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        let (Some(p), Some(label)) = (record.get(0), record.get(1)) else {
            bail!(
                "{}: line {}: expected path,label, got {} fields",
                path.display(),
                i + 1,
                record.len()
            );
        };
        if i == 0
            && p.trim().eq_ignore_ascii_case("path")
            && label.trim().eq_ignore_ascii_case("label")
        {
            continue; // header
        }
        rows.push((base.join(p.trim()), label.trim().to_string()));
    }
    let classes: Vec<String> = rows
        .iter()
        .map(|(_, l)| l.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let files = rows
        .iter()
        .map(|(p, l)| (p.clone(), index[l.as_str()]))
        .collect();
    let mut report = LoadReport::default();
    let (train, val, test) = decode_and_split(files, classes.len(), opts, &mut report);
    report.split = format!("CSV rows split by seed {}", opts.seed);
    finish(Format::Csv, classes, train, val, test, report, opts)
}

/// Decodes the files of an unsplit dataset and splits them by the options.
fn decode_and_split(
    files: Vec<(PathBuf, usize)>,
    classes: usize,
    opts: &LoadOptions,
    report: &mut LoadReport,
) -> Splits {
    let all = decode_all(files, opts, report);
    stratified_split(
        all,
        classes,
        opts.val_fraction,
        opts.test_fraction,
        opts.seed,
    )
}

/// Train, validation and test examples.
pub type Splits = (Vec<Example>, Vec<Example>, Vec<Example>);

/// Decodes files in parallel; unreadable ones are recorded as skipped, never fatal.
fn decode_all(
    files: Vec<(PathBuf, usize)>,
    opts: &LoadOptions,
    report: &mut LoadReport,
) -> Vec<Example> {
    use rayon::prelude::*;
    let limits = glimpse_runtime::Limits::default();
    let results: Vec<std::result::Result<Example, (String, String)>> = files
        .par_iter()
        .map(|(path, label)| {
            let bytes = std::fs::read(path)
                .map_err(|e| (path.display().to_string(), e.to_string().to_lowercase()))?;
            let img = glimpse_runtime::decode(&bytes, &limits)
                .map_err(|e| (path.display().to_string(), e.to_string()))?;
            Ok(Example {
                image: Arc::new(shrink(img, opts.max_short_side)),
                label: *label,
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

// ---------------------------------------------------------------------------------------
// IDX (MNIST format)

/// Finds `<prefix>-images-idx3-ubyte[.gz]` or `<prefix>-labels-idx1-ubyte[.gz]` in `dir`.
fn find_idx(dir: &Path, prefix: &str, rank: u8) -> Option<PathBuf> {
    let kind = if rank == 3 { "images" } else { "labels" };
    let stem = format!("{prefix}-{kind}-idx{rank}-ubyte");
    [
        stem.clone(),
        format!("{stem}.gz"),
        stem.replace("-ubyte", ".ubyte"),
        format!("{}.gz", stem.replace("-ubyte", ".ubyte")),
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// Reads an IDX file of unsigned bytes: returns the dimensions and the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)
    }
    .with_context(|| format!("reading {}", path.display()))?;
    let bad = |what: String| anyhow::anyhow!("{}: not an IDX file: {what}", path.display());
    ensure!(bytes.len() >= 4, bad("shorter than its header".into()));
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(format!(
            "expected magic 00 00 08 (unsigned bytes), got {:02x} {:02x} {:02x}",
            bytes[0], bytes[1], bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    ensure!(
        (1..=4).contains(&rank) && bytes.len() >= 4 + 4 * rank,
        bad(format!("bad rank {rank}"))
    );
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let data = bytes.split_off(4 + 4 * rank);
    ensure!(
        data.len() == expected,
        bad(format!(
            "dimensions {dims:?} need {expected} bytes, got {}",
            data.len()
        ))
    );
    Ok((dims, data))
}

fn read_idx_split(dir: &Path, prefix: &str) -> Result<Option<Vec<Example>>> {
    let (Some(images), Some(labels)) = (find_idx(dir, prefix, 3), find_idx(dir, prefix, 1)) else {
        return Ok(None);
    };
    let (dims, pixels) = read_idx(&images)?;
    let (ldims, labels_data) = read_idx(&labels)?;
    ensure!(
        dims.len() == 3,
        "{}: expected [n, rows, cols] images, got dimensions {dims:?}",
        images.display()
    );
    ensure!(
        ldims == [dims[0]],
        "{} has {} labels for {} images in {}",
        labels.display(),
        ldims.first().unwrap_or(&0),
        dims[0],
        images.display()
    );
    let (h, w) = (dims[1] as u32, dims[2] as u32);
    let per = dims[1] * dims[2];
    Ok(Some(
        pixels
            .chunks_exact(per)
            .zip(labels_data)
            .map(|(px, label)| {
                // Grey replicated to RGB: luma of (v, v, v) is v again.
                let rgb: Vec<u8> = px.iter().flat_map(|v| [*v, *v, *v]).collect();
                Example {
                    image: Arc::new(RgbImage::from_raw(w, h, rgb).expect("size matches")),
                    label: label as usize,
                }
            })
            .collect(),
    ))
}

fn load_idx(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let train = read_idx_split(dir, "train")?
        .context("no train-images-idx3-ubyte / train-labels-idx1-ubyte pair")?;
    let test = read_idx_split(dir, "t10k")?.or(read_idx_split(dir, "test")?);
    let n_classes = train.iter().map(|e| e.label + 1).max().unwrap_or(0);
    let classes = match &opts.class_names {
        Some(names) => {
            ensure!(
                names.len() >= n_classes,
                "the IDX labels go up to {}, but {} class names were given",
                n_classes - 1,
                names.len()
            );
            names.clone()
        }
        None => (0..n_classes).map(|i| i.to_string()).collect(),
    };
    let mut report = LoadReport::default();
    let (train, val, test) = match test {
        Some(test) => {
            let (tr, va, _) =
                stratified_split(train, classes.len(), opts.val_fraction, 0.0, opts.seed);
            report.split = format!(
                "IDX train file split {:.0}/{:.0} (train/val) by seed {}; IDX test file as test",
                (1.0 - opts.val_fraction) * 100.0,
                opts.val_fraction * 100.0,
                opts.seed
            );
            (tr, va, test)
        }
        None => {
            report.split = format!("IDX train file split by seed {}", opts.seed);
            stratified_split(
                train,
                classes.len(),
                opts.val_fraction,
                opts.test_fraction,
                opts.seed,
            )
        }
    };
    finish(Format::Idx, classes, train, val, test, report, opts)
}

// ---------------------------------------------------------------------------------------
// Splitting

fn finish(
    format: Format,
    classes: Vec<String>,
    train: Vec<Example>,
    val: Vec<Example>,
    test: Vec<Example>,
    report: LoadReport,
    opts: &LoadOptions,
) -> Result<Dataset> {
    let (train, val) = match opts.limit_per_class {
        Some(n) => {
            let f = opts.val_fraction.clamp(0.0, 0.9);
            let n_val = ((n as f64 * f / (1.0 - f)).round() as usize).max(1);
            (
                limit_per_class(train, classes.len(), n, opts.seed),
                limit_per_class(val, classes.len(), n_val, opts.seed),
            )
        }
        None => (train, val),
    };
    Ok(Dataset {
        format,
        classes,
        train,
        val,
        test,
        report,
    })
}

/// Splits each class separately (so every split keeps the class balance), after a seeded
/// shuffle; each split comes out in a seeded random order.
pub fn stratified_split(
    all: Vec<Example>,
    classes: usize,
    val: f64,
    test: f64,
    seed: u64,
) -> Splits {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<Example>> = vec![Vec::new(); classes];
    for e in all {
        by_class[e.label].push(e);
    }
    let (mut tr, mut va, mut te) = (Vec::new(), Vec::new(), Vec::new());
    for mut items in by_class {
        items.shuffle(&mut rng);
        let n = items.len();
        // Round, but keep at least one training image per class.
        let n_test = ((n as f64 * test).round() as usize).min(n.saturating_sub(1));
        let n_val = ((n as f64 * val).round() as usize).min(n - n_test - usize::from(n > n_test));
        let rest = items.split_off(n_test + n_val);
        let val_part = items.split_off(n_test);
        te.extend(items);
        va.extend(val_part);
        tr.extend(rest);
    }
    for v in [&mut tr, &mut va, &mut te] {
        v.shuffle(&mut rng);
    }
    (tr, va, te)
}

/// Keeps at most `n` examples per class (the first in a seeded order).
pub fn limit_per_class(
    examples: Vec<Example>,
    classes: usize,
    n: usize,
    seed: u64,
) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    let mut shuffled = examples;
    shuffled.shuffle(&mut rng);
    let mut counts = vec![0usize; classes];
    shuffled
        .into_iter()
        .filter(|e| {
            counts[e.label] += 1;
            counts[e.label] <= n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(label: usize) -> Example {
        Example {
            image: Arc::new(RgbImage::new(1, 1)),
            label,
        }
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let all: Vec<Example> = (0..100).map(|i| ex(i % 2)).collect();
        let (tr, va, te) = stratified_split(all.clone(), 2, 0.1, 0.2, 7);
        assert_eq!((tr.len(), va.len(), te.len()), (70, 10, 20));
        assert_eq!(va.iter().filter(|e| e.label == 0).count(), 5);
        let again = stratified_split(all, 2, 0.1, 0.2, 7);
        let labels = |v: &[Example]| v.iter().map(|e| e.label).collect::<Vec<_>>();
        assert_eq!(labels(&tr), labels(&again.0));
    }

    #[test]
    fn tiny_classes_keep_a_training_image() {
        let (tr, _, _) = stratified_split(vec![ex(0), ex(1), ex(1)], 2, 0.5, 0.5, 1);
        assert!(tr.iter().any(|e| e.label == 0) && tr.iter().any(|e| e.label == 1));
    }

    #[test]
    fn limit_per_class_caps_each_class() {
        let all: Vec<Example> = (0..50).map(|i| ex(i % 5)).collect();
        let kept = limit_per_class(all, 5, 3, 1);
        assert_eq!(kept.len(), 15);
    }

    #[test]
    fn idx_reader_checks_header_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-idx1-ubyte");
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]).unwrap();
        assert_eq!(read_idx(&p).unwrap(), (vec![3], vec![7, 8, 9]));
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 4, 7]).unwrap();
        assert!(read_idx(&p)
            .unwrap_err()
            .to_string()
            .contains("need 4 bytes, got 1"));
        std::fs::write(&p, b"hello world").unwrap();
        assert!(read_idx(&p)
            .unwrap_err()
            .to_string()
            .contains("not an IDX file"));
    }
}
