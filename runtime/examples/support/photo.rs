//! What the frame-cost examples share: `FRAMES [WxH]` from the command line and a real
//! photo at that size, the frame they work on.

use image::RgbImage;

/// The run asked for: how many frames, the photo as a `width`x`height` frame, and the
/// arguments after `FRAMES WxH`.
pub struct Run {
    pub frames: u32,
    pub rgb: RgbImage,
    pub rest: Vec<String>,
}

/// Reads `[FRAMES] [WxH] REST...` (default `default_frames`, 640x480) and resizes
/// `samples/chelsea.png` to that size.
pub fn from_args(default_frames: u32) -> Result<Run, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames: u32 = args.first().map_or(Ok(default_frames), |a| a.parse())?;
    let (w, h) = match args.get(1) {
        Some(size) => {
            let (w, h) = size.split_once('x').ok_or("expected WxH")?;
            (w.parse()?, h.parse()?)
        }
        None => (640, 480),
    };
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/chelsea.png");
    let rgb = image::open(photo)?
        .resize_exact(w, h, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let rest = args.get(2..).map(<[String]>::to_vec).unwrap_or_default();
    Ok(Run { frames, rgb, rest })
}
