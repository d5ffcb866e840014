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
//! The gradient is (1/N_i) sum_j phi'(a_j^T x, y_j) a_j + grad r(x) =
//! (1/N_i) A_i^T w + grad r(x) with w_j = phi'(a_j^T x, y_j). A full gradient
//! takes three passes over a worker's data (see [`crate::kernels`]): z = A_i x
//! with the rows in sliced ELLPACK layout (8 rows advanced together), w from z
//! in one vectorized loop (AVX2 when the CPU has it; the same bits without),
//! and A_i^T w with the columns in sliced ELLPACK layout. Every sum is still
//! taken in the order of the plain CSR loops (a row's entries by column, a
//! column's entries by row), so the result is bit-for-bit the one-pass CSR
//! loop (a dot product and a scatter per row) that minibatches use. Data whose
//! stored values are all 1 (w8a, a9a, mushrooms) is processed as a sparsity
//! pattern (no value loads or multiplications; x * 1.0 = x, so again the same
//! bits); [`LogisticNonconvex::with_unit_values_kernel`] switches that off
//! for comparisons. Nothing is allocated per call: the oracle keeps its
//! scratch vectors.
//!
//! Minibatches ([`Oracle::stochastic_grad`], [`Oracle::indexed_grad`]) use
//! the batch mean (1/|B|) sum_{j in B} phi(...) plus the full regularizer, so
//! a minibatch of all rows in ascending order gives bit-for-bit the full loss
//! and gradient (the same floating-point operations in the same order).
//!
//! Numerics: with m = y z and e = exp(-|m|), log(1 + exp(-m)) is computed as
//! max(-m, 0) + log1p(e) and the sigmoid from the same e, which never
//! overflows and keeps full relative accuracy for large |m|. e comes from
//! [`exp_neg_abs`] (at most 1 ulp from `f64::exp`; branch-free, so
//! the loop over rows vectorizes) in every path, so losses and gradients agree
//! bit for bit between [`Oracle::loss`], [`Oracle::loss_grad`],
//! [`Oracle::grad`] and the minibatch calls.

use efkit_core::oracle::{sample_without_replacement, Oracle};
use efkit_core::rng::Rng;

use crate::csr::{
    pattern_add_unchecked, pattern_sum_unchecked, sparse_axpy_unchecked, sparse_dot_unchecked,
    CsrMatrix,
};
use crate::error::{ProblemError, Result};
use crate::kernels::{exp_neg_abs, SlicedEll};

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

/// -y sigmoid(-m) = -y / (1 + exp(m)) from m = y z and e = exp(-|m|);
/// branch-free (one division, selected numerator).
#[inline(always)]
fn logistic_deriv(m: f64, e: f64, y: f64) -> f64 {
    // sigmoid(-m) = e / (1 + e) for m >= 0, 1 / (1 + e) otherwise
    let num = if m >= 0.0 { e } else { 1.0 };
    -y * (num / (1.0 + e))
}

impl SampleLoss for Logistic {
    #[inline(always)]
    fn value(z: f64, y: f64) -> f64 {
        let m = y * z;
        (-m).max(0.0) + exp_neg_abs(m).ln_1p()
    }

    #[inline(always)]
    fn value_deriv(z: f64, y: f64) -> (f64, f64) {
        let m = y * z;
        let e = exp_neg_abs(m);
        let loss = (-m).max(0.0) + e.ln_1p();
        (loss, logistic_deriv(m, e, y))
    }

    #[inline(always)]
    fn deriv(z: f64, y: f64) -> f64 {
        let m = y * z;
        logistic_deriv(m, exp_neg_abs(m), y)
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

#[inline(always)]
fn derivs_body<L: SampleLoss>(z: &[f64], y: &[f64], w: &mut [f64]) {
    for ((w, &z), &y) in w.iter_mut().zip(z).zip(y) {
        *w = L::deriv(z, y);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn derivs_avx2<L: SampleLoss>(z: &[f64], y: &[f64], w: &mut [f64]) {
    derivs_body::<L>(z, y, w)
}

/// w_j = phi'(z_j, y_j) over a whole vector: 4 lanes with AVX2, 2 without
/// (the same IEEE operations, so the same bits).
fn derivs<L: SampleLoss>(z: &[f64], y: &[f64], w: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2.
        unsafe { derivs_avx2::<L>(z, y, w) };
        return;
    }
    derivs_body::<L>(z, y, w)
}

/// The sliced ELLPACK copies of a shard and the scratch of a full gradient.
#[derive(Debug, Clone)]
struct FullKernel {
    /// Rows of A (z = A x).
    rows: SlicedEll,
    /// Columns of A (g = A^T w).
    cols: SlicedEll,
    /// x and the sentinel 0 (d + 1).
    xe: Vec<f64>,
    /// z (n + 1, the last entry is scratch).
    z: Vec<f64>,
    /// w and the sentinel 0 (n + 1).
    w: Vec<f64>,
    /// A^T w (d + 1, the last entry is scratch).
    g: Vec<f64>,
}

impl FullKernel {
    /// `None` when the counts do not fit 32-bit indices (the CSR loops are used).
    fn new(a: &CsrMatrix, pattern_only: bool) -> Option<Self> {
        let (n, d) = (a.n_rows(), a.n_cols());
        Some(FullKernel {
            rows: SlicedEll::rows_of(a, pattern_only)?,
            cols: SlicedEll::cols_of(a, pattern_only)?,
            xe: vec![0.0; d + 1],
            z: vec![0.0; n + 1],
            w: vec![0.0; n + 1],
            g: vec![0.0; d + 1],
        })
    }

    /// z = A x (into `self.z[..n]`).
    #[inline]
    fn dots(&mut self, x: &[f64]) {
        let d = x.len();
        self.xe[..d].copy_from_slice(x);
        self.xe[d] = 0.0;
        self.rows.apply(&self.xe, &mut self.z);
    }

    /// z = A x, w = phi'(z, y), grad = A^T w (overwritten).
    #[inline]
    fn grad<L: SampleLoss>(&mut self, x: &[f64], y: &[f64], grad: &mut [f64]) {
        self.dots(x);
        let n = y.len();
        derivs::<L>(&self.z[..n], y, &mut self.w[..n]);
        self.w[n] = 0.0;
        self.cols.apply(&self.w, &mut self.g);
        grad.copy_from_slice(&self.g[..grad.len()]);
    }
}

/// A worker's data: its rows (contiguous CSR) and targets, and the kernels.
#[derive(Debug, Clone)]
struct Shard {
    a: CsrMatrix,
    y: Vec<f64>,
    /// The pattern-only kernels are in use (all stored values are 1).
    unit: bool,
    /// Full-gradient kernels; `None` only for more than 2^32 - 2 rows or columns.
    full: Option<FullKernel>,
}

/// Equal data (the kernels give the same bits whichever is in use).
impl PartialEq for Shard {
    fn eq(&self, other: &Self) -> bool {
        self.a == other.a && self.y == other.y
    }
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
        let unit = a.has_unit_values();
        let full = FullKernel::new(&a, unit);
        Ok(Shard { a, y, unit, full })
    }

    /// Pattern-only kernels on (if the values allow) or off.
    fn set_unit_kernel(&mut self, on: bool) {
        let unit = on && self.a.has_unit_values();
        if unit != self.unit {
            self.unit = unit;
            self.full = FullKernel::new(&self.a, unit);
        }
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

    /// The one-pass CSR loop: sum_j phi over `rows`; grad <- sum_j phi'(.) a_j
    /// (overwritten). Callers have checked `x.len() == grad.len() == n_cols`.
    #[inline(always)]
    fn rows_loss_grad<L: SampleLoss, const UNIT: bool>(
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
            let z = unsafe {
                if UNIT {
                    pattern_sum_unchecked(idx, x)
                } else {
                    sparse_dot_unchecked(idx, val, x)
                }
            };
            let (l, dl) = L::value_deriv(z, self.y[j]);
            total += l;
            // SAFETY: as above.
            unsafe {
                if UNIT {
                    pattern_add_unchecked(dl, idx, grad)
                } else {
                    sparse_axpy_unchecked(dl, idx, val, grad)
                }
            }
        }
        total
    }

    /// sum_j phi over `rows`; grad <- sum_j phi'(.) a_j (overwritten), by the
    /// CSR loop.
    #[inline(always)]
    fn sum_loss_grad_rows<L: SampleLoss>(
        &self,
        x: &[f64],
        rows: impl Iterator<Item = usize>,
        grad: &mut [f64],
    ) -> f64 {
        if self.unit {
            self.rows_loss_grad::<L, true>(x, rows, grad)
        } else {
            self.rows_loss_grad::<L, false>(x, rows, grad)
        }
    }

    /// sum_j phi over all rows; grad <- sum_j phi'(.) a_j (overwritten).
    #[inline(always)]
    fn sum_loss_grad<L: SampleLoss>(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        let n = self.a.n_rows();
        match self.full.as_mut() {
            Some(k) => {
                k.grad::<L>(x, &self.y, grad);
                let mut total = 0.0;
                for (&z, &y) in k.z[..n].iter().zip(&self.y) {
                    total += L::value(z, y);
                }
                total
            }
            None => self.sum_loss_grad_rows::<L>(x, 0..n, grad),
        }
    }

    /// grad <- sum_j phi'(.) a_j over all rows (no loss: no log1p).
    #[inline(always)]
    fn sum_grad<L: SampleLoss>(&mut self, x: &[f64], grad: &mut [f64]) {
        let n = self.a.n_rows();
        match self.full.as_mut() {
            Some(k) => k.grad::<L>(x, &self.y, grad),
            None => {
                self.sum_loss_grad_rows::<L>(x, 0..n, grad);
            }
        }
    }

    /// sum_j phi over all rows.
    #[inline(always)]
    fn sum_loss<L: SampleLoss>(&mut self, x: &[f64]) -> f64 {
        assert_eq!(x.len(), self.a.n_cols());
        let n = self.a.n_rows();
        let mut total = 0.0;
        match self.full.as_mut() {
            Some(k) => {
                k.dots(x);
                for (&z, &y) in k.z[..n].iter().zip(&self.y) {
                    total += L::value(z, y);
                }
            }
            None => {
                for j in 0..n {
                    let (idx, val) = self.a.row(j);
                    // SAFETY: CSR column indices are < n_cols == x.len().
                    let z = unsafe { sparse_dot_unchecked(idx, val, x) };
                    total += L::value(z, self.y[j]);
                }
            }
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

macro_rules! impl_kernel_switch {
    ($ty:ty) => {
        impl $ty {
            /// Whether the pattern-only kernels are in use: all stored values
            /// of the shard are 1 (binary features) and they were not
            /// switched off.
            pub fn unit_values_kernel(&self) -> bool {
                self.shard.unit
            }

            /// Switches the pattern-only kernels (no value loads or
            /// multiplications) on, which is the default when all stored
            /// values are 1 and has no effect otherwise, or off (the general
            /// kernels). The results are the same bits either way; the switch
            /// exists for tests and benchmarks.
            pub fn with_unit_values_kernel(mut self, on: bool) -> Self {
                self.shard.set_unit_kernel(on);
                self
            }
        }
    };
}

impl_kernel_switch!(LogisticNonconvex);
impl_kernel_switch!(LeastSquares);

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
                let total = self.shard.sum_loss_grad::<$loss>(x, grad);
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
                let total = self.shard.sum_loss::<$loss>(x);
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
                let total = self.shard.sum_loss_grad_rows::<$loss>(x, rows, grad);
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
            let mut g4 = vec![0.0; 9];
            o.grad(&x, &mut g4);
            assert_eq!(g1, g4, "grad writes the gradient of loss_grad");
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

    /// Binary rows with lengths 0..=max_len (varied, some empty), labels +-1.
    fn binary_problem(n: usize, d: usize, max_len: usize, seed: u64) -> (CsrMatrix, Vec<f64>) {
        let mut rng = stream(seed, Purpose::Setup, 0, 0);
        let mut dense = vec![0.0; n * d];
        for j in 0..n {
            let len = rng.gen_range(0..=max_len.min(d));
            for _ in 0..len {
                dense[j * d + rng.gen_range(0..d)] = 1.0;
            }
        }
        let y = (0..n)
            .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
            .collect();
        (CsrMatrix::from_dense(n, d, &dense), y)
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every entry point of two oracles on the same data, bit for bit.
    fn assert_same_bits(o1: &mut dyn Oracle, o2: &mut dyn Oracle, x: &[f64], n: usize) {
        let d = x.len();
        let (mut g1, mut g2) = (vec![0.0; d], vec![0.0; d]);
        let f1 = o1.loss_grad(x, &mut g1);
        let f2 = o2.loss_grad(x, &mut g2);
        assert_eq!((f1.to_bits(), bits(&g1)), (f2.to_bits(), bits(&g2)));
        assert_eq!(o1.loss(x).to_bits(), f1.to_bits());
        assert_eq!(o2.loss(x).to_bits(), f1.to_bits());
        o1.grad(x, &mut g2);
        assert_eq!(bits(&g2), bits(&g1), "grad vs loss_grad");
        o2.grad(x, &mut g2);
        assert_eq!(bits(&g2), bits(&g1), "grad vs loss_grad");
        let all: Vec<u32> = (0..n as u32).collect();
        let f3 = o1.indexed_grad(x, &all, &mut g2);
        assert_eq!(
            (f3.to_bits(), bits(&g2)),
            (f1.to_bits(), bits(&g1)),
            "CSR loop"
        );
        let f3 = o2.indexed_grad(x, &all, &mut g2);
        assert_eq!(
            (f3.to_bits(), bits(&g2)),
            (f1.to_bits(), bits(&g1)),
            "CSR loop"
        );
        let some: Vec<u32> = (0..n as u32).filter(|j| j % 3 != 1).collect();
        let f4 = o1.indexed_grad(x, &some, &mut g1);
        let f5 = o2.indexed_grad(x, &some, &mut g2);
        assert_eq!(
            (f4.to_bits(), bits(&g1)),
            (f5.to_bits(), bits(&g2)),
            "minibatch"
        );
    }

    #[test]
    fn unit_values_and_general_kernels_agree_bitwise() {
        // 203 rows (not a multiple of the 8 lanes), rows of 0..=25 entries
        let (n, d) = (203, 31);
        let (a, y) = binary_problem(n, d, 25, 11);
        assert!(a.has_unit_values());
        let x: Vec<f64> = (0..d).map(|k| (k as f64 * 0.91).sin() * 2.5).collect();
        let unit = LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap();
        assert!(unit.unit_values_kernel());
        let general = unit.clone().with_unit_values_kernel(false);
        assert!(!general.unit_values_kernel());
        assert_eq!(unit, general, "same data");
        assert_same_bits(&mut unit.clone(), &mut general.clone(), &x, n);
        // switching back on restores the pattern kernels
        assert!(general
            .clone()
            .with_unit_values_kernel(true)
            .unit_values_kernel());
        let ls = LeastSquares::new(a.clone(), y.clone()).unwrap();
        assert!(ls.unit_values_kernel());
        assert_same_bits(
            &mut ls.clone(),
            &mut ls.with_unit_values_kernel(false),
            &x,
            n,
        );
        // one value != 1: the general kernels, whatever is asked
        let mut v = a.values().to_vec();
        v[3] = 2.0;
        let b = CsrMatrix::from_parts(d, a.indptr().to_vec(), a.indices().to_vec(), v).unwrap();
        let o = LogisticNonconvex::new(b, y, 0.1).unwrap();
        assert!(!o.unit_values_kernel());
        assert!(!o.with_unit_values_kernel(true).unit_values_kernel());
    }

    #[test]
    fn full_kernels_match_an_independent_f64_computation() {
        // the sliced kernels against the plain formula with the platform's exp
        // (a different exp and summation layout: agreement to ~1e-12 relative)
        for (a, y, x) in [
            {
                let (a, y) = binary_problem(150, 23, 19, 12);
                let x: Vec<f64> = (0..23).map(|k| (k as f64 * 1.7).cos() * 3.0).collect();
                (a, y, x)
            },
            {
                let (a, y) = random_problem(97, 13, 0.4, 13);
                let x: Vec<f64> = (0..13).map(|k| (k as f64 * 0.3).sin() * 8.0).collect();
                (a, y, x)
            },
        ] {
            let (n, d) = (a.n_rows(), a.n_cols());
            let lambda = 0.1;
            let mut want_g = vec![0.0; d];
            let mut want_f = 0.0;
            for (j, &yj) in y.iter().enumerate() {
                let m = yj * a.row_dot(j, &x);
                want_f += (1.0 + (-m).exp()).ln();
                let s = -yj / (1.0 + m.exp());
                let (idx, val) = a.row(j);
                for (&c, &v) in idx.iter().zip(val) {
                    want_g[c as usize] += s * v;
                }
            }
            want_f /= n as f64;
            for (k, g) in want_g.iter_mut().enumerate() {
                let xk = x[k];
                *g = *g / n as f64 + 2.0 * lambda * xk / (1.0 + xk * xk).powi(2);
                want_f += lambda * xk * xk / (1.0 + xk * xk);
            }
            let mut o = LogisticNonconvex::new(a, y, lambda).unwrap();
            let mut g = vec![0.0; d];
            let f = o.loss_grad(&x, &mut g);
            assert!(
                (f - want_f).abs() <= 1e-12 * want_f.abs(),
                "{f} vs {want_f}"
            );
            let scale = want_g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (k, (a, b)) in g.iter().zip(&want_g).enumerate() {
                assert!((a - b).abs() <= 1e-12 * scale, "coord {k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn nan_and_huge_inputs() {
        let (a, y) = binary_problem(40, 9, 6, 14);
        let mut o = LogisticNonconvex::new(a, y, 0.1).unwrap();
        let mut g = vec![0.0; 9];
        let mut x = vec![0.5; 9];
        x[4] = f64::NAN;
        o.grad(&x, &mut g);
        assert!(g[4].is_nan(), "the NaN coordinate's regularizer");
        assert!(o.loss(&x).is_nan());
        // huge margins saturate: finite loss and gradient
        let x = vec![1e6; 9];
        let f = o.loss_grad(&x, &mut g);
        assert!(
            f.is_finite() && g.iter().all(|v| v.is_finite()),
            "{f} {g:?}"
        );
        let x = vec![-1e6; 9];
        let f = o.loss_grad(&x, &mut g);
        assert!(
            f.is_finite() && g.iter().all(|v| v.is_finite()),
            "{f} {g:?}"
        );
    }

    #[test]
    fn vectorized_derivatives_have_the_scalar_bits() {
        // margins of every size, both signs, zeros, subnormal e, NaN
        let mut z: Vec<f64> = (0..4001)
            .map(|i| (i as f64 - 2000.0) * 0.37)
            .chain([0.0, -0.0, 744.9, -745.5, 1e300, -1e300, f64::NAN, 1e-310])
            .collect();
        z.push(f64::INFINITY);
        let y: Vec<f64> = (0..z.len())
            .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
            .collect();
        let scalar: Vec<u64> = z
            .iter()
            .zip(&y)
            .map(|(&z, &y)| Logistic::deriv(z, y).to_bits())
            .collect();
        let mut w = vec![0.0; z.len()];
        derivs::<Logistic>(&z, &y, &mut w);
        assert_eq!(bits(&w), scalar);
        derivs_body::<Logistic>(&z, &y, &mut w);
        assert_eq!(bits(&w), scalar);
        for (&z, &y) in z.iter().zip(&y) {
            let (_, dv) = Logistic::value_deriv(z, y);
            assert_eq!(dv.to_bits(), Logistic::deriv(z, y).to_bits());
        }
    }
}
