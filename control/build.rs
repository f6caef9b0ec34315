//! Builds the XDP program (`ebpf/xdpath-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and bpf-linker, and leaves the object at
//! `$OUT_DIR/xdpath.bpf.o` for `include_bytes!`.
//!
//! `cargo xtask setup` installs what this needs. Set `XDPATH_EBPF_OBJECT` to
//! a prebuilt object to skip the nested build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("xdpath.bpf.o");
    println!("cargo:rerun-if-env-changed=XDPATH_EBPF_OBJECT");
    if let Some(obj) = std::env::var_os("XDPATH_EBPF_OBJECT") {
        std::fs::copy(&obj, &dest).expect("copy XDPATH_EBPF_OBJECT");
        return;
    }
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .parent()
        .expect("control/ lives in the workspace root")
        .to_path_buf();
    for p in [
        "ebpf/xdpath-ebpf/src",
        "ebpf/xdpath-ebpf/Cargo.toml",
        "ebpf/xdpath-common/src",
        "ebpf/xdpath-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let target_dir = out.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--package",
            "xdpath-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF is what lets aya, libbpf and bpftool read the maps.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!(
            "building the XDP program failed ({status}); `cargo xtask setup` installs nightly rust-src and bpf-linker"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/xdpath");
    std::fs::copy(&obj, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", obj.display()));
}
