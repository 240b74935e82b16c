//! The classifier library on its own: the `classify_photo` example (library only, no
//! daemon or CLI code) ranks a photo as `glimpse classify` does.

use glimpse_e2e::{bin, classify_json, root, shipped_model, stderr, stdout};

#[test]
fn example_classifies_a_photo_like_the_cli() {
    let photo = root().join("samples/chelsea.png");
    let model = shipped_model();
    // `cargo test` builds the examples next to the binaries.
    let out = std::process::Command::new(bin("examples/classify_photo"))
        .arg(&photo)
        .arg(&model)
        .output()
        .expect("the example starts");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<(f64, String)> = stdout(&out)
        .lines()
        .map(|l| {
            let (p, label) = l.split_once("  ").expect("probability  label");
            (p.parse().expect("a probability"), label.to_string())
        })
        .collect();
    assert_eq!(lines.len(), 5, "{}", stdout(&out));
    let cli = classify_json(&model, &photo);
    let top = cli["top"].as_array().expect("top");
    for ((p, label), want) in lines.iter().zip(top) {
        assert_eq!(label, want["label"].as_str().unwrap());
        let want_p = want["probability"].as_f64().unwrap();
        assert!((p - want_p).abs() < 1e-4, "{label}: {p} vs {want_p}");
    }
}

#[test]
fn example_names_the_file_it_cannot_read() {
    let out = std::process::Command::new(bin("examples/classify_photo"))
        .arg(root().join("samples/no-such-photo.jpg"))
        .arg(shipped_model())
        .output()
        .expect("the example starts");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no-such-photo.jpg"),
        "{}",
        stderr(&out)
    );
}
