//! `efkit repro NAME`: the papers' figures, end to end.
//!
//! Each reproduction runs a fixed set of configs (written out as `config.toml`
//! in one sub-directory per curve), then draws the figure and prints a table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Result;
use clap::ValueEnum;
use efkit_core::compress::CompressorSpec;
use efkit_core::method::MethodSpec;
use efkit_runtime::config::{
    Config, InitConfig, ProblemConfig, ProblemKind, SplitKind, StepConfig, StopConfig,
};

use crate::output;
use crate::plot::{self, Panel};
use crate::run::{run_config, RunOptions};

/// The reproducible figures.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReproName {
    /// EF21 paper (NeurIPS 2021): EF21, EF14, EF21+ and GD on four LibSVM sets, ||grad f||^2 vs bits/n.
    Ef21,
    /// EF21 B&W: EF21-PAGE vs EF21-SGD (batch 25%, 12.5%, 1.5%) on mushrooms, w8a, a9a.
    BwPage,
    /// EF21 B&W: EF21-PP (50%, 25%, 12.5%, 6.5% participation) vs EF21, n = 100.
    BwPp,
    /// EF21 B&W: EF21-BC (worker Top-2, server Top-2/4/8/16) vs EF21.
    BwBc,
    /// EF21 B&W: EF21-HB (eta 0.2, 0.4, 0.9) vs EF21.
    BwHb,
    /// EF21 B&W: EF21-Prox (l1) vs proximal gradient on a9a.
    BwProx,
    /// Figure 2: EF21-SGD's plateau under stochastic noise vs EF21-SGDM.
    SgdmDivergence,
    /// SGDM paper: MNIST multiclass logistic regression, B = 1 and 128.
    SgdmMnist,
    /// MLP on MNIST, n = 10, per-layer Top-1%: EF21-SGDM vs EF21-SGD, EF14-SGD, SGDM (needs feature `nn`).
    SgdmMlp,
    /// Safe-EF vs baselines on Neyman-Pearson classification (a9a, n = 16).
    SafeEf,
    /// Figure 3 analog: stochastic Safe-EF with n = 1..32 workers.
    SafeEfScaling,
}

/// Runs `jobs` on `threads` threads (a shared queue); results in job order.
pub fn par_map<J: Sync, R: Send>(jobs: &[J], threads: usize, f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs.len() {
                    break;
                }
                let r = f(&jobs[i]);
                slots.lock().expect("no panics while holding the lock")[i] = Some(r);
            });
        }
    });
    slots
        .into_inner()
        .expect("no poisoning")
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// Number of cores to run independent curves on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One curve of a figure.
pub struct Curve {
    /// Panel index.
    pub panel: usize,
    /// Legend label (also the sub-directory name).
    pub label: String,
    /// The run.
    pub config: Config,
}

/// Result of one curve.
pub struct CurveResult {
    /// Panel index.
    pub panel: usize,
    /// Label.
    pub label: String,
    /// Logged metrics.
    pub rows: Vec<serde_json::Value>,
    /// Final status.
    pub status: efkit_runtime::Status,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs every curve into `out/<panel>-<label>/`.
pub fn run_curves(
    curves: Vec<Curve>,
    out: &Path,
    force: bool,
    quiet: bool,
) -> Result<Vec<CurveResult>> {
    let total = curves.len();
    let mut res = Vec::new();
    for (i, c) in curves.into_iter().enumerate() {
        let dir = out.join(format!("p{}-{}", c.panel, slug(&c.label)));
        if !quiet {
            eprintln!("[{}/{}] {} -> {}", i + 1, total, c.label, dir.display());
        }
        let s = run_config(
            &c.config,
            &dir,
            &RunOptions {
                quiet,
                force,
                label: Some(c.label.clone()),
            },
        )?;
        let rows = plot::read_metrics(&dir.join("metrics.jsonl"))?;
        res.push(CurveResult {
            panel: c.panel,
            label: c.label,
            rows,
            status: s.status,
        });
    }
    Ok(res)
}

fn get(row: &serde_json::Value, k: &str) -> Option<f64> {
    row.get(k).and_then(|v| v.as_f64())
}

/// First value of `x_key` at which `y_key <= target`, if reached.
pub fn first_reach(
    rows: &[serde_json::Value],
    x_key: &str,
    y_key: &str,
    target: f64,
) -> Option<f64> {
    rows.iter()
        .find(|r| get(r, y_key).is_some_and(|y| y <= target))
        .and_then(|r| get(r, x_key))
}

/// Panels of `y_key` against `x_key`, one per panel title.
pub fn panels(
    results: &[CurveResult],
    titles: &[String],
    x_key: &str,
    x_label: &str,
    y_key: &str,
    y_label: &str,
    log_x: bool,
) -> Vec<Panel> {
    titles
        .iter()
        .enumerate()
        .map(|(p, t)| Panel {
            title: t.clone(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x,
            log_y: true,
            series: results
                .iter()
                .filter(|r| r.panel == p)
                .map(|r| plot::series_from_metrics(&r.rows, x_key, y_key, &r.label))
                .collect(),
        })
        .collect()
}

/// `efkit repro`.
pub fn cmd_repro(
    name: ReproName,
    out: Option<PathBuf>,
    force: bool,
    quick: bool,
    quiet: bool,
) -> Result<u8> {
    // the name as typed on the command line (`bw-page`, not `bwpage`)
    let typed = name.to_possible_value().map_or_else(
        || format!("{name:?}").to_lowercase(),
        |v| v.get_name().to_string(),
    );
    let out = out.unwrap_or_else(|| PathBuf::from("repro").join(typed));
    if out.join("README.md").exists() && !force {
        return Err(crate::UserError(format!(
            "{} already holds a reproduction; use --force to overwrite it or choose another --out",
            out.display()
        ))
        .into());
    }
    // an unfinished reproduction (no README yet) or other files: every repro
    // writes fixed file names, so anything already there could be overwritten
    let occupied = std::fs::read_dir(&out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !force {
        return Err(crate::UserError(format!(
            "{} is not empty; use --force to overwrite what a reproduction writes there, or choose another --out",
            out.display()
        ))
        .into());
    }
    output::ensure_writable_dir(&out, "output directory")?;
    match name {
        ReproName::Ef21 => repro_ef21(&out, force, quick, quiet),
        ReproName::BwPage => crate::repro_bw::bw_page(&out, force, quick, quiet),
        ReproName::BwPp => crate::repro_bw::bw_pp(&out, force, quick, quiet),
        ReproName::BwBc => crate::repro_bw::bw_bc(&out, force, quick, quiet),
        ReproName::BwHb => crate::repro_bw::bw_hb(&out, force, quick, quiet),
        ReproName::BwProx => crate::repro_bw::bw_prox(&out, force, quick, quiet),
        ReproName::SgdmDivergence => crate::repro_sgdm::sgdm_divergence(&out, force, quick, quiet),
        ReproName::SgdmMnist => crate::repro_sgdm::sgdm_mnist(&out, force, quick, quiet),
        #[cfg(feature = "nn")]
        ReproName::SgdmMlp => crate::repro_mlp::sgdm_mlp(&out, force, quick, quiet),
        #[cfg(not(feature = "nn"))]
        ReproName::SgdmMlp => Err(crate::UserError(
            "sgdm-mlp needs efkit built with the `nn` feature (cargo build --features nn)".into(),
        )
        .into()),
        ReproName::SafeEf => crate::repro_safe::safe_ef(&out, force, quick, quiet),
        ReproName::SafeEfScaling => crate::repro_safe::safe_ef_scaling(&out, force, quick, quiet),
    }
}

/// A logistic-regression config as the EF21 papers' code sets it up.
pub fn logreg_config(
    dataset: &str,
    workers: usize,
    method: &str,
    compressor: CompressorSpec,
    rule: &str,
    multiplier: f64,
    max_rounds: u64,
    tol: Option<f64>,
    log_every: u64,
) -> Config {
    Config {
        seed: 1,
        threads: 0,
        problem: ProblemConfig {
            kind: ProblemKind::Logistic,
            dataset: dataset.into(),
            workers,
            lambda: Some(0.1),
            split: SplitKind::Contiguous,
            features: None,
            dim: None,
            noise: None,
            sigma: None,
            rows: None,
            hidden: None,
            channels: None,
        },
        method: MethodSpec::named(method),
        compressor,
        server_compressor: None,
        step: StepConfig {
            rule: rule.into(),
            multiplier,
            value: None,
            mu: None,
        },
        init: InitConfig {
            kind: "gaussian".into(),
            std: 1.0,
            path: None,
        },
        stop: StopConfig {
            max_rounds,
            tol,
            time_limit: None,
            log_every,
            blowup: 1e6,
            checkpoint_every: None,
        },
    }
}

fn topk(k: usize) -> CompressorSpec {
    CompressorSpec {
        k: Some(k),
        ..CompressorSpec::named("top-k")
    }
}

fn repro_ef21(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    // The poster's fine-tuned (K, multiplier) pairs (algorithms.md §10.1).
    // (dataset, max rounds, [(method, k, multiplier)]); EF21+ uses the PL rule with mu = lambda
    // as the authors' EF21+ script does (algorithms.md §6 note); GD multiplies 1/L.
    let table: [(&str, u64, [(&str, usize, f64); 4]); 4] = [
        (
            "phishing",
            6000,
            [
                ("ef21", 1, 16.0),
                ("ef14", 1, 16.0),
                ("ef21-plus", 1, 256.0),
                ("gd", 0, 1.0),
            ],
        ),
        (
            "mushrooms",
            12000,
            [
                ("ef21", 2, 1024.0),
                ("ef14", 2, 64.0),
                ("ef21-plus", 1, 4096.0),
                ("gd", 0, 4.0),
            ],
        ),
        (
            "a9a",
            4000,
            [
                ("ef21", 4, 64.0),
                ("ef14", 4, 64.0),
                ("ef21-plus", 1, 2048.0),
                ("gd", 0, 2.0),
            ],
        ),
        (
            "w8a",
            4000,
            [
                ("ef21", 1, 64.0),
                ("ef14", 1, 32.0),
                ("ef21-plus", 1, 2048.0),
                ("gd", 0, 4.0),
            ],
        ),
    ];
    let tol = 1e-7;
    let mut curves = Vec::new();
    let mut titles = Vec::new();
    for (p, (ds, rounds, methods)) in table.iter().enumerate() {
        titles.push(format!("{ds}, n = 20"));
        let rounds = if quick { 50 } else { *rounds };
        for &(m, k, mult) in methods {
            let (comp, label) = if m == "gd" {
                (CompressorSpec::named("identity"), format!("GD {mult}x"))
            } else {
                (
                    topk(k),
                    format!(
                        "{} k={k} {mult}x",
                        match m {
                            "ef21" => "EF21",
                            "ef14" => "EF",
                            _ => "EF21+",
                        }
                    ),
                )
            };
            let rule = if m == "ef21-plus" {
                "theory-pl"
            } else {
                "theory"
            };
            let mut cfg = logreg_config(
                ds,
                20,
                m,
                comp,
                rule,
                mult,
                rounds,
                Some(tol),
                if quick { 5 } else { 10 },
            );
            if m == "ef21-plus" {
                cfg.step.mu = Some(0.1);
            }
            curves.push(Curve {
                panel: p,
                label,
                config: cfg,
            });
        }
    }
    let results = run_curves(curves, out, force, quiet)?;
    let paper = panels(
        &results,
        &titles,
        "bits_up_paper",
        "#bits/n (32 bits per value, indices free)",
        "grad_norm_sq",
        "||grad f(x)||^2",
        false,
    );
    let wire = panels(
        &results,
        &titles,
        "bits_up_wire",
        "#bits/n (wire: values + indices)",
        "grad_norm_sq",
        "||grad f(x)||^2",
        false,
    );
    let (svg, png) = plot::render(&paper, 2, &out.join("ef21_paper_bits"))?;
    let (svg2, png2) = plot::render(&wire, 2, &out.join("ef21_wire_bits"))?;
    let mut table = String::from("| dataset | method | status | bits/n to 1e-7 (paper) | bits/n to 1e-7 (wire) | final ||grad f||^2 |\n|---|---|---|---|---|---|\n");
    for r in &results {
        let fmt = |v: Option<f64>| v.map_or("not reached".to_string(), |b| format!("{b:.3e}"));
        let last = r
            .rows
            .last()
            .and_then(|l| get(l, "grad_norm_sq"))
            .unwrap_or(f64::NAN);
        table.push_str(&format!(
            "| {} | {} | {:?} | {} | {} | {:.3e} |\n",
            titles[r.panel],
            r.label,
            r.status,
            fmt(first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", tol)),
            fmt(first_reach(&r.rows, "bits_up_wire", "grad_norm_sq", tol)),
            last
        ));
    }
    let readme = format!(
        "# efkit repro ef21{}\n\nEF21 paper (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021), logistic regression with the nonconvex regularizer (lambda = 0.1), n = 20, contiguous split, x0 ~ N(0, I), poster's tuned (K, multiplier).\n\nFigures: `{}` / `{}` (x = bits in the papers' convention) and `{}` / `{}` (x = wire bits).\n\n{}",
        if quick { " (quick smoke run, NOT the paper's budget)" } else { "" },
        svg.display(), png.display(), svg2.display(), png2.display(), table
    );
    output::write_atomic(&out.join("README.md"), readme.as_bytes())?;
    if !quiet {
        println!("{table}");
    }
    println!("figure: {}", png.display());
    println!("figure: {}", png2.display());
    Ok(0)
}
