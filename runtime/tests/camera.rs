//! `glimpse camera` without a camera: pixel-format conversion checked on real photos, the
//! raw-frame stdin path end to end with the shipped model, image folders with --save, bad
//! streams, video files decoded by real ffmpeg, and a missing camera waited for until
//! SIGTERM ends the run cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_e2e::video::clip;
use glimpse_e2e::{bin, camera_with_stdin, darknet_photos, root, skimage_photos, skip, text};
use glimpse_runtime::stream::frame::{
    i420_to_rgb, nv12_to_rgb, rgb_to_i420, rgb_to_nv12, rgb_to_yuyv, scalar, yuyv_to_rgb,
};
use image::RgbImage;
use serde_json::Value;

fn glimpse() -> Command {
    Command::new(bin("glimpse"))
}

/// Real photos at 320x240 (the size a Pi camera stream is often read at).
fn photos(test: &str) -> Option<Vec<(String, RgbImage)>> {
    let (Some(darknet), Some(skimage)) = (darknet_photos(), skimage_photos()) else {
        skip(test, "darknet and scikit-image photos are not installed");
        return None;
    };
    let files = [
        darknet.join("dog.jpg"),
        darknet.join("eagle.jpg"),
        darknet.join("giraffe.jpg"),
        skimage.join("coffee.png"),
        skimage.join("chelsea.png"),
        skimage.join("rocket.jpg"),
    ];
    Some(
        files
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, glimpse_e2e::frame_of(p))
            })
            .collect(),
    )
}

/// The textbook BT.601 limited-range formula in floating point: the reference our
/// fixed-point conversion is checked against.
fn reference(y: u8, u: u8, v: u8) -> [f64; 3] {
    let (y, u, v) = (y as f64 - 16.0, u as f64 - 128.0, v as f64 - 128.0);
    [
        1.164 * y + 1.596 * v,
        1.164 * y - 0.392 * u - 0.813 * v,
        1.164 * y + 2.017 * u,
    ]
    .map(|c| c.clamp(0.0, 255.0))
}

#[test]
fn yuyv_and_nv12_conversion_match_the_reference_on_real_photos() {
    let Some(photos) = photos("yuyv_and_nv12_conversion_match_the_reference_on_real_photos") else {
        return;
    };
    for (name, img) in &photos {
        let (w, h) = img.dimensions();
        let yuyv = rgb_to_yuyv(img);
        let nv12 = rgb_to_nv12(img);
        let from_yuyv = yuyv_to_rgb(&yuyv, w, h);
        let from_nv12 = nv12_to_rgb(&nv12, w, h);
        // 1. Against the floating-point formula on the same YUV bytes: rounding only.
        let mut worst = 0f64;
        for y in 0..h as usize {
            for x in 0..w as usize {
                let p = (y * w as usize + x) * 2;
                let pair = p - (x % 2) * 2;
                let r = reference(yuyv[p], yuyv[pair + 1], yuyv[pair + 3]);
                let ours = from_yuyv.get_pixel(x as u32, y as u32).0;
                for c in 0..3 {
                    worst = worst.max((ours[c] as f64 - r[c]).abs());
                }
                let cw = (w as usize).div_ceil(2);
                let uv = w as usize * h as usize + ((y / 2) * cw + x / 2) * 2;
                let r = reference(nv12[y * w as usize + x], nv12[uv], nv12[uv + 1]);
                let ours = from_nv12.get_pixel(x as u32, y as u32).0;
                for c in 0..3 {
                    worst = worst.max((ours[c] as f64 - r[c]).abs());
                }
            }
        }
        assert!(
            worst <= 1.5,
            "{name}: fixed point vs reference differ by {worst}"
        );
        // I420 carries NV12's samples in other planes: the same pixels. And the SIMD
        // conversions stay within a level of the scalar code they replaced.
        let from_i420 = i420_to_rgb(&rgb_to_i420(img), w, h);
        assert_eq!(from_i420, from_nv12, "{name}: I420 and NV12");
        for (fmt, simd, old) in [
            ("yuyv", &from_yuyv, scalar::yuyv_to_rgb(&yuyv, w, h)),
            ("nv12", &from_nv12, scalar::nv12_to_rgb(&nv12, w, h)),
        ] {
            let off = simd
                .as_raw()
                .iter()
                .zip(old.as_raw())
                .map(|(a, b)| a.abs_diff(*b));
            assert!(off.max().unwrap() <= 1, "{name} {fmt}: SIMD vs scalar");
        }
        // 2. Round trip RGB -> YUV -> RGB: chroma subsampling blurs colour edges, so the
        // bound is on the mean (the README states these figures).
        for (fmt, back, bound) in [("yuyv", &from_yuyv, 4.0), ("nv12", &from_nv12, 6.0)] {
            let total: f64 = img
                .as_raw()
                .iter()
                .zip(back.as_raw())
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .sum();
            let mean = total / img.as_raw().len() as f64;
            println!("{name} {fmt}: mean |error| {mean:.2} levels");
            assert!(mean <= bound, "{name} via {fmt}: mean error {mean}");
        }
    }
}

/// The frames as `glimpse camera -f json` prints them, and the events.
fn records(stdout: &str) -> (Vec<Value>, Vec<Value>) {
    let all: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (frames, events) = all.into_iter().partition(|v| v["type"] == "frame");
    (frames, events)
}

#[test]
fn raw_yuyv_frames_on_stdin_are_classified_with_debounced_events() {
    let Some(photos) = photos("raw_yuyv_frames_on_stdin_are_classified_with_debounced_events")
    else {
        return;
    };
    // What `glimpse classify` says of each photo at this size: the reference labels.
    let dir = tempfile::tempdir().unwrap();
    let picks = [&photos[0], &photos[3]]; // dog.jpg, coffee.png
    let mut expected = Vec::new();
    for (name, img) in picks {
        let p = dir.path().join(format!("{name}.png"));
        img.save(&p).unwrap();
        let o = glimpse()
            .args(["classify", "-f", "json", p.to_str().unwrap()])
            .output()
            .unwrap();
        let v: Value = serde_json::from_str(text(&o.stdout).lines().next().unwrap()).unwrap();
        expected.push(v["label"].as_str().unwrap().to_string());
    }
    // 6 frames of the dog, then 6 of the coffee, as ffmpeg would pipe them.
    let mut stream = Vec::new();
    for (_, img) in picks {
        for _ in 0..6 {
            stream.extend_from_slice(&rgb_to_yuyv(img));
        }
    }
    let o = camera_with_stdin(
        &[
            "--raw",
            "-",
            "--size",
            "320x240",
            "--format",
            "yuyv",
            "--fps",
            "15",
            "-f",
            "json",
            "--threshold",
            "0.3",
            "--hold-frames",
            "2",
        ],
        &stream,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (frames, events) = records(&text(&o.stdout));
    let summary = text(&o.stderr);
    assert!(summary.contains("12 frames captured"), "{summary}");
    assert!(frames.len() >= 6, "{} frames classified", frames.len());
    for f in &frames {
        assert!(f["latency_ms"].as_f64().unwrap() > 0.0, "{f}");
        let seq = f["frame"].as_u64().unwrap();
        let want = &expected[(seq / 6) as usize];
        assert_eq!(f["label"].as_str().unwrap(), want, "frame {seq}: {f}");
    }
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [expected[0].as_str(), expected[1].as_str()],
        "{events:?}"
    );
    assert_eq!(events[1]["previous"], expected[0].as_str());
}

#[test]
fn an_image_folder_plays_as_video_and_frames_are_saved() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved");
    let o = glimpse()
        .args(["camera", "--images"])
        .arg(root().join("samples"))
        .args(["--fps", "5", "--frames", "3", "--save"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("frame")).count(),
        3,
        "{out}"
    );
    assert!(out.contains("espresso"), "{out}");
    let mut names: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[2].starts_with("000002-espresso"), "{names:?}");
}

#[test]
fn bad_streams_are_reported_clearly() {
    let cases: [(&[&str], &[u8], &str); 3] = [
        (
            &["--raw", "-", "--format", "yuyv"],
            b"",
            "raw frames need --size",
        ),
        (
            &["--raw", "-", "--size", "320x240", "--format", "mjpeg"],
            b"",
            "no fixed size",
        ),
        (
            &["--raw", "-", "--size", "321x240", "--format", "yuyv"],
            b"",
            "even width",
        ),
    ];
    for (args, input, message) in cases {
        let o = camera_with_stdin(args, input);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            text(&o.stderr).contains(message),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    // A stream that stops inside a frame: the whole frames are classified, the rest is
    // reported, and the run ends normally.
    let mut stream = vec![128u8; 64 * 48 * 2 * 2];
    stream.truncate(64 * 48 * 2 + 100);
    let o = camera_with_stdin(
        &["--raw", "-", "--size", "64x48", "--format", "yuyv"],
        &stream,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(
        e.contains("ended inside a frame (100 of 6144 bytes)"),
        "{e}"
    );
    assert!(e.contains("1 frames captured, 1 classified"), "{e}");
}

#[test]
fn a_missing_camera_is_waited_for_and_sigterm_ends_the_run() {
    let mut child = glimpse()
        .args(["camera", "--device", "/dev/video-glimpse-test-missing"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if cfg!(feature = "camera") {
        // It keeps retrying (a camera plugged in later is picked up)...
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "still waiting for the camera"
        );
        let t0 = Instant::now();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let e = text(&o.stderr);
        // ... and SIGTERM ends it promptly and cleanly.
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!(o.status.code(), Some(0), "{e}");
        assert!(
            e.contains("/dev/video-glimpse-test-missing") && e.contains("retrying in"),
            "{e}"
        );
        assert!(e.contains("stopped by a signal"), "{e}");
    } else {
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            text(&o.stderr).contains("without camera support"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn mjpeg_frames_decode_like_the_jpeg_they_are() {
    let jpeg = std::fs::read(root().join("samples/rocket.jpg")).unwrap();
    let frame = glimpse_runtime::stream::Frame::new(
        0,
        (0, 0),
        glimpse_runtime::stream::PixelFormat::Mjpeg,
        jpeg.clone(),
    );
    let limits = glimpse_runtime::Limits::default();
    let rgb = frame.to_rgb(&limits).unwrap();
    assert_eq!(rgb, glimpse_runtime::decode(&jpeg, &limits).unwrap());
    // A corrupt frame (a camera glitch) is an error for that frame, not a crash.
    let broken = glimpse_runtime::stream::Frame {
        data: jpeg[..jpeg.len() / 2].to_vec(),
        ..frame
    };
    assert!(broken.to_rgb(&limits).is_err());
}

/// What the shipped model calls Chelsea, the sample cat, at 320x240.
const CAT: [&str; 3] = ["tabby, tabby cat", "tiger cat", "Egyptian cat"];

/// `glimpse camera -f json` on `args`: the frames, the events and the summary line.
fn camera_json(args: &[&str]) -> (Vec<Value>, Vec<Value>, String) {
    let o = glimpse()
        .arg("camera")
        .args(args)
        .args(["-f", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    let (frames, events) = records(&text(&o.stdout));
    (frames, events, text(&o.stderr))
}

/// Each frame's label is the scene's: the coffee for the first `coffee` frames of every
/// `period`, the cat after.
fn assert_scenes(frames: &[Value], coffee: u64, period: u64) {
    for f in frames {
        let seq = f["frame"].as_u64().unwrap();
        let label = f["label"].as_str().unwrap();
        if seq % period < coffee {
            assert_eq!(label, "espresso", "frame {seq}: {f}");
        } else {
            assert!(CAT.contains(&label), "frame {seq}: {f}");
        }
    }
}

/// Two state changes: to `first` (the coffee's scene), then to the cat.
fn assert_states_then_cat(events: &[Value], first: &str) {
    let states: Vec<&str> = events
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{events:?}");
    assert_eq!(states[0], first);
    assert!(CAT.contains(&states[1]), "{events:?}");
}

#[test]
fn a_video_file_plays_at_its_own_rate_or_as_fast_as_possible() {
    let Some(ffmpeg) = glimpse_e2e::ffmpeg() else {
        skip("camera: video file", "Debian's ffmpeg is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 2 s of the coffee, then 2 s of the cat, at 5 fps: 20 frames.
    let video = clip(
        &ffmpeg,
        &dir.path().join("clip.mkv"),
        &[("coffee.png", 2), ("chelsea.png", 2)],
        5,
    );
    let video = video.to_str().unwrap();
    let t0 = Instant::now();
    let (frames, events, summary) = camera_json(&["--source", video, "--threshold", "0.2"]);
    // Played at the clip's own rate, as a camera would deliver it.
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert!(summary.contains("20 frames captured"), "{summary}");
    assert!(frames.len() >= 10, "{} frames classified", frames.len());
    assert_scenes(&frames, 10, 20);
    assert_states_then_cat(&events, "espresso");

    // As fast as possible: every frame classified, none dropped, in order.
    let (frames, _, summary) = camera_json(&["--source", video, "--as-fast-as-possible"]);
    assert!(
        summary.contains("20 frames captured, 20 classified"),
        "{summary}"
    );
    assert!(summary.contains(" 0 dropped"), "{summary}");
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert_scenes(&frames, 10, 20);

    // A label's own threshold: the coffee (77% espresso) is not enough for 0.9.
    let strict = [
        "--source",
        video,
        "--as-fast-as-possible",
        "--threshold",
        "0.2",
    ];
    let (_, events, _) =
        camera_json(&[&strict[..], &["--label-threshold", "espresso=0.9"]].concat());
    assert_states_then_cat(&events, "none");

    // Looping: the clip starts over, the coffee comes back after the cat.
    let looped = [
        "--source",
        video,
        "--loop",
        "--as-fast-as-possible",
        "--frames",
        "30",
    ];
    let (frames, _, summary) = camera_json(&looped);
    assert_eq!(frames.len(), 30, "{summary}");
    assert_scenes(&frames, 10, 20);
    assert_eq!(frames[25]["label"], "espresso");
}

#[test]
fn bad_sources_are_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mkv");
    std::fs::write(&video, b"not a video").unwrap();
    let video = video.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--images", "samples", "--label-threshold", "espreso=0.9"],
            r#"--watch or --label-threshold: the model has no label "espreso""#,
        ),
        (
            &["--images", "samples", "--label-threshold", "espresso=1.5"],
            "expected a probability from 0 to 1",
        ),
        (
            &["--source", "ftp://cam/live"],
            r#"ftp://cam/live: unknown scheme "ftp": expected rtsp"#,
        ),
        (
            &["--source", "/nonexistent/clip.mkv"],
            "/nonexistent/clip.mkv: no such file",
        ),
        (
            &["--source", "rtsp://127.0.0.1:9/x", "--format", "yuyv"],
            "--format is for cameras and raw frames",
        ),
        (
            &["--source", "rtsp://127.0.0.1:9/x", "--loop"],
            "--loop is for a folder of images or a video file",
        ),
        (
            &["--source", "rtsp://127.0.0.1:9/x", "--stall-timeout", "0"],
            "expected a positive number of seconds",
        ),
    ];
    for (args, message) in cases {
        let o = glimpse()
            .arg("camera")
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(message),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    // The daemon too, from its config file's `thresholds` table.
    let config = dir.path().join("glimpse.toml");
    std::fs::write(
        &config,
        "images = \"samples\"\nthresholds = { espresso = 0.9, espreso = 0.9 }\n",
    )
    .unwrap();
    let o = glimpse()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(r#"the model has no label "espreso""#),
        "{}",
        text(&o.stderr)
    );
    // Without ffmpeg on PATH: what to install.
    let o = glimpse()
        .args(["camera", "--source", video])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("apt install ffmpeg"),
        "{}",
        text(&o.stderr)
    );
    if glimpse_e2e::ffmpeg().is_none() {
        return skip("camera: a broken video", "Debian's ffmpeg is not installed");
    }
    // A file ffmpeg cannot read: its name and ffmpeg's reason, and the run ends.
    let o = glimpse()
        .args(["camera", "--source", video])
        .output()
        .unwrap();
    let e = text(&o.stderr);
    assert!(
        e.contains(&format!("{video} (ffmpeg): ffmpeg exit status: 1")),
        "{e}"
    );
    assert!(e.contains("Invalid data found"), "{e}");
    assert!(e.contains("0 frames captured"), "{e}");
}
