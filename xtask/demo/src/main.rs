//! `cargo xtask demo`: xdpath end to end on an embedded default topology.
//!
//! No NIC needed: a private "host" namespace holds one end of a 2-queue veth
//! pair, which plays the host NIC; a private "wire" namespace holds the
//! other end, which plays a peer host. The demo runs `xdpathd` on the host
//! end (2 queue pairs), boots a small QEMU guest (software emulation) on its
//! vhost-user socket, and shows, live:
//! 1. the guest pinging the peer, and the peer pinging the guest;
//! 2. a TCP transfer from the guest to the peer, its MD5 checked on both
//!    ends;
//! 3. host traffic on the same NIC still reaching the host stack;
//! 4. the per-queue counters, from `xdpctl`.
//!
//! Then it tears everything down (guest, daemon, namespaces) and exits 0 only
//! if every step worked.
//!
//! The wire end's tx checksum offload is turned off: frames from a veth
//! peer's own stack carry partial checksums, which a real wire never does.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::daemon::{ok_stdout, Daemon};
use xdpath_tests::qemu::{Guest, GuestConfig};
use xdpath_tests::topology::{enter_netns, Topology};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xd3, 0x00, 0x01];
const GUEST_IP: &str = "10.77.0.10";
const PEER_IP: &str = "10.77.0.2";
const HOST_IP: &str = "10.77.0.1";
const TRANSFER_MIB: u32 = 8;

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
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

/// What to look at when a step fails: the daemon's counters and the
/// guest's view of its NIC.
fn diagnose(d: &Daemon, g: &mut Guest) {
    eprintln!("\n--- diagnostics ---");
    if let Ok(s) = d.call("GET", "/v1/stats", None) {
        eprintln!("xdpathd stats: {s}");
    }
    for cmd in [
        "cat /proc/net/dev",
        "ip neigh",
        "ip addr show eth0",
        "xg stats eth0",
    ] {
        if let Ok((_, out)) = g.run(cmd, Duration::from_secs(10)) {
            eprintln!("guest$ {cmd}\n{out}");
        }
    }
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
        "\nteardown: guest, xdpathd (XDP detached, maps unpinned), namespaces and veth removed"
    );
    println!("demo wall time: {:.1} s", start.elapsed().as_secs_f64());
    result?;
    println!("demo ok");
    Ok(())
}

fn run(t: &Topology) -> Result<()> {
    let d = Daemon::start(
        t,
        &[
            "--queues",
            "2",
            "--guest-mac",
            &mac(GUEST_MAC),
            "--guest-ip",
            GUEST_IP,
        ],
    )?;
    let health = d.call("GET", "/v1/health", None)?;
    println!(
        "xdpathd: XDP program id {} on {}, 2 queue pairs, vhost-user socket {}",
        health["xdp_prog_id"],
        t.host_if,
        d.vhost.display()
    );

    let mut cfg = GuestConfig::new(&d.vhost, GUEST_MAC, format!("{GUEST_IP}/24"));
    cfg.queues = 2;
    cfg.enable_queues = Some(2);
    let booting = AtomicBool::new(true);
    let t0 = Instant::now();
    let guest = std::thread::scope(|s| {
        s.spawn(|| {
            // A live line on a terminal; one line per 5 s in a log.
            // SAFETY: isatty on stdout has no preconditions.
            let tty = unsafe { libc::isatty(1) } == 1;
            let mut last = 0;
            while booting.load(Ordering::Relaxed) {
                let secs = t0.elapsed().as_secs_f64();
                if tty {
                    print!("\r  booting the guest under QEMU (software emulation)... {secs:4.1} s");
                    let _ = std::io::stdout().flush();
                } else if secs as u64 / 5 != last || secs < 0.3 {
                    last = secs as u64 / 5;
                    println!("  booting the guest under QEMU (software emulation)... {secs:.0} s");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if tty {
                println!();
            }
        });
        let g = Guest::boot(&cfg);
        booting.store(false, Ordering::Relaxed);
        g
    });
    let mut g: Guest = match guest {
        Ok(g) => g,
        Err(e) => {
            eprintln!("\n--- xdpathd log ---\n{}", d.log_text());
            return Err(e);
        }
    };
    println!(
        "guest up in {:.1} s: {}",
        g.boot_time.as_secs_f64(),
        g.ready_line.trim()
    );

    step(1, "ping: guest -> peer, then peer -> guest");
    let (code, out) = g.run(
        &format!("ping -c 3 -W 2 {PEER_IP}"),
        Duration::from_secs(30),
    )?;
    let line = out
        .lines()
        .find(|l| l.contains("received"))
        .unwrap_or("")
        .trim()
        .to_string();
    println!("  guest$ ping {PEER_IP}: {line}");
    if code != 0 || !line.contains("3 packets received") {
        diagnose(&d, &mut g);
        bail!("the guest's ping did not get its answers:\n{out}");
    }
    let out = Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", GUEST_IP],
    )
    .context("peer pings the guest")?;
    println!(
        "  peer$ ping {GUEST_IP}: {}",
        out.lines()
            .find(|l| l.contains("received"))
            .unwrap_or("")
            .trim()
    );

    step(
        2,
        &format!("TCP: {TRANSFER_MIB} MiB from the guest to the peer, MD5 on both ends"),
    );
    let sink = tcp_sink(t.peer_ns.clone(), 5001);
    let out = g.run_ok(
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
    println!("  guest md5 {sent_md5}\n  peer  md5 {got_md5} ({bytes} bytes)");
    if sent_md5.is_empty() || sent_md5 != got_md5 || bytes != (TRANSFER_MIB as usize) << 20 {
        bail!("the transfer did not arrive intact");
    }

    step(
        3,
        "host traffic on the same NIC still reaches the host stack",
    );
    let out = Topology::exec(
        &t.peer_ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", HOST_IP],
    )
    .context("peer pings the host")?;
    println!(
        "  peer$ ping {HOST_IP}: {}",
        out.lines()
            .find(|l| l.contains("received"))
            .unwrap_or("")
            .trim()
    );

    step(4, "per-queue counters (xdpctl queue list; xdpctl stats)");
    print!("{}", ok_stdout(&d.xdpctl(&["queue", "list"])?)?);
    print!("{}", ok_stdout(&d.xdpctl(&["stats"])?)?);
    let queues = d.call("GET", "/v1/queues", None)?;
    let carried = |q: &serde_json::Value, k: &str| q["counters"][k].as_u64().unwrap_or(0) > 0;
    let busy = queues.as_array().map_or(0, |a| {
        a.iter()
            .filter(|q| carried(q, "rx_frames") || carried(q, "tx_frames"))
            .count()
    });
    println!("queue pairs that carried traffic (either direction): {busy} of 2");
    drop(g);
    Ok(())
}
