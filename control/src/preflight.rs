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

/// `struct ethtool_channels`: a NIC's channels (`ethtool -l`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    cmd: u32,
    /// Most receive-only channels the NIC supports.
    pub max_rx: u32,
    /// Most transmit-only channels.
    pub max_tx: u32,
    max_other: u32,
    /// Most combined (receive and transmit) channels.
    pub max_combined: u32,
    /// Receive-only channels in use.
    pub rx_count: u32,
    /// Transmit-only channels in use.
    pub tx_count: u32,
    other_count: u32,
    /// Combined channels in use.
    pub combined_count: u32,
}

impl Channels {
    /// Receive queues in use: receive-only plus combined channels.
    pub fn rx_queues(&self) -> u32 {
        self.rx_count.saturating_add(self.combined_count)
    }

    /// The most receive queues the NIC can have.
    pub fn max_rx_queues(&self) -> u32 {
        self.max_rx.max(self.max_combined)
    }

    /// Whether the NIC counts its queues in combined channels (most
    /// multi-queue NICs) rather than in separate receive and transmit
    /// channels (veth, for one).
    fn uses_combined(&self) -> bool {
        self.max_combined > 0 && (self.combined_count > 0 || self.max_rx == 0)
    }

    /// The `ethtool -L` command that gives `iface` `n` receive queues.
    pub fn ethtool_fix(&self, iface: &str, n: u16) -> String {
        if self.uses_combined() {
            format!("ethtool -L {iface} combined {n}")
        } else {
            format!("ethtool -L {iface} rx {n} tx {n}")
        }
    }

    /// These channels with `n` receive queues (and as many transmit
    /// queues, for drivers with separate channels): what
    /// [`set_rx_queues`] asks the driver for.
    pub fn with_rx_queues(&self, n: u32) -> Self {
        let mut c = *self;
        if self.uses_combined() {
            c.combined_count = n;
            c.rx_count = 0;
        } else {
            c.rx_count = n;
            c.tx_count = n;
        }
        c
    }
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;

fn ethtool_channels(name: &str, ch: &mut Channels) -> std::io::Result<()> {
    let sock = ioctl_socket().ok_or_else(std::io::Error::last_os_error)?;
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_data = (ch as *mut Channels).cast();
    // SAFETY: SIOCETHTOOL with an ifreq pointing at a valid
    // ethtool_channels that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut r) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The NIC's channels (`ethtool -l`), if the driver reports them.
pub fn channels(name: &str) -> Option<Channels> {
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    ethtool_channels(name, &mut ch).ok().map(|()| ch)
}

/// Receive queues the NIC uses now (`ethtool -l`: rx + combined), if the
/// driver reports channels.
pub fn rx_queues(name: &str) -> Option<u32> {
    channels(name).map(|c| c.rx_queues())
}

/// Gives the NIC `n` receive queues (`ethtool -L`, ETHTOOL_SCHANNELS):
/// `combined n` on NICs with combined channels, `rx n tx n` on the others.
/// Returns the channels before and after; nothing is written if it has
/// `n` already. Some drivers reset their queues when the count changes.
pub fn set_rx_queues(name: &str, n: u32) -> std::io::Result<(Channels, Channels)> {
    let before = channels(name).ok_or_else(|| {
        std::io::Error::other(format!("{name} does not report its channels (ethtool -l)"))
    })?;
    if before.rx_queues() == n {
        return Ok((before, before));
    }
    let mut want = before.with_rx_queues(n);
    want.cmd = ETHTOOL_SCHANNELS;
    ethtool_channels(name, &mut want)?;
    let after = channels(name).unwrap_or(want);
    if after.rx_queues() != n {
        return Err(std::io::Error::other(format!(
            "the driver of {name} kept {} receive queues",
            after.rx_queues()
        )));
    }
    Ok((before, after))
}

/// The `[queues]` problem of a NIC with `ch` for `queues` queue pairs, if
/// any. More receive queues than pairs is one: the NIC's RSS puts some
/// flows on queues without a socket, and those never reach the guest.
/// With `set_channels` the daemon changes the count itself, so only a
/// count the NIC cannot have is a problem.
pub fn queue_issue(iface: &str, ch: &Channels, queues: u16, set_channels: bool) -> Option<Issue> {
    let n = ch.rx_queues();
    let want = u32::from(queues);
    if n == want {
        return None;
    }
    if set_channels {
        let max = ch.max_rx_queues();
        return (max < want).then(|| Issue {
            check: "queues",
            problem: format!(
                "{iface} can have at most {max} receive queues but {queues} queue pairs were asked for"
            ),
            fix: format!("--queues {max}"),
        });
    }
    let ethtool = ch.ethtool_fix(iface, queues);
    Some(if n < want {
        Issue {
            check: "queues",
            problem: format!(
                "{iface} has {n} receive queues but {queues} queue pairs were asked for"
            ),
            fix: format!(
                "{ethtool} (if the NIC allows; --set-channels does it for you), or --queues {n}"
            ),
        }
    } else {
        Issue {
            check: "queues",
            problem: format!(
                "{iface} has {n} receive queues but only {queues} queue pairs were asked for: \
                 the flows its RSS spreads over the other {} queues would never reach the guest",
                n - want
            ),
            fix: format!("{ethtool}, or --set-channels to let xdpathd set it, or --queues {n}"),
        }
    })
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
            if let Some(ch) = channels(iface) {
                issues.extend(queue_issue(iface, &ch, cfg.queues, cfg.set_channels));
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

/// What `--check` reports besides the checks, none of them a failure: the
/// stale pin directories under the pin root (see [`crate::pins`]), which
/// the daemon removes when it starts.
pub fn notes(cfg: &DaemonConfig) -> Vec<Issue> {
    crate::pins::find_stale(&cfg.pin_root())
        .into_iter()
        .map(|p| Issue {
            check: "pins",
            problem: format!(
                "stale pin directory {}: interface {} does not exist in this network namespace and no program uses its maps",
                p.dir.display(),
                p.iface
            ),
            fix: format!(
                "nothing to do: xdpathd removes it when it starts (or now: `xdpathd --remove-stale-pins`, or `cargo xtask undeploy --iface {}`)",
                p.iface
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(rx: u32, max: u32) -> Channels {
        Channels {
            max_rx: max,
            max_tx: max,
            rx_count: rx,
            tx_count: rx,
            ..Channels::default()
        }
    }

    fn nic(combined: u32, max: u32) -> Channels {
        Channels {
            max_combined: max,
            combined_count: combined,
            ..Channels::default()
        }
    }

    #[test]
    fn more_receive_queues_than_pairs_is_refused_with_the_fix() {
        let i = queue_issue("eth1", &nic(8, 16), 2, false).expect("refused");
        assert_eq!(i.check, "queues");
        assert!(i.problem.contains("has 8 receive queues but only 2"), "{i}");
        assert!(
            i.problem
                .contains("other 6 queues would never reach the guest"),
            "{i}"
        );
        assert_eq!(
            i.fix,
            "ethtool -L eth1 combined 2, or --set-channels to let xdpathd set it, or --queues 8"
        );
        let i = queue_issue("veth0", &veth(4, 4), 1, false).expect("refused");
        assert!(i.fix.starts_with("ethtool -L veth0 rx 1 tx 1,"), "{i}");
        let i = queue_issue("eth1", &nic(1, 16), 2, false).expect("too few");
        assert_eq!(
            i.problem,
            "eth1 has 1 receive queues but 2 queue pairs were asked for"
        );
        assert!(
            i.fix.contains("--set-channels") && i.fix.contains("--queues 1"),
            "{i}"
        );
        assert_eq!(queue_issue("eth1", &nic(2, 16), 2, false), None);
    }

    #[test]
    fn set_channels_accepts_any_count_the_nic_can_have() {
        assert_eq!(queue_issue("eth1", &nic(8, 16), 2, true), None);
        assert_eq!(queue_issue("eth1", &nic(1, 16), 16, true), None);
        let i = queue_issue("veth0", &veth(2, 2), 3, true).expect("beyond the maximum");
        assert_eq!(
            (i.problem.as_str(), i.fix.as_str()),
            (
                "veth0 can have at most 2 receive queues but 3 queue pairs were asked for",
                "--queues 2"
            )
        );
        // What the driver is asked for: combined channels, or rx and tx.
        let c = nic(8, 16).with_rx_queues(2);
        assert_eq!((c.combined_count, c.rx_count, c.rx_queues()), (2, 0, 2));
        let v = veth(4, 4).with_rx_queues(1);
        assert_eq!((v.rx_count, v.tx_count, v.combined_count), (1, 1, 0));
    }
}
