//! The graph rewrites, on the ONNX protobuf itself so that the result is standard ONNX any
//! runtime loads:
//!
//! - weight-only: every `Conv` / `Gemm` / `MatMul` weight becomes an int8 initializer with
//!   a `DequantizeLinear` in front (4x smaller file, float compute);
//! - static: every `Conv` (with the `Relu` or `Clip(0, ·)` after it folded in, the range
//!   saturation doing the clamp) becomes a `QLinearConv` on uint8 activations and int8
//!   weights with an int32 bias; `QuantizeLinear` / `DequantizeLinear` appear only where a
//!   tensor passes between integer and float ops (the input, residual adds, pooling, the
//!   final `Gemm`, whose weights are stored int8 as in weight-only).

use std::collections::{HashMap, HashSet};

use anyhow::{ensure, Context, Result};
use tract_onnx::pb;

use super::weights::{activation_params, quantize_symmetric};
use crate::onnx::{attr_int, f32_tensor, floats, i32_tensor, i8_tensor, u8_tensor};

fn initializer<'a>(graph: &'a pb::GraphProto, name: &str) -> Option<&'a pb::TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

fn dims(t: &pb::TensorProto) -> Vec<usize> {
    t.dims.iter().map(|d| *d as usize).collect()
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

/// Drops initializers no node uses any more.
fn prune(graph: &mut pb::GraphProto) {
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph.initializer.retain(|t| used.contains(&t.name));
}

/// Int8 weights, scale and zero point initializers for `w`, quantized along `axis`;
/// returns their names.
fn int8_weights(
    out: &mut Vec<pb::TensorProto>,
    name: &str,
    w: &pb::TensorProto,
    axis: Option<usize>,
) -> Result<(String, String, String, Vec<f32>)> {
    let shape = dims(w);
    let q = quantize_symmetric(&floats(w)?, &shape, axis);
    let (qn, sn, zn) = (
        format!("{name}.int8"),
        format!("{name}.scale"),
        format!("{name}.zero_point"),
    );
    out.push(i8_tensor(&qn, &shape, &q.q));
    let param_dims: &[usize] = if axis.is_some() {
        &[q.scales.len()]
    } else {
        &[]
    };
    out.push(f32_tensor(&sn, param_dims, &q.scales));
    out.push(i8_tensor(&zn, param_dims, &vec![0; q.scales.len()]));
    Ok((qn, sn, zn, q.scales))
}

/// Which weight input of `n` to quantize, and along which axis its output channels lie.
fn weight_of(n: &pb::NodeProto) -> Option<(usize, usize)> {
    let trans_b = n.attribute.iter().any(|a| a.name == "transB" && a.i == 1);
    match n.op_type.as_str() {
        "Conv" => Some((1, 0)),
        "Gemm" => Some((1, if trans_b { 0 } else { 1 })),
        "MatMul" => Some((1, 1)),
        _ => None,
    }
}

/// Weight-only int8 for the nodes whose op is in `ops`.
pub fn weight_only(
    graph: &pb::GraphProto,
    ops: &[&str],
    per_channel: bool,
) -> Result<pb::GraphProto> {
    let mut g = graph.clone();
    let mut dq_nodes = Vec::new();
    let mut new_inits = Vec::new();
    let mut done = HashSet::new();
    for n in &graph.node {
        // The rejection's score stays float (see `crate::reject::NODE_PREFIX`).
        if !ops.contains(&n.op_type.as_str()) || n.name.starts_with(crate::reject::NODE_PREFIX) {
            continue;
        }
        let Some((slot, axis)) = weight_of(n) else {
            continue;
        };

        let Some(w_name) = n.input.get(slot) else {
            continue;
        };
        let Some(w) = initializer(graph, w_name) else {
            continue;
        };
        if w.data_type != pb::tensor_proto::DataType::Float as i32
            || dims(w).len() < 2
            || !done.insert(w_name.clone())
        {
            continue;
        }
        let axis = per_channel.then_some(axis);
        let (qn, sn, zn, _) = int8_weights(&mut new_inits, w_name, w, axis)?;
        // The dequantized tensor takes the float weight's name: the node is unchanged.
        dq_nodes.push(node(
            "DequantizeLinear",
            &format!("{w_name}.dequantize"),
            &[&qn, &sn, &zn],
            w_name,
            axis.map(|a| vec![attr_int("axis", a as i64)])
                .unwrap_or_default(),
        ));
    }
    g.initializer.retain(|t| !done.contains(&t.name));
    g.initializer.extend(new_inits);
    dq_nodes.extend(g.node);
    g.node = dq_nodes;
    prune(&mut g);
    Ok(g)
}

/// The inputs whose per-channel means bias correction needs: the data input of every
/// `Conv` and `Gemm` with constant weights and bias.
pub fn bias_correction_inputs(graph: &pb::GraphProto) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in &graph.node {
        let constant = |slot: usize| {
            n.input
                .get(slot)
                .is_some_and(|w| initializer(graph, w).is_some())
        };
        if matches!(n.op_type.as_str(), "Conv" | "Gemm")
            && constant(1)
            && constant(2)
            && !out.contains(&n.input[0])
        {
            out.push(n.input[0].clone());
        }
    }
    out
}

/// Bias correction (Nagel et al., "Data-Free Quantization", 2019): rounding the weights
/// shifts each output channel's mean by `ΔW · E[x]`; subtracting that from the float bias
/// cancels the shift, which matters most in depthwise layers whose few weights per channel
/// see large, mostly positive (post-ReLU) inputs. `means` holds `E[x]` per input channel.
pub fn bias_correct(
    graph: &pb::GraphProto,
    means: &HashMap<String, Vec<f32>>,
    per_channel: bool,
) -> Result<pb::GraphProto> {
    let mut g = graph.clone();
    let mut bias_users: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        if let Some(b) = n.input.get(2) {
            *bias_users.entry(b.as_str()).or_default() += 1;
        }
    }
    for n in &graph.node {
        let (Some((_, axis)), Some(mu)) = (weight_of(n), means.get(&n.input[0])) else {
            continue;
        };
        if !matches!(n.op_type.as_str(), "Conv" | "Gemm")
            || n.attribute
                .iter()
                .any(|a| (a.name == "alpha" || a.name == "beta") && a.f != 1.0)
        {
            continue;
        }
        let (Some(w), Some(b_name)) = (initializer(graph, &n.input[1]), n.input.get(2)) else {
            continue;
        };
        if bias_users.get(b_name.as_str()) != Some(&1) {
            continue;
        }
        let Some(b_pos) = g.initializer.iter().position(|t| &t.name == b_name) else {
            continue;
        };
        let shape = dims(w);
        let wf = floats(w)?;
        let q = quantize_symmetric(&wf, &shape, per_channel.then_some(axis));
        let scale = |c: usize| q.scales[if q.scales.len() == 1 { 0 } else { c }];
        let mut bias = floats(&g.initializer[b_pos])?;
        match n.op_type.as_str() {
            "Conv" => {
                // W: [O, I/g, kh, kw]; output o reads input channels of its group.
                let (o_n, i_g) = (shape[0], shape[1]);
                let k: usize = shape[2..].iter().product();
                let group = n
                    .attribute
                    .iter()
                    .find(|a| a.name == "group")
                    .map_or(1, |a| a.i.max(1) as usize);
                ensure!(
                    mu.len() == i_g * group && bias.len() == o_n,
                    "conv {:?}: expected {} input channels and {} biases",
                    n.name,
                    i_g * group,
                    o_n
                );
                let per_group = o_n / group;
                for (o, b) in bias.iter_mut().enumerate() {
                    let base = (o / per_group) * i_g;
                    let mut shift = 0f64;
                    for i in 0..i_g {
                        for j in 0..k {
                            let at = (o * i_g + i) * k + j;
                            let dw = q.q[at] as f32 * scale(o) - wf[at];
                            shift += (dw * mu[base + i]) as f64;
                        }
                    }
                    *b -= shift as f32;
                }
            }
            _ => {
                // Gemm: W is [out, in] (transB = 1, axis 0) or [in, out] (axis 1).
                let (d_out, d_in) = if axis == 0 {
                    (shape[0], shape[1])
                } else {
                    (shape[1], shape[0])
                };
                ensure!(
                    mu.len() == d_in && bias.len() == d_out,
                    "gemm {:?}: expected {d_in} inputs and {d_out} biases",
                    n.name
                );
                for (o, b) in bias.iter_mut().enumerate() {
                    let mut shift = 0f64;
                    for (i, m) in mu.iter().enumerate() {
                        let at = if axis == 0 {
                            o * d_in + i
                        } else {
                            i * d_out + o
                        };
                        let dw = q.q[at] as f32 * scale(o) - wf[at];
                        shift += (dw * m) as f64;
                    }
                    *b -= shift as f32;
                }
            }
        }
        let dims_b = dims(&g.initializer[b_pos]);
        g.initializer[b_pos] = f32_tensor(b_name, &dims_b, &bias);
    }
    Ok(g)
}

/// One convolution of the static plan.
#[derive(Debug, Clone)]
struct ConvPlan {
    /// Index of the `Conv` node.
    conv: usize,
    /// Index of the activation folded into it.
    activation: Option<usize>,
    /// Its float input and its (post-activation) float output.
    x: String,
    y: String,
    /// Upper clamp of a folded `Clip`.
    clip_max: Option<f32>,
}

/// The convolutions a static rewrite turns into `QLinearConv`, and the tensors whose ranges
/// calibration must measure.
#[derive(Debug, Clone)]
pub struct StaticPlan {
    convs: Vec<ConvPlan>,
    pub tensors: Vec<String>,
}

fn scalar(graph: &pb::GraphProto, name: Option<&String>) -> Option<f32> {
    let t = initializer(graph, name?)?;
    floats(t).ok()?.first().copied()
}

/// Whether `n` is a grouped convolution (depthwise: one group per channel), by its
/// `group` attribute.
fn grouped(n: &pb::NodeProto) -> bool {
    n.attribute.iter().any(|a| a.name == "group" && a.i > 1)
}

/// The plan for every plain `Conv` with constant weights; grouped (depthwise) ones only
/// when `depthwise`.
pub fn static_plan(graph: &pb::GraphProto, depthwise: bool) -> StaticPlan {
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut convs = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        let weight_const = n
            .input
            .get(1)
            .is_some_and(|w| initializer(graph, w).is_some());
        let plain = n
            .attribute
            .iter()
            .all(|a| a.name != "auto_pad" || a.s.is_empty() || a.s == b"NOTSET");
        if n.op_type != "Conv"
            || !weight_const
            || !plain
            || n.input[0].is_empty()
            || (!depthwise && grouped(n))
        {
            continue;
        }
        let y = &n.output[0];
        let mut plan = ConvPlan {
            conv: i,
            activation: None,
            x: n.input[0].clone(),
            y: y.clone(),
            clip_max: None,
        };
        if let [only] = consumers.get(y.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
            let act = &graph.node[*only];
            let fold = !outputs.contains(y.as_str())
                && match act.op_type.as_str() {
                    "Relu" => true,
                    "Clip" => {
                        let min = scalar(graph, act.input.get(1)).unwrap_or(f32::NEG_INFINITY);
                        if min == 0.0 {
                            plan.clip_max = scalar(graph, act.input.get(2));
                            true
                        } else {
                            false
                        }
                    }
                    _ => false,
                };
            if fold {
                plan.activation = Some(*only);
                plan.y = act.output[0].clone();
            }
        }
        convs.push(plan);
    }
    let mut tensors: Vec<String> = Vec::new();
    for c in &convs {
        for t in [&c.x, &c.y] {
            if !tensors.contains(t) {
                tensors.push(t.clone());
            }
        }
    }
    StaticPlan { convs, tensors }
}

/// The static int8 graph; `ranges` holds the calibrated range of every `plan.tensors`.
pub fn static_int8(
    graph: &pb::GraphProto,
    plan: &StaticPlan,
    ranges: &HashMap<String, (f32, f32)>,
    per_channel: bool,
) -> Result<pb::GraphProto> {
    let by_conv: HashMap<usize, &ConvPlan> = plan.convs.iter().map(|c| (c.conv, c)).collect();
    let folded: HashSet<usize> = plan.convs.iter().filter_map(|c| c.activation).collect();
    let mut rw = StaticRewrite {
        graph,
        plan,
        ranges,
        folded: &folded,
        params: HashMap::new(),
        quantized: HashMap::new(),
        inits: Vec::new(),
        nodes: Vec::new(),
    };
    for (i, n) in graph.node.iter().enumerate() {
        match by_conv.get(&i) {
            _ if folded.contains(&i) => {}
            Some(c) => rw.conv(n, c, per_channel)?,
            None => rw.nodes.push(n.clone()),
        }
    }
    let mut g = graph.clone();
    g.node = rw.nodes;
    g.initializer.extend(rw.inits);
    prune(&mut g);
    ensure!(!g.node.is_empty(), "the rewritten graph is empty");
    Ok(g)
}

/// The state of one static rewrite: the quantization parameters made so far, the tensors
/// already in uint8, and the nodes and initializers of the new graph.
struct StaticRewrite<'a> {
    graph: &'a pb::GraphProto,
    plan: &'a StaticPlan,
    ranges: &'a HashMap<String, (f32, f32)>,
    /// Activations folded into the QLinearConv before them.
    folded: &'a HashSet<usize>,
    /// Per tensor: the names of its scale and zero point, and the scale.
    params: HashMap<String, (String, String, f32)>,
    /// Float tensor -> its uint8 version.
    quantized: HashMap<String, String>,
    inits: Vec<pb::TensorProto>,
    nodes: Vec<pb::NodeProto>,
}

impl StaticRewrite<'_> {
    /// Scale and zero point of tensor `t` from its calibrated range (clipped at `clip`).
    fn qparams(&mut self, t: &str, clip: Option<f32>) -> Result<(String, String, f32)> {
        if let Some(p) = self.params.get(t) {
            return Ok(p.clone());
        }
        let &(lo, mut hi) = self
            .ranges
            .get(t)
            .with_context(|| format!("no calibrated range for tensor {t:?}"))?;
        if let Some(c) = clip {
            hi = hi.min(c);
        }
        let (scale, zp) = activation_params(lo, hi);
        let names = (format!("{t}.q_scale"), format!("{t}.q_zero_point"), scale);
        self.inits.push(f32_tensor(&names.0, &[], &[scale]));
        self.inits.push(u8_tensor(&names.1, &[], &[zp]));
        self.params.insert(t.to_string(), names.clone());
        Ok(names)
    }

    /// The uint8 version of `t`: from the QLinearConv that produced it, or quantized here.
    fn uint8(&mut self, t: &str, scale: &str, zero_point: &str) -> String {
        if let Some(q) = self.quantized.get(t) {
            return q.clone();
        }
        let q = format!("{t}.uint8");
        self.nodes.push(node(
            "QuantizeLinear",
            &format!("{t}.quantize"),
            &[t, scale, zero_point],
            &q,
            vec![],
        ));
        self.quantized.insert(t.to_string(), q.clone());
        q
    }

    /// Whether a reader other than a QLinearConv (or a graph output) needs `t` in float.
    fn needs_float(&self, t: &str) -> bool {
        let int_reader = |i: usize| self.plan.convs.iter().any(|c| c.conv == i && c.x == t);
        self.graph.output.iter().any(|o| o.name == t)
            || self.graph.node.iter().enumerate().any(|(i, n)| {
                !self.folded.contains(&i) && n.input.iter().any(|inp| inp == t) && !int_reader(i)
            })
    }

    /// Conv node `n` (planned as `c`) as a QLinearConv, dequantized where float readers
    /// need its output.
    fn conv(&mut self, n: &pb::NodeProto, c: &ConvPlan, per_channel: bool) -> Result<()> {
        let (xs, xz, x_scale) = self.qparams(&c.x, None)?;
        let xq = self.uint8(&c.x, &xs, &xz);
        let (ys, yz, _) = self.qparams(&c.y, c.clip_max)?;
        let w = initializer(self.graph, &n.input[1]).expect("planned convs have constant weights");
        let (wq, wsn, wz, wscales) =
            int8_weights(&mut self.inits, &n.input[1], w, per_channel.then_some(0))?;
        let mut inputs = vec![xq, xs, xz, wq, wsn, wz, ys.clone(), yz.clone()];
        if let Some(b_name) = n.input.get(2).filter(|b| !b.is_empty()) {
            inputs.push(self.int32_bias(b_name, x_scale, &wscales)?);
        }
        let yq = format!("{}.uint8", c.y);
        self.nodes.push(pb::NodeProto {
            op_type: "QLinearConv".into(),
            name: format!("{}.qlinear", n.name),
            input: inputs,
            output: vec![yq.clone()],
            attribute: n.attribute.clone(),
            ..Default::default()
        });
        self.quantized.insert(c.y.clone(), yq.clone());
        if self.needs_float(&c.y) {
            self.nodes.push(node(
                "DequantizeLinear",
                &format!("{}.dequantize", c.y),
                &[&yq, &ys, &yz],
                &c.y,
                vec![],
            ));
        }
        Ok(())
    }

    /// The bias as int32 at the scale of input x weights (per output channel).
    fn int32_bias(&mut self, name: &str, x_scale: f32, wscales: &[f32]) -> Result<String> {
        let b = floats(
            initializer(self.graph, name)
                .with_context(|| format!("conv bias {name:?} is not a constant"))?,
        )?;
        let bq: Vec<i32> = b
            .iter()
            .enumerate()
            .map(|(o, v)| {
                let s = x_scale * wscales[if wscales.len() == 1 { 0 } else { o }];
                (v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32
            })
            .collect();
        let bn = format!("{name}.int32");
        self.inits.push(i32_tensor(&bn, &[bq.len()], &bq));
        Ok(bn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{ConvOpts, GraphBuilder, Weights};

    /// x -> 1x1 conv (8 -> 8) -> ReLU6 -> 3x3 depthwise conv -> ReLU6 -> 1x1 conv (8 -> 4).
    fn mobile_block() -> pb::GraphProto {
        let mut b = GraphBuilder::continuing(&pb::GraphProto::default());
        let w =
            |o: usize, i: usize, k: usize| Weights::new(vec![o, i, k, k], vec![0.1; o * i * k * k]);
        let plain = ConvOpts {
            stride: 1,
            pads: [0; 4],
            group: 1,
        };
        let expand = b.conv("expand", "x", &w(8, 8, 1), &[0.0; 8], plain);
        let a = b.relu6("expand.relu6", &expand);
        let dw = b.conv(
            "dw",
            &a,
            &w(8, 1, 3),
            &[0.0; 8],
            ConvOpts {
                pads: [1; 4],
                group: 8,
                ..plain
            },
        );
        let a = b.relu6("dw.relu6", &dw);
        b.conv("project", &a, &w(4, 8, 1), &[0.0; 4], plain);
        let (node, initializer) = b.into_parts();
        pb::GraphProto {
            node,
            initializer,
            ..Default::default()
        }
    }

    fn planned(graph: &pb::GraphProto, plan: &StaticPlan) -> Vec<String> {
        plan.convs
            .iter()
            .map(|c| graph.node[c.conv].name.clone())
            .collect()
    }

    #[test]
    fn mixed_plan_leaves_depthwise_convs_float() {
        let g = mobile_block();
        assert_eq!(
            planned(&g, &static_plan(&g, true)),
            ["expand", "dw", "project"]
        );
        let mixed = static_plan(&g, false);
        assert_eq!(planned(&g, &mixed), ["expand", "project"]);
        // The float depthwise conv reads the expand conv's (ReLU6-folded) output as float
        // and the project conv quantizes the depthwise output again.
        let ranges: HashMap<String, (f32, f32)> = mixed
            .tensors
            .iter()
            .map(|t| (t.clone(), (0.0, 6.0)))
            .collect();
        let q = static_int8(&g, &mixed, &ranges, true).unwrap();
        let ops: Vec<&str> = q.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "QuantizeLinear",
                "QLinearConv",
                "DequantizeLinear",
                "Conv",
                "Clip",
                "QuantizeLinear",
                "QLinearConv"
            ]
        );
    }
}
