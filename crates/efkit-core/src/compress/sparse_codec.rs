//! Wire coding of a sorted index set {i_1 < ... < i_K} out of {0, ..., d-1}.
//!
//! Layout (design.md §5):
//!
//! ```text
//! gamma(K)                       Elias gamma code of K (BitWriter::write_gamma)
//! if 0 < K < d:
//!   mode bit                     0 = Golomb–Rice gaps, 1 = bitmap
//!   mode 0: k (6 bits), then the K gaps g_1 = i_1, g_t = i_t - i_{t-1} - 1,
//!           each Golomb–Rice coded with parameter k (0 <= k <= 31)
//!   mode 1: d bits, bit j set iff j is in the set
//! ```
//!
//! `K = 0` and `K = d` need nothing after the count. The encoder computes the
//! exact length of both modes and writes the shorter one; for the Rice mode it
//! starts from the parameter suggested by the mean gap (d - K)/K and moves it
//! while the exact total length shrinks.
//!
//! Why this is close to the information bound: an index set of size K is one of
//! binomial(d, K) sets, so any code needs log2 binomial(d, K) bits in the worst
//! case, which is about K (log2(d/K) + log2 e) for K << d. For a uniformly random
//! set the gaps are close to geometric with mean about d/K, and the Rice code with
//! the best parameter is within a few percent of the entropy of a geometric law
//! (Gallager & van Voorhis, "Optimal source codes for geometrically distributed
//! integer alphabets", IEEE Trans. IT 21(2), 1975). The unit test
//! `near_information_bound` checks `bits <= 1.1 log2 binomial(d, K) + 64` for
//! K <= d/8.
//!
//! The decoder treats its input as hostile: K must not exceed d, each gap is
//! bounded so that the index stays below d with room for the remaining ones
//! (so indices are strictly increasing by construction), the Rice parameter must
//! be at most 31, a bitmap must hold exactly K ones; every loop is bounded by d
//! or by the input length, and the only allocation is the output (at most d
//! indices).
//!
//! The module also holds the helpers the sparse compressors share: rounding a
//! value to the wire format with an overflow error instead of an infinity, the
//! input prologue (length and finiteness), and writing/reading "index set then
//! values" messages.

use super::{check_finite, CompressedVec, ValueFormat};
use crate::bits::{gamma_len, BitReader, BitWriter};
use crate::error::{CompressError, DecodeError};

/// Largest Rice parameter the encoder writes (gaps are below 2^32).
const MAX_RICE_K: u32 = 31;

/// Bits of the Rice parameter field.
const RICE_K_BITS: u32 = 6;

/// Which layout [`encode`] picked for an index set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// K = 0 or K = d: only the count is written.
    Trivial,
    /// Golomb–Rice coded gaps with the given parameter.
    Rice(u32),
    /// A d-bit bitmap.
    Bitmap,
}

/// Sum over the gaps of `g >> k`.
#[inline]
fn shifted_gap_sum(indices: &[u32], k: u32) -> u64 {
    let mut s = 0u64;
    let mut next = 0u32;
    for &i in indices {
        s += ((i - next) >> k) as u64;
        next = i.wrapping_add(1);
    }
    s
}

/// Exact bits of the Rice mode body (the `k` field plus all gaps) for parameter `k`.
#[inline]
#[cfg(test)]
fn rice_body_bits(indices: &[u32], k: u32) -> u64 {
    RICE_K_BITS as u64 + shifted_gap_sum(indices, k) + indices.len() as u64 * (1 + k as u64)
}

/// Chooses the layout for `indices` (strictly increasing, all below `d`) and
/// returns it with the exact number of bits [`encode`] writes.
///
/// The Rice length L(k) = 6 + sum_t floor(g_t / 2^k) + K (1 + k) is convex in k
/// (its decrements sum_t ceil(floor(g_t/2^k) / 2) do not increase with k), so a
/// walk from the rule-of-thumb start k = floor(log2((d - K)/K)) finds the
/// exact optimum, usually in two or three passes over the indices.
pub fn plan(indices: &[u32], d: usize) -> (Mode, u64) {
    plan_by(indices.len() as u64, d, |k| shifted_gap_sum(indices, k))
}

/// [`plan`] for a set of `kc` indices out of `d` whose gaps g_t give
/// `gap_sum(k)` = sum_t floor(g_t / 2^k).
fn plan_by(kc: u64, d: usize, gap_sum: impl Fn(u32) -> u64) -> (Mode, u64) {
    let head = gamma_len(kc);
    if kc == 0 || kc == d as u64 {
        return (Mode::Trivial, head);
    }
    let body = |k: u32| RICE_K_BITS as u64 + gap_sum(k) + kc * (1 + k as u64);
    let mean_gap = (d as u64 - kc) / kc;
    let mut k = if mean_gap <= 1 {
        0
    } else {
        (63 - mean_gap.leading_zeros()).min(MAX_RICE_K)
    };
    let mut best = body(k);
    let mut moved_down = false;
    while k > 0 {
        let c = body(k - 1);
        if c < best {
            k -= 1;
            best = c;
            moved_down = true;
        } else {
            break;
        }
    }
    if !moved_down {
        while k < MAX_RICE_K {
            let c = body(k + 1);
            if c < best {
                k += 1;
                best = c;
            } else {
                break;
            }
        }
    }
    let bitmap = d as u64;
    if bitmap < best {
        (Mode::Bitmap, head + 1 + bitmap)
    } else {
        (Mode::Rice(k), head + 1 + best)
    }
}

/// [`encoded_bits`] of the complement of `indices` in {0, ..., d-1},
/// without building it: the complement's gap before each of its entries is
/// the run of `indices` just before that entry.
pub fn complement_encoded_bits(indices: &[u32], d: usize) -> u64 {
    let kc = (d - indices.len()) as u64;
    plan_by(kc, d, |k| {
        let mut sum = 0u64;
        let mut run = 0u64;
        let mut prev: Option<u32> = None;
        for &i in indices {
            if prev.is_some_and(|p| p + 1 != i) {
                // the run ended before a complement entry
                sum += run >> k;
                run = 0;
            }
            run += 1;
            prev = Some(i);
        }
        // the last run counts only if a complement entry follows it
        if prev.is_some_and(|p| (p as usize) + 1 < d) {
            sum += run >> k;
        }
        sum
    })
    .1
}

/// Exact number of bits [`encode`] writes for `indices`.
pub fn encoded_bits(indices: &[u32], d: usize) -> u64 {
    plan(indices, d).1
}

/// Writes the index set `indices` (strictly increasing, all below `d`) and
/// returns the layout used.
pub fn encode(w: &mut BitWriter, indices: &[u32], d: usize) -> Mode {
    debug_assert!(indices.len() <= d);
    debug_assert!(indices.windows(2).all(|p| p[0] < p[1]));
    debug_assert!(indices.iter().all(|&i| (i as usize) < d));
    let (mode, _bits) = plan(indices, d);
    w.write_gamma(indices.len() as u64);
    match mode {
        Mode::Trivial => {}
        Mode::Rice(k) => {
            w.write_bit(false);
            w.write_bits(k as u64, RICE_K_BITS);
            // one register-held code per index (k <= MAX_RICE_K = 31)
            let mut p = w.packer();
            let mut next = 0u32;
            for &i in indices {
                p.put_rice(u64::from(i - next), k);
                next = i + 1;
            }
        }
        Mode::Bitmap => {
            w.write_bit(true);
            let mut word = 0u64;
            let mut word_idx = 0usize;
            let full_words = d / 64;
            for &i in indices {
                let wi = i as usize / 64;
                while word_idx < wi {
                    w.write_bits(word, 64);
                    word = 0;
                    word_idx += 1;
                }
                word |= 1u64 << (63 - (i as usize % 64));
            }
            while word_idx < full_words {
                w.write_bits(word, 64);
                word = 0;
                word_idx += 1;
            }
            let tail = (d % 64) as u32;
            if tail > 0 {
                w.write_bits(word >> (64 - tail), tail);
            }
        }
    }
    mode
}

/// A [`DecodeError::Truncated`] at `r`'s position for a field of `bits` bits.
pub(crate) fn short(r: &BitReader<'_>, bits: u64) -> DecodeError {
    DecodeError::Truncated {
        at: r.position(),
        needed: u32::try_from(bits).unwrap_or(u32::MAX),
    }
}

/// Reads an index set written by [`encode`] for dimension `d` into `out`
/// (cleared first). `bits_after` is the least number of bits each index
/// implies after the set (its value; 0 if none): the input must hold them
/// before any index is stored, so a count that the input cannot back costs
/// no allocation. Never panics; allocates at most `d` indices.
pub fn decode(
    r: &mut BitReader<'_>,
    d: usize,
    bits_after: u64,
    out: &mut Vec<u32>,
) -> Result<(), DecodeError> {
    out.clear();
    let kc = r.read_gamma()?;
    if kc > d as u64 {
        return Err(DecodeError::invalid(
            "index count",
            format!("{kc} indices for dimension {d}"),
        ));
    }
    let kc = kc as usize;
    if kc == 0 {
        return Ok(());
    }
    let after = (kc as u64).saturating_mul(bits_after);
    if kc == d {
        if after > r.remaining() {
            return Err(short(r, after));
        }
        out.extend(0..d as u32);
        return Ok(());
    }
    let bitmap = r.read_bit()?;
    let read = if !bitmap {
        let k = r.read_bits(RICE_K_BITS)? as u32;
        if k > MAX_RICE_K {
            return Err(DecodeError::invalid(
                "rice parameter",
                format!("{k} > {MAX_RICE_K}"),
            ));
        }
        // Each gap takes at least k + 1 bits: refuse early rather than allocate.
        let need = (kc as u64)
            .saturating_mul(k as u64 + 1)
            .saturating_add(after);
        if need > r.remaining() {
            return Err(short(r, need));
        }
        out.reserve(kc);
        let mut next = 0u64;
        for t in 0..kc {
            // Index t may be at most d - K + t so that the rest still fit.
            let last_allowed = (d - kc + t) as u64;
            let g = r.read_rice(k, last_allowed - next)?;
            let i = next + g;
            out.push(i as u32);
            next = i + 1;
        }
        Mode::Rice(k)
    } else {
        let need = (d as u64).saturating_add(after);
        if need > r.remaining() {
            return Err(short(r, need));
        }
        out.reserve(kc);
        let mut base = 0usize;
        while base < d {
            let n = (d - base).min(64) as u32;
            let mut word = r.read_bits(n)?;
            if n < 64 {
                word <<= 64 - n;
            }
            while word != 0 {
                let lz = word.leading_zeros() as usize;
                if out.len() == kc {
                    return Err(DecodeError::invalid(
                        "bitmap",
                        "more set bits than the index count",
                    ));
                }
                out.push((base + lz) as u32);
                word &= !(1u64 << (63 - lz));
            }
            base += 64;
        }
        if out.len() != kc {
            return Err(DecodeError::invalid(
                "bitmap",
                "fewer set bits than the index count",
            ));
        }
        Mode::Bitmap
    };
    // One message per index set: the layout must be the one the encoder
    // picks, so a message cannot be inflated (say a bitmap for one index)
    // and still be accepted.
    let planned = plan(out, d).0;
    if read != planned {
        return Err(DecodeError::invalid(
            "index layout",
            format!("{read:?} where the encoder writes {planned:?}"),
        ));
    }
    Ok(())
}

/// Rounds `v` (entry `index` of the output) to the wire format `fmt`; a value
/// that does not fit the format (|v| beyond its largest finite value, e.g.
/// 3.4e38 for f32, 65504 for f16) is an error rather than a silent infinity or
/// saturation: saturating would break the class inequality, and a non-finite
/// value must never reach the wire.
#[inline]
pub(crate) fn round_checked(fmt: ValueFormat, v: f64, index: usize) -> Result<f64, CompressError> {
    let r = fmt.round(v);
    if r.is_finite() {
        Ok(r)
    } else {
        Err(overflow_error(fmt, v, index))
    }
}

/// `out = round(scale * x)` in `fmt`, for equal lengths; whether every
/// result is finite (false for a non-finite input or an overflow of the
/// format: the caller then finds the error entry by entry). The screen sums
/// r * 0.0 (NaN exactly for a non-finite r) in eight lanes, so the loop
/// vectorises. A scale of 1 is exact, -0 included.
fn round_scaled_all(fmt: ValueFormat, x: &[f64], scale: f64, out: &mut [f64]) -> bool {
    fn lanes(x: &[f64], out: &mut [f64], round: impl Fn(f64) -> f64) -> bool {
        let mut acc = [0.0f64; 8];
        let mut xc = x.chunks_exact(8);
        let mut oc = out.chunks_exact_mut(8);
        for (xs, os) in (&mut xc).zip(&mut oc) {
            for i in 0..8 {
                os[i] = round(xs[i]);
                acc[i] += os[i] * 0.0;
            }
        }
        let mut rest = 0.0;
        for (o, &v) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
            *o = round(v);
            rest += *o * 0.0;
        }
        acc.iter().sum::<f64>() + rest == 0.0
    }
    debug_assert_eq!(x.len(), out.len());
    match fmt {
        ValueFormat::F32 => lanes(x, out, |v| (scale * v) as f32 as f64),
        ValueFormat::F64 => lanes(x, out, |v| scale * v),
        ValueFormat::F16 => lanes(x, out, |v| ValueFormat::F16.round(scale * v)),
    }
}

/// `out = round(scale * x)` in `fmt` (equal lengths) in one vectorised pass;
/// on a non-finite result, the error the entry-by-entry checks give in
/// their order: the first non-finite input, else the first value that
/// overflows the format.
pub(crate) fn round_all_checked(
    fmt: ValueFormat,
    x: &[f64],
    scale: f64,
    out: &mut [f64],
) -> Result<(), CompressError> {
    if !round_scaled_all(fmt, x, scale, out) {
        check_finite(x)?;
        for (j, &v) in x.iter().enumerate() {
            round_checked(fmt, scale * v, j)?;
        }
    }
    Ok(())
}

/// The error for a value that does not fit the wire format.
#[cold]
pub(crate) fn overflow_error(fmt: ValueFormat, v: f64, index: usize) -> CompressError {
    CompressError::Shape(format!(
        "value {v:e} for coordinate {index} overflows the {}-bit wire format",
        fmt.bits()
    ))
}

/// Checks that `x` has length `d` and finite entries (shared compressor prologue).
///
/// Same result as [`check_finite`] (which builds the error), but the screen
/// sums `v * 0.0` (NaN exactly for non-finite v) in eight independent lanes, so
/// it runs at memory speed instead of one dependent addition per entry.
#[inline]
pub(crate) fn check_input(x: &[f64], d: usize) -> Result<(), CompressError> {
    check_len(x, d)?;
    check_finite(x)
}

/// The length part of [`check_input`].
pub(crate) fn check_len(x: &[f64], d: usize) -> Result<(), CompressError> {
    if x.len() != d {
        return Err(CompressError::Shape(format!(
            "input has length {}, compressor was built for d = {d}",
            x.len()
        )));
    }
    Ok(())
}

/// Writes a sparse message: the index set of `c` then its values in `fmt`.
pub(crate) fn write_sparse(w: &mut BitWriter, c: &CompressedVec, fmt: ValueFormat) {
    encode(w, &c.indices, c.dim);
    let mut p = w.packer();
    for &v in &c.values {
        fmt.put(&mut p, v);
    }
}

/// Reads a message written by [`write_sparse`] into `out` (sparse form).
pub(crate) fn read_sparse(
    r: &mut BitReader<'_>,
    d: usize,
    fmt: ValueFormat,
    out: &mut CompressedVec,
) -> Result<(), DecodeError> {
    out.reset_sparse(d);
    decode(r, d, fmt.bits() as u64, &mut out.indices)?;
    read_values(r, fmt, out.indices.len(), &mut out.values)
}

/// Reads `n` values in `fmt`, appending to `values`; refuses to allocate for
/// values the input cannot hold.
pub(crate) fn read_values(
    r: &mut BitReader<'_>,
    fmt: ValueFormat,
    n: usize,
    values: &mut Vec<f64>,
) -> Result<(), DecodeError> {
    let need = (n as u64).saturating_mul(fmt.bits() as u64);
    if need > r.remaining() {
        return Err(short(r, need));
    }
    fmt.read_all(r, n, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    fn roundtrip(indices: &[u32], d: usize) -> (Mode, u64) {
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3); // misalign on purpose
        let mode = encode(&mut w, indices, d);
        let bits = w.bit_len() - 3;
        assert_eq!(bits, encoded_bits(indices, d));
        w.write_bits(0b11, 2);
        let bytes = w.finish().to_vec();
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read_bits(3).unwrap(), 0b101);
        let mut out = Vec::new();
        decode(&mut r, d, 0, &mut out).unwrap();
        assert_eq!(r.read_bits(2).unwrap(), 0b11);
        r.finish().unwrap();
        assert_eq!(out, indices);
        (mode, bits)
    }

    fn random_set(rng: &mut crate::rng::Rng, d: usize, k: usize) -> Vec<u32> {
        // Floyd's algorithm; fine for tests.
        let mut set = std::collections::BTreeSet::new();
        for j in d - k..d {
            let t = rng.gen_range(0..=j);
            if !set.insert(t as u32) {
                set.insert(j as u32);
            }
        }
        set.into_iter().collect()
    }

    /// log2 binomial(d, k).
    fn log2_binom(d: usize, k: usize) -> f64 {
        let k = k.min(d - k);
        (0..k)
            .map(|i| ((d - i) as f64 / (k - i) as f64).log2())
            .sum()
    }

    #[test]
    fn edge_sets_roundtrip() {
        roundtrip(&[], 1);
        roundtrip(&[0], 1);
        roundtrip(&[], 10);
        roundtrip(&(0..10).collect::<Vec<_>>(), 10);
        roundtrip(&[9], 10);
        roundtrip(&[0], 10);
        roundtrip(&[0, 9], 10);
        roundtrip(&[63], 64);
        roundtrip(&[64], 65);
        roundtrip(&[1, 2, 3, 63, 64, 127, 128, 129], 130);
        roundtrip(&[u32::MAX - 1], u32::MAX as usize);
        let dense: Vec<u32> = (0..1000).filter(|i| i % 3 != 0).collect();
        assert_eq!(roundtrip(&dense, 1000).0, Mode::Bitmap);
        let sparse: Vec<u32> = (0..1000).filter(|i| i % 97 == 5).collect();
        assert!(matches!(roundtrip(&sparse, 1000).0, Mode::Rice(_)));
    }

    #[test]
    fn random_sets_roundtrip() {
        let mut rng = crate::rng::rng_from_key(7);
        for _ in 0..300 {
            let d = rng.gen_range(1..3000);
            let k = rng.gen_range(0..=d);
            let s = random_set(&mut rng, d, k);
            roundtrip(&s, d);
        }
    }

    /// Rice parameter chosen by the local search equals the exhaustive optimum.
    #[test]
    fn rice_parameter_is_optimal() {
        let mut rng = crate::rng::rng_from_key(11);
        for _ in 0..200 {
            let d = rng.gen_range(2..100_000);
            let k = rng.gen_range(1..d.min(5000));
            let s = random_set(&mut rng, d, k);
            let (mode, bits) = plan(&s, d);
            let head = gamma_len(k as u64) + 1;
            let best = (0..=MAX_RICE_K)
                .map(|kk| rice_body_bits(&s, kk))
                .min()
                .unwrap()
                .min(d as u64);
            assert_eq!(bits, head + best, "d={d} k={k} mode={mode:?}");
        }
    }

    #[test]
    fn near_information_bound() {
        let mut rng = crate::rng::rng_from_key(3);
        let cases: &[(usize, usize)] = &[
            (100, 1),
            (1000, 1),
            (1000, 10),
            (1000, 125),
            (100_000, 1),
            (100_000, 100),
            (100_000, 1000),
            (100_000, 12_500),
            (1_000_000, 10_000),
            (1_000_000, 125_000),
            (10_000_000, 100_000),
        ];
        for &(d, k) in cases {
            let s = random_set(&mut rng, d, k);
            let (mode, bits) = roundtrip(&s, d);
            let bound = log2_binom(d, k);
            let ratio = bits as f64 / (bound + 64.0);
            println!(
                "d={d:>9} K={k:>7} mode={mode:?} bits={bits:>9} log2C={bound:>12.1} bits/(log2C+64)={ratio:.4} bits/log2C={:.4}",
                bits as f64 / bound
            );
            assert!(
                bits as f64 <= 1.1 * bound + 64.0,
                "d={d} k={k}: {bits} bits vs bound {bound}"
            );
        }
    }

    #[test]
    fn hostile_inputs_are_errors() {
        let mut out = Vec::new();
        // count larger than d
        let mut w = BitWriter::new();
        w.write_gamma(11);
        let b = w.finish().to_vec();
        assert!(decode(&mut BitReader::new(&b), 10, 0, &mut out).is_err());
        // rice parameter too large
        let mut w = BitWriter::new();
        w.write_gamma(2);
        w.write_bit(false);
        w.write_bits(40, 6);
        w.write_bits(0, 64);
        let b = w.finish().to_vec();
        assert!(decode(&mut BitReader::new(&b), 1000, 0, &mut out).is_err());
        // gap past the end
        let mut w = BitWriter::new();
        w.write_gamma(2);
        w.write_bit(false);
        w.write_bits(0, 6);
        w.write_rice(9, 0);
        w.write_rice(0, 0);
        let b = w.finish().to_vec();
        assert!(decode(&mut BitReader::new(&b), 10, 0, &mut out).is_err());
        // bitmap with the wrong number of ones
        let mut w = BitWriter::new();
        w.write_gamma(2);
        w.write_bit(true);
        w.write_bits(0b1110000000, 10);
        let b = w.finish().to_vec();
        assert!(decode(&mut BitReader::new(&b), 10, 0, &mut out).is_err());
        let mut w = BitWriter::new();
        w.write_gamma(2);
        w.write_bit(true);
        w.write_bits(0b1000000000, 10);
        let b = w.finish().to_vec();
        assert!(decode(&mut BitReader::new(&b), 10, 0, &mut out).is_err());
        // random garbage never panics
        let mut rng = crate::rng::rng_from_key(5);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..40);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let d = rng.gen_range(1..200);
            let mut r = BitReader::new(&bytes);
            if decode(&mut r, d, 0, &mut out).is_ok() {
                assert!(out.len() <= d);
                assert!(out.windows(2).all(|p| p[0] < p[1]));
                assert!(out.iter().all(|&i| (i as usize) < d));
                // and what is accepted is what the encoder writes
                let mut w = BitWriter::new();
                encode(&mut w, &out, d);
                let consumed = r.position() as usize;
                assert_eq!(w.bit_len() as usize, consumed);
                let again = w.finish().to_vec();
                let mut r2 = BitReader::new(&bytes);
                for (j, &byte) in again.iter().enumerate() {
                    let n = (consumed - 8 * j).min(8) as u32;
                    assert_eq!(u64::from(byte) >> (8 - n), r2.read_bits(n).unwrap());
                }
            }
        }
    }

    /// The complement's length, computed from its runs, is the length of
    /// the complement written out (random sets, edges included).
    #[test]
    fn complement_bits_match_the_written_complement() {
        let mut rng = crate::rng::rng_from_key(9);
        for trial in 0..3000 {
            let d = rng.gen_range(1..300);
            let k = match trial % 4 {
                0 => 0,
                1 => d,
                _ => rng.gen_range(0..=d),
            };
            let set = random_set(&mut rng, d, k);
            let complement: Vec<u32> = (0..d as u32)
                .filter(|j| set.binary_search(j).is_err())
                .collect();
            assert_eq!(
                complement_encoded_bits(&set, d),
                encoded_bits(&complement, d),
                "d={d} set={set:?}"
            );
        }
    }

    /// The one message for {5} out of 1000, and non-canonical forms of it.
    #[test]
    fn only_the_encoders_layout_is_accepted() {
        let (d, set) = (1000, [5u32]);
        let decode_bytes = |b: &[u8]| {
            let mut out = Vec::new();
            decode(&mut BitReader::new(b), d, 0, &mut out).map(|_| out)
        };
        let mut w = BitWriter::new();
        encode(&mut w, &set, d);
        assert_eq!(decode_bytes(w.finish()).unwrap(), set);
        // the same set as a 1000-bit bitmap
        let mut w = BitWriter::new();
        w.write_gamma(1);
        w.write_bit(true);
        for j in 0..d as u32 {
            w.write_bit(j == 5);
        }
        let e = decode_bytes(w.finish()).unwrap_err();
        assert!(e.to_string().contains("index layout"), "{e}");
        // the same set with Rice parameter 31 instead of the best one
        let mut w = BitWriter::new();
        w.write_gamma(1);
        w.write_bit(false);
        w.write_bits(31, 6);
        w.write_rice(5, 31);
        let e = decode_bytes(w.finish()).unwrap_err();
        assert!(e.to_string().contains("index layout"), "{e}");
    }

    /// A count of d indices, or K indices whose values must follow, is
    /// backed by the input before any index is stored.
    #[test]
    fn counts_the_input_cannot_back_allocate_nothing() {
        let d = 1 << 24;
        for count in [d as u64, 1 << 20] {
            let mut w = BitWriter::new();
            w.write_gamma(count);
            w.write_bit(false);
            w.write_bits(4, 6);
            w.write_bits(0, 64);
            let b = w.finish().to_vec();
            let mut out = Vec::new();
            let e = decode(&mut BitReader::new(&b), d, 32, &mut out).unwrap_err();
            assert!(
                matches!(e, DecodeError::Truncated { needed, .. } if u64::from(needed) >= 32 * count.min(1 << 27)),
                "{e}"
            );
            assert_eq!(out.capacity(), 0);
        }
    }
}
