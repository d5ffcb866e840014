//! Compressors and their wire codecs.
//!
//! A compressor `C` maps x in R^d to a message. Two classes matter for error
//! feedback (algorithms.md §3.1):
//!
//! * contractive B(alpha): E||C(x) - x||^2 <= (1 - alpha) ||x||^2, 0 < alpha <= 1;
//! * unbiased U(omega): E[C(x)] = x and E||C(x) - x||^2 <= omega ||x||^2.
//!
//! Every compressor here is built for a fixed dimension d ([`build`]), writes its
//! encoding with a [`BitWriter`] and decodes it back bit for bit. The value it
//! reports in [`CompressedVec`] is exactly what the receiver decodes (values are
//! rounded to the wire [`ValueFormat`] before they are reported), so sender and
//! receiver apply the same update and their states never drift apart.
//!
//! Non-finite input is rejected with [`CompressError::NonFinite`] (documented,
//! tested): no message is produced.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::rng::Rng;

mod registry;
pub use registry::{build, catalogue, CompressorSpec, CATALOGUE_NAMES};
pub use registry::{example_spec, fuzz_decode};

mod bernoulli;
mod blockwise;
pub use blockwise::{build_blockwise, Blockwise, BLOCKWISE_INNER};
mod identity;
mod randk;
pub mod sparse_codec;
mod threshold;
mod topk;
pub(crate) use topk::select_top_k_checked;
pub use topk::{StreamedOutcome, StreamedTopK, TopKBlock};
mod topk_quant;

mod dither;
mod natural;
mod rank;
mod shrunk;
mod sign;

/// How a transmitted real value is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// IEEE half precision (16 bits).
    F16,
    /// IEEE single precision (32 bits); the default.
    #[default]
    F32,
    /// IEEE double precision (64 bits); lossless for f64 state.
    F64,
}

impl ValueFormat {
    /// Bits per value.
    pub fn bits(self) -> u32 {
        match self {
            ValueFormat::F16 => 16,
            ValueFormat::F32 => 32,
            ValueFormat::F64 => 64,
        }
    }

    /// The value the receiver will decode for `v` (round to nearest).
    #[inline]
    pub fn round(self, v: f64) -> f64 {
        match self {
            ValueFormat::F16 => half::f16::from_f64(v).to_f64(),
            ValueFormat::F32 => v as f32 as f64,
            ValueFormat::F64 => v,
        }
    }

    /// Writes `v` (which should already be rounded) in this format.
    #[inline]
    pub fn write(self, w: &mut BitWriter, v: f64) {
        match self {
            ValueFormat::F16 => w.write_bits(half::f16::from_f64(v).to_bits() as u64, 16),
            ValueFormat::F32 => w.write_f32(v as f32),
            ValueFormat::F64 => w.write_f64(v),
        }
    }

    /// Appends one value through a [`BitPacker`](crate::bits::BitPacker):
    /// the same bits as [`ValueFormat::write`].
    #[inline]
    pub fn put(self, p: &mut crate::bits::BitPacker<'_>, v: f64) {
        match self {
            ValueFormat::F16 => p.put(u64::from(half::f16::from_f64(v).to_bits()), 16),
            ValueFormat::F32 => p.put(u64::from((v as f32).to_bits()), 32),
            ValueFormat::F64 => p.put_u64(v.to_bits()),
        }
    }

    /// Writes every value of `vs` (which should already be rounded): the
    /// same bits as [`ValueFormat::write`] on each, f32 and f64 in one pass.
    pub fn write_all(self, w: &mut BitWriter, vs: &[f64]) {
        match self {
            ValueFormat::F32 => w.write_f32s(vs),
            ValueFormat::F64 => w.write_f64s(vs),
            ValueFormat::F16 => {
                let mut p = w.packer();
                for &v in vs {
                    self.put(&mut p, v);
                }
            }
        }
    }

    /// Reads `n` values and appends them to `values`: the same values as `n`
    /// calls of [`ValueFormat::read`] and the same kind of error (a short
    /// input, a non-finite value), f32 and f64 in one pass. On an error
    /// nothing is appended.
    pub fn read_all(
        self,
        r: &mut BitReader,
        n: usize,
        values: &mut Vec<f64>,
    ) -> Result<(), DecodeError> {
        let from = values.len();
        let res = (|| {
            match self {
                ValueFormat::F32 => r.read_f32s(n, values)?,
                ValueFormat::F64 => {
                    values.reserve(n);
                    for _ in 0..n {
                        values.push(r.read_f64()?);
                    }
                }
                ValueFormat::F16 => {
                    values.reserve(n);
                    for _ in 0..n {
                        values.push(self.read(r)?);
                    }
                    return Ok(());
                }
            }
            if values[from..].iter().any(|v| !v.is_finite()) {
                return Err(DecodeError::invalid(
                    "value",
                    "non-finite value on the wire",
                ));
            }
            Ok(())
        })();
        if res.is_err() {
            values.truncate(from);
        }
        res
    }

    /// Reads one value; non-finite values are an error (no encoder writes them).
    #[inline]
    pub fn read(self, r: &mut BitReader) -> Result<f64, DecodeError> {
        let v = match self {
            ValueFormat::F16 => half::f16::from_bits(r.read_bits(16)? as u16).to_f64(),
            ValueFormat::F32 => r.read_f32()? as f64,
            ValueFormat::F64 => r.read_f64()?,
        };
        if !v.is_finite() {
            return Err(DecodeError::invalid(
                "value",
                "non-finite value on the wire",
            ));
        }
        Ok(v)
    }

    /// Parses `f16`, `f32` or `f64`.
    pub fn parse(s: &str) -> Result<Self, ParamError> {
        match s {
            "f16" => Ok(ValueFormat::F16),
            "f32" => Ok(ValueFormat::F32),
            "f64" => Ok(ValueFormat::F64),
            _ => Err(ParamError::Unknown {
                what: "value format",
                name: s.to_string(),
                allowed: "f16, f32, f64".into(),
            }),
        }
    }
}

/// The class of a compressor for its dimension d, with its constant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum CompressorClass {
    /// E||C(x) - x||^2 <= (1 - alpha) ||x||^2.
    Contractive {
        /// The contraction constant, 0 < alpha <= 1.
        alpha: f64,
    },
    /// E[C(x)] = x and E||C(x) - x||^2 <= omega ||x||^2.
    Unbiased {
        /// The variance constant, omega >= 0.
        omega: f64,
    },
    /// ||C(x) - x||^2 <= delta2 for every x (absolute compressors, e.g. threshold).
    Absolute {
        /// The absolute error bound.
        delta2: f64,
    },
}

impl CompressorClass {
    /// The contraction constant of the operator as error feedback applies it
    /// (EF21's theory needs 0 < alpha <= 1): alpha for contractive
    /// compressors; for an unbiased one, 1 - omega when omega < 1 (then
    /// E||C(x) - x||^2 <= omega ||x||^2 = (1 - alpha) ||x||^2) and `None` when
    /// omega >= 1, where C itself is not contractive (`contractive = true`
    /// sends C/(1 + omega), which is, with alpha = 1/(1 + omega)); `None` for
    /// absolute compressors.
    pub fn alpha(&self) -> Option<f64> {
        match *self {
            CompressorClass::Contractive { alpha } => Some(alpha),
            CompressorClass::Unbiased { omega } if omega < 1.0 => Some(1.0 - omega),
            CompressorClass::Unbiased { .. } | CompressorClass::Absolute { .. } => None,
        }
    }
}

/// A compressed vector as the receiver decodes it.
///
/// Sparse form: `indices` (strictly increasing) and `values` of equal length.
/// Dense form (`dense == true`): `values` has length `dim`, `indices` is empty.
/// The buffers are reused across rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressedVec {
    /// Dimension of the vector.
    pub dim: usize,
    /// Whether `values` holds every coordinate.
    pub dense: bool,
    /// Coordinates of the stored values (sparse form).
    pub indices: Vec<u32>,
    /// Stored values.
    #[serde(with = "crate::compact::f64s")]
    pub values: Vec<f64>,
}

impl CompressedVec {
    /// An empty sparse vector of dimension `dim` (keeps allocations).
    pub fn reset_sparse(&mut self, dim: usize) {
        self.dim = dim;
        self.dense = false;
        self.indices.clear();
        self.values.clear();
    }

    /// A dense vector of zeros of dimension `dim` (keeps allocations).
    pub fn reset_dense(&mut self, dim: usize) {
        self.dim = dim;
        self.dense = true;
        self.indices.clear();
        self.values.clear();
        self.values.resize(dim, 0.0);
    }

    /// Number of stored values.
    pub fn stored(&self) -> usize {
        self.values.len()
    }

    /// y += a * self.
    #[track_caller]
    pub fn add_scaled_to(&self, y: &mut [f64], a: f64) {
        assert_eq!(y.len(), self.dim, "dimension mismatch");
        if self.dense {
            for (yi, v) in y.iter_mut().zip(&self.values) {
                *yi += a * v;
            }
        } else {
            for (&i, v) in self.indices.iter().zip(&self.values) {
                y[i as usize] += a * v;
            }
        }
    }

    /// y += self.
    #[track_caller]
    pub fn add_to(&self, y: &mut [f64]) {
        assert_eq!(y.len(), self.dim, "dimension mismatch");
        if self.dense {
            for (yi, v) in y.iter_mut().zip(&self.values) {
                *yi += v;
            }
        } else {
            for (&i, v) in self.indices.iter().zip(&self.values) {
                y[i as usize] += v;
            }
        }
    }

    /// Writes the dense vector into `out`.
    #[track_caller]
    pub fn to_dense(&self, out: &mut [f64]) {
        assert_eq!(out.len(), self.dim, "dimension mismatch");
        if self.dense {
            out.copy_from_slice(&self.values);
        } else {
            out.iter_mut().for_each(|v| *v = 0.0);
            for (&i, v) in self.indices.iter().zip(&self.values) {
                out[i as usize] = *v;
            }
        }
    }

    /// The dense vector as a new `Vec` (tests and tools; not for hot loops).
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![0.0; self.dim];
        self.to_dense(&mut v);
        v
    }

    /// Bitwise equality of the represented dense vectors (0.0 and -0.0 differ).
    pub fn bit_eq(&self, other: &CompressedVec) -> bool {
        let a = self.to_vec();
        let b = other.to_vec();
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    }
}

/// Reusable scratch space for compressors (keeps rounds allocation-free).
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    /// Unsigned 32-bit scratch.
    pub u32s: Vec<u32>,
    /// Unsigned 64-bit scratch.
    pub u64s: Vec<u64>,
    /// Real scratch.
    pub f64s: Vec<f64>,
    /// Second real scratch.
    pub f64s2: Vec<f64>,
}

/// Randomness and scratch for one compression.
pub struct CompressCtx<'a> {
    /// The sender's private stream (independent per worker and round).
    pub rng: &'a mut Rng,
    /// Key of the stream shared with the receiver (shared-seed modes); the
    /// receiver gets the same key through [`DecodeCtx`].
    pub shared_key: u64,
    /// Scratch buffers.
    pub scratch: &'a mut Scratch,
}

/// What a decoder knows besides the bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeCtx {
    /// Key of the stream shared with the sender.
    pub shared_key: u64,
}

/// A compression operator with its wire codec, built for one dimension.
pub trait Compressor: Send + Sync + fmt::Debug {
    /// The catalogue name (e.g. `top-k`).
    fn name(&self) -> &'static str;
    /// Name with resolved parameters (e.g. `top-k(k=3)`), for logs and plots.
    fn describe(&self) -> String;
    /// The dimension this compressor was built for.
    fn dim(&self) -> usize;
    /// Class and constant for this dimension.
    fn class(&self) -> CompressorClass;
    /// Whether C(x) depends on x only (no randomness).
    fn is_deterministic(&self) -> bool;
    /// Compresses `x` (length `dim`): writes the decoded value into `out` and
    /// appends its encoding to `w`.
    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError>;
    /// Decodes one compressed vector from `r` into `out`.
    fn decode(
        &self,
        r: &mut BitReader<'_>,
        ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError>;
    /// Bits the papers' plots would count for this message (algorithms.md §3.3):
    /// 32 per transmitted value, indices free (quantizers document their rule).
    fn paper_bits(&self, c: &CompressedVec) -> u64;

    /// The blocks of a compressor that keeps the K largest magnitudes of each
    /// block and nothing else (Top-K, per-layer Top-K), in order; `None` (the
    /// default) for every other compressor. A caller that computes the input
    /// in one streaming pass may then select with [`StreamedTopK`] instead of
    /// storing the input, and encode with [`Compressor::compress_selected`].
    fn top_k_blocks(&self) -> Option<&[TopKBlock]> {
        None
    }

    /// For a compressor with [`Compressor::top_k_blocks`]: the message of
    /// an input whose top-K entries of each block are `indices` (coordinates
    /// of the input plus `offset`, increasing, blocks in order) with the
    /// input's `values` there. Writes exactly what [`Compressor::compress`]
    /// writes for such an input (value, bytes, errors). Other compressors
    /// return an error.
    fn compress_selected(
        &self,
        indices: &[u32],
        offset: usize,
        values: &[f64],
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        let _ = (indices, offset, values, out, w);
        Err(CompressError::Shape(format!(
            "{} does not encode an outside selection",
            self.describe()
        )))
    }
}

/// Returns the first non-finite entry of `x` as an error.
///
/// The screen sums `v * 0.0` (±0 for finite v, NaN for NaN and ±inf) in eight
/// independent lanes, which vectorises and runs at memory speed (a single sum
/// is one dependent addition per entry); the first non-finite entry is located
/// only on failure.
#[inline]
pub fn check_finite(x: &[f64]) -> Result<(), CompressError> {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * 0.0;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for v in chunks.remainder() {
        s += v * 0.0;
    }
    if s == 0.0 {
        Ok(())
    } else {
        Err(non_finite_error(x))
    }
}

/// The error naming the first non-finite entry of `x` (which must have one).
#[cold]
#[inline(never)]
fn non_finite_error(x: &[f64]) -> CompressError {
    let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
    CompressError::NonFinite {
        index,
        value: x[index],
    }
}

/// One standalone encoded message (tests, tools, benches).
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The bytes on the wire.
    pub bytes: Vec<u8>,
    /// The decoded value.
    pub value: CompressedVec,
    /// Bits actually written: 8 * bytes.len().
    pub wire_bits: u64,
    /// Bits in the papers' convention.
    pub paper_bits: u64,
}

/// Compresses and encodes `x` as one standalone message.
pub fn encode_one(
    c: &dyn Compressor,
    x: &[f64],
    rng: &mut Rng,
    shared_key: u64,
) -> Result<Encoded, CompressError> {
    let mut scratch = Scratch::default();
    let mut ctx = CompressCtx {
        rng,
        shared_key,
        scratch: &mut scratch,
    };
    let mut out = CompressedVec::default();
    let mut w = BitWriter::new();
    c.compress(x, &mut ctx, &mut out, &mut w)?;
    let bytes = w.finish().to_vec();
    let paper_bits = c.paper_bits(&out);
    Ok(Encoded {
        wire_bits: bytes.len() as u64 * 8,
        bytes,
        value: out,
        paper_bits,
    })
}

/// Decodes one standalone message produced by [`encode_one`].
pub fn decode_one(
    c: &dyn Compressor,
    bytes: &[u8],
    shared_key: u64,
) -> Result<CompressedVec, DecodeError> {
    let mut r = BitReader::new(bytes);
    let mut out = CompressedVec::default();
    c.decode(&mut r, &DecodeCtx { shared_key }, &mut out)?;
    r.finish()?;
    Ok(out)
}

/// For steady-state allocation tests: compresses `inputs` in turn for
/// `rounds` rounds (one writer, output and scratch reused throughout, the
/// private stream seeded with `key`) and returns, after each round, the
/// capacities of every buffer a compression may grow: output values and
/// indices, the four scratch vectors and the writer. Capacities rather than
/// addresses: a growth may be done in place by the allocator.
#[doc(hidden)]
pub fn buffer_capacities(
    c: &dyn Compressor,
    inputs: &[Vec<f64>],
    rounds: usize,
    key: u64,
) -> Vec<[usize; 7]> {
    let mut rng = crate::rng::rng_from_key(key);
    let mut scratch = Scratch::default();
    let mut out = CompressedVec::default();
    let mut w = BitWriter::new();
    (0..rounds)
        .map(|round| {
            w.clear();
            let mut ctx = CompressCtx {
                rng: &mut rng,
                shared_key: 0,
                scratch: &mut scratch,
            };
            c.compress(&inputs[round % inputs.len()], &mut ctx, &mut out, &mut w)
                .expect("finite inputs of the compressor's dimension");
            w.finish();
            [
                out.values.capacity(),
                out.indices.capacity(),
                scratch.u32s.capacity(),
                scratch.u64s.capacity(),
                scratch.f64s.capacity(),
                scratch.f64s2.capacity(),
                w.capacity(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// A failing bulk read appends nothing, whatever the format and the
    /// failure (a non-finite value in the middle, a short input).
    #[test]
    fn a_failing_bulk_read_appends_nothing() {
        for fmt in [ValueFormat::F16, ValueFormat::F32, ValueFormat::F64] {
            let mut w = BitWriter::new();
            for v in [1.0, 2.0, f64::NAN, 4.0] {
                match fmt {
                    ValueFormat::F16 => {
                        w.write_bits(u64::from(half::f16::from_f64(v).to_bits()), 16)
                    }
                    ValueFormat::F32 => w.write_f32(v as f32),
                    ValueFormat::F64 => w.write_f64(v),
                }
            }
            let bytes = w.finish().to_vec();
            let mut values = vec![9.0];
            let e = fmt.read_all(&mut BitReader::new(&bytes), 4, &mut values);
            assert!(e.is_err() && values == [9.0], "{fmt:?} NaN: {values:?}");
            let e = fmt.read_all(
                &mut BitReader::new(&bytes[..bytes.len() / 2]),
                4,
                &mut values,
            );
            assert!(e.is_err() && values == [9.0], "{fmt:?} short: {values:?}");
            // the first two values alone read fine
            fmt.read_all(&mut BitReader::new(&bytes), 2, &mut values)
                .unwrap();
            assert_eq!(values, [9.0, 1.0, 2.0]);
        }
    }

    use super::*;

    #[test]
    fn check_finite_names_the_first_non_finite_entry() {
        for n in [0usize, 1, 7, 8, 9, 63, 100] {
            let x: Vec<f64> = (0..n).map(|j| (j as f64 - 30.0) * 1e300).collect();
            assert!(check_finite(&x).is_ok(), "n {n}");
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                for first in 0..n {
                    let mut y = x.clone();
                    y[first] = bad;
                    // a later non-finite entry does not change the answer
                    if first + 3 < n {
                        y[first + 3] = f64::NAN;
                    }
                    match check_finite(&y) {
                        Err(CompressError::NonFinite { index, value }) => {
                            assert_eq!(index, first, "n {n}");
                            assert_eq!(value.to_bits(), bad.to_bits());
                        }
                        other => panic!("n {n} first {first}: {other:?}"),
                    }
                }
            }
        }
        // Extremes and zeros of both signs are finite.
        assert!(check_finite(&[f64::MAX, -f64::MAX, 5e-324, -0.0, 0.0, f64::MIN_POSITIVE]).is_ok());
    }
}
