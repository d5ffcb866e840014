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
//! Version-1 files (vectors as decimal arrays, also exact) still load.
//! The file is written to a temporary name and renamed, so a crash leaves the
//! previous checkpoint or the complete new one; a damaged file is detected by
//! its checksum and refused.

use std::fs;
use std::io::Write;
use std::path::Path;

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
    fs::rename(&tmp, path).map_err(io)
}

/// Reads a file written by [`write_payload`], verifying the header, the
/// length and the checksum before parsing the payload.
pub fn read_payload<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
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
    serde_json::from_slice(payload).map_err(|e| corrupt(format!("bad payload: {e}")))
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
