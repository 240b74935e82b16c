//! One definition of preprocessing: `glimpse-train eval` scores full-size photos from the
//! same pixels `glimpse classify` sees on the board (no shrinking first), so its per-image
//! probabilities match the CLI's.

use std::path::Path;

use glimpse_e2e::{classify_json, darknet_photos, glimpse_train, shipped_model, skip, stderr};
use glimpse_trainer::eval::Prediction;

/// Darknet's photos (all larger than the 320 px the trainer shrinks training images to),
/// in two class folders named after labels of the shipped model.
fn photo_folder(darknet: &Path, root: &Path) -> Vec<std::path::PathBuf> {
    let classes = [
        "Great Dane",
        "bald eagle, American eagle, Haliaeetus leucocephalus",
    ];
    let photos = [
        "dog.jpg",
        "horses.jpg",
        "person.jpg",
        "eagle.jpg",
        "giraffe.jpg",
        "kite.jpg",
    ];
    photos
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let dir = root.join(classes[i / 3]);
            std::fs::create_dir_all(&dir).unwrap();
            let to = dir.join(name);
            std::fs::copy(darknet.join(name), &to).unwrap();
            to
        })
        .collect()
}

#[test]
fn eval_probabilities_equal_glimpse_classify_on_full_size_photos() {
    let Some(darknet) = darknet_photos() else {
        skip(
            "eval_probabilities_equal_glimpse_classify_on_full_size_photos",
            "Debian's darknet photos are not installed",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("photos");
    let files = photo_folder(&darknet, &data);
    // Evaluate a copy: the report is written next to the model.
    let model = dir.path().join("model.onnx");
    std::fs::copy(shipped_model(), &model).unwrap();
    let predictions = dir.path().join("predictions.jsonl");
    let o = glimpse_train(&[
        "eval",
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        "--split",
        "all",
        "--predictions",
        predictions.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = std::fs::read_to_string(&predictions).unwrap();
    let ours: Vec<Prediction> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ours.len(), files.len(), "one prediction per photo");
    for file in &files {
        let name = file.display().to_string();
        let p = ours
            .iter()
            .find(|p| p.image == name)
            .unwrap_or_else(|| panic!("no prediction for {name}"));
        let cli = classify_json(&model, file);
        for entry in cli["top"].as_array().unwrap() {
            let index = entry["index"].as_u64().unwrap() as usize;
            let want = entry["probability"].as_f64().unwrap() as f32;
            let got = p.probabilities[index];
            assert!(
                (got - want).abs() <= 1e-5,
                "{name}: class {index}: glimpse-train eval {got}, glimpse classify {want}"
            );
        }
        assert_eq!(p.predicted, cli["label"].as_str().unwrap(), "{name}");
    }
}
