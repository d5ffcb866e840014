//! Top-K sparsification: keep the K entries of largest magnitude.
//!
//! C(x)_j = x_j if j is among the K largest |x_j|, else 0. Ties are broken
//! toward the lower index, so C is deterministic. Since the kept set carries
//! the K largest squares, ||C(x) - x||^2 = sum_{j not kept} x_j^2
//! <= (1 - K/d) ||x||^2: class B(K/d) (Stich, Cordonnier & Jaggi, "Sparsified SGD
//! with memory", NeurIPS 2018, Lemma A.1; algorithms.md §3.2).
//!
//! Selection is O(d) and allocation-free in steady state. For K <= 16 and
//! d < 2^14 one pass keeps the best K so far in a sorted buffer (see
//! `select_small_k`; the LibSVM experiments' Top-1). For d >= 2^14 a
//! strided sample first proposes a lower threshold and one pass collects the
//! candidates above it (see `select_by_sample`; exact, with the method below as
//! fallback when the sample overshoots); the input's finiteness check rides on
//! that pass, since non-finite entries have the largest keys and are always
//! candidates. The general method: for finite x the
//! bit pattern of |x| read as an unsigned integer is monotone in |x|, so one pass
//! builds a histogram of the top bits of `|x|.to_bits()` (at most 2^16 buckets),
//! a scan from the top finds the bucket holding the K-th largest magnitude, a
//! second pass collects (in increasing index order) every index whose bucket is
//! at or above it, and a selection restricted to that one bucket finds the exact
//! K-th largest bit pattern T. The kept set is then every index with |x_j| > T
//! plus the lowest-index ones with |x_j| = T. Scratch: `ctx.scratch.u32s`
//! (histogram), `ctx.scratch.u64s` (bucket members), `out.indices`.
//!
//! Wire: the index set ([`super::sparse_codec`]) then K values in the spec's
//! format. Paper bits: 32 K (indices free, algorithms.md §3.3).

use super::registry::{only_keys, resolve_k, value_format, CompressorSpec};
use super::sparse_codec::{check_len, read_sparse, round_checked, write_sparse};
use super::{
    check_finite, CompressCtx, CompressedVec, Compressor, CompressorClass, DecodeCtx, ValueFormat,
};
use crate::bits::{BitReader, BitWriter};
use crate::error::{CompressError, DecodeError, ParamError};

/// Top-K with ties to the lower index.
#[derive(Debug, Clone)]
pub struct TopK {
    d: usize,
    k: usize,
    fmt: ValueFormat,
    /// The whole vector as one block ([`Compressor::top_k_blocks`]).
    block: TopKBlock,
}

/// Builds `top-k` (parameters: `k` or `ratio`, `values`).
pub fn from_spec(spec: &CompressorSpec, d: usize) -> Result<Box<dyn Compressor>, ParamError> {
    only_keys(spec, &["k", "ratio", "values"])?;
    let k = resolve_k(spec, d)?;
    Ok(Box::new(TopK {
        d,
        k,
        fmt: value_format(spec),
        block: TopKBlock {
            offset: 0,
            len: d,
            k,
        },
    }))
}

/// Histogram width for dimension `d`: about log2(d) bits, between 8 and 16.
#[inline]
fn key_bits_for(d: usize) -> u32 {
    (usize::BITS - d.leading_zeros()).clamp(8, 16)
}

/// `|v|` as a monotone integer key: the bit pattern without the sign, shifted
/// to the top (so the highest bits are exponent bits).
#[inline(always)]
fn mag(v: f64) -> u64 {
    v.to_bits() << 1
}

/// Dimensions from which the sampled threshold is tried first.
const SAMPLE_MIN_D: usize = 1 << 14;

/// Writes into `idx`, in increasing order, the indices of the `k` entries of
/// `x` of largest magnitude, ties toward the lower index. `x` must be finite.
/// `hist` and `cand` are scratch; nothing is allocated once they (and `idx`)
/// have grown to size.
pub(crate) fn select_top_k(
    x: &[f64],
    k: usize,
    hist: &mut Vec<u32>,
    cand: &mut Vec<u64>,
    idx: &mut Vec<u32>,
) {
    idx.clear();
    let d = x.len();
    if k == 0 {
        return;
    }
    if k >= d {
        idx.extend(0..d as u32);
        return;
    }
    if k <= SMALL_K && d < SAMPLE_MIN_D {
        select_small_k(x, k, idx);
        return;
    }
    if d >= SAMPLE_MIN_D && select_by_sample(x, k, cand, idx) == Sampled::Selected {
        return;
    }
    select_by_histogram(x, k, hist, cand, idx);
}

/// Largest K [`select_small_k`] serves (below [`SAMPLE_MIN_D`]).
const SMALL_K: usize = 16;

/// Top-K for 1 <= K <= [`SMALL_K`], K < d, in one pass: the best K entries
/// so far under (magnitude descending, index ascending) stay sorted in a
/// buffer of K; as indices only grow, a new entry enters only with a
/// magnitude strictly above the buffer's last, and goes after the equal
/// ones. The EF21 experiments on LibSVM data (Top-1 at d = 68..300) spent
/// more on the histogram method's 2^9 buckets than on the data.
fn select_small_k(x: &[f64], k: usize, idx: &mut Vec<u32>) {
    debug_assert!((1..=SMALL_K).contains(&k) && k < x.len());
    let mut keys = [0u64; SMALL_K];
    let mut ids = [0u32; SMALL_K];
    let mut n = 0;
    for (j, &v) in x.iter().enumerate() {
        let m = mag(v);
        if n == k {
            if m <= keys[k - 1] {
                continue;
            }
            n -= 1; // the last one leaves
        }
        let mut p = n;
        while p > 0 && keys[p - 1] < m {
            keys[p] = keys[p - 1];
            ids[p] = ids[p - 1];
            p -= 1;
        }
        keys[p] = m;
        ids[p] = j as u32;
        n += 1;
    }
    idx.clear();
    idx.extend_from_slice(&ids[..k]);
    idx.sort_unstable();
}

/// [`select_top_k`] on an input not yet checked for finiteness: fails on a
/// non-finite entry exactly as [`check_finite`] does (naming the first one),
/// but where the sampled selection runs it needs no separate pass for that:
/// a non-finite entry's magnitude key exceeds every finite threshold, so the
/// candidate collection sees each of them.
pub(crate) fn select_top_k_checked(
    x: &[f64],
    k: usize,
    hist: &mut Vec<u32>,
    cand: &mut Vec<u64>,
    idx: &mut Vec<u32>,
) -> Result<(), CompressError> {
    let d = x.len();
    if k == 0 || k >= d || d < SAMPLE_MIN_D {
        check_finite(x)?;
        select_top_k(x, k, hist, cand, idx);
        return Ok(());
    }
    match select_by_sample(x, k, cand, idx) {
        Sampled::Selected => Ok(()),
        Sampled::NonFinite => check_finite(x),
        Sampled::Fallback => {
            check_finite(x)?;
            select_by_histogram(x, k, hist, cand, idx);
            Ok(())
        }
    }
}

/// The magnitude key of infinity: non-finite values have keys >= this.
const MAG_INF: u64 = f64::INFINITY.to_bits() << 1;

/// Outcome of the sampled selection.
#[derive(Debug, PartialEq, Eq)]
enum Sampled {
    /// `idx` holds the top K.
    Selected,
    /// Too few candidates: use the histogram method (`idx` is empty).
    Fallback,
    /// x has a non-finite entry (`idx` is empty).
    NonFinite,
}

/// Keeps, in order, the members of `idx` with magnitude > `t` and the first
/// `ties` members with magnitude == `t`.
#[inline]
fn compact(x: &[f64], idx: &mut Vec<u32>, t: u64, mut ties: usize) {
    let mut n = 0usize;
    for r in 0..idx.len() {
        let j = idx[r];
        let m = mag(x[j as usize]);
        let keep = if m > t {
            true
        } else if m == t && ties > 0 {
            ties -= 1;
            true
        } else {
            false
        };
        if keep {
            idx[n] = j;
            n += 1;
        }
    }
    idx.truncate(n);
}

/// `need`-th largest of `cand` (1-based) and how many entries exceed it.
#[inline]
fn kth_largest(cand: &mut [u64], need: usize) -> (u64, usize) {
    let (_, &mut t, _) = cand.select_nth_unstable_by(need - 1, |a, b| b.cmp(a));
    let greater = cand.iter().filter(|&&m| m > t).count();
    (t, greater)
}

/// Appends to `idx`, in order, every j with mag(x_j) >= t (t the key of a
/// finite value; x may hold non-finite entries, which are all appended).
///
/// Chunks of 8 are screened with a float comparison !(|x_j| < |t|) (the
/// integer key order for finite values, true for NaN; vectorisable), and only
/// chunks with a hit are scanned one by one.
#[inline]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(a < b)` is meant: true for NaN
fn collect_at_least(x: &[f64], t: u64, idx: &mut Vec<u32>) {
    idx.clear();
    let tf = f64::from_bits(t >> 1);
    let mut chunks = x.chunks_exact(8);
    let mut base = 0u32;
    for c in &mut chunks {
        let mut hit = false;
        for &v in c {
            // `!(<)` so that NaN entries are looked at too (their keys pass)
            hit |= !(v.abs() < tf);
        }
        if hit {
            for (i, &v) in c.iter().enumerate() {
                if mag(v) >= t {
                    idx.push(base + i as u32);
                }
            }
        }
        base += 8;
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        if mag(v) >= t {
            idx.push(base + i as u32);
        }
    }
}

/// Fast path: a strided sample of s = clamp(d/64, 1024, 16384) magnitudes gives
/// a lower threshold t_lo (the r-th largest sample, r = mu + 4 sqrt(mu) + 4 with
/// mu = s K/d the expected number of sampled top-K entries); one pass collects
/// every index with |x_j| >= t_lo. If at least K were collected they contain
/// the top K (every other entry is strictly smaller than all of them), and an
/// exact selection among them finishes; otherwise returns false and the caller
/// falls back to the histogram method. The result is exact either way; only
/// the speed depends on the data (typically one pass over x).
fn select_by_sample(x: &[f64], k: usize, cand: &mut Vec<u64>, idx: &mut Vec<u32>) -> Sampled {
    let d = x.len();
    let s = (d / 64).clamp(1024, 16384).min(d);
    let stride = d / s;
    cand.clear();
    cand.extend((0..s).map(|i| mag(x[i * stride])));
    let mu = s as f64 * k as f64 / d as f64;
    let r = ((mu + 4.0 * mu.sqrt() + 4.0).ceil() as usize).clamp(1, s);
    let (_, &mut t_lo, _) = cand.select_nth_unstable_by(r - 1, |a, b| b.cmp(a));
    idx.clear();
    if t_lo >= MAG_INF {
        // the sample itself holds non-finite entries
        return Sampled::NonFinite;
    }
    collect_at_least(x, t_lo, idx);
    if idx.len() < k {
        idx.clear();
        return Sampled::Fallback;
    }
    if idx.iter().any(|&j| mag(x[j as usize]) >= MAG_INF) {
        idx.clear();
        return Sampled::NonFinite;
    }
    if idx.len() > k {
        cand.clear();
        cand.extend(idx.iter().map(|&j| mag(x[j as usize])));
        let (t, greater) = kth_largest(cand, k);
        compact(x, idx, t, k - greater);
    }
    debug_assert_eq!(idx.len(), k);
    Sampled::Selected
}

/// The (offset, length, K) of a block a compressor keeps the K largest
/// magnitudes of ([`Compressor::top_k_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopKBlock {
    /// First coordinate of the block.
    pub offset: usize,
    /// Coordinates in the block.
    pub len: usize,
    /// Entries kept.
    pub k: usize,
}

/// Top-K selection of a block t that is computed in one streaming pass and
/// never stored (EF21-SGDM computes t = v - g while it updates v).
///
/// The same idea as the sampled selection of [`Compressor::compress`] for
/// Top-K: a sample of t (evenly spaced runs of 32 entries, computed there
/// only) gives a
/// lower threshold t_lo, the caller's pass keeps every (j, t_j) with
/// |t_j| >= t_lo ([`StreamedTopK::offer8`], [`StreamedTopK::offer`]), and
/// [`StreamedTopK::finish`] selects the exact top K among them, ties to the
/// lower index. The kept set is therefore exactly Top-K's, whatever the
/// threshold; when the pass kept fewer than K the caller stores t and
/// selects the usual way. Saves the write of t and the selection's read of
/// it (two of the five d-vector passes of an EF21-SGDM round).
#[derive(Debug, Clone, Copy)]
pub struct StreamedTopK {
    k: usize,
    t_lo: u64,
    t_lo_abs: f64,
}

/// Length of the runs [`StreamedTopK::new`] samples.
const STREAM_RUN: usize = 32;

/// What [`StreamedTopK::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamedOutcome {
    /// The K entries are selected.
    Selected,
    /// The pass kept fewer than K entries: select from the stored block.
    TooFew,
    /// The block holds a non-finite entry.
    NonFinite,
}

impl StreamedTopK {
    /// The threshold for keeping `k` of the `len` entries t_j = `at(j)`
    /// (evaluated at the sample only); `None` when the block is too small
    /// for sampling to pay, `k` is 0 or at least `len`, or the threshold
    /// itself is non-finite (the sample is mostly non-finite): then the
    /// caller stores t and selects the usual way. Other non-finite entries
    /// are kept by the pass and reported by [`StreamedTopK::finish`].
    /// `cand` is scratch.
    pub fn new(
        len: usize,
        k: usize,
        at: impl Fn(usize) -> f64,
        cand: &mut Vec<u64>,
    ) -> Option<Self> {
        if len < SAMPLE_MIN_D || k == 0 || k >= len {
            return None;
        }
        // the sample is taken in runs of consecutive entries, evenly spaced:
        // t is computed from several vectors in memory, and runs touch a
        // cache line per 8 entries instead of one per sampled entry
        let runs = (len / 64).clamp(1024, 16384) / STREAM_RUN;
        let spacing = len / runs;
        cand.clear();
        cand.extend(
            (0..runs).flat_map(|r| (r * spacing..r * spacing + STREAM_RUN).map(|j| mag(at(j)))),
        );
        let s = cand.len();
        let mu = s as f64 * k as f64 / len as f64;
        let r = ((mu + 4.0 * mu.sqrt() + 4.0).ceil() as usize).clamp(1, s);
        let (_, &mut t_lo, _) = cand.select_nth_unstable_by(r - 1, |a, b| b.cmp(a));
        (t_lo < MAG_INF).then(|| StreamedTopK {
            k,
            t_lo,
            t_lo_abs: f64::from_bits(t_lo >> 1),
        })
    }

    /// Keeps the entries of `t` (block positions `base..base + 8`) at or
    /// above the threshold, and every non-finite one. A vectorisable screen
    /// first: most chunks hold none.
    #[inline(always)]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(a < b)` is meant: true for NaN
    pub fn offer8(&self, base: u32, t: &[f64; 8], idx: &mut Vec<u32>, vals: &mut Vec<f64>) {
        let mut hit = false;
        for &v in t {
            hit |= !(v.abs() < self.t_lo_abs);
        }
        if hit {
            // Branch-free compaction: every entry is written at the next
            // free slot and the slot advances only for a kept one, so the
            // one or two kept entries of a typical hit cost no mispredicted
            // branch (the same entries, in the same order, as `offer`).
            idx.reserve(8);
            vals.reserve(8);
            let n = idx.len();
            let mut kept = 0;
            {
                let (idx_free, vals_free) = (idx.spare_capacity_mut(), vals.spare_capacity_mut());
                for (i, &v) in t.iter().enumerate() {
                    idx_free[kept].write(base + i as u32);
                    vals_free[kept].write(v);
                    kept += usize::from(mag(v) >= self.t_lo);
                }
            }
            // SAFETY: slots n..n + kept were written above (slot n + m is
            // written while kept == m, before kept passes it), and both
            // vectors had room for 8 more.
            unsafe {
                idx.set_len(n + kept);
                vals.set_len(n + kept);
            }
        }
    }

    /// Keeps entry `j` of value `v` if it is at or above the threshold (or
    /// non-finite).
    #[inline(always)]
    pub fn offer(&self, j: u32, v: f64, idx: &mut Vec<u32>, vals: &mut Vec<f64>) {
        if mag(v) >= self.t_lo {
            idx.push(j);
            vals.push(v);
        }
    }

    /// Reduces the kept entries (`idx[from..]`, `vals[from..]`, in increasing
    /// block position) to the top K, ties to the lower index. On
    /// `TooFew`/`NonFinite` the kept entries are removed again.
    pub fn finish(
        &self,
        from: usize,
        idx: &mut Vec<u32>,
        vals: &mut Vec<f64>,
        cand: &mut Vec<u64>,
    ) -> StreamedOutcome {
        let kept = idx.len() - from;
        let outcome = if kept < self.k {
            StreamedOutcome::TooFew
        } else if vals[from..].iter().any(|&v| mag(v) >= MAG_INF) {
            StreamedOutcome::NonFinite
        } else {
            StreamedOutcome::Selected
        };
        if outcome != StreamedOutcome::Selected {
            idx.truncate(from);
            vals.truncate(from);
            return outcome;
        }
        if kept > self.k {
            cand.clear();
            cand.extend(vals[from..].iter().map(|&v| mag(v)));
            let (t, greater) = kth_largest(cand, self.k);
            // keep > t, and the first (k - greater) equal to t
            let mut ties = self.k - greater;
            let mut n = from;
            for r in from..idx.len() {
                let m = mag(vals[r]);
                let keep = m > t
                    || (m == t && ties > 0 && {
                        ties -= 1;
                        true
                    });
                if keep {
                    idx[n] = idx[r];
                    vals[n] = vals[r];
                    n += 1;
                }
            }
            idx.truncate(n);
            vals.truncate(n);
        }
        debug_assert_eq!(idx.len() - from, self.k);
        StreamedOutcome::Selected
    }
}

/// Histogram (radix) selection, O(d) for any input: see the module docs.
fn select_by_histogram(
    x: &[f64],
    k: usize,
    hist: &mut Vec<u32>,
    cand: &mut Vec<u64>,
    idx: &mut Vec<u32>,
) {
    idx.clear();
    let d = x.len();
    let key_bits = key_bits_for(d);
    let shift = 64 - key_bits;
    let nb = 1usize << key_bits;
    hist.clear();
    hist.resize(nb, 0);
    let h = &mut hist[..nb];
    // Pass 1: histogram of the top bits of |x_j|.
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        let k0 = (mag(c[0]) >> shift) as usize;
        let k1 = (mag(c[1]) >> shift) as usize;
        let k2 = (mag(c[2]) >> shift) as usize;
        let k3 = (mag(c[3]) >> shift) as usize;
        h[k0] += 1;
        h[k1] += 1;
        h[k2] += 1;
        h[k3] += 1;
    }
    for &v in chunks.remainder() {
        h[(mag(v) >> shift) as usize] += 1;
    }
    // The bucket holding the k-th largest magnitude.
    let mut above = 0usize;
    let mut tb = nb - 1;
    loop {
        let c = h[tb] as usize;
        if above + c >= k {
            break;
        }
        above += c;
        // total count is d > k, so some bucket >= 0 ends the loop
        tb -= 1;
    }
    let in_bucket = h[tb] as usize;
    let need = k - above; // 1..=in_bucket
    let tb = tb as u64;
    // Pass 2: every index at or above the threshold bucket, in order.
    idx.reserve(above + in_bucket);
    for (j, &v) in x.iter().enumerate() {
        if (mag(v) >> shift) >= tb {
            idx.push(j as u32);
        }
    }
    debug_assert_eq!(idx.len(), above + in_bucket);
    if need == in_bucket {
        return;
    }
    // Exact threshold T = need-th largest magnitude within the bucket; entries
    // of higher buckets exceed T.
    cand.clear();
    cand.extend(
        idx.iter()
            .map(|&j| mag(x[j as usize]))
            .filter(|&m| (m >> shift) == tb),
    );
    let (t, greater) = kth_largest(cand, need);
    compact(x, idx, t, need - greater);
    debug_assert_eq!(idx.len(), k);
}

impl Compressor for TopK {
    fn name(&self) -> &'static str {
        "top-k"
    }

    fn describe(&self) -> String {
        match self.fmt {
            ValueFormat::F32 => format!("top-k(k={})", self.k),
            f => format!("top-k(k={},values=f{})", self.k, f.bits()),
        }
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn class(&self) -> CompressorClass {
        CompressorClass::Contractive {
            alpha: self.k as f64 / self.d as f64,
        }
    }

    fn is_deterministic(&self) -> bool {
        true
    }

    fn compress(
        &self,
        x: &[f64],
        ctx: &mut CompressCtx<'_>,
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        check_len(x, self.d)?;
        out.reset_sparse(self.d);
        let s = &mut *ctx.scratch;
        // the finiteness check rides on the selection (one pass fewer)
        select_top_k_checked(x, self.k, &mut s.u32s, &mut s.u64s, &mut out.indices)?;
        out.values.reserve(self.k);
        for &j in &out.indices {
            let v = round_checked(self.fmt, x[j as usize], j as usize)?;
            out.values.push(v);
        }
        write_sparse(w, out, self.fmt);
        Ok(())
    }

    fn decode(
        &self,
        r: &mut BitReader<'_>,
        _ctx: &DecodeCtx,
        out: &mut CompressedVec,
    ) -> Result<(), DecodeError> {
        read_sparse(r, self.d, self.fmt, out)?;
        if out.indices.len() != self.k {
            return Err(DecodeError::invalid(
                "index count",
                format!("{} indices, top-k sends {}", out.indices.len(), self.k),
            ));
        }
        // In f64 (values sent unrounded) a kept 0 means every entry left out
        // was 0 too, and ties go to the lower index: so every index below a
        // kept 0 is kept. (In f32/f16 a kept tiny value may round to 0.)
        if self.fmt == ValueFormat::F64 {
            if let Some(p) = out.values.iter().rposition(|&v| v == 0.0) {
                let i = out.indices[p];
                if i as usize != p {
                    return Err(DecodeError::invalid(
                        "value",
                        format!(
                            "a kept 0 at index {i} while a lower index is left out (ties go to the lower index)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn paper_bits(&self, c: &CompressedVec) -> u64 {
        32 * c.values.len() as u64
    }

    fn top_k_blocks(&self) -> Option<&[TopKBlock]> {
        Some(std::slice::from_ref(&self.block))
    }

    fn compress_selected(
        &self,
        indices: &[u32],
        offset: usize,
        values: &[f64],
        out: &mut CompressedVec,
        w: &mut BitWriter,
    ) -> Result<(), CompressError> {
        if indices.len() != self.k || values.len() != self.k {
            return Err(CompressError::Shape(format!(
                "a top-k selection has {} entries, top-k keeps {}",
                indices.len(),
                self.k
            )));
        }
        // indices first, then values, as `compress` leaves `out` on an error
        out.reset_sparse(self.d);
        out.indices
            .extend(indices.iter().map(|&j| (j as usize - offset) as u32));
        out.values.reserve(self.k);
        for (&j, &v) in out.indices.iter().zip(values) {
            let v = round_checked(self.fmt, v, j as usize)?;
            out.values.push(v);
        }
        write_sparse(w, out, self.fmt);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    /// Reference: sort by (-|x|, index).
    fn naive(x: &[f64], k: usize) -> Vec<u32> {
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        let mut v: Vec<u32> = order[..k.min(x.len())].iter().map(|&i| i as u32).collect();
        v.sort();
        v
    }

    /// Test input of `kind` 0..=3: uniform, heavy ties, equal magnitudes
    /// with sign flips, signed zeros.
    fn tie_input(kind: usize, d: usize, rng: &mut crate::rng::Rng) -> Vec<f64> {
        match kind {
            0 => (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            1 => (0..d).map(|_| rng.gen_range(-3i32..=3) as f64).collect(),
            2 => (0..d)
                .map(|j| if j % 2 == 0 { 0.5 } else { -0.5 })
                .collect(),
            _ => (0..d)
                .map(|j| if j % 3 == 0 { -0.0 } else { 0.0 })
                .collect(),
        }
    }

    #[test]
    fn matches_naive_selection() {
        let mut rng = crate::rng::rng_from_key(1);
        let (mut h, mut c, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..400 {
            let d = rng.gen_range(1..3000);
            let k = rng.gen_range(0..=d);
            let x: Vec<f64> = match trial % 5 {
                kind @ 0..=3 => tie_input(kind, d, &mut rng),
                // wide dynamic range
                _ => (0..d)
                    .map(|_| rng.gen_range(-1.0..1.0) * 10f64.powi(rng.gen_range(-300..300)))
                    .collect(),
            };
            select_top_k(&x, k, &mut h, &mut c, &mut idx);
            assert_eq!(idx, naive(&x, k), "trial {trial} d={d} k={k}");
        }
    }

    /// The one-pass selection for small K equals the naive one and the
    /// histogram method, ties (signed zeros, equal magnitudes of either
    /// sign) included, for every K it serves.
    #[test]
    fn small_k_path_matches_naive_and_histogram() {
        let mut rng = crate::rng::rng_from_key(5);
        let (mut h, mut c, mut idx, mut hidx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for trial in 0..2000 {
            let d = rng.gen_range(2..400);
            let k = rng.gen_range(1..=SMALL_K.min(d - 1));
            let x: Vec<f64> = match trial % 5 {
                kind @ 0..=3 => tie_input(kind, d, &mut rng),
                // increasing magnitudes: every entry enters the buffer
                _ => (0..d)
                    .map(|j| (j as f64 + 1.0) * if j % 2 == 0 { 1.0 } else { -1.0 })
                    .collect(),
            };
            select_top_k(&x, k, &mut h, &mut c, &mut idx);
            assert_eq!(idx, naive(&x, k), "trial {trial} d={d} k={k}");
            select_by_histogram(&x, k, &mut h, &mut c, &mut hidx);
            assert_eq!(idx, hidx, "trial {trial} d={d} k={k}");
        }
    }

    #[test]
    fn sampled_path_matches_naive() {
        let mut rng = crate::rng::rng_from_key(4);
        let (mut h, mut c, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..24 {
            let d = rng.gen_range(SAMPLE_MIN_D..3 * SAMPLE_MIN_D);
            let k = match trial % 4 {
                0 => rng.gen_range(1..20),
                1 => rng.gen_range(1..d),
                2 => d / 100,
                _ => d - rng.gen_range(1..20),
            };
            let x: Vec<f64> = match trial % 3 {
                0 => (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect(),
                1 => (0..d)
                    .map(|_| rng.gen_range(-2i32..=2) as f64 * 0.25)
                    .collect(),
                _ => (0..d).map(|j| ((j * 7919) % 1000) as f64 - 500.0).collect(),
            };
            select_top_k(&x, k, &mut h, &mut c, &mut idx);
            assert_eq!(idx, naive(&x, k), "trial {trial} d={d} k={k}");
        }
    }

    /// The checked selection fails exactly as `check_finite` does (same
    /// first index, same value) wherever the non-finite entries sit: in the
    /// strided sample, between sample points, first, last, one or several,
    /// large or small K (sampled, fallback and small-d paths); and selects as
    /// the unchecked one on finite input.
    #[test]
    fn checked_selection_reports_the_first_non_finite_entry() {
        let mut rng = crate::rng::rng_from_key(9);
        let (mut h, mut c, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..60 {
            let d = if trial % 5 == 0 {
                rng.gen_range(100..SAMPLE_MIN_D)
            } else {
                rng.gen_range(SAMPLE_MIN_D..2 * SAMPLE_MIN_D)
            };
            let k = match trial % 3 {
                0 => rng.gen_range(1..20),
                1 => d / 100,
                _ => rng.gen_range(1..d),
            };
            let mut x: Vec<f64> = (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            select_top_k_checked(&x, k, &mut h, &mut c, &mut idx).unwrap();
            assert_eq!(idx, naive(&x, k), "finite, trial {trial}");
            let stride = d / (d / 64).clamp(1024, 16384).min(d);
            let bad = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN][rng.gen_range(0..4)];
            let spots: Vec<usize> = match trial % 4 {
                0 => vec![0],
                1 => vec![d - 1],
                2 => vec![stride * rng.gen_range(0..d / stride)], // a sample point
                _ => (0..rng.gen_range(1..40))
                    .map(|_| rng.gen_range(0..d))
                    .collect(),
            };
            for &j in &spots {
                x[j] = bad;
            }
            let got = select_top_k_checked(&x, k, &mut h, &mut c, &mut idx).unwrap_err();
            let want = check_finite(&x).unwrap_err();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "trial {trial}");
        }
    }

    #[test]
    fn large_input_matches_naive() {
        let mut rng = crate::rng::rng_from_key(2);
        let d = 200_000;
        let stride = d / (d / 64).clamp(1024, 16384);
        let inputs: Vec<Vec<f64>> = vec![
            (0..d)
                .map(|_| rng.gen_range(-1.0f64..1.0).powi(3))
                .collect(),
            // the sample sees only small values: far too many candidates
            (0..d)
                .map(|j| {
                    if j % stride == 0 {
                        1e-9
                    } else {
                        1.0 + (j % 7) as f64
                    }
                })
                .collect(),
            // the sample sees only large values: too few candidates, fallback
            (0..d)
                .map(|j| {
                    if j % stride == 0 {
                        1e9
                    } else {
                        (j % 13) as f64
                    }
                })
                .collect(),
            // increasing, all equal, mostly zero
            (0..d).map(|j| j as f64).collect(),
            vec![2.5; d],
            (0..d)
                .map(|j| if j % 9973 == 0 { -1.0 } else { 0.0 })
                .collect(),
        ];
        let (mut h, mut c, mut idx) = (Vec::new(), Vec::new(), Vec::new());
        for x in &inputs {
            for k in [1, 17, 2000, 100_000, 199_999] {
                select_top_k(x, k, &mut h, &mut c, &mut idx);
                assert_eq!(idx, naive(x, k));
                // the histogram path alone gives the same answer
                select_by_histogram(x, k, &mut h, &mut c, &mut idx);
                assert_eq!(idx, naive(x, k));
            }
        }
    }

    /// In f64 a kept 0 with a lower index left out is refused; the
    /// encoder's own messages with kept zeros decode, and in f32 (where a
    /// tiny kept value rounds to 0) the same layout is accepted.
    #[test]
    fn a_kept_zero_above_a_left_out_index_is_refused_in_f64() {
        use crate::compress::{decode_one, encode_one, CompressedVec};
        use crate::rng::rng_from_key;
        let top = |fmt| TopK {
            d: 4,
            k: 2,
            fmt,
            block: TopKBlock {
                offset: 0,
                len: 4,
                k: 2,
            },
        };
        let f64_top = top(ValueFormat::F64);
        // x = (0, 5, 0, 0): the encoder keeps 1 and, of the tied zeros, 0
        let m = encode_one(&f64_top, &[0.0, 5.0, 0.0, 0.0], &mut rng_from_key(1), 0).unwrap();
        assert_eq!(m.value.indices, [0, 1]);
        decode_one(&f64_top, &m.bytes, 0).unwrap();
        // {1, 2} with a 0 at 2: index 0 would have won the tie
        let forged = |fmt: ValueFormat| {
            let c = CompressedVec {
                dim: 4,
                dense: false,
                indices: vec![1, 2],
                values: vec![5.0, 0.0],
            };
            let mut w = BitWriter::new();
            write_sparse(&mut w, &c, fmt);
            w.finish().to_vec()
        };
        let e = decode_one(&f64_top, &forged(ValueFormat::F64), 0).unwrap_err();
        assert!(e.to_string().contains("kept 0 at index 2"), "{e}");
        // in f32, x = (0, 5, 1e-50, 0) sends exactly this layout
        let f32_top = top(ValueFormat::F32);
        let m = encode_one(&f32_top, &[0.0, 5.0, 1e-50, 0.0], &mut rng_from_key(1), 0).unwrap();
        assert_eq!(m.bytes, forged(ValueFormat::F32));
        decode_one(&f32_top, &m.bytes, 0).unwrap();
    }
}
