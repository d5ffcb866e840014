//! Properties of the EF21 extensions (algorithms.md §6) on real data, checked
//! through [`Cluster`] directly: EF21-PP's sampling, aggregation and bit
//! accounting, EF21-BC's downlink accounting, EF21-Prox's sparsity and
//! gradient mapping, and EF21-PAGE's default probability and coin.
//!
//! The golden EF21-HB / EF21-BC trajectories and the exact reductions to EF21
//! are in `real_data.rs`.

use efkit_core::method::{
    decode_downlink, downlink_shared_key, Downlink, Estimator, Participation,
};
use efkit_runtime::config::{parse_with_hints, Config};
use efkit_runtime::setup::prepare;
use efkit_runtime::Cluster;

/// Logistic regression (nonconvex regularizer) on `dataset` with `workers`
/// workers, Gaussian x^0, the theory step times `mult`.
fn config(
    dataset: &str,
    workers: usize,
    method: &str,
    extra: &str,
    compressor: &str,
    mult: f64,
    tail: &str,
) -> Config {
    let s = format!(
        "seed = 7\nthreads = 2\n[problem]\nkind = \"logistic\"\ndataset = \"{dataset}\"\nworkers = {workers}\n\
         [method]\nname = \"{method}\"\n{extra}\n[compressor]\n{compressor}\n[step]\nrule = \"theory\"\nmultiplier = {mult}\n\
         [init]\nkind = \"gaussian\"\n{tail}"
    );
    parse_with_hints(&s).unwrap()
}

fn cluster(cfg: &Config) -> Cluster {
    prepare(cfg).unwrap().cluster
}

const TOP1: &str = "name = \"top-k\"\nk = 1";

/// Steps once; returns which workers took part (from their participation counters).
fn step_mask(c: &mut Cluster) -> Vec<bool> {
    let before: Vec<u64> = c
        .workers
        .iter()
        .map(|w| w.state.rounds_participated)
        .collect();
    c.step().unwrap();
    c.workers
        .iter()
        .zip(&before)
        .map(|(w, b)| w.state.rounds_participated - b == 1)
        .collect()
}

#[test]
fn pp_tau_nice_takes_exactly_k_clients_every_round() {
    let mut c = cluster(&config(
        "mushrooms",
        20,
        "ef21-pp",
        "participation = 0.25",
        TOP1,
        1.0,
        "",
    ));
    assert_eq!(c.parts.participation, Participation::Nice { k: 5 });
    // round 0 is the initialization: everyone
    assert!(step_mask(&mut c).iter().all(|&m| m));
    let mut per_worker = [0u32; 20];
    let rounds = 400;
    for _ in 0..rounds {
        let m = step_mask(&mut c);
        assert_eq!(
            m.iter().filter(|&&b| b).count(),
            5,
            "round {}",
            c.round() - 1
        );
        for (cnt, &b) in per_worker.iter_mut().zip(&m) {
            *cnt += u32::from(b);
        }
    }
    // each client participates with probability k/n = 1/4: 100 expected, sd ~ 8.7; 6 sd bound
    for (i, &cnt) in per_worker.iter().enumerate() {
        assert!(
            (48..=152).contains(&cnt),
            "worker {i} took part {cnt} times in {rounds} rounds"
        );
    }
    // the metric reports the last round's participants
    assert_eq!(c.metrics(0.0).participants, 5);
}

#[test]
fn pp_independent_sampling_matches_p_on_average() {
    let p = 0.3;
    let mut c = cluster(&config(
        "mushrooms",
        20,
        "ef21-pp",
        &format!("participation = {p}\nindependent = true"),
        TOP1,
        1.0,
        "",
    ));
    assert_eq!(c.parts.participation, Participation::Independent { p });
    c.step().unwrap();
    let rounds = 500usize;
    let counts: Vec<f64> = (0..rounds)
        .map(|_| step_mask(&mut c).iter().filter(|&&b| b).count() as f64)
        .collect();
    let n = 20.0;
    let total: f64 = counts.iter().sum();
    // total ~ Binomial(n R, p): mean n R p = 3000, sd = sqrt(n R p (1-p)) ~ 45.8; allow 5 sd
    let (mean, sd) = (
        n * rounds as f64 * p,
        (n * rounds as f64 * p * (1.0 - p)).sqrt(),
    );
    assert!(
        (total - mean).abs() <= 5.0 * sd,
        "total participations {total}, expected {mean} +- {sd}"
    );
    // and the count really varies per round: its variance is n p (1 - p) = 4.2
    // (sample variance of 500 draws has relative sd ~ sqrt(2/499) ~ 6%; allow +-35%)
    let m = total / rounds as f64;
    let var = counts.iter().map(|k| (k - m) * (k - m)).sum::<f64>() / (rounds as f64 - 1.0);
    let expect_var = n * p * (1.0 - p);
    assert!(
        (var / expect_var - 1.0).abs() < 0.35,
        "per-round variance {var}, expected {expect_var}"
    );
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm
}

#[test]
fn pp_server_g_is_the_mean_of_all_workers_g_including_stale_ones() {
    for extra in [
        "participation = 0.2",
        "participation = 0.35\nindependent = true",
    ] {
        let mut c = cluster(&config(
            "a9a",
            20,
            "ef21-pp",
            extra,
            "name = \"top-k\"\nk = 2",
            16.0,
            "",
        ));
        let d = c.server.state.x.len();
        let mut stale_seen = 0;
        for _ in 0..40 {
            let before: Vec<Vec<f64>> = c.workers.iter().map(|w| w.state.g.clone()).collect();
            let m = step_mask(&mut c);
            let mut mean = vec![0.0; d];
            for (i, w) in c.workers.iter().enumerate() {
                if !m[i] {
                    // a non-participant's g_i is untouched and still counts in the average
                    assert_eq!(w.state.g, before[i]);
                    stale_seen += 1;
                }
                for (a, v) in mean.iter_mut().zip(&w.state.g) {
                    *a += v / 20.0;
                }
            }
            let e = rel_err(&c.server.state.g, &mean);
            assert!(
                e <= 1e-12,
                "{extra}: round {}: ||g - mean_i g_i|| / ||mean_i g_i|| = {e:e}",
                c.round() - 1
            );
        }
        assert!(stale_seen > 100, "{extra}: the test needs stale workers");
    }
}

#[test]
fn pp_bits_are_counted_only_for_participants() {
    let mut c = cluster(&config(
        "mushrooms",
        20,
        "ef21-pp",
        "participation = 0.25",
        TOP1,
        1.0,
        "",
    ));
    for _ in 0..30 {
        let up: Vec<u64> = c.workers.iter().map(|w| w.state.bits_up_wire).collect();
        let up_paper: Vec<u64> = c.workers.iter().map(|w| w.state.bits_up_paper).collect();
        let down: Vec<u64> = c.workers.iter().map(|w| w.state.bits_down_wire).collect();
        let down_msg = c.server.state.next_wire.wire_bits();
        let m = step_mask(&mut c);
        for (i, w) in c.workers.iter().enumerate() {
            if m[i] {
                assert_eq!(
                    w.state.bits_up_wire - up[i],
                    w.scratch.wire.wire_bits(),
                    "worker {i}"
                );
                assert_eq!(
                    w.state.bits_up_paper - up_paper[i],
                    w.scratch.wire.paper_bits,
                    "worker {i}"
                );
                assert!(w.scratch.wire.wire_bits() > 0);
                assert_eq!(w.state.bits_down_wire - down[i], down_msg, "worker {i}");
            } else {
                assert_eq!(
                    w.state.bits_up_wire, up[i],
                    "non-participant {i} was charged uplink bits"
                );
                assert_eq!(w.state.bits_up_paper, up_paper[i]);
                assert_eq!(
                    w.state.bits_down_wire, down[i],
                    "non-participant {i} was charged downlink bits"
                );
            }
        }
    }
    // the metrics: average over all clients, and per participation
    let rounds = c.round();
    let m = c.metrics(0.0);
    let total: u64 = c.workers.iter().map(|w| w.state.bits_up_wire).sum();
    let parts: u64 = c.workers.iter().map(|w| w.state.rounds_participated).sum();
    assert_eq!(parts, 20 + 29 * 5);
    assert!((m.bits_up_wire - total as f64 / 20.0).abs() <= 1e-9 * m.bits_up_wire);
    let per = total as f64 / parts as f64 * rounds as f64;
    assert!((m.bits_up_wire_per_participant - per).abs() <= 1e-9 * per);
    assert!(m.bits_up_wire_per_participant > m.bits_up_wire);
}

#[test]
fn bc_downlink_bits_equal_the_encoded_downlink() {
    let tail = "[server_compressor]\nname = \"top-k\"\nk = 4\n";
    let mut c = cluster(&config("mushrooms", 20, "ef21-bc", "", TOP1, 8.0, tail));
    let d = c.server.state.x.len();
    let mut decoded = Downlink::default();
    for t in 0..25u64 {
        let wire = c.server.state.next_wire.clone();
        let expect_down = c.server.state.next_down.clone();
        // what travels decodes to what the workers apply
        let key = if t == 0 {
            0
        } else {
            downlink_shared_key(c.seed, t - 1)
        };
        decode_downlink(&wire.bytes, d, &c.codecs, t, key, &mut decoded).unwrap();
        assert_eq!(decoded.is_model, expect_down.is_model);
        if decoded.is_model {
            assert_eq!(decoded.x, expect_down.x);
        } else {
            assert_eq!(decoded.replace, expect_down.replace);
            assert!(decoded.vec.bit_eq(&expect_down.vec), "round {t}");
        }
        // sizes: round 0 = the f64 model, round 1 = the dense f32 estimate, then Top-4
        // (2-bit tag + values + indices, rounded up to bytes)
        let bits = wire.wire_bits();
        match t {
            0 => assert_eq!(bits, (2 + 64 * d as u64).div_ceil(8) * 8),
            1 => assert!(bits >= 32 * d as u64 && bits < 33 * d as u64, "{bits}"),
            _ => {
                assert!(
                    (2 + 4 * 32..=4 * (32 + 32) + 64).contains(&bits),
                    "round {t}: {bits}"
                );
                assert_eq!(wire.paper_bits, 4 * 32);
            }
        }
        let before: Vec<(u64, u64)> = c
            .workers
            .iter()
            .map(|w| (w.state.bits_down_wire, w.state.bits_down_paper))
            .collect();
        let (server_x, server_g) = (c.server.state.x.clone(), c.server.state.g_bc.clone());
        c.step().unwrap();
        for (w, (bw, bp)) in c.workers.iter().zip(&before) {
            assert_eq!(w.state.bits_down_wire - bw, bits, "round {t}");
            assert_eq!(w.state.bits_down_paper - bp, wire.paper_bits, "round {t}");
            // the workers rebuilt the server's x^t (and, from round 1, its estimate g^t) from the messages alone
            assert_eq!(*w.state.x, server_x, "round {t}");
            if t > 0 {
                assert_eq!(w.state.g_server, server_g, "round {t}");
            }
        }
    }
}

#[test]
fn prox_l1_gives_a_sparse_iterate_and_a_decreasing_gradient_mapping() {
    let lambda = 0.01;
    let run = |prox: &str| -> (Cluster, Vec<f64>) {
        let mut c = cluster(&config(
            "mushrooms",
            20,
            "ef21-prox",
            &format!("prox = {prox}"),
            "name = \"top-k\"\nk = 2",
            64.0,
            "",
        ));
        let mut gm = vec![c.evaluate().1];
        for r in 1..=600 {
            c.step().unwrap();
            if r % 100 == 0 {
                gm.push(c.evaluate().1);
            }
        }
        (c, gm)
    };
    let (mut c, gm) = run(&format!("{{ kind = \"l1\", lambda = {lambda} }}"));
    let x = c.server.state.x.clone();
    let d = x.len();
    let nnz = x.iter().filter(|v| **v != 0.0).count();
    assert!(nnz * 2 <= d, "l1: {nnz} of {d} coordinates nonzero");
    // the mapping is not monotone round by round (EF21's Lyapunov function also holds the
    // distortion of the g_i), but it must go down by orders of magnitude along the run
    let (first, mid, last) = (gm[0], gm[gm.len() / 2], gm[gm.len() - 1]);
    assert!(
        last * 1e3 < first && last < mid && mid < first,
        "gradient mapping {gm:?}"
    );
    // what a small mapping means, checked with gradients from the oracles: with
    // G = (x - soft(x - gamma grad f, gamma lambda))/gamma and |G_k| <= e,
    //   x_k = 0:                 |grad_k f| <= lambda + e,
    //   |x_k| > gamma e:         grad_k f + lambda sign(x_k) = G_k, so |.| <= e,
    //   0 < |x_k| <= gamma e:    |grad_k f| <= lambda + 3 e.
    let e = last.sqrt() * (1.0 + 1e-9) + 1e-12;
    let gamma = c.parts.gamma;
    let mut g = vec![0.0; d];
    let mut gi = vec![0.0; d];
    for o in c.oracles.iter_mut() {
        o.loss_grad(&x, &mut gi);
        g.iter_mut().zip(&gi).for_each(|(a, b)| *a += b / 20.0);
    }
    let mut checked_support = 0;
    for k in 0..d {
        if x[k] == 0.0 {
            assert!(
                g[k].abs() <= lambda + e,
                "coordinate {k}: x = 0 but |grad| = {}",
                g[k].abs()
            );
        } else if x[k].abs() > gamma * e {
            assert!(
                (g[k] + lambda * x[k].signum()).abs() <= e,
                "coordinate {k}: x = {}, grad = {}",
                x[k],
                g[k]
            );
            checked_support += 1;
        } else {
            assert!(
                g[k].abs() <= lambda + 3.0 * e,
                "coordinate {k}: x = {}, grad = {}",
                x[k],
                g[k]
            );
        }
    }
    assert!(checked_support > 0);
    // control: without the l1 term the iterate stays dense
    let (c0, _) = run("{ kind = \"zero\" }");
    assert!(c0.server.state.x.iter().filter(|v| **v != 0.0).count() > d * 9 / 10);
}

#[test]
fn page_default_p_is_mean_tau_over_tau_plus_n_and_the_coin_uses_it() {
    for (batch, shared) in [("0.1", true), ("7", true), ("0.1", false)] {
        let extra = format!("batch = {batch}\nshared_coin = {shared}");
        let mut c = cluster(&config("mushrooms", 20, "ef21-page", &extra, TOP1, 1.0, ""));
        let sizes: Vec<usize> = c.oracles.iter().map(|o| o.num_samples().unwrap()).collect();
        let taus: Vec<usize> = sizes
            .iter()
            .map(|&m| {
                if batch == "7" {
                    7
                } else {
                    (0.1 * m as f64).floor() as usize
                }
            })
            .collect();
        let expect = sizes
            .iter()
            .zip(&taus)
            .map(|(&m, &t)| t as f64 / (t + m) as f64)
            .sum::<f64>()
            / 20.0;
        let p = match c.parts.estimator {
            Estimator::Page { p, shared_coin, .. } => {
                assert_eq!(shared_coin, shared);
                p
            }
            e => panic!("not PAGE: {e:?}"),
        };
        assert!(
            (p - expect).abs() <= 1e-15 * expect,
            "p = {p}, mean_i tau_i/(tau_i+N_i) = {expect}"
        );
        // the coin: a full gradient costs N_i samples, a PAGE step 2 tau_i
        c.step().unwrap();
        let rounds = 1500;
        let mut full = 0usize;
        for _ in 0..rounds {
            let before: Vec<u64> = c.workers.iter().map(|w| w.state.samples).collect();
            c.step().unwrap();
            let kinds: Vec<bool> = c
                .workers
                .iter()
                .zip(&before)
                .enumerate()
                .map(|(i, (w, b))| {
                    let used = (w.state.samples - b) as usize;
                    assert!(
                        used == sizes[i] || used == 2 * taus[i],
                        "worker {i} used {used} samples"
                    );
                    used == sizes[i]
                })
                .collect();
            if shared {
                assert!(
                    kinds.iter().all(|&k| k == kinds[0]),
                    "shared coin, but workers disagree: {kinds:?}"
                );
            }
            full += kinds.iter().filter(|&&k| k).count();
        }
        // full gradients ~ Binomial(R m, p) with m = 20 (per-worker coins) or m = 1 counted 20 times (shared)
        let m = if shared { 1.0 } else { 20.0 };
        let draws = rounds as f64 * m;
        let got = full as f64 / if shared { 20.0 } else { 1.0 };
        let sd = (draws * p * (1.0 - p)).sqrt();
        assert!(
            (got - draws * p).abs() <= 5.0 * sd,
            "batch {batch}, shared {shared}: {got} full gradients, expected {} +- {sd}",
            draws * p
        );
    }
}

/// With a model downlink the workers hold the broadcast model itself (one
/// shared copy per process, not n copies per round) and it equals the
/// server's x^t (that the server recycles its model buffers instead of
/// allocating is checked in `steady_alloc.rs`); EF21-BC workers, who step
/// their own reconstruction, own theirs.
#[test]
fn model_downlink_is_shared_not_copied() {
    use std::sync::Arc;
    let mut c = cluster(&config("mushrooms", 5, "ef21", "", TOP1, 1.0, ""));
    for t in 0..6 {
        let server_x = c.server.state.x.clone();
        c.step().unwrap();
        for w in &c.workers {
            assert!(Arc::ptr_eq(&w.state.x, &c.workers[0].state.x), "round {t}");
            assert_eq!(*w.state.x, server_x, "round {t}");
        }
        // the next broadcast is a new buffer: last round's stays intact
        assert_eq!(*c.server.state.next_down.x, c.server.state.x);
        assert!(!Arc::ptr_eq(
            &c.server.state.next_down.x,
            &c.workers[0].state.x
        ));
    }
    let tail = "[server_compressor]\nname = \"top-k\"\nk = 4\n";
    let mut c = cluster(&config("mushrooms", 5, "ef21-bc", "", TOP1, 1.0, tail));
    for _ in 0..3 {
        c.step().unwrap();
    }
    for w in &c.workers[1..] {
        assert!(!Arc::ptr_eq(&w.state.x, &c.workers[0].state.x));
        assert_eq!(w.state.x, c.workers[0].state.x);
    }
}
