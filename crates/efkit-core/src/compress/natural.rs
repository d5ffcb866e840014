//! Natural compression (Horvath, Ho, Horvath, Sahu, Canini, Richtarik, "Natural
//! compression for distributed deep learning", arXiv:1905.10988, 2019).
//!
//! # Operator
//!
//! Each coordinate is rounded at random to one of the two powers of two around
//! it: for |v| in [2^a, 2^(a+1)),
//!
//! ```text
//! N(v) = sign(v) 2^(a+1)   with probability p = |v|/2^a - 1,
//!        sign(v) 2^a       with probability 1 - p,
//! ```
//!
//! and N(0) = 0 (powers of two are kept as they are). Then E N(v) = 2^a (1 + p)
//! = v, and with t = |v|/2^a in [1, 2]
//!
//! ```text
//! E (N(v) - v)^2 = (|v| - 2^a)(2^(a+1) - |v|) = v^2 (t - 1)(2 - t)/t^2 <= v^2/8,
//! ```
//!
//! the ratio peaking at t = 4/3. Coordinates are rounded independently, so
//! E||N(x) - x||^2 <= ||x||^2/8: N is in U(omega) with **omega = 1/8**
//! (algorithms.md §3.2), independently of d.
//!
//! # Wire format (9 bits per coordinate)
//!
//! A rounded value is 0 or ±2^e, which as an f32 has a zero mantissa; the wire
//! carries exactly the f32 sign bit and the 8-bit biased exponent field
//! (code = e + 127), written as one 9-bit field `sign << 8 | code`:
//!
//! * code 0 with sign 0 is zero (code 0 with sign 1, i.e. -0, is rejected: zero
//!   has one encoding and is always +0);
//! * codes 1..=254 are ±2^(code - 127), exponents e in [-126, 127] — the normal
//!   range of f32, as in fp32 natural compression;
//! * code 255 (f32 infinity) is rejected.
//!
//! The message for the whole vector is d such fields and nothing else (d is
//! known to both sides). Paper bits: 9 d (the EF21 deep-learning code counts
//! `d * 9/32 * 32` bits for fp32 natural compression, algorithms.md §3.3).
//!
//! # Values outside the exponent range
//!
//! * **Tiny values** (0 < |v| < 2^-126, below f32's normal range) are rounded
//!   at random between 0 and sign(v) 2^-126, with P(2^-126) = |v|/2^-126, which
//!   is unbiased. Their variance |v| (2^-126 - |v|) is *not* bounded by v^2/8
//!   (it is at most 2^-126 |v| < 2^-252 in absolute terms), so the relative
//!   bound omega = 1/8 is guaranteed for inputs whose nonzero entries are at
//!   least 2^-126 ≈ 1.2e-38 in magnitude; below that the extra variance is the
//!   absolute amount 2^-126 sum_{tiny j} |x_j|.
//! * **Large values** |v| > 2^127 ≈ 1.7e38 could round to 2^128, which has no
//!   code (it is f32 infinity): [`Natural::compress`] refuses such input with
//!   [`CompressError::Shape`] (an "overflow" message naming the coordinate)
//!   before writing anything, deterministically, whatever the random draws.
//!   Callers of [`natural_round`] check the range with [`check_range`].
//!
//! Randomness: one uniform f64 from the sender's stream per coordinate that is
//! not 0 or a power of two. Uniforms are multiples of 2^-53 and p is a multiple
//! of 2^-52 for |v| >= 2^-126, so P(round up) equals p exactly.

use rand::Rng as _;

use super::registry::{only_keys, CompressorSpec};
use super::sparse_codec::check_input;
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::rng::Rng;

/// Bits of one natural-compressed value on the wire (sign + 8-bit exponent).
pub const NATURAL_BITS: u32 = 9;

/// Smallest nonzero magnitude of a rounded value, 2^-126 (exponent code 1).
pub const NATURAL_MIN: f64 = 1.1754943508222875e-38;

/// Largest magnitude of a rounded value, 2^127 (exponent code 254). Inputs with
/// a larger magnitude cannot be natural-compressed.
pub const NATURAL_MAX: f64 = 1.7014118346046923e38;

/// Exponent bias of the 8-bit code (that of f32).
const BIAS: i32 = 127;

/// 2^e for e in the normal f64 range.
#[inline]
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Randomly rounds `v` to 0 or ±2^e, unbiasedly (see the module docs).
///
/// * v = 0 (either sign) gives +0.0; powers of two are returned unchanged and
///   consume no randomness.
/// * 0 < |v| < 2^-126 gives 0 or ±2^-126.
/// * |v| must not exceed [`NATURAL_MAX`] = 2^127 if the result is to be written
///   with [`write_natural`]; check with [`check_range`] first (for larger |v|
///   the result is still a power of two, possibly +-infinity).
#[inline]
pub fn natural_round(v: f64, rng: &mut Rng) -> f64 {
    let a = v.abs();
    if a == 0.0 {
        return 0.0;
    }
    if a < NATURAL_MIN {
        // a * 2^126 is exact (a power-of-two scaling into the normal range).
        let p = a * pow2(126);
        return if rng.gen::<f64>() < p {
            NATURAL_MIN.copysign(v)
        } else {
            0.0
        };
    }
    // a >= 2^-126 is a normal f64: 2^floor(log2 a) keeps only its exponent bits.
    let lo = f64::from_bits(a.to_bits() & 0x7FF0_0000_0000_0000);
    if lo == a {
        return v;
    }
    let p = a / lo - 1.0; // exact: the mantissa fraction, in (0, 1)
    let r = if rng.gen::<f64>() < p { lo * 2.0 } else { lo };
    r.copysign(v)
}

/// Checks that every entry of `x` can be natural-compressed (|x_j| <= 2^127);
/// returns [`CompressError::Shape`] naming the first entry that cannot.
/// (Non-finite entries also fail, but callers check those first.)
pub fn check_range(x: &[f64]) -> Result<(), CompressError> {
    // Fast screen: the maximum magnitude, then locate only on failure.
    let m = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if m <= NATURAL_MAX {
        return Ok(());
    }
    let index = x
        .iter()
        .position(|v| v.is_nan() || v.abs() > NATURAL_MAX)
        .unwrap_or(0);
    Err(CompressError::Shape(format!(
        "value {:e} for coordinate {index} overflows natural compression (|x| <= 2^127 required)",
        x[index]
    )))
}

/// The 9-bit code of a rounded value, or `None` if `v` is not +0 or ±2^e with
/// e in [-126, 127].
#[inline]
fn natural_code(v: f64) -> Option<u32> {
    let b = (v as f32).to_bits();
    // An f64 that is +0 or ±2^e in range converts exactly; check round trip.
    if (f32::from_bits(b) as f64).to_bits() != v.to_bits() {
        return None;
    }
    let sign = b >> 31;
    let code = (b >> 23) & 0xFF;
    let mantissa = b & 0x7F_FFFF;
    match (sign, code, mantissa) {
        (0, 0, 0) => Some(0),
        (_, 1..=254, 0) => Some(sign << 8 | code),
        _ => None,
    }
}

/// Writes an already rounded value (+0 or ±2^e, e in [-126, 127], as returned
/// by [`natural_round`] for |v| <= 2^127) in the 9-bit natural form.
///
/// # Panics
///
/// If `v` is not such a value (-0.0 included): that is a caller bug, since the
/// receiver would decode something else.
#[inline]
#[track_caller]
pub fn write_natural(w: &mut BitWriter, v: f64) {
    match natural_code(v) {
        Some(c) => w.write_bits(c as u64, NATURAL_BITS),
        None => panic!("write_natural: {v:e} is not +0 or ±2^e with e in [-126, 127]"),
    }
}

/// Reads one 9-bit natural value written by [`write_natural`]. Code 255 and
/// negative zero are [`DecodeError::Invalid`].
#[inline]
pub fn read_natural(r: &mut BitReader) -> Result<f64, DecodeError> {
    natural_value(r.read_bits(NATURAL_BITS)? as u32)
}

/// The value of a 9-bit natural code (see [`read_natural`]).
#[inline]
fn natural_value(c: u32) -> Result<f64, DecodeError> {
    let sign = c >> 8;
    let code = (c & 0xFF) as i32;
    match code {
        0 if sign == 0 => Ok(0.0),
        0 => Err(DecodeError::invalid(
            "natural value",
            "negative zero is not a valid encoding",
        )),
        255 => Err(DecodeError::invalid(
            "natural value",
            "exponent code 255 is reserved",
        )),
        _ => {
            let m = pow2(code - BIAS);
            Ok(if sign == 1 { -m } else { m })
        }
    }
}

/// Natural compression of every coordinate, U(1/8), 9 bits per coordinate.
#[derive(Debug, Clone)]
pub struct Natural {
    d: usize,
}

impl Natural {
    /// Natural compression for dimension `d`.
    pub fn new(d: usize) -> Self {
        Natural { d }
    }
}

/// Builds `natural` (no parameters: the wire form is fixed at 9 bits, so
/// `values` is not accepted either).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &[])?;
    if d == 0 {
        return Err(ParamError::invalid("d", "natural needs dimension d >= 1"));
    }
    Ok(Box::new(Natural::new(d)))
}

impl Compressor for Natural {
    fn name(&self) -> &'static str {
        "natural"
    }

    fn describe(&self) -> String {
        "natural".into()
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Unbiased { omega: 0.125 }
    }

    fn is_deterministic(&self) -> bool {
        false
    }

    /// Rounds every coordinate with [`natural_round`]; input with an entry
    /// beyond 2^127 in magnitude is refused (nothing is written).
    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        check_input(x, self.d)?;
        check_range(x)?;
        out.reset_dense(self.d);
        w.reserve_bits(NATURAL_BITS as u64 * self.d as u64);
        let mut pk = w.packer();
        for (o, &v) in out.values.iter_mut().zip(x) {
            let q = natural_round(v, ctx.rng);
            *o = q;
            match natural_code(q) {
                Some(c) => pk.put(c as u64, NATURAL_BITS),
                None => {
                    unreachable!("natural_round of |v| <= 2^127 is +0 or ±2^e, e in [-126, 127]")
                }
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        let need = self.d as u64 * NATURAL_BITS as u64;
        if need > r.remaining() {
            return Err(DecodeError::Truncated {
                at: r.position(),
                needed: u32::try_from(need).unwrap_or(u32::MAX),
            });
        }
        out.reset_dense(self.d);
        // Six 9-bit codes per refill of the window (the length was checked).
        let mut win = r.window();
        for chunk in out.values.chunks_mut(6) {
            win.refill();
            for o in chunk {
                let c = (win.peek() >> (64 - NATURAL_BITS)) as u32;
                win.consume(NATURAL_BITS);
                *o = natural_value(c)?;
            }
        }
        win.finish()
    }

    /// 9 bits per coordinate.
    fn paper_bits(&self, _c: &CompressedVec) -> u64 {
        NATURAL_BITS as u64 * self.d as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{decode_one, encode_one};
    use crate::rng::rng_from_key;

    #[test]
    fn constants_are_the_powers() {
        assert_eq!(NATURAL_MIN, pow2(-126));
        assert_eq!(NATURAL_MAX, pow2(127));
        assert_eq!(NATURAL_MIN, f32::MIN_POSITIVE as f64);
    }

    #[test]
    fn round_is_a_neighbouring_power_and_unbiased() {
        let mut rng = rng_from_key(1);
        for &v in &[3.0, -3.0, 1.1, 0.7, -1e-30, 5e37, 1.0 + 1e-9, 1.999_999] {
            let a: f64 = v;
            let lo = f64::from_bits(a.abs().to_bits() & 0x7FF0_0000_0000_0000);
            let n = 200_000;
            let mut sum = 0.0;
            for _ in 0..n {
                let q = natural_round(v, &mut rng);
                assert!(
                    q == lo.copysign(v) || q == (2.0 * lo).copysign(v),
                    "{v} -> {q}"
                );
                sum += q;
            }
            // Var <= v^2/8: the mean is within 6 sigma.
            let sigma = (v * v / 8.0 / n as f64).sqrt();
            assert!(
                (sum / n as f64 - v).abs() <= 6.0 * sigma,
                "{v}: mean {}",
                sum / n as f64
            );
        }
    }

    #[test]
    fn zero_powers_and_tiny_values() {
        let mut rng = rng_from_key(2);
        assert_eq!(natural_round(-0.0, &mut rng).to_bits(), 0.0f64.to_bits());
        for e in [-126, -1, 0, 5, 127] {
            assert_eq!(natural_round(pow2(e), &mut rng), pow2(e));
            assert_eq!(natural_round(-pow2(e), &mut rng), -pow2(e));
        }
        // Tiny: 0 or 2^-126, unbiased.
        let v = NATURAL_MIN / 4.0;
        let n = 100_000;
        let mut ups = 0;
        for _ in 0..n {
            let q = natural_round(-v, &mut rng);
            assert!(q == 0.0 || q == -NATURAL_MIN);
            assert_ne!(q.to_bits(), (-0.0f64).to_bits(), "zero is +0");
            ups += (q != 0.0) as u32;
        }
        let frac = ups as f64 / n as f64;
        assert!((frac - 0.25).abs() < 6.0 * (0.25f64 * 0.75 / n as f64).sqrt());
        // f64 subnormals too.
        let q = natural_round(5e-324, &mut rng);
        assert!(q == 0.0 || q == NATURAL_MIN);
    }

    #[test]
    fn nine_bit_codes_round_trip() {
        let mut w = BitWriter::new();
        let vals: Vec<f64> = (-126..=127)
            .flat_map(|e| [pow2(e), -pow2(e)])
            .chain([0.0])
            .collect();
        for &v in &vals {
            write_natural(&mut w, v);
        }
        assert_eq!(w.bit_len(), 9 * vals.len() as u64);
        let bytes = w.finish().to_vec();
        let mut r = BitReader::new(&bytes);
        for &v in &vals {
            assert_eq!(read_natural(&mut r).unwrap().to_bits(), v.to_bits());
        }
        r.finish().unwrap();
        // Reserved codes.
        for c in [0x100u64, 0xFF, 0x1FF] {
            let mut w = BitWriter::new();
            w.write_bits(c, 9);
            let bytes = w.finish().to_vec();
            assert!(matches!(
                read_natural(&mut BitReader::new(&bytes)),
                Err(DecodeError::Invalid { .. })
            ));
        }
    }

    #[test]
    #[should_panic(expected = "write_natural")]
    fn writing_an_unrounded_value_panics() {
        write_natural(&mut BitWriter::new(), 3.0);
    }

    #[test]
    #[should_panic(expected = "write_natural")]
    fn writing_negative_zero_panics() {
        write_natural(&mut BitWriter::new(), -0.0);
    }

    #[test]
    fn code_of_out_of_range_values_is_none() {
        assert_eq!(natural_code(pow2(128)), None);
        assert_eq!(natural_code(pow2(-127)), None);
        assert_eq!(natural_code(f64::INFINITY), None);
        assert_eq!(natural_code(f64::NAN), None);
        assert_eq!(natural_code(1.5), None);
    }

    fn test_vec(d: usize, key: u64) -> Vec<f64> {
        let mut rng = rng_from_key(key);
        (0..d)
            .map(|j| match j % 5 {
                0 => 0.0,
                1 => pow2((j % 40) as i32 - 20),
                _ => (rng.gen::<f64>() - 0.5) * 10f64.powi((j % 7) as i32 - 3),
            })
            .collect()
    }

    #[test]
    fn round_trip_is_bit_exact_and_sizes_match() {
        for &d in &[1usize, 2, 7, 8, 63, 100, 1000] {
            let c = from_spec(&CompressorSpec::named("natural"), d).unwrap();
            let x = test_vec(d, d as u64);
            let mut rng = rng_from_key(7);
            let enc = encode_one(c.as_ref(), &x, &mut rng, 0).unwrap();
            assert_eq!(enc.wire_bits, 8 * enc.bytes.len() as u64);
            assert_eq!(enc.bytes.len(), (9 * d).div_ceil(8));
            assert_eq!(enc.paper_bits, 9 * d as u64);
            let dec = decode_one(c.as_ref(), &enc.bytes, 0).unwrap();
            assert!(dec.bit_eq(&enc.value));
            assert!(dec.dense && dec.values.len() == d);
            for (q, v) in dec.values.iter().zip(&x) {
                if *v == 0.0 {
                    assert_eq!(q.to_bits(), 0);
                } else {
                    assert!(
                        q.abs() <= 2.0 * v.abs()
                            && q.abs() >= v.abs() / 2.0
                            && q.signum() == v.signum()
                    );
                }
            }
        }
    }

    #[test]
    fn unbiased_with_variance_at_most_one_eighth() {
        let d = 16;
        let c = Natural::new(d);
        let x = test_vec(d, 11);
        let norm2: f64 = x.iter().map(|v| v * v).sum();
        // Exact variance of the operator for this x.
        let exact: f64 = x
            .iter()
            .map(|&v| {
                let a = v.abs();
                if a == 0.0 {
                    return 0.0;
                }
                let lo = f64::from_bits(a.to_bits() & 0x7FF0_0000_0000_0000);
                (a - lo) * (2.0 * lo - a)
            })
            .sum();
        assert!(exact <= norm2 / 8.0);
        let n = 40_000;
        let mut rng = rng_from_key(3);
        let mut mean = vec![0.0; d];
        let mut var = 0.0;
        let mut var2 = 0.0;
        for _ in 0..n {
            let e = encode_one(&c, &x, &mut rng, 0).unwrap();
            let s: f64 = e
                .value
                .values
                .iter()
                .zip(&x)
                .map(|(q, v)| (q - v) * (q - v))
                .sum();
            var += s;
            var2 += s * s;
            for (m, q) in mean.iter_mut().zip(&e.value.values) {
                *m += q;
            }
        }
        let var_mean = var / n as f64;
        let var_sd = ((var2 / n as f64 - var_mean * var_mean) / n as f64).sqrt();
        assert!(
            (var_mean - exact).abs() <= 6.0 * var_sd + 1e-12 * norm2,
            "{var_mean} vs {exact}"
        );
        for (j, (m, v)) in mean.iter().zip(&x).enumerate() {
            let a = v.abs();
            let sd = if a == 0.0 {
                0.0
            } else {
                (a * a / 8.0 / n as f64).sqrt()
            };
            assert!(
                (m / n as f64 - v).abs() <= 6.0 * sd + 1e-15,
                "coordinate {j}"
            );
        }
    }

    #[test]
    fn overflow_and_non_finite_are_errors() {
        let c = Natural::new(3);
        let mut rng = rng_from_key(0);
        assert!(encode_one(&c, &[0.0, NATURAL_MAX, -NATURAL_MAX], &mut rng, 0).is_ok());
        let e = encode_one(&c, &[0.0, 1.0, -NATURAL_MAX * 1.0000001], &mut rng, 0).unwrap_err();
        assert!(
            matches!(e, CompressError::Shape(ref m) if m.contains("coordinate 2")),
            "{e:?}"
        );
        let e = encode_one(&c, &[0.0, f64::NAN, 1.0], &mut rng, 0).unwrap_err();
        assert!(matches!(e, CompressError::NonFinite { index: 1, .. }));
        let e = encode_one(&c, &[f64::NEG_INFINITY, 0.0, 1.0], &mut rng, 0).unwrap_err();
        assert!(matches!(e, CompressError::NonFinite { index: 0, .. }));
        assert!(encode_one(&c, &[1.0, 2.0], &mut rng, 0).is_err());
    }

    #[test]
    fn truncated_corrupted_and_garbage_input() {
        let d = 50;
        let c = Natural::new(d);
        let x = test_vec(d, 5);
        let mut rng = rng_from_key(9);
        let enc = encode_one(&c, &x, &mut rng, 0).unwrap();
        for cut in 0..enc.bytes.len() {
            assert!(decode_one(&c, &enc.bytes[..cut], 0).is_err());
        }
        let mut longer = enc.bytes.clone();
        longer.push(0);
        assert!(decode_one(&c, &longer, 0).is_err());
        // Code 255 in the first field.
        let mut bad = enc.bytes.clone();
        bad[0] = 0x7F;
        bad[1] |= 0x80;
        assert!(decode_one(&c, &bad, 0).is_err());
        // Random bytes never panic; whatever decodes is finite and re-encodes.
        let mut g = rng_from_key(10);
        for _ in 0..2000 {
            let len = g.gen_range(0..70);
            let bytes: Vec<u8> = (0..len).map(|_| g.gen()).collect();
            if let Ok(v) = decode_one(&c, &bytes, 0) {
                assert!(v.values.iter().all(|q| q.is_finite()));
                let mut w = BitWriter::new();
                for &q in &v.values {
                    write_natural(&mut w, q);
                }
                assert_eq!(w.finish(), &bytes[..]);
            }
        }
    }

    #[test]
    fn spec_validation() {
        assert!(from_spec(&CompressorSpec::named("natural"), 10).is_ok());
        let mut s = CompressorSpec::named("natural");
        s.k = Some(3);
        assert!(from_spec(&s, 10).is_err());
        let mut s = CompressorSpec::named("natural");
        s.values = Some(crate::compress::ValueFormat::F64);
        assert!(from_spec(&s, 10).is_err());
    }
}
