//! Fuzz target `vhost_user`: see `xdpath_fuzz::vhost_user` for the input and the
//! properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xdpath_fuzz::vhost_user::run(data);
});
