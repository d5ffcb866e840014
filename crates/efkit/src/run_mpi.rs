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

#[cfg(feature = "mpi")]
#[allow(unused_imports)]
pub use with_mpi::{cmd_run_mpi, run_mpi, MpiRunOptions};

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;

    use anyhow::Result;
    use efkit_runtime::checkpoint;
    use efkit_runtime::config::Config;
    use efkit_runtime::mpi_backend::{MpiCluster, MpiError, MpiRuntime, Outcome, SetupFailure};
    use efkit_runtime::setup;
    use efkit_runtime::{Control, RoundMetrics, Status};
    use indicatif::{ProgressBar, ProgressStyle};

    use crate::output::{self, JsonLines};
    use crate::run::{self, load_config, INTERRUPTED};
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

    /// What rank 0 keeps from the setup.
    struct RootSide {
        cfg: Config,
        out: PathBuf,
        metrics: JsonLines,
        transport: JsonLines,
    }

    /// Rank 0's setup: config, validation, output directory.
    fn root_setup(
        get_cfg: impl FnOnce() -> Result<Config>,
        out: Option<PathBuf>,
        opts: &MpiRunOptions,
        ranks: usize,
    ) -> Result<(RootSide, Config, setup::Prepared)> {
        let cfg = get_cfg()?;
        if cfg.problem.workers < ranks {
            return Err(UserError(format!(
                "invalid `problem.workers`: n = {} workers cannot be spread over P = {ranks} MPI ranks (each rank hosts at least one worker; use n >= P)",
                cfg.problem.workers
            ))
            .into());
        }
        let prepared = setup::prepare(&cfg).map_err(|e| UserError(e.to_string()))?;
        let out = out.unwrap_or_else(|| output::fresh_dir(&cfg.method.name));
        output::prepare_dir(&out, opts.force)?;
        let mut resolved = cfg.clone();
        resolved.step.value.get_or_insert(prepared.info.gamma);
        output::write_atomic(&out.join("config.toml"), resolved.to_toml().as_bytes())?;
        let metrics = JsonLines::create(&out.join("metrics.jsonl"))?;
        let transport = JsonLines::create(&out.join("transport.jsonl"))?;
        Ok((
            RootSide {
                cfg,
                out,
                metrics,
                transport,
            },
            resolved,
            prepared,
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
        let end = run_mpi_with(|| Ok(cfg.clone()), Some(out.to_path_buf()), opts)?;
        Ok(end.summary)
    }

    /// How a run ended on this rank.
    struct RunEnd {
        /// The exit code (the same on every rank).
        code: u8,
        /// Rank 0: the summary.
        summary: Option<efkit_runtime::Summary>,
    }

    /// [`run_mpi`] where rank 0 alone produces the config (the other ranks
    /// never read the config file) and `out` may be chosen by rank 0.
    fn run_mpi_with(
        get_cfg: impl FnOnce() -> Result<Config>,
        out: Option<PathBuf>,
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
        let launched = MpiCluster::launch(rt, || match root_setup(get_cfg, out, opts, ranks) {
            Ok((side, resolved, prepared)) => {
                root_side = Some(side);
                Ok((resolved, prepared))
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
        let mut cluster = match launched {
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
        let Some(mut side) = root_side else {
            // another rank: serve rank 0 until it stops (rank 0 applies the
            // stopping rules), exit with its status
            let rules = efkit_runtime::StopRules {
                max_rounds: 0,
                tol: None,
                time_limit: None,
                blowup: f64::INFINITY,
                log_every: 1,
            };
            let outcome = cluster.run(&rules, None, |_, _| Control::Continue, |_| Ok(()));
            return Ok(RunEnd {
                code: exit_code_of(outcome.status()),
                summary: None,
            });
        };
        let cfg = side.cfg.clone();
        let pb = if opts.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::new(cfg.stop.max_rounds);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} rounds {msg} ({elapsed})",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            pb.set_prefix(
                opts.label
                    .clone()
                    .unwrap_or_else(|| format!("{} (MPI, P = {ranks})", cfg.method.name)),
            );
            pb
        };
        let rules = setup::stop_rules(&cfg);
        let ck_path = side.out.join(checkpoint::CHECKPOINT_FILE);
        let mut rows: Vec<RoundMetrics> = Vec::new();
        let mut write_err: Option<anyhow::Error> = None;
        let outcome = cluster.run(
            &rules,
            cfg.stop.checkpoint_every,
            |m, t| {
                let line = serde_json::json!({ "round": m.round, "traffic": t });
                if let Err(e) = side
                    .metrics
                    .push(m)
                    .and_then(|_| side.transport.push(&line))
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
                checkpoint::write(
                    &ck_path,
                    &checkpoint::Checkpoint {
                        state: state.clone(),
                    },
                )
                .map_err(|e| e.to_string())
            },
        );
        pb.finish_and_clear();
        let Outcome::Root(summary) = outcome else {
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
        let mpi = serde_json::json!({ "ranks": ranks, "traffic": cluster.traffic() });
        run::write_outputs(
            &cfg,
            &side.out,
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
            side.out.display()
        );
        if let Some(msg) = &summary.message {
            eprintln!("{msg}");
        }
        Ok(RunEnd {
            code: run::exit_code(&summary),
            summary: Some(summary),
        })
    }

    fn exit_code_of(s: Status) -> u8 {
        match s {
            Status::Diverged => crate::EXIT_DIVERGED,
            Status::Interrupted => crate::EXIT_INTERRUPTED,
            _ => 0,
        }
    }

    /// `efkit run` with the MPI backend (every rank runs it).
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
        let get_cfg = || -> Result<Config> {
            // rank 0 only: the other ranks receive the resolved config
            let mut cfg = load_config(config, sets)?;
            if let Some(t) = threads {
                cfg.threads = t;
            }
            if checkpoint_every.is_some() {
                cfg.stop.checkpoint_every = checkpoint_every;
            }
            Ok(cfg)
        };
        Ok(run_mpi_with(
            get_cfg,
            out,
            &MpiRunOptions {
                quiet,
                force,
                label: None,
            },
        )?
        .code)
    }
}
