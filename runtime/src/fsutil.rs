//! Files: crash-safe writing (a reader sees the old file or the new one, never half of
//! one), content digests, and names made safe for files and topics.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory, synced to
/// disk and renamed over the target (atomic on POSIX filesystems), then syncs the
/// directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    commit(stage(path, bytes)?, path)
}

/// `bytes` in a temporary file beside `path`, synced to disk, for [`commit`] to rename
/// over `path` (the daemon checks a pushed model in it first). Dropped, it is removed.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = parent(path);
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
    Ok(tmp)
}

/// Renames a file [`stage`]d for `path` over it, then syncs the directory.
pub fn commit(staged: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    let io = Error::io;
    staged
        .persist(path)
        .map_err(|e| e.error)
        .map_err(io("renaming into", path))?;
    // The rename is durable only once the directory entry is on disk too.
    sync_dir(parent(path))
}

/// Syncs a directory's entries to disk (after a rename or removal in it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing", dir))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
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

/// Removes the oldest JPEGs of `dir` (by name: names start with the time), each with its
/// JSON sidecar if it has one, while there are more than `keep` or they take more than
/// `max_bytes`. The newest stays whatever its size: it is the frame just kept.
pub fn prune_jpegs(dir: &Path, keep: Option<usize>, max_bytes: Option<u64>) -> std::io::Result<()> {
    if keep.is_none() && max_bytes.is_none() {
        return Ok(());
    }
    let mut files: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jpg"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|(_, n)| n).sum();
    let mut count = files.len();
    for (path, bytes) in files {
        let over = keep.is_some_and(|k| count > k) || max_bytes.is_some_and(|m| total > m);
        if !over || count == 1 {
            break;
        }
        log::debug!("removing {} (over the folder's budget)", path.display());
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(path.with_extension("json"));
        count -= 1;
        total -= bytes;
    }
    Ok(())
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
