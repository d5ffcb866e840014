//! EF21-family runs on real data (mushrooms): golden numbers against an
//! independent f64 computation, determinism across thread counts, and the
//! reductions of algorithms.md §12.3 bit for bit.

mod common;

use common::{bits_eq, grad, mean_grad_norm_sq, shards, top_k};
use efkit_runtime::config::{parse_with_hints, Config};
use efkit_runtime::setup::prepare;
use efkit_runtime::{Control, RoundMetrics, StopRules};

fn config(
    method: &str,
    extra_method: &str,
    compressor: &str,
    rounds: u64,
    threads: usize,
) -> Config {
    let s = format!(
        "seed = 3\nthreads = {threads}\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 20\n[method]\nname = \"{method}\"\n{extra_method}\n[compressor]\n{compressor}\n[step]\nrule = \"theory\"\nmultiplier = 8.0\n[init]\nkind = \"gaussian\"\n[stop]\nmax_rounds = {rounds}\n"
    );
    parse_with_hints(&s).unwrap()
}

fn run(cfg: &Config) -> (Vec<RoundMetrics>, Vec<f64>) {
    let mut p = prepare(cfg).unwrap();
    let rules = StopRules {
        max_rounds: cfg.stop.max_rounds,
        tol: None,
        time_limit: None,
        blowup: 1e6,
        log_every: 1,
    };
    let mut rows = Vec::new();
    p.cluster.run(&rules, |m| {
        let mut m = m.clone();
        m.seconds = 0.0;
        rows.push(m);
        Control::Continue
    });
    (rows, p.cluster.server.state.x.clone())
}

const TOP1_F64: &str = "name = \"top-k\"\nk = 1\nvalues = \"f64\"";

#[test]
fn same_metrics_for_any_thread_count() {
    for (m, extra, c) in [
        ("ef21", "", "name = \"top-k\"\nk = 2"),
        ("ef21-sgd", "batch = 0.1", "name = \"rand-k\"\nk = 3"),
        ("ef21-pp", "participation = 0.3", "name = \"top-k\"\nk = 1"),
    ] {
        let (a, xa) = run(&config(m, extra, c, 25, 1));
        let (b, xb) = run(&config(m, extra, c, 25, 2));
        let (c3, xc) = run(&config(m, extra, c, 25, 3));
        assert_eq!(a, b, "{m}");
        assert_eq!(a, c3, "{m}");
        assert!(bits_eq(&xa, &xb) && bits_eq(&xa, &xc));
    }
}

/// EF21-PAGE with full batches and p = 0.3 (the branch v += grad f_B(x) -
/// grad f_B(x_prev) runs in most rounds): v stays grad f_i(x), so the run is
/// EF21's up to rounding, and the epochs count N samples in a round that
/// refreshes and 2N (both gradients) in one that does not, all workers
/// tossing the shared coin together.
#[test]
fn page_with_full_batches_is_ef21_for_any_p() {
    let (base, _) = run(&config("ef21", "", TOP1_F64, 30, 2));
    let (rows, _) = run(&config(
        "ef21-page",
        "batch = 1.0\np = 0.3",
        TOP1_F64,
        30,
        2,
    ));
    assert_eq!(rows.len(), base.len());
    for (a, b) in rows.iter().zip(&base) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs();
        assert!(
            close(a.grad_norm_sq, b.grad_norm_sq),
            "round {}: {} vs {}",
            a.round,
            a.grad_norm_sq,
            b.grad_norm_sq
        );
        assert!(close(a.loss, b.loss), "round {}", a.round);
    }
    // epochs: +1 per refreshing round (round 0 always), +2 per other round
    let mut doubles = 0;
    for w in rows.windows(2) {
        let step = w[1].epochs - w[0].epochs;
        let per_round = step / (w[1].round - w[0].round) as f64;
        assert!((1.0..=2.0).contains(&per_round), "{step}");
        assert!(
            (step - step.round()).abs() < 1e-9,
            "not whole epochs: {step}"
        );
        doubles += (step.round() as u64) - (w[1].round - w[0].round);
    }
    // the shared coin of round t (seed 3) by hand: refresh when below p
    use rand::Rng as _;
    let coin_doubles = (1..30u64)
        .filter(|&t| {
            efkit_core::rng::stream(3, efkit_core::rng::Purpose::SharedCoin, 0, t).gen::<f64>()
                >= 0.3
        })
        .count() as u64;
    assert_eq!(doubles, coin_doubles);
    let last = rows.last().unwrap();
    assert!((last.epochs - (30 + coin_doubles) as f64).abs() < 1e-9);
    // with p = 0.3 most of the 29 later rounds take the difference branch
    assert!(
        (10..29).contains(&doubles),
        "{doubles} rounds without refresh"
    );
}

/// The epochs column counts samples: a full-gradient round is one epoch, a
/// round of EF21-SGD with B = 7 on n = 20 workers is 7 * 20 / N of one
/// (mushrooms, N = 8124), from round 1 on as the rounds run.
#[test]
fn epochs_count_the_samples_drawn() {
    let (rows, _) = run(&config("ef21", "", TOP1_F64, 10, 2));
    let last = rows.last().unwrap();
    assert_eq!((last.round, last.epochs), (10, 10.0));
    let (rows, _) = run(&config("ef21-sgd", "batch = 7", TOP1_F64, 10, 2));
    assert!(rows.len() >= 2);
    for m in &rows {
        let want = 7.0 * 20.0 * m.round as f64 / 8124.0;
        assert!(
            (m.epochs - want).abs() <= 1e-12,
            "round {}: {} vs {want}",
            m.round,
            m.epochs
        );
    }
}

/// §12.3 reductions on real data, bit for bit over tens of rounds.
#[test]
fn reductions_to_ef21_are_exact() {
    let (base, xb) = run(&config("ef21", "", TOP1_F64, 30, 2));
    let cases: [(&str, &str, String); 6] = [
        ("ef21-hb", "eta = 0.0", String::new()),
        ("ef21-pp", "participation = 1.0", String::new()),
        (
            "ef21-bc",
            "",
            "[server_compressor]\nname = \"identity\"\nvalues = \"f64\"".into(),
        ),
        ("ef21-sgd", "batch = 1.0", String::new()),
        ("ef21-page", "batch = 0.1\np = 1.0", String::new()),
        ("ef21-prox", "prox = { kind = \"zero\" }", String::new()),
    ];
    for (m, extra, server) in cases {
        let mut cfg = config(m, extra, TOP1_F64, 30, 2);
        if !server.is_empty() {
            let mut s = cfg.to_toml();
            s.push_str(&server);
            cfg = parse_with_hints(&s).unwrap();
        }
        let (rows, x) = run(&cfg);
        assert!(bits_eq(&x, &xb), "{m}: final x differs");
        assert_eq!(rows.len(), base.len(), "{m}");
        for (a, b) in rows.iter().zip(&base) {
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{m} round {}", a.round);
            assert_eq!(
                a.grad_norm_sq.to_bits(),
                b.grad_norm_sq.to_bits(),
                "{m} round {}",
                a.round
            );
        }
    }
}

// ---------------------------------------------------------------------------
// An independent f64 implementation: dense shards, naive loops, written from
// algorithms.md §4.2, §5.3, §6.4, §6.5 without the library's method code.

fn rel_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-300)
}

fn zeros_config(method: &str, extra: &str, gamma: f64, rounds: u64) -> Config {
    let s = format!(
        "[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 20\n[method]\nname = \"{method}\"\n{extra}\n[compressor]\n{TOP1_F64}\n[step]\nrule = \"absolute\"\nvalue = {gamma}\n[stop]\nmax_rounds = {rounds}\n"
    );
    parse_with_hints(&s).unwrap()
}

/// EF21 (dense init, the papers' code) and EF14, Top-1, mushrooms, n = 20, x0 = 0.
#[test]
fn golden_ef21_and_ef14_against_independent_computation() {
    let sh = shards();
    let d = 112;
    let gamma = 0.5;
    let rounds = 12;
    // EF21
    let mut x = vec![0.0; d];
    let mut gi: Vec<Vec<f64>> = sh.iter().map(|s| grad(s, &x, 0.1)).collect();
    let mut expect = vec![mean_grad_norm_sq(&sh, &x)];
    for _ in 0..rounds {
        let g: Vec<f64> = (0..d)
            .map(|k| gi.iter().map(|v| v[k]).sum::<f64>() / 20.0)
            .collect();
        for k in 0..d {
            x[k] -= gamma * g[k];
        }
        expect.push(mean_grad_norm_sq(&sh, &x));
        for (i, s) in sh.iter().enumerate() {
            let gr = grad(s, &x, 0.1);
            let diff: Vec<f64> = (0..d).map(|k| gr[k] - gi[i][k]).collect();
            let c = top_k(&diff, 1);
            for k in 0..d {
                gi[i][k] += c[k];
            }
        }
    }
    let (rows, _) = run(&zeros_config("ef21", "", gamma, rounds as u64));
    assert_eq!(rows.len(), expect.len());
    for (r, e) in rows.iter().zip(&expect) {
        assert!(
            rel_close(r.grad_norm_sq, *e),
            "EF21 round {}: {} vs {}",
            r.round,
            r.grad_norm_sq,
            e
        );
    }
    // EF14: e^0 = 0; w = C(e + gamma grad); e += gamma grad - w; x -= mean w
    let mut x = vec![0.0; d];
    let mut e = vec![vec![0.0; d]; 20];
    let mut expect = vec![mean_grad_norm_sq(&sh, &x)];
    for _ in 0..rounds {
        let mut step = vec![0.0; d];
        for (i, s) in sh.iter().enumerate() {
            let gr = grad(s, &x, 0.1);
            let y: Vec<f64> = (0..d).map(|k| e[i][k] + gamma * gr[k]).collect();
            let w = top_k(&y, 1);
            for k in 0..d {
                e[i][k] = y[k] - w[k];
                step[k] += w[k] / 20.0;
            }
        }
        for k in 0..d {
            x[k] -= step[k];
        }
        expect.push(mean_grad_norm_sq(&sh, &x));
    }
    let (rows, _) = run(&zeros_config("ef14", "", gamma, rounds as u64));
    assert_eq!(rows.len(), expect.len());
    for (r, e) in rows.iter().zip(&expect) {
        assert!(
            rel_close(r.grad_norm_sq, *e),
            "EF14 round {}: {} vs {}",
            r.round,
            r.grad_norm_sq,
            e
        );
    }
}

/// EF21-HB (eta = 0.4, v^0 = g^0) and EF21-BC (worker Top-1, server Top-4).
#[test]
fn golden_ef21_hb_and_bc_against_independent_computation() {
    let sh = shards();
    let d = 112;
    let gamma = 0.5;
    let rounds = 12;
    let eta = 0.4;
    // HB
    let mut x = vec![0.0; d];
    let mut gi: Vec<Vec<f64>> = sh.iter().map(|s| grad(s, &x, 0.1)).collect();
    let mut v: Vec<f64> = (0..d)
        .map(|k| gi.iter().map(|w| w[k]).sum::<f64>() / 20.0)
        .collect();
    let mut expect = vec![mean_grad_norm_sq(&sh, &x)];
    for t in 0..rounds {
        if t > 0 {
            let g: Vec<f64> = (0..d)
                .map(|k| gi.iter().map(|w| w[k]).sum::<f64>() / 20.0)
                .collect();
            for k in 0..d {
                v[k] = eta * v[k] + g[k];
            }
        }
        for k in 0..d {
            x[k] -= gamma * v[k];
        }
        expect.push(mean_grad_norm_sq(&sh, &x));
        for (i, s) in sh.iter().enumerate() {
            let gr = grad(s, &x, 0.1);
            let diff: Vec<f64> = (0..d).map(|k| gr[k] - gi[i][k]).collect();
            let c = top_k(&diff, 1);
            for k in 0..d {
                gi[i][k] += c[k];
            }
        }
    }
    let (rows, _) = run(&zeros_config("ef21-hb", "eta = 0.4", gamma, rounds as u64));
    assert_eq!(rows.len(), expect.len());
    for (r, e) in rows.iter().zip(&expect) {
        assert!(
            rel_close(r.grad_norm_sq, *e),
            "HB round {}: {} vs {}",
            r.round,
            r.grad_norm_sq,
            e
        );
    }
    // BC: gtilde_i (worker EF21 states), gtilde = mean, g (broadcast, mirrored)
    let mut x = vec![0.0; d];
    let mut gt: Vec<Vec<f64>> = sh.iter().map(|s| grad(s, &x, 0.1)).collect();
    let mut g: Vec<f64> = (0..d)
        .map(|k| gt.iter().map(|w| w[k]).sum::<f64>() / 20.0)
        .collect();
    let mut expect = vec![mean_grad_norm_sq(&sh, &x)];
    for t in 0..rounds {
        if t > 0 {
            let gtm: Vec<f64> = (0..d)
                .map(|k| gt.iter().map(|w| w[k]).sum::<f64>() / 20.0)
                .collect();
            let diff: Vec<f64> = (0..d).map(|k| gtm[k] - g[k]).collect();
            let b = top_k(&diff, 4);
            for k in 0..d {
                g[k] += b[k];
            }
        }
        for k in 0..d {
            x[k] -= gamma * g[k];
        }
        expect.push(mean_grad_norm_sq(&sh, &x));
        for (i, s) in sh.iter().enumerate() {
            let gr = grad(s, &x, 0.1);
            let diff: Vec<f64> = (0..d).map(|k| gr[k] - gt[i][k]).collect();
            let c = top_k(&diff, 1);
            for k in 0..d {
                gt[i][k] += c[k];
            }
        }
    }
    let mut s = zeros_config("ef21-bc", "", gamma, rounds as u64).to_toml();
    s.push_str("[server_compressor]\nname = \"top-k\"\nk = 4\nvalues = \"f64\"\n");
    let (rows, _) = run(&parse_with_hints(&s).unwrap());
    assert_eq!(rows.len(), expect.len());
    for (r, e) in rows.iter().zip(&expect) {
        assert!(
            rel_close(r.grad_norm_sq, *e),
            "BC round {}: {} vs {}",
            r.round,
            r.grad_norm_sq,
            e
        );
    }
}

/// EF21-W (Richtarik, Gasanov & Burlachenko 2024; algorithms.md §8.2) by
/// naive f64 on mushrooms (n = 20, x^0 = 0) with the hard-threshold
/// compressor, which is not positively homogeneous, so the weights change the
/// trajectory: G_i^0 = grad f_i(x^0) / s_i (dense), s_i = n w_i with
/// w_i = L_i / sum_j L_j (the library's smoothness constants, checked against
/// a dense eigen-solver elsewhere); each round x -= gamma (1/n) sum_i s_i G_i,
/// then the workers with `takes_part(t)[i]` set G_i += C(grad f_i(x) / s_i -
/// G_i) and the others keep G_i. Returns ||grad f(x^t)||^2 for t = 0..=rounds.
fn ef21_w_reference(
    gamma: f64,
    rounds: u64,
    lambda_c: f64,
    mut takes_part: impl FnMut(u64) -> Vec<bool>,
) -> Vec<f64> {
    use efkit_problems::{Problem, ProblemConfig, ProblemKind};
    let sh = shards();
    let (n, d) = (20, 112);
    let p = Problem::build(&ProblemConfig::new("mushrooms", n, ProblemKind::Logistic)).unwrap();
    let l_i = p.smoothness().unwrap().l_i;
    let total: f64 = l_i.iter().sum();
    let s: Vec<f64> = l_i.iter().map(|l| n as f64 * l / total).collect();
    assert!(
        s.iter().any(|v| (v - 1.0).abs() > 0.05),
        "the shards' L_i differ, so the weights are not uniform: {s:?}"
    );
    let thr = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|&x| if x.abs() >= lambda_c { x } else { 0.0 })
            .collect()
    };
    let mut x = vec![0.0; d];
    let mut gi: Vec<Vec<f64>> = sh
        .iter()
        .zip(&s)
        .map(|(sh, si)| grad(sh, &x, 0.1).iter().map(|v| v / si).collect())
        .collect();
    let mut expect = vec![mean_grad_norm_sq(&sh, &x)];
    for t in 1..=rounds {
        let g: Vec<f64> = (0..d)
            .map(|k| (0..n).map(|i| s[i] * gi[i][k]).sum::<f64>() / n as f64)
            .collect();
        for k in 0..d {
            x[k] -= gamma * g[k];
        }
        expect.push(mean_grad_norm_sq(&sh, &x));
        let mask = takes_part(t);
        for i in (0..n).filter(|&i| mask[i]) {
            let gr = grad(&sh[i], &x, 0.1);
            let diff: Vec<f64> = (0..d).map(|k| gr[k] / s[i] - gi[i][k]).collect();
            let c = thr(&diff);
            for k in 0..d {
                gi[i][k] += c[k];
            }
        }
    }
    expect
}

/// Runs `method` (`extra` in its section) with the threshold compressor and
/// compares every round with `expect`; the unweighted `plain` method with
/// the same compressor must differ (the weights act).
fn check_weighted_golden(
    method: &str,
    plain: &str,
    extra: &str,
    seed: u64,
    gamma: f64,
    lambda_c: f64,
    expect: &[f64],
) {
    let cfg = |m: &str| {
        parse_with_hints(&format!(
            "seed = {seed}\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 20\n[method]\nname = \"{m}\"\n{extra}\n[compressor]\nname = \"threshold\"\nlambda = {lambda_c}\nvalues = \"f64\"\n[step]\nrule = \"absolute\"\nvalue = {gamma}\n[stop]\nmax_rounds = {}\n",
            expect.len() - 1
        ))
        .unwrap()
    };
    let (rows, _) = run(&cfg(method));
    assert_eq!(rows.len(), expect.len());
    for (r, e) in rows.iter().zip(expect) {
        assert!(
            rel_close(r.grad_norm_sq, *e),
            "{method} round {}: {} vs {}",
            r.round,
            r.grad_norm_sq,
            e
        );
    }
    let (unweighted, _) = run(&cfg(plain));
    assert!(unweighted
        .iter()
        .zip(&rows)
        .any(|(a, b)| !rel_close(a.grad_norm_sq, b.grad_norm_sq)));
}

/// EF21-W against the independent computation (every worker every round).
#[test]
fn golden_ef21_w_against_independent_computation() {
    let expect = ef21_w_reference(0.5, 10, 0.02, |_| vec![true; 20]);
    check_weighted_golden("ef21-w", "ef21", "", 3, 0.5, 0.02, &expect);
}

/// EF21-W-PP against the independent computation, 5 of 20 clients a round.
/// The participant sets come from the library's `Server::participants` (a
/// pure function of seed and round, tested in extensions.rs).
#[test]
fn golden_ef21_w_pp_against_independent_computation() {
    use efkit_core::method::{MethodSpec, Server};
    let (n, seed) = (20, 5u64);
    let mut spec = MethodSpec::named("ef21-w-pp");
    spec.participation = Some(0.25);
    let parts = spec.parts(0.5, n, &vec![Some(1); n]).unwrap();
    let sampler = Server::new(n, &[0.0]);
    let (mut mask, mut idx) = (Vec::new(), Vec::new());
    let expect = ef21_w_reference(0.5, 12, 0.02, |t| {
        sampler.participants(&parts, seed, t, &mut mask, &mut idx);
        assert_eq!(mask.iter().filter(|&&b| b).count(), 5);
        mask.clone()
    });
    check_weighted_golden(
        "ef21-w-pp",
        "ef21-pp",
        "participation = 0.25",
        seed,
        0.5,
        0.02,
        &expect,
    );
}

/// EF21-W's theory step uses L_AM in place of Ltilde (L_AM <= Ltilde, so the
/// step is at least EF21's). (With Top-K EF21-W is EF21 up to rounding:
/// `ef21_w_variants_reduce_exactly`.)
#[test]
fn ef21_w_takes_the_l_am_step() {
    let theory = |method: &str| {
        let c = config(method, "", "name = \"top-k\"\nk = 1", 1, 1);
        prepare(&c).unwrap().info
    };
    let (w, plain) = (theory("ef21-w"), theory("ef21"));
    let (l, lt) = (plain.l.unwrap(), plain.l_tilde.unwrap());
    let p = efkit_problems::Problem::build(&efkit_problems::ProblemConfig::new(
        "mushrooms",
        20,
        efkit_problems::ProblemKind::Logistic,
    ))
    .unwrap();
    let l_am = p.smoothness().unwrap().l_am();
    assert!(l_am < lt, "L_AM {l_am} < Ltilde {lt}");
    let alpha = 1.0 / 112.0;
    let expect = 8.0 * efkit_core::theory::ef21_stepsize(l, l_am, alpha);
    assert!(
        (w.gamma - expect).abs() <= 1e-12 * expect,
        "{} vs {expect}",
        w.gamma
    );
    assert!(w.gamma > plain.gamma);
    // the summary names the constant the step used
    assert_eq!(w.l_am, Some(l_am));
    assert_eq!(plain.l_am, None);
}

/// EF21-W's variants reduce to EF21-W bit for bit: EF21-W-SGD with full
/// batches, EF21-W-PP with every client taking part; and, for a positively
/// homogeneous compressor (Top-K), EF21-W and both variants are their
/// unweighted methods up to rounding (g_i scaled by 1/(n w_i); algorithms.md
/// §12.3), while with the threshold compressor the weights act (the golden
/// tests above).
#[test]
fn ef21_w_variants_reduce_exactly() {
    let weighted = |m: &str, extra: &str| run(&config(m, extra, TOP1_F64, 30, 2));
    let (base, xb) = weighted("ef21-w", "");
    for (m, extra) in [
        ("ef21-w-sgd", "batch = 1.0"),
        ("ef21-w-pp", "participation = 1.0"),
    ] {
        let (rows, x) = weighted(m, extra);
        assert!(bits_eq(&x, &xb), "{m}: final x differs");
        assert_eq!(rows, base, "{m}");
    }
    for (w, plain, extra) in [
        ("ef21-w", "ef21", ""),
        ("ef21-w-sgd", "ef21-sgd", "batch = 0.1"),
        ("ef21-w-pp", "ef21-pp", "participation = 0.3"),
    ] {
        // the same step for both (the theory rule would give EF21-W the L_AM step)
        let (a, xa) = run(&zeros_config(w, extra, 0.5, 25));
        let (b, xb) = run(&zeros_config(plain, extra, 0.5, 25));
        for (r, e) in a.iter().zip(&b) {
            assert!(
                (r.grad_norm_sq - e.grad_norm_sq).abs() <= 1e-9 * e.grad_norm_sq,
                "{w} round {}: {} vs {}",
                r.round,
                r.grad_norm_sq,
                e.grad_norm_sq
            );
            assert_eq!(r.bits_up_paper, e.bits_up_paper, "{w}");
            assert_eq!(r.participants, e.participants, "{w}");
        }
        for (p, q) in xa.iter().zip(&xb) {
            assert!((p - q).abs() <= 1e-9 * q.abs().max(1e-6), "{w}");
        }
    }
}
