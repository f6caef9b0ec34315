//! AF_PACKET sockets bound to one interface of a namespace: a sender and a
//! capturing receiver.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An AF_PACKET raw socket of protocol `proto` (network order) bound to
/// `iface`, in the calling thread's namespace.
fn bound_socket(iface: &str, proto: u16) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: c is NUL-terminated.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("if_nametoindex({iface})"));
    }
    // SAFETY: plain socket(2) call, checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: raw is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    Ok(fd)
}

/// A raw socket that sends whole Ethernet frames out of one interface.
/// It keeps the namespace it was created in, so it may be used from any
/// thread afterwards.
#[derive(Debug)]
pub struct Sender {
    fd: OwnedFd,
}

impl Sender {
    /// Opens the socket on `iface`; call from a thread inside the
    /// interface's namespace.
    pub fn new(iface: &str) -> Result<Self> {
        // Protocol 0: this socket receives nothing.
        let fd = bound_socket(iface, 0)?;
        Ok(Self { fd })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("send(AF_PACKET)");
        }
        Ok(())
    }

    /// Sends `frames` from a thread pinned to CPU `queue`, so that XPS
    /// (set up by [`crate::topology::Topology`]) puts them on tx queue
    /// `queue` and they arrive on rx queue `queue` of the other end.
    pub fn send_on_queue(&self, queue: u32, frames: &[Vec<u8>]) -> Result<()> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
                let rc = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(queue as usize, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context(format!("pin sender to CPU {queue}"));
                }
                frames.iter().try_for_each(|f| self.send(f))
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// A raw socket that captures every frame arriving on one interface.
#[derive(Debug)]
pub struct Receiver {
    fd: OwnedFd,
}

impl Receiver {
    /// Opens the capture on `iface`; call from a thread inside the
    /// interface's namespace. Only frames arriving after this call are seen.
    pub fn new(iface: &str) -> Result<Self> {
        let fd = bound_socket(iface, (libc::ETH_P_ALL as u16).to_be())?;
        // A burst must not overflow the capture: 8 MiB instead of the
        // default ~200 KiB (root may exceed rmem_max with ...FORCE).
        let size: libc::c_int = 8 << 20;
        // SAFETY: `size` is a valid int for the option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Self { fd })
    }

    /// Frames the kernel dropped because this capture's buffer was full,
    /// since the last call (PACKET_STATISTICS).
    pub fn drops(&self) -> u32 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a writable tpacket_stats of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            st.tp_drops
        } else {
            0
        }
    }

    /// Collects incoming frames (outgoing ones are skipped) for which
    /// `keep` is true, until `want` were kept or `timeout` passed.
    pub fn recv_matching(
        &self,
        want: usize,
        timeout: std::time::Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>> {
        let end = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while out.len() < want {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 100) as i32) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut flen,
                )
            };
            if n < 0 {
                continue;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if keep(f) {
                out.push(f.to_vec());
            }
        }
        Ok(out)
    }
}
