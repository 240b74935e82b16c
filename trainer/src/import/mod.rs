//! Importing pretrained networks from other frameworks' checkpoints into ONNX bundles.

pub mod checkpoint;
pub mod efficientnet_lite;

/// The 1,000 ImageNet-1k class names in the standard index order, from the npm package
/// `@tensorflow-models/mobilenet` 2.1.1 (`dist/imagenet_classes.js`, Apache-2.0).
pub const IMAGENET_LABELS: &str = include_str!("imagenet-labels.txt");

pub fn imagenet_labels() -> Vec<String> {
    IMAGENET_LABELS.lines().map(str::to_string).collect()
}
