//! glimpse-trainer: build image classifiers and write them as self-describing ONNX bundles
//! that `glimpse-runtime` runs unchanged.
//!
//! Stages live one per module: `import` brings in pretrained networks (EfficientNet-Lite0
//! from a PyTorch checkpoint), `onnx` writes standard ONNX graphs with the bundle metadata.

pub mod import;
pub mod onnx;
