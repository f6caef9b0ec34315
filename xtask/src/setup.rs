//! Setup: install what a command needs, from nothing, idempotently.
//!
//! This module owns the list of what xdpath needs on the machine and which
//! command needs what ([`Profile`]); the commands in `main.rs` call
//! [`run_for`] with their profile before they start, and `cargo xtask setup`
//! (and `cargo xtask test`) calls [`run`], which installs everything.
//!
//! Each step first checks whether its result is already there and does
//! nothing if so, so a second run takes seconds and changes nothing:
//! 1. Debian packages, in groups (one `apt-get update` + `install` for the
//!    missing ones of the profile's groups):
//!    - [`BUILD`]: the C toolchain and libraries xsk-rs -> libxdp-sys ->
//!      libbpf-sys build from source;
//!    - [`NET`]: iproute2, ping, ethtool, bpftool, procps (namespaces, veth
//!      and inspection);
//!    - [`GUEST`]: QEMU and the tools `cargo xtask guest-image` uses;
//!    - [`DPDK`]: DPDK 22.11's testpmd and PMDs (the tests' third-party
//!      vhost-user frontend and the benchmark's comparison);
//!    - [`VALGRIND`]: callgrind for `cargo xtask bench --instructions`;
//! 2. the nightly toolchain with `rust-src` (for `-Z build-std=core`),
//! 3. bpf-linker built against the nightly rustc's own libLLVM (every path is
//!    derived from `rustc +nightly --print sysroot`),
//! 4. bpffs mounted at `/sys/fs/bpf`,
//! 5. hugepages for DPDK: `vm.nr_hugepages` raised to 1024 if lower, and
//!    hugetlbfs mounted at `/dev/hugepages`;
//! 6. cargo-fuzz (`cargo xtask fuzz` and the test suite's fuzz smoke).
//!
//! Who installs what ([`Profile`]); steps 2 and 3 are in every profile,
//! since every command builds the eBPF object:
//!
//! | command | packages | bpffs | hugepages | cargo-fuzz |
//! |---|---|---|---|---|
//! | `setup`, `test` | all groups | yes | yes | yes |
//! | `demo` | BUILD, NET, GUEST | yes | no | no |
//! | `deploy` | BUILD, NET | yes | no | no |
//! | `bench` (system benchmark), `soak` | BUILD, NET, DPDK | yes | yes | no |
//! | `fuzz` | BUILD | no | no | yes |
//! | `build-ebpf` | BUILD | no | no | no |
//!
//! `bench --micro-only` and `bench --instructions`, `guest-image` (unless a
//! tool is missing: then everything) and `undeploy` run no setup. Packages,
//! bpffs and hugepages need root; as another user those steps are skipped
//! with a message.
//!
//! The memlock limit is not a setup step: our binaries and tests raise
//! RLIMIT_MEMLOCK for themselves at start (a shell limit does not persist).

use crate::run::{output, status};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// xsk-rs -> libxdp-sys -> libbpf-sys build their C from source.
pub const BUILD: &[&str] = &[
    "build-essential",
    "pkg-config",
    "m4",
    "clang",
    "llvm",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
];

/// Namespaces, veth pairs and inspection (the demo, the tests, deploy's
/// channel setting).
pub const NET: &[&str] = &["iproute2", "iputils-ping", "ethtool", "bpftool", "procps"];

/// The QEMU guest (`cargo xtask guest-image`, the demo, tests/tests/vm.rs):
/// QEMU itself, and xz/zstd to take the kernel out of Debian's bzImage and
/// to unpack compressed modules. The image's packages (linux-image-*,
/// busybox-static) are fetched with `apt-get download`, never installed;
/// the helper is built with gcc from [`BUILD`].
pub const GUEST: &[&str] = &["qemu-system-x86", "xz-utils", "zstd"];

/// DPDK 22.11: dpdk-testpmd with virtio_user as a third-party vhost-user
/// frontend in the tests and the soak, and as the benchmark's comparison
/// (the PMDs are separate packages).
pub const DPDK: &[&str] = &[
    "dpdk-dev",
    "librte-net-virtio23",
    "librte-net-vhost23",
    "librte-net-af-xdp23",
    "librte-mempool-ring23",
];

/// `cargo xtask bench --instructions`: instructions per frame counted by
/// callgrind.
pub const VALGRIND: &[&str] = &["valgrind"];

/// What a command needs installed; see the module doc's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `cargo xtask build-ebpf`: the build only.
    Build,
    /// `cargo xtask demo`: the build, namespaces and QEMU.
    Demo,
    /// `cargo xtask deploy`: the build and the host's network tools.
    Deploy,
    /// `cargo xtask bench` (system benchmark) and `cargo xtask soak`: the
    /// build, namespaces and DPDK with its hugepages.
    Dpdk,
    /// `cargo xtask fuzz`: the build and cargo-fuzz.
    Fuzz,
    /// `cargo xtask setup` and `cargo xtask test`: everything.
    All,
}

impl Profile {
    /// The package groups this profile installs.
    fn groups(self) -> &'static [&'static [&'static str]] {
        match self {
            Self::Build | Self::Fuzz => &[BUILD],
            Self::Demo => &[BUILD, NET, GUEST],
            Self::Deploy => &[BUILD, NET],
            Self::Dpdk => &[BUILD, NET, DPDK],
            Self::All => &[BUILD, NET, GUEST, DPDK, VALGRIND],
        }
    }

    /// The Debian packages this profile installs.
    pub fn packages(self) -> Vec<&'static str> {
        self.groups()
            .iter()
            .flat_map(|g| g.iter().copied())
            .collect()
    }

    fn bpffs(self) -> bool {
        matches!(self, Self::Demo | Self::Deploy | Self::Dpdk | Self::All)
    }

    fn hugepages(self) -> bool {
        matches!(self, Self::Dpdk | Self::All)
    }

    fn cargo_fuzz(self) -> bool {
        matches!(self, Self::Fuzz | Self::All)
    }
}

/// Hugepages (2 MiB each) DPDK gets; testpmd runs with `--in-memory`.
const HUGEPAGES: u64 = 1024;
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const HUGETLBFS: &str = "/dev/hugepages";

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo xtask setup`: everything ([`Profile::All`]).
pub fn run() -> Result<()> {
    run_for(Profile::All)
}

/// Installs what `profile` needs and is missing.
pub fn run_for(profile: Profile) -> Result<()> {
    let root = is_root();
    if root {
        apt_packages(&profile.packages())?;
    } else {
        eprintln!("xtask setup: not root, skipping system steps (packages, bpffs, hugepages)");
    }
    nightly_rust_src()?;
    bpf_linker()?;
    if profile.cargo_fuzz() {
        cargo_fuzz()?;
    }
    if root && profile.bpffs() {
        bpffs()?;
    }
    if root && profile.hugepages() {
        hugepages()?;
    }
    Ok(())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_PROFILES: [Profile; 6] = [
        Profile::Build,
        Profile::Demo,
        Profile::Deploy,
        Profile::Dpdk,
        Profile::Fuzz,
        Profile::All,
    ];

    fn is_test_only(p: &str) -> bool {
        p.starts_with("dpdk") || p.starts_with("librte") || p == "valgrind"
    }

    #[test]
    fn the_demo_installs_no_dpdk_valgrind_hugepages_or_cargo_fuzz() {
        let pkgs = Profile::Demo.packages();
        let test_only: Vec<_> = pkgs.iter().filter(|p| is_test_only(p)).collect();
        assert!(test_only.is_empty(), "demo installs {test_only:?}");
        for needed in ["clang", "libelf-dev", "iproute2", "iputils-ping", "ethtool"] {
            assert!(pkgs.contains(&needed), "demo lacks {needed}");
        }
        for needed in ["qemu-system-x86", "xz-utils", "zstd"] {
            assert!(pkgs.contains(&needed), "demo lacks {needed}");
        }
        assert!(Profile::Demo.bpffs());
        assert!(!Profile::Demo.hugepages());
        assert!(!Profile::Demo.cargo_fuzz());
    }

    #[test]
    fn deploy_and_build_install_no_test_only_package() {
        for p in [Profile::Build, Profile::Deploy, Profile::Fuzz] {
            let pkgs = p.packages();
            assert!(
                !pkgs
                    .iter()
                    .any(|p| is_test_only(p) || p.starts_with("qemu")),
                "{p:?} installs {pkgs:?}"
            );
            assert!(!p.hugepages(), "{p:?} reserves hugepages");
        }
    }

    #[test]
    fn bench_and_soak_get_dpdk_and_hugepages_but_not_qemu() {
        let pkgs = Profile::Dpdk.packages();
        for d in DPDK {
            assert!(pkgs.contains(d), "missing {d}");
        }
        assert!(!pkgs.contains(&"qemu-system-x86"));
        assert!(Profile::Dpdk.hugepages());
        assert!(!Profile::Dpdk.cargo_fuzz());
        assert!(Profile::Fuzz.cargo_fuzz());
    }

    #[test]
    fn setup_alone_installs_what_every_profile_does() {
        let all = Profile::All.packages();
        for p in ALL_PROFILES {
            for pkg in p.packages() {
                assert!(all.contains(&pkg), "{p:?}'s {pkg} is not in All");
            }
            assert!(!p.bpffs() || Profile::All.bpffs());
            assert!(!p.hugepages() || Profile::All.hugepages());
            assert!(!p.cargo_fuzz() || Profile::All.cargo_fuzz());
        }
        for pkg in VALGRIND.iter().chain(DPDK).chain(GUEST) {
            assert!(all.contains(pkg), "All lacks {pkg}");
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a package is in two groups");
    }
}
