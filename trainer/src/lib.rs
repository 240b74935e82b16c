//! glimpse-trainer: build image classifiers and write them as self-describing ONNX bundles
//! that `glimpse-runtime` runs unchanged.
//!
//! Stages live one per module, in pipeline order: `data` (datasets and splits), `augment`, `balance` (imbalanced classes),
//! `model` (architectures), `training` (the loop, checkpoints), `export` (ONNX bundle and
//! parity check), `eval` (metrics and reports, through the runtime), with `import` for
//! pretrained networks, `transfer` for heads trained on a frozen pretrained backbone and
//! grafted onto it, `quantize` for int8 bundles, `reject` for the calibrated "none of the above", and `onnx` for writing standard ONNX
//! graphs. `pipeline` runs a whole training (from scratch or transfer) end to end.

pub mod augment;
pub mod balance;
pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod export;
pub mod import;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod quantize;
pub mod reject;
pub mod training;
pub mod transfer;
