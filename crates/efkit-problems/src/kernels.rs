//! Fast kernels for the finite-sum oracles: a vectorizable exp and sliced
//! ELLPACK products A x and A^T w.
//!
//! A full local gradient of a generalized linear model is
//! grad = A^T w with w_j = phi'(a_j^T x, y_j): one product with A, one
//! elementwise pass, one product with A^T. On sparse data with short rows of
//! varying length (w8a: 11.6 entries per row on average, 0 to 114) a plain CSR
//! loop is dominated by the mispredicted exit of every row's loop and by the
//! serial dependency of each row's sum, not by arithmetic.
//!
//! # Sliced ELLPACK (SELL-C-sigma)
//!
//! [`SlicedEll`] stores the "lines" of a matrix (its rows for A x, its columns
//! for A^T w) sorted by length and grouped into slices of
//! [`SlicedEll::LANES`] = 8 lines; each slice is padded to the length of its
//! longest line and stored position-major, so that one loop over the positions
//! of a slice advances 8 independent sums (Kreutzer, Hager, Wellein, Fehske &
//! Bishop, "A unified sparse matrix data format for efficient general sparse
//! matrix-vector multiplication on modern processors with wide SIMD units",
//! SIAM J. Sci. Comput. 36(5), 2014; here with the whole line set sorted,
//! sigma = number of lines). Padding entries point to a sentinel source entry
//! that holds 0. Each line is still summed sequentially in its own order
//! (columns ascending for a row of A, rows ascending for a column of A^T),
//! starting from +0.0, exactly as the CSR loops `s += v * x[i]` and
//! `g[i] += w * v` do, so the results are bit-for-bit those of the CSR loops
//! (adding the padding's +0.0 to a sum that started at +0.0 never changes it:
//! in round-to-nearest such a sum is never -0.0). A matrix whose stored values
//! are all 1 (w8a, a9a, mushrooms) is stored as its pattern only and summed
//! without value loads or multiplications (x * 1.0 = x exactly, so again the
//! same bits).
//!
//! # exp
//!
//! [`exp_neg_abs`] computes exp(-|t|), the only exponential the logistic loss
//! needs (with m = y a^T x: sigmoid(-m) and log(1 + exp(-m)) from
//! e = exp(-|m|)), branch-free so that a loop over a block of rows
//! vectorizes. Table-driven reduction (Tang, "Table-driven implementation of
//! the exponential function in IEEE floating-point arithmetic", ACM TOMS 15(2),
//! 1989): with s = -|t| = (64 q + j) ln2/64 + r, j in 0..64, |r| <= ln2/128,
//!
//! ```text
//! exp(s) = 2^q * 2^(j/64) * exp(r),   exp(r) - 1 = r + r^2 (1/2 + r/6 + r^2/24 + r^3/120)
//! ```
//!
//! (truncation error r^6/720 < 3.5e-17 relative), with ln2/64 split into a
//! 32-bit head (so k ln2_hi is exact) and a tail, the 64 values 2^(j/64)
//! rounded to nearest, and the result formed as (T_j + T_j (exp(r) - 1)) 2^(q+64)
//! 2^-64 so that subnormal results are rounded once. At most 1 ulp from
//! `f64::exp` (glibc's, itself within about half an ulp of the exact value)
//! on a dense sweep of the whole range, normal and subnormal results
//! (tested); exp(-|NaN|) is NaN and exp(-inf) = 0.

use crate::csr::CsrMatrix;

/// ln(2)/64 rounded to 32 significant bits (k * `L64_HI` is exact for |k| < 2^21).
const L64_HI: f64 = 0.01083042469326756;
/// ln(2)/64 - `L64_HI`.
const L64_LO: f64 = 2.9815858269852933e-12;
/// 64/ln(2).
const INV_L64: f64 = 92.33248261689366;
/// 1.5 * 2^52: adding it rounds a double of magnitude < 2^51 to an integer,
/// which is then readable in the low bits of the sum.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;
/// 2^-64.
const TWO_M64: f64 = 5.421_010_862_427_522e-20;
/// Below this, exp underflows to 0 (exp(-750) < 2^-1075); clamping keeps the
/// exponent arithmetic in range.
const EXP_CLAMP: f64 = -750.0;

/// 2^(j/64) for j = 0..64, rounded to nearest (bit patterns; computed in
/// 80-digit decimal arithmetic).
static EXP2_TABLE: [u64; 64] = [
    0x3ff0000000000000,
    0x3ff02c9a3e778061,
    0x3ff059b0d3158574,
    0x3ff0874518759bc8,
    0x3ff0b5586cf9890f,
    0x3ff0e3ec32d3d1a2,
    0x3ff11301d0125b51,
    0x3ff1429aaea92de0,
    0x3ff172b83c7d517b,
    0x3ff1a35beb6fcb75,
    0x3ff1d4873168b9aa,
    0x3ff2063b88628cd6,
    0x3ff2387a6e756238,
    0x3ff26b4565e27cdd,
    0x3ff29e9df51fdee1,
    0x3ff2d285a6e4030b,
    0x3ff306fe0a31b715,
    0x3ff33c08b26416ff,
    0x3ff371a7373aa9cb,
    0x3ff3a7db34e59ff7,
    0x3ff3dea64c123422,
    0x3ff4160a21f72e2a,
    0x3ff44e086061892d,
    0x3ff486a2b5c13cd0,
    0x3ff4bfdad5362a27,
    0x3ff4f9b2769d2ca7,
    0x3ff5342b569d4f82,
    0x3ff56f4736b527da,
    0x3ff5ab07dd485429,
    0x3ff5e76f15ad2148,
    0x3ff6247eb03a5585,
    0x3ff6623882552225,
    0x3ff6a09e667f3bcd,
    0x3ff6dfb23c651a2f,
    0x3ff71f75e8ec5f74,
    0x3ff75feb564267c9,
    0x3ff7a11473eb0187,
    0x3ff7e2f336cf4e62,
    0x3ff82589994cce13,
    0x3ff868d99b4492ed,
    0x3ff8ace5422aa0db,
    0x3ff8f1ae99157736,
    0x3ff93737b0cdc5e5,
    0x3ff97d829fde4e50,
    0x3ff9c49182a3f090,
    0x3ffa0c667b5de565,
    0x3ffa5503b23e255d,
    0x3ffa9e6b5579fdbf,
    0x3ffae89f995ad3ad,
    0x3ffb33a2b84f15fb,
    0x3ffb7f76f2fb5e47,
    0x3ffbcc1e904bc1d2,
    0x3ffc199bdd85529c,
    0x3ffc67f12e57d14b,
    0x3ffcb720dcef9069,
    0x3ffd072d4a07897c,
    0x3ffd5818dcfba487,
    0x3ffda9e603db3285,
    0x3ffdfc97337b9b5f,
    0x3ffe502ee78b3ff6,
    0x3ffea4afa2a490da,
    0x3ffefa1bee615a27,
    0x3fff50765b6e4540,
    0x3fffa7c1819e90d8,
];

/// exp(-|t|), branch-free (vectorizes in a loop), at most 1 ulp from
/// `f64::exp(-|t|)` (see the [module documentation](self)); NaN for NaN, 0 for
/// infinite t and for |t| > 745.2.
///
/// Only IEEE-754 additions, multiplications and bit operations (Rust never
/// contracts `a * b + c` into a fused multiply-add), so the result has the same
/// bits on every machine, whatever the vector width of the loop it is in.
#[inline(always)]
pub fn exp_neg_abs(t: f64) -> f64 {
    let s = -t.abs();
    // clamp, keeping NaN (the comparison is false for NaN)
    let s = if s < EXP_CLAMP { EXP_CLAMP } else { s };
    // k = round(s * 64/ln2) in [-69250, 0]; k = 64 q + j with j in 0..64
    let k_shifted = s * INV_L64 + ROUND_SHIFT;
    let k = k_shifted - ROUND_SHIFT;
    let r = (s - k * L64_HI) - k * L64_LO;
    // The low bits of `k_shifted` are k + 2^51 (two's complement of k in 52
    // bits, offset): j = k mod 64, and the high part >> 6 is q + const where
    // the constant vanishes when shifted into the exponent field.
    let bits = k_shifted.to_bits();
    let j = (bits & 63) as usize;
    // 2^(q + 64): q >= -1083 so q + 64 + 1023 > 0; q <= 0 so no overflow
    let scale = f64::from_bits((bits >> 6).wrapping_add(1023 + 64) << 52);
    let tj = f64::from_bits(EXP2_TABLE[j]);
    let r2 = r * r;
    let p = (0.5 + r * (1.0 / 6.0)) + r2 * ((1.0 / 24.0) + r * (1.0 / 120.0));
    let em1 = r + r2 * p;
    ((tj + tj * em1) * scale) * TWO_M64
}

/// A sparse matrix's lines (rows or columns) in sliced ELLPACK layout with
/// 8 lanes; see the [module documentation](self).
///
/// [`SlicedEll::apply`] computes `out_l = sum_t v_lt src(i_lt)` for every line l,
/// each sum in the line's own order starting from +0.0: for the rows of A,
/// A x with the same bits as a CSR row loop; for the columns, A^T w with the
/// same bits as the CSR scatter loop `g[i] += w_j * a_ji` over rows j
/// ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedEll {
    n_lines: usize,
    n_src: usize,
    /// Slice s covers the positions `slice_ptr[s]..slice_ptr[s + 1]`; a
    /// position holds one entry for each of the 8 lanes.
    slice_ptr: Vec<usize>,
    /// Source indices of each position: with 32-bit indices 4 words, word h
    /// holding lanes 2h (low bits) and 2h + 1; with 16-bit indices (fewer than
    /// 65535 sources) 2 words, word h holding lanes 4h..4h + 4 from the low
    /// bits up. Padding points to `n_src`.
    idx: Vec<u64>,
    /// 16-bit indices.
    narrow: bool,
    /// Per position, 8 values (lane order); `None` for a pattern-only matrix.
    val: Option<Vec<f64>>,
    /// Line of each lane slot (`n_lines` for the padding lanes of the last slice).
    perm: Vec<u32>,
}

impl SlicedEll {
    /// Lanes per slice.
    pub const LANES: usize = 8;

    /// The rows of `a` (for z = A x, sources = columns). With
    /// `pattern_only`, every stored value is taken as 1 (exact when all of
    /// them are 1; see [`CsrMatrix::has_unit_values`]). `None` if a count
    /// does not fit the 32-bit indices (more than 2^32 - 2 columns).
    pub fn rows_of(a: &CsrMatrix, pattern_only: bool) -> Option<Self> {
        u32::try_from(a.n_rows()).ok()?;
        u32::try_from(a.n_cols()).ok().filter(|&c| c < u32::MAX)?;
        let indptr = a.indptr();
        let lens: Vec<usize> = indptr.windows(2).map(|w| w[1] - w[0]).collect();
        let line = |l: usize| indptr[l]..indptr[l + 1];
        Some(Self::build(
            a.n_cols(),
            &lens,
            |l| {
                line(l)
                    .map(|k| (a.indices()[k], a.values()[k]))
                    .collect::<Vec<_>>()
            },
            pattern_only,
        ))
    }

    /// The columns of `a` (for g = A^T w, sources = rows), each column's
    /// entries in ascending row order. `pattern_only` as in
    /// [`SlicedEll::rows_of`]. `None` if a count does not fit the 32-bit
    /// indices (more than 2^32 - 2 rows).
    pub fn cols_of(a: &CsrMatrix, pattern_only: bool) -> Option<Self> {
        u32::try_from(a.n_cols()).ok()?;
        let n_rows = u32::try_from(a.n_rows()).ok().filter(|&r| r < u32::MAX)?;
        // transpose (counting sort by column keeps rows ascending)
        let d = a.n_cols();
        let mut colptr = vec![0usize; d + 1];
        for &c in a.indices() {
            colptr[c as usize + 1] += 1;
        }
        for c in 0..d {
            colptr[c + 1] += colptr[c];
        }
        let mut fill = colptr.clone();
        let mut rows = vec![0u32; a.nnz()];
        let mut vals = vec![0.0; a.nnz()];
        for j in 0..n_rows {
            let (idx, val) = a.row(j as usize);
            for (&c, &v) in idx.iter().zip(val) {
                let p = &mut fill[c as usize];
                rows[*p] = j;
                vals[*p] = v;
                *p += 1;
            }
        }
        let lens: Vec<usize> = colptr.windows(2).map(|w| w[1] - w[0]).collect();
        Some(Self::build(
            a.n_rows(),
            &lens,
            |l| {
                (colptr[l]..colptr[l + 1])
                    .map(|k| (rows[k], vals[k]))
                    .collect::<Vec<_>>()
            },
            pattern_only,
        ))
    }

    fn build(
        n_src: usize,
        lens: &[usize],
        line: impl Fn(usize) -> Vec<(u32, f64)>,
        pattern_only: bool,
    ) -> Self {
        const L: usize = SlicedEll::LANES;
        let n_lines = lens.len();
        let mut order: Vec<usize> = (0..n_lines).collect();
        // longest first; stable, so equal lengths keep their order
        order.sort_by_key(|&l| std::cmp::Reverse(lens[l]));
        let n_slices = n_lines.div_ceil(L);
        let stored: usize = order
            .chunks(L)
            .map(|c| c.first().map_or(0, |&l| lens[l]))
            .sum();
        let mut slice_ptr = Vec::with_capacity(n_slices + 1);
        let mut idx = Vec::with_capacity(stored * L / 2);
        let mut val = (!pattern_only).then(|| Vec::with_capacity(stored * L));
        let mut perm = Vec::with_capacity(n_slices * L);
        let sentinel = n_src as u32;
        let narrow = n_src < usize::from(u16::MAX);
        slice_ptr.push(0);
        for chunk in order.chunks(L) {
            let lines: Vec<Vec<(u32, f64)>> = chunk.iter().map(|&l| line(l)).collect();
            let width = lines.first().map_or(0, |l| l.len());
            let entry = |q: usize, t: usize| -> (u32, f64) {
                lines
                    .get(q)
                    .and_then(|l| l.get(t))
                    .copied()
                    .unwrap_or((sentinel, 0.0))
            };
            for t in 0..width {
                if narrow {
                    for h in 0..L / 4 {
                        idx.push((0..4).fold(0u64, |w, q| {
                            w | u64::from(entry(4 * h + q, t).0) << (16 * q)
                        }));
                    }
                } else {
                    for h in 0..L / 2 {
                        let (lo, hi) = (entry(2 * h, t).0, entry(2 * h + 1, t).0);
                        idx.push(u64::from(lo) | (u64::from(hi) << 32));
                    }
                }
                if let Some(v) = val.as_mut() {
                    v.extend((0..L).map(|q| entry(q, t).1));
                }
            }
            slice_ptr.push(slice_ptr.last().copied().unwrap_or(0) + width);
            perm.extend((0..L).map(|q| chunk.get(q).map_or(n_lines as u32, |&l| l as u32)));
        }
        SlicedEll {
            n_lines,
            n_src,
            slice_ptr,
            idx,
            narrow,
            val,
            perm,
        }
    }

    /// Number of lines (outputs of [`SlicedEll::apply`]).
    pub fn n_lines(&self) -> usize {
        self.n_lines
    }

    /// Number of sources (inputs of [`SlicedEll::apply`], without the sentinel).
    pub fn n_src(&self) -> usize {
        self.n_src
    }

    /// Stored entries including the padding.
    pub fn stored(&self) -> usize {
        self.idx.len() * if self.narrow { 4 } else { 2 }
    }

    /// Whether values are stored (`false`: every entry counts as 1).
    pub fn has_values(&self) -> bool {
        self.val.is_some()
    }

    /// `out(l) = sum over line l of value * src(index)`, for every line l.
    ///
    /// `src` has `n_src + 1` entries, the last being the zero the padding
    /// points to; `out` has `n_lines + 1` entries, the last being scratch
    /// (the padding lanes of the last slice write there).
    ///
    /// # Panics
    /// If the lengths are wrong or `src[n_src]` is not zero.
    #[track_caller]
    pub fn apply(&self, src: &[f64], out: &mut [f64]) {
        assert_eq!(src.len(), self.n_src + 1, "SlicedEll: src length");
        assert_eq!(out.len(), self.n_lines + 1, "SlicedEll: out length");
        assert!(src[self.n_src] == 0.0, "SlicedEll: the sentinel must be 0");
        match (&self.val, self.narrow) {
            (None, false) => self.apply_impl::<false, false>(src, &[], out),
            (None, true) => self.apply_impl::<false, true>(src, &[], out),
            (Some(v), false) => self.apply_impl::<true, false>(src, v, out),
            (Some(v), true) => self.apply_impl::<true, true>(src, v, out),
        }
    }

    #[inline(always)]
    fn apply_impl<const VALUES: bool, const NARROW: bool>(
        &self,
        src: &[f64],
        val: &[f64],
        out: &mut [f64],
    ) {
        const L: usize = SlicedEll::LANES;
        // words per position, lanes per word
        let (wpp, lpw) = if NARROW { (L / 4, 4) } else { (L / 2, 2) };
        for (s, w) in self.slice_ptr.windows(2).enumerate() {
            let (p0, p1) = (w[0], w[1]);
            let mut acc = [0.0f64; L];
            let words = &self.idx[p0 * wpp..p1 * wpp];
            let vals = if VALUES {
                &val[p0 * L..p1 * L]
            } else {
                &[][..]
            };
            for (t, pos) in words.chunks_exact(wpp).enumerate() {
                for (h, &word) in pos.iter().enumerate() {
                    for q in 0..lpw {
                        let i = if NARROW {
                            ((word >> (16 * q)) & 0xffff) as usize
                        } else {
                            ((word >> (32 * q)) & 0xffff_ffff) as usize
                        };
                        let lane = lpw * h + q;
                        // SAFETY: every stored index is < n_src or == n_src
                        // (the sentinel), and src.len() == n_src + 1 was asserted.
                        let xv = unsafe { *src.get_unchecked(i) };
                        if VALUES {
                            // SAFETY: `vals` has L entries per position of the slice.
                            let v = unsafe { *vals.get_unchecked(t * L + lane) };
                            acc[lane] += v * xv;
                        } else {
                            acc[lane] += xv;
                        }
                    }
                }
            }
            for (q, &a) in acc.iter().enumerate() {
                // SAFETY: perm entries are <= n_lines and out.len() == n_lines + 1.
                unsafe {
                    let l = *self.perm.get_unchecked(s * L + q) as usize;
                    *out.get_unchecked_mut(l) = a;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place (ordered bit patterns; same sign).
    fn ulp_distance(a: f64, b: f64) -> u64 {
        assert!(a >= 0.0 && b >= 0.0, "{a} {b}");
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn table_is_two_to_the_j_over_64() {
        assert_eq!(f64::from_bits(EXP2_TABLE[0]), 1.0);
        // sqrt is correctly rounded
        assert_eq!(f64::from_bits(EXP2_TABLE[32]), std::f64::consts::SQRT_2);
        for (j, &b) in EXP2_TABLE.iter().enumerate() {
            let want = (j as f64 / 64.0).exp2();
            assert!(ulp_distance(f64::from_bits(b), want) <= 1, "entry {j}");
        }
        // the split of ln2/64: the head has at most 32 significant bits
        assert_eq!(L64_HI.to_bits() & ((1 << 21) - 1), 0);
        assert!((L64_HI + L64_LO - std::f64::consts::LN_2 / 64.0).abs() < 1e-18);
    }

    #[test]
    fn exp_neg_abs_within_one_ulp_of_libm_on_a_dense_sweep() {
        // 3.4 million points over the whole range of results, normal and subnormal
        let (mut worst, mut at, mut differ, mut count) = (0u64, 0.0, 0usize, 0usize);
        let mut t = 0.0f64;
        while t < 746.0 {
            let (got, want) = (exp_neg_abs(t), (-t).exp());
            let u = ulp_distance(got, want);
            if u > worst {
                (worst, at) = (u, t);
            }
            differ += usize::from(u != 0);
            count += 1;
            assert_eq!(exp_neg_abs(-t).to_bits(), got.to_bits(), "even in t");
            t += 0.000_219_7;
        }
        assert!(worst <= 1, "{worst} ulp at t = {at}");
        // relative error bound in the normal range, and most results exact
        assert!(differ * 3 < count, "{differ} of {count} differ");
        let mut t = 0.0f64;
        while t < 700.0 {
            let (got, want) = (exp_neg_abs(t), (-t).exp());
            assert!((got - want).abs() <= 2.3e-16 * want, "t = {t}");
            t += 0.013_7;
        }
        // fine sweep near 0, where the reduction is trivial (k = 0, 1)
        let mut t = 0.0f64;
        while t < 0.02 {
            assert!(ulp_distance(exp_neg_abs(t), (-t).exp()) <= 1, "t = {t}");
            t += 1.1e-7;
        }
    }

    #[test]
    fn exp_neg_abs_extremes() {
        assert!(exp_neg_abs(f64::NAN).is_nan());
        assert!(exp_neg_abs(-f64::NAN).is_nan());
        assert_eq!(exp_neg_abs(f64::INFINITY), 0.0);
        assert_eq!(exp_neg_abs(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg_abs(f64::MAX), 0.0);
        assert_eq!(exp_neg_abs(0.0), 1.0);
        assert_eq!(exp_neg_abs(-0.0), 1.0);
        assert_eq!(exp_neg_abs(1e-300), 1.0);
        assert_eq!(exp_neg_abs(f64::MIN_POSITIVE), 1.0);
        assert_eq!(exp_neg_abs(1e-17), 1.0);
        assert_eq!(exp_neg_abs(1e-16), (-1e-16f64).exp());
        assert_eq!(exp_neg_abs(745.2), 0.0);
        assert_eq!(exp_neg_abs(800.0), 0.0);
        // the smallest subnormal and the normal/subnormal boundary
        assert_eq!(exp_neg_abs(745.1), (-745.1f64).exp());
        assert!(exp_neg_abs(745.1) > 0.0);
        for t in [708.0, 708.39, 708.4, 709.0, 720.0, 740.0] {
            assert!(ulp_distance(exp_neg_abs(t), (-t).exp()) <= 1, "t = {t}");
        }
        // ln 2 multiples (j = 0 exactly, r ~ 0)
        for q in 0..1074 {
            let t = q as f64 * std::f64::consts::LN_2;
            assert!(ulp_distance(exp_neg_abs(t), (-t).exp()) <= 1, "q = {q}");
        }
    }

    fn sample_matrix() -> CsrMatrix {
        // rows of lengths 0..13 in a scrambled order, 11 columns, one empty column
        let (n, d) = (37, 11);
        let mut dense = vec![0.0; n * d];
        for j in 0..n {
            let len = (j * 7) % 13;
            for t in 0..len.min(d - 1) {
                let c = (j + 3 * t) % (d - 1); // column d - 1 stays empty
                dense[j * d + c] = 0.5 + ((j * 31 + t * 17) % 9) as f64 * 0.25;
            }
        }
        CsrMatrix::from_dense(n, d, &dense)
    }

    /// 70,000 columns: 32-bit column indices (rows stay 16-bit).
    fn wide_matrix() -> CsrMatrix {
        let (n, d) = (21, 70_000);
        let mut b = crate::csr::CsrBuilder::new(d);
        for j in 0..n {
            let mut c = (j * 997) % 50;
            for t in 0..(j % 9) {
                b.push(c as u32, 1.0 + t as f64 * 0.5);
                c += 1 + (j * 7919 + t * 104_729) % 8_000;
            }
            b.finish_row();
        }
        b.build()
    }

    #[test]
    fn rows_and_cols_match_csr_loops_bitwise() {
        check_against_csr(&sample_matrix());
        let wide = wide_matrix();
        assert!(!SlicedEll::rows_of(&wide, false).unwrap().narrow);
        assert!(SlicedEll::cols_of(&wide, false).unwrap().narrow);
        assert!(SlicedEll::rows_of(&sample_matrix(), false).unwrap().narrow);
        check_against_csr(&wide);
        // 70,000 rows: 32-bit row indices in the columns
        let tall = {
            let mut b = crate::csr::CsrBuilder::new(5);
            for j in 0..70_000u32 {
                if j % 3 == 0 {
                    b.push(j % 4, 1.0 + (j % 7) as f64);
                }
                b.finish_row();
            }
            b.build()
        };
        assert!(!SlicedEll::cols_of(&tall, true).unwrap().narrow);
        check_against_csr(&tall);
    }

    fn check_against_csr(a: &CsrMatrix) {
        let (n, d) = (a.n_rows(), a.n_cols());
        let x: Vec<f64> = (0..d).map(|k| (k as f64 * 1.3).sin() * 1e3).collect();
        let w: Vec<f64> = (0..n).map(|j| (j as f64 * 0.7).cos() / 3.0).collect();
        // CSR loops
        let z_csr: Vec<f64> = (0..n).map(|j| a.row_dot(j, &x)).collect();
        let mut g_csr = vec![0.0; d];
        for (j, &wj) in w.iter().enumerate() {
            let (idx, val) = a.row(j);
            for (&c, &v) in idx.iter().zip(val) {
                g_csr[c as usize] += wj * v;
            }
        }
        let rows = SlicedEll::rows_of(a, false).unwrap();
        let cols = SlicedEll::cols_of(a, false).unwrap();
        assert!(rows.has_values() && rows.stored() >= a.nnz() && cols.stored() >= a.nnz());
        let (mut xe, mut we) = (x.clone(), w.clone());
        xe.push(0.0);
        we.push(0.0);
        let mut z = vec![f64::NAN; n + 1];
        rows.apply(&xe, &mut z);
        let mut g = vec![f64::NAN; d + 1];
        cols.apply(&we, &mut g);
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&z[..n]), bits(&z_csr));
        assert_eq!(bits(&g[..d]), bits(&g_csr));
        assert_eq!(g[d - 1].to_bits(), 0.0f64.to_bits(), "empty column is +0");
        assert!(w.iter().any(|&v| v < 0.0) && z_csr.iter().any(|&v| v != 0.0));
        // pattern-only on the same pattern = values all 1
        let ones = CsrMatrix::from_parts(
            d,
            a.indptr().to_vec(),
            a.indices().to_vec(),
            vec![1.0; a.nnz()],
        )
        .unwrap();
        let (mut z1, mut z2) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        SlicedEll::rows_of(&ones, true).unwrap().apply(&xe, &mut z1);
        SlicedEll::rows_of(&ones, false)
            .unwrap()
            .apply(&xe, &mut z2);
        assert_eq!(bits(&z1[..n]), bits(&z2[..n]));
        let (mut g1, mut g2) = (vec![0.0; d + 1], vec![0.0; d + 1]);
        SlicedEll::cols_of(&ones, true).unwrap().apply(&we, &mut g1);
        SlicedEll::cols_of(&ones, false)
            .unwrap()
            .apply(&we, &mut g2);
        assert_eq!(bits(&g1[..d]), bits(&g2[..d]));
        assert!(!SlicedEll::cols_of(&ones, true).unwrap().has_values());
    }

    #[test]
    fn empty_and_tiny_matrices() {
        let a = CsrMatrix::from_dense(1, 3, &[0.0, 0.0, 0.0]);
        let rows = SlicedEll::rows_of(&a, true).unwrap();
        let mut z = [f64::NAN; 2];
        rows.apply(&[1.0, 2.0, 3.0, 0.0], &mut z);
        assert_eq!(z[0].to_bits(), 0.0f64.to_bits());
        let cols = SlicedEll::cols_of(&a, true).unwrap();
        let mut g = [f64::NAN; 4];
        cols.apply(&[5.0, 0.0], &mut g);
        assert_eq!(&g[..3], &[0.0, 0.0, 0.0]);
        let r = std::panic::catch_unwind(|| {
            let mut z = [0.0; 2];
            rows.apply(&[1.0, 2.0, 3.0, 1.0], &mut z)
        });
        assert!(r.is_err(), "a nonzero sentinel is rejected");
    }
}
