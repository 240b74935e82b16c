//! Checks of the quantization parameters an ONNX graph gives its quantized ops, before
//! tract sees them: a scale of 0, NaN or below 0, a zero point outside its type's range,
//! or per-channel parameters of the wrong length make tract compute garbage or fail deep
//! inside; here they are refused with the node and the parameter named.

use std::collections::HashMap;

use tract_onnx::pb::{self, tensor_proto::DataType};

use crate::error::{model_error, Result};

/// Ends the check with `Error::Model`.
macro_rules! bail {
    ($($arg:tt)*) => { return Err(model_error!($($arg)*)) };
}

/// Ends the check with `Error::Model` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*) } };
}

/// One quantization parameter set of a node: which inputs hold the scale and the zero point,
/// and which input they quantize (for per-channel lengths).
struct Params {
    scale: usize,
    zero_point: usize,
    quantized: usize,
    /// The axis per-channel parameters run along (0 for QLinearConv's weights).
    axis: Option<i64>,
}

/// The parameter sets of `node`'s op (empty for ops that are not quantized).
fn params_of(node: &pb::NodeProto) -> Vec<Params> {
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let p = |scale, zero_point, quantized, axis| Params {
        scale,
        zero_point,
        quantized,
        axis,
    };
    match node.op_type.as_str() {
        // x, y_scale, y_zero_point; x, x_scale, x_zero_point.
        "QuantizeLinear" => vec![p(1, 2, 0, Some(axis))],
        "DequantizeLinear" => vec![p(1, 2, 0, Some(axis))],
        // x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, [bias].
        "QLinearConv" => vec![p(1, 2, 0, None), p(4, 5, 3, Some(0)), p(6, 7, 7, None)],
        // a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp.
        "QLinearMatMul" => vec![p(1, 2, 0, None), p(4, 5, 3, None), p(6, 7, 7, None)],
        _ => Vec::new(),
    }
}

/// The values of an initializer as f64, for the types a scale or zero point can have.
fn values(t: &pb::TensorProto) -> Option<(DataType, Vec<f64>)> {
    let dt = DataType::try_from(t.data_type).ok()?;
    let raw = &t.raw_data;
    let v: Vec<f64> = match dt {
        DataType::Float if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DataType::Float => t.float_data.iter().map(|&v| v as f64).collect(),
        DataType::Uint8 if !raw.is_empty() => raw.iter().map(|&b| b as f64).collect(),
        DataType::Int8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as f64).collect(),
        DataType::Int32 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        // ONNX keeps 8-bit values in int32_data when raw_data is not used.
        DataType::Uint8 | DataType::Int8 | DataType::Int32 => {
            t.int32_data.iter().map(|&v| v as f64).collect()
        }
        _ => return None,
    };
    Some((dt, v))
}

/// The range of a zero point of type `dt`.
fn zero_point_range(dt: DataType) -> Option<(f64, f64)> {
    match dt {
        DataType::Uint8 => Some((0.0, 255.0)),
        DataType::Int8 => Some((-128.0, 127.0)),
        DataType::Int32 => Some((i32::MIN as f64, i32::MAX as f64)),
        _ => None,
    }
}

/// Checks every quantized node of `graph` whose parameters are initializers.
pub fn check(graph: &pb::GraphProto) -> Result<()> {
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in &graph.node {
        for p in params_of(node) {
            check_params(node, &p, &inits)?;
        }
    }
    Ok(())
}

fn check_params(
    node: &pb::NodeProto,
    p: &Params,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> Result<()> {
    let what = |slot: usize| node.input.get(slot).map_or("", String::as_str);
    let init = |slot: usize| inits.get(what(slot)).copied();
    let at = format!("{} node {:?}", node.op_type, node.name);
    let Some((_, scales)) = init(p.scale).and_then(values) else {
        return Ok(());
    };
    if let Some((i, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        bail!(
            "invalid quantization in {at}: scale {:?}[{i}] is {s}, expected a positive finite number",
            what(p.scale)
        );
    }
    ensure!(
        p.axis.is_some() || scales.len() == 1,
        "invalid quantization in {at}: {} values in scale {:?}, expected one",
        scales.len(),
        what(p.scale)
    );
    if let Some((dt, zps)) = init(p.zero_point).and_then(values) {
        if let Some((lo, hi)) = zero_point_range(dt) {
            if let Some((i, z)) = zps
                .iter()
                .enumerate()
                .find(|(_, z)| !(lo..=hi).contains(*z))
            {
                bail!(
                    "invalid quantization in {at}: zero point {:?}[{i}] is {z}, outside the {dt:?} range {lo}..={hi}",
                    what(p.zero_point)
                );
            }
        }
        ensure!(
            zps.len() == scales.len(),
            "invalid quantization in {at}: {} scales in {:?} but {} zero points in {:?}",
            scales.len(),
            what(p.scale),
            zps.len(),
            what(p.zero_point)
        );
    }
    // Per-channel parameters: one per position along the axis of the tensor they quantize.
    if let (Some(axis), Some(q)) = (p.axis, init(p.quantized)) {
        let rank = q.dims.len() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        if scales.len() > 1 {
            let channels = usize::try_from(axis)
                .ok()
                .and_then(|a| q.dims.get(a))
                .copied()
                .unwrap_or(-1);
            ensure!(
                channels == scales.len() as i64,
                "invalid quantization in {at}: {} per-channel scales in {:?} for {} channels on axis {axis} of {:?} (shape {:?})",
                scales.len(),
                what(p.scale),
                channels,
                what(p.quantized),
                q.dims
            );
        }
    }
    Ok(())
}
