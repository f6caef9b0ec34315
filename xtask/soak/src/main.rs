//! `xdpath-soak`: the soak driver (`cargo xtask soak` runs it as root; the
//! CI form runs from `cargo xtask test`). See the library (`xdpath_soak`)
//! for what each part does and checks.
//!
//! Prints a summary, writes every figure to `<out>/<form>.json` (default
//! `target/soak/ci.json` or `target/soak/long.json`), and exits 1 if any
//! check failed.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use xdpath_soak::plan::{PartKind, Plan, FULL_MINUTES};
use xdpath_soak::report::{secs, Part};
use xdpath_soak::{abuse, cycles, restarts, stop};

#[derive(Parser)]
#[command(
    name = "xdpath-soak",
    about = "Soak a real xdpathd: frontend kill cycles, kill -9 restarts, API abuse"
)]
struct Args {
    /// The CI form: 60 cycles, 5 restarts, a reduced abuse (2-3 minutes).
    #[arg(long, conflicts_with = "minutes")]
    ci: bool,
    /// The long form's time budget; the counts scale with it (1,000 cycles
    /// and 50 restarts at the default).
    #[arg(long, default_value_t = FULL_MINUTES)]
    minutes: u64,
    /// Only these parts (comma-separated: cycles, restarts, abuse).
    #[arg(long, value_delimiter = ',')]
    parts: Vec<String>,
    /// Override the number of frontend cycles.
    #[arg(long)]
    cycles: Option<u32>,
    /// Override the number of kill -9 restarts.
    #[arg(long)]
    restarts: Option<u32>,
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
    let parts: Vec<PartKind> = if a.parts.is_empty() {
        PartKind::ALL.to_vec()
    } else {
        a.parts
            .iter()
            .map(|s| {
                PartKind::parse(s.trim()).with_context(|| {
                    format!("--parts: {s:?} is not a part (cycles, restarts, abuse)")
                })
            })
            .collect::<Result<_>>()?
    };
    println!(
        "xdpath soak ({} form): {} cycles, {} restarts, {} writers, {} slow clients, \
         budget {} s, seed {seed}",
        plan.form,
        plan.cycles,
        plan.restarts,
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
            PartKind::Abuse => abuse::run(&plan),
        };
        print!("{}", part.text());
        done.push(part);
    }
    let wall = started.elapsed();
    let passed = !done.is_empty() && done.iter().all(Part::passed) && !stop::requested();
    let report = json!({
        "form": plan.form,
        "passed": passed,
        "wall_time_s": secs(wall),
        "seed": seed,
        "plan": {"cycles": plan.cycles, "restarts": plan.restarts, "writers": plan.writers,
                 "rules_per_writer": plan.ops_per_writer, "slow_clients": plan.slow_clients,
                 "oversize_mib": plan.oversize_mib, "budget_s": plan.budget.as_secs()},
        "machine": {
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
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
