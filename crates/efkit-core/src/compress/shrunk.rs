//! An unbiased compressor made contractive: C(x) / (1 + omega).
//!
//! If C is unbiased with variance constant omega (E[C(x)] = x,
//! E||C(x) - x||^2 <= omega ||x||^2), then C' = C / (1 + omega) satisfies
//!
//! ```text
//! E||C'(x) - x||^2 = E||C(x)||^2 / (1 + omega)^2 - 2 ||x||^2 / (1 + omega) + ||x||^2
//!                 <= (1 - 1/(1 + omega)) ||x||^2,
//! ```
//!
//! i.e. C' is contractive with alpha = 1/(1 + omega) (algorithms.md §3.1; EF21
//! with Bells & Whistles, the discussion of eqs. (4)-(5)). This is what makes
//! EF21's step-size theory apply to Rand-K, Bernoulli, QSGD or natural
//! dithering with omega >= 1, for which C itself is not contractive.
//!
//! Wire: exactly the inner compressor's message (the factor is a constant both
//! sides know), so the bits are the inner compressor's bits. Both sides scale
//! the decoded values by the same f64 factor, so sender and receiver hold the
//! same vector bit for bit.

use super::registry::CompressorSpec;
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// C / (1 + omega) for an unbiased compressor C (config: `contractive = true`).
#[derive(Debug)]
pub struct Shrunk {
    inner: Box<dyn Compressor>,
    omega: f64,
    factor: f64,
}

/// Wraps `inner`, which must be unbiased; the error names the key.
pub fn shrink(
    inner: Box<dyn Compressor>,
    spec: &CompressorSpec,
) -> Result<Box<dyn Compressor>, ParamError> {
    match inner.class() {
        CompressorClass::Unbiased { omega } if omega.is_finite() => Ok(Box::new(Shrunk {
            inner,
            omega,
            factor: 1.0 / (1.0 + omega),
        })),
        CompressorClass::Unbiased { omega } => Err(ParamError::invalid(
            "contractive",
            format!("`{}` has omega = {omega}; C/(1 + omega) would be zero", spec.name),
        )),
        _ => Err(ParamError::invalid(
            "contractive",
            format!(
                "`contractive = true` scales an unbiased compressor by 1/(1 + omega); `{}` is not unbiased",
                spec.name
            ),
        )),
    }
}

impl Shrunk {
    fn scale(&self, out: &mut CompressedVec) {
        for v in &mut out.values {
            *v *= self.factor;
        }
    }
}

impl Compressor for Shrunk {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn describe(&self) -> String {
        format!("{}/(1+omega)", self.inner.describe())
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive {
            alpha: 1.0 / (1.0 + self.omega),
        }
    }

    fn is_deterministic(&self) -> bool {
        self.inner.is_deterministic()
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        self.inner.compress(x, ctx, out, w)?;
        self.scale(out);
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        self.inner.decode(r, ctx, out)?;
        self.scale(out);
        Ok(())
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        self.inner.paper_bits(c)
    }
}
