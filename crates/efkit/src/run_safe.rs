//! `efkit run` and `efkit resume` for Safe-EF-family configs, in-process
//! (docs/safe-ef.md; the MPI counterpart is in `run_mpi.rs`).
//!
//! A run directory holds `config.toml` (the [`SafeConfig`]), `metrics.jsonl`
//! (one [`SafeMetrics`] line per logged round), `summary.json` and, with
//! `stop.checkpoint_every` (or `--checkpoint-every`), `checkpoint.json`: the
//! full [`efkit_runtime::safe::SafeClusterState`] in the checksummed format of
//! `efkit_runtime::checkpoint`. `efkit resume DIR` restores it into a cluster
//! built from `config.toml`, keeps the metrics lines up to its round and
//! continues: the metrics equal those of an uninterrupted run bit for bit
//! (seconds aside), because the state holds every value a later round reads.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Result;
use efkit_runtime::checkpoint::{self, ConfigStamp, SafeCheckpoint};
use efkit_runtime::safe::{
    prepare_safe, safe_stop, SafeCluster, SafeClusterState, SafeConfig, SafeMetrics, SafeSummary,
};
use efkit_runtime::{Control, Status};

use crate::output::{self, JsonLines};
use crate::{UserError, EXIT_DIVERGED, EXIT_INTERRUPTED};

/// Parses a Safe-EF config (errors are [`UserError`]s naming the file).
pub fn parse(text: &str, path: &Path) -> Result<SafeConfig> {
    SafeConfig::from_toml(text)
        .map_err(|e| UserError(format!("config {}: {e}", path.display())).into())
}

/// Parses a Safe-EF config file's text with `--set` overrides (see
/// [`crate::run::parse_with_sets`]).
pub fn parse_with(text: &str, path: &Path, sets: &[String]) -> Result<SafeConfig> {
    crate::run::parse_with_sets(text, path, sets, SafeConfig::from_toml)
}

/// Whether the config text is a Safe-EF-family config (its `[method].name`
/// is one of `efkit_core::safe::SAFE_METHOD_NAMES`).
pub fn is_safe_text(text: &str) -> bool {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let name = doc
        .get("method")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("");
    efkit_core::safe::SAFE_METHOD_NAMES.contains(&name)
}

/// Runs `cfg` in-process into `dir` (config.toml, metrics.jsonl,
/// summary.json, and checkpoints every `cfg.stop.checkpoint_every` rounds).
pub fn run(cfg: &SafeConfig, dir: &Path, force: bool) -> Result<(SafeSummary, Vec<SafeMetrics>)> {
    let mut prepared = prepare_safe(cfg).map_err(|e| UserError(e.to_string()))?;
    output::prepare_dir(dir, force)?;
    let stamp = ConfigStamp::of(cfg)?;
    output::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let lines = JsonLines::create(&dir.join("metrics.jsonl"))?;
    let mut rows = Vec::new();
    let summary = drive(
        &mut prepared.cluster,
        cfg,
        dir,
        lines,
        &mut rows,
        None,
        &stamp,
    )?;
    write_summary(dir, &summary, &rows, &prepared.info, &cfg.stop, None)?;
    Ok((summary, rows))
}

/// The rounds loop with metrics lines and checkpoints (shared by run and resume).
fn drive(
    cluster: &mut efkit_runtime::safe::SafeCluster,
    cfg: &SafeConfig,
    dir: &Path,
    mut lines: JsonLines,
    rows: &mut Vec<SafeMetrics>,
    resume: Option<f64>,
    stamp: &ConfigStamp,
) -> Result<SafeSummary> {
    let ck_path = dir.join(checkpoint::CHECKPOINT_FILE);
    let mut write_err = None;
    let summary = cluster.run_with(
        &safe_stop(cfg),
        resume,
        cfg.stop.checkpoint_every,
        |m| {
            if let Err(e) = lines.push(m) {
                write_err = Some(e);
                return Control::Interrupt;
            }
            rows.push(m.clone());
            if crate::run::INTERRUPTED.load(Ordering::SeqCst) {
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
                stamp,
            )
            .map_err(|e| e.to_string())
        },
    );
    if let Some(e) = write_err {
        return Err(e.context("writing metrics"));
    }
    Ok(summary)
}

/// Writes `summary.json`: status, rounds, the last logged metrics (the last
/// row of `rows` when the summary has none, e.g. a resumed run that had
/// nothing left to do), the message, the resolved setup, and `extra` (the
/// MPI backend adds its ranks and traffic), and the `[stop]` settings `stop`
/// the run ended under (what a resumption compares).
pub fn write_summary(
    dir: &Path,
    summary: &SafeSummary,
    rows: &[SafeMetrics],
    setup: &impl serde::Serialize,
    stop: &impl serde::Serialize,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let last = summary.last.as_ref().or(rows.last());
    let mut json = serde_json::json!({ "status": summary.status, "rounds": summary.rounds, "last": last, "message": summary.message, "setup": setup, "stop": crate::run::stop_record(stop) });
    if let Some((k, v)) = extra {
        json[k] = v;
    }
    output::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )
}

/// A resumed Safe-EF run (see [`crate::run::Resumed`]).
pub type Resumed = crate::run::Resumed<SafeConfig, SafeCheckpoint, SafeMetrics>;

/// Reads a Safe-EF run in `dir` for resumption (`Resumed::open`);
/// `config_text` is its `config.toml`, already read.
pub fn open_resumed(dir: &Path, config_text: &str) -> Result<Resumed> {
    let cfg = parse(config_text, &dir.join("config.toml"))?;
    let max_rounds = cfg.stop.max_rounds;
    Resumed::open(
        dir,
        cfg,
        max_rounds,
        |ck: &SafeCheckpoint| ck.safe.server.round,
        |m: &SafeMetrics| m.round,
    )
}

impl Resumed {
    /// Checks the checkpoint's state against `cluster` (built from the
    /// config) and restores it; returns the elapsed seconds of the
    /// interrupted run.
    pub fn restore(&mut self, cluster: &mut SafeCluster) -> Result<f64> {
        let ck_path = self.checkpoint_file();
        let state = std::mem::replace(
            &mut self.checkpoint.safe,
            SafeClusterState {
                server: Default::default(),
                workers: Vec::new(),
                elapsed: 0.0,
            },
        );
        checkpoint::check_safe_state(&state, cluster.n(), cluster.server.state.x.len())
            .map_err(|e| UserError(format!("{}: {e}", ck_path.display())))?;
        let elapsed = state.elapsed;
        cluster
            .restore(state)
            .map_err(|e| UserError(format!("checkpoint {}: {e}", ck_path.display())))?;
        Ok(elapsed)
    }
}

/// `efkit resume DIR` for a Safe-EF run (config text `config_text`), in-process.
pub fn cmd_resume(dir: &Path, config_text: &str) -> Result<u8> {
    let mut resumed = open_resumed(dir, config_text)?;
    let mut prepared = prepare_safe(&resumed.cfg).map_err(|e| UserError(e.to_string()))?;
    let elapsed = resumed.restore(&mut prepared.cluster)?;
    let (cfg, mut rows, lines, stamp) = resumed.commit()?;
    let summary = drive(
        &mut prepared.cluster,
        &cfg,
        dir,
        lines,
        &mut rows,
        Some(elapsed),
        &stamp,
    )?;
    write_summary(dir, &summary, &rows, &prepared.info, &cfg.stop, None)?;
    Ok(report(&cfg, &summary, dir, ""))
}

/// Prints the outcome; returns the exit code.
pub fn report(cfg: &SafeConfig, summary: &SafeSummary, dir: &Path, where_: &str) -> u8 {
    eprintln!(
        "{}: status {:?} after {} rounds{where_}; results in {}",
        cfg.method.name,
        summary.status,
        summary.rounds,
        dir.display()
    );
    if let Some(m) = &summary.message {
        eprintln!("{m}");
    }
    exit_code(summary.status)
}

/// The exit code of a finished run.
pub fn exit_code(s: Status) -> u8 {
    match s {
        Status::Diverged => EXIT_DIVERGED,
        Status::Interrupted => EXIT_INTERRUPTED,
        _ => 0,
    }
}
