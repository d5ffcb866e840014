//! `efkit run`, `efkit plot`, `efkit data` and `efkit compressors`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use efkit_runtime::checkpoint::{self, ConfigStamp};
use efkit_runtime::config::Config;
use efkit_runtime::setup;
use efkit_runtime::{Control, RoundMetrics, Status, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::{self, JsonLines};
use crate::plot;
use crate::{UserError, XAxis, EXIT_DIVERGED, EXIT_INTERRUPTED};

/// The largest dimension `efkit compressors --dim` accepts (indices are u32).
pub const MAX_DIM: u64 = u32::MAX as u64;

/// Set by SIGINT/SIGTERM: the current round finishes, then the run stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn install_signal_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    });
}

/// Applies `key=value` overrides to a TOML document.
pub fn apply_overrides(doc: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, val) = s
            .split_once('=')
            .ok_or_else(|| UserError(format!("--set expects KEY=VALUE, got `{s}`")))?;
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {val}")) {
            // one value, nothing after it (a newline in VALUE could add
            // tables that would be dropped without a word)
            Ok(mut t) if t.len() == 1 => t.remove("v").expect("the one key"),
            Ok(_) => {
                return Err(UserError(format!(
                    "--set {}: `{val}` is more than one TOML value; give one value per --set",
                    key.trim()
                ))
                .into())
            }
            Err(_) if val.contains(['\n', '\r']) => {
                return Err(UserError(format!(
                    "--set {}: the value spans lines; give one value per --set",
                    key.trim()
                ))
                .into())
            }
            Err(_) => toml::Value::String(val.to_string()),
        };
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(UserError(format!("--set: bad key `{key}`")).into());
        }
        let mut table = &mut *doc;
        for p in &parts[..parts.len() - 1] {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| UserError(format!("--set: `{p}` in `{key}` is not a table")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

/// Reads a config file's text. Read it once and parse the text: a pipe,
/// `/dev/stdin` or a process substitution gives its content only once.
pub fn read_config_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| UserError(format!("cannot read config {}: {e}", path.display())).into())
}

/// Parses the text of the config file `path` with overrides; every problem
/// is a [`UserError`].
pub fn parse_config(text: &str, path: &Path, sets: &[String]) -> Result<Config> {
    parse_with_sets(text, path, sets, efkit_runtime::config::parse_with_hints)
}

/// Parses a config of either family from the text of the file `path` with
/// the `--set` overrides `sets`. Without overrides `plain` parses the file's
/// own text, so errors give its lines; with them the document is rebuilt,
/// and an error names the key instead of a line of the rebuilt text.
pub fn parse_with_sets<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    sets: &[String],
    plain: impl Fn(&str) -> Result<T, String>,
) -> Result<T> {
    if sets.is_empty() {
        return plain(text)
            .map_err(|e| UserError(format!("config {}: {e}", path.display())).into());
    }
    let mut doc: toml::Table =
        toml::from_str(text).map_err(|e| UserError(format!("config {}: {e}", path.display())))?;
    apply_overrides(&mut doc, sets)?;
    let rebuilt = toml::to_string(&doc)?;
    toml::from_str::<T>(&rebuilt).map_err(|e| {
        let msg = e.message();
        let at = e
            .span()
            .and_then(|sp| key_at(&rebuilt, sp.start))
            .map(|k| format!(", at `{k}`"))
            .unwrap_or_default();
        let hint = efkit_runtime::config::suggest(msg)
            .map(|h| format!("\nhint: did you mean `{h}`?"))
            .unwrap_or_default();
        UserError(format!(
            "config {} with the --set overrides{at}: {msg}{hint}",
            path.display()
        ))
        .into()
    })
}

/// The dotted key whose line holds byte `offset` of a TOML text written by
/// `toml::to_string` (`[a.b]` headers, `key = value` lines).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let head = text.get(..offset)?;
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?.trim();
    let header = |l: &str| {
        l.strip_prefix('[').map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_string()
        })
    };
    if let Some(h) = header(line) {
        return Some(h);
    }
    let key = line.split('=').next()?.trim().trim_matches('"');
    let section = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| header(l.trim()));
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// Options of one run.
pub struct RunOptions {
    /// No progress bar.
    pub quiet: bool,
    /// Overwrite an existing run.
    pub force: bool,
    /// Label used in plots.
    pub label: Option<String>,
}

/// Runs `cfg` into `out`; returns the summary. Used by `run` and `repro`.
pub fn run_config(cfg: &Config, out: &Path, opts: &RunOptions) -> Result<Summary> {
    install_signal_handler();
    let prepared = setup::prepare(cfg).map_err(|e| UserError(e.to_string()))?;
    output::prepare_dir(out, opts.force)?;
    let mut resolved = cfg.clone();
    resolved.step.value.get_or_insert(prepared.info.gamma);
    // the stamp of what config.toml holds, which a resumption compares
    let stamp = ConfigStamp::of(&resolved)?;
    output::write_atomic(&out.join("config.toml"), resolved.to_toml().as_bytes())?;
    let metrics = JsonLines::create(&out.join("metrics.jsonl"))?;
    drive(prepared, cfg, out, opts, metrics, Vec::new(), None, &stamp)
}

/// Whether the checkpoint of the run in `dir` can be resumed under the
/// config (stamp `now`, round limit `max_rounds`): it was taken under the
/// same config, the run is not finished, the round is plausible. Every
/// problem is a [`UserError`]; a checkpoint without a stamp (written by an
/// older efkit) is accepted with a note on stderr.
pub fn check_resumable(
    dir: &Path,
    stamp: Option<&ConfigStamp>,
    now: &ConfigStamp,
    round: u64,
    max_rounds: u64,
) -> Result<()> {
    let ck_path = dir.join(checkpoint::CHECKPOINT_FILE);
    let cfg_path = dir.join("config.toml");
    match stamp {
        Some(s) => {
            let changes = s.changes(now);
            if !changes.is_empty() {
                return Err(UserError(format!(
                    "{} does not match the config the checkpoint {} was taken under:\n  {}\nresuming would continue the old state under other settings; restore those keys (only [stop] and `threads` may change between a run and its resumption), or start a new run with `efkit run`",
                    cfg_path.display(),
                    ck_path.display(),
                    changes.join("\n  ")
                ))
                .into());
            }
        }
        None => eprintln!(
            "note: {} records no config (written by an older efkit); {} is assumed unchanged since the run started",
            ck_path.display(),
            cfg_path.display()
        ),
    }
    if round > checkpoint::MAX_ROUND {
        return Err(UserError(format!(
            "checkpoint {} is at round {round}, which no run reaches: the file was edited or damaged",
            ck_path.display()
        ))
        .into());
    }
    if round >= max_rounds {
        return Err(UserError(format!(
            "run already finished at round {round} (stop.max_rounds = {max_rounds} in {}); nothing to resume (raise stop.max_rounds to continue it)",
            cfg_path.display()
        ))
        .into());
    }
    Ok(())
}

/// The `[stop]` settings as `summary.json` records them: the stopping rules
/// only (`checkpoint_every` says when to save, not when to stop).
pub fn stop_record(stop: &impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(stop).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("checkpoint_every");
    }
    v
}

/// Refuses to resume a run that has ended (its `summary.json` gives a status
/// other than `interrupted`) under the `[stop]` settings `stop` it ended
/// under: resuming would redo its last rounds and overwrite its results for
/// nothing. After a change to `[stop]` (a higher round limit, a smaller
/// tolerance, a longer time limit) it continues. A summary written by an
/// older efkit records no `[stop]`: a note, and the run is resumed.
pub fn check_not_ended(dir: &Path, stop: &serde_json::Value) -> Result<()> {
    let path = dir.join("summary.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UserError(format!("cannot read {}: {e}", path.display())).into()),
    };
    let summary: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UserError(format!(
            "{} is not valid JSON ({e}), so whether the run ended is unknown; move it aside to resume",
            path.display()
        ))
    })?;
    let status = summary.get("status").and_then(|s| s.as_str()).unwrap_or("");
    if status == "interrupted" {
        return Ok(());
    }
    match summary.get("stop") {
        Some(ended_under) if ended_under == stop => Err(UserError(format!(
            "the run in {} already ended (status {status} after {} rounds, {}) under the [stop] settings config.toml still has; nothing to resume: change [stop] in config.toml (e.g. raise stop.max_rounds, lower stop.tol or raise stop.time_limit) to continue it",
            dir.display(),
            summary.get("rounds").map_or("?".to_string(), |r| r.to_string()),
            path.display()
        ))
        .into()),
        Some(_) => Ok(()),
        None => {
            eprintln!(
                "note: {} (status {status}) records no [stop] settings (written by an older efkit); resuming from the checkpoint",
                path.display()
            );
            Ok(())
        }
    }
}

/// Refuses a resumption whose kept metrics rows (rounds `rounds`, for a
/// checkpoint at round `checkpoint`) miss rounds: the file is gone, does not
/// start at round 0, or ends more than a logging interval before the
/// checkpoint. The resumed run would write its rows after the gap without
/// saying so. The interval is the larger of `log_every` and the widest step
/// between kept rows (`[stop].log_every` may have changed since they were
/// written).
pub fn check_rows_reach(
    path: &Path,
    rounds: &[u64],
    checkpoint: u64,
    log_every: u64,
) -> Result<()> {
    let missing = |what: String| -> Result<()> {
        Err(UserError(format!(
            "{} {what}, but the checkpoint is at round {checkpoint}: the resumed run's metrics would have a gap; restore the file or start a new run with `efkit run`",
            path.display()
        ))
        .into())
    };
    let (Some(&first), Some(&last)) = (rounds.first(), rounds.last()) else {
        return missing(if path.exists() {
            "holds no rows up to the checkpoint".to_string()
        } else {
            "is missing".to_string()
        });
    };
    if first != 0 {
        return missing(format!("starts at round {first}, not 0"));
    }
    let widest = rounds
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    if last.saturating_add(log_every.max(widest)) <= checkpoint {
        return missing(format!("ends at round {last}"));
    }
    Ok(())
}

/// The checkpoint file of `dir`, or a [`UserError`] saying how to get one.
pub fn checkpoint_path(dir: &Path) -> Result<PathBuf> {
    let ck_path = dir.join(checkpoint::CHECKPOINT_FILE);
    if !ck_path.exists() {
        return Err(UserError(format!(
            "{} has no checkpoint ({}); run with --checkpoint-every N to write one",
            dir.display(),
            ck_path.display()
        ))
        .into());
    }
    Ok(ck_path)
}

/// What a resumed run starts from (either family: config `C`, checkpoint
/// `K`, metrics rows `R`): the config, the checkpoint and the metrics lines
/// up to the checkpoint's round. Nothing in the run directory has changed
/// yet: `restore` (one per family) checks the state against the cluster built
/// from the config and restores it, and only then [`Resumed::commit`]
/// rewrites `metrics.jsonl` (a resumption that fails before leaves every
/// file as it was).
pub struct Resumed<C, K, R> {
    /// The run's config.
    pub cfg: C,
    /// The checkpoint.
    pub checkpoint: K,
    /// The metrics lines kept (and a note when a cut last line was dropped).
    pub kept: output::KeptRows<R>,
    /// The stamp of `cfg`, for the checkpoints of the continuation.
    pub stamp: ConfigStamp,
    dir: PathBuf,
}

/// A resumed EF21-family run.
pub type Ef21Resumed = Resumed<Config, checkpoint::Checkpoint, RoundMetrics>;

impl<C, K, R> Resumed<C, K, R>
where
    C: serde::Serialize,
    K: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned + serde::Serialize,
{
    /// Reads `dir`'s checkpoint and metrics for the parsed config `cfg` and
    /// checks that the checkpoint can be resumed under it (every problem is
    /// a [`UserError`]); writes nothing. `round_of` gives a checkpoint's
    /// round, `row_round` a metrics row's. Used by both backends.
    pub fn open(
        dir: &Path,
        cfg: C,
        max_rounds: u64,
        round_of: impl Fn(&K) -> u64,
        row_round: impl Fn(&R) -> u64,
    ) -> Result<Self> {
        let ck_path = checkpoint_path(dir)?;
        let (checkpoint, stamp): (K, _) =
            checkpoint::read_stamped(&ck_path).map_err(|e| UserError(e.to_string()))?;
        let now = ConfigStamp::of(&cfg)?;
        let round = round_of(&checkpoint);
        check_resumable(dir, stamp.as_ref(), &now, round, max_rounds)?;
        let stop = serde_json::to_value(&cfg)?
            .get("stop")
            .cloned()
            .unwrap_or_default();
        check_not_ended(dir, &stop_record(&stop))?;
        // keep the metrics up to the checkpoint's round; later lines are redone
        let metrics_path = dir.join("metrics.jsonl");
        let kept = output::read_rows(&metrics_path, round, &row_round)?;
        let log_every = stop.get("log_every").and_then(|v| v.as_u64()).unwrap_or(1);
        let rounds: Vec<u64> = kept.rows.iter().map(&row_round).collect();
        check_rows_reach(&metrics_path, &rounds, round, log_every)?;
        Ok(Resumed {
            cfg,
            checkpoint,
            kept,
            stamp: now,
            dir: dir.to_path_buf(),
        })
    }

    /// The checkpoint file, for messages.
    pub(crate) fn checkpoint_file(&self) -> PathBuf {
        self.dir.join(checkpoint::CHECKPOINT_FILE)
    }

    /// Rewrites `metrics.jsonl` with the kept lines (later lines are redone)
    /// and opens it for appending; call once everything is validated.
    pub fn commit(self) -> Result<(C, Vec<R>, JsonLines, ConfigStamp)> {
        let metrics = output::rewrite_kept(&self.dir.join("metrics.jsonl"), &self.kept)?;
        Ok((self.cfg, self.kept.rows, metrics, self.stamp))
    }
}

/// Reads an EF21-family run in `dir` for resumption ([`Resumed::open`]);
/// `config_text` is its `config.toml`, already read.
pub fn open_resumed(dir: &Path, config_text: &str) -> Result<Ef21Resumed> {
    let cfg = parse_config(config_text, &dir.join("config.toml"), &[])?;
    let max_rounds = cfg.stop.max_rounds;
    Resumed::open(
        dir,
        cfg,
        max_rounds,
        |ck: &checkpoint::Checkpoint| ck.state.server.round,
        |m: &RoundMetrics| m.round,
    )
}

impl Ef21Resumed {
    /// Checks the checkpoint's state against `cluster` (built from the
    /// config: its dimension, worker count and method) and restores it;
    /// returns the initial loss and elapsed seconds of the interrupted run.
    pub fn restore(&mut self, cluster: &mut efkit_runtime::Cluster) -> Result<(f64, f64)> {
        let ck_path = self.checkpoint_file();
        let state = std::mem::replace(
            &mut self.checkpoint.state,
            efkit_runtime::ClusterState {
                server: Default::default(),
                workers: Vec::new(),
                participations: 0,
                last_participants: 0,
                initial_loss: 0.0,
                elapsed: 0.0,
            },
        );
        let d = cluster.server.state.x.len();
        checkpoint::check_state(&state, cluster.n(), d, &cluster.parts)
            .map_err(|e| UserError(format!("{}: {e}", ck_path.display())))?;
        let resume = (state.initial_loss, state.elapsed);
        cluster
            .restore(state)
            .map_err(|e| UserError(format!("checkpoint {}: {e}", ck_path.display())))?;
        Ok(resume)
    }
}

/// `efkit resume DIR`: continues a run from its checkpoint.
pub fn cmd_resume(dir: &Path, quiet: bool) -> Result<u8> {
    install_signal_handler();
    let text = read_config_text(&dir.join("config.toml"))?;
    if crate::run_safe::is_safe_text(&text) {
        return crate::run_safe::cmd_resume(dir, &text);
    }
    let mut resumed = open_resumed(dir, &text)?;
    let mut prepared = setup::prepare(&resumed.cfg).map_err(|e| UserError(e.to_string()))?;
    let (initial_loss, elapsed) = resumed.restore(&mut prepared.cluster)?;
    let (cfg, rows, metrics, stamp) = resumed.commit()?;
    let opts = RunOptions {
        quiet,
        force: true,
        label: None,
    };
    let summary = drive(
        prepared,
        &cfg,
        dir,
        &opts,
        metrics,
        rows,
        Some((initial_loss, elapsed)),
        &stamp,
    )?;
    report(&cfg, &summary, dir);
    Ok(exit_code(&summary))
}

#[allow(clippy::too_many_arguments)]
fn drive(
    prepared: setup::Prepared,
    cfg: &Config,
    out: &Path,
    opts: &RunOptions,
    mut metrics: JsonLines,
    mut rows: Vec<RoundMetrics>,
    resume: Option<(f64, f64)>,
    stamp: &ConfigStamp,
) -> Result<Summary> {
    let mut cluster = prepared.cluster;
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
                .unwrap_or_else(|| cfg.method.name.clone()),
        );
        pb
    };
    let mut write_err: Option<anyhow::Error> = None;
    let rules = setup::stop_rules(cfg);
    let ck_path = out.join(checkpoint::CHECKPOINT_FILE);
    let summary = cluster.run_with(
        &rules,
        resume,
        cfg.stop.checkpoint_every,
        |m| {
            if let Err(e) = metrics.push(m) {
                write_err = Some(e);
                return Control::Interrupt;
            }
            pb.set_position(m.round);
            pb.set_message(match m.test_accuracy {
                Some(a) => format!("|grad|^2 = {:.3e}, test accuracy {a:.4}", m.grad_norm_sq),
                None => format!("|grad|^2 = {:.3e}", m.grad_norm_sq),
            });
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
                stamp,
            )
            .map_err(|e| e.to_string())
        },
    );
    pb.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e.context("writing metrics"));
    }
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("{} {}", cfg.method.name, prepared.info.compressor));
    write_outputs(cfg, out, &summary, &prepared.info, &rows, &label, None, "")?;
    Ok(summary)
}

/// Writes `summary.json` (with `extra` merged in) and the plot of a finished run.
#[allow(clippy::too_many_arguments)]
pub fn write_outputs(
    cfg: &Config,
    out: &Path,
    summary: &Summary,
    info: &setup::SetupInfo,
    rows: &[RoundMetrics],
    label: &str,
    extra: Option<(&str, serde_json::Value)>,
    title_suffix: &str,
) -> Result<()> {
    let last = summary.last.as_ref();
    let mut json = serde_json::json!({
        "status": summary.status,
        "rounds": summary.rounds,
        "loss": last.map(|m| m.loss),
        "grad_norm_sq": last.map(|m| m.grad_norm_sq),
        "bits_up_wire": last.map(|m| m.bits_up_wire),
        "bits_up_paper": last.map(|m| m.bits_up_paper),
        "bits_down_wire": last.map(|m| m.bits_down_wire),
        "bits_down_paper": last.map(|m| m.bits_down_paper),
        "epochs": last.map(|m| m.epochs),
        "seconds": last.map(|m| m.seconds),
        "message": summary.message,
        "setup": info,
        // what a resumption compares (see `check_not_ended`)
        "stop": stop_record(&cfg.stop),
    });
    if let Some(acc) = last.and_then(|m| m.test_accuracy) {
        json["test_accuracy"] = acc.into();
    }
    if let Some((k, v)) = extra {
        json[k] = v;
    }
    output::write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let series = plot::Series {
        label: label.to_string(),
        x: rows.iter().map(|m| m.bits_up_wire).collect(),
        y: rows.iter().map(|m| m.grad_norm_sq).collect(),
        band: None,
    };
    let panel = plot::Panel {
        title: format!(
            "{} on {} (n = {}{title_suffix})",
            cfg.method.name, cfg.problem.dataset, cfg.problem.workers
        ),
        x_label: "#bits/n (uplink, wire)".into(),
        y_label: "||grad f(x)||^2".into(),
        log_x: false,
        log_y: true,
        series: vec![series],
    };
    plot::render(&[panel], 1, &out.join("grad_norm_vs_bits")).context("rendering the plot")?;
    Ok(())
}

fn report(cfg: &Config, summary: &Summary, out: &Path) {
    let last = summary.last.as_ref();
    eprintln!(
        "{}: status {:?} after {} rounds, ||grad f||^2 = {:.3e}, uplink {:.3e} bits/worker; results in {}",
        cfg.method.name,
        summary.status,
        summary.rounds,
        last.map_or(f64::NAN, |m| m.grad_norm_sq),
        last.map_or(f64::NAN, |m| m.bits_up_wire),
        out.display()
    );
    if let Some(acc) = last.and_then(|m| m.test_accuracy) {
        eprintln!("test accuracy {acc:.4}");
    }
    if let Some(msg) = &summary.message {
        eprintln!("{msg}");
    }
}

/// Exit code for a finished run.
pub fn exit_code(s: &Summary) -> u8 {
    match s.status {
        Status::Diverged => EXIT_DIVERGED,
        Status::Interrupted => EXIT_INTERRUPTED,
        _ => 0,
    }
}

/// `efkit run`.
#[allow(clippy::too_many_arguments)]
pub fn cmd_run(
    config: &Path,
    out: Option<PathBuf>,
    force: bool,
    sets: &[String],
    threads: Option<usize>,
    checkpoint_every: Option<u64>,
    quiet: bool,
) -> Result<u8> {
    let text = read_config_text(config)?;
    if safe_method_doc(&text, sets)?.is_some() {
        let cfg = crate::run_safe::parse_with(&text, config, sets)?;
        return cmd_run_safe(cfg, out, force, threads, checkpoint_every);
    }
    let mut cfg = parse_config(&text, config, sets)?;
    if let Some(t) = threads {
        cfg.threads = t;
    }
    if checkpoint_every.is_some() {
        cfg.stop.checkpoint_every = checkpoint_every;
    }
    let out = out.unwrap_or_else(|| output::fresh_dir(&cfg.method.name));
    let summary = run_config(
        &cfg,
        &out,
        &RunOptions {
            quiet,
            force,
            label: None,
        },
    )?;
    report(&cfg, &summary, &out);
    Ok(exit_code(&summary))
}

/// The config document (with overrides) when the config text's method is a
/// Safe-EF-family method (constrained problems have their own config schema).
pub fn safe_method_doc(text: &str, sets: &[String]) -> Result<Option<toml::Table>> {
    let Ok(mut doc) = toml::from_str::<toml::Table>(text) else {
        return Ok(None);
    };
    apply_overrides(&mut doc, sets)?;
    let name = doc
        .get("method")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("");
    Ok(efkit_core::safe::SAFE_METHOD_NAMES
        .contains(&name)
        .then_some(doc))
}

/// `efkit run` for a Safe-EF-family config (see docs/safe-ef.md).
fn cmd_run_safe(
    mut cfg: efkit_runtime::safe::SafeConfig,
    out: Option<PathBuf>,
    force: bool,
    threads: Option<usize>,
    checkpoint_every: Option<u64>,
) -> Result<u8> {
    if let Some(t) = threads {
        cfg.threads = t;
    }
    if checkpoint_every.is_some() {
        cfg.stop.checkpoint_every = checkpoint_every;
    }
    let out = out.unwrap_or_else(|| output::fresh_dir(&cfg.method.name));
    install_signal_handler();
    let (summary, _) = crate::run_safe::run(&cfg, &out, force)?;
    Ok(crate::run_safe::report(&cfg, &summary, &out, ""))
}

/// `efkit plot`. Bad input is refused before anything is drawn: an `--out`
/// that is a directory (it is a file stem), an unwritable place, a run
/// without metrics rows, or an axis key with no numeric value in a run (the
/// error lists the keys that have some).
pub fn cmd_plot(dirs: &[PathBuf], x: XAxis, y: &str, out: &Path) -> Result<u8> {
    let (xk, xl) = x.key();
    // the extensions are appended to the stem: `p/` or `p/.` would write
    // `p/.svg` or `p/..svg`, hidden files no one asked for
    let raw = out.as_os_str().to_string_lossy();
    let last = raw
        .rsplit(['/', std::path::MAIN_SEPARATOR])
        .next()
        .unwrap_or("");
    if matches!(last, "" | "." | "..") {
        return Err(UserError(format!(
            "--out {}: expected a file stem (writes STEM.svg and STEM.png), not a directory; e.g. --out {}",
            out.display(),
            Path::new(raw.trim_end_matches(['/', std::path::MAIN_SEPARATOR])).join("plot").display()
        ))
        .into());
    }
    let mut series = Vec::new();
    for d in dirs {
        let path = d.join("metrics.jsonl");
        let rows = plot::read_metrics(&path).map_err(|e| UserError(format!("{e:#}")))?;
        if rows.is_empty() {
            return Err(UserError(format!("{} has no metrics rows", path.display())).into());
        }
        for key in [xk, y] {
            if !rows.iter().any(|r| plot::lookup_f64(r, key).is_some()) {
                return Err(UserError(format!(
                    "{}: no numeric values of `{key}`; keys with numeric values: {}",
                    path.display(),
                    numeric_keys(&rows).join(", ")
                ))
                .into());
            }
        }
        let label = d
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| d.display().to_string());
        let s = plot::series_from_metrics(&rows, xk, y, &label);
        // the y axis is logarithmic: a series with nothing positive draws nothing
        if !s.y.iter().any(|v| v.is_finite() && *v > 0.0) {
            return Err(UserError(format!(
                "{}: no row has both a `{xk}` value and a positive `{y}` value to draw on the log y axis",
                path.display()
            ))
            .into());
        }
        series.push(s);
    }
    // an unwritable place is the user's to fix: refuse it by name
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        output::ensure_writable_dir(parent, "plot directory")?;
    } else {
        output::ensure_writable_dir(Path::new("."), "plot directory")?;
    }
    let panel = plot::Panel {
        title: String::new(),
        x_label: xl.into(),
        y_label: y.into(),
        log_x: false,
        log_y: true,
        series,
    };
    let (svg, png) = plot::render(&[panel], 1, out)?;
    println!("{}\n{}", svg.display(), png.display());
    Ok(0)
}

/// The top-level keys of `rows` that hold a number in some row (sorted).
fn numeric_keys(rows: &[serde_json::Value]) -> Vec<String> {
    let mut keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, _)| k.clone())
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `efkit data list`.
pub fn cmd_data_list() -> Result<u8> {
    println!(
        "{:<12} {:>8} {:>9} {:>10}  description",
        "name", "rows", "features", "nnz"
    );
    for d in efkit_problems::datasets::list() {
        let info =
            efkit_problems::datasets::inspect(d.name).map_err(|e| UserError(e.to_string()))?;
        println!(
            "{:<12} {:>8} {:>9} {:>10}  {}",
            d.name, info.rows, info.features, info.nnz, d.description
        );
    }
    Ok(0)
}

/// `efkit data inspect`.
pub fn cmd_data_inspect(name: &str) -> Result<u8> {
    let info = efkit_problems::datasets::inspect(name).map_err(|e| UserError(e.to_string()))?;
    println!("{info}");
    Ok(0)
}

/// `efkit methods`: every preset with its `[method]` keys.
pub fn cmd_methods() -> Result<u8> {
    let keys = |p: &efkit_core::method::Preset| {
        let mut k: Vec<String> = p
            .required
            .iter()
            .map(|k| format!("{k} (required)"))
            .collect();
        k.extend(p.optional.iter().map(|k| k.to_string()));
        if k.is_empty() {
            "-".to_string()
        } else {
            k.join(", ")
        }
    };
    println!("EF21 family (any [compressor]; every preset also reads `init`):");
    for p in efkit_core::method::PRESETS {
        println!("  {:<16} {}", p.name, p.summary);
        println!("  {:<16}   keys: {}", "", keys(p));
    }
    println!("Safe-EF family (constrained problems: neyman-pearson, l1-regression):");
    for p in efkit_core::safe::SAFE_PRESETS {
        println!("  {:<16} {}", p.name, p.summary);
        println!("  {:<16}   keys: {}", "", keys(p));
    }
    Ok(0)
}

/// `efkit compressors`: the catalogue for dimension `dim`.
pub fn cmd_compressors(dim: u64) -> Result<u8> {
    // indices travel as u32: a larger d has no compressor, and a huge one
    // would only make the constants' computation crawl
    let dim = match usize::try_from(dim) {
        Ok(d) if (1..=MAX_DIM).contains(&dim) => d,
        _ => {
            return Err(UserError(format!(
                "--dim {dim}: the dimension must be between 1 and {MAX_DIM}"
            ))
            .into())
        }
    };
    println!("compressor catalogue for d = {dim}");
    println!(
        "{:<20} {:<12} {:>14}  description",
        "name", "class", "constant"
    );
    for (name, desc, class) in efkit_core::compress::catalogue(dim) {
        let (cls, c) = match class {
            efkit_core::compress::CompressorClass::Contractive { alpha } => {
                ("contractive", format!("alpha={alpha:.4e}"))
            }
            efkit_core::compress::CompressorClass::Unbiased { omega } => {
                ("unbiased", format!("omega={omega:.4e}"))
            }
            efkit_core::compress::CompressorClass::Absolute { delta2 } => {
                ("absolute", format!("delta2={delta2:.3e}"))
            }
        };
        println!("{name:<20} {cls:<12} {c:>14}  {desc}");
    }
    Ok(0)
}
