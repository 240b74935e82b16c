//! The committed bad-input corpus (`tests/corpus/`) through every runtime entry point:
//! `classify`, `info`, `serve` and `camera` (image folder and raw frames on stdin). Each
//! bad file gets a clear error naming it; nothing panics; the daemon keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_e2e::corpus::{self, Case, Expect, Kind};
use glimpse_e2e::serve::{agent, get, post, Server};
use glimpse_e2e::{bin, camera_with_stdin, files_under, glimpse, stderr, stdout};
use serde_json::Value;

fn cases(kind: fn(&Kind) -> bool) -> Vec<Case> {
    corpus::recipes()
        .into_iter()
        .filter(|c| kind(&c.kind))
        .collect()
}

fn path(c: &Case) -> PathBuf {
    corpus::dir().join(c.name)
}

fn assert_no_panic(what: &str, err: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
}

/// The corpus is committed, and made by `glimpse_e2e::corpus`: the two must agree, or a
/// test below would be checking something other than what its recipe says.
/// `GLIMPSE_BLESS=1` writes the files from the recipes.
#[test]
fn corpus_files_are_what_their_recipes_make() {
    let bless = std::env::var("GLIMPSE_BLESS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for c in corpus::recipes() {
        let p = path(&c);
        if bless {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &c.bytes).unwrap();
        } else if std::fs::read(&p).ok().as_deref() != Some(&c.bytes[..]) {
            stale.push(c.name);
        }
    }
    assert!(
        stale.is_empty(),
        "corpus files differ from their recipes (rerun with GLIMPSE_BLESS=1 if the recipe change is meant): {stale:?}"
    );
    // And nothing in the corpus lacks a recipe (and an expectation).
    let names: Vec<&str> = corpus::recipes().iter().map(|c| c.name).collect();
    for entry in files_under(&corpus::dir()) {
        let rel = entry
            .strip_prefix(corpus::dir())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            rel == "README.md" || names.contains(&rel.as_str()),
            "{rel} has no recipe in tests/src/corpus.rs"
        );
    }
}

#[test]
fn classify_reports_each_bad_image_and_classifies_the_rest() {
    let images = cases(|k| *k == Kind::Image);
    let missing = corpus::dir().join("images/missing.jpg");
    let mut args: Vec<String> = vec!["classify".into(), "-f".into(), "json".into()];
    args.extend(images.iter().map(|c| path(c).display().to_string()));
    args.push(missing.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = glimpse(&args);
    let err = stderr(&out);
    assert_no_panic("classify", &err);
    assert_eq!(
        out.status.code(),
        Some(1),
        "failures show in the exit status: {err}"
    );
    let records: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for c in &images {
        let p = path(c).display().to_string();
        match c.expect {
            Expect::Ok => {
                let r = records.iter().find(|r| r["path"] == p.as_str());
                assert!(r.is_some(), "{}: not classified: {err}", c.name);
                assert!(
                    !err.contains(&p),
                    "{}: also reported as an error: {err}",
                    c.name
                );
            }
            Expect::Err(reason) => {
                let line = err
                    .lines()
                    .find(|l| l.starts_with(&format!("{p}: ")))
                    .unwrap_or_else(|| panic!("{}: no `path: reason` line in {err}", c.name));
                assert!(
                    line.contains(reason),
                    "{}: expected {reason:?} in {line:?}",
                    c.name
                );
            }
        }
    }
    let oks = images.iter().filter(|c| c.expect == Expect::Ok).count();
    assert_eq!(records.len(), oks, "only the valid images are classified");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{}: ", missing.display()))
                && l.contains("no such file")),
        "{err}"
    );

    // The same files as a folder: the walk takes them all (their extensions are image
    // extensions) and reports the same way.
    let out = glimpse(&[
        "classify",
        "-f",
        "json",
        corpus::dir().join("images").to_str().unwrap(),
    ]);
    assert_no_panic("classify folder", &stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), oks);
    assert_eq!(
        stderr(&out)
            .lines()
            .filter(|l| l.contains("tests/corpus/images/"))
            .count(),
        images.len() - oks,
        "{}",
        stderr(&out)
    );
}

#[test]
fn classify_and_info_refuse_each_bad_model_clearly() {
    let red = corpus::dir().join("images/ok-1x1.png");
    for c in cases(|k| *k == Kind::Model) {
        let p = path(&c);
        let model = p.to_str().unwrap();
        let out = glimpse(&[
            "classify",
            "--model",
            model,
            "-f",
            "json",
            red.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert_no_panic(c.name, &err);
        let info = glimpse(&["info", "--model", model]);
        let info_text = format!("{}{}", stdout(&info), stderr(&info));
        assert_no_panic(c.name, &info_text);
        match c.expect {
            Expect::Ok => {
                assert!(out.status.success(), "{}: {err}", c.name);
                let r: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
                assert_eq!(r["label"], "red", "{}", c.name);
                assert!(info.status.success(), "{}: {info_text}", c.name);
            }
            Expect::Err(reason) => {
                assert_eq!(out.status.code(), Some(2), "{}: {err}", c.name);
                assert!(out.stdout.is_empty(), "{}", c.name);
                assert!(
                    err.contains(model),
                    "{}: the error names the model: {err}",
                    c.name
                );
                assert!(
                    err.contains(reason),
                    "{}: expected {reason:?} in {err}",
                    c.name
                );
                // `info` describes what it can and gives the same reason, with a failing
                // exit status.
                assert_eq!(info.status.code(), Some(2), "{}: {info_text}", c.name);
                assert!(
                    info_text.contains(reason),
                    "{}: expected {reason:?} in {info_text}",
                    c.name
                );
            }
        }
    }
}

/// Sends one raw request and returns the status line's code, or 0 if the server closed
/// the connection without answering.
fn raw_status(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before it has read everything: a failed write
    // is part of what is being tested.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut head = Vec::new();
    let _ = s.read_to_end(&mut head);
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .map_or(0, |code| code.parse().unwrap())
}

#[test]
fn serve_answers_each_bad_input_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("model.onnx");
    std::fs::copy(corpus::dir().join("models/ok-tiny.onnx"), &served).unwrap();
    let server = Server::start(&["--model", served.to_str().unwrap(), "--no-watch"], &[]);
    let a = agent();
    let classify = server.url("/v1/classify");
    let healthy = |what: &str| {
        let r = get(&a, &server.url("/healthz"), None);
        assert_eq!(r.status, 200, "after {what}: {}", r.body);
    };
    let sha = get(&a, &server.url("/v1/model"), None).json()["sha256"].clone();

    for c in cases(|k| *k == Kind::Image) {
        let r = post(&a, &classify, None, "application/octet-stream", &c.bytes);
        match c.expect {
            Expect::Ok => assert_eq!(r.status, 200, "{}: {}", c.name, r.body),
            Expect::Err(reason) => {
                assert!(
                    (400..500).contains(&r.status),
                    "{}: {} {}",
                    c.name,
                    r.status,
                    r.body
                );
                let e = r.json();
                assert!(
                    e["kind"].as_str().is_some_and(|k| !k.is_empty()),
                    "{}",
                    r.body
                );
                // An empty request body is refused as such, before any decoding.
                let reason = if c.bytes.is_empty() {
                    "empty body"
                } else {
                    reason
                };
                assert!(
                    e["error"].as_str().unwrap().contains(reason),
                    "{}: expected {reason:?} in {}",
                    c.name,
                    r.body
                );
            }
        }
        healthy(c.name);
    }
    for c in cases(|k| matches!(k, Kind::Http(_))) {
        let Kind::Http(want) = c.kind else {
            unreachable!()
        };
        let got = raw_status(server.addr, &c.bytes);
        eprintln!("{}: {got}", c.name);
        assert_eq!(got, want, "{}", c.name);
        healthy(c.name);
    }

    // Each bad model in turn replaces the served file, then SIGHUP: refused, and the
    // old model keeps serving.
    let mut failed = 0;
    for c in cases(|k| *k == Kind::Model) {
        if c.expect == Expect::Ok {
            continue;
        }
        let staging = dir.path().join("staging.onnx");
        std::fs::write(&staging, &c.bytes).unwrap();
        std::fs::rename(&staging, &served).unwrap();
        server.signal("HUP");
        failed += 1;
        let t0 = Instant::now();
        loop {
            let text = get(&a, &server.url("/metrics"), None).body;
            let series = r#"glimpse_model_reloads_total{result="failed"} "#;
            if text.lines().any(|l| l == format!("{series}{failed}")) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{}: reload not refused: {text}",
                c.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = post(
            &a,
            &classify,
            None,
            "image/png",
            &std::fs::read(corpus::dir().join("images/ok-1x1.png")).unwrap(),
        );
        assert_eq!(r.status, 200, "{}: {}", c.name, r.body);
        assert_eq!(r.json()["label"], "red");
        assert_eq!(
            get(&a, &server.url("/v1/model"), None).json()["sha256"],
            sha
        );
    }
    let log = server.log.lock().unwrap().join("\n");
    assert_no_panic("serve", &log);
    assert_eq!(get(&a, &server.url("/readyz"), None).status, 200);

    // And none of them is served from the start: `serve` refuses to start on each.
    for c in cases(|k| *k == Kind::Model) {
        if let Expect::Err(reason) = c.expect {
            let out = Command::new(bin("glimpse"))
                .args(["serve", "--listen", "127.0.0.1:0", "--model"])
                .arg(path(&c))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{}: {err}", c.name);
            assert!(
                err.contains(reason),
                "{}: expected {reason:?} in {err}",
                c.name
            );
            assert_no_panic(c.name, &err);
        }
    }
}

#[test]
fn camera_keeps_going_over_bad_frames() {
    let model = corpus::dir().join("models/ok-tiny.onnx");
    let images = cases(|k| *k == Kind::Image);
    let oks = images.iter().filter(|c| c.expect == Expect::Ok).count();
    // The image folder played as video: each bad frame is reported, the rest classified.
    let out = Command::new(bin("glimpse"))
        .args(["camera", "-f", "json", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(corpus::dir().join("images"))
        // Paced, so that no frame is replaced (dropped) before it is classified.
        .args(["--fps", "20"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_no_panic("camera --images", &err);
    let frames = stdout(&out)
        .lines()
        .filter(|l| l.contains(r#""type":"frame""#))
        .count();
    assert_eq!(frames, oks, "{err}");
    for c in images.iter().filter(|c| c.expect != Expect::Ok) {
        assert!(
            err.contains(c.name.trim_start_matches("images/")),
            "{}: not reported: {err}",
            c.name
        );
    }

    // Raw frames on stdin that end inside a frame.
    let raw = cases(|k| *k == Kind::RawYuyv);
    for c in raw {
        let out = camera_with_stdin(
            &[
                "-f",
                "json",
                "--raw",
                "-",
                "--size",
                "64x48",
                "--format",
                "yuyv",
                "--fps",
                "20",
                "--model",
                model.to_str().unwrap(),
            ],
            &c.bytes,
        );
        let err = stderr(&out);
        assert_no_panic(c.name, &err);
        assert!(out.status.success(), "{}: {err}", c.name);
        let Expect::Err(reason) = c.expect else {
            unreachable!()
        };
        assert!(
            err.contains(reason),
            "{}: expected {reason:?} in {err}",
            c.name
        );
        assert_eq!(
            stdout(&out)
                .lines()
                .filter(|l| l.contains(r#""type":"frame""#))
                .count(),
            2,
            "{}: the whole frames are classified",
            c.name
        );
    }
}
