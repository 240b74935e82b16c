//! A pretrained classifier cut before its final fully connected layer: the frozen feature
//! extractor. Works on any single-input ONNX classifier whose output comes from a `Gemm`
//! (optionally followed by `Softmax`), which covers the imported EfficientNet-Lite0 and the
//! usual ONNX-zoo CNNs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use fast_image_resize::Resizer;
use glimpse_runtime::classifier::resolve_preprocess;
use glimpse_runtime::{OnnxFile, Overrides, Plan, Preprocess};
use image::RgbImage;
use tract_onnx::pb;

use super::blocks::Split;
use crate::onnx::{attr, value_info};

/// The names `--backbone` accepts besides a path to an ONNX bundle, with their file names.
pub const KNOWN: &[(&str, &str)] = &[("efficientnet-lite0", "efficientnet-lite0.onnx")];

/// Finds the backbone `spec` names: an existing file, or a known name looked up where the
/// runtime looks for its default model (the folder of `$GLIMPSE_MODEL`, next to the binary,
/// the install share directory, this source tree's `models/`).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let Some((_, file)) = KNOWN.iter().find(|(name, _)| *name == spec) else {
        bail!(
            "backbone {spec:?}: no such file, and not a known backbone (expected a path to an ONNX classifier or one of: {})",
            KNOWN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        );
    };
    let candidates: Vec<PathBuf> = glimpse_runtime::default_model_candidates()
        .into_iter()
        .filter_map(|p| p.parent().map(|d| d.join(file)))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "backbone {spec}: {file} not found (looked in {}); import it with `glimpse-train import efficientnet-lite0` or pass its path",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The graph of a classifier without its final layer.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The backbone graph; its single output is the feature vector `[batch, dim]`.
    pub graph: pb::GraphProto,
    /// Name of the feature tensor.
    pub features: String,
    pub dim: usize,
}

/// Removes the classifier's last layer: the `Gemm` producing the output (after an optional
/// trailing `Softmax`), and the weights only it used (and a rejection glimpse-train added).
pub fn cut(graph: &pb::GraphProto) -> Result<Cut> {
    let graph = &crate::reject::without_score(graph);
    ensure!(
        graph.output.len() == 1,
        "expected a classifier with 1 output, got {}",
        graph.output.len()
    );
    let producer = |name: &str| {
        graph
            .node
            .iter()
            .position(|n| n.output.iter().any(|o| o == name))
    };
    let mut out = graph.output[0].name.clone();
    let mut drop = Vec::new();
    let mut at = producer(&out).context("the graph output is not produced by any node")?;
    if graph.node[at].op_type == "Softmax" {
        drop.push(at);
        out = graph.node[at].input[0].clone();
        at = producer(&out).context("the softmax input is not produced by any node")?;
    }
    let gemm = &graph.node[at];
    ensure!(
        gemm.op_type == "Gemm" && gemm.input.len() >= 2,
        "expected the classifier's last layer to be a fully connected Gemm node, got {} (node {:?})",
        gemm.op_type,
        gemm.name
    );
    ensure!(
        attr(gemm, "transA").map(|a| a.i).unwrap_or(0) == 0,
        "expected a Gemm without transA (node {:?})",
        gemm.name
    );
    let weight = graph
        .initializer
        .iter()
        .find(|t| t.name == gemm.input[1])
        .with_context(|| {
            format!(
                "the last Gemm's weight {:?} is not a constant",
                gemm.input[1]
            )
        })?;
    ensure!(
        weight.dims.len() == 2,
        "expected a 2-D weight for the last Gemm, got shape {:?}",
        weight.dims
    );
    let dim = if attr(gemm, "transB").map(|a| a.i).unwrap_or(0) == 1 {
        weight.dims[1]
    } else {
        weight.dims[0]
    } as usize;
    drop.push(at);
    let features = gemm.input[0].clone();

    let node: Vec<pb::NodeProto> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    let dropped_outputs: HashSet<&str> = drop
        .iter()
        .flat_map(|i| graph.node[*i].output.iter().map(String::as_str))
        .collect();
    if let Some(user) = node
        .iter()
        .find(|n| n.input.iter().any(|i| dropped_outputs.contains(i.as_str())))
    {
        bail!(
            "node {:?} uses the classifier output; cannot cut the graph before the last layer",
            user.name
        );
    }
    let used: HashSet<&str> = node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let initializer = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    Ok(Cut {
        graph: pb::GraphProto {
            node,
            initializer,
            output: vec![value_info(&features, &[None, Some(dim)])],
            ..graph.clone()
        },
        features,
        dim,
    })
}

/// A loaded backbone: the cut graph, ready to run, and how its inputs are prepared.
pub struct Backbone {
    /// The whole pretrained bundle, as read.
    pub file: OnnxFile,
    pub cut: Cut,
    /// The backbone's preprocessing (from its bundle metadata).
    pub preprocess: Preprocess,
    /// `sha256` of the backbone file: part of every cache key.
    pub sha256: String,
    /// A short name for messages and provenance (`efficientnet-lite0`, or the file stem).
    pub name: String,
    plan: Plan,
}

impl Backbone {
    /// Loads the bundle at `path` and prepares its cut graph to run, with the bundle's
    /// preprocessing as `adjust` changes it (the resize mode, for small images).
    pub fn load(path: &Path, adjust: impl FnOnce(Preprocess) -> Preprocess) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        Self::from_bytes(&bytes, &path.display().to_string(), stem, adjust)
    }

    /// `load` of a model already in memory; `what` names it in errors, `stem` is the name
    /// used when its metadata has none.
    pub fn from_bytes(
        bytes: &[u8],
        what: &str,
        stem: Option<String>,
        adjust: impl FnOnce(Preprocess) -> Preprocess,
    ) -> Result<Self> {
        let file = OnnxFile::from_bytes(bytes).with_context(|| what.to_string())?;
        let sha256 = glimpse_runtime::fsutil::sha256_hex(bytes);
        ensure!(
            file.inputs.len() == 1,
            "{what}: expected a backbone with 1 input, got {}",
            file.inputs.len()
        );
        let preprocess = adjust(
            resolve_preprocess(&file.meta, &Overrides::default(), &file.inputs[0].dims)
                .with_context(|| format!("{what}: preprocessing"))?,
        );
        let cut = cut(file.graph()).with_context(|| what.to_string())?;
        let proto = pb::ModelProto {
            graph: Some(cut.graph.clone()),
            ..file.proto.clone()
        };
        let plan = Plan::new(&proto, preprocess.shape(1))
            .with_context(|| format!("{what}: the backbone graph"))?;
        let name = file
            .meta
            .name
            .clone()
            .or(stem)
            .unwrap_or_else(|| "backbone".into());
        Ok(Backbone {
            file,
            cut,
            preprocess,
            sha256,
            name,
            plan,
        })
    }

    /// This backbone cut `blocks` blocks lower (`--fine-tune`): it then computes the
    /// activations there, `[C, H, W]` flattened, and the split says what lies above.
    pub fn split_off(mut self, blocks: usize) -> Result<(Backbone, Split, [usize; 3])> {
        let split = super::blocks::split(&self.cut, blocks, &self.name)?;
        let proto = pb::ModelProto {
            graph: Some(split.below.clone()),
            ..self.file.proto.clone()
        };
        let plan = Plan::new(&proto, self.preprocess.shape(1))
            .with_context(|| format!("{}: the graph under {:?}", self.name, split.at))?;
        let shape = match plan.output_shapes().first() {
            Some(Some(s)) if s.len() == 4 && s[0] == 1 => [s[1], s[2], s[3]],
            other => bail!(
                "{}: expected [1, C, H, W] activations at {:?}, got shape {other:?}",
                self.name,
                split.at
            ),
        };
        self.cut = Cut {
            graph: split.below.clone(),
            features: split.at.clone(),
            dim: shape.iter().product(),
        };
        self.plan = plan;
        Ok((self, split, shape))
    }

    pub fn dim(&self) -> usize {
        self.cut.dim
    }

    /// The feature vector of an image already fitted to the input size (`pp.fit` or an
    /// augmented view).
    pub fn features_of_fitted(&self, fitted: &RgbImage) -> Result<Vec<f32>> {
        let shape = self.preprocess.shape(1);
        let mut input = vec![0f32; shape.iter().product()];
        self.preprocess.normalize_into(fitted, &mut input);
        let out = self
            .plan
            .run(crate::export::input_tensor(shape, input))
            .context("running the backbone")?;
        let view = out[0].to_plain_array_view::<f32>()?;
        ensure!(
            view.len() == self.dim(),
            "expected {} features from the backbone, got {}",
            self.dim(),
            view.len()
        );
        Ok(view.iter().copied().collect())
    }

    /// The feature vector of an image, preprocessed as the bundle says.
    pub fn features(&self, img: &RgbImage, resizer: &mut Resizer) -> Result<Vec<f32>> {
        self.features_of_fitted(&self.preprocess.fit(img, resizer))
    }
}
