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

use anyhow::{Context, Result};
use efkit_runtime::checkpoint::{self, SafeCheckpoint};
use efkit_runtime::safe::{prepare_safe, safe_stop, SafeConfig, SafeMetrics, SafeSummary};
use efkit_runtime::{Control, Status};

use crate::output::{self, JsonLines};
use crate::{UserError, EXIT_DIVERGED, EXIT_INTERRUPTED};

/// Parses a Safe-EF config (errors are [`UserError`]s naming the file).
pub fn parse(text: &str, path: &Path) -> Result<SafeConfig> {
    SafeConfig::from_toml(text)
        .map_err(|e| UserError(format!("config {}: {e}", path.display())).into())
}

/// Whether the config file `path` is a Safe-EF-family config (its
/// `[method].name` is one of `efkit_core::safe::SAFE_METHOD_NAMES`).
pub fn is_safe_config(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(doc) = toml::from_str::<toml::Table>(&text) else {
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
    output::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let lines = JsonLines::create(&dir.join("metrics.jsonl"))?;
    let mut rows = Vec::new();
    let summary = drive(&mut prepared.cluster, cfg, dir, lines, &mut rows, None)?;
    write_summary(dir, &summary, &rows, &prepared.info, None)?;
    Ok((summary, rows))
}

/// Reads the metrics lines of `path` with round <= `max_round` into `rows`.
pub fn read_rows(path: &Path, max_round: u64, rows: &mut Vec<SafeMetrics>) -> Result<()> {
    rows.clear();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: SafeMetrics = match serde_json::from_str(line) {
            Ok(m) => m,
            // a line cut by a kill is the last one: drop it
            Err(_) if i + 1 == count => break,
            Err(e) => {
                return Err(UserError(format!("{} line {}: {e}", path.display(), i + 1)).into())
            }
        };
        if m.round <= max_round {
            rows.push(m);
        }
    }
    Ok(())
}

/// The rounds loop with metrics lines and checkpoints (shared by run and resume).
fn drive(
    cluster: &mut efkit_runtime::safe::SafeCluster,
    cfg: &SafeConfig,
    dir: &Path,
    mut lines: JsonLines,
    rows: &mut Vec<SafeMetrics>,
    resume: Option<f64>,
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
            checkpoint::write_safe(
                &ck_path,
                &SafeCheckpoint {
                    safe: state.clone(),
                },
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
/// MPI backend adds its ranks and traffic).
pub fn write_summary(
    dir: &Path,
    summary: &SafeSummary,
    rows: &[SafeMetrics],
    setup: &impl serde::Serialize,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let last = summary.last.as_ref().or(rows.last());
    let mut json = serde_json::json!({ "status": summary.status, "rounds": summary.rounds, "last": last, "message": summary.message, "setup": setup });
    if let Some((k, v)) = extra {
        json[k] = v;
    }
    output::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )
}

/// What a resumed run starts from: the config, the checkpoint and the kept
/// metrics (`metrics.jsonl` rewritten with the lines up to the checkpoint's
/// round, later lines are redone).
pub struct Resumed {
    /// The run's config.
    pub cfg: SafeConfig,
    /// The checkpoint.
    pub checkpoint: SafeCheckpoint,
    /// The metrics lines kept.
    pub rows: Vec<SafeMetrics>,
    /// `metrics.jsonl`, open for appending after the kept lines.
    pub lines: JsonLines,
}

/// Reads `dir`'s config and checkpoint and trims its metrics (every problem
/// is a [`UserError`]).
pub fn open_resumed(dir: &Path) -> Result<Resumed> {
    let cfg_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| UserError(format!("cannot read config {}: {e}", cfg_path.display())))?;
    let cfg = parse(&text, &cfg_path)?;
    let ck_path = dir.join(checkpoint::CHECKPOINT_FILE);
    if !ck_path.exists() {
        return Err(UserError(format!(
            "{} has no checkpoint ({}); run with --checkpoint-every N to write one",
            dir.display(),
            ck_path.display()
        ))
        .into());
    }
    let checkpoint = checkpoint::read_safe(&ck_path).map_err(|e| UserError(e.to_string()))?;
    let metrics_path = dir.join("metrics.jsonl");
    let mut rows = Vec::new();
    read_rows(&metrics_path, checkpoint.safe.server.round, &mut rows)?;
    let mut lines = JsonLines::create_atomic(&metrics_path, &rows)?;
    lines.sync()?;
    Ok(Resumed {
        cfg,
        checkpoint,
        rows,
        lines,
    })
}

/// `efkit resume DIR` for a Safe-EF run, in-process.
pub fn cmd_resume(dir: &Path) -> Result<u8> {
    let Resumed {
        cfg,
        checkpoint,
        mut rows,
        lines,
    } = open_resumed(dir)?;
    let mut prepared = prepare_safe(&cfg).map_err(|e| UserError(e.to_string()))?;
    let elapsed = checkpoint.safe.elapsed;
    prepared.cluster.restore(checkpoint.safe).map_err(|e| {
        UserError(format!(
            "checkpoint {}: {e}",
            dir.join(checkpoint::CHECKPOINT_FILE).display()
        ))
    })?;
    let summary = drive(
        &mut prepared.cluster,
        &cfg,
        dir,
        lines,
        &mut rows,
        Some(elapsed),
    )?;
    write_summary(dir, &summary, &rows, &prepared.info, None)?;
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
