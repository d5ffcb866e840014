//! One full EF21 round against the plain gradient computation of that round.
//!
//! Setting (issue "EF21 end to end"): w8a (N = 49,749, d = 300), n = 20
//! contiguous shards, logistic regression with the nonconvex regularizer,
//! Top-1, EF21 with the theory step, x^0 ~ N(0, I). Measured in one run, for
//! T = 1 and 2 threads:
//!
//! * `ef21_round/threads=T`: `cluster.step()` (downlink copy, 20 local
//!   gradients, Top-1 of grad - g_i, encode/decode, server aggregation and
//!   step) on a pool of T threads;
//! * `plain_grad/threads=T`: only the 20 calls `oracle.grad(x, g_i)` at one x
//!   (what a round computes: the worker needs no loss), sequentially (T = 1)
//!   or on a rayon pool of T threads;
//! * `plain_loss_grad/threads=T`: the same with `oracle.loss_grad` (gradient
//!   and loss, one more exp/log per sample);
//!
//! so `ef21_round / plain_grad` at equal T is the cost of everything EF21 adds
//! around the gradients. After the criterion groups, `paired` alternates one
//! round and one plain computation of each kind 400 times and prints the
//! minimum and median of each (robust on a shared machine: interference only
//! adds time). Results: `bench/runs/2026-12-04-round.md`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use efkit_core::oracle::Oracle;
use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;
use efkit_runtime::Cluster;
use rayon::prelude::*;

fn cluster(threads: usize) -> Cluster {
    let cfg = parse_with_hints(&format!(
        "seed = 1\nthreads = {threads}\n[problem]\nkind = \"logistic\"\ndataset = \"w8a\"\nworkers = 20\n\
         [method]\nname = \"ef21\"\n[compressor]\nname = \"top-k\"\nk = 1\n[step]\nrule = \"theory\"\n[init]\nkind = \"gaussian\"\n"
    ))
    .expect("bench config");
    let mut c = prepare(&cfg).expect("bench setup").cluster;
    // round 0 is the dense initialization; measure regular rounds
    c.step().expect("round 0");
    c
}

/// The 20 gradients (`with_loss`: and losses) at `x`, sequentially or on `pool`.
fn plain(
    oracles: &mut [Box<dyn Oracle>],
    grads: &mut [Vec<f64>],
    x: &[f64],
    pool: Option<&rayon::ThreadPool>,
    with_loss: bool,
) -> f64 {
    let one = |(o, g): (&mut Box<dyn Oracle>, &mut Vec<f64>)| {
        if with_loss {
            o.loss_grad(x, g)
        } else {
            o.grad(x, g);
            g[0]
        }
    };
    match pool {
        None => oracles.iter_mut().zip(grads.iter_mut()).map(one).sum(),
        Some(p) => p.install(|| {
            oracles
                .par_iter_mut()
                .zip(grads.par_iter_mut())
                .map(one)
                .sum()
        }),
    }
}

fn bench_round(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("w8a_n20_top1");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for threads in [1usize, 2] {
        let mut c = cluster(threads);
        group.bench_function(format!("ef21_round/threads={threads}"), |b| {
            b.iter(|| c.step().expect("round"))
        });
        let x = c.server.state.x.clone();
        let mut grads = vec![vec![0.0; x.len()]; c.n()];
        let pool = (threads > 1).then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
        });
        for (name, with_loss) in [("plain_grad", false), ("plain_loss_grad", true)] {
            group.bench_function(format!("{name}/threads={threads}"), |b| {
                b.iter(|| plain(&mut c.oracles, &mut grads, &x, pool.as_ref(), with_loss))
            });
        }
    }
    group.finish();
}

/// Interleaved measurement of the three quantities; prints min and median.
fn paired(threads: usize, pairs: usize) {
    let mut c = cluster(threads);
    let d = c.server.state.x.len();
    let mut grads = vec![vec![0.0; d]; c.n()];
    let pool = (threads > 1).then(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    });
    let mut times = [
        Vec::with_capacity(pairs),
        Vec::with_capacity(pairs),
        Vec::with_capacity(pairs),
    ];
    for _ in 0..pairs {
        let x = c.server.state.x.clone();
        let t = Instant::now();
        c.step().expect("round");
        times[0].push(t.elapsed().as_secs_f64());
        for (k, with_loss) in [(1, false), (2, true)] {
            let t = Instant::now();
            std::hint::black_box(plain(
                &mut c.oracles,
                &mut grads,
                &x,
                pool.as_ref(),
                with_loss,
            ));
            times[k].push(t.elapsed().as_secs_f64());
        }
    }
    let [r, g, l] = times.map(|mut v| {
        v.sort_by(f64::total_cmp);
        (v[0] * 1e3, v[v.len() / 2] * 1e3)
    });
    println!(
        "paired threads={threads} ({pairs} x): ef21_round min {:.3} ms, median {:.3} ms | plain_grad min {:.3} ms, median {:.3} ms | \
         plain_loss_grad min {:.3} ms, median {:.3} ms | round/plain_grad min {:.3}, median {:.3} | round/plain_loss_grad min {:.3}, median {:.3}",
        r.0,
        r.1,
        g.0,
        g.1,
        l.0,
        l.1,
        r.0 / g.0,
        r.1 / g.1,
        r.0 / l.0,
        r.1 / l.1
    );
}

criterion_group!(benches, bench_round);

fn main() {
    benches();
    // skipped under `cargo test --benches` / `cargo bench -- --list`
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        for threads in [1, 2] {
            paired(threads, 400);
        }
    }
    Criterion::default().configure_from_args().final_summary();
}
