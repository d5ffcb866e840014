//! Typed errors of the core crate.

use thiserror::Error;

/// Decoding a byte string failed. Decoders treat their input as hostile: any
/// byte string yields either a value or one of these errors, never a panic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the message was complete.
    #[error("message truncated: needed {needed} more bits at bit offset {at}")]
    Truncated {
        /// Bit offset at which more input was needed.
        at: u64,
        /// Number of bits that were requested.
        needed: u32,
    },
    /// A field holds a value that no encoder produces.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// Name of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes remain after the message was complete (or padding bits are not zero).
    #[error("trailing data after message: {0} bits")]
    Trailing(u64),
}

impl DecodeError {
    /// Shorthand for [`DecodeError::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// A compressor was given an input it does not accept.
///
/// Defined behaviour for non-finite input: every compressor scans its input and
/// returns [`CompressError::NonFinite`] naming the first NaN or infinite entry,
/// without producing a message. The runtime turns this into a `diverged` run.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CompressError {
    /// The input holds NaN or an infinity.
    #[error("non-finite input: entry {index} is {value}")]
    NonFinite {
        /// Index of the first non-finite entry.
        index: usize,
        /// The entry itself.
        value: f64,
    },
    /// The compressor cannot handle this input shape.
    #[error("bad shape: {0}")]
    Shape(String),
}

/// A parameter is outside its allowed range, or a name is unknown.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum ParamError {
    /// Unknown name; `allowed` lists the valid ones.
    #[error("unknown {what} `{name}`; allowed: {allowed}")]
    Unknown {
        /// What kind of thing was named (e.g. "compressor").
        what: &'static str,
        /// The name given.
        name: String,
        /// The valid names, comma separated.
        allowed: String,
    },
    /// A parameter value is invalid.
    #[error("invalid parameter `{key}`: {reason}")]
    Invalid {
        /// The parameter.
        key: String,
        /// Why.
        reason: String,
    },
}

impl ParamError {
    /// Shorthand for [`ParamError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ParamError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
