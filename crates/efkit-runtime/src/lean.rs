//! A lean round loop for many workers that share one objective (f_i = f).
//!
//! The divergence experiment of Fatkhullin, Tyurin & Richtarik ("Momentum
//! Provably Improves Error Feedback!", NeurIPS 2023, Figure 1; algorithms.md
//! §7.1) runs EF21-SGD with up to n = 10,000 workers on a d = 2 problem for
//! 10,000 rounds. The [`crate::Cluster`] does per worker and round what a real
//! deployment needs (downlink decode, bit encoding of every message, separate
//! worker states with their own copies of x, a thread pool), which for d = 2
//! is almost all of the cost. This module runs the SAME update rule of
//! `efkit_core::method` with the SAME library compressors and the SAME random
//! streams, keeping only what the iterates depend on:
//!
//! ```text
//! round t (x = x^t, every worker i in id order):
//!   h_i   = estimator at x          (minibatch | momentum | double momentum;
//!                                    samples from stream(seed, Sample, i, t))
//!   c_i   = EF21:        C(h_i - g_i)      (round 0, dense init: dense(h_i), g_i = 0)
//!           EF21-ideal:  dense(grad f(x) + C(h_i - grad f(x)))   (g_i replaced)
//!   g_i  += c_i   (EF21)    |   g_i = c_i   (EF21-ideal)
//!   acc  += c_i             (sum in worker-id order)
//! server: g = g + acc/n (EF21)  |  g = acc/n (EF21-ideal);   x^{t+1} = x - gamma g
//! ```
//!
//! Because every worker evaluates the same oracle, one (stateless) oracle
//! object serves all of them; this requires f_i = f and an oracle whose answers
//! depend only on (x, batch, rng) — true for
//! [`efkit_problems::noisy::NoisyQuadratic`]. The iterates equal the Cluster's
//! bit for bit (tested in `tests/sgdm.rs`); the metric ||grad f(x^t)||^2 is
//! computed from the one oracle (the Cluster averages n identical gradients,
//! which can differ from it in the last bits). Bits are not counted (the
//! figure's x axis is the round).
//!
//! Supported parts: participation `all`, plain server step, model downlink,
//! feedback EF21 (dense or compressed init) or EF21-ideal, estimators
//! minibatch, momentum and double momentum. Anything else is a
//! [`LeanError::Unsupported`].

use efkit_core::bits::BitWriter;
use efkit_core::compress::{CompressCtx, CompressedVec, Scratch};
use efkit_core::method::{
    uplink_shared_key, Codecs, DownlinkMode, Estimator, Feedback, InitMode, Participation, Parts,
    ServerStep,
};
use efkit_core::oracle::Oracle;
use efkit_core::rng::{rng_from_key, stream, Purpose};
use thiserror::Error;

/// Why a lean run could not be done.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LeanError {
    /// The method uses a part the lean loop does not implement.
    #[error("the lean loop does not support {0}; use the Cluster")]
    Unsupported(String),
    /// A compressor met a non-finite value (the run diverged).
    #[error("round {round}, worker {worker}: {source}")]
    Compress {
        /// The round.
        round: u64,
        /// The worker.
        worker: usize,
        /// The compressor's error.
        #[source]
        source: efkit_core::CompressError,
    },
}

/// The trajectory of a lean run.
#[derive(Debug, Clone, PartialEq)]
pub struct LeanRun {
    /// The logged rounds t (0, log_every, 2 log_every, ..., and the last one).
    pub rounds: Vec<u64>,
    /// ||grad f(x^t)||^2 at the logged rounds.
    pub grad_norm_sq: Vec<f64>,
    /// The final model x^T.
    pub x: Vec<f64>,
}

fn check_parts(parts: &Parts) -> Result<(), LeanError> {
    let bad = |s: &str| Err(LeanError::Unsupported(s.to_string()));
    if parts.participation != Participation::All {
        return bad("partial participation");
    }
    if parts.server_step != ServerStep::Plain {
        return bad("a server step other than plain");
    }
    if parts.downlink != DownlinkMode::Model {
        return bad("a compressed downlink");
    }
    if !matches!(parts.feedback, Feedback::Ef21 | Feedback::Ef21Ideal) {
        return bad("feedback other than EF21 and EF21-ideal");
    }
    if !matches!(
        parts.estimator,
        Estimator::Minibatch(_) | Estimator::Momentum { .. } | Estimator::DoubleMomentum { .. }
    ) {
        return bad("an estimator other than minibatch, momentum and double momentum");
    }
    if parts.force_identity {
        return bad("methods without compression");
    }
    Ok(())
}

/// Runs `rounds` rounds of `parts` with `n` workers that all use `oracle`
/// (f_i = f; see the module docs) from `x0`, logging ||grad f||^2 every
/// `log_every` rounds (and at rounds 0 and `rounds`).
///
/// Allocates its state once; the round loop does not allocate.
#[allow(clippy::too_many_arguments)]
pub fn run_shared(
    parts: &Parts,
    codecs: &Codecs,
    oracle: &mut dyn Oracle,
    n: usize,
    x0: &[f64],
    seed: u64,
    rounds: u64,
    log_every: u64,
) -> Result<LeanRun, LeanError> {
    check_parts(parts)?;
    assert!(n >= 1, "need at least one worker");
    let d = x0.len();
    assert_eq!(
        oracle.dim(),
        d,
        "x0 has length {d}, the oracle's dimension is {}",
        oracle.dim()
    );
    let log_every = log_every.max(1);
    let n_local = oracle.num_samples();
    let momentum = matches!(
        parts.estimator,
        Estimator::Momentum { .. } | Estimator::DoubleMomentum { .. }
    );
    let double = matches!(parts.estimator, Estimator::DoubleMomentum { .. });
    let mut x = x0.to_vec();
    let mut g = vec![0.0; d];
    let mut gi = vec![0.0; n * d];
    let mut vi = if momentum {
        vec![0.0; n * d]
    } else {
        Vec::new()
    };
    let mut ui = if double { vec![0.0; n * d] } else { Vec::new() };
    let (mut est, mut tmp, mut tmp2, mut acc, mut grad) = (
        vec![0.0; d],
        vec![0.0; d],
        vec![0.0; d],
        vec![0.0; d],
        vec![0.0; d],
    );
    let mut drawn = Vec::new();
    let (mut c, mut alt) = (CompressedVec::default(), CompressedVec::default());
    let mut writer = BitWriter::new();
    let mut scratch = Scratch::default();
    // Deterministic compressors never touch their generators or shared keys: skip keying them.
    let deterministic = codecs.uplink.is_deterministic() && codecs.dense.is_deterministic();
    let mut dummy = rng_from_key(0);
    let inv_n = 1.0 / n as f64;
    let mut out = LeanRun {
        rounds: Vec::new(),
        grad_norm_sq: Vec::new(),
        x: Vec::new(),
    };
    record(oracle, &x, &mut grad, &mut out, 0);
    for t in 0..rounds {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for i in 0..n {
            let gw = &mut gi[i * d..(i + 1) * d];
            let mut rng_sample = stream(seed, Purpose::Sample, i as u64, t);
            // 1. the estimator (exactly Worker::step's order of operations)
            match parts.estimator {
                Estimator::Minibatch(b) => {
                    let b = b.resolve(n_local);
                    if n_local == Some(b) {
                        oracle.grad(&x, &mut est);
                    } else {
                        oracle.stochastic_grad(&x, b, &mut rng_sample, &mut drawn, &mut est);
                    }
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
                    let vw = &mut vi[i * d..(i + 1) * d];
                    if t == 0 {
                        let b = init_batch.resolve(n_local);
                        if n_local == Some(b) {
                            oracle.grad(&x, &mut est);
                        } else {
                            oracle.stochastic_grad(&x, b, &mut rng_sample, &mut drawn, &mut est);
                        }
                        vw.copy_from_slice(&est);
                        if double {
                            ui[i * d..(i + 1) * d].copy_from_slice(&est);
                        }
                    } else {
                        let b = batch.resolve(n_local);
                        oracle.stochastic_grad(&x, b, &mut rng_sample, &mut drawn, &mut tmp);
                        for (v, gr) in vw.iter_mut().zip(&tmp) {
                            *v = (1.0 - eta) * *v + eta * gr;
                        }
                        if double {
                            let uw = &mut ui[i * d..(i + 1) * d];
                            for (u, v) in uw.iter_mut().zip(vw.iter()) {
                                *u = (1.0 - eta) * *u + eta * v;
                            }
                            est.copy_from_slice(uw);
                        } else {
                            est.copy_from_slice(vw);
                        }
                    }
                }
                _ => unreachable!("checked by check_parts"),
            }
            // 2. the feedback
            let mut keyed;
            let rng = if deterministic {
                &mut dummy
            } else {
                keyed = stream(seed, Purpose::Compress, i as u64, t);
                &mut keyed
            };
            let shared_key = if deterministic {
                0
            } else {
                uplink_shared_key(seed, i, t)
            };
            let mut ctx = CompressCtx {
                rng,
                shared_key,
                scratch: &mut scratch,
            };
            writer.clear();
            let res = match parts.feedback {
                Feedback::Ef21 if t == 0 => {
                    let r = if parts.init == InitMode::Dense {
                        codecs.dense.compress(&est, &mut ctx, &mut c, &mut writer)
                    } else {
                        codecs.uplink.compress(&est, &mut ctx, &mut c, &mut writer)
                    };
                    gw.iter_mut().for_each(|v| *v = 0.0);
                    r.map(|_| c.add_to(gw))
                }
                Feedback::Ef21 => {
                    for ((tk, h), gk) in tmp.iter_mut().zip(&est).zip(gw.iter()) {
                        *tk = h - gk;
                    }
                    codecs
                        .uplink
                        .compress(&tmp, &mut ctx, &mut c, &mut writer)
                        .map(|_| c.add_to(gw))
                }
                Feedback::Ef21Ideal => {
                    oracle.grad(&x, &mut tmp2);
                    for ((tk, h), gf) in tmp.iter_mut().zip(&est).zip(&tmp2) {
                        *tk = h - gf;
                    }
                    codecs
                        .uplink
                        .compress(&tmp, &mut ctx, &mut alt, &mut writer)
                        .and_then(|_| {
                            alt.add_to(&mut tmp2);
                            writer.clear();
                            codecs
                                .dense
                                .compress(&tmp2, &mut ctx, &mut c, &mut writer)
                                .map(|_| c.to_dense(gw))
                        })
                }
                _ => unreachable!("checked by check_parts"),
            };
            res.map_err(|source| LeanError::Compress {
                round: t,
                worker: i,
                source,
            })?;
            c.add_to(&mut acc);
        }
        // 3. the server
        if parts.feedback == Feedback::Ef21Ideal {
            for (gk, a) in g.iter_mut().zip(&acc) {
                *gk = a * inv_n;
            }
        } else {
            for (gk, a) in g.iter_mut().zip(&acc) {
                *gk += a * inv_n;
            }
        }
        for (xk, gk) in x.iter_mut().zip(&g) {
            *xk -= parts.gamma * gk;
        }
        let r = t + 1;
        if r % log_every == 0 || r == rounds {
            record(oracle, &x, &mut grad, &mut out, r);
        }
    }
    out.x = x;
    Ok(out)
}

fn record(oracle: &mut dyn Oracle, x: &[f64], grad: &mut [f64], out: &mut LeanRun, t: u64) {
    oracle.grad(x, grad);
    out.rounds.push(t);
    out.grad_norm_sq.push(grad.iter().map(|v| v * v).sum());
}
