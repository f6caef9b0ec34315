//! Preflight: everything that would make the daemon fail halfway, checked
//! before anything is touched, each failure with its fix.
//!
//! The checks read the running system only (capabilities, mounts, limits,
//! the interface through ioctls in the caller's network namespace, the XDP
//! attachment through rtnetlink); they change nothing except raising this
//! process's own memlock limit. `cargo xtask deploy` prints the same list.

use crate::config::DaemonConfig;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One failed check: which, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Short name of the check.
    pub check: &'static str,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {}\n    fix: {}",
            self.check, self.problem, self.fix
        )
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const CAP_IPC_LOCK: u32 = 14;

/// Effective capabilities of this process (from /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

fn ioctl_socket() -> Option<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: fd is fresh and owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    r
}

/// Interface flags (IFF_*), in this network namespace.
pub fn if_flags(name: &str) -> Option<u32> {
    let sock = ioctl_socket()?;
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFFLAGS with a valid ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel filled the flags member of the union.
    Some(unsafe { r.ifr_ifru.ifru_flags } as u16 as u32)
}

/// Interface MTU, in this network namespace.
pub fn if_mtu(name: &str) -> Option<u32> {
    let sock = ioctl_socket()?;
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFMTU with a valid ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut r) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel filled the mtu member of the union.
    Some(unsafe { r.ifr_ifru.ifru_mtu } as u32)
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Receive queues the NIC uses now (`ethtool -l`: rx + combined), if the
/// driver reports channels.
pub fn rx_queues(name: &str) -> Option<u32> {
    let sock = ioctl_socket()?;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL with an ifreq pointing at a valid
    // ethtool_channels that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut r) };
    (rc == 0).then_some(ch.rx_count + ch.combined_count)
}

/// Largest frame (Ethernet header and one VLAN tag included) a UMEM frame
/// of the dataplane's default size holds.
fn max_frame() -> u32 {
    xdpath_dataplane::XskConfig::new("", 0).max_frame_len() as u32
}

/// Runs every check for `cfg`; an empty list means go.
pub fn check(cfg: &DaemonConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    let iface = &cfg.iface;

    let caps = effective_caps();
    let bpf_ok = has_cap(caps, CAP_BPF) || has_cap(caps, CAP_SYS_ADMIN);
    if !(bpf_ok && has_cap(caps, CAP_NET_ADMIN) && has_cap(caps, CAP_NET_RAW)) {
        issues.push(Issue {
            check: "privileges",
            problem: "the daemon lacks CAP_BPF (or CAP_SYS_ADMIN), CAP_NET_ADMIN or CAP_NET_RAW".into(),
            fix: "run it as root, or grant the capabilities (systemd: AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK)".into(),
        });
    }

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        issues.push(Issue {
            check: "bpffs",
            problem: "no BPF filesystem at /sys/fs/bpf, so maps cannot be pinned".into(),
            fix: "mount -t bpf bpf /sys/fs/bpf".into(),
        });
    }

    if let Err(e) = crate::classifier::raise_memlock() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        let need: u64 = 64 << 20;
        if lim.rlim_cur != libc::RLIM_INFINITY
            && lim.rlim_cur < need
            && !has_cap(caps, CAP_IPC_LOCK)
        {
            issues.push(Issue {
                check: "memlock",
                problem: format!(
                    "locked-memory limit is {} KiB and cannot be raised ({e}); UMEMs need more",
                    lim.rlim_cur / 1024
                ),
                fix: "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity), or grant CAP_IPC_LOCK"
                    .into(),
            });
        }
    }

    match if_flags(iface) {
        None => issues.push(Issue {
            check: "interface",
            problem: format!("interface {iface} does not exist in this network namespace"),
            fix: format!("check the name with `ip link show`; create or move {iface} here"),
        }),
        Some(flags) => {
            if flags & libc::IFF_UP as u32 == 0 {
                issues.push(Issue {
                    check: "interface",
                    problem: format!("interface {iface} is down"),
                    fix: format!("ip link set dev {iface} up"),
                });
            }
            if let Some(n) = rx_queues(iface) {
                if n < u32::from(cfg.queues) {
                    issues.push(Issue {
                        check: "queues",
                        problem: format!(
                            "{iface} has {n} receive queues but {} queue pairs were asked for",
                            cfg.queues
                        ),
                        fix: format!(
                            "ethtool -L {iface} combined {} (if the NIC allows), or --queues {n}",
                            cfg.queues
                        ),
                    });
                }
            }
            if let Some(mtu) = if_mtu(iface) {
                let limit = max_frame() - 18;
                if mtu > limit {
                    issues.push(Issue {
                        check: "mtu",
                        problem: format!("{iface} has MTU {mtu}; an AF_XDP frame holds at most MTU {limit} (no multi-buffer yet)"),
                        fix: format!("ip link set dev {iface} mtu {limit}"),
                    });
                }
                if u32::from(cfg.mtu) > mtu {
                    issues.push(Issue {
                        check: "mtu",
                        problem: format!("guest MTU {} is larger than {iface}'s MTU {mtu}: the NIC would drop its big frames", cfg.mtu),
                        fix: format!("--mtu {mtu}, or raise {iface}'s MTU"),
                    });
                }
            }
            if !cfg.force {
                if let Ok(idx) = crate::classifier::ifindex(iface) {
                    if let Ok(Some(a)) = crate::netlink::xdp_query(idx) {
                        issues.push(Issue {
                            check: "xdp",
                            problem: format!("{iface} already has XDP program id {} attached ({:?} mode)", a.prog_id, a.mode),
                            fix: format!("inspect it with `bpftool prog show id {}`; detach it, or pass --force to replace it", a.prog_id),
                        });
                    }
                }
            }
        }
    }
    if u32::from(cfg.mtu) + 18 > max_frame() {
        issues.push(Issue {
            check: "mtu",
            problem: format!(
                "guest MTU {} does not fit an AF_XDP frame (at most {})",
                cfg.mtu,
                max_frame() - 18
            ),
            fix: format!("--mtu {}", max_frame() - 18),
        });
    }
    issues
}
