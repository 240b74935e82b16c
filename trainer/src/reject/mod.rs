//! "None of the above": a rejection calibrated at the end of training and stored in the
//! bundle (`glimpse.reject`), so that the board refuses to name what the model never saw.
//!
//! The score is the cosine similarity of an image's features (the input of the bundle's
//! final `Gemm`) to the nearest of a few prototypes of each class (`prototypes`: spherical
//! k-means of its training images' features), computed inside the bundle as a second
//! output: the runtime reads it with no code of its own, and it was measured to separate
//! unseen kinds of images far better than the maximum probability (BENCHMARKS.md). The
//! threshold is calibrated on the validation images to accept at least `target` of new
//! images of the known classes (split conformal prediction).

mod prototypes;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use burn::config::Config;
use fast_image_resize::Resizer;
use glimpse_runtime::classifier::Scores;
use glimpse_runtime::{BundleMeta, Classifier, OnnxFile, Overrides, Reject};
use prost::Message;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::data::Example;
use crate::onnx::{attr_int, attr_ints, value_info, GraphBuilder, Weights};
use crate::transfer::Backbone;

/// The bundle output carrying the score.
pub const OUTPUT: &str = "glimpse_reject_score";
/// What `glimpse.reject` calls the score.
pub const SCORE: &str = "cosine_to_class_prototypes";
/// Every node of the score's branch is named with this prefix: the quantizer leaves them
/// in float (the score compares directions; int8 would move the calibrated threshold).
pub const NODE_PREFIX: &str = "glimpse_reject";
/// Training images per class the prototypes are found in.
const IMAGES_PER_CLASS: usize = 500;
/// Prototypes per class: 8 beat 4 and a single mean on every unseen set, and 16 gained
/// little more (BENCHMARKS.md).
const PROTOTYPES_PER_CLASS: usize = 8;

/// The rejection a run calibrates (`--reject-target`); saved with the run's configuration.
#[derive(Config, Debug)]
pub struct RejectConfig {
    /// Share of validation images of known classes the threshold accepts.
    #[config(default = 0.95)]
    pub target: f64,
}

/// The images of `--negatives DIR` (and its sub-folders): photos of none of the classes,
/// to measure the rejection on. Unreadable files are skipped with a warning; a folder
/// without any image is refused.
pub fn load_negatives(dir: &Path) -> Result<Vec<Example>> {
    let files = glimpse_runtime::decode::image_files(dir, true)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--negatives {}", dir.display()))?;
    let mut report = crate::data::LoadReport::default();
    let examples = crate::data::decode_files(
        files.into_iter().map(|f| (f, 0)).collect(),
        Some(256),
        &mut report,
    );
    for (path, why) in &report.skipped {
        log::warn!("--negatives: {path}: {why}");
    }
    if examples.is_empty() {
        bail!(
            "--negatives {}: no readable images in it (expected photos of things that belong to none of the classes)",
            dir.display()
        );
    }
    Ok(examples)
}

/// A bundle with its rejection, and how the rejection was chosen.
pub struct Calibrated {
    pub bytes: Vec<u8>,
    pub classifier: Classifier,
    pub reject: Reject,
}

/// Adds the score to the bundle in `bytes` and calibrates its threshold on `val` (on
/// `train` when there is no validation split) to accept `target` of those images.
pub fn calibrate(
    bytes: &[u8],
    classes: usize,
    train: &[Example],
    val: &[Example],
    target: f64,
) -> Result<Calibrated> {
    check_target(target)?;
    let bytes = &without_rejection(bytes)?;
    let features = Backbone::from_bytes(bytes, "the trained model", None, |pp| pp)
        .context("reading the trained model's features for the rejection")?;
    let prototypes = class_prototypes(&features, train, classes)?;
    let unset = Reject {
        score: SCORE.into(),
        output: OUTPUT.into(),
        threshold: f32::MIN,
        target_accept: target,
    };
    // The backbone read the whole bundle: its proto and metadata are what the score joins.
    let with_score = add_score(&features.file, &features.cut.features, &prototypes)?;
    let classifier = load(encode(with_score.clone(), &features.file.meta, &unset))?;
    let calibration = if val.is_empty() { train } else { val };
    let scores = score_all(&classifier, calibration)?;
    if scores.len() < 100 {
        log::warn!(
            "the rejection is calibrated on {} images only: the share of known images it accepts may differ from {target} (more validation images make it exact)",
            scores.len()
        );
    }
    let reject = Reject {
        threshold: conformal_threshold(scores, target),
        ..unset
    };
    let bytes = encode(with_score, &features.file.meta, &reject);
    Ok(Calibrated {
        classifier: load(bytes.clone())?,
        bytes,
        reject,
    })
}

/// Refuses a `--reject-target` that is not a share strictly between 0 and 1.
pub fn check_target(target: f64) -> Result<()> {
    ensure!(
        target > 0.0 && target < 1.0,
        "--reject-target: expected a share of images above 0 and below 1, got {target}"
    );
    Ok(())
}

/// The bundle in `bytes` without a rejection (as it was before one was added).
fn without_rejection(bytes: &[u8]) -> Result<Vec<u8>> {
    let file = OnnxFile::from_bytes(bytes).context("re-reading the trained model")?;
    if file.meta.reject.is_none() {
        return Ok(bytes.to_vec());
    }
    let graph = without_score(file.graph());
    let mut proto = pb::ModelProto {
        graph: Some(graph),
        ..file.proto
    };
    proto
        .metadata_props
        .retain(|p| p.key != glimpse_runtime::bundle::keys::REJECT);
    Ok(proto.encode_to_vec())
}

/// The threshold that accepts a new image of a known class with probability at least
/// `target`, from the scores of `n` such images (split conformal prediction: the
/// `floor((n + 1) (1 - target))`-th lowest score; with too few images for that, none is
/// rejected). Unlike the plain quantile it errs towards accepting when `n` is small.
fn conformal_threshold(mut scores: Vec<f32>, target: f64) -> f32 {
    scores.sort_by(f32::total_cmp);
    let k = ((scores.len() + 1) as f64 * (1.0 - target)).floor() as usize;
    match k {
        0 => f32::MIN,
        k => scores[k.min(scores.len()) - 1],
    }
}

/// The prototypes of every class, from the features of at most `IMAGES_PER_CLASS`
/// training images of each.
fn class_prototypes(
    features: &Backbone,
    train: &[Example],
    classes: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut taken = vec![0usize; classes];
    let picked: Vec<&Example> = train
        .iter()
        .filter(|e| {
            taken[e.label] += 1;
            taken[e.label] <= IMAGES_PER_CLASS
        })
        .collect();
    let bar = crate::progress::bar(picked.len() as u64, "rejection: class prototypes");
    let rows = picked
        .par_iter()
        .map_init(Resizer::new, |resizer, e| {
            bar.inc(1);
            Ok((e.label, features.features(&e.image, resizer)?))
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let mut per_class = vec![Vec::new(); classes];
    for (label, f) in rows {
        // An all-zero vector has no direction: it cannot describe the class.
        if let Some(u) = unit(&f.iter().map(|&x| x as f64).collect::<Vec<_>>()) {
            per_class[label].push(u);
        }
    }
    Ok(per_class
        .par_iter()
        .enumerate()
        .flat_map_iter(|(c, vectors)| {
            prototypes::spherical_kmeans(vectors, PROTOTYPES_PER_CLASS, c as u64)
        })
        .collect())
}

/// `v` scaled to length 1; `None` for all zeros.
fn unit(v: &[f64]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (norm > 0.0).then(|| v.iter().map(|x| (x / norm) as f32).collect())
}

/// The model of `file` with a second output: `max_p cos(features, prototypes[p])`, one
/// value per image (its metadata is left to `encode`).
fn add_score(file: &OnnxFile, features: &str, prototypes: &[Vec<f32>]) -> Result<pb::ModelProto> {
    let graph = file.graph();
    let opset = file
        .opsets()
        .iter()
        .find(|(d, _)| d == "ai.onnx")
        .map_or(crate::onnx::OPSET, |(_, v)| *v);
    ensure!(
        !prototypes.is_empty(),
        "no training image gave the rejection a direction (all-zero features)"
    );
    let (k, dim) = (prototypes.len(), prototypes[0].len());
    let mut g = GraphBuilder::continuing(graph);
    let p = |s: &str| format!("{NODE_PREFIX}.{s}");
    // |f| + 1e-12 (an all-zero feature vector scores 0, not NaN), then f / |f|.
    let norm = reduce(&mut g, "ReduceL2", &p("norm"), features, opset, true);
    let eps = g.weights(&p("eps"), &Weights::new(vec![1], vec![1e-12]));
    let norm = g.node("Add", &p("norm_eps"), &[&norm, &eps], vec![]);
    let unit = g.node("Div", &p("unit"), &[features, &norm], vec![]);
    // [N, dim] x [dim, k]: the cosine to every prototype; the best of them.
    let transposed: Vec<f32> = (0..dim)
        .flat_map(|d| prototypes.iter().map(move |m| m[d]))
        .collect();
    let prototypes = g.weights(&p("prototypes"), &Weights::new(vec![dim, k], transposed));
    let cosines = g.node("MatMul", &p("cosines"), &[&unit, &prototypes], vec![]);
    reduce(&mut g, "ReduceMax", &p("best"), &cosines, opset, false);
    let output = g.name_last_output(OUTPUT);
    let (node, initializer) = g.into_parts();
    let mut outputs = graph.output.clone();
    outputs.push(value_info(&output, &[None]));
    Ok(pb::ModelProto {
        graph: Some(pb::GraphProto {
            node,
            initializer,
            output: outputs,
            ..graph.clone()
        }),
        ..file.proto.clone()
    })
}

/// `graph` without the score's nodes, weights and output: a model trained here used as a
/// `--backbone` is cut like any classifier, and a rejection is recalibrated from scratch.
pub fn without_score(graph: &pb::GraphProto) -> pb::GraphProto {
    pb::GraphProto {
        node: graph
            .node
            .iter()
            .filter(|n| !n.name.starts_with(NODE_PREFIX))
            .cloned()
            .collect(),
        initializer: graph
            .initializer
            .iter()
            .filter(|t| !t.name.starts_with(NODE_PREFIX))
            .cloned()
            .collect(),
        output: graph
            .output
            .iter()
            .filter(|o| o.name != OUTPUT)
            .cloned()
            .collect(),
        ..graph.clone()
    }
}

/// A reduction over axis 1: the axes an attribute before opset 18, an input from it.
fn reduce(g: &mut GraphBuilder, op: &str, name: &str, x: &str, opset: i64, keep: bool) -> String {
    let keepdims = attr_int("keepdims", i64::from(keep));
    if opset >= 18 {
        let axes = g.initializer(crate::onnx::i64_tensor(&format!("{name}.axes"), &[1], &[1]));
        g.node(op, name, &[x, &axes], vec![keepdims])
    } else {
        g.node(op, name, &[x], vec![attr_ints("axes", &[1]), keepdims])
    }
}

/// `proto` encoded with the metadata `meta` describes and `glimpse.reject` set to `reject`.
fn encode(proto: pb::ModelProto, meta: &BundleMeta, reject: &Reject) -> Vec<u8> {
    let meta = BundleMeta {
        reject: Some(reject.clone()),
        ..meta.clone()
    };
    pb::ModelProto {
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..proto
    }
    .encode_to_vec()
}

fn load(bytes: Vec<u8>) -> Result<Classifier> {
    let file = OnnxFile::from_bytes(&bytes).context("re-reading the model with its rejection")?;
    Classifier::new(file, &Overrides::default())
        .context("the model with its rejection does not load in the runtime")
}

/// The reject score of one result (NaN when the model has none: it sorts lowest).
fn score_of(s: &Scores) -> f32 {
    s.reject_score.unwrap_or(f32::NAN)
}

/// Each example's reject score, in order.
pub fn score_all(classifier: &Classifier, examples: &[Example]) -> Result<Vec<f32>> {
    Ok(
        crate::eval::predict_scores(classifier, examples, "rejection: calibrating")?
            .iter()
            .map(score_of)
            .collect(),
    )
}

/// How the rejection does, for the report: on the test split (known classes) and, when
/// given, on images of none of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub reject: Reject,
    /// Share of test images accepted, and the top-1 accuracy on those and on all.
    pub test_accepted: f64,
    pub accuracy_accepted: f64,
    pub accuracy_all: f64,
    /// Against `--negatives`: how many, the share accepted at the threshold (false
    /// accepts), and how well each score separates them from the test images (AUROC: 1
    /// is perfect, 0.5 is chance).
    pub negatives: Option<Negatives>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Negatives {
    pub images: usize,
    pub false_accept_rate: f64,
    pub auroc: f64,
    /// The same for the maximum class probability, the usual confidence.
    pub auroc_max_probability: f64,
}

/// Scores the rejection on `test` (known classes, whose scores `known` holds, in order)
/// and `negatives` (none of them).
pub fn evaluate(
    classifier: &Classifier,
    reject: &Reject,
    (test, known): (&[Example], &[Scores]),
    negatives: &[Example],
) -> Result<Evaluation> {
    let accepted: Vec<bool> = known.iter().map(|s| !s.rejected).collect();
    let right: Vec<bool> = known
        .iter()
        .zip(test)
        .map(|(s, e)| glimpse_runtime::classifier::argmax(&s.probs) == e.label)
        .collect();
    let share = |hits: usize, of: usize| hits as f64 / of.max(1) as f64;
    let n_accepted = accepted.iter().filter(|a| **a).count();
    let right_accepted = right
        .iter()
        .zip(&accepted)
        .filter(|(r, a)| **r && **a)
        .count();
    let negatives = match negatives {
        [] => None,
        negatives => {
            let unknown =
                crate::eval::predict_scores(classifier, negatives, "rejection: negatives")?;
            let max_p = |s: &Scores| s.probs.iter().copied().fold(f32::MIN, f32::max);
            let pick = |f: &dyn Fn(&Scores) -> f32| {
                (
                    known.iter().map(f).collect::<Vec<_>>(),
                    unknown.iter().map(f).collect::<Vec<_>>(),
                )
            };
            let (ks, us) = pick(&score_of);
            let (kp, up) = pick(&max_p);
            Some(Negatives {
                images: unknown.len(),
                false_accept_rate: share(
                    unknown.iter().filter(|s| !s.rejected).count(),
                    unknown.len(),
                ),
                auroc: auroc(&ks, &us),
                auroc_max_probability: auroc(&kp, &up),
            })
        }
    };
    Ok(Evaluation {
        reject: reject.clone(),
        test_accepted: share(n_accepted, test.len()),
        accuracy_accepted: share(right_accepted, n_accepted),
        accuracy_all: share(right.iter().filter(|r| **r).count(), test.len()),
        negatives,
    })
}

/// The area under the ROC curve of scores where `positive` should score higher than
/// `negative`: the chance that a random positive outscores a random negative, ties
/// counting half (the Mann-Whitney statistic). NaN scores count as the lowest.
pub fn auroc(positive: &[f32], negative: &[f32]) -> f64 {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let mut all: Vec<(f32, bool)> = positive
        .iter()
        .map(|&v| (key(v), true))
        .chain(negative.iter().map(|&v| (key(v), false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' ranks (1-based, ties sharing their mean rank).
    let (mut rank_sum, mut i) = (0f64, 0usize);
    while i < all.len() {
        let j = all[i..].iter().take_while(|x| x.0 == all[i].0).count() + i;
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, n) = (positive.len() as f64, negative.len() as f64);
    if p == 0.0 || n == 0.0 {
        return f64::NAN;
    }
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_is_the_chance_a_positive_outscores_a_negative() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        // 3 beats 1 and 2; 1.5 beats 1 only: 3 of 4 pairs.
        assert_eq!(auroc(&[3.0, 1.5], &[1.0, 2.0]), 0.75);
        assert_eq!(auroc(&[f32::NAN], &[0.0]), 0.0);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn the_threshold_is_the_conformal_quantile() {
        let scores: Vec<f32> = (1..=99).map(|i| i as f32).collect();
        // (99 + 1) * 0.05 = 5: the 5th lowest score; 95 of the 99 images are at or above.
        assert_eq!(conformal_threshold(scores, 0.95), 5.0);
        // 10 images: floor(11 * 0.05) = 0: too few to reject anything at 95%.
        assert_eq!(conformal_threshold(vec![0.5; 10], 0.95), f32::MIN);
        // floor(4 * 0.5) = 2: the 2nd lowest.
        assert_eq!(conformal_threshold(vec![3.0, 1.0, 2.0], 0.5), 2.0);
    }

    #[test]
    fn unit_scales_to_length_one() {
        let u = unit(&[3.0, 4.0]).unwrap();
        assert!((u[0] - 0.6).abs() < 1e-7 && (u[1] - 0.8).abs() < 1e-7);
        assert_eq!(unit(&[0.0, 0.0]), None);
    }
}
