//! Calibration: run the float model on real images and record, for every tensor that will
//! be quantized or feeds a quantized layer, its per-channel means (for bias correction) and
//! its range, by min/max or by percentile (robust to rare outliers, which
//! would otherwise stretch the range and waste the 256 levels on values that never occur).

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use fast_image_resize::Resizer;
use glimpse_runtime::{Plan, Preprocess};
use image::RgbImage;
use rayon::prelude::*;
use tract_onnx::pb::{self, tensor_proto::DataType, type_proto};

/// How an activation range is taken from the calibration values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Method {
    MinMax,
    /// Keep values between the `100 - p` and `p` percentiles.
    Percentile(f64),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::MinMax => write!(f, "min/max"),
            Method::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// Values sampled per tensor per image for percentiles (a strided, deterministic sample).
const SAMPLES_PER_IMAGE: usize = 4096;

/// An output declaration of unknown shape, so any intermediate tensor can be read.
fn any_float(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Stats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
    /// Sum over batch and space of each channel (axis 1), and the count per channel.
    channel_sums: Vec<f64>,
    per_channel: usize,
}

/// What calibration measured of each tensor.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// `[lo, hi]` by the calibration method.
    pub ranges: HashMap<String, (f32, f32)>,
    /// Mean of each channel (axis 1: NCHW channels, or the features of `[N, D]`).
    pub means: HashMap<String, Vec<f32>>,
}

/// Observes each of `tensors` over `images`: its range and its per-channel means.
pub fn observe(
    float: &pb::ModelProto,
    pp: &Preprocess,
    images: &[&RgbImage],
    tensors: &[String],
    method: Method,
) -> Result<Observations> {
    ensure!(!images.is_empty(), "no calibration images");
    let mut proto = float.clone();
    let graph = proto.graph.as_mut().context("model has no graph")?;
    graph.output = tensors.iter().map(|t| any_float(t)).collect();
    // The classifier's own plan (optimizations and all), with more outputs.
    let plan = Plan::new(&proto, pp.shape(1)).context("preparing the calibration graph")?;
    let bar = crate::progress::bar(images.len() as u64, "calibrating");
    let per_image: Vec<Vec<Stats>> = images
        .par_iter()
        .map_init(Resizer::new, |resizer, img| -> Result<Vec<Stats>> {
            let out = plan.run(pp.to_tensor(&[img], resizer))?;
            bar.inc(1);
            out.iter()
                .map(|t| {
                    let view = t.to_plain_array_view::<f32>()?;
                    let values: Vec<f32> = view.iter().copied().filter(|v| v.is_finite()).collect();
                    let step = (values.len() / SAMPLES_PER_IMAGE).max(1);
                    let shape = view.shape();
                    let channels = shape.get(1).copied().unwrap_or(1).max(1);
                    let inner: usize = shape.iter().skip(2).product();
                    let mut channel_sums = vec![0f64; channels];
                    for (i, v) in view.iter().enumerate() {
                        channel_sums[(i / inner.max(1)) % channels] += *v as f64;
                    }
                    Ok(Stats {
                        channel_sums,
                        per_channel: view.len() / channels,
                        min: values.iter().copied().fold(f32::INFINITY, f32::min),
                        max: values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                        samples: match method {
                            Method::MinMax => Vec::new(),
                            Method::Percentile(_) => values.iter().step_by(step).copied().collect(),
                        },
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();

    let mut out = Observations::default();
    for (i, name) in tensors.iter().enumerate() {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut samples = Vec::new();
        let mut sums = vec![0f64; per_image[0][i].channel_sums.len()];
        let mut count = 0usize;
        for img in &per_image {
            lo = lo.min(img[i].min);
            hi = hi.max(img[i].max);
            samples.extend_from_slice(&img[i].samples);
            for (s, v) in sums.iter_mut().zip(&img[i].channel_sums) {
                *s += v;
            }
            count += img[i].per_channel;
        }
        out.means.insert(
            name.clone(),
            sums.iter()
                .map(|s| (s / count.max(1) as f64) as f32)
                .collect(),
        );
        ensure!(
            lo.is_finite() && hi.is_finite(),
            "calibration: tensor {name:?} has no finite values"
        );
        if let Method::Percentile(p) = method {
            if !samples.is_empty() {
                let last = samples.len() - 1;
                let mut at = |q: f64| {
                    let k = ((q / 100.0) * last as f64).round() as usize;
                    *samples
                        .select_nth_unstable_by(k.min(last), f32::total_cmp)
                        .1
                };
                (lo, hi) = (at(100.0 - p), at(p));
            }
        }
        out.ranges.insert(name.clone(), (lo, hi));
    }
    Ok(out)
}
