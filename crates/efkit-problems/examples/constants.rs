//! Prints the smoothness constants of the EF21 experiments (n = 20 workers,
//! contiguous split): `cargo run --release -p efkit-problems --example constants`.

use std::time::Instant;

use efkit_problems::problem::{Problem, ProblemConfig, ProblemKind};

fn main() {
    for kind in [ProblemKind::Logistic, ProblemKind::LeastSquares] {
        for name in ["phishing", "mushrooms", "a9a", "w8a"] {
            let p = Problem::build(&ProblemConfig::new(name, 20, kind)).unwrap();
            let t = Instant::now();
            let s = p.smoothness().unwrap();
            let mu = s.mu.map(|m| format!(", mu = {m:.6e}")).unwrap_or_default();
            println!(
                "{kind:<13} {name:<9} L = {:.10}, Ltilde = {:.10}, max L_i = {:.6}{mu}  ({:.0} ms)",
                s.l,
                s.l_tilde,
                s.l_i.iter().cloned().fold(0.0, f64::max),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}
