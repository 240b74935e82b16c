//! How pixels become a tensor: the one definition shared by the runtime and the trainer.
//!
//! A [`Preprocess`] says how big the model input is, how a photo of another shape is
//! fitted to it, how 0–255 pixel values are normalized and in which channel order and
//! memory layout they are laid out. The trainer uses exactly this code to build training
//! batches, so a model sees on the board what it saw while it learned.

use std::fmt;
use std::str::FromStr;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::RgbImage;
use tract_onnx::prelude::{tract_ndarray, Tensor};

/// How an image of arbitrary shape is fitted to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Scale each axis independently (aspect ratio is not kept).
    Stretch,
    /// Scale so the short side is `short_side` pixels, then cut the centre to the input
    /// size (the ImageNet evaluation convention: 256 then 224).
    CenterCrop { short_side: u32 },
    /// Scale the whole image to fit inside the input, centred, padded with `fill`.
    Letterbox { fill: [u8; 3] },
}

/// Channel order of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Rgb,
    Bgr,
    /// One channel, luma by ITU-R BT.601 weights (what PIL's `convert("L")` computes).
    Gray,
}

/// Memory layout of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Largest model input width or height accepted.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// Everything needed to turn a decoded RGB image into the model's input tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    pub width: u32,
    pub height: u32,
    pub resize: Resize,
    /// Per channel, in 0–255 pixel units: `x' = (x - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub channels: Channels,
    pub layout: Layout,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Rgb | Channels::Bgr => 3,
            Channels::Gray => 1,
        }
    }
}

impl Preprocess {
    /// Shape of one image's tensor with a leading batch dimension of `batch`.
    pub fn shape(&self, batch: usize) -> [usize; 4] {
        self.shape_in(self.layout, batch)
    }

    /// [`Self::shape`] in `layout` rather than the model's.
    pub fn shape_in(&self, layout: Layout, batch: usize) -> [usize; 4] {
        let (c, h, w) = (
            self.channels.count(),
            self.height as usize,
            self.width as usize,
        );
        match layout {
            Layout::Nchw => [batch, c, h, w],
            Layout::Nhwc => [batch, h, w, c],
        }
    }

    /// Checks the internal consistency a model file cannot guarantee.
    pub fn validate(&self) -> Result<(), String> {
        let c = self.channels.count();
        if self.width == 0 || self.height == 0 {
            return Err(format!(
                "input size must be positive, got {}x{}",
                self.width, self.height
            ));
        }
        // A model (or a metadata key) asking for a gigapixel input would make every
        // image allocate gigabytes; no image classifier needs more than this.
        if self.width > MAX_INPUT_SIDE || self.height > MAX_INPUT_SIDE {
            return Err(format!(
                "expected an input size of at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}, got {}x{}",
                self.width, self.height
            ));
        }
        if self.mean.len() != c || self.std.len() != c {
            return Err(format!(
                "expected {c} mean and std values for {} input, got {} and {}",
                self.channels,
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
            return Err(format!("std values must be finite and non-zero, got {s}"));
        }
        if let Resize::CenterCrop { short_side } = self.resize {
            if short_side == 0 || short_side > 2 * MAX_INPUT_SIDE {
                return Err(format!(
                    "center-crop short side must be between 1 and {}, got {short_side}",
                    2 * MAX_INPUT_SIDE
                ));
            }
        }
        Ok(())
    }

    /// Fits `img` to the input size as [`Resize`] says, with glimpse's one resampling
    /// filter (see [`resize`]), returning RGB8 pixels.
    pub fn fit(&self, img: &RgbImage, resizer: &mut Resizer) -> RgbImage {
        let (sw, sh) = img.dimensions();
        let (dw, dh) = (self.width, self.height);
        match self.resize {
            Resize::Stretch => resize(img, dw, dh, resizer),
            Resize::CenterCrop { short_side } => {
                // Scale so the short side is `short_side`, but never so small that the
                // crop would not fit (non-square inputs).
                let scale = (short_side as f64 / sw.min(sh) as f64)
                    .max(dw as f64 / sw as f64)
                    .max(dh as f64 / sh as f64);
                let (cw, ch) = (dw as f64 / scale, dh as f64 / scale);
                let region = ((sw as f64 - cw) / 2.0, (sh as f64 - ch) / 2.0, cw, ch);
                self.fit_region(img, region, resizer)
            }
            Resize::Letterbox { fill } => {
                let (iw, ih) = self.letterbox_inner((sw, sh));
                self.pad(&resize(img, iw, ih, resizer), fill)
            }
        }
    }

    /// The size a letterboxed image of `(sw, sh)` is scaled to inside the input size.
    fn letterbox_inner(&self, (sw, sh): (u32, u32)) -> (u32, u32) {
        let (dw, dh) = (self.width, self.height);
        let scale = (dw as f64 / sw as f64).min(dh as f64 / sh as f64);
        let iw = ((sw as f64 * scale).round() as u32).clamp(1, dw);
        let ih = ((sh as f64 * scale).round() as u32).clamp(1, dh);
        (iw, ih)
    }

    /// `inner` centred on the input size, the rest `fill`.
    fn pad(&self, inner: &RgbImage, fill: [u8; 3]) -> RgbImage {
        let (dw, dh) = (self.width, self.height);
        let (iw, ih) = inner.dimensions();
        let mut out = RgbImage::from_pixel(dw, dh, image::Rgb(fill));
        image::imageops::replace(
            &mut out,
            inner,
            ((dw - iw) / 2).into(),
            ((dh - ih) / 2).into(),
        );
        out
    }

    /// [`Self::fit`] for a stored image that `orientation` (EXIF) turns upright: fits it
    /// in its own frame (the input size turned with it), then turns the small result.
    /// The same crop and scale as fitting the upright image, without a full-size turned
    /// copy; only the order of the two resampling passes differs (values within 1 of 255).
    pub fn fit_oriented(
        &self,
        img: &RgbImage,
        orientation: Orientation,
        resizer: &mut Resizer,
    ) -> RgbImage {
        use Orientation::*;
        let swaps = matches!(
            orientation,
            Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
        );
        let turn = |fitted: RgbImage| {
            let mut turned = image::DynamicImage::ImageRgb8(fitted);
            turned.apply_orientation(orientation);
            turned.into_rgb8()
        };
        let (w, h) = img.dimensions();
        match (orientation, self.resize) {
            (NoTransforms, _) => self.fit(img, resizer),
            // The padding is placed in the upright frame (an odd margin would otherwise
            // move to the other side): only the scaled picture is turned.
            (_, Resize::Letterbox { fill }) => {
                let (iw, ih) = self.letterbox_inner(if swaps { (h, w) } else { (w, h) });
                let (rw, rh) = if swaps { (ih, iw) } else { (iw, ih) };
                self.pad(&turn(resize(img, rw, rh, resizer)), fill)
            }
            _ if swaps => turn(
                Preprocess {
                    width: self.height,
                    height: self.width,
                    ..self.clone()
                }
                .fit(img, resizer),
            ),
            _ => turn(self.fit(img, resizer)),
        }
    }

    /// Resizes the region `(left, top, width, height)` of `img` (in pixels, fractions
    /// allowed) to exactly the input size: the centre crop, and augmentation's random
    /// crops.
    pub fn fit_region(
        &self,
        img: &RgbImage,
        (left, top, width, height): (f64, f64, f64, f64),
        resizer: &mut Resizer,
    ) -> RgbImage {
        let opts = ResizeOptions::new()
            .resize_alg(FILTER)
            .crop(left, top, width, height);
        resize_with(img, self.width, self.height, &opts, resizer)
    }

    /// Normalizes fitted RGB8 pixels (exactly `width` x `height`) into `out`, one image's
    /// worth of the input tensor (`C*H*W` values) in the model's layout and channel order.
    pub fn normalize_into(&self, fitted: &RgbImage, out: &mut [f32]) {
        self.normalize_in(self.layout, fitted, out)
    }

    /// [`Self::normalize_into`] in `layout` rather than the model's. Each layout and
    /// channel count has its own loop, with no branch per value, so that it vectorizes;
    /// every value is `(v - mean) * (1 / std)` in all of them.
    pub fn normalize_in(&self, layout: Layout, fitted: &RgbImage, out: &mut [f32]) {
        let c = self.channels.count();
        assert_eq!(
            fitted.dimensions(),
            (self.width, self.height),
            "image not fitted to the input size"
        );
        assert_eq!(
            out.len(),
            c * fitted.len() / 3,
            "output slice does not hold one image"
        );
        // Precompute 1/std so the inner loop multiplies instead of dividing.
        let inv: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        let pixels = fitted.as_raw().chunks_exact(3);
        let order: [usize; 3] = match self.channels {
            Channels::Gray => {
                for (o, px) in out.iter_mut().zip(pixels) {
                    *o = (luma([px[0], px[1], px[2]].map(f32::from)) - self.mean[0]) * inv[0];
                }
                return;
            }
            Channels::Bgr => [2, 1, 0],
            Channels::Rgb => [0, 1, 2],
        };
        let (mean, inv): ([f32; 3], [f32; 3]) = (
            std::array::from_fn(|ch| self.mean[ch]),
            std::array::from_fn(|ch| inv[ch]),
        );
        match layout {
            Layout::Nhwc => {
                for (o, px) in out.chunks_exact_mut(3).zip(pixels) {
                    for ch in 0..3 {
                        o[ch] = (px[order[ch]] as f32 - mean[ch]) * inv[ch];
                    }
                }
            }
            Layout::Nchw => {
                let planes = out.chunks_exact_mut(out.len() / 3);
                for (ch, plane) in planes.enumerate() {
                    for (o, px) in plane.iter_mut().zip(pixels.clone()) {
                        *o = (px[order[ch]] as f32 - mean[ch]) * inv[ch];
                    }
                }
            }
        }
    }

    /// Fits and normalizes a batch of images into one input tensor `[N, ...]`.
    pub fn to_tensor(&self, images: &[&RgbImage], resizer: &mut Resizer) -> Tensor {
        let oriented: Vec<_> = images
            .iter()
            .map(|i| (*i, Orientation::NoTransforms))
            .collect();
        self.to_tensor_oriented(&oriented, resizer)
    }

    /// [`Self::to_tensor`] for stored images each turned upright by its orientation
    /// ([`Self::fit_oriented`]).
    pub fn to_tensor_oriented(
        &self,
        images: &[(&RgbImage, Orientation)],
        resizer: &mut Resizer,
    ) -> Tensor {
        self.to_tensor_in(self.layout, images, resizer)
    }

    /// [`Self::to_tensor_oriented`] in `layout` rather than the model's.
    pub fn to_tensor_in(
        &self,
        layout: Layout,
        images: &[(&RgbImage, Orientation)],
        resizer: &mut Resizer,
    ) -> Tensor {
        let shape = self.shape_in(layout, images.len());
        let per = shape[1..].iter().product::<usize>();
        let mut data = vec![0f32; per * images.len()];
        for ((img, orientation), chunk) in images.iter().zip(data.chunks_exact_mut(per)) {
            let fitted = self.fit_oriented(img, *orientation, resizer);
            self.normalize_in(layout, &fitted, chunk);
        }
        tract_ndarray::Array4::from_shape_vec(shape, data)
            .expect("buffer length matches the shape by construction")
            .into()
    }
}

/// The one resampling filter of every resize glimpse does, on the board and in training:
/// antialiased bilinear (a convolution over every source pixel a target pixel covers, the
/// family Pillow and torchvision use).
const FILTER: ResizeAlg = ResizeAlg::Convolution(FilterType::Bilinear);

/// Luma by ITU-R BT.601 weights (what PIL's `convert("L")` computes), on 0–255 values;
/// exact for grey pixels, so a grey image expanded to RGB comes back unchanged.
pub fn luma([r, g, b]: [f32; 3]) -> f32 {
    if r == g && g == b {
        r
    } else {
        0.299 * r + 0.587 * g + 0.114 * b
    }
}

/// Resizes `img` to exactly `w` x `h` with glimpse's one filter.
pub fn resize(img: &RgbImage, w: u32, h: u32, resizer: &mut Resizer) -> RgbImage {
    resize_with(img, w, h, &ResizeOptions::new().resize_alg(FILTER), resizer)
}

fn resize_with(
    img: &RgbImage,
    w: u32,
    h: u32,
    opts: &ResizeOptions,
    resizer: &mut Resizer,
) -> RgbImage {
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer always matches its dimensions");
    let mut dst = Image::new(w, h, PixelType::U8x3);
    resizer
        .resize(&src, &mut dst, opts)
        .expect("source and destination are both U8x3 and non-empty");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("resizer output matches its dimensions")
}

impl fmt::Display for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channels::Rgb => "rgb",
            Channels::Bgr => "bgr",
            Channels::Gray => "gray",
        })
    }
}

impl FromStr for Channels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rgb" => Ok(Channels::Rgb),
            "bgr" => Ok(Channels::Bgr),
            "gray" | "grey" | "l" => Ok(Channels::Gray),
            _ => Err(format!("expected rgb, bgr or gray, got {s:?}")),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(format!("expected nchw or nhwc, got {s:?}")),
        }
    }
}

/// The resize mode's name, as stored in `glimpse.resize` (parameters live in other keys).
impl fmt::Display for Resize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resize::Stretch => "stretch",
            Resize::CenterCrop { .. } => "center-crop",
            Resize::Letterbox { .. } => "letterbox",
        })
    }
}

/// `stretch`, `letterbox` (black fill), `center-crop` (short side 0: the default 87.5%
/// crop) or `center-crop:SHORT_SIDE`.
impl FromStr for Resize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mode, arg) = s.split_once(':').map_or((s, None), |(m, a)| (m, Some(a)));
        match (mode.trim(), arg) {
            ("stretch", None) => Ok(Resize::Stretch),
            ("letterbox", None) => Ok(Resize::Letterbox { fill: [0, 0, 0] }),
            ("center-crop", None) => Ok(Resize::CenterCrop { short_side: 0 }),
            ("center-crop", Some(n)) => match n.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(Resize::CenterCrop { short_side: n }),
                _ => Err(format!(
                    "expected center-crop:SHORT_SIDE with a positive integer, got {s:?}"
                )),
            },
            _ => Err(format!(
                "expected stretch, center-crop[:SHORT_SIDE] or letterbox, got {s:?}"
            )),
        }
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, h) = (self.width, self.height);
        match self.resize {
            Resize::Stretch => write!(f, "stretch to {w}x{h}")?,
            Resize::CenterCrop { short_side } => {
                write!(f, "resize short side to {short_side}, center-crop {w}x{h}")?
            }
            Resize::Letterbox { fill } => write!(f, "letterbox into {w}x{h} (fill {fill:?})")?,
        }
        write!(
            f,
            ", {}, {}, (x - {:?}) / {:?}",
            self.channels.to_string().to_uppercase(),
            self.layout.to_string().to_uppercase(),
            self.mean,
            self.std
        )
    }
}

/// Parses a comma-separated list of numbers such as `127,127,127` or `0.5`.
pub fn parse_floats(s: &str) -> Result<Vec<f32>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| format!("expected comma-separated numbers, got {s:?}"))
        })
        .collect()
}

/// Parses a size `WxH` (or a single number for a square).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("expected a size like 224x224, got {s:?}");
    let (w, h) = match s.split_once(['x', 'X']) {
        Some((w, h)) => (
            w.trim().parse().map_err(|_| err())?,
            h.trim().parse().map_err(|_| err())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| err())?;
            (n, n)
        }
    };
    if w == 0 || h == 0 {
        return Err(err());
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(resize: Resize, channels: Channels, layout: Layout) -> Preprocess {
        let c = channels.count();
        Preprocess {
            width: 4,
            height: 2,
            resize,
            mean: vec![10.0; c],
            std: vec![2.0; c],
            channels,
            layout,
        }
    }

    #[test]
    fn normalize_orders_channels_and_layout() {
        let img = RgbImage::from_fn(4, 2, |x, y| {
            image::Rgb([x as u8 * 10 + 12, y as u8 + 20, 30])
        });
        let p = pp(Resize::Stretch, Channels::Bgr, Layout::Nchw);
        let mut out = vec![0.0; 24];
        p.normalize_into(&img, &mut out);
        // channel 0 is blue (30 - 10) / 2 everywhere
        assert!(out[..8].iter().all(|v| *v == 10.0));
        // channel 2 is red: first row x = 0..4
        assert_eq!(&out[16..20], &[1.0, 6.0, 11.0, 16.0]);

        let p = pp(Resize::Stretch, Channels::Rgb, Layout::Nhwc);
        p.normalize_into(&img, &mut out);
        // pixel (1, 0): r = 22, g = 20, b = 30
        assert_eq!(&out[3..6], &[6.0, 5.0, 10.0]);
    }

    /// The channel-last loop the classifier feeds its plan with and the channel-first one
    /// write the same values, bit for bit, each at its place.
    #[test]
    fn both_layouts_hold_the_same_values() {
        let img = RgbImage::from_fn(4, 2, |x, y| {
            image::Rgb([(x * 61 + y * 7) as u8, (x * 13 + 200) as u8, (y * 97) as u8])
        });
        for channels in [Channels::Rgb, Channels::Bgr, Channels::Gray] {
            let mut p = pp(Resize::Stretch, channels, Layout::Nchw);
            p.mean = [123.7, 116.3, 103.5][..channels.count()].to_vec();
            p.std = [58.4, 57.1, 57.4][..channels.count()].to_vec();
            let c = channels.count();
            let (mut first, mut last) = (vec![0.0; 8 * c], vec![0.0; 8 * c]);
            p.normalize_in(Layout::Nchw, &img, &mut first);
            p.normalize_in(Layout::Nhwc, &img, &mut last);
            for i in 0..8 {
                for ch in 0..c {
                    assert_eq!(first[ch * 8 + i].to_bits(), last[i * c + ch].to_bits());
                }
            }
            let px = img.as_raw()[3..6].to_vec();
            let v = |ch: usize| match channels {
                Channels::Rgb => px[ch] as f32,
                Channels::Bgr => px[2 - ch] as f32,
                Channels::Gray => luma([px[0], px[1], px[2]].map(f32::from)),
            };
            for ch in 0..c {
                assert_eq!(last[c + ch], (v(ch) - p.mean[ch]) * (1.0 / p.std[ch]));
            }
        }
    }

    #[test]
    fn gray_uses_bt601_luma() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50]));
        let p = pp(Resize::Stretch, Channels::Gray, Layout::Nchw);
        let mut out = vec![0.0; 8];
        p.normalize_into(&img, &mut out);
        let luma = 0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0;
        assert!((out[0] - (luma - 10.0) / 2.0).abs() < 1e-4);
    }

    #[test]
    fn fitting_before_turning_matches_turning_before_fitting() {
        use image::metadata::Orientation::*;
        // A wide photo stored sideways, every pixel different.
        let stored = RgbImage::from_fn(96, 60, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 4) as u8, ((x * y) % 251) as u8])
        });
        for resize in [
            Resize::CenterCrop { short_side: 40 },
            Resize::Stretch,
            Resize::Letterbox { fill: [0, 0, 0] },
        ] {
            let mut p = pp(resize, Channels::Rgb, Layout::Nchw);
            (p.width, p.height) = (36, 28);
            for orientation in [
                Rotate90,
                Rotate180,
                Rotate270,
                FlipHorizontal,
                Rotate90FlipH,
            ] {
                let mut upright = image::DynamicImage::ImageRgb8(stored.clone());
                upright.apply_orientation(orientation);
                let want = p.fit(&upright.into_rgb8(), &mut Resizer::new());
                let got = p.fit_oriented(&stored, orientation, &mut Resizer::new());
                assert_eq!(
                    got.dimensions(),
                    want.dimensions(),
                    "{resize:?} {orientation:?}"
                );
                let worst = got
                    .as_raw()
                    .iter()
                    .zip(want.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(worst <= 1, "{resize:?} {orientation:?}: off by {worst}");
            }
        }
    }

    #[test]
    fn center_crop_keeps_the_centre() {
        // Left third red, middle green, right third blue: a centre crop of a wide image
        // must be all green.
        let img = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let mut p = pp(
            Resize::CenterCrop { short_side: 64 },
            Channels::Rgb,
            Layout::Nchw,
        );
        (p.width, p.height) = (56, 56);
        let fitted = p.fit(&img, &mut Resizer::new());
        assert_eq!(fitted.dimensions(), (56, 56));
        assert!(
            fitted.pixels().all(|px| px.0 == [0, 255, 0]),
            "centre crop saw the sides"
        );
    }

    #[test]
    fn letterbox_pads_with_fill() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([255, 255, 255]));
        let mut p = pp(
            Resize::Letterbox { fill: [0, 0, 0] },
            Channels::Rgb,
            Layout::Nchw,
        );
        (p.width, p.height) = (50, 50);
        let fitted = p.fit(&img, &mut Resizer::new());
        assert_eq!(fitted.get_pixel(25, 2).0, [0, 0, 0], "top band is padding");
        assert_eq!(
            fitted.get_pixel(25, 25).0,
            [255, 255, 255],
            "middle is the image"
        );
    }

    #[test]
    fn parses_sizes_and_lists() {
        assert_eq!(parse_size("224x160"), Ok((224, 160)));
        assert_eq!(parse_size("96"), Ok((96, 96)));
        assert!(parse_size("0x3").is_err());
        assert!(parse_size("big").is_err());
        assert_eq!(parse_floats("1, 2.5,3"), Ok(vec![1.0, 2.5, 3.0]));
        assert!(parse_floats("1,,2").is_err());
    }

    #[test]
    fn validate_rejects_inconsistent_settings() {
        let mut p = pp(Resize::Stretch, Channels::Rgb, Layout::Nchw);
        assert!(p.validate().is_ok());
        p.mean = vec![1.0];
        assert!(p.validate().unwrap_err().contains("expected 3 mean"));
        let mut p = pp(Resize::Stretch, Channels::Gray, Layout::Nchw);
        p.std = vec![0.0];
        assert!(p.validate().is_err());
    }
}
