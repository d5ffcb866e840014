//! Streaming stochastic oracles with controlled noise on f(x) = 1/2 ||x||^2.
//!
//! Worker i sees f_i(x) = f(x) = 1/2 ||x||^2 (grad f(x) = x, minimizer 0) only
//! through stochastic gradients
//!
//! ```text
//! grad f(x, xi) = x + xi,    E[xi] = 0,
//! ```
//!
//! and a minibatch of B draws returns x + (1/B) sum_b xi_b. Two noise laws:
//!
//! * [`NoiseKind::Gaussian`]: xi ~ N(0, sigma^2 I_d), so E||xi||^2 = d sigma^2.
//!   Symmetric noise: E[Top1(xi)] = 0 (sign flips leave the law invariant).
//! * [`NoiseKind::Asymmetric`]: the construction of algorithms.md §7.1 that
//!   makes EF21-SGD stall (Fatkhullin, Tyurin & Richtarik, "Momentum Provably
//!   Improves Error Feedback!", NeurIPS 2023, Theorem 1 / Figure 1). The
//!   paper's own noise law was not available to us (UNKNOWN); this is OUR
//!   stand-in with the same mechanism: zero mean but a biased Top-1. For
//!   d = 2,
//!
//!   ```text
//!   xi = sigma * (s * 3, +1)   with probability 1/2  (s = +-1, a fair sign),
//!   xi = sigma * (0, -1)       with probability 1/2,
//!   ```
//!
//!   so E[xi] = 0 and E||xi||^2 = 5.5 sigma^2, but Top1 keeps the first
//!   coordinate in the first case and the second one in the other, hence
//!   E[Top1(xi)] = (0, -sigma/2) != 0. EF21-SGD-ideal therefore drifts to the
//!   fixed point x = -E[Top1(xi)] = (0, sigma/2), where ||grad f||^2 = sigma^2/4,
//!   whatever the step size and the number of workers.
//!
//!   Generalization to d >= 2 (ours): the "+-3" goes to a coordinate j drawn
//!   uniformly from 0..d-1 (the first d - 1 coordinates) and the "+-1" lives in
//!   the last coordinate d - 1: xi = sigma (3 s e_j + e_{d-1}) or -sigma e_{d-1}
//!   with probability 1/2 each. For d = 2 this is exactly the law above; for
//!   any d, E[xi] = 0, E||xi||^2 = 5.5 sigma^2 and E[Top1(xi)] = -(sigma/2) e_{d-1}.
//!
//! These oracles are streaming ([`Oracle::num_samples`] is `None`): every call
//! of [`Oracle::stochastic_grad`] draws fresh noise from the generator it is
//! given (in efkit: the `(seed, Sample, worker, round)` stream), and
//! [`Oracle::loss_grad`] returns the exact f and grad f. Nothing is allocated
//! per call.

use std::fmt;
use std::str::FromStr;

use efkit_core::oracle::Oracle;
use efkit_core::rng::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::{ProblemError, Result};

/// The law of the additive gradient noise xi.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseKind {
    /// xi ~ N(0, sigma^2 I_d).
    Gaussian,
    /// The zero-mean noise with E[Top1(xi)] != 0 of algorithms.md §7.1 (our
    /// stand-in for the paper's unknown construction; see the module docs).
    Asymmetric,
}

impl NoiseKind {
    /// All kinds with their names.
    pub const ALL: [(NoiseKind, &'static str); 2] = [
        (NoiseKind::Gaussian, "gaussian"),
        (NoiseKind::Asymmetric, "asymmetric"),
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

impl fmt::Display for NoiseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for NoiseKind {
    type Err = ProblemError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                ProblemError::invalid(
                    "noise",
                    format!("unknown noise `{s}`; allowed: gaussian, asymmetric"),
                )
            })
    }
}

/// f(x) = 1/2 ||x||^2 in dimension d with stochastic gradients x + xi.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyQuadratic {
    d: usize,
    kind: NoiseKind,
    sigma: f64,
}

impl NoisyQuadratic {
    /// The oracle in dimension `d` with noise `kind` of scale `sigma` (finite,
    /// >= 0). The asymmetric noise needs d >= 2.
    pub fn new(d: usize, kind: NoiseKind, sigma: f64) -> Result<Self> {
        let min_d = match kind {
            NoiseKind::Gaussian => 1,
            NoiseKind::Asymmetric => 2,
        };
        if d < min_d {
            return Err(ProblemError::invalid(
                "dim",
                format!("the {kind} noise needs d >= {min_d}, got {d}"),
            ));
        }
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(ProblemError::invalid(
                "sigma",
                format!("must be finite and >= 0, got {sigma}"),
            ));
        }
        Ok(NoisyQuadratic { d, kind, sigma })
    }

    /// The noise law.
    pub fn kind(&self) -> NoiseKind {
        self.kind
    }

    /// The noise scale sigma.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// E||xi||^2 of one draw: d sigma^2 (Gaussian) or 5.5 sigma^2 (asymmetric).
    pub fn noise_second_moment(&self) -> f64 {
        match self.kind {
            NoiseKind::Gaussian => self.d as f64 * self.sigma * self.sigma,
            NoiseKind::Asymmetric => 5.5 * self.sigma * self.sigma,
        }
    }

    /// E[Top1(xi)] of one draw: 0 for the Gaussian (symmetric) noise,
    /// -(sigma/2) e_{d-1} for the asymmetric one.
    pub fn top1_noise_mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.d];
        if self.kind == NoiseKind::Asymmetric {
            m[self.d - 1] = -0.5 * self.sigma;
        }
        m
    }

    /// Adds one draw of xi to `acc` (length d).
    #[inline]
    pub fn add_noise(&self, rng: &mut Rng, acc: &mut [f64]) {
        match self.kind {
            NoiseKind::Gaussian => {
                for a in acc.iter_mut() {
                    let z: f64 = rng.sample(StandardNormal);
                    *a += self.sigma * z;
                }
            }
            NoiseKind::Asymmetric => {
                let u: u32 = rng.gen();
                let last = self.d - 1;
                if u & 1 == 0 {
                    let s = if u & 2 == 0 { 3.0 } else { -3.0 };
                    let j = if self.d == 2 {
                        0
                    } else {
                        rng.gen_range(0..last)
                    };
                    acc[j] += s * self.sigma;
                    acc[last] += self.sigma;
                } else {
                    acc[last] -= self.sigma;
                }
            }
        }
    }

    #[track_caller]
    fn check(&self, x: &[f64], grad: &[f64]) {
        assert!(
            x.len() == self.d && grad.len() == self.d,
            "oracle: x has length {}, grad {}, the model dimension is {}",
            x.len(),
            grad.len(),
            self.d
        );
    }
}

impl Oracle for NoisyQuadratic {
    fn dim(&self) -> usize {
        self.d
    }

    fn num_samples(&self) -> Option<usize> {
        None
    }

    #[track_caller]
    fn loss_grad(&mut self, x: &[f64], grad: &mut [f64]) -> f64 {
        self.check(x, grad);
        grad.copy_from_slice(x);
        0.5 * x.iter().map(|v| v * v).sum::<f64>()
    }

    #[track_caller]
    fn grad(&mut self, x: &[f64], grad: &mut [f64]) {
        self.check(x, grad);
        grad.copy_from_slice(x);
    }

    fn loss(&mut self, x: &[f64]) -> f64 {
        assert_eq!(
            x.len(),
            self.d,
            "oracle: x has length {}, the model dimension is {}",
            x.len(),
            self.d
        );
        0.5 * x.iter().map(|v| v * v).sum::<f64>()
    }

    /// x + (1/B) sum_b xi_b with B = `batch` fresh draws from `rng`; returns the
    /// sample loss 1/2 ||x||^2 + <mean xi, x> (whose gradient is the returned one).
    #[track_caller]
    fn stochastic_grad(
        &mut self,
        x: &[f64],
        batch: usize,
        rng: &mut Rng,
        drawn: &mut Vec<u32>,
        grad: &mut [f64],
    ) -> f64 {
        self.check(x, grad);
        assert!(batch >= 1, "oracle: batch size must be >= 1");
        drawn.clear();
        grad.iter_mut().for_each(|g| *g = 0.0);
        for _ in 0..batch {
            self.add_noise(rng, grad);
        }
        if batch > 1 {
            let inv = 1.0 / batch as f64;
            grad.iter_mut().for_each(|g| *g *= inv);
        }
        let mut loss = 0.0;
        for (g, &xk) in grad.iter_mut().zip(x) {
            loss += xk * (0.5 * xk + *g);
            *g += xk;
        }
        loss
    }

    /// # Panics
    /// Always: a streaming oracle has no sample indices.
    fn indexed_grad(&mut self, _x: &[f64], _idx: &[u32], _grad: &mut [f64]) -> f64 {
        panic!("oracle: the noisy quadratic is a streaming oracle (no sample indices); methods that re-evaluate samples (PAGE) need a finite-sum problem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use efkit_core::rng::{stream, Purpose};

    /// Monte-Carlo mean, E||xi||^2 and mean of Top1(xi) over `n` draws.
    fn moments(o: &mut NoisyQuadratic, n: usize) -> (Vec<f64>, f64, Vec<f64>) {
        let d = o.dim();
        let x = vec![0.0; d];
        let mut g = vec![0.0; d];
        let mut drawn = vec![7];
        let (mut mean, mut second, mut top) = (vec![0.0; d], 0.0, vec![0.0; d]);
        for t in 0..n as u64 {
            let mut rng = stream(11, Purpose::Sample, 0, t);
            o.stochastic_grad(&x, 1, &mut rng, &mut drawn, &mut g);
            assert!(drawn.is_empty());
            // Top-1 with ties to the lower index (the library's rule)
            let mut j = 0;
            for k in 1..d {
                if g[k].abs() > g[j].abs() {
                    j = k;
                }
            }
            top[j] += g[j];
            for k in 0..d {
                mean[k] += g[k];
                second += g[k] * g[k];
            }
        }
        let inv = 1.0 / n as f64;
        mean.iter_mut().for_each(|v| *v *= inv);
        top.iter_mut().for_each(|v| *v *= inv);
        (mean, second * inv, top)
    }

    #[test]
    fn gaussian_noise_has_zero_mean_and_variance_d_sigma2() {
        let (d, sigma, n) = (3, 0.7, 200_000);
        let mut o = NoisyQuadratic::new(d, NoiseKind::Gaussian, sigma).unwrap();
        let (mean, second, top) = moments(&mut o, n);
        // each mean coordinate ~ N(0, sigma^2/n): 5 standard errors
        let se = sigma / (n as f64).sqrt();
        for m in &mean {
            assert!(m.abs() < 5.0 * se, "mean {mean:?}");
        }
        // ||xi||^2 = sigma^2 chi^2_d: variance 2 d sigma^4
        let se2 = (2.0 * d as f64).sqrt() * sigma * sigma / (n as f64).sqrt();
        assert!(
            (second - o.noise_second_moment()).abs() < 5.0 * se2,
            "{second} vs {}",
            o.noise_second_moment()
        );
        // symmetric noise: E[Top1(xi)] = 0 (each coordinate's term has sd <= sigma/sqrt(n))
        for t in &top {
            assert!(t.abs() < 5.0 * se, "top {top:?}");
        }
    }

    #[test]
    fn asymmetric_noise_is_zero_mean_with_biased_top1() {
        for d in [2usize, 5] {
            let (sigma, n) = (0.5, 200_000);
            let mut o = NoisyQuadratic::new(d, NoiseKind::Asymmetric, sigma).unwrap();
            let (mean, second, top) = moments(&mut o, n);
            // per-coordinate sd <= 3 sigma (the +-3 sigma coordinate), so 5 standard errors
            let se = 3.0 * sigma / (n as f64).sqrt();
            for m in &mean {
                assert!(m.abs() < 5.0 * se, "d = {d}: mean {mean:?}");
            }
            // ||xi||^2 is 10 sigma^2 or sigma^2 with probability 1/2: sd 4.5 sigma^2
            let se2 = 4.5 * sigma * sigma / (n as f64).sqrt();
            assert!(
                (second - 5.5 * sigma * sigma).abs() < 5.0 * se2,
                "d = {d}: {second}"
            );
            // E[Top1(xi)] = -(sigma/2) e_{d-1} != 0
            let expect = o.top1_noise_mean();
            for (k, (t, e)) in top.iter().zip(&expect).enumerate() {
                assert!((t - e).abs() < 5.0 * se, "d = {d}, coord {k}: {t} vs {e}");
            }
            assert!(
                top[d - 1] < -0.45 * sigma,
                "the Top-1 mean must be clearly nonzero: {top:?}"
            );
        }
    }

    #[test]
    fn minibatch_averages_and_gradient_is_exact() {
        let mut o = NoisyQuadratic::new(2, NoiseKind::Asymmetric, 1.0).unwrap();
        let x = [0.25, -1.5];
        let mut g = [0.0; 2];
        assert_eq!(o.loss_grad(&x, &mut g), 0.5 * (0.0625 + 2.25));
        assert_eq!(g, x);
        // with sigma = 0 the stochastic gradient is exact and its loss is f
        let mut z = NoisyQuadratic::new(2, NoiseKind::Gaussian, 0.0).unwrap();
        let mut rng = stream(1, Purpose::Sample, 0, 0);
        let l = z.stochastic_grad(&x, 4, &mut rng, &mut Vec::new(), &mut g);
        assert_eq!(g, x);
        assert_eq!(l, z.loss(&x));
        // a batch of 4 asymmetric draws: every coordinate of the mean noise is a
        // multiple of sigma/4 and its variance is 1/4 of one draw's
        let n = 50_000;
        let mut second = 0.0;
        for t in 0..n {
            let mut rng = stream(2, Purpose::Sample, 0, t);
            o.stochastic_grad(&[0.0, 0.0], 4, &mut rng, &mut Vec::new(), &mut g);
            for v in g {
                assert_eq!((v * 4.0).fract(), 0.0);
            }
            second += g[0] * g[0] + g[1] * g[1];
        }
        second /= n as f64;
        assert!((second - 5.5 / 4.0).abs() < 0.05, "{second}");
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(NoisyQuadratic::new(1, NoiseKind::Asymmetric, 1.0).is_err());
        assert!(NoisyQuadratic::new(0, NoiseKind::Gaussian, 1.0).is_err());
        assert!(NoisyQuadratic::new(2, NoiseKind::Gaussian, -1.0).is_err());
        assert!(NoisyQuadratic::new(2, NoiseKind::Gaussian, f64::NAN).is_err());
        assert_eq!(
            "asymmetric".parse::<NoiseKind>().unwrap(),
            NoiseKind::Asymmetric
        );
        assert!("laplace".parse::<NoiseKind>().is_err());
    }
}
