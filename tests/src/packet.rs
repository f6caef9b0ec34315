//! AF_PACKET sender bound to one interface of a namespace.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
        let c = std::ffi::CString::new(iface)?;
        // SAFETY: c is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("if_nametoindex({iface})"));
        }
        // Protocol 0: this socket receives nothing.
        // SAFETY: plain socket(2) call, checked below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: raw is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
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
