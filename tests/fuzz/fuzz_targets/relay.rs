//! Fuzz target `relay`: see `xdpath_fuzz::relay` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xdpath_fuzz::relay::run(data);
});
