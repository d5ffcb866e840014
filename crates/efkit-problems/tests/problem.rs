//! Problem builder and oracles on the real datasets.

use efkit_core::oracle::Oracle;
use efkit_core::rng::{stream, Purpose};
use efkit_problems::datasets;
use efkit_problems::oracles::LogisticNonconvex;
use efkit_problems::problem::{Problem, ProblemConfig, ProblemKind};
use efkit_problems::split::SplitKind;
use efkit_problems::ProblemError;
use rand::Rng as _;

fn random_x(d: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = stream(seed, Purpose::Setup, 0, 0);
    (0..d).map(|_| rng.gen_range(-scale..scale)).collect()
}

#[test]
fn mushrooms_twenty_workers_in_file_order() {
    let p = Problem::build(&ProblemConfig::new("mushrooms", 20, ProblemKind::Logistic)).unwrap();
    let mut want = vec![406; 19];
    want.push(410);
    assert_eq!(p.shard_sizes(), want);
    assert_eq!(p.dim(), 112);
    assert_eq!(p.lambda(), 0.1);
    assert_eq!(p.split_kind(), SplitKind::Contiguous);
    assert_eq!(p.dataset_info().rows, 8_124);
    let data = datasets::load("mushrooms").unwrap();
    // worker 1 holds rows 406..812, stored contiguously, labels mapped
    let s = p.shard(1);
    assert_eq!(s.rows, (406..812).collect::<Vec<_>>());
    for (k, &r) in s.rows.iter().enumerate() {
        assert_eq!(s.a.row(k), data.x().row(r));
        assert_eq!(s.y[k], data.y()[r]);
    }
    let oracles = p.oracles();
    assert_eq!(oracles.len(), 20);
    assert_eq!(oracles[19].num_samples(), Some(410));
}

#[test]
fn every_split_covers_all_rows_once() {
    for split in [
        SplitKind::Contiguous,
        SplitKind::Shuffled,
        SplitKind::LabelSorted,
    ] {
        let data = datasets::load("phishing").unwrap();
        let p = Problem::from_dataset(&data, 7, ProblemKind::Logistic, split, 5, None).unwrap();
        let mut all: Vec<usize> = (0..7).flat_map(|i| p.shard(i).rows.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..11_055).collect::<Vec<_>>());
        if split == SplitKind::LabelSorted {
            // heterogeneous: the first worker sees only label -1
            assert!(p.shard(0).y.iter().all(|&v| v == -1.0));
            assert!(p.shard(6).y.iter().all(|&v| v == 1.0));
        }
    }
}

#[test]
fn builder_errors() {
    let e = Problem::build(&ProblemConfig::new(
        "mushrooms",
        8_125,
        ProblemKind::Logistic,
    ))
    .unwrap_err();
    assert!(matches!(
        e,
        ProblemError::TooManyWorkers {
            rows: 8_124,
            workers: 8_125
        }
    ));
    let mut cfg = ProblemConfig::new("mushrooms", 4, ProblemKind::LeastSquares);
    cfg.lambda = Some(0.1);
    assert!(matches!(
        Problem::build(&cfg),
        Err(ProblemError::InvalidParam { .. })
    ));
    cfg.kind = ProblemKind::Logistic;
    cfg.lambda = Some(-1.0);
    assert!(Problem::build(&cfg).is_err());
    assert!(matches!(
        Problem::build(&ProblemConfig::new("covtype", 4, ProblemKind::Logistic)),
        Err(ProblemError::UnknownDataset { .. })
    ));
    assert_eq!(
        "least-squares".parse::<ProblemKind>().unwrap(),
        ProblemKind::LeastSquares
    );
    assert!("svm".parse::<ProblemKind>().is_err());
}

/// Central differences on a real shard (a9a, worker 0 of 20).
#[test]
fn gradients_on_real_data_match_finite_differences() {
    for kind in [ProblemKind::Logistic, ProblemKind::LeastSquares] {
        let p = Problem::build(&ProblemConfig::new("a9a", 20, kind)).unwrap();
        let mut o = p.oracle(0);
        let x = random_x(p.dim(), 0.5, 11);
        let mut g = vec![0.0; p.dim()];
        let f = o.loss_grad(&x, &mut g);
        assert_eq!(f, o.loss(&x));
        let h = 1e-6;
        let mut xp = x.clone();
        for k in (0..p.dim()).step_by(7) {
            xp[k] = x[k] + h;
            let fp = o.loss(&xp);
            xp[k] = x[k] - h;
            let fm = o.loss(&xp);
            xp[k] = x[k];
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - g[k]).abs() <= 1e-7 * (1.0 + g[k].abs()),
                "{kind} coord {k}: {} vs {fd}",
                g[k]
            );
        }
    }
}

#[test]
fn at_zero_the_logistic_loss_is_ln2_and_the_gradient_is_minus_mean_ya() {
    let data = datasets::load("w8a").unwrap();
    let (a, y) = data.clone().into_parts();
    let d = a.n_cols();
    let mut o = LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap();
    let mut g = vec![0.0; d];
    let f = o.loss_grad(&vec![0.0; d], &mut g);
    assert!((f - std::f64::consts::LN_2).abs() < 1e-12);
    let mut want = vec![0.0; d];
    for (j, &yj) in y.iter().enumerate() {
        let (idx, val) = a.row(j);
        for (&c, &v) in idx.iter().zip(val) {
            want[c as usize] -= 0.5 * yj * v / a.n_rows() as f64;
        }
    }
    for (k, (gk, wk)) in g.iter().zip(&want).enumerate() {
        assert!((gk - wk).abs() < 1e-13, "{k}: {gk} vs {wk}");
    }
}

#[test]
fn minibatch_of_all_rows_equals_full_gradient_on_real_shards() {
    let p = Problem::build(&ProblemConfig::new("phishing", 20, ProblemKind::Logistic)).unwrap();
    let x = random_x(p.dim(), 1.0, 3);
    for (i, mut o) in p.oracles().into_iter().enumerate() {
        let n = o.num_samples().unwrap();
        let all: Vec<u32> = (0..n as u32).collect();
        let (mut g1, mut g2) = (vec![0.0; p.dim()], vec![0.0; p.dim()]);
        let f1 = o.loss_grad(&x, &mut g1);
        let f2 = o.indexed_grad(&x, &all, &mut g2);
        assert_eq!((f1, &g1), (f2, &g2), "worker {i}");
        let mut rng = stream(1, Purpose::Sample, i as u64, 0);
        let mut drawn = Vec::new();
        let f3 = o.stochastic_grad(&x, n / 4, &mut rng, &mut drawn, &mut g2);
        assert_eq!(drawn.len(), n / 4);
        assert!(drawn.windows(2).all(|w| w[0] < w[1]));
        assert!(f3.is_finite());
        // a minibatch equals the full loss of the sub-shard of the drawn rows
        let rows: Vec<usize> = drawn.iter().map(|&j| j as usize).collect();
        let shard = p.shard(i);
        let sub = LogisticNonconvex::new(
            shard.a.select_rows(&rows),
            rows.iter().map(|&r| shard.y[r]).collect(),
            0.1,
        );
        let mut g3 = vec![0.0; p.dim()];
        assert_eq!(sub.unwrap().loss_grad(&x, &mut g3), f3);
        assert_eq!(g3, g2);
    }
}

#[test]
fn into_oracles_equals_oracles() {
    let p = Problem::build(&ProblemConfig::new(
        "mushrooms",
        3,
        ProblemKind::LeastSquares,
    ))
    .unwrap();
    let x = random_x(p.dim(), 1.0, 4);
    let mut a = p.oracles();
    let mut b = p.into_oracles();
    for (oa, ob) in a.iter_mut().zip(b.iter_mut()) {
        assert_eq!(oa.loss(&x), ob.loss(&x));
    }
}
