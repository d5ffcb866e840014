//! Splitting N rows among n workers.
//!
//! All splits produce an ordering of the rows and cut it into n contiguous
//! chunks of floor(N/n) rows, the remainder going to the LAST worker. This is
//! the convention of the EF21 authors' `generate_data.py` (algorithms.md
//! §10.1): for mushrooms (N = 8,124) and n = 20, workers 0..18 get 406 rows and
//! worker 19 gets 410.
//!
//! * [`SplitKind::Contiguous`] (default, the papers'): rows in file order.
//! * [`SplitKind::Shuffled`]: a seeded uniform permutation first (roughly
//!   i.i.d. shards). The permutation comes from the stream
//!   `(seed, Purpose::Setup, worker = SHUFFLE_STREAM, round = 0)`.
//! * [`SplitKind::LabelSorted`]: rows stably sorted by label first (maximally
//!   heterogeneous shards: most workers see a single class).

use std::fmt;
use std::str::FromStr;

use efkit_core::rng::{stream, Purpose};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::error::{ProblemError, Result};

/// How rows are assigned to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SplitKind {
    /// File order, contiguous chunks (the papers' heterogeneous split).
    #[default]
    Contiguous,
    /// Seeded random permutation, then contiguous chunks.
    Shuffled,
    /// Stable sort by label, then contiguous chunks.
    LabelSorted,
}

impl SplitKind {
    /// All kinds with their names.
    pub const ALL: [(SplitKind, &'static str); 3] = [
        (SplitKind::Contiguous, "contiguous"),
        (SplitKind::Shuffled, "shuffled"),
        (SplitKind::LabelSorted, "label-sorted"),
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

impl fmt::Display for SplitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for SplitKind {
    type Err = ProblemError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                ProblemError::invalid(
                    "split",
                    format!("unknown split `{s}`; allowed: contiguous, shuffled, label-sorted"),
                )
            })
    }
}

/// The `worker` component of the RNG stream key used by [`SplitKind::Shuffled`]
/// (so that it never coincides with a per-worker setup stream).
pub const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4521;

/// An assignment of rows to workers: worker i owns
/// `order[bounds[i]..bounds[i+1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    order: Vec<usize>,
    bounds: Vec<usize>,
}

impl Split {
    /// Number of workers.
    pub fn n_workers(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The rows of worker `i`, in the order they are stored on the worker.
    ///
    /// # Panics
    /// If `i >= n_workers()`.
    #[track_caller]
    pub fn rows(&self, i: usize) -> &[usize] {
        &self.order[self.bounds[i]..self.bounds[i + 1]]
    }

    /// N_i for every worker.
    pub fn sizes(&self) -> Vec<usize> {
        self.bounds.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The full row order (concatenation of all shards).
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

/// Shard sizes of the contiguous convention: floor(N/n) each, remainder to
/// the last worker. Errors if `n_workers == 0` or `n_workers > n_rows`.
pub fn shard_sizes(n_rows: usize, n_workers: usize) -> Result<Vec<usize>> {
    if n_workers == 0 {
        return Err(ProblemError::invalid("workers", "need at least one worker"));
    }
    if n_workers > n_rows {
        return Err(ProblemError::TooManyWorkers {
            rows: n_rows,
            workers: n_workers,
        });
    }
    let base = n_rows / n_workers;
    let mut sizes = vec![base; n_workers];
    sizes[n_workers - 1] += n_rows - base * n_workers;
    Ok(sizes)
}

/// Splits `labels.len()` rows among `n_workers`. `seed` is used by
/// [`SplitKind::Shuffled`] only; `labels` by [`SplitKind::LabelSorted`] only
/// (its length is N in every case).
pub fn split(labels: &[f64], n_workers: usize, kind: SplitKind, seed: u64) -> Result<Split> {
    let n = labels.len();
    let sizes = shard_sizes(n, n_workers)?;
    let mut order: Vec<usize> = (0..n).collect();
    match kind {
        SplitKind::Contiguous => {}
        SplitKind::Shuffled => {
            let mut rng = stream(seed, Purpose::Setup, SHUFFLE_STREAM, 0);
            // Fisher-Yates
            for i in (1..n).rev() {
                let j = rng.gen_range(0..=i);
                order.swap(i, j);
            }
        }
        SplitKind::LabelSorted => {
            order.sort_by(|&a, &b| labels[a].total_cmp(&labels[b]));
        }
    }
    let mut bounds = Vec::with_capacity(n_workers + 1);
    bounds.push(0);
    for s in sizes {
        bounds.push(bounds.last().copied().unwrap_or(0) + s);
    }
    Ok(Split { order, bounds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_remainder_to_last() {
        let y = vec![0.0; 8_124];
        let s = split(&y, 20, SplitKind::Contiguous, 0).unwrap();
        let sizes = s.sizes();
        assert_eq!(&sizes[..19], &[406; 19]);
        assert_eq!(sizes[19], 410);
        assert_eq!(s.rows(0)[0], 0);
        assert_eq!(s.rows(19), &(7_714..8_124).collect::<Vec<_>>()[..]);
        // algorithms.md §10.1 table
        for (n_rows, n, base, last) in [
            (11_055, 20, 552, 567),
            (11_055, 100, 110, 165),
            (8_124, 100, 81, 105),
            (32_561, 20, 1_628, 1_629),
            (32_561, 100, 325, 386),
            (49_749, 20, 2_487, 2_496),
            (49_749, 100, 497, 546),
        ] {
            let sz = shard_sizes(n_rows, n).unwrap();
            assert_eq!((sz[0], sz[n - 1]), (base, last));
            assert_eq!(sz.iter().sum::<usize>(), n_rows);
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(
            split(&[1.0, 2.0], 3, SplitKind::Contiguous, 0),
            Err(ProblemError::TooManyWorkers {
                rows: 2,
                workers: 3
            })
        ));
        assert!(split(&[1.0], 0, SplitKind::Contiguous, 0).is_err());
        assert!(split(&[1.0, 2.0], 2, SplitKind::Shuffled, 0).is_ok());
        assert_eq!(
            "label-sorted".parse::<SplitKind>().unwrap(),
            SplitKind::LabelSorted
        );
        assert!("random".parse::<SplitKind>().is_err());
        assert_eq!(SplitKind::Shuffled.to_string(), "shuffled");
    }

    #[test]
    fn shuffled_is_a_seeded_permutation() {
        let y = vec![0.0; 1000];
        let a = split(&y, 7, SplitKind::Shuffled, 3).unwrap();
        let b = split(&y, 7, SplitKind::Shuffled, 3).unwrap();
        let c = split(&y, 7, SplitKind::Shuffled, 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut o = a.order().to_vec();
        assert_ne!(o, (0..1000).collect::<Vec<_>>());
        o.sort_unstable();
        assert_eq!(o, (0..1000).collect::<Vec<_>>());
        assert_eq!(a.sizes(), shard_sizes(1000, 7).unwrap());
    }

    #[test]
    fn label_sorted_is_stable() {
        let y = [1.0, -1.0, 1.0, -1.0, -1.0, 1.0];
        let s = split(&y, 2, SplitKind::LabelSorted, 0).unwrap();
        assert_eq!(s.rows(0), &[1, 3, 4]);
        assert_eq!(s.rows(1), &[0, 2, 5]);
    }
}
