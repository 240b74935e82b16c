//! The backbone's last blocks for `--fine-tune N`: where to cut its graph so that the
//! blocks above the cut can be rebuilt in burn, and how their trained weights go back.
//!
//! A block ends where activations leave a linear layer or a residual sum: at a tensor that
//! every later node reaches only through it (so the graph below can run once, cached),
//! produced by an `Add` or by a `Conv` that no activation follows. EfficientNet-Lite0 has
//! 16 such blocks under its pooling: the final 1×1 conv to 1280 channels, then MBConv
//! blocks 15 down to 1 (the stem and block 0 stay frozen).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use tract_onnx::pb;

use super::backbone::Cut;

/// The ops the trainer can rebuild in burn above a cut.
const BUILDABLE: &[&str] = &["Conv", "Clip", "Relu", "Add"];

/// A backbone graph split at a block boundary.
#[derive(Debug, Clone)]
pub struct Split {
    /// The graph split: the backbone up to its pooled features.
    pub whole: Cut,
    /// The nodes below the cut; their graph's single output is `at`.
    pub below: pb::GraphProto,
    /// The cut tensor: what is cached per image.
    pub at: String,
    /// The nodes from the cut up to the pooled features (`GlobalAveragePool`, `Flatten`
    /// last), in order.
    pub above: Vec<pb::NodeProto>,
    /// The initializers the nodes above use, by name.
    pub weights: HashMap<String, pb::TensorProto>,
}

/// The index of the node producing each tensor.
fn producers(graph: &pb::GraphProto) -> HashMap<&str, usize> {
    let mut at = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            at.insert(o.as_str(), i);
        }
    }
    at
}

/// Whether each node's output is a tensor every later node reaches only through it.
fn articulations(graph: &pb::GraphProto) -> Vec<bool> {
    let consts: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in n.input.iter().filter(|x| !consts.contains(x.as_str())) {
            last_use.insert(input, i);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let reach = |name: &str| {
        if graph_outputs.contains(name) {
            usize::MAX
        } else {
            last_use.get(name).copied().unwrap_or(0)
        }
    };
    // The furthest any tensor made before node i is used.
    let mut furthest = graph
        .input
        .iter()
        .map(|x| reach(&x.name))
        .max()
        .unwrap_or(0);
    graph
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let clean = furthest <= i && n.output.len() == 1;
            furthest = furthest.max(n.output.iter().map(|o| reach(o)).max().unwrap_or(0));
            clean
        })
        .collect()
}

/// The node pooling the features: `Flatten(GlobalAveragePool(x))` makes `cut.features`.
fn pooling(graph: &pb::GraphProto, features: &str) -> Result<usize> {
    let producer = producers(graph);
    let op_of = |name: &str| producer.get(name).map(|&i| (i, &graph.node[i]));
    match op_of(features) {
        Some((_, flat)) if flat.op_type == "Flatten" => match op_of(&flat.input[0]) {
            Some((i, pool)) if pool.op_type == "GlobalAveragePool" => Ok(i),
            other => bail!(
                "fine-tuning needs features pooled by GlobalAveragePool, got {}",
                other.map_or("a graph input", |(_, n)| n.op_type.as_str())
            ),
        },
        other => bail!(
            "fine-tuning needs features made by Flatten after GlobalAveragePool, got {}",
            other.map_or("a graph input", |(_, n)| n.op_type.as_str())
        ),
    }
}

/// The block boundaries under the pooling, nearest first: `(tensor, index of its
/// producer)`. Stops at the first op the trainer cannot build.
pub fn boundaries(cut: &Cut) -> Result<Vec<(String, usize)>> {
    let g = &cut.graph;
    let pool = pooling(g, &cut.features)?;
    let clean = articulations(g);
    let mut found = Vec::new();
    for i in (0..pool).rev() {
        let n = &g.node[i];
        let Some(out) = n.output.first() else {
            return Ok(found);
        };
        let activated = g.node.iter().any(|c| {
            (c.op_type == "Clip" || c.op_type == "Relu") && c.input.iter().any(|i| i == out)
        });
        let ends_block = n.op_type == "Add" || (n.op_type == "Conv" && !activated);
        if clean[i] && ends_block && i + 1 < pool {
            found.push((out.clone(), i));
        }
        // A lower cut would put this node above it.
        if !BUILDABLE.contains(&n.op_type.as_str()) {
            return Ok(found);
        }
    }
    Ok(found)
}

/// The names of the initializers `nodes` use.
fn used<'a>(nodes: &'a [pb::NodeProto], consts: &HashSet<&str>) -> HashSet<&'a str> {
    nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .filter(|i| consts.contains(i))
        .collect()
}

/// Splits `cut` under its last `blocks` blocks; `backbone` names it in errors.
pub fn split(cut: &Cut, blocks: usize, backbone: &str) -> Result<Split> {
    let found = boundaries(cut)?;
    ensure!(
        !found.is_empty(),
        "--fine-tune {blocks}: {backbone} has no blocks the trainer can rebuild under its pooling (a block ends at a residual Add or at a Conv no activation follows, above it only Conv, Clip, Relu and Add)"
    );
    ensure!(
        (1..=found.len()).contains(&blocks),
        "--fine-tune {blocks}: {backbone} has {} blocks the trainer can rebuild under its pooling (expected 1 to {})",
        found.len(),
        found.len()
    );
    let (at, producer) = found[blocks - 1].clone();
    let g = &cut.graph;
    let (below, above) = g.node.split_at(producer + 1);
    let consts: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let (used_below, used_above) = (used(below, &consts), used(above, &consts));
    // A weight trained above the cut must not also serve a frozen node below it.
    let trained: HashSet<&str> = above
        .iter()
        .filter(|n| n.op_type == "Conv")
        .flat_map(|n| n.input.iter().skip(1).map(String::as_str))
        .collect();
    if let Some(shared) = trained.iter().find(|w| used_below.contains(*w)) {
        bail!("--fine-tune {blocks}: weight {shared:?} is used both above and below the cut");
    }
    let keep = |names: &HashSet<&str>| -> Vec<pb::TensorProto> {
        g.initializer
            .iter()
            .filter(|t| names.contains(t.name.as_str()))
            .cloned()
            .collect()
    };
    Ok(Split {
        whole: cut.clone(),
        below: pb::GraphProto {
            node: below.to_vec(),
            initializer: keep(&used_below),
            output: vec![untyped(&at)],
            ..g.clone()
        },
        at,
        above: above.to_vec(),
        weights: keep(&used_above)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect(),
    })
}

/// An output declared by name only: tract infers its shape from the input's.
fn untyped(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

/// `cut` with the initializers in `trained` replaced (same names, same shapes).
pub fn with_weights(cut: &Cut, trained: &[pb::TensorProto]) -> Result<Cut> {
    let mut out = cut.clone();
    for t in trained {
        let slot = out
            .graph
            .initializer
            .iter_mut()
            .find(|w| w.name == t.name)
            .with_context(|| format!("trained weight {:?} is not in the backbone", t.name))?;
        ensure!(
            slot.dims == t.dims,
            "trained weight {:?}: expected shape {:?}, got {:?}",
            t.name,
            slot.dims,
            t.dims
        );
        *slot = t.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{floats, ConvOpts, GraphBuilder, Weights};

    fn conv(g: &mut GraphBuilder, name: &str, x: &str, c: usize) -> String {
        let w = Weights::new(vec![c, c, 1, 1], vec![0.5; c * c]);
        let opts = ConvOpts {
            stride: 1,
            pads: [0; 4],
            group: 1,
        };
        g.conv(name, x, &w, &vec![0.0; c], opts)
    }

    /// stem (conv, relu6), an inverted residual block, a plain block, head conv, pool, fc.
    fn backbone(stem_op: &str) -> Cut {
        let mut g = GraphBuilder::default();
        let x = g.node(stem_op, "stem", &["input"], vec![]);
        let x = g.relu6("stem.relu6", &x);
        let e = conv(&mut g, "b0.expand", &x, 4);
        let e = g.relu6("b0.expand.relu6", &e);
        let p = conv(&mut g, "b0.project", &e, 4);
        let r = g.add("b0.residual", &p, &x);
        let e = conv(&mut g, "b1.expand", &r, 4);
        let e = g.relu6("b1.expand.relu6", &e);
        let p = conv(&mut g, "b1.project", &e, 4);
        let h = conv(&mut g, "head.conv", &p, 4);
        let h = g.relu6("head.relu6", &h);
        let f = g.global_pool("head.pool", &h);
        g.linear(
            "fc",
            &f,
            &Weights::new(vec![3, 4], vec![0.1; 12]),
            &[0.0; 3],
        );
        g.name_last_output("logits");
        let input: &[Option<usize>] = &[None, Some(4), Some(2), Some(2)];
        let graph = g.finish("t", ("input", input), ("logits", &[None, Some(3)]));
        super::super::backbone::cut(&graph).unwrap()
    }

    #[test]
    fn blocks_end_after_projections_and_residual_sums() {
        let cut = backbone("Relu");
        let names: Vec<String> = boundaries(&cut).unwrap().into_iter().map(|b| b.0).collect();
        // Nearest first: the head conv's input, the plain block's input; the stem's
        // output ends no block (neither a conv nor a sum makes it).
        assert!(names[0].starts_with("b1.project"), "{names:?}");
        assert!(names[1].starts_with("b0.residual"), "{names:?}");
        assert_eq!(names.len(), 2, "{names:?}");

        let split = split(&cut, 2, "t").unwrap();
        assert_eq!(split.above[0].name, "b1.expand");
        assert_eq!(split.below.node.last().unwrap().name, "b0.residual");
        assert!(split.weights.contains_key("b1.expand.weight"));
        assert!(!split
            .below
            .initializer
            .iter()
            .any(|t| t.name == "head.conv.weight"));
        let err = super::split(&cut, 3, "t").unwrap_err().to_string();
        assert!(err.contains("--fine-tune 3: t has 2 blocks"), "{err}");
        assert!(super::split(&cut, 0, "t").is_err());
    }

    #[test]
    fn an_op_the_trainer_cannot_build_ends_the_blocks() {
        // Below every cut, it changes nothing; above a block end, it hides the ends under
        // it.
        let cut = backbone("MaxPool");
        assert_eq!(boundaries(&cut).unwrap().len(), 2);
        let mut cut2 = cut.clone();
        let at = cut2
            .graph
            .node
            .iter()
            .position(|n| n.name == "b1.expand")
            .unwrap();
        cut2.graph.node[at].op_type = "Gemm".into();
        let names: Vec<String> = boundaries(&cut2)
            .unwrap()
            .into_iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn trained_weights_replace_the_initializers_of_the_same_name() {
        let cut = backbone("Relu");
        let new = crate::onnx::f32_tensor("head.conv.weight", &[4, 4, 1, 1], &[2.0; 16]);
        let out = with_weights(&cut, &[new]).unwrap();
        let t = out
            .graph
            .initializer
            .iter()
            .find(|t| t.name == "head.conv.weight")
            .unwrap();
        assert_eq!(floats(t).unwrap(), vec![2.0; 16]);
        let wrong = crate::onnx::f32_tensor("head.conv.weight", &[4, 4], &[2.0; 16]);
        assert!(with_weights(&cut, &[wrong]).is_err());
        let unknown = crate::onnx::f32_tensor("nope", &[1], &[2.0]);
        assert!(with_weights(&cut, &[unknown]).is_err());
    }
}
