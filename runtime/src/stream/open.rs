//! Opening a frame source from what the user named: a folder played as video, raw frames
//! from a file, a FIFO or stdin, a V4L2 camera (`camera` feature), or a network camera or
//! video file through ffmpeg.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::ffmpeg::{self, FfmpegRequest, FfmpegSource};
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
    /// A network stream or a video file, decoded by ffmpeg.
    Ffmpeg(FfmpegRequest),
}

/// What a `--source` names, before the flags that go with it are applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Named {
    /// A V4L2 device (`/dev/video0`).
    Device(PathBuf),
    /// A network stream ffmpeg reads (`rtsp://`, `http://` MJPEG, ...).
    Url(String),
    /// A folder of images.
    Folder(PathBuf),
    /// Raw frames on stdin (`-`) or a FIFO.
    Pipe(PathBuf),
    /// A file: a video for ffmpeg (raw frames when a raw pixel format is given).
    File(PathBuf),
}

/// Why a `--source` names nothing glimpse can read.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{0}: unknown scheme {1:?}: expected rtsp, rtsps, http, https, rtmp, rtmps, srt, udp, tcp or rtp")]
    Scheme(String, String),
    #[error("{0}: no such file, folder or device")]
    Missing(String),
    #[error("{0}: not a file, folder, FIFO or device")]
    Kind(String),
}

/// The URL schemes handed to ffmpeg.
const SCHEMES: [&str; 10] = [
    "rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp",
];

impl Named {
    /// What `source` is: a URL by its scheme, anything else by what is at that path.
    pub fn parse(source: &str) -> Result<Named, NameError> {
        if source == "-" {
            return Ok(Named::Pipe(source.into()));
        }
        if let Some((scheme, _)) = source.split_once("://") {
            return if SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                Ok(Named::Url(source.to_string()))
            } else {
                Err(NameError::Scheme(
                    ffmpeg::redact(source),
                    scheme.to_string(),
                ))
            };
        }
        let path = PathBuf::from(source);
        let meta = std::fs::metadata(&path).map_err(|_| NameError::Missing(source.into()))?;
        let kind = meta.file_type();
        Ok(if kind.is_dir() {
            Named::Folder(path)
        } else if kind.is_char_device() {
            Named::Device(path)
        } else if kind.is_fifo() {
            Named::Pipe(path)
        } else if kind.is_file() {
            Named::File(path)
        } else {
            return Err(NameError::Kind(source.into()));
        })
    }
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
            SourceSpec::Ffmpeg(req) => ffmpeg_opener(req, limits),
        }
    }

    /// The size every frame has, when it is known before the first one.
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        match self {
            SourceSpec::Raw { size, .. } => Some(*size),
            SourceSpec::Camera { size, .. } => *size,
            SourceSpec::Images { .. } | SourceSpec::Ffmpeg(_) => None,
        }
    }
}

/// ffmpeg started by each call of the opener: a live stream (or a looping file) again
/// after each failure, a file once. A missing ffmpeg is an error now.
fn ffmpeg_opener(req: &FfmpegRequest, limits: Limits) -> Result<OpenedSource> {
    ffmpeg::check_installed()?;
    if !req.network {
        let path = Path::new(&req.input);
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    }
    let (reopen, req) = (req.network || req.looping, req.clone());
    let describe = format!("{} (ffmpeg)", ffmpeg::redact(&req.input));
    let opener: Opener =
        Box::new(move || Ok(Box::new(FfmpegSource::spawn(&req, limits)?) as Box<dyn FrameSource>));
    Ok(OpenedSource {
        opener,
        reopen,
        describe,
    })
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
