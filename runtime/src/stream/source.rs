//! Where frames come from: a camera (`v4l2`), a folder of images played as a sequence, or
//! raw frames on a reader (`ffmpeg ... -f rawvideo -pix_fmt yuyv422 -`). Everything after
//! the source is shared, so all of it is tested without a camera.

use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::frame::{check_size, Frame, PixelFormat};
use crate::decode::{self, image_files_in, Limits};

/// Why a source gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The stream is over (end of input, last image): stop, do not reconnect.
    #[error("end of stream")]
    Ended,
    /// The source failed (camera unplugged, read error): reopen it and go on.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Opens (and, after a failure, reopens) a source.
pub type Opener = Box<dyn FnMut() -> anyhow::Result<Box<dyn FrameSource>> + Send>;

/// Wakes a source blocked in `next_frame` from another thread (it then fails or ends).
pub type Interrupter = Box<dyn Fn() + Send>;

/// A stream of frames.
pub trait FrameSource: Send {
    /// What the source is, for messages (`/dev/video0 640x480 yuyv @ 30 fps`).
    fn describe(&self) -> String;
    /// Blocks until the next frame.
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    /// A way to end a blocked `next_frame` at shutdown (an ffmpeg child is killed), for
    /// sources that have one.
    fn interrupter(&self) -> Option<Interrupter> {
        None
    }
    /// Whether every frame matters more than the newest (a recording decoded as fast as
    /// possible): capture then waits for the classifier instead of replacing a frame.
    fn lossless(&self) -> bool {
        false
    }
}

/// Waits until the next frame is due at `fps` (no wait without a rate).
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(fps: Option<f64>) -> Self {
        Pacer {
            interval: fps
                .filter(|f| *f > 0.0)
                .map(|f| Duration::from_secs_f64(1.0 / f)),
            next: Instant::now(),
        }
    }

    fn wait(&mut self) {
        if let Some(i) = self.interval {
            let now = Instant::now();
            if self.next > now {
                std::thread::sleep(self.next - now);
            }
            self.next = self.next.max(now) + i;
        }
    }
}

/// The images of a folder, in name order, as frames at a given rate.
pub struct FolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    at: usize,
    seq: u64,
    pacer: Pacer,
    limits: Limits,
    looping: bool,
}

impl FolderSource {
    pub fn open(dir: PathBuf, fps: Option<f64>, limits: Limits) -> anyhow::Result<Self> {
        let files =
            image_files_in(&dir).with_context(|| format!("reading folder {}", dir.display()))?;
        anyhow::ensure!(!files.is_empty(), "{}: no images", dir.display());
        Ok(FolderSource {
            dir,
            files,
            at: 0,
            seq: 0,
            pacer: Pacer::new(fps),
            limits,
            looping: false,
        })
    }

    /// Starts over at the first image after the last one, forever (a demo or soak
    /// source) instead of ending.
    pub fn looping(mut self, on: bool) -> Self {
        self.looping = on;
        self
    }
}

impl FrameSource for FolderSource {
    fn describe(&self) -> String {
        format!("{} ({} images)", self.dir.display(), self.files.len())
    }

    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let mut failed = 0;
        loop {
            if self.at == self.files.len() && self.looping {
                self.at = 0;
            }
            let Some(path) = self.files.get(self.at).cloned() else {
                return Err(SourceError::Ended);
            };
            self.at += 1;
            self.pacer.wait();
            // One bad image is reported and skipped, like `classify` does.
            let decoded = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(decode::decode(&b, &self.limits)?));
            match decoded {
                Ok(img) => {
                    let seq = self.seq;
                    self.seq += 1;
                    return Ok(Frame::new(
                        seq,
                        img.dimensions(),
                        PixelFormat::Rgb24,
                        img.into_raw(),
                    ));
                }
                Err(e) => {
                    log::warn!("{}: {e:#}", path.display());
                    failed += 1;
                    // A looping folder of nothing but bad images would spin forever.
                    if failed >= self.files.len() {
                        return Err(SourceError::Failed(anyhow::anyhow!(
                            "{}: none of the {} images could be decoded",
                            self.dir.display(),
                            failed
                        )));
                    }
                }
            }
        }
    }
}

/// Fixed-size raw frames, back to back, on a reader (stdin, a pipe, a file).
pub struct RawSource<R> {
    name: String,
    reader: R,
    width: u32,
    height: u32,
    format: PixelFormat,
    frame_bytes: usize,
    seq: u64,
    pacer: Pacer,
    /// The end of the input is the end of one writer's stream (a FIFO in the daemon), to
    /// be reopened, not the end of the stream.
    writers_come_back: bool,
}

impl<R: Read + Send> RawSource<R> {
    pub fn new(
        name: String,
        reader: R,
        (width, height): (u32, u32),
        format: PixelFormat,
        fps: Option<f64>,
        limits: &Limits,
    ) -> anyhow::Result<Self> {
        check_size(width, height, limits)?;
        anyhow::ensure!(
            format != PixelFormat::Yuyv || width % 2 == 0,
            "YUYV frames come in pixel pairs: expected an even width, got {width}"
        );
        let frame_bytes = format.frame_bytes(width, height).with_context(|| {
            format!("{format} frames have no fixed size: a raw stream needs yuyv, nv12, i420, rgb24 or grey (ffmpeg: -f rawvideo -pix_fmt yuv420p)")
        })?;
        Ok(RawSource {
            name,
            reader,
            width,
            height,
            format,
            frame_bytes,
            seq: 0,
            pacer: Pacer::new(fps),
            writers_come_back: false,
        })
    }

    /// The end of the input is a failure to reopen from, not the end of the stream: a FIFO
    /// whose writer (ffmpeg) ended or is being restarted.
    pub fn writers_come_back(mut self) -> Self {
        self.writers_come_back = true;
        self
    }

    fn ended(&self) -> SourceError {
        if self.writers_come_back {
            SourceError::Failed(anyhow::anyhow!("the writer closed the pipe"))
        } else {
            SourceError::Ended
        }
    }
}

impl<R: Read + Send> FrameSource for RawSource<R> {
    fn describe(&self) -> String {
        format!(
            "{} {}x{} {}",
            self.name, self.width, self.height, self.format
        )
    }

    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let mut data = vec![0u8; self.frame_bytes];
        let mut filled = 0;
        while filled < data.len() {
            match self.reader.read(&mut data[filled..]) {
                Ok(0) if filled == 0 => return Err(self.ended()),
                Ok(0) => {
                    log::warn!(
                        "{}: the stream ended inside a frame ({filled} of {} bytes); the partial frame is dropped",
                        self.name,
                        self.frame_bytes
                    );
                    return Err(self.ended());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(SourceError::Failed(
                        anyhow::Error::from(e).context(format!("reading {}", self.name)),
                    ))
                }
            }
        }
        self.pacer.wait();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_split_and_a_partial_frame_ends_the_stream() {
        let limits = Limits::default();
        let bytes: Vec<u8> = (0..(4 * 2 * 2 * 2 + 5)).map(|i| i as u8).collect();
        let mut s = RawSource::new(
            "test".into(),
            &bytes[..],
            (4, 2),
            PixelFormat::Yuyv,
            None,
            &limits,
        )
        .unwrap();
        let a = s.next_frame().unwrap();
        let b = s.next_frame().unwrap();
        assert_eq!((a.seq, b.seq, a.data.len()), (0, 1, 16));
        assert_eq!(b.data[0], 16);
        assert!(matches!(s.next_frame(), Err(SourceError::Ended)));
        assert!(RawSource::new(
            "x".into(),
            &b""[..],
            (4, 2),
            PixelFormat::Mjpeg,
            None,
            &limits
        )
        .is_err());
        assert!(RawSource::new(
            "x".into(),
            &b""[..],
            (0, 2),
            PixelFormat::Grey,
            None,
            &limits
        )
        .is_err());
    }
}
