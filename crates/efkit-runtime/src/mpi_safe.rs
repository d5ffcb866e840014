//! The Safe-EF family over MPI: the two-phase rounds of `efkit_core::safe`
//! (Islamov, As & Fatkhullin, ICML 2025; algorithms.md §9) on P ranks, with
//! the transport, setup and failure handling of [`crate::mpi_backend`].
//!
//! The n workers are spread over the ranks in contiguous blocks as for the
//! EF21 family; rank 0 is the server and hosts the first block. One round t
//! of a switching rule moves exactly the protocol's encoded messages:
//!
//! ```text
//! rank 0:     bcast header [STEP, t]                                   32 B control
//! every rank: hosted i: c_i = g_i(w^t) -> m_i^1 = encode(c_i)
//!             gatherv |m_i^1|, then the bytes m_i^1 to rank 0         4 B/worker control + payload
//! rank 0:     decode m_i^1 in worker order, s_t = [mean_i c_i <= c] -> encode(s_t)
//!             bcast header [DOWN, t, |m|, paper bits], bcast m       32 B control + payload
//! every rank: hosted i: decode s_t, h_i = s_t ? df_i(w^t) : dg_i(w^t),
//!             m_i^2 = encode(C(e_i + gamma h_i)) (EF14; EF21 or none for the baselines)
//!             gatherv |m_i^2|, then the bytes m_i^2
//! rank 0:     decode m_i^2 in worker order, x^{t+1} = Pi_X(x^t - mean_i v_i),
//!             model message p = C_0(x^{t+1} - w^t) (or the dense x^{t+1})
//!             bcast header [DOWN, t, |p|, paper bits], bcast p
//! every rank: hosted i: decode p, w^{t+1} = w^t + p
//! ```
//!
//! The primal-dual baseline has one phase: uplink [g_i(w^t), C(e_i + gamma
//! (df_i + lambda dg_i))], downlink [lambda^{t+1}, p]. Every party decodes
//! exactly the bytes that travelled (rank 0 its own workers' messages too),
//! the server sums in worker-id order, and every random draw is the stream
//! `(seed, purpose, worker, round)`, so `metrics.jsonl` is bit-identical
//! (seconds aside) to the in-process [`crate::safe::SafeCluster`] for every P.
//!
//! Failures inside a round: a worker's error (a non-finite value met by a
//! compressor) travels in the gather instead of its message; rank 0 then
//! sends `ABORT` instead of the next downlink and stops the run as the
//! in-process driver does. The model downlink is decoded by every worker from
//! the same bytes with the same keys (no worker-dependent input), so rank 0,
//! which hosts worker 0, sees any decode failure of that message itself.
//!
//! Metrics at a logged round: rank 0 broadcasts the output xbar and the model
//! w^t, every rank evaluates f_i and g_i at both for its workers and gathers
//! them with the workers' bit counters; rank 0 reduces in worker-id order
//! ([`crate::safe::mean_pairs`], [`crate::safe::safe_metrics`]) and applies
//! the stopping rules of [`crate::safe::drive_safe`]. Checkpoints gather every
//! worker's [`SafeWorkerState`] into the same [`SafeClusterState`] as the
//! in-process run; a resumed run scatters them back (see
//! [`crate::mpi_backend::launch`]).

use std::cell::Cell;
use std::rc::Rc;

use efkit_core::method::{RoundCtx, Wire};
use efkit_core::rng::{stream, Purpose};
use efkit_core::safe::{
    Rule, SafeCodecs, SafeError, SafeParts, SafeServer, SafeWorker, SafeWorkerState,
};
use efkit_problems::constrained::ConstrainedOracle;
use rayon::prelude::*;

use crate::cluster::{Control, Status};
use crate::mpi_backend::{
    allocated, pool_for, serve_root, status_code, Follower, Link, MpiRuntime, Traffic, CMD_ABORT,
    CMD_DOWN, CMD_EVAL, CMD_SNAPSHOT, CMD_STEP, CMD_STOP, EXIT_ABORTED,
};
use crate::safe::{
    counters, drive_safe, mean_pairs, safe_metrics, SafeClusterState, SafeMetrics, SafePrepared,
    SafeRounds, SafeSetupInfo, SafeStop, SafeSummary,
};

/// Values per worker in the evaluation gather: f_i and g_i at xbar and at
/// w^t, and the four bit counters.
const EVAL_WORDS: usize = 8;

/// How a Safe-EF run ended on this rank.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per run
pub enum SafeOutcome {
    /// Rank 0: the summary (as [`crate::safe::SafeCluster::run`] returns it).
    Root(SafeSummary),
    /// Other ranks: the status rank 0 announced.
    Follower(Status),
}

impl SafeOutcome {
    /// The status of the run.
    pub fn status(&self) -> Status {
        match self {
            SafeOutcome::Root(s) => s.status,
            SafeOutcome::Follower(s) => *s,
        }
    }
}

/// One rank's share of a distributed Safe-EF run: its block of workers and
/// oracles; on rank 0 also the server.
pub struct MpiSafeCluster {
    link: Link,
    parts: SafeParts,
    codecs: SafeCodecs,
    server: SafeServer,
    seed: u64,
    n: usize,
    d: usize,
    lo: usize,
    workers: Vec<SafeWorker>,
    oracles: Vec<Box<dyn ConstrainedOracle>>,
    batch: Option<usize>,
    f_star: Option<f64>,
    pool: rayon::ThreadPool,
    info: Option<SafeSetupInfo>,
    errs: Vec<Option<String>>,
    h: Vec<Vec<f64>>,
    h2: Vec<Vec<f64>>,
    flag_down: Vec<u8>,
    model_down: Wire,
    points: Vec<f64>,
    out: Vec<f64>,
    evals: Vec<[f64; 4]>,
    eval_send: Vec<f64>,
    eval_recv: Vec<f64>,
    counters: Vec<[u64; 4]>,
    traffic_out: Rc<Cell<Traffic>>,
}

impl MpiSafeCluster {
    /// Keeps this rank's block of a prepared run (the whole run on every
    /// rank); a resumed run receives the restored worker states from rank 0
    /// (collective).
    pub(crate) fn from_prepared(
        rt: MpiRuntime,
        prepared: SafePrepared,
        threads: usize,
        resumed: bool,
    ) -> MpiSafeCluster {
        let SafePrepared { cluster, info, .. } = prepared;
        let root = rt.is_root();
        let crate::safe::SafeCluster {
            parts,
            codecs,
            server,
            workers,
            oracles,
            batch,
            seed,
            f_star,
            ..
        } = cluster;
        let n = workers.len();
        let d = server.state.x.len();
        let mut link = Link::new(rt, n);
        let all_states: Option<Vec<SafeWorkerState>> =
            (root && resumed).then(|| workers.iter().map(|w| w.state.clone()).collect());
        let range = link.hosted();
        let (lo, hi) = (range.start, range.end);
        let mut workers: Vec<SafeWorker> = workers.into_iter().skip(lo).take(hi - lo).collect();
        let oracles: Vec<Box<dyn ConstrainedOracle>> =
            oracles.into_iter().skip(lo).take(hi - lo).collect();
        if resumed {
            let states = link.scatter_json(all_states.as_deref());
            for (w, s) in workers.iter_mut().zip(states) {
                assert_eq!(w.state.id, s.id, "restored states in worker order");
                w.state = s;
            }
        }
        let hosted = hi - lo;
        let pool = pool_for(&link.rt, threads);
        MpiSafeCluster {
            parts,
            codecs,
            server,
            seed,
            n,
            d,
            lo,
            workers,
            oracles,
            batch,
            f_star,
            pool,
            info: root.then_some(info),
            errs: vec![None; hosted],
            h: vec![vec![0.0; d]; hosted],
            h2: vec![vec![0.0; d]; hosted],
            flag_down: allocated(Vec::new()),
            model_down: Wire {
                bytes: allocated(Vec::new()),
                paper_bits: 0,
            },
            points: vec![0.0; 2 * d],
            out: vec![0.0; d],
            evals: vec![[0.0; 4]; hosted],
            eval_send: allocated(Vec::with_capacity(hosted * EVAL_WORDS)),
            eval_recv: if root {
                vec![0.0; n * EVAL_WORDS]
            } else {
                Vec::new()
            },
            counters: vec![[0; 4]; if root { n } else { 0 }],
            traffic_out: Rc::new(Cell::new(Traffic::default())),
            link,
        }
    }

    /// The runtime (rank, size).
    pub fn runtime(&self) -> &MpiRuntime {
        &self.link.rt
    }

    /// What setup resolved (rank 0 only).
    pub fn info(&self) -> Option<&SafeSetupInfo> {
        self.info.as_ref()
    }

    /// Number of workers n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The workers hosted by this rank.
    pub fn hosted(&self) -> std::ops::Range<usize> {
        self.lo..self.lo + self.workers.len()
    }

    /// What rank 0 passed to MPI so far.
    pub fn traffic(&self) -> Traffic {
        self.link.traffic
    }

    /// Runs the experiment (collective). On rank 0, rounds are driven by
    /// [`drive_safe`] (the rules, messages and checkpoints of
    /// [`crate::safe::SafeCluster::run_with`]; `resume` = the elapsed seconds
    /// of a run restored at [`crate::mpi_backend::launch`]); `on_log` sees
    /// every logged round with the traffic so far, and every
    /// `checkpoint_every` rounds (and on interruption) `on_checkpoint`
    /// receives the full state gathered from every rank, the same
    /// [`SafeClusterState`] as in-process. The other ranks serve rank 0's
    /// commands until it stops and return its status.
    pub fn run_with(
        &mut self,
        rules: &SafeStop,
        resume: Option<f64>,
        checkpoint_every: Option<u64>,
        mut on_log: impl FnMut(&SafeMetrics, &Traffic) -> Control,
        on_checkpoint: impl FnMut(&SafeClusterState) -> Result<(), String>,
    ) -> SafeOutcome {
        self.link.rt.watchdog.arm(true);
        let outcome = if self.link.is_root() {
            let traffic = Rc::clone(&self.traffic_out);
            let summary = drive_safe(
                &mut RootRounds(self),
                rules,
                resume,
                checkpoint_every,
                |m| on_log(m, &traffic.get()),
                on_checkpoint,
            );
            self.link
                .send_header([CMD_STOP, status_code(summary.status), 0, 0]);
            SafeOutcome::Root(summary)
        } else {
            SafeOutcome::Follower(serve_root(self))
        };
        self.link.rt.watchdog.arm(false);
        outcome
    }

    fn gather_states(&mut self) -> Vec<SafeWorkerState> {
        let mine: Vec<&SafeWorkerState> = self.workers.iter().map(|w| &w.state).collect();
        self.link.gather_json(&mine)
    }

    /// Packs the hosted workers' messages (or their errors) and gathers them to rank 0.
    fn gather_phase(
        link: &mut Link,
        workers: &[SafeWorker],
        errs: &[Option<String>],
        msg: fn(&SafeWorker) -> &[u8],
    ) {
        link.clear_uplinks();
        for (w, e) in workers.iter().zip(errs) {
            match e {
                Some(m) => link.push_uplink(Err(m)),
                None => link.push_uplink(Ok(msg(w))),
            }
        }
        link.gather_uplinks(|block| block.len());
    }

    /// A downlink of round `round`. Rank 0: announces `msg` (or, when
    /// `failure` is set, that the round ends) and broadcasts it into `buf`;
    /// other ranks: receive it. Returns the paper bits, or the failure (on
    /// rank 0 the message, elsewhere a placeholder the caller drops).
    fn downlink(
        link: &mut Link,
        round: u64,
        msg: Option<&Wire>,
        failure: Option<String>,
        buf: &mut Vec<u8>,
    ) -> Result<u64, String> {
        let (len, paper_bits) = if link.is_root() {
            if let Some(f) = failure {
                link.send_header([CMD_ABORT, round, 0, 0]);
                return Err(f);
            }
            let m = msg.expect("rank 0 sends a message");
            buf.clear();
            buf.extend_from_slice(&m.bytes);
            link.send_header([CMD_DOWN, round, m.bytes.len() as u64, m.paper_bits]);
            (m.bytes.len(), m.paper_bits)
        } else {
            let h = link.recv_header();
            match h[0] {
                CMD_DOWN if h[1] == round => (h[2] as usize, h[3]),
                CMD_ABORT => return Err(String::new()),
                other => link.rt.abort(
                    &format!(
                        "expected the downlink of round {round}, got command {other} for round {}",
                        h[1]
                    ),
                    EXIT_ABORTED,
                ),
            }
        };
        link.bcast_downlink(buf, len);
        Ok(paper_bits)
    }

    /// Rank 0: the first error among the gathered messages, else the messages in worker order.
    fn gathered(link: &Link) -> Result<Vec<&[u8]>, String> {
        link.uplinks().collect()
    }

    /// Round `round` on every rank; on rank 0 the server decides and applies.
    fn round_body(&mut self, round: u64) -> Result<(), String> {
        let root = self.link.is_root();
        self.link.start_round(round);
        if root {
            self.link.traffic.rounds += 1;
        }
        self.link.inject_fault(round);
        let rc = RoundCtx {
            seed: self.seed,
            round,
        };
        let (lo, seed, batch) = (self.lo, self.seed, self.batch);
        let err = move |i: usize, e: String| format!("worker {i}, round {round}: {e}");
        let parts = &self.parts;
        let codecs = &self.codecs;
        match parts.rule {
            Rule::Switching { .. } => {
                // phase 1: constraint values at w^t
                let (workers, oracles, errs) =
                    (&mut self.workers, &mut self.oracles, &mut self.errs);
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(errs.par_iter_mut())
                        .enumerate()
                        .for_each(|(j, ((w, o), e))| {
                            let i = lo + j;
                            let v = match batch {
                                Some(b) => {
                                    let mut rng = stream(seed, Purpose::Sample, i as u64, round);
                                    o.draw_batch(&w.state.w, b, &mut rng);
                                    o.batch_constraint(&w.state.w, None)
                                }
                                None => o.constraint(&w.state.w, None),
                            };
                            *e = w
                                .send_constraint(v, parts)
                                .err()
                                .map(|x| err(i, format!("constraint value: {x}")));
                        })
                });
                Self::gather_phase(&mut self.link, &self.workers, &self.errs, |w| {
                    &w.scratch.scalar_wire.bytes
                });
                let failure = if root {
                    Self::gathered(&self.link).and_then(|scalars| {
                        self.server
                            .decide(&scalars, parts)
                            .map(|_| ())
                            .map_err(|e| format!("server, round {round}: {e}"))
                    })
                } else {
                    Ok(())
                };
                Self::downlink(
                    &mut self.link,
                    round,
                    Some(&self.server.state.flag_wire),
                    failure.err(),
                    &mut self.flag_down,
                )?;
                // phase 2: subgradient of f or g at w^t, compressed
                let flag_bytes = &self.flag_down;
                let (workers, oracles, errs, hs) = (
                    &mut self.workers,
                    &mut self.oracles,
                    &mut self.errs,
                    &mut self.h,
                );
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(errs.par_iter_mut().zip(hs.par_iter_mut()))
                        .enumerate()
                        .for_each(|(j, ((w, o), (e, h)))| {
                            let i = lo + j;
                            *e = (|| {
                                let flag = w
                                    .receive_flag(flag_bytes)
                                    .map_err(|x| err(i, x.to_string()))?;
                                let x = &w.state.w;
                                let _ = match (batch, flag) {
                                    (Some(_), true) => o.batch_objective(x, Some(h)),
                                    (Some(_), false) => o.batch_constraint(x, Some(h)),
                                    (None, true) => o.objective(x, Some(h)),
                                    (None, false) => o.constraint(x, Some(h)),
                                };
                                w.send_vector(h, None, parts, codecs, rc)
                                    .map_err(|x| err(i, x.to_string()))
                            })()
                            .err();
                        })
                });
            }
            Rule::PrimalDual { .. } => {
                let (workers, oracles, errs, hs, h2s) = (
                    &mut self.workers,
                    &mut self.oracles,
                    &mut self.errs,
                    &mut self.h,
                    &mut self.h2,
                );
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(
                            errs.par_iter_mut()
                                .zip(hs.par_iter_mut().zip(h2s.par_iter_mut())),
                        )
                        .enumerate()
                        .for_each(|(j, ((w, o), (e, (h, h2))))| {
                            let i = lo + j;
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
                            *e = w
                                .send_vector(h, Some(gv), parts, codecs, rc)
                                .err()
                                .map(|x| err(i, x.to_string()));
                        })
                });
            }
        }
        // the vector uplinks, the server step, the model downlink
        Self::gather_phase(&mut self.link, &self.workers, &self.errs, |w| {
            &w.scratch.vector_wire.bytes
        });
        let failure = if root {
            Self::gathered(&self.link).and_then(|ups| {
                self.server
                    .apply(&ups, &self.parts, &self.codecs, rc)
                    .map_err(|e: SafeError| format!("server, round {round}: {e}"))
            })
        } else {
            Ok(())
        };
        let paper_bits = Self::downlink(
            &mut self.link,
            round,
            Some(&self.server.state.model_wire),
            failure.err(),
            &mut self.model_down.bytes,
        )?;
        self.model_down.paper_bits = paper_bits;
        let (workers, errs, model) = (&mut self.workers, &mut self.errs, &self.model_down);
        let (parts, codecs) = (&self.parts, &self.codecs);
        self.pool.install(|| {
            workers
                .par_iter_mut()
                .zip(errs.par_iter_mut())
                .enumerate()
                .for_each(|(j, (w, e))| {
                    *e = w
                        .receive_model_own(model, parts, codecs, rc)
                        .err()
                        .map(|x| err(lo + j, x.to_string()));
                })
        });
        // every worker decodes the same bytes with the same keys: rank 0's
        // first worker fails exactly when any worker does
        match self.errs.iter().flatten().next() {
            Some(m) => Err(m.clone()),
            None => Ok(()),
        }
    }

    /// Evaluation on every rank at xbar and w^t (broadcast by rank 0); rank 0
    /// receives every worker's values and counters in `eval_recv`.
    fn eval_body(&mut self) {
        let d = self.d;
        if self.link.is_root() {
            self.server.output(self.parts.radius, &mut self.out);
            self.points[..d].copy_from_slice(&self.out);
            self.points[d..].copy_from_slice(&self.server.state.w);
        }
        self.link.bcast_f64(&mut self.points);
        let (xbar, w) = self.points.split_at(d);
        let (oracles, evals) = (&mut self.oracles, &mut self.evals);
        self.pool.install(|| {
            oracles
                .par_iter_mut()
                .zip(evals.par_iter_mut())
                .for_each(|(o, e)| {
                    *e = [
                        o.objective(xbar, None),
                        o.constraint(xbar, None),
                        o.objective(w, None),
                        o.constraint(w, None),
                    ];
                })
        });
        self.eval_send.clear();
        for (w, e) in self.workers.iter().zip(&self.evals) {
            self.eval_send.extend_from_slice(e);
            // counters travel as f64 values: exact below 2^53
            for c in counters(&w.state) {
                debug_assert!(c < (1u64 << 53));
                self.eval_send.push(c as f64);
            }
        }
        self.link
            .gather_f64(&self.eval_send, &mut self.eval_recv, |b| {
                b.len() * EVAL_WORDS
            });
    }
}

/// Rank 0's view as a [`SafeRounds`] driver.
struct RootRounds<'a>(&'a mut MpiSafeCluster);

impl SafeRounds for RootRounds<'_> {
    fn round(&self) -> u64 {
        self.0.server.state.round
    }

    fn step(&mut self) -> Result<(), String> {
        let c = &mut *self.0;
        let round = c.server.state.round;
        c.link.send_header([CMD_STEP, round, 0, 0]);
        c.round_body(round)
    }

    fn metrics(&mut self, seconds: f64) -> SafeMetrics {
        let c = &mut *self.0;
        c.link.send_header([CMD_EVAL, c.server.state.round, 0, 0]);
        c.eval_body();
        let rec = |i: usize| &c.eval_recv[i * EVAL_WORDS..(i + 1) * EVAL_WORDS];
        let at_out = mean_pairs((0..c.n).map(|i| (rec(i)[0], rec(i)[1])));
        let at_w = mean_pairs((0..c.n).map(|i| (rec(i)[2], rec(i)[3])));
        for i in 0..c.n {
            let r = &c.eval_recv[i * EVAL_WORDS + 4..(i + 1) * EVAL_WORDS];
            c.counters[i] = [r[0] as u64, r[1] as u64, r[2] as u64, r[3] as u64];
        }
        c.traffic_out.set(c.link.traffic);
        safe_metrics(
            at_out,
            at_w,
            &c.counters,
            &c.server.state,
            &c.parts,
            c.f_star,
            seconds,
        )
    }

    fn snapshot(&mut self, elapsed: f64) -> SafeClusterState {
        let c = &mut *self.0;
        c.link
            .send_header([CMD_SNAPSHOT, c.server.state.round, 0, 0]);
        let workers = c.gather_states();
        SafeClusterState {
            server: c.server.state.clone(),
            workers,
            elapsed,
        }
    }
}
impl Follower for MpiSafeCluster {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn step(&mut self, h: [u64; 4]) {
        // errors were reported to rank 0 inside the round
        let _ = self.round_body(h[1]);
    }

    fn eval(&mut self) {
        self.eval_body();
    }

    fn snapshot(&mut self) {
        let _ = self.gather_states();
    }
}
