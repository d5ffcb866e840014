//! Step-size theory of EF21 (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021).
//!
//! For a contractive compressor with constant alpha, the EF21 analysis uses the
//! "Markov compressor" contraction (algorithms.md §3.4) with
//!
//! ```text
//! theta = 1 - sqrt(1 - alpha),   beta = (1 - alpha) / (1 - sqrt(1 - alpha))
//! ```
//!
//! and the step sizes
//!
//! * nonconvex (Theorem 1 / poster Theorem 2): gamma = 1 / (L + Ltilde sqrt(beta/theta));
//! * PL (poster Theorem 3): gamma = min{ 1 / (L + Ltilde sqrt(2 beta/theta)), theta / (2 mu) }.
//!
//! With alpha = 1 (no compression) beta = 0 and the nonconvex rule reduces to 1/L,
//! which is what the authors' code special-cases for K = d.
//!
//! Every function here needs 0 < alpha <= 1 (outside it theta or beta is not
//! defined); the setup checks it before calling and names the compressor.

/// theta(alpha) = 1 - sqrt(1 - alpha).
pub fn theta(alpha: f64) -> f64 {
    debug_assert!(
        alpha > 0.0 && alpha <= 1.0,
        "alpha = {alpha} outside (0, 1]"
    );
    1.0 - (1.0 - alpha).sqrt()
}

/// beta(alpha) = (1 - alpha) / (1 - sqrt(1 - alpha)); 0 for alpha = 1.
pub fn beta(alpha: f64) -> f64 {
    if alpha >= 1.0 {
        0.0
    } else {
        (1.0 - alpha) / theta(alpha)
    }
}

/// sqrt(beta/theta) = sqrt(1 - alpha) / (1 - sqrt(1 - alpha)).
pub fn sqrt_beta_over_theta(alpha: f64) -> f64 {
    (beta(alpha) / theta(alpha)).sqrt()
}

/// The largest EF21 step size of the nonconvex theorem: 1/(L + Ltilde sqrt(beta/theta)).
pub fn ef21_stepsize(l: f64, l_tilde: f64, alpha: f64) -> f64 {
    1.0 / (l + l_tilde * sqrt_beta_over_theta(alpha))
}

/// The EF21 step size of the PL theorem:
/// min{1/(L + Ltilde sqrt(2 beta/theta)), theta/(2 mu)}.
pub fn ef21_pl_stepsize(l: f64, l_tilde: f64, alpha: f64, mu: f64) -> f64 {
    let a = 1.0 / (l + l_tilde * (2.0 * beta(alpha) / theta(alpha)).sqrt());
    a.min(theta(alpha) / (2.0 * mu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// The table of algorithms.md §3.4 (printed to 6 significant digits).
    #[test]
    fn constants_match_reference_table() {
        let rows: &[(f64, f64, f64, f64, f64)] = &[
            (0.5, 0.292893, 1.70711, 2.41421, 3.41421),
            (0.1, 0.0513167, 17.5381, 18.4868, 26.1443),
            (0.01, 0.00501256, 197.504, 198.499, 280.720),
            (1.0 / 68.0, 0.00738017, 133.506, 134.498, 190.209),
            (1.0 / 112.0, 0.0044743, 221.503, 222.499, 314.661),
            (1.0 / 123.0, 0.00407334, 243.503, 244.499, 345.774),
            (2.0 / 123.0, 0.0081634, 120.506, 121.498, 171.824),
            (1.0 / 300.0, 0.00166806, 597.501, 598.500, 846.406),
        ];
        for &(a, th, be, sbt, s2bt) in rows {
            assert!(close(theta(a), th, 1e-5), "theta({a})");
            assert!(close(beta(a), be, 1e-5), "beta({a})");
            assert!(close(sqrt_beta_over_theta(a), sbt, 1e-5), "sqrt(b/t)({a})");
            assert!(
                close((2.0 * beta(a) / theta(a)).sqrt(), s2bt, 1e-5),
                "sqrt(2b/t)({a})"
            );
            // identity of §12.2
            let id = (1.0 + (1.0 - a).sqrt()) / a - 1.0;
            assert!(close(sqrt_beta_over_theta(a), id, 1e-12));
            assert!(sqrt_beta_over_theta(a) <= 2.0 / a - 1.0);
        }
    }

    #[test]
    fn stepsizes_of_the_hand_example_and_no_compression() {
        // §12.1: alpha = 1/2, L = Ltilde = 1, mu = 1.
        assert!(close(ef21_stepsize(1.0, 1.0, 0.5), 0.292893, 1e-5));
        assert!(close(ef21_pl_stepsize(1.0, 1.0, 0.5, 1.0), 0.146447, 1e-5));
        assert_eq!(ef21_stepsize(4.0, 7.0, 1.0), 0.25);
    }
}
