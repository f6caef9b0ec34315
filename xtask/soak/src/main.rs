//! `xdpath-soak`: the soak driver (`cargo xtask soak` runs it as root; the
//! CI form runs from `cargo xtask test`). See the library (`xdpath_soak`)
//! for what each part does and checks.
//!
//! Prints a summary, writes every figure to `<out>/<form>.json` (default
//! `target/soak/ci.json` or `target/soak/long.json`), and exits 1 if any
//! check failed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use xdpath_soak::plan::{PartKind, Plan, FULL_MINUTES};
use xdpath_soak::report::{secs, Part};
use xdpath_soak::{abuse, cycles, guests, restarts, stop};

#[derive(Parser)]
#[command(
    name = "xdpath-soak",
    about = "Soak a real xdpathd with several guests: frontend kill cycles, kill -9 restarts, \
             guest add/remove churn, API abuse"
)]
struct Args {
    /// The CI form: 100 cycles, 10 restarts, 20 guest add/remove rounds, a
    /// reduced abuse (about two minutes).
    #[arg(long, conflicts_with = "minutes")]
    ci: bool,
    /// The long form's time budget; the counts scale with it (1,000 cycles,
    /// 50 restarts and 200 guest add/remove rounds at the default).
    #[arg(long, default_value_t = FULL_MINUTES)]
    minutes: u64,
    /// Only these parts (comma-separated: cycles, restarts, guests, abuse).
    #[arg(long, value_delimiter = ',')]
    parts: Vec<String>,
    /// Override the number of frontend cycles.
    #[arg(long)]
    cycles: Option<u32>,
    /// Override the number of kill -9 restarts.
    #[arg(long)]
    restarts: Option<u32>,
    /// Override the number of guest add/remove rounds.
    #[arg(long)]
    guest_rounds: Option<u32>,
    /// Seed of the random moments (printed; default from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak creates network namespaces and attaches XDP: run it as root (cargo xtask soak)");
    }
    stop::install();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut plan = if a.ci {
        Plan::ci(seed)
    } else {
        Plan::long(a.minutes, seed)
    };
    if let Some(c) = a.cycles {
        plan.cycles = c;
    }
    if let Some(r) = a.restarts {
        plan.restarts = r;
    }
    if let Some(r) = a.guest_rounds {
        plan.guest_rounds = r;
    }
    let parts: Vec<PartKind> = if a.parts.is_empty() {
        PartKind::ALL.to_vec()
    } else {
        a.parts
            .iter()
            .map(|s| {
                PartKind::parse(s.trim())
                    .with_context(|| format!("--parts: {s:?} is not a part ({})", PartKind::NAMES))
            })
            .collect::<Result<_>>()?
    };
    println!(
        "xdpath soak ({} form): {} cycles, {} restarts, {} guest rounds, {} writers, \
         {} slow clients, budget {} s, seed {seed}",
        plan.form,
        plan.cycles,
        plan.restarts,
        plan.guest_rounds,
        plan.writers,
        plan.slow_clients,
        plan.budget.as_secs()
    );
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut done: Vec<Part> = Vec::new();
    for k in parts {
        if stop::requested() {
            break;
        }
        println!("-- {} ...", k.name());
        let part = match k {
            PartKind::Cycles => cycles::run(&plan, &mut rng),
            PartKind::Restarts => restarts::run(&plan, &mut rng),
            PartKind::Guests => guests::run(&plan, &mut rng),
            PartKind::Abuse => abuse::run(&plan),
        };
        print!("{}", part.text());
        done.push(part);
    }
    let wall = started.elapsed();
    let figures = summary(&done);
    println!("\n{}", summary_text(&figures));
    let passed = !done.is_empty() && done.iter().all(Part::passed) && !stop::requested();
    let report = json!({
        "form": plan.form,
        "passed": passed,
        "wall_time_s": secs(wall),
        "seed": seed,
        "plan": {"cycles": plan.cycles, "restarts": plan.restarts,
                 "guest_rounds": plan.guest_rounds, "writers": plan.writers,
                 "rules_per_writer": plan.ops_per_writer, "slow_clients": plan.slow_clients,
                 "oversize_mib": plan.oversize_mib, "budget_s": plan.budget.as_secs()},
        "machine": {
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        "summary": figures,
        "parts": done.iter().map(|p| (p.name.to_string(), p.json())).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let file = a.out.join(format!("{}.json", plan.form));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "\nsoak {} in {:.0} s (seed {seed}); figures in {}",
        if passed { "PASSED" } else { "FAILED" },
        wall.as_secs_f64(),
        file.display()
    );
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// The figures the issue asks for, from the parts that ran.
fn summary(parts: &[Part]) -> Value {
    let fig = |name: &str| parts.iter().find(|p| p.name == name).map(|p| &p.figures);
    let get = |name: &str, key: &str| fig(name).and_then(|f| f.get(key)).cloned();
    let stops: Vec<Value> = parts
        .iter()
        .filter_map(|p| {
            p.figures
                .get("stop_latency_ms")
                .map(|v| json!({"part": p.name, "ms": v}))
        })
        .collect();
    // A stop that needed SIGKILL has no latency (null): the maximum is then
    // "more than 15 s".
    let max_stop = if stops.iter().any(|s| s["ms"].is_null()) {
        Value::Null
    } else {
        stops
            .iter()
            .filter_map(|s| s["ms"].as_f64())
            .reduce(f64::max)
            .map_or(Value::Null, Value::from)
    };
    json!({
        "daemon_under_frontend_cycles": {
            "start": get("cycles", "start"),
            "after_warm_up": get("cycles", "after_warm_up"),
            "end": get("cycles", "end"),
        },
        "stop_latency_ms": stops,
        "max_stop_latency_ms": max_stop,
        "host_pings": get("restarts", "host_pings"),
        "guest_resume_after_kill": get("restarts", "guest_resume_after_kill"),
        "guest_resume_after_kill_per_guest": get("restarts", "guest_resume_per_guest"),
        "guest_churn": fig("guests").map(|f| json!({
            "rounds": f.get("rounds"),
            "steady_guests": f.get("steady_guests"),
            "start": f.get("start"),
            "end": f.get("end"),
        })),
        "api_abuse": fig("abuse").map(|f| json!({
            "writers": f.get("writers"),
            "oversize": f.get("oversize"),
            "start": f.get("start"),
            "peak_rss_kib": f.get("peak_rss_kib"),
            "slow_clients": f.get("slow_clients"),
            "stop_latency_ms": f.get("stop_latency_ms"),
        })),
    })
}

/// The summary as lines of text.
fn summary_text(s: &Value) -> String {
    let mut out = String::from("Figures:\n");
    let d = &s["daemon_under_frontend_cycles"];
    if !d["start"].is_null() {
        let f = |v: &Value| {
            format!(
                "{} fds, {} threads, {:.1} MiB",
                v["fds"],
                v["threads"],
                v["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            )
        };
        out.push_str(&format!(
            "  xdpathd: start {}; after warm-up {}; end {}\n",
            f(&d["start"]),
            f(&d["after_warm_up"]),
            f(&d["end"])
        ));
    }
    let stops: Vec<String> = s["stop_latency_ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x["ms"].as_f64() {
                    Some(ms) => format!("{} {ms:.0} ms", x["part"].as_str().unwrap_or("?")),
                    None => format!("{} > 15 s (killed)", x["part"].as_str().unwrap_or("?")),
                })
                .collect()
        })
        .unwrap_or_default();
    if !stops.is_empty() {
        out.push_str(&format!("  SIGTERM to exit: {}\n", stops.join(", ")));
    }
    let p = &s["host_pings"];
    if !p.is_null() {
        out.push_str(&format!(
            "  host pings: {} sent, {} lost\n",
            p["sent"], p["lost"]
        ));
    }
    let r = &s["guest_resume_after_kill"];
    if !r.is_null() {
        out.push_str(&format!(
            "  every guest resumed after kill -9: median {} ms, max {} ms\n",
            r["median_ms"], r["max_ms"]
        ));
    }
    if let Some(per) = s["guest_resume_after_kill_per_guest"].as_object() {
        let each: Vec<String> = per
            .iter()
            .map(|(g, v)| format!("{g} median {} ms, max {} ms", v["median_ms"], v["max_ms"]))
            .collect();
        out.push_str(&format!("    per guest: {}\n", each.join("; ")));
    }
    let c = &s["guest_churn"];
    if !c.is_null() {
        let lost: Vec<String> = c["steady_guests"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(g, v)| format!("{g} {} of {} lost", v["lost"], v["sent"]))
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  guest churn: {} rounds; steady guests: {}; xdpathd {} -> {} fds, {} -> {} threads\n",
            c["rounds"],
            lost.join(", "),
            c["start"]["fds"],
            c["end"]["fds"],
            c["start"]["threads"],
            c["end"]["threads"]
        ));
    }
    let a = &s["api_abuse"];
    if !a.is_null() {
        let oversize: Vec<String> = a["oversize"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|o| {
                        format!(
                            "{} -> {} after {:.0} MiB",
                            o["case"].as_str().unwrap_or("?"),
                            o["status"],
                            o["bytes_sent_before_answer"].as_f64().unwrap_or(0.0) / 1048576.0
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  API abuse: writers {}; oversize: {}; RSS {:.1} -> peak {:.1} MiB\n",
            a["writers"]["answers"]["by_status"],
            oversize.join("; "),
            a["start"]["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            a["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
        ));
    }
    out
}
