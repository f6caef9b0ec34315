//! `cargo xtask`: the project's own automation.
//!
//! Every command a user or CI runs goes through here so that the README needs
//! exactly two commands (`cargo xtask demo`, `cargo xtask test`) and both
//! install what they need first ([`setup`]). Each submodule owns one command.

mod demo;
mod run;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, set up, test and demo xdpath")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and tests need (idempotent; seconds when
    /// nothing is missing): Debian packages, nightly rust-src, bpf-linker on
    /// rustc's own LLVM, bpffs.
    Setup,
    /// Build the eBPF object (also done by control's build script).
    BuildEbpf,
    /// Set up, then run fmt --check, clippy -D warnings and the whole test
    /// suite, privileged tests included when run as root.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run the embedded demo topology (no NIC needed).
    Demo,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => {
            setup::run()?;
            run::cargo(&["build", "--release", "-p", "xdpath-control"])
        }
        Cmd::Test { args } => {
            setup::run()?;
            test::run(&args)
        }
        Cmd::Demo => {
            setup::run()?;
            demo::run()
        }
    }
}
