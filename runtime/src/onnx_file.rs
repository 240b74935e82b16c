//! An ONNX file read and summarized: graph inputs and outputs, opsets, op counts and the
//! bundle metadata, before (and independently of) tract turning it into a runnable plan.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use prost::Message;
use tract_onnx::pb::{
    self, tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue,
};

use crate::bundle::BundleMeta;

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
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            bail!("not an ONNX model: empty file");
        }
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| anyhow::anyhow!("not an ONNX model: protobuf decoding failed ({e})"))?;
        // Random bytes occasionally decode as a valid but meaningless protobuf message.
        let graph = match &proto.graph {
            Some(g) if proto.ir_version > 0 && !g.node.is_empty() => g,
            _ => bail!("not an ONNX model: no IR version or no graph nodes"),
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

    /// Number of weight values stored in the file.
    pub fn parameter_count(&self) -> u64 {
        self.graph()
            .initializer
            .iter()
            .map(|t| t.dims.iter().map(|d| (*d).max(0) as u64).product::<u64>())
            .sum()
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
