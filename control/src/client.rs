//! The client of the daemon's API: `xdpath_api::client` (hyper over the
//! Unix socket), re-exported for the tests and tools that reach it
//! through this crate.

pub use xdpath_api::client::*;
