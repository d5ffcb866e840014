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

pub use data::{mnist_dense, DenseImages, LEVELS};
pub use network::{
    forward_backward_time, thread_forward_backward_time, Layer, Network, NetworkError,
    NetworkOracle, Precision,
};

/// Makes the C allocator keep the memory candle frees for reuse instead of
/// handing it back to the system and faulting fresh, zeroed pages in on the
/// next allocation. candle allocates a new buffer for every tensor of every
/// forward and backward pass (megabytes each at a minibatch of 512), and
/// glibc's default thresholds then return and re-map them call after call:
/// measured on a 2-core AMD EPYC VM, an MLP round at n = 10, B = 512 on one
/// thread took 121 ms with the defaults and 86 ms with this
/// (bench/runs/2026-12-05-mlp-fused.md). Fixes the mmap threshold at 32 MiB (glibc's largest)
/// (below it, allocations come from the reusable heap) and trims only above
/// 1 GiB. Call once at start-up, before threads start; a no-op off
/// glibc. Results do not depend on it.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other
    // threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
