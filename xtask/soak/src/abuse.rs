//! Part 3: the API under abuse.
//!
//! One xdpathd (one queue pair). In order:
//! 1. slow clients connect and send half a request line, then nothing;
//!    they stay open while
//! 2. 100 writers run at once, each adding its own exact rules and
//!    deleting every other one again, one connection per request, while a
//!    prober asks for `/v1/health` every 100 ms. Every answer is checked:
//!    an add is a 201 naming the rule's id, a delete a 204 (or a 404 when
//!    the add was refused), or the request got a 4xx; no 5xx, no request
//!    without an answer (30 s each). Then the table must equal what the
//!    answers said;
//! 3. oversized bodies: a bulk replace declaring 300 MiB
//!    (`Content-Length`), a single add declaring 8 MiB, and a single add
//!    streaming 64 MiB chunked with no length: each must be a 413;
//! 4. the guest API refuses bad guests with a 4xx and changes nothing:
//!    bad names, a duplicate name, MAC, socket or address, a broadcast MAC,
//!    a relative socket path, unknown fields, broken JSON, an 8 MiB body
//!    (413), rules naming an unknown guest, removing an unknown guest or
//!    with a bad `force`; the guest and rule listings are the same after;
//!    the daemon's peak RSS (VmHWM) over the whole part must stay within
//!    64 MiB of its RSS at the start;
//! 5. the slow clients: how many the daemon has closed (in the long form,
//!    all of them within 30 s of opening);
//! 6. SIGTERM with fresh slow clients (half a request line; a request whose
//!    body stops short) must end the daemon within 2 s.

use crate::http::{self, Framing, SlowClient};
use crate::plan::Plan;
use crate::procfs::Figures;
use crate::report::{mib, ms, Part};
use crate::xdpathd::{stop_text, stopped_in_time, terminate};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xdpath_tests::daemon::Daemon;
use xdpath_tests::topology::Topology;

/// How long a request may wait for its answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Peak RSS allowed above the start.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// What a slow client sends.
const HALF_LINE: &[u8] = b"GET /v1/hea";

/// Answers of one kind of request, by outcome.
#[derive(Debug, Default)]
struct Outcomes {
    by_status: BTreeMap<u16, u64>,
    no_answer: u64,
    wrong: u64,
    examples: Vec<String>,
    slowest: Duration,
}

impl Outcomes {
    fn example(&mut self, e: String) {
        if self.examples.len() < 5 {
            self.examples.push(e);
        }
    }

    fn json(&self) -> Value {
        json!({
            "by_status": self.by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "no_answer": self.no_answer,
            "wrong": self.wrong,
            "slowest_ms": ms(self.slowest),
            "examples": self.examples,
        })
    }

    fn fivexx(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One writer's rule `k`.
fn rule(w: u32, k: u32) -> (u32, String) {
    let id = w * 1000 + k + 1;
    let body = json!({"id": id, "src": "10.1.0.1", "dst": format!("10.2.{w}.{k}"),
                      "proto": "udp", "dst_port": 9, "action": "drop"});
    (id, body.to_string())
}

/// Runs writer `w`; returns the ids its answers say are in the table.
fn writer(api: &Path, w: u32, ops: u32, out: &Mutex<Outcomes>) -> BTreeSet<u32> {
    let mut present = BTreeSet::new();
    for k in 0..ops {
        let (id, body) = rule(w, k);
        let t = Instant::now();
        let a = http::request(api, "POST", "/v1/flows", Some(&body), ANSWER_WAIT);
        let took = t.elapsed();
        let mut o = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.slowest = o.slowest.max(took);
        let added = match a {
            Err(e) => {
                o.no_answer += 1;
                o.example(format!("add {id}: {e}"));
                false
            }
            Ok(a) => {
                *o.by_status.entry(a.status).or_insert(0) += 1;
                let named =
                    serde_json::from_str::<Value>(&a.body).is_ok_and(|v| v["id"] == json!(id));
                match a.status {
                    201 if named => true,
                    400..=499 => false,
                    s => {
                        if s < 500 {
                            o.wrong += 1;
                        }
                        o.example(format!("add {id}: {s} {}", a.body));
                        s < 300
                    }
                }
            }
        };
        if added {
            present.insert(id);
        }
        drop(o);
        if k % 2 == 0 {
            continue;
        }
        let t = Instant::now();
        let a = http::request(api, "DELETE", &format!("/v1/flows/{id}"), None, ANSWER_WAIT);
        let took = t.elapsed();
        let mut o = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.slowest = o.slowest.max(took);
        match a {
            Err(e) => {
                o.no_answer += 1;
                o.example(format!("delete {id}: {e}"));
            }
            Ok(a) => {
                *o.by_status.entry(a.status).or_insert(0) += 1;
                match (a.status, added) {
                    (204, true) => {
                        present.remove(&id);
                    }
                    (404, false) => {}
                    (s, _) if (400..500).contains(&s) && added => {}
                    (s, _) => {
                        if s < 500 {
                            o.wrong += 1;
                        }
                        o.example(format!("delete {id} (added: {added}): {s} {}", a.body));
                    }
                }
            }
        }
    }
    present
}

/// Samples the daemon's RSS until told to stop; returns the peak seen.
fn rss_sampler(pid: u32, stop: &AtomicBool, peak: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(f) = Figures::of(pid) {
            peak.fetch_max(f.rss_kib, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs part 4.
pub fn run(plan: &Plan) -> Part {
    Part::run("abuse", |p| body(plan, p))
}

fn body(plan: &Plan, p: &mut Part) -> Result<()> {
    let t = Topology::new(1).context("topology")?;
    let flags = crate::daemon_flags(1);
    let mut d = Daemon::start(&t, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let pid = d.pid().context("the daemon is not running")?;
    let api = d.api.clone();
    let vhost = d.vhost.clone();
    let start = Figures::of(pid)?;
    p.set("start", start.json());
    let sampling = AtomicBool::new(false);
    let peak = AtomicU64::new(start.rss_kib);

    let result = std::thread::scope(|s| -> Result<()> {
        s.spawn(|| rss_sampler(pid, &sampling, &peak));
        let r = abuse(plan, p, &api, pid).and_then(|()| guest_abuse(p, &api, &vhost));
        sampling.store(true, Ordering::Relaxed);
        r
    });
    let end = Figures::of(pid).ok();
    let peak_kib = peak
        .load(Ordering::Relaxed)
        .max(end.as_ref().map_or(0, |e| e.hwm_kib));
    p.set("end", end.as_ref().map(Figures::json));
    p.set("peak_rss_kib", peak_kib);
    p.check(
        "xdpathd's RSS stays within 64 MiB of the start under abuse",
        peak_kib <= start.rss_kib + RSS_BOUND_KIB,
        format!(
            "start {:.1} MiB, peak {:.1} MiB, end {}",
            mib(start.rss_kib),
            mib(peak_kib),
            end.map_or("-".into(), |e| format!("{:.1} MiB", mib(e.rss_kib)))
        ),
    );
    result?;

    // SIGTERM with fresh slow clients hanging.
    let mut hanging = Vec::new();
    for _ in 0..plan.slow_clients {
        if let Ok(c) = SlowClient::open(&api, HALF_LINE) {
            hanging.push(c);
        }
    }
    let short_body =
        b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\": 1";
    if let Ok(c) = SlowClient::open(&api, short_body) {
        hanging.push(c);
    }
    let opened = hanging.len();
    std::thread::sleep(Duration::from_millis(200));
    let (took, status) = terminate(&mut d);
    drop(hanging);
    p.set("stop_latency_ms", took.map(ms));
    p.check(
        "SIGTERM with slow clients connected ends xdpathd within 2 s",
        stopped_in_time(took, status),
        format!("{opened} slow clients; {}", stop_text(took, status)),
    );
    drop(d);
    drop(t);
    Ok(())
}

/// Steps 1-3 and 5.
fn abuse(plan: &Plan, p: &mut Part, api: &Path, pid: u32) -> Result<()> {
    // 1. Slow clients.
    let opened_at = Instant::now();
    let mut slow = Vec::new();
    let mut slow_refused = 0u32;
    for _ in 0..plan.slow_clients {
        match SlowClient::open(api, HALF_LINE) {
            Ok(c) => slow.push(c),
            Err(_) => slow_refused += 1,
        }
    }

    // 2. Writers, and a prober.
    let writes = Mutex::new(Outcomes::default());
    let probes = Mutex::new(Outcomes::default());
    let writing = AtomicBool::new(true);
    let began = Instant::now();
    let expected: BTreeSet<u32> = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            while writing.load(Ordering::Relaxed) {
                let t = Instant::now();
                let a = http::request(api, "GET", "/v1/health", None, ANSWER_WAIT);
                let mut o = probes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                o.slowest = o.slowest.max(t.elapsed());
                match a {
                    Ok(a) => *o.by_status.entry(a.status).or_insert(0) += 1,
                    Err(e) => {
                        o.no_answer += 1;
                        o.example(e);
                    }
                }
                drop(o);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let handles: Vec<_> = (0..plan.writers)
            .map(|w| {
                let writes = &writes;
                s.spawn(move || writer(api, w, plan.ops_per_writer, writes))
            })
            .collect();
        let mut all = BTreeSet::new();
        for h in handles {
            if let Ok(ids) = h.join() {
                all.extend(ids);
            }
        }
        writing.store(false, Ordering::Relaxed);
        let _ = prober.join();
        all
    });
    let writes = writes
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let probes = probes
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    p.set(
        "writers",
        json!({"writers": plan.writers, "rules_each": plan.ops_per_writer,
               "elapsed_ms": ms(began.elapsed()), "answers": writes.json()}),
    );
    p.set("health_probes_meanwhile", probes.json());
    let requests: u64 = writes.by_status.values().sum::<u64>() + writes.no_answer;
    p.check(
        "every writer request got a correct answer or a 4xx",
        writes.no_answer == 0 && writes.wrong == 0 && writes.fivexx() == 0 && requests > 0,
        format!(
            "{requests} requests: {:?}, {} without an answer, {} wrong{}",
            writes.by_status,
            writes.no_answer,
            writes.wrong,
            if writes.examples.is_empty() {
                String::new()
            } else {
                format!("; e.g. {:?}", writes.examples)
            }
        ),
    );
    let table: BTreeSet<u32> = http::request(api, "GET", "/v1/flows", None, ANSWER_WAIT)
        .ok()
        .and_then(|a| serde_json::from_str::<Value>(&a.body).ok())
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|r| r["id"].as_u64().and_then(|i| u32::try_from(i).ok()))
                    .collect()
            })
        })
        .unwrap_or_default();
    p.check(
        "the table holds exactly the rules the answers said",
        table == expected,
        format!(
            "{} expected, {} listed; missing {:?}; extra {:?}",
            expected.len(),
            table.len(),
            expected.difference(&table).take(10).collect::<Vec<_>>(),
            table.difference(&expected).take(10).collect::<Vec<_>>()
        ),
    );
    p.check(
        "the API kept answering while the writers and slow clients ran",
        probes.no_answer == 0 && probes.fivexx() == 0 && probes.by_status.contains_key(&200),
        format!(
            "health every 100 ms: {:?}, {} without an answer, slowest {:.0} ms",
            probes.by_status,
            probes.no_answer,
            ms(probes.slowest)
        ),
    );

    // 3. Oversized bodies.
    let big = plan.oversize_mib << 20;
    let cases = [
        (
            "PUT /v1/flows declaring the size",
            "PUT",
            "/v1/flows",
            big,
            Framing::Declared,
        ),
        (
            "POST /v1/flows declaring 8 MiB",
            "POST",
            "/v1/flows",
            8 << 20,
            Framing::Declared,
        ),
        (
            "POST /v1/flows chunked, 64 MiB",
            "POST",
            "/v1/flows",
            64 << 20,
            Framing::Chunked,
        ),
    ];
    let mut oversize = Vec::new();
    let mut all_413 = true;
    let mut detail = Vec::new();
    for (what, method, path, total, framing) in cases {
        let rss0 = Figures::of(pid).map(|f| f.rss_kib).unwrap_or(0);
        let u = http::upload(api, method, path, total, framing, Duration::from_secs(60));
        let rss1 = Figures::of(pid).map(|f| f.rss_kib).unwrap_or(0);
        let status = u.answer.as_ref().ok().map(|a| a.status);
        all_413 &= status == Some(413);
        detail.push(format!(
            "{what} ({} MiB): {} after {:.1} MiB sent",
            total >> 20,
            status.map_or_else(
                || format!(
                    "no answer ({})",
                    u.answer.as_ref().err().map_or("", String::as_str)
                ),
                |s| s.to_string()
            ),
            u.sent as f64 / f64::from(1u32 << 20)
        ));
        oversize.push(json!({
            "case": what, "bytes": total, "status": status,
            "answer_error": u.answer.as_ref().err(),
            "bytes_sent_before_answer": u.sent, "elapsed_ms": ms(u.elapsed),
            "rss_before_kib": rss0, "rss_after_kib": rss1,
        }));
    }
    p.set("oversize", oversize);
    p.check(
        "oversized bodies are refused with 413",
        all_413,
        detail.join("; "),
    );
    let health = http::request(api, "GET", "/v1/health", None, Duration::from_secs(5));
    p.check(
        "the API answers after the abuse",
        health.as_ref().is_ok_and(|a| a.status == 200),
        format!("{:?}", health.map(|a| a.status)),
    );

    // 5. The slow clients from step 1.
    let limit = plan.slow_close_limit;
    if let Some(l) = limit {
        let left = l.saturating_sub(opened_at.elapsed());
        xdpath_tests::wait_until(left, || slow.iter_mut().all(SlowClient::closed_by_server));
    }
    let closed = slow
        .iter_mut()
        .map(SlowClient::closed_by_server)
        .filter(|&c| c)
        .count();
    p.set(
        "slow_clients",
        json!({"opened": slow.len(), "refused_at_connect": slow_refused,
               "closed_by_daemon": closed, "open_for_s": opened_at.elapsed().as_secs()}),
    );
    match limit {
        Some(l) => {
            p.check(
                format!("the daemon closes slow clients within {} s", l.as_secs()),
                closed == slow.len(),
                format!("{closed} of {} closed", slow.len()),
            );
        }
        None => p.note(format!(
            "slow clients closed by the daemon after {:.0} s: {closed} of {}",
            opened_at.elapsed().as_secs_f64(),
            slow.len()
        )),
    }
    Ok(())
}

/// Step 4: bad guests and rules naming unknown guests, each refused with a
/// 4xx (the oversized body with a 413), nothing changed.
fn guest_abuse(p: &mut Part, api: &Path, vhost: &Path) -> Result<()> {
    let get = |path: &str| {
        http::request(api, "GET", path, None, ANSWER_WAIT)
            .map(|a| a.body)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("GET {path}"))
    };
    let guests0 = get("/v1/guests")?;
    let flows0 = get("/v1/flows")?;
    let prefixes0 = get("/v1/prefixes")?;
    let mac = |last: u8| format!("52:54:00:5f:00:{last:02x}");
    let guest_mac = crate::mac_text(crate::GUEST_MAC);
    let guest_ip = std::net::Ipv4Addr::from(crate::GUEST_IP).to_string();
    // Sockets in the daemon's directory, should a case be accepted.
    let sock = |n: &str| vhost.with_file_name(format!("abuse-{n}.sock"));
    let cases: Vec<(&str, &str, &str, String)> = vec![
        (
            "a name with capitals and a space",
            "POST",
            "/v1/guests",
            json!({"name": "Bad Name", "mac": mac(1), "vhost_socket": sock("1")}).to_string(),
        ),
        (
            "an empty name",
            "POST",
            "/v1/guests",
            json!({"name": "", "mac": mac(2), "vhost_socket": sock("2")}).to_string(),
        ),
        (
            "a 16-character name",
            "POST",
            "/v1/guests",
            json!({"name": "abcdefghijklmnop", "mac": mac(3), "vhost_socket": sock("3")})
                .to_string(),
        ),
        (
            "a name with a slash",
            "POST",
            "/v1/guests",
            json!({"name": "a/b", "mac": mac(4), "vhost_socket": sock("4")}).to_string(),
        ),
        (
            "the name of an existing guest",
            "POST",
            "/v1/guests",
            json!({"name": "default", "mac": mac(5), "vhost_socket": sock("5")}).to_string(),
        ),
        (
            "another guest's MAC",
            "POST",
            "/v1/guests",
            json!({"name": "dupmac", "mac": guest_mac, "vhost_socket": sock("6")}).to_string(),
        ),
        (
            "another guest's socket",
            "POST",
            "/v1/guests",
            json!({"name": "dupsock", "mac": mac(6), "vhost_socket": vhost}).to_string(),
        ),
        (
            "another guest's address",
            "POST",
            "/v1/guests",
            json!({"name": "dupip", "mac": mac(7), "ips": [guest_ip], "vhost_socket": sock("7")})
                .to_string(),
        ),
        (
            "a broadcast MAC",
            "POST",
            "/v1/guests",
            json!({"name": "bcast", "mac": "ff:ff:ff:ff:ff:ff", "vhost_socket": sock("8")})
                .to_string(),
        ),
        (
            "a relative socket path",
            "POST",
            "/v1/guests",
            json!({"name": "rel", "mac": mac(8), "vhost_socket": "rel.sock"}).to_string(),
        ),
        (
            "an unknown field",
            "POST",
            "/v1/guests",
            json!({"name": "color", "mac": mac(9), "color": 1, "vhost_socket": sock("9")})
                .to_string(),
        ),
        (
            "0 queue pairs",
            "POST",
            "/v1/guests",
            json!({"name": "noq", "mac": mac(10), "queues": 0, "vhost_socket": sock("noq")})
                .to_string(),
        ),
        (
            "broken JSON",
            "POST",
            "/v1/guests",
            "{\"name\": \"x\", ".to_string(),
        ),
        (
            "an exact rule naming an unknown guest",
            "POST",
            "/v1/flows",
            json!({"src": "10.1.0.1", "dst": "10.2.0.1", "proto": "udp", "dst_port": 9,
                "action": "guest", "guest": "nope"})
            .to_string(),
        ),
        (
            "a prefix rule naming an unknown guest",
            "POST",
            "/v1/prefixes",
            json!({"prefix": "10.200.0.0/16", "action": "guest", "guest": "nope"}).to_string(),
        ),
        (
            "removing an unknown guest",
            "DELETE",
            "/v1/guests/nope",
            String::new(),
        ),
        (
            "removing with a bad force",
            "DELETE",
            "/v1/guests/default?force=maybe",
            String::new(),
        ),
    ];
    let mut wrong = Vec::new();
    let mut by_status = BTreeMap::<u16, u64>::new();
    for (what, method, path, body) in &cases {
        let b = (!body.is_empty()).then_some(body.as_str());
        match http::request(api, method, path, b, ANSWER_WAIT) {
            Ok(a) => {
                *by_status.entry(a.status).or_insert(0) += 1;
                if !(400..500).contains(&a.status) {
                    wrong.push(format!("{what}: {} {}", a.status, a.body));
                }
            }
            Err(e) => wrong.push(format!("{what}: no answer ({e})")),
        }
    }
    let u = http::upload(
        api,
        "POST",
        "/v1/guests",
        8 << 20,
        Framing::Declared,
        Duration::from_secs(60),
    );
    let big = u.answer.as_ref().ok().map(|a| a.status);
    if big != Some(413) {
        wrong.push(format!(
            "an 8 MiB guest body: {big:?} ({:?})",
            u.answer.err()
        ));
    }
    let unchanged = get("/v1/guests")? == guests0
        && get("/v1/flows")? == flows0
        && get("/v1/prefixes")? == prefixes0;
    p.set(
        "guest_api_abuse",
        json!({"cases": cases.len() + 1,
               "by_status": by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
               "oversize_status": big, "wrong": wrong}),
    );
    p.check(
        "bad guests and rules naming unknown guests are refused with a 4xx",
        wrong.is_empty(),
        format!(
            "{} cases: {by_status:?}, 8 MiB body {big:?}{}",
            cases.len() + 1,
            if wrong.is_empty() {
                String::new()
            } else {
                format!("; wrong: {wrong:?}")
            }
        ),
    );
    p.check(
        "the refused guest requests changed nothing",
        unchanged,
        if unchanged {
            "guests, exact and prefix rules listed as before".to_string()
        } else {
            format!("guests before {guests0}, after {}", get("/v1/guests")?)
        },
    );
    Ok(())
}
