//! `cargo xtask test`: the command CI and the README run.
//!
//! In order: `cargo fmt --check` (the workspace and the fuzz crate); clippy
//! with warnings denied; `cargo doc` with rustdoc warnings denied
//! (`RUSTDOCFLAGS=-D warnings`); the workspace's binaries (the tests run
//! `xdpathd`, `xdpctl`, `xtask` and `xdpath-bench` as processes); the QEMU
//! guest image (cached; as root only, the VM tests need root anyway); every
//! test in the workspace; then, unless test arguments were given, the
//! soak's CI form (as root: `xdpath-soak --ci`, see `soak.rs`) and the fuzz
//! smoke: the fuzz targets built once and each run for a few seconds over
//! its committed seeds and what it finds meanwhile ([`crate::fuzz::smoke`]).
//!
//! Privileged tests (namespaces, XDP, AF_XDP, QEMU, DPDK) are marked
//! `#[ignore = "needs root: ..."]`. As root, as in CI, they run with the
//! others (`cargo test -- --include-ignored`). As another user the run is a
//! plain `cargo test`: they are listed as ignored, never as passed, and the
//! last line says that they did not run.

use crate::run::{cargo, cargo_env};
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // The fuzz crate is its own workspace (see tests/fuzz/Cargo.toml).
    let fuzz_manifest = format!("{}/Cargo.toml", crate::fuzz::FUZZ_DIR);
    cargo(&["fmt", "--manifest-path", &fuzz_manifest, "--check"])?;
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
    let rustdocflags = match std::env::var("RUSTDOCFLAGS") {
        Ok(f) if !f.trim().is_empty() => format!("{f} -D warnings"),
        _ => "-D warnings".to_owned(),
    };
    cargo_env(
        &[
            "doc",
            "--no-deps",
            "--workspace",
            "--exclude",
            "xdpath-ebpf",
        ],
        &[("RUSTDOCFLAGS", &rustdocflags)],
    )?;
    // The tests run xdpathd, xdpctl, xtask and xdpath-bench as processes;
    // `cargo test` builds only the binaries of the package under test.
    cargo(&["build", "--workspace", "--exclude", "xdpath-ebpf", "--bins"])?;
    let root = crate::setup::is_root();
    if root {
        crate::guest::run()?;
    }
    let args = test_args(root, extra);
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    // The soak's CI form (root: namespaces, XDP, DPDK) and the fuzz
    // smoke; not when the caller picked tests.
    if root && extra.is_empty() {
        crate::soak::ci()?;
    }
    if extra.is_empty() {
        crate::fuzz::smoke()?;
    }
    if !root {
        eprintln!(
            "cargo xtask test: not root, so the privileged tests (network namespaces, XDP, \
             AF_XDP, QEMU, DPDK) were listed as ignored and did not run; run it as root to \
             include them"
        );
    }
    Ok(())
}

/// The `cargo test` command line: as root the ignored (privileged) tests
/// are included, unless the caller already chose with `--ignored` or
/// `--include-ignored`; `extra` goes to the test binaries.
fn test_args(root: bool, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["test", "--workspace", "--exclude", "xdpath-ebpf"]
        .map(String::from)
        .to_vec();
    let chose = extra
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    let include = root && !chose;
    if include || !extra.is_empty() {
        args.push("--".to_owned());
    }
    if include {
        args.push("--include-ignored".to_owned());
    }
    args.extend(extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::test_args;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn root_includes_the_privileged_tests() {
        assert_eq!(
            test_args(true, &[]),
            s(&[
                "test",
                "--workspace",
                "--exclude",
                "xdpath-ebpf",
                "--",
                "--include-ignored"
            ])
        );
        assert_eq!(
            test_args(true, &s(&["vm_"])),
            s(&[
                "test",
                "--workspace",
                "--exclude",
                "xdpath-ebpf",
                "--",
                "--include-ignored",
                "vm_"
            ])
        );
    }

    #[test]
    fn an_explicit_choice_is_kept() {
        assert_eq!(
            test_args(true, &s(&["--ignored"])),
            s(&[
                "test",
                "--workspace",
                "--exclude",
                "xdpath-ebpf",
                "--",
                "--ignored"
            ])
        );
    }

    #[test]
    fn non_root_runs_the_plain_suite() {
        assert_eq!(
            test_args(false, &[]),
            s(&["test", "--workspace", "--exclude", "xdpath-ebpf"])
        );
        assert_eq!(
            test_args(false, &s(&["--nocapture"])),
            s(&[
                "test",
                "--workspace",
                "--exclude",
                "xdpath-ebpf",
                "--",
                "--nocapture"
            ])
        );
    }
}
