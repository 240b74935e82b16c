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

/// The largest IDX payload read: far above Fashion-MNIST's 47 MB, small enough that a
/// header declaring billions of images (or a gzip bomb) is refused before it is read.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an IDX file of unsigned bytes: returns the dimensions and the data. The header
/// is checked before the data is read, and no more than it declares is read (gzip
/// included).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let bad = |what: String| anyhow::anyhow!("{}: not an IDX file: {what}", path.display());
    let reading = || format!("reading {}", path.display());
    let mut magic = [0u8; 4];
    ensure!(
        read_header(&mut reader, &mut magic).with_context(reading)?,
        bad("shorter than its header".into())
    );
    if magic[..3] != [0, 0, 0x08] {
        return Err(bad(format!(
            "expected magic 00 00 08 (unsigned bytes), got {:02x} {:02x} {:02x}",
            magic[0], magic[1], magic[2]
        )));
    }
    let rank = magic[3] as usize;
    ensure!((1..=4).contains(&rank), bad(format!("bad rank {rank}")));
    let mut dims_raw = vec![0u8; 4 * rank];
    ensure!(
        read_header(&mut reader, &mut dims_raw).with_context(reading)?,
        bad(format!("bad rank {rank}"))
    );
    let dims: Vec<usize> = dims_raw
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    ensure!(
        dims.iter().all(|&d| d > 0),
        bad(format!("dimensions {dims:?} include a zero"))
    );
    let expected = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "dimensions {dims:?} declare more than {MAX_IDX_BYTES} bytes"
            ))
        })?;
    let mut data = Vec::with_capacity(expected as usize);
    reader
        .take(expected + 1)
        .read_to_end(&mut data)
        .with_context(reading)?;
    ensure!(
        data.len() as u64 == expected,
        bad(format!(
            "dimensions {dims:?} need {expected} bytes, got {}{}",
            data.len().min(expected as usize),
            if data.len() as u64 > expected {
                " and more"
            } else {
                ""
            }
        ))
    );
    Ok((dims, data))
}

/// Fills `buf` from `r`; `Ok(false)` if the input ends first.
fn read_header(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
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
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 2, 7, 8, 9]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("need 2 bytes, got 2 and more"), "{e}");
    }

    #[test]
    fn zero_and_enormous_dimensions_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train-images-idx3-ubyte");
        // Once a panic (`chunks_exact(0)`): three images of 0 rows.
        std::fs::write(&p, [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 28]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("include a zero"), "{e}");
        let mut huge = vec![0, 0, 8, 4];
        huge.extend([0xff; 16]);
        std::fs::write(&p, &huge).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("declare more than"), "{e}");
    }

    #[test]
    fn a_gzip_bomb_is_read_no_further_than_its_header_declares() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train-labels-idx1-ubyte.gz");
        // Declares 10 labels, then inflates to 256 MiB of zeros from a 256 KiB file.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&[0, 0, 8, 1, 0, 0, 0, 10]).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            gz.write_all(&zeros).unwrap();
        }
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("need 10 bytes, got 10 and more"), "{e}");
    }
}
