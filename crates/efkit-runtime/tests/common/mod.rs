//! Shared pieces of the runtime tests: an independent dense f64 view of the
//! mushrooms shards (n = 20) and naive reference computations, written from
//! algorithms.md without the library's method code.

#![allow(dead_code)]

use efkit_problems::{Problem, ProblemConfig, ProblemKind};

/// Bitwise equality of two vectors.
pub fn bits_eq(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

pub struct Dense {
    pub rows: Vec<Vec<f64>>,
    pub y: Vec<f64>,
}

pub fn shards() -> Vec<Dense> {
    let p = Problem::build(&ProblemConfig::new("mushrooms", 20, ProblemKind::Logistic)).unwrap();
    (0..20)
        .map(|i| {
            let s = p.shard(i);
            let d = s.a.n_cols();
            let rows = (0..s.a.n_rows())
                .map(|j| {
                    let mut r = vec![0.0; d];
                    let (idx, val) = s.a.row(j);
                    for (&k, &v) in idx.iter().zip(val) {
                        r[k as usize] = v;
                    }
                    r
                })
                .collect();
            Dense {
                rows,
                y: s.y.clone(),
            }
        })
        .collect()
}

pub fn grad(sh: &Dense, x: &[f64], lambda: f64) -> Vec<f64> {
    let d = x.len();
    let mut g = vec![0.0; d];
    for (a, &y) in sh.rows.iter().zip(&sh.y) {
        let z: f64 = a.iter().zip(x).map(|(p, q)| p * q).sum();
        // d/dz log(1 + exp(-y z)) = -y / (1 + exp(y z))
        let s = -y / (1.0 + (y * z).exp());
        for k in 0..d {
            g[k] += s * a[k];
        }
    }
    let m = sh.rows.len() as f64;
    for k in 0..d {
        g[k] = g[k] / m + lambda * 2.0 * x[k] / (1.0 + x[k] * x[k]).powi(2);
    }
    g
}

pub fn top_k(v: &[f64], k: usize) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    // larger |v| first, ties to the lower index
    idx.sort_by(|&a, &b| v[b].abs().partial_cmp(&v[a].abs()).unwrap().then(a.cmp(&b)));
    let mut out = vec![0.0; v.len()];
    for &i in &idx[..k] {
        out[i] = v[i];
    }
    out
}

pub fn mean_grad_norm_sq(sh: &[Dense], x: &[f64]) -> f64 {
    let d = x.len();
    let mut g = vec![0.0; d];
    for s in sh {
        let gi = grad(s, x, 0.1);
        for k in 0..d {
            g[k] += gi[k] / sh.len() as f64;
        }
    }
    g.iter().map(|v| v * v).sum()
}
