//! Per-layer (blockwise) compression: one compressor per block of coordinates.
//!
//! A network's parameter vector is the concatenation of its tensors,
//! x = (x_1, ..., x_m) with x_b in R^{d_b}. The deep-learning code of the
//! EF21-SGDM paper (Fatkhullin, Tyurin & Richtarik, NeurIPS 2023) compresses
//! each tensor separately, e.g. Top-K with K_b = max(1, floor(ratio d_b)):
//!
//!   C(x) = (C_1(x_1), ..., C_m(x_m)).
//!
//! Class: if C_b is in B(alpha_b), then ||C(x) - x||^2 = sum_b ||C_b(x_b) - x_b||^2
//! <= sum_b (1 - alpha_b) ||x_b||^2 <= (1 - min_b alpha_b) ||x||^2, so C is in
//! B(min_b alpha_b); if C_b is unbiased in U(omega_b), C is unbiased in
//! U(max_b omega_b) by the same sum.
//!
//! Wire: the blocks' messages back to back, in block order (each inner message
//! is self-delimiting). Random inner compressors draw from the sender's stream
//! in block order; shared-seed inner compressors use the key
//! mix64(shared_key + b + 1) for block b so that blocks draw independent
//! patterns. The decoded value is sparse: the blocks' entries shifted by the
//! block offsets (a dense block contributes every coordinate).
//!
//! Inner compressors are the sparsifiers whose paper bits are 32 per
//! transmitted value (`identity`, `top-k`, `rand-k`, `scaled-rand-k`), so the
//! paper count of the whole message is 32 per stored value.

use std::sync::Mutex;

use super::registry::{build, CompressorSpec};
use super::{CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, TopKBlock};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::rng::mix64;

/// Inner compressors a blockwise compressor accepts.
pub const BLOCKWISE_INNER: &[&str] = &["identity", "top-k", "rand-k", "scaled-rand-k"];

/// One compressor per block of coordinates.
#[derive(Debug)]
pub struct Blockwise {
    d: usize,
    /// (offset, compressor) of each block, in order.
    blocks: Vec<(usize, Box<dyn Compressor>)>,
    /// Reused per-block output buffers (steady state allocates nothing).
    pool: Mutex<Vec<CompressedVec>>,
    /// Every block's Top-K plan when every block is a Top-K
    /// ([`Compressor::top_k_blocks`]).
    top_k: Option<Vec<TopKBlock>>,
}

/// Builds `spec` separately for each block of sizes `sizes` (see the module
/// docs). `spec.per_layer` is ignored here; every other key is validated by
/// the inner compressor for each block's dimension.
pub fn build_blockwise(
    spec: &CompressorSpec,
    sizes: &[usize],
) -> Result<Box<dyn Compressor>, ParamError> {
    if !BLOCKWISE_INNER.contains(&spec.name.as_str()) {
        return Err(ParamError::invalid(
            "per_layer",
            format!(
                "per-layer compression supports {}; not `{}`",
                BLOCKWISE_INNER.join(", "),
                spec.name
            ),
        ));
    }
    if sizes.is_empty() || sizes.contains(&0) {
        return Err(ParamError::invalid(
            "per_layer",
            format!("block sizes must be >= 1, got {sizes:?}"),
        ));
    }
    let d: usize = sizes.iter().sum();
    if d > u32::MAX as usize {
        return Err(ParamError::invalid(
            "d",
            format!("dimension {d} exceeds 2^32 - 1"),
        ));
    }
    let inner = CompressorSpec {
        per_layer: None,
        ..spec.clone()
    };
    let mut blocks = Vec::with_capacity(sizes.len());
    let mut off = 0;
    for &s in sizes {
        blocks.push((off, build(&inner, s)?));
        off += s;
    }
    let top_k = blocks
        .iter()
        .map(|(off, c)| match c.top_k_blocks() {
            // inner compressors are never blockwise: one block each
            Some(&[b]) => Some(TopKBlock {
                offset: off + b.offset,
                ..b
            }),
            _ => None,
        })
        .collect();
    Ok(Box::new(Blockwise {
        d,
        blocks,
        pool: Mutex::new(Vec::new()),
        top_k,
    }))
}

impl Blockwise {
    fn take_buf(&self) -> CompressedVec {
        self.pool
            .lock()
            .map(|mut p| p.pop().unwrap_or_default())
            .unwrap_or_default()
    }

    fn put_buf(&self, v: CompressedVec) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(v);
        }
    }

    fn block_key(key: u64, b: usize) -> u64 {
        mix64(key.wrapping_add(b as u64 + 1))
    }

    /// The message of every block in order: `encode(b, offset, compressor,
    /// part, w)` writes block b's message into `part` and `w`, and `out`
    /// collects the parts. A block's non-finite error names the global
    /// coordinate; an error writes nothing (`w` truncated, `out` empty).
    fn encode_blocks(
        &self,
        out: &mut CompressedVec,
        w: &mut BitWriter,
        mut encode: impl FnMut(
            usize,
            usize,
            &dyn Compressor,
            &mut CompressedVec,
            &mut BitWriter,
        ) -> Result<(), CompressError>,
    ) -> Result<(), CompressError> {
        let start = w.bit_len();
        let mut part = self.take_buf();
        out.reset_sparse(self.d);
        let mut result = Ok(());
        for (b, (off, c)) in self.blocks.iter().enumerate() {
            if let Err(e) = encode(b, *off, c.as_ref(), &mut part, w) {
                result = Err(match e {
                    CompressError::NonFinite { index, value } => CompressError::NonFinite {
                        index: index + off,
                        value,
                    },
                    other => other,
                });
                break;
            }
            append(out, &part, *off);
        }
        self.put_buf(part);
        if result.is_err() {
            w.truncate(start);
            out.reset_sparse(self.d);
        }
        result
    }
}

/// Appends `part` (a block's value) at offset `off` to the sparse `out`.
fn append(out: &mut CompressedVec, part: &CompressedVec, off: usize) {
    if part.dense {
        out.indices
            .extend((0..part.values.len()).map(|j| (off + j) as u32));
    } else {
        out.indices
            .extend(part.indices.iter().map(|&j| j + off as u32));
    }
    out.values.extend_from_slice(&part.values);
}

impl Compressor for Blockwise {
    fn name(&self) -> &'static str {
        self.blocks[0].1.name()
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.blocks.iter().map(|(_, c)| c.describe()).collect();
        format!("per-layer[{}]", inner.join(", "))
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        let classes: Vec<CompressorClass> = self.blocks.iter().map(|(_, c)| c.class()).collect();
        match classes[0] {
            CompressorClass::Unbiased { .. } => CompressorClass::Unbiased {
                omega: classes
                    .iter()
                    .map(|c| match c {
                        CompressorClass::Unbiased { omega } => *omega,
                        _ => f64::INFINITY,
                    })
                    .fold(0.0, f64::max),
            },
            _ => CompressorClass::Contractive {
                alpha: classes
                    .iter()
                    .map(|c| c.alpha().unwrap_or(0.0))
                    .fold(1.0, f64::min),
            },
        }
    }

    fn is_deterministic(&self) -> bool {
        self.blocks.iter().all(|(_, c)| c.is_deterministic())
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        if x.len() != self.d {
            return Err(CompressError::Shape(format!(
                "input has length {}, compressor dimension is {}",
                x.len(),
                self.d
            )));
        }
        self.encode_blocks(out, w, |b, off, c, part, w| {
            let mut sub = CompressCtx {
                rng: ctx.rng,
                shared_key: Self::block_key(ctx.shared_key, b),
                scratch: ctx.scratch,
            };
            c.compress(&x[off..off + c.dim()], &mut sub, part, w)
        })
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        let mut part = self.take_buf();
        out.reset_sparse(self.d);
        let mut result = Ok(());
        for (b, (off, c)) in self.blocks.iter().enumerate() {
            let sub = DecodeCtx {
                shared_key: Self::block_key(ctx.shared_key, b),
            };
            if let Err(e) = c.decode(r, &sub, &mut part) {
                // no half-decoded message is left behind
                out.reset_sparse(self.d);
                result = Err(e);
                break;
            }
            append(out, &part, *off);
        }
        self.put_buf(part);
        result
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }

    fn top_k_blocks(&self) -> Option<&[TopKBlock]> {
        self.top_k.as_deref()
    }

    fn compress_selected(
        &self,
        indices: &[u32],
        offset: usize,
        values: &[f64],
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        if self.top_k.is_none() || indices.len() != values.len() {
            return Err(CompressError::Shape(format!(
                "{} does not encode an outside selection of {} indices and {} values",
                self.describe(),
                indices.len(),
                values.len()
            )));
        }
        // the same block loop, errors and rollback as `compress`
        let start = w.bit_len();
        let mut from = 0;
        self.encode_blocks(out, w, |_, off, c, part, w| {
            let end = offset + off + c.dim();
            let to = from + indices[from..].partition_point(|&j| (j as usize) < end);
            let r =
                c.compress_selected(&indices[from..to], offset + off, &values[from..to], part, w);
            from = to;
            r
        })?;
        if from != indices.len() {
            w.truncate(start);
            out.reset_sparse(self.d);
            return Err(CompressError::Shape(format!(
                "{} selected indices lie outside the blocks",
                indices.len() - from
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{decode_one, encode_one};
    use crate::rng::{stream, Purpose};

    fn topk(ratio: f64) -> CompressorSpec {
        CompressorSpec {
            ratio: Some(ratio),
            per_layer: Some(true),
            ..CompressorSpec::named("top-k")
        }
    }

    #[test]
    fn each_block_keeps_its_own_top_entries() {
        // blocks of 4 and 2: Top-1 of each (ratio 0.25 -> K = 1 and max(1, 0) = 1)
        let c = build_blockwise(&topk(0.25), &[4, 2]).unwrap();
        assert_eq!(c.dim(), 6);
        let x = [0.1, -5.0, 3.0, 0.2, 0.3, -0.4];
        let mut rng = stream(1, Purpose::Compress, 0, 0);
        let enc = encode_one(c.as_ref(), &x, &mut rng, 0).unwrap();
        let (v, bytes) = (enc.value, enc.bytes);
        // global Top-2 would keep -5 and 3; per layer keeps -5 and -0.4
        assert_eq!(v.indices, vec![1, 5]);
        assert_eq!(v.values, vec![-5.0, -0.4f32 as f64]);
        let back = decode_one(c.as_ref(), &bytes, 0).unwrap();
        assert!(back.bit_eq(&v));
        assert_eq!(c.paper_bits(&v), 64);
        // class: min of 1/4 and 1/2
        assert_eq!(c.class(), CompressorClass::Contractive { alpha: 0.25 });
        assert_eq!(c.name(), "top-k");
        assert!(c.describe().starts_with("per-layer[top-k"));
        // wire bits are the sum of the blocks' messages
        let b1 = build(
            &CompressorSpec {
                per_layer: None,
                ..topk(0.25)
            },
            4,
        )
        .unwrap();
        let b2 = build(
            &CompressorSpec {
                per_layer: None,
                ..topk(0.25)
            },
            2,
        )
        .unwrap();
        let mut w = BitWriter::new();
        let mut scratch = Default::default();
        let mut o = CompressedVec::default();
        for (c, xs) in [(&b1, &x[..4]), (&b2, &x[4..])] {
            let mut ctx = CompressCtx {
                rng: &mut rng,
                shared_key: 0,
                scratch: &mut scratch,
            };
            c.compress(xs, &mut ctx, &mut o, &mut w).unwrap();
        }
        assert_eq!(w.finish().len(), bytes.len());
    }

    #[test]
    fn a_decode_failing_in_a_later_block_leaves_no_part_of_the_message() {
        let c = build_blockwise(&topk(0.25), &[64, 64]).unwrap();
        let x: Vec<f64> = (0..128).map(|j| (j as f64 * 0.37).sin()).collect();
        let mut rng = stream(1, Purpose::Compress, 0, 0);
        let enc = encode_one(c.as_ref(), &x, &mut rng, 0).unwrap();
        // 16 f32 values per block: the first block's message is over 64
        // bytes, so cutting 10 bytes fails in the second block
        let cut = &enc.bytes[..enc.bytes.len() - 10];
        let mut out = CompressedVec::default();
        let mut r = BitReader::new(cut);
        assert!(c
            .decode(&mut r, &DecodeCtx { shared_key: 0 }, &mut out)
            .is_err());
        assert!(out.indices.is_empty() && out.values.is_empty() && !out.dense);
        assert_eq!(out.dim, 128);
    }

    #[test]
    fn errors_name_the_global_index_and_write_nothing() {
        let c = build_blockwise(&topk(0.5), &[3, 3]).unwrap();
        let mut x = [1.0; 6];
        x[4] = f64::NAN;
        let mut rng = stream(1, Purpose::Compress, 0, 0);
        let mut scratch = Default::default();
        let mut ctx = CompressCtx {
            rng: &mut rng,
            shared_key: 0,
            scratch: &mut scratch,
        };
        let mut w = BitWriter::new();
        let mut out = CompressedVec::default();
        let e = c.compress(&x, &mut ctx, &mut out, &mut w).unwrap_err();
        assert!(
            matches!(e, CompressError::NonFinite { index: 4, .. }),
            "{e}"
        );
        assert_eq!(w.bit_len(), 0);
        assert!(matches!(
            c.compress(&x[..5], &mut ctx, &mut out, &mut w),
            Err(CompressError::Shape(_))
        ));
    }

    #[test]
    fn bad_specs_are_rejected() {
        let q = CompressorSpec {
            levels: Some(2),
            per_layer: Some(true),
            ..CompressorSpec::named("qsgd")
        };
        assert!(build_blockwise(&q, &[3])
            .unwrap_err()
            .to_string()
            .contains("per_layer"));
        assert!(build_blockwise(&topk(0.5), &[3, 0]).is_err());
        assert!(build_blockwise(&topk(0.5), &[]).is_err());
        // plain `build` refuses per_layer (it has no layers)
        assert!(build(&topk(0.5), 6)
            .unwrap_err()
            .to_string()
            .contains("per_layer"));
        let u = CompressorSpec {
            k: Some(1),
            per_layer: Some(true),
            ..CompressorSpec::named("scaled-rand-k")
        };
        // omega = d_b / K - 1: blocks of 2 and 5 with K = 1 -> max(1, 4) = 4
        assert_eq!(
            build_blockwise(&u, &[2, 5]).unwrap().class(),
            CompressorClass::Unbiased { omega: 4.0 }
        );
    }
}
