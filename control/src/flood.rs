//! Broadcast and multicast from the wire to every guest: the slow path.
//!
//! The XDP program cannot clone a frame, so broadcast and multicast from
//! the wire (ARP requests, IPv6 ND and RA, DHCP) that no table steers to
//! one guest go to the host stack (`XDP_PASS`). This module gives every
//! guest a copy too, as on a real L2 segment: one thread reads them from
//! an AF_PACKET socket on the interface (the kernel clones for it) and
//! offers each to every connected guest through the guest switch
//! (`xdpath_dataplane::switch`), into the inboxes its workers drain.
//! ARP and ND for a guest's own address are steered straight to that guest
//! by the classifier (`NEIGH`) and never come this way.
//!
//! Bounds: a socket filter lets only frames whose destination MAC is a
//! group address reach the socket; at most `rate` frames per second are
//! copied (a token bucket with a burst of a tenth of a second), the rest
//! counted in [`FloodStats::dropped_rate`]; frames larger than the buffer
//! are counted and skipped. The thread blocks at most [`POLL`] in each read
//! so a stop is seen at once.
//!
//! Hand-written on libc: no maintained crate offers an AF_PACKET socket
//! with a classic BPF filter and `sll_pkttype`; this is one socket, one
//! filter and one read loop.
//!
//! Ownership: [`WireFlood`] owns the socket and the thread; the counters
//! are atomics written by that thread only and read by the API.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xdpath_dataplane::switch::{deliver, GuestSwitch};

/// Longest a read blocks before the thread looks for a stop.
pub const POLL: Duration = Duration::from_millis(200);
/// Default bound on flooded frames per second.
pub const DEFAULT_RATE: u32 = 1000;
/// Largest frame copied (Ethernet header included).
const MAX_FRAME: usize = 2048;

/// Counters of the slow path.
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Broadcast and multicast frames read from the wire.
    pub frames: AtomicU64,
    /// Copies given to guests.
    pub copies: AtomicU64,
    /// Frames not copied because the rate bound was reached.
    pub dropped_rate: AtomicU64,
    /// Copies dropped: the guest is not connected or its inbox is full.
    pub dropped_guest: AtomicU64,
    /// Frames larger than the copy buffer, skipped.
    pub dropped_oversize: AtomicU64,
}

/// The slow path's socket and thread (see the module documentation).
#[derive(Debug)]
pub struct WireFlood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<FloodStats>,
}

impl WireFlood {
    /// Opens the socket on `iface` and starts the thread: from now on the
    /// wire's group frames reach the guests in `switch`, at most `rate`
    /// per second.
    pub fn start(iface: &str, switch: Arc<GuestSwitch>, rate: u32) -> io::Result<Self> {
        let sock = open(iface)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FloodStats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("wire-flood".into())
            .spawn(move || run(&sock, &switch, rate, &s, &st))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<FloodStats> {
        self.stats.clone()
    }

    /// Stops the thread (within [`POLL`]) and closes the socket.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WireFlood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A token bucket: `rate` per second, a burst of a tenth of a second.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 10.0).max(16.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn run(sock: &OwnedFd, switch: &GuestSwitch, rate: u32, stop: &AtomicBool, st: &FloodStats) {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut bucket = Bucket::new(rate);
    while !stop.load(Ordering::Acquire) {
        let (len, pkttype) = match recv(sock, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(
                    "the wire's broadcast socket failed: {e}; guests get no more broadcasts"
                );
                return;
            }
        };
        // Ours on the way out (a guest's own broadcast) and frames to the
        // host's unicast address are not the segment's group traffic.
        if !matches!(pkttype, PACKET_BROADCAST | PACKET_MULTICAST) {
            continue;
        }
        st.frames.fetch_add(1, Ordering::Relaxed);
        if len > buf.len() {
            st.dropped_oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !bucket.take(Instant::now()) {
            st.dropped_rate.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let frame = &buf[..len];
        let table = switch.load();
        for port in table.ports() {
            match deliver(port, 0, frame) {
                Some(h) => {
                    h.wake();
                    st.copies.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    st.dropped_guest.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

const PACKET_BROADCAST: u8 = 1;
const PACKET_MULTICAST: u8 = 2;

/// An AF_PACKET socket on `iface` that reads only frames to a group MAC
/// (classic BPF: the low bit of the first byte), with a read timeout.
fn open(iface: &str) -> io::Result<OwnedFd> {
    let ifindex = crate::classifier::ifindex(iface).map_err(io::Error::other)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Group destinations only: ldb [0]; jset #1 -> accept; reject.
    let mut code = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: 1,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0xffff,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn setsockopt<T>(sock: &OwnedFd, level: i32, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One frame: its full length (may exceed `buf`, MSG_TRUNC) and packet
/// type; `None` on the read timeout or an interrupted read.
fn recv(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, u8)>> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `sll` are valid for the sizes passed.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&raw mut sll).cast(),
            &mut sl,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some((n as usize, sll.sll_pkttype)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_bounds_the_rate_and_refills() {
        let mut b = Bucket::new(100);
        let t0 = Instant::now();
        let burst = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 16, "a burst of max(rate/10, 16)");
        let t1 = t0 + Duration::from_millis(100);
        let more = (0..1000).filter(|_| b.take(t1)).count();
        assert_eq!(more, 10, "100/s for 0.1 s");
    }
}
