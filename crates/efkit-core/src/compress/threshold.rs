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
        read_sparse(r, self.d, self.fmt, out)?;
        // The encoder keeps |x_j| >= lambda and rounds to the value format;
        // rounding is monotone, so every value it sends has magnitude at
        // least lambda's rounding (not lambda itself: 0.1 rounds below
        // itself in f16).
        // lambda = 0 keeps every entry
        if self.lambda == 0.0 && out.indices.len() != self.d {
            return Err(DecodeError::invalid(
                "count",
                format!(
                    "{} of {} entries, but lambda = 0 sends every entry",
                    out.indices.len(),
                    self.d
                ),
            ));
        }
        let least = self.fmt.round(self.lambda);
        if let Some((&j, &v)) = out
            .indices
            .iter()
            .zip(&out.values)
            .find(|&(_, v)| v.abs() < least)
        {
            return Err(DecodeError::invalid(
                "value",
                format!(
                    "coordinate {j} carries {v:e}, below the threshold lambda = {} that every sent entry reaches",
                    self.lambda
                ),
            ));
        }
        Ok(())
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{decode_one, encode_one};
    use crate::rng::rng_from_key;

    fn threshold(lambda: f64, fmt: ValueFormat) -> Threshold {
        Threshold { d: 4, lambda, fmt }
    }

    #[test]
    fn decoding_refuses_an_entry_below_the_threshold() {
        let x = [0.6, 0.1, -0.7, 0.0];
        let low = threshold(0.05, ValueFormat::F32);
        let msg = encode_one(&low, &x, &mut rng_from_key(1), 0).unwrap();
        assert_eq!(msg.value.indices, [0, 1, 2]);
        // the message of lambda = 0.05 lists 0.1, which lambda = 0.5 never sends
        let err = decode_one(&threshold(0.5, ValueFormat::F32), &msg.bytes, 0).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("coordinate 1") && text.contains("lambda = 0.5"),
            "{text}"
        );
        // its own message, and one that lists nothing, decode
        let own = threshold(0.5, ValueFormat::F32);
        let m = encode_one(&own, &x, &mut rng_from_key(1), 0).unwrap();
        assert_eq!(
            decode_one(&own, &m.bytes, 0).unwrap().to_vec(),
            [0.6f32 as f64, 0.0, -0.7f32 as f64, 0.0]
        );
        let m = encode_one(&own, &[0.0; 4], &mut rng_from_key(1), 0).unwrap();
        assert_eq!(decode_one(&own, &m.bytes, 0).unwrap().indices.len(), 0);
    }

    #[test]
    fn lambda_zero_sends_every_entry() {
        let all = threshold(0.0, ValueFormat::F32);
        let x = [0.0, -0.0, 1e-300, 2.0];
        let m = encode_one(&all, &x, &mut rng_from_key(1), 0).unwrap();
        assert_eq!(m.value.indices, [0, 1, 2, 3]);
        decode_one(&all, &m.bytes, 0).unwrap();
        // a message listing fewer is refused
        let some = encode_one(
            &threshold(1.0, ValueFormat::F32),
            &x,
            &mut rng_from_key(1),
            0,
        )
        .unwrap();
        let err = decode_one(&all, &some.bytes, 0).unwrap_err();
        assert!(err.to_string().contains("1 of 4 entries"), "{err}");
    }

    #[test]
    fn an_entry_that_rounds_below_lambda_is_accepted() {
        // 0.1 reaches lambda = 0.1 and is sent as f16 0.0999755859375 < 0.1
        let c = threshold(0.1, ValueFormat::F16);
        let m = encode_one(&c, &[0.1, 0.0, 0.0, 0.0], &mut rng_from_key(1), 0).unwrap();
        let v = decode_one(&c, &m.bytes, 0).unwrap();
        assert!(v.values[0] < 0.1);
        assert_eq!(v.values, [ValueFormat::F16.round(0.1)]);
    }
}
