//! A real `xdpathd` process for tests, and `xdpctl` runs against it.
//!
//! [`Daemon::start`] runs the daemon binary in a topology's host namespace
//! (`--netns`) on the host end of the veth pair, with its
//! sockets and state file in a private temporary directory, and waits until
//! the API answers. Dropping it sends SIGTERM (the orderly teardown), waits
//! (bounded), then SIGKILLs if needed; it only ever signals the pid it
//! started. The binaries are the ones cargo built next to the test.

use crate::topology::Topology;
use crate::wait_until;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Path of a binary of this workspace built by cargo: next to the caller
/// (`target/<profile>/`, e.g. the demo) or one level up (tests live in
/// `target/<profile>/deps/`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe
        .parent()
        .ok_or_else(|| anyhow!("unexpected binary location {}", exe.display()))?
        .to_path_buf();
    let up = here.parent().map(Path::to_path_buf);
    [Some(here), up]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{name} is not built next to {}; run `cargo build --bins` (cargo xtask test does)",
                exe.display()
            )
        })
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// Its private directory (sockets, state, log).
    pub dir: PathBuf,
    /// The API socket.
    pub api: PathBuf,
    /// The vhost-user socket.
    pub vhost: PathBuf,
    /// The state directory (flow table file).
    pub state_dir: PathBuf,
    /// stderr of the daemon goes here.
    pub log: PathBuf,
    args: Vec<String>,
    ns: String,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Starts `xdpathd --iface <host_if> <extra...>` in the host namespace
    /// of `t`, with fresh sockets and state, and waits for its API.
    pub fn start(t: &Topology, extra: &[&str]) -> Result<Self> {
        let mut d = Self::prepare(t, extra)?;
        d.spawn()?;
        Ok(d)
    }

    /// A daemon set up as [`Daemon::start`] does (fresh directories, the
    /// same arguments) but not started: write its state file first, or run
    /// it with [`Daemon::run_to_exit`].
    pub fn prepare(t: &Topology, extra: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xdpathd-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut args: Vec<String> = vec!["--iface".into(), t.host_if.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = Self {
            child: None,
            api: dir.join("api.sock"),
            vhost: dir.join("vhost.sock"),
            state_dir: dir.join("state"),
            log: dir.join("xdpathd.log"),
            dir,
            args,
            ns: t.host_ns.clone(),
        };
        Ok(d)
    }

    /// Replaces the arguments given after `--iface` (for the next
    /// [`Daemon::spawn`]: a restart with another configuration).
    pub fn set_args(&mut self, extra: &[&str]) {
        self.args.truncate(2);
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// The flow table's state file of a daemon on `iface`.
    pub fn state_file(&self, iface: &str) -> PathBuf {
        self.state_dir.join(format!("{iface}.flows.json"))
    }

    fn command(&self) -> Result<Command> {
        let bin = workspace_bin("xdpathd")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut c = Command::new(&bin);
        c.args(["--netns", &self.ns])
            .args(&self.args)
            .arg("--api-socket")
            .arg(&self.api)
            .arg("--vhost-socket")
            .arg(&self.vhost)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Ok(c)
    }

    /// Runs the daemon with its arguments (plus `more`, which come after
    /// them and so win) and waits, at most `timeout`, for it to exit by
    /// itself: a start that must fail. Returns its exit code (`None` if it
    /// had to be killed) and its log.
    pub fn run_to_exit(
        &mut self,
        more: &[&str],
        timeout: Duration,
    ) -> Result<(Option<i32>, String)> {
        let mut child = self
            .command()?
            .args(more)
            .spawn()
            .context("starting xdpathd")?;
        let status = exit_within(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok((status.and_then(|s| s.code()), self.log_text()))
    }

    /// Starts the daemon again with the same arguments and directories
    /// (after [`Daemon::kill9`] or [`Daemon::stop`]).
    pub fn spawn(&mut self) -> Result<()> {
        let child = self.command()?.spawn().context("starting xdpathd")?;
        self.child = Some(child);
        // A daemon that exits (say, preflight or a failed bind) fails at
        // once rather than after the whole wait.
        let up = wait_until(Duration::from_secs(15), || {
            self.exited().is_some() || self.call("GET", "/v1/health", None).is_ok()
        }) && self.exited().is_none();
        if !up {
            let status = self.exited();
            bail!(
                "xdpathd did not come up (exit {status:?}); log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Calls the API.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, xdpath_control::client::ClientError> {
        xdpath_control::client::call(&self.api, method, path, body)
    }

    /// Runs `xdpctl --api-socket <api> <args>` (as root unless `as_user`).
    pub fn xdpctl(&self, args: &[&str]) -> Result<Output> {
        self.xdpctl_as(None, args)
    }

    /// Runs xdpctl as user/group `ids` (uid, gid) if given.
    pub fn xdpctl_as(&self, ids: Option<(u32, u32)>, args: &[&str]) -> Result<Output> {
        let bin = workspace_bin("xdpctl")?;
        let mut cmd = match ids {
            None => Command::new(&bin),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                ])
                .arg(&bin);
                c
            }
        };
        cmd.arg("--api-socket")
            .arg(&self.api)
            .args(args)
            .stdin(Stdio::null());
        Ok(cmd.output()?)
    }

    /// SIGTERM and wait (bounded): the orderly shutdown. Returns the exit
    /// status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(15))
    }

    /// SIGTERM, then wait at most `timeout` (SIGKILL after it): how long
    /// the daemon took to exit, and its exit status.
    pub fn stop_timed(
        &mut self,
        timeout: Duration,
    ) -> (Duration, Option<std::process::ExitStatus>) {
        let asked = std::time::Instant::now();
        let status = self.signal_and_wait(libc::SIGTERM, timeout);
        (asked.elapsed(), status)
    }

    /// The daemon's resident memory now and at its peak so far (`VmRSS`,
    /// `VmHWM` of /proc), in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// SIGKILL: the daemon dies without any teardown.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    }

    fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not
        // reaped yet (so the pid cannot have been reused).
        unsafe { libc::kill(child.id() as i32, sig) };
        exit_within(&mut child, timeout).or_else(|| {
            let _ = child.kill();
            child.wait().ok()
        })
    }
}

/// `child`'s exit status if it exits within `timeout`.
fn exit_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_none() {
            eprintln!("xdpathd did not stop; log:\n{}", self.log_text());
        }
        // A killed daemon leaves its pins: the topology's drop removes the
        // interface; remove the pins too (only our interface's directory).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stdout of an xdpctl run as text, failing with stderr if it failed.
pub fn ok_stdout(o: &Output) -> Result<String> {
    if !o.status.success() {
        bail!(
            "xdpctl failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// What an [`XdpWatch`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct XdpSeen {
    /// Netlink queries made.
    pub polls: u64,
    /// Every XDP program id found attached, in order, without repeats in a
    /// row.
    pub progs: Vec<u32>,
}

/// Watches the XDP attachment of an interface from its own thread, as fast
/// as netlink answers, until stopped: it catches a program that is attached
/// only for the few milliseconds of a failing start.
pub struct XdpWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<XdpSeen>>>,
}

/// Longest an [`XdpWatch`] runs if nobody stops it.
const WATCH_LIMIT: Duration = Duration::from_secs(300);

impl XdpWatch {
    /// Starts watching `iface` in namespace `ns`; returns once the first
    /// query was answered.
    pub fn start(ns: &str, iface: &str) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, iface, flag) = (ns.to_string(), iface.to_string(), stop.clone());
        let thread = std::thread::Builder::new().name("xdp-watch".into()).spawn(
            move || -> Result<XdpSeen> {
                crate::topology::enter_netns(&ns)?;
                let idx = xdpath_control::classifier::ifindex(&iface)?;
                let mut seen = XdpSeen::default();
                let end = std::time::Instant::now() + WATCH_LIMIT;
                while std::time::Instant::now() < end {
                    let now = xdpath_control::netlink::xdp_query(idx)?;
                    seen.polls += 1;
                    if seen.polls == 1 {
                        let _ = ready_tx.send(());
                    }
                    if let Some(a) = now {
                        if seen.progs.last() != Some(&a.prog_id) {
                            seen.progs.push(a.prog_id);
                        }
                    }
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                }
                Ok(seen)
            },
        )?;
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops watching and says what was seen.
    pub fn stop(mut self) -> Result<XdpSeen> {
        self.stop.store(true, Ordering::Release);
        let t = self.thread.take().ok_or_else(|| anyhow!("stopped twice"))?;
        t.join().map_err(|_| anyhow!("the XDP watch panicked"))?
    }
}

impl Drop for XdpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
