//! The MPI backend end to end: `mpirun -n P efkit run` against the in-process
//! run of the same config.
//!
//! - determinism: `metrics.jsonl` (seconds aside) and `summary.json` are
//!   bit-identical in-process and over MPI with P = 1, 2 and 4, for n = 4 and
//!   n = 20, and for every method of the library;
//! - traffic: the payload bytes passed to MPI are exactly the encoded messages
//!   whose bits the metrics report, round by round;
//! - failure: a rank that aborts, panics or hangs ends the job with a clear
//!   error within 30 s, and the metrics written so far are kept;
//! - the Safe-EF family (two-phase rounds): the shipped example bit-identical
//!   for P = 1, 2, 4, every method of the family on uneven blocks, the bytes
//!   of both phases against the metrics' bits;
//! - resumption: a run that lost a rank continues from its checkpoint over
//!   MPI (with another P) or in-process, and an in-process checkpoint
//!   continues over MPI, equal to the uninterrupted run (both families).
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
        ("ef21-w", "", "name = \"top-k\"\nk = 2", ""),
        ("ef21-w-sgd", "batch = 0.2", "name = \"rand-k\"\nk = 2", ""),
        (
            "ef21-w-pp",
            "participation = 0.5",
            "name = \"top-k\"\nk = 2",
            "",
        ),
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

// ---------------------------------------------------------------------------
// The Safe-EF family over MPI, and resumption over MPI
// ---------------------------------------------------------------------------

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// `efkit ARGS` in one process.
fn in_process_args(args: &[&str], what: &str) {
    let mut c = Command::new(bin());
    c.arg("-q").args(args);
    let (o, _) = run_limited(c, Duration::from_secs(120));
    ok(&o, what);
}

/// `mpirun -n p efkit ARGS` (with `env` exported to the ranks).
fn mpi_args(p: usize, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = mpirun(p, env);
    c.arg("-q").args(args);
    run_limited(c, Duration::from_secs(120)).0
}

/// `run CONFIG --out OUT ARGS...` as strings.
fn run_args<'a>(cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    v.extend_from_slice(extra);
    v
}

const EXAMPLE_SETS: [&str; 4] = ["--set", "stop.max_rounds=60", "--set", "stop.log_every=5"];

/// The shipped Safe-EF example (a9a, n = 16, Top-1%, two-phase rounds) over
/// MPI with P = 1, 2 and 4: metrics and summary bit-identical to in-process.
#[test]
fn safe_ef_example_is_bit_identical_for_p_1_2_4() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = example("safe-ef-np-a9a.toml");
    let reference = dir.path().join("ref");
    let mut a = run_args(&cfg, &reference, &EXAMPLE_SETS);
    a.extend(["--backend", "in-process"]);
    in_process_args(&a, "in-process Safe-EF run");
    for p in [1usize, 2, 4] {
        let out = dir.path().join(format!("mpi-p{p}"));
        let mut a = run_args(&cfg, &out, &EXAMPLE_SETS);
        a.extend(["--backend", "mpi"]);
        let o = mpi_args(p, &[], &a);
        ok(&o, &format!("Safe-EF, mpirun -n {p}"));
        assert_same_run(&reference, &out, &format!("Safe-EF, P = {p}"));
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(s["mpi"]["ranks"], p, "the run really used {p} ranks");
        assert_eq!(s["setup"]["n"], 16);
        assert_eq!(
            rows(&out.join("transport.jsonl")).len(),
            rows(&out.join("metrics.jsonl")).len()
        );
    }
}

/// A Safe-EF config on mushrooms (n workers) with a method block and extras.
fn safe_base(n: usize, method_block: &str, extra: &str, rounds: u64, log_every: u64) -> String {
    format!(
        "seed = 7\nthreads = 1\n[problem]\nkind = \"neyman-pearson\"\ndataset = \"mushrooms\"\nworkers = {n}\nloss = \"hinge\"\ntau = 0.4\nradius = 3.0\n[method]\n{method_block}\n[theory]\nrounds = 100\n[stop]\nmax_rounds = {rounds}\nlog_every = {log_every}\n{extra}"
    )
}

/// Every method of the Safe-EF family (switching with EF14, EF21 and no
/// feedback, uncompressed, primal-dual; exact and minibatch subgradients,
/// with and without server compression) on uneven blocks (n = 5 over P = 3).
/// A method added to the family without an entry here fails this test.
#[test]
fn every_safe_method_is_bit_identical_over_mpi() {
    let topk = "[compressor]\nname = \"top-k\"\nratio = 0.05\n";
    let server = "[server_compressor]\nname = \"top-k\"\nratio = 0.3\n";
    let cases: &[(&str, &str, String)] = &[
        (
            "safe-ef",
            "step_multiplier = 16.0\nthreshold_multiplier = 0.0\nbatch = 16",
            format!("{topk}{server}"),
        ),
        (
            "parallel-sgd",
            "step_multiplier = 4.0\nthreshold_multiplier = 0.0",
            String::new(),
        ),
        (
            "compressed-sgd",
            "step_multiplier = 16.0\nthreshold = 0.05",
            topk.to_string(),
        ),
        (
            "ef21-switching",
            "step_multiplier = 16.0\nthreshold_multiplier = 0.0",
            format!("{topk}{server}"),
        ),
        (
            "primal-dual",
            "step_multiplier = 8.0\nbatch = 8",
            format!("{topk}{server}"),
        ),
    ];
    for name in efkit_core::safe::SAFE_METHOD_NAMES {
        assert!(
            cases.iter().any(|c| c.0 == *name),
            "Safe-EF method `{name}` has no MPI determinism case: add it to this table"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, mx, extra) in cases {
        let block = format!("name = \"{name}\"\n{mx}");
        // the compressor tables come after [stop]'s keys
        let cfg = config(dir.path(), name, &safe_base(5, &block, extra, 12, 3));
        let reference = dir.path().join(format!("ref-{name}"));
        in_process(&cfg, &reference);
        let out = dir.path().join(format!("mpi-{name}"));
        let o = over_mpi(3, &cfg, &out, true);
        ok(&o, &format!("{name} over MPI"));
        assert_same_run(&reference, &out, name);
        if *name != "primal-dual" {
            // both kinds of steps occurred, so both branches of phase 2 ran
            let last = rows(&reference.join("metrics.jsonl")).pop().unwrap();
            let (p, r) = (num(&last, "productive_rounds"), num(&last, "round"));
            assert!(p > 0.0 && p < r, "{name}: productive {p} of {r}");
        }
    }
}

/// Per logged round, the bytes rank 0 passed to MPI against the bits the
/// Safe-EF metrics report: uplink payload bytes * 8 = the total uplink wire
/// bits (constraint values and vectors), downlink payload bytes * 8 = the
/// downlink wire bits every worker received (flags and models); control: 4 B
/// per uplink, 32 B per command (STEP, one DOWN per downlink, EVAL).
#[test]
fn safe_ef_mpi_moves_exactly_the_encoded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4usize;
    let comp = "[compressor]\nname = \"top-k\"\nratio = 0.05\n[server_compressor]\nname = \"rand-k\"\nratio = 0.2\n";
    for (name, mx, phases) in [
        (
            "safe-ef",
            "step_multiplier = 8.0\nthreshold_multiplier = 0.0",
            2.0,
        ),
        ("primal-dual", "step_multiplier = 8.0", 1.0),
    ] {
        let block = format!("name = \"{name}\"\n{mx}");
        let cfg = config(
            dir.path(),
            &format!("bytes-{name}"),
            &safe_base(n, &block, comp, 10, 1),
        );
        let out = dir.path().join(format!("bytes-{name}"));
        let o = over_mpi(2, &cfg, &out, true);
        ok(&o, name);
        let m = rows(&out.join("metrics.jsonl"));
        let t: Vec<Value> = rows(&out.join("transport.jsonl"))
            .into_iter()
            .map(|v| v["traffic"].clone())
            .collect();
        assert_eq!(m.len(), 11);
        assert_eq!(m.len(), t.len());
        let mut sizes = std::collections::BTreeSet::new();
        for r in 1..m.len() {
            let (m1, t0, t1) = (&m[r], &t[r - 1], &t[r]);
            assert_eq!(num(t1, "rounds"), num(m1, "round"));
            assert_eq!(
                num(t1, "uplink_payload_bytes") * 8.0 / n as f64,
                num(m1, "bits_up_wire"),
                "{name} round {r}"
            );
            assert_eq!(
                num(t1, "downlink_payload_bytes") * 8.0,
                num(m1, "bits_down_wire"),
                "{name} round {r}"
            );
            assert_eq!(
                num(t1, "uplink_messages"),
                phases * n as f64 * r as f64,
                "{name} round {r}"
            );
            assert_eq!(num(t1, "length_bytes"), 4.0 * num(t1, "uplink_messages"));
            assert_eq!(
                num(t1, "header_bytes") - num(t0, "header_bytes"),
                32.0 * (1.0 + phases + 1.0),
                "{name} round {r}"
            );
            sizes.insert(
                (num(t1, "downlink_payload_bytes") - num(t0, "downlink_payload_bytes")) as u64,
            );
        }
        // Rand-K of the model update: the message size is fixed, and the
        // round's downlinks were really broadcast
        assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
    }
}

/// The metrics of `dir` without seconds, as a list.
fn metric_rows(dir: &Path) -> Vec<Value> {
    rows(&dir.join("metrics.jsonl"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A Safe-EF run over MPI (P = 2) whose rank 1 dies at round 47 leaves its
/// checkpoint of round 40; `mpirun -n 4 efkit resume DIR --backend mpi`
/// continues it, and so does `efkit resume DIR` in-process; an in-process
/// checkpoint is continued over MPI. Every continuation equals the
/// uninterrupted in-process run bit for bit.
#[test]
fn safe_ef_resume_over_mpi_and_across_backends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = example("safe-ef-np-a9a.toml");
    let reference = dir.path().join("ref");
    let mut a = run_args(&cfg, &reference, &EXAMPLE_SETS);
    a.extend(["--backend", "in-process"]);
    in_process_args(&a, "in-process reference");
    let want = metric_rows(&reference);
    assert_eq!(want.len(), 13);
    // an MPI run that loses a rank
    let killed = dir.path().join("killed");
    let mut a = run_args(&cfg, &killed, &EXAMPLE_SETS);
    a.extend(["--backend", "mpi", "--checkpoint-every", "20"]);
    let o = mpi_args(
        2,
        &[
            ("EFKIT_TEST_FAULT", "1:47:abort"),
            ("EFKIT_MPI_TIMEOUT", "5"),
        ],
        &a,
    );
    assert!(!o.status.success(), "the job must fail");
    let partial = metric_rows(&killed);
    assert_eq!(partial.len(), 10, "rounds 0..=45 logged before the fault");
    assert_eq!(&partial[..], &want[..partial.len()]);
    let ck = std::fs::read_to_string(killed.join("checkpoint.json")).unwrap();
    assert!(ck.contains("\"round\":40"), "the checkpoint of round 40");
    // MPI -> in-process
    let in_proc = dir.path().join("killed-in-process");
    copy_dir(&killed, &in_proc);
    in_process_args(
        &[
            "resume",
            in_proc.to_str().unwrap(),
            "--backend",
            "in-process",
        ],
        "in-process resume of an MPI checkpoint",
    );
    assert_eq!(
        metric_rows(&in_proc),
        want,
        "MPI checkpoint resumed in-process"
    );
    // MPI (P = 2) -> MPI (P = 4)
    let o = mpi_args(
        4,
        &[],
        &["resume", killed.to_str().unwrap(), "--backend", "mpi"],
    );
    ok(&o, "resume over MPI");
    assert_eq!(
        metric_rows(&killed),
        want,
        "MPI checkpoint resumed over MPI"
    );
    assert_eq!(summary(&killed), summary(&reference));
    let t = rows(&killed.join("transport.jsonl"));
    assert_eq!(t.len(), want.len());
    assert!(t.iter().skip(9).all(|l| l["resumed_from"] == 40), "{t:?}");
    // in-process -> MPI: the last checkpoint (round 50) of a run killed
    // after it (a finished run without its summary.json: an ended run is not
    // resumed); the lines of rounds 55 and 60 are redone over MPI
    let ip = dir.path().join("in-process-ckpt");
    let mut a = run_args(&cfg, &ip, &EXAMPLE_SETS);
    a.extend(["--backend", "in-process", "--checkpoint-every", "25"]);
    in_process_args(&a, "in-process run with checkpoints");
    std::fs::remove_file(ip.join("summary.json")).unwrap();
    let o = mpi_args(2, &[], &["resume", ip.to_str().unwrap()]);
    ok(
        &o,
        "resume of an in-process checkpoint over MPI (backend detected)",
    );
    assert_eq!(
        metric_rows(&ip),
        want,
        "in-process checkpoint resumed over MPI"
    );
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(ip.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["mpi"]["ranks"], 2);
    assert_eq!(s["mpi"]["resumed_from"], 50);
    // no checkpoint: a clear error on rank 0, exit code 2 on every rank
    let o = mpi_args(
        2,
        &[],
        &["resume", reference.to_str().unwrap(), "--backend", "mpi"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("has no checkpoint"), "{err}");
}

/// The EF21 family resumes over MPI too: rank 1 dies at round 9 (checkpoint
/// of round 8), three ranks continue; the metrics equal the in-process run.
#[test]
fn ef21_resume_over_mpi_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "ef21",
        &base(
            5,
            "ef21-pp",
            "participation = 0.6",
            "name = \"top-k\"\nk = 2",
            16,
            "",
        ),
    );
    let reference = dir.path().join("ref");
    in_process(&cfg, &reference);
    let killed = dir.path().join("killed");
    let o = mpi_args(
        2,
        &[
            ("EFKIT_TEST_FAULT", "1:9:abort"),
            ("EFKIT_MPI_TIMEOUT", "5"),
        ],
        &run_args(
            &cfg,
            &killed,
            &["--backend", "mpi", "--checkpoint-every", "4"],
        ),
    );
    assert!(!o.status.success(), "the job must fail");
    assert_eq!(metric_rows(&killed).len(), 10);
    let o = mpi_args(3, &[], &["resume", killed.to_str().unwrap()]);
    ok(&o, "EF21-PP resume over MPI");
    assert_eq!(metric_rows(&killed), metric_rows(&reference));
    assert_eq!(summary(&killed), summary(&reference));
}

/// The problems built outside the LibSVM path (noisy quadratic, MNIST
/// multiclass logistic regression, the candle MLP with per-layer Top-K) go
/// through the same transport: bit-identical to in-process for P = 2.
#[test]
fn synthetic_mnist_and_network_problems_are_bit_identical_over_mpi() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "noisy-quadratic",
            "[problem]\nkind = \"noisy-quadratic\"\nworkers = 4\ndim = 20\nnoise = \"asymmetric\"\nsigma = 1.0\n\
             [method]\nname = \"ef21-sgdm\"\neta = 0.2\nbatch = 1\n[compressor]\nname = \"top-k\"\nk = 1\n",
        ),
        (
            "mnist-logistic",
            "[problem]\nkind = \"mnist-logistic\"\nworkers = 4\nrows = 400\n\
             [method]\nname = \"ef21-sgd\"\nbatch = 16\n[compressor]\nname = \"top-k\"\nk = 50\n",
        ),
        (
            "mnist-mlp",
            "[problem]\nkind = \"mnist-mlp\"\nworkers = 4\nrows = 400\nhidden = [8]\n\
             [method]\nname = \"ef21-sgdm\"\neta = 0.1\nbatch = 16\ninit_batch = 16\n\
             [compressor]\nname = \"top-k\"\nratio = 0.05\nper_layer = true\n[init]\nkind = \"layers\"\n",
        ),
        (
            "mnist-cnn",
            "[problem]\nkind = \"mnist-cnn\"\nworkers = 4\nrows = 400\nchannels = [2, 4]\nhidden = [8]\n\
             [method]\nname = \"ef21-sgdm\"\neta = 0.1\nbatch = 16\ninit_batch = 16\n\
             [compressor]\nname = \"top-k\"\nratio = 0.05\nper_layer = true\n[init]\nkind = \"layers\"\n",
        ),
    ];
    for (name, problem) in cases {
        let body = format!(
            "seed = 5\nthreads = 1\n{problem}[step]\nrule = \"absolute\"\nvalue = 0.1\n[stop]\nmax_rounds = 6\nlog_every = 2\n"
        );
        let cfg = config(dir.path(), name, &body);
        let reference = dir.path().join(format!("ref-{name}"));
        in_process(&cfg, &reference);
        let out = dir.path().join(format!("mpi-{name}"));
        let o = over_mpi(2, &cfg, &out, true);
        ok(&o, &format!("{name} over MPI"));
        assert_same_run(&reference, &out, name);
    }
}

/// The shipped least-squares example (the PL theory step with an explicit
/// `step.mu`) over MPI with P = 2: the other ranks take rank 0's step as an
/// absolute one without the theory-only keys, and the run is bit-identical
/// to in-process.
#[test]
fn theory_pl_example_is_bit_identical_over_mpi() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = example("least-squares-w8a.toml");
    let reference = dir.path().join("ref");
    in_process_args(
        &run_args(
            &cfg,
            &reference,
            &[&EXAMPLE_SETS[..], &["--backend", "in-process"]].concat(),
        ),
        "in-process least squares",
    );
    let got = dir.path().join("mpi");
    let o = mpi_args(
        2,
        &[],
        &run_args(
            &cfg,
            &got,
            &[&EXAMPLE_SETS[..], &["--backend", "mpi"]].concat(),
        ),
    );
    ok(&o, "least squares over MPI");
    assert_same_run(&reference, &got, "least squares, P = 2");
}
