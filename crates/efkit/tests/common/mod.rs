//! Helpers shared by the `efkit` binary's integration tests (`cli.rs`,
//! `robustness.rs`): the binary, scratch directories, a small EF21 config.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `efkit` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_efkit"))
}

/// A fresh scratch directory for one test (unique per process and name).
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("efkit-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the binary with `args` to completion.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// The rows of `dir/metrics.jsonl` without the wall-clock `seconds`.
pub fn metrics_without_seconds(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// EF21 on phishing (d = 68), n = 4, Top-2, 30 rounds: a few milliseconds a round.
pub const BASE: &str = r#"seed = 5
[problem]
kind = "logistic"
dataset = "phishing"
workers = 4
[method]
name = "ef21"
[compressor]
name = "top-k"
k = 2
[step]
rule = "theory"
multiplier = 4.0
[init]
kind = "gaussian"
[stop]
max_rounds = 30
log_every = 5
"#;

/// A Safe-EF config on mushrooms (Neyman-Pearson, hinge, ball) with `rounds` rounds.
pub fn safe_config(method_block: &str, rounds: u64) -> String {
    format!(
        r#"seed = 4
[problem]
kind = "neyman-pearson"
dataset = "mushrooms"
workers = 4
loss = "hinge"
tau = 0.4
radius = 3.0
[method]
{method_block}
[compressor]
name = "top-k"
ratio = 0.05
[server_compressor]
name = "top-k"
ratio = 0.3
[theory]
rounds = 20000
[stop]
max_rounds = {rounds}
log_every = 7
"#
    )
}
