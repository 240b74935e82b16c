//! Video frames as cameras and raw streams deliver them, and their conversion to RGB.
//!
//! YUV formats use ITU-R BT.601 with limited ("studio") range, what USB webcams and the
//! Pi camera stack deliver: Y in 16–235, U/V in 16–240. The conversions to RGB run in
//! yuvutils-rs's SIMD code (5-15x the scalar loops they replaced, BENCHMARKS.md); the
//! conversions from RGB, for test streams and fuzzers, are plain 8-bit fixed point.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use image::RgbImage;
use yuvutils_rs::{YuvBiPlanarImage, YuvConversionMode, YuvRange, YuvStandardMatrix};

use crate::crop::Crop;
use crate::decode::{self, Limits};

/// A pixel layout glimpse reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb24,
    /// 8-bit luminance.
    Grey,
    /// Packed 4:2:2 Y0 U Y1 V (V4L2 `YUYV`, ffmpeg `yuyv422`).
    Yuyv,
    /// Planar Y then interleaved U/V at half resolution both ways (4:2:0).
    Nv12,
    /// Planar Y, then U, then V at half resolution both ways (4:2:0; V4L2 `YU12`, ffmpeg
    /// `yuv420p`, `rpicam-vid --codec yuv420`).
    I420,
    /// One JPEG image per frame (most USB webcams at high resolutions).
    Mjpeg,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 6] = [
        PixelFormat::Mjpeg,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::I420,
        PixelFormat::Rgb24,
        PixelFormat::Grey,
    ];

    /// Bytes of one `width`×`height` frame; `None` for compressed formats.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        match self {
            PixelFormat::Rgb24 => Some(w * h * 3),
            PixelFormat::Grey => Some(w * h),
            PixelFormat::Yuyv => Some(w * h * 2),
            PixelFormat::Nv12 | PixelFormat::I420 => {
                Some(w * h + 2 * w.div_ceil(2) * h.div_ceil(2))
            }
            PixelFormat::Mjpeg => None,
        }
    }

    /// The V4L2 FourCC code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Rgb24 => *b"RGB3",
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::I420 => *b"YU12",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == code)
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Grey => "grey",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::I420 => "i420",
            PixelFormat::Mjpeg => "mjpeg",
        })
    }
}

impl FromStr for PixelFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rgb24" | "rgb" | "rgb3" => Ok(PixelFormat::Rgb24),
            "grey" | "gray" | "gray8" => Ok(PixelFormat::Grey),
            "yuyv" | "yuyv422" | "yuy2" => Ok(PixelFormat::Yuyv),
            "nv12" => Ok(PixelFormat::Nv12),
            "i420" | "yuv420p" | "yuv420" | "yu12" => Ok(PixelFormat::I420),
            "mjpeg" | "mjpg" | "jpeg" => Ok(PixelFormat::Mjpeg),
            other => Err(format!(
                "unknown pixel format {other:?}: expected mjpeg, yuyv, nv12, i420, rgb24 or grey"
            )),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Capture order, from 0, counted by the source.
    pub seq: u64,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub data: Vec<u8>,
    /// When the frame was captured (latency is measured from here).
    pub captured: Instant,
}

impl Frame {
    /// A frame captured now.
    pub fn new(seq: u64, (width, height): (u32, u32), format: PixelFormat, data: Vec<u8>) -> Self {
        Frame {
            seq,
            width,
            height,
            format,
            data,
            captured: Instant::now(),
        }
    }

    /// The frame as JPEG (quality 85, 4:2:0 chroma as cameras send it), as snapshots,
    /// `latest.jpg` and the live view show it. jpeg-encoder, not `image`'s encoder: 1.57x
    /// fewer instructions per 640x480 frame on the ARM cores, 2.9x less time on x86_64, 17%
    /// smaller files (BENCHMARKS.md, "The web page's live view").
    pub fn to_jpeg(&self, limits: &Limits) -> Result<Vec<u8>> {
        let rgb = self.to_rgb(limits)?;
        let (w, h) = (u16::try_from(rgb.width()), u16::try_from(rgb.height()));
        let (Ok(w), Ok(h)) = (w, h) else {
            bail!(
                "a JPEG is at most 65535 px a side, got {}x{}",
                rgb.width(),
                rgb.height()
            );
        };
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 85)
            .encode(rgb.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| anyhow::anyhow!("encoding the JPEG: {e}"))?;
        Ok(jpeg)
    }

    /// The frame as RGB, cut to the region of interest when there is one.
    pub fn to_rgb_within(&self, limits: &Limits, crop: Option<Crop>) -> Result<RgbImage> {
        let img = self.to_rgb(limits)?;
        Ok(match crop {
            Some(crop) => crop.apply(&img)?,
            None => img,
        })
    }

    /// The frame as RGB, checking that the data has the size its format needs.
    pub fn to_rgb(&self, limits: &Limits) -> Result<RgbImage> {
        let (w, h) = (self.width, self.height);
        ensure!(
            self.format != PixelFormat::Yuyv || w % 2 == 0,
            "YUYV frames come in pixel pairs: expected an even width, got {w}"
        );
        if let Some(n) = self.format.frame_bytes(w, h) {
            ensure!(
                self.data.len() == n,
                "{w}x{h} {} frame: expected {n} bytes, got {}",
                self.format,
                self.data.len()
            );
        }
        Ok(match self.format {
            PixelFormat::Rgb24 => {
                RgbImage::from_raw(w, h, self.data.clone()).expect("size checked")
            }
            PixelFormat::Grey => {
                let rgb = self.data.iter().flat_map(|&v| [v, v, v]).collect();
                RgbImage::from_raw(w, h, rgb).expect("size checked")
            }
            PixelFormat::Yuyv => yuyv_to_rgb(&self.data, w, h),
            PixelFormat::Nv12 => nv12_to_rgb(&self.data, w, h),
            PixelFormat::I420 => i420_to_rgb(&self.data, w, h),
            PixelFormat::Mjpeg => {
                let img = decode::decode(&self.data, limits)?;
                if img.dimensions() != (w, h) && w > 0 && h > 0 {
                    log::debug!("MJPEG frame is {:?}, announced {w}x{h}", img.dimensions());
                }
                img
            }
        })
    }
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited range, one pixel: `(Y, U, V)` -> `[R, G, B]`.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    [
        clamp((c + 409 * e + 128) >> 8),
        clamp((c - 100 * d - 208 * e + 128) >> 8),
        clamp((c + 516 * d + 128) >> 8),
    ]
}

/// BT.601 limited range, one pixel: `[R, G, B]` -> `(Y, U, V)`.
#[inline]
pub fn rgb_to_yuv([r, g, b]: [u8; 3]) -> (u8, u8, u8) {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    (
        clamp(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16),
        clamp(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128),
        clamp(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128),
    )
}

// The conversions glimpse uses: BT.601 limited range, the chroma of a 2x2 (4:2:0) or 2x1
// (4:2:2) block shared by its pixels, in yuvutils-rs with SSE4.1/AVX2 on x86_64 and NEON
// on aarch64 picked at run time (armv7 runs its portable code). All three go through its
// bi-planar path in "professional" mode: within 0.61 levels of the textbook formula for
// every legal (Y, U, V), where its default mode is 2.7 off, and its packed YUYV path, with
// 6-bit coefficients, more. Values outside the legal range are clamped to it first.
const RANGE: YuvRange = YuvRange::Limited;
const MATRIX: YuvStandardMatrix = YuvStandardMatrix::Bt601;
const MODE: YuvConversionMode = YuvConversionMode::Professional;

/// Packed YUYV (4:2:2, even width) to RGB.
///
/// # Panics
/// When `data` is not the size of a `width`×`height` YUYV frame ([`Frame::to_rgb`] checks).
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
    let n = width as usize * height as usize;
    assert_eq!(data.len(), n * 2, "a {width}x{height} YUYV frame's size");
    // De-interleaved into NV16 (a Y plane, then U/V pairs) by hand: yuvutils-rs 0.8.3's
    // SSE/AVX2 `yuyv422_to_yuv422` misplaces samples in rows of 32 pixels or more.
    let (mut y, mut uv) = (vec![0u8; n], vec![0u8; n]);
    let planes = y.chunks_exact_mut(2).zip(uv.chunks_exact_mut(2));
    for (quad, (y, uv)) in data.chunks_exact(4).zip(planes) {
        (y[0], uv[0], y[1], uv[1]) = (quad[0], quad[1], quad[2], quad[3]);
    }
    let image = YuvBiPlanarImage {
        y_plane: &y,
        y_stride: width,
        uv_plane: &uv,
        uv_stride: width,
        width,
        height,
    };
    convert(width, height, |rgb| {
        yuvutils_rs::yuv_nv16_to_rgb(&image, rgb, width * 3, RANGE, MATRIX, MODE)
    })
}

/// NV12 (Y plane, then U/V interleaved at half resolution) to RGB.
///
/// # Panics
/// When `data` is not the size of a `width`×`height` NV12 frame ([`Frame::to_rgb`] checks).
pub fn nv12_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
    let (y, uv) = data.split_at(width as usize * height as usize);
    nv12_planes_to_rgb(y, uv, width, height)
}

/// I420 (planes Y, U, V; chroma at half resolution) to RGB.
///
/// # Panics
/// When `data` is not the size of a `width`×`height` I420 frame ([`Frame::to_rgb`] checks).
pub fn i420_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
    let chroma = width.div_ceil(2) as usize * height.div_ceil(2) as usize;
    let (y, planes) = data.split_at(width as usize * height as usize);
    let (u, v) = planes.split_at(chroma);
    let mut uv = vec![0u8; chroma * 2];
    for (pair, (u, v)) in uv.chunks_exact_mut(2).zip(u.iter().zip(v)) {
        (pair[0], pair[1]) = (*u, *v);
    }
    nv12_planes_to_rgb(y, &uv, width, height)
}

fn nv12_planes_to_rgb(y: &[u8], uv: &[u8], width: u32, height: u32) -> RgbImage {
    let image = YuvBiPlanarImage {
        y_plane: y,
        y_stride: width,
        uv_plane: uv,
        uv_stride: width.div_ceil(2) * 2,
        width,
        height,
    };
    convert(width, height, |rgb| {
        yuvutils_rs::yuv_nv12_to_rgb(&image, rgb, width * 3, RANGE, MATRIX, MODE)
    })
}

/// Runs one yuvutils-rs conversion into a new `width`×`height` RGB image.
fn convert(
    width: u32,
    height: u32,
    f: impl FnOnce(&mut [u8]) -> Result<(), yuvutils_rs::YuvError>,
) -> RgbImage {
    let mut out = vec![0u8; width as usize * height as usize * 3];
    if let Err(e) = f(&mut out) {
        panic!("a {width}x{height} frame of the wrong size reached the conversion: {e}");
    }
    RgbImage::from_raw(width, height, out).expect("sized")
}

/// The scalar conversions yuvutils-rs replaced, kept as the baseline of the conversion
/// benchmark (`examples/convert.rs`, BENCHMARKS.md) and as a second oracle in the tests.
pub mod scalar {
    use super::yuv_to_rgb;
    use image::RgbImage;

    /// Packed YUYV (4:2:2, even width) to RGB.
    pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
        let (w, h) = (width as usize, height as usize);
        let stride = w * 2;
        let mut out = vec![0u8; w * h * 3];
        for row in 0..h {
            let line = &data[row * stride..(row + 1) * stride];
            for x in 0..w {
                let pair = (x / 2) * 4;
                let y = line[x * 2];
                let (u, v) = (line[pair + 1], line[pair + 3]);
                out[(row * w + x) * 3..][..3].copy_from_slice(&yuv_to_rgb(y, u, v));
            }
        }
        RgbImage::from_raw(width, height, out).expect("sized")
    }

    /// NV12 (Y plane, then U/V interleaved at half resolution) to RGB.
    pub fn nv12_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
        let (w, h) = (width as usize, height as usize);
        let (cw, uv) = (w.div_ceil(2), &data[w * h..]);
        let mut out = vec![0u8; w * h * 3];
        for row in 0..h {
            for x in 0..w {
                let c = ((row / 2) * cw + x / 2) * 2;
                let rgb = yuv_to_rgb(data[row * w + x], uv[c], uv[c + 1]);
                out[(row * w + x) * 3..][..3].copy_from_slice(&rgb);
            }
        }
        RgbImage::from_raw(width, height, out).expect("sized")
    }

    /// I420 (planes Y, U, V; chroma at half resolution) to RGB.
    pub fn i420_to_rgb(data: &[u8], width: u32, height: u32) -> RgbImage {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (u, v) = data[w * h..].split_at(cw * ch);
        let mut out = vec![0u8; w * h * 3];
        for row in 0..h {
            for x in 0..w {
                let c = (row / 2) * cw + x / 2;
                let rgb = yuv_to_rgb(data[row * w + x], u[c], v[c]);
                out[(row * w + x) * 3..][..3].copy_from_slice(&rgb);
            }
        }
        RgbImage::from_raw(width, height, out).expect("sized")
    }
}

/// RGB to I420: the NV12 samples with the chroma planes separated.
pub fn rgb_to_i420(img: &RgbImage) -> Vec<u8> {
    let n = (img.width() * img.height()) as usize;
    let nv12 = rgb_to_nv12(img);
    let (y, uv) = nv12.split_at(n);
    let mut out = y.to_vec();
    out.extend(uv.iter().step_by(2));
    out.extend(uv.iter().skip(1).step_by(2));
    out
}

/// RGB (even width) to packed YUYV, each pair's chroma the average of its two pixels (what
/// a camera's 4:2:2 subsampling does); for test streams and the fuzzers.
pub fn rgb_to_yuyv(img: &RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    assert!(w % 2 == 0, "YUYV needs an even width, got {w}");
    let mut out = Vec::with_capacity(w * h * 2);
    for row in 0..h as u32 {
        for x in (0..w as u32).step_by(2) {
            let a = rgb_to_yuv(img.get_pixel(x, row).0);
            let b = rgb_to_yuv(img.get_pixel(x + 1, row).0);
            let u = (a.1 as u16 + b.1 as u16).div_ceil(2) as u8;
            let v = (a.2 as u16 + b.2 as u16).div_ceil(2) as u8;
            out.extend_from_slice(&[a.0, u, b.0, v]);
        }
    }
    out
}

/// RGB to NV12, chroma averaged over each 2×2 block.
pub fn rgb_to_nv12(img: &RgbImage) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let mut out: Vec<u8> = img.pixels().map(|p| rgb_to_yuv(p.0).0).collect();
    for by in (0..h).step_by(2) {
        for bx in (0..w).step_by(2) {
            let (mut u, mut v, mut n) = (0u32, 0u32, 0u32);
            for (x, y) in [(bx, by), (bx + 1, by), (bx, by + 1), (bx + 1, by + 1)] {
                if x < w && y < h {
                    let (_, pu, pv) = rgb_to_yuv(img.get_pixel(x, y).0);
                    (u, v, n) = (u + pu as u32, v + pv as u32, n + 1);
                }
            }
            out.push(((u + n / 2) / n) as u8);
            out.push(((v + n / 2) / n) as u8);
        }
    }
    out
}

/// Checks a raw frame size before allocating anything for it.
pub fn check_size(width: u32, height: u32, limits: &Limits) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("frame size {width}x{height}: width and height must be positive");
    }
    let pixels = width as u64 * height as u64;
    ensure!(
        pixels <= limits.max_pixels,
        "frame size {width}x{height} has {pixels} pixels, more than the limit {}",
        limits.max_pixels
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_colours_convert_exactly() {
        // Limited range black and white, and the BT.601 primaries (within rounding).
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        let red = yuv_to_rgb(81, 90, 240);
        assert!(red[0] >= 253 && red[1] <= 2 && red[2] <= 2, "{red:?}");
        assert_eq!(rgb_to_yuv([0, 0, 0]), (16, 128, 128));
        assert_eq!(rgb_to_yuv([255, 255, 255]), (235, 128, 128));
    }

    #[test]
    fn frame_sizes_are_checked() {
        assert_eq!(PixelFormat::Nv12.frame_bytes(4, 2), Some(12));
        assert_eq!(PixelFormat::Nv12.frame_bytes(3, 3), Some(9 + 8));
        let f = Frame::new(0, (4, 2), PixelFormat::Yuyv, vec![0; 15]);
        let e = f.to_rgb(&Limits::default()).unwrap_err().to_string();
        assert!(e.contains("expected 16 bytes, got 15"), "{e}");
        assert!(check_size(0, 10, &Limits::default()).is_err());
        assert!("yuyv422".parse::<PixelFormat>().is_ok());
        assert!("h264"
            .parse::<PixelFormat>()
            .unwrap_err()
            .contains("expected mjpeg"));
    }

    #[test]
    fn odd_sizes_convert() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 100]));
        assert_eq!(nv12_to_rgb(&rgb_to_nv12(&img), 5, 3).dimensions(), (5, 3));
        // I420 holds the same samples as NV12, in other places.
        assert_eq!(
            i420_to_rgb(&rgb_to_i420(&img), 5, 3),
            nv12_to_rgb(&rgb_to_nv12(&img), 5, 3)
        );
        let even = RgbImage::from_fn(6, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 100]));
        assert_eq!(yuyv_to_rgb(&rgb_to_yuyv(&even), 6, 3).dimensions(), (6, 3));
        let odd = Frame::new(0, (5, 2), PixelFormat::Yuyv, vec![0; 20]);
        assert!(odd
            .to_rgb(&Limits::default())
            .unwrap_err()
            .to_string()
            .contains("even width"));
    }
}
