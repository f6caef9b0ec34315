//! Several real QEMU guests on one `xdpathd` (issue 12's QEMU items): each
//! guest is a Debian kernel with its own virtio-net driver (the image
//! `cargo xtask guest-image` builds), booted under TCG, on its own
//! vhost-user socket in the daemon's directory, declared at run time
//! (`POST /v1/guests` or `xdpctl guest add`), never on the command line.
//!
//! ```text
//!  QEMU vma 10.77.0.21 --+
//!  QEMU vmb 10.77.0.22 --+-- xdpathd -- [host_if] <--veth--> [peer_if 10.77.0.2]
//!  QEMU vmc 10.77.0.23 --+   (switches vma <-> vmb <-> vmc itself)
//! ```
//!
//! - [`three_qemu_guests_reach_the_peer_and_each_other_and_survive_a_daemon_kill`]:
//!   three guests booted in parallel each ping the peer and the other two;
//!   4 MiB of TCP from one guest to another (busybox `nc`) arrive with the
//!   same md5, the daemon's per-guest counters say the segments were
//!   switched between the guests (`tx_switched`, not `tx_frames`), and a
//!   capture on the peer end sees none of them; then `kill -9` and a
//!   restart of the daemon: it restores the three guests from its state
//!   directory (nothing is added again) and each guest, still running,
//!   reaches the peer and another guest again (QEMU `reconnect=1`).
//! - [`a_client_mode_qemu_guest_comes_back_within_a_second_of_each_restart`]:
//!   one guest with QEMU listening on its socket (`server=on,wait=off`) and
//!   a guest entry with `vhost_client` (added with `xdpctl guest add
//!   --client`), next to one guest in the default mode for comparison. The
//!   peer pings both every 10 ms while the daemon is killed (`kill -9`) and
//!   restarted at once, 10 times. The gap of a restart is the time from the
//!   last reply before the kill to the first reply after it, as seen by the
//!   peer (daemon start-up, reconnection and vhost-user negotiation
//!   included; resolution 10 ms). Printed for both guests with median and
//!   maximum; the client-mode gaps must each be under 1 s (issue 12's CI
//!   bound); the default mode's are printed only.
//!
//! The two tests run one after the other (a lock): five TCG guests at once
//! on two cores would only slow every boot down. Guests, daemon and
//! topology are guards, dropped in that order even when a test fails:
//! QEMU killed by pid, the daemon stopped and its directory (the sockets
//! QEMU owned included) removed, the namespaces deleted.
//!
//! Every test needs root and is marked ignored.

use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xdpath_tests::daemon::{ok_stdout, Daemon};
use xdpath_tests::frames::{checksum, icmp};
use xdpath_tests::packet::Receiver;
use xdpath_tests::qemu::{Guest, GuestConfig};
use xdpath_tests::topology::{enter_netns, Topology};
use xdpath_tests::{require_root, wait_until};

/// One test at a time (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

/// The peer's address (`Topology`).
const PEER: &str = "10.77.0.2";
/// How long a guest may take to boot: three TCG guests share two cores
/// (with whatever else runs).
const BOOT: Duration = Duration::from_secs(120);
/// A short guest command (a few pings).
const SHORT: Duration = Duration::from_secs(30);
/// The peer's ping interval while the daemon restarts.
const PING_EVERY: Duration = Duration::from_millis(10);
/// Longest a [`Pinger`] runs if nobody stops it.
const PINGER_LIMIT: Duration = Duration::from_secs(300);

/// A guest of these tests: its name (in xdpathd), MAC and address.
#[derive(Clone, Copy, Debug)]
struct Vm {
    name: &'static str,
    mac: [u8; 6],
    ip: &'static str,
}

const VMA: Vm = Vm {
    name: "vma",
    mac: [0x52, 0x54, 0x00, 0xd4, 0x00, 0x21],
    ip: "10.77.0.21",
};
const VMB: Vm = Vm {
    name: "vmb",
    mac: [0x52, 0x54, 0x00, 0xd4, 0x00, 0x22],
    ip: "10.77.0.22",
};
const VMC: Vm = Vm {
    name: "vmc",
    mac: [0x52, 0x54, 0x00, 0xd4, 0x00, 0x23],
    ip: "10.77.0.23",
};

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where `vm`'s vhost-user socket is: in the daemon's directory (removed
/// with it, also the socket a killed QEMU leaves in client mode).
fn socket_of(d: &Daemon, vm: Vm) -> PathBuf {
    d.dir.join(format!("{}.sock", vm.name))
}

/// Adds `vm` through the API (QEMU connects to xdpathd's socket).
fn add_guest(d: &Daemon, vm: Vm) {
    let body = json!({
        "name": vm.name,
        "mac": mac_text(vm.mac),
        "ips": [vm.ip],
        "vhost_socket": socket_of(d, vm),
    });
    let v = d
        .call("POST", "/v1/guests", Some(&body))
        .unwrap_or_else(|e| panic!("adding guest {}: {e:#}", vm.name));
    assert_eq!(v["name"], json!(vm.name), "{v}");
}

/// The daemon's view of `vm` (settings and counters).
fn guest_info(d: &Daemon, vm: Vm) -> Value {
    d.call("GET", &format!("/v1/guests/{}", vm.name), None)
        .unwrap_or_else(|e| panic!("GET guest {}: {e:#}", vm.name))
}

fn counter(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {field} in {v}"))
}

/// How QEMU runs `vm` (one vCPU, one queue pair, QEMU as the client).
fn config(d: &Daemon, vm: Vm) -> GuestConfig {
    let mut cfg = GuestConfig::new(socket_of(d, vm), vm.mac, format!("{}/24", vm.ip));
    cfg.boot_timeout = BOOT;
    cfg
}

/// Boots every guest at once, one thread each (TCG boots are slow; two
/// cores take two at a time); in `cfgs`' order.
fn boot_all(cfgs: &[GuestConfig]) -> Vec<Guest> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<Guest>> = std::thread::scope(|s| {
        let handles: Vec<_> = cfgs
            .iter()
            .map(|c| s.spawn(move || Guest::boot(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a boot thread panicked"))
            .collect()
    });
    // A failed boot panics here; the guests already up are dropped (killed).
    let guests: Vec<Guest> = results
        .into_iter()
        .zip(cfgs)
        .map(|(r, c)| r.unwrap_or_else(|e| panic!("guest on {}: {e:#}", c.sock.display())))
        .collect();
    let each: Vec<String> = guests
        .iter()
        .map(|g| format!("{:.1} s", g.boot_time.as_secs_f64()))
        .collect();
    eprintln!(
        "{} guests booted in parallel in {:.1} s (each: {})",
        guests.len(),
        started.elapsed().as_secs_f64(),
        each.join(", ")
    );
    guests
}

/// `ping -c count` from guest `g` to `ip`: how many replies came back.
fn ping_from(g: &mut Guest, ip: &str, count: u32) -> u32 {
    let (_, out) = g
        .run(&format!("ping -c {count} -i 0.2 -W 3 {ip}"), SHORT)
        .unwrap_or_else(|e| panic!("ping {ip}: {e:#}"));
    out.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no ping summary in:\n{out}"))
}

/// Every one of `count` pings from `g` (named `who`) to `ip` is answered.
fn assert_pings(g: &mut Guest, who: &str, ip: &str, count: u32) {
    let got = ping_from(g, ip, count);
    assert_eq!(got, count, "{who} -> {ip}: {got} of {count} replies");
}

/// Pings from `g` to `ip`, one at a time, until one is answered (at most
/// `tries`, about 1 s each): true if one was.
fn ping_until_answered(g: &mut Guest, ip: &str, tries: u32) -> bool {
    (0..tries).any(|_| {
        g.run(&format!("ping -c 1 -W 1 {ip}"), SHORT)
            .is_ok_and(|(st, _)| st == 0)
    })
}

/// The md5 `md5sum FILE` printed for `file`.
fn md5_of(out: &str, file: &str) -> String {
    out.lines()
        .find(|l| l.trim_end().ends_with(file))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no md5sum line for {file} in:\n{out}"))
}

/// Whether `f` is an IPv4 TCP frame from or to `port`.
fn is_tcp_port(f: &[u8], port: u16) -> bool {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return false;
    }
    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
    let Some(ports) = f.get(l4..l4 + 4) else {
        return false;
    };
    let p = port.to_be_bytes();
    ports[0..2] == p || ports[2..4] == p
}

/// Three QEMU guests on one xdpathd, added through the API: each pings the
/// peer and the two others; 4 MiB of TCP from vma to vmb arrive intact,
/// switched inside xdpathd (its counters say so; the peer's capture sees
/// none of it); after `kill -9` and a restart the daemon restores the
/// three from its state directory and each guest reaches the peer and
/// another guest again, without a reboot.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, three QEMU guests, a real xdpathd"]
fn three_qemu_guests_reach_the_peer_and_each_other_and_survive_a_daemon_kill() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let vms = [VMA, VMB, VMC];
    let t = Topology::new(1).expect("topology");
    let mut d = Daemon::start(&t, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    for vm in vms {
        add_guest(&d, vm);
    }
    let cfgs: Vec<GuestConfig> = vms.iter().map(|&vm| config(&d, vm)).collect();
    let mut guests = boot_all(&cfgs);
    for vm in vms {
        let v = guest_info(&d, vm);
        assert_eq!(v["connected"], json!(true), "{} is connected: {v}", vm.name);
    }

    // Each guest reaches the peer and the two others.
    let t0 = Instant::now();
    for (i, g) in guests.iter_mut().enumerate() {
        let who = vms[i].name;
        assert_pings(g, who, PEER, 3);
        for other in vms.iter().filter(|o| o.name != who) {
            assert_pings(g, who, other.ip, 3);
        }
    }
    eprintln!(
        "pings: each guest to the peer and the two others, 3 each: {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 4 MiB of TCP from vma to vmb: switched, never on the wire.
    const PORT: u16 = 5301;
    const MIB: usize = 4;
    let cap = t.in_peer({
        let p = t.peer_if.clone();
        move || Receiver::new(&p).expect("AF_PACKET capture on the peer")
    });
    let before = [guest_info(&d, VMA), guest_info(&d, VMB)];
    let t0 = Instant::now();
    let [ga, gb, _] = &mut guests[..] else {
        unreachable!("three guests were booted")
    };
    let (sent, received) = std::thread::scope(|s| {
        // busybox nc half-closes the connection when its stdin ends and
        // exits when the network side ends: a listener reading /dev/null
        // would make the sending nc quit after its first ~200 KiB. The
        // receiver is `cat` on the socket instead (`-e`), which sends
        // nothing and closes only after the sender's end of data.
        let rx = s.spawn(|| {
            gb.run_ok(
                &format!(
                    "nc -l -p {PORT} -e sh -c 'cat > /tmp/rx'; s=$?; md5sum /tmp/rx; \
                     wc -c < /tmp/rx; rm -f /tmp/rx; exit $s"
                ),
                Duration::from_secs(180),
            )
        });
        // The listener may not be up yet: retry refused connections (a
        // failed connect sends nothing; nc -l takes one connection only,
        // so a repeat after a partial send would fail the md5 check).
        let tx = ga.run_ok(
            &format!(
                "dd if=/dev/urandom of=/tmp/tx bs=1M count={MIB} 2>/dev/null && md5sum /tmp/tx \
                 || exit 1; i=0; while ! nc -w 10 {} {PORT} < /tmp/tx; do i=$((i+1)); \
                 [ $i -ge 40 ] && exit 1; sleep 0.5; done; rm -f /tmp/tx",
                VMB.ip
            ),
            Duration::from_secs(180),
        );
        (tx, rx.join().expect("the receiving guest's thread"))
    });
    let sent = sent.unwrap_or_else(|e| panic!("vma sends: {e:#}"));
    let received = received.unwrap_or_else(|e| panic!("vmb receives: {e:#}"));
    let took = t0.elapsed();
    let bytes: usize = received
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no byte count in:\n{received}"));
    assert_eq!(bytes, MIB << 20, "bytes vmb received:\n{received}");
    assert_eq!(
        md5_of(&received, "/tmp/rx"),
        md5_of(&sent, "/tmp/tx"),
        "md5 vmb vs vma"
    );
    eprintln!(
        "TCP vma -> vmb: {MIB} MiB in {:.1} s ({:.1} Mbit/s), md5 equal",
        took.as_secs_f64(),
        (MIB << 20) as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let after = [guest_info(&d, VMA), guest_info(&d, VMB)];
    let delta = |i: usize, f: &str| counter(&after[i], f) - counter(&before[i], f);
    let (a_sw, a_wire, b_sw) = (
        delta(0, "tx_switched"),
        delta(0, "tx_frames"),
        delta(1, "tx_switched"),
    );
    eprintln!(
        "counters during the transfer: vma tx_switched +{a_sw}, tx_frames (to the wire) \
         +{a_wire}; vmb tx_switched +{b_sw}"
    );
    // No TSO is offered: every segment carries at most 1460 bytes.
    let segments = ((MIB << 20) / 1460) as u64;
    assert!(
        a_sw >= segments,
        "vma's segments were switched to vmb: tx_switched +{a_sw}, want >= {segments}"
    );
    assert!(b_sw >= 1, "vmb's ACKs were switched to vma");
    assert!(
        a_wire < 50,
        "vma sent next to nothing to the wire meanwhile: tx_frames +{a_wire}"
    );
    let seen = cap
        .recv_matching(usize::MAX, Duration::from_millis(300), |f| {
            is_tcp_port(f, PORT)
        })
        .expect("read the capture");
    assert_eq!(cap.drops(), 0, "the capture lost nothing");
    assert!(
        seen.is_empty(),
        "the peer saw {} frames of the guest-to-guest transfer",
        seen.len()
    );

    // kill -9 and restart: the guests come back from the state directory,
    // and QEMU (reconnect=1) resumes without a reboot.
    // A file in each guest's RAM-backed root: still there after the
    // restart means the guest did not reboot (and QEMU runs with
    // -no-reboot, so a reboot would end it).
    for g in guests.iter_mut() {
        g.run_ok("touch /tmp/before-restart", SHORT)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    d.kill9();
    let t0 = Instant::now();
    d.spawn().unwrap_or_else(|e| panic!("{e:#}"));
    let listed = d.call("GET", "/v1/guests", None).expect("GET /v1/guests");
    let names: Vec<&str> = listed
        .as_array()
        .or_else(|| listed["guests"].as_array())
        .unwrap_or_else(|| panic!("no guest list in {listed}"))
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    // `default`: the test kit's daemon always passes `--vhost-socket`,
    // the one-guest shorthand (id 1, no MAC; no QEMU on it here).
    assert_eq!(
        names,
        ["default", "vma", "vmb", "vmc"],
        "the restarted daemon restored the guests it saved"
    );
    let others = [VMB, VMC, VMA];
    for (i, g) in guests.iter_mut().enumerate() {
        let who = vms[i].name;
        assert!(
            ping_until_answered(g, PEER, 30),
            "{who} did not reach the peer after the restart\n{}",
            g.log_tail(40)
        );
        assert_pings(g, who, PEER, 3);
        assert_pings(g, who, others[i].ip, 3);
    }
    eprintln!(
        "after kill -9 and restart: every guest reaches the peer and another guest, {:.1} s \
         after the restart",
        t0.elapsed().as_secs_f64()
    );
    for vm in vms {
        assert_eq!(guest_info(&d, vm)["connected"], json!(true), "{}", vm.name);
    }
    for (i, g) in guests.iter_mut().enumerate() {
        g.run_ok("test -f /tmp/before-restart", SHORT)
            .unwrap_or_else(|e| panic!("{} kept running (no reboot): {e:#}", vms[i].name));
    }
    eprintln!(
        "three_qemu_guests...: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// Echo requests from a network namespace to one address every
/// [`PING_EVERY`] (a raw ICMP socket of its own, its own identifier); the
/// arrival time of each reply is kept. Stops on drop (bounded by
/// [`PINGER_LIMIT`] anyway).
struct Pinger {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Instant>>>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl Pinger {
    fn start(ns: &str, dst: Ipv4Addr, ident: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (ns, flag, seen) = (ns.to_owned(), stop.clone(), replies.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ping-{dst}"))
            .spawn(move || ping_loop(&ns, dst, ident, &flag, &seen))
            .expect("start the pinger");
        Self {
            stop,
            replies,
            thread: Some(thread),
        }
    }

    /// The last reply that arrived before `t`.
    fn last_before(&self, t: Instant) -> Option<Instant> {
        let r = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        r.iter().rev().find(|&&x| x < t).copied()
    }

    /// The first reply that arrived after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        let r = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        r.iter().find(|&&x| x > t).copied()
    }

    /// Stops and says how many requests were sent and replies received.
    fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Release);
        let sent = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Ok(n))) => n,
            Some(Ok(Err(e))) => panic!("pinger: {e:#}"),
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => 0,
        };
        let got = self
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        (sent, got)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The pinger's thread: enters `ns`, sends an echo request every
/// [`PING_EVERY`] and records replies from `dst` with `ident` until `stop`.
/// Returns the number of requests sent.
fn ping_loop(
    ns: &str,
    dst: Ipv4Addr,
    ident: u16,
    stop: &AtomicBool,
    replies: &Mutex<Vec<Instant>>,
) -> anyhow::Result<u64> {
    enter_netns(ns)?;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    anyhow::ensure!(
        raw >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a socket we just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let end = Instant::now() + PINGER_LIMIT;
    let mut next = Instant::now();
    let mut seq: u16 = 0;
    let mut sent = 0u64;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Acquire) && Instant::now() < end {
        let now = Instant::now();
        if now >= next {
            seq = seq.wrapping_add(1);
            // Type, code, checksum, identifier, sequence, 56 bytes of data.
            let mut m = icmp(8, 0, &[0x5a; 56]);
            m[4..6].copy_from_slice(&ident.to_be_bytes());
            m[6..8].copy_from_slice(&seq.to_be_bytes());
            let c = checksum(&m);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: `m` and `to` are valid for the lengths given. A failed
            // send (no neighbour yet) is a lost request, as with ping.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    m.as_ptr().cast(),
                    m.len(),
                    libc::MSG_DONTWAIT,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            sent += u64::from(rc >= 0);
            next += PING_EVERY;
            if next < now {
                next = now + PING_EVERY;
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().clamp(1, 10) as i32) };
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            let at = Instant::now();
            // A raw socket gets the IPv4 header, then the ICMP message.
            let f = &buf[..n];
            let ihl = usize::from(f.first().map_or(0, |b| b & 0x0f)) * 4;
            let reply = f.len() >= ihl + 8
                && ihl >= 20
                && f[12..16] == dst.octets()
                && f[ihl] == 0
                && f[ihl + 4..ihl + 6] == ident.to_be_bytes();
            if reply {
                replies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(at);
            }
        }
    }
    Ok(sent)
}

/// The median and maximum of `v` (sorted in place).
fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Client mode with QEMU: vmc's QEMU listens on its socket (`server=on`)
/// and xdpathd dials it (`xdpctl guest add --client`); vma is in the
/// default mode (QEMU dials xdpathd, `reconnect=1`). The peer pings both
/// every 10 ms through 10 `kill -9` + immediate restarts of the daemon;
/// each client-mode gap (last reply before the kill to first reply after
/// it) is under 1 s. Both guests' gaps are printed with median and max.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, two QEMU guests, a real xdpathd"]
fn a_client_mode_qemu_guest_comes_back_within_a_second_of_each_restart() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    const RESTARTS: usize = 10;
    let started = Instant::now();
    let t = Topology::new(1).expect("topology");
    let mut d = Daemon::start(&t, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    // The client-mode guest through xdpctl, the other through the API.
    let client_sock = socket_of(&d, VMC);
    let out = d
        .xdpctl(&[
            "guest",
            "add",
            VMC.name,
            "--mac",
            &mac_text(VMC.mac),
            "--ip",
            VMC.ip,
            "--vhost-socket",
            &client_sock.display().to_string(),
            "--client",
        ])
        .expect("run xdpctl");
    let text = ok_stdout(&out).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        text.contains("server=on"),
        "xdpctl tells how to start QEMU in server mode:\n{text}"
    );
    assert_eq!(guest_info(&d, VMC)["vhost_client"], json!(true));
    add_guest(&d, VMA);
    let mut client_cfg = config(&d, VMC);
    client_cfg.vhost_server = true;
    let mut guests = boot_all(&[client_cfg, config(&d, VMA)]);
    for vm in [VMC, VMA] {
        assert!(
            wait_until(Duration::from_secs(10), || guest_info(&d, vm)["connected"]
                == json!(true)),
            "{} is connected: {}",
            vm.name,
            guest_info(&d, vm)
        );
    }

    // QEMU takes a guest's link down and up again on every vhost-user
    // reconnect, and the guest kernel flushes its ARP cache when the link
    // goes down. Its first reply after a restart then waits for an ARP
    // exchange, and loses a whole ARP retransmit second when its request
    // races the link coming back up (gaps of about 1.2 s, seldom). The
    // peer's address is made permanent in both guests, so the gap measures
    // the daemon's restart and QEMU's reconnection, not the guest's ARP.
    let peer_mac = mac_text(xdpath_tests::topology::PEER_MAC);
    for g in guests.iter_mut() {
        g.run_ok(
            &format!(
                "ip neigh replace {PEER} lladdr {peer_mac} nud permanent dev eth0 || \
                 arp -s {PEER} {peer_mac}"
            ),
            SHORT,
        )
        .unwrap_or_else(|e| panic!("a permanent neighbour entry for the peer: {e:#}"));
    }

    // The peer reaches both (its ARP resolves them too).
    for vm in [VMC, VMA] {
        Topology::exec(
            &t.peer_ns,
            &["ping", "-c", "2", "-i", "0.3", "-W", "3", vm.ip],
        )
        .unwrap_or_else(|e| panic!("the peer pings {}: {e:#}", vm.name));
    }
    let ip = |vm: Vm| vm.ip.parse::<Ipv4Addr>().expect("an IPv4 address");
    let client = Pinger::start(&t.peer_ns, ip(VMC), 0x7c01);
    let server = Pinger::start(&t.peer_ns, ip(VMA), 0x7c02);
    let now = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || {
            client.first_after(now).is_some() && server.first_after(now).is_some()
        }),
        "the peer's pings are answered before any restart: vmc {:?}, vma {:?}",
        client.first_after(now),
        server.first_after(now)
    );

    let mut client_gaps = Vec::new();
    let mut client_from_kill = Vec::new();
    let mut server_gaps = Vec::new();
    for round in 1..=RESTARTS {
        // Let replies flow for a moment, so the last one before the kill is
        // at most one interval old.
        std::thread::sleep(Duration::from_millis(200));
        let failed_setups = |d: &Daemon| {
            d.log_text()
                .matches("setting up a vhost-user connection failed")
                .count()
        };
        let failed_before = failed_setups(&d);
        let kill = Instant::now();
        d.kill9();
        // Reaped: from here on no guest reply can reach the peer until the
        // new daemon serves the guest.
        let dead = Instant::now();
        d.spawn()
            .unwrap_or_else(|e| panic!("restart {round}: {e:#}"));
        let up = Instant::now();
        let back = wait_until(Duration::from_secs(10), || {
            client.first_after(dead).is_some() && server.first_after(dead).is_some()
        });
        let (c_last, c_first) = (client.last_before(kill), client.first_after(dead));
        let (s_last, s_first) = (server.last_before(kill), server.first_after(dead));
        if !back {
            // What the daemon saw of each guest, twice a second apart: did
            // the requests reach the guest (rx), did replies leave it (tx)?
            let seen = |vm: Vm| {
                let v = guest_info(&d, vm);
                format!(
                    "{} connected {} rx_frames {} tx_frames {} drops {}",
                    vm.name, v["connected"], v["rx_frames"], v["tx_frames"], v["drops"]
                )
            };
            let first = [seen(VMC), seen(VMA)];
            std::thread::sleep(Duration::from_secs(1));
            // And what the guests' kernels say (a virtio ring they found
            // inconsistent is reported there).
            let kernel: Vec<String> = guests
                .iter_mut()
                .map(|g| match g.run("dmesg | tail -n 8", SHORT) {
                    Ok((_, out)) => out,
                    Err(e) => format!("{e:#}"),
                })
                .collect();
            panic!(
                "restart {round}: replies again from client-mode vmc: {c_first:?}, default-mode \
                 vma: {s_first:?}\ncounters: {first:?}\na second later: {:?}\nguest kernels \
                 (vmc, vma): {kernel:#?}\n{}",
                [seen(VMC), seen(VMA)],
                d.log_text()
            );
        }
        let (Some(c_last), Some(c_first), Some(s_last), Some(s_first)) =
            (c_last, c_first, s_last, s_first)
        else {
            unreachable!("replies before the first kill were awaited, and after it just now")
        };
        let (cg, sg) = (c_first - c_last, s_first - s_last);
        eprintln!(
            "restart {round:2}: daemon start-up {}; client mode gap {} (kill to first reply {}); \
             default mode gap {}; vhost-user set-ups that failed and were retried: {}",
            ms(up - dead),
            ms(cg),
            ms(c_first - kill),
            ms(sg),
            failed_setups(&d).saturating_sub(failed_before)
        );
        client_gaps.push(cg);
        client_from_kill.push(c_first - kill);
        server_gaps.push(sg);
    }
    let (c_sent, c_got) = client.finish();
    let (s_sent, s_got) = server.finish();
    let (cm, cx) = median_max(&mut client_gaps.clone());
    let (km, kx) = median_max(&mut client_from_kill);
    let (sm, sx) = median_max(&mut server_gaps);
    eprintln!(
        "QEMU client mode (server=on, vhost_client), {RESTARTS} kill -9 restarts, peer pinging \
         every {}: gap (last reply before the kill to first after) median {}, max {}; kill to \
         first reply median {}, max {}; {c_got} replies to {c_sent} requests",
        ms(PING_EVERY),
        ms(cm),
        ms(cx),
        ms(km),
        ms(kx)
    );
    eprintln!(
        "QEMU default mode (reconnect=1), same restarts: gap median {}, max {}; {s_got} replies \
         to {s_sent} requests",
        ms(sm),
        ms(sx)
    );
    for (round, g) in client_gaps.iter().enumerate() {
        assert!(
            *g < Duration::from_secs(1),
            "restart {}: the client-mode guest was unreachable for {} (all: {client_gaps:?})",
            round + 1,
            ms(*g)
        );
    }
    drop(guests);
    eprintln!(
        "a_client_mode_qemu_guest...: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
