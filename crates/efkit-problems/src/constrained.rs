//! Constrained, possibly nonsmooth problems for Safe-EF (Islamov, As &
//! Fatkhullin, "Safe-EF: Error Feedback for Nonsmooth Constrained
//! Optimization", ICML 2025, arXiv:2505.06053; algorithms.md §9):
//!
//! ```text
//! min_{x in X} f(x) = (1/n) sum_i f_i(x)   subject to   g(x) = (1/n) sum_i g_i(x) <= 0
//! ```
//!
//! with f_i, g_i convex and Lipschitz (possibly nonsmooth) and X a simple set
//! with a cheap projection (here: R^d or a Euclidean ball). Worker i only
//! knows f_i and g_i: it can evaluate them and a subgradient of each, exactly
//! ([`ConstrainedOracle::objective`], [`ConstrainedOracle::constraint`]) or
//! on a minibatch it draws itself ([`ConstrainedOracle::draw_batch`], then
//! [`ConstrainedOracle::batch_objective`] / [`ConstrainedOracle::batch_constraint`]
//! on the SAME batch). The batch is drawn at the current model because a
//! reinforcement-learning worker (design.md §1) draws its batch by running its
//! own robot with the policy x: one batch of trajectories then gives the reward
//! objective, the safety cost and both policy gradients.
//!
//! The data-based problems here are all of one form, a [`LinearBlock`] for f
//! and one for g (losses of linear predictions a_j^T x):
//!
//! ```text
//! f(x) = w_f sum_{j in F} phi(a_j^T x, y_j)
//! g(x) = w_g sum_{j in G} psi(a_j^T x, y_j) + offset [+ ||x||_1 - kappa]
//! ```
//!
//! * [`neyman_pearson`]: Neyman-Pearson classification (Rigollet & Tong, JMLR
//!   2011): minimize the average loss on one class subject to the average
//!   loss on the other class being at most tau, with the hinge loss
//!   max(0, 1 - y z) (nonsmooth) or the logistic loss log(1 + exp(-y z)), in a
//!   ball X = {||x|| <= r}. The ball is needed: LibSVM sets have features that
//!   occur in one class only (a9a: 5, w8a: 54), along which the loss of one
//!   class decreases without bound while the other is unchanged, so without X
//!   the logistic problem has no minimizer.
//! * [`l1_regression`]: least absolute deviations |a_j^T x - y_j| in a ball,
//!   optionally with the l1-norm budget g(x) = ||x||_1 - kappa <= 0; without it
//!   the constraint is g = -1 (inactive everywhere).
//!
//! Splitting: the rows are split among workers ([`crate::split`]); worker i
//! keeps its rows of F and of G with the weights n w_f and n w_g, so that
//! (1/n) sum_i f_i = f and (1/n) sum_i g_i = g exactly: the problem does not
//! depend on n or on the split, only its distribution does. A worker may hold
//! no row of a block (its part is then 0).
//!
//! Minibatches: b rows of F and b rows of G (uniformly, without replacement,
//! or all rows if the worker has at most b) with the unbiased estimate
//! (N_i / b) n w sum_{j in batch} phi_j.
//!
//! Subgradients at kinks: hinge at y z = 1 and |r| at r = 0 use 0, sign(0) = 0
//! for the l1 budget. Nothing is allocated per call.

use efkit_core::oracle::sample_without_replacement;
use efkit_core::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::csr::{sparse_axpy_unchecked, sparse_dot_unchecked, CsrMatrix};
use crate::datasets::Dataset;
use crate::error::{ProblemError, Result};
use crate::split::{split, SplitKind};

/// What one worker can compute about its local constrained problem (f_i, g_i).
///
/// Full evaluations are exact; batch evaluations refer to the batch drawn by
/// the last [`ConstrainedOracle::draw_batch`]. `grad`, when given, is
/// overwritten with a subgradient.
pub trait ConstrainedOracle: Send {
    /// Dimension d of the model.
    fn dim(&self) -> usize;

    /// Number of local samples (rows of both blocks) for finite sums; `None`
    /// for streaming oracles (e.g. a robot).
    fn num_samples(&self) -> Option<usize>;

    /// f_i(x) and, when `grad` is given, a subgradient of f_i at x.
    fn objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64;

    /// g_i(x) and, when `grad` is given, a subgradient of g_i at x.
    fn constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64;

    /// Draws a minibatch of size `batch` at the model `x` with `rng` (data:
    /// uniform rows; a robot: `batch` trajectories of the policy x).
    fn draw_batch(&mut self, x: &[f64], batch: usize, rng: &mut Rng);

    /// Unbiased estimate of f_i(x) on the current batch, and of a subgradient.
    fn batch_objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64;

    /// Unbiased estimate of g_i(x) on the current batch, and of a subgradient.
    fn batch_constraint(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64;

    /// Bounds on the norms of the subgradients this oracle returns (the
    /// Lipschitz constants M of the Safe-EF theory).
    fn bounds(&self) -> SubgradientBounds;
}

/// Bounds on ||subgradient|| of one worker's f_i and g_i.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubgradientBounds {
    /// Bound for exact subgradients of f_i.
    pub objective: f64,
    /// Bound for exact subgradients of g_i.
    pub constraint: f64,
    /// Bound for minibatch subgradient estimates of f_i (any batch size).
    pub objective_stochastic: f64,
    /// Bound for minibatch subgradient estimates of g_i (any batch size).
    pub constraint_stochastic: f64,
}

impl SubgradientBounds {
    /// max over the four bounds.
    pub fn max(&self) -> f64 {
        self.objective
            .max(self.constraint)
            .max(self.objective_stochastic)
            .max(self.constraint_stochastic)
    }

    /// max of the exact (deterministic) bounds.
    pub fn max_exact(&self) -> f64 {
        self.objective.max(self.constraint)
    }
}

/// The per-sample loss of a [`LinearBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// max(0, 1 - y z) (nonsmooth, 1-Lipschitz in z).
    Hinge,
    /// log(1 + exp(-y z)) (smooth, 1-Lipschitz in z).
    Logistic,
    /// |z - y| (nonsmooth, 1-Lipschitz in z).
    Absolute,
}

impl LossKind {
    /// The loss at prediction `z` and target `y` with a derivative in z (0 at kinks).
    #[inline(always)]
    pub fn value_deriv(self, z: f64, y: f64) -> (f64, f64) {
        match self {
            LossKind::Hinge => {
                let t = 1.0 - y * z;
                if t > 0.0 {
                    (t, -y)
                } else {
                    (0.0, 0.0)
                }
            }
            LossKind::Logistic => {
                let m = y * z;
                let e = (-m.abs()).exp();
                let loss = (-m).max(0.0) + e.ln_1p();
                let s = if m >= 0.0 {
                    e / (1.0 + e)
                } else {
                    1.0 / (1.0 + e)
                };
                (loss, -y * s)
            }
            LossKind::Absolute => {
                let r = z - y;
                let s = if r > 0.0 {
                    1.0
                } else if r < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                (r.abs(), s)
            }
        }
    }

    /// A smooth lower approximation phi_mu <= phi with 0 <= phi - phi_mu <= mu/2
    /// (Huber smoothing of the kink for hinge and absolute loss; the logistic
    /// loss is returned exactly): value, first and second derivative in z.
    /// Used by reference solvers.
    #[inline(always)]
    pub fn smoothed(self, z: f64, y: f64, mu: f64) -> (f64, f64, f64) {
        match self {
            LossKind::Hinge => {
                // t = 1 - y z; h(t) = 0 (t <= 0), t^2/(2 mu) (0 < t < mu), t - mu/2 (t >= mu)
                let t = 1.0 - y * z;
                if t <= 0.0 {
                    (0.0, 0.0, 0.0)
                } else if t < mu {
                    (t * t / (2.0 * mu), -y * t / mu, y * y / mu)
                } else {
                    (t - 0.5 * mu, -y, 0.0)
                }
            }
            LossKind::Logistic => {
                let m = y * z;
                let e = (-m.abs()).exp();
                let loss = (-m).max(0.0) + e.ln_1p();
                let s = if m >= 0.0 {
                    e / (1.0 + e)
                } else {
                    1.0 / (1.0 + e)
                };
                (loss, -y * s, y * y * s * (1.0 - s))
            }
            LossKind::Absolute => {
                let r = z - y;
                if r.abs() < mu {
                    (r * r / (2.0 * mu), r / mu, 1.0 / mu)
                } else {
                    (r.abs() - 0.5 * mu, r.signum(), 0.0)
                }
            }
        }
    }

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Hinge => "hinge",
            LossKind::Logistic => "logistic",
            LossKind::Absolute => "absolute",
        }
    }
}

/// Huber smoothing of |v| (a lower approximation, error <= mu/2): value, first
/// and second derivative. Used for the l1 budget in reference solvers.
#[inline(always)]
pub fn huber_abs(v: f64, mu: f64) -> (f64, f64, f64) {
    if v.abs() < mu {
        (v * v / (2.0 * mu), v / mu, 1.0 / mu)
    } else {
        (v.abs() - 0.5 * mu, v.signum(), 0.0)
    }
}

/// w sum_j phi(a_j^T x, y_j) over the rows of a matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearBlock {
    a: CsrMatrix,
    y: Vec<f64>,
    weight: f64,
    loss: LossKind,
    /// max_j ||a_j|| (0 for an empty block).
    max_row_norm: f64,
    /// sum_j ||a_j||.
    sum_row_norm: f64,
}

impl LinearBlock {
    /// A block of rows `a` with targets `y`, weight `weight` and loss `loss`.
    pub fn new(a: CsrMatrix, y: Vec<f64>, weight: f64, loss: LossKind) -> Result<Self> {
        if y.len() != a.n_rows() {
            return Err(ProblemError::invalid(
                "y",
                format!("{} targets for {} rows", y.len(), a.n_rows()),
            ));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(ProblemError::invalid(
                "weight",
                format!("must be finite and >= 0, got {weight}"),
            ));
        }
        if let Some(j) = y.iter().position(|v| !v.is_finite()) {
            return Err(ProblemError::invalid(
                "y",
                format!("target {j} is not finite"),
            ));
        }
        let norms: Vec<f64> = (0..a.n_rows())
            .map(|j| a.row(j).1.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        let max_row_norm = norms.iter().cloned().fold(0.0, f64::max);
        let sum_row_norm = norms.iter().sum();
        Ok(LinearBlock {
            a,
            y,
            weight,
            loss,
            max_row_norm,
            sum_row_norm,
        })
    }

    /// The rows.
    pub fn matrix(&self) -> &CsrMatrix {
        &self.a
    }

    /// The targets.
    pub fn targets(&self) -> &[f64] {
        &self.y
    }

    /// The weight w of every row.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The loss.
    pub fn loss(&self) -> LossKind {
        self.loss
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the block has no row.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Bound on ||subgradient of the full block||: w sum_j ||a_j||.
    pub fn bound(&self) -> f64 {
        self.weight * self.sum_row_norm
    }

    /// Bound on ||minibatch estimate||: w N max_j ||a_j||.
    pub fn bound_stochastic(&self) -> f64 {
        self.weight * self.len() as f64 * self.max_row_norm
    }

    /// w sum_{j in rows} phi_j scaled by `scale`; `grad` (overwritten) gets its subgradient.
    #[inline]
    fn eval(
        &self,
        x: &[f64],
        rows: impl Iterator<Item = usize>,
        scale: f64,
        grad: Option<&mut [f64]>,
    ) -> f64 {
        let d = self.a.n_cols();
        assert_eq!(
            x.len(),
            d,
            "oracle: x has length {}, the model dimension is {d}",
            x.len()
        );
        let indptr = self.a.indptr();
        let (indices, values) = (self.a.indices(), self.a.values());
        let mut total = 0.0;
        match grad {
            Some(g) => {
                assert_eq!(
                    g.len(),
                    d,
                    "oracle: grad has length {}, the model dimension is {d}",
                    g.len()
                );
                g.iter_mut().for_each(|v| *v = 0.0);
                for j in rows {
                    let (s, e) = (indptr[j], indptr[j + 1]);
                    let (idx, val) = (&indices[s..e], &values[s..e]);
                    // SAFETY: CSR column indices are < n_cols == x.len() == g.len().
                    let z = unsafe { sparse_dot_unchecked(idx, val, x) };
                    let (l, dl) = self.loss.value_deriv(z, self.y[j]);
                    total += l;
                    if dl != 0.0 {
                        // SAFETY: as above.
                        unsafe { sparse_axpy_unchecked(dl, idx, val, g) };
                    }
                }
                let c = scale * self.weight;
                g.iter_mut().for_each(|v| *v *= c);
            }
            None => {
                for j in rows {
                    let (s, e) = (indptr[j], indptr[j + 1]);
                    // SAFETY: CSR column indices are < n_cols == x.len().
                    let z = unsafe { sparse_dot_unchecked(&indices[s..e], &values[s..e], x) };
                    total += self.loss.value_deriv(z, self.y[j]).0;
                }
            }
        }
        total * scale * self.weight
    }
}

/// The whole constrained problem: the global blocks, the worker shards and X.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstrainedProblem {
    name: String,
    d: usize,
    objective: LinearBlock,
    constraint: LinearBlock,
    offset: f64,
    l1_budget: Option<f64>,
    radius: Option<f64>,
    /// Per worker: (rows of the objective block, rows of the constraint block).
    shards: Vec<(Vec<usize>, Vec<usize>)>,
}

impl ConstrainedProblem {
    /// A problem from its global blocks and a split of their rows among workers.
    ///
    /// The global blocks carry the weights w_f and w_g of the whole problem;
    /// each worker's oracle uses n w. Every row must belong to exactly one worker.
    pub fn new(
        name: impl Into<String>,
        objective: LinearBlock,
        constraint: LinearBlock,
        offset: f64,
        l1_budget: Option<f64>,
        radius: Option<f64>,
        shards: Vec<(Vec<usize>, Vec<usize>)>,
    ) -> Result<Self> {
        let d = objective.a.n_cols();
        if constraint.a.n_cols() != d {
            return Err(ProblemError::invalid(
                "constraint",
                format!(
                    "dimension {} differs from the objective's {d}",
                    constraint.a.n_cols()
                ),
            ));
        }
        if shards.is_empty() {
            return Err(ProblemError::invalid("workers", "need at least one worker"));
        }
        if !offset.is_finite() {
            return Err(ProblemError::invalid("offset", "must be finite"));
        }
        if let Some(k) = l1_budget {
            if !(k.is_finite() && k >= 0.0) {
                return Err(ProblemError::invalid(
                    "l1_budget",
                    format!("must be finite and >= 0, got {k}"),
                ));
            }
        }
        if let Some(r) = radius {
            if !(r.is_finite() && r > 0.0) {
                return Err(ProblemError::invalid(
                    "radius",
                    format!("must be finite and > 0, got {r}"),
                ));
            }
        }
        for (block, pick, key) in [
            (&objective, 0usize, "objective rows"),
            (&constraint, 1, "constraint rows"),
        ] {
            let mut seen = vec![false; block.len()];
            for s in &shards {
                let rows = if pick == 0 { &s.0 } else { &s.1 };
                for &r in rows {
                    if r >= block.len() || seen[r] {
                        return Err(ProblemError::invalid(
                            key,
                            format!("row {r} is out of range or assigned twice"),
                        ));
                    }
                    seen[r] = true;
                }
            }
            if let Some(r) = seen.iter().position(|s| !s) {
                return Err(ProblemError::invalid(
                    key,
                    format!("row {r} is assigned to no worker"),
                ));
            }
        }
        Ok(ConstrainedProblem {
            name: name.into(),
            d,
            objective,
            constraint,
            offset,
            l1_budget,
            radius,
            shards,
        })
    }

    /// A short name (for logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of workers n.
    pub fn n_workers(&self) -> usize {
        self.shards.len()
    }

    /// The global objective block (f = this block's value).
    pub fn objective_block(&self) -> &LinearBlock {
        &self.objective
    }

    /// The global constraint block (g = this block's value + offset [+ ||x||_1 - kappa]).
    pub fn constraint_block(&self) -> &LinearBlock {
        &self.constraint
    }

    /// The constant added to g (e.g. -tau).
    pub fn offset(&self) -> f64 {
        self.offset
    }

    /// kappa of the l1 budget ||x||_1 - kappa added to g, if any.
    pub fn l1_budget(&self) -> Option<f64> {
        self.l1_budget
    }

    /// Radius r of X = {||x|| <= r}; `None`: X = R^d.
    pub fn radius(&self) -> Option<f64> {
        self.radius
    }

    /// Rows of (objective, constraint) held by each worker.
    pub fn shard_sizes(&self) -> Vec<(usize, usize)> {
        self.shards.iter().map(|s| (s.0.len(), s.1.len())).collect()
    }

    /// f(x) and g(x) from the global blocks (one pass over all rows).
    pub fn evaluate(&self, x: &[f64]) -> (f64, f64) {
        let f = self.objective.eval(x, 0..self.objective.len(), 1.0, None);
        let mut g = self.constraint.eval(x, 0..self.constraint.len(), 1.0, None) + self.offset;
        if let Some(k) = self.l1_budget {
            g += x.iter().map(|v| v.abs()).sum::<f64>() - k;
        }
        (f, g)
    }

    /// The oracle of worker `i` (owns a copy of its rows).
    ///
    /// # Panics
    /// If `i >= n_workers()`.
    pub fn oracle(&self, i: usize) -> LinearConstrainedOracle {
        let n = self.n_workers() as f64;
        let (fo, go) = &self.shards[i];
        let block = |b: &LinearBlock, rows: &[usize]| {
            let a = b.a.select_rows(rows);
            let y = rows.iter().map(|&r| b.y[r]).collect();
            LinearBlock::new(a, y, b.weight * n, b.loss).expect("rows of a validated block")
        };
        LinearConstrainedOracle::new(
            block(&self.objective, fo),
            block(&self.constraint, go),
            self.offset,
            self.l1_budget,
        )
    }

    /// All oracles, worker 0 first.
    pub fn oracles(&self) -> Vec<Box<dyn ConstrainedOracle>> {
        (0..self.n_workers())
            .map(|i| Box::new(self.oracle(i)) as Box<dyn ConstrainedOracle>)
            .collect()
    }
}

/// A worker oracle over two [`LinearBlock`]s: f_i = its objective block,
/// g_i = its constraint block + offset [+ ||x||_1 - kappa].
#[derive(Debug, Clone)]
pub struct LinearConstrainedOracle {
    obj: LinearBlock,
    con: LinearBlock,
    offset: f64,
    l1_budget: Option<f64>,
    obj_batch: Vec<u32>,
    con_batch: Vec<u32>,
}

impl LinearConstrainedOracle {
    /// An oracle with the given blocks (their weights are used as they are).
    pub fn new(obj: LinearBlock, con: LinearBlock, offset: f64, l1_budget: Option<f64>) -> Self {
        let d = obj.a.n_cols();
        assert_eq!(con.a.n_cols(), d, "blocks of different dimensions");
        LinearConstrainedOracle {
            obj,
            con,
            offset,
            l1_budget,
            obj_batch: Vec::new(),
            con_batch: Vec::new(),
        }
    }

    fn add_l1(&self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        match self.l1_budget {
            None => 0.0,
            Some(k) => {
                if let Some(g) = grad {
                    for (gi, &v) in g.iter_mut().zip(x) {
                        if v > 0.0 {
                            *gi += 1.0;
                        } else if v < 0.0 {
                            *gi -= 1.0;
                        }
                    }
                }
                x.iter().map(|v| v.abs()).sum::<f64>() - k
            }
        }
    }

    fn scale(block: &LinearBlock, drawn: usize) -> f64 {
        if drawn == 0 {
            0.0
        } else {
            block.len() as f64 / drawn as f64
        }
    }
}

impl ConstrainedOracle for LinearConstrainedOracle {
    fn dim(&self) -> usize {
        self.obj.a.n_cols()
    }

    fn num_samples(&self) -> Option<usize> {
        Some(self.obj.len() + self.con.len())
    }

    fn objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        self.obj.eval(x, 0..self.obj.len(), 1.0, grad)
    }

    fn constraint(&mut self, x: &[f64], mut grad: Option<&mut [f64]>) -> f64 {
        let v = self
            .con
            .eval(x, 0..self.con.len(), 1.0, grad.as_deref_mut());
        v + self.offset + self.add_l1(x, grad)
    }

    fn draw_batch(&mut self, _x: &[f64], batch: usize, rng: &mut Rng) {
        assert!(batch >= 1, "oracle: batch size must be >= 1");
        for (block, out) in [
            (&self.obj, &mut self.obj_batch),
            (&self.con, &mut self.con_batch),
        ] {
            let m = block.len();
            if m == 0 {
                out.clear();
            } else {
                sample_without_replacement(m, batch.min(m), rng, out);
            }
        }
    }

    fn batch_objective(&mut self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let s = Self::scale(&self.obj, self.obj_batch.len());
        let rows = self.obj_batch.iter().map(|&j| j as usize);
        self.obj.eval(x, rows, s, grad)
    }

    fn batch_constraint(&mut self, x: &[f64], mut grad: Option<&mut [f64]>) -> f64 {
        let s = Self::scale(&self.con, self.con_batch.len());
        let rows = self.con_batch.iter().map(|&j| j as usize);
        let v = self.con.eval(x, rows, s, grad.as_deref_mut());
        v + self.offset + self.add_l1(x, grad)
    }

    fn bounds(&self) -> SubgradientBounds {
        let l1 = if self.l1_budget.is_some() {
            (self.dim() as f64).sqrt()
        } else {
            0.0
        };
        SubgradientBounds {
            objective: self.obj.bound(),
            constraint: self.con.bound() + l1,
            objective_stochastic: self.obj.bound_stochastic(),
            constraint_stochastic: self.con.bound_stochastic() + l1,
        }
    }
}

/// Which class a Neyman-Pearson objective minimizes the loss of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NpClass {
    /// Minimize the loss on the -1 class (false alarms) subject to the loss on
    /// the +1 class (misses) being at most tau (default).
    #[default]
    Negative,
    /// Minimize the loss on the +1 class subject to the loss on the -1 class <= tau.
    Positive,
}

/// Neyman-Pearson classification on `data` (labels -1/+1):
///
/// ```text
/// min_{||x|| <= r} (1/N_o) sum_{y_j = o} phi(a_j^T x, y_j)  s.t.  (1/N_c) sum_{y_j = c} phi(a_j^T x, y_j) <= tau
/// ```
///
/// with o the objective class and c the other one; rows are split among
/// `workers` by `split_kind` (then each shard is separated by class).
#[allow(clippy::too_many_arguments)]
pub fn neyman_pearson(
    data: &Dataset,
    workers: usize,
    split_kind: SplitKind,
    split_seed: u64,
    loss: LossKind,
    tau: f64,
    objective_class: NpClass,
    radius: Option<f64>,
) -> Result<ConstrainedProblem> {
    if loss == LossKind::Absolute {
        return Err(ProblemError::invalid(
            "loss",
            "Neyman-Pearson needs a classification loss: hinge or logistic",
        ));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(ProblemError::invalid(
            "tau",
            format!("must be finite and > 0, got {tau}"),
        ));
    }
    let y = data.y();
    if let Some(j) = y.iter().position(|&v| v != 1.0 && v != -1.0) {
        return Err(ProblemError::invalid(
            "dataset",
            format!(
                "Neyman-Pearson needs labels -1/+1; row {j} has target {}",
                y[j]
            ),
        ));
    }
    let obj_label = if objective_class == NpClass::Negative {
        -1.0
    } else {
        1.0
    };
    let sp = split(y, workers, split_kind, split_seed)?;
    let mut obj_rows = Vec::new();
    let mut con_rows = Vec::new();
    let mut shards = Vec::with_capacity(workers);
    for i in 0..workers {
        let (mut fo, mut go) = (Vec::new(), Vec::new());
        for &r in sp.rows(i) {
            if y[r] == obj_label {
                fo.push(obj_rows.len());
                obj_rows.push(r);
            } else {
                go.push(con_rows.len());
                con_rows.push(r);
            }
        }
        shards.push((fo, go));
    }
    if obj_rows.is_empty() || con_rows.is_empty() {
        return Err(ProblemError::invalid(
            "dataset",
            "Neyman-Pearson needs rows of both classes",
        ));
    }
    let block = |rows: &[usize]| -> Result<LinearBlock> {
        let a = data.x().select_rows(rows);
        let yy = rows.iter().map(|&r| y[r]).collect();
        LinearBlock::new(a, yy, 1.0 / rows.len() as f64, loss)
    };
    let name = format!(
        "neyman-pearson({}, {}, tau = {tau})",
        data.name(),
        loss.name()
    );
    ConstrainedProblem::new(
        name,
        block(&obj_rows)?,
        block(&con_rows)?,
        -tau,
        None,
        radius,
        shards,
    )
}

/// Least absolute deviations (1/N) sum_j |a_j^T x - y_j| in X = {||x|| <= r}
/// (if `radius`), subject to ||x||_1 <= kappa (if `l1_budget`), else to the
/// inactive constraint g = -1.
pub fn l1_regression(
    data: &Dataset,
    workers: usize,
    split_kind: SplitKind,
    split_seed: u64,
    radius: Option<f64>,
    l1_budget: Option<f64>,
) -> Result<ConstrainedProblem> {
    let sp = split(data.y(), workers, split_kind, split_seed)?;
    let mut rows = Vec::with_capacity(data.n_rows());
    let mut shards = Vec::with_capacity(workers);
    for i in 0..workers {
        let mut fo = Vec::new();
        for &r in sp.rows(i) {
            fo.push(rows.len());
            rows.push(r);
        }
        shards.push((fo, Vec::new()));
    }
    let a = data.x().select_rows(&rows);
    let yy: Vec<f64> = rows.iter().map(|&r| data.y()[r]).collect();
    let obj = LinearBlock::new(a, yy, 1.0 / rows.len() as f64, LossKind::Absolute)?;
    let con = LinearBlock::new(
        CsrMatrix::empty(data.n_features()),
        Vec::new(),
        0.0,
        LossKind::Absolute,
    )?;
    let (offset, name) = match l1_budget {
        Some(k) => (
            0.0,
            format!("l1-regression({}, ||x||_1 <= {k})", data.name()),
        ),
        None => (-1.0, format!("l1-regression({})", data.name())),
    };
    ConstrainedProblem::new(name, obj, con, offset, l1_budget, radius, shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use efkit_core::rng::{stream, Purpose};

    fn toy() -> Dataset {
        // 6 rows, 3 features, labels alternating
        let dense = [
            1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0, 2.0, 0.0, 1.0, 0.5, 0.5,
            0.5,
        ];
        let x = CsrMatrix::from_dense(6, 3, &dense);
        Dataset::new("toy", x, vec![1.0, -1.0, 1.0, -1.0, 1.0, -1.0]).unwrap()
    }

    fn fd_check(o: &mut dyn ConstrainedOracle, x: &[f64], constraint: bool) {
        let d = x.len();
        let mut g = vec![0.0; d];
        let v = if constraint {
            o.constraint(x, Some(&mut g))
        } else {
            o.objective(x, Some(&mut g))
        };
        for k in 0..d {
            let mut xp = x.to_vec();
            xp[k] += 1e-7;
            let vp = if constraint {
                o.constraint(&xp, None)
            } else {
                o.objective(&xp, None)
            };
            assert!(
                ((vp - v) / 1e-7 - g[k]).abs() < 1e-5,
                "coordinate {k}: fd {} vs {}",
                (vp - v) / 1e-7,
                g[k]
            );
        }
    }

    #[test]
    fn workers_average_to_the_global_problem_for_any_split() {
        let data = toy();
        for loss in [LossKind::Hinge, LossKind::Logistic] {
            let x = [0.3, -0.2, 0.1];
            let global = neyman_pearson(
                &data,
                1,
                SplitKind::Contiguous,
                0,
                loss,
                0.5,
                NpClass::Negative,
                None,
            )
            .unwrap()
            .evaluate(&x);
            for n in [1, 2, 3, 6] {
                let p = neyman_pearson(
                    &data,
                    n,
                    SplitKind::Shuffled,
                    7,
                    loss,
                    0.5,
                    NpClass::Negative,
                    Some(5.0),
                )
                .unwrap();
                let mut os = p.oracles();
                let f: f64 = os.iter_mut().map(|o| o.objective(&x, None)).sum::<f64>() / n as f64;
                let g: f64 = os.iter_mut().map(|o| o.constraint(&x, None)).sum::<f64>() / n as f64;
                assert!(
                    (f - global.0).abs() < 1e-12 && (g - global.1).abs() < 1e-12,
                    "n = {n}: {f} {g} vs {global:?}"
                );
            }
        }
        // by hand: negatives are rows 1, 3, 5 with margins -(a^T x)
        let x = [0.0; 3];
        let (f, g) = neyman_pearson(
            &data,
            2,
            SplitKind::Contiguous,
            0,
            LossKind::Hinge,
            0.25,
            NpClass::Negative,
            None,
        )
        .unwrap()
        .evaluate(&x);
        assert_eq!(f, 1.0);
        assert_eq!(g, 0.75);
    }

    #[test]
    fn subgradients_match_finite_differences_away_from_kinks() {
        let data = toy();
        let x = [0.37, -0.21, 0.13];
        for loss in [LossKind::Hinge, LossKind::Logistic] {
            let p = neyman_pearson(
                &data,
                2,
                SplitKind::Contiguous,
                0,
                loss,
                0.5,
                NpClass::Positive,
                None,
            )
            .unwrap();
            let mut o = p.oracle(0);
            fd_check(&mut o, &x, false);
            fd_check(&mut o, &x, true);
        }
        let p = l1_regression(&data, 3, SplitKind::Contiguous, 0, Some(2.0), Some(1.0)).unwrap();
        let mut o = p.oracle(1);
        fd_check(&mut o, &x, false);
        fd_check(&mut o, &x, true);
        let b = o.bounds();
        assert!(b.constraint >= 3f64.sqrt() && b.objective > 0.0);
    }

    #[test]
    fn full_batches_are_exact_and_batches_are_unbiased() {
        let data = toy();
        let p = neyman_pearson(
            &data,
            1,
            SplitKind::Contiguous,
            0,
            LossKind::Hinge,
            0.5,
            NpClass::Negative,
            None,
        )
        .unwrap();
        let mut o = p.oracle(0);
        let x = [0.2, 0.4, -0.3];
        let mut rng = stream(1, Purpose::Sample, 0, 0);
        o.draw_batch(&x, 100, &mut rng);
        let (mut g1, mut g2) = (vec![0.0; 3], vec![0.0; 3]);
        assert_eq!(
            o.batch_objective(&x, Some(&mut g1)),
            o.objective(&x, Some(&mut g2))
        );
        assert_eq!(g1, g2);
        // batch size 1: the average over all draws is the full value
        let mut sum = 0.0;
        let mut counts = 0;
        for r in 0..3000 {
            let mut rng = stream(1, Purpose::Sample, 0, r);
            o.draw_batch(&x, 1, &mut rng);
            sum += o.batch_constraint(&x, None);
            counts += 1;
        }
        let full = o.constraint(&x, None);
        assert!(
            (sum / counts as f64 - full).abs() < 0.05 * full.abs().max(0.1),
            "{} vs {full}",
            sum / counts as f64
        );
    }

    #[test]
    fn smoothing_is_a_lower_approximation_within_mu() {
        for loss in [LossKind::Hinge, LossKind::Logistic, LossKind::Absolute] {
            for &z in &[-2.0, -0.5, 0.0, 0.999, 1.0, 1.0005, 3.0] {
                for &y in &[-1.0, 1.0] {
                    let (v, _) = loss.value_deriv(z, y);
                    let (s, d1, d2) = loss.smoothed(z, y, 1e-2);
                    assert!(
                        s <= v + 1e-15 && v - s <= 0.5e-2 + 1e-15,
                        "{loss:?} z={z} y={y}: {s} vs {v}"
                    );
                    assert!(d1.is_finite() && d2 >= 0.0);
                }
            }
        }
    }

    #[test]
    fn bad_parameters_name_the_key() {
        let data = toy();
        let e = neyman_pearson(
            &data,
            2,
            SplitKind::Contiguous,
            0,
            LossKind::Hinge,
            -1.0,
            NpClass::Negative,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tau"), "{e}");
        let e = neyman_pearson(
            &data,
            2,
            SplitKind::Contiguous,
            0,
            LossKind::Absolute,
            0.5,
            NpClass::Negative,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("loss"), "{e}");
        let e = l1_regression(&data, 2, SplitKind::Contiguous, 0, Some(-1.0), None).unwrap_err();
        assert!(e.to_string().contains("radius"), "{e}");
    }
}
