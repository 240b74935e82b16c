//! `glimpse serve` as users run it: the real daemon on a loopback port, a real HTTP client,
//! real photos, a real MQTT broker (Debian's mosquitto), signals for reload and shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_e2e::serve::{
    agent, connect_from, free_port, get, get_with, metric, multipart, post, read_response,
    send_then_read, Reply, Server,
};
use glimpse_e2e::{bin, classify_json, classify_json_with, root, sample, shipped_model, skip};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

/// The error document every refusal carries.
fn assert_error(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["kind"], kind, "{}", r.body);
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        r.body
    );
}

#[test]
fn classifies_real_photos_with_auth_limits_and_json_errors() {
    let server = Server::start(
        &["--max-body-bytes", "2000000", "--max-pixels", "4000000"],
        &[("GLIMPSE_TOKEN", TOKEN)],
    );
    let a = agent();
    let t = Some(TOKEN);

    // Health needs no token; everything else does.
    assert_eq!(get(&a, &server.url("/healthz"), None).status, 200);
    let ready = get(&a, &server.url("/readyz"), None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    let coffee = std::fs::read(sample("coffee.png")).unwrap();
    let r = post(&a, &server.url("/v1/classify"), None, "image/png", &coffee);
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
    let r = post(
        &a,
        &server.url("/v1/classify"),
        Some("test-token-0123456789abcdeX"),
        "image/png",
        &coffee,
    );
    assert_error(&r, 401, "unauthorized");
    assert_error(&get(&a, &server.url("/metrics"), None), 401, "unauthorized");
    assert_error(
        &get(&a, &server.url("/v1/model"), None),
        401,
        "unauthorized",
    );

    // Real photos: the same answer as `glimpse classify` gives for the same file.
    let mut photos: Vec<PathBuf> = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]
        .iter()
        .map(|n| sample(n))
        .collect();
    match glimpse_e2e::darknet_photos() {
        Some(dir) => photos.extend(
            ["dog.jpg", "eagle.jpg", "horses.jpg"]
                .iter()
                .map(|n| dir.join(n)),
        ),
        None => skip(
            "serve: darknet photos",
            "Debian's darknet package is not installed",
        ),
    }
    let model = shipped_model();
    for photo in &photos {
        let bytes = std::fs::read(photo).unwrap();
        let r = post(
            &a,
            &server.url("/v1/classify?top_k=3"),
            t,
            "application/octet-stream",
            &bytes,
        );
        assert_eq!(r.status, 200, "{}: {}", photo.display(), r.body);
        let got = r.json();
        let want = classify_json(&model, photo);
        assert_eq!(got["label"], want["label"], "{}", photo.display());
        assert_eq!(got["top"].as_array().unwrap().len(), 3);
        let (p, q) = (
            got["top"][0]["probability"].as_f64().unwrap(),
            want["top"][0]["probability"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-5, "{}: {p} vs {q}", photo.display());
        assert_eq!(got["model_sha256"].as_str().unwrap().len(), 64);
    }
    let r = post(&a, &server.url("/v1/classify"), t, "image/png", &coffee);
    assert_eq!(r.json()["label"], "espresso");
    assert_eq!(
        r.json()["top"].as_array().unwrap().len(),
        5,
        "default top_k"
    );

    // Multipart upload, as `curl -F image=@photo` sends it.
    let chelsea = std::fs::read(sample("chelsea.png")).unwrap();
    let (ct, body) = multipart("image", "chelsea.png", &chelsea);
    let r = post(&a, &server.url("/v1/classify?top_k=1"), t, &ct, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["label"],
        classify_json(&model, &sample("chelsea.png"))["label"]
    );
    // A threshold above the top-1 probability: no label, the ranking still there.
    let r = post(
        &a,
        &server.url("/v1/classify?threshold=0.99"),
        t,
        &ct,
        &body,
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["label"].is_null(), "{}", r.body);

    // Refusals, each a JSON error with its kind.
    // A body over the limit: refused from its Content-Length without being read (curl
    // sends `Expect: 100-continue` for large uploads and gets the 413 at once) ...
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2500000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let (code, body) = read_response(&mut s);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("\"kind\":\"too_large\""), "{body}");
    // ... and a chunked body that grows past it while being read.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![0u8; 500_000];
    for _ in 0..5 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    // The last chunk, as a real client ends its body: without it the server drains for
    // its whole linger time (10 s), as long as this socket's read timeout.
    let _ = s.write_all(b"0\r\n\r\n");
    let (code, body) = read_response(&mut s);
    assert_eq!(code, 413, "{body}");
    let mut huge = Vec::new();
    image::GrayImage::new(30_000, 2)
        .write_to(
            &mut std::io::Cursor::new(&mut huge),
            image::ImageFormat::Png,
        )
        .unwrap();
    assert_error(
        &post(&a, &server.url("/v1/classify"), t, "image/png", &huge),
        413,
        "too_large",
    );
    let readme = std::fs::read(root().join("README.md")).unwrap();
    assert_error(
        &post(&a, &server.url("/v1/classify"), t, "image/png", &readme),
        400,
        "bad_image",
    );
    let jpeg = std::fs::read(sample("rocket.jpg")).unwrap();
    assert_error(
        &post(
            &a,
            &server.url("/v1/classify"),
            t,
            "image/jpeg",
            &jpeg[..jpeg.len() / 3],
        ),
        400,
        "bad_image",
    );
    assert_error(
        &post(&a, &server.url("/v1/classify"), t, "image/png", b""),
        400,
        "bad_request",
    );
    for bad_query in ["top_k=0", "top_k=x", "threshold=2", "colour=red"] {
        let url = server.url(&format!("/v1/classify?{bad_query}"));
        assert_error(&post(&a, &url, t, "image/png", &coffee), 400, "bad_request");
    }
    let (ct, body) = multipart("notes", "", b"text");
    let body_without_file = String::from_utf8(body)
        .unwrap()
        .replace("; filename=\"\"", "");
    assert_error(
        &post(
            &a,
            &server.url("/v1/classify"),
            t,
            &ct,
            body_without_file.as_bytes(),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &post(
            &a,
            &server.url("/v1/classify"),
            t,
            "multipart/form-data; boundary=x",
            b"garbage",
        ),
        400,
        "bad_request",
    );
    assert_error(
        &get(&a, &server.url("/v1/classify"), t),
        405,
        "method_not_allowed",
    );
    assert_error(&get(&a, &server.url("/etc/passwd"), t), 404, "not_found");
    assert_error(&get(&a, &server.url("/v1/latest"), t), 404, "no_camera");

    // Malformed HTTP on a raw socket: an error answer, and the server goes on serving.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"POST /v1/classify HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    assert_eq!(
        post(&a, &server.url("/v1/classify"), t, "image/png", &coffee).json()["label"],
        "espresso"
    );

    // The model as the server describes it.
    let m = get(&a, &server.url("/v1/model"), t).json();
    assert_eq!(m["classes"], 1000);
    assert_eq!(m["labels"][967], "espresso");
    assert!(m["preprocess"].as_str().unwrap().contains("224"), "{m}");

    // Metrics: the official Prometheus client's strict OpenMetrics parser accepts them,
    // and they count what happened.
    let r = get_with(
        &a,
        &server.url("/metrics"),
        t,
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    let text = r.body;
    let ok = metric(
        &text,
        r#"glimpse_http_requests_total{route="/v1/classify",status="200"}"#,
    )
    .unwrap();
    assert!(ok >= photos.len() as f64 + 4.0, "{ok}\n{text}");
    assert_eq!(
        metric(&text, r#"glimpse_errors_total{kind="too_large"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"glimpse_errors_total{kind="unauthorized"}"#),
        Some(4.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"glimpse_inference_duration_seconds_count{source="http"}"#
        )
        .unwrap()
            >= ok,
        "{text}"
    );
    assert!(
        text.contains(&format!("sha256=\"{}\"", m["sha256"].as_str().unwrap())),
        "{text}"
    );
    assert_eq!(
        metric(&text, "glimpse_inferences_in_flight"),
        Some(0.0),
        "{text}"
    );
    match glimpse_e2e::prometheus_python() {
        Some(pythonpath) => {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("metrics.txt");
            std::fs::write(&file, &text).unwrap();
            let out = Command::new("python3")
                .env("PYTHONPATH", &pythonpath)
                .arg("-c")
                .arg(
                    "import sys\n\
                     from prometheus_client.openmetrics.parser import text_string_to_metric_families as om\n\
                     fams = list(om(open(sys.argv[1]).read()))\n\
                     print(len(fams), sum(len(f.samples) for f in fams))",
                )
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the OpenMetrics parser refused /metrics: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let counts = String::from_utf8_lossy(&out.stdout);
            let families: usize = counts.split_whitespace().next().unwrap().parse().unwrap();
            // Without a camera, the families labelled by camera have no series yet.
            assert!(families >= 9, "{counts}");
        }
        None => skip(
            "serve: /metrics validation",
            "the prometheus-client wheel (or python3) is missing",
        ),
    }
    promtool_accepts(&get(&a, &server.url("/metrics"), t));
}

/// `promtool check metrics` (Debian's prometheus) passes the text format served to a
/// client that does not ask for OpenMetrics: every metric has help, names lint clean.
fn promtool_accepts(r: &Reply) {
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        skip(
            "serve: promtool check metrics",
            "promtool (Debian prometheus) is not installed",
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.body
    );
}

/// An ONNX file that is not a model: the first 100 kB of one.
fn truncated_model(to: &Path) {
    let bytes = std::fs::read(shipped_model()).unwrap();
    std::fs::write(to, &bytes[..100_000]).unwrap();
}

#[test]
fn hot_reload_swaps_good_models_and_keeps_serving_on_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/fashion-mnist.onnx"), &model).unwrap();
    let server = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--watch-interval",
            "0.2",
        ],
        &[],
    );
    let a = agent();
    let coffee = std::fs::read(sample("coffee.png")).unwrap();
    let before = get(&a, &server.url("/v1/model"), None).json();
    assert_eq!(before["classes"], 10);

    // A good model replaces the file (atomically, as `glimpse-train` writes): picked up
    // by the watcher without a signal.
    let staging = dir.path().join("staging.onnx");
    std::fs::copy(shipped_model(), &staging).unwrap();
    std::fs::rename(&staging, &model).unwrap();
    server.wait_log("glimpse serve: reloaded", Duration::from_secs(30));
    let after = get(&a, &server.url("/v1/model"), None).json();
    assert_eq!(after["classes"], 1000);
    assert_ne!(after["sha256"], before["sha256"]);
    let r = post(&a, &server.url("/v1/classify"), None, "image/png", &coffee);
    assert_eq!(r.json()["label"], "espresso");
    assert_eq!(r.json()["model_sha256"], after["sha256"]);

    // A broken file, then SIGHUP: refused, logged, counted; the old model keeps serving.
    truncated_model(&staging);
    std::fs::rename(&staging, &model).unwrap();
    let failed = server.wait_log("reload failed", Duration::from_secs(30));
    assert!(failed.contains("still serving"), "{failed}");
    server.signal("HUP");
    let t0 = Instant::now();
    loop {
        let text = get(&a, &server.url("/metrics"), None).body;
        if metric(&text, r#"glimpse_model_reloads_total{result="failed"}"#) == Some(2.0) {
            assert_eq!(
                metric(&text, r#"glimpse_model_reloads_total{result="ok"}"#),
                Some(1.0),
                "{text}"
            );
            assert!(text.contains(after["sha256"].as_str().unwrap()), "{text}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "SIGHUP reload not counted: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = post(&a, &server.url("/v1/classify"), None, "image/png", &coffee);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["label"], "espresso");
    assert_eq!(
        get(&a, &server.url("/v1/model"), None).json()["sha256"],
        after["sha256"]
    );
    assert_eq!(get(&a, &server.url("/readyz"), None).status, 200);
}

/// Replaces the model file atomically with `bytes`, as `glimpse-train` writes.
fn replace_model(model: &Path, bytes: &[u8]) {
    let staging = model.with_extension("staging");
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, model).unwrap();
}

#[test]
fn a_reload_that_would_exhaust_memory_or_is_too_large_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/fashion-mnist.onnx"), &model).unwrap();
    let model_s = model.to_str().unwrap();
    let watch = ["--model", model_s, "--watch-interval", "0.2"];
    let limits = [
        "--reload-memory-limit",
        "1073741824",
        "--max-model-bytes",
        "4000000",
    ];
    let server = Server::start(&[&watch[..], &limits[..]].concat(), &[]);
    let a = agent();
    let before = get(&a, &server.url("/v1/model"), None).json();
    // Its first run fills a 1.2 GB tensor: the check process, limited to 1 GiB, dies
    // of it; the daemon never loads it.
    let huge = glimpse_e2e::corpus::huge_tensor_model();
    replace_model(&model, &huge);
    let failed = server.wait_log("MiB, --reload-memory-limit)", Duration::from_secs(60));
    assert!(failed.contains("reload failed, still serving"), "{failed}");
    assert!(failed.contains("memory limit 1024 MiB"), "{failed}");
    let png = std::fs::read(sample("coffee.png")).unwrap();
    let r = post(&a, &server.url("/v1/classify"), None, "image/png", &png);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model_sha256"], before["sha256"]);
    // A file over --max-model-bytes is refused before it is read.
    replace_model(&model, &std::fs::read(shipped_model()).unwrap());
    let failed = server.wait_log("(--max-model-bytes)", Duration::from_secs(60));
    assert!(
        failed.contains("over the limit of 4000000 bytes"),
        "{failed}"
    );
    assert_eq!(get(&a, &server.url("/v1/model"), None).json(), before);
    drop(server);

    // The same huge model is otherwise valid: loaded in-process (no check process), on
    // a machine with the memory for it, it serves.
    std::fs::copy(root().join("models/fashion-mnist.onnx"), &model).unwrap();
    let server = Server::start(
        &[&watch[..], &["--reload-memory-limit", "0"][..]].concat(),
        &[],
    );
    replace_model(&model, &huge);
    server.wait_log("glimpse serve: reloaded", Duration::from_secs(60));
    assert_eq!(get(&a, &server.url("/v1/model"), None).json()["classes"], 4);
}

#[test]
fn sigterm_drains_the_request_in_flight_and_systemd_hears_about_it() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut server = Server::start(
        &[],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages = String::new();
    let mut buf = [0u8; 4096];
    while !(messages.contains("READY=1") && messages.contains("WATCHDOG=1")) {
        let n = notify.recv(&mut buf).expect("sd_notify messages arrive");
        messages.push_str(&String::from_utf8_lossy(&buf[..n]));
        messages.push('\n');
    }

    // Start a request and leave it half uploaded.
    let coffee = std::fs::read(sample("coffee.png")).unwrap();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        coffee.len()
    )
    .unwrap();
    let half = coffee.len() / 2;
    s.write_all(&coffee[..half]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.signal("TERM");
    server.wait_log(
        "shutting down: draining 1 connection",
        Duration::from_secs(10),
    );
    // New connections are no longer accepted while the old one drains.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect_timeout(&server.addr, Duration::from_secs(2)).is_err(),
        "the listener is still open during the drain"
    );
    s.write_all(&coffee[half..]).unwrap();
    let (code, body) = read_response(&mut s);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("espresso"), "{body}");
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    while let Ok(n) = notify.recv(&mut buf) {
        messages.push_str(&String::from_utf8_lossy(&buf[..n]));
        if messages.contains("STOPPING=1") {
            break;
        }
    }
    assert!(messages.contains("STOPPING=1"), "{messages}");
}

#[test]
fn load_test_1000_requests_at_concurrency_16() {
    const REQUESTS: usize = 1000;
    const CONCURRENCY: usize = 16;
    let server = Server::start(&["--queue", "32"], &[]);
    let photo = Arc::new(std::fs::read(sample("chelsea.png")).unwrap());
    let url = server.url("/v1/classify?top_k=1");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (photo, url, next) = (photo.clone(), url.clone(), next.clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut results = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < REQUESTS {
                    let t = Instant::now();
                    let r = post(&a, &url, None, "image/png", &photo);
                    results.push((r.status, t.elapsed(), r.json()["label"].clone()));
                }
                results
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(results.len(), REQUESTS, "lost responses");
    let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed[0]
    );
    assert!(
        results.iter().all(|r| r.2 == results[0].2),
        "answers differ under load"
    );
    let mut lat: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "load test: {REQUESTS} requests, concurrency {CONCURRENCY}, chelsea.png on EfficientNet-Lite0: {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms, 0 errors",
        REQUESTS as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    let text = get(&agent(), &server.url("/metrics"), None).body;
    assert_eq!(
        metric(
            &text,
            r#"glimpse_http_requests_total{route="/v1/classify",status="200"}"#
        ),
        Some(REQUESTS as f64)
    );
}

#[test]
fn overload_is_refused_with_503_and_retry_after() {
    // One worker and no queue: of 8 simultaneous uploads of a large photo, some must
    // be refused at once, and every answer is either a result or a clean 503.
    let server = Server::start(&["--workers", "1", "--queue", "0"], &[]);
    let photo = Arc::new(std::fs::read(sample("astronaut.png")).unwrap());
    let url = server.url("/v1/classify");
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let replies: Vec<Reply> = (0..8)
        .map(|_| {
            let (photo, url, barrier) = (photo.clone(), url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let a = agent();
                barrier.wait();
                post(&a, &url, None, "image/png", &photo)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + refused.len(), 8);
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} ok, {} refused",
        refused.len()
    );
    for r in refused {
        assert_error(r, 503, "overloaded");
        assert_eq!(r.retry_after.as_deref(), Some("1"));
    }
    // And it recovers.
    let r = post(&agent(), &url, None, "image/png", &photo);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The camera options that play the sample photos in a loop, a state change on every
/// new label (with `--images DIR`).
const LOOPING_CAMERA: [&str; 7] = [
    "--loop",
    "--fps",
    "4",
    "--hold-frames",
    "1",
    "--threshold",
    "0",
];

/// A free loopback port (bound, then released for the broker to take).
struct Broker {
    child: Child,
}

impl Broker {
    fn start(mosquitto: &Path, conf: &Path, port: u16) -> Broker {
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`: the peak resident memory).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn hostile_images_at_once_stay_within_the_memory_budget() {
    // The unit's MemoryMax=768M gives the default budget, three quarters of it.
    const BUDGET: u64 = 576 << 20;
    let png = Arc::new(glimpse_e2e::corpus::hostile_png());
    let jpeg = Arc::new(glimpse_e2e::corpus::big_jpeg());
    let budget = BUDGET.to_string();
    // All 36 from this one address reach the handler (the per-peer cap is another test's).
    let server = Server::start(
        &[
            "--workers",
            "4",
            "--memory-budget",
            &budget,
            "--max-connections-per-peer",
            "36",
        ],
        &[],
    );
    server.wait_log("MiB for requests", Duration::from_secs(10));
    let url = server.url("/v1/classify");
    let replies: Vec<(u16, String)> = (0..36)
        .map(|i| {
            let (body, kind) = if i % 2 == 0 {
                (png.clone(), "image/png")
            } else {
                (jpeg.clone(), "image/jpeg")
            };
            let url = url.clone();
            std::thread::spawn(move || {
                let r = post(&agent(), &url, None, kind, &body);
                (r.status, r.body)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let count = |status| replies.iter().filter(|r| r.0 == status).count();
    eprintln!(
        "36 hostile requests: {} x 200, {} x 503, {} x 413",
        count(200),
        count(503),
        count(413)
    );
    for (status, body) in &replies {
        assert!([200, 413, 503].contains(status), "{status}: {body}");
    }
    assert!(count(200) >= 4, "{replies:#?}");
    let peak = proc_status_kib(server.child.id(), "VmHWM") << 10;
    eprintln!(
        "peak resident memory {} MiB, budget {} MiB",
        peak >> 20,
        BUDGET >> 20
    );
    assert!(peak < BUDGET, "peak {} MiB over the budget", peak >> 20);
    // And it still serves.
    let photo = std::fs::read(sample("coffee.png")).unwrap();
    let r = post(&agent(), &url, None, "image/png", &photo);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A message as a subscriber got it: its topic and payload.
type Message = (String, Vec<u8>);

/// A subscriber on `port` that sends every message under `filters` down a channel,
/// subscribing again after each reconnection, as a home automation server would.
fn subscriber(port: u16, filters: &[&str], login: Option<(&str, &str)>) -> mpsc::Receiver<Message> {
    let (tx, rx) = mpsc::channel::<Message>();
    let mut opts = rumqttc::MqttOptions::new(format!("sub-{port}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    // Snapshots are larger than rumqttc's 10 KiB default.
    opts.set_max_packet_size(16 << 20, 10 << 10);
    if let Some((user, pass)) = login {
        opts.set_credentials(user, pass);
    }
    let (client, mut conn) = rumqttc::Client::new(opts, 64);
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    for filter in &filters {
                        let _ = client.subscribe(filter, rumqttc::QoS::AtLeastOnce);
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    rx
}

#[test]
fn mqtt_over_tls_with_a_password_and_a_client_certificate() {
    let Some(mosquitto) = glimpse_e2e::mosquitto() else {
        skip(
            "serve: MQTT over TLS",
            "Debian's mosquitto is not installed",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = glimpse_e2e::tls::TestPki::new(dir.path());
    // The broker: no anonymous clients, one user, a TLS listener that wants a client
    // certificate from the CA, and a plain loopback listener for the test's subscriber.
    let passwd = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["board", "s3cret pass"])
        .output()
        .expect("mosquitto_passwd (Debian's mosquitto) runs");
    assert!(made.status.success(), "{made:?}");
    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\npersistence false\nper_listener_settings false\nallow_anonymous false\n\
             password_file {}\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             listener {plain_port} 127.0.0.1\n",
            passwd.display(),
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display(),
        ),
    )
    .unwrap();
    let _broker = Broker::start(&mosquitto, &conf, plain_port);
    let rx = subscriber(
        plain_port,
        &["glimpse/tls/#"],
        Some(("board", "s3cret pass")),
    );
    let write_secret = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    std::fs::set_permissions(
        &pki.client_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let good = write_secret("good", "s3cret pass\n");
    let wrong = write_secret("wrong", "guess\n");
    let samples = root().join("samples");
    let tls_port_s = tls_port.to_string();
    let start = |password: &Path, ca: &Path| {
        Server::start(
            &[
                &["--images", samples.to_str().unwrap()][..],
                &LOOPING_CAMERA,
                &[
                    "--mqtt-host",
                    "127.0.0.1",
                    "--mqtt-port",
                    &tls_port_s,
                    "--mqtt-tls",
                    "--mqtt-ca",
                    ca.to_str().unwrap(),
                    "--mqtt-client-cert",
                    pki.client_cert.to_str().unwrap(),
                    "--mqtt-client-key",
                    pki.client_key.to_str().unwrap(),
                    "--mqtt-username",
                    "board",
                    "--mqtt-password-file",
                    password.to_str().unwrap(),
                    "--mqtt-topic",
                    "glimpse/tls",
                    "--mqtt-no-discovery",
                ][..],
            ]
            .concat(),
            &[],
        )
    };

    // The right password: availability and state changes arrive through the TLS listener.
    let server = start(&good, &pki.ca);
    server.wait_log("over TLS", Duration::from_secs(10));
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while !(seen
        .iter()
        .any(|(t, p): &Message| t == "glimpse/tls/availability" && p == b"online")
        && seen.iter().any(|(t, _)| t == "glimpse/tls/state"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "no availability and state over TLS; got {seen:#?}"
        );
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(m);
        }
    }
    let text = get(&agent(), &server.url("/metrics"), None).body;
    assert_eq!(metric(&text, "glimpse_mqtt_connected"), Some(1.0), "{text}");
    drop(server);

    // A wrong password is named as such, and the daemon goes on serving.
    let server = start(&wrong, &pki.ca);
    let refused = server.wait_log("refused the user name or password", Duration::from_secs(20));
    assert!(
        refused.contains(&format!("127.0.0.1:{tls_port}")),
        "{refused}"
    );
    assert_eq!(get(&agent(), &server.url("/healthz"), None).status, 200);
    let text = get(&agent(), &server.url("/metrics"), None).body;
    assert_eq!(metric(&text, "glimpse_mqtt_connected"), Some(0.0), "{text}");
    drop(server);

    // A broker whose certificate the given CA did not sign is not trusted.
    let server = start(&good, &pki.other_ca);
    server.wait_log("UnknownIssuer", Duration::from_secs(20));
    drop(server);

    // Credentials in clear to a broker off loopback are refused, unless allowed.
    let err = serve_refuses(
        &[
            "--mqtt-host",
            "192.0.2.7",
            "--mqtt-username",
            "board",
            "--mqtt-password-file",
        ]
        .map(std::ffi::OsStr::new)
        .into_iter()
        .chain([good.as_os_str()])
        .collect::<Vec<_>>(),
    );
    assert!(
        err.contains("refusing to send the MQTT user name and password in clear to 192.0.2.7"),
        "{err}"
    );
    // TLS files without --mqtt-tls are a mistake, not a silent plain connection.
    let err = serve_refuses(
        &["--mqtt-host", "127.0.0.1", "--mqtt-ca"]
            .map(std::ffi::OsStr::new)
            .into_iter()
            .chain([pki.ca.as_os_str()])
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("--mqtt-tls"), "{err}");
}

/// A 960x640 frame: the cat large on the left, a coffee cup in the 320x320 square at
/// (640, 160) on the right.
fn cat_and_coffee(to: &Path) {
    let load = |name: &str, side: u32| {
        let img = image::open(sample(name)).unwrap().to_rgb8();
        image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle)
    };
    let mut frame = image::RgbImage::from_pixel(960, 640, image::Rgb([255, 255, 255]));
    image::imageops::overlay(&mut frame, &load("chelsea.png", 640), 0, 0);
    image::imageops::overlay(&mut frame, &load("coffee.png", 320), 640, 160);
    frame.save(to).unwrap();
}

#[test]
fn a_crop_classifies_only_its_region() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let photo = frames.join("cat-and-coffee.png");
    cat_and_coffee(&photo);
    // glimpse classify: the whole photo is not an espresso, its right square is.
    let label = |crop: &[&str]| classify_json_with(&shipped_model(), &photo, crop)["label"].clone();
    assert_ne!(label(&[]), "espresso");
    assert_eq!(label(&["--crop", "640,160,320,320"]), "espresso");
    // glimpse camera: the same square of each frame.
    let out = Command::new(bin("glimpse"))
        .args(["camera", "--images"])
        .arg(&frames)
        .args(["--frames", "1", "-f", "json", "--crop", "640,160,320,320"])
        .output()
        .unwrap();
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or(""),
    )
    .unwrap_or_default();
    assert_eq!(
        first["label"],
        "espresso",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // serve's camera loop, with the crop as fractions of the frame, shown in the status.
    let server = Server::start(
        &[
            &[
                "--images",
                frames.to_str().unwrap(),
                "--crop",
                "0.6667,0.25,0.3333,0.5",
            ][..],
            &LOOPING_CAMERA[..],
        ]
        .concat(),
        &[],
    );
    server.wait_log("crop 0.6667,0.25,0.3333,0.5", Duration::from_secs(10));
    let latest = loop {
        let l = get(&agent(), &server.url("/v1/latest"), None);
        if l.status == 200 {
            break l.json();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(latest["label"], "espresso", "{latest}");
    assert_eq!(latest["crop"], "0.6667,0.25,0.3333,0.5", "{latest}");
    // A crop outside frames of a known size, or no crop at all, is refused at start-up.
    let fifo = dir.path().join("fifo");
    let fifo = fifo.to_str().unwrap();
    let raw = ["--raw", fifo, "--size", "320x240", "--format", "yuyv"];
    let err = serve_refuses(&[&raw[..], &["--crop", "300,0,100,100"]].concat());
    assert!(
        err.contains("crop 300,0,100,100 reaches outside the 320x240 frame"),
        "{err}"
    );
    let images = frames.to_str().unwrap();
    let err = serve_refuses(&["--images", images, "--crop", "0.5,0,0.6,1"]);
    assert!(err.contains("reaches outside the frame"), "{err}");
}

/// ffmpeg writing `photo` into `fifo` as 320x240 YUYV frames, 5 per second for `secs`.
fn ffmpeg_into(ffmpeg: &Path, photo: &str, fifo: &Path, secs: u32) -> std::process::ExitStatus {
    Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-loop",
            "1",
            "-i",
        ])
        .arg(sample(photo))
        .args(["-t", &secs.to_string(), "-r", "5", "-vf", "scale=320:240"])
        .args(["-pix_fmt", "yuyv422", "-f", "rawvideo", "-y"])
        .arg(fifo)
        .status()
        .unwrap()
}

#[test]
fn a_fifo_whose_writer_restarts_keeps_delivering_frames() {
    let Some(ffmpeg) = glimpse_e2e::ffmpeg() else {
        skip("serve: FIFO", "Debian's ffmpeg is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fifo = glimpse_e2e::mkfifo(&dir.path().join("frames.yuyv"));
    let server = Server::start(
        &[
            "--raw",
            fifo.to_str().unwrap(),
            "--size",
            "320x240",
            "--format",
            "yuyv",
        ],
        &[],
    );
    let label = || get(&agent(), &server.url("/v1/latest"), None).json()["label"].clone();
    // The first writer ends (as ffmpeg does when its RTSP input drops) ...
    assert!(ffmpeg_into(&ffmpeg, "coffee.png", &fifo, 2).success());
    assert_eq!(label(), "espresso");
    server.wait_log("the writer closed the pipe", Duration::from_secs(5));
    // ... and the next one, started later, is read: frames resume without a restart.
    std::thread::sleep(Duration::from_secs(1));
    assert!(ffmpeg_into(&ffmpeg, "chelsea.png", &fifo, 2).success());
    let cat = label();
    assert!(
        ["tabby, tabby cat", "tiger cat", "Egyptian cat"].contains(&cat.as_str().unwrap_or("")),
        "{cat}"
    );
    let m = get(&agent(), &server.url("/metrics"), None);
    assert!(
        metric(
            &m.body,
            r#"glimpse_frames_captured_total{camera="default"}"#
        )
        .unwrap()
            >= 10.0
    );
    assert!(metric(&m.body, r#"glimpse_errors_total{kind="camera"}"#).unwrap() >= 1.0);
}

#[test]
fn camera_events_reach_sse_and_a_real_mqtt_broker_across_a_broker_restart() {
    let Some(mosquitto) = glimpse_e2e::mosquitto() else {
        skip("serve: MQTT", "Debian's mosquitto is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let mut broker = Some(Broker::start(&mosquitto, &conf, port));

    let rx = subscriber(port, &["glimpse/test/#", "homeassistant/#"], None);
    std::thread::sleep(Duration::from_millis(500));

    let samples = root().join("samples");
    let port_s = port.to_string();
    let server = Server::start(
        &[
            &["--images", samples.to_str().unwrap()][..],
            &LOOPING_CAMERA,
            &[
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                &port_s,
                "--mqtt-topic",
                "glimpse/test",
                "--mqtt-client-id",
                "glimpse-under-test",
                "--mqtt-status-interval",
                "1",
            ],
        ]
        .concat(),
        &[],
    );

    // Server-sent events: a `state` event per change of label.
    let mut sse = TcpStream::connect(server.addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        sse,
        "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(sse.try_clone().unwrap()).lines();
    let mut states = Vec::new();
    let mut saw_ok = false;
    while states.len() < 3 {
        let line = lines.next().expect("the event stream goes on").unwrap();
        saw_ok |= line.starts_with("HTTP/1.1 200");
        if let Some(data) = line.strip_prefix("data: ") {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                if v.get("previous").is_some() {
                    states.push(v["state"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(saw_ok);
    assert!(states.windows(2).all(|w| w[0] != w[1]), "{states:?}");
    let latest = get(&agent(), &server.url("/v1/latest"), None);
    assert_eq!(latest.status, 200, "{}", latest.body);
    let latest = latest.json();
    assert!(
        latest["frame"].as_u64().is_some() && latest["top"].as_array().unwrap().len() == 5,
        "{latest}"
    );
    let known: Vec<String> = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]
        .iter()
        .map(|n| {
            classify_json(&shipped_model(), &samples.join(n))["label"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        states.iter().all(|s| known.contains(s)),
        "{states:?} vs {known:?}"
    );

    // MQTT: discovery, availability, state changes and status.
    // Every message received, in order; `from` skips what came before a point in time.
    let seen: std::cell::RefCell<Vec<Message>> = Default::default();
    let wait_for =
        |what: &str, from: usize, pred: &dyn Fn(&str, &str) -> bool| -> (String, String) {
            let t0 = Instant::now();
            loop {
                while let Ok(m) = rx.try_recv() {
                    seen.borrow_mut().push(m);
                }
                let text = |(t, p): &Message| (t.clone(), String::from_utf8_lossy(p).into_owned());
                if let Some(m) = seen
                    .borrow()
                    .iter()
                    .skip(from)
                    .map(text)
                    .find(|(t, p)| pred(t, p))
                {
                    return m;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(40),
                    "no MQTT message: {what}; got {:#?}",
                    seen.borrow()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
    let (_, discovery) = wait_for("discovery", 0, &|t, _| {
        t == "homeassistant/sensor/glimpse-under-test/state/config"
    });
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(discovery["state_topic"], "glimpse/test/default/state");
    wait_for("online", 0, &|t, p| {
        t == "glimpse/test/availability" && p == "online"
    });
    let (_, state) = wait_for("a state change", 0, &|t, _| t == "glimpse/test/state");
    let state: Value = serde_json::from_str(&state).unwrap();
    // The camera's own topic has the same events (`<topic>/state` is kept for the
    // command line's camera, where the one-camera daemon published them).
    wait_for("the state on the camera's topic", 0, &|t, p| {
        t == "glimpse/test/default/state" && serde_json::from_str::<Value>(p).unwrap() == state
    });
    assert!(
        known.contains(&state["state"].as_str().unwrap().to_string()),
        "{state}"
    );
    wait_for("status", 0, &|t, p| {
        t == "glimpse/test/status" && p.contains("model_sha256")
    });
    // The snapshot of each state, retained, as a Home Assistant image entity: a JPEG that
    // classifies to a state just announced.
    let (_, image) = wait_for("image discovery", 0, &|t, _| {
        t == "homeassistant/image/glimpse-under-test/snapshot/config"
    });
    let image: Value = serde_json::from_str(&image).unwrap();
    assert_eq!(
        image["image_topic"], "glimpse/test/default/snapshot",
        "{image}"
    );
    assert_eq!(image["content_type"], "image/jpeg", "{image}");
    wait_for("a snapshot", 0, &|t, _| {
        t == "glimpse/test/default/snapshot"
    });
    let (at, jpeg) = seen
        .borrow()
        .iter()
        .enumerate()
        .find(|(_, (t, _))| t == "glimpse/test/default/snapshot")
        .map(|(i, (_, p))| (i, p.clone()))
        .unwrap();
    let photo = dir.path().join("snapshot.jpg");
    std::fs::write(&photo, &jpeg).unwrap();
    assert_eq!(
        image::guess_format(&jpeg).ok(),
        Some(image::ImageFormat::Jpeg)
    );
    let label = classify_json(&shipped_model(), &photo)["label"].clone();
    // Its state is one announced (the two are published as they come, from two threads,
    // and a state queued before the connection may arrive after its snapshot).
    wait_for("a state after the snapshot", at, &|t, _| {
        t == "glimpse/test/state"
    });
    let state_of = |(t, p): &Message| {
        (t == "glimpse/test/state")
            .then(|| serde_json::from_slice::<Value>(p).unwrap()["state"].clone())
    };
    let announced: Vec<Value> = seen.borrow().iter().filter_map(state_of).collect();
    assert!(
        announced.contains(&label),
        "the snapshot shows {label}, the states were {announced:?}"
    );

    // The broker goes away and comes back: classification goes on meanwhile, and the
    // messages flow again after the restart.
    drop(broker.take());
    let frames_before = latest["frame"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = get(&agent(), &server.url("/v1/latest"), None).json();
    assert!(
        during["frame"].as_u64().unwrap() > frames_before,
        "classification stalled without the broker"
    );
    while let Ok(m) = rx.try_recv() {
        seen.borrow_mut().push(m);
    }
    let restart = seen.borrow().len();
    broker = Some(Broker::start(&mosquitto, &conf, port));
    wait_for("online after the restart", restart, &|t, p| {
        t == "glimpse/test/availability" && p == "online"
    });
    wait_for("a state change after the restart", restart, &|t, _| {
        t == "glimpse/test/state"
    });
    let text = get(&agent(), &server.url("/metrics"), None).body;
    assert_eq!(metric(&text, "glimpse_mqtt_connected"), Some(1.0), "{text}");
    assert!(
        metric(
            &text,
            r#"glimpse_frames_classified_total{camera="default"}"#
        )
        .unwrap()
            >= 3.0,
        "{text}"
    );
    assert!(
        text.contains(r#"glimpse_state{camera="default",label="#),
        "{text}"
    );
    drop(server);
    drop(broker);
}

#[test]
fn config_file_settings_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let conf = dir.path().join("glimpse.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:0\"\ntop-k = 2\ntoken-file = \"{}\"\nmodel = \"{}\"\n",
            token_file.display(),
            root().join("models/fashion-mnist.onnx").display()
        ),
    )
    .unwrap();
    // --check: settings and model validated, nothing served.
    let stdout = serve_checks(&["--config".as_ref(), conf.as_os_str()]);
    assert!(
        stdout.starts_with("ok: would serve")
            && stdout.contains("10 classes")
            && stdout.contains("bearer token required"),
        "{stdout}"
    );
    // The shipped default config is valid as it is.
    let shipped = root().join("cross/packaging/glimpse.toml");
    serve_checks(&[
        "--config".as_ref(),
        shipped.as_os_str(),
        "--model".as_ref(),
        shipped_model().as_os_str(),
    ]);

    // The file's settings apply, and the command line overrides them.
    let server = Server::start(&["--config", conf.to_str().unwrap(), "--top-k", "3"], &[]);
    let a = agent();
    let shirt = {
        let mut png = Vec::new();
        image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([if (6..22).contains(&x) && y > 4 {
                200
            } else {
                0
            }])
        })
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
        png
    };
    let r = post(
        &a,
        &server.url("/v1/classify"),
        Some(TOKEN),
        "image/png",
        &shirt,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["top"].as_array().unwrap().len(), 3);
    assert_eq!(
        post(&a, &server.url("/v1/classify"), None, "image/png", &shirt).status,
        401
    );

    // Bad settings and models: clear errors naming the file, no server.
    std::fs::write(&conf, "listen = \"nowhere\"\n").unwrap();
    let err = serve_refuses(&["--config".as_ref(), conf.as_os_str()]);
    assert!(
        err.contains("--listen") && err.contains("glimpse.toml"),
        "{err}"
    );
    std::fs::write(&conf, "colour = \"blue\"\n").unwrap();
    let err = serve_refuses(&["--config".as_ref(), conf.as_os_str()]);
    assert!(err.contains("unknown setting `colour`"), "{err}");
    let model = shipped_model();
    let err = serve_refuses(&[
        "--token".as_ref(),
        "short".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
    ]);
    assert!(err.contains("too short"), "{err}");
    let broken = dir.path().join("broken.onnx");
    truncated_model(&broken);
    let err = serve_refuses(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--model".as_ref(),
        broken.as_os_str(),
    ]);
    assert!(err.contains("broken.onnx"), "{err}");
}

#[test]
fn refused_bodies_are_read_so_that_clients_sending_everything_first_see_the_answer() {
    let server = Server::start(&["--no-watch"], &[("GLIMPSE_TOKEN", TOKEN)]);
    let big = vec![0x5a_u8; 17 << 20];
    let head = |path: &str, auth: bool, framing: &str| {
        let auth = if auth {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: image/png\r\n{framing}\r\n")
    };
    let length = format!("Content-Length: {}\r\n", big.len());
    let cases = [
        ("/v1/classify", true, 413, "too_large"),
        ("/v1/classify", false, 401, "unauthorized"),
        ("/v1/classify?top_k=0", true, 400, "bad_request"),
        ("/v1/nowhere", true, 404, "not_found"),
    ];
    for (path, auth, status, kind) in cases {
        let (got, body) = send_then_read(server.addr, &head(path, auth, &length), &big);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(kind), "{path}: {body}");
    }
    // Chunked, no declared length: refused once it grows past the limit, and read on.
    let mut chunked = Vec::new();
    for part in big.chunks(1 << 20) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let framing = "Transfer-Encoding: chunked\r\n";
    let (got, body) = send_then_read(server.addr, &head("/v1/classify", true, framing), &chunked);
    assert_eq!(got, 413, "{body}");
    // A client that asks first gets the 413 without sending anything.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ask = format!("{length}Expect: 100-continue\r\n");
    s.write_all(head("/v1/classify", true, &ask).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s).0, 413);

    // The client of the report: Python's urllib posts the whole body, then reads.
    let script = "import sys, urllib.request, urllib.error\n\
        req = urllib.request.Request(sys.argv[1], data=b'x' * (17 << 20), headers={'Authorization': 'Bearer ' + sys.argv[2]})\n\
        try:\n    urllib.request.urlopen(req)\n    print('no error')\n\
        except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, &server.url("/v1/classify"), TOKEN])
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("413 ") && said.contains("too_large"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&agent(), &server.url("/healthz"), None).status, 200);
}

#[test]
fn without_a_token_only_local_names_and_same_origin_requests_are_answered() {
    let server = Server::start(&["--no-watch", "--allowed-hosts", "glimpse.example"], &[]);
    let port = server.addr.port();
    let coffee = std::fs::read(sample("coffee.png")).unwrap();
    let request = |host: &str, origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let head = format!(
            "POST /v1/classify HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Length: {}\r\n\r\n",
            coffee.len()
        );
        send_then_read(server.addr, &head, &coffee)
    };
    let local = format!("127.0.0.1:{port}");
    for host in [local.as_str(), "localhost", "glimpse.example:80", "[::1]"] {
        let (status, body) = request(host, None);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // DNS rebinding: the attacker's name pointed at this board.
    let (status, body) = request(&format!("evil.example:{port}"), None);
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("foreign_host"), "{body}");
    // A page elsewhere posting to the board.
    let (status, body) = request(&local, Some("http://evil.example"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("foreign_origin"), "{body}");
    let (status, body) = request(&local, Some(&format!("http://{local}")));
    assert_eq!(status, 200, "{body}");

    // No token beyond loopback: refused unless asked for.
    let model = shipped_model();
    let lan: Vec<&std::ffi::OsStr> = vec![
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--check".as_ref(),
    ];
    let err = serve_refuses(&lan);
    assert!(
        err.contains("without a token") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    let out = Command::new(bin("glimpse"))
        .arg("serve")
        .args(&lan)
        .arg("--allow-unauthenticated")
        .env_remove("GLIMPSE_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `glimpse serve ARGS`, which must refuse to start (exit 2); returns its stderr.
fn serve_refuses<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new(bin("glimpse"))
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// `glimpse serve --check ARGS`, which must pass: what it prints.
fn serve_checks(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(bin("glimpse"))
        .args(["serve", "--check"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn systemd_unit_is_valid() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        skip("serve: systemd unit", "systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    // Verified as installed, with this build standing in for /usr/bin/glimpse.
    let unit = std::fs::read_to_string(root().join("cross/packaging/glimpse.service")).unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("WatchdogSec=")
            && unit.contains("DynamicUser=yes")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("glimpse.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/glimpse", bin("glimpse").to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The hardening as systemd scores it: 2.0 or lower is its "OK".
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for glimpse.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

#[test]
fn slow_clients_are_cut_off_by_the_header_and_request_timeouts() {
    let server = Server::start(&["--header-timeout", "1", "--request-timeout", "1"], &[]);
    // Headers that never end (slowloris): the connection is closed after ~1 s.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    // A body that stops halfway: 408 with a JSON error after ~1 s.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    let (code, body) = read_response(&mut s);
    assert_eq!(code, 408, "{body}");
    assert!(body.contains("\"kind\":\"timeout\""), "{body}");
    // Meanwhile and afterwards, others are served.
    assert_serves_coffee(&server);
}

#[test]
fn a_client_that_reads_none_of_its_answers_loses_its_connection_after_the_send_timeout() {
    let server = Server::start(
        &["--send-timeout", "2", "--max-connections-per-peer", "1"],
        &[],
    );
    let from: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    // Pipelined requests whose answers are never read, into a small receive window: the
    // daemon's writes stall once the socket buffers are full (keepalive is no help, the
    // client's kernel acknowledges every probe).
    let mut greedy = connect_from(from, server.addr);
    socket2::SockRef::from(&greedy)
        .set_recv_buffer_size(4096)
        .unwrap();
    let requests = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(4000);
    greedy.write_all(requests.as_bytes()).unwrap();
    let t0 = Instant::now();
    // Its address's only slot is held meanwhile, then given back after the send timeout.
    let mut refused = 0;
    let served = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still refused after 30 s"
        );
        let mut s = connect_from(from, server.addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        match read_response(&mut s) {
            (200, _) => break t0.elapsed(),
            (503, body) if body.contains("from this address") => refused += 1,
            (code, body) => panic!("{code}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        refused > 0 && served >= Duration::from_millis(1500),
        "served after {served:?}"
    );
    server.wait_log("took none of its answer for 2 s", Duration::from_secs(5));
    // The greedy connection itself was closed (end of stream or reset, not silence).
    greedy
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    if let Err(e) = greedy.read_to_end(&mut sink) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert_serves_coffee(&server);
}

/// `coffee.png` posted at LAN speed is classified as an espresso.
fn assert_serves_coffee(server: &Server) {
    let coffee = std::fs::read(sample("coffee.png")).unwrap();
    let r = post(
        &agent(),
        &server.url("/v1/classify"),
        None,
        "image/png",
        &coffee,
    );
    assert_eq!(r.json()["label"], "espresso");
}

/// The server side of the established connections from `peer` to `port`, from
/// /proc/net/tcp: `(timer, seconds)` each, timer 2 being keepalive.
fn server_sockets(port: u16, peer: [u8; 4]) -> Vec<(u32, f64)> {
    let local_port = format!(":{port:04X}");
    let remote = format!("{:08X}:", u32::from_le_bytes(peer));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let established = f[3] == "01";
            (established && f[1].ends_with(&local_port) && f[2].starts_with(&remote)).then(|| {
                let (timer, when) = f[5].split_once(':').unwrap();
                // `when` is in USER_HZ (1/100 s).
                let when = u64::from_str_radix(when, 16).unwrap() as f64 / 100.0;
                (u32::from_str_radix(timer, 16).unwrap(), when)
            })
        })
        .collect()
}

/// Waits until the metric reaches `at_least`, and returns its value.
fn wait_metric(server: &Server, series: &str, at_least: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let m = get(&agent(), &server.url("/metrics"), None);
        let v = metric(&m.body, series).unwrap_or(0.0);
        if v >= at_least || t0.elapsed() > Duration::from_secs(20) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_peer_cannot_lock_the_others_out() {
    // Default caps: 256 connections in all, 32 from one address.
    let server = Server::start(&["--no-watch"], &[]);
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut slow: Vec<TcpStream> = (0..256).map(|_| connect_from(other, server.addr)).collect();
    let series = r#"glimpse_http_connections_refused_total{reason="per_peer"}"#;
    assert_eq!(wait_metric(&server, series, 224.0), 224.0);
    // The refused ones were told why; the others hold their slot with headers that
    // never end (slowloris).
    let mut refused = Vec::new();
    for s in &mut slow {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) => refused.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").unwrap();
            }
            Err(e) => panic!("reading a connection from {other}: {e}"),
        }
    }
    assert_eq!(refused.len(), 224);
    for answer in &refused {
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.contains("\"kind\":\"busy\""), "{answer}");
        assert!(answer.contains("from this address"), "{answer}");
    }
    // Everyone else is still served at once.
    let t0 = Instant::now();
    let health = get(&agent(), &server.url("/healthz"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let m = get(&agent(), &server.url("/metrics"), None);
    assert!(metric(&m.body, "glimpse_http_connections_open").unwrap() >= 32.0);
    // The 32 held connections have TCP keepalive armed at 30 s (default --tcp-keepalive):
    // a peer that vanished would not hold them for hours.
    let held = server_sockets(server.addr.port(), [127, 0, 0, 2]);
    assert_eq!(held.len(), 32, "{held:?}");
    assert!(
        held.iter().all(|&(timer, s)| timer == 2 && s <= 30.0),
        "{held:?}"
    );
}

#[test]
fn a_trickling_upload_is_cut_off_at_the_minimum_rate() {
    let server = Server::start(
        &["--min-upload-rate", "2000", "--request-timeout", "120"],
        &[],
    );
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    // 400 bytes/s, a fifth of the minimum; the writer stops when the server hangs up.
    let mut writer = s.try_clone().unwrap();
    std::thread::spawn(move || {
        while writer.write_all(&[0u8; 200]).is_ok() {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let t0 = Instant::now();
    let (code, body) = read_response(&mut s);
    let waited = t0.elapsed();
    assert_eq!(code, 408, "{body}");
    assert!(body.contains("\"kind\":\"timeout\""), "{body}");
    assert!(body.contains("below 2000 bytes/s"), "{body}");
    // Cut off after the 5 s grace, long before the request timeout.
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
    // A client uploading at LAN speed is served.
    assert_serves_coffee(&server);
}

/// Opens `GET /v1/events` and reads its status line and headers.
fn open_events(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        head.push_str(&line);
    }
    (s, head)
}

#[test]
fn event_streams_are_capped_and_their_slots_come_back() {
    let samples = root().join("samples");
    let server = Server::start(
        &[
            "--images",
            samples.to_str().unwrap(),
            "--loop",
            "--fps",
            "8",
            "--hold-frames",
            "1",
            "--threshold",
            "0",
            "--max-event-streams",
            "2",
        ],
        &[],
    );
    let (first, head) = open_events(server.addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = open_events(server.addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let third = get(&agent(), &server.url("/v1/events"), None);
    assert_error(&third, 503, "busy");
    assert_eq!(third.retry_after.as_deref(), Some("5"));
    assert!(third.body.contains("--max-event-streams"), "{}", third.body);
    // A client that goes frees its slot (noticed at the next event written to it).
    drop(first);
    let t0 = Instant::now();
    loop {
        let (_s, head) = open_events(server.addr);
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no slot came back: {head}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn secrets_come_from_systemd_credentials_and_topics_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    // LoadCredential=token:... (cross/packaging/token-credential.conf): systemd puts the
    // file in $CREDENTIALS_DIRECTORY, and the token is required without any option.
    let creds = tempfile::tempdir().unwrap();
    let token = creds.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400)).unwrap();
    let server = Server::start(
        &["--no-watch"],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    assert_eq!(get(&agent(), &server.url("/v1/model"), None).status, 401);
    assert_eq!(
        get(&agent(), &server.url("/v1/model"), Some(TOKEN)).status,
        200
    );
    assert!(!server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("readable by group")));
    drop(server);
    // A token file others may read is used, with a warning.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(
        &["--no-watch", "--token-file", token.to_str().unwrap()],
        &[],
    );
    let warning = server.wait_log("readable by group or others", Duration::from_secs(10));
    assert!(warning.contains("(mode 0644): chmod 600 it"), "{warning}");
    drop(server);
    // Topics to publish to cannot hold wildcards.
    for (option, topic) in [
        ("--mqtt-topic", "glimpse/+/shed"),
        ("--mqtt-discovery-prefix", "home#"),
    ] {
        let err =
            serve_refuses(&["--mqtt-host", "127.0.0.1", option, topic].map(std::ffi::OsStr::new));
        assert!(
            err.contains(&format!("{option} {topic:?} holds a wildcard")),
            "{err}"
        );
    }
}

#[test]
fn state_changes_write_snapshots_and_run_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshots, log) = (
        dir.path().join("snapshots"),
        dir.path().join("events.jsonl"),
    );
    let samples = root().join("samples");
    let exec = format!("cat >> '{}'", log.display());
    let server = Server::start(
        &[
            &["--images", samples.to_str().unwrap()][..],
            &LOOPING_CAMERA,
            &[
                "--snapshot-dir",
                snapshots.to_str().unwrap(),
                "--snapshot-keep",
                "3",
            ],
            &["--exec", &exec],
        ]
        .concat(),
        &[],
    );
    // Four photos at 4 fps, each one its own state: an event every frame.
    let events = |min: usize| {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let events: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if events.len() >= min {
                return events;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{} events: {text}",
                events.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let seen = events(6);
    server.wait_log("exec: cat >>", Duration::from_secs(5));
    drop(server);
    // The command got each event, with the path of its snapshot.
    let camera_dir = snapshots.join("default");
    let on_disk: Vec<PathBuf> = glimpse_e2e::files_under(&camera_dir);
    assert!(
        !on_disk.is_empty() && on_disk.len() <= 3,
        "retention: {on_disk:?}"
    );
    let mut checked = 0;
    for e in &seen {
        let path = PathBuf::from(e["snapshot"].as_str().unwrap_or_else(|| panic!("{e}")));
        assert!(path.starts_with(&camera_dir), "{e}");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(&format!(
                "-{}.jpg",
                glimpse_runtime::fsutil::safe_name(e["state"].as_str().unwrap())
            )),
            "{name}"
        );
        // Each snapshot kept decodes and classifies to its state.
        if path.exists() {
            let v = classify_json(&shipped_model(), &path);
            assert_eq!(v["label"], e["state"], "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no snapshot of {seen:?} left in {on_disk:?}");
}

/// `/v1/cameras` lists the one camera of the command line as `default`, and its latest
/// classification and frame are there by name; an unknown name is a 404 that names it.
fn cameras_are_listed_with_their_latest_frame(server: &Server) {
    let list = get(&agent(), &server.url("/v1/cameras"), None);
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    let cam = &list["cameras"][0];
    assert_eq!(cam["name"], "default", "{list}");
    assert!(
        cam["source"].as_str().unwrap().contains("samples"),
        "{list}"
    );
    assert!(cam["frames"]["classified"].as_u64().unwrap() >= 1, "{list}");
    assert!(cam["state"].is_string() && cam["crop"].is_null(), "{list}");
    let latest = get(&agent(), &server.url("/v1/cameras/default/latest"), None);
    assert_eq!(latest.status, 200, "{}", latest.body);
    assert_eq!(latest.json()["camera"], "default");
    // The JPEG is a frame of the looping photos: it classifies to one of their labels.
    let jpeg = agent()
        .get(server.url("/v1/cameras/default/latest.jpg"))
        .call()
        .unwrap()
        .into_body()
        .read_to_vec()
        .unwrap();
    assert_eq!(
        image::guess_format(&jpeg).ok(),
        Some(image::ImageFormat::Jpeg)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("latest.jpg"), &jpeg).unwrap();
    let label = classify_json(&shipped_model(), &dir.path().join("latest.jpg"))["label"].clone();
    let photos = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"];
    let labels: Vec<Value> = photos
        .iter()
        .map(|p| classify_json(&shipped_model(), &root().join("samples").join(p))["label"].clone())
        .collect();
    assert!(labels.contains(&label), "{label} not among {labels:?}");
    let missing = get(&agent(), &server.url("/v1/cameras/porch/latest.jpg"), None);
    assert_error(&missing, 404, "no_camera");
    let why = missing.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("no camera named \"porch\""), "{why}");
}

#[test]
fn a_failing_command_is_logged_and_counted_while_the_camera_goes_on() {
    let samples = root().join("samples");
    let server = Server::start(
        &[
            &["--images", samples.to_str().unwrap()][..],
            &LOOPING_CAMERA,
            &["--exec", "exit 3"],
        ]
        .concat(),
        &[],
    );
    server.wait_log("exec: exit 3: exit status: 3", Duration::from_secs(30));
    cameras_are_listed_with_their_latest_frame(&server);
    let t0 = Instant::now();
    loop {
        let m = get(&agent(), &server.url("/metrics"), None).body;
        if metric(&m, r#"glimpse_errors_total{kind="exec"}"#).unwrap_or(0.0) >= 2.0
            && metric(&m, r#"glimpse_frames_classified_total{camera="default"}"#).unwrap_or(0.0)
                >= 4.0
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One request a [`HookReceiver`] took: its body, its signature header and the status it
/// was answered with.
struct Delivery {
    status: u16,
    signature: Option<String>,
    body: Vec<u8>,
}

/// A webhook receiver on loopback: answers its first `failures` requests with 500, the
/// rest with 200, one request per connection, and keeps what it was sent.
struct HookReceiver {
    url: String,
    got: Arc<std::sync::Mutex<Vec<Delivery>>>,
}

impl HookReceiver {
    fn start(failures: usize) -> HookReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let Some((signature, body)) = Self::read_request(&mut s) else {
                    continue;
                };
                let mut got = record.lock().unwrap();
                let status = if got.len() < failures { 500 } else { 200 };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                got.push(Delivery {
                    status,
                    signature,
                    body,
                });
            }
        });
        HookReceiver { url, got }
    }

    /// The signature header and the body of one POST.
    fn read_request(s: &mut TcpStream) -> Option<(Option<String>, Vec<u8>)> {
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut r = BufReader::new(s);
        let (mut length, mut signature) = (0, None);
        loop {
            let mut line = String::new();
            r.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().ok()?,
                "x-glimpse-signature" => signature = Some(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).ok()?;
        Some((signature, body))
    }

    fn accepted(&self) -> usize {
        let got = self.got.lock().unwrap();
        got.iter().filter(|d| d.status == 200).count()
    }
}

#[test]
fn state_changes_are_posted_to_a_webhook_signed_and_retried_after_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, log) = (dir.path().join("secret"), dir.path().join("events.jsonl"));
    std::fs::write(&secret, "hook-key-42\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let receiver = HookReceiver::start(1);
    let samples = root().join("samples");
    let exec = format!("cat >> '{}'", log.display());
    let server = Server::start(
        &[
            &["--images", samples.to_str().unwrap()][..],
            &LOOPING_CAMERA,
            &["--exec", &exec, "--webhook", &receiver.url],
            &["--webhook-secret-file", secret.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    let t0 = Instant::now();
    while receiver.accepted() < 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "{} accepted",
            receiver.accepted()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    let got = receiver.got.lock().unwrap();
    // Every request is signed with the secret, as the receiver computes it.
    for d in got.iter() {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"hook-key-42").unwrap();
        hmac::Mac::update(&mut mac, &d.body);
        let hex: String = hmac::Mac::finalize(mac)
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(d.signature.as_deref(), Some(&*format!("sha256={hex}")));
    }
    // The event answered 500 came again, the same.
    assert_eq!((got[0].status, got[1].status), (500, 200));
    assert_eq!(got[0].body, got[1].body);
    // Each event was accepted once, in order: the ones the command got, no more, no less.
    let accepted: Vec<Value> = got
        .iter()
        .filter(|d| d.status == 200)
        .map(|d| serde_json::from_slice(&d.body).unwrap())
        .collect();
    let text = std::fs::read_to_string(&log).unwrap();
    let commanded: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = accepted.len().min(commanded.len());
    assert!(n >= 5, "{accepted:?}\n{commanded:?}");
    assert_eq!(accepted[..n], commanded[..n]);

    // A URL that is not http(s) is refused at start-up.
    let err = serve_refuses(&[
        "--images",
        samples.to_str().unwrap(),
        "--webhook",
        "ftp://h/x",
    ]);
    assert!(
        err.contains("--webhook \"ftp://h/x\": expected an http:// or https:// URL"),
        "{err}"
    );
}

/// What the shipped model calls Chelsea, the sample cat, at 320x240.
const CAT: [&str; 3] = ["tabby, tabby cat", "tiger cat", "Egyptian cat"];

/// Reads server-sent events from `path` until `done` holds for the (camera, state, kind)
/// triples seen so far; returns them.
fn read_events(
    server: &Server,
    path: &str,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let mut sse = TcpStream::connect(server.addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    write!(
        sse,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut kind = String::new();
    let t0 = Instant::now();
    for line in BufReader::new(sse).lines() {
        let line = line.expect("the event stream goes on");
        // Keep-alive comments come whatever happens: the wait is bounded here.
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{path}: not there after 60 s: {seen:?}"
        );
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_string();
        }
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            seen.push((text("camera"), text("state"), kind.clone()));
            if done(&seen) {
                return seen;
            }
        }
    }
    panic!("the event stream ended: {seen:?}");
}

#[test]
fn two_cameras_rtsp_and_a_fifo_keep_states_of_their_own() {
    let (Some(ffmpeg), Some(mosquitto)) = (glimpse_e2e::ffmpeg(), glimpse_e2e::mosquitto()) else {
        return skip(
            "serve: two cameras",
            "Debian's ffmpeg or mosquitto is not installed",
        );
    };
    let Some(python) = glimpse_e2e::video::rtsp_python() else {
        return skip(
            "serve: two cameras",
            "GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi, openh264) is not installed",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mqtt_conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &mqtt_conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let _broker = Broker::start(&mosquitto, &mqtt_conf, port);
    let rx = subscriber(port, &["glimpse/two/#", "homeassistant/#"], None);
    let rtsp = glimpse_e2e::video::RtspServer::start(&python, free_port(), "coffee.png");
    let fifo = glimpse_e2e::mkfifo(&dir.path().join("door.yuyv"));
    // One worker for both cameras and the API: neither camera may starve the other. The
    // door's own threshold: at 320x240 no cat label of Chelsea reaches the default 0.5.
    // A third camera's address has nothing behind it: it fails, counted, on its own.
    let nowhere = format!("rtsp://127.0.0.1:{}/cam", free_port());
    let conf = dir.path().join("glimpse.toml");
    std::fs::write(
        &conf,
        format!(
            "workers = 1\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntopic = \"glimpse/two\"\nclient-id = \"two-cams\"\n\
             [[camera]]\nname = \"gate\"\nsource = \"{}\"\nhold-frames = 2\n\
             [[camera]]\nname = \"door\"\nsource = \"{}\"\nsize = \"320x240\"\nformat = \"yuyv\"\nhold-frames = 2\n\
             threshold = 0.2\n\
             [[camera]]\nname = \"porch\"\nsource = \"{nowhere}\"\n",
            rtsp.url,
            fifo.display()
        ),
    )
    .unwrap();
    let writer = {
        let (ffmpeg, fifo) = (ffmpeg.clone(), fifo.clone());
        std::thread::spawn(move || ffmpeg_into(&ffmpeg, "chelsea.png", &fifo, 90))
    };
    let started = Instant::now();
    let server = Server::start(&["--config", conf.to_str().unwrap()], &[]);

    // SSE: each camera's state, named (as a change, or as the current state if it came
    // before the stream was opened).
    let is_cat = |s: &str| CAT.contains(&s);
    let both = |seen: &[(String, String, String)]| {
        seen.iter().any(|(c, s, _)| c == "gate" && s == "espresso")
            && seen.iter().any(|(c, s, _)| c == "door" && is_cat(s))
    };
    let seen = read_events(&server, "/v1/events", both);
    assert!(
        seen.iter()
            .all(|(c, s, _)| (c == "gate" && s == "espresso") || (c == "door" && is_cat(s))),
        "a state of one camera was announced for the other: {seen:?}"
    );
    let door = read_events(&server, "/v1/events?camera=door", |seen| !seen.is_empty());
    assert_eq!(door[0].0, "door", "{door:?}");
    assert_eq!(door[0].2, "current", "{door:?}");
    assert_error(
        &get(&agent(), &server.url("/v1/events?camera=attic"), None),
        404,
        "no_camera",
    );

    // HTTP: each camera's own latest frame and state.
    let list = get(&agent(), &server.url("/v1/cameras"), None).json();
    let names: Vec<&str> = list["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gate", "door", "porch"], "{list}");
    assert_eq!(list["cameras"][0]["state"], "espresso", "{list}");
    assert!(
        is_cat(list["cameras"][1]["state"].as_str().unwrap()),
        "{list}"
    );
    let latest = |name: &str| {
        get(
            &agent(),
            &server.url(&format!("/v1/cameras/{name}/latest")),
            None,
        )
        .json()
    };
    assert_eq!(latest("gate")["label"], "espresso");
    assert!(is_cat(latest("door")["label"].as_str().unwrap()));
    assert_eq!(latest("door")["camera"], "door");

    // MQTT: a state topic and Home Assistant entities per camera.
    let seen: std::cell::RefCell<Vec<Message>> = Default::default();
    let wait_for = |what: &str, pred: &dyn Fn(&str, &Value) -> bool| -> Value {
        let t0 = Instant::now();
        loop {
            while let Ok(m) = rx.try_recv() {
                seen.borrow_mut().push(m);
            }
            let found = seen.borrow().iter().find_map(|(t, p)| {
                let v: Value = serde_json::from_slice(p).unwrap_or(Value::Null);
                pred(t, &v).then_some(v)
            });
            if let Some(v) = found {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no MQTT message: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let gate = wait_for("the gate's state", &|t, v| {
        t == "glimpse/two/gate/state" && v["state"] == "espresso"
    });
    assert_eq!(gate["camera"], "gate");
    wait_for("the door's state", &|t, v| {
        t == "glimpse/two/door/state" && v["state"].as_str().is_some_and(is_cat)
    });
    for camera in ["gate", "door"] {
        let entity = wait_for("discovery", &|t, _| {
            t == format!("homeassistant/sensor/two-cams/{camera}_state/config")
        });
        assert_eq!(entity["state_topic"], format!("glimpse/two/{camera}/state"));
        assert_eq!(
            entity["unique_id"],
            format!("glimpse_two-cams_{camera}_state")
        );
    }
    let status = wait_for("status", &|t, _| t == "glimpse/two/status");
    assert_eq!(
        status["cameras"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert!(
        seen.borrow().iter().all(|(t, _)| t != "glimpse/two/state"),
        "<topic>/state is the default camera's, and there is none"
    );

    // Metrics: both cameras classified frames on the one worker, each labelled.
    let m = get(&agent(), &server.url("/metrics"), None).body;
    for camera in ["gate", "door"] {
        let classified = metric(
            &m,
            &format!("glimpse_frames_classified_total{{camera=\"{camera}\"}}"),
        );
        assert!(classified.unwrap_or(0.0) >= 2.0, "{camera}: {m}");
    }
    assert!(
        m.contains(r#"glimpse_state{camera="gate",label="espresso"} 1"#),
        "{m}"
    );
    // The RTSP camera sends 5 frames a second, and ffmpeg passes each on once: not
    // thousands of duplicates to fill a rate it could not estimate.
    let captured = metric(&m, r#"glimpse_frames_captured_total{camera="gate"}"#).unwrap();
    let bound = 10.0 * started.elapsed().as_secs_f64() + 20.0;
    assert!(
        captured <= bound,
        "{captured} frames captured, at most {bound} sent"
    );
    assert!(
        m.contains(r#"glimpse_inference_duration_seconds_count{source="camera",camera="door"}"#),
        "{m}"
    );
    // The camera with nothing behind its address: source errors, logged and counted, while
    // the others went on; no frame, and a 503 for its latest frame.
    let failed = metric(
        &m,
        r#"glimpse_camera_errors_total{camera="porch",kind="source"}"#,
    );
    assert!(failed.unwrap_or(0.0) >= 1.0, "{m}");
    let porch = metric(&m, r#"glimpse_frames_captured_total{camera="porch"}"#);
    assert_eq!(porch, Some(0.0), "{m}");
    let porch = get(&agent(), &server.url("/v1/cameras/porch/latest"), None);
    assert_error(&porch, 503, "no_frame");
    let line = server.wait_log(
        &format!("camera porch: {nowhere} (ffmpeg): "),
        Duration::from_secs(10),
    );
    let again = line.contains("retrying") || line.contains("reopening");
    assert!(line.contains(&nowhere) && again, "{line}");
    drop(server);
    drop(rtsp);
    // The writer ends when the daemon has closed the FIFO.
    let _ = writer.join();
}

#[test]
fn camera_tables_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let samples = root().join("samples");
    let conf = dir.path().join("glimpse.toml");
    let refused = |toml: String, extra: &[&str]| {
        std::fs::write(&conf, toml).unwrap();
        let args: Vec<&std::ffi::OsStr> = ["--config".as_ref(), conf.as_os_str()]
            .into_iter()
            .chain(extra.iter().map(|a| a.as_ref()))
            .collect();
        serve_refuses(&args)
    };
    let table = |name: &str| {
        format!(
            "[[camera]]\nname = \"{name}\"\nsource = \"{}\"\n",
            samples.display()
        )
    };
    let err = refused(table("gate") + &table("gate"), &[]);
    assert!(err.contains("two cameras are named \"gate\""), "{err}");
    let err = refused(table("default"), &["--source", samples.to_str().unwrap()]);
    assert!(
        err.contains("two cameras are named \"default\"") && err.contains("command line's camera"),
        "{err}"
    );
    let err = refused("[[camera]]\nname = \"gate\"\n".into(), &[]);
    assert!(err.contains("camera gate: no source"), "{err}");
    let err = refused(table("front door"), &[]);
    assert!(err.contains("camera name \"front door\""), "{err}");
    let err = refused(table("gate") + "crop = \"0.5,0,0.6,1\"\n", &[]);
    assert!(
        err.contains("[[camera]] \"gate\": invalid value '0.5,0,0.6,1' for '--crop")
            && err.contains("reaches outside the frame")
            && !err.contains("--help"),
        "{err}"
    );
    // And a good pair is what --check says it would serve.
    std::fs::write(&conf, table("gate") + &table("door")).unwrap();
    let stdout = serve_checks(&["--config".as_ref(), conf.as_os_str()]);
    assert!(
        stdout.contains("camera gate: ") && stdout.contains("camera door: "),
        "{stdout}"
    );
}
