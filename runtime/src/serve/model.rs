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

/// Builds the classifier from a model file's bytes and checks it on the probe image (the
/// caller says which file the errors are about).
fn load_bytes(
    loader: &Loader,
    bytes: Vec<u8>,
    sha256: String,
    probe: Option<&Path>,
) -> Result<Loaded> {
    let classifier = loader(&bytes).context("loading the model")?;
    let image = match probe {
        Some(p) => {
            let b =
                std::fs::read(p).with_context(|| format!("reading probe image {}", p.display()))?;
            decode::decode(&b, &Limits::default())
                .with_context(|| format!("decoding probe image {}", p.display()))?
        }
        None => probe_pattern(),
    };
    let probs = classifier
        .classify(&image)
        .context("the probe image failed")?
        .0
        .probs;
    ensure!(
        probs.len() == classifier.labels.len(),
        "the model gives {} outputs for {} labels",
        probs.len(),
        classifier.labels.len()
    );
    ensure!(
        probs.iter().all(|p| p.is_finite()),
        "the model gives non-finite outputs (NaN or infinity) on the probe image"
    );
    let sum: f32 = probs.iter().sum();
    ensure!(
        (sum - 1.0).abs() < 1e-2,
        "the probabilities on the probe image sum to {sum}, expected 1"
    );
    Ok(Loaded {
        classifier,
        path: PathBuf::new(),
        sha256,
        size_bytes: bytes.len() as u64,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

impl Loaded {
    /// The model, served from `path`.
    fn at(self, path: &Path) -> Loaded {
        Loaded {
            path: path.to_path_buf(),
            ..self
        }
    }
}

/// The served model file and how a new version of it is checked: for reloads, pushes
/// over the API and rollbacks.
pub struct ModelSource {
    pub loader: Loader,
    pub path: PathBuf,
    /// An image the model must classify before it is served (default: a built-in
    /// pattern).
    pub probe: Option<PathBuf>,
    /// Model files larger than this are refused, at start, on reload and pushed.
    pub max_bytes: u64,
    /// A new model is loaded and probed in a child process first (`None`: in-process
    /// only).
    pub child: Option<ChildCheck>,
}

/// Why a pushed model, or the rollback to the previous one, was not installed. Nothing
/// changed: the model served before is still served, and its file is still in place.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The model itself: it does not load, fails the probe or kills the check process.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// There is no previous model to go back to.
    #[error("no previous model is kept as {} (one is kept when a model is pushed)", .0.display())]
    NoPrevious(PathBuf),
    /// The file could not be written or read.
    #[error("{0:#}")]
    Storage(anyhow::Error),
}

impl ModelSource {
    /// Loads and probes the file, in this process only (at start, when nothing is
    /// served yet that a failure could take down).
    pub fn load(&self) -> Result<Loaded> {
        self.load_file(&self.path, None)
    }

    /// Loads and probes the file as it is now, in the check process first (a reload).
    pub fn reload(&self) -> Result<Loaded> {
        self.load_file(&self.path, self.child.as_ref())
    }

    /// Loads and probes `file` with the served model's settings, in this process (what
    /// the check process does).
    pub fn check(&self, file: &Path) -> Result<Loaded> {
        self.load_file(file, None)
    }

    /// Loads `path` (refused beyond `max_bytes`) and checks it on the probe image: the
    /// output must have one finite probability per label, summing to 1. With `child`, a
    /// child process loads and probes the file first, under its memory limit, and the
    /// same bytes are loaded here only if it succeeded.
    fn load_file(&self, path: &Path, child: Option<&ChildCheck>) -> Result<Loaded> {
        let bytes = read_model(path, self.max_bytes)?;
        let sha256 = crate::fsutil::sha256_hex(&bytes);
        if let Some(child) = child {
            child
                .run(path, &sha256)
                .with_context(|| format!("checking {}", path.display()))?;
        }
        load_bytes(&self.loader, bytes, sha256, self.probe.as_deref())
            .map(|loaded| loaded.at(path))
            .with_context(|| path.display().to_string())
    }

    /// Where the model served before the last push or rollback is kept: beside the
    /// served file, `NAME.previous.onnx` for `NAME.onnx`.
    pub fn previous_path(&self) -> PathBuf {
        let stem = self.path.file_stem().unwrap_or_default().to_string_lossy();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}.previous.{}", ext.to_string_lossy()),
            None => format!("{stem}.previous"),
        };
        self.path.with_file_name(name)
    }

    /// The sha256 and size of the kept previous model, if there is one.
    pub fn previous(&self) -> Option<Previous> {
        let bytes = read_model(&self.previous_path(), self.max_bytes).ok()?;
        Some(Previous {
            sha256: crate::fsutil::sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
        })
    }

    /// Installs `bytes` as the served model file: written beside it, checked (in the
    /// child process, then here) and only then renamed over it, the file of the model
    /// served until now (`served_sha256`) kept as [`previous_path`](Self::previous_path).
    /// Returns the new model, and the previous one if it was kept (`None`: the kept
    /// one, if any, is unchanged).
    pub fn install(
        &self,
        bytes: Vec<u8>,
        served_sha256: &str,
    ) -> Result<(Loaded, Option<Previous>), InstallError> {
        use InstallError::{Refused, Storage};
        let sha256 = crate::fsutil::sha256_hex(&bytes);
        let staged = crate::fsutil::stage(&self.path, &bytes)
            .context("writing the new model beside the served one")
            .map_err(Storage)?;
        if let Some(child) = &self.child {
            // The check process names the file it read: a temporary name means nothing
            // to the client.
            child.run(staged.path(), &sha256).map_err(|e| {
                let staged = staged.path().display().to_string();
                Refused(anyhow::anyhow!(
                    "{}",
                    format!("{e:#}").replace(&staged, "the pushed model")
                ))
            })?;
        }
        let loaded = load_bytes(&self.loader, bytes, sha256, self.probe.as_deref())
            .map_err(Refused)?
            .at(&self.path);
        let kept = self.keep_previous(served_sha256).map_err(Storage)?;
        crate::fsutil::commit(staged, &self.path)
            .context("installing the new model")
            .map_err(Storage)?;
        Ok((loaded, kept))
    }

    /// Installs the kept previous model again; the one served until now becomes the
    /// previous one (a second rollback undoes the first).
    pub fn rollback(
        &self,
        served_sha256: &str,
    ) -> Result<(Loaded, Option<Previous>), InstallError> {
        let previous = self.previous_path();
        if !previous.exists() {
            return Err(InstallError::NoPrevious(previous));
        }
        let bytes = read_model(&previous, self.max_bytes).map_err(InstallError::Storage)?;
        self.install(bytes, served_sha256)
    }

    /// Copies the served file to the previous model's place, if it still holds the
    /// model being served (a broken file a reload refused is not worth keeping); returns
    /// what was kept.
    fn keep_previous(&self, served_sha256: &str) -> Result<Option<Previous>> {
        let current = match read_model(&self.path, self.max_bytes) {
            Ok(bytes) => bytes,
            Err(e) if !self.path.exists() => {
                log::debug!("no model file to keep as the previous one: {e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if crate::fsutil::sha256_hex(&current) != served_sha256 {
            log::warn!(
                "{} is not the model being served (a reload refused it): not kept as the previous model",
                self.path.display()
            );
            return Ok(None);
        }
        let previous = self.previous_path();
        crate::fsutil::atomic_write(&previous, &current)
            .with_context(|| format!("keeping the served model as {}", previous.display()))?;
        Ok(Some(Previous {
            sha256: served_sha256.to_string(),
            size_bytes: current.len() as u64,
        }))
    }
}

/// A change of model asked for over the API.
pub enum Change {
    /// `PUT /v1/model`: these bytes, checked, become the served model.
    Push(Vec<u8>),
    /// `POST /v1/model/rollback`: the previous model comes back.
    Rollback,
}

impl Change {
    /// How the change is named in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Change::Push(_) => "push",
            Change::Rollback => "rollback",
        }
    }
}

/// A [`Change`] and where its outcome is sent: the model now served, or why nothing
/// changed.
pub struct ChangeRequest {
    pub change: Change,
    pub reply: tokio::sync::oneshot::Sender<Result<Arc<Loaded>, InstallError>>,
}

/// The model kept for a rollback.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Previous {
    pub sha256: String,
    pub size_bytes: u64,
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
/// started with and finishes on it even if a reload happens meanwhile. Also what is
/// known of the previous model, kept for a rollback.
pub struct ModelSlot {
    current: RwLock<Arc<Loaded>>,
    previous: RwLock<Option<Previous>>,
}

impl ModelSlot {
    pub fn new(loaded: Loaded, previous: Option<Previous>) -> Self {
        ModelSlot {
            current: RwLock::new(Arc::new(loaded)),
            previous: RwLock::new(previous),
        }
    }

    /// The model kept for a rollback, if any.
    pub fn previous(&self) -> Option<Previous> {
        self.previous
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_previous(&self, previous: Option<Previous>) {
        *self.previous.write().unwrap_or_else(|e| e.into_inner()) = previous;
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
