//! Dense image data for the networks: MNIST pixels as f32 rows in [0, 1].
//!
//! The images come from the bundled IDX files through
//! [`efkit_problems::idx::load_mnist`] (the real IDX reader with its checks);
//! here they are only rescaled (pixel / 255) and kept dense, which is what a
//! network's first matrix product wants.

use efkit_problems::idx::{load_mnist, Mnist, MnistSplit};
use efkit_problems::split::{split, SplitKind};
use efkit_problems::ProblemError;

/// Images as dense rows with class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseImages {
    /// Number of images.
    pub n: usize,
    /// Pixels per image.
    pub features: usize,
    /// `n * features` values, image after image.
    pub pixels: Vec<f32>,
    /// Class of each image.
    pub labels: Vec<u32>,
}

impl DenseImages {
    /// Rescales an MNIST split to [0, 1].
    pub fn from_mnist(m: &Mnist) -> DenseImages {
        let features = m.rows * m.cols;
        DenseImages {
            n: m.n,
            features,
            pixels: m.images[..m.n * features]
                .iter()
                .map(|&p| f32::from(p) / 255.0)
                .collect(),
            labels: m.labels[..m.n].iter().map(|&l| u32::from(l)).collect(),
        }
    }

    /// Pixels of image `j`.
    pub fn row(&self, j: usize) -> &[f32] {
        &self.pixels[j * self.features..(j + 1) * self.features]
    }

    /// The images `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> DenseImages {
        let mut pixels = Vec::with_capacity(rows.len() * self.features);
        for &j in rows {
            pixels.extend_from_slice(self.row(j));
        }
        DenseImages {
            n: rows.len(),
            features: self.features,
            pixels,
            labels: rows.iter().map(|&j| self.labels[j]).collect(),
        }
    }

    /// The first `n` images.
    pub fn head(&self, n: usize) -> DenseImages {
        let rows: Vec<usize> = (0..n.min(self.n)).collect();
        self.select(&rows)
    }

    /// Shards for `workers` workers with the papers' split conventions
    /// ([`efkit_problems::split`]: contiguous in file order with the remainder
    /// to the last worker by default).
    pub fn shards(
        &self,
        workers: usize,
        kind: SplitKind,
        seed: u64,
    ) -> Result<Vec<DenseImages>, ProblemError> {
        let y: Vec<f64> = self.labels.iter().map(|&l| f64::from(l)).collect();
        let sp = split(&y, workers, kind, seed)?;
        Ok((0..workers).map(|i| self.select(sp.rows(i))).collect())
    }
}

/// MNIST (`Train`: 60,000 images, `Test`: 10,000) as dense rows in [0, 1].
pub fn mnist_dense(which: MnistSplit) -> Result<DenseImages, ProblemError> {
    Ok(DenseImages::from_mnist(&load_mnist(which)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnist_test_split_is_dense_and_scaled() {
        let t = mnist_dense(MnistSplit::Test).unwrap();
        assert_eq!((t.n, t.features, t.pixels.len()), (10_000, 784, 7_840_000));
        // the first test image is a 7 (the IDX file's first label)
        assert_eq!(t.labels[0], 7);
        assert!(t.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        assert!(t.row(0).contains(&1.0));
        let sh = t.head(103).shards(10, SplitKind::Contiguous, 0).unwrap();
        assert_eq!(sh.iter().map(|s| s.n).collect::<Vec<_>>()[9], 13);
        assert_eq!(sh[1].row(0), t.row(10));
        assert_eq!(sh[9].labels[12], t.labels[102]);
    }
}
