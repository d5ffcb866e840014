//! Dense image data for the networks: MNIST images as rows of 8-bit grey
//! levels, read by the networks as pixels in [0, 1] (level / 255, in f32).
//!
//! The images come from the bundled IDX files through
//! [`efkit_problems::idx::load_mnist`] (the real IDX reader with its checks)
//! and keep the file's bytes: a quarter of the memory of f32 pixels (47 MB
//! instead of 188 MB for the training set), and a quarter of the memory
//! traffic when a minibatch is gathered from random rows, which is part of
//! every round of a network's training. The rescaling happens on the way
//! into a batch tensor ([`DenseImages::pixels_into`]), always the same
//! f32 value per level ([`LEVELS`]).

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
    /// `n * features` grey levels (0..=255, pixel value level / 255),
    /// image after image.
    pub pixels: Vec<u8>,
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
            pixels: m.images[..m.n * features].to_vec(),
            labels: m.labels[..m.n].iter().map(|&l| u32::from(l)).collect(),
        }
    }

    /// Grey levels of image `j`.
    pub fn row(&self, j: usize) -> &[u8] {
        &self.pixels[j * self.features..(j + 1) * self.features]
    }

    /// Asks the CPU to start loading image `j`'s grey levels into the
    /// cache (a hint: no effect on any value). A minibatch's rows are spread
    /// over the shard, so each is a fresh run of cache misses; prefetching a
    /// few rows ahead overlaps them with the conversion of the current one.
    pub fn prefetch_row(&self, j: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let row = self.row(j).as_ptr_range();
            // every cache line the row touches, from the line of its first
            // byte (rows do not start on line boundaries)
            let mut line = row.start.wrapping_sub(row.start as usize % 64);
            while line < row.end {
                // SAFETY: a prefetch is a hint: it never faults, whatever
                // the address, and changes no memory.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line.cast(),
                    );
                }
                line = line.wrapping_add(64);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = j;
    }

    /// Writes the pixel values of image `j` (level / 255) into `dst`.
    pub fn pixels_into(&self, j: usize, dst: &mut [f32]) {
        // The division itself, not a lookup in LEVELS: the same values (IEEE
        // division is exact-rounded; tested), and it vectorises (8 pixels per
        // instruction) where a table lookup goes one pixel at a time.
        for (d, &p) in dst.iter_mut().zip(self.row(j)) {
            *d = f32::from(p) / 255.0;
        }
    }

    /// The pixel values of images `a..b`, image after image.
    pub fn pixel_values(&self, a: usize, b: usize) -> Vec<f32> {
        self.pixels[a * self.features..b * self.features]
            .iter()
            .map(|&p| LEVELS[p as usize])
            .collect()
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

/// The pixel value of each grey level: level / 255 in f32.
pub static LEVELS: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut l = 0;
    while l < 256 {
        t[l] = l as f32 / 255.0;
        l += 1;
    }
    t
};

/// MNIST (`Train`: 60,000 images, `Test`: 10,000) as dense rows of grey
/// levels (pixel values level / 255 in [0, 1]).
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
        assert!(t.row(0).contains(&255));
        let mut first = vec![0.0f32; 784];
        t.pixels_into(0, &mut first);
        assert!(first.iter().all(|p| (0.0..=1.0).contains(p)));
        assert!(first.contains(&1.0) && first.contains(&0.0));
        assert_eq!(t.pixel_values(0, 1), first);
        // the levels are the rescaling the other MNIST problems use, f32 of l / 255
        for l in 0..=255u8 {
            assert_eq!(LEVELS[l as usize], f32::from(l) / 255.0);
        }
        // the batch gather gives every level exactly its LEVELS value
        let every_level = DenseImages {
            n: 1,
            features: 256,
            pixels: (0..=255u8).collect(),
            labels: vec![0],
        };
        let mut gathered = vec![f32::NAN; 256];
        every_level.pixels_into(0, &mut gathered);
        let bits = |v: &[f32]| v.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gathered), bits(&LEVELS));
        let sh = t.head(103).shards(10, SplitKind::Contiguous, 0).unwrap();
        assert_eq!(sh.iter().map(|s| s.n).collect::<Vec<_>>()[9], 13);
        assert_eq!(sh[1].row(0), t.row(10));
        assert_eq!(sh[9].labels[12], t.labels[102]);
    }
}
