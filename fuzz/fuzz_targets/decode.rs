//! Fuzz target: the first byte picks a compressor (a small catalogue entry),
//! the second the shared key, the rest is decoded as one message. Decoding must
//! return a well-formed value or an error and never panic
//! (`efkit_core::compress::fuzz_decode` asserts well-formedness).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = efkit_core::compress::fuzz_decode(data);
});
