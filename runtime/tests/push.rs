//! Pushing a model to a running `glimpse serve` over its API (`PUT /v1/model`, rollback,
//! `glimpse push`): the real daemon, the real models, refusals that change nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use glimpse_e2e::serve::{agent, get, metric, post, put, Reply, Server};
use glimpse_e2e::{bin, root, sample, shipped_model, stderr, stdout};
use glimpse_runtime::fsutil::sha256_hex;
use serde_json::Value;

const TOKEN: &str = "push-token-0123456789abcdef";

fn assert_refused(r: &Reply, status: u16, kind: &str, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.json()["kind"], kind, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains(says), "expected {says:?} in {error:?}");
}

/// The label the daemon gives the coffee photo, and the sha256 of the model that gave it.
fn coffee(server: &Server) -> (String, String) {
    let png = std::fs::read(sample("coffee.png")).unwrap();
    let r = post(
        &agent(),
        &server.url("/v1/classify"),
        Some(TOKEN),
        "image/png",
        &png,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["top"][0]["label"].as_str().unwrap().to_string(),
        v["model_sha256"].as_str().unwrap().to_string(),
    )
}

fn model_doc(server: &Server) -> Value {
    get(&agent(), &server.url("/v1/model"), Some(TOKEN)).json()
}

fn push(server: &Server, headers: &[(&str, &str)], bytes: &[u8]) -> Reply {
    put(
        &agent(),
        &server.url("/v1/model"),
        Some(TOKEN),
        headers,
        bytes,
    )
}

fn rollback(server: &Server, token: Option<&str>) -> Reply {
    post(
        &agent(),
        &server.url("/v1/model/rollback"),
        token,
        "text/plain",
        b"",
    )
}

/// `glimpse push ARGS` against `server`, with the token in a file.
fn glimpse_push(server: &Server, token_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("glimpse"))
        .arg("push")
        .args(args)
        .args(["--to", &server.url(""), "--token-file"])
        .arg(token_file)
        .env_remove("GLIMPSE_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn pushed_models_are_checked_served_kept_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let fashion = std::fs::read(root().join("models/fashion-mnist.onnx")).unwrap();
    std::fs::write(&model, &fashion).unwrap();
    let shipped = std::fs::read(shipped_model()).unwrap();
    let limit = (shipped.len() + 1000).to_string();
    let server = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--watch-interval",
            "0.2",
            "--max-model-bytes",
            &limit,
        ],
        &[("GLIMPSE_TOKEN", TOKEN)],
    );
    let before = model_doc(&server);
    assert_eq!(before["sha256"], sha256_hex(&fashion));
    assert_eq!(before["previous"], Value::Null);

    // A good model, with its sha256: served by the very next request; the old file is
    // kept beside it.
    let sha = sha256_hex(&shipped);
    let r = push(
        &server,
        &[("X-Model-Sha256", &sha.to_uppercase())],
        &shipped,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sha256"], sha);
    assert_eq!(r.json()["classes"], 1000);
    assert_eq!(r.json()["previous"]["sha256"], before["sha256"]);
    assert_eq!(coffee(&server), ("espresso".into(), sha.clone()));
    assert_eq!(sha256_hex(&std::fs::read(&model).unwrap()), sha);
    let kept = dir.path().join("model.previous.onnx");
    assert_eq!(std::fs::read(&kept).unwrap(), fashion);

    // Refusals: each says why, and nothing changes.
    let truncated = &shipped[..100_000];
    assert_refused(
        &push(&server, &[], truncated),
        422,
        "bad_model",
        "the pushed model: loading the model: not an ONNX model",
    );
    let int_input = glimpse_e2e::corpus::recipes()
        .into_iter()
        .find(|c| c.name == "models/int-input.onnx")
        .unwrap()
        .bytes;
    let r = push(&server, &[], &int_input);
    assert_refused(&r, 422, "bad_model", "float32 image input");
    let wrong = sha256_hex(b"another file");
    let r = push(&server, &[("X-Model-Sha256", &wrong)], &fashion);
    assert_refused(&r, 400, "sha256_mismatch", &wrong);
    let r = push(&server, &[("X-Model-Sha256", "abc")], &fashion);
    assert_refused(&r, 400, "bad_request", "64 hex digits");
    let oversized = vec![0u8; shipped.len() + 1001];
    let r = push(&server, &[], &oversized);
    assert_refused(&r, 413, "too_large", "--max-model-bytes");
    let r = put(&agent(), &server.url("/v1/model"), None, &[], &fashion);
    assert_refused(&r, 401, "unauthorized", "");
    let r = put(
        &agent(),
        &server.url("/v1/model"),
        Some("push-token-0123456789abcdeX"),
        &[],
        &fashion,
    );
    assert_refused(&r, 401, "unauthorized", "");
    let r = rollback(&server, None);
    assert_refused(&r, 401, "unauthorized", "");
    assert_eq!(coffee(&server), ("espresso".into(), sha.clone()));
    assert_eq!(sha256_hex(&std::fs::read(&model).unwrap()), sha);
    assert_eq!(std::fs::read(&kept).unwrap(), fashion);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A file that cannot be written (here a folder where the previous model goes): 500,
    // and nothing changes either.
    std::fs::rename(&kept, dir.path().join("kept.onnx")).unwrap();
    std::fs::create_dir(&kept).unwrap();
    let r = push(&server, &[], &fashion);
    assert_refused(&r, 500, "storage", "keeping the served model as");
    assert_eq!(coffee(&server), ("espresso".into(), sha.clone()));
    assert_eq!(sha256_hex(&std::fs::read(&model).unwrap()), sha);
    std::fs::remove_dir(&kept).unwrap();
    std::fs::rename(dir.path().join("kept.onnx"), &kept).unwrap();

    // Rollback: the fashion model again, and the pushed one kept in its place.
    let r = rollback(&server, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sha256"], before["sha256"]);
    assert_eq!(r.json()["previous"]["sha256"], sha);
    assert_eq!(coffee(&server).1, before["sha256"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), shipped);

    // The watcher saw the files change under it, and did not load them again.
    std::thread::sleep(Duration::from_millis(800));
    let text = get(&agent(), &server.url("/metrics"), Some(TOKEN)).body;
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(r#"glimpse_model_changes_total{via="push",result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"glimpse_model_changes_total{via="push",result="refused"}"#),
        Some(2.0)
    );
    assert_eq!(
        series(r#"glimpse_model_changes_total{via="push",result="failed"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"glimpse_model_changes_total{via="rollback",result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"glimpse_model_reloads_total{result="ok"}"#),
        None,
        "{text}"
    );

    // Hot reload from the file system still works.
    let staging = dir.path().join("staging.onnx");
    std::fs::write(&staging, &shipped).unwrap();
    std::fs::rename(&staging, &model).unwrap();
    server.wait_log("glimpse serve: reloaded", Duration::from_secs(30));
    assert_eq!(coffee(&server), ("espresso".into(), sha.clone()));
}

#[test]
fn glimpse_push_sends_a_model_and_says_when_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let fashion = root().join("models/fashion-mnist.onnx");
    std::fs::copy(&fashion, &model).unwrap();
    let server = Server::start(
        &["--model", model.to_str().unwrap()],
        &[("GLIMPSE_TOKEN", TOKEN)],
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wrong_token = dir.path().join("wrong-token");
    std::fs::write(&wrong_token, "not-the-token-0123456789\n").unwrap();

    let shipped = shipped_model();
    let out = glimpse_push(&server, &token_file, &[shipped.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sha = sha256_hex(&std::fs::read(&shipped).unwrap());
    assert!(stdout(&out).contains(&sha), "{}", stdout(&out));
    assert!(stdout(&out).contains("1000 classes"), "{}", stdout(&out));
    assert_eq!(coffee(&server), ("espresso".into(), sha.clone()));

    let out = glimpse_push(&server, &wrong_token, &[fashion.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );

    let broken = dir.path().join("broken.onnx");
    std::fs::write(&broken, b"model: resnet50\n").unwrap();
    let out = glimpse_push(&server, &token_file, &[broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("422 bad_model"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an ONNX model"),
        "{}",
        stderr(&out)
    );
    assert_eq!(coffee(&server).1, sha);

    let out = glimpse_push(&server, &token_file, &["--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fashion_sha = sha256_hex(&std::fs::read(&fashion).unwrap());
    assert!(stdout(&out).contains(&fashion_sha), "{}", stdout(&out));
    assert_eq!(coffee(&server).1, fashion_sha);

    // Nothing listens there: a clear error, not a refusal.
    let out = Command::new(bin("glimpse"))
        .args(["push", "--rollback", "--to", "http://127.0.0.1:9"])
        .env("GLIMPSE_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("rolling back http://127.0.0.1:9/v1/model/rollback"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_daemon_without_a_token_takes_no_model_and_a_fresh_one_has_nothing_to_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(root().join("models/fashion-mnist.onnx"), &model).unwrap();
    let fashion = std::fs::read(&model).unwrap();
    let server = Server::start(&["--model", model.to_str().unwrap()], &[]);
    let r = put(&agent(), &server.url("/v1/model"), None, &[], &fashion);
    assert_refused(&r, 403, "token_required", "--token-file");
    drop(server);

    let server = Server::start(
        &["--model", model.to_str().unwrap()],
        &[("GLIMPSE_TOKEN", TOKEN)],
    );
    let r = rollback(&server, Some(TOKEN));
    assert_refused(&r, 409, "no_previous_model", "model.previous.onnx");
    assert_eq!(model_doc(&server)["sha256"], sha256_hex(&fashion));
}
