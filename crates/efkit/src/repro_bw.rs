//! Reproductions (bw) — being written.

use std::path::Path;

/// Not available yet.
pub fn bw_page(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

/// Not available yet.
pub fn bw_pp(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

/// Not available yet.
pub fn bw_bc(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

/// Not available yet.
pub fn bw_hb(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

/// Not available yet.
pub fn bw_prox(_out: &Path, _force: bool, _quick: bool, _quiet: bool) -> anyhow::Result<u8> {
    Err(crate::UserError("this reproduction is not available in this build".into()).into())
}

