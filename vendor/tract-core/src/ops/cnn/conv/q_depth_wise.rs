//! Direct quantized depthwise convolution on channel-last data: i8 activations and weights,
//! i32 accumulation, and the per-channel requantization to u8/i8 in the same pass.
//!
//! Without it, a quantized depthwise convolution runs as im2col and an int8 matrix product
//! with one output channel per group: every input value is copied once per tap into the
//! packed buffer, and the product's tiles are 1/8 full. Here each output position reads its
//! taps in place, 16 channels at a time (three positions of a row at once on aarch64, which
//! share each load of the weights), and writes its quantized values directly.

use crate::internal::*;
use crate::ops::cnn::Patch;
use crate::ops::cnn::patches::{Zone, ZoneScanner};
use crate::ops::nn::DataShape;
use crate::ops::requant::{Scales, requant_run, round_to_range};
use num_traits::AsPrimitive;

/// Channels per step of the inner loops: 16 i8 lanes, one NEON or SSE register.
const BLOCK: usize = 16;

/// Output positions computed together on aarch64, sharing each load of the kernel: 12
/// accumulators and 12 temporaries of the 32 vector registers.
#[cfg(target_arch = "aarch64")]
const GROUP: usize = 3;

/// `QDepthWise` computes, for each output position `p` and channel `c`,
/// `requant(bias[c] + sum over the taps t inside the input of (x[p + t][c] - x0) * k[t][c])`
/// with `requant(v) = clamp(round_ties_even(v * scale[c]) + y0)`: what im2col, the int8
/// product, the zero-point compensation and `RequantPerAxis` compute, bit for bit (taps in
/// the padding hold `x0` there and contribute nothing here).
///
/// The weights are stored zero-point free and checked to lie in `-127..=127` (symmetric
/// int8, what quantizers write): the products of two taps then add up in an i16 lane
/// without overflow (`2 * 128 * 127 < 2^15`), which halves the widening work.
#[derive(Debug, Clone, PartialEq)]
pub struct QDepthWise {
    patch: Patch,
    input_shape: DataShape,
    output_shape: DataShape,
    /// `k - k0` per tap and channel, tap-major: `[taps, C]`.
    kernel: Vec<i8>,
    /// Per zone of the patch, `bias[c] - x0 * sum(k[t][c])` over the zone's valid taps:
    /// the activations' zero point folded out of the inner loop. `[zones, C]`.
    zone_bias: Vec<i32>,
    /// `x_scale * k_scale[c] / y_scale`, one per channel.
    scale: Vec<f32>,
    y0: i32,
    /// The output type: u8 or i8, quantized with the convolution's output parameters.
    dt: DatumType,
}

impl Eq for QDepthWise {}

/// Why a quantized depthwise convolution cannot take [`QDepthWise`]: the caller falls back
/// to im2col.
pub type Unsupported = &'static str;

/// The constant parameters of a quantized depthwise convolution, as `Conv` holds them.
#[derive(Debug)]
pub struct QDepthWiseParams<'a> {
    /// `[C, taps]`, the kernel as `kernel_as_group_o_ihw` gives it for a depthwise conv.
    pub kernel: &'a Tensor,
    pub k0: &'a Tensor,
    pub bias: &'a Tensor,
    pub x0: i32,
    pub x_scale: f32,
    pub k_scale: &'a Tensor,
    pub y0: i32,
    pub y_scale: f32,
    pub dt: DatumType,
}

impl QDepthWise {
    /// The op for these parameters over i8 activations (zero point `x0`), or why not.
    pub fn new(
        patch: Patch,
        input_shape: DataShape,
        output_shape: DataShape,
        p: &QDepthWiseParams,
    ) -> TractResult<Result<QDepthWise, Unsupported>> {
        if !input_shape.fmt.c_is_last() || !output_shape.fmt.c_is_last() {
            return Ok(Err("channels are not the innermost axis"));
        }
        if !matches!(p.dt.unquantized(), DatumType::U8 | DatumType::I8) {
            return Ok(Err("the output is not u8 or i8"));
        }
        let c = *input_shape.c();
        let taps = p.kernel.len() / c.max(1);
        if p.kernel.shape() != [c, taps] {
            bail!("QDepthWise: expected a [{c}, taps] kernel, got {:?}", p.kernel.shape());
        }
        let k0 = per_channel::<i32>(p.k0, c, "kernel zero points")?;
        let bias = per_channel::<i32>(p.bias, c, "bias values")?;
        let k_scale = per_channel::<f32>(p.k_scale, c, "kernel scales")?;
        let raw = p.kernel.cast_to::<i32>()?;
        let raw = raw.try_as_plain_ram()?.as_slice::<i32>()?;
        let mut kernel = vec![0i8; taps * c];
        for ch in 0..c {
            for t in 0..taps {
                let k = raw[ch * taps + t] - k0[ch];
                if !(-127..=127).contains(&k) {
                    return Ok(Err("a weight less its zero point is outside -127..=127"));
                }
                kernel[t * c + ch] = k as i8;
            }
        }
        let zone_bias = patch
            .zones
            .iter()
            .flat_map(|zone| zone_bias(zone, &kernel, &bias, p.x0, c))
            .collect();
        // The order of `combine_scales`: (k_scale * x_scale) / y_scale, in f32.
        let scale = k_scale.iter().map(|k| k * p.x_scale / p.y_scale).collect();
        Ok(Ok(QDepthWise {
            patch,
            input_shape,
            output_shape,
            kernel,
            zone_bias,
            scale,
            y0: p.y0,
            dt: p.dt,
        }))
    }

    /// The same op writing i8 where it wrote u8: its values less 128 (offset folding).
    pub fn to_i8_output(&self) -> Option<QDepthWise> {
        let dt = match self.dt {
            DatumType::U8 => DatumType::I8,
            DatumType::QU8(qp) => {
                let (zero_point, scale) = qp.zp_scale();
                DatumType::QI8(QParams::ZpScale { zero_point: zero_point - 128, scale })
            }
            _ => return None,
        };
        Some(QDepthWise { y0: self.y0 - 128, dt, ..self.clone() })
    }

    fn eval_t<T: Datum + Copy>(&self, input: &Tensor, lo: i32, hi: i32) -> TractResult<Tensor>
    where
        i32: AsPrimitive<T>,
    {
        ensure!(
            input.datum_type().unquantized() == DatumType::I8,
            "QDepthWise: expected i8 activations, got {:?}",
            input.datum_type()
        );
        ensure!(
            input.shape() == &self.input_shape.shape[..],
            "QDepthWise: expected input shape {:?}, got {:?}",
            self.input_shape.shape,
            input.shape()
        );
        let mut output = unsafe { Tensor::uninitialized_dt(self.dt, &self.output_shape.shape)? };
        let x = input.try_as_plain_ram()?.as_slice::<i8>()?;
        let c = *self.input_shape.c();
        // Channel ranges are disjoint across the whole output (channels innermost), so
        // the executor's threads each walk every position for their own channels.
        let y = output.try_as_plain_ram_mut()?.as_slice_mut::<T>()?.as_mut_ptr() as usize;
        let chunk = 4 * BLOCK;
        tract_linalg::multithread::par_chunks_mut(
            &mut vec![(); c.div_ceil(chunk)],
            1,
            output.len(),
            |first, chunks| {
                let channels = first * chunk..c.min((first + chunks.len()) * chunk);
                // SAFETY: `y` is the output's buffer, of the output shape; each call
                // writes the channels of its own range only.
                unsafe { self.walk(x, y as *mut T, channels, lo, hi) };
                Ok(())
            },
        )?;
        Ok(output)
    }

    /// Every output position, for the channels in `channels`.
    ///
    /// # Safety
    /// `y` points to an output tensor of the output shape; `x` is of the input shape.
    unsafe fn walk<T: Datum + Copy>(
        &self,
        x: &[i8],
        y: *mut T,
        channels: std::ops::Range<usize>,
        lo: i32,
        hi: i32,
    ) where
        i32: AsPrimitive<T>,
    {
        let n = *self.input_shape.n().unwrap_or(&1);
        let n_stride_i = *self.input_shape.n_stride().unwrap_or(&0) as isize;
        let n_stride_o = *self.output_shape.n_stride().unwrap_or(&0) as isize;
        let c = *self.input_shape.c();
        let mut taps: TVec<(usize, isize)> = tvec!();
        for ni in 0..n as isize {
            for (zi, zone) in self.patch.zones.iter().enumerate() {
                taps.clear();
                taps.extend(zone.values_offsets.iter().map(|&(t, offset)| (t * c, offset)));
                let bias = &self.zone_bias[zi * c..][..c];
                let mut scanner = ZoneScanner::new(zone, &self.patch);
                while !scanner.done {
                    let at = |i: usize| {
                        n_stride_i * ni
                            + scanner.input_center_offset
                            + scanner.inner_loop_input_full_stride * i as isize
                    };
                    // SAFETY: this is the output position `i` of the inner loop, of `c`
                    // values; this call's channels of it are not touched by any other call.
                    let out = |i: usize| unsafe {
                        let out = n_stride_o * ni
                            + scanner.output_offset
                            + scanner.inner_loop_output_stride * i as isize;
                        std::slice::from_raw_parts_mut(y.offset(out).add(channels.start), channels.len())
                    };
                    let len = scanner.inner_loop_len;
                    #[allow(unused_mut)]
                    let mut i = 0;
                    #[cfg(target_arch = "aarch64")]
                    while i + GROUP <= len {
                        let positions: [_; GROUP] = std::array::from_fn(|g| (at(i + g), out(i + g)));
                        self.positions(x, positions, &taps, bias, channels.start, lo, hi);
                        i += GROUP;
                    }
                    for i in i..len {
                        self.positions(x, [(at(i), out(i))], &taps, bias, channels.start, lo, hi);
                    }
                    // SAFETY: the scanner walks the zone it was made for, of this patch.
                    unsafe { scanner.next_non_inner_axis() };
                }
            }
        }
    }

    /// `G` output positions of one zone (their taps are the same), the channels from
    /// `first` on that their `out` hold: blocks of [`BLOCK`] for all of them at once on
    /// aarch64, then, for each, the portable blocks and the remainder.
    ///
    /// The taps are read through pointers into fixed-size arrays, so that each block is
    /// straight-line vector code: `taps` comes from the patch of this input shape, checked
    /// by `eval_t`, so `at + offset` and the channels after it lie inside `x`.
    #[inline(always)]
    // `positions` and `c0` change on aarch64 only.
    #[allow(clippy::too_many_arguments, unused_mut)]
    fn positions<T: Datum + Copy, const G: usize>(
        &self,
        x: &[i8],
        mut positions: [(isize, &mut [T]); G],
        taps: &[(usize, isize)],
        bias: &[i32],
        first: usize,
        lo: i32,
        hi: i32,
    ) where
        i32: AsPrimitive<T>,
    {
        let c = self.scale.len();
        debug_assert!(positions.iter().all(|(at, _)| {
            taps.iter().all(|(_, o)| at + o >= 0 && (at + o) as usize + c <= x.len())
        }));
        let mut c0 = first;
        #[cfg(target_arch = "aarch64")]
        {
            let end = first + positions[0].1.len();
            let unsigned = T::datum_type() == u8::datum_type();
            while c0 + BLOCK <= end {
                // SAFETY: as for the taps above; `bias` and `scale` hold `c` values, each
                // `out` holds the channels from `first` on.
                unsafe {
                    let xs = positions.each_ref().map(|(at, _)| x.as_ptr().offset(*at));
                    let outs = positions.each_mut().map(|(_, out)| out.as_mut_ptr().add(c0 - first) as *mut i8);
                    let k = self.kernel.as_ptr().add(c0);
                    let (b, s) = (bias.as_ptr().add(c0), self.scale.as_ptr().add(c0));
                    neon::block(xs, k, c0, taps, b, s, self.y0, unsigned, outs);
                }
                c0 += BLOCK;
            }
        }
        for (at, out) in positions {
            self.rest(x, at, taps, bias, out, first, c0, lo, hi);
        }
    }

    /// One output position's channels from `c0` on, `out` holding those from `first` on:
    /// portable blocks of [`BLOCK`], then one channel at a time.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn rest<T: Datum + Copy>(
        &self,
        x: &[i8],
        at: isize,
        taps: &[(usize, isize)],
        bias: &[i32],
        out: &mut [T],
        first: usize,
        mut c0: usize,
        lo: i32,
        hi: i32,
    ) where
        i32: AsPrimitive<T>,
    {
        let end = first + out.len();
        // SAFETY: as for `positions`; the kernel holds `taps * c` values, `k < taps * c`.
        let tap = |k: usize, offset: isize, c0: usize| unsafe {
            (
                &*(x.as_ptr().offset(at + offset).add(c0) as *const [i8; BLOCK]),
                &*(self.kernel.as_ptr().add(k + c0) as *const [i8; BLOCK]),
            )
        };
        #[cfg(target_arch = "arm")]
        let neon = crate::ops::requant::armv7neon::available();
        while c0 + BLOCK <= end {
            let mut acc: [i32; BLOCK] = bias[c0..][..BLOCK].try_into().unwrap();
            #[cfg(target_arch = "arm")]
            if neon {
                // SAFETY: NEON is there; as for `tap`, each tap's 16 values from `c0` lie
                // inside `x` and `kernel`.
                unsafe {
                    let x = x.as_ptr().offset(at).add(c0);
                    armv7neon::mac16(&mut acc, x, self.kernel.as_ptr().add(c0), taps);
                }
                let scale = Scales::PerValue(&self.scale[c0..][..BLOCK]);
                requant_run(&acc, scale, self.y0, lo, hi, &mut out[c0 - first..][..BLOCK]);
                c0 += BLOCK;
                continue;
            }
            let mut pairs = taps.chunks_exact(2);
            for pair in &mut pairs {
                let (x0, k0) = tap(pair[0].0, pair[0].1, c0);
                let (x1, k1) = tap(pair[1].0, pair[1].1, c0);
                for l in 0..BLOCK {
                    let p = (x0[l] as i16 * k0[l] as i16).wrapping_add(x1[l] as i16 * k1[l] as i16);
                    acc[l] = acc[l].wrapping_add(p as i32);
                }
            }
            if let [(k, offset)] = pairs.remainder() {
                let (x0, k0) = tap(*k, *offset, c0);
                for l in 0..BLOCK {
                    acc[l] = acc[l].wrapping_add((x0[l] as i16 * k0[l] as i16) as i32);
                }
            }
            let scale = Scales::PerValue(&self.scale[c0..][..BLOCK]);
            requant_run(&acc, scale, self.y0, lo, hi, &mut out[c0 - first..][..BLOCK]);
            c0 += BLOCK;
        }
        for ch in c0..end {
            let mut acc = bias[ch];
            for &(k, offset) in taps {
                acc = acc.wrapping_add(x[(at + offset) as usize + ch] as i32 * self.kernel[k + ch] as i32);
            }
            out[ch - first] = round_to_range(acc as f32 * self.scale[ch], self.y0, lo, hi).as_();
        }
    }
}

/// The 16-channel block's multiply-adds on 32-bit ARM with NEON, in assembly: Rust's ARMv7
/// NEON intrinsics are unstable, and LLVM keeps the portable loop scalar there (`ldrsb`,
/// `smlabb`: ~2.5 instructions per multiply-add, 88 M per static EfficientNet-Lite0
/// image on a Cortex-A15; 0.7 here).
#[cfg(target_arch = "arm")]
mod armv7neon {
    // The assembly reads each tap as two words: the kernel offset, then the input offset.
    const _: () = assert!(
        std::mem::offset_of!((usize, isize), 0) == 0 && std::mem::offset_of!((usize, isize), 1) == 4
    );

    /// `acc[l] += sum over the taps (k, offset) of x[offset + l] * kernel[k + l]` for the 16
    /// lanes `l`: two taps' products summed in i16 (`vmull.s8`, `vmlal.s8`; `2 * 128 * 127 <
    /// 2^15`), widened into the i32 accumulators (`vaddw.s16`), the same values as the
    /// portable loop. Only q0-q7 (d0-d15, which code built without NEON may hold too), all
    /// declared clobbered: the accumulators in q4-q7, each tap's operands in q0-q1 and two
    /// taps' products in q2-q3.
    ///
    /// # Safety
    /// NEON is there; `x.offset(offset)` and `kernel.add(k)` are valid for 16 bytes for each
    /// tap.
    pub unsafe fn mac16(acc: &mut [i32; 16], x: *const i8, kernel: *const i8, taps: &[(usize, isize)]) {
        unsafe {
            core::arch::asm!(
                ".fpu neon",
                "vld1.32 {{d8-d11}}, [{acc}]!",
                "vld1.32 {{d12-d15}}, [{acc}]",
                "cmp {pairs}, #0",
                "beq 3f",
                "2:",
                "ldr {t0}, [{taps}], #4",
                "ldr {t1}, [{taps}], #4",
                "add {t0}, {kernel}, {t0}",
                "add {t1}, {x}, {t1}",
                "vld1.8 {{d0-d1}}, [{t0}]",
                "vld1.8 {{d2-d3}}, [{t1}]",
                "ldr {t0}, [{taps}], #4",
                "ldr {t1}, [{taps}], #4",
                "add {t0}, {kernel}, {t0}",
                "add {t1}, {x}, {t1}",
                "vmull.s8 q2, d2, d0",
                "vmull.s8 q3, d3, d1",
                "vld1.8 {{d0-d1}}, [{t0}]",
                "vld1.8 {{d2-d3}}, [{t1}]",
                "vmlal.s8 q2, d2, d0",
                "vmlal.s8 q3, d3, d1",
                "vaddw.s16 q4, q4, d4",
                "vaddw.s16 q5, q5, d5",
                "vaddw.s16 q6, q6, d6",
                "vaddw.s16 q7, q7, d7",
                "subs {pairs}, {pairs}, #1",
                "bne 2b",
                "3:",
                "cmp {odd}, #0",
                "beq 4f",
                "ldr {t0}, [{taps}], #4",
                "ldr {t1}, [{taps}], #4",
                "add {t0}, {kernel}, {t0}",
                "add {t1}, {x}, {t1}",
                "vld1.8 {{d0-d1}}, [{t0}]",
                "vld1.8 {{d2-d3}}, [{t1}]",
                "vmull.s8 q2, d2, d0",
                "vmull.s8 q3, d3, d1",
                "vaddw.s16 q4, q4, d4",
                "vaddw.s16 q5, q5, d5",
                "vaddw.s16 q6, q6, d6",
                "vaddw.s16 q7, q7, d7",
                "4:",
                "vst1.32 {{d12-d15}}, [{acc}]",
                "sub {acc}, {acc}, #32",
                "vst1.32 {{d8-d11}}, [{acc}]",
                acc = inout(reg) acc.as_mut_ptr() => _,
                x = in(reg) x,
                kernel = in(reg) kernel,
                taps = inout(reg) taps.as_ptr() => _,
                pairs = inout(reg) taps.len() / 2 => _,
                odd = in(reg) taps.len() % 2,
                t0 = out(reg) _,
                t1 = out(reg) _,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                out("d12") _, out("d13") _, out("d14") _, out("d15") _,
                options(nostack),
            )
        }
    }
}

/// The 16-channel block on aarch64, in NEON intrinsics: LLVM vectorizes the portable loop
/// four lanes wide there, emulating the i16 wrap with shifts (50 instructions per two taps
/// instead of 12, and 75 for the requantization instead of 27).
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// For each of the `G` positions `g`, `out[g][0..16] = requant(bias + sum over the
    /// taps of x[g][offset + c0..] * kernel[k..])`: two taps' products summed in i16
    /// (`smull`, `smlal`), widened into i32 (`saddw`), then requantized by
    /// `requant::neon::requant16`. Each pair of kernel vectors is loaded once for the `G`
    /// positions.
    ///
    /// # Safety
    /// `x[g].offset(offset) + c0 + 16`, `kernel + k + 16`, `bias + 16`, `scale + 16` and
    /// `out[g] + 16` are in bounds for every tap and position.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block<const G: usize>(
        x: [*const i8; G],
        kernel: *const i8,
        c0: usize,
        taps: &[(usize, isize)],
        bias: *const i32,
        scale: *const f32,
        y0: i32,
        unsigned: bool,
        out: [*mut i8; G],
    ) {
        unsafe {
            let bias = [0, 4, 8, 12].map(|i| vld1q_s32(bias.add(i)));
            let mut acc = [bias; G];
            let add = |acc: &mut [int32x4_t; 4], lo: int16x8_t, hi: int16x8_t| {
                acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
                acc[1] = vaddw_high_s16(acc[1], lo);
                acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
                acc[3] = vaddw_high_s16(acc[3], hi);
            };
            let input = |g: usize, offset: isize| vld1q_s8(x[g].offset(offset).add(c0));
            let mut pairs = taps.chunks_exact(2);
            for pair in &mut pairs {
                let (ka, kb) = (vld1q_s8(kernel.add(pair[0].0)), vld1q_s8(kernel.add(pair[1].0)));
                for (g, acc) in acc.iter_mut().enumerate() {
                    let (xa, xb) = (input(g, pair[0].1), input(g, pair[1].1));
                    let lo = vmlal_s8(vmull_s8(vget_low_s8(xa), vget_low_s8(ka)), vget_low_s8(xb), vget_low_s8(kb));
                    let hi = vmlal_high_s8(vmull_high_s8(xa, ka), xb, kb);
                    add(acc, lo, hi);
                }
            }
            if let [(k, offset)] = pairs.remainder() {
                let ka = vld1q_s8(kernel.add(*k));
                for (g, acc) in acc.iter_mut().enumerate() {
                    let xa = input(g, *offset);
                    add(acc, vmull_s8(vget_low_s8(xa), vget_low_s8(ka)), vmull_high_s8(xa, ka));
                }
            }
            let scale = [0, 4, 8, 12].map(|i| vld1q_f32(scale.add(i)));
            for (acc, out) in acc.into_iter().zip(out) {
                crate::ops::requant::neon::requant16(acc, scale, y0, unsigned, out);
            }
        }
    }
}

/// `t` as `c` values of `T`: its own if it holds `c`, its one value repeated if it holds 1.
fn per_channel<T: Datum + Copy>(t: &Tensor, c: usize, what: &str) -> TractResult<Vec<T>> {
    let v = t.cast_to::<T>()?;
    let v = v.try_as_plain_ram()?.as_slice::<T>()?;
    match v.len() {
        1 => Ok(vec![v[0]; c]),
        n if n == c => Ok(v.to_vec()),
        n => bail!("QDepthWise: expected 1 or {c} {what}, got {n}"),
    }
}

/// `bias[c] - x0 * sum(k[t][c])` over the taps of `zone` that fall inside the input.
fn zone_bias(zone: &Zone, kernel: &[i8], bias: &[i32], x0: i32, c: usize) -> Vec<i32> {
    let mut sums = vec![0i32; c];
    for &(t, _) in zone.values_offsets.iter() {
        for (s, k) in sums.iter_mut().zip(&kernel[t * c..][..c]) {
            *s += *k as i32;
        }
    }
    // Wrapping, as the i32 accumulators of the matrix product path do (a model's bias is
    // any i32).
    bias.iter().zip(sums).map(|(b, s)| b.wrapping_sub(x0.wrapping_mul(s))).collect()
}

impl Op for QDepthWise {
    fn name(&self) -> StaticName {
        "QDepthWiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![
            format!("{:?}", self.patch),
            format!("{} channels, output zero point {}, to {:?}", self.scale.len(), self.y0, self.dt),
        ])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for QDepthWise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let output = match self.dt.unquantized() {
            DatumType::U8 => self.eval_t::<u8>(&input, 0, 255)?,
            DatumType::I8 => self.eval_t::<i8>(&input, -128, 127)?,
            dt => bail!("QDepthWise: expected u8 or i8 output, got {dt:?}"),
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for QDepthWise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type.unquantized() == DatumType::I8,
            "QDepthWise: expected one i8 input, got {inputs:?}"
        );
        Ok(tvec!(self.dt.fact(&self.output_shape.shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let points = self.patch.output_shape.iter().product::<usize>();
        let n = *self.input_shape.n().unwrap_or(&1);
        Ok(tvec!((Cost::FMA(i32::datum_type()), (self.kernel.len() * points * n).to_dim())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cnn::conv::{Conv, KernelFormat};
    use crate::ops::cnn::{PaddingSpec, PoolSpec};
    use crate::ops::nn::DataFormat;
    use tract_data::knobs::KnobScope;

    struct Case {
        n: usize,
        c: usize,
        hw: usize,
        k: usize,
        stride: usize,
        padding: PaddingSpec,
        x_dt: DatumType,
        y_dt: DatumType,
        per_channel: bool,
    }

    /// Deterministic values in `lo..=hi`.
    fn values(seed: u64, len: usize, lo: i32, hi: i32) -> Vec<i32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + ((s >> 33) % (hi - lo + 1) as u64) as i32
            })
            .collect()
    }

    fn conv_model(case: &Case) -> TractResult<TypedModel> {
        let kernel = values(1, case.c * case.k * case.k, -127, 127).iter().map(|v| *v as i8).collect();
        conv_model_with(case, kernel, DataFormat::NHWC)
    }

    fn conv_model_with(case: &Case, kernel: Vec<i8>, fmt: DataFormat) -> TractResult<TypedModel> {
        let Case { n, c, hw, k, .. } = *case;
        let signed = case.x_dt == i8::datum_type();
        let mut model = TypedModel::default();
        let shape = if fmt == DataFormat::NHWC { [n, hw, hw, c] } else { [n, c, hw, hw] };
        let x = model.add_source("x", case.x_dt.fact(shape))?;
        let bias = values(2, c, -3000, 3000);
        let k_scale: Vec<f32> = if case.per_channel {
            values(3, c, 1, 100).iter().map(|v| *v as f32 * 1e-3).collect()
        } else {
            vec![0.013]
        };
        let y0 = if case.y_dt == i8::datum_type() { -7 } else { 119 };
        let inputs = [
            model.add_const("kernel", Tensor::from_shape(&[c, 1, k, k], &kernel)?)?,
            model.add_const("bias", Tensor::from_shape(&[c], &bias)?)?,
            model.add_const("x0", tensor0(if signed { -3i32 } else { 131 }))?,
            model.add_const("x_scale", tensor0(0.021f32))?,
            model.add_const("k0", tensor0(0i32))?,
            model.add_const("k_scale", Tensor::from_shape(&[k_scale.len()], &k_scale)?)?,
            model.add_const("y0", tensor0(y0))?,
            model.add_const("y_scale", tensor0(0.047f32))?,
        ];
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: fmt,
                kernel_shape: tvec!(k, k),
                padding: case.padding.clone(),
                dilations: None,
                strides: Some(tvec!(case.stride, case.stride)),
                input_channels: c,
                output_channels: c,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: Some(case.y_dt),
        };
        let mut wires = vec![x];
        wires.extend(inputs);
        let y = model.wire_node("dw", conv, &wires)?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    fn input(case: &Case) -> TractResult<Tensor> {
        let shape = [case.n, case.hw, case.hw, case.c];
        input_of_shape(case, shape)
    }

    fn input_of_shape(case: &Case, shape: [usize; 4]) -> TractResult<Tensor> {
        let len = shape.iter().product();
        if case.x_dt == i8::datum_type() {
            let v: Vec<i8> = values(4, len, -128, 127).iter().map(|v| *v as i8).collect();
            Tensor::from_shape(&shape, &v)
        } else {
            let v: Vec<u8> = values(4, len, 0, 255).iter().map(|v| *v as u8).collect();
            Tensor::from_shape(&shape, &v)
        }
    }

    /// The optimized model's output and op names, with the direct kernel on or off.
    fn run(model: &TypedModel, input: &Tensor, direct: bool) -> TractResult<(Tensor, Vec<String>)> {
        let knob = if direct { "false" } else { "true" };
        let scope = KnobScope::new([("TRACT_DISABLE_Q_DEPTHWISE", knob)])?;
        let optimized = scope.enter(|| model.clone().into_optimized())?;
        let ops = optimized.nodes.iter().map(|n| n.op.name().to_string()).collect();
        let output = SimplePlan::new(optimized)?.run(tvec!(input.clone().into_tvalue()))?;
        Ok((output[0].clone().into_tensor(), ops))
    }

    fn cases() -> Vec<Case> {
        let mut cases = vec![];
        for (k, stride, padding) in [
            (3, 1, PaddingSpec::SameUpper),
            (3, 2, PaddingSpec::SameUpper),
            (5, 1, PaddingSpec::SameUpper),
            (5, 2, PaddingSpec::SameUpper),
            (3, 1, PaddingSpec::Valid),
            (3, 2, PaddingSpec::Explicit(tvec!(1, 0), tvec!(0, 2))),
        ] {
            for (c, per_channel) in [(32, true), (19, true), (16, false)] {
                for (x_dt, y_dt) in [
                    (u8::datum_type(), u8::datum_type()),
                    (i8::datum_type(), i8::datum_type()),
                    (u8::datum_type(), i8::datum_type()),
                ] {
                    cases.push(Case { n: 1, c, hw: 9, k, stride, padding: padding.clone(), x_dt, y_dt, per_channel });
                }
            }
        }
        cases.push(Case {
            n: 2,
            c: 48,
            hw: 7,
            k: 3,
            stride: 1,
            padding: PaddingSpec::SameUpper,
            x_dt: u8::datum_type(),
            y_dt: u8::datum_type(),
            per_channel: true,
        });
        cases
    }

    #[test]
    fn same_values_as_im2col_and_the_int8_product() -> TractResult<()> {
        for case in cases() {
            let model = conv_model(&case)?;
            let x = input(&case)?;
            let (direct, direct_ops) = run(&model, &x, true)?;
            let (im2col, im2col_ops) = run(&model, &x, false)?;
            let what = format!(
                "c={} k={} stride={} {:?} {:?}->{:?} per_channel={}",
                case.c, case.k, case.stride, case.padding, case.x_dt, case.y_dt, case.per_channel
            );
            assert!(direct_ops.iter().any(|op| op == "QDepthWiseConv"), "{what}: {direct_ops:?}");
            assert!(!direct_ops.iter().any(|op| op.contains("Im2col")), "{what}: {direct_ops:?}");
            assert!(!im2col_ops.iter().any(|op| op == "QDepthWiseConv"), "{what}: {im2col_ops:?}");
            assert_eq!(direct.datum_type(), im2col.datum_type(), "{what}");
            direct.close_enough(&im2col, Approximation::Exact).with_context(|| what.clone())?;
            // Some outputs must saturate and some not, or the case tests little.
            let y = direct.cast_to::<i32>()?;
            let y = y.try_as_plain_ram()?.as_slice::<i32>()?.to_vec();
            assert!(y.iter().collect::<std::collections::HashSet<_>>().len() > 20, "{what}: {y:?}");
        }
        Ok(())
    }

    #[test]
    fn weights_outside_minus_127_127_take_im2col() -> TractResult<()> {
        let case = Case {
            n: 1,
            c: 16,
            hw: 5,
            k: 3,
            stride: 1,
            padding: PaddingSpec::SameUpper,
            x_dt: u8::datum_type(),
            y_dt: u8::datum_type(),
            per_channel: true,
        };
        let mut kernel: Vec<i8> = values(1, 16 * 9, -127, 127).iter().map(|v| *v as i8).collect();
        kernel[5] = -128;
        let model = conv_model_with(&case, kernel, DataFormat::NHWC)?;
        let (_, ops) = run(&model, &input(&case)?, true)?;
        assert!(!ops.iter().any(|op| op == "QDepthWiseConv"), "{ops:?}");
        Ok(())
    }

    #[test]
    fn u8_output_read_as_i8_folds_into_the_op() -> TractResult<()> {
        let case = Case {
            n: 1,
            c: 32,
            hw: 8,
            k: 3,
            stride: 1,
            padding: PaddingSpec::SameUpper,
            x_dt: i8::datum_type(),
            y_dt: u8::datum_type(),
            per_channel: true,
        };
        let mut model = conv_model(&case)?;
        let y = model.output_outlets()?[0];
        let offset = model.wire_node("offset", crate::ops::quant::offset_u8_as_i8(), &[y])?;
        model.select_output_outlets(&offset)?;
        let x = input(&case)?;
        let (folded, ops) = run(&model, &x, true)?;
        assert_eq!(ops, ["Source", "QDepthWiseConv"]);
        let (reference, _) = run(&model, &x, false)?;
        folded.close_enough(&reference, Approximation::Exact)?;
        Ok(())
    }

    /// What glimpse runs: an NCHW quantized depthwise conv (as ONNX's QLinearConv loads) is
    /// moved channel-last by `conv_nhwc` and lowered to `QDepthWise` there, with the values
    /// the NCHW im2col path gives.
    #[test]
    fn conv_nhwc_lowers_a_quantized_depthwise_conv_to_the_direct_kernel() -> TractResult<()> {
        use crate::transform::ModelTransform;
        let case = Case {
            n: 1,
            c: 24,
            hw: 10,
            k: 3,
            stride: 2,
            padding: PaddingSpec::SameUpper,
            x_dt: u8::datum_type(),
            y_dt: u8::datum_type(),
            per_channel: true,
        };
        let kernel = values(1, 24 * 9, -127, 127).iter().map(|v| *v as i8).collect();
        let nchw = conv_model_with(&case, kernel, DataFormat::NCHW)?;
        let x = input_of_shape(&case, [1, 24, 10, 10])?;
        let (reference, ops) = run(&nchw, &x, true)?;
        assert!(!ops.iter().any(|op| op == "QDepthWiseConv"), "{ops:?}");
        let nhwc = super::super::nhwc::ConvNhwc.transform_into(nchw)?;
        let (direct, ops) = run(&nhwc, &x, true)?;
        assert!(ops.iter().any(|op| op == "QDepthWiseConv"), "{ops:?}");
        direct.close_enough(&reference, Approximation::Exact)
    }

    /// With several threads, each takes a range of channels (64 at a time, the last range
    /// here 19 wide, with a tail): the values are those of the im2col path.
    #[test]
    fn threads_split_the_channels() -> TractResult<()> {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        let case = Case {
            n: 1,
            c: 147,
            hw: 16,
            k: 5,
            stride: 1,
            padding: PaddingSpec::SameUpper,
            x_dt: u8::datum_type(),
            y_dt: u8::datum_type(),
            per_channel: true,
        };
        let model = conv_model(&case)?;
        let x = input(&case)?;
        let (reference, _) = run(&model, &x, false)?;
        let (threaded, ops) = multithread_tract_scope(Executor::multithread(3), || run(&model, &x, true))?;
        assert!(ops.iter().any(|op| op == "QDepthWiseConv"), "{ops:?}");
        threaded.close_enough(&reference, Approximation::Exact)
    }
}
