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

use efkit_core::compress::{build, build_blockwise, CompressorSpec};
use efkit_core::method::{Codecs, DownlinkMode, MethodSpec};
use efkit_core::oracle::Oracle;
use efkit_problems::multiclass::mnist_oracles;
use efkit_problems::noisy::{NoiseKind, NoisyQuadratic};
use efkit_problems::SplitKind;
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::config::{Config, ProblemKind};
use crate::setup::{initial_point, Prepared, SetupError, SetupInfo};

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
    #[cfg(feature = "nn")]
    /// A multilayer perceptron (ReLU, softmax cross-entropy) on the MNIST
    /// training set, computed in f32 with candle ([`efkit_nn`]).
    MnistMlp {
        /// Hidden layer widths (784 inputs and 10 classes around them).
        hidden: Vec<usize>,
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
    #[cfg(feature = "nn")]
    /// A LeNet-style CNN on the MNIST training set: 5x5 convolutions to
    /// `channels` (ReLU, 2x2 average pooling), dense layers `hidden` (ReLU),
    /// 10 classes; f32 with candle ([`efkit_nn`]).
    MnistCnn {
        /// Channels of the convolutions.
        channels: Vec<usize>,
        /// Widths of the dense hidden layers.
        hidden: Vec<usize>,
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
            #[cfg(feature = "nn")]
            SgdmProblem::MnistMlp { .. } => "mnist-mlp",
            #[cfg(feature = "nn")]
            SgdmProblem::MnistCnn { .. } => "mnist-cnn",
        }
    }

    /// The network of the `mnist-mlp` and `mnist-cnn` problems (`None` for
    /// the others).
    #[cfg(feature = "nn")]
    pub fn network(&self) -> Result<Option<efkit_nn::Network>, SetupError> {
        match self {
            SgdmProblem::MnistMlp { hidden, .. } => mlp_spec(hidden).map(Some),
            SgdmProblem::MnistCnn {
                channels, hidden, ..
            } => efkit_nn::Network::cnn(28, channels, 5, hidden, 10)
                .map(Some)
                .map_err(|e| bad("problem.channels", e.to_string())),
            _ => Ok(None),
        }
    }
}

/// The MNIST images of `split`, checked against the network's input size
/// (other IDX files in the MNIST directory must not train or test silently
/// on the wrong shape or on nothing).
#[cfg(feature = "nn")]
fn mnist_images(
    split: efkit_problems::idx::MnistSplit,
    spec: &efkit_nn::Network,
) -> Result<efkit_nn::DenseImages, SetupError> {
    let images = efkit_nn::mnist_dense(split)?;
    if images.n == 0 || images.features != spec.inputs() {
        return Err(bad(
            "problem",
            format!(
                "the MNIST {split:?} set has {} images of {} pixels; the network needs at least one image of {} pixels",
                images.n,
                images.features,
                spec.inputs()
            ),
        ));
    }
    Ok(images)
}

/// The network of an `mnist-mlp` problem: 784 inputs, `hidden`, 10 classes.
#[cfg(feature = "nn")]
pub fn mlp_spec(hidden: &[usize]) -> Result<efkit_nn::Network, SetupError> {
    let mut layers = vec![784];
    layers.extend_from_slice(hidden);
    layers.push(10);
    efkit_nn::Network::mlp(&layers).map_err(|e| bad("problem.hidden", e.to_string()))
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
            crate::cluster::check_state_memory(dim, workers).map_err(|r| bad("problem.dim", r))?;
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
        #[cfg(feature = "nn")]
        SgdmProblem::MnistMlp {
            split,
            split_seed,
            rows,
            ..
        }
        | SgdmProblem::MnistCnn {
            split,
            split_seed,
            rows,
            ..
        } => {
            let spec = problem.network()?.expect("a network problem");
            let mut train = mnist_images(efkit_problems::idx::MnistSplit::Train, &spec)?;
            if let Some(r) = rows {
                if r == 0 || r > train.n {
                    return Err(bad(
                        "problem.rows",
                        format!("must be in 1..={}, got {r}", train.n),
                    ));
                }
                train = train.head(r);
            }
            if workers > train.n {
                return Err(bad(
                    "problem.workers",
                    format!("n = {workers} is larger than the {} images", train.n),
                ));
            }
            // one group: the workers share the broadcast model's tensors
            let group = efkit_nn::NetworkOracle::group(
                &spec,
                train.shards(workers, split, split_seed)?,
                efkit_nn::Precision::F32,
            )
            .map_err(|e| bad("problem", e.to_string()))?;
            Ok(group
                .into_iter()
                .map(|o| Box::new(o) as Box<dyn Oracle>)
                .collect())
        }
    }
}

fn not_for(kind: &str, key: &str) -> SetupError {
    bad(
        &format!("problem.{key}"),
        format!("not a parameter of `{kind}` problems"),
    )
}

/// Setup of a config whose problem is `noisy-quadratic`, `mnist-logistic` or
/// `mnist-mlp` (called by [`crate::setup::prepare`]; the stop rules were
/// checked there). The step must be `absolute` (the theory rules need the
/// smoothness constants of the LibSVM problems); `init.kind = "layers"` is
/// PyTorch's `nn.Linear` initialization of the network, which `mnist-mlp`
/// needs (at zero every hidden unit would stay identical).
pub fn prepare(cfg: &Config) -> Result<Prepared, SetupError> {
    let p = &cfg.problem;
    let kind = p.kind.name();
    let allowed: &[&str] = match p.kind {
        ProblemKind::NoisyQuadratic => &["dim", "noise", "sigma"],
        ProblemKind::MnistLogistic => &["lambda", "rows"],
        ProblemKind::MnistCnn => &["hidden", "channels", "rows"],
        _ => &["hidden", "rows"],
    };
    for (key, set) in [
        ("dim", p.dim.is_some()),
        ("noise", p.noise.is_some()),
        ("sigma", p.sigma.is_some()),
        ("rows", p.rows.is_some()),
        ("hidden", p.hidden.is_some()),
        ("channels", p.channels.is_some()),
        ("lambda", p.lambda.is_some()),
        ("features", p.features.is_some()),
    ] {
        if set && !allowed.contains(&key) {
            return Err(not_for(kind, key));
        }
    }
    let need = |key: &str| bad(&format!("problem.{key}"), format!("`{kind}` needs `{key}`"));
    let problem = match p.kind {
        ProblemKind::NoisyQuadratic => {
            if !p.dataset.is_empty() {
                return Err(bad(
                    "problem.dataset",
                    "noisy-quadratic is synthetic: remove `dataset`",
                ));
            }
            if p.split != SplitKind::Contiguous {
                return Err(not_for(kind, "split"));
            }
            SgdmProblem::NoisyQuadratic {
                dim: p.dim.ok_or_else(|| need("dim"))?,
                noise: p.noise.ok_or_else(|| need("noise"))?,
                sigma: p.sigma.ok_or_else(|| need("sigma"))?,
            }
        }
        _ if !(p.dataset.is_empty() || p.dataset == "mnist") => {
            return Err(bad(
                "problem.dataset",
                format!("`{kind}` runs on the bundled MNIST: `mnist` or nothing"),
            ))
        }
        ProblemKind::MnistLogistic => SgdmProblem::MnistLogistic {
            lambda: p.lambda.unwrap_or(MNIST_LAMBDA),
            split: p.split,
            split_seed: cfg.seed,
            rows: p.rows,
        },
        #[cfg(feature = "nn")]
        ProblemKind::MnistMlp => SgdmProblem::MnistMlp {
            hidden: p.hidden.clone().unwrap_or_else(|| vec![256]),
            split: p.split,
            split_seed: cfg.seed,
            rows: p.rows,
        },
        #[cfg(feature = "nn")]
        ProblemKind::MnistCnn => SgdmProblem::MnistCnn {
            channels: p.channels.clone().unwrap_or_else(|| vec![8, 16]),
            hidden: p.hidden.clone().unwrap_or_else(|| vec![64]),
            split: p.split,
            split_seed: cfg.seed,
            rows: p.rows,
        },
        _ => {
            return Err(bad(
                "problem.kind",
                format!("`{kind}` needs efkit built with the `nn` feature"),
            ))
        }
    };
    if cfg.step.rule != "absolute" {
        return Err(bad(
            "step.rule",
            format!("`{kind}` problems take rule = \"absolute\" with step.value (the theory rules need the LibSVM problems' smoothness constants)"),
        ));
    }
    let gamma = cfg
        .step
        .value
        .ok_or_else(|| bad("step.value", "rule = \"absolute\" needs step.value"))?;
    if !(gamma > 0.0 && gamma.is_finite()) {
        return Err(bad(
            "step.value",
            format!("must be finite and > 0, got {gamma}"),
        ));
    }
    if cfg.server_compressor.is_some() {
        return Err(bad(
            "server_compressor",
            format!("not supported for `{kind}` problems"),
        ));
    }
    #[cfg(feature = "nn")]
    let network = problem.network()?;
    #[cfg(not(feature = "nn"))]
    let network: Option<std::convert::Infallible> = None;
    #[cfg(feature = "nn")]
    if let Some(net) = &network {
        let key = match p.kind {
            ProblemKind::MnistCnn => "problem.channels",
            _ => "problem.hidden",
        };
        check_pass_memory(net, p.workers, cfg.threads).map_err(|r| bad(key, r))?;
    }
    let oracles = build_oracles(&problem, p.workers)?;
    let d = oracles[0].dim();
    // (the other kinds are checked in `initial_point`)
    if cfg.init.kind == "layers" {
        crate::setup::check_init_keys(cfg)?;
    }
    let x0 = match (cfg.init.kind.as_str(), &network) {
        #[cfg(feature = "nn")]
        ("layers", Some(net)) => net.init(cfg.seed),
        ("layers", _) => {
            return Err(bad(
                "init.kind",
                "`layers` (the network initialization) is for mnist-mlp and mnist-cnn",
            ))
        }
        ("zeros", Some(_)) => {
            return Err(bad(
                "init.kind",
                format!(
                "{kind} needs init.kind = \"layers\" (at zero every hidden unit stays identical)"
            ),
            ))
        }
        _ => initial_point(cfg, d)?,
    };
    let rows = oracles.iter().map(|o| o.num_samples().unwrap_or(0)).sum();
    #[allow(unused_mut)]
    let mut cluster = cluster_from_oracles(
        oracles,
        &cfg.method,
        &cfg.compressor,
        gamma,
        Some(&x0),
        cfg.seed,
        cfg.threads,
    )?;
    // the network is judged by its accuracy on the 10,000 MNIST test images
    #[cfg(feature = "nn")]
    if let Some(spec) = network {
        let test = mnist_images(efkit_problems::idx::MnistSplit::Test, &spec)?;
        cluster.test_evaluator = Some(Box::new(move |x: &[f64]| {
            efkit_nn::NetworkOracle::evaluate(&spec, x, &test, efkit_nn::Precision::F32)
                .map_or(f64::NAN, |(_, accuracy)| accuracy)
        }));
    }
    let alpha = if cluster.parts.force_identity {
        Some(1.0)
    } else {
        cluster.codecs.uplink.class().alpha()
    };
    let info = SetupInfo {
        n: cluster.n(),
        d,
        rows,
        gamma,
        l: None,
        l_tilde: None,
        l_am: None,
        alpha,
        compressor: cluster.codecs.uplink.describe(),
        server_compressor: None,
    };
    Ok(Prepared { cluster, info })
}

/// Refuses a network whose forward/backward passes (one per pool thread at
/// once, over chunks of [`efkit_nn::Network::eval_chunk`] images) and state
/// cannot fit in this machine's memory: a clear error instead of the kernel's
/// OOM killer (a CNN with 100,000 channels passed the state check alone).
#[cfg(feature = "nn")]
fn check_pass_memory(
    net: &efkit_nn::Network,
    workers: usize,
    threads: usize,
) -> Result<(), String> {
    let Some(total) = crate::cluster::machine_memory() else {
        return Ok(());
    };
    let at_once = crate::cluster::pool_threads(threads).min(workers).max(1);
    let chunk = net.eval_chunk();
    let passes = net.pass_bytes_lower_bound(chunk) * at_once as u128;
    let need = passes + crate::cluster::state_bytes_lower_bound(net.dim(), workers);
    if need > total {
        return Err(format!(
            "this network needs at least {:.1} GB ({at_once} forward/backward passes of {chunk} images at once: {:.1} GB; the state of {workers} workers with d = {}), more than this machine's {:.1} GB: make it smaller",
            need as f64 / 1e9,
            passes as f64 / 1e9,
            net.dim(),
            total as f64 / 1e9
        ));
    }
    Ok(())
}

/// The default lambda of `mnist-logistic` (the value of the authors' MNIST runs, §10.3).
pub const MNIST_LAMBDA: f64 = 1e-3;

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
    if parts.weighted {
        return Err(bad(
            "method",
            "ef21-w weighs workers by their smoothness constants L_i, known for the logistic and least-squares problems only",
        ));
    }
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
    let uplink = if compressor.per_layer == Some(true) {
        let blocks = oracles[0].blocks().ok_or_else(|| {
            bad(
                "compressor.per_layer",
                "this problem's parameters have no layers (only networks do)",
            )
        })?;
        build_blockwise(compressor, &blocks)?
    } else {
        build(compressor, d)?
    };
    let dense = build(
        &CompressorSpec {
            values: compressor.values,
            ..CompressorSpec::named("identity")
        },
        d,
    )?;
    let mut x0 = match x0 {
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
    crate::setup::project_start(&parts, &mut x0);
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
