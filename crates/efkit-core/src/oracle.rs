//! The oracle interface: how a worker turns a model into a gradient and a loss.
//!
//! An oracle is whatever worker i can query about its own f_i: a shard of a
//! data set (finite sum f_i = (1/N_i) sum_j f_ij), a synthetic stochastic
//! problem, a neural network on minibatches, or later a reinforcement-learning
//! worker that runs its own robot and returns a policy gradient with a reward and
//! a safety cost (design.md §1). The interface therefore only assumes "give me a
//! (stochastic) gradient at x"; finite-sum structure is optional.

use std::sync::Arc;

use crate::rng::Rng;

/// What one worker can compute about its local objective f_i.
pub trait Oracle: Send {
    /// Dimension of the model.
    fn dim(&self) -> usize;

    /// Number of local samples N_i for finite sums; `None` for streaming oracles.
    fn num_samples(&self) -> Option<usize>;

    /// Sizes of the model's parameter tensors (layers) in the flat order of
    /// x, for per-layer compression; `None` (the default) for unlayered models.
    fn blocks(&self) -> Option<Vec<usize>> {
        None
    }

    /// Tells the oracle the model its next gradient calls are made at, as the
    /// worker holds it: a model broadcast by the server, shared by every
    /// worker of the process. An oracle may keep the handle and recognise a
    /// later call's `x` as this model (same buffer), e.g. to convert the model
    /// once for all the workers of a process instead of once per worker
    /// (efkit-nn's network oracles do). While the handle is held the model
    /// cannot change (it is shared), so the recognition is exact. The default
    /// ignores it.
    fn at_model(&mut self, x: &Arc<Vec<f64>>) {
        let _ = x;
    }

    /// Prepares the minibatch that a later stochastic gradient call drawing
    /// `batch` samples with a generator equal to `rng` will use (the next
    /// round's draw, known in advance because each round's generator is a
    /// fixed stream). A hint only: an oracle may prepare its input (e.g.
    /// gather the samples' features) and must use it only when the later
    /// call draws exactly the same samples; values never depend on it. The
    /// in-process cluster calls it on a thread that would otherwise wait for
    /// the round's last worker. The default ignores it.
    fn stage_batch(&mut self, batch: usize, rng: &mut Rng) {
        let _ = (batch, rng);
    }

    /// f_i(x); writes grad f_i(x) into `grad`.
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64;

    /// f_i(x) only.
    fn loss(&mut self, x: &[f64]) -> f64;

    /// grad f_i(x) only. Must write exactly the gradient [`Oracle::loss_grad`]
    /// writes (bit for bit); oracles override it when skipping the loss is cheaper.
    fn grad(&mut self, x: &[f64], grad: &mut [f64]) {
        self.loss_grad(x, grad);
    }

    /// A stochastic gradient from a minibatch of `batch` samples drawn with `rng`
    /// (finite sums: uniformly without replacement, "tau-nice"). The drawn
    /// sample indices are left in `drawn` (empty for streaming oracles) so that
    /// an estimator can reuse them (PAGE). Returns the minibatch loss.
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64;

    /// [`Oracle::stochastic_grad`] handing the gradient to `sink` piece by
    /// piece instead of writing it: `sink(offset, piece)` is called for
    /// consecutive pieces that cover `0..dim` in order, each entry once, and
    /// the pieces' values widened to f64 are bit for bit what
    /// `stochastic_grad` would write (same `rng` draws, same `drawn`).
    ///
    /// Why: a network computes its gradient in its own (f32) buffers, and an
    /// estimator that only folds the gradient into its state (momentum) can
    /// read it there, saving a write and a read of a d-vector per round. The
    /// default computes into `buf` (length dim) and hands it over whole.
    fn stochastic_grad_with(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        buf: &mut [f64],
        sink: &mut dyn FnMut(usize, GradPiece<'_>),
    ) -> f64 {
        let loss = self.stochastic_grad(x, batch, rng, drawn, buf);
        sink(0, GradPiece::F64(buf));
        loss
    }

    /// The gradient of the samples `idx` (finite sums only; PAGE evaluates the
    /// same minibatch at two points). Returns the minibatch loss.
    ///
    /// # Panics
    /// Streaming oracles panic; methods that need this check
    /// [`Oracle::num_samples`] when they are configured.
    fn indexed_grad(&mut self, x: &[f64], idx: &[u32], grad: &mut [f64]) -> f64;
}

/// The receiver of a gradient's pieces: `sink(offset, piece)`.
pub type GradSink<'a> = dyn FnMut(usize, GradPiece<'_>) + 'a;

/// Consecutive entries of a gradient, in the arithmetic the oracle computed
/// them in (see [`Oracle::stochastic_grad_with`]).
#[derive(Debug, Clone, Copy)]
pub enum GradPiece<'a> {
    /// Single precision (network oracles).
    F32(&'a [f32]),
    /// Double precision.
    F64(&'a [f64]),
}

impl GradPiece<'_> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            GradPiece::F32(v) => v.len(),
            GradPiece::F64(v) => v.len(),
        }
    }

    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Widens the piece into `dst` (same length).
    pub fn write_to(&self, dst: &mut [f64]) {
        assert_eq!(dst.len(), self.len(), "gradient piece length");
        match self {
            GradPiece::F32(v) => dst.iter_mut().zip(*v).for_each(|(d, &s)| *d = f64::from(s)),
            GradPiece::F64(v) => dst.copy_from_slice(v),
        }
    }
}

/// Draws `batch` distinct indices out of `0..n` uniformly (Floyd's algorithm
/// for small batches, a partial Fisher–Yates shuffle otherwise), sorted
/// ascending so that sums are taken in a fixed order.
pub fn sample_without_replacement(n: usize, batch: usize, rng: &mut Rng, out: &mut Vec<u32>) {
    use rand::Rng as _;
    assert!(batch <= n, "batch {batch} larger than population {n}");
    out.clear();
    if batch == n {
        out.extend(0..n as u32);
        return;
    }
    if batch * 8 < n {
        // Floyd: exactly `batch` draws, dedup by linear search on small sets or by sort.
        for j in (n - batch)..n {
            let t = rng.gen_range(0..=j) as u32;
            if out.contains(&t) {
                out.push(j as u32);
            } else {
                out.push(t);
            }
        }
    } else {
        out.extend(0..n as u32);
        for i in 0..batch {
            let j = rng.gen_range(i..n);
            out.swap(i, j);
        }
        out.truncate(batch);
    }
    out.sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    #[test]
    fn sampling_is_distinct_sorted_and_uniform() {
        let mut out = Vec::new();
        let mut counts = [0u32; 20];
        for round in 0..4000 {
            let mut rng = stream(1, Purpose::Sample, 0, round);
            sample_without_replacement(20, 5, &mut rng, &mut out);
            assert_eq!(out.len(), 5);
            assert!(out.windows(2).all(|w| w[0] < w[1]));
            for &i in &out {
                counts[i as usize] += 1;
            }
        }
        // each index has inclusion probability 1/4: 1000 expected, sd ~ 27
        for c in counts {
            assert!((850..1150).contains(&c), "{c}");
        }
        let mut rng = stream(1, Purpose::Sample, 0, 0);
        sample_without_replacement(10, 9, &mut rng, &mut out);
        assert_eq!(out.len(), 9);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
    }
}
