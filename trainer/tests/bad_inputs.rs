//! `glimpse-train` on the trainer's part of the bad-input corpus (`tests/corpus/trainer/`):
//! datasets and wheels built to panic, exhaust memory or block the trainer are refused with
//! an error naming the file, before the damage; and files that are not regular files in a
//! CSV list are skipped unread.

use std::path::Path;

use glimpse_e2e::corpus::{self, Expect, Kind};
use glimpse_e2e::{glimpse_train as train, stderr};

fn refused(args: &[&str], file: &Path, expect: &str) {
    let o = train(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains(expect),
        "{args:?}: expected {expect:?} about {}, got: {err}",
        file.display()
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn corpus_datasets_and_wheels_are_refused_naming_the_file() {
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("x.onnx");
    let model = model.to_str().unwrap();
    let mut seen = 0;
    for case in corpus::recipes() {
        let Expect::Err(expect) = case.expect else {
            continue;
        };
        let file = corpus::dir().join(case.name);
        match case.kind {
            // The folder of the file the error must be about.
            Kind::Dataset => {
                let folder = file.parent().unwrap().to_str().unwrap();
                let args = ["train", "--data", folder, "--out", model, "--epochs", "1"];
                refused(&args, &file, expect);
            }
            Kind::Wheel => {
                let args = [
                    "import",
                    "efficientnet-lite0",
                    "--weights",
                    file.to_str().unwrap(),
                    "--out",
                    model,
                ];
                refused(&args, &file, expect);
            }
            _ => continue,
        }
        seen += 1;
    }
    assert_eq!(seen, 3, "the corpus has three trainer cases");
    assert!(!Path::new(model).exists(), "nothing written");
}

#[test]
fn csv_rows_naming_devices_or_fifos_are_skipped_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cat = glimpse_e2e::root().join("samples/chelsea.png");
    let coffee = glimpse_e2e::root().join("samples/coffee.png");
    let fifo = d.join("camera.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut rows = String::from("path,label\n");
    for _ in 0..10 {
        rows += &format!("{},cat\n{},coffee\n", cat.display(), coffee.display());
    }
    rows += &format!("/dev/zero,cat\n{},coffee\n", fifo.display());
    let csv = d.join("list.csv");
    std::fs::write(&csv, rows).unwrap();
    let out = d.join("x.onnx");
    let o = train(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--input-size",
        "32x32",
        "--width",
        "0.25",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("/dev/zero: not a regular file (a character device)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: not a regular file (a fifo)", fifo.display())),
        "{err}"
    );
}
