//! `efkit repro bw-*`: the experiments of "EF21 with Bells & Whistles"
//! (Fatkhullin, Sokolov, Gorbunov, Li, Richtarik 2021; algorithms.md §6, §10.2).
//!
//! All five use logistic regression with the nonconvex regularizer
//! (lambda = 0.1), a contiguous split, x^0 ~ N(0, I) and step sizes that are
//! multiples of EF21's theoretical step gamma = 1/(L + Ltilde sqrt(beta/theta))
//! (the papers' tuning protocol):
//!
//! | repro | methods | x axes |
//! |---|---|---|
//! | `bw-page` | EF21-PAGE vs EF21-SGD, batch 25%, 12.5%, 1.5% of N_i | epochs, bits/n |
//! | `bw-pp` | EF21-PP (50%, 25%, 12.5%, 6.5% of n = 100 clients) vs EF21 | rounds, bits/n (averaged over all clients and per participant) |
//! | `bw-bc` | EF21-BC (worker Top-2, server Top-2/4/8/16) vs EF21 | uplink bits/n, uplink + downlink bits/n |
//! | `bw-hb` | EF21-HB (eta 0.2, 0.4, 0.9) vs EF21 | rounds, bits/n |
//! | `bw-prox` | EF21-Prox (l1) vs proximal GD (= EF21-Prox with the identity compressor) | bits/n |
//!
//! Every reproduction writes one sub-directory per curve (config, metrics,
//! summary), the figures (SVG + PNG) and `README.md` with a table computed from
//! the logged metrics; the finding sentences are computed from the same numbers.

use std::path::Path;

use anyhow::Result;
use efkit_core::compress::{CompressorSpec, ValueFormat};
use efkit_core::method::{BatchSize, Regularizer};
use efkit_runtime::config::Config;
use efkit_runtime::{setup, Control};

use crate::output;
use crate::plot::{self, Panel, Series};
use crate::repro::{first_reach, logreg_config, panels, run_curves, Curve, CurveResult};

/// The tolerance on ||grad f||^2 (or the squared gradient mapping) used by all
/// five reproductions, as in `efkit repro ef21`.
pub const TOL: f64 = 1e-7;

fn topk(k: usize) -> CompressorSpec {
    CompressorSpec {
        k: Some(k),
        ..CompressorSpec::named("top-k")
    }
}

fn get(row: &serde_json::Value, k: &str) -> Option<f64> {
    row.get(k).and_then(|v| v.as_f64())
}

fn last(rows: &[serde_json::Value], k: &str) -> f64 {
    rows.last().and_then(|r| get(r, k)).unwrap_or(f64::NAN)
}

fn min_of(rows: &[serde_json::Value], k: &str) -> f64 {
    rows.iter()
        .filter_map(|r| get(r, k))
        .fold(f64::INFINITY, f64::min)
}

fn fmt_e(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3e}")
    } else {
        format!("{v}")
    }
}

fn fmt_reach(v: Option<f64>) -> String {
    v.map_or_else(|| "not reached".to_string(), fmt_e)
}

fn fmt_int(v: Option<f64>) -> String {
    v.map_or_else(|| "not reached".to_string(), |r| format!("{r:.0}"))
}

/// `y_key` against the sum of `x_keys` (e.g. uplink + downlink bits).
fn series_sum(rows: &[serde_json::Value], x_keys: &[&str], y_key: &str, label: &str) -> Series {
    let mut s = Series {
        label: label.to_string(),
        ..Series::default()
    };
    for r in rows {
        let x: Option<f64> = x_keys.iter().map(|k| get(r, k)).sum();
        if let (Some(x), Some(y)) = (x, get(r, y_key)) {
            s.x.push(x);
            s.y.push(y);
        }
    }
    s
}

/// First value of the sum of `x_keys` at which `y_key <= target`.
fn first_reach_sum(
    rows: &[serde_json::Value],
    x_keys: &[&str],
    y_key: &str,
    target: f64,
) -> Option<f64> {
    rows.iter()
        .find(|r| get(r, y_key).is_some_and(|y| y <= target))
        .and_then(|r| x_keys.iter().map(|k| get(r, k)).sum())
}

/// One panel per title, plotting the sum of `x_keys` on the x axis.
fn panels_sum(
    results: &[CurveResult],
    titles: &[String],
    x_keys: &[&str],
    x_label: &str,
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
                .map(|r| series_sum(&r.rows, x_keys, "grad_norm_sq", &r.label))
                .collect(),
        })
        .collect()
}

/// Interleaves per-dataset panel lists so that each dataset is one row of the grid.
fn by_row(groups: Vec<Vec<Panel>>) -> Vec<Panel> {
    let n = groups.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for i in 0..n {
        for g in &groups {
            out.push(g[i].clone());
        }
    }
    out
}

/// Writes README.md and prints the table and the figure paths.
fn finish(
    out: &Path,
    readme: &str,
    table: &str,
    figures: &[(std::path::PathBuf, std::path::PathBuf)],
    quiet: bool,
) -> Result<u8> {
    output::write_atomic(&out.join("README.md"), readme.as_bytes())?;
    if !quiet {
        println!("{table}");
    }
    for (_, png) in figures {
        println!("figure: {}", png.display());
    }
    Ok(0)
}

fn figure_list(figures: &[(std::path::PathBuf, std::path::PathBuf)], out: &Path) -> String {
    figures
        .iter()
        .map(|(svg, png)| {
            let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).display().to_string();
            format!("- `{}` / `{}`", rel(svg), rel(png))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn quick_note(quick: bool) -> &'static str {
    if quick {
        " (quick smoke run, NOT the reproduction's budget)"
    } else {
        ""
    }
}

fn status_str(r: &CurveResult) -> String {
    format!("{:?}", r.status)
}

// ---------------------------------------------------------------------------
// bw-page

/// Epochs of one round: SGD computes `frac` of the data; PAGE computes the full
/// gradient with probability p = frac/(1 + frac) (the default, mean_i tau_i/(tau_i + N_i))
/// and otherwise the minibatch at two points.
fn epochs_per_round(page: bool, frac: f64) -> f64 {
    if page {
        let p = frac / (1.0 + frac);
        p + (1.0 - p) * 2.0 * frac
    } else {
        frac
    }
}

/// EF21-PAGE vs EF21-SGD (B&W Experiment 1; algorithms.md §10.2).
pub fn bw_page(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    // (dataset, epoch budget, SGD multipliers, PAGE multipliers), batches 25%, 12.5%, 1.5%:
    // the poster's Top-2 legends.
    let fracs = [0.25, 0.125, 0.015];
    let table: [(&str, f64, [f64; 3], [f64; 3]); 3] = [
        (
            "mushrooms",
            2500.0,
            [2048.0, 2048.0, 128.0],
            [512.0, 1024.0, 1024.0],
        ),
        ("w8a", 2500.0, [2048.0, 2048.0, 512.0], [64.0, 64.0, 64.0]),
        ("a9a", 2500.0, [128.0, 64.0, 512.0], [64.0, 64.0, 128.0]),
    ];
    let mut curves = Vec::new();
    let mut titles = Vec::new();
    let mut budgets = Vec::new();
    for (p, (ds, epochs, sgd, page)) in table.iter().enumerate() {
        titles.push(format!("{ds}, n = 20, Top-2"));
        let epochs = if quick { 3.0 } else { *epochs };
        budgets.push(epochs);
        for (is_page, mults) in [(false, sgd), (true, page)] {
            for (&frac, &mult) in fracs.iter().zip(mults.iter()) {
                let cost = epochs_per_round(is_page, frac);
                let rounds = (epochs / cost).ceil() as u64;
                // about one evaluation of ||grad f||^2 per epoch (as the authors' code)
                let log_every = ((1.0 / cost).floor() as u64).max(1);
                let method = if is_page { "ef21-page" } else { "ef21-sgd" };
                let mut cfg = logreg_config(
                    ds,
                    20,
                    method,
                    topk(2),
                    "theory",
                    mult,
                    rounds,
                    Some(TOL),
                    log_every,
                );
                cfg.method.batch = Some(BatchSize::Fraction(frac));
                let label = format!(
                    "{} {}% {}x",
                    if is_page { "PAGE" } else { "SGD" },
                    frac * 100.0,
                    mult
                );
                curves.push(Curve {
                    panel: p,
                    label,
                    config: cfg,
                });
            }
        }
    }
    let results = run_curves(curves, out, force, quiet)?;
    let y = "||grad f(x)||^2";
    let ep = panels(
        &results,
        &titles,
        "epochs",
        "epochs (log)",
        "grad_norm_sq",
        y,
        true,
    );
    let bits = panels(
        &results,
        &titles,
        "bits_up_paper",
        "#bits/n (C->S, 32 bits per value, log)",
        "grad_norm_sq",
        y,
        true,
    );
    let fig = plot::render(&by_row(vec![ep, bits]), 2, &out.join("page_vs_sgd"))?;
    let mut t = format!(
        "| dataset | curve | status | rounds | epochs run | final \\|\\|grad f\\|\\|^2 | min \\|\\|grad f\\|\\|^2 | epochs to {TOL:e} | bits/n to {TOL:e} (paper) |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let (mut page_reached, mut sgd_reached, mut page_n, mut sgd_n) = (0, 0, 0, 0);
    let mut sgd_min = f64::INFINITY;
    let mut page_worst_epochs: f64 = 0.0;
    for r in &results {
        let is_page = r.label.starts_with("PAGE");
        let reach = first_reach(&r.rows, "epochs", "grad_norm_sq", TOL);
        if is_page {
            page_n += 1;
            if let Some(e) = reach {
                page_reached += 1;
                page_worst_epochs = page_worst_epochs.max(e);
            }
        } else {
            sgd_n += 1;
            sgd_reached += usize::from(reach.is_some());
            sgd_min = sgd_min.min(min_of(&r.rows, "grad_norm_sq"));
        }
        t.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |\n",
            titles[r.panel],
            r.label,
            status_str(r),
            last(&r.rows, "round"),
            last(&r.rows, "epochs"),
            fmt_e(last(&r.rows, "grad_norm_sq")),
            fmt_e(min_of(&r.rows, "grad_norm_sq")),
            reach.map_or_else(|| "not reached".into(), |e| format!("{e:.1}")),
            fmt_reach(first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", TOL)),
        ));
    }
    let finding = format!(
        "Measured: EF21-PAGE reached ||grad f||^2 <= {TOL:e} in {page_reached} of {page_n} runs (the slowest after {page_worst_epochs:.1} epochs); \
         EF21-SGD reached it in {sgd_reached} of {sgd_n} runs, its smallest ||grad f||^2 over all runs and rounds being {}.",
        fmt_e(sgd_min)
    );
    let budget = budgets
        .iter()
        .map(|b| format!("{b}"))
        .collect::<Vec<_>>()
        .join(" / ");
    let readme = format!(
        "# efkit repro bw-page{}\n\nEF21 with Bells & Whistles, Experiment 1 (algorithms.md §10.2): EF21-PAGE vs EF21-SGD with minibatches of \
         floor(0.25 N_i), floor(0.125 N_i), floor(0.015 N_i) samples per worker (uniform without replacement), Top-2, n = 20 workers, \
         contiguous split, logistic regression with the nonconvex regularizer (lambda = 0.1), x^0 ~ N(0, I), step = the poster's multiplier \
         x EF21's theoretical step. PAGE: p = mean_i tau_i/(tau_i + N_i), one coin shared by all workers (the authors' code).\n\n\
         Budget: at most {budget} epochs per run (mushrooms / w8a / a9a; rounds = epochs / expected epochs per round), stopping at \
         ||grad f||^2 <= {TOL:e}; ||grad f||^2 evaluated about once per epoch (as the authors' code). Bits: client -> server, 32 bits per sent value (the papers' convention: indices free, the dense g_i^0 of round 0 not charged).\n\n\
         Figure (rows: datasets; left: vs epochs, right: vs #bits/n):\n{}\n\n{finding}\n\n{t}",
        quick_note(quick),
        figure_list(std::slice::from_ref(&fig), out),
    );
    finish(out, &readme, &format!("{t}\n{finding}"), &[fig], quiet)
}

// ---------------------------------------------------------------------------
// bw-pp

/// EF21-PP vs EF21 with n = 100 (B&W Experiment 2).
pub fn bw_pp(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let fracs = [0.5, 0.25, 0.125, 0.065];
    // (dataset, rounds, EF21 multiplier, PP multipliers): the poster's Top-2 legends.
    // EF21 gets `rounds`, EF21-PP with fraction f gets rounds / f (theory: T ~ 1/(p alpha eps^2)).
    let table: [(&str, u64, f64, [f64; 4]); 3] = [
        ("mushrooms", 20000, 1024.0, [512.0, 256.0, 128.0, 64.0]),
        ("w8a", 20000, 64.0, [64.0, 32.0, 16.0, 8.0]),
        ("a9a", 20000, 128.0, [64.0, 32.0, 16.0, 8.0]),
    ];
    let mut curves = Vec::new();
    let mut titles = Vec::new();
    let mut budgets = Vec::new();
    for (p, (ds, rounds, ef21, pp)) in table.iter().enumerate() {
        titles.push(format!("{ds}, n = 100, Top-2"));
        let rounds = if quick { 40 } else { *rounds };
        budgets.push(rounds);
        // about 1000 evaluations per run at most
        let log_every = |r: u64| if quick { 5 } else { (r / 1000).max(10) };
        curves.push(Curve {
            panel: p,
            label: format!("EF21 {ef21}x"),
            config: logreg_config(
                ds,
                100,
                "ef21",
                topk(2),
                "theory",
                *ef21,
                rounds,
                Some(TOL),
                log_every(rounds),
            ),
        });
        for (&f, &mult) in fracs.iter().zip(pp.iter()) {
            let r = (rounds as f64 / f).ceil() as u64;
            let mut cfg = logreg_config(
                ds,
                100,
                "ef21-pp",
                topk(2),
                "theory",
                mult,
                r,
                Some(TOL),
                log_every(r),
            );
            cfg.method.participation = Some(f);
            curves.push(Curve {
                panel: p,
                label: format!("PP {}% {mult}x", f * 100.0),
                config: cfg,
            });
        }
    }
    let results = run_curves(curves, out, force, quiet)?;
    let y = "||grad f(x)||^2";
    let rounds_p = panels(
        &results,
        &titles,
        "round",
        "communication rounds (log)",
        "grad_norm_sq",
        y,
        true,
    );
    let avg_p = panels(
        &results,
        &titles,
        "bits_up_paper",
        "#bits/n (C->S, averaged over all clients, 32 bits/value)",
        "grad_norm_sq",
        y,
        false,
    );
    let part_p = panels(
        &results,
        &titles,
        "bits_up_wire_per_participant",
        "#bits per participating client (C->S, wire, log)",
        "grad_norm_sq",
        y,
        true,
    );
    let fig = plot::render(
        &by_row(vec![rounds_p, avg_p, part_p]),
        3,
        &out.join("pp_vs_ef21"),
    )?;
    let wire_avg = panels(
        &results,
        &titles,
        "bits_up_wire",
        "#bits/n (C->S, averaged over all clients, wire)",
        "grad_norm_sq",
        y,
        false,
    );
    let fig2 = plot::render(&wire_avg, 3, &out.join("pp_vs_ef21_wire_avg"))?;
    let mut t = format!(
        "| dataset | curve | status | rounds run | rounds to {TOL:e} | bits/n to {TOL:e} (avg over clients, paper) | (avg, wire) | bits per participant to {TOL:e} (wire) | final \\|\\|grad f\\|\\|^2 |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut notes = Vec::new();
    for (p, title) in titles.iter().enumerate() {
        let group: Vec<&CurveResult> = results.iter().filter(|r| r.panel == p).collect();
        let base = group[0];
        let base_rounds = first_reach(&base.rows, "round", "grad_norm_sq", TOL);
        let base_bits = first_reach(&base.rows, "bits_up_paper", "grad_norm_sq", TOL);
        for r in &group {
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                title,
                r.label,
                status_str(r),
                last(&r.rows, "round"),
                fmt_int(first_reach(&r.rows, "round", "grad_norm_sq", TOL)),
                fmt_reach(first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", TOL)),
                fmt_reach(first_reach(&r.rows, "bits_up_wire", "grad_norm_sq", TOL)),
                fmt_reach(first_reach(
                    &r.rows,
                    "bits_up_wire_per_participant",
                    "grad_norm_sq",
                    TOL
                )),
                fmt_e(last(&r.rows, "grad_norm_sq")),
            ));
        }
        // per-dataset sentence: rounds and average bits relative to EF21
        let rel: Vec<String> = group[1..]
            .iter()
            .map(|r| {
                let rr = first_reach(&r.rows, "round", "grad_norm_sq", TOL);
                let bb = first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", TOL);
                match (rr, bb, base_rounds, base_bits) {
                    (Some(rr), Some(bb), Some(r0), Some(b0)) => format!(
                        "{}: {:.2}x the rounds, {:.2}x the bits/n",
                        r.label,
                        rr / r0,
                        bb / b0
                    ),
                    (None, _, _, _) => format!(
                        "{}: not reached in {} rounds (final {})",
                        r.label,
                        last(&r.rows, "round"),
                        fmt_e(last(&r.rows, "grad_norm_sq"))
                    ),
                    _ => format!("{}: EF21 did not reach the tolerance", r.label),
                }
            })
            .collect();
        notes.push(format!(
            "- {title}, relative to {} to reach {TOL:e}: {}.",
            base.label,
            rel.join("; ")
        ));
    }
    let finding = format!(
        "Measured (averaged bits: what a client sends per round on average, p K 32 bits):\n{}",
        notes.join("\n")
    );
    let budget = budgets
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let readme = format!(
        "# efkit repro bw-pp{}\n\nEF21 with Bells & Whistles, Experiment 2 (algorithms.md §10.2): EF21-PP with floor(0.5 n), floor(0.25 n), \
         floor(0.125 n), floor(0.065 n) clients per round (uniform without replacement, tau-nice) vs EF21, n = 100 workers, Top-2, \
         contiguous split, logistic regression with the nonconvex regularizer (lambda = 0.1), x^0 ~ N(0, I), step = the poster's \
         multiplier x EF21's theoretical step. The server averages with 1/n (stale g_i of absent clients are kept).\n\n\
         Budget: EF21 at most {budget} rounds (mushrooms / w8a / a9a), EF21-PP with fraction f at most that divided by f, \
         stopping at ||grad f||^2 <= {TOL:e}; logged every {} rounds.\n\n\
         x axes: rounds; bits averaged over all n clients (`bits_up_paper`: 32 bits per value, as the authors' code counts, \
         and `bits_up_wire` in the second figure); bits per participating client (`bits_up_wire_per_participant`: the bits \
         a client sends in a round it takes part in, accumulated over rounds).\n\n\
         Figures (rows: datasets; columns: rounds, average bits/n, bits per participant):\n{}\n\n{finding}\n\n{t}",
        quick_note(quick),
        if quick { "5" } else { "max(10, rounds/1000)" },
        figure_list(&[fig.clone(), fig2.clone()], out),
    );
    finish(
        out,
        &readme,
        &format!("{t}\n{finding}"),
        &[fig, fig2],
        quiet,
    )
}

// ---------------------------------------------------------------------------
// bw-bc

/// EF21-BC vs EF21 (B&W Experiment 3): worker Top-2, server Top-2/4/8/16.
pub fn bw_bc(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let server_k = [2usize, 4, 8, 16];
    // (dataset, rounds, EF21 multiplier, BC multipliers): the poster's legends.
    let table: [(&str, u64, f64, [f64; 4]); 3] = [
        ("mushrooms", 20000, 1024.0, [128.0, 256.0, 1024.0, 1024.0]),
        ("w8a", 20000, 64.0, [32.0, 64.0, 64.0, 64.0]),
        ("a9a", 20000, 64.0, [32.0, 64.0, 64.0, 64.0]),
    ];
    let mut curves = Vec::new();
    let mut titles = Vec::new();
    let mut budgets = Vec::new();
    for (p, (ds, rounds, ef21, bc)) in table.iter().enumerate() {
        titles.push(format!("{ds}, n = 20, worker Top-2"));
        let rounds = if quick { 40 } else { *rounds };
        budgets.push(rounds);
        let log_every = if quick { 5 } else { 10 };
        curves.push(Curve {
            panel: p,
            label: format!("EF21 {ef21}x"),
            config: logreg_config(
                ds,
                20,
                "ef21",
                topk(2),
                "theory",
                *ef21,
                rounds,
                Some(TOL),
                log_every,
            ),
        });
        for (&k, &mult) in server_k.iter().zip(bc.iter()) {
            let mut cfg = logreg_config(
                ds,
                20,
                "ef21-bc",
                topk(2),
                "theory",
                mult,
                rounds,
                Some(TOL),
                log_every,
            );
            cfg.server_compressor = Some(topk(k));
            curves.push(Curve {
                panel: p,
                label: format!("BC server Top-{k} {mult}x"),
                config: cfg,
            });
        }
    }
    let results = run_curves(curves, out, force, quiet)?;
    let y = "||grad f(x)||^2";
    let up = panels_sum(
        &results,
        &titles,
        &["bits_up_paper"],
        "#bits/n, C->S (32 bits/value)",
        y,
        false,
    );
    let both_paper = panels_sum(
        &results,
        &titles,
        &["bits_up_paper", "bits_down_paper"],
        "#bits/n, C->S + S->C (papers': model broadcast free)",
        y,
        false,
    );
    let both_wire = panels_sum(
        &results,
        &titles,
        &["bits_up_wire", "bits_down_wire"],
        "#bits/n, C->S + S->C (wire: f64 model counted, log)",
        y,
        true,
    );
    let fig = plot::render(
        &by_row(vec![up, both_paper, both_wire]),
        3,
        &out.join("bc_vs_ef21"),
    )?;
    let mut t = format!(
        "| dataset | curve | status | rounds to {TOL:e} | uplink bits/n (paper) | up+down (paper, model free) | up+down (wire) | final \\|\\|grad f\\|\\|^2 |\n|---|---|---|---|---|---|---|---|\n"
    );
    let mut notes = Vec::new();
    for (p, title) in titles.iter().enumerate() {
        let group: Vec<&CurveResult> = results.iter().filter(|r| r.panel == p).collect();
        let reach =
            |r: &CurveResult, keys: &[&str]| first_reach_sum(&r.rows, keys, "grad_norm_sq", TOL);
        for r in &group {
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                title,
                r.label,
                status_str(r),
                fmt_int(first_reach(&r.rows, "round", "grad_norm_sq", TOL)),
                fmt_reach(reach(r, &["bits_up_paper"])),
                fmt_reach(reach(r, &["bits_up_paper", "bits_down_paper"])),
                fmt_reach(reach(r, &["bits_up_wire", "bits_down_wire"])),
                fmt_e(last(&r.rows, "grad_norm_sq")),
            ));
        }
        let best = |keys: &[&str]| -> String {
            group
                .iter()
                .filter_map(|r| reach(r, keys).map(|b| (b, r.label.clone())))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or_else(
                    || "none reached the tolerance".into(),
                    |(b, l)| format!("{l} ({})", fmt_e(b)),
                )
        };
        notes.push(format!(
            "- {title}: fewest bits/n to {TOL:e}: uplink only: {}; uplink + downlink, papers' convention: {}; uplink + downlink, wire: {}.",
            best(&["bits_up_paper"]),
            best(&["bits_up_paper", "bits_down_paper"]),
            best(&["bits_up_wire", "bits_down_wire"])
        ));
    }
    let finding = format!("Measured:\n{}", notes.join("\n"));
    let budget = budgets
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let readme = format!(
        "# efkit repro bw-bc{}\n\nEF21 with Bells & Whistles, Experiment 3 (algorithms.md §10.2): EF21-BC with worker Top-2 and server \
         Top-2/4/8/16 (config key `[server_compressor]`) vs EF21 with Top-2, n = 20, contiguous split, logistic regression with the \
         nonconvex regularizer (lambda = 0.1), x^0 ~ N(0, I), step = the poster's multiplier x EF21's theoretical step (alpha of the \
         worker compressor only, as the authors' code). EF21-BC's first broadcast is the dense estimate g^0 (the authors' code).\n\n\
         Budget: at most {budget} rounds (mushrooms / w8a / a9a), stopping at ||grad f||^2 <= {TOL:e}; logged every {} rounds.\n\n\
         x axes (columns): uplink bits per client (32 bits per value); uplink + downlink in the papers' convention (the dense model \
         broadcast of EF21 is not counted, EF21-BC's compressed broadcast counts 32 bits per value); uplink + downlink as written \
         on the wire (EF21's downlink is the dense f64 model, 64 d bits per round; Top-K messages carry values and indices).\n\n\
         Figure (rows: datasets):\n{}\n\n{finding}\n\n{t}",
        quick_note(quick),
        if quick { 5 } else { 10 },
        figure_list(std::slice::from_ref(&fig), out),
    );
    finish(out, &readme, &format!("{t}\n{finding}"), &[fig], quiet)
}

// ---------------------------------------------------------------------------
// bw-hb

/// EF21-HB with eta in {0.2, 0.4, 0.9} vs EF21, at equal gamma and at equal
/// effective step gamma/(1 - eta).
pub fn bw_hb(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let etas = [0.2, 0.4, 0.9];
    // (dataset, rounds, multiplier): EF21's tuned Top-2 multipliers of the B&W poster (BC experiment).
    let table: [(&str, u64, f64); 3] = [
        ("mushrooms", 20000, 1024.0),
        ("w8a", 20000, 64.0),
        ("a9a", 20000, 64.0),
    ];
    let log_every = if quick { 5 } else { 10 };
    let mut curves = Vec::new();
    let mut titles = Vec::new();
    let mut budgets = Vec::new();
    // panels 2p: equal gamma; 2p + 1: equal gamma / (1 - eta)
    for (p, &(ds, rounds, mult)) in table.iter().enumerate() {
        titles.push(format!("{ds}, Top-2: same gamma ({mult}x)"));
        titles.push(format!("{ds}, Top-2: same gamma/(1-eta) ({mult}x)"));
        let rounds = if quick { 40 } else { rounds };
        budgets.push(rounds);
        curves.push(Curve {
            panel: 2 * p,
            label: format!("EF21 {mult}x"),
            config: logreg_config(
                ds,
                20,
                "ef21",
                topk(2),
                "theory",
                mult,
                rounds,
                Some(TOL),
                log_every,
            ),
        });
        for panel in [2 * p, 2 * p + 1] {
            for &eta in &etas {
                // rounded to 1e-9 so that e.g. 0.1 * 1024 is written as 102.4
                let m = if panel == 2 * p {
                    mult
                } else {
                    (mult * (1.0 - eta) * 1e9).round() / 1e9
                };
                let mut cfg = logreg_config(
                    ds,
                    20,
                    "ef21-hb",
                    topk(2),
                    "theory",
                    m,
                    rounds,
                    Some(TOL),
                    log_every,
                );
                cfg.method.eta = Some(eta);
                curves.push(Curve {
                    panel,
                    label: format!("HB eta={eta} {m}x"),
                    config: cfg,
                });
            }
        }
    }
    // EF21 runs once per dataset and is shown in both panels
    let mut results = Vec::new();
    for r in run_curves(curves, out, force, quiet)? {
        let copy = (r.label.starts_with("EF21")).then(|| CurveResult {
            panel: r.panel + 1,
            label: r.label.clone(),
            rows: r.rows.clone(),
            status: r.status,
        });
        results.push(r);
        results.extend(copy);
    }
    results.sort_by_key(|r| r.panel);
    let y = "||grad f(x)||^2";
    let rp = panels(
        &results,
        &titles,
        "round",
        "communication rounds",
        "grad_norm_sq",
        y,
        false,
    );
    let fig = plot::render(&rp, 2, &out.join("hb_vs_ef21"))?;
    let mut t = format!(
        "| panel | curve | status | rounds to {TOL:e} | bits/n to {TOL:e} (paper) | final \\|\\|grad f\\|\\|^2 | min \\|\\|grad f\\|\\|^2 |\n|---|---|---|---|---|---|---|\n"
    );
    let mut notes = Vec::new();
    for (p, title) in titles.iter().enumerate() {
        let group: Vec<&CurveResult> = results.iter().filter(|r| r.panel == p).collect();
        for r in &group {
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                title,
                r.label,
                status_str(r),
                fmt_int(first_reach(&r.rows, "round", "grad_norm_sq", TOL)),
                fmt_reach(first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", TOL)),
                fmt_e(last(&r.rows, "grad_norm_sq")),
                fmt_e(min_of(&r.rows, "grad_norm_sq")),
            ));
        }
        let base = first_reach(&group[0].rows, "round", "grad_norm_sq", TOL);
        let rel: Vec<String> = group[1..]
            .iter()
            .map(
                |r| match (first_reach(&r.rows, "round", "grad_norm_sq", TOL), base) {
                    (Some(a), Some(b)) => format!("{} {:.2}x EF21's rounds", r.label, a / b),
                    (None, _) => format!(
                        "{} did not reach it ({:?}, final {})",
                        r.label,
                        r.status,
                        fmt_e(last(&r.rows, "grad_norm_sq"))
                    ),
                    (Some(a), None) => {
                        format!("{} reached it in {a:.0} rounds, EF21 did not", r.label)
                    }
                },
            )
            .collect();
        notes.push(format!("- {title}: {}.", rel.join("; ")));
    }
    let finding = format!("Measured (rounds to {TOL:e}; every round sends the same Top-2 message, so bits are proportional to rounds):\n{}", notes.join("\n"));
    let budget = budgets
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let readme = format!(
        "# efkit repro bw-hb{}\n\nEF21-HB (algorithms.md §6.5: v^{{t+1}} = eta v^t + g^{{t+1}}, x^{{t+1}} = x^t - gamma v^t, v^0 = g^0) with \
         eta in {{0.2, 0.4, 0.9}} (the values named in the B&W text) vs EF21, Top-2, n = 20, contiguous split, logistic regression with the \
         nonconvex regularizer (lambda = 0.1), x^0 ~ N(0, I). The HB experiment's tuned multipliers are not known (appendix not read). \
         Two comparisons per dataset: (left) every curve at EF21's tuned Top-2 multiplier of the B&W poster (equal gamma; heavy ball then \
         moves up to 1/(1 - eta) times farther per round); (right) gamma scaled by (1 - eta), so that the effective step gamma/(1 - eta) \
         equals EF21's gamma.\n\n\
         Budget: at most {budget} rounds (mushrooms / w8a / a9a), stopping at ||grad f||^2 <= {TOL:e}; logged every {log_every} rounds.\n\n\
         Figure (rows: datasets; left: equal gamma, right: equal gamma/(1 - eta); x = rounds):\n{}\n\n{finding}\n\n{t}",
        quick_note(quick),
        figure_list(std::slice::from_ref(&fig), out),
    );
    finish(out, &readme, &format!("{t}\n{finding}"), &[fig], quiet)
}

// ---------------------------------------------------------------------------
// bw-prox

/// Number of nonzero coordinates of the final iterate of `cfg` (the run is
/// repeated in memory: runs are deterministic, so this is the iterate the
/// logged run ended at).
fn final_nnz(cfg: &Config) -> Result<(usize, usize)> {
    let mut p = setup::prepare(cfg).map_err(|e| crate::UserError(e.to_string()))?;
    p.cluster
        .run(&setup::stop_rules(cfg), |_| Control::Continue);
    let x = &p.cluster.server.state.x;
    Ok((x.iter().filter(|v| **v != 0.0).count(), x.len()))
}

/// EF21-Prox with an l1 regularizer on a9a vs proximal gradient descent.
pub fn bw_prox(out: &Path, force: bool, quick: bool, quiet: bool) -> Result<u8> {
    let lambda_l1 = 0.01;
    let rounds = if quick { 40 } else { 6000 };
    let reg = Regularizer::L1 { lambda: lambda_l1 };
    let mut curves = Vec::new();
    // EF21-Prox with Top-K (multipliers: the EF21 poster's a9a values for Top-2/Top-4)
    for (k, mult) in [(1usize, 64.0), (2, 64.0), (4, 64.0)] {
        let mut cfg = logreg_config(
            "a9a",
            20,
            "ef21-prox",
            topk(k),
            "theory",
            mult,
            rounds,
            Some(TOL),
            5,
        );
        cfg.method.prox = Some(reg);
        curves.push(Curve {
            panel: 0,
            label: format!("EF21-Prox Top-{k} {mult}x"),
            config: cfg,
        });
    }
    // proximal GD = EF21-Prox with the identity compressor, values sent in f64 (then
    // g_i^{t+1} = g_i^t + (grad f_i - g_i^t) = grad f_i up to one rounding); theory step 1/L
    for mult in [1.0, 2.0] {
        let comp = CompressorSpec {
            values: Some(ValueFormat::F64),
            ..CompressorSpec::named("identity")
        };
        let mut cfg = logreg_config(
            "a9a",
            20,
            "ef21-prox",
            comp,
            "theory",
            mult,
            rounds,
            Some(TOL),
            5,
        );
        cfg.method.prox = Some(reg);
        curves.push(Curve {
            panel: 0,
            label: format!("prox-GD {mult}/L"),
            config: cfg,
        });
    }
    let configs: Vec<Config> = curves.iter().map(|c| c.config.clone()).collect();
    let results = run_curves(curves, out, force, quiet)?;
    let titles = vec![format!("a9a, n = 20, l1 lambda = {lambda_l1}")];
    let y = "||G_gamma(x)||^2 (gradient mapping)";
    let paper = panels(
        &results,
        &titles,
        "bits_up_paper",
        "#bits/n (C->S, 32 bits/value)",
        "grad_norm_sq",
        y,
        false,
    );
    let paper_log = panels(
        &results,
        &titles,
        "bits_up_paper",
        "#bits/n (C->S, 32 bits/value, log)",
        "grad_norm_sq",
        y,
        true,
    );
    let wire = panels(
        &results,
        &titles,
        "bits_up_wire",
        "#bits/n (C->S, wire)",
        "grad_norm_sq",
        y,
        true,
    );
    let rounds_p = panels(
        &results,
        &titles,
        "round",
        "rounds",
        "grad_norm_sq",
        y,
        false,
    );
    let mut all = Vec::new();
    all.extend(paper);
    all.extend(paper_log);
    all.extend(wire);
    all.extend(rounds_p);
    let fig = plot::render(&all, 2, &out.join("prox_vs_proxgd"))?;
    let mut t = format!(
        "| curve | status | rounds | rounds to {TOL:e} | bits/n to {TOL:e} (paper) | (wire) | final \\|\\|G\\|\\|^2 | Phi(x) final | nonzeros of x (final) |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut reached = Vec::new();
    let mut decreasing = 0;
    for (r, cfg) in results.iter().zip(&configs) {
        let (nnz, d) = final_nnz(cfg)?;
        let first = r
            .rows
            .first()
            .and_then(|row| get(row, "grad_norm_sq"))
            .unwrap_or(f64::NAN);
        decreasing += usize::from(last(&r.rows, "grad_norm_sq") < first);
        let bits = first_reach(&r.rows, "bits_up_paper", "grad_norm_sq", TOL);
        if let Some(b) = bits {
            reached.push((b, r.label.clone()));
        }
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.6} | {nnz} / {d} |\n",
            r.label,
            status_str(r),
            last(&r.rows, "round"),
            fmt_int(first_reach(&r.rows, "round", "grad_norm_sq", TOL)),
            fmt_reach(bits),
            fmt_reach(first_reach(&r.rows, "bits_up_wire", "grad_norm_sq", TOL)),
            fmt_e(last(&r.rows, "grad_norm_sq")),
            last(&r.rows, "loss"),
        ));
    }
    reached.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order = reached
        .iter()
        .map(|(b, l)| format!("{l} ({})", fmt_e(*b)))
        .collect::<Vec<_>>()
        .join(" < ");
    let finding = format!(
        "Measured: the squared gradient mapping decreased in {decreasing} of {} runs; bits/n (paper) to reach {TOL:e}, fewest first: {}.",
        results.len(),
        if order.is_empty() { "no run reached the tolerance".to_string() } else { order }
    );
    let readme = format!(
        "# efkit repro bw-prox{}\n\nEF21-Prox (algorithms.md §6.6: x^{{t+1}} = prox_{{gamma r}}(x^t - gamma g^t)) on a9a with r(x) = {lambda_l1} ||x||_1 \
         added to the logistic loss with the nonconvex regularizer (lambda = 0.1), n = 20, contiguous split, x^0 ~ N(0, I), Top-K uplink, \
         step = multiplier x EF21's theoretical step (the B&W appendix's tuned values are not known; 64x is the EF21 poster's a9a value).\n\n\
         Baseline: EF21-Prox with the identity compressor, which IS proximal gradient descent: with C = identity, \
         g_i^{{t+1}} = g_i^t + (grad f_i(x^{{t+1}}) - g_i^t) = grad f_i(x^{{t+1}}) (values sent as f64, so up to one rounding of that sum), \
         hence x^{{t+1}} = prox_{{gamma r}}(x^t - gamma grad f(x^t)); its theory step is 1/L (alpha = 1). It sends d = 123 values per round.\n\n\
         y axis: the squared gradient mapping ||G_gamma(x)||^2, G_gamma(x) = (x - prox_{{gamma r}}(x - gamma grad f(x)))/gamma, with each \
         run's own gamma (the metric `grad_norm_sq` of prox runs). Phi = f + r.\n\n\
         Budget: at most {rounds} rounds, stopping at ||G||^2 <= {TOL:e}; logged every 5 rounds.\n\n\
         Figure (bits/n linear and log, wire bits, rounds):\n{}\n\n{finding}\n\n{t}",
        quick_note(quick),
        figure_list(std::slice::from_ref(&fig), out),
    );
    finish(out, &readme, &format!("{t}\n{finding}"), &[fig], quiet)
}
