//! Part 2: `kill -9` and restart of xdpathd under traffic, with a guest
//! that reconnects.
//!
//! One xdpathd with two queue pairs and three guests: the shorthand guest
//! `default`, `g2` and `g3` added once through `POST /v1/guests` (`g3` in
//! client mode: its frontend listens and xdpathd connects, redialling
//! every 50 ms); some exact and prefix rules added first (rules naming
//! `default` and `g2` steer parts of the wire -> guest stream), and the
//! rule and guest listings kept. Each guest is `xdpath-soak-frontend
//! --reconnect` (`g3`'s also `--listen`): when the daemon dies it redials
//! (or waits for the daemon to connect) until a session comes up,
//! renegotiates with fresh memory and resumes. The peer namespace sends
//! the wire -> guest stream to the three guests in turn, counts each
//! guest's frames, and pings the host address every 10 ms with a raw ICMP
//! socket.
//!
//! Each round: traffic for a random moment, SIGKILL, restart with the same
//! arguments and state directory (the guests are restored from it, never
//! added again), then wait for both directions of every guest: its next
//! session received a frame, and the sink captured a frame of that
//! session (the session number is the guest's UDP source port). A guest's
//! resume time runs from the SIGKILL to the later of the two, so it
//! includes the daemon's whole start-up.
//!
//! Checks: every guest resumed within 3 s of every kill; the rule and
//! guest listings after every restart equal the ones before the first
//! (same names, ids, MACs, sockets, modes); the host lost no ping (XDP
//! attaching on veth does not reset its queues, so the count is exact); no
//! guest received a frame for another guest's MAC; SIGTERM at the end,
//! with the guests connected under traffic, ends the daemon within 2 s.

use crate::guest_proc::GuestProcess;
use crate::plan::{PartKind, Plan};
use crate::report::{median_max, ms, Part};
use crate::wire::Pinger;
use crate::xdpathd::{
    guest_connected, guest_declarations, stop_text, stopped_in_time, tail, terminate,
};
use crate::{stop, SoakGuest};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use xdpath_tests::daemon::Daemon;
use xdpath_tests::topology::{Topology, HOST_IP};
use xdpath_tests::wait_until;

const QUEUE_PAIRS: u16 = 2;
const TO_GUEST_PPS: u32 = 2000;
const FROM_GUEST_PPS: u32 = 1000;
/// Ping interval to the host address.
const PING_EVERY: Duration = Duration::from_millis(10);
/// The resume time the issue allows.
pub const RESUME_LIMIT: Duration = Duration::from_secs(3);
/// Starts tried after a kill before the part gives up.
const START_ATTEMPTS: u32 = 5;
/// How long a round waits for traffic to resume before it gives up.
const RESUME_WAIT: Duration = Duration::from_secs(15);
/// Guests on the daemon (the shorthand guest and two added ones).
const GUESTS: u8 = 3;
/// The guest (index) whose frontend listens: client mode.
const CLIENT: usize = 2;

/// The rules added before the first kill (after the guests).
fn rules(gs: &[SoakGuest]) -> (Vec<Value>, Vec<Value>) {
    let ip = |g: &SoakGuest| std::net::Ipv4Addr::from(g.ip).to_string();
    let mut flows: Vec<Value> = gs
        .iter()
        .take(2)
        .map(|g| {
            json!({
                "src": "10.77.0.2", "dst": ip(g), "proto": "udp",
                "src_port": crate::TO_GUEST_SPORT, "dst_port": crate::TO_GUEST_PORT,
                "action": "guest", "guest": g.name
            })
        })
        .collect();
    for i in 0..24u32 {
        flows.push(json!({
            "src": format!("10.66.{}.{}", i / 200, i % 200 + 1), "dst": "10.77.0.1",
            "proto": if i % 2 == 0 { "udp" } else { "tcp" }, "dst_port": 5000 + i, "action": "drop"
        }));
    }
    flows.push(json!({
        "src": "fd00::2", "dst": "fd00::10", "proto": "tcp",
        "src_port": 4000, "dst_port": 80, "action": "drop"
    }));
    let mut prefixes: Vec<Value> = (0..8u32)
        .map(|i| json!({"prefix": format!("10.{}.0.0/16", 90 + i), "action": "drop"}))
        .collect();
    prefixes.push(json!({"prefix": "fd00:88::/32", "action": "drop"}));
    if let Some(g) = gs.get(CLIENT) {
        prefixes.push(json!({"prefix": "10.89.0.0/16", "action": "guest", "guest": g.name}));
    }
    (flows, prefixes)
}

/// The rule listing (exact and prefix rules).
fn listing(d: &Daemon) -> Result<Value> {
    let flows = d.call("GET", "/v1/flows", None)?;
    let prefixes = d.call("GET", "/v1/prefixes", None)?;
    Ok(json!({"flows": flows, "prefixes": prefixes}))
}

/// Runs part 2.
pub fn run(plan: &Plan, rng: &mut fastrand::Rng) -> Part {
    Part::run("restarts", |p| body(plan, rng, p))
}

fn body(plan: &Plan, rng: &mut fastrand::Rng, p: &mut Part) -> Result<()> {
    let deadline = Instant::now() + plan.part_budget(PartKind::Restarts);
    let t = Topology::new(u32::from(QUEUE_PAIRS)).context("topology")?;
    let flags = crate::daemon_flags(QUEUE_PAIRS);
    let mut d = Daemon::start(&t, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut gs: Vec<SoakGuest> = (1..=GUESTS).map(|k| SoakGuest::steady(k, &d)).collect();
    if let Some(g) = gs.get_mut(CLIENT) {
        // A client-mode guest's socket is its frontend's.
        g.socket = d.dir.join(format!("{}-frontend.sock", g.name));
    }
    for (i, g) in gs.iter().enumerate().skip(1) {
        d.call("POST", "/v1/guests", Some(&g.spec(i == CLIENT)))
            .with_context(|| format!("adding guest {}", g.name))?;
    }
    let (flows, prefixes) = rules(&gs);
    for f in &flows {
        d.call("POST", "/v1/flows", Some(f))
            .with_context(|| format!("adding {f}"))?;
    }
    for f in &prefixes {
        d.call("POST", "/v1/prefixes", Some(f))
            .with_context(|| format!("adding {f}"))?;
    }
    let rules0 = listing(&d)?;
    let guests0 = guest_declarations(&d)?;
    p.set(
        "rules",
        json!({"flows": flows.len(), "prefixes": prefixes.len()}),
    );
    p.set("guests", guests0.clone());

    let n = gs.len();
    let (to_guest, from_guest) =
        crate::wire::to_and_from(&t.peer_ns, &t.peer_if, TO_GUEST_PPS, &gs)?;
    let pinger = Pinger::start(&t.peer_ns, HOST_IP, PING_EVERY)?;
    let frontends: Vec<GuestProcess> = gs
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut o = g.options(
                QUEUE_PAIRS,
                true,
                FROM_GUEST_PPS / GUESTS as u32,
                plan.part_budget(PartKind::Restarts) + Duration::from_secs(120),
            );
            o.listen = i == CLIENT;
            GuestProcess::spawn(&o)
        })
        .collect::<Result<_>>()?;
    // When guest i's session n had traffic both ways (the later of its
    // first frame received and the sink's first frame of that session).
    let flowing = |i: usize, n: u64| {
        frontends[i]
            .report()
            .sessions
            .iter()
            .find(|s| s.n == n)
            .and_then(|s| s.first_rx)
            .zip(from_guest.first_with_sport(gs[i].mac, crate::session_port(n)))
            .map(|(a, b)| a.max(b))
    };
    if !wait_until(RESUME_WAIT, || (0..n).all(|i| flowing(i, 1).is_some())) {
        bail!(
            "guest traffic never flowed both ways before the first kill: {}",
            gs.iter()
                .zip(&frontends)
                .map(|(g, f)| format!(
                    "{}: {:?}, sink {}, stderr {}",
                    g.name,
                    f.report().last(),
                    from_guest.total_from(g.mac),
                    f.stderr()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    // Per guest, the resume time of each restart; and the time until the
    // last of them was back.
    let mut resume: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut all_back = Vec::new();
    let mut from_start = Vec::new();
    let mut daemon_start = Vec::new();
    let mut rules_changed = Vec::new();
    let mut guests_changed = Vec::new();
    let mut not_resumed = Vec::new();
    let mut failed_starts = Vec::new();
    let mut done = 0u32;
    while done < plan.restarts {
        if stop::requested() {
            p.note("stopped by a signal");
            break;
        }
        if Instant::now() >= deadline {
            p.note(format!(
                "time budget reached after {done} of {} restarts",
                plan.restarts
            ));
            break;
        }
        if !stop::sleep(Duration::from_millis(rng.u64(200..=1200))) {
            continue;
        }
        let sessions: Vec<u64> = frontends
            .iter()
            .map(|f| f.report().sessions.len() as u64)
            .collect();
        let killed = Instant::now();
        d.kill9();
        let spawned = Instant::now();
        done += 1;
        // A start that fails is a finding, not the end of the part: it is
        // recorded and retried (the resume time keeps running).
        let mut attempt = 1;
        while let Err(e) = d.spawn() {
            // The daemon's own message is the last line of its log.
            let why = tail(format!("{e:#}").trim_end(), 1);
            failed_starts.push(json!({"restart": done, "attempt": attempt, "error": why}));
            if attempt == START_ATTEMPTS {
                bail!("xdpathd did not start after kill -9 number {done} in {attempt} attempts: {why}");
            }
            attempt += 1;
            // Reap the failed one before the next attempt.
            d.kill9();
            stop::sleep(Duration::from_millis(200));
        }
        daemon_start.push(spawned.elapsed());
        let rules = listing(&d)?;
        if rules != rules0 {
            rules_changed.push(json!({"restart": done, "listing": rules}));
        }
        let guests = guest_declarations(&d)?;
        if guests != guests0 {
            guests_changed.push(json!({"restart": done, "listing": guests}));
        }
        // Per guest, the first session after the kill that gets traffic
        // both ways (a session may also be cut short while the daemon
        // starts).
        let mut at: Vec<Option<std::time::Instant>> = vec![None; n];
        wait_until(RESUME_WAIT, || {
            for (i, slot) in at.iter_mut().enumerate() {
                if slot.is_none() {
                    let now = frontends[i].report().sessions.len() as u64;
                    *slot = (sessions[i] + 1..=now).find_map(|s| flowing(i, s));
                }
            }
            at.iter().all(Option::is_some)
        });
        for (i, a) in at.iter().enumerate() {
            match a {
                Some(a) => resume[i].push(a.saturating_duration_since(killed)),
                None => not_resumed.push(json!({
                    "restart": done,
                    "guest": gs[i].name,
                    "frontend": format!("{:?}", frontends[i].report().last()),
                    "retries": frontends[i].report().retries,
                    "last_retry": frontends[i].report().last_retry,
                })),
            }
        }
        if let Some(last) = at
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max())
        {
            all_back.push(last.saturating_duration_since(killed));
            from_start.push(last.saturating_duration_since(spawned));
        }
        if done.is_multiple_of(10) {
            eprintln!("restarts: {done} of {}", plan.restarts);
        }
    }
    p.set("restarts", done);
    let mm =
        |v: &[Duration]| median_max(v).map(|(m, x)| json!({"median_ms": ms(m), "max_ms": ms(x)}));
    p.set("guest_resume_after_kill", mm(&all_back));
    p.set(
        "guest_resume_per_guest",
        gs.iter()
            .zip(&resume)
            .map(|(g, r)| (g.name.clone(), mm(r).unwrap_or(Value::Null)))
            .collect::<serde_json::Map<_, _>>(),
    );
    p.set("guest_resume_after_restart_began", mm(&from_start));
    p.set("daemon_start_until_api", mm(&daemon_start));
    p.set(
        "guest_sessions",
        gs.iter()
            .zip(&frontends)
            .map(|(g, f)| (g.name.clone(), json!(f.report().sessions.len())))
            .collect::<serde_json::Map<_, _>>(),
    );
    p.set(
        "guest_redials_refused",
        gs.iter()
            .zip(&frontends)
            .map(|(g, f)| (g.name.clone(), json!(f.report().retries)))
            .collect::<serde_json::Map<_, _>>(),
    );

    // SIGTERM with the guests connected under traffic.
    wait_until(Duration::from_secs(5), || {
        gs.iter().all(|g| guest_connected(&d, &g.name))
    });
    let (took, status) = terminate(&mut d);
    p.set("stop_latency_ms", took.map(ms));

    let pings = pinger.finish()?;
    to_guest.finish()?;
    let stray: u64 = frontends.iter().map(|f| f.report().totals().2).sum();
    drop(frontends);
    p.set(
        "host_pings",
        json!({"sent": pings.sent, "received": pings.received, "lost": pings.sent - pings.received,
               "lost_at_ms": pings.lost.iter().map(|(s, at)| json!([s, ms(*at)])).collect::<Vec<_>>()}),
    );

    p.set("failed_starts", Value::from(failed_starts.clone()));
    p.check(
        "xdpathd starts at the first attempt after every kill -9",
        failed_starts.is_empty() && done > 0,
        if failed_starts.is_empty() {
            format!("{done} of {done}")
        } else {
            format!(
                "{} failed attempt(s) (retried after 200 ms): {}",
                failed_starts.len(),
                Value::from(failed_starts.clone())
            )
        },
    );
    p.check(
        "every guest's traffic resumed after every restart",
        not_resumed.is_empty() && done > 0,
        if not_resumed.is_empty() {
            format!(
                "{n} guests ({} in client mode), {done} of {done}",
                gs[CLIENT].name
            )
        } else {
            format!(
                "not within {RESUME_WAIT:?}: {}",
                Value::from(not_resumed.clone())
            )
        },
    );
    let max = resume
        .iter()
        .filter_map(|r| median_max(r).map(|(_, x)| x))
        .max();
    p.check(
        "every guest's traffic resumes within 3 s of each kill -9 (both directions)",
        max.is_some_and(|x| x < RESUME_LIMIT) && not_resumed.is_empty(),
        gs.iter()
            .zip(&resume)
            .map(|(g, r)| {
                median_max(r).map_or(format!("{}: no restart", g.name), |(m, x)| {
                    format!("{}: median {:.0} ms, max {:.0} ms", g.name, ms(m), ms(x))
                })
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    p.check(
        "the guests are restored from the state directory after every restart",
        guests_changed.is_empty(),
        if guests_changed.is_empty() {
            format!("{n} guests with the same ids, MACs, sockets and modes, {done} restarts")
        } else {
            format!("before {guests0}; changed: {}", Value::from(guests_changed))
        },
    );
    p.check(
        "the rules are intact after every restart",
        rules_changed.is_empty(),
        if rules_changed.is_empty() {
            format!(
                "{} exact and {} prefix rules, {done} restarts",
                flows.len(),
                prefixes.len()
            )
        } else {
            format!("before {rules0}; changed: {}", Value::from(rules_changed))
        },
    );
    p.check(
        "no guest received a frame for another guest's MAC",
        stray == 0,
        format!("{stray} such frames"),
    );
    p.check(
        "host traffic on the same NIC lost nothing",
        pings.sent > 0 && pings.received == pings.sent,
        format!(
            "{} pings every {PING_EVERY:?}, {} lost{}",
            pings.sent,
            pings.sent - pings.received,
            if pings.lost.is_empty() {
                String::new()
            } else {
                let at: Vec<String> = pings
                    .lost
                    .iter()
                    .take(10)
                    .map(|(seq, t)| format!("#{seq} at {:.0} ms", ms(*t)))
                    .collect();
                format!(
                    " ({}{})",
                    at.join(", "),
                    if pings.lost.len() > 10 { ", ..." } else { "" }
                )
            }
        ),
    );
    p.check(
        "SIGTERM with the guests connected under traffic ends xdpathd within 2 s",
        stopped_in_time(took, status),
        if stopped_in_time(took, status) {
            stop_text(took, status)
        } else {
            format!(
                "{}; log:\n{}",
                stop_text(took, status),
                tail(&d.log_text(), 20)
            )
        },
    );
    drop(from_guest);
    drop(d);
    drop(t);
    Ok(())
}
