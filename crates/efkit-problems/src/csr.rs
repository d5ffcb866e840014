//! Compressed sparse row (CSR) matrices: the storage of every data matrix A.
//!
//! Row j of A (the feature vector a_j of sample j) is
//! `indices[indptr[j]..indptr[j+1]]` (0-based column indices, strictly
//! increasing) with values `values[indptr[j]..indptr[j+1]]`.

/// A sparse matrix in CSR layout with `f64` values and `u32` column indices.
///
/// Invariants (checked by [`CsrMatrix::from_parts`]): `indptr` has
/// `n_rows + 1` non-decreasing entries starting at 0 and ending at `nnz`,
/// column indices are `< n_cols` and strictly increasing within a row.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    n_rows: usize,
    n_cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl CsrMatrix {
    /// An empty matrix with `n_cols` columns and no rows.
    pub fn empty(n_cols: usize) -> Self {
        CsrMatrix {
            n_rows: 0,
            n_cols,
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Builds a matrix from its parts, checking every invariant.
    ///
    /// Returns a description of the first violated invariant on failure.
    pub fn from_parts(
        n_cols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        values: Vec<f64>,
    ) -> Result<Self, String> {
        if indptr.first() != Some(&0) {
            return Err("indptr must start with 0".into());
        }
        if indices.len() != values.len() {
            return Err(format!(
                "{} indices but {} values",
                indices.len(),
                values.len()
            ));
        }
        if *indptr.last().unwrap_or(&0) != indices.len() {
            return Err("indptr must end at nnz".into());
        }
        for w in indptr.windows(2) {
            if w[0] > w[1] {
                return Err("indptr must be non-decreasing".into());
            }
            let row = &indices[w[0]..w[1]];
            if row.windows(2).any(|p| p[0] >= p[1]) {
                return Err("column indices must increase strictly within a row".into());
            }
            if let Some(&last) = row.last() {
                if last as usize >= n_cols {
                    return Err(format!(
                        "column index {last} out of range for {n_cols} columns"
                    ));
                }
            }
        }
        Ok(CsrMatrix {
            n_rows: indptr.len() - 1,
            n_cols,
            indptr,
            indices,
            values,
        })
    }

    /// Builds a matrix from a dense row-major array (explicit zeros are dropped).
    ///
    /// # Panics
    /// If `dense.len() != n_rows * n_cols`.
    #[track_caller]
    pub fn from_dense(n_rows: usize, n_cols: usize, dense: &[f64]) -> Self {
        assert_eq!(
            dense.len(),
            n_rows * n_cols,
            "dense array has the wrong length"
        );
        let mut b = CsrBuilder::new(n_cols);
        for r in 0..n_rows {
            for (c, &v) in dense[r * n_cols..(r + 1) * n_cols].iter().enumerate() {
                if v != 0.0 {
                    b.push(c as u32, v);
                }
            }
            b.finish_row();
        }
        b.build()
    }

    /// Number of rows (samples).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns (features, the model dimension d).
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Row pointers (`n_rows + 1` entries).
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Column indices of all stored entries.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Values of all stored entries.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Whether every stored value is exactly 1 (binary features: w8a, a9a,
    /// mushrooms), so that the matrix is its sparsity pattern.
    pub fn has_unit_values(&self) -> bool {
        self.values.iter().all(|&v| v == 1.0)
    }

    /// Row `j`: its column indices and values.
    ///
    /// # Panics
    /// If `j >= n_rows`.
    #[inline]
    #[track_caller]
    pub fn row(&self, j: usize) -> (&[u32], &[f64]) {
        let (s, e) = (self.indptr[j], self.indptr[j + 1]);
        (&self.indices[s..e], &self.values[s..e])
    }

    /// A new matrix with the given rows, in the given order, stored contiguously.
    ///
    /// # Panics
    /// If a row index is out of range.
    #[track_caller]
    pub fn select_rows(&self, rows: &[usize]) -> CsrMatrix {
        let nnz: usize = rows
            .iter()
            .map(|&r| self.indptr[r + 1] - self.indptr[r])
            .sum();
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        indptr.push(0);
        for &r in rows {
            let (idx, val) = self.row(r);
            indices.extend_from_slice(idx);
            values.extend_from_slice(val);
            indptr.push(indices.len());
        }
        CsrMatrix {
            n_rows: rows.len(),
            n_cols: self.n_cols,
            indptr,
            indices,
            values,
        }
    }

    /// Same matrix seen with `n_cols` columns (for aligning a test file that
    /// uses fewer features than the training file).
    ///
    /// # Panics
    /// If `n_cols` is smaller than a stored column index + 1.
    #[track_caller]
    pub fn with_n_cols(mut self, n_cols: usize) -> CsrMatrix {
        let max = self
            .indices
            .iter()
            .map(|&c| c as usize + 1)
            .max()
            .unwrap_or(0);
        assert!(
            n_cols >= max,
            "cannot shrink to {n_cols} columns: column {} is used",
            max - 1
        );
        self.n_cols = n_cols;
        self
    }

    /// Sparse dot product of row `j` with a dense vector.
    #[inline]
    pub fn row_dot(&self, j: usize, x: &[f64]) -> f64 {
        let (idx, val) = self.row(j);
        sparse_dot(idx, val, x)
    }

    /// y = A x.
    ///
    /// # Panics
    /// On dimension mismatch.
    #[track_caller]
    pub fn matvec(&self, x: &[f64], y: &mut [f64]) {
        assert_eq!(x.len(), self.n_cols, "matvec: x has the wrong length");
        assert_eq!(y.len(), self.n_rows, "matvec: y has the wrong length");
        for (j, yj) in y.iter_mut().enumerate() {
            *yj = self.row_dot(j, x);
        }
    }

    /// out = A^T (A v), computed in one pass over the rows as
    /// sum_j (a_j^T v) a_j, without forming A^T A.
    ///
    /// # Panics
    /// On dimension mismatch.
    #[track_caller]
    pub fn gram_matvec(&self, v: &[f64], out: &mut [f64]) {
        assert_eq!(v.len(), self.n_cols, "gram_matvec: v has the wrong length");
        assert_eq!(
            out.len(),
            self.n_cols,
            "gram_matvec: out has the wrong length"
        );
        out.iter_mut().for_each(|o| *o = 0.0);
        self.gram_matvec_acc(v, out);
    }

    /// out += A^T (A v) (crate-internal building block).
    ///
    /// # Panics
    /// If `v` or `out` is shorter than `n_cols`.
    pub(crate) fn gram_matvec_acc(&self, v: &[f64], out: &mut [f64]) {
        assert!(
            v.len() >= self.n_cols && out.len() >= self.n_cols,
            "gram_matvec: short vector"
        );
        for j in 0..self.n_rows {
            let (idx, val) = self.row(j);
            // SAFETY: column indices are < n_cols <= v.len(), out.len() (checked above).
            unsafe {
                let s = sparse_dot_unchecked(idx, val, v);
                sparse_axpy_unchecked(s, idx, val, out);
            }
        }
    }

    /// The dense Gram matrix A^T A (row-major, `n_cols * n_cols`). Costs
    /// sum_j nnz(a_j)^2 operations and `8 d^2` bytes: only for small d.
    pub fn gram_dense(&self) -> Vec<f64> {
        let d = self.n_cols;
        let mut g = vec![0.0; d * d];
        for j in 0..self.n_rows {
            let (idx, val) = self.row(j);
            for (p, (&ip, &vp)) in idx.iter().zip(val).enumerate() {
                let rowp = &mut g[ip as usize * d..(ip as usize + 1) * d];
                // upper triangle including the diagonal, mirrored below
                for (&iq, &vq) in idx[p..].iter().zip(&val[p..]) {
                    rowp[iq as usize] += vp * vq;
                }
            }
        }
        for r in 0..d {
            for c in 0..r {
                g[r * d + c] = g[c * d + r];
            }
        }
        g
    }

    /// Dense copy (row-major), for tests and small matrices.
    pub fn to_dense(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        for j in 0..self.n_rows {
            let (idx, val) = self.row(j);
            for (&c, &v) in idx.iter().zip(val) {
                out[j * self.n_cols + c as usize] = v;
            }
        }
        out
    }
}

/// Sparse-dense dot product without bounds checks, for the hot loops.
///
/// # Safety
/// Every `idx[k]` must be `< x.len()`, and `val.len() == idx.len()`. Rows of a
/// [`CsrMatrix`] satisfy this for any `x` of length `n_cols` (an invariant of
/// every constructor).
#[inline(always)]
pub(crate) unsafe fn sparse_dot_unchecked(idx: &[u32], val: &[f64], x: &[f64]) -> f64 {
    debug_assert_eq!(idx.len(), val.len());
    let mut s = 0.0;
    for k in 0..idx.len() {
        // SAFETY: k < idx.len() == val.len(); idx[k] < x.len() by contract.
        s += *val.get_unchecked(k) * *x.get_unchecked(*idx.get_unchecked(k) as usize);
    }
    s
}

/// out[idx[k]] += a * val[k] without bounds checks, for the hot loops.
///
/// # Safety
/// As [`sparse_dot_unchecked`], with `out` in place of `x`.
#[inline(always)]
pub(crate) unsafe fn sparse_axpy_unchecked(a: f64, idx: &[u32], val: &[f64], out: &mut [f64]) {
    debug_assert_eq!(idx.len(), val.len());
    for k in 0..idx.len() {
        // SAFETY: as above.
        *out.get_unchecked_mut(*idx.get_unchecked(k) as usize) += a * *val.get_unchecked(k);
    }
}

/// sum_k x[idx[k]] (a row whose values are all 1) without bounds checks;
/// the same bits as [`sparse_dot_unchecked`] with `val` all 1.
///
/// # Safety
/// Every `idx[k]` must be `< x.len()`.
#[inline(always)]
pub(crate) unsafe fn pattern_sum_unchecked(idx: &[u32], x: &[f64]) -> f64 {
    let mut s = 0.0;
    for &i in idx {
        // SAFETY: i < x.len() by contract.
        s += *x.get_unchecked(i as usize);
    }
    s
}

/// out[idx[k]] += a (a row whose values are all 1) without bounds checks; the
/// same bits as [`sparse_axpy_unchecked`] with `val` all 1.
///
/// # Safety
/// Every `idx[k]` must be `< out.len()`.
#[inline(always)]
pub(crate) unsafe fn pattern_add_unchecked(a: f64, idx: &[u32], out: &mut [f64]) {
    for &i in idx {
        // SAFETY: as above.
        *out.get_unchecked_mut(i as usize) += a;
    }
}

/// Sparse-dense dot product sum_k val[k] * x[idx[k]].
#[inline]
pub(crate) fn sparse_dot(idx: &[u32], val: &[f64], x: &[f64]) -> f64 {
    let mut s = 0.0;
    for (&i, &v) in idx.iter().zip(val) {
        s += v * x[i as usize];
    }
    s
}

/// Incremental builder of a [`CsrMatrix`], row by row.
#[derive(Debug, Clone)]
pub struct CsrBuilder {
    n_cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f64>,
}

impl CsrBuilder {
    /// A builder for a matrix with at least `n_cols` columns (grown as larger
    /// indices are pushed).
    pub fn new(n_cols: usize) -> Self {
        CsrBuilder {
            n_cols,
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Appends an entry to the current row.
    ///
    /// # Panics
    /// If `col` does not exceed the previous column of the row.
    #[track_caller]
    pub fn push(&mut self, col: u32, value: f64) {
        let start = *self.indptr.last().expect("indptr is never empty");
        if self.indices.len() > start {
            assert!(
                col > self.indices[self.indices.len() - 1],
                "columns must increase within a row"
            );
        }
        self.n_cols = self.n_cols.max(col as usize + 1);
        self.indices.push(col);
        self.values.push(value);
    }

    /// Closes the current row.
    pub fn finish_row(&mut self) {
        self.indptr.push(self.indices.len());
    }

    /// Number of completed rows.
    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// The matrix (an unfinished row is dropped).
    pub fn build(mut self) -> CsrMatrix {
        let end = *self.indptr.last().expect("indptr is never empty");
        self.indices.truncate(end);
        self.values.truncate(end);
        CsrMatrix {
            n_rows: self.indptr.len() - 1,
            n_cols: self.n_cols,
            indptr: self.indptr,
            indices: self.indices,
            values: self.values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_select_and_products() {
        let dense = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0];
        let a = CsrMatrix::from_dense(3, 3, &dense);
        assert_eq!(a.nnz(), 4);
        assert_eq!(a.row(1).0.len(), 0);
        assert_eq!(a.to_dense(), dense);
        let s = a.select_rows(&[2, 0]);
        assert_eq!(s.to_dense(), [0.0, 3.0, 4.0, 1.0, 0.0, 2.0]);
        let mut y = [0.0; 3];
        a.matvec(&[1.0, 1.0, 1.0], &mut y);
        assert_eq!(y, [3.0, 0.0, 7.0]);
        let g = a.gram_dense();
        // A^T A
        assert_eq!(g, vec![1.0, 0.0, 2.0, 0.0, 9.0, 12.0, 2.0, 12.0, 20.0]);
        let mut out = [0.0; 3];
        a.gram_matvec(&[1.0, -1.0, 0.5], &mut out);
        let want: Vec<f64> = (0..3)
            .map(|r| g[r * 3] - g[r * 3 + 1] + 0.5 * g[r * 3 + 2])
            .collect();
        assert_eq!(out.to_vec(), want);
        assert!(CsrMatrix::from_parts(3, vec![0, 2], vec![1, 1], vec![1.0, 1.0]).is_err());
        assert!(CsrMatrix::from_parts(3, vec![0, 1], vec![3], vec![1.0]).is_err());
        assert!(CsrMatrix::from_parts(3, vec![0, 1], vec![2], vec![1.0]).is_ok());
    }
}
