//! `cargo xtask demo`: the embedded default topology.

use crate::run::cargo;
use anyhow::Result;

pub fn run() -> Result<()> {
    cargo(&[
        "run",
        "--release",
        "-p",
        "xdpath-tests",
        "--bin",
        "xdpath-demo",
    ])
}
