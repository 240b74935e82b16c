//! Debounced state: what a person wants from a classification camera ("door open", "bird
//! present") is a change of state when it is real, not thirty noisy labels a second. The
//! observed label becomes the state only after it has held for K consecutive frames (or
//! for T milliseconds) at or above its threshold (the global one, or the label's own).

use std::time::{Duration, Instant};

use serde::Serialize;

/// The state when no label qualifies (below the threshold, or not a watched label).
pub const NONE: &str = "none";

#[derive(Debug, Clone)]
pub struct DebounceConfig {
    /// Probability a label needs to count.
    pub threshold: f32,
    /// Labels that need another probability than `threshold` (a rare label needs more
    /// evidence, a hard one less).
    pub thresholds: Vec<(String, f32)>,
    /// Consecutive frames a new label must hold (used when `hold` is `None`).
    pub hold_frames: u32,
    /// How long a new label must hold, instead of a frame count.
    pub hold: Option<Duration>,
    /// Only these labels are states; any other top-1 counts as `none`.
    pub watch: Option<Vec<String>>,
}

/// Labels a debouncer names that the model does not have.
#[derive(Debug, thiserror::Error)]
#[error("the model has no label {}", .0.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", "))]
pub struct UnknownLabels(pub Vec<String>);

impl DebounceConfig {
    /// The probability `label` needs to count.
    pub fn threshold_for(&self, label: &str) -> f32 {
        self.thresholds
            .iter()
            .find(|(l, _)| l == label)
            .map_or(self.threshold, |(_, t)| *t)
    }

    /// Refuses watched or thresholded labels that are not among `labels` (a typo would
    /// otherwise never match, silently).
    pub fn check_labels(&self, labels: &[String]) -> Result<(), UnknownLabels> {
        let named = self
            .watch
            .iter()
            .flatten()
            .chain(self.thresholds.iter().map(|(l, _)| l));
        let unknown: Vec<String> = named.filter(|l| !labels.contains(l)).cloned().collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(UnknownLabels(unknown))
        }
    }
}

/// A change of state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub label: String,
    /// `None` for the first state after start.
    pub previous: Option<String>,
    /// Mean probability of the label over the frames that confirmed it.
    pub confidence: f32,
    /// Frames and milliseconds the label held before it was accepted.
    pub frames: u32,
    pub held_ms: u64,
}

struct Candidate {
    label: String,
    frames: u32,
    since: Instant,
    sum: f32,
}

pub struct Debouncer {
    cfg: DebounceConfig,
    state: Option<String>,
    candidate: Option<Candidate>,
}

impl Debouncer {
    pub fn new(cfg: DebounceConfig) -> Self {
        Debouncer {
            cfg,
            state: None,
            candidate: None,
        }
    }

    /// The current state, if one has been established.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Feeds one classified frame (top-1 label and probability, at `now`); returns the
    /// event when the state changes.
    pub fn update(&mut self, label: &str, probability: f32, now: Instant) -> Option<Event> {
        let watched = self
            .cfg
            .watch
            .as_ref()
            .is_none_or(|w| w.iter().any(|l| l == label));
        let (observed, p) = if probability >= self.cfg.threshold_for(label) && watched {
            (label, probability)
        } else {
            (NONE, 1.0 - probability.min(1.0))
        };
        self.observe(observed, p, now)
    }

    /// Feeds one frame the model rejected (`glimpse.reject`: none of its classes): it
    /// counts as `none`, with full confidence.
    pub fn update_rejected(&mut self, now: Instant) -> Option<Event> {
        self.observe(NONE, 1.0, now)
    }

    /// Counts one frame towards `observed` (with confidence `p`); the event when that
    /// confirms a new state.
    fn observe(&mut self, observed: &str, p: f32, now: Instant) -> Option<Event> {
        if self.state.as_deref() == Some(observed) {
            self.candidate = None;
            return None;
        }
        let c = match &mut self.candidate {
            Some(c) if c.label == observed => c,
            slot => slot.insert(Candidate {
                label: observed.to_string(),
                frames: 0,
                since: now,
                sum: 0.0,
            }),
        };
        c.frames += 1;
        c.sum += p;
        let held = now.saturating_duration_since(c.since);
        let confirmed = match self.cfg.hold {
            Some(t) => held >= t && c.frames >= 2,
            None => c.frames >= self.cfg.hold_frames.max(1),
        };
        if !confirmed {
            return None;
        }
        let c = self.candidate.take().expect("candidate set above");
        let event = Event {
            label: c.label.clone(),
            previous: self.state.replace(c.label),
            confidence: c.sum / c.frames as f32,
            frames: c.frames,
            held_ms: held.as_millis() as u64,
        };
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(cfg: DebounceConfig, seq: &[(&str, f32)]) -> Vec<(usize, Event)> {
        let mut d = Debouncer::new(cfg);
        let t0 = Instant::now();
        seq.iter()
            .enumerate()
            .filter_map(|(i, (l, p))| {
                d.update(l, *p, t0 + Duration::from_millis(100 * i as u64))
                    .map(|e| (i, e))
            })
            .collect()
    }

    fn cfg(hold_frames: u32) -> DebounceConfig {
        DebounceConfig {
            threshold: 0.5,
            thresholds: Vec::new(),
            hold_frames,
            hold: None,
            watch: None,
        }
    }

    #[test]
    fn rejected_frames_count_as_none() {
        let mut d = Debouncer::new(cfg(2));
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_millis(100 * i);
        assert!(d.update("cat", 0.99, at(0)).is_none());
        assert_eq!(d.update("cat", 0.99, at(1)).unwrap().label, "cat");
        // A confident "cat" the model's rejection refuses is not a cat.
        assert!(d.update_rejected(at(2)).is_none());
        let e = d.update_rejected(at(3)).unwrap();
        assert_eq!(
            (e.label.as_str(), e.previous.as_deref()),
            (NONE, Some("cat"))
        );
        assert_eq!(e.confidence, 1.0);
    }

    #[test]
    fn a_label_must_hold_k_frames() {
        let ev = frames(
            cfg(3),
            &[
                ("cat", 0.9),
                ("cat", 0.8),
                ("dog", 0.9), // noise: resets the cat candidate
                ("cat", 0.9),
                ("cat", 0.9),
                ("cat", 0.6),
                ("cat", 0.9),
                ("dog", 0.7),
                ("dog", 0.7),
                ("dog", 0.7),
            ],
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(
            (ev[0].0, ev[0].1.label.as_str(), ev[0].1.previous.clone()),
            (5, "cat", None)
        );
        assert!((ev[0].1.confidence - 0.8).abs() < 1e-6);
        assert_eq!((ev[1].0, ev[1].1.previous.as_deref()), (9, Some("cat")));
    }

    #[test]
    fn below_threshold_and_unwatched_labels_are_none() {
        let c = DebounceConfig {
            watch: Some(vec!["bird".into()]),
            ..cfg(2)
        };
        let ev = frames(
            c,
            &[
                ("bird", 0.9),
                ("bird", 0.9),
                ("bird", 0.3),
                ("cat", 0.9),
                ("cat", 0.9),
            ],
        );
        let labels: Vec<&str> = ev.iter().map(|(_, e)| e.label.as_str()).collect();
        assert_eq!(labels, ["bird", NONE]);
    }

    #[test]
    fn a_label_with_its_own_threshold_uses_it() {
        let c = DebounceConfig {
            thresholds: vec![("cat".into(), 0.8), ("bird".into(), 0.3)],
            ..cfg(2)
        };
        let ev = frames(
            c.clone(),
            &[
                ("cat", 0.7), // below cat's 0.8, above the global 0.5: none
                ("cat", 0.7),
                ("bird", 0.4), // above bird's 0.3
                ("bird", 0.4),
                ("cat", 0.85),
                ("cat", 0.85),
            ],
        );
        let labels: Vec<&str> = ev.iter().map(|(_, e)| e.label.as_str()).collect();
        assert_eq!(labels, [NONE, "bird", "cat"]);
        assert_eq!(c.threshold_for("dog"), 0.5);
    }

    #[test]
    fn labels_the_model_lacks_are_named() {
        let c = DebounceConfig {
            watch: Some(vec!["cat".into(), "brid".into()]),
            thresholds: vec![("dgo".into(), 0.8)],
            ..cfg(2)
        };
        let labels = ["cat".to_string(), "bird".into(), "dog".into()];
        let e = c.check_labels(&labels).unwrap_err();
        assert_eq!(e.to_string(), r#"the model has no label "brid", "dgo""#);
        assert!(cfg(2).check_labels(&labels).is_ok());
    }

    #[test]
    fn time_based_hold() {
        let c = DebounceConfig {
            hold: Some(Duration::from_millis(250)),
            ..cfg(100)
        };
        // Frames 100 ms apart: the label is accepted at the frame 300 ms after it began.
        let ev = frames(
            c,
            &[
                ("cat", 0.9),
                ("cat", 0.9),
                ("cat", 0.9),
                ("cat", 0.9),
                ("cat", 0.9),
            ],
        );
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].0, ev[0].1.held_ms), (3, 300));
    }
}
