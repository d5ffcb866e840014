//! Multiclass logistic regression with the nonconvex regularizer (MNIST).
//!
//! The problem of the main experiments of Fatkhullin, Tyurin & Richtarik,
//! "Momentum Provably Improves Error Feedback!" (NeurIPS 2023; algorithms.md
//! §10.3): c classes, l features, worker i holds m samples (a_j, y_j) and
//!
//! ```text
//! f_i(x_1..x_c) = -(1/m) sum_j log( exp(a_j^T x_{y_j}) / sum_{y=1..c} exp(a_j^T x_y) )
//!                 + lambda sum_{y=1..c} sum_{k=1..l} [x_y]_k^2 / (1 + [x_y]_k^2).
//! ```
//!
//! With scores s_y = a_j^T x_y and p = softmax(s), the per-sample loss is
//! logsumexp(s) - s_{y_j} and its gradient with respect to x_y is
//! (p_y - 1[y = y_j]) a_j; the regularizer adds 2 lambda [x_y]_k / (1 + [x_y]_k^2)^2.
//! logsumexp is computed as max(s) + log sum exp(s - max(s)), which never
//! overflows.
//!
//! Layout of the model vector (d = c l): feature-major, `x[k * c + y] = [x_y]_k`,
//! so the c weights touched by one nonzero pixel are contiguous in memory (one
//! cache line for c = 10 instead of ten). The layout is an internal choice; the
//! math above does not depend on it. [`MulticlassLogistic::index`] maps
//! (class, feature) to the position.
//!
//! Minibatches are the batch mean plus the full regularizer (as in
//! [`crate::oracles`]); a minibatch of all rows in ascending order is the full
//! loss and gradient bit for bit. Features are used as given; the MNIST loader
//! ([`crate::idx::Mnist::to_dataset`]) scales pixels to [0, 1]. Nothing is
//! allocated per call.

use efkit_core::oracle::{sample_without_replacement, Oracle};
use efkit_core::rng::Rng;

use crate::csr::CsrMatrix;
use crate::datasets::Dataset;
use crate::error::{ProblemError, Result};
use crate::idx::{load_mnist, MnistSplit};
use crate::split::{split, SplitKind};

/// Number of MNIST classes.
pub const MNIST_CLASSES: usize = 10;

/// One worker's multiclass logistic regression oracle.
#[derive(Debug, Clone, PartialEq)]
pub struct MulticlassLogistic {
    a: CsrMatrix,
    y: Vec<u32>,
    classes: usize,
    lambda: f64,
    /// Scores / probabilities of one sample (length c).
    s: Vec<f64>,
}

impl MulticlassLogistic {
    /// An oracle on rows `a` with class labels `labels` (integers in 0..classes,
    /// given as f64 as datasets store them), `classes >= 2` and weight `lambda`
    /// (finite, >= 0).
    pub fn new(a: CsrMatrix, labels: &[f64], classes: usize, lambda: f64) -> Result<Self> {
        if classes < 2 {
            return Err(ProblemError::invalid(
                "classes",
                format!("need at least 2 classes, got {classes}"),
            ));
        }
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(ProblemError::invalid(
                "lambda",
                format!("must be finite and >= 0, got {lambda}"),
            ));
        }
        if a.n_rows() == 0 {
            return Err(ProblemError::invalid(
                "shard",
                "a worker needs at least one row",
            ));
        }
        if labels.len() != a.n_rows() {
            return Err(ProblemError::invalid(
                "y",
                format!("{} labels for {} rows", labels.len(), a.n_rows()),
            ));
        }
        let mut y = Vec::with_capacity(labels.len());
        for (j, &l) in labels.iter().enumerate() {
            if !(l >= 0.0 && l < classes as f64 && l.fract() == 0.0) {
                return Err(ProblemError::invalid(
                    "y",
                    format!("label {j} is {l}, not a class in 0..{classes}"),
                ));
            }
            y.push(l as u32);
        }
        Ok(MulticlassLogistic {
            a,
            y,
            classes,
            lambda,
            s: vec![0.0; classes],
        })
    }

    /// Number of classes c.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Number of features l.
    pub fn features(&self) -> usize {
        self.a.n_cols()
    }

    /// The regularization weight lambda.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The local data matrix.
    pub fn a(&self) -> &CsrMatrix {
        &self.a
    }

    /// The local class labels.
    pub fn labels(&self) -> &[u32] {
        &self.y
    }

    /// Position of [x_class]_feature in the model vector (feature-major).
    #[inline]
    pub fn index(&self, class: usize, feature: usize) -> usize {
        feature * self.classes + class
    }

    #[track_caller]
    fn check(&self, x: &[f64], grad: Option<&[f64]>) {
        let d = self.a.n_cols() * self.classes;
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

    /// Sum over `rows` of the per-sample losses; when `grad` is given it is
    /// overwritten with the sum of the per-sample gradients.
    fn sum_rows(
        &mut self,
        x: &[f64],
        rows: impl Iterator<Item = usize>,
        mut grad: Option<&mut [f64]>,
    ) -> f64 {
        let c = self.classes;
        if let Some(g) = grad.as_deref_mut() {
            g.iter_mut().for_each(|v| *v = 0.0);
        }
        let indptr = self.a.indptr();
        let (indices, values) = (self.a.indices(), self.a.values());
        let s = &mut self.s;
        let mut total = 0.0;
        for j in rows {
            let (lo, hi) = (indptr[j], indptr[j + 1]);
            s.iter_mut().for_each(|v| *v = 0.0);
            for (&k, &v) in indices[lo..hi].iter().zip(&values[lo..hi]) {
                let base = k as usize * c;
                for (sy, xy) in s.iter_mut().zip(&x[base..base + c]) {
                    *sy += v * xy;
                }
            }
            let yj = self.y[j] as usize;
            let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let sy = s[yj];
            let mut z = 0.0;
            for v in s.iter_mut() {
                *v = (*v - m).exp();
                z += *v;
            }
            total += m + z.ln() - sy;
            if let Some(g) = grad.as_deref_mut() {
                // s <- p - e_y
                let inv = 1.0 / z;
                s.iter_mut().for_each(|v| *v *= inv);
                s[yj] -= 1.0;
                for (&k, &v) in indices[lo..hi].iter().zip(&values[lo..hi]) {
                    let base = k as usize * c;
                    for (gy, r) in g[base..base + c].iter_mut().zip(s.iter()) {
                        *gy += v * r;
                    }
                }
            }
        }
        total
    }

    /// lambda sum x^2/(1+x^2); adds its gradient to `grad` when given.
    fn reg(&self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let lambda = self.lambda;
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

    fn mean_plus_reg(
        &mut self,
        x: &[f64],
        rows: impl Iterator<Item = usize>,
        count: usize,
        grad: &mut [f64],
    ) -> f64 {
        let total = self.sum_rows(x, rows, Some(&mut *grad));
        let inv = 1.0 / count as f64;
        grad.iter_mut().for_each(|g| *g *= inv);
        total * inv + self.reg(x, Some(grad))
    }
}

impl Oracle for MulticlassLogistic {
    fn dim(&self) -> usize {
        self.a.n_cols() * self.classes
    }

    fn num_samples(&self) -> Option<usize> {
        Some(self.a.n_rows())
    }

    #[track_caller]
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        self.check(x, Some(grad));
        let n = self.a.n_rows();
        self.mean_plus_reg(x, 0..n, n, grad)
    }

    #[track_caller]
    fn loss(&mut self, x: &[f64]) -> f64 {
        self.check(x, None);
        let n = self.a.n_rows();
        let total = self.sum_rows(x, 0..n, None);
        total * (1.0 / n as f64) + self.reg(x, None)
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
        let n = self.a.n_rows();
        assert!(
            batch >= 1 && batch <= n,
            "oracle: batch size {batch} must be in 1..={n} (local samples)"
        );
        sample_without_replacement(n, batch, rng, drawn);
        self.indexed_grad(x, drawn, grad)
    }

    #[track_caller]
    fn indexed_grad(&mut self, x: &[f64], idx: &[u32], grad: &mut [f64]) -> f64 {
        self.check(x, Some(grad));
        assert!(!idx.is_empty(), "oracle: empty minibatch");
        let n = self.a.n_rows();
        if let Some(&bad) = idx.iter().find(|&&j| j as usize >= n) {
            panic!("oracle: sample index {bad} out of range for {n} local samples");
        }
        self.mean_plus_reg(x, idx.iter().map(|&j| j as usize), idx.len(), grad)
    }
}

/// Splits a dataset with class labels 0..classes among `workers` workers
/// (contiguous in file order with the remainder on the last worker, or
/// shuffled / label-sorted, see [`crate::split`]) into one oracle per worker.
pub fn oracles_from_dataset(
    data: &Dataset,
    classes: usize,
    workers: usize,
    split_kind: SplitKind,
    split_seed: u64,
    lambda: f64,
) -> Result<Vec<MulticlassLogistic>> {
    let sp = split(data.y(), workers, split_kind, split_seed)?;
    (0..workers)
        .map(|i| {
            let sub = data.select_rows(sp.rows(i));
            let (a, y) = sub.into_parts();
            MulticlassLogistic::new(a, &y, classes, lambda)
        })
        .collect()
}

/// The MNIST training set (60,000 images, pixels scaled to [0, 1], 784
/// features, 10 classes: d = 7,840), optionally only its first `rows` images,
/// split among `workers` workers (see [`crate::idx::mnist_dir`] for where the
/// files are looked for).
pub fn mnist_oracles(
    workers: usize,
    split_kind: SplitKind,
    split_seed: u64,
    lambda: f64,
    rows: Option<usize>,
) -> Result<Vec<MulticlassLogistic>> {
    let mnist = load_mnist(MnistSplit::Train)?;
    let mut data = mnist.to_dataset("mnist");
    if let Some(r) = rows {
        if r == 0 || r > data.n_rows() {
            return Err(ProblemError::invalid(
                "rows",
                format!("must be in 1..={}, got {r}", data.n_rows()),
            ));
        }
        let first: Vec<usize> = (0..r).collect();
        data = data.select_rows(&first);
    }
    if workers == 0 || workers > data.n_rows() {
        return Err(ProblemError::TooManyWorkers {
            rows: data.n_rows(),
            workers,
        });
    }
    oracles_from_dataset(
        &data,
        MNIST_CLASSES,
        workers,
        split_kind,
        split_seed,
        lambda,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use efkit_core::rng::{stream, Purpose};
    use rand::Rng as _;

    fn random_problem(m: usize, l: usize, c: usize, seed: u64) -> MulticlassLogistic {
        let mut rng = stream(seed, Purpose::Setup, 0, 0);
        let mut dense = vec![0.0; m * l];
        for v in dense.iter_mut() {
            if rng.gen::<f64>() < 0.6 {
                *v = rng.gen_range(0.0..1.0);
            }
        }
        let y: Vec<f64> = (0..m).map(|_| rng.gen_range(0..c) as f64).collect();
        MulticlassLogistic::new(CsrMatrix::from_dense(m, l, &dense), &y, c, 0.05).unwrap()
    }

    /// The naive formula, written from the math with class-major loops.
    fn naive_loss(o: &MulticlassLogistic, x: &[f64]) -> f64 {
        let (m, l, c) = (o.a.n_rows(), o.features(), o.classes());
        let dense = o.a.to_dense();
        let mut total = 0.0;
        for j in 0..m {
            let scores: Vec<f64> = (0..c)
                .map(|y| (0..l).map(|k| dense[j * l + k] * x[o.index(y, k)]).sum())
                .collect();
            let denom: f64 = scores.iter().map(|s| s.exp()).sum();
            total += -(scores[o.y[j] as usize].exp() / denom).ln();
        }
        total / m as f64 + o.lambda * x.iter().map(|v| v * v / (1.0 + v * v)).sum::<f64>()
    }

    #[test]
    fn gradient_matches_finite_differences_and_naive_loss() {
        let mut o = random_problem(30, 6, 4, 1);
        let d = o.dim();
        assert_eq!(d, 24);
        let mut rng = stream(2, Purpose::Setup, 0, 0);
        let x: Vec<f64> = (0..d).map(|_| rng.gen_range(-1.5..1.5)).collect();
        let mut g = vec![0.0; d];
        let f = o.loss_grad(&x, &mut g);
        assert_eq!(f, o.loss(&x), "loss_grad and loss agree bit for bit");
        assert!(
            (f - naive_loss(&o, &x)).abs() < 1e-12,
            "{f} vs {}",
            naive_loss(&o, &x)
        );
        let h = 1e-6;
        let mut xp = x.clone();
        for k in 0..d {
            xp[k] = x[k] + h;
            let fp = o.loss(&xp);
            xp[k] = x[k] - h;
            let fm = o.loss(&xp);
            xp[k] = x[k];
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (g[k] - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
                "coord {k}: {} vs fd {fd}",
                g[k]
            );
        }
    }

    #[test]
    fn full_minibatch_is_the_full_gradient_and_batches_are_means() {
        let mut o = random_problem(25, 5, 3, 3);
        let d = o.dim();
        let x: Vec<f64> = (0..d).map(|k| (k as f64 * 0.7).sin()).collect();
        let (mut g1, mut g2, mut g3) = (vec![0.0; d], vec![0.0; d], vec![0.0; d]);
        let f1 = o.loss_grad(&x, &mut g1);
        let all: Vec<u32> = (0..25).collect();
        let f2 = o.indexed_grad(&x, &all, &mut g2);
        assert_eq!((f1, &g1), (f2, &g2));
        let mut drawn = Vec::new();
        let f3 = o.stochastic_grad(
            &x,
            25,
            &mut stream(1, Purpose::Sample, 0, 0),
            &mut drawn,
            &mut g3,
        );
        assert_eq!((f1, &g1), (f3, &g3));
        // a minibatch of 3 is the mean of its single-sample gradients
        let idx = [2u32, 9, 17];
        let fb = o.indexed_grad(&x, &idx, &mut g2);
        let mut mean = vec![0.0; d];
        let mut fsum = 0.0;
        let reg = o.reg(&x, None);
        let mut greg = vec![0.0; d];
        o.reg(&x, Some(&mut greg));
        for &j in &idx {
            fsum += o.indexed_grad(&x, &[j], &mut g3) - reg;
            for k in 0..d {
                mean[k] += (g3[k] - greg[k]) / 3.0;
            }
        }
        assert!((fb - (fsum / 3.0 + reg)).abs() < 1e-12);
        for k in 0..d {
            assert!((g2[k] - (mean[k] + greg[k])).abs() < 1e-12);
        }
    }

    #[test]
    fn extreme_scores_do_not_overflow() {
        let mut o = random_problem(10, 4, 3, 4);
        let x = vec![500.0; o.dim()];
        let mut g = vec![0.0; o.dim()];
        let f = o.loss_grad(&x, &mut g);
        assert!(f.is_finite() && g.iter().all(|v| v.is_finite()));
        // equal scores: loss = ln c per sample plus the regularizer
        let z = vec![0.0; o.dim()];
        assert!((o.loss(&z) - (3.0f64).ln()).abs() < 1e-14);
    }

    #[test]
    fn bad_input_is_rejected() {
        let a = CsrMatrix::from_dense(2, 2, &[1.0, 0.0, 0.0, 1.0]);
        assert!(MulticlassLogistic::new(a.clone(), &[0.0, 3.0], 3, 0.1).is_err());
        assert!(MulticlassLogistic::new(a.clone(), &[0.0, 1.5], 3, 0.1).is_err());
        assert!(MulticlassLogistic::new(a.clone(), &[0.0], 3, 0.1).is_err());
        assert!(MulticlassLogistic::new(a.clone(), &[0.0, 1.0], 1, 0.1).is_err());
        assert!(MulticlassLogistic::new(a, &[0.0, 1.0], 3, -1.0).is_err());
    }

    #[test]
    fn mnist_shards() {
        let os = mnist_oracles(10, SplitKind::Contiguous, 0, 1e-3, Some(2_000)).unwrap();
        assert_eq!(os.len(), 10);
        assert!(os
            .iter()
            .all(|o| o.num_samples() == Some(200) && o.dim() == 7_840));
        // the first training image is a 5 (idx.rs test) and features are in [0, 1]
        assert_eq!(os[0].labels()[0], 5);
        assert!(os[0].a().values().iter().all(|&v| v > 0.0 && v <= 1.0));
        let sh = mnist_oracles(10, SplitKind::Shuffled, 1, 1e-3, Some(2_000)).unwrap();
        assert_ne!(sh[0].labels(), os[0].labels());
        assert!(mnist_oracles(3, SplitKind::Contiguous, 0, 1e-3, Some(0)).is_err());
    }
}
