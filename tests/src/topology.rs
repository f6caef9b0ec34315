//! Private namespaces and a veth pair, torn down on drop.
//!
//! ```text
//!   netns <host>                      netns <peer>
//!   [host_if 10.77.0.1/24] <--veth--> [peer_if 10.77.0.2/24]
//!    XDP attaches here                  frames are sent from here
//! ```
//!
//! Names are unique per process and per topology (`xdpt-<pid>-<n>-h/-p`,
//! `xh<n>x<pid>`/`xp<n>x<pid>`), so tests can run in parallel. IPv6 is
//! disabled on both ends before the links come up so the kernel sends no
//! router or multicast listener traffic that would disturb exact counter
//! checks; the tests send IPv6 frames raw.

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// MAC address of the host-side veth.
pub const HOST_MAC: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 1];
/// MAC address of the peer-side veth.
pub const PEER_MAC: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 2];
/// IPv4 address of the host-side veth.
pub const HOST_IP: [u8; 4] = [10, 77, 0, 1];
/// IPv4 address of the peer-side veth.
pub const PEER_IP: [u8; 4] = [10, 77, 0, 2];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` (or any command) and fails with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Two namespaces joined by a veth pair with `queues` queues each way.
#[derive(Debug)]
pub struct Topology {
    /// Namespace of the side XDP attaches to.
    pub host_ns: String,
    /// Namespace of the traffic source.
    pub peer_ns: String,
    /// The veth end in `host_ns`.
    pub host_if: String,
    /// The veth end in `peer_ns`.
    pub peer_if: String,
    /// Queues per direction.
    pub queues: u32,
}

impl Topology {
    /// Creates the namespaces and the veth pair, addresses both ends and
    /// brings them up. Partial setups are removed before an error returns.
    pub fn new(queues: u32) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let t = Self {
            host_ns: format!("xdpt-{pid}-{n}-h"),
            peer_ns: format!("xdpt-{pid}-{n}-p"),
            host_if: format!("xh{n}x{pid}"),
            peer_if: format!("xp{n}x{pid}"),
            queues,
        };
        // From here on Drop cleans up whatever was created.
        t.build()?;
        Ok(t)
    }

    fn build(&self) -> Result<()> {
        let q = self.queues.to_string();
        run("ip", &["netns", "add", &self.host_ns])?;
        run("ip", &["netns", "add", &self.peer_ns])?;
        for ns in [&self.host_ns, &self.peer_ns] {
            for key in ["all", "default"] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
                    ],
                )?;
            }
        }
        run(
            "ip",
            &[
                "-n",
                &self.host_ns,
                "link",
                "add",
                &self.host_if,
                "address",
                &mac_str(HOST_MAC),
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &self.peer_if,
                "address",
                &mac_str(PEER_MAC),
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &self.peer_ns,
            ],
        )?;
        for (ns, dev, ip) in [
            (&self.host_ns, &self.host_if, HOST_IP),
            (&self.peer_ns, &self.peer_if, PEER_IP),
        ] {
            let cidr = format!("{}.{}.{}.{}/24", ip[0], ip[1], ip[2], ip[3]);
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        // XPS: tx queue i of the peer is used by CPU i, so a sender pinned
        // to CPU i reaches rx queue i of the host end. Only queues that have
        // a CPU get a map (a single-queue device refuses one and needs
        // none); an AF_XDP sender reaches any queue.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        for i in (0..self.queues.min(cpus)).filter(|_| self.queues > 1) {
            let mask = format!("{:x}", 1u64 << (i % 64));
            let path = format!("/sys/class/net/{}/queues/tx-{i}/xps_cpus", self.peer_if);
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.peer_ns,
                    "sh",
                    "-c",
                    &format!("echo {mask} > {path}"),
                ],
            )?;
        }
        Ok(())
    }

    /// Runs `f` on a thread that has entered `ns`; panics propagate.
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                enter_netns(ns).unwrap_or_else(|e| panic!("cannot enter netns {ns}: {e:#}"));
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Runs `f` in the host namespace.
    pub fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::in_ns(&self.host_ns, f)
    }

    /// Runs `f` in the peer namespace.
    pub fn in_peer<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::in_ns(&self.peer_ns, f)
    }

    /// Runs a command inside `ns` (`ip netns exec`).
    pub fn exec(ns: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("open /run/netns/{ns}"))?;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth in it, and with the veth
        // any XDP program attached to it.
        for ns in [&self.host_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // Backstop for a classifier that did not get to unpin.
        let pins =
            std::path::Path::new(xdpath_control::classifier::DEFAULT_PIN_ROOT).join(&self.host_if);
        let _ = std::fs::remove_dir_all(&pins);
        let _ = std::fs::remove_dir(xdpath_control::classifier::DEFAULT_PIN_ROOT);
    }
}
