//! Software prefetch for the streaming passes over the d coordinates.
//!
//! EF21-SGDM's worker pass reads three d-vectors and writes one per worker
//! and round; with n workers their state does not fit in the caches, so
//! each pass streams from memory. On the machine we measured (record
//! `bench/runs/2026-12-06-mlp-prefetch.md`) the hardware prefetchers alone
//! kept such a pass (f64 state) about 1.4x slower than when it asks for
//! its cache lines 2 KiB ahead. A prefetch is only a hint: it never faults
//! and changes no value, so results are the same bit for bit.

/// How far ahead a streaming pass asks for its data: enough to cover a
/// load from memory at the pass's speed (a microbenchmark on the machine of
/// the record: 512 bytes ahead recovered half of the gain, 2 KiB all of it,
/// 4-8 KiB no more).
pub const AHEAD_BYTES: usize = 2048;

/// Asks the CPU to start loading the cache line holding the entry of `s`
/// [`AHEAD_BYTES`] past entry `j` (nothing if that is past the end, or off
/// x86-64). Called once per 64 bytes of `s` it covers the whole pass.
#[inline(always)]
pub fn prefetch_ahead<T>(s: &[T], j: usize) {
    let at = j + AHEAD_BYTES / std::mem::size_of::<T>().max(1);
    #[cfg(target_arch = "x86_64")]
    if at < s.len() {
        // SAFETY: `at` is in bounds, so the pointer is valid; a prefetch
        // is a hint that reads and writes no memory.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                s.as_ptr().add(at).cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing_and_ignores_the_end() {
        let v = vec![1.5f64; 1000];
        for j in [0, 9, 743, 744, 999, 1000, usize::MAX / 2] {
            prefetch_ahead(&v, j);
        }
        let empty: [f32; 0] = [];
        prefetch_ahead(&empty, 0);
        let units = [(); 4];
        prefetch_ahead(&units, 1);
        assert_eq!(v, vec![1.5; 1000]);
    }
}
