//! End-to-end tests of the `efkit` binary: a run's outputs, exit codes, bad
//! input (each gives a clear error and exit code 2), never losing results,
//! divergence, interruption, and kill-and-resume equality.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn run_writes_config_metrics_summary_and_plots() {
    let d = tmp("run");
    let cfg = write(&d, "c.toml", BASE);
    let out = d.join("out");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "grad_norm_vs_bits.svg",
        "grad_norm_vs_bits.png",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let rows = metrics_without_seconds(&out);
    assert_eq!(rows.len(), 7); // rounds 0, 5, ..., 30
    for k in [
        "round",
        "loss",
        "grad_norm_sq",
        "bits_up_wire",
        "bits_up_paper",
        "bits_down_wire",
    ] {
        assert!(rows[3].get(k).is_some(), "{k}");
    }
    // paper bits: the dense g_i^0 is free (the authors' count is it * K * 32),
    // then 32 K per round for K = 2; the wire bits do count the dense round
    assert_eq!(rows[6]["bits_up_paper"].as_f64().unwrap(), (29 * 64) as f64);
    assert!(rows[6]["bits_up_wire"].as_f64().unwrap() > (32 * 68 + 29 * 64) as f64);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "max_rounds");
    assert_eq!(s["rounds"], 30);
    // the resolved config runs again to the same metrics
    let out2 = d.join("out2");
    let o = run(&[
        "run",
        out.join("config.toml").to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--quiet",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        metrics_without_seconds(&out),
        metrics_without_seconds(&out2)
    );
}

#[test]
fn existing_run_is_never_overwritten_without_force() {
    let d = tmp("force");
    let cfg = write(&d, "c.toml", BASE);
    let out = d.join("out");
    assert!(run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q"
    ])
    .status
    .success());
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--set",
        "stop.max_rounds=3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a run"));
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    // a failing run (bad config) with --force leaves the old results alone too
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--force",
        "--set",
        "compressor.k=1000",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--force",
        "--set",
        "stop.max_rounds=3",
    ]);
    assert!(o.status.success());
}

/// (what, config text or None for BASE, extra CLI args, expected stderr fragment)
fn bad_cases(d: &Path) -> Vec<(&'static str, Option<String>, Vec<String>, &'static str)> {
    let libsvm_bad = write(d, "bad.libsvm", "+1 1:0.5 2:1\n-1 3:abc\n");
    let libsvm_zero = write(d, "zero.libsvm", "+1 0:0.5\n-1 1:1\n");
    let libsvm_order = write(d, "order.libsvm", "+1 3:0.5 2:1\n-1 1:1\n");
    let libsvm_label = write(d, "label.libsvm", "x 1:0.5\n");
    let init_short = write(d, "x0.txt", "1 2 3");
    let init_nan = write(d, "x0nan.txt", &"NaN ".repeat(68));
    let ds = |p: &Path| BASE.replace("\"phishing\"", &format!("{:?}", p.to_str().unwrap()));
    let s = |t: &str| Some(t.to_string());
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "unknown top-level key",
            s(&format!("{BASE}\nfoo = 1\n")),
            v(&[]),
            "unknown field `foo`",
        ),
        (
            "typo in a key",
            s(&BASE.replace("workers", "workrs")),
            v(&[]),
            "did you mean `workers`",
        ),
        (
            "unknown method",
            s(&BASE.replace("\"ef21\"", "\"ef99\"")),
            v(&[]),
            "unknown method `ef99`",
        ),
        (
            "unknown compressor",
            s(&BASE.replace("\"top-k\"", "\"top-q\"")),
            v(&[]),
            "top-q",
        ),
        (
            "theory step with an unbiased compressor that does not contract",
            s(&BASE.replace("name = \"top-k\"\nk = 2", "name = \"scaled-rand-k\"\nk = 2")),
            v(&[]),
            "contractive = true",
        ),
        (
            "contractive = true on a contractive compressor",
            None,
            v(&["--set", "compressor.contractive=true"]),
            "not unbiased",
        ),
        ("thousands of threads", None, v(&["--threads", "100000"]), "threads"),
        (
            "step.mu with the nonconvex rule",
            None,
            v(&["--set", "step.mu=-1"]),
            "step.mu",
        ),
        (
            "init.std with zeros",
            s(&BASE.replace("kind = \"gaussian\"", "kind = \"zeros\"\nstd = -5.0")),
            v(&[]),
            "init.std",
        ),
        (
            "init.path with gaussian",
            None,
            v(&["--set", "init.path=\"x0.txt\""]),
            "init.path",
        ),
        (
            "a misspelled key of the regularizer",
            s(&BASE.replace("\"ef21\"", "\"ef21-prox\"\nprox = { kind = \"l1\", lambda = 0.01, lamda = 5 }")),
            v(&[]),
            "lamda",
        ),
        (
            "a batch larger than a worker's data",
            s(&BASE.replace("\"ef21\"", "\"ef21-sgd\"\nbatch = 100000")),
            v(&[]),
            "samples",
        ),
        (
            "a feature index that makes the state larger than the machine",
            s(&ds(&write(d, "huge.libsvm", "-1 4294967295:1\n+1 1:1\n-1 2:1\n+1 3:1\n"))
                .replace("workers = 4", "workers = 2")),
            v(&[]),
            "GB of state",
        ),
        (
            "a dimension that makes the state larger than the machine",
            s("[problem]\nkind = \"noisy-quadratic\"\nworkers = 2\ndim = 1000000000\nnoise = \"gaussian\"\nsigma = 1.0\n\
               [method]\nname = \"ef21-sgd\"\nbatch = 1\n[compressor]\nname = \"top-k\"\nk = 1\n\
               [step]\nrule = \"absolute\"\nvalue = 0.1\n"),
            v(&[]),
            "problem.dim",
        ),
        (
            "K > d",
            None,
            v(&["--set", "compressor.k=1000"]),
            "k = 1000 is outside 1..=68 (d = 68)",
        ),
        (
            "K = 0",
            None,
            v(&["--set", "compressor.k=0"]),
            "k = 0 is outside 1..=68",
        ),
        (
            "ratio out of range",
            None,
            v(&["--set", "compressor.ratio=1.5", "--set", "compressor.k=1"]),
            "ratio",
        ),
        (
            "negative multiplier",
            None,
            v(&["--set", "step.multiplier=-1.0"]),
            "step.multiplier",
        ),
        (
            "absolute step without value",
            None,
            v(&["--set", "step.rule=\"absolute\""]),
            "step.value",
        ),
        (
            "negative absolute step",
            None,
            v(&[
                "--set",
                "step.rule=\"absolute\"",
                "--set",
                "step.value=-0.1",
            ]),
            "step.value",
        ),
        (
            "unknown step rule",
            None,
            v(&["--set", "step.rule=\"magic\""]),
            "step.rule",
        ),
        (
            "n larger than rows",
            None,
            v(&["--set", "problem.workers=20000"]),
            "workers",
        ),
        (
            "zero workers",
            None,
            v(&["--set", "problem.workers=0"]),
            "workers",
        ),
        (
            "unknown dataset",
            s(&BASE.replace("\"phishing\"", "\"nope\"")),
            v(&[]),
            "nope",
        ),
        (
            "unknown problem kind",
            s(&BASE.replace("\"logistic\"", "\"svm\"")),
            v(&[]),
            "svm",
        ),
        (
            "unknown split",
            None,
            v(&["--set", "problem.split=\"random\""]),
            "random",
        ),
        (
            "negative lambda",
            None,
            v(&["--set", "problem.lambda=-1.0"]),
            "lambda",
        ),
        (
            "hb without eta",
            s(&BASE.replace("\"ef21\"", "\"ef21-hb\"")),
            v(&[]),
            "eta",
        ),
        (
            "hb eta = 1",
            s(&BASE.replace("name = \"ef21\"", "name = \"ef21-hb\"\neta = 1.0")),
            v(&[]),
            "eta",
        ),
        (
            "parameter not used by the method",
            s(&BASE.replace("name = \"ef21\"", "name = \"ef21\"\neta = 0.5")),
            v(&[]),
            "not used",
        ),
        (
            "sgd without batch",
            s(&BASE.replace("\"ef21\"", "\"ef21-sgd\"")),
            v(&[]),
            "batch",
        ),
        (
            "batch fraction > 1",
            s(&BASE.replace("name = \"ef21\"", "name = \"ef21-sgd\"\nbatch = 1.5")),
            v(&[]),
            "batch",
        ),
        (
            "pp participation 0",
            s(&BASE.replace("name = \"ef21\"", "name = \"ef21-pp\"\nparticipation = 0.0")),
            v(&[]),
            "participation",
        ),
        (
            "bc without server compressor",
            s(&BASE.replace("\"ef21\"", "\"ef21-bc\"")),
            v(&[]),
            "server_compressor",
        ),
        (
            "server compressor on a non-bc method",
            s(&format!(
                "{BASE}[server_compressor]\nname = \"top-k\"\nk = 1\n"
            )),
            v(&[]),
            "server_compressor",
        ),
        (
            "gd with a compressor",
            s(&BASE.replace("\"ef21\"", "\"gd\"")),
            v(&[]),
            "compressor",
        ),
        ("tol <= 0", None, v(&["--set", "stop.tol=0.0"]), "stop.tol"),
        (
            "log_every 0",
            None,
            v(&["--set", "stop.log_every=0"]),
            "log_every",
        ),
        (
            "blowup <= 1",
            None,
            v(&["--set", "stop.blowup=0.5"]),
            "blowup",
        ),
        (
            "unknown init",
            None,
            v(&["--set", "init.kind=\"ones\""]),
            "init.kind",
        ),
        (
            "init file of wrong length",
            s(&BASE.replace(
                "kind = \"gaussian\"",
                &format!("kind = \"file\"\npath = {:?}", init_short.to_str().unwrap()),
            )),
            v(&[]),
            "d = 68",
        ),
        (
            "init file with NaN",
            s(&BASE.replace(
                "kind = \"gaussian\"",
                &format!("kind = \"file\"\npath = {:?}", init_nan.to_str().unwrap()),
            )),
            v(&[]),
            "entry 1 is not finite",
        ),
        (
            "malformed LibSVM value",
            s(&ds(&libsvm_bad)),
            v(&[]),
            "line 2",
        ),
        ("LibSVM index 0", s(&ds(&libsvm_zero)), v(&[]), "line 1"),
        (
            "LibSVM indices not increasing",
            s(&ds(&libsvm_order)),
            v(&[]),
            "line 1",
        ),
        ("LibSVM bad label", s(&ds(&libsvm_label)), v(&[]), "line 1"),
        (
            "TOML syntax error",
            s("seed = = 1"),
            v(&[]),
            "TOML parse error at line 1",
        ),
        (
            "wrong type",
            s(&BASE.replace("workers = 4", "workers = \"four\"")),
            v(&[]),
            "workers",
        ),
        ("bad --set", None, v(&["--set", "novalue"]), "KEY=VALUE"),
        ("unknown flag", None, v(&["--frobnicate"]), "frobnicate"),
        (
            "checkpoint-every 0",
            None,
            v(&["--checkpoint-every", "0"]),
            "checkpoint-every",
        ),
        (
            "missing config file",
            s("__missing__"),
            v(&[]),
            "cannot read config",
        ),
    ]
}

#[test]
fn bad_input_table_gives_clear_errors_and_exit_code_2() {
    let d = tmp("bad");
    let cases = bad_cases(&d);
    assert!(cases.len() >= 30);
    for (i, (what, text, args, expect)) in cases.into_iter().enumerate() {
        let cfg = match text.as_deref() {
            Some("__missing__") => d.join("does-not-exist.toml"),
            Some(t) => write(&d, &format!("c{i}.toml"), t),
            None => write(&d, &format!("c{i}.toml"), BASE),
        };
        let out = d.join(format!("out{i}"));
        let mut a = vec![
            "run".to_string(),
            cfg.to_str().unwrap().to_string(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "-q".into(),
        ];
        a.extend(args);
        let o = bin().args(&a).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{what}: exit {:?}, stderr: {err}",
            o.status.code()
        );
        assert!(
            err.contains(expect),
            "{what}: expected `{expect}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            !out.join("metrics.jsonl").exists(),
            "{what}: no work may start"
        );
    }
    // other commands
    for (args, expect) in [
        (vec!["data", "inspect", "nope"], "nope"),
        (vec!["compressors", "--dim", "0"], "dim"),
        (
            vec!["resume", "/nonexistent-efkit-dir"],
            "cannot read config",
        ),
        (vec!["repro", "no-such-figure"], "no-such-figure"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expect),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn divergence_stops_with_exit_code_3_and_keeps_metrics() {
    let d = tmp("div");
    let cfg = write(
        &d,
        "c.toml",
        &BASE.replace("multiplier = 4.0", "multiplier = 1e9"),
    );
    let out = d.join("out");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--set",
        "stop.log_every=1",
        "--set",
        "stop.blowup=10.0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("diverged at round") && err.contains("loss"),
        "{err}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "diverged");
    assert!(!metrics_without_seconds(&out).is_empty());
}

fn long_config(method_block: &str, rounds: u64) -> String {
    BASE.replace("name = \"ef21\"", method_block)
        .replace("max_rounds = 30", &format!("max_rounds = {rounds}"))
        .replace("log_every = 5", "log_every = 7")
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs `cfg` uninterrupted into `d/full`, and again into `d/part` with a
/// checkpoint every 50 rounds, killed with SIGKILL `delay_ms` after its first
/// checkpoint and resumed with `efkit resume`. Returns (full, part).
fn run_killed_and_resumed(d: &Path, cfg: &Path, tag: &str, delay_ms: u64) -> (PathBuf, PathBuf) {
    let full = d.join("full");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        full.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let part = d.join("part");
    let mut child = bin()
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            part.to_str().unwrap(),
            "-q",
            "--checkpoint-every",
            "50",
        ])
        .spawn()
        .unwrap();
    assert!(
        wait_for(&part.join("checkpoint.json"), Duration::from_secs(60)),
        "no checkpoint appeared"
    );
    std::thread::sleep(Duration::from_millis(delay_ms));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let o = run(&["resume", part.to_str().unwrap(), "-q"]);
    assert!(
        o.status.success(),
        "{tag}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (full, part)
}

/// SIGKILL at a random point, then `efkit resume`: metrics equal an
/// uninterrupted run (ignoring seconds), for EF21, EF21-SGDM and EF21-PP.
#[test]
fn kill_and_resume_equals_uninterrupted_run() {
    let methods = [
        ("ef21", "name = \"ef21\""),
        ("sgdm", "name = \"ef21-sgdm\"\neta = 0.3\nbatch = 8"),
        ("pp", "name = \"ef21-pp\"\nparticipation = 0.5"),
    ];
    for (k, (tag, block)) in methods.iter().enumerate() {
        let d = tmp(&format!("resume-{tag}"));
        let cfg = write(&d, "c.toml", &long_config(block, 3000));
        // a pseudo-random extra delay so the kill lands mid-run at different points
        let (full, part) = run_killed_and_resumed(&d, &cfg, tag, 20 + 37 * k as u64);
        assert_eq!(
            metrics_without_seconds(&full),
            metrics_without_seconds(&part),
            "{tag}"
        );
    }
}

/// SIGKILL of a Safe-EF run (switching with EF14, and the stochastic
/// primal-dual method), then `efkit resume`: metrics equal an uninterrupted
/// run bit for bit (ignoring seconds), and the summary ends the same.
#[test]
fn kill_and_resume_safe_ef_equals_uninterrupted_run() {
    let methods = [
        (
            "safe-ef",
            "name = \"safe-ef\"\nstep_multiplier = 16.0\nthreshold_multiplier = 0.0",
        ),
        (
            "primal-dual",
            "name = \"primal-dual\"\nstep_multiplier = 16.0\nbatch = 16",
        ),
    ];
    for (k, (tag, block)) in methods.iter().enumerate() {
        let d = tmp(&format!("resume-safe-{tag}"));
        let cfg = write(&d, "c.toml", &safe_config(block, 4000));
        let (full, part) = run_killed_and_resumed(&d, &cfg, tag, 30 + 41 * k as u64);
        let (a, b) = (
            metrics_without_seconds(&full),
            metrics_without_seconds(&part),
        );
        assert_eq!(a.len(), 4000 / 7 + 2, "{tag}: every logged round");
        assert_eq!(a, b, "{tag}");
        let status = |dir: &Path| -> serde_json::Value {
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                    .unwrap();
            s["status"].clone()
        };
        assert_eq!(status(&part), "max_rounds");
        assert_eq!(status(&full), status(&part));
    }
}

#[test]
fn corrupted_checkpoint_is_refused() {
    let d = tmp("corrupt");
    let cfg = write(&d, "c.toml", &long_config("name = \"ef21\"", 60));
    let out = d.join("out");
    let o = run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-q",
        "--checkpoint-every",
        "20",
    ]);
    assert!(o.status.success());
    let ck = out.join("checkpoint.json");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(&ck, &bytes).unwrap();
    let o = run(&["resume", out.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Starts a long EF21 run, waits for its first metrics, sends `signal` (as
/// `kill -SIGNAL`), and returns the finished process and its output directory.
fn run_and_signal(name: &str, signal: &str) -> (Output, PathBuf) {
    let d = tmp(name);
    let cfg = write(&d, "c.toml", &long_config("name = \"ef21\"", 1_000_000));
    let out = d.join("out");
    let child = bin()
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
        ])
        .spawn()
        .unwrap();
    assert!(wait_for(
        &out.join("metrics.jsonl"),
        Duration::from_secs(30)
    ));
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    assert!(Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
    (child.wait_with_output().unwrap(), out)
}

#[test]
fn sigint_finishes_the_round_and_exits_130() {
    let (o, out) = run_and_signal("sigint", "INT");
    assert_eq!(o.status.code(), Some(130));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "interrupted");
    assert!(out.join("checkpoint.json").exists());
}

/// SIGTERM (what `kill`, systemd and batch schedulers send) is handled like
/// SIGINT: the round finishes, exit code 130, metrics and summary kept, and the
/// checkpoint is the state at the last logged round.
#[test]
fn sigterm_finishes_the_round_and_exits_130() {
    let (o, out) = run_and_signal("sigterm", "TERM");
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // every logged round is kept, in order, up to the round the run stopped at
    let rows = metrics_without_seconds(&out);
    assert!(rows.len() >= 2, "{} metrics lines", rows.len());
    let rounds: Vec<u64> = rows.iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert!(
        rounds.iter().enumerate().all(|(i, &r)| r == 7 * i as u64),
        "{rounds:?}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "interrupted");
    let last = rows.last().unwrap();
    assert_eq!(s["rounds"], last["round"]);
    assert_eq!(s["grad_norm_sq"], last["grad_norm_sq"]);
    assert_eq!(s["bits_up_wire"], last["bits_up_wire"]);
    // the checkpoint (header line, then JSON) holds the state of that round
    let ck = std::fs::read_to_string(out.join("checkpoint.json")).unwrap();
    let (_, payload) = ck.split_once('\n').unwrap();
    let ck: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(ck["state"]["server"]["round"], last["round"]);
}

#[test]
fn data_compressors_and_plot_commands() {
    let o = run(&["data", "list"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for name in ["a9a", "w8a", "mushrooms", "phishing", "a9a.t", "w8a.t"] {
        assert!(
            s.lines().any(|l| l.starts_with(name)),
            "{name} missing in: {s}"
        );
    }
    let o = run(&["data", "inspect", "mushrooms"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("8124") && s.contains("112") && s.contains("170604"),
        "{s}"
    );
    let o = run(&["compressors", "--dim", "100"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("top-k") && s.contains("alpha=1.0000e-2"), "{s}");
    assert!(
        s.contains("scaled-rand-k") && s.contains("omega=9.9000e1"),
        "{s}"
    );
    // the preset listing names every preset of both families with its keys
    let o = run(&["methods"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for name in efkit_core::method::METHOD_NAMES
        .iter()
        .chain(efkit_core::safe::SAFE_METHOD_NAMES)
    {
        assert!(
            s.lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))),
            "{name} missing in: {s}"
        );
    }
    assert!(
        s.contains("eta (required), batch (required), init_batch"),
        "{s}"
    );
    // plot two runs
    let d = tmp("plot");
    let cfg = write(&d, "c.toml", BASE);
    let a = d.join("a");
    let b = d.join("b");
    assert!(run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        a.to_str().unwrap(),
        "-q"
    ])
    .status
    .success());
    assert!(run(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
        "-q",
        "--set",
        "method.name=\"ef14\""
    ])
    .status
    .success());
    let stem = d.join("overlay");
    let o = run(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--x",
        "rounds",
        "--out",
        stem.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(d.join("overlay.svg")).unwrap();
    let texts: Vec<&str> = svg
        .split("</text>")
        .filter_map(|t| t.rsplit('>').next())
        .map(|t| t.trim())
        .collect();
    assert!(
        texts.contains(&"a") && texts.contains(&"b"),
        "legend labels a and b: {texts:?}"
    );
    assert!(std::fs::read(d.join("overlay.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
}

/// Every shipped example config runs (a few rounds).
#[test]
fn example_configs_run() {
    let d = tmp("examples");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = d.join(p.file_stem().unwrap());
            let text = std::fs::read_to_string(&p).unwrap();
            let network = text.contains("\"mnist-mlp\"") || text.contains("\"mnist-cnn\"");
            let mut args = vec![
                "run",
                p.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "-q",
                "--set",
                "stop.max_rounds=3",
            ];
            if text.contains("\"mnist-cnn\"") {
                // the CNN's full-gradient evaluation of 60,000 images takes
                // ~15 s; a 3,000-image shard shows the same path
                args.extend(["--set", "problem.rows=3000"]);
            }
            let o = run(&args);
            assert!(
                o.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            // the network examples report their test accuracy, the others none
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                    .unwrap();
            let acc = s["test_accuracy"].as_f64();
            assert_eq!(acc.is_some(), network, "{}: {s}", p.display());
            if let Some(a) = acc {
                assert!((0.0..=1.0).contains(&a), "{a}");
                let last = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
                let last: serde_json::Value =
                    serde_json::from_str(last.lines().last().unwrap()).unwrap();
                assert_eq!(last["test_accuracy"].as_f64(), Some(a));
            }
            n += 1;
        }
    }
    assert!(n >= 3);
}
