//! The system benchmark behind `cargo xtask bench`: xdpath against DPDK
//! testpmd and the bare AF_XDP limit, on the same veth, with the same
//! wire-side generator and sink and the same guest-side frontend, in one
//! invocation. The binary `xdpath-bench` (`src/main.rs`) is its command
//! line; the topologies, the frontend and the testpmd wrapper come from the
//! test kit (`xdpath-tests`).
//!
//! - [`stand`]: one topology with one bridge under test, its wire and its
//!   guest, and how a case is measured on it.
//! - [`traffic`]: the wire side's traffic: generator, sink and pinger.
//! - [`scaling`]: the multi-guest scaling case: one real `xdpathd` with
//!   1, 2, 4, 8 guests, wire -> guests and guest -> guest.
//! - [`report`]: statistics over runs (median, min, max), ratios, and the
//!   results written as JSON, Markdown and SVG.
//!
//! [`run`] interleaves the systems: every run builds a fresh stand per
//! (queue pairs, system) and measures every case on it, then a fresh
//! scaling stand per guest count, so a drift of the shared machine hits
//! all systems and guest counts alike; ratios are taken per run and then
//! summarised.

pub mod report;
pub mod scaling;
pub mod stand;
pub mod traffic;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A bridge under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    /// xdpath's dataplane (classifier + AF_XDP + vhost-user workers).
    Xdpath,
    /// DPDK 22.11 testpmd: net_af_xdp <-> net_vhost, io forwarding.
    Dpdk,
    /// Bare AF_XDP on the host end, no guest: receive-and-drop (wire ->
    /// guest), send (guest -> wire), echo (latency).
    Limit,
}

impl System {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Xdpath => "xdpath",
            Self::Dpdk => "dpdk",
            Self::Limit => "limit",
        }
    }

    /// All systems, in report order.
    pub const ALL: [System; 3] = [System::Xdpath, System::Dpdk, System::Limit];
}

/// Which way frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Generator on the peer -> bridge -> guest RX.
    WireToGuest,
    /// Guest TX -> bridge -> sink on the peer.
    GuestToWire,
}

impl Direction {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::WireToGuest => "wire->guest",
            Self::GuestToWire => "guest->wire",
        }
    }
}

/// How many flows the traffic has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flows {
    /// 256 UDP flows per queue, on every queue pair.
    Many,
    /// One UDP flow: one queue pair carries everything.
    One,
}

impl Flows {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Many => "many",
            Self::One => "one",
        }
    }
}

/// One throughput case (everything but the system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Case {
    /// Queue pairs of the stand.
    pub queue_pairs: u16,
    /// Direction.
    pub direction: Direction,
    /// Frame bytes (Ethernet header included, no FCS).
    pub frame: usize,
    /// Flows.
    pub flows: Flows,
}

impl Case {
    /// Short label, e.g. `1qp w->g 64B many`.
    pub fn label(&self) -> String {
        format!(
            "{}qp {} {}B {}",
            self.queue_pairs,
            match self.direction {
                Direction::WireToGuest => "w->g",
                Direction::GuestToWire => "g->w",
            },
            self.frame,
            self.flows.name()
        )
    }
}

/// What one measurement window saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Window length.
    pub secs: f64,
    /// Frames offered: completed by the generator, or queued by the guest.
    pub sent: u64,
    /// Frames that arrived: in the guest, or counted by the sink.
    pub delivered: u64,
    /// CPU seconds of the bridge (xdpath's workers, testpmd's process, the
    /// limit's loop).
    pub bridge_cpu_secs: f64,
    /// Busy CPU seconds of the whole machine (generator, kernel, guest,
    /// bridge).
    pub machine_cpu_secs: f64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs of every case (figures are medians over them).
    pub runs: usize,
    /// Measurement window per case.
    pub secs: f64,
    /// Warm-up before each window.
    pub warmup: f64,
    /// Frame sizes.
    pub frames: Vec<usize>,
    /// Queue pair counts.
    pub queue_pairs: Vec<u16>,
    /// Flow counts.
    pub flows: Vec<Flows>,
    /// Systems.
    pub systems: Vec<System>,
    /// Round trips per latency run.
    pub latency_samples: usize,
    /// Seconds the idle daemon is watched (0 = skip).
    pub idle_secs: f64,
    /// xdpath's adaptive polling ([`xdpath_dataplane::NetConfig::poll_idle`]).
    pub poll_idle: Duration,
    /// Guest counts of the scaling case (empty = skip it; it runs only
    /// when xdpath is among `systems`).
    pub guests: Vec<u32>,
    /// Queue pairs of the scaling case's daemon and of every guest.
    pub scaling_queue_pairs: u16,
    /// Where results go.
    pub out: PathBuf,
}

impl Options {
    /// The full benchmark: 5 runs of 1 s per case.
    pub fn full(out: PathBuf) -> Self {
        Self {
            runs: 5,
            secs: 1.0,
            warmup: 0.3,
            frames: vec![64, 512, 1500],
            queue_pairs: vec![1, 2],
            flows: vec![Flows::Many, Flows::One],
            systems: System::ALL.to_vec(),
            latency_samples: 20_000,
            idle_secs: 10.0,
            poll_idle: xdpath_dataplane::backend::DEFAULT_POLL_IDLE,
            guests: vec![1, 2, 4, 8],
            scaling_queue_pairs: 2,
            out,
        }
    }

    /// A smoke run: every system and direction once, 64-byte frames, one
    /// queue pair, short windows; the scaling case with 1 and 2 guests.
    pub fn quick(out: PathBuf) -> Self {
        Self {
            runs: 1,
            secs: 0.3,
            warmup: 0.1,
            frames: vec![64],
            queue_pairs: vec![1],
            flows: vec![Flows::Many],
            systems: System::ALL.to_vec(),
            latency_samples: 500,
            idle_secs: 1.0,
            poll_idle: xdpath_dataplane::backend::DEFAULT_POLL_IDLE,
            guests: vec![1, 2],
            scaling_queue_pairs: 2,
            out,
        }
    }
}

/// One latency run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// System.
    pub system: System,
    /// Run index.
    pub run: usize,
    /// Round-trip times, nanoseconds, sorted.
    pub rtts: Vec<u64>,
    /// Requests without an answer.
    pub lost: u64,
}

/// CPU use while idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    /// Seconds watched.
    pub secs: f64,
    /// xdpathd with a guest attached: percent of one core.
    pub xdpathd_percent: f64,
    /// testpmd bridging with a guest attached: percent of one core.
    pub testpmd_percent: f64,
}

/// One window of the scaling case.
#[derive(Debug, Clone)]
pub struct ScalingRun {
    /// Guests on the daemon.
    pub guests: u32,
    /// Direction.
    pub direction: scaling::ScalingDirection,
    /// Run index.
    pub run: usize,
    /// What the window saw.
    pub sample: scaling::ScalingSample,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// (system, case, run, sample).
    pub samples: Vec<(System, Case, usize, Sample)>,
    /// The scaling case's windows.
    pub scaling: Vec<ScalingRun>,
    /// Latency runs.
    pub latency: Vec<LatencyRun>,
    /// Idle CPU.
    pub idle: Option<Idle>,
    /// (system, queue pairs, why) of stands that cannot be built.
    pub skipped: Vec<(System, u16, String)>,
    /// Wall time of the invocation.
    pub wall_secs: f64,
}

/// Runs the benchmark as `opts` says, printing progress, and writes the
/// results to `opts.out`. Needs root.
pub fn run(opts: &Options) -> Result<Results> {
    let start = Instant::now();
    let mut res = Results::default();
    let warmup = Duration::from_secs_f64(opts.warmup);
    let secs = Duration::from_secs_f64(opts.secs);
    for run in 0..opts.runs {
        for &qp in &opts.queue_pairs {
            for &system in &opts.systems {
                if let Some(why) = stand::unsupported(system, qp) {
                    if run == 0 {
                        println!("skipping {} with {qp} queue pairs: {why}", system.name());
                        res.skipped.push((system, qp, why.to_string()));
                    }
                    continue;
                }
                let mut stand =
                    stand::Stand::new(system, qp, opts.poll_idle).with_context(|| {
                        format!("setting up {} with {qp} queue pairs", system.name())
                    })?;
                for direction in [Direction::WireToGuest, Direction::GuestToWire] {
                    for &frame in &opts.frames {
                        for &flows in &opts.flows {
                            let case = Case {
                                queue_pairs: qp,
                                direction,
                                frame,
                                flows,
                            };
                            let s = stand
                                .measure(direction, frame, flows, warmup, secs)
                                .with_context(|| format!("{} {}", system.name(), case.label()))?;
                            println!(
                                "run {}/{} {:7} {:24} {:7.3} Mpps delivered, loss {:5.2}%",
                                run + 1,
                                opts.runs,
                                system.name(),
                                case.label(),
                                s.delivered as f64 / s.secs / 1e6,
                                report::loss(&s) * 100.0
                            );
                            res.samples.push((system, case, run, s));
                        }
                    }
                }
                if qp == 1 && opts.latency_samples > 0 {
                    let r = stand
                        .latency(64, opts.latency_samples, Duration::from_secs(5))
                        .with_context(|| format!("{} latency", system.name()))?;
                    let mut rtts = r.samples;
                    rtts.sort_unstable();
                    println!(
                        "run {}/{} {:7} latency 64B: p50 {:.1} us, p99 {:.1} us over {} round trips, {} lost",
                        run + 1,
                        opts.runs,
                        system.name(),
                        report::percentile(&rtts, 50.0) as f64 / 1e3,
                        report::percentile(&rtts, 99.0) as f64 / 1e3,
                        rtts.len(),
                        r.lost
                    );
                    res.latency.push(LatencyRun {
                        system,
                        run,
                        rtts,
                        lost: r.lost,
                    });
                }
            }
        }
        if opts.systems.contains(&System::Xdpath) {
            scale(opts, run, &mut res)?;
        }
    }
    if opts.idle_secs > 0.0 {
        let idle = idle(Duration::from_secs_f64(opts.idle_secs))?;
        println!(
            "idle {:.0} s with a guest attached: xdpathd {:.3}% of a core, testpmd {:.1}%",
            idle.secs, idle.xdpathd_percent, idle.testpmd_percent
        );
        res.idle = Some(idle);
    }
    res.wall_secs = start.elapsed().as_secs_f64();
    report::write(opts, &res)?;
    Ok(res)
}

/// One run of the scaling case: a fresh [`scaling::ScalingStand`] per
/// guest count, every direction that applies measured on it.
fn scale(opts: &Options, run: usize, res: &mut Results) -> Result<()> {
    let warmup = Duration::from_secs_f64(opts.warmup);
    let secs = Duration::from_secs_f64(opts.secs);
    let qp = opts.scaling_queue_pairs;
    for &n in &opts.guests {
        let mut stand = scaling::ScalingStand::new(n, qp, opts.poll_idle)
            .with_context(|| format!("setting up xdpathd with {n} guests, {qp} queue pairs"))?;
        for direction in scaling::ScalingDirection::ALL {
            if !direction.applies(n) {
                continue;
            }
            let s = stand
                .measure(direction, scaling::FRAME, warmup, secs)
                .with_context(|| format!("{n} guests {}", direction.name()))?;
            let mpps = report::fps(&s.sample) / 1e6;
            println!(
                "run {}/{} xdpathd {n} guests {qp}qp {:13} {mpps:7.3} Mpps delivered, loss {:5.2}%, worker CPU {:.2} us/frame{}",
                run + 1,
                opts.runs,
                direction.name(),
                report::loss(&s.sample) * 100.0,
                report::per_mframe(s.sample.bridge_cpu_secs, &s.sample),
                s.wire
                    .map_or(String::new(), |w| format!(", {w} frames on the wire")),
            );
            res.scaling.push(ScalingRun {
                guests: n,
                direction,
                run,
                sample: s,
            });
        }
    }
    Ok(())
}

/// The real `xdpathd` and a testpmd bridge, each with a guest attached and
/// no traffic, watched side by side for `secs`.
fn idle(secs: Duration) -> Result<Idle> {
    use xdpath_tests::daemon::Daemon;
    use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
    use xdpath_tests::testpmd::{Testpmd, TestpmdConfig};
    use xdpath_tests::topology::Topology;

    let t1 = Topology::new(1)?;
    let d = Daemon::start(&t1, &[])?;
    let mut fe1 = TestFrontend::connect(&d.vhost, FrontendOptions::default())?;
    fe1.fast_start(0)?;
    let pid = d.pid().context("xdpathd is not running")?;

    let t2 = Topology::new(1)?;
    let sock = std::env::temp_dir().join(format!("xdpath-bench-idle-{}.sock", std::process::id()));
    let mut cfg = TestpmdConfig::bridge(&t2.host_if, &t2.host_ns, &sock, 1);
    cfg.lcores = "0@(0,1),1@(0,1)".into();
    let mut pmd = Testpmd::spawn(&cfg)?;
    let fe2 = TestFrontend::connect(&sock, FrontendOptions::default());
    let measured = (|| -> Result<Idle> {
        let mut fe2 = fe2?;
        fe2.fast_start(0)?;
        // Let both settle after the handshake.
        std::thread::sleep(Duration::from_millis(500));
        let p1 = PathBuf::from(format!("/proc/{pid}/stat"));
        let p2 = PathBuf::from(format!("/proc/{}/stat", pmd.pid()));
        let (a1, a2, t0) = (stand::stat_cpu(&p1), stand::stat_cpu(&p2), Instant::now());
        std::thread::sleep(secs);
        let (b1, b2, dt) = (stand::stat_cpu(&p1), stand::stat_cpu(&p2), t0.elapsed());
        let hz = stand::ticks_per_sec();
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / dt.as_secs_f64() * 100.0;
        drop(fe2);
        Ok(Idle {
            secs: dt.as_secs_f64(),
            xdpathd_percent: pct(a1, b1),
            testpmd_percent: pct(a2, b2),
        })
    })();
    let _ = pmd.terminate();
    let _ = std::fs::remove_file(&sock);
    drop(fe1);
    drop(d);
    measured
}

/// The machine, for the report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |s| s.trim().to_string());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let dpdk = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "dpdk-dev"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    json!({
        "cpu_model": model,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "dpdk": dpdk,
    })
}
