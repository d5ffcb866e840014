//! What setup accepts and what it makes of it: the theory step with unbiased
//! compressors (only contractive operators qualify; `contractive = true`
//! makes one), the EF21-Prox start point for indicator regularizers, and keys
//! that would otherwise be read by nothing.

use efkit_core::compress::CompressorClass;
use efkit_core::method::Regularizer;
use efkit_runtime::config::{parse_with_hints, Config};
use efkit_runtime::safe::{prepare_safe, SafeConfig};
use efkit_runtime::setup::{prepare, SetupError};

fn config(method: &str, compressor: &str, tail: &str) -> Config {
    let s = format!(
        "seed = 3\nthreads = 2\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 20\n\
         [method]\n{method}\n[compressor]\n{compressor}\n[step]\nrule = \"theory\"\n\
         [init]\nkind = \"gaussian\"\n{tail}"
    );
    parse_with_hints(&s).unwrap()
}

fn setup_error(cfg: &Config) -> String {
    match prepare(cfg) {
        Ok(_) => panic!("setup accepted a config it should refuse"),
        Err(e @ (SetupError::Config { .. } | SetupError::Param(_))) => e.to_string(),
        Err(e) => panic!("not a config error: {e}"),
    }
}

/// Scaled Rand-K with K = 1 (omega = d - 1) does not contract, so EF21's
/// theory step does not apply to it and setup says so; its C/(1 + omega) is
/// contractive with alpha = 1/d, and EF21 with the theory step for that
/// alpha decreases the gradient norm over 400 rounds (the unscaled operator
/// diverged at round 190 with the alpha of the scaled one, the bug this
/// guards against).
#[test]
fn theory_step_needs_a_contractive_operator() {
    let raw = config("name = \"ef21\"", "name = \"scaled-rand-k\"\nk = 1", "");
    let err = setup_error(&raw);
    assert!(err.contains("contractive = true"), "{err}");
    assert!(err.contains("omega = 111"), "{err}");

    let shrunk = config(
        "name = \"ef21\"",
        "name = \"scaled-rand-k\"\nk = 1\ncontractive = true",
        "",
    );
    let mut p = prepare(&shrunk).unwrap();
    assert_eq!(p.info.alpha, Some(1.0 / 112.0));
    assert!(matches!(
        p.cluster.codecs.uplink.class(),
        CompressorClass::Contractive { .. }
    ));
    let (_, g0) = p.cluster.evaluate();
    for _ in 0..400 {
        p.cluster.step().unwrap();
    }
    let (loss, g) = p.cluster.evaluate();
    assert!(loss.is_finite() && g < g0, "||grad||^2 {g0} -> {g}");

    // natural compression (omega = 1/8) contracts as it is: alpha = 1 - omega
    let natural = config("name = \"ef21\"", "name = \"natural\"", "");
    assert_eq!(prepare(&natural).unwrap().info.alpha, Some(0.875));
}

/// EF21-Prox with the indicator of a ball: the Gaussian x^0 (norm ~ sqrt(d)
/// = 10.6) is projected onto the ball of radius 1, so r(x^0) is finite and
/// the run starts inside the set.
#[test]
fn prox_start_is_projected_onto_the_set() {
    let cfg = config(
        "name = \"ef21-prox\"\nprox = { kind = \"ball\", radius = 1.0 }",
        "name = \"top-k\"\nk = 1",
        "",
    );
    let mut p = prepare(&cfg).unwrap();
    let x = p.cluster.server.state.x.clone();
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-12, "||x^0|| = {norm}");
    let reg = Regularizer::Ball { radius: 1.0 };
    assert_eq!(reg.value(&x), 0.0);
    for _ in 0..20 {
        p.cluster.step().unwrap();
    }
    let (loss, _) = p.cluster.evaluate();
    assert!(loss.is_finite());
    // a box: clipped coordinate by coordinate
    let cfg = config(
        "name = \"ef21-prox\"\nprox = { kind = \"box\", lo = -0.1, hi = 0.2 }",
        "name = \"top-k\"\nk = 1",
        "",
    );
    let x = prepare(&cfg).unwrap().cluster.server.state.x;
    assert!(x.iter().all(|v| (-0.1..=0.2).contains(v)));
    assert!(x.iter().any(|&v| v == -0.1) && x.iter().any(|&v| v == 0.2));
}

/// Keys that nothing would read, and values that would silently run another
/// experiment, are errors naming the key.
#[test]
fn unread_and_clamped_settings_are_errors() {
    let topk = "name = \"top-k\"\nk = 1";
    let cases: Vec<(Config, &str)> = vec![
        (
            config("name = \"ef21\"", topk, "").with(|c| c.threads = 5000),
            "threads",
        ),
        (
            config("name = \"ef21\"", topk, "").with(|c| c.step.mu = Some(0.1)),
            "step.mu",
        ),
        (
            config("name = \"ef21\"", topk, "").with(|c| {
                c.step.rule = "absolute".into();
                c.step.value = Some(0.1);
                c.step.multiplier = 2.0
            }),
            "step.multiplier",
        ),
        (
            config("name = \"ef21\"", topk, "").with(|c| {
                c.init.kind = "zeros".into();
                c.init.std = 3.0
            }),
            "init.std",
        ),
        (
            config("name = \"ef21\"", topk, "").with(|c| c.init.path = Some("x0.txt".into())),
            "init.path",
        ),
        // mushrooms over 20 workers: 406 or 407 rows each
        (
            config("name = \"ef21-sgd\"\nbatch = 1000", topk, ""),
            "more than worker 0's",
        ),
        (
            config(
                "name = \"ef21-sgdm\"\neta = 0.1\nbatch = 8\ninit_batch = 5000",
                topk,
                "",
            ),
            "method.init_batch",
        ),
    ];
    for (cfg, key) in cases {
        let err = setup_error(&cfg);
        assert!(err.contains(key), "expected `{key}` in: {err}");
    }
    // a fraction of a stream (the noisy quadratic draws fresh samples)
    let stream = parse_with_hints(
        "[problem]\nkind = \"noisy-quadratic\"\nworkers = 2\ndim = 10\nnoise = \"gaussian\"\nsigma = 1.0\n\
         [method]\nname = \"ef21-sgd\"\nbatch = 0.5\n[compressor]\nname = \"top-k\"\nk = 1\n\
         [step]\nrule = \"absolute\"\nvalue = 0.1\n",
    )
    .unwrap();
    let err = setup_error(&stream);
    assert!(err.contains("streams samples"), "{err}");
    // a regularizer's misspelled key is a parse error
    let e = Config::from_toml(
        "[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 2\n\
         [method]\nname = \"ef21-prox\"\nprox = { kind = \"l1\", lambda = 0.01, lamda = 5 }\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("lamda"), "{e}");
}

/// Safe-EF: an absolute step or threshold together with its multiplier, a
/// non-finite f*, and a minibatch larger than every worker's data are errors.
#[test]
fn safe_ef_conflicting_and_non_finite_settings_are_errors() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/safe-ef-np-a9a.toml"
    ))
    .unwrap();
    let parse = |s: &str| -> SafeConfig { toml::from_str(s).unwrap() };
    let with_step = base.replace(
        "step_multiplier = 64.0",
        "step_multiplier = 64.0\nstep = 0.01",
    );
    let with_threshold = base.replace(
        "threshold_multiplier = 0.0",
        "threshold_multiplier = 0.0\nthreshold = 0.1",
    );
    let nan_f_star = base.replace("f_star = 0.3607782638006274", "f_star = nan");
    let huge_batch = base.replace(
        "step_multiplier = 64.0",
        "step_multiplier = 64.0\nbatch = 100000000",
    );
    for (text, key) in [
        (with_step, "step_multiplier"),
        (with_threshold, "threshold_multiplier"),
        (nan_f_star, "f_star"),
        (huge_batch, "method.batch"),
    ] {
        match prepare_safe(&parse(&text)) {
            Ok(_) => panic!("accepted a config with a bad `{key}`"),
            Err(e) => assert!(e.to_string().contains(key), "expected `{key}` in: {e}"),
        }
    }
}

/// `Config` edits in place, for the table above.
trait With: Sized {
    fn with(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl With for Config {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
