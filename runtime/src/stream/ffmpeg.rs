//! Network cameras and video files, decoded by a supervised `ffmpeg` child into frames.
//!
//! ffmpeg reads what a board meets (RTSP, HTTP MJPEG, files of any codec) and writes
//! PPM frames to a pipe: each carries its own size, so a stream's aspect ratio is kept
//! without probing it first. The child runs in its own process group (a Ctrl-C in the
//! terminal is glimpse's to handle), dies with the thread that started it, and is killed
//! and reaped when its source is dropped or interrupted.

use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fifo::wait_readable;
use super::frame::{check_size, Frame, PixelFormat};
use super::source::{FrameSource, Interrupter, SourceError};
use crate::decode::Limits;

/// What ffmpeg is asked to read, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct FfmpegRequest {
    /// A URL (`rtsp://cam/stream`) or the path of a video file.
    pub input: String,
    /// A live stream (low-latency flags, reopened when it drops) rather than a file.
    pub network: bool,
    /// Frames are scaled to fit inside this box, keeping their aspect ratio.
    pub size: (u32, u32),
    /// Frames per second to keep (ffmpeg drops the rest); all of them without.
    pub fps: Option<f64>,
    /// A file is decoded as fast as possible instead of at its own rate.
    pub fast: bool,
    /// A file starts over at its end.
    pub looping: bool,
    /// No frame for this long is a failure: ffmpeg is killed and started again.
    pub stall: Duration,
}

/// Why ffmpeg could not be started.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error(
        "ffmpeg is not installed (it decodes network cameras and video files): apt install ffmpeg"
    )]
    Missing,
    #[error("`ffmpeg -version` failed ({0}): is the ffmpeg on PATH broken?")]
    Broken(ExitStatus),
    #[error("starting ffmpeg")]
    Spawn(#[source] io::Error),
}

/// Checks that the ffmpeg on PATH runs, so a missing one is a start-up error, not a
/// camera that keeps failing.
pub fn check_installed() -> Result<(), FfmpegError> {
    match version() {
        Ok(out) if out.status.success() => {
            // Read once, here, for the option each ffmpeg takes.
            let _ = PASSTHROUGH.set(passthrough_option_of(&String::from_utf8_lossy(&out.stdout)));
            Ok(())
        }
        Ok(out) => Err(FfmpegError::Broken(out.status)),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(FfmpegError::Missing),
        Err(e) => Err(FfmpegError::Spawn(e)),
    }
}

/// `ffmpeg -version`, its first line naming the release.
fn version() -> io::Result<std::process::Output> {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
}

/// [`passthrough_option`] of the ffmpeg on PATH, once known.
static PASSTHROUGH: OnceLock<&'static str> = OnceLock::new();

/// ffmpeg's option that writes each decoded frame once. Without it the image2pipe muxer
/// wants a constant rate, and a stream whose rate ffmpeg could not estimate (an RTSP camera
/// after the small probe) gets each frame duplicated to fill the gaps: 18,001 frames in 8 s
/// from a 5 fps camera, each one read and dropped. `-fps_mode` since ffmpeg 5.1, `-vsync`
/// (deprecated since) before it: Ubuntu 22.04's ffmpeg 4.4, on Jetsons.
fn passthrough_option() -> &'static str {
    PASSTHROUGH.get_or_init(|| {
        let out = version().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        passthrough_option_of(out.as_deref().unwrap_or(""))
    })
}

/// [`passthrough_option`] for the output of `ffmpeg -version`: releases print
/// `ffmpeg version 5.1.9-0+deb12u1` or `n4.4.2`; builds from git (`N-110000-g...`), newer
/// than any release of their time, and unreadable output get the current option.
fn passthrough_option_of(version: &str) -> &'static str {
    let number = version
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("")
        .trim_start_matches('n');
    let mut parts = number.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    match major {
        Some(major) if (major, minor) < (5, 1) => "-vsync",
        _ => "-fps_mode",
    }
}

/// `input` with the password of its URL (`rtsp://user:secret@host`) replaced by `***`.
pub fn redact(input: &str) -> String {
    match password(input) {
        Some(p) => input.replacen(&format!(":{p}@"), ":***@", 1),
        None => input.to_string(),
    }
}

/// The password in a URL's `user:password@` part.
fn password(input: &str) -> Option<&str> {
    let (_, rest) = input.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

impl FfmpegRequest {
    /// ffmpeg's arguments: the input with its flags, then PPM frames on stdout.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"]
            .map(String::from)
            .to_vec();
        let scheme = self
            .input
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        if matches!(scheme.as_deref(), Some("rtsp" | "rtsps")) {
            // UDP loses packets (smeared frames) on Wi-Fi; TCP is what cameras serve best.
            args.extend(["-rtsp_transport", "tcp"].map(String::from));
        }
        if self.network {
            // Frames as soon as they arrive, not after a buffer fills: the newest frame
            // is the one that matters.
            args.extend(["-fflags", "nobuffer", "-flags", "low_delay"].map(String::from));
            // A small probe: ffmpeg reads 5 MB (or 5 s) before the first frame by default,
            // long on a low-bitrate camera. First frame of a 320x240 H.264 RTSP stream at
            // 5 fps on loopback: 6.6 s by default, 3.6 s with 32 KB, 1.6 s with 5 KB, which
            // still leaves a format probe room for MPEG-TS over UDP or TCP.
            args.extend(["-probesize", "5000", "-analyzeduration", "500000"].map(String::from));
        } else {
            if !self.fast {
                args.push("-re".into());
            }
            if self.looping {
                args.extend(["-stream_loop", "-1"].map(String::from));
            }
        }
        args.extend(["-i".to_string(), self.input.clone()]);
        let (w, h) = self.size;
        let fps = self.fps.map(|f| format!("fps={f},")).unwrap_or_default();
        let filter =
            format!("{fps}scale={w}:{h}:force_original_aspect_ratio=decrease:flags=bilinear");
        args.extend(
            [
                "-map",
                "0:v:0",
                "-an",
                "-sn",
                "-dn",
                "-vf",
                &filter,
                "-pix_fmt",
                "rgb24",
                passthrough_option(),
                "passthrough",
            ]
            .map(String::from),
        );
        args.extend(["-f", "image2pipe", "-c:v", "ppm", "pipe:1"].map(String::from));
        args
    }
}

/// Reads of a child's stdout that give up when nothing comes for `stall`.
struct Stalling {
    out: ChildStdout,
    stall: Duration,
}

impl Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !wait_readable(self.out.as_raw_fd(), Some(self.stall))? {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "no frame for {} s (--stall-timeout)",
                    self.stall.as_secs_f64()
                ),
            ));
        }
        self.out.read(buf)
    }
}

/// A running ffmpeg and the frames it writes.
pub struct FfmpegSource {
    describe: String,
    network: bool,
    /// A file decoded as fast as possible: every frame is classified.
    lossless: bool,
    child: Arc<Mutex<Child>>,
    frames: BufReader<Stalling>,
    stderr: Option<JoinHandle<()>>,
    last_line: Arc<Mutex<String>>,
    limits: Limits,
    seq: u64,
}

impl FfmpegSource {
    /// Starts ffmpeg on `req`.
    pub fn spawn(req: &FfmpegRequest, limits: Limits) -> Result<FfmpegSource, FfmpegError> {
        let mut command = Command::new("ffmpeg");
        command
            .args(req.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // If glimpse dies without dropping the source (SIGKILL), so does ffmpeg.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| match e.kind() {
            ErrorKind::NotFound => FfmpegError::Missing,
            _ => FfmpegError::Spawn(e),
        })?;
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let last_line = Arc::new(Mutex::new(String::new()));
        let stderr = log_stderr(
            err,
            password(&req.input).map(String::from),
            last_line.clone(),
        );
        Ok(FfmpegSource {
            describe: format!("{} (ffmpeg)", redact(&req.input)),
            network: req.network,
            lossless: req.fast && !req.network,
            child: Arc::new(Mutex::new(child)),
            frames: BufReader::with_capacity(
                1 << 16,
                Stalling {
                    out,
                    stall: req.stall,
                },
            ),
            stderr,
            last_line,
            limits,
            seq: 0,
        })
    }

    /// The end of ffmpeg's output: a file played to its end has ended; anything else
    /// failed, with ffmpeg's last words.
    fn finished(&mut self) -> SourceError {
        let status = wait_briefly(&self.child);
        // Its stderr ends with it: the last line is in once the thread is done.
        if let (Some(_), Some(t)) = (status, self.stderr.take()) {
            let _ = t.join();
        }
        let last = self
            .last_line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match status {
            Some(s) if s.success() && !self.network => SourceError::Ended,
            // ffmpeg's last line is then its statistics, not a reason.
            Some(s) if s.success() => {
                SourceError::Failed(anyhow::anyhow!("the stream ended (ffmpeg exited normally)"))
            }
            Some(s) => SourceError::Failed(anyhow::anyhow!("ffmpeg {s}: {last}")),
            None => SourceError::Failed(anyhow::anyhow!("ffmpeg closed its output: {last}")),
        }
    }

    fn failed(&self, e: impl Into<anyhow::Error>) -> SourceError {
        // The live loop names the source; only the reason belongs here.
        SourceError::Failed(e.into())
    }
}

/// Logs each line of ffmpeg's stderr at debug level (passwords hidden) and keeps the last.
fn log_stderr(
    err: std::process::ChildStderr,
    password: Option<String>,
    last: Arc<Mutex<String>>,
) -> Option<JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("ffmpeg-stderr".into())
        .spawn(move || {
            for line in BufReader::new(err).split(b'\n') {
                let Ok(line) = line else { break };
                let mut line = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Some(p) = password.as_deref() {
                    line = line.replace(p, "***");
                }
                if !line.is_empty() {
                    log::debug!("ffmpeg: {line}");
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
        });
    spawned.ok()
}

/// The child's exit status, after at most a second; `None` if it has not exited (then it
/// is left to `Drop`).
fn wait_briefly(child: &Mutex<Child>) -> Option<ExitStatus> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        if let Ok(Some(s)) = child.lock().unwrap_or_else(|e| e.into_inner()).try_wait() {
            return Some(s);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for FfmpegSource {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        // Killing an exited (not yet reaped) child is harmless; wait reaps it.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One token of a PPM header.
fn header_number(r: &mut impl BufRead) -> io::Result<Option<u32>> {
    let mut digits = String::new();
    loop {
        let byte = match r.fill_buf()?.first() {
            Some(b) => *b,
            None if digits.is_empty() => return Ok(None),
            None => break,
        };
        r.consume(1);
        match byte {
            b'0'..=b'9' if digits.len() < 9 => digits.push(byte as char),
            b' ' | b'\t' | b'\n' | b'\r' if digits.is_empty() => {}
            b' ' | b'\t' | b'\n' | b'\r' => break,
            _ => return Err(io::Error::new(ErrorKind::InvalidData, "a bad PPM header")),
        }
    }
    Ok(Some(digits.parse().expect("digits")))
}

/// The next PPM frame: `None` at the end of the stream.
fn read_ppm(r: &mut impl BufRead, limits: &Limits) -> anyhow::Result<Option<(u32, u32, Vec<u8>)>> {
    let mut magic = [0u8; 2];
    match r.read_exact(&mut magic) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        read => read?,
    }
    anyhow::ensure!(
        &magic == b"P6",
        "expected a PPM frame (P6) from ffmpeg, got {magic:?}"
    );
    let mut number = || -> anyhow::Result<u32> {
        header_number(r)?
            .ok_or_else(|| anyhow::anyhow!("ffmpeg's output ended inside a frame header"))
    };
    let (w, h, max) = (number()?, number()?, number()?);
    anyhow::ensure!(
        max == 255,
        "expected 8-bit PPM frames from ffmpeg, got a maximum of {max}"
    );
    check_size(w, h, limits)?;
    let mut data = vec![0u8; w as usize * h as usize * 3];
    r.read_exact(&mut data)?;
    Ok(Some((w, h, data)))
}

impl FrameSource for FfmpegSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        match read_ppm(&mut self.frames, &self.limits) {
            Ok(Some((w, h, data))) => {
                let seq = self.seq;
                self.seq += 1;
                Ok(Frame::new(seq, (w, h), PixelFormat::Rgb24, data))
            }
            Ok(None) => Err(self.finished()),
            Err(e) if is_eof(&e) => Err(self.finished()),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn lossless(&self) -> bool {
        self.lossless
    }

    fn interrupter(&self) -> Option<Interrupter> {
        let child = Arc::downgrade(&self.child);
        Some(Box::new(move || {
            if let Some(child) = child.upgrade() {
                let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
            }
        }))
    }
}

/// An end of input inside a frame (ffmpeg killed mid-write).
fn is_eof(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == ErrorKind::UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: &str, network: bool) -> FfmpegRequest {
        FfmpegRequest {
            input: input.into(),
            network,
            size: (640, 480),
            fps: None,
            fast: false,
            looping: false,
            stall: Duration::from_secs(10),
        }
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("rtsp://admin:s3cr:t@10.0.0.5:554/live?x=1"),
            "rtsp://admin:***@10.0.0.5:554/live?x=1"
        );
        assert_eq!(redact("rtsp://admin@cam/live"), "rtsp://admin@cam/live");
        assert_eq!(redact("/videos/a:b@c.mp4"), "/videos/a:b@c.mp4");
        assert_eq!(redact("http://cam/a:b@c"), "http://cam/a:b@c");
    }

    #[test]
    fn frames_pass_through_once_with_the_option_of_each_ffmpeg() {
        let of = passthrough_option_of;
        assert_eq!(
            of("ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026"),
            "-fps_mode"
        );
        assert_eq!(
            of("ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright"),
            "-vsync"
        );
        assert_eq!(of("ffmpeg version n5.0.3 Copyright"), "-vsync");
        assert_eq!(of("ffmpeg version 7.1.1 Copyright"), "-fps_mode");
        assert_eq!(of("ffmpeg version N-110000-gabcdef Copyright"), "-fps_mode");
        assert_eq!(of(""), "-fps_mode");
        let args = request("rtsp://cam/live", true).args().join(" ");
        assert!(
            args.contains(&format!("{} passthrough", passthrough_option())),
            "{args}"
        );
    }

    #[test]
    fn live_streams_get_low_latency_flags_and_files_their_own_rate() {
        let rtsp = request("rtsp://cam/live", true).args().join(" ");
        assert!(rtsp.contains("-rtsp_transport tcp -fflags nobuffer -flags low_delay -probesize 5000 -analyzeduration 500000 -i rtsp://cam/live"), "{rtsp}");
        assert!(!rtsp.contains("-re "), "{rtsp}");
        let file = FfmpegRequest {
            looping: true,
            fps: Some(5.0),
            ..request("clip.mkv", false)
        };
        let file = file.args().join(" ");
        assert!(file.contains("-re -stream_loop -1 -i clip.mkv"), "{file}");
        assert!(
            file.contains("-vf fps=5,scale=640:480:force_original_aspect_ratio=decrease"),
            "{file}"
        );
        assert!(file.ends_with("-f image2pipe -c:v ppm pipe:1"), "{file}");
        let fast = FfmpegRequest {
            fast: true,
            ..request("clip.mkv", false)
        }
        .args()
        .join(" ");
        assert!(
            !fast.contains("-re") && !fast.contains("nobuffer"),
            "{fast}"
        );
    }

    #[test]
    fn ppm_frames_are_split_and_bad_headers_refused() {
        let limits = Limits::default();
        let mut bytes = b"P6\n2 1\n255\n".to_vec();
        bytes.extend([1, 2, 3, 4, 5, 6]);
        bytes.extend(b"P6 1 1 255\n");
        bytes.extend([7, 8, 9]);
        let mut r = &bytes[..];
        assert_eq!(
            read_ppm(&mut r, &limits).unwrap(),
            Some((2, 1, vec![1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(
            read_ppm(&mut r, &limits).unwrap(),
            Some((1, 1, vec![7, 8, 9]))
        );
        assert_eq!(read_ppm(&mut r, &limits).unwrap(), None);
        for bad in [
            &b"P5\n1 1\n255\n\0"[..],
            b"P6\n1 x\n255\n",
            b"P6\n1 1\n65535\n",
            b"P6\n0 1\n255\n",
        ] {
            assert!(read_ppm(&mut &bad[..], &limits).is_err(), "{bad:?}");
        }
        let cut = read_ppm(&mut &b"P6\n2 2\n255\n\x01\x02"[..], &limits).unwrap_err();
        assert!(is_eof(&cut), "{cut:#}");
    }
}
