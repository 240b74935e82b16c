//! A folder with one sub-folder per class, optionally under `train/`, `val/` and `test/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use super::split::{finish, stratified_split};
use super::{decode_and_split, decode_splits, Dataset, Format, LoadOptions, LoadReport};

/// Reads the folder at `root`; without `train/` its class folders are split by the options.
pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let mut report = LoadReport::default();
    let split_dir = |name: &str| Some(root.join(name)).filter(|p| p.is_dir());
    let Some(train_dir) = split_dir("train") else {
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
    let (classes, train) = list_class_folders(&train_dir)?;
    let val = split_files(split_dir("val").or(split_dir("valid")), &classes)?;
    let test = split_files(split_dir("test"), &classes)?;
    let n = classes.len();
    let (vf, tf, seed) = (opts.val_fraction, opts.test_fraction, opts.seed);
    let files = match (val, test) {
        (Some(v), Some(t)) => (train, v, t),
        (Some(v), None) => {
            let (tr, _, te) = stratified_split(train, n, 0.0, tf, seed);
            (tr, v, te)
        }
        (None, Some(t)) => {
            let (tr, va, _) = stratified_split(train, n, vf, 0.0, seed);
            (tr, va, t)
        }
        (None, None) => stratified_split(train, n, vf, tf, seed),
    };
    let (train, val, test) = decode_splits(files, opts, &mut report);
    report.split =
        "pre-split folders (train/ val/ test/), missing splits held out from train by seed".into();
    finish(Format::Folder, classes, train, val, test, report, opts)
}

/// The files of a `val/` or `test/` folder (`None` if there is none), with the index of
/// their class in `classes` (the classes of `train/`).
fn split_files(dir: Option<PathBuf>, classes: &[String]) -> Result<Option<Vec<(PathBuf, usize)>>> {
    let Some(dir) = dir else { return Ok(None) };
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let (names, files) = list_class_folders(&dir)?;
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !index.contains_key(n.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "{}: classes not in train/: {unknown:?}",
        dir.display()
    );
    let files = files
        .into_iter()
        .map(|(p, l)| (p, index[names[l].as_str()]))
        .collect();
    Ok(Some(files))
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
        for file in glimpse_runtime::decode::image_files(&dir.join(class), true) {
            match file {
                Ok(path) => files.push((path, label)),
                Err(err) => log::warn!("{err}: skipped"),
            }
        }
    }
    Ok((classes, files))
}
