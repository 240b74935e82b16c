//! `--collect`: the frames worth labelling kept by `glimpse camera` and `glimpse serve`
//! from real photos (the samples, their crops and blends), then filed through the API.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use glimpse_e2e::serve::{agent, get, metric, post, send_then_read, Server};
use glimpse_e2e::{bin, frame_of, sample, shipped_model, stderr, stdout};
use glimpse_runtime::stream::collect::{Reason, Sidecar};
use image::RgbImage;
use serde_json::Value;

/// The scenes the tests play: photos, a 50/50 blend and a crop (each at 320x240).
fn scenes() -> BTreeMap<&'static str, RgbImage> {
    let (coffee, cat) = (
        frame_of(&sample("coffee.png")),
        frame_of(&sample("chelsea.png")),
    );
    let blend = RgbImage::from_fn(320, 240, |x, y| {
        let (a, b) = (coffee.get_pixel(x, y).0, cat.get_pixel(x, y).0);
        image::Rgb([0, 1, 2].map(|i| ((a[i] as u16 + b[i] as u16) / 2) as u8))
    });
    let crop = image::imageops::crop_imm(&cat, 80, 40, 160, 160).to_image();
    let crop = image::imageops::resize(&crop, 320, 240, image::imageops::FilterType::Triangle);
    BTreeMap::from([
        ("coffee", coffee),
        ("cat", cat),
        ("blend", blend),
        ("crop", crop),
    ])
}

/// The sidecars of `dir/unlabelled`, parsed, by frame number.
fn sidecars(dir: &Path) -> BTreeMap<u64, Sidecar> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("unlabelled")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            let s: Sidecar = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let jpeg = image::open(path.with_extension("jpg")).unwrap();
            assert_eq!((jpeg.width(), jpeg.height()), (s.width, s.height));
            assert!(!s.top.is_empty() && s.top.len() <= 5, "{s:?}");
            out.insert(s.frame, s);
        }
    }
    out
}

#[test]
fn camera_keeps_unsure_frames_and_state_changes_once_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let scenes = scenes();
    // Played in name order: the same scene several times in a row, then the next.
    let play = [
        "coffee", "coffee", "coffee", "cat", "cat", "blend", "blend", "crop", "coffee",
    ];
    for (i, scene) in play.iter().enumerate() {
        scenes[scene]
            .save(frames.join(format!("{i:02}-{scene}.png")))
            .unwrap();
    }
    // An old frame of 1.5 MiB: the budget of 1 MiB removes it first.
    let out = dir.path().join("collected");
    let old = out.join("unlabelled/00000000T000000.000Z-old-0001");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(old.with_extension("jpg"), vec![0u8; 3 << 19]).unwrap();
    std::fs::write(old.with_extension("json"), "{}").unwrap();

    let run = Command::new(bin("glimpse"))
        .args(["camera", "--images"])
        .arg(&frames)
        .args(["--collect"])
        .arg(&out)
        .args(["--collect-max-mb", "1", "--hold-frames", "1", "-f", "json"])
        // Slow enough that every frame is classified, not replaced by the next.
        .args(["--fps", "3"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let lines: Vec<Value> = stdout(&run)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let probability: BTreeMap<u64, f64> = lines
        .iter()
        .filter(|l| l["type"] == "frame")
        .map(|l| {
            (
                l["frame"].as_u64().unwrap(),
                l["probability"].as_f64().unwrap(),
            )
        })
        .collect();
    let changes: Vec<u64> = lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(probability.len(), play.len(), "{}", stdout(&run));
    assert!(
        probability[&0] > 0.9 && probability[&3] < 0.6,
        "{probability:?}"
    );

    let kept = sidecars(&out);
    let model_sha = glimpse_runtime::fsutil::sha256_hex(&std::fs::read(shipped_model()).unwrap());
    for (frame, s) in &kept {
        let why = match s.reason {
            Reason::StateChange => changes.contains(frame),
            Reason::LowConfidence => probability[frame] < 0.6,
            _ => false,
        };
        assert!(why, "frame {frame} kept for {:?}: {s:?}", s.reason);
        assert_eq!(s.model_sha256, model_sha);
        assert_eq!(s.camera, "camera");
        assert!((s.top[0].probability as f64 - probability[frame]).abs() < 1e-4);
    }
    // The first coffee (the first state) and the first cat; never their copies (the
    // last coffee changes the state back, but the first is kept already), and never a
    // sure frame that changes nothing.
    assert_eq!(kept[&0].reason, Reason::StateChange, "{kept:?}");
    assert!(kept.contains_key(&3), "{kept:?}");
    for copy in [1, 2, 4, 6, 8] {
        assert!(
            !kept.contains_key(&copy),
            "frame {copy} is a copy: {kept:?}"
        );
    }
    assert!(changes.contains(&8), "{changes:?}");
    // The old frame made room; the new ones fit in the budget.
    assert!(!old.with_extension("jpg").exists() && !old.with_extension("json").exists());
    let bytes: u64 = std::fs::read_dir(out.join("unlabelled"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes <= 1 << 20, "{bytes} bytes");
    assert!(
        stderr(&run).contains(&format!("{} frames collected", kept.len())),
        "{}",
        stderr(&run)
    );

    let refused = glimpse_e2e::glimpse(&["camera", "--collect-below", "0.5", "--images", "x"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--collect"),
        "{}",
        stderr(&refused)
    );
}

/// Status, content type and body of a GET.
fn get_bytes(url: &str) -> (u16, String, Vec<u8>) {
    let mut r = agent().get(url).call().unwrap();
    let content_type = r
        .headers()
        .get("content-type")
        .map_or("", |v| v.to_str().unwrap())
        .to_string();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (r.status().as_u16(), content_type, body)
}

/// Writes each scene of `play` into the FIFO as raw RGB, one frame every `every`.
fn play_into(fifo: PathBuf, play: Vec<RgbImage>, every: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        for frame in play {
            pipe.write_all(frame.as_raw()).unwrap();
            std::thread::sleep(every);
        }
    })
}

#[test]
fn serve_collects_from_a_fifo_and_frames_are_filed_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = glimpse_e2e::mkfifo(&dir.path().join("frames.rgb"));
    let out = dir.path().join("collected");
    let server = Server::start(
        &[
            "--raw",
            fifo.to_str().unwrap(),
            "--size",
            "320x240",
            "--format",
            "rgb24",
            "--hold-frames",
            "2",
            "--collect",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let scenes = scenes();
    let play: Vec<RgbImage> = [("coffee", 4), ("cat", 4), ("blend", 3), ("crop", 3)]
        .iter()
        .flat_map(|(scene, n)| std::iter::repeat_n(scenes[scene].clone(), *n))
        .collect();
    let frames = play.len() as f64;
    play_into(fifo, play, Duration::from_millis(250))
        .join()
        .unwrap();
    let series = |m: &str| {
        let text = get(&agent(), &server.url("/metrics"), None).body;
        metric(&text, m).unwrap_or(0.0)
    };
    let t0 = Instant::now();
    while series(r#"glimpse_frames_captured_total{camera="default"}"#) < frames {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "frames not captured"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let kept = series(r#"glimpse_collected_frames_total{camera="default",outcome="kept"}"#);
    let duplicates =
        series(r#"glimpse_collected_frames_total{camera="default",outcome="duplicate"}"#);
    assert!(duplicates >= 2.0, "{duplicates} duplicates");

    // The queue over the API: what is on disk, newest first, each sure frame a state
    // change and each unsure one below 0.6.
    let list = get(&agent(), &server.url("/v1/collected"), None).json();
    let waiting = list["frames"].as_array().unwrap().clone();
    assert_eq!(waiting.len() as f64, kept, "{list}");
    assert_eq!(waiting.len(), sidecars(&out).len());
    for f in &waiting {
        let p = f["top"][0]["probability"].as_f64().unwrap();
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason == "state_change" || (reason == "low_confidence" && p < 0.6),
            "{f}"
        );
    }
    let coffees = waiting
        .iter()
        .filter(|f| f["top"][0]["label"] == "espresso");
    assert!(coffees.count() <= 1, "{list}");
    let id = |f: &Value| f["id"].as_str().unwrap().to_string();
    let (first, last) = (id(&waiting[0]), id(&waiting[waiting.len() - 1]));
    assert!(first > last, "newest first: {list}");

    let (status, content_type, jpeg) =
        get_bytes(&server.url(&format!("/v1/collected/{first}.jpg")));
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();

    // Filing moves the file; discarding removes it.
    let r = post(
        &agent(),
        &server.url(&format!("/v1/collected/{first}/label")),
        None,
        "application/json",
        br#"{"label": "tabby, tabby cat"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let filed = out
        .join("labelled/tabby, tabby cat")
        .join(format!("{first}.jpg"));
    assert!(filed.is_file() && filed.with_extension("json").is_file());
    assert!(!out.join("unlabelled").join(format!("{first}.jpg")).exists());
    let discard = |id: &str| {
        let url = server.url(&format!("/v1/collected/{id}/discard"));
        post(&agent(), &url, None, "application/json", b"")
    };
    let r = discard(&last);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!out.join("unlabelled").join(format!("{last}.jpg")).exists());
    let list = get(&agent(), &server.url("/v1/collected"), None).json();
    assert_eq!(list["labels"], serde_json::json!(["tabby, tabby cat"]));
    let again = discard(&last);
    assert_eq!(again.status, 404, "{}", again.body);

    // Paths are refused, however they are spelled.
    let host = format!("Host: {}\r\n", server.addr);
    for target in [
        "/v1/collected/../../etc/passwd.jpg",
        "/v1/collected/..%2F..%2Fetc%2Fpasswd.jpg",
        "/v1/collected/%2e%2e%2f%2e%2e%2fetc%2fpasswd.jpg",
        "/v1/collected/..%252F..%252Fetc%252Fpasswd.jpg",
        "/v1/collected/%FF.jpg",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let (status, body) = send_then_read(server.addr, &head, b"");
        assert_eq!(status, 400, "{target}: {body}");
    }
    let body = br#"{"label": "x"}"#;
    for target in [
        "/v1/collected/../../etc/passwd/label",
        "/v1/collected/..%2F..%2Fetc%2Fpasswd/label",
    ] {
        let head = format!(
            "POST {target} HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (status, text) = send_then_read(server.addr, &head, body);
        assert_eq!(status, 400, "{target}: {text}");
    }
    if let Some(f) = waiting.get(1).filter(|_| waiting.len() > 2) {
        let r = post(
            &agent(),
            &server.url(&format!("/v1/collected/{}/label", id(f))),
            None,
            "application/json",
            br#"{"label": "../cat"}"#,
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["kind"], "bad_label");
    }

    // The labelled dataset, as tar reads it.
    let (status, content_type, bytes) = get_bytes(&server.url("/v1/dataset.tar"));
    assert_eq!((status, content_type.as_str()), (200, "application/x-tar"));
    let file = dir.path().join("dataset.tar");
    std::fs::write(&file, &bytes).unwrap();
    let listing = Command::new("tar").arg("-tf").arg(&file).output().unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert_eq!(
        stdout(&listing).trim(),
        format!("tabby, tabby cat/{first}.jpg")
    );
}

/// Eight different views of a scene, each scaled back to 320x240: windows of 60% of it
/// at its four corners, and of 75% at the same corners, mirrored.
fn views(scene: &RgbImage) -> Vec<RgbImage> {
    let (w, h) = scene.dimensions();
    let mut out = Vec::new();
    for (scale, mirrored) in [(0.6, false), (0.75, true)] {
        let (cw, ch) = ((w as f32 * scale) as u32, (h as f32 * scale) as u32);
        for (x, y) in [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)] {
            let window = image::imageops::crop_imm(scene, x, y, cw, ch).to_image();
            let window = if mirrored {
                image::imageops::flip_horizontal(&window)
            } else {
                window
            };
            let filter = image::imageops::FilterType::Triangle;
            out.push(image::imageops::resize(&window, 320, 240, filter));
        }
    }
    out
}

#[test]
fn the_whole_loop_collect_label_train_push_and_the_camera_runs_the_new_model() {
    const TOKEN: &str = "loop-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let fifo = glimpse_e2e::mkfifo(&dir.path().join("frames.rgb"));
    let out = dir.path().join("collected");
    let model = dir.path().join("model.onnx");
    std::fs::copy(shipped_model(), &model).unwrap();
    let server = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--raw",
            fifo.to_str().unwrap(),
            "--size",
            "320x240",
            "--format",
            "rgb24",
            "--collect",
            out.to_str().unwrap(),
            // Everything that is not a near-duplicate: this test labels by scene.
            "--collect-below",
            "1",
            "--collect-max-per-minute",
            "1000",
        ],
        &[("GLIMPSE_TOKEN", TOKEN)],
    );
    // 1. The camera sees eight views of the cat, then eight of the coffee.
    let scenes = scenes();
    let mut play = views(&scenes["cat"]);
    play.extend(views(&scenes["coffee"]));
    let writer = play_into(fifo, play, Duration::from_millis(300));
    let get_t = |path: &str| get(&agent(), &server.url(path), Some(TOKEN));
    let t0 = Instant::now();
    // The last frame's result is stored after its offer to the collector, and frames are
    // classified in order: once it is the latest, every frame has been filed or passed over
    // (the `captured` count alone raced with the classification of the last frames).
    while get_t("/v1/cameras/default/latest").json()["frame"] != 15 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the last frame was not classified: {}",
            get_t("/v1/cameras").json()["cameras"][0]["frames"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. A person files each collected frame under what it shows (frames 0-7: the cat).
    let waiting = get_t("/v1/collected").json()["frames"].clone();
    let mut filed = BTreeMap::<&str, usize>::new();
    for f in waiting.as_array().unwrap() {
        let label = if f["frame"].as_u64().unwrap() < 8 {
            "cat"
        } else {
            "cup"
        };
        let url = server.url(&format!(
            "/v1/collected/{}/label",
            f["id"].as_str().unwrap()
        ));
        let body = format!(r#"{{"label": "{label}"}}"#);
        let r = post(
            &agent(),
            &url,
            Some(TOKEN),
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        *filed.entry(label).or_default() += 1;
    }
    assert!(filed.values().all(|&n| n >= 5), "{filed:?}");

    // 3. A head on the labelled frames, on the host.
    let new_model = dir.path().join("cat-or-cup.onnx");
    let trained = glimpse_e2e::glimpse_train(&[
        "train",
        "--data",
        out.join("labelled").to_str().unwrap(),
        "--backbone",
        "efficientnet-lite0",
        "--out",
        new_model.to_str().unwrap(),
        "--feature-cache",
        dir.path().join("features").to_str().unwrap(),
        "--min-per-class",
        "3",
        "--epochs",
        "15",
    ]);
    assert!(
        trained.status.success(),
        "{}{}",
        stdout(&trained),
        stderr(&trained)
    );

    // 4. Pushed to the board: the camera's next frames run on it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let pushed = Command::new(bin("glimpse"))
        .args(["push", new_model.to_str().unwrap(), "--to", &server.url("")])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let sha = glimpse_runtime::fsutil::sha256_hex(&std::fs::read(&new_model).unwrap());
    writer.join().unwrap();
    let fifo = dir.path().join("frames.rgb");
    let writer = play_into(fifo, views(&scenes["cat"]), Duration::from_millis(300));
    writer.join().unwrap();
    let t0 = Instant::now();
    loop {
        let latest = get_t("/v1/cameras/default/latest").json();
        if latest["model_sha256"] == sha.as_str() {
            assert_eq!(latest["label"], "cat", "{latest}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still {latest}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get_t("/v1/model").json()["classes"], 2);
}
