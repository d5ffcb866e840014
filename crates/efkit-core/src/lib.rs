//! # efkit-core
//!
//! The small core of efkit: compressors with real wire encodings and exact bit
//! counts, the bit-level codec they share, deterministic RNG streams, the
//! [`oracle::Oracle`] interface through which a worker obtains (stochastic)
//! gradients, the error-feedback method parts (worker and server states as plain
//! values) and the step-size theory of EF21.
//!
//! Nothing here depends on MPI, plotting or autodiff (design.md §3).

#![warn(missing_docs)]

pub mod bits;
pub mod compact;
pub mod compress;
pub mod error;
pub mod fork;
pub mod method;
#[doc(hidden)]
pub mod method_fuzz;
pub mod oracle;
pub mod prefetch;
pub mod rng;
pub mod safe;
pub mod theory;

pub use error::{CompressError, DecodeError, ParamError};
