//! Scaled sign (`scaled-sign`): C(x) = (||x||_1 / d) sign(x).
//!
//! Karimireddy, Rebjock, Stich, Jaggi, "Error feedback fixes SignSGD and other
//! gradient compression schemes", ICML 2019 (arXiv:1901.09847), with the scale
//! ||x||_1/d of their scaled-sign compressor. sign(0) = 0: a zero coordinate
//! stays exactly 0, and the scale is still ||x||_1/d (the paper's operator, also
//! in the presence of zeros). Deterministic.
//!
//! # Class: contractive with alpha = 1/d
//!
//! Let l = ||x||_1, n = number of nonzero coordinates (n <= d) and sigma > 0 any
//! scale. Only nonzero coordinates contribute an error, (sigma - |x_j|)^2 each:
//!
//! ```text
//! E(sigma) := ||sigma sign(x) - x||^2 = ||x||^2 - 2 sigma l + sigma^2 n.
//! ```
//!
//! At sigma = s := l/d,
//!
//! ```text
//! E(s) = ||x||^2 - (l^2/d)(2 - n/d) <= ||x||^2 - l^2/d <= (1 - 1/d) ||x||^2,
//! ```
//!
//! because n <= d and l = ||x||_1 >= ||x||_2. Without zeros (n = d) the first
//! inequality is the exact identity ||C(x) - x||^2 = ||x||^2 - ||x||_1^2/d of
//! algorithms.md §3.2 (data-dependent alpha(x) = ||x||_1^2/(d ||x||_2^2)); with
//! zeros the error is smaller still by (l^2/d)(1 - n/d). (The scale l/n would
//! minimise E; we keep the paper's l/d, which is enough for alpha = 1/d.) So C is
//! in B(alpha) with **alpha = 1/d**. The constant is sharp but not attained: for
//! x = e_1 the error is (1 - (2 - 1/d)/d) ||x||^2 (a zero-heavy vector gains
//! from sign(0) = 0), and x = e_1 + eps (1, ..., 1) approaches 1 - 1/d as
//! eps -> 0.
//!
//! Rounding of the scale. The transmitted scale sigma is whichever of the two
//! value-format neighbours sigma_dn <= s <= sigma_up gives the smaller E(sigma)
//! (ties: sigma_up). Since s n <= l,
//! E(sigma_up) - E(s) = (sigma_up - s)((sigma_up + s) n - 2 l) <= (sigma_up - s)^2 n
//! <= u^2 s^2 n <= u^2 l^2/d, with u the format's relative spacing (2^-23 for f32),
//! so E(sigma) <= ||x||^2 - (1 - u^2) l^2/d: the contraction holds up to a relative
//! 2^-46 (f32), 2^-20 (f16), 0 (f64, up to the f64 rounding of l/d), and only a
//! vector with no zeros and l^2 within a factor 1 + u^2 of ||x||^2 could notice.
//! For scales below the format's normal range (||x||_1/d < 1.2e-38 for f32) the
//! relative spacing is larger; the min-error choice still never does worse than
//! either neighbour.
//!
//! # Wire format
//!
//! ```text
//! sigma           in the value format (`values`, default f32); +0 iff x = 0, then nothing follows
//! set flag        0: the index set lists the zero coordinates, 1: the nonzero ones
//! index set       sparse_codec layout (gamma count, then Rice gaps or a bitmap)
//! n sign bits     one per nonzero coordinate in index order, 1 = negative
//! ```
//!
//! The encoder takes the shorter of the two index sets (ties: the zero set).
//! Without zeros the set costs 2 bits (flag + gamma(0)), so a message is the
//! scale plus d + 2 bits. Decoded values are exactly +sigma, -sigma or +0, as
//! reported by the encoder. A scale above (nnz/d) f64::MAX (nnz: nonzero
//! coordinates; reachable in f64 only) comes from no input and is refused.
//!
//! Paper bits: 32 + d (scale plus one bit per coordinate).
//!
//! # Implementation
//!
//! Two passes over x: one statistics pass (eight lanes: number of nonzeros,
//! max|x_j|, ||x||_1, and the finiteness screen), then one that writes the
//! decoded values and packs the sign bits 64 to a word (without zeros, a
//! branch-free loop; with zeros, the signs of the nonzero entries of each
//! 64-entry block are compacted). The decoder reads the signs 64 at a time.

use super::dither::{prepare_dense, round_down, round_up, scale_for, stats, Stats};
use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::{self, check_input};
use super::{
    check_finite, CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat,
};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Scaled sign, B(1/d).
#[derive(Debug, Clone)]
pub struct ScaledSign {
    d: usize,
    fmt: ValueFormat,
}

impl ScaledSign {
    /// Scaled sign for dimension `d` with the scale sent in `fmt`.
    pub fn new(d: usize, fmt: ValueFormat) -> Self {
        ScaledSign { d, fmt }
    }

    /// The transmitted scale for x (not all zero, finite) with one-pass
    /// statistics `st` (l1 sum): the format neighbour of ||x||_1/d with the
    /// smaller error (module docs).
    fn scale(&self, x: &[f64], st: &Stats) -> Result<f64, CompressError> {
        let m = st.max;
        // Work in a power-of-two scaled domain so that nothing overflows.
        let (c, l1c) = if (2f64.powi(-480)..=2f64.powi(480)).contains(&m) {
            (1.0, st.sum)
        } else {
            let c = scale_for(m);
            (c, l1_scaled(x, c))
        };
        let s = (l1c / self.d as f64) / c;
        let up = round_up(self.fmt, s);
        if !up.is_finite() {
            return Err(CompressError::Shape(format!(
                "scale {s:e} overflows the {}-bit wire format",
                self.fmt.bits()
            )));
        }
        let dn = round_down(self.fmt, s);
        let nnz = st.nnz;
        // E(sigma) - ||x||^2 = sigma (sigma n - 2 l), in the scaled domain.
        let excess = |sigma: f64| {
            let sc = sigma * c;
            sc * (sc * nnz as f64 - 2.0 * l1c)
        };
        Ok(if excess(dn) < excess(up) { dn } else { up })
    }
}

/// sum_j |c x_j| in eight lanes (the rare rescaled path of the scale).
fn l1_scaled(x: &[f64], c: f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += (v * c).abs();
        }
    }
    acc.iter().sum::<f64>()
        + chunks
            .remainder()
            .iter()
            .map(|v| (v * c).abs())
            .sum::<f64>()
}

/// Sign bit of an f64.
const SIGN: u64 = 1 << 63;

/// Writes ±sigma (by the sign of each entry) for a block of up to 64 entries
/// without zeros and returns their sign bits, first entry in the top bit of
/// the low `xs.len()` bits.
#[inline(always)]
fn signs_dense(xs: &[f64], os: &mut [f64], sbits: u64) -> u64 {
    let mut word = 0u64;
    for (o, &v) in os.iter_mut().zip(xs) {
        let b = v.to_bits();
        word = (word << 1) | (b >> 63);
        *o = f64::from_bits(sbits | (b & SIGN));
    }
    word
}

/// Writes ±sigma or +0 for a block of up to 64 entries and returns the sign
/// bits of the nonzero entries (in order, right-aligned) and their count.
#[inline(always)]
fn signs_sparse(xs: &[f64], os: &mut [f64], sbits: u64) -> (u64, u32) {
    let (mut word, mut cnt) = (0u64, 0u32);
    for (o, &v) in os.iter_mut().zip(xs) {
        let b = v.to_bits();
        let nz = (v != 0.0) as u64;
        word = (word << nz) | ((b >> 63) & nz);
        cnt += nz as u32;
        *o = f64::from_bits((sbits | (b & SIGN)) & nz.wrapping_neg());
    }
    (word, cnt)
}

/// Builds `scaled-sign` (parameter: `values`, the format of the scale).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["values"])?;
    if d == 0 {
        return Err(ParamError::invalid(
            "d",
            "scaled-sign needs dimension d >= 1",
        ));
    }
    Ok(Box::new(ScaledSign::new(d, value_format(spec))))
}

impl Compressor for ScaledSign {
    fn name(&self) -> &'static str {
        "scaled-sign"
    }

    fn describe(&self) -> String {
        match self.fmt {
            ValueFormat::F32 => "scaled-sign".into(),
            f => format!("scaled-sign(values=f{})", f.bits()),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive {
            alpha: 1.0 / self.d as f64,
        }
    }

    fn is_deterministic(&self) -> bool {
        true
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
        // One pass: nonzero count, max|x_j|, ||x||_1 and the finiteness screen.
        let st = stats::<false, true>(x);
        if !st.sum.is_finite() {
            check_finite(x)?; // else the l1 sum overflowed: `scale` rescales
        }
        let sigma = if st.nnz == 0 {
            0.0
        } else {
            self.scale(x, &st)?
        };
        prepare_dense(out, self.d);
        self.fmt.write(w, sigma);
        if sigma == 0.0 {
            out.values.fill(0.0);
            return Ok(());
        }
        let sbits = sigma.to_bits();
        if st.nnz == self.d {
            // No zeros: flag 0 and the empty zero set (gamma(0)), then d signs.
            w.reserve_bits(self.d as u64 + 2);
            w.write_bit(false);
            sparse_codec::encode(w, &[], self.d);
            let mut pk = w.packer();
            let mut xc = x.chunks_exact(64);
            let mut oc = out.values.chunks_exact_mut(64);
            for (xs, os) in (&mut xc).zip(&mut oc) {
                pk.put_u64(signs_dense(xs, os, sbits));
            }
            let xr = xc.remainder();
            pk.put(signs_dense(xr, oc.into_remainder(), sbits), xr.len() as u32);
            return Ok(());
        }
        // Index set: the zero coordinates, or the nonzero ones if shorter.
        let zeros = &mut ctx.scratch.u32s;
        zeros.clear();
        zeros.extend(
            x.iter()
                .enumerate()
                .filter(|(_, v)| **v == 0.0)
                .map(|(j, _)| j as u32),
        );
        let nonzeros = &mut out.indices; // temporary; emptied below
        nonzeros.clear();
        nonzeros.extend(
            x.iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(j, _)| j as u32),
        );
        let nz_bits = sparse_codec::encoded_bits(nonzeros, self.d);
        let z_bits = sparse_codec::encoded_bits(zeros, self.d);
        let list_nonzeros = nz_bits < z_bits;
        w.reserve_bits(1 + nz_bits.min(z_bits) + st.nnz as u64);
        w.write_bit(list_nonzeros);
        if list_nonzeros {
            sparse_codec::encode(w, nonzeros, self.d);
        } else {
            sparse_codec::encode(w, zeros, self.d);
        }
        out.indices.clear();
        let mut pk = w.packer();
        for (xs, os) in x.chunks(64).zip(out.values.chunks_mut(64)) {
            let (word, cnt) = signs_sparse(xs, os, sbits);
            pk.put(word, cnt);
        }
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        let sigma = self.fmt.read(r)?;
        if sigma.is_sign_negative() {
            return Err(DecodeError::invalid("scale", "negative scale"));
        }
        if sigma == 0.0 {
            out.reset_dense(self.d);
            return Ok(());
        }
        let list_nonzeros = r.read_bit()?;
        // The set goes into out.indices temporarily (no allocation in steady state).
        prepare_dense(out, self.d);
        let res = self.decode_signs(r, sigma, list_nonzeros, out);
        out.indices.clear();
        if res.is_err() {
            out.values.iter_mut().for_each(|v| *v = 0.0);
        }
        res
    }

    /// 32 for the scale plus one bit per coordinate.
    fn paper_bits(&self, _c: &CompressedVec) -> u64 {
        32 + self.d as u64
    }
}

impl ScaledSign {
    /// Reads the index set and the signs into `out.values` (length d; every
    /// entry is written), using `out.indices` for the set.
    fn decode_signs(
        &self,
        r: &mut BitReader<'_>,
        sigma: f64,
        list_nonzeros: bool,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        sparse_codec::decode(r, self.d, 0, &mut out.indices)?;
        // one message per value: the encoder lists the nonzeros only when
        // they are strictly shorter to write than the zeros
        let listed_bits = sparse_codec::encoded_bits(&out.indices, self.d);
        let other_bits = sparse_codec::complement_encoded_bits(&out.indices, self.d);
        let canonical = if list_nonzeros {
            listed_bits < other_bits
        } else {
            other_bits >= listed_bits
        };
        if !canonical {
            return Err(DecodeError::invalid(
                "index set",
                format!(
                    "the {} are listed, but the {} are shorter to write",
                    if list_nonzeros { "nonzeros" } else { "zeros" },
                    if list_nonzeros { "zeros" } else { "nonzeros" }
                ),
            ));
        }
        let listed = out.indices.len();
        let nnz = if list_nonzeros {
            listed
        } else {
            self.d - listed
        };
        if nnz == 0 {
            return Err(DecodeError::invalid(
                "index set",
                "a nonzero scale with no nonzero coordinate",
            ));
        }
        // sigma is a format neighbour of ||x||_1/d <= (nnz/d) max|x_j|, and
        // |x_j| <= f64::MAX: a larger scale (possible in f64 only) comes
        // from no vector with these zeros (slack for the rounding of the
        // l1 sum and of sigma)
        if sigma / f64::MAX > nnz as f64 / self.d as f64 * (1.0 + 1e-9) {
            return Err(DecodeError::invalid(
                "scale",
                format!(
                    "scale {sigma:e} is above what {nnz} nonzero coordinates of {} can give",
                    self.d
                ),
            ));
        }
        if nnz as u64 > r.remaining() {
            return Err(DecodeError::Truncated {
                at: r.position(),
                needed: u32::try_from(nnz).unwrap_or(u32::MAX),
            });
        }
        let sbits = sigma.to_bits();
        if nnz == self.d {
            // Every coordinate carries a sign: 64 at a time.
            let mut oc = out.values.chunks_exact_mut(64);
            for os in &mut oc {
                let word = r.read_u64_block()?;
                for (i, o) in os.iter_mut().enumerate() {
                    *o = f64::from_bits(sbits | ((word << i) & SIGN));
                }
            }
            let os = oc.into_remainder();
            let word = r.read_bits(os.len() as u32)? << ((64 - os.len() as u32) & 63);
            for (i, o) in os.iter_mut().enumerate() {
                *o = f64::from_bits(sbits | ((word << i) & SIGN));
            }
            return Ok(());
        }
        // Blocks of 64 coordinates: the nonzero mask from the listed set, then
        // that many sign bits.
        let list = &out.indices[..];
        let mut next = 0usize;
        for (b, os) in out.values.chunks_mut(64).enumerate() {
            let base = (b * 64) as u32;
            let len = os.len() as u32;
            let mut listed_mask = 0u64;
            while next < list.len() && list[next] < base + len {
                listed_mask |= 1u64 << (63 - (list[next] - base));
                next += 1;
            }
            let valid = if len == 64 {
                u64::MAX
            } else {
                !(u64::MAX >> len)
            };
            let nz = if list_nonzeros {
                listed_mask
            } else {
                !listed_mask & valid
            };
            let cnt = nz.count_ones();
            let mut bits = if cnt == 64 {
                r.read_u64_block()?
            } else {
                r.read_bits(cnt)? << ((64 - cnt) & 63)
            };
            for (i, o) in os.iter_mut().enumerate() {
                let z = (nz >> (63 - i)) & 1;
                *o = f64::from_bits((sbits | (bits & SIGN)) & z.wrapping_neg());
                bits <<= z;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{decode_one, encode_one};
    use crate::rng::rng_from_key;
    use rand::Rng as _;

    fn err2(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
    }

    fn run(c: &ScaledSign, x: &[f64]) -> crate::compress::Encoded {
        let mut rng = rng_from_key(0);
        let enc = encode_one(c, x, &mut rng, 0).unwrap();
        assert_eq!(enc.wire_bits, 8 * enc.bytes.len() as u64);
        assert_eq!(enc.paper_bits, 32 + x.len() as u64);
        let dec = decode_one(c, &enc.bytes, 0).unwrap();
        assert!(dec.bit_eq(&enc.value));
        enc
    }

    fn random_vec(g: &mut crate::rng::Rng, d: usize, zero_frac: f64) -> Vec<f64> {
        (0..d)
            .map(|_| {
                if g.gen_bool(zero_frac) {
                    0.0
                } else {
                    (g.gen::<f64>() - 0.5) * 10f64.powi(g.gen_range(-3..3))
                }
            })
            .collect()
    }

    #[test]
    fn values_are_scaled_signs() {
        let c = ScaledSign::new(5, ValueFormat::F64);
        let x = [1.0, -2.0, 0.0, 4.0, -0.0];
        let enc = run(&c, &x);
        let s = 7.0 / 5.0;
        let v = &enc.value.values;
        assert_eq!(v, &vec![s, -s, 0.0, s, 0.0]);
        assert!(v.iter().all(|q| q.to_bits() != (-0.0f64).to_bits()));
    }

    #[test]
    fn contraction_holds_with_and_without_zeros() {
        let mut g = rng_from_key(1);
        for fmt in [ValueFormat::F16, ValueFormat::F32, ValueFormat::F64] {
            for &d in &[1usize, 2, 3, 10, 100, 1000] {
                let c = ScaledSign::new(d, fmt);
                let alpha = 1.0 / d as f64;
                for zf in [0.0, 0.1, 0.5, 0.9, 0.999] {
                    for _ in 0..5 {
                        let x = random_vec(&mut g, d, zf);
                        let enc = run(&c, &x);
                        let n2: f64 = x.iter().map(|v| v * v).sum();
                        let e = err2(&enc.value.values, &x);
                        // The documented bound: ||x||^2 - (1 - u^2) l^2/d <= (1 - (1 - u^2)/d) ||x||^2.
                        let u = super::super::dither::format_ulp(fmt);
                        let l1: f64 = x.iter().map(|v| v.abs()).sum();
                        let bound = n2 - (1.0 - u * u) * l1 * l1 / d as f64;
                        assert!(
                            e <= bound + 1e-12 * n2,
                            "{fmt:?} d {d} zf {zf}: {e} vs {bound}"
                        );
                        assert!(
                            e <= (1.0 - (1.0 - u * u) * alpha) * n2 * (1.0 + 1e-12),
                            "{fmt:?} d {d} zf {zf}: {e} vs {n2}"
                        );
                        if d > 1 {
                            assert!(
                                e <= (1.0 - alpha) * n2 * (1.0 + 1e-12),
                                "{fmt:?} d {d} zf {zf}: {e} vs {n2}"
                            );
                        }
                        // No zeros and f64: the exact identity.
                        if zf == 0.0 && fmt == ValueFormat::F64 {
                            let l1: f64 = x.iter().map(|v| v.abs()).sum();
                            let want = n2 - l1 * l1 / d as f64;
                            assert!((e - want).abs() <= 1e-10 * n2, "{e} vs {want}");
                        }
                    }
                }
            }
        }
        // e_1: error (1 - (2 - 1/d)/d) ||x||^2.
        let c = ScaledSign::new(8, ValueFormat::F32);
        let mut x = vec![0.0; 8];
        x[5] = -3.0;
        let enc = run(&c, &x);
        assert!(
            (err2(&enc.value.values, &x) - 9.0 * (1.0 - (2.0 - 1.0 / 8.0) / 8.0)).abs() < 1e-12
        );
        // e_1 + eps (1, ..., 1) approaches the constant 1 - 1/d.
        let mut x = vec![1e-5; 8];
        x[0] = 1.0;
        let c = ScaledSign::new(8, ValueFormat::F64);
        let enc = run(&c, &x);
        let n2: f64 = x.iter().map(|v| v * v).sum();
        let ratio = err2(&enc.value.values, &x) / n2;
        assert!(
            ratio <= 1.0 - 1.0 / 8.0 && ratio > 1.0 - 1.0 / 8.0 - 1e-3,
            "{ratio}"
        );
    }

    /// The same value with the other index set listed (zeros instead of
    /// nonzeros or back) is refused: one message per value (found by
    /// review: both were accepted, so a message could be inflated).
    #[test]
    fn only_the_shorter_index_set_is_accepted() {
        let mut g = rng_from_key(3);
        let mut refused = 0;
        for &d in &[2usize, 7, 64, 65, 300] {
            for zf in [0.1, 0.5, 0.9] {
                let c = ScaledSign::new(d, ValueFormat::F32);
                let x = random_vec(&mut g, d, zf);
                let enc = run(&c, &x);
                // parse: scale, flag, index set, then the sign bits
                let mut r = BitReader::new(&enc.bytes);
                let sigma = ValueFormat::F32.read(&mut r).unwrap();
                if sigma == 0.0 {
                    continue;
                }
                let flag = r.read_bit().unwrap();
                let mut listed = Vec::new();
                sparse_codec::decode(&mut r, d, 0, &mut listed).unwrap();
                let mut signs = Vec::new();
                while r.remaining() > 0 {
                    signs.push(r.read_bit().unwrap());
                }
                // the other set, same signs
                let other: Vec<u32> = (0..d as u32)
                    .filter(|j| listed.binary_search(j).is_err())
                    .collect();
                let mut w = BitWriter::new();
                ValueFormat::F32.write(&mut w, sigma);
                w.write_bit(!flag);
                sparse_codec::encode(&mut w, &other, d);
                for &b in &signs {
                    w.write_bit(b);
                }
                let alt = w.finish().to_vec();
                let e = decode_one(&c, &alt, 0)
                    .err()
                    .unwrap_or_else(|| panic!("d {d} zf {zf}: the other set was accepted"));
                assert!(e.to_string().contains("shorter to write"), "{e}");
                refused += 1;
            }
        }
        assert!(refused >= 10, "{refused}");
    }

    #[test]
    fn wire_layouts_and_sizes() {
        let d = 1000;
        let c = ScaledSign::new(d, ValueFormat::F32);
        // No zeros: scale + flag + gamma(0) + d signs.
        let x: Vec<f64> = (0..d)
            .map(|j| if j % 3 == 0 { -1.5 } else { 0.25 })
            .collect();
        let enc = run(&c, &x);
        assert_eq!(enc.bytes.len(), (32 + 2 + d).div_ceil(8));
        // Few nonzeros: listing them beats listing the zeros.
        let mut x = vec![0.0; d];
        x[17] = 1.0;
        x[500] = -2.0;
        let enc = run(&c, &x);
        assert!(enc.bytes.len() < 12, "{}", enc.bytes.len());
        assert_eq!(enc.bytes[4] >> 7, 1, "nonzero set listed");
        // Few zeros: listing the zeros.
        let mut x = vec![1.0; d];
        x[3] = 0.0;
        let enc = run(&c, &x);
        assert_eq!(enc.bytes[4] >> 7, 0);
        assert!(enc.bytes.len() * 8 < 32 + d + 40);
        // Zero vector: only the scale.
        let enc = run(&c, &vec![0.0; d]);
        assert_eq!(enc.bytes, vec![0; 4]);
        let enc = run(&c, &vec![-0.0; d]);
        assert_eq!(enc.bytes, vec![0; 4]);
    }

    #[test]
    fn extreme_magnitudes() {
        let c = ScaledSign::new(3, ValueFormat::F64);
        let x = [1.7e308, -1.7e308, 1.7e308];
        let enc = run(&c, &x);
        assert!(enc
            .value
            .values
            .iter()
            .all(|v| v.is_finite() && v.abs() > 1e308));
        run(&c, &[5e-324, 0.0, -1e-320]);
        let c = ScaledSign::new(2, ValueFormat::F16);
        let mut rng = rng_from_key(0);
        assert!(matches!(
            encode_one(&c, &[1e6, 1e6], &mut rng, 0),
            Err(CompressError::Shape(_))
        ));
        // Tiny scale in f16: never worse than sending nothing.
        let x = [1e-9, -2e-9];
        let enc = run(&c, &x);
        let n2: f64 = x.iter().map(|v| v * v).sum();
        assert!(err2(&enc.value.values, &x) <= n2);
    }

    /// In f64 a scale above (nnz/d) f64::MAX comes from no vector with the
    /// message's zeros and is refused; the largest reachable one decodes.
    #[test]
    fn a_scale_no_vector_with_these_zeros_gives_is_refused() {
        let c = ScaledSign::new(4, ValueFormat::F64);
        let max = f64::MAX;
        // one nonzero: the scale is at most max/4
        let enc = run(&c, &[max, 0.0, 0.0, 0.0]);
        assert_eq!(enc.value.values[0], max / 4.0);
        let mut forged = enc.bytes.clone();
        forged[..8].copy_from_slice(&(max / 2.0).to_bits().to_be_bytes());
        let e = decode_one(&c, &forged, 0).unwrap_err();
        assert!(e.to_string().contains("above what 1 nonzero"), "{e}");
        // three nonzeros: up to 3 max/4; every coordinate nonzero: any scale
        run(&c, &[max, -max, max, 0.0]);
        let enc = run(&c, &[max, -max, max, max]);
        assert_eq!(enc.value.values[0].abs(), max);
    }

    #[test]
    fn non_finite_and_wrong_length_are_errors() {
        let c = ScaledSign::new(3, ValueFormat::F32);
        let mut rng = rng_from_key(0);
        let e = encode_one(&c, &[0.0, 1.0, f64::NAN], &mut rng, 0).unwrap_err();
        assert!(matches!(e, CompressError::NonFinite { index: 2, .. }));
        assert!(encode_one(&c, &[0.0, 1.0], &mut rng, 0).is_err());
    }

    #[test]
    fn truncated_corrupted_and_garbage_input() {
        let d = 64;
        let c = ScaledSign::new(d, ValueFormat::F32);
        let mut g = rng_from_key(3);
        for zf in [0.0, 0.3, 0.95] {
            let x = random_vec(&mut g, d, zf);
            let enc = run(&c, &x);
            for cut in 0..enc.bytes.len() {
                assert!(decode_one(&c, &enc.bytes[..cut], 0).is_err());
            }
            let mut longer = enc.bytes.clone();
            longer.push(0);
            assert!(decode_one(&c, &longer, 0).is_err());
            let mut bad = enc.bytes.clone();
            bad[0] |= 0x80;
            assert!(matches!(
                decode_one(&c, &bad, 0),
                Err(DecodeError::Invalid { .. })
            ));
        }
        // Nonzero scale, nonzero set listed but empty.
        let mut w = BitWriter::new();
        w.write_f32(1.0);
        w.write_bit(true);
        w.write_gamma(0);
        assert!(decode_one(&c, w.finish(), 0).is_err());
        // Non-finite scale.
        let mut w = BitWriter::new();
        w.write_f32(f32::INFINITY);
        assert!(decode_one(&c, w.finish(), 0).is_err());
        for _ in 0..3000 {
            let len = g.gen_range(0..20);
            let mut bytes: Vec<u8> = (0..len).map(|_| g.gen()).collect();
            if len >= 4 && g.gen_bool(0.7) {
                bytes[..4].copy_from_slice(&0.5f32.to_bits().to_be_bytes());
            }
            if let Ok(v) = decode_one(&c, &bytes, 0) {
                assert_eq!(v.values.len(), d);
                assert!(v.indices.is_empty() && v.dense);
                assert!(v.values.iter().all(|q| q.is_finite()));
            }
        }
    }

    /// Zeros at and around the 64-entry block boundaries, in both index-set
    /// choices, and the zero-free path at every length around them: values
    /// and sizes as specified, round trips bit for bit.
    #[test]
    fn signs_across_block_boundaries() {
        for &d in &[1usize, 2, 63, 64, 65, 127, 128, 129, 200, 257] {
            let c = ScaledSign::new(d, ValueFormat::F64);
            let x: Vec<f64> = (0..d)
                .map(|j| {
                    if j % 5 == 1 {
                        -(j as f64) - 1.0
                    } else {
                        j as f64 + 0.5
                    }
                })
                .collect();
            let enc = run(&c, &x);
            // No zeros: scale, flag, gamma(0), d signs.
            assert_eq!(enc.bytes.len(), (64 + 2 + d).div_ceil(8), "d {d}");
            let s = x.iter().map(|v| v.abs()).sum::<f64>() / d as f64;
            for (q, v) in enc.value.values.iter().zip(&x) {
                assert_eq!(*q, s.copysign(*v));
            }
            let edges: Vec<usize> = (0..d).filter(|j| j % 64 == 0 || j % 64 == 63).collect();
            let most: Vec<usize> = (0..d).filter(|j| j % 7 != 3).collect();
            for zeros in [vec![0usize], vec![d - 1], edges, most] {
                let mut y = x.clone();
                for &j in &zeros {
                    y[j] = if j % 2 == 0 { 0.0 } else { -0.0 };
                }
                if zeros.len() == d {
                    continue;
                }
                let enc = run(&c, &y);
                let l1: f64 = y.iter().map(|v| v.abs()).sum();
                let s = l1 / d as f64;
                for (j, (q, v)) in enc.value.values.iter().zip(&y).enumerate() {
                    if *v == 0.0 {
                        assert_eq!(q.to_bits(), 0, "d {d} j {j}: +0");
                    } else {
                        assert_eq!(*q, s.copysign(*v), "d {d} j {j}");
                    }
                }
            }
        }
    }

    /// Steady state: once the buffers have grown, compressing allocates
    /// nothing (no buffer grows), with and without zeros.
    #[test]
    fn steady_state_does_not_reallocate() {
        let d = 5000;
        let c = ScaledSign::new(d, ValueFormat::F32);
        let mut g = rng_from_key(8);
        let xs: Vec<Vec<f64>> = [0.0, 0.3, 0.0]
            .iter()
            .map(|&zf| random_vec(&mut g, d, zf))
            .collect();
        let caps = crate::compress::buffer_capacities(&c, &xs, 9, 1);
        for round in 3..caps.len() {
            assert_eq!(caps[round], caps[round - 1], "round {round}: a buffer grew");
        }
    }

    #[test]
    fn spec_validation() {
        let mut s = CompressorSpec::named("scaled-sign");
        assert!(from_spec(&s, 4).is_ok());
        assert!(from_spec(&s, 0).is_err());
        s.values = Some(ValueFormat::F16);
        let c = from_spec(&s, 4).unwrap();
        assert_eq!(c.describe(), "scaled-sign(values=f16)");
        assert_eq!(c.class(), CompressorClass::Contractive { alpha: 0.25 });
        s.levels = Some(2);
        assert!(from_spec(&s, 4).is_err());
    }
}
