//! One test stand: a private topology with one bridge under test on the
//! host end, the wire-side [`Generator`] and [`Sink`] on the peer end, and
//! (for the two real bridges) the in-repo frontend as the guest.
//!
//! ```text
//!   guest (TestFrontend, fixed buffers)          peer netns
//!        |  vhost-user                      [Generator: AF_XDP TX/RX per queue]
//!   bridge under test  --- host_if <==veth==> peer_if [Sink: XDP drop + count]
//!     xdpath: classifier + AF_XDP + vhost-user workers (in this process)
//!     dpdk:   testpmd net_af_xdp <-> net_vhost, io forwarding
//!     limit:  classifier + AF_XDP, a bare loop that drops / sends / echoes
//! ```
//!
//! The stand owns everything it created; dropping it stops the guest, the
//! bridge (testpmd terminated and reaped), the sink and generator, then the
//! namespaces. CPU placement on this 2-CPU machine: the generator (and the
//! pinger) on CPU 0, the guest on CPU 1, the bridge unpinned (xdpath's
//! workers, testpmd's lcores allowed on both CPUs); the limit has no guest
//! and its spinning loop gets CPU 1 to itself (its best case).

use crate::traffic::{flow_frames, Generator, Rtts, Sink, SINK_MAC};
use crate::{Direction, Flows, Sample, System};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_control::Classifier;
use xdpath_dataplane::port::Push;
use xdpath_dataplane::{FramePort, XskPort};
use xdpath_tests::bridge::{guest_sockets, Bridge, GUEST_IP, GUEST_MAC};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::testpmd::{Testpmd, TestpmdConfig};
use xdpath_tests::topology::{Topology, PEER_IP, PEER_MAC};

/// Name of the limit's loop thread (its CPU time is the bridge's).
const LIMIT_THREAD: &str = "bench-limit";
/// Name of xdpath's worker threads (vhost-user-backend's).
const XDPATH_THREAD: &str = "vring_worker";
/// Frames per burst the guest or the limit loop moves at most.
const BURST: usize = 256;
/// Distinct flows per queue in the many-flows cases.
const MANY_FLOWS: u32 = 256;
/// Descriptors per guest vring.
const QUEUE_SIZE: u16 = 1024;

/// The bridge under test.
enum Under {
    Xdpath(Bridge),
    Dpdk {
        pmd: Testpmd,
        sock: PathBuf,
        topo: Topology,
    },
    Limit {
        ports: Vec<XskPort>,
        _classifier: Classifier,
        topo: Topology,
    },
}

/// One bridge with its wire and guest. Fields drop in order: guest first,
/// the bridge and the namespaces last.
pub struct Stand {
    guest: Option<TestFrontend>,
    generator: Generator,
    sink: Sink,
    under: Under,
    queue_pairs: u16,
}

impl std::fmt::Debug for Stand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stand")
            .field("queue_pairs", &self.queue_pairs)
            .finish_non_exhaustive()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn name_thread(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name) {
        // SAFETY: `c` is a NUL-terminated string of at most 15 bytes plus
        // NUL; it names the calling thread only.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

/// CPU time (user + system) in clock ticks of this process's threads
/// named `name`.
fn threads_cpu(name: &str) -> u64 {
    tasks_cpu(std::path::Path::new("/proc/self/task"), name)
}

/// CPU time (user + system) in clock ticks of process `pid`'s threads
/// named `name` (threads that ended are no longer counted).
pub fn process_threads_cpu(pid: u32, name: &str) -> u64 {
    tasks_cpu(&PathBuf::from(format!("/proc/{pid}/task")), name)
}

/// CPU ticks of the threads named `name` under a `/proc/.../task`
/// directory.
fn tasks_cpu(dir: &std::path::Path, name: &str) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| stat_cpu(&t.path().join("stat")))
        .sum()
}

/// utime + stime from a `/proc/.../stat` file, in clock ticks.
pub fn stat_cpu(path: &std::path::Path) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ")" closing comm: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

/// Busy clock ticks of the whole machine (all CPUs, everything but idle
/// and iowait).
pub fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// Clock ticks per second.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Counter readings at one instant.
#[derive(Debug, Clone, Copy)]
struct Snap {
    at: Instant,
    sent: u64,
    delivered: u64,
    bridge_ticks: u64,
    machine_ticks: u64,
}

/// Why `system` cannot run with `queue_pairs` pairs on a veth, if it
/// cannot.
pub fn unsupported(system: System, queue_pairs: u16) -> Option<&'static str> {
    (system == System::Dpdk && queue_pairs > 1).then_some(
        "DPDK 22.11's net_af_xdp takes its queue count from the NIC's combined channels \
         (ETHTOOL_GCHANNELS); veth has separate RX/TX channels and no combined ones, so \
         it refuses queue_count > 1 (\"Specified queue count 2 is larger than combined \
         queue count 1\"); one net_af_xdp port per veth queue (start_queue=i) works, but \
         testpmd forwards whole ports, so two such ports cannot feed the two queue pairs \
         of one net_vhost port",
    )
}

impl Stand {
    /// Builds the stand for `system` with `queue_pairs` pairs (xdpath's
    /// workers poll for `poll_idle` after moving frames).
    pub fn new(system: System, queue_pairs: u16, poll_idle: Duration) -> Result<Self> {
        let opts = FrontendOptions {
            queue_pairs,
            enabled_pairs: queue_pairs,
            queue_size: QUEUE_SIZE,
            ..FrontendOptions::default()
        };
        let (under, guest) = match system {
            System::Xdpath => {
                let b = Bridge::without_wire_sockets(queue_pairs, poll_idle);
                let fe = TestFrontend::connect(&b.sock, opts)?;
                (Under::Xdpath(b), Some(fe))
            }
            System::Dpdk => {
                let topo = Topology::new(u32::from(queue_pairs))?;
                let sock = std::env::temp_dir().join(format!(
                    "xdpath-bench-{}-{}.sock",
                    std::process::id(),
                    topo.host_if
                ));
                let mut cfg =
                    TestpmdConfig::bridge(&topo.host_if, &topo.host_ns, &sock, queue_pairs);
                // Both CPUs allowed, like xdpath's workers.
                cfg.lcores = "0@(0,1),1@(0,1)".into();
                cfg.mbufs = 32768;
                let mut pmd = Testpmd::spawn(&cfg)?;
                let fe = match TestFrontend::connect(&sock, opts) {
                    Ok(fe) => fe,
                    Err(e) => {
                        let _ = pmd.terminate();
                        return Err(e.context(format!(
                            "connecting to testpmd's vhost socket; its log:\n{}",
                            pmd.log()
                        )));
                    }
                };
                (Under::Dpdk { pmd, sock, topo }, Some(fe))
            }
            System::Limit => {
                let topo = Topology::new(u32::from(queue_pairs))?;
                let (classifier, ports) = guest_sockets(&topo, u32::from(queue_pairs), 4096)?;
                (
                    Under::Limit {
                        ports,
                        _classifier: classifier,
                        topo,
                    },
                    None,
                )
            }
        };
        let topo = match &under {
            Under::Xdpath(b) => b.topology(),
            Under::Dpdk { topo, .. } | Under::Limit { topo, .. } => topo,
        };
        let peer_if = topo.peer_if.clone();
        let placeholder = vec![
            flow_frames(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, 64, 1);
            usize::from(queue_pairs)
        ];
        let (generator, mut sink) = topo.in_peer(|| -> Result<_> {
            Ok((
                Generator::new(&peer_if, &placeholder)?,
                Sink::attach(&peer_if)?,
            ))
        })?;
        sink.register(0, generator.fd(0).context("generator socket 0")?)?;
        let mut stand = Self {
            guest,
            generator,
            sink,
            under,
            queue_pairs,
        };
        if let Some(fe) = stand.guest.as_mut() {
            for q in 0..queue_pairs {
                fe.fast_start(q)?;
            }
        }
        Ok(stand)
    }

    /// Where the bridge's CPU time is read.
    fn cpu_source(&self) -> CpuSource {
        match &self.under {
            Under::Xdpath(_) => CpuSource::Threads(XDPATH_THREAD),
            Under::Dpdk { pmd, .. } => CpuSource::Process(pmd.pid()),
            Under::Limit { .. } => CpuSource::Threads(LIMIT_THREAD),
        }
    }

    /// Queues used by a case: one flow hashes to one queue.
    fn queues(&self, flows: Flows) -> Vec<u16> {
        match flows {
            Flows::One => vec![0],
            Flows::Many => (0..self.queue_pairs).collect(),
        }
    }

    /// Runs one throughput case for `warmup` + `secs`; the figures cover
    /// the `secs` window only.
    pub fn measure(
        &mut self,
        direction: Direction,
        frame: usize,
        flows: Flows,
        warmup: Duration,
        secs: Duration,
    ) -> Result<Sample> {
        let queues = self.queues(flows);
        let nflows = match flows {
            Flows::One => 1,
            Flows::Many => MANY_FLOWS,
        };
        // Per queue its own flows (a different source address block).
        let per_queue: Vec<Vec<Vec<u8>>> = (0..self.queue_pairs)
            .map(|q| {
                let mut peer = PEER_IP;
                peer[2] = peer[2].wrapping_add(q as u8 + 1);
                match direction {
                    Direction::WireToGuest => {
                        flow_frames(GUEST_MAC, PEER_MAC, peer, GUEST_IP, frame, nflows)
                    }
                    Direction::GuestToWire => {
                        flow_frames(SINK_MAC, GUEST_MAC, GUEST_IP, peer, frame, nflows)
                    }
                }
            })
            .collect();
        if direction == Direction::WireToGuest {
            self.generator.set_templates(&per_queue)?;
        }
        let cpu = self.cpu_source();
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let delivered = AtomicU64::new(0);
        let Self {
            guest,
            generator,
            sink,
            under,
            ..
        } = self;
        let sink: &Sink = sink;
        let snap = || -> Result<Snap> {
            Ok(Snap {
                at: Instant::now(),
                sent: sent.load(Ordering::Relaxed),
                delivered: match direction {
                    Direction::WireToGuest => delivered.load(Ordering::Relaxed),
                    Direction::GuestToWire => sink.dropped()?,
                },
                bridge_ticks: cpu.ticks(),
                machine_ticks: machine_busy(),
            })
        };
        let (a, b) = std::thread::scope(|sc| -> Result<(Snap, Snap)> {
            let (stop, sent, delivered, queues, per_queue) =
                (&stop, &sent, &delivered, &queues, &per_queue);
            let worker = sc.spawn(move || -> Result<()> {
                match (direction, under, guest.as_mut()) {
                    (Direction::WireToGuest, Under::Limit { ports, .. }, _) => {
                        name_thread(LIMIT_THREAD);
                        pin(1);
                        limit_drop(ports, stop, delivered);
                    }
                    (Direction::GuestToWire, Under::Limit { ports, .. }, _) => {
                        name_thread(LIMIT_THREAD);
                        pin(1);
                        limit_send(ports, queues, per_queue, stop, sent);
                    }
                    (Direction::WireToGuest, _, Some(fe)) => {
                        pin(1);
                        while !stop.load(Ordering::Relaxed) {
                            let b = fe.fast_rx_any(queues, Duration::from_millis(1));
                            delivered.fetch_add(b.frames, Ordering::Relaxed);
                        }
                    }
                    (Direction::GuestToWire, _, Some(fe)) => {
                        pin(1);
                        let mut cursors = vec![0usize; queues.len()];
                        while !stop.load(Ordering::Relaxed) {
                            let mut n = 0;
                            for (i, &q) in queues.iter().enumerate() {
                                let frames = &per_queue[usize::from(q)];
                                n += fe.fast_tx(q, frames, &mut cursors[i], BURST);
                            }
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                            if n == 0 {
                                fe.fast_tx_wait(queues, Duration::from_millis(1));
                            }
                        }
                    }
                    (_, _, None) => anyhow::bail!("no guest on this stand"),
                }
                Ok(())
            });
            let wire = (direction == Direction::WireToGuest).then(|| {
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
            let w = worker
                .join()
                .map_err(|_| anyhow::anyhow!("bench worker panicked"))?;
            if let Some(g) = wire {
                g.join()
                    .map_err(|_| anyhow::anyhow!("generator panicked"))?;
            }
            w?;
            Ok((a?, b?))
        })?;
        // Let what is in flight settle before the next case.
        std::thread::sleep(Duration::from_millis(50));
        let hz = ticks_per_sec();
        Ok(Sample {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            sent: b.sent - a.sent,
            delivered: b.delivered.saturating_sub(a.delivered),
            bridge_cpu_secs: (b.bridge_ticks.saturating_sub(a.bridge_ticks)) as f64 / hz,
            machine_cpu_secs: (b.machine_ticks.saturating_sub(a.machine_ticks)) as f64 / hz,
        })
    }

    /// Request/response round trips through the bridge: the pinger (CPU 0)
    /// sends `frame`-byte requests to the guest, which echoes them (CPU 1;
    /// for the limit, a bare AF_XDP echo loop on the host end).
    pub fn latency(&mut self, frame: usize, count: usize, budget: Duration) -> Result<Rtts> {
        let request = flow_frames(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, frame, 1)
            .pop()
            .context("one template")?;
        let stop = AtomicBool::new(false);
        let Self {
            guest,
            generator,
            under,
            ..
        } = self;
        std::thread::scope(|sc| -> Result<Rtts> {
            let stop = &stop;
            let responder = sc.spawn(move || match (under, guest.as_mut()) {
                (Under::Limit { ports, .. }, _) => {
                    name_thread(LIMIT_THREAD);
                    pin(1);
                    if let Some(p) = ports.first_mut() {
                        limit_echo(p, stop);
                    }
                }
                (_, Some(fe)) => {
                    pin(1);
                    while !stop.load(Ordering::Relaxed) {
                        fe.fast_echo(0, Duration::from_millis(1));
                    }
                }
                (_, None) => {}
            });
            let pinger = sc.spawn(move || {
                pin(0);
                // Let the responder start waiting first.
                std::thread::sleep(Duration::from_millis(20));
                generator.ping(&request, count, budget, Duration::from_millis(100))
            });
            let r = pinger
                .join()
                .map_err(|_| anyhow::anyhow!("pinger panicked"));
            stop.store(true, Ordering::Relaxed);
            responder
                .join()
                .map_err(|_| anyhow::anyhow!("responder panicked"))?;
            r?
        })
    }
}

/// Where a bridge's CPU time is read.
#[derive(Debug, Clone, Copy)]
enum CpuSource {
    /// Threads of this process with this name.
    Threads(&'static str),
    /// A whole process.
    Process(u32),
}

impl CpuSource {
    fn ticks(self) -> u64 {
        match self {
            Self::Threads(name) => threads_cpu(name),
            Self::Process(pid) => stat_cpu(&PathBuf::from(format!("/proc/{pid}/stat"))),
        }
    }
}

/// The limit, wire -> guest: receive and drop on every socket, spinning
/// (never sleeping: the best user space can do with AF_XDP).
fn limit_drop(ports: &mut [XskPort], stop: &AtomicBool, delivered: &AtomicU64) {
    let mut descs = vec![xsk_rs::FrameDesc::default(); BURST];
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0;
        for p in ports.iter_mut() {
            let n = p.rx_consume(&mut descs);
            p.rx_release(&descs[..n]);
            got += n;
        }
        delivered.fetch_add(got as u64, Ordering::Relaxed);
        if got == 0 {
            std::hint::spin_loop();
        }
    }
}

/// The limit, guest -> wire: copy templates into UMEM frames and send.
fn limit_send(
    ports: &mut [XskPort],
    queues: &[u16],
    per_queue: &[Vec<Vec<u8>>],
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let mut cursors = vec![0usize; queues.len()];
    while !stop.load(Ordering::Relaxed) {
        let mut n = 0u64;
        for (i, &q) in queues.iter().enumerate() {
            let Some(p) = ports.get_mut(usize::from(q)) else {
                continue;
            };
            let frames = &per_queue[usize::from(q)];
            p.reap_completions();
            let cap = p.tx_capacity().min(BURST);
            let mut batch = p.tx_batch();
            for _ in 0..cap {
                let f = &frames[cursors[i] % frames.len()];
                cursors[i] += 1;
                let pushed = batch.push(f.len(), |buf| {
                    buf.copy_from_slice(f);
                    Ok::<(), ()>(())
                });
                if !matches!(pushed, Push::Staged) {
                    break;
                }
            }
            let staged = batch.len() as u64;
            if batch.commit().is_ok() {
                n += staged;
            }
        }
        sent.fetch_add(n, Ordering::Relaxed);
        if n == 0 {
            std::thread::yield_now();
        }
    }
}

/// The limit's responder: echo every frame on socket 0 with MACs swapped,
/// spinning.
fn limit_echo(port: &mut XskPort, stop: &AtomicBool) {
    let mut descs = vec![xsk_rs::FrameDesc::default(); 64];
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        port.reap_completions();
        let n = port.rx_consume(&mut descs);
        for d in &descs[..n] {
            let data = port.rx_data(d);
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            if len >= 12 {
                let (dst, src) = buf.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
            }
            let mut batch = port.tx_batch();
            let _ = batch.push(len, |b| {
                b.copy_from_slice(&buf[..len]);
                Ok::<(), ()>(())
            });
            let _ = batch.commit();
        }
        port.rx_release(&descs[..n]);
        if n == 0 {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        // The guest goes first (field order); testpmd is terminated
        // cleanly so it removes its XDP program and libxdp pins.
        if let Under::Dpdk { pmd, sock, .. } = &mut self.under {
            self.guest = None;
            if let Err(e) = pmd.terminate() {
                eprintln!("{e:#}");
            }
            let _ = std::fs::remove_file(sock);
        }
    }
}
