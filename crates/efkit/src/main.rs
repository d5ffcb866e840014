//! The `efkit` command-line tool: run experiments from config files, reproduce
//! the papers' figures, plot runs, inspect data and compressors.
//!
//! Exit codes: 0 ok, 1 internal error, 2 bad input (config, data, flags),
//! 3 diverged, 130 interrupted.

mod output;
mod plot;
mod repro;
mod repro_bw;
#[cfg(feature = "nn")]
mod repro_mlp;
mod repro_safe;
mod repro_sgdm;
mod run;
mod run_mpi;
mod run_safe;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// An error caused by the user's input (exit code 2).
#[derive(Debug)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Exit code for diverged runs.
pub const EXIT_DIVERGED: u8 = 3;
/// Exit code for interrupted runs.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "efkit",
    version,
    about = "Communication-efficient distributed training with error feedback (EF21 family)"
)]
struct Cli {
    /// Print no progress bars or tables (errors still go to stderr).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one experiment from a TOML config file.
    Run {
        /// The config file.
        config: PathBuf,
        /// Output directory (default: a fresh runs/<timestamp>-<method> directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an output directory that already holds a run.
        #[arg(long)]
        force: bool,
        /// Override a config key, e.g. --set method.name=ef14 --set stop.max_rounds=50.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Worker threads (overrides the config; results do not depend on it).
        #[arg(long)]
        threads: Option<usize>,
        /// Write a checkpoint every N rounds (then `efkit resume DIR` continues the run).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint_every: Option<u64>,
        /// Backend: in-process (threads) or mpi (`mpirun -n P efkit run ...`; the default when started by an MPI launcher; needs a build with `--features mpi`).
        #[arg(long, value_enum)]
        backend: Option<run_mpi::Backend>,
    },
    /// Continue a run from its checkpoint.
    Resume {
        /// The run directory.
        dir: PathBuf,
        /// Backend: in-process or mpi (`mpirun -n P efkit resume DIR`; the default when started by an MPI launcher). Either backend resumes a checkpoint written by either.
        #[arg(long, value_enum)]
        backend: Option<run_mpi::Backend>,
    },
    /// Reproduce a paper figure end to end.
    Repro {
        /// Which figure.
        name: repro::ReproName,
        /// Output directory (default: repro/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing output directory.
        #[arg(long)]
        force: bool,
        /// A much shorter run for smoke tests (not the paper's budget).
        #[arg(long)]
        quick: bool,
    },
    /// Overlay several runs in one plot.
    Plot {
        /// Run directories (each with metrics.jsonl).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The x axis.
        #[arg(long, value_enum, default_value = "bits")]
        x: XAxis,
        /// The y axis (a metrics key).
        #[arg(long, default_value = "grad_norm_sq")]
        y: String,
        /// Output file stem (writes STEM.svg and STEM.png).
        #[arg(long)]
        out: PathBuf,
    },
    /// Bundled and user data sets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The method presets: what each is and the `[method]` keys it reads.
    Methods,
    /// The compressor catalogue with each class and constant for dimension D.
    Compressors {
        /// The dimension d (1 to 4294967295).
        #[arg(long, default_value_t = 1000)]
        dim: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// List the bundled data sets.
    List,
    /// Rows, features, nonzeros and label counts of a data set (bundled name or path).
    Inspect {
        /// A bundled name or a LibSVM file.
        name: String,
    },
}

/// x axis of `efkit plot`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum XAxis {
    /// Cumulative uplink bits per worker (wire).
    Bits,
    /// Cumulative uplink bits per worker (papers' convention).
    PaperBits,
    /// Rounds.
    Rounds,
    /// Epochs.
    Epochs,
    /// Seconds.
    Seconds,
}

impl XAxis {
    /// The metrics key and axis label.
    pub fn key(self) -> (&'static str, &'static str) {
        match self {
            XAxis::Bits => ("bits_up_wire", "#bits/n (uplink, wire)"),
            XAxis::PaperBits => ("bits_up_paper", "#bits/n (uplink, 32 bits per value)"),
            XAxis::Rounds => ("round", "rounds"),
            XAxis::Epochs => ("epochs", "epochs"),
            XAxis::Seconds => ("seconds", "seconds"),
        }
    }
}

/// For the listing commands: a reader that closes the pipe early
/// (`efkit compressors | head`) ends the program quietly, as it does other
/// command-line tools, instead of a panic in `println!` (Rust ignores SIGPIPE
/// by default). Only here: runs keep the default, so a broken MPI or output
/// pipe is an error they report.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any
    // output; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    // efkit runs one worker per pool thread, and each worker's network
    // computes its forward/backward pass on that thread: candle's own
    // threading (its matrix products follow RAYON_NUM_THREADS) would put two
    // threads on every core and gains little at these sizes (measured in
    // bench/runs/2026-12-05-mlp-inplace.md: a round 1.6x faster with it off).
    // Results do not depend on it. Set before any thread starts; a user's own
    // value is kept.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    // candle's per-tensor buffers are reused rather than re-mapped
    #[cfg(feature = "nn")]
    efkit_nn::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("EFKIT_LOG"))
        .init();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UserError>().is_some()
                || e.chain().any(|c| c.downcast_ref::<UserError>().is_some())
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run {
            config,
            out,
            force,
            set,
            threads,
            checkpoint_every,
            backend,
        } => match run_mpi::choose_backend(backend)? {
            run_mpi::Backend::Mpi => run_mpi::cmd_run_mpi(
                &config,
                out,
                force,
                &set,
                threads,
                checkpoint_every,
                cli.quiet,
            ),
            run_mpi::Backend::InProcess => run::cmd_run(
                &config,
                out,
                force,
                &set,
                threads,
                checkpoint_every,
                cli.quiet,
            ),
        },
        Command::Resume { dir, backend } => match run_mpi::choose_backend(backend)? {
            run_mpi::Backend::Mpi => run_mpi::cmd_resume_mpi(&dir, cli.quiet),
            run_mpi::Backend::InProcess => run::cmd_resume(&dir, cli.quiet),
        },
        Command::Repro {
            name,
            out,
            force,
            quick,
        } => repro::cmd_repro(name, out, force, quick, cli.quiet),
        Command::Plot { dirs, x, y, out } => run::cmd_plot(&dirs, x, &y, &out),
        Command::Data { command } => {
            quiet_on_closed_pipe();
            match command {
                DataCommand::List => run::cmd_data_list(),
                DataCommand::Inspect { name } => run::cmd_data_inspect(&name),
            }
        }
        Command::Methods => {
            quiet_on_closed_pipe();
            run::cmd_methods()
        }
        Command::Compressors { dim } => {
            quiet_on_closed_pipe();
            run::cmd_compressors(dim)
        }
    }
}
