//! The identity compressor: C(x) = x, sent densely.
//!
//! Class B(1) (equivalently U(0)) up to the rounding of values to the wire
//! format (algorithms.md §3.2). Wire: d values in the spec's format, nothing
//! else (the dimension is known to both sides). Paper bits: 32 d.

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::{check_input, read_values, round_checked};
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Dense pass-through.
#[derive(Debug, Clone)]
pub struct Identity {
    d: usize,
    fmt: ValueFormat,
}

/// Builds `identity` (parameter: `values`).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["values"])?;
    Ok(Box::new(Identity {
        d,
        fmt: value_format(spec),
    }))
}

impl Compressor for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn describe(&self) -> String {
        match self.fmt {
            ValueFormat::F32 => "identity".into(),
            f => format!("identity(values=f{})", f.bits()),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive { alpha: 1.0 }
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
        out.dim = self.d;
        out.dense = true;
        out.indices.clear();
        out.values.clear();
        out.values.reserve(self.d);
        for (j, &v) in x.iter().enumerate() {
            out.values.push(round_checked(self.fmt, v, j)?);
        }
        for &v in &out.values {
            self.fmt.write(w, v);
        }
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        out.dim = self.d;
        out.dense = true;
        out.indices.clear();
        out.values.clear();
        read_values(r, self.fmt, self.d, &mut out.values)
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }
}
