//! Config → validated parameters → runtime objects.
//!
//! Every value is checked against the data before any work starts (K <= d,
//! n <= rows, positive steps, known names), and each error names the key.

use efkit_core::compress::{build, CompressorClass, CompressorSpec};
use efkit_core::method::{Codecs, DownlinkMode, Parts, Regularizer, ServerStep};
use efkit_core::rng::{stream, Purpose};
use efkit_core::theory;
use efkit_problems::libsvm::LibsvmOptions;
use efkit_problems::{datasets, Problem};
use serde::Serialize;
use thiserror::Error;

use crate::cluster::{Cluster, StopRules};
use crate::config::Config;

/// A config could not be turned into a run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A parameter is invalid.
    #[error("{0}")]
    Param(#[from] efkit_core::ParamError),
    /// The problem or its data is invalid.
    #[error("{0}")]
    Problem(#[from] efkit_problems::ProblemError),
    /// Another config error, naming the key.
    #[error("invalid `{key}`: {reason}")]
    Config {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn bad(key: &str, reason: impl Into<String>) -> SetupError {
    SetupError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

/// What setup resolved (written to `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SetupInfo {
    /// Number of workers.
    pub n: usize,
    /// Dimension.
    pub d: usize,
    /// Total rows N.
    pub rows: usize,
    /// The step size gamma actually used.
    pub gamma: f64,
    /// L (when computed).
    pub l: Option<f64>,
    /// Ltilde (when computed).
    pub l_tilde: Option<f64>,
    /// L_AM = mean of the L_i, which EF21-W's theory step uses in place of
    /// Ltilde (EF21-W with a theory rule only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_am: Option<f64>,
    /// alpha of the uplink compressor as applied (`CompressorClass::alpha`).
    pub alpha: Option<f64>,
    /// The uplink compressor, resolved.
    pub compressor: String,
    /// The server compressor (EF21-BC).
    pub server_compressor: Option<String>,
}

/// A run ready to start.
pub struct Prepared {
    /// The cluster.
    pub cluster: Cluster,
    /// What was resolved.
    pub info: SetupInfo,
}

/// The stopping rules of a config.
pub fn stop_rules(cfg: &Config) -> StopRules {
    StopRules {
        max_rounds: cfg.stop.max_rounds,
        tol: cfg.stop.tol,
        time_limit: cfg.stop.time_limit,
        blowup: cfg.stop.blowup,
        log_every: cfg.stop.log_every,
    }
}

fn positive(key: &str, v: f64) -> Result<(), SetupError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(bad(key, format!("must be finite and > 0, got {v}")))
    }
}

/// Validates `cfg`, loads its data and builds the cluster.
pub fn prepare(cfg: &Config) -> Result<Prepared, SetupError> {
    // stopping rules first: cheap and independent of data
    if let Some(t) = cfg.stop.tol {
        positive("stop.tol", t)?;
    }
    if let Some(t) = cfg.stop.time_limit {
        positive("stop.time_limit", t)?;
    }
    if cfg.stop.checkpoint_every == Some(0) {
        return Err(bad("stop.checkpoint_every", "must be >= 1"));
    }
    if cfg.stop.log_every == 0 {
        return Err(bad("stop.log_every", "must be >= 1"));
    }
    if !(cfg.stop.blowup > 1.0) {
        return Err(bad(
            "stop.blowup",
            format!("must be > 1, got {}", cfg.stop.blowup),
        ));
    }
    positive("step.multiplier", cfg.step.multiplier)?;
    crate::cluster::check_threads(cfg.threads).map_err(|r| bad("threads", r))?;
    if cfg.step.mu.is_some() && cfg.step.rule != "theory-pl" {
        return Err(bad(
            "step.mu",
            format!(
                "only rule = \"theory-pl\" reads it (rule is `{}`)",
                cfg.step.rule
            ),
        ));
    }
    if cfg.step.multiplier != 1.0 && cfg.step.rule == "absolute" {
        return Err(bad(
            "step.multiplier",
            "rule = \"absolute\" takes step.value as the step; the multiplier scales the theory rules only",
        ));
    }
    if cfg.problem.workers == 0 {
        return Err(bad("problem.workers", "must be >= 1"));
    }
    let Some(libsvm_kind) = cfg.problem.kind.libsvm() else {
        return crate::setup_sgdm::prepare(cfg);
    };
    for (key, set) in [
        ("dim", cfg.problem.dim.is_some()),
        ("noise", cfg.problem.noise.is_some()),
        ("sigma", cfg.problem.sigma.is_some()),
        ("rows", cfg.problem.rows.is_some()),
        ("hidden", cfg.problem.hidden.is_some()),
        ("channels", cfg.problem.channels.is_some()),
    ] {
        if set {
            return Err(bad(
                &format!("problem.{key}"),
                format!("not a parameter of `{}` problems", cfg.problem.kind.name()),
            ));
        }
    }
    let data = match cfg.problem.features {
        Some(f) => {
            if datasets::bundled(&cfg.problem.dataset).is_some() {
                return Err(bad(
                    "problem.features",
                    "only for user files; bundled data sets know their features",
                ));
            }
            datasets::load_path(&cfg.problem.dataset, &LibsvmOptions::with_features(f))?
        }
        None => datasets::load(&cfg.problem.dataset)?,
    };
    if cfg.problem.workers > data.n_rows() {
        return Err(bad(
            "problem.workers",
            format!(
                "n = {} is larger than the number of rows {}",
                cfg.problem.workers,
                data.n_rows()
            ),
        ));
    }
    crate::cluster::check_state_memory(data.n_features(), cfg.problem.workers).map_err(|r| {
        let key = if cfg.problem.features.is_some() {
            "problem.features"
        } else {
            "problem.dataset"
        };
        bad(key, r)
    })?;
    let problem = Problem::from_dataset(
        &data,
        cfg.problem.workers,
        libsvm_kind,
        cfg.problem.split,
        cfg.seed,
        cfg.problem.lambda,
    )?;
    let n = problem.n_workers();
    let d = problem.dim();
    let uplink = build(&cfg.compressor, d)?;
    let values = cfg.compressor.values;
    let dense = build(
        &CompressorSpec {
            values,
            ..CompressorSpec::named("identity")
        },
        d,
    )?;
    let n_local: Vec<Option<usize>> = problem.shard_sizes().into_iter().map(Some).collect();
    // the theory step needs alpha of the compressor actually used
    let probe = cfg.method.parts(1.0, n, &n_local)?;
    let alpha = if probe.force_identity {
        if cfg.compressor.name != "identity" {
            return Err(bad("compressor", format!("method `{}` sends uncompressed gradients; remove the compressor or use a compressed method", cfg.method.name)));
        }
        Some(1.0)
    } else {
        uplink.class().alpha()
    };
    let downlink = match (probe.downlink, &cfg.server_compressor) {
        (DownlinkMode::CompressedEstimate, Some(s)) => Some(build(s, d)?),
        (DownlinkMode::CompressedEstimate, None) => return Err(bad(
            "server_compressor",
            "ef21-bc needs a server compressor, e.g. [server_compressor] name = \"top-k\" k = 2",
        )),
        (DownlinkMode::Model, Some(_)) => {
            return Err(bad(
                "server_compressor",
                format!(
                    "only ef21-bc compresses the downlink, not `{}`",
                    cfg.method.name
                ),
            ))
        }
        (DownlinkMode::Model, None) => None,
    };
    // L, L_i and Ltilde: for the theory steps and for EF21-W's weights (once)
    let smoothness = if matches!(cfg.step.rule.as_str(), "theory" | "theory-pl") || probe.weighted {
        Some(problem.smoothness()?)
    } else {
        None
    };
    let (gamma, l, l_tilde) = match cfg.step.rule.as_str() {
        "absolute" => {
            let v = cfg
                .step
                .value
                .ok_or_else(|| bad("step.value", "rule = \"absolute\" needs step.value"))?;
            positive("step.value", v)?;
            (v, None, None)
        }
        "theory" | "theory-pl" => {
            let a = match (alpha, uplink.class()) {
                (Some(a), _) if a > 0.0 && a <= 1.0 => a,
                (_, CompressorClass::Absolute { .. }) => return Err(bad("step.rule", format!("the theory step needs a contractive compressor; `{}` is absolute: use rule = \"absolute\"", uplink.describe()))),
                (_, CompressorClass::Unbiased { omega }) => return Err(bad("step.rule", format!("the theory step needs a contractive compressor; `{}` is unbiased with omega = {omega} >= 1, so error feedback with it does not contract: set `contractive = true` in [compressor] to send C/(1+omega) (alpha = 1/(1+omega)), or use rule = \"absolute\"", uplink.describe()))),
                (_, CompressorClass::Contractive { alpha }) => return Err(bad("step.rule", format!("the theory step needs 0 < alpha <= 1; `{}` has alpha = {alpha} (a layer's compressor is not contractive: set `contractive = true` in [compressor], or use rule = \"absolute\")", uplink.describe()))),
            };
            let s = smoothness.as_ref().expect("computed for the theory rules");
            // EF21-W's step uses the arithmetic mean L_AM in place of Ltilde
            let l_mix = if probe.weighted { s.l_am() } else { s.l_tilde };
            let base = if cfg.step.rule == "theory" {
                theory::ef21_stepsize(s.l, l_mix, a)
            } else {
                let mu = cfg.step.mu.or(s.mu).ok_or_else(|| {
                    bad(
                        "step.mu",
                        "theory-pl needs mu (least squares computes it; give step.mu otherwise)",
                    )
                })?;
                if cfg.step.mu.is_none() && !(mu > 0.0) {
                    return Err(bad(
                        "step.mu",
                        format!("the problem's own mu (smallest eigenvalue of its Hessian) is {mu:e}: the PL rule needs mu > 0; give step.mu"),
                    ));
                }
                positive("step.mu", mu)?;
                // mu <= L for every function (the PL constant is at most the
                // smoothness constant); a larger mu gives a uselessly small step
                if mu > s.l * (1.0 + 1e-9) {
                    return Err(bad(
                        "step.mu",
                        format!("mu = {mu:e} exceeds the problem's smoothness constant L = {:e}, which no function allows (mu <= L): give a smaller step.mu", s.l),
                    ));
                }
                theory::ef21_pl_stepsize(s.l, l_mix, a, mu)
            };
            let gamma = cfg.step.multiplier * base;
            // name the inputs when the formula gives no usable step (L = 0 for
            // all-zero data, an overflowing lambda or mu, a vanishing alpha)
            if !(gamma > 0.0 && gamma.is_finite()) {
                return Err(bad(
                    "step.rule",
                    format!(
                        "the {} step is {gamma:e} (L = {:e}, Ltilde = {:e}, alpha = {a:e}, multiplier = {}): check problem.lambda, the data and the compressor, or use rule = \"absolute\"",
                        cfg.step.rule, s.l, l_mix, cfg.step.multiplier
                    ),
                ));
            }
            (gamma, Some(s.l), Some(s.l_tilde))
        }
        other => {
            return Err(bad(
                "step.rule",
                format!("unknown rule `{other}`; allowed: theory, theory-pl, absolute"),
            ))
        }
    };
    if let (false, Some(v)) = (cfg.step.rule == "absolute", cfg.step.value) {
        // a resolved config carries the step it used; it must agree
        if v != gamma {
            return Err(bad("step.value", format!("given {v} but rule `{}` gives {gamma}; use rule = \"absolute\" to set the step", cfg.step.rule)));
        }
    }
    let parts = cfg.method.parts(gamma, n, &n_local)?;
    let mut x0 = initial_point(cfg, d)?;
    project_start(&parts, &mut x0);
    let info = SetupInfo {
        n,
        d,
        rows: data.n_rows(),
        gamma,
        l,
        l_tilde,
        l_am: match (&smoothness, l_tilde) {
            (Some(s), Some(_)) if probe.weighted => Some(s.l_am()),
            _ => None,
        },
        alpha,
        compressor: uplink.describe(),
        server_compressor: downlink.as_ref().map(|c| c.describe()),
    };
    let codecs = Codecs {
        uplink,
        dense,
        downlink,
    };
    // EF21-W: w_i = L_i / sum_j L_j
    let weights = if parts.weighted {
        let s = smoothness.as_ref().expect("computed for ef21-w");
        let total: f64 = s.l_i.iter().sum();
        if !(total > 0.0) || s.l_i.iter().any(|l| !(*l > 0.0)) {
            return Err(bad(
                "method",
                "ef21-w needs every worker's smoothness constant L_i > 0 (a worker with all-zero data has L_i = 0)",
            ));
        }
        Some(s.l_i.iter().map(|l| l / total).collect::<Vec<f64>>())
    } else {
        None
    };
    let mut cluster = Cluster::new(
        parts,
        codecs,
        problem.into_oracles(),
        &x0,
        cfg.seed,
        cfg.threads,
    );
    if let Some(w) = &weights {
        cluster.set_weights(w);
    }
    Ok(Prepared { cluster, info })
}

/// EF21-Prox with an indicator r: the iterates live in its set, so x^0 is
/// projected onto it (r(x^0) would be infinite otherwise; the projection is
/// the prox of an indicator for any step). Other methods: x^0 as given.
pub(crate) fn project_start(parts: &Parts, x0: &mut [f64]) {
    if let ServerStep::Prox {
        reg: reg @ (Regularizer::Box { .. } | Regularizer::Ball { .. }),
    } = parts.server_step
    {
        reg.prox(x0, parts.gamma);
    }
}

/// Rejects `[init]` keys that the chosen kind does not read (a typo such as
/// `std` with `kind = "zeros"` must not run a different experiment silently).
/// `std = 1` is its default and appears in every resolved config, so only
/// other values count as set.
pub(crate) fn check_init_keys(cfg: &Config) -> Result<(), SetupError> {
    let kind = cfg.init.kind.as_str();
    if kind != "gaussian" && cfg.init.std != 1.0 {
        return Err(bad(
            "init.std",
            format!("only init.kind = \"gaussian\" reads it (kind is `{kind}`)"),
        ));
    }
    if kind != "file" && cfg.init.path.is_some() {
        return Err(bad(
            "init.path",
            format!("only init.kind = \"file\" reads it (kind is `{kind}`)"),
        ));
    }
    Ok(())
}

/// The initial point of a config.
pub fn initial_point(cfg: &Config, d: usize) -> Result<Vec<f64>, SetupError> {
    check_init_keys(cfg)?;
    match cfg.init.kind.as_str() {
        "zeros" => Ok(vec![0.0; d]),
        "gaussian" => {
            use rand::Rng as _;
            positive("init.std", cfg.init.std)?;
            let mut rng = stream(cfg.seed, Purpose::Setup, 0, 0);
            Ok((0..d)
                .map(|_| cfg.init.std * rng.sample::<f64, _>(rand_distr::StandardNormal))
                .collect())
        }
        "file" => {
            let path = cfg
                .init
                .path
                .as_ref()
                .ok_or_else(|| bad("init.path", "init.kind = \"file\" needs init.path"))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("init.path", format!("cannot read {path}: {e}")))?;
            let mut x = Vec::with_capacity(d);
            for (i, tok) in text.split_whitespace().enumerate() {
                let v: f64 = tok.parse().map_err(|_| {
                    bad(
                        "init.path",
                        format!("{path}: entry {} (`{tok}`) is not a number", i + 1),
                    )
                })?;
                if !v.is_finite() {
                    return Err(bad(
                        "init.path",
                        format!("{path}: entry {} is not finite", i + 1),
                    ));
                }
                x.push(v);
            }
            if x.len() != d {
                return Err(bad(
                    "init.path",
                    format!("{path}: has {} entries, the problem has d = {d}", x.len()),
                ));
            }
            Ok(x)
        }
        other => Err(bad(
            "init.kind",
            format!("unknown initial point `{other}`; allowed: zeros, gaussian, file"),
        )),
    }
}
