//! Deterministic random streams.
//!
//! Every random choice in efkit comes from a stream keyed by
//! `(seed, purpose, worker, round)`, never from thread or rank placement, so a
//! run gives bit-identical results for any thread count and any backend
//! (design.md §4). A fresh ChaCha8 generator is keyed per round, which also
//! means checkpoints need no generator state.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere in efkit.
pub type Rng = ChaCha8Rng;

/// What a stream is used for; part of the key so that streams never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Purpose {
    /// Worker-side compressor randomness.
    Compress = 1,
    /// Shared-seed compressor randomness (the receiver regenerates it).
    SharedCompress = 2,
    /// Worker minibatch sampling.
    Sample = 3,
    /// Server sampling of participating clients.
    Participation = 4,
    /// Coins shared by all parties (e.g. the PAGE coin in the authors' code).
    SharedCoin = 5,
    /// Server-side compressor randomness.
    ServerCompress = 6,
    /// Initial point and data shuffles.
    Setup = 7,
    /// Oracle noise (synthetic stochastic problems).
    Noise = 8,
}

/// SplitMix64 finaliser: a bijective mixer with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit key for `(seed, purpose, worker, round)`.
pub fn stream_key(seed: u64, purpose: Purpose, worker: u64, round: u64) -> u64 {
    let mut h = mix64(seed ^ 0x6566_6b69_7400_0000);
    h = mix64(h ^ purpose as u64);
    h = mix64(h ^ worker);
    mix64(h ^ round)
}

/// A generator keyed by a 64-bit key.
pub fn rng_from_key(key: u64) -> Rng {
    let mut seed = [0u8; 32];
    let mut k = key;
    for chunk in seed.chunks_exact_mut(8) {
        k = mix64(k);
        chunk.copy_from_slice(&k.to_le_bytes());
    }
    Rng::from_seed(seed)
}

/// The generator for `(seed, purpose, worker, round)`.
pub fn stream(seed: u64, purpose: Purpose, worker: u64, round: u64) -> Rng {
    rng_from_key(stream_key(seed, purpose, worker, round))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: u64 = stream(1, Purpose::Compress, 3, 7).gen();
        let b: u64 = stream(1, Purpose::Compress, 3, 7).gen();
        let c: u64 = stream(1, Purpose::Compress, 3, 8).gen();
        let d: u64 = stream(1, Purpose::Sample, 3, 7).gen();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
