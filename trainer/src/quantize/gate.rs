//! The gate: the float and the int8 model run side by side through the runtime on held-out
//! images; the int8 file is kept only if its top-1 accuracy dropped by no more than the
//! user allows. Without labels, the float model's answers are the reference and the drop
//! is the share of images, among those the float model is decided on, where the two
//! disagree (an upper bound of the real drop on such images).

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Result;
use glimpse_runtime::classifier::argmax;
use glimpse_runtime::Classifier;
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use crate::eval::{score, Metrics};

/// One held-out image and, if known, its class (an index into the model's labels).
#[derive(Clone)]
pub struct Probe {
    pub image: Arc<RgbImage>,
    pub label: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub images: usize,
    /// Whether the probes carry labels (accuracy) or not (agreement only).
    pub labeled: bool,
    pub float: Option<Metrics>,
    pub int8: Option<Metrics>,
    /// Share of images where both give the same top-1 class.
    pub agreement: f64,
    /// The same among the images the float model is decided on (its top-1 leads the
    /// second class by at least `DECIDED_MARGIN`), and how many those are: near ties on
    /// images of no known class flip under any rounding.
    pub agreement_decided: f64,
    pub decided_images: usize,
    /// Largest |probability difference| over all images and classes.
    pub max_prob_diff: f32,
    /// Top-1 accuracy drop in points (without labels: disagreement in points on the
    /// decided images).
    pub drop_points: f64,
}

/// Lead of the float top-1 over the second class that makes an image "decided".
pub const DECIDED_MARGIN: f32 = 0.05;

/// How far the best class leads the second.
fn margin(p: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in p {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Runs both models on every probe and compares.
pub fn compare(float: &Classifier, int8: &Classifier, probes: &[Probe]) -> Result<Comparison> {
    let bar = crate::progress::bar(probes.len() as u64, "float vs int8");
    let results: Vec<(Vec<f32>, Vec<f32>)> = probes
        .par_iter()
        .map(|p| {
            let a = float.classify(&p.image)?.0.probs;
            let b = int8.classify(&p.image)?.0.probs;
            bar.inc(1);
            Ok((a, b))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let n = probes.len().max(1) as f64;
    let agree = results
        .iter()
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let decided: Vec<&(Vec<f32>, Vec<f32>)> = results
        .iter()
        .filter(|(a, _)| margin(a) >= DECIDED_MARGIN)
        .collect();
    let agree_decided = decided
        .iter()
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let max_prob_diff = results
        .iter()
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    let labeled = !probes.is_empty() && probes.iter().all(|p| p.label.is_some());
    let (fm, im) = if labeled {
        // side 0: the float model's probabilities, side 1: the int8 model's.
        let with = |side: usize| {
            let r: Vec<(usize, Vec<f32>)> = probes
                .iter()
                .zip(&results)
                .map(|(p, (a, b))| {
                    (
                        p.label.expect("labeled"),
                        if side == 0 { a } else { b }.clone(),
                    )
                })
                .collect();
            score(&r, &float.labels)
        };
        (Some(with(0)), Some(with(1)))
    } else {
        (None, None)
    };
    let agreement = agree as f64 / n;
    let drop_points = match (&fm, &im) {
        (Some(f), Some(i)) => (f.accuracy - i.accuracy) * 100.0,
        _ => (1.0 - agree_decided as f64 / decided.len().max(1) as f64) * 100.0,
    };
    Ok(Comparison {
        images: probes.len(),
        labeled,
        float: fm,
        int8: im,
        agreement,
        agreement_decided: agree_decided as f64 / decided.len().max(1) as f64,
        decided_images: decided.len(),
        max_prob_diff,
        drop_points,
    })
}

/// The side-by-side table printed by `quantize`.
pub fn table(c: &Comparison, float_bytes: u64, int8_bytes: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| | float | int8 |");
    let _ = writeln!(s, "|---|---:|---:|");
    let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
    let _ = writeln!(
        s,
        "| file size | {} | {} ({:.1}%) |",
        mb(float_bytes),
        mb(int8_bytes),
        100.0 * int8_bytes as f64 / float_bytes.max(1) as f64
    );
    if let (Some(f), Some(i)) = (&c.float, &c.int8) {
        let _ = writeln!(
            s,
            "| top-1 accuracy | {:.2}% | {:.2}% |",
            f.accuracy * 100.0,
            i.accuracy * 100.0
        );
        let _ = writeln!(
            s,
            "| top-5 accuracy | {:.2}% | {:.2}% |",
            f.top5 * 100.0,
            i.top5 * 100.0
        );
        let _ = writeln!(
            s,
            "| macro F1 | {:.4} | {:.4} |",
            f.macro_avg.f1, i.macro_avg.f1
        );
        for (a, b) in f.per_class.iter().zip(&i.per_class) {
            if a.support > 0 {
                let _ = writeln!(s, "| F1 {} | {:.4} | {:.4} |", a.class, a.f1, b.f1);
            }
        }
    }
    let _ = writeln!(
        s,
        "\nagreement (same top-1): {:.2}% of {} images; max |probability difference| {:.4}",
        c.agreement * 100.0,
        c.images,
        c.max_prob_diff
    );
    let _ = writeln!(
        s,
        "agreement where the float top-1 leads by {:.0} points or more: {:.2}% of {} images",
        DECIDED_MARGIN * 100.0,
        c.agreement_decided * 100.0,
        c.decided_images
    );
    let _ = writeln!(
        s,
        "top-1 drop: {:.2} points{}",
        c.drop_points,
        if c.labeled {
            ""
        } else {
            " (no labels: measured as disagreement with the float model on the images it is decided on)"
        }
    );
    s
}
