//! Threshold (hard-threshold) sparsification: keep the entries with |x_j| >= lambda.
//!
//! C(x)_j = x_j if |x_j| >= lambda, else 0. The dropped entries each have
//! x_j^2 < lambda^2, so ||C(x) - x||^2 <= d lambda^2 for every x: an absolute
//! compressor with delta2 = d lambda^2 (Sahu et al., "Rethinking gradient
//! sparsification as total error minimization", NeurIPS 2021). Deterministic;
//! the number of kept entries depends on x. lambda = 0 keeps every entry.
//!
//! Wire: the index set ([`super::sparse_codec`], which also carries the count)
//! then the kept values in the spec's format. Paper bits: 32 per kept value.

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::{check_input, read_sparse, round_checked, write_sparse};
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Keeps the entries of magnitude at least lambda.
#[derive(Debug, Clone)]
pub struct Threshold {
    d: usize,
    lambda: f64,
    fmt: ValueFormat,
}

/// Builds `threshold` (parameters: `lambda` >= 0 finite, `values`).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["lambda", "values"])?;
    let lambda = spec
        .lambda
        .ok_or_else(|| ParamError::invalid("lambda", "`threshold` needs `lambda` >= 0"))?;
    if !(lambda >= 0.0 && lambda.is_finite()) {
        return Err(ParamError::invalid(
            "lambda",
            format!("lambda = {lambda} is outside [0, inf)"),
        ));
    }
    Ok(Box::new(Threshold {
        d,
        lambda,
        fmt: value_format(spec),
    }))
}

impl Compressor for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn describe(&self) -> String {
        match self.fmt {
            ValueFormat::F32 => format!("threshold(lambda={})", self.lambda),
            f => format!("threshold(lambda={},values=f{})", self.lambda, f.bits()),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Absolute {
            delta2: self.d as f64 * self.lambda * self.lambda,
        }
    }

    fn is_deterministic(&self) -> bool {
        true
    }

    fn compress(
        &self,
        x: &[f64],
        _ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        check_input(x, self.d)?;
        out.reset_sparse(self.d);
        for (j, &v) in x.iter().enumerate() {
            if v.abs() >= self.lambda {
                out.indices.push(j as u32);
                out.values.push(round_checked(self.fmt, v, j)?);
            }
        }
        write_sparse(w, out, self.fmt);
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        read_sparse(r, self.d, self.fmt, out)
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }
}
