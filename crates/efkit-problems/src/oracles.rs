//! Finite-sum oracles on a worker's shard of a dataset.
//!
//! Worker i owns N_i rows a_j (stored contiguously as its own CSR matrix) and
//! targets y_j. Both losses are of the form
//!
//! ```text
//! f_i(x) = (1/N_i) sum_j phi(a_j^T x, y_j) + r(x)
//! ```
//!
//! * [`LogisticNonconvex`] (EF21, Richtarik, Sokolov & Fatkhullin, NeurIPS
//!   2021, §"Experiments", and EF21 with Bells & Whistles; algorithms.md
//!   §10.1 problem A): phi(z, y) = log(1 + exp(-y z)) and the nonconvex
//!   regularizer r(x) = lambda sum_k x_k^2 / (1 + x_k^2), lambda = 0.1 by
//!   default, with gradient 2 lambda x_k / (1 + x_k^2)^2.
//! * [`LeastSquares`] (EF21 PL experiments, algorithms.md §10.1 problem B):
//!   phi(z, y) = (z - y)^2 with the (mapped) labels as targets, r = 0.
//!
//! The gradient is (1/N_i) sum_j phi'(a_j^T x, y_j) a_j + grad r(x), computed
//! with the loss in one pass over the rows (a dot product and a scatter per
//! row while the row is in cache). Nothing is allocated per call.
//!
//! Minibatches ([`Oracle::stochastic_grad`], [`Oracle::indexed_grad`]) use
//! the batch mean (1/|B|) sum_{j in B} phi(...) plus the full regularizer, so
//! a minibatch of all rows in ascending order gives bit-for-bit the full loss
//! and gradient (the same floating-point operations in the same order).
//!
//! Numerics: with m = y z and e = exp(-|m|), log(1 + exp(-m)) is computed as
//! max(-m, 0) + log1p(e) and the sigmoid from the same e, which never
//! overflows and keeps full relative accuracy for large |m|.

use efkit_core::oracle::{sample_without_replacement, Oracle};
use efkit_core::rng::Rng;

use crate::csr::{sparse_axpy_unchecked, sparse_dot_unchecked, CsrMatrix};
use crate::error::{ProblemError, Result};

/// Default regularization weight of the EF21 experiments.
pub const DEFAULT_LAMBDA: f64 = 0.1;

/// Per-sample loss phi(z, y) and its derivative in z.
trait SampleLoss {
    fn value(z: f64, y: f64) -> f64;
    fn value_deriv(z: f64, y: f64) -> (f64, f64);
    /// The derivative alone; bit-identical to `value_deriv(z, y).1`.
    fn deriv(z: f64, y: f64) -> f64;
}

/// log(1 + exp(-y z)).
struct Logistic;

impl SampleLoss for Logistic {
    #[inline(always)]
    fn value(z: f64, y: f64) -> f64 {
        let m = y * z;
        (-m).max(0.0) + (-m.abs()).exp().ln_1p()
    }

    #[inline(always)]
    fn value_deriv(z: f64, y: f64) -> (f64, f64) {
        let m = y * z;
        let e = (-m.abs()).exp();
        let loss = (-m).max(0.0) + e.ln_1p();
        // sigmoid(-m) = 1 / (1 + exp(m))
        let s = if m >= 0.0 {
            e / (1.0 + e)
        } else {
            1.0 / (1.0 + e)
        };
        (loss, -y * s)
    }

    #[inline(always)]
    fn deriv(z: f64, y: f64) -> f64 {
        let m = y * z;
        let e = (-m.abs()).exp();
        let s = if m >= 0.0 {
            e / (1.0 + e)
        } else {
            1.0 / (1.0 + e)
        };
        -y * s
    }
}

/// (z - y)^2.
struct Squared;

impl SampleLoss for Squared {
    #[inline(always)]
    fn value(z: f64, y: f64) -> f64 {
        let r = z - y;
        r * r
    }

    #[inline(always)]
    fn value_deriv(z: f64, y: f64) -> (f64, f64) {
        let r = z - y;
        (r * r, 2.0 * r)
    }

    #[inline(always)]
    fn deriv(z: f64, y: f64) -> f64 {
        2.0 * (z - y)
    }
}

/// Numerically stable log(1 + exp(t)).
pub fn softplus(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// Numerically stable logistic sigmoid 1 / (1 + exp(-t)).
pub fn sigmoid(t: f64) -> f64 {
    let e = (-t.abs()).exp();
    if t >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// A worker's data: its rows (contiguous CSR) and targets.
#[derive(Debug, Clone, PartialEq)]
struct Shard {
    a: CsrMatrix,
    y: Vec<f64>,
}

impl Shard {
    fn new(a: CsrMatrix, y: Vec<f64>) -> Result<Self> {
        if a.n_rows() == 0 {
            return Err(ProblemError::invalid(
                "shard",
                "a worker needs at least one row",
            ));
        }
        if y.len() != a.n_rows() {
            return Err(ProblemError::invalid(
                "y",
                format!("{} targets for {} rows", y.len(), a.n_rows()),
            ));
        }
        if let Some(j) = y.iter().position(|v| !v.is_finite()) {
            return Err(ProblemError::invalid(
                "y",
                format!("target {j} is not finite"),
            ));
        }
        Ok(Shard { a, y })
    }

    #[track_caller]
    fn check(&self, x: &[f64], grad: Option<&[f64]>) {
        let d = self.a.n_cols();
        assert_eq!(
            x.len(),
            d,
            "oracle: x has length {}, the model dimension is {d}",
            x.len()
        );
        if let Some(g) = grad {
            assert_eq!(
                g.len(),
                d,
                "oracle: grad has length {}, the model dimension is {d}",
                g.len()
            );
        }
    }

    #[track_caller]
    fn check_idx(&self, idx: &[u32]) {
        assert!(!idx.is_empty(), "oracle: empty minibatch");
        let n = self.a.n_rows();
        if let Some(&bad) = idx.iter().find(|&&j| j as usize >= n) {
            panic!("oracle: sample index {bad} out of range for {n} local samples");
        }
    }

    /// sum_j phi over `rows`; grad <- sum_j phi'(.) a_j (overwritten).
    /// Callers have checked `x.len() == grad.len() == n_cols`.
    #[inline(always)]
    fn sum_loss_grad<L: SampleLoss>(
        &self,
        x: &[f64],
        rows: impl Iterator<Item = usize>,
        grad: &mut [f64],
    ) -> f64 {
        let d = self.a.n_cols();
        assert!(x.len() == d && grad.len() == d);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let indptr = self.a.indptr();
        let (indices, values) = (self.a.indices(), self.a.values());
        let mut total = 0.0;
        for j in rows {
            let (s, e) = (indptr[j], indptr[j + 1]);
            let (idx, val) = (&indices[s..e], &values[s..e]);
            // SAFETY: CSR column indices are < n_cols == x.len() == grad.len().
            let z = unsafe { sparse_dot_unchecked(idx, val, x) };
            let (l, dl) = L::value_deriv(z, self.y[j]);
            total += l;
            // SAFETY: as above.
            unsafe { sparse_axpy_unchecked(dl, idx, val, grad) };
        }
        total
    }

    /// grad <- sum_j phi'(.) a_j over all rows (no loss: one exp per row less).
    #[inline(always)]
    fn sum_grad<L: SampleLoss>(&self, x: &[f64], grad: &mut [f64]) {
        let d = self.a.n_cols();
        assert!(x.len() == d && grad.len() == d);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let indptr = self.a.indptr();
        let (indices, values) = (self.a.indices(), self.a.values());
        for j in 0..self.a.n_rows() {
            let (s, e) = (indptr[j], indptr[j + 1]);
            let (idx, val) = (&indices[s..e], &values[s..e]);
            // SAFETY: CSR column indices are < n_cols == x.len() == grad.len().
            let z = unsafe { sparse_dot_unchecked(idx, val, x) };
            let dl = L::deriv(z, self.y[j]);
            // SAFETY: as above.
            unsafe { sparse_axpy_unchecked(dl, idx, val, grad) };
        }
    }

    #[inline(always)]
    fn sum_loss<L: SampleLoss>(&self, x: &[f64], rows: impl Iterator<Item = usize>) -> f64 {
        assert_eq!(x.len(), self.a.n_cols());
        let mut total = 0.0;
        for j in rows {
            let (idx, val) = self.a.row(j);
            // SAFETY: CSR column indices are < n_cols == x.len().
            let z = unsafe { sparse_dot_unchecked(idx, val, x) };
            total += L::value(z, self.y[j]);
        }
        total
    }
}

/// Scales the data part by 1/count; returns the scaled loss.
#[inline]
fn finish_mean(total: f64, count: usize, grad: &mut [f64]) -> f64 {
    let inv = 1.0 / count as f64;
    grad.iter_mut().for_each(|g| *g *= inv);
    total * inv
}

/// lambda sum_k x_k^2/(1+x_k^2); adds its gradient to `grad` when given.
#[inline]
fn nonconvex_reg(lambda: f64, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
    if lambda == 0.0 {
        return 0.0;
    }
    let mut r = 0.0;
    match grad {
        Some(g) => {
            for (gk, &xk) in g.iter_mut().zip(x) {
                let q = 1.0 + xk * xk;
                r += xk * xk / q;
                *gk += 2.0 * lambda * xk / (q * q);
            }
        }
        None => {
            for &xk in x {
                r += xk * xk / (1.0 + xk * xk);
            }
        }
    }
    lambda * r
}

/// Logistic regression with the nonconvex regularizer of the EF21 papers:
///
/// f_i(x) = (1/N_i) sum_j log(1 + exp(-y_j a_j^T x)) + lambda sum_k x_k^2/(1 + x_k^2).
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticNonconvex {
    shard: Shard,
    lambda: f64,
}

impl LogisticNonconvex {
    /// An oracle on the rows `a` with labels `y` (normally -1/+1) and weight
    /// `lambda` (finite, >= 0; [`DEFAULT_LAMBDA`] in the papers).
    pub fn new(a: CsrMatrix, y: Vec<f64>, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(ProblemError::invalid(
                "lambda",
                format!("must be finite and >= 0, got {lambda}"),
            ));
        }
        Ok(LogisticNonconvex {
            shard: Shard::new(a, y)?,
            lambda,
        })
    }

    /// The local data matrix A_i.
    pub fn a(&self) -> &CsrMatrix {
        &self.shard.a
    }

    /// The local labels.
    pub fn y(&self) -> &[f64] {
        &self.shard.y
    }

    /// The regularization weight.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}

/// Least squares f_i(x) = (1/N_i) sum_j (a_j^T x - y_j)^2 (the EF21 PL
/// experiments; the gradient is (2/N_i) A_i^T (A_i x - y)).
#[derive(Debug, Clone, PartialEq)]
pub struct LeastSquares {
    shard: Shard,
}

impl LeastSquares {
    /// An oracle on the rows `a` with targets `y`.
    pub fn new(a: CsrMatrix, y: Vec<f64>) -> Result<Self> {
        Ok(LeastSquares {
            shard: Shard::new(a, y)?,
        })
    }

    /// The local data matrix A_i.
    pub fn a(&self) -> &CsrMatrix {
        &self.shard.a
    }

    /// The local targets.
    pub fn y(&self) -> &[f64] {
        &self.shard.y
    }
}

macro_rules! impl_oracle {
    ($ty:ty, $loss:ty, $lambda:expr) => {
        impl Oracle for $ty {
            fn dim(&self) -> usize {
                self.shard.a.n_cols()
            }

            fn num_samples(&self) -> Option<usize> {
                Some(self.shard.a.n_rows())
            }

            #[track_caller]
            fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
                self.shard.check(x, Some(grad));
                let n = self.shard.a.n_rows();
                let total = self.shard.sum_loss_grad::<$loss>(x, 0..n, grad);
                let data = finish_mean(total, n, grad);
                data + nonconvex_reg($lambda(self), x, Some(grad))
            }

            #[track_caller]
            fn grad(&mut self, x: &[f64], grad: &mut [f64]) {
                self.shard.check(x, Some(grad));
                let n = self.shard.a.n_rows();
                self.shard.sum_grad::<$loss>(x, grad);
                finish_mean(0.0, n, grad);
                nonconvex_reg($lambda(self), x, Some(grad));
            }

            #[track_caller]
            fn loss(&mut self, x: &[f64]) -> f64 {
                self.shard.check(x, None);
                let n = self.shard.a.n_rows();
                let total = self.shard.sum_loss::<$loss>(x, 0..n);
                total * (1.0 / n as f64) + nonconvex_reg($lambda(self), x, None)
            }

            #[track_caller]
            fn stochastic_grad(
                &mut self,
                x: &[f64],
                batch: usize,
                rng: &mut Rng,
                drawn: &mut Vec<u32>,
                grad: &mut [f64],
            ) -> f64 {
                let n = self.shard.a.n_rows();
                assert!(
                    batch >= 1 && batch <= n,
                    "oracle: batch size {batch} must be in 1..={n} (local samples)"
                );
                sample_without_replacement(n, batch, rng, drawn);
                self.indexed_grad(x, drawn, grad)
            }

            #[track_caller]
            fn indexed_grad(&mut self, x: &[f64], idx: &[u32], grad: &mut [f64]) -> f64 {
                self.shard.check(x, Some(grad));
                self.shard.check_idx(idx);
                let rows = idx.iter().map(|&j| j as usize);
                let total = self.shard.sum_loss_grad::<$loss>(x, rows, grad);
                let data = finish_mean(total, idx.len(), grad);
                data + nonconvex_reg($lambda(self), x, Some(grad))
            }
        }
    };
}

impl_oracle!(LogisticNonconvex, Logistic, |s: &LogisticNonconvex| s
    .lambda);
impl_oracle!(LeastSquares, Squared, |_s: &LeastSquares| 0.0);

#[cfg(test)]
mod tests {
    use super::*;
    use efkit_core::rng::{stream, Purpose};
    use rand::Rng as _;

    fn random_problem(n: usize, d: usize, density: f64, seed: u64) -> (CsrMatrix, Vec<f64>) {
        let mut rng = stream(seed, Purpose::Setup, 0, 0);
        let mut dense = vec![0.0; n * d];
        for v in dense.iter_mut() {
            if rng.gen::<f64>() < density {
                *v = rng.gen_range(-2.0..2.0);
            }
        }
        let y = (0..n)
            .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
            .collect();
        (CsrMatrix::from_dense(n, d, &dense), y)
    }

    fn finite_diff(o: &mut dyn Oracle, x: &[f64]) -> Vec<f64> {
        let h = 1e-6;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|k| {
                xp[k] = x[k] + h;
                let fp = o.loss(&xp);
                xp[k] = x[k] - h;
                let fm = o.loss(&xp);
                xp[k] = x[k];
                (fp - fm) / (2.0 * h)
            })
            .collect()
    }

    fn check_fd(o: &mut dyn Oracle, x: &[f64]) {
        let mut g = vec![0.0; x.len()];
        let f = o.loss_grad(x, &mut g);
        assert_eq!(f, o.loss(x), "loss_grad and loss must agree bit for bit");
        let fd = finite_diff(o, x);
        for (k, (a, b)) in g.iter().zip(&fd).enumerate() {
            assert!(
                (a - b).abs() <= 1e-7 * (1.0 + b.abs()),
                "coord {k}: {a} vs fd {b}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (a, y) = random_problem(40, 7, 0.6, 1);
        let x: Vec<f64> = (0..7).map(|k| 0.3 * k as f64 - 1.0).collect();
        check_fd(
            &mut LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap(),
            &x,
        );
        check_fd(
            &mut LogisticNonconvex::new(a.clone(), y.clone(), 0.0).unwrap(),
            &x,
        );
        let targets: Vec<f64> = y
            .iter()
            .enumerate()
            .map(|(j, v)| v * 0.5 + j as f64 * 0.01)
            .collect();
        check_fd(&mut LeastSquares::new(a, targets).unwrap(), &x);
    }

    #[test]
    fn logistic_matches_naive_formula_and_is_stable() {
        let (a, y) = random_problem(30, 5, 0.8, 2);
        let x = [0.5, -1.0, 2.0, 0.0, 0.25];
        let mut o = LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap();
        let naive: f64 = (0..30)
            .map(|j| (1.0 + (-y[j] * a.row_dot(j, &x)).exp()).ln())
            .sum::<f64>()
            / 30.0
            + 0.1 * x.iter().map(|v| v * v / (1.0 + v * v)).sum::<f64>();
        assert!((o.loss(&x) - naive).abs() < 1e-13);
        // huge margins: no overflow, loss ~ |m| for wrong-signed, ~0 for right-signed
        let big = [1e4, 1e4, 1e4, 1e4, 1e4];
        let mut g = [0.0; 5];
        let f = o.loss_grad(&big, &mut g);
        assert!(f.is_finite() && g.iter().all(|v| v.is_finite()));
        assert!((softplus(800.0) - 800.0).abs() < 1e-12);
        assert_eq!(softplus(-800.0), 0.0);
        assert!((softplus(-30.0) - (-30.0f64).exp()).abs() < 1e-25);
        assert_eq!(sigmoid(800.0), 1.0);
        assert!((sigmoid(-700.0) - (-700.0f64).exp()).abs() < 1e-310);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    #[test]
    fn minibatch_of_all_rows_is_the_full_gradient_bitwise() {
        let (a, y) = random_problem(57, 9, 0.5, 3);
        let x: Vec<f64> = (0..9).map(|k| (k as f64).sin()).collect();
        let all: Vec<u32> = (0..57).collect();
        let mut oracles: Vec<Box<dyn Oracle>> = vec![
            Box::new(LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap()),
            Box::new(LeastSquares::new(a, y).unwrap()),
        ];
        for o in oracles.iter_mut() {
            let (mut g1, mut g2, mut g3) = (vec![0.0; 9], vec![0.0; 9], vec![0.0; 9]);
            let f1 = o.loss_grad(&x, &mut g1);
            let f2 = o.indexed_grad(&x, &all, &mut g2);
            let mut rng = stream(1, Purpose::Sample, 0, 0);
            let mut drawn = Vec::new();
            let f3 = o.stochastic_grad(&x, 57, &mut rng, &mut drawn, &mut g3);
            assert_eq!(drawn, all);
            assert_eq!((f1, &g1), (f2, &g2));
            assert_eq!((f1, &g1), (f3, &g3));
        }
    }

    #[test]
    fn minibatch_is_the_batch_mean_plus_regularizer() {
        let (a, y) = random_problem(20, 4, 0.7, 4);
        let x = [0.3, -0.2, 1.5, -2.0];
        let mut o = LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap();
        let idx = [2u32, 7, 11];
        let mut g = [0.0; 4];
        let f = o.indexed_grad(&x, &idx, &mut g);
        let rows: Vec<usize> = idx.iter().map(|&j| j as usize).collect();
        let sub = a.select_rows(&rows);
        let suby: Vec<f64> = rows.iter().map(|&j| y[j]).collect();
        let mut o2 = LogisticNonconvex::new(sub, suby, 0.1).unwrap();
        let mut g2 = [0.0; 4];
        let f2 = o2.loss_grad(&x, &mut g2);
        assert_eq!((f, g), (f2, g2));
        // the stochastic gradient is unbiased: average over many draws ~ full gradient
        let mut full = [0.0; 4];
        o.loss_grad(&x, &mut full);
        let mut mean = [0.0; 4];
        let mut drawn = Vec::new();
        let reps = 4000;
        for r in 0..reps {
            let mut rng = stream(9, Purpose::Sample, 0, r);
            o.stochastic_grad(&x, 5, &mut rng, &mut drawn, &mut g);
            assert_eq!(drawn.len(), 5);
            for k in 0..4 {
                mean[k] += g[k] / reps as f64;
            }
        }
        for k in 0..4 {
            assert!((mean[k] - full[k]).abs() < 0.02, "{mean:?} vs {full:?}");
        }
    }

    #[test]
    fn constructor_and_contract_checks() {
        let (a, y) = random_problem(5, 3, 0.9, 5);
        assert!(LogisticNonconvex::new(a.clone(), y.clone(), f64::NAN).is_err());
        assert!(LogisticNonconvex::new(a.clone(), y.clone(), -1.0).is_err());
        assert!(LogisticNonconvex::new(a.clone(), y[..4].to_vec(), 0.1).is_err());
        assert!(LeastSquares::new(CsrMatrix::empty(3), vec![]).is_err());
        let mut o = LeastSquares::new(a, y).unwrap();
        assert_eq!(o.dim(), 3);
        assert_eq!(o.num_samples(), Some(5));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g = [0.0; 3];
            o.indexed_grad(&[0.0; 3], &[5], &mut g)
        }));
        assert!(r.is_err());
    }
}
