//! Momentum methods (algorithms.md §7): EF21-SGDM with eta = 1 is EF21-SGD bit
//! for bit, EF21-SGDM / EF21-SGD2M against an independent computation, the
//! EF21-SGD-ideal preset, and the lean loop (`efkit_runtime::lean`) against
//! the Cluster bit for bit.

mod common;

use common::{bits_eq, grad, mean_grad_norm_sq, shards, top_k, Dense};
use efkit_core::compress::{build, CompressorSpec, ValueFormat};
use efkit_core::method::{decode_uplink, uplink_shared_key, BatchSize, Codecs, MethodSpec, Uplink};
use efkit_core::oracle::Oracle;
use efkit_problems::noisy::{NoiseKind, NoisyQuadratic};
use efkit_runtime::config::{parse_with_hints, Config};
use efkit_runtime::lean::run_shared;
use efkit_runtime::setup::prepare;
use efkit_runtime::setup_sgdm::{build_cluster, SgdmProblem, SgdmSetup};
use efkit_runtime::{Cluster, Control, RoundMetrics, StopRules};

fn mushrooms(method: &str, extra: &str, gamma: f64, rounds: u64) -> Config {
    let s = format!(
        "seed = 5\nthreads = 2\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 20\n[method]\nname = \"{method}\"\n{extra}\n[compressor]\nname = \"top-k\"\nk = 1\nvalues = \"f64\"\n[step]\nrule = \"absolute\"\nvalue = {gamma}\n[stop]\nmax_rounds = {rounds}\n"
    );
    parse_with_hints(&s).unwrap()
}

/// Runs `rounds` rounds and returns the metrics of every round (round 0 included).
fn trajectory(c: &mut Cluster, rounds: u64) -> Vec<RoundMetrics> {
    let rules = StopRules {
        max_rounds: rounds,
        tol: None,
        time_limit: None,
        blowup: 1e6,
        log_every: 1,
    };
    let mut rows = Vec::new();
    c.run(&rules, |m| {
        let mut m = m.clone();
        m.seconds = 0.0;
        rows.push(m);
        Control::Continue
    });
    rows
}

/// eta = 1: v = 0 * v + 1 * grad = grad, so EF21-SGDM is EF21-SGD, bit for bit, on
/// mushrooms with minibatches of 5% of each shard. The initial momentum batch must
/// be the same minibatch EF21-SGD draws in round 0 (init_batch = batch); with the
/// default init_batch (the full local data) only g_i^0 differs.
#[test]
fn sgdm_with_eta_one_is_ef21_sgd_bit_for_bit() {
    let rounds = 40;
    let mut sgd = prepare(&mushrooms("ef21-sgd", "batch = 0.05", 0.5, rounds))
        .unwrap()
        .cluster;
    let mut sgdm = prepare(&mushrooms(
        "ef21-sgdm",
        "eta = 1.0\nbatch = 0.05\ninit_batch = 0.05",
        0.5,
        rounds,
    ))
    .unwrap()
    .cluster;
    for t in 0..rounds {
        sgd.step().unwrap();
        sgdm.step().unwrap();
        assert!(
            bits_eq(&sgd.server.state.x, &sgdm.server.state.x),
            "round {t}: x differs"
        );
        assert!(
            bits_eq(&sgd.server.state.g, &sgdm.server.state.g),
            "round {t}: g differs"
        );
    }
    let (a, b) = (sgd.metrics(0.0), sgdm.metrics(0.0));
    assert_eq!(a.grad_norm_sq.to_bits(), b.grad_norm_sq.to_bits());
    assert_eq!(a.bits_up_wire, b.bits_up_wire);
    // the trajectory really is stochastic: another seed gives another x
    let mut other = mushrooms("ef21-sgd", "batch = 0.05", 0.5, rounds);
    other.seed = 6;
    let mut c = prepare(&other).unwrap().cluster;
    for _ in 0..rounds {
        c.step().unwrap();
    }
    assert!(!bits_eq(&c.server.state.x, &sgd.server.state.x));
    // default init_batch: the full local gradient in round 0 -> a different run
    let mut full_init = prepare(&mushrooms(
        "ef21-sgdm",
        "eta = 1.0\nbatch = 0.05",
        0.5,
        rounds,
    ))
    .unwrap()
    .cluster;
    full_init.step().unwrap();
    let mut sgd0 = prepare(&mushrooms("ef21-sgd", "batch = 0.05", 0.5, rounds))
        .unwrap()
        .cluster;
    sgd0.step().unwrap();
    assert!(!bits_eq(&full_init.server.state.x, &sgd0.server.state.x));
}

// ---------------------------------------------------------------------------
// Independent f64 implementation (dense rows, naive loops) of EF21-SGDM and
// EF21-SGD2M from algorithms.md §7.2-7.3 with full local batches (deterministic).

/// x^0 = 0, v_i^0 (= u_i^0) = g_i^0 = grad f_i(x^0) (B_init = N_i, dense init); then
/// x = x - gamma mean g_i; v_i = (1-eta) v_i + eta grad f_i(x); [u_i = (1-eta) u_i + eta v_i];
/// g_i += Top1(v_i (or u_i) - g_i).
fn independent(sh: &[Dense], gamma: f64, eta: f64, double: bool, rounds: usize) -> Vec<f64> {
    let d = 112;
    let mut x = vec![0.0; d];
    let mut v: Vec<Vec<f64>> = sh.iter().map(|s| grad(s, &x, 0.1)).collect();
    let mut u = v.clone();
    let mut gi = v.clone();
    let mut out = vec![mean_grad_norm_sq(sh, &x)];
    for _ in 0..rounds {
        for k in 0..d {
            x[k] -= gamma * gi.iter().map(|w| w[k]).sum::<f64>() / 20.0;
        }
        out.push(mean_grad_norm_sq(sh, &x));
        for (i, s) in sh.iter().enumerate() {
            let gr = grad(s, &x, 0.1);
            for k in 0..d {
                v[i][k] = (1.0 - eta) * v[i][k] + eta * gr[k];
                u[i][k] = (1.0 - eta) * u[i][k] + eta * v[i][k];
            }
            let h = if double { &u[i] } else { &v[i] };
            let c = top_k(&(0..d).map(|k| h[k] - gi[i][k]).collect::<Vec<_>>(), 1);
            for k in 0..d {
                gi[i][k] += c[k];
            }
        }
    }
    out
}

#[test]
fn sgdm_and_sgd2m_match_independent_computation() {
    let sh = shards();
    let (gamma, eta, rounds) = (0.5, 0.3, 12);
    for (name, double) in [("ef21-sgdm", false), ("ef21-sgd2m", true)] {
        let expect = independent(&sh, gamma, eta, double, rounds);
        let mut cfg = mushrooms(name, "eta = 0.3\nbatch = 1.0", gamma, rounds as u64);
        cfg.init.kind = "zeros".into();
        let mut c = prepare(&cfg).unwrap().cluster;
        let rows = trajectory(&mut c, rounds as u64);
        assert_eq!(rows.len(), expect.len());
        for (r, e) in rows.iter().zip(&expect) {
            assert!(
                (r.grad_norm_sq - e).abs() <= 1e-9 * e.abs(),
                "{name} round {}: {} vs {e}",
                r.round,
                r.grad_norm_sq
            );
        }
        // momentum really acts: the run differs from eta = 1 (EF21 with full gradients)
        let plain = independent(&sh, gamma, 1.0, false, rounds);
        assert!((plain[rounds] - expect[rounds]).abs() > 1e-6 * expect[rounds]);
    }
}

#[test]
fn sgd_ideal_preset_needs_a_batch_and_sends_dense() {
    let q = SgdmProblem::NoisyQuadratic {
        dim: 4,
        noise: NoiseKind::Asymmetric,
        sigma: 0.5,
    };
    let mut s = SgdmSetup {
        problem: q,
        workers: 2,
        method: MethodSpec::named("ef21-sgd-ideal"),
        compressor: CompressorSpec {
            k: Some(1),
            ..CompressorSpec::named("top-k")
        },
        gamma: 0.1,
        x0: None,
        seed: 3,
        threads: 1,
    };
    let e = build_cluster(&s).err().unwrap().to_string();
    assert!(e.contains("method.batch"), "{e}");
    s.method.eta = Some(0.5);
    s.method.batch = Some(BatchSize::Count(1));
    let e = build_cluster(&s).err().unwrap().to_string();
    assert!(e.contains("method.eta"), "{e}");
    s.method.eta = None;
    let mut c = build_cluster(&s).unwrap();
    for _ in 0..3 {
        c.step().unwrap();
        for w in &c.workers {
            // the uplink is g_i itself, dense (4 f32 values = 128 bits), and decodes back
            assert!(w.scratch.up.vec.dense);
            assert_eq!(w.scratch.wire.bytes.len(), 16);
            let mut dec = Uplink::default();
            let round = c.round() - 1;
            decode_uplink(
                &w.scratch.wire.bytes,
                &c.parts,
                &c.codecs,
                round,
                uplink_shared_key(3, w.state.id, round),
                &mut dec,
            )
            .unwrap();
            assert!(dec.vec.bit_eq(&w.scratch.up.vec));
            // g_i = x + C(noise): it differs from x in exactly one coordinate (Top-1)
            let differs = w
                .state
                .g
                .iter()
                .zip(w.state.x.iter())
                .filter(|(g, x)| (*g - *x).abs() > 1e-6)
                .count();
            assert_eq!(differs, 1, "{:?} vs {:?}", w.state.g, w.state.x);
        }
    }
}

// ---------------------------------------------------------------------------
// The lean loop against the Cluster.

fn noisy_setup(method: MethodSpec, workers: usize, values: ValueFormat, gamma: f64) -> SgdmSetup {
    SgdmSetup {
        problem: SgdmProblem::NoisyQuadratic {
            dim: 2,
            noise: NoiseKind::Asymmetric,
            sigma: 0.5,
        },
        workers,
        method,
        compressor: CompressorSpec {
            k: Some(1),
            values: Some(values),
            ..CompressorSpec::named("top-k")
        },
        gamma,
        x0: Some(vec![0.3, -0.2]),
        seed: 9,
        threads: 2,
    }
}

fn methods() -> Vec<MethodSpec> {
    let b = Some(BatchSize::Count(1));
    vec![
        MethodSpec {
            batch: b,
            ..MethodSpec::named("ef21-sgd")
        },
        MethodSpec {
            batch: Some(BatchSize::Count(3)),
            ..MethodSpec::named("ef21-sgd")
        },
        MethodSpec {
            batch: b,
            ..MethodSpec::named("ef21-sgd-ideal")
        },
        MethodSpec {
            batch: b,
            eta: Some(0.1),
            ..MethodSpec::named("ef21-sgdm")
        },
        MethodSpec {
            batch: b,
            eta: Some(0.2),
            init_batch: Some(BatchSize::Count(4)),
            ..MethodSpec::named("ef21-sgd2m")
        },
    ]
}

fn lean(s: &SgdmSetup, rounds: u64, log_every: u64) -> efkit_runtime::lean::LeanRun {
    let c = build_cluster(s).unwrap();
    let mut o = NoisyQuadratic::new(2, NoiseKind::Asymmetric, 0.5).unwrap();
    let codecs = Codecs {
        uplink: build(&s.compressor, 2).unwrap(),
        dense: build(
            &CompressorSpec {
                values: s.compressor.values,
                ..CompressorSpec::named("identity")
            },
            2,
        )
        .unwrap(),
        downlink: None,
    };
    run_shared(
        &c.parts,
        &codecs,
        &mut o as &mut dyn Oracle,
        s.workers,
        s.x0.as_deref().unwrap(),
        s.seed,
        rounds,
        log_every,
    )
    .unwrap()
}

#[test]
fn lean_loop_matches_the_cluster_bit_for_bit() {
    for m in methods() {
        for values in [ValueFormat::F64, ValueFormat::F32] {
            // n = 1: ||grad f||^2 of every round, bit for bit
            let s = noisy_setup(m.clone(), 1, values, 0.05);
            let mut c = build_cluster(&s).unwrap();
            let rows = trajectory(&mut c, 150);
            let l = lean(&s, 150, 1);
            assert_eq!(l.rounds, rows.iter().map(|r| r.round).collect::<Vec<_>>());
            for (a, b) in rows.iter().zip(&l.grad_norm_sq) {
                assert_eq!(
                    a.grad_norm_sq.to_bits(),
                    b.to_bits(),
                    "{} {values:?} n = 1 round {}",
                    m.name,
                    a.round
                );
            }
            assert!(bits_eq(&c.server.state.x, &l.x));
            // n = 5: the final iterate after several horizons
            let s = noisy_setup(m.clone(), 5, values, 0.05);
            for rounds in [1u64, 2, 7, 60] {
                let mut c = build_cluster(&s).unwrap();
                for _ in 0..rounds {
                    c.step().unwrap();
                }
                let l = lean(&s, rounds, 10);
                assert!(
                    bits_eq(&c.server.state.x, &l.x),
                    "{} {values:?} n = 5 after {rounds}: {:?} vs {:?}",
                    m.name,
                    c.server.state.x,
                    l.x
                );
                assert_eq!(*l.rounds.last().unwrap(), rounds);
            }
        }
    }
}

/// The mechanism of §7.1 with our asymmetric noise: EF21-SGD-ideal drifts to
/// x = -E[Top1(xi)] = (0, sigma/2), where ||grad f||^2 = sigma^2/4, and stays
/// there; with Gaussian (symmetric) noise it stays near the optimum; EF21-SGDM
/// stays near the optimum either way.
#[test]
fn ideal_method_is_biased_by_asymmetric_noise_only() {
    let sigma = 0.5;
    let plateau = |method: MethodSpec, noise: NoiseKind| -> f64 {
        let s = SgdmSetup {
            problem: SgdmProblem::NoisyQuadratic {
                dim: 2,
                noise,
                sigma,
            },
            x0: Some(vec![0.0, 0.0]),
            ..noisy_setup(method, 4, ValueFormat::F64, 0.01)
        };
        let c = build_cluster(&s).unwrap();
        let mut o = NoisyQuadratic::new(2, noise, sigma).unwrap();
        let codecs = Codecs {
            uplink: build(&s.compressor, 2).unwrap(),
            dense: build(
                &CompressorSpec {
                    values: Some(ValueFormat::F64),
                    ..CompressorSpec::named("identity")
                },
                2,
            )
            .unwrap(),
            downlink: None,
        };
        let l = run_shared(&c.parts, &codecs, &mut o, 4, &[0.0, 0.0], s.seed, 4000, 1).unwrap();
        // mean over rounds 1000..4000 (x relaxes at rate gamma = 0.01)
        l.grad_norm_sq[1000..].iter().sum::<f64>() / 3001.0
    };
    let b = Some(BatchSize::Count(1));
    let ideal = MethodSpec {
        batch: b,
        ..MethodSpec::named("ef21-sgd-ideal")
    };
    let p = plateau(ideal.clone(), NoiseKind::Asymmetric);
    assert!(
        (p - sigma * sigma / 4.0).abs() < 0.015,
        "ideal, asymmetric: {p}"
    );
    let p = plateau(ideal, NoiseKind::Gaussian);
    assert!(p < 0.01, "ideal, gaussian: {p}");
    let sgdm = MethodSpec {
        batch: b,
        eta: Some(0.05),
        ..MethodSpec::named("ef21-sgdm")
    };
    let p = plateau(sgdm, NoiseKind::Asymmetric);
    assert!(p < 0.0125, "sgdm, asymmetric: {p}");
}

/// EF21-W needs the L_i, which only the LibSVM problems compute: elsewhere it
/// is refused before any work, naming the key.
#[test]
fn ef21_w_is_refused_without_smoothness_constants() {
    let cfg = efkit_runtime::config::parse_with_hints(
        "[problem]\nkind = \"noisy-quadratic\"\nworkers = 2\ndim = 5\nnoise = \"gaussian\"\nsigma = 1.0\n[method]\nname = \"ef21-w\"\n[compressor]\nname = \"top-k\"\nk = 1\n[step]\nrule = \"absolute\"\nvalue = 0.1\n",
    )
    .unwrap();
    let e = efkit_runtime::setup::prepare(&cfg)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("method") && e.contains("ef21-w"), "{e}");
}

/// A checkpoint written before the model downlink put its values on the
/// byte grid holds the older layout (2-bit tag, then the values, same
/// length); restoring it re-encodes the model it carries, so the resumed
/// run sends decodable bytes and continues as the uninterrupted one.
#[test]
fn a_restored_model_downlink_in_the_older_layout_is_re_encoded() {
    use efkit_core::bits::BitWriter;
    use efkit_core::method::{decode_downlink, encode_model, Downlink, Wire};
    let cfg = mushrooms("ef21", "", 0.5, 6);
    let mut whole = prepare(&cfg).unwrap().cluster;
    let full = trajectory(&mut whole, 6);
    let mut first = prepare(&cfg).unwrap().cluster;
    trajectory(&mut first, 3);
    let mut state = first.snapshot(0.0, 0.0);
    let x = state.server.next_down.x.to_vec();
    let mut w = BitWriter::new();
    w.write_bits(0, 2);
    for &v in &x {
        w.write_f64(v);
    }
    let old_bytes = w.finish().to_vec();
    assert_eq!(old_bytes.len(), state.server.next_wire.bytes.len());
    state.server.next_wire.bytes = old_bytes.clone();
    let d = x.len();
    let codecs = &first.codecs;
    let mut out = Downlink::default();
    assert!(decode_downlink(&old_bytes, d, codecs, 0, 0, &mut out).is_err());
    let mut resumed = prepare(&cfg).unwrap().cluster;
    resumed.restore(state).unwrap();
    let mut expected = Wire::default();
    encode_model(&x, &mut BitWriter::new(), &mut expected);
    assert_eq!(resumed.server.state.next_wire, expected);
    decode_downlink(
        &resumed.server.state.next_wire.bytes,
        d,
        codecs,
        0,
        0,
        &mut out,
    )
    .unwrap();
    assert!(bits_eq(&out.x, &x));
    let rules = StopRules {
        max_rounds: 6,
        tol: None,
        time_limit: None,
        blowup: 1e6,
        log_every: 1,
    };
    let mut rest = Vec::new();
    resumed.run_with(
        &rules,
        Some((full[0].loss, 0.0)),
        None,
        |m| {
            let mut m = m.clone();
            m.seconds = 0.0;
            rest.push(m);
            Control::Continue
        },
        |_| Ok(()),
    );
    assert_eq!(rest.last(), full.last());
}
