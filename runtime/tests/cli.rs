//! `glimpse classify` and `glimpse info` driven as a user would: the shipped model, the
//! shipped sample photos, and a corpus of bad files and bad models.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use glimpse_e2e::{glimpse, root, text};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

/// A shipped sample photo, as an argument.
fn sample(name: &str) -> String {
    glimpse_e2e::sample(name).display().to_string()
}

fn json_lines(o: &Output) -> Vec<Value> {
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn top_labels(record: &Value) -> Vec<String> {
    record["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap().to_string())
        .collect()
}

/// What a person would call each shipped sample: the top-5 must contain one of these.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "chelsea.png",
        &["tabby, tabby cat", "tiger cat", "Egyptian cat"],
    ),
    ("coffee.png", &["espresso", "cup", "coffee mug"]),
    (
        "rocket.jpg",
        &["missile", "projectile, missile", "space shuttle"],
    ),
];

#[test]
fn classifies_shipped_samples_with_the_default_model() {
    let out = glimpse(&[
        "classify",
        &root().join("samples").display().to_string(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let records = json_lines(&out);
    assert_eq!(records.len(), 4, "one record per sample photo");
    for (file, wanted) in EXPECTED {
        let r = records
            .iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(file))
            .unwrap();
        let top = top_labels(r);
        assert_eq!(top.len(), 5);
        assert!(
            top.iter().any(|l| wanted.contains(&l.as_str())),
            "{file}: top-5 {top:?} has none of {wanted:?}"
        );
        let p: Vec<f64> = r["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert!(
            p.windows(2).all(|w| w[0] >= w[1]),
            "sorted best first: {p:?}"
        );
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(r["label"], r["top"][0]["label"]);
    }
}

#[test]
fn table_csv_and_stdin() {
    let chelsea = sample("chelsea.png");
    let out = glimpse(&["classify", &chelsea, "-k", "3"]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(table.starts_with(&chelsea), "{table}");
    assert_eq!(
        table.lines().count(),
        4,
        "a header line and 3 ranks: {table}"
    );
    assert!(table.contains('%'));

    let out = glimpse(&[
        "classify",
        &chelsea,
        &sample("coffee.png"),
        "--format",
        "csv",
        "-k",
        "2",
    ]);
    assert!(out.status.success());
    let csv = text(&out.stdout);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "path,predicted,rank,index,label,probability,latency_ms"
    );
    assert_eq!(rows.len(), 1 + 2 * 2);
    assert!(rows[1].starts_with(&format!("{chelsea},")), "{csv}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["classify", "-", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&chelsea).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let r = &json_lines(&out)[0];
    assert_eq!(r["path"], "-");
    assert!(top_labels(r).iter().any(|l| l.contains("cat")), "{r}");
}

#[test]
fn threshold_reports_unknown() {
    let out = glimpse(&[
        "classify",
        &sample("astronaut.png"),
        "--format",
        "json",
        "--threshold",
        "0.999",
    ]);
    assert!(out.status.success());
    let r = &json_lines(&out)[0];
    assert!(r["label"].is_null(), "below threshold must be unknown: {r}");
    let out = glimpse(&["classify", &sample("astronaut.png"), "--threshold", "0.999"]);
    assert!(
        text(&out.stdout).contains("unknown (best below 100%)"),
        "{}",
        text(&out.stdout)
    );
    let out = glimpse(&["classify", &sample("astronaut.png"), "--threshold", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("between 0 and 1"));
}

#[test]
fn folders_are_walked_recursively_and_only_images_taken() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::copy(
        root().join("samples/coffee.png"),
        dir.path().join("a/b/cup.PNG"),
    )
    .unwrap();
    std::fs::copy(
        root().join("samples/rocket.jpg"),
        dir.path().join("a/launch.jpg"),
    )
    .unwrap();
    std::fs::write(dir.path().join("a/notes.txt"), "not an image").unwrap();
    std::fs::copy(
        root().join("samples/rocket.jpg"),
        dir.path().join(".hidden.jpg"),
    )
    .unwrap();
    let out = glimpse(&[
        "classify",
        &dir.path().display().to_string(),
        "--format",
        "json",
        "-k",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paths: Vec<String> = json_lines(&out)
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths[0].ends_with("a/b/cup.PNG") && paths[1].ends_with("a/launch.jpg"),
        "sorted: {paths:?}"
    );
}

#[test]
fn parallel_jobs_keep_input_order_and_report_failures() {
    // Twelve photos and a corrupt file among them: with 3 workers the output must be the
    // sequential run's, in the same order, and the bad file reported without stopping it.
    let dir = tempfile::tempdir().unwrap();
    let photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"];
    for i in 0..12 {
        let name = photos[i % 4];
        let ext = name.rsplit('.').next().unwrap();
        std::fs::copy(
            root().join("samples").join(name),
            dir.path().join(format!("{i:02}.{ext}")),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("05b.jpg"), b"\xff\xd8\xff truncated").unwrap();
    let folder = dir.path().display().to_string();
    let run = |jobs: &str| {
        let out = glimpse(&["classify", &folder, "-f", "json", "-k", "2", "--jobs", jobs]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("05b.jpg: "),
            "{}",
            text(&out.stderr)
        );
        json_lines(&out)
            .iter()
            .map(|r| (r["path"].as_str().unwrap().to_string(), top_labels(r)))
            .collect::<Vec<_>>()
    };
    let sequential = run("1");
    assert_eq!(sequential.len(), 12);
    assert!(sequential[5].0.ends_with("05.png") && sequential[6].0.ends_with("06.png"));
    assert_eq!(run("3"), sequential);
}

fn model_with(mutate: impl FnOnce(&mut pb::ModelProto)) -> Vec<u8> {
    let bytes = std::fs::read(root().join("models/efficientnet-lite0.onnx")).unwrap();
    let mut model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    mutate(&mut model);
    model.encode_to_vec()
}

#[test]
fn bad_models_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let chelsea = sample("chelsea.png");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        ("text.onnx", b"this is not a model".to_vec(), vec![], "not an ONNX model"),
        ("empty.onnx", vec![], vec![], "not an ONNX model: empty file"),
        (
            "unsupported.onnx",
            model_with(|m| m.graph.as_mut().unwrap().node[3].op_type = "FrobnicateV9".into()),
            vec![],
            "unsupported ONNX op: FrobnicateV9 (node \"_blocks.0.depthwise.relu6\") is not implemented by tract",
        ),
        (
            "labels.onnx",
            model_with(|m| {
                let p = m.metadata_props.iter_mut().find(|p| p.key == "glimpse.labels").unwrap();
                p.value = r#"["a","b","c"]"#.into();
            }),
            vec![],
            "the model outputs 1000 classes, got 3 labels",
        ),
        (
            "meta.onnx",
            model_with(|m| m.metadata_props.iter_mut().find(|p| p.key == "glimpse.layout").unwrap().value = "chwn".into()),
            vec![],
            "bad metadata glimpse.layout",
        ),
        ("labels-flag.onnx", model_with(|_| {}), vec!["--labels", "LABELS"], "got 2 labels"),
        ("size-flag.onnx", model_with(|_| {}), vec!["--input-size", "300x300"], "does not match the preprocessing"),
    ];
    let labels = dir.path().join("two.txt");
    std::fs::write(&labels, "yes\nno\n").unwrap();
    for (name, bytes, extra, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut args = vec!["classify", "--model", path.to_str().unwrap(), &chelsea];
        let labels = labels.display().to_string();
        args.extend(
            extra
                .iter()
                .map(|a| if *a == "LABELS" { labels.as_str() } else { a }),
        );
        let out = glimpse(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err:?}"
        );
        assert!(
            err.contains(&path.display().to_string()),
            "{name}: error names the model file: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn third_party_model_without_metadata_runs_with_flags() {
    // Strip every glimpse key: what a model from another tool looks like.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.onnx");
    std::fs::write(&path, model_with(|m| m.metadata_props.clear())).unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::copy(
        root().join("trainer/src/import/imagenet-labels.txt"),
        &labels,
    )
    .unwrap();
    let out = glimpse(&[
        "classify",
        "--model",
        path.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--mean",
        "127,127,127",
        "--std",
        "128,128,128",
        "--resize",
        "center-crop:256",
        "--outputs",
        "logits",
        "--format",
        "json",
        &sample("chelsea.png"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let with_flags = &json_lines(&out)[0];
    let out = glimpse(&["classify", "--format", "json", &sample("chelsea.png")]);
    let shipped = &json_lines(&out)[0];
    assert_eq!(
        top_labels(with_flags),
        top_labels(shipped),
        "flags reproduce the bundle's metadata"
    );

    // Without flags it still runs, warning about what it had to assume.
    let out = glimpse(&[
        "classify",
        "--model",
        path.to_str().unwrap(),
        &sample("chelsea.png"),
    ]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("assuming") && err.contains("labels \"class 0\"") && err.contains("--labels"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("class "),
        "classes named by index"
    );
}

#[test]
fn info_describes_the_shipped_model() {
    let model = root().join("models/efficientnet-lite0.onnx");
    let out = glimpse(&["info", "--model", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    for needle in [
        "input       input: float [batch, 3, 224, 224]",
        "resize short side to 256, center-crop 224x224",
        "labels      1000",
        "Conv ",
        // The float model: every conv and the classifier on float kernels, each traced to
        // its plan node (no "not traced" tail).
        "kernels     50 convs and products: int8 0, float 50 (DepthWiseConv 16, ",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    let out = glimpse(&["info", "--format", "json"]);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["labels"].as_array().unwrap().len(), 1000);
    assert_eq!(
        doc["preprocess"]["mean"],
        serde_json::json!([127.0, 127.0, 127.0])
    );
    assert_eq!(doc["output_kind"], "logits");
    assert!(doc["ops"]["Conv"].as_u64().unwrap() > 40);
    assert!(doc["error"].is_null());
    assert_eq!(doc["license"], "Apache-2.0");
    let kernels = doc["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 50);
    for k in kernels {
        let runs_on = k["runs_on"].as_array().unwrap();
        assert!(
            !runs_on.is_empty() && runs_on.iter().all(|r| r["integer"] == false),
            "{k}"
        );
    }
}

/// Exit status: 0 when every input was classified, 1 when some failed and the others were
/// classified, 2 when the run could not go on (bad model, bad arguments).
#[test]
fn exit_status_says_what_failed() {
    let coffee = sample("coffee.png");
    let missing = root()
        .join("samples/no-such-photo.jpg")
        .display()
        .to_string();
    let out = glimpse(&["classify", &coffee]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = glimpse(&["classify", &coffee, &missing, "-f", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        json_lines(&out).len(),
        1,
        "the good photo is still classified"
    );
    assert!(
        text(&out.stderr).contains("no-such-photo.jpg"),
        "{}",
        text(&out.stderr)
    );
    let out = glimpse(&["classify", "--model", &missing, &coffee]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = glimpse(&["classify", &coffee, "--top-k", "many"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// A reader that goes away (`glimpse info | head -1`) ends the program quietly: exit 0,
/// nothing on stderr, no panic. The pipe is closed before the program writes (loading the
/// model takes longer than the close), so every write meets the closed pipe.
#[test]
fn closed_pipe_ends_quietly() {
    let samples = root().join("samples").display().to_string();
    let runs: [&[&str]; 4] = [
        &["info"],
        &["info", "--format", "json"],
        &["classify", &samples],
        &["classify", &samples, "-f", "json", "--jobs", "2"],
    ];
    for args in runs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
