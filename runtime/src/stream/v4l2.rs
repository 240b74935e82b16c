//! V4L2 cameras through the `v4l` crate: list devices and their formats, negotiate a
//! format the device offers, and capture with memory-mapped buffers. The only part of
//! `glimpse camera` that needs hardware; everything downstream takes its `Frame`s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use v4l::buffer::Type;
use v4l::framesize::FrameSizeEnum;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Format, FourCC};

use super::frame::{Frame, PixelFormat};
use super::source::{FrameSource, SourceError};

/// What the user asked for; `None` fields are left to the device.
#[derive(Debug, Clone)]
pub struct CameraRequest {
    pub device: PathBuf,
    pub size: Option<(u32, u32)>,
    pub fps: Option<u32>,
    pub format: Option<PixelFormat>,
}

/// An open, streaming camera.
pub struct CameraSource {
    describe: String,
    // The stream's buffers are mapped from the device: it must outlive them.
    stream: MmapStream<'static>,
    _device: Device,
    width: u32,
    height: u32,
    format: PixelFormat,
    seq: u64,
}

/// Preference when the user names no format: what converts cheaply and exactly first;
/// MJPEG (decode cost) only when the device offers nothing else.
const PREFERENCE: [PixelFormat; 6] = [
    PixelFormat::Yuyv,
    PixelFormat::Nv12,
    PixelFormat::I420,
    PixelFormat::Rgb24,
    PixelFormat::Grey,
    PixelFormat::Mjpeg,
];

fn offered(dev: &Device) -> Result<Vec<PixelFormat>> {
    Ok(dev
        .enum_formats()
        .context("listing the camera's formats")?
        .iter()
        .filter_map(|d| PixelFormat::from_fourcc(d.fourcc.repr))
        .collect())
}

impl CameraSource {
    pub fn open(req: &CameraRequest) -> Result<Self> {
        let path = &req.device;
        let device = Device::with_path(path).with_context(|| {
            format!(
                "opening {} (is the camera plugged in, and is this user in the `video` group?)",
                path.display()
            )
        })?;
        let formats = offered(&device)?;
        let format = match req.format {
            Some(f) if formats.contains(&f) => f,
            Some(f) => bail!(
                "{}: the camera does not offer {f}; it offers: {}",
                path.display(),
                list(&formats)
            ),
            None => *PREFERENCE
                .iter()
                .find(|f| formats.contains(f))
                .with_context(|| {
                    format!(
                        "{}: the camera offers no format glimpse reads (mjpeg, yuyv, nv12, i420, rgb24, grey)",
                        path.display()
                    )
                })?,
        };
        let mut want = device.format().context("reading the camera's format")?;
        want.fourcc = FourCC::new(&format.fourcc());
        if let Some((w, h)) = req.size {
            (want.width, want.height) = (w, h);
        }
        let got: Format = device
            .set_format(&want)
            .context("setting the camera's format")?;
        let got_format = PixelFormat::from_fourcc(got.fourcc.repr).with_context(|| {
            format!("the camera switched to an unreadable format {}", got.fourcc)
        })?;
        if let Some((w, h)) = req.size {
            if (got.width, got.height) != (w, h) {
                log::warn!(
                    "{}: asked for {w}x{h}, the camera gives {}x{}",
                    path.display(),
                    got.width,
                    got.height
                );
            }
        }
        if let Some(fps) = req.fps {
            if let Err(e) = device.set_params(&Parameters::with_fps(fps)) {
                log::warn!("{}: cannot set {fps} fps: {e}", path.display());
            }
        }
        let fps = device
            .params()
            .ok()
            .filter(|p| p.interval.numerator > 0)
            .map(|p| p.interval.denominator as f64 / p.interval.numerator as f64);
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, 4)
            .context("starting the capture stream")?;
        // A camera that stops delivering (unplugged, hung) shows up as an error here.
        stream.set_timeout(Duration::from_secs(5));
        Ok(CameraSource {
            describe: format!(
                "{} {}x{} {got_format}{}",
                path.display(),
                got.width,
                got.height,
                fps.map(|f| format!(" @ {f:.0} fps")).unwrap_or_default()
            ),
            stream,
            _device: device,
            width: got.width,
            height: got.height,
            format: got_format,
            seq: 0,
        })
    }
}

impl FrameSource for CameraSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let (buf, meta) = self
            .stream
            .next()
            .context("capturing a frame")
            .map_err(SourceError::Failed)?;
        let used = (meta.bytesused as usize).min(buf.len());
        let data = match self.format.frame_bytes(self.width, self.height) {
            // Raw formats: the frame is the first frame_bytes of the buffer (drivers may
            // pad the buffer or report 0 bytes used).
            Some(n) if buf.len() >= n => buf[..n].to_vec(),
            Some(n) => {
                return Err(SourceError::Failed(anyhow::anyhow!(
                    "short frame: expected {n} bytes, got {}",
                    buf.len()
                )))
            }
            None => buf[..used].to_vec(),
        };
        let seq = self.seq;
        self.seq += 1;
        Ok(Frame::new(
            seq,
            (self.width, self.height),
            self.format,
            data,
        ))
    }
}

fn list(formats: &[PixelFormat]) -> String {
    formats
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per device, then one per format with its frame sizes.
pub fn describe_devices() -> Vec<String> {
    let mut out = Vec::new();
    let mut nodes = v4l::context::enum_devices();
    nodes.sort_by_key(|n| n.index());
    for node in nodes {
        let path: &Path = node.path();
        out.push(format!(
            "{}: {}",
            path.display(),
            node.name().unwrap_or_else(|| "?".into())
        ));
        let Ok(dev) = Device::with_path(path) else {
            out.push("  (cannot open: check permissions, the `video` group)".into());
            continue;
        };
        let Ok(descs) = dev.enum_formats() else {
            out.push("  (not a capture device)".into());
            continue;
        };
        for d in descs {
            let known = PixelFormat::from_fourcc(d.fourcc.repr)
                .map(|f| f.to_string())
                .unwrap_or_else(|| "not supported by glimpse".into());
            let sizes: Vec<String> = dev
                .enum_framesizes(d.fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s.size {
                    FrameSizeEnum::Discrete(d) => format!("{}x{}", d.width, d.height),
                    FrameSizeEnum::Stepwise(s) => format!(
                        "{}x{}..{}x{}",
                        s.min_width, s.min_height, s.max_width, s.max_height
                    ),
                })
                .collect();
            out.push(format!(
                "  {} ({}; {known}): {}",
                d.fourcc,
                d.description,
                sizes.join(" ")
            ));
        }
    }
    if out.is_empty() {
        out.push("no V4L2 devices found (/dev/video*)".into());
    }
    out
}
