//! What the paired round benchmarks share (`methods_round`, `safe_round`).

use criterion::Criterion;

/// The median of `v` (the upper one for an even length).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (minimum, median) of `v` in milliseconds (`v` in seconds).
#[allow(dead_code)] // each bench compiles this module on its own
pub fn min_median_ms(v: Vec<f64>) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    (min * 1e3, median(v) * 1e3)
}

/// A benchmark's `main`: the criterion groups `benches`, then `paired`
/// (skipped under `cargo test --benches` and `--list`), one worker thread
/// for candle-free rayon as the efkit binary sets it.
pub fn criterion_then_paired(benches: fn(), paired: impl FnOnce()) {
    // as the efkit binary does: the workers are the parallelism
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    benches();
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        paired();
    }
    Criterion::default().configure_from_args().final_summary();
}
