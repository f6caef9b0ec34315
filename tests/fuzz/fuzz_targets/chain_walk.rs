//! Fuzz target `chain_walk`: see `xdpath_fuzz::chain_walk` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xdpath_fuzz::chain_walk::run(data);
});
