//! Soak test (off by default; bounded by `GLIMPSE_SOAK_MINUTES`, default 10, at least 2): `glimpse
//! serve` with the shipped model under a mix of good and bad requests from two clients
//! while a raw YUYV frame stream feeds its camera loop. RSS must stay flat, file
//! descriptors and threads must not leak, and no good request may fail.
//!
//! ```sh
//! GLIMPSE_SOAK_MINUTES=10 cargo test --release -p glimpse-runtime --test soak -- --ignored --nocapture
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_e2e::corpus::{self, Expect, Kind};
use glimpse_e2e::root;
use glimpse_e2e::serve::{agent, get, post, Server};

/// `(VmRSS in KiB, open fds, threads)` of a process.
fn usage(pid: u32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (field("VmRSS:"), fds, field("Threads:") as usize)
}

#[derive(Default)]
struct Tally {
    good: AtomicU64,
    good_failed: AtomicU64,
    bad: AtomicU64,
    bad_wrong: AtomicU64,
    raw: AtomicU64,
}

#[test]
#[ignore = "a soak test of several minutes: run it with --ignored (see the module doc)"]
fn serve_stays_flat_under_mixed_load_and_a_frame_stream() {
    let minutes: f64 = std::env::var("GLIMPSE_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10.0_f64)
        .max(2.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let dir = tempfile::tempdir().unwrap();

    // The frame stream: 320x240 YUYV frames of the sample photos, written into a FIFO at
    // about 10 frames per second for as long as the test runs.
    let fifo = glimpse_e2e::mkfifo(&dir.path().join("frames.yuyv"));
    let frames: Vec<Vec<u8>> = ["coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]
        .iter()
        .map(|n| {
            let img = glimpse_e2e::frame_of(&root().join("samples").join(n));
            glimpse_runtime::stream::frame::rgb_to_yuyv(&img)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, stop) = (fifo.clone(), stop.clone());
        std::thread::spawn(move || {
            // Opening blocks until the server opens the other end.
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if f.write_all(&frames[(i / 20) % frames.len()]).is_err() {
                    break;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            i
        })
    };
    let model = root().join("models/efficientnet-lite0.onnx");
    let server = Server::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--raw",
            fifo.to_str().unwrap(),
            "--size",
            "320x240",
            "--format",
            "yuyv",
        ],
        &[("RUST_LOG", "warn")],
    );
    let pid = server.child.id();

    let images = corpus::recipes()
        .into_iter()
        .filter(|c| c.kind == Kind::Image)
        .collect::<Vec<_>>();
    let raw_requests = corpus::recipes()
        .into_iter()
        .filter(|c| matches!(c.kind, Kind::Http(_)))
        .collect::<Vec<_>>();
    let good: Vec<(Vec<u8>, &str)> = vec![
        (
            std::fs::read(root().join("samples/coffee.png")).unwrap(),
            "espresso",
        ),
        (
            std::fs::read(root().join("samples/rocket.jpg")).unwrap(),
            "",
        ),
    ];
    let tally = Arc::new(Tally::default());

    let a = agent();
    let r = post(
        &a,
        &server.url("/v1/classify"),
        None,
        "image/png",
        &good[0].0,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t0 = Instant::now();
    let mut samples = vec![(0.0, usage(pid))];

    std::thread::scope(|s| {
        for client in 0..2 {
            let (tally, images, raw_requests, good, server) =
                (&tally, &images, &raw_requests, &good, &server);
            s.spawn(move || {
                let a = agent();
                let mut i = client;
                while t0.elapsed() < duration {
                    i += 1;
                    match i % 4 {
                        // Half the requests are good photos.
                        0 | 2 => {
                            let (bytes, label) = &good[i / 4 % good.len()];
                            let r = post(
                                &a,
                                &server.url("/v1/classify"),
                                None,
                                "application/octet-stream",
                                bytes,
                            );
                            tally.good.fetch_add(1, Ordering::Relaxed);
                            if r.status != 200 || (!label.is_empty() && !r.body.contains(label)) {
                                tally.good_failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("good request failed: {} {}", r.status, r.body);
                            }
                        }
                        // A bad image from the corpus.
                        1 => {
                            let c = &images[i / 4 % images.len()];
                            let r = post(
                                &a,
                                &server.url("/v1/classify"),
                                None,
                                "application/octet-stream",
                                &c.bytes,
                            );
                            tally.bad.fetch_add(1, Ordering::Relaxed);
                            let right = match c.expect {
                                Expect::Ok => r.status == 200,
                                Expect::Err(_) => (400..500).contains(&r.status),
                            };
                            if !right {
                                tally.bad_wrong.fetch_add(1, Ordering::Relaxed);
                                eprintln!("{}: {} {}", c.name, r.status, r.body);
                            }
                        }
                        // A malformed raw request, or the latest camera result.
                        _ => {
                            if i % 8 == 3 {
                                let c = &raw_requests[i / 8 % raw_requests.len()];
                                let mut sock = TcpStream::connect(server.addr).unwrap();
                                sock.set_read_timeout(Some(Duration::from_secs(30)))
                                    .unwrap();
                                let _ = sock.write_all(&c.bytes);
                                let _ = sock.shutdown(std::net::Shutdown::Write);
                                let mut answer = Vec::new();
                                let _ = sock.read_to_end(&mut answer);
                                tally.raw.fetch_add(1, Ordering::Relaxed);
                            } else {
                                let r = get(&a, &server.url("/v1/latest"), None);
                                assert!(r.status == 200 || r.status == 503, "{}", r.body);
                            }
                        }
                    }
                }
            });
        }
        // Samples every 30 s while the clients run.
        while t0.elapsed() < duration {
            std::thread::sleep(Duration::from_secs(30).min(duration.saturating_sub(t0.elapsed())));
            samples.push((t0.elapsed().as_secs_f64(), usage(pid)));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let end = usage(pid);
    // The baseline is the first sample a minute into the load: by then the allocator's
    // arenas, the blocking pool's threads and tract's scratch buffers have reached their
    // working size under this load.
    let baseline = samples
        .iter()
        .find(|(t, _)| *t >= 60.0)
        .map_or(samples[0].1, |(_, u)| *u);
    samples.push((t0.elapsed().as_secs_f64(), end));
    let metrics = get(&a, &server.url("/metrics"), None).body;
    let frames_classified = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"glimpse_frames_classified_total{camera="default"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    drop(server);
    let written = writer.join().unwrap();

    println!("\nsoak: {minutes} min, pid {pid}");
    println!(
        "{:>8} {:>10} {:>6} {:>8}",
        "t (s)", "RSS (MiB)", "fds", "threads"
    );
    for (t, (rss, fds, threads)) in &samples {
        println!(
            "{t:>8.0} {:>10.1} {fds:>6} {threads:>8}",
            *rss as f64 / 1024.0
        );
    }
    let peak = samples.iter().map(|(_, (r, _, _))| *r).max().unwrap();
    println!(
        "requests: {} good ({} failed), {} bad images ({} wrong answers), {} malformed raw; \
         frames written {written}, classified {frames_classified}",
        tally.good.load(Ordering::Relaxed),
        tally.good_failed.load(Ordering::Relaxed),
        tally.bad.load(Ordering::Relaxed),
        tally.bad_wrong.load(Ordering::Relaxed),
        tally.raw.load(Ordering::Relaxed),
    );
    println!(
        "after the first minute: RSS {:.1} MiB, at the end {:.1} MiB, peak {:.1} MiB; fds {} -> {}; threads {} -> {}",
        baseline.0 as f64 / 1024.0,
        end.0 as f64 / 1024.0,
        peak as f64 / 1024.0,
        baseline.1,
        end.1,
        baseline.2,
        end.2
    );
    assert_eq!(
        tally.good_failed.load(Ordering::Relaxed),
        0,
        "good requests failed"
    );
    assert_eq!(
        tally.bad_wrong.load(Ordering::Relaxed),
        0,
        "bad inputs answered wrongly"
    );
    assert!(tally.good.load(Ordering::Relaxed) > 0 && frames_classified > 0.0);
    // Flat: the end within 5% (or 8 MiB) of the baseline; no leaked fds or threads (the
    // clients' connections are closed by then).
    let slack = (baseline.0 / 20).max(8 << 10);
    assert!(
        end.0 <= baseline.0 + slack,
        "RSS grew from {} to {} KiB",
        baseline.0,
        end.0
    );
    assert!(
        end.1 <= baseline.1 + 2,
        "fds grew from {} to {}",
        baseline.1,
        end.1
    );
    assert!(
        end.2 <= baseline.2 + 2,
        "threads grew from {} to {}",
        baseline.2,
        end.2
    );
}
