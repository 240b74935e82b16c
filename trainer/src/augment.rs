//! Training-time augmentation: random resized crop, horizontal flip, small rotation and
//! colour jitter, each switchable, through the runtime's `Preprocess` (its region fit,
//! filter and luma). Evaluation never augments: it uses `Preprocess::fit`, exactly what
//! the board does.

use fast_image_resize::Resizer;
use glimpse_runtime::preprocess::luma;
use glimpse_runtime::Preprocess;
use image::RgbImage;
use rand::{Rng, RngExt};

/// Which augmentations run, and how strong they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random resized crop: the crop covers this fraction of the image area or more
    /// (1.0 turns it off).
    pub crop_scale_min: f32,
    pub flip: bool,
    /// Maximum rotation in degrees, either way (0 turns it off).
    pub rotate_degrees: f32,
    /// Brightness, contrast and saturation vary by up to this fraction (0 turns it off).
    pub color_jitter: f32,
}

impl Augment {
    pub const NONE: Augment = Augment {
        crop_scale_min: 1.0,
        flip: false,
        rotate_degrees: 0.0,
        color_jitter: 0.0,
    };

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// Produces one augmented training view of `img`, fitted to the model input size.
    pub fn apply(
        &self,
        img: &RgbImage,
        pp: &Preprocess,
        rng: &mut impl Rng,
        resizer: &mut Resizer,
    ) -> RgbImage {
        let mut out = if self.crop_scale_min < 1.0 {
            self.random_crop(img, pp, rng, resizer)
        } else {
            pp.fit(img, resizer)
        };
        if self.flip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.rotate_degrees > 0.0 {
            let deg = rng.random_range(-self.rotate_degrees..=self.rotate_degrees);
            out = rotate(&out, deg.to_radians());
        }
        if self.color_jitter > 0.0 {
            let j = self.color_jitter;
            let mut f = || rng.random_range(1.0 - j..=1.0 + j);
            jitter(&mut out, f(), f(), f());
        }
        out
    }

    /// A crop of random area (`crop_scale_min`..1 of the image) and aspect ratio (3/4..4/3,
    /// log-uniform), resized to the input size: the Inception / torchvision recipe.
    fn random_crop(
        &self,
        img: &RgbImage,
        pp: &Preprocess,
        rng: &mut impl Rng,
        resizer: &mut Resizer,
    ) -> RgbImage {
        let (w, h) = (img.width() as f64, img.height() as f64);
        let area = w * h;
        let (mut cw, mut ch) = (w, h);
        for _ in 0..10 {
            let s = rng.random_range(self.crop_scale_min as f64..=1.0);
            let r = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
            let (tw, th) = ((s * area * r).sqrt(), (s * area / r).sqrt());
            if tw <= w && th <= h {
                (cw, ch) = (tw, th);
                break;
            }
        }
        let left = rng.random_range(0.0..=(w - cw).max(0.0));
        let top = rng.random_range(0.0..=(h - ch).max(0.0));
        pp.fit_region(img, (left, top, cw, ch), resizer)
    }
}

/// Rotates about the centre with bilinear sampling; corners are filled from the nearest edge.
fn rotate(img: &RgbImage, radians: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = radians.sin_cos();
    let px = |x: i64, y: i64| {
        img.get_pixel(
            x.clamp(0, w as i64 - 1) as u32,
            y.clamp(0, h as i64 - 1) as u32,
        )
        .0
    };
    RgbImage::from_fn(w, h, |x, y| {
        // Inverse map: where in the source does this output pixel come from?
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let (a, b, c, d) = (
            px(x0, y0),
            px(x0 + 1, y0),
            px(x0, y0 + 1),
            px(x0 + 1, y0 + 1),
        );
        let mut out = [0u8; 3];
        for i in 0..3 {
            let top = a[i] as f32 * (1.0 - fx) + b[i] as f32 * fx;
            let bottom = c[i] as f32 * (1.0 - fx) + d[i] as f32 * fx;
            out[i] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(out)
    })
}

/// Scales brightness, then contrast around the mean grey, then saturation around each
/// pixel's grey.
fn jitter(img: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    let pixels = (img.width() * img.height()).max(1) as f32;
    let mean = img.pixels().map(|p| luma(p.0.map(f32::from))).sum::<f32>() / pixels;
    for p in img.pixels_mut() {
        let mut v = p.0.map(|c| c as f32 * brightness);
        v = v.map(|c| (c - mean * brightness) * contrast + mean * brightness);
        let g = luma(v);
        p.0 = v.map(|c| ((c - g) * saturation + g).round().clamp(0.0, 255.0) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_runtime::{Channels, Layout, Resize};
    use rand::SeedableRng;

    fn pp() -> Preprocess {
        Preprocess {
            width: 32,
            height: 24,
            resize: Resize::Stretch,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            channels: Channels::Rgb,
            layout: Layout::Nchw,
        }
    }

    #[test]
    fn every_augmentation_yields_the_input_size_and_is_seeded() {
        let img = RgbImage::from_fn(100, 60, |x, y| image::Rgb([x as u8, y as u8, 99]));
        let aug = Augment {
            crop_scale_min: 0.5,
            flip: true,
            rotate_degrees: 10.0,
            color_jitter: 0.3,
        };
        let mut r = Resizer::new();
        let a = aug.apply(
            &img,
            &pp(),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            &mut r,
        );
        let b = aug.apply(
            &img,
            &pp(),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            &mut r,
        );
        assert_eq!(a.dimensions(), (32, 24));
        assert_eq!(a, b, "same seed, same view");
        let plain = Augment::NONE.apply(
            &img,
            &pp(),
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            &mut r,
        );
        assert_eq!(
            plain,
            pp().fit(&img, &mut r),
            "no augmentation is exactly the evaluation path"
        );
    }

    #[test]
    fn zero_rotation_and_neutral_jitter_change_nothing() {
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 7]));
        assert_eq!(rotate(&img, 0.0), img);
        let mut j = img.clone();
        jitter(&mut j, 1.0, 1.0, 1.0);
        let max_diff = j
            .pixels()
            .zip(img.pixels())
            .flat_map(|(a, b)| (0..3).map(move |i| a.0[i].abs_diff(b.0[i])))
            .max();
        assert!(max_diff.unwrap() <= 1, "rounding only");
    }
}
