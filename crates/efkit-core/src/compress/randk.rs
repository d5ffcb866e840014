//! Rand-K sparsification, unscaled and scaled.
//!
//! A set S of K coordinates is drawn uniformly among the binomial(d, K) subsets
//! (without replacement). Then
//!
//! * `rand-k`: C(x) = x restricted to S. Each coordinate is kept with
//!   probability K/d, so E||C(x) - x||^2 = (1 - K/d) ||x||^2 exactly:
//!   class B(K/d) (algorithms.md §3.2);
//! * `scaled-rand-k`: C(x) = (d/K) x restricted to S. E[C(x)] = x and
//!   E||C(x) - x||^2 = (d/K - 1) ||x||^2: class U(d/K - 1) (Beznosikov et al.,
//!   "On biased compression for distributed learning", arXiv:2002.12410, §2).
//!
//! S is drawn with Floyd's algorithm (Bentley & Floyd, "A sample of
//! brilliance", CACM 30(9), 1987): for j = d-K, ..., d-1 draw t uniform in
//! 0..=j and add t, or j if t is already in S. It uses exactly K integer draws
//! (portable, bit-reproducible: no floating point), a d-bit membership bitmap
//! (scratch), and the bitmap scan yields S in increasing order.
//!
//! `shared_seed = true`: S is drawn from `rng_from_key(shared_key)` and not
//! sent; the receiver regenerates it from [`DecodeCtx::shared_key`]. Wire: K
//! values only. Otherwise S is drawn from the sender's private stream and the
//! wire holds the index set ([`super::sparse_codec`]) then K values.
//! Paper bits: 32 K.

use std::cell::RefCell;

use rand::Rng as _;

use super::registry::{only_keys, resolve_k, value_format, CompressorSpec};
use super::sparse_codec::{
    check_input, read_sparse, read_values, round_checked, short, write_sparse,
};
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::rng::{rng_from_key, Rng};

/// Rand-K, unscaled (contractive) or scaled by d/K (unbiased).
#[derive(Debug, Clone)]
pub struct RandK {
    d: usize,
    k: usize,
    scaled: bool,
    shared: bool,
    fmt: ValueFormat,
}

/// Builds `rand-k` (`scaled = false`) or `scaled-rand-k` (parameters: `k` or
/// `ratio`, `shared_seed`, `values`).
pub fn from_spec(
    spec: &CompressorSpec,
    d: usize,
    scaled: bool,
) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["k", "ratio", "shared_seed", "values"])?;
    let k = resolve_k(spec, d)?;
    Ok(Box::new(RandK {
        d,
        k,
        scaled,
        shared: spec.shared_seed.unwrap_or(false),
        fmt: value_format(spec),
    }))
}

/// Draws a uniform K-subset of 0..d into `out` in increasing order (Floyd's
/// algorithm with a membership bitmap in `bitmap`).
pub(crate) fn sample_indices(
    rng: &mut Rng,
    d: usize,
    k: usize,
    bitmap: &mut Vec<u64>,
    out: &mut Vec<u32>,
) {
    out.clear();
    if k >= d {
        out.extend(0..d as u32);
        return;
    }
    let words = d.div_ceil(64);
    bitmap.clear();
    bitmap.resize(words, 0);
    for j in (d - k) as u64..d as u64 {
        let t = rng.gen_range(0..=j);
        let (wt, bt) = ((t / 64) as usize, t % 64);
        if bitmap[wt] >> bt & 1 == 1 {
            bitmap[(j / 64) as usize] |= 1 << (j % 64);
        } else {
            bitmap[wt] |= 1 << bt;
        }
    }
    out.reserve(k);
    for (wi, &word) in bitmap.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            let b = w.trailing_zeros();
            out.push((wi * 64) as u32 + b);
            w &= w - 1;
        }
    }
    debug_assert_eq!(out.len(), k);
}

thread_local! {
    /// Bitmap scratch for decoders, which get no [`super::Scratch`].
    static DECODE_BITMAP: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl RandK {
    fn scale(&self) -> f64 {
        if self.scaled {
            self.d as f64 / self.k as f64
        } else {
            1.0
        }
    }
}

impl Compressor for RandK {
    fn name(&self) -> &'static str {
        if self.scaled {
            "scaled-rand-k"
        } else {
            "rand-k"
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{}(k={}", self.name(), self.k);
        if self.shared {
            s.push_str(",shared");
        }
        if self.fmt != ValueFormat::F32 {
            s.push_str(&format!(",values=f{}", self.fmt.bits()));
        }
        s.push(')');
        s
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        if self.scaled {
            CompressorClass::Unbiased {
                omega: self.d as f64 / self.k as f64 - 1.0,
            }
        } else {
            CompressorClass::Contractive {
                alpha: self.k as f64 / self.d as f64,
            }
        }
    }

    fn is_deterministic(&self) -> bool {
        self.k == self.d
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        check_input(x, self.d)?;
        out.reset_sparse(self.d);
        let s = &mut *ctx.scratch;
        if self.shared {
            let mut rng = rng_from_key(ctx.shared_key);
            sample_indices(&mut rng, self.d, self.k, &mut s.u64s, &mut out.indices);
        } else {
            sample_indices(ctx.rng, self.d, self.k, &mut s.u64s, &mut out.indices);
        }
        let scale = self.scale();
        out.values.reserve(self.k);
        for &j in &out.indices {
            out.values
                .push(round_checked(self.fmt, x[j as usize] * scale, j as usize)?);
        }
        if self.shared {
            for &v in &out.values {
                self.fmt.write(w, v);
            }
        } else {
            write_sparse(w, out, self.fmt);
        }
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        if self.shared {
            out.reset_sparse(self.d);
            // Check the length before regenerating the indices (cheap rejection).
            let need = (self.k as u64).saturating_mul(self.fmt.bits() as u64);
            if need > r.remaining() {
                return Err(short(r, need));
            }
            let mut rng = rng_from_key(ctx.shared_key);
            DECODE_BITMAP.with(|b| {
                sample_indices(
                    &mut rng,
                    self.d,
                    self.k,
                    &mut b.borrow_mut(),
                    &mut out.indices,
                )
            });
            read_values(r, self.fmt, self.k, &mut out.values)
        } else {
            read_sparse(r, self.d, self.fmt, out)?;
            if out.indices.len() != self.k {
                return Err(DecodeError::invalid(
                    "index count",
                    format!(
                        "{} indices, {} sends {}",
                        out.indices.len(),
                        self.name(),
                        self.k
                    ),
                ));
            }
            Ok(())
        }
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_uniform_and_sorted() {
        // d = 5, K = 2: each of the 10 subsets has probability 1/10.
        let mut rng = rng_from_key(9);
        let (mut bm, mut out) = (Vec::new(), Vec::new());
        let mut counts = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            sample_indices(&mut rng, 5, 2, &mut bm, &mut out);
            assert!(out.windows(2).all(|p| p[0] < p[1]));
            *counts.entry(out.clone()).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 10);
        for (s, c) in counts {
            // binomial sd = sqrt(n * 0.1 * 0.9) = 42.4; allow 5 sd
            assert!((c as f64 - 2000.0).abs() < 5.0 * 42.5, "{s:?}: {c}");
        }
        for (d, k) in [(1, 1), (64, 63), (65, 1), (1000, 999), (130, 64)] {
            sample_indices(&mut rng, d, k, &mut bm, &mut out);
            assert_eq!(out.len(), k);
            assert!(out.windows(2).all(|p| p[0] < p[1]));
            assert!(out.iter().all(|&i| (i as usize) < d));
        }
    }
}
