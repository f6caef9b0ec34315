//! Part 2: `kill -9` and restart of xdpathd under traffic, with a guest
//! that reconnects.
//!
//! One xdpathd with two queue pairs; some exact and prefix rules added
//! first (one of them steers the wire -> guest stream), and their listing
//! kept. The guest is `xdpath-soak-frontend --reconnect`: when the daemon
//! dies it redials until the socket answers, renegotiates with fresh
//! memory and resumes. The peer namespace sends the wire -> guest stream,
//! counts the guest's frames, and pings the host address every 10 ms with
//! a raw ICMP socket.
//!
//! Each round: traffic for a random moment, SIGKILL, restart with the same
//! arguments and state directory, then wait for both directions: the
//! guest's next session received a frame, and the sink captured a frame of
//! that session (the session number is the guest's UDP source port). The
//! resume time runs from the SIGKILL to the later of the two, so it
//! includes the daemon's whole start-up.
//!
//! Checks: every restart resumed within 3 s; the rule listing after every
//! restart equals the one before the first; the host lost no ping (XDP
//! attaching on veth does not reset its queues, so the count is exact);
//! SIGTERM at the end, with the guest connected under traffic, ends the
//! daemon within 2 s.

use crate::guest_proc::GuestProcess;
use crate::plan::{PartKind, Plan};
use crate::report::{median_max, ms, Part};
use crate::wire::{FromGuest, Pinger, ToGuest};
use crate::xdpathd::{connected, stop_text, stopped_in_time, tail, terminate};
use crate::{stop, GUEST_MAC};
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

/// The rules added before the first kill.
fn rules() -> (Vec<Value>, Vec<Value>) {
    let mut flows = vec![json!({
        "src": "10.77.0.2", "dst": "10.77.0.10", "proto": "udp",
        "src_port": crate::TO_GUEST_SPORT, "dst_port": crate::TO_GUEST_PORT, "action": "guest"
    })];
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
    let mut p = Part::new("restarts");
    let start = Instant::now();
    if let Err(e) = body(plan, rng, &mut p) {
        p.check(
            "the part ran to its end",
            false,
            tail(&format!("{e:#}"), 20),
        );
    }
    p.elapsed = start.elapsed();
    p
}

fn body(plan: &Plan, rng: &mut fastrand::Rng, p: &mut Part) -> Result<()> {
    let deadline = Instant::now() + plan.part_budget(PartKind::Restarts);
    let t = Topology::new(u32::from(QUEUE_PAIRS)).context("topology")?;
    let flags = crate::daemon_flags(QUEUE_PAIRS);
    let mut d = Daemon::start(&t, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (flows, prefixes) = rules();
    for f in &flows {
        d.call("POST", "/v1/flows", Some(f))
            .with_context(|| format!("adding {f}"))?;
    }
    for f in &prefixes {
        d.call("POST", "/v1/prefixes", Some(f))
            .with_context(|| format!("adding {f}"))?;
    }
    let rules0 = listing(&d)?;
    p.set(
        "rules",
        json!({"flows": flows.len(), "prefixes": prefixes.len()}),
    );

    let to_guest = ToGuest::start(&t.peer_ns, &t.peer_if, TO_GUEST_PPS, crate::to_guest_frame)?;
    let from_guest = FromGuest::start(&t.peer_ns, &t.peer_if, GUEST_MAC)?;
    let pinger = Pinger::start(&t.peer_ns, HOST_IP, PING_EVERY)?;
    let opts = crate::guest_options(
        &d.vhost,
        QUEUE_PAIRS,
        true,
        FROM_GUEST_PPS,
        plan.part_budget(PartKind::Restarts) + Duration::from_secs(120),
    );
    let guest = GuestProcess::spawn(&opts)?;
    let flowing = |n: u64| {
        guest
            .report()
            .sessions
            .iter()
            .find(|s| s.n == n)
            .and_then(|s| s.first_rx)
            .zip(from_guest.first_with_sport(crate::session_port(n)))
            .map(|(a, b)| a.max(b))
    };
    if !wait_until(RESUME_WAIT, || flowing(1).is_some()) {
        bail!(
            "guest traffic never flowed both ways before the first kill: guest {:?}, sink {}, \
             guest stderr {}",
            guest.report().last(),
            from_guest.total(),
            guest.stderr()
        );
    }

    let mut resume = Vec::new();
    let mut from_start = Vec::new();
    let mut daemon_start = Vec::new();
    let mut rules_changed = Vec::new();
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
        let sessions = guest.report().sessions.len() as u64;
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
        // The first session after the kill that gets traffic both ways
        // (a session may also be cut short while the daemon starts).
        let mut at = None;
        wait_until(RESUME_WAIT, || {
            let n = guest.report().sessions.len() as u64;
            at = (sessions + 1..=n).find_map(flowing);
            at.is_some()
        });
        match at {
            Some(at) => {
                resume.push(at.saturating_duration_since(killed));
                from_start.push(at.saturating_duration_since(spawned));
            }
            None => not_resumed.push(json!({
                "restart": done,
                "guest": format!("{:?}", guest.report().last()),
                "retries": guest.report().retries,
                "last_retry": guest.report().last_retry,
            })),
        }
        if done.is_multiple_of(10) {
            eprintln!("restarts: {done} of {}", plan.restarts);
        }
    }
    p.set("restarts", done);
    let mm =
        |v: &[Duration]| median_max(v).map(|(m, x)| json!({"median_ms": ms(m), "max_ms": ms(x)}));
    p.set("guest_resume_after_kill", mm(&resume));
    p.set("guest_resume_after_restart_began", mm(&from_start));
    p.set("daemon_start_until_api", mm(&daemon_start));
    p.set("guest_sessions", guest.report().sessions.len());
    p.set("guest_redials_refused", guest.report().retries);

    // SIGTERM with the guest connected under traffic.
    wait_until(Duration::from_secs(5), || connected(&d));
    let (took, status) = terminate(&mut d);
    p.set("stop_latency_ms", took.map(ms));

    let pings = pinger.finish()?;
    to_guest.finish()?;
    drop(guest);
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
        "guest traffic resumed after every restart",
        not_resumed.is_empty() && done > 0,
        if not_resumed.is_empty() {
            format!("{done} of {done}")
        } else {
            format!(
                "not within {RESUME_WAIT:?}: {}",
                Value::from(not_resumed.clone())
            )
        },
    );
    let max = median_max(&resume).map(|(_, x)| x);
    p.check(
        "guest traffic resumes within 3 s of each kill -9 (both directions)",
        max.is_some_and(|x| x < RESUME_LIMIT) && not_resumed.is_empty(),
        median_max(&resume).map_or("no restart".into(), |(m, x)| {
            format!("median {:.0} ms, max {:.0} ms", ms(m), ms(x))
        }),
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
        "SIGTERM with the guest connected under traffic ends xdpathd within 2 s",
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
