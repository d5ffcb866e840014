//! End-to-end smoke tests of `efkit repro sgdm-divergence` and
//! `efkit repro sgdm-mnist` in their `--quick` forms (the full budgets are
//! minutes long; their numbers are recorded in docs/sgdm.md).

use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("efkit-repro-sgdm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn efkit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_efkit"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn divergence_quick_writes_figure_table_and_data() {
    // without --out the reproduction goes to repro/<name as typed>
    let cwd = tmp("div");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = cwd.join("repro").join("sgdm-divergence");
    let o = Command::new(env!("CARGO_BIN_EXE_efkit"))
        .args(["repro", "sgdm-divergence", "--quick", "--quiet"])
        .current_dir(&cwd)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "README.md",
        "sgdm_divergence.png",
        "sgdm_divergence.svg",
        "sgdm_divergence_log.png",
        "curves.csv",
        "plateaus.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("quick smoke run"));
    assert!(readme.contains("| EF21-SGD-ideal | 1 |"));
    // quick: 11 curves (3 methods x 2 gammas at n = 1, EF21-SGD at n = 50, 500 and n = 50
    // with the second gamma, ideal and SGDM at n = 50) x 3 seeds, plus the header
    let plateaus = std::fs::read_to_string(out.join("plateaus.csv")).unwrap();
    assert_eq!(plateaus.lines().count(), 1 + 11 * 3);
    // every plateau is a finite positive number, and the ideal method sits near sigma^2/4
    for line in plateaus.lines().skip(1) {
        let v: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!(v.is_finite() && v > 0.0, "{line}");
        if line.starts_with("ef21-sgd-ideal,") {
            assert!((v - 0.0625).abs() < 0.02, "{line}");
        }
    }
    // an existing reproduction is not overwritten without --force (exit code 2)
    let again = efkit(&[
        "repro",
        "sgdm-divergence",
        "--quick",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&out);
}

/// About a minute in the test profile: run with `cargo test -- --ignored`.
#[test]
#[ignore]
fn mnist_quick_runs_every_method() {
    let out = tmp("mnist");
    let o = efkit(&[
        "repro",
        "sgdm-mnist",
        "--quick",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for m in ["EF14-SGD", "EF21-SGD", "EF21-SGD2M", "EF21-SGDM"] {
        assert!(
            readme.contains(&format!("| contiguous | 128 | {m} |")),
            "{m}"
        );
    }
    assert!(out.join("sgdm_mnist.png").is_file());
    assert!(out.join("curves/contiguous-B128-ef21-sgdm.jsonl").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

/// `repro sgdm-mlp --quick`: tuning and final runs of the four methods on a
/// small MNIST subset write the figure, the curves and a README whose table
/// has a row per method; per-layer Top-1% sends far fewer bits than the
/// uncompressed baseline.
#[test]
fn mlp_quick_writes_figure_curves_and_tables() {
    let out = tmp("mlp");
    let o = efkit(&[
        "repro",
        "sgdm-mlp",
        "--quick",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["README.md", "sgdm_mlp.png", "sgdm_mlp.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for label in [
        "| EF21-SGDM |",
        "| EF21-SGD |",
        "| EF14-SGD |",
        "| SGDM (uncompressed) |",
    ] {
        assert_eq!(readme.matches(label).count(), 2, "{label} in both tables");
    }
    let last = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join("curves").join(name)).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let sgdm = last("ef21-sgdm.jsonl");
    let dense = last("sgdm-uncompressed.jsonl");
    let acc = sgdm["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(sgdm["round"], 60);
    let ratio = dense["bits_up_wire"].as_f64().unwrap() / sgdm["bits_up_wire"].as_f64().unwrap();
    assert!(
        ratio > 10.0,
        "uncompressed / per-layer Top-1% bits = {ratio}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
