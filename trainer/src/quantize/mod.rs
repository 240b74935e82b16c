//! int8 quantization of an ONNX bundle, as a pass over the ONNX graph (no Python): weight-only
//! or full static int8 with calibrated activations, then a gate that compares the int8
//! model with the float one on held-out images and refuses to keep a worse one.
//!
//! Stages: `calibrate` (activation ranges from real images, min/max or percentile),
//! `weights` (int8 / uint8 parameters), `rewrite` (the graph passes), `gate`.

pub mod calibrate;
pub mod gate;
pub mod rewrite;
pub mod weights;

use anyhow::{ensure, Result};
use glimpse_runtime::{OnnxFile, Preprocess};
use image::RgbImage;
use serde::Serialize;
use tract_onnx::pb;

pub use calibrate::Method;

/// What gets quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// int8 weights with DequantizeLinear: 4x smaller file, float compute.
    Weights,
    /// int8 weights and calibrated uint8 activations: QLinearConv integer kernels.
    Static,
    /// Static int8 for every convolution but the depthwise ones (one group per channel),
    /// which stay float with int8 weights: for runtimes whose integer depthwise kernels
    /// are slower than their float ones.
    Mixed,
}

/// Per output channel or one scale per weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    PerChannel,
    PerTensor,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Options {
    pub mode: Mode,
    pub granularity: Granularity,
    pub method: Method,
    /// Correct each layer's bias for the mean shift its rounded weights cause (needs
    /// calibration images).
    pub bias_correction: bool,
}

/// The metadata key that records how a bundle was quantized.
pub const META_KEY: &str = "glimpse.quantization";

/// The opset `DequantizeLinear` gained its per-axis form in.
const MIN_OPSET: i64 = 13;

/// Quantizes `float` (a bundle preprocessed by `pp`), calibrating on `calib` (activation
/// ranges in static mode, bias correction in both).
/// Returns the int8 model and a one-line description (also stored in its metadata).
pub fn quantize(
    float: &OnnxFile,
    pp: &Preprocess,
    calib: &[&RgbImage],
    opts: &Options,
) -> Result<(pb::ModelProto, String)> {
    let opset = float
        .proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    ensure!(
        opset >= MIN_OPSET,
        "expected a model of ONNX opset {MIN_OPSET} or later, got opset {opset}"
    );
    let graph = float.graph();
    let per_channel = opts.granularity == Granularity::PerChannel;
    let weights = match opts.granularity {
        Granularity::PerChannel => "per-channel",
        Granularity::PerTensor => "per-tensor",
    };
    // One calibration pass observes everything any step needs.
    let plan = match opts.mode {
        Mode::Weights => None,
        Mode::Static => Some(rewrite::static_plan(graph, true)),
        Mode::Mixed => Some(rewrite::static_plan(graph, false)),
    };
    let mut observe: Vec<String> = plan.as_ref().map(|p| p.tensors.clone()).unwrap_or_default();
    if opts.bias_correction {
        for t in rewrite::bias_correction_inputs(graph) {
            if !observe.contains(&t) {
                observe.push(t);
            }
        }
    }
    if let Some(p) = &plan {
        ensure!(
            !p.tensors.is_empty(),
            "static quantization found no convolution with constant weights to quantize"
        );
        ensure!(
            !calib.is_empty(),
            "static quantization needs calibration images"
        );
    }
    let obs = if observe.is_empty() || calib.is_empty() {
        calibrate::Observations::default()
    } else {
        calibrate::observe(&float.proto, pp, calib, &observe, opts.method)?
    };
    let corrected = if opts.bias_correction && !calib.is_empty() {
        rewrite::bias_correct(graph, &obs.means, per_channel)?
    } else {
        graph.clone()
    };
    let correction = if opts.bias_correction && !calib.is_empty() {
        format!(
            "; biases corrected for the weight rounding on {} images",
            calib.len()
        )
    } else {
        String::new()
    };
    let (graph, what) = match &plan {
        None => (
            rewrite::weight_only(&corrected, &["Conv", "Gemm", "MatMul"], per_channel)?,
            format!("int8 weights ({weights}, symmetric) with DequantizeLinear; float compute{correction}"),
        ),
        Some(plan) => {
            let g = rewrite::static_int8(&corrected, plan, &obs.ranges, per_channel)?;
            // Convs left out of the plan (mixed: the depthwise ones) get int8 weights too.
            let (float_ops, kind): (&[&str], _) = match opts.mode {
                Mode::Mixed => (&["Conv", "Gemm", "MatMul"], "mixed int8 (depthwise convs float)"),
                _ => (&["Gemm", "MatMul"], "static int8"),
            };
            (
                rewrite::weight_only(&g, float_ops, per_channel)?,
                format!(
                    "{kind}: QLinearConv with int8 weights ({weights}, symmetric) and uint8 activations calibrated by {} on {} images; other layers float with int8 weights{correction}",
                    opts.method,
                    calib.len()
                ),
            )
        }
    };
    let mut model = float.proto.clone();
    model.graph = Some(graph);
    model.metadata_props.retain(|p| p.key != META_KEY);
    model.metadata_props.push(pb::StringStringEntryProto {
        key: META_KEY.into(),
        value: what.clone(),
    });
    Ok((model, what))
}
