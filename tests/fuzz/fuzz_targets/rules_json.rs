//! Fuzz target `rules_json`: see `xdpath_fuzz::rules_json` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdpath_fuzz::rules_json::run(data));
