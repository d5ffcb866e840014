//! Bernoulli ("lazy") compression: send x/p with probability p, else nothing.
//!
//! With a coin b ~ Bernoulli(p), C(x) = (b/p) x. Then E[C(x)] = x and
//! E||C(x) - x||^2 = p (1/p - 1)^2 ||x||^2 + (1 - p) ||x||^2 = (1/p - 1) ||x||^2:
//! class U(1/p - 1) (algorithms.md §3.2; the EF21 reference code's "lazy"
//! compressor).
//!
//! Wire: one flag bit, then (if the flag is set) d values x_j/p in the spec's
//! format. When the flag is clear the reported value is the empty sparse vector
//! (zero). Paper bits: 32 d when sent, 0 otherwise (§3.3).

use rand::Rng as _;

use super::registry::{only_keys, value_format, CompressorSpec};
use super::sparse_codec::{check_input, read_values, round_all_checked};
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Whole-vector Bernoulli compression, scaled to be unbiased.
#[derive(Debug, Clone)]
pub struct Bernoulli {
    d: usize,
    p: f64,
    fmt: ValueFormat,
}

/// Builds `bernoulli` (parameters: `p` in (0, 1], `values`).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["p", "values"])?;
    let p = spec
        .p
        .ok_or_else(|| ParamError::invalid("p", "`bernoulli` needs `p` in (0, 1]"))?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(ParamError::invalid(
            "p",
            format!("p = {p} is outside (0, 1]"),
        ));
    }
    Ok(Box::new(Bernoulli {
        d,
        p,
        fmt: value_format(spec),
    }))
}

impl Compressor for Bernoulli {
    fn name(&self) -> &'static str {
        "bernoulli"
    }

    fn describe(&self) -> String {
        match self.fmt {
            ValueFormat::F32 => format!("bernoulli(p={})", self.p),
            f => format!("bernoulli(p={},values=f{})", self.p, f.bits()),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Unbiased {
            omega: 1.0 / self.p - 1.0,
        }
    }

    fn is_deterministic(&self) -> bool {
        self.p == 1.0
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        check_input(x, self.d)?;
        let send = self.p >= 1.0 || ctx.rng.gen_bool(self.p);
        if !send {
            out.reset_sparse(self.d);
            w.write_bit(false);
            return Ok(());
        }
        out.dim = self.d;
        out.dense = true;
        out.indices.clear();
        out.values.clear();
        let inv = 1.0 / self.p;
        out.values.resize(self.d, 0.0);
        round_all_checked(self.fmt, x, inv, &mut out.values)?;
        w.write_bit(true);
        self.fmt.write_all(w, &out.values);
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        if !r.read_bit()? {
            if self.p >= 1.0 {
                // with p = 1 the coin always says send
                return Err(DecodeError::invalid(
                    "flag",
                    "a \"not sent\" flag, which Bernoulli with p = 1 never writes",
                ));
            }
            out.reset_sparse(self.d);
            return Ok(());
        }
        out.dim = self.d;
        out.dense = true;
        out.indices.clear();
        out.values.clear();
        read_values(r, self.fmt, self.d, &mut out.values)
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        if c.dense {
            32 * self.d as u64
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::decode_one;

    #[test]
    fn a_not_sent_flag_is_refused_when_p_is_one() {
        let never_skips = Bernoulli {
            d: 3,
            p: 1.0,
            fmt: ValueFormat::F32,
        };
        let may_skip = Bernoulli {
            d: 3,
            p: 0.5,
            fmt: ValueFormat::F32,
        };
        // one clear flag bit, padded to a byte
        let skipped = [0u8];
        assert!(decode_one(&may_skip, &skipped, 0).unwrap().to_vec() == [0.0; 3]);
        let err = decode_one(&never_skips, &skipped, 0).unwrap_err();
        assert!(err.to_string().contains("p = 1"), "{err}");
    }
}
