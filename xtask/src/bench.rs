//! `cargo xtask bench`: the benchmarks.
//!
//! 1. The system benchmark (root): builds the release binaries and runs
//!    `xdpath-bench` (the package in `xtask/bench`), which compares
//!    xdpath with DPDK testpmd and the bare AF_XDP limit on private veth
//!    topologies and writes `target/bench/results.{json,md,svg}`.
//! 2. The criterion micro-benchmarks (no root needed): the worker's RX and
//!    TX batch against in-memory rings (`dataplane/benches/batch.rs`) and
//!    the flow table (`control/benches/flow_table.rs`).

use crate::run::{cargo, status, workspace_root};
use anyhow::{bail, Result};
use clap::Args;
use std::process::Command;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A smoke run: one short run of the 64-byte, one-queue-pair cases.
    #[arg(long)]
    pub quick: bool,
    /// Runs per case (figures are medians over runs; at least 5 for the
    /// published table).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Measurement window per case, in seconds.
    #[arg(long)]
    pub secs: Option<f64>,
    /// Only the criterion micro-benchmarks (no root, no network).
    #[arg(long, conflicts_with = "system_only")]
    pub micro_only: bool,
    /// Only the system benchmark.
    #[arg(long)]
    pub system_only: bool,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if !a.micro_only {
        if !crate::setup::is_root() {
            bail!(
                "the system benchmark creates network namespaces and attaches XDP: run \
                 `cargo xtask bench` as root (or `cargo xtask bench --micro-only`)"
            );
        }
        crate::demo::build_release_bins("xdpath-bench")?;
        let mut cmd = Command::new(workspace_root().join("target/release/xdpath-bench"));
        cmd.current_dir(workspace_root())
            .args(["--out", "target/bench"]);
        if a.quick {
            cmd.arg("--quick");
        }
        if let Some(r) = a.runs {
            cmd.args(["--runs", &r.to_string()]);
        }
        if let Some(s) = a.secs {
            cmd.args(["--secs", &s.to_string()]);
        }
        status(&mut cmd)?;
    }
    if !a.system_only {
        let mut args = vec![
            "bench",
            "-p",
            "xdpath-dataplane",
            "--bench",
            "batch",
            "-p",
            "xdpath-control",
            "--bench",
            "flow_table",
        ];
        if a.quick {
            args.extend(["--", "--warm-up-time", "0.5", "--measurement-time", "1"]);
        }
        cargo(&args)?;
    }
    Ok(())
}
