//! `glimpse-train train` and `eval` end to end on real data (Debian's Fashion-MNIST): a
//! short run learns, the export agrees with tract and ONNX Runtime, `glimpse classify` runs
//! the bundle, runs are reproducible, a killed run resumes, and bad datasets are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_e2e::{
    bin, classify_json, compare, fashion_mnist, fashion_mnist_classes, fashion_mnist_or_skip,
    glimpse_train as train, skip, stderr, stdout, tract_and_onnxruntime,
};
use glimpse_runtime::{Classifier, Overrides};
use serde_json::Value;

fn train_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin("glimpse-train"));
    c.args(args);
    c
}

fn data() -> Option<PathBuf> {
    fashion_mnist_or_skip(&format!(
        "{}::{}",
        module_path!(),
        std::thread::current().name().unwrap_or("?")
    ))
}

fn report(model: &Path) -> Value {
    let p = model.with_file_name(format!(
        "{}.report.json",
        model.file_stem().unwrap().to_string_lossy()
    ));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// The start of every Fashion-MNIST training command here:
/// `train --data <IDX folder> --class-names <names> --out <out>`.
fn fashion_args<'a>(fm: &'a Path, classes: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        fm.to_str().unwrap(),
        "--class-names",
        classes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
}

/// The Fashion-MNIST test set as `(28x28 grey images, labels)`, read and decompressed once
/// per test process.
fn fashion_test_set() -> &'static (Vec<image::GrayImage>, Vec<u8>) {
    static SET: std::sync::OnceLock<(Vec<image::GrayImage>, Vec<u8>)> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let fm = fashion_mnist().unwrap();
        let (dims, px) =
            glimpse_trainer::data::read_idx(&fm.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let (_, labels) =
            glimpse_trainer::data::read_idx(&fm.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let (h, w) = (dims[1], dims[2]);
        let images = px
            .chunks_exact(h * w)
            .map(|p| image::GrayImage::from_raw(w as u32, h as u32, p.to_vec()).unwrap())
            .collect();
        (images, labels)
    })
}

/// Writes test image `index` of Fashion-MNIST as a PNG (what a user would classify).
fn fashion_png(dir: &Path, index: usize) -> (PathBuf, usize) {
    let (images, labels) = fashion_test_set();
    let path = dir.join(format!("fashion-{index}.png"));
    images[index].save(&path).unwrap();
    (path, labels[index] as usize)
}

const QUICK: &[&str] = &[
    "--limit-per-class",
    "100",
    "--epochs",
    "3",
    "--width",
    "0.5",
    "--batch-size",
    "32",
];

#[test]
fn short_run_learns_exports_and_classifies() {
    let Some(fm) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fm.onnx");
    let classes = fashion_mnist_classes();
    let mut args = fashion_args(&fm, &classes, &out);
    args.extend_from_slice(QUICK);
    args.push("--quantize");
    let o = train(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{}", stdout(&o));

    for suffix in [
        "int8.onnx",
        "int8.quantize.json",
        "onnx",
        "report.json",
        "report.md",
        "confusion.png",
        "curves.png",
        "config.json",
    ] {
        assert!(
            dir.path().join(format!("fm.{suffix}")).is_file(),
            "fm.{suffix} written"
        );
    }
    assert!(
        !dir.path().join("fm.onnx.ckpt").exists(),
        "checkpoints removed after a successful run"
    );
    let r = report(&out);
    let acc = r["metrics"]["accuracy"].as_f64().unwrap();
    // 1,000 training images, 3 epochs: well above the 10% of chance. The margin: at least
    // 6x chance.
    assert!(acc >= 0.60, "test accuracy {acc} after a short run");
    assert_eq!(
        r["metrics"]["images"], 10_000,
        "the full Fashion-MNIST test set"
    );
    assert_eq!(r["metrics"]["per_class"].as_array().unwrap().len(), 10);
    let parity = r["training"]["export_parity"]["max_abs_logit_diff"]
        .as_f64()
        .unwrap();
    assert!(parity < 1e-3, "export parity {parity}");
    assert_eq!(r["training"]["history"].as_array().unwrap().len(), 3);
    let info = Command::new(bin("glimpse"))
        .args(["info", "--format", "json", "--model", out.to_str().unwrap()])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info["source"]
            .as_str()
            .unwrap()
            .contains("--arch small-cnn --epochs 3"),
        "{}",
        info["source"]
    );
    assert_eq!(info["labels"][9], "Ankle boot");
    let md = std::fs::read_to_string(dir.path().join("fm.report.md")).unwrap();
    assert!(
        md.contains("| Ankle boot |") && md.contains("Confusion matrix"),
        "{md}"
    );
    let png = image::open(dir.path().join("fm.confusion.png")).unwrap();
    assert!(png.width() > 300);

    // The bundle on the runtime CLI, as a user would run it.
    let (photo, truth) = fashion_png(dir.path(), 0);
    let rec = classify_json(&out, &photo);
    let names: Vec<String> = std::fs::read_to_string(&classes)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(
        names.contains(&rec["label"].as_str().unwrap().to_string()),
        "{rec}"
    );
    println!(
        "{}: true class {}, predicted {}",
        photo.display(),
        names[truth],
        rec["label"]
    );

    // The same file on ONNX Runtime: same top-1, probabilities within 1e-4.
    let classifier = Classifier::load(&out, &Overrides::default()).unwrap();
    match tract_and_onnxruntime(&classifier, &out, &photo) {
        Some((ours, theirs)) => {
            let (diff, same_top1) = compare(&ours, &theirs);
            assert!(
                diff < 1e-4 && same_top1,
                "tract vs ONNX Runtime: {diff}, same top-1: {same_top1}"
            );
        }
        None => skip(
            "short_run_learns_exports_and_classifies (ONNX Runtime part)",
            "libonnxruntime.so is not unpacked",
        ),
    }

    // eval scores the same test set to the same accuracy and keeps the training section.
    let o = train(&["eval", out.to_str().unwrap(), fm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy (top-1)"));
    let again = report(&out);
    assert_eq!(again["metrics"]["accuracy"].as_f64().unwrap(), acc);
    assert!(again["training"]["history"].is_array());
}

#[test]
fn same_seed_same_model() {
    let Some(fm) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let classes = fashion_mnist_classes();
    let run = |name: &str, seed: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let out = sub.join("m.onnx");
        let mut args = fashion_args(&fm, &classes, &out);
        args.extend([
            "--limit-per-class",
            "30",
            "--epochs",
            "1",
            "--width",
            "0.25",
            "--batch-size",
            "16",
            "--seed",
            seed,
        ]);
        let o = train(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let (a, b, c) = (run("a", "5"), run("b", "5"), run("c", "6"));
    assert!(a == b, "same seed and data must give the same model");
    assert!(a != c, "another seed gives another model");
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint() {
    let Some(fm) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.onnx");
    let classes = fashion_mnist_classes();
    let mut args = fashion_args(&fm, &classes, &out);
    args.extend([
        "--limit-per-class",
        "100",
        "--epochs",
        "4",
        "--width",
        "0.25",
        "--batch-size",
        "32",
        "--seed",
        "3",
    ]);
    let mut child = train_cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = dir.path().join("r.onnx.ckpt/checkpoint.bin");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(!out.exists(), "no model from an interrupted run");

    let mut resumed = args.to_vec();
    resumed.extend(["--resume", "--keep-checkpoint"]);
    let o = train(&resumed);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming after epoch"),
        "{}",
        stderr(&o)
    );
    let r = report(&out);
    let epochs: Vec<u64> = r["training"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        epochs,
        vec![1, 2, 3, 4],
        "the resumed run completes the schedule"
    );
    assert!(r["metrics"]["accuracy"].as_f64().unwrap() > 0.5);

    // Other settings with --resume are refused rather than silently mixed.
    let mut other: Vec<&str> = resumed
        .iter()
        .map(|a| if *a == "4" { "5" } else { a })
        .collect();
    let o = train(&other);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("was made with other settings (optim.epochs: 4 then, 5 now)"),
        "{}",
        stderr(&o)
    );
    // A damaged checkpoint is named as such.
    std::fs::write(&ckpt, b"GLIMPSECKPT2 damaged").unwrap();
    other = resumed.clone();
    let o = train(&other);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a glimpse checkpoint"),
        "{}",
        stderr(&o)
    );
}

/// One quick epoch on the dataset `root` (a folder or a CSV file), writing `out`, with
/// `extra` options.
fn train_quick(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "train",
        "--data",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--width",
        "0.25",
    ];
    a.extend_from_slice(extra);
    train(&a)
}

#[test]
fn resume_refuses_other_images_and_a_damaged_checkpoint() {
    if data().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    let out = tmp.path().join("r.onnx");
    let ckpt = tmp.path().join("r.onnx.ckpt/checkpoint.bin");
    class_folder(&root, "trouser", 1, 30);
    class_folder(&root, "bag", 8, 30);
    let run = |extra: &[&str]| train_quick(&root, &out, &[&["--keep-checkpoint"], extra].concat());
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same images: resumed (nothing left to train).
    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming after epoch 1"),
        "{}",
        stderr(&o)
    );
    // One more photo in a class: the splits would reshuffle, so it is refused.
    class_folder(&root, "bag", 8, 31);
    let o = run(&["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the images changed since the checkpoint")
            && stderr(&o).contains("48 training and 6 validation images then"),
        "{}",
        stderr(&o)
    );
    // One flipped bit anywhere in the checkpoint is caught by its checksum.
    std::fs::remove_file(root.join("bag/30.png")).unwrap();
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&ckpt, &bytes).unwrap();
    let o = run(&["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the checkpoint is damaged"),
        "{}",
        stderr(&o)
    );
}

/// Writes the first `n` Fashion-MNIST test images of `label` as PNGs into `root/<class>/`.
fn class_folder(root: &Path, class: &str, label: u8, n: usize) {
    let (images, labels) = fashion_test_set();
    std::fs::create_dir_all(root.join(class)).unwrap();
    let of_class = images
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == label)
        .take(n);
    for (k, (img, _)) in of_class.enumerate() {
        img.save(root.join(class).join(format!("{k}.png"))).unwrap();
    }
}

#[test]
fn folder_datasets_and_bad_inputs() {
    if data().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    let out = tmp.path().join("f.onnx");
    let run = |extra: &[&str]| train_quick(&root, &out, extra);

    std::fs::create_dir_all(&root).unwrap();
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected one sub-folder per class, found none"),
        "{}",
        stderr(&o)
    );

    class_folder(&root, "trouser", 1, 30);
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least 2 classes"), "{}", stderr(&o));

    class_folder(&root, "bag", 8, 30);
    std::fs::write(root.join("bag/broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(root.join("bag/notes.jpg"), b"not a photo").unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("skipped 2 unreadable files")
            && err.contains("broken.png")
            && err.contains("notes.jpg"),
        "{err}"
    );
    let r = report(&out);
    assert_eq!(r["skipped"].as_array().unwrap().len(), 2);
    // 30 images a class, ~24 after the split: trained, and not flagged.
    assert!(
        r["small_classes"].as_array().unwrap().is_empty(),
        "{}",
        r["small_classes"]
    );
    assert_eq!(r["metrics"]["per_class"].as_array().unwrap().len(), 2);
    assert!(!out.with_extension("onnx.ckpt").exists());

    class_folder(&root, "sandal", 5, 3);
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("too few in: sandal (3)"),
        "{}",
        stderr(&o)
    );
    // Above the refusal limit but below 20: trained and flagged.
    class_folder(&root, "sandal", 5, 12);
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("class \"sandal\" has only 10 training images"),
        "{}",
        stderr(&o)
    );
    assert_eq!(report(&out)["small_classes"][0][0], "sandal");
    assert!(std::fs::read_to_string(tmp.path().join("f.report.md"))
        .unwrap()
        .contains("sandal: 10 images"));

    // The MobileNet-style network on the same folder, at a photo-like input size.
    std::fs::remove_dir_all(root.join("sandal")).unwrap();
    let o = run(&["--arch", "mobilenet", "--input-size", "64x64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        report(&out)["training"]["export_parity"]["max_abs_logit_diff"]
            .as_f64()
            .unwrap()
            < 1e-3
    );

    // A CSV of path,label with a missing file.
    let csv = tmp.path().join("list.csv");
    let mut rows = String::from("path,label\n");
    for class in ["trouser", "bag"] {
        for k in 0..20 {
            rows += &format!("photos/{class}/{k}.png,{class}\n");
        }
    }
    rows += "photos/bag/missing.png,bag\n";
    std::fs::write(&csv, rows).unwrap();
    let o = train_quick(&csv, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.png"), "{}", stderr(&o));
}

#[test]
fn idx_label_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 2 images of 2x2 but 3 labels.
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        [
            0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 1],
    )
    .unwrap();
    let out = d.join("x.onnx");
    let o = train(&[
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has 3 labels for 2 images"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

/// The shipped `models/fashion-mnist.onnx` meets its model card: at least 92% on the full
/// 10k test set through the runtime, the same figure its report states, and the same
/// answers on ONNX Runtime.
#[test]
fn shipped_fashion_mnist_model_meets_its_card() {
    let Some(fm) = data() else { return };
    let shipped = glimpse_e2e::root().join("models/fashion-mnist.onnx");
    let card: Value = serde_json::from_slice(
        &std::fs::read(shipped.with_file_name("fashion-mnist.report.json")).unwrap(),
    )
    .unwrap();
    // Evaluate a copy: tests never write into the repository.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("fashion-mnist.onnx");
    std::fs::copy(&shipped, &copy).unwrap();
    let o = train(&["eval", copy.to_str().unwrap(), fm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc = report(&copy)["metrics"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.92, "shipped model: test accuracy {acc} < 92%");
    assert_eq!(
        acc,
        card["metrics"]["accuracy"].as_f64().unwrap(),
        "the committed report states what the model does"
    );

    let classifier = Classifier::load(&shipped, &Overrides::default()).unwrap();
    for i in 0..8 {
        let (png, _) = fashion_png(dir.path(), i);
        let Some((ours, theirs)) = tract_and_onnxruntime(&classifier, &shipped, &png) else {
            skip(
                "shipped_fashion_mnist_model_meets_its_card (ONNX Runtime part)",
                "libonnxruntime.so is not unpacked",
            );
            return;
        };
        let (diff, same_top1) = compare(&ours, &theirs);
        assert!(
            diff < 1e-4 && same_top1,
            "image {i}: tract vs ONNX Runtime differ by {diff}, same top-1: {same_top1}"
        );
    }
}

#[test]
fn bench_times_training_steps_on_real_images() {
    let Some(fm) = data() else { return };
    let fm = fm.display().to_string();
    let o = train(&[
        "bench",
        &fm,
        "--width",
        "0.25",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--warmup",
        "1",
        "-f",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["input"], serde_json::json!([16, 1, 28, 28]));
    assert_eq!(r["classes"], 10);
    assert_eq!(r["steps"], 3);
    let steps = r["steps_per_second"].as_f64().unwrap();
    let p50 = r["step_ms"]["p50"].as_f64().unwrap();
    assert!(steps > 0.0 && p50 > 0.0, "{r}");
    // A batch larger than the dataset is refused, naming the dataset.
    let o = train(&["bench", &fm, "--batch-size", "1000000", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected at least 1000000 training images"),
        "{}",
        stderr(&o)
    );
}

/// Writes Fashion-MNIST images as `root/<split>/class<label>/<k>.png`: from the training
/// file, `per_class` of each class in `train/` (only `minority_n` of `minority`) and a
/// fifth as many in `val/`; from the test file, `test_n` of each class in `test/`.
fn imbalanced_folder(
    root: &Path,
    minority: u8,
    minority_n: usize,
    per_class: usize,
    test_n: usize,
) {
    let fm = fashion_mnist().unwrap();
    let read = |f: &str| glimpse_trainer::data::read_idx(&fm.join(f)).unwrap().1;
    let (px, labels) = (
        read("train-images-idx3-ubyte.gz"),
        read("train-labels-idx1-ubyte.gz"),
    );
    let mut taken = [0usize; 10];
    for (i, &l) in labels.iter().enumerate() {
        let n = if l == minority { minority_n } else { per_class };
        let k = taken[l as usize];
        let split = match k {
            k if k < n => "train",
            k if k < n + n.div_ceil(5) => "val",
            _ => continue,
        };
        taken[l as usize] += 1;
        let dir = root.join(split).join(format!("class{l}"));
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::GrayImage::from_raw(28, 28, px[i * 784..][..784].to_vec()).unwrap();
        img.save(dir.join(format!("{k}.png"))).unwrap();
    }
    for label in 0..10u8 {
        class_folder(&root.join("test"), &format!("class{label}"), label, test_n);
    }
}

/// The recall of `class` and the macro F1 in a model's report.
fn recall_and_macro_f1(model: &Path, class: &str) -> (f64, f64) {
    let r = report(model);
    let per_class = r["metrics"]["per_class"].as_array().unwrap();
    let c = per_class.iter().find(|c| c["class"] == class).unwrap();
    (
        c["recall"].as_f64().unwrap(),
        r["metrics"]["macro_avg"]["f1"].as_f64().unwrap(),
    )
}

#[test]
fn class_weights_and_balanced_sampling_lift_a_minority_class() {
    if data().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imbalanced");
    // Shirts (6), the class most confused with others, at 10 images; the rest at 100.
    imbalanced_folder(&root, 6, 10, 100, 200);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(format!("{name}.onnx"));
        let mut a = vec![
            "train",
            "--data",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "10",
            "--width",
            "0.5",
            "--batch-size",
            "32",
        ];
        a.extend_from_slice(extra);
        let o = train(&a);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(stdout(&o).contains("lowest recall: "), "{}", stdout(&o));
        out
    };
    let plain = recall_and_macro_f1(&run("plain", &[]), "class6");
    let weighted_model = run("weighted", &["--class-weights", "auto"]);
    let weighted = recall_and_macro_f1(&weighted_model, "class6");
    let balanced = recall_and_macro_f1(&run("balanced", &["--balanced-sampling"]), "class6");
    println!("minority recall / macro F1: plain {plain:?}, --class-weights auto {weighted:?}, --balanced-sampling {balanced:?}");
    // Measured: 0.0 without, 0.105 and 0.095 with (shirts are the class most confused
    // with others, 0.78 recall with all the data). The margin: 10 more of the 200 shirts.
    for (name, (recall, f1)) in [
        ("--class-weights auto", weighted),
        ("--balanced-sampling", balanced),
    ] {
        assert!(
            recall >= plain.0 + 0.05,
            "{name}: minority recall {recall} vs {} without",
            plain.0
        );
        assert!(
            f1 >= plain.1,
            "{name}: macro F1 {f1} vs {} without",
            plain.1
        );
    }
    // The weights are part of the saved configuration and the report (10 images against
    // 100: inverse frequency gives the shirts 10x the weight of the others).
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("weighted.config.json")).unwrap())
            .unwrap();
    let w = cfg["optim"]["class_weights"].as_array().unwrap();
    let ratio = w[6].as_f64().unwrap() / w[0].as_f64().unwrap();
    assert!((ratio - 10.0).abs() < 1e-3, "{w:?}");
    assert_eq!(
        report(&weighted_model)["training"]["config"]["optim"]["class_weights"],
        cfg["optim"]["class_weights"]
    );

    // A weights file naming a class the data does not have is refused before training.
    let file = tmp.path().join("weights.json");
    std::fs::write(&file, r#"{"class6": 5, "class42": 2}"#).unwrap();
    let out = tmp.path().join("refused.onnx");
    let o = train_quick(&root, &out, &["--class-weights", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("weights.json: unknown class \"class42\"") && e.contains("class0, class1"),
        "{e}"
    );
    assert!(!out.exists());
}

/// The reject score and whether the model rejected each image file in `dir`.
fn reject_scores(c: &Classifier, dir: &Path) -> Vec<(PathBuf, f32, bool)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let (s, _) = c.classify_bytes(&bytes, &Default::default()).unwrap();
            (p, s.reject_score.unwrap(), s.rejected)
        })
        .collect()
}

#[test]
fn none_of_the_above_rejects_unseen_kinds_of_images() {
    let Some(fm) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let unseen = tmp.path().join("unseen");
    let Some(sets) = glimpse_e2e::unseen_images(&unseen) else {
        skip(
            module_path!(),
            "darknet or scikit-image data missing (run tests/setup.sh)",
        );
        return;
    };
    let out = tmp.path().join("fm.onnx");
    let classes = fashion_mnist_classes();
    let mut args = fashion_args(&fm, &classes, &out);
    args.extend_from_slice(&[
        "--limit-per-class",
        "300",
        "--epochs",
        "4",
        "--width",
        "0.5",
    ]);
    args.extend_from_slice(&["--negatives", unseen.to_str().unwrap()]);
    let o = train(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{}", stdout(&o));
    assert!(
        stdout(&o).contains("rejection: cosine_to_class_prototypes below"),
        "{}",
        stdout(&o)
    );

    // The report: 95% of validation images accepted, about as many test images, accuracy
    // on the accepted ones no lower, and the negatives told apart.
    let r = &report(&out)["reject"];
    let share = |k: &str| r[k].as_f64().unwrap();
    assert!((0.92..0.98).contains(&share("test_accepted")), "{r}");
    assert!(share("accuracy_accepted") >= share("accuracy_all"), "{r}");
    let (auroc, auroc_p) = (
        r["negatives"]["auroc"].as_f64().unwrap(),
        r["negatives"]["auroc_max_probability"].as_f64().unwrap(),
    );
    assert!(auroc >= 0.90 && auroc > auroc_p, "{r}");
    let md = std::fs::read_to_string(tmp.path().join("fm.report.md")).unwrap();
    assert!(
        md.contains("## None of the above") && md.contains("AUROC"),
        "{md}"
    );

    // Each kind of unseen image on its own, through the runtime (issue 25's goal: 0.90).
    let c = Classifier::load(&out, &Overrides::default()).unwrap();
    let (images, _) = fashion_test_set();
    let known: Vec<f32> = images[..2000]
        .iter()
        .map(|g| {
            let rgb = image::DynamicImage::ImageLuma8(g.clone()).to_rgb8();
            c.classify(&rgb).unwrap().0.reject_score.unwrap()
        })
        .collect();
    for (name, dir) in &sets {
        let scores: Vec<f32> = reject_scores(&c, dir).iter().map(|s| s.1).collect();
        let a = glimpse_trainer::reject::auroc(&known, &scores);
        println!("AUROC against {name} ({} images): {a:.4}", scores.len());
        assert!(a >= 0.90, "AUROC against {name}: {a}");
    }

    let photos = reject_scores(&c, &sets[2].1);
    onnxruntime_gives_the_same_score(&c, &out, &photos[..4]);
    let rejected: Vec<&PathBuf> = photos.iter().filter(|p| p.2).map(|p| &p.0).collect();
    assert!(rejected.len() * 2 > photos.len(), "{photos:?}");
    the_board_says_unknown(&out, rejected[0], tmp.path());
    let frames = clothes_then_photos(&c, &rejected, tmp.path());
    // The same source for `glimpse camera` and `glimpse serve`.
    let source = [
        "--model",
        out.to_str().unwrap(),
        "--images",
        frames.to_str().unwrap(),
        "--fps",
        "20",
        "--hold-frames",
        "2",
    ];
    a_camera_goes_to_none_on_rejected_frames(&source);
    the_daemon_answers_rejected(&source, rejected[0]);
}

/// ONNX Runtime computes the same score as tract from the same input: it is plain ONNX.
fn onnxruntime_gives_the_same_score(c: &Classifier, model: &Path, photos: &[(PathBuf, f32, bool)]) {
    for (photo, score, _) in photos {
        let rgb =
            glimpse_runtime::decode(&std::fs::read(photo).unwrap(), &Default::default()).unwrap();
        let input = c.tensor(&rgb);
        let shape = input.shape().to_vec();
        let values: Vec<f32> = input
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let Some(ort) = glimpse_e2e::onnxruntime_outputs(model, &shape, values) else {
            skip(module_path!(), "libonnxruntime.so is not unpacked");
            return;
        };
        assert!(
            (ort[1][0] - score).abs() < 1e-5,
            "{}: ONNX Runtime {} vs {score}",
            photo.display(),
            ort[1][0]
        );
    }
}

/// `glimpse classify` calls the rejected photo `unknown` (label null, rejected) in JSON
/// and in the table, names a test image as before, and `glimpse info` says how the model
/// rejects.
fn the_board_says_unknown(model: &Path, rejected: &Path, tmp: &Path) {
    let j = classify_json(model, rejected);
    assert_eq!(
        (j["label"].clone(), j["rejected"].clone()),
        (Value::Null, Value::Bool(true)),
        "{j}"
    );
    let (png, _) = fashion_png(tmp, 1);
    let j = classify_json(model, &png);
    assert!(j["label"].is_string() && j.get("rejected").is_none(), "{j}");
    let m = model.to_str().unwrap();
    let o = glimpse_e2e::glimpse(&["classify", "--model", m, rejected.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("unknown (none of the model's classes)"),
        "{}",
        stdout(&o)
    );
    let o = glimpse_e2e::glimpse(&["info", "--model", m]);
    assert!(
        stdout(&o).contains("reject      cosine_to_class_prototypes below"),
        "{}",
        stdout(&o)
    );
}

/// A folder of frames: 4 of one confidently accepted test image, then 4 rejected photos.
fn clothes_then_photos(c: &Classifier, rejected: &[&PathBuf], tmp: &Path) -> PathBuf {
    let frames = tmp.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let accepted_png = (0..100)
        .map(|i| fashion_png(tmp, i).0)
        .find(|p| {
            let (s, _) = c
                .classify_bytes(&std::fs::read(p).unwrap(), &Default::default())
                .unwrap();
            !s.rejected && s.probs.iter().any(|&p| p > 0.9)
        })
        .expect("a confidently accepted test image");
    for k in 0..4 {
        std::fs::copy(&accepted_png, frames.join(format!("a{k}.png"))).unwrap();
        let photo = rejected[k % rejected.len()];
        let ext = photo.extension().unwrap().to_str().unwrap();
        std::fs::copy(photo, frames.join(format!("b{k}.{ext}"))).unwrap();
    }
    frames
}

/// `glimpse camera` on clothes then photos: the state goes from the clothes' class to
/// `none` (rejected frames count as nothing), each photo frame `label: null, rejected`.
fn a_camera_goes_to_none_on_rejected_frames(source: &[&str]) {
    let o = glimpse_e2e::glimpse(&[&["camera"], source, &["--output", "json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| &l["state"])
        .collect();
    assert_eq!(states.len(), 2, "{}", stdout(&o));
    assert!(
        states[0].is_string() && states[0] != "none" && states[1] == "none",
        "{states:?}"
    );
    let rejected_frames = lines
        .iter()
        .filter(|l| l["type"] == "frame" && l["rejected"] == true && l["label"].is_null())
        .count();
    assert_eq!(rejected_frames, 4, "{}", stdout(&o));
}

/// `glimpse serve`: `POST /v1/classify` answers the photo with `label: null, rejected`,
/// and its camera's state ends at `none` on the photos, the latest frame rejected.
fn the_daemon_answers_rejected(source: &[&str], photo: &Path) {
    use glimpse_e2e::serve::{agent, get, post, Server};
    let server = Server::start(source, &[]);
    let a = agent();
    let body = std::fs::read(photo).unwrap();
    let reply = post(
        &a,
        &server.url("/v1/classify"),
        None,
        "application/octet-stream",
        &body,
    );
    let j: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        (reply.status, j["label"].clone(), j["rejected"].clone()),
        (200, Value::Null, Value::Bool(true)),
        "{j}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let latest = loop {
        let j: Value = serde_json::from_str(&get(&a, &server.url("/v1/latest"), None).body)
            .unwrap_or_default();
        if j["frame"] == 7 || Instant::now() > deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (
            latest["label"].clone(),
            latest["rejected"].clone(),
            latest["state"].clone()
        ),
        (Value::Null, Value::Bool(true), Value::from("none")),
        "{latest}"
    );
}

#[test]
fn reject_adds_a_rejection_to_an_existing_model() {
    let Some(fm) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let unseen = tmp.path().join("unseen");
    if glimpse_e2e::unseen_images(&unseen).is_none() {
        skip(
            module_path!(),
            "darknet or scikit-image data missing (run tests/setup.sh)",
        );
        return;
    }
    // The shipped model was trained before glimpse-train added rejections.
    let shipped = glimpse_e2e::root().join("models/fashion-mnist.onnx");
    let model = tmp.path().join("fm.onnx");
    std::fs::copy(&shipped, &model).unwrap();
    let classes = fashion_mnist_classes();
    let reject = |extra: &[&str]| {
        let mut a = vec![
            "reject",
            model.to_str().unwrap(),
            fm.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    let o = reject(&["--negatives", unseen.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{}", stdout(&o));
    assert!(
        stdout(&o).contains("## None of the above"),
        "{}",
        stdout(&o)
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("fm.reject.json")).unwrap()).unwrap();
    let auroc = record["negatives"]["auroc"].as_f64().unwrap();
    assert!(auroc >= 0.90, "{record}");
    assert!(
        record["accuracy_accepted"].as_f64() >= record["accuracy_all"].as_f64(),
        "{record}"
    );

    // The class scores are the model's own: only the second output is new.
    let (a, b) = (
        Classifier::load(&shipped, &Overrides::default()).unwrap(),
        Classifier::load(&model, &Overrides::default()).unwrap(),
    );
    let (png, _) = fashion_png(tmp.path(), 3);
    let bytes = std::fs::read(&png).unwrap();
    let (sa, sb) = (
        a.classify_bytes(&bytes, &Default::default()).unwrap().0,
        b.classify_bytes(&bytes, &Default::default()).unwrap().0,
    );
    assert_eq!(sa.probs, sb.probs);
    assert!(sa.reject_score.is_none() && sb.reject_score.is_some());
    let first = b.file.meta.reject.clone().unwrap();

    // Again, stricter: the old rejection is replaced, not stacked.
    let stricter = tmp.path().join("strict.onnx");
    let o = reject(&[
        "--reject-target",
        "0.8",
        "--out",
        stricter.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Classifier::load(&stricter, &Overrides::default()).unwrap();
    assert_eq!(c.file.outputs.len(), 2, "{:?}", c.file.outputs);
    assert!(c.file.meta.reject.unwrap().threshold > first.threshold);

    // Bad input is refused before any work, naming the problem.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (extra, says) in [
        (
            vec!["--reject-target", "1.5"],
            "--reject-target: expected a share of images above 0 and below 1, got 1.5",
        ),
        (
            vec!["--negatives", empty.to_str().unwrap()],
            "empty: no readable images in it",
        ),
    ] {
        let o = reject(&extra);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
}
