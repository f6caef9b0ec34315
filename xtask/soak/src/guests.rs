//! Part 3: guests added and removed (hot) under traffic to steady guests.
//!
//! One xdpathd with two queue pairs and two steady guests: the shorthand
//! guest `default` and `g2` (added through the API), each with an in-repo
//! frontend process (`xdpath-soak-frontend`) that sends and receives for
//! the whole part. The peer namespace sends a steady stream to both (in
//! turn, counted per guest) and captures what every guest sends.
//!
//! Each round adds a guest of its own (`c<round>`: a name, MAC and address
//! no other round uses; its id is the lowest free one, so the same id every
//! round), in client mode one round in three (its frontend listens), with
//! a rule naming it every other round; connects a frontend; once a first
//! frame has reached it (the daemon shows a guest as connected before its
//! frontend has posted RX buffers), sends it a few frames from the wire
//! (all must arrive) and as many to the previous
//! round's guest's MAC (none may arrive: a frame to a removed guest must
//! not follow a stale MAC entry to the guest that reuses its id); waits
//! for the frontend's own frames at the sink; then removes the guest:
//! with a rule naming it, first without `force` (must be refused with a
//! 4xx, the guest still there) and then with `?force=true`; two rounds in
//! three while its frontend is still connected, else after SIGKILLing the
//! frontend. After each removal the guest is gone from the listing, its
//! rules with it, and the listing is the two steady guests again.
//!
//! Checks: every API call answered, never with a 5xx, and as expected;
//! the steady guests lost no frame (what the wire sent each of them
//! equals what its frontend received, counted after the stream stopped)
//! and kept their one session; every added guest got the same id; every
//! churn frontend received its frames and none for another MAC; at the
//! end xdpathd's fds and threads equal the start (the API runtime's
//! blocking threads may be fewer; taken before the first
//! round, the steady guests connected) and its RSS is at most 4 MiB above
//! the figure after the first round; with the stream stopped, frames to
//! the removed guests' MACs are redirected nowhere (the classifier's
//! `class_mac`, `redirects` and `redirect_no_socket` do not move: no MAC
//! entry is left) and reach no frontend; SIGTERM with the steady guests
//! connected ends the daemon within 2 s.

use crate::guest_proc::GuestProcess;
use crate::http;
use crate::plan::{PartKind, Plan};
use crate::procfs::{self, Figures};
use crate::report::{mib, ms, Part};
use crate::wire::{FromGuest, ToGuest};
use crate::xdpathd::{
    alive, classifier, guest_connected, guest_declarations, stop_text, stopped_in_time, tail,
    terminate,
};
use crate::{stop, SoakGuest};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use xdpath_tests::daemon::Daemon;
use xdpath_tests::packet::Sender;
use xdpath_tests::topology::Topology;
use xdpath_tests::wait_until;

/// Queue pairs of this part's daemon and frontends.
const QUEUE_PAIRS: u16 = 2;
/// Wire -> steady guests frames per second (both together).
const TO_GUESTS_PPS: u32 = 1000;
/// Guest -> wire frames per second of each frontend.
const FROM_GUEST_PPS: u32 = 200;
/// Frames the wire sends a churn guest (and its predecessor's MAC) per
/// round.
const PROBES: u64 = 16;
/// RSS growth allowed between the first round and the end.
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// How long one API call may take.
const API_WAIT: Duration = Duration::from_secs(10);
/// How long a frontend may take to connect, or frames to arrive.
const WAIT: Duration = Duration::from_secs(10);

/// Every API answer of the part, by status, and the unexpected ones.
#[derive(Debug, Default)]
struct Calls {
    by_status: BTreeMap<u16, u64>,
    unexpected: Vec<String>,
}

impl Calls {
    /// Calls the API; records the status and, if it is not `want`, what
    /// happened. Returns the answer's body when the status was `want`.
    fn call(
        &mut self,
        api: &Path,
        method: &str,
        path: &str,
        body: Option<&Value>,
        want: impl Fn(u16) -> bool,
    ) -> Option<String> {
        let text = body.map(Value::to_string);
        match http::request(api, method, path, text.as_deref(), API_WAIT) {
            Ok(a) => {
                *self.by_status.entry(a.status).or_insert(0) += 1;
                if want(a.status) {
                    return Some(a.body);
                }
                self.unexpected
                    .push(format!("{method} {path}: {} {}", a.status, a.body));
            }
            Err(e) => self
                .unexpected
                .push(format!("{method} {path}: no answer ({e})")),
        }
        None
    }

    fn fivexx(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs part 3.
pub fn run(plan: &Plan, rng: &mut fastrand::Rng) -> Part {
    Part::run("guests", |p| body(plan, rng, p))
}

/// Names in `GET /v1/guests`.
fn names(d: &Daemon) -> Vec<String> {
    guest_declarations(d)
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|g| g["name"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn body(plan: &Plan, rng: &mut fastrand::Rng, p: &mut Part) -> Result<()> {
    let deadline = Instant::now() + plan.part_budget(PartKind::Guests);
    let t = Topology::new(u32::from(QUEUE_PAIRS)).context("topology")?;
    let flags = crate::daemon_flags(QUEUE_PAIRS);
    let mut d = Daemon::start(&t, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let api = d.api.clone();
    let steady: Vec<SoakGuest> = (1..=2).map(|k| SoakGuest::steady(k, &d)).collect();
    d.call("POST", "/v1/guests", Some(&steady[1].spec(false)))
        .with_context(|| format!("adding guest {}", steady[1].name))?;
    let steady_names: Vec<String> = steady.iter().map(|g| g.name.clone()).collect();
    let opts = |g: &SoakGuest| {
        g.options(
            QUEUE_PAIRS,
            false,
            FROM_GUEST_PPS,
            Duration::from_secs(3600),
        )
    };
    let fes: Vec<GuestProcess> = steady
        .iter()
        .map(|g| GuestProcess::spawn(&opts(g)))
        .collect::<Result<_>>()?;
    // Connected and sending: the handshake is over and their RX buffers
    // are posted (the baseline below includes their memory and vring
    // fds; the stream must not start before they can take it).
    if !wait_until(WAIT, || {
        steady.iter().all(|g| guest_connected(&d, &g.name))
            && fes
                .iter()
                .all(|f| f.report().last().is_some_and(|s| s.tx > 0))
    }) {
        bail!(
            "the steady guests did not connect: {:?}",
            fes.iter().map(GuestProcess::stderr).collect::<Vec<_>>()
        );
    }
    let pid = alive(&d)?;
    let threads0 = procfs::thread_names(pid);
    let (first, fds0) = Figures::settled(pid)?;
    p.set("start", first.json());

    let rounds = plan.guest_rounds;
    let churn: Vec<SoakGuest> = (1..=rounds).map(|r| SoakGuest::churn(r, &d)).collect();
    let mut macs: Vec<[u8; 6]> = steady.iter().map(|g| g.mac).collect();
    macs.extend(churn.iter().map(|g| g.mac));
    let from_guest = FromGuest::start(&t.peer_ns, &t.peer_if, &macs)?;
    let frames = steady.clone();
    let mut to_guest = ToGuest::start(&t.peer_ns, &t.peer_if, TO_GUESTS_PPS, 2, move |seq| {
        frames[(seq % 2) as usize].to_frame(seq)
    })?;
    let peer_if = t.peer_if.clone();
    let probe = t.in_peer(move || Sender::new(&peer_if))?;

    let mut calls = Calls::default();
    let mut ids = BTreeMap::<u64, u64>::new();
    let mut misses: Vec<String> = Vec::new();
    let mut stray = 0u64;
    let mut warm: Option<Figures> = None;
    let (mut client_rounds, mut forced, mut while_connected) = (0u32, 0u32, 0u32);
    let mut add_ms = Vec::new();
    let mut first_frame_ms = Vec::new();
    let mut remove_ms = Vec::new();
    let mut done = 0u32;
    for (i, g) in churn.iter().enumerate() {
        if stop::requested() {
            p.note("stopped by a signal");
            break;
        }
        if Instant::now() >= deadline {
            p.note(format!(
                "time budget reached after {done} of {rounds} rounds"
            ));
            break;
        }
        let round = done + 1;
        let client = round % 3 == 2;
        let with_rule = round.is_multiple_of(2);
        let connected_removal = !round.is_multiple_of(3);
        let mut g = g.clone();
        if client {
            client_rounds += 1;
            g.socket = d.dir.join(format!("{}-frontend.sock", g.name));
        }
        // Add it.
        let t0 = Instant::now();
        let Some(added) = calls.call(&api, "POST", "/v1/guests", Some(&g.spec(client)), |s| {
            s == 201
        }) else {
            bail!("adding {} failed: {:?}", g.name, calls.unexpected.last());
        };
        add_ms.push(ms(t0.elapsed()));
        let id = serde_json::from_str::<Value>(&added)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .unwrap_or(0);
        *ids.entry(id).or_insert(0) += 1;
        let rule = json!({"src": "10.9.9.9", "dst": std::net::Ipv4Addr::from(g.ip).to_string(),
                          "proto": "udp", "dst_port": 53, "action": "guest", "guest": g.name});
        if with_rule {
            calls.call(&api, "POST", "/v1/flows", Some(&rule), |s| s == 201);
        }
        // Connect a frontend; frames both ways.
        let mut o = opts(&g);
        o.listen = client;
        let mut fe = GuestProcess::spawn(&o)?;
        if !wait_until(WAIT, || guest_connected(&d, &g.name)) {
            misses.push(format!(
                "round {round}: {} never showed as connected ({})",
                g.name,
                tail(&fe.stderr(), 3)
            ));
        }
        // The first frame: sent every 10 ms until the frontend has one
        // (a frontend shows as connected before its RX buffers are
        // posted); the time from connected to it is a figure.
        let up = Instant::now();
        let mut seq = 0u64;
        let reached = wait_until(WAIT, || {
            seq += 1;
            let _ = probe.send_on_queue(0, &[g.to_frame(1_000_000 + seq)]);
            stop::sleep(Duration::from_millis(10));
            fe.report().totals().0 > 0
        });
        first_frame_ms.push(ms(up.elapsed()));
        stop::sleep(Duration::from_millis(50));
        let base = fe.report().totals().0;
        // Then exactly PROBES frames, and as many to the previous round's
        // guest's MAC.
        let prev = i.checked_sub(1).and_then(|k| churn.get(k));
        for k in 0..PROBES {
            let mut batch = vec![g.to_frame(k)];
            if let Some(prev) = prev {
                batch.push(prev.to_frame(k));
            }
            probe.send_on_queue((k % u64::from(QUEUE_PAIRS)) as u32, &batch)?;
        }
        let got = reached
            && fe.wait_for(WAIT, |r| r.totals().0 >= base + PROBES)
            && wait_until(WAIT, || from_guest.total_from(g.mac) > 0);
        // Anything else on its way has arrived by now.
        stop::sleep(Duration::from_millis(100));
        let (rx, tx, s) = fe.report().totals();
        stray += s;
        if !got || rx != base + PROBES {
            misses.push(format!(
                "round {round}: {} received {} of {PROBES} frames (after {base} first ones), \
                 sent {tx}, {} at the sink; the daemon counts {} drops for it",
                g.name,
                rx.saturating_sub(base),
                from_guest.total_from(g.mac),
                crate::xdpathd::guest_counter(&d, &g.name, "drops")
            ));
        }
        // Remove it.
        if !connected_removal {
            fe.kill()?;
            wait_until(WAIT, || !guest_connected(&d, &g.name));
        } else {
            while_connected += 1;
        }
        let path = format!("/v1/guests/{}", g.name);
        let t0 = Instant::now();
        if with_rule {
            forced += 1;
            calls.call(&api, "DELETE", &path, None, |s| (400..500).contains(&s));
            if !names(&d).contains(&g.name) {
                misses.push(format!(
                    "round {round}: {} went although a rule names it and force was not given",
                    g.name
                ));
            }
            calls.call(&api, "DELETE", &format!("{path}?force=true"), None, |s| {
                s == 204
            });
        } else {
            calls.call(&api, "DELETE", &path, None, |s| s == 204);
        }
        remove_ms.push(ms(t0.elapsed()));
        calls.call(&api, "GET", &path, None, |s| s == 404);
        let left = names(&d);
        if left != steady_names {
            misses.push(format!("round {round}: guests after removal {left:?}"));
        }
        if let Some(flows) = calls.call(&api, "GET", "/v1/flows", None, |s| s == 200) {
            if flows.trim() != "[]" {
                misses.push(format!("round {round}: rules left after removal: {flows}"));
            }
        }
        stray += fe.report().totals().2;
        fe.kill()?;
        if client {
            let _ = std::fs::remove_file(&g.socket);
        }
        alive(&d).with_context(|| format!("after round {round}"))?;
        done += 1;
        if done == 1 {
            warm = Some(Figures::of(pid)?);
        }
        if done.is_multiple_of(25) {
            eprintln!("guests: {done} of {rounds} rounds");
        }
        // A random pause, so removals meet the stream at any moment.
        stop::sleep(Duration::from_millis(rng.u64(0..=100)));
    }
    p.set("rounds", done);
    p.set(
        "rounds_by_kind",
        json!({"client_mode": client_rounds, "with_a_rule_force_removed": forced,
               "removed_while_connected": while_connected}),
    );
    p.set(
        "ids_given",
        ids.iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
    );
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    p.set(
        "api_ms",
        json!({"add_median": med(&mut add_ms), "add_max": add_ms.last(),
               "remove_median": med(&mut remove_ms), "remove_max": remove_ms.last(),
               "connected_to_first_frame_median": med(&mut first_frame_ms),
               "connected_to_first_frame_max": first_frame_ms.last()}),
    );

    // The steady guests' count, once the stream has stopped and settled.
    to_guest.halt()?;
    let settle =
        |fes: &[GuestProcess]| -> Vec<u64> { fes.iter().map(|f| f.report().totals().0).collect() };
    let mut before = settle(&fes);
    wait_until(Duration::from_secs(3), || {
        stop::sleep(Duration::from_millis(200));
        let now = settle(&fes);
        let same = now == before;
        before = now;
        same
    });
    let mut steady_fig = serde_json::Map::new();
    let mut lost_total = 0u64;
    let mut sessions_ok = true;
    for (k, (g, f)) in steady.iter().zip(&fes).enumerate() {
        let r = f.report();
        let (rx, tx, s) = r.totals();
        stray += s;
        let sent = to_guest.sent_to(k);
        let lost = sent.saturating_sub(rx);
        lost_total += lost;
        sessions_ok &= r.sessions.len() == 1 && r.last().is_some_and(|x| x.down.is_none());
        steady_fig.insert(
            g.name.clone(),
            json!({"sent": sent, "received": rx, "lost": lost, "extra": rx.saturating_sub(sent),
                   "sent_by_guest": tx, "at_sink": from_guest.total_from(g.mac),
                   "sessions": r.sessions.len()}),
        );
    }
    p.set("steady_guests", Value::Object(steady_fig.clone()));
    p.check(
        "the steady guests lost no frame while guests came and went",
        lost_total == 0
            && steady_fig
                .values()
                .all(|v| v["extra"] == json!(0) && v["sent"].as_u64().is_some_and(|s| s > 0)),
        Value::Object(steady_fig).to_string(),
    );
    p.check(
        "the steady guests kept their one session",
        sessions_ok,
        fes.iter()
            .map(|f| {
                format!(
                    "{:?}",
                    f.report()
                        .sessions
                        .iter()
                        .map(|s| (s.n, s.down.clone()))
                        .collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    p.set(
        "api_answers",
        json!({"by_status": calls.by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
               "unexpected": calls.unexpected.iter().take(10).collect::<Vec<_>>()}),
    );
    p.check(
        "every guest API call got the expected answer, never a 5xx",
        calls.unexpected.is_empty() && calls.fivexx() == 0 && done > 0,
        format!(
            "{:?}; unexpected: {:?}",
            calls.by_status,
            calls.unexpected.iter().take(5).collect::<Vec<_>>()
        ),
    );
    p.check(
        "every added guest reused the same id",
        ids.len() == 1 && done > 0,
        format!("ids given (id: times) {ids:?}"),
    );
    p.check(
        "every churn guest was reached, reached the wire, and was removed cleanly",
        misses.is_empty() && done > 0,
        if misses.is_empty() {
            format!("{done} rounds, {PROBES} frames each way")
        } else {
            format!(
                "{} misses: {:?}",
                misses.len(),
                &misses[..misses.len().min(10)]
            )
        },
    );

    // Leaks: the churn is over, the steady guests are still connected.
    let back = wait_until(Duration::from_secs(15), || {
        Figures::of(pid).is_ok_and(|f| f.fds == first.fds)
            && procfs::threads_back(&threads0, &procfs::thread_names(pid))
    });
    let end = Figures::of(pid)?;
    p.set("end", end.json());
    p.check(
        "xdpathd's fds at the end equal the start",
        end.fds == first.fds,
        if back {
            format!("{} -> {}", first.fds, end.fds)
        } else {
            let fds1 = procfs::fd_list(pid).unwrap_or_default();
            let gone: Vec<_> = fds0.iter().filter(|f| !fds1.contains(f)).collect();
            let new: Vec<_> = fds1.iter().filter(|f| !fds0.contains(f)).collect();
            format!("{} -> {}; new {new:?}; gone {gone:?}", first.fds, end.fds)
        },
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
        p.set("after_first_round", w.json());
        p.check(
            "xdpathd's RSS at the end is at most 4 MiB above the RSS after the first round",
            end.rss_kib <= w.rss_kib + RSS_SLACK_KIB,
            format!(
                "{:.1} MiB -> {:.1} MiB (start {:.1} MiB)",
                mib(w.rss_kib),
                mib(end.rss_kib),
                mib(first.rss_kib)
            ),
        );
    }

    // No map entry is left of the removed guests: with the stream stopped,
    // frames to their MACs are classified by no MAC entry and go to the
    // host (never redirected), and reach nobody.
    let keys = [
        "class_mac",
        "redirects",
        "redirect_no_socket",
        "action_host",
    ];
    let c0: Vec<u64> = keys.iter().map(|k| classifier(&d, k)).collect();
    let gone: Vec<&SoakGuest> = churn.iter().take(done as usize).rev().take(4).collect();
    let mut sent_gone = 0u64;
    for (k, g) in gone.iter().enumerate() {
        for q in 0..u32::from(QUEUE_PAIRS) {
            probe.send_on_queue(q, &[g.to_frame(k as u64)])?;
            sent_gone += 1;
        }
    }
    wait_until(WAIT, || classifier(&d, "action_host") >= c0[3] + sent_gone);
    stop::sleep(Duration::from_millis(200));
    let delta: Vec<u64> = keys
        .iter()
        .zip(&c0)
        .map(|(k, b)| classifier(&d, k).saturating_sub(*b))
        .collect();
    let stray_after: u64 = fes.iter().map(|f| f.report().totals().2).sum();
    p.set(
        "frames_to_removed_guests",
        json!({"sent": sent_gone, "class_mac": delta[0], "redirects": delta[1],
               "redirect_no_socket": delta[2], "action_host": delta[3]}),
    );
    p.check(
        "frames to removed guests' MACs follow no stale entry: to the host, to no guest",
        sent_gone > 0
            && delta[0] == 0
            && delta[1] == 0
            && delta[2] == 0
            && delta[3] >= sent_gone
            && stray_after == 0,
        format!(
            "{sent_gone} frames to {} removed guests: class_mac +{}, redirects +{}, \
             redirect_no_socket +{}, action_host +{}; steady frontends got {stray_after} not theirs",
            gone.len(),
            delta[0],
            delta[1],
            delta[2],
            delta[3]
        ),
    );
    p.check(
        "no frontend received a frame for another guest's MAC",
        stray == 0,
        format!("{stray} such frames"),
    );

    let (took, status) = terminate(&mut d);
    drop(fes);
    p.set("stop_latency_ms", took.map(ms));
    p.check(
        "SIGTERM with the steady guests connected ends xdpathd within 2 s",
        stopped_in_time(took, status),
        stop_text(took, status),
    );
    drop(to_guest);
    drop(from_guest);
    drop(d);
    drop(t);
    Ok(())
}
