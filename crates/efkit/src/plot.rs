//! Figure rendering (SVG + PNG) for experiment metrics.
//!
//! Everything needed at run time is compiled in: the DejaVu Sans font is
//! embedded with `include_bytes!` and registered with plotters' `ab_glyph`
//! text backend, so no system font library is touched.
//!
//! Log axes are implemented by plotting `log10(v)` on a linear coordinate and
//! choosing tick positions and labels ourselves; this gives full control over
//! the ticks (decades, 1-2-5 steps, or a linear fallback for narrow ranges) and
//! keeps a single coordinate type for all four linear/log combinations.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line on a panel, optionally with a shaded band (e.g. min/max or a
/// confidence interval over seeds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// `(lower, upper)` evaluated at the same `x` as the line.
    pub band: Option<(Vec<f64>, Vec<f64>)>,
}

/// One chart of the figure grid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Pixel size of one panel (both PNG pixels and SVG user units).
pub const PANEL_SIZE: (u32, u32) = (600, 450);

const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Values whose magnitude exceeds this are treated as non-finite: they would
/// only squash the rest of the plot (and overflow range arithmetic).
const MAX_ABS: f64 = 1e300;

const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),  // blue
    RGBColor(255, 127, 14),  // orange
    RGBColor(44, 160, 44),   // green
    RGBColor(214, 39, 40),   // red
    RGBColor(148, 103, 189), // purple
    RGBColor(140, 86, 75),   // brown
    RGBColor(227, 119, 194), // pink
    RGBColor(127, 127, 127), // grey
    RGBColor(188, 189, 34),  // olive
    RGBColor(23, 190, 207),  // cyan
    RGBColor(25, 25, 25),    // near-black
    RGBColor(0, 80, 160),    // dark blue
];

fn register_embedded_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        bail!("embedded font DejaVuSans.ttf could not be parsed")
    }
}

fn draw_err<E: Debug>(e: E) -> anyhow::Error {
    anyhow!("plot drawing failed: {e:?}")
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Renders `panels` in a grid with `cols` columns to `<stem>.svg` and
/// `<stem>.png` (the extensions are appended to `stem`, never substituted).
/// Both files are written atomically (temp file in the same directory, then
/// rename). Returns `(svg_path, png_path)`.
///
/// Never panics on odd data: empty series, single points, constant values,
/// NaN/inf, and non-positive values on log axes (which are skipped) are all
/// handled by choosing a sensible range.
pub fn render(panels: &[Panel], cols: usize, stem: &Path) -> Result<(PathBuf, PathBuf)> {
    register_embedded_font()?;
    let svg_path = with_suffix(stem, ".svg");
    let png_path = with_suffix(stem, ".png");
    if let Some(dir) = parent_dir(stem) {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating output directory {}", dir.display()))?;
    }

    let n = panels.len().max(1);
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let size = (PANEL_SIZE.0 * cols as u32, PANEL_SIZE.1 * rows as u32);

    // SVG: render into a string, then write it atomically.
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw_figure(&root, panels, rows, cols)?;
        root.present().map_err(draw_err)?;
    }
    let tmp = temp_sibling(&svg_path, "svg");
    let res = std::fs::write(&tmp, svg.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| rename(&tmp, &svg_path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;

    // PNG: the bitmap backend picks the encoder from the extension, so the
    // temp file must end in `.png` too.
    let tmp = temp_sibling(&png_path, "png");
    let res = (|| -> Result<()> {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        draw_figure(&root, panels, rows, cols)?;
        root.present().map_err(draw_err)?;
        drop(root);
        rename(&tmp, &png_path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;

    Ok((svg_path, png_path))
}

/// Reads a `metrics.jsonl` file: one JSON object per line. Blank lines are
/// ignored; anything else that is not a JSON object is an error naming the
/// file and the 1-based line number.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading metrics file {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{}: malformed JSON line: {e}", path.display(), i + 1))?;
        if !v.is_object() {
            bail!(
                "{}:{}: expected a JSON object, found {}",
                path.display(),
                i + 1,
                json_kind(&v)
            );
        }
        rows.push(v);
    }
    Ok(rows)
}

/// Builds a series from metric rows, taking `x_key`/`y_key` as numbers.
/// Rows where either key is missing (or not a number, e.g. `null`) are
/// skipped. A key that is not found verbatim is also tried as a dotted path
/// into nested objects (`"eval.loss"`).
pub fn series_from_metrics(
    rows: &[serde_json::Value],
    x_key: &str,
    y_key: &str,
    label: &str,
) -> Series {
    let mut s = Series {
        label: label.to_string(),
        ..Series::default()
    };
    for row in rows {
        if let (Some(x), Some(y)) = (lookup_f64(row, x_key), lookup_f64(row, y_key)) {
            s.x.push(x);
            s.y.push(y);
        }
    }
    s
}

/// `key` of a metrics row as a number: verbatim, or as a dotted path into
/// nested objects (`"eval.loss"`).
pub fn lookup_f64(row: &serde_json::Value, key: &str) -> Option<f64> {
    if let Some(v) = row.get(key) {
        return v.as_f64();
    }
    if !key.contains('.') {
        return None;
    }
    let mut cur = row;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    cur.as_f64()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = stem.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_dir(p: &Path) -> Option<PathBuf> {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// `dir/.name.<pid>.<n>.tmp.<ext>` next to `target`.
fn temp_sibling(target: &Path, ext: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "figure".into());
    let tmp_name = format!(".{name}.{}.{n}.tmp.{ext}", std::process::id());
    match parent_dir(target) {
        Some(d) => d.join(tmp_name),
        None => PathBuf::from(tmp_name),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

// ---------------------------------------------------------------------------
// Axes: transforms, ranges, ticks, labels
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct AxisKind {
    log: bool,
}

impl AxisKind {
    /// Maps a data value to chart coordinates, or `None` if it cannot be shown.
    fn map(self, v: f64) -> Option<f64> {
        if !v.is_finite() || v.abs() > MAX_ABS {
            return None;
        }
        if self.log {
            (v > 0.0).then(|| v.log10())
        } else {
            Some(v)
        }
    }
}

#[derive(Debug, Clone)]
struct Axis {
    /// Range in chart coordinates (log10 space for log axes).
    lo: f64,
    hi: f64,
    /// Labelled ticks in chart coordinates, with their text.
    major: Vec<(f64, String)>,
    /// Unlabelled grid positions in chart coordinates.
    minor: Vec<f64>,
}

impl Axis {
    fn new(kind: AxisKind, values: &[f64]) -> Axis {
        let (lo, hi) = padded_range(kind, values);
        let (major, minor) = if kind.log {
            log_ticks(lo, hi)
        } else {
            let (step, ticks) = linear_ticks(lo, hi);
            let major = label_linear(&ticks, step);
            let minor = linear_minor(lo, hi, step);
            (major, minor)
        };
        Axis {
            lo,
            hi,
            major,
            minor,
        }
    }

    fn label_for(&self, v: f64) -> String {
        let tol = (self.hi - self.lo).abs() * 1e-9;
        self.major
            .iter()
            .find(|(t, _)| (t - v).abs() <= tol)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

/// Plotters coordinate for an [`Axis`]: linear in chart coordinates, with our
/// own tick positions (bold = labelled, light = minor grid).
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.lo) / (self.hi - self.lo);
        let px = limit.0 as f64 + (limit.1 - limit.0) as f64 * frac;
        if px.is_nan() {
            return limit.0;
        }
        // Keep far-off coordinates representable (saturating, no overflow).
        px.round().clamp(-1e7, 1e7) as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.major.iter().map(|(t, _)| *t).collect()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Range (in chart coordinates) covering all `values` (already mapped and
/// finite) with a 5% margin; guards for empty and zero-width data.
fn padded_range(kind: AxisKind, values: &[f64]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for &v in values {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo > hi {
        // No data at all: 0..1 (i.e. 1..10 on a log axis).
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let scale = lo.abs().max(hi.abs());
    if span <= scale * 1e-9 || span == 0.0 {
        // Single value (or numerically indistinguishable values).
        let c = 0.5 * (lo + hi);
        let pad = if kind.log {
            0.5 // half a decade either side
        } else if c == 0.0 {
            1.0
        } else {
            c.abs() * 0.1
        };
        return (c - pad, c + pad);
    }
    let pad = 0.05 * span;
    (lo - pad, hi + pad)
}

/// "Nice" step (1, 2 or 5 times a power of ten) giving roughly `target`
/// intervals over `span`. Returns `(step, leading digit of the step)`.
fn nice_step(span: f64, target: f64) -> (f64, u8) {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let (nf, digit) = if f < 1.5 {
        (1.0, 1)
    } else if f < 3.0 {
        (2.0, 2)
    } else if f < 7.0 {
        (5.0, 5)
    } else {
        (10.0, 1)
    };
    (nf * mag, digit)
}

/// Multiples of `step` inside `[lo, hi]` (at most a few dozen).
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let usable = step.is_finite() && step > 0.0 && lo.is_finite() && hi.is_finite();
    if !usable {
        return Vec::new();
    }
    let k0 = (lo / step - 1e-9).ceil();
    let k1 = (hi / step + 1e-9).floor();
    if !k0.is_finite() || !k1.is_finite() || k1 < k0 || k1 - k0 > 200.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut k = k0;
    while k <= k1 {
        let v = k * step;
        // Avoid "-0".
        out.push(if v == 0.0 { 0.0 } else { v });
        k += 1.0;
    }
    out
}

fn linear_ticks(lo: f64, hi: f64) -> (f64, Vec<f64>) {
    let (step, _) = nice_step(hi - lo, 5.0);
    (step, multiples(lo, hi, step))
}

fn linear_minor(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let (_, digit) = nice_step(step * 5.0, 5.0);
    let sub = if digit == 2 { step / 4.0 } else { step / 5.0 };
    multiples(lo, hi, sub)
}

/// Labels for linear ticks: fixed decimals for moderate magnitudes,
/// `m×10ⁿ` otherwise.
fn label_linear(ticks: &[f64], step: f64) -> Vec<(f64, String)> {
    let max_abs = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let sci = max_abs >= 1e5 || (max_abs > 0.0 && max_abs < 1e-3) || step < 1e-4;
    ticks
        .iter()
        .map(|&v| {
            let s = if sci {
                sci_label(v)
            } else {
                let decimals = (-(step.log10().floor())).clamp(0.0, 8.0) as usize;
                let s = format!("{v:.decimals$}");
                // Guard against "-0.0" from rounding.
                if s.trim_start_matches('-')
                    .chars()
                    .all(|c| c == '0' || c == '.')
                {
                    s.trim_start_matches('-').to_string()
                } else {
                    s
                }
            };
            (v, s)
        })
        .collect()
}

/// Ticks for a log axis whose chart range is `[lo, hi]` in log10 space.
fn log_ticks(lo: f64, hi: f64) -> (Vec<(f64, String)>, Vec<f64>) {
    const MAX_LABELS: usize = 8;
    let decades: Vec<i32> = {
        let a = (lo - 1e-9).ceil();
        let b = (hi + 1e-9).floor();
        if b >= a && b - a < 1000.0 {
            (a as i32..=b as i32).collect()
        } else {
            Vec::new()
        }
    };
    let in_range = |t: f64| t >= lo - 1e-9 && t <= hi + 1e-9;
    let mantissa_ticks = |ms: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let e0 = lo.floor() as i32;
        let e1 = hi.ceil() as i32;
        if e1 - e0 > 40 {
            return out;
        }
        for e in e0..=e1 {
            for &m in ms {
                let t = (m * 10f64.powi(e)).log10();
                if in_range(t) {
                    out.push(t);
                }
            }
        }
        out
    };

    // Wide range: one label per decade (thinned), minor lines at 2..9 or at
    // the skipped decades.
    let one_two_five = mantissa_ticks(&[1.0, 2.0, 5.0]);
    let use_decades = decades.len() >= 3
        || (decades.len() == 2 && !(one_two_five.len() >= 3 && one_two_five.len() <= MAX_LABELS));
    if use_decades {
        let stride = decades.len().div_ceil(MAX_LABELS).max(1) as i32;
        let major: Vec<(f64, String)> = decades
            .iter()
            .filter(|&&e| e.rem_euclid(stride) == 0)
            .map(|&e| (e as f64, decade_label(e)))
            .collect();
        let minor = if stride == 1 {
            mantissa_ticks(&[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        } else {
            decades.iter().map(|&e| e as f64).collect()
        };
        return (major, minor);
    }
    if one_two_five.len() >= 2 && one_two_five.len() <= MAX_LABELS {
        let minor = mantissa_ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        return (label_mantissa_ticks(&one_two_five), minor);
    }
    let all = mantissa_ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if all.len() >= 2 && all.len() <= MAX_LABELS {
        return (label_mantissa_ticks(&all), Vec::new());
    }
    // Narrow range (less than a factor ~2): linear ticks in value space,
    // labelled like a linear axis (plain decimals unless extreme magnitude).
    let (vlo, vhi) = (10f64.powf(lo), 10f64.powf(hi));
    let (step, ticks) = linear_ticks(vlo, vhi);
    let positive: Vec<f64> = ticks.into_iter().filter(|&v| v > 0.0).collect();
    let major = label_linear(&positive, step)
        .into_iter()
        .map(|(v, s)| (v.log10(), s))
        .collect();
    let minor = linear_minor(vlo, vhi, step)
        .into_iter()
        .filter(|&v| v > 0.0)
        .map(f64::log10)
        .collect();
    (major, minor)
}

/// Labels for log-axis ticks of the form `m·10ᵉ` spanning less than two
/// decades: plain numbers ("0.2", "5", "300") for moderate magnitudes, where
/// "2×10⁰" would only be harder to read; scientific notation otherwise.
fn label_mantissa_ticks(ts: &[f64]) -> Vec<(f64, String)> {
    let vals: Vec<f64> = ts.iter().map(|&t| 10f64.powf(t)).collect();
    let plain = vals
        .iter()
        .all(|&v| (1e-3..1e4).contains(&(v * (1.0 + 1e-9))));
    ts.iter()
        .zip(&vals)
        .map(|(&t, &v)| (t, if plain { plain_label(v) } else { sci_label(v) }))
        .collect()
}

/// Shortest decimal with at most 4 significant digits ("0.002", "50", "1.5").
fn plain_label(v: f64) -> String {
    let e = v.abs().log10().floor() as i32;
    let decimals = (3 - e).clamp(0, 12) as usize;
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

fn superscript(n: i32) -> String {
    n.to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            '9' => '⁹',
            other => other,
        })
        .collect()
}

fn decade_label(e: i32) -> String {
    format!("10{}", superscript(e))
}

/// `m×10ⁿ` with up to 4 significant digits (trailing zeros trimmed);
/// `10ⁿ` when the mantissa is 1.
fn sci_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    let mut e = v.abs().log10().floor() as i32;
    let mut m = v / 10f64.powi(e);
    m = (m * 1000.0).round() / 1000.0;
    if m.abs() >= 10.0 {
        m /= 10.0;
        e += 1;
    }
    if m == 1.0 {
        return decade_label(e);
    }
    if m == -1.0 {
        return format!("-{}", decade_label(e));
    }
    let mut ms = format!("{m:.3}");
    while ms.ends_with('0') {
        ms.pop();
    }
    if ms.ends_with('.') {
        ms.pop();
    }
    format!("{ms}×10{}", superscript(e))
}

// ---------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------

/// A series mapped to chart coordinates and split at unplottable points.
struct Prepared {
    label: String,
    color: RGBColor,
    dashed: bool,
    segments: Vec<Vec<(f64, f64)>>,
    n_points: usize,
    /// Raw band runs: (x, lower or None if unplottable, upper).
    band_runs: Vec<Vec<(f64, Option<f64>, f64)>>,
}

fn prepare(panel: &Panel, xk: AxisKind, yk: AxisKind) -> Vec<Prepared> {
    panel
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut segments = Vec::new();
            let mut cur = Vec::new();
            let mut n_points = 0;
            for (&x, &y) in s.x.iter().zip(&s.y) {
                match (xk.map(x), yk.map(y)) {
                    (Some(cx), Some(cy)) => {
                        cur.push((cx, cy));
                        n_points += 1;
                    }
                    _ => {
                        if !cur.is_empty() {
                            segments.push(std::mem::take(&mut cur));
                        }
                    }
                }
            }
            if !cur.is_empty() {
                segments.push(cur);
            }

            let mut band_runs = Vec::new();
            if let Some((lower, upper)) = &s.band {
                let mut run = Vec::new();
                for ((&x, &l), &u) in s.x.iter().zip(lower).zip(upper) {
                    // On a log axis a non-positive bound is clamped to the
                    // bottom of the axis later (lower = None); the other bound
                    // must be plottable.
                    let (l, u) = if l.is_nan() || u.is_nan() {
                        (f64::NAN, f64::NAN)
                    } else {
                        (l.min(u), l.max(u))
                    };
                    let p = match (xk.map(x), yk.map(u)) {
                        (Some(cx), Some(cu)) => {
                            let cl = yk.map(l);
                            if cl.is_none() && !(yk.log && l.is_finite() && l <= 0.0) {
                                None
                            } else {
                                Some((cx, cl, cu))
                            }
                        }
                        _ => None,
                    };
                    match p {
                        Some(p) => run.push(p),
                        None => {
                            if !run.is_empty() {
                                band_runs.push(std::mem::take(&mut run));
                            }
                        }
                    }
                }
                if !run.is_empty() {
                    band_runs.push(run);
                }
            }

            Prepared {
                label: s.label.clone(),
                color: PALETTE[i % PALETTE.len()],
                dashed: (i / PALETTE.len()) % 2 == 1,
                segments,
                n_points,
                band_runs,
            }
        })
        .collect()
}

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
    rows: usize,
    cols: usize,
) -> Result<()> {
    root.fill(&WHITE).map_err(draw_err)?;
    if panels.is_empty() {
        let (w, h) = root.dim_in_pixel();
        let grey = BLACK.mix(0.6);
        let style = TextStyle::from((FONT, 20).into_font())
            .color(&grey)
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw_text("(no panels)", &style, (w as i32 / 2, h as i32 / 2))
            .map_err(draw_err)?;
        return Ok(());
    }
    let cells = root.split_evenly((rows, cols));
    for (panel, cell) in panels.iter().zip(cells.iter()) {
        draw_panel(cell, panel)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
    let xk = AxisKind { log: panel.log_x };
    let yk = AxisKind { log: panel.log_y };
    let prepared = prepare(panel, xk, yk);

    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for p in &prepared {
        for seg in &p.segments {
            for &(x, y) in seg {
                xs.push(x);
                ys.push(y);
            }
        }
        for run in &p.band_runs {
            for &(x, l, u) in run {
                xs.push(x);
                ys.push(u);
                if let Some(l) = l {
                    ys.push(l);
                }
            }
        }
    }
    let has_data = !xs.is_empty();
    let xa = Axis::new(xk, &xs);
    let ya = Axis::new(yk, &ys);

    let tick_font = (FONT, 14).into_font();
    let desc_font = (FONT, 16).into_font();
    let title_font = (FONT, 19).into_font();
    let legend_font = (FONT, 14).into_font();

    // Room for the widest y tick label, the tick marks and the axis title.
    let max_label_w = ya
        .major
        .iter()
        .map(|(_, s)| {
            area.estimate_text_size(s, &TextStyle::from(tick_font.clone()))
                .map(|(w, _)| w)
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let y_area = max_label_w + 14 + if panel.y_label.is_empty() { 0 } else { 24 };
    let x_area = 28 + if panel.x_label.is_empty() { 0 } else { 20 };

    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(8)
        .margin_bottom(6)
        .margin_left(6)
        .margin_right(18)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, title_font);
    }
    let mut chart = builder
        .build_cartesian_2d(xa.clone(), ya.clone())
        .map_err(draw_err)?;

    let x_fmt = |v: &f64| xa.label_for(*v);
    let y_fmt = |v: &f64| ya.label_for(*v);
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(tick_font.clone())
        .axis_desc_style(desc_font)
        .bold_line_style(BLACK.mix(0.14))
        .light_line_style(BLACK.mix(0.05))
        .axis_style(BLACK.mix(0.8))
        .draw()
        .map_err(draw_err)?;

    if !has_data {
        let (w, h) = chart.plotting_area().dim_in_pixel();
        let grey = BLACK.mix(0.5);
        let style = TextStyle::from((FONT, 18).into_font())
            .color(&grey)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .strip_coord_spec()
            .draw_text("no data", &style, (w as i32 / 2, h as i32 / 2))
            .map_err(draw_err)?;
    }

    // Bands first so lines are drawn on top.
    for p in &prepared {
        for run in &p.band_runs {
            if run.len() < 2 {
                continue;
            }
            let mut poly: Vec<(f64, f64)> = run.iter().map(|&(x, _, u)| (x, u)).collect();
            poly.extend(run.iter().rev().map(|&(x, l, _)| (x, l.unwrap_or(ya.lo))));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    p.color.mix(0.2).filled(),
                )))
                .map_err(draw_err)?;
        }
    }

    let mut any_label = false;
    for p in &prepared {
        let style = p.color.stroke_width(2);
        let few = p.n_points <= 25;
        let mut first = true;
        // A series without plottable points still gets its legend entry.
        let empty: Vec<(f64, f64)> = Vec::new();
        let iter_segments: Vec<&Vec<(f64, f64)>> = if p.segments.is_empty() {
            vec![&empty]
        } else {
            p.segments.iter().collect()
        };
        for seg in iter_segments {
            let anno = if p.dashed {
                chart
                    .draw_series(DashedLineSeries::new(seg.iter().copied(), 8, 5, style))
                    .map_err(draw_err)?
            } else {
                chart
                    .draw_series(LineSeries::new(seg.iter().copied(), style))
                    .map_err(draw_err)?
            };
            if first && !p.label.is_empty() {
                any_label = true;
                let color = p.color;
                let dashed = p.dashed;
                let band = !p.band_runs.is_empty();
                anno.label(p.label.as_str()).legend(move |(x, y)| {
                    let line = ShapeStyle::from(&color).stroke_width(2);
                    let fill = if band {
                        color.mix(0.2).filled()
                    } else {
                        TRANSPARENT.filled()
                    };
                    let base = EmptyElement::at((x, y)) + Rectangle::new([(0, -6), (22, 6)], fill);
                    // Solid: two abutting halves; dashed: two dashes.
                    let (a, b) = if dashed { (8, 13) } else { (11, 11) };
                    base + PathElement::new(vec![(0, 0), (a, 0)], line)
                        + PathElement::new(vec![(b, 0), (22, 0)], line)
                });
            }
            first = false;
            // Isolated points (and short series) get markers so they are visible.
            if seg.len() == 1 || few {
                chart
                    .draw_series(seg.iter().map(|&c| Circle::new(c, 3, p.color.filled())))
                    .map_err(draw_err)?;
            }
        }
    }

    if any_label {
        let pos = pick_legend_corner(area, &prepared, &xa, &ya, &legend_font, &chart);
        chart
            .configure_series_labels()
            .position(pos)
            .label_font(legend_font)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.35))
            .legend_area_size(28)
            .margin(8)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Picks the plot corner whose legend-sized box covers the fewest data points.
fn pick_legend_corner<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
    area: &DrawingArea<DB, Shift>,
    prepared: &[Prepared],
    xa: &Axis,
    ya: &Axis,
    font: &FontDesc,
    chart: &ChartContext<DB, CT>,
) -> SeriesLabelPosition {
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let (pw, ph) = (pw.max(1) as f64, ph.max(1) as f64);
    let labels: Vec<&str> = prepared
        .iter()
        .filter(|p| !p.label.is_empty())
        .map(|p| p.label.as_str())
        .collect();
    let style = TextStyle::from(font.clone());
    let text_w = labels
        .iter()
        .map(|s| {
            area.estimate_text_size(s, &style)
                .map(|(w, _)| w)
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0) as f64;
    let line_h = area
        .estimate_text_size("Ag", &style)
        .map(|(_, h)| h)
        .unwrap_or(14) as f64;
    let lw = (text_w + 28.0 + 16.0 + 5.0) / pw;
    let lh = (line_h * 1.25 * labels.len() as f64 + 16.0 + 5.0) / ph;

    let nx = |x: f64| (x - xa.lo) / (xa.hi - xa.lo);
    let ny = |y: f64| (y - ya.lo) / (ya.hi - ya.lo);
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for p in prepared {
        for seg in &p.segments {
            for w in seg.windows(2) {
                for k in 0..4 {
                    let t = k as f64 / 4.0;
                    pts.push((
                        nx(w[0].0 + t * (w[1].0 - w[0].0)),
                        ny(w[0].1 + t * (w[1].1 - w[0].1)),
                    ));
                }
            }
            if let Some(&(x, y)) = seg.last() {
                pts.push((nx(x), ny(y)));
            }
        }
        for run in &p.band_runs {
            for &(x, l, u) in run {
                pts.push((nx(x), ny(u)));
                pts.push((nx(x), ny(l.unwrap_or(ya.lo))));
            }
        }
    }
    let candidates = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::LowerRight, true, false),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, right, upper) in candidates {
        let count = pts
            .iter()
            .filter(|&&(x, y)| {
                let in_x = if right { x >= 1.0 - lw } else { x <= lw };
                let in_y = if upper { y >= 1.0 - lh } else { y <= lh };
                in_x && in_y
            })
            .count();
        if count < best.0 {
            best = (count, pos);
        }
    }
    best.1
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn test_dir(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "efkit-plot-test-{}-{}-{}",
            std::process::id(),
            name,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn curve(label: &str, scale: f64, band: bool) -> Series {
        let x: Vec<f64> = (0..200).map(|i| 1.0 + i as f64 * 50.0).collect();
        let y: Vec<f64> = x.iter().map(|&t| scale * (1.0 / t.sqrt() + 1e-4)).collect();
        let band = band.then(|| {
            (
                y.iter().map(|v| v * 0.7).collect(),
                y.iter().map(|v| v * 1.4).collect(),
            )
        });
        Series {
            label: label.into(),
            x,
            y,
            band,
        }
    }

    fn check_outputs(svg: &Path, png: &Path) -> String {
        let png_bytes = std::fs::read(png).unwrap();
        assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG magic");
        let svg_text = std::fs::read_to_string(svg).unwrap();
        assert!(svg_text.starts_with("<svg") || svg_text.contains("<svg"));
        svg_text
    }

    #[test]
    fn renders_two_panels_with_log_axes_and_bands() {
        let dir = test_dir("two");
        let panels = vec![
            Panel {
                title: "Suboptimality vs bits".into(),
                x_label: "bits sent".into(),
                y_label: "f(x) - f*".into(),
                log_x: true,
                log_y: true,
                series: vec![
                    curve("EF21 top-k", 1.0, true),
                    curve("QSGD 4-bit", 3.0, true),
                    curve("uncompressed", 0.3, false),
                ],
            },
            Panel {
                title: "Gradient norm".into(),
                x_label: "iteration".into(),
                y_label: "||grad||²".into(),
                log_x: false,
                log_y: true,
                series: vec![curve("EF21 top-k", 2.0, true), curve("DIANA", 0.5, false)],
            },
        ];
        let (svg, png) = render(&panels, 2, &dir.join("fig")).unwrap();
        assert_eq!(svg, dir.join("fig.svg"));
        assert_eq!(png, dir.join("fig.png"));
        let text = check_outputs(&svg, &png);
        for label in ["EF21 top-k", "QSGD 4-bit", "uncompressed", "DIANA"] {
            assert!(
                text.contains(label),
                "legend label {label} missing from SVG"
            );
        }
        assert!(text.contains("Gradient norm"));
        // No temp files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
        // PNG dimensions: 2 panels side by side.
        let b = std::fs::read(&png).unwrap();
        let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
        assert_eq!((w, h), (1200, 450));
        // Re-rendering over existing files works (rename replaces).
        render(&panels, 2, &dir.join("fig")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn edge_cases_do_not_panic() {
        let dir = test_dir("edge");
        let s = |label: &str, x: Vec<f64>, y: Vec<f64>| Series {
            label: label.into(),
            x,
            y,
            band: None,
        };
        let nan = f64::NAN;
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![s("empty", vec![], vec![])],
            vec![s("single", vec![3.0], vec![0.5])],
            vec![s("zero single", vec![0.0], vec![0.0])],
            vec![s("flat", vec![1.0, 2.0, 3.0], vec![7.0, 7.0, 7.0])],
            vec![s("flat x", vec![2.0, 2.0, 2.0], vec![1.0, 2.0, 3.0])],
            vec![s(
                "nan",
                vec![1.0, 2.0, nan, 4.0],
                vec![nan, 1.0, 2.0, f64::INFINITY],
            )],
            vec![s("all nan", vec![nan, nan], vec![nan, nan])],
            vec![s("negative", vec![1.0, 2.0, 3.0], vec![-1.0, 0.0, -5.0])],
            vec![s("mismatched", vec![1.0, 2.0, 3.0], vec![1.0])],
            vec![s("huge", vec![1.0, 2.0], vec![1e308, -1e308])],
            vec![s("tiny", vec![1.0, 2.0], vec![1e-300, 2e-300])],
            vec![s("subnormal", vec![1.0, 2.0], vec![1e-320, 3e-320])],
            vec![s("mixed scale", vec![1e-200, 1e200], vec![1e-12, 1e250])],
            vec![s("close", vec![1.0, 2.0], vec![1.0, 1.0 + 1e-14])],
            vec![s("narrow log", vec![1.0, 2.0, 3.0], vec![3.1, 3.3, 3.5])],
            vec![Series {
                label: "bad band".into(),
                x: vec![1.0, 2.0, 3.0, 4.0],
                y: vec![1.0, 2.0, 3.0, 4.0],
                band: Some((vec![-1.0, nan, 2.0], vec![0.5, 3.0, nan, 5.0, 6.0])),
            }],
            (0..30)
                .map(|i| s(&format!("s{i}"), vec![1.0, 10.0], vec![i as f64 + 1.0, 2.0]))
                .collect(),
        ];
        for (i, series) in cases.into_iter().enumerate() {
            for (log_x, log_y) in [(false, false), (true, true), (false, true)] {
                let panel = Panel {
                    title: format!("case {i}"),
                    x_label: "x".into(),
                    y_label: "y".into(),
                    log_x,
                    log_y,
                    series: series.clone(),
                };
                let stem = dir.join(format!("case{i}-{log_x}-{log_y}"));
                let (svg, png) = render(&[panel], 1, &stem)
                    .unwrap_or_else(|e| panic!("case {i} ({log_x},{log_y}) failed: {e:#}"));
                check_outputs(&svg, &png);
            }
        }
        // No panels at all, and more columns than panels.
        let (svg, png) = render(&[], 3, &dir.join("none")).unwrap();
        check_outputs(&svg, &png);
        let (svg, png) = render(&[Panel::default()], 0, &dir.join("default")).unwrap();
        check_outputs(&svg, &png);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_ticks_are_sensible() {
        // Many decades: labels are powers of ten, at most 8 of them.
        let (major, _) = log_ticks(-12.3, 2.2);
        assert!(major.len() >= 3 && major.len() <= 8, "{major:?}");
        assert!(major
            .iter()
            .all(|(t, s)| t.fract() == 0.0 && s.starts_with("10")));
        // Three decades: every decade.
        let (major, minor) = log_ticks(-3.1, 0.2);
        let labels: Vec<&str> = major.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["10⁻³", "10⁻²", "10⁻¹", "10⁰"]);
        assert!(!minor.is_empty());
        // About one decade: 1-2-5 ticks.
        let (major, _) = log_ticks(0.1f64.log10(), 1.2f64.log10());
        let labels: Vec<&str> = major.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.5", "1"]);
        // The same below 10⁻³ stays scientific.
        let (major, _) = log_ticks(1e-5f64.log10(), 1.2e-4f64.log10());
        let labels: Vec<&str> = major.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["10⁻⁵", "2×10⁻⁵", "5×10⁻⁵", "10⁻⁴"]);
        // Narrow: still at least two labels.
        let (major, _) = log_ticks(3.1f64.log10(), 3.5f64.log10());
        assert!(major.len() >= 2, "{major:?}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(sci_label(1e-3), "10⁻³");
        assert_eq!(sci_label(2.5e-7), "2.5×10⁻⁷");
        assert_eq!(sci_label(3e12), "3×10¹²");
        assert_eq!(sci_label(0.0), "0");
        assert_eq!(sci_label(9.9996), "10¹");
        assert_eq!(plain_label(0.002), "0.002");
        assert_eq!(plain_label(300.0000001), "300");
        assert_eq!(plain_label(1.5), "1.5");
        let (step, ticks) = linear_ticks(0.0, 1.0);
        let l: Vec<String> = label_linear(&ticks, step)
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(l, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (step, ticks) = linear_ticks(-5000.0, 5000.0);
        let l: Vec<String> = label_linear(&ticks, step)
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(l, ["-4000", "-2000", "0", "2000", "4000"]);
        let (step, ticks) = linear_ticks(0.0, 3e-5);
        let l: Vec<String> = label_linear(&ticks, step)
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert!(l.iter().skip(1).all(|s| s.contains("10⁻")), "{l:?}");
    }

    #[test]
    fn metrics_roundtrip_and_errors() {
        let dir = test_dir("metrics");
        let p = dir.join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"step\": 0, \"loss\": 1.5}\n\n{\"step\": 1}\n{\"step\": 2, \"loss\": 0.5, \"eval\": {\"acc\": 0.9}}\n{\"step\": 3, \"loss\": null}\n",
        )
        .unwrap();
        let rows = read_metrics(&p).unwrap();
        assert_eq!(rows.len(), 4);
        let s = series_from_metrics(&rows, "step", "loss", "run");
        assert_eq!(s.x, [0.0, 2.0]);
        assert_eq!(s.y, [1.5, 0.5]);
        assert_eq!(s.label, "run");
        assert!(s.band.is_none());
        let s = series_from_metrics(&rows, "step", "eval.acc", "acc");
        assert_eq!((s.x, s.y), (vec![2.0], vec![0.9]));

        std::fs::write(&p, "{\"a\": 1}\n{\"a\": 2,\n").unwrap();
        let err = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(err.contains(":2:"), "{err}");
        std::fs::write(&p, "{\"a\": 1}\n[1, 2]\n").unwrap();
        let err = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(err.contains(":2:") && err.contains("array"), "{err}");
        assert!(read_metrics(&dir.join("missing.jsonl")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
