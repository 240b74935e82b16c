//! An ONNX file read and summarized: graph inputs and outputs, opsets, op counts and the
//! bundle metadata, before (and independently of) tract turning it into a runnable plan.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use prost::Message;
use tract_onnx::pb::{
    self, tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue,
};

use crate::bundle::BundleMeta;
use crate::error::{model_error, Error, Result};

/// One dimension of a graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
    Unknown,
}

/// A graph input or output.
#[derive(Debug, Clone)]
pub struct Io {
    pub name: String,
    pub elem_type: String,
    pub dims: Vec<Dim>,
}

/// A parsed ONNX model and what glimpse knows about it.
#[derive(Debug, Clone)]
pub struct OnnxFile {
    pub proto: pb::ModelProto,
    pub meta: BundleMeta,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub size_bytes: u64,
}

impl OnnxFile {
    /// Reads and parses the model at `path`; every error names the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::NotOnnx("empty file".into()));
        }
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| Error::NotOnnx(format!("protobuf decoding failed ({e})")))?;
        // Random bytes occasionally decode as a valid but meaningless protobuf message.
        let graph = match &proto.graph {
            Some(g) if proto.ir_version > 0 && !g.node.is_empty() => g,
            _ => return Err(Error::NotOnnx("no IR version or no graph nodes".into())),
        };
        let meta = BundleMeta::from_props(
            proto
                .metadata_props
                .iter()
                .map(|p| (p.key.as_str(), p.value.as_str())),
        )?;
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        // Older exporters list weights among the inputs too; those are not model inputs.
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(io)
            .collect();
        let outputs = graph.output.iter().map(io).collect();
        Ok(OnnxFile {
            meta,
            inputs,
            outputs,
            size_bytes: bytes.len() as u64,
            proto,
        })
    }

    pub fn graph(&self) -> &pb::GraphProto {
        self.proto.graph.as_ref().expect("checked at read")
    }

    /// The nodes that carry the arithmetic: convolutions and matrix products, float or
    /// quantized (top-level graph only).
    pub fn compute_nodes(&self) -> impl Iterator<Item = &pb::NodeProto> {
        const OPS: &[&str] = &[
            "Conv",
            "QLinearConv",
            "ConvInteger",
            "Gemm",
            "MatMul",
            "QLinearMatMul",
            "MatMulInteger",
        ];
        self.graph()
            .node
            .iter()
            .filter(|n| OPS.contains(&n.op_type.as_str()))
    }

    /// How many nodes of each op type the graph holds (top-level graph only).
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.graph().node {
            let name = if node.domain.is_empty() || node.domain == "ai.onnx" {
                node.op_type.clone()
            } else {
                format!("{}.{}", node.domain, node.op_type)
            };
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    /// Frees the weight data of the main graph's initializers, keeping their names, types
    /// and shapes (so [`Self::parameter_count`] and the summaries still work). For a
    /// model already turned into a plan: the plan has its own copy, and keeping both
    /// doubled the runtime's memory.
    pub fn release_weights(&mut self) {
        if let Some(graph) = self.proto.graph.as_mut() {
            for t in &mut graph.initializer {
                *t = pb::TensorProto {
                    name: std::mem::take(&mut t.name),
                    dims: std::mem::take(&mut t.dims),
                    data_type: t.data_type,
                    ..Default::default()
                };
            }
        }
    }

    /// Number of weight values stored in the file.
    pub fn parameter_count(&self) -> u64 {
        self.graph()
            .initializer
            .iter()
            .map(|t| t.dims.iter().map(|d| (*d).max(0) as u64).product::<u64>())
            .sum()
    }

    /// Structural checks tract assumes rather than checks (it panics where they fail):
    /// every graph output, in the main graph and in subgraphs, is produced by a node, an
    /// input or an initializer.
    pub fn check_graph(&self) -> Result<()> {
        fn check(graph: &pb::GraphProto, outer: &std::collections::HashSet<&str>) -> Result<()> {
            let mut known = outer.clone();
            known.extend(graph.input.iter().map(|i| i.name.as_str()));
            known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
            known.extend(
                graph
                    .node
                    .iter()
                    .flat_map(|n| n.output.iter().map(String::as_str)),
            );
            for out in &graph.output {
                if !known.contains(out.name.as_str()) {
                    return Err(model_error!(
                        "invalid ONNX graph: output {:?} of graph {:?} is not produced by any node, input or initializer",
                        out.name,
                        graph.name
                    ));
                }
            }
            for node in &graph.node {
                for attr in &node.attribute {
                    for sub in attr.g.iter().chain(&attr.graphs) {
                        check(sub, &known)?;
                    }
                }
            }
            Ok(())
        }
        check(self.graph(), &Default::default())
    }

    /// The quantization parameters of `QuantizeLinear`, `DequantizeLinear`, `QLinearConv`
    /// and `QLinearMatMul` nodes: positive finite scales, zero points in their type's
    /// range, per-channel lengths that match (an error names the node and parameter).
    pub fn check_quantization(&self) -> Result<()> {
        crate::quant_check::check(self.graph())
    }

    /// The first float initializer holding NaN or infinite values, with how many: such
    /// weights (a diverged training run, a broken conversion) make every output NaN.
    pub fn non_finite_weights(&self) -> Option<(&str, usize)> {
        use pb::tensor_proto::DataType;
        self.graph().initializer.iter().find_map(|t| {
            let bad = match DataType::try_from(t.data_type) {
                Ok(DataType::Float) if !t.raw_data.is_empty() => t
                    .raw_data
                    .chunks_exact(4)
                    .filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
                    .count(),
                Ok(DataType::Float) => t.float_data.iter().filter(|v| !v.is_finite()).count(),
                Ok(DataType::Double) if !t.raw_data.is_empty() => t
                    .raw_data
                    .chunks_exact(8)
                    .filter(|c| !f64::from_le_bytes((*c).try_into().unwrap_or([0; 8])).is_finite())
                    .count(),
                Ok(DataType::Double) => t.double_data.iter().filter(|v| !v.is_finite()).count(),
                _ => 0,
            };
            (bad > 0).then_some((t.name.as_str(), bad))
        })
    }

    /// Opsets as `(domain, version)`, `ai.onnx` for the default domain.
    pub fn opsets(&self) -> Vec<(String, i64)> {
        self.proto
            .opset_import
            .iter()
            .map(|o| {
                (
                    if o.domain.is_empty() {
                        "ai.onnx".to_string()
                    } else {
                        o.domain.clone()
                    },
                    o.version,
                )
            })
            .collect()
    }
}

fn io(v: &pb::ValueInfoProto) -> Io {
    let (elem_type, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            let elem = pb::tensor_proto::DataType::try_from(t.elem_type)
                .map(|d| format!("{d:?}").to_lowercase())
                .unwrap_or_else(|_| format!("type {}", t.elem_type));
            let dims = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) => Dim::Fixed(*n),
                            Some(DimValue::DimParam(p)) if !p.is_empty() => Dim::Named(p.clone()),
                            _ => Dim::Unknown,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (elem, dims)
        }
        None => ("unknown".to_string(), vec![]),
    };
    Io {
        name: v.name.clone(),
        elem_type,
        dims,
    }
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(f, "{}: {} [{}]", self.name, self.elem_type, dims.join(", "))
    }
}
