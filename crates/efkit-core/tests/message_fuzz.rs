//! The method messages on hostile input, on stable (the cargo-fuzz target
//! `message` runs the same entry point, `efkit_core::method_fuzz::fuzz_message`,
//! whose module docs list the invariants it asserts):
//!
//! * real messages of every preset and codec decode, with the decoder they
//!   were made for, and satisfy the invariants (re-encoding included);
//! * every truncation and single-bit flip of a sample of them, and random
//!   bytes, decode to a value that satisfies them or to an error;
//! * regressions: an estimate downlink is rejected by a method that broadcasts
//!   the model.

use std::sync::OnceLock;

use efkit_core::bits::BitWriter;
use efkit_core::compress::{build, encode_one, CompressorSpec, ValueFormat};
use efkit_core::method::{decode_downlink, encode_model, Codecs, Downlink, Wire, METHOD_NAMES};
use efkit_core::method_fuzz::{cases, codec_count, fuzz_message, message_seeds, Seed, HEADER};
use efkit_core::rng::rng_from_key;
use efkit_core::DecodeError;
use proptest::prelude::*;

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(message_seeds)
}

#[test]
fn real_messages_decode_and_satisfy_the_invariants() {
    let s = seeds();
    let nc = codec_count();
    // every preset and codec, both initializations, 3 uplinks and 3 downlinks
    // (a run stops early only if a compressor refuses its input)
    assert!(
        s.len() >= METHOD_NAMES.len() * nc * 2 * 6 * 9 / 10,
        "{} seeds",
        s.len()
    );
    let mut estimates = 0;
    for seed in s {
        let d = fuzz_message(&seed.data).expect("has a header");
        if seed.uplink {
            let up = d
                .uplink
                .unwrap_or_else(|e| panic!("uplink {:?}: {e}", &seed.data[..HEADER]));
            assert_eq!(
                up.vec.dim,
                cases()[seed.data[0] as usize * nc + seed.data[1] as usize].d
            );
        } else {
            let down = d
                .downlink
                .unwrap_or_else(|e| panic!("downlink {:?}: {e}", &seed.data[..HEADER]));
            estimates += usize::from(!down.is_model);
        }
    }
    // EF21-BC's estimate broadcasts are among them (dense and compressed)
    assert!(
        estimates >= nc * 2 * 3 * 9 / 10,
        "{estimates} estimate downlinks"
    );
}

#[test]
fn truncated_and_bit_flipped_real_messages() {
    let mut ok = 0usize;
    let mut total = 0usize;
    // one seed in 29 (coprime with the 12 messages per case): every preset,
    // most codecs, uplinks and downlinks of every round
    for seed in seeds().iter().step_by(29) {
        let m = &seed.data;
        for len in HEADER..m.len() {
            let r = fuzz_message(&m[..len]).unwrap();
            ok += usize::from(r.uplink.is_ok() || r.downlink.is_ok());
            total += 1;
        }
        let mut m = m.clone();
        for bit in 8 * HEADER..8 * m.len() {
            m[bit / 8] ^= 1 << (bit % 8);
            let r = fuzz_message(&m).unwrap();
            ok += usize::from(r.uplink.is_ok() || r.downlink.is_ok());
            total += 1;
            m[bit / 8] ^= 1 << (bit % 8);
        }
    }
    // many flips land in values and still decode: the checks ran on them
    assert!(total > 10_000 && ok * 5 > total, "{ok} of {total} decoded");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes after a random header.
    #[test]
    fn random_messages_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = fuzz_message(&data);
    }

    /// Random bytes after a valid model tag (00): the d f64 of a model
    /// downlink are any bit patterns, so most such messages decode.
    #[test]
    fn random_model_downlinks(
        header in any::<[u8; HEADER]>(),
        bits in proptest::collection::vec(any::<u64>(), 0..41),
        tail in 0u8..4,
    ) {
        let mut w = BitWriter::new();
        w.write_bits(0, 2);
        for b in &bits {
            w.write_bits(*b, 64);
        }
        w.write_bits(u64::from(tail), 2);
        let mut data = header.to_vec();
        data.extend_from_slice(w.finish());
        let _ = fuzz_message(&data);
    }
}

fn model_only_codecs(d: usize) -> Codecs {
    let top = CompressorSpec {
        k: Some(2),
        ..CompressorSpec::named("top-k")
    };
    let dense = CompressorSpec {
        values: Some(ValueFormat::F32),
        ..CompressorSpec::named("identity")
    };
    Codecs {
        uplink: build(&top, d).unwrap(),
        dense: build(&dense, d).unwrap(),
        downlink: None,
    }
}

/// Regression (found while writing the `message` harness): a dense estimate broadcast
/// (tag 01) decoded for a method without a server compressor, whose workers
/// would then step their own model copy x -= gamma g and drift from the
/// server. Only EF21-BC broadcasts estimates.
#[test]
fn estimate_downlink_needs_a_server_compressor() {
    let d = 5;
    let codecs = model_only_codecs(d);
    let g = [0.5, -1.0, 2.0, 0.0, 3.25];
    let dense = encode_one(codecs.dense.as_ref(), &g, &mut rng_from_key(1), 0).unwrap();
    // tag 01 then the dense message
    let mut w = BitWriter::new();
    w.write_bits(1, 2);
    let mut r = efkit_core::bits::BitReader::new(&dense.bytes);
    for _ in 0..dense.bytes.len() {
        w.write_bits(r.read_bits(8).unwrap(), 8);
    }
    // the dense identity message is 32 d bits: whole bytes, no padding to strip
    assert_eq!(dense.bytes.len(), 4 * d);
    let bytes = w.finish().to_vec();
    let mut out = Downlink::default();
    match decode_downlink(&bytes, d, &codecs, 1, 0, &mut out) {
        Err(DecodeError::Invalid { field, reason }) => {
            assert_eq!(field, "downlink.tag");
            assert!(reason.contains("broadcasts the model"), "{reason}");
        }
        other => panic!("estimate accepted by a model-broadcast method: {other:?}"),
    }
    // the same message decodes once the method has a server compressor
    let with_cm = Codecs {
        downlink: Some(build(&CompressorSpec::named("identity"), d).unwrap()),
        ..codecs
    };
    decode_downlink(&bytes, d, &with_cm, 1, 0, &mut out).unwrap();
    assert!(!out.is_model && out.replace);
    assert_eq!(out.vec.to_vec(), g);
    // and a model broadcast still decodes without one
    let x = [1.0, 2.0, -3.0, 0.125, 1e300];
    let mut wire = Wire::default();
    encode_model(&x, &mut BitWriter::new(), &mut wire);
    decode_downlink(&wire.bytes, d, &model_only_codecs(d), 0, 0, &mut out).unwrap();
    assert!(out.is_model);
    assert_eq!(out.x[..], x);
}

/// The model downlink's layout, byte by byte: the 2-bit tag and six zero
/// bits, then each value's 64-bit pattern, most significant byte first
/// (1 + 8d bytes); a decoder refuses non-zero padding, a short or long body
/// and a non-finite value, naming the problem.
#[test]
fn model_downlink_layout_and_its_errors() {
    let d = 2;
    let codecs = model_only_codecs(d);
    let mut wire = Wire::default();
    encode_model(&[1.0, -2.5], &mut BitWriter::new(), &mut wire);
    let expected = [
        0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xc0, 0x04, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(wire.bytes, expected);
    assert_eq!(wire.wire_bits(), 8 * (1 + 8 * d as u64));
    let mut out = Downlink::default();
    decode_downlink(&expected, d, &codecs, 0, 0, &mut out).unwrap();
    assert_eq!(out.x[..], [1.0, -2.5]);
    let mut padded = expected.to_vec();
    padded[0] = 0x01;
    match decode_downlink(&padded, d, &codecs, 0, 0, &mut out) {
        Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "model.padding"),
        other => panic!("non-zero padding accepted: {other:?}"),
    }
    assert_eq!(
        decode_downlink(&expected[..16], d, &codecs, 0, 0, &mut out),
        Err(DecodeError::Truncated { at: 72, needed: 64 })
    );
    let mut long = expected.to_vec();
    long.push(0);
    assert_eq!(
        decode_downlink(&long, d, &codecs, 0, 0, &mut out),
        Err(DecodeError::Trailing(8))
    );
    let mut nan = expected.to_vec();
    nan[9..].copy_from_slice(&f64::NAN.to_bits().to_be_bytes());
    match decode_downlink(&nan, d, &codecs, 0, 0, &mut out) {
        Err(DecodeError::Invalid { field, .. }) => assert_eq!(field, "model"),
        other => panic!("NaN model accepted: {other:?}"),
    }
    // the first entry was valid: none of it is left in the output
    assert!(out.x.is_empty(), "half-decoded model left: {:?}", out.x);
    assert!(!out.is_model && !out.replace);
}

/// Writes the real messages as a seed corpus for the fuzz target `message`:
/// `EFKIT_MESSAGE_SEEDS=DIR cargo test -p efkit-core --test message_fuzz -- --ignored`,
/// then copy them into fuzz/corpus/message and `cargo +nightly fuzz cmin message`.
#[test]
#[ignore = "writes files; run by hand to regenerate the fuzz seed corpus"]
fn write_seed_corpus() {
    let dir = std::env::var("EFKIT_MESSAGE_SEEDS").expect("set EFKIT_MESSAGE_SEEDS=DIR");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds().iter().enumerate() {
        let kind = if s.uplink { "up" } else { "down" };
        std::fs::write(format!("{dir}/seed-{i:05}-{kind}"), &s.data).unwrap();
    }
}

/// EF21-BC's downlink kind is fixed by the round it opens: the model before
/// round 0, the dense estimate before round 1, then compressed changes
/// (dense ones with an identity C_M). Any other kind is refused, naming
/// both (before, a model after round 0 replaced the worker's
/// reconstruction, and a change was added where the server replaces).
#[test]
fn ef21_bc_downlink_kinds_follow_the_round() {
    let d = 5;
    let with_cm = |name: &str| Codecs {
        downlink: Some(
            build(
                &CompressorSpec {
                    k: (name == "top-k").then_some(2),
                    ..CompressorSpec::named(name)
                },
                d,
            )
            .unwrap(),
        ),
        ..model_only_codecs(d)
    };
    let g = [0.5, -1.0, 2.0, 0.0, 3.25];
    // tag, then a message of `c`
    let tagged = |tag: u64, c: &dyn efkit_core::compress::Compressor| {
        let mut w = BitWriter::new();
        w.write_bits(tag, 2);
        let (mut rng, mut scratch) = (rng_from_key(1), Default::default());
        let mut ctx = efkit_core::compress::CompressCtx {
            rng: &mut rng,
            shared_key: 0,
            scratch: &mut scratch,
        };
        let mut out = Default::default();
        c.compress(&g, &mut ctx, &mut out, &mut w).unwrap();
        w.finish().to_vec()
    };
    let mut model = Wire::default();
    encode_model(&g, &mut BitWriter::new(), &mut model);
    for cm in ["top-k", "identity"] {
        let codecs = with_cm(cm);
        let dense = tagged(1, codecs.dense.as_ref());
        let change = tagged(2, codecs.downlink.as_deref().unwrap());
        let mut out = Downlink::default();
        for round in 0..4u64 {
            let accepted: Vec<bool> = [&model.bytes, &dense, &change]
                .iter()
                .map(
                    |m| match decode_downlink(m, d, &codecs, round, 0, &mut out) {
                        Ok(()) => true,
                        // refused for its tag, not for anything else
                        Err(DecodeError::Invalid { field, .. }) if field == "downlink.tag" => false,
                        Err(e) => panic!("C_M = {cm}, round {round}: {e}"),
                    },
                )
                .collect();
            let expected = match (round, cm) {
                (0, _) => [true, false, false],
                (1, _) | (_, "identity") => [false, true, false],
                _ => [false, false, true],
            };
            assert_eq!(accepted, expected, "C_M = {cm}, round {round}");
        }
        match decode_downlink(&model.bytes, d, &codecs, 2, 0, &mut out) {
            Err(DecodeError::Invalid { field, reason }) => {
                assert_eq!(field, "downlink.tag");
                assert!(reason.contains("the model before round 2"), "{reason}");
            }
            other => panic!("a model after round 0 accepted: {other:?}"),
        }
    }
}
