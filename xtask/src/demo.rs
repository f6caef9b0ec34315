//! `cargo xtask demo`: the embedded default topology with a QEMU guest.
//!
//! Builds the release binaries (xdpathd, xdpctl, the demo driver) and the
//! guest image (cached), then runs the demo driver `xdpath-demo`
//! (`xtask/demo`), which sets up the namespaces, the daemon and the guest,
//! shows the traffic and tears it all down.

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
