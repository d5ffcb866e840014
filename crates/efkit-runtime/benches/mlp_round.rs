//! One EF21-SGDM round of the MLP on MNIST against candle's forward/backward.
//!
//! Setting (issue "Momentum fixes error feedback", speed): MLP 784-256-10
//! (d = 203,530), MNIST training set split among n = 10 workers, minibatch
//! B = 64 per worker (`EFKIT_BENCH_BATCH` to change it; the reproduction
//! uses 128), EF21-SGDM (eta = 0.1) with per-layer Top-1% and f32 values. Measured in one run, interleaved, for T = 1 and 2 threads:
//!
//! * `round`: `cluster.step()`: the 10 workers' minibatch gradients
//!   (the broadcast model converted to f32 once for the workers' shared
//!   parameter tensors, batch gather, candle forward/backward), momentum
//!   fused with the per-layer Top-K selection of v_i - g_i, encoding, server
//!   decoding, aggregation and step;
//! * `inside the round`: candle's forward/backward timed inside those
//!   rounds (`efkit_nn::forward_backward_time`, summed over threads), as a
//!   share of threads x wall time: the literal "share of a round spent
//!   outside candle's forward/backward", which also charges to candle what
//!   the round's other passes cost it in cache;
//! * `consecutive`: the same rounds run back to back after the interleaved
//!   ones, as a training run does (the interleaved measurements between
//!   rounds leave other data in the caches), with candle timed inside them
//!   as above;
//! * `oracle`: only the 10 calls `oracle.stochastic_grad` at one x, on
//!   separate oracles (each converting x itself), i.e. roughly the round
//!   minus the method;
//! * `candle`: only candle's forward pass, loss and backward pass for the 10
//!   batches, on parameter variables and batch tensors built beforehand.
//!
//! * `floor f64` / `floor f32`: only the one memory pass EF21-SGDM cannot
//!   avoid, for the 10 workers: v = (1 - eta) v + eta grad, with t = v - g
//!   computed and screened (its largest |t_j| kept) but not stored, as the
//!   fused pass does (the gradient in f32, the state v, g in f64 as efkit
//!   keeps it, or in f32 as a hypothetical f32 state would). No refill, no
//!   Top-K, no server: a lower bound on the method's time, whatever the
//!   implementation. (Until the 2026-12-06 record this floor also stored
//!   t, which the fused pass does not, so it was too high. Since the
//!   2026-12-06 prefetch record it prefetches ahead as the fused pass does;
//!   before, a pass that prefetched could beat it.) `floor f64 without
//!   the prefetch`: the same pass relying on the hardware prefetchers only,
//!   for the prefetch's gain in the same run: the two f64 floors take turns
//!   by repetition (each right after candle's passes, half the repetitions
//!   each).
//!
//! `1 - candle / round` is the share of a round spent outside candle's
//! forward/backward; `floor / (candle + floor)` is the least that share can
//! be with that state precision. Minimum and median over the repetitions are printed
//! (interference on a shared machine only adds time). Results:
//! `bench/runs/2026-12-05-mlp.md`, `2026-12-05-mlp-inplace.md`,
//! `2026-12-05-mlp-shared-model.md`, `2026-12-05-mlp-floor.md`,
//! `2026-12-05-mlp-fused.md`, `2026-12-05-mlp-zen2.md`,
//! `2026-12-05-mlp-server-pass.md`, `2026-12-05-mlp-emerald.md`,
//! `2026-12-06-mlp-floor.md`, `2026-12-06-mlp-prefetch.md`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use efkit_core::oracle::Oracle;
use efkit_core::prefetch::prefetch_ahead;
use efkit_core::rng::{stream, Purpose};
use efkit_nn::{forward_backward_time, mnist_dense, Network, NetworkOracle, Precision};
use efkit_problems::idx::MnistSplit;
use efkit_problems::split::SplitKind;
use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    // as the efkit binary does
    efkit_nn::keep_freed_memory();
    let reps: usize = std::env::var("EFKIT_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    // B per worker (the reproduction uses 128)
    let batch_size: usize = std::env::var("EFKIT_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let spec = Network::mlp(&[784, 256, 10]).unwrap();
    let train = mnist_dense(MnistSplit::Train).expect("MNIST");
    let shards = train.shards(10, SplitKind::Contiguous, 1).unwrap();
    let mut oracles: Vec<NetworkOracle> = shards
        .iter()
        .map(|s| NetworkOracle::new(spec.clone(), s.clone(), Precision::F32).unwrap())
        .collect();
    // candle-only inputs: one batch per worker, parameters as variables
    let dev = Device::Cpu;
    let x0 = spec.init(1);
    let params = spec.params(&x0, Precision::F32).unwrap();
    let batches: Vec<(Tensor, Tensor)> = shards
        .iter()
        .map(|s| {
            let b = s.head(batch_size);
            (
                Tensor::from_vec(b.pixel_values(0, batch_size), (batch_size, 784), &dev).unwrap(),
                Tensor::from_slice(&b.labels, batch_size, &dev).unwrap(),
            )
        })
        .collect();
    println!("mlp_round: MLP 784-256-10 (d = {}), n = 10, B = {batch_size}, EF21-SGDM per-layer Top-1%, {reps} interleaved repetitions", spec.dim());
    // `EFKIT_BENCH_THREADS=1` measures one thread count only (for profiling)
    let thread_counts: Vec<usize> = match std::env::var("EFKIT_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    for threads in thread_counts {
        let cfg = parse_with_hints(&format!(
            "seed = 1\nthreads = {threads}\n[problem]\nkind = \"mnist-mlp\"\nworkers = 10\nhidden = [256]\n\
             [method]\nname = \"ef21-sgdm\"\neta = 0.1\nbatch = {batch_size}\ninit_batch = {batch_size}\n\
             [compressor]\nname = \"top-k\"\nratio = 0.01\nper_layer = true\n\
             [step]\nrule = \"absolute\"\nvalue = 0.1\n[init]\nkind = \"layers\"\n"
        ))
        .unwrap();
        let mut c = prepare(&cfg).unwrap().cluster;
        c.step().unwrap(); // round 0: dense initialization
        c.step().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let d = spec.dim();
        let mut grads = vec![vec![0.0; d]; 10];
        let (mut t_round, mut t_oracle, mut t_candle) = (Vec::new(), Vec::new(), Vec::new());
        let (mut t_floor64, mut t_floor32) = (Vec::new(), Vec::new());
        let mut t_floor64_plain = Vec::new();
        let mut in_round_outside = Vec::new();
        // per worker: the f32 gradient and the state v, g, t (separate
        // buffers per worker, as in the cluster: 10 x 3 x 1.6 MB in f64)
        let grad32: Vec<Vec<f32>> = (0..10).map(|i| vec![1e-3 * i as f32; d]).collect();
        let mut state64: Vec<[Vec<f64>; 3]> = (0..10)
            .map(|_| [vec![0.5; d], vec![0.25; d], vec![0.0; 1]])
            .collect();
        let mut state32: Vec<[Vec<f32>; 3]> = (0..10)
            .map(|_| [vec![0.5; d], vec![0.25; d], vec![0.0; 1]])
            .collect();
        let mut drawn = vec![Vec::new(); 10];
        for r in 0..reps {
            let fb = forward_backward_time();
            let t = Instant::now();
            c.step().unwrap();
            let wall = t.elapsed().as_secs_f64();
            t_round.push(wall);
            // candle's passes timed inside this round, summed over threads
            let fb = (forward_backward_time() - fb).as_secs_f64();
            in_round_outside.push(1.0 - fb / (threads as f64 * wall));
            let x = c.server.state.x.clone();
            let t = Instant::now();
            pool.install(|| {
                use rayon::prelude::*;
                oracles
                    .par_iter_mut()
                    .zip(grads.par_iter_mut())
                    .zip(drawn.par_iter_mut())
                    .enumerate()
                    .for_each(|(i, ((o, g), dr))| {
                        let mut rng = stream(7, Purpose::Sample, i as u64, r as u64);
                        o.stochastic_grad(&x, batch_size, &mut rng, dr, g);
                    });
            });
            t_oracle.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            pool.install(|| {
                use rayon::prelude::*;
                batches.par_iter().for_each(|(input, labels)| {
                    let (_, store) = spec.forward_backward(&params, input, labels, true).unwrap();
                    std::hint::black_box(store);
                });
            });
            t_candle.push(t.elapsed().as_secs_f64());
            let eta = 0.1;
            // the f64 floor with the prefetch in even repetitions, without
            // it in odd ones: each right after candle's passes, so both
            // find the state equally cold
            let prefetch = r % 2 == 0;
            let t = Instant::now();
            pool.install(|| {
                use rayon::prelude::*;
                state64
                    .par_iter_mut()
                    .zip(&grad32)
                    .for_each(|([v, g, top], gr)| {
                        top[0] = if prefetch {
                            floor_pass::<_, true>(v, g, gr, eta)
                        } else {
                            floor_pass::<_, false>(v, g, gr, eta)
                        };
                    });
            });
            if prefetch {
                t_floor64.push(t.elapsed().as_secs_f64());
            } else {
                t_floor64_plain.push(t.elapsed().as_secs_f64());
            }
            let eta = eta as f32;
            let t = Instant::now();
            pool.install(|| {
                use rayon::prelude::*;
                state32
                    .par_iter_mut()
                    .zip(&grad32)
                    .for_each(|([v, g, top], gr)| {
                        top[0] = floor_pass::<_, true>(v, g, gr, eta);
                    });
            });
            t_floor32.push(t.elapsed().as_secs_f64());
        }
        std::hint::black_box((&state64, &state32));
        // the rounds back to back, as a run does
        let (mut t_consecutive, mut consecutive_outside) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let fb = forward_backward_time();
            let t = Instant::now();
            c.step().unwrap();
            let wall = t.elapsed().as_secs_f64();
            let fb = (forward_backward_time() - fb).as_secs_f64();
            t_consecutive.push(wall);
            consecutive_outside.push(1.0 - fb / (threads as f64 * wall));
        }
        let (rmin, rmed) = stats(&mut t_round);
        let (omin, omed) = stats(&mut t_oracle);
        let (cmin, cmed) = stats(&mut t_candle);
        let (f64min, f64med) = stats(&mut t_floor64);
        let (f32min, f32med) = stats(&mut t_floor32);
        let (p64min, p64med) = stats(&mut t_floor64_plain);
        println!("threads = {threads}");
        println!(
            "  round : min {:8.2} ms  median {:8.2} ms  ({:.1} rounds/s at the median)",
            rmin * 1e3,
            rmed * 1e3,
            1.0 / rmed
        );
        println!(
            "  oracle: min {:8.2} ms  median {:8.2} ms",
            omin * 1e3,
            omed * 1e3
        );
        println!(
            "  candle: min {:8.2} ms  median {:8.2} ms",
            cmin * 1e3,
            cmed * 1e3
        );
        println!(
            "  outside candle forward/backward: {:.1}% (min), {:.1}% (median); outside the oracle calls: {:.1}% (min)",
            100.0 * (1.0 - cmin / rmin),
            100.0 * (1.0 - cmed / rmed),
            100.0 * (1.0 - omin / rmin)
        );
        let (imin, imed) = stats(&mut in_round_outside);
        println!(
            "  outside candle forward/backward timed inside the round (share of threads x wall): {:.1}% (min), {:.1}% (median)",
            100.0 * imin,
            100.0 * imed
        );
        let (kmin, kmed) = stats(&mut t_consecutive);
        let (komin, komed) = stats(&mut consecutive_outside);
        println!(
            "  consecutive rounds: min {:8.2} ms  median {:8.2} ms  ({:.1} rounds/s at the median); outside candle timed inside them: {:.1}% (min), {:.1}% (median)",
            kmin * 1e3,
            kmed * 1e3,
            1.0 / kmed,
            100.0 * komin,
            100.0 * komed
        );
        println!(
            "  floor f64 state: min {:8.2} ms  median {:8.2} ms  -> outside candle at least {:.1}% (min)",
            f64min * 1e3,
            f64med * 1e3,
            100.0 * f64min / (cmin + f64min)
        );
        println!(
            "  floor f64 state without the prefetch: min {:8.2} ms  median {:8.2} ms  ({:.2}x the floor with it, medians)",
            p64min * 1e3,
            p64med * 1e3,
            p64med / f64med
        );
        println!(
            "  floor f32 state: min {:8.2} ms  median {:8.2} ms  -> outside candle at least {:.1}% (min)",
            f32min * 1e3,
            f32med * 1e3,
            100.0 * f32min / (cmin + f32min)
        );
    }
}

/// The floor's pass over one worker (see the module docs):
/// v = (1 - eta) v + eta grad, and t = v - g screened (its largest |t_j|
/// returned), not stored; with `PREFETCH`, the fused pass's prefetch.
fn floor_pass<F, const PREFETCH: bool>(v: &mut [F], g: &[F], gr: &[f32], eta: F) -> F
where
    F: Copy
        + From<f32>
        + PartialOrd
        + std::ops::Add<Output = F>
        + std::ops::Sub<Output = F>
        + std::ops::Mul<Output = F>
        + std::ops::Neg<Output = F>,
{
    let zero = F::from(0.0);
    let one = F::from(1.0);
    let mut m = [zero; 8];
    for j in (0..v.len() - v.len() % 8).step_by(8) {
        if PREFETCH {
            prefetch_ahead(v, j);
            prefetch_ahead(g, j);
            prefetch_ahead(gr, j);
        }
        for i in 0..8 {
            v[j + i] = (one - eta) * v[j + i] + eta * F::from(gr[j + i]);
            let t = v[j + i] - g[j + i];
            let a = if t < zero { -t } else { t };
            m[i] = if a > m[i] { a } else { m[i] };
        }
    }
    m.iter().fold(zero, |a, &b| if b > a { b } else { a })
}
