//! Building a distributed problem: dataset + split + loss -> one oracle per
//! worker (algorithms.md §2: f(x) = (1/n) sum_i f_i(x), worker i only sees
//! its own f_i).

use std::fmt;
use std::str::FromStr;

use efkit_core::oracle::Oracle;
use serde::{Deserialize, Serialize};

use crate::csr::CsrMatrix;
use crate::datasets::{self, Dataset, DatasetInfo};
use crate::eigen::EigenMethod;
use crate::error::{ProblemError, Result};
use crate::oracles::{LeastSquares, LogisticNonconvex, DEFAULT_LAMBDA};
use crate::smoothness::{smoothness_with, Smoothness};
use crate::split::{split, Split, SplitKind};

/// The loss of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// [`LogisticNonconvex`]: logistic loss + lambda sum x^2/(1+x^2).
    #[default]
    Logistic,
    /// [`LeastSquares`]: (1/N_i) sum (a^T x - y)^2.
    LeastSquares,
}

impl ProblemKind {
    /// All kinds with their names.
    pub const ALL: [(ProblemKind, &'static str); 2] = [
        (ProblemKind::Logistic, "logistic"),
        (ProblemKind::LeastSquares, "least-squares"),
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// The default lambda: 0.1 for logistic, 0 for least squares.
    pub fn default_lambda(self) -> f64 {
        match self {
            ProblemKind::Logistic => DEFAULT_LAMBDA,
            ProblemKind::LeastSquares => 0.0,
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for ProblemKind {
    type Err = ProblemError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                ProblemError::invalid(
                    "kind",
                    format!("unknown problem `{s}`; allowed: logistic, least-squares"),
                )
            })
    }
}

/// Configuration of a problem (deserializable from a config file; unknown
/// keys are rejected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProblemConfig {
    /// Bundled dataset name (`a9a`, `w8a`, `mushrooms`, `phishing`, ...) or a
    /// path to a LibSVM file.
    pub dataset: String,
    /// Number of workers n.
    pub workers: usize,
    /// The loss (default logistic).
    #[serde(default)]
    pub kind: ProblemKind,
    /// How rows are split (default contiguous, the papers').
    #[serde(default)]
    pub split: SplitKind,
    /// Seed of the shuffled split.
    #[serde(default)]
    pub split_seed: u64,
    /// Regularization weight; default [`ProblemKind::default_lambda`]. Least
    /// squares accepts only 0.
    #[serde(default)]
    pub lambda: Option<f64>,
}

impl ProblemConfig {
    /// The papers' setup: `kind` on `dataset` split contiguously among `workers`.
    pub fn new(dataset: impl Into<String>, workers: usize, kind: ProblemKind) -> Self {
        ProblemConfig {
            dataset: dataset.into(),
            workers,
            kind,
            split: SplitKind::Contiguous,
            split_seed: 0,
            lambda: None,
        }
    }
}

/// One worker's data.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerShard {
    /// Rows of the worker, stored contiguously.
    pub a: CsrMatrix,
    /// Targets of those rows.
    pub y: Vec<f64>,
    /// Indices of the rows in the original dataset.
    pub rows: Vec<usize>,
}

/// A distributed finite-sum problem: n worker shards and a loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    kind: ProblemKind,
    lambda: f64,
    info: DatasetInfo,
    split_kind: SplitKind,
    shards: Vec<WorkerShard>,
}

impl Problem {
    /// Loads the dataset named in `cfg` and splits it.
    pub fn build(cfg: &ProblemConfig) -> Result<Problem> {
        let data = datasets::load(&cfg.dataset)?;
        Problem::from_dataset(
            &data,
            cfg.workers,
            cfg.kind,
            cfg.split,
            cfg.split_seed,
            cfg.lambda,
        )
    }

    /// Splits `data` among `workers` workers.
    pub fn from_dataset(
        data: &Dataset,
        workers: usize,
        kind: ProblemKind,
        split_kind: SplitKind,
        split_seed: u64,
        lambda: Option<f64>,
    ) -> Result<Problem> {
        let lambda = lambda.unwrap_or_else(|| kind.default_lambda());
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(ProblemError::invalid(
                "lambda",
                format!("must be finite and >= 0, got {lambda}"),
            ));
        }
        if kind == ProblemKind::LeastSquares && lambda != 0.0 {
            return Err(ProblemError::invalid(
                "lambda",
                "least squares has no regularizer (lambda must be 0)",
            ));
        }
        let sp: Split = split(data.y(), workers, split_kind, split_seed)?;
        let shards = (0..workers)
            .map(|i| {
                let rows = sp.rows(i).to_vec();
                let sub = data.select_rows(&rows);
                let (a, y) = sub.into_parts();
                WorkerShard { a, y, rows }
            })
            .collect();
        Ok(Problem {
            kind,
            lambda,
            info: data.info(),
            split_kind,
            shards,
        })
    }

    /// The loss.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The regularization weight.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Model dimension d.
    pub fn dim(&self) -> usize {
        self.info.features
    }

    /// Number of workers n.
    pub fn n_workers(&self) -> usize {
        self.shards.len()
    }

    /// How the rows were split.
    pub fn split_kind(&self) -> SplitKind {
        self.split_kind
    }

    /// Summary of the whole dataset.
    pub fn dataset_info(&self) -> &DatasetInfo {
        &self.info
    }

    /// The shard of worker `i`.
    ///
    /// # Panics
    /// If `i >= n_workers()`.
    #[track_caller]
    pub fn shard(&self, i: usize) -> &WorkerShard {
        &self.shards[i]
    }

    /// N_i of every worker.
    pub fn shard_sizes(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.y.len()).collect()
    }

    /// The oracle of worker `i` (owns a copy of the shard).
    ///
    /// # Panics
    /// If `i >= n_workers()`.
    #[track_caller]
    pub fn oracle(&self, i: usize) -> Box<dyn Oracle> {
        let s = &self.shards[i];
        make_oracle(self.kind, self.lambda, s.a.clone(), s.y.clone())
    }

    /// All oracles, worker 0 first.
    pub fn oracles(&self) -> Vec<Box<dyn Oracle>> {
        (0..self.n_workers()).map(|i| self.oracle(i)).collect()
    }

    /// All oracles, moving the shards instead of copying them.
    pub fn into_oracles(self) -> Vec<Box<dyn Oracle>> {
        let (kind, lambda) = (self.kind, self.lambda);
        self.shards
            .into_iter()
            .map(|s| make_oracle(kind, lambda, s.a, s.y))
            .collect()
    }

    /// Smoothness constants (see [`crate::smoothness`](mod@crate::smoothness)).
    pub fn smoothness(&self) -> Result<Smoothness> {
        self.smoothness_with(EigenMethod::Auto)
    }

    /// Smoothness constants with a chosen eigenvalue method.
    pub fn smoothness_with(&self, method: EigenMethod) -> Result<Smoothness> {
        let blocks: Vec<&CsrMatrix> = self.shards.iter().map(|s| &s.a).collect();
        smoothness_with(self.kind, self.lambda, &blocks, method)
    }
}

fn make_oracle(kind: ProblemKind, lambda: f64, a: CsrMatrix, y: Vec<f64>) -> Box<dyn Oracle> {
    // shards are non-empty with finite targets and lambda was validated
    match kind {
        ProblemKind::Logistic => {
            Box::new(LogisticNonconvex::new(a, y, lambda).expect("validated shard"))
        }
        ProblemKind::LeastSquares => Box::new(LeastSquares::new(a, y).expect("validated shard")),
    }
}
