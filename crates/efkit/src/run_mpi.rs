//! `efkit run` over MPI: `mpirun -n P efkit run CONFIG.toml`.
//!
//! The backend is chosen by `--backend in-process|mpi`, or detected: a process
//! started by an MPI launcher (Open MPI's `mpirun` sets `OMPI_COMM_WORLD_SIZE`,
//! MPICH/Hydra and Slurm's `srun --mpi=pmi2` set `PMI_SIZE`, PMIx launchers
//! set `PMIX_RANK`) uses MPI. The MPI build needs `--features mpi`
//! (docs/mpi.md); a build without it refuses to run as one of several MPI
//! processes rather than run the experiment P times.
//!
//! Every rank runs this command; rank 0 reads the config, validates it,
//! prepares the output directory and is the only rank that writes: the same
//! `config.toml`, `metrics.jsonl` (bit-identical to the in-process run, seconds
//! aside), `summary.json` (plus an `mpi` entry) and plot as `efkit run`, and
//! `transport.jsonl`: per logged round, the bytes rank 0 passed to MPI so far
//! (encoded downlinks and uplinks, control words, evaluation traffic) and the
//! seconds spent in the round's broadcasts and gathers.
//!
//! Both method families run over MPI: EF21-family configs and Safe-EF-family
//! configs (`[method].name` in `efkit_core::safe::SAFE_METHOD_NAMES`); rank 0
//! tells the other ranks which. `mpirun -n P efkit resume DIR` continues a run
//! from its checkpoint, whichever backend and P wrote it (rank 0 alone reads
//! the directory; the other ranks receive their workers' states); the
//! `transport.jsonl` lines it appends count from the resumption and carry
//! `resumed_from`.

use clap::ValueEnum;

use crate::UserError;

/// How `efkit run` executes the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Threads in one process.
    InProcess,
    /// One process per MPI rank (`mpirun -n P efkit run ...`).
    Mpi,
}

/// Environment variables by which MPI launchers announce a job.
pub const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// The launcher variable found in the environment and the job size it gives
/// (`None` when the variable carries no size, e.g. `PMIX_RANK`).
pub fn detect_launcher() -> Option<(&'static str, Option<usize>)> {
    LAUNCHER_VARS.iter().find_map(|&v| {
        let val = std::env::var(v).ok()?;
        let size = if v.ends_with("_SIZE") {
            val.trim().parse().ok()
        } else {
            None
        };
        Some((v, size))
    })
}

/// The backend to use: the flag if given, else MPI when started by an MPI
/// launcher (in a build with the `mpi` feature), else in-process.
pub fn choose_backend(flag: Option<Backend>) -> Result<Backend, UserError> {
    let launched = detect_launcher();
    let several = launched.is_some_and(|(_, size)| size != Some(1));
    match flag {
        Some(Backend::Mpi) if !cfg!(feature = "mpi") => {
            Err(UserError("--backend mpi: this efkit was built without MPI support; rebuild with `cargo build --release --features mpi` (needs an MPI library and libclang, see docs/mpi.md)".into()))
        }
        Some(Backend::InProcess) if several => Err(UserError(format!(
            "--backend in-process, but this process is one of {} started by an MPI launcher ({} is set): each would run the whole experiment into the same directory; use `--backend mpi` or start one process",
            launched.and_then(|l| l.1).map_or("several".to_string(), |s| s.to_string()),
            launched.map_or("", |l| l.0)
        ))),
        Some(b) => Ok(b),
        None => match launched {
            Some(_) if cfg!(feature = "mpi") => Ok(Backend::Mpi),
            Some((var, size)) if several => Err(UserError(format!(
                "started by an MPI launcher ({var} = {}) but this efkit was built without MPI support: rebuild with `--features mpi` (docs/mpi.md), or run without mpirun",
                size.map_or("?".to_string(), |s| s.to_string())
            ))),
            _ => Ok(Backend::InProcess),
        },
    }
}

#[cfg(not(feature = "mpi"))]
/// `efkit run --backend mpi` in a build without MPI: an error saying how to get it.
pub fn cmd_run_mpi(
    _config: &std::path::Path,
    _out: Option<std::path::PathBuf>,
    _force: bool,
    _sets: &[String],
    _threads: Option<usize>,
    _checkpoint_every: Option<u64>,
    _quiet: bool,
) -> anyhow::Result<u8> {
    Err(UserError(
        "this efkit was built without MPI support; rebuild with `--features mpi` (docs/mpi.md)"
            .into(),
    )
    .into())
}

#[cfg(not(feature = "mpi"))]
/// `efkit resume --backend mpi` in a build without MPI: an error saying how to get it.
pub fn cmd_resume_mpi(_dir: &std::path::Path, _quiet: bool) -> anyhow::Result<u8> {
    Err(UserError(
        "this efkit was built without MPI support; rebuild with `--features mpi` (docs/mpi.md)"
            .into(),
    )
    .into())
}

#[cfg(feature = "mpi")]
#[allow(unused_imports)]
pub use with_mpi::{cmd_resume_mpi, cmd_run_mpi, run_mpi, MpiRunOptions};

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;

    use anyhow::Result;
    use efkit_runtime::checkpoint::{self, ConfigStamp, SafeCheckpoint};
    use efkit_runtime::config::Config;
    use efkit_runtime::mpi_backend::{
        launch, Launched, MpiCluster, MpiError, MpiRuntime, MpiSafeCluster, RootJob, SetupFailure,
        Traffic,
    };
    use efkit_runtime::safe::{prepare_safe, safe_stop, SafeConfig, SafeMetrics, SafeStop};
    use efkit_runtime::setup;
    use efkit_runtime::{Control, RoundMetrics, Status};
    use indicatif::{ProgressBar, ProgressStyle};

    use crate::output::{self, JsonLines};
    use crate::run::{self, INTERRUPTED};
    use crate::run_safe;
    use crate::UserError;

    /// Options of one MPI run.
    pub struct MpiRunOptions {
        /// No progress bar.
        pub quiet: bool,
        /// Overwrite an existing run.
        pub force: bool,
        /// Label used in the plot.
        pub label: Option<String>,
    }

    fn install_signal_handler() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
        });
    }

    fn is_user_error(e: &anyhow::Error) -> bool {
        e.downcast_ref::<UserError>().is_some()
            || e.chain().any(|c| c.downcast_ref::<UserError>().is_some())
    }

    /// What rank 0 keeps from the setup: where it writes, and its family's run.
    /// Rank 0's `metrics.jsonl` and `transport.jsonl`: open, or (a
    /// resumption) rewritten with the kept lines only once every rank has set
    /// up, so a resumption that fails on another rank changes no file.
    enum Files {
        Open {
            metrics: JsonLines,
            transport: JsonLines,
        },
        Pending(Box<dyn FnOnce() -> Result<(JsonLines, JsonLines)>>),
    }

    impl Files {
        fn open(self) -> Result<(JsonLines, JsonLines)> {
            match self {
                Files::Open { metrics, transport } => Ok((metrics, transport)),
                Files::Pending(commit) => commit(),
            }
        }
    }

    struct RootSide {
        out: PathBuf,
        files: Files,
        /// The checkpoint's round when the run resumes.
        resumed_from: Option<u64>,
        /// The stamp of the config as `config.toml` holds it, written into
        /// every checkpoint.
        stamp: ConfigStamp,
        family: Family,
    }

    enum Family {
        Ef21 {
            cfg: Config,
            /// Metrics lines so far (kept lines of a resumed run).
            rows: Vec<RoundMetrics>,
            /// Initial loss and elapsed seconds of a resumed run.
            resume: Option<(f64, f64)>,
        },
        Safe {
            cfg: SafeConfig,
            rows: Vec<SafeMetrics>,
            /// Elapsed seconds of a resumed run.
            resume: Option<f64>,
        },
    }

    fn check_ranks(workers: usize, ranks: usize) -> Result<()> {
        if workers < ranks {
            return Err(UserError(format!(
                "invalid `problem.workers`: n = {workers} workers cannot be spread over P = {ranks} MPI ranks (each rank hosts at least one worker; use n >= P)"
            ))
            .into());
        }
        Ok(())
    }

    /// Rank 0's setup of a new EF21-family run: validation, output directory.
    fn setup_ef21(
        cfg: Config,
        out: Option<PathBuf>,
        force: bool,
        ranks: usize,
    ) -> Result<(RootSide, RootJob)> {
        check_ranks(cfg.problem.workers, ranks)?;
        let prepared = setup::prepare(&cfg).map_err(|e| UserError(e.to_string()))?;
        let out = out.unwrap_or_else(|| output::fresh_dir(&cfg.method.name));
        output::prepare_dir(&out, force)?;
        let mut resolved = cfg.clone();
        resolved.step.value.get_or_insert(prepared.info.gamma);
        let stamp = ConfigStamp::of(&resolved)?;
        output::write_atomic(&out.join("config.toml"), resolved.to_toml().as_bytes())?;
        let metrics = JsonLines::create(&out.join("metrics.jsonl"))?;
        let transport = JsonLines::create(&out.join("transport.jsonl"))?;
        Ok((
            RootSide {
                out,
                files: Files::Open { metrics, transport },
                resumed_from: None,
                stamp,
                family: Family::Ef21 {
                    cfg,
                    rows: Vec::new(),
                    resume: None,
                },
            },
            RootJob::Ef21 {
                cfg: resolved,
                prepared,
                resumed: false,
            },
        ))
    }

    /// Rank 0's setup of a new Safe-EF-family run.
    fn setup_safe(
        cfg: SafeConfig,
        out: Option<PathBuf>,
        force: bool,
        ranks: usize,
    ) -> Result<(RootSide, RootJob)> {
        check_ranks(cfg.problem.workers, ranks)?;
        let prepared = prepare_safe(&cfg).map_err(|e| UserError(e.to_string()))?;
        let out = out.unwrap_or_else(|| output::fresh_dir(&cfg.method.name));
        output::prepare_dir(&out, force)?;
        let stamp = ConfigStamp::of(&cfg)?;
        output::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        let metrics = JsonLines::create(&out.join("metrics.jsonl"))?;
        let transport = JsonLines::create(&out.join("transport.jsonl"))?;
        Ok((
            RootSide {
                out,
                files: Files::Open { metrics, transport },
                resumed_from: None,
                stamp,
                family: Family::Safe {
                    cfg: cfg.clone(),
                    rows: Vec::new(),
                    resume: None,
                },
            },
            RootJob::Safe {
                cfg,
                prepared,
                resumed: false,
            },
        ))
    }

    /// The lines of a resumed run's `transport.jsonl` up to `round`, read and
    /// checked like its metrics (a malformed line other than a cut last one
    /// is an error) before anything is written.
    fn kept_transport(
        dir: &Path,
        round: u64,
    ) -> Result<(PathBuf, output::KeptRows<serde_json::Value>)> {
        let path = dir.join("transport.jsonl");
        let kept = output::read_rows(&path, round, |v: &serde_json::Value| {
            v["round"].as_u64().unwrap_or(u64::MAX)
        })?;
        Ok((path, kept))
    }

    /// Rank 0's setup of the continuation of the run in `dir` from its
    /// checkpoint (either family; the checkpoint may come from either
    /// backend). Everything is read and checked here (config, setup,
    /// checkpoint against the config); `metrics.jsonl` and `transport.jsonl`
    /// are trimmed only once every rank has set up ([`Files::Pending`]), so a
    /// resumption that fails on any rank leaves the directory as it was.
    fn setup_resume(dir: &Path, ranks: usize) -> Result<(RootSide, RootJob)> {
        let text = run::read_config_text(&dir.join("config.toml"))?;
        if run_safe::is_safe_text(&text) {
            let mut resumed = run_safe::open_resumed(dir, &text)?;
            check_ranks(resumed.cfg.problem.workers, ranks)?;
            let mut prepared = prepare_safe(&resumed.cfg).map_err(|e| UserError(e.to_string()))?;
            let round = resumed.checkpoint.safe.server.round;
            let elapsed = resumed.restore(&mut prepared.cluster)?;
            let (cfg, rows, stamp) = (
                resumed.cfg.clone(),
                resumed.kept.rows.clone(),
                resumed.stamp.clone(),
            );
            let (tpath, tkept) = kept_transport(dir, round)?;
            let files = Files::Pending(Box::new(move || {
                let (_, _, lines, _) = resumed.commit()?;
                Ok((lines, output::rewrite_kept(&tpath, &tkept)?))
            }));
            return Ok((
                RootSide {
                    out: dir.to_path_buf(),
                    files,
                    resumed_from: Some(round),
                    stamp,
                    family: Family::Safe {
                        cfg: cfg.clone(),
                        rows,
                        resume: Some(elapsed),
                    },
                },
                RootJob::Safe {
                    cfg,
                    prepared,
                    resumed: true,
                },
            ));
        }
        let mut resumed = run::open_resumed(dir, &text)?;
        check_ranks(resumed.cfg.problem.workers, ranks)?;
        let mut prepared = setup::prepare(&resumed.cfg).map_err(|e| UserError(e.to_string()))?;
        let round = resumed.checkpoint.state.server.round;
        let (initial_loss, elapsed) = resumed.restore(&mut prepared.cluster)?;
        let (cfg, rows, stamp) = (
            resumed.cfg.clone(),
            resumed.kept.rows.clone(),
            resumed.stamp.clone(),
        );
        let mut resolved = cfg.clone();
        resolved.step.value.get_or_insert(prepared.info.gamma);
        let (tpath, tkept) = kept_transport(dir, round)?;
        let files = Files::Pending(Box::new(move || {
            let (_, _, metrics, _) = resumed.commit()?;
            Ok((metrics, output::rewrite_kept(&tpath, &tkept)?))
        }));
        Ok((
            RootSide {
                out: dir.to_path_buf(),
                files,
                resumed_from: Some(round),
                stamp,
                family: Family::Ef21 {
                    cfg,
                    rows,
                    resume: Some((initial_loss, elapsed)),
                },
            },
            RootJob::Ef21 {
                cfg: resolved,
                prepared,
                resumed: true,
            },
        ))
    }

    /// Runs `cfg` on every rank of the MPI job (collective: every rank calls
    /// it; only rank 0's `cfg` is used, the others receive it), the MPI
    /// counterpart of [`run::run_config`]. Rank 0 writes into `out` and gets
    /// the summary; the other ranks get `None`. (For drivers that run
    /// several configs, e.g. `repro` under MPI; `efkit run` uses [`cmd_run_mpi`].)
    #[allow(dead_code)]
    pub fn run_mpi(
        cfg: &Config,
        out: &Path,
        opts: &MpiRunOptions,
    ) -> Result<Option<efkit_runtime::Summary>> {
        let end = run_job(
            |ranks| setup_ef21(cfg.clone(), Some(out.to_path_buf()), opts.force, ranks),
            opts,
        )?;
        Ok(end.summary)
    }

    /// How a run ended on this rank.
    struct RunEnd {
        /// The exit code (the same on every rank).
        code: u8,
        /// Rank 0 of an EF21-family run: the summary.
        summary: Option<efkit_runtime::Summary>,
    }

    fn progress(opts: &MpiRunOptions, rounds: u64, label: String) -> ProgressBar {
        if opts.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(rounds);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} rounds {msg} ({elapsed})",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_prefix(opts.label.clone().unwrap_or(label));
        pb
    }

    /// One `transport.jsonl` line: the traffic so far (of this process: a
    /// resumed run counts from its checkpoint, marked `resumed_from`).
    fn transport_line(round: u64, t: &Traffic, resumed_from: Option<u64>) -> serde_json::Value {
        let mut line = serde_json::json!({ "round": round, "traffic": t });
        if let Some(r) = resumed_from {
            line["resumed_from"] = r.into();
        }
        line
    }

    /// Sets up (rank 0 alone runs `setup`; the other ranks never read the
    /// config or the run directory) and runs a job of either family on every rank.
    fn run_job(
        setup: impl FnOnce(usize) -> Result<(RootSide, RootJob)>,
        opts: &MpiRunOptions,
    ) -> Result<RunEnd> {
        let rt = MpiRuntime::init().map_err(|e| match e {
            MpiError::Env { .. } => anyhow::Error::new(UserError(e.to_string())),
            other => anyhow::Error::new(other),
        })?;
        install_signal_handler();
        let ranks = rt.size();
        let mut root_side: Option<RootSide> = None;
        let mut root_err: Option<anyhow::Error> = None;
        let launched = launch(rt, || match setup(ranks) {
            Ok((side, job)) => {
                root_side = Some(side);
                Ok(job)
            }
            Err(e) => {
                let failure = SetupFailure {
                    code: if is_user_error(&e) { 2 } else { 1 },
                    message: format!("{e:#}"),
                };
                root_err = Some(e);
                Err(failure)
            }
        });
        let launched = match launched {
            Ok(c) => c,
            Err(MpiError::RootFailed { code }) => {
                return Ok(RunEnd {
                    code,
                    summary: None,
                })
            }
            Err(e) => {
                if let Some(re) = root_err {
                    return Err(re);
                }
                let code = e.exit_code();
                return Err(if code == 2 {
                    anyhow::Error::new(UserError(e.to_string()))
                } else {
                    anyhow::Error::new(e)
                });
            }
        };
        let Some(side) = root_side else {
            // another rank: serve rank 0 until it stops (rank 0 applies the
            // stopping rules), exit with its status
            let status = match launched {
                Launched::Ef21(mut c) => {
                    let rules = efkit_runtime::StopRules {
                        max_rounds: 0,
                        tol: None,
                        time_limit: None,
                        blowup: f64::INFINITY,
                        log_every: 1,
                    };
                    c.run(&rules, None, |_, _| Control::Continue, |_| Ok(()))
                        .status()
                }
                Launched::Safe(mut c) => {
                    let rules = SafeStop {
                        max_rounds: 0,
                        log_every: 1,
                        time_limit: None,
                    };
                    c.run_with(&rules, None, None, |_, _| Control::Continue, |_| Ok(()))
                        .status()
                }
            };
            return Ok(RunEnd {
                code: exit_code_of(status),
                summary: None,
            });
        };
        match launched {
            Launched::Ef21(c) => root_ef21(c, side, opts, ranks),
            Launched::Safe(c) => root_safe(c, side, opts, ranks),
        }
    }

    /// Rank 0 of an EF21-family run: drives it and writes the outputs.
    fn root_ef21(
        mut cluster: MpiCluster,
        side: RootSide,
        opts: &MpiRunOptions,
        ranks: usize,
    ) -> Result<RunEnd> {
        let RootSide {
            out,
            files,
            resumed_from,
            stamp,
            family,
        } = side;
        // every rank has set up: a resumption may now rewrite its files
        let (mut metrics, mut transport) = files.open()?;
        let Family::Ef21 {
            cfg,
            mut rows,
            resume,
        } = family
        else {
            unreachable!("rank 0 set up an EF21-family run")
        };
        let pb = progress(
            opts,
            cfg.stop.max_rounds,
            format!("{} (MPI, P = {ranks})", cfg.method.name),
        );
        let rules = setup::stop_rules(&cfg);
        let ck_path = out.join(checkpoint::CHECKPOINT_FILE);
        let mut write_err: Option<anyhow::Error> = None;
        let outcome = cluster.run_with(
            &rules,
            resume,
            cfg.stop.checkpoint_every,
            |m, t| {
                if let Err(e) = metrics
                    .push(m)
                    .and_then(|_| transport.push(&transport_line(m.round, t, resumed_from)))
                {
                    write_err = Some(e);
                    return Control::Interrupt;
                }
                pb.set_position(m.round);
                pb.set_message(format!("|grad|^2 = {:.3e}", m.grad_norm_sq));
                rows.push(m.clone());
                if INTERRUPTED.load(Ordering::SeqCst) {
                    Control::Interrupt
                } else {
                    Control::Continue
                }
            },
            |state| {
                checkpoint::write_stamped(
                    &ck_path,
                    &checkpoint::Checkpoint {
                        state: state.clone(),
                    },
                    &stamp,
                )
                .map_err(|e| e.to_string())
            },
        );
        pb.finish_and_clear();
        let efkit_runtime::mpi_backend::Outcome::Root(summary) = outcome else {
            unreachable!("rank 0 drives the run")
        };
        if let Some(e) = write_err {
            return Err(e.context("writing metrics"));
        }
        let info = cluster.info().expect("rank 0 keeps the setup info").clone();
        let label = opts
            .label
            .clone()
            .unwrap_or_else(|| format!("{} {}", cfg.method.name, info.compressor));
        let mpi = serde_json::json!({ "ranks": ranks, "traffic": cluster.traffic(), "resumed_from": resumed_from });
        run::write_outputs(
            &cfg,
            &out,
            &summary,
            &info,
            &rows,
            &label,
            Some(("mpi", mpi)),
            &format!(", MPI P = {ranks}"),
        )?;
        let last = summary.last.as_ref();
        eprintln!(
            "{}: status {:?} after {} rounds on P = {ranks} MPI ranks, ||grad f||^2 = {:.3e}, uplink {:.3e} bits/worker; results in {}",
            cfg.method.name,
            summary.status,
            summary.rounds,
            last.map_or(f64::NAN, |m| m.grad_norm_sq),
            last.map_or(f64::NAN, |m| m.bits_up_wire),
            out.display()
        );
        if let Some(msg) = &summary.message {
            eprintln!("{msg}");
        }
        Ok(RunEnd {
            code: run::exit_code(&summary),
            summary: Some(summary),
        })
    }

    /// Rank 0 of a Safe-EF-family run: drives it and writes the outputs
    /// (as `efkit run` in-process, plus `transport.jsonl` and an `mpi` entry
    /// in `summary.json`).
    fn root_safe(
        mut cluster: MpiSafeCluster,
        side: RootSide,
        opts: &MpiRunOptions,
        ranks: usize,
    ) -> Result<RunEnd> {
        let RootSide {
            out,
            files,
            resumed_from,
            stamp,
            family,
        } = side;
        // every rank has set up: a resumption may now rewrite its files
        let (mut metrics, mut transport) = files.open()?;
        let Family::Safe {
            cfg,
            mut rows,
            resume,
        } = family
        else {
            unreachable!("rank 0 set up a Safe-EF-family run")
        };
        let pb = progress(
            opts,
            cfg.stop.max_rounds,
            format!("{} (MPI, P = {ranks})", cfg.method.name),
        );
        let ck_path = out.join(checkpoint::CHECKPOINT_FILE);
        let mut write_err: Option<anyhow::Error> = None;
        let outcome = cluster.run_with(
            &safe_stop(&cfg),
            resume,
            cfg.stop.checkpoint_every,
            |m, t| {
                if let Err(e) = metrics
                    .push(m)
                    .and_then(|_| transport.push(&transport_line(m.round, t, resumed_from)))
                {
                    write_err = Some(e);
                    return Control::Interrupt;
                }
                pb.set_position(m.round);
                pb.set_message(format!("f = {:.4e}, g = {:.3e}", m.objective, m.constraint));
                rows.push(m.clone());
                if INTERRUPTED.load(Ordering::SeqCst) {
                    Control::Interrupt
                } else {
                    Control::Continue
                }
            },
            |state| {
                checkpoint::write_stamped(
                    &ck_path,
                    &SafeCheckpoint {
                        safe: state.clone(),
                    },
                    &stamp,
                )
                .map_err(|e| e.to_string())
            },
        );
        pb.finish_and_clear();
        let efkit_runtime::mpi_backend::SafeOutcome::Root(summary) = outcome else {
            unreachable!("rank 0 drives the run")
        };
        if let Some(e) = write_err {
            return Err(e.context("writing metrics"));
        }
        let info = cluster.info().expect("rank 0 keeps the setup info").clone();
        let mpi = serde_json::json!({ "ranks": ranks, "traffic": cluster.traffic(), "resumed_from": resumed_from });
        run_safe::write_summary(&out, &summary, &rows, &info, &cfg.stop, Some(("mpi", mpi)))?;
        let code = run_safe::report(&cfg, &summary, &out, &format!(" on P = {ranks} MPI ranks"));
        Ok(RunEnd {
            code,
            summary: None,
        })
    }

    fn exit_code_of(s: Status) -> u8 {
        match s {
            Status::Diverged => crate::EXIT_DIVERGED,
            Status::Interrupted => crate::EXIT_INTERRUPTED,
            _ => 0,
        }
    }

    /// `efkit run` with the MPI backend (every rank runs it; rank 0 alone
    /// reads the config, of either method family).
    #[allow(clippy::too_many_arguments)]
    pub fn cmd_run_mpi(
        config: &Path,
        out: Option<PathBuf>,
        force: bool,
        sets: &[String],
        threads: Option<usize>,
        checkpoint_every: Option<u64>,
        quiet: bool,
    ) -> Result<u8> {
        let setup = |ranks: usize| -> Result<(RootSide, RootJob)> {
            // read once: a pipe or /dev/stdin gives its content only once
            let text = run::read_config_text(config)?;
            if run::safe_method_doc(&text, sets)?.is_some() {
                let mut cfg = run_safe::parse_with(&text, config, sets)?;
                if let Some(t) = threads {
                    cfg.threads = t;
                }
                if checkpoint_every.is_some() {
                    cfg.stop.checkpoint_every = checkpoint_every;
                }
                return setup_safe(cfg, out, force, ranks);
            }
            let mut cfg = run::parse_config(&text, config, sets)?;
            if let Some(t) = threads {
                cfg.threads = t;
            }
            if checkpoint_every.is_some() {
                cfg.stop.checkpoint_every = checkpoint_every;
            }
            setup_ef21(cfg, out, force, ranks)
        };
        let opts = MpiRunOptions {
            quiet,
            force,
            label: None,
        };
        Ok(run_job(setup, &opts)?.code)
    }

    /// `efkit resume DIR` with the MPI backend (every rank runs it; rank 0
    /// alone reads the run directory). The checkpoint may have been written
    /// by either backend with any number of ranks.
    pub fn cmd_resume_mpi(dir: &Path, quiet: bool) -> Result<u8> {
        let opts = MpiRunOptions {
            quiet,
            force: true,
            label: None,
        };
        Ok(run_job(|ranks| setup_resume(dir, ranks), &opts)?.code)
    }
}
