//! Safe-EF checkpoints: a run restored from any checkpoint (written to disk
//! and read back) continues bit for bit like the uninterrupted run, for every
//! method of the family (switching and primal-dual, EF14, EF21 and no
//! feedback, stochastic minibatches, server compression); an interrupted run
//! leaves a checkpoint of its last round; mismatched states are refused.

use efkit_runtime::checkpoint::{self, SafeCheckpoint};
use efkit_runtime::safe::{prepare_safe, safe_stop, SafeClusterState, SafeConfig, SafeMetrics};
use efkit_runtime::{Control, Status};

fn config(method: &str, extra: &str, server: &str) -> SafeConfig {
    let text = format!(
        r#"seed = 3
threads = 2
[problem]
kind = "neyman-pearson"
dataset = "mushrooms"
workers = 5
loss = "hinge"
tau = 0.4
radius = 3.0
[method]
name = "{method}"
step_multiplier = 16.0
{extra}
[compressor]
name = "{comp}"
{ratio}
{server}
[theory]
rounds = 400
[stop]
max_rounds = 40
log_every = 3
checkpoint_every = 7
"#,
        comp = if method == "parallel-sgd" {
            "identity"
        } else {
            "top-k"
        },
        ratio = if method == "parallel-sgd" {
            ""
        } else {
            "ratio = 0.05"
        },
    );
    SafeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{method}: {e}"))
}

type Run = (Vec<SafeMetrics>, Vec<SafeClusterState>, Status);

/// Runs `cfg` (from `resume` if given), zeroing the seconds; `stop_at`
/// interrupts after that logged round.
fn run(cfg: &SafeConfig, resume: Option<SafeClusterState>, stop_at: Option<u64>) -> Run {
    let mut p = prepare_safe(cfg).unwrap();
    let elapsed = resume.as_ref().map(|s| s.elapsed);
    if let Some(s) = resume {
        p.cluster.restore(s).unwrap();
    }
    let mut rows = Vec::new();
    let mut ckpts = Vec::new();
    let s = p.cluster.run_with(
        &safe_stop(cfg),
        elapsed,
        cfg.stop.checkpoint_every,
        |m| {
            let mut m = m.clone();
            m.seconds = 0.0;
            let stop = stop_at == Some(m.round);
            rows.push(m);
            if stop {
                Control::Interrupt
            } else {
                Control::Continue
            }
        },
        |st| {
            ckpts.push(st.clone());
            Ok(())
        },
    );
    (rows, ckpts, s.status)
}

/// Through the file format (checksum, JSON with exact f64 round trip).
fn via_file(s: &SafeClusterState, dir: &std::path::Path) -> SafeClusterState {
    let path = dir.join(checkpoint::CHECKPOINT_FILE);
    checkpoint::write_safe(&path, &SafeCheckpoint { safe: s.clone() }).unwrap();
    checkpoint::read_safe(&path).unwrap().safe
}

#[test]
fn resumed_runs_equal_the_uninterrupted_run_for_every_method() {
    let dir = tempfile_dir("every-method");
    let cases = [
        ("safe-ef", "threshold_multiplier = 0.0", ""),
        (
            "safe-ef",
            "threshold_multiplier = 0.0\nbatch = 16",
            "[server_compressor]\nname = \"top-k\"\nratio = 0.3\n",
        ),
        ("parallel-sgd", "threshold_multiplier = 0.0", ""),
        ("compressed-sgd", "threshold = 0.05", ""),
        ("ef21-switching", "threshold_multiplier = 0.0", ""),
        ("primal-dual", "dual_step_multiplier = 2.0", ""),
        (
            "primal-dual",
            "batch = 8",
            "[server_compressor]\nname = \"top-k\"\nratio = 0.5\n",
        ),
    ];
    for (method, extra, server) in cases {
        let what = format!("{method} {extra} {server}");
        let cfg = config(method, extra, server);
        let (full, ckpts, status) = run(&cfg, None, None);
        assert_eq!(status, Status::MaxRounds, "{what}");
        // checkpoints at rounds 7, 14, ..., 35
        let rounds: Vec<u64> = ckpts.iter().map(|c| c.server.round).collect();
        assert_eq!(rounds, vec![7, 14, 21, 28, 35], "{what}");
        // the switch really happened both ways (switching rules)
        if method != "primal-dual" {
            let last = full.last().unwrap();
            assert!(
                last.productive_rounds > 0 && last.productive_rounds < last.round,
                "{what}: productive {} of {}",
                last.productive_rounds,
                last.round
            );
        }
        for ck in &ckpts {
            let r = ck.server.round;
            let (tail, _, status) = run(&cfg, Some(via_file(ck, &dir)), None);
            assert_eq!(status, Status::MaxRounds);
            let mut joined: Vec<SafeMetrics> =
                full.iter().filter(|m| m.round <= r).cloned().collect();
            joined.extend(tail);
            assert_eq!(joined, full, "{what}: resumed from round {r}");
        }
    }
}

#[test]
fn an_interrupted_run_checkpoints_its_last_round_and_resumes() {
    let dir = tempfile_dir("interrupt");
    let cfg = config(
        "safe-ef",
        "threshold_multiplier = 0.0",
        "[server_compressor]\nname = \"top-k\"\nratio = 0.3\n",
    );
    let (full, _, _) = run(&cfg, None, None);
    for stop in [0u64, 12] {
        let (rows, ckpts, status) = run(&cfg, None, Some(stop));
        assert_eq!(status, Status::Interrupted);
        let last = ckpts.last().unwrap();
        assert_eq!(last.server.round, stop, "the interruption's checkpoint");
        let (tail, _, _) = run(&cfg, Some(via_file(last, &dir)), None);
        let mut joined = rows;
        joined.extend(tail);
        assert_eq!(joined, full, "interrupted at {stop}");
    }
}

#[test]
fn mismatched_states_are_refused() {
    let cfg = config("safe-ef", "threshold_multiplier = 0.0", "");
    let (_, ckpts, _) = run(&cfg, None, None);
    let good = ckpts[0].clone();
    let mut p = prepare_safe(&cfg).unwrap();
    let mut fewer = good.clone();
    fewer.workers.pop();
    assert!(p.cluster.restore(fewer).unwrap_err().contains("workers"));
    let mut short = good.clone();
    short.server.avg_sum.pop();
    assert!(p.cluster.restore(short).unwrap_err().contains("dimensions"));
    let mut swapped = good.clone();
    swapped.workers.swap(0, 1);
    assert!(p.cluster.restore(swapped).unwrap_err().contains("id"));
    p.cluster.restore(good.clone()).unwrap();
    assert_eq!(p.cluster.snapshot(good.elapsed), good);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("efkit-safe-resume-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
