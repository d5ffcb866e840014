//! Symmetric eigenvalue solvers for smoothness constants.
//!
//! * [`symmetric_eigen`]: cyclic Jacobi rotations on a dense symmetric matrix
//!   (all eigenvalues, optionally eigenvectors). O(n^3) per sweep, used for
//!   Gram matrices with d <= [`DENSE_MAX_DIM`] and for the small tridiagonal
//!   matrices inside Lanczos.
//! * [`lanczos_extreme`]: the largest or smallest eigenvalue of a symmetric
//!   positive semidefinite operator given only as a matrix-vector product
//!   (here v -> A^T (A v), so A^T A is never formed). Lanczos with full
//!   reorthogonalization and explicit restarts from the current Ritz vector,
//!   started from a fixed pseudo-random vector (deterministic). It stops when
//!   the Ritz residual |beta_k s_k| is at most `tol` times the largest Ritz
//!   value, which bounds the eigenvalue error by the same amount (for a
//!   symmetric matrix an eigenvalue lies within the residual norm of every
//!   Ritz value), or when the Krylov space becomes invariant.

use efkit_core::rng::mix64;

use crate::csr::CsrMatrix;
use crate::error::{ProblemError, Result};

/// Largest dimension for which the dense Gram matrix is formed by default.
pub const DENSE_MAX_DIM: usize = 500;

/// Eigen-decomposition of a dense symmetric `n x n` matrix (row-major; only
/// symmetric input is meaningful) by cyclic Jacobi rotations.
///
/// Returns the eigenvalues in ascending order and, if `vectors`, the matrix
/// whose column k (row-major `n x n`) is the unit eigenvector of eigenvalue k.
///
/// # Panics
/// If `a.len() != n * n`.
#[track_caller]
pub fn symmetric_eigen(a: &[f64], n: usize, vectors: bool) -> (Vec<f64>, Option<Vec<f64>>) {
    assert_eq!(
        a.len(),
        n * n,
        "symmetric_eigen: matrix has the wrong length"
    );
    let mut m = a.to_vec();
    let mut v = if vectors {
        let mut id = vec![0.0; n * n];
        for i in 0..n {
            id[i * n + i] = 1.0;
        }
        Some(id)
    } else {
        None
    };
    const MAX_SWEEPS: usize = 100;
    for sweep in 0..MAX_SWEEPS {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += m[p * n + q] * m[p * n + q];
            }
        }
        if off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let g = 100.0 * apq.abs();
                // after a few sweeps, an off-diagonal entry that cannot change
                // either diagonal entry is set to zero
                if sweep > 3 && app.abs() + g == app.abs() && aqq.abs() + g == aqq.abs() {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                let theta = (aqq - app) / (2.0 * apq);
                // smaller root of t^2 + 2 t theta - 1 = 0
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    let t = 1.0 / (theta.abs() + (theta * theta + 1.0).sqrt());
                    if theta < 0.0 {
                        -t
                    } else {
                        t
                    }
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                let tau = s / (1.0 + c);
                m[p * n + p] = app - t * apq;
                m[q * n + q] = aqq + t * apq;
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                for r in 0..n {
                    if r == p || r == q {
                        continue;
                    }
                    let (arp, arq) = (m[r * n + p], m[r * n + q]);
                    let nrp = arp - s * (arq + tau * arp);
                    let nrq = arq + s * (arp - tau * arq);
                    m[r * n + p] = nrp;
                    m[p * n + r] = nrp;
                    m[r * n + q] = nrq;
                    m[q * n + r] = nrq;
                }
                if let Some(v) = v.as_mut() {
                    for r in 0..n {
                        let (vrp, vrq) = (v[r * n + p], v[r * n + q]);
                        v[r * n + p] = vrp - s * (vrq + tau * vrp);
                        v[r * n + q] = vrq + s * (vrp - tau * vrq);
                    }
                }
            }
        }
    }
    // sort ascending, permuting eigenvector columns alike
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let vals = order.iter().map(|&i| m[i * n + i]).collect();
    let vecs = v.map(|v| {
        let mut out = vec![0.0; n * n];
        for (k, &i) in order.iter().enumerate() {
            for r in 0..n {
                out[r * n + k] = v[r * n + i];
            }
        }
        out
    });
    (vals, vecs)
}

/// Which end of the spectrum [`lanczos_extreme`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extreme {
    /// The largest eigenvalue.
    Largest,
    /// The smallest eigenvalue.
    Smallest,
}

/// Options of [`lanczos_extreme`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LanczosOptions {
    /// Relative tolerance: stop when the Ritz residual is at most
    /// `tol * (largest Ritz value)`.
    pub tol: f64,
    /// Krylov basis size per restart (capped by the dimension and by about
    /// 256 MB of basis storage).
    pub basis: usize,
    /// Budget of operator applications before giving up.
    pub max_matvecs: usize,
}

impl Default for LanczosOptions {
    fn default() -> Self {
        LanczosOptions {
            tol: 1e-10,
            basis: 64,
            max_matvecs: 20_000,
        }
    }
}

/// Result of [`lanczos_extreme`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EigEstimate {
    /// The eigenvalue.
    pub value: f64,
    /// Operator applications used.
    pub matvecs: usize,
    /// Final residual relative to the largest Ritz value.
    pub rel_residual: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// The deterministic start vector: entries uniform in [-1, 1) from a fixed
/// hash of the index (generic, so it is not orthogonal to any eigenvector in
/// practice), normalised.
fn start_vector(d: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..d as u64)
        .map(|k| {
            let h = mix64(k ^ 0x4c61_6e63_7a6f_7321);
            (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let nrm = dot(&v, &v).sqrt();
    v.iter_mut().for_each(|x| *x /= nrm);
    v
}

/// An extreme eigenvalue of the symmetric operator `op` (`op(v, out)` writes
/// `out = M v`) of dimension `d`. `what` names the quantity in errors.
pub fn lanczos_extreme(
    d: usize,
    mut op: impl FnMut(&[f64], &mut [f64]),
    which: Extreme,
    opts: &LanczosOptions,
    what: &str,
) -> Result<EigEstimate> {
    if d == 0 {
        return Ok(EigEstimate {
            value: 0.0,
            matvecs: 0,
            rel_residual: 0.0,
        });
    }
    let mem_cap = (32_000_000 / d).max(4);
    let m = opts.basis.max(2).min(d).min(mem_cap);
    let mut basis: Vec<f64> = Vec::with_capacity(m * d);
    let mut w = vec![0.0; d];
    let mut v = start_vector(d);
    let mut alphas: Vec<f64> = Vec::with_capacity(m);
    let mut betas: Vec<f64> = Vec::with_capacity(m);
    let mut matvecs = 0usize;
    let mut best = (f64::NAN, f64::INFINITY);
    loop {
        basis.clear();
        basis.extend_from_slice(&v);
        alphas.clear();
        betas.clear();
        let mut invariant = false;
        let mut scale = 0.0f64;
        for j in 0..m {
            op(&basis[j * d..(j + 1) * d], &mut w);
            matvecs += 1;
            let vj = &basis[j * d..(j + 1) * d];
            let alpha = dot(&w, vj);
            axpy(-alpha, vj, &mut w);
            if j > 0 {
                axpy(-betas[j - 1], &basis[(j - 1) * d..j * d], &mut w);
            }
            // full reorthogonalization, twice ("twice is enough")
            for _ in 0..2 {
                for i in 0..=j {
                    let vi = &basis[i * d..(i + 1) * d];
                    let c = dot(&w, vi);
                    axpy(-c, vi, &mut w);
                }
            }
            let beta = dot(&w, &w).sqrt();
            alphas.push(alpha);
            scale = scale.max(alpha.abs()).max(beta);
            if beta.is_nan() || beta <= 1e-13 * scale {
                invariant = true;
                break;
            }
            betas.push(beta);
            if j + 1 < m {
                basis.extend(w.iter().map(|x| x / beta));
            }
        }
        let k = alphas.len();
        let mut t = vec![0.0; k * k];
        for i in 0..k {
            t[i * k + i] = alphas[i];
            if i + 1 < k {
                t[i * k + i + 1] = betas[i];
                t[(i + 1) * k + i] = betas[i];
            }
        }
        let (theta, s) = symmetric_eigen(&t, k, true);
        let s = s.expect("vectors requested");
        let pick = match which {
            Extreme::Largest => k - 1,
            Extreme::Smallest => 0,
        };
        let value = theta[pick];
        let top = theta.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let resid = if invariant {
            0.0
        } else {
            (betas[k - 1] * s[(k - 1) * k + pick]).abs()
        };
        let rel = if top > 0.0 { resid / top } else { 0.0 };
        if rel < best.1 {
            best = (value, rel);
        }
        if invariant || rel <= opts.tol || k == d {
            return Ok(EigEstimate {
                value,
                matvecs,
                rel_residual: rel,
            });
        }
        if matvecs >= opts.max_matvecs {
            return Err(ProblemError::NotConverged {
                what: what.to_owned(),
                matvecs,
                estimate: best.0,
                residual: best.1,
            });
        }
        // restart from the Ritz vector
        v.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..k {
            axpy(s[i * k + pick], &basis[i * d..(i + 1) * d], &mut v);
        }
        let nrm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= nrm);
    }
}

/// How Gram eigenvalues are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EigenMethod {
    /// Lanczos for lambda_max; dense Jacobi for lambda_min when
    /// d <= [`DENSE_MAX_DIM`], Lanczos otherwise.
    #[default]
    Auto,
    /// Always form the dense Gram matrix and use Jacobi.
    Dense,
    /// Always Lanczos on v -> A^T (A v).
    Iterative,
}

/// An extreme eigenvalue of the Gram matrix sum_s A_s^T A_s of row blocks
/// `blocks` (all with the same number of columns), i.e. of A^T A for A the
/// blocks stacked. `what` names the quantity in errors.
///
/// # Panics
/// If `blocks` is empty or the blocks disagree on the number of columns.
#[track_caller]
pub fn gram_extreme(
    blocks: &[&CsrMatrix],
    which: Extreme,
    method: EigenMethod,
    what: &str,
) -> Result<f64> {
    assert!(!blocks.is_empty(), "gram_extreme: no blocks");
    let d = blocks[0].n_cols();
    assert!(
        blocks.iter().all(|b| b.n_cols() == d),
        "gram_extreme: blocks disagree on columns"
    );
    let n_rows: usize = blocks.iter().map(|b| b.n_rows()).sum();
    let dense = match method {
        EigenMethod::Dense => true,
        EigenMethod::Iterative => false,
        EigenMethod::Auto => which == Extreme::Smallest && d <= DENSE_MAX_DIM,
    };
    if which == Extreme::Smallest && n_rows < d {
        // rank(A^T A) <= N < d
        return Ok(0.0);
    }
    let value = if dense {
        let mut g = vec![0.0; d * d];
        for b in blocks {
            for (gi, bi) in g.iter_mut().zip(b.gram_dense()) {
                *gi += bi;
            }
        }
        let (vals, _) = symmetric_eigen(&g, d, false);
        match which {
            Extreme::Largest => vals.last().copied().unwrap_or(0.0),
            Extreme::Smallest => vals.first().copied().unwrap_or(0.0),
        }
    } else {
        let op = |v: &[f64], out: &mut [f64]| {
            out.iter_mut().for_each(|o| *o = 0.0);
            for b in blocks {
                b.gram_matvec_acc(v, out);
            }
        };
        lanczos_extreme(d, op, which, &LanczosOptions::default(), what)?.value
    };
    // A^T A is positive semidefinite: clamp round-off below zero
    Ok(value.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use efkit_core::rng::{stream, Purpose};
    use rand::Rng as _;

    fn random_sym(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = stream(seed, Purpose::Setup, 1, 0);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let v: f64 = rng.gen_range(-1.0..1.0);
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        a
    }

    #[test]
    fn jacobi_diagonalizes() {
        for (n, seed) in [(1, 1), (2, 2), (5, 3), (30, 4)] {
            let a = random_sym(n, seed);
            let (vals, vecs) = symmetric_eigen(&a, n, true);
            let v = vecs.unwrap();
            assert!(vals.windows(2).all(|w| w[0] <= w[1]));
            // A V = V Lambda and V^T V = I
            for k in 0..n {
                for r in 0..n {
                    let av: f64 = (0..n).map(|c| a[r * n + c] * v[c * n + k]).sum();
                    assert!((av - vals[k] * v[r * n + k]).abs() < 1e-12, "n={n}");
                }
                for l in 0..n {
                    let ip: f64 = (0..n).map(|r| v[r * n + k] * v[r * n + l]).sum();
                    assert!((ip - if k == l { 1.0 } else { 0.0 }).abs() < 1e-12);
                }
            }
            let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
            assert!((vals.iter().sum::<f64>() - trace).abs() < 1e-12);
        }
        // known spectrum
        let (vals, _) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2, false);
        assert!((vals[0] - 1.0).abs() < 1e-15 && (vals[1] - 3.0).abs() < 1e-15);
        let (vals, _) = symmetric_eigen(&[0.0; 9], 3, false);
        assert_eq!(vals, vec![0.0; 3]);
    }

    fn random_csr(n: usize, d: usize, density: f64, seed: u64) -> CsrMatrix {
        let mut rng = stream(seed, Purpose::Setup, 2, 0);
        let dense: Vec<f64> = (0..n * d)
            .map(|_| {
                if rng.gen::<f64>() < density {
                    rng.gen_range(-1.0..1.0)
                } else {
                    0.0
                }
            })
            .collect();
        CsrMatrix::from_dense(n, d, &dense)
    }

    #[test]
    fn lanczos_matches_dense_on_random_matrices() {
        // small d (full Krylov space), d larger than the basis (restarts),
        // rank deficient (N < d), a single row
        for (n, d, density, seed) in [
            (50, 8, 0.5, 1),
            (200, 150, 0.1, 2),
            (40, 90, 0.3, 3),
            (1, 5, 1.0, 4),
            (300, 70, 0.05, 5),
        ] {
            let a = random_csr(n, d, density, seed);
            for which in [Extreme::Largest, Extreme::Smallest] {
                let dense = gram_extreme(&[&a], which, EigenMethod::Dense, "t").unwrap();
                let it = gram_extreme(&[&a], which, EigenMethod::Iterative, "t").unwrap();
                let top = gram_extreme(&[&a], Extreme::Largest, EigenMethod::Dense, "t").unwrap();
                assert!(
                    (dense - it).abs() <= 1e-10 * top,
                    "n={n} d={d} {which:?}: dense {dense} vs lanczos {it}"
                );
            }
        }
    }

    #[test]
    fn blocks_act_as_stacked_matrix() {
        let a = random_csr(60, 12, 0.4, 7);
        let top = a.select_rows(&(0..25).collect::<Vec<_>>());
        let bot = a.select_rows(&(25..60).collect::<Vec<_>>());
        let whole = gram_extreme(&[&a], Extreme::Largest, EigenMethod::Dense, "t").unwrap();
        let parts =
            gram_extreme(&[&top, &bot], Extreme::Largest, EigenMethod::Iterative, "t").unwrap();
        assert!((whole - parts).abs() <= 1e-12 * whole);
    }

    #[test]
    fn not_converged_is_reported() {
        // a tiny budget on a matrix needing restarts
        let a = random_csr(400, 300, 0.05, 8);
        let opts = LanczosOptions {
            tol: 1e-14,
            basis: 4,
            max_matvecs: 8,
        };
        let r = lanczos_extreme(
            300,
            |v, o| a.gram_matvec(v, o),
            Extreme::Smallest,
            &opts,
            "lmin",
        );
        assert!(matches!(r, Err(ProblemError::NotConverged { .. })), "{r:?}");
    }
}
