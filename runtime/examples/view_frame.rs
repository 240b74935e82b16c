//! What one frame of a live view (`stream.mjpeg`, the web page's video) costs the board: a
//! camera frame, as RGB, encoded as the JPEG that is sent, on a real photo.
//!
//! `cargo run --release -p glimpse-runtime --example view_frame -- [FRAMES] [WxH]` prints
//! the milliseconds per frame; under qemu's insn plugin it gives the instructions
//! (cross/convert-bench.sh). Viewers of one camera share each frame's encoding, so this is
//! the cost of the first viewer; each further one only copies the bytes.

use std::time::Instant;

use glimpse_runtime::stream::{Frame, PixelFormat};
use glimpse_runtime::Limits;

#[path = "support/photo.rs"]
mod photo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let photo::Run { frames, rgb, rest } = photo::from_args(100)?;
    if !rest.is_empty() {
        return Err(format!("expected [FRAMES] [WxH], got {rest:?} after them").into());
    }
    let (w, h) = rgb.dimensions();
    let limits = Limits::default();
    let t0 = Instant::now();
    let mut bytes = 0;
    for seq in 0..frames as u64 {
        let frame = Frame::new(seq, (w, h), PixelFormat::Rgb24, rgb.as_raw().clone());
        bytes += frame.to_jpeg(&limits)?.len();
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / frames as f64;
    println!(
        "{w}x{h} frame to JPEG: {ms:.3} ms/frame, {} bytes/frame",
        bytes as u64 / frames as u64
    );
    Ok(())
}
