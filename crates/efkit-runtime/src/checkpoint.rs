//! Checkpoints: the full cluster state, written atomically with a checksum.
//!
//! File format: one header line `efkit-checkpoint <version> fnv1a64=<16 hex
//! digits> bytes=<payload length>` followed by the JSON payload: `{"state": ...}`
//! ([`Checkpoint`], a [`ClusterState`]) for the EF21 family, `{"safe": ...}`
//! ([`SafeCheckpoint`], a [`SafeClusterState`]) for the Safe-EF family. Both
//! backends (in-process and MPI) write the same file for the same run, so
//! either can resume it. The state's vectors are written as base64 strings
//! of their little-endian bytes (`efkit_core::compact`; version 2), about
//! half the size of decimal numbers and much faster to write and read; every
//! value round-trips bit for bit, so a resumed run continues bit for bit.
//! Version-1 files (vectors as decimal arrays, also exact) still load, and
//! a restored model downlink is re-encoded from the model it carries
//! (`Server::reencode_model_downlink`: files written before the model
//! message put its values on the byte grid hold the older layout).
//! The file is written to a temporary name and renamed, so a crash leaves the
//! previous checkpoint or the complete new one; a damaged file is detected by
//! its checksum and refused.
//!
//! A checksum only proves that the file is the one written, not that it fits
//! the run it is resumed into: the payload may also carry a `"config"` key, a
//! [`ConfigStamp`] of the resolved config ([`write_stamped`]), so that a
//! resumption under an edited config is refused by name; [`check_state`] and
//! [`check_safe_state`] check every vector of a restored state against the
//! config's dimension and worker count (a hand-edited, re-checksummed file
//! must give an error, not a panic mid-round). The key is optional (files
//! written before it existed have none, and older builds ignore it), so the
//! format version stays 2.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use efkit_core::compress::CompressedVec;
use efkit_core::method::{DownlinkMode, Estimator, Feedback, Parts, ServerStep};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::ClusterState;
use crate::safe::SafeClusterState;

/// The checkpoint file name inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

const MAGIC: &str = "efkit-checkpoint";
/// The version written; [`read_payload`] reads this one and the ones in
/// [`READABLE`].
const VERSION: u32 = 2;
/// Versions this build reads (1: vectors as decimal arrays).
const READABLE: &[&str] = &["1", "2"];

/// A checkpoint could not be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// File system error.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged or not a checkpoint.
    #[error("checkpoint {path} is corrupted: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cluster state.
    pub state: ClusterState,
}

/// What a Safe-EF checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeCheckpoint {
    /// The Safe-EF cluster state.
    pub safe: SafeClusterState,
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes `ck` to `path` atomically.
pub fn write(path: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    write_payload(path, ck)
}

/// Reads and verifies a checkpoint.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    read_payload(path)
}

/// Writes a Safe-EF checkpoint to `path` atomically.
pub fn write_safe(path: &Path, ck: &SafeCheckpoint) -> Result<(), CheckpointError> {
    write_payload(path, ck)
}

/// Reads and verifies a Safe-EF checkpoint.
pub fn read_safe(path: &Path) -> Result<SafeCheckpoint, CheckpointError> {
    read_payload(path)
}

/// Writes `ck` (a [`Checkpoint`] or [`SafeCheckpoint`]) to `path` atomically
/// with the stamp of the config it was taken under, under the payload key
/// `"config"` ([`read_stamped`] gives it back).
pub fn write_stamped<T: Serialize>(
    path: &Path,
    ck: &T,
    stamp: &ConfigStamp,
) -> Result<(), CheckpointError> {
    #[derive(Serialize)]
    struct Stamped<'a, T> {
        #[serde(flatten)]
        ck: &'a T,
        config: &'a ConfigStamp,
    }
    write_payload(path, &Stamped { ck, config: stamp })
}

/// Reads and verifies a checkpoint ([`Checkpoint`] or [`SafeCheckpoint`])
/// and the config stamp it carries (`None` for files written without one).
pub fn read_stamped<T: DeserializeOwned>(
    path: &Path,
) -> Result<(T, Option<ConfigStamp>), CheckpointError> {
    #[derive(Deserialize)]
    struct StampOnly {
        #[serde(default)]
        config: Option<ConfigStamp>,
    }
    let (bytes, start) = verified(path)?;
    let payload = &bytes[start..];
    let corrupt = |e: serde_json::Error| CheckpointError::Corrupt {
        path: path.display().to_string(),
        reason: format!("bad payload: {e}"),
    };
    // two passes: the state types ignore the extra key, and the stamp pass
    // skips the state without building it
    let stamp: StampOnly = serde_json::from_slice(payload).map_err(corrupt)?;
    let ck: T = serde_json::from_slice(payload).map_err(corrupt)?;
    Ok((ck, stamp.config))
}

/// The settings of the run a checkpoint belongs to: every leaf of the
/// resolved config as a dotted key (`method.name`, `problem.workers`) and
/// its value as inline TOML, except the keys in [`RESUMABLE_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigStamp(pub BTreeMap<String, String>);

/// Top-level config keys that may change between a run and its resumption:
/// they do not change the iterates (`stop` extends or shortens the run,
/// `threads` only the speed).
pub const RESUMABLE_KEYS: &[&str] = &["stop", "threads"];

/// The stamp key of the contents of a dataset given as a file path.
pub const DATA_FILE_KEY: &str = "problem.dataset (file contents)";

/// Size and FNV-1a hash of the dataset file `name` (`None` for a bundled
/// dataset's name, or a path that cannot be read: setup reports that).
fn data_file_fingerprint(name: &str) -> Option<String> {
    if efkit_problems::datasets::bundled(name).is_some() {
        return None;
    }
    let bytes = std::fs::read(name).ok()?;
    Some(format!(
        "{} bytes, fnv1a64 {:016x}",
        bytes.len(),
        fnv1a64(&bytes)
    ))
}

/// A config could not be turned into a [`ConfigStamp`].
#[derive(Debug, Error)]
#[error("cannot fingerprint the config: {0}")]
pub struct StampError(String);

impl ConfigStamp {
    /// The stamp of a config (`Config`, `SafeConfig`), taken from its TOML
    /// form: what `config.toml` holds, so a file written by a run and read
    /// back gives the same stamp (floats round-trip exactly).
    pub fn of<C: Serialize>(cfg: &C) -> Result<Self, StampError> {
        let text = toml::to_string(cfg).map_err(|e| StampError(e.to_string()))?;
        let table: toml::Table = text.parse().map_err(|e| StampError(format!("{e}")))?;
        let dataset = table
            .get("problem")
            .and_then(|p| p.get("dataset"))
            .and_then(|d| d.as_str())
            .map(str::to_owned);
        let mut out = BTreeMap::new();
        for (k, v) in table {
            if !RESUMABLE_KEYS.contains(&k.as_str()) {
                flatten(k, v, &mut out);
            }
        }
        // a dataset read from a file: its contents are part of the run (the
        // path may hold other data, or name another file from another
        // directory, when the run is resumed)
        if let Some(fp) = dataset.as_deref().and_then(data_file_fingerprint) {
            out.insert(DATA_FILE_KEY.to_string(), fp);
        }
        Ok(ConfigStamp(out))
    }

    /// What differs between `self` (the checkpoint's) and `now` (the config
    /// it is resumed with), one entry per key:
    /// `method.name = "ef21" in the checkpoint, "ef14" in the config`.
    pub fn changes(&self, now: &ConfigStamp) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(now.0.keys()).collect();
        let show = |v: Option<&String>| v.map_or("absent".to_string(), |v| v.clone());
        keys.into_iter()
            .filter(|k| self.0.get(*k) != now.0.get(*k))
            // checkpoints written before the data fingerprint have none
            .filter(|k| k.as_str() != DATA_FILE_KEY || self.0.contains_key(*k))
            .map(|k| {
                format!(
                    "{k} = {} in the checkpoint, {} in the config",
                    show(self.0.get(k)),
                    show(now.0.get(k))
                )
            })
            .collect()
    }
}

fn flatten(key: String, v: toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(format!("{key}.{k}"), v, out);
            }
        }
        v => {
            out.insert(key, v.to_string());
        }
    }
}

/// A checkpoint's state does not fit the run it is resumed into (wrong
/// dimension, worker count, or a vector that is not well formed).
#[derive(Debug, Error)]
#[error("checkpoint does not match the config: {0}")]
pub struct Mismatch(pub String);

/// Rounds beyond this are not a checkpoint of a real run (2^53: the round
/// counts are also used as floats, exact up to here).
pub const MAX_ROUND: u64 = 1 << 53;

/// Each kind of cumulative counter (bits of one kind, samples), summed over
/// the workers, stays below this in a checkpoint of a real run (2^62 bits
/// are 512 PiB): the run adds to the counters with plain `+=`, and metrics
/// sum them over workers, so a forged checkpoint near 2^64 would wrap them.
pub const MAX_COUNTER_TOTAL: u64 = 1 << 62;

/// Checks that every counter kind of `counters` (name, one value per
/// worker) sums to at most [`MAX_COUNTER_TOTAL`].
fn counters_plausible<'a>(
    counters: impl IntoIterator<Item = (&'a str, Vec<u64>)>,
) -> Result<(), Mismatch> {
    for (name, per_worker) in counters {
        let total: u128 = per_worker.iter().map(|&c| u128::from(c)).sum();
        if total > u128::from(MAX_COUNTER_TOTAL) {
            return Err(Mismatch(format!(
                "the workers' {name} sum to {total}, more than a run can count (2^62)"
            )));
        }
    }
    Ok(())
}

fn need_len(what: &str, len: usize, d: usize) -> Result<(), Mismatch> {
    if len == d {
        Ok(())
    } else {
        Err(Mismatch(format!("{what} has {len} entries, d = {d}")))
    }
}

/// Every entry finite: a run stops (diverged) before it checkpoints a
/// non-finite state, so one here was written by hand.
fn finite(what: &str, v: &[f64]) -> Result<(), Mismatch> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(j) => Err(Mismatch(format!(
            "{what} holds the non-finite entry {} at index {j}",
            v[j]
        ))),
    }
}

/// A vector the method allocates on first use: empty until then.
fn lazy_len(what: &str, len: usize, d: usize, needed: bool) -> Result<(), Mismatch> {
    if len == d || (len == 0 && !needed) {
        Ok(())
    } else {
        Err(Mismatch(format!("{what} has {len} entries, d = {d}")))
    }
}

/// Checks that a compressed vector is well formed and of dimension `d`
/// (the invariant of `CompressedVec`: dense with `dim` values, or sparse with
/// strictly increasing indices below `dim`, one value each).
fn check_compressed(what: &str, v: &CompressedVec, d: usize) -> Result<(), Mismatch> {
    if v.dim != d {
        return Err(Mismatch(format!("{what} has dimension {}, d = {d}", v.dim)));
    }
    if v.dense {
        if !v.indices.is_empty() || v.values.len() != v.dim {
            return Err(Mismatch(format!(
                "{what} is dense with {} values and {} indices, d = {d}",
                v.values.len(),
                v.indices.len()
            )));
        }
        return Ok(());
    }
    if v.indices.len() != v.values.len() {
        return Err(Mismatch(format!(
            "{what} has {} indices but {} values",
            v.indices.len(),
            v.values.len()
        )));
    }
    if let Some(w) = v.indices.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Mismatch(format!(
            "{what}: indices not strictly increasing ({} then {})",
            w[0], w[1]
        )));
    }
    if let Some(&i) = v.indices.iter().find(|&&i| i as usize >= d) {
        return Err(Mismatch(format!("{what}: index {i} out of range, d = {d}")));
    }
    Ok(())
}

/// Checks an EF21-family state against the run it is restored into: `n`
/// workers, dimension `d`, the method's `parts` (which vectors a round reads).
/// Every vector a round reads has length d, the others length d or 0 (not
/// allocated yet), worker ids are in order, the pending downlink is well
/// formed and of the kind the method sends, the counters are consistent with
/// the round. Restoring a state that passes cannot index out of bounds.
pub fn check_state(s: &ClusterState, n: usize, d: usize, parts: &Parts) -> Result<(), Mismatch> {
    if s.workers.len() != n {
        return Err(Mismatch(format!(
            "it has {} workers, the config has {n}",
            s.workers.len()
        )));
    }
    let sv = &s.server;
    let round = sv.round;
    if round > MAX_ROUND {
        return Err(Mismatch(format!("round {round} is not a plausible round")));
    }
    // after round 0 every worker has run (round 0 includes all) and the
    // lazily allocated vectors of the method exist
    let started = round > 0;
    need_len("server x", sv.x.len(), d)?;
    need_len("server g", sv.g.len(), d)?;
    let ef21_plus = parts.feedback == Feedback::Ef21Plus;
    if !(sv.g_i.is_empty() && !(started && ef21_plus)) {
        if sv.g_i.len() != n {
            return Err(Mismatch(format!(
                "server g_i has {} vectors, n = {n}",
                sv.g_i.len()
            )));
        }
        for (i, gi) in sv.g_i.iter().enumerate() {
            need_len(&format!("server g_i[{i}]"), gi.len(), d)?;
        }
    }
    let heavy_ball = matches!(parts.server_step, ServerStep::HeavyBall { .. });
    lazy_len("server v", sv.v.len(), d, started && heavy_ball)?;
    let bc = parts.downlink == DownlinkMode::CompressedEstimate;
    lazy_len("server g_bc", sv.g_bc.len(), d, started && bc)?;
    let down = &sv.next_down;
    // EF21-BC broadcasts the model before round 0 and estimates after it;
    // every other method always broadcasts the model
    let model_expected = !(bc && started);
    if down.is_model != model_expected {
        return Err(Mismatch(format!(
            "the pending downlink is {}, but this method sends {} before round {round}",
            if down.is_model {
                "a model"
            } else {
                "an estimate"
            },
            if model_expected {
                "the model"
            } else {
                "an estimate"
            }
        )));
    }
    if down.is_model {
        need_len("the pending downlink's model x", down.x.len(), d)?;
        // the estimate part is unused: empty or well formed
        if down.vec.dim != 0 {
            check_compressed("the pending downlink's estimate", &down.vec, d)?;
        }
    } else {
        lazy_len("the pending downlink's model x", down.x.len(), d, false)?;
        check_compressed("the pending downlink's estimate", &down.vec, d)?;
    }
    for (name, v) in [
        ("server x", &sv.x[..]),
        ("server g", &sv.g),
        ("server v", &sv.v),
        ("server g_bc", &sv.g_bc),
        ("the pending downlink's model x", &down.x),
        ("the pending downlink's estimate", &down.vec.values),
    ] {
        finite(name, v)?;
    }
    for (i, gi) in sv.g_i.iter().enumerate() {
        finite(&format!("server g_i[{i}]"), gi)?;
    }
    if s.last_participants > n {
        return Err(Mismatch(format!(
            "{} participants in the last round, n = {n}",
            s.last_participants
        )));
    }
    let (momentum, double, page) = match parts.estimator {
        Estimator::Momentum { .. } => (true, false, false),
        Estimator::DoubleMomentum { .. } => (true, true, false),
        Estimator::Page { .. } => (false, false, true),
        _ => (false, false, false),
    };
    for (i, w) in s.workers.iter().enumerate() {
        if w.id != i {
            return Err(Mismatch(format!("worker {i} has id {}", w.id)));
        }
        let f = |name: &str| format!("worker {i} {name}");
        need_len(&f("x"), w.x.len(), d)?;
        need_len(&f("g"), w.g.len(), d)?;
        let init = w.initialized;
        if init != started {
            return Err(Mismatch(format!(
                "worker {i} is {}initialized at round {round}",
                if init { "" } else { "not " }
            )));
        }
        lazy_len(&f("v"), w.v.len(), d, init && (momentum || page))?;
        lazy_len(&f("u"), w.u.len(), d, init && double)?;
        lazy_len(&f("x_prev"), w.x_prev.len(), d, init && page)?;
        // reset by the worker when it is not of length d
        lazy_len(&f("g_server"), w.g_server.len(), d, false)?;
        for (name, v) in [
            ("x", &w.x[..]),
            ("g", &w.g),
            ("v", &w.v),
            ("u", &w.u),
            ("x_prev", &w.x_prev),
            ("g_server", &w.g_server),
        ] {
            finite(&f(name), v)?;
        }
        if w.rounds_participated > round {
            return Err(Mismatch(format!(
                "worker {i} took part in {} rounds, the checkpoint is at round {round}",
                w.rounds_participated
            )));
        }
    }
    let ws = &s.workers;
    let each = |f: fn(&efkit_core::method::WorkerState) -> u64| ws.iter().map(f).collect();
    counters_plausible([
        ("uplink wire bits", each(|w| w.bits_up_wire)),
        ("uplink paper bits", each(|w| w.bits_up_paper)),
        ("downlink wire bits", each(|w| w.bits_down_wire)),
        ("downlink paper bits", each(|w| w.bits_down_paper)),
        ("samples", each(|w| w.samples)),
    ])?;
    // in u128: a forged round near 2^53 times n would wrap a u64
    if u128::from(s.participations) > n as u128 * u128::from(round) {
        return Err(Mismatch(format!(
            "{} participations in {round} rounds of {n} workers",
            s.participations
        )));
    }
    Ok(())
}

/// Checks a Safe-EF-family state against the run it is restored into (`n`
/// workers, dimension `d`): every vector of length d, worker ids in order,
/// a plausible round. Names the first field that does not fit.
pub fn check_safe_state(s: &SafeClusterState, n: usize, d: usize) -> Result<(), Mismatch> {
    if s.workers.len() != n {
        return Err(Mismatch(format!(
            "it has {} workers, the config has {n}",
            s.workers.len()
        )));
    }
    let sv = &s.server;
    if sv.round > MAX_ROUND {
        return Err(Mismatch(format!(
            "round {} is not a plausible round",
            sv.round
        )));
    }
    if sv.productive > sv.round {
        return Err(Mismatch(format!(
            "{} productive rounds at round {}",
            sv.productive, sv.round
        )));
    }
    need_len("server x", sv.x.len(), d)?;
    need_len("server w", sv.w.len(), d)?;
    need_len("server g", sv.g.len(), d)?;
    need_len("server avg_sum", sv.avg_sum.len(), d)?;
    for (i, w) in s.workers.iter().enumerate() {
        if w.id != i {
            return Err(Mismatch(format!("worker {i} has id {}", w.id)));
        }
        need_len(&format!("worker {i} w"), w.w.len(), d)?;
        need_len(&format!("worker {i} e"), w.e.len(), d)?;
        finite(&format!("worker {i} w"), &w.w)?;
        finite(&format!("worker {i} e"), &w.e)?;
    }
    let ws = &s.workers;
    let each = |f: fn(&efkit_core::safe::SafeWorkerState) -> u64| ws.iter().map(f).collect();
    counters_plausible([
        ("uplink wire bits", each(|w| w.bits_up_wire)),
        ("uplink paper bits", each(|w| w.bits_up_paper)),
        ("downlink wire bits", each(|w| w.bits_down_wire)),
        ("downlink paper bits", each(|w| w.bits_down_paper)),
    ])?;
    for (name, v) in [
        ("server x", &sv.x[..]),
        ("server w", &sv.w),
        ("server g", &sv.g),
        ("server avg_sum", &sv.avg_sum),
    ] {
        finite(name, v)?;
    }
    Ok(())
}

/// Writes any payload in the checkpoint format (header with checksum, JSON),
/// atomically (temporary file, fsync, rename).
pub fn write_payload<T: Serialize>(path: &Path, ck: &T) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    };
    let payload = serde_json::to_vec(ck).map_err(|e| CheckpointError::Corrupt {
        path: path.display().to_string(),
        reason: format!("cannot serialize: {e}"),
    })?;
    let header = format!(
        "{MAGIC} {VERSION} fnv1a64={:016x} bytes={}\n",
        fnv1a64(&payload),
        payload.len()
    );
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(header.as_bytes()).map_err(io)?;
        f.write_all(&payload).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)?;
    remove_stale_temporaries(path);
    Ok(())
}

/// Removes the temporary files (`<name>.tmp<pid>`) a process killed while
/// writing `path` left beside it: best effort, they hold nothing the
/// checkpoint does not.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let stem = Path::new(name).with_extension("tmp");
    let Some(prefix) = stem.to_str() else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(prefix)) else {
            continue;
        };
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Reads a file written by [`write_payload`], verifying the header, the
/// length and the checksum before parsing the payload.
pub fn read_payload<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let (bytes, start) = verified(path)?;
    serde_json::from_slice(&bytes[start..]).map_err(|e| CheckpointError::Corrupt {
        path: path.display().to_string(),
        reason: format!("bad payload: {e}"),
    })
}

/// The file's bytes and where its payload starts, after verifying the
/// header, the length and the checksum.
fn verified(path: &Path) -> Result<(Vec<u8>, usize), CheckpointError> {
    let p = path.display().to_string();
    let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
        path: p.clone(),
        source,
    })?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: p.clone(),
        reason,
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("header is not text".into()))?;
    let parts: Vec<&str> = header.split(' ').collect();
    if parts.len() != 4 || parts[0] != MAGIC {
        return Err(corrupt("not an efkit checkpoint".into()));
    }
    if !READABLE.contains(&parts[1]) {
        return Err(corrupt(format!("unsupported version {}", parts[1])));
    }
    let sum = parts[2]
        .strip_prefix("fnv1a64=")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt("bad checksum field".into()))?;
    let len: usize = parts[3]
        .strip_prefix("bytes=")
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| corrupt("bad length field".into()))?;
    let payload = &bytes[nl + 1..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "payload has {} bytes, header says {len}",
            payload.len()
        )));
    }
    if fnv1a64(payload) != sum {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok((bytes, nl + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_with_hints;
    use crate::setup::prepare;

    /// Rewrites the base64 vectors of a version-2 payload as decimal arrays:
    /// what version 1 wrote.
    fn to_version_1(v: &mut serde_json::Value) {
        use efkit_core::compact::decode_base64;
        match v {
            serde_json::Value::Object(m) => {
                for (key, val) in m.iter_mut() {
                    if let serde_json::Value::String(s) = val {
                        let raw = decode_base64(s).expect("base64 vector");
                        *val = if key == "bytes" {
                            serde_json::json!(raw)
                        } else {
                            let xs: Vec<f64> = raw
                                .chunks_exact(8)
                                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                                .collect();
                            serde_json::json!(xs)
                        };
                    } else {
                        to_version_1(val);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(to_version_1),
            _ => {}
        }
    }

    /// A temporary file left by a process killed while writing a
    /// checkpoint is removed by the next checkpoint written there; other
    /// files are kept.
    #[test]
    fn a_written_checkpoint_removes_stale_temporaries() {
        let dir = std::env::temp_dir().join(format!("efkit-ck-tmp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CHECKPOINT_FILE);
        let stale = dir.join(format!(
            "{}.tmp8331",
            Path::new(CHECKPOINT_FILE)
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
        ));
        let keep = dir.join("checkpoint.tmpx");
        fs::write(&stale, b"half a checkpoint").unwrap();
        fs::write(&keep, b"not ours").unwrap();
        write_payload(&path, &serde_json::json!({"a": 1})).unwrap();
        assert!(!stale.exists());
        assert!(keep.exists() && path.exists());
        let back: serde_json::Value = read_payload(&path).unwrap();
        assert_eq!(back["a"], 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The state of every EF21-family preset, at round 0 and after a few
    /// rounds, passes [`check_state`] (no false alarms), and a vector of the
    /// wrong length is named.
    #[test]
    fn every_preset_state_passes_the_shape_check() {
        for p in efkit_core::method::PRESETS {
            let cfg = parse_with_hints(&format!(
                "seed = 3\n[problem]\nkind = \"logistic\"\ndataset = \"phishing\"\nworkers = 4\n\
                 {}[step]\nrule = \"absolute\"\nvalue = 0.1\n",
                p.example_sections(8, 3)
            ))
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let mut c = prepare(&cfg)
                .unwrap_or_else(|e| panic!("{}: {e}", p.name))
                .cluster;
            let (n, d) = (c.n(), c.server.state.x.len());
            for round in 0..4 {
                let s = c.snapshot(0.0, 0.0);
                check_state(&s, n, d, &c.parts)
                    .unwrap_or_else(|e| panic!("{} at round {round}: {e}", p.name));
                c.step().unwrap();
            }
            let mut s = c.snapshot(0.0, 0.0);
            s.workers[1].g.pop();
            let e = check_state(&s, n, d, &c.parts).unwrap_err().to_string();
            assert!(
                e.contains(&format!("worker 1 g has {} entries, d = {d}", d - 1)),
                "{e}"
            );
        }
    }

    /// Counters a run could not have reached are refused: one near 2^64, a
    /// kind whose sum over the workers passes 2^62, more participations
    /// than rounds x workers.
    #[test]
    fn forged_counters_are_refused() {
        let cfg = parse_with_hints(
            "seed = 3\n[problem]\nkind = \"logistic\"\ndataset = \"phishing\"\nworkers = 4\n\
             [method]\nname = \"ef21\"\n[compressor]\nname = \"top-k\"\nk = 3\n\
             [step]\nrule = \"absolute\"\nvalue = 0.1\n",
        )
        .unwrap();
        let mut c = prepare(&cfg).unwrap().cluster;
        for _ in 0..3 {
            c.step().unwrap();
        }
        let (n, d) = (c.n(), c.server.state.x.len());
        let honest = c.snapshot(0.0, 0.0);
        check_state(&honest, n, d, &c.parts).unwrap();
        let refused = |s: &ClusterState, what: &str| {
            let e = check_state(s, n, d, &c.parts).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        let mut s = honest.clone();
        s.workers[2].bits_up_wire = u64::MAX - 5;
        refused(&s, "uplink wire bits");
        let mut s = honest.clone();
        s.workers[0].bits_down_paper = (1 << 61) + 1;
        s.workers[3].bits_down_paper = 1 << 61;
        refused(&s, "downlink paper bits sum to");
        let mut s = honest.clone();
        s.workers[1].samples = u64::MAX;
        refused(&s, "samples");
        let mut s = honest.clone();
        s.participations = 4 * 3 + 1;
        refused(&s, "13 participations in 3 rounds of 4 workers");
        // at the bound itself: accepted
        let mut s = honest;
        s.workers[0].bits_up_paper = MAX_COUNTER_TOTAL;
        for w in &mut s.workers[1..] {
            w.bits_up_paper = 0;
        }
        check_state(&s, n, d, &c.parts).unwrap();
    }

    /// A stamp names the keys that changed, and ignores [stop] and threads.
    #[test]
    fn config_stamp_names_what_changed() {
        let base = "seed = 2\nthreads = 1\n[problem]\nkind = \"logistic\"\ndataset = \"phishing\"\nworkers = 4\n\
                    [method]\nname = \"ef21\"\n[stop]\nmax_rounds = 10\n";
        let a = ConfigStamp::of(&parse_with_hints(base).unwrap()).unwrap();
        let same = base
            .replace("max_rounds = 10", "max_rounds = 99")
            .replace("threads = 1", "threads = 2");
        assert_eq!(
            ConfigStamp::of(&parse_with_hints(&same).unwrap()).unwrap(),
            a
        );
        let other = base
            .replace("\"ef21\"", "\"ef14\"")
            .replace("workers = 4", "workers = 5");
        let changes = a.changes(&ConfigStamp::of(&parse_with_hints(&other).unwrap()).unwrap());
        assert_eq!(
            changes,
            [
                "method.name = \"ef21\" in the checkpoint, \"ef14\" in the config",
                "problem.workers = 4 in the checkpoint, 5 in the config"
            ]
        );
        // written and read back with the checkpoint
        let dir = std::env::temp_dir().join(format!("efkit-ck-stamp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CHECKPOINT_FILE);
        let ck = Checkpoint {
            state: prepare(&parse_with_hints(base).unwrap())
                .unwrap()
                .cluster
                .snapshot(1.0, 0.0),
        };
        write_stamped(&path, &ck, &a).unwrap();
        let (back, stamp): (Checkpoint, _) = read_stamped(&path).unwrap();
        assert_eq!((back, stamp), (ck.clone(), Some(a)));
        // and a checkpoint without one reads as None
        write(&path, &ck).unwrap();
        let (_, stamp): (Checkpoint, _) = read_stamped(&path).unwrap();
        assert_eq!(stamp, None);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A checkpoint reads back to the same state bit for bit, in the current
    /// format and in version 1 (decimal arrays), and is about half the size.
    #[test]
    fn current_and_version_1_files_read_back_to_the_same_state() {
        let cfg = parse_with_hints(
            "seed = 2\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 4\n\
             [method]\nname = \"ef21-sgdm\"\neta = 0.3\nbatch = 8\n[compressor]\nname = \"top-k\"\nk = 3\n\
             [step]\nrule = \"absolute\"\nvalue = 0.5\n[init]\nkind = \"gaussian\"\n",
        )
        .unwrap();
        let mut c = prepare(&cfg).unwrap().cluster;
        for _ in 0..4 {
            c.step().unwrap();
        }
        let ck = Checkpoint {
            state: c.snapshot(0.75, 1.5),
        };
        let dir = std::env::temp_dir().join(format!("efkit-ck-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CHECKPOINT_FILE);
        write(&path, &ck).unwrap();
        assert_eq!(read(&path).unwrap(), ck);
        let v2 = fs::metadata(&path).unwrap().len();
        // the same state as version 1 wrote it
        let mut value = serde_json::to_value(&ck).unwrap();
        to_version_1(&mut value);
        let payload = serde_json::to_vec(&value).unwrap();
        let mut file = format!(
            "{MAGIC} 1 fnv1a64={:016x} bytes={}\n",
            fnv1a64(&payload),
            payload.len()
        )
        .into_bytes();
        file.extend_from_slice(&payload);
        fs::write(&path, &file).unwrap();
        assert_eq!(read(&path).unwrap(), ck);
        assert!(
            (v2 as f64) < 0.7 * file.len() as f64,
            "version 2: {v2} bytes, version 1: {}",
            file.len()
        );
        // an unknown version is refused by name
        let mut bad = file.clone();
        bad[MAGIC.len() + 1] = b'9';
        fs::write(&path, &bad).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("unsupported version 9"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
