//! End to end with real QEMU guests: a Debian kernel with its own virtio-net
//! driver (the image `cargo xtask guest-image` builds) on xdpath's
//! vhost-user backend, the XDP classifier and AF_XDP on the host end of a
//! veth pair, and the peer namespace's own kernel stack as the far end:
//!
//! ```text
//!  QEMU guest 10.77.0.10 (TCG) --vhost-user--> xdpath workers
//!    <--AF_XDP--> [host_if] <--veth--> [peer_if 10.77.0.2] peer's stack
//! ```
//!
//! The Bridge's classifier steers the guest's MAC; ARP requests for the
//! guest's address are broadcast, so each test adds a NEIGH entry for
//! 10.77.0.10 as well.
//!
//! Checksums: frames sent by the peer's own stack over veth carry partial
//! checksums (CHECKSUM_PARTIAL, the veth "offload"); the dataplane forwards
//! frames verbatim, so the guest would see bad TCP/UDP checksums and drop
//! them. A real wire never carries partial checksums, so the tests turn tx
//! checksum offload off on the peer veth (`ethtool -K <peer_if> tx off`)
//! and the peer's stack computes full checksums (which also turns TSO off:
//! the peer sends MTU-sized frames). Nothing else is relaxed: the guest's
//! and the peer's kernels verify every checksum, and payloads are compared
//! with md5 on both ends (TCP) or byte for byte (UDP).
//!
//! Every boot costs seconds of TCG, so there are two tests, each with one
//! guest: one queue pair (ping, 20 MiB TCP each way, UDP each way) and two
//! queue pairs (the one-vCPU guest starts with one and switches the second
//! on itself; before that, frames arriving on the second NIC queue are
//! handed off to the first worker, after it both workers carry traffic).
//!
//! Every test needs root and is marked ignored. Without the image
//! they fail, telling to run `cargo xtask guest-image`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xdpath_common::{Action, AddrKey, RuleValue, FAMILY_V4};
use xdpath_dataplane::CounterSnapshot;
use xdpath_tests::bridge::{Bridge, GUEST_MAC};
use xdpath_tests::qemu::{Guest, GuestConfig};
use xdpath_tests::require_root;
use xdpath_tests::topology::{run, PEER_IP};

/// The QEMU guest's address (the Bridge's raw-frame tests use .20).
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const PEER: Ipv4Addr = Ipv4Addr::new(PEER_IP[0], PEER_IP[1], PEER_IP[2], PEER_IP[3]);
const MIB: usize = 1 << 20;
/// Bound for one transfer or exchange under TCG on two shared CPUs.
const XFER: Duration = Duration::from_secs(120);
/// Bound for short guest commands.
const SHORT: Duration = Duration::from_secs(20);

/// Prints a measurement past libtest's capture.
fn report(what: &str, d: Duration) {
    let _ = writeln!(std::io::stderr(), "vm: {what}: {:.2} s", d.as_secs_f64());
}

/// The address as the classifier's NEIGH key.
fn neigh_key(ip: Ipv4Addr) -> AddrKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.octets());
    AddrKey {
        gen: 0,
        family: FAMILY_V4,
        _pad: [0; 2],
        addr,
    }
}

/// A bridge ready for a QEMU guest at [`VM_IP`]: ARP for it steered to the
/// guest, the peer's tx checksum offload off (see the module doc).
fn bridge(queue_pairs: u16) -> Bridge {
    let mut b = Bridge::new(queue_pairs);
    b.classifier()
        .insert_neigh(
            &neigh_key(VM_IP),
            &RuleValue {
                action: Action::Guest as u32,
                port: 1,
                rule_id: 2,
                _pad: 0,
            },
        )
        .expect("NEIGH rule for the guest's address");
    let peer_if = b.peer_if().to_owned();
    b.in_peer(|| run("ethtool", &["-K", &peer_if, "tx", "off"]))
        .expect("turn off tx checksum offload on the peer veth");
    b
}

fn boot(b: &Bridge, queues: u16) -> Guest {
    let mut cfg = GuestConfig::new(&b.sock, GUEST_MAC, format!("{VM_IP}/24"));
    cfg.queues = queues;
    let g = Guest::boot(&cfg).unwrap_or_else(|e| panic!("guest boot: {e:#}"));
    report(
        &format!("boot to ready ({queues} queue pairs offered)"),
        g.boot_time,
    );
    g
}

/// The peer namespace as a file descriptor, so any number of threads can
/// enter it (the Bridge's `in_peer` runs one closure at a time).
struct Peer {
    ns: File,
}

impl Peer {
    fn of(b: &Bridge) -> Self {
        let ns = b
            .in_peer(|| File::open("/proc/thread-self/ns/net"))
            .expect("open the peer namespace");
        Self { ns }
    }

    /// Runs `f` on a new thread inside the peer namespace, pinned to `cpu`
    /// if given (veth: the peer's tx queue, and so the host end's rx queue
    /// and the xdpath worker, follows the sending CPU through XPS).
    fn spawn<T: Send + 'static>(
        &self,
        cpu: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = self.ns.try_clone().expect("dup the namespace fd");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid network namespace fd; it changes only
            // this thread, which exists for this closure alone.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            if let Some(cpu) = cpu {
                pin(cpu);
            }
            f()
        })
    }

    /// Runs `f` inside the peer namespace and returns its result.
    fn call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(None, f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// `ping -c count` from the peer's stack to the guest; must get every reply.
fn peer_pings_guest(peer: &Peer, count: u32) {
    let out = peer.call(move || {
        Command::new("ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &VM_IP.to_string(),
            ])
            .output()
            .expect("run ping")
    });
    assert!(
        out.status.success(),
        "peer pings the guest: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize, "CPU {cpu}");
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of
    // the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        r,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// md5 through coreutils' `md5sum`, which the guest's busybox matches.
struct Md5(std::process::Child);

impl Md5 {
    fn new() -> Self {
        Self(
            Command::new("md5sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start md5sum"),
        )
    }

    fn update(&mut self, data: &[u8]) {
        self.0
            .stdin
            .as_mut()
            .expect("md5sum stdin")
            .write_all(data)
            .expect("feed md5sum");
    }

    fn finish(mut self) -> String {
        drop(self.0.stdin.take());
        let out = self.0.wait_with_output().expect("md5sum result");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

fn md5(data: &[u8]) -> String {
    let mut m = Md5::new();
    m.update(data);
    m.finish()
}

/// `len` pseudo-random bytes (xorshift64, seeded).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The md5 the guest's `md5sum FILE` printed for `file`.
fn guest_md5(out: &str, file: &str) -> String {
    out.lines()
        .find(|l| l.trim_end().ends_with(file))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no md5sum line for {file} in:\n{out}"))
        .to_owned()
}

/// A TCP listener on the peer: accepts one connection (within `XFER`),
/// reads to EOF and returns the byte count and md5.
fn tcp_sink(peer: &Peer, port: u16) -> JoinHandle<(usize, String)> {
    let l = peer
        .call(move || TcpListener::bind((PEER, port)))
        .expect("peer TCP listener");
    std::thread::spawn(move || {
        l.set_nonblocking(true).expect("nonblocking listener");
        let end = Instant::now() + XFER;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < end, "nobody connected to port {port}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept on port {port}: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking stream");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut m = Md5::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    m.update(&buf[..n]);
                }
                Err(e) => panic!("port {port}: read after {total} bytes: {e}"),
            }
        }
        (total, m.finish())
    })
}

/// Connects from the peer to the guest's `port` (retrying while the guest's
/// listener is not up yet), sends `data`, half-closes and waits for the
/// guest to close.
fn tcp_source(peer: &Peer, cpu: Option<usize>, port: u16, data: Vec<u8>) -> JoinHandle<()> {
    peer.spawn(cpu, move || {
        let to = SocketAddr::from((VM_IP, port));
        let end = Instant::now() + XFER;
        let mut s = loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < end, "connect to {to}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        s.write_all(&data)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    })
}

/// The payload `xg` uses for datagram `seq`: seq big endian, then byte i is
/// (seq + i) & 0xff.
fn datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..size).map(|i| (seq as usize + i) as u8).collect();
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// A UDP socket on the peer: receives until `count` datagrams or 3 s
/// without one; returns (received, bad payloads).
fn udp_sink(peer: &Peer, port: u16, count: usize) -> JoinHandle<(usize, usize)> {
    let s = peer
        .call(move || UdpSocket::bind((PEER, port)))
        .expect("peer UDP socket");
    // Room for bursts while this thread waits for a CPU (the machine has
    // two, shared with QEMU and the workers); root may exceed rmem_max.
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let (mut got, mut bad) = (0, 0);
        while got < count {
            let idle = if got == 0 {
                XFER
            } else {
                Duration::from_secs(3)
            };
            s.set_read_timeout(Some(idle)).expect("read timeout");
            let Ok(n) = s.recv(&mut buf) else { break };
            got += 1;
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if n < 4 || buf[..n] != datagram(seq, n)[..] {
                bad += 1;
            }
        }
        (got, bad)
    })
}

/// Sends `count` datagrams of `size` bytes from the peer (pinned to `cpu`)
/// to the guest's `port`, in bursts of 16 with 1 ms between: a TCG guest
/// empties its RX ring far slower than the peer fills it.
fn udp_source(
    peer: &Peer,
    cpu: usize,
    port: u16,
    count: u32,
    size: usize,
    first_seq: u32,
) -> JoinHandle<()> {
    peer.spawn(Some(cpu), move || {
        let s = UdpSocket::bind((PEER, 0)).expect("peer UDP source");
        s.connect((VM_IP, port)).expect("connect UDP");
        for i in 0..count {
            s.send(&datagram(first_seq + i, size))
                .expect("send datagram");
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

/// Starts `xg udp-recv` in the guest in the background (it returns once
/// bound), result in `file`.
fn guest_udp_recv(g: &mut Guest, port: u16, count: u32, file: &str) {
    g.run_ok(
        &format!("rm -f {file}; xg udp-recv -b {port} {count} 3000 > {file}"),
        SHORT,
    )
    .expect("start the guest's UDP receiver");
}

/// Waits for the background receiver's result: (received, bad).
fn guest_udp_result(g: &mut Guest, file: &str) -> (u64, u64) {
    let out = g
        .run_ok(
            &format!("while ! grep -q received {file}; do usleep 100000; done; cat {file}"),
            Duration::from_secs(60),
        )
        .expect("the guest's UDP receiver finishes");
    let line = out
        .lines()
        .find(|l| l.starts_with("received "))
        .unwrap_or_else(|| panic!("no result in {out:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |k: &str| -> u64 {
        f.iter()
            .position(|w| *w == k)
            .and_then(|i| f.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    (num("received"), num("bad"))
}

/// The peer's UDP counters (`Udp:` lines of /proc/net/snmp), for messages.
fn peer_udp_stats(peer: &Peer) -> String {
    peer.call(|| {
        std::fs::read_to_string("/proc/net/snmp")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Udp:"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Per-queue counters of the guest's driver (`ethtool -S` through `xg`).
fn guest_queue_stats(g: &mut Guest, which: &str) -> Vec<(String, u64)> {
    g.run_ok(&format!("xg stats eth0 {which}"), SHORT)
        .expect("guest ethtool stats")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
}

/// `after` with rx/tx frames, handoffs and no-buffer drops counted from
/// `before` (the other fields stay absolute).
fn delta(after: &CounterSnapshot, before: &CounterSnapshot) -> CounterSnapshot {
    let mut d = *after;
    d.rx_frames -= before.rx_frames;
    d.tx_frames -= before.tx_frames;
    d.rx_handed_off -= before.rx_handed_off;
    d.rx_drop_no_guest_buffer -= before.rx_drop_no_guest_buffer;
    d
}

/// Guest -> peer: `mib` MiB of random data over TCP, md5 on both ends.
fn tcp_guest_to_peer(g: &mut Guest, peer: &Peer, port: u16, mib: usize) {
    let sink = tcp_sink(peer, port);
    let t = Instant::now();
    let out = g
        .run_ok(
            &format!(
                "dd if=/dev/urandom of=/tmp/tx bs=1M count={mib} 2>/dev/null && md5sum /tmp/tx \
                 && nc -w 10 {PEER} {port} < /tmp/tx; s=$?; rm -f /tmp/tx; exit $s"
            ),
            XFER,
        )
        .expect("guest sends over TCP");
    let (bytes, peer_md5) = sink.join().expect("peer TCP sink");
    report(
        &format!("TCP guest -> peer, {mib} MiB (incl. generating it in the guest)"),
        t.elapsed(),
    );
    assert_eq!(bytes, mib * MIB, "bytes the peer received");
    assert_eq!(peer_md5, guest_md5(&out, "/tmp/tx"), "md5 peer vs guest");
}

/// Peer -> guest: `mib` MiB of random data over TCP, md5 on both ends.
fn tcp_peer_to_guest(g: &mut Guest, peer: &Peer, port: u16, mib: usize) {
    let data = random_bytes(mib * MIB, 0x5eed ^ u64::from(port));
    let want = md5(&data);
    let t = Instant::now();
    let source = tcp_source(peer, None, port, data);
    let out = g
        .run_ok(
            &format!(
                "nc -l -p {port} > /tmp/rx && md5sum /tmp/rx && wc -c < /tmp/rx; s=$?; \
                 rm -f /tmp/rx; exit $s"
            ),
            XFER,
        )
        .expect("guest receives over TCP");
    source.join().expect("peer TCP source");
    report(&format!("TCP peer -> guest, {mib} MiB"), t.elapsed());
    assert_eq!(guest_md5(&out, "/tmp/rx"), want, "md5 guest vs peer");
    assert!(
        out.lines().any(|l| l.trim() == (mib * MIB).to_string()),
        "bytes the guest received: {out}"
    );
}

/// One queue pair: ping both ways, 20 MiB of TCP each way with md5 on both
/// ends, UDP each way with every payload checked.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a QEMU guest"]
fn vm_one_queue_pair_ping_tcp_udp() {
    require_root();
    let start = Instant::now();
    let b = bridge(1);
    let peer = Peer::of(&b);
    let mut g = boot(&b, 1);
    assert!(
        g.ready_line.contains("combined 1 max 1"),
        "{}",
        g.ready_line
    );

    let t = Instant::now();
    let out = g
        .run_ok(&format!("ping -c 3 -i 0.2 -W 2 {PEER}"), SHORT)
        .expect("guest pings the peer");
    assert!(out.contains("3 packets received"), "{out}");
    peer_pings_guest(&peer, 3);
    report("ping both ways", t.elapsed());

    tcp_guest_to_peer(&mut g, &peer, 5001, 20);
    tcp_peer_to_guest(&mut g, &peer, 5002, 20);

    // UDP, guest -> peer: 2000 datagrams of 1000 bytes.
    let t = Instant::now();
    let sink = udp_sink(&peer, 6001, 2000);
    let out = g
        .run_ok(&format!("xg udp-send {PEER} 6001 2000 1000 4"), XFER)
        .expect("guest sends UDP");
    assert!(out.contains("sent 2000"), "{out}");
    assert_eq!(
        sink.join().expect("peer UDP sink"),
        (2000, 0),
        "peer: (received, bad); worker: {:?}; peer {}",
        b.counters(0),
        peer_udp_stats(&peer)
    );
    // UDP, peer -> guest.
    guest_udp_recv(&mut g, 6002, 2000, "/tmp/udp");
    udp_source(&peer, 0, 6002, 2000, 1000, 0)
        .join()
        .expect("peer UDP source");
    let (got, bad) = guest_udp_result(&mut g, "/tmp/udp");
    report("UDP 2000 x 1000 B each way", t.elapsed());
    let c = b.counters(0);
    assert_eq!(bad, 0, "corrupt datagrams in the guest");
    if got != 2000 {
        let snmp = g.run("grep Udp: /proc/net/snmp", SHORT);
        panic!("the guest received {got} of 2000 datagrams; worker: {c:?}; guest: {snmp:?}");
    }
    assert_eq!(c.bad_descriptor, 0, "{c:?}");
    assert!(c.rx_frames > 20 * MIB as u64 / 1514, "{c:?}");
    assert!(c.tx_frames > 20 * MIB as u64 / 1514, "{c:?}");

    // The guest's own view: no checksum errors.
    let snmp = g
        .run_ok("grep -E '^(Tcp|Udp):' /proc/net/snmp", SHORT)
        .expect("snmp");
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    if let [names, values] = udp[..] {
        let i = names
            .split_whitespace()
            .position(|n| n == "InCsumErrors")
            .expect("InCsumErrors column");
        assert_eq!(values.split_whitespace().nth(i), Some("0"), "{snmp}");
    }
    drop(g);
    report("vm_one_queue_pair_ping_tcp_udp total", start.elapsed());
}

/// Two queue pairs. The one-vCPU guest starts with one: frames arriving on
/// the second NIC queue are handed off to the first worker. Then the guest
/// switches the second pair on (ETHTOOL_SCHANNELS through `xg`), and both
/// workers carry traffic both ways: UDP from peer CPUs 0 and 1 (one rx
/// queue each), UDP in 16 flows from the guest (spread over its tx queues
/// by flow hash), and TCP in several flows with md5 on both ends.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, a QEMU guest"]
fn vm_two_queue_pairs() {
    require_root();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        // The peer reaches NIC queue 1 only from CPU 1 (XPS).
        let _ = writeln!(
            std::io::stderr(),
            "skipping vm_two_queue_pairs: needs 2 CPUs"
        );
        return;
    }
    let start = Instant::now();
    let b = bridge(2);
    let peer = Peer::of(&b);
    let mut g = boot(&b, 2);
    assert!(
        g.ready_line.contains("combined 1 max 2"),
        "a one-vCPU guest starts with one queue pair: {}",
        g.ready_line
    );

    // Resolve the guest's address first: datagrams that wait for ARP are
    // sent later from softirq context on whatever CPU gets the reply, and
    // a UDP socket keeps the tx queue of its first frame.
    peer_pings_guest(&peer, 1);

    // Before: NIC queue 1 -> pair 1 (not enabled) -> handed to pair 0.
    let (b0, b1) = (b.counters(0), b.counters(1));
    guest_udp_recv(&mut g, 6101, 200, "/tmp/u1");
    udp_source(&peer, 1, 6101, 200, 500, 0)
        .join()
        .expect("peer UDP source on CPU 1");
    assert_eq!(guest_udp_result(&mut g, "/tmp/u1"), (200, 0));
    let (d0, d1) = (delta(&b.counters(0), &b0), delta(&b.counters(1), &b1));
    assert!(d1.rx_handed_off >= 200, "pair 1 hands off: {d1:?}");
    assert_eq!(d1.rx_frames, 0, "pair 1 delivers nothing itself: {d1:?}");
    assert!(d0.rx_frames >= 200, "pair 0 delivers: {d0:?}");

    let t = Instant::now();
    let out = g
        .run_ok("xg channels eth0 2", SHORT)
        .expect("ETHTOOL_SCHANNELS");
    assert!(out.contains("combined 2 max 2"), "{out}");
    report("switch to 2 queue pairs", t.elapsed());

    // Peer -> guest from both CPUs: one NIC rx queue (and worker) each.
    let t = Instant::now();
    let (b0, b1) = (b.counters(0), b.counters(1));
    let rx_before = guest_queue_stats(&mut g, "rx_queue_");
    guest_udp_recv(&mut g, 6102, 1000, "/tmp/u2");
    let s0 = udp_source(&peer, 0, 6102, 500, 500, 0);
    let s1 = udp_source(&peer, 1, 6102, 500, 500, 500);
    s0.join().expect("peer UDP source on CPU 0");
    s1.join().expect("peer UDP source on CPU 1");
    assert_eq!(guest_udp_result(&mut g, "/tmp/u2"), (1000, 0));
    let (d0, d1) = (delta(&b.counters(0), &b0), delta(&b.counters(1), &b1));
    assert!(d0.rx_frames >= 500, "worker 0 delivers: {d0:?}");
    assert!(d1.rx_frames >= 500, "worker 1 delivers: {d1:?}");
    assert_eq!(d1.rx_handed_off, 0, "nothing handed off any more: {d1:?}");
    let rx_after = guest_queue_stats(&mut g, "rx_queue_");
    for q in ["rx_queue_0_packets", "rx_queue_1_packets"] {
        assert!(
            stat(&rx_after, q) >= stat(&rx_before, q) + 500,
            "guest {q}: {rx_before:?} -> {rx_after:?}"
        );
    }

    // Guest -> peer in 16 flows: both tx queues, both workers.
    let (b0, b1) = (b.counters(0), b.counters(1));
    let tx_before = guest_queue_stats(&mut g, "tx_queue_");
    let sink = udp_sink(&peer, 6103, 1600);
    g.run_ok(&format!("xg udp-send {PEER} 6103 1600 500 16"), XFER)
        .expect("guest sends 16 UDP flows");
    assert_eq!(sink.join().expect("peer UDP sink"), (1600, 0));
    let (d0, d1) = (delta(&b.counters(0), &b0), delta(&b.counters(1), &b1));
    assert!(d0.tx_frames > 0, "worker 0 transmits: {d0:?}");
    assert!(d1.tx_frames > 0, "worker 1 transmits: {d1:?}");
    assert!(d0.tx_frames + d1.tx_frames >= 1600, "{d0:?} {d1:?}");
    let tx_after = guest_queue_stats(&mut g, "tx_queue_");
    for q in ["tx_queue_0_packets", "tx_queue_1_packets"] {
        assert!(
            stat(&tx_after, q) > stat(&tx_before, q),
            "guest {q}: {tx_before:?} -> {tx_after:?}"
        );
    }
    report("UDP over both queue pairs", t.elapsed());

    // TCP, several flows each way at once, md5 on both ends.
    let t = Instant::now();
    let (b0, b1) = (b.counters(0), b.counters(1));
    let ports = [5101u16, 5102, 5103, 5104];
    let sinks: Vec<_> = ports.iter().map(|&p| tcp_sink(&peer, p)).collect();
    let out = g
        .run_ok(
            &format!(
                "dd if=/dev/urandom of=/tmp/t bs=1M count=4 2>/dev/null && md5sum /tmp/t && \
                 for p in {}; do nc -w 10 {PEER} $p < /tmp/t & done; wait; rm -f /tmp/t",
                ports.map(|p| p.to_string()).join(" ")
            ),
            XFER,
        )
        .expect("guest sends 4 TCP flows");
    let want = guest_md5(&out, "/tmp/t");
    for (p, s) in ports.iter().zip(sinks) {
        let (bytes, sum) = s.join().expect("peer TCP sink");
        assert_eq!(
            (bytes, sum.as_str()),
            (4 * MIB, want.as_str()),
            "flow to port {p}"
        );
    }
    let data: Vec<Vec<u8>> = (0..2).map(|i| random_bytes(4 * MIB, 77 + i)).collect();
    let sums: Vec<String> = data.iter().map(|d| md5(d)).collect();
    let sources: Vec<_> = data
        .into_iter()
        .enumerate()
        .map(|(cpu, d)| tcp_source(&peer, Some(cpu), 5105 + cpu as u16, d))
        .collect();
    let out = g
        .run_ok(
            "nc -l -p 5105 > /tmp/r0 & nc -l -p 5106 > /tmp/r1 & wait; md5sum /tmp/r0 /tmp/r1; \
             rm -f /tmp/r0 /tmp/r1",
            XFER,
        )
        .expect("guest receives 2 TCP flows");
    for s in sources {
        s.join().expect("peer TCP source");
    }
    assert_eq!(guest_md5(&out, "/tmp/r0"), sums[0], "flow from peer CPU 0");
    assert_eq!(guest_md5(&out, "/tmp/r1"), sums[1], "flow from peer CPU 1");
    let (d0, d1) = (delta(&b.counters(0), &b0), delta(&b.counters(1), &b1));
    // Which queue a TCP segment takes is not ours to pick (the peer's
    // stack also sends from softirq context on the CPU that got the ACK),
    // so only the sums are checked; the UDP checks above pin the queues.
    let full = (4 * MIB / 1514) as u64;
    assert!(
        d0.rx_frames + d1.rx_frames >= 2 * full && d0.tx_frames + d1.tx_frames >= 4 * full,
        "TCP frames through the workers: {d0:?} {d1:?}"
    );
    report(
        &format!(
            "TCP 4 flows out + 2 flows in, 4 MiB each (frames out {} + {}, in {} + {})",
            d0.tx_frames, d1.tx_frames, d0.rx_frames, d1.rx_frames
        ),
        t.elapsed(),
    );
    for q in 0..2 {
        assert_eq!(b.counters(q).bad_descriptor, 0, "{:?}", b.counters(q));
    }
    drop(g);
    report("vm_two_queue_pairs total", start.elapsed());
}
