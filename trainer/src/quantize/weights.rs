//! Symmetric int8 weights (zero point 0, range ±127) per output channel or per tensor, and
//! the asymmetric uint8 parameters of activations.

/// Quantized weights: `w ≈ q · scale[channel]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantWeights {
    pub q: Vec<i8>,
    /// One scale per channel along `axis`, or a single one.
    pub scales: Vec<f32>,
}

/// Quantizes `w` (row-major, `shape`) symmetrically to int8, with one scale per slice along
/// `axis` (`Some`) or one for the whole tensor (`None`).
pub fn quantize_symmetric(w: &[f32], shape: &[usize], axis: Option<usize>) -> QuantWeights {
    let (channels, inner) = match axis {
        Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>()),
        None => (1, w.len()),
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    // An all-zero channel still needs a positive scale (ONNX requires one).
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    QuantWeights { q, scales }
}

/// uint8 quantization parameters `(scale, zero point)` covering `[lo, hi]`; the range is
/// widened to include 0, which must be exactly representable (padding, ReLU).
pub fn activation_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_keeps_each_channel_range() {
        // Two output channels of very different magnitude.
        let w = [0.1, -0.2, 0.05, 10.0, -5.0, 2.5];
        let q = quantize_symmetric(&w, &[2, 3], Some(0));
        assert_eq!(q.scales.len(), 2);
        assert_eq!(q.q[1], -127);
        assert_eq!(q.q[3], 127);
        for (i, v) in w.iter().enumerate() {
            let back = q.q[i] as f32 * q.scales[i / 3];
            assert!(
                (back - v).abs() <= q.scales[i / 3] / 2.0 + 1e-7,
                "{back} vs {v}"
            );
        }
        // Per tensor: the small channel loses most of its resolution.
        let t = quantize_symmetric(&w, &[2, 3], None);
        assert_eq!(t.scales.len(), 1);
        assert_eq!(t.q[2], 1);
    }

    #[test]
    fn zero_channels_get_a_valid_scale() {
        let q = quantize_symmetric(&[0.0, 0.0, 1.0, -1.0], &[2, 2], Some(0));
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(&q.q[..2], &[0, 0]);
    }

    #[test]
    fn activation_range_includes_zero() {
        let (s, z) = activation_params(0.0, 6.0);
        assert_eq!(z, 0);
        assert!((s - 6.0 / 255.0).abs() < 1e-9);
        let (s, z) = activation_params(-1.0, 1.0);
        assert!((s - 2.0 / 255.0).abs() < 1e-9);
        assert!((127..=128).contains(&z), "{z}");
        let (_, z) = activation_params(2.0, 3.0);
        assert_eq!(z, 0, "a positive range is widened to 0");
    }
}
