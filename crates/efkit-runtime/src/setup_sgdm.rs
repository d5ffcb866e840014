//! Clusters for the momentum experiments (Fatkhullin, Tyurin & Richtarik,
//! "Momentum Provably Improves Error Feedback!", NeurIPS 2023; algorithms.md
//! §7 and §10.3), built from explicit parameters.
//!
//! Two problem families that the config path ([`crate::setup`]) does not load:
//!
//! * `noisy-quadratic`: f_i(x) = f(x) = 1/2 ||x||^2 in dimension d with
//!   streaming stochastic gradients x + xi, xi Gaussian or the asymmetric law
//!   of §7.1 ([`efkit_problems::noisy`]);
//! * `mnist-logistic`: multiclass logistic regression with the nonconvex
//!   regularizer lambda sum x^2/(1+x^2) on the MNIST training set, split among
//!   the workers ([`efkit_problems::multiclass`]).
//!
//! [`build_cluster`] validates every value (each error names its key), builds
//! the oracles, resolves the method with [`MethodSpec::parts`], the
//! compressors with [`efkit_core::compress::build`] and returns a
//! [`Cluster`]. [`cluster_from_oracles`] does the same for oracles the caller
//! already holds (e.g. MNIST shards loaded once and cloned for many runs).

use efkit_core::compress::{build, CompressorSpec};
use efkit_core::method::{Codecs, DownlinkMode, MethodSpec};
use efkit_core::oracle::Oracle;
use efkit_problems::multiclass::mnist_oracles;
use efkit_problems::noisy::{NoiseKind, NoisyQuadratic};
use efkit_problems::SplitKind;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::setup::SetupError;

fn bad(key: &str, reason: impl Into<String>) -> SetupError {
    SetupError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A problem of the momentum experiments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SgdmProblem {
    /// f = 1/2 ||x||^2 with additive stochastic-gradient noise (streaming).
    NoisyQuadratic {
        /// Dimension d.
        dim: usize,
        /// Noise law.
        noise: NoiseKind,
        /// Noise scale sigma.
        sigma: f64,
    },
    /// MNIST multiclass logistic regression with the nonconvex regularizer (d = 7,840).
    MnistLogistic {
        /// Regularization weight lambda.
        lambda: f64,
        /// How the training images are split among the workers.
        #[serde(default)]
        split: SplitKind,
        /// Seed of a shuffled split.
        #[serde(default)]
        split_seed: u64,
        /// Use only the first `rows` training images (default: all 60,000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<usize>,
    },
}

impl SgdmProblem {
    /// The kind name as written in a config (`noisy-quadratic`, `mnist-logistic`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            SgdmProblem::NoisyQuadratic { .. } => "noisy-quadratic",
            SgdmProblem::MnistLogistic { .. } => "mnist-logistic",
        }
    }
}

/// Everything a run of the momentum experiments needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SgdmSetup {
    /// The problem.
    pub problem: SgdmProblem,
    /// Number of workers n.
    pub workers: usize,
    /// The method (e.g. `ef21-sgdm` with eta and batch).
    pub method: MethodSpec,
    /// The uplink compressor.
    pub compressor: CompressorSpec,
    /// The step size gamma.
    pub gamma: f64,
    /// The initial point (default: zeros).
    pub x0: Option<Vec<f64>>,
    /// Run seed.
    pub seed: u64,
    /// Worker threads (0 = one per core).
    pub threads: usize,
}

/// The oracles of `problem` for `workers` workers, worker 0 first.
pub fn build_oracles(
    problem: &SgdmProblem,
    workers: usize,
) -> Result<Vec<Box<dyn Oracle>>, SetupError> {
    if workers == 0 {
        return Err(bad("problem.workers", "must be >= 1"));
    }
    match *problem {
        SgdmProblem::NoisyQuadratic { dim, noise, sigma } => {
            if dim == 0 {
                return Err(bad("problem.dim", "must be >= 1"));
            }
            if !(sigma.is_finite() && sigma >= 0.0) {
                return Err(bad(
                    "problem.sigma",
                    format!("must be finite and >= 0, got {sigma}"),
                ));
            }
            let o = NoisyQuadratic::new(dim, noise, sigma)
                .map_err(|e| bad("problem.dim", e.to_string()))?;
            Ok((0..workers)
                .map(|_| Box::new(o.clone()) as Box<dyn Oracle>)
                .collect())
        }
        SgdmProblem::MnistLogistic {
            lambda,
            split,
            split_seed,
            rows,
        } => {
            if !(lambda.is_finite() && lambda >= 0.0) {
                return Err(bad(
                    "problem.lambda",
                    format!("must be finite and >= 0, got {lambda}"),
                ));
            }
            if rows == Some(0) {
                return Err(bad("problem.rows", "must be >= 1"));
            }
            let os = mnist_oracles(workers, split, split_seed, lambda, rows)?;
            Ok(os
                .into_iter()
                .map(|o| Box::new(o) as Box<dyn Oracle>)
                .collect())
        }
    }
}

/// A cluster running `method` with `compressor` at step `gamma` on `oracles`
/// from `x0` (default zeros). Validates the method against the oracles
/// (finite-sum methods need finite sums), the compressor against the
/// dimension, and `x0`'s length and values.
pub fn cluster_from_oracles(
    oracles: Vec<Box<dyn Oracle>>,
    method: &MethodSpec,
    compressor: &CompressorSpec,
    gamma: f64,
    x0: Option<&[f64]>,
    seed: u64,
    threads: usize,
) -> Result<Cluster, SetupError> {
    let n = oracles.len();
    if n == 0 {
        return Err(bad("problem.workers", "must be >= 1"));
    }
    let d = oracles[0].dim();
    if let Some(i) = oracles.iter().position(|o| o.dim() != d) {
        return Err(bad(
            "problem",
            format!(
                "worker {i} has dimension {}, worker 0 has {d}",
                oracles[i].dim()
            ),
        ));
    }
    let n_local: Vec<Option<usize>> = oracles.iter().map(|o| o.num_samples()).collect();
    let parts = method.parts(gamma, n, &n_local)?;
    if parts.downlink != DownlinkMode::Model {
        return Err(bad(
            "method",
            format!(
                "`{}` needs a server compressor; not supported by the momentum setups",
                method.name
            ),
        ));
    }
    if parts.force_identity && compressor.name != "identity" {
        return Err(bad(
            "compressor",
            format!(
                "method `{}` sends uncompressed gradients; use the identity compressor",
                method.name
            ),
        ));
    }
    let uplink = build(compressor, d)?;
    let dense = build(
        &CompressorSpec {
            values: compressor.values,
            ..CompressorSpec::named("identity")
        },
        d,
    )?;
    let x0 = match x0 {
        Some(x) => {
            if x.len() != d {
                return Err(bad(
                    "init",
                    format!("x0 has {} entries, the problem has d = {d}", x.len()),
                ));
            }
            if let Some(k) = x.iter().position(|v| !v.is_finite()) {
                return Err(bad("init", format!("x0 entry {k} is not finite")));
            }
            x.to_vec()
        }
        None => vec![0.0; d],
    };
    let codecs = Codecs {
        uplink,
        dense,
        downlink: None,
    };
    Ok(Cluster::new(parts, codecs, oracles, &x0, seed, threads))
}

/// Builds the oracles of `s.problem` and the cluster of `s`.
pub fn build_cluster(s: &SgdmSetup) -> Result<Cluster, SetupError> {
    let oracles = build_oracles(&s.problem, s.workers)?;
    cluster_from_oracles(
        oracles,
        &s.method,
        &s.compressor,
        s.gamma,
        s.x0.as_deref(),
        s.seed,
        s.threads,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(problem: SgdmProblem, method: MethodSpec) -> SgdmSetup {
        SgdmSetup {
            problem,
            workers: 3,
            method,
            compressor: CompressorSpec {
                k: Some(1),
                ..CompressorSpec::named("top-k")
            },
            gamma: 0.01,
            x0: None,
            seed: 1,
            threads: 1,
        }
    }

    fn sgdm() -> MethodSpec {
        MethodSpec {
            eta: Some(0.1),
            batch: Some(efkit_core::method::BatchSize::Count(1)),
            ..MethodSpec::named("ef21-sgdm")
        }
    }

    #[test]
    fn noisy_quadratic_cluster_runs_and_errors_name_keys() {
        let q = SgdmProblem::NoisyQuadratic {
            dim: 2,
            noise: NoiseKind::Asymmetric,
            sigma: 0.5,
        };
        let mut c = build_cluster(&setup(q.clone(), sgdm())).unwrap();
        assert_eq!((c.n(), c.server.state.x.len()), (3, 2));
        for _ in 0..5 {
            c.step().unwrap();
        }
        assert!(c.server.state.x.iter().any(|v| *v != 0.0));
        let err = |s: SgdmSetup| build_cluster(&s).err().expect("must fail").to_string();
        assert!(err(setup(
            SgdmProblem::NoisyQuadratic {
                dim: 1,
                noise: NoiseKind::Asymmetric,
                sigma: 0.5
            },
            sgdm()
        ))
        .contains("problem.dim"));
        assert!(err(setup(
            SgdmProblem::NoisyQuadratic {
                dim: 2,
                noise: NoiseKind::Gaussian,
                sigma: -1.0
            },
            sgdm()
        ))
        .contains("problem.sigma"));
        assert!(err(SgdmSetup {
            workers: 0,
            ..setup(q.clone(), sgdm())
        })
        .contains("problem.workers"));
        assert!(err(SgdmSetup {
            x0: Some(vec![1.0; 3]),
            ..setup(q.clone(), sgdm())
        })
        .contains("init"));
        assert!(err(setup(q.clone(), MethodSpec::named("ef21-sgdm"))).contains("method.eta"));
        // PAGE re-evaluates samples: it needs a finite sum
        let page = MethodSpec {
            batch: Some(efkit_core::method::BatchSize::Count(1)),
            ..MethodSpec::named("ef21-page")
        };
        assert!(err(setup(q.clone(), page)).contains("finite-sum"));
        let mut bigk = setup(q, sgdm());
        bigk.compressor.k = Some(3);
        assert!(build_cluster(&bigk).is_err());
    }

    #[test]
    fn mnist_cluster_builds() {
        let p = SgdmProblem::MnistLogistic {
            lambda: 1e-3,
            split: SplitKind::Contiguous,
            split_seed: 0,
            rows: Some(300),
        };
        let c = build_cluster(&setup(p.clone(), sgdm())).unwrap();
        assert_eq!(c.server.state.x.len(), 7_840);
        assert_eq!(c.total_samples, 300);
        let e = build_cluster(&setup(
            SgdmProblem::MnistLogistic {
                lambda: -1.0,
                split: SplitKind::Contiguous,
                split_seed: 0,
                rows: None,
            },
            sgdm(),
        ))
        .err()
        .unwrap();
        assert!(e.to_string().contains("problem.lambda"), "{e}");
        // config form
        let t: SgdmProblem =
            toml::from_str("kind = \"mnist-logistic\"\nlambda = 0.001\nsplit = \"shuffled\"")
                .unwrap();
        assert!(matches!(
            t,
            SgdmProblem::MnistLogistic {
                split: SplitKind::Shuffled,
                ..
            }
        ));
        assert!(toml::from_str::<SgdmProblem>(
            "kind = \"noisy-quadratic\"\ndim = 2\nnoise = \"asymmetric\"\nsigma = 0.5\nlamda = 1"
        )
        .is_err());
        assert_eq!(p.kind_name(), "mnist-logistic");
    }
}
