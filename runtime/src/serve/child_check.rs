//! A new model's load and probe, first in a child process under a memory limit: a model
//! that would exhaust memory (a huge tensor on its first run) kills the child, not the
//! daemon, and the old model keeps serving.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What the child prints when the model loaded and passed the probe, before the sha256
/// of the file it read.
pub const OK_PREFIX: &str = "model ok, sha256 ";

/// How to check a model in a child process.
#[derive(Clone, Debug)]
pub struct ChildCheck {
    /// The program and its arguments (`glimpse serve <the daemon's options>`), to which
    /// `--check-model=FILE` is added: it loads and probes FILE as the daemon would,
    /// prints [`OK_PREFIX`] and the sha256, and exits.
    pub command: Vec<OsString>,
    /// The child's address space at most (RLIMIT_AS), in bytes.
    pub memory_limit: u64,
    /// The child is killed after this long.
    pub timeout: Duration,
}

impl ChildCheck {
    /// Runs the check of `model`; `Ok` when the child loaded and probed the file whose
    /// sha256 is `sha256` (the bytes the daemon will load).
    pub fn run(&self, model: &Path, sha256: &str) -> Result<()> {
        let (program, args) = self.command.split_first().context("no check command")?;
        let mut check = OsString::from("--check-model=");
        check.push(model);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(check)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limit = self.memory_limit;
        // SAFETY: setrlimit is async-signal-safe, and the closure allocates nothing.
        unsafe { cmd.pre_exec(move || limit_address_space(limit)) };
        let child = cmd.spawn().context("starting the model check process")?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let Ok(out) = rx.recv_timeout(self.timeout) else {
            // The waiting thread has not reaped the child yet: the pid is still its own.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            bail!(
                "the model check process took longer than {:.0} s and was killed",
                self.timeout.as_secs_f64()
            );
        };
        let out = out.context("waiting for the model check process")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        let last = last.unwrap_or("(nothing on stderr)").trim();
        if !out.status.success() {
            let how = match out.status.signal() {
                Some(sig) => format!("was killed by {}", signal_name(sig)),
                None => format!("failed ({})", out.status),
            };
            bail!(
                "the model check process (memory limit {} MiB, --reload-memory-limit) {how}: {last}",
                limit >> 20
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix(OK_PREFIX)) {
            Some(checked) if checked.trim() == sha256 => Ok(()),
            Some(checked) => bail!(
                "the model file changed during the check (sha256 {} checked, {} read)",
                short(checked.trim()),
                short(sha256)
            ),
            None => bail!("the model check process printed no result: {last}"),
        }
    }
}

/// The first 12 hex digits of a sha256, as the log shows them.
fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// Sets RLIMIT_AS (soft and hard) of the calling process.
fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGABRT => "SIGABRT, an allocation failed or the process aborted",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        _ => return format!("signal {sig}"),
    };
    format!("signal {sig} ({name})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, memory_limit: u64) -> ChildCheck {
        ChildCheck {
            command: ["sh", "-c", script].map(OsString::from).to_vec(),
            memory_limit,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn reports_success_failure_a_signal_a_mismatch_and_a_hang() {
        let ok = format!("echo '{OK_PREFIX}abcdef0123456789'");
        sh(&ok, 1 << 30)
            .run(Path::new("m.onnx"), "abcdef0123456789")
            .unwrap();
        let e = sh(&ok, 1 << 30)
            .run(Path::new("m.onnx"), "0123456789abcdef")
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("changed during the check"),
            "{e:#}"
        );
        // The file to check comes last (`sh -c SCRIPT ARG` makes it `$0`).
        let e = sh("echo \"$0\" >&2; exit 1", 1 << 30)
            .run(Path::new("/m/new.onnx"), "x")
            .unwrap_err();
        assert!(
            format!("{e:#}").ends_with(": --check-model=/m/new.onnx"),
            "{e:#}"
        );
        let e = sh("echo 'no such model' >&2; exit 1", 1 << 30)
            .run(Path::new("m.onnx"), "x")
            .unwrap_err();
        assert!(format!("{e:#}").ends_with("no such model"), "{e:#}");
        let e = sh("kill -ABRT $$", 1 << 30)
            .run(Path::new("m.onnx"), "x")
            .unwrap_err();
        assert!(format!("{e:#}").contains("SIGABRT"), "{e:#}");
        let e = ChildCheck {
            timeout: Duration::from_millis(300),
            ..sh("sleep 30", 1 << 30)
        }
        .run(Path::new("m.onnx"), "x")
        .unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
    }

    #[test]
    fn the_memory_limit_applies_to_the_child() {
        // `ulimit -v` is the address-space limit, in KiB.
        let e = sh("ulimit -v >&2; exit 1", 64 << 20)
            .run(Path::new("m.onnx"), "x")
            .unwrap_err();
        assert!(format!("{e:#}").ends_with(": 65536"), "{e:#}");
        assert!(format!("{e:#}").contains("memory limit 64 MiB"), "{e:#}");
    }
}
