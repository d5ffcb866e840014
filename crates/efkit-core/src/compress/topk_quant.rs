//! Top-K followed by natural compression of the kept values.
//!
//! C(x) = N(T_K(x)), where T_K is Top-K (ties to the lower index, see
//! [`super::topk`]) and N is natural compression (Horvath et al., "Natural
//! compression for distributed deep learning", arXiv:1905.10988) applied to each
//! kept value: |v| in [2^a, 2^(a+1)] is rounded up to 2^(a+1) with probability
//! (|v| - 2^a)/2^a and down to 2^a otherwise, sign kept.
//!
//! Class (derivation). N is unbiased per coordinate with
//! E(N(v) - v)^2 = (|v| - 2^a)(2^(a+1) - |v|) <= v^2/8 (the ratio
//! (t-1)(2-t)/t^2, t = |v|/2^a in [1, 2], peaks at t = 4/3 with value 1/8).
//! Write y = T_K(x) and S for the kept set. Because E[N(y)] = y and y is fixed
//! given x, the cross term vanishes and
//!
//! ```text
//! E||C(x) - x||^2 = ||y - x||^2 + E||N(y) - y||^2
//!                 = sum_{j not in S} x_j^2 + sum_{j in S} E(N(x_j) - x_j)^2
//!                <= ||x||^2 - ||y||^2 + ||y||^2 / 8
//!                 = ||x||^2 - (7/8) ||y||^2
//!                <= (1 - (7/8)(K/d)) ||x||^2,
//! ```
//!
//! using ||T_K(x)||^2 >= (K/d) ||x||^2 (the K largest squares are at least K/d
//! of the total). So C is in B(alpha) with alpha = 7K/(8d). The bound is tight
//! up to the factor: for x with all |x_j| = (4/3) 2^a and K = d it holds with
//! equality. The conformance suite checks it by Monte Carlo.
//!
//! Wire: the index set ([`super::sparse_codec`]) then K values in the 9-bit
//! natural form (sign + 8-bit exponent, `natural::write_natural`).
//!
//! Range: a kept value with |v| > 2^127 (which could round to 2^128, not
//! representable) makes `compress` return [`CompressError::Shape`] (an overflow
//! message) before anything is written, whatever the draw. Kept values below
//! 2^-126 are rounded unbiasedly between 0 and ±2^-126 (see `natural.rs`); their
//! variance is bounded by the absolute amount 2^-126 |v| instead of v^2/8, so
//! the alpha above holds for inputs whose kept nonzero entries are >= 2^-126.
//!
//! Paper bits: 9 per kept value (the EF21 deep-learning code's count for
//! natural compression, algorithms.md §3.3).

use super::natural::{natural_round, read_natural, write_natural, NATURAL_MAX};
use super::registry::{only_keys, resolve_k, CompressorSpec};
use super::sparse_codec::{
    check_input, decode as decode_indices, encode as encode_indices, overflow_error, short,
};
use super::topk::select_top_k;
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Bits of one natural-compressed value.
const NATURAL_BITS: u64 = super::natural::NATURAL_BITS as u64;

/// Top-K, then natural compression of the kept values.
#[derive(Debug, Clone)]
pub struct TopKQuant {
    d: usize,
    k: usize,
}

/// Builds `top-k-quant` (parameters: `k` or `ratio`, `quantizer` = `natural`,
/// which is also the default).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["k", "ratio", "quantizer"])?;
    match spec.quantizer.as_deref() {
        None | Some("natural") => {}
        Some(q) => {
            return Err(ParamError::Unknown {
                what: "top-k-quant quantizer",
                name: q.to_string(),
                allowed: "natural".into(),
            })
        }
    }
    let k = resolve_k(spec, d)?;
    Ok(Box::new(TopKQuant { d, k }))
}

impl Compressor for TopKQuant {
    fn name(&self) -> &'static str {
        "top-k-quant"
    }

    fn describe(&self) -> String {
        format!("top-k-quant(k={},quantizer=natural)", self.k)
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive {
            alpha: 7.0 * self.k as f64 / (8.0 * self.d as f64),
        }
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
        out.reset_sparse(self.d);
        {
            let s = &mut *ctx.scratch;
            select_top_k(x, self.k, &mut s.u32s, &mut s.u64s, &mut out.indices);
        }
        out.values.reserve(self.k);
        for &j in &out.indices {
            let v = x[j as usize];
            // Checked before rounding, so the outcome does not depend on the draw.
            if v.abs() > NATURAL_MAX {
                return Err(overflow_error(ValueFormat::F32, v, j as usize));
            }
            let mut q = natural_round(v, ctx.rng);
            if q == 0.0 {
                q = 0.0; // one encoding for zero (+0)
            }
            out.values.push(q);
        }
        encode_indices(w, &out.indices, self.d);
        for &q in &out.values {
            write_natural(w, q);
        }
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        out.reset_sparse(self.d);
        decode_indices(r, self.d, NATURAL_BITS, &mut out.indices)?;
        if out.indices.len() != self.k {
            return Err(DecodeError::invalid(
                "index count",
                format!(
                    "{} indices, top-k-quant sends {}",
                    out.indices.len(),
                    self.k
                ),
            ));
        }
        let need = self.k as u64 * NATURAL_BITS;
        if need > r.remaining() {
            return Err(short(r, need));
        }
        out.values.reserve(self.k);
        for _ in 0..self.k {
            out.values.push(read_natural(r)?);
        }
        Ok(())
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        NATURAL_BITS * c.values.len() as u64
    }
}
