//! The round loop and the metric reductions, independent of the transport.
//!
//! Every backend runs the same protocol (`efkit_core::method`): round t
//! broadcasts the downlink carrying x^t, the participating workers answer with
//! their uplinks, and the server applies them in worker-id order to reach
//! x^{t+1}. What a backend must provide to be driven is [`Rounds`]: run one
//! round, evaluate the metrics at the server's x^t, and give the full state
//! for a checkpoint. [`drive`] then applies the stopping rules exactly as
//! [`Cluster::run_with`] does (same checks, same order, same logged rounds,
//! same checkpoints), so any backend that produces the same rounds and the
//! same metrics produces the same `metrics.jsonl` and [`Summary`].
//!
//! The metrics at x are (algorithms.md §6, B&W eq. (7) for the objective)
//!
//! ```text
//! f(x)          = (1/n) sum_i f_i(x)                         (+ r(x) for EF21-Prox)
//! ||grad f||^2  = ||(1/n) sum_i grad f_i(x)||^2               (or ||G_gamma(x)||^2,
//! G_gamma(x)    = (x - prox_{gamma r}(x - gamma grad f(x))) / gamma   for EF21-Prox)
//! ```
//!
//! with the sums taken in worker-id order ([`reduce_eval`]), so the floating
//! point result does not depend on where the f_i were computed.

use efkit_core::method::{Parts, Regularizer, ServerStep, WorkerState};

use crate::cluster::{Cluster, ClusterState, Control, RoundMetrics, Status, StopRules, Summary};

/// A round driver: one round at a time, the metrics at the current model, and
/// the full state for checkpoints.
pub trait Rounds {
    /// The next round number t (the number of server updates so far).
    fn round(&self) -> u64;
    /// Runs round t; an error (a non-finite value met by a compressor, a
    /// message that does not decode) is returned as a message naming the
    /// party and the round.
    fn step(&mut self) -> Result<(), String>;
    /// Evaluates the metrics at the server's x^t.
    fn metrics(&mut self, seconds: f64) -> RoundMetrics;
    /// The complete algorithm state, as [`Cluster::snapshot`].
    fn snapshot(&mut self, initial_loss: f64, elapsed: f64) -> ClusterState;
}

impl Rounds for Cluster {
    fn round(&self) -> u64 {
        Cluster::round(self)
    }

    fn step(&mut self) -> Result<(), String> {
        Cluster::step(self)
    }

    fn metrics(&mut self, seconds: f64) -> RoundMetrics {
        Cluster::metrics(self, seconds)
    }

    fn snapshot(&mut self, initial_loss: f64, elapsed: f64) -> ClusterState {
        Cluster::snapshot(self, initial_loss, elapsed)
    }
}

/// Runs `r` until a stopping rule fires, with the semantics of
/// [`Cluster::run_with`] (same checks in the same order, same messages, same
/// logged rounds, same checkpoints): `resume` gives the initial loss and the
/// elapsed seconds of an interrupted run, every `checkpoint_every` rounds (and
/// on interruption) `on_checkpoint` receives the full state, and `on_log` sees
/// every logged round and may interrupt.
pub fn drive<R: Rounds + ?Sized>(
    r: &mut R,
    rules: &StopRules,
    resume: Option<(f64, f64)>,
    checkpoint_every: Option<u64>,
    mut on_log: impl FnMut(&RoundMetrics) -> Control,
    mut on_checkpoint: impl FnMut(&ClusterState) -> Result<(), String>,
) -> Summary {
    let start = std::time::Instant::now();
    let elapsed0 = resume.map_or(0.0, |r| r.1);
    let log_every = rules.log_every.max(1);
    // round 0 is evaluated once: its loss is the reference of the blow-up rule
    let first = if resume.is_none() {
        Some(r.metrics(0.0))
    } else {
        None
    };
    let initial_loss = match (resume, &first) {
        (Some((l, _)), _) => l,
        (None, Some(m)) => m.loss,
        (None, None) => unreachable!(),
    };
    let check = |m: &RoundMetrics| -> Option<(Status, Option<String>)> {
        if !m.loss.is_finite() || !m.grad_norm_sq.is_finite() {
            let what = if !m.loss.is_finite() {
                format!("loss = {}", m.loss)
            } else {
                format!("grad_norm_sq = {}", m.grad_norm_sq)
            };
            return Some((
                Status::Diverged,
                Some(format!("diverged at round {}: {what}", m.round)),
            ));
        }
        if m.loss > rules.blowup * initial_loss.abs().max(1.0) {
            return Some((
                Status::Diverged,
                Some(format!(
                    "diverged at round {}: loss = {:e} exceeds {} x max(1, |f(x^0)|)",
                    m.round, m.loss, rules.blowup
                )),
            ));
        }
        if let Some(tol) = rules.tol {
            if m.grad_norm_sq <= tol {
                return Some((Status::Converged, None));
            }
        }
        None
    };
    let mut last = None;
    if let Some(m) = first {
        let stop = check(&m);
        let ctl = on_log(&m);
        last = Some(m);
        if let Some((status, message)) = stop {
            return Summary {
                status,
                rounds: 0,
                last,
                message,
            };
        }
        if ctl == Control::Interrupt {
            let _ = on_checkpoint(&r.snapshot(initial_loss, elapsed0));
            return Summary {
                status: Status::Interrupted,
                rounds: 0,
                last,
                message: None,
            };
        }
    }
    let mut adapter = Ef21Loop { r, initial_loss };
    let end = round_loop(
        &mut adapter,
        &LoopLimits {
            max_rounds: rules.max_rounds,
            time_limit: rules.time_limit,
            log_every,
            checkpoint_every,
        },
        start,
        elapsed0,
        &mut last,
        check,
        on_log,
        on_checkpoint,
    );
    Summary {
        status: end.status,
        rounds: end.rounds,
        last,
        message: end.message,
    }
}

/// One method family's rounds as [`round_loop`] sees them.
pub(crate) trait LoopRounds {
    /// Metrics of a logged round.
    type Metrics;
    /// The full state for a checkpoint.
    type State;
    /// The next round number.
    fn round(&self) -> u64;
    /// Runs the next round.
    fn step(&mut self) -> Result<(), String>;
    /// The metrics now, `seconds` into the run.
    fn metrics(&mut self, seconds: f64) -> Self::Metrics;
    /// The state now, `elapsed` seconds into the run.
    fn snapshot(&mut self, elapsed: f64) -> Self::State;
}

/// The EF21 family for [`round_loop`]: its snapshots also carry f(x^0).
struct Ef21Loop<'a, R: Rounds + ?Sized> {
    r: &'a mut R,
    initial_loss: f64,
}

impl<R: Rounds + ?Sized> LoopRounds for Ef21Loop<'_, R> {
    type Metrics = RoundMetrics;
    type State = ClusterState;

    fn round(&self) -> u64 {
        self.r.round()
    }

    fn step(&mut self) -> Result<(), String> {
        self.r.step()
    }

    fn metrics(&mut self, seconds: f64) -> RoundMetrics {
        self.r.metrics(seconds)
    }

    fn snapshot(&mut self, elapsed: f64) -> ClusterState {
        self.r.snapshot(self.initial_loss, elapsed)
    }
}

/// Limits of [`round_loop`].
pub(crate) struct LoopLimits {
    pub(crate) max_rounds: u64,
    pub(crate) time_limit: Option<f64>,
    /// Log every this many rounds (>= 1).
    pub(crate) log_every: u64,
    pub(crate) checkpoint_every: Option<u64>,
}

/// How [`round_loop`] ended: the fields of a summary besides the last metrics.
pub(crate) struct LoopEnd {
    pub(crate) status: Status,
    pub(crate) rounds: u64,
    pub(crate) message: Option<String>,
}

/// The rounds after round 0, shared by both method families' drivers: run
/// a round (an error ends the run as diverged); log it every `log_every`
/// rounds, at the round limit and when time is up, keeping the metrics in
/// `last` and stopping with `judge`'s status and message if it returns one;
/// checkpoint every `checkpoint_every` rounds and when `on_log` interrupts (a
/// failed checkpoint is reported in the end message); stop at the round
/// limit, on interruption or when time is up.
#[allow(clippy::too_many_arguments)]
pub(crate) fn round_loop<R: LoopRounds>(
    r: &mut R,
    limits: &LoopLimits,
    start: std::time::Instant,
    elapsed0: f64,
    last: &mut Option<R::Metrics>,
    judge: impl Fn(&R::Metrics) -> Option<(Status, Option<String>)>,
    mut on_log: impl FnMut(&R::Metrics) -> Control,
    mut on_checkpoint: impl FnMut(&R::State) -> Result<(), String>,
) -> LoopEnd {
    let mut checkpoint_err: Option<String> = None;
    loop {
        let t = r.round();
        if t >= limits.max_rounds {
            return LoopEnd {
                status: Status::MaxRounds,
                rounds: t,
                message: checkpoint_err,
            };
        }
        if let Err(msg) = r.step() {
            return LoopEnd {
                status: Status::Diverged,
                rounds: r.round(),
                message: Some(format!("diverged: {msg}")),
            };
        }
        let t = r.round();
        let elapsed = elapsed0 + start.elapsed().as_secs_f64();
        let time_up = limits.time_limit.is_some_and(|limit| elapsed >= limit);
        let mut ctl = Control::Continue;
        if t.is_multiple_of(limits.log_every) || t >= limits.max_rounds || time_up {
            let m = r.metrics(elapsed);
            let stop = judge(&m);
            ctl = on_log(&m);
            *last = Some(m);
            if let Some((status, message)) = stop {
                return LoopEnd {
                    status,
                    rounds: t,
                    message,
                };
            }
        }
        let want_ckpt = limits
            .checkpoint_every
            .is_some_and(|c| c > 0 && t.is_multiple_of(c))
            || ctl == Control::Interrupt;
        if want_ckpt {
            if let Err(e) = on_checkpoint(&r.snapshot(elapsed)) {
                checkpoint_err = Some(format!("checkpoint at round {t} failed: {e}"));
            }
        }
        if ctl == Control::Interrupt {
            return LoopEnd {
                status: Status::Interrupted,
                rounds: t,
                message: checkpoint_err,
            };
        }
        if time_up {
            return LoopEnd {
                status: Status::TimeLimit,
                rounds: t,
                message: checkpoint_err,
            };
        }
    }
}

/// Reduces the per-worker losses f_i(x) and gradients grad f_i(x), given in
/// worker-id order, to (f(x), ||grad f(x)||^2) — or, for EF21-Prox with r != 0,
/// to (f(x) + r(x), ||G_gamma(x)||^2) — exactly as [`Cluster::evaluate`]
/// (same operations in the same order, so bit-identical). `grad` and `tmp`
/// are d-sized scratch.
pub fn reduce_eval<'a>(
    parts: &Parts,
    x: &[f64],
    losses: &[f64],
    grads: impl IntoIterator<Item = &'a [f64]>,
    grad: &mut [f64],
    tmp: &mut [f64],
) -> (f64, f64) {
    let n = losses.len() as f64;
    grad.iter_mut().for_each(|v| *v = 0.0);
    let mut loss = 0.0;
    for (g, l) in grads.into_iter().zip(losses) {
        for (a, b) in grad.iter_mut().zip(g) {
            *a += b;
        }
        loss += l;
    }
    loss /= n;
    grad.iter_mut().for_each(|v| *v /= n);
    match parts.server_step {
        ServerStep::Prox { reg } if reg != Regularizer::Zero => {
            let gamma = parts.gamma;
            for ((t, xv), g) in tmp.iter_mut().zip(x).zip(grad.iter()) {
                *t = xv - gamma * g;
            }
            reg.prox(tmp, gamma);
            let gm: f64 = x
                .iter()
                .zip(tmp.iter())
                .map(|(a, b)| ((a - b) / gamma).powi(2))
                .sum();
            (loss + reg.value(x), gm)
        }
        _ => (loss, grad.iter().map(|v| v * v).sum()),
    }
}

/// The cumulative counters of one worker that enter the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Uplink bits as written.
    pub bits_up_wire: u64,
    /// Uplink bits in the papers' convention.
    pub bits_up_paper: u64,
    /// Downlink bits received, as written.
    pub bits_down_wire: u64,
    /// Downlink bits received, papers' convention.
    pub bits_down_paper: u64,
    /// Sample gradients computed.
    pub samples: u64,
}

impl WorkerCounters {
    /// Number of u64 words in [`WorkerCounters::to_words`].
    pub const WORDS: usize = 5;

    /// The counters of a worker's state.
    pub fn of(s: &WorkerState) -> Self {
        WorkerCounters {
            bits_up_wire: s.bits_up_wire,
            bits_up_paper: s.bits_up_paper,
            bits_down_wire: s.bits_down_wire,
            bits_down_paper: s.bits_down_paper,
            samples: s.samples,
        }
    }

    /// As words (for a transport).
    pub fn to_words(self) -> [u64; Self::WORDS] {
        [
            self.bits_up_wire,
            self.bits_up_paper,
            self.bits_down_wire,
            self.bits_down_paper,
            self.samples,
        ]
    }

    /// From words written by [`WorkerCounters::to_words`].
    pub fn from_words(w: &[u64]) -> Self {
        WorkerCounters {
            bits_up_wire: w[0],
            bits_up_paper: w[1],
            bits_down_wire: w[2],
            bits_down_paper: w[3],
            samples: w[4],
        }
    }
}

/// What [`round_metrics`] needs besides the evaluation and the counters.
#[derive(Debug, Clone, Copy)]
pub struct RunTotals {
    /// The server's round t.
    pub round: u64,
    /// Number of (worker, round) participations so far.
    pub participations: u64,
    /// Workers that took part in the last round.
    pub last_participants: usize,
    /// Total number of samples N (0 for streaming oracles).
    pub total_samples: u64,
}

/// Assembles the metrics of a logged round from the evaluation `(loss,
/// grad_norm_sq)` and every worker's counters in worker-id order, exactly as
/// [`Cluster::metrics`] does.
pub fn round_metrics(
    eval: (f64, f64),
    counters: &[WorkerCounters],
    t: RunTotals,
    seconds: f64,
) -> RoundMetrics {
    let n = counters.len() as f64;
    let sum = |f: fn(&WorkerCounters) -> u64| counters.iter().map(f).sum::<u64>() as f64;
    let up_wire = sum(|c| c.bits_up_wire);
    let samples = sum(|c| c.samples);
    let per_part = if t.participations > 0 {
        up_wire / t.participations as f64 * t.round as f64
    } else {
        0.0
    };
    RoundMetrics {
        round: t.round,
        loss: eval.0,
        grad_norm_sq: eval.1,
        bits_up_wire: up_wire / n,
        bits_up_paper: sum(|c| c.bits_up_paper) / n,
        bits_down_wire: sum(|c| c.bits_down_wire) / n,
        bits_down_paper: sum(|c| c.bits_down_paper) / n,
        bits_up_wire_per_participant: per_part,
        epochs: if t.total_samples > 0 {
            samples / t.total_samples as f64
        } else {
            0.0
        },
        participants: t.last_participants,
        seconds,
        test_accuracy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_with_hints, Config};
    use crate::setup::prepare;

    fn config(method: &str, extra: &str, step: &str, rounds: u64, tol: Option<f64>) -> Config {
        let tol = tol.map(|t| format!("tol = {t:e}\n")).unwrap_or_default();
        let s = format!(
            "seed = 5\nthreads = 2\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 6\n[method]\nname = \"{method}\"\n{extra}\n[compressor]\nname = \"top-k\"\nk = 2\n[step]\n{step}\n[init]\nkind = \"gaussian\"\n[stop]\nmax_rounds = {rounds}\nlog_every = 3\n{tol}"
        );
        parse_with_hints(&s).unwrap()
    }

    type Logged = (Vec<RoundMetrics>, Summary, Vec<ClusterState>);

    fn logged(cfg: &Config, via_drive: bool, interrupt_at: Option<u64>) -> Logged {
        let mut c = prepare(cfg).unwrap().cluster;
        let rules = crate::setup::stop_rules(cfg);
        let mut rows = Vec::new();
        let mut ckpts = Vec::new();
        let on_log = |m: &RoundMetrics| {
            let mut m = m.clone();
            m.seconds = 0.0;
            let stop = interrupt_at == Some(m.round);
            rows.push(m);
            if stop {
                Control::Interrupt
            } else {
                Control::Continue
            }
        };
        let on_ckpt = |s: &ClusterState| {
            let mut s = s.clone();
            s.elapsed = 0.0;
            ckpts.push(s);
            Ok(())
        };
        let every = cfg.stop.checkpoint_every;
        let mut s = if via_drive {
            drive(&mut c, &rules, None, every, on_log, on_ckpt)
        } else {
            c.run_with(&rules, None, every, on_log, on_ckpt)
        };
        if let Some(m) = s.last.as_mut() {
            m.seconds = 0.0;
        }
        (rows, s, ckpts)
    }

    /// `drive` is `Cluster::run_with`: same logged rows, summary and
    /// checkpoints for every way a run ends (max rounds, convergence,
    /// blow-up, interruption).
    #[test]
    fn drive_matches_cluster_run() {
        let mut with_ckpt = config("ef21", "", "rule = \"theory\"\nmultiplier = 4.0", 10, None);
        with_ckpt.stop.checkpoint_every = Some(4);
        let cases = [
            (with_ckpt.clone(), None),
            (with_ckpt, Some(6)),
            (
                config(
                    "ef21-pp",
                    "participation = 0.5",
                    "rule = \"theory\"",
                    8,
                    None,
                ),
                None,
            ),
            (
                config(
                    "ef21-prox",
                    "prox = { kind = \"l1\", lambda = 0.01 }",
                    "rule = \"theory\"",
                    7,
                    None,
                ),
                None,
            ),
            (config("gd", "", "rule = \"theory\"", 200, Some(1e-2)), None),
            (
                config("ef21", "", "rule = \"absolute\"\nvalue = 1e9", 50, None),
                None,
            ),
        ];
        let mut statuses = Vec::new();
        for (cfg, interrupt) in cases {
            let mut cfg = cfg;
            if cfg.method.name == "gd" {
                cfg.compressor = efkit_core::compress::CompressorSpec::named("identity");
            }
            let a = logged(&cfg, true, interrupt);
            let b = logged(&cfg, false, interrupt);
            assert_eq!(a, b, "{}", cfg.method.name);
            if cfg.stop.checkpoint_every.is_some() {
                assert!(!a.2.is_empty());
            }
            statuses.push(a.1.status);
        }
        // the cases really exercise the different exits
        for s in [
            Status::MaxRounds,
            Status::Converged,
            Status::Diverged,
            Status::Interrupted,
        ] {
            assert!(statuses.contains(&s), "{s:?} not reached: {statuses:?}");
        }
    }

    /// What `drive` logs, checkpoints and reports, against the rules by hand
    /// (the test above only shows that both entry points agree).
    #[test]
    fn drive_logs_checkpoints_and_stops_by_the_rules() {
        let rounds_of = |l: &Logged| -> (Vec<u64>, Vec<u64>) {
            (
                l.0.iter().map(|m| m.round).collect(),
                l.2.iter().map(|s| s.server.round).collect(),
            )
        };
        // max_rounds = 10, log_every = 3, checkpoint_every = 4
        let mut cfg = config("ef21", "", "rule = \"theory\"", 10, None);
        cfg.stop.checkpoint_every = Some(4);
        let full = logged(&cfg, true, None);
        assert_eq!(rounds_of(&full), (vec![0, 3, 6, 9, 10], vec![4, 8]));
        assert_eq!((full.1.status, full.1.rounds), (Status::MaxRounds, 10));
        assert_eq!(full.1.last.as_ref().unwrap().round, 10);
        // interrupted at the logged round 6: checkpoint there too
        let cut = logged(&cfg, true, Some(6));
        assert_eq!(rounds_of(&cut), (vec![0, 3, 6], vec![4, 6]));
        assert_eq!((cut.1.status, cut.1.rounds), (Status::Interrupted, 6));
        // the rows up to the interruption are the full run's
        assert_eq!(cut.0[..], full.0[..3]);
        // converged: the first logged row at or under tol ends the run
        let tol = 1e-2;
        let mut gd = config("gd", "", "rule = \"theory\"", 200, Some(tol));
        gd.compressor = efkit_core::compress::CompressorSpec::named("identity");
        let conv = logged(&gd, true, None);
        assert_eq!(conv.1.status, Status::Converged);
        let n = conv.0.len();
        assert!(n >= 2, "converged at round 0");
        assert!(conv.0[n - 1].grad_norm_sq <= tol && conv.0[n - 2].grad_norm_sq > tol);
        assert_eq!(conv.1.rounds, conv.0[n - 1].round);
        assert!(conv.0.iter().all(|m| m.round % 3 == 0));
        // time limit: reached after the first round, which is then logged
        let mut quick = config("ef21", "", "rule = \"theory\"", 50, None);
        quick.stop.time_limit = Some(1e-9);
        let timed = logged(&quick, true, None);
        assert_eq!((timed.1.status, timed.1.rounds), (Status::TimeLimit, 1));
        assert_eq!(rounds_of(&timed).0, [0, 1]);
        // a step of 1e9 blows the loss up, and the message names the round
        let big = logged(
            &config("ef21", "", "rule = \"absolute\"\nvalue = 1e9", 50, None),
            true,
            None,
        );
        assert_eq!(big.1.status, Status::Diverged);
        let msg = big.1.message.clone().unwrap();
        assert!(
            msg.starts_with(&format!("diverged at round {}", big.1.rounds)),
            "{msg}"
        );
    }

    /// The reductions reproduce `Cluster::metrics` bit for bit from per-worker values.
    #[test]
    fn reductions_match_cluster_metrics() {
        for cfg in [
            config("ef21", "", "rule = \"theory\"", 3, None),
            config(
                "ef21-prox",
                "prox = { kind = \"l1\", lambda = 0.05 }",
                "rule = \"theory\"",
                3,
                None,
            ),
        ] {
            let mut c = prepare(&cfg).unwrap().cluster;
            for _ in 0..3 {
                c.step().unwrap();
            }
            let want = c.metrics(1.5);
            let x = c.server.state.x.clone();
            let d = x.len();
            let mut losses = Vec::new();
            let mut grads = Vec::new();
            for o in c.oracles.iter_mut() {
                let mut g = vec![0.0; d];
                losses.push(o.loss_grad(&x, &mut g));
                grads.push(g);
            }
            let (mut grad, mut tmp) = (vec![0.0; d], vec![0.0; d]);
            let eval = reduce_eval(
                &c.parts,
                &x,
                &losses,
                grads.iter().map(|g| g.as_slice()),
                &mut grad,
                &mut tmp,
            );
            let counters: Vec<WorkerCounters> = c
                .workers
                .iter()
                .map(|w| WorkerCounters::of(&w.state))
                .collect();
            let snap = c.snapshot(0.0, 0.0);
            let totals = RunTotals {
                round: c.round(),
                participations: snap.participations,
                last_participants: snap.last_participants,
                total_samples: c.total_samples,
            };
            let got = round_metrics(eval, &counters, totals, 1.5);
            assert_eq!(got, want, "{}", cfg.method.name);
            // and the values by hand: f = mean f_i (+ lambda ||x||_1), and
            // ||grad f||^2 or, for the prox, ||(x - soft(x - gamma grad f, gamma lambda)) / gamma||^2
            let n = losses.len() as f64;
            let mean_grad: Vec<f64> = (0..d)
                .map(|j| grads.iter().map(|g| g[j]).sum::<f64>() / n)
                .collect();
            let mut loss = losses.iter().sum::<f64>() / n;
            let norm = if cfg.method.name == "ef21-prox" {
                let (gamma, lambda) = (c.parts.gamma, 0.05);
                loss += lambda * x.iter().map(|v| v.abs()).sum::<f64>();
                x.iter()
                    .zip(&mean_grad)
                    .map(|(&xj, &gj)| {
                        let y = xj - gamma * gj;
                        let soft = y.signum() * (y.abs() - gamma * lambda).max(0.0);
                        ((xj - soft) / gamma).powi(2)
                    })
                    .sum::<f64>()
            } else {
                mean_grad.iter().map(|g| g * g).sum::<f64>()
            };
            let rel = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1e-300);
            assert!(
                rel(got.loss, loss),
                "{}: {} vs {loss}",
                cfg.method.name,
                got.loss
            );
            assert!(
                rel(got.grad_norm_sq, norm),
                "{}: {} vs {norm}",
                cfg.method.name,
                got.grad_norm_sq
            );
            assert_eq!(got.loss.to_bits(), want.loss.to_bits());
            assert_eq!(got.grad_norm_sq.to_bits(), want.grad_norm_sq.to_bits());
            for cw in &counters {
                assert_eq!(WorkerCounters::from_words(&cw.to_words()), *cw);
            }
        }
    }
}
