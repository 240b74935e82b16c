//! `glimpse bench` on the shipped model and sample photos: every figure is there and
//! consistent. (Speed goals are not asserted here: they live in BENCHMARKS.md.)

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_reports_stages_throughput_and_memory() {
    for threads in ["1", "2"] {
        let o = bench(&[
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--threads",
            threads,
            "-f",
            "json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["images"], 4, "the four sample photos");
        assert_eq!(r["threads"].to_string(), threads);
        for stage in ["decode_ms", "preprocess_ms", "inference_ms", "total_ms"] {
            let p = |q: &str| r[stage][q].as_f64().unwrap();
            assert!(
                p("p50") > 0.0 && p("p50") <= p("p90") && p("p90") <= p("p99"),
                "{stage}: {r}"
            );
        }
        assert!(r["total_ms"]["mean"].as_f64() >= r["inference_ms"]["mean"].as_f64());
        assert!(r["images_per_second"].as_f64().unwrap() > 0.0);
        assert!(r["load_ms"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 10.0, "{r}");
    }
    let table = bench(&["--iterations", "1", "--warmup", "0"]);
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(t.contains("| inference |") && t.contains("peak RSS"), "{t}");
    let dir = tempfile::tempdir().unwrap();
    let o = bench(&["--images", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no images to benchmark"));
}
