//! The wire side of the soak, in the topology's peer namespace: a steady
//! stream of frames to the guest ([`ToGuest`]), a capture that counts what
//! the guest sends ([`FromGuest`]), and a pinger that counts host traffic
//! ([`Pinger`]). Each runs on a thread of its own that enters the peer
//! namespace first, stops when its guard is dropped (or [`Pinger::finish`]
//! is called), and is bounded in rate and time.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xdpath_tests::frames::checksum;
use xdpath_tests::packet::{Receiver, Sender};
use xdpath_tests::topology::enter_netns;

/// Frames per burst at most, so a stalled sender does not flood when it
/// catches up.
const MAX_BURST: u64 = 64;

/// Spawns a thread that enters netns `ns` and runs `f`.
fn in_ns_thread<T: Send + 'static>(
    name: &str,
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            enter_netns(&ns)?;
            f()
        })
        .context("spawning a wire thread")
}

fn join<T>(h: Option<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    match h {
        Some(h) => match h.join() {
            Ok(r) => r,
            Err(_) => bail!("the {what} thread panicked"),
        },
        None => bail!("the {what} thread was already joined"),
    }
}

/// Pins the calling thread to `cpu` (XPS then picks that CPU's tx queue).
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A steady stream of frames from the peer to the guest (AF_PACKET on the
/// peer's veth end), spread over the tx queues by moving between CPUs.
/// With several targets (guests), frame `seq` goes to target `seq %
/// targets`, and what was sent is counted per target.
#[derive(Debug)]
pub struct ToGuest {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sent_to: Arc<Vec<AtomicU64>>,
    errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// The wire traffic of a part with several guests, from the peer end
/// `iface` in namespace `ns`: frames to each of `guests` in turn (`pps` in
/// all, counted per guest) and the capture of what they send.
pub fn to_and_from(
    ns: &str,
    iface: &str,
    pps: u32,
    guests: &[crate::SoakGuest],
) -> Result<(ToGuest, FromGuest)> {
    let frames = guests.to_vec();
    let n = frames.len().max(1);
    let to_guest = ToGuest::start(ns, iface, pps, n, move |seq| {
        frames[(seq % n as u64) as usize].to_frame(seq)
    })?;
    let macs: Vec<[u8; 6]> = guests.iter().map(|g| g.mac).collect();
    let from_guest = FromGuest::start(ns, iface, &macs)?;
    Ok((to_guest, from_guest))
}

impl ToGuest {
    /// Starts sending `frame(seq)` at `pps` frames per second from `iface`
    /// in namespace `ns`; `seq % targets` is the frame's target.
    pub fn start(
        ns: &str,
        iface: &str,
        pps: u32,
        targets: usize,
        frame: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let targets = targets.max(1);
        let sent_to = Arc::new((0..targets).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let errors = Arc::new(AtomicU64::new(0));
        let (s, n, e, per) = (stop.clone(), sent.clone(), errors.clone(), sent_to.clone());
        let iface = iface.to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let thread = in_ns_thread("to-guest", ns, move || {
            let tx = Sender::new(&iface)?;
            let start = Instant::now();
            let mut seq = 0u64;
            let mut burst = 0usize;
            while !s.load(Ordering::Relaxed) {
                if burst.is_multiple_of(16) {
                    pin((burst / 16) % cpus);
                }
                burst += 1;
                let due = (start.elapsed().as_secs_f64() * f64::from(pps)) as u64;
                let k = due.saturating_sub(seq).min(MAX_BURST);
                for _ in 0..k {
                    if tx.send(&frame(seq)).is_ok() {
                        n.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = per.get((seq % targets as u64) as usize) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                    seq += 1;
                }
                if due > seq + MAX_BURST {
                    // Fell behind (CPU starved): skip rather than burst.
                    seq = due;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })?;
        Ok(Self {
            stop,
            sent,
            sent_to,
            errors,
            thread: Some(thread),
        })
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Frames sent so far to target `i`.
    pub fn sent_to(&self, i: usize) -> u64 {
        self.sent_to.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Sends that failed (the kernel refused; ENOBUFS under load).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops the stream and reports the thread's end.
    pub fn finish(mut self) -> Result<()> {
        self.halt()
    }

    /// Stops the stream and reports the thread's end, keeping the counts
    /// readable.
    pub fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.thread.take(), "to-guest")
    }
}

impl Drop for ToGuest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the capture saw.
#[derive(Debug, Default)]
struct Seen {
    total: u64,
    /// Frames per source MAC.
    by_mac: HashMap<[u8; 6], u64>,
    /// (source MAC, UDP source port) -> (first seen, count); the soak
    /// guest puts its session number in the port.
    by_sport: HashMap<([u8; 6], u16), (Instant, u64)>,
}

/// Ports tracked at most (the guest's session ports are 20000..30000).
const MAX_SPORTS: usize = 16384;

/// Counts the frames the guests send (source MAC one of the guests') as
/// they arrive on the peer's veth end, per guest, and when each guest's
/// UDP source port was first seen.
#[derive(Debug)]
pub struct FromGuest {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// The UDP source port of an IPv4/UDP Ethernet frame.
fn udp_sport(f: &[u8]) -> Option<u16> {
    if f.get(12..14)? != [0x08, 0x00] || *f.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(f.get(14)? & 0x0f) * 4;
    let at = 14 + ihl;
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

impl FromGuest {
    /// Starts counting frames from `guest_macs` arriving on `iface` in
    /// `ns`. Returns once the capture is open.
    pub fn start(ns: &str, iface: &str, guest_macs: &[[u8; 6]]) -> Result<Self> {
        let macs = guest_macs.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, n) = (stop.clone(), seen.clone());
        let dev = iface.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_ns_thread("from-guest", ns, move || {
            let rx = Receiver::new(&dev);
            let _ = ready_tx.send(rx.is_ok());
            let rx = rx?;
            while !s.load(Ordering::Relaxed) {
                rx.recv_matching(usize::MAX, Duration::from_millis(50), |f| {
                    let src = f.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok());
                    if let Some(mac) = src.filter(|m| macs.contains(m)) {
                        let at = Instant::now();
                        let mut seen = n.lock().unwrap_or_else(PoisonError::into_inner);
                        seen.total += 1;
                        *seen.by_mac.entry(mac).or_insert(0) += 1;
                        if let Some(p) = udp_sport(f) {
                            let key = (mac, p);
                            if seen.by_sport.len() < MAX_SPORTS || seen.by_sport.contains_key(&key)
                            {
                                seen.by_sport.entry(key).or_insert((at, 0)).1 += 1;
                            }
                        }
                    }
                    false
                })?;
            }
            Ok(())
        })?;
        let ok = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or(false);
        let mut me = Self {
            stop,
            seen,
            thread: Some(thread),
        };
        if !ok {
            me.stop.store(true, Ordering::Relaxed);
            return join(me.thread.take(), "from-guest")
                .and_then(|()| bail!("the capture on {iface} did not open"));
        }
        Ok(me)
    }

    /// Frames from the guest so far.
    pub fn total(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Frames from guest `mac` so far.
    pub fn total_from(&self, mac: [u8; 6]) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_mac
            .get(&mac)
            .copied()
            .unwrap_or(0)
    }

    /// When a frame from guest `mac` with UDP source port `sport` was
    /// first seen.
    pub fn first_with_sport(&self, mac: [u8; 6], sport: u16) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_sport
            .get(&(mac, sport))
            .map(|&(t, _)| t)
    }
}

impl Drop for FromGuest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a pinger counted.
#[derive(Debug, Clone, Default)]
pub struct PingCount {
    /// Echo requests sent.
    pub sent: u64,
    /// Distinct echo replies received.
    pub received: u64,
    /// Sequence numbers without a reply, with their send time since the
    /// start (the first 50).
    pub lost: Vec<(u64, Duration)>,
}

/// ICMP echo requests from the peer namespace to one address, every
/// `interval`, counted with their replies (a raw ICMP socket, so no
/// `ping` binary and exact counts).
#[derive(Debug)]
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<PingCount>>>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

/// An ICMP echo request with identifier `id` and our 64-bit sequence
/// number in its data.
fn echo_request(id: u16, seq: u64) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(seq as u16).to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"xdpath-soak-ping");
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The sequence number of an echo reply with identifier `id` (`pkt` is an
/// IPv4 packet as a raw socket reads it).
fn echo_reply_seq(pkt: &[u8], id: u16) -> Option<u64> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..)?;
    if *icmp.first()? != 0 || icmp.get(4..6)? != id.to_be_bytes() {
        return None;
    }
    let b: [u8; 8] = icmp.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

impl Pinger {
    /// Starts pinging `dst` from namespace `ns` every `interval`.
    pub fn start(ns: &str, dst: [u8; 4], interval: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (s, sn, rc) = (stop.clone(), sent.clone(), received.clone());
        let id = (std::process::id() & 0xffff) as u16;
        let thread = in_ns_thread("pinger", ns, move || {
            // SAFETY: plain socket(2) call, checked below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMP,
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("socket(SOCK_RAW, ICMP)");
            }
            // SAFETY: raw is a fresh fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_in is plain data; zeroed is valid.
            let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_addr.s_addr = u32::from_ne_bytes(dst);
            let start = Instant::now();
            let mut sent_at: Vec<Duration> = Vec::new();
            let mut got: Vec<bool> = Vec::new();
            let mut next = start;
            let mut grace_end: Option<Instant> = None;
            let mut buf = [0u8; 2048];
            loop {
                let now = Instant::now();
                if grace_end.is_none() && s.load(Ordering::Relaxed) {
                    grace_end = Some(now + Duration::from_secs(2));
                }
                if let Some(g) = grace_end {
                    if now >= g || got.iter().all(|&r| r) {
                        break;
                    }
                } else if now >= next {
                    let seq = sent_at.len() as u64;
                    let m = echo_request(id, seq);
                    // SAFETY: m and to are valid for the lengths given.
                    let n = unsafe {
                        libc::sendto(
                            fd.as_raw_fd(),
                            m.as_ptr().cast(),
                            m.len(),
                            0,
                            (&to as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                    if n < 0 {
                        return Err(std::io::Error::last_os_error()).context("sending a ping");
                    }
                    sent_at.push(now - start);
                    got.push(false);
                    sn.fetch_add(1, Ordering::Relaxed);
                    next += interval;
                    if next < now {
                        next = now + interval;
                    }
                }
                let wait = grace_end
                    .unwrap_or(next)
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20));
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
                loop {
                    // SAFETY: buf is valid for its length.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    let Ok(n) = usize::try_from(n) else { break };
                    if let Some(seq) = echo_reply_seq(&buf[..n.min(buf.len())], id) {
                        if let Some(slot) = usize::try_from(seq).ok().and_then(|i| got.get_mut(i)) {
                            if !*slot {
                                *slot = true;
                                rc.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            let received = got.iter().filter(|&&r| r).count() as u64;
            let lost = got
                .iter()
                .enumerate()
                .filter(|(_, &r)| !r)
                .take(50)
                .map(|(i, _)| (i as u64, sent_at[i]))
                .collect();
            Ok(PingCount {
                sent: sent_at.len() as u64,
                received,
                lost,
            })
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            sent,
            received,
        })
    }

    /// Requests sent and replies received so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// Stops sending, waits (up to 2 s) for the outstanding replies and
    /// returns the count.
    pub fn finish(mut self) -> Result<PingCount> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.thread.take(), "pinger")
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum_and_replies_parse() {
        let m = echo_request(0x1234, 70000);
        assert_eq!(checksum(&m), 0, "a correct checksum sums to zero");
        // The reply the kernel would send: type 0, same id and data, after
        // a 20-byte IPv4 header.
        let mut reply = vec![0x45; 1];
        reply.extend_from_slice(&[0; 19]);
        let mut icmp = m.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert_eq!(echo_reply_seq(&reply, 0x1234), Some(70000));
        assert_eq!(echo_reply_seq(&reply, 0x1235), None, "another id");
        assert_eq!(echo_reply_seq(&reply[..30], 0x1234), None, "truncated");
        let mut request = reply.clone();
        request[20] = 8;
        assert_eq!(echo_reply_seq(&request, 0x1234), None, "not a reply");
    }

    #[test]
    fn udp_source_port_of_a_frame() {
        use xdpath_tests::frames::*;
        let f = eth(
            [1; 6],
            [2; 6],
            ETH_P_IP,
            &ipv4([1, 1, 1, 1], [2, 2, 2, 2], 17, &udp(20003, 9, &[0; 8])),
        );
        assert_eq!(udp_sport(&f), Some(20003));
        assert_eq!(udp_sport(&f[..35]), None);
        let t = eth(
            [1; 6],
            [2; 6],
            ETH_P_IP,
            &ipv4([1, 1, 1, 1], [2, 2, 2, 2], 6, &tcp(20003, 9, 5, &[])),
        );
        assert_eq!(udp_sport(&t), None);
    }
}
