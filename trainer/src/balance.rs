//! Imbalanced classes: per-class loss weights (`--class-weights auto|FILE`) and the
//! epoch order of class-balanced sampling (`--balanced-sampling`).

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::training::image_seed;

/// Why a class-weights file was refused; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("--class-weights {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--class-weights {path}: expected a JSON object of class name to weight, like {{\"cat\": 2.0}}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("--class-weights {path}: unknown class {class:?}; the dataset's classes are: {known}")]
    UnknownClass {
        path: PathBuf,
        class: String,
        known: String,
    },
    #[error("--class-weights {path}: the weight of {class:?} must be a finite number above 0, got {weight}")]
    BadWeight {
        path: PathBuf,
        class: String,
        weight: f64,
    },
}

/// What `--class-weights` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSpec {
    /// Inverse class frequency, scaled so that the average weight per image is 1.
    Auto,
    /// A JSON object `{"class": weight}`; classes it does not name weigh 1.
    File(PathBuf),
}

impl std::str::FromStr for WeightsSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => WeightsSpec::Auto,
            path => WeightsSpec::File(path.into()),
        })
    }
}

/// How many of `labels` fall in each of `classes` classes.
pub fn class_counts(labels: impl IntoIterator<Item = usize>, classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for l in labels {
        counts[l] += 1;
    }
    counts
}

/// The loss weight of each class, in the order of `classes`.
pub fn resolve(
    spec: &WeightsSpec,
    classes: &[String],
    counts: &[usize],
) -> Result<Vec<f32>, WeightsError> {
    match spec {
        WeightsSpec::Auto => Ok(inverse_frequency(counts)),
        WeightsSpec::File(path) => from_file(path, classes),
    }
}

/// `n / (k * n_c)`: each class then carries the same total weight, and an image of a
/// balanced dataset weighs 1. A class without images (it cannot be drawn) gets 1.
pub fn inverse_frequency(counts: &[usize]) -> Vec<f32> {
    let n: usize = counts.iter().sum();
    let k = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts
        .iter()
        .map(|&c| match c {
            0 => 1.0,
            c => (n as f64 / (k * c) as f64) as f32,
        })
        .collect()
}

fn from_file(path: &Path, classes: &[String]) -> Result<Vec<f32>, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Read {
        path: path.into(),
        source,
    })?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|source| WeightsError::Parse {
            path: path.into(),
            source,
        })?;
    let mut weights = vec![1.0f32; classes.len()];
    for (class, value) in map {
        let Some(i) = classes.iter().position(|c| *c == class) else {
            return Err(WeightsError::UnknownClass {
                path: path.into(),
                class,
                known: classes.join(", "),
            });
        };
        let weight = value.as_f64().unwrap_or(f64::NAN);
        if !(weight.is_finite() && weight > 0.0) {
            return Err(WeightsError::BadWeight {
                path: path.into(),
                class,
                weight,
            });
        }
        weights[i] = weight as f32;
    }
    Ok(weights)
}

/// The order of one epoch over images labelled `labels`: a seeded shuffle of every image,
/// or (`balanced`) as many draws, each of a class picked uniformly and then an image of
/// it, with replacement, so every class is seen equally often.
pub fn epoch_order(labels: &[usize], balanced: bool, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, epoch, 0));
    if !balanced {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(&mut rng);
        return order;
    }
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut members = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    members.retain(|m| !m.is_empty());
    (0..labels.len())
        .map(|_| {
            let class = &members[rng.random_range(0..members.len())];
            class[rng.random_range(0..class.len())]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn inverse_frequency_evens_out_the_classes() {
        let w = inverse_frequency(&[100, 10, 0]);
        // 110 images over 2 present classes: 0.55 and 5.5; both classes sum to 55.
        assert!(
            (w[0] - 0.55).abs() < 1e-6 && (w[1] - 5.5).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!(w[2], 1.0);
        assert_eq!(inverse_frequency(&[7, 7]), vec![1.0, 1.0]);
    }

    #[test]
    fn a_file_names_known_classes_with_positive_weights() {
        let dir = tempfile::tempdir().unwrap();
        let file = |text: &str| {
            let p = dir.path().join("w.json");
            std::fs::write(&p, text).unwrap();
            WeightsSpec::File(p)
        };
        let classes = names(3);
        let w = resolve(&file(r#"{"c1": 4.5}"#), &classes, &[1, 1, 1]).unwrap();
        assert_eq!(w, vec![1.0, 4.5, 1.0]);
        let err = |text: &str| {
            resolve(&file(text), &classes, &[1, 1, 1])
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"dog": 2}"#);
        assert!(
            e.contains("w.json: unknown class \"dog\"") && e.contains("c0, c1, c2"),
            "{e}"
        );
        assert!(err(r#"{"c0": 0}"#).contains("above 0, got 0"));
        assert!(err(r#"{"c0": "x"}"#).contains("above 0, got NaN"));
        assert!(err("[1, 2]").contains("expected a JSON object"));
        let missing = WeightsSpec::File(dir.path().join("none.json"));
        let e = resolve(&missing, &classes, &[1, 1, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json: No such file"), "{e}");
    }

    #[test]
    fn balanced_order_draws_classes_evenly_and_is_seeded() {
        let labels: Vec<usize> = (0..1000).map(|i| usize::from(i >= 990)).collect();
        let order = epoch_order(&labels, true, 7, 3);
        assert_eq!(order.len(), 1000);
        let minority = order.iter().filter(|&&i| labels[i] == 1).count();
        assert!((400..600).contains(&minority), "{minority} of 1000 draws");
        assert_eq!(order, epoch_order(&labels, true, 7, 3));
        assert_ne!(order, epoch_order(&labels, true, 7, 4));
        let mut plain = epoch_order(&labels, false, 7, 3);
        plain.sort_unstable();
        assert_eq!(plain, (0..1000).collect::<Vec<_>>(), "a permutation");
    }
}
