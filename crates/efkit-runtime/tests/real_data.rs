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
