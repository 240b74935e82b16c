//! One bundle from two parts: the backbone graph (cut before its old classifier) followed by
//! the trained head as `Gemm` (and `Relu`) nodes, with the user's labels and the backbone's
//! preprocessing in the metadata. Checked against backbone + head before anything is
//! written.

use anyhow::{Context, Result};
use glimpse_runtime::{BundleMeta, Classifier as RuntimeClassifier, OnnxFile, Overrides};
use tract_onnx::pb;

use super::backbone::{Backbone, Cut};
use super::head::{Head, OnFeatures};
use crate::export::{input_tensor, linear_weights, parity, Parity};
use crate::onnx::{value_info, GraphBuilder};

/// The bundle: `features`, the backbone graph up to its pooled features (`backbone.cut`,
/// or the graph with fine-tuned blocks), then the head; input as the backbone's, output
/// `logits` `[batch, classes]`.
pub fn graft(
    backbone: &Backbone,
    features: &Cut,
    head: &Head,
    meta: &BundleMeta,
) -> pb::ModelProto {
    let cut = &features.graph;
    let mut g = GraphBuilder::continuing(cut);
    // [N, dim] -> ([N, hidden] -> ReLU) -> [N, classes]; dropout is training-only.
    let mut x = features.features.clone();
    if let Some(hidden) = &head.hidden {
        let (w, b) = linear_weights(hidden);
        let y = g.linear("glimpse_head.hidden", &x, &w, &b);
        x = g.node("Relu", "glimpse_head.hidden.relu", &[&y], vec![]);
    }
    let (w, b) = linear_weights(&head.out);
    g.linear("glimpse_head.out", &x, &w, &b);
    let output = g.name_last_output("logits");
    let classes = w.shape[0];
    let (node, initializer) = g.into_parts();
    let graph = pb::GraphProto {
        name: meta.name.clone().unwrap_or_else(|| cut.name.clone()),
        node,
        initializer,
        output: vec![value_info(&output, &[None, Some(classes)])],
        ..cut.clone()
    };
    let mut model = crate::onnx::model(
        graph,
        meta,
        &format!(
            "image classifier: {} backbone with a head trained by glimpse-train (logits)",
            backbone.name
        ),
    );
    // Keep the backbone's opsets: its nodes were written for them.
    model.opset_import = backbone.file.proto.opset_import.clone();
    model.ir_version = backbone.file.proto.ir_version;
    model
}

/// Runs `fitted` images (already fitted to the input size) through the bundle in `bytes`
/// and through backbone + `model` (the head, or fine-tuned blocks + head); fails above the
/// tolerance.
pub fn check_parity<M: OnFeatures>(
    backbone: &Backbone,
    model: &M,
    bytes: &[u8],
    fitted: &[image::RgbImage],
) -> Result<(RuntimeClassifier, Parity)> {
    let file = OnnxFile::from_bytes(bytes).context("re-reading the grafted model")?;
    let runtime = RuntimeClassifier::new(file, &Overrides::default())
        .context("the grafted model does not load in the runtime")?;
    let pp = &backbone.preprocess;
    let shape = pp.shape(1);
    let pairs = fitted
        .iter()
        .map(|img| {
            let features = backbone.features_of_fitted(img)?;
            let ours = model.logits(&[&features]).remove(0);
            let mut input = vec![0f32; shape.iter().product()];
            pp.normalize_into(img, &mut input);
            Ok((ours, runtime.run_raw(input_tensor(shape, input))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let parity = parity(
        &pairs,
        "graft parity check (bundle vs backbone + trained layers)",
    )?;
    Ok((runtime, parity))
}
