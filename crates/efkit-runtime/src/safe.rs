//! The Safe-EF driver: in-process rounds of `efkit_core::safe` over
//! [`ConstrainedOracle`]s, metrics, config/setup, and a high-accuracy
//! reference solver for the data-based constrained problems of
//! `efkit_problems::constrained`.
//!
//! One round (switching rules, algorithms.md §9.2; see `efkit_core::safe`):
//!
//! ```text
//! workers (parallel): c_i = g_i(w^t)                     --scalar-->  server: s_t = [mean c_i <= c]
//! workers (parallel): h_i = s_t ? df_i(w^t) : dg_i(w^t)  --C(..)-->   server: x^{t+1}, p
//! workers (parallel): w^{t+1} = w^t + p                  <--model--
//! ```
//!
//! The stochastic variant draws one minibatch per worker and round at w^t
//! (stream `(seed, Sample, worker, round)`), uses it for the constraint value
//! and for the subgradient. Workers run on a thread pool, the server decodes
//! and sums their messages in worker order, so every number is bit-identical
//! for any thread count.
//!
//! Metrics are taken at the method's output xbar (the average over the
//! productive rounds) and at the last model w^t: f, g, violation max(g, 0),
//! suboptimality f - f* when a reference f* is known, and
//! accuracy = max(|f - f*|, max(g, 0)).
//!
//! Reference solutions ([`reference_solution`]): the hinge and absolute losses
//! (and the l1 budget) are replaced by Huber smoothings phi_mu <= phi with
//! phi - phi_mu <= mu/2; for a multiplier lambda the Lagrangian
//! F_mu + lambda G_mu is minimized over X by Newton's method whose quadratic
//! model is minimized exactly over the ball (Moré–Sorensen secular equation);
//! lambda is found by safeguarded regula falsi on G_mu(x(lambda)) = 0; mu is
//! decreased 1e-1 -> mu_final with warm starts. lambda is chosen so that the
//! TRUE (nonsmooth) g vanishes at x(lambda) (two bracketing minimizers are
//! combined when g jumps), so x is feasible and f(x) >= f* is an upper bound
//! with f(x) - f* <= (1 + lambda) mu/2; a certified lower bound comes from weak
//! duality with dual variables read off the smoothed derivatives (each loss is
//! a maximum of affine functions of its prediction).

// The dense linear algebra of the reference solver indexes several arrays by one loop variable.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

use std::time::Instant;

use efkit_core::compress::{build, CompressorSpec};
use efkit_core::method::RoundCtx;
use efkit_core::rng::{stream, Purpose};
use efkit_core::safe::{
    Rule, SafeCodecs, SafeError, SafeParts, SafeServer, SafeServerState, SafeSpec, SafeTheory,
    SafeWorker, SafeWorkerState,
};
use efkit_problems::constrained::{
    huber_abs, l1_regression, neyman_pearson, ConstrainedOracle, ConstrainedProblem, LinearBlock,
    LossKind, NpClass,
};
use efkit_problems::datasets;
use efkit_problems::split::SplitKind;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Control, Status};
use crate::driver::{round_loop, LoopLimits, LoopRounds};
use crate::setup::SetupError;

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

/// Metrics of one logged round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeMetrics {
    /// Round t (server updates so far).
    pub round: u64,
    /// f(xbar) at the output (average over the productive rounds).
    pub objective: f64,
    /// g(xbar).
    pub constraint: f64,
    /// max(g(xbar), 0).
    pub violation: f64,
    /// f(xbar) - f* (when the reference f* is known).
    pub suboptimality: Option<f64>,
    /// max(|f(xbar) - f*|, max(g(xbar), 0)) (when f* is known).
    pub accuracy: Option<f64>,
    /// f(w^t) at the last model.
    pub objective_last: f64,
    /// g(w^t).
    pub constraint_last: f64,
    /// Rounds whose step was on f (all rounds for primal-dual).
    pub productive_rounds: u64,
    /// mean_i g_i(w^t) as the server received it in the last round.
    pub constraint_received: f64,
    /// primal-dual: the multiplier lambda^t.
    pub lambda: Option<f64>,
    /// Cumulative uplink bits per worker (average over workers), as written.
    pub bits_up_wire: f64,
    /// Cumulative uplink bits per worker in the papers' convention (32 per value, indices free).
    pub bits_up_paper: f64,
    /// Cumulative downlink bits per worker, as written (flags + model messages).
    pub bits_down_wire: f64,
    /// Cumulative downlink bits per worker in the papers' convention.
    pub bits_down_paper: f64,
    /// bits_up_wire / 8e9: gigabytes sent per worker.
    pub gb_per_worker: f64,
    /// (bits_up_wire + bits_down_wire) / 8e9.
    pub gb_per_worker_total: f64,
    /// Wall-clock seconds since the start.
    pub seconds: f64,
}

/// Stopping rules of a Safe-EF run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SafeStop {
    /// Number of rounds T (also the horizon of the theory step).
    pub max_rounds: u64,
    /// Log every this many rounds (the last round is always logged).
    pub log_every: u64,
    /// Wall-clock limit in seconds.
    pub time_limit: Option<f64>,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeSummary {
    /// Why it stopped.
    pub status: Status,
    /// Rounds run.
    pub rounds: u64,
    /// The last logged metrics.
    pub last: Option<SafeMetrics>,
    /// For diverged runs: the round and the quantity.
    pub message: Option<String>,
}

/// The full state of a Safe-EF run (plain values): what a checkpoint stores.
/// With the config it determines every later round, so a run restored from
/// it continues bit for bit (the oracles are stateless between rounds: a
/// minibatch is drawn from the stream `(seed, Sample, worker, round)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeClusterState {
    /// Server state (x^t, w^t, the output's running sum, lambda, the round).
    pub server: SafeServerState,
    /// Worker states by id (model copy, error or EF21 estimate, bit counters).
    pub workers: Vec<SafeWorkerState>,
    /// Seconds elapsed when the state was taken.
    pub elapsed: f64,
}

impl SafeClusterState {
    /// Checks that the state fits a run with `n` workers in dimension `d`
    /// (worker ids in order, every vector of length d).
    pub fn check(&self, n: usize, d: usize) -> Result<(), String> {
        if self.workers.len() != n {
            return Err(format!(
                "checkpoint has {} workers, the config has {n}",
                self.workers.len()
            ));
        }
        let s = &self.server;
        if [s.x.len(), s.w.len(), s.g.len(), s.avg_sum.len()]
            .iter()
            .any(|&l| l != d)
            || self
                .workers
                .iter()
                .any(|w| w.w.len() != d || w.e.len() != d)
        {
            return Err(format!(
                "checkpoint dimensions do not match the config (d = {d})"
            ));
        }
        if let Some((i, w)) = self.workers.iter().enumerate().find(|(i, w)| w.id != *i) {
            return Err(format!("checkpoint worker {i} has id {}", w.id));
        }
        Ok(())
    }
}

/// Server, workers and their constrained oracles in one process.
pub struct SafeCluster {
    /// The method parts.
    pub parts: SafeParts,
    /// The compressors.
    pub codecs: SafeCodecs,
    /// The server.
    pub server: SafeServer,
    /// The workers, by id.
    pub workers: Vec<SafeWorker>,
    /// The oracles, by worker id.
    pub oracles: Vec<Box<dyn ConstrainedOracle>>,
    /// Minibatch size (stochastic variant); `None`: exact subgradients.
    pub batch: Option<usize>,
    /// Run seed.
    pub seed: u64,
    /// The reference optimal value f*, if known.
    pub f_star: Option<f64>,
    pool: rayon::ThreadPool,
    h: Vec<Vec<f64>>,
    h2: Vec<Vec<f64>>,
    evals: Vec<(f64, f64)>,
    out: Vec<f64>,
    counters: Vec<[u64; 4]>,
}

impl SafeCluster {
    /// A cluster starting at `x0` with `threads` worker threads (0 = all cores).
    pub fn new(
        parts: SafeParts,
        codecs: SafeCodecs,
        oracles: Vec<Box<dyn ConstrainedOracle>>,
        x0: &[f64],
        batch: Option<usize>,
        seed: u64,
        threads: usize,
    ) -> Self {
        let n = oracles.len();
        let d = x0.len();
        assert!(n >= 1, "need at least one worker");
        assert!(
            oracles.iter().all(|o| o.dim() == d),
            "oracle dimensions differ from x0"
        );
        let pool = crate::cluster::worker_pool(threads);
        SafeCluster {
            server: SafeServer::new(n, x0, &parts),
            workers: (0..n).map(|i| SafeWorker::new(i, x0, &parts)).collect(),
            parts,
            codecs,
            oracles,
            batch,
            seed,
            f_star: None,
            pool,
            h: vec![vec![0.0; d]; n],
            h2: vec![vec![0.0; d]; n],
            evals: vec![(0.0, 0.0); n],
            out: vec![0.0; d],
            counters: Vec::with_capacity(n),
        }
    }

    /// Number of workers.
    pub fn n(&self) -> usize {
        self.workers.len()
    }

    /// The next round number.
    pub fn round(&self) -> u64 {
        self.server.state.round
    }

    /// Runs one round (both phases for switching rules).
    pub fn step(&mut self) -> Result<(), String> {
        let round = self.server.state.round;
        let rc = RoundCtx {
            seed: self.seed,
            round,
        };
        let parts = &self.parts;
        let codecs = &self.codecs;
        let batch = self.batch;
        let seed = self.seed;
        let workers = &mut self.workers;
        let oracles = &mut self.oracles;
        let h = &mut self.h;
        let h2 = &mut self.h2;
        let server = &mut self.server;
        let err = |i: usize, e: String| format!("worker {i}, round {round}: {e}");
        match parts.rule {
            Rule::Switching { .. } => {
                // phase 1: constraint values at w^t
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .enumerate()
                        .try_for_each(|(i, (w, o))| {
                            let v = match batch {
                                Some(b) => {
                                    let mut rng = stream(seed, Purpose::Sample, i as u64, round);
                                    o.draw_batch(&w.state.w, b, &mut rng);
                                    o.batch_constraint(&w.state.w, None)
                                }
                                None => o.constraint(&w.state.w, None),
                            };
                            w.send_constraint(v, parts)
                                .map_err(|e| err(i, format!("constraint value: {e}")))
                        })
                })?;
                server
                    .decide_with(|i| workers[i].scratch.scalar_wire.bytes.as_slice(), parts)
                    .map_err(|e| format!("server, round {round}: {e}"))?;
                let flag_bytes = &server.state.flag_wire.bytes;
                // phase 2: subgradient of f or g, compressed
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(h.par_iter_mut())
                        .enumerate()
                        .try_for_each(|(i, ((w, o), h))| {
                            let flag = w
                                .receive_flag(flag_bytes)
                                .map_err(|e| err(i, e.to_string()))?;
                            let x = &w.state.w;
                            let _ = match (batch, flag) {
                                (Some(_), true) => o.batch_objective(x, Some(h)),
                                (Some(_), false) => o.batch_constraint(x, Some(h)),
                                (None, true) => o.objective(x, Some(h)),
                                (None, false) => o.constraint(x, Some(h)),
                            };
                            w.send_vector(h, None, parts, codecs, rc)
                                .map_err(|e| err(i, e.to_string()))
                        })
                })?;
            }
            Rule::PrimalDual { .. } => {
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(h.par_iter_mut().zip(h2.par_iter_mut()))
                        .enumerate()
                        .try_for_each(|(i, ((w, o), (h, h2)))| {
                            let x = &w.state.w;
                            let gv = match batch {
                                Some(b) => {
                                    let mut rng = stream(seed, Purpose::Sample, i as u64, round);
                                    o.draw_batch(x, b, &mut rng);
                                    o.batch_objective(x, Some(h));
                                    o.batch_constraint(x, Some(h2))
                                }
                                None => {
                                    o.objective(x, Some(h));
                                    o.constraint(x, Some(h2))
                                }
                            };
                            let lam = w.state.lambda;
                            for (a, b) in h.iter_mut().zip(h2.iter()) {
                                *a += lam * b;
                            }
                            w.send_vector(h, Some(gv), parts, codecs, rc)
                                .map_err(|e| err(i, e.to_string()))
                        })
                })?;
            }
        }
        server
            .apply_with(
                |i| workers[i].scratch.vector_wire.bytes.as_slice(),
                parts,
                codecs,
                rc,
            )
            .map_err(|e: SafeError| format!("server, round {round}: {e}"))?;
        let model = &server.state.model_wire;
        self.pool.install(|| {
            workers.par_iter_mut().enumerate().try_for_each(|(i, w)| {
                w.receive_model_own(model, parts, codecs, rc)
                    .map_err(|e| err(i, e.to_string()))
            })
        })?;
        Ok(())
    }

    /// f(x) and g(x) as the means of the workers' exact values.
    pub fn evaluate_at(&mut self, x: &[f64]) -> (f64, f64) {
        let evals = &mut self.evals;
        let oracles = &mut self.oracles;
        self.pool.install(|| {
            oracles
                .par_iter_mut()
                .zip(evals.par_iter_mut())
                .for_each(|(o, e)| {
                    *e = (o.objective(x, None), o.constraint(x, None));
                })
        });
        mean_pairs(self.evals.iter().copied())
    }

    /// The method's output xbar (average over the productive rounds, in X).
    pub fn output(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.server.state.x.len()];
        self.server.output(self.parts.radius, &mut out);
        out
    }

    /// Metrics now.
    pub fn metrics(&mut self, seconds: f64) -> SafeMetrics {
        let mut out = std::mem::take(&mut self.out);
        self.server.output(self.parts.radius, &mut out);
        let at_out = self.evaluate_at(&out);
        self.out = out;
        let w = self.server.state.w.clone();
        let at_w = self.evaluate_at(&w);
        self.counters.clear();
        self.counters
            .extend(self.workers.iter().map(|w| counters(&w.state)));
        safe_metrics(
            at_out,
            at_w,
            &self.counters,
            &self.server.state,
            &self.parts,
            self.f_star,
            seconds,
        )
    }

    /// The complete algorithm state (server and workers) as plain values.
    pub fn snapshot(&self, elapsed: f64) -> SafeClusterState {
        SafeClusterState {
            server: self.server.state.clone(),
            workers: self.workers.iter().map(|w| w.state.clone()).collect(),
            elapsed,
        }
    }

    /// Restores a snapshot taken from a cluster built from the same config
    /// (checked: number of workers, dimensions, worker ids).
    pub fn restore(&mut self, s: SafeClusterState) -> Result<(), String> {
        s.check(self.n(), self.server.state.x.len())?;
        self.server.state = s.server;
        for (w, st) in self.workers.iter_mut().zip(s.workers) {
            w.state = st;
        }
        Ok(())
    }

    /// Runs until a stopping rule fires; `on_log` sees every logged round
    /// (round 0 included) and may interrupt.
    pub fn run(
        &mut self,
        rules: &SafeStop,
        on_log: impl FnMut(&SafeMetrics) -> Control,
    ) -> SafeSummary {
        self.run_with(rules, None, None, on_log, |_| Ok(()))
    }

    /// [`SafeCluster::run`] with resumption and checkpoints: `resume` gives
    /// the elapsed seconds of the interrupted run (its round is not logged
    /// again); every `checkpoint_every` rounds, after the round's metrics are
    /// logged, and when the run is interrupted, `on_checkpoint` receives the
    /// full state ([`drive_safe`]).
    pub fn run_with(
        &mut self,
        rules: &SafeStop,
        resume: Option<f64>,
        checkpoint_every: Option<u64>,
        on_log: impl FnMut(&SafeMetrics) -> Control,
        on_checkpoint: impl FnMut(&SafeClusterState) -> Result<(), String>,
    ) -> SafeSummary {
        drive_safe(self, rules, resume, checkpoint_every, on_log, on_checkpoint)
    }
}

/// The cumulative bit counters of a worker that enter the metrics:
/// `[bits_up_wire, bits_up_paper, bits_down_wire, bits_down_paper]`.
pub fn counters(s: &SafeWorkerState) -> [u64; 4] {
    [
        s.bits_up_wire,
        s.bits_up_paper,
        s.bits_down_wire,
        s.bits_down_paper,
    ]
}

/// The means (1/n) sum_i f_i and (1/n) sum_i g_i of per-worker values given
/// in worker-id order (summed in that order, so the result does not depend on
/// where the values were computed).
pub fn mean_pairs(values: impl ExactSizeIterator<Item = (f64, f64)>) -> (f64, f64) {
    let n = values.len() as f64;
    let (mut f, mut g) = (0.0, 0.0);
    for (a, b) in values {
        f += a;
        g += b;
    }
    (f / n, g / n)
}

/// Assembles the metrics of a logged round from (f, g) at the output xbar,
/// (f, g) at the last model w^t, every worker's [`counters`] in worker-id
/// order and the server state: exactly what [`SafeCluster::metrics`] reports,
/// for any backend that computes the same values.
pub fn safe_metrics(
    at_out: (f64, f64),
    at_w: (f64, f64),
    counters: &[[u64; 4]],
    server: &SafeServerState,
    parts: &SafeParts,
    f_star: Option<f64>,
    seconds: f64,
) -> SafeMetrics {
    let (f, g) = at_out;
    let (fl, gl) = at_w;
    let n = counters.len() as f64;
    let sum = |k: usize| counters.iter().map(|c| c[k]).sum::<u64>() as f64 / n;
    let up = sum(0);
    let down = sum(2);
    let violation = g.max(0.0);
    let sub = f_star.map(|fs| f - fs);
    SafeMetrics {
        round: server.round,
        objective: f,
        constraint: g,
        violation,
        suboptimality: sub,
        accuracy: sub.map(|s| s.abs().max(violation)),
        objective_last: fl,
        constraint_last: gl,
        productive_rounds: server.productive,
        constraint_received: server.ghat,
        lambda: matches!(parts.rule, Rule::PrimalDual { .. }).then_some(server.lambda),
        bits_up_wire: up,
        bits_up_paper: sum(1),
        bits_down_wire: down,
        bits_down_paper: sum(3),
        gb_per_worker: up / 8e9,
        gb_per_worker_total: (up + down) / 8e9,
        seconds,
    }
}

/// A Safe-EF round driver: what a backend provides to be run by
/// [`drive_safe`] (the in-process [`SafeCluster`], and the MPI backend).
pub trait SafeRounds {
    /// The next round number t.
    fn round(&self) -> u64;
    /// Runs round t (both phases for switching rules); an error names the
    /// party and the round.
    fn step(&mut self) -> Result<(), String>;
    /// The metrics at the current state.
    fn metrics(&mut self, seconds: f64) -> SafeMetrics;
    /// The complete state, as [`SafeCluster::snapshot`].
    fn snapshot(&mut self, elapsed: f64) -> SafeClusterState;
}

impl SafeRounds for SafeCluster {
    fn round(&self) -> u64 {
        SafeCluster::round(self)
    }

    fn step(&mut self) -> Result<(), String> {
        SafeCluster::step(self)
    }

    fn metrics(&mut self, seconds: f64) -> SafeMetrics {
        SafeCluster::metrics(self, seconds)
    }

    fn snapshot(&mut self, elapsed: f64) -> SafeClusterState {
        SafeCluster::snapshot(self, elapsed)
    }
}

/// Runs `r` until a stopping rule fires: the round limit, the wall-clock
/// limit, a non-finite objective or constraint value (diverged), a failed
/// round (diverged, with its message), or `on_log` asking to stop
/// (interrupted). Round 0 is logged unless resuming (`resume` = the elapsed
/// seconds of the interrupted run); every `log_every` rounds and the last
/// round are logged. Every `checkpoint_every` rounds (after the round's
/// metrics, if it is logged) and on interruption, `on_checkpoint` receives
/// the full state; a failed checkpoint is reported in the summary's message.
pub fn drive_safe<R: SafeRounds + ?Sized>(
    r: &mut R,
    rules: &SafeStop,
    resume: Option<f64>,
    checkpoint_every: Option<u64>,
    mut on_log: impl FnMut(&SafeMetrics) -> Control,
    mut on_checkpoint: impl FnMut(&SafeClusterState) -> Result<(), String>,
) -> SafeSummary {
    let start = Instant::now();
    let elapsed0 = resume.unwrap_or(0.0);
    let log_every = rules.log_every.max(1);
    let bad = |m: &SafeMetrics| -> Option<String> {
        let vals = [
            ("objective", m.objective),
            ("constraint", m.constraint),
            ("objective_last", m.objective_last),
            ("constraint_last", m.constraint_last),
        ];
        vals.iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(k, v)| format!("diverged at round {}: {k} = {v}", m.round))
    };
    let mut last = None;
    if resume.is_none() {
        let m = r.metrics(0.0);
        let ctl = on_log(&m);
        let b = bad(&m);
        last = Some(m);
        if let Some(msg) = b {
            return SafeSummary {
                status: Status::Diverged,
                rounds: 0,
                last,
                message: Some(msg),
            };
        }
        if ctl == Control::Interrupt {
            let message = on_checkpoint(&r.snapshot(elapsed0))
                .err()
                .map(|e| format!("checkpoint at round 0 failed: {e}"));
            return SafeSummary {
                status: Status::Interrupted,
                rounds: 0,
                last,
                message,
            };
        }
    }
    let end = round_loop(
        &mut SafeLoop(r),
        &LoopLimits {
            max_rounds: rules.max_rounds,
            time_limit: rules.time_limit,
            log_every,
            checkpoint_every,
        },
        start,
        elapsed0,
        &mut last,
        |m| bad(m).map(|msg| (Status::Diverged, Some(msg))),
        on_log,
        on_checkpoint,
    );
    SafeSummary {
        status: end.status,
        rounds: end.rounds,
        last,
        message: end.message,
    }
}

/// The Safe-EF family for the shared round loop.
struct SafeLoop<'a, R: SafeRounds + ?Sized>(&'a mut R);

impl<R: SafeRounds + ?Sized> LoopRounds for SafeLoop<'_, R> {
    type Metrics = SafeMetrics;
    type State = SafeClusterState;

    fn round(&self) -> u64 {
        self.0.round()
    }

    fn step(&mut self) -> Result<(), String> {
        self.0.step()
    }

    fn metrics(&mut self, seconds: f64) -> SafeMetrics {
        self.0.metrics(seconds)
    }

    fn snapshot(&mut self, elapsed: f64) -> SafeClusterState {
        self.0.snapshot(elapsed)
    }
}

// ---------------------------------------------------------------------------
// Config and setup
// ---------------------------------------------------------------------------

/// Which constrained problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafeProblemKind {
    /// Neyman-Pearson classification (`efkit_problems::constrained::neyman_pearson`).
    NeymanPearson,
    /// Least absolute deviations in a ball (`efkit_problems::constrained::l1_regression`).
    L1Regression,
}

/// The problem of a Safe-EF config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeProblemConfig {
    /// `neyman-pearson` or `l1-regression`.
    pub kind: SafeProblemKind,
    /// A bundled dataset name or a LibSVM file.
    pub dataset: String,
    /// Number of workers n.
    pub workers: usize,
    /// neyman-pearson: `hinge` or `logistic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossKind>,
    /// neyman-pearson: the level tau of the constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// neyman-pearson: the class whose loss is minimized (default `negative`).
    #[serde(default)]
    pub objective_class: NpClass,
    /// Radius r of X = {||x|| <= r} (default: X = R^d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f64>,
    /// l1-regression: the l1 budget kappa of g(x) = ||x||_1 - kappa (default: no constraint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_budget: Option<f64>,
    /// Split of the rows (default `shuffled`: every worker sees both classes).
    #[serde(default = "shuffled")]
    pub split: SplitKind,
}

fn shuffled() -> SplitKind {
    SplitKind::Shuffled
}

/// Overrides of the theory constants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TheoryConfig {
    /// M (default: the oracles' subgradient bounds, exact or stochastic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<f64>,
    /// R >= ||x^0 - x*|| (default: the radius of X; x^0 = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<f64>,
    /// The horizon T of the theory step (default `stop.max_rounds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
}

/// Stopping rules of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeStopConfig {
    /// Rounds T.
    pub max_rounds: u64,
    /// Log every this many rounds (default 10).
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    /// Write a checkpoint every this many rounds (`efkit resume DIR`
    /// continues the run); the same key as the EF21 family's `[stop]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
}

fn ten() -> u64 {
    10
}

/// A Safe-EF experiment (TOML).
///
/// ```toml
/// seed = 1
/// [problem]
/// kind = "neyman-pearson"
/// dataset = "a9a"
/// workers = 16
/// loss = "hinge"
/// tau = 0.5
/// radius = 10.0
/// [method]
/// name = "safe-ef"          # safe-ef | parallel-sgd | compressed-sgd | ef21-switching | primal-dual
/// step_multiplier = 1.0
/// [compressor]
/// name = "top-k"
/// ratio = 0.1
/// [stop]
/// max_rounds = 2000
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeConfig {
    /// Run seed.
    #[serde(default)]
    pub seed: u64,
    /// Worker threads (0 = one per core); results do not depend on it.
    #[serde(default)]
    pub threads: usize,
    /// The problem.
    pub problem: SafeProblemConfig,
    /// The method.
    pub method: SafeSpec,
    /// Worker compressor (default identity).
    #[serde(default = "identity")]
    pub compressor: CompressorSpec,
    /// Server compressor of the model update (default: none, the dense model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_compressor: Option<CompressorSpec>,
    /// Theory constants.
    #[serde(default)]
    pub theory: TheoryConfig,
    /// The optimal value f*, if known (for suboptimality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f_star: Option<f64>,
    /// Stopping rules.
    pub stop: SafeStopConfig,
}

fn identity() -> CompressorSpec {
    CompressorSpec::named("identity")
}

impl SafeConfig {
    /// Parses TOML; an unknown key names the key and suggests the nearest allowed one.
    pub fn from_toml(s: &str) -> Result<SafeConfig, String> {
        toml::from_str(s).map_err(|e: toml::de::Error| {
            let msg = e.to_string();
            match hint(&msg) {
                Some(h) => format!("{msg}\nhint: did you mean `{h}`?"),
                None => msg,
            }
        })
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

fn hint(msg: &str) -> Option<String> {
    let start = msg.find("unknown field `")? + "unknown field `".len();
    let rest = &msg[start..];
    let end = rest.find('`')?;
    let bad = &rest[..end];
    rest[end..]
        .split('`')
        .skip(2)
        .step_by(2)
        .map(|c| (crate::config::edit_distance(bad, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c.to_string())
}

/// What setup resolved.
#[derive(Debug, Clone, Serialize)]
pub struct SafeSetupInfo {
    /// Number of workers.
    pub n: usize,
    /// Dimension.
    pub d: usize,
    /// The problem's name.
    pub problem: String,
    /// Step size gamma.
    pub gamma: f64,
    /// Threshold c (switching rules).
    pub threshold: Option<f64>,
    /// Dual step (primal-dual).
    pub dual_step: Option<f64>,
    /// The theory constants used (when the step or threshold came from the theory).
    pub theory: Option<SafeTheory>,
    /// The accuracy the theory guarantees at the theory step (X = R^d).
    pub epsilon_theory: Option<f64>,
    /// The worker compressor.
    pub compressor: String,
    /// The server compressor.
    pub server_compressor: Option<String>,
}

/// A run ready to start.
pub struct SafePrepared {
    /// The cluster.
    pub cluster: SafeCluster,
    /// The problem (for reference solutions and evaluation).
    pub problem: ConstrainedProblem,
    /// What was resolved.
    pub info: SafeSetupInfo,
}

fn bad(key: &str, reason: impl Into<String>) -> SetupError {
    SetupError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Builds the problem of a config.
pub fn build_problem(cfg: &SafeProblemConfig, seed: u64) -> Result<ConstrainedProblem, SetupError> {
    if cfg.workers == 0 {
        return Err(bad("problem.workers", "must be >= 1"));
    }
    let data = datasets::load(&cfg.dataset)?;
    if cfg.workers > data.n_rows() {
        return Err(bad(
            "problem.workers",
            format!(
                "n = {} is larger than the number of rows {}",
                cfg.workers,
                data.n_rows()
            ),
        ));
    }
    Ok(match cfg.kind {
        SafeProblemKind::NeymanPearson => {
            if cfg.l1_budget.is_some() {
                return Err(bad("problem.l1_budget", "only for l1-regression"));
            }
            let loss = cfg.loss.ok_or_else(|| {
                bad(
                    "problem.loss",
                    "neyman-pearson needs loss = \"hinge\" or \"logistic\"",
                )
            })?;
            let tau = cfg
                .tau
                .ok_or_else(|| bad("problem.tau", "neyman-pearson needs the level tau > 0"))?;
            neyman_pearson(
                &data,
                cfg.workers,
                cfg.split,
                seed,
                loss,
                tau,
                cfg.objective_class,
                cfg.radius,
            )?
        }
        SafeProblemKind::L1Regression => {
            if cfg.loss.is_some_and(|l| l != LossKind::Absolute) {
                return Err(bad("problem.loss", "l1-regression uses the absolute loss"));
            }
            if cfg.tau.is_some() {
                return Err(bad("problem.tau", "only for neyman-pearson"));
            }
            l1_regression(
                &data,
                cfg.workers,
                cfg.split,
                seed,
                cfg.radius,
                cfg.l1_budget,
            )?
        }
    })
}

/// Validates `cfg`, builds the problem, the theory step and the cluster (x^0 = 0).
pub fn prepare_safe(cfg: &SafeConfig) -> Result<SafePrepared, SetupError> {
    crate::cluster::check_threads(cfg.threads).map_err(|r| bad("threads", r))?;
    if let Some(f) = cfg.f_star {
        if !f.is_finite() {
            return Err(bad("f_star", format!("must be finite, got {f}")));
        }
    }
    if cfg.stop.max_rounds == 0 {
        return Err(bad("stop.max_rounds", "must be >= 1"));
    }
    if cfg.stop.log_every == 0 {
        return Err(bad("stop.log_every", "must be >= 1"));
    }
    if cfg.stop.checkpoint_every == Some(0) {
        return Err(bad("stop.checkpoint_every", "must be >= 1"));
    }
    if let Some(t) = cfg.stop.time_limit {
        if !(t > 0.0 && t.is_finite()) {
            return Err(bad(
                "stop.time_limit",
                format!("must be finite and > 0, got {t}"),
            ));
        }
    }
    let problem = build_problem(&cfg.problem, cfg.seed)?;
    let d = problem.dim();
    crate::cluster::check_state_memory(d, problem.n_workers())
        .map_err(|r| bad("problem.dataset", r))?;
    let n = problem.n_workers();
    let uplink = build(&cfg.compressor, d)?;
    if cfg.method.forces_identity() && cfg.compressor.name != "identity" {
        return Err(bad("compressor", format!("method `{}` sends uncompressed subgradients; remove the compressor or use safe-ef / compressed-sgd", cfg.method.name)));
    }
    let server = cfg
        .server_compressor
        .as_ref()
        .map(|s| build(s, d))
        .transpose()?;
    let oracles = problem.oracles();
    // a batch is drawn per block and clamped to each worker's block sizes
    // (uneven splits); one larger than every worker's data is no minibatch
    if let Some(b) = cfg.method.batch {
        let largest = oracles.iter().filter_map(|o| o.num_samples()).max();
        if let Some(rows) = largest.filter(|&rows| b > rows) {
            return Err(bad(
                "method.batch",
                format!("{b} is more than any worker's {rows} samples; omit method.batch for exact subgradients"),
            ));
        }
    }
    let x0 = vec![0.0; d];
    let needs_theory = cfg.method.step.is_none()
        || (!cfg.method.is_primal_dual() && cfg.method.threshold.is_none());
    let theory = if needs_theory {
        let alpha = |c: &dyn efkit_core::compress::Compressor, key: &str| {
            // the alpha error feedback applies (`CompressorClass::alpha`): an
            // unbiased C with omega >= 1 needs `contractive = true`
            match c.class().alpha() {
                Some(alpha) if alpha > 0.0 && alpha <= 1.0 => Ok(alpha),
                _ => Err(bad(key, format!("the theory step needs a contractive compressor, `{}` is {:?} (for an unbiased one with omega >= 1 set `contractive = true`); or give method.step and method.threshold", c.describe(), c.class()))),
            }
        };
        let m = match cfg.theory.m {
            Some(m) => m,
            None => oracles
                .iter()
                .map(|o| {
                    let b = o.bounds();
                    if cfg.method.batch.is_some() {
                        b.max()
                    } else {
                        b.max_exact()
                    }
                })
                .fold(0.0, f64::max),
        };
        let r = match (cfg.theory.r, problem.radius()) {
            (Some(r), _) => r,
            (None, Some(rad)) => rad,
            (None, None) => {
                return Err(bad(
                    "theory.r",
                    "X = R^d: give theory.r >= ||x^0 - x*|| (or problem.radius)",
                ))
            }
        };
        let t = SafeTheory {
            m,
            r,
            rounds: cfg.theory.rounds.unwrap_or(cfg.stop.max_rounds),
            alpha: alpha(uplink.as_ref(), "compressor")?,
            alpha_server: match &server {
                Some(s) => alpha(s.as_ref(), "server_compressor")?,
                None => 1.0,
            },
        };
        t.validate()?;
        Some(t)
    } else {
        None
    };
    let parts = cfg.method.parts(theory.as_ref(), problem.radius())?;
    let (threshold, dual_step) = match parts.rule {
        Rule::Switching { threshold } => (Some(threshold), None),
        Rule::PrimalDual { dual_step, .. } => (None, Some(dual_step)),
    };
    let info = SafeSetupInfo {
        n,
        d,
        problem: problem.name().to_string(),
        gamma: parts.gamma,
        threshold,
        dual_step,
        theory,
        epsilon_theory: theory.map(|t| t.epsilon()),
        compressor: uplink.describe(),
        server_compressor: server.as_ref().map(|s| s.describe()),
    };
    let codecs = SafeCodecs { uplink, server };
    let mut cluster = SafeCluster::new(
        parts,
        codecs,
        oracles,
        &x0,
        cfg.method.batch,
        cfg.seed,
        cfg.threads,
    );
    cluster.f_star = cfg.f_star;
    Ok(SafePrepared {
        cluster,
        problem,
        info,
    })
}

/// The stopping rules of a config.
pub fn safe_stop(cfg: &SafeConfig) -> SafeStop {
    SafeStop {
        max_rounds: cfg.stop.max_rounds,
        log_every: cfg.stop.log_every,
        time_limit: cfg.stop.time_limit,
    }
}

// ---------------------------------------------------------------------------
// Reference solver
// ---------------------------------------------------------------------------

/// A high-accuracy solution of a constrained problem (no compression).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// f at `x_star` (an upper bound on f*: x_star is feasible).
    pub f_star: f64,
    /// A certified lower bound on f* (when `certified`).
    pub lower_bound: f64,
    /// Whether `lower_bound` is certified (needs X bounded or strong convexity).
    pub certified: bool,
    /// The solution: g(x_star) <= 0 and x_star in X.
    pub x_star: Vec<f64>,
    /// g(x_star).
    pub g_star: f64,
    /// The multiplier lambda of the constraint.
    pub lambda: f64,
    /// The final smoothing parameter.
    pub mu: f64,
    /// Newton iterations spent.
    pub newton_iterations: u64,
    /// Seconds spent.
    pub seconds: f64,
}

impl Reference {
    /// f_star - lower_bound.
    pub fn gap(&self) -> f64 {
        self.f_star - self.lower_bound
    }
}

/// Options of [`reference_solution`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceOptions {
    /// The last smoothing level mu (levels 1e-1, 1e-2, ... down to it; default
    /// 1e-3: smaller levels make Newton slow on the piecewise-linear losses,
    /// and the certified gap is already ~1e-6 on a9a).
    pub mu_final: f64,
    /// Tolerance on |G_mu(x(lambda))| and on the Newton gradient norm.
    pub tol: f64,
}

impl Default for ReferenceOptions {
    fn default() -> Self {
        ReferenceOptions {
            mu_final: 1e-3,
            tol: 1e-11,
        }
    }
}

/// The smoothed Lagrangian a F_mu + b G_mu (no offset) with its Newton machinery.
struct Smoothed<'a> {
    p: &'a ConstrainedProblem,
    d: usize,
    radius: Option<f64>,
    newton: u64,
    grad: Vec<f64>,
    hess: Vec<f64>,
    chol: Vec<f64>,
    tmp: Vec<f64>,
    tmp2: Vec<f64>,
    delta: f64,
}

fn block_eval(
    b: &LinearBlock,
    x: &[f64],
    mu: f64,
    scale: f64,
    grad: Option<&mut [f64]>,
    hess: Option<&mut [f64]>,
) -> f64 {
    if b.is_empty() || scale == 0.0 {
        return 0.0;
    }
    let a = b.matrix();
    let y = b.targets();
    let d = a.n_cols();
    let w = b.weight() * scale;
    let mut total = 0.0;
    let mut g = grad;
    let mut h = hess;
    for j in 0..a.n_rows() {
        let (idx, val) = a.row(j);
        let z: f64 = idx.iter().zip(val).map(|(&i, &v)| v * x[i as usize]).sum();
        let (l, d1, d2) = b.loss().smoothed(z, y[j], mu);
        total += l;
        if let Some(g) = g.as_deref_mut() {
            if d1 != 0.0 {
                for (&i, &v) in idx.iter().zip(val) {
                    g[i as usize] += w * d1 * v;
                }
            }
        }
        if let Some(h) = h.as_deref_mut() {
            if d2 != 0.0 {
                let c = w * d2;
                for (&ip, &vp) in idx.iter().zip(val) {
                    let row = &mut h[ip as usize * d..(ip as usize + 1) * d];
                    for (&iq, &vq) in idx.iter().zip(val) {
                        row[iq as usize] += c * vp * vq;
                    }
                }
            }
        }
    }
    w * total
}

fn cholesky(a: &mut [f64], d: usize) -> bool {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if !(s > 0.0) || !s.is_finite() {
            return false;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    true
}

/// Solves L L^T x = b in place.
fn chol_solve(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= l[k * d + i] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
}

/// Solves L y = b (forward only) in place.
fn chol_forward(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

impl<'a> Smoothed<'a> {
    fn new(p: &'a ConstrainedProblem) -> Self {
        let d = p.dim();
        Smoothed {
            p,
            d,
            radius: p.radius(),
            newton: 0,
            grad: vec![0.0; d],
            hess: vec![0.0; d * d],
            chol: vec![0.0; d * d],
            tmp: vec![0.0; d],
            tmp2: vec![0.0; d],
            delta: 0.0,
        }
    }

    /// a F_mu(x) + b (G_mu(x) - offset terms); fills grad (and hess) when asked.
    fn phi(&mut self, x: &[f64], a: f64, b: f64, mu: f64, derivs: bool, hess: bool) -> f64 {
        let d = self.d;
        let p = self.p;
        if derivs {
            self.grad.iter_mut().for_each(|v| *v = 0.0);
        }
        if hess {
            self.hess.iter_mut().for_each(|v| *v = 0.0);
        }
        let mut gg = derivs.then_some(&mut self.grad[..]);
        let mut hh = hess.then_some(&mut self.hess[..]);
        let mut v = block_eval(
            p.objective_block(),
            x,
            mu,
            a,
            gg.as_deref_mut(),
            hh.as_deref_mut(),
        );
        v += block_eval(
            p.constraint_block(),
            x,
            mu,
            b,
            gg.as_deref_mut(),
            hh.as_deref_mut(),
        );
        if p.l1_budget().is_some() && b != 0.0 {
            for k in 0..d {
                let (hv, h1, h2) = huber_abs(x[k], mu);
                v += b * hv;
                if let Some(gr) = gg.as_deref_mut() {
                    gr[k] += b * h1;
                }
                if let Some(he) = hh.as_deref_mut() {
                    he[k * d + k] += b * h2;
                }
            }
        }
        v
    }

    /// Minimizes a F_mu + b G_mu over X from `x` (in place). Returns the final
    /// value and gradient norm (of the projected-gradient kind for the ball).
    fn minimize(&mut self, x: &mut [f64], a: f64, b: f64, mu: f64, tol: f64) -> (f64, f64) {
        let d = self.d;
        if let Some(r) = self.radius {
            let nx = norm(x);
            if nx > r {
                x.iter_mut().for_each(|v| *v *= r / nx);
            }
        }
        let mut val = self.phi(x, a, b, mu, true, true);
        let mut stat = f64::INFINITY;
        let scale = 1.0 + (0..d).map(|k| self.hess[k * d + k]).fold(0.0, f64::max);
        let delta_min = 1e-12 * scale;
        let mut delta = self.delta.max(delta_min);
        'outer: for _ in 0..2000 {
            self.newton += 1;
            // stationarity: the gradient, or for the ball the gradient mapping
            stat = self.stationarity(x);
            if stat <= tol {
                break;
            }
            // Levenberg-Marquardt: K = H + delta I, the model minimized over X;
            // raise delta until the step decreases the function enough
            loop {
                self.chol.copy_from_slice(&self.hess);
                for k in 0..d {
                    self.chol[k * d + k] += delta;
                }
                if !cholesky(&mut self.chol, d) {
                    delta *= 10.0;
                    continue;
                }
                self.model_step(x, delta);
                let slope: f64 = self
                    .grad
                    .iter()
                    .zip(self.tmp.iter().zip(x.iter()))
                    .map(|(g, (t, xi))| g * (t - xi))
                    .sum();
                if !(slope < 0.0) {
                    break 'outer;
                }
                let tmp = std::mem::take(&mut self.tmp);
                let v = self.phi(&tmp, a, b, mu, false, false);
                self.tmp = tmp;
                if v <= val + 1e-4 * slope {
                    x.copy_from_slice(&self.tmp);
                    delta = (delta / 5.0).max(delta_min);
                    break;
                }
                delta *= 8.0;
                if delta > 1e16 * scale {
                    break 'outer;
                }
            }
            let newval = self.phi(x, a, b, mu, true, true);
            let progress = val - newval;
            val = newval;
            if progress <= 1e-17 * val.abs().max(1.0) {
                stat = self.stationarity(x);
                break;
            }
        }
        self.delta = delta;
        (val, stat)
    }

    /// ||x - Pi_X(x - grad)|| (the gradient itself for X = R^d).
    fn stationarity(&mut self, x: &[f64]) -> f64 {
        match self.radius {
            None => norm(&self.grad),
            Some(r) => {
                for k in 0..self.d {
                    self.tmp2[k] = x[k] - self.grad[k];
                }
                let n = norm(&self.tmp2);
                if n > r {
                    self.tmp2.iter_mut().for_each(|v| *v *= r / n);
                }
                x.iter()
                    .zip(&self.tmp2)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt()
            }
        }
    }

    /// tmp = argmin_{x' in X} grad^T (x' - x) + (1/2)(x' - x)^T K (x' - x),
    /// K = hess + delta I factored in `chol`.
    fn model_step(&mut self, x: &[f64], delta: f64) {
        let d = self.d;
        // unconstrained: x - K^{-1} grad
        self.tmp.copy_from_slice(&self.grad);
        chol_solve(&self.chol, d, &mut self.tmp);
        for k in 0..d {
            self.tmp[k] = x[k] - self.tmp[k];
        }
        let r = match self.radius {
            Some(r) if norm(&self.tmp) > r => r,
            _ => return,
        };
        // rhs = K x - grad; find nu > 0 with ||(K + nu I)^{-1} rhs|| = r
        let mut rhs = vec![0.0; d];
        for i in 0..d {
            let mut s = delta * x[i] - self.grad[i];
            let row = &self.hess[i * d..(i + 1) * d];
            for (h, xv) in row.iter().zip(x) {
                s += h * xv;
            }
            rhs[i] = s;
        }
        let (mut lo, mut hi) = (0.0f64, norm(&rhs) / r);
        let mut nu = hi.clamp(1e-300, 1.0);
        let mut chol = vec![0.0; d * d];
        let mut y = vec![0.0; d];
        for _ in 0..200 {
            chol.copy_from_slice(&self.hess);
            for k in 0..d {
                chol[k * d + k] += delta + nu;
            }
            if !cholesky(&mut chol, d) {
                lo = nu;
                nu = 0.5 * (lo + hi);
                continue;
            }
            y.copy_from_slice(&rhs);
            chol_solve(&chol, d, &mut y);
            let ny = norm(&y);
            if (ny - r).abs() <= 1e-13 * r {
                break;
            }
            if ny > r {
                lo = nu;
            } else {
                hi = nu;
            }
            // Moré–Sorensen Newton step on 1/||y(nu)|| = 1/r
            self.tmp2.copy_from_slice(&y);
            chol_forward(&chol, d, &mut self.tmp2);
            let q = norm(&self.tmp2);
            let step = (ny / q).powi(2) * (ny - r) / r;
            let next = nu + step;
            nu = if next > lo && next < hi && step.is_finite() {
                next
            } else {
                0.5 * (lo + hi)
            };
            if hi - lo <= 1e-15 * hi {
                break;
            }
        }
        let ny = norm(&y);
        for k in 0..d {
            self.tmp[k] = if ny > 0.0 {
                y[k] * (r / ny).min(1.0)
            } else {
                0.0
            };
        }
    }
}

/// p ln p + (1 - p) ln(1 - p) with 0 ln 0 = 0.
fn neg_entropy(p: f64) -> f64 {
    let t = |q: f64| if q > 0.0 { q * q.ln() } else { 0.0 };
    t(p) + t(1.0 - p)
}

/// A lower bound on min_{x in X} F(x) + lambda G(x) by weak duality: every
/// loss is the maximum of affine functions of the prediction z
/// (W max(0, 1 - y z) = max_{a in [0, W]} a (1 - y z), W |z - y| =
/// max_{|a| <= W} a (z - y), W log(1 + e^{-y z}) = max_{a in [0, W]} -a y z - W h(a/W)
/// with h the negative entropy, lambda ||x||_1 = max_{|b_k| <= lambda} b^T x),
/// so for any such dual variables the Lagrangian is >= v^T x + C and its
/// minimum over the ball >= C - r ||v||. The dual variables are read off the
/// smoothed derivatives at `x`. `None` when X = R^d and v != 0.
fn dual_bound(p: &ConstrainedProblem, x: &[f64], lambda: f64, mu: f64) -> Option<f64> {
    let d = p.dim();
    let mut v = vec![0.0; d];
    let mut c = 0.0;
    for (block, scale) in [(p.objective_block(), 1.0), (p.constraint_block(), lambda)] {
        let w = block.weight() * scale;
        if block.is_empty() || w == 0.0 {
            continue;
        }
        let a_mat = block.matrix();
        let y = block.targets();
        for j in 0..a_mat.n_rows() {
            let (idx, val) = a_mat.row(j);
            let z: f64 = idx
                .iter()
                .zip(val)
                .map(|(&i, &vv)| vv * x[i as usize])
                .sum();
            let (_, d1, _) = block.loss().smoothed(z, y[j], mu);
            let coef = match block.loss() {
                LossKind::Hinge => {
                    let a = (-w * d1 * y[j]).clamp(0.0, w);
                    c += a;
                    -a * y[j]
                }
                LossKind::Logistic => {
                    let a = (-w * d1 * y[j]).clamp(0.0, w);
                    c -= w * neg_entropy(a / w);
                    -a * y[j]
                }
                LossKind::Absolute => {
                    let a = (w * d1).clamp(-w, w);
                    c -= a * y[j];
                    a
                }
            };
            for (&i, &vv) in idx.iter().zip(val) {
                v[i as usize] += coef * vv;
            }
        }
    }
    c += lambda * p.offset();
    if let Some(k) = p.l1_budget() {
        for (vk, &xk) in v.iter_mut().zip(x) {
            *vk += (lambda * huber_abs(xk, mu).1).clamp(-lambda, lambda);
        }
        c -= lambda * k;
    }
    let nv = norm(&v);
    match p.radius() {
        Some(r) => Some(c - r * nv),
        None if nv == 0.0 => Some(c),
        None => None,
    }
}

/// Solves the problem to high accuracy without compression (module docs).
///
/// Errors when the problem is infeasible (min g >= 0 over X).
pub fn reference_solution(
    p: &ConstrainedProblem,
    opts: &ReferenceOptions,
) -> Result<Reference, SetupError> {
    let start = Instant::now();
    let d = p.dim();
    let mut s = Smoothed::new(p);
    let smooth_only = p.objective_block().loss() == LossKind::Logistic
        && (p.constraint_block().is_empty() || p.constraint_block().loss() == LossKind::Logistic)
        && p.l1_budget().is_none();
    let mut mus = vec![];
    if smooth_only {
        mus.push(opts.mu_final);
    } else {
        let mut m = 1e-1;
        while m > opts.mu_final * 1.0001 {
            mus.push(m);
            m /= 10.0;
        }
        mus.push(opts.mu_final);
    }
    let no_constraint = p.constraint_block().is_empty() && p.l1_budget().is_none();
    // a strictly feasible point: the minimizer of g over X
    let mut xs = vec![0.0; d];
    let g_slater = if no_constraint {
        p.offset()
    } else {
        for &mu in &mus {
            s.minimize(&mut xs, 0.0, 1.0, mu, opts.tol);
        }
        p.evaluate(&xs).1
    };
    if g_slater >= 0.0 {
        return Err(bad("problem", format!("the constraint cannot be satisfied: min over X of g is {g_slater:.6e} >= 0 (raise problem.tau?)")));
    }
    let mut x = vec![0.0; d];
    let mut lambda = 0.0f64;
    let mut mu_used = mus[0];
    for &mu in &mus {
        mu_used = mu;
        // lambda = 0?
        let mut x0 = x.clone();
        s.minimize(&mut x0, 1.0, 0.0, mu, opts.tol);
        let g0 = p.evaluate(&x0).1;
        if no_constraint || g0 <= 0.0 {
            x = x0;
            lambda = 0.0;
            continue;
        }
        // bracket: G(x(lo)) > 0 > G(x(hi))
        let (mut lo, mut glo, mut xlo) = (0.0, g0, x0);
        let mut hi = if lambda > 0.0 { 2.0 * lambda } else { 1.0 };
        let mut xhi = x.clone();
        let mut ghi;
        loop {
            s.minimize(&mut xhi, 1.0, hi, mu, opts.tol);
            ghi = p.evaluate(&xhi).1;
            if ghi <= 0.0 {
                break;
            }
            lo = hi;
            glo = ghi;
            xlo.copy_from_slice(&xhi);
            hi *= 4.0;
            if hi > 1e12 {
                return Err(bad(
                    "problem",
                    "no multiplier up to 1e12 makes the smoothed constraint feasible",
                ));
            }
        }
        // Illinois regula falsi on lambda
        let mut side = 0i32;
        let mut xm = xhi.clone();
        for _ in 0..200 {
            if ghi.abs() <= opts.tol || (hi - lo) <= 1e-14 * hi.max(1.0) {
                break;
            }
            let mut m = hi - ghi * (hi - lo) / (ghi - glo);
            if !(m > lo && m < hi) {
                m = 0.5 * (lo + hi);
            }
            xm.copy_from_slice(if side >= 0 { &xhi } else { &xlo });
            s.minimize(&mut xm, 1.0, m, mu, opts.tol);
            let gm = p.evaluate(&xm).1;
            if gm > 0.0 {
                lo = m;
                glo = gm;
                xlo.copy_from_slice(&xm);
                if side == -1 {
                    ghi *= 0.5;
                }
                side = -1;
            } else {
                hi = m;
                ghi = gm;
                xhi.copy_from_slice(&xm);
                if side == 1 {
                    glo *= 0.5;
                }
                side = 1;
                if gm.abs() <= opts.tol {
                    break;
                }
            }
        }
        // recompute the true G at the bracket ends and combine them so that the linear interpolation is 0
        let (gl, gh) = (p.evaluate(&xlo).1, p.evaluate(&xhi).1);
        let theta = if gl > 0.0 && gh < 0.0 {
            gl / (gl - gh)
        } else {
            1.0
        };
        for k in 0..d {
            x[k] = (1.0 - theta) * xlo[k] + theta * xhi[k];
        }
        lambda = (1.0 - theta) * lo + theta * hi;
    }
    // exact feasibility for the nonsmooth g (convexity), and in X
    if let Some(r) = p.radius() {
        let n = norm(&x);
        if n > r {
            x.iter_mut().for_each(|v| *v *= r / n);
        }
    }
    let (_, gx) = p.evaluate(&x);
    if gx > 0.0 {
        let theta = gx / (gx - g_slater);
        for k in 0..d {
            x[k] = (1.0 - theta) * x[k] + theta * xs[k];
        }
    }
    let (mut f_up, mut g_up) = p.evaluate(&x);
    // guard against rounding: move a little further if needed
    let mut extra = 1e-12;
    while g_up > 0.0 && extra < 1.0 {
        for k in 0..d {
            x[k] = (1.0 - extra) * x[k] + extra * xs[k];
        }
        let e = p.evaluate(&x);
        f_up = e.0;
        g_up = e.1;
        extra *= 10.0;
    }
    // certified lower bound: f* >= min_X F + lambda G >= the dual function at
    // dual variables read off the smoothed minimizer of F_mu + lambda G_mu
    // the dual function is concave in lambda: a golden-section search around
    // the multiplier found above for the best certificate
    let mut xl = x.clone();
    let cert = |lam: f64, xl: &mut Vec<f64>, s: &mut Smoothed| -> f64 {
        s.minimize(xl, 1.0, lam, mu_used, opts.tol);
        dual_bound(p, xl, lam, mu_used).unwrap_or(f64::NEG_INFINITY)
    };
    let mut lower = cert(lambda, &mut xl, &mut s);
    if lambda > 0.0 && lower.is_finite() {
        let gr = 0.5 * (5f64.sqrt() - 1.0);
        let (mut a, mut b) = (0.5 * lambda, 1.5 * lambda);
        let mut c = b - gr * (b - a);
        let mut e = a + gr * (b - a);
        let mut fc = cert(c, &mut xl, &mut s);
        let mut fe = cert(e, &mut xl, &mut s);
        for _ in 0..24 {
            if fc >= fe {
                b = e;
                e = c;
                fe = fc;
                c = b - gr * (b - a);
                fc = cert(c, &mut xl, &mut s);
            } else {
                a = c;
                c = e;
                fc = fe;
                e = a + gr * (b - a);
                fe = cert(e, &mut xl, &mut s);
            }
        }
        lower = lower.max(fc).max(fe);
    }
    let certified = lower.is_finite();
    Ok(Reference {
        f_star: f_up,
        lower_bound: lower.min(f_up),
        certified,
        x_star: x,
        g_star: g_up,
        lambda,
        mu: mu_used,
        newton_iterations: s.newton,
        seconds: start.elapsed().as_secs_f64(),
    })
}
