//! Feature vectors on disk, so that trying other head settings costs seconds, not another
//! pass of the backbone over every image.
//!
//! One file per backbone and preprocessing (`<dir>/<key>.features`), holding records of
//! `(sha256 key, dim × f32)`; the key hashes the backbone file, the preprocessing, the view
//! (plain or which augmentation) and the image's pixels, so a changed image, backbone or
//! view never hits a stale entry. The file is rewritten atomically (temp + rename), so a
//! killed run leaves the previous complete cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 12] = b"GLIMPSEFEAT1";

/// A content key: what a feature vector was computed from.
pub type Key = [u8; 32];

/// The default cache folder: `$XDG_CACHE_HOME/glimpse/features`, else
/// `~/.cache/glimpse/features`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("glimpse/features")
}

/// The key of one view of one image.
pub fn key(context: &str, view: &str, img: &RgbImage) -> Key {
    let mut h = Sha256::new();
    for part in [context.as_bytes(), view.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(img.width().to_le_bytes());
    h.update(img.height().to_le_bytes());
    h.update(img.as_raw());
    h.finalize().into()
}

/// Cached feature vectors of one backbone and preprocessing.
pub struct FeatureCache {
    path: PathBuf,
    dim: usize,
    entries: HashMap<Key, Vec<f32>>,
    unsaved: usize,
}

impl FeatureCache {
    /// Opens (or starts) the cache for `context` (backbone hash + preprocessing) in `dir`.
    /// A damaged file is reported and replaced, never trusted.
    pub fn open(dir: &Path, context: &str, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the feature cache folder {}", dir.display()))?;
        let name: String = format!("{:x}", Sha256::digest(context.as_bytes()))
            .chars()
            .take(24)
            .collect();
        let path = dir.join(format!("{name}.features"));
        let mut cache = FeatureCache {
            path,
            dim,
            entries: HashMap::new(),
            unsaved: 0,
        };
        match std::fs::read(&cache.path) {
            Ok(bytes) => match parse(&bytes, dim) {
                Some(entries) => cache.entries = entries,
                None => log::warn!(
                    "{}: damaged feature cache; starting a new one",
                    cache.path.display()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", cache.path.display())),
        }
        Ok(cache)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the file on disk (0 before the first save).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &Key) -> Option<&[f32]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    pub fn insert(&mut self, key: Key, features: Vec<f32>) {
        debug_assert_eq!(features.len(), self.dim);
        if self.entries.insert(key, features).is_none() {
            self.unsaved += 1;
        }
    }

    /// Entries added since the last save.
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// Writes the whole cache atomically.
    pub fn save(&mut self) -> Result<()> {
        if self.unsaved == 0 && self.path.exists() {
            return Ok(());
        }
        let mut keys: Vec<&Key> = self.entries.keys().collect();
        // Sorted: the same entries always give the same file.
        keys.sort();
        let mut buf = Vec::with_capacity(MAGIC.len() + 8 + keys.len() * (32 + 4 * self.dim));
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(self.dim as u32).to_le_bytes());
        buf.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for k in keys {
            buf.extend_from_slice(k);
            for v in &self.entries[k] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        glimpse_runtime::fsutil::atomic_write(&self.path, &buf)
            .with_context(|| format!("writing the feature cache {}", self.path.display()))?;
        self.unsaved = 0;
        Ok(())
    }
}

fn parse(bytes: &[u8], dim: usize) -> Option<HashMap<Key, Vec<f32>>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    if u32_at(0)? != dim {
        return None;
    }
    let count = u32_at(4)?;
    let record = 32 + 4 * dim;
    let body = rest.get(8..)?;
    if body.len() != count.checked_mul(record)? {
        return None;
    }
    Some(
        body.chunks_exact(record)
            .map(|r| {
                let key: Key = r[..32].try_into().expect("32 bytes");
                let values = r[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                (key, values)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_reloads_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        let k = key("backbone", "plain", &img);
        assert_ne!(k, key("backbone", "view 1", &img));
        assert_ne!(k, key("other", "plain", &img));
        let mut c = FeatureCache::open(dir.path(), "ctx", 4).unwrap();
        c.insert(k, vec![1.0, 2.0, 3.0, 4.0]);
        c.save().unwrap();
        let again = FeatureCache::open(dir.path(), "ctx", 4).unwrap();
        assert_eq!(again.get(&k), Some(&[1.0, 2.0, 3.0, 4.0][..]));
        // Another context is another file.
        assert!(FeatureCache::open(dir.path(), "ctx2", 4)
            .unwrap()
            .is_empty());
        // A truncated file is not trusted.
        let bytes = std::fs::read(again.path()).unwrap();
        std::fs::write(again.path(), &bytes[..bytes.len() - 3]).unwrap();
        assert!(FeatureCache::open(dir.path(), "ctx", 4).unwrap().is_empty());
    }
}
