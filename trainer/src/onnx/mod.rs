//! Writing standard ONNX with the protobuf types `tract_onnx::pb` exposes.

mod builder;
mod tensor;

pub use builder::{
    attr, attr_int, attr_ints, same_padding, value_info, ConvOpts, GraphBuilder, Weights,
};
pub use tensor::{f32_tensor, floats, i32_tensor, i64_tensor, i8_tensor, u8_tensor};

use glimpse_runtime::BundleMeta;
use tract_onnx::pb;

/// The ONNX IR version written (IR 8 goes with opset 13..=17 and every runtime since 2021).
pub const IR_VERSION: i64 = 8;
/// The default-domain opset written.
pub const OPSET: i64 = 13;

/// Wraps a finished graph into a model with the bundle metadata and glimpse as producer.
pub fn model(graph: pb::GraphProto, meta: &BundleMeta, doc: &str) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "glimpse-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    }
}
