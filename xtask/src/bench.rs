//! `cargo xtask bench`: the benchmarks.
//!
//! 1. The system benchmark (root): builds the release binaries and runs
//!    `xdpath-bench` (the package in `xtask/bench`), which compares
//!    xdpath with DPDK testpmd and the bare AF_XDP limit on private veth
//!    topologies, measures one `xdpathd` with 1, 2, 4 and 8 guests (wire
//!    -> guests, guest -> guest) and writes
//!    `target/bench/results.{json,md,svg}`.
//! 2. The criterion micro-benchmarks (no root needed): the worker's RX and
//!    TX batch against in-memory rings (`dataplane/benches/batch.rs`) and
//!    the flow table (`control/benches/flow_table.rs`).
//! 3. With `--instructions` (instead of the above; no root needed): the
//!    instructions per frame of the same RX and TX batches, counted by
//!    callgrind (`dataplane/benches/instructions.rs`). A count, not a time,
//!    so it compares commits on a noisy machine; it does move with where
//!    the compiler inlines, so compare builds of the same toolchain.

use crate::run::{cargo, output, status, workspace_root};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A smoke run: one short run of the 64-byte, one-queue-pair cases and
    /// of the scaling case with 1 and 2 guests.
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
    /// Only the instructions per frame of the worker's batches, counted by
    /// callgrind (no root; writes target/bench/instructions.txt).
    #[arg(long, conflicts_with_all = ["system_only", "micro_only", "quick", "runs", "secs"])]
    pub instructions: bool,
}

/// Batches each case runs under callgrind.
const INSTRUCTION_BATCHES: u64 = 2000;
/// Frames per batch (`xdpath_dataplane::port::BATCH`).
const FRAMES_PER_BATCH: u64 = 64;

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.instructions {
        return instructions();
    }
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

/// The path of the `instructions` bench binary, built in release.
fn instructions_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = output(
        Command::new(cargo)
            .current_dir(workspace_root())
            .args(["bench", "-p", "xdpath-dataplane", "--bench", "instructions"])
            .args(["--no-run", "--message-format=json"]),
    )
    .context("building dataplane/benches/instructions.rs failed")?;
    out.lines()
        .filter(|l| l.contains("\"executable\""))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["target"]["name"] == "instructions")
                .then(|| v["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .context("cargo did not report the instructions benchmark's executable")
}

/// Instructions one case's measured calls executed, from callgrind's
/// output file (its `summary:` or `totals:` line).
fn callgrind_total(file: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{} has no totals", file.display()))
}

/// `cargo xtask bench --instructions`.
fn instructions() -> Result<()> {
    if output(Command::new("valgrind").arg("--version")).is_none() {
        bail!("valgrind is not installed: `cargo xtask setup` as root installs it");
    }
    let bin = instructions_binary()?;
    let cases = output(Command::new(&bin).arg("list")).context("listing the cases")?;
    let dir = workspace_root().join("target/bench/callgrind");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut table = format!(
        "Instructions per frame (callgrind, {INSTRUCTION_BATCHES} batches of {FRAMES_PER_BATCH} \
         frames per case, dataplane/benches/instructions.rs)\n"
    );
    for case in cases.lines().map(str::trim).filter(|c| !c.is_empty()) {
        let file = dir.join(format!("{case}.out"));
        let mut cmd = Command::new("valgrind");
        cmd.args(["--tool=callgrind", "--toggle-collect=*measured_step*"])
            .arg(format!("--callgrind-out-file={}", file.display()))
            .arg(&bin)
            .args([case, &INSTRUCTION_BATCHES.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        status(&mut cmd)?;
        let per_frame =
            callgrind_total(&file)? as f64 / (INSTRUCTION_BATCHES * FRAMES_PER_BATCH) as f64;
        let line = format!("{case:<20} {per_frame:>8.1}\n");
        print!("{line}");
        table.push_str(&line);
    }
    let out = workspace_root().join("target/bench/instructions.txt");
    std::fs::write(&out, table).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}
