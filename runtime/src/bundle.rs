//! The model bundle: what a glimpse ONNX file says about itself in `metadata_props`.
//!
//! Every key is optional so that a third-party classifier with no metadata at all is a
//! valid (if under-described) bundle; the CLI fills the gaps with flags. The keys and their
//! formats are documented in the README ("The model bundle") and must stay in step with it.

use std::collections::BTreeMap;

use crate::preprocess::{parse_floats, parse_size, Channels, Layout, Preprocess, Resize};

/// Prefix of every key glimpse reads or writes.
pub const PREFIX: &str = "glimpse.";
/// Version of the bundle format written by this crate.
pub const FORMAT_VERSION: u32 = 1;

pub mod keys {
    pub const FORMAT: &str = "glimpse.format";
    pub const LABELS: &str = "glimpse.labels";
    pub const INPUT_SIZE: &str = "glimpse.input_size";
    pub const RESIZE: &str = "glimpse.resize";
    pub const RESIZE_SHORT: &str = "glimpse.resize_short";
    pub const LETTERBOX_FILL: &str = "glimpse.letterbox_fill";
    pub const MEAN: &str = "glimpse.mean";
    pub const STD: &str = "glimpse.std";
    pub const SCALE: &str = "glimpse.scale";
    pub const OFFSET: &str = "glimpse.offset";
    pub const CHANNELS: &str = "glimpse.channels";
    pub const LAYOUT: &str = "glimpse.layout";
    pub const OUTPUT: &str = "glimpse.output";
    pub const NAME: &str = "glimpse.name";
    pub const VERSION: &str = "glimpse.version";
    pub const SOURCE: &str = "glimpse.source";
    pub const LICENSE: &str = "glimpse.license";
    pub const REJECT: &str = "glimpse.reject";

    /// Every key above.
    pub const ALL: &[&str] = &[
        FORMAT,
        LABELS,
        INPUT_SIZE,
        RESIZE,
        RESIZE_SHORT,
        LETTERBOX_FILL,
        MEAN,
        STD,
        SCALE,
        OFFSET,
        CHANNELS,
        LAYOUT,
        OUTPUT,
        NAME,
        VERSION,
        SOURCE,
        LICENSE,
        REJECT,
    ];
}

/// "None of the above" (`glimpse.reject`, JSON): a score the model computes beside its
/// class scores, and the threshold below which an image belongs to none of its classes.
/// `glimpse-train` calibrates it on validation images.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// How the score is computed (`cosine_to_class_prototypes`: the cosine similarity of
    /// the image's features to the nearest of a few prototypes of each class).
    pub score: String,
    /// The model output that carries it, one value per image.
    pub output: String,
    /// Images scoring below it are rejected.
    pub threshold: f32,
    /// The share of images of the known classes the threshold is calibrated to accept
    /// (at least, by split conformal calibration on validation images).
    pub target_accept: f64,
}

impl Reject {
    fn parse(text: &str) -> Result<Self, String> {
        let r: Reject = serde_json::from_str(text).map_err(|e| {
            format!("expected {{\"score\", \"output\", \"threshold\", \"target_accept\"}}: {e}")
        })?;
        if !r.threshold.is_finite() {
            return Err(format!("expected a finite threshold, got {}", r.threshold));
        }
        Ok(r)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} below {} (output {:?}; calibrated to accept {:.0}% of known images)",
            self.score,
            self.threshold,
            self.output,
            self.target_accept * 100.0
        )
    }
}

/// What the model's output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Unnormalized scores; glimpse applies a softmax.
    Logits,
    /// Already probabilities (the graph ends in a softmax); used as they are.
    Probabilities,
}

/// The name stored in `glimpse.output`.
impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        })
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "logits" => Ok(OutputKind::Logits),
            "probabilities" => Ok(OutputKind::Probabilities),
            _ => Err(format!("expected logits or probabilities, got {s:?}")),
        }
    }
}

/// The `glimpse.*` properties of a model, read key by key; every error names the key and
/// its value.
struct Props<'a>(BTreeMap<&'a str, &'a str>);

impl Props<'_> {
    fn bad(&self, key: &str, reason: String) -> BundleError {
        BundleError {
            key: key.to_string(),
            value: truncate(self.0.get(key).copied().unwrap_or("")),
            reason,
        }
    }

    /// An optional key, parsed.
    fn field<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, BundleError> {
        self.0
            .get(key)
            .map(|v| parse(v.trim()).map_err(|reason| self.bad(key, reason)))
            .transpose()
    }

    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| v.to_string())
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>, BundleError> {
        self.field(key, parse_floats)
    }

    fn format(&self) -> Result<Option<u32>, BundleError> {
        let n = self.field(keys::FORMAT, |v| {
            v.parse::<u32>()
                .map_err(|_| "expected an integer".to_string())
        })?;
        match n {
            Some(n) if n > FORMAT_VERSION => Err(self.bad(
                keys::FORMAT,
                format!(
                    "this glimpse reads bundle format {FORMAT_VERSION} and older; upgrade glimpse"
                ),
            )),
            n => Ok(n),
        }
    }

    fn labels(&self) -> Result<Option<Vec<String>>, BundleError> {
        self.field(keys::LABELS, |v| {
            serde_json::from_str(v).map_err(|e| format!("expected a JSON array of strings: {e}"))
        })
    }

    /// Mean and std, as given or from scale/offset (`x * scale + offset`, the other common
    /// way to state the same affine map: mean = -offset / scale, std = 1 / scale).
    #[allow(clippy::type_complexity)]
    fn normalization(&self) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>), BundleError> {
        let (mean, std) = (self.floats(keys::MEAN)?, self.floats(keys::STD)?);
        let (scale, offset) = (self.floats(keys::SCALE)?, self.floats(keys::OFFSET)?);
        let Some(scale) = scale.filter(|_| mean.is_none() && std.is_none()) else {
            return Ok((mean, std));
        };
        let offset = offset.unwrap_or_else(|| vec![0.0; scale.len()]);
        if offset.len() != scale.len() {
            return Err(self.bad(
                keys::OFFSET,
                format!("expected {} values to match glimpse.scale", scale.len()),
            ));
        }
        let mean = scale.iter().zip(&offset).map(|(s, o)| -o / s).collect();
        Ok((Some(mean), Some(scale.iter().map(|s| 1.0 / s).collect())))
    }

    /// The resize mode with its parameters (from their own keys).
    fn resize(&self, input_size: Option<(u32, u32)>) -> Result<Option<Resize>, BundleError> {
        Ok(match self.field(keys::RESIZE, str::parse)? {
            Some(Resize::CenterCrop { short_side: 0 }) => {
                let given = self.field(keys::RESIZE_SHORT, |v| {
                    v.parse::<u32>()
                        .map_err(|_| "expected a positive integer".to_string())
                })?;
                // The ImageNet convention: the crop is 87.5% of the short side.
                let default = input_size.map_or(0, |(w, h)| default_short_side(w.max(h)));
                Some(Resize::CenterCrop {
                    short_side: given.unwrap_or(default),
                })
            }
            Some(Resize::Letterbox { .. }) => {
                let fill = match self.floats(keys::LETTERBOX_FILL)? {
                    None => [0, 0, 0],
                    Some(f) if f.len() == 3 && f.iter().all(|x| (0.0..=255.0).contains(x)) => {
                        [f[0] as u8, f[1] as u8, f[2] as u8]
                    }
                    Some(_) => {
                        return Err(self.bad(
                            keys::LETTERBOX_FILL,
                            "expected three values in 0..=255".into(),
                        ))
                    }
                };
                Some(Resize::Letterbox { fill })
            }
            other => other,
        })
    }
}

/// A metadata value that cannot be understood.
#[derive(Debug, thiserror::Error)]
#[error("bad metadata {key} = {value:?}: {reason}")]
pub struct BundleError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// The glimpse metadata of a model file: every field is what the file says, or `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleMeta {
    pub format: Option<u32>,
    pub labels: Option<Vec<String>>,
    pub input_size: Option<(u32, u32)>,
    pub resize: Option<Resize>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub channels: Option<Channels>,
    pub layout: Option<Layout>,
    pub output: Option<OutputKind>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// How the model was produced (command, training data, provenance).
    pub source: Option<String>,
    pub license: Option<String>,
    pub reject: Option<Reject>,
    /// Every other `glimpse.*` key, kept so tools can round-trip them (metrics, etc.).
    pub extra: BTreeMap<String, String>,
}

impl BundleMeta {
    /// A complete description of a model we produce ourselves.
    pub fn describe(preprocess: &Preprocess, labels: Vec<String>, output: OutputKind) -> Self {
        BundleMeta {
            format: Some(FORMAT_VERSION),
            labels: Some(labels),
            input_size: Some((preprocess.width, preprocess.height)),
            resize: Some(preprocess.resize),
            mean: Some(preprocess.mean.clone()),
            std: Some(preprocess.std.clone()),
            channels: Some(preprocess.channels),
            layout: Some(preprocess.layout),
            output: Some(output),
            ..Default::default()
        }
    }

    /// Reads the `glimpse.*` entries of `metadata_props`; other keys are ignored.
    pub fn from_props<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BundleError> {
        let p = Props(
            props
                .into_iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .collect(),
        );
        let input_size = p.field(keys::INPUT_SIZE, parse_size)?;
        let (mean, std) = p.normalization()?;
        Ok(BundleMeta {
            format: p.format()?,
            labels: p.labels()?,
            input_size,
            resize: p.resize(input_size)?,
            mean,
            std,
            channels: p.field(keys::CHANNELS, str::parse)?,
            layout: p.field(keys::LAYOUT, str::parse)?,
            output: p.field(keys::OUTPUT, str::parse)?,
            name: p.text(keys::NAME),
            version: p.text(keys::VERSION),
            source: p.text(keys::SOURCE),
            license: p.text(keys::LICENSE),
            reject: p.field(keys::REJECT, Reject::parse)?,
            extra: p
                .0
                .iter()
                .filter(|(k, _)| !keys::ALL.contains(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// The `metadata_props` entries describing this bundle, in a stable order.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v));
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        put(
            keys::FORMAT,
            self.format.unwrap_or(FORMAT_VERSION).to_string(),
        );
        if let Some(n) = &self.name {
            put(keys::NAME, n.clone());
        }
        if let Some(v) = &self.version {
            put(keys::VERSION, v.clone());
        }
        if let Some((w, h)) = self.input_size {
            put(keys::INPUT_SIZE, format!("{w}x{h}"));
        }
        if let Some(r) = self.resize {
            put(keys::RESIZE, r.to_string());
            match r {
                Resize::CenterCrop { short_side } => {
                    put(keys::RESIZE_SHORT, short_side.to_string())
                }
                Resize::Letterbox { fill } => put(
                    keys::LETTERBOX_FILL,
                    format!("{},{},{}", fill[0], fill[1], fill[2]),
                ),
                Resize::Stretch => {}
            }
        }
        if let Some(m) = &self.mean {
            put(keys::MEAN, join(m));
        }
        if let Some(s) = &self.std {
            put(keys::STD, join(s));
        }
        if let Some(c) = self.channels {
            put(keys::CHANNELS, c.to_string());
        }
        if let Some(l) = self.layout {
            put(keys::LAYOUT, l.to_string());
        }
        if let Some(o) = self.output {
            put(keys::OUTPUT, o.to_string());
        }
        if let Some(s) = &self.source {
            put(keys::SOURCE, s.clone());
        }
        if let Some(l) = &self.license {
            put(keys::LICENSE, l.clone());
        }
        if let Some(r) = &self.reject {
            put(
                keys::REJECT,
                serde_json::to_string(r).expect("a Reject always serializes"),
            );
        }
        for (k, v) in &self.extra {
            put(k, v.clone());
        }
        if let Some(labels) = &self.labels {
            put(
                keys::LABELS,
                serde_json::to_string(labels).expect("strings always serialize"),
            );
        }
        out
    }
}

/// The short side a centre crop of `crop` pixels is cut from by default (crop = 87.5%).
pub fn default_short_side(crop: u32) -> u32 {
    (crop as f64 / 0.875).round() as u32
}

fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imagenet() -> Preprocess {
        Preprocess {
            width: 224,
            height: 224,
            resize: Resize::CenterCrop { short_side: 256 },
            mean: vec![127.0; 3],
            std: vec![128.0; 3],
            channels: Channels::Rgb,
            layout: Layout::Nchw,
        }
    }

    #[test]
    fn round_trips_through_props() {
        let mut meta = BundleMeta::describe(
            &imagenet(),
            vec!["cat".into(), "dog, \"good\"".into()],
            OutputKind::Logits,
        );
        meta.name = Some("m".into());
        meta.reject = Some(Reject {
            score: "cosine_to_class_prototypes".into(),
            output: "glimpse_reject_score".into(),
            threshold: 0.625,
            target_accept: 0.95,
        });
        meta.extra
            .insert("glimpse.metrics.accuracy".into(), "0.93".into());
        let props = meta.to_props();
        let back =
            BundleMeta::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn ignores_foreign_keys_and_converts_scale_offset() {
        let props = [
            ("author", "x"),
            ("glimpse.scale", "0.0078125"),
            ("glimpse.offset", "-1"),
        ];
        let meta = BundleMeta::from_props(props).unwrap();
        assert_eq!(meta.mean, Some(vec![128.0]));
        assert_eq!(meta.std, Some(vec![128.0]));
        assert!(meta.extra.is_empty());
    }

    #[test]
    fn center_crop_defaults_to_87_5_percent() {
        let meta = BundleMeta::from_props([
            ("glimpse.resize", "center-crop"),
            ("glimpse.input_size", "224x224"),
        ])
        .unwrap();
        assert_eq!(meta.resize, Some(Resize::CenterCrop { short_side: 256 }));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("glimpse.labels", "[1,2]"),
            ("glimpse.resize", "squash"),
            ("glimpse.layout", "nchwc"),
            ("glimpse.input_size", "224by224"),
            ("glimpse.mean", "a,b,c"),
            ("glimpse.format", "99"),
            (
                "glimpse.reject",
                r#"{"score": "cosine_to_class_prototypes"}"#,
            ),
            (
                "glimpse.reject",
                r#"{"score": "x", "output": "y", "threshold": null, "target_accept": 0.9}"#,
            ),
        ];
        for (k, v) in cases {
            let err = BundleMeta::from_props([(k, v)]).unwrap_err();
            assert_eq!(err.key, k, "{err}");
            assert!(
                err.to_string().starts_with(&format!("bad metadata {k}")),
                "{err}"
            );
        }
    }
}
