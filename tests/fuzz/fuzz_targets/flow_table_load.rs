//! Fuzz target `flow_table_load`: see `xdpath_fuzz::flow_table_load` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdpath_fuzz::flow_table_load::run(data));
