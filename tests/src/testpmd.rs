//! DPDK's `dpdk-testpmd` as a third-party vhost-user frontend: its
//! virtio_user PMD connects to a vhost-user socket and plays the guest
//! driver (Debian package dpdk-dev, DPDK 22.11; `cargo xtask setup`
//! installs it and reserves hugepages).
//!
//! [`Testpmd`] is a guard around one testpmd child process: stdin is null,
//! stdout and stderr are captured (for failure messages), and dropping the
//! guard kills it with SIGKILL and reaps it, so no process is left behind
//! even when the test panics. testpmd runs with `--in-memory` (no hugepage
//! files), `--single-file-segments` (virtio_user shares one fd per memory
//! segment list; without it there are "Too many memory regions") and
//! `--no-telemetry`. EAL still creates its runtime directory
//! (`/var/run/dpdk/<file prefix>` as root), which a killed testpmd cannot
//! remove: the guard removes it after reaping the process (the prefix is
//! unique to the guard).

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The testpmd binary's name (in PATH).
pub const BINARY: &str = "dpdk-testpmd";
/// How long a killed testpmd may take to be reaped.
const REAP: Duration = Duration::from_secs(10);
/// Captured output kept from the start (EAL and port setup).
const HEAD_BYTES: usize = 64 * 1024;
/// Captured output lines kept from the end (latest stats, last errors).
const TAIL_LINES: usize = 300;

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// What to run.
#[derive(Debug, Clone)]
pub struct TestpmdConfig {
    /// The vhost-user socket virtio_user connects to (as client).
    pub socket: PathBuf,
    /// Queue pairs (`queues=` of virtio_user, `--rxq`/`--txq` of testpmd).
    pub queue_pairs: u16,
    /// The port's MAC (`mac=` of virtio_user). DPDK 22.11's virtio_user
    /// does not read the MAC from a vhost-user backend's config space:
    /// without this it picks a random one.
    pub mac: Option<[u8; 6]>,
    /// `--forward-mode` (`macswap`, `rxonly`, `io`, ...).
    pub forward_mode: String,
    /// `--lcores`: lcore 0 is the main one, the next does the forwarding.
    pub lcores: String,
    /// mbufs in testpmd's pool (`--total-num-mbufs`); its default sizes
    /// the pool for 32 ports (hundreds of MB of hugepages).
    pub mbufs: u32,
    /// Extra EAL arguments (before `--`), e.g. `--log-level=...`.
    pub eal_extra: Vec<String>,
    /// Extra application arguments (after `--`).
    pub app_extra: Vec<String>,
    /// Bridge mode: instead of a virtio_user port, testpmd forwards between
    /// `net_af_xdp` on this interface (queues `0..queue_pairs`) and a
    /// `net_vhost` server on `socket` that a frontend connects to (the
    /// established AF_XDP + vhost-user way). Use `--forward-mode=io`.
    pub bridge_iface: Option<String>,
    /// Network namespace to run in (`ip netns exec`), for `bridge_iface`.
    pub netns: Option<String>,
}

impl TestpmdConfig {
    /// A single virtio_user port on `socket` with `queue_pairs` queue
    /// pairs, one forwarding core, forwarding mode `forward_mode`.
    pub fn new(socket: &Path, queue_pairs: u16, forward_mode: &str) -> Self {
        Self {
            socket: socket.to_path_buf(),
            queue_pairs,
            mac: None,
            forward_mode: forward_mode.to_string(),
            lcores: "0@0,1@1".to_string(),
            mbufs: 8192,
            eal_extra: Vec::new(),
            app_extra: Vec::new(),
            bridge_iface: None,
            netns: None,
        }
    }

    /// Bridge mode (see [`TestpmdConfig::bridge_iface`]): `net_af_xdp` on
    /// `iface` in namespace `netns` <-> `net_vhost` server on `socket`,
    /// `io` forwarding, `queue_pairs` queues on each side.
    pub fn bridge(iface: &str, netns: &str, socket: &Path, queue_pairs: u16) -> Self {
        let mut c = Self::new(socket, queue_pairs, "io");
        c.bridge_iface = Some(iface.to_string());
        c.netns = Some(netns.to_string());
        c
    }

    /// The `--vdev` arguments.
    fn vdevs(&self) -> Vec<String> {
        let q = self.queue_pairs;
        if let Some(iface) = &self.bridge_iface {
            return vec![
                format!("net_af_xdp0,iface={iface},start_queue=0,queue_count={q}"),
                format!("net_vhost0,iface={},queues={q}", self.socket.display()),
            ];
        }
        let mut vdev = format!("net_virtio_user0,path={},queues={q}", self.socket.display());
        if let Some(m) = self.mac {
            vdev.push_str(&format!(
                ",mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ));
        }
        vec![vdev]
    }

    /// The command line (without the binary) for EAL file prefix `prefix`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        let q = self.queue_pairs.to_string();
        let mut a: Vec<String> = vec![
            "--lcores".into(),
            self.lcores.clone(),
            "--no-pci".into(),
            "--in-memory".into(),
            "--single-file-segments".into(),
            "--no-telemetry".into(),
            format!("--file-prefix={prefix}"),
        ];
        for v in self.vdevs() {
            a.extend(["--vdev".to_string(), v]);
        }
        a.extend(self.eal_extra.iter().cloned());
        a.push("--".into());
        a.extend([
            format!("--rxq={q}"),
            format!("--txq={q}"),
            "--nb-cores=1".into(),
            format!("--forward-mode={}", self.forward_mode),
            format!("--total-num-mbufs={}", self.mbufs),
            // Forward at once; without a stats period, `-a` with a closed
            // stdin exits right away.
            "-a".into(),
            "--stats-period".into(),
            "1".into(),
        ]);
        a.extend(self.app_extra.iter().cloned());
        a
    }
}

/// Captured output: the first [`HEAD_BYTES`] and the last [`TAIL_LINES`].
#[derive(Debug, Default)]
struct Log {
    head: String,
    tail: VecDeque<String>,
    dropped: usize,
}

impl Log {
    fn push(&mut self, line: String) {
        if self.head.len() + line.len() <= HEAD_BYTES && self.tail.is_empty() {
            self.head.push_str(&line);
            return;
        }
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
            self.dropped += 1;
        }
    }

    fn text(&self) -> String {
        let mut s = self.head.clone();
        if self.dropped > 0 {
            s.push_str(&format!("[... {} lines left out ...]\n", self.dropped));
        }
        for l in &self.tail {
            s.push_str(l);
        }
        s
    }
}

/// A running testpmd; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Testpmd {
    child: Child,
    status: Option<ExitStatus>,
    log: Arc<Mutex<Log>>,
    command: String,
    /// EAL's runtime directory for our file prefix, removed once reaped.
    runtime_dir: PathBuf,
}

impl Testpmd {
    /// The testpmd binary in PATH, or an error telling how to install it.
    pub fn binary() -> Result<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(BINARY))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{BINARY} not found in PATH: DPDK is not installed; run `cargo xtask setup` \
                     as root (installs dpdk-dev and the PMD packages, reserves hugepages)"
                )
            })
    }

    /// Checks that hugepages are reserved and free, or says how to fix it.
    pub fn check_hugepages() -> Result<()> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let field = |name: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let (total, free) = (field("HugePages_Total:"), field("HugePages_Free:"));
        if total == 0 {
            bail!("no hugepages reserved (vm.nr_hugepages is 0): run `cargo xtask setup` as root");
        }
        if free < 64 {
            bail!("only {free} of {total} hugepages free: testpmd needs about 64 (2 MiB each)");
        }
        Ok(())
    }

    /// Starts testpmd. Its output is captured from the start; use
    /// [`Testpmd::log`] to show it.
    pub fn spawn(cfg: &TestpmdConfig) -> Result<Self> {
        let bin = Self::binary()?;
        Self::check_hugepages()?;
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("xdpath-test-{}-{n}", std::process::id());
        let args = cfg.args(&prefix);
        let runtime_dir = runtime_dir(&prefix);
        let mut cmd = match &cfg.netns {
            // `ip netns exec` execs testpmd in place: the child's pid is
            // testpmd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let command = format!(
            "{}{} {}",
            cfg.netns
                .as_ref()
                .map_or(String::new(), |ns| format!("ip netns exec {ns} ")),
            bin.display(),
            args.join(" ")
        );
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::process::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting {command}"))?;
        let log = Arc::new(Mutex::new(Log::default()));
        let outputs: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ];
        for out in outputs.into_iter().flatten() {
            let log = log.clone();
            // Ends at EOF, i.e. when testpmd is gone.
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(String::from_utf8_lossy(&line).into_owned());
                    line.clear();
                }
            });
        }
        Ok(Self {
            child,
            status: None,
            log,
            command,
            runtime_dir,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Its output so far (stdout and stderr interleaved by line; the start
    /// and the latest lines when long).
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }

    /// Its exit status if it has ended (reaping it), None while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
            if self.status.is_some() {
                self.remove_runtime_dir();
            }
        }
        self.status
    }

    /// Sends SIGKILL to this child (by its pid) and reaps it, waiting at
    /// most 10 s. Returns its exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        // std's Child::kill sends SIGKILL to exactly this pid (still our
        // unreaped child, so the pid cannot have been reused).
        self.child.kill().context("SIGKILL to testpmd")?;
        let end = Instant::now() + REAP;
        loop {
            if let Some(s) = self.child.try_wait().context("waiting for testpmd")? {
                self.status = Some(s);
                self.remove_runtime_dir();
                return Ok(s);
            }
            if Instant::now() >= end {
                bail!(
                    "testpmd (pid {}) still there {REAP:?} after SIGKILL",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks testpmd to quit (SIGTERM: it stops forwarding and closes its
    /// ports, so net_af_xdp removes its XDP program) and reaps it; SIGKILL
    /// if it is still there after 5 s.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory preconditions; the pid is our own
        // unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    fn remove_runtime_dir(&self) {
        match std::fs::remove_dir_all(&self.runtime_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("removing {}: {e}", self.runtime_dir.display());
            }
            _ => {}
        }
    }
}

/// Where EAL puts its runtime directory for `prefix` (DPDK 22.11
/// `eal_create_runtime_dir`): `/var/run/dpdk` for root, else
/// `$XDG_RUNTIME_DIR/dpdk` or `/tmp/dpdk`.
fn runtime_dir(prefix: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let base = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    };
    base.join("dpdk").join(prefix)
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("{e:#}");
        }
    }
}
