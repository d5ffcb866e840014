//! Neural-network oracles for efkit, computed with candle on the CPU.
//!
//! A network is an [`efkit_core::oracle::Oracle`] like any other: the
//! methods see one flat parameter vector x in R^d (f64, as every method
//! state in efkit), the oracle copies it into the network's tensors, runs
//! forward and backward on a minibatch of its shard, and hands the flat
//! gradient back. The flat layout is layer after layer, weight tensor
//! (row-major: `[out, in]` for a dense layer, `[out, in, k, k]` for a
//! convolution) then bias, so that a per-layer compressor
//! ([`efkit_core::compress::build_blockwise`]) can compress each tensor on
//! its own, as the deep-learning code of the EF21-SGDM paper (Fatkhullin,
//! Tyurin & Richtarik, NeurIPS 2023) does.
//!
//! * [`network`]: the networks (a multilayer perceptron, a LeNet-style
//!   CNN; ReLU, softmax cross-entropy) and their oracle on dense images;
//! * [`data`]: MNIST as dense f32 pixel rows split among workers.

pub mod data;
pub mod network;

pub use data::{mnist_dense, DenseImages};
pub use network::{Layer, Network, NetworkError, NetworkOracle, Precision};
