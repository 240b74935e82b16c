//! Export a trained model as a standard ONNX bundle, then prove it: the file run by tract
//! (the runtime the board uses) must give the logits the burn model gives on real images.
//!
//! The graph is written with our own ONNX builder rather than burn's exporter, which does
//! not cover every op we need; batch norm is folded into the preceding convolution, so
//! the file holds only Conv, Relu, MaxPool, GlobalAveragePool, Flatten and Gemm.

use anyhow::{ensure, Context, Result};
use burn::prelude::*;
use glimpse_runtime::{
    BundleMeta, Classifier as RuntimeClassifier, OnnxFile, OutputKind, Overrides, Preprocess,
};
use tract_onnx::pb;

use crate::model::{Classifier, ConvBn, Layer};
use crate::onnx::{self, attr_ints, ConvOpts, GraphBuilder, Weights};

/// Largest accepted difference between burn's and tract's logits.
pub const PARITY_TOLERANCE: f32 = 1e-3;

/// A tensor's shape and values.
pub fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    (shape, t.try_into_vec_as::<f32>().expect("float tensor"))
}

/// Conv weights with the batch norm folded in: `w·γ/√(σ²+ε)`, bias `β − μ·γ/√(σ²+ε)`.
fn fold(cb: &ConvBn) -> (Weights, Vec<f32>) {
    let (shape, mut w) = values(cb.conv.weight.val());
    let (_, gamma) = values(cb.bn.gamma.val());
    let (_, beta) = values(cb.bn.beta.val());
    let (_, mean) = values(cb.bn.running_mean.value_sync());
    let (_, var) = values(cb.bn.running_var.value_sync());
    let conv_bias = cb.conv.bias.as_ref().map(|b| values(b.val()).1);
    let out = shape[0];
    let per = w.len() / out;
    let mut bias = Vec::with_capacity(out);
    for o in 0..out {
        let scale = gamma[o] / (var[o] + cb.bn.epsilon as f32).sqrt();
        w[o * per..(o + 1) * per]
            .iter_mut()
            .for_each(|v| *v *= scale);
        let b0 = conv_bias.as_ref().map_or(0.0, |b| b[o]);
        bias.push((b0 - mean[o]) * scale + beta[o]);
    }
    (Weights::new(shape, w), bias)
}

/// burn's `Linear` stores `[in, out]`; ONNX Gemm with `transB=1` (PyTorch's layout) wants
/// `[out, in]`.
pub fn linear_weights(l: &burn::nn::Linear) -> (Weights, Vec<f32>) {
    let (shape, w) = values(l.weight.val());
    let (d_in, d_out) = (shape[0], shape[1]);
    let mut t = vec![0f32; w.len()];
    for i in 0..d_in {
        for o in 0..d_out {
            t[o * d_in + i] = w[i * d_out + o];
        }
    }
    let b = l
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; d_out], |b| values(b.val()).1);
    (Weights::new(vec![d_out, d_in], t), b)
}

/// Builds the ONNX model: input `input` `[batch, C, H, W]`, output `logits` `[batch, K]`.
/// `model` must be the inference copy (`model.valid()`).
pub fn to_onnx(
    model: &Classifier,
    pp: &Preprocess,
    meta: &BundleMeta,
    classes: usize,
) -> pb::ModelProto {
    let mut g = GraphBuilder::default();
    let mut x = "input".to_string();
    for (i, layer) in model.features.iter().enumerate() {
        x = match layer {
            Layer::ConvBn(cb) => {
                let (w, b) = fold(cb);
                let [sh, sw] = cb.conv.stride;
                let pads = match cb.conv.padding {
                    burn::nn::PaddingConfig2d::Explicit(t, l, bo, r) => [t, l, bo, r],
                    _ => [0, 0, 0, 0],
                };
                debug_assert_eq!(sh, sw);
                let y = g.conv(
                    &format!("features.{i}.conv"),
                    &x,
                    &w,
                    &b,
                    ConvOpts {
                        stride: sh,
                        pads,
                        group: cb.conv.groups,
                    },
                );
                if cb.relu {
                    g.node("Relu", &format!("features.{i}.relu"), &[&y], vec![])
                } else {
                    y
                }
            }
            Layer::MaxPool(p) => g.node(
                "MaxPool",
                &format!("features.{i}.maxpool"),
                &[&x],
                vec![
                    attr_ints("kernel_shape", &p.kernel_size.map(|k| k as i64)),
                    attr_ints("strides", &p.stride.map(|s| s as i64)),
                ],
            ),
        };
    }
    x = if model.global_pool.is_some() {
        g.global_pool("pool", &x)
    } else {
        g.node("Flatten", "flatten", &[&x], vec![onnx::attr_int("axis", 1)])
    };
    if let Some(hidden) = &model.hidden {
        let (w, b) = linear_weights(hidden);
        let y = g.linear("hidden", &x, &w, &b);
        x = g.node("Relu", "hidden.relu", &[&y], vec![]);
    }
    let (w, b) = linear_weights(&model.head);
    g.linear("head", &x, &w, &b);
    g.name_last_output("logits");
    let [_, c, h, w_] = pp.shape(1);
    let graph = g.finish(
        meta.name.as_deref().unwrap_or("glimpse-model"),
        ("input", &[None, Some(c), Some(h), Some(w_)]),
        ("logits", &[None, Some(classes)]),
    );
    onnx::model(
        graph,
        meta,
        "image classifier trained by glimpse-train (logits)",
    )
}

/// Result of comparing the exported file with the burn model.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Parity {
    pub images: usize,
    pub max_abs_logit_diff: f32,
}

/// Runs `inputs` (already preprocessed `[N, C, H, W]` tensors of one image each, as
/// `Vec<f32>`) through burn and through tract on `bytes`; fails above the tolerance.
pub fn check_parity(
    model: &Classifier,
    bytes: &[u8],
    pp: &Preprocess,
    inputs: &[Vec<f32>],
) -> Result<(RuntimeClassifier, Parity)> {
    let file = OnnxFile::from_bytes(bytes).context("re-reading the exported model")?;
    let runtime = RuntimeClassifier::new(file, &Overrides::default())
        .context("the exported model does not load in the runtime")?;
    let device = Device::flex();
    let shape = pp.shape(1);
    let pairs = inputs
        .iter()
        .map(|input| {
            let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape), &device);
            let ours = model
                .forward(x)
                .try_into_vec_as::<f32>()
                .expect("float logits");
            Ok((ours, runtime.run_raw(input_tensor(shape, input.clone()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let parity = parity(&pairs, "export parity check")?;
    Ok((runtime, parity))
}

/// Compares `(reference logits, the file's logits)` per image: the largest difference,
/// or an error when they differ in length or by more than `PARITY_TOLERANCE`.
pub fn parity(pairs: &[(Vec<f32>, Vec<f32>)], what: &str) -> Result<Parity> {
    let mut worst = 0f32;
    for (ours, theirs) in pairs {
        ensure!(
            ours.len() == theirs.len(),
            "{what}: expected {} logits from the ONNX file, got {}",
            ours.len(),
            theirs.len()
        );
        for (a, b) in ours.iter().zip(theirs) {
            worst = worst.max((a - b).abs());
        }
    }
    ensure!(
        worst <= PARITY_TOLERANCE,
        "{what} failed: the ONNX file's logits differ from the trained model's by up to {worst:e} (limit {PARITY_TOLERANCE:e})"
    );
    Ok(Parity {
        images: pairs.len(),
        max_abs_logit_diff: worst,
    })
}

/// A `[1, C, H, W]` (or NHWC) model input from preprocessed values.
pub fn input_tensor(shape: [usize; 4], values: Vec<f32>) -> tract_onnx::prelude::Tensor {
    tract_onnx::prelude::tract_ndarray::Array4::from_shape_vec(shape, values)
        .expect("values match the preprocessing shape")
        .into()
}

/// The metadata of a model trained here.
pub fn bundle_meta(pp: &Preprocess, labels: Vec<String>, name: &str, source: String) -> BundleMeta {
    let mut meta = BundleMeta::describe(pp, labels, OutputKind::Logits);
    meta.name = Some(name.to_string());
    meta.version = Some("1".into());
    meta.source = Some(source);
    meta
}
