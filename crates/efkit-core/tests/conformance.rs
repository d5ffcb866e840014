//! One conformance suite run for every catalogue entry (design.md §5):
//!
//! * class inequality: exact for deterministic compressors, Monte Carlo with a
//!   seeded generator and standard-error based tolerances for random ones;
//!   unbiasedness of unbiased compressors;
//! * round trip: decode(encode(C(x))) == C(x) bit for bit, messages are
//!   self-delimiting (two messages back to back decode in turn), wire bits are
//!   8 * bytes;
//! * errors: non-finite input is `NonFinite` naming the entry, values that do not
//!   fit the wire format are `Shape` (overflow) errors, and an error writes
//!   nothing;
//! * hostile decoding: random bytes, every truncation and every single-bit flip
//!   of valid messages decode to a well-formed value or an error, never panic;
//! * registry: the catalogue lists every name, parameters are validated.
//!
//! Rounding: reported values are rounded to the wire format, so every inequality
//! is checked for the exact operator after removing a rounding allowance
//! delta = 4 u (||C(x)|| + ||x||) + 2 a sqrt(d), with u the unit roundoff of the
//! format (2^-11 f16, 2^-24 f32, 2^-53 f64) and a its smallest subnormal
//! (absolute underflow): ||C(x) - x|| <= sqrt(bound) + delta.

use std::collections::BTreeSet;

use efkit_core::bits::{BitReader, BitWriter};
use efkit_core::compress::{
    build, build_blockwise, catalogue, decode_one, encode_one, example_spec, fuzz_decode,
    CompressCtx, CompressedVec, Compressor, CompressorClass, CompressorSpec, DecodeCtx, Scratch,
    ValueFormat, CATALOGUE_NAMES,
};
use efkit_core::rng::{rng_from_key, Rng};
use efkit_core::{CompressError, ParamError};
use proptest::prelude::*;
use rand::Rng as _;

// ---------------------------------------------------------------------------
// Sample specs and inputs
// ---------------------------------------------------------------------------

fn spec(name: &str, f: impl FnOnce(&mut CompressorSpec)) -> CompressorSpec {
    let mut s = CompressorSpec::named(name);
    f(&mut s);
    s
}

/// Largest divisor of d that is at most sqrt(d).
fn rows_for(d: usize) -> usize {
    (1..=d)
        .take_while(|r| r * r <= d)
        .filter(|r| (d / r) * r == d)
        .last()
        .unwrap_or(1)
}

/// Uneven layer sizes summing to d (one block when d < 3).
fn layers_for(d: usize) -> Vec<usize> {
    if d < 3 {
        vec![d]
    } else {
        vec![d / 2, d / 3, d - d / 2 - d / 3]
    }
}

/// Builds `spec` for dimension d: per layer over [`layers_for`] when
/// `per_layer = true`, else the plain compressor.
fn make(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    if spec.per_layer == Some(true) {
        build_blockwise(spec, &layers_for(d))
    } else {
        build(spec, d)
    }
}

/// Sample specs covering every catalogue name (with value-format and
/// shared-seed variants) for dimension `d`.
fn sample_specs(d: usize) -> Vec<CompressorSpec> {
    use ValueFormat::*;
    let mut v = vec![
        spec("identity", |_| {}),
        spec("identity", |s| s.values = Some(F16)),
        spec("identity", |s| s.values = Some(F64)),
        spec("top-k", |s| s.ratio = Some(0.125)),
        spec("top-k", |s| {
            s.ratio = Some(0.5);
            s.values = Some(F16)
        }),
        spec("top-k", |s| {
            s.k = Some(1);
            s.values = Some(F64)
        }),
        spec("top-k", |s| s.k = Some(d)),
        spec("top-k", |s| {
            s.ratio = Some(0.125);
            s.per_layer = Some(true)
        }),
        spec("identity", |s| s.per_layer = Some(true)),
        spec("rand-k", |s| {
            s.ratio = Some(0.25);
            s.shared_seed = Some(true);
            s.per_layer = Some(true)
        }),
        spec("scaled-rand-k", |s| {
            s.ratio = Some(0.25);
            s.per_layer = Some(true);
            s.values = Some(F64)
        }),
        spec("rand-k", |s| s.ratio = Some(0.125)),
        spec("rand-k", |s| {
            s.ratio = Some(0.25);
            s.shared_seed = Some(true)
        }),
        spec("rand-k", |s| {
            s.ratio = Some(0.5);
            s.shared_seed = Some(true);
            s.values = Some(F16)
        }),
        spec("rand-k", |s| {
            s.k = Some(1);
            s.values = Some(F64)
        }),
        spec("scaled-rand-k", |s| s.ratio = Some(0.25)),
        spec("scaled-rand-k", |s| {
            s.ratio = Some(0.125);
            s.shared_seed = Some(true);
            s.values = Some(F64)
        }),
        spec("scaled-rand-k", |s| {
            s.ratio = Some(0.5);
            s.values = Some(F16)
        }),
        spec("bernoulli", |s| s.p = Some(0.3)),
        spec("bernoulli", |s| s.p = Some(1.0)),
        spec("bernoulli", |s| {
            s.p = Some(0.5);
            s.values = Some(F16)
        }),
        spec("bernoulli", |s| {
            s.p = Some(0.1);
            s.values = Some(F64)
        }),
        spec("threshold", |s| s.lambda = Some(0.5)),
        spec("threshold", |s| {
            s.lambda = Some(0.0);
            s.values = Some(F64)
        }),
        spec("threshold", |s| {
            s.lambda = Some(0.1);
            s.values = Some(F16)
        }),
        spec("top-k-quant", |s| s.ratio = Some(0.125)),
        spec("top-k-quant", |s| {
            s.ratio = Some(0.5);
            s.quantizer = Some("natural".into())
        }),
        spec("natural", |_| {}),
        spec("qsgd", |s| s.levels = Some(4)),
        spec("qsgd", |s| s.levels = Some(1)),
        spec("natural-dithering", |s| {
            s.levels = Some(3);
            s.norm = Some(2.0)
        }),
        spec("natural-dithering", |s| {
            s.levels = Some(8);
            s.norm = Some(f64::INFINITY)
        }),
        spec("qsgd", |s| {
            s.levels = Some(2);
            s.values = Some(F64)
        }),
        spec("natural-dithering", |s| {
            s.levels = Some(3);
            s.values = Some(F16)
        }),
        // C/(1 + omega) of unbiased compressors (`contractive = true`)
        spec("scaled-rand-k", |s| {
            s.ratio = Some(0.25);
            s.contractive = Some(true)
        }),
        spec("scaled-rand-k", |s| {
            s.ratio = Some(0.25);
            s.per_layer = Some(true);
            s.contractive = Some(true)
        }),
        spec("bernoulli", |s| {
            s.p = Some(0.3);
            s.values = Some(F64);
            s.contractive = Some(true)
        }),
        spec("qsgd", |s| {
            s.levels = Some(2);
            s.contractive = Some(true)
        }),
        spec("natural-dithering", |s| {
            s.levels = Some(3);
            s.contractive = Some(true)
        }),
        spec("natural", |s| s.contractive = Some(true)),
        spec("scaled-sign", |_| {}),
        spec("scaled-sign", |s| s.values = Some(F16)),
        spec("scaled-sign", |s| s.values = Some(F64)),
        spec("rank-r", |s| {
            s.rank = Some(1);
            s.rows = Some(rows_for(d))
        }),
        spec("rank-r", |s| {
            s.rank = Some(1);
            s.rows = Some(rows_for(d));
            s.values = Some(F64)
        }),
    ];
    if rows_for(d) >= 2 {
        v.push(spec("rank-r", |s| {
            s.rank = Some(2);
            s.rows = Some(rows_for(d))
        }));
    }
    v
}

/// Named test inputs of dimension `d`, ordinary and adversarial.
fn inputs(d: usize, seed: u64) -> Vec<(&'static str, Vec<f64>)> {
    let mut rng = rng_from_key(seed);
    let gauss = |rng: &mut Rng| -> f64 {
        // Box–Muller (enough for test data)
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let g: Vec<f64> = (0..d).map(|_| gauss(&mut rng)).collect();
    let mut spike = vec![0.0; d];
    spike[d / 2] = -3.0;
    let mut spike_noise: Vec<f64> = (0..d).map(|_| 1e-3 * gauss(&mut rng)).collect();
    spike_noise[d - 1] = 50.0;
    let mut huge_spike = vec![1.0; d];
    huge_spike[d / 3] = 1e150;
    vec![
        ("gaussian", g.clone()),
        ("all-equal", vec![0.75; d]),
        (
            "equal-magnitude-signs",
            (0..d)
                .map(|j| if j % 3 == 0 { -2.0 } else { 2.0 })
                .collect(),
        ),
        ("single-spike", spike),
        ("spike-noise", spike_noise),
        ("zeros", vec![0.0; d]),
        (
            "signed-zeros",
            (0..d)
                .map(|j| if j % 2 == 0 { -0.0 } else { 0.0 })
                .collect(),
        ),
        ("scale-1e30", g.iter().map(|v| v * 1e30).collect()),
        ("scale-1e-30", g.iter().map(|v| v * 1e-30).collect()),
        (
            "wide-range",
            (0..d)
                .map(|j| g[j] * 10f64.powi((j as i32 * 7) % 41 - 20))
                .collect(),
        ),
        ("huge-spike-1e150", huge_spike),
    ]
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Unit roundoff, absolute underflow and largest safe magnitude of the values a
/// spec transmits.
fn format_of(s: &CompressorSpec) -> (f64, f64, f64) {
    match s.name.as_str() {
        // natural rounding is part of the operator; range +-2^127
        "natural" | "top-k-quant" => (2f64.powi(-52), 0.0, 1.7e38),
        _ => match s.values.unwrap_or_default() {
            ValueFormat::F16 => (2f64.powi(-11), 2f64.powi(-24), 65504.0),
            ValueFormat::F32 => (2f64.powi(-24), 2f64.powi(-149), f32::MAX as f64),
            ValueFormat::F64 => (2f64.powi(-53), 0.0, 1e100),
        },
    }
}

fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum()
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, a| m.max(a.abs()))
}

/// Rounding allowance for one output (see the module docs).
fn rounding_slack(s: &CompressorSpec, c: &[f64], x: &[f64]) -> f64 {
    let (u, a, _) = format_of(s);
    4.0 * u * (norm2(c).sqrt() + norm2(x).sqrt()) + 2.0 * a * (x.len() as f64).sqrt()
}

/// Panics unless `v` is a well-formed compressed vector of dimension `d`.
fn assert_well_formed(v: &CompressedVec, d: usize, what: &str) {
    assert_eq!(v.dim, d, "{what}: dim");
    if v.dense {
        assert_eq!(v.values.len(), d, "{what}: dense length");
        assert!(v.indices.is_empty(), "{what}: dense with indices");
    } else {
        assert_eq!(v.values.len(), v.indices.len(), "{what}: sparse lengths");
        assert!(
            v.indices.windows(2).all(|p| p[0] < p[1]),
            "{what}: indices not increasing"
        );
        assert!(
            v.indices.iter().all(|&i| (i as usize) < d),
            "{what}: index out of range"
        );
    }
    assert!(
        v.values.iter().all(|x| x.is_finite()),
        "{what}: non-finite value"
    );
}

/// Reusable buffers for one compressor (no allocation per draw).
struct Harness {
    c: Box<dyn Compressor>,
    spec: CompressorSpec,
    d: usize,
    scratch: Scratch,
    out: CompressedVec,
    dec: CompressedVec,
    w: BitWriter,
    dense: Vec<f64>,
}

impl Harness {
    fn new(spec: &CompressorSpec, d: usize) -> Self {
        let c = make(spec, d).unwrap_or_else(|e| panic!("build {spec:?} for d={d}: {e}"));
        assert_eq!(c.dim(), d);
        assert!(CATALOGUE_NAMES.contains(&c.name()));
        assert_eq!(c.name(), spec.name);
        Harness {
            c,
            spec: spec.clone(),
            d,
            scratch: Scratch::default(),
            out: CompressedVec::default(),
            dec: CompressedVec::default(),
            w: BitWriter::new(),
            dense: vec![0.0; d],
        }
    }

    fn what(&self, input: &str) -> String {
        format!("{} [d={}, input {input}]", self.c.describe(), self.d)
    }

    /// Compresses, checks the message (round trip, bit counts, well-formedness)
    /// and leaves the dense value in `self.dense`. `Err` only for allowed errors.
    fn step(
        &mut self,
        x: &[f64],
        rng: &mut Rng,
        key: u64,
        input: &str,
    ) -> Result<(), CompressError> {
        self.w.clear();
        let res = {
            let mut ctx = CompressCtx {
                rng,
                shared_key: key,
                scratch: &mut self.scratch,
            };
            self.c.compress(x, &mut ctx, &mut self.out, &mut self.w)
        };
        let what = self.what(input);
        if let Err(e) = res {
            assert_eq!(self.w.bit_len(), 0, "{what}: an error must write nothing");
            return Err(e);
        }
        assert_well_formed(&self.out, self.d, &what);
        let bits = self.w.bit_len();
        let bytes = self.w.finish();
        assert_eq!(bytes.len() as u64, bits.div_ceil(8), "{what}: wire bytes");
        let mut r = BitReader::new(bytes);
        self.c
            .decode(&mut r, &DecodeCtx { shared_key: key }, &mut self.dec)
            .unwrap_or_else(|e| panic!("{what}: decoding a valid message failed: {e}"));
        assert_eq!(
            r.position(),
            bits,
            "{what}: decoder must consume exactly the message"
        );
        r.finish().unwrap();
        assert_eq!(self.dec.dense, self.out.dense, "{what}: form");
        assert!(
            self.dec.bit_eq(&self.out),
            "{what}: round trip not bit-identical"
        );
        self.out.to_dense(&mut self.dense);
        Ok(())
    }
}

/// Checks one deterministic output against the class bound.
fn check_deterministic_class(h: &Harness, x: &[f64], input: &str) {
    let what = h.what(input);
    let c = &h.dense;
    let e = dist2(c, x).sqrt();
    let delta = rounding_slack(&h.spec, c, x);
    let nx2 = norm2(x);
    let bound = match h.c.class() {
        CompressorClass::Contractive { alpha } => (1.0 - alpha) * nx2,
        CompressorClass::Unbiased { omega } => {
            // a deterministic unbiased compressor is the identity
            assert!(
                e <= delta + 1e-12 * nx2.sqrt(),
                "{what}: deterministic unbiased compressor moved x by {e}"
            );
            omega * nx2
        }
        CompressorClass::Absolute { delta2 } => delta2,
    };
    let lim = bound.sqrt() * (1.0 + 1e-12) + delta;
    assert!(
        e <= lim,
        "{what}: ||C(x)-x|| = {e:e} > sqrt(bound) + rounding = {lim:e}"
    );
}

/// Monte-Carlo check of the class of a random compressor on `x`.
fn check_random_class(h: &mut Harness, x: &[f64], n: usize, seed: u64, input: &str) {
    let what = h.what(input);
    let d = h.d;
    let mut rng = rng_from_key(seed);
    let mut sum = vec![0.0; d];
    let (mut e_sum, mut e_sq_sum, mut delta_sum) = (0.0, 0.0, 0.0);
    for i in 0..n {
        h.step(x, &mut rng, seed.wrapping_add(i as u64), input)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let c = &h.dense;
        let delta = rounding_slack(&h.spec, c, x);
        // Deflate by the rounding allowance: a lower bound on the exact error.
        let e = (dist2(c, x).sqrt() - delta).max(0.0).powi(2);
        e_sum += e;
        e_sq_sum += e * e;
        delta_sum += delta;
        for j in 0..d {
            sum[j] += c[j];
        }
    }
    let nf = n as f64;
    let nx2 = norm2(x);
    let e_mean = e_sum / nf;
    let e_se = ((e_sq_sum / nf - e_mean * e_mean).max(0.0) / (nf - 1.0)).sqrt();
    let z = 5.0;
    let fp = 1e-12 * nx2; // floating-point summation noise
    let bound = match h.c.class() {
        CompressorClass::Contractive { alpha } => {
            assert!(alpha > 0.0 && alpha <= 1.0, "{what}: alpha = {alpha}");
            (1.0 - alpha) * nx2
        }
        CompressorClass::Unbiased { omega } => {
            assert!(omega >= 0.0, "{what}: omega = {omega}");
            // Unbiasedness: E||mean - x||^2 = tr(Cov C(x))/N <= omega ||x||^2/N, so
            // ||mean - x|| must lie within z such standard errors, plus the
            // rounding bias. (An empirical standard error is not used here: for
            // rare events, e.g. QSGD rounding a tiny entry up with probability
            // 1e-4, the sample variance is often exactly 0.)
            let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
            let dev = dist2(&mean, x).sqrt();
            let bias = delta_sum / nf + 1e-9 * nx2.sqrt();
            let se_omega = (omega * nx2 / nf).sqrt();
            assert!(
                dev <= z * se_omega + bias,
                "{what}: ||mean - x|| = {dev:e} > {z} * sqrt(omega||x||^2/N) {se_omega:e} + {bias:e}"
            );
            omega * nx2
        }
        CompressorClass::Absolute { delta2 } => delta2,
    };
    assert!(
        e_mean <= bound + z * e_se + fp,
        "{what}: mean ||C(x)-x||^2 = {e_mean:e} > bound {bound:e} + {z} SE ({e_se:e}) over {n} draws"
    );
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

/// Every sample spec on every input: compress, round trip, class inequality.
#[test]
fn class_roundtrip_and_errors_for_every_spec() {
    let d = 40;
    let specs = sample_specs(d);
    let names: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for &n in CATALOGUE_NAMES {
        assert!(names.contains(n), "no sample spec for `{n}`");
    }
    for (si, s) in specs.iter().enumerate() {
        let mut h = Harness::new(s, d);
        for (ii, (input, x)) in inputs(d, 100 + si as u64).into_iter().enumerate() {
            let what = h.what(input);
            let (_, _, limit) = format_of(s);
            let may_overflow = max_abs(&x) * 1e3 > limit;
            let mut rng = rng_from_key(1000 + ii as u64);
            match h.step(&x, &mut rng, 7, input) {
                Ok(()) => {}
                Err(CompressError::Shape(msg)) if may_overflow => {
                    assert!(msg.contains("overflow"), "{what}: {msg}");
                    continue;
                }
                Err(e) => panic!("{what}: unexpected error {e}"),
            }
            if norm2(&x) >= 1e300 || (may_overflow && !h.c.is_deterministic()) {
                // norms overflow in the checks themselves, or other draws may
                // overflow the wire format (allowed, tested above)
                continue;
            }
            if h.c.is_deterministic() {
                check_deterministic_class(&h, &x, input);
                // and really deterministic
                let first = h.dense.clone();
                let mut rng = rng_from_key(99);
                h.step(&x, &mut rng, 8, input).unwrap();
                assert!(
                    first
                        .iter()
                        .zip(&h.dense)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: deterministic compressor gave two values"
                );
            } else {
                let n = if input == "gaussian" { 4000 } else { 1000 };
                check_random_class(&mut h, &x, n, 5000 + 31 * si as u64 + ii as u64, input);
            }
        }
    }
}

/// Small and large dimensions: round trip, class (one draw), hostile decoding.
#[test]
fn other_dimensions_roundtrip() {
    for &d in &[1usize, 2, 7, 64, 1000] {
        for (si, s) in sample_specs(d).iter().enumerate() {
            let mut h = Harness::new(s, d);
            for (input, x) in inputs(d, si as u64) {
                if input == "huge-spike-1e150" {
                    continue;
                }
                let mut rng = rng_from_key(si as u64);
                let what = h.what(input);
                match h.step(&x, &mut rng, 3, input) {
                    Ok(()) => {}
                    Err(CompressError::Shape(_)) if max_abs(&x) * 1e3 > format_of(s).2 => continue,
                    Err(e) => panic!("{what}: {e}"),
                }
                if h.c.is_deterministic() {
                    check_deterministic_class(&h, &x, input);
                }
            }
        }
    }
}

/// Two messages written back to back (at an odd bit offset) decode in turn:
/// messages are self-delimiting and alignment-independent.
#[test]
fn messages_are_self_delimiting() {
    let d = 40;
    for s in sample_specs(d) {
        let c = make(&s, d).unwrap();
        let xs = inputs(d, 1);
        let (x1, x2) = (&xs[0].1, &xs[4].1);
        let mut rng = rng_from_key(2);
        let mut scratch = Scratch::default();
        let (mut o1, mut o2) = (CompressedVec::default(), CompressedVec::default());
        let mut w = BitWriter::new();
        w.write_bits(0b1, 1);
        let mut ctx = CompressCtx {
            rng: &mut rng,
            shared_key: 11,
            scratch: &mut scratch,
        };
        c.compress(x1, &mut ctx, &mut o1, &mut w).unwrap();
        ctx.shared_key = 12;
        c.compress(x2, &mut ctx, &mut o2, &mut w).unwrap();
        let bytes = w.finish().to_vec();
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read_bits(1).unwrap(), 1);
        let mut dec = CompressedVec::default();
        c.decode(&mut r, &DecodeCtx { shared_key: 11 }, &mut dec)
            .unwrap();
        assert!(dec.bit_eq(&o1), "{}: first message", c.describe());
        c.decode(&mut r, &DecodeCtx { shared_key: 12 }, &mut dec)
            .unwrap();
        assert!(dec.bit_eq(&o2), "{}: second message", c.describe());
        r.finish().unwrap();
    }
}

/// Non-finite input: `NonFinite` naming the first bad entry; wrong length:
/// `Shape`; nothing written in either case.
#[test]
fn non_finite_and_wrong_length_inputs() {
    let d = 40;
    for s in sample_specs(d) {
        let c = make(&s, d).unwrap();
        for (idx, bad) in [
            (0usize, f64::NAN),
            (3, f64::INFINITY),
            (d - 1, f64::NEG_INFINITY),
            (17, -f64::NAN),
        ] {
            let mut x = vec![1.0; d];
            x[idx] = bad;
            if idx + 5 < d {
                x[idx + 5] = f64::NAN; // a later bad entry must not be the one reported
            }
            let mut rng = rng_from_key(0);
            let mut scratch = Scratch::default();
            let mut out = CompressedVec::default();
            let mut w = BitWriter::new();
            let mut ctx = CompressCtx {
                rng: &mut rng,
                shared_key: 0,
                scratch: &mut scratch,
            };
            let first = x.iter().position(|v| !v.is_finite()).unwrap();
            match c.compress(&x, &mut ctx, &mut out, &mut w) {
                Err(CompressError::NonFinite { index, value }) => {
                    assert_eq!(index, first, "{}", c.describe());
                    assert_eq!(value.to_bits(), x[first].to_bits());
                }
                other => panic!("{}: expected NonFinite, got {other:?}", c.describe()),
            }
            assert_eq!(w.bit_len(), 0);
        }
        for len in [0, d - 1, d + 1] {
            let x = vec![1.0; len];
            let mut rng = rng_from_key(0);
            let mut scratch = Scratch::default();
            let mut out = CompressedVec::default();
            let mut w = BitWriter::new();
            let mut ctx = CompressCtx {
                rng: &mut rng,
                shared_key: 0,
                scratch: &mut scratch,
            };
            assert!(
                matches!(
                    c.compress(&x, &mut ctx, &mut out, &mut w),
                    Err(CompressError::Shape(_))
                ),
                "{}: length {len}",
                c.describe()
            );
            assert_eq!(w.bit_len(), 0);
        }
    }
}

/// Values beyond the wire format: a `Shape` overflow error, never an infinity
/// on the wire or a silently saturated value; f64 carries them.
#[test]
fn wire_format_overflow_is_an_error() {
    let d = 16;
    let mut x = vec![1.0; d];
    x[5] = 1e39; // beyond f32 (3.4e38) but fine for f64
    let cases = [
        ("identity", None, true),
        ("identity", Some(ValueFormat::F64), false),
        ("top-k", None, true),
        ("top-k", Some(ValueFormat::F64), false),
        ("threshold", None, true),
        ("threshold", Some(ValueFormat::F64), false),
        ("top-k-quant", None, true),
    ];
    for (name, fmt, overflow) in cases {
        let mut s = example_spec(name, d);
        s.values = fmt;
        if name == "threshold" {
            s.lambda = Some(0.5);
        }
        if name != "identity" && name != "threshold" {
            s.ratio = None;
            s.k = Some(2);
        }
        let c = build(&s, d).unwrap();
        let r = encode_one(c.as_ref(), &x, &mut rng_from_key(1), 0);
        match (r, overflow) {
            (Err(CompressError::Shape(m)), true) => assert!(m.contains("overflow"), "{m}"),
            (Ok(e), false) => {
                assert_eq!(e.value.to_vec()[5], 1e39);
                assert!(decode_one(c.as_ref(), &e.bytes, 0)
                    .unwrap()
                    .bit_eq(&e.value));
            }
            (r, _) => panic!("{}: {:?}", c.describe(), r.map(|e| e.value)),
        }
    }
    // f16: 70000 > 65504
    let mut s = CompressorSpec::named("identity");
    s.values = Some(ValueFormat::F16);
    let c = build(&s, 3).unwrap();
    assert!(matches!(
        encode_one(c.as_ref(), &[1.0, 7e4, 0.0], &mut rng_from_key(1), 0),
        Err(CompressError::Shape(_))
    ));
    assert!(encode_one(c.as_ref(), &[1.0, 6e4, 0.0], &mut rng_from_key(1), 0).is_ok());
    // scaled rand-k overflows through the d/K factor
    let mut s = CompressorSpec::named("scaled-rand-k");
    s.k = Some(1);
    s.values = Some(ValueFormat::F16);
    let c = build(&s, 4).unwrap();
    assert!(matches!(
        encode_one(c.as_ref(), &[2e4; 4], &mut rng_from_key(1), 0),
        Err(CompressError::Shape(_))
    ));
}

/// Class constants and paper bits as documented (algorithms.md §3.2-3.3).
#[test]
fn class_constants_and_paper_bits() {
    let d = 40usize;
    let df = d as f64;
    let x: Vec<f64> = (0..d).map(|j| (j as f64 - 17.5) / 3.0).collect();
    let check = |s: CompressorSpec, class: CompressorClass, bits: Option<u64>| {
        let c = build(&s, d).unwrap();
        let got = c.class();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        let ok = match (got, class) {
            (
                CompressorClass::Contractive { alpha: a },
                CompressorClass::Contractive { alpha: b },
            ) => close(a, b),
            (CompressorClass::Unbiased { omega: a }, CompressorClass::Unbiased { omega: b }) => {
                close(a, b)
            }
            (CompressorClass::Absolute { delta2: a }, CompressorClass::Absolute { delta2: b }) => {
                close(a, b)
            }
            _ => false,
        };
        assert!(ok, "{}: class {got:?}, expected {class:?}", c.describe());
        if let Some(b) = bits {
            let e = encode_one(c.as_ref(), &x, &mut rng_from_key(3), 0).unwrap();
            assert_eq!(e.paper_bits, b, "{}: paper bits", c.describe());
            assert_eq!(e.wire_bits, 8 * e.bytes.len() as u64);
        }
    };
    check(
        CompressorSpec::named("identity"),
        CompressorClass::Contractive { alpha: 1.0 },
        Some(32 * d as u64),
    );
    check(
        spec("top-k", |s| s.k = Some(5)),
        CompressorClass::Contractive { alpha: 5.0 / df },
        Some(160),
    );
    check(
        spec("top-k", |s| s.ratio = Some(0.1)),
        CompressorClass::Contractive { alpha: 4.0 / df },
        Some(128),
    );
    check(
        spec("top-k", |s| s.ratio = Some(0.001)),
        CompressorClass::Contractive { alpha: 1.0 / df },
        Some(32),
    );
    check(
        spec("rand-k", |s| s.k = Some(5)),
        CompressorClass::Contractive { alpha: 5.0 / df },
        Some(160),
    );
    check(
        spec("scaled-rand-k", |s| s.k = Some(5)),
        CompressorClass::Unbiased {
            omega: df / 5.0 - 1.0,
        },
        Some(160),
    );
    check(
        spec("bernoulli", |s| s.p = Some(0.25)),
        CompressorClass::Unbiased { omega: 3.0 },
        None,
    );
    check(
        spec("bernoulli", |s| s.p = Some(1.0)),
        CompressorClass::Unbiased { omega: 0.0 },
        Some(32 * d as u64),
    );
    check(
        spec("threshold", |s| s.lambda = Some(0.5)),
        CompressorClass::Absolute { delta2: df * 0.25 },
        None,
    );
    check(
        spec("top-k-quant", |s| s.k = Some(8)),
        CompressorClass::Contractive {
            alpha: 7.0 * 8.0 / (8.0 * df),
        },
        Some(72),
    );
    check(
        CompressorSpec::named("natural"),
        CompressorClass::Unbiased { omega: 0.125 },
        Some(9 * d as u64),
    );
    check(
        spec("qsgd", |s| s.levels = Some(4)),
        CompressorClass::Unbiased {
            omega: (df / 16.0).min(df.sqrt() / 4.0),
        },
        None,
    );
    check(
        spec("qsgd", |s| s.levels = Some(1)),
        CompressorClass::Unbiased {
            omega: df.min(df.sqrt()),
        },
        None,
    );
    check(
        CompressorSpec::named("scaled-sign"),
        CompressorClass::Contractive { alpha: 1.0 / df },
        None,
    );
    // C/(1 + omega): contractive with alpha = 1/(1 + omega), same bits as C
    check(
        spec("scaled-rand-k", |s| {
            s.k = Some(5);
            s.contractive = Some(true)
        }),
        CompressorClass::Contractive { alpha: 5.0 / df },
        Some(160),
    );
    check(
        spec("natural", |s| s.contractive = Some(true)),
        CompressorClass::Contractive { alpha: 1.0 / 1.125 },
        Some(9 * d as u64),
    );
    check(
        spec("bernoulli", |s| {
            s.p = Some(0.25);
            s.contractive = Some(true)
        }),
        CompressorClass::Contractive { alpha: 0.25 },
        None,
    );
    // natural dithering, l2, s = 3: omega = 1/8 + (d^(1/2)/4) min(1, d^(1/2)/4)
    let t = df.sqrt() / 4.0;
    check(
        spec("natural-dithering", |s| {
            s.levels = Some(3);
            s.norm = Some(2.0)
        }),
        CompressorClass::Unbiased {
            omega: 0.125 + t * t.min(1.0),
        },
        None,
    );
    // Bernoulli paper bits: 32 d when sent, 0 otherwise
    let c = build(&spec("bernoulli", |s| s.p = Some(0.5)), d).unwrap();
    let mut seen = [false; 2];
    for i in 0..64 {
        let e = encode_one(c.as_ref(), &x, &mut rng_from_key(i), 0).unwrap();
        if e.value.dense {
            assert_eq!(e.paper_bits, 32 * d as u64);
            seen[1] = true;
        } else {
            assert_eq!(e.paper_bits, 0);
            assert_eq!(e.bytes.len(), 1);
            seen[0] = true;
        }
    }
    assert_eq!(seen, [true, true]);
    // rank-r is contractive
    let c = build(
        &spec("rank-r", |s| {
            s.rank = Some(1);
            s.rows = Some(5)
        }),
        d,
    )
    .unwrap();
    assert!(
        matches!(c.class(), CompressorClass::Contractive { alpha } if alpha > 0.0 && alpha <= 1.0)
    );
}

/// Shared-seed Rand-K: indices are not sent, the receiver regenerates them from
/// the key; a different key gives a different set.
#[test]
fn shared_seed_indices_are_not_sent() {
    let d = 1000;
    let x: Vec<f64> = (0..d).map(|j| (j as f64).sin()).collect();
    for name in ["rand-k", "scaled-rand-k"] {
        let private = build(&spec(name, |s| s.k = Some(10)), d).unwrap();
        let shared = build(
            &spec(name, |s| {
                s.k = Some(10);
                s.shared_seed = Some(true)
            }),
            d,
        )
        .unwrap();
        let a = encode_one(private.as_ref(), &x, &mut rng_from_key(1), 5).unwrap();
        let b = encode_one(shared.as_ref(), &x, &mut rng_from_key(1), 5).unwrap();
        assert_eq!(b.bytes.len(), 10 * 4, "values only");
        assert!(a.bytes.len() > b.bytes.len());
        // same key, different private streams: same set
        let b2 = encode_one(shared.as_ref(), &x, &mut rng_from_key(2), 5).unwrap();
        assert_eq!(b.value.indices, b2.value.indices);
        let dec = decode_one(shared.as_ref(), &b.bytes, 5).unwrap();
        assert!(dec.bit_eq(&b.value));
        let other = decode_one(shared.as_ref(), &b.bytes, 6).unwrap();
        assert_ne!(other.indices, b.value.indices);
    }
}

/// Top-K: exact K largest with ties to the lower index, through the public API.
#[test]
fn top_k_ties_to_lower_index() {
    let c = build(&spec("top-k", |s| s.k = Some(3)), 8).unwrap();
    let x = [1.0, -2.0, 2.0, 0.5, -2.0, 2.0, 0.0, 1.0];
    let e = encode_one(c.as_ref(), &x, &mut rng_from_key(0), 0).unwrap();
    assert_eq!(e.value.indices, vec![1, 2, 4]);
    assert_eq!(e.value.values, vec![-2.0, 2.0, -2.0]);
    let x = [0.0; 8];
    let e = encode_one(c.as_ref(), &x, &mut rng_from_key(0), 0).unwrap();
    assert_eq!(e.value.indices, vec![0, 1, 2]);
}

/// Top-K allocates nothing once its buffers have grown.
#[test]
fn top_k_steady_state_does_not_allocate() {
    let d = 100_000;
    let c = build(&spec("top-k", |s| s.ratio = Some(0.01)), d).unwrap();
    let mut rng = rng_from_key(1);
    let xs: Vec<Vec<f64>> = (0..3)
        .map(|_| (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let caps = efkit_core::compress::buffer_capacities(c.as_ref(), &xs, 9, 1);
    for round in 3..caps.len() {
        assert_eq!(caps[round], caps[round - 1], "round {round}: a buffer grew");
    }
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

#[test]
fn catalogue_lists_every_name() {
    let unique: BTreeSet<&str> = CATALOGUE_NAMES.iter().copied().collect();
    assert_eq!(unique.len(), CATALOGUE_NAMES.len());
    for d in [1usize, 7, 40, 1000, 123_456] {
        let cat = catalogue(d);
        let names: Vec<&str> = cat.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, CATALOGUE_NAMES, "d = {d}");
        for (n, desc, class) in &cat {
            assert!(!desc.is_empty(), "{n}");
            match *class {
                CompressorClass::Contractive { alpha } => {
                    assert!(alpha > 0.0 && alpha <= 1.0, "{n}: {alpha}")
                }
                CompressorClass::Unbiased { omega } => {
                    assert!(omega >= 0.0 && omega.is_finite(), "{n}: {omega}")
                }
                CompressorClass::Absolute { delta2 } => assert!(delta2 >= 0.0, "{n}"),
            }
        }
    }
}

#[test]
fn parameters_are_validated() {
    let d = 10;
    let bad: Vec<(CompressorSpec, &str)> = vec![
        (spec("top-k", |s| s.k = Some(0)), "k"),
        (spec("top-k", |s| s.k = Some(11)), "k"),
        (spec("top-k", |_| {}), "k"),
        (
            spec("top-k", |s| {
                s.k = Some(1);
                s.ratio = Some(0.5)
            }),
            "k",
        ),
        (spec("top-k", |s| s.ratio = Some(0.0)), "ratio"),
        (spec("top-k", |s| s.ratio = Some(1.5)), "ratio"),
        (spec("top-k", |s| s.ratio = Some(f64::NAN)), "ratio"),
        (spec("top-k", |s| s.ratio = Some(-0.1)), "ratio"),
        (
            spec("top-k", |s| {
                s.k = Some(2);
                s.p = Some(0.5)
            }),
            "p",
        ),
        (spec("rand-k", |s| s.k = Some(0)), "k"),
        (spec("scaled-rand-k", |s| s.ratio = Some(2.0)), "ratio"),
        (
            spec("rand-k", |s| {
                s.k = Some(2);
                s.lambda = Some(1.0)
            }),
            "lambda",
        ),
        (spec("bernoulli", |_| {}), "p"),
        (spec("bernoulli", |s| s.p = Some(0.0)), "p"),
        (spec("bernoulli", |s| s.p = Some(1.01)), "p"),
        (spec("bernoulli", |s| s.p = Some(f64::NAN)), "p"),
        (
            spec("bernoulli", |s| {
                s.p = Some(0.5);
                s.shared_seed = Some(true)
            }),
            "shared_seed",
        ),
        (spec("threshold", |_| {}), "lambda"),
        (spec("threshold", |s| s.lambda = Some(-1.0)), "lambda"),
        (
            spec("threshold", |s| s.lambda = Some(f64::INFINITY)),
            "lambda",
        ),
        (spec("threshold", |s| s.lambda = Some(f64::NAN)), "lambda"),
        (spec("identity", |s| s.k = Some(3)), "k"),
        (
            spec("top-k-quant", |s| {
                s.k = Some(2);
                s.values = Some(ValueFormat::F64)
            }),
            "values",
        ),
        (spec("top-k-quant", |s| s.k = Some(11)), "k"),
    ];
    for (s, key) in bad {
        match build(&s, d) {
            Err(ParamError::Invalid { key: k, reason }) => {
                assert_eq!(k, key, "{s:?}: {reason}");
                assert!(!reason.is_empty());
            }
            Err(e) => panic!("{s:?}: expected Invalid({key}), got {e}"),
            Ok(c) => panic!("{s:?}: accepted as {}", c.describe()),
        }
    }
    assert!(matches!(
        build(&CompressorSpec::named("top-q"), d),
        Err(ParamError::Unknown { .. })
    ));
    assert!(matches!(
        build(
            &spec("top-k-quant", |s| {
                s.k = Some(2);
                s.quantizer = Some("qsgd".into())
            }),
            d
        ),
        Err(ParamError::Unknown { .. })
    ));
    assert!(build(&spec("top-k", |s| s.k = Some(1)), 0).is_err());
    // ratio rounding: K = max(1, floor(ratio d))
    assert_eq!(
        build(&spec("top-k", |s| s.ratio = Some(0.01)), d)
            .unwrap()
            .describe(),
        "top-k(k=1)"
    );
    assert_eq!(
        build(&spec("top-k", |s| s.ratio = Some(0.39)), d)
            .unwrap()
            .describe(),
        "top-k(k=3)"
    );
    assert_eq!(
        build(&spec("top-k", |s| s.ratio = Some(1.0)), d)
            .unwrap()
            .describe(),
        "top-k(k=10)"
    );
}

#[test]
fn specs_parse_from_toml_like_json() {
    let s: CompressorSpec =
        serde_json::from_str(r#"{"name":"top-k","ratio":0.01,"values":"f16"}"#).unwrap();
    assert_eq!(s.ratio, Some(0.01));
    assert_eq!(s.values, Some(ValueFormat::F16));
    assert!(serde_json::from_str::<CompressorSpec>(r#"{"name":"top-k","kk":3}"#).is_err());
}

// ---------------------------------------------------------------------------
// Hostile decoding
// ---------------------------------------------------------------------------

fn decode_checked(c: &dyn Compressor, bytes: &[u8], key: u64) {
    if let Ok(v) = decode_one(c, bytes, key) {
        assert_well_formed(&v, c.dim(), &c.describe());
    }
}

/// Every truncation and every single-bit flip of valid messages.
#[test]
fn truncated_and_bit_flipped_messages_never_panic() {
    for &d in &[7usize, 40] {
        for s in sample_specs(d) {
            let c = make(&s, d).unwrap();
            for (input, x) in inputs(d, 9).into_iter().take(5) {
                let Ok(e) = encode_one(c.as_ref(), &x, &mut rng_from_key(4), 21) else {
                    panic!("{} {input}", c.describe())
                };
                let b = &e.bytes;
                // messages are self-delimiting: the last byte holds at least
                // one bit the decoder reads, so no strict prefix decodes
                for len in 0..b.len() {
                    assert!(
                        decode_one(c.as_ref(), &b[..len], 21).is_err(),
                        "{} ({input}): a {len}-byte prefix of a {}-byte message decodes",
                        c.describe(),
                        b.len()
                    );
                }
                let mut m = b.clone();
                for bit in 0..8 * m.len() {
                    m[bit / 8] ^= 1 << (bit % 8);
                    decode_checked(c.as_ref(), &m, 21);
                    m[bit / 8] ^= 1 << (bit % 8);
                }
                // extra trailing byte is an error
                let mut t = b.clone();
                t.push(0);
                assert!(
                    decode_one(c.as_ref(), &t, 21).is_err(),
                    "{}: trailing byte accepted",
                    c.describe()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes through the fuzzing entry point (same code as fuzz/).
    #[test]
    fn fuzz_entry_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = fuzz_decode(&data);
    }

    /// Random bytes for every sample spec.
    #[test]
    fn random_bytes_never_panic(
        which in 0usize..64,
        d in prop_oneof![Just(1usize), Just(7), Just(40), 1usize..200],
        key in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let specs = sample_specs(d);
        let s = &specs[which % specs.len()];
        let c = make(s, d).unwrap();
        decode_checked(c.as_ref(), &data, key);
    }

    /// Arbitrary finite inputs: round trip and (deterministic) class inequality.
    #[test]
    fn arbitrary_inputs_roundtrip(
        which in 0usize..64,
        x in proptest::collection::vec(
            prop_oneof![
                -10.0f64..10.0,
                Just(0.0),
                Just(-0.0),
                (-1e6f64..1e6).prop_map(|v| v * 1e-35),
                (-1.0f64..1.0).prop_map(|v| v * 1e20),
            ],
            1..60,
        ),
        seed in any::<u64>(),
    ) {
        let d = x.len();
        let specs = sample_specs(d);
        let s = &specs[which % specs.len()];
        let mut h = Harness::new(s, d);
        let mut rng = rng_from_key(seed);
        match h.step(&x, &mut rng, seed, "proptest") {
            Ok(()) => {
                if h.c.is_deterministic() {
                    check_deterministic_class(&h, &x, "proptest");
                }
            }
            Err(CompressError::Shape(_)) if max_abs(&x) * 1e3 > format_of(s).2 => {}
            Err(e) => panic!("{}: {e}", h.what("proptest")),
        }
    }
}

/// The alpha error feedback may use: the contractive constant, 1 - omega for
/// an unbiased compressor with omega < 1 (E||C(x) - x||^2 <= omega ||x||^2),
/// none for omega >= 1, where only C/(1 + omega) contracts.
#[test]
fn alpha_as_error_feedback_applies_the_operator() {
    assert_eq!(
        CompressorClass::Contractive { alpha: 0.3 }.alpha(),
        Some(0.3)
    );
    assert_eq!(
        CompressorClass::Unbiased { omega: 0.125 }.alpha(),
        Some(0.875)
    );
    assert_eq!(CompressorClass::Unbiased { omega: 0.0 }.alpha(), Some(1.0));
    assert_eq!(CompressorClass::Unbiased { omega: 1.0 }.alpha(), None);
    assert_eq!(CompressorClass::Unbiased { omega: 9.0 }.alpha(), None);
    assert_eq!(CompressorClass::Absolute { delta2: 1.0 }.alpha(), None);
    // `contractive` only applies to unbiased compressors; `false` is the plain one
    let d = 16;
    let err = build(
        &spec("top-k", |s| {
            s.k = Some(2);
            s.contractive = Some(true)
        }),
        d,
    )
    .unwrap_err();
    assert!(err.to_string().contains("contractive"), "{err}");
    let plain = build(
        &spec("qsgd", |s| {
            s.levels = Some(2);
            s.contractive = Some(false)
        }),
        d,
    )
    .unwrap();
    assert!(matches!(plain.class(), CompressorClass::Unbiased { .. }));
}

/// Scaled Rand-K divided by 1 + omega = d/K is plain Rand-K: the same
/// coordinates (the same random draws), the values (d/K) x_j (K/d) = x_j up
/// to rounding, and the same bits.
#[test]
fn shrunk_scaled_rand_k_is_rand_k() {
    let d = 50;
    let x: Vec<f64> = (0..d).map(|j| ((j * 7919) % 23) as f64 - 11.3).collect();
    let shrunk = build(
        &spec("scaled-rand-k", |s| {
            s.k = Some(6);
            s.values = Some(ValueFormat::F64);
            s.contractive = Some(true)
        }),
        d,
    )
    .unwrap();
    let plain = build(
        &spec("rand-k", |s| {
            s.k = Some(6);
            s.values = Some(ValueFormat::F64)
        }),
        d,
    )
    .unwrap();
    for seed in 0..20 {
        let a = encode_one(shrunk.as_ref(), &x, &mut rng_from_key(seed), 0).unwrap();
        let b = encode_one(plain.as_ref(), &x, &mut rng_from_key(seed), 0).unwrap();
        assert_eq!(a.value.indices, b.value.indices);
        for (u, v) in a.value.values.iter().zip(&b.value.values) {
            assert!((u - v).abs() <= 1e-14 * v.abs(), "{u} vs {v}");
        }
        assert_eq!(a.wire_bits, b.wire_bits);
        assert_eq!(a.paper_bits, b.paper_bits);
        // the receiver decodes the sender's value bit for bit
        let dec = decode_one(shrunk.as_ref(), &a.bytes, 0).unwrap();
        assert_eq!(dec, a.value);
    }
}
