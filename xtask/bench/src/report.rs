//! Benchmark statistics and output: per case and system the median, min
//! and max over runs; ratios taken run by run (xdpath / DPDK, xdpath /
//! limit) and then summarised the same way; latency percentiles; the
//! multi-guest scaling case; all written as `results.json`, `results.md`
//! (the README's tables) and `results.svg` (throughput per case, latency
//! distribution, scaling).
//!
//! The `scaling` section of `results.json` (`null` when the scaling case
//! did not run):
//!
//! ```text
//! "scaling": {
//!   "queue_pairs": 2, "frame_bytes": 64, "wire_flows_per_queue": 256,
//!   "counted_at": "...", "worker_cpu": "...", "guest_to_guest": "...",
//!   "rows": [                        // one per guest count, ascending
//!     { "guests": 1,
//!       "wire_to_guests": {          // null if not measured
//!         "mpps": S,                 // aggregate, all guests
//!         "worker_cpu_us_per_frame": S,
//!         "machine_cpu_us_per_frame": S,
//!         "loss": S,                 // share of "sent" not received
//!         "runs": [ { "run", "secs", "sent", "delivered", "per_guest": [..],
//!                     "mpps", "worker_cpu_secs", "machine_cpu_secs",
//!                     "worker_cpu_us_per_frame" } ] },
//!       "guest_to_guest": null       // n/a with one guest; else as above,
//!     }                              // each run also with "switched"
//!   ]                                // (tx_switched) and "wire_frames"
//! }                                  // (what the sink saw)
//! ```
//!
//! where `S` is `{ "median", "min", "max" }` over the runs, and "sent" is
//! what the generator completed (wire -> guests) or what the guests queued
//! on their TX vrings (guest -> guest).

use crate::scaling::{ScalingDirection, ScalingSample};
use crate::{Case, Options, Results, Sample, System};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Fraction of offered frames that did not arrive (0 when nothing was
/// offered or more arrived than the window counted as offered).
pub fn loss(s: &Sample) -> f64 {
    if s.sent == 0 {
        return 0.0;
    }
    s.sent.saturating_sub(s.delivered) as f64 / s.sent as f64
}

/// Delivered frames per second.
pub fn fps(s: &Sample) -> f64 {
    if s.secs <= 0.0 {
        return 0.0;
    }
    s.delivered as f64 / s.secs
}

/// Delivered Gbit/s (frame bytes only: veth has no preamble, gap or FCS).
pub fn gbps(s: &Sample, frame: usize) -> f64 {
    fps(s) * frame as f64 * 8.0 / 1e9
}

/// CPU seconds per million delivered frames.
pub fn per_mframe(cpu_secs: f64, s: &Sample) -> f64 {
    if s.delivered == 0 {
        return 0.0;
    }
    cpu_secs / (s.delivered as f64 / 1e6)
}

/// The `p`-th percentile (nearest rank) of `sorted`; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite rounding.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, min and max of a set of runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `v` (NaNs ignored); all zero when empty.
    pub fn of(v: &[f64]) -> Self {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({ "median": round(self.median), "min": round(self.min), "max": round(self.max) })
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn text(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Per system and case: the samples by run.
type ByCase = BTreeMap<(Case, System), BTreeMap<usize, Sample>>;

fn by_case(res: &Results) -> ByCase {
    let mut m: ByCase = BTreeMap::new();
    for &(sys, case, run, s) in &res.samples {
        m.entry((case, sys)).or_default().insert(run, s);
    }
    m
}

/// Per-run ratio of delivered rates `a / b` for `case`, summarised.
pub fn ratio(res: &Results, case: Case, a: System, b: System) -> Option<Summary> {
    let m = by_case(res);
    let (ra, rb) = (m.get(&(case, a))?, m.get(&(case, b))?);
    let v: Vec<f64> = ra
        .iter()
        .filter_map(|(run, sa)| {
            let sb = rb.get(run)?;
            (fps(sb) > 0.0).then(|| fps(sa) / fps(sb))
        })
        .collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

/// The cases measured, in order.
pub fn cases(res: &Results) -> Vec<Case> {
    let mut v: Vec<Case> = res.samples.iter().map(|&(_, c, _, _)| c).collect();
    v.sort();
    v.dedup();
    v
}

/// Summary of a metric over the runs of (case, system).
pub fn metric(
    res: &Results,
    case: Case,
    sys: System,
    f: impl Fn(&Sample) -> f64,
) -> Option<Summary> {
    let v: Vec<f64> = res
        .samples
        .iter()
        .filter(|&&(s, c, _, _)| s == sys && c == case)
        .map(|(_, _, _, smp)| f(smp))
        .collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

/// Latency percentile `p` (µs) of each run of `sys`, summarised.
pub fn latency(res: &Results, sys: System, p: f64) -> Option<Summary> {
    let v: Vec<f64> = res
        .latency
        .iter()
        .filter(|l| l.system == sys && !l.rtts.is_empty())
        .map(|l| percentile(&l.rtts, p) as f64 / 1e3)
        .collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

/// The guest counts the scaling case measured, ascending.
pub fn scaling_guests(res: &Results) -> Vec<u32> {
    let mut v: Vec<u32> = res.scaling.iter().map(|r| r.guests).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Summary of a metric over the scaling runs of (guests, direction).
pub fn scaling_metric(
    res: &Results,
    guests: u32,
    direction: ScalingDirection,
    f: impl Fn(&ScalingSample) -> f64,
) -> Option<Summary> {
    let v: Vec<f64> = res
        .scaling
        .iter()
        .filter(|r| r.guests == guests && r.direction == direction)
        .map(|r| f(&r.sample))
        .collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

/// Aggregate delivered Mpps of a scaling window.
fn scaling_mpps(s: &ScalingSample) -> f64 {
    fps(&s.sample) / 1e6
}

/// xdpathd's worker CPU per delivered frame (µs) of a scaling window.
fn scaling_cpu(s: &ScalingSample) -> f64 {
    per_mframe(s.sample.bridge_cpu_secs, &s.sample)
}

/// The `scaling` section of results.json (shape in the module doc).
fn scaling_json(opts: &Options, res: &Results) -> Value {
    if res.scaling.is_empty() {
        return Value::Null;
    }
    let rows: Vec<Value> = scaling_guests(res)
        .into_iter()
        .map(|n| {
            let dir = |d: ScalingDirection| -> Value {
                let runs: Vec<Value> = res
                    .scaling
                    .iter()
                    .filter(|r| r.guests == n && r.direction == d)
                    .map(|r| {
                        let s = &r.sample;
                        let mut j = json!({
                            "run": r.run,
                            "secs": round(s.sample.secs),
                            "sent": s.sample.sent,
                            "delivered": s.sample.delivered,
                            "per_guest": s.per_guest,
                            "mpps": round(scaling_mpps(s)),
                            "worker_cpu_secs": round(s.sample.bridge_cpu_secs),
                            "machine_cpu_secs": round(s.sample.machine_cpu_secs),
                            "worker_cpu_us_per_frame": round(scaling_cpu(s)),
                        });
                        if d == ScalingDirection::GuestToGuest {
                            j["switched"] = json!(s.switched);
                            j["wire_frames"] = json!(s.wire);
                        }
                        j
                    })
                    .collect();
                if runs.is_empty() {
                    return Value::Null;
                }
                let m = |f: &dyn Fn(&ScalingSample) -> f64| {
                    scaling_metric(res, n, d, f).unwrap_or_default().json()
                };
                json!({
                    "mpps": m(&scaling_mpps),
                    "worker_cpu_us_per_frame": m(&scaling_cpu),
                    "machine_cpu_us_per_frame": m(&|s| per_mframe(s.sample.machine_cpu_secs, &s.sample)),
                    "loss": m(&|s| loss(&s.sample)),
                    "runs": runs,
                })
            };
            json!({
                "guests": n,
                "wire_to_guests": dir(ScalingDirection::WireToGuests),
                "guest_to_guest": dir(ScalingDirection::GuestToGuest),
            })
        })
        .collect();
    json!({
        "queue_pairs": opts.scaling_queue_pairs,
        "frame_bytes": crate::scaling::FRAME,
        "wire_flows_per_queue": crate::scaling::WIRE_FLOWS,
        "counted_at": SCALING_COUNTED,
        "worker_cpu": SCALING_CPU,
        "guest_to_guest": SCALING_G2G,
        "rows": rows,
    })
}

/// Where the scaling case counts frames.
const SCALING_COUNTED: &str =
    "at the guests: frames each guest's frontend took off its RX vrings, summed over the guests";
/// What the scaling case's CPU figure is.
const SCALING_CPU: &str = "utime + stime of xdpathd's vring_worker threads (one per guest and queue pair) over the window, divided by the frames delivered";
/// The scaling case's guest-to-guest pattern.
const SCALING_G2G: &str = "guest i sends unicast to guest (i+1) mod N on every queue pair, switched inside xdpathd (tx_switched); not applicable (null) with one guest";

/// The whole result set as JSON.
pub fn to_json(opts: &Options, res: &Results, machine: Value) -> Value {
    let mut cases_json = Vec::new();
    let mut ratios = Vec::new();
    for case in cases(res) {
        let cj = json!({
            "queue_pairs": case.queue_pairs,
            "direction": case.direction.name(),
            "frame_bytes": case.frame,
            "flows": case.flows.name(),
        });
        for sys in System::ALL {
            let runs: Vec<Value> = res
                .samples
                .iter()
                .filter(|&&(s, c, _, _)| s == sys && c == case)
                .map(|(_, _, run, s)| {
                    json!({
                        "run": run,
                        "secs": round(s.secs),
                        "sent": s.sent,
                        "delivered": s.delivered,
                        "mpps": round(fps(s) / 1e6),
                        "gbps": round(gbps(s, case.frame)),
                        "loss": round(loss(s)),
                        "bridge_cpu_secs": round(s.bridge_cpu_secs),
                        "machine_cpu_secs": round(s.machine_cpu_secs),
                    })
                })
                .collect();
            if runs.is_empty() {
                continue;
            }
            let m =
                |f: &dyn Fn(&Sample) -> f64| metric(res, case, sys, f).unwrap_or_default().json();
            cases_json.push(json!({
                "case": cj,
                "system": sys.name(),
                "runs": runs,
                "mpps": m(&|s| fps(s) / 1e6),
                "gbps": m(&|s| gbps(s, case.frame)),
                "loss": m(&loss),
                "bridge_cpu_secs_per_mframe": m(&|s| per_mframe(s.bridge_cpu_secs, s)),
                "machine_cpu_secs_per_mframe": m(&|s| per_mframe(s.machine_cpu_secs, s)),
            }));
        }
        let r = |b| ratio(res, case, System::Xdpath, b).map(|s| s.json());
        ratios.push(json!({
            "case": cj,
            "xdpath/dpdk": r(System::Dpdk),
            "xdpath/limit": r(System::Limit),
        }));
    }
    let latency: Vec<Value> = System::ALL
        .iter()
        .filter_map(|&sys| {
            let runs: Vec<Value> = res
                .latency
                .iter()
                .filter(|l| l.system == sys)
                .map(|l| {
                    json!({
                        "run": l.run,
                        "round_trips": l.rtts.len(),
                        "lost": l.lost,
                        "p50_us": round(percentile(&l.rtts, 50.0) as f64 / 1e3),
                        "p99_us": round(percentile(&l.rtts, 99.0) as f64 / 1e3),
                        "p99_9_us": round(percentile(&l.rtts, 99.9) as f64 / 1e3),
                    })
                })
                .collect();
            let s = |p| latency(res, sys, p).map(|s| s.json());
            (!runs.is_empty()).then(|| {
                json!({
                    "system": sys.name(),
                    "frame_bytes": 64,
                    "runs": runs,
                    "p50_us": s(50.0),
                    "p99_us": s(99.0),
                    "p99_9_us": s(99.9),
                })
            })
        })
        .collect();
    json!({
        "machine": machine,
        "config": {
            "runs": opts.runs,
            "secs_per_case": opts.secs,
            "warmup_secs": opts.warmup,
            "frame_bytes": opts.frames,
            "queue_pairs": opts.queue_pairs,
            "flows": opts.flows.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "placement": PLACEMENT,
            "xdpath_poll_idle_us": opts.poll_idle.as_micros() as u64,
            "offered_load": "as fast as the generator (or guest) can send; delivered counted at the receiver",
        },
        "cases": cases_json,
        "ratios": ratios,
        "latency": latency,
        "skipped": res.skipped.iter().map(|(s, q, why)| json!({
            "system": s.name(),
            "queue_pairs": q,
            "why": why,
        })).collect::<Vec<_>>(),
        "idle": res.idle.map(|i| json!({
            "secs": round(i.secs),
            "xdpathd_percent_of_a_core": round(i.xdpathd_percent),
            "testpmd_percent_of_a_core": round(i.testpmd_percent),
        })),
        "scaling": scaling_json(opts, res),
        "wall_secs": round(res.wall_secs),
    })
}

/// Where things ran.
pub const PLACEMENT: &str = "generator and pinger pinned to CPU 0; guest (in-repo frontend) pinned to CPU 1; bridge unpinned (xdpath workers, testpmd lcores 0@(0,1),1@(0,1)); the limit (no guest) spins on CPU 1";

/// The Markdown report (the README's Performance table).
pub fn to_markdown(opts: &Options, res: &Results, machine: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {} ({} CPUs), kernel {}, DPDK {}. {} run(s) of {:.1} s per case; \
         each figure is the median over runs (min–max). Frames are counted where \
         they arrive. Placement: {PLACEMENT}.\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["dpdk"].as_str().unwrap_or("?"),
        opts.runs,
        opts.secs
    );
    let _ = writeln!(
        md,
        "| case | xdpath Mpps | DPDK Mpps | limit Mpps | xdpath / DPDK | xdpath / limit | xdpath Gbit/s | xdpath loss | bridge CPU s per Mframe, xdpath / DPDK |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for case in cases(res) {
        let mpps =
            |s| metric(res, case, s, |x| fps(x) / 1e6).map_or("–".to_string(), |m| m.text(3));
        let r = |b| ratio(res, case, System::Xdpath, b).map_or("–".to_string(), |m| m.text(2));
        let g = metric(res, case, System::Xdpath, |x| gbps(x, case.frame))
            .map_or("–".to_string(), |m| format!("{:.2}", m.median));
        let l = metric(res, case, System::Xdpath, loss)
            .map_or("–".to_string(), |m| format!("{:.2}%", m.median * 100.0));
        let cpu = |s| {
            metric(res, case, s, |x| per_mframe(x.bridge_cpu_secs, x))
                .map_or("–".to_string(), |m| format!("{:.2}", m.median))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            case.label(),
            mpps(System::Xdpath),
            mpps(System::Dpdk),
            mpps(System::Limit),
            r(System::Dpdk),
            r(System::Limit),
            g,
            l,
            cpu(System::Xdpath),
            cpu(System::Dpdk),
        );
    }
    for (sys, qp, why) in &res.skipped {
        let _ = writeln!(
            md,
            "\n{} with {qp} queue pairs: not measured: {why}.",
            sys.name()
        );
    }
    if !res.latency.is_empty() {
        let _ = writeln!(
            md,
            "\nRequest/response latency, 64-byte frames, one queue pair (µs; median over runs, min–max):\n"
        );
        let _ = writeln!(md, "| system | p50 | p99 | p99.9 | lost |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for sys in System::ALL {
            let Some(p50) = latency(res, sys, 50.0) else {
                continue;
            };
            let p = |q| latency(res, sys, q).unwrap_or_default().text(1);
            let lost: u64 = res
                .latency
                .iter()
                .filter(|l| l.system == sys)
                .map(|l| l.lost)
                .sum();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {lost} |",
                sys.name(),
                p50.text(1),
                p(99.0),
                p(99.9)
            );
        }
    }
    scaling_markdown(opts, res, &mut md);
    if let Some(i) = res.idle {
        let _ = writeln!(
            md,
            "\nIdle with a guest attached, {:.0} s: xdpathd {:.3}% of one core, testpmd {:.1}%.",
            i.secs, i.xdpathd_percent, i.testpmd_percent
        );
    }
    md
}

/// The scaling table: one row per guest count.
fn scaling_markdown(opts: &Options, res: &Results, md: &mut String) {
    let guests = scaling_guests(res);
    if guests.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nSeveral guests on one xdpathd: {} B frames, {} queue pairs per guest; \
         wire → guests spreads {} UDP flows per queue evenly over the guests' MACs, \
         guest → guest has guest i send to guest (i+1) mod N on every pair (switched \
         inside xdpathd, `tx_switched`). The generator runs on CPU 0, one thread \
         driving every guest on CPU 1, xdpathd unpinned. Aggregate Mpps counted at \
         the guests, median (min–max); worker CPU is xdpathd's `vring_worker` threads' CPU time per \
         delivered frame (µs, median). On 2 CPUs the rate mostly measures contention; \
         the CPU per frame is the figure to compare.\n",
        crate::scaling::FRAME,
        opts.scaling_queue_pairs,
        crate::scaling::WIRE_FLOWS,
    );
    let _ = writeln!(
        md,
        "| guests | wire → guests Mpps | worker CPU µs/frame | guest → guest Mpps | worker CPU µs/frame |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for n in guests {
        let cell = |d: ScalingDirection| {
            if !d.applies(n) {
                return ("n/a (one guest)".to_string(), "n/a".to_string());
            }
            (
                scaling_metric(res, n, d, scaling_mpps).map_or("–".into(), |m| m.text(3)),
                scaling_metric(res, n, d, scaling_cpu)
                    .map_or("–".into(), |m| format!("{:.2}", m.median)),
            )
        };
        let (w, wc) = cell(ScalingDirection::WireToGuests);
        let (g, gc) = cell(ScalingDirection::GuestToGuest);
        let _ = writeln!(md, "| {n} | {w} | {wc} | {g} | {gc} |");
    }
    let wire: u64 = res.scaling.iter().filter_map(|r| r.sample.wire).sum();
    let switched: u64 = res.scaling.iter().filter_map(|r| r.sample.switched).sum();
    if res
        .scaling
        .iter()
        .any(|r| r.direction == ScalingDirection::GuestToGuest)
    {
        let _ = writeln!(
            md,
            "\nGuest → guest windows: {switched} frames switched by xdpathd, {wire} seen on the wire."
        );
    }
}

/// An SVG with two panels: delivered Mpps per case (median bar, min–max
/// whisker) for each system, and latency percentiles per system.
pub fn to_svg(res: &Results) -> String {
    let cases = cases(res);
    let colors = [
        ("xdpath", "#1f77b4"),
        ("dpdk", "#ff7f0e"),
        ("limit", "#9e9e9e"),
    ];
    let group = 3.0 * 12.0 + 14.0;
    let (left, top, h1) = (60.0, 56.0, 260.0);
    let width = (left + 20.0 + group * cases.len().max(1) as f64).max(820.0);
    let h2 = 200.0;
    // Room under the bars for the rotated case labels.
    let labels = 190.0;
    // The scaling panel, when the scaling case ran, goes below.
    let h3 = 200.0;
    let scaled = !res.scaling.is_empty();
    let height = top + h1 + labels + h2 + 60.0 + if scaled { h3 + 110.0 } else { 0.0 };
    let ymax = res
        .samples
        .iter()
        .map(|(_, _, _, s)| fps(s) / 1e6)
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.1;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">Delivered Mpps per case (median bar, min–max whisker)</text>"#
    );
    for (i, (name, c)) in colors.iter().enumerate() {
        let x = left + 75.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{c}"/><text x="{}" y="37">{name}</text>"#,
            x + 14.0
        );
    }
    let y = |v: f64| top + h1 - v / ymax * h1;
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{x2}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.2}</text>"##,
            x2 = width - 10.0,
            tx = left - 4.0,
            yv = y(v),
            ty = y(v) + 4.0
        );
    }
    for (ci, case) in cases.iter().enumerate() {
        let x0 = left + 8.0 + group * ci as f64;
        for (si, sys) in System::ALL.iter().enumerate() {
            let Some(m) = metric(res, *case, *sys, |x| fps(x) / 1e6) else {
                continue;
            };
            let x = x0 + 12.0 * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="10" height="{:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                y(m.median),
                top + h1 - y(m.median),
                colors[si].1,
                sys.name(),
                case.label(),
                m.text(3)
            );
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="black"/>"#,
                x + 5.0,
                y(m.min),
                y(m.max)
            );
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1},{:.1}) rotate(60)">{}</text>"#,
            x0 + 10.0,
            top + h1 + 10.0,
            case.label()
        );
    }
    // Latency panel.
    let t2 = top + h1 + labels;
    let lat: Vec<(System, [Summary; 3])> = System::ALL
        .iter()
        .filter_map(|&sys| {
            Some((
                sys,
                [
                    latency(res, sys, 50.0)?,
                    latency(res, sys, 99.0)?,
                    latency(res, sys, 99.9)?,
                ],
            ))
        })
        .collect();
    // Log scale from 1 µs up to the next power of ten above the largest.
    let decades = lat
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| x.max))
        .fold(1.0f64, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}" font-size="14">Request/response round trip, 64 B, µs, log scale (p50 / p99 / p99.9; median bar, min–max whisker)</text>"#,
        t2 - 20.0
    );
    let ly = |v: f64| t2 + h2 - v.max(1.0).log10() / decades * h2;
    for k in 0..=decades as i32 {
        let v = 10f64.powi(k);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{x2}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.0}</text>"##,
            x2 = left + 420.0,
            tx = left - 4.0,
            yv = ly(v),
            ty = ly(v) + 4.0
        );
    }
    for (pi, pname) in ["p50", "p99", "p99.9"].iter().enumerate() {
        let x0 = left + 10.0 + 140.0 * pi as f64;
        for (sys, v) in &lat {
            let si = System::ALL.iter().position(|x| x == sys).unwrap_or(0);
            let m = v[pi];
            let x = x0 + 30.0 * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="24" height="{h:.1}" fill="{c}"><title>{name} {pname}: {t}</title></rect><line x1="{lx:.1}" x2="{lx:.1}" y1="{lo:.1}" y2="{hi:.1}" stroke="black"/>"#,
                top = ly(m.median),
                h = t2 + h2 - ly(m.median),
                c = colors[si].1,
                name = sys.name(),
                t = m.text(1),
                lx = x + 12.0,
                lo = ly(m.min),
                hi = ly(m.max)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{pname}</text>"#,
            x0 + 30.0,
            t2 + h2 + 16.0
        );
    }
    if scaled {
        scaling_svg_panel(res, &mut s, left, top + h1 + labels + h2 + 60.0 + 50.0, h3);
    }
    s.push_str("</svg>\n");
    s
}

/// The scaling panel of the SVG at `top` (its title above it), `h` high:
/// per guest count a wire -> guests and a guest -> guest bar (aggregate
/// Mpps, median, min–max whisker) with the worker CPU per frame written
/// above each.
fn scaling_svg_panel(res: &Results, s: &mut String, left: f64, top: f64, h: f64) {
    let guests = scaling_guests(res);
    let colors = [
        (ScalingDirection::WireToGuests, "#2ca02c"),
        (ScalingDirection::GuestToGuest, "#9467bd"),
    ];
    let ymax = res
        .scaling
        .iter()
        .map(|r| scaling_mpps(&r.sample))
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.2;
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}" font-size="14">Several guests on one xdpathd: aggregate Mpps (median bar, min–max whisker)</text>"#,
        top - 34.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">number above a bar: xdpathd's worker CPU, µs per frame</text>"#,
        left + 280.0,
        top - 17.0
    );
    for (i, (d, c)) in colors.iter().enumerate() {
        let x = left + 130.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{c}"/><text x="{}" y="{:.1}">{}</text>"#,
            top - 26.0,
            x + 14.0,
            top - 17.0,
            d.name()
        );
    }
    let y = |v: f64| top + h - v / ymax * h;
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{x2}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.2}</text>"##,
            x2 = left + 100.0 * guests.len().max(1) as f64 + 20.0,
            tx = left - 4.0,
            yv = y(v),
            ty = y(v) + 4.0
        );
    }
    for (gi, &n) in guests.iter().enumerate() {
        let x0 = left + 20.0 + 100.0 * gi as f64;
        for (di, (d, c)) in colors.iter().enumerate() {
            let x = x0 + 32.0 * di as f64;
            let (Some(m), Some(cpu)) = (
                scaling_metric(res, n, *d, scaling_mpps),
                scaling_metric(res, n, *d, scaling_cpu),
            ) else {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">n/a</text>"#,
                    x + 13.0,
                    top + h - 4.0
                );
                continue;
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="26" height="{:.1}" fill="{c}"><title>{n} guests {}: {} Mpps, worker CPU {:.2} µs/frame</title></rect><line x1="{lx:.1}" x2="{lx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/><text x="{lx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{:.2}</text>"#,
                y(m.median),
                top + h - y(m.median),
                d.name(),
                m.text(3),
                cpu.median,
                y(m.min),
                y(m.max),
                y(m.max) - 4.0,
                cpu.median,
                lx = x + 13.0,
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n} guest{}</text>"#,
            x0 + 29.0,
            top + h + 16.0,
            if n == 1 { "" } else { "s" }
        );
    }
}

/// Writes results.json, results.md and results.svg into `opts.out`.
pub fn write(opts: &Options, res: &Results) -> Result<()> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let machine = super::machine();
    let j = to_json(opts, res, machine.clone());
    let files = [
        ("results.json", serde_json::to_string_pretty(&j)? + "\n"),
        ("results.md", to_markdown(opts, res, &machine)),
        ("results.svg", to_svg(res)),
    ];
    for (name, text) in files {
        let p = opts.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Direction, Flows, LatencyRun};

    fn sample(delivered: u64, sent: u64) -> Sample {
        Sample {
            secs: 1.0,
            sent,
            delivered,
            bridge_cpu_secs: 0.5,
            machine_cpu_secs: 2.0,
        }
    }

    #[test]
    fn summary_and_percentiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[1.0, 2.0, 4.0, 8.0]).median, 3.0);
        assert_eq!(Summary::of(&[]), Summary::default());
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.9), 7);
    }

    #[test]
    fn ratios_are_taken_per_run() {
        let case = Case {
            queue_pairs: 1,
            direction: Direction::WireToGuest,
            frame: 64,
            flows: Flows::Many,
        };
        let mut res = Results::default();
        for (run, (x, d)) in [(100, 50), (90, 100), (120, 60)].into_iter().enumerate() {
            res.samples.push((System::Xdpath, case, run, sample(x, x)));
            res.samples
                .push((System::Dpdk, case, run, sample(d, 2 * d)));
        }
        let r = ratio(&res, case, System::Xdpath, System::Dpdk).expect("ratio");
        assert_eq!((r.median, r.min, r.max), (2.0, 0.9, 2.0));
        assert!(ratio(&res, case, System::Xdpath, System::Limit).is_none());
        let l = metric(&res, case, System::Dpdk, loss).expect("loss");
        assert_eq!(l.median, 0.5);
        assert_eq!(per_mframe(0.5, &sample(1_000_000, 1)), 0.5);
        assert_eq!(gbps(&sample(1_000_000, 1), 1500), 12.0);

        res.latency.push(LatencyRun {
            system: System::Xdpath,
            run: 0,
            rtts: (1..=100).map(|x| x * 1000).collect(),
            lost: 0,
        });
        let opts = crate::Options::quick(std::env::temp_dir());
        let j = to_json(
            &opts,
            &res,
            json!({"cpu_model": "x", "cpus": 2, "kernel": "k", "dpdk": "d"}),
        );
        assert_eq!(j["ratios"][0]["xdpath/dpdk"]["median"], 2.0);
        assert_eq!(j["cases"].as_array().map(Vec::len), Some(2));
        assert_eq!(j["latency"][0]["p50_us"]["median"], 50.0);
        let md = to_markdown(&opts, &res, &j["machine"]);
        assert!(
            md.contains("| 1qp w->g 64B many | 0.000 (0.000–0.000)"),
            "{md}"
        );
        assert!(md.contains("2.00 (0.90–2.00)"), "{md}");
        let svg = to_svg(&res);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 2 + 3, "{svg}");
    }

    #[test]
    fn scaling_rows_report_medians_and_one_guest_has_no_guest_to_guest() {
        use crate::scaling::{ScalingDirection as D, ScalingSample};
        use crate::ScalingRun;
        let mut res = Results::default();
        let win = |delivered: u64, cpu: f64, wire: Option<u64>| ScalingSample {
            sample: Sample {
                secs: 1.0,
                sent: delivered,
                delivered,
                bridge_cpu_secs: cpu,
                machine_cpu_secs: 2.0,
            },
            per_guest: vec![delivered],
            switched: wire.map(|_| delivered),
            wire,
        };
        for (run, k) in [(0, 1u64), (1, 3), (2, 2)] {
            res.scaling.push(ScalingRun {
                guests: 1,
                direction: D::WireToGuests,
                run,
                sample: win(k * 100_000, 0.1 * k as f64, None),
            });
            res.scaling.push(ScalingRun {
                guests: 2,
                direction: D::GuestToGuest,
                run,
                sample: win(k * 200_000, 0.1, Some(0)),
            });
        }
        let opts = crate::Options::quick(std::env::temp_dir());
        let j = to_json(&opts, &res, json!({"cpu_model": "x", "cpus": 2}));
        let rows = j["scaling"]["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["guests"], 1);
        assert_eq!(rows[0]["wire_to_guests"]["mpps"]["median"], 0.2);
        assert_eq!(rows[0]["wire_to_guests"]["mpps"]["max"], 0.3);
        // 0.2 s of CPU over 200,000 frames: 1 µs each.
        assert_eq!(
            rows[0]["wire_to_guests"]["worker_cpu_us_per_frame"]["median"],
            1.0
        );
        assert!(rows[0]["guest_to_guest"].is_null());
        assert!(rows[1]["wire_to_guests"].is_null());
        assert_eq!(rows[1]["guest_to_guest"]["mpps"]["median"], 0.4);
        assert_eq!(rows[1]["guest_to_guest"]["runs"][0]["wire_frames"], 0);
        assert_eq!(j["scaling"]["queue_pairs"], 2);
        let md = to_markdown(&opts, &res, &j["machine"]);
        assert!(
            md.contains("| 1 | 0.200 (0.100–0.300) | 1.00 | n/a (one guest) | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | – | – | 0.400 (0.200–0.600) | 0.25 |"),
            "{md}"
        );
        assert!(md.contains("1200000 frames switched by xdpathd, 0 seen on the wire"));
        let svg = to_svg(&res);
        assert!(svg.contains("Several guests on one xdpathd"), "{svg}");
        assert!(svg.contains("<title>2 guests guest->guest: 0.400 (0.200–0.600) Mpps"));
        assert_eq!(svg.matches(">n/a</text>").count(), 2, "{svg}");
        assert!(to_json(&opts, &Results::default(), json!({}))["scaling"].is_null());
    }
}
