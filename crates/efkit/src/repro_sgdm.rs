//! Reproductions of Fatkhullin, Tyurin & Richtarik, "Momentum Provably
//! Improves Error Feedback!" (NeurIPS 2023; algorithms.md §7 and §10.3).
//!
//! * `efkit repro sgdm-divergence` (the paper's Figure 1, our
//!   `docs/figures/fig2-ef21-sgd-divergence.png`): f(x) = 1/2 ||x||^2 in d = 2,
//!   Top-1, stochastic gradients x + xi with OUR asymmetric zero-mean noise
//!   (E[Top1(xi)] != 0; the paper's noise law is unknown, see
//!   `efkit_problems::noisy`). EF21-SGD-ideal, EF21-SGD and EF21-SGDM at n = 1,
//!   and EF21-SGD at n = 50 ... 10,000, two step sizes, several seeds. The runs
//!   use the lean loop `efkit_runtime::lean` (same compressors, same update,
//!   same random streams as the Cluster, bit for bit; tested).
//! * `efkit repro sgdm-mnist`: multiclass logistic regression with the
//!   nonconvex regularizer on MNIST (n = 10, Top-K), B = 1 and B = 128,
//!   EF14-SGD, EF21-SGD, EF21-SGD2M, EF21-SGDM with step sizes tuned over
//!   powers of two starting from the paper's (§10.3), ||grad f||^2 against
//!   bits/n.
//!
//! Everything printed is measured in the run; nothing is hard-coded.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use efkit_core::compress::{build, CompressorSpec, ValueFormat};
use efkit_core::method::{BatchSize, Codecs, MethodSpec};
use efkit_core::oracle::Oracle;
use efkit_problems::multiclass::{mnist_oracles, MulticlassLogistic};
use efkit_problems::noisy::{NoiseKind, NoisyQuadratic};
use efkit_problems::SplitKind;
use efkit_runtime::lean::{run_shared, LeanRun};
use efkit_runtime::setup_sgdm::cluster_from_oracles;
use efkit_runtime::{Control, RoundMetrics, Status, StopRules};

use crate::output::{self, JsonLines};
use crate::plot::{self, Panel, Series};
use crate::repro::{cores, par_map};

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn fmt_g(g: f64) -> String {
    format!("{g:e}")
}

// ---------------------------------------------------------------------------
// Figure 2: the EF21-SGD plateau
// ---------------------------------------------------------------------------

/// Noise scale sigma of the asymmetric noise (so that EF21-SGD-ideal's plateau
/// sigma^2/4 = 0.0625 in ||grad f||^2, i.e. f = 0.031, the height of the paper's figure).
const DIV_SIGMA: f64 = 0.5;

/// EF21-SGDM's initial momentum batch B_init (an input of the paper's Algorithm 1):
/// 100 = 1/eta draws, so that v_i^0 is as accurate as the momentum average itself.
const DIV_B_INIT: usize = 100;

struct DivParams {
    rounds: u64,
    seeds: u64,
    gammas: [f64; 2],
    eta: f64,
    /// EF21-SGD at these n with gammas[0] (right panel).
    big_n: Vec<usize>,
    /// ... and these n also with gammas[1].
    big_n_second_gamma: Vec<usize>,
    /// EF21-SGD-ideal and EF21-SGDM also at these n (gammas[0]; table only).
    extra_n: Vec<usize>,
}

impl DivParams {
    fn new(quick: bool) -> Self {
        if quick {
            DivParams {
                rounds: 2_000,
                seeds: 3,
                gammas: [4e-3, 2e-3],
                eta: 0.01,
                big_n: vec![50, 500],
                big_n_second_gamma: vec![50],
                extra_n: vec![50],
            }
        } else {
            DivParams {
                rounds: 10_000,
                seeds: 10,
                gammas: [1e-3, 5e-4],
                eta: 0.01,
                big_n: vec![50, 500, 5_000, 10_000],
                big_n_second_gamma: vec![50, 500],
                extra_n: vec![50, 500],
            }
        }
    }
}

/// One curve of the divergence figure: a method at (n, gamma), over seeds.
#[derive(Debug, Clone, PartialEq)]
struct DivGroup {
    method: &'static str,
    n: usize,
    gamma: f64,
}

impl DivGroup {
    fn label(&self) -> &'static str {
        match self.method {
            "ef21-sgd-ideal" => "EF21-SGD-ideal",
            "ef21-sgd" => "EF21-SGD",
            _ => "EF21-SGDM",
        }
    }

    fn spec(&self, eta: f64) -> MethodSpec {
        let b = Some(BatchSize::Count(1));
        match self.method {
            "ef21-sgdm" => MethodSpec {
                batch: b,
                eta: Some(eta),
                init_batch: Some(BatchSize::Count(DIV_B_INIT)),
                ..MethodSpec::named("ef21-sgdm")
            },
            m => MethodSpec {
                batch: b,
                ..MethodSpec::named(m)
            },
        }
    }
}

/// Mean, min and max over seeds at every round, and each seed's plateau.
struct DivStats {
    mean: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    /// Mean of ||grad f||^2 over the last 20% of rounds, per seed.
    plateaus: Vec<f64>,
}

fn div_stats(runs: &[&LeanRun], rounds: u64) -> DivStats {
    let len = runs[0].grad_norm_sq.len();
    let mut s = DivStats {
        mean: vec![0.0; len],
        min: vec![f64::INFINITY; len],
        max: vec![f64::NEG_INFINITY; len],
        plateaus: Vec::new(),
    };
    let from = (rounds - rounds / 5) as usize + 1; // rounds t in (0.8 T, T]
    for r in runs {
        for (t, &v) in r.grad_norm_sq.iter().enumerate() {
            s.mean[t] += v / runs.len() as f64;
            s.min[t] = s.min[t].min(v);
            s.max[t] = s.max[t].max(v);
        }
        let tail = &r.grad_norm_sq[from..];
        s.plateaus
            .push(tail.iter().sum::<f64>() / tail.len() as f64);
    }
    s
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `efkit repro sgdm-divergence`.
pub fn sgdm_divergence(out: &Path, _force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let start = Instant::now();
    let p = DivParams::new(quick);
    let mut groups = Vec::new();
    for &gamma in &p.gammas {
        for m in ["ef21-sgd-ideal", "ef21-sgd", "ef21-sgdm"] {
            groups.push(DivGroup {
                method: m,
                n: 1,
                gamma,
            });
        }
    }
    for &n in &p.big_n {
        groups.push(DivGroup {
            method: "ef21-sgd",
            n,
            gamma: p.gammas[0],
        });
    }
    for &n in &p.big_n_second_gamma {
        groups.push(DivGroup {
            method: "ef21-sgd",
            n,
            gamma: p.gammas[1],
        });
    }
    for &n in &p.extra_n {
        for m in ["ef21-sgd-ideal", "ef21-sgdm"] {
            groups.push(DivGroup {
                method: m,
                n,
                gamma: p.gammas[0],
            });
        }
    }
    // jobs: (group, seed), the most expensive first for load balance
    let mut jobs: Vec<(usize, u64)> = (0..groups.len())
        .flat_map(|g| (1..=p.seeds).map(move |s| (g, s)))
        .collect();
    jobs.sort_by_key(|&(g, s)| (std::cmp::Reverse(groups[g].n), g, s));
    let spec = CompressorSpec {
        k: Some(1),
        values: Some(ValueFormat::F64),
        ..CompressorSpec::named("top-k")
    };
    let dense = CompressorSpec {
        values: Some(ValueFormat::F64),
        ..CompressorSpec::named("identity")
    };
    let done = AtomicUsize::new(0);
    let total_jobs = jobs.len();
    let results: Vec<Result<LeanRun>> = par_map(&jobs, cores(), |&(g, seed)| {
        let grp = &groups[g];
        let r = (|| -> Result<LeanRun> {
            let parts = grp
                .spec(p.eta)
                .parts(grp.gamma, grp.n, &vec![None; grp.n])?;
            let codecs = Codecs {
                uplink: build(&spec, 2)?,
                dense: build(&dense, 2)?,
                downlink: None,
            };
            let mut oracle = NoisyQuadratic::new(2, NoiseKind::Asymmetric, DIV_SIGMA)?;
            Ok(run_shared(
                &parts,
                &codecs,
                &mut oracle,
                grp.n,
                &[0.0, 0.0],
                seed,
                p.rounds,
                1,
            )?)
        })();
        let k = done.fetch_add(1, Ordering::SeqCst) + 1;
        if !quiet {
            eprintln!(
                "[{k}/{total_jobs}] {} n = {} gamma = {} seed {seed} ({:.0} s)",
                grp.label(),
                grp.n,
                grp.gamma,
                start.elapsed().as_secs_f64()
            );
        }
        r
    });
    let mut by_group: Vec<Vec<LeanRun>> = groups.iter().map(|_| Vec::new()).collect();
    for ((g, _), r) in jobs.iter().zip(results) {
        by_group[*g].push(r?);
    }
    let stats: Vec<DivStats> = by_group
        .iter()
        .map(|runs| div_stats(&runs.iter().collect::<Vec<_>>(), p.rounds))
        .collect();
    let find = |method: &str, n: usize, gamma: f64| {
        groups
            .iter()
            .position(|g| g.method == method && g.n == n && g.gamma == gamma)
    };

    // figure: 2 x 2 panels (rows: the two step sizes; left n = 1, right EF21-SGD over n)
    let stride = (p.rounds / 1000).max(1) as usize;
    let series = |g: usize, label: String| -> Series {
        let s = &stats[g];
        let idx: Vec<usize> = (0..s.mean.len()).step_by(stride).collect();
        Series {
            label,
            x: idx.iter().map(|&t| t as f64).collect(),
            y: idx.iter().map(|&t| s.mean[t]).collect(),
            band: Some((
                idx.iter().map(|&t| s.min[t]).collect(),
                idx.iter().map(|&t| s.max[t]).collect(),
            )),
        }
    };
    let mut panels = Vec::new();
    for &gamma in &p.gammas {
        let left = ["ef21-sgd-ideal", "ef21-sgd", "ef21-sgdm"]
            .iter()
            .filter_map(|m| find(m, 1, gamma))
            .map(|g| series(g, groups[g].label().to_string()))
            .collect();
        panels.push(Panel {
            title: format!("n = 1, gamma = {}", fmt_g(gamma)),
            x_label: "iteration t".into(),
            y_label: "||grad f(x^t)||^2".into(),
            log_x: false,
            log_y: false,
            series: left,
        });
        let right = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.method == "ef21-sgd" && g.n > 1 && g.gamma == gamma)
            .map(|(i, g)| series(i, format!("EF21-SGD, n = {}", g.n)))
            .collect();
        panels.push(Panel {
            title: format!("EF21-SGD over n, gamma = {}", fmt_g(gamma)),
            x_label: "iteration t".into(),
            y_label: "||grad f(x^t)||^2".into(),
            log_x: false,
            log_y: false,
            series: right,
        });
    }
    // linear y as in the paper, and a log-y copy where the low EF21-SGDM level is readable
    let (svg, png) = plot::render(&panels, 2, &out.join("sgdm_divergence"))?;
    for p in panels.iter_mut() {
        p.log_y = true;
        // round 0 is x0 = 0 exactly: nothing to show on a log axis
        for s in p.series.iter_mut() {
            s.x.remove(0);
            s.y.remove(0);
            if let Some((lo, hi)) = s.band.as_mut() {
                lo.remove(0);
                hi.remove(0);
            }
        }
    }
    let (_, png_log) = plot::render(&panels, 2, &out.join("sgdm_divergence_log"))?;

    // data files
    let mut curves = String::from("method,n,gamma,round,mean,min,max\n");
    let mut plateaus = String::from("method,n,gamma,seed,plateau\n");
    for (g, s) in groups.iter().zip(&stats) {
        for t in (0..s.mean.len()).step_by(stride) {
            let _ = writeln!(
                curves,
                "{},{},{},{t},{:e},{:e},{:e}",
                g.method, g.n, g.gamma, s.mean[t], s.min[t], s.max[t]
            );
        }
        for (i, v) in s.plateaus.iter().enumerate() {
            let _ = writeln!(plateaus, "{},{},{},{},{v:e}", g.method, g.n, g.gamma, i + 1);
        }
    }
    output::write_atomic(&out.join("curves.csv"), curves.as_bytes())?;
    output::write_atomic(&out.join("plateaus.csv"), plateaus.as_bytes())?;

    // the plateau table
    let mut table = String::from("| method | n | gamma | plateau: mean over seeds | min over seeds | max over seeds |\n|---|---|---|---|---|---|\n");
    let mut order: Vec<usize> = (0..groups.len()).collect();
    let rank = |m: &str| {
        ["ef21-sgd-ideal", "ef21-sgd", "ef21-sgdm"]
            .iter()
            .position(|x| *x == m)
            .unwrap_or(9)
    };
    order.sort_by(|&a, &b| {
        (rank(groups[a].method), groups[a].n, -groups[a].gamma)
            .partial_cmp(&(rank(groups[b].method), groups[b].n, -groups[b].gamma))
            .expect("finite")
    });
    for &g in &order {
        let s = &stats[g];
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.3e} | {:.3e} | {:.3e} |",
            groups[g].label(),
            groups[g].n,
            fmt_g(groups[g].gamma),
            mean(&s.plateaus),
            s.plateaus.iter().cloned().fold(f64::INFINITY, f64::min),
            s.plateaus.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
        );
    }

    // the findings, checked on the measured numbers
    let plat = |m: &str, n: usize, gamma: f64| find(m, n, gamma).map(|g| mean(&stats[g].plateaus));
    let (g0, g1) = (p.gammas[0], p.gammas[1]);
    let mut checks: Vec<(String, bool)> = Vec::new();
    let target = DIV_SIGMA * DIV_SIGMA / 4.0;
    for &gamma in &p.gammas {
        if let Some(v) = plat("ef21-sgd-ideal", 1, gamma) {
            checks.push((format!("EF21-SGD-ideal at n = 1, gamma = {}: plateau {v:.4} vs the fixed-point prediction sigma^2/4 = {target:.4} (within 25%)", fmt_g(gamma)), (v - target).abs() <= 0.25 * target));
        }
    }
    for m in ["ef21-sgd-ideal", "ef21-sgd"] {
        if let (Some(a), Some(b)) = (plat(m, 1, g0), plat(m, 1, g1)) {
            checks.push((format!("{m} at n = 1: halving gamma ({} -> {}) changes the plateau by a factor {:.2} (does not shrink: factor > 0.7)", fmt_g(g0), fmt_g(g1), b / a), b / a > 0.7));
        }
    }
    for &n in &p.big_n_second_gamma {
        if let (Some(a), Some(b)) = (plat("ef21-sgd", n, g0), plat("ef21-sgd", n, g1)) {
            checks.push((format!("ef21-sgd at n = {n}: halving gamma changes the plateau by a factor {:.2} (does not shrink: factor > 0.7)", b / a), b / a > 0.7));
        }
    }
    let sgd_n: Vec<(usize, f64)> = p
        .big_n
        .iter()
        .filter_map(|&n| plat("ef21-sgd", n, g0).map(|v| (n, v)))
        .collect();
    if sgd_n.len() >= 2 {
        let (first, last) = (sgd_n[0], sgd_n[sgd_n.len() - 1]);
        checks.push((
            format!("ef21-sgd, gamma = {}: plateau at n = {} is {:.3e}, at n = {} is {:.3e} (does not shrink with n: ratio {:.2} > 0.7)", fmt_g(g0), first.0, first.1, last.0, last.1, last.1 / first.1),
            last.1 / first.1 > 0.7,
        ));
    }
    for &gamma in &p.gammas {
        if let (Some(s), Some(m)) = (plat("ef21-sgd", 1, gamma), plat("ef21-sgdm", 1, gamma)) {
            checks.push((
                format!(
                    "n = 1, gamma = {}: EF21-SGD plateau / EF21-SGDM plateau = {:.1} (at least 10)",
                    fmt_g(gamma),
                    s / m
                ),
                s / m >= 10.0,
            ));
        }
    }
    for &n in &p.extra_n {
        if let (Some(s), Some(m)) = (plat("ef21-sgd", n, g0), plat("ef21-sgdm", n, g0)) {
            checks.push((format!("n = {n}, gamma = {}: EF21-SGD plateau / EF21-SGDM plateau = {:.1} (at least 10)", fmt_g(g0), s / m), s / m >= 10.0));
        }
    }
    let all_hold = checks.iter().all(|c| c.1);
    let mut check_text = String::new();
    for (c, ok) in &checks {
        let _ = writeln!(
            check_text,
            "* {} — {}",
            if *ok { "holds" } else { "DOES NOT HOLD" },
            c
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let readme = format!(
        "# efkit repro sgdm-divergence{quick_note}\n\n\
Figure 1 of Fatkhullin, Tyurin & Richtarik, \"Momentum Provably Improves Error Feedback!\" (NeurIPS 2023): \
EF21-SGD (and its idealized variant) stalls on a plateau under stochastic gradients with a biased Top-K, momentum (EF21-SGDM) does not.\n\n\
## Setup\n\n\
* f(x) = 1/2 ||x||^2 in d = 2 for every worker (f_i = f), x0 = (0, 0) (the optimum: the paper's curves start at ~0).\n\
* Stochastic gradients x + xi with OUR asymmetric noise (the paper's noise law is UNKNOWN): xi = sigma (+-3, +1) w.p. 1/2 (fair sign), \
xi = sigma (0, -1) w.p. 1/2, sigma = {sigma}. E[xi] = 0 but E[Top1(xi)] = (0, -sigma/2), so EF21-SGD-ideal is driven to x = (0, sigma/2), \
||grad f||^2 = sigma^2/4 = {target}.\n\
* Compressor Top-1 (values sent as f64), batch 1, EF21 dense initialization g_i^0 = the first stochastic estimate; EF21-SGDM: v_i^0 = g_i^0 = the mean of B_init = {b_init} draws (the paper's Algorithm 1 takes B_init as an input; with B_init = 1 the first draw's noise, up to 3 sigma, is carried by the slow momentum for ~1/eta rounds and shows as an early bump).\n\
* EF21-SGDM eta = {eta}. Step sizes gamma in {{{ga}, {gb}}}. {rounds} iterations, {seeds} seeds (1..{seeds}) per curve.\n\
* Right panels: EF21-SGD at n = {big_n:?} (gamma = {ga}) and n = {big2:?} (gamma = {gb}); the table also has EF21-SGD-ideal and EF21-SGDM at n = {extra:?}.\n\
* Curves: the mean over seeds of ||grad f(x^t)||^2 (= 2 f(x^t); the paper plots f); shaded band: min..max over seeds. Linear y axis as in the paper; `sgdm_divergence_log.png` is the same with a log y axis.\n\
* Runs use the lean loop `efkit_runtime::lean` (same library compressors, update rule and random streams as the Cluster; equality with the Cluster is tested bit for bit).\n\n\
Figure: `{svg}` / `{png}`. Data: `curves.csv` (mean/min/max every {stride} rounds), `plateaus.csv` (per seed).\n\n\
## Plateaus: mean of ||grad f||^2 over the last 20% of iterations\n\n{table}\n\
## Findings (checked on the numbers above)\n\n{check_text}\n\
Wall time: {secs:.0} s on {cores} threads.\n",
        quick_note = if quick { " (quick smoke run, NOT the paper's budget)" } else { "" },
        sigma = DIV_SIGMA,
        b_init = DIV_B_INIT,
        eta = p.eta,
        ga = fmt_g(g0),
        gb = fmt_g(g1),
        rounds = p.rounds,
        seeds = p.seeds,
        big_n = p.big_n,
        big2 = p.big_n_second_gamma,
        extra = p.extra_n,
        svg = file_name(&svg),
        png = file_name(&png),
        cores = cores(),
    );
    output::write_atomic(&out.join("README.md"), readme.as_bytes())?;
    if !quiet {
        println!("{table}\n{check_text}");
    }
    println!("figure: {}", png.display());
    println!("figure: {}", png_log.display());
    if !all_hold && !quick {
        eprintln!(
            "warning: some findings do not hold; see {}",
            out.join("README.md").display()
        );
    }
    Ok(0)
}

// ---------------------------------------------------------------------------
// MNIST
// ---------------------------------------------------------------------------

struct MnistParams {
    workers: usize,
    k: usize,
    lambda: f64,
    eta: f64,
    /// Uplink bits per worker (papers' convention) every run gets.
    bit_budget: f64,
    batches: Vec<usize>,
    /// Powers of two tried around the paper's step at first: gamma_paper * 2^j, j in this range.
    first_grid: std::ops::RangeInclusive<i32>,
    /// At most this many further doublings/halvings when the best is at an edge.
    max_extend: i32,
    log_points: u64,
    rows: Option<usize>,
    splits: Vec<SplitKind>,
    tune_seed: u64,
    report_seed: u64,
}

impl MnistParams {
    fn new(quick: bool) -> Self {
        if quick {
            MnistParams {
                workers: 10,
                k: 50,
                lambda: 1e-3,
                eta: 0.1,
                bit_budget: 5e5,
                batches: vec![1, 128],
                first_grid: 0..=0,
                max_extend: 0,
                log_points: 5,
                rows: Some(5_000),
                splits: vec![SplitKind::Contiguous],
                tune_seed: 1,
                report_seed: 2,
            }
        } else {
            MnistParams {
                workers: 10,
                k: 50,
                lambda: 1e-3,
                eta: 0.1,
                bit_budget: 3e6,
                batches: vec![1, 128],
                first_grid: -1..=1,
                max_extend: 4,
                log_points: 30,
                rows: None,
                splits: vec![SplitKind::Contiguous, SplitKind::LabelSorted],
                tune_seed: 1,
                report_seed: 2,
            }
        }
    }

    /// Rounds until the uplink reaches the bit budget in the papers' convention:
    /// 32 K bits per compressed round. The EF21 family's round 0 sends g_i^0
    /// dense, which the authors' counters (`it * K * 32`) do not charge, so it
    /// gets one round more than EF14, which compresses from round 0.
    fn rounds(&self, method: &str) -> u64 {
        let compressed = (self.bit_budget / (32.0 * self.k as f64)).ceil() as u64;
        if method == "ef14-sgd" {
            compressed
        } else {
            1 + compressed
        }
    }
}

/// The methods and the paper's tuned step sizes (algorithms.md §10.3): (B = 1, B = 128).
const MNIST_METHODS: [(&str, &str, f64, f64); 4] = [
    ("ef14-sgd", "EF14-SGD", 0.0625, 0.25),
    ("ef21-sgd", "EF21-SGD", 0.015625, 0.015625),
    ("ef21-sgd2m", "EF21-SGD2M", 0.03125, 0.0625),
    ("ef21-sgdm", "EF21-SGDM", 0.0078125, 0.125),
];

#[derive(Debug, Clone)]
struct MnistJob {
    method: &'static str,
    b: usize,
    gamma: f64,
    seed: u64,
}

struct MnistResult {
    rows: Vec<RoundMetrics>,
    status: Status,
    /// Mean of ||grad f||^2 over the logged points in the last 25% of the bit budget
    /// (infinite when the run diverged).
    score: f64,
}

fn mnist_spec(method: &str, b: usize, eta: f64) -> MethodSpec {
    let batch = Some(BatchSize::Count(b));
    match method {
        // the initial momentum from the same batch size as every other method's g_i^0
        "ef21-sgdm" | "ef21-sgd2m" => MethodSpec {
            batch,
            eta: Some(eta),
            init_batch: batch,
            ..MethodSpec::named(method)
        },
        m => MethodSpec {
            batch,
            ..MethodSpec::named(m)
        },
    }
}

fn score(rows: &[RoundMetrics], status: Status, budget: f64) -> f64 {
    if status == Status::Diverged {
        return f64::INFINITY;
    }
    let tail: Vec<f64> = rows
        .iter()
        .filter(|r| r.bits_up_paper >= 0.75 * budget)
        .map(|r| r.grad_norm_sq)
        .collect();
    if tail.is_empty() || tail.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    mean(&tail)
}

fn mnist_run(base: &[MulticlassLogistic], job: &MnistJob, p: &MnistParams) -> Result<MnistResult> {
    let oracles: Vec<Box<dyn Oracle>> = base
        .iter()
        .map(|o| Box::new(o.clone()) as Box<dyn Oracle>)
        .collect();
    let comp = CompressorSpec {
        k: Some(p.k),
        ..CompressorSpec::named("top-k")
    };
    let mut c = cluster_from_oracles(
        oracles,
        &mnist_spec(job.method, job.b, p.eta),
        &comp,
        job.gamma,
        None,
        job.seed,
        1,
    )?;
    let rounds = p.rounds(job.method);
    let rules = StopRules {
        max_rounds: rounds,
        tol: None,
        time_limit: None,
        blowup: 1e3,
        log_every: (rounds / p.log_points).max(1),
    };
    let mut rows = Vec::new();
    let s = c.run(&rules, |m| {
        rows.push(m.clone());
        Control::Continue
    });
    let sc = score(&rows, s.status, p.bit_budget);
    Ok(MnistResult {
        rows,
        status: s.status,
        score: sc,
    })
}

/// Tuning and final runs of one split.
struct SplitOutcome {
    split: SplitKind,
    keys: Vec<(usize, usize)>,
    tried: Vec<Vec<(i32, f64, Status)>>,
    finals: Vec<MnistJob>,
    final_results: Vec<MnistResult>,
    runs: usize,
}

fn paper_gamma(b: usize, m: usize) -> f64 {
    if b == 1 {
        MNIST_METHODS[m].2
    } else {
        MNIST_METHODS[m].3
    }
}

fn mnist_split(
    p: &MnistParams,
    split: SplitKind,
    start: &Instant,
    quiet: bool,
) -> Result<SplitOutcome> {
    let base = mnist_oracles(p.workers, split, 0, p.lambda, p.rows)
        .map_err(|e| crate::UserError(format!("sgdm-mnist needs the MNIST training files: {e}")))?;
    let keys: Vec<(usize, usize)> = p
        .batches
        .iter()
        .flat_map(|&b| (0..MNIST_METHODS.len()).map(move |m| (b, m)))
        .collect();
    // tuning: scores per key and exponent j (gamma = paper * 2^j), in waves
    let mut tried: Vec<Vec<(i32, f64, Status)>> = keys.iter().map(|_| Vec::new()).collect();
    let mut wave: Vec<(usize, i32)> = (0..keys.len())
        .flat_map(|k| p.first_grid.clone().map(move |j| (k, j)))
        .collect();
    let mut runs = 0usize;
    let mut extends = vec![(0i32, 0i32); keys.len()];
    while !wave.is_empty() {
        let jobs: Vec<MnistJob> = wave
            .iter()
            .map(|&(k, j)| {
                let (b, m) = keys[k];
                MnistJob {
                    method: MNIST_METHODS[m].0,
                    b,
                    gamma: paper_gamma(b, m) * 2f64.powi(j),
                    seed: p.tune_seed,
                }
            })
            .collect();
        let results = par_map(&jobs, cores(), |job| {
            let r = mnist_run(&base, job, p);
            if !quiet {
                match &r {
                    Ok(r) => eprintln!(
                        "tune {split} B = {} {} gamma = {}: score {:.3e} ({:?}, {:.0} s)",
                        job.b,
                        job.method,
                        job.gamma,
                        r.score,
                        r.status,
                        start.elapsed().as_secs_f64()
                    ),
                    Err(e) => eprintln!(
                        "tune {split} B = {} {} gamma = {}: {e}",
                        job.b, job.method, job.gamma
                    ),
                }
            }
            r
        });
        runs += jobs.len();
        for (&(k, j), r) in wave.iter().zip(results) {
            let r = r?;
            tried[k].push((j, r.score, r.status));
        }
        // extend the grid where the best is at an edge
        let mut next = Vec::new();
        for (k, t) in tried.iter_mut().enumerate() {
            t.sort_by_key(|e| e.0);
            let best = t.iter().min_by(|a, b| a.1.total_cmp(&b.1)).expect("tried");
            let (lo, hi) = (t[0].0, t[t.len() - 1].0);
            if best.1.is_finite() && best.0 == hi && extends[k].1 < p.max_extend {
                extends[k].1 += 1;
                next.push((k, hi + 1));
            } else if best.0 == lo && extends[k].0 < p.max_extend {
                extends[k].0 += 1;
                next.push((k, lo - 1));
            }
        }
        wave = next;
    }
    // final runs: the best step of every method with a fresh seed
    let finals: Vec<MnistJob> = keys
        .iter()
        .zip(&tried)
        .map(|(&(b, m), t)| {
            let j = t
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("tried")
                .0;
            MnistJob {
                method: MNIST_METHODS[m].0,
                b,
                gamma: paper_gamma(b, m) * 2f64.powi(j),
                seed: p.report_seed,
            }
        })
        .collect();
    let final_results: Vec<MnistResult> = par_map(&finals, cores(), |job| mnist_run(&base, job, p))
        .into_iter()
        .collect::<Result<_>>()?;
    runs += finals.len();
    Ok(SplitOutcome {
        split,
        keys,
        tried,
        finals,
        final_results,
        runs,
    })
}

/// `efkit repro sgdm-mnist`.
pub fn sgdm_mnist(out: &Path, _force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let start = Instant::now();
    let p = MnistParams::new(quick);
    let mut outcomes = Vec::new();
    for &split in &p.splits {
        outcomes.push(mnist_split(&p, split, &start, quiet)?);
    }
    let label = |m: &str| {
        MNIST_METHODS
            .iter()
            .find(|x| x.0 == m)
            .map(|x| x.1)
            .unwrap_or("?")
    };
    // curves and figure
    let curves_dir = out.join("curves");
    std::fs::create_dir_all(&curves_dir)
        .with_context(|| format!("cannot create {}", curves_dir.display()))?;
    let mut panels = Vec::new();
    for o in &outcomes {
        for (job, r) in o.finals.iter().zip(&o.final_results) {
            let path = curves_dir.join(format!("{}-B{}-{}.jsonl", o.split, job.b, job.method));
            let mut w = JsonLines::create(&path)?;
            for row in &r.rows {
                w.push(row)?;
            }
        }
        for &b in &p.batches {
            panels.push(Panel {
                title: format!(
                    "MNIST, n = {}, Top-{}, B = {b}, {} split",
                    p.workers, p.k, o.split
                ),
                x_label: "#bits/n (32 bits per value)".into(),
                y_label: "||grad f(x^t)||^2".into(),
                log_x: false,
                log_y: true,
                series: o
                    .finals
                    .iter()
                    .zip(&o.final_results)
                    .filter(|(j, _)| j.b == b)
                    .map(|(j, r)| Series {
                        label: format!("{}, gamma = {}", label(j.method), j.gamma),
                        x: r.rows.iter().map(|m| m.bits_up_paper).collect(),
                        y: r.rows.iter().map(|m| m.grad_norm_sq).collect(),
                        band: None,
                    })
                    .collect(),
            });
        }
    }
    let (svg, png) = plot::render(&panels, p.batches.len(), &out.join("sgdm_mnist"))?;
    // tables
    let mut grid = String::from("| split | B | method | paper gamma | gamma: score (mean ||grad f||^2 over the last 25% of the bit budget, tuning seed) | chosen |\n|---|---|---|---|---|---|\n");
    let mut tuning_csv = String::from("split,B,method,gamma,seed,score,status\n");
    let mut table = String::from("| split | B | method | gamma | status | score (mean ||grad f||^2, last 25% of bits) | min ||grad f||^2 logged | final ||grad f||^2 | bits/n at the end |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut findings = String::new();
    let mut runs = 0;
    for o in &outcomes {
        runs += o.runs;
        for (k, &(b, m)) in o.keys.iter().enumerate() {
            let cells: Vec<String> = o.tried[k]
                .iter()
                .map(|&(j, s, st)| {
                    format!(
                        "{}: {}",
                        paper_gamma(b, m) * 2f64.powi(j),
                        if st == Status::Diverged {
                            "diverged".into()
                        } else {
                            format!("{s:.2e}")
                        }
                    )
                })
                .collect();
            let _ = writeln!(
                grid,
                "| {} | {b} | {} | {} | {} | {} |",
                o.split,
                MNIST_METHODS[m].1,
                paper_gamma(b, m),
                cells.join(", "),
                o.finals[k].gamma
            );
            for &(j, s, st) in &o.tried[k] {
                let _ = writeln!(
                    tuning_csv,
                    "{},{b},{},{},{},{s:e},{st:?}",
                    o.split,
                    MNIST_METHODS[m].0,
                    paper_gamma(b, m) * 2f64.powi(j),
                    p.tune_seed
                );
            }
        }
        for (j, r) in o.finals.iter().zip(&o.final_results) {
            let minv = r
                .rows
                .iter()
                .map(|m| m.grad_norm_sq)
                .fold(f64::INFINITY, f64::min);
            let last = r
                .rows
                .last()
                .map(|m| (m.grad_norm_sq, m.bits_up_paper))
                .unwrap_or((f64::NAN, 0.0));
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {:?} | {:.3e} | {:.3e} | {:.3e} | {:.3e} |",
                o.split,
                j.b,
                label(j.method),
                j.gamma,
                r.status,
                r.score,
                minv,
                last.0,
                last.1
            );
        }
        // the finding, checked on the report-seed runs
        let sc = |b: usize, m: &str| {
            o.finals
                .iter()
                .zip(&o.final_results)
                .find(|(j, _)| j.b == b && j.method == m)
                .map(|(_, r)| r.score)
        };
        for &b in &p.batches {
            if let (Some(sgdm), Some(sgd2m), Some(sgd), Some(ef14)) = (
                sc(b, "ef21-sgdm"),
                sc(b, "ef21-sgd2m"),
                sc(b, "ef21-sgd"),
                sc(b, "ef14-sgd"),
            ) {
                let base_best = sgd.min(ef14);
                let verdict = |v: f64| if v < base_best { "below" } else { "NOT below" };
                let _ = writeln!(
                    findings,
                    "* {} split, B = {b}: EF21-SGDM {sgdm:.2e} ({}), EF21-SGD2M {sgd2m:.2e} ({}) vs the better baseline {base_best:.2e} (EF21-SGD {sgd:.2e}, EF14-SGD {ef14:.2e}); EF21-SGD / EF21-SGDM = {:.1}, EF14-SGD / EF21-SGDM = {:.2}",
                    o.split,
                    verdict(sgdm),
                    verdict(sgd2m),
                    sgd / sgdm,
                    ef14 / sgdm
                );
            }
        }
    }
    output::write_atomic(&out.join("tuning.csv"), tuning_csv.as_bytes())?;
    let secs = start.elapsed().as_secs_f64();
    let splits: Vec<String> = p.splits.iter().map(|s| s.to_string()).collect();
    let jgrid = format!("{:?}", p.first_grid);
    let readme = format!(
        "# efkit repro sgdm-mnist{quick_note}\n\n\
MNIST experiment of Fatkhullin, Tyurin & Richtarik, \"Momentum Provably Improves Error Feedback!\" (NeurIPS 2023; algorithms.md §10.3).\n\n\
## Setup\n\n\
* Problem: multiclass logistic regression with the nonconvex regularizer, f_i(x_1..x_10) = -(1/m) sum_j log softmax_{{y_j}}(a_j^T x) + lambda sum [x_y]_k^2/(1+[x_y]_k^2), \
lambda = {lambda}, on the MNIST training set{rows_note} (pixels / 255 in [0, 1], 784 features, no bias, d = 7,840), n = {n} workers.\n\
* Splits: {splits}. `contiguous` = file order (MNIST's file order is already mixed: nearly i.i.d. shards); \
`label-sorted` = images sorted by digit first, so each worker holds one or two digits (heterogeneous f_i).\n\
* Compressor Top-{k} (values f32 on the wire; the x axis counts 32 bits per value, indices free, as the papers do), x0 = 0.\n\
* Every method: minibatch B per worker and round; EF21 family g_i^0 = the first minibatch gradient, sent dense (32 d bits on the wire, not charged on the paper axis); momentum eta = {eta}, v_i^0 (and u_i^0) from the same batch size B (B_init = B).\n\
* Budget: {budget:e} bits/n (the paper's x range), i.e. {rounds14} rounds for EF14-SGD and {rounds21} for the EF21 family (whose dense g_i^0 in round 0 is not charged, as in the authors' counters; the wire-bit columns count it); ||grad f||^2 on the full training set {logs} times per run.\n\
* Step sizes: start at the paper's tuned values (legend of its figure) times 2^j, j in {jgrid}; when the best is at an edge of the grid, extend it by one more power of two (at most {ext} times per side). \
Score = mean of ||grad f||^2 over the logged points in the last 25% of the bit budget (diverged = infinite), seed {ts}. \
The curves and the results table are a fresh run (seed {rs}) at the chosen step.\n\n\
## Step-size grid\n\n{grid}\n\
## Results (seed {rs})\n\n{table}\n\
Figure: `{svg}` / `{png}`; curves: `curves/<split>-B<b>-<method>.jsonl`; all tuning runs: `tuning.csv`.\n\n\
## Finding: momentum methods vs EF21-SGD and EF14-SGD at the same bits (score above)\n\n{findings}\n\
{runs} runs, wall time {secs:.0} s on {cores} threads.\n",
        quick_note = if quick { " (quick smoke run on 5,000 images, NOT the paper's budget)" } else { "" },
        lambda = p.lambda,
        rows_note = p.rows.map(|r| format!(" (first {r} images)")).unwrap_or_else(|| " (60,000 images)".into()),
        n = p.workers,
        splits = splits.join(", "),
        k = p.k,
        eta = p.eta,
        budget = p.bit_budget,
        rounds14 = p.rounds("ef14-sgd"),
        rounds21 = p.rounds("ef21-sgd"),
        logs = p.log_points,
        ext = p.max_extend,
        ts = p.tune_seed,
        rs = p.report_seed,
        svg = file_name(&svg),
        png = file_name(&png),
        cores = cores(),
    );
    output::write_atomic(&out.join("README.md"), readme.as_bytes())?;
    if !quiet {
        println!("{grid}\n{table}\n{findings}");
    }
    println!("figure: {}", png.display());
    Ok(0)
}
