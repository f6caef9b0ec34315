//! `cargo xtask guest-image`: the QEMU test guest, built from Debian packages
//! by the project's own code. Nothing is downloaded from outside the package
//! registries.
//!
//! Output in `target/guest/` of the workspace:
//! - `vmlinux`: the uncompressed kernel of Debian's `linux-image-<abi>-amd64`
//!   (the package `linux-image-amd64` depends on, as `apt-cache` resolves it
//!   at build time), taken out of its bzImage the way the kernel's
//!   `scripts/extract-vmlinux` does; QEMU boots it through its PVH entry
//!   (checked here: the ELF must carry the Xen `PHYS32_ENTRY` note), which
//!   saves the in-guest decompression (about 3 s under TCG);
//! - `initramfs.cpio.gz`: busybox from `busybox-static`, the virtio-net
//!   driver stack from the same kernel package (decompressed `.ko`, loaded
//!   with `insmod` in dependency order, which is checked against each
//!   module's `.modinfo` `depends=`), the `xg` helper and `/init`
//!   (`guest/init.sh`, a busybox shell script);
//! - `xg`: the guest helper (`guest/xg.c`, built with `gcc -static`) for
//!   what busybox cannot do:
//!   `xg channels eth0 N` (ETHTOOL_SCHANNELS, i.e. `ethtool -L eth0 combined
//!   N`), `xg stats eth0` (ethtool -S), and UDP send/receive with payload
//!   checks;
//! - `image.stamp`: the inputs the image was built from (package versions,
//!   hashes of `/init` and the helper source). A run whose inputs match the
//!   stamp does nothing; package contents are cached per version under
//!   `cache/`, so a changed `/init` does not fetch the kernel again.
//!
//! The guest's `/init` reads `xdpath.ip=ADDR/LEN`, `xdpath.gw=`,
//! `xdpath.queues=` and `xdpath.mtu=` from the kernel command line, brings up
//! eth0, prints `XDPATH-GUEST-READY` (or `XDPATH-GUEST-FAILED: why`) on the
//! serial console and then serves commands from it: a line `ID TIMEOUT_S
//! COMMAND` is answered by `XDPATH-BEGIN ID`, the command's output and
//! `XDPATH-END ID STATUS` (`tests/src/qemu.rs` drives it).

use crate::run::{output, status, workspace_root};
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Bump when the build steps change in a way the inputs below do not show.
const FORMAT: u32 = 1;

/// The metapackage whose dependency names the current kernel package.
const KERNEL_META: &str = "linux-image-amd64";
/// Busybox, statically linked.
const BUSYBOX: &str = "busybox-static";

/// The virtio-net driver stack in load order (each module's `depends=` must
/// name only modules before it; Debian's .deb has no modules.dep).
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// Busybox applets `/init` and the tests use.
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "insmod",
    "stty",
    "sysctl",
    "ip",
    "usleep",
    "timeout",
    "cat",
    "poweroff",
    "ping",
    "nc",
    "md5sum",
    "sha256sum",
    "dd",
    "wc",
    "grep",
];

/// Host tools the build (and, for QEMU, the tests) need, with the Debian
/// package `cargo xtask setup` installs them from.
const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    ("gcc", "build-essential"),
    ("qemu-system-x86_64", "qemu-system-x86"),
];

/// Where the image lives: `target/guest/` of the workspace (also when
/// `CARGO_TARGET_DIR` points elsewhere: the tests look here).
pub fn dir() -> PathBuf {
    workspace_root().join("target").join("guest")
}

/// `cargo xtask guest-image`.
pub fn run() -> Result<()> {
    let start = Instant::now();
    let built = build()?;
    let dir = dir();
    println!(
        "guest image {} in {:.1} s: {} and {}",
        if built { "built" } else { "up to date" },
        start.elapsed().as_secs_f64(),
        dir.join("vmlinux").display(),
        dir.join("initramfs.cpio.gz").display()
    );
    Ok(())
}

/// Builds the image unless `image.stamp` says it is current. Returns whether
/// anything was built.
pub fn build() -> Result<bool> {
    tools()?;
    let dir = dir();
    let cache = dir.join("cache");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let (kernel, kernel_ver, busybox_ver) = resolve_cached(&cache)?;
    let init = init_script();
    let stamp_text = format!(
        "format {FORMAT}\nkernel {kernel} {kernel_ver}\n{BUSYBOX} {busybox_ver}\n\
         init {:016x}\nhelper {:016x}\ngcc {}\nmodules {}\n",
        fnv1a(init.as_bytes()),
        fnv1a(HELPER_C.as_bytes()),
        output(Command::new("gcc").arg("--version"))
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default(),
        MODULES.join(" "),
    );
    let stamp = dir.join("image.stamp");
    let outputs = ["vmlinux", "initramfs.cpio.gz", "xg"].map(|f| dir.join(f));
    if fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text)
        && outputs.iter().all(|p| p.is_file())
    {
        return Ok(false);
    }
    eprintln!("xtask guest-image: building from {kernel} {kernel_ver} and {BUSYBOX} {busybox_ver}");
    // The stamp goes last: an interrupted build is redone.
    let _ = fs::remove_file(&stamp);

    let kdir = cache.join(format!(
        "kernel-{}",
        safe(&format!("{kernel}-{kernel_ver}"))
    ));
    let bdir = cache.join(format!("busybox-{}", safe(&busybox_ver)));
    prune(&cache, &[&kdir, &bdir])?;
    let kernel_done = kdir.join("done");
    let busybox_bin = bdir.join("busybox");
    let mut wanted = Vec::new();
    if !kernel_done.is_file() {
        wanted.push((kernel.as_str(), kernel_ver.as_str()));
    }
    if !busybox_bin.is_file() {
        wanted.push((BUSYBOX, busybox_ver.as_str()));
    }
    let debs = download(&wanted, &cache)?;
    if let Some(deb) = debs.get(kernel.as_str()) {
        kernel_parts(deb, &kdir)?;
        fs::write(&kernel_done, format!("{kernel} {kernel_ver}\n"))?;
    }
    if let Some(deb) = debs.get(BUSYBOX) {
        unpack_busybox(deb, &bdir)?;
    }
    let _ = fs::remove_dir_all(cache.join("download"));
    check_applets(&busybox_bin, &busybox_ver)?;
    let helper = compile_helper(&cache)?;

    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &read(&bdir.join("busybox"))?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("bin/xg", 0o755, &helper);
    for m in MODULES {
        let ko = read(&kdir.join("modules").join(format!("{m}.ko")))?;
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &ko);
    }
    cpio.file("init", 0o755, init.as_bytes());
    let archive = cpio.finish();
    write_gzip(&archive, &dir.join("initramfs.cpio.gz"))?;
    copy_atomic(&kdir.join("vmlinux"), &dir.join("vmlinux"))?;
    write_atomic(&dir.join("xg"), &helper, 0o755)?;
    write_atomic(&stamp, stamp_text.as_bytes(), 0o644)?;
    Ok(true)
}

/// Installs missing tools (the demo's setup profile: what the image and
/// QEMU need, no test-only package), then insists.
fn tools() -> Result<()> {
    let missing = || -> Vec<(&str, &str)> {
        TOOLS
            .iter()
            .copied()
            .filter(|(tool, _)| !on_path(tool))
            .collect()
    };
    if missing().is_empty() {
        return Ok(());
    }
    crate::setup::run_for(crate::setup::Profile::Demo)?;
    let still = missing();
    if !still.is_empty() {
        let names: Vec<String> = still
            .iter()
            .map(|(t, p)| format!("{t} (package {p})"))
            .collect();
        bail!(
            "missing {}: run `cargo xtask setup` as root",
            names.join(", ")
        );
    }
    Ok(())
}

/// Whether `tool` is an executable file in a `PATH` directory.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// [`resolve`], remembered in `cache/resolved` together with a fingerprint
/// of apt's package lists and configuration: apt's answer only changes when
/// they do, and asking costs seconds here (no binary package cache).
fn resolve_cached(cache: &Path) -> Result<(String, String, String)> {
    let path = cache.join("resolved");
    let fp = format!("{:016x}", apt_fingerprint());
    if let Ok(text) = fs::read_to_string(&path) {
        let l: Vec<&str> = text.lines().collect();
        if let [f, k, kv, bv] = l[..] {
            if f == fp {
                return Ok((k.to_owned(), kv.to_owned(), bv.to_owned()));
            }
        }
    }
    let (k, kv, bv) = match resolve() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask guest-image: {e:#}; refreshing the package lists");
            status(Command::new("apt-get").args(["update", "-q"]))?;
            resolve()?
        }
    };
    let fp = format!("{:016x}", apt_fingerprint());
    write_atomic(&path, format!("{fp}\n{k}\n{kv}\n{bv}\n").as_bytes(), 0o644)?;
    Ok((k, kv, bv))
}

/// Names, sizes and modification times of apt's package lists and of
/// everything under /etc/apt (sources, preferences).
fn apt_fingerprint() -> u64 {
    let mut files = Vec::new();
    for root in ["/var/lib/apt/lists", "/etc/apt"] {
        files.extend(walk(Path::new(root)).unwrap_or_default());
    }
    files.sort();
    let mut text = String::new();
    for f in files {
        if let Ok(m) = fs::metadata(&f) {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            text.push_str(&format!(
                "{} {} {}\n",
                f.display(),
                m.len(),
                mtime.as_nanos()
            ));
        }
    }
    fnv1a(text.as_bytes())
}

/// The kernel package `linux-image-amd64` depends on, its candidate version,
/// and busybox-static's candidate version, as apt sees them now.
fn resolve() -> Result<(String, String, String)> {
    let deps = output(Command::new("apt-cache").args(["depends", KERNEL_META]))
        .with_context(|| format!("`apt-cache depends {KERNEL_META}` failed"))?;
    let kernel = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .with_context(|| format!("{KERNEL_META} depends on no linux-image-*-amd64 package"))?
        .to_owned();
    let kernel_ver = candidate(&kernel)?;
    let busybox_ver = candidate(BUSYBOX)?;
    Ok((kernel, kernel_ver, busybox_ver))
}

/// The version `apt-get` would fetch for `pkg`.
fn candidate(pkg: &str) -> Result<String> {
    let policy = output(Command::new("apt-cache").args(["policy", pkg]))
        .with_context(|| format!("`apt-cache policy {pkg}` failed"))?;
    policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .find(|v| *v != "(none)")
        .map(str::to_owned)
        .with_context(|| format!("apt offers no version of {pkg}"))
}

/// Downloads each `(package, version)` into a fresh `cache/download/` in
/// one `apt-get download` and returns the .deb of each package.
fn download(
    wanted: &[(&str, &str)],
    cache: &Path,
) -> Result<std::collections::HashMap<String, PathBuf>> {
    let mut debs = std::collections::HashMap::new();
    if wanted.is_empty() {
        return Ok(debs);
    }
    let dl = cache.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    let specs: Vec<String> = wanted.iter().map(|(p, v)| format!("{p}={v}")).collect();
    let fetch = || {
        status(
            Command::new("apt-get")
                // apt's sandbox user cannot write into target/.
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .args(&specs)
                .current_dir(&dl),
        )
    };
    if fetch().is_err() {
        eprintln!(
            "xtask guest-image: refreshing the package lists and retrying {}",
            specs.join(" ")
        );
        status(Command::new("apt-get").args(["update", "-q"]))?;
        fetch()?;
    }
    for (pkg, version) in wanted {
        // apt names it <package>_<version, ':' escaped>_<arch>.deb.
        let prefix = format!("{pkg}_{}_", version.replace(':', "%3a"));
        let deb = walk(&dl)?
            .into_iter()
            .find(|p| file_name(p).starts_with(&prefix) && file_name(p).ends_with(".deb"))
            .with_context(|| {
                format!(
                    "apt-get download {pkg}={version} left no {prefix}*.deb in {}",
                    dl.display()
                )
            })?;
        debs.insert((*pkg).to_owned(), deb);
    }
    Ok(debs)
}

/// Kernel parts for the image, cached in `kdir`: `vmlinux` and
/// `modules/<name>.ko` (decompressed).
fn kernel_parts(deb: &Path, kdir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(kdir);
    let raw = kdir.join("deb");
    fs::create_dir_all(&raw)?;
    // Only the kernel and our modules, straight from the data tarball.
    let mut patterns = vec!["./boot/vmlinuz-*".to_owned()];
    patterns.extend(MODULES.iter().map(|m| format!("*/{m}.ko*")));
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tar_in = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(&raw)
        .args(&patterns)
        .stdin(tar_in)
        .status();
    let dpkg_status = dpkg.wait()?;
    let tar = tar.context("starting tar")?;
    ensure!(
        tar.success() && dpkg_status.success(),
        "extracting {} from {} failed (dpkg-deb {dpkg_status}, tar {tar})",
        patterns.join(" "),
        deb.display()
    );

    let files = walk(&raw)?;
    let vmlinuz = files
        .iter()
        .find(|p| file_name(p).starts_with("vmlinuz-"))
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    let vmlinux = extract_vmlinux(&read(vmlinuz)?, kdir)
        .with_context(|| format!("extracting vmlinux from {}", vmlinuz.display()))?;
    write_atomic(&kdir.join("vmlinux"), &vmlinux, 0o644)?;

    let mods = kdir.join("modules");
    fs::create_dir_all(&mods)?;
    for (i, m) in MODULES.iter().enumerate() {
        let found = files
            .iter()
            .find(|p| {
                let n = file_name(p);
                n.strip_prefix(m)
                    .and_then(|rest| rest.strip_prefix(".ko"))
                    .is_some_and(|ext| ["", ".xz", ".zst", ".gz"].contains(&ext))
            })
            .with_context(|| format!("module {m} is not in {}", deb.display()))?;
        let ko = decompress_module(found)?;
        ensure!(
            ko.starts_with(b"\x7fELF"),
            "{} is not an ELF object",
            found.display()
        );
        for dep in modinfo(&ko, "depends").iter().flat_map(|d| d.split(',')) {
            ensure!(
                dep.is_empty() || MODULES[..i].contains(&dep),
                "module {m} depends on {dep}, which is not loaded before it: update MODULES in xtask/src/guest.rs"
            );
        }
        write_atomic(&mods.join(format!("{m}.ko")), &ko, 0o644)?;
    }
    fs::remove_dir_all(&raw)?;
    Ok(())
}

/// The kernel's `scripts/extract-vmlinux`: find a compressed stream's magic
/// in the bzImage, decompress from there (trailing data makes the tools
/// complain; the output counts), and take the first result that is an ELF
/// image with a PVH entry point.
fn extract_vmlinux(bz: &[u8], scratch: &Path) -> Result<Vec<u8>> {
    let methods: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    let tail = scratch.join("payload");
    for (magic, tool, args) in methods {
        for off in find_all(bz, magic) {
            fs::write(&tail, &bz[off..])?;
            let out = Command::new(tool)
                .args(args)
                .stdin(fs::File::open(&tail)?)
                .stderr(Stdio::null())
                .output()
                .with_context(|| format!("running {tool}"))?;
            if out.stdout.starts_with(b"\x7fELF") && has_pvh_note(&out.stdout) {
                let _ = fs::remove_file(&tail);
                return Ok(out.stdout);
            }
        }
    }
    let _ = fs::remove_file(&tail);
    bail!("no xz, zstd or gzip stream in it decompresses to an ELF kernel with a PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)")
}

/// Whether a 64-bit little-endian ELF has a `Xen` note of type 18
/// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU needs to boot it directly.
fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const PHYS32_ENTRY: u32 = 18;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // ELFCLASS64, little endian.
    if elf.get(4..6) != Some(&[2, 1]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return false;
        };
        let (Ok(mut o), Ok(size)) = (usize::try_from(off), usize::try_from(size)) else {
            return false;
        };
        let end = o.saturating_add(size).min(elf.len());
        while o + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(o), u32_at(o + 4), u32_at(o + 8))
            else {
                break;
            };
            let name_at = o + 12;
            let name_len = namesz as usize;
            let desc_at = name_at + name_len.next_multiple_of(4);
            if elf.get(name_at..name_at + name_len) == Some(b"Xen\0") && kind == PHYS32_ENTRY {
                return true;
            }
            o = desc_at + (descsz as usize).next_multiple_of(4);
        }
    }
    false
}

/// A module file, decompressed by its extension.
fn decompress_module(path: &Path) -> Result<Vec<u8>> {
    let name = file_name(path);
    let tool: Option<(&str, &[&str])> = if name.ends_with(".ko.xz") {
        Some(("xz", &["-dc"]))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", &["-dcq"]))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", &["-dc"]))
    } else {
        None
    };
    let Some((tool, args)) = tool else {
        return read(path);
    };
    let out = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    ensure!(
        out.status.success(),
        "{tool} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// The value of `key=` in a module's `.modinfo` (NUL-separated strings).
fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let needle = format!("\0{key}=");
    let at = find_all(ko, needle.as_bytes()).next()? + needle.len();
    let len = ko[at..].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&ko[at..at + len]).into_owned())
}

/// `bin/busybox` of the busybox-static .deb into `bdir/busybox`.
fn unpack_busybox(deb: &Path, bdir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(bdir);
    let raw = bdir.join("deb");
    fs::create_dir_all(&raw)?;
    status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&raw))?;
    copy_atomic(&raw.join("bin/busybox"), &bdir.join("busybox"))?;
    fs::remove_dir_all(&raw)?;
    Ok(())
}

/// Fails unless busybox has every applet the guest uses.
fn check_applets(bin: &Path, version: &str) -> Result<()> {
    let list = output(Command::new(bin).arg("--list"))
        .with_context(|| format!("{} --list failed", bin.display()))?;
    let have: Vec<&str> = list.lines().collect();
    let missing: Vec<&str> = APPLETS
        .iter()
        .copied()
        .filter(|a| !have.contains(a))
        .collect();
    ensure!(
        missing.is_empty(),
        "{BUSYBOX} {version} lacks the applets {}",
        missing.join(" ")
    );
    Ok(())
}

/// Compiles the guest helper (static, stripped).
fn compile_helper(cache: &Path) -> Result<Vec<u8>> {
    let src = cache.join("xg.c");
    let bin = cache.join("xg");
    fs::write(&src, HELPER_C)?;
    status(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&bin)
            .arg(&src),
    )
    .context("compiling the guest helper")?;
    read(&bin)
}

/// `/init` with the module list filled in.
fn init_script() -> String {
    INIT.replace("@MODULES@", &MODULES.join(" "))
}

/// Removes cache entries other than `keep` (older package versions).
fn prune(cache: &Path, keep: &[&Path]) -> Result<()> {
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let name = file_name(&path);
        if (name.starts_with("kernel-") || name.starts_with("busybox-"))
            && !keep.contains(&path.as_path())
        {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// gzip (`-n`: no name or time stamp, so the same input gives the same
/// bytes) into `dest`, atomically.
fn write_gzip(data: &[u8], dest: &Path) -> Result<()> {
    let tmp = tmp_path(dest);
    let out = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut gz = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting gzip")?;
    let mut stdin = gz.stdin.take().context("gzip stdin")?;
    stdin.write_all(data)?;
    drop(stdin);
    let st = gz.wait()?;
    ensure!(st.success(), "gzip failed ({st})");
    fs::rename(&tmp, dest)?;
    Ok(())
}

fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    dest.with_file_name(name)
}

fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tmp_path(dest);
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}

/// `src` at `dest`, atomically: a hard link when both are on one file
/// system (the 65 MB vmlinux is not stored twice), else a copy.
fn copy_atomic(src: &Path, dest: &Path) -> Result<()> {
    let tmp = tmp_path(dest);
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(src, &tmp).is_err() {
        fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
    }
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every regular file below `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                todo.push(entry.path());
            } else if ty.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// Offsets of every occurrence of `needle` in `hay`.
fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// A version string as a directory name.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// FNV-1a, 64 bit: a stable fingerprint for the stamp.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `newc` cpio archive in memory: every entry owned by root, time stamp
/// zero, so the same inputs give the same archive and no privileges are
/// needed (device nodes included).
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap_or(u32::MAX),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, 1, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, 1, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

/// The guest's `/init` (busybox sh); `@MODULES@` is the module list.
const INIT: &str = include_str!("guest/init.sh");

/// The guest helper `xg`, C for `gcc -static`.
const HELPER_C: &str = include_str!("guest/xg.c");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/x", 0o755, b"abcde");
        c.char_dev("dev/console", 5, 1);
        let a = c.finish();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // First entry: ino 1, a directory, name "bin\0" padded to 4.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ed");
        let trailer = find_all(&a, b"TRAILER!!!").count();
        assert_eq!(trailer, 1);
        // The device's rdev major/minor fields.
        let dev = find_all(&a, b"dev/console").next().expect("device entry");
        let hdr = &a[dev - 110..dev];
        assert_eq!(&hdr[6 + 9 * 8..6 + 10 * 8], b"00000005");
        assert_eq!(&hdr[6 + 10 * 8..6 + 11 * 8], b"00000001");
        // File data follows its padded header + name.
        let x = find_all(&a, b"bin/x\0").next().expect("file entry");
        let data = (x + 6).next_multiple_of(4);
        assert_eq!(&a[data..data + 5], b"abcde");
    }

    #[test]
    fn modinfo_reads_depends() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio_ring,virtio\0name=x\0";
        assert_eq!(
            modinfo(ko, "depends").as_deref(),
            Some("virtio_ring,virtio")
        );
        assert_eq!(modinfo(ko, "vermagic"), None);
    }

    #[test]
    fn pvh_note_needs_an_elf() {
        assert!(!has_pvh_note(b"not an elf at all"));
        assert!(!has_pvh_note(&[0x7f, b'E', b'L', b'F', 2, 1, 0, 0]));
    }

    #[test]
    fn init_names_every_module_in_order() {
        let init = init_script();
        assert!(init.contains(&MODULES.join(" ")));
        assert!(!init.contains("@MODULES@"));
    }

    #[test]
    fn init_script_parses() {
        let dir = std::env::temp_dir().join(format!("xdpath-init-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("init");
        fs::write(&path, init_script()).expect("write");
        let out = Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("run sh -n");
        let _ = fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "sh -n init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn compressed_modules_are_unpacked() {
        let dir = std::env::temp_dir().join(format!("xdpath-guest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let plain = dir.join("m.ko");
        fs::write(&plain, b"\x7fELF module").expect("write");
        assert_eq!(decompress_module(&plain).expect("plain"), b"\x7fELF module");
        for (tool, ext) in [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")] {
            if !on_path(tool) {
                continue;
            }
            let packed = dir.join(format!("m.ko.{ext}"));
            let out = Command::new(tool)
                .arg("-c")
                .arg(&plain)
                .output()
                .expect("compress");
            fs::write(&packed, out.stdout).expect("write");
            assert_eq!(
                decompress_module(&packed).expect(tool),
                b"\x7fELF module",
                "{tool}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe("1:1.35.0-4+deb12u1+b1"), "1_1.35.0-4+deb12u1+b1");
    }
}
