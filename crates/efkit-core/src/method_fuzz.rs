//! Hostile-input harness for the method messages: the uplink and downlink
//! decoders of [`crate::method`] on arbitrary bytes, for every method preset.
//!
//! Shared by the cargo-fuzz target `fuzz/fuzz_targets/message.rs` and the
//! stable proptests in `tests/message_fuzz.rs` (the same pattern as
//! [`crate::compress::fuzz_decode`]).
//!
//! # Input layout
//!
//! ```text
//! byte 0   preset: METHOD_NAMES[b % METHOD_NAMES.len()]
//! byte 1   codec: an entry of a fixed list of (d, compressor) pairs, d in {1, 6, 40}
//! byte 2   flags: round t = b & 3; bit 2 set = compressed initialization
//! byte 3   seed s of the shared-seed streams
//! rest     the message m
//! ```
//!
//! m is decoded as worker 0's uplink of round t (shared key
//! `uplink_shared_key(s, 0, t)`) and as the downlink the server prepares at the
//! end of round t (key `downlink_shared_key(s, t)`), with the codecs the
//! runtime's setup builds for that preset: the uplink compressor (the identity
//! in the same value format for `gd` and `sgd`), the dense identity codec, and
//! for `ef21-bc` a server compressor.
//!
//! # Invariants checked (a violation panics, which the fuzzer reports)
//!
//! For both decoders and every input:
//!
//! 1. decoding returns a value or a [`DecodeError`], never panics;
//! 2. decoding into reused buffers holding another message gives the same
//!    result as decoding into fresh ones (the runtime reuses its buffers every
//!    round);
//! 3. a decoded vector is well formed for dimension d: `dim == d`; dense with
//!    d values, or sparse with strictly increasing indices below d and one value
//!    each; every value finite. A model downlink has d finite entries. The EF21+
//!    replace flag can only be set where it travels (EF21+, round > 0), and an
//!    estimate downlink only decodes for a method with a server compressor;
//! 4. messages are self-delimiting: a decoded message followed by one more
//!    byte does not decode, nor does the message without its last byte.
//!
//! Re-encoding: decoding is exact only where an encoder can reproduce an
//! arbitrary decoded value. That holds by design for
//!
//! * the model downlink (d raw f64) and every identity-coded message (dense
//!   init, EF21-SGD-ideal, GD/SGD, dense estimate broadcasts): every finite bit
//!   pattern is a fixed point of the value-format rounding, so re-encoding the
//!   decoded value gives **the same bytes**;
//! * natural compression: decoded values are +0 or ±2^e in the coded exponent
//!   range (−0 is rejected, so zero has one code), powers of two are kept by
//!   the operator, so again **the same bytes**;
//! * Top-K and Top-K + natural: both operators are projections onto their
//!   decoded values (T_K keeps a vector with at most K nonzeros, natural keeps
//!   powers of two), so re-encoding gives bytes that decode to **the same
//!   values** (the bytes themselves may differ: the index-set layout is the
//!   encoder's choice, and zero entries may be listed at other indices).
//!
//! The other compressors have no encoder of a given value: random ones draw
//! fresh randomness (rand-K, Bernoulli, dithering), and the scale of
//! scaled-sign, the factors of rank-r and the norm of dithering are recomputed
//! from the input, so C(C(x)) != C(x) in general; for them the invariants
//! 1–4 are what the decoder guarantees.

use std::sync::Arc;

use std::sync::OnceLock;

use crate::bits::BitWriter;
use crate::compress::{
    build, example_spec, CompressCtx, CompressedVec, Compressor, CompressorSpec, Scratch,
    ValueFormat, CATALOGUE_NAMES,
};
use crate::error::DecodeError;
use crate::method::{
    decode_downlink, decode_uplink, dense_uplink, downlink_shared_key, encode_model,
    uplink_shared_key, BatchSize, Codecs, Downlink, Feedback, InitMode, MethodSpec, Parts,
    Regularizer, RoundCtx, Server, Uplink, Wire, Worker, METHOD_NAMES, TAG_ESTIMATE_DELTA,
    TAG_ESTIMATE_DENSE,
};
use crate::oracle::{sample_without_replacement, Oracle};
use crate::rng::{rng_from_key, Rng};

/// Dimensions the harness decodes for (1: trivial index sets; 6 and 40: a
/// matrix view with 2 and 5 rows for rank-r).
pub const DIMS: &[usize] = &[1, 6, 40];

/// Workers of the decoded method (fixes `Nice` participation and PAGE's p).
const WORKERS: usize = 2;

/// Local samples per worker (finite sums, for minibatch methods and PAGE).
const SAMPLES: usize = 8;

/// Number of header bytes before the message.
pub const HEADER: usize = 4;

/// One method instance the harness decodes for.
#[derive(Debug)]
pub struct Case {
    /// Preset name.
    pub method: &'static str,
    /// Dimension d.
    pub d: usize,
    /// Resolved parts (dense initialization; the flags byte may switch it).
    pub parts: Parts,
    /// The codecs, as the runtime's setup builds them.
    pub codecs: Codecs,
}

/// The compressors decoded for dimension `d`: every catalogue entry plus
/// value-format, shared-seed and parameter variants.
fn codec_specs(d: usize) -> Vec<CompressorSpec> {
    let mut v: Vec<CompressorSpec> = CATALOGUE_NAMES
        .iter()
        .map(|&name| example_spec(name, d))
        .collect();
    let with = |name: &str, f: &dyn Fn(&mut CompressorSpec)| {
        let mut s = CompressorSpec::named(name);
        f(&mut s);
        s
    };
    v.push(with("identity", &|s| s.values = Some(ValueFormat::F16)));
    v.push(with("identity", &|s| s.values = Some(ValueFormat::F64)));
    v.push(with("top-k", &|s| {
        s.k = Some(d.div_ceil(3));
        s.values = Some(ValueFormat::F16);
    }));
    v.push(with("top-k-quant", &|s| s.ratio = Some(0.5)));
    v.push(with("rand-k", &|s| {
        s.k = Some(d.div_ceil(2));
        s.shared_seed = Some(true);
        s.values = Some(ValueFormat::F64);
    }));
    v.push(with("scaled-rand-k", &|s| {
        s.ratio = Some(0.25);
        s.shared_seed = Some(true);
    }));
    v.push(with("bernoulli", &|s| {
        s.p = Some(0.5);
        s.values = Some(ValueFormat::F16);
    }));
    v.push(with("threshold", &|s| s.lambda = Some(0.5)));
    v.push(with("qsgd", &|s| {
        s.levels = Some(1);
        s.values = Some(ValueFormat::F64);
    }));
    v.push(with("natural-dithering", &|s| {
        s.levels = Some(8);
        s.norm = Some(f64::INFINITY);
    }));
    v.push(with("scaled-sign", &|s| s.values = Some(ValueFormat::F16)));
    v
}

/// The (d, uplink spec, server spec) list the codec byte selects from. The
/// server compressor of `ef21-bc` is another entry of the same dimension.
fn codec_list() -> Vec<(usize, CompressorSpec, CompressorSpec)> {
    let mut out = Vec::new();
    for &d in DIMS {
        let specs: Vec<CompressorSpec> = codec_specs(d)
            .into_iter()
            .filter(|s| build(s, d).is_ok())
            .collect();
        for (j, s) in specs.iter().enumerate() {
            let server = specs[(j + 3) % specs.len()].clone();
            out.push((d, s.clone(), server));
        }
    }
    out
}

/// A spec for `name` with the parameters the preset needs.
fn method_spec(name: &str) -> MethodSpec {
    let mut m = MethodSpec::named(name);
    match name {
        "sgd" | "ef21-sgd" | "ef21-w-sgd" | "ef14-sgd" | "ef21-sgd-ideal" | "ef21-page" => {
            m.batch = Some(BatchSize::Count(2));
        }
        "ef21-sgdm" | "ef21-sgd2m" => {
            m.batch = Some(BatchSize::Count(2));
            m.eta = Some(0.5);
        }
        "ef21-hb" => m.eta = Some(0.5),
        "ef21-pp" | "ef21-w-pp" => m.participation = Some(0.5),
        "ef21-prox" => m.prox = Some(Regularizer::L1 { lambda: 0.01 }),
        _ => {}
    }
    m
}

/// Builds one case the way `efkit_runtime::setup` does: `gd`/`sgd` send
/// identity-coded gradients, the dense codec is the identity in the uplink's
/// value format, and only `ef21-bc` has a server compressor.
fn build_case(
    method: &'static str,
    d: usize,
    up: &CompressorSpec,
    server: &CompressorSpec,
) -> Case {
    let parts = method_spec(method)
        .parts(0.1, WORKERS, &[Some(SAMPLES); WORKERS])
        .unwrap_or_else(|e| panic!("preset {method}: {e}"));
    let identity = |values| CompressorSpec {
        values,
        ..CompressorSpec::named("identity")
    };
    let up = if parts.force_identity {
        identity(up.values)
    } else {
        up.clone()
    };
    let uplink = build(&up, d).expect("harness uplink spec");
    let dense = build(&identity(up.values), d).expect("identity");
    let downlink = (method == "ef21-bc").then(|| build(server, d).expect("harness server spec"));
    Case {
        method,
        d,
        parts,
        codecs: Codecs {
            uplink,
            dense,
            downlink,
        },
    }
}

/// All cases, indexed by `preset * codecs + codec`.
pub fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let list = codec_list();
        let mut v = Vec::with_capacity(METHOD_NAMES.len() * list.len());
        for &m in METHOD_NAMES {
            for (d, up, server) in &list {
                v.push(build_case(m, *d, up, server));
            }
        }
        v
    })
}

/// Number of codec entries the codec byte selects from.
pub fn codec_count() -> usize {
    cases().len() / METHOD_NAMES.len()
}

/// The case, parts (with the flags applied), round and shared seed of a header.
fn select(header: &[u8; HEADER]) -> (&'static Case, Parts, u64, u64) {
    let [p, c, flags, seed] = *header;
    let nc = codec_count();
    let case = &cases()[(p as usize % METHOD_NAMES.len()) * nc + c as usize % nc];
    let mut parts = case.parts;
    parts.init = if flags & 4 != 0 {
        InitMode::Compressed
    } else {
        InitMode::Dense
    };
    (case, parts, u64::from(flags & 3), u64::from(seed))
}

/// The decoded uplink and downlink of one fuzz input.
#[derive(Debug)]
pub struct Decoded {
    /// The message as worker 0's uplink.
    pub uplink: Result<Uplink, DecodeError>,
    /// The message as the server's downlink.
    pub downlink: Result<Downlink, DecodeError>,
}

/// Fuzzing entry point: decodes the message of `data` (layout in the module
/// docs) as an uplink and as a downlink and asserts the invariants. Returns
/// `None` when `data` is shorter than the header. Panics only when a decoder
/// breaks an invariant.
pub fn fuzz_message(data: &[u8]) -> Option<Decoded> {
    let (header, msg) = data.split_first_chunk::<HEADER>()?;
    let (case, parts, round, seed) = select(header);
    Some(Decoded {
        uplink: check_uplink(case, &parts, round, seed, msg),
        downlink: check_downlink(case, round, seed, msg),
    })
}

/// A buffer holding a message of another shape (wrong dimension, dense form,
/// stale indices) to decode into.
fn dirty_vec(d: usize) -> CompressedVec {
    CompressedVec {
        dim: d + 5,
        dense: true,
        indices: vec![9, 2, 2],
        values: vec![7.5; d + 3],
    }
}

/// Bitwise equality of two decoded vectors, representation included.
fn same_vec(a: &CompressedVec, b: &CompressedVec) -> bool {
    a.dim == b.dim
        && a.dense == b.dense
        && a.indices == b.indices
        && a.values.len() == b.values.len()
        && a.values
            .iter()
            .zip(&b.values)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Invariant 3 for a decoded vector.
fn assert_well_formed(v: &CompressedVec, d: usize, what: &dyn Fn() -> String) {
    assert_eq!(v.dim, d, "{}: dimension", what());
    if v.dense {
        assert_eq!(v.values.len(), d, "{}: dense length", what());
        assert!(v.indices.is_empty(), "{}: dense with indices", what());
    } else {
        assert_eq!(
            v.values.len(),
            v.indices.len(),
            "{}: one value per index",
            what()
        );
        assert!(
            v.indices.windows(2).all(|p| p[0] < p[1]),
            "{}: indices not strictly increasing",
            what()
        );
        assert!(
            v.indices.iter().all(|&i| (i as usize) < d),
            "{}: index out of range",
            what()
        );
    }
    assert!(
        v.values.iter().all(|x| x.is_finite()),
        "{}: non-finite value",
        what()
    );
}

/// Invariant 4: one more byte, or one byte less, does not decode.
fn assert_self_delimiting(msg: &[u8], decodes: impl Fn(&[u8]) -> bool, what: &dyn Fn() -> String) {
    let mut longer = msg.to_vec();
    longer.push(0);
    assert!(
        !decodes(&longer),
        "{}: decodes with a trailing byte",
        what()
    );
    if let Some((_, prefix)) = msg.split_last() {
        assert!(
            !decodes(prefix),
            "{}: decodes without its last byte",
            what()
        );
    }
}

/// How a decoded value can be re-encoded (see the module docs).
#[derive(Debug, PartialEq, Eq)]
enum Reencode {
    /// The same bytes.
    Bytes,
    /// Bytes that decode to the same values.
    Values,
    /// No encoder of a given value.
    None,
}

fn reencoding(c: &dyn Compressor) -> Reencode {
    match c.name() {
        "identity" | "natural" => Reencode::Bytes,
        "top-k" | "top-k-quant" => Reencode::Values,
        _ => Reencode::None,
    }
}

/// Compresses the decoded value `x` again with `c` after `w`'s header bits;
/// returns the encoded bytes and the value the compressor reports.
fn compress_again(
    c: &dyn Compressor,
    x: &[f64],
    key: u64,
    mut w: BitWriter,
    what: &dyn Fn() -> String,
) -> (Vec<u8>, CompressedVec) {
    let mut rng = rng_from_key(key ^ 0x9e37_79b9_7f4a_7c15);
    let mut scratch = Scratch::default();
    let mut ctx = CompressCtx {
        rng: &mut rng,
        shared_key: key,
        scratch: &mut scratch,
    };
    let mut out = CompressedVec::default();
    c.compress(x, &mut ctx, &mut out, &mut w)
        .unwrap_or_else(|e| panic!("{}: a decoded value does not compress again: {e}", what()));
    (w.finish().to_vec(), out)
}

/// Numeric equality of the represented dense vectors (+0 == −0).
fn same_values(a: &CompressedVec, b: &CompressedVec) -> bool {
    a.to_vec() == b.to_vec()
}

fn check_uplink(
    case: &Case,
    parts: &Parts,
    round: u64,
    seed: u64,
    msg: &[u8],
) -> Result<Uplink, DecodeError> {
    let codecs = &case.codecs;
    let key = uplink_shared_key(seed, 0, round);
    let what = || {
        format!(
            "uplink of {} round {round} ({}, d = {}, init {:?})",
            case.method,
            codecs.uplink.describe(),
            case.d,
            parts.init
        )
    };
    let decode =
        |bytes: &[u8], out: &mut Uplink| decode_uplink(bytes, parts, codecs, round, key, out);
    let mut fresh = Uplink::default();
    let res = decode(msg, &mut fresh);
    let mut reused = Uplink {
        replace: true,
        vec: dirty_vec(case.d),
    };
    let res_reused = decode(msg, &mut reused);
    assert_eq!(
        res,
        res_reused,
        "{}: reused buffers decode differently",
        what()
    );
    res?;
    assert!(
        same_vec(&fresh.vec, &reused.vec) && fresh.replace == reused.replace,
        "{}: reused buffers decode to another value",
        what()
    );
    assert_well_formed(&fresh.vec, case.d, &what);
    let flagged = parts.feedback == Feedback::Ef21Plus && round > 0;
    assert!(flagged || !fresh.replace, "{}: replace flag set", what());
    assert_self_delimiting(msg, |b| decode(b, &mut Uplink::default()).is_ok(), &what);

    let used: &dyn Compressor = if dense_uplink(parts, round) {
        codecs.dense.as_ref()
    } else {
        codecs.uplink.as_ref()
    };
    let mode = reencoding(used);
    if mode != Reencode::None {
        let mut w = BitWriter::new();
        if flagged {
            w.write_bit(fresh.replace);
        }
        let (bytes, reported) = compress_again(used, &fresh.vec.to_vec(), key, w, &what);
        let mut again = Uplink::default();
        decode(&bytes, &mut again)
            .unwrap_or_else(|e| panic!("{}: re-encoded message does not decode: {e}", what()));
        assert!(
            same_vec(&again.vec, &reported),
            "{}: re-encoding round trip",
            what()
        );
        assert_eq!(
            again.replace,
            fresh.replace,
            "{}: replace flag round trip",
            what()
        );
        if mode == Reencode::Bytes {
            assert_eq!(bytes, msg, "{}: re-encoding gives other bytes", what());
            assert!(
                same_vec(&again.vec, &fresh.vec),
                "{}: re-encoded value",
                what()
            );
        } else {
            assert!(
                same_values(&again.vec, &fresh.vec),
                "{}: re-encoded values",
                what()
            );
        }
    }
    Ok(fresh)
}

fn check_downlink(case: &Case, round: u64, seed: u64, msg: &[u8]) -> Result<Downlink, DecodeError> {
    let codecs = &case.codecs;
    let d = case.d;
    let key = downlink_shared_key(seed, round);
    let what = || {
        format!(
            "downlink of {} round {round} ({:?}, d = {d})",
            case.method,
            codecs.downlink.as_ref().map(|c| c.describe())
        )
    };
    // written at the end of `round`, it opens the next one
    let opens = round.saturating_add(1);
    let decode =
        |bytes: &[u8], out: &mut Downlink| decode_downlink(bytes, d, codecs, opens, key, out);
    let mut fresh = Downlink::default();
    let res = decode(msg, &mut fresh);
    let mut reused = Downlink {
        is_model: false,
        replace: true,
        x: Arc::new(vec![7.5; d + 2]),
        vec: dirty_vec(d),
    };
    let res_reused = decode(msg, &mut reused);
    assert_eq!(
        res,
        res_reused,
        "{}: reused buffers decode differently",
        what()
    );
    res?;
    assert_eq!(
        fresh.is_model,
        reused.is_model,
        "{}: reused buffers",
        what()
    );
    assert_self_delimiting(msg, |b| decode(b, &mut Downlink::default()).is_ok(), &what);
    if fresh.is_model {
        assert!(
            fresh.x.len() == d && reused.x.len() == d,
            "{}: model length",
            what()
        );
        assert!(
            fresh
                .x
                .iter()
                .zip(reused.x.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: reused buffers decode to another model",
            what()
        );
        assert!(
            fresh.x.iter().all(|v| v.is_finite()),
            "{}: non-finite model",
            what()
        );
        let mut wire = Wire::default();
        encode_model(&fresh.x, &mut BitWriter::new(), &mut wire);
        assert_eq!(
            wire.bytes,
            msg,
            "{}: model re-encodes to other bytes",
            what()
        );
        return Ok(fresh);
    }
    let cm = codecs.downlink.as_deref().unwrap_or_else(|| {
        panic!(
            "{}: an estimate message decodes without a server compressor",
            what()
        )
    });
    assert!(
        fresh.replace == reused.replace && same_vec(&fresh.vec, &reused.vec),
        "{}: reused buffers decode to another estimate",
        what()
    );
    assert_well_formed(&fresh.vec, d, &what);
    let (used, tag) = if fresh.replace {
        (codecs.dense.as_ref(), TAG_ESTIMATE_DENSE)
    } else {
        (cm, TAG_ESTIMATE_DELTA)
    };
    let mode = reencoding(used);
    if mode != Reencode::None {
        let mut w = BitWriter::new();
        w.write_bits(tag, 2);
        let (bytes, reported) = compress_again(used, &fresh.vec.to_vec(), key, w, &what);
        let mut again = Downlink::default();
        decode(&bytes, &mut again)
            .unwrap_or_else(|e| panic!("{}: re-encoded message does not decode: {e}", what()));
        assert!(
            !again.is_model && again.replace == fresh.replace,
            "{}: re-encoded tag",
            what()
        );
        assert!(
            same_vec(&again.vec, &reported),
            "{}: re-encoding round trip",
            what()
        );
        if mode == Reencode::Bytes {
            assert_eq!(bytes, msg, "{}: re-encoding gives other bytes", what());
            assert!(
                same_vec(&again.vec, &fresh.vec),
                "{}: re-encoded value",
                what()
            );
        } else {
            assert!(
                same_values(&again.vec, &fresh.vec),
                "{}: re-encoded values",
                what()
            );
        }
    }
    Ok(fresh)
}

/// f_i(x) = (1/N) sum_j ||x - b_j||^2 / 2 with b_j fixed: a finite sum with
/// cheap exact gradients, to produce real messages.
struct Quadratic {
    b: Vec<Vec<f64>>,
}

impl Quadratic {
    fn new(d: usize, key: u64) -> Self {
        use rand::Rng as _;
        let mut rng = rng_from_key(key);
        Quadratic {
            b: (0..SAMPLES)
                .map(|_| (0..d).map(|_| rng.gen_range(-2.0..2.0)).collect())
                .collect(),
        }
    }
}

impl Oracle for Quadratic {
    fn dim(&self) -> usize {
        self.b[0].len()
    }
    fn num_samples(&self) -> Option<usize> {
        Some(SAMPLES)
    }
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let all: Vec<u32> = (0..SAMPLES as u32).collect();
        self.indexed_grad(x, &all, grad)
    }
    fn loss(&mut self, x: &[f64]) -> f64 {
        let mut g = vec![0.0; x.len()];
        self.loss_grad(x, &mut g)
    }
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        sample_without_replacement(SAMPLES, batch, rng, drawn);
        self.indexed_grad(x, drawn, grad)
    }
    fn indexed_grad(&mut self, x: &[f64], idx: &[u32], grad: &mut [f64]) -> f64 {
        let inv = 1.0 / idx.len() as f64;
        grad.copy_from_slice(x);
        let mut loss = 0.0;
        for &j in idx {
            for ((g, xi), bj) in grad.iter_mut().zip(x).zip(&self.b[j as usize]) {
                *g -= inv * bj;
                loss += 0.5 * inv * (xi - bj) * (xi - bj);
            }
        }
        loss
    }
}

/// A fuzz input holding a real message.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Whether the message is an uplink (else a downlink).
    pub uplink: bool,
    /// Header and message.
    pub data: Vec<u8>,
}

/// Real messages in the input layout: for every case and both initializations,
/// worker 0's uplinks of rounds 0..=2 and the server's downlinks prepared at
/// the end of rounds 0..=2, produced by [`Worker`] and [`Server`] on a small
/// quadratic problem. Seeds for the fuzzer's corpus and for the mutation tests.
pub fn message_seeds() -> Vec<Seed> {
    let nc = codec_count();
    let mut out = Vec::new();
    for (ci, case) in cases().iter().enumerate() {
        let (p, c) = ((ci / nc) as u8, (ci % nc) as u8);
        for init in [InitMode::Dense, InitMode::Compressed] {
            let seed = 0x2a_u8.wrapping_add(ci as u8);
            let mut parts = case.parts;
            parts.init = init;
            let x0: Vec<f64> = (0..case.d).map(|j| 0.25 * j as f64 - 1.0).collect();
            let mut server = Server::new(WORKERS, &x0);
            let mut workers: Vec<Worker> = (0..WORKERS).map(|i| Worker::new(i, &x0)).collect();
            let mut oracles: Vec<Quadratic> = (0..WORKERS)
                .map(|i| Quadratic::new(case.d, ci as u64 * 16 + i as u64))
                .collect();
            let flags = |round: u64| round as u8 | if init == InitMode::Compressed { 4 } else { 0 };
            'rounds: for round in 0..3u64 {
                let rc = RoundCtx {
                    seed: u64::from(seed),
                    round,
                };
                let down = server.state.next_down.clone();
                let wire = server.state.next_wire.clone();
                for (w, o) in workers.iter_mut().zip(oracles.iter_mut()) {
                    if w.step(&down, &wire, o, &parts, &case.codecs, rc).is_err() {
                        break 'rounds;
                    }
                }
                let mut data = vec![p, c, flags(round), seed];
                data.extend_from_slice(&workers[0].scratch.wire.bytes);
                out.push(Seed { uplink: true, data });
                let ups: Vec<Option<&Uplink>> =
                    workers.iter().map(|w| Some(&w.scratch.up)).collect();
                if server.apply(&ups, &parts, &case.codecs, rc).is_err() {
                    break;
                }
                let mut data = vec![p, c, flags(round), seed];
                data.extend_from_slice(&server.state.next_wire.bytes);
                out.push(Seed {
                    uplink: false,
                    data,
                });
            }
        }
    }
    out
}
