//! Smoothness constants on the bundled data: the Lanczos method (never forms
//! A^T A) must match the dense Jacobi solver.

use efkit_problems::eigen::{gram_extreme, EigenMethod, Extreme};
use efkit_problems::problem::{Problem, ProblemConfig, ProblemKind};
use efkit_problems::{datasets, smoothness::quadratic_mean};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn lanczos_matches_dense_on_mushrooms_and_phishing() {
    for name in ["mushrooms", "phishing"] {
        let d = datasets::load(name).unwrap();
        let a = d.x();
        let dense = gram_extreme(&[a], Extreme::Largest, EigenMethod::Dense, "t").unwrap();
        let it = gram_extreme(&[a], Extreme::Largest, EigenMethod::Iterative, "t").unwrap();
        assert!(
            rel(it, dense) <= 1e-10,
            "{name}: lanczos {it} vs dense {dense}"
        );
        let dmin = gram_extreme(&[a], Extreme::Smallest, EigenMethod::Dense, "t").unwrap();
        let imin = gram_extreme(&[a], Extreme::Smallest, EigenMethod::Iterative, "t").unwrap();
        assert!(
            (dmin - imin).abs() <= 1e-10 * dense,
            "{name}: lmin {imin} vs dense {dmin}"
        );
        // whole problem with n = 20 workers: every constant agrees
        let p = Problem::build(&ProblemConfig::new(name, 20, ProblemKind::Logistic)).unwrap();
        let sd = p.smoothness_with(EigenMethod::Dense).unwrap();
        let si = p.smoothness_with(EigenMethod::Iterative).unwrap();
        assert!(rel(si.l, sd.l) <= 1e-10);
        for (x, y) in si.l_i.iter().zip(&sd.l_i) {
            assert!(rel(*x, *y) <= 1e-10, "{name}: L_i {x} vs {y}");
        }
        assert!(rel(si.l_tilde, sd.l_tilde) <= 1e-10);
        assert_eq!(si.mu, None);
        // L = lambda_max / (4N) + 2 lambda, computed by hand
        assert!(rel(sd.l, dense / (4.0 * d.n_rows() as f64) + 0.2) <= 1e-12);
        assert!((quadratic_mean(&sd.l_i) - sd.l_tilde).abs() <= 1e-15 * sd.l_tilde);
        // weighted mean of the per-worker bounds dominates the global one
        assert!(sd.l <= sd.l_i.iter().cloned().fold(0.0, f64::max) * (1.0 + 1e-12));
        println!(
            "{name}: L = {:.10}, Ltilde = {:.10}, lambda_max = {dense:.10}",
            sd.l, sd.l_tilde
        );
    }
}

#[test]
fn phishing_rows_have_unit_norm_so_lambda_max_is_bounded_by_n() {
    let d = datasets::load("phishing").unwrap();
    let lmax = gram_extreme(&[d.x()], Extreme::Largest, EigenMethod::Auto, "t").unwrap();
    let n = d.n_rows() as f64;
    // trace(A^T A) = sum_j ||a_j||^2 = N * 30 * 0.18257^2 ~ N
    let trace: f64 = d.x().values().iter().map(|v| v * v).sum();
    assert!((trace / n - 30.0 * 0.18257f64 * 0.18257).abs() < 1e-9);
    assert!(lmax <= trace && lmax >= trace / 68.0);
}

#[test]
fn least_squares_constants_follow_the_code_convention() {
    let p = Problem::build(&ProblemConfig::new(
        "mushrooms",
        20,
        ProblemKind::LeastSquares,
    ))
    .unwrap();
    let s = p.smoothness().unwrap();
    let d = datasets::load("mushrooms").unwrap();
    let lmax = gram_extreme(&[d.x()], Extreme::Largest, EigenMethod::Dense, "t").unwrap();
    assert!(rel(s.l, lmax / 8124.0) <= 1e-10);
    // mushrooms is one-hot encoded: groups of columns sum to the same vector,
    // so A is rank deficient and sigma_min(A) = 0 (up to round-off)
    let mu = s.mu.unwrap();
    assert!(mu >= 0.0 && mu <= 1e-9 * lmax, "mu = {mu}");
    // the shuffled and label-sorted splits leave L and mu unchanged
    for split in ["shuffled", "label-sorted"] {
        let mut cfg = ProblemConfig::new("mushrooms", 20, ProblemKind::LeastSquares);
        cfg.split = split.parse().unwrap();
        let s2 = Problem::build(&cfg).unwrap().smoothness().unwrap();
        assert!(rel(s2.l, s.l) <= 1e-10);
    }
}

#[test]
fn large_sets_agree_too() {
    // a9a (d = 123) and w8a (d = 300): dense Jacobi vs Lanczos
    for name in ["a9a", "w8a"] {
        let d = datasets::load(name).unwrap();
        let dense = gram_extreme(&[d.x()], Extreme::Largest, EigenMethod::Dense, "t").unwrap();
        let it = gram_extreme(&[d.x()], Extreme::Largest, EigenMethod::Iterative, "t").unwrap();
        assert!(rel(it, dense) <= 1e-10, "{name}: {it} vs {dense}");
        let s = Problem::build(&ProblemConfig::new(name, 20, ProblemKind::Logistic))
            .unwrap()
            .smoothness()
            .unwrap();
        println!("{name}: L = {:.10}, Ltilde = {:.10}", s.l, s.l_tilde);
        assert!(s.l > 0.2 && s.l_tilde >= s.l * 0.5);
    }
}
