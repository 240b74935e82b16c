//! Options shared by every subcommand that loads a model: which model, and overrides for
//! models that do not describe themselves.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_runtime::preprocess::{parse_floats, parse_size};
use glimpse_runtime::{
    classifier::read_labels, Channels, Classifier, Layout, OnnxFile, OutputKind, Overrides, Resize,
};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// ONNX model (default: $GLIMPSE_MODEL, else the shipped EfficientNet-Lite0 ImageNet model).
    #[arg(short, long, value_name = "MODEL.onnx")]
    pub model: Option<PathBuf>,
    /// Labels file, one per line (overrides the labels in the model).
    #[arg(long, value_name = "FILE", help_heading = "Model overrides")]
    pub labels: Option<PathBuf>,
    /// Model input size, WxH.
    #[arg(long, value_name = "WxH", value_parser = parse_size, help_heading = "Model overrides")]
    pub input_size: Option<(u32, u32)>,
    /// How images are fitted to the input: stretch, center-crop[:SHORT_SIDE], letterbox.
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<Resize>(), help_heading = "Model overrides")]
    pub resize: Option<Resize>,
    /// Per-channel mean in 0-255 units, e.g. 127,127,127.
    #[arg(long, value_parser = parse_list, help_heading = "Model overrides")]
    pub mean: Option<List>,
    /// Per-channel std in 0-255 units, e.g. 128,128,128.
    #[arg(long, value_parser = parse_list, help_heading = "Model overrides")]
    pub std: Option<List>,
    /// Channel order of the input.
    #[arg(long, value_parser = |s: &str| s.parse::<Channels>(), help_heading = "Model overrides")]
    pub channels: Option<Channels>,
    /// Memory layout of the input.
    #[arg(long, value_parser = |s: &str| s.parse::<Layout>(), help_heading = "Model overrides")]
    pub layout: Option<Layout>,
    /// What the model outputs: logits or probabilities (default: as the model says, else
    /// detected).
    #[arg(long, value_parser = |s: &str| s.parse::<OutputKind>(), help_heading = "Model overrides")]
    pub outputs: Option<OutputKind>,
    /// Threads tract uses inside one inference (lower latency per image on a multi-core
    /// board; keep 1 when images are classified in parallel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub intra_threads: u32,
}

/// A comma-separated list of numbers given as one argument (a newtype, so clap does not
/// take `Vec` to mean a repeated option).
#[derive(Debug, Clone)]
pub struct List(pub Vec<f32>);

fn parse_list(s: &str) -> Result<List, String> {
    parse_floats(s).map(List)
}

impl ModelArgs {
    /// The model path: as given, or the first default location that exists.
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        let candidates = glimpse_runtime::default_model_candidates();
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => Ok(p.clone()),
            None => bail!(
                "no --model given and the default model was not found; looked in: {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn overrides(&self) -> Result<Overrides> {
        Ok(Overrides {
            labels: self.labels.as_deref().map(read_labels).transpose()?,
            size: self.input_size,
            resize: self.resize,
            mean: self.mean.clone().map(|l| l.0),
            std: self.std.clone().map(|l| l.0),
            channels: self.channels,
            layout: self.layout,
            output: self.outputs,
        })
    }

    /// Reads the model file (without building a runnable plan).
    pub fn read(&self) -> Result<(PathBuf, OnnxFile)> {
        let path = self.path()?;
        let file = OnnxFile::read(&path).context("loading model")?;
        Ok((path, file))
    }

    pub fn classifier_for(&self, path: &std::path::Path, file: OnnxFile) -> Result<Classifier> {
        self.try_classifier_for(path, file).map_err(|(e, _)| e)
    }

    /// `classifier_for`, giving the file back with the error.
    pub fn try_classifier_for(
        &self,
        path: &std::path::Path,
        file: OnnxFile,
    ) -> Result<Classifier, (anyhow::Error, Box<OnnxFile>)> {
        glimpse_runtime::classifier::set_inference_threads(self.intra_threads as usize);
        let overrides = match self.overrides() {
            Ok(o) => o,
            Err(e) => return Err((e, Box::new(file))),
        };
        let classifier = Classifier::try_new(file, &overrides)
            .map_err(|(e, file)| (hint(e.in_file(path)).context("loading model"), file))?;
        warn_assumed(&classifier);
        Ok(classifier)
    }
}

/// The library's error, with the flag that fixes it where there is one.
pub fn hint(err: glimpse_runtime::Error) -> anyhow::Error {
    match err.cause() {
        glimpse_runtime::Error::NoInputSize => anyhow::anyhow!("{err}: pass --input-size WxH"),
        _ => err.into(),
    }
}

/// Warns once about what the model does not say and glimpse assumed, naming the flags.
pub fn warn_assumed(classifier: &Classifier) {
    if !classifier.assumed.is_empty() {
        log::warn!(
            "the model's metadata does not say everything; assuming {} (set with --labels, --input-size, --resize, --mean, --std, --channels, --layout)",
            classifier.assumed.join(", ")
        );
    }
}
