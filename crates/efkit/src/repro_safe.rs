//! Reproductions (safe) — being written.

use std::path::Path;

/// Not available yet.
pub fn safe_ef(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

/// Not available yet.
pub fn safe_ef_scaling(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

