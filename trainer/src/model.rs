//! The trainable architectures: a small CNN for low-resolution images and a MobileNet-style
//! network (depthwise-separable blocks) for photos. Both are made only of layers the ONNX
//! export in `export.rs` writes (Conv + folded BatchNorm, ReLU, MaxPool, global average
//! pool, Linear), so what trains is what ships.
//!
//! burn 0.22 has no backend type parameter: a module is backend-neutral and autodiff is a
//! property of the device its parameters live on. Training builds the model on
//! `Device::flex().autodiff()`; evaluation and export use `model.valid()`, the same
//! weights without autodiff (dropout off, batch norm on its running statistics).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Which network to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Conv-conv-pool stages then two dense layers: for small inputs (28x28 .. 64x64).
    SmallCnn,
    /// Strided stem then depthwise-separable blocks, global average pool: for photos.
    Mobilenet,
}

#[derive(Config, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub classes: usize,
    pub in_channels: usize,
    /// Input `[height, width]`.
    pub input_size: [usize; 2],
    /// Channel multiplier.
    #[config(default = 1.0)]
    pub width: f32,
    #[config(default = 0.25)]
    pub dropout: f64,
}

/// 3x3 (or 1x1) convolution without bias, batch norm, optional ReLU.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub relu: bool,
}

impl ConvBn {
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        device: &Device,
    ) -> Self {
        let p = kernel / 2;
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_groups(groups)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
            relu: true,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.bn.forward(self.conv.forward(x));
        if self.relu {
            Relu::new().forward(y)
        } else {
            y
        }
    }
}

/// One step of the network, in order; the export walks the same list.
// A network has a few dozen layers at most: the size difference costs nothing, and the
// burn `Module` derive works on the plain variants.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Layer {
    ConvBn(ConvBn),
    MaxPool(MaxPool2d),
}

#[derive(Module, Debug)]
pub struct Classifier {
    pub features: Vec<Layer>,
    /// Global average pool before the head (MobileNet); the small CNN flattens instead.
    pub global_pool: Option<AdaptiveAvgPool2d>,
    pub dropout: Dropout,
    /// Hidden dense layer (small CNN only), followed by ReLU and dropout.
    pub hidden: Option<Linear>,
    pub head: Linear,
}

impl ModelConfig {
    fn ch(&self, c: usize) -> usize {
        ((c as f32 * self.width).round() as usize).max(4)
    }

    pub fn init(&self, device: &Device) -> Classifier {
        let [h, w] = self.input_size;
        let mut features = Vec::new();
        let mut c_in = self.in_channels;
        let dropout = DropoutConfig::new(self.dropout).init();
        match self.arch {
            Arch::SmallCnn => {
                // [N,C,H,W] -> stages of (conv3x3, conv3x3, maxpool2) until the map is at
                // most 8x8, doubling channels: 28x28 -> 14x14 -> 7x7.
                let (mut side_h, mut side_w, mut c) = (h, w, self.ch(32));
                for _ in 0..4 {
                    features.push(Layer::ConvBn(ConvBn::new(c_in, c, 3, 1, 1, device)));
                    features.push(Layer::ConvBn(ConvBn::new(c, c, 3, 1, 1, device)));
                    features.push(Layer::MaxPool(MaxPool2dConfig::new([2, 2]).init()));
                    (side_h, side_w, c_in) = (side_h / 2, side_w / 2, c);
                    c *= 2;
                    if side_h.max(side_w) <= 8 {
                        break;
                    }
                }
                // Flatten [N, c_in, side_h, side_w] -> dense -> classes.
                let flat = c_in * side_h.max(1) * side_w.max(1);
                let hidden = self.ch(128);
                Classifier {
                    features,
                    global_pool: None,
                    dropout,
                    hidden: Some(LinearConfig::new(flat, hidden).init(device)),
                    head: LinearConfig::new(hidden, self.classes).init(device),
                }
            }
            Arch::Mobilenet => {
                // Stem: [N,C,H,W] -> [N,32w,H/2,W/2]; then depthwise 3x3 + pointwise 1x1
                // blocks; stride-2 blocks halve the map: /32 in all.
                let stem = self.ch(32);
                features.push(Layer::ConvBn(ConvBn::new(c_in, stem, 3, 2, 1, device)));
                c_in = stem;
                let blocks = [
                    (64, 1),
                    (128, 2),
                    (128, 1),
                    (256, 2),
                    (256, 1),
                    (512, 2),
                    (512, 1),
                    (512, 1),
                    (1024, 2),
                ];
                for (c, stride) in blocks {
                    let c = self.ch(c);
                    features.push(Layer::ConvBn(ConvBn::new(
                        c_in, c_in, 3, stride, c_in, device,
                    )));
                    features.push(Layer::ConvBn(ConvBn::new(c_in, c, 1, 1, 1, device)));
                    c_in = c;
                }
                Classifier {
                    features,
                    global_pool: Some(AdaptiveAvgPool2dConfig::new([1, 1]).init()),
                    dropout,
                    hidden: None,
                    head: LinearConfig::new(c_in, self.classes).init(device),
                }
            }
        }
    }
}

impl Classifier {
    /// `[N, C, H, W]` images -> `[N, classes]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for layer in &self.features {
            x = match layer {
                Layer::ConvBn(c) => c.forward(x),
                Layer::MaxPool(p) => p.forward(x),
            };
        }
        if let Some(pool) = &self.global_pool {
            x = pool.forward(x);
        }
        let mut x: Tensor<2> = x.flatten(1, 3);
        if let Some(hidden) = &self.hidden {
            x = Relu::new().forward(hidden.forward(self.dropout.forward(x)));
        }
        self.head.forward(self.dropout.forward(x))
    }
}
