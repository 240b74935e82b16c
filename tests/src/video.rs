//! Real video for the camera tests: clips made with ffmpeg from the sample photos, and a
//! GStreamer RTSP server on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{root, sample};

/// An MJPEG Matroska clip at 320x240 and `fps`: each sample photo in turn for its seconds.
pub fn clip(ffmpeg: &Path, out: &Path, scenes: &[(&str, u32)], fps: u32) -> PathBuf {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-loglevel", "error", "-y"]);
    let mut graph = String::new();
    for (i, (photo, secs)) in scenes.iter().enumerate() {
        cmd.args(["-loop", "1", "-t", &secs.to_string(), "-i"])
            .arg(sample(photo));
        graph += &format!("[{i}]scale=320:240,setsar=1,fps={fps}[s{i}];");
    }
    for i in 0..scenes.len() {
        graph += &format!("[s{i}]");
    }
    graph += &format!("concat=n={}:v=1[v]", scenes.len());
    cmd.args(["-filter_complex", &graph, "-map", "[v]"])
        .args(["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"])
        .arg(out);
    let status = cmd.status().expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
    out.to_path_buf()
}

/// The Python that runs `tests/rtsp-server.py`, when GStreamer's RTSP server and every
/// element the script uses are installed (the script's own `--check`).
pub fn rtsp_python() -> Option<PathBuf> {
    let python = PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&python)
        .arg(script())
        .arg("--check")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn script() -> PathBuf {
    root().join("tests/rtsp-server.py")
}

/// A running RTSP server streaming one photo at 5 fps; killed when dropped.
pub struct RtspServer {
    child: Child,
    pub url: String,
}

impl RtspServer {
    pub fn start(python: &Path, port: u16, photo: &str) -> RtspServer {
        let mut child = Command::new(python)
            .arg(script())
            .arg(port.to_string())
            .arg(sample(photo))
            .stdout(Stdio::piped())
            .spawn()
            .expect("the RTSP server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the RTSP server did not start");
        RtspServer {
            child,
            url: format!("rtsp://127.0.0.1:{port}/cam"),
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose command line holds every one of `needles` (to prove none is
/// left behind).
pub fn processes_with(needles: &[&str]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| needles.iter().all(|n| c.contains(n)))
        .collect()
}

/// The children of `parent` that exited and were never reaped.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next()?, fields.next()?.parse::<u32>().ok()?);
        let pid = head.split_whitespace().next()?.parse().ok()?;
        (state == "Z" && ppid == parent).then_some(pid)
    })
    .collect()
}
