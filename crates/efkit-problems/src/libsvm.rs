//! LibSVM / SVMlight text format reader.
//!
//! Each non-blank line is `label idx:val idx:val ...` with 1-based, strictly
//! increasing feature indices; features not listed are zero. Tokens are
//! separated by ASCII whitespace, so trailing spaces (a9a, w8a, mushrooms),
//! `\r\n` line ends and a missing final newline (phishing) are all accepted,
//! and a line may hold a label only (a row without features: w8a). Blank lines
//! are skipped (they still count for line numbers).
//!
//! Labels are mapped as the EF21 authors' `generate_data.py` does
//! (algorithms.md §10.1): the smallest label becomes -1 and the largest +1, so
//! mushrooms (`1`/`2`) and phishing (`0`/`1`) become -1/+1
//! ([`LabelMode::Binary`], the default). [`LabelMode::Raw`] keeps labels as
//! they are (multi-class files, regression targets).
//!
//! Input is treated as hostile: any byte string gives a [`Dataset`] or a
//! [`ProblemError::Libsvm`] naming the file (when known) and the 1-based line
//! number; the reader never panics.

use std::path::Path;

use crate::csr::CsrBuilder;
use crate::datasets::Dataset;
use crate::error::{LibsvmErrorKind, ProblemError, Result};
use crate::io::{maybe_gunzip, read_maybe_gz};

/// How labels are turned into targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LabelMode {
    /// Exactly two distinct labels; the smaller becomes -1, the larger +1
    /// (a file whose only label is -1 or +1 is kept as is). A third distinct
    /// label is an error.
    #[default]
    Binary,
    /// Labels are kept unchanged (any number of distinct values).
    Raw,
}

/// Options of the LibSVM reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LibsvmOptions {
    /// Number of features (columns). `None`: the largest index in the file.
    /// `Some(d)`: the matrix gets exactly d columns (to align a test file that
    /// uses fewer features with its training file, e.g. a9a.t: 122 -> 123),
    /// and an index above d is an error.
    pub n_features: Option<usize>,
    /// How labels are mapped.
    pub labels: LabelMode,
}

impl LibsvmOptions {
    /// Options with a fixed number of features and binary labels.
    pub fn with_features(n_features: usize) -> Self {
        LibsvmOptions {
            n_features: Some(n_features),
            labels: LabelMode::Binary,
        }
    }
}

/// Reads a LibSVM file (plain or gzip) from disk. The dataset is named after
/// the file name.
pub fn read(path: impl AsRef<Path>, opts: &LibsvmOptions) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    let display = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| display.clone());
    parse_named(&bytes, opts, Some(&display), name)
}

/// Parses LibSVM bytes (plain or gzip). `file` names the input in errors and
/// becomes the dataset name (`"<memory>"` when `None`).
pub fn parse(bytes: &[u8], opts: &LibsvmOptions, file: Option<&str>) -> Result<Dataset> {
    let text = maybe_gunzip(bytes, file)?;
    let name = file.unwrap_or("<memory>").to_owned();
    parse_named(&text, opts, file, name)
}

/// At most this many bytes of a bad token are quoted in an error message.
const SNIPPET: usize = 40;

fn snippet(tok: &[u8]) -> String {
    let cut = &tok[..tok.len().min(SNIPPET)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if tok.len() > SNIPPET {
        s.push('…');
    }
    s
}

/// Parses a positive decimal integer that fits in `u32` (an optional leading
/// `+` is allowed). `None` for anything else.
fn parse_index(tok: &[u8]) -> Option<u32> {
    let digits = tok.strip_prefix(b"+").unwrap_or(tok);
    if digits.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
    }
    Some(v)
}

fn parse_f64(tok: &[u8]) -> Option<f64> {
    std::str::from_utf8(tok).ok()?.parse::<f64>().ok()
}

/// Normalised bit pattern for label identity (-0.0 == 0.0).
fn label_key(v: f64) -> u64 {
    if v == 0.0 {
        0
    } else {
        v.to_bits()
    }
}

fn parse_named(
    text: &[u8],
    opts: &LibsvmOptions,
    file: Option<&str>,
    name: String,
) -> Result<Dataset> {
    let err = |line: usize, kind: LibsvmErrorKind| ProblemError::Libsvm {
        file: file.map(str::to_owned),
        line,
        kind,
    };
    let mut b = CsrBuilder::new(opts.n_features.unwrap_or(0));
    let mut labels: Vec<f64> = Vec::new();
    // distinct labels seen so far (Binary mode only; at most two)
    let mut distinct: Vec<f64> = Vec::with_capacity(2);
    let mut line_no = 0usize;

    for line in text.split(|&c| c == b'\n') {
        line_no += 1;
        let mut toks = line
            .split(|c| c.is_ascii_whitespace())
            .filter(|t| !t.is_empty());
        let Some(label_tok) = toks.next() else {
            continue;
        };
        let label = match parse_f64(label_tok) {
            Some(v) if v.is_finite() => v,
            _ => return Err(err(line_no, LibsvmErrorKind::BadLabel(snippet(label_tok)))),
        };
        if opts.labels == LabelMode::Binary
            && !distinct.iter().any(|&d| label_key(d) == label_key(label))
        {
            if distinct.len() == 2 {
                let (first, second) = (distinct[0].min(distinct[1]), distinct[0].max(distinct[1]));
                return Err(err(
                    line_no,
                    LibsvmErrorKind::TooManyLabels {
                        label,
                        first,
                        second,
                    },
                ));
            }
            distinct.push(label);
        }
        let mut prev: Option<u32> = None;
        for tok in toks {
            let Some(colon) = tok.iter().position(|&c| c == b':') else {
                return Err(err(line_no, LibsvmErrorKind::BadToken(snippet(tok))));
            };
            let (itok, vtok) = (&tok[..colon], &tok[colon + 1..]);
            let index = parse_index(itok)
                .ok_or_else(|| err(line_no, LibsvmErrorKind::BadIndex(snippet(itok))))?;
            if index == 0 {
                return Err(err(line_no, LibsvmErrorKind::ZeroIndex));
            }
            if let Some(previous) = prev {
                if index <= previous {
                    return Err(err(
                        line_no,
                        LibsvmErrorKind::NonIncreasingIndex { previous, index },
                    ));
                }
            }
            if let Some(n_features) = opts.n_features {
                if index as usize > n_features {
                    return Err(err(
                        line_no,
                        LibsvmErrorKind::IndexOutOfRange { index, n_features },
                    ));
                }
            }
            let value = match parse_f64(vtok) {
                Some(v) if v.is_finite() => v,
                Some(_) => {
                    return Err(err(line_no, LibsvmErrorKind::NonFiniteValue(snippet(vtok))))
                }
                None => return Err(err(line_no, LibsvmErrorKind::BadValue(snippet(vtok)))),
            };
            prev = Some(index);
            b.push(index - 1, value);
        }
        b.finish_row();
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(err(line_no, LibsvmErrorKind::NoRows));
    }
    let x = b.build();
    let mapped = match opts.labels {
        LabelMode::Raw => labels.clone(),
        LabelMode::Binary => {
            let lo = distinct.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = distinct.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if distinct.len() == 1 && lo != 1.0 && lo != -1.0 {
                return Err(err(line_no, LibsvmErrorKind::SingleLabel(lo)));
            }
            if distinct.len() == 1 {
                labels.clone()
            } else {
                labels
                    .iter()
                    .map(|&l| {
                        if l == lo {
                            -1.0
                        } else if l == hi {
                            1.0
                        } else {
                            l
                        }
                    })
                    .collect()
            }
        }
    };
    Ok(Dataset::with_original_labels(name, x, mapped, &labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Dataset> {
        parse(s.as_bytes(), &LibsvmOptions::default(), Some("t.txt"))
    }

    fn kind(s: &str, opts: LibsvmOptions) -> (usize, LibsvmErrorKind) {
        match parse(s.as_bytes(), &opts, Some("t.txt")) {
            Err(ProblemError::Libsvm { line, kind, file }) => {
                assert_eq!(file.as_deref(), Some("t.txt"));
                (line, kind)
            }
            other => panic!("expected a LibSVM error for {s:?}, got {other:?}"),
        }
    }

    fn k(s: &str) -> (usize, LibsvmErrorKind) {
        kind(s, LibsvmOptions::default())
    }

    #[test]
    fn parses_quirks() {
        // trailing spaces, empty row, no final newline, CRLF, blank line, tabs
        let d = p("-1 3:1 7:0.5 \n+1 \r\n\n-1\t1:2e-1\t2:-3").unwrap();
        assert_eq!(d.n_rows(), 3);
        assert_eq!(d.n_features(), 7);
        assert_eq!(d.x().nnz(), 4);
        assert_eq!(d.y(), &[-1.0, 1.0, -1.0]);
        assert_eq!(d.x().row(0), (&[2u32, 6][..], &[1.0, 0.5][..]));
        assert_eq!(d.x().row(1).0.len(), 0);
        assert_eq!(d.x().row(2), (&[0u32, 1][..], &[0.2, -3.0][..]));
        assert_eq!(d.name(), "t.txt");
    }

    #[test]
    fn maps_labels_by_min_max() {
        let d = p("2 1:1\n1 2:1\n2 1:1\n").unwrap();
        assert_eq!(d.y(), &[1.0, -1.0, 1.0]);
        let counts: Vec<(f64, usize)> = d.classes().iter().map(|c| (c.original, c.count)).collect();
        assert_eq!(counts, vec![(1.0, 1), (2.0, 2)]);
        assert_eq!(d.classes()[0].mapped, -1.0);
        let d = p("0 1:1\n1 2:1\n").unwrap();
        assert_eq!(d.y(), &[-1.0, 1.0]);
        let d = p("1.0 1:1\n-1.0 2:1\n").unwrap();
        assert_eq!(d.y(), &[1.0, -1.0]);
        // single label already +-1 is kept
        assert_eq!(p("-1 1:1\n-1 1:2\n").unwrap().y(), &[-1.0, -1.0]);
        // raw mode keeps multi-class labels
        let raw = LibsvmOptions {
            n_features: None,
            labels: LabelMode::Raw,
        };
        let d = parse(b"3 1:1\n7 1:1\n5 1:1\n", &raw, None).unwrap();
        assert_eq!(d.y(), &[3.0, 7.0, 5.0]);
        assert_eq!(d.classes().len(), 3);
    }

    #[test]
    fn n_features_aligns_and_limits() {
        let d = parse(
            b"1 1:1\n-1 122:1\n",
            &LibsvmOptions::with_features(123),
            None,
        )
        .unwrap();
        assert_eq!(d.n_features(), 123);
        let (line, kd) = kind("1 1:1\n-1 124:1\n", LibsvmOptions::with_features(123));
        assert_eq!(line, 2);
        assert_eq!(
            kd,
            LibsvmErrorKind::IndexOutOfRange {
                index: 124,
                n_features: 123
            }
        );
    }

    #[test]
    fn malformed_inputs_name_the_line() {
        assert!(matches!(
            k("1 1:1\nabc 1:1\n"),
            (2, LibsvmErrorKind::BadLabel(_))
        ));
        assert!(matches!(k("nan 1:1\n"), (1, LibsvmErrorKind::BadLabel(_))));
        assert!(matches!(k("inf 1:1\n"), (1, LibsvmErrorKind::BadLabel(_))));
        assert!(matches!(
            k("1 1:1\n-1 0:1\n"),
            (2, LibsvmErrorKind::ZeroIndex)
        ));
        assert_eq!(
            k("1 1:1\n\n-1 3:1 2:1\n"),
            (
                3,
                LibsvmErrorKind::NonIncreasingIndex {
                    previous: 3,
                    index: 2
                }
            )
        );
        assert_eq!(
            k("1 3:1 3:1\n"),
            (
                1,
                LibsvmErrorKind::NonIncreasingIndex {
                    previous: 3,
                    index: 3
                }
            )
        );
        assert!(matches!(k("1 1:x\n"), (1, LibsvmErrorKind::BadValue(_))));
        assert!(matches!(k("1 1:\n"), (1, LibsvmErrorKind::BadValue(_))));
        assert!(matches!(
            k("1 1:1e999\n"),
            (1, LibsvmErrorKind::NonFiniteValue(_))
        ));
        assert!(matches!(
            k("1 1:NaN\n"),
            (1, LibsvmErrorKind::NonFiniteValue(_))
        ));
        assert!(matches!(
            k("1 1:-inf\n"),
            (1, LibsvmErrorKind::NonFiniteValue(_))
        ));
        assert!(matches!(k("1 1\n"), (1, LibsvmErrorKind::BadToken(_))));
        assert!(matches!(k("1 a:1\n"), (1, LibsvmErrorKind::BadIndex(_))));
        assert!(matches!(k("1 -2:1\n"), (1, LibsvmErrorKind::BadIndex(_))));
        assert!(matches!(k("1 :1\n"), (1, LibsvmErrorKind::BadIndex(_))));
        assert!(matches!(
            k("1 4294967296:1\n"),
            (1, LibsvmErrorKind::BadIndex(_))
        ));
        assert!(matches!(
            k("1 1:1\n2 1:1\n3 1:1\n"),
            (3, LibsvmErrorKind::TooManyLabels { label, first, second })
                if label == 3.0 && first == 1.0 && second == 2.0
        ));
        assert!(matches!(k("0 1:1\n0 2:1"), (2, LibsvmErrorKind::SingleLabel(l)) if l == 0.0));
        assert!(matches!(k(""), (1, LibsvmErrorKind::NoRows)));
        assert!(matches!(k(" \n\n"), (3, LibsvmErrorKind::NoRows)));
        assert!(matches!(
            k("1 1:\u{ff}\n"),
            (1, LibsvmErrorKind::BadValue(_))
        ));
        let e = p("1 1:1\n-1 0:1\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert_eq!(
            e.to_string(),
            "t.txt: line 2: feature index 0 (LibSVM indices are 1-based)"
        );
    }

    #[test]
    fn long_tokens_are_truncated_in_messages() {
        let long = "x".repeat(10_000);
        let e = p(&format!("1 1:{long}\n")).unwrap_err();
        assert!(e.to_string().len() < 200);
    }

    #[test]
    fn huge_index_does_not_allocate_columns() {
        let d = p("1 4294967295:1\n-1 1:1\n").unwrap();
        assert_eq!(d.n_features(), 4_294_967_295);
    }
}
