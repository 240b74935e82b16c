//! A named pipe (FIFO) of raw frames that outlives its writers: `ffmpeg` ending, crashing or
//! being restarted is the end of one writer's stream, and the next writer is waited for.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `path` is a named pipe.
pub fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// The reading end of a FIFO, opened without waiting for a writer. A blocking open would
/// hang until a writer came; reading a non-blocking one before any writer came would
/// return the end at once. So reads wait in `poll`, which (on Linux) reports a hang-up only
/// once a writer has come and gone since this open: the end of that writer's stream.
pub struct Fifo {
    file: File,
}

impl Fifo {
    pub fn open(path: &Path) -> io::Result<Fifo> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Fifo { file })
    }

    /// Blocks until there is data or the writers are gone.
    fn wait(&self) -> io::Result<()> {
        wait_readable(self.file.as_raw_fd(), None).map(|_| ())
    }
}

/// Waits until `fd` has data or a hang-up, for at most `timeout` (forever without one);
/// `false` when the time ran out first.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Rounded up, so a wait never ends just before its deadline.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut pollfd, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

impl Read for Fifo {
    /// Like a pipe's read: `Ok(0)` when the writer (every writer) has closed its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.wait()?;
            match self.file.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn waits_for_a_writer_and_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames");
        mkfifo(&path);
        assert!(is_fifo(&path) && !is_fifo(dir.path()));
        // Opened before any writer: the open returns at once and the read waits.
        let mut fifo = Fifo::open(&path).unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                w.write_all(b"frame").unwrap();
            })
        };
        let mut got = Vec::new();
        fifo.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, b"frame");
    }
}
