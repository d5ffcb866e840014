//! # efkit-problems
//!
//! The optimization problems of the error-feedback experiments and the data
//! they run on (design.md §3):
//!
//! * data: a [`libsvm`] text reader (plain or gzip), an [`idx`] reader for
//!   MNIST, the LibSVM sets of the EF21 papers bundled in the binary
//!   ([`datasets`]: a9a, w8a, mushrooms, phishing and the a9a/w8a test splits),
//!   stored as [`csr::CsrMatrix`];
//! * [`split`]: rows to workers (contiguous in file order with the remainder
//!   on the last worker, as the EF21 code does; shuffled; label-sorted);
//! * [`oracles`]: worker oracles implementing [`efkit_core::oracle::Oracle`]
//!   for logistic regression with the nonconvex regularizer
//!   lambda sum x_k^2/(1+x_k^2) and for least squares (EF21, Richtarik,
//!   Sokolov & Fatkhullin, NeurIPS 2021; algorithms.md §10.1);
//! * [`problem`]: a [`problem::ProblemConfig`] -> one oracle per worker;
//! * [`multiclass`]: multiclass logistic regression with the nonconvex
//!   regularizer on MNIST (Fatkhullin, Tyurin & Richtarik 2023; algorithms.md §10.3);
//! * [`noisy`]: streaming oracles on 1/2 ||x||^2 with controlled gradient noise
//!   (Gaussian, and the asymmetric law of algorithms.md §7.1 that biases Top-1);
//! * [`smoothness`](mod@smoothness): L, L_i, Ltilde and mu as the authors' code computes them
//!   (algorithms.md §5.4), with [`eigen`] solvers that never form A^T A for
//!   large d.
//!
//! ```
//! use efkit_problems::problem::{Problem, ProblemConfig, ProblemKind};
//! let p = Problem::build(&ProblemConfig::new("mushrooms", 20, ProblemKind::Logistic)).unwrap();
//! assert_eq!(p.shard_sizes()[19], 410);
//! let mut oracles = p.oracles();
//! let x = vec![0.0; p.dim()];
//! let mut g = vec![0.0; p.dim()];
//! let f0 = oracles[0].loss_grad(&x, &mut g);
//! assert!((f0 - std::f64::consts::LN_2).abs() < 1e-12);
//! ```

#![warn(missing_docs)]

pub mod constrained;
pub mod csr;
pub mod datasets;
pub mod eigen;
pub mod error;
pub mod idx;
pub mod io;
pub mod kernels;
pub mod libsvm;
pub mod multiclass;
pub mod noisy;
pub mod oracles;
pub mod problem;
pub mod smoothness;
pub mod split;

pub use csr::CsrMatrix;
pub use datasets::{Dataset, DatasetInfo};
pub use error::{IdxErrorKind, LibsvmErrorKind, ProblemError, Result};
pub use oracles::{LeastSquares, LogisticNonconvex};
pub use problem::{Problem, ProblemConfig, ProblemKind};
pub use smoothness::{smoothness, Smoothness};
pub use split::{Split, SplitKind};
