//! Keeping the frames worth a person's look (`--collect DIR`): unsure frames, the first
//! frame of each state and an optional sample, near-duplicates skipped by a difference
//! hash, under a rate limit and a disk budget. Each kept frame is a JPEG of what the model
//! saw with a JSON sidecar in `DIR/unlabelled/`; filed under a label ([`Queue`]) it moves
//! to `DIR/labelled/<label>/`, the layout `glimpse-train train --data DIR/labelled` reads.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{prune_jpegs, sync_dir};
use crate::Ranked;

/// Frames waiting for a label, under the collect folder.
pub const UNLABELLED: &str = "unlabelled";
/// Frames filed under a label, one folder per label.
pub const LABELLED: &str = "labelled";

/// What to keep, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    pub dir: PathBuf,
    /// A frame whose top-1 probability is below this is kept.
    pub below: f32,
    /// A frame whose top-1 and top-2 probabilities are closer than this is kept.
    pub margin: Option<f32>,
    /// One frame about this often is kept whatever the model says (a sample of what the
    /// camera sees, for the frames the model is sure of and wrong about).
    pub every: Option<Duration>,
    /// At most this many frames a minute.
    pub max_per_minute: u32,
    /// The unlabelled frames take at most this many bytes; the oldest go first.
    /// Labelled frames are a person's work and never removed.
    pub max_bytes: u64,
    /// A frame within this many bits (of 64) of a recently kept one is a near-duplicate.
    pub min_distance: u32,
}

impl CollectConfig {
    /// The defaults, collecting into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        CollectConfig {
            dir,
            below: 0.6,
            margin: None,
            every: None,
            max_per_minute: 12,
            max_bytes: 1 << 30,
            min_distance: 6,
        }
    }
}

/// Why a frame was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The first frame of a new debounced state.
    StateChange,
    /// The model's "none of the above" refused it: something it has no class for.
    Rejected,
    /// Top-1 below `below`.
    LowConfidence,
    /// Top-1 and top-2 closer than `margin`.
    SmallMargin,
    /// The periodic sample.
    Sample,
}

/// A class the model proposed, as the sidecar records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guess {
    pub label: String,
    pub index: usize,
    pub probability: f32,
}

/// The JSON file beside each kept frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The frame's id: its file name without `.jpg`.
    pub id: String,
    pub camera: String,
    /// When it was classified, RFC 3339 in UTC.
    pub time: String,
    /// The frame's number in its stream.
    pub frame: u64,
    pub reason: Reason,
    /// The model's top-5, best first.
    pub top: Vec<Guess>,
    pub model_sha256: String,
    /// The region of the camera's frame that was classified and kept, if not all of it.
    pub crop: Option<String>,
    pub width: u32,
    pub height: u32,
}

/// One classified frame offered to the collector.
pub struct Offer<'a> {
    /// What the model saw (the crop, if any).
    pub image: &'a RgbImage,
    /// Best first.
    pub top: &'a [Ranked<'a>],
    /// The first frame of a new debounced state.
    pub state_change: bool,
    /// The model rejected it (`glimpse.reject`).
    pub rejected: bool,
    pub frame: u64,
    pub model_sha256: &'a str,
    pub crop: Option<String>,
}

/// What happened to an offered frame that was worth keeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Kept {
        id: String,
        reason: Reason,
    },
    /// Close to a frame kept recently.
    Duplicate,
    /// Over `max_per_minute`.
    RateLimited,
}

/// Near-duplicates are looked for among this many last kept frames.
const RECENT: usize = 64;

/// Keeps the frames of one camera.
pub struct Collector {
    cfg: CollectConfig,
    camera: String,
    unlabelled: PathBuf,
    recent: VecDeque<u64>,
    kept_at: VecDeque<Instant>,
    next_sample: Option<Instant>,
    seq: u64,
}

impl Collector {
    /// A collector for `camera` (a name of letters, digits, `-` and `_`); creates the
    /// folder, so that a folder it cannot write is an error at start-up.
    pub fn new(cfg: CollectConfig, camera: &str) -> Result<Self> {
        let unlabelled = cfg.dir.join(UNLABELLED);
        std::fs::create_dir_all(&unlabelled).map_err(Error::io("creating", &unlabelled))?;
        std::fs::create_dir_all(cfg.dir.join(LABELLED))
            .map_err(Error::io("creating", &cfg.dir.join(LABELLED)))?;
        Ok(Collector {
            next_sample: cfg.every.map(|_| Instant::now()),
            cfg,
            camera: crate::fsutil::safe_name(camera),
            unlabelled,
            recent: VecDeque::new(),
            kept_at: VecDeque::new(),
            seq: 0,
        })
    }

    /// Keeps the frame if it is worth a look; `None` when it is not.
    pub fn offer(&mut self, offer: &Offer, now: Instant) -> Result<Option<Outcome>> {
        let Some(reason) = self.reason(offer, now) else {
            return Ok(None);
        };
        while self
            .kept_at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.kept_at.pop_front();
        }
        if self.kept_at.len() >= self.cfg.max_per_minute as usize {
            return Ok(Some(Outcome::RateLimited));
        }
        let hash = dhash(offer.image);
        let near = |h: &u64| (h ^ hash).count_ones() <= self.cfg.min_distance;
        if self.recent.iter().any(near) {
            return Ok(Some(Outcome::Duplicate));
        }
        let id = self.write(offer, reason)?;
        self.kept_at.push_back(now);
        self.recent.push_back(hash);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if reason == Reason::Sample {
            self.next_sample = self.cfg.every.map(|every| now + jittered(every, self.seq));
        }
        prune_jpegs(&self.unlabelled, None, Some(self.cfg.max_bytes))
            .map_err(Error::io("pruning", &self.unlabelled))?;
        Ok(Some(Outcome::Kept { id, reason }))
    }

    fn reason(&self, offer: &Offer, now: Instant) -> Option<Reason> {
        let p = |i: usize| offer.top.get(i).map_or(0.0, |r| r.probability);
        if offer.state_change {
            Some(Reason::StateChange)
        } else if offer.rejected {
            Some(Reason::Rejected)
        } else if p(0) < self.cfg.below {
            Some(Reason::LowConfidence)
        } else if self.cfg.margin.is_some_and(|m| p(0) - p(1) < m) {
            Some(Reason::SmallMargin)
        } else if self.next_sample.is_some_and(|t| now >= t) {
            Some(Reason::Sample)
        } else {
            None
        }
    }

    /// Writes the JPEG, then its sidecar (each atomically); returns the id.
    fn write(&mut self, offer: &Offer, reason: Reason) -> Result<String> {
        self.seq += 1;
        let (stamp, time) = utc_now();
        let id = format!("{stamp}-{}-{:04}", self.camera, self.seq % 10_000);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(offer.image)
            .map_err(|e| Error::Io {
                action: "encoding",
                path: self.unlabelled.join(format!("{id}.jpg")),
                error: std::io::Error::other(e),
            })?;
        let sidecar = Sidecar {
            id: id.clone(),
            camera: self.camera.clone(),
            time,
            frame: offer.frame,
            reason,
            top: offer.top.iter().take(5).map(Guess::from).collect(),
            model_sha256: offer.model_sha256.to_string(),
            crop: offer.crop.clone(),
            width: offer.image.width(),
            height: offer.image.height(),
        };
        let json = serde_json::to_vec_pretty(&sidecar).expect("a sidecar serializes");
        crate::fsutil::atomic_write(&self.unlabelled.join(format!("{id}.jpg")), &jpeg)?;
        crate::fsutil::atomic_write(&self.unlabelled.join(format!("{id}.json")), &json)?;
        Ok(id)
    }
}

impl From<&Ranked<'_>> for Guess {
    fn from(r: &Ranked<'_>) -> Self {
        Guess {
            label: r.label.to_string(),
            index: r.index,
            probability: r.probability,
        }
    }
}

/// `every` stretched by a factor between 0.5 and 1.5 that changes with `n`: samples at
/// a fixed period could keep seeing the same moment of a periodic scene.
fn jittered(every: Duration, n: u64) -> Duration {
    let x = n
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    every.mul_f64(0.5 + (x >> 11) as f64 / (1u64 << 53) as f64)
}

/// The current time as `YYYYmmddTHHMMSS.mmmZ` (for ids: sorted by name is sorted by
/// time) and as RFC 3339.
fn utc_now() -> (String, String) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let frac = ms.rem_euclid(1000);
    (
        format!("{}.{frac:03}Z", t.strftime("%Y%m%dT%H%M%S")),
        format!("{}.{frac:03}Z", t.strftime("%Y-%m-%dT%H:%M:%S")),
    )
}

/// The difference hash of an image: its luma at 9x8, one bit per pair of horizontal
/// neighbours (brighter or not). Near-identical frames differ in a few bits; noise,
/// a JPEG's artefacts and a small change of exposure hardly move it.
pub fn dhash(img: &RgbImage) -> u64 {
    let small = image::imageops::thumbnail(img, 9, 8);
    let luma = |x: u32, y: u32| {
        let [r, g, b] = small.get_pixel(x, y).0;
        299 * r as u32 + 587 * g as u32 + 114 * b as u32
    };
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            hash = (hash << 1) | (luma(x + 1, y) > luma(x, y)) as u64;
        }
    }
    hash
}

/// Why a request about the collected frames was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("expected a frame id (letters, digits, '-', '_' and '.', as GET /v1/collected lists them), got {0:?}")]
    BadId(String),
    #[error("no collected frame {0:?} is waiting for a label")]
    NotFound(String),
    #[error("expected a label usable as a folder name (not empty, at most 100 bytes, no '/', '\\\\' or control characters, not starting with '.'), got {0:?}")]
    BadLabel(String),
    #[error(transparent)]
    Io(#[from] Error),
}

/// The frames collected into one folder, for a person to label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub dir: PathBuf,
}

impl Queue {
    pub fn new(dir: PathBuf) -> Self {
        Queue { dir }
    }

    /// The frames waiting for a label, newest first.
    pub fn waiting(&self) -> std::result::Result<Vec<Sidecar>, QueueError> {
        let dir = self.dir.join(UNLABELLED);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("reading", &dir)(e).into()),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".jpg")
                    .map(String::from)
            })
            .filter(|id| check_id(id).is_ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids
            .into_iter()
            .filter_map(|id| self.sidecar(&dir, id))
            .collect())
    }

    /// A frame's sidecar; a frame whose sidecar is missing or damaged is listed with
    /// what its id says.
    fn sidecar(&self, dir: &Path, id: String) -> Option<Sidecar> {
        let path = dir.join(format!("{id}.json"));
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Sidecar>(&b)) {
            Ok(Ok(s)) if s.id == id => Some(s),
            outcome => {
                log::warn!("{}: unreadable sidecar ({outcome:?})", path.display());
                None
            }
        }
    }

    /// The JPEG of a frame waiting for a label.
    pub fn image(&self, id: &str) -> std::result::Result<PathBuf, QueueError> {
        check_id(id)?;
        let path = self.dir.join(UNLABELLED).join(format!("{id}.jpg"));
        if !path.is_file() {
            return Err(QueueError::NotFound(id.into()));
        }
        Ok(path)
    }

    /// Files the frame under `label` (its folder made if new); returns where it went.
    pub fn label(&self, id: &str, label: &str) -> std::result::Result<PathBuf, QueueError> {
        let from = self.image(id)?;
        check_label(label)?;
        let to_dir = self.dir.join(LABELLED).join(label);
        std::fs::create_dir_all(&to_dir).map_err(Error::io("creating", &to_dir))?;
        let to = to_dir.join(format!("{id}.jpg"));
        // The JPEG first: a frame is where its JPEG is, whatever became of its sidecar.
        std::fs::rename(&from, &to).map_err(Error::io("moving", &from))?;
        let json = from.with_extension("json");
        if let Err(e) = std::fs::rename(&json, to.with_extension("json")) {
            log::warn!("{}: sidecar not moved: {e}", json.display());
        }
        for dir in [to_dir.as_path(), self.dir.join(UNLABELLED).as_path()] {
            sync_dir(dir)?;
        }
        Ok(to)
    }

    /// Deletes a frame waiting for a label, and its sidecar.
    pub fn discard(&self, id: &str) -> std::result::Result<(), QueueError> {
        let path = self.image(id)?;
        std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
        let _ = std::fs::remove_file(path.with_extension("json"));
        Ok(sync_dir(&self.dir.join(UNLABELLED))?)
    }

    /// The labels frames were filed under (the folders of `labelled/`), sorted.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = std::fs::read_dir(self.dir.join(LABELLED))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|l| check_label(l).is_ok())
            .collect();
        labels.sort();
        labels
    }

    /// Every labelled image, as (label, path), sorted.
    pub fn labelled(&self) -> Vec<(String, PathBuf)> {
        let mut files = Vec::new();
        for label in self.labels() {
            let dir = self.dir.join(LABELLED).join(&label);
            for file in crate::decode::image_files(&dir, false).flatten() {
                files.push((label.clone(), file));
            }
        }
        files
    }
}

/// An id as the collector makes them: letters, digits, `-`, `_` and `.`, not starting
/// with `.` (so never `..`, a path or a hidden file).
pub fn check_id(id: &str) -> std::result::Result<(), QueueError> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if (1..=128).contains(&id.len()) && !id.starts_with('.') && id.chars().all(fits) {
        Ok(())
    } else {
        Err(QueueError::BadId(id.into()))
    }
}

/// A label a folder can be named after: the model's labels ("tabby, tabby cat") are.
pub fn check_label(label: &str) -> std::result::Result<(), QueueError> {
    let bad = |c: char| c == '/' || c == '\\' || c.is_control();
    let trimmed = label.trim();
    if (1..=100).contains(&label.len())
        && trimmed == label
        && !label.starts_with('.')
        && !label.chars().any(bad)
    {
        Ok(())
    } else {
        Err(QueueError::BadLabel(label.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ranked(p: &[f32]) -> Vec<Ranked<'static>> {
        p.iter()
            .enumerate()
            .map(|(index, &probability)| Ranked {
                label: Cow::Owned(format!("class {index}")),
                index,
                probability,
            })
            .collect()
    }

    /// A picture of 8x8-pixel blocks of random brightness, a different one per seed.
    fn picture(seed: u32) -> RgbImage {
        RgbImage::from_fn(72, 64, |x, y| {
            let block = (y / 8) * 9 + x / 8;
            let v = (block + 1)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503))
                .rotate_left(13)
                .wrapping_mul(2_246_822_519)
                >> 24;
            image::Rgb([v as u8; 3])
        })
    }

    fn offer<'a>(img: &'a RgbImage, top: &'a [Ranked<'a>], change: bool) -> Offer<'a> {
        Offer {
            image: img,
            top,
            state_change: change,
            rejected: false,
            frame: 1,
            model_sha256: "abc",
            crop: None,
        }
    }

    #[test]
    fn keeps_unsure_frames_and_state_changes_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CollectConfig {
            margin: Some(0.2),
            ..CollectConfig::new(dir.path().into())
        };
        let mut c = Collector::new(cfg, "door").unwrap();
        let now = Instant::now();
        let (a, b, d) = (picture(1), picture(2), picture(3));
        let sure = ranked(&[0.9, 0.05]);
        let unsure = ranked(&[0.5, 0.3]);
        let close = ranked(&[0.62, 0.5]);
        assert_eq!(c.offer(&offer(&a, &sure, false), now).unwrap(), None);
        let kept = c.offer(&offer(&a, &unsure, false), now).unwrap();
        assert!(matches!(
            kept,
            Some(Outcome::Kept {
                reason: Reason::LowConfidence,
                ..
            })
        ));
        let again = c.offer(&offer(&a, &unsure, false), now).unwrap();
        assert_eq!(again, Some(Outcome::Duplicate));
        let kept = c.offer(&offer(&b, &close, false), now).unwrap();
        assert!(matches!(
            kept,
            Some(Outcome::Kept {
                reason: Reason::SmallMargin,
                ..
            })
        ));
        let kept = c.offer(&offer(&d, &sure, true), now).unwrap();
        assert!(matches!(
            kept,
            Some(Outcome::Kept {
                reason: Reason::StateChange,
                ..
            })
        ));
        let queue = Queue::new(dir.path().into());
        let waiting = queue.waiting().unwrap();
        assert_eq!(waiting.len(), 3);
        assert_eq!(waiting[0].reason, Reason::StateChange);
        assert_eq!(waiting[0].camera, "door");
        assert_eq!(waiting[0].top.len(), 2);
        assert_eq!((waiting[0].width, waiting[0].height), (72, 64));
    }

    #[test]
    fn the_rate_limit_and_the_budget_hold() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CollectConfig {
            max_per_minute: 3,
            ..CollectConfig::new(dir.path().into())
        };
        let mut c = Collector::new(cfg, "cam").unwrap();
        let unsure = ranked(&[0.3, 0.2]);
        let t0 = Instant::now();
        let imgs: Vec<RgbImage> = (0..6).map(|i| picture(i * 17)).collect();
        let outcomes: Vec<_> = imgs
            .iter()
            .map(|img| c.offer(&offer(img, &unsure, false), t0).unwrap())
            .collect();
        let kept = outcomes
            .iter()
            .filter(|o| matches!(o, Some(Outcome::Kept { .. })));
        assert_eq!(kept.count(), 3, "{outcomes:?}");
        assert_eq!(outcomes[5], Some(Outcome::RateLimited));
        // A minute later, room again; a budget of one byte keeps only the newest frame.
        c.cfg.max_bytes = 1;
        let later = t0 + Duration::from_secs(61);
        let kept = c.offer(&offer(&imgs[4], &unsure, false), later).unwrap();
        let Some(Outcome::Kept { id, .. }) = kept else {
            panic!("{kept:?}")
        };
        let waiting = Queue::new(dir.path().into()).waiting().unwrap();
        assert_eq!(waiting.iter().map(|s| &s.id).collect::<Vec<_>>(), [&id]);
        let files = std::fs::read_dir(dir.path().join(UNLABELLED))
            .unwrap()
            .count();
        assert_eq!(files, 2);
    }

    #[test]
    fn frames_are_filed_discarded_and_paths_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collector::new(CollectConfig::new(dir.path().into()), "cam").unwrap();
        let unsure = ranked(&[0.3, 0.2]);
        let (a, b) = (picture(1), picture(2));
        let now = Instant::now();
        let id = |o: Option<Outcome>| match o {
            Some(Outcome::Kept { id, .. }) => id,
            o => panic!("{o:?}"),
        };
        let first = id(c.offer(&offer(&a, &unsure, false), now).unwrap());
        let second = id(c.offer(&offer(&b, &unsure, false), now).unwrap());
        let q = Queue::new(dir.path().into());
        let to = q.label(&first, "tabby, tabby cat").unwrap();
        assert_eq!(
            to,
            dir.path()
                .join("labelled/tabby, tabby cat")
                .join(format!("{first}.jpg"))
        );
        assert!(to.with_extension("json").is_file());
        assert_eq!(q.labels(), ["tabby, tabby cat"]);
        assert_eq!(q.labelled().len(), 1);
        q.discard(&second).unwrap();
        assert!(q.waiting().unwrap().is_empty());
        assert!(matches!(q.discard(&second), Err(QueueError::NotFound(_))));
        for bad in ["../../etc/passwd", "..", ".hidden", "a/b", "", "a%2Fb"] {
            assert!(matches!(q.image(bad), Err(QueueError::BadId(_))), "{bad}");
        }
        let third = id(c.offer(&offer(&picture(9), &unsure, false), now).unwrap());
        for bad in ["..", "../x", "a/b", "", " cat", ".git", "a\nb"] {
            assert!(
                matches!(q.label(&third, bad), Err(QueueError::BadLabel(_))),
                "{bad:?}"
            );
        }
        assert_eq!(q.waiting().unwrap().len(), 1);
    }

    #[test]
    fn the_difference_hash_ignores_noise_and_sees_a_new_scene() {
        let a = picture(1);
        let mut noisy = a.clone();
        for (i, p) in noisy.pixels_mut().enumerate() {
            p.0[0] = p.0[0].saturating_add((i % 3) as u8);
        }
        assert!((dhash(&a) ^ dhash(&noisy)).count_ones() <= 2);
        assert!((dhash(&a) ^ dhash(&picture(40))).count_ones() > 10);
    }
}
