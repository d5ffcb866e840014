//! The readers never panic: random bytes and random mutations of valid files
//! give a value or a typed error.

use std::io::Write;

use efkit_problems::datasets;
use efkit_problems::error::ProblemError;
use efkit_problems::idx::{parse_idx, MAGIC_IMAGES, MAGIC_LABELS};
use efkit_problems::libsvm::{parse, LabelMode, LibsvmOptions};
use flate2::{write::GzEncoder, Compression};
use proptest::prelude::*;

/// The first rows of bundled files, decompressed: a valid seed for mutation.
fn seed_text() -> Vec<u8> {
    static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEED.get_or_init(build_seed_text).clone()
}

fn build_seed_text() -> Vec<u8> {
    let mut out = Vec::new();
    for name in ["mushrooms", "w8a", "phishing"] {
        let gz = datasets::bundled(name).unwrap().gz_bytes();
        let text = efkit_problems::io::maybe_gunzip(gz, None).unwrap();
        let lines: Vec<&[u8]> = text.split(|&c| c == b'\n').take(15).collect();
        out.extend(lines.join(&b'\n'));
        out.push(b'\n');
    }
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn all_opts() -> [LibsvmOptions; 4] {
    [
        LibsvmOptions::default(),
        LibsvmOptions {
            n_features: Some(50),
            labels: LabelMode::Binary,
        },
        LibsvmOptions {
            n_features: None,
            labels: LabelMode::Raw,
        },
        LibsvmOptions {
            n_features: Some(0),
            labels: LabelMode::Raw,
        },
    ]
}

fn check_libsvm(bytes: &[u8]) {
    for opts in all_opts() {
        match parse(bytes, &opts, Some("fuzz")) {
            Ok(d) => {
                assert_eq!(d.y().len(), d.n_rows());
                assert!(d.x().values().iter().all(|v| v.is_finite()));
                if let Some(nf) = opts.n_features {
                    assert_eq!(d.n_features(), nf);
                }
            }
            Err(ProblemError::Libsvm { line, .. }) => assert!(line >= 1),
            Err(ProblemError::Gzip { .. }) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // bytes biased towards the format's own alphabet
    let byte = prop_oneof![
        Just(b':'),
        Just(b' '),
        Just(b'\n'),
        Just(b'0'),
        Just(b'-'),
        Just(b'.'),
        Just(b'e'),
        Just(b'n'),
        Just(b'+'),
        Just(b'\t'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), byte).prop_map(|(p, b)| Mutation::Insert(p, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if v.is_empty() {
            break;
        }
        let n = v.len();
        match *m {
            Mutation::Flip(p, b) => v[p % n] = b,
            Mutation::Insert(p, b) => v.insert(p % (n + 1), b),
            Mutation::Delete(p) => {
                v.remove(p % n);
            }
            Mutation::Truncate(p) => v.truncate(p % (n + 1)),
        }
    }
    v
}

fn check_idx(bytes: &[u8]) {
    for magic in [MAGIC_LABELS, MAGIC_IMAGES] {
        match parse_idx(bytes, magic, Some("fuzz")) {
            Ok(a) => {
                let n: u64 = a.dims.iter().map(|&d| u64::from(d)).product();
                assert_eq!(n, a.data.len() as u64);
            }
            Err(ProblemError::Idx { .. } | ProblemError::Gzip { .. }) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

fn small_idx() -> Vec<u8> {
    let mut v = MAGIC_IMAGES.to_be_bytes().to_vec();
    for d in [3u32, 2, 2] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..12u8).map(|i| i * 20));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn libsvm_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_libsvm(&bytes);
        check_libsvm(&gzip(&bytes));
    }

    #[test]
    fn libsvm_random_text(s in "[-+0-9:. \n\tenaif]{0,300}") {
        check_libsvm(s.as_bytes());
    }

    #[test]
    fn libsvm_mutations_of_a_valid_file(muts in proptest::collection::vec(mutation(), 1..12)) {
        let text = apply(seed_text(), &muts);
        check_libsvm(&text);
        // the same, gzip-compressed, and a corrupted gzip stream
        let gz = gzip(&text);
        check_libsvm(&gz);
        check_libsvm(&apply(gz, &muts));
    }

    #[test]
    fn idx_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_idx(&bytes);
        let mut labelled = MAGIC_LABELS.to_be_bytes().to_vec();
        labelled.extend_from_slice(&bytes);
        check_idx(&labelled);
        check_idx(&gzip(&labelled));
    }

    #[test]
    fn idx_mutations(muts in proptest::collection::vec(mutation(), 1..6)) {
        let v = apply(small_idx(), &muts);
        check_idx(&v);
        check_idx(&apply(gzip(&small_idx()), &muts));
    }
}

#[test]
fn seed_text_is_valid() {
    let d = parse(
        &seed_text(),
        &LibsvmOptions {
            n_features: None,
            labels: LabelMode::Raw,
        },
        None,
    )
    .unwrap();
    assert_eq!(d.n_rows(), 45);
    assert!(parse_idx(&small_idx(), MAGIC_IMAGES, None).is_ok());
}
