//! `cargo xtask demo`: xdpath end to end on an embedded default topology,
//! with two QEMU guests on one NIC.
//!
//! No NIC needed: a private "host" namespace holds one end of a 2-queue veth
//! pair, which plays the host NIC; a private "wire" namespace holds the
//! other end, which plays a peer host. The demo runs `xdpathd` on the host
//! end (2 queue pairs) with the one-guest flags, which declare the guest
//! `default`; adds a second guest, `vm2`, live with `xdpctl guest add`
//! (printing the command and its answer, QEMU snippet included); boots two
//! small QEMU guests (software emulation) at the same time, one on each
//! vhost-user socket; and shows, live:
//! 1. each guest pinging the peer, and the peer pinging each guest;
//! 2. `default` and `vm2` pinging each other: xdpathd switches those frames
//!    from one guest to the other (`tx_switched`), and the peer's end of the
//!    wire sees none of them (its receive counter is read before and after);
//! 3. a TCP transfer from `default` to the peer, its MD5 checked on both
//!    ends;
//! 4. host traffic on the same NIC still reaching the host stack;
//! 5. the per-guest counters: `xdpctl guest list` and `xdpctl guest show`,
//!    checked through `/v1/guests` (both connected, both carried frames).
//!
//! This driver owns the demo's topology, daemon and guests, and their
//! teardown (guests, daemon, namespaces, also on failure: each is a guard
//! dropped in reverse order); it exits 0 only if every step worked.
//! `xtask/src/demo.rs` builds it and the guest image and runs it.
//!
//! The wire end's tx checksum offload is turned off: frames from a veth
//! peer's own stack carry partial checksums, which a real wire never does.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::daemon::{ok_stdout, Daemon};
use xdpath_tests::qemu::{Guest, GuestConfig};
use xdpath_tests::topology::{enter_netns, Topology};

/// The guest the one-guest flags declare (`default`, id 1).
const A_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd3, 0x00, 0x01];
const A_IP: &str = "10.77.0.10";
const A_NAME: &str = "default";
/// The guest added live with `xdpctl guest add`.
const B_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd3, 0x00, 0x02];
const B_IP: &str = "10.77.0.11";
const B_NAME: &str = "vm2";
const PEER_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";
const TRANSFER_MIB: u32 = 8;
/// Echo requests per guest-to-guest ping.
const PINGS: u64 = 5;

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

/// Prints text indented by `indent`.
fn print_indented(text: &str, indent: &str) {
    for l in text.lines() {
        if l.trim().is_empty() {
            println!();
        } else {
            println!("{indent}{l}");
        }
    }
}

/// The summary line of ping's output (`N packets transmitted, ...`).
fn ping_summary(out: &str) -> String {
    out.lines()
        .find(|l| l.contains("received"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The echo replies ping's summary line counts (busybox says `N packets
/// received`, iputils `N received`).
fn received(summary: &str) -> Option<u64> {
    summary
        .split(',')
        .find(|part| part.contains("received"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A TCP sink in the wire namespace: accepts one connection, returns the
/// byte count and the MD5 of what arrived.
fn tcp_sink(ns: String, port: u16) -> std::thread::JoinHandle<Result<(usize, String)>> {
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        let l =
            std::net::TcpListener::bind((PEER_IP, port)).context("listen in the wire namespace")?;
        l.set_nonblocking(true)?;
        let end = Instant::now() + Duration::from_secs(120);
        let (mut s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).context("no connection from the guest"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut md5 = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("md5sum")?;
        let mut sink = md5.stdin.take().context("md5sum stdin")?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])?;
            total += n;
        }
        drop(sink);
        let out = md5.wait_with_output()?;
        let sum = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        Ok((total, sum))
    })
}

/// One demo guest: its name, address and QEMU.
struct Vm {
    name: &'static str,
    ip: &'static str,
    guest: Guest,
}

/// What to look at when a step fails: the daemon's counters and each
/// guest's view of its NIC.
fn diagnose(d: &Daemon, vms: &mut [&mut Vm]) {
    eprintln!("\n--- diagnostics ---");
    for path in ["/v1/stats", "/v1/guests"] {
        if let Ok(s) = d.call("GET", path, None) {
            eprintln!("xdpathd {path}: {s}");
        }
    }
    for vm in vms.iter_mut() {
        for cmd in ["cat /proc/net/dev", "ip neigh", "ip addr show eth0"] {
            if let Ok((_, out)) = vm.guest.run(cmd, Duration::from_secs(10)) {
                eprintln!("{}$ {cmd}\n{out}", vm.name);
            }
        }
    }
    eprintln!("--- xdpathd log (tail) ---");
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("{l}");
    }
}

/// Runs `ping` in a guest and fails unless every echo was answered.
fn guest_ping(d: &Daemon, vm: &mut Vm, other: &mut Vm, dst: &str, count: u64) -> Result<()> {
    let (code, out) = vm.guest.run(
        &format!("ping -c {count} -i 0.2 -W 2 {dst}"),
        Duration::from_secs(30),
    )?;
    let line = ping_summary(&out);
    println!("  {}$ ping {dst}: {line}", vm.name);
    if code != 0 || received(&line) != Some(count) {
        diagnose(d, &mut [vm, other]);
        bail!(
            "{}'s ping of {dst} did not get its answers:\n{out}",
            vm.name
        );
    }
    Ok(())
}

/// Pings `dst` from the wire namespace and fails unless every echo was
/// answered.
fn peer_ping(t: &Topology, dst: &str) -> Result<()> {
    let out = Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", dst],
    )
    .with_context(|| format!("the peer pings {dst}"))?;
    let line = ping_summary(&out);
    println!("  peer$ ping {dst}: {line}");
    ensure!(
        received(&line) == Some(3),
        "the peer's ping of {dst} did not get its answers:\n{out}"
    );
    Ok(())
}

/// Frames the wire end of the veth (the peer host) has received.
fn peer_rx_packets(t: &Topology) -> Result<u64> {
    let path = format!("/sys/class/net/{}/statistics/rx_packets", t.peer_if);
    Topology::exec(&t.peer_ns, &["cat", &path])?
        .trim()
        .parse()
        .with_context(|| format!("reading {path} in {}", t.peer_ns))
}

/// The guests as `GET /v1/guests` lists them.
fn guests(d: &Daemon) -> Result<Vec<Value>> {
    let v = d.call("GET", "/v1/guests", None)?;
    v.as_array()
        .cloned()
        .context("GET /v1/guests did not answer a list")
}

/// Counter `key` of guest `name`.
fn counter(list: &[Value], name: &str, key: &str) -> Result<u64> {
    list.iter()
        .find(|g| g["name"] == name)
        .with_context(|| format!("no guest {name} in /v1/guests"))?[key]
        .as_u64()
        .with_context(|| format!("guest {name} has no counter {key}"))
}

/// Boots both guests at the same time (TCG is slow; two boots overlap),
/// with a progress line while they boot.
fn boot_both(a: &GuestConfig, b: &GuestConfig) -> (Result<Guest>, Result<Guest>) {
    let booting = AtomicBool::new(true);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            // A live line on a terminal; one line per 5 s in a log.
            // SAFETY: isatty on stdout has no preconditions.
            let tty = unsafe { libc::isatty(1) } == 1;
            let mut last = 0;
            while booting.load(Ordering::Relaxed) {
                let secs = t0.elapsed().as_secs_f64();
                if tty {
                    print!(
                        "\r  booting both guests under QEMU (software emulation)... {secs:4.1} s"
                    );
                    let _ = std::io::stdout().flush();
                } else if secs as u64 / 5 != last || secs < 0.3 {
                    last = secs as u64 / 5;
                    println!(
                        "  booting both guests under QEMU (software emulation)... {secs:.0} s"
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if tty {
                println!();
            }
        });
        let hb = s.spawn(|| Guest::boot(b));
        let ga = Guest::boot(a);
        let gb = hb
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("booting {B_NAME} panicked")));
        booting.store(false, Ordering::Relaxed);
        (ga, gb)
    })
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces, attaches XDP and runs QEMU: run it as root");
    }
    let start = Instant::now();
    let t = Topology::new(2).context("creating the demo topology")?;
    Topology::exec(&t.peer_ns, &["ethtool", "-K", &t.peer_if, "tx", "off"])
        .context("checksum offload off on the wire end")?;
    println!(
        "topology: netns {} [{} {HOST_IP}, the 'NIC', 2 queues] <-veth-> netns {} [{} {PEER_IP}, the peer host]",
        t.host_ns, t.host_if, t.peer_ns, t.peer_if
    );
    let result = run(&t);
    drop(t);
    println!(
        "\nteardown: guests, xdpathd (XDP detached, maps unpinned), namespaces and veth removed"
    );
    println!("demo wall time: {:.1} s", start.elapsed().as_secs_f64());
    result?;
    println!("demo ok");
    Ok(())
}

/// Adds guest `vm2` with `xdpctl guest add`, printing the command line and
/// its answer (the guest, and how to start QEMU and libvirt on it).
fn add_guest(d: &Daemon, sock: &Path) -> Result<()> {
    let sock = sock.display().to_string();
    let b_mac = mac(B_MAC);
    let args = [
        "guest",
        "add",
        B_NAME,
        "--mac",
        &b_mac,
        "--ip",
        B_IP,
        "--vhost-socket",
        &sock,
    ];
    println!("\n$ xdpctl {}", args.join(" "));
    let out = ok_stdout(&d.xdpctl(&args)?).with_context(|| format!("adding guest {B_NAME}"))?;
    print_indented(&out, "  ");
    Ok(())
}

fn run(t: &Topology) -> Result<()> {
    let d = Daemon::start(
        t,
        &[
            "--queues",
            "2",
            "--guest-mac",
            &mac(A_MAC),
            "--guest-ip",
            A_IP,
        ],
    )?;
    let health = d.call("GET", "/v1/health", None)?;
    println!(
        "xdpathd: XDP program id {} on {}, 2 queue pairs; guest {A_NAME} ({}, {A_IP}) from \
         --guest-mac/--guest-ip, vhost-user socket {}",
        health["xdp_prog_id"],
        t.host_if,
        mac(A_MAC),
        d.vhost.display()
    );

    let b_sock = d.dir.join(format!("{B_NAME}.vhost.sock"));
    add_guest(&d, &b_sock)?;

    let mut ca = GuestConfig::new(&d.vhost, A_MAC, format!("{A_IP}/24"));
    let mut cb = GuestConfig::new(&b_sock, B_MAC, format!("{B_IP}/24"));
    for c in [&mut ca, &mut cb] {
        c.queues = 2;
        c.enable_queues = Some(2);
        // Two guests boot at once on shared CPUs under TCG.
        c.boot_timeout = Duration::from_secs(120);
    }
    let (ga, gb) = boot_both(&ca, &cb);
    let (ga, gb) = match (ga, gb) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            eprintln!("\n--- xdpathd log ---\n{}", d.log_text());
            for (name, r) in [(A_NAME, a), (B_NAME, b)] {
                if let Err(e) = r {
                    eprintln!("guest {name} did not boot: {e:#}");
                }
            }
            bail!("the guests did not both boot");
        }
    };
    for (name, g) in [(A_NAME, &ga), (B_NAME, &gb)] {
        println!(
            "guest {name} up in {:.1} s: {}",
            g.boot_time.as_secs_f64(),
            g.ready_line.trim()
        );
    }
    let mut a = Vm {
        name: A_NAME,
        ip: A_IP,
        guest: ga,
    };
    let mut b = Vm {
        name: B_NAME,
        ip: B_IP,
        guest: gb,
    };

    step(1, "ping: each guest -> peer, then peer -> each guest");
    guest_ping(&d, &mut a, &mut b, PEER_IP, 3)?;
    guest_ping(&d, &mut b, &mut a, PEER_IP, 3)?;
    peer_ping(t, A_IP)?;
    peer_ping(t, B_IP)?;

    step(
        2,
        &format!("guest <-> guest: {A_NAME} pings {B_NAME} and back, switched inside xdpathd"),
    );
    // One echo each way first, so that ARP (a broadcast, which does go to
    // the wire too) is resolved before the counted pings.
    let (bip, aip) = (b.ip, a.ip);
    guest_ping(&d, &mut a, &mut b, bip, 1)?;
    guest_ping(&d, &mut b, &mut a, aip, 1)?;
    let before = guests(&d)?;
    let wire_before = peer_rx_packets(t)?;
    guest_ping(&d, &mut a, &mut b, bip, PINGS)?;
    guest_ping(&d, &mut b, &mut a, aip, PINGS)?;
    let wire_after = peer_rx_packets(t)?;
    let after = guests(&d)?;
    let mut switched: u64 = 0;
    for name in [A_NAME, B_NAME] {
        let delta = |key| -> Result<u64> {
            Ok(counter(&after, name, key)?.saturating_sub(counter(&before, name, key)?))
        };
        let (sw, tx) = (delta("tx_switched")?, delta("tx_frames")?);
        println!("  {name}: tx_switched +{sw}, tx_frames (to the wire) +{tx}");
        // Each guest sent PINGS requests and answered PINGS requests.
        ensure!(
            sw >= 2 * PINGS,
            "{name} sent {} frames to the other guest, but tx_switched moved by {sw}",
            2 * PINGS
        );
        switched = switched.saturating_add(sw);
    }
    let on_wire = wire_after.saturating_sub(wire_before);
    println!(
        "  the peer's end of the wire received {on_wire} frames meanwhile ({switched} were switched)"
    );
    ensure!(
        on_wire < switched,
        "the guests' frames to each other reached the wire ({on_wire} frames there)"
    );

    step(
        3,
        &format!("TCP: {TRANSFER_MIB} MiB from {A_NAME} to the peer, MD5 on both ends"),
    );
    let sink = tcp_sink(t.peer_ns.clone(), 5001);
    let out = a.guest.run_ok(
        &format!(
            "dd if=/dev/urandom of=/tmp/tx bs=1M count={TRANSFER_MIB} 2>/dev/null && md5sum /tmp/tx && nc -w 10 {PEER_IP} 5001 < /tmp/tx; s=$?; rm -f /tmp/tx; exit $s"
        ),
        Duration::from_secs(180),
    )?;
    let sent_md5 = out
        .lines()
        .find(|l| l.contains("/tmp/tx"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    let (bytes, got_md5) = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP sink panicked"))??;
    println!("  {A_NAME} md5 {sent_md5}\n  peer    md5 {got_md5} ({bytes} bytes)");
    if sent_md5.is_empty() || sent_md5 != got_md5 || bytes != (TRANSFER_MIB as usize) << 20 {
        bail!("the transfer did not arrive intact");
    }

    step(
        4,
        "host traffic on the same NIC still reaches the host stack",
    );
    peer_ping(t, HOST_IP)?;

    step(
        5,
        &format!("per-guest counters (xdpctl guest list; xdpctl guest show {B_NAME})"),
    );
    println!("$ xdpctl guest list");
    print_indented(&ok_stdout(&d.xdpctl(&["guest", "list"])?)?, "  ");
    println!("$ xdpctl guest show {B_NAME}   (its QEMU and libvirt snippets left out)");
    let show = ok_stdout(&d.xdpctl(&["guest", "show", B_NAME])?)?;
    // The fields come first, then a blank line and the snippets.
    print_indented(show.split("\n\n").next().unwrap_or(&show), "  ");
    let list = guests(&d)?;
    for name in [A_NAME, B_NAME] {
        let g = list
            .iter()
            .find(|g| g["name"] == name)
            .with_context(|| format!("no guest {name} in /v1/guests"))?;
        ensure!(g["connected"] == true, "guest {name} is not connected: {g}");
        for key in ["rx_frames", "tx_frames", "tx_switched"] {
            ensure!(
                counter(&list, name, key)? > 0,
                "guest {name}'s {key} did not move: {g}"
            );
        }
    }
    println!(
        "both guests connected, both received and sent frames, and their traffic to each other \
         was switched (tx_switched), not sent to the wire"
    );
    drop(a);
    drop(b);
    Ok(())
}
