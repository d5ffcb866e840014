//! Times full local gradients on the bundled data (run with `--release`):
//! `cargo run --release -p efkit-problems --example grad_timing`.

use std::time::Instant;

use efkit_core::oracle::Oracle;
use efkit_problems::datasets;
use efkit_problems::oracles::{LeastSquares, LogisticNonconvex};

/// On-CPU time of this thread in seconds (Linux; `None` elsewhere), so that
/// timings on a loaded machine are not inflated by waiting for a core.
fn cpu_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

fn time(name: &str, o: &mut dyn Oracle, nnz: usize) {
    let d = o.dim();
    let x: Vec<f64> = (0..d).map(|k| ((k as f64) * 0.37).sin()).collect();
    let mut g = vec![0.0; d];
    for _ in 0..20 {
        o.loss_grad(&x, &mut g);
    }
    let reps = 300;
    let t = Instant::now();
    let c0 = cpu_time();
    let mut acc = 0.0;
    for _ in 0..reps {
        acc += o.loss_grad(&x, &mut g);
    }
    let wall = t.elapsed().as_secs_f64() / reps as f64;
    let cpu = c0
        .zip(cpu_time())
        .map(|(a, b)| (b - a) / reps as f64)
        .unwrap_or(wall);
    println!(
        "{name:<30} wall {:>6.3} ms, on-CPU {:>6.3} ms per loss_grad ({:.2} ns/nnz; checksum {acc:.6})",
        wall * 1e3,
        cpu * 1e3,
        cpu * 1e9 / nnz as f64
    );
}

fn main() {
    for name in ["w8a", "a9a", "phishing", "mushrooms"] {
        let (a, y) = datasets::load(name).unwrap().into_parts();
        let nnz = a.nnz();
        time(
            &format!("{name} logistic (full)"),
            &mut LogisticNonconvex::new(a.clone(), y.clone(), 0.1).unwrap(),
            nnz,
        );
        time(
            &format!("{name} least squares (full)"),
            &mut LeastSquares::new(a, y).unwrap(),
            nnz,
        );
    }
}
