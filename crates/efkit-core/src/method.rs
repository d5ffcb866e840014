//! Error-feedback methods as compositions of orthogonal parts (design.md §2).
//!
//! Every method is one loop between a server and n workers (algorithms.md §6,
//! B&W eq. (7)):
//!
//! ```text
//! server:   x^{t+1} = step(x^t, g^t)                 (plain, heavy ball, prox)
//! worker i: e_i^{t+1} = estimator at x^{t+1}          (gradient, minibatch, momentum, PAGE)
//!           c_i^t = C(message built by the feedback) (none, EF14, EF21, EF21+)
//! server:   g^{t+1} = g^t + (1/n) sum_{i in S_t} c_i^t
//! ```
//!
//! Round t of [`Server`]/[`Worker`] starts with the downlink that carries x^t (or,
//! for EF21-BC, the compressed update of the broadcast estimate), lets every
//! participating worker compute at x^t and send its uplink, and ends with the
//! server holding x^{t+1}. Round 0 is the initialization (g_i^0).
//!
//! Both ends apply exactly what travels: the worker updates its state with the
//! decoded value of its own message (values rounded to the wire format), never
//! with the pre-encoding value.
//!
//! Named methods are presets over the parts ([`MethodSpec::parts`]):
//!
//! | preset | estimator | feedback | server step | downlink | participation |
//! |---|---|---|---|---|---|
//! | `gd` | full gradient | none (identity C) | plain | model | all |
//! | `dcgd` | full gradient | none | plain | model | all |
//! | `ef14` | full gradient | EF14 | plain | model | all |
//! | `ef21` | full gradient | EF21 | plain | model | all |
//! | `ef21-w` | full gradient / (n w_i), w_i = L_i / sum_j L_j | EF21, server g = sum_i w_i g_i | plain | model | all |
//! | `ef21-w-sgd` | minibatch / (n w_i) | EF21, weighted | plain | model | all |
//! | `ef21-w-pp` | full gradient / (n w_i) | EF21, weighted | plain | model | sampled |
//! | `ef21-plus` | full gradient | EF21+ | plain | model | all |
//! | `sgd` | minibatch | none (identity C) | plain | model | all |
//! | `ef21-sgd` | minibatch | EF21 | plain | model | all |
//! | `ef21-sgd-ideal` | minibatch | EF21-ideal (knows grad f_i; dense uplink) | plain | model | all |
//! | `ef21-page` | PAGE | EF21 | plain | model | all |
//! | `ef21-pp` | full gradient | EF21 | plain | model | sampled |
//! | `ef21-bc` | full gradient | EF21 | plain | compressed estimate | all |
//! | `ef21-hb` | full gradient | EF21 | heavy ball | model | all |
//! | `ef21-prox` | full gradient | EF21 | prox | model | all |
//! | `ef14-sgd` | minibatch | EF14 | plain | model | all |
//! | `ef21-sgdm` | momentum | EF21 | plain | model | all |
//! | `ef21-sgd2m` | double momentum | EF21 | plain | model | all |

use std::mem::MaybeUninit;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bits::{BitReader, BitWriter};
use crate::compress::{
    select_top_k_checked, CompressCtx, CompressedVec, Compressor, DecodeCtx, Scratch,
    StreamedOutcome, StreamedTopK, TopKBlock,
};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::fork::{Fork, Serial};
use crate::oracle::{GradPiece, Oracle};
use crate::rng::{stream, stream_key, Purpose};

/// How a worker's minibatch size is given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchSize {
    /// A fixed number of samples.
    Count(usize),
    /// A fraction of the worker's N_i (floor(fraction * N_i), at least 1).
    Fraction(f64),
}

impl BatchSize {
    /// The batch size for a worker holding `n_local` samples (`None`: streaming).
    pub fn resolve(self, n_local: Option<usize>) -> usize {
        match (self, n_local) {
            (BatchSize::Count(b), Some(n)) => b.min(n),
            (BatchSize::Count(b), None) => b,
            (BatchSize::Fraction(f), Some(n)) => ((f * n as f64).floor() as usize).clamp(1, n),
            (BatchSize::Fraction(_), None) => 1,
        }
    }
}

/// What a worker feeds into its message: its estimate of grad f_i(x^t).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// The exact local gradient.
    FullGradient,
    /// A minibatch gradient (tau-nice sampling without replacement).
    Minibatch(BatchSize),
    /// Polyak momentum v = (1 - eta) v + eta * minibatch gradient (EF21-SGDM).
    Momentum {
        /// Momentum parameter eta in (0, 1]; eta = 1 is no momentum.
        eta: f64,
        /// Minibatch size.
        batch: BatchSize,
        /// Batch for the initial momentum v^0 (B_init).
        init_batch: BatchSize,
    },
    /// Double momentum u = (1 - eta) u + eta v on top of [`Estimator::Momentum`] (EF21-SGD2M).
    DoubleMomentum {
        /// Momentum parameter eta in (0, 1].
        eta: f64,
        /// Minibatch size.
        batch: BatchSize,
        /// Batch for the initial momentum (B_init).
        init_batch: BatchSize,
    },
    /// The PAGE estimator: with probability p the full gradient, else
    /// v + minibatch(grad(x^t) - grad(x^{t-1})) on the same samples.
    Page {
        /// Probability of a full gradient.
        p: f64,
        /// Minibatch size.
        batch: BatchSize,
        /// One coin for all workers (the authors' code) instead of one per worker (the paper).
        shared_coin: bool,
    },
}

/// The error-feedback mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feedback {
    /// Send C(estimate); the server averages (DCGD; GD/SGD with identity C).
    None,
    /// Classic error feedback (Seide et al. 2014): send w = C(e + gamma h), e += gamma h - w.
    Ef14,
    /// EF21's Markov compressor: send c = C(h - g_i), g_i += c.
    Ef21,
    /// EF21+: keep the closer of g_i + C(h - g_i) and C(h); one flag bit says which.
    Ef21Plus,
    /// EF21-SGD-ideal (Fatkhullin, Tyurin & Richtarik 2023; algorithms.md §7.1), an
    /// analysis device: the worker knows its exact local gradient and sets
    /// g_i = grad f_i(x) + C(h - grad f_i(x)), h the stochastic estimate. The uplink
    /// carries g_i itself with the dense codec and the server averages (g = mean_i g_i):
    /// in a real system this message is dense (d values), so the bits of this method
    /// say nothing about communication efficiency; only its iterates are meaningful.
    Ef21Ideal,
}

/// The server's update of the model from the aggregate g.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ServerStep {
    /// x = x - gamma g.
    Plain,
    /// Heavy ball (EF21-HB): v = eta v + g (v^0 = g^0), x = x - gamma v.
    HeavyBall {
        /// Momentum eta in [0, 1).
        eta: f64,
    },
    /// Proximal step (EF21-Prox): x = prox_{gamma r}(x - gamma g).
    Prox {
        /// The regularizer r.
        reg: Regularizer,
    },
}

/// A simple convex regularizer r with a closed-form prox.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Regularizer {
    /// r = 0.
    Zero,
    /// r(x) = lambda ||x||_1 (prox: soft thresholding).
    L1 {
        /// Weight.
        lambda: f64,
    },
    /// r(x) = (lambda/2) ||x||^2 (prox: shrinkage by 1/(1 + gamma lambda)).
    L2Squared {
        /// Weight.
        lambda: f64,
    },
    /// Indicator of the box [lo, hi]^d (prox: clipping).
    Box {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Indicator of the Euclidean ball of radius `radius` (prox: projection).
    Ball {
        /// Radius.
        radius: f64,
    },
}

impl Regularizer {
    /// r(x) (infinite outside the set for indicators).
    pub fn value(&self, x: &[f64]) -> f64 {
        match *self {
            Regularizer::Zero => 0.0,
            Regularizer::L1 { lambda } => lambda * x.iter().map(|v| v.abs()).sum::<f64>(),
            Regularizer::L2Squared { lambda } => {
                0.5 * lambda * x.iter().map(|v| v * v).sum::<f64>()
            }
            Regularizer::Box { lo, hi } => {
                if x.iter().all(|&v| v >= lo && v <= hi) {
                    0.0
                } else {
                    f64::INFINITY
                }
            }
            Regularizer::Ball { radius } => {
                let n2: f64 = x.iter().map(|v| v * v).sum();
                if n2 <= radius * radius * (1.0 + 1e-12) {
                    0.0
                } else {
                    f64::INFINITY
                }
            }
        }
    }

    /// x = prox_{gamma r}(x), in place.
    pub fn prox(&self, x: &mut [f64], gamma: f64) {
        match *self {
            Regularizer::Zero => {}
            Regularizer::L1 { lambda } => {
                let t = gamma * lambda;
                for v in x.iter_mut() {
                    *v = v.signum() * (v.abs() - t).max(0.0);
                }
            }
            Regularizer::L2Squared { lambda } => {
                let s = 1.0 / (1.0 + gamma * lambda);
                x.iter_mut().for_each(|v| *v *= s);
            }
            Regularizer::Box { lo, hi } => x.iter_mut().for_each(|v| *v = v.clamp(lo, hi)),
            Regularizer::Ball { radius } => {
                let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                if n > radius {
                    let s = radius / n;
                    x.iter_mut().for_each(|v| *v *= s);
                }
            }
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ParamError> {
        match *self {
            Regularizer::L1 { lambda } | Regularizer::L2Squared { lambda }
                if !(lambda >= 0.0 && lambda.is_finite()) =>
            {
                Err(ParamError::invalid(
                    "prox.lambda",
                    format!("must be finite and >= 0, got {lambda}"),
                ))
            }
            Regularizer::Box { lo, hi } if !(lo <= hi) => Err(ParamError::invalid(
                "prox.lo",
                format!("need lo <= hi, got {lo} > {hi}"),
            )),
            Regularizer::Ball { radius } if !(radius > 0.0 && radius.is_finite()) => {
                Err(ParamError::invalid(
                    "prox.radius",
                    format!("must be finite and > 0, got {radius}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Which clients take part in a round (EF21-PP).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Participation {
    /// Every client, every round.
    All,
    /// Exactly `k` clients drawn uniformly without replacement (tau-nice).
    Nice {
        /// Number of participants per round.
        k: usize,
    },
    /// Each client independently with probability `p`.
    Independent {
        /// Participation probability.
        p: f64,
    },
}

/// How g_i^0 is formed in round 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// g_i^0 = the uncompressed estimate, sent dense (the papers' code; default).
    #[default]
    Dense,
    /// g_i^0 = C(estimate) (the paper's Algorithm 1).
    Compressed,
}

/// The downlink: what the server sends to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkMode {
    /// The dense model x^t (f64, lossless).
    Model,
    /// EF21-BC: the compressed update b of the broadcast estimate g; workers
    /// mirror g and step x locally.
    CompressedEstimate,
}

/// A method as validated parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts {
    /// Worker estimator.
    pub estimator: Estimator,
    /// Feedback mechanism.
    pub feedback: Feedback,
    /// Server step.
    pub server_step: ServerStep,
    /// Downlink mode.
    pub downlink: DownlinkMode,
    /// Participation.
    pub participation: Participation,
    /// Initialization of g_i^0.
    pub init: InitMode,
    /// Step size gamma.
    pub gamma: f64,
    /// Whether the uplink compressor must be the identity (GD, SGD).
    pub force_identity: bool,
    /// EF21-W: weights w_i = L_i / sum_j L_j (set on the workers and the
    /// server by the runtime, which knows the L_i).
    pub weighted: bool,
}

/// A method as named in a config file: a preset name plus its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// Preset name (see the module table).
    pub name: String,
    /// Momentum eta (ef21-hb: heavy ball in [0,1); ef21-sgdm/sgd2m: in (0,1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// Minibatch size: an integer count or a fraction of N_i in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSize>,
    /// Initial momentum batch B_init (default: the full local data for finite sums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_batch: Option<BatchSize>,
    /// PAGE probability (default: mean_i tau_i/(tau_i + N_i), the authors' code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// PAGE: one coin for all workers (authors' code, default) or one per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_coin: Option<bool>,
    /// EF21-PP: fraction of clients per round (tau-nice, k = floor(fraction n)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participation: Option<f64>,
    /// EF21-PP: sample clients independently with probability `participation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independent: Option<bool>,
    /// EF21-Prox regularizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prox: Option<Regularizer>,
    /// Initialization of g_i^0.
    #[serde(default)]
    pub init: InitMode,
}

/// The preset names, in the order of [`PRESETS`] (derived from it).
pub const METHOD_NAMES: &[&str] = &preset_names::<{ PRESETS.len() }>(PRESETS);

/// The `name`s of `presets` (`N` = its length), at compile time.
pub(crate) const fn preset_names<const N: usize>(presets: &[Preset]) -> [&'static str; N] {
    let mut names = [""; N];
    let mut i = 0;
    while i < N {
        names[i] = presets[i].name;
        i += 1;
    }
    names
}

/// A preset as users see it: what it is and which `[method]` keys it reads
/// (`init` applies to every preset). [`MethodSpec::parts`] rejects a key a
/// preset does not read, from this table.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The name in `[method] name`.
    pub name: &'static str,
    /// One line: the method and its paper.
    pub summary: &'static str,
    /// Keys it needs.
    pub required: &'static [&'static str],
    /// Keys it reads when given.
    pub optional: &'static [&'static str],
}

impl Preset {
    /// Whether the preset reads `key`.
    pub fn reads(&self, key: &str) -> bool {
        self.required.contains(&key) || self.optional.contains(&key)
    }

    /// Example config sections that run this preset, for tests and
    /// benchmarks over every preset: `[method]` with a value for each
    /// required key (`batch` samples per worker, eta = 0.3, participation
    /// 0.5, an l1 prox of weight 0.01), `[compressor]` Top-`k` unless the
    /// preset is uncompressed (gd, sgd refuse one), and `[server_compressor]`
    /// Top-5 for EF21-BC.
    ///
    /// # Panics
    ///
    /// If a required key has no example value (a preset added without one).
    pub fn example_sections(&self, batch: usize, k: usize) -> String {
        let mut s = format!("[method]\nname = \"{}\"\n", self.name);
        for key in self.required {
            s.push_str(&match *key {
                "eta" => "eta = 0.3\n".to_string(),
                "batch" => format!("batch = {batch}\n"),
                "participation" => "participation = 0.5\n".to_string(),
                "prox" => "prox = { kind = \"l1\", lambda = 0.01 }\n".to_string(),
                other => panic!("{}: no example value for `{other}`", self.name),
            });
        }
        if !matches!(self.name, "gd" | "sgd") {
            s.push_str(&format!("[compressor]\nname = \"top-k\"\nk = {k}\n"));
        }
        if self.name == "ef21-bc" {
            s.push_str("[server_compressor]\nname = \"top-k\"\nk = 5\n");
        }
        s
    }
}

/// Every preset; [`METHOD_NAMES`] lists their names in this order.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gd",
        summary: "gradient descent (uncompressed full gradients)",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "dcgd",
        summary: "distributed compressed GD, no error feedback",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "ef14",
        summary: "error feedback of Seide et al. 2014 (error accumulator)",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "ef21",
        summary: "EF21 (Richtarik, Sokolov & Fatkhullin 2021)",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "ef21-w",
        summary: "EF21 with weights w_i = L_i / sum_j L_j (Richtarik, Gasanov & Burlachenko 2024)",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "ef21-w-sgd",
        summary: "EF21-W with minibatch gradients",
        required: &["batch"],
        optional: &[],
    },
    Preset {
        name: "ef21-w-pp",
        summary: "EF21-W with partial participation",
        required: &["participation"],
        optional: &["independent"],
    },
    Preset {
        name: "ef21-plus",
        summary: "EF21+ (the better of the EF21 and plain compressed candidates)",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "sgd",
        summary: "minibatch SGD (uncompressed)",
        required: &["batch"],
        optional: &[],
    },
    Preset {
        name: "ef21-sgd",
        summary: "EF21 with minibatch gradients (EF21 B&W, Fatkhullin et al. 2021)",
        required: &["batch"],
        optional: &[],
    },
    Preset {
        name: "ef21-page",
        summary: "EF21 with the PAGE variance-reduced estimator (EF21 B&W)",
        required: &["batch"],
        optional: &["p", "shared_coin"],
    },
    Preset {
        name: "ef21-pp",
        summary: "EF21 with partial participation (EF21 B&W)",
        required: &["participation"],
        optional: &["independent"],
    },
    Preset {
        name: "ef21-bc",
        summary: "EF21 with bidirectional compression (EF21 B&W; needs [server_compressor])",
        required: &[],
        optional: &[],
    },
    Preset {
        name: "ef21-hb",
        summary: "EF21 with heavy-ball momentum on the server (EF21 B&W)",
        required: &["eta"],
        optional: &[],
    },
    Preset {
        name: "ef21-prox",
        summary: "EF21 with a proximal step (EF21 B&W)",
        required: &["prox"],
        optional: &[],
    },
    Preset {
        name: "ef14-sgd",
        summary: "EF14 with minibatch gradients",
        required: &["batch"],
        optional: &[],
    },
    Preset {
        name: "ef21-sgdm",
        summary: "EF21 with momentum (Fatkhullin, Tyurin & Richtarik 2023)",
        required: &["eta", "batch"],
        optional: &["init_batch"],
    },
    Preset {
        name: "ef21-sgd2m",
        summary: "EF21 with double momentum (Fatkhullin, Tyurin & Richtarik 2023)",
        required: &["eta", "batch"],
        optional: &["init_batch"],
    },
    Preset {
        name: "ef21-sgd-ideal",
        summary:
            "EF21-SGD that knows the exact local gradient (the EF21-SGDM paper's analysis device)",
        required: &["batch"],
        optional: &[],
    },
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

impl MethodSpec {
    /// A spec with only a name and defaults.
    pub fn named(name: &str) -> Self {
        MethodSpec {
            name: name.to_string(),
            eta: None,
            batch: None,
            init_batch: None,
            p: None,
            shared_coin: None,
            participation: None,
            independent: None,
            prox: None,
            init: InitMode::Dense,
        }
    }

    /// Resolves the preset into parts for `n` workers with local sizes `n_local`.
    pub fn parts(
        &self,
        gamma: f64,
        n: usize,
        n_local: &[Option<usize>],
    ) -> Result<Parts, ParamError> {
        if !(gamma > 0.0 && gamma.is_finite()) {
            return Err(ParamError::invalid(
                "step",
                format!("step size must be finite and > 0, got {gamma}"),
            ));
        }
        let batch = || -> Result<BatchSize, ParamError> {
            let b = self.batch.ok_or_else(|| {
                ParamError::invalid(
                    "method.batch",
                    format!("`{}` needs a minibatch size", self.name),
                )
            })?;
            check_batch("method.batch", b, n_local)?;
            Ok(b)
        };
        let eta_in = |lo_open: bool, hi_closed: bool| -> Result<f64, ParamError> {
            let eta = self.eta.ok_or_else(|| {
                ParamError::invalid("method.eta", format!("`{}` needs eta", self.name))
            })?;
            let ok = if lo_open { eta > 0.0 } else { eta >= 0.0 }
                && if hi_closed { eta <= 1.0 } else { eta < 1.0 };
            if !ok {
                let range = match (lo_open, hi_closed) {
                    (true, true) => "(0, 1]",
                    (false, false) => "[0, 1)",
                    _ => "[0, 1]",
                };
                return Err(ParamError::invalid(
                    "method.eta",
                    format!("must be in {range}, got {eta}"),
                ));
            }
            Ok(eta)
        };
        let participation = || -> Result<Participation, ParamError> {
            let f = self.participation.ok_or_else(|| {
                ParamError::invalid(
                    "method.participation",
                    format!("`{}` needs a participation fraction in (0, 1]", self.name),
                )
            })?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(ParamError::invalid(
                    "method.participation",
                    format!("must be in (0, 1], got {f}"),
                ));
            }
            Ok(if self.independent.unwrap_or(false) {
                Participation::Independent { p: f }
            } else {
                let k = ((f * n as f64).floor() as usize).max(1);
                Participation::Nice { k }
            })
        };
        let finite_sum = n_local.iter().all(|m| m.is_some());
        let mut p = Parts {
            estimator: Estimator::FullGradient,
            feedback: Feedback::Ef21,
            server_step: ServerStep::Plain,
            downlink: DownlinkMode::Model,
            participation: Participation::All,
            init: self.init,
            gamma,
            force_identity: false,
            weighted: false,
        };
        match self.name.as_str() {
            "gd" => {
                p.feedback = Feedback::None;
                p.force_identity = true;
            }
            "dcgd" => p.feedback = Feedback::None,
            "ef14" => p.feedback = Feedback::Ef14,
            "ef21" => {}
            "ef21-w" => p.weighted = true,
            "ef21-plus" => p.feedback = Feedback::Ef21Plus,
            "sgd" => {
                p.feedback = Feedback::None;
                p.force_identity = true;
                p.estimator = Estimator::Minibatch(batch()?);
            }
            "ef21-sgd" => p.estimator = Estimator::Minibatch(batch()?),
            "ef21-sgd-ideal" => {
                p.feedback = Feedback::Ef21Ideal;
                p.estimator = Estimator::Minibatch(batch()?);
            }
            "ef14-sgd" => {
                p.feedback = Feedback::Ef14;
                p.estimator = Estimator::Minibatch(batch()?);
            }
            "ef21-page" => {
                if !finite_sum {
                    return Err(ParamError::invalid(
                        "method",
                        "ef21-page needs a finite-sum problem",
                    ));
                }
                let b = batch()?;
                let prob = match self.p {
                    Some(q) if q > 0.0 && q <= 1.0 => q,
                    Some(q) => {
                        return Err(ParamError::invalid(
                            "method.p",
                            format!("must be in (0, 1], got {q}"),
                        ))
                    }
                    None => {
                        // authors' code: p = mean_i tau_i / (tau_i + N_i)
                        let s: f64 = n_local
                            .iter()
                            .map(|m| {
                                let m = m.unwrap();
                                let t = b.resolve(Some(m)) as f64;
                                t / (t + m as f64)
                            })
                            .sum();
                        s / n as f64
                    }
                };
                p.estimator = Estimator::Page {
                    p: prob,
                    batch: b,
                    shared_coin: self.shared_coin.unwrap_or(true),
                };
            }
            "ef21-pp" => p.participation = participation()?,
            // EF21-W's stochastic and partial-participation variants
            // (Richtarik, Gasanov & Burlachenko 2024): the weights compose
            // with the minibatch estimator and with client sampling
            "ef21-w-sgd" => {
                p.weighted = true;
                p.estimator = Estimator::Minibatch(batch()?);
            }
            "ef21-w-pp" => {
                p.weighted = true;
                p.participation = participation()?;
            }
            "ef21-bc" => p.downlink = DownlinkMode::CompressedEstimate,
            "ef21-hb" => {
                p.server_step = ServerStep::HeavyBall {
                    eta: eta_in(false, false)?,
                }
            }
            "ef21-prox" => {
                let reg = self.prox.ok_or_else(|| {
                    ParamError::invalid(
                        "method.prox",
                        "ef21-prox needs a regularizer, e.g. { kind = \"l1\", lambda = 0.01 }",
                    )
                })?;
                reg.validate()?;
                p.server_step = ServerStep::Prox { reg };
            }
            "ef21-sgdm" | "ef21-sgd2m" => {
                let eta = eta_in(true, true)?;
                let b = batch()?;
                let init_batch = match self.init_batch {
                    Some(ib) => {
                        check_batch("method.init_batch", ib, n_local)?;
                        ib
                    }
                    None if finite_sum => BatchSize::Fraction(1.0),
                    None => b,
                };
                p.estimator = if self.name == "ef21-sgdm" {
                    Estimator::Momentum {
                        eta,
                        batch: b,
                        init_batch,
                    }
                } else {
                    Estimator::DoubleMomentum {
                        eta,
                        batch: b,
                        init_batch,
                    }
                };
            }
            other => {
                return Err(ParamError::Unknown {
                    what: "method",
                    name: other.to_string(),
                    allowed: METHOD_NAMES.join(", "),
                });
            }
        }
        // Parameters given to a preset that does not use them are an error, not silently ignored.
        let preset = preset(&self.name).expect("the name was matched above");
        for (key, present) in [
            ("eta", self.eta.is_some()),
            ("batch", self.batch.is_some()),
            ("init_batch", self.init_batch.is_some()),
            ("p", self.p.is_some()),
            ("shared_coin", self.shared_coin.is_some()),
            ("participation", self.participation.is_some()),
            ("independent", self.independent.is_some()),
            ("prox", self.prox.is_some()),
        ] {
            if present && !preset.reads(key) {
                return Err(ParamError::invalid(
                    format!("method.{key}"),
                    format!("not used by method `{}`", self.name),
                ));
            }
        }
        Ok(p)
    }
}

/// Checks a batch size against the workers' sample counts `n_local` (`None`:
/// a streaming oracle): a count larger than a worker's data, or a fraction
/// of a stream, would silently run a different batch.
fn check_batch(key: &str, b: BatchSize, n_local: &[Option<usize>]) -> Result<(), ParamError> {
    match b {
        BatchSize::Count(0) => Err(ParamError::invalid(key, "batch size must be >= 1")),
        BatchSize::Fraction(f) if !(f > 0.0 && f <= 1.0) => Err(ParamError::invalid(
            key,
            format!("batch fraction must be in (0, 1], got {f}"),
        )),
        BatchSize::Fraction(f) if n_local.iter().any(Option::is_none) => Err(ParamError::invalid(
            key,
            format!("a fraction ({f}) needs finite local data sets; this problem streams samples: give a count"),
        )),
        BatchSize::Count(c) => match n_local
            .iter()
            .enumerate()
            .find_map(|(i, n)| n.filter(|&n| c > n).map(|n| (i, n)))
        {
            Some((i, n)) => Err(ParamError::invalid(
                key,
                format!("{c} is more than worker {i}'s {n} samples (a fraction such as 1.0 takes each worker's whole data)"),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The compressors a method uses.
#[derive(Debug)]
pub struct Codecs {
    /// Worker uplink compressor C.
    pub uplink: Box<dyn Compressor>,
    /// Dense codec for uncompressed messages (identity in the uplink's value format).
    pub dense: Box<dyn Compressor>,
    /// Server compressor C_M (EF21-BC only).
    pub downlink: Option<Box<dyn Compressor>>,
}

/// Downlink message kinds on the wire (2-bit tag).
const TAG_MODEL: u64 = 0;
pub(crate) const TAG_ESTIMATE_DENSE: u64 = 1;
pub(crate) const TAG_ESTIMATE_DELTA: u64 = 2;

/// The server's message of one round, decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Downlink {
    /// Whether this is the model x (true) or an estimate message (EF21-BC).
    pub is_model: bool,
    /// For estimate messages: whether `vec` replaces g (dense init) or is added to it.
    pub replace: bool,
    /// The model (when `is_model`), shared: every worker of a process keeps
    /// a reference to the one decoded copy instead of copying it (a network's
    /// model is megabytes, and n workers would copy it every round).
    #[serde(with = "crate::compact::arc_f64s")]
    pub x: Arc<Vec<f64>>,
    /// The estimate message (EF21-BC).
    pub vec: CompressedVec,
}

/// An encoded message with its bit counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    /// The bytes that travel.
    #[serde(with = "crate::compact::bytes")]
    pub bytes: Vec<u8>,
    /// Bits in the papers' convention (32 per value, indices free).
    pub paper_bits: u64,
}

impl Wire {
    /// 8 * bytes.len(): exactly what travels.
    pub fn wire_bits(&self) -> u64 {
        self.bytes.len() as u64 * 8
    }
}

impl Downlink {
    /// Makes the model buffer writable without allocating in steady state:
    /// while the workers still hold last round's model, the next one goes
    /// into `spare` (the buffer of the round before, which they have let go
    /// of), and last round's becomes the spare. Call before refilling `x`
    /// (the server, and MPI ranks before decoding).
    pub fn recycle_model(&mut self, spare: &mut Arc<Vec<f64>>) {
        if Arc::get_mut(&mut self.x).is_none() {
            std::mem::swap(&mut self.x, spare);
        }
    }
}

/// An empty vector to fill in place of `x`: `x`'s own buffer when nobody
/// else holds it, a fresh one otherwise (see [`Downlink::recycle_model`]).
fn writable(x: &mut Arc<Vec<f64>>) -> &mut Vec<f64> {
    if Arc::get_mut(x).is_none() {
        *x = Arc::new(Vec::with_capacity(x.len()));
    }
    let v = Arc::get_mut(x).expect("unique after replacement");
    v.clear();
    v
}

/// Encodes a model downlink (x as f64, lossless): the 2-bit tag, six zero
/// bits, then every x_j as its 64-bit pattern (most significant byte first).
///
/// The padding puts the values on the byte grid, so the message is 1 + 8d
/// bytes, as many as the tag followed directly by the values would take,
/// and each value is a plain 8-byte store: the server can write the message
/// block by block in the same pass as its step (EF21's hot path).
pub fn encode_model(x: &[f64], w: &mut BitWriter, wire: &mut Wire) {
    w.clear();
    w.write_bits(TAG_MODEL, 2);
    w.write_bits(0, 6);
    w.write_f64s(x);
    w.finish_swap(&mut wire.bytes);
    wire.paper_bits = 0; // the papers do not count the model broadcast
}

/// The first byte of a model downlink (see [`encode_model`]).
const MODEL_HEADER: u8 = (TAG_MODEL as u8) << 6;

/// The tag of the downlink the workers receive at the start of `round`: the
/// model, except for EF21-BC (the one method with a server compressor),
/// which broadcasts the model before round 0, then the dense estimate g^0,
/// then compressed changes of the estimate (dense ones when C_M is the
/// identity, so that EF21-BC reduces to EF21 exactly).
fn downlink_tag(codecs: &Codecs, round: u64) -> u64 {
    match &codecs.downlink {
        None => TAG_MODEL,
        Some(_) if round == 0 => TAG_MODEL,
        Some(cm) if round == 1 || cm.name() == "identity" => TAG_ESTIMATE_DENSE,
        Some(_) => TAG_ESTIMATE_DELTA,
    }
}

fn downlink_kind(tag: u64) -> &'static str {
    match tag {
        TAG_MODEL => "the model",
        TAG_ESTIMATE_DENSE => "a dense estimate",
        _ => "a compressed estimate change",
    }
}

/// Decodes the downlink that opens `round` (the server wrote it at the end
/// of round - 1), for dimension `d` (hostile input: errors, never panics).
/// Only the kind of message the server sends before that round is accepted
/// (see `downlink_tag`). On an error `out` holds no part of the message: no
/// model, both flags false and an empty sparse vector.
pub fn decode_downlink(
    bytes: &[u8],
    d: usize,
    codecs: &Codecs,
    round: u64,
    shared_key: u64,
    out: &mut Downlink,
) -> Result<(), DecodeError> {
    let res = decode_downlink_into(bytes, d, codecs, round, shared_key, out);
    if res.is_err() {
        out.is_model = false;
        out.replace = false;
        writable(&mut out.x);
        out.vec.reset_sparse(d);
    }
    res
}

fn decode_downlink_into(
    bytes: &[u8],
    d: usize,
    codecs: &Codecs,
    round: u64,
    shared_key: u64,
    out: &mut Downlink,
) -> Result<(), DecodeError> {
    let mut r = BitReader::new(bytes);
    let tag = r.read_bits(2)?;
    let expected = downlink_tag(codecs, round);
    if tag <= TAG_ESTIMATE_DELTA && tag != expected {
        return Err(DecodeError::invalid(
            "downlink.tag",
            if codecs.downlink.is_none() {
                format!(
                    "{}, but this method broadcasts the model",
                    downlink_kind(tag)
                )
            } else {
                format!(
                    "{} before round {round}, where EF21-BC sends {}",
                    downlink_kind(tag),
                    downlink_kind(expected)
                )
            },
        ));
    }
    match tag {
        TAG_MODEL => {
            if r.read_bits(6)? != 0 {
                return Err(DecodeError::invalid(
                    "model.padding",
                    "the six bits after the tag are not zero",
                ));
            }
            let body = &bytes[1..];
            let whole = body.len() / 8;
            if whole < d {
                return Err(DecodeError::Truncated {
                    at: 8 + 64 * whole as u64,
                    needed: 64,
                });
            }
            if body.len() != 8 * d {
                return Err(DecodeError::Trailing(8 * (body.len() - 8 * d) as u64));
            }
            out.is_model = true;
            let x = writable(&mut out.x);
            for w in body.chunks_exact(8) {
                let v = f64::from_bits(u64::from_be_bytes(w.try_into().expect("8 bytes")));
                if !v.is_finite() {
                    return Err(DecodeError::invalid("model", "non-finite model entry"));
                }
                x.push(v);
            }
            return Ok(());
        }
        TAG_ESTIMATE_DENSE | TAG_ESTIMATE_DELTA => {
            // Only EF21-BC (the one method with a server compressor) broadcasts
            // estimates, the dense one included: any other worker would step
            // its model locally and drift from the server's.
            let cm = codecs.downlink.as_ref().ok_or_else(|| {
                DecodeError::invalid(
                    "downlink.tag",
                    "estimate message, but this method broadcasts the model",
                )
            })?;
            out.is_model = false;
            out.replace = tag == TAG_ESTIMATE_DENSE;
            let c = if out.replace { &codecs.dense } else { cm };
            c.decode(&mut r, &DecodeCtx { shared_key }, &mut out.vec)?;
        }
        _ => {
            return Err(DecodeError::invalid(
                "downlink.tag",
                format!("unknown tag {tag}"),
            ))
        }
    }
    r.finish()
}

/// One worker's uplink of one round, decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    /// EF21+: the plain compressed gradient was chosen (g_i = c instead of g_i += c).
    pub replace: bool,
    /// The compressed vector.
    pub vec: CompressedVec,
}

/// Decodes an uplink of `round` (hostile input: errors, never panics). On
/// an error `out` holds no part of the message: an empty sparse vector.
pub fn decode_uplink(
    bytes: &[u8],
    parts: &Parts,
    codecs: &Codecs,
    round: u64,
    shared_key: u64,
    out: &mut Uplink,
) -> Result<(), DecodeError> {
    let res = decode_uplink_into(bytes, parts, codecs, round, shared_key, out);
    if res.is_err() {
        out.replace = false;
        out.vec.reset_sparse(codecs.dense.dim());
    }
    res
}

fn decode_uplink_into(
    bytes: &[u8],
    parts: &Parts,
    codecs: &Codecs,
    round: u64,
    shared_key: u64,
    out: &mut Uplink,
) -> Result<(), DecodeError> {
    let mut r = BitReader::new(bytes);
    out.replace = false;
    if parts.feedback == Feedback::Ef21Plus && round > 0 {
        out.replace = r.read_bit()?;
    }
    let c = if dense_uplink(parts, round) {
        &codecs.dense
    } else {
        &codecs.uplink
    };
    c.decode(&mut r, &DecodeCtx { shared_key }, &mut out.vec)?;
    r.finish()
}

fn dense_init_round(parts: &Parts, round: u64) -> bool {
    round == 0
        && parts.init == InitMode::Dense
        && matches!(parts.feedback, Feedback::Ef21 | Feedback::Ef21Plus)
}

/// Whether the uplink of `round` travels in the dense codec (dense init, EF21-SGD-ideal).
pub(crate) fn dense_uplink(parts: &Parts, round: u64) -> bool {
    dense_init_round(parts, round) || parts.feedback == Feedback::Ef21Ideal
}

/// The key of the shared-seed stream for (worker, round) uplinks.
pub fn uplink_shared_key(seed: u64, worker: usize, round: u64) -> u64 {
    stream_key(seed, Purpose::SharedCompress, worker as u64, round)
}

/// The key of the shared-seed stream for the server's downlink of `round`.
pub fn downlink_shared_key(seed: u64, round: u64) -> u64 {
    stream_key(seed, Purpose::SharedCompress, u64::MAX, round)
}

/// A worker's algorithm state: plain values (checkpointable, comparable).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Worker id i.
    pub id: usize,
    /// The model x^t as this worker knows it: with a model downlink, a
    /// reference to the broadcast copy (shared, not copied); with compressed
    /// downlinks (EF21-BC), the worker's own reconstruction.
    #[serde(with = "crate::compact::arc_f64s")]
    pub x: Arc<Vec<f64>>,
    /// EF21: g_i; EF14: the error e_i.
    #[serde(with = "crate::compact::f64s")]
    pub g: Vec<f64>,
    /// Momentum v_i (SGDM/SGD2M) or the PAGE estimator v_i.
    #[serde(with = "crate::compact::f64s")]
    pub v: Vec<f64>,
    /// Second momentum u_i (SGD2M).
    #[serde(with = "crate::compact::f64s")]
    pub u: Vec<f64>,
    /// PAGE: the previous iterate.
    #[serde(with = "crate::compact::f64s")]
    pub x_prev: Vec<f64>,
    /// EF21-BC: mirror of the server's broadcast estimate g.
    #[serde(with = "crate::compact::f64s")]
    pub g_server: Vec<f64>,
    /// Whether round 0 has run.
    pub initialized: bool,
    /// Number of sample gradients computed so far (for epochs).
    pub samples: u64,
    /// Cumulative uplink wire bits.
    pub bits_up_wire: u64,
    /// Cumulative uplink paper bits.
    pub bits_up_paper: u64,
    /// Cumulative downlink wire bits received.
    pub bits_down_wire: u64,
    /// Cumulative downlink paper bits received.
    pub bits_down_paper: u64,
    /// Rounds in which this worker took part.
    pub rounds_participated: u64,
}

/// Reusable buffers of a worker (not state).
#[derive(Debug, Default)]
pub struct WorkerScratch {
    est: Vec<f64>,
    tmp: Vec<f64>,
    tmp2: Vec<f64>,
    drawn: Vec<u32>,
    alt: CompressedVec,
    writer: BitWriter,
    alt_writer: BitWriter,
    comp: Scratch,
    /// The fused Top-K selection (global indices, values of h_i - g_i).
    sel_idx: Vec<u32>,
    sel_vals: Vec<f64>,
    sel_block: Vec<u32>,
    sel_cand: Vec<u64>,
    sel_hist: Vec<u32>,
    /// Top-K blocks selected inside the momentum pass so far (statistics).
    pub streamed_blocks: u64,
    /// Top-K blocks of the fused path selected from a stored t so far
    /// (small blocks, pieces across blocks, too few kept; statistics).
    pub stored_blocks: u64,
    /// The decoded value of the last uplink (what the server applies).
    pub up: Uplink,
    /// The encoded last uplink.
    pub wire: Wire,
}

/// v = (1 - eta) v + eta grad, and with `diff = (t, g)` also t = v - g, in
/// one pass.
fn momentum_step<T: Copy + Into<f64>>(
    v: &mut [f64],
    grad: &[T],
    eta: f64,
    diff: Option<(&mut [f64], &[f64])>,
) {
    match diff {
        Some((t, g)) => {
            for (((v, t), g), &gr) in v.iter_mut().zip(t.iter_mut()).zip(g).zip(grad) {
                *v = (1.0 - eta) * *v + eta * gr.into();
                *t = *v - g;
            }
        }
        None => {
            for (v, &gr) in v.iter_mut().zip(grad) {
                *v = (1.0 - eta) * *v + eta * gr.into();
            }
        }
    }
}

/// [`momentum_step`] fused with the Top-K selection of t = v - g
/// ([`StreamedTopK`]): t is offered to the selection instead of stored.
/// Same arithmetic as `momentum_step`, so the same v and t, bit for bit.
#[allow(clippy::too_many_arguments)] // the hot loop's operands, each a slice or scalar
fn momentum_select<T: Copy + Into<f64>>(
    v: &mut [f64],
    grad: &[T],
    g: &[f64],
    eta: f64,
    sel: &StreamedTopK,
    off: u32,
    idx: &mut Vec<u32>,
    vals: &mut Vec<f64>,
) {
    use crate::prefetch::prefetch_ahead;
    let len = v.len();
    let (g, grad) = (&g[..len], &grad[..len]);
    let whole = len - len % 8;
    let mut j = 0;
    while j < whole {
        // the state of n workers streams from L3: ask for it ahead
        prefetch_ahead(v, j);
        prefetch_ahead(g, j);
        prefetch_ahead(grad, j);
        let vj: &mut [f64; 8] = (&mut v[j..j + 8]).try_into().expect("8 entries");
        let gj: &[f64; 8] = g[j..j + 8].try_into().expect("8 entries");
        let grj: &[T; 8] = grad[j..j + 8].try_into().expect("8 entries");
        let mut t = [0.0; 8];
        for i in 0..8 {
            vj[i] = (1.0 - eta) * vj[i] + eta * grj[i].into();
            t[i] = vj[i] - gj[i];
        }
        sel.offer8(off + j as u32, &t, idx, vals);
        j += 8;
    }
    for j in whole..len {
        v[j] = (1.0 - eta) * v[j] + eta * grad[j].into();
        sel.offer(off + j as u32, v[j] - g[j], idx, vals);
    }
}

/// EF21-SGDM's uplink selection made while the gradient streams in: for a
/// Top-K (or per-layer Top-K) uplink, every gradient piece that is exactly
/// one Top-K block of at least 2^14 entries with 0 < K < its length is
/// folded into v and selected in one pass ([`momentum_select`]), without
/// storing t = v - g; other pieces are stored in t and their blocks
/// selected from there (as is a block whose pass kept fewer than K). The selection is the
/// one `compress` makes on t (exact Top-K, ties to the lower index), so the
/// message is bit for bit the unfused one; any non-finite entry sets
/// `failed`, and the caller then stores all of t and lets `compress` report
/// the error as it always does.
struct FusedSelect<'a> {
    blocks: &'a [TopKBlock],
    /// The next block to select.
    next: usize,
    failed: bool,
    idx: &'a mut Vec<u32>,
    vals: &'a mut Vec<f64>,
    block_idx: &'a mut Vec<u32>,
    cand: &'a mut Vec<u64>,
    hist: &'a mut Vec<u32>,
    /// Blocks selected in the pass / from stored t.
    streamed: u64,
    stored: u64,
}

impl FusedSelect<'_> {
    /// Folds the gradient piece at `off` into `v` (whole vectors `v`, `t`, `g`).
    fn piece<T: Copy + Into<f64>>(
        &mut self,
        off: usize,
        grad: &[T],
        eta: f64,
        v: &mut [f64],
        t: &mut [f64],
        g: &[f64],
    ) {
        let end = off + grad.len();
        let exact = self
            .blocks
            .get(self.next)
            .filter(|b| b.offset == off && b.len == grad.len());
        if let (Some(&b), false) = (exact, self.failed) {
            let (vb, gb) = (&mut v[off..end], &g[off..end]);
            let sel = StreamedTopK::new(
                b.len,
                b.k,
                |j| (1.0 - eta) * vb[j] + eta * grad[j].into() - gb[j],
                self.cand,
            );
            if let Some(sel) = sel {
                let from = self.idx.len();
                momentum_select(vb, grad, gb, eta, &sel, off as u32, self.idx, self.vals);
                match sel.finish(from, self.idx, self.vals, self.cand) {
                    StreamedOutcome::Selected => {
                        self.next += 1;
                        self.streamed += 1;
                        return;
                    }
                    StreamedOutcome::TooFew | StreamedOutcome::NonFinite => {
                        // v is updated: store t and select from it
                        for ((t, v), g) in t[off..end].iter_mut().zip(&*vb).zip(gb) {
                            *t = v - g;
                        }
                    }
                }
            } else {
                momentum_step(vb, grad, eta, Some((&mut t[off..end], gb)));
            }
        } else {
            momentum_step(
                &mut v[off..end],
                grad,
                eta,
                Some((&mut t[off..end], &g[off..end])),
            );
        }
        // every block now wholly stored in t
        while let Some(b) = self.blocks.get(self.next) {
            if b.offset + b.len > end {
                break;
            }
            self.next += 1;
            if self.failed {
                continue;
            }
            let tb = &t[b.offset..b.offset + b.len];
            if select_top_k_checked(tb, b.k, self.hist, self.cand, self.block_idx).is_err() {
                self.failed = true;
                continue;
            }
            for &j in self.block_idx.iter() {
                self.idx.push(b.offset as u32 + j);
                self.vals.push(tb[j as usize]);
            }
            self.stored += 1;
        }
    }

    /// Whether every block was selected.
    fn complete(&self) -> bool {
        !self.failed && self.next == self.blocks.len()
    }
}

/// Which vector holds a worker's estimate h_i after the estimator ran.
#[derive(Clone, Copy)]
enum EstimateIn {
    /// `scratch.est`.
    Scratch,
    /// `state.v` (momentum, PAGE).
    V,
    /// `state.u` (double momentum).
    U,
}

/// Per-round context shared by all parties.
#[derive(Debug, Clone, Copy)]
pub struct RoundCtx {
    /// Run seed.
    pub seed: u64,
    /// Round number t.
    pub round: u64,
}

/// A worker: its state plus scratch.
#[derive(Debug, Default)]
pub struct Worker {
    /// The algorithm state.
    pub state: WorkerState,
    /// Buffers.
    pub scratch: WorkerScratch,
    /// EF21-W: s_i = n w_i, the estimate is divided by it before the feedback
    /// (`None`: unweighted). Configuration, not state: setup derives it from
    /// the data, so checkpoints do not carry it.
    pub weight_scale: Option<f64>,
}

impl Worker {
    /// A fresh worker `id` for dimension `d` starting at `x0`.
    pub fn new(id: usize, x0: &[f64]) -> Self {
        let d = x0.len();
        let state = WorkerState {
            id,
            x: Arc::new(x0.to_vec()),
            g: vec![0.0; d],
            ..Default::default()
        };
        let scratch = WorkerScratch {
            est: vec![0.0; d],
            tmp: vec![0.0; d],
            tmp2: vec![0.0; d],
            ..Default::default()
        };
        Worker {
            state,
            scratch,
            weight_scale: None,
        }
    }

    /// Tells `oracle` which minibatch this worker will draw in the round
    /// after `rc.round` if it takes part in it ([`Oracle::stage_batch`];
    /// the caller knows who does), for the estimators whose
    /// next draw is known now: a minibatch or momentum estimator's next
    /// stochastic gradient (not a full batch, not PAGE, whose batch depends
    /// on a coin). A hint only: nothing of the worker changes, and the
    /// round's results are the same with or without it.
    pub fn stage_next(&self, oracle: &mut dyn Oracle, parts: &Parts, rc: RoundCtx) {
        let n_local = oracle.num_samples();
        let batch = match parts.estimator {
            Estimator::Minibatch(b) => b,
            Estimator::Momentum {
                batch, init_batch, ..
            }
            | Estimator::DoubleMomentum {
                batch, init_batch, ..
            } => {
                if self.state.initialized {
                    batch
                } else {
                    init_batch
                }
            }
            Estimator::FullGradient | Estimator::Page { .. } => return,
        };
        let b = batch.resolve(n_local);
        if n_local.is_none() || n_local == Some(b) {
            return;
        }
        let mut rng = stream(rc.seed, Purpose::Sample, self.state.id as u64, rc.round + 1);
        oracle.stage_batch(b, &mut rng);
    }

    /// Runs the worker's part of round `rc.round`: applies the downlink, computes
    /// its estimate with `oracle`, and leaves its uplink in `self.scratch.up`
    /// (decoded) and `self.scratch.wire` (encoded). Returns the local loss
    /// reported by the oracle (NaN when it only computed a gradient).
    pub fn step(
        &mut self,
        down: &Downlink,
        down_wire: &Wire,
        oracle: &mut dyn Oracle,
        parts: &Parts,
        codecs: &Codecs,
        rc: RoundCtx,
    ) -> Result<f64, CompressError> {
        let st = &mut self.state;
        let sc = &mut self.scratch;
        let d = st.x.len();
        st.bits_down_wire += down_wire.wire_bits();
        st.bits_down_paper += down_wire.paper_bits;
        st.rounds_participated += 1;
        // 1. apply the downlink
        if down.is_model {
            st.x = Arc::clone(&down.x);
            // the broadcast model is shared by the workers of this process:
            // an oracle may convert it once for all of them
            oracle.at_model(&st.x);
        } else {
            if st.g_server.len() != d {
                st.g_server = vec![0.0; d];
            }
            if down.replace {
                down.vec.to_dense(&mut st.g_server);
            } else {
                down.vec.add_to(&mut st.g_server);
            }
            // copies the model only if it is still shared with a model downlink
            for (x, g) in Arc::make_mut(&mut st.x).iter_mut().zip(&st.g_server) {
                *x -= parts.gamma * g;
            }
        }
        // 2. the estimator
        let n_local = oracle.num_samples();
        let mut rng_sample = stream(rc.seed, Purpose::Sample, st.id as u64, rc.round);
        let loss;
        // where the estimate h_i ends up: the momentum and PAGE estimators
        // leave it in their state vector and are read there (no copy)
        let mut est_in = EstimateIn::Scratch;
        // whether sc.tmp already holds h_i - g_i (fused into the momentum step)
        let mut diff_ready = false;
        // whether sc.sel_* hold the Top-K selection of h_i - g_i instead
        let mut selected = false;
        match parts.estimator {
            Estimator::FullGradient => {
                oracle.grad(&st.x, &mut sc.est);
                loss = f64::NAN;
                st.samples += n_local.unwrap_or(1) as u64;
            }
            Estimator::Minibatch(b) => {
                let b = b.resolve(n_local);
                // A full batch is the full gradient, computed the same way (EF21-SGD with
                // full batches reduces to EF21 bit for bit).
                loss = if n_local == Some(b) {
                    oracle.grad(&st.x, &mut sc.est);
                    f64::NAN
                } else {
                    oracle.stochastic_grad(&st.x, b, &mut rng_sample, &mut sc.drawn, &mut sc.est)
                };
                st.samples += b as u64;
            }
            Estimator::Momentum {
                eta,
                batch,
                init_batch,
            }
            | Estimator::DoubleMomentum {
                eta,
                batch,
                init_batch,
            } => {
                if !st.initialized {
                    let b = init_batch.resolve(n_local);
                    loss = if n_local == Some(b) {
                        oracle.grad(&st.x, &mut sc.est);
                        f64::NAN
                    } else {
                        oracle.stochastic_grad(
                            &st.x,
                            b,
                            &mut rng_sample,
                            &mut sc.drawn,
                            &mut sc.est,
                        )
                    };
                    st.samples += b as u64;
                    st.v = sc.est.clone();
                    if matches!(parts.estimator, Estimator::DoubleMomentum { .. }) {
                        st.u = sc.est.clone();
                    }
                } else {
                    let b = batch.resolve(n_local);
                    st.samples += b as u64;
                    let double = matches!(parts.estimator, Estimator::DoubleMomentum { .. });
                    // The oracle hands over its gradient in place; one pass
                    // does the momentum step and, for EF21-SGDM, also the
                    // difference v_i - g_i the feedback needs (the same
                    // arithmetic as separate passes, bit for bit).
                    diff_ready =
                        !double && parts.feedback == Feedback::Ef21 && self.weight_scale.is_none();
                    // a Top-K uplink also selects in that pass (t is not stored)
                    let top_k = match (diff_ready, parts.force_identity) {
                        (true, false) if !dense_init_round(parts, rc.round) => {
                            codecs.uplink.top_k_blocks()
                        }
                        _ => None,
                    };
                    let (v, t, g) = (&mut st.v, &mut sc.tmp, &st.g);
                    let mut fused = top_k.map(|blocks| {
                        sc.sel_idx.clear();
                        sc.sel_vals.clear();
                        FusedSelect {
                            blocks,
                            next: 0,
                            failed: false,
                            idx: &mut sc.sel_idx,
                            vals: &mut sc.sel_vals,
                            block_idx: &mut sc.sel_block,
                            cand: &mut sc.sel_cand,
                            hist: &mut sc.sel_hist,
                            streamed: 0,
                            stored: 0,
                        }
                    });
                    let mut sink = |off: usize, piece: GradPiece<'_>| match &mut fused {
                        Some(fs) => match piece {
                            GradPiece::F32(gr) => fs.piece(off, gr, eta, v, t, g),
                            GradPiece::F64(gr) => fs.piece(off, gr, eta, v, t, g),
                        },
                        None => {
                            let end = off + piece.len();
                            let v = &mut v[off..end];
                            let diff = diff_ready.then(|| (&mut t[off..end], &g[off..end]));
                            match piece {
                                GradPiece::F32(gr) => momentum_step(v, gr, eta, diff),
                                GradPiece::F64(gr) => momentum_step(v, gr, eta, diff),
                            }
                        }
                    };
                    loss = oracle.stochastic_grad_with(
                        &st.x,
                        b,
                        &mut rng_sample,
                        &mut sc.drawn,
                        &mut sc.tmp2,
                        &mut sink,
                    );
                    if let Some(fs) = fused {
                        selected = fs.complete();
                        sc.streamed_blocks += fs.streamed;
                        sc.stored_blocks += fs.stored;
                        if !selected {
                            // store all of t; `compress` reports the error
                            for ((t, v), g) in sc.tmp.iter_mut().zip(&st.v).zip(&st.g) {
                                *t = v - g;
                            }
                        }
                    }
                    if double {
                        for (u, v) in st.u.iter_mut().zip(&st.v) {
                            *u = (1.0 - eta) * *u + eta * v;
                        }
                        est_in = EstimateIn::U;
                    } else {
                        est_in = EstimateIn::V;
                    }
                }
            }
            Estimator::Page {
                p,
                batch,
                shared_coin,
            } => {
                use rand::Rng as _;
                let m = n_local.expect("PAGE needs a finite-sum oracle");
                let full = if !st.initialized {
                    true
                } else if shared_coin {
                    stream(rc.seed, Purpose::SharedCoin, 0, rc.round).gen::<f64>() < p
                } else {
                    stream(rc.seed, Purpose::SharedCoin, st.id as u64 + 1, rc.round).gen::<f64>()
                        < p
                };
                if full {
                    loss = oracle.loss_grad(&st.x, &mut sc.est);
                    st.samples += m as u64;
                    st.v.clear();
                    st.v.extend_from_slice(&sc.est);
                } else {
                    let b = batch.resolve(Some(m));
                    loss = oracle.stochastic_grad(
                        &st.x,
                        b,
                        &mut rng_sample,
                        &mut sc.drawn,
                        &mut sc.tmp,
                    );
                    oracle.indexed_grad(&st.x_prev, &sc.drawn, &mut sc.tmp2);
                    st.samples += 2 * b as u64;
                    for ((v, a), b) in st.v.iter_mut().zip(&sc.tmp).zip(&sc.tmp2) {
                        *v += a - b;
                    }
                    est_in = EstimateIn::V;
                }
                st.x_prev.clear();
                st.x_prev.extend_from_slice(&st.x);
            }
        }
        // EF21-W: the worker tracks grad f_i / (n w_i) (Richtarik, Gasanov &
        // Burlachenko 2024), so that sum_i w_i g_i estimates grad f
        if let Some(s) = self.weight_scale {
            match est_in {
                EstimateIn::Scratch => {}
                EstimateIn::V => sc.est.copy_from_slice(&st.v),
                EstimateIn::U => sc.est.copy_from_slice(&st.u),
            }
            est_in = EstimateIn::Scratch;
            sc.est.iter_mut().for_each(|v| *v /= s);
        }
        let est: &[f64] = match est_in {
            EstimateIn::Scratch => &sc.est,
            EstimateIn::V => &st.v,
            EstimateIn::U => &st.u,
        };
        // 3. the feedback builds the message
        let mut rng_c = stream(rc.seed, Purpose::Compress, st.id as u64, rc.round);
        let shared_key = uplink_shared_key(rc.seed, st.id, rc.round);
        let mut ctx = CompressCtx {
            rng: &mut rng_c,
            shared_key,
            scratch: &mut sc.comp,
        };
        sc.writer.clear();
        sc.up.replace = false;
        let uplink: &dyn Compressor = if parts.force_identity {
            codecs.dense.as_ref()
        } else {
            codecs.uplink.as_ref()
        };
        if dense_init_round(parts, rc.round) {
            codecs
                .dense
                .compress(est, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
            st.g.iter_mut().for_each(|v| *v = 0.0);
            sc.up.vec.add_to(&mut st.g);
        } else {
            match parts.feedback {
                Feedback::None => uplink.compress(est, &mut ctx, &mut sc.up.vec, &mut sc.writer)?,
                Feedback::Ef14 => {
                    for ((t, e), h) in sc.tmp.iter_mut().zip(&st.g).zip(est) {
                        *t = e + parts.gamma * h;
                    }
                    uplink.compress(&sc.tmp, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                    st.g.copy_from_slice(&sc.tmp);
                    sc.up.vec.add_scaled_to(&mut st.g, -1.0);
                }
                Feedback::Ef21 => {
                    if !st.initialized {
                        // compressed init: g_i^0 = C(h)
                        uplink.compress(est, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                        st.g.iter_mut().for_each(|v| *v = 0.0);
                    } else {
                        if selected {
                            uplink.compress_selected(
                                &sc.sel_idx,
                                0,
                                &sc.sel_vals,
                                &mut sc.up.vec,
                                &mut sc.writer,
                            )?;
                        } else {
                            if !diff_ready {
                                for ((t, h), g) in sc.tmp.iter_mut().zip(est).zip(&st.g) {
                                    *t = h - g;
                                }
                            }
                            uplink.compress(&sc.tmp, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                        }
                    }
                    sc.up.vec.add_to(&mut st.g);
                }
                Feedback::Ef21Ideal => {
                    // the exact local gradient: what makes this method "ideal"
                    oracle.grad(&st.x, &mut sc.tmp2);
                    for ((t, h), gf) in sc.tmp.iter_mut().zip(est).zip(&sc.tmp2) {
                        *t = h - gf;
                    }
                    // C(h - grad f_i(x)), then g_i = grad f_i(x) + C(...) sent dense
                    sc.alt_writer.clear();
                    uplink.compress(&sc.tmp, &mut ctx, &mut sc.alt, &mut sc.alt_writer)?;
                    sc.alt.add_to(&mut sc.tmp2);
                    codecs
                        .dense
                        .compress(&sc.tmp2, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                    sc.up.vec.to_dense(&mut st.g);
                }
                Feedback::Ef21Plus => {
                    if !st.initialized {
                        uplink.compress(est, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                        st.g.iter_mut().for_each(|v| *v = 0.0);
                        sc.up.vec.add_to(&mut st.g);
                    } else {
                        // Markov candidate m = g + C(h - g)
                        for ((t, h), g) in sc.tmp.iter_mut().zip(est).zip(&st.g) {
                            *t = h - g;
                        }
                        uplink.compress(&sc.tmp, &mut ctx, &mut sc.up.vec, &mut sc.writer)?;
                        sc.tmp2.copy_from_slice(&st.g);
                        sc.up.vec.add_to(&mut sc.tmp2);
                        let dist_m: f64 = sc
                            .tmp2
                            .iter()
                            .zip(est)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        // plain candidate b = C(h)
                        sc.alt_writer.clear();
                        uplink.compress(est, &mut ctx, &mut sc.alt, &mut sc.alt_writer)?;
                        let mut dist_b = 0.0;
                        sc.alt.to_dense(&mut sc.tmp);
                        for (a, b) in sc.tmp.iter().zip(est) {
                            dist_b += (a - b) * (a - b);
                        }
                        if dist_b < dist_m {
                            // the plain compressed gradient is strictly closer
                            std::mem::swap(&mut sc.up.vec, &mut sc.alt);
                            std::mem::swap(&mut sc.writer, &mut sc.alt_writer);
                            sc.up.replace = true;
                            st.g.copy_from_slice(&sc.tmp);
                        } else {
                            st.g.copy_from_slice(&sc.tmp2);
                        }
                    }
                }
            }
        }
        st.initialized = true;
        // 4. encode: [EF21+ flag] [compressed vector]
        if parts.feedback == Feedback::Ef21Plus && rc.round > 0 {
            let payload_bits = sc.writer.bit_len();
            let mut w = std::mem::take(&mut sc.alt_writer);
            w.clear();
            w.write_bit(sc.up.replace);
            // copy the payload bits after the one-bit header
            let payload = sc.writer.finish();
            let mut rr = BitReader::new(payload);
            let mut left = payload_bits;
            while left > 0 {
                let take = left.min(64) as u32;
                w.write_bits(rr.read_bits(take).expect("own payload"), take);
                left -= take as u64;
            }
            w.finish_swap(&mut sc.wire.bytes);
            sc.alt_writer = w;
        } else {
            // no header: the payload is the message (handed over, not copied)
            sc.writer.finish_swap(&mut sc.wire.bytes);
        }
        let used: &dyn Compressor = if dense_uplink(parts, rc.round) {
            codecs.dense.as_ref()
        } else {
            uplink
        };
        // The papers' counters start at zero after the dense g_i^0 (`it * k * 32`,
        // algorithms.md §3.3) and count values only (no EF21+ flag bit).
        sc.wire.paper_bits = if dense_init_round(parts, rc.round) {
            0
        } else {
            used.paper_bits(&sc.up.vec)
        };
        st.bits_up_wire += sc.wire.wire_bits();
        st.bits_up_paper += sc.wire.paper_bits;
        Ok(loss)
    }
}

/// The server's algorithm state: plain values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// The model x^t.
    #[serde(with = "crate::compact::f64s")]
    pub x: Vec<f64>,
    /// The aggregate g^t = mean_i g_i^t (EF21 family); for EF21-BC the
    /// workers' aggregate gtilde.
    #[serde(with = "crate::compact::f64s")]
    pub g: Vec<f64>,
    /// EF21+ only: every worker's g_i (the server needs them when a worker
    /// replaces its estimate).
    pub g_i: Vec<Vec<f64>>,
    /// Heavy-ball momentum v.
    #[serde(with = "crate::compact::f64s")]
    pub v: Vec<f64>,
    /// EF21-BC: the broadcast estimate g mirrored by the workers.
    #[serde(with = "crate::compact::f64s")]
    pub g_bc: Vec<f64>,
    /// The next round number.
    pub round: u64,
    /// The downlink of the next round, decoded.
    pub next_down: Downlink,
    /// The downlink of the next round, encoded.
    pub next_wire: Wire,
}

/// Coordinates per block of EF21's fused server pass: the block's g, sum,
/// x, model copy and encoded bytes (40 bytes per coordinate) stay in the L2
/// cache between the step and the copies.
const SERVER_BLOCK: usize = 2048;

/// EF21's fused server pass over a range of coordinates: g += acc / n,
/// x -= gamma g, acc = 0, and the new x into the downlink's model copy and
/// its encoded bytes (see [`encode_model`]), which start uninitialised.
struct ModelPass<'a> {
    g: &'a mut [f64],
    acc: &'a mut [f64],
    x: &'a mut [f64],
    down: &'a mut [MaybeUninit<f64>],
    /// 8 bytes per coordinate (the message after its header byte).
    bytes: &'a mut [MaybeUninit<u8>],
}

impl ModelPass<'_> {
    /// The first `k` coordinates and the rest.
    fn split_at(self, k: usize) -> (Self, Self) {
        let (g0, g1) = self.g.split_at_mut(k);
        let (a0, a1) = self.acc.split_at_mut(k);
        let (x0, x1) = self.x.split_at_mut(k);
        let (d0, d1) = self.down.split_at_mut(k);
        let (b0, b1) = self.bytes.split_at_mut(8 * k);
        (
            ModelPass {
                g: g0,
                acc: a0,
                x: x0,
                down: d0,
                bytes: b0,
            },
            ModelPass {
                g: g1,
                acc: a1,
                x: x1,
                down: d1,
                bytes: b1,
            },
        )
    }

    /// Cuts the range into `ways` pieces of whole blocks and runs them
    /// through `fork`.
    fn run_forked(self, fork: &dyn Fork, ways: usize, inv_n: f64, gamma: f64) {
        let blocks = self.g.len().div_ceil(SERVER_BLOCK);
        if ways <= 1 || blocks < 2 {
            self.run(inv_n, gamma);
            return;
        }
        let left_ways = ways / 2;
        let left_blocks = (blocks * left_ways / ways).max(1);
        let (left, right) = self.split_at(left_blocks * SERVER_BLOCK);
        let (mut left, mut right) = (Some(left), Some(right));
        fork.join(
            &mut || {
                if let Some(p) = left.take() {
                    p.run_forked(fork, left_ways, inv_n, gamma);
                }
            },
            &mut || {
                if let Some(p) = right.take() {
                    p.run_forked(fork, ways - left_ways, inv_n, gamma);
                }
            },
        );
    }

    /// Runs the pass block by block, so that each block's values are still
    /// in cache when they are copied and encoded.
    fn run(self, inv_n: f64, gamma: f64) {
        let blocks = self
            .g
            .chunks_mut(SERVER_BLOCK)
            .zip(self.acc.chunks_mut(SERVER_BLOCK))
            .zip(self.x.chunks_mut(SERVER_BLOCK))
            .zip(self.down.chunks_mut(SERVER_BLOCK))
            .zip(self.bytes.chunks_mut(8 * SERVER_BLOCK));
        for ((((g, a), x), down), bytes) in blocks {
            for ((g, a), x) in g.iter_mut().zip(a.iter_mut()).zip(x.iter_mut()) {
                *g += *a * inv_n;
                *x -= gamma * *g;
                *a = 0.0;
            }
            for (o, &v) in down.iter_mut().zip(&*x) {
                o.write(v);
            }
            for (o, &v) in bytes.chunks_exact_mut(8).zip(&*x) {
                for (o, b) in o.iter_mut().zip(v.to_bits().to_be_bytes()) {
                    o.write(b);
                }
            }
        }
    }
}

/// Reusable buffers of the server.
#[derive(Debug, Default)]
pub struct ServerScratch {
    /// The model buffer of the round before last (see [`Downlink::recycle_model`]).
    spare_model: Arc<Vec<f64>>,
    acc: Vec<f64>,
    /// Whether `acc` is known to be all zeros (EF21's hot pass clears it as
    /// it reads it, saving the next round a pass over it).
    acc_zeroed: bool,
    tmp: Vec<f64>,
    writer: BitWriter,
    comp: Scratch,
}

/// The server: state plus scratch.
#[derive(Debug, Default)]
pub struct Server {
    /// The algorithm state.
    pub state: ServerState,
    /// Buffers.
    pub scratch: ServerScratch,
    /// Number of workers.
    pub n: usize,
    /// EF21-W: s_i = n w_i of every worker; the server aggregates
    /// g = (1/n) sum_i s_i g_i = sum_i w_i g_i (`None`: unweighted).
    pub weight_scales: Option<Vec<f64>>,
}

impl Server {
    /// A server for `n` workers starting at `x0`; the first downlink is x0.
    pub fn new(n: usize, x0: &[f64]) -> Self {
        let d = x0.len();
        let state = ServerState {
            x: x0.to_vec(),
            g: vec![0.0; d],
            ..Default::default()
        };
        let mut s = Server {
            state,
            scratch: ServerScratch {
                acc: vec![0.0; d],
                tmp: vec![0.0; d],
                ..Default::default()
            },
            n,
            weight_scales: None,
        };
        s.prepare_model_downlink();
        s
    }

    /// Re-encodes a model downlink from the model it carries (the same bytes
    /// when they are current). For a restored state: checkpoints written
    /// before the model message put its values on the byte grid hold the
    /// older layout (same length), which decoders now refuse.
    pub fn reencode_model_downlink(&mut self) {
        let st = &mut self.state;
        if st.next_down.is_model {
            encode_model(&st.next_down.x, &mut self.scratch.writer, &mut st.next_wire);
        }
    }

    fn prepare_model_downlink(&mut self) {
        let st = &mut self.state;
        st.next_down.is_model = true;
        st.next_down.recycle_model(&mut self.scratch.spare_model);
        writable(&mut st.next_down.x).extend_from_slice(&st.x);
        encode_model(&st.x, &mut self.scratch.writer, &mut st.next_wire);
    }

    /// Which workers take part in round `round` (round 0: everyone).
    pub fn participants(
        &self,
        parts: &Parts,
        seed: u64,
        round: u64,
        out: &mut Vec<bool>,
        idx: &mut Vec<u32>,
    ) {
        use rand::Rng as _;
        out.clear();
        out.resize(self.n, true);
        if round == 0 {
            return;
        }
        let mut rng = stream(seed, Purpose::Participation, 0, round);
        match parts.participation {
            Participation::All => {}
            Participation::Nice { k } => {
                crate::oracle::sample_without_replacement(self.n, k.min(self.n), &mut rng, idx);
                out.iter_mut().for_each(|b| *b = false);
                for &i in idx.iter() {
                    out[i as usize] = true;
                }
            }
            Participation::Independent { p } => {
                for b in out.iter_mut() {
                    *b = rng.gen::<f64>() < p;
                }
            }
        }
    }

    /// Applies the uplinks of round `rc.round` (`None` for workers that did not
    /// take part), in worker-id order, computes x^{t+1} and prepares the next
    /// downlink.
    pub fn apply(
        &mut self,
        ups: &[Option<&Uplink>],
        parts: &Parts,
        codecs: &Codecs,
        rc: RoundCtx,
    ) -> Result<(), CompressError> {
        assert_eq!(ups.len(), self.n, "one uplink slot per worker");
        self.apply_with(|i| ups[i], parts, codecs, rc)
    }

    /// [`Server::apply`] with the uplinks given by `up(i)` for worker i (no
    /// slice of references has to be built each round).
    pub fn apply_with<'a>(
        &mut self,
        up: impl Fn(usize) -> Option<&'a Uplink>,
        parts: &Parts,
        codecs: &Codecs,
        rc: RoundCtx,
    ) -> Result<(), CompressError> {
        self.apply_forked(up, parts, codecs, rc, &Serial)
    }

    /// [`Server::apply_with`] with EF21's dense pass (aggregate, step, model
    /// copy and encoding) split over `fork`'s threads: the same state and
    /// the same bytes whatever the fork.
    pub fn apply_forked<'a>(
        &mut self,
        up: impl Fn(usize) -> Option<&'a Uplink>,
        parts: &Parts,
        codecs: &Codecs,
        rc: RoundCtx,
        fork: &dyn Fork,
    ) -> Result<(), CompressError> {
        let st = &mut self.state;
        let sc = &mut self.scratch;
        let d = st.x.len();
        let inv_n = 1.0 / self.n as f64;
        // sum of the received vectors, in worker order
        if !sc.acc_zeroed {
            sc.acc.iter_mut().for_each(|v| *v = 0.0);
        }
        sc.acc_zeroed = false;
        match parts.feedback {
            Feedback::Ef21Plus => {
                if st.g_i.len() != self.n {
                    st.g_i = vec![vec![0.0; d]; self.n];
                }
                for (i, gi) in st.g_i.iter_mut().enumerate() {
                    if let Some(up) = up(i) {
                        if up.replace {
                            up.vec.to_dense(gi);
                        } else {
                            up.vec.add_to(gi);
                        }
                    }
                }
                for gi in &st.g_i {
                    for (a, v) in sc.acc.iter_mut().zip(gi) {
                        *a += v;
                    }
                }
                for (g, a) in st.g.iter_mut().zip(&sc.acc) {
                    *g = a * inv_n;
                }
            }
            _ => {
                for i in 0..self.n {
                    if let Some(up) = up(i) {
                        match &self.weight_scales {
                            Some(s) => up.vec.add_scaled_to(&mut sc.acc, s[i]),
                            None => up.vec.add_to(&mut sc.acc),
                        }
                    }
                }
            }
        }
        match parts.feedback {
            Feedback::None | Feedback::Ef21Ideal => {
                // DCGD / GD / SGD: g^t = (1/n) sum_i c_i; EF21-SGD-ideal: g^t = (1/n) sum_i g_i
                for (g, a) in st.g.iter_mut().zip(&sc.acc) {
                    *g = a * inv_n;
                }
            }
            Feedback::Ef14 => {
                // x^{t+1} = x^t - (1/n) sum_i w_i (gamma is inside w_i)
                for (x, a) in st.x.iter_mut().zip(&sc.acc) {
                    *x -= a * inv_n;
                }
                st.round = rc.round + 1;
                self.prepare_model_downlink();
                return Ok(());
            }
            Feedback::Ef21
                if matches!(parts.server_step, ServerStep::Plain)
                    && parts.downlink == DownlinkMode::Model =>
            {
                // EF21's hot path: the aggregate and the step in one pass
                // (the same arithmetic as the two passes below), which also
                // clears the sum for the next round; block by block, the new
                // model is copied into the downlink and encoded while the
                // block is in cache (the same values and bytes as
                // `prepare_model_downlink`), on `fork`'s threads
                let down = &mut st.next_down;
                down.is_model = true;
                down.recycle_model(&mut sc.spare_model);
                let down_x = writable(&mut down.x);
                down_x.reserve(d);
                let bytes = &mut st.next_wire.bytes;
                bytes.clear();
                bytes.reserve(1 + 8 * d);
                bytes.push(MODEL_HEADER);
                // every coordinate must be written (see the SAFETY note below)
                assert!(
                    st.g.len() == d && sc.acc.len() == d,
                    "server state dimensions"
                );
                let pass = ModelPass {
                    g: &mut st.g,
                    acc: &mut sc.acc,
                    x: &mut st.x,
                    down: &mut down_x.spare_capacity_mut()[..d],
                    bytes: &mut bytes.spare_capacity_mut()[..8 * d],
                };
                pass.run_forked(fork, fork.ways(), inv_n, parts.gamma);
                // SAFETY: the pass wrote all d values of the model copy and
                // all 8d bytes after the header (`ModelPass::run` writes
                // every coordinate of its range, and the ranges of a split
                // cover [0, d))
                unsafe {
                    down_x.set_len(d);
                    bytes.set_len(1 + 8 * d);
                }
                st.next_wire.paper_bits = 0;
                sc.acc_zeroed = true;
                st.round = rc.round + 1;
                return Ok(());
            }
            Feedback::Ef21 => {
                for (g, a) in st.g.iter_mut().zip(&sc.acc) {
                    *g += a * inv_n;
                }
            }
            Feedback::Ef21Plus => {}
        }
        // the step direction: g, or for EF21-BC the broadcast estimate
        let dir: &[f64] = if parts.downlink == DownlinkMode::CompressedEstimate {
            let mut rng = stream(rc.seed, Purpose::ServerCompress, 0, rc.round);
            let key = downlink_shared_key(rc.seed, rc.round);
            let mut ctx = CompressCtx {
                rng: &mut rng,
                shared_key: key,
                scratch: &mut sc.comp,
            };
            sc.writer.clear();
            let down = &mut st.next_down;
            down.is_model = false;
            // the message that opens the next round (the decoder accepts
            // only this kind there)
            if downlink_tag(codecs, rc.round + 1) == TAG_ESTIMATE_DENSE {
                // Dense broadcast of g = gtilde: the initial message (the authors' code), and
                // every message when C_M is the identity (so EF21-BC reduces to EF21 exactly).
                sc.writer.write_bits(TAG_ESTIMATE_DENSE, 2);
                codecs
                    .dense
                    .compress(&st.g, &mut ctx, &mut down.vec, &mut sc.writer)?;
                down.replace = true;
                // to_dense writes every entry: sized once, no allocation per round
                st.g_bc.resize(d, 0.0);
                down.vec.to_dense(&mut st.g_bc);
                // the initial dense broadcast is free in the papers' count, as is
                // the workers' dense g_i^0 (algorithms.md §3.3)
                st.next_wire.paper_bits = if rc.round == 0 {
                    0
                } else {
                    codecs.dense.paper_bits(&down.vec)
                };
            } else {
                sc.writer.write_bits(TAG_ESTIMATE_DELTA, 2);
                for ((t, a), b) in sc.tmp.iter_mut().zip(&st.g).zip(&st.g_bc) {
                    *t = a - b;
                }
                let cm = codecs
                    .downlink
                    .as_ref()
                    .expect("EF21-BC needs a server compressor (checked at setup)");
                cm.compress(&sc.tmp, &mut ctx, &mut down.vec, &mut sc.writer)?;
                down.replace = false;
                down.vec.add_to(&mut st.g_bc);
                st.next_wire.paper_bits = cm.paper_bits(&down.vec);
            }
            sc.writer.finish_swap(&mut st.next_wire.bytes);
            &st.g_bc
        } else {
            &st.g
        };
        match parts.server_step {
            ServerStep::Plain => {
                for (x, g) in st.x.iter_mut().zip(dir) {
                    *x -= parts.gamma * g;
                }
            }
            ServerStep::HeavyBall { eta } => {
                if rc.round == 0 {
                    st.v = dir.to_vec();
                } else {
                    for (v, g) in st.v.iter_mut().zip(dir) {
                        *v = eta * *v + g;
                    }
                }
                for (x, v) in st.x.iter_mut().zip(&st.v) {
                    *x -= parts.gamma * v;
                }
            }
            ServerStep::Prox { reg } => {
                for (x, g) in st.x.iter_mut().zip(dir) {
                    *x -= parts.gamma * g;
                }
                reg.prox(&mut st.x, parts.gamma);
            }
        }
        st.round = rc.round + 1;
        if parts.downlink == DownlinkMode::Model {
            self.prepare_model_downlink();
        }
        Ok(())
    }
}
