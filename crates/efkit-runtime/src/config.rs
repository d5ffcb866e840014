//! Experiment configuration: the TOML file a user writes, fully resolved.
//!
//! Config → validated parameters → runtime objects: [`Config`] is parsed with
//! unknown keys rejected, [`crate::setup`] validates every value against the
//! data (K <= d, n <= rows, positive steps, ...) before any work starts.
//!
//! ```toml
//! seed = 1
//! [problem]
//! kind = "logistic"        # logistic | least-squares
//! dataset = "mushrooms"    # a bundled name or a path to a LibSVM file
//! workers = 20
//! [method]
//! name = "ef21"
//! [compressor]
//! name = "top-k"
//! k = 1
//! [step]
//! rule = "theory"          # theory | theory-pl | absolute
//! multiplier = 1.0
//! [stop]
//! max_rounds = 1000
//! tol = 1e-7
//! ```

use efkit_core::compress::CompressorSpec;
use efkit_core::method::MethodSpec;
pub use efkit_problems::noisy::NoiseKind;
pub use efkit_problems::split::SplitKind;

/// The problem families `efkit run` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Logistic regression with the nonconvex regularizer on a LibSVM data set.
    #[default]
    Logistic,
    /// Least squares on a LibSVM data set.
    LeastSquares,
    /// f = 1/2 ||x||^2 with noisy gradients (`dim`, `noise`, `sigma`; algorithms.md §7.1).
    NoisyQuadratic,
    /// MNIST multiclass logistic regression with the nonconvex regularizer (§10.3).
    MnistLogistic,
    /// A multilayer perceptron on MNIST (`hidden` widths; feature `nn`).
    MnistMlp,
    /// A LeNet-style CNN on MNIST (`channels`, `hidden`; feature `nn`).
    MnistCnn,
}

impl ProblemKind {
    /// The LibSVM problem kind, for the two families on LibSVM data.
    pub fn libsvm(self) -> Option<efkit_problems::ProblemKind> {
        match self {
            ProblemKind::Logistic => Some(efkit_problems::ProblemKind::Logistic),
            ProblemKind::LeastSquares => Some(efkit_problems::ProblemKind::LeastSquares),
            _ => None,
        }
    }

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Logistic => "logistic",
            ProblemKind::LeastSquares => "least-squares",
            ProblemKind::NoisyQuadratic => "noisy-quadratic",
            ProblemKind::MnistLogistic => "mnist-logistic",
            ProblemKind::MnistMlp => "mnist-mlp",
            ProblemKind::MnistCnn => "mnist-cnn",
        }
    }
}
use serde::{Deserialize, Serialize};

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run seed: every random stream derives from it.
    #[serde(default)]
    pub seed: u64,
    /// Worker threads (0 = one per core); results do not depend on it.
    #[serde(default)]
    pub threads: usize,
    /// The optimization problem and its data.
    pub problem: ProblemConfig,
    /// The method.
    pub method: MethodSpec,
    /// The uplink compressor (default identity).
    #[serde(default = "identity_spec")]
    pub compressor: CompressorSpec,
    /// The server compressor (EF21-BC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_compressor: Option<CompressorSpec>,
    /// Step size.
    #[serde(default)]
    pub step: StepConfig,
    /// Initial point.
    #[serde(default)]
    pub init: InitConfig,
    /// Stopping rules and logging.
    #[serde(default)]
    pub stop: StopConfig,
}

fn identity_spec() -> CompressorSpec {
    CompressorSpec::named("identity")
}

/// The problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProblemConfig {
    /// `logistic` (nonconvex regularizer), `least-squares`, `noisy-quadratic`,
    /// `mnist-logistic`, `mnist-mlp` or `mnist-cnn`.
    pub kind: ProblemKind,
    /// A bundled dataset name (`efkit data list`) or a path to a LibSVM file
    /// (logistic, least squares; the MNIST kinds use the bundled MNIST and
    /// accept only `mnist`; noisy-quadratic has none).
    #[serde(default)]
    pub dataset: String,
    /// Number of workers n.
    pub workers: usize,
    /// Regularization weight lambda (default: 0.1 for logistic as in the papers, 0 for least squares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// `contiguous` (file order, remainder to the last worker; default),
    /// `shuffled` or `label-sorted`.
    #[serde(default)]
    pub split: SplitKind,
    /// Number of features to assume for a user file (aligns a file with fewer features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<usize>,
    /// Dimension d (noisy-quadratic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Noise law, `gaussian` or `asymmetric` (noisy-quadratic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseKind>,
    /// Noise scale sigma (noisy-quadratic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// Use only the first `rows` training images (MNIST kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// Hidden layer widths (mnist-mlp: default [256]; mnist-cnn: the dense
    /// layers after the convolutions, default [64]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
    /// Channels of the 5x5 convolutions (mnist-cnn; default [8, 16]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<usize>>,
}

/// Step-size rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// `theory` (EF21 nonconvex rule), `theory-pl` (EF21 PL rule) or `absolute`.
    pub rule: String,
    /// Multiplier of the theoretical step (the papers' "factor").
    #[serde(default = "one")]
    pub multiplier: f64,
    /// The step size for `absolute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// mu for `theory-pl` (default: the problem's, e.g. lambda for logistic as the authors' EF21+ script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl StepConfig {
    /// The rule that gives exactly `gamma`: `absolute` with that value and no
    /// key the theory rules read (setup refuses those with `absolute`).
    pub fn absolute(gamma: f64) -> StepConfig {
        StepConfig {
            rule: "absolute".into(),
            multiplier: 1.0,
            value: Some(gamma),
            mu: None,
        }
    }
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            rule: "theory".into(),
            multiplier: 1.0,
            value: None,
            mu: None,
        }
    }
}

/// Initial point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// `zeros`, `gaussian` (x0 ~ N(0, std^2 I), seeded) or `file` (whitespace-separated numbers).
    pub kind: String,
    /// Standard deviation for `gaussian`.
    #[serde(default = "one")]
    pub std: f64,
    /// Path for `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            kind: "zeros".into(),
            std: 1.0,
            path: None,
        }
    }
}

/// Stopping rules and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopConfig {
    /// Maximum number of rounds.
    #[serde(default = "default_rounds")]
    pub max_rounds: u64,
    /// Tolerance on ||grad f||^2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// Wall-clock limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    /// Log every this many rounds.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Divergence when the loss exceeds this factor times max(1, |f(x^0)|).
    #[serde(default = "default_blowup")]
    pub blowup: f64,
    /// Write a checkpoint every this many rounds (`efkit resume DIR` continues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
}

fn default_rounds() -> u64 {
    1000
}
fn default_log_every() -> u64 {
    1
}
fn default_blowup() -> f64 {
    1e6
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            max_rounds: default_rounds(),
            tol: None,
            time_limit: None,
            log_every: 1,
            blowup: default_blowup(),
            checkpoint_every: None,
        }
    }
}

impl Config {
    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(s: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(s)
    }

    /// The fully resolved config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// Parses a config; on an unknown key the error names the key, the allowed
/// keys, and suggests the nearest one.
pub fn parse_with_hints(s: &str) -> Result<Config, String> {
    Config::from_toml(s).map_err(|e| {
        let msg = e.to_string();
        match suggest(&msg) {
            Some(hint) => format!("{msg}\nhint: did you mean `{hint}`?"),
            None => msg,
        }
    })
}

/// From a serde "unknown field `x`, expected one of `a`, `b`" message, the
/// expected name nearest to `x` (edit distance at most 3).
pub fn suggest(msg: &str) -> Option<String> {
    let start = msg.find("unknown field `")? + "unknown field `".len();
    let rest = &msg[start..];
    let end = rest.find('`')?;
    let bad = &rest[..end];
    let expected = &rest[end..];
    let cands: Vec<&str> = expected.split('`').skip(2).step_by(2).collect();
    cands
        .into_iter()
        .map(|c| (edit_distance(bad, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = 4\n[method]\nname = \"ef21\"\n";

    #[test]
    fn minimal_config_gets_defaults_and_round_trips() {
        let c = parse_with_hints(MIN).unwrap();
        assert_eq!(c.problem.lambda, None);
        assert_eq!(c.compressor.name, "identity");
        assert_eq!(c.step.rule, "theory");
        let back = parse_with_hints(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = parse_with_hints(&MIN.replace("workers", "workres")).unwrap_err();
        assert!(e.contains("workres"), "{e}");
        assert!(e.contains("did you mean `workers`"), "{e}");
    }
}
