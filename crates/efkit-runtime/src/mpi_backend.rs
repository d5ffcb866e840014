//! The MPI backend: the round protocol of `efkit_core::method` over P MPI ranks.
//!
//! The n workers are spread over the P ranks in contiguous blocks (rank r hosts
//! workers `starts[r] .. starts[r+1]`, the first n mod P ranks one more); rank 0
//! is the server and hosts a block too. One round t (B&W eq. (7), algorithms.md §6):
//!
//! ```text
//! rank 0:     bcast  header [STEP, t, |m_down|, paper bits]         (32 B, control)
//! rank 0:     bcast  m_down = encode(x^t)  (or EF21-BC's C_M message)   |m_down| B
//! every rank: S_t = participants(seed, t)            (pure function: no traffic)
//!             decode m_down; for hosted i in S_t: Worker::step -> m_i
//! every rank: gatherv lengths |m_i| to rank 0                   (4 B per message)
//! every rank: gatherv the bytes m_i to rank 0                     sum_i |m_i| B
//! rank 0:     decode m_i, Server::apply in worker-id order -> x^{t+1}
//! ```
//!
//! The payload bytes moved by MPI are exactly the encoded messages whose bits
//! the metrics report ([`Traffic`] counts them at the call sites); the control
//! words (the command header, the message lengths) are counted apart. Both
//! ends decode exactly what travelled, including rank 0 for its own workers.
//!
//! Metrics at a logged round: rank 0 broadcasts x^t, every rank evaluates
//! f_i(x^t) and grad f_i(x^t) for its workers and gathers them, with the
//! workers' bit and sample counters, to rank 0, which reduces them in
//! worker-id order ([`crate::driver::reduce_eval`]); the stopping rules are
//! [`crate::driver::drive`]. Hence `metrics.jsonl` is bit-identical (seconds
//! aside) to the in-process [`crate::Cluster`] for every P, every method, and
//! every method added later: the backend only moves [`Wire`] bytes and calls
//! [`Worker::step`] / [`Server::apply`], it knows nothing about methods.
//!
//! The Safe-EF family (`efkit_core::safe`, two communication phases per
//! round) runs on the same transport (`Link`: headers, downlink broadcasts,
//! length-prefixed uplink gathers, evaluation records, state gathers and
//! scatters) with its own round body: [`MpiSafeCluster`] (`crate::mpi_safe`).
//! [`launch`] sets up a run of either family; rank 0 decides which.
//!
//! Setup: rank 0 validates the config and resolves the step size (the theory
//! step needs L and Ltilde), then broadcasts the resolved config; the other
//! ranks build the same problem with that step and report back a fingerprint
//! (n, d, rows, x^0, shard sizes) that rank 0 checks before any round runs.
//!
//! Checkpoints and resumption: a checkpoint gathers every worker's state to
//! rank 0, which writes the same file as the in-process run. To resume, rank
//! 0 restores the checkpoint (of either backend, any P) into the in-process
//! cluster it builds at setup, and [`launch`] scatters each rank's block of
//! worker states to it; the run then continues bit for bit.
//!
//! Failure: a panic on any rank calls `MPI_Abort` (panic hook); a watchdog
//! thread on every rank aborts the job when no collective completed for
//! `EFKIT_MPI_TIMEOUT` seconds (default [`DEFAULT_TIMEOUT_SECS`]); a rank that
//! dies abruptly is detected by the MPI launcher, which ends the job. Rank 0
//! appends and flushes `metrics.jsonl` one line per logged round, so what was
//! written stays. `EFKIT_TEST_FAULT=RANK:ROUND[:abort|exit|panic|hang]`
//! injects a failure for tests.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use efkit_core::method::{
    decode_downlink, decode_uplink, downlink_shared_key, uplink_shared_key, Codecs, Downlink,
    Parts, RoundCtx, Server, Uplink, Wire, Worker, WorkerState,
};
use efkit_core::oracle::Oracle;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::{Cluster, ClusterState, Control, RoundMetrics, Status, StopRules, Summary};
use crate::config::Config;
use crate::driver::{drive, reduce_eval, round_metrics, Rounds, RunTotals, WorkerCounters};
pub use crate::mpi_safe::{MpiSafeCluster, SafeOutcome};
use crate::safe::{prepare_safe, SafeConfig, SafePrepared};
use crate::setup::{self, Prepared, SetupInfo};
use efkit_core::safe::Rule as SafeRule;

/// The watchdog's default: abort when no collective completed for this long.
pub const DEFAULT_TIMEOUT_SECS: f64 = 20.0;
/// Environment variable: the watchdog timeout in seconds (0 turns it off).
pub const TIMEOUT_ENV: &str = "EFKIT_MPI_TIMEOUT";
/// Environment variable: fault injection for tests, `RANK:ROUND[:MODE]`.
pub const FAULT_ENV: &str = "EFKIT_TEST_FAULT";
/// The error code given to `MPI_Abort` (the CLI's "internal error").
pub const EXIT_ABORTED: i32 = 1;

pub(crate) const CMD_STEP: u64 = 1;
pub(crate) const CMD_EVAL: u64 = 2;
pub(crate) const CMD_STOP: u64 = 3;
pub(crate) const CMD_SNAPSHOT: u64 = 4;
/// Safe-EF: a downlink of the current round follows (header: round, length, paper bits).
pub(crate) const CMD_DOWN: u64 = 5;
/// Safe-EF: rank 0 ends the current round early (a message failed; rank 0 stops the run).
pub(crate) const CMD_ABORT: u64 = 6;
/// Bytes of one command header (4 u64 words).
pub const HEADER_BYTES: u64 = 32;
/// Bytes of one uplink length word.
pub const LENGTH_BYTES: u64 = 4;
/// A length word with this bit set carries an error message instead of an uplink.
const ERR_FLAG: u32 = 1 << 31;
/// Words per worker in the evaluation gather besides the gradient: loss + counters.
const EVAL_EXTRA: usize = 1 + WorkerCounters::WORDS;

/// Why the MPI backend could not start or set up a run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MpiError {
    /// `MPI_Init_thread` failed or MPI was already initialized.
    #[error("MPI could not be initialized (it can be initialized once per process)")]
    Init,
    /// A backend environment variable is malformed.
    #[error("invalid environment variable `{var}`: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// Fewer workers than ranks.
    #[error("invalid `problem.workers`: n = {n} workers cannot be spread over P = {ranks} MPI ranks (each rank hosts at least one worker; use n >= P)")]
    TooFewWorkers {
        /// Workers n.
        n: usize,
        /// Ranks P.
        ranks: usize,
    },
    /// Rank 0's own setup failed (its message; the other ranks get [`MpiError::RootFailed`]).
    #[error("{}", .0.message)]
    RootSetup(SetupFailure),
    /// Another rank could not build the problem.
    #[error("MPI rank {rank}: setup failed: {message}")]
    RankSetup {
        /// The rank.
        rank: usize,
        /// Its error.
        message: String,
    },
    /// Another rank built a different problem than rank 0.
    #[error("MPI rank {rank} built a different problem than rank 0 ({what}); do all nodes read the same data file?")]
    Mismatch {
        /// The rank.
        rank: usize,
        /// What differs.
        what: String,
    },
    /// On ranks other than 0: the setup failed somewhere and rank 0 reports it.
    #[error("the run could not be set up (rank 0 reports why)")]
    RootFailed {
        /// The exit code rank 0 uses.
        code: u8,
    },
}

impl MpiError {
    /// The process exit code for this error (2: bad input, 1: internal).
    pub fn exit_code(&self) -> u8 {
        match self {
            MpiError::Init => 1,
            MpiError::Env { .. }
            | MpiError::TooFewWorkers { .. }
            | MpiError::RankSetup { .. }
            | MpiError::Mismatch { .. } => 2,
            MpiError::RootSetup(f) => f.code,
            MpiError::RootFailed { code } => *code,
        }
    }
}

/// A setup error on rank 0, with the exit code every rank should use.
#[derive(Debug, Clone)]
pub struct SetupFailure {
    /// Exit code (2 for bad input).
    pub code: u8,
    /// The message.
    pub message: String,
}

/// How an injected fault ends a rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// `abort()`: the process dies on SIGABRT without telling MPI.
    Abort,
    /// Exit with status 1 without finalizing MPI.
    Exit,
    /// A Rust panic (the panic hook aborts the MPI job).
    Panic,
    /// Stop making progress forever (the watchdogs abort the job).
    Hang,
}

/// A fault to inject: `rank` fails when round `round` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The failing rank.
    pub rank: usize,
    /// The round at whose start it fails.
    pub round: u64,
    /// How.
    pub mode: FaultMode,
}

impl Fault {
    /// Parses `RANK:ROUND[:abort|exit|panic|hang]` (default mode: abort).
    pub fn parse(s: &str) -> Result<Fault, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "expected RANK:ROUND[:abort|exit|panic|hang], got `{s}`"
            ));
        }
        let rank = parts[0]
            .parse()
            .map_err(|_| format!("rank `{}` is not a number", parts[0]))?;
        let round = parts[1]
            .parse()
            .map_err(|_| format!("round `{}` is not a number", parts[1]))?;
        let mode = match parts.get(2).copied().unwrap_or("abort") {
            "abort" => FaultMode::Abort,
            "exit" => FaultMode::Exit,
            "panic" => FaultMode::Panic,
            "hang" => FaultMode::Hang,
            other => {
                return Err(format!(
                    "unknown mode `{other}`; allowed: abort, exit, panic, hang"
                ))
            }
        };
        Ok(Fault { rank, round, mode })
    }

    fn trigger(self) -> ! {
        eprintln!(
            "efkit: MPI rank {}: injected fault ({:?}) at the start of round {} ({FAULT_ENV})",
            self.rank, self.mode, self.round
        );
        match self.mode {
            FaultMode::Abort => std::process::abort(),
            FaultMode::Exit => std::process::exit(1),
            FaultMode::Panic => panic!(
                "injected fault on MPI rank {} at round {}",
                self.rank, self.round
            ),
            FaultMode::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }
}

/// Progress clock shared with the watchdog thread.
pub(crate) struct Watchdog {
    start: Instant,
    last_ms: AtomicU64,
    armed: AtomicBool,
    timeout_ms: AtomicU64,
    round: AtomicU64,
}

impl Watchdog {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn arm(&self, on: bool) {
        self.beat();
        self.armed.store(on, Ordering::SeqCst);
    }
}

/// MPI, initialized once per process: the world communicator, this rank, the
/// panic hook and the watchdog. Dropping it finalizes MPI.
pub struct MpiRuntime {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_size: usize,
    pub(crate) watchdog: Arc<Watchdog>,
    fault: Option<Fault>,
    _universe: Universe,
}

impl MpiRuntime {
    /// Initializes MPI (thread level `MPI_THREAD_MULTIPLE` requested: the
    /// watchdog may abort from its own thread), installs a panic hook that
    /// aborts the whole job, and starts the watchdog (disarmed until a run starts).
    pub fn init() -> Result<MpiRuntime, MpiError> {
        let timeout = match std::env::var(TIMEOUT_ENV) {
            Ok(s) => match s.trim().parse::<f64>() {
                Ok(t) if t >= 0.0 && t.is_finite() => t,
                _ => {
                    return Err(MpiError::Env {
                        var: TIMEOUT_ENV,
                        reason: format!("expected seconds >= 0 (0 = no watchdog), got `{s}`"),
                    })
                }
            },
            Err(_) => DEFAULT_TIMEOUT_SECS,
        };
        let fault = match std::env::var(FAULT_ENV) {
            Ok(s) if !s.trim().is_empty() => {
                Some(Fault::parse(&s).map_err(|reason| MpiError::Env {
                    var: FAULT_ENV,
                    reason,
                })?)
            }
            _ => None,
        };
        let (universe, _level) =
            mpi::initialize_with_threading(mpi::Threading::Multiple).ok_or(MpiError::Init)?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        let local_size = world.split_shared(world.rank()).size().max(1) as usize;
        let watchdog = Arc::new(Watchdog {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            timeout_ms: AtomicU64::new((timeout * 1000.0) as u64),
            round: AtomicU64::new(0),
        });
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            prev(info);
            eprintln!("efkit: MPI rank {rank} of {size} panicked; aborting the whole MPI job (metrics written so far are kept)");
            SimpleCommunicator::world().abort(EXIT_ABORTED);
        }));
        let wd = Arc::clone(&watchdog);
        std::thread::Builder::new()
            .name("efkit-mpi-watchdog".into())
            .spawn(move || loop {
                let limit = wd.timeout_ms.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(if limit == 0 { 500 } else { (limit / 8).clamp(20, 250) }));
                if limit == 0 || !wd.armed.load(Ordering::SeqCst) {
                    continue;
                }
                let idle = wd.now_ms().saturating_sub(wd.last_ms.load(Ordering::Relaxed));
                if idle > limit {
                    eprintln!(
                        "efkit: MPI rank {rank} of {size}: no progress for {:.1} s in round {} (limit {TIMEOUT_ENV} = {:.1} s): another rank has died or hung; aborting the whole MPI job (metrics written so far are kept)",
                        idle as f64 / 1000.0,
                        wd.round.load(Ordering::Relaxed),
                        limit as f64 / 1000.0
                    );
                    SimpleCommunicator::world().abort(EXIT_ABORTED);
                }
            })
            .expect("watchdog thread");
        Ok(MpiRuntime {
            world,
            rank,
            size,
            local_size,
            watchdog,
            fault,
            _universe: universe,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks P.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0 (the server; the only rank that writes outputs).
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Ranks on this node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Sets the watchdog timeout (`None`: off).
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.watchdog.timeout_ms.store(
            t.map_or(0, |d| d.as_millis().max(1) as u64),
            Ordering::Relaxed,
        );
    }

    /// Aborts the whole job with `code` after printing `why`.
    pub fn abort(&self, why: &str, code: i32) -> ! {
        eprintln!(
            "efkit: MPI rank {}: {why}; aborting the whole MPI job",
            self.rank
        );
        self.world.abort(code)
    }

    /// Latencies of the backend's collectives for `bytes`-byte messages, over
    /// `reps` repetitions (collective: every rank calls it).
    pub fn collective_latency(&self, bytes: usize, reps: usize) -> Latency {
        let root = self.world.process_at_rank(0);
        let mut buf = allocated(vec![0u8; bytes]);
        let send = allocated(vec![self.rank as u8; bytes]);
        let mut recv = allocated(if self.is_root() {
            vec![0u8; bytes * self.size]
        } else {
            Vec::new()
        });
        let counts: Vec<Count> = vec![bytes as Count; self.size];
        let displs: Vec<Count> = (0..self.size).map(|r| (r * bytes) as Count).collect();
        let ack = allocated(vec![1u8; 4]);
        let mut acks = allocated(vec![0u8; 4 * self.size]);
        let ack_counts: Vec<Count> = vec![4; self.size];
        let ack_displs: Vec<Count> = (0..self.size).map(|r| (4 * r) as Count).collect();
        let reps = reps.max(1);
        let (mut tb, mut tg, mut tr) = (
            Vec::with_capacity(reps),
            Vec::with_capacity(reps),
            Vec::with_capacity(reps),
        );
        for _ in 0..reps {
            // broadcast alone (OSU style: barrier, time on every rank, slowest rank counts)
            self.world.barrier();
            let t0 = mpi::time();
            root.broadcast_into(&mut buf[..]);
            tb.push(mpi::time() - t0);
            // gatherv alone
            self.world.barrier();
            let t0 = mpi::time();
            if self.is_root() {
                root.gather_varcount_into_root(
                    &send[..],
                    &mut PartitionMut::new(&mut recv[..], &counts[..], &displs[..]),
                );
            } else {
                root.gather_varcount_into(&send[..]);
            }
            tg.push(mpi::time() - t0);
            // round trip as rank 0 sees it: broadcast, then a 4-byte gather that
            // completes only once every rank has received the broadcast
            self.world.barrier();
            let t0 = mpi::time();
            root.broadcast_into(&mut buf[..]);
            if self.is_root() {
                root.gather_varcount_into_root(
                    &ack[..],
                    &mut PartitionMut::new(&mut acks[..], &ack_counts[..], &ack_displs[..]),
                );
            } else {
                root.gather_varcount_into(&ack[..]);
            }
            tr.push(mpi::time() - t0);
        }
        let mut tb_max = vec![0.0; reps];
        let mut tg_max = vec![0.0; reps];
        self.world.all_reduce_into(
            &tb[..],
            &mut tb_max[..],
            mpi::collective::SystemOperation::max(),
        );
        self.world.all_reduce_into(
            &tg[..],
            &mut tg_max[..],
            mpi::collective::SystemOperation::max(),
        );
        Latency {
            bcast: median(&mut tb_max),
            gatherv: median(&mut tg_max),
            round_trip: median(&mut tr),
        }
    }
}

/// Median latencies in seconds of the backend's collectives for one message size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// `MPI_Bcast` of the message from rank 0 (slowest rank).
    pub bcast: f64,
    /// `MPI_Gatherv` of one message from every rank to rank 0 (slowest rank).
    pub gatherv: f64,
    /// Broadcast of the message followed by a 4-byte gather, timed on rank 0:
    /// the communication skeleton of one round.
    pub round_trip: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What rank 0 passed to MPI so far (cumulative). Payload counts are the
/// lengths of the buffers given to `MPI_Bcast`/`MPI_Gatherv` (for the gathers:
/// the sum of all ranks' send counts, which is rank 0's receive count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Rounds run.
    pub rounds: u64,
    /// Bytes of encoded downlinks broadcast (one message per round).
    pub downlink_payload_bytes: u64,
    /// Bytes of encoded uplinks gathered.
    pub uplink_payload_bytes: u64,
    /// Uplink messages gathered.
    pub uplink_messages: u64,
    /// Bytes of command headers broadcast (control).
    pub header_bytes: u64,
    /// Bytes of uplink length words gathered (control).
    pub length_bytes: u64,
    /// Bytes moved for the metrics (x^t broadcast, losses, gradients, counters).
    pub eval_bytes: u64,
    /// Seconds rank 0 spent in the round broadcasts.
    pub bcast_seconds: f64,
    /// Seconds rank 0 spent in the round gathers (includes waiting for the slowest rank).
    pub gather_seconds: f64,
}

/// Ranks' contiguous blocks: rank r hosts workers `starts[r] .. starts[r+1]`.
pub fn blocks(n: usize, ranks: usize) -> Vec<usize> {
    let (q, rem) = (n / ranks, n % ranks);
    (0..=ranks).map(|r| r * q + r.min(rem)).collect()
}

pub(crate) fn fnv(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

pub(crate) fn status_code(s: Status) -> u64 {
    match s {
        Status::Converged => 0,
        Status::MaxRounds => 1,
        Status::TimeLimit => 2,
        Status::Diverged => 3,
        Status::Interrupted => 4,
    }
}

/// A follower rank's part of each command of rank 0 (for both method
/// families: EF21 and Safe-EF clusters answer the same commands).
pub(crate) trait Follower {
    /// The rank's link.
    fn link(&mut self) -> &mut Link;
    /// `CMD_STEP` with its header.
    fn step(&mut self, header: [u64; 4]);
    /// `CMD_EVAL`.
    fn eval(&mut self);
    /// `CMD_SNAPSHOT`.
    fn snapshot(&mut self);
}

/// Serves rank 0's commands until `CMD_STOP`; returns the status it sent.
/// An unknown command aborts the job.
pub(crate) fn serve_root(f: &mut impl Follower) -> Status {
    loop {
        let h = f.link().recv_header();
        match h[0] {
            CMD_STEP => f.step(h),
            CMD_EVAL => f.eval(),
            CMD_SNAPSHOT => f.snapshot(),
            CMD_STOP => return status_of(h[1]),
            other => f.link().rt.abort(
                &format!("unknown command {other} from rank 0"),
                EXIT_ABORTED,
            ),
        }
    }
}

impl Follower for MpiCluster {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn step(&mut self, h: [u64; 4]) {
        // errors were reported to rank 0 inside the round
        let _ = self.round_body(h[1], h[2] as usize, h[3]);
    }

    fn eval(&mut self) {
        self.eval_body();
    }

    fn snapshot(&mut self) {
        let _ = self.gather_states();
    }
}

pub(crate) fn status_of(c: u64) -> Status {
    match c {
        0 => Status::Converged,
        1 => Status::MaxRounds,
        2 => Status::TimeLimit,
        3 => Status::Diverged,
        _ => Status::Interrupted,
    }
}

/// How a run ended on this rank.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Rank 0: the summary (as [`Cluster::run`] returns it).
    Root(Summary),
    /// Other ranks: the status rank 0 announced.
    Follower(Status),
}

impl Outcome {
    /// The status of the run.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Root(s) => s.status,
            Outcome::Follower(s) => *s,
        }
    }
}

// ---------------------------------------------------------------------------
// Transport shared by the drivers of both method families
// ---------------------------------------------------------------------------

/// The transport of a run, shared by [`MpiCluster`] (EF21 family) and
/// [`MpiSafeCluster`] (Safe-EF family): command headers and encoded downlinks
/// broadcast from rank 0, length-prefixed uplinks (or error messages)
/// gathered to rank 0 in worker-id order, f64 records for the metrics, and
/// worker states (JSON) gathered for checkpoints or scattered on resumption.
/// [`Traffic`] is counted here, at the call sites of MPI.
pub(crate) struct Link {
    /// MPI: communicator, rank, watchdog, fault.
    pub(crate) rt: MpiRuntime,
    /// What rank 0 passed to MPI so far.
    pub(crate) traffic: Traffic,
    /// Rank r hosts workers `starts[r] .. starts[r+1]`.
    pub(crate) starts: Vec<usize>,
    lens: Vec<u32>,
    send: Vec<u8>,
    counts: Vec<Count>,
    displs: Vec<Count>,
    all_lens: Vec<u32>,
    recv: Vec<u8>,
}

impl Link {
    /// The transport of a run with `n` workers spread over the ranks.
    pub(crate) fn new(rt: MpiRuntime, n: usize) -> Link {
        let starts = blocks(n, rt.size);
        let hosted = starts[rt.rank + 1] - starts[rt.rank];
        let root = rt.is_root();
        Link {
            traffic: Traffic::default(),
            lens: allocated(Vec::with_capacity(hosted)),
            send: allocated(Vec::new()),
            counts: vec![0; rt.size],
            displs: vec![0; rt.size],
            all_lens: Vec::with_capacity(if root { n } else { 0 }),
            recv: allocated(Vec::new()),
            starts,
            rt,
        }
    }

    /// Whether this is rank 0.
    pub(crate) fn is_root(&self) -> bool {
        self.rt.is_root()
    }

    /// The workers hosted by this rank.
    pub(crate) fn hosted(&self) -> std::ops::Range<usize> {
        self.starts[self.rt.rank]..self.starts[self.rt.rank + 1]
    }

    /// Rank 0: broadcasts a command header (control traffic).
    pub(crate) fn send_header(&mut self, mut h: [u64; 4]) {
        self.rt.world.process_at_rank(0).broadcast_into(&mut h[..]);
        self.traffic.header_bytes += HEADER_BYTES;
        self.rt.watchdog.beat();
    }

    /// Other ranks: receives a command header.
    pub(crate) fn recv_header(&mut self) -> [u64; 4] {
        let mut h = [0u64; 4];
        self.rt.world.process_at_rank(0).broadcast_into(&mut h[..]);
        self.rt.watchdog.beat();
        h
    }

    /// Marks the start of round `round` (for the watchdog's message).
    pub(crate) fn start_round(&self, round: u64) {
        self.rt.watchdog.round.store(round, Ordering::Relaxed);
    }

    /// Triggers the injected fault ([`FAULT_ENV`]) if it is for this rank and round.
    pub(crate) fn inject_fault(&self, round: u64) {
        if let Some(f) = self.rt.fault {
            if f.rank == self.rt.rank && f.round == round {
                f.trigger();
            }
        }
    }

    /// Broadcasts an encoded downlink from rank 0: on rank 0 `bytes` holds
    /// it, elsewhere it is resized to `len` and filled. Rank 0 counts the
    /// payload bytes and the seconds.
    pub(crate) fn bcast_downlink(&mut self, bytes: &mut Vec<u8>, len: usize) {
        let root = self.is_root();
        if !root {
            bytes.resize(len, 0);
        }
        if bytes.capacity() == 0 {
            bytes.reserve(1);
        }
        let t0 = Instant::now();
        self.rt
            .world
            .process_at_rank(0)
            .broadcast_into(&mut bytes[..]);
        self.rt.watchdog.beat();
        if root {
            self.traffic.bcast_seconds += t0.elapsed().as_secs_f64();
            self.traffic.downlink_payload_bytes += bytes.len() as u64;
        }
    }

    /// Starts packing this rank's uplinks of a phase.
    pub(crate) fn clear_uplinks(&mut self) {
        self.lens.clear();
        self.send.clear();
    }

    /// Packs the next uplink of this rank (in worker-id order): the encoded
    /// message, or the error that prevented it (sent flagged, as text).
    pub(crate) fn push_uplink(&mut self, msg: Result<&[u8], &str>) {
        let (bytes, flag) = match msg {
            Ok(b) => (b, 0),
            Err(e) => (e.as_bytes(), ERR_FLAG),
        };
        assert!(
            bytes.len() < ERR_FLAG as usize,
            "message of {} bytes is too long for one gather",
            bytes.len()
        );
        self.lens.push(bytes.len() as u32 | flag);
        self.send.extend_from_slice(bytes);
    }

    /// Gathers the packed uplinks of every rank to rank 0: first the length
    /// words (control), then the bytes (payload). `messages(block)` is the
    /// number of messages the rank hosting `block` packed (every rank knows
    /// it: it is a pure function of the round). Returns the number gathered on
    /// rank 0 (read them with [`Link::uplinks`]), 0 elsewhere.
    pub(crate) fn gather_uplinks(
        &mut self,
        messages: impl Fn(std::ops::Range<usize>) -> usize,
    ) -> usize {
        let t0 = Instant::now();
        let root_p = self.rt.world.process_at_rank(0);
        if !self.is_root() {
            root_p.gather_varcount_into(&self.lens[..]);
            self.rt.watchdog.beat();
            root_p.gather_varcount_into(&self.send[..]);
            self.rt.watchdog.beat();
            return 0;
        }
        for r in 0..self.rt.size {
            self.counts[r] = messages(self.starts[r]..self.starts[r + 1]) as Count;
        }
        prefix(&self.counts, &mut self.displs);
        let k = self.counts.iter().map(|&c| c as usize).sum::<usize>();
        self.all_lens.resize(k, 0);
        root_p.gather_varcount_into_root(
            &self.lens[..],
            &mut PartitionMut::new(&mut self.all_lens[..], &self.counts[..], &self.displs[..]),
        );
        self.rt.watchdog.beat();
        let mut li = 0;
        for r in 0..self.rt.size {
            let c = self.counts[r] as usize;
            self.counts[r] = self.all_lens[li..li + c]
                .iter()
                .map(|&l| (l & !ERR_FLAG) as Count)
                .sum();
            li += c;
        }
        prefix(&self.counts, &mut self.displs);
        let total = self.counts.iter().map(|&c| c as usize).sum::<usize>();
        self.recv.resize(total, 0);
        root_p.gather_varcount_into_root(
            &self.send[..],
            &mut PartitionMut::new(&mut self.recv[..], &self.counts[..], &self.displs[..]),
        );
        self.rt.watchdog.beat();
        self.traffic.gather_seconds += t0.elapsed().as_secs_f64();
        self.traffic.length_bytes += LENGTH_BYTES * k as u64;
        self.traffic.uplink_payload_bytes += total as u64;
        self.traffic.uplink_messages += k as u64;
        k
    }

    /// Rank 0: the uplinks of the last [`Link::gather_uplinks`] in worker-id
    /// order: the bytes that travelled, or a sender's error message.
    pub(crate) fn uplinks(&self) -> impl Iterator<Item = Result<&[u8], String>> + '_ {
        let mut off = 0usize;
        self.all_lens.iter().map(move |&l| {
            let len = (l & !ERR_FLAG) as usize;
            let bytes = &self.recv[off..off + len];
            off += len;
            if l & ERR_FLAG != 0 {
                Err(String::from_utf8_lossy(bytes).into_owned())
            } else {
                Ok(bytes)
            }
        })
    }

    /// Broadcasts f64 values from rank 0 (evaluation traffic).
    pub(crate) fn bcast_f64(&mut self, buf: &mut [f64]) {
        self.rt.world.process_at_rank(0).broadcast_into(buf);
        self.rt.watchdog.beat();
        if self.is_root() {
            self.traffic.eval_bytes += 8 * buf.len() as u64;
        }
    }

    /// Gathers every rank's `send` to `recv` on rank 0 in rank order; the rank
    /// hosting `block` sends `len(block)` values (evaluation traffic).
    pub(crate) fn gather_f64(
        &mut self,
        send: &[f64],
        recv: &mut [f64],
        len: impl Fn(std::ops::Range<usize>) -> usize,
    ) {
        let root_p = self.rt.world.process_at_rank(0);
        if self.is_root() {
            for r in 0..self.rt.size {
                self.counts[r] = len(self.starts[r]..self.starts[r + 1]) as Count;
            }
            prefix(&self.counts, &mut self.displs);
            root_p.gather_varcount_into_root(
                send,
                &mut PartitionMut::new(recv, &self.counts[..], &self.displs[..]),
            );
            self.traffic.eval_bytes += 8 * recv.len() as u64;
        } else {
            root_p.gather_varcount_into(send);
        }
        self.rt.watchdog.beat();
    }

    /// Gathers the states of every rank's workers to rank 0 (JSON), in
    /// worker-id order; empty elsewhere.
    pub(crate) fn gather_json<T: Serialize + DeserializeOwned>(&mut self, mine: &[&T]) -> Vec<T> {
        let bytes = allocated(serde_json::to_vec(mine).expect("worker states serialize"));
        let root_p = self.rt.world.process_at_rank(0);
        let len = [bytes.len() as u64];
        let out = if self.is_root() {
            let mut lens = vec![0u64; self.rt.size];
            root_p.gather_into_root(&len[..], &mut lens[..]);
            let counts: Vec<Count> = lens
                .iter()
                .map(|&l| Count::try_from(l).expect("worker states fit one gather"))
                .collect();
            let mut displs = vec![0; self.rt.size];
            prefix(&counts, &mut displs);
            let mut all = allocated(vec![0u8; lens.iter().sum::<u64>() as usize]);
            root_p.gather_varcount_into_root(
                &bytes[..],
                &mut PartitionMut::new(&mut all[..], &counts[..], &displs[..]),
            );
            self.traffic.eval_bytes += 8 * self.rt.size as u64 + all.len() as u64;
            let mut states = Vec::new();
            for r in 0..self.rt.size {
                let chunk = &all[displs[r] as usize..(displs[r] + counts[r]) as usize];
                let part: Vec<T> =
                    serde_json::from_slice(chunk).expect("worker states from a rank parse");
                states.extend(part);
            }
            assert_eq!(
                states.len(),
                self.starts[self.rt.size],
                "one state per worker"
            );
            states
        } else {
            root_p.gather_into(&len[..]);
            root_p.gather_varcount_into(&bytes[..]);
            Vec::new()
        };
        self.rt.watchdog.beat();
        out
    }

    /// The inverse of [`Link::gather_json`]: rank 0 gives the states of all
    /// workers (`Some`, in worker-id order), every rank receives those of
    /// the workers it hosts.
    pub(crate) fn scatter_json<T: Serialize + DeserializeOwned>(
        &mut self,
        all: Option<&[T]>,
    ) -> Vec<T> {
        let root_p = self.rt.world.process_at_rank(0);
        let mut my_len = [0u64];
        let mut mine;
        if self.is_root() {
            let all = all.expect("rank 0 scatters the states");
            assert_eq!(all.len(), self.starts[self.rt.size], "one state per worker");
            let mut buf = Vec::new();
            let mut lens = vec![0u64; self.rt.size];
            for r in 0..self.rt.size {
                let chunk = serde_json::to_vec(&all[self.starts[r]..self.starts[r + 1]])
                    .expect("worker states serialize");
                lens[r] = chunk.len() as u64;
                buf.extend_from_slice(&chunk);
            }
            let buf = allocated(buf);
            let counts: Vec<Count> = lens
                .iter()
                .map(|&l| Count::try_from(l).expect("worker states fit one scatter"))
                .collect();
            let mut displs = vec![0; self.rt.size];
            prefix(&counts, &mut displs);
            root_p.scatter_into_root(&lens[..], &mut my_len[..]);
            mine = allocated(vec![0u8; my_len[0] as usize]);
            root_p.scatter_varcount_into_root(
                &Partition::new(&buf[..], &counts[..], &displs[..]),
                &mut mine[..],
            );
            self.traffic.eval_bytes += 8 * self.rt.size as u64 + buf.len() as u64;
        } else {
            root_p.scatter_into(&mut my_len[..]);
            mine = allocated(vec![0u8; my_len[0] as usize]);
            root_p.scatter_varcount_into(&mut mine[..]);
        }
        self.rt.watchdog.beat();
        let states: Vec<T> =
            serde_json::from_slice(&mine).expect("worker states from rank 0 parse");
        assert_eq!(
            states.len(),
            self.hosted().len(),
            "one state per hosted worker"
        );
        states
    }
}

// ---------------------------------------------------------------------------
// Setup: rank 0 resolves, every rank builds, rank 0 checks
// ---------------------------------------------------------------------------

const KIND_EF21: u64 = 1;
const KIND_SAFE: u64 = 2;

/// What rank 0 set up: a run of either method family, built in full (all n
/// workers) as the in-process runtime would, and possibly already restored
/// from a checkpoint (`resumed`: the other ranks then receive their workers'
/// states from it).
#[allow(clippy::large_enum_variant)] // one per run
pub enum RootJob {
    /// An EF21-family run.
    Ef21 {
        /// The resolved config (`step.value` set to the step size used).
        cfg: Config,
        /// The prepared in-process run.
        prepared: Prepared,
        /// Whether `prepared.cluster` was restored from a checkpoint.
        resumed: bool,
    },
    /// A Safe-EF-family run.
    Safe {
        /// The config.
        cfg: SafeConfig,
        /// The prepared in-process run.
        prepared: SafePrepared,
        /// Whether `prepared.cluster` was restored from a checkpoint.
        resumed: bool,
    },
}

impl RootJob {
    fn n(&self) -> usize {
        match self {
            RootJob::Ef21 { prepared, .. } => prepared.info.n,
            RootJob::Safe { prepared, .. } => prepared.info.n,
        }
    }
}

/// A run set up on this rank by [`launch`].
pub enum Launched {
    /// An EF21-family run.
    Ef21(MpiCluster),
    /// A Safe-EF-family run.
    Safe(MpiSafeCluster),
}

/// What a rank built before the split into blocks.
#[allow(clippy::large_enum_variant)] // one per run
enum Built {
    Ef21(Prepared),
    Safe(SafePrepared),
}

impl Built {
    /// [n, d, rows, hash of x^0, parameters and shard sizes]: what must
    /// agree on every rank. A resumed run leaves x^0 out (rank 0's cluster
    /// is already restored; the state then comes from rank 0).
    fn fingerprint(&self, resumed: bool) -> [u64; 4] {
        let x0 = |x: &[f64]| -> Vec<u64> {
            if resumed {
                Vec::new()
            } else {
                x.iter().map(|v| v.to_bits()).collect()
            }
        };
        match self {
            Built::Ef21(p) => {
                let c = &p.cluster;
                let fp = fnv(x0(&c.server.state.x)
                    .into_iter()
                    .chain(
                        c.oracles
                            .iter()
                            .map(|o| o.num_samples().map_or(u64::MAX, |m| m as u64)),
                    )
                    .chain([p.info.gamma.to_bits()]));
                [p.info.n as u64, p.info.d as u64, p.info.rows as u64, fp]
            }
            Built::Safe(p) => {
                let c = &p.cluster;
                let (a, b) = match c.parts.rule {
                    SafeRule::Switching { threshold } => (threshold.to_bits(), 0),
                    SafeRule::PrimalDual { dual_step, lambda0 } => {
                        (dual_step.to_bits(), lambda0.to_bits())
                    }
                };
                let shards: Vec<u64> = c
                    .oracles
                    .iter()
                    .map(|o| o.num_samples().map_or(u64::MAX, |m| m as u64))
                    .collect();
                let rows = shards.iter().filter(|&&s| s != u64::MAX).sum::<u64>();
                let fp = fnv(x0(&c.server.state.x)
                    .into_iter()
                    .chain(shards.iter().copied())
                    .chain([
                        c.parts.gamma.to_bits(),
                        a,
                        b,
                        c.parts.radius.map_or(u64::MAX, f64::to_bits),
                        c.batch.map_or(u64::MAX, |b| b as u64),
                    ]));
                [p.info.n as u64, p.info.d as u64, rows, fp]
            }
        }
    }
}

/// Sets up a run on every rank (collective) for either method family.
///
/// Rank 0 runs `root_setup`, which validates the config and builds the whole
/// in-process run (and may prepare the output directory, or restore a
/// checkpoint). Rank 0 then broadcasts the family, the resolved config and
/// (EF21 family) the step size; the other ranks ignore `root_setup`, build
/// the same problem and keep only their block of workers. Every rank reports
/// a fingerprint (n, d, rows, x^0, parameters, shard sizes) that rank 0
/// checks. For a resumed run, rank 0 then scatters the restored worker
/// states to the ranks hosting them. Any failure on any rank ends the setup
/// on every rank with an error (rank 0's names the rank and the cause).
pub fn launch(
    rt: MpiRuntime,
    root_setup: impl FnOnce() -> Result<RootJob, SetupFailure>,
) -> Result<Launched, MpiError> {
    let root_p = rt.world.process_at_rank(0);
    // Phase A: rank 0 sets up and broadcasts [code, kind, length, threads, resumed, gamma] and the config.
    let mut header = [0u64; 6];
    let mut job: Option<RootJob> = None;
    let mut root_err: Option<MpiError> = None;
    let mut toml_bytes = Vec::new();
    if rt.is_root() {
        match root_setup() {
            Ok(j) if j.n() < rt.size => {
                let e = MpiError::TooFewWorkers {
                    n: j.n(),
                    ranks: rt.size,
                };
                header[0] = u64::from(e.exit_code());
                root_err = Some(e);
            }
            Ok(j) => {
                header = match &j {
                    RootJob::Ef21 {
                        cfg,
                        prepared,
                        resumed,
                    } => {
                        toml_bytes = cfg.to_toml().into_bytes();
                        [
                            0,
                            KIND_EF21,
                            0,
                            cfg.threads as u64,
                            u64::from(*resumed),
                            prepared.info.gamma.to_bits(),
                        ]
                    }
                    RootJob::Safe { cfg, resumed, .. } => {
                        toml_bytes = cfg.to_toml().into_bytes();
                        [0, KIND_SAFE, 0, cfg.threads as u64, u64::from(*resumed), 0]
                    }
                };
                job = Some(j);
            }
            Err(f) => {
                header[0] = u64::from(f.code.max(1));
                root_err = Some(MpiError::RootSetup(f));
            }
        }
    }
    let mut toml_bytes = allocated(toml_bytes);
    header[2] = toml_bytes.len() as u64;
    root_p.broadcast_into(&mut header[..]);
    if header[0] != 0 {
        return Err(root_err.unwrap_or(MpiError::RootFailed {
            code: header[0] as u8,
        }));
    }
    toml_bytes.resize(header[2] as usize, 0);
    root_p.broadcast_into(&mut toml_bytes[..]);
    let (kind, threads, resumed) = (header[1], header[3] as usize, header[4] != 0);
    let gamma = f64::from_bits(header[5]);
    // Phase B: the other ranks build the same problem.
    let local: Result<Built, String> = match job {
        Some(RootJob::Ef21 { prepared, .. }) => Ok(Built::Ef21(prepared)),
        Some(RootJob::Safe { prepared, .. }) => Ok(Built::Safe(prepared)),
        None => (|| {
            let text = std::str::from_utf8(&toml_bytes)
                .map_err(|e| format!("resolved config is not UTF-8: {e}"))?;
            match kind {
                KIND_EF21 => {
                    // rank 0's step: no rank recomputes the theory constants
                    let mut cfg = crate::config::parse_with_hints(text)?;
                    cfg.step = crate::config::StepConfig::absolute(gamma);
                    cfg.threads = 1;
                    let prepared = setup::prepare(&cfg).map_err(|e| e.to_string())?;
                    Ok(Built::Ef21(prepared))
                }
                KIND_SAFE => {
                    let mut cfg = SafeConfig::from_toml(text)?;
                    cfg.threads = 1;
                    let prepared = prepare_safe(&cfg).map_err(|e| e.to_string())?;
                    Ok(Built::Safe(prepared))
                }
                other => Err(format!("unknown run kind {other} from rank 0")),
            }
        })(),
    };
    // Phase C: every rank reports [ok, n, d, rows, fingerprint, message length]; rank 0 checks.
    let (record, message) = match &local {
        Ok(b) => {
            let [n, d, rows, fp] = b.fingerprint(resumed);
            ([1, n, d, rows, fp, 0], Vec::new())
        }
        Err(m) => {
            let m = m.clone().into_bytes();
            ([0, 0, 0, 0, 0, m.len() as u64], m)
        }
    };
    let message = allocated(message);
    let mut verdict = [0u64; 4];
    let mut failure: Option<MpiError> = None;
    if rt.is_root() {
        let mut all = vec![0u64; 6 * rt.size];
        root_p.gather_into_root(&record[..], &mut all[..]);
        let counts: Vec<Count> = (0..rt.size).map(|r| all[6 * r + 5] as Count).collect();
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |acc, &c| Some(std::mem::replace(acc, *acc + c)))
            .collect();
        let mut msgs = allocated(vec![0u8; counts.iter().map(|&c| c as usize).sum()]);
        root_p.gather_varcount_into_root(
            &message[..],
            &mut PartitionMut::new(&mut msgs[..], &counts[..], &displs[..]),
        );
        for r in 1..rt.size {
            let rec = &all[6 * r..6 * r + 6];
            if rec[0] != 1 {
                let (a, b) = (displs[r] as usize, (displs[r] + counts[r]) as usize);
                failure = Some(MpiError::RankSetup {
                    rank: r,
                    message: String::from_utf8_lossy(&msgs[a..b]).into_owned(),
                });
                break;
            }
            for (k, what) in [
                (1, "workers n"),
                (2, "dimension d"),
                (3, "rows"),
                (4, "x0, parameters or shard sizes"),
            ] {
                if rec[k] != all[k] {
                    failure = Some(MpiError::Mismatch {
                        rank: r,
                        what: format!("{what}: {} vs {}", rec[k], all[k]),
                    });
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(f) = &failure {
            verdict[0] = u64::from(f.exit_code());
        }
    } else {
        root_p.gather_into(&record[..]);
        root_p.gather_varcount_into(&message[..]);
    }
    root_p.broadcast_into(&mut verdict[..]);
    if verdict[0] != 0 {
        return Err(failure.unwrap_or(MpiError::RootFailed {
            code: verdict[0] as u8,
        }));
    }
    Ok(match local.expect("checked above") {
        Built::Ef21(p) => Launched::Ef21(MpiCluster::from_prepared(rt, p, threads, resumed)),
        Built::Safe(p) => Launched::Safe(MpiSafeCluster::from_prepared(rt, p, threads, resumed)),
    })
}

/// Threads of a rank's pool: the config's, or the node's cores shared by its ranks.
pub(crate) fn pool_for(rt: &MpiRuntime, threads: usize) -> rayon::ThreadPool {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = if threads > 0 {
        threads
    } else {
        (cores / rt.local_size).max(1)
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

// ---------------------------------------------------------------------------
// The EF21 family
// ---------------------------------------------------------------------------

/// One rank's share of a distributed run: its block of workers and oracles;
/// on rank 0 also the server.
pub struct MpiCluster {
    /// Test-set accuracy for the metrics (rank 0; problems with a test set).
    test_evaluator: Option<crate::cluster::TestEvaluator>,
    link: Link,
    parts: Parts,
    codecs: Codecs,
    server: Server,
    seed: u64,
    n: usize,
    d: usize,
    lo: usize,
    workers: Vec<Worker>,
    oracles: Vec<Box<dyn Oracle>>,
    pool: rayon::ThreadPool,
    total_samples: u64,
    info: Option<SetupInfo>,
    mask: Vec<bool>,
    idx: Vec<u32>,
    down: Downlink,
    /// The decoded model of the round before last (see `Downlink::recycle_model`).
    spare_model: Arc<Vec<f64>>,
    down_wire: Wire,
    errs: Vec<Option<String>>,
    ups: Vec<Uplink>,
    x_buf: Vec<f64>,
    eval_losses: Vec<f64>,
    eval_grads: Vec<Vec<f64>>,
    eval_send: Vec<f64>,
    eval_recv: Vec<f64>,
    all_losses: Vec<f64>,
    counters: Vec<WorkerCounters>,
    grad: Vec<f64>,
    tmp: Vec<f64>,
    participations: u64,
    last_participants: usize,
    traffic_out: Rc<Cell<Traffic>>,
}

impl MpiCluster {
    /// Sets up an EF21-family run on every rank (collective): [`launch`]
    /// with rank 0's `root_setup` giving the resolved config (with
    /// `step.value` set to the step size used) and the whole in-process
    /// [`Prepared`] run.
    pub fn launch(
        rt: MpiRuntime,
        root_setup: impl FnOnce() -> Result<(Config, Prepared), SetupFailure>,
    ) -> Result<MpiCluster, MpiError> {
        let launched = launch(rt, || {
            root_setup().map(|(cfg, prepared)| RootJob::Ef21 {
                cfg,
                prepared,
                resumed: false,
            })
        })?;
        match launched {
            Launched::Ef21(c) => Ok(c),
            Launched::Safe(_) => unreachable!("rank 0 set up an EF21-family run"),
        }
    }

    fn from_prepared(
        rt: MpiRuntime,
        prepared: Prepared,
        threads: usize,
        resumed: bool,
    ) -> MpiCluster {
        let Prepared { cluster, info } = prepared;
        let root = rt.is_root();
        // the counters of a restored run (rank 0 keeps them)
        let (participations, last_participants) = if root && resumed {
            let s = cluster.snapshot(0.0, 0.0);
            (s.participations, s.last_participants)
        } else {
            (0, 0)
        };
        let Cluster {
            parts,
            codecs,
            server,
            workers,
            oracles,
            seed,
            total_samples,
            test_evaluator,
            ..
        } = cluster;
        let n = workers.len();
        let d = server.state.x.len();
        let mut link = Link::new(rt, n);
        let all_states: Option<Vec<WorkerState>> =
            (root && resumed).then(|| workers.iter().map(|w| w.state.clone()).collect());
        let hosted = link.hosted();
        let (lo, hi) = (hosted.start, hosted.end);
        let mut workers: Vec<Worker> = workers.into_iter().skip(lo).take(hi - lo).collect();
        let oracles: Vec<Box<dyn Oracle>> = oracles.into_iter().skip(lo).take(hi - lo).collect();
        if resumed {
            let states = link.scatter_json(all_states.as_deref());
            for (w, s) in workers.iter_mut().zip(states) {
                assert_eq!(w.state.id, s.id, "restored states in worker order");
                w.state = s;
            }
        }
        let hosted = hi - lo;
        let pool = pool_for(&link.rt, threads);
        MpiCluster {
            parts,
            codecs,
            server,
            seed,
            n,
            d,
            lo,
            workers,
            oracles,
            pool,
            total_samples,
            // only rank 0 writes metrics
            test_evaluator: if root { test_evaluator } else { None },
            info: root.then_some(info),
            mask: Vec::with_capacity(n),
            idx: Vec::new(),
            down: Downlink::default(),
            spare_model: Arc::default(),
            down_wire: Wire::default(),
            errs: vec![None; hosted],
            ups: if root {
                vec![Uplink::default(); n]
            } else {
                Vec::new()
            },
            x_buf: vec![0.0; d],
            eval_losses: vec![0.0; hosted],
            eval_grads: vec![vec![0.0; d]; hosted],
            eval_send: allocated(Vec::with_capacity(hosted * (d + EVAL_EXTRA))),
            eval_recv: if root {
                vec![0.0; n * (d + EVAL_EXTRA)]
            } else {
                Vec::new()
            },
            all_losses: vec![0.0; if root { n } else { 0 }],
            counters: vec![WorkerCounters::default(); if root { n } else { 0 }],
            grad: vec![0.0; d],
            tmp: vec![0.0; d],
            participations,
            last_participants,
            traffic_out: Rc::new(Cell::new(Traffic::default())),
            link,
        }
    }

    /// The runtime (rank, size).
    pub fn runtime(&self) -> &MpiRuntime {
        &self.link.rt
    }

    /// What setup resolved (rank 0 only).
    pub fn info(&self) -> Option<&SetupInfo> {
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

    /// The server's model x^t (meaningful on rank 0 only).
    pub fn x(&self) -> &[f64] {
        &self.server.state.x
    }

    /// Runs the experiment (collective): [`MpiCluster::run_with`] from the start.
    pub fn run(
        &mut self,
        rules: &StopRules,
        checkpoint_every: Option<u64>,
        on_log: impl FnMut(&RoundMetrics, &Traffic) -> Control,
        on_checkpoint: impl FnMut(&ClusterState) -> Result<(), String>,
    ) -> Outcome {
        self.run_with(rules, None, checkpoint_every, on_log, on_checkpoint)
    }

    /// Runs the experiment (collective). On rank 0, rounds are driven until a
    /// stopping rule fires ([`drive`]: the rules, messages and checkpoints of
    /// [`Cluster::run_with`]; `resume` = the initial loss and elapsed seconds
    /// of a run restored at [`launch`]); `on_log` sees every logged round
    /// with the traffic so far, and every `checkpoint_every` rounds (and on
    /// interruption) `on_checkpoint` receives the full state gathered from
    /// every rank (the same [`ClusterState`] the in-process run would give, so
    /// either backend can resume it). The other ranks serve rank 0's
    /// commands until it stops and return its status.
    pub fn run_with(
        &mut self,
        rules: &StopRules,
        resume: Option<(f64, f64)>,
        checkpoint_every: Option<u64>,
        mut on_log: impl FnMut(&RoundMetrics, &Traffic) -> Control,
        on_checkpoint: impl FnMut(&ClusterState) -> Result<(), String>,
    ) -> Outcome {
        self.link.rt.watchdog.arm(true);
        let outcome = if self.link.is_root() {
            let snapshot = Rc::clone(&self.traffic_out);
            let summary = drive(
                &mut RootRounds(self),
                rules,
                resume,
                checkpoint_every,
                |m| on_log(m, &snapshot.get()),
                on_checkpoint,
            );
            self.link
                .send_header([CMD_STOP, status_code(summary.status), 0, 0]);
            Outcome::Root(summary)
        } else {
            Outcome::Follower(serve_root(self))
        };
        self.link.rt.watchdog.arm(false);
        outcome
    }

    /// Gathers every worker's state to rank 0 (in worker-id order; empty elsewhere).
    fn gather_states(&mut self) -> Vec<WorkerState> {
        let mine: Vec<&WorkerState> = self.workers.iter().map(|w| &w.state).collect();
        self.link.gather_json(&mine)
    }

    /// Round `round` on every rank; on rank 0 the server applies the uplinks.
    fn round_body(&mut self, round: u64, len: usize, paper_bits: u64) -> Result<(), String> {
        let root = self.link.is_root();
        let rank = self.link.rt.rank;
        self.link.start_round(round);
        // 1. the downlink: exactly the encoded message
        if root {
            self.down_wire.bytes.clear();
            self.down_wire
                .bytes
                .extend_from_slice(&self.server.state.next_wire.bytes);
        }
        self.down_wire.paper_bits = paper_bits;
        self.link.bcast_downlink(&mut self.down_wire.bytes, len);
        if root {
            self.link.traffic.rounds += 1;
        }
        self.link.inject_fault(round);
        // 2. who takes part (a pure function of seed and round: no traffic)
        self.server
            .participants(&self.parts, self.seed, round, &mut self.mask, &mut self.idx);
        // 3. decode and run the hosted participating workers
        let key = downlink_shared_key(self.seed, round.saturating_sub(1));
        let rc = RoundCtx {
            seed: self.seed,
            round,
        };
        let lo = self.lo;
        self.down.recycle_model(&mut self.spare_model);
        match decode_downlink(
            &self.down_wire.bytes,
            self.d,
            &self.codecs,
            round,
            key,
            &mut self.down,
        ) {
            Ok(()) => {
                let (down, wire, parts, codecs, mask) = (
                    &self.down,
                    &self.down_wire,
                    &self.parts,
                    &self.codecs,
                    &self.mask,
                );
                let (workers, oracles, errs) =
                    (&mut self.workers, &mut self.oracles, &mut self.errs);
                self.pool.install(|| {
                    workers
                        .par_iter_mut()
                        .zip(oracles.par_iter_mut())
                        .zip(errs.par_iter_mut())
                        .enumerate()
                        .for_each(|(j, ((w, o), err))| {
                            let i = lo + j;
                            *err = if mask[i] {
                                w.step(down, wire, o.as_mut(), parts, codecs, rc)
                                    .err()
                                    .map(|e| format!("worker {i}, round {round}: {e}"))
                            } else {
                                None
                            };
                        })
                });
            }
            Err(e) => {
                let msg =
                    format!("MPI rank {rank}: the downlink of round {round} does not decode: {e}");
                self.errs
                    .iter_mut()
                    .for_each(|err| *err = Some(msg.clone()));
            }
        }
        // 4. pack the uplinks of the hosted participants, in worker order
        self.link.clear_uplinks();
        for (j, w) in self.workers.iter().enumerate() {
            if !self.mask[lo + j] {
                continue;
            }
            match &self.errs[j] {
                Some(m) => self.link.push_uplink(Err(m)),
                None => self.link.push_uplink(Ok(&w.scratch.wire.bytes)),
            }
        }
        // 5. gather the lengths, then the bytes
        let mask = &self.mask;
        let k = self
            .link
            .gather_uplinks(|block| mask[block].iter().filter(|&&m| m).count());
        if !root {
            return Ok(());
        }
        // 6. rank 0: decode what travelled and apply it in worker-id order
        let ids = (0..self.n).filter(|&i| self.mask[i]);
        for (i, msg) in ids.zip(self.link.uplinks()) {
            let bytes = msg?;
            decode_uplink(
                bytes,
                &self.parts,
                &self.codecs,
                round,
                uplink_shared_key(self.seed, i, round),
                &mut self.ups[i],
            )
            .map_err(|e| {
                format!("server: the uplink of worker {i}, round {round} does not decode: {e}")
            })?;
        }
        self.participations += k as u64;
        self.last_participants = k;
        let (ups, mask) = (&self.ups, &self.mask);
        self.server
            .apply_with(
                |i| mask[i].then_some(&ups[i]),
                &self.parts,
                &self.codecs,
                rc,
            )
            .map_err(|e| format!("server, round {round}: {e}"))
    }

    /// Evaluation at the server's x on every rank; rank 0 receives every
    /// worker's loss, gradient and counters in `eval_recv`.
    fn eval_body(&mut self) {
        if self.link.is_root() {
            self.x_buf.copy_from_slice(&self.server.state.x);
        }
        self.link.bcast_f64(&mut self.x_buf);
        let x = &self.x_buf;
        let (oracles, grads, losses) = (
            &mut self.oracles,
            &mut self.eval_grads,
            &mut self.eval_losses,
        );
        self.pool.install(|| {
            oracles
                .par_iter_mut()
                .zip(grads.par_iter_mut())
                .zip(losses.par_iter_mut())
                .for_each(|((o, g), l)| {
                    *l = o.loss_grad(x, g);
                })
        });
        self.eval_send.clear();
        for ((w, g), l) in self
            .workers
            .iter()
            .zip(&self.eval_grads)
            .zip(&self.eval_losses)
        {
            self.eval_send.push(*l);
            self.eval_send.extend_from_slice(g);
            // counters travel as f64 values: exact below 2^53
            for c in WorkerCounters::of(&w.state).to_words() {
                debug_assert!(c < (1u64 << 53));
                self.eval_send.push(c as f64);
            }
        }
        let rec = self.d + EVAL_EXTRA;
        self.link
            .gather_f64(&self.eval_send, &mut self.eval_recv, |b| b.len() * rec);
    }
}

/// Gives `v` an allocation. Open MPI defines `MPI_IN_PLACE` as the address 1,
/// which is exactly the dangling pointer of an empty unallocated `Vec<u8>`: an
/// empty buffer must point to real memory or MPI reads it as "in place" (and
/// rejects it). Every byte buffer given to MPI goes through this.
pub(crate) fn allocated<T>(mut v: Vec<T>) -> Vec<T> {
    v.reserve(1);
    v
}

fn prefix(counts: &[Count], displs: &mut [Count]) {
    let mut acc = 0;
    for (d, &c) in displs.iter_mut().zip(counts) {
        *d = acc;
        acc += c;
    }
}

/// Rank 0's view as a [`Rounds`] driver.
struct RootRounds<'a>(&'a mut MpiCluster);

impl Rounds for RootRounds<'_> {
    fn round(&self) -> u64 {
        self.0.server.state.round
    }

    fn step(&mut self) -> Result<(), String> {
        let c = &mut *self.0;
        let round = c.server.state.round;
        let (len, paper_bits) = (
            c.server.state.next_wire.bytes.len() as u64,
            c.server.state.next_wire.paper_bits,
        );
        c.link.send_header([CMD_STEP, round, len, paper_bits]);
        c.round_body(round, len as usize, paper_bits)
    }

    fn metrics(&mut self, seconds: f64) -> RoundMetrics {
        let c = &mut *self.0;
        let round = c.server.state.round;
        c.link.send_header([CMD_EVAL, round, 0, 0]);
        c.eval_body();
        let (d, rec) = (c.d, c.d + EVAL_EXTRA);
        for i in 0..c.n {
            let r = &c.eval_recv[i * rec..(i + 1) * rec];
            c.all_losses[i] = r[0];
            let mut words = [0u64; WorkerCounters::WORDS];
            for (w, v) in words.iter_mut().zip(&r[1 + d..]) {
                *w = *v as u64;
            }
            c.counters[i] = WorkerCounters::from_words(&words);
        }
        let recv = &c.eval_recv;
        let grads = (0..c.n).map(|i| &recv[i * rec + 1..i * rec + 1 + d]);
        let eval = reduce_eval(
            &c.parts,
            &c.server.state.x,
            &c.all_losses,
            grads,
            &mut c.grad,
            &mut c.tmp,
        );
        let totals = RunTotals {
            round,
            participations: c.participations,
            last_participants: c.last_participants,
            total_samples: c.total_samples,
        };
        c.traffic_out.set(c.link.traffic);
        let mut m = round_metrics(eval, &c.counters, totals, seconds);
        m.test_accuracy = c.test_evaluator.as_mut().map(|f| f(&c.server.state.x));
        m
    }

    fn snapshot(&mut self, initial_loss: f64, elapsed: f64) -> ClusterState {
        let c = &mut *self.0;
        c.link
            .send_header([CMD_SNAPSHOT, c.server.state.round, 0, 0]);
        let workers = c.gather_states();
        ClusterState {
            server: c.server.state.clone(),
            workers,
            participations: c.participations,
            last_participants: c.last_participants,
            initial_loss,
            elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_contiguous_and_balanced() {
        for (n, p) in [(4, 1), (4, 4), (20, 4), (20, 3), (5, 2), (7, 7)] {
            let s = blocks(n, p);
            assert_eq!(s.len(), p + 1);
            assert_eq!((s[0], s[p]), (0, n));
            let sizes: Vec<usize> = s.windows(2).map(|w| w[1] - w[0]).collect();
            let (mn, mx) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
            assert!(mn >= 1 && mx - mn <= 1, "{n} over {p}: {sizes:?}");
            // larger blocks first
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn faults_parse() {
        assert_eq!(
            Fault::parse("1:3").unwrap(),
            Fault {
                rank: 1,
                round: 3,
                mode: FaultMode::Abort
            }
        );
        assert_eq!(Fault::parse("0:0:hang").unwrap().mode, FaultMode::Hang);
        assert!(Fault::parse("1").unwrap_err().contains("RANK:ROUND"));
        assert!(Fault::parse("1:x").unwrap_err().contains("round"));
        assert!(Fault::parse("1:2:boom").unwrap_err().contains("boom"));
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [
            Status::Converged,
            Status::MaxRounds,
            Status::TimeLimit,
            Status::Diverged,
            Status::Interrupted,
        ] {
            assert_eq!(status_of(status_code(s)), s);
        }
    }
}
