//! Bit-level writer and reader shared by every codec.
//!
//! Bits are written most-significant first within each byte. A finished message
//! is padded with zero bits to a whole byte; the reader checks that padding and
//! rejects trailing bytes, so each message has exactly one encoding.
//!
//! Integer codes: fixed width, Elias gamma (for counts) and Golomb–Rice with
//! parameter `k` (for index gaps; `q` unary ones then a zero, then `k` bits).

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

    /// Number of bits written so far.
    pub fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 + self.nacc as u64
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
        self.write_bits(v.to_bits(), 64);
    }

    /// Pads to a byte boundary with zero bits and returns the bytes.
    pub fn finish(&mut self) -> &[u8] {
        if self.nacc > 0 {
            let pad = 8 - self.nacc;
            self.write_bits(0, pad);
        }
        &self.buf
    }

    /// The bytes of a finished writer (call [`BitWriter::finish`] first).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
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
            return Err(DecodeError::Truncated { at: self.pos, needed: n });
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
        Ok(f64::from_bits(self.read_bits(64)?))
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
