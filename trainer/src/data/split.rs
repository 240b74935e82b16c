//! Train / validation / test splits: stratified by class and seeded, and few-shot subsets.

use std::path::PathBuf;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Dataset, Example, Format, LoadOptions, LoadReport};

/// Something of one class: an example, or a file with its class index.
pub trait Labelled {
    fn label(&self) -> usize;
}

impl Labelled for Example {
    fn label(&self) -> usize {
        self.label
    }
}

impl Labelled for (PathBuf, usize) {
    fn label(&self) -> usize {
        self.1
    }
}

pub(super) fn finish(
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
pub fn stratified_split<T: Labelled>(
    all: Vec<T>,
    classes: usize,
    val: f64,
    test: f64,
    seed: u64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<T>> = (0..classes).map(|_| Vec::new()).collect();
    for e in all {
        by_class[e.label()].push(e);
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
    use std::sync::Arc;

    use image::RgbImage;

    use super::*;

    fn ex(label: usize) -> Example {
        Example {
            image: Arc::new(RgbImage::new(1, 1)),
            label,
            name: "test".into(),
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
}
