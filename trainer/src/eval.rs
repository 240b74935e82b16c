//! Honest evaluation: an exported ONNX bundle run through the runtime (tract), exactly as
//! the board runs it, scored with accuracy, top-5, per-class precision / recall / F1 and a
//! confusion matrix, and written as JSON, Markdown and PNG next to the model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glimpse_runtime::classifier::{argmax, ranking, Scores};
use glimpse_runtime::Classifier;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::plot;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub images: usize,
    pub accuracy: f64,
    pub top5: f64,
    pub per_class: Vec<ClassMetrics>,
    pub macro_avg: Averages,
    pub weighted_avg: Averages,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Scores predictions: `(true label, probabilities)` per image.
pub fn score(results: &[(usize, Vec<f32>)], classes: &[String]) -> Metrics {
    let k = classes.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut top5 = 0usize;
    for (truth, probs) in results {
        let order = ranking(probs);
        confusion[*truth][order[0]] += 1;
        if order.iter().take(5).any(|i| i == truth) {
            top5 += 1;
        }
    }
    let n = results.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                class: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let avg = |weights: &dyn Fn(&ClassMetrics) -> f64| {
        let total: f64 = per_class.iter().map(weights).sum();
        let w = |f: &dyn Fn(&ClassMetrics) -> f64| {
            if total == 0.0 {
                0.0
            } else {
                per_class.iter().map(|m| f(m) * weights(m)).sum::<f64>() / total
            }
        };
        Averages {
            precision: w(&|m| m.precision),
            recall: w(&|m| m.recall),
            f1: w(&|m| m.f1),
        }
    };
    Metrics {
        images: n,
        accuracy: ratio(correct, n),
        top5: ratio(top5, n),
        macro_avg: avg(&|_| 1.0),
        weighted_avg: avg(&|m| m.support as f64),
        per_class,
        confusion,
    }
}

/// Runs every example through the classifier (in parallel) and scores the results.
pub fn evaluate(
    classifier: &Classifier,
    examples: &[Example],
    classes: &[String],
) -> Result<Metrics> {
    Ok(score_predictions(
        examples,
        predict(classifier, examples)?,
        classes,
    ))
}

/// Scores `probs`, one per example in order, against the examples' labels.
pub fn score_predictions(
    examples: &[Example],
    probs: Vec<Vec<f32>>,
    classes: &[String],
) -> Metrics {
    let results: Vec<(usize, Vec<f32>)> = examples.iter().map(|e| e.label).zip(probs).collect();
    score(&results, classes)
}

/// Each example's probabilities, from the classifier (in parallel), in order.
pub fn predict(classifier: &Classifier, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
    Ok(predict_scores(classifier, examples, "evaluating")?
        .into_iter()
        .map(|s| s.probs)
        .collect())
}

/// Each example's probabilities and rejection, from the classifier (in parallel), in
/// order; `what` labels the progress bar.
pub fn predict_scores(
    classifier: &Classifier,
    examples: &[Example],
    what: &str,
) -> Result<Vec<Scores>> {
    let bar = crate::progress::bar(examples.len() as u64, what);
    let scores = examples
        .par_iter()
        .map(|e| {
            let (scores, _) = classifier
                .classify(&e.image)
                .with_context(|| e.name.to_string())?;
            bar.inc(1);
            Ok(scores)
        })
        .collect::<Result<_>>();
    bar.finish_and_clear();
    scores
}

/// One image's prediction, as `eval --predictions` writes it (a JSON line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// The file (or `<IDX file>#<index>`).
    pub image: String,
    /// The true class.
    pub label: String,
    /// The most probable class.
    pub predicted: String,
    /// One per class of the model, in the model's label order.
    pub probabilities: Vec<f32>,
}

/// The predictions of `examples` as JSON lines.
pub fn predictions_jsonl(examples: &[Example], probs: &[Vec<f32>], labels: &[String]) -> String {
    let mut out = String::new();
    for (e, p) in examples.iter().zip(probs) {
        let best = argmax(p);
        let line = Prediction {
            image: e.name.to_string(),
            label: labels[e.label].clone(),
            predicted: labels[best].clone(),
            probabilities: p.clone(),
        };
        out.push_str(&serde_json::to_string(&line).expect("a prediction serializes"));
        out.push('\n');
    }
    out
}

/// The files a report is made of, next to the model: `<stem>.report.json`,
/// `<stem>.report.md`, `<stem>.confusion.png` and (after training) `<stem>.curves.png`.
pub struct ReportPaths {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub confusion_png: PathBuf,
    pub curves_png: PathBuf,
}

impl ReportPaths {
    pub fn next_to(model: &Path) -> Self {
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let dir = model.parent().unwrap_or(Path::new("."));
        let f = |suffix: &str| dir.join(format!("{stem}.{suffix}"));
        ReportPaths {
            json: f("report.json"),
            markdown: f("report.md"),
            confusion_png: f("confusion.png"),
            curves_png: f("curves.png"),
        }
    }
}

/// Everything the JSON report holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub data: String,
    pub split: String,
    pub metrics: Metrics,
    /// Files that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Classes trained on fewer images than the flagging threshold, with their counts.
    #[serde(default)]
    pub small_classes: Vec<(String, usize)>,
    /// Training summary, when the report was written at the end of training.
    pub training: Option<serde_json::Value>,
    /// How the bundle's "none of the above" does (`glimpse.reject`), when it has one.
    #[serde(default)]
    pub reject: Option<crate::reject::Evaluation>,
}

/// Writes the JSON, Markdown and confusion-matrix PNG of a report (atomically).
pub fn write_report(report: &Report, paths: &ReportPaths) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    glimpse_runtime::fsutil::atomic_write(&paths.json, &json)?;
    glimpse_runtime::fsutil::atomic_write(&paths.markdown, markdown(report).as_bytes())?;
    let classes: Vec<String> = report
        .metrics
        .per_class
        .iter()
        .map(|c| c.class.clone())
        .collect();
    let png = plot::confusion_png(&report.metrics.confusion, &classes)
        .context("drawing the confusion matrix")?;
    glimpse_runtime::fsutil::atomic_write(&paths.confusion_png, &png)?;
    Ok(())
}

/// The rejection's section of the report.
pub fn reject_markdown(ev: &crate::reject::Evaluation) -> String {
    let mut s = format!(
        "\n## None of the above\n\nThe model rejects images scoring below {} on `{}` (calibrated to accept {:.0}% of the validation images); `glimpse` reports them as `unknown`.\n\n| | value |\n|---|---|\n| test images accepted | {:.2}% |\n| accuracy on accepted test images | {:.2}% |\n| accuracy on all test images | {:.2}% |\n",
        ev.reject.threshold,
        ev.reject.score,
        ev.reject.target_accept * 100.0,
        ev.test_accepted * 100.0,
        ev.accuracy_accepted * 100.0,
        ev.accuracy_all * 100.0
    );
    if let Some(n) = &ev.negatives {
        s += &format!(
            "| negatives (images of no class) | {} |\n| negatives accepted (false accepts) | {:.2}% |\n| AUROC, known vs negatives | {:.3} |\n| AUROC of the max probability instead | {:.3} |\n",
            n.images,
            n.false_accept_rate * 100.0,
            n.auroc,
            n.auroc_max_probability
        );
    }
    s
}

/// A human summary: headline numbers, the per-class table, the confusion matrix as text.
pub fn markdown(r: &Report) -> String {
    let m = &r.metrics;
    let mut s = format!(
        "# Evaluation of `{}`\n\nData: `{}` ({}), {} test images, evaluated through the glimpse runtime (tract).\n\n",
        r.model, r.data, r.split, m.images
    );
    if let Some(t) = &r.training {
        let secs = t["wall_seconds"].as_f64().unwrap_or(f64::NAN);
        let device = t["device"].as_str().unwrap_or("cpu");
        s += &format!("Trained in {secs:.0} s on {device}.");
        if let Some(ft) = t["config"].get("fine_tune").filter(|f| !f.is_null()) {
            let mb = t["feature_extraction"]["cache_bytes"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e6;
            s += &format!(
                " Fine-tuned the backbone's last {} blocks (above `{}`, learning rate × {}); activation cache {mb:.0} MB.",
                ft["blocks"], ft["cut"].as_str().unwrap_or("?"), ft["backbone_lr_scale"]
            );
        }
        s += "\n\n";
    }
    s += &format!("| metric | value |\n|---|---|\n| accuracy (top-1) | {:.2}% |\n| top-5 accuracy | {:.2}% |\n", m.accuracy * 100.0, m.top5 * 100.0);
    s += &format!(
        "| macro precision / recall / F1 | {:.3} / {:.3} / {:.3} |\n| weighted precision / recall / F1 | {:.3} / {:.3} / {:.3} |\n\n",
        m.macro_avg.precision, m.macro_avg.recall, m.macro_avg.f1, m.weighted_avg.precision, m.weighted_avg.recall, m.weighted_avg.f1
    );
    s += "## Per class\n\n| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n";
    for c in &m.per_class {
        s += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} |\n",
            c.class, c.precision, c.recall, c.f1, c.support
        );
    }
    s += "\n## Confusion matrix (rows: true class, columns: predicted)\n\n```\n";
    s += &confusion_text(
        &m.confusion,
        &m.per_class
            .iter()
            .map(|c| c.class.as_str())
            .collect::<Vec<_>>(),
    );
    s += "```\n";
    if let Some(ev) = &r.reject {
        s += &reject_markdown(ev);
    }
    if !r.small_classes.is_empty() {
        s += "\n## Classes with few training images\n\n";
        for (c, n) in &r.small_classes {
            s += &format!("- {c}: {n} images; treat its scores with suspicion\n");
        }
    }
    if !r.skipped.is_empty() {
        s += &format!("\n## Skipped files ({})\n\n", r.skipped.len());
        for (p, why) in &r.skipped {
            s += &format!("- `{p}`: {why}\n");
        }
    }
    s
}

pub fn confusion_text(confusion: &[Vec<usize>], classes: &[&str]) -> String {
    // Row labels are "<name> <index>", names cut at 20 characters; columns are indices.
    let labels: Vec<String> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {i}", c.chars().take(20).collect::<String>()))
        .collect();
    let name_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1);
    let cell_w = confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |m| m.to_string().len())
        .max(3);
    let mut s = format!("{:>name_w$} |", "");
    for i in 0..classes.len() {
        s += &format!(" {i:>cell_w$}");
    }
    s += "\n";
    for (label, row) in labels.iter().zip(confusion) {
        s += &format!("{label:>name_w$} |");
        for v in row {
            s += &format!(" {v:>cell_w$}");
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_computed_values() {
        let classes = vec!["a".to_string(), "b".to_string()];
        // a,a correct; b predicted a once, b once.
        let r = vec![
            (0, vec![0.9, 0.1]),
            (0, vec![0.8, 0.2]),
            (1, vec![0.6, 0.4]),
            (1, vec![0.3, 0.7]),
        ];
        let m = score(&r, &classes);
        assert_eq!(m.confusion, vec![vec![2, 0], vec![1, 1]]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.per_class[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.per_class[1].recall - 0.5).abs() < 1e-12);
        assert!((m.per_class[1].precision - 1.0).abs() < 1e-12);
        assert_eq!(m.top5, 1.0);
        let f1a = 2.0 * (2.0 / 3.0) / (2.0 / 3.0 + 1.0);
        assert!((m.macro_avg.f1 - (f1a + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let text = confusion_text(&m.confusion, &["a", "b"]);
        assert!(text.contains("a 0 |   2   0"), "{text}");
    }
}
