//! Fuzz target `config_toml`: see `xdpath_fuzz::config_toml` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdpath_fuzz::config_toml::run(data));
