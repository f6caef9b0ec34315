//! The multi-guest scaling case (issue 12): one real `xdpathd` serving N
//! guests on one veth "NIC", each guest an in-repo frontend in fast mode,
//! measured wire -> guests and guest -> guest.
//!
//! ```text
//!   guests 1..N (TestFrontend each, all driven by one thread on CPU 1)
//!        |  vhost-user (guest 1: --vhost-socket; 2..N: POST /v1/guests)
//!   xdpathd (release build next to xdpath-bench; workers unpinned)
//!        |  AF_XDP, one socket per guest and queue on each queue's UMEM
//!   host_if <==veth==> peer_if [Generator on CPU 0, Sink: XDP drop + count]
//! ```
//!
//! - wire -> guests: the generator sends 256 UDP flows per queue on every
//!   queue pair, the destination MAC and address cycling over the N guests
//!   frame by frame, so every guest gets the same share on every queue.
//! - guest -> guest: guest i sends unicast to guest (i+1) mod N on every
//!   queue pair; xdpathd switches it (`tx_switched`), the wire never sees
//!   it (the sink counts what reaches the wire in the window; it should
//!   stay 0). With one guest there is no other guest: not measured.
//!
//! Frames are counted at the guests (what each frontend took off its RX
//! vrings); the worker CPU is the utime + stime of xdpathd's `vring_worker`
//! threads (one per guest and queue pair) over the window. The
//! [`ScalingStand`] owns everything it created; dropping it closes the
//! guests, detaches the sink, stops xdpathd (SIGTERM, bounded wait,
//! SIGKILL; only the pid it started) and removes the namespaces.

use crate::stand::{machine_busy, pin, process_threads_cpu, ticks_per_sec};
use crate::traffic::{flow_frames, Generator, Sink};
use crate::Sample;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::daemon::Daemon;
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::topology::{Topology, PEER_IP, PEER_MAC};

/// Most guests a scaling stand takes (xdpathd's `MAX_GUESTS`).
pub const MAX_GUESTS: u32 = 64;
/// Frame size of the scaling case (bytes, Ethernet header included).
pub const FRAME: usize = 64;
/// UDP flows per queue from the wire, spread over the guests.
pub const WIRE_FLOWS: u32 = 256;
/// UDP flows each guest sends per queue pair to its neighbour.
const GUEST_FLOWS: u32 = 16;
/// Name of xdpathd's worker threads (vhost-user-backend's).
const WORKER_THREAD: &str = "vring_worker";
/// Descriptors per guest vring.
const QUEUE_SIZE: u16 = 1024;
/// Frames one guest queues on one TX vring per turn at most.
const BURST: usize = 256;
/// How long the guests' thread naps when a whole round over every guest
/// moved nothing (it never arms calls: a guest that polls).
const NAP: Duration = Duration::from_micros(50);
/// How long the guests may take to show as connected.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// Which way the scaling case's frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScalingDirection {
    /// Generator on the peer -> xdpathd -> every guest's RX.
    WireToGuests,
    /// Guest i's TX -> xdpathd's switch -> guest (i+1) mod N's RX.
    GuestToGuest,
}

impl ScalingDirection {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::WireToGuests => "wire->guests",
            Self::GuestToGuest => "guest->guest",
        }
    }

    /// Both, in report order.
    pub const ALL: [ScalingDirection; 2] = [Self::WireToGuests, Self::GuestToGuest];

    /// Whether the direction means anything with `guests` guests
    /// (guest -> guest needs two).
    pub fn applies(self, guests: u32) -> bool {
        self == Self::WireToGuests || guests >= 2
    }
}

/// What one scaling window saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSample {
    /// The totals: `sent` is what the generator completed (wire) or the
    /// guests queued (guest -> guest); `delivered` what all guests
    /// received; `bridge_cpu_secs` xdpathd's workers' CPU time.
    pub sample: Sample,
    /// Frames each guest received, guest 1 first.
    pub per_guest: Vec<u64>,
    /// Frames xdpathd counted as switched between guests (`tx_switched`,
    /// summed over the guests; guest -> guest only).
    pub switched: Option<u64>,
    /// Frames that reached the wire (the sink) in the window (guest ->
    /// guest only).
    pub wire: Option<u64>,
}

/// Guest `g`'s (1-based) MAC.
pub fn guest_mac(g: u32) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x5c, (g >> 8) as u8, g as u8]
}

/// Guest `g`'s (1-based) IPv4 address (10.77.200.g: clear of the veth
/// ends' 10.77.0.x and the generator's per-queue 10.77.q+1.x sources).
pub fn guest_ip(g: u32) -> [u8; 4] {
    [10, 77, 200, g as u8]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip_text(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// The wire's templates for queue `q` with `guests` guests: [`WIRE_FLOWS`]
/// flows (a source address block per queue), flow `i` to guest
/// `1 + i % guests`, so consecutive frames cycle over the guests.
pub fn wire_templates(guests: u32, q: u16, frame: usize) -> Vec<Vec<u8>> {
    let mut peer = PEER_IP;
    peer[2] = peer[2].wrapping_add(q as u8 + 1);
    let per_guest: Vec<Vec<Vec<u8>>> = (1..=guests)
        .map(|g| flow_frames(guest_mac(g), PEER_MAC, peer, guest_ip(g), frame, WIRE_FLOWS))
        .collect();
    (0..WIRE_FLOWS as usize)
        .filter_map(|i| {
            per_guest
                .get(i % per_guest.len().max(1))
                .and_then(|f| f.get(i))
                .cloned()
        })
        .collect()
}

/// The guest that guest `g` (1-based) of `guests` sends to: the next one,
/// wrapping.
pub fn neighbour(g: u32, guests: u32) -> u32 {
    g % guests + 1
}

/// One xdpathd with N connected guests on its own topology, and the wire
/// side. Fields drop in order: the guests first, the namespaces last.
pub struct ScalingStand {
    guests: Vec<TestFrontend>,
    generator: Generator,
    sink: Sink,
    daemon: Daemon,
    queue_pairs: u16,
    // Last: everything above lives in it.
    _topo: Topology,
}

impl std::fmt::Debug for ScalingStand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalingStand")
            .field("guests", &self.guests.len())
            .field("queue_pairs", &self.queue_pairs)
            .finish_non_exhaustive()
    }
}

/// Counter readings at one instant.
#[derive(Debug, Clone)]
struct Snap {
    at: Instant,
    sent: u64,
    per_guest: Vec<u64>,
    worker_ticks: u64,
    machine_ticks: u64,
    wire: u64,
    switched: u64,
}

impl ScalingStand {
    /// Starts xdpathd (`--queues queue_pairs`, `--poll-idle-us`) on a fresh
    /// topology with guest 1 from the one-guest flags and guests 2..=N
    /// added through `POST /v1/guests`, connects a frontend in fast mode to
    /// each and waits until the daemon shows all of them connected.
    pub fn new(guests: u32, queue_pairs: u16, poll_idle: Duration) -> Result<Self> {
        ensure!(
            (1..=MAX_GUESTS).contains(&guests),
            "{guests} guests: the scaling case takes 1 to {MAX_GUESTS}"
        );
        let topo = Topology::new(u32::from(queue_pairs))?;
        let (queues, poll) = (
            queue_pairs.to_string(),
            poll_idle.as_micros().min(1000).to_string(),
        );
        let (mac1, ip1) = (mac_text(guest_mac(1)), ip_text(guest_ip(1)));
        let daemon = Daemon::start(
            &topo,
            &[
                "--queues",
                &queues,
                "--poll-idle-us",
                &poll,
                "--guest-mac",
                &mac1,
                "--guest-ip",
                &ip1,
            ],
        )
        .context("starting xdpathd for the scaling case")?;
        let with_log =
            |e: anyhow::Error| e.context(format!("xdpathd's log:\n{}", daemon.log_text()));
        let mut sockets = vec![daemon.vhost.clone()];
        for g in 2..=guests {
            let sock = daemon.dir.join(format!("g{g}.sock"));
            let body = json!({
                "name": format!("g{g}"),
                "mac": mac_text(guest_mac(g)),
                "ips": [ip_text(guest_ip(g))],
                "queues": queue_pairs,
                "vhost_socket": sock,
            });
            daemon
                .call("POST", "/v1/guests", Some(&body))
                .with_context(|| format!("adding guest g{g}"))
                .map_err(with_log)?;
            sockets.push(sock);
        }
        let opts = FrontendOptions {
            queue_pairs,
            enabled_pairs: queue_pairs,
            queue_size: QUEUE_SIZE,
            ..FrontendOptions::default()
        };
        let mut fes = Vec::with_capacity(sockets.len());
        for (i, sock) in sockets.iter().enumerate() {
            let mut fe = TestFrontend::connect(sock, opts.clone())
                .with_context(|| format!("guest {} connects to {}", i + 1, sock.display()))
                .map_err(with_log)?;
            for q in 0..queue_pairs {
                fe.fast_start(q)?;
            }
            fes.push(fe);
        }
        let all_connected = xdpath_tests::wait_until(CONNECT_WAIT, || {
            daemon.call("GET", "/v1/guests", None).is_ok_and(|v| {
                v.as_array().is_some_and(|a| {
                    a.len() == guests as usize && a.iter().all(|g| g["connected"] == json!(true))
                })
            })
        });
        if !all_connected {
            bail!(
                "not all {guests} guests show as connected after {CONNECT_WAIT:?}: {}\nxdpathd's log:\n{}",
                daemon
                    .call("GET", "/v1/guests", None)
                    .map_or_else(|e| e.to_string(), |v| v.to_string()),
                daemon.log_text()
            );
        }
        let peer_if = topo.peer_if.clone();
        let placeholder: Vec<Vec<Vec<u8>>> = (0..queue_pairs)
            .map(|q| wire_templates(guests, q, FRAME))
            .collect();
        let (generator, sink) = topo.in_peer(|| -> Result<_> {
            Ok((
                Generator::new(&peer_if, &placeholder)?,
                Sink::attach(&peer_if)?,
            ))
        })?;
        Ok(Self {
            guests: fes,
            generator,
            sink,
            daemon,
            queue_pairs,
            _topo: topo,
        })
    }

    /// Runs one direction for `warmup` + `secs` with `frame`-byte frames;
    /// the figures cover the `secs` window only.
    pub fn measure(
        &mut self,
        direction: ScalingDirection,
        frame: usize,
        warmup: Duration,
        secs: Duration,
    ) -> Result<ScalingSample> {
        let n = self.guests.len() as u32;
        ensure!(
            direction.applies(n),
            "{} needs at least two guests",
            direction.name()
        );
        let qp = self.queue_pairs;
        if direction == ScalingDirection::WireToGuests {
            let per_queue: Vec<Vec<Vec<u8>>> =
                (0..qp).map(|q| wire_templates(n, q, frame)).collect();
            self.generator.set_templates(&per_queue)?;
        }
        // Guest g's frames to its neighbour (the same on every pair: the
        // guest picks the pair, not a hash).
        let to_neighbour: Vec<Vec<Vec<u8>>> = (1..=n)
            .map(|g| {
                let to = neighbour(g, n);
                flow_frames(
                    guest_mac(to),
                    guest_mac(g),
                    guest_ip(g),
                    guest_ip(to),
                    frame,
                    GUEST_FLOWS,
                )
            })
            .collect();
        let pid = self.daemon.pid().context("xdpathd is not running")?;
        let g2g = direction == ScalingDirection::GuestToGuest;
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let per_guest: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let queues: Vec<u16> = (0..qp).collect();
        let Self {
            guests,
            generator,
            sink,
            daemon,
            ..
        } = self;
        let (sink, daemon): (&Sink, &Daemon) = (sink, daemon);
        let snap = || -> Result<Snap> {
            let at = Instant::now();
            let per: Vec<u64> = per_guest
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            let sent = sent.load(Ordering::Relaxed);
            let worker_ticks = process_threads_cpu(pid, WORKER_THREAD);
            let machine_ticks = machine_busy();
            Ok(Snap {
                at,
                sent,
                per_guest: per,
                worker_ticks,
                machine_ticks,
                wire: sink.dropped()?,
                switched: if g2g { switched(daemon)? } else { 0 },
            })
        };
        let (a, b) = std::thread::scope(|sc| -> Result<(Snap, Snap)> {
            let (stop, sent, per_guest, queues, to_neighbour) =
                (&stop, &sent, &per_guest, &queues, &to_neighbour);
            let driver = sc.spawn(move || {
                pin(1);
                match direction {
                    ScalingDirection::WireToGuests => drain(guests, queues, stop, per_guest),
                    ScalingDirection::GuestToGuest => {
                        exchange(guests, queues, to_neighbour, stop, sent, per_guest)
                    }
                }
            });
            let wire = (!g2g).then(|| {
                let nq = queues.len();
                sc.spawn(move || {
                    pin(0);
                    generator.run(stop, sent, nq)
                })
            });
            std::thread::sleep(warmup);
            let a = snap();
            std::thread::sleep(secs);
            let b = snap();
            stop.store(true, Ordering::Relaxed);
            driver
                .join()
                .map_err(|_| anyhow::anyhow!("the guests' driver panicked"))?;
            if let Some(g) = wire {
                g.join()
                    .map_err(|_| anyhow::anyhow!("generator panicked"))?;
            }
            Ok((a?, b?))
        })?;
        // Let what is in flight settle before the next case.
        std::thread::sleep(Duration::from_millis(50));
        let hz = ticks_per_sec();
        let per_guest: Vec<u64> = a
            .per_guest
            .iter()
            .zip(&b.per_guest)
            .map(|(x, y)| y.saturating_sub(*x))
            .collect();
        Ok(ScalingSample {
            sample: Sample {
                secs: b.at.duration_since(a.at).as_secs_f64(),
                sent: b.sent.saturating_sub(a.sent),
                delivered: per_guest.iter().sum(),
                bridge_cpu_secs: b.worker_ticks.saturating_sub(a.worker_ticks) as f64 / hz,
                machine_cpu_secs: b.machine_ticks.saturating_sub(a.machine_ticks) as f64 / hz,
            },
            per_guest,
            switched: g2g.then(|| b.switched.saturating_sub(a.switched)),
            wire: g2g.then(|| b.wire.saturating_sub(a.wire)),
        })
    }
}

/// Frames xdpathd switched between guests so far (`tx_switched` summed
/// over `GET /v1/guests`).
fn switched(daemon: &Daemon) -> Result<u64> {
    let v = daemon
        .call("GET", "/v1/guests", None)
        .context("reading the guests' counters")?;
    Ok(v.as_array()
        .map(|a| a.iter().filter_map(|g| g["tx_switched"].as_u64()).sum())
        .unwrap_or(0))
}

/// Wire -> guests: every guest's RX vrings emptied in turn (buffers
/// re-posted at once), adding to `per_guest`; a short nap when a whole
/// round found nothing.
fn drain(guests: &mut [TestFrontend], queues: &[u16], stop: &AtomicBool, per_guest: &[AtomicU64]) {
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for (fe, count) in guests.iter_mut().zip(per_guest) {
            let mut got = 0;
            for &q in queues {
                got += fe.fast_rx(q, Duration::ZERO).frames;
            }
            count.fetch_add(got, Ordering::Relaxed);
            moved += got;
        }
        if moved == 0 {
            std::thread::sleep(NAP);
        }
    }
}

/// Guest -> guest: each guest in turn queues a burst to its neighbour on
/// every pair (adding to `sent`) and empties its RX vrings (adding to
/// `per_guest`); a short nap when a whole round moved nothing.
fn exchange(
    guests: &mut [TestFrontend],
    queues: &[u16],
    to_neighbour: &[Vec<Vec<u8>>],
    stop: &AtomicBool,
    sent: &AtomicU64,
    per_guest: &[AtomicU64],
) {
    let mut cursors = vec![0usize; guests.len() * queues.len()];
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for (i, (fe, count)) in guests.iter_mut().zip(per_guest).enumerate() {
            let (mut queued, mut got) = (0, 0);
            for (k, &q) in queues.iter().enumerate() {
                let c = &mut cursors[i * queues.len() + k];
                queued += fe.fast_tx(q, &to_neighbour[i], c, BURST) as u64;
                got += fe.fast_rx(q, Duration::ZERO).frames;
            }
            sent.fetch_add(queued, Ordering::Relaxed);
            count.fetch_add(got, Ordering::Relaxed);
            moved += queued + got;
        }
        if moved == 0 {
            std::thread::sleep(NAP);
        }
    }
}
