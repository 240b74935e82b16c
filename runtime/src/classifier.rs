//! A loaded, optimized classifier: resolves how to preprocess from the bundle metadata and
//! user overrides, checks the model against it, and turns images into ranked labels.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use fast_image_resize::Resizer;
use image::metadata::Orientation;
use image::RgbImage;
use tract_onnx::prelude::*;

use crate::bundle::{default_short_side, BundleMeta, OutputKind};
use crate::crop::Crop;
use crate::decode::{self, Limits};
use crate::error::{model_error, Error, Result};
use crate::onnx_file::{Dim, OnnxFile};
use crate::plan::{Feed, Plan};
use crate::preprocess::{Channels, Layout, Preprocess, Resize};

/// Lets tract split each inference's matrix products over `n` threads (1, the default:
/// single-threaded, which is best when several images are classified in parallel).
/// Process-wide: it applies to every classifier.
pub fn set_inference_threads(n: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    set_default_executor(if n > 1 {
        Executor::multithread(n)
    } else {
        Executor::SingleThread
    });
}

/// The tract release glimpse is built and validated with (pinned in Cargo.toml).
pub const TRACT_VERSION: &str = "0.23.9";

/// Settings given by the user that take precedence over what the model file says (or
/// stand in for it when a third-party model has no glimpse metadata).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub labels: Option<Vec<String>>,
    pub size: Option<(u32, u32)>,
    /// `CenterCrop { short_side: 0 }` means "the default 87.5% crop".
    pub resize: Option<Resize>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub channels: Option<Channels>,
    pub layout: Option<Layout>,
    pub output: Option<OutputKind>,
}

/// One ranked class, as every JSON result shows it (`{"label", "index", "probability"}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked<'a> {
    /// Borrowed from the classifier's labels, or owned (`into_owned`) to outlive it.
    pub label: Cow<'a, str>,
    pub index: usize,
    pub probability: f32,
}

impl Ranked<'_> {
    /// The same, with its own copy of the label.
    pub fn into_owned(self) -> Ranked<'static> {
        Ranked {
            label: Cow::Owned(self.label.into_owned()),
            index: self.index,
            probability: self.probability,
        }
    }
}

/// The label of the best of `top` (best first), unless its probability is below
/// `threshold` or the model rejected the image ([`Scores::rejected`]): then no label is
/// accepted.
pub fn accepted<'a>(top: &'a [Ranked], threshold: f32, rejected: bool) -> Option<&'a str> {
    if rejected {
        return None;
    }
    top.first()
        .filter(|r| r.probability >= threshold)
        .map(|r| r.label.as_ref())
}

/// What the model says of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One probability per class.
    pub probs: Vec<f32>,
    /// The bundle's "none of the above" score (`glimpse.reject`), when it has one.
    pub reject_score: Option<f32>,
    /// The score is below the bundle's threshold: the image belongs to none of the
    /// classes, whatever their probabilities say.
    pub rejected: bool,
}

/// Where the time of one classification went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.decode + self.preprocess + self.inference
    }

    /// The stages in milliseconds, with `latency` (the whole request or input), as JSON
    /// results show them.
    pub fn millis(&self, latency: Duration) -> TimingsMs {
        TimingsMs {
            latency_ms: millis(latency),
            decode_ms: millis(self.decode),
            preprocess_ms: millis(self.preprocess),
            inference_ms: millis(self.inference),
        }
    }
}

/// The `q` quantile (0..=1) of ascending `sorted` values, by nearest rank: how latency
/// percentiles are reported (`glimpse bench`, `glimpse-train bench`). 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize],
    }
}

/// [`Timings`] in milliseconds, for JSON results (`#[serde(flatten)]` into a record).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TimingsMs {
    pub latency_ms: f64,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
}

/// A duration in milliseconds, to the microsecond: how every report and JSON result
/// shows a latency.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A model ready to classify images.
pub struct Classifier {
    plan: Plan,
    pub file: OnnxFile,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    /// `None`: the file does not say; decided per output (probabilities if they already
    /// sum to one, logits otherwise).
    pub output: Option<OutputKind>,
    /// What the model does not say and was assumed ("layout NCHW", "labels"): for a
    /// warning that says how to set it.
    pub assumed: Vec<String>,
    /// `glimpse.reject`: which plan output carries the score, and its threshold.
    reject: Option<(usize, f32)>,
}

/// The layout a classifier's plan takes its input in, whatever the model declares:
/// `build` plans a channel-first model for a channel-last input ([`Feed::ChannelLast`]).
const FED: Layout = Layout::Nhwc;

/// What `Classifier::build` makes of a file.
type Built = (Plan, Preprocess, Vec<String>, Vec<String>);

/// The plan output `glimpse.reject` names, with its threshold; the class scores must stay
/// the first output.
fn reject_output(file: &OnnxFile) -> Result<Option<(usize, f32)>> {
    let Some(reject) = &file.meta.reject else {
        return Ok(None);
    };
    match file.outputs.iter().position(|o| o.name == reject.output) {
        Some(i) if i > 0 => Ok(Some((i, reject.threshold))),
        _ => Err(model_error!(
            "glimpse.reject names output {:?}: expected one of the outputs after the class scores, got {}",
            reject.output,
            file.outputs
                .iter()
                .map(|o| format!("{:?}", o.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl Classifier {
    /// Reads, checks and optimizes the model at `path`; every error names the file.
    pub fn load(path: &std::path::Path, overrides: &Overrides) -> Result<Self> {
        let file = OnnxFile::read(path)?;
        Self::new(file, overrides).map_err(|e| e.in_file(path))
    }

    /// Checks and optimizes a parsed model.
    pub fn new(file: OnnxFile, overrides: &Overrides) -> Result<Self> {
        Self::try_new(file, overrides).map_err(|(e, _)| e)
    }

    /// `new`, giving the file back with the error (to describe a model that cannot run;
    /// its weights may have been released by then).
    pub fn try_new(
        mut file: OnnxFile,
        overrides: &Overrides,
    ) -> std::result::Result<Self, (Error, Box<OnnxFile>)> {
        let reject = match reject_output(&file) {
            Ok(r) => r,
            Err(e) => return Err((e, Box::new(file))),
        };
        match Self::build(&mut file, overrides) {
            Ok((plan, preprocess, labels, assumed)) => {
                release_freed_memory();
                Ok(Classifier {
                    plan,
                    output: overrides.output.or(file.meta.output),
                    file,
                    preprocess,
                    labels,
                    assumed,
                    reject,
                })
            }
            Err(e) => Err((e, Box::new(file))),
        }
    }

    /// The plan, preprocessing, labels and what was assumed of them.
    fn build(file: &mut OnnxFile, overrides: &Overrides) -> Result<Built> {
        let (preprocess, mut assumed) = Self::check(file, overrides)?;
        let feed = match preprocess.layout {
            Layout::Nchw => Feed::ChannelLast,
            Layout::Nhwc => Feed::Declared,
        };
        let plan = Plan::for_file(file, preprocess.shape(1), feed)?;
        let classes = classes(&plan)?;
        let labels = labels(file, overrides, classes, &mut assumed)?;
        Ok((plan, preprocess, labels, assumed))
    }

    /// What can be checked before tract sees the model; the preprocessing it needs and
    /// what of it was assumed.
    fn check(file: &OnnxFile, overrides: &Overrides) -> Result<(Preprocess, Vec<String>)> {
        check_io(file)?;
        // Before the non-finite check: a NaN scale is reported with its node.
        file.check_quantization()?;
        if let Some((name, count)) = file.non_finite_weights() {
            return Err(model_error!("expected finite weights, got {count} non-finite values (NaN or infinity) in initializer {name:?}"));
        }
        let input = &file.inputs[0];
        let resolved = resolve(&file.meta, overrides, &input.dims)?;
        check_input_shape(input, &resolved.0)?;
        file.check_graph()?;
        Ok(resolved)
    }

    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// What each compute node of the plan runs on (see [`crate::plan::Kernel`]).
    pub fn kernels(&self) -> Vec<crate::plan::Kernel> {
        self.plan.kernels()
    }

    /// Decodes, preprocesses and classifies encoded image bytes.
    pub fn classify_bytes(&self, bytes: &[u8], limits: &Limits) -> Result<(Scores, Timings)> {
        let t0 = Instant::now();
        // Turned upright after the downscale: no full-size rotated copy.
        let (img, orientation) = decode::decode_unoriented(bytes, limits)?;
        let t1 = Instant::now();
        let input = self.fed_tensor(&img, orientation, &mut Resizer::new());
        drop(img);
        let t2 = Instant::now();
        let scores = self.run_fed(input)?;
        let timings = Timings {
            decode: t1 - t0,
            preprocess: t2 - t1,
            inference: t2.elapsed(),
        };
        Ok((scores, timings))
    }

    /// Classifies the `crop` region of an encoded image (in its upright frame, as it is
    /// displayed): decoded whole and turned upright, then cut.
    pub fn classify_bytes_within(
        &self,
        bytes: &[u8],
        limits: &Limits,
        crop: Crop,
    ) -> Result<(Scores, Timings)> {
        let t0 = Instant::now();
        let img = crop.apply(&decode::decode(bytes, limits)?)?;
        let decoded = t0.elapsed();
        let (scores, timings) = self.classify(&img)?;
        Ok((
            scores,
            Timings {
                decode: decoded,
                ..timings
            },
        ))
    }

    /// Classifies decoded pixels.
    pub fn classify(&self, img: &RgbImage) -> Result<(Scores, Timings)> {
        let t0 = Instant::now();
        let input = self.fed_tensor(img, Orientation::NoTransforms, &mut Resizer::new());
        let t1 = Instant::now();
        let scores = self.run_fed(input)?;
        let timings = Timings {
            decode: Duration::ZERO,
            preprocess: t1 - t0,
            inference: t1.elapsed(),
        };
        Ok((scores, timings))
    }

    /// The model input for one image, preprocessed as the bundle says and laid out as
    /// the model declares it (what another runtime would be given).
    pub fn tensor(&self, img: &RgbImage) -> Tensor {
        self.preprocess.to_tensor(&[img], &mut Resizer::new())
    }

    /// The input of the plan for one image: [`Self::tensor`] laid out as the plan takes
    /// it.
    pub fn fed_tensor(
        &self,
        img: &RgbImage,
        orientation: Orientation,
        resizer: &mut Resizer,
    ) -> Tensor {
        self.preprocess
            .to_tensor_in(FED, &[(img, orientation)], resizer)
    }

    /// An input laid out as the model declares it, laid out as the plan takes it.
    fn to_fed(&self, input: Tensor) -> Result<Tensor> {
        if FED != self.preprocess.layout {
            if input.rank() != 4 {
                return Err(Error::Inference(format!(
                    "expected a [N, C, H, W] input, got shape {:?}",
                    input.shape()
                )));
            }
            return input
                .move_axis(1, 3)
                .map_err(|e| Error::Inference(format!("laying out the input: {e}")));
        }
        Ok(input)
    }

    /// Runs the model on an already preprocessed input tensor of one image, laid out as
    /// the model declares it ([`Self::tensor`]): one probability per class, and the
    /// rejection when the bundle calibrated one.
    pub fn run(&self, input: Tensor) -> Result<Scores> {
        self.run_fed(self.to_fed(input)?)
    }

    /// [`Self::run`] on an input laid out as the plan takes it ([`Self::fed_tensor`]).
    pub fn run_fed(&self, input: Tensor) -> Result<Scores> {
        let outputs = self.plan.run(input)?;
        let raw = output_values(&outputs, 0)?;
        if !raw.iter().all(|v| v.is_finite()) {
            return Err(Error::Inference(
                "the model gave non-finite outputs (NaN or infinity) for this image".into(),
            ));
        }
        let reject_score = match self.reject {
            Some((at, _)) => Some(single_value(&outputs, at)?),
            None => None,
        };
        Ok(Scores {
            probs: self.to_probabilities(raw),
            // A NaN score is not evidence of a class: only a score at or above the
            // threshold is accepted.
            rejected: matches!((reject_score, self.reject), (Some(v), Some((_, t))) if v.is_nan() || v < t),
            reject_score,
        })
    }

    /// The model's raw class scores (logits or probabilities, as the model gives them).
    pub fn run_raw(&self, input: Tensor) -> Result<Vec<f32>> {
        output_values(&self.plan.run(self.to_fed(input)?)?, 0)
    }

    fn to_probabilities(&self, raw: Vec<f32>) -> Vec<f32> {
        let kind = self.output.unwrap_or_else(|| {
            let sum: f32 = raw.iter().sum();
            if raw.iter().all(|p| (0.0..=1.0).contains(p)) && (sum - 1.0).abs() < 1e-3 {
                OutputKind::Probabilities
            } else {
                OutputKind::Logits
            }
        });
        match kind {
            OutputKind::Probabilities => raw,
            OutputKind::Logits => softmax(&raw),
        }
    }

    /// The `k` most probable classes, best first.
    pub fn top_k<'a>(&'a self, probs: &[f32], k: usize) -> Vec<Ranked<'a>> {
        let mut idx = ranking(probs);
        idx.truncate(k);
        idx.into_iter()
            .map(|i| Ranked {
                label: Cow::Borrowed(&self.labels[i]),
                index: i,
                probability: probs[i],
            })
            .collect()
    }
}

/// The labels: the overrides', the file's, or "class N" (noted in `assumed`).
fn labels(
    file: &OnnxFile,
    overrides: &Overrides,
    classes: usize,
    assumed: &mut Vec<String>,
) -> Result<Vec<String>> {
    match overrides.labels.as_ref().or(file.meta.labels.as_ref()) {
        Some(labels) if labels.len() != classes => Err(Error::Labels(format!(
            "label count does not match the model: the model outputs {classes} classes, got {} labels",
            labels.len()
        ))),
        Some(labels) => Ok(labels.clone()),
        None => {
            assumed.push("labels \"class 0\", \"class 1\", ...".into());
            Ok((0..classes).map(|i| format!("class {i}")).collect())
        }
    }
}

/// Returns the memory freed after a model load (parsed protobuf, tract's intermediate
/// models) to the system. glibc keeps freed heap memory for reuse otherwise, and the
/// process would stay ~20 MB above what it needs for as long as it runs.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Checks the graph's inputs and outputs: one float image input, some output.
fn check_io(file: &OnnxFile) -> Result<()> {
    if file.inputs.len() != 1 {
        return Err(model_error!(
            "expected a model with 1 input, got {}",
            file.inputs.len()
        ));
    }
    if file.outputs.is_empty() {
        return Err(model_error!("model has no outputs"));
    }
    let input = &file.inputs[0];
    if !matches!(input.elem_type.as_str(), "float" | "unknown") {
        return Err(model_error!(
            "expected a float32 image input, got {} input {input}",
            input.elem_type
        ));
    }
    Ok(())
}

/// Checks that the fixed axes of a 4-D input are what the preprocessing makes.
fn check_input_shape(input: &crate::onnx_file::Io, preprocess: &Preprocess) -> Result<()> {
    let want = preprocess.shape(1);
    if input.dims.len() == 4 {
        for (axis, (d, w)) in input.dims.iter().zip(want).enumerate() {
            // Axis 0 is the batch: a fixed batch of 1 is what we feed.
            match d.fixed() {
                Some(n) if n != w => return Err(model_error!(
                    "model input {input} does not match the preprocessing: expected shape {want:?} ({preprocess}), got {n} on axis {axis}"
                )),
                _ => {}
            }
        }
    } else if !input.dims.is_empty() {
        return Err(model_error!(
            "expected a 4-D image input (NCHW or NHWC), got {input}"
        ));
    }
    Ok(())
}

/// The number of classes: the size of the (fixed) first output for a batch of 1.
/// The values of plan output `at`.
fn output_values(outputs: &[TValue], at: usize) -> Result<Vec<f32>> {
    let view = outputs[at]
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::Inference(format!("reading model output {at}: {e:#}")))?;
    Ok(view.iter().copied().collect())
}

/// The one value of plan output `at` (the reject score of the one image).
fn single_value(outputs: &[TValue], at: usize) -> Result<f32> {
    match output_values(outputs, at)?[..] {
        [v] => Ok(v),
        ref other => Err(Error::Inference(format!(
            "expected 1 value in the reject score output, got {}",
            other.len()
        ))),
    }
}

fn classes(plan: &Plan) -> Result<usize> {
    let shape = plan.output_shapes()[0]
        .as_deref()
        .ok_or_else(|| model_error!("model output shape is not fixed for a batch of 1"))?;
    let classes: usize = shape.iter().product();
    if classes == 0 {
        return Err(model_error!("model output is empty (shape {shape:?})"));
    }
    Ok(classes)
}

/// Class indices from the most probable down. NaN (a broken model) sorts last rather
/// than panicking the comparison.
pub fn ranking(probs: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
    idx
}

/// The most probable class (0 for no classes); the first of equals.
pub fn argmax(probs: &[f32]) -> usize {
    probs
        .iter()
        .enumerate()
        .rev()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Reads a labels file: one label per line, blank trailing lines ignored.
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(Error::io("reading labels", path))?;
    let labels: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let end = labels
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(Error::Labels(format!(
            "labels file {} is empty",
            path.display()
        )));
    }
    Ok(labels[..end].to_vec())
}

/// Combines overrides, metadata and what the input shape reveals into a full
/// preprocessing definition.
pub fn resolve_preprocess(meta: &BundleMeta, ov: &Overrides, dims: &[Dim]) -> Result<Preprocess> {
    resolve(meta, ov, dims).map(|(p, _)| p)
}

/// `resolve_preprocess`, and what had to be assumed.
fn resolve(meta: &BundleMeta, ov: &Overrides, dims: &[Dim]) -> Result<(Preprocess, Vec<String>)> {
    let mut guessed = Vec::new();
    let fixed = |i: usize| dims.get(i).and_then(Dim::fixed);
    let shape_layout = match (fixed(1), fixed(3)) {
        (Some(1 | 3), _) => Some(Layout::Nchw),
        (_, Some(1 | 3)) => Some(Layout::Nhwc),
        _ => None,
    };
    let layout = ov
        .layout
        .or(meta.layout)
        .or(shape_layout)
        .unwrap_or_else(|| {
            guessed.push("layout NCHW".to_string());
            Layout::Nchw
        });
    let (c_axis, h_axis, w_axis) = match layout {
        Layout::Nchw => (1, 2, 3),
        Layout::Nhwc => (3, 1, 2),
    };
    let channels = ov.channels.or(meta.channels).or(match fixed(c_axis) {
        Some(1) => Some(Channels::Gray),
        Some(3) => Some(Channels::Rgb),
        _ => None,
    });
    let channels = channels.unwrap_or_else(|| {
        guessed.push("RGB channels".to_string());
        Channels::Rgb
    });
    let size = ov
        .size
        .or(meta.input_size)
        .or(match (fixed(w_axis), fixed(h_axis)) {
            (Some(w), Some(h)) => Some((w as u32, h as u32)),
            _ => None,
        });
    let Some((width, height)) = size else {
        return Err(Error::NoInputSize);
    };
    let resize = match ov.resize.or(meta.resize) {
        Some(Resize::CenterCrop { short_side: 0 }) => Resize::CenterCrop {
            short_side: default_short_side(width.max(height)),
        },
        Some(r) => r,
        None => {
            let r = Resize::CenterCrop {
                short_side: default_short_side(width.max(height)),
            };
            guessed.push(format!("resize {r}"));
            r
        }
    };
    let (mean, std) = match (
        ov.mean.clone().or(meta.mean.clone()),
        ov.std.clone().or(meta.std.clone()),
    ) {
        (Some(m), Some(s)) => (m, s),
        (m, s) => {
            // torchvision's ImageNet statistics are by far the most common for exported
            // classifiers; a grey model gets plain 0–1 scaling.
            let (dm, ds) = match channels {
                Channels::Gray => (vec![0.0], vec![255.0]),
                _ => (vec![123.675, 116.28, 103.53], vec![58.395, 57.12, 57.375]),
            };
            guessed.push(format!(
                "normalization (x - {:?}) / {:?}",
                m.as_ref().unwrap_or(&dm),
                s.as_ref().unwrap_or(&ds)
            ));
            (m.unwrap_or(dm), s.unwrap_or(ds))
        }
    };
    let p = Preprocess {
        width,
        height,
        resize,
        mean,
        std,
        channels,
        layout,
    };
    p.validate().map_err(Error::Preprocess)?;
    Ok((p, guessed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalized() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn resolves_from_input_shape_when_metadata_is_missing() {
        let dims = [
            Dim::Named("N".into()),
            Dim::Fixed(224),
            Dim::Fixed(224),
            Dim::Fixed(3),
        ];
        let p = resolve_preprocess(&BundleMeta::default(), &Overrides::default(), &dims).unwrap();
        assert_eq!(
            (p.layout, p.channels, p.width, p.height),
            (Layout::Nhwc, Channels::Rgb, 224, 224)
        );
        assert_eq!(p.resize, Resize::CenterCrop { short_side: 256 });
        let dims = [
            Dim::Fixed(1),
            Dim::Fixed(1),
            Dim::Named("h".into()),
            Dim::Named("w".into()),
        ];
        let err =
            resolve_preprocess(&BundleMeta::default(), &Overrides::default(), &dims).unwrap_err();
        assert!(matches!(err, Error::NoInputSize), "{err}");
    }

    #[test]
    fn overrides_win_over_metadata() {
        let meta = BundleMeta {
            input_size: Some((96, 96)),
            channels: Some(Channels::Rgb),
            ..Default::default()
        };
        let ov = Overrides {
            size: Some((64, 32)),
            channels: Some(Channels::Bgr),
            ..Default::default()
        };
        let p = resolve_preprocess(&meta, &ov, &[]).unwrap();
        assert_eq!((p.width, p.height, p.channels), (64, 32, Channels::Bgr));
    }
}
