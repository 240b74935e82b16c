//! Transfer learning end to end on real images (Fashion-MNIST clothes written as PNG class
//! folders, as a user's photos would be): features from the shipped EfficientNet-Lite0,
//! a head trained on them, one grafted bundle that `glimpse` runs with the new labels and
//! ONNX Runtime agrees with, and a second run that takes every feature from the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use glimpse_e2e::{
    bin, classify_json, compare, fashion_mnist, fashion_mnist_classes, glimpse_train as train,
    shipped_model, skip, stderr, stdout, tract_and_onnxruntime,
};
use glimpse_runtime::{Classifier, Overrides};
use serde_json::Value;

/// Class names usable as folder names ("T-shirt/top" -> "T-shirt-top").
fn class_names() -> Vec<String> {
    std::fs::read_to_string(fashion_mnist_classes())
        .unwrap()
        .lines()
        .map(|l| l.replace('/', "-"))
        .collect()
}

/// Writes the first `per_class` images of each class of the Fashion-MNIST test set,
/// starting at image `from`, as `<root>/<class>/<index>.png`; returns the images' paths
/// and labels.
fn write_folder_dataset(root: &Path, from: usize, per_class: usize) -> Vec<(PathBuf, usize)> {
    let fm = fashion_mnist().unwrap();
    let (dims, px) =
        glimpse_trainer::data::read_idx(&fm.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let (_, labels) =
        glimpse_trainer::data::read_idx(&fm.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let (h, w) = (dims[1], dims[2]);
    let names = class_names();
    let mut counts = vec![0usize; names.len()];
    let mut out = Vec::new();
    for i in from..labels.len() {
        let label = labels[i] as usize;
        if counts[label] == per_class {
            continue;
        }
        counts[label] += 1;
        let dir = root.join(&names[label]);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{i}.png"));
        image::GrayImage::from_raw(w as u32, h as u32, px[i * h * w..(i + 1) * h * w].to_vec())
            .unwrap()
            .save(&path)
            .unwrap();
        out.push((path, label));
        if counts.iter().all(|c| *c == per_class) {
            break;
        }
    }
    out
}

fn report(model: &Path) -> Value {
    let p = model.with_extension("report.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// `features: N extracted, M from cache ...` -> (N, M).
fn extraction(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("features: "))
        .unwrap_or_else(|| panic!("no features line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

#[test]
fn transfer_learns_grafts_and_reuses_cached_features() {
    if fashion_mnist().is_none() {
        skip(
            "transfer_learns_grafts_and_reuses_cached_features",
            "Debian package dataset-fashion-mnist is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clothes");
    write_folder_dataset(&data, 0, 24);
    let cache = dir.path().join("cache");
    let out = dir.path().join("clothes.onnx");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--backbone",
            shipped_model().to_str().unwrap(),
            "--feature-cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let o = train(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        println!("{}", stdout(&o));
        stdout(&o)
    };

    // First run: every training and validation feature is computed.
    let first = run(&["--epochs", "20"]);
    let (computed, cached) = extraction(&first);
    assert!(
        computed >= 180 && cached == 0,
        "{computed} computed, {cached} cached"
    );
    let r = report(&out);
    let acc = r["metrics"]["accuracy"].as_f64().unwrap();
    let images = r["metrics"]["images"].as_u64().unwrap();
    assert!(images >= 20, "{images} test images");
    // ~20 training images per class, 10 classes: chance is 10%; ImageNet features do far
    // better even on grey thumbnails.
    assert!(
        acc >= 0.55,
        "transfer test accuracy {acc} on {images} images"
    );
    let parity = r["training"]["export_parity"]["max_abs_logit_diff"]
        .as_f64()
        .unwrap();
    assert!(parity < 1e-3, "graft parity {parity}");
    assert_eq!(
        r["training"]["feature_extraction"]["computed"].as_u64(),
        Some(computed as u64)
    );

    // Second run, other head settings: nothing is extracted again.
    let second = run(&["--epochs", "10", "--hidden", "64", "--lr", "1e-3"]);
    let (computed2, cached2) = extraction(&second);
    assert_eq!(
        (computed2, cached2),
        (0, computed),
        "second run takes every feature from the cache"
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["head"]["hidden"], 64);

    // The bundle: one file, the user's labels, the backbone's preprocessing.
    let info = Command::new(bin("glimpse"))
        .args(["info", "--format", "json", "--model", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", stderr(&info));
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    let mut names = class_names();
    names.sort();
    assert_eq!(info["labels"], serde_json::json!(names));
    assert!(
        info["source"].as_str().unwrap().contains("--backbone"),
        "{}",
        info["source"]
    );

    // Unseen images through `glimpse classify` and ONNX Runtime.
    let unseen = write_folder_dataset(&dir.path().join("unseen"), 5000, 1);
    let classifier = Classifier::load(&out, &Overrides::default()).unwrap();
    let mut correct = 0;
    for (photo, truth) in &unseen {
        let rec = classify_json(&out, photo);
        // The bundle's "none of the above" may refuse a few (5% of validation images).
        match rec["label"].as_str() {
            Some(label) => {
                assert!(names.iter().any(|n| n == label), "{rec}");
                correct += usize::from(label == class_names()[*truth]);
            }
            None => assert_eq!(rec["rejected"], true, "{rec}"),
        }
        match tract_and_onnxruntime(&classifier, &out, photo) {
            Some((ours, theirs)) => {
                let (diff, same_top1) = compare(&ours, &theirs);
                assert!(
                    diff < 1e-4 && same_top1,
                    "{}: tract vs ONNX Runtime differ by {diff}, same top-1: {same_top1}",
                    photo.display()
                );
            }
            None => skip(
                "transfer (ONNX Runtime part)",
                "libonnxruntime.so is not unpacked",
            ),
        }
    }
    assert!(
        correct >= 5,
        "{correct} of {} unseen images right",
        unseen.len()
    );
}

/// The initializers of the ONNX file at `path`, by name, as raw bytes.
fn initializers(path: &Path) -> std::collections::HashMap<String, Vec<u8>> {
    let file = glimpse_runtime::OnnxFile::read(path).unwrap();
    let graph = file.proto.graph.unwrap();
    graph
        .initializer
        .into_iter()
        .map(|t| {
            let bytes = if t.raw_data.is_empty() {
                t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                t.raw_data
            };
            (t.name, bytes)
        })
        .collect()
}

#[test]
fn fine_tuning_trains_the_last_blocks_and_grafts_them_back() {
    if fashion_mnist().is_none() {
        skip(
            "fine_tuning_trains_the_last_blocks_and_grafts_them_back",
            "Debian package dataset-fashion-mnist is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("clothes");
    write_folder_dataset(&data, 0, 16);
    let (cache, out) = (dir.path().join("cache"), dir.path().join("tuned.onnx"));
    let backbone = shipped_model();
    let run = || {
        let o = train(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            "--fine-tune",
            "2",
            "--epochs",
            "4",
            "--feature-cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        println!("{}", stdout(&o));
        stdout(&o)
    };
    let first = run();
    assert!(first.contains("fine-tuning: 2 blocks above"), "{first}");
    let (computed, _) = extraction(&first);
    let r = report(&out);
    let training = &r["training"];
    let ft = &training["config"]["fine_tune"];
    assert_eq!(ft["blocks"], 2, "{ft}");
    assert_eq!(ft["backbone_lr_scale"], 0.3, "{ft}");
    let cut = ft["cut"].as_str().unwrap().to_string();
    // The last epoch is kept, not the one with the lowest validation loss.
    assert_eq!(training["best_epoch"], 4, "{training}");
    // The cache holds the activations at the cut: 192 x 7 x 7 floats per image for
    // EfficientNet-Lite0 under its last two blocks.
    let bytes = training["feature_extraction"]["cache_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        bytes >= computed as u64 * 192 * 49 * 4,
        "{bytes} bytes for {computed} images"
    );
    let parity = training["export_parity"]["max_abs_logit_diff"]
        .as_f64()
        .unwrap();
    assert!(parity < 1e-3, "graft parity {parity}");
    let acc = r["metrics"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.5, "fine-tuned test accuracy {acc}");
    let md = std::fs::read_to_string(out.with_extension("report.md")).unwrap();
    assert!(
        md.contains("Fine-tuned the backbone's last 2 blocks"),
        "{md}"
    );

    // The blocks above the cut changed; everything under it is the backbone's, bit for bit.
    let (ours, theirs) = (initializers(&out), initializers(&backbone));
    let changed: Vec<&String> = theirs
        .iter()
        .filter(|(name, w)| ours.get(*name).is_some_and(|o| o != *w))
        .map(|(name, _)| name)
        .collect();
    assert!(
        changed.iter().any(|n| n.starts_with("head.conv"))
            && changed.iter().any(|n| n.starts_with("_blocks.15."))
            && changed
                .iter()
                .all(|n| n.starts_with("head.conv") || n.starts_with("_blocks.15.")),
        "cut at {cut}; changed: {changed:?}"
    );
    assert!(ours.contains_key("_blocks.0.depthwise.weight"));

    // The board runs it like any bundle, and ONNX Runtime agrees with tract.
    let unseen = write_folder_dataset(&dir.path().join("unseen"), 5000, 1);
    let classifier = Classifier::load(&out, &Overrides::default()).unwrap();
    for (photo, _) in unseen.iter().take(3) {
        let rec = classify_json(&out, photo);
        assert!(rec["label"].is_string() || rec["rejected"] == true, "{rec}");
        match tract_and_onnxruntime(&classifier, &out, photo) {
            Some((a, b)) => {
                let (diff, same_top1) = compare(&a, &b);
                assert!(diff < 1e-4 && same_top1, "tract vs ONNX Runtime: {diff}");
            }
            None => skip(
                "fine-tuning (ONNX Runtime part)",
                "libonnxruntime.so is not unpacked",
            ),
        }
    }
    // A second run takes every activation from the cache.
    let (computed2, cached2) = extraction(&run());
    assert_eq!((computed2, cached2), (0, computed));
}

#[test]
fn transfer_refuses_bad_inputs_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("photos");
    for (class, n) in [("cat", 6), ("dog", 3)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..n {
            image::RgbImage::from_fn(40, 30, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 8) as u8, i * 40])
            })
            .save(data.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    let out = dir.path().join("m.onnx");
    let base = |backbone: &str, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--backbone",
            backbone,
            "--out",
            out.to_str().unwrap(),
            "--val-fraction",
            "0",
            "--test-fraction",
            "0",
        ];
        a.extend_from_slice(extra);
        let o = train(&a);
        assert!(!o.status.success(), "expected a refusal");
        assert!(!out.exists(), "no model written on failure");
        stderr(&o)
    };
    let shipped = shipped_model();
    let shipped = shipped.to_str().unwrap();

    // A class below --min-per-class (5 by default).
    let e = base(shipped, &[]);
    assert!(
        e.contains("at least 5 training images") && e.contains("dog (3)"),
        "{e}"
    );
    // An unknown backbone name.
    let e = base("resnet-9000", &["--min-per-class", "2"]);
    assert!(
        e.contains("not a known backbone") && e.contains("efficientnet-lite0"),
        "{e}"
    );
    // A file that is not an ONNX model.
    let bogus = dir.path().join("bogus.onnx");
    std::fs::write(&bogus, b"not a model at all").unwrap();
    let e = base(bogus.to_str().unwrap(), &["--min-per-class", "2"]);
    assert!(
        e.contains("bogus.onnx") && e.contains("not an ONNX model"),
        "{e}"
    );
    // More blocks than the backbone has, a zero learning-rate scale.
    let e = base(shipped, &["--min-per-class", "2", "--fine-tune", "99"]);
    assert!(
        e.contains("--fine-tune 99")
            && e.contains("has 16 blocks")
            && e.contains("expected 1 to 16"),
        "{e}"
    );
    let e = base(shipped, &["--fine-tune", "1", "--backbone-lr-scale", "0"]);
    assert!(e.contains("expected a number above 0, got 0"), "{e}");
    // Early stopping by validation loss would end fine-tuning before the blocks move.
    let e = base(shipped, &["--fine-tune", "1", "--patience", "2"]);
    assert!(e.contains("cannot be used with"), "{e}");
    // Flags of from-scratch training make no sense with a backbone.
    let o = train(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--backbone",
        shipped,
        "--arch",
        "mobilenet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("cannot be used with"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn base_trains_a_model_again_on_its_data_plus_new_photos_and_classes() {
    if fashion_mnist().is_none() {
        skip(
            "base_trains_a_model_again_on_its_data_plus_new_photos_and_classes",
            "Debian package dataset-fashion-mnist is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, more) = (dir.path().join("clothes"), dir.path().join("collected"));
    write_folder_dataset(&old, 0, 12);
    // What a board collected and a person labelled: more of one class, and a new one.
    let shirts = write_folder_dataset(&dir.path().join("extra"), 3000, 6)
        .into_iter()
        .filter(|(_, label)| *label == 0);
    std::fs::create_dir_all(more.join(&class_names()[0])).unwrap();
    for (path, _) in shirts {
        let to = more.join(&class_names()[0]).join(path.file_name().unwrap());
        std::fs::copy(&path, to).unwrap();
    }
    std::fs::create_dir_all(more.join("photo")).unwrap();
    for (i, name) in ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]
        .iter()
        .enumerate()
    {
        let img = image::open(glimpse_e2e::sample(name)).unwrap();
        for (j, view) in [img.clone(), img.fliph()].iter().enumerate() {
            view.save(more.join("photo").join(format!("{i}-{j}.png")))
                .unwrap();
        }
    }
    let cache = dir.path().join("cache");
    let backbone = shipped_model();
    let train_on = |data: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            data.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            "--feature-cache",
            cache.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "5",
            "--min-per-class",
            "3",
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    let first = dir.path().join("first.onnx");
    let o = train_on(&old, &first, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (computed, _) = extraction(&stdout(&o));

    // Again with --base: the old data and the new, the old features from the cache.
    let second = dir.path().join("second.onnx");
    let o = train_on(&more, &second, &["--base", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (computed2, cached2) = extraction(&stdout(&o));
    assert_eq!(cached2, computed, "{}", stdout(&o));
    assert!(computed2 > 0 && computed2 <= 14, "{}", stdout(&o));
    let labels = Classifier::load(&second, &Overrides::default())
        .unwrap()
        .labels;
    let mut expected = class_names();
    expected.push("photo".into());
    expected.sort();
    assert_eq!(labels, expected);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(second.with_extension("config.json")).unwrap())
            .unwrap();
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        cfg["data"],
        serde_json::json!([canonical(&old), canonical(&more)])
    );
    let rec = classify_json(&second, &glimpse_e2e::sample("coffee.png"));
    assert_eq!(rec["label"], "photo", "{rec}");

    // A model without its configuration, or from another backbone's run, is refused.
    let o = train_on(
        &more,
        &dir.path().join("x.onnx"),
        &["--base", backbone.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reading its training configuration"),
        "{}",
        stderr(&o)
    );
    let cfg_path = second.with_extension("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let sha = cfg["backbone_sha256"].as_str().unwrap();
    std::fs::write(&cfg_path, text.replace(sha, &"0".repeat(64))).unwrap();
    let o = train_on(
        &more,
        &dir.path().join("x.onnx"),
        &["--base", second.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("give the same --backbone"),
        "{}",
        stderr(&o)
    );
}
