//! The IDX reader on arbitrary bytes: an array or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = efkit_problems::idx::parse_idx(data, 2049, Some("fuzz"));
    let _ = efkit_problems::idx::parse_idx(data, 2051, Some("fuzz"));
});
