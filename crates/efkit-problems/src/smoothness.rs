//! Smoothness constants L, L_i, Ltilde and the PL constant mu, computed the way
//! the EF21 authors' code computes them (algorithms.md §5.4; EF21, Richtarik,
//! Sokolov & Fatkhullin, NeurIPS 2021, Theorems 1-2 use L and
//! Ltilde = sqrt((1/n) sum_i L_i^2)).
//!
//! Logistic regression with the nonconvex regularizer (`bdfg_distributed_stable.py`):
//!
//! ```text
//! L_i    = lambda_max(A_i^T A_i) / (4 N_i) + 2 lambda
//! L      = lambda_max(A^T A)   / (4 N)   + 2 lambda      (A = all rows)
//! Ltilde = sqrt(mean_i L_i^2)
//! ```
//!
//! (1/4 bounds the second derivative of log(1 + exp(t)); 2 lambda is the
//! largest second derivative of lambda x^2/(1 + x^2), attained at x = 0.)
//!
//! Least squares, PL setting (`Least squares (PL setting)/bdfg_distributed_stable.py`):
//!
//! ```text
//! L_i = lambda_max(A_i^T A_i / N_i),   L = lambda_max(A^T A / N),
//! mu  = sigma_min(A)^2 = lambda_min(A^T A)      (not divided by N)
//! ```
//!
//! These are the code's conventions, reproduced to match the plots. The
//! Hessian of (1/N)||Ax - b||^2 is (2/N) A^T A, so the true smoothness
//! constant is TWICE the L reported here; mu is not normalised by N. Note that
//! sigma_min(A) = 0 whenever N < d or A is rank deficient (e.g. a feature that
//! never occurs), and then mu = 0 and the PL step-size bound theta/(2 mu) is
//! infinite.

use crate::csr::CsrMatrix;
use crate::eigen::{gram_extreme, EigenMethod, Extreme};
use crate::error::{ProblemError, Result};
use crate::problem::ProblemKind;

/// Smoothness constants of a distributed problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothness {
    /// L: smoothness of f on the whole data (code convention, see module docs).
    pub l: f64,
    /// L_i of each worker.
    pub l_i: Vec<f64>,
    /// Ltilde = sqrt((1/n) sum_i L_i^2).
    pub l_tilde: f64,
    /// PL constant mu = sigma_min(A)^2 for least squares; `None` otherwise.
    pub mu: Option<f64>,
}

impl Smoothness {
    /// L_AM = (1/n) sum_i L_i (arithmetic mean; EF21-W).
    pub fn l_am(&self) -> f64 {
        self.l_i.iter().sum::<f64>() / self.l_i.len() as f64
    }
}

/// Quadratic mean sqrt((1/n) sum_i v_i^2).
pub fn quadratic_mean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

/// Smoothness constants of `kind` with regularization `lambda` (used by the
/// logistic problem; ignored for least squares, which has no regularizer) on
/// the worker shards `shards` (the whole data A is their union), with the
/// default eigenvalue method ([`EigenMethod::Auto`]).
///
/// Errors if there are no shards, a shard is empty, the shards disagree on
/// the dimension, or an iterative eigenvalue solve does not converge.
pub fn smoothness(kind: ProblemKind, lambda: f64, shards: &[&CsrMatrix]) -> Result<Smoothness> {
    smoothness_with(kind, lambda, shards, EigenMethod::Auto)
}

/// As [`smoothness`], choosing how eigenvalues are computed.
pub fn smoothness_with(
    kind: ProblemKind,
    lambda: f64,
    shards: &[&CsrMatrix],
    method: EigenMethod,
) -> Result<Smoothness> {
    if shards.is_empty() {
        return Err(ProblemError::invalid("workers", "no shards"));
    }
    let d = shards[0].n_cols();
    if shards.iter().any(|s| s.n_cols() != d) {
        return Err(ProblemError::invalid(
            "shards",
            "shards disagree on the number of features",
        ));
    }
    if let Some(i) = shards.iter().position(|s| s.n_rows() == 0) {
        return Err(ProblemError::invalid(
            "shards",
            format!("shard {i} has no rows"),
        ));
    }
    let n_total: usize = shards.iter().map(|s| s.n_rows()).sum();
    let (scale, shift) = match kind {
        ProblemKind::Logistic => (0.25, 2.0 * lambda),
        ProblemKind::LeastSquares => (1.0, 0.0),
    };
    let mut l_i = Vec::with_capacity(shards.len());
    for (i, s) in shards.iter().enumerate() {
        let lmax = gram_extreme(
            &[s],
            Extreme::Largest,
            method,
            &format!("lambda_max(A_{i}^T A_{i})"),
        )?;
        l_i.push(scale * lmax / s.n_rows() as f64 + shift);
    }
    let lmax = gram_extreme(shards, Extreme::Largest, method, "lambda_max(A^T A)")?;
    let l = scale * lmax / n_total as f64 + shift;
    let mu = match kind {
        ProblemKind::Logistic => None,
        ProblemKind::LeastSquares => Some(gram_extreme(
            shards,
            Extreme::Smallest,
            method,
            "lambda_min(A^T A)",
        )?),
    };
    let l_tilde = quadratic_mean(&l_i);
    Ok(Smoothness {
        l,
        l_i,
        l_tilde,
        mu,
    })
}
