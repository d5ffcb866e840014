//! Safe-EF: error feedback for nonsmooth constrained optimization (Islamov, As
//! & Fatkhullin, ICML 2025, arXiv:2505.06053; algorithms.md §9), with its
//! baselines, as worker and server states (plain values) and wire messages.
//!
//! Problem: min f(x) = (1/n) sum_i f_i(x) s.t. g(x) = (1/n) sum_i g_i(x) <= 0,
//! x in X, with f_i, g_i convex and M-Lipschitz, worker i knowing only f_i, g_i.
//!
//! Round t of Safe-EF (the switching subgradient method of Polyak 1967, with
//! EF14 worker compression and EF21-P-style primal compression of the model):
//!
//! ```text
//! state:  worker i: w^t (model copy), e_i^t (error, e_i^0 = 0)
//!         server:   x^t (exact iterate), w^t (broadcast model), w^0 = x^0
//! phase 1  uplink:   c_i = g_i(w^t)                      (one value)
//!          downlink: s_t = [ mean_i c_i <= c ]           (one bit; c the threshold)
//! phase 2  uplink:   h_i = s_t ? subgrad f_i(w^t) : subgrad g_i(w^t)
//!                    v_i = C(e_i + gamma h_i),  e_i <- e_i + gamma h_i - v_i   (send v_i)
//!          server:   x^{t+1} = Pi_X(x^t - (1/n) sum_i v_i)
//!          downlink: p = C_0(x^{t+1} - w^t),  w^{t+1} = w^t + p  (send p; without
//!                    server compression the dense model x^{t+1} in f64, w = x)
//! output:  the average of w^t over the productive rounds {t : s_t = 1}
//! ```
//!
//! The switch for round t needs the constraint at w^t, which the workers only
//! know after the model downlink of round t - 1, so a round has two honest
//! communication phases; both are encoded and counted.
//!
//! Baselines ([`SafeSpec`] names): `parallel-sgd` (uncompressed switching
//! subgradient: v_i = gamma h_i with the identity), `compressed-sgd`
//! (v_i = C(gamma h_i), no error feedback), `ef21-switching` (c_i = C(h_i - g_i),
//! g_i += c_i, server g += mean c_i, x -= gamma g; algorithms.md §9.3 notes the
//! authors' EF21 variant) and `primal-dual` (Lagrangian: h_i = subgrad f_i +
//! lambda subgrad g_i with EF14, one phase: uplink [g_i(w^t), v_i], downlink
//! [lambda^{t+1}, p] with lambda^{t+1} = max(0, lambda^t + eta mean_i g_i(w^t));
//! output: the average of all w^t).
//!
//! Step size and threshold ([`SafeTheory`]; a derivation of ours, [D] in
//! algorithms.md terms, see docs/safe-ef.md): with ||h_i|| <= M, ||x^0 - x*|| <= R,
//! T rounds, a deterministic contractive C with constant alpha and C_0 with
//! alpha_0, q = sqrt(1 - alpha), B(a) = sqrt(1 - a)/(1 - sqrt(1 - a)) and
//! D = B(alpha) + B(alpha_0)(1 + q)(1 + B(alpha)):
//!
//! ```text
//! gamma = R / (M sqrt(T (1 + 2D))),   c(gamma) = R^2/(2 gamma T) + gamma M^2 (1 + 2D)/2
//! ```
//!
//! and then for X = R^d the averaged output xbar satisfies f(xbar) - f* <= c and
//! g(xbar) <= c, with c(gamma) = M R sqrt((1 + 2D)/T) = O(M R/sqrt(alpha T)).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bits::{BitReader, BitWriter};
use crate::compress::{CompressCtx, CompressedVec, Compressor, DecodeCtx, Scratch, ValueFormat};
use crate::error::{CompressError, DecodeError, ParamError};
use crate::method::{
    downlink_shared_key, preset_names, uplink_shared_key, Preset, Regularizer, RoundCtx, Wire,
};
use crate::rng::{stream, Purpose};

/// A Safe-EF round failed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SafeError {
    /// A compressor met a non-finite value (the run diverged).
    #[error("{0}")]
    Compress(#[from] CompressError),
    /// A message did not decode.
    #[error("decoding a message: {0}")]
    Decode(#[from] DecodeError),
}

/// How a worker turns its subgradient into its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafeFeedback {
    /// v_i = C(gamma h_i).
    None,
    /// v_i = C(e_i + gamma h_i), e_i += gamma h_i - v_i.
    Ef14,
    /// c_i = C(h_i - g_i), g_i += c_i (server: g += mean c_i, x -= gamma g).
    Ef21,
}

/// How the constraint enters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rule {
    /// Step on f when mean_i g_i(w^t) <= threshold, on g otherwise.
    Switching {
        /// The threshold c.
        threshold: f64,
    },
    /// Step on f + lambda g; lambda <- max(0, lambda + dual_step * mean_i g_i(w^t)).
    PrimalDual {
        /// Dual step eta.
        dual_step: f64,
        /// lambda^0.
        lambda0: f64,
    },
}

/// A method as validated parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafeParts {
    /// Worker feedback.
    pub feedback: SafeFeedback,
    /// The rule.
    pub rule: Rule,
    /// Step size gamma.
    pub gamma: f64,
    /// Wire format of the scalars (constraint values, lambda).
    pub scalar_format: ValueFormat,
    /// Radius of X = {||x|| <= r}; `None`: X = R^d.
    pub radius: Option<f64>,
}

impl SafeParts {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(ParamError::invalid(
                "step",
                format!("step size must be finite and > 0, got {}", self.gamma),
            ));
        }
        match self.rule {
            Rule::Switching { threshold } if !threshold.is_finite() => {
                return Err(ParamError::invalid(
                    "method.threshold",
                    format!("must be finite, got {threshold}"),
                ));
            }
            Rule::PrimalDual { dual_step, lambda0 } => {
                if !(dual_step > 0.0 && dual_step.is_finite()) {
                    return Err(ParamError::invalid(
                        "method.dual_step",
                        format!("must be finite and > 0, got {dual_step}"),
                    ));
                }
                if !(lambda0 >= 0.0 && lambda0.is_finite()) {
                    return Err(ParamError::invalid(
                        "method.lambda0",
                        format!("must be finite and >= 0, got {lambda0}"),
                    ));
                }
            }
            _ => {}
        }
        if let Some(r) = self.radius {
            Regularizer::Ball { radius: r }.validate().map_err(|_| {
                ParamError::invalid("problem.radius", format!("must be finite and > 0, got {r}"))
            })?;
        }
        Ok(())
    }

    fn primal_dual(&self) -> bool {
        matches!(self.rule, Rule::PrimalDual { .. })
    }
}

/// The compressors of a run.
#[derive(Debug)]
pub struct SafeCodecs {
    /// Worker compressor C.
    pub uplink: Box<dyn Compressor>,
    /// Server compressor C_0 of the model update; `None`: the dense model in f64.
    pub server: Option<Box<dyn Compressor>>,
}

/// The method names of [`SafeSpec`].
pub const SAFE_METHOD_NAMES: &[&str] = &preset_names::<{ SAFE_PRESETS.len() }>(SAFE_PRESETS);

/// Every Safe-EF-family preset ([`SAFE_METHOD_NAMES`] lists their names), with
/// the `[method]` keys it reads (none is required: the step and threshold
/// default to the theory's).
pub const SAFE_PRESETS: &[Preset] = &[
    Preset {
        name: "safe-ef",
        summary: "Safe-EF: switching subgradient with EF14 uplinks (Islamov, As & Fatkhullin 2025)",
        required: &[],
        optional: SWITCHING_KEYS,
    },
    Preset {
        name: "parallel-sgd",
        summary: "switching subgradient, uncompressed (baseline)",
        required: &[],
        optional: SWITCHING_KEYS,
    },
    Preset {
        name: "compressed-sgd",
        summary: "switching subgradient, compressed without error feedback (baseline)",
        required: &[],
        optional: SWITCHING_KEYS,
    },
    Preset {
        name: "ef21-switching",
        summary: "switching subgradient with EF21 uplinks (baseline)",
        required: &[],
        optional: SWITCHING_KEYS,
    },
    Preset {
        name: "primal-dual",
        summary: "primal-dual subgradient with EF14 uplinks (baseline)",
        required: &[],
        optional: &[
            "batch",
            "step",
            "step_multiplier",
            "dual_step_multiplier",
            "lambda0",
            "scalar_values",
        ],
    },
];

const SWITCHING_KEYS: &[&str] = &[
    "batch",
    "step",
    "step_multiplier",
    "threshold",
    "threshold_multiplier",
    "scalar_values",
];

/// A Safe-EF-family method as named in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeSpec {
    /// One of [`SAFE_METHOD_NAMES`].
    pub name: String,
    /// Minibatch size per worker and block (stochastic variant); `None`: exact subgradients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Multiplier of the theory step size.
    #[serde(default = "one")]
    pub step_multiplier: f64,
    /// An absolute step size (overrides the theory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Multiplier of the theory threshold c(gamma) (0: threshold c = 0;
    /// default 1). Switching methods only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_multiplier: Option<f64>,
    /// An absolute threshold (overrides the theory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// primal-dual: dual step eta = dual_step_multiplier * gamma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_step_multiplier: Option<f64>,
    /// primal-dual: lambda^0 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda0: Option<f64>,
    /// Wire format of scalars (default f32).
    #[serde(default)]
    pub scalar_values: ValueFormat,
}

fn one() -> f64 {
    1.0
}

impl SafeSpec {
    /// A spec with defaults.
    pub fn named(name: &str) -> Self {
        SafeSpec {
            name: name.into(),
            batch: None,
            step_multiplier: 1.0,
            step: None,
            threshold_multiplier: None,
            threshold: None,
            dual_step_multiplier: None,
            lambda0: None,
            scalar_values: ValueFormat::F32,
        }
    }

    /// The feedback of the named method (errors name `method.name`).
    pub fn feedback(&self) -> Result<SafeFeedback, ParamError> {
        match self.name.as_str() {
            "safe-ef" | "primal-dual" => Ok(SafeFeedback::Ef14),
            "parallel-sgd" | "compressed-sgd" => Ok(SafeFeedback::None),
            "ef21-switching" => Ok(SafeFeedback::Ef21),
            other => Err(ParamError::Unknown {
                what: "method",
                name: other.into(),
                allowed: SAFE_METHOD_NAMES.join(", "),
            }),
        }
    }

    /// Whether the method sends uncompressed vectors (the uplink compressor must be the identity).
    pub fn forces_identity(&self) -> bool {
        self.name == "parallel-sgd"
    }

    /// Whether the method is the primal-dual baseline.
    pub fn is_primal_dual(&self) -> bool {
        self.name == "primal-dual"
    }

    /// Resolves the spec with a step size and threshold given by `theory`
    /// (multiplied as the spec says) unless absolute values are given.
    pub fn parts(
        &self,
        theory: Option<&SafeTheory>,
        radius: Option<f64>,
    ) -> Result<SafeParts, ParamError> {
        let feedback = self.feedback()?;
        let pos = |key: &str, v: f64| -> Result<(), ParamError> {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(ParamError::invalid(
                    key,
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        };
        pos("method.step_multiplier", self.step_multiplier)?;
        // an absolute value and its multiplier together: one would be ignored
        // (step_multiplier = 1 is its default and in every resolved config)
        if self.step.is_some() && self.step_multiplier != 1.0 {
            return Err(ParamError::invalid(
                "method.step_multiplier",
                "method.step is an absolute step, used as given; remove one of the two",
            ));
        }
        if self.threshold.is_some() && self.threshold_multiplier.is_some() {
            return Err(ParamError::invalid(
                "method.threshold_multiplier",
                "method.threshold is an absolute threshold, used as given; remove one of the two",
            ));
        }
        let threshold_multiplier = self.threshold_multiplier.unwrap_or(1.0);
        if !(threshold_multiplier >= 0.0 && threshold_multiplier.is_finite()) {
            return Err(ParamError::invalid(
                "method.threshold_multiplier",
                format!("must be finite and >= 0, got {threshold_multiplier}"),
            ));
        }
        if let Some(b) = self.batch {
            if b == 0 {
                return Err(ParamError::invalid(
                    "method.batch",
                    "batch size must be >= 1",
                ));
            }
        }
        let gamma = match (self.step, theory) {
            (Some(s), _) => {
                pos("method.step", s)?;
                s
            }
            (None, Some(t)) => self.step_multiplier * t.gamma(),
            (None, None) => {
                return Err(ParamError::invalid(
                    "method.step",
                    "no theory constants (M, R, T): give an absolute step",
                ))
            }
        };
        let rule = if self.is_primal_dual() {
            if self.threshold.is_some() {
                return Err(ParamError::invalid(
                    "method.threshold",
                    "not used by method `primal-dual`",
                ));
            }
            if self.threshold_multiplier.is_some() {
                return Err(ParamError::invalid(
                    "method.threshold_multiplier",
                    "not used by method `primal-dual`",
                ));
            }
            let m = self.dual_step_multiplier.unwrap_or(1.0);
            pos("method.dual_step_multiplier", m)?;
            Rule::PrimalDual {
                dual_step: m * gamma,
                lambda0: self.lambda0.unwrap_or(0.0),
            }
        } else {
            if self.dual_step_multiplier.is_some() {
                return Err(ParamError::invalid(
                    "method.dual_step_multiplier",
                    format!("not used by method `{}`", self.name),
                ));
            }
            if self.lambda0.is_some() {
                return Err(ParamError::invalid(
                    "method.lambda0",
                    format!("not used by method `{}`", self.name),
                ));
            }
            let threshold = match (self.threshold, theory) {
                (Some(c), _) => c,
                (None, Some(t)) => {
                    let c = threshold_multiplier * t.threshold(gamma);
                    // derived from the step: a non-finite one is the step's fault
                    if !c.is_finite() {
                        return Err(ParamError::invalid(
                            "method.step",
                            format!("the theory threshold for step {gamma:e} is {c} (not finite): give a smaller step, or an absolute method.threshold"),
                        ));
                    }
                    c
                }
                (None, None) => {
                    return Err(ParamError::invalid(
                        "method.threshold",
                        "no theory constants (M, R, T): give an absolute threshold",
                    ))
                }
            };
            Rule::Switching { threshold }
        };
        let p = SafeParts {
            feedback,
            rule,
            gamma,
            scalar_format: self.scalar_values,
            radius,
        };
        p.validate()?;
        Ok(p)
    }
}

/// B(alpha) = sqrt(1 - alpha)/(1 - sqrt(1 - alpha)): for a deterministic
/// contractive C, the EF14 error stays below gamma M B(alpha) (0 for alpha = 1).
pub fn ef14_error_factor(alpha: f64) -> f64 {
    if alpha >= 1.0 {
        0.0
    } else {
        let q = (1.0 - alpha).sqrt();
        q / (1.0 - q)
    }
}

/// The constants of the Safe-EF step-size rule (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SafeTheory {
    /// Bound M on the norms of the workers' subgradients (of f_i and g_i).
    pub m: f64,
    /// Bound R on ||x^0 - x*||.
    pub r: f64,
    /// Number of rounds T.
    pub rounds: u64,
    /// Contraction constant alpha of the worker compressor.
    pub alpha: f64,
    /// Contraction constant of the server compressor (1: none).
    pub alpha_server: f64,
}

impl SafeTheory {
    /// Checks the constants.
    pub fn validate(&self) -> Result<(), ParamError> {
        for (k, v) in [("theory.m", self.m), ("theory.r", self.r)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(ParamError::invalid(
                    k,
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if self.rounds == 0 {
            return Err(ParamError::invalid(
                "stop.max_rounds",
                "the theory needs T >= 1 rounds",
            ));
        }
        for (k, a) in [
            ("compressor", self.alpha),
            ("server_compressor", self.alpha_server),
        ] {
            if !(a > 0.0 && a <= 1.0) {
                return Err(ParamError::invalid(
                    k,
                    format!(
                        "the theory needs a contractive compressor with alpha in (0, 1], got {a}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// D = B(alpha) + B(alpha_0) (1 + sqrt(1 - alpha)) (1 + B(alpha)).
    pub fn d_factor(&self) -> f64 {
        let b = ef14_error_factor(self.alpha);
        let b0 = ef14_error_factor(self.alpha_server);
        b + b0 * (1.0 + (1.0 - self.alpha).sqrt()) * (1.0 + b)
    }

    /// gamma = R / (M sqrt(T (1 + 2D))).
    pub fn gamma(&self) -> f64 {
        self.r / (self.m * (self.rounds as f64 * (1.0 + 2.0 * self.d_factor())).sqrt())
    }

    /// The smallest threshold the analysis admits for `gamma`:
    /// c(gamma) = R^2/(2 gamma T) + gamma M^2 (1 + 2D)/2 (also the guaranteed accuracy).
    pub fn threshold(&self, gamma: f64) -> f64 {
        self.r * self.r / (2.0 * gamma * self.rounds as f64)
            + gamma * self.m * self.m * (1.0 + 2.0 * self.d_factor()) / 2.0
    }

    /// The guaranteed accuracy at the theory step: M R sqrt((1 + 2D)/T).
    pub fn epsilon(&self) -> f64 {
        self.m * self.r * ((1.0 + 2.0 * self.d_factor()) / self.rounds as f64).sqrt()
    }
}

/// A worker's algorithm state: plain values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SafeWorkerState {
    /// Worker id i.
    pub id: usize,
    /// The model w^t as the worker knows it.
    #[serde(with = "crate::compact::f64s")]
    pub w: Vec<f64>,
    /// EF14: the error e_i; EF21: the estimate g_i; unused otherwise.
    #[serde(with = "crate::compact::f64s")]
    pub e: Vec<f64>,
    /// primal-dual: lambda^t as received.
    pub lambda: f64,
    /// The switch decision of the current round.
    pub flag: bool,
    /// Cumulative uplink bits, as written.
    pub bits_up_wire: u64,
    /// Cumulative uplink bits in the papers' convention (32 per value, indices free).
    pub bits_up_paper: u64,
    /// Cumulative downlink bits received, as written.
    pub bits_down_wire: u64,
    /// Cumulative downlink bits in the papers' convention (1 per flag; the
    /// dense model broadcast counts 0 as in the EF21 papers).
    pub bits_down_paper: u64,
}

/// Reusable buffers and the last messages of a worker.
#[derive(Debug, Default)]
pub struct SafeWorkerScratch {
    tmp: Vec<f64>,
    writer: BitWriter,
    comp: Scratch,
    down: CompressedVec,
    /// The decoded compressed vector of the last phase-2 uplink.
    pub vec: CompressedVec,
    /// The decoded value of the last scalar sent.
    pub scalar: f64,
    /// The encoded phase-1 uplink (constraint value).
    pub scalar_wire: Wire,
    /// The encoded phase-2 uplink ([scalar] + vector).
    pub vector_wire: Wire,
}

/// A worker: state plus scratch.
#[derive(Debug, Default)]
pub struct SafeWorker {
    /// The algorithm state.
    pub state: SafeWorkerState,
    /// Buffers.
    pub scratch: SafeWorkerScratch,
}

fn encode_scalar(fmt: ValueFormat, v: f64, w: &mut BitWriter) -> Result<f64, CompressError> {
    if !v.is_finite() {
        return Err(CompressError::NonFinite { index: 0, value: v });
    }
    let r = fmt.round(v);
    if !r.is_finite() {
        return Err(CompressError::NonFinite { index: 0, value: r });
    }
    fmt.write(w, r);
    Ok(r)
}

fn finish(w: &mut BitWriter, wire: &mut Wire) {
    wire.bytes.clear();
    wire.bytes.extend_from_slice(w.finish());
}

/// Decodes a phase-1 uplink (one constraint value).
pub fn decode_scalar(bytes: &[u8], fmt: ValueFormat) -> Result<f64, DecodeError> {
    let mut r = BitReader::new(bytes);
    let v = fmt.read(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Decodes a phase-1 downlink (the switch bit).
pub fn decode_flag(bytes: &[u8]) -> Result<bool, DecodeError> {
    let mut r = BitReader::new(bytes);
    let b = r.read_bit()?;
    r.finish()?;
    Ok(b)
}

/// Decodes a phase-2 uplink of worker `worker` in round `rc.round`: the
/// scalar (primal-dual only) and the compressed vector.
pub fn decode_vector_uplink(
    bytes: &[u8],
    parts: &SafeParts,
    codecs: &SafeCodecs,
    worker: usize,
    rc: RoundCtx,
    out: &mut CompressedVec,
) -> Result<Option<f64>, DecodeError> {
    let mut r = BitReader::new(bytes);
    let s = if parts.primal_dual() {
        Some(parts.scalar_format.read(&mut r)?)
    } else {
        None
    };
    codecs.uplink.decode(
        &mut r,
        &DecodeCtx {
            shared_key: uplink_shared_key(rc.seed, worker, rc.round),
        },
        out,
    )?;
    r.finish()?;
    Ok(s)
}

/// What a model downlink carries, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMessage {
    /// primal-dual: lambda^{t+1}.
    pub lambda: Option<f64>,
    /// Without server compression: the model itself (`vec` dense, replaces w).
    pub dense: bool,
    /// The model (dense) or the compressed update p (added to w).
    pub vec: CompressedVec,
}

/// Decodes a model downlink of round `rc.round` for dimension `d`. On an
/// error `out` holds no part of the message: no lambda and an empty sparse
/// vector.
pub fn decode_model(
    bytes: &[u8],
    d: usize,
    parts: &SafeParts,
    codecs: &SafeCodecs,
    rc: RoundCtx,
    out: &mut ModelMessage,
) -> Result<(), DecodeError> {
    let res = decode_model_into(bytes, d, parts, codecs, rc, out);
    if res.is_err() {
        out.lambda = None;
        out.dense = false;
        out.vec.reset_sparse(d);
    }
    res
}

fn decode_model_into(
    bytes: &[u8],
    d: usize,
    parts: &SafeParts,
    codecs: &SafeCodecs,
    rc: RoundCtx,
    out: &mut ModelMessage,
) -> Result<(), DecodeError> {
    let mut r = BitReader::new(bytes);
    out.lambda = if parts.primal_dual() {
        let l = parts.scalar_format.read(&mut r)?;
        // the server sends max(0, .) + 0, finite and never -0
        if !(l >= 0.0 && l.is_finite()) || l.is_sign_negative() {
            return Err(DecodeError::invalid(
                "lambda",
                format!("the dual variable must be finite and >= 0, got {l}"),
            ));
        }
        Some(l)
    } else {
        None
    };
    match &codecs.server {
        None => {
            out.dense = true;
            // the input must hold the whole model before it is allocated
            let need = (d as u64).saturating_mul(64);
            if need > r.remaining() {
                return Err(DecodeError::Truncated {
                    at: r.position(),
                    needed: u32::try_from(need).unwrap_or(u32::MAX),
                });
            }
            out.vec.reset_dense(d);
            for v in out.vec.values.iter_mut() {
                let x = r.read_f64()?;
                if !x.is_finite() {
                    return Err(DecodeError::invalid("model", "non-finite model entry"));
                }
                *v = x;
            }
        }
        Some(c0) => {
            out.dense = false;
            c0.decode(
                &mut r,
                &DecodeCtx {
                    shared_key: downlink_shared_key(rc.seed, rc.round),
                },
                &mut out.vec,
            )?;
        }
    }
    r.finish()
}

impl SafeWorker {
    /// A fresh worker `id` starting at `x0` (known to all parties at setup).
    pub fn new(id: usize, x0: &[f64], parts: &SafeParts) -> Self {
        let d = x0.len();
        let lambda = match parts.rule {
            Rule::PrimalDual { lambda0, .. } => parts.scalar_format.round(lambda0),
            _ => 0.0,
        };
        let state = SafeWorkerState {
            id,
            w: x0.to_vec(),
            e: vec![0.0; d],
            lambda,
            ..Default::default()
        };
        SafeWorker {
            state,
            scratch: SafeWorkerScratch {
                tmp: vec![0.0; d],
                ..Default::default()
            },
        }
    }

    /// Phase 1 uplink: encodes the constraint value g_i(w^t) (or its estimate).
    pub fn send_constraint(&mut self, value: f64, parts: &SafeParts) -> Result<(), CompressError> {
        let sc = &mut self.scratch;
        sc.writer.clear();
        sc.scalar = encode_scalar(parts.scalar_format, value, &mut sc.writer)?;
        finish(&mut sc.writer, &mut sc.scalar_wire);
        sc.scalar_wire.paper_bits = 32;
        self.state.bits_up_wire += sc.scalar_wire.wire_bits();
        self.state.bits_up_paper += 32;
        Ok(())
    }

    /// Phase 1 downlink: decodes and keeps the switch decision.
    pub fn receive_flag(&mut self, bytes: &[u8]) -> Result<bool, DecodeError> {
        let b = decode_flag(bytes)?;
        self.state.flag = b;
        self.state.bits_down_wire += 8 * bytes.len() as u64;
        self.state.bits_down_paper += 1;
        Ok(b)
    }

    /// Phase 2 uplink: builds the message from the subgradient `h` at w^t (for
    /// primal-dual: of f_i + lambda g_i, with the constraint value `scalar`).
    pub fn send_vector(
        &mut self,
        h: &[f64],
        scalar: Option<f64>,
        parts: &SafeParts,
        codecs: &SafeCodecs,
        rc: RoundCtx,
    ) -> Result<(), CompressError> {
        let st = &mut self.state;
        let sc = &mut self.scratch;
        let mut rng = stream(rc.seed, Purpose::Compress, st.id as u64, rc.round);
        let mut ctx = CompressCtx {
            rng: &mut rng,
            shared_key: uplink_shared_key(rc.seed, st.id, rc.round),
            scratch: &mut sc.comp,
        };
        sc.writer.clear();
        let mut paper = 0;
        if parts.primal_dual() {
            let v = scalar.expect("primal-dual sends the constraint value with its vector");
            sc.scalar = encode_scalar(parts.scalar_format, v, &mut sc.writer)?;
            paper += 32;
        }
        let c = codecs.uplink.as_ref();
        match parts.feedback {
            SafeFeedback::None => {
                for (t, g) in sc.tmp.iter_mut().zip(h) {
                    *t = parts.gamma * g;
                }
                c.compress(&sc.tmp, &mut ctx, &mut sc.vec, &mut sc.writer)?;
            }
            SafeFeedback::Ef14 => {
                for ((t, e), g) in sc.tmp.iter_mut().zip(&st.e).zip(h) {
                    *t = e + parts.gamma * g;
                }
                c.compress(&sc.tmp, &mut ctx, &mut sc.vec, &mut sc.writer)?;
                st.e.copy_from_slice(&sc.tmp);
                sc.vec.add_scaled_to(&mut st.e, -1.0);
            }
            SafeFeedback::Ef21 => {
                for ((t, e), g) in sc.tmp.iter_mut().zip(&st.e).zip(h) {
                    *t = g - e;
                }
                c.compress(&sc.tmp, &mut ctx, &mut sc.vec, &mut sc.writer)?;
                sc.vec.add_to(&mut st.e);
            }
        }
        finish(&mut sc.writer, &mut sc.vector_wire);
        sc.vector_wire.paper_bits = paper + c.paper_bits(&sc.vec);
        st.bits_up_wire += sc.vector_wire.wire_bits();
        st.bits_up_paper += sc.vector_wire.paper_bits;
        Ok(())
    }

    /// End of the round: decodes the model downlink and updates w (and lambda).
    pub fn receive_model(
        &mut self,
        wire: &Wire,
        parts: &SafeParts,
        codecs: &SafeCodecs,
        rc: RoundCtx,
        msg: &mut ModelMessage,
    ) -> Result<(), DecodeError> {
        decode_model(&wire.bytes, self.state.w.len(), parts, codecs, rc, msg)?;
        let st = &mut self.state;
        if let Some(l) = msg.lambda {
            st.lambda = l;
        }
        if msg.dense {
            st.w.copy_from_slice(&msg.vec.values);
        } else {
            msg.vec.add_to(&mut st.w);
        }
        st.bits_down_wire += wire.wire_bits();
        st.bits_down_paper += wire.paper_bits;
        Ok(())
    }

    /// [`SafeWorker::receive_model`] with the worker's own message buffer.
    pub fn receive_model_own(
        &mut self,
        wire: &Wire,
        parts: &SafeParts,
        codecs: &SafeCodecs,
        rc: RoundCtx,
    ) -> Result<(), DecodeError> {
        let mut msg = ModelMessage {
            vec: std::mem::take(&mut self.scratch.down),
            ..Default::default()
        };
        let r = self.receive_model(wire, parts, codecs, rc, &mut msg);
        self.scratch.down = msg.vec;
        r
    }
}

/// The server's algorithm state: plain values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SafeServerState {
    /// The exact iterate x^t.
    #[serde(with = "crate::compact::f64s")]
    pub x: Vec<f64>,
    /// The broadcast model w^t (what the workers hold).
    #[serde(with = "crate::compact::f64s")]
    pub w: Vec<f64>,
    /// EF21: the aggregate g = mean_i g_i.
    #[serde(with = "crate::compact::f64s")]
    pub g: Vec<f64>,
    /// primal-dual: lambda^t.
    pub lambda: f64,
    /// The switch decision of the current round.
    pub flag: bool,
    /// mean_i g_i(w^t) as received in the current round.
    pub ghat: f64,
    /// Sum of w^t over the productive rounds (all rounds for primal-dual).
    #[serde(with = "crate::compact::f64s")]
    pub avg_sum: Vec<f64>,
    /// Number of productive rounds.
    pub productive: u64,
    /// The next round number.
    pub round: u64,
    /// The encoded phase-1 downlink of the current round.
    pub flag_wire: Wire,
    /// The encoded model downlink of the last round.
    pub model_wire: Wire,
}

/// Reusable buffers of the server.
#[derive(Debug, Default)]
struct SafeServerScratch {
    acc: Vec<f64>,
    tmp: Vec<f64>,
    vec: CompressedVec,
    writer: BitWriter,
    comp: Scratch,
}

/// The server: state plus scratch.
#[derive(Debug, Default)]
pub struct SafeServer {
    /// The algorithm state.
    pub state: SafeServerState,
    scratch: SafeServerScratch,
    /// Number of workers.
    pub n: usize,
}

impl SafeServer {
    /// A server for `n` workers starting at `x0` (w^0 = x^0).
    pub fn new(n: usize, x0: &[f64], parts: &SafeParts) -> Self {
        let d = x0.len();
        let lambda = match parts.rule {
            Rule::PrimalDual { lambda0, .. } => parts.scalar_format.round(lambda0),
            _ => 0.0,
        };
        let state = SafeServerState {
            x: x0.to_vec(),
            w: x0.to_vec(),
            g: vec![0.0; d],
            lambda,
            avg_sum: vec![0.0; d],
            ..Default::default()
        };
        SafeServer {
            state,
            scratch: SafeServerScratch {
                acc: vec![0.0; d],
                tmp: vec![0.0; d],
                ..Default::default()
            },
            n,
        }
    }

    /// Phase 1 (switching rules): decodes the constraint values (worker
    /// order), sets s_t = [mean <= threshold], adds w^t to the average if
    /// productive, and encodes the flag. Returns s_t.
    ///
    /// # Panics
    /// For the primal-dual rule (it has no phase 1).
    pub fn decide(&mut self, scalars: &[&[u8]], parts: &SafeParts) -> Result<bool, DecodeError> {
        assert_eq!(scalars.len(), self.n, "one constraint value per worker");
        self.decide_with(|i| scalars[i], parts)
    }

    /// [`SafeServer::decide`] with worker i's message given by `scalar(i)`
    /// (no slice of references has to be built each round).
    pub fn decide_with<'a>(
        &mut self,
        scalar: impl Fn(usize) -> &'a [u8],
        parts: &SafeParts,
    ) -> Result<bool, DecodeError> {
        let threshold = match parts.rule {
            Rule::Switching { threshold } => threshold,
            Rule::PrimalDual { .. } => panic!("decide() is the switching rule's phase 1"),
        };
        let mut sum = 0.0;
        for i in 0..self.n {
            sum += decode_scalar(scalar(i), parts.scalar_format)?;
        }
        let st = &mut self.state;
        st.ghat = sum / self.n as f64;
        st.flag = st.ghat <= threshold;
        if st.flag {
            for (a, w) in st.avg_sum.iter_mut().zip(&st.w) {
                *a += w;
            }
            st.productive += 1;
        }
        let w = &mut self.scratch.writer;
        w.clear();
        w.write_bit(st.flag);
        finish(w, &mut st.flag_wire);
        st.flag_wire.paper_bits = 1;
        Ok(st.flag)
    }

    /// Phase 2: decodes the uplinks (worker order), steps, projects onto X,
    /// and encodes the model downlink of the next round.
    pub fn apply(
        &mut self,
        ups: &[&[u8]],
        parts: &SafeParts,
        codecs: &SafeCodecs,
        rc: RoundCtx,
    ) -> Result<(), SafeError> {
        assert_eq!(ups.len(), self.n, "one uplink per worker");
        self.apply_with(|i| ups[i], parts, codecs, rc)
    }

    /// [`SafeServer::apply`] with worker i's uplink given by `up(i)`.
    pub fn apply_with<'a>(
        &mut self,
        up: impl Fn(usize) -> &'a [u8],
        parts: &SafeParts,
        codecs: &SafeCodecs,
        rc: RoundCtx,
    ) -> Result<(), SafeError> {
        let st = &mut self.state;
        let sc = &mut self.scratch;
        let d = st.x.len();
        let inv_n = 1.0 / self.n as f64;
        sc.acc.iter_mut().for_each(|v| *v = 0.0);
        let mut gsum = 0.0;
        for i in 0..self.n {
            if let Some(s) = decode_vector_uplink(up(i), parts, codecs, i, rc, &mut sc.vec)? {
                gsum += s;
            }
            sc.vec.add_to(&mut sc.acc);
        }
        match parts.feedback {
            SafeFeedback::None | SafeFeedback::Ef14 => {
                for (x, a) in st.x.iter_mut().zip(&sc.acc) {
                    *x -= a * inv_n;
                }
            }
            SafeFeedback::Ef21 => {
                for (g, a) in st.g.iter_mut().zip(&sc.acc) {
                    *g += a * inv_n;
                }
                for (x, g) in st.x.iter_mut().zip(&st.g) {
                    *x -= parts.gamma * g;
                }
            }
        }
        if let Some(r) = parts.radius {
            Regularizer::Ball { radius: r }.prox(&mut st.x, parts.gamma);
        }
        sc.writer.clear();
        if let Rule::PrimalDual { dual_step, .. } = parts.rule {
            // the ergodic average runs over every w^t
            for (a, w) in st.avg_sum.iter_mut().zip(&st.w) {
                *a += w;
            }
            st.productive += 1;
            st.ghat = gsum * inv_n;
            // `+ 0.0` turns a -0 (which max may return) into +0, the one
            // zero the decoder accepts
            let l = (st.lambda + dual_step * st.ghat).max(0.0) + 0.0;
            st.lambda = encode_scalar(parts.scalar_format, l, &mut sc.writer)?;
        }
        match &codecs.server {
            None => {
                sc.writer.write_f64s(&st.x);
                st.w.copy_from_slice(&st.x);
                st.model_wire.paper_bits = 0;
            }
            Some(c0) => {
                for ((t, x), w) in sc.tmp.iter_mut().zip(&st.x).zip(&st.w) {
                    *t = x - w;
                }
                let mut rng = stream(rc.seed, Purpose::ServerCompress, 0, rc.round);
                let mut ctx = CompressCtx {
                    rng: &mut rng,
                    shared_key: downlink_shared_key(rc.seed, rc.round),
                    scratch: &mut sc.comp,
                };
                c0.compress(&sc.tmp, &mut ctx, &mut sc.vec, &mut sc.writer)?;
                sc.vec.add_to(&mut st.w);
                st.model_wire.paper_bits = c0.paper_bits(&sc.vec);
            }
        }
        if parts.primal_dual() {
            st.model_wire.paper_bits += 32;
        }
        finish(&mut sc.writer, &mut st.model_wire);
        debug_assert_eq!(st.w.len(), d);
        st.round = rc.round + 1;
        Ok(())
    }

    /// The output: the average of w^t over the productive rounds, projected
    /// onto X (with server compression w^t may leave X); w^t itself while no
    /// round has been productive.
    pub fn output(&self, radius: Option<f64>, out: &mut [f64]) {
        let st = &self.state;
        if st.productive == 0 {
            out.copy_from_slice(&st.w);
        } else {
            let inv = 1.0 / st.productive as f64;
            for (o, a) in out.iter_mut().zip(&st.avg_sum) {
                *o = a * inv;
            }
        }
        if let Some(r) = radius {
            Regularizer::Ball { radius: r }.prox(out, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{build, CompressorSpec};

    fn codecs(d: usize, up: &str, k: Option<usize>, server: Option<usize>) -> SafeCodecs {
        let spec = CompressorSpec {
            k,
            values: Some(ValueFormat::F64),
            ..CompressorSpec::named(up)
        };
        SafeCodecs {
            uplink: build(&spec, d).unwrap(),
            server: server.map(|k| {
                build(
                    &CompressorSpec {
                        k: Some(k),
                        ..CompressorSpec::named("top-k")
                    },
                    d,
                )
                .unwrap()
            }),
        }
    }

    #[test]
    fn theory_constants() {
        assert_eq!(ef14_error_factor(1.0), 0.0);
        // alpha = 1/2: q = 0.7071..., B = q/(1-q) = 2.41421...
        assert!((ef14_error_factor(0.5) - 2.414213562373095).abs() < 1e-12);
        let t = SafeTheory {
            m: 2.0,
            r: 3.0,
            rounds: 100,
            alpha: 1.0,
            alpha_server: 1.0,
        };
        assert_eq!(t.d_factor(), 0.0);
        assert!((t.gamma() - 0.15).abs() < 1e-15);
        // at the theory step the threshold is the accuracy M R / sqrt(T)
        assert!((t.threshold(t.gamma()) - 0.6).abs() < 1e-12);
        assert!((t.epsilon() - 0.6).abs() < 1e-12);
        // any other step gives a larger threshold
        assert!(t.threshold(0.3) > 0.6 && t.threshold(0.05) > 0.6);
        let c = SafeTheory {
            alpha: 0.5,
            alpha_server: 0.5,
            ..t
        };
        let b = ef14_error_factor(0.5);
        assert!((c.d_factor() - (b + b * (1.0 + 0.5f64.sqrt()) * (1.0 + b))).abs() < 1e-12);
        assert!(SafeTheory { alpha: 0.0, ..t }.validate().is_err());
    }

    #[test]
    fn spec_resolution_and_errors() {
        let t = SafeTheory {
            m: 1.0,
            r: 1.0,
            rounds: 100,
            alpha: 0.5,
            alpha_server: 1.0,
        };
        let p = SafeSpec::named("safe-ef").parts(Some(&t), None).unwrap();
        assert_eq!(p.feedback, SafeFeedback::Ef14);
        assert_eq!(p.gamma, t.gamma());
        assert_eq!(
            p.rule,
            Rule::Switching {
                threshold: t.threshold(t.gamma())
            }
        );
        let mut s = SafeSpec::named("primal-dual");
        s.threshold = Some(0.1);
        assert!(s
            .parts(Some(&t), None)
            .unwrap_err()
            .to_string()
            .contains("method.threshold"));
        let e = SafeSpec::named("safe-ef2")
            .parts(Some(&t), None)
            .unwrap_err();
        assert!(
            e.to_string().contains("safe-ef2") && e.to_string().contains("primal-dual"),
            "{e}"
        );
        // a huge absolute step makes the theory threshold overflow: the
        // error names the step the user gave, not the threshold they did not
        let mut s = SafeSpec::named("safe-ef");
        s.step = Some(1e308);
        let e = s.parts(Some(&t), None).unwrap_err().to_string();
        assert!(e.contains("method.step") && e.contains("not finite"), "{e}");
        let mut s = SafeSpec::named("safe-ef");
        s.step_multiplier = -1.0;
        assert!(s
            .parts(Some(&t), None)
            .unwrap_err()
            .to_string()
            .contains("method.step_multiplier"));
        assert!(SafeSpec::named("safe-ef")
            .parts(None, None)
            .unwrap_err()
            .to_string()
            .contains("method.step"));
    }

    #[test]
    fn messages_round_trip_and_bits_match_the_bytes() {
        let d = 10;
        let mut spec = SafeSpec::named("primal-dual");
        spec.step = Some(0.1);
        let parts = spec.parts(None, Some(1.0)).unwrap();
        let cd = codecs(d, "top-k", Some(3), Some(2));
        let x0 = vec![0.0; d];
        let mut w = SafeWorker::new(0, &x0, &parts);
        let mut s = SafeServer::new(1, &x0, &parts);
        let rc = RoundCtx { seed: 3, round: 0 };
        let h: Vec<f64> = (0..d).map(|k| (k as f64 - 4.5) * 0.3).collect();
        w.send_vector(&h, Some(0.25), &parts, &cd, rc).unwrap();
        // 32 bits of scalar (f32) + the top-k message
        let mut v = CompressedVec::default();
        let sv =
            decode_vector_uplink(&w.scratch.vector_wire.bytes, &parts, &cd, 0, rc, &mut v).unwrap();
        assert_eq!(sv, Some(0.25));
        assert!(v.bit_eq(&w.scratch.vec));
        assert_eq!(
            w.state.bits_up_wire,
            8 * w.scratch.vector_wire.bytes.len() as u64
        );
        s.apply(&[&w.scratch.vector_wire.bytes], &parts, &cd, rc)
            .unwrap();
        assert_eq!(s.state.lambda, ValueFormat::F32.round(0.1 * 0.25));
        w.receive_model_own(&s.state.model_wire, &parts, &cd, rc)
            .unwrap();
        assert_eq!(w.state.w, s.state.w);
        assert_eq!(w.state.lambda, s.state.lambda);
        assert!(s.state.x.iter().map(|v| v * v).sum::<f64>() <= 1.0 + 1e-12);
        // hostile bytes decode to errors, not panics
        let mut m = ModelMessage::default();
        assert!(decode_model(&[1, 2, 3], d, &parts, &cd, rc, &mut m).is_err());
        assert!(decode_flag(&[0x80, 0]).is_err());
        assert!(decode_scalar(&[0xff; 3], ValueFormat::F32).is_err());
    }

    #[test]
    fn model_downlinks_refuse_a_negative_dual_and_a_model_they_cannot_hold() {
        let mut spec = SafeSpec::named("primal-dual");
        spec.step = Some(0.1);
        let parts = spec.parts(None, Some(1.0)).unwrap();
        let rc = RoundCtx { seed: 3, round: 0 };
        let d = 2;
        let cd = codecs(d, "top-k", Some(1), None);
        let mut m = ModelMessage::default();
        // lambda (f32), then the model (2 x f64)
        let message = |lambda: f32| {
            let mut w = BitWriter::new();
            w.write_f32(lambda);
            w.write_f64(1.0);
            w.write_f64(2.0);
            w.finish().to_vec()
        };
        decode_model(&message(0.5), d, &parts, &cd, rc, &mut m).unwrap();
        assert_eq!(
            (m.lambda, m.vec.values.as_slice()),
            (Some(0.5), &[1.0, 2.0][..])
        );
        // the server only sends max(0, .) + 0: a negative (-0 included) or
        // infinite lambda is refused
        for bad in [-1e30f32, -1.0, -1e-45] {
            let e = decode_model(&message(bad), d, &parts, &cd, rc, &mut m).unwrap_err();
            assert!(e.to_string().contains("lambda"), "{e}");
        }
        for bad in [f32::INFINITY, f32::NAN] {
            assert!(decode_model(&message(bad), d, &parts, &cd, rc, &mut m).is_err());
        }
        // the server adds +0 to max(0, .): a -0 is never sent
        let e = decode_model(&message(-0.0), d, &parts, &cd, rc, &mut m).unwrap_err();
        assert!(e.to_string().contains("lambda"), "{e}");
        decode_model(&message(0.0), d, &parts, &cd, rc, &mut m).unwrap();
        // a non-finite second entry: no lambda and no first entry left behind
        let mut nan = message(0.5);
        nan[12..].copy_from_slice(&f64::NAN.to_bits().to_be_bytes());
        assert!(decode_model(&nan, d, &parts, &cd, rc, &mut m).is_err());
        assert_eq!(m.lambda, None);
        assert!(m.vec.values.is_empty() && !m.vec.dense);
        // a model of 2^24 entries announced by 4 bytes: refused before allocating
        let big = 1 << 24;
        let cd = codecs(big, "top-k", Some(1), None);
        let mut m = ModelMessage::default();
        let e = decode_model(&message(0.5)[..4], big, &parts, &cd, rc, &mut m).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { at: 32, .. }), "{e}");
        assert_eq!(m.vec.values.capacity(), 0);
    }
}
