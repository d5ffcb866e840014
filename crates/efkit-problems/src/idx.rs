//! IDX reader (the MNIST file format) and the MNIST loader.
//!
//! An IDX file is a 4-byte magic number `00 00 TT ND` (TT = 0x08 unsigned
//! bytes, ND = number of dimensions), ND big-endian `u32` dimensions, then the
//! data in row-major order. MNIST uses magic 2049 (`0x0801`: labels, one
//! dimension) and 2051 (`0x0803`: images, N x 28 x 28). Files may be gzip
//! (detected by magic bytes) or raw. Sizes are checked exactly: a truncated
//! or over-long data section is an error, as is any other magic.
//!
//! MNIST itself (LeCun, Cortes, Burges) is not embedded in the binary (about
//! 11.6 MB of gzip); [`mnist_dir`] finds it in `$EFKIT_DATA_DIR` or in the
//! repository's `data/` folder.

use std::path::{Path, PathBuf};

use crate::csr::CsrBuilder;
use crate::datasets::Dataset;
use crate::error::{IdxErrorKind, ProblemError, Result};
use crate::io::{maybe_gunzip, read_maybe_gz};

/// Magic number of an IDX file of unsigned-byte labels (one dimension).
pub const MAGIC_LABELS: u32 = 2049;
/// Magic number of an IDX file of unsigned-byte images (three dimensions).
pub const MAGIC_IMAGES: u32 = 2051;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<u32>,
    /// The data, row-major.
    pub data: Vec<u8>,
}

fn idx_err(file: Option<&str>, kind: IdxErrorKind) -> ProblemError {
    ProblemError::Idx {
        file: file.map(str::to_owned),
        kind,
    }
}

/// Parses IDX bytes (gzip or raw) and checks the magic number against
/// `expected_magic` ([`MAGIC_LABELS`] or [`MAGIC_IMAGES`]). `file` names the
/// input in errors.
pub fn parse_idx(bytes: &[u8], expected_magic: u32, file: Option<&str>) -> Result<IdxArray> {
    let raw = maybe_gunzip(bytes, file)?;
    let raw: &[u8] = &raw;
    if raw.len() < 4 {
        return Err(idx_err(
            file,
            IdxErrorKind::TruncatedHeader {
                len: raw.len(),
                needed: 4,
            },
        ));
    }
    let magic = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if magic != expected_magic {
        return Err(idx_err(
            file,
            IdxErrorKind::BadMagic {
                found: magic,
                expected: expected_magic,
            },
        ));
    }
    let nd = (magic & 0xff) as usize;
    let header = 4 + 4 * nd;
    if raw.len() < header {
        return Err(idx_err(
            file,
            IdxErrorKind::TruncatedHeader {
                len: raw.len(),
                needed: header,
            },
        ));
    }
    let dims: Vec<u32> = raw[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // u32 dims: the product of up to 255 of them can overflow u64; saturate.
    let expected = dims
        .iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(u64::from(d)));
    let found = (raw.len() - header) as u64;
    if expected != found {
        return Err(idx_err(
            file,
            IdxErrorKind::SizeMismatch {
                dims,
                expected,
                found,
            },
        ));
    }
    Ok(IdxArray {
        dims,
        data: raw[header..].to_vec(),
    })
}

/// Reads an IDX file from disk (gzip or raw).
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, expected_magic, Some(&path.display().to_string()))
}

/// The two halves of MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MnistSplit {
    /// 60,000 training images.
    Train,
    /// 10,000 test images (`t10k`).
    Test,
}

impl MnistSplit {
    /// The (images, labels) file stems, without `.gz`.
    pub fn file_stems(self) -> (&'static str, &'static str) {
        match self {
            MnistSplit::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            MnistSplit::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// MNIST images and labels of one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// Number of images.
    pub n: usize,
    /// Image height (28).
    pub rows: usize,
    /// Image width (28).
    pub cols: usize,
    /// Pixels 0..=255, image after image, row-major (`n * rows * cols`).
    pub images: Vec<u8>,
    /// Digit labels 0..=9.
    pub labels: Vec<u8>,
}

impl Mnist {
    /// Checks and combines an images array (magic 2051) and a labels array
    /// (magic 2049).
    /// `files` names the (images, labels) files in errors.
    pub fn from_arrays(
        images: IdxArray,
        labels: IdxArray,
        files: Option<(&str, &str)>,
    ) -> Result<Mnist> {
        let both = files.map(|(i, l)| format!("{i} and {l}"));
        let inconsistent = |m: String| idx_err(both.as_deref(), IdxErrorKind::Inconsistent(m));
        if images.dims.len() != 3 || labels.dims.len() != 1 {
            return Err(inconsistent(format!(
                "image dims {:?}, label dims {:?}",
                images.dims, labels.dims
            )));
        }
        if images.dims[0] != labels.dims[0] {
            return Err(inconsistent(format!(
                "{} images but {} labels",
                images.dims[0], labels.dims[0]
            )));
        }
        if let Some(index) = labels.data.iter().position(|&l| l > 9) {
            return Err(idx_err(
                files.map(|(_, l)| l),
                IdxErrorKind::BadLabel {
                    index,
                    label: labels.data[index],
                    max: 9,
                },
            ));
        }
        Ok(Mnist {
            n: images.dims[0] as usize,
            rows: images.dims[1] as usize,
            cols: images.dims[2] as usize,
            images: images.data,
            labels: labels.data,
        })
    }

    /// Label counts for digits 0..=9.
    pub fn label_counts(&self) -> [usize; 10] {
        let mut c = [0usize; 10];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The images as a sparse dataset: pixel / 255 in [0, 1] (zeros not
    /// stored), `rows * cols` features, digit labels kept as targets 0..9.
    pub fn to_dataset(&self, name: &str) -> Dataset {
        let d = self.rows * self.cols;
        let mut b = CsrBuilder::new(d);
        for img in self.images.chunks_exact(d.max(1)).take(self.n) {
            for (k, &p) in img.iter().enumerate() {
                if p != 0 {
                    b.push(k as u32, f64::from(p) / 255.0);
                }
            }
            b.finish_row();
        }
        let y: Vec<f64> = self.labels.iter().map(|&l| f64::from(l)).collect();
        Dataset::with_original_labels(name.to_owned(), b.build(), y.clone(), &y)
    }
}

/// Environment variable naming the efkit data folder (the one holding `mnist/`).
pub const DATA_DIR_ENV: &str = "EFKIT_DATA_DIR";

/// The repository's data folder as seen at compile time.
pub fn repo_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("data")
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_owned()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// The folder holding the MNIST files of `split` (`.gz` or raw names):
/// `$EFKIT_DATA_DIR/mnist`, then `$EFKIT_DATA_DIR`, then the repository's
/// `data/mnist`. Errors with the list of folders tried.
pub fn mnist_dir(split: MnistSplit) -> Result<PathBuf> {
    mnist_dir_with(std::env::var_os(DATA_DIR_ENV).map(PathBuf::from), split)
}

/// [`mnist_dir`] with the value of `EFKIT_DATA_DIR` given explicitly.
fn mnist_dir_with(env: Option<PathBuf>, split: MnistSplit) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(base) = env {
        tried.push(base.join("mnist"));
        tried.push(base);
    }
    tried.push(repo_data_dir().join("mnist"));
    let (img, lab) = split.file_stems();
    for dir in &tried {
        if find_file(dir, img).is_some() && find_file(dir, lab).is_some() {
            return Ok(dir.clone());
        }
    }
    Err(ProblemError::DataNotFound {
        what: format!("MNIST files {img}(.gz), {lab}(.gz)"),
        tried,
    })
}

/// Loads one split of MNIST from `dir` (see [`mnist_dir`]).
pub fn load_mnist_from(dir: &Path, split: MnistSplit) -> Result<Mnist> {
    let (img, lab) = split.file_stems();
    let missing = || ProblemError::DataNotFound {
        what: format!("MNIST files {img}(.gz), {lab}(.gz)"),
        tried: vec![dir.to_path_buf()],
    };
    let ip = find_file(dir, img).ok_or_else(missing)?;
    let lp = find_file(dir, lab).ok_or_else(missing)?;
    let images = read_idx(&ip, MAGIC_IMAGES)?;
    let labels = read_idx(&lp, MAGIC_LABELS)?;
    let (ipath, lpath) = (ip.display().to_string(), lp.display().to_string());
    Mnist::from_arrays(images, labels, Some((&ipath, &lpath)))
}

/// Loads one split of MNIST from the folder found by [`mnist_dir`].
pub fn load_mnist(split: MnistSplit) -> Result<Mnist> {
    load_mnist_from(&mnist_dir(split)?, split)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_checks_sizes() {
        let a = parse_idx(&idx(2049, &[3], &[1, 2, 3]), MAGIC_LABELS, None).unwrap();
        assert_eq!(a.dims, vec![3]);
        assert_eq!(a.data, vec![1, 2, 3]);
        let img = parse_idx(&idx(2051, &[2, 1, 2], &[0, 255, 7, 0]), MAGIC_IMAGES, None).unwrap();
        let m = Mnist::from_arrays(
            img.clone(),
            parse_idx(&idx(2049, &[2], &[4, 9]), 2049, None).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!((m.n, m.rows, m.cols), (2, 1, 2));
        let d = m.to_dataset("tiny");
        assert_eq!(d.x().nnz(), 2);
        assert_eq!(d.x().row(0), (&[1u32][..], &[1.0][..]));
        assert_eq!(d.y(), &[4.0, 9.0]);

        let err = |b: &[u8], m: u32| match parse_idx(b, m, Some("f")) {
            Err(ProblemError::Idx { kind, file }) => {
                assert_eq!(file.as_deref(), Some("f"));
                kind
            }
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            err(&idx(2049, &[4], &[1, 2, 3]), 2049),
            IdxErrorKind::SizeMismatch {
                expected: 4,
                found: 3,
                ..
            }
        ));
        assert!(matches!(
            err(&idx(2049, &[2], &[1, 2, 3]), 2049),
            IdxErrorKind::SizeMismatch { .. }
        ));
        assert!(matches!(
            err(&idx(2051, &[3], &[1, 2, 3]), 2049),
            IdxErrorKind::BadMagic { found: 2051, .. }
        ));
        assert!(matches!(
            err(&[0, 0, 8], 2049),
            IdxErrorKind::TruncatedHeader { len: 3, needed: 4 }
        ));
        assert!(matches!(
            err(&idx(2051, &[], &[0, 0, 0, 1]), 2051),
            IdxErrorKind::TruncatedHeader { needed: 16, .. }
        ));
        let huge = idx(2051, &[u32::MAX, u32::MAX, u32::MAX], &[]);
        assert!(matches!(
            err(&huge, 2051),
            IdxErrorKind::SizeMismatch { .. }
        ));
        // labels > 9 and count mismatches
        let l3 = parse_idx(&idx(2049, &[2], &[4, 10]), 2049, None).unwrap();
        assert!(Mnist::from_arrays(img.clone(), l3, None).is_err());
        let l1 = parse_idx(&idx(2049, &[1], &[4]), 2049, None).unwrap();
        assert!(Mnist::from_arrays(img, l1, None).is_err());
    }

    /// A bad label is reported in the labels file (found by review: the
    /// images file was named).
    #[test]
    fn a_bad_label_names_the_labels_file() {
        let dir = std::env::temp_dir().join(format!("efkit-idx-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (img, lab) = MnistSplit::Test.file_stems();
        std::fs::write(dir.join(img), idx(2051, &[2, 1, 2], &[0, 255, 7, 0])).unwrap();
        std::fs::write(dir.join(lab), idx(2049, &[2], &[3, 11])).unwrap();
        let e = load_mnist_from(&dir, MnistSplit::Test)
            .unwrap_err()
            .to_string();
        assert!(e.contains(lab) && !e.contains(img), "{e}");
        assert!(e.contains("label 11"), "{e}");
        std::fs::write(dir.join(lab), idx(2049, &[3], &[3, 1, 2])).unwrap();
        let e = load_mnist_from(&dir, MnistSplit::Test)
            .unwrap_err()
            .to_string();
        assert!(e.contains(lab) && e.contains(img), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bundled_mnist_files() {
        let dir = mnist_dir(MnistSplit::Train).unwrap();
        let train = load_mnist_from(&dir, MnistSplit::Train).unwrap();
        assert_eq!((train.n, train.rows, train.cols), (60_000, 28, 28));
        assert_eq!(train.images.len(), 60_000 * 784);
        assert_eq!(train.labels[0], 5);
        assert_eq!(
            train.label_counts(),
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        );
        let test = load_mnist(MnistSplit::Test).unwrap();
        assert_eq!((test.n, test.rows, test.cols), (10_000, 28, 28));
        assert_eq!(test.labels[0], 7);
        assert_eq!(
            test.label_counts(),
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        let d = test.to_dataset("mnist.t");
        assert_eq!((d.n_rows(), d.n_features()), (10_000, 784));
        assert!(d.x().values().iter().all(|&v| v > 0.0 && v <= 1.0));
    }

    #[test]
    fn data_dir_resolution() {
        let repo = repo_data_dir();
        // EFKIT_DATA_DIR pointing at the data folder or at the mnist folder itself
        assert_eq!(
            mnist_dir_with(Some(repo.clone()), MnistSplit::Test).unwrap(),
            repo.join("mnist")
        );
        assert_eq!(
            mnist_dir_with(Some(repo.join("mnist")), MnistSplit::Test).unwrap(),
            repo.join("mnist")
        );
        // a wrong EFKIT_DATA_DIR falls back to the repository folder
        assert_eq!(
            mnist_dir_with(Some(PathBuf::from("/nonexistent-efkit")), MnistSplit::Train).unwrap(),
            repo.join("mnist")
        );
    }

    #[test]
    fn corrupted_gzip_and_truncation_are_errors() {
        let dir = repo_data_dir().join("mnist");
        let gz = std::fs::read(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        // truncated gzip stream
        assert!(parse_idx(&gz[..gz.len() / 2], MAGIC_LABELS, Some("x")).is_err());
        // truncated raw data
        let raw = crate::io::maybe_gunzip(&gz, None).unwrap().into_owned();
        assert!(parse_idx(&raw[..raw.len() - 1], MAGIC_LABELS, None).is_err());
        assert!(parse_idx(&raw, MAGIC_LABELS, None).is_ok());
        // a corrupted byte inside the deflate stream: error (CRC or stream), never a panic
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let _ = parse_idx(&bad, MAGIC_LABELS, None);
        let mut badcrc = gz;
        let n = badcrc.len();
        badcrc[n - 8] ^= 1; // CRC32 field
        assert!(parse_idx(&badcrc, MAGIC_LABELS, None).is_err());
        // missing directory
        assert!(matches!(
            load_mnist_from(Path::new("/nonexistent-efkit"), MnistSplit::Test),
            Err(ProblemError::DataNotFound { .. })
        ));
    }
}
