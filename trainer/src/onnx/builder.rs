//! A small ONNX graph builder: named initializers, nodes with generated output names, and
//! the typed graph inputs and outputs.

use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as Dim, type_proto,
};

/// A float tensor: row-major values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Weights {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "weights do not match their shape {shape:?}"
        );
        Weights { shape, data }
    }
}

#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    next_id: usize,
}

pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// A node's attribute `name`, where it has one.
pub fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

impl GraphBuilder {
    /// Continues an existing graph: new nodes run after its nodes, new weights sit next to
    /// its own (used to graft a new classifier head onto a pretrained backbone).
    pub fn continuing(graph: &pb::GraphProto) -> Self {
        GraphBuilder {
            nodes: graph.node.clone(),
            initializers: graph.initializer.clone(),
            next_id: graph.node.len(),
        }
    }

    /// The nodes and initializers built so far, for a graph whose inputs and outputs the
    /// caller declares.
    pub fn into_parts(self) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
        (self.nodes, self.initializers)
    }

    /// Adds a float initializer, stored as little-endian raw data.
    pub fn weights(&mut self, name: &str, w: &Weights) -> String {
        let raw: Vec<u8> = w.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: w.shape.iter().map(|d| *d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds an initializer of any type (`crate::onnx::i64_tensor`, ...); returns its name.
    pub fn initializer(&mut self, t: pb::TensorProto) -> String {
        let name = t.name.clone();
        self.initializers.push(t);
        name
    }

    /// Adds a node and returns the name of its (single) output.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.next_id += 1;
        let output = format!("{name}:{}", self.next_id);
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    /// Renames the last node's output, so a graph output can have a stable name.
    pub fn name_last_output(&mut self, name: &str) -> String {
        let node = self.nodes.last_mut().expect("graph has nodes");
        node.output[0] = name.to_string();
        name.to_string()
    }

    /// Finishes the graph with a float input and output; `None` dims are the symbolic batch.
    pub fn finish(
        self,
        name: &str,
        input: (&str, &[Option<usize>]),
        output: (&str, &[Option<usize>]),
    ) -> pb::GraphProto {
        pb::GraphProto {
            name: name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1)],
            output: vec![value_info(output.0, output.1)],
            ..Default::default()
        }
    }
}

/// A float tensor's type declaration; `None` dims are the symbolic batch.
pub fn value_info(name: &str, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(n) => Dim::DimValue(*n as i64),
                None => Dim::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Stride, padding (`[top, left, bottom, right]`) and group count of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOpts {
    pub stride: usize,
    pub pads: [usize; 4],
    pub group: usize,
}

/// Layer helpers: the handful of ops glimpse's graphs are made of.
impl GraphBuilder {
    /// 2-D convolution with bias.
    pub fn conv(&mut self, name: &str, x: &str, w: &Weights, b: &[f32], opts: ConvOpts) -> String {
        let (k_h, k_w) = (w.shape[2], w.shape[3]);
        let wn = self.weights(&format!("{name}.weight"), w);
        let bn = self.weights(
            &format!("{name}.bias"),
            &Weights::new(vec![b.len()], b.to_vec()),
        );
        self.node(
            "Conv",
            name,
            &[x, &wn, &bn],
            vec![
                attr_ints("kernel_shape", &[k_h as i64, k_w as i64]),
                attr_ints("strides", &[opts.stride as i64, opts.stride as i64]),
                attr_ints("pads", &opts.pads.map(|p| p as i64)),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", opts.group as i64),
            ],
        )
    }

    /// ReLU6 as `Clip(x, 0, 6)` (opset 11+ takes the bounds as inputs).
    pub fn relu6(&mut self, name: &str, x: &str) -> String {
        if !self.initializers.iter().any(|t| t.name == "relu6.min") {
            self.weights("relu6.min", &Weights::new(vec![], vec![0.0]));
            self.weights("relu6.max", &Weights::new(vec![], vec![6.0]));
        }
        self.node("Clip", name, &[x, "relu6.min", "relu6.max"], vec![])
    }

    pub fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node("Add", name, &[a, b], vec![])
    }

    /// Global average pooling and flattening: `[N, C, H, W]` → `[N, C]`.
    pub fn global_pool(&mut self, name: &str, x: &str) -> String {
        let pooled = self.node("GlobalAveragePool", name, &[x], vec![]);
        self.node(
            "Flatten",
            &format!("{name}.flatten"),
            &[&pooled],
            vec![attr_int("axis", 1)],
        )
    }

    /// Fully connected layer `x · wᵀ + b` with `w` shaped `[out, in]` (PyTorch's layout).
    pub fn linear(&mut self, name: &str, x: &str, w: &Weights, b: &[f32]) -> String {
        let wn = self.weights(&format!("{name}.weight"), w);
        let bn = self.weights(
            &format!("{name}.bias"),
            &Weights::new(vec![b.len()], b.to_vec()),
        );
        self.node("Gemm", name, &[x, &wn, &bn], vec![attr_int("transB", 1)])
    }
}

/// TensorFlow "SAME" padding for one spatial axis: output `ceil(n / s)`, the odd pixel of
/// padding (if any) at the end. Returns `(before, after, output size)`.
pub fn same_padding(n: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(n);
    (total / 2, total - total / 2, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // Stride 2 on an even size puts the single padding pixel at the end.
        assert_eq!(same_padding(224, 3, 2), (0, 1, 112));
        assert_eq!(same_padding(56, 5, 2), (1, 2, 28));
        assert_eq!(same_padding(14, 5, 1), (2, 2, 14));
        assert_eq!(same_padding(7, 3, 1), (1, 1, 7));
    }
}
