//! `cargo xtask soak`: the soak of a real xdpathd (root).
//!
//! The long form (`cargo xtask soak [--minutes N]`) builds the release
//! binaries (xdpathd, xdpctl, the soak driver and its frontend process)
//! and runs `xdpath-soak` (the package in `xtask/soak`), every part with
//! several guests on the daemon: frontend connect/SIGKILL cycles with DPDK
//! and the in-repo frontend on a random guest of three while the others'
//! traffic flows, `kill -9` restarts of xdpathd under traffic with three
//! reconnecting guests (one in client mode), guests added and removed under
//! traffic to two steady ones, and API abuse (the guest API's included).
//! Its counts scale with N (the 1,000 cycles and 50 restarts, and
//! 200 guest rounds, at the default); every part also stops at its share
//! of the N minutes. It prints a summary and writes
//! `target/soak/long.json`.
//!
//! The CI form ([`ci`]) is what `cargo xtask test` runs as root, on the
//! debug binaries it has just built: fewer rounds, about two minutes,
//! `target/soak/ci.json`. `cargo xtask soak --ci` runs the same
//! counts on release binaries.

use crate::run::{status, workspace_root};
use anyhow::{bail, Result};
use clap::Args;
use std::process::Command;
use std::time::Instant;

/// Options of `cargo xtask soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Time budget in minutes; the counts scale with it (default: the
    /// issue's counts, 1,000 cycles and 50 restarts, in at most 20 minutes).
    #[arg(long)]
    pub minutes: Option<u64>,
    /// The short form CI runs instead.
    #[arg(long, conflicts_with = "minutes")]
    pub ci: bool,
    /// Only these parts (comma-separated: cycles, restarts, guests, abuse).
    #[arg(long)]
    pub parts: Option<String>,
    /// Seed of the random kill moments (to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(a: &SoakArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!(
            "the soak creates network namespaces, attaches XDP and runs DPDK: run \
             `cargo xtask soak` as root"
        );
    }
    crate::demo::build_release_bins("xdpath-soak")?;
    let mut cmd = Command::new(workspace_root().join("target/release/xdpath-soak"));
    cmd.current_dir(workspace_root())
        .args(["--out", "target/soak"]);
    if a.ci {
        cmd.arg("--ci");
    }
    if let Some(m) = a.minutes {
        cmd.args(["--minutes", &m.to_string()]);
    }
    if let Some(p) = &a.parts {
        cmd.args(["--parts", p]);
    }
    if let Some(s) = a.seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    status(&mut cmd)
}

/// The soak's CI form on the debug binaries `cargo xtask test` built
/// (`cargo build --bins`); prints its wall time.
pub fn ci() -> Result<()> {
    let start = Instant::now();
    let r = status(
        Command::new(workspace_root().join("target/debug/xdpath-soak"))
            .current_dir(workspace_root())
            .args(["--ci", "--out", "target/soak"]),
    );
    eprintln!(
        "cargo xtask test: the soak's CI form took {:.0} s (target/soak/ci.json)",
        start.elapsed().as_secs_f64()
    );
    r
}
