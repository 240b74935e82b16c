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

/// A model declared channel-first (`[N, C, H, W]`, EfficientNet-Lite0) runs its input
/// channel-last inside the classifier (`Feed::ChannelLast`: preprocessing writes it so and
/// no transpose runs at the input): the same scores, within float rounding (the stem sums
/// its taps in another order), as a plan fed as declared, on every photo in `samples/`.
#[test]
fn a_channel_first_model_fed_channel_last_scores_as_fed_as_declared() {
    use glimpse_runtime::classifier::softmax;
    use glimpse_runtime::{Classifier, OnnxFile, Plan};
    let model = shipped_model();
    let c = Classifier::load(&model, &Default::default()).expect("the shipped model loads");
    assert_eq!(c.preprocess.layout, glimpse_runtime::Layout::Nchw);
    let file = OnnxFile::read(&model).expect("the shipped model reads");
    let declared = Plan::new(&file.proto, c.preprocess.shape(1)).expect("a plan as declared");
    let photos = glimpse_runtime::decode::image_files_in(&root().join("samples")).unwrap();
    assert!(photos.len() >= 4, "{photos:?}");
    for photo in photos {
        let bytes = std::fs::read(&photo).unwrap();
        let img = glimpse_runtime::decode(&bytes, &Default::default()).unwrap();
        let fed = c.classify(&img).expect("classifies").0.probs;
        let out = declared.run(c.tensor(&img)).expect("runs as declared");
        let logits: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let (diff, same_top1) = glimpse_e2e::compare(&fed, &softmax(&logits));
        assert!(
            diff < 1e-5,
            "{}: largest difference {diff}",
            photo.display()
        );
        assert!(same_top1, "{}", photo.display());
        // `run` takes the declared layout and lays it out for the plan.
        let moved = c
            .run(c.tensor(&img))
            .expect("runs the declared tensor")
            .probs;
        assert_eq!(moved, fed, "{}", photo.display());
    }
}
