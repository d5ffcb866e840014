//! Run directories: never lose results.
//!
//! A run directory holds `config.toml`, `metrics.jsonl`, `summary.json` and the
//! plots. `efkit run` refuses a directory that already holds a run unless
//! `--force` is given. Whole files are written to a temporary name in the same
//! directory and renamed, so a crash leaves either the old file or the complete
//! new one; `metrics.jsonl` is appended one complete line at a time and flushed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Files that mark a directory as holding a run.
pub const RUN_FILES: &[&str] = &["metrics.jsonl", "summary.json", "config.toml"];

/// Writes `data` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all().ok();
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Whether `dir` already holds a run.
pub fn holds_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).exists())
}

/// Creates `dir` (and its parents) and checks that files can be created in
/// it: an output directory that cannot be written is the user's to fix (a
/// [`crate::UserError`] naming it), found before any work starts.
pub fn ensure_writable_dir(dir: &Path, what: &str) -> Result<()> {
    let user = |e: std::io::Error| {
        crate::UserError(format!("cannot create {what} {}: {e}", dir.display()))
    };
    fs::create_dir_all(dir).map_err(user)?;
    let probe = dir.join(format!(".efkit-write-test.{}", std::process::id()));
    File::create(&probe)
        .map_err(|e| crate::UserError(format!("{what} {} is not writable: {e}", dir.display())))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Prepares the output directory: creates it, refuses an existing run unless
/// `force` (then removes the old run files).
pub fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    if holds_run(dir) {
        if !force {
            bail!(crate::UserError(format!(
                "output directory {} already holds a run; use --force to overwrite it or choose another --out",
                dir.display()
            )));
        }
        let files: Vec<PathBuf> = RUN_FILES
            .iter()
            .chain(
                [
                    "grad_norm_vs_bits.svg",
                    "grad_norm_vs_bits.png",
                    "checkpoint.json",
                ]
                .iter(),
            )
            .map(|f| dir.join(f))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        // all or nothing: a path that cannot be removed as a file is found
        // before any result is (otherwise the run would fail half-deleted)
        if let Some(p) = files
            .iter()
            .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
        {
            bail!(crate::UserError(format!(
                "cannot overwrite the run in {}: {} is a directory, not a file; move it away (nothing was removed)",
                dir.display(),
                p.display()
            )));
        }
        for p in &files {
            fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    ensure_writable_dir(dir, "output directory")
}

/// A fresh timestamped directory under `runs/`.
pub fn fresh_dir(tag: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = PathBuf::from("runs");
    let mut i = 0;
    loop {
        let p = base.join(if i == 0 {
            format!("{secs}-{tag}")
        } else {
            format!("{secs}-{tag}-{i}")
        });
        if !p.exists() {
            return p;
        }
        i += 1;
    }
}

/// Appends JSON lines, one complete line per write, flushed.
pub struct JsonLines {
    file: File,
}

impl JsonLines {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(JsonLines { file })
    }

    /// Rewrites the file atomically with `rows`, then opens it for appending.
    pub fn create_atomic<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<Self> {
        let mut buf = Vec::new();
        for r in rows {
            buf.extend_from_slice(serde_json::to_string(r)?.as_bytes());
            buf.push(b'\n');
        }
        write_atomic(path, &buf)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(JsonLines { file })
    }

    /// Flushes to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_all()?;
        Ok(())
    }

    /// Appends one value as a line.
    pub fn push<T: serde::Serialize>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_string(v)?;
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        Ok(())
    }
}

/// The rows of a run's `metrics.jsonl` kept by a resumption: every
/// well-formed line up to the checkpoint's round (later lines are redone).
pub struct KeptRows<T> {
    /// The rows, in file order.
    pub rows: Vec<T>,
    /// A note for stderr when the last line was cut (what a kill can leave)
    /// and is dropped.
    pub note: Option<String>,
}

/// Reads the metrics lines of `path` with `round(row) <= max_round`, for
/// both method families. A missing file gives no rows. The last line may be
/// cut by a kill: it is dropped (with a note). Any other line that does not
/// parse is a [`crate::UserError`] naming it: dropping it, or the lines after
/// it, would lose results, so the file is left for the user to repair.
pub fn read_rows<T: serde::de::DeserializeOwned>(
    path: &Path,
    max_round: u64,
    round: impl Fn(&T) -> u64,
) -> Result<KeptRows<T>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KeptRows {
                rows: Vec::new(),
                note: None,
            })
        }
        Err(e) => bail!(crate::UserError(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    };
    let last = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, _)| i)
        .last();
    let mut rows = Vec::new();
    let mut note = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(m) => {
                if round(&m) <= max_round {
                    rows.push(m);
                }
            }
            Err(e) if Some(i) == last => {
                note = Some(format!(
                    "note: {} line {} is incomplete ({e}), probably cut by a kill; it is dropped",
                    path.display(),
                    i + 1
                ));
            }
            Err(e) => bail!(crate::UserError(format!(
                "{} line {}: {e}; repair or delete that line, then resume again (nothing was changed)",
                path.display(),
                i + 1
            ))),
        }
    }
    Ok(KeptRows { rows, note })
}

/// Rewrites `path` atomically with the kept rows of a resumption (printing
/// the note on a dropped last line) and opens it for appending.
pub fn rewrite_kept<T: serde::Serialize>(path: &Path, kept: &KeptRows<T>) -> Result<JsonLines> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_writable_dir(dir, "run directory")?;
    }
    let mut lines = JsonLines::create_atomic(path, &kept.rows)?;
    lines.sync()?;
    if let Some(note) = &kept.note {
        eprintln!("{note}");
    }
    Ok(lines)
}
