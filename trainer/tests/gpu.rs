//! `glimpse-train --device gpu` end to end on a real Vulkan adapter (Mesa's lavapipe on a
//! CPU-only machine): the same seed trains a model of the same quality as on the CPU, a
//! head trains there too, and with no adapter the run is refused saying how to fall back.

use std::path::Path;
use std::process::{Command, Output};

use glimpse_e2e::{bin, fashion_mnist_classes, fashion_mnist_or_skip, root, skip, stderr};
use serde_json::Value;

/// `glimpse-train ARGS` with a valid runtime folder (wgpu's Vulkan probe warns per adapter
/// without one) and `env` set.
fn train_on(args: &[&str], env: &[(&str, &str)], runtime_dir: &Path) -> Output {
    Command::new(bin("glimpse-train"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .envs(env.iter().copied())
        .output()
        .expect("glimpse-train runs")
}

/// The test's name when the GPU path cannot be tested here, after saying why (loudly).
fn gpu_or_skip(test: &str) -> bool {
    if !cfg!(feature = "gpu") {
        skip(
            test,
            "glimpse-train was built without the `gpu` feature (tests/run.sh enables it)",
        );
        return false;
    }
    let probe = Command::new("bash")
        .args(["-c", ". tests/prereqs.sh && vulkan_usable"])
        .current_dir(root())
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip(
            test,
            "no Vulkan adapter (Debian's mesa-vulkan-drivers and libvulkan1)",
        );
        return false;
    }
    true
}

fn report(model: &Path) -> Value {
    let p = model.with_extension("report.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn accuracy(model: &Path) -> f64 {
    report(model)["metrics"]["accuracy"].as_f64().unwrap()
}

#[test]
fn gpu_training_matches_the_cpu_and_a_missing_adapter_is_refused() {
    let test = "gpu::gpu_training_matches_the_cpu_and_a_missing_adapter_is_refused";
    let Some(fm) = fashion_mnist_or_skip(test) else {
        return;
    };
    if !gpu_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let classes = fashion_mnist_classes();
    let run = |device: &str, seed: &str, env: &[(&str, &str)]| {
        let out = dir.path().join(format!("{device}{seed}.onnx"));
        let args = [
            "train",
            "--data",
            fm.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit-per-class",
            "100",
            "--epochs",
            "2",
            "--width",
            "0.5",
            "--batch-size",
            "32",
            "--reject-target",
            "0",
            "--seed",
            seed,
            "--device",
            device,
        ];
        (train_on(&args, env, dir.path()), out)
    };

    // No adapter: refused before any work, saying how to fall back, and nothing written.
    // (Both of Mesa's software adapters hidden: Vulkan's lavapipe and OpenGL's llvmpipe.)
    let none = [
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json"),
    ];
    let (o, out) = run("gpu", "7", &none);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no GPU adapter found"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--device cpu"), "{}", stderr(&o));
    assert!(!out.exists() && !out.with_extension("report.json").exists());

    let trained = |device: &str, seed: &str| {
        let (o, out) = run(device, seed, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let (gpu, cpu) = (trained("gpu", "7"), trained("cpu", "7"));
    // Where it trained is in the report (JSON and Markdown) and the saved configuration.
    let r = report(&gpu);
    let adapter = r["training"]["device"].as_str().unwrap();
    assert!(adapter.starts_with("gpu: "), "{adapter}");
    assert_eq!(r["training"]["config"]["optim"]["device"], "gpu");
    let md = std::fs::read_to_string(gpu.with_extension("report.md")).unwrap();
    assert!(md.contains(&format!("on {adapter}.")), "{md}");
    let config: Value =
        serde_json::from_slice(&std::fs::read(gpu.with_extension("config.json")).unwrap()).unwrap();
    assert_eq!(config["optim"]["device"], "gpu");
    assert_eq!(report(&cpu)["training"]["device"], "cpu");
    // The same seeds give the same quality, not the same bits (dropout draws from each
    // backend's own generator). 2 epochs on 1,000 images reach 69-75% on the 10,000 test
    // images on either device (seeds 7-10 measured), so two seeds are averaged.
    let (gpu8, cpu8) = (trained("gpu", "8"), trained("cpu", "8"));
    let acc = |a: &Path, b: &Path| (accuracy(a) + accuracy(b)) / 2.0;
    let (g, c) = (acc(&gpu, &gpu8), acc(&cpu, &cpu8));
    eprintln!(
        "test accuracy: {:.2}% on {adapter}, {:.2}% on the CPU",
        g * 100.0,
        c * 100.0
    );
    assert!(c > 0.6 && g > 0.6, "both learn: gpu {g}, cpu {c}");
    assert!((g - c).abs() < 0.03, "same quality: gpu {g}, cpu {c}");
}

#[test]
fn a_head_and_the_training_bench_run_on_the_gpu() {
    let test = "gpu::a_head_and_the_training_bench_run_on_the_gpu";
    let Some(fm) = fashion_mnist_or_skip(test) else {
        return;
    };
    if !gpu_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (classes, out) = (fashion_mnist_classes(), dir.path().join("head.onnx"));
    let cache = dir.path().join("features");
    // A head on the shipped Fashion-MNIST model's features (a backbone that knows them).
    let backbone = root().join("models/fashion-mnist.onnx");
    let o = train_on(
        &[
            "train",
            "--data",
            fm.to_str().unwrap(),
            "--class-names",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            "--feature-cache",
            cache.to_str().unwrap(),
            "--limit-per-class",
            "50",
            "--epochs",
            "5",
            "--reject-target",
            "0",
            "--device",
            "gpu",
        ],
        &[],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&out);
    assert!(
        r["training"]["device"]
            .as_str()
            .unwrap()
            .starts_with("gpu: "),
        "{r}"
    );
    let acc = accuracy(&out);
    assert!(acc > 0.8, "a head on a Fashion-MNIST backbone: {acc}");

    let o = train_on(
        &[
            "bench",
            fm.to_str().unwrap(),
            "--width",
            "0.25",
            "--batch-size",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
            "-f",
            "json",
            "--device",
            "gpu",
        ],
        &[],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let b: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(b["device"].as_str().unwrap().starts_with("gpu: "), "{b}");
    assert!(b["step_ms"]["p50"].as_f64().unwrap() > 0.0, "{b}");
}
