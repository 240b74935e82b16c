//! glimpse-runtime: classify images on the CPU with self-describing ONNX model bundles.
//!
//! The pipeline is `decode` (bytes → upright RGB8, with limits) → `preprocess` (RGB8 →
//! input tensor, as the bundle metadata in `bundle` says) → `classifier` (tract plan →
//! probabilities → ranked labels). The trainer depends on this crate for the same
//! preprocessing and inference, never the other way round.
//!
//! Features: `stream` (live frame sources and the capture/classify loop), `camera` (V4L2,
//! implies `stream`), `serve` (the daemon, implies `stream`) and `cli` (the `glimpse`
//! binary). The defaults are `cli` and `serve`; with `default-features = false` this is
//! the classifier library alone (decode, preprocess, run, rank).

pub mod bundle;
pub mod classifier;
pub mod crop;
pub mod decode;
pub mod error;
pub mod fsutil;
pub mod onnx_file;
pub mod plan;
pub mod preprocess;
mod quant_check;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "stream")]
pub mod stream;

pub use bundle::{BundleMeta, OutputKind, Reject};
pub use classifier::{Classifier, Overrides, Ranked, Timings};
pub use crop::{Crop, CropError};
pub use decode::{decode, DecodeError, Limits};
pub use error::{Error, Result};
pub use onnx_file::OnnxFile;
pub use plan::{Feed, Plan};
pub use preprocess::{Channels, Layout, Preprocess, Resize};

/// Keeps error values from capturing backtraces (`RUST_LIB_BACKTRACE=0`) unless the user
/// asked for them by that name; call first thing in `main`, before any thread starts.
/// tract reports many errors to itself while it optimizes a model (every rewrite that
/// does not apply), and with `RUST_BACKTRACE=1` in the environment anyhow captured a
/// backtrace for each: loading EfficientNet-Lite0 cost 8.0 G ARM instructions instead of
/// 1.3 G (qemu, Cortex-A76). Panics still print their backtrace under `RUST_BACKTRACE`.
pub fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// File name of the model glimpse uses when no `--model` is given.
pub const DEFAULT_MODEL: &str = "efficientnet-lite0.onnx";

/// Where to look for the default model, in order: `$GLIMPSE_MODEL`, next to the
/// executable, the installed share directory, and this source tree's `models/`.
pub fn default_model_candidates() -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("GLIMPSE_MODEL") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
    {
        out.push(dir.join(DEFAULT_MODEL));
        out.push(dir.join("../share/glimpse/models").join(DEFAULT_MODEL));
    }
    out.push(PathBuf::from("/usr/share/glimpse/models").join(DEFAULT_MODEL));
    out.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).join(DEFAULT_MODEL));
    out
}
