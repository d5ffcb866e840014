//! Safe-EF: reductions, convergence on a problem with a known solution, the
//! switch rule, bit accounting, determinism and the reference solver.

use efkit_core::compress::{build, CompressedVec, CompressorSpec, ValueFormat};
use efkit_core::method::{Codecs, MethodSpec, RoundCtx};
use efkit_core::oracle::Oracle;
use efkit_core::rng::Rng;
use efkit_core::safe::{
    decode_flag, decode_model, decode_scalar, decode_vector_uplink, ModelMessage, Rule, SafeCodecs,
    SafeServer, SafeSpec, SafeTheory,
};
use efkit_problems::constrained::{
    l1_regression, neyman_pearson, ConstrainedOracle, LossKind, NpClass, SubgradientBounds,
};
use efkit_problems::datasets;
use efkit_problems::split::SplitKind;
use efkit_runtime::cluster::Cluster;
use efkit_runtime::safe::{reference_solution, ReferenceOptions, SafeCluster, SafeStop};
use efkit_runtime::Control;

fn spec(name: &str, k: Option<usize>, values: ValueFormat) -> CompressorSpec {
    CompressorSpec {
        k,
        values: Some(values),
        ..CompressorSpec::named(name)
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// f_i(x) = ||x - p_i||_1, g_i(x) = x_1 + x_2 - s_i (d = 2).
struct Points {
    p: [f64; 2],
    s: f64,
}

impl ConstrainedOracle for Points {
    fn dim(&self) -> usize {
        2
    }
    fn num_samples(&self) -> Option<usize> {
        Some(1)
    }
    fn objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        if let Some(g) = grad {
            for k in 0..2 {
                let r = x[k] - self.p[k];
                g[k] = if r > 0.0 {
                    1.0
                } else if r < 0.0 {
                    -1.0
                } else {
                    0.0
                };
            }
        }
        (x[0] - self.p[0]).abs() + (x[1] - self.p[1]).abs()
    }
    fn constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        if let Some(g) = grad {
            g[0] = 1.0;
            g[1] = 1.0;
        }
        x[0] + x[1] - self.s
    }
    fn draw_batch(&mut self, _x: &[f64], _batch: usize, _rng: &mut Rng) {}
    fn batch_objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        self.objective(x, grad)
    }
    fn batch_constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        self.constraint(x, grad)
    }
    fn bounds(&self) -> SubgradientBounds {
        let m = 2f64.sqrt();
        SubgradientBounds {
            objective: m,
            constraint: m,
            objective_stochastic: m,
            constraint_stochastic: m,
        }
    }
}

const POINTS: [[f64; 2]; 4] = [[2.0, 3.0], [3.0, 2.0], [4.0, 1.5], [1.5, 4.0]];

fn points(s: [f64; 4]) -> Vec<Box<dyn ConstrainedOracle>> {
    POINTS
        .iter()
        .zip(s)
        .map(|(&p, s)| Box::new(Points { p, s }) as Box<dyn ConstrainedOracle>)
        .collect()
}

fn safe_parts(
    name: &str,
    step: f64,
    threshold: f64,
    values: ValueFormat,
    radius: Option<f64>,
) -> efkit_core::safe::SafeParts {
    let mut s = SafeSpec::named(name);
    s.step = Some(step);
    if name == "primal-dual" {
        s.dual_step_multiplier = Some(1.0);
    } else {
        s.threshold = Some(threshold);
    }
    s.scalar_values = values;
    s.parts(None, radius).unwrap()
}

#[test]
fn identity_without_server_compression_is_the_switching_subgradient_method_bit_for_bit() {
    let data = datasets::load("mushrooms").unwrap();
    let (n, r, gamma, c) = (4usize, 3.0, 0.05, 0.02);
    let p = neyman_pearson(
        &data,
        n,
        SplitKind::Shuffled,
        3,
        LossKind::Hinge,
        0.4,
        NpClass::Negative,
        Some(r),
    )
    .unwrap();
    let d = p.dim();
    let parts = safe_parts("safe-ef", gamma, c, ValueFormat::F64, Some(r));
    let codecs = SafeCodecs {
        uplink: build(&spec("identity", None, ValueFormat::F64), d).unwrap(),
        server: None,
    };
    let mut cl = SafeCluster::new(parts, codecs, p.oracles(), &vec![0.0; d], None, 5, 2);
    // the textbook method, written independently
    let mut oracles = p.oracles();
    let mut x = vec![0.0; d];
    let mut sum = vec![0.0; d];
    let mut productive = 0u64;
    let mut h = vec![0.0; d];
    let mut switches = 0;
    let mut last_flag = None;
    for t in 0..80 {
        let ghat = oracles
            .iter_mut()
            .map(|o| o.constraint(&x, None))
            .sum::<f64>()
            / n as f64;
        let flag = ghat <= c;
        if last_flag.is_some_and(|l| l != flag) {
            switches += 1;
        }
        last_flag = Some(flag);
        if flag {
            for (s, v) in sum.iter_mut().zip(&x) {
                *s += v;
            }
            productive += 1;
        }
        let mut acc = vec![0.0; d];
        for o in oracles.iter_mut() {
            if flag {
                o.objective(&x, Some(&mut h));
            } else {
                o.constraint(&x, Some(&mut h));
            }
            for (a, g) in acc.iter_mut().zip(&h) {
                *a += gamma * g;
            }
        }
        for (xi, a) in x.iter_mut().zip(&acc) {
            *xi -= a * (1.0 / n as f64);
        }
        let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if nx > r {
            let s = r / nx;
            x.iter_mut().for_each(|v| *v *= s);
        }
        cl.step().unwrap();
        assert_eq!(cl.server.state.flag, flag, "round {t}");
        assert_eq!(
            bits(&cl.server.state.x),
            bits(&x),
            "round {t}: server iterate"
        );
        for w in &cl.workers {
            assert_eq!(
                bits(&w.state.w),
                bits(&x),
                "round {t}: worker {} model",
                w.state.id
            );
            assert!(
                w.state.e.iter().all(|&e| e == 0.0),
                "identity leaves no error"
            );
        }
        assert_eq!(cl.server.state.productive, productive);
    }
    assert!(
        switches >= 2 && productive > 0 && productive < 80,
        "the test must exercise both steps: {switches} switches, {productive} productive"
    );
    let mut out = vec![0.0; d];
    for (o, s) in out.iter_mut().zip(&sum) {
        *o = s * (1.0 / productive as f64);
    }
    let nx = out.iter().map(|v| v * v).sum::<f64>().sqrt();
    if nx > r {
        let s = r / nx;
        out.iter_mut().for_each(|v| *v *= s);
    }
    assert_eq!(bits(&cl.output()), bits(&out));
}

/// A core-method oracle seeing only the objective of a constrained oracle.
struct ObjectiveOnly(Box<dyn ConstrainedOracle>);

impl Oracle for ObjectiveOnly {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn num_samples(&self) -> Option<usize> {
        self.0.num_samples()
    }
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        self.0.objective(x, Some(grad))
    }
    fn loss(&mut self, x: &[f64]) -> f64 {
        self.0.objective(x, None)
    }
    fn stochastic_grad(
        &mut self,
        _x: &[f64],
        _batch: usize,
        _rng: &mut Rng,
        _drawn: &mut Vec<u32>,
        _grad: &mut [f64],
    ) -> f64 {
        unreachable!("full-gradient comparison")
    }
    fn indexed_grad(&mut self, _x: &[f64], _idx: &[u32], _grad: &mut [f64]) -> f64 {
        unreachable!("full-gradient comparison")
    }
}

#[test]
fn with_an_inactive_constraint_safe_ef_is_compressed_ef14_subgradient_descent() {
    let data = datasets::load("mushrooms").unwrap();
    let n = 4;
    // no functional constraint: g = -1 everywhere, the switch always says "objective"
    let p = l1_regression(&data, n, SplitKind::Contiguous, 0, None, None).unwrap();
    let d = p.dim();
    let gamma = 0.02;
    for comp in [
        spec("top-k", Some(5), ValueFormat::F32),
        spec("rand-k", Some(7), ValueFormat::F32),
    ] {
        let parts = safe_parts("safe-ef", gamma, 0.0, ValueFormat::F32, None);
        let codecs = SafeCodecs {
            uplink: build(&comp, d).unwrap(),
            server: None,
        };
        let mut safe = SafeCluster::new(parts, codecs, p.oracles(), &vec![0.0; d], None, 11, 2);
        let n_local: Vec<Option<usize>> = p.shard_sizes().iter().map(|s| Some(s.0)).collect();
        let ef14 = MethodSpec::named("ef14").parts(gamma, n, &n_local).unwrap();
        let codecs = Codecs {
            uplink: build(&comp, d).unwrap(),
            dense: build(&CompressorSpec::named("identity"), d).unwrap(),
            downlink: None,
        };
        let oracles: Vec<Box<dyn Oracle>> = p
            .oracles()
            .into_iter()
            .map(|o| Box::new(ObjectiveOnly(o)) as Box<dyn Oracle>)
            .collect();
        let mut reference = Cluster::new(ef14, codecs, oracles, &vec![0.0; d], 11, 1);
        for t in 0..40 {
            safe.step().unwrap();
            reference.step().unwrap();
            assert!(
                safe.server.state.flag,
                "round {t}: the constraint is inactive"
            );
            assert_eq!(
                bits(&safe.server.state.x),
                bits(&reference.server.state.x),
                "{}: round {t}",
                comp.name
            );
            for (a, b) in safe.workers.iter().zip(&reference.workers) {
                assert_eq!(
                    bits(&a.state.e),
                    bits(&b.state.g),
                    "{}: round {t}: worker {} error",
                    comp.name,
                    a.state.id
                );
            }
        }
        assert_eq!(safe.server.state.productive, 40);
        assert!(safe.server.state.x.iter().any(|&v| v != 0.0));
    }
}

fn run_points(
    parts: efkit_core::safe::SafeParts,
    server: Option<usize>,
    rounds: u64,
    s: [f64; 4],
) -> (SafeCluster, f64, f64) {
    let codecs = SafeCodecs {
        uplink: build(&spec("top-k", Some(1), ValueFormat::F64), 2).unwrap(),
        server: server.map(|k| build(&spec("top-k", Some(k), ValueFormat::F64), 2).unwrap()),
    };
    let mut cl = SafeCluster::new(parts, codecs, points(s), &[0.0, 0.0], None, 1, 1);
    for _ in 0..rounds {
        cl.step().unwrap();
    }
    let out = cl.output();
    let (f, g) = cl.evaluate_at(&out);
    (cl, f, g)
}

#[test]
fn the_averaged_output_reaches_the_guaranteed_accuracy_on_a_problem_with_a_known_solution() {
    // f(x) = mean_i ||x - p_i||_1, g(x) = x_1 + x_2 - 1: for x_1 + x_2 <= 1 and x <= 1.5,
    // f(x) = sum_k mean_i p_ik - (x_1 + x_2) >= 5.25 - 1, so f* = 4.25 on {x_1 + x_2 = 1, x <= 1.5}.
    let f_star = 4.25;
    let rounds = 20_000;
    for (server, alpha_server) in [(None, 1.0), (Some(1), 0.5)] {
        // M = sqrt(2) bounds every subgradient, R = 0.75 >= dist(0, solutions) = sqrt(2)/2, Top-1 of 2: alpha = 1/2
        let theory = SafeTheory {
            m: 2f64.sqrt(),
            r: 0.75,
            rounds,
            alpha: 0.5,
            alpha_server,
        };
        let mut s = SafeSpec::named("safe-ef");
        s.scalar_values = ValueFormat::F64;
        let parts = s.parts(Some(&theory), None).unwrap();
        let eps = theory.epsilon();
        assert!(
            matches!(parts.rule, Rule::Switching { threshold } if (threshold - eps).abs() < 1e-12 * eps)
        );
        let (cl, f, g) = run_points(parts, server, rounds, [1.0; 4]);
        assert!(cl.server.state.productive > 0);
        assert!(
            f - f_star <= eps && g <= eps,
            "server {server:?}: f - f* = {}, g = {g}, eps = {eps}",
            f - f_star
        );
        // and the guarantee is not vacuous here
        assert!(eps < 0.2, "eps = {eps}");
    }
}

#[test]
fn the_switch_uses_the_mean_of_the_workers_constraint_values() {
    // heterogeneous constraints: g_i = x_1 + x_2 - s_i with s = (-3, 5, 0, 2), mean 1
    let s = [-3.0, 5.0, 0.0, 2.0];
    let c = 0.0;
    let parts = safe_parts("safe-ef", 0.05, c, ValueFormat::F64, None);
    let codecs = SafeCodecs {
        uplink: build(&spec("top-k", Some(1), ValueFormat::F64), 2).unwrap(),
        server: None,
    };
    let mut cl = SafeCluster::new(parts, codecs, points(s), &[0.0, 0.0], None, 1, 1);
    let mut disagree = [0usize; 2];
    let mut steps = [0usize; 2];
    for t in 0..400 {
        let w = cl.workers[0].state.w.clone();
        let vals: Vec<f64> = (0..4).map(|i| w[0] + w[1] - s[i]).collect();
        let mean = vals.iter().sum::<f64>() / 4.0;
        cl.step().unwrap();
        let flag = cl.server.state.flag;
        assert_eq!(flag, mean <= c, "round {t}: mean {mean}");
        assert_eq!(cl.server.state.ghat, mean, "round {t}");
        assert!(cl.workers.iter().all(|w| w.state.flag == flag));
        steps[flag as usize] += 1;
        // a worker-local rule would have decided differently for workers 0 and 1
        if (vals[0] <= c) != flag || (vals[1] <= c) != flag {
            disagree[flag as usize] += 1;
        }
    }
    assert!(
        steps[0] > 0 && steps[1] > 0,
        "both kinds of steps: {steps:?}"
    );
    assert!(
        disagree[0] > 0 && disagree[1] > 0,
        "local rules differ from the mean rule: {disagree:?}"
    );
    // directly on the server: one value per worker, the flag from their mean
    let parts = safe_parts("safe-ef", 0.05, 0.0, ValueFormat::F32, None);
    let enc = |v: f32| v.to_bits().to_be_bytes().to_vec();
    for (vals, want) in [
        ([-3.0f32, 2.5], true),
        ([1.0, -0.5], false),
        ([0.5, -0.5], true),
    ] {
        let mut server = SafeServer::new(2, &[0.0, 0.0], &parts);
        let wires: Vec<Vec<u8>> = vals.iter().map(|&v| enc(v)).collect();
        let refs: Vec<&[u8]> = wires.iter().map(|w| w.as_slice()).collect();
        assert_eq!(server.decide(&refs, &parts).unwrap(), want, "{vals:?}");
        assert_eq!(decode_flag(&server.state.flag_wire.bytes).unwrap(), want);
    }
}

#[test]
fn bit_counts_of_both_directions_match_the_encoded_messages() {
    let data = datasets::load("mushrooms").unwrap();
    let p = neyman_pearson(
        &data,
        3,
        SplitKind::Shuffled,
        1,
        LossKind::Logistic,
        0.4,
        NpClass::Negative,
        Some(4.0),
    )
    .unwrap();
    let d = p.dim();
    for name in ["safe-ef", "ef21-switching", "primal-dual", "compressed-sgd"] {
        let parts = safe_parts(name, 0.05, 0.3, ValueFormat::F32, Some(4.0));
        let codecs = SafeCodecs {
            uplink: build(&spec("top-k", Some(6), ValueFormat::F32), d).unwrap(),
            server: Some(build(&spec("top-k", Some(20), ValueFormat::F32), d).unwrap()),
        };
        let mut cl = SafeCluster::new(parts, codecs, p.oracles(), &vec![0.0; d], Some(16), 9, 2);
        let n = cl.n();
        let mut up = vec![0u64; n];
        let mut down = vec![0u64; n];
        let mut msg = ModelMessage::default();
        let mut v = CompressedVec::default();
        for t in 0..25 {
            let w_before: Vec<f64> = cl.workers[0].state.w.clone();
            cl.step().unwrap();
            let rc = RoundCtx { seed: 9, round: t };
            let pd = name == "primal-dual";
            for (i, w) in cl.workers.iter().enumerate() {
                if !pd {
                    // phase 1: one f32, 4 bytes
                    assert_eq!(w.scratch.scalar_wire.bytes.len(), 4);
                    assert_eq!(
                        decode_scalar(&w.scratch.scalar_wire.bytes, ValueFormat::F32).unwrap(),
                        w.scratch.scalar
                    );
                    up[i] += 8 * w.scratch.scalar_wire.bytes.len() as u64;
                    // the flag: one bit, one byte on the wire
                    assert_eq!(cl.server.state.flag_wire.bytes.len(), 1);
                    down[i] += 8;
                }
                let s = decode_vector_uplink(
                    &w.scratch.vector_wire.bytes,
                    &cl.parts,
                    &cl.codecs,
                    i,
                    rc,
                    &mut v,
                )
                .unwrap();
                assert!(
                    v.bit_eq(&w.scratch.vec),
                    "{name}: round {t}: worker {i} vector"
                );
                assert_eq!(s.is_some(), pd);
                up[i] += 8 * w.scratch.vector_wire.bytes.len() as u64;
                down[i] += 8 * cl.server.state.model_wire.bytes.len() as u64;
                assert_eq!(
                    w.state.bits_up_wire, up[i],
                    "{name}: round {t}: worker {i} uplink"
                );
                assert_eq!(
                    w.state.bits_down_wire, down[i],
                    "{name}: round {t}: worker {i} downlink"
                );
            }
            // the model message, decoded, takes w^t to w^{t+1}
            decode_model(
                &cl.server.state.model_wire.bytes,
                d,
                &cl.parts,
                &cl.codecs,
                rc,
                &mut msg,
            )
            .unwrap();
            let mut w = w_before.clone();
            msg.vec.add_to(&mut w);
            assert_eq!(bits(&w), bits(&cl.workers[0].state.w), "{name}: round {t}");
            assert_eq!(bits(&w), bits(&cl.server.state.w));
            assert_eq!(msg.lambda.is_some(), pd);
        }
        let m = cl.metrics(0.0);
        assert_eq!(m.bits_up_wire, up.iter().sum::<u64>() as f64 / n as f64);
        assert_eq!(m.gb_per_worker, m.bits_up_wire / 8e9);
    }
}

#[test]
fn runs_are_identical_for_any_thread_count() {
    let data = datasets::load("mushrooms").unwrap();
    let p = neyman_pearson(
        &data,
        6,
        SplitKind::Shuffled,
        2,
        LossKind::Hinge,
        0.4,
        NpClass::Negative,
        Some(3.0),
    )
    .unwrap();
    let d = p.dim();
    let run = |threads: usize| {
        let parts = safe_parts("safe-ef", 0.05, 0.0, ValueFormat::F32, Some(3.0));
        let codecs = SafeCodecs {
            uplink: build(
                &CompressorSpec {
                    ratio: Some(0.1),
                    ..CompressorSpec::named("rand-k")
                },
                d,
            )
            .unwrap(),
            server: None,
        };
        let mut cl = SafeCluster::new(
            parts,
            codecs,
            p.oracles(),
            &vec![0.0; d],
            Some(8),
            4,
            threads,
        );
        let mut rows = Vec::new();
        cl.run(
            &SafeStop {
                max_rounds: 60,
                log_every: 20,
                time_limit: None,
            },
            |m| {
                let mut m = m.clone();
                m.seconds = 0.0;
                rows.push(m);
                Control::Continue
            },
        );
        rows
    };
    let a = run(1);
    assert_eq!(a.len(), 4);
    assert_eq!(a, run(2));
    assert_eq!(a, run(3));
    assert!(a[3].objective < a[0].objective);
}

#[test]
fn the_reference_solution_is_feasible_and_certified() {
    // phishing is not separable: the constraint is active, and so is the ball
    let data = datasets::load("phishing").unwrap();
    for (loss, tau, r) in [(LossKind::Hinge, 0.3, 3.0), (LossKind::Logistic, 0.4, 2.0)] {
        let p = neyman_pearson(
            &data,
            2,
            SplitKind::Shuffled,
            1,
            loss,
            tau,
            NpClass::Negative,
            Some(r),
        )
        .unwrap();
        let rf = reference_solution(
            &p,
            &ReferenceOptions {
                mu_final: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let (f, g) = p.evaluate(&rf.x_star);
        assert_eq!(f, rf.f_star);
        assert!(g <= 0.0 && rf.g_star <= 0.0, "{loss:?}: g = {g}");
        assert!(rf.x_star.iter().map(|v| v * v).sum::<f64>().sqrt() <= r * (1.0 + 1e-12));
        assert!(
            rf.certified && rf.gap() >= 0.0 && rf.gap() <= 1e-4 * rf.f_star.max(1.0),
            "{loss:?}: gap {}",
            rf.gap()
        );
        assert!(
            rf.lambda > 0.0,
            "{loss:?}: the constraint should be active at tau = {tau}"
        );
        // weak duality: every point of X has f + lambda g >= the lower bound
        let mut state = 12345u64;
        for _ in 0..30 {
            let mut x: Vec<f64> = (0..p.dim())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect();
            let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            x.iter_mut().for_each(|v| *v *= r / nx * 0.9);
            for t in [0.0, 0.5, 0.9] {
                let z: Vec<f64> = x
                    .iter()
                    .zip(&rf.x_star)
                    .map(|(a, b)| t * b + (1.0 - t) * a)
                    .collect();
                let (f, g) = p.evaluate(&z);
                assert!(f + rf.lambda * g >= rf.lower_bound - 1e-12, "{loss:?}");
            }
        }
        // an uncompressed switching run ends up no better than the reference (up to its violation)
        let parts = safe_parts("parallel-sgd", 0.05, 0.0, ValueFormat::F32, Some(r));
        let codecs = SafeCodecs {
            uplink: build(&CompressorSpec::named("identity"), p.dim()).unwrap(),
            server: None,
        };
        let mut cl = SafeCluster::new(parts, codecs, p.oracles(), &vec![0.0; p.dim()], None, 1, 2);
        for _ in 0..300 {
            cl.step().unwrap();
        }
        let (f, g) = cl.evaluate_at(&cl.output());
        assert!(f + rf.lambda * g.max(0.0) >= rf.lower_bound - 1e-12);
    }
}

/// The Safe-EF preset table is what `SafeSpec::parts` enforces for the keys
/// whose presence it can see: every preset is listed once, in
/// `SAFE_METHOD_NAMES` order; the switching methods reject the primal-dual
/// keys and primal-dual rejects the threshold keys, naming the key.
#[test]
fn safe_preset_table_matches_what_parts_accepts() {
    use efkit_core::safe::{SAFE_METHOD_NAMES, SAFE_PRESETS};
    let names: Vec<&str> = SAFE_PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(names, SAFE_METHOD_NAMES);
    let theory = SafeTheory {
        m: 1.0,
        r: 1.0,
        rounds: 100,
        alpha: 0.1,
        alpha_server: 1.0,
    };
    for p in SAFE_PRESETS {
        for key in [
            "threshold",
            "threshold_multiplier",
            "dual_step_multiplier",
            "lambda0",
            "batch",
            "step",
        ] {
            let mut s = SafeSpec::named(p.name);
            match key {
                "threshold" => s.threshold = Some(0.1),
                "threshold_multiplier" => s.threshold_multiplier = Some(0.5),
                "dual_step_multiplier" => s.dual_step_multiplier = Some(1.0),
                "lambda0" => s.lambda0 = Some(0.5),
                "batch" => s.batch = Some(4),
                _ => s.step = Some(0.1),
            }
            match s.parts(Some(&theory), None) {
                Ok(_) => assert!(p.reads(key), "{} accepts {key}", p.name),
                Err(e) => {
                    assert!(!p.reads(key), "{} rejects {key}: {e}", p.name);
                    assert!(e.to_string().contains(&format!("method.{key}")), "{e}");
                }
            }
        }
    }
}
