//! The backbone's blocks above the cut rebuilt in burn from their ONNX nodes and weights
//! (`--fine-tune N`): trained with the head on cached activations, then written back into
//! the graph as the same initializers with new values.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use tract_onnx::pb;

use super::blocks::Split;
use super::head::{Head, HeadConfig, OnFeatures};
use crate::export::values;
use crate::onnx::{attr, f32_tensor, floats};

#[derive(Debug, Clone, Copy)]
enum Op {
    /// The conv at this index of `Tail::convs`.
    Conv(usize),
    Clip(Option<f32>, Option<f32>),
    Relu,
    Add,
    /// Global average pooling, keeping `[N, C, 1, 1]`.
    Pool,
}

/// One node: its op and the value slots it reads. Slot 0 holds the input; step `i` writes
/// slot `i + 1`.
#[derive(Debug, Clone)]
struct Step {
    op: Op,
    inputs: Vec<usize>,
}

/// The layers above the cut: `[N, C, H, W]` activations to `[N, features]`.
#[derive(Module, Debug)]
pub struct Tail {
    pub convs: Vec<Conv2d>,
    /// The ONNX initializer names of each conv's weight and bias.
    #[module(skip)]
    names: Vec<(String, Option<String>)>,
    #[module(skip)]
    steps: Vec<Step>,
    /// The cached activations' `[C, H, W]`.
    #[module(skip)]
    pub shape: [usize; 3],
}

/// A float initializer of `weights` by name, for node `node`.
fn weight<'a>(
    weights: &'a HashMap<String, pb::TensorProto>,
    node: &pb::NodeProto,
    name: &str,
) -> Result<&'a pb::TensorProto> {
    weights
        .get(name)
        .with_context(|| format!("node {:?}: {name:?} is not a constant", node.name))
}

fn ints(node: &pb::NodeProto, name: &str, default: &[i64]) -> Vec<usize> {
    attr(node, name)
        .map_or(default, |a| a.ints.as_slice())
        .iter()
        .map(|&v| v as usize)
        .collect()
}

/// A burn `Conv2d` holding the ONNX node's weights.
fn conv(
    node: &pb::NodeProto,
    weights: &HashMap<String, pb::TensorProto>,
    device: &Device,
) -> Result<(Conv2d, (String, Option<String>))> {
    let w_name = node.input.get(1).map_or("", String::as_str);
    let w = weight(weights, node, w_name)?;
    ensure!(
        w.dims.len() == 4 && w.dims.iter().all(|&d| d > 0),
        "node {:?}: expected a 2-D convolution (a 4-D weight), got weight shape {:?}",
        node.name,
        w.dims
    );
    if let Some(pad) = attr(node, "auto_pad").filter(|a| !matches!(&a.s[..], b"" | b"NOTSET")) {
        bail!(
            "node {:?}: expected explicit pads, got auto_pad {}",
            node.name,
            String::from_utf8_lossy(&pad.s)
        );
    }
    let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
    let group = attr(node, "group").map_or(1, |a| a.i as usize);
    let (stride, dilation) = (
        ints(node, "strides", &[1, 1]),
        ints(node, "dilations", &[1, 1]),
    );
    let pads = ints(node, "pads", &[0, 0, 0, 0]);
    ensure!(
        stride.len() == 2 && dilation.len() == 2 && pads.len() == 4,
        "node {:?}: expected 2 strides, 2 dilations and 4 pads, got {stride:?}, {dilation:?}, {pads:?}",
        node.name
    );
    ensure!(
        group > 0 && dims[0].is_multiple_of(group),
        "node {:?}: expected a group count dividing {} output channels, got {group}",
        node.name,
        dims[0]
    );
    let bias_name = node.input.get(2).filter(|b| !b.is_empty()).cloned();
    let mut conv = Conv2dConfig::new([dims[1] * group, dims[0]], [dims[2], dims[3]])
        .with_stride([stride[0], stride[1]])
        .with_dilation([dilation[0], dilation[1]])
        .with_groups(group)
        .with_padding(PaddingConfig2d::Explicit(
            pads[0], pads[1], pads[2], pads[3],
        ))
        .with_bias(bias_name.is_some())
        .init(device);
    conv.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(floats(w)?, dims.clone()),
        device,
    ));
    if let Some(b) = &bias_name {
        let b = weight(weights, node, b)?;
        conv.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(floats(b)?, [dims[0]]),
            device,
        )));
    }
    Ok((conv, (w_name.to_string(), bias_name)))
}

/// A `Clip` bound: from its input `k` (opset 11 on) or its attribute (before).
fn bound(
    node: &pb::NodeProto,
    weights: &HashMap<String, pb::TensorProto>,
    k: usize,
    name: &str,
) -> Result<Option<f32>> {
    match node.input.get(k).filter(|i| !i.is_empty()) {
        Some(input) => {
            let v = floats(weight(weights, node, input)?)?;
            ensure!(
                v.len() == 1,
                "node {:?}: expected a scalar {name}, got {} values",
                node.name,
                v.len()
            );
            Ok(Some(v[0]))
        }
        None => Ok(attr(node, name).map(|a| a.f)),
    }
}

impl Tail {
    /// The nodes above `split`'s cut, with their weights, on `device`; `shape` is the
    /// cut tensor's `[C, H, W]`.
    pub fn new(split: &Split, shape: [usize; 3], device: &Device) -> Result<Tail> {
        let mut slot: HashMap<&str, usize> = HashMap::from([(split.at.as_str(), 0)]);
        let (mut convs, mut names, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        for (i, node) in split.above.iter().enumerate() {
            let output = node
                .output
                .first()
                .with_context(|| format!("node {:?}: expected an output, got none", node.name))?;
            let input = |k: usize| -> Result<usize> {
                let name = node.input.get(k).map_or("", String::as_str);
                slot.get(name).copied().with_context(|| {
                    format!(
                        "node {:?}: input {name:?} is not computed above the cut",
                        node.name
                    )
                })
            };
            let (op, inputs) = match node.op_type.as_str() {
                "Conv" => {
                    let (c, n) = conv(node, &split.weights, device)?;
                    convs.push(c);
                    names.push(n);
                    (Op::Conv(convs.len() - 1), vec![input(0)?])
                }
                "Clip" => {
                    let (lo, hi) = (
                        bound(node, &split.weights, 1, "min")?,
                        bound(node, &split.weights, 2, "max")?,
                    );
                    (Op::Clip(lo, hi), vec![input(0)?])
                }
                "Relu" => (Op::Relu, vec![input(0)?]),
                "Add" => (Op::Add, vec![input(0)?, input(1)?]),
                "GlobalAveragePool" => (Op::Pool, vec![input(0)?]),
                // The pooled [N, C, 1, 1] is flattened once, at the end.
                "Flatten" if i + 1 == split.above.len() => {
                    let from = input(0)?;
                    slot.insert(output, from);
                    continue;
                }
                other => bail!(
                    "node {:?}: the trainer cannot rebuild {other} above the cut",
                    node.name
                ),
            };
            steps.push(Step { op, inputs });
            slot.insert(output, steps.len());
        }
        ensure!(
            matches!(steps.last(), Some(Step { op: Op::Pool, .. })),
            "expected the layers above the cut to end with GlobalAveragePool"
        );
        Ok(Tail {
            convs,
            names,
            steps,
            shape,
        })
    }

    /// `[N, C, H, W]` activations at the cut -> `[N, features]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut values: Vec<Option<Tensor<4>>> = vec![None; self.steps.len() + 1];
        values[0] = Some(x);
        for (i, step) in self.steps.iter().enumerate() {
            let arg = |k: usize| values[step.inputs[k]].clone().expect("an earlier step");
            let y = match step.op {
                Op::Conv(c) => self.convs[c].forward(arg(0)),
                Op::Clip(lo, hi) => {
                    let mut x = arg(0);
                    if let Some(lo) = lo {
                        x = x.clamp_min(lo);
                    }
                    if let Some(hi) = hi {
                        x = x.clamp_max(hi);
                    }
                    x
                }
                Op::Relu => relu(arg(0)),
                Op::Add => arg(0) + arg(1),
                Op::Pool => arg(0).mean_dim(3).mean_dim(2),
            };
            values[i + 1] = Some(y);
        }
        let pooled = values.pop().flatten().expect("the last step");
        pooled.flatten(1, 3)
    }

    /// The trained weights as the initializers they replace.
    pub fn initializers(&self) -> Vec<pb::TensorProto> {
        let mut out = Vec::new();
        for (conv, (w, b)) in self.convs.iter().zip(&self.names) {
            let (shape, data) = values(conv.weight.val());
            out.push(f32_tensor(w, &shape, &data));
            if let (Some(b), Some(bias)) = (b, &conv.bias) {
                let (shape, data) = values(bias.val());
                out.push(f32_tensor(b, &shape, &data));
            }
        }
        out
    }
}

/// The blocks above the cut and the head: what `--fine-tune` trains.
#[derive(Module, Debug)]
pub struct Tuned {
    pub tail: Tail,
    pub head: Head,
}

impl Tuned {
    pub fn new(tail: Tail, head: &HeadConfig, device: &Device) -> Tuned {
        Tuned {
            tail,
            head: head.init(device),
        }
    }
}

impl OnFeatures for Tuned {
    fn head(&self) -> &Head {
        &self.head
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [c, h, w] = self.tail.shape;
        let n = x.dims()[0];
        self.head
            .forward(self.tail.forward(x.reshape([n, c, h, w])))
    }

    fn backbone(&self) -> Option<&Tail> {
        Some(&self.tail)
    }
}
