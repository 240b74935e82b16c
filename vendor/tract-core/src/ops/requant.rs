//! Per-channel requantization of i32 accumulators to u8 or i8 in one pass.
//!
//! `qmm::requant` wires `Scale` then `Add` (zero point), `Min`, `Max` and `Cast`. With a
//! per-tensor scale the chain fuses into the matrix product's kernel; with one scale per
//! output channel (the usual form of int8 convolution weights) `Scale` cannot fuse and the
//! five ops run as five broadcasting passes over the accumulators, the largest cost of a
//! quantized convolution. `RequantPerAxis` computes the same values, bit for bit, in one
//! contiguous, vectorizable loop per channel.

use crate::internal::*;
use num_traits::AsPrimitive;

#[derive(Clone, Debug, PartialEq)]
pub struct RequantPerAxis {
    /// One f32 multiplier per position along `axis`.
    pub scale: Arc<Tensor>,
    pub axis: usize,
    pub zero_point: i32,
    /// u8 or i8.
    pub dt: DatumType,
}

impl Eq for RequantPerAxis {}

/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 in magnitude to an
/// integer, ties to even (the default rounding mode), in two plain additions that
/// vectorize everywhere (`f32::round_ties_even` is a libm call on baseline x86_64).
const ROUND: f32 = 12582912.0;

/// `clamp(round_ties_even(v) + zero_point, lo, hi)` for `v = x * scale`: what `scale_by`
/// (`round(|x| * scale) * sign(x)`, the same value since IEEE multiplication and
/// ties-to-even rounding are both symmetric in sign), the zero-point `Add` and the
/// clamping `Min`/`Max` give, and what `QuantizeLinear` computes (the same values
/// wherever `round(v) + zero_point` fits in an i32), in the form that costs least on the
/// target.
#[inline(always)]
pub(crate) fn round_to_range(v: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    if cfg!(target_arch = "arm") {
        round_to_range_vfp(v, zero_point, lo, hi)
    } else {
        round_to_range_simd(v, zero_point, lo, hi)
    }
}

/// [`round_to_range`] as a vectorizing loop wants it. `v` is first clamped to just outside
/// what can reach `[lo, hi]` after the zero point: inside, the rounding is exact; outside,
/// both saturate. No libm call, no branch, no saturating float-to-int conversion.
#[inline(always)]
fn round_to_range_simd(v: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    // NaN maps to the zero point, as `NaN as i32` (0) did; then v is finite and below
    // 2^22 in magnitude.
    let v = if v.is_nan() { 0.0 } else { v };
    let v = v.max((lo - zero_point - 1) as f32).min((hi - zero_point + 1) as f32);
    // SAFETY: (v + ROUND) - ROUND is an integer-valued finite f32 of magnitude below 2^22.
    let r = unsafe { ((v + ROUND) - ROUND).to_int_unchecked::<i32>() };
    (r + zero_point).clamp(lo, hi)
}

/// [`round_to_range`] for 32-bit ARM, the same values: nothing vectorizes it there (LLVM
/// does not vectorize f32 for ARMv7 NEON, which flushes denormals), and VFP has no
/// `max`/`min`, so each NaN-aware one of the vectorizing form costs two compares, two flag
/// moves and two conditional moves (~35 instructions per value in all). Here one compare
/// sends what `ROUND` cannot round exactly (2^22 and beyond in magnitude, NaN) to a value
/// that rounds to the same bound after the zero point is added.
#[inline(always)]
#[cfg_attr(not(target_arch = "arm"), allow(dead_code))]
fn round_to_range_vfp(v: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    const LIMIT: f32 = 4194304.0;
    let v = if v.abs() < LIMIT {
        v
    } else if v.is_nan() {
        0.0
    } else {
        LIMIT.copysign(v)
    };
    // SAFETY: (v + ROUND) - ROUND is an integer-valued finite f32 of magnitude at most 2^22.
    let r = unsafe { ((v + ROUND) - ROUND).to_int_unchecked::<i32>() };
    (r + zero_point).clamp(lo, hi)
}

/// The multipliers of a run of accumulators: one per value, or one for the run.
#[derive(Clone, Copy)]
pub(crate) enum Scales<'a> {
    PerValue(&'a [f32]),
    One(f32),
}

/// `ys[i] = round_to_range(xs[i] as f32 * scale_i, zp, lo, hi)`, `[lo, hi]` the range of `T`
/// (u8 or i8). On aarch64, 16 values at a time in NEON ([`neon::requant16`]): LLVM
/// vectorizes the portable loop with the NaN test and both clamps spelled out, about
/// twice the instructions. On 32-bit ARM with NEON, 8 at a time ([`armv7neon::requant`]):
/// there nothing vectorizes the portable loop.
#[inline]
pub(crate) fn requant_run<T: Datum + Copy>(xs: &[i32], scales: Scales, zp: i32, lo: i32, hi: i32, ys: &mut [T])
where
    i32: AsPrimitive<T>,
{
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
    let done = 0;
    #[cfg(target_arch = "arm")]
    let done = armv7neon::requant(xs, scales, zp, T::datum_type() == u8::datum_type(), ys);
    #[cfg(target_arch = "aarch64")]
    let done = {
        use std::arch::aarch64::*;
        let unsigned = T::datum_type() == u8::datum_type();
        let mut i = 0;
        while i + 16 <= xs.len() {
            // SAFETY: 16 values from i are in bounds of `xs`, `ys` and a per-value `scales`
            // (as long as `xs`); `T` is u8 or i8.
            unsafe {
                let acc = [0, 4, 8, 12].map(|j| vld1q_s32(xs.as_ptr().add(i + j)));
                let scale = match scales {
                    Scales::PerValue(s) => [0, 4, 8, 12].map(|j| vld1q_f32(s.as_ptr().add(i + j))),
                    Scales::One(s) => [vdupq_n_f32(s); 4],
                };
                neon::requant16(acc, scale, zp, unsigned, ys.as_mut_ptr().add(i) as *mut i8);
            }
            i += 16;
        }
        i
    };
    for i in done..xs.len() {
        let scale = match scales {
            Scales::PerValue(s) => s[i],
            Scales::One(s) => s,
        };
        ys[i] = round_to_range(xs[i] as f32 * scale, zp, lo, hi).as_();
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use std::arch::aarch64::*;

    /// `round_to_range(acc * scale, zp, lo, hi)` for 16 lanes with `[lo, hi]` the range of
    /// i8 or u8 (`unsigned`), stored at `out`: `acc as f32 * scale` rounded to nearest even
    /// by `fcvtns` (which saturates, and maps NaN to 0 as `round_to_range` does), the zero
    /// point added with saturation, then narrowed with saturation: the same values.
    ///
    /// # Safety
    /// `out` is valid for 16 bytes.
    #[inline(always)]
    pub unsafe fn requant16(
        acc: [int32x4_t; 4],
        scale: [float32x4_t; 4],
        zp: i32,
        unsigned: bool,
        out: *mut i8,
    ) {
        unsafe {
            let zp = vdupq_n_s32(zp);
            let r = |i: usize| vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(acc[i]), scale[i])), zp);
            let lo = vqmovn_high_s32(vqmovn_s32(r(0)), r(1));
            let hi = vqmovn_high_s32(vqmovn_s32(r(2)), r(3));
            if unsigned {
                vst1q_u8(out as *mut u8, vqmovun_high_s16(vqmovun_s16(lo), hi));
            } else {
                vst1q_s8(out, vqmovn_high_s16(vqmovn_s16(lo), hi));
            }
        }
    }
}

/// The requantization on 32-bit ARM with NEON, in assembly: Rust's ARMv7 NEON intrinsics
/// are unstable, and LLVM does not vectorize f32 for ARMv7 NEON, so the portable loop runs
/// one value at a time in VFP (~25 instructions per value; 2.6 here).
#[cfg(target_arch = "arm")]
pub(crate) mod armv7neon {
    use super::{ROUND, Scales};

    /// Whether the CPU has NEON, as tract-linalg decides for its kernels, asked once:
    /// `has_neon` reads its knob from the environment at every call, which cost more than the
    /// NEON saves when asked at every run of values.
    pub fn available() -> bool {
        static NEON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *NEON.get_or_init(tract_linalg::arm32::has_neon)
    }

    /// `ys[i] = round_to_range(xs[i] as f32 * scale_i, zp, lo, hi)` for the first
    /// `xs.len() / 8 * 8` values, `[lo, hi]` the range of u8 (`unsigned`) or i8, 8 at a time;
    /// returns how many values it did (0 without NEON). The same values as
    /// [`super::round_to_range`]: `vcvt` and NEON arithmetic round to nearest even; NEON
    /// flushes denormals to zero, which round to 0 either way; `(v + ROUND) - ROUND` is exact
    /// below 2^22 and keeps the sign and a magnitude that saturates beyond; `vcvt` to i32
    /// saturates and maps NaN to 0 (the zero point, as there), and the zero-point addition
    /// and both narrowings saturate, which is the clamp.
    pub fn requant<T: Copy>(xs: &[i32], scales: Scales, zp: i32, unsigned: bool, ys: &mut [T]) -> usize {
        assert!(size_of::<T>() == 1 && ys.len() >= xs.len());
        let n = xs.len() / 8;
        if n == 0 || !available() {
            return 0;
        }
        let one: [f32; 8];
        // The scales' address and how far it moves per 8 values: 0 for one scale, read
        // from an array of 8 copies.
        let (scale, step) = match scales {
            Scales::PerValue(s) => {
                assert!(s.len() >= n * 8);
                (s.as_ptr(), 32usize)
            }
            Scales::One(s) => {
                one = [s; 8];
                (one.as_ptr(), 0)
            }
        };
        macro_rules! run {
            ($narrow:literal) => {
                // SAFETY: NEON is there; 8n values from `xs`, `ys` and a per-value `scale`
                // are in bounds (asserted above), 8 from `one`. d0-d11 are declared clobbered.
                unsafe {
                    core::arch::asm!(
                        ".fpu neon",
                        "vdup.32 q4, {round}",
                        "vdup.32 q5, {zp}",
                        "2:",
                        "vld1.32 {{d0-d3}}, [{xs}]!",
                        "vld1.32 {{d4-d7}}, [{scale}], {step}",
                        "vcvt.f32.s32 q0, q0",
                        "vcvt.f32.s32 q1, q1",
                        "vmul.f32 q0, q0, q2",
                        "vmul.f32 q1, q1, q3",
                        "vadd.f32 q0, q0, q4",
                        "vadd.f32 q1, q1, q4",
                        "vsub.f32 q0, q0, q4",
                        "vsub.f32 q1, q1, q4",
                        "vcvt.s32.f32 q0, q0",
                        "vcvt.s32.f32 q1, q1",
                        "vqadd.s32 q0, q0, q5",
                        "vqadd.s32 q1, q1, q5",
                        "vqmovn.s32 d0, q0",
                        "vqmovn.s32 d1, q1",
                        concat!($narrow, " d0, q0"),
                        "vst1.8 {{d0}}, [{ys}]!",
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        xs = inout(reg) xs.as_ptr() => _,
                        scale = inout(reg) scale => _,
                        step = in(reg) step,
                        ys = inout(reg) ys.as_mut_ptr() => _,
                        n = inout(reg) n => _,
                        round = in(reg) ROUND.to_bits(),
                        zp = in(reg) zp,
                        out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                        out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                        out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                        options(nostack),
                    )
                }
            };
        }
        if unsigned {
            run!("vqmovun.s16")
        } else {
            run!("vqmovn.s16")
        }
        n * 8
    }
}

impl RequantPerAxis {
    fn eval_t<T: Datum + Copy>(&self, input: &Tensor, lo: i32, hi: i32) -> TractResult<Tensor>
    where
        i32: AsPrimitive<T>,
    {
        let shape = input.shape();
        let scales = self.scale.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            shape.get(self.axis) == Some(&scales.len()),
            "RequantPerAxis: expected {} channels on axis {}, got shape {:?}",
            scales.len(),
            self.axis,
            shape
        );
        let inner: usize = shape[self.axis + 1..].iter().product();
        let x = input.try_as_plain_ram()?.as_slice::<i32>()?;
        let mut output = unsafe { Tensor::uninitialized::<T>(shape)? };
        if inner > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<T>()?;
            let zp = self.zero_point;
            if inner == 1 {
                // Channel last (NHWC): a run per position, one value per channel.
                let channels = scales.len();
                for (xs, ys) in x.chunks_exact(channels).zip(y.chunks_exact_mut(channels)) {
                    requant_run(xs, Scales::PerValue(scales), zp, lo, hi, ys);
                }
            } else {
                // Chunk i is channel i % channels of outer index i / channels.
                for (i, (xs, ys)) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)).enumerate() {
                    requant_run(xs, Scales::One(scales[i % scales.len()]), zp, lo, hi, ys);
                }
            }
        }
        // The quantized type (QU8/QI8 with its parameters) the chain's Cast gave.
        unsafe { output.set_datum_type(self.dt) };
        Ok(output)
    }
}

impl Op for RequantPerAxis {
    fn name(&self) -> StaticName {
        "RequantPerAxis".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} scales on axis {}, zero point {}, to {:?}",
            self.scale.len(),
            self.axis,
            self.zero_point,
            self.dt
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for RequantPerAxis {
    op_out_of_plan!();
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(input.datum_type() == i32::datum_type(), "RequantPerAxis: expected i32 input, got {:?}", input.datum_type());
        let output = match self.dt.unquantized() {
            DatumType::U8 => self.eval_t::<u8>(input, 0, 255)?,
            DatumType::I8 => self.eval_t::<i8>(input, -128, 127)?,
            dt => bail!("RequantPerAxis: expected u8 or i8 output, got {dt:?}"),
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RequantPerAxis {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.dt.fact(inputs[0].shape.clone())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        AxesMapping::natural(inputs, outputs)
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        _io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        // The loop walks the channel axis and everything inside it as one contiguous run:
        // any change that keeps the channel axis keeps the op, with the axis renumbered.
        let Some(axis) = change.transform_axis(self.axis) else { return Ok(None) };
        let op = RequantPerAxis { axis, ..self.clone() };
        Ok(Some(AxisChangeConsequence::new(model, node, Some(Box::new(op)), change)))
    }

    as_op!();
}

/// `RequantPerAxis` for `scale` (a constant broadcastable to `rank` axes, aligned to the
/// right as `wire_with_rank_broadcast` aligns it) when it varies along exactly one axis
/// and `zero_point` is a constant scalar; `None` for any other form.
pub fn per_axis(scale: &Tensor, zero_point: &Tensor, rank: usize, dt: DatumType) -> TractResult<Option<RequantPerAxis>> {
    if !matches!(dt.unquantized(), DatumType::U8 | DatumType::I8) || zero_point.len() != 1 || scale.rank() > rank {
        return Ok(None);
    }
    let varying: Vec<usize> = (0..scale.rank()).filter(|&a| scale.shape()[a] != 1).collect();
    let [axis] = varying[..] else { return Ok(None) };
    Ok(Some(RequantPerAxis {
        scale: scale.cast_to::<f32>()?.into_owned().into_shape(&[scale.len()])?.into_arc_tensor(),
        axis: rank - scale.rank() + axis,
        zero_point: zero_point.cast_to_scalar::<i32>()?,
        dt,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::{add, max, min};
    use crate::ops::quant::scale;

    /// The chain `qmm::requant` wires without this op, on `x` (i32), `scales` shaped to
    /// broadcast against it.
    fn chain(x: &Tensor, scales: &Tensor, zp: i32, dt: DatumType) -> TractResult<Tensor> {
        let mut model = TypedModel::default();
        let rank = x.rank();
        let wire = model.add_source("x", i32::fact(x.shape()))?;
        let s = model.add_const("s", scales.clone())?;
        let wire = model.wire_node("scale", scale(), &[s, wire])?[0];
        let z = model.add_const("z", tensor0(zp).broadcast_into_rank(rank)?)?;
        let wire = model.wire_node("zp", add(), &[wire, z])?[0];
        let (lo, hi) = if dt == u8::datum_type() { (0, 255) } else { (-128, 127) };
        let hi = model.add_const("hi", tensor0(hi).broadcast_into_rank(rank)?)?;
        let lo = model.add_const("lo", tensor0(lo).broadcast_into_rank(rank)?)?;
        let wire = model.wire_node("min", min(), &[wire, hi])?[0];
        let wire = model.wire_node("max", max(), &[wire, lo])?[0];
        let wire = model.wire_node("cast", crate::ops::cast::cast(dt), &[wire])?[0];
        model.select_output_outlets(&[wire])?;
        Ok(SimplePlan::new(model)?.run(tvec!(x.clone().into_tvalue()))?.remove(0).into_tensor())
    }

    #[test]
    fn same_values_as_the_chain_it_replaces() -> TractResult<()> {
        // Accumulators across the range, ties (x * scale = n + 0.5) and saturation included.
        let values: Vec<i32> = (-2000..2000).map(|v| v * 97).chain([i32::MIN + 1, i32::MAX, 0, 1, -1, 3, -3, 5, -5]).collect();
        // Channels first (NCHW, a run per channel) and last (NHWC, a run per position), over
        // 3 channels and 35 (runs of 16 for the NEON path on aarch64, then a tail of 3).
        let mut layouts = vec![];
        for c in [3, 35] {
            let n = values.len() / c;
            layouts.push((c, [1, c, n, 1], [1, c, 1, 1], 1));
            layouts.push((c, [1, 1, n, c], [1, 1, 1, c], 3));
        }
        for (c, x_shape, s_shape, axis) in layouts {
            let n = values.len() / c;
            let scales: Vec<f32> = [0.5f32, 0.0123, 1.0 / 3.0].iter().cycle().take(c).enumerate().map(|(i, s)| s * (1.0 + i as f32 / 7.0)).collect();
            let x = tensor1(&values[..c * n]).into_shape(&x_shape)?;
            let s = tensor1(&scales).into_shape(&s_shape)?;
            for (dt, zp) in [(u8::datum_type(), 128), (u8::datum_type(), 3), (i8::datum_type(), -5)] {
                let op = per_axis(&s, &tensor0(zp), 4, dt)?.expect("one varying axis");
                assert_eq!(op.axis, axis);
                let got = op.eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))?.remove(0);
                let want = chain(&x, &s, zp, dt)?;
                assert_eq!(got.into_tensor(), want, "{dt:?} zero point {zp}, axis {axis}");
            }
        }
        Ok(())
    }

    #[test]
    fn round_to_range_is_round_ties_even_then_clamp() {
        let reference = |v: f32, zp: i32, lo: i32, hi: i32| {
            let r = if v.is_nan() { 0 } else { v.round_ties_even() as i64 };
            r.saturating_add(zp as i64).clamp(lo as i64, hi as i64) as i32
        };
        let special = [
            f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, -0.0, 1e9, -1e9, 4194303.5, -4194303.5,
            4194304.0, -4194304.0, 4194304.5, 8388607.5, -8388607.5, 1e-40, -1e-40,
        ];
        let values = (-4000..4000).map(|v| v as f32 * 0.125).chain(special);
        for v in values {
            for (zp, lo, hi) in [(0, 0, 255), (128, 0, 255), (-7, -128, 127), (127, -128, 127)] {
                let want = reference(v, zp, lo, hi);
                assert_eq!(round_to_range_simd(v, zp, lo, hi), want, "{v} zero point {zp}");
                // The 32-bit ARM form, checked here as on an ARM build.
                assert_eq!(round_to_range_vfp(v, zp, lo, hi), want, "{v} zero point {zp}, ARM form");
            }
        }
    }

    /// `requant_run` against `round_to_range` value by value: on aarch64 and 32-bit ARM with
    /// NEON, the vector paths, on products that are ties, near 2^22 and 2^23, huge, infinite,
    /// NaN and denormal (which NEON on 32-bit ARM flushes to zero), per value and with one
    /// scale, runs of 8 and 16 and their tails.
    #[test]
    fn requant_run_is_round_to_range_value_by_value() {
        let xs: Vec<i32> = [0, 1, -1, 3, -3, 5, 7, -7, 4194303, -4194303, 8388607, -8388607, 8388609, 16777215]
            .into_iter()
            .chain([i32::MAX, i32::MIN, i32::MIN + 1, 1 << 22, -(1 << 22), 255, -255, 12345])
            .chain((-300..300).map(|v| v * 131))
            .collect();
        let special = [0.5f32, 1.0, 1.0 / 3.0, 0.0123, 1e-45, f32::MIN_POSITIVE, -0.75, f32::INFINITY, f32::NAN, 3e38, 2.5];
        let per_value: Vec<f32> = special.iter().cycle().take(xs.len()).copied().collect();
        for len in [7, 8, 16, 23, xs.len()] {
            let xs = &xs[..len];
            let mut cases = vec![(Scales::PerValue(&per_value[..len]), per_value[..len].to_vec())];
            cases.extend(special.iter().map(|&s| (Scales::One(s), vec![s; len])));
            for (scales, each) in cases {
                for (zp, lo, hi) in [(0, 0, 255), (128, 0, 255), (-7, -128, 127), (127, -128, 127)] {
                    let want: Vec<i32> = xs.iter().zip(&each).map(|(&x, &s)| round_to_range(x as f32 * s, zp, lo, hi)).collect();
                    let got: Vec<i32> = if lo == 0 {
                        let mut ys = vec![0u8; len];
                        requant_run(xs, scales, zp, lo, hi, &mut ys);
                        ys.into_iter().map(i32::from).collect()
                    } else {
                        let mut ys = vec![0i8; len];
                        requant_run(xs, scales, zp, lo, hi, &mut ys);
                        ys.into_iter().map(i32::from).collect()
                    };
                    assert_eq!(got, want, "{len} values, scales {each:?}, zero point {zp}");
                }
            }
        }
    }

    /// On 32-bit ARM, the NEON path is the one tested above: it takes every whole 8 values.
    /// (Under qemu-user, tract reads the host's /proc/cpuinfo: run with
    /// `TRACT_CPU_ARM32_NEON=true`; `false` tests the portable path alone.)
    #[cfg(target_arch = "arm")]
    #[test]
    fn armv7neon_requant_takes_whole_eights() {
        if std::env::var("TRACT_CPU_ARM32_NEON").as_deref() == Ok("false") {
            return;
        }
        assert!(tract_linalg::arm32::has_neon(), "no NEON detected: set TRACT_CPU_ARM32_NEON=true (or false to skip)");
        let xs: Vec<i32> = (0..21).collect();
        let mut ys = vec![0i8; 21];
        assert_eq!(armv7neon::requant(&xs, Scales::One(0.5), 0, false, &mut ys), 16);
        assert_eq!(&ys[..16], &[0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 7, 8]);
    }

    #[test]
    fn only_one_varying_axis_and_8_bit_outputs() -> TractResult<()> {
        let s = tensor1(&[0.5f32, 0.25]).into_shape(&[2, 1])?;
        assert!(per_axis(&s, &tensor0(0i32), 4, u8::datum_type())?.is_some_and(|op| op.axis == 2));
        assert!(per_axis(&s, &tensor0(0i32), 4, i32::datum_type())?.is_none());
        let two = tensor1(&[0.5f32, 0.25, 1., 2.]).into_shape(&[2, 2])?;
        assert!(per_axis(&two, &tensor0(0i32), 4, u8::datum_type())?.is_none());
        assert!(per_axis(&tensor0(0.5f32), &tensor0(0i32), 4, u8::datum_type())?.is_none());
        Ok(())
    }
}
