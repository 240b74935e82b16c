//! The web page of `glimpse serve` in a real browser (Debian's chromium over WebDriver,
//! `tests/web-browser.py`), with a FIFO camera playing the sample photos; and its
//! headers, login and CSRF refusals over plain HTTP.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glimpse_e2e::serve::{agent, get, metric, Server};
use glimpse_e2e::{frame_of, root, sample, skip};
use serde_json::Value;

const TOKEN: &str = "a-token-for-the-web-page-test";

/// Plays the coffee photo into the FIFO, 4 frames a second, until `switch` is set, then
/// the cat, until `stop`.
fn play(fifo: PathBuf, switch: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let (coffee, cat) = (
        frame_of(&sample("coffee.png")),
        frame_of(&sample("chelsea.png")),
    );
    std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let frame = if switch.load(Ordering::Relaxed) {
                &cat
            } else {
                &coffee
            };
            if pipe.write_all(frame.as_raw()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

fn browser_script() -> PathBuf {
    root().join("tests/web-browser.py")
}

/// Whether chromium, chromedriver and selenium are installed (the script's `--check`).
fn browser_ready() -> bool {
    Command::new("/usr/bin/python3")
        .arg(browser_script())
        .arg("--check")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn serve_with_camera(dir: &std::path::Path) -> (Server, PathBuf, PathBuf) {
    let fifo = glimpse_e2e::mkfifo(&dir.join("frames.rgb"));
    let collected = dir.join("collected");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = Server::start(
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--raw",
            fifo.to_str().unwrap(),
            "--size",
            "320x240",
            "--format",
            "rgb24",
            "--hold-frames",
            "2",
            "--collect",
            collected.to_str().unwrap(),
        ],
        &[],
    );
    (server, fifo, collected)
}

#[test]
fn the_page_in_chromium_shows_the_camera_classifies_a_photo_and_files_a_frame() {
    if !browser_ready() {
        skip(
            "web::the_page_in_chromium",
            "chromium, chromium-driver or python3-selenium is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, fifo, collected) = serve_with_camera(dir.path());
    let (switch, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    play(fifo, switch.clone(), stop.clone());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page");
    std::fs::create_dir_all(&out).unwrap();

    let mut browser = Command::new("/usr/bin/python3")
        .arg(browser_script())
        .arg(server.url(""))
        .arg(TOKEN)
        .arg(sample("coffee.png"))
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut report = None;
    for line in BufReader::new(browser.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("  [browser] {line}");
        if line == "progress espresso-seen" {
            switch.store(true, Ordering::Relaxed);
        } else if line.starts_with('{') {
            report = Some(serde_json::from_str::<Value>(&line).unwrap());
        }
    }
    let status = browser.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "the browser script failed: {status}");
    let mut r = report.expect("the browser script's report");
    let card = r["model_card"].take();
    let card = card.as_str().unwrap();

    // Signed out, and with a wrong token: the form, no data, and 401 from every API call.
    assert_eq!(r["app_hidden_without_token"], true, "{r}");
    assert_eq!(r["model_card_without_token"], "", "{r}");
    for (path, status) in r["status_without_token"].as_object().unwrap() {
        assert_eq!(status, 401, "{path} without the token: {r}");
    }
    assert_eq!(r["wrong_token_message"], "wrong token", "{r}");
    assert_eq!(r["app_hidden_with_wrong_token"], true, "{r}");
    assert_eq!(r["status_with_wrong_token"], 401, "{r}");

    // Signed in: the model card, frames in the live view, espresso then the cat.
    for field in [
        "sha256",
        "1000 labels",
        "license\nApache-2.0",
        "center-crop 224x224",
    ] {
        assert!(
            card.contains(field),
            "{field:?} not on the model card: {card}"
        );
    }
    assert_eq!(r["live_width"], 320, "{r}");
    assert!(
        r["overlay"].as_str().unwrap().starts_with("espresso "),
        "{r}"
    );
    let states = r["states"].as_array().unwrap();
    assert_eq!(states[0], "espresso");
    assert_ne!(states[1], "espresso");
    let timeline = r["timeline"].as_str().unwrap();
    assert!(
        timeline.contains(&format!("espresso → {}", states[1].as_str().unwrap())),
        "{timeline}"
    );
    assert_eq!(r["upload_top"][0], "espresso", "{r}");
    assert_eq!(r["upload_top"].as_array().unwrap().len(), 5, "{r}");

    // The filed frame moved on disk, its sidecar with it.
    let (id, label) = (
        r["filed"]["id"].as_str().unwrap(),
        r["filed"]["label"].as_str().unwrap(),
    );
    let filed = collected
        .join("labelled")
        .join(label)
        .join(format!("{id}.jpg"));
    assert!(filed.is_file(), "{} is missing", filed.display());
    assert!(!collected.join(format!("unlabelled/{id}.jpg")).exists());

    // The phone: nothing wider than the 360-px screen.
    let phone = &r["phone"];
    assert!(
        phone["scroll"].as_f64() <= phone["client"].as_f64()
            && phone["widest"].as_f64().unwrap() <= 360.5,
        "horizontal overflow at 360 px: {phone}"
    );
    assert_eq!(r["console_errors"], serde_json::json!([]), "{r}");
    for shot in ["desktop.png", "phone.png"] {
        let png = image::open(out.join(shot)).unwrap();
        assert!(png.width() >= 360, "{shot}");
    }

    // The hostile page's POST reached the server with the session cookie and was
    // refused: the frame it tried to discard still waits.
    let target = r["hostile"]["target"].as_str().unwrap();
    assert_eq!(r["hostile"]["title"], "sent", "{r}");
    assert!(collected.join(format!("unlabelled/{target}.jpg")).is_file());
    let metrics = get(&agent(), &server.url("/metrics"), Some(TOKEN)).body;
    let refused = metric(&metrics, r#"glimpse_errors_total{kind="foreign_origin"}"#);
    assert!(refused >= Some(1.0), "no foreign_origin refusal counted");
}

/// A request with the given headers: status, the response's headers, and its body.
fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, ureq::http::HeaderMap, String) {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = agent()
        .run(req.body(body.to_string()).unwrap())
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), r.headers().clone(), text)
}

#[test]
fn the_login_cookie_csrf_refusals_headers_and_the_live_stream_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (server, fifo, _collected) = serve_with_camera(dir.path());
    let (switch, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    play(fifo, switch, stop.clone());
    let own = format!("http://{}", server.addr);
    let url = |p: &str| server.url(p);

    // The page and every answer carry the security headers.
    for path in ["/", "/app.js", "/v1/model"] {
        let (_, h, _) = call("GET", &url(path), &[], "");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    let (status, h, page) = call("GET", &url("/"), &[], "");
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(
        page.contains("/app.js") && !page.contains("<script>"),
        "{page}"
    );

    // Login: the token once, from this server's own page only.
    let login = |origin: &str, token: &str| {
        let body = serde_json::json!({ "token": token }).to_string();
        call(
            "POST",
            &url("/login"),
            &[("Origin", origin), ("Content-Type", "application/json")],
            &body,
        )
    };
    assert_eq!(login(&own, "wrong-token-wrong-token").0, 401);
    assert_eq!(login("http://127.0.0.1:1", TOKEN).0, 403);
    let (status, h, _) = login(&own, TOKEN);
    assert_eq!(status, 204);
    let set = h["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = [("Cookie", cookie.as_str())];
    assert_eq!(call("GET", &url("/v1/model"), &with_cookie, "").0, 200);
    assert_eq!(
        call(
            "GET",
            &url("/v1/model"),
            &[("Cookie", "glimpse_session=00")],
            ""
        )
        .0,
        401
    );

    // CSRF: a state-changing request on the cookie needs this server's Origin.
    let discard = url("/v1/collected/nosuchframe/discard");
    let foreign = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://127.0.0.1:9"),
    ];
    let (status, _, body) = call("POST", &discard, &foreign, "{}");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("foreign_origin"), "{body}");
    assert_eq!(call("POST", &discard, &with_cookie, "{}").0, 403);
    let same = [("Cookie", cookie.as_str()), ("Origin", own.as_str())];
    assert_eq!(
        call("POST", &discard, &same, "{}").0,
        404,
        "passes the check, no such frame"
    );

    // The live view: JPEG parts of the camera's frames.
    let stream = url("/v1/cameras/default/stream.mjpeg");
    let req = ureq::http::Request::builder()
        .uri(&stream)
        .header("Cookie", &cookie)
        .body(())
        .unwrap();
    let mut r = agent().run(req).unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        ct.starts_with("multipart/x-mixed-replace; boundary="),
        "{ct}"
    );
    let mut reader = BufReader::new(r.body_mut().as_reader());
    let mut jpegs = 0;
    let mut line = String::new();
    while jpegs < 2 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(n) = line.trim().strip_prefix("Content-Length: ") {
            let mut jpeg = vec![0; n.parse().unwrap()];
            reader.read_line(&mut line).unwrap();
            std::io::Read::read_exact(&mut reader, &mut jpeg).unwrap();
            let img = image::load_from_memory(&jpeg).unwrap();
            assert_eq!((img.width(), img.height()), (320, 240));
            jpegs += 1;
        }
    }
    // The default cap is 4 viewers: the fifth is refused while these are open.
    let open: Vec<_> = (0..3)
        .map(|_| {
            let req = ureq::http::Request::builder()
                .uri(&stream)
                .header("Authorization", format!("Bearer {TOKEN}"))
                .body(())
                .unwrap();
            agent().run(req).unwrap()
        })
        .collect();
    assert!(open.iter().all(|r| r.status() == 200));
    let (status, _, body) = call(
        "GET",
        &stream,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        "",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-viewers"), "{body}");
    let metrics = get(&agent(), &url("/metrics"), Some(TOKEN)).body;
    assert_eq!(metric(&metrics, "glimpse_viewers"), Some(4.0));

    // Logout ends the session.
    assert_eq!(call("POST", &url("/logout"), &same, "").0, 204);
    assert_eq!(call("GET", &url("/v1/model"), &with_cookie, "").0, 401);
    stop.store(true, Ordering::Relaxed);
}
