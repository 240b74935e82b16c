//! IDX files (the MNIST format): `train-images-idx3-ubyte[.gz]` and its labels, and
//! optionally a `t10k-` (or `test-`) pair as the test split.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use image::RgbImage;

use super::split::{finish, stratified_split};
use super::{Dataset, Example, Format, LoadOptions, LoadReport};

/// Whether `dir` holds an IDX training set.
pub fn holds_idx(dir: &Path) -> bool {
    find_idx(dir, "train", 3).is_some()
}

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
            .enumerate()
            .map(|(i, (px, label))| {
                // Grey replicated to RGB: luma of (v, v, v) is v again.
                let rgb: Vec<u8> = px.iter().flat_map(|v| [*v, *v, *v]).collect();
                Example {
                    image: Arc::new(RgbImage::from_raw(w, h, rgb).expect("size matches")),
                    label: label as usize,
                    name: format!("{}#{i}", images.display()).into(),
                }
            })
            .collect(),
    ))
}

pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
