//! `cargo xtask demo`: the embedded default topology with two QEMU guests.
//!
//! This module builds what the demo runs: the release binaries (xdpathd,
//! xdpctl, the demo driver) and the guest image (cached); then it runs the
//! demo driver `xdpath-demo` (`xtask/demo`), which owns the rest: it sets up
//! the namespaces and the daemon, adds a second guest with `xdpctl guest
//! add`, boots both guests, shows the traffic (guests <-> peer, guest <->
//! guest switched inside xdpathd, a TCP transfer, host traffic) and the
//! per-guest counters, and tears it all down. What the demo installs first
//! is `setup::Profile::Demo` (no DPDK, valgrind, hugepages or cargo-fuzz).

use crate::run::{cargo, status, workspace_root};
use anyhow::Result;
use std::process::Command;

pub fn run() -> Result<()> {
    build_release_bins("xdpath-demo")?;
    crate::guest::run()?;
    status(
        Command::new(workspace_root().join("target/release/xdpath-demo"))
            .current_dir(workspace_root()),
    )
}

/// The release binaries of the daemon and the CLI, and those of `driver`
/// (the package `xdpath-demo` or `xdpath-bench`, under `xtask/`).
pub fn build_release_bins(driver: &str) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "xdpath-control",
        "-p",
        "xdpath-cli",
        "-p",
        driver,
        "--bins",
    ])
}
