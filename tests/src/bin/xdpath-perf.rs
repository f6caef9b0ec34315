//! `xdpath-perf`: how fast one queue-pair worker bridges, in each
//! direction, on the veth path (release build; root).
//!
//! Topology: the test bridge (private netns + veth, classifier, one AF_XDP
//! socket, vhost-user server) with the in-repo frontend as the guest.
//! Placement on this 2-CPU machine: the wire (peer AF_XDP sender) on CPU 0,
//! the guest (frontend) on CPU 1, the worker wherever the kernel puts it.
//! Reports delivered frames/s, drops, and the worker thread's own CPU time
//! per frame (from /proc), which is what the worker would sustain alone on
//! one core.
//!
//! Usage: `xdpath-perf [SECONDS] [FRAME_BYTES]` (defaults 3 and 64).

use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpath_common::Action;
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_tests::bridge::{Bridge, GUEST_IP, GUEST_MAC};
use xdpath_tests::frames::*;
use xdpath_tests::frontend::FrontendOptions;
use xdpath_tests::topology::{PEER_IP, PEER_MAC};

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU seconds (user + system) used so far by threads named `name`.
fn cpu_of(name: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (u, s) = (f.get(11), f.get(12));
        total += u.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + s.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total as f64 / hz
}

fn frame(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4], size: usize, i: u32) -> Vec<u8> {
    let payload = size.saturating_sub(14 + 20 + 8);
    eth(
        dst,
        src,
        ETH_P_IP,
        &ipv4(sip, dip, 17, &udp(1000, 2000, &tagged(i, payload))),
    )
}

struct Result1 {
    fps: f64,
    drops: u64,
    worker_ns_per_frame: f64,
}

fn wire_to_guest(secs: u64, size: usize) -> Result<Result1> {
    let mut b = Bridge::new(1);
    let mut fe = b.connect(FrontendOptions {
        queue_size: 1024,
        ..FrontendOptions::default()
    });
    let mut wire = std::mem::take(&mut b.wire_tx);
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|i| frame(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, size, i))
        .collect();
    let stop = AtomicBool::new(false);
    let c0 = b.counters(0);
    let cpu0 = cpu_of("vring_worker");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(0);
            while !stop.load(Ordering::Relaxed) {
                let _ = wire[0].send(&frames, Duration::from_secs(1));
            }
        });
        pin(1);
        while t0.elapsed() < Duration::from_secs(secs) {
            fe.post_rx_buffers(0, 1024, 2048);
            let _ = fe.recv(0, 256, Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let dt = t0.elapsed().as_secs_f64();
    let c1 = b.counters(0);
    let cpu = cpu_of("vring_worker") - cpu0;
    let frames_done = c1.rx_frames - c0.rx_frames;
    b.wire_tx = wire;
    Ok(Result1 {
        fps: frames_done as f64 / dt,
        drops: (c1.rx_drop_no_guest_buffer - c0.rx_drop_no_guest_buffer)
            + (c1.xdp_rx_dropped - c0.xdp_rx_dropped),
        worker_ns_per_frame: cpu * 1e9 / frames_done.max(1) as f64,
    })
}

fn guest_to_wire(secs: u64, size: usize) -> Result<Result1> {
    let b = Bridge::new(1);
    let mut fe = b.connect(FrontendOptions {
        queue_size: 1024,
        ..FrontendOptions::default()
    });
    // The sink: the classifier on the peer end with default action drop,
    // so the peer's stack never sees the frames and its counters say how
    // many arrived on the wire.
    let peer_if = b.peer_if().to_string();
    let sink = b.in_peer(|| {
        let mut cfg = ClassifierConfig::new(&peer_if);
        cfg.default_action = Action::Drop;
        Classifier::attach(&cfg)
    })?;
    let s0 = sink.counters()?;
    let f = frame(PEER_MAC, GUEST_MAC, GUEST_IP, PEER_IP, size, 7);
    let c0 = b.counters(0);
    let cpu0 = cpu_of("vring_worker");
    let t0 = Instant::now();
    pin(1);
    while t0.elapsed() < Duration::from_secs(secs) {
        let mut n = 0;
        while n < 256 && fe.send(0, &f, false) {
            n += 1;
        }
        if n == 0 {
            std::thread::yield_now();
        }
        fe.tx_completed(0);
    }
    let dt = t0.elapsed().as_secs_f64();
    let c1 = b.counters(0);
    let cpu = cpu_of("vring_worker") - cpu0;
    let sent = c1.tx_frames - c0.tx_frames;
    std::thread::sleep(Duration::from_millis(100));
    let arrived = sink.counters()?.action_drop - s0.action_drop;
    sink.shutdown()?;
    Ok(Result1 {
        fps: arrived as f64 / dt,
        drops: sent.saturating_sub(arrived),
        worker_ns_per_frame: cpu * 1e9 / sent.max(1) as f64,
    })
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xdpath-perf creates namespaces and attaches XDP: run it as root");
    }
    let mut args = std::env::args().skip(1);
    let secs: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("SECONDS")?
        .unwrap_or(3);
    let size: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("FRAME_BYTES")?
        .unwrap_or(64);
    println!(
        "one queue pair, {size}-byte frames, {secs} s per direction; wire on CPU 0, guest on CPU 1"
    );
    for (name, r) in [
        ("wire->guest", wire_to_guest(secs, size)?),
        ("guest->wire", guest_to_wire(secs, size)?),
    ] {
        println!(
            "{name}: {:.3} Mpps delivered, {} drops, worker {:.0} ns CPU per frame (= {:.2} Mpps per worker core)",
            r.fps / 1e6,
            r.drops,
            r.worker_ns_per_frame,
            1e3 / r.worker_ns_per_frame.max(1e-9)
        );
    }
    Ok(())
}
