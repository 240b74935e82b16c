//! The model being served, and hot reload: a new model is loaded and probed before it
//! replaces the old one, which keeps serving when anything about the new one is wrong.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use image::RgbImage;

use super::child_check::ChildCheck;
use crate::{decode, Classifier, Limits};

/// Builds a classifier from the bytes of a model file (with the user's overrides
/// applied). Bytes, not a path: the file is read once, so the sha256 reported is the
/// model's that is served even if the file changes meanwhile.
pub type Loader = Arc<dyn Fn(&[u8]) -> crate::Result<Classifier> + Send + Sync>;

/// A loaded, probed model.
pub struct Loaded {
    pub classifier: Classifier,
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// What identifies one version of the model file on disk (a change triggers a reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// Loads the model at `path` (refused beyond `max_bytes`) and checks it on a probe image:
/// the output must have one finite probability per label, summing to 1. With `child`, a
/// child process loads and probes the file first, under its memory limit, and the same
/// bytes are loaded here only if it succeeded.
pub fn load_and_probe(
    loader: &Loader,
    path: &Path,
    probe: Option<&Path>,
    max_bytes: u64,
    child: Option<&ChildCheck>,
) -> Result<Loaded> {
    let bytes = read_model(path, max_bytes)?;
    let sha256 = crate::fsutil::sha256_hex(&bytes);
    if let Some(child) = child {
        child
            .run(&sha256)
            .with_context(|| format!("checking {}", path.display()))?;
    }
    load_bytes(loader, path, bytes, sha256, probe)
}

/// The bytes of the model file, if it is no larger than `max_bytes` (checked before it is
/// read, and while: the file may grow meanwhile).
fn read_model(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_big = |len: u64| {
        anyhow::anyhow!(
            "{}: {len} bytes, over the limit of {max_bytes} bytes (--max-model-bytes)",
            path.display()
        )
    };
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Builds the classifier from a model file's bytes and checks it on the probe image.
fn load_bytes(
    loader: &Loader,
    path: &Path,
    bytes: Vec<u8>,
    sha256: String,
    probe: Option<&Path>,
) -> Result<Loaded> {
    let classifier = loader(&bytes).with_context(|| format!("loading model {}", path.display()))?;
    let image = match probe {
        Some(p) => {
            let b =
                std::fs::read(p).with_context(|| format!("reading probe image {}", p.display()))?;
            decode::decode(&b, &Limits::default())
                .with_context(|| format!("decoding probe image {}", p.display()))?
        }
        None => probe_pattern(),
    };
    let (probs, _) = classifier
        .classify(&image)
        .with_context(|| format!("{}: the probe image failed", path.display()))?;
    ensure!(
        probs.len() == classifier.labels.len(),
        "{}: the model gives {} outputs for {} labels",
        path.display(),
        probs.len(),
        classifier.labels.len()
    );
    ensure!(
        probs.iter().all(|p| p.is_finite()),
        "{}: the model gives non-finite outputs (NaN or infinity) on the probe image",
        path.display()
    );
    let sum: f32 = probs.iter().sum();
    ensure!(
        (sum - 1.0).abs() < 1e-2,
        "{}: the probabilities on the probe image sum to {sum}, expected 1",
        path.display()
    );
    Ok(Loaded {
        classifier,
        path: path.to_path_buf(),
        sha256,
        size_bytes: bytes.len() as u64,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// A deterministic, non-trivial test picture: colour gradients with a bright square.
pub fn probe_pattern() -> RgbImage {
    RgbImage::from_fn(160, 120, |x, y| {
        let inside = (50..110).contains(&x) && (30..90).contains(&y);
        if inside {
            image::Rgb([230, 220, 60])
        } else {
            image::Rgb([(x * 255 / 159) as u8, (y * 255 / 119) as u8, 96])
        }
    })
}

/// The current model, swapped atomically: a request takes an `Arc` to the model it
/// started with and finishes on it even if a reload happens meanwhile.
pub struct ModelSlot {
    current: RwLock<Arc<Loaded>>,
}

impl ModelSlot {
    pub fn new(loaded: Loaded) -> Self {
        ModelSlot {
            current: RwLock::new(Arc::new(loaded)),
        }
    }

    pub fn get(&self) -> Arc<Loaded> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value
        // inside is still a complete model.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn replace(&self, loaded: Loaded) -> Arc<Loaded> {
        let new = Arc::new(loaded);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_changes_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        std::fs::write(&p, b"one").unwrap();
        let a = FileStamp::of(&p).unwrap();
        assert_eq!(FileStamp::of(&p), Some(a.clone()));
        // An atomic replace (new inode) is seen even within the same mtime tick.
        crate::fsutil::atomic_write(&p, b"two").unwrap();
        assert_ne!(FileStamp::of(&p), Some(a));
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }
}
