//! Benchmark statistics and output: per case and system the median, min
//! and max over runs; ratios taken run by run (xdpath / DPDK, xdpath /
//! limit) and then summarised the same way; latency percentiles; all
//! written as `results.json`, `results.md` (the README's table) and
//! `results.svg` (throughput per case, latency distribution).

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
    if let Some(i) = res.idle {
        let _ = writeln!(
            md,
            "\nIdle with a guest attached, {:.0} s: xdpathd {:.3}% of one core, testpmd {:.1}%.",
            i.secs, i.xdpathd_percent, i.testpmd_percent
        );
    }
    md
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
    let height = top + h1 + labels + h2 + 60.0;
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
    s.push_str("</svg>\n");
    s
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
}
