//! Typed errors of the problems crate.
//!
//! Readers treat their input as hostile: any byte string yields either a value
//! or one of these errors, never a panic. Contract violations by the caller
//! (a model vector of the wrong length, an out-of-range sample index) panic
//! with a clear message instead (design.md §4).

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Result type of this crate.
pub type Result<T, E = ProblemError> = std::result::Result<T, E>;

/// Formats an optional file name as a message prefix (`"a9a.gz: "` or `""`).
struct FilePrefix<'a>(&'a Option<String>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "{name}: "),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong while loading data or building a problem.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProblemError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The input starts with the gzip magic bytes but does not decompress.
    #[error("{}gzip decompression failed: {source}", FilePrefix(file))]
    Gzip {
        /// File name, when known.
        file: Option<String>,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// A LibSVM text file is malformed.
    #[error("{}line {line}: {kind}", FilePrefix(file))]
    Libsvm {
        /// File name, when known.
        file: Option<String>,
        /// 1-based line number of the offending line.
        line: usize,
        /// What is wrong.
        kind: LibsvmErrorKind,
    },
    /// An IDX file (MNIST) is malformed.
    #[error("{}{kind}", FilePrefix(file))]
    Idx {
        /// File name, when known.
        file: Option<String>,
        /// What is wrong.
        kind: IdxErrorKind,
    },
    /// A dataset name is neither bundled nor an existing file.
    #[error(
        "unknown dataset `{name}`; bundled datasets: {allowed} (or give a path to a LibSVM file)"
    )]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The bundled names, comma separated.
        allowed: String,
    },
    /// Data files that are not bundled in the binary (MNIST) were not found.
    #[error(
        "{what} not found; looked in: {}. Set EFKIT_DATA_DIR to the efkit `data` folder \
         (the one holding `mnist/`)",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    DataNotFound {
        /// What was looked for.
        what: String,
        /// The directories that were tried, in order.
        tried: Vec<PathBuf>,
    },
    /// More workers than rows: some worker would get no data.
    #[error("cannot split {rows} rows among {workers} workers (need at least one row per worker)")]
    TooManyWorkers {
        /// Number of rows.
        rows: usize,
        /// Number of workers requested.
        workers: usize,
    },
    /// A parameter is outside its allowed range, or a name is unknown.
    #[error("invalid parameter `{key}`: {reason}")]
    InvalidParam {
        /// The parameter.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An iterative eigenvalue computation did not reach its tolerance.
    #[error(
        "{what}: eigenvalue iteration did not converge after {matvecs} products \
         (estimate {estimate}, relative residual {residual:e})"
    )]
    NotConverged {
        /// Which quantity was being computed.
        what: String,
        /// Matrix-vector products spent.
        matvecs: usize,
        /// Best estimate reached.
        estimate: f64,
        /// Relative residual of the best estimate.
        residual: f64,
    },
}

impl ProblemError {
    /// Shorthand for [`ProblemError::InvalidParam`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ProblemError::InvalidParam {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The 1-based line number for LibSVM parse errors.
    pub fn line(&self) -> Option<usize> {
        match self {
            ProblemError::Libsvm { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What is wrong with a LibSVM line.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LibsvmErrorKind {
    /// The label is not a finite number.
    #[error("bad label `{0}` (expected a finite number)")]
    BadLabel(String),
    /// A feature token is not of the form `index:value`.
    #[error("bad feature `{0}` (expected `index:value`)")]
    BadToken(String),
    /// The index part is not a positive integer that fits in 32 bits.
    #[error("bad feature index `{0}` (expected an integer in 1..=4294967295)")]
    BadIndex(String),
    /// Index 0 (LibSVM indices are 1-based).
    #[error("feature index 0 (LibSVM indices are 1-based)")]
    ZeroIndex,
    /// Indices must be strictly increasing within a row.
    #[error("feature index {index} does not increase (previous index {previous})")]
    NonIncreasingIndex {
        /// The index before.
        previous: u32,
        /// The offending index.
        index: u32,
    },
    /// The value is not a number.
    #[error("bad feature value `{0}`")]
    BadValue(String),
    /// The value is NaN or infinite.
    #[error("non-finite feature value `{0}`")]
    NonFiniteValue(String),
    /// An index larger than the requested number of features.
    #[error("feature index {index} exceeds n_features = {n_features}")]
    IndexOutOfRange {
        /// The offending 1-based index.
        index: u32,
        /// The requested number of features.
        n_features: usize,
    },
    /// A third distinct label while mapping labels to -1/+1.
    #[error("label {label} is a third distinct label (already seen {first} and {second}); binary label mapping needs exactly two")]
    TooManyLabels {
        /// The offending label.
        label: f64,
        /// The smaller label seen before.
        first: f64,
        /// The larger label seen before.
        second: f64,
    },
    /// The whole file holds a single label that is neither -1 nor +1, so the
    /// min/max mapping to -1/+1 is undefined.
    #[error("only one distinct label ({0}) in the file; binary label mapping needs two (or labels already in -1/+1)")]
    SingleLabel(f64),
    /// The file contains no data rows (`line` is the number of lines read).
    #[error("no data rows")]
    NoRows,
}

/// What is wrong with an IDX file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdxErrorKind {
    /// Fewer than the 4 magic bytes or than the header announces.
    #[error("IDX header truncated: {len} bytes, header needs {needed}")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// The magic number is not the expected one.
    #[error("bad IDX magic number {found} (0x{found:08x}); expected {expected}")]
    BadMagic {
        /// The magic found.
        found: u32,
        /// The magic expected (2049 for labels, 2051 for images).
        expected: u32,
    },
    /// The data section is shorter or longer than the dimensions announce.
    #[error("IDX data has {found} bytes, dimensions {dims:?} need {expected}")]
    SizeMismatch {
        /// The dimensions from the header.
        dims: Vec<u32>,
        /// Bytes the dimensions need.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A label outside the expected range (MNIST: 0..=9).
    #[error("label {label} at position {index} is out of range 0..={max}")]
    BadLabel {
        /// Position (0-based) of the label.
        index: usize,
        /// The label.
        label: u8,
        /// The largest allowed label.
        max: u8,
    },
    /// Image and label files disagree on the number of items, or the images
    /// have unexpected dimensions.
    #[error("inconsistent IDX pair: {0}")]
    Inconsistent(String),
}
