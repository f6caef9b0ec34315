//! `cargo xtask test`: the command CI and the README run.
//!
//! fmt --check, clippy with warnings denied, the workspace's binaries
//! (the tests run them as processes), the QEMU guest image (cached; only
//! as root, the VM tests skip otherwise), then every test in the
//! workspace. Privileged tests skip themselves with a message when not
//! root.

use crate::run::cargo;
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "xdpath-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The tests run xdpathd, xdpctl and xtask as processes; `cargo test`
    // builds only the binaries of packages that have integration tests.
    cargo(&["build", "--workspace", "--exclude", "xdpath-ebpf", "--bins"])?;
    if crate::setup::is_root() {
        crate::guest::run()?;
    }
    let mut args = vec!["test", "--workspace", "--exclude", "xdpath-ebpf"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)
}
