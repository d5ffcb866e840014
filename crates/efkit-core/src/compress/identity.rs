//! The identity compressor: C(x) = x, sent densely.
//!
//! Class B(1) (equivalently U(0)) up to the rounding of values to the wire
//! format (algorithms.md §3.2). Wire: d values in the spec's format, nothing
//! else (the dimension is known to both sides). Paper bits: 32 d.

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::{check_len, read_values, round_all_checked};
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
        check_len(x, self.d)?;
        out.dim = self.d;
        out.dense = true;
        out.indices.clear();
        out.values.clear();
        out.values.resize(self.d, 0.0);
        round_all_checked(self.fmt, x, 1.0, &mut out.values)?;
        self.fmt.write_all(w, &out.values);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::encode_one;
    use crate::rng::rng_from_key;

    /// The one-pass rounding reports the same error as the checks in order:
    /// a non-finite input anywhere before an overflow of the format.
    #[test]
    fn errors_name_the_non_finite_input_before_an_overflow() {
        let c = Identity {
            d: 8,
            fmt: ValueFormat::F32,
        };
        let mut x = [1.0, 2.0, 3.0, 1e300, 5.0, 6.0, 7.0, f64::NAN];
        let e = encode_one(&c, &x, &mut rng_from_key(1), 0).unwrap_err();
        assert!(
            matches!(e, CompressError::NonFinite { index: 7, .. }),
            "{e}"
        );
        x[7] = 8.0;
        let e = encode_one(&c, &x, &mut rng_from_key(1), 0).unwrap_err();
        assert!(
            e.to_string().contains("coordinate 3 overflows the 32-bit"),
            "{e}"
        );
        x[3] = 4.0;
        let m = encode_one(&c, &x, &mut rng_from_key(1), 0).unwrap();
        assert_eq!(m.value.values, x);
        assert_eq!(m.bytes.len(), 32);
    }
}
