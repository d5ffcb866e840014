//! Compact, lossless serde for the large vectors of the algorithm state.
//!
//! Checkpoints are JSON. Written as decimal numbers, an f64 takes about 20
//! characters and has to be formatted and parsed, so a network's state (an
//! MLP with d = 203,530 and ten workers: 34 vectors) became a 139 MB file that
//! took most of a second to write. In human-readable formats these helpers
//! write a vector as one base64 string of its little-endian bytes instead
//! (10.7 characters per f64, every bit pattern kept: -0.0, subnormals, NaN
//! payloads); non-human-readable formats get the plain sequence. Reading
//! accepts both the string and a plain array of numbers, so checkpoints
//! written before still load.
//!
//! Use with `#[serde(with = "crate::compact::f64s")]` (`Vec<f64>`),
//! `compact::arc_f64s` (`Arc<Vec<f64>>`) and `compact::bytes` (`Vec<u8>`).

use std::fmt;
use std::sync::Arc;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |k: u32| ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char;
        out.push(sextet(0));
        out.push(sextet(1));
        out.push(if c.len() > 1 { sextet(2) } else { '=' });
        out.push(if c.len() > 2 { sextet(3) } else { '=' });
    }
    out
}

/// Decodes standard base64 with padding; `None` for anything else (wrong
/// length, a character outside the alphabet, misplaced or non-canonical
/// padding).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (q, c) in s.chunks_exact(4).enumerate() {
        let pad = c.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &b in &c[..4 - pad] {
            n = (n << 6) | value(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // canonical: the bits under the padding are zero
        if bytes[3 - pad..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

fn f64s_from_le(bytes: Vec<u8>) -> Option<Vec<f64>> {
    if bytes.len() % 8 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// Reads a vector either as a base64 string (decoded by `from_bytes`) or as a
/// plain sequence of numbers.
struct Base64OrSeq<T> {
    from_bytes: fn(Vec<u8>) -> Option<Vec<T>>,
    expecting: &'static str,
}

impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for Base64OrSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
        decode_base64(s)
            .and_then(self.from_bytes)
            .ok_or_else(|| E::custom(format!("expected {}", self.expecting)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(v)
    }
}

/// [`Base64OrSeq`] through the deserializer: `deserialize_any` where the
/// format describes itself (JSON), a sequence otherwise.
fn read_vec<'de, D: Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
    v: Base64OrSeq<T>,
) -> Result<Vec<T>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(v)
    } else {
        d.deserialize_seq(v)
    }
}

const F64S: Base64OrSeq<f64> = Base64OrSeq {
    from_bytes: f64s_from_le,
    expecting: "a base64 string of little-endian f64s or an array of numbers",
};

const BYTES: Base64OrSeq<u8> = Base64OrSeq {
    from_bytes: Some,
    expecting: "a base64 string or an array of bytes",
};

/// `Vec<f64>` as one base64 string (human-readable formats).
pub mod f64s {
    use super::*;

    /// Serializes `v` (see the module docs).
    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            s.serialize_str(&encode_base64(&bytes))
        } else {
            s.collect_seq(v)
        }
    }

    /// Reads a base64 string or an array of numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        read_vec(d, F64S)
    }
}

/// `Arc<Vec<f64>>` like [`f64s`].
pub mod arc_f64s {
    use super::*;

    /// Serializes the shared vector's contents.
    pub fn serialize<S: Serializer>(v: &Arc<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        f64s::serialize(v, s)
    }

    /// Reads into a fresh (unshared) vector.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<f64>>, D::Error> {
        f64s::deserialize(d).map(Arc::new)
    }
}

/// `Vec<u8>` as one base64 string (human-readable formats).
pub mod bytes {
    use super::*;

    /// Serializes `v` (see the module docs).
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&encode_base64(v))
        } else {
            s.collect_seq(v)
        }
    }

    /// Reads a base64 string or an array of numbers 0..=255.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        read_vec(d, BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct S {
        #[serde(with = "f64s")]
        v: Vec<f64>,
        #[serde(with = "arc_f64s")]
        a: Arc<Vec<f64>>,
        #[serde(with = "bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors_and_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode_base64(plain.as_bytes()), coded);
            assert_eq!(decode_base64(coded).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&encode_base64(&all)).unwrap(), all);
        for bad in [
            "Zg=", "Zg=a", "Z===", "Zh==", "Zm9v!A==", "Zg==Zg==", "====",
        ] {
            assert!(decode_base64(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_bit_pattern_survives_json() {
        let v = vec![
            0.0,
            -0.0,
            1.0 / 3.0,
            f64::MIN_POSITIVE / 7.0,
            f64::MAX,
            f64::INFINITY,
            f64::from_bits(0x7ff8_0000_dead_beef),
        ];
        let s = S {
            v: v.clone(),
            a: Arc::new(v.clone()),
            b: vec![0, 1, 255, 128],
        };
        let json = serde_json::to_string(&s).unwrap();
        let back: S = serde_json::from_str(&json).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.v), bits(&v));
        assert_eq!(bits(&back.a), bits(&v));
        assert_eq!(back.b, s.b);
        // one string of the little-endian bytes: 7 f64 = 56 bytes = 76 characters
        let le: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let coded = encode_base64(&le);
        assert_eq!(coded.len(), 76);
        assert!(json.contains(&format!("\"v\":\"{coded}\"")), "{json}");
    }

    proptest::proptest! {
        /// Any bytes round-trip; any string decodes or is refused, never panics,
        /// and what decodes re-encodes to the same string (one encoding per value).
        #[test]
        fn base64_round_trips_and_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200), s in "[A-Za-z0-9+/=!]{0,40}") {
            proptest::prop_assert_eq!(decode_base64(&encode_base64(&b)).unwrap(), b);
            if let Some(d) = decode_base64(&s) {
                proptest::prop_assert_eq!(encode_base64(&d), s);
            }
        }
    }

    #[test]
    fn plain_arrays_still_load_and_bad_strings_are_errors() {
        let old = r#"{"v":[1.5,-2.0],"a":[0.25],"b":[7,8]}"#;
        let s: S = serde_json::from_str(old).unwrap();
        assert_eq!(s.v, vec![1.5, -2.0]);
        assert_eq!(*s.a, vec![0.25]);
        assert_eq!(s.b, vec![7, 8]);
        // 4 bytes is not a whole f64; '!' is not base64
        for bad in [
            r#"{"v":"AAAAAA==","a":[],"b":[]}"#,
            r#"{"v":"!!!!","a":[],"b":[]}"#,
            r#"{"v":[],"a":[],"b":"A"}"#,
        ] {
            assert!(serde_json::from_str::<S>(bad).is_err(), "{bad}");
        }
    }
}
