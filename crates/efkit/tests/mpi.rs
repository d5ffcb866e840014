//! The MPI backend end to end: `mpirun -n P efkit run` against the in-process
//! run of the same config.
//!
//! - determinism: `metrics.jsonl` (seconds aside) and `summary.json` are
//!   bit-identical in-process and over MPI with P = 1, 2 and 4, for n = 4 and
//!   n = 20, and for every method of the library;
//! - traffic: the payload bytes passed to MPI are exactly the encoded messages
//!   whose bits the metrics report, round by round;
//! - failure: a rank that aborts, panics or hangs ends the job with a clear
//!   error within 30 s, and the metrics written so far are kept.
//!
//! Needs `mpirun` (Open MPI) on PATH and a build with `--features mpi`;
//! `.ci/mpi-tests` installs both and runs this file.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_efkit")
}

/// `mpirun -n p efkit ARGS` with the flags CI needs (root, 2 cores).
fn mpirun(p: usize, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-n",
        &p.to_string(),
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.arg(bin());
    // an outer MPI job's variables must not leak into the launched one
    for v in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"] {
        c.env_remove(v);
    }
    c
}

/// Runs `c` with a hard limit (the test fails instead of hanging CI).
fn run_limited(mut c: Command, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun not found: install openmpi-bin (see .ci/mpi-tests)");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

fn base(
    n: usize,
    method: &str,
    method_extra: &str,
    compressor: &str,
    rounds: u64,
    extra: &str,
) -> String {
    format!(
        "seed = 11\nthreads = 1\n[problem]\nkind = \"logistic\"\ndataset = \"mushrooms\"\nworkers = {n}\n[method]\nname = \"{method}\"\n{method_extra}\n[compressor]\n{compressor}\n[step]\nrule = \"theory\"\nmultiplier = 4.0\n[init]\nkind = \"gaussian\"\n[stop]\nmax_rounds = {rounds}\n{extra}"
    )
}

fn in_process(cfg: &Path, out: &Path) {
    let mut c = Command::new(bin());
    c.args(["-q", "run"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(["--backend", "in-process"]);
    let (o, _) = run_limited(c, Duration::from_secs(120));
    ok(&o, "in-process run");
}

fn over_mpi(p: usize, cfg: &Path, out: &Path, explicit: bool) -> Output {
    let mut c = mpirun(p, &[]);
    c.args(["-q", "run"]).arg(cfg).arg("--out").arg(out);
    if explicit {
        c.args(["--backend", "mpi"]);
    }
    run_limited(c, Duration::from_secs(120)).0
}

/// The lines of a JSONL file without their `seconds`.
fn rows(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

fn summary(dir: &Path) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("seconds");
    o.remove("mpi");
    if let Some(Value::Object(last)) = o.get_mut("last") {
        last.remove("seconds");
    }
    v
}

/// Same metrics (bit for bit: serde_json round-trips f64 exactly) and summary.
fn assert_same_run(reference: &Path, got: &Path, what: &str) {
    let (a, b) = (
        rows(&reference.join("metrics.jsonl")),
        rows(&got.join("metrics.jsonl")),
    );
    assert!(a.len() >= 2, "{what}: reference has {} lines", a.len());
    assert_eq!(a.len(), b.len(), "{what}: number of metrics lines");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "{what}: metrics line {i} differs");
    }
    assert_eq!(
        summary(reference),
        summary(got),
        "{what}: summary.json differs"
    );
}

#[test]
fn bit_identical_to_in_process_for_p_1_2_4_and_n_4_20() {
    let dir = tempfile::tempdir().unwrap();
    for n in [4usize, 20] {
        let cfg = config(
            dir.path(),
            &format!("n{n}"),
            &base(n, "ef21", "", "name = \"top-k\"\nk = 1", 12, ""),
        );
        let reference = dir.path().join(format!("ref-n{n}"));
        in_process(&cfg, &reference);
        for p in [1usize, 2, 4] {
            let out = dir.path().join(format!("mpi-n{n}-p{p}"));
            // P = 2 relies on detection (mpirun sets OMPI_COMM_WORLD_SIZE), the others on the flag
            let o = over_mpi(p, &cfg, &out, p != 2);
            ok(&o, &format!("mpirun -n {p}, n = {n}"));
            assert_same_run(&reference, &out, &format!("n = {n}, P = {p}"));
            let s: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                    .unwrap();
            assert_eq!(s["mpi"]["ranks"], p, "the run really used {p} ranks");
            // only rank 0 writes: the directory holds one run's files
            let t = rows(&out.join("transport.jsonl"));
            assert_eq!(t.len(), rows(&out.join("metrics.jsonl")).len());
        }
    }
}

/// Every preset, with its parameters; uneven blocks (n = 5 over P = 3).
/// A method added to the library without an entry here fails this test.
#[test]
fn every_method_is_bit_identical_over_mpi() {
    let methods: &[(&str, &str, &str, &str)] = &[
        ("gd", "", "name = \"identity\"", ""),
        (
            "dcgd",
            "",
            "name = \"rand-k\"\nk = 3\nshared_seed = true",
            "",
        ),
        ("ef14", "", "name = \"top-k\"\nk = 2", ""),
        ("ef21", "", "name = \"rand-k\"\nk = 2", ""),
        ("ef21-plus", "", "name = \"top-k\"\nk = 2", ""),
        ("sgd", "batch = 0.2", "name = \"identity\"", ""),
        ("ef21-sgd", "batch = 0.2", "name = \"top-k\"\nk = 2", ""),
        (
            "ef21-sgd-ideal",
            "batch = 0.2",
            "name = \"top-k\"\nk = 2",
            "",
        ),
        ("ef21-page", "batch = 0.1", "name = \"top-k\"\nk = 2", ""),
        (
            "ef21-pp",
            "participation = 0.5",
            "name = \"top-k\"\nk = 2",
            "",
        ),
        (
            "ef21-bc",
            "",
            "name = \"top-k\"\nk = 2",
            "[server_compressor]\nname = \"rand-k\"\nk = 8\nshared_seed = true\n",
        ),
        ("ef21-hb", "eta = 0.5", "name = \"top-k\"\nk = 2", ""),
        (
            "ef21-prox",
            "prox = { kind = \"l1\", lambda = 0.001 }",
            "name = \"top-k\"\nk = 2",
            "",
        ),
        ("ef14-sgd", "batch = 0.2", "name = \"top-k\"\nk = 2", ""),
        (
            "ef21-sgdm",
            "eta = 0.3\nbatch = 0.2",
            "name = \"top-k\"\nk = 2",
            "",
        ),
        (
            "ef21-sgd2m",
            "eta = 0.3\nbatch = 0.2",
            "name = \"top-k\"\nk = 2",
            "",
        ),
    ];
    for name in efkit_core::method::METHOD_NAMES {
        assert!(
            methods.iter().any(|m| m.0 == *name),
            "method `{name}` has no MPI determinism case: add it to this table"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, mx, comp, extra) in methods {
        // the server compressor table must come after [stop]'s keys
        let body = base(5, name, mx, comp, 6, "") + extra;
        let cfg = config(dir.path(), name, &body);
        let reference = dir.path().join(format!("ref-{name}"));
        in_process(&cfg, &reference);
        let out = dir.path().join(format!("mpi-{name}"));
        let o = over_mpi(3, &cfg, &out, true);
        ok(&o, &format!("{name} over MPI"));
        assert_same_run(&reference, &out, name);
    }
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("no number `{k}` in {v}"))
}

/// Per logged round, the bytes rank 0 passed to MPI against the bits the
/// metrics report: uplink payload bytes * 8 = total uplink wire bits, downlink
/// payload bytes * 8 * participants = the downlink wire bits received; the
/// control words are exactly 4 B per uplink and 32 B per command.
#[test]
fn mpi_moves_exactly_the_encoded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4usize;
    for (name, mx, extra) in [
        ("ef21", "", ""),
        ("ef21-pp", "participation = 0.5", ""),
        (
            "ef21-bc",
            "",
            "[server_compressor]\nname = \"top-k\"\nk = 5\n",
        ),
    ] {
        let cfg = config(
            dir.path(),
            name,
            &(base(n, name, mx, "name = \"top-k\"\nk = 1", 10, "") + extra),
        );
        let out = dir.path().join(format!("bytes-{name}"));
        let o = over_mpi(2, &cfg, &out, true);
        ok(&o, name);
        let m = rows(&out.join("metrics.jsonl"));
        let t: Vec<Value> = rows(&out.join("transport.jsonl"))
            .into_iter()
            .map(|v| v["traffic"].clone())
            .collect();
        assert_eq!(m.len(), t.len());
        let mut participations = 0.0;
        let mut varying_downlink = std::collections::BTreeSet::new();
        for r in 1..m.len() {
            let (m0, m1, t0, t1) = (&m[r - 1], &m[r], &t[r - 1], &t[r]);
            let k = num(m1, "participants");
            participations += k;
            // cumulative uplink: bytes through MPI_Gatherv = wire bits / 8, exactly
            assert_eq!(
                num(t1, "uplink_payload_bytes") * 8.0 / n as f64,
                num(m1, "bits_up_wire"),
                "{name} round {r}"
            );
            assert_eq!(
                num(t1, "uplink_messages"),
                participations,
                "{name} round {r}"
            );
            // this round's downlink: one MPI_Bcast of the encoded message, received by k workers
            let down = num(t1, "downlink_payload_bytes") - num(t0, "downlink_payload_bytes");
            assert!(down > 0.0);
            varying_downlink.insert(down as u64);
            assert_eq!(
                (num(m1, "bits_down_wire") - num(m0, "bits_down_wire")) * n as f64,
                down * 8.0 * k,
                "{name} round {r}"
            );
            // control: 4 B per uplink length, 32 B per command (STEP + EVAL per logged round)
            assert_eq!(num(t1, "length_bytes"), 4.0 * num(t1, "uplink_messages"));
            assert_eq!(
                num(t1, "header_bytes") - num(t0, "header_bytes"),
                64.0,
                "{name} round {r}"
            );
            assert_eq!(num(t1, "rounds"), num(m1, "round"));
        }
        if name == "ef21-pp" {
            assert!(
                participations < ((m.len() - 1) * n) as f64,
                "partial participation really happened"
            );
        }
        if name == "ef21-bc" {
            // round 0's dense estimate and the later Top-5 messages differ in size
            assert!(varying_downlink.len() >= 2, "{varying_downlink:?}");
        }
    }
}

/// A failing rank ends the job within 30 s with a clear error; rank 0's
/// metrics up to the failure are kept and equal the in-process run's.
#[test]
fn a_failing_rank_ends_the_job_quickly_and_keeps_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "fault",
        &base(4, "ef21", "", "name = \"top-k\"\nk = 1", 200, ""),
    );
    let reference = dir.path().join("ref");
    in_process(&cfg, &reference);
    let want = rows(&reference.join("metrics.jsonl"));
    let fail_at = 6u64;
    for (rank, mode, clue) in [
        (1, "abort", "signal 6"),
        (1, "panic", "panicked; aborting the whole MPI job"),
        (1, "hang", "no progress for"),
        (0, "exit", "exit"),
    ] {
        let out = dir.path().join(format!("fault-{rank}-{mode}"));
        let fault = format!("{rank}:{fail_at}:{mode}");
        let mut c = mpirun(
            2,
            &[("EFKIT_TEST_FAULT", &fault), ("EFKIT_MPI_TIMEOUT", "3")],
        );
        c.args(["-q", "run"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out)
            .args(["--backend", "mpi"]);
        let (o, took) = run_limited(c, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{mode}: the job must fail");
        assert!(took < Duration::from_secs(30), "{mode}: took {took:?}");
        assert!(err.contains("injected fault"), "{mode}: {err}");
        assert!(
            err.to_lowercase().contains(&clue.to_lowercase()),
            "{mode}: no `{clue}` in:\n{err}"
        );
        let got = rows(&out.join("metrics.jsonl"));
        assert_eq!(
            got.len() as u64,
            fail_at + 1,
            "{mode}: rounds 0..={fail_at} were logged before the fault"
        );
        assert_eq!(
            &got[..],
            &want[..got.len()],
            "{mode}: kept metrics equal the in-process run"
        );
    }
}

/// Bad input under MPI: a clear error naming the key, exit code 2, no hang.
#[test]
fn bad_input_under_mpi_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // more ranks than workers
    let cfg = config(
        dir.path(),
        "few",
        &base(2, "ef21", "", "name = \"top-k\"\nk = 1", 5, ""),
    );
    let o = over_mpi(3, &cfg, &dir.path().join("few"), true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("problem.workers") && err.contains("P = 3"),
        "{err}"
    );
    // an invalid value: every rank stops, rank 0 names the key
    let cfg = config(
        dir.path(),
        "bad",
        &base(4, "ef21", "", "name = \"top-k\"\nk = 1000", 5, ""),
    );
    let o = over_mpi(2, &cfg, &dir.path().join("bad"), true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("k"), "{err}");
    assert_eq!(
        err.matches("error:").count(),
        1,
        "only rank 0 reports: {err}"
    );
}
