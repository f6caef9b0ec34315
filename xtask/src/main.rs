//! `cargo xtask`: the project's own automation.
//!
//! Every command a user or CI runs goes through here so that the README needs
//! exactly two commands (`cargo xtask demo`, `cargo xtask test`) and both
//! install what they need first ([`setup`]: each command with its own
//! [`Profile`], the demo without the test-only packages). Each submodule owns one command;
//! `cargo xtask bench` ([`bench`](mod@bench)) reproduces the README's
//! Performance table; `cargo xtask soak` ([`soak`]) soaks a real daemon;
//! `cargo xtask fuzz` ([`fuzz`]) runs the fuzz targets.

mod bench;
mod demo;
mod deploy;
mod fuzz;
mod guest;
mod run;
mod setup;
mod soak;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use setup::Profile;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, set up, test and demo xdpath")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build, the demo, the tests, the benchmarks
    /// and the fuzzing need (idempotent; seconds when nothing is missing):
    /// Debian packages (DPDK, QEMU and valgrind included), nightly rust-src,
    /// bpf-linker on rustc's own LLVM, bpffs, hugepages, cargo-fuzz. Each
    /// other command installs only what it needs itself.
    Setup,
    /// Build the eBPF object (also done by control's build script).
    BuildEbpf,
    /// Set up everything, then run fmt --check, clippy -D warnings, cargo doc with
    /// rustdoc warnings denied and the whole test suite. The privileged
    /// tests (marked ignored) run too when run as root; as another user
    /// they are listed as ignored, and the last line says so.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up what the demo needs (the build, iproute2/ping/ethtool, QEMU;
    /// no DPDK, valgrind, hugepages or cargo-fuzz), then run the embedded
    /// demo topology (no NIC needed): two QEMU guests on one xdpathd.
    Demo,
    /// Set up, then benchmark: xdpath against DPDK testpmd and the bare
    /// AF_XDP limit (root; writes target/bench/results.{json,md,svg}),
    /// then the criterion micro-benchmarks; `--instructions` counts the
    /// worker batches' instructions per frame with callgrind instead.
    Bench(bench::BenchArgs),
    /// Set up, then soak a real xdpathd (root) with several guests:
    /// frontend connect/SIGKILL cycles (DPDK and the in-repo frontend) on
    /// one of three guests, kill -9 restarts under traffic with three
    /// reconnecting guests (one in client mode), hot add/remove of guests
    /// under traffic, API abuse; writes
    /// target/soak/long.json (or ci.json with --ci).
    Soak(soak::SoakArgs),
    /// Set up, build the fuzz targets of tests/fuzz once (cargo-fuzz,
    /// nightly, AddressSanitizer) and fuzz each for --secs seconds (every
    /// target, or --target T); fails naming the reproducer of any crash,
    /// hang or out-of-memory (saved in tests/fuzz/artifacts/T/).
    Fuzz(fuzz::FuzzArgs),
    /// Build the QEMU test guest (Debian kernel + busybox initramfs) into
    /// target/guest/ from Debian packages; cached, a second run does nothing.
    GuestImage,
    /// Build, preflight-check and install xdpath on a host NIC, print the
    /// QEMU and libvirt settings for the guest, and start xdpathd
    /// (foreground, or a systemd unit with --systemd).
    Deploy(deploy::DeployArgs),
    /// Reverse `deploy`: stop and remove the unit, binaries, config,
    /// sockets and leftover pins (the flow table is kept unless --purge).
    Undeploy(deploy::UndeployArgs),
}

/// Whether `name` can be a Linux interface name (1 to 15 bytes, no '/',
/// no whitespace, no NUL). xtask does not depend on the control crate.
fn config_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', '\0'])
        && !name.contains(char::is_whitespace)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => {
            setup::run_for(Profile::Build)?;
            run::cargo(&["build", "--release", "-p", "xdpath-control"])
        }
        Cmd::Test { args } => {
            setup::run_for(Profile::All)?;
            test::run(&args)
        }
        Cmd::Demo => {
            setup::run_for(Profile::Demo)?;
            demo::run()
        }
        Cmd::Bench(a) => {
            if !a.micro_only && !a.instructions {
                setup::run_for(Profile::Dpdk)?;
            }
            bench::run(&a)
        }
        Cmd::Soak(a) => {
            setup::run_for(Profile::Dpdk)?;
            soak::run(&a)
        }
        Cmd::Fuzz(a) => {
            setup::run_for(Profile::Fuzz)?;
            fuzz::run(&a)
        }
        Cmd::GuestImage => guest::run(),
        Cmd::Deploy(a) => {
            setup::run_for(Profile::Deploy)?;
            deploy::deploy(&a)
        }
        Cmd::Undeploy(a) => deploy::undeploy(&a),
    }
}
