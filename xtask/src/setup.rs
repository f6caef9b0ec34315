//! `cargo xtask setup`: install what the build and the tests need, from
//! nothing, idempotently.
//!
//! Each step first checks whether its result is already there and does
//! nothing if so, so a second run takes seconds and changes nothing:
//! 1. Debian packages, DPDK for the tests included (one `apt-get update` +
//!    `install` for the missing ones),
//! 2. the nightly toolchain with `rust-src` (for `-Z build-std=core`),
//! 3. bpf-linker built against the nightly rustc's own libLLVM (every path is
//!    derived from `rustc +nightly --print sysroot`),
//! 4. bpffs mounted at `/sys/fs/bpf`,
//! 5. hugepages for DPDK (the third-party frontend the tests use):
//!    `vm.nr_hugepages` raised to 1024 if lower, and hugetlbfs mounted at
//!    `/dev/hugepages`;
//! 6. cargo-fuzz (`cargo xtask fuzz` and the test suite's fuzz smoke).
//!
//! The memlock limit is not a setup step: our binaries and tests raise
//! RLIMIT_MEMLOCK for themselves at start (a shell limit does not persist).

use crate::run::{output, status};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the build, the tests and the demo use.
const PACKAGES: &[&str] = &[
    // xsk-rs -> libxdp-sys -> libbpf-sys build their C from source.
    "build-essential",
    "pkg-config",
    "m4",
    "clang",
    "llvm",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    // Test topology and inspection.
    "iproute2",
    "iputils-ping",
    "ethtool",
    "bpftool",
    "procps",
    // DPDK 22.11: dpdk-testpmd with virtio_user as a third-party vhost-user
    // frontend in the tests (the PMDs are separate packages).
    "dpdk-dev",
    "librte-net-virtio23",
    "librte-net-vhost23",
    "librte-net-af-xdp23",
    "librte-mempool-ring23",
    // The QEMU test guest (`cargo xtask guest-image`, tests/tests/vm.rs):
    // QEMU itself, and xz/zstd to take the kernel out of Debian's bzImage and
    // to unpack compressed modules. The image's packages (linux-image-*,
    // busybox-static) are fetched with `apt-get download`, never installed;
    // the helper is built with gcc from build-essential.
    "qemu-system-x86",
    "xz-utils",
    "zstd",
    // `cargo xtask bench --instructions`: instructions per frame counted by
    // callgrind.
    "valgrind",
];

/// Hugepages (2 MiB each) DPDK gets; testpmd runs with `--in-memory`.
const HUGEPAGES: u64 = 1024;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const HUGETLBFS: &str = "/dev/hugepages";

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> Result<()> {
    if !is_root() {
        eprintln!("xtask setup: not root, skipping system steps (packages, bpffs, hugepages)");
    } else {
        apt_packages()?;
    }
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    if is_root() {
        bpffs()?;
        hugepages()?;
    }
    Ok(())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let have_nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !have_nightly {
        eprintln!("xtask setup: installing the nightly toolchain");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !have_src {
        eprintln!("xtask setup: adding rust-src to nightly");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly sysroot's `libLLVM.so.<major>.<minor>-rust-...` file and the
/// LLVM major version it carries.
fn nightly_llvm() -> Result<(PathBuf, u32, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let mut parts = rest.split(['.', '-']).map(str::parse::<u32>);
            let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
                bail!("cannot read the LLVM version from {name}");
            };
            return Ok((lib.join(name), major, minor));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn bpf_linker() -> Result<()> {
    let (llvm_lib, major, minor) = nightly_llvm()?;
    // The prefix must outlive the install: bpf-linker finds libLLVM through
    // its rpath into this directory.
    let prefix = home().join(".local/share/xdpath/llvm-prefix");
    let stamp = prefix.join("built-for");
    let want = format!("{BPF_LINKER_VERSION} {}", llvm_lib.display());
    let cargo_home =
        std::env::var_os("CARGO_HOME").map_or_else(|| home().join(".cargo"), PathBuf::from);
    let linker = cargo_home.join("bin/bpf-linker");
    let works = output(Command::new(&linker).arg("--version")).is_some();
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about 3 minutes)",
        llvm_lib.display()
    );
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    let file_name = llvm_lib
        .file_name()
        .context("LLVM library has no file name")?;
    for link in [libdir.join("libLLVM.so"), libdir.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new("cargo")
            .args(["+nightly", "install", "--locked", "--force", "bpf-linker"])
            .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{major}{minor}_PREFIX"), &prefix),
    )?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// cargo-fuzz, at [`CARGO_FUZZ_VERSION`] (about 25 s to build; a second
/// run sees it installed and does nothing).
fn cargo_fuzz() -> Result<()> {
    let have = output(Command::new("cargo").args(["fuzz", "--version"]));
    if have.is_some_and(|v| v.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    status(Command::new("cargo").args([
        "install",
        "--locked",
        "--force",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Whether a filesystem of type `fstype` is mounted at `path`.
fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some(path) && f.next() == Some(fstype)
        })
}

fn bpffs() -> Result<()> {
    if is_mounted("/sys/fs/bpf", "bpf") {
        return Ok(());
    }
    eprintln!("xtask setup: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Raises `vm.nr_hugepages` to [`HUGEPAGES`] if lower and mounts hugetlbfs
/// at [`HUGETLBFS`] if nothing of that type is mounted there.
fn hugepages() -> Result<()> {
    let have: u64 = std::fs::read_to_string(NR_HUGEPAGES)
        .with_context(|| format!("reading {NR_HUGEPAGES}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {NR_HUGEPAGES}"))?;
    if have < HUGEPAGES {
        eprintln!("xtask setup: reserving {HUGEPAGES} hugepages (was {have})");
        std::fs::write(NR_HUGEPAGES, format!("{HUGEPAGES}\n"))
            .with_context(|| format!("writing {NR_HUGEPAGES}"))?;
        let got: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        if got < HUGEPAGES {
            eprintln!(
                "xtask setup: warning: the kernel reserved only {got} of {HUGEPAGES} hugepages (memory fragmented?)"
            );
        }
    }
    if is_mounted(HUGETLBFS, "hugetlbfs") {
        return Ok(());
    }
    eprintln!("xtask setup: mounting hugetlbfs at {HUGETLBFS}");
    std::fs::create_dir_all(HUGETLBFS).ok();
    status(Command::new("mount").args(["-t", "hugetlbfs", "nodev", HUGETLBFS]))
}
