//! The local-gradient kernels of `efkit_problems::oracles` on w8a, n = 20
//! contiguous shards, logistic regression with the nonconvex regularizer (the
//! setting of `benches/round.rs`), all 20 shards sequentially on one thread:
//!
//! * `grad/unit`: `oracle.grad` with the sliced ELLPACK kernels on the
//!   sparsity pattern (w8a's stored values are all 1), the default;
//! * `grad/general`: the same with the general kernels (value loads and
//!   multiplications; `with_unit_values_kernel(false)`);
//! * `loss_grad/unit`: `oracle.loss_grad` (also the loss: one log1p per row);
//! * `csr_loss_grad/unit` and `/general`: `oracle.indexed_grad` over all rows
//!   in order, which runs the one-pass CSR loop (dot product and scatter per
//!   row) and gives the same bits as `loss_grad`.
//!
//! Every variant's gradients are checked to be bit-for-bit equal first. After
//! the criterion group, `paired` runs the variants in turn 400 times (each
//! timed call preceded by an untimed one of the same variant, so that its data
//! is in cache) and prints the minimum and median of each (interference on a
//! shared machine only adds time). Results:
//! `bench/runs/2026-12-05-round-fused.md`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use efkit_core::oracle::Oracle;
use efkit_problems::problem::{Problem, ProblemConfig, ProblemKind};
use efkit_problems::LogisticNonconvex;

struct Setup {
    unit: Vec<LogisticNonconvex>,
    general: Vec<LogisticNonconvex>,
    all_rows: Vec<Vec<u32>>,
    x: Vec<f64>,
    grads: Vec<Vec<f64>>,
}

fn setup() -> Setup {
    let p = Problem::build(&ProblemConfig::new("w8a", 20, ProblemKind::Logistic)).expect("w8a");
    let unit: Vec<LogisticNonconvex> = (0..p.n_workers())
        .map(|i| {
            let s = p.shard(i);
            LogisticNonconvex::new(s.a.clone(), s.y.clone(), p.lambda()).expect("oracle")
        })
        .collect();
    assert!(unit.iter().all(|o| o.unit_values_kernel()));
    let general: Vec<LogisticNonconvex> = unit
        .iter()
        .map(|o| o.clone().with_unit_values_kernel(false))
        .collect();
    assert!(general.iter().all(|o| !o.unit_values_kernel()));
    let all_rows = unit
        .iter()
        .map(|o| (0..o.a().n_rows() as u32).collect())
        .collect();
    // a point with margins of all sizes
    let d = p.dim();
    let x = (0..d)
        .map(|k| ((k as f64) * 0.7).sin() * 1.3 + ((k as f64) * 1.9).cos() * 0.4)
        .collect();
    Setup {
        unit,
        general,
        all_rows,
        x,
        grads: vec![vec![0.0; d]; p.n_workers()],
    }
}

#[derive(Clone, Copy)]
enum Variant {
    GradUnit,
    GradGeneral,
    LossGradUnit,
    CsrUnit,
    CsrGeneral,
}

const VARIANTS: [(Variant, &str); 5] = [
    (Variant::GradUnit, "grad/unit"),
    (Variant::GradGeneral, "grad/general"),
    (Variant::LossGradUnit, "loss_grad/unit"),
    (Variant::CsrUnit, "csr_loss_grad/unit"),
    (Variant::CsrGeneral, "csr_loss_grad/general"),
];

/// The 20 gradients of one variant; returns a checksum.
fn run(s: &mut Setup, v: Variant) -> f64 {
    let x = &s.x;
    let mut acc = 0.0;
    for i in 0..s.unit.len() {
        let g = &mut s.grads[i];
        match v {
            Variant::GradUnit => s.unit[i].grad(x, g),
            Variant::GradGeneral => s.general[i].grad(x, g),
            Variant::LossGradUnit => acc += s.unit[i].loss_grad(x, g),
            Variant::CsrUnit => acc += s.unit[i].indexed_grad(x, &s.all_rows[i], g),
            Variant::CsrGeneral => acc += s.general[i].indexed_grad(x, &s.all_rows[i], g),
        }
        acc += g[0];
    }
    acc
}

/// All variants give the same gradients, bit for bit.
fn check(s: &mut Setup) {
    run(s, Variant::GradUnit);
    let want: Vec<Vec<u64>> = s
        .grads
        .iter()
        .map(|g| g.iter().map(|v| v.to_bits()).collect())
        .collect();
    for (v, name) in VARIANTS {
        run(s, v);
        for (g, w) in s.grads.iter().zip(&want) {
            assert!(
                g.iter().map(|v| v.to_bits()).eq(w.iter().copied()),
                "{name} differs from grad/unit"
            );
        }
    }
}

fn bench_kernels(cr: &mut Criterion) {
    let mut s = setup();
    check(&mut s);
    let mut group = cr.benchmark_group("w8a_n20_grad_kernels");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (v, name) in VARIANTS {
        group.bench_function(name, |b| b.iter(|| run(&mut s, v)));
    }
    group.finish();
}

/// Interleaved measurement of the variants; prints min and median.
fn paired(reps: usize) {
    let mut s = setup();
    check(&mut s);
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); VARIANTS.len()];
    for _ in 0..reps {
        for (k, &(v, _)) in VARIANTS.iter().enumerate() {
            // one untimed call first: each variant is timed with its own data
            // in cache, as in a run of rounds (the general and CSR variants
            // stream several times more bytes and would evict the others')
            std::hint::black_box(run(&mut s, v));
            let t = Instant::now();
            std::hint::black_box(run(&mut s, v));
            times[k].push(t.elapsed().as_secs_f64());
        }
    }
    let line: Vec<String> = VARIANTS
        .iter()
        .zip(times.iter_mut())
        .map(|((_, name), v)| {
            v.sort_by(f64::total_cmp);
            format!(
                "{name} min {:.3} ms, median {:.3} ms",
                v[0] * 1e3,
                v[v.len() / 2] * 1e3
            )
        })
        .collect();
    println!("paired kernels ({reps} x): {}", line.join(" | "));
}

criterion_group!(benches, bench_kernels);

fn main() {
    benches();
    // skipped under `cargo test --benches` / `cargo bench -- --list`
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        paired(400);
    }
    Criterion::default().configure_from_args().final_summary();
}
