//! Fuzz target `queue_pair`: see `xdpath_fuzz::queue_pair` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xdpath_fuzz::queue_pair::run(data);
});
