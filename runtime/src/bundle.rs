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
    ];
}

/// What the model's output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Unnormalized scores; glimpse applies a softmax.
    Logits,
    /// Already probabilities (the graph ends in a softmax); used as they are.
    Probabilities,
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
        let map: BTreeMap<&str, &str> = props
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .collect();
        let get = |k: &str| map.get(k).copied();
        let bad = |key: &str, value: &str, reason: String| BundleError {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        // Parses an optional key, naming key and value in the error.
        fn field<T>(
            map: &BTreeMap<&str, &str>,
            key: &str,
            f: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, BundleError> {
            map.get(key)
                .map(|v| {
                    f(v.trim()).map_err(|reason| BundleError {
                        key: key.into(),
                        value: v.to_string(),
                        reason,
                    })
                })
                .transpose()
        }

        let mut meta = BundleMeta::default();
        if let Some(v) = get(keys::FORMAT) {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad(keys::FORMAT, v, "expected an integer".into()))?;
            if n > FORMAT_VERSION {
                return Err(bad(
                    keys::FORMAT,
                    v,
                    format!("this glimpse reads bundle format {FORMAT_VERSION} and older; upgrade glimpse"),
                ));
            }
            meta.format = Some(n);
        }
        if let Some(v) = get(keys::LABELS) {
            let labels: Vec<String> = serde_json::from_str(v).map_err(|e| {
                bad(
                    keys::LABELS,
                    &truncate(v),
                    format!("expected a JSON array of strings: {e}"),
                )
            })?;
            meta.labels = Some(labels);
        }
        meta.input_size = field(&map, keys::INPUT_SIZE, parse_size)?;

        let mut floats = BTreeMap::new();
        for key in [
            keys::MEAN,
            keys::STD,
            keys::SCALE,
            keys::OFFSET,
            keys::LETTERBOX_FILL,
        ] {
            if let Some(v) = get(key) {
                floats.insert(key, parse_floats(v).map_err(|e| bad(key, v, e))?);
            }
        }
        meta.mean = floats.get(keys::MEAN).cloned();
        meta.std = floats.get(keys::STD).cloned();
        // scale/offset (x * scale + offset) is the other common way to state the same
        // affine map: mean = -offset / scale, std = 1 / scale.
        if let (None, None, Some(scale)) = (&meta.mean, &meta.std, floats.get(keys::SCALE)) {
            let offset = floats
                .get(keys::OFFSET)
                .cloned()
                .unwrap_or_else(|| vec![0.0; scale.len()]);
            if offset.len() != scale.len() {
                return Err(bad(
                    keys::OFFSET,
                    get(keys::OFFSET).unwrap_or(""),
                    format!("expected {} values to match glimpse.scale", scale.len()),
                ));
            }
            meta.mean = Some(scale.iter().zip(&offset).map(|(s, o)| -o / s).collect());
            meta.std = Some(scale.iter().map(|s| 1.0 / s).collect());
        }

        if let Some(v) = get(keys::RESIZE) {
            meta.resize = Some(match v.trim() {
                "stretch" => Resize::Stretch,
                "center-crop" => {
                    let short_side = match get(keys::RESIZE_SHORT) {
                        Some(s) => s.trim().parse().map_err(|_| {
                            bad(keys::RESIZE_SHORT, s, "expected a positive integer".into())
                        })?,
                        // The ImageNet convention: the crop is 87.5% of the short side.
                        None => meta
                            .input_size
                            .map(|(w, h)| default_short_side(w.max(h)))
                            .unwrap_or(0),
                    };
                    Resize::CenterCrop { short_side }
                }
                "letterbox" => {
                    let fill = match floats.get(keys::LETTERBOX_FILL) {
                        None => [0, 0, 0],
                        Some(f) if f.len() == 3 && f.iter().all(|x| (0.0..=255.0).contains(x)) => {
                            [f[0] as u8, f[1] as u8, f[2] as u8]
                        }
                        Some(_) => {
                            let v = get(keys::LETTERBOX_FILL).unwrap_or("");
                            return Err(bad(
                                keys::LETTERBOX_FILL,
                                v,
                                "expected three values in 0..=255".into(),
                            ));
                        }
                    };
                    Resize::Letterbox { fill }
                }
                _ => {
                    return Err(bad(
                        keys::RESIZE,
                        v,
                        "expected stretch, center-crop or letterbox".into(),
                    ))
                }
            });
        }
        meta.channels = field(&map, keys::CHANNELS, str::parse)?;
        meta.layout = field(&map, keys::LAYOUT, str::parse)?;
        if let Some(v) = get(keys::OUTPUT) {
            meta.output = Some(match v.trim() {
                "logits" => OutputKind::Logits,
                "probabilities" => OutputKind::Probabilities,
                _ => {
                    return Err(bad(
                        keys::OUTPUT,
                        v,
                        "expected logits or probabilities".into(),
                    ))
                }
            });
        }
        meta.name = get(keys::NAME).map(str::to_string);
        meta.version = get(keys::VERSION).map(str::to_string);
        meta.source = get(keys::SOURCE).map(str::to_string);
        meta.license = get(keys::LICENSE).map(str::to_string);
        meta.extra = map
            .iter()
            .filter(|(k, _)| !keys::ALL.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(meta)
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
            put(
                keys::OUTPUT,
                match o {
                    OutputKind::Logits => "logits",
                    OutputKind::Probabilities => "probabilities",
                }
                .to_string(),
            );
        }
        if let Some(s) = &self.source {
            put(keys::SOURCE, s.clone());
        }
        if let Some(l) = &self.license {
            put(keys::LICENSE, l.clone());
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
