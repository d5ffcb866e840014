//! # efkit-runtime
//!
//! The round driver. A [`Cluster`] holds the server, the n workers and their
//! oracles, and runs rounds of the protocol of `efkit_core::method`:
//!
//! ```text
//! server --downlink--> participating workers (in parallel on a thread pool)
//! server <--uplinks--  (applied in worker-id order)
//! ```
//!
//! Determinism: each worker's randomness is keyed by (seed, worker, round) and
//! the server sums uplinks in worker-id order, so metrics are bit-identical for
//! any thread count.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod driver;
pub mod lean;
#[cfg(feature = "mpi")]
pub mod mpi_backend;
#[cfg(feature = "mpi")]
pub mod mpi_safe;
pub mod safe;
pub mod setup;
pub mod setup_sgdm;

pub use cluster::{Cluster, ClusterState, Control, RoundMetrics, Status, StopRules, Summary};
