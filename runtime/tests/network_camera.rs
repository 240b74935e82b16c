//! Network cameras through real ffmpeg and a real GStreamer RTSP server (H.264): `glimpse
//! serve --source URL` follows a camera that restarts, gives up on one that stalls, and
//! leaves no ffmpeg behind when it stops.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_e2e::serve::{agent, free_port, get, metric, Server};
use glimpse_e2e::video::{processes_with, rtsp_python, zombies_of, RtspServer};
use glimpse_e2e::{sample, skip};

/// What the shipped model calls Chelsea, the sample cat, at 320x240.
const CAT: [&str; 3] = ["tabby, tabby cat", "tiger cat", "Egyptian cat"];

/// Waits until `/v1/latest` has a label `ok` accepts, and returns it.
fn wait_label(server: &Server, ok: impl Fn(&str) -> bool, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let r = get(&agent(), &server.url("/v1/latest"), None);
        let label = (r.status == 200)
            .then(|| r.json()["label"].as_str().map(String::from))
            .flatten();
        if let Some(label) = label.filter(|l| ok(l)) {
            return label;
        }
        assert!(
            t0.elapsed() < timeout,
            "no such label within {timeout:?}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An IP camera's MJPEG over HTTP (multipart/x-mixed-replace), served by ffmpeg: one
/// photo at 5 fps to the one client that connects.
fn http_camera(ffmpeg: &Path, photo: &str, url: &str) -> Child {
    Command::new(ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-re", "-loop", "1"])
        .args(["-framerate", "5", "-i"])
        .arg(sample(photo))
        .args([
            "-vf",
            "scale=320:240",
            "-pix_fmt",
            "yuvj420p",
            "-c:v",
            "mjpeg",
        ])
        .args(["-f", "mpjpeg", "-listen", "1", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts")
}

#[test]
fn an_http_mjpeg_camera_that_restarts_is_followed() {
    let Some(ffmpeg) = glimpse_e2e::ffmpeg() else {
        return skip(
            "network camera: HTTP MJPEG",
            "Debian's ffmpeg is not installed",
        );
    };
    let url = format!("http://127.0.0.1:{}/cam.mjpeg", free_port());
    let mut camera = http_camera(&ffmpeg, "coffee.png", &url);
    let server = Server::start(&["--source", &url, "--stall-timeout", "2"], &[]);
    let is_coffee = |l: &str| l == "espresso";
    wait_label(&server, is_coffee, Duration::from_secs(30));
    // The camera goes away (rebooted) and comes back showing something else.
    camera.kill().unwrap();
    camera.wait().unwrap();
    let line = server.wait_log("reopening in", Duration::from_secs(10));
    assert!(
        line.contains(&format!("{url} (ffmpeg): the stream ended")),
        "{line}"
    );
    let mut camera = http_camera(&ffmpeg, "chelsea.png", &url);
    wait_label(&server, |l| CAT.contains(&l), Duration::from_secs(30));
    camera.kill().unwrap();
    camera.wait().unwrap();
}

#[test]
fn a_camera_that_sends_nothing_is_given_up_on_and_tried_again() {
    if glimpse_e2e::ffmpeg().is_none() {
        return skip("network camera: stall", "Debian's ffmpeg is not installed");
    }
    // Accepts the connection and never answers: a camera hung mid-stream.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cam.mjpeg", listener.local_addr().unwrap());
    let server = Server::start(&["--source", &url, "--stall-timeout", "1"], &[]);
    let (mut first, _) = listener.accept().unwrap();
    let mut request = [0u8; 512];
    let n = first.read(&mut request).unwrap();
    assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /cam.mjpeg"));
    let line = server.wait_log("no frame for 1 s", Duration::from_secs(10));
    assert!(
        line.contains(&url) && line.contains("reopening in"),
        "{line}"
    );
    // ffmpeg was killed and started again: a second connection comes.
    listener.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    while listener.accept().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no second connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_rtsp_camera_that_restarts_is_followed_and_no_ffmpeg_outlives_the_daemon() {
    if glimpse_e2e::ffmpeg().is_none() {
        return skip("network camera: RTSP", "Debian's ffmpeg is not installed");
    }
    let Some(python) = rtsp_python() else {
        return skip(
            "network camera: RTSP",
            "GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi, openh264) is not installed",
        );
    };
    let port = free_port();
    let rtsp = RtspServer::start(&python, port, "coffee.png");
    let url = rtsp.url.clone();
    let mut server = Server::start(&["--source", &url], &[]);
    wait_label(&server, |l| l == "espresso", Duration::from_secs(30));
    let ours = || processes_with(&[&url, "image2pipe"]);
    assert_eq!(ours().len(), 1, "one ffmpeg reads the camera");
    // The camera restarts (a reboot, a firmware update) showing another scene: frames
    // resume within 5 s of it being back, without restarting glimpse.
    drop(rtsp);
    server.wait_log("reopening in", Duration::from_secs(10));
    let _rtsp = RtspServer::start(&python, port, "chelsea.png");
    let back = Instant::now();
    wait_label(&server, |l| CAT.contains(&l), Duration::from_secs(5));
    println!(
        "frames resumed {:?} after the camera was back",
        back.elapsed()
    );
    let m = get(&agent(), &server.url("/metrics"), None);
    let reopens = metric(&m.body, r#"glimpse_camera_reopens_total{camera="default"}"#).unwrap();
    assert!(reopens >= 1.0, "{}", m.body);
    assert_eq!(ours().len(), 1, "the old ffmpeg is gone");
    assert_eq!(
        zombies_of(server.child.id()),
        Vec::<u32>::new(),
        "unreaped children"
    );
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(ours(), Vec::<String>::new(), "ffmpeg left behind");
}
