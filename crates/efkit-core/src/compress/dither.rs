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
//! Paper bits (documented rule, no paper counts these exactly): 32 for the norm
//! plus w + 1 per coordinate, `32 + d (ceil(log2(s + 1)) + 1)`.

use rand::Rng as _;

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::check_input;
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{gamma_len, width_for, BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Largest `levels` accepted by `qsgd`.
pub const QSGD_MAX_LEVELS: u32 = 1 << 20;

/// Largest `levels` accepted by `natural-dithering` (smallest level 2^-63).
pub const NATURAL_DITHERING_MAX_LEVELS: u32 = 64;

/// Sign flag in the packed level scratch.
const NEG: u32 = 1 << 31;

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
/// otherwise the entries are scaled by a power of two first when needed.
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
        let c = scale_for(m);
        x.iter().map(|v| (v * c).abs().powf(p)).sum::<f64>().powf(1.0 / p) / c
    }
}

/// The error for a norm that does not fit the wire format.
#[cold]
fn norm_overflow(fmt: ValueFormat, n: f64) -> CompressError {
    CompressError::Shape(format!("norm {n:e} overflows the {}-bit wire format", fmt.bits()))
}

/// The transmitted norm: round_up(max(computed norm, max|x_j|)), which makes
/// every |x_j| / N <= 1. Errors if it overflows the format.
fn transmitted_norm(fmt: ValueFormat, x: &[f64], p: f64, m: f64) -> Result<f64, CompressError> {
    let n = lp_norm(x, p, m).max(m);
    let nr = round_up(fmt, n);
    if nr.is_finite() {
        Ok(nr)
    } else {
        Err(norm_overflow(fmt, n))
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
    let derived = if d.sqrt() > 2.5 * s / rho { (rho * d.sqrt() / s - 1.0).min(quarter) } else { quarter };
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
    let derived = if rt < 2.25 { 0.125 + 2.0 * rt * rt / 9.0 } else { rt - 1.0 };
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
            return Err(ParamError::invalid("levels", format!("levels = {s} is outside 1..={QSGD_MAX_LEVELS}")));
        }
        check_dim(d)?;
        let omega = qsgd_omega(d, s, rho_max(fmt, d));
        Ok(Dithering { kind: Kind::Qsgd, d, s, fmt, width: width_for(s as u64), omega })
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
            return Err(ParamError::invalid("norm", format!("norm p = {p} must be >= 1 (or inf)")));
        }
        check_dim(d)?;
        let omega = natural_dithering_omega(d, s, p, rho_max(fmt, d));
        Ok(Dithering { kind: Kind::Natural { p }, d, s, fmt, width: width_for(s as u64), omega })
    }

    /// The magnitude of level `k` (1..=s) for the transmitted norm `n`.
    #[inline]
    fn magnitude(&self, unit: f64, n: f64, k: u32) -> f64 {
        match self.kind {
            Kind::Qsgd => unit * k as f64,
            Kind::Natural { .. } => n * pow2(k as i32 - self.s as i32),
        }
    }

    /// Level index of |v| = a (random rounding) for the transmitted norm `n`.
    #[inline]
    fn level(&self, a: f64, n: f64, rng: &mut crate::rng::Rng) -> u32 {
        if a == 0.0 {
            return 0;
        }
        let s = self.s;
        match self.kind {
            Kind::Qsgd => {
                let y = (a / n) * s as f64; // a <= n, so y <= s
                let l = y.floor();
                let frac = y - l;
                let l = l as u32;
                let k = if frac > 0.0 && rng.gen::<f64>() < frac { l + 1 } else { l };
                k.min(s)
            }
            Kind::Natural { .. } => {
                let u = a / n; // in (0, 1]
                let smallest = pow2(1 - s as i32);
                if u < smallest {
                    let p = u * pow2(s as i32 - 1); // exact
                    return (rng.gen::<f64>() < p) as u32;
                }
                // u >= 2^-63 is normal: 2^e keeps its exponent bits.
                let lo = f64::from_bits(u.to_bits() & 0x7FF0_0000_0000_0000);
                let e = ((u.to_bits() >> 52) & 0x7FF) as i32 - 1023; // in [1 - s, 0]
                let k = (s as i32 + e) as u32; // level of 2^e
                if lo == u {
                    return k;
                }
                let p = u / lo - 1.0;
                if rng.gen::<f64>() < p {
                    (k + 1).min(s)
                } else {
                    k
                }
            }
        }
    }

    /// Exact bits of the two body layouts (without the mode bit).
    #[inline]
    fn body_bits(&self, k: u32, fixed: &mut u64, gamma: &mut u64) {
        let sign = (k > 0) as u64;
        *fixed += self.width as u64 + sign;
        *gamma += gamma_len(k as u64) + sign;
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
                ParamError::invalid("levels", format!("qsgd needs `levels` (an integer in 1..={QSGD_MAX_LEVELS})"))
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
            Ok(Box::new(Dithering::natural(d, s, spec.norm.unwrap_or(2.0), fmt)?))
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
        check_input(x, self.d)?;
        let m = max_abs(x);
        if m == 0.0 {
            out.reset_dense(self.d);
            self.fmt.write(w, 0.0);
            return Ok(());
        }
        let p = match self.kind {
            Kind::Qsgd => 2.0,
            Kind::Natural { p } => p,
        };
        let n = transmitted_norm(self.fmt, x, p, m)?;
        let unit = n / self.s as f64;
        if !(unit * self.s as f64).is_finite() {
            return Err(norm_overflow(self.fmt, n));
        }
        out.reset_dense(self.d);
        let levels = &mut ctx.scratch.u32s;
        levels.clear();
        levels.resize(self.d, 0);
        let (mut fixed, mut gamma) = (0u64, 0u64);
        for ((lv, o), &v) in levels.iter_mut().zip(out.values.iter_mut()).zip(x) {
            let k = self.level(v.abs(), n, ctx.rng);
            self.body_bits(k, &mut fixed, &mut gamma);
            if k > 0 {
                let mag = self.magnitude(unit, n, k);
                if v < 0.0 {
                    *o = -mag;
                    *lv = k | NEG;
                } else {
                    *o = mag;
                    *lv = k;
                }
            }
        }
        self.fmt.write(w, n);
        let use_gamma = gamma < fixed;
        w.write_bit(use_gamma);
        for &lv in levels.iter() {
            let k = lv & !NEG;
            if use_gamma {
                w.write_gamma(k as u64);
                if k > 0 {
                    w.write_bit(lv & NEG != 0);
                }
            } else if k > 0 {
                w.write_bits(((k as u64) << 1) | (lv >> 31) as u64, self.width + 1);
            } else {
                w.write_bits(0, self.width);
            }
        }
        Ok(())
    }

    fn decode(&self, r: &mut BitReader<'_>, _ctx: &DecodeCtx, out: &mut CompressedVec) -> Result<(), DecodeError> {
        let n = self.fmt.read(r)?;
        if n.is_sign_negative() {
            return Err(DecodeError::invalid("norm", "negative norm"));
        }
        if n == 0.0 {
            out.reset_dense(self.d);
            return Ok(());
        }
        let unit = n / self.s as f64;
        if !(unit * self.s as f64).is_finite() {
            return Err(DecodeError::invalid("norm", "norm too large for the level values"));
        }
        // Every coordinate takes at least one bit: refuse before allocating.
        if self.d as u64 + 1 > r.remaining() {
            return Err(DecodeError::Truncated { at: r.position(), needed: u32::try_from(self.d + 1).unwrap_or(u32::MAX) });
        }
        let use_gamma = r.read_bit()?;
        out.reset_dense(self.d);
        let (mut fixed, mut gamma) = (0u64, 0u64);
        for o in out.values.iter_mut() {
            let k = if use_gamma { r.read_gamma()? } else { r.read_bits(self.width)? };
            if k > self.s as u64 {
                return Err(DecodeError::invalid("level", format!("level {k} exceeds s = {}", self.s)));
            }
            let k = k as u32;
            self.body_bits(k, &mut fixed, &mut gamma);
            if k > 0 {
                let mag = self.magnitude(unit, n, k);
                *o = if r.read_bit()? { -mag } else { mag };
            }
        }
        if use_gamma != (gamma < fixed) {
            return Err(DecodeError::invalid("mode", "the encoder would have chosen the other level layout"));
        }
        Ok(())
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

    fn spec(name: &str, s: u32, p: Option<f64>, fmt: Option<ValueFormat>) -> CompressorSpec {
        let mut sp = CompressorSpec::named(name);
        sp.levels = Some(s);
        sp.norm = p;
        sp.values = fmt;
        sp
    }

    fn build(name: &str, d: usize, s: u32, p: Option<f64>, fmt: Option<ValueFormat>) -> Box<dyn Compressor> {
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
        assert!(total <= omega * norm2 * (1.0 + 1e-12), "{}: exact variance {total} > omega {omega} * {norm2}", c.describe());
        let mut mean = vec![0.0; d];
        let (mut s1, mut s2) = (0.0, 0.0);
        for _ in 0..n_samples {
            let e = encode_one(c, x, &mut rng, 0).unwrap();
            assert_eq!(norm_of(&e.bytes, c.fmt), n);
            let err: f64 = e.value.values.iter().zip(x).map(|(q, v)| (q - v) * (q - v)).sum();
            s1 += err;
            s2 += err * err;
            for (m, q) in mean.iter_mut().zip(&e.value.values) {
                *m += q;
            }
        }
        let ns = n_samples as f64;
        let mv = s1 / ns;
        let sd = ((s2 / ns - mv * mv).max(0.0) / ns).sqrt();
        assert!((mv - total).abs() <= 6.0 * sd + 1e-9 * norm2, "{}: MC variance {mv} vs exact {total} (sd {sd})", c.describe());
        for j in 0..d {
            let tol = 6.0 * (var[j] / ns).sqrt() + 1e-12 * n;
            assert!((mean[j] / ns - x[j]).abs() <= tol, "{}: coordinate {j}: {} vs {}", c.describe(), mean[j] / ns, x[j]);
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
        let x: Vec<f64> = (0..64).map(|j| if j % 3 == 0 { -0.3 } else { 0.3 }).collect();
        check_unbiased(&dith("qsgd", 64, 2, None, Some(ValueFormat::F16)), &x, 20_000, 7);
        // One spike.
        let mut x = vec![0.0; 10];
        x[3] = -2.5;
        check_unbiased(&dith("qsgd", 10, 3, None, Some(ValueFormat::F64)), &x, 2_000, 8);
    }

    #[test]
    fn natural_dithering_unbiased_and_variance_bounded() {
        let x = test_vec(30, 2);
        for (s, p) in [(1, 2.0), (3, 2.0), (8, 2.0), (3, 1.0), (4, f64::INFINITY), (5, 3.5), (2, 1.5)] {
            check_unbiased(&dith("natural-dithering", 30, s, Some(p), None), &x, 20_000, s as u64 + 100);
        }
        let x: Vec<f64> = (0..64).map(|j| if j % 2 == 0 { 1e-3 } else { -1e-3 }).collect();
        check_unbiased(&dith("natural-dithering", 64, 2, Some(2.0), Some(ValueFormat::F16)), &x, 20_000, 9);
    }

    #[test]
    fn omega_is_the_published_constant_in_normal_regimes() {
        for &(d, s) in &[(10usize, 1u32), (100, 4), (10_000, 3), (1_000_000, 16), (4_000_000_000, 1)] {
            let c = Dithering::qsgd(d, s, ValueFormat::F32).unwrap();
            let (df, sf) = (d as f64, s as f64);
            assert_eq!(c.omega, (df / (sf * sf)).min(df.sqrt() / sf), "d {d} s {s}");
        }
        for &(d, s, p) in &[(10usize, 1u32, 2.0), (100, 4, 2.0), (10_000, 8, 1.0), (1_000_000, 3, f64::INFINITY)] {
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
                    assert_eq!(natural_dithering_omega(d, s, p, 1.0), 0.125 + t * t.min(1.0));
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
                assert!(u >= v && dn <= v && fmt.round(u) == u && fmt.round(dn) == dn, "{fmt:?} {v}");
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
                        assert_eq!(enc.paper_bits, 32 + d as u64 * (width_for(s as u64) as u64 + 1));
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
            assert!(matches!(e, CompressError::Shape(ref m) if m.contains("overflows")), "{e:?}");
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
            assert!(matches!(decode_one(c.as_ref(), &bad, 0), Err(DecodeError::Invalid { .. })));
            // Level above s (= 5, 3-bit field): first level field set to 7.
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(false);
            w.write_bits(7, 3);
            w.write_bit(false);
            for _ in 1..d {
                w.write_bits(0, 3);
            }
            assert!(matches!(decode_one(c.as_ref(), w.finish(), 0), Err(DecodeError::Invalid { .. })));
            // Non-canonical layout: all zero levels in the gamma layout would be
            // shorter, so the fixed layout is rejected...
            let mut w = BitWriter::new();
            ValueFormat::F32.write(&mut w, 1.0);
            w.write_bit(false);
            for _ in 0..d {
                w.write_bits(0, 3);
            }
            assert!(matches!(decode_one(c.as_ref(), w.finish(), 0), Err(DecodeError::Invalid { .. })));
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
