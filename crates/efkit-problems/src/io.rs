//! Reading files: plain or gzip-compressed, detected by the gzip magic bytes
//! (`1f 8b`), never by the file extension.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{ProblemError, Result};

/// Whether `bytes` start with the gzip magic number `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Decompresses `bytes` if they are gzip (all members of a multi-member
/// stream); returns them unchanged otherwise. `file` names the input in errors.
pub fn maybe_gunzip<'a>(bytes: &'a [u8], file: Option<&str>) -> Result<Cow<'a, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| ProblemError::Gzip {
            file: file.map(str::to_owned),
            source,
        })?;
    Ok(Cow::Owned(out))
}

/// Reads a whole file and decompresses it if it is gzip.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| ProblemError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    match maybe_gunzip(&raw, Some(&name))? {
        Cow::Borrowed(_) => Ok(raw),
        Cow::Owned(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    #[test]
    fn gzip_is_detected_and_corruption_reported() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(&*maybe_gunzip(&gz, None).unwrap(), b"hello");
        assert_eq!(&*maybe_gunzip(b"plain", None).unwrap(), b"plain");
        let bad = &gz[..gz.len() - 6];
        let e = maybe_gunzip(bad, Some("x.gz")).unwrap_err();
        assert!(e.to_string().starts_with("x.gz: gzip"), "{e}");
        assert!(maybe_gunzip(&[0x1f, 0x8b], None).is_err());
    }
}
