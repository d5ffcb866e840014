//! The method messages on arbitrary bytes: the first four bytes pick a preset,
//! a (dimension, compressor) pair, the round and initialization, and the
//! shared seed; the rest is decoded as an uplink and as a downlink. Each
//! decode returns a well-formed value or an error and never panics; what
//! decodes is self-delimiting, independent of reused buffers, and re-encodes
//! where the codec allows (`efkit_core::method_fuzz` lists the invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = efkit_core::method_fuzz::fuzz_message(data);
});
