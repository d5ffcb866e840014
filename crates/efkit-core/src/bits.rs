//! Bit-level writer and reader shared by every codec.
//!
//! Bits are written most-significant first within each byte. A finished message
//! is padded with zero bits to a whole byte; the reader checks that padding and
//! rejects trailing bytes, so each message has exactly one encoding.
//!
//! Integer codes: fixed width, Elias gamma (for counts) and Golomb–Rice with
//! parameter `k` (for index gaps; `q` unary ones then a zero, then `k` bits).
//!
//! Bulk paths for codecs that write or read one short code per coordinate
//! (quantizers): [`BitWriter::write_u64_block`] and [`BitReader::read_u64_block`]
//! move 64 bits at once, [`BitPacker`] collects codes in a 64-bit register and
//! stores whole words, and [`BitWindow`] decodes from a 64-bit window refilled
//! with one unaligned load (the classic "bit buffer" technique; see e.g.
//! F. Giesen, "Reading bits in far too many ways", 2018). They produce and
//! consume exactly the same bit stream as the one-code-at-a-time methods.

use crate::error::DecodeError;

/// Appends bits to a reusable byte buffer.
#[derive(Debug, Default, Clone)]
pub struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    nacc: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the writer, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.acc = 0;
        self.nacc = 0;
    }

    /// Bytes allocated for the output (for allocation checks).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Number of bits written so far.
    pub fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 + self.nacc as u64
    }

    /// Drops every bit after the first `bits` (a composite codec undoing a
    /// partly written message). `bits` must not exceed [`BitWriter::bit_len`].
    pub fn truncate(&mut self, bits: u64) {
        let len = self.bit_len();
        assert!(bits <= len, "truncate to {bits} bits of {len}");
        let whole = (bits / 8) as usize;
        let rem = (bits % 8) as u32;
        if whole >= self.buf.len() {
            // only bits of the accumulator go
            self.acc >>= (len - bits) as u32;
        } else {
            self.acc = if rem == 0 {
                0
            } else {
                u64::from(self.buf[whole] >> (8 - rem))
            };
            self.buf.truncate(whole);
        }
        self.nacc = rem;
    }

    /// Writes the low `n` bits of `v` (n <= 64), most significant first.
    #[inline]
    pub fn write_bits(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        if n > 32 {
            self.write_bits(v >> 32, n - 32);
            self.write_bits(v & 0xFFFF_FFFF, 32);
            return;
        }
        let v = v & ((1u64 << n) - 1);
        self.acc = (self.acc << n) | v;
        self.nacc += n;
        while self.nacc >= 8 {
            self.nacc -= 8;
            self.buf.push((self.acc >> self.nacc) as u8);
        }
        self.acc &= (1u64 << self.nacc) - 1;
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bit(&mut self, b: bool) {
        self.write_bits(b as u64, 1);
    }

    /// Elias gamma code of `v + 1` (so 0 is encodable): 2*floor(log2(v+1)) + 1 bits.
    pub fn write_gamma(&mut self, v: u64) {
        let x = v.wrapping_add(1);
        assert!(x != 0, "gamma code overflow");
        let nb = 64 - x.leading_zeros();
        self.write_bits(0, nb - 1);
        self.write_bits(x, nb);
    }

    /// Golomb–Rice code of `v` with parameter `k`.
    #[inline]
    pub fn write_rice(&mut self, v: u64, k: u32) {
        let mut q = v >> k;
        while q >= 32 {
            self.write_bits(u32::MAX as u64, 32);
            q -= 32;
        }
        self.write_bits((1u64 << q) - 1, q as u32);
        self.write_bit(false);
        if k > 0 {
            self.write_bits(v & ((1u64 << k) - 1), k);
        }
    }

    /// Writes an f32 by its bit pattern.
    #[inline]
    pub fn write_f32(&mut self, v: f32) {
        self.write_bits(v.to_bits() as u64, 32);
    }

    /// Writes an f64 by its bit pattern.
    #[inline]
    pub fn write_f64(&mut self, v: f64) {
        // one 8-byte store instead of eight byte pushes (dense model broadcasts)
        self.write_u64_block(v.to_bits());
    }

    /// Writes every f64 of `xs` by its bit pattern: the same bits as
    /// [`write_f64`](Self::write_f64) on each, in one pass over a buffer grown
    /// once (a dense model is 8 bytes per parameter, sent every round).
    pub fn write_f64s(&mut self, xs: &[f64]) {
        let start = self.buf.len();
        self.buf.resize(start + 8 * xs.len(), 0);
        let out = self.buf[start..].chunks_exact_mut(8);
        // Invariant: fewer than 8 bits are pending in `acc` (masked to `nacc`);
        // each word is those bits followed by the top of the next value.
        let n = self.nacc;
        if n == 0 {
            for (o, &v) in out.zip(xs) {
                o.copy_from_slice(&v.to_bits().to_be_bytes());
            }
        } else {
            let mut prev = self.acc;
            for (o, &v) in out.zip(xs) {
                let b = v.to_bits();
                o.copy_from_slice(&((prev << (64 - n)) | (b >> n)).to_be_bytes());
                prev = b;
            }
            self.acc = prev & ((1u64 << n) - 1);
        }
    }

    /// Writes every value of `xs` as the bit pattern of `x as f32`: the same
    /// bits as [`write_f32`](Self::write_f32) on each, in one pass over a
    /// buffer grown once (dense f32 messages: the uncompressed baselines'
    /// uplinks, a network's 200,000 parameters per worker and round).
    pub fn write_f32s(&mut self, xs: &[f64]) {
        let start = self.buf.len();
        self.buf.resize(start + 4 * xs.len(), 0);
        let out = self.buf[start..].chunks_exact_mut(4);
        // Invariant: fewer than 8 bits are pending in `acc` (masked to `nacc`).
        let n = self.nacc;
        if n == 0 {
            for (o, &v) in out.zip(xs) {
                o.copy_from_slice(&(v as f32).to_bits().to_be_bytes());
            }
        } else {
            let mut prev = self.acc as u32;
            for (o, &v) in out.zip(xs) {
                let b = (v as f32).to_bits();
                o.copy_from_slice(&((prev << (32 - n)) | (b >> n)).to_be_bytes());
                prev = b;
            }
            self.acc = u64::from(prev) & ((1u64 << n) - 1);
        }
    }

    /// Writes the 64 bits of `v`, most significant first: the same bits as
    /// `write_bits(v, 64)`, with one 8-byte store.
    #[inline]
    pub fn write_u64_block(&mut self, v: u64) {
        // Invariant: fewer than 8 bits are pending in `acc` (masked to `nacc`).
        let word = if self.nacc == 0 {
            v
        } else {
            (self.acc << (64 - self.nacc)) | (v >> self.nacc)
        };
        self.buf.extend_from_slice(&word.to_be_bytes());
        self.acc = v & ((1u64 << self.nacc) - 1);
    }

    /// Appends a whole 64-bit word; the writer must have no pending bits (the
    /// state inside a [`BitPacker`]).
    #[inline]
    fn write_u64_block_aligned(&mut self, word: u64) {
        debug_assert_eq!(self.nacc, 0);
        self.buf.extend_from_slice(&word.to_be_bytes());
    }

    /// Reserves room for at least `n` more bits, so that the writes that follow
    /// do not reallocate. The buffer keeps its capacity across
    /// [`clear`](Self::clear), and 1/8 more is reserved so that later
    /// messages of somewhat different sizes do not reallocate either.
    pub fn reserve_bits(&mut self, n: u64) {
        let bytes = n.div_ceil(8);
        let bytes = usize::try_from(bytes + bytes / 8)
            .unwrap_or(usize::MAX)
            .saturating_add(64);
        self.buf.reserve(bytes);
    }

    /// A [`BitPacker`] appending to this writer; its bits are in the writer once
    /// the packer is dropped.
    #[inline]
    pub fn packer(&mut self) -> BitPacker<'_> {
        let (acc, n) = (self.acc, self.nacc);
        self.acc = 0;
        self.nacc = 0;
        BitPacker { w: self, acc, n }
    }

    /// Pads to a byte boundary with zero bits and returns the bytes.
    pub fn finish(&mut self) -> &[u8] {
        if self.nacc > 0 {
            let pad = 8 - self.nacc;
            self.write_bits(0, pad);
        }
        &self.buf
    }

    /// Finishes and hands the bytes over by swapping buffers with `out`
    /// (no copy: a dense model is 8 bytes per parameter); the writer keeps
    /// `out`'s old buffer, cleared, for its next message.
    pub fn finish_swap(&mut self, out: &mut Vec<u8>) {
        self.finish();
        std::mem::swap(&mut self.buf, out);
        self.clear();
    }

    /// The bytes of a finished writer (call [`BitWriter::finish`] first).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Appends codes to a [`BitWriter`] through a 64-bit register, storing whole
/// 64-bit words: the bulk path for one short code per coordinate.
///
/// `put(code, len)` appends the same bits as `BitWriter::write_bits(code, len)`.
/// The pending bits (fewer than 64) are moved into the writer when the packer
/// is dropped, so the writer's [`BitWriter::bit_len`] is exact again after it.
#[derive(Debug)]
pub struct BitPacker<'w> {
    w: &'w mut BitWriter,
    /// Pending bits, right-aligned; only the low `n` bits are set.
    acc: u64,
    /// Number of pending bits, < 64.
    n: u32,
}

impl BitPacker<'_> {
    /// Appends the low `len` bits of `code` (len <= 64), most significant first.
    /// `code` must have no bits set above `len`.
    #[inline]
    pub fn put(&mut self, code: u64, len: u32) {
        debug_assert!(
            len <= 64 && (len == 64 || code >> len == 0),
            "put({code:#x}, {len})"
        );
        let total = self.n + len;
        if total < 64 {
            // len < 64 here.
            self.acc = (self.acc << len) | code;
            self.n = total;
        } else {
            let rem = total - 64; // <= 63
                                  // acc << (64 - n), written as two shifts so that n = 0 is defined.
            let word = ((self.acc << 1) << (63 - self.n)) | (code >> rem);
            self.w.write_u64_block_aligned(word);
            self.acc = code & ((1u64 << rem) - 1);
            self.n = rem;
        }
    }

    /// Appends 64 bits.
    #[inline]
    pub fn put_u64(&mut self, v: u64) {
        self.put(v, 64);
    }

    /// Golomb–Rice code of `v` with parameter `k` (k <= 31): the same bits
    /// as [`BitWriter::write_rice`], mostly as one code.
    #[inline]
    pub fn put_rice(&mut self, v: u64, k: u32) {
        debug_assert!(k <= 31);
        let mut q = v >> k;
        while q >= 32 {
            self.put(u64::from(u32::MAX), 32);
            q -= 32;
        }
        // q ones, a zero, the k low bits: at most 31 + 1 + 31 bits
        let low = v & ((1u64 << k) - 1);
        self.put((((1u64 << q) - 1) << (k + 1)) | low, q as u32 + 1 + k);
    }
}

impl Drop for BitPacker<'_> {
    fn drop(&mut self) {
        // The writer was left with no pending bits when the packer was made.
        self.w.write_bits(self.acc, self.n);
    }
}

/// Reads bits from a byte slice; every read is bounds checked.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: u64,
}

impl<'a> BitReader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Bits consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bits left.
    pub fn remaining(&self) -> u64 {
        self.data.len() as u64 * 8 - self.pos
    }

    /// Reads `n` bits (n <= 64).
    #[inline]
    pub fn read_bits(&mut self, n: u32) -> Result<u64, DecodeError> {
        if n == 0 {
            return Ok(0);
        }
        if n as u64 > self.remaining() {
            return Err(DecodeError::Truncated {
                at: self.pos,
                needed: n,
            });
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = self.data[(self.pos / 8) as usize];
            let off = (self.pos % 8) as u32;
            let avail = 8 - off;
            let take = avail.min(left);
            let bits = ((byte as u32) >> (avail - take)) & ((1u32 << take) - 1);
            v = (v << take) | bits as u64;
            left -= take;
            self.pos += take as u64;
        }
        Ok(v)
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bit(&mut self) -> Result<bool, DecodeError> {
        Ok(self.read_bits(1)? == 1)
    }

    /// Reads an Elias gamma code written by [`BitWriter::write_gamma`].
    pub fn read_gamma(&mut self) -> Result<u64, DecodeError> {
        let mut zeros = 0u32;
        while !self.read_bit()? {
            zeros += 1;
            if zeros > 63 {
                return Err(DecodeError::invalid("gamma", "code longer than 64 bits"));
            }
        }
        let rest = self.read_bits(zeros)?;
        let x = (1u64 << zeros) | rest;
        Ok(x - 1)
    }

    /// Reads a Golomb–Rice code with parameter `k`; `max` bounds the value so
    /// that hostile input cannot make the reader spin.
    pub fn read_rice(&mut self, k: u32, max: u64) -> Result<u64, DecodeError> {
        let mut q = 0u64;
        let qmax = max >> k;
        while self.read_bit()? {
            q += 1;
            if q > qmax {
                return Err(DecodeError::invalid("rice", "value exceeds its bound"));
            }
        }
        let r = self.read_bits(k)?;
        let v = (q << k) | r;
        if v > max {
            return Err(DecodeError::invalid("rice", "value exceeds its bound"));
        }
        Ok(v)
    }

    /// Reads an f32 bit pattern.
    pub fn read_f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_bits(self.read_bits(32)? as u32))
    }

    /// Reads an f64 bit pattern.
    pub fn read_f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.read_u64_block()?))
    }

    /// Reads `n` f32 bit patterns and appends them to `out` as f64: the same
    /// values as `n` calls of [`read_f32`](Self::read_f32), in one pass. On
    /// a short input nothing is appended and the error is the one the first
    /// missing value would give.
    pub fn read_f32s(&mut self, n: usize, out: &mut Vec<f64>) -> Result<(), DecodeError> {
        let bits = (n as u64).saturating_mul(32);
        if bits > self.remaining() {
            // the first value that does not fit
            let whole = self.remaining() / 32;
            return Err(DecodeError::Truncated {
                at: self.pos + 32 * whole,
                needed: 32,
            });
        }
        let byte = (self.pos / 8) as usize;
        let off = (self.pos % 8) as u32;
        let body = &self.data[byte..];
        if off == 0 {
            out.extend(body.chunks_exact(4).take(n).map(|w| {
                f64::from(f32::from_bits(u32::from_be_bytes(
                    w.try_into().expect("4 bytes"),
                )))
            }));
        } else {
            // value i spans bytes 4i..4i+4 of `body` shifted by `off`, and
            // the top bits of byte 4i+4, which exists (the n values end in it)
            out.extend((0..n).map(|i| {
                let w = &body[4 * i..4 * i + 5];
                let hi = u32::from_be_bytes(w[..4].try_into().expect("4 bytes"));
                f64::from(f32::from_bits((hi << off) | (u32::from(w[4]) >> (8 - off))))
            }));
        }
        self.pos += bits;
        Ok(())
    }

    /// Reads 64 bits: the same value and errors as `read_bits(64)`, with one
    /// unaligned 8-byte load.
    #[inline]
    pub fn read_u64_block(&mut self) -> Result<u64, DecodeError> {
        if self.remaining() < 64 {
            return Err(DecodeError::Truncated {
                at: self.pos,
                needed: 64,
            });
        }
        let byte = (self.pos / 8) as usize;
        let off = (self.pos % 8) as u32;
        let hi = load_be(&self.data[byte..]);
        // With off > 0 the 64 bits end inside byte + 8, which exists.
        let v = if off == 0 {
            hi
        } else {
            (hi << off) | (self.data[byte + 8] as u64 >> (8 - off))
        };
        self.pos += 64;
        Ok(v)
    }

    /// A [`BitWindow`] reading from the current position; the reader's position
    /// is advanced past the consumed bits when the window is dropped.
    #[inline]
    pub fn window(&mut self) -> BitWindow<'_, 'a> {
        let byte = (self.pos / 8) as usize;
        let off = (self.pos % 8) as u32;
        let mut win = BitWindow {
            r: self,
            byte,
            buf: 0,
            n: 0,
        };
        win.refill();
        win.consume(off);
        win
    }

    /// Checks that only zero padding (< 8 bits) remains.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        let rem = self.remaining();
        if rem >= 8 {
            return Err(DecodeError::Trailing(rem));
        }
        let pad = self.read_bits(rem as u32)?;
        if pad != 0 {
            return Err(DecodeError::invalid("padding", "padding bits are not zero"));
        }
        Ok(())
    }
}

/// The first 8 bytes of `b` as a big-endian word, zero-padded if `b` is shorter.
#[inline]
fn load_be(b: &[u8]) -> u64 {
    match b.get(..8) {
        Some(w) => u64::from_be_bytes(w.try_into().expect("8 bytes")),
        None => {
            let mut t = [0u8; 8];
            t[..b.len()].copy_from_slice(b);
            u64::from_be_bytes(t)
        }
    }
}

/// A 64-bit look-ahead window over a [`BitReader`] for decoding many short
/// codes: [`refill`](Self::refill) makes at least 56 bits available with one
/// load, [`peek`](Self::peek) shows them left-aligned, [`consume`](Self::consume)
/// drops bits.
///
/// Past the end of the input the window reads zero bits instead of failing, so
/// that decoding loops stay branch-light; a decoder must check
/// [`overrun`](Self::overrun) (or call [`finish`](Self::finish)) before
/// trusting what it decoded, and must bound its loops by the message size, not
/// by the input. On drop the reader's position moves to the window's position
/// (at most the end of the input).
#[derive(Debug)]
pub struct BitWindow<'r, 'a> {
    r: &'r mut BitReader<'a>,
    /// Next byte of the input to load.
    byte: usize,
    /// Left-aligned bits: the top `n` are the next bits of the stream; the bits
    /// below are either the following stream bits or zero.
    buf: u64,
    /// Valid bits in `buf`, < 64.
    n: u32,
}

impl BitWindow<'_, '_> {
    /// Makes at least 56 bits available (zero bits past the end of the input).
    #[inline]
    pub fn refill(&mut self) {
        let data = self.r.data;
        let w = if self.byte + 8 <= data.len() {
            u64::from_be_bytes(data[self.byte..self.byte + 8].try_into().expect("8 bytes"))
        } else {
            load_be(data.get(self.byte..).unwrap_or(&[]))
        };
        self.buf |= w >> self.n;
        let k = (63 - self.n) >> 3;
        self.byte += k as usize;
        self.n += 8 * k;
    }

    /// The next bits of the stream, left-aligned; the top [`available`](Self::available)
    /// of them are valid.
    #[inline]
    pub fn peek(&self) -> u64 {
        self.buf
    }

    /// Number of valid bits in [`peek`](Self::peek) (56..=63 right after a refill).
    #[inline]
    pub fn available(&self) -> u32 {
        self.n
    }

    /// Drops the next `len` bits (len <= [`available`](Self::available)).
    #[inline]
    pub fn consume(&mut self, len: u32) {
        debug_assert!(
            len <= self.n,
            "consume({len}) with {} bits available",
            self.n
        );
        self.buf <<= len;
        self.n -= len;
    }

    /// Bit offset of the next unread bit in the input (may exceed its length
    /// after reading past the end).
    #[inline]
    pub fn position(&self) -> u64 {
        self.byte as u64 * 8 - self.n as u64
    }

    /// Whether more bits were consumed than the input holds.
    #[inline]
    pub fn overrun(&self) -> bool {
        self.position() > self.r.data.len() as u64 * 8
    }

    /// Ends the window: [`DecodeError::Truncated`] if it read past the end of
    /// the input, else the reader continues at the window's position.
    pub fn finish(self) -> Result<(), DecodeError> {
        let end = self.r.data.len() as u64 * 8;
        let pos = self.position();
        if pos > end {
            return Err(DecodeError::Truncated {
                at: end,
                needed: u32::try_from(pos - end).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }
}

impl Drop for BitWindow<'_, '_> {
    fn drop(&mut self) {
        let end = self.r.data.len() as u64 * 8;
        self.r.pos = self.position().min(end);
    }
}

/// Number of bits of a Golomb–Rice code of `v` with parameter `k`.
#[inline]
pub fn rice_len(v: u64, k: u32) -> u64 {
    (v >> k) + 1 + k as u64
}

/// Number of bits of the Elias gamma code written by [`BitWriter::write_gamma`].
#[inline]
pub fn gamma_len(v: u64) -> u64 {
    let nb = 64 - (v + 1).leading_zeros() as u64;
    2 * nb - 1
}

/// Bits needed to write any value in `0..=max`.
#[inline]
pub fn width_for(max: u64) -> u32 {
    64 - max.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_f64_writes_equal_one_value_at_a_time_at_every_alignment() {
        let xs = [1.5, -0.0, f64::MAX, 3.0e-300, -7.25, f64::MIN_POSITIVE, 0.1];
        for lead in 0..=9u32 {
            let (mut bulk, mut each) = (BitWriter::new(), BitWriter::new());
            for w in [&mut bulk, &mut each] {
                w.write_bits(0b1_0110_1101 >> (9 - lead.min(9)), lead);
            }
            bulk.write_f64s(&xs);
            for &x in &xs {
                each.write_f64(x);
            }
            assert_eq!(bulk.bit_len(), each.bit_len(), "lead {lead}");
            // later writes continue from the same pending bits
            bulk.write_bits(0b101, 3);
            each.write_bits(0b101, 3);
            assert_eq!(bulk.finish(), each.finish(), "lead {lead}");
        }
    }

    #[test]
    fn bulk_f32_writes_and_reads_equal_one_value_at_a_time_at_every_alignment() {
        let xs = [
            1.5,
            -0.0,
            f32::MAX as f64,
            3.0e-40,
            -7.25,
            0.1,
            f64::from(f32::MIN_POSITIVE),
            1e-3,
        ];
        for lead in 0..=9u32 {
            let (mut bulk, mut each) = (BitWriter::new(), BitWriter::new());
            for w in [&mut bulk, &mut each] {
                w.write_bits(0b1_0110_1101 >> (9 - lead.min(9)), lead);
            }
            bulk.write_f32s(&xs);
            for &x in &xs {
                each.write_f32(x as f32);
            }
            assert_eq!(bulk.bit_len(), each.bit_len(), "lead {lead}");
            bulk.write_bits(0b101, 3);
            each.write_bits(0b101, 3);
            let bytes = each.finish().to_vec();
            assert_eq!(bulk.finish(), &bytes[..], "lead {lead}");
            // read back in bulk and one at a time from the same offset
            let (mut rb, mut re) = (BitReader::new(&bytes), BitReader::new(&bytes));
            rb.read_bits(lead).unwrap();
            re.read_bits(lead).unwrap();
            let mut got = vec![7.0];
            rb.read_f32s(xs.len(), &mut got).unwrap();
            let want: Vec<f64> = (0..xs.len())
                .map(|_| f64::from(re.read_f32().unwrap()))
                .collect();
            assert_eq!(got[0], 7.0, "appends");
            let (g, w): (Vec<u64>, Vec<u64>) = (
                got[1..].iter().map(|v| v.to_bits()).collect(),
                want.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(g, w, "lead {lead}");
            assert_eq!(rb.position(), re.position());
            assert_eq!(rb.read_bits(3).unwrap(), 0b101);
            // one value too many: the error the first missing value gives
            let mut rs = BitReader::new(&bytes);
            rs.read_bits(lead).unwrap();
            let mut sink = Vec::new();
            let e = rs.read_f32s(xs.len() + 1, &mut sink).unwrap_err();
            assert_eq!(
                e,
                DecodeError::Truncated {
                    at: u64::from(lead) + 32 * xs.len() as u64,
                    needed: 32
                }
            );
            assert!(sink.is_empty());
        }
    }

    #[test]
    fn truncate_equals_never_writing() {
        for keep in 0..=45u64 {
            let mut w = BitWriter::new();
            w.write_bits(0b1011_0110_1110_0101_1, 17);
            w.write_bits(0x1234_5678, 28);
            let all = w.bit_len();
            w.truncate(keep);
            assert_eq!(w.bit_len(), keep);
            w.write_bits(0b101, 3);
            // the same prefix written directly
            let mut v = BitWriter::new();
            let mut r = BitWriter::new();
            r.write_bits(0b1011_0110_1110_0101_1, 17);
            r.write_bits(0x1234_5678, 28);
            let full = r.finish().to_vec();
            let mut rd = BitReader::new(&full);
            let mut left = keep;
            while left > 0 {
                let n = left.min(32) as u32;
                v.write_bits(rd.read_bits(n).unwrap(), n);
                left -= n as u64;
            }
            v.write_bits(0b101, 3);
            assert_eq!(w.finish(), v.finish(), "keep {keep} of {all}");
        }
    }

    #[test]
    fn finish_swap_hands_over_the_finished_bytes_and_clears() {
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        w.write_f64(1.25);
        let want = w.finish().to_vec();
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        w.write_f64(1.25);
        let mut out = vec![9u8; 100];
        w.finish_swap(&mut out);
        assert_eq!(out, want);
        assert_eq!(w.bit_len(), 0);
        // the writer kept out's old buffer: reused, not reallocated
        assert!(w.capacity() >= 100);
        w.write_bits(1, 1);
        assert_eq!(w.finish(), &[0x80]);
    }

    #[test]
    fn roundtrip_mixed_codes() {
        let mut w = BitWriter::new();
        w.write_bits(5, 3);
        w.write_gamma(0);
        w.write_gamma(1000);
        w.write_rice(77, 3);
        w.write_f32(1.5);
        w.write_f64(-2.25);
        w.write_bits(u64::MAX, 64);
        let expect = 3 + gamma_len(0) + gamma_len(1000) + rice_len(77, 3) + 32 + 64 + 64;
        assert_eq!(w.bit_len(), expect);
        let bytes = w.finish().to_vec();
        assert_eq!(bytes.len() as u64, expect.div_ceil(8));
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read_bits(3).unwrap(), 5);
        assert_eq!(r.read_gamma().unwrap(), 0);
        assert_eq!(r.read_gamma().unwrap(), 1000);
        assert_eq!(r.read_rice(3, 1 << 20).unwrap(), 77);
        assert_eq!(r.read_f32().unwrap(), 1.5);
        assert_eq!(r.read_f64().unwrap(), -2.25);
        assert_eq!(r.read_bits(64).unwrap(), u64::MAX);
        r.finish().unwrap();
    }

    /// Random (code, len) pairs, lengths 0..=64, codes masked to their length.
    fn random_codes(seed: u64, n: usize) -> Vec<(u64, u32)> {
        use rand::Rng as _;
        let mut g = crate::rng::rng_from_key(seed);
        (0..n)
            .map(|_| {
                let len = if g.gen_bool(0.1) {
                    64
                } else {
                    g.gen_range(0..=57)
                };
                let v: u64 = g.gen();
                (
                    if len == 64 {
                        v
                    } else {
                        v & ((1u64 << len) - 1)
                    },
                    len,
                )
            })
            .collect()
    }

    #[test]
    fn packed_rice_codes_match_write_rice() {
        let cases = [
            (0u64, 0u32),
            (9, 0),
            (31, 0),
            (32, 0),
            (100, 1),
            (77, 3),
            (5_000, 7),
            (1 << 40, 31),
            ((1 << 36) - 1, 31),
            (3, 31),
        ];
        for lead in [0u32, 3, 7] {
            let (mut a, mut b) = (BitWriter::new(), BitWriter::new());
            a.write_bits(0b101, lead);
            b.write_bits(0b101, lead);
            {
                let mut p = b.packer();
                for &(v, k) in &cases {
                    a.write_rice(v, k);
                    p.put_rice(v, k);
                }
            }
            assert_eq!(a.bit_len(), b.bit_len(), "lead {lead}");
            assert_eq!(a.finish(), b.finish(), "lead {lead}");
        }
    }

    #[test]
    fn bulk_writes_match_bit_writes() {
        for seed in 0..20u64 {
            let codes = random_codes(seed, 500);
            let lead = (seed % 9) as u32; // misalign the start
            let mut a = BitWriter::new();
            let mut b = BitWriter::new();
            a.write_bits(0x1ff, lead);
            b.write_bits(0x1ff, lead);
            b.reserve_bits(1 << 16);
            {
                let mut p = b.packer();
                for (i, &(c, len)) in codes.iter().enumerate() {
                    a.write_bits(c, len);
                    if len == 64 && i % 2 == 0 {
                        p.put_u64(c);
                    } else {
                        p.put(c, len);
                    }
                }
            }
            assert_eq!(a.bit_len(), b.bit_len(), "seed {seed}");
            // 64-bit blocks at an arbitrary offset.
            for &(c, _) in codes.iter().take(20) {
                a.write_bits(c, 64);
                b.write_u64_block(c);
            }
            a.write_bits(5, 3);
            b.write_bits(5, 3);
            assert_eq!(a.bit_len(), b.bit_len());
            assert_eq!(a.finish(), b.finish(), "seed {seed}");
        }
        // A packer that writes nothing leaves the writer as it was.
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        drop(w.packer());
        assert_eq!(w.bit_len(), 3);
        assert_eq!(w.finish(), &[0b1010_0000]);
    }

    #[test]
    fn bulk_reads_match_bit_reads() {
        for seed in 0..20u64 {
            let codes = random_codes(seed + 100, 300);
            let mut w = BitWriter::new();
            for &(c, len) in &codes {
                w.write_bits(c, len);
            }
            let bytes = w.finish().to_vec();
            let total = bytes.len() as u64 * 8;
            // Window decoding, starting at every offset of the first code.
            let mut r = BitReader::new(&bytes);
            {
                let mut win = r.window();
                for (i, &(c, len)) in codes.iter().enumerate() {
                    win.refill();
                    assert!(win.available() >= 56);
                    if len <= 56 {
                        let got = if len == 0 {
                            0
                        } else {
                            win.peek() >> (64 - len)
                        };
                        assert_eq!(got, c, "seed {seed} code {i}");
                        win.consume(len);
                    } else {
                        let hi = win.peek() >> 32;
                        win.consume(32);
                        win.refill();
                        let lo = win.peek() >> (64 - (len - 32));
                        win.consume(len - 32);
                        assert_eq!((hi << (len - 32)) | lo, c, "seed {seed} code {i}");
                    }
                    assert!(!win.overrun());
                }
                assert!(total - win.position() < 8);
                win.finish().unwrap();
            }
            r.finish().unwrap();
            // 64-bit block reads at every bit offset.
            for off in 0..(total.min(200)) {
                let mut a = BitReader::new(&bytes);
                let mut b = BitReader::new(&bytes);
                a.read_bits((off % 64) as u32).unwrap();
                a.read_bits((off - off % 64) as u32 / 2).unwrap();
                a.read_bits((off - off % 64) as u32 / 2).unwrap();
                b.read_bits((off % 64) as u32).unwrap();
                b.read_bits((off - off % 64) as u32).unwrap();
                assert_eq!(a.position(), b.position());
                let x = a.read_bits(64);
                let y = b.read_u64_block();
                assert_eq!(x, y, "offset {off}");
                assert_eq!(a.position(), b.position());
            }
        }
        // Reading past the end: zero bits, then `overrun` and a Truncated finish.
        let bytes = [0xFFu8, 0x80];
        let mut r = BitReader::new(&bytes);
        r.read_bits(3).unwrap();
        {
            let mut win = r.window();
            assert_eq!(win.peek() >> 51, 0b1_1111_1000_0000);
            win.consume(13);
            assert!(!win.overrun());
            win.refill();
            assert_eq!(win.peek(), 0);
            win.consume(1);
            assert!(win.overrun());
            assert!(matches!(
                win.finish(),
                Err(DecodeError::Truncated { at: 16, needed: 1 })
            ));
        }
        assert_eq!(r.position(), 16, "position clamped to the end");
        let mut r = BitReader::new(&bytes);
        assert!(matches!(
            r.read_u64_block(),
            Err(DecodeError::Truncated { at: 0, needed: 64 })
        ));
        let mut r = BitReader::new(&[]);
        let mut win = r.window();
        win.refill();
        assert_eq!(win.peek(), 0);
        assert!(!win.overrun());
    }

    #[test]
    fn truncated_and_trailing_are_errors() {
        let mut r = BitReader::new(&[0xFF]);
        assert!(r.read_bits(9).is_err());
        let mut r = BitReader::new(&[0x00, 0x00]);
        r.read_bits(3).unwrap();
        assert!(matches!(r.finish(), Err(DecodeError::Trailing(_))));
        let mut r = BitReader::new(&[0x01]);
        r.read_bits(3).unwrap();
        assert!(r.finish().is_err());
        // all-zero gamma prefix never terminates within 64 bits
        let mut r = BitReader::new(&[0u8; 16]);
        assert!(r.read_gamma().is_err());
        let mut r = BitReader::new(&[0xFFu8; 16]);
        assert!(r.read_rice(0, 100).is_err());
    }
}
