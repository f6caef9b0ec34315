//! A real QEMU guest on a vhost-user-net socket, driven through its serial
//! console.
//!
//! The image is the one `cargo xtask guest-image` builds from Debian
//! packages into `target/guest/` (`vmlinux`, booted directly through its PVH
//! entry, and `initramfs.cpio.gz`: busybox, the virtio-net modules, the `xg`
//! helper and an `/init` that configures eth0 from the kernel command line).
//!
//! QEMU runs with what this machine needs (see FACTS.md): `-accel tcg` (no
//! usable KVM), guest RAM in a shared memfd (the backend maps it), and
//! `virtio-net-pci,...,vectors=0` (QEMU 7.2 crashes with vhost-user + MSI-X
//! under TCG; INTx works, multiqueue included). The serial console is
//! QEMU's stdin/stdout: `/init` prints `XDPATH-GUEST-READY` once eth0 is up,
//! then reads one command per line (`ID TIMEOUT_S COMMAND`) and answers
//! `XDPATH-BEGIN ID`, the output, `XDPATH-END ID STATUS`.
//!
//! QEMU is the vhost-user client by default (it connects to the backend's
//! socket and reconnects every second), or the server
//! ([`GuestConfig::vhost_server`]: it listens and the backend dials it).
//!
//! [`Guest`] kills the QEMU process it started (by its pid, SIGKILL) and
//! reaps it on drop, even when the test panics; it creates no files (but
//! a QEMU in server mode makes its socket file, which a killed QEMU
//! leaves: the caller's directory holds it). On a panic it prints the tail
//! of the console log.

use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Printed by `/init` once eth0 is configured and up.
pub const READY: &str = "XDPATH-GUEST-READY";
/// Printed by `/init` instead of [`READY`] when setup failed, with the reason.
pub const FAILED: &str = "XDPATH-GUEST-FAILED";

/// Console lines kept for diagnostics.
const LOG_LINES: usize = 400;

/// Where `cargo xtask guest-image` puts the image: `target/guest/` of the
/// workspace.
pub fn image_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), Path::to_path_buf)
        .join("target")
        .join("guest")
}

/// The kernel and initramfs, or an error that says how to build them.
pub fn image() -> Result<(PathBuf, PathBuf)> {
    let dir = image_dir();
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("initramfs.cpio.gz");
    if !kernel.is_file() || !initrd.is_file() {
        bail!(
            "no guest image in {}: run `cargo xtask guest-image` first (it builds one from \
             Debian packages, about 15 s, then caches it)",
            dir.display()
        );
    }
    Ok((kernel, initrd))
}

/// How to boot a [`Guest`].
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The vhost-user socket: the one the backend listens on, or (with
    /// [`GuestConfig::vhost_server`]) the one QEMU listens on.
    pub sock: PathBuf,
    /// Which side of the vhost-user socket QEMU is. `false` (the default):
    /// QEMU connects to the backend's socket as a client and, after a
    /// disconnect, tries again every second (`-chardev
    /// socket,...,reconnect=1`). `true`: QEMU listens on `sock` and owns the
    /// socket file (`-chardev socket,...,server=on,wait=off`, booting
    /// without waiting for a backend); for a backend in client mode, such
    /// as an xdpathd guest entry with `"vhost_client": true`, which dials
    /// the socket and redials every 50 ms after a disconnect (like OVS's
    /// `dpdkvhostuserclient`). QEMU leaves the socket file behind when it
    /// is killed: put it in a directory the test removes.
    pub vhost_server: bool,
    /// Queue pairs QEMU offers (`-netdev vhost-user,queues=N`); the backend
    /// must serve at least as many.
    pub queues: u16,
    /// The NIC's MAC address.
    pub mac: [u8; 6],
    /// eth0's address with prefix length, e.g. `10.77.0.10/24`.
    pub ip: String,
    /// Default gateway, if any.
    pub gw: Option<String>,
    /// Combined channels `/init` enables (`xg channels eth0 N`); a
    /// one-vCPU guest starts with one.
    pub enable_queues: Option<u16>,
    /// eth0's MTU, if not the device's.
    pub mtu: Option<u16>,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// How long to wait for [`READY`]. TCG on two shared host CPUs is slow.
    pub boot_timeout: Duration,
}

impl GuestConfig {
    /// One vCPU, 256 MiB, one queue pair, 60 s to boot, QEMU as the
    /// vhost-user client.
    pub fn new(sock: impl Into<PathBuf>, mac: [u8; 6], ip: impl Into<String>) -> Self {
        Self {
            sock: sock.into(),
            vhost_server: false,
            queues: 1,
            mac,
            ip: ip.into(),
            gw: None,
            enable_queues: None,
            mtu: None,
            memory_mib: 256,
            cpus: 1,
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// A running QEMU guest; killed and reaped on drop.
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    next_id: u64,
    /// From starting QEMU to the ready line.
    pub boot_time: Duration,
    /// The ready line (`XDPATH-GUEST-READY combined N max M`).
    pub ready_line: String,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.child.id())
            .field("boot_time", &self.boot_time)
            .finish_non_exhaustive()
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Appends a line to the bounded log.
fn keep(log: &Mutex<Vec<String>>, line: String) {
    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
    if l.len() >= LOG_LINES {
        l.remove(0);
    }
    l.push(line);
}

impl Guest {
    /// Starts QEMU and waits (up to `cfg.boot_timeout`) for the guest to
    /// report eth0 up. On failure the error carries the console log.
    pub fn boot(cfg: &GuestConfig) -> Result<Self> {
        let (kernel, initrd) = image()?;
        ensure!(cfg.queues >= 1, "a guest needs at least one queue pair");
        let mut append = format!("console=ttyS0 quiet panic=-1 xdpath.ip={}", cfg.ip.trim());
        if let Some(gw) = &cfg.gw {
            append.push_str(&format!(" xdpath.gw={gw}"));
        }
        if let Some(q) = cfg.enable_queues {
            append.push_str(&format!(" xdpath.queues={q}"));
        }
        if let Some(mtu) = cfg.mtu {
            append.push_str(&format!(" xdpath.mtu={mtu}"));
        }
        let mem = cfg.memory_mib;
        // QEMU option values escape a comma by doubling it.
        let sock = cfg.sock.display().to_string().replace(',', ",,");
        let chardev = if cfg.vhost_server {
            format!("socket,id=c,path={sock},server=on,wait=off")
        } else {
            format!("socket,id=c,path={sock},reconnect=1")
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .args(["-smp", &cfg.cpus.to_string(), "-m", &format!("{mem}M")])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
                "-numa",
                "node,memdev=mem",
            ])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args([
                "-chardev",
                &chardev,
                "-netdev",
                &format!("vhost-user,id=n,chardev=c,queues={}", cfg.queues),
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n,mq={},vectors=0,mac={}",
                    if cfg.queues > 1 { "on" } else { "off" },
                    mac_str(cfg.mac)
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .context("cannot start qemu-system-x86_64 (run `cargo xtask setup` as root)")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        // Both threads end when QEMU's pipes close (it exited or was killed).
        if let Some(out) = child.stdout.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(out).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_owned();
                    keep(&log, line.clone());
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(err).split(b'\n') {
                    let Ok(line) = line else { break };
                    keep(&log, format!("qemu: {}", String::from_utf8_lossy(&line)));
                }
            });
        }
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("QEMU has no stdin pipe");
        };
        let mut guest = Self {
            child,
            stdin,
            lines,
            log,
            next_id: 1,
            boot_time: Duration::ZERO,
            ready_line: String::new(),
        };
        let end = start + cfg.boot_timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match guest.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(READY) => {
                    guest.boot_time = start.elapsed();
                    guest.ready_line = l;
                    return Ok(guest);
                }
                Ok(l) if l.starts_with(FAILED) => {
                    bail!("guest setup failed: {l}\n{}", guest.log_tail(60))
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "no {READY} within {:?}\n{}",
                    cfg.boot_timeout,
                    guest.log_tail(60)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    // Let the stderr thread finish its last lines.
                    let st = guest.child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "QEMU exited ({st:?}) before {READY}\n{}",
                        guest.log_tail(60)
                    )
                }
            }
        }
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `cmd` with `sh -c` in the guest (stdin /dev/null, stderr with
    /// stdout) and returns its exit status and output. The guest kills the
    /// command after `timeout` (status 143); the host gives up 10 s later.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        ensure!(
            !cmd.chars().any(char::is_control),
            "guest commands are one line without control characters: {cmd:?}"
        );
        // The console's line discipline takes at most 4095 bytes per line.
        ensure!(
            cmd.len() < 3500,
            "guest command too long ({} bytes)",
            cmd.len()
        );
        let id = self.next_id;
        self.next_id += 1;
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        writeln!(self.stdin, "{id} {} {cmd}", secs.max(1))
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("writing to the guest console\n{}", self.log_tail(40)))?;
        let begin = format!("XDPATH-BEGIN {id}");
        let end_prefix = format!("XDPATH-END {id} ");
        let deadline = Instant::now() + timeout + Duration::from_secs(10);
        let mut out: Option<Vec<String>> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "guest command {cmd:?} gave no result within {timeout:?}\n{}",
                    self.log_tail(40)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("QEMU exited while running {cmd:?}\n{}", self.log_tail(40))
                }
            };
            match &mut out {
                None if line == begin => out = Some(Vec::new()),
                None => {}
                Some(o) => {
                    if let Some(st) = line.strip_prefix(&end_prefix) {
                        let st = st
                            .trim()
                            .parse()
                            .with_context(|| format!("bad end line {line:?}"))?;
                        return Ok((st, o.join("\n")));
                    }
                    o.push(line);
                }
            }
        }
    }

    /// Like [`Guest::run`], but a non-zero exit status is an error that
    /// shows the output.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        let (st, out) = self.run(cmd, timeout)?;
        ensure!(st == 0, "guest command {cmd:?} exited {st}:\n{out}");
        Ok(out)
    }

    /// The last `n` console lines (and QEMU's stderr), for messages.
    pub fn log_tail(&self, n: usize) -> String {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let from = l.len().saturating_sub(n);
        format!(
            "--- guest console (last {} lines) ---\n{}\n---",
            l.len() - from,
            l[from..].join("\n")
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Only the process this guard started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "{}", self.log_tail(80));
        }
    }
}
