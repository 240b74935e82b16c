//! Cross-setup smoke test: prints the architecture it runs on and checks that std, threads,
//! floating point and (on ARM) NEON detection work there.

fn main() {
    let arch = std::env::consts::ARCH;
    // Threads and floats: the two things tract leans on.
    let sums: Vec<f32> = (0..2)
        .map(|t| {
            std::thread::spawn(move || (0..1000).map(|i| (i * (t + 1)) as f32 * 0.5).sum::<f32>())
        })
        .map(|h| h.join().unwrap_or(f32::NAN))
        .collect();
    assert_eq!(sums, [249750.0, 499500.0], "arithmetic differs on {arch}");
    #[cfg(target_arch = "aarch64")]
    let simd = std::arch::is_aarch64_feature_detected!("neon");
    #[cfg(not(target_arch = "aarch64"))]
    let simd = cfg!(target_feature = "neon") || cfg!(target_feature = "sse2");
    println!("glimpse-cross-smoke: {arch} ok (simd: {simd})");
}
