//! The LibSVM reader on arbitrary bytes (plain or gzip): a dataset or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = efkit_problems::libsvm::LibsvmOptions::default();
    let _ = efkit_problems::libsvm::parse(data, &opts, Some("fuzz"));
    let opts = efkit_problems::libsvm::LibsvmOptions::with_features(8);
    let _ = efkit_problems::libsvm::parse(data, &opts, Some("fuzz"));
});
