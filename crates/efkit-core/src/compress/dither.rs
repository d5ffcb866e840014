//! Random dithering: QSGD (`qsgd`) and natural dithering (`natural-dithering`).
//!
//! Both scale x by a norm N, round every |x_j|/N at random to one of s + 1
//! levels so that the result is unbiased, and send N once plus a level index and
//! a sign per coordinate.
//!
//! # QSGD / standard random dithering (`qsgd`, parameter `levels` = s)
//!
//! Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-efficient SGD
//! via gradient quantization and encoding", NeurIPS 2017 (arXiv:1610.02132).
//! With N = ||x||_2 and y_j = s |x_j| / N, l_j = floor(y_j):
//!
//! ```text
//! C(x)_j = (N/s) sign(x_j) xi_j,   xi_j = l_j + 1 with probability y_j - l_j, else l_j.
//! ```
//!
//! E xi_j = y_j, so C is unbiased, and Lemma 3.1 of the paper gives
//! E||C(x) - x||^2 <= min(d/s^2, sqrt(d)/s) ||x||^2: class U(omega) with
//! **omega = min(d/s^2, sqrt(d)/s)** (algorithms.md §3.2).
//!
//! # Natural dithering (`natural-dithering`, `levels` = s, `norm` = p)
//!
//! Horvath, Ho, Horvath, Sahu, Canini, Richtarik, "Natural compression for
//! distributed deep learning", arXiv:1905.10988, 2019. With N = ||x||_p
//! (p in [1, inf], default 2) and u_j = |x_j|/N in [0, 1], the levels are
//! 0 < 2^-(s-1) < ... < 1/2 < 1. A u_j in [2^e, 2^(e+1)] is rounded to 2^(e+1)
//! with probability u_j/2^e - 1 and to 2^e otherwise; a u_j below the smallest
//! level delta = 2^-(s-1) is rounded to delta with probability u_j/delta and to
//! 0 otherwise. Unbiased; the paper's (and the EF21 DL code's) constant is
//!
//! ```text
//! omega = 1/8 + t min(1, t),   t = d^(1/r) / 2^(s-1),   r = min(p, 2).
//! ```
//!
//! # The transmitted norm, and why the constants still hold
//!
//! The receiver can only use the norm as sent, so every reported value is
//! computed from the *transmitted* N: N is the computed norm (robust to
//! overflow: scaled by a power of two when needed), raised to max|x_j| if
//! floating-point error left it below, then rounded **up** to the value format
//! (`values`, default f32). Hence every ratio |x_j|/N is at most 1 (levels never
//! exceed s) and unbiasedness is exact up to f64 rounding, and N = rho ||x||
//! with rho <= rho_max = (1 + u)(1 + (d + 16) 2^-50), u = 2^-10 (f16), 2^-23
//! (f32), 0 (f64) for norms in the format's normal range.
//!
//! The published bounds assume rho = 1. We re-derived them for rho in (0, 1.6]
//! (details at [`qsgd_omega`] and [`natural_dithering_omega`]); the derived
//! bound is at most the published one unless rho - 1 is comparable with
//! s/sqrt(d) (QSGD) or 1/t (natural dithering), which only happens for f16 norms
//! and very large d. The class reports max(published, derived at rho_max), i.e.
//! the published constant whenever it is valid. (With f16 a norm below 2^-14,
//! f16's smallest normal number, may be rounded up by more than 2^-10; the
//! bound then holds only for norms in f16's normal range. A norm above the
//! format's largest finite value is refused with [`CompressError::Shape`].)
//!
//! # Random rounding, exactly, and the passes over x
//!
//! The encoder computes y_j = min(s, |x_j| (s/N)) (QSGD; s/N is computed once,
//! one rounding more than (|x_j|/N) s, and the clamp keeps every level <= s)
//! or w_j = min(2^(s-1), |x_j| (2^(s-1)/N)) = u_j/delta (natural dithering).
//! The lower level l_j and the probability q_j of the upper one follow: the
//! fraction of y_j; w_j itself below 1 (levels 0 and 1); the mantissa
//! fraction of w_j in [2^e, 2^(e+1)) (levels e + 1 and e + 2).
//!
//! The upper level is taken with probability q_j *exactly* (not up to 2^-53,
//! as a comparison with one 53-bit uniform would give). With h the first 8
//! binary digits of q_j and r the rest (q_j = (h + r)/256), one random byte b
//! per coordinate decides whenever h + b != 255: upper iff h + b >= 256. On
//! h + b = 255 (probability 2^-8) the upper level is taken iff a further
//! uniform U is below r: U's next 8 bits are a spare byte compared with the
//! next 8 digits of r by the same rule, and on a second tie U is compared
//! with the rest of r 64 bits at a time until they differ. So
//! P(upper) = h/256 + r/256 = q_j, with about 8.03 random bits per
//! coordinate. Per block of 256 coordinates, 256 + 8 bytes are drawn at once
//! from the sender's stream (`fill_bytes`): one per coordinate and spare
//! bytes for the block's first 8 ties in coordinate order (more ties, and
//! second ties, draw 64-bit words after them). The stream is used in the same
//! way for the same input, so compression is deterministic given the stream.
//!
//! Two passes over x: one for the norm (eight-lane partial sums, also the
//! finiteness screen and max|x_j|) and one that rounds, writes the decoded
//! values and stores one level byte per coordinate (or one u32 when s > 127);
//! the codes are then written from that scratch, 64 bits at a time. The hot
//! loops have no data-dependent branch except the rare tie; on x86-64 CPUs
//! with AVX2 they run compiled for AVX2 (detected at run time; the same IEEE
//! operations, so the output is the same bit for bit).
//!
//! # Wire format
//!
//! ```text
//! N                      in the value format; N = +0 iff x = 0, then nothing follows
//! mode bit               0: fixed width, 1: Elias gamma
//! per coordinate j:      level index k_j in 0..=s
//!                          mode 0: w = ceil(log2(s + 1)) bits
//!                          mode 1: Elias gamma code of k_j (BitWriter::write_gamma)
//!                        then, if k_j > 0, a sign bit (1 = negative)
//! ```
//!
//! The encoder computes the exact length of both modes and takes gamma only if it
//! is strictly shorter (it wins when most indices are 0, e.g. 1 bit per zero
//! instead of w); the decoder recomputes both lengths and rejects the other
//! choice, so every message has exactly one encoding. Level k means magnitude
//! `(N / s) * k` (QSGD) or `N * 2^(k - s)` for k >= 1 (natural dithering), the
//! same f64 expression on both sides, so sender and receiver agree bit for bit.
//!
//! The decoder also refuses levels that no vector of the sent norm gives
//! (nnz: nonzero levels; u_j = |x_j|/N, so ||u|| <= 1 in the method's norm
//! since N is at least the computed norm):
//! * QSGD: the levels are floor(s u_j) or that + 1, so their l2 norm is
//!   below s + sqrt(nnz);
//! * natural dithering: a level's magnitude m_j (in units of N) is at most
//!   2 u_j, or the smallest level 2^(1-s) where u_j is below it, so
//!   ||m||_p <= 2 + 2^(1-s) nnz^(1/p) (Minkowski).
//!
//! Both are checked with a relative slack of 1e-6 for the computed norm's
//! error, and only for a normal N (a subnormal N is computed to a few bits).
//!
//! Paper bits (documented rule, no paper counts these exactly): 32 for the norm
//! plus w + 1 per coordinate, `32 + d (ceil(log2(s + 1)) + 1)`.

use rand::RngCore as _;

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::check_input;
use super::{
    check_finite, CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat,
};
use crate::bits::{gamma_len, width_for, BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::rng::Rng;

/// Largest `levels` accepted by `qsgd`.
pub const QSGD_MAX_LEVELS: u32 = 1 << 20;

/// Largest `levels` accepted by `natural-dithering` (smallest level 2^-63).
pub const NATURAL_DITHERING_MAX_LEVELS: u32 = 64;

/// Sign flag in the packed level scratch.
const NEG: u32 = 1 << 31;

/// Coordinates quantized together (one random byte each, drawn at once).
const BLOCK: usize = 256;

/// Random bytes per block for ties (the first tie byte of up to this many
/// tied coordinates; a tie has probability 2^-8, so 256 coordinates have
/// about one, and more than 8 with probability below 10^-5).
const SPARE: usize = 8;

/// Scratch words per block in the byte-packed layout.
const BLOCK_WORDS: usize = BLOCK / 8;

/// Sign bit of an f64.
const SIGN: u64 = 1 << 63;

/// Largest s whose signed levels are packed one byte per coordinate
/// (`k | neg << 7`) in the scratch; larger s use one u32 per coordinate.
const BYTE_LEVELS_MAX: u32 = 127;

/// 2^e for e in the normal f64 range.
#[inline]
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The smallest value of `fmt` that is >= `v` (v >= 0 finite); may be +inf
/// when `v` exceeds the format's largest finite value.
pub(crate) fn round_up(fmt: ValueFormat, v: f64) -> f64 {
    debug_assert!(v >= 0.0);
    match fmt {
        ValueFormat::F64 => v,
        ValueFormat::F32 => {
            let f = v as f32;
            if (f as f64) < v {
                f32::from_bits(f.to_bits() + 1) as f64
            } else {
                f as f64
            }
        }
        ValueFormat::F16 => {
            let h = half::f16::from_f64(v);
            if h.to_f64() < v {
                half::f16::from_bits(h.to_bits() + 1).to_f64()
            } else {
                h.to_f64()
            }
        }
    }
}

/// The largest value of `fmt` that is <= `v` (v >= 0 finite).
pub(crate) fn round_down(fmt: ValueFormat, v: f64) -> f64 {
    debug_assert!(v >= 0.0);
    match fmt {
        ValueFormat::F64 => v,
        ValueFormat::F32 => {
            let f = v as f32;
            if (f as f64) > v {
                f32::from_bits(f.to_bits() - 1) as f64
            } else {
                f as f64
            }
        }
        ValueFormat::F16 => {
            let h = half::f16::from_f64(v);
            if h.to_f64() > v {
                half::f16::from_bits(h.to_bits() - 1).to_f64()
            } else {
                h.to_f64()
            }
        }
    }
}

/// Relative spacing bound u of `fmt` in its normal range (round up multiplies
/// by at most 1 + u).
pub(crate) fn format_ulp(fmt: ValueFormat) -> f64 {
    match fmt {
        ValueFormat::F16 => 1.0 / 1024.0,
        ValueFormat::F32 => 1.0 / 8_388_608.0,
        ValueFormat::F64 => 0.0,
    }
}

/// Upper bound on N / ||x|| for the transmitted norm (module docs).
fn rho_max(fmt: ValueFormat, d: usize) -> f64 {
    (1.0 + format_ulp(fmt)) * (1.0 + (d as f64 + 16.0) * pow2(-50))
}

/// Largest |x_j|.
#[inline]
pub(crate) fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// A power of two c with c * m of order 1 (in [1, 2) unless m is subnormal,
/// then below 1, or m >= 2^1023, then in [2, 4)); m > 0 finite.
#[inline]
pub(crate) fn scale_for(m: f64) -> f64 {
    let e = ((m.to_bits() >> 52) & 0x7FF) as i32 - 1023;
    pow2((-e).clamp(-1022, 1022))
}

/// ||x||_p computed robustly (no overflow or underflow): p = inf is max|x_j|;
/// p = 1, 2 scale the entries by a power of two when needed; other p take
/// the entries relative to max|x_j|.
/// `m` is max|x_j| > 0.
fn lp_norm(x: &[f64], p: f64, m: f64) -> f64 {
    let safe = (pow2(-480)..=pow2(480)).contains(&m);
    if p.is_infinite() {
        m
    } else if p == 2.0 {
        if safe {
            x.iter().map(|v| v * v).sum::<f64>().sqrt()
        } else {
            let c = scale_for(m);
            x.iter().map(|v| (v * c) * (v * c)).sum::<f64>().sqrt() / c
        }
    } else if p == 1.0 {
        if safe {
            x.iter().map(|v| v.abs()).sum()
        } else {
            let c = scale_for(m);
            x.iter().map(|v| (v * c).abs()).sum::<f64>() / c
        }
    } else {
        // relative to the largest entry: the terms lie in [0, 1] with one
        // equal to 1, so the sum is in [1, d] for any p (a large p such as
        // 1e6 overflowed with entries scaled into [1, 2) and underflows to 0
        // with any scale below 1)
        m * x
            .iter()
            .map(|v| (v.abs() / m).powf(p))
            .sum::<f64>()
            .powf(1.0 / p)
    }
}

/// The error for a norm that does not fit the wire format.
#[cold]
fn norm_overflow(fmt: ValueFormat, n: f64) -> CompressError {
    CompressError::Shape(format!(
        "norm {n:e} overflows the {}-bit wire format",
        fmt.bits()
    ))
}

/// The transmitted norm: round_up(max(computed norm, max|x_j|)), which makes
/// every |x_j| / N <= 1. Errors if it overflows the format.
fn transmitted_norm(fmt: ValueFormat, norm: f64, m: f64) -> Result<f64, CompressError> {
    let n = norm.max(m);
    let nr = round_up(fmt, n);
    if nr.is_finite() {
        Ok(nr)
    } else {
        Err(norm_overflow(fmt, n))
    }
}

/// One-pass summary of a vector (see [`stats`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    /// max |x_j| (meaningful only if `sum` is finite).
    pub max: f64,
    /// sum x_j^2 (`SQUARES`) or sum |x_j|; not finite iff some entry is not
    /// finite or the sum overflowed.
    pub sum: f64,
    /// Number of entries that are not ±0 (0 unless counted).
    pub nnz: usize,
}

/// max |x_j|, sum x_j^2 (`SQUARES = true`) or sum |x_j|, and (`COUNT`) the
/// number of nonzero entries, in one pass with eight independent lanes (vectorised; the
/// sums are eight partial sums added at the end). On x86-64 CPUs with AVX2 the
/// same code runs compiled for AVX2 (the same IEEE operations in the same
/// order, so the same result).
///
/// This doubles as the finiteness screen: `sum` is finite iff every entry is
/// finite and the sum did not overflow (callers locate a bad entry with
/// [`check_finite`] only when it is not).
pub(crate) fn stats<const SQUARES: bool, const COUNT: bool>(x: &[f64]) -> Stats {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { stats_avx2::<SQUARES, COUNT>(x) };
        }
    }
    stats_any::<SQUARES, COUNT>(x)
}

/// [`stats_any`] compiled with AVX2 enabled.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stats_avx2<const SQUARES: bool, const COUNT: bool>(x: &[f64]) -> Stats {
    stats_any::<SQUARES, COUNT>(x)
}

/// The body of [`stats`].
#[inline(always)]
fn stats_any<const SQUARES: bool, const COUNT: bool>(x: &[f64]) -> Stats {
    let mut mx = [0.0f64; 8];
    let mut sm = [0.0f64; 8];
    let mut nz = [0u64; 8];
    let mut chunks = x.chunks_exact(8);
    // (A NaN entry may be skipped by the max; it makes the sum NaN.)
    let mut step = |i: usize, v: f64| {
        let a = v.abs();
        mx[i] = if a > mx[i] { a } else { mx[i] };
        sm[i] += if SQUARES { v * v } else { a };
        if COUNT {
            nz[i] += (v != 0.0) as u64;
        }
    };
    for c in &mut chunks {
        for (i, &v) in c.iter().enumerate() {
            step(i, v);
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        step(i, v);
    }
    Stats {
        max: mx.iter().fold(0.0f64, |m, &v| m.max(v)),
        sum: sm.iter().sum(),
        nnz: nz.iter().sum::<u64>() as usize,
    }
}

/// Makes `out` a dense vector of dimension `d` whose values the caller
/// overwrites entirely (unlike [`CompressedVec::reset_dense`] it does not
/// zero values that are about to be written).
#[inline]
pub(crate) fn prepare_dense(out: &mut CompressedVec, d: usize) {
    out.dim = d;
    out.dense = true;
    out.indices.clear();
    out.values.resize(d, 0.0);
}

/// Whether a uniform random real U in [0, 1), whose binary digits are read 64
/// at a time from `rng`, is below `p` (0 <= p < 1). Exact: P(true) = p (the
/// digits are compared with those of p until they differ; p has a finite
/// binary expansion, so this ends, and continues past the first word with
/// probability 2^-64).
#[cold]
#[inline(never)]
fn uniform_below(mut p: f64, rng: &mut Rng) -> bool {
    loop {
        if p == 0.0 {
            return false;
        }
        let t = p * pow2(64);
        let hi = t as u64; // floor(t) < 2^64, exactly representable
        let r = rng.next_u64();
        if r != hi {
            return r < hi;
        }
        p = t - hi as f64; // exact: the fraction bits of t
    }
}

/// The class constant of QSGD with `s` levels in dimension `d` when the
/// transmitted norm is at most `rho` ||x||_2 (rho <= 1.6) and at least max|x_j|.
///
/// Derivation (published case rho = 1: Lemma 3.1 of arXiv:1610.02132). Let
/// y_j = s|x_j|/N, f(y) = frac(y)(1 - frac(y)); then
/// E||C(x) - x||^2 = (N/s)^2 sum_j f(y_j) and sum_j y_j^2 = S := s^2/rho^2.
///
/// * f <= 1/4 gives the bound rho^2 d/(4 s^2) ||x||^2 (<= d/s^2 ||x||^2).
/// * Let B = sum over y_j >= 1 of y_j^2; at most B coordinates have y_j >= 1,
///   each with f <= 1/4, and f(y) = y - y^2 for y < 1, so with Cauchy–Schwarz
///   sum_j f(y_j) <= h(B) := sqrt(d (S - B)) - S + (5/4) B. h is concave and
///   decreasing on [0, S] when sqrt(d) > 2.5 s/rho, so then
///   sum f <= h(0) and E||C(x) - x||^2 <= (rho sqrt(d)/s - 1) ||x||^2.
///   Otherwise sqrt(d) <= 2.5 s/rho and the first bound is at most
///   sqrt(d)/s ||x||^2 (as rho^2 sqrt(d) <= 2.5 rho s <= 4 s).
///
/// So with rho = 1 the derived bound never exceeds min(d/s^2, sqrt(d)/s), and
/// it stays below it for rho > 1 as long as (rho - 1) sqrt(d) <= s. Returns
/// max(published, derived).
pub fn qsgd_omega(d: usize, s: u32, rho: f64) -> f64 {
    let (d, s) = (d as f64, s as f64);
    let published = (d / (s * s)).min(d.sqrt() / s);
    let quarter = rho * rho * d / (4.0 * s * s);
    let derived = if d.sqrt() > 2.5 * s / rho {
        (rho * d.sqrt() / s - 1.0).min(quarter)
    } else {
        quarter
    };
    published.max(derived)
}

/// The class constant of natural dithering with `s` levels and the l_p norm in
/// dimension `d` when the transmitted norm is at most `rho` ||x||_p (rho <= 2)
/// and at least max|x_j|.
///
/// Derivation. Let delta = 2^(1-s), t = d^(1/r) delta, r = min(p, 2), and split
/// the coordinates into "big" ones (u_j >= delta) and "small" ones. A big one
/// is natural rounding of u_j, variance <= x_j^2/8; a small one has variance
/// N^2 u_j (delta - u_j) = N delta |x_j| - x_j^2. By Hölder,
/// N <= rho ||x||_p <= rho d^(1/r - 1/2) ||x||_2, so
///
/// * small part <= d N^2 delta^2/4 <= rho^2 t^2/4 ||x||^2, total
///   <= (1/8 + rho^2 t^2/4) ||x||^2;
/// * with a = ||x_small||^2/||x||^2 and ||x_small||_1 <= sqrt(d) ||x_small||_2,
///   total/||x||^2 <= (1 - a)/8 + rho t sqrt(a) - a, maximised over a in
///   [0, 1]: 1/8 + 2 rho^2 t^2/9 if rho t < 9/4, else rho t - 1.
///
/// With rho = 1 this is at most the published 1/8 + t min(1, t) (and often
/// much smaller); the function returns max(published, derived at rho).
pub fn natural_dithering_omega(d: usize, s: u32, p: f64, rho: f64) -> f64 {
    let r = if p >= 2.0 { 2.0 } else { p };
    let t = (d as f64).powf(1.0 / r) * pow2(1 - s as i32);
    let published = 0.125 + t * t.min(1.0);
    let rt = rho * t;
    let derived = if rt < 2.25 {
        0.125 + 2.0 * rt * rt / 9.0
    } else {
        rt - 1.0
    };
    published.max(derived)
}

/// Which dithering.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Uniform levels k/s, l2 norm.
    Qsgd,
    /// Power-of-two levels, l_p norm with this p (>= 1, may be +inf).
    Natural { p: f64 },
}

/// QSGD or natural dithering with s levels, built for one dimension.
#[derive(Debug, Clone)]
pub struct Dithering {
    kind: Kind,
    d: usize,
    s: u32,
    fmt: ValueFormat,
    /// Fixed width of a level index, ceil(log2(s + 1)).
    width: u32,
    omega: f64,
}

impl Dithering {
    /// QSGD with `s` levels (1..=2^20) for dimension `d`, norm sent in `fmt`.
    pub fn qsgd(d: usize, s: u32, fmt: ValueFormat) -> Result<Self, ParamError> {
        if !(1..=QSGD_MAX_LEVELS).contains(&s) {
            return Err(ParamError::invalid(
                "levels",
                format!("levels = {s} is outside 1..={QSGD_MAX_LEVELS}"),
            ));
        }
        check_dim(d)?;
        let omega = qsgd_omega(d, s, rho_max(fmt, d));
        Ok(Dithering {
            kind: Kind::Qsgd,
            d,
            s,
            fmt,
            width: width_for(s as u64),
            omega,
        })
    }

    /// Natural dithering with `s` levels (1..=64) and the l_`p` norm
    /// (p >= 1 or +inf) for dimension `d`, norm sent in `fmt`.
    pub fn natural(d: usize, s: u32, p: f64, fmt: ValueFormat) -> Result<Self, ParamError> {
        if !(1..=NATURAL_DITHERING_MAX_LEVELS).contains(&s) {
            return Err(ParamError::invalid(
                "levels",
                format!("levels = {s} is outside 1..={NATURAL_DITHERING_MAX_LEVELS}"),
            ));
        }
        if p.is_nan() || p < 1.0 {
            return Err(ParamError::invalid(
                "norm",
                format!("norm p = {p} must be >= 1 (or inf)"),
            ));
        }
        check_dim(d)?;
        let omega = natural_dithering_omega(d, s, p, rho_max(fmt, d));
        Ok(Dithering {
            kind: Kind::Natural { p },
            d,
            s,
            fmt,
            width: width_for(s as u64),
            omega,
        })
    }

    /// Level tables for the byte-packed path (s <= 127): the code and length
    /// of every signed level byte `k | neg << 7` in the given layout.
    fn code_table(&self, gamma: bool) -> [(u32, u32); 256] {
        let mut t = [(0u32, 0u32); 256];
        for (b, e) in t.iter_mut().enumerate() {
            let k = b as u32 & 0x7F;
            if k <= self.s {
                let (c, l) = self.code(k, (b >> 7) as u64 & (k > 0) as u64, gamma);
                *e = (c as u32, l);
            }
        }
        t
    }

    /// The wire code of level `k` with sign bit `neg` (0 if k = 0) in the fixed
    /// (`gamma = false`) or Elias gamma layout, as (bits, length): at most
    /// 22 bits (fixed) or 42 bits (gamma) for s <= 2^20.
    #[inline]
    fn code(&self, k: u32, neg: u64, gamma: bool) -> (u64, u32) {
        let nz = k > 0;
        if gamma {
            // Elias gamma of k + 1 (nb - 1 zeros, then k + 1 in nb bits).
            let x = k as u64 + 1;
            let len = 2 * (64 - x.leading_zeros()) - 1;
            if nz {
                ((x << 1) | neg, len + 1)
            } else {
                (x, len)
            }
        } else if nz {
            (((k as u64) << 1) | neg, self.width + 1)
        } else {
            (0, self.width)
        }
    }

    /// Randomised rounding of every coordinate (module docs): writes the
    /// decoded values into `values`, the levels into `bytes` (`PACKED`,
    /// s <= 127: one byte `k | sign << 7` per coordinate, 8 per word, first
    /// coordinate in the low byte, zero padding to whole blocks, and only for
    /// the blocks with a nonzero level, which are marked in a bitmap in
    /// `words`, bit b % 32 of word b / 32 for block b) or `words` (`k | NEG`),
    /// and returns (number of nonzero levels, sum of the Elias gamma lengths of
    /// all levels). The sign is that of x_j and is meaningless for level 0.
    ///
    /// `lvl(|x_j|)` returns `l << 8 | h`: the lower level l and the first 8
    /// binary digits h of the probability q of the upper level (q = (h +
    /// rest)/256); `rest(|x_j|)` returns the remaining fraction in [0, 1) and is
    /// only called on a tie. `mag(k)` is the magnitude of level k (+0 for
    /// k = 0).
    ///
    /// Randomness: [`BLOCK`] + [`SPARE`] bytes per block of coordinates from
    /// `fill_bytes`, byte b_j for coordinate j; the level is l + 1 iff
    /// h + b + (rest + U) >= 256 with U uniform on [0, 1), so it is decided by
    /// h + b alone unless h + b = 255 (probability 2^-8); then U < rest
    /// decides, compared first against a spare byte in the same way and on a
    /// second tie by [`uniform_below`] (ties in coordinate order). Hence
    /// P(l + 1) = q exactly. The pass over a block has no data-dependent
    /// branch (it vectorises); ties are fixed up after it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn quantize<const PACKED: bool, L, R, M>(
        x: &[f64],
        values: &mut [f64],
        rng: &mut Rng,
        lvl: L,
        rest: R,
        mag: M,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64)
    where
        L: Fn(f64) -> u32,
        R: Fn(f64) -> f64,
        M: Fn(u32) -> f64,
    {
        /// The decoded value: ±mag(k) with the sign of x, +0 for k = 0 and
        /// for a magnitude that underflowed to 0 (-0 + 0 = +0); the decoder
        /// computes the same (mag(k) | sign) + 0.
        #[inline(always)]
        fn value<M: Fn(u32) -> f64>(mag: &M, k: u32, v: f64) -> f64 {
            f64::from_bits(mag(k).to_bits() | (v.to_bits() & SIGN)) + 0.0
        }
        /// One block; adds to the tallies `t` = (nnz, glen).
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        fn block<const PACKED: bool, L, R, M>(
            xs: &[f64; BLOCK],
            os: &mut [f64; BLOCK],
            cnt: usize,
            rng: &mut Rng,
            (lvl, rest, mag): (&L, &R, &M),
            bytes: &mut Vec<u64>,
            words: &mut Vec<u32>,
            t: &mut (u64, u64),
        ) -> bool
        where
            L: Fn(f64) -> u32,
            R: Fn(f64) -> f64,
            M: Fn(u32) -> f64,
        {
            // A byte per coordinate, then SPARE bytes for the ties.
            let mut rb = [0u8; BLOCK + SPARE];
            rng.fill_bytes(&mut rb);
            // sum = l 256 + h + b: level l + (carry), tie iff the low byte is
            // 255. One pass writes the values, the signed level (a byte
            // `k | sign << 7` when PACKED, else a word `k | NEG`) and a tie flag.
            let mut lb = [0u8; BLOCK];
            let mut kk = [0u32; BLOCK];
            let mut tb = [0u8; BLOCK];
            for i in 0..BLOCK {
                let v = xs[i];
                let sum = lvl(v.abs()) + rb[i] as u32;
                let k = sum >> 8;
                os[i] = value(mag, k, v);
                if PACKED {
                    lb[i] = k as u8;
                } else {
                    kk[i] = k | (((v.to_bits() >> 63) as u32) << 31);
                }
                tb[i] = (sum as u8 == 0xFF) as u8;
            }
            // Ties (coordinate order): the carry is decided by U < rest, by
            // the same rule one byte further (a spare byte b2 against the
            // next 8 digits h2 of rest: upper iff h2 + b2 >= 256), and on a
            // second tie by uniform_below.
            let mut spare = BLOCK;
            for (wi, c) in tb.chunks_exact(8).enumerate() {
                let mut m = u64::from_le_bytes(c.try_into().expect("8"));
                while m != 0 {
                    let i = 8 * wi + (m.trailing_zeros() / 8) as usize;
                    m &= m - 1;
                    let r = rest(xs[i].abs());
                    let up = if spare < BLOCK + SPARE {
                        let z2 = r * 256.0;
                        let h2 = floor_u32(z2);
                        let sum2 = h2 + rb[spare] as u32;
                        spare += 1;
                        if sum2 == 255 {
                            uniform_below(z2 - h2 as f64, rng)
                        } else {
                            sum2 >= 256
                        }
                    } else {
                        uniform_below(r, rng)
                    };
                    let k = if PACKED {
                        lb[i] += up as u8;
                        (lb[i] & 0x7F) as u32
                    } else {
                        kk[i] += up as u32;
                        kk[i] & !NEG
                    };
                    os[i] = value(mag, k, xs[i]);
                }
            }
            // Tallies; padding coordinates have level 0 and are not counted.
            // gamma_len(k) = 1 + 2 floor(log2(k + 1)).
            t.1 += cnt as u64;
            if PACKED {
                let mut wds = [0u64; BLOCK / 8];
                for (wd, c) in wds.iter_mut().zip(lb.chunks_exact(8)) {
                    *wd = u64::from_le_bytes(c.try_into().expect("8"));
                }
                // Only blocks with a nonzero level are stored, with the signs
                // (added word by word when few words have a nonzero level).
                let nzw = wds.iter().filter(|&&wd| wd != 0).count();
                if nzw > BLOCK / 64 {
                    for (b, v) in lb.iter_mut().zip(xs) {
                        *b |= ((v.to_bits() >> 56) as u8) & 0x80;
                    }
                    for (wd, c) in wds.iter_mut().zip(lb.chunks_exact(8)) {
                        let (n1, lg) = byte_level_tally(*wd);
                        t.0 += n1;
                        t.1 += 2 * lg;
                        *wd = u64::from_le_bytes(c.try_into().expect("8"));
                    }
                } else if nzw > 0 {
                    for (wd, c) in wds.iter_mut().zip(xs.chunks_exact(8)) {
                        if *wd != 0 {
                            let (n1, lg) = byte_level_tally(*wd);
                            t.0 += n1;
                            t.1 += 2 * lg;
                            for (i, v) in c.iter().enumerate() {
                                *wd |= (v.to_bits() >> 63) << (8 * i + 7);
                            }
                        }
                    }
                }
                if nzw > 0 {
                    bytes.extend_from_slice(&wds);
                }
                nzw > 0
            } else {
                let (mut n1, mut lg) = (0u32, 0u32);
                for &l in &kk {
                    let k = l & !NEG;
                    n1 += (k != 0) as u32;
                    lg += log2_floor_plus1(k);
                }
                t.0 += n1 as u64;
                t.1 += 2 * lg as u64;
                words.extend_from_slice(&kk[..cnt]);
                true
            }
        }
        let f = (&lvl, &rest, &mag);
        let mut t = (0u64, 0u64);
        let mut xc = x.chunks_exact(BLOCK);
        let mut oc = values.chunks_exact_mut(BLOCK);
        // PACKED: `words` holds a bitmap of the blocks stored in `bytes`.
        let mark = |b: usize, nonzero: bool, words: &mut Vec<u32>| {
            if PACKED {
                if words.len() <= b / 32 {
                    words.push(0);
                }
                words[b / 32] |= (nonzero as u32) << (b % 32);
            }
        };
        let mut nb = 0;
        for (xs, os) in (&mut xc).zip(&mut oc) {
            let (xs, os) = (xs.try_into().expect("block"), os.try_into().expect("block"));
            let nonzero = block::<PACKED, _, _, _>(xs, os, BLOCK, rng, f, bytes, words, &mut t);
            mark(nb, nonzero, words);
            nb += 1;
        }
        let (xr, or) = (xc.remainder(), oc.into_remainder());
        if !xr.is_empty() {
            // Zero padding: h = 0 and rest = 0, so level 0 whatever the bits.
            let mut xs = [0.0f64; BLOCK];
            let mut os = [0.0f64; BLOCK];
            xs[..xr.len()].copy_from_slice(xr);
            let nonzero =
                block::<PACKED, _, _, _>(&xs, &mut os, xr.len(), rng, f, bytes, words, &mut t);
            mark(nb, nonzero, words);
            or.copy_from_slice(&os[..xr.len()]);
        }
        t
    }

    /// Quantizes with the kind's level rule (see [`Self::quantize`]) into the
    /// level scratch; returns (nonzero levels, sum of gamma lengths).
    ///
    /// On x86-64 CPUs with AVX2 the same code is run compiled for AVX2 (wider
    /// vectors; the same IEEE operations, so the result is bit-identical).
    fn quantize_kind(
        &self,
        x: &[f64],
        n: f64,
        values: &mut [f64],
        rng: &mut Rng,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { self.quantize_kind_avx2(x, n, values, rng, bytes, words) };
            }
        }
        self.quantize_kind_any(x, n, values, rng, bytes, words)
    }

    /// [`Self::quantize_kind_any`] compiled with AVX2 enabled.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn quantize_kind_avx2(
        &self,
        x: &[f64],
        n: f64,
        values: &mut [f64],
        rng: &mut Rng,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64) {
        self.quantize_kind_any(x, n, values, rng, bytes, words)
    }

    /// The body of [`Self::quantize_kind`] (inlined into each build).
    #[inline(always)]
    fn quantize_kind_any(
        &self,
        x: &[f64],
        n: f64,
        values: &mut [f64],
        rng: &mut Rng,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64) {
        let s = self.s;
        bytes.clear();
        words.clear();
        let packed = s <= BYTE_LEVELS_MAX;
        if packed {
            bytes.reserve(self.d.div_ceil(BLOCK) * BLOCK_WORDS);
            words.reserve(self.d.div_ceil(BLOCK).div_ceil(32));
        } else {
            words.reserve(self.d);
        }
        // For tiny N, 1/N (times up to 2^63) would overflow: scale |x_j| and N
        // by 2^1000 first (exact, as |x_j| <= N).
        let tiny = n < pow2(-900);
        match (self.kind, tiny) {
            (Kind::Qsgd, false) => self.quantize_qsgd::<false>(x, n, values, rng, bytes, words),
            (Kind::Qsgd, true) => self.quantize_qsgd::<true>(x, n, values, rng, bytes, words),
            (Kind::Natural { .. }, false) => {
                self.quantize_natural::<false>(x, n, values, rng, bytes, words)
            }
            (Kind::Natural { .. }, true) => {
                self.quantize_natural::<true>(x, n, values, rng, bytes, words)
            }
        }
    }

    /// QSGD levels: z = 256 y with y = min(s, |x_j| s/N); the lower level is
    /// floor(y), then the binary digits of frac(y) (256 s/N is an exact
    /// scaling of s/N).
    #[inline(always)]
    fn quantize_qsgd<const TINY: bool>(
        &self,
        x: &[f64],
        n: f64,
        values: &mut [f64],
        rng: &mut Rng,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64) {
        let s = self.s;
        let sf = s as f64;
        let unit = n / sf;
        let pre = if TINY { pow2(1000) } else { 1.0 };
        let c256 = (sf / (n * pre)) * 256.0;
        let ztop = sf * 256.0;
        let z = move |a: f64| {
            let z = if TINY { (a * pre) * c256 } else { a * c256 };
            if z < ztop {
                z
            } else {
                ztop
            }
        };
        // floor(z) by truncation.
        // SAFETY: 0 <= z <= 256 s <= 2^28 and z is not NaN (|x_j| <= N is
        // finite, so |x_j| 256 s/N is finite, and the clamp keeps it below
        // 256 s), so it is in range for i32.
        let lvl = move |a: f64| unsafe { z(a).to_int_unchecked::<i32>() } as u32;
        let rest = move |a: f64| {
            let z = z(a);
            z - floor_u32(z) as f64
        };
        let mag = move |k: u32| qsgd_magnitude(unit, k);
        if s <= BYTE_LEVELS_MAX {
            Self::quantize::<true, _, _, _>(x, values, rng, lvl, rest, mag, bytes, words)
        } else {
            Self::quantize::<false, _, _, _>(x, values, rng, lvl, rest, mag, bytes, words)
        }
    }

    /// Natural-dithering levels for u = min(1, |x_j|/N), through
    /// w = u 2^(s-1) = u/delta (delta = 2^(1-s), the smallest level). For
    /// w < 1 (u < delta): level 0 or 1 with P(1) = u/delta = w. For w in
    /// [2^e, 2^(e+1)), e in 0..s-1 (u in [2^(e+1-s), 2^(e+2-s))): level e + 1
    /// or e + 2 with P(upper) = w/2^e - 1, the mantissa of w; `l << 8 | h` is
    /// then read off the bits of w (exponent and top 8 mantissa bits).
    #[inline(always)]
    fn quantize_natural<const TINY: bool>(
        &self,
        x: &[f64],
        n: f64,
        values: &mut [f64],
        rng: &mut Rng,
        bytes: &mut Vec<u64>,
        words: &mut Vec<u32>,
    ) -> (u64, u64) {
        let s = self.s;
        let pre = if TINY { pow2(1000) } else { 1.0 };
        // 2^(s-1)/N: the rounded 1/N scaled exactly (N >= 2^-900 unless TINY,
        // so this stays finite).
        let inv2 = (1.0 / (n * pre)) * pow2(s as i32 - 1);
        let wtop = pow2(s as i32 - 1);
        let w = move |a: f64| {
            let w = if TINY { (a * pre) * inv2 } else { a * inv2 };
            if w < wtop {
                w
            } else {
                wtop
            }
        };
        let lvl = move |a: f64| {
            let w = w(a);
            // (biased exponent << 8 | top mantissa byte) - 1022 << 8
            let big = ((w.to_bits() >> 44) as u32).wrapping_sub(1022 << 8);
            let below = w < 1.0;
            let ws = if below { w } else { 0.0 };
            // SAFETY: 0 <= 256 ws < 256 (w >= 0 is not NaN, as |x_j| <= N).
            let small = unsafe { (ws * 256.0).to_int_unchecked::<i32>() } as u32;
            if below {
                small
            } else {
                big
            }
        };
        let rest = move |a: f64| {
            let w = w(a);
            if w < 1.0 {
                let z = w * 256.0;
                z - floor_u32(z) as f64
            } else {
                (w.to_bits() & ((1u64 << 44) - 1)) as f64 * pow2(-44)
            }
        };
        // n 2^(k-s) as (2^(k-1023) 2^(1023-s)) n, where 2^(k-1023) is the f64
        // with exponent field k (and +0 for k = 0): both products are exact
        // for k >= 1 (powers of two, N >= 2^-900 unless TINY), so this equals
        // natural_magnitude (the decoder's expression), and it is 0 for k = 0.
        let c = pow2(1023 - s as i32);
        let mag = move |k: u32| {
            if TINY {
                natural_magnitude(n, s, k)
            } else {
                (f64::from_bits((k as u64) << 52) * c) * n
            }
        };
        // s <= 64: always packed.
        Self::quantize::<true, _, _, _>(x, values, rng, lvl, rest, mag, bytes, words)
    }

    /// Writes the level codes from the scratch filled by [`Self::quantize_kind`].
    fn write_levels(&self, w: &mut BitWriter, gamma: bool, bytes: &[u64], words: &[u32]) {
        let mut pk = w.packer();
        if self.s <= BYTE_LEVELS_MAX {
            let tab = self.code_table(gamma);
            // Eight zero levels at once.
            let (z8, z8len) = if gamma {
                (0xFF, 8)
            } else {
                (0, 8 * self.width)
            };
            let mut stored = bytes.chunks_exact(BLOCK_WORDS);
            let mut left = self.d;
            for b in 0..self.d.div_ceil(BLOCK) {
                let n = left.min(BLOCK);
                left -= n;
                if (words[b / 32] >> (b % 32)) & 1 == 0 {
                    // A block of zero levels: n ones (gamma) or n w zeros.
                    let mut bits = n * z8len as usize / 8;
                    while bits > 0 {
                        let m = bits.min(64);
                        pk.put(if gamma { u64::MAX >> (64 - m) } else { 0 }, m as u32);
                        bits -= m;
                    }
                    continue;
                }
                let blk = stored.next().expect("a stored block");
                let mut n = n;
                // Runs of zero words are written 64 bits at a time.
                let mut zrun = 0usize;
                for &w8 in blk {
                    if n == 0 {
                        break;
                    }
                    if n >= 8 && w8 & LOW7 == 0 {
                        zrun += 1;
                        n -= 8;
                        continue;
                    }
                    put_zero_words(&mut pk, zrun, z8, z8len);
                    zrun = 0;
                    // At most 8 codes of at most 16 bits: gather them first.
                    let (mut acc, mut len) = (0u128, 0u32);
                    for i in 0..n.min(8) {
                        let (c, l) = tab[((w8 >> (8 * i)) & 0xFF) as usize];
                        acc = (acc << l) | c as u128;
                        len += l;
                    }
                    if len > 64 {
                        pk.put((acc >> 64) as u64, len - 64);
                        pk.put_u64(acc as u64);
                    } else {
                        pk.put(acc as u64, len);
                    }
                    n -= n.min(8);
                }
                put_zero_words(&mut pk, zrun, z8, z8len);
            }
        } else {
            for &l in words {
                let (c, len) = self.code(l & !NEG, (l >> 31) as u64, gamma);
                pk.put(c, len);
            }
        }
    }

    /// Decodes the fixed-width layout into `values`, calling `tally` with
    /// every level; returns (nonzero levels, sum of their gamma lengths).
    #[inline(always)]
    fn decode_fixed<M: Fn(u32) -> f64, T: FnMut(u32)>(
        &self,
        r: &mut BitReader<'_>,
        values: &mut [f64],
        mag: M,
        mut tally: T,
    ) -> Result<(u64, u64), DecodeError> {
        let (s, width) = (self.s, self.width);
        let end = r.position() + r.remaining();
        let per = (56 / (width + 1)) as usize; // codes per refill (>= 2)
        let (mut nnz, mut glen) = (0u64, 0u64);
        let mut win = r.window();
        for chunk in values.chunks_mut(per) {
            win.refill();
            for o in chunk {
                let b = win.peek();
                let k = (b >> (64 - width)) as u32;
                if k > s {
                    return Err(bad_level(win.position(), width as u64, end, k, s));
                }
                let nz = (k != 0) as u32;
                let neg = (b >> (63 - width)) & nz as u64;
                win.consume(width + nz);
                // + 0.0: a level whose magnitude underflowed to 0 decodes
                // as +0, as the sender reports it
                *o = f64::from_bits(mag(k).to_bits() | (neg << 63)) + 0.0;
                nnz += nz as u64;
                glen += gamma_len(k as u64);
                tally(k);
            }
        }
        win.finish()?;
        Ok((nnz, glen))
    }

    /// Decodes the Elias gamma layout into `values` (runs of level 0, one bit
    /// each, are taken many at a time), calling `tally` with every nonzero
    /// level; returns (nonzero levels, sum of their gamma lengths).
    #[inline(always)]
    fn decode_gamma<M: Fn(u32) -> f64, T: FnMut(u32)>(
        &self,
        r: &mut BitReader<'_>,
        values: &mut [f64],
        mag: M,
        mut tally: T,
    ) -> Result<(u64, u64), DecodeError> {
        let s = self.s;
        let d = values.len();
        let end = r.position() + r.remaining();
        // Largest number of leading zeros of a valid code: floor(log2(s + 1)).
        let zmax = 31 - (s + 1).leading_zeros();
        let (mut nnz, mut glen) = (0u64, 0u64);
        // Longest valid code: 2 zmax + 1 bits and a sign bit.
        let maxlen = 2 * zmax + 2;
        let mut win = r.window();
        let mut j = 0usize;
        while j < d {
            win.refill();
            while j < d && win.available() >= maxlen {
                let b = win.peek();
                let ones = (b.leading_ones().min(win.available()) as usize).min(d - j);
                if ones > 0 {
                    values[j..j + ones].fill(0.0);
                    win.consume(ones as u32);
                    glen += ones as u64;
                    j += ones;
                    continue;
                }
                let z = b.leading_zeros();
                if z > zmax {
                    return Err(bad_level(
                        win.position(),
                        z.min(63) as u64 + 1,
                        end,
                        u32::MAX,
                        s,
                    ));
                }
                let len = 2 * z + 1;
                let k = (b >> (64 - len)) as u32 - 1; // >= 1: the code starts with a zero
                if k > s {
                    return Err(bad_level(win.position(), len as u64, end, k, s));
                }
                let neg = (b >> (63 - len)) & 1;
                win.consume(len + 1);
                values[j] = f64::from_bits(mag(k).to_bits() | (neg << 63)) + 0.0;
                nnz += 1;
                glen += len as u64;
                tally(k);
                j += 1;
            }
        }
        win.finish()?;
        Ok((nnz, glen))
    }
}

/// floor(z) for 0 <= z < 2^31, without a float-to-integer conversion (so that
/// the quantizer loops vectorise): z + 2^52 rounds z to an integer n held in
/// the low mantissa bits, and n - 1 is taken when n > z. Exact.
#[inline(always)]
fn floor_u32(z: f64) -> u32 {
    const MAGIC: f64 = 4_503_599_627_370_496.0; // 2^52
    let f = z + MAGIC;
    let n = f - MAGIC; // exact
    (f.to_bits() as u32).wrapping_sub((n > z) as u32)
}

/// The low 7 bits of every byte.
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// For a word of 8 level bytes `k | sign << 7` (k <= 127): the number of
/// nonzero levels and the sum of floor(log2(k + 1)), i.e. the number of
/// (byte, j >= 1) with k >= 2^j - 1 (SWAR: byte-wise k + 128 - t sets the
/// byte's top bit iff k >= t).
#[inline(always)]
fn byte_level_tally(w: u64) -> (u64, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let k = w & LOW7;
    if k == 0 {
        return (0, 0);
    }
    // Number of bytes with the top bit set.
    let count = |t: u64| (((k + (128 - t) * ONES) >> 7) & ONES).wrapping_mul(ONES) >> 56;
    let nz = count(1);
    let mut lg = nz;
    let mut t = 3;
    while t <= 127 {
        let c = count(t);
        if c == 0 {
            break;
        }
        lg += c;
        t = 2 * t + 1;
    }
    (nz, lg)
}

/// floor(log2(k + 1)) for k < 2^31, from the exponent of k + 1 as an f64
/// (vectorises, unlike a leading-zero count).
#[inline(always)]
fn log2_floor_plus1(k: u32) -> u32 {
    (((k as i32 + 1) as f64).to_bits() >> 52) as u32 - 1023
}

/// Writes `count` words of eight zero levels, each the code `z8` of
/// `z8len` <= 64 bits (all ones or all zeros), in pieces of up to 64 bits.
#[inline]
fn put_zero_words(pk: &mut crate::bits::BitPacker<'_>, count: usize, z8: u64, z8len: u32) {
    let mut bits = count * z8len as usize;
    let all = if z8 == 0 { 0 } else { u64::MAX };
    while bits >= 64 {
        pk.put_u64(all);
        bits -= 64;
    }
    if bits > 0 {
        pk.put(all >> (64 - bits), bits as u32);
    }
}

/// Magnitude of QSGD level `k` (0..=s) for `unit` = N/s; the one expression
/// used by encoder and decoder (k < 2^31, so the i32 conversion is exact).
#[inline(always)]
fn qsgd_magnitude(unit: f64, k: u32) -> f64 {
    unit * (k as i32) as f64
}

/// Magnitude of natural-dithering level `k` (0..=s, s <= 64) for the
/// transmitted norm `n`: 0 for k = 0, else n 2^(k - s); the one expression used
/// by encoder and decoder.
#[inline(always)]
fn natural_magnitude(n: f64, s: u32, k: u32) -> f64 {
    let m = n * pow2(k as i32 - s as i32);
    if k == 0 {
        0.0
    } else {
        m
    }
}

/// The l_p norm of natural-dithering magnitudes 2^(k - s) (k >= 1), in
/// units of N, from the number of entries at each level (`counts[k]`).
fn natural_level_norm(counts: &[u64], s: u32, p: f64) -> f64 {
    let levels = counts.iter().enumerate().skip(1).filter(|(_, &c)| c > 0);
    if p.is_infinite() {
        return levels
            .map(|(k, _)| pow2(k as i32 - s as i32))
            .fold(0.0, f64::max);
    }
    levels
        .map(|(k, &c)| c as f64 * pow2(k as i32 - s as i32).powf(p))
        .sum::<f64>()
        .powf(1.0 / p)
}

/// The error for a level code of `len` bits at bit `pos` that is above s
/// (`k`; `u32::MAX` for a gamma code too long for any level), or that runs past
/// the end of the input at bit `end`.
#[cold]
#[inline(never)]
fn bad_level(pos: u64, len: u64, end: u64, k: u32, s: u32) -> DecodeError {
    if pos + len > end {
        DecodeError::Truncated {
            at: end.max(pos),
            needed: u32::try_from(pos + len - end.max(pos)).unwrap_or(u32::MAX),
        }
    } else if k == u32::MAX {
        DecodeError::invalid(
            "level",
            format!("level code longer than any level up to s = {s}"),
        )
    } else {
        DecodeError::invalid("level", format!("level {k} exceeds s = {s}"))
    }
}

fn check_dim(d: usize) -> Result<(), ParamError> {
    if d == 0 {
        return Err(ParamError::invalid("d", "dithering needs dimension d >= 1"));
    }
    Ok(())
}

/// Builds `qsgd` (parameters: `levels` required, `values`) or
/// `natural-dithering` (parameters: `levels` required, `norm` default 2, `values`).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    let fmt = value_format(spec);
    match spec.name.as_str() {
        "qsgd" => {
            only_keys(spec, &["levels", "values"])?;
            let s = spec.levels.ok_or_else(|| {
                ParamError::invalid(
                    "levels",
                    format!("qsgd needs `levels` (an integer in 1..={QSGD_MAX_LEVELS})"),
                )
            })?;
            Ok(Box::new(Dithering::qsgd(d, s, fmt)?))
        }
        "natural-dithering" => {
            only_keys(spec, &["levels", "norm", "values"])?;
            let s = spec.levels.ok_or_else(|| {
                ParamError::invalid(
                    "levels",
                    format!("natural-dithering needs `levels` (an integer in 1..={NATURAL_DITHERING_MAX_LEVELS})"),
                )
            })?;
            Ok(Box::new(Dithering::natural(
                d,
                s,
                spec.norm.unwrap_or(2.0),
                fmt,
            )?))
        }
        other => Err(ParamError::Unknown {
            what: "dithering compressor",
            name: other.to_string(),
            allowed: "qsgd, natural-dithering".into(),
        }),
    }
}

impl Compressor for Dithering {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Qsgd => "qsgd",
            Kind::Natural { .. } => "natural-dithering",
        }
    }

    fn describe(&self) -> String {
        let values = match self.fmt {
            ValueFormat::F32 => String::new(),
            f => format!(",values=f{}", f.bits()),
        };
        match self.kind {
            Kind::Qsgd => format!("qsgd(s={}{values})", self.s),
            Kind::Natural { p } => format!("natural-dithering(s={},p={p}{values})", self.s),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Unbiased { omega: self.omega }
    }

    fn is_deterministic(&self) -> bool {
        false
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        if x.len() != self.d {
            return check_input(x, self.d);
        }
        let p = match self.kind {
            Kind::Qsgd => 2.0,
            Kind::Natural { p } => p,
        };
        // One pass: max|x_j|, the l2 (or l1) sum, and the finiteness screen.
        let st = if p == 2.0 {
            stats::<true, false>(x)
        } else {
            stats::<false, false>(x)
        };
        if !st.sum.is_finite() {
            check_finite(x)?; // else the sum overflowed: lp_norm rescales below
        }
        let m = st.max;
        if m == 0.0 {
            prepare_dense(out, self.d);
            out.values.fill(0.0);
            self.fmt.write(w, 0.0);
            return Ok(());
        }
        let safe = (pow2(-480)..=pow2(480)).contains(&m);
        let norm = if p.is_infinite() {
            m
        } else if safe && p == 2.0 {
            st.sum.sqrt()
        } else if safe && p == 1.0 {
            st.sum
        } else {
            lp_norm(x, p, m)
        };
        let n = transmitted_norm(self.fmt, norm, m)?;
        let unit = n / self.s as f64;
        if !(unit * self.s as f64).is_finite() {
            return Err(norm_overflow(self.fmt, n));
        }
        prepare_dense(out, self.d);
        let sc = &mut *ctx.scratch;
        let (nnz, glen) =
            self.quantize_kind(x, n, &mut out.values, ctx.rng, &mut sc.u64s, &mut sc.u32s);
        let fixed = self.d as u64 * self.width as u64 + nnz;
        let gamma = glen + nnz;
        let use_gamma = gamma < fixed;
        w.reserve_bits(self.fmt.bits() as u64 + 1 + gamma.min(fixed));
        self.fmt.write(w, n);
        w.write_bit(use_gamma);
        self.write_levels(w, use_gamma, &sc.u64s, &sc.u32s);
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        let n = self.fmt.read(r)?;
        if n.is_sign_negative() {
            return Err(DecodeError::invalid("norm", "negative norm"));
        }
        if n == 0.0 {
            out.reset_dense(self.d);
            return Ok(());
        }
        let s = self.s;
        let unit = n / s as f64;
        if !(unit * s as f64).is_finite() {
            return Err(DecodeError::invalid(
                "norm",
                "norm too large for the level values",
            ));
        }
        // Every coordinate takes at least one bit: refuse before allocating.
        if self.d as u64 + 1 > r.remaining() {
            return Err(DecodeError::Truncated {
                at: r.position(),
                needed: u32::try_from(self.d + 1).unwrap_or(u32::MAX),
            });
        }
        let use_gamma = r.read_bit()?;
        prepare_dense(out, self.d);
        let values = &mut out.values[..];
        // The same magnitude expressions as the encoder's (quantize_kind).
        // The levels are tallied for the norm check below: QSGD sums their
        // squares (as integers: no float chain in the loop), natural
        // dithering counts each level.
        let mut squares = 0u128;
        let mut counts = [0u64; NATURAL_DITHERING_MAX_LEVELS as usize + 1];
        let res = match (self.kind, use_gamma) {
            (Kind::Qsgd, g) => {
                let mag = |k: u32| qsgd_magnitude(unit, k);
                let tally = |k: u32| squares += u128::from(u64::from(k) * u64::from(k));
                if g {
                    self.decode_gamma(r, values, mag, tally)
                } else {
                    self.decode_fixed(r, values, mag, tally)
                }
            }
            (Kind::Natural { .. }, g) => {
                let mag = |k: u32| natural_magnitude(n, s, k);
                // k <= s <= 64 was checked before the tally
                let tally = |k: u32| counts[k as usize] += 1;
                if g {
                    self.decode_gamma(r, values, mag, tally)
                } else {
                    self.decode_fixed(r, values, mag, tally)
                }
            }
        };
        let res = res.and_then(|(nnz, glen)| {
            // Levels no vector of the sent norm gives (module docs; not
            // checked for a subnormal N, which is computed to a few bits)
            if n >= f64::MIN_POSITIVE {
                let (norm, bound) = match self.kind {
                    Kind::Qsgd => ((squares as f64).sqrt(), f64::from(s) + (nnz as f64).sqrt()),
                    Kind::Natural { p } => (
                        natural_level_norm(&counts, s, p),
                        2.0 + pow2(1 - s as i32) * (nnz as f64).powf(1.0 / p),
                    ),
                };
                // relative slack for the computed norm's error
                if norm > bound * (1.0 + 1e-6) {
                    return Err(DecodeError::invalid(
                        "level",
                        format!(
                            "the levels' norm {norm:.6e} (in units of the sent norm) exceeds \
                             {bound:.6e}: no vector of the sent norm gives them"
                        ),
                    ));
                }
            }
            let fixed = self.d as u64 * self.width as u64 + nnz;
            let gamma = glen + nnz;
            if use_gamma != (gamma < fixed) {
                return Err(DecodeError::invalid(
                    "mode",
                    "the encoder would have chosen the other level layout",
                ));
            }
            Ok(())
        });
        if res.is_err() {
            out.reset_dense(self.d);
        }
        res
    }

    /// 32 for the norm plus ceil(log2(s + 1)) + 1 per coordinate.
    fn paper_bits(&self, _c: &CompressedVec) -> u64 {
        32 + self.d as u64 * (self.width as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{decode_one, encode_one};
    use crate::rng::rng_from_key;
    use rand::Rng as _;

    /// A large finite norm order (p = 1e6, close to the max norm) neither
    /// overflows nor underflows: ||x||_p lies between max|x_j| and
    /// d^(1/p) max|x_j|, and a message is produced.
    #[test]
    fn large_norm_order_is_computed_without_overflow() {
        let x = [3.0, -7.5, 0.25, 7.5, 1e-300];
        let m = 7.5;
        let n = lp_norm(&x, 1e6, m);
        assert!(n >= m && n <= m * 5f64.powf(1e-6) * (1.0 + 1e-12), "{n}");
        let c = crate::compress::build(&spec("natural-dithering", 3, Some(1e6), None), x.len())
            .unwrap();
        let e = encode_one(c.as_ref(), &x, &mut rng_from_key(1), 0).unwrap();
        assert_eq!(decode_one(c.as_ref(), &e.bytes, 0).unwrap(), e.value);
    }

    fn spec(name: &str, s: u32, p: Option<f64>, fmt: Option<ValueFormat>) -> CompressorSpec {
        let mut sp = CompressorSpec::named(name);
        sp.levels = Some(s);
        sp.norm = p;
        sp.values = fmt;
        sp
    }

    fn build(
        name: &str,
        d: usize,
        s: u32,
        p: Option<f64>,
        fmt: Option<ValueFormat>,
    ) -> Box<dyn Compressor> {
        from_spec(&spec(name, s, p, fmt), d).unwrap()
    }

    fn test_vec(d: usize, key: u64) -> Vec<f64> {
        let mut rng = rng_from_key(key);
        (0..d)
            .map(|j| match j % 6 {
                0 => 0.0,
                1 => -1.0,
                _ => (rng.gen::<f64>() - 0.5) * 10f64.powi((j % 5) as i32 - 2),
            })
            .collect()
    }

    /// The transmitted norm, read back from a message.
    fn norm_of(bytes: &[u8], fmt: ValueFormat) -> f64 {
        fmt.read(&mut BitReader::new(bytes)).unwrap()
    }

    /// Exact per-coordinate variance of the operator given the norm `n`.
    fn exact_var(c: &Dithering, x: &[f64], n: f64) -> Vec<f64> {
        let s = c.s as f64;
        x.iter()
            .map(|&v| {
                let a = v.abs();
                if a == 0.0 {
                    return 0.0;
                }
                match c.kind {
                    Kind::Qsgd => {
                        let y = (a / n) * s;
                        let f = y - y.floor();
                        let unit = n / s;
                        unit * unit * f * (1.0 - f)
                    }
                    Kind::Natural { .. } => {
                        let u = a / n;
                        let delta = pow2(1 - c.s as i32);
                        if u < delta {
                            n * n * u * (delta - u)
                        } else {
                            let lo = f64::from_bits(u.to_bits() & 0x7FF0_0000_0000_0000);
                            n * n * (u - lo) * (2.0 * lo - u)
                        }
                    }
                }
            })
            .collect()
    }

    /// Monte-Carlo check of unbiasedness and of the variance against its exact
    /// value, and of the exact value against omega.
    fn check_unbiased(c: &Dithering, x: &[f64], n_samples: usize, key: u64) {
        let d = x.len();
        let norm2: f64 = x.iter().map(|v| v * v).sum();
        let mut rng = rng_from_key(key);
        let first = encode_one(c, x, &mut rng, 0).unwrap();
        let n = norm_of(&first.bytes, c.fmt);
        let var = exact_var(c, x, n);
        let total: f64 = var.iter().sum();
        let omega = match c.class() {
            CompressorClass::Unbiased { omega } => omega,
            _ => unreachable!(),
        };
        assert!(
            total <= omega * norm2 * (1.0 + 1e-12),
            "{}: exact variance {total} > omega {omega} * {norm2}",
            c.describe()
        );
        let mut mean = vec![0.0; d];
        let (mut s1, mut s2) = (0.0, 0.0);
        for _ in 0..n_samples {
            let e = encode_one(c, x, &mut rng, 0).unwrap();
            assert_eq!(norm_of(&e.bytes, c.fmt), n);
            let err: f64 = e
                .value
                .values
                .iter()
                .zip(x)
                .map(|(q, v)| (q - v) * (q - v))
                .sum();
            s1 += err;
            s2 += err * err;
            for (m, q) in mean.iter_mut().zip(&e.value.values) {
                *m += q;
            }
        }
        let ns = n_samples as f64;
        let mv = s1 / ns;
        let sd = ((s2 / ns - mv * mv).max(0.0) / ns).sqrt();
        assert!(
            (mv - total).abs() <= 6.0 * sd + 1e-9 * norm2,
            "{}: MC variance {mv} vs exact {total} (sd {sd})",
            c.describe()
        );
        for j in 0..d {
            let tol = 6.0 * (var[j] / ns).sqrt() + 1e-12 * n;
            assert!(
                (mean[j] / ns - x[j]).abs() <= tol,
                "{}: coordinate {j}: {} vs {}",
                c.describe(),
                mean[j] / ns,
                x[j]
            );
        }
    }

    fn dith(name: &str, d: usize, s: u32, p: Option<f64>, fmt: Option<ValueFormat>) -> Dithering {
        let fmt = fmt.unwrap_or_default();
        match name {
            "qsgd" => Dithering::qsgd(d, s, fmt).unwrap(),
            _ => Dithering::natural(d, s, p.unwrap_or(2.0), fmt).unwrap(),
        }
    }

    #[test]
    fn qsgd_unbiased_and_variance_bounded() {
        let x = test_vec(24, 1);
        for s in [1, 2, 5, 16] {
            check_unbiased(&dith("qsgd", 24, s, None, None), &x, 20_000, s as u64);
        }
        // Equal magnitudes: the near-worst case of the sqrt(d)/s branch.
        let x: Vec<f64> = (0..64)
            .map(|j| if j % 3 == 0 { -0.3 } else { 0.3 })
            .collect();
        check_unbiased(
            &dith("qsgd", 64, 2, None, Some(ValueFormat::F16)),
            &x,
            20_000,
            7,
        );
        // One spike.
        let mut x = vec![0.0; 10];
        x[3] = -2.5;
        check_unbiased(
            &dith("qsgd", 10, 3, None, Some(ValueFormat::F64)),
            &x,
            2_000,
            8,
        );
    }

    #[test]
    fn natural_dithering_unbiased_and_variance_bounded() {
        let x = test_vec(30, 2);
        for (s, p) in [
            (1, 2.0),
            (3, 2.0),
            (8, 2.0),
            (3, 1.0),
            (4, f64::INFINITY),
            (5, 3.5),
            (2, 1.5),
        ] {
            check_unbiased(
                &dith("natural-dithering", 30, s, Some(p), None),
                &x,
                20_000,
                s as u64 + 100,
            );
        }
        let x: Vec<f64> = (0..64)
            .map(|j| if j % 2 == 0 { 1e-3 } else { -1e-3 })
            .collect();
        check_unbiased(
            &dith(
                "natural-dithering",
                64,
                2,
                Some(2.0),
                Some(ValueFormat::F16),
            ),
            &x,
            20_000,
            9,
        );
    }

    #[test]
    fn omega_is_the_published_constant_in_normal_regimes() {
        for &(d, s) in &[
            (10usize, 1u32),
            (100, 4),
            (10_000, 3),
            (1_000_000, 16),
            (4_000_000_000, 1),
        ] {
            let c = Dithering::qsgd(d, s, ValueFormat::F32).unwrap();
            let (df, sf) = (d as f64, s as f64);
            assert_eq!(c.omega, (df / (sf * sf)).min(df.sqrt() / sf), "d {d} s {s}");
        }
        for &(d, s, p) in &[
            (10usize, 1u32, 2.0),
            (100, 4, 2.0),
            (10_000, 8, 1.0),
            (1_000_000, 3, f64::INFINITY),
        ] {
            let c = Dithering::natural(d, s, p, ValueFormat::F32).unwrap();
            let r = p.min(2.0);
            let t = (d as f64).powf(1.0 / r) / 2f64.powi(s as i32 - 1);
            assert_eq!(c.omega, 0.125 + t * t.min(1.0));
        }
        // Derived bound below the published one at rho = 1.
        for d in [1usize, 2, 5, 30, 1000, 1 << 20] {
            for s in [1u32, 2, 3, 7, 50] {
                let (df, sf) = (d as f64, s as f64);
                assert_eq!(qsgd_omega(d, s, 1.0), (df / (sf * sf)).min(df.sqrt() / sf));
                for p in [1.0, 1.5, 2.0, 4.0, f64::INFINITY] {
                    let r = p.min(2.0);
                    let t = df.powf(1.0 / r) / 2f64.powi(s as i32 - 1);
                    assert_eq!(
                        natural_dithering_omega(d, s, p, 1.0),
                        0.125 + t * t.min(1.0)
                    );
                }
            }
        }
        // f16 norm at huge d with s = 1: the rounding of the norm matters, the
        // reported constant is larger than the published one.
        let c = Dithering::qsgd(1 << 30, 1, ValueFormat::F16).unwrap();
        assert!(c.omega > (1u64 << 15) as f64);
    }

    #[test]
    fn round_up_and_down() {
        for fmt in [ValueFormat::F16, ValueFormat::F32, ValueFormat::F64] {
            for &v in &[0.0, 1e-9, 0.1, 1.0, 3.3, 12345.678, 6e4] {
                let u = round_up(fmt, v);
                let dn = round_down(fmt, v);
                assert!(
                    u >= v && dn <= v && fmt.round(u) == u && fmt.round(dn) == dn,
                    "{fmt:?} {v}"
                );
                assert!(u - dn <= v * 2.0 * format_ulp(fmt) + 1e-7, "{fmt:?} {v}");
            }
        }
        assert!(round_up(ValueFormat::F16, 70000.0).is_infinite());
        assert!(round_up(ValueFormat::F16, 65504.5).is_infinite());
        assert_eq!(round_up(ValueFormat::F16, 65504.0), 65504.0);
    }

    #[test]
    fn norm_is_robust_to_scale() {
        for p in [1.0, 2.0, 3.0, f64::INFINITY] {
            let x = [3.0, -4.0, 0.0];
            let base = lp_norm(&x, p, 4.0);
            for e in [-1000, -500, -100, 0, 100, 500, 1000] {
                let c = 2f64.powi(e);
                let y: Vec<f64> = x.iter().map(|v| v * c).collect();
                let n = lp_norm(&y, p, 4.0 * c);
                assert!((n / c / base - 1.0).abs() < 1e-14, "p {p} e {e}: {n}");
            }
        }
        assert_eq!(lp_norm(&[3.0, -4.0], 2.0, 4.0), 5.0);
    }

    fn roundtrip(c: &dyn Compressor, x: &[f64], key: u64) -> crate::compress::Encoded {
        let mut rng = rng_from_key(key);
        let enc = encode_one(c, x, &mut rng, 0).unwrap();
        assert_eq!(enc.wire_bits, 8 * enc.bytes.len() as u64);
        let dec = decode_one(c, &enc.bytes, 0).unwrap();
        assert!(dec.bit_eq(&enc.value), "{}", c.describe());
        assert!(dec.dense && dec.values.len() == x.len());
        enc
    }

    #[test]
    fn round_trips_are_bit_exact_in_both_layouts() {
        let mut seen = [false; 2];
        for name in ["qsgd", "natural-dithering"] {
            for fmt in [None, Some(ValueFormat::F16), Some(ValueFormat::F64)] {
                for &d in &[1usize, 2, 7, 100, 333] {
                    for s in [1u32, 2, 3, 8, 40] {
                        let c = build(name, d, s, None, fmt);
                        let x = test_vec(d, d as u64 + s as u64);
                        let enc = roundtrip(c.as_ref(), &x, 5);
                        assert_eq!(
                            enc.paper_bits,
                            32 + d as u64 * (width_for(s as u64) as u64 + 1)
                        );
                        // Which layout was used: the mode bit follows the norm.
                        let mut r = BitReader::new(&enc.bytes);
                        let f = fmt.unwrap_or_default();
                        if f.read(&mut r).unwrap() > 0.0 {
                            seen[r.read_bit().unwrap() as usize] = true;
                        }
                        // Sparse-ish input: one spike, many tiny entries.
                        let mut y = vec![1e-6; d];
                        y[d / 2] = 100.0;
                        roundtrip(c.as_ref(), &y, 6);
                    }
                }
            }
        }
        assert!(seen[0] && seen[1], "both layouts exercised: {seen:?}");
    }

    #[test]
    fn levels_are_within_range_and_signs_kept() {
        let c = dith("natural-dithering", 50, 3, Some(2.0), None);
        let x = test_vec(50, 3);
        let mut rng = rng_from_key(4);
        let e = encode_one(&c, &x, &mut rng, 0).unwrap();
        let n = norm_of(&e.bytes, ValueFormat::F32);
        let allowed = [0.0, n / 4.0, n / 2.0, n];
        for (q, v) in e.value.values.iter().zip(&x) {
            assert!(allowed.contains(&q.abs()), "{q}");
            assert!(*q == 0.0 || q.signum() == v.signum());
            assert_ne!(q.to_bits(), (-0.0f64).to_bits());
        }
        let c = dith("qsgd", 50, 4, None, None);
        let e = encode_one(&c, &x, &mut rng, 0).unwrap();
        let n = norm_of(&e.bytes, ValueFormat::F32);
        for (q, v) in e.value.values.iter().zip(&x) {
            let k = q.abs() / (n / 4.0);
            assert!((k - k.round()).abs() < 1e-9 && k <= 4.0 + 1e-9);
            assert!(*q == 0.0 || q.signum() == v.signum());
            // |x_j| lies between the two neighbouring levels.
            assert!((q.abs() - v.abs()).abs() <= n / 4.0 * (1.0 + 1e-9));
        }
    }

    #[test]
    fn zero_vector_sends_only_the_norm() {
        for name in ["qsgd", "natural-dithering"] {
            let c = build(name, 20, 3, None, None);
            let enc = roundtrip(c.as_ref(), &[0.0; 20], 1);
            assert_eq!(enc.bytes, vec![0, 0, 0, 0]);
            assert!(enc.value.values.iter().all(|v| v.to_bits() == 0));
            let enc = roundtrip(c.as_ref(), &[-0.0; 20], 1);
            assert_eq!(enc.bytes, vec![0, 0, 0, 0]);
        }
    }

    #[test]
    fn a_norm_whose_levels_underflow_decodes_as_sent() {
        // N = 5e-324 (f64): N/s rounds to 0, so every level's magnitude is 0;
        // the receiver must decode +0 where the sender reports +0, whatever
        // the sign bits say (found by review: it decoded -0)
        for (name, levels) in [
            ("qsgd", &[3u32, 127, 128, 1000][..]),
            ("natural-dithering", &[3, 64]),
        ] {
            for &s in levels {
                for d in [1usize, 2, 63] {
                    let c = build(name, d, s, None, Some(ValueFormat::F64));
                    let x: Vec<f64> = (0..d)
                        .map(|j| if j % 2 == 0 { -5e-324 } else { 5e-324 })
                        .collect();
                    for key in 0..4 {
                        roundtrip(c.as_ref(), &x, key);
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_magnitudes() {
        let mut rng = rng_from_key(1);
        for name in ["qsgd", "natural-dithering"] {
            let c = build(name, 4, 3, None, Some(ValueFormat::F64));
            let x = [1e300, -1e300, 5e299, 0.0];
            let e = encode_one(c.as_ref(), &x, &mut rng, 0).unwrap();
            assert!(e.value.values.iter().all(|v| v.is_finite()));
            roundtrip(c.as_ref(), &x, 2);
            let x = [1e-310, -3e-310, 0.0, 5e-320];
            roundtrip(c.as_ref(), &x, 3);
            let c = build(name, 2, 3, None, Some(ValueFormat::F16));
            let e = encode_one(c.as_ref(), &[7e4, 1.0], &mut rng, 0).unwrap_err();
            assert!(
                matches!(e, CompressError::Shape(ref m) if m.contains("overflows")),
                "{e:?}"
            );
            let c = build(name, 2, 3, None, None);
            assert!(encode_one(c.as_ref(), &[1e39, 1.0], &mut rng, 0).is_err());
            assert!(encode_one(c.as_ref(), &[3e38, 1.0], &mut rng, 0).is_ok());
        }
    }

    #[test]
    fn non_finite_and_wrong_length_are_errors() {
        let mut rng = rng_from_key(1);
        for name in ["qsgd", "natural-dithering"] {
            let c = build(name, 3, 3, None, None);
            let e = encode_one(c.as_ref(), &[1.0, f64::NAN, 0.0], &mut rng, 0).unwrap_err();
            assert!(matches!(e, CompressError::NonFinite { index: 1, .. }));
            let e = encode_one(c.as_ref(), &[1.0, 2.0, f64::INFINITY], &mut rng, 0).unwrap_err();
            assert!(matches!(e, CompressError::NonFinite { index: 2, .. }));
            assert!(encode_one(c.as_ref(), &[1.0], &mut rng, 0).is_err());
        }
    }

    #[test]
    fn truncated_corrupted_and_garbage_input() {
        for name in ["qsgd", "natural-dithering"] {
            let d = 40;
            let c = build(name, d, 5, None, None);
            let x = test_vec(d, 9);
            let enc = roundtrip(c.as_ref(), &x, 9);
            for cut in 0..enc.bytes.len() {
                assert!(decode_one(c.as_ref(), &enc.bytes[..cut], 0).is_err());
            }
            let mut longer = enc.bytes.clone();
            longer.push(0);
            assert!(decode_one(c.as_ref(), &longer, 0).is_err());
            // Negative norm.
            let mut bad = enc.bytes.clone();
            bad[0] |= 0x80;
            assert!(matches!(
                decode_one(c.as_ref(), &bad, 0),
                Err(DecodeError::Invalid { .. })
            ));
            // Level above s (= 5, 3-bit field): first level field set to 7.
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(false);
            w.write_bits(7, 3);
            w.write_bit(false);
            for _ in 1..d {
                w.write_bits(0, 3);
            }
            assert!(matches!(
                decode_one(c.as_ref(), w.finish(), 0),
                Err(DecodeError::Invalid { .. })
            ));
            // Non-canonical layout: all zero levels in the gamma layout would be
            // shorter, so the fixed layout is rejected...
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(false);
            for _ in 0..d {
                w.write_bits(0, 3);
            }
            assert!(matches!(
                decode_one(c.as_ref(), w.finish(), 0),
                Err(DecodeError::Invalid { .. })
            ));
            // ... and accepted in gamma form.
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(true);
            for _ in 0..d {
                w.write_gamma(0);
            }
            let v = decode_one(c.as_ref(), w.finish(), 0).unwrap();
            assert!(v.values.iter().all(|&q| q == 0.0));
            // Random bytes never panic; decoded values are finite.
            let mut g = rng_from_key(10);
            for _ in 0..3000 {
                let len = g.gen_range(0..40);
                let mut bytes: Vec<u8> = (0..len).map(|_| g.gen()).collect();
                if g.gen_bool(0.5) && len >= 4 {
                    bytes[..4].copy_from_slice(&1.0f32.to_bits().to_be_bytes());
                }
                if let Ok(v) = decode_one(c.as_ref(), &bytes, 0) {
                    assert!(v.values.iter().all(|q| q.is_finite()));
                    assert_eq!(v.values.len(), d);
                }
            }
        }
    }

    /// Levels whose norm no vector of the sent norm reaches are refused:
    /// QSGD's l2 norm above s + sqrt(nnz), natural dithering's l_p norm of
    /// the magnitudes above 2 + 2^(1-s) nnz^(1/p) times N; the bounds'
    /// edges and every encoder output (including inputs whose levels mostly
    /// round up) decode.
    #[test]
    fn levels_beyond_any_vector_of_the_norm_are_refused() {
        let (d, s) = (40, 5);
        // levels given per entry, each with a + sign, in the layout the
        // encoder would choose (fixed: 3-bit levels; gamma: Elias gamma of
        // level + 1)
        let message = |levels: &dyn Fn(usize) -> u64| {
            let ks: Vec<u64> = (0..d).map(levels).collect();
            let nnz = ks.iter().filter(|&&k| k != 0).count() as u64;
            let glen: u64 = ks.iter().map(|&k| gamma_len(k)).sum();
            let gamma = glen + nnz < 3 * d as u64 + nnz;
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(gamma);
            for &k in &ks {
                if gamma {
                    w.write_gamma(k);
                } else {
                    w.write_bits(k, 3);
                }
                if k != 0 {
                    w.write_bit(false);
                }
            }
            w.finish().to_vec()
        };
        let first = |n: usize, k: u64| move |j: usize| if j < n { k } else { 0 };
        let refused = |c: &dyn Compressor, bytes: &[u8]| {
            let e = decode_one(c, bytes, 0).unwrap_err();
            assert!(e.to_string().contains("no vector of the sent norm"), "{e}");
        };
        let qsgd = build("qsgd", d, s, None, None);
        // every level s: ||l|| = 5 sqrt(40) = 31.6 > 5 + sqrt(40) = 11.3
        refused(qsgd.as_ref(), &message(&|_| 5));
        // 12 levels of 4: 13.9 > 5 + sqrt(12) = 8.5; 4 of 4: 8 > 5 + 2
        refused(qsgd.as_ref(), &message(&first(12, 4)));
        refused(qsgd.as_ref(), &message(&first(4, 4)));
        // 2 levels of 4: 5.66 <= 5 + 1.41: accepted (x = (1, 1, 0, ...)
        // rounds to levels 4 and 4 with positive probability)
        let v = decode_one(qsgd.as_ref(), &message(&first(2, 4)), 0).unwrap();
        assert!(v.values[0] > 0.0 && v.values[0] == v.values[1]);
        assert!(v.values[2..].iter().all(|&q| q == 0.0));
        // natural dithering, s = 5: level k is N 2^(k - 5)
        let l2 = build("natural-dithering", d, s, Some(2.0), None);
        // all at level 5: sqrt(40) = 6.3 > 2 + sqrt(40)/16 = 2.4;
        // 10 at level 5: 3.16 > 2 + sqrt(10)/16 = 2.2
        refused(l2.as_ref(), &message(&|_| 5));
        refused(l2.as_ref(), &message(&first(10, 5)));
        // 4 at level 5: 2 <= 2 + 2/16; all at level 3 (what equal entries
        // round up to): 0.25 sqrt(40) = 1.58: accepted
        assert!(decode_one(l2.as_ref(), &message(&first(4, 5)), 0).is_ok());
        assert!(decode_one(l2.as_ref(), &message(&|_| 3), 0).is_ok());
        // l1: all at level 5: 40 > 2 + 40/16; two: 2 <= 2 + 2/16
        let l1 = build("natural-dithering", d, s, Some(1.0), None);
        refused(l1.as_ref(), &message(&|_| 5));
        assert!(decode_one(l1.as_ref(), &message(&first(2, 5)), 0).is_ok());
        // max norm: every magnitude is at most N, so nothing is refused
        let linf = build("natural-dithering", d, s, Some(f64::INFINITY), None);
        assert!(decode_one(linf.as_ref(), &message(&|_| 5), 0).is_ok());
        // encoder outputs decode, for vectors whose levels mostly round up
        let mut rng = rng_from_key(3);
        let kinds: &[(&str, &[u32], Option<f64>)] = &[
            ("qsgd", &[1, 2, 5, 127, 1000, 1 << 20], None),
            ("natural-dithering", &[1, 2, 5, 64], Some(1.0)),
            ("natural-dithering", &[1, 2, 5, 64], Some(2.0)),
            ("natural-dithering", &[1, 3, 64], Some(3.0)),
            ("natural-dithering", &[1, 3, 64], Some(f64::INFINITY)),
        ];
        for &(name, levels, p) in kinds {
            for &levels in levels {
                for dim in [1usize, 7, 40, 1000] {
                    let c = build(name, dim, levels, p, None);
                    for case in 0..4 {
                        let x: Vec<f64> = (0..dim)
                            .map(|j| match case {
                                0 => 1.0,
                                1 => 1.0 + (j % 3) as f64 * 1e-3,
                                2 => (j as f64 * 0.37).sin(),
                                _ => rng.gen_range(-1.0..1.0),
                            })
                            .collect();
                        for _ in 0..5 {
                            let enc = encode_one(c.as_ref(), &x, &mut rng, 0).unwrap();
                            decode_one(c.as_ref(), &enc.bytes, 0).unwrap_or_else(|e| {
                                panic!("{name} s = {levels} p = {p:?}, d = {dim}, case {case}: {e}")
                            });
                        }
                    }
                }
            }
        }
    }

    /// Every block boundary, both level stores (bytes for s <= 127, words
    /// above) and both wire layouts round-trip bit for bit.
    #[test]
    fn block_boundaries_and_level_stores_round_trip() {
        let mut seen = [false; 2];
        let cases: &[(&str, u32, Option<f64>)] = &[
            ("qsgd", 1, None),
            ("qsgd", 4, None),
            ("qsgd", 127, None),
            ("qsgd", 128, None),
            ("qsgd", 1000, None),
            ("qsgd", QSGD_MAX_LEVELS, None),
            ("natural-dithering", 1, None),
            ("natural-dithering", 4, Some(1.0)),
            ("natural-dithering", 64, Some(f64::INFINITY)),
        ];
        for &d in &[1usize, 7, 63, 64, 65, 255, 256, 257, 511, 513, 1000] {
            for &(name, s, p) in cases {
                let c = build(name, d, s, p, None);
                let x = test_vec(d, d as u64 * 31 + s as u64);
                let enc = roundtrip(c.as_ref(), &x, 11);
                let mut r = BitReader::new(&enc.bytes);
                if ValueFormat::F32.read(&mut r).unwrap() > 0.0 {
                    seen[r.read_bit().unwrap() as usize] = true;
                }
                // A spike: nearly all levels 0 (the zero-block paths).
                let mut y = vec![1e-3; d];
                y[d / 3] = -50.0;
                roundtrip(c.as_ref(), &y, 12);
                // Equal magnitudes: nearly all levels nonzero.
                let z: Vec<f64> = (0..d)
                    .map(|j| if j % 2 == 0 { 1.0 } else { -1.0 })
                    .collect();
                roundtrip(c.as_ref(), &z, 13);
            }
        }
        assert!(seen[0] && seen[1], "both layouts exercised: {seen:?}");
    }

    /// The AVX2 build (where the CPU has it) and the portable build of the
    /// rounding pass give the same values, levels, tallies and use of the
    /// random stream.
    #[test]
    fn dispatched_and_portable_quantizers_agree() {
        let d = 1000;
        let x = test_vec(d, 5);
        let m = max_abs(&x);
        for (name, s, p) in [
            ("qsgd", 4u32, None),
            ("qsgd", 300, None),
            ("natural-dithering", 6, Some(2.0)),
        ] {
            let c = dith(name, d, s, p, None);
            // A normal norm, and a tiny one (the pre-scaled path).
            let tiny: Vec<f64> = x.iter().map(|v| v * 1e-310).collect();
            for (xs, n) in [(x.clone(), 1.5 * m), (tiny, 1.5 * m * 1e-310)] {
                let (mut r1, mut r2) = (rng_from_key(1), rng_from_key(1));
                let (mut v1, mut v2) = (vec![0.0; d], vec![0.0; d]);
                let (mut b1, mut w1, mut b2, mut w2) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let t1 = c.quantize_kind(&xs, n, &mut v1, &mut r1, &mut b1, &mut w1);
                let t2 = c.quantize_kind_any(&xs, n, &mut v2, &mut r2, &mut b2, &mut w2);
                assert_eq!(t1, t2, "{name}");
                assert!(
                    v1.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name}"
                );
                assert!(v1.iter().any(|&v| v != 0.0), "{name}: some nonzero level");
                assert_eq!((b1, w1), (b2, w2), "{name}");
                assert_eq!(r1.next_u64(), r2.next_u64(), "{name}: same randomness used");
            }
        }
    }

    /// P(upper level) = q exactly, also when the first random byte ties
    /// (h + b = 255): for q = (h + 1/2)/256 a tie decides half of the time,
    /// so a wrong tie rule would move the count by d/512, about 13 standard
    /// deviations here.
    #[test]
    fn upper_level_probability_is_exact_including_ties() {
        let d = 1 << 18;
        // QSGD on d equal entries: N = sqrt(d) = 512 exactly, y = s/512.
        for s in [1u32, 3, 255, 511] {
            let c = Dithering::qsgd(d, s, ValueFormat::F64).unwrap();
            let e = encode_one(&c, &vec![1.0; d], &mut rng_from_key(s as u64), 0).unwrap();
            assert_eq!(norm_of(&e.bytes, ValueFormat::F64), 512.0);
            let q = s as f64 / 512.0 - (s / 512) as f64;
            let up = e.value.values.iter().filter(|&&v| v > 0.0).count() as f64;
            let sd = (d as f64 * q * (1.0 - q)).sqrt();
            assert!(
                (up - d as f64 * q).abs() <= 5.0 * sd,
                "qsgd s {s}: {up} vs {}",
                d as f64 * q
            );
        }
        // Natural dithering, l_inf norm, s = 2 (delta = 1/2): an anchor 1.0
        // (N = 1) and d - 1 entries v, with P(upper) = q = 3/512 below delta
        // (v = 3/1024, levels 0 and 1/2) and above it (v = 1/2 + 3/1024,
        // levels 1/2 and 1).
        for (v, lower, upper) in [(3.0 / 1024.0, 0.0, 0.5), (0.5 + 3.0 / 1024.0, 0.5, 1.0)] {
            let c = Dithering::natural(d, 2, f64::INFINITY, ValueFormat::F32).unwrap();
            let mut x = vec![v; d];
            x[0] = 1.0;
            let e = encode_one(&c, &x, &mut rng_from_key(9), 0).unwrap();
            assert_eq!(norm_of(&e.bytes, ValueFormat::F32), 1.0);
            let vals = &e.value.values[1..];
            assert!(vals.iter().all(|&q| q == lower || q == upper));
            let up = vals.iter().filter(|&&q| q == upper).count() as f64;
            let (n, q) = ((d - 1) as f64, 3.0 / 512.0);
            let sd = (n * q * (1.0 - q)).sqrt();
            assert!(
                (up - n * q).abs() <= 5.0 * sd,
                "natural v {v}: {up} vs {}",
                n * q
            );
        }
    }

    /// The one-pass statistics: dispatched and portable builds agree bit for
    /// bit, and the values are the max, the sums and the nonzero count.
    #[test]
    fn stats_agree_and_are_right() {
        let mut x = test_vec(1003, 21);
        x[7] = -0.0;
        for (sq, st, any) in [
            (true, stats::<true, true>(&x), stats_any::<true, true>(&x)),
            (
                false,
                stats::<false, true>(&x),
                stats_any::<false, true>(&x),
            ),
        ] {
            assert_eq!(
                (st.max.to_bits(), st.sum.to_bits(), st.nnz),
                (any.max.to_bits(), any.sum.to_bits(), any.nnz)
            );
            assert_eq!(st.max, max_abs(&x));
            assert_eq!(st.nnz, x.iter().filter(|v| **v != 0.0).count());
            let want: f64 = x.iter().map(|v| if sq { v * v } else { v.abs() }).sum();
            assert!(
                (st.sum - want).abs() <= 1e-12 * want,
                "{} vs {want}",
                st.sum
            );
        }
        assert_eq!(stats::<true, false>(&x).nnz, 0);
        assert!(stats::<true, true>(&[1.0, f64::NAN]).sum.is_nan());
        assert!(stats::<false, true>(&[f64::INFINITY, 1.0])
            .sum
            .is_infinite());
    }

    /// The tie rule's comparison: zero never wins and draws nothing; a
    /// comparison with p = 1/2 is decided by the top bit of the next word.
    #[test]
    fn uniform_below_compares_exactly() {
        let mut a = rng_from_key(3);
        let mut b = rng_from_key(3);
        assert!(!uniform_below(0.0, &mut a));
        assert_eq!(a.next_u64(), b.next_u64(), "no randomness drawn for p = 0");
        for _ in 0..100 {
            let top = b.clone().next_u64() >> 63;
            assert_eq!(uniform_below(0.5, &mut b), top == 0);
        }
        let n = 20_000;
        for p in [0.3, 0.999, 1e-3] {
            let hits = (0..n).filter(|_| uniform_below(p, &mut a)).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((hits - n as f64 * p).abs() <= 5.0 * sd, "p {p}: {hits}");
        }
    }

    /// Steady state: once the buffers have grown (every input seen twice),
    /// compressing allocates nothing (no buffer grows). Capacities, not
    /// addresses, are compared: a growth may be done in place by the allocator.
    #[test]
    fn steady_state_does_not_reallocate() {
        let d = 5000;
        for (name, s) in [("qsgd", 4u32), ("qsgd", 1000), ("natural-dithering", 8)] {
            let c = build(name, d, s, None, None);
            let xs: Vec<Vec<f64>> = (0..3).map(|k| test_vec(d, 40 + k)).collect();
            let caps = crate::compress::buffer_capacities(c.as_ref(), &xs, 15, 1);
            for round in 6..caps.len() {
                assert_eq!(
                    caps[round],
                    caps[round - 1],
                    "{name}: round {round}: a buffer grew"
                );
            }
        }
    }

    #[test]
    fn spec_validation() {
        assert!(from_spec(&CompressorSpec::named("qsgd"), 10).is_err());
        assert!(from_spec(&CompressorSpec::named("natural-dithering"), 10).is_err());
        assert!(from_spec(&spec("qsgd", 0, None, None), 10).is_err());
        assert!(from_spec(&spec("qsgd", QSGD_MAX_LEVELS + 1, None, None), 10).is_err());
        assert!(from_spec(&spec("qsgd", 3, Some(2.0), None), 10).is_err());
        assert!(from_spec(&spec("natural-dithering", 65, None, None), 10).is_err());
        assert!(from_spec(&spec("natural-dithering", 3, Some(0.5), None), 10).is_err());
        assert!(from_spec(&spec("natural-dithering", 3, Some(f64::NAN), None), 10).is_err());
        assert!(from_spec(&spec("natural-dithering", 3, Some(f64::INFINITY), None), 10).is_ok());
        assert!(from_spec(&spec("qsgd", 3, None, Some(ValueFormat::F16)), 10).is_ok());
        assert!(from_spec(&spec("qsgd", 3, None, None), 0).is_err());
        let e = from_spec(&spec("natural-dithering", 99, None, None), 10).unwrap_err();
        assert!(e.to_string().contains("levels"), "{e}");
        let c = build("natural-dithering", 10, 3, None, Some(ValueFormat::F16));
        assert_eq!(c.describe(), "natural-dithering(s=3,p=2,values=f16)");
        assert_eq!(build("qsgd", 10, 3, None, None).describe(), "qsgd(s=3)");
    }
}
