//! What a camera frame's conversion to RGB costs: the SIMD conversions (yuvutils-rs) against
//! the scalar code they replaced, on a real photo at a camera's size.
//!
//! `cargo run --release -p glimpse-runtime --example convert -- [FRAMES] [WxH]` prints
//! the milliseconds per frame of each; `-- FRAMES WxH FORMAT IMPL` converts FRAMES frames of
//! one kind and nothing else, for instruction counts under qemu (cross/convert-bench.sh).

use std::time::Instant;

use glimpse_runtime::stream::frame::{self, scalar, PixelFormat};
use image::RgbImage;

type Convert = fn(&[u8], u32, u32) -> RgbImage;

/// The conversions compared: (format, implementation, function).
const CONVERSIONS: [(PixelFormat, &str, Convert); 6] = [
    (PixelFormat::Yuyv, "scalar", scalar::yuyv_to_rgb),
    (PixelFormat::Yuyv, "simd", frame::yuyv_to_rgb),
    (PixelFormat::Nv12, "scalar", scalar::nv12_to_rgb),
    (PixelFormat::Nv12, "simd", frame::nv12_to_rgb),
    (PixelFormat::I420, "scalar", scalar::i420_to_rgb),
    (PixelFormat::I420, "simd", frame::i420_to_rgb),
];

#[path = "support/photo.rs"]
mod photo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let photo::Run { frames, rgb, rest } = photo::from_args(200)?;
    let (w, h) = rgb.dimensions();
    let only = rest.get(0..2);
    for (format, implementation, convert) in CONVERSIONS {
        if only.is_some_and(|o| o[0] != format.to_string() || o[1] != implementation) {
            continue;
        }
        let data = match format {
            PixelFormat::Yuyv => frame::rgb_to_yuyv(&rgb),
            PixelFormat::Nv12 => frame::rgb_to_nv12(&rgb),
            _ => frame::rgb_to_i420(&rgb),
        };
        let t0 = Instant::now();
        let mut checksum = 0u64;
        for _ in 0..frames {
            checksum += convert(&data, w, h).as_raw()[..64]
                .iter()
                .map(|&b| b as u64)
                .sum::<u64>();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / frames as f64;
        // How far from the scalar code, in levels.
        let scalar = CONVERSIONS
            .iter()
            .find(|c| c.0 == format && c.1 == "scalar")
            .unwrap()
            .2;
        let off = (convert(&data, w, h).as_raw().iter())
            .zip(scalar(&data, w, h).as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        println!(
            "{format} {implementation:>6} {w}x{h}: {ms:.3} ms/frame, at most {off} off the scalar \
             code (checksum {checksum})"
        );
    }
    Ok(())
}
