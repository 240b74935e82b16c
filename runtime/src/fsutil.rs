//! Files: crash-safe writing (a reader sees the old file or the new one, never half of
//! one), content digests, and names made safe for files and topics.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory, synced to
/// disk and renamed over the target (atomic on POSIX filesystems), then syncs the
/// directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = Error::io;
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    remove_orphans(dir, name);
    let mut tmp = tempfile::Builder::new()
        // The writer's pid in the name tells an orphan (its writer was killed before the
        // rename) from another process's write in progress.
        .prefix(&format!(".{name}.{}.", std::process::id()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    // Temporary files are created private (0600); a model or report is meant to be read
    // by others (a service user, say), so keep the mode of the file being replaced, or
    // use the usual 0644 for a new one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("setting permissions of", path))?;
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io("writing", path))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(io("renaming into", path))?;
    // The rename is durable only once the directory entry is on disk too.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// The SHA-256 of `bytes` in lower-case hex: how a model file is identified.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// `s` with everything but ASCII letters, digits, `-` and `_` replaced by `_`: usable in
/// file names, MQTT topics and ids.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes temporary files of earlier writes of `name` whose writer no longer runs
/// (killed between creating the temporary and renaming it).
fn remove_orphans(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|f| f.ends_with(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            log::debug!(
                "removing {}, left by a killed write",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without /proc, assume the writer may still run: never remove another's file.
#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn orphaned_temporaries_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        // pid 0 never runs a program; our parent (the test harness's shell or cargo) does.
        let orphan = dir.path().join(".m.onnx.0.abc123.tmp");
        let live = dir.path().join(format!(
            ".m.onnx.{}.def456.tmp",
            std::os::unix::process::parent_id()
        ));
        let other = dir.path().join(".other.onnx.0.abc123.tmp");
        for f in [&orphan, &live, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        atomic_write(&p, b"whole").unwrap();
        assert!(!orphan.exists());
        assert!(live.exists() && other.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
    }

    #[cfg(unix)]
    #[test]
    fn new_files_are_world_readable_and_modes_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        atomic_write(&p, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&p, b"y").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
}
