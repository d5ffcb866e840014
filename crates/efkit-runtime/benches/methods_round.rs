//! One round of every method preset against the plain method's round,
//! measured in the same run.
//!
//! Setting: w8a (N = 49,749, d = 300), n = 20 contiguous shards, logistic
//! regression with the nonconvex regularizer, Top-1 uplinks (Top-5 for
//! EF21-BC's server), absolute step 0.1, x^0 ~ N(0, I), one thread. The
//! baseline of a full-gradient method is `gd` (20 gradients, dense f32
//! uplinks, the server's mean and step); of a minibatch method (`batch` =
//! 64 per worker) it is `sgd` with the same batch. Method-specific values:
//! eta = 0.3 for the momentum methods, p = 0.5 participation for the PP
//! presets, an l1 regularizer (lambda = 0.01) for EF21-Prox.
//!
//! * criterion group `w8a_n20_methods`: `cluster.step()` of each preset
//!   and of the two baselines;
//! * `paired`: 300 rounds of a preset alternated with 300 of its baseline,
//!   printing minimum and median of both and their ratio (interference on
//!   a shared machine only adds time, so the alternation keeps the ratio
//!   honest).
//!
//! Results: `bench/runs/2026-12-06-methods.md`.

mod common;

use std::time::{Duration, Instant};

use common::min_median_ms;
use criterion::{criterion_group, Criterion};
use efkit_core::method::{Preset, PRESETS};
use efkit_runtime::config::parse_with_hints;
use efkit_runtime::setup::prepare;
use efkit_runtime::Cluster;

const BATCH: usize = 64;

/// The preset's config, and whether it draws minibatches.
fn config(p: &Preset) -> (String, bool) {
    (
        format!(
            "seed = 1\nthreads = 1\n[problem]\nkind = \"logistic\"\ndataset = \"w8a\"\nworkers = 20\n\
             {}[step]\nrule = \"absolute\"\nvalue = 0.1\n[init]\nkind = \"gaussian\"\n",
            p.example_sections(BATCH, 1)
        ),
        p.required.contains(&"batch"),
    )
}

fn preset(name: &str) -> &'static Preset {
    PRESETS.iter().find(|p| p.name == name).expect("a preset")
}

fn cluster(text: &str) -> Cluster {
    let cfg = parse_with_hints(text).expect("bench config");
    let mut c = prepare(&cfg).expect("bench setup").cluster;
    // round 0 is the dense initialization (and PAGE's full gradient): measure later rounds
    c.step().expect("round 0");
    c
}

/// (preset name, its cluster config, the baseline's name and config).
fn cases() -> Vec<(&'static str, String, &'static str, String)> {
    let gd = config(preset("gd")).0;
    let sgd = config(preset("sgd")).0;
    PRESETS
        .iter()
        .filter(|p| !matches!(p.name, "gd" | "sgd"))
        .map(|p| {
            let (text, stochastic) = config(p);
            if stochastic {
                (p.name, text, "sgd", sgd.clone())
            } else {
                (p.name, text, "gd", gd.clone())
            }
        })
        .collect()
}

fn bench_methods(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("w8a_n20_methods");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for (name, text) in [
        ("gd", config(preset("gd")).0),
        ("sgd", config(preset("sgd")).0),
    ]
    .into_iter()
    .chain(cases().into_iter().map(|(n, t, _, _)| (n, t)))
    {
        let mut c = cluster(&text);
        group.bench_function(name, |b| b.iter(|| c.step().expect("round")));
    }
    group.finish();
}

fn paired(pairs: usize) {
    println!("paired, one thread, {pairs} alternations per method (ms):");
    println!(
        "| method | baseline | method min / median | baseline min / median | ratio of medians |"
    );
    println!("|---|---|---|---|---|");
    for (name, text, base_name, base_text) in cases() {
        let (mut m, mut b) = (cluster(&text), cluster(&base_text));
        let (mut tm, mut tb) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
        for _ in 0..pairs {
            let t = Instant::now();
            m.step().expect("round");
            tm.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            b.step().expect("round");
            tb.push(t.elapsed().as_secs_f64());
        }
        let ((m0, m1), (b0, b1)) = (min_median_ms(tm), min_median_ms(tb));
        println!(
            "| {name} | {base_name} | {m0:.3} / {m1:.3} | {b0:.3} / {b1:.3} | {:.2} |",
            m1 / b1
        );
    }
}

criterion_group!(benches, bench_methods);

fn main() {
    common::criterion_then_paired(benches, || paired(300));
}
