//! Part 1: frontend connect/SIGKILL cycles under traffic.
//!
//! One xdpathd with two queue pairs on a 2-queue veth pair. The peer
//! namespace sends a steady stream to the guest's MAC on both queues and
//! counts what the guest sends. Cycles alternate between DPDK's testpmd
//! (virtio_user, `--forward-mode=macswap`: it transmits every frame it
//! receives, back to the sink) and the in-repo frontend as its own process
//! (`xdpath-soak-frontend`: it sends at a fixed rate and receives). Each
//! frontend is SIGKILLed at a random moment: mostly while traffic flows
//! (up to 1 s after it connected), one cycle in eight during its start-up
//! or handshake.
//!
//! Figures: xdpathd's fds and threads before the first cycle, its RSS
//! after a warm-up (a tenth of the cycles, at least 10), and all three at
//! the end, each read with no frontend connected. Checks: the daemon
//! lives through every cycle; at the end its fds and threads equal the
//! start (waiting up to 10 s for the last disconnect to be cleaned up) and
//! its RSS is at most 4 MiB above the warmed-up figure; a fresh frontend
//! still gets traffic both ways; SIGTERM with it connected under traffic
//! ends the daemon within 2 s; testpmd left no hugepages or hugepage
//! files behind.

use crate::guest_proc::GuestProcess;
use crate::plan::{PartKind, Plan};
use crate::procfs::{self, Figures};
use crate::report::{mib, ms, Part};
use crate::wire::{FromGuest, ToGuest};
use crate::xdpathd::{alive, connected, queue_frames, stop_text, stopped_in_time, tail, terminate};
use crate::{stop, GUEST_MAC};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use xdpath_tests::daemon::Daemon;
use xdpath_tests::testpmd::{Testpmd, TestpmdConfig};
use xdpath_tests::topology::Topology;
use xdpath_tests::wait_until;

/// Queue pairs of this part's daemon and frontends.
const QUEUE_PAIRS: u16 = 2;
/// Wire -> guest frames per second.
const TO_GUEST_PPS: u32 = 2000;
/// Guest -> wire frames per second (the in-repo frontend).
const FROM_GUEST_PPS: u32 = 1000;
/// The latest random kill moment after a frontend is up.
const MAX_KILL_DELAY_MS: u64 = 1000;
/// One cycle of each kind in this many kills the frontend during its
/// start or handshake instead of while traffic flows.
const EARLY_KILL_EVERY: u32 = 8;
/// RSS growth allowed between the warm-up and the end.
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// Traffic and outcome counts of one kind of frontend.
#[derive(Debug, Default)]
struct Tally {
    cycles: u64,
    killed_before_up: u64,
    up_with_traffic_both_ways: u64,
    to_guest_frames: u64,
    from_guest_frames: u64,
    connect_ms: Vec<f64>,
}

impl Tally {
    fn json(&self) -> Value {
        let mean = if self.connect_ms.is_empty() {
            Value::Null
        } else {
            json!((self.connect_ms.iter().sum::<f64>() / self.connect_ms.len() as f64).round())
        };
        json!({
            "cycles": self.cycles,
            "killed_before_connected": self.killed_before_up,
            "killed_with_traffic_both_ways": self.up_with_traffic_both_ways,
            "frames_to_guest": self.to_guest_frames,
            "frames_from_guest": self.from_guest_frames,
            "mean_ms_to_connected": mean,
        })
    }
}

/// Waits up to 5 s until no frontend is connected; then the figures.
fn idle_figures(d: &Daemon, pid: u32) -> Result<Figures> {
    wait_until(Duration::from_secs(5), || !connected(d));
    Figures::of(pid)
}

/// Files in /dev/hugepages (testpmd with `--in-memory` makes none).
fn hugepage_files() -> Vec<String> {
    std::fs::read_dir("/dev/hugepages")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs part 1.
pub fn run(plan: &Plan, rng: &mut fastrand::Rng) -> Part {
    let mut p = Part::new("cycles");
    let start = Instant::now();
    if let Err(e) = body(plan, rng, &mut p) {
        p.check(
            "the part ran to its end",
            false,
            crate::xdpathd::tail(&format!("{e:#}"), 20),
        );
    }
    remove_our_hugepage_files();
    p.elapsed = start.elapsed();
    p
}

/// Removes hugepage files of this run's testpmd instances (their EAL file
/// prefix names our pid, see `xdpath_tests::testpmd`), should any be left
/// (the check above reports them first; `--in-memory` makes none).
fn remove_our_hugepage_files() {
    let ours = format!("xdpath-test-{}-", std::process::id());
    for f in hugepage_files().iter().filter(|f| f.starts_with(&ours)) {
        let _ = std::fs::remove_file(std::path::Path::new("/dev/hugepages").join(f));
    }
}

fn body(plan: &Plan, rng: &mut fastrand::Rng, p: &mut Part) -> Result<()> {
    let deadline = Instant::now() + plan.part_budget(PartKind::Cycles);
    let huge0 = procfs::hugepages_free();
    let files0 = hugepage_files();
    Testpmd::binary()?;
    Testpmd::check_hugepages()?;
    let t = Topology::new(u32::from(QUEUE_PAIRS)).context("topology")?;
    let flags = crate::daemon_flags(QUEUE_PAIRS);
    let mut d = Daemon::start(&t, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let pid = alive(&d)?;
    let fds0 = procfs::fd_list(pid)?;
    let threads0 = procfs::thread_names(pid);
    let first = idle_figures(&d, pid)?;
    p.set("start", first.json());

    let to_guest = ToGuest::start(&t.peer_ns, &t.peer_if, TO_GUEST_PPS, crate::to_guest_frame)?;
    let from_guest = FromGuest::start(&t.peer_ns, &t.peer_if, GUEST_MAC)?;
    let (mut dpdk, mut inrepo) = (Tally::default(), Tally::default());
    let warm_after = (plan.cycles / 10).max(10).min(plan.cycles);
    let mut warm: Option<Figures> = None;
    let mut done = 0u32;
    let guest_opts = crate::guest_options(
        &d.vhost,
        QUEUE_PAIRS,
        false,
        FROM_GUEST_PPS,
        Duration::from_secs(60),
    );
    while done < plan.cycles {
        if stop::requested() {
            p.note("stopped by a signal");
            break;
        }
        if Instant::now() >= deadline {
            p.note(format!(
                "time budget reached after {done} of {} cycles",
                plan.cycles
            ));
            break;
        }
        let (rx0, _) = queue_frames(&d);
        let cap0 = from_guest.total();
        let use_dpdk = done.is_multiple_of(2);
        let tally = if use_dpdk { &mut dpdk } else { &mut inrepo };
        tally.cycles += 1;
        let spawned = Instant::now();
        // Some kills aim at the start-up and handshake: a moment up to the
        // mean time to connected (testpmd), or twice that (the in-repo
        // frontend, which connects within milliseconds).
        let early = (done / 2) % EARLY_KILL_EVERY == EARLY_KILL_EVERY - 1;
        let mean_connect_ms =
            (tally.connect_ms.iter().sum::<f64>() / tally.connect_ms.len().max(1) as f64) as u64;
        // (connected: how long it took, if it got there; traffic both ways
        // before the kill)
        let (connect, both) = if use_dpdk {
            let mut cfg = TestpmdConfig::new(&d.vhost, QUEUE_PAIRS, "macswap");
            cfg.mac = Some(GUEST_MAC);
            let mut pmd = Testpmd::spawn(&cfg)?;
            if early {
                stop::sleep(Duration::from_millis(rng.u64(0..=mean_connect_ms.max(1))));
                let up = connected(&d);
                pmd.kill()?;
                (up.then_some(None), false)
            } else {
                let up = wait_until(Duration::from_secs(15), || {
                    connected(&d) || pmd.exited().is_some()
                }) && pmd.exited().is_none();
                if !up {
                    let log = pmd.log();
                    pmd.kill()?;
                    bail!(
                        "testpmd did not connect within 15 s; its output:\n{}",
                        tail(&log, 30)
                    );
                }
                let took = spawned.elapsed();
                stop::sleep(Duration::from_millis(rng.u64(0..=MAX_KILL_DELAY_MS)));
                let (rx1, _) = queue_frames(&d);
                let both = rx1 > rx0 && from_guest.total() > cap0;
                pmd.kill()?;
                (Some(Some(took)), both)
            }
        } else {
            let mut g = GuestProcess::spawn(&guest_opts)?;
            let latest = if early {
                (2 * mean_connect_ms).max(1)
            } else {
                MAX_KILL_DELAY_MS
            };
            stop::sleep(Duration::from_millis(rng.u64(0..=latest)));
            let r = g.report();
            g.kill()?;
            let s = r.last();
            (
                s.map(|s| Some(s.up.saturating_duration_since(spawned))),
                s.is_some_and(|s| s.rx > 0 && s.tx > 0),
            )
        };
        match connect {
            Some(Some(took)) => tally.connect_ms.push(ms(took)),
            Some(None) => {}
            None => tally.killed_before_up += 1,
        }
        if both {
            tally.up_with_traffic_both_ways += 1;
        }
        alive(&d).with_context(|| format!("after cycle {}", done + 1))?;
        let (rx1, _) = queue_frames(&d);
        tally.to_guest_frames += rx1.saturating_sub(rx0);
        tally.from_guest_frames += from_guest.total().saturating_sub(cap0);
        done += 1;
        if done == warm_after {
            warm = Some(idle_figures(&d, pid)?);
        }
        if done.is_multiple_of(50) {
            eprintln!("cycles: {done} of {}", plan.cycles);
        }
    }
    p.set("cycles", done);
    p.set("dpdk", dpdk.json());
    p.set("in_repo", inrepo.json());
    p.set("frames_to_guest_offered", to_guest.sent());

    // The end, with no frontend connected.
    wait_until(Duration::from_secs(5), || !connected(&d));
    let back = wait_until(Duration::from_secs(10), || {
        Figures::of(pid).is_ok_and(|f| f.fds == first.fds && f.threads == first.threads)
    });
    let end = Figures::of(pid)?;
    p.set("end", end.json());
    let fds_detail = if back {
        format!("{} -> {}", first.fds, end.fds)
    } else {
        let fds1 = procfs::fd_list(pid).unwrap_or_default();
        let gone: Vec<_> = fds0.iter().filter(|f| !fds1.contains(f)).collect();
        let new: Vec<_> = fds1.iter().filter(|f| !fds0.contains(f)).collect();
        format!("{} -> {}; new {new:?}; gone {gone:?}", first.fds, end.fds)
    };
    p.check(
        "xdpathd's fds at the end equal the start",
        end.fds == first.fds,
        fds_detail,
    );
    p.check(
        "xdpathd's threads at the end equal the start",
        end.threads == first.threads,
        format!(
            "{} -> {} (start {threads0:?}, end {:?})",
            first.threads,
            end.threads,
            procfs::thread_names(pid)
        ),
    );
    if let Some(w) = &warm {
        p.set("after_warm_up", w.json());
        p.set("warm_up_cycles", warm_after);
        p.check(
            "xdpathd's RSS at the end is at most 4 MiB above the warmed-up RSS",
            end.rss_kib <= w.rss_kib + RSS_SLACK_KIB,
            format!(
                "{:.1} MiB after {warm_after} cycles -> {:.1} MiB (start {:.1} MiB)",
                mib(w.rss_kib),
                mib(end.rss_kib),
                mib(first.rss_kib)
            ),
        );
    } else {
        p.note("too few cycles for a warm-up: RSS not checked");
    }

    // Still a working dataplane.
    let g = GuestProcess::spawn(&guest_opts)?;
    let cap = from_guest.total();
    let works = g.wait_for(Duration::from_secs(10), |r| {
        r.last().is_some_and(|s| s.rx > 0 && s.tx > 0)
    }) && wait_until(Duration::from_secs(5), || from_guest.total() > cap);
    p.check(
        "a fresh frontend after the cycles gets traffic both ways",
        works,
        format!(
            "guest {:?}, frames from the guest at the sink {}",
            g.report().last().map(|s| (s.rx, s.tx)),
            from_guest.total() - cap
        ),
    );
    let (took, status) = terminate(&mut d);
    drop(g);
    p.set("stop_latency_ms", took.map(ms));
    p.check(
        "SIGTERM with a frontend connected under traffic ends xdpathd within 2 s",
        stopped_in_time(took, status),
        stop_text(took, status),
    );
    to_guest.finish()?;
    drop(from_guest);
    drop(d);
    drop(t);

    // testpmd's hugepages came back, and it left no files.
    let back = wait_until(Duration::from_secs(5), || procfs::hugepages_free() >= huge0);
    let files1 = hugepage_files();
    let leaked: Vec<_> = files1.iter().filter(|f| !files0.contains(f)).collect();
    p.set(
        "hugepages_free",
        json!({"start": huge0, "end": procfs::hugepages_free()}),
    );
    p.check(
        "testpmd left no hugepages or hugepage files behind",
        back && leaked.is_empty(),
        format!(
            "free hugepages {huge0} -> {}, new files in /dev/hugepages {leaked:?}",
            procfs::hugepages_free()
        ),
    );
    Ok(())
}
