//! Compressor throughput: compress+encode and decode at d = 1e5, 1e6, 1e7 for
//! every compressor of the catalogue: Top-K (K = d/100), Rand-K (K = d/100),
//! scaled sign, QSGD (s = 4), natural dithering (s = 4, l2 norm), identity,
//! scaled Rand-K (K = d/100), Bernoulli (p = 0.5), natural compression,
//! threshold (lambda = 3), Top-K + natural (K = d/100) and rank-1 (near-square
//! matrix view), each beside a plain `copy_from_slice` of the same f64 vector
//! measured in the same run (the baseline the ratios in
//! bench/runs/*-compressors.md refer to).
//!
//! Run: `cargo bench -p efkit-core --bench compressors` (add `-- top-k` etc. to
//! filter). Buffers (scratch, output, writer) are reused across iterations, as
//! in a training loop.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use efkit_core::bits::{BitReader, BitWriter};
use efkit_core::compress::{
    build, example_spec, CompressCtx, CompressedVec, CompressorSpec, DecodeCtx, Scratch,
};
use efkit_core::rng::rng_from_key;
use rand::Rng as _;

fn specs(d: usize) -> Vec<(&'static str, CompressorSpec)> {
    let k = (d / 100).max(1);
    let mut topk = CompressorSpec::named("top-k");
    topk.k = Some(k);
    let mut randk = CompressorSpec::named("rand-k");
    randk.k = Some(k);
    let sign = CompressorSpec::named("scaled-sign");
    let mut qsgd = CompressorSpec::named("qsgd");
    qsgd.levels = Some(4);
    let mut natural_dithering = CompressorSpec::named("natural-dithering");
    natural_dithering.levels = Some(4);
    let identity = CompressorSpec::named("identity");
    let mut scaled_randk = CompressorSpec::named("scaled-rand-k");
    scaled_randk.k = Some(k);
    // sent half of the time: the mean over iterations of a dense message and a 1-bit one
    let mut bernoulli = CompressorSpec::named("bernoulli");
    bernoulli.p = Some(0.5);
    let natural = CompressorSpec::named("natural");
    // |x_j| >= 3 keeps a fraction of a percent of this data
    let mut threshold = CompressorSpec::named("threshold");
    threshold.lambda = Some(3.0);
    let mut topk_quant = CompressorSpec::named("top-k-quant");
    topk_quant.k = Some(k);
    topk_quant.quantizer = Some("natural".into());
    let rank = example_spec("rank-r", d);
    vec![
        ("top-k", topk),
        ("rand-k", randk),
        ("scaled-sign", sign),
        ("qsgd", qsgd),
        ("natural-dithering", natural_dithering),
        ("identity", identity),
        ("scaled-rand-k", scaled_randk),
        ("bernoulli", bernoulli),
        ("natural", natural),
        ("threshold", threshold),
        ("top-k-quant", topk_quant),
        ("rank-r", rank),
    ]
}

fn bench(c: &mut Criterion) {
    for &d in &[100_000usize, 1_000_000, 10_000_000] {
        let mut rng = rng_from_key(42);
        // Gaussian-like data (sum of uniforms): no ties, realistic magnitudes.
        let x: Vec<f64> = (0..d)
            .map(|_| (0..4).map(|_| rng.gen_range(-1.0..1.0)).sum::<f64>())
            .collect();
        let mut g = c.benchmark_group(format!("d={d}"));
        g.throughput(Throughput::Bytes(8 * d as u64));
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(if d >= 10_000_000 { 4 } else { 2 }));
        let mut dst = vec![0.0f64; d];
        g.bench_function("copy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&x));
                black_box(&dst);
            })
        });
        for (label, spec) in specs(d) {
            let Ok(comp) = build(&spec, d) else {
                eprintln!("skipping {label}: not available");
                continue;
            };
            let mut scratch = Scratch::default();
            let mut out = CompressedVec::default();
            let mut w = BitWriter::new();
            let mut crng = rng_from_key(7);
            g.bench_function(BenchmarkId::new("compress+encode", label), |b| {
                b.iter(|| {
                    w.clear();
                    let mut ctx = CompressCtx {
                        rng: &mut crng,
                        shared_key: 1,
                        scratch: &mut scratch,
                    };
                    comp.compress(black_box(&x), &mut ctx, &mut out, &mut w)
                        .unwrap();
                    black_box(w.finish().len());
                })
            });
            // the message to decode, made here: a filtered run may skip the
            // compress benchmark above
            w.clear();
            let mut ctx = CompressCtx {
                rng: &mut crng,
                shared_key: 1,
                scratch: &mut scratch,
            };
            comp.compress(&x, &mut ctx, &mut out, &mut w).unwrap();
            let bytes = w.finish().to_vec();
            let mut dec = CompressedVec::default();
            g.bench_function(BenchmarkId::new("decode", label), |b| {
                b.iter(|| {
                    let mut r = BitReader::new(black_box(&bytes));
                    comp.decode(&mut r, &DecodeCtx { shared_key: 1 }, &mut dec)
                        .unwrap();
                    black_box(dec.values.len());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
