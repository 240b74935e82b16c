//! Initializers of any element type glimpse writes (f32, int8, uint8, int32, int64), and reading
//! float initializers back from files other tools wrote.

use anyhow::{bail, Result};
use tract_onnx::pb::{self, tensor_proto::DataType};

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, DataType::Float, raw)
}

pub fn i8_tensor(name: &str, dims: &[usize], data: &[i8]) -> pb::TensorProto {
    tensor(
        name,
        dims,
        DataType::Int8,
        data.iter().map(|v| *v as u8).collect(),
    )
}

pub fn u8_tensor(name: &str, dims: &[usize], data: &[u8]) -> pb::TensorProto {
    tensor(name, dims, DataType::Uint8, data.to_vec())
}

pub fn i32_tensor(name: &str, dims: &[usize], data: &[i32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, DataType::Int32, raw)
}

pub fn i64_tensor(name: &str, dims: &[usize], data: &[i64]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, DataType::Int64, raw)
}

/// The values of a float initializer, from `raw_data` or `float_data`.
pub fn floats(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        bail!(
            "initializer {:?}: expected float data, got data type {}",
            t.name,
            t.data_type
        );
    }
    let n: i64 = t.dims.iter().product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() as i64 != n {
        bail!(
            "initializer {:?}: expected {n} values for shape {:?}, got {}",
            t.name,
            t.dims,
            values.len()
        );
    }
    Ok(values)
}
