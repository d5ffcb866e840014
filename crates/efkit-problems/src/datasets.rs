//! Datasets: the in-memory [`Dataset`] type, the LibSVM sets bundled in the
//! binary, loading by name or path, and summaries ([`inspect`]).
//!
//! The four LibSVM training sets of the EF21 experiments (algorithms.md §10.1)
//! and the two test splits are embedded with `include_bytes!` (about 1.1 MB of
//! gzip), so the library works from any directory without the repository:
//!
//! | name | rows | features | nnz | labels in file |
//! |---|---:|---:|---:|---|
//! | `a9a` | 32,561 | 123 | 451,592 | -1: 24,720, +1: 7,841 |
//! | `a9a.t` | 16,281 | 123 (file uses 122) | 225,731 | -1: 12,435, +1: 3,846 |
//! | `w8a` | 49,749 | 300 | 579,586 | -1: 48,270, +1: 1,479 |
//! | `w8a.t` | 14,951 | 300 | 174,276 | -1: 14,497, +1: 454 |
//! | `mushrooms` | 8,124 | 112 | 170,604 | 1: 3,916, 2: 4,208 |
//! | `phishing` | 11,055 | 68 | 331,650 | 0: 4,898, 1: 6,157 |
//!
//! Labels are mapped to -1/+1 by min/max (see [`crate::libsvm`]); test splits
//! get the feature count of their training set. Provenance, terms and
//! checksums are in the repository's `data/README.md`.

use std::fmt;
use std::path::Path;

use crate::csr::CsrMatrix;
use crate::error::{ProblemError, Result};
use crate::libsvm::{self, LabelMode, LibsvmOptions};

/// A labelled data matrix: rows are samples a_j, `y` the targets used by the
/// losses (labels after mapping), and the original labels as in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    name: String,
    x: CsrMatrix,
    y: Vec<f64>,
    y_original: Vec<f64>,
}

/// One distinct label of a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelClass {
    /// The label as written in the file.
    pub original: f64,
    /// The target it was mapped to (-1/+1 for binary sets).
    pub mapped: f64,
    /// Number of rows with this label.
    pub count: usize,
}

impl Dataset {
    /// A dataset whose targets are `y` (original labels = targets).
    ///
    /// Errors if `y` has the wrong length or a non-finite entry.
    pub fn new(name: impl Into<String>, x: CsrMatrix, y: Vec<f64>) -> Result<Self> {
        if y.len() != x.n_rows() {
            return Err(ProblemError::invalid(
                "y",
                format!("{} labels for {} rows", y.len(), x.n_rows()),
            ));
        }
        if let Some(j) = y.iter().position(|v| !v.is_finite()) {
            return Err(ProblemError::invalid(
                "y",
                format!("label {j} is not finite"),
            ));
        }
        let y_original = y.clone();
        Ok(Dataset {
            name: name.into(),
            x,
            y,
            y_original,
        })
    }

    /// Internal constructor used by readers (lengths are correct by construction).
    pub(crate) fn with_original_labels(
        name: String,
        x: CsrMatrix,
        y: Vec<f64>,
        original: &[f64],
    ) -> Self {
        debug_assert_eq!(y.len(), x.n_rows());
        debug_assert_eq!(original.len(), x.n_rows());
        Dataset {
            name,
            x,
            y,
            y_original: original.to_vec(),
        }
    }

    /// Name (bundled name or file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data matrix A (rows = samples).
    pub fn x(&self) -> &CsrMatrix {
        &self.x
    }

    /// Targets (mapped labels), one per row.
    pub fn y(&self) -> &[f64] {
        &self.y
    }

    /// Labels as written in the file, one per row.
    pub fn original_labels(&self) -> &[f64] {
        &self.y_original
    }

    /// Number of rows N.
    pub fn n_rows(&self) -> usize {
        self.x.n_rows()
    }

    /// Number of features d.
    pub fn n_features(&self) -> usize {
        self.x.n_cols()
    }

    /// Distinct labels in ascending order of the original label, with counts.
    pub fn classes(&self) -> Vec<LabelClass> {
        let mut pairs: Vec<(f64, f64)> = self
            .y_original
            .iter()
            .copied()
            .zip(self.y.iter().copied())
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut out: Vec<LabelClass> = Vec::new();
        for (o, m) in pairs {
            match out.last_mut() {
                Some(c) if c.original == o && c.mapped == m => c.count += 1,
                _ => out.push(LabelClass {
                    original: o,
                    mapped: m,
                    count: 1,
                }),
            }
        }
        out
    }

    /// The rows `rows` (in that order) as a new dataset.
    ///
    /// # Panics
    /// If a row index is out of range.
    #[track_caller]
    pub fn select_rows(&self, rows: &[usize]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            x: self.x.select_rows(rows),
            y: rows.iter().map(|&r| self.y[r]).collect(),
            y_original: rows.iter().map(|&r| self.y_original[r]).collect(),
        }
    }

    /// Splits into the matrix and the targets.
    pub fn into_parts(self) -> (CsrMatrix, Vec<f64>) {
        (self.x, self.y)
    }

    /// Rows, features, nnz and label counts.
    pub fn info(&self) -> DatasetInfo {
        DatasetInfo {
            name: self.name.clone(),
            rows: self.n_rows(),
            features: self.n_features(),
            nnz: self.x.nnz(),
            label_counts: self
                .classes()
                .iter()
                .map(|c| (c.original, c.count))
                .collect(),
        }
    }
}

/// A dataset embedded in the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundledDataset {
    /// Name used by [`load`] (`a9a`, `a9a.t`, ...).
    pub name: &'static str,
    /// Number of features the dataset is loaded with.
    pub n_features: usize,
    /// Number of rows.
    pub rows: usize,
    /// For a test split: the name of its training set.
    pub test_of: Option<&'static str>,
    /// One-line description.
    pub description: &'static str,
    bytes: &'static [u8],
}

impl BundledDataset {
    /// The embedded gzip bytes (exactly the file in `data/libsvm/`).
    pub fn gz_bytes(&self) -> &'static [u8] {
        self.bytes
    }
}

static BUNDLED: [BundledDataset; 6] = [
    BundledDataset {
        name: "a9a",
        n_features: 123,
        rows: 32_561,
        test_of: None,
        description: "UCI Adult (Platt 1998 preprocessing), income > 50K",
        bytes: include_bytes!("../../../data/libsvm/a9a.gz"),
    },
    BundledDataset {
        name: "w8a",
        n_features: 300,
        rows: 49_749,
        test_of: None,
        description: "web page classification (Platt 1998)",
        bytes: include_bytes!("../../../data/libsvm/w8a.gz"),
    },
    BundledDataset {
        name: "mushrooms",
        n_features: 112,
        rows: 8_124,
        test_of: None,
        description: "UCI Mushroom, edible vs poisonous (labels 1/2)",
        bytes: include_bytes!("../../../data/libsvm/mushrooms.gz"),
    },
    BundledDataset {
        name: "phishing",
        n_features: 68,
        rows: 11_055,
        test_of: None,
        description: "UCI Phishing Websites (labels 0/1, unit-norm rows)",
        bytes: include_bytes!("../../../data/libsvm/phishing.gz"),
    },
    BundledDataset {
        name: "a9a.t",
        n_features: 123,
        rows: 16_281,
        test_of: Some("a9a"),
        description: "test split of a9a (file uses 122 features; aligned to 123)",
        bytes: include_bytes!("../../../data/libsvm/a9a.t.gz"),
    },
    BundledDataset {
        name: "w8a.t",
        n_features: 300,
        rows: 14_951,
        test_of: Some("w8a"),
        description: "test split of w8a",
        bytes: include_bytes!("../../../data/libsvm/w8a.t.gz"),
    },
];

/// The bundled datasets: the training sets `a9a`, `w8a`, `mushrooms`,
/// `phishing`, then the test splits `a9a.t`, `w8a.t`.
pub fn list() -> &'static [BundledDataset] {
    &BUNDLED
}

/// The bundled dataset called `name`, if any.
pub fn bundled(name: &str) -> Option<&'static BundledDataset> {
    BUNDLED.iter().find(|b| b.name == name)
}

fn allowed_names() -> String {
    BUNDLED
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a bundled dataset by name, or else a LibSVM file (plain or gzip) at
/// the path `name`, with binary labels and the file's own feature count.
pub fn load(name: &str) -> Result<Dataset> {
    if let Some(b) = bundled(name) {
        return load_bundled(b);
    }
    let path = Path::new(name);
    if path.is_file() {
        return libsvm::read(path, &LibsvmOptions::default());
    }
    Err(ProblemError::UnknownDataset {
        name: name.to_owned(),
        allowed: allowed_names(),
    })
}

/// Loads a bundled dataset (binary labels, its listed feature count).
pub fn load_bundled(b: &BundledDataset) -> Result<Dataset> {
    let opts = LibsvmOptions {
        n_features: Some(b.n_features),
        labels: LabelMode::Binary,
    };
    let label = format!("{} (bundled)", b.name);
    let mut d = libsvm::parse(b.bytes, &opts, Some(&label))?;
    d.name = b.name.to_owned();
    Ok(d)
}

/// Loads a LibSVM file from a path with explicit options.
pub fn load_path(path: impl AsRef<Path>, opts: &LibsvmOptions) -> Result<Dataset> {
    libsvm::read(path, opts)
}

/// Summary of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    /// Dataset name.
    pub name: String,
    /// Number of rows N.
    pub rows: usize,
    /// Number of features d.
    pub features: usize,
    /// Stored entries.
    pub nnz: usize,
    /// Distinct labels (original values, as in the file, ascending) with
    /// their counts.
    pub label_counts: Vec<(f64, usize)>,
}

impl DatasetInfo {
    /// Fraction of stored entries, nnz / (N d).
    pub fn density(&self) -> f64 {
        self.nnz as f64 / (self.rows as f64 * self.features as f64)
    }
}

impl fmt::Display for DatasetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset  {}", self.name)?;
        writeln!(f, "rows     {}", self.rows)?;
        writeln!(f, "features {}", self.features)?;
        writeln!(f, "nnz      {} (density {:.4})", self.nnz, self.density())?;
        write!(f, "labels  ")?;
        for (label, count) in &self.label_counts {
            write!(f, " {label}: {count}")?;
        }
        Ok(())
    }
}

/// Rows, features, nnz and label counts of a bundled dataset or a LibSVM
/// file (see [`load`]).
pub fn inspect(name: &str) -> Result<DatasetInfo> {
    Ok(load(name)?.info())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of /work/shared/data/README.md §1.1 (copied into data/README.md).
    #[test]
    fn bundled_counts_match_data_readme() {
        type Row = (&'static str, usize, usize, usize, &'static [(f64, usize)]);
        let want: &[Row] = &[
            ("a9a", 32_561, 123, 451_592, &[(-1.0, 24_720), (1.0, 7_841)]),
            (
                "a9a.t",
                16_281,
                123,
                225_731,
                &[(-1.0, 12_435), (1.0, 3_846)],
            ),
            ("w8a", 49_749, 300, 579_586, &[(-1.0, 48_270), (1.0, 1_479)]),
            ("w8a.t", 14_951, 300, 174_276, &[(-1.0, 14_497), (1.0, 454)]),
            (
                "mushrooms",
                8_124,
                112,
                170_604,
                &[(1.0, 3_916), (2.0, 4_208)],
            ),
            (
                "phishing",
                11_055,
                68,
                331_650,
                &[(0.0, 4_898), (1.0, 6_157)],
            ),
        ];
        assert_eq!(list().len(), want.len());
        for &(name, rows, features, nnz, labels) in want {
            let d = load(name).unwrap();
            let info = inspect(name).unwrap();
            assert_eq!(info, d.info());
            assert_eq!(info.name, name);
            assert_eq!(
                (info.rows, info.features, info.nnz),
                (rows, features, nnz),
                "{name}"
            );
            assert_eq!(bundled(name).unwrap().rows, rows);
            assert_eq!(info.label_counts, labels, "{name}");
            let classes = d.classes();
            assert_eq!((classes[0].mapped, classes[1].mapped), (-1.0, 1.0));
            assert!(d.y().iter().all(|&v| v == 1.0 || v == -1.0));
        }
    }

    #[test]
    fn dataset_quirks() {
        let w = load("w8a").unwrap();
        let empty = (0..w.n_rows())
            .filter(|&j| w.x().row(j).0.is_empty())
            .count();
        assert_eq!(empty, 4_203);
        let wt = load("w8a.t").unwrap();
        assert_eq!(
            (0..wt.n_rows())
                .filter(|&j| wt.x().row(j).0.is_empty())
                .count(),
            1_252
        );
        let p = load("phishing").unwrap();
        assert!((0..p.n_rows()).all(|j| p.x().row(j).0.len() == 30));
        assert!(p.x().values().iter().all(|&v| v == 0.18257));
        let a = load("a9a.t").unwrap();
        assert!(a.x().indices().iter().all(|&c| c < 122));
    }

    #[test]
    fn unknown_names_and_paths() {
        let e = load("nope").unwrap_err();
        assert!(matches!(e, ProblemError::UnknownDataset { .. }));
        assert!(
            e.to_string()
                .contains("a9a, w8a, mushrooms, phishing, a9a.t, w8a.t"),
            "{e}"
        );
        // a real file path is read as LibSVM (gzip detected by magic bytes)
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/libsvm/mushrooms.gz"
        );
        let d = load(path).unwrap();
        assert_eq!(d.n_rows(), 8_124);
        assert_eq!(d.name(), "mushrooms.gz");
        assert_eq!(d.x(), load("mushrooms").unwrap().x());
    }

    #[test]
    fn select_rows_keeps_labels() {
        let d = load("mushrooms").unwrap();
        let s = d.select_rows(&[0, 5, 2]);
        assert_eq!(s.n_rows(), 3);
        assert_eq!(s.y(), &[d.y()[0], d.y()[5], d.y()[2]]);
        assert_eq!(s.original_labels()[1], d.original_labels()[5]);
        assert_eq!(s.x().row(1), d.x().row(5));
        let info = d.info().to_string();
        assert!(info.contains("rows     8124"), "{info}");
    }
}
