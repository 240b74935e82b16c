//! Every fuzz target's function over its seed corpus and over each input the fuzzer once
//! found crashing (`fuzz/regressions/<target>/`), as an ordinary test: what was fixed stays
//! fixed, and the targets are exercised on every CI run without a fuzzing toolchain.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    out.sort();
    out
}

/// The seed directories of a target (as `fuzz/run.sh` gives them to libFuzzer) and its
/// regressions.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = fuzz_dir().join("..");
    let seeds: &[&str] = match target {
        "decode" => &["tests/corpus/images", "samples"],
        "model" => &["tests/corpus/models"],
        "raw_frames" => &["tests/corpus/raw", "tests/corpus/images"],
        "http" => &["tests/corpus/http", "fuzz/seeds/http"],
        _ => &[],
    };
    let mut out: Vec<PathBuf> = seeds.iter().flat_map(|d| files_in(&root.join(d))).collect();
    out.extend(files_in(&fuzz_dir().join("regressions").join(target)));
    out
}

/// Deterministic pseudo-random inputs of assorted lengths, for the targets whose input is
/// structured by `arbitrary` rather than a file format.
fn noise_inputs(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            (0..(i * 7) % 600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn replay(target: &str, f: fn(&[u8]), min: usize) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= min,
        "{target}: expected at least {min} inputs, found {}",
        inputs.len()
    );
    for path in inputs {
        let data = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        f(&data);
    }
}

#[test]
fn decode() {
    replay("decode", glimpse_fuzz::decode, 30);
}

#[test]
fn model() {
    replay("model", glimpse_fuzz::model, 10);
    glimpse_fuzz::model(glimpse_fuzz::TINY_MODEL);
}

#[test]
fn bundle_meta() {
    replay("bundle_meta", glimpse_fuzz::bundle_meta, 0);
    for data in noise_inputs(2000) {
        glimpse_fuzz::bundle_meta(&data);
    }
}

#[test]
fn raw_frames() {
    replay("raw_frames", glimpse_fuzz::raw_frames, 2);
    for data in noise_inputs(500) {
        glimpse_fuzz::raw_frames(&data);
    }
}

#[test]
fn http() {
    replay("http", glimpse_fuzz::http, 20);
    // The harness really talks to the router: valid requests get real answers from both
    // daemons (the seeds carry the token and `Host: board`).
    let seed = |name: &str| std::fs::read(fuzz_dir().join("seeds/http").join(name)).unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    for locked in [false, true] {
        let answer = |name: &str| text(glimpse_fuzz::http_answer(&seed(name), locked));
        assert!(answer("healthz.http").starts_with("HTTP/1.1 200"));
        for name in [
            "classify-raw.http",
            "classify-multipart.http",
            "classify-chunked.http",
        ] {
            let answer = answer(name);
            assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
            assert!(answer.contains(r#""label":"red""#), "{name}: {answer}");
        }
        let two = answer("keep-alive-two.http");
        assert_eq!(two.matches("HTTP/1.1 200").count(), 2, "{two}");
    }
    // The web page's login gives a session cookie (there is nothing to log in to
    // without a token).
    let login = text(glimpse_fuzz::http_answer(&seed("login.http"), true));
    assert!(login.starts_with("HTTP/1.1 204"), "{login}");
    assert!(login.contains("glimpse_session="), "{login}");
    let open = text(glimpse_fuzz::http_answer(&seed("login.http"), false));
    assert!(open.starts_with("HTTP/1.1 409"), "{open}");
    // And they refuse what they should: no token, a foreign host.
    let without_token = String::from_utf8(seed("model.http")).unwrap().replace(
        &format!("Authorization: Bearer {}\r\n", glimpse_fuzz::FUZZ_TOKEN),
        "",
    );
    let answer = text(glimpse_fuzz::http_answer(without_token.as_bytes(), true));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let foreign = without_token.replace("Host: board", "Host: evil.example");
    let answer = text(glimpse_fuzz::http_answer(foreign.as_bytes(), false));
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
}
