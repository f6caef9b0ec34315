//! `xdpath-bench`: the system benchmark (`cargo xtask bench` runs it as
//! root, release build). See the library (`xdpath_bench`) for what it measures.
//!
//! Usage: `xdpath-bench [--quick] [--runs N] [--secs S] [--out DIR]`
//! - `--quick`: one short run of the 64-byte, one-queue-pair cases and of
//!   the scaling case with 1 and 2 guests (a smoke test, seconds instead
//!   of minutes);
//! - `--runs N`: runs per case (default 5; figures are medians);
//! - `--secs S`: measurement window per case (default 1);
//! - `--out DIR`: where results.json, results.md and results.svg go
//!   (default target/bench);
//! - `--frames 64,512`, `--queue-pairs 1,2`, `--systems xdpath,dpdk,limit`:
//!   a subset of the cases;
//! - `--poll-idle-us N`: xdpath's adaptive polling (as `xdpathd
//!   --poll-idle-us`; default 50, 0 = purely event driven).
//! - `--guests 1,2,4,8`: the guest counts of the scaling case (one
//!   xdpathd with that many guests, 2 queue pairs each; default 1,2,4,8,
//!   with `--quick` 1,2), or `none` to skip it; it runs only when xdpath
//!   is among `--systems`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xdpath_bench::{self as bench, Options, System};

/// Parses a non-empty comma-separated list, every item through `f`.
fn list<T>(v: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let items: Option<Vec<T>> = v.split(',').map(|x| f(x.trim())).collect();
    items.filter(|i| !i.is_empty())
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "xdpath-bench creates namespaces and attaches XDP: run it as root (cargo xtask bench)"
        );
    }
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let (mut runs, mut secs, mut out) = (None, None, PathBuf::from("target/bench"));
    let (mut frames, mut qps, mut systems, mut poll) = (None, None, None, None);
    let mut guests = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => quick = true,
            "--runs" => {
                let v = value("--runs")?;
                runs = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .with_context(|| {
                            format!("--runs {v:?}: expected a whole number of runs, at least 1")
                        })?,
                );
            }
            "--secs" => {
                let v = value("--secs")?;
                secs = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| (0.05..=60.0).contains(s))
                        .with_context(|| {
                            format!("--secs {v:?}: expected seconds between 0.05 and 60")
                        })?,
                );
            }
            "--out" => out = PathBuf::from(value("--out")?),
            "--frames" => {
                let v = value("--frames")?;
                frames = Some(list(&v, |x| {
                    x.parse::<usize>().ok().filter(|n| (60..=1514).contains(n))
                }).with_context(|| format!("--frames {v:?}: expected frame sizes between 60 and 1514, comma separated"))?);
            }
            "--queue-pairs" => {
                let v = value("--queue-pairs")?;
                qps = Some(
                    list(&v, |x| {
                        x.parse::<u16>().ok().filter(|n| (1..=4).contains(n))
                    })
                    .with_context(|| {
                        format!(
                            "--queue-pairs {v:?}: expected counts between 1 and 4, comma separated"
                        )
                    })?,
                );
            }
            "--poll-idle-us" => {
                let v = value("--poll-idle-us")?;
                poll = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|&n| n <= 1000)
                        .with_context(|| {
                            format!("--poll-idle-us {v:?}: expected microseconds from 0 to 1000")
                        })?,
                );
            }
            "--guests" => {
                let v = value("--guests")?;
                guests = Some(if v == "none" {
                    Vec::new()
                } else {
                    list(&v, |x| {
                        x.parse::<u32>()
                            .ok()
                            .filter(|n| (1..=bench::scaling::MAX_GUESTS).contains(n))
                    })
                    .with_context(|| {
                        format!(
                            "--guests {v:?}: expected guest counts between 1 and {}, comma separated, or none",
                            bench::scaling::MAX_GUESTS
                        )
                    })?
                });
            }
            "--systems" => {
                let v = value("--systems")?;
                systems = Some(
                    list(&v, |x| System::ALL.into_iter().find(|s| s.name() == x)).with_context(
                        || {
                            format!(
                                "--systems {v:?}: expected xdpath, dpdk or limit, comma separated"
                            )
                        },
                    )?,
                );
            }
            "-h" | "--help" => {
                println!(
                    "usage: xdpath-bench [--quick] [--runs N] [--secs S] [--out DIR] \
                     [--frames 64,512,1500] [--queue-pairs 1,2] [--systems xdpath,dpdk,limit] \
                     [--poll-idle-us N] [--guests 1,2,4,8|none]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mut opts = if quick {
        Options::quick(out)
    } else {
        Options::full(out)
    };
    if let Some(r) = runs {
        opts.runs = r;
    }
    if let Some(s) = secs {
        opts.secs = s;
    }
    if let Some(f) = frames {
        opts.frames = f;
    }
    if let Some(q) = qps {
        opts.queue_pairs = q;
    }
    if let Some(s) = systems {
        opts.systems = s;
    }
    if let Some(g) = guests {
        opts.guests = g;
    }
    if let Some(p) = poll {
        opts.poll_idle = std::time::Duration::from_micros(p);
    }
    let res = bench::run(&opts)?;
    println!(
        "\nwrote {}/results.{{json,md,svg}} in {:.0} s\n",
        opts.out.display(),
        res.wall_secs
    );
    print!(
        "{}",
        std::fs::read_to_string(opts.out.join("results.md")).unwrap_or_default()
    );
    Ok(())
}
