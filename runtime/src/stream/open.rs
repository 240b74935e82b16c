//! Opening a frame source from what the user named: a folder played as video, raw frames
//! from a file, a FIFO or stdin, or a V4L2 camera (`camera` feature).

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::fifo::{self, Fifo};
use super::frame::PixelFormat;
use super::source::{FolderSource, FrameSource, Opener, RawSource};
use crate::decode::Limits;

/// Where frames come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// The images of a folder, in name order, at `fps` (as fast as they decode without).
    Images {
        dir: PathBuf,
        looping: bool,
        fps: Option<f64>,
    },
    /// Raw frames of one size and pixel format from a file, or stdin for `-`.
    Raw {
        path: PathBuf,
        size: (u32, u32),
        format: PixelFormat,
        fps: Option<f64>,
    },
    /// A V4L2 camera; `None` fields are left to the device.
    Camera {
        device: PathBuf,
        size: Option<(u32, u32)>,
        fps: Option<f64>,
        format: Option<PixelFormat>,
    },
}

/// An opened source, ready for `live::run`.
pub struct OpenedSource {
    pub opener: Opener,
    /// Whether a failed source is reopened (a camera) rather than ending the stream.
    pub reopen: bool,
    /// What it is, for messages and the daemon's state.
    pub describe: String,
}

/// The error of opening a camera in a build without V4L2 support.
#[derive(Debug, thiserror::Error)]
#[error("this glimpse was built without camera support (the `camera` feature, which needs libclang at build time)")]
pub struct NoCamera;

impl SourceSpec {
    /// Opens the source. Folders and raw streams are opened now (a missing folder is an
    /// error here); a camera is opened by the first call of the opener, and again after
    /// each failure. With `follow` (the daemon), a FIFO is too: when its writer ends, the
    /// next one is waited for, instead of the stream ending.
    pub fn open(&self, limits: Limits, follow: bool) -> Result<OpenedSource> {
        match self {
            SourceSpec::Raw {
                path,
                size,
                format,
                fps,
            } if follow && fifo::is_fifo(path) => fifo_opener(path, *size, *format, *fps, limits),
            SourceSpec::Images { dir, looping, fps } => {
                let source = FolderSource::open(dir.clone(), *fps, limits)?.looping(*looping);
                Ok(once(Box::new(source)))
            }
            SourceSpec::Raw {
                path,
                size,
                format,
                fps,
            } => {
                let (name, reader): (String, Box<dyn std::io::Read + Send>) =
                    if path.as_os_str() == "-" {
                        ("stdin".into(), Box::new(std::io::stdin()))
                    } else {
                        let file = std::fs::File::open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        (path.display().to_string(), Box::new(file))
                    };
                let source = RawSource::new(name, reader, *size, *format, *fps, &limits)?;
                Ok(once(Box::new(source)))
            }
            SourceSpec::Camera {
                device,
                size,
                fps,
                format,
            } => Ok(OpenedSource {
                opener: camera_opener(device.clone(), *size, *fps, *format)?,
                reopen: true,
                describe: device.display().to_string(),
            }),
        }
    }
}

/// A FIFO opened for each writer in turn. The frame size and format are checked now.
fn fifo_opener(
    path: &std::path::Path,
    size: (u32, u32),
    format: PixelFormat,
    fps: Option<f64>,
    limits: Limits,
) -> Result<OpenedSource> {
    let name = path.display().to_string();
    let describe =
        RawSource::new(name.clone(), std::io::empty(), size, format, fps, &limits)?.describe();
    let path = path.to_owned();
    let opener: Opener = Box::new(move || {
        let fifo = Fifo::open(&path).with_context(|| format!("opening {name}"))?;
        let source = RawSource::new(name.clone(), fifo, size, format, fps, &limits)?;
        Ok(Box::new(source.writers_come_back()) as Box<dyn FrameSource>)
    });
    Ok(OpenedSource {
        opener,
        reopen: true,
        describe,
    })
}

#[cfg(feature = "camera")]
fn camera_opener(
    device: PathBuf,
    size: Option<(u32, u32)>,
    fps: Option<f64>,
    format: Option<PixelFormat>,
) -> Result<Opener> {
    use super::v4l2::{CameraRequest, CameraSource};
    let req = CameraRequest {
        device,
        size,
        // V4L2 asks for whole frames per second.
        fps: fps.map(|f| f.round().max(1.0) as u32),
        format,
    };
    Ok(Box::new(move || {
        Ok(Box::new(CameraSource::open(&req)?) as Box<dyn FrameSource>)
    }))
}

#[cfg(not(feature = "camera"))]
fn camera_opener(
    _: PathBuf,
    _: Option<(u32, u32)>,
    _: Option<f64>,
    _: Option<PixelFormat>,
) -> Result<Opener> {
    Err(NoCamera.into())
}

/// A source that is opened once: an ended or failed stream is not reopened.
fn once(source: Box<dyn FrameSource>) -> OpenedSource {
    let describe = source.describe();
    let mut source = Some(source);
    OpenedSource {
        opener: Box::new(move || source.take().context("the stream cannot be reopened")),
        reopen: false,
        describe,
    }
}
