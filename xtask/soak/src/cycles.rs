//! Part 1: frontend connect/SIGKILL cycles under traffic.
//!
//! One xdpathd with two queue pairs on a 2-queue veth pair and three
//! guests: the shorthand guest `default` and `g2`, `g3` added through
//! `POST /v1/guests`. The peer namespace sends a steady stream to the three
//! guests' MACs (in turn) on both queues and counts what each guest sends.
//! Each cycle picks a guest at random (from the seed) and cycles a
//! frontend on it, alternating between DPDK's testpmd (virtio_user,
//! `--forward-mode=5tswap`: it transmits every frame it receives back to
//! the sink with MACs, addresses and ports swapped, so its frames carry the
//! guest's own MAC and address and pass the daemon's anti-spoofing, which
//! `macswap`'s would not) and the in-repo frontend as its own process
//! (`xdpath-soak-frontend`: it sends at a fixed rate and receives). Each
//! frontend is SIGKILLed at a random moment: mostly while traffic flows
//! (up to 1 s after it connected), one cycle in eight during its start-up
//! or handshake. Meanwhile the other two guests have steady in-repo
//! frontends (started when needed, SIGKILLed when their guest's turn
//! comes) whose traffic must keep flowing.
//!
//! Figures: xdpathd's fds and threads before the first cycle (the three
//! guests added, none connected), its RSS after a warm-up (a tenth of the
//! cycles, at least 10), and all three at the end, each read with no
//! frontend connected. Checks: the daemon lives through every cycle; the
//! steady guests' traffic moved both ways during every cycle of 300 ms or
//! more (unless the wire itself sent a guest fewer than 10 frames then);
//! no frontend ever received a frame for another guest's MAC, nor had one
//! dropped as spoofed; at the end its fds and threads equal the start
//! (fewer of tokio's blocking threads allowed; waiting up to 15 s for the
//! last disconnect to be cleaned up) and its RSS is at most 4 MiB above
//! the warmed-up figure; a fresh frontend on every guest still gets
//! traffic both ways; SIGTERM with them connected under traffic ends the
//! daemon within 2 s; testpmd left no hugepages or hugepage files behind.

use crate::guest_proc::GuestProcess;
use crate::plan::{PartKind, Plan};
use crate::procfs::{self, Figures};
use crate::report::{mib, ms, Part};

use crate::xdpathd::{
    alive, connected, guest_connected, guest_counter, stop_text, stopped_in_time, tail, terminate,
};
use crate::{stop, SoakGuest};
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
/// Guests on the daemon (the shorthand guest and two added ones).
const GUESTS: u8 = 3;
/// Guest -> wire frames per second of a steady frontend.
const STEADY_PPS: u32 = 300;
/// A cycle at least this long must see the steady guests' traffic move.
const STEADY_WINDOW: Duration = Duration::from_millis(300);

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
    Part::run("cycles", |p| {
        let r = body(plan, rng, p);
        remove_our_hugepage_files();
        r
    })
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
    let gs: Vec<SoakGuest> = (1..=GUESTS).map(|k| SoakGuest::steady(k, &d)).collect();
    for g in &gs[1..] {
        d.call("POST", "/v1/guests", Some(&g.spec(false)))
            .with_context(|| format!("adding guest {}", g.name))?;
    }
    let pid = alive(&d)?;
    // Each guest's server thread (`vhost-<name>`) starts after its add is
    // answered: the baseline waits for them.
    wait_until(Duration::from_secs(5), || {
        let names = procfs::thread_names(pid);
        gs.iter()
            .all(|g| names.contains_key(&format!("vhost-{}", g.name)))
    });
    wait_until(Duration::from_secs(5), || !connected(&d));
    let threads0 = procfs::thread_names(pid);
    let (first, fds0) = Figures::settled(pid)?;
    p.set("start", first.json());
    p.set(
        "guests",
        gs.iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
    );

    let n = gs.len();
    let (to_guest, from_guest) =
        crate::wire::to_and_from(&t.peer_ns, &t.peer_if, TO_GUEST_PPS, &gs)?;
    let (mut dpdk, mut inrepo) = (Tally::default(), Tally::default());
    let warm_after = (plan.cycles / 10).max(10).min(plan.cycles);
    let mut warm: Option<Figures> = None;
    let mut done = 0u32;
    let opts =
        |g: &SoakGuest, pps: u32| g.options(QUEUE_PAIRS, false, pps, Duration::from_secs(600));
    // The steady frontends, by guest (None: not running).
    let mut steady: Vec<Option<GuestProcess>> = (0..n).map(|_| None).collect();
    let mut per_guest = vec![0u32; n];
    let mut steady_windows = 0u64;
    let mut starved = 0u64;
    let mut stalls: Vec<Value> = Vec::new();
    let mut stray: u64 = 0;
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
        let gi = rng.usize(0..n);
        let g = &gs[gi];
        per_guest[gi] += 1;
        // The chosen guest's steady frontend goes (SIGKILL: one more
        // abrupt end); the others' are there, connected.
        if let Some(mut s) = steady[gi].take() {
            stray += s.report().totals().2;
            s.kill()?;
        }
        for (k, slot) in steady.iter_mut().enumerate() {
            if k != gi && slot.is_none() {
                *slot = Some(GuestProcess::spawn(&opts(&gs[k], STEADY_PPS))?);
            }
        }
        let steady_up = wait_until(Duration::from_secs(10), || {
            steady.iter().enumerate().all(|(k, s)| {
                k == gi
                    || s.as_ref()
                        .is_some_and(|s| s.report().last().is_some_and(|x| x.rx > 0 && x.tx > 0))
            })
        });
        if !steady_up {
            bail!(
                "the steady frontends did not get traffic both ways within 10 s (cycle {}): {:?}",
                done + 1,
                steady
                    .iter()
                    .map(|s| s
                        .as_ref()
                        .map(|s| (s.report().last().map(|x| (x.rx, x.tx)), s.stderr())))
                    .collect::<Vec<_>>()
            );
        }
        let steady0: Vec<(u64, u64, u64)> = steady
            .iter()
            .map(|s| s.as_ref().map_or((0, 0, 0), |s| s.report().totals()))
            .collect();
        let wire0: Vec<u64> = (0..n).map(|k| to_guest.sent_to(k)).collect();
        let cycle_start = Instant::now();

        let rx0 = guest_counter(&d, &g.name, "rx_frames");
        let cap0 = from_guest.total_from(g.mac);
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
            let mut cfg = TestpmdConfig::new(&g.socket, QUEUE_PAIRS, "5tswap");
            cfg.mac = Some(g.mac);
            let mut pmd = Testpmd::spawn(&cfg)?;
            if early {
                stop::sleep(Duration::from_millis(rng.u64(0..=mean_connect_ms.max(1))));
                let up = guest_connected(&d, &g.name);
                pmd.kill()?;
                (up.then_some(None), false)
            } else {
                let up = wait_until(Duration::from_secs(15), || {
                    guest_connected(&d, &g.name) || pmd.exited().is_some()
                }) && pmd.exited().is_none();
                if !up {
                    let log = pmd.log();
                    pmd.kill()?;
                    bail!(
                        "testpmd did not connect to guest {} within 15 s; its output:\n{}",
                        g.name,
                        tail(&log, 30)
                    );
                }
                let took = spawned.elapsed();
                stop::sleep(Duration::from_millis(rng.u64(0..=MAX_KILL_DELAY_MS)));
                let rx1 = guest_counter(&d, &g.name, "rx_frames");
                let both = rx1 > rx0 && from_guest.total_from(g.mac) > cap0;
                pmd.kill()?;
                (Some(Some(took)), both)
            }
        } else {
            let mut fe = GuestProcess::spawn(&opts(g, FROM_GUEST_PPS))?;
            let latest = if early {
                (2 * mean_connect_ms).max(1)
            } else {
                MAX_KILL_DELAY_MS
            };
            stop::sleep(Duration::from_millis(rng.u64(0..=latest)));
            let r = fe.report();
            fe.kill()?;
            stray += r.totals().2;
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
        let rx1 = guest_counter(&d, &g.name, "rx_frames");
        tally.to_guest_frames += rx1.saturating_sub(rx0);
        tally.from_guest_frames += from_guest.total_from(g.mac).saturating_sub(cap0);
        // The other guests' traffic went on meanwhile.
        // (A window in which the wire itself sent a guest fewer than 10
        // frames, its sender starved of CPU, tells nothing about its RX:
        // noted, not counted.)
        if cycle_start.elapsed() >= STEADY_WINDOW {
            steady_windows += 1;
            for (k, s) in steady.iter().enumerate() {
                let Some(s) = s else { continue };
                let now = s.report().totals();
                let wire = to_guest.sent_to(k).saturating_sub(wire0[k]);
                let rx_stalled = now.0 <= steady0[k].0 && wire >= 10;
                if rx_stalled || now.1 <= steady0[k].1 {
                    stalls.push(json!({"cycle": done + 1, "cycled": g.name,
                        "frontend": if use_dpdk { "dpdk" } else { "in-repo" }, "early_kill": early,
                        "steady": gs[k].name, "ms": ms(cycle_start.elapsed()),
                        "wire_sent_to_it": wire, "rx": [steady0[k].0, now.0],
                        "tx": [steady0[k].1, now.1], "sessions": s.report().sessions.len()}));
                } else if now.0 <= steady0[k].0 {
                    starved += 1;
                }
            }
        }
        done += 1;
        if done == warm_after {
            stray += stop_steady(&mut steady)?;
            warm = Some(idle_figures(&d, pid)?);
        }
        if done.is_multiple_of(50) {
            eprintln!("cycles: {done} of {}", plan.cycles);
        }
    }
    stray += stop_steady(&mut steady)?;
    p.set("cycles", done);
    p.set(
        "cycles_per_guest",
        gs.iter()
            .zip(&per_guest)
            .map(|(g, c)| (g.name.clone(), json!(c)))
            .collect::<serde_json::Map<_, _>>(),
    );
    p.set("dpdk", dpdk.json());
    p.set("in_repo", inrepo.json());
    p.set("frames_to_guests_offered", to_guest.sent());
    p.set(
        "tx_drop_spoofed",
        gs.iter()
            .map(|g| {
                (
                    g.name.clone(),
                    json!(guest_counter(&d, &g.name, "tx_drop_spoofed")),
                )
            })
            .collect::<serde_json::Map<_, _>>(),
    );
    if starved > 0 {
        p.note(format!(
            "{starved} steady-guest windows had fewer than 10 frames from the wire (sender starved)"
        ));
    }
    p.check(
        "the other guests' traffic kept flowing through every cycle",
        stalls.is_empty() && (steady_windows > 0 || done == 0),
        if stalls.is_empty() {
            format!(
                "both ways for the two steady guests in {steady_windows} cycles of 300 ms or more"
            )
        } else {
            format!(
                "{} stalls in {steady_windows} cycles: {}",
                stalls.len(),
                Value::from(stalls.iter().take(10).cloned().collect::<Vec<_>>())
            )
        },
    );

    // The end, with no frontend connected.
    wait_until(Duration::from_secs(5), || !connected(&d));
    let back = wait_until(Duration::from_secs(15), || {
        Figures::of(pid).is_ok_and(|f| f.fds == first.fds)
            && procfs::threads_back(&threads0, &procfs::thread_names(pid))
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
    let threads1 = procfs::thread_names(pid);
    p.check(
        "xdpathd's threads at the end equal the start (the API runtime's may be fewer)",
        procfs::threads_back(&threads0, &threads1),
        format!(
            "{} -> {} (start {threads0:?}, end {threads1:?})",
            first.threads, end.threads
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

    // Still a working dataplane, for every guest.
    let fresh: Vec<GuestProcess> = gs
        .iter()
        .map(|g| GuestProcess::spawn(&opts(g, FROM_GUEST_PPS)))
        .collect::<Result<_>>()?;
    let caps: Vec<u64> = gs.iter().map(|g| from_guest.total_from(g.mac)).collect();
    let works = fresh.iter().all(|f| {
        f.wait_for(Duration::from_secs(10), |r| {
            r.last().is_some_and(|s| s.rx > 0 && s.tx > 0)
        })
    }) && wait_until(Duration::from_secs(5), || {
        gs.iter()
            .zip(&caps)
            .all(|(g, c)| from_guest.total_from(g.mac) > *c)
    });
    p.check(
        "a fresh frontend on every guest after the cycles gets traffic both ways",
        works,
        gs.iter()
            .zip(&fresh)
            .zip(&caps)
            .map(|((g, f), c)| {
                format!(
                    "{}: guest {:?}, at the sink {}",
                    g.name,
                    f.report().last().map(|s| (s.rx, s.tx)),
                    from_guest.total_from(g.mac) - c
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    stray += fresh.iter().map(|f| f.report().totals().2).sum::<u64>();
    p.check(
        "no frontend received a frame for another guest's MAC",
        stray == 0,
        format!("{stray} such frames"),
    );
    let (took, status) = terminate(&mut d);
    drop(fresh);
    p.set("stop_latency_ms", took.map(ms));
    p.check(
        "SIGTERM with every guest connected under traffic ends xdpathd within 2 s",
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

/// SIGKILLs every steady frontend; returns the stray frames they counted.
fn stop_steady(steady: &mut [Option<GuestProcess>]) -> Result<u64> {
    let mut stray = 0;
    for s in steady.iter_mut() {
        if let Some(mut g) = s.take() {
            stray += g.report().totals().2;
            g.kill()?;
        }
    }
    Ok(stray)
}
