//! The in-process cluster: n workers on a thread pool, one server.

use efkit_core::fork::Fork;
use efkit_core::method::{Codecs, Downlink, Parts, RoundCtx, Server, Worker};
use efkit_core::oracle::Oracle;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Metrics of one logged round, at the server's model x^t.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// Round t (number of server updates so far).
    pub round: u64,
    /// f(x^t) = (1/n) sum_i f_i(x^t) (plus r(x^t) for EF21-Prox).
    pub loss: f64,
    /// ||(1/n) sum_i grad f_i(x^t)||^2, or the squared gradient mapping for EF21-Prox.
    pub grad_norm_sq: f64,
    /// Cumulative uplink bits per worker (averaged over workers), as written.
    pub bits_up_wire: f64,
    /// Cumulative uplink bits per worker in the papers' convention (32 per value, indices free).
    pub bits_up_paper: f64,
    /// Cumulative downlink bits received per worker (averaged over workers), as written.
    pub bits_down_wire: f64,
    /// Cumulative downlink bits per worker in the papers' convention.
    pub bits_down_paper: f64,
    /// Cumulative uplink bits per participating client: total uplink bits divided
    /// by the number of (worker, round) participations times the rounds (EF21-PP plots).
    pub bits_up_wire_per_participant: f64,
    /// Sample gradients computed so far divided by the total number of samples N.
    pub epochs: f64,
    /// Workers that took part in the last round.
    pub participants: usize,
    /// Wall-clock seconds since the start of the run.
    pub seconds: f64,
    /// Accuracy of x^t on the problem's test set, for problems that have one
    /// (the MNIST MLP); absent from `metrics.jsonl` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

/// Accuracy of a model x on a held-out test set (set by the problem's setup;
/// called at every logged round on the server's x).
pub type TestEvaluator = Box<dyn FnMut(&[f64]) -> f64 + Send>;

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// ||grad f||^2 reached the tolerance.
    Converged,
    /// The round limit was reached.
    MaxRounds,
    /// The wall-clock limit was reached.
    TimeLimit,
    /// A non-finite value or a blow-up was detected.
    Diverged,
    /// Stopped by the caller (e.g. SIGINT).
    Interrupted,
}

/// Stopping rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StopRules {
    /// Maximum number of rounds.
    pub max_rounds: u64,
    /// Stop when ||grad f||^2 <= tol (checked at logged rounds).
    pub tol: Option<f64>,
    /// Wall-clock limit in seconds.
    pub time_limit: Option<f64>,
    /// Diverged when loss > blowup * max(1, |initial loss|).
    pub blowup: f64,
    /// Log (and evaluate) every this many rounds (the last round is always logged).
    pub log_every: u64,
}

/// What the caller wants after a logged round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now with status `interrupted`.
    Interrupt,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Why it stopped.
    pub status: Status,
    /// Rounds run.
    pub rounds: u64,
    /// The last logged metrics.
    pub last: Option<RoundMetrics>,
    /// A message for diverged runs naming the round and the quantity.
    pub message: Option<String>,
}

/// The full state of a cluster: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Server state.
    pub server: efkit_core::method::ServerState,
    /// Worker states by id.
    pub workers: Vec<efkit_core::method::WorkerState>,
    /// Total (worker, round) participations so far.
    pub participations: u64,
    /// Participants of the last round.
    pub last_participants: usize,
    /// f(x^0), for the blow-up rule.
    pub initial_loss: f64,
    /// Seconds elapsed when the state was taken.
    pub elapsed: f64,
}

/// The most worker threads a config may ask for: far more than any machine's
/// cores, and few enough that a typo (`threads = 100000`) is an error rather
/// than thousands of threads that make the machine unresponsive.
pub const MAX_THREADS: usize = 1024;

/// Checks `threads` (0 = one per core) against [`MAX_THREADS`].
pub fn check_threads(threads: usize) -> Result<(), String> {
    if threads > MAX_THREADS {
        Err(format!(
            "{threads} threads is more than the {MAX_THREADS} allowed (0 = one per core; results do not depend on it)"
        ))
    } else {
        Ok(())
    }
}

/// The least memory the state of `n` workers in dimension `d` takes: each
/// worker keeps at least its estimate g_i and two d-vectors of scratch, the
/// server x and g (8 bytes per entry). A lower bound: methods with momentum
/// or PAGE keep more.
pub fn state_bytes_lower_bound(d: usize, n: usize) -> u128 {
    8 * d as u128 * (3 * n as u128 + 2)
}

/// Refuses a run whose state cannot fit in this machine's memory (a feature
/// index of 4e9 in a data file, a typo in `dim`): a clear error instead of
/// an allocation failure or the kernel's OOM killer. Machines that do not
/// report `MemTotal` in /proc/meminfo are not checked.
pub fn check_state_memory(d: usize, n: usize) -> Result<(), String> {
    let need = state_bytes_lower_bound(d, n);
    let Some(total) = machine_memory() else {
        return Ok(());
    };
    if need > total {
        Err(format!(
            "d = {d} with n = {n} workers needs at least {:.1} GB of state, more than this machine's {:.1} GB",
            need as f64 / 1e9,
            total as f64 / 1e9
        ))
    } else {
        Ok(())
    }
}

/// This machine's memory in bytes (`MemTotal` of /proc/meminfo; `None`
/// where it is not reported).
pub fn machine_memory() -> Option<u128> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u128>().ok())
            .map(|kb| kb * 1024)
    })
}

/// The number of threads of [`worker_pool`]`(threads)`.
pub fn pool_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |c| c.get())
    }
}

/// The thread pool of an in-process cluster: `threads` threads, or one per
/// core for 0 (counted here, not taken from rayon's default, which follows
/// `RAYON_NUM_THREADS`: the CLI sets that variable to keep candle's own
/// threading out of the way of the worker threads).
pub fn worker_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(pool_threads(threads))
        .build()
        .expect("thread pool")
}

/// A thread pool as the server's [`Fork`]: its dense pass is cut into one
/// piece per thread (called inside the pool, so `rayon::join` runs on it).
struct PoolFork<'p>(&'p rayon::ThreadPool);

impl Fork for PoolFork<'_> {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        rayon::join(a, b);
    }

    fn ways(&self) -> usize {
        self.0.current_num_threads()
    }
}

/// The workers and their oracles, lent to the pool's threads pair by pair:
/// [`run_workers`] hands each pair to one thread at a time, which is what
/// makes [`Pairs::get`] sound. (A `Mutex` per pair would say the same
/// without `unsafe`, but a round may not allocate, and the pairs are
/// borrowed anew each round.)
struct Pairs<'a> {
    workers: *mut Worker,
    oracles: *mut Box<dyn Oracle>,
    len: usize,
    _borrow: PhantomData<Lent<'a>>,
}

/// What [`Pairs`] borrows.
type Lent<'a> = (&'a mut [Worker], &'a mut [Box<dyn Oracle>]);

// SAFETY: `Pairs` only hands out the `&mut` borrows its creator gave up (see
// `get`); workers and oracles are `Send` (checked below), so using them from
// another thread is sound as long as no two threads hold the same pair.
unsafe impl Sync for Pairs<'_> {}

// `Pairs: Sync` above relies on this.
const _: fn() = || {
    fn send<T: Send + ?Sized>() {}
    send::<Worker>();
    send::<dyn Oracle>();
};

impl<'a> Pairs<'a> {
    fn new(workers: &'a mut [Worker], oracles: &'a mut [Box<dyn Oracle>]) -> Self {
        assert_eq!(workers.len(), oracles.len(), "one oracle per worker");
        Pairs {
            len: workers.len(),
            workers: workers.as_mut_ptr(),
            oracles: oracles.as_mut_ptr(),
            _borrow: PhantomData,
        }
    }

    /// Worker `i` and its oracle.
    ///
    /// # Safety
    /// No other borrow of pair `i` may be live while the returned ones are
    /// (callers get `i` from [`run_workers`], which gives each pair to one
    /// thread at a time).
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> (&mut Worker, &mut dyn Oracle) {
        assert!(i < self.len, "pair {i} of {}", self.len);
        // SAFETY: in bounds (checked), borrowed for 'a by `new`, and not
        // aliased (the caller's contract).
        unsafe { (&mut *self.workers.add(i), &mut **self.oracles.add(i)) }
    }
}

/// A slot's progress in a round ([`run_workers`]): its step not yet done.
const PENDING: u8 = 0;
/// Its step done.
const STEPPED: u8 = 1;
/// Its step done and its next minibatch staged (or being staged).
const STAGED: u8 = 2;

/// Runs `step(s)` for every slot `s` in `0..claims.len()` on the threads of
/// `pool`, taking the slots in order one at a time (a thread that finishes
/// a step takes the next unstarted one, so the threads end at most one
/// step apart, not a run of steps apart). A thread left with no step to
/// start, while another thread still runs the round's last steps, calls
/// `stage(s)` on finished slots instead of waiting, the one it just ran
/// first (the next round's minibatch gathered ahead,
/// [`Worker::stage_next`]: a hint that changes no value, so which slots get
/// staged does not matter). With one thread nothing is staged.
///
/// Guarantees, on which [`Pairs::get`] relies: `step(s)` runs at most once
/// (exactly once without failures or panics), `stage(s)` at most once and
/// only after `step(s)` has returned, and no two calls for the same `s`
/// overlap. Returns the error of the lowest failing slot: once a failure is
/// seen no step above it starts, but every step below it still runs, so
/// the error reported does not depend on timing. A panicking step is
/// re-raised after the other threads' runners return. `claims` is scratch
/// (any values on entry).
fn run_workers<S, G>(
    pool: &rayon::ThreadPool,
    claims: &[AtomicU8],
    step: S,
    stage: G,
) -> Result<(), String>
where
    S: Fn(usize) -> Result<(), String> + Sync,
    G: Fn(usize) + Sync,
{
    let k = claims.len();
    for c in claims {
        c.store(PENDING, Ordering::Relaxed);
    }
    let next_step = AtomicUsize::new(0);
    let next_stage = AtomicUsize::new(0);
    let stepped = AtomicUsize::new(0);
    // the lowest failing slot (usize::MAX: none) and its error
    let failed_at = AtomicUsize::new(usize::MAX);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let runner = || {
        let mut last = None;
        loop {
            let s = next_step.fetch_add(1, Ordering::Relaxed);
            if s >= k || failed_at.load(Ordering::Relaxed) < s {
                break;
            }
            if let Err(e) = step(s) {
                let mut f = failure.lock().unwrap_or_else(PoisonError::into_inner);
                if s < failed_at.load(Ordering::Relaxed) {
                    failed_at.store(s, Ordering::Relaxed);
                    *f = Some(e);
                }
            }
            claims[s].store(STEPPED, Ordering::Release);
            stepped.fetch_add(1, Ordering::AcqRel);
            last = Some(s);
        }
        // the round's last steps run elsewhere: stage finished slots
        // meanwhile, this thread's last one first (a single pass over the
        // others: a slot still running when the pass reaches it is left)
        let busy = || {
            stepped.load(Ordering::Acquire) < k && failed_at.load(Ordering::Relaxed) == usize::MAX
        };
        let claim = |s: usize| {
            claims[s]
                .compare_exchange(STEPPED, STAGED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        if let Some(s) = last {
            if busy() && claim(s) {
                stage(s);
            }
        }
        while busy() {
            let s = next_stage.fetch_add(1, Ordering::Relaxed);
            if s >= k {
                break;
            }
            if claim(s) {
                stage(s);
            }
        }
    };
    // one runner per thread (a thread may run two when the other is slow to
    // wake; the second then finds nothing left, which is fine)
    pool.install(|| {
        (0..pool.current_num_threads())
            .into_par_iter()
            .with_max_len(1)
            .for_each(|_| runner())
    });
    match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Server, workers and their oracles in one process.
pub struct Cluster {
    /// The method parts.
    pub parts: Parts,
    /// The compressors.
    pub codecs: Codecs,
    /// The server.
    pub server: Server,
    /// The workers, by id.
    pub workers: Vec<Worker>,
    /// The oracles, by worker id.
    pub oracles: Vec<Box<dyn Oracle>>,
    /// The run seed.
    pub seed: u64,
    /// Total number of samples N (for epochs); 0 for streaming oracles.
    pub total_samples: u64,
    /// Shared so that a round can run inside it while borrowing the rest.
    pool: std::sync::Arc<rayon::ThreadPool>,
    mask: Vec<bool>,
    /// Who takes part in the next round (staging only for them).
    next_mask: Vec<bool>,
    idx: Vec<u32>,
    /// The round's participating workers, in id order.
    order: Vec<usize>,
    /// Scratch of [`run_workers`], one per worker.
    claims: Vec<AtomicU8>,
    eval_grads: Vec<Vec<f64>>,
    eval_losses: Vec<f64>,
    grad: Vec<f64>,
    tmp: Vec<f64>,
    participations: u64,
    last_participants: usize,
    counters: Vec<crate::driver::WorkerCounters>,
    /// Test-set accuracy of the server's x for the metrics (if the problem has a test set).
    pub test_evaluator: Option<TestEvaluator>,
}

impl Cluster {
    /// A cluster starting at `x0` with `threads` worker threads (0 = all cores).
    pub fn new(
        parts: Parts,
        codecs: Codecs,
        oracles: Vec<Box<dyn Oracle>>,
        x0: &[f64],
        seed: u64,
        threads: usize,
    ) -> Self {
        let n = oracles.len();
        let d = x0.len();
        let total_samples = oracles
            .iter()
            .map(|o| o.num_samples().unwrap_or(0) as u64)
            .sum();
        let pool = worker_pool(threads);
        Cluster {
            parts,
            codecs,
            server: Server::new(n, x0),
            workers: (0..n).map(|i| Worker::new(i, x0)).collect(),
            oracles,
            seed,
            total_samples,
            pool: std::sync::Arc::new(pool),
            mask: Vec::new(),
            next_mask: Vec::new(),
            idx: Vec::new(),
            order: Vec::with_capacity(n),
            claims: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            eval_grads: vec![vec![0.0; d]; n],
            eval_losses: vec![0.0; n],
            grad: vec![0.0; d],
            tmp: vec![0.0; d],
            participations: 0,
            last_participants: 0,
            counters: Vec::with_capacity(n),
            test_evaluator: None,
        }
    }

    /// Number of workers.
    pub fn n(&self) -> usize {
        self.workers.len()
    }

    /// EF21-W: sets the weights w_i (positive, summing to 1): worker i
    /// divides its estimate by s_i = n w_i and the server aggregates
    /// (1/n) sum_i s_i g_i = sum_i w_i g_i.
    pub fn set_weights(&mut self, w: &[f64]) {
        assert_eq!(w.len(), self.workers.len(), "one weight per worker");
        let n = w.len() as f64;
        let scales: Vec<f64> = w.iter().map(|wi| n * wi).collect();
        for (worker, &s) in self.workers.iter_mut().zip(&scales) {
            worker.weight_scale = Some(s);
        }
        self.server.weight_scales = Some(scales);
    }

    /// The next round number.
    pub fn round(&self) -> u64 {
        self.server.state.round
    }

    /// Runs `f` once on each of the cluster's worker threads and returns
    /// the results (for per-thread profiling counters: a round runs its
    /// workers on these threads).
    pub fn on_each_thread<R: Send>(&self, f: impl Fn() -> R + Sync) -> Vec<R> {
        self.pool.broadcast(|_| f())
    }

    /// Runs one round. Errors (non-finite values met by a compressor) are
    /// returned as a message.
    pub fn step(&mut self) -> Result<(), String> {
        // the whole round inside the pool: its workers' and server's phases
        // then hand over to the pool's threads once per round, not twice
        // (with one thread, each hand-over could wait for it to wake)
        let pool = self.pool.clone();
        pool.install(|| self.step_in_pool())
    }

    fn step_in_pool(&mut self) -> Result<(), String> {
        let round = self.server.state.round;
        let rc = RoundCtx {
            seed: self.seed,
            round,
        };
        self.server
            .participants(&self.parts, self.seed, round, &mut self.mask, &mut self.idx);
        // who takes part next round (a pure function of seed and round):
        // only they get a minibatch staged
        self.server.participants(
            &self.parts,
            self.seed,
            round + 1,
            &mut self.next_mask,
            &mut self.idx,
        );
        let next_mask = &self.next_mask;
        let down: &Downlink = &self.server.state.next_down;
        let wire = &self.server.state.next_wire;
        let parts = &self.parts;
        let codecs = &self.codecs;
        self.order.clear();
        self.order
            .extend((0..self.workers.len()).filter(|&i| self.mask[i]));
        let order = &self.order;
        let claims = &self.claims[..order.len()];
        let pairs = Pairs::new(&mut self.workers, &mut self.oracles);
        let res = run_workers(
            &self.pool,
            claims,
            |s| {
                let i = order[s];
                // SAFETY: run_workers gives slot s to one thread at a time,
                // and slot s is worker order[s] alone (`order` lists
                // distinct ids)
                let (w, o) = unsafe { pairs.get(i) };
                w.step(down, wire, o, parts, codecs, rc)
                    .map(|_| ())
                    .map_err(|e| format!("worker {i}, round {round}: {e}"))
            },
            |s| {
                if next_mask[order[s]] {
                    // SAFETY: as above
                    let (w, o) = unsafe { pairs.get(order[s]) };
                    w.stage_next(o, parts, rc);
                }
            },
        );
        res?;
        let k = self.order.len();
        self.participations += k as u64;
        self.last_participants = k;
        let (workers, mask) = (&self.workers, &self.mask);
        let (server, parts, codecs) = (&mut self.server, &self.parts, &self.codecs);
        let fork = PoolFork(&self.pool);
        self.pool
            .install(|| {
                server.apply_forked(
                    |i| mask[i].then_some(&workers[i].scratch.up),
                    parts,
                    codecs,
                    rc,
                    &fork,
                )
            })
            .map_err(|e| format!("server, round {round}: {e}"))
    }

    /// Evaluates f and ||grad f||^2 (or the gradient mapping) at the server's x.
    pub fn evaluate(&mut self) -> (f64, f64) {
        let x = &self.server.state.x;
        let grads = &mut self.eval_grads;
        let losses = &mut self.eval_losses;
        let oracles = &mut self.oracles;
        self.pool.install(|| {
            oracles
                .par_iter_mut()
                .zip(grads.par_iter_mut())
                .zip(losses.par_iter_mut())
                .for_each(|((o, g), l)| {
                    *l = o.loss_grad(x, g);
                })
        });
        crate::driver::reduce_eval(
            &self.parts,
            x,
            &self.eval_losses,
            self.eval_grads.iter().map(|g| g.as_slice()),
            &mut self.grad,
            &mut self.tmp,
        )
    }

    /// Metrics at the current state (evaluates f and its gradient).
    pub fn metrics(&mut self, seconds: f64) -> RoundMetrics {
        let eval = self.evaluate();
        self.counters.clear();
        self.counters.extend(
            self.workers
                .iter()
                .map(|w| crate::driver::WorkerCounters::of(&w.state)),
        );
        let totals = crate::driver::RunTotals {
            round: self.server.state.round,
            participations: self.participations,
            last_participants: self.last_participants,
            total_samples: self.total_samples,
        };
        let mut m = crate::driver::round_metrics(eval, &self.counters, totals, seconds);
        m.test_accuracy = self
            .test_evaluator
            .as_mut()
            .map(|f| f(&self.server.state.x));
        m
    }

    /// The complete algorithm state (server, workers, counters) as plain values.
    pub fn snapshot(&self, initial_loss: f64, elapsed: f64) -> ClusterState {
        ClusterState {
            server: self.server.state.clone(),
            workers: self.workers.iter().map(|w| w.state.clone()).collect(),
            participations: self.participations,
            last_participants: self.last_participants,
            initial_loss,
            elapsed,
        }
    }

    /// Restores a snapshot taken from a cluster built from the same config.
    pub fn restore(&mut self, s: ClusterState) -> Result<(), String> {
        let d = self.server.state.x.len();
        if s.workers.len() != self.workers.len() {
            return Err(format!(
                "checkpoint has {} workers, the config has {}",
                s.workers.len(),
                self.workers.len()
            ));
        }
        if s.server.x.len() != d
            || s.workers
                .iter()
                .any(|w| w.x.len() != d || w.id >= self.workers.len())
        {
            return Err(format!(
                "checkpoint dimensions do not match the config (d = {d})"
            ));
        }
        self.server.state = s.server;
        self.server.reencode_model_downlink();
        for (w, st) in self.workers.iter_mut().zip(s.workers) {
            w.state = st;
        }
        self.participations = s.participations;
        self.last_participants = s.last_participants;
        Ok(())
    }

    /// Runs until a stopping rule fires; `on_log` sees every logged round
    /// (round 0 included) and may interrupt.
    pub fn run(
        &mut self,
        rules: &StopRules,
        on_log: impl FnMut(&RoundMetrics) -> Control,
    ) -> Summary {
        self.run_with(rules, None, None, on_log, |_| Ok(()))
    }

    /// [`Cluster::run`] with resumption and checkpoints: `resume` gives the
    /// initial loss and elapsed seconds of the interrupted run (its last logged
    /// round is not logged again); every `checkpoint_every` rounds, after the
    /// round's metrics are logged, `on_checkpoint` receives the full state. A
    /// checkpoint is also taken when the run is interrupted.
    pub fn run_with(
        &mut self,
        rules: &StopRules,
        resume: Option<(f64, f64)>,
        checkpoint_every: Option<u64>,
        on_log: impl FnMut(&RoundMetrics) -> Control,
        on_checkpoint: impl FnMut(&ClusterState) -> Result<(), String>,
    ) -> Summary {
        crate::driver::drive(self, rules, resume, checkpoint_every, on_log, on_checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Probe {
        steps: u32,
        stages: u32,
    }

    fn claims(k: usize) -> Vec<AtomicU8> {
        // leftovers of an earlier round must not matter
        (0..k).map(|_| AtomicU8::new(STAGED)).collect()
    }

    /// Every slot steps exactly once; only stepped slots are staged, each at
    /// most once, never while another call holds the slot; a thread with no
    /// step left stages while the last step runs (that step waits for it
    /// here); one thread never stages.
    #[test]
    fn every_slot_steps_once_and_idle_threads_stage_finished_slots() {
        for threads in [1, 2, 3] {
            let pool = worker_pool(threads);
            let probes: Vec<Mutex<Probe>> = (0..7).map(|_| Mutex::default()).collect();
            let staged = AtomicUsize::new(0);
            let started = AtomicUsize::new(0);
            let hold = |s: usize| probes[s].try_lock().expect("two calls hold one slot");
            run_workers(
                &pool,
                &claims(7),
                |s| {
                    let mut p = hold(s);
                    p.steps += 1;
                    // the round's last step to start waits for a staging
                    if started.fetch_add(1, Ordering::SeqCst) == 6 && threads > 1 {
                        let t0 = Instant::now();
                        while staged.load(Ordering::SeqCst) == 0 {
                            assert!(t0.elapsed() < Duration::from_secs(20), "no staging");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Ok(())
                },
                |s| {
                    let mut p = hold(s);
                    assert_eq!(p.steps, 1, "staged before its step");
                    p.stages += 1;
                    staged.fetch_add(1, Ordering::SeqCst);
                },
            )
            .unwrap();
            for p in &probes {
                let p = p.lock().unwrap();
                assert_eq!(p.steps, 1);
                assert!(p.stages <= 1);
            }
            let n_staged = staged.load(Ordering::SeqCst);
            if threads == 1 {
                assert_eq!(n_staged, 0);
            } else {
                assert!(n_staged >= 1);
            }
        }
    }

    /// A panicking step reaches the caller, and its slot is never staged.
    #[test]
    fn a_panicking_step_is_raised_and_its_slot_not_staged() {
        for threads in [1, 2] {
            let pool = worker_pool(threads);
            let staged: Vec<AtomicU8> = (0..6).map(|_| AtomicU8::new(0)).collect();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_workers(
                    &pool,
                    &claims(6),
                    |s| {
                        assert!(s != 3, "step 3 panics");
                        // the other steps outlast the panic, so there is a tail
                        std::thread::sleep(Duration::from_millis(20));
                        Ok(())
                    },
                    |s| staged[s].store(1, Ordering::SeqCst),
                )
            }));
            assert!(result.is_err(), "{threads} threads");
            assert_eq!(staged[3].load(Ordering::SeqCst), 0);
        }
    }

    /// A finite sum of 40 samples recording, with the round it happens in,
    /// every minibatch drawn and every minibatch staged; the draws of worker
    /// `slow` take 30 ms, so the other thread has a tail to stage in.
    struct Recorder {
        id: usize,
        slow: Arc<AtomicUsize>,
        round: Arc<AtomicU64>,
        log: Log,
    }

    /// (worker, staged?, round, indices) of every draw and staging.
    type Log = Arc<Mutex<Vec<(usize, bool, u64, Vec<u32>)>>>;

    impl Oracle for Recorder {
        fn dim(&self) -> usize {
            3
        }
        fn num_samples(&self) -> Option<usize> {
            Some(40)
        }
        fn stage_batch(&mut self, batch: usize, rng: &mut efkit_core::rng::Rng) {
            let mut idx = Vec::new();
            efkit_core::oracle::sample_without_replacement(40, batch, rng, &mut idx);
            // staged during round t for round t + 1
            let r = self.round.load(Ordering::SeqCst) + 1;
            self.log.lock().unwrap().push((self.id, true, r, idx));
        }
        fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
            for (g, xi) in grad.iter_mut().zip(x) {
                *g = xi - self.id as f64;
            }
            0.0
        }
        fn loss(&mut self, _x: &[f64]) -> f64 {
            0.0
        }
        fn stochastic_grad(
            &mut self,
            x: &[f64],
            batch: usize,
            rng: &mut efkit_core::rng::Rng,
            drawn: &mut Vec<u32>,
            grad: &mut [f64],
        ) -> f64 {
            efkit_core::oracle::sample_without_replacement(40, batch, rng, drawn);
            let r = self.round.load(Ordering::SeqCst);
            self.log
                .lock()
                .unwrap()
                .push((self.id, false, r, drawn.clone()));
            if self.id == self.slow.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(30));
            }
            self.loss_grad(x, grad)
        }
        fn indexed_grad(&mut self, x: &[f64], _idx: &[u32], grad: &mut [f64]) -> f64 {
            self.loss_grad(x, grad)
        }
    }

    /// Through `Cluster::step` on two threads: while each round's last
    /// worker runs (slowly), the other thread stages finished workers' next
    /// minibatches; every staged batch is the one its worker draws in the
    /// next round, and only workers taking part in it get one (4 workers,
    /// all or 2 per round).
    #[test]
    fn a_cluster_stages_exactly_the_next_draws_of_next_participants() {
        use efkit_core::compress::{build, CompressorSpec};
        use efkit_core::method::{BatchSize, MethodSpec, Participation};
        let spec = MethodSpec {
            batch: Some(BatchSize::Count(5)),
            ..MethodSpec::named("ef21-sgd")
        };
        for participation in [Participation::All, Participation::Nice { k: 2 }] {
            let mut parts = spec.parts(0.1, 4, &[Some(40); 4]).unwrap();
            parts.participation = participation;
            let codecs = Codecs {
                uplink: build(&CompressorSpec::named("identity"), 3).unwrap(),
                dense: build(&CompressorSpec::named("identity"), 3).unwrap(),
                downlink: None,
            };
            let round = Arc::new(AtomicU64::new(0));
            let slow = Arc::new(AtomicUsize::new(0));
            let log = Arc::new(Mutex::new(Vec::new()));
            let oracles: Vec<Box<dyn Oracle>> = (0..4)
                .map(|id| {
                    Box::new(Recorder {
                        id,
                        slow: Arc::clone(&slow),
                        round: Arc::clone(&round),
                        log: Arc::clone(&log),
                    }) as Box<dyn Oracle>
                })
                .collect();
            let mut c = Cluster::new(parts, codecs, oracles, &[0.5, -1.0, 2.0], 5, 2);
            let (mut mask, mut idx) = (Vec::new(), Vec::new());
            for r in 0..8 {
                round.store(r, Ordering::SeqCst);
                c.server
                    .participants(&c.parts, c.seed, r, &mut mask, &mut idx);
                slow.store(mask.iter().rposition(|&m| m).unwrap(), Ordering::SeqCst);
                c.step().unwrap();
            }
            let log = log.lock().unwrap();
            let staged: Vec<_> = log.iter().filter(|e| e.1).collect();
            assert!(!staged.is_empty(), "nothing staged ({participation:?})");
            for (id, _, r, idx) in staged {
                if *r < 8 {
                    let drawn = log.iter().find(|e| !e.1 && e.0 == *id && e.2 == *r);
                    let drawn = drawn.unwrap_or_else(|| {
                        panic!("worker {id} staged for round {r} but did not take part")
                    });
                    assert_eq!(&drawn.3, idx, "worker {id}, round {r}");
                }
            }
        }
    }

    /// The error returned is the lowest failing slot's, and no step starts
    /// after a failure is seen.
    #[test]
    fn the_lowest_failing_slot_is_reported() {
        for threads in [1, 2] {
            let pool = worker_pool(threads);
            let ran: Vec<AtomicU8> = (0..8).map(|_| AtomicU8::new(0)).collect();
            let err = run_workers(
                &pool,
                &claims(8),
                |s| {
                    ran[s].store(1, Ordering::SeqCst);
                    if s == 2 || s == 5 {
                        Err(format!("slot {s}"))
                    } else {
                        Ok(())
                    }
                },
                |_| {},
            )
            .unwrap_err();
            assert_eq!(err, "slot 2");
            if threads == 1 {
                let ran: Vec<u8> = ran.iter().map(|r| r.load(Ordering::SeqCst)).collect();
                assert_eq!(ran, [1, 1, 1, 0, 0, 0, 0, 0]);
            }
        }
    }
}
