//! One round of every Safe-EF-family preset against the uncompressed
//! baseline's round (`parallel-sgd`), measured in the same run.
//!
//! Setting: the Neyman-Pearson example of `examples/safe-ef-np-a9a.toml`
//! (a9a, N = 32,561, d = 123, hinge loss, n = 16 shuffled shards, radius
//! 10), exact subgradients (and, as a second case, minibatches of 32 per
//! worker), Top-1% uplinks for the compressed presets, the theory step
//! times 64, one thread. A round evaluates every worker's constraint,
//! then the objective or constraint subgradient, compresses it, and the
//! server decodes, sums and steps (see `efkit_runtime::safe`).
//!
//! * criterion group `a9a_n16_safe`: `cluster.step()` of each preset;
//! * `paired`: 300 rounds of a preset alternated with 300 of
//!   `parallel-sgd` with the same batch, printing both medians and the
//!   share of each round spent outside the oracle calls (timed by a
//!   wrapper around each worker's oracle): the rounds' costs depend on the
//!   iterate, which differs between methods, while the share outside the
//!   oracles is what the method adds (interference on a shared machine
//!   only adds time, so the alternation keeps the comparison honest).
//!
//! Results: `bench/runs/2026-12-06-safe.md`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::median;
use criterion::{criterion_group, Criterion};
use efkit_core::rng::Rng;
use efkit_core::safe::SAFE_METHOD_NAMES;
use efkit_problems::constrained::{ConstrainedOracle, SubgradientBounds};
use efkit_runtime::safe::{prepare_safe, SafeCluster, SafeConfig};

/// The config of `method` (exact subgradients, or minibatches of `batch`).
fn config(method: &str, batch: Option<usize>) -> String {
    let compressor = if method == "parallel-sgd" {
        "name = \"identity\"".to_string()
    } else {
        "name = \"top-k\"\nratio = 0.01".to_string()
    };
    // the primal-dual method has no threshold
    let threshold = if method == "primal-dual" {
        ""
    } else {
        "threshold_multiplier = 0.0\n"
    };
    let batch = batch.map(|b| format!("batch = {b}\n")).unwrap_or_default();
    format!(
        "seed = 1\nthreads = 1\n[problem]\nkind = \"neyman-pearson\"\ndataset = \"a9a\"\nworkers = 16\n\
         loss = \"hinge\"\ntau = 0.5\nobjective_class = \"negative\"\nradius = 10.0\nsplit = \"shuffled\"\n\
         [method]\nname = \"{method}\"\nstep_multiplier = 64.0\n{threshold}{batch}\
         [compressor]\n{compressor}\n[theory]\nr = 7.5558188025237\nrounds = 30000\n\
         [stop]\nmax_rounds = 3000\n"
    )
}

fn cluster(text: &str) -> SafeCluster {
    let cfg = SafeConfig::from_toml(text).expect("bench config");
    let mut c = prepare_safe(&cfg).expect("bench setup").cluster;
    c.step().expect("round 0");
    c
}

fn bench_safe(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("a9a_n16_safe");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for batch in [None, Some(32)] {
        for &name in SAFE_METHOD_NAMES {
            let mut c = cluster(&config(name, batch));
            let id = match batch {
                None => name.to_string(),
                Some(b) => format!("{name}/batch{b}"),
            };
            group.bench_function(id, |b| b.iter(|| c.step().expect("round")));
        }
    }
    group.finish();
}

/// An oracle that adds the time spent in it to a shared counter.
struct TimedOracle {
    inner: Box<dyn ConstrainedOracle>,
    nanos: Arc<AtomicU64>,
}

impl TimedOracle {
    fn time<R>(nanos: &AtomicU64, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

impl ConstrainedOracle for TimedOracle {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn num_samples(&self) -> Option<usize> {
        self.inner.num_samples()
    }
    fn objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        Self::time(&self.nanos, || self.inner.objective(x, grad))
    }
    fn constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        Self::time(&self.nanos, || self.inner.constraint(x, grad))
    }
    fn draw_batch(&mut self, x: &[f64], batch: usize, rng: &mut Rng) {
        Self::time(&self.nanos, || self.inner.draw_batch(x, batch, rng))
    }
    fn batch_objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        Self::time(&self.nanos, || self.inner.batch_objective(x, grad))
    }
    fn batch_constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        Self::time(&self.nanos, || self.inner.batch_constraint(x, grad))
    }
    fn bounds(&self) -> SubgradientBounds {
        self.inner.bounds()
    }
}

/// A cluster whose oracles report their time to the returned counter.
fn timed_cluster(text: &str) -> (SafeCluster, Arc<AtomicU64>) {
    let mut c = cluster(text);
    let nanos = Arc::new(AtomicU64::new(0));
    c.oracles = std::mem::take(&mut c.oracles)
        .into_iter()
        .map(|inner| {
            Box::new(TimedOracle {
                inner,
                nanos: nanos.clone(),
            }) as Box<dyn ConstrainedOracle>
        })
        .collect();
    (c, nanos)
}

/// (round, oracle time) of one round, in seconds.
fn timed_step(c: &mut SafeCluster, nanos: &AtomicU64) -> (f64, f64) {
    let before = nanos.load(Ordering::Relaxed);
    let t = Instant::now();
    c.step().expect("round");
    let wall = t.elapsed().as_secs_f64();
    (wall, (nanos.load(Ordering::Relaxed) - before) as f64 * 1e-9)
}

fn paired(pairs: usize) {
    // A round's cost depends on the iterate (a switching round computes the
    // objective's or the constraint's subgradient; the hinge loss's
    // subgradient sums only the rows inside the margin), and methods follow
    // different trajectories: so besides the round times, the share of each
    // round spent outside the oracle calls (compression, coding, the
    // server) is printed, the part the method itself adds.
    println!("paired, one thread, {pairs} alternations per method (medians):");
    println!("| method | batch | round (ms) | outside the oracles | parallel-sgd round (ms) | parallel-sgd outside the oracles |");
    println!("|---|---|---|---|---|---|");
    for batch in [None, Some(32)] {
        for &name in SAFE_METHOD_NAMES.iter().filter(|&&n| n != "parallel-sgd") {
            let (mut m, mn) = timed_cluster(&config(name, batch));
            let (mut b, bn) = timed_cluster(&config("parallel-sgd", batch));
            let (mut tm, mut tb) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
            for _ in 0..pairs {
                tm.push(timed_step(&mut m, &mn));
                tb.push(timed_step(&mut b, &bn));
            }
            let summary = |v: &[(f64, f64)]| {
                let round = median(v.iter().map(|t| t.0).collect());
                let outside = median(v.iter().map(|t| 1.0 - t.1 / t.0).collect());
                (round * 1e3, outside * 100.0)
            };
            let ((mr, mo), (br, bo)) = (summary(&tm), summary(&tb));
            let batch = batch.map_or("exact".to_string(), |b| b.to_string());
            println!("| {name} | {batch} | {mr:.3} | {mo:.1}% | {br:.3} | {bo:.1}% |");
        }
    }
}

criterion_group!(benches, bench_safe);

fn main() {
    common::criterion_then_paired(benches, || paired(300));
}
