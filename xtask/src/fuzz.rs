//! `cargo xtask fuzz [--target T] [--secs N]`: the fuzz targets of
//! `tests/fuzz` (cargo-fuzz, libFuzzer, the nightly toolchain), and the
//! short smoke of them that `cargo xtask test` runs.
//!
//! One build for every target (`cargo fuzz build`: release with debug
//! assertions and overflow checks, AddressSanitizer, into
//! `target/fuzz`), then each target for N seconds. A target fuzzes with
//! two corpus directories: `target/fuzz/corpus/<target>` (new inputs go
//! there, kept between runs, not committed) and the committed seeds
//! `tests/fuzz/corpus/<target>` (only read). A crash, hang (`-timeout`)
//! or out-of-memory is saved where cargo-fuzz saves it,
//! `tests/fuzz/artifacts/<target>/` (not committed), and the command
//! fails naming the reproducer and how to replay it. Every target's
//! libFuzzer log goes to `target/fuzz/logs/<target>.log`; the summary
//! gives executions and executions per second per target.

use crate::run::workspace_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fuzz crate, relative to the workspace root.
pub const FUZZ_DIR: &str = "tests/fuzz";
/// Where the fuzz build, the working corpora and the logs go.
const TARGET_DIR: &str = "target/fuzz";
/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECS: u64 = 5;
/// libFuzzer's limit for one input (a hang is reported past it).
const INPUT_TIMEOUT_SECS: u64 = 20;
/// libFuzzer's memory limit (RSS, and any single allocation).
const RSS_LIMIT_MB: u64 = 2048;
/// Targets that need root (the XDP program through BPF_PROG_TEST_RUN):
/// skipped, and said so, when run as another user.
const NEEDS_ROOT: &[&str] = &["xdp_classifier"];
/// Codegen units of the fuzz build: cargo-fuzz's default (1) makes the
/// cold build of the whole dependency tree several minutes slower.
const CODEGEN_UNITS: &str = "16";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Only this target (default: every target in tests/fuzz).
    #[arg(long)]
    target: Option<String>,
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Leave out the committed reproducers of known defects
    /// (`corpus/<target>/regress-*`), e.g. to fuzz a branch where they are
    /// not fixed yet; by default they run first, like every seed.
    #[arg(long)]
    skip_regressions: bool,
    /// Extra libFuzzer options for every target (e.g. `-- -jobs=2`).
    #[arg(last = true)]
    libfuzzer: Vec<String>,
}

/// What one target's run gave.
struct Outcome {
    target: String,
    wall: Duration,
    execs: Option<u64>,
    per_sec: Option<u64>,
    peak_rss_mb: Option<u64>,
    corpus: usize,
    /// The reproducer, when the target failed.
    failure: Option<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let all = targets()?;
    let chosen: Vec<String> = match &args.target {
        None => all,
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!(
            "there is no fuzz target {t:?} in {FUZZ_DIR}; there are: {}",
            all.join(", ")
        ),
    };
    fuzz(&chosen, args.secs, args.skip_regressions, &args.libfuzzer)
}

/// `cargo xtask test`'s smoke: every target for [`SMOKE_SECS`].
pub fn smoke() -> Result<()> {
    let start = Instant::now();
    fuzz(&targets()?, SMOKE_SECS, false, &[])?;
    eprintln!(
        "cargo xtask test: fuzz smoke (build and every target) took {} s",
        start.elapsed().as_secs()
    );
    Ok(())
}

fn fuzz(targets: &[String], secs: u64, skip_regressions: bool, extra: &[String]) -> Result<()> {
    let root = workspace_root();
    let start = Instant::now();
    cargo_fuzz(&root, &["build"], &[])?;
    eprintln!(
        "xtask fuzz: built {} target(s) in {} s",
        targets.len(),
        start.elapsed().as_secs()
    );
    let logs = root.join(TARGET_DIR).join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut outcomes = Vec::new();
    let root_user = crate::setup::is_root();
    for t in targets {
        if NEEDS_ROOT.contains(&t.as_str()) && !root_user {
            eprintln!("xtask fuzz: skipping {t}: it needs root (BPF_PROG_TEST_RUN)");
            continue;
        }
        outcomes.push(run_target(&root, t, secs, skip_regressions, extra, &logs)?);
    }
    print_summary(&outcomes);
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.failure.as_ref().map(|f| {
                format!(
                    "{}: {f}\n    replay: cargo +nightly fuzz run --fuzz-dir {FUZZ_DIR} {} {f}",
                    o.target, o.target
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) failed (logs in {}):\n  {}",
            failed.len(),
            logs.display(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// The targets `cargo fuzz list` reports (the fuzz crate's binaries).
fn targets() -> Result<Vec<String>> {
    let root = workspace_root();
    let out = nightly_cargo(&root)
        .args(["fuzz", "list", "--fuzz-dir", FUZZ_DIR])
        .stderr(Stdio::inherit())
        .output()
        .context(
            "running `cargo +nightly fuzz list` (is cargo-fuzz installed? `cargo xtask setup`)",
        )?;
    if !out.status.success() {
        bail!(
            "`cargo +nightly fuzz list --fuzz-dir {FUZZ_DIR}` failed ({})",
            out.status
        );
    }
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        bail!("no fuzz targets in {FUZZ_DIR}");
    }
    Ok(list)
}

/// `cargo` of the nightly toolchain, run in the workspace root, without
/// the outer (stable) cargo's variables that would point the build at
/// the stable compiler.
fn nightly_cargo(root: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).current_dir(root);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo +nightly fuzz <sub> <build options> <rest>`: the build options
/// are the same for `build` and `run`, so `run` never rebuilds.
fn cargo_fuzz(root: &Path, sub: &[&str], rest: &[String]) -> Result<()> {
    let mut cmd = fuzz_command(root, sub);
    cmd.args(rest);
    crate::run::status(&mut cmd)
}

fn fuzz_command(root: &Path, sub: &[&str]) -> Command {
    let mut cmd = nightly_cargo(root);
    cmd.arg("fuzz")
        .args(sub)
        .args(["--fuzz-dir", FUZZ_DIR, "--target-dir", TARGET_DIR])
        .args(["--codegen-units", CODEGEN_UNITS]);
    cmd
}

fn run_target(
    root: &Path,
    target: &str,
    secs: u64,
    skip_regressions: bool,
    extra: &[String],
    logs: &Path,
) -> Result<Outcome> {
    let work = root.join(TARGET_DIR).join("corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut seeds = root.join(FUZZ_DIR).join("corpus").join(target);
    if skip_regressions {
        seeds = seeds_without_regressions(root, target, &seeds)?;
    }
    let artifacts = root.join(FUZZ_DIR).join("artifacts").join(target);
    let before = files(&artifacts);
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = fuzz_command(root, &["run", target]);
    cmd.arg(&work);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .args(extra)
        .stdout(log.try_clone()?)
        .stderr(log);
    eprintln!(
        "xtask fuzz: {target} for {secs} s (log: {})",
        log_path.display()
    );
    let start = Instant::now();
    let mut child = cmd.spawn().context(
        "starting `cargo +nightly fuzz run` (is cargo-fuzz installed? `cargo xtask setup`)",
    )?;
    // libFuzzer stops itself after `secs` (plus one input's timeout); this
    // is the bound if it does not.
    let limit = Duration::from_secs(secs + INPUT_TIMEOUT_SECS + 120);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = start.elapsed();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    // With -fork, the parent reports in its status lines instead.
    let status_line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("exec/s:"));
    let field = |key: &str| {
        status_line
            .and_then(|l| l.split(key).nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches([':', 's']).parse::<u64>().ok())
    };
    let execs = stat("number_of_executed_units").or_else(|| {
        status_line
            .and_then(|l| l.trim_start_matches('#').split(':').next())
            .and_then(|v| v.parse::<u64>().ok())
    });
    let per_sec = stat("average_exec_per_sec").or_else(|| {
        execs
            .zip(field("time: ").filter(|&t| t > 0))
            .map(|(n, t)| n / t)
    });
    let found = new_artifacts(&artifacts, &before);
    let failure = match status {
        // -fork with -ignore_crashes goes on after a crash and may exit 0.
        Some(st) if st.success() && found.is_empty() => None,
        Some(st) if st.success() => Some(format!(
            "{} reproducer(s): {}",
            found.len(),
            found.join(", ")
        )),
        Some(st) => Some(
            found
                .first()
                .cloned()
                .or_else(|| written_unit(&text))
                .unwrap_or_else(|| format!("no reproducer saved (exit {st}); see the log")),
        ),
        None => Some(format!(
            "did not stop within {} s; see the log",
            limit.as_secs()
        )),
    };
    if failure.is_some() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("xtask fuzz: {target} failed; the end of its log:");
        for l in tail.iter().rev() {
            eprintln!("    {l}");
        }
    }
    Ok(Outcome {
        target: target.to_string(),
        wall,
        execs,
        per_sec,
        peak_rss_mb: stat("peak_rss_mb"),
        corpus: files(&work).len(),
        failure,
    })
}

/// A copy of the committed seeds of `target` without `regress-*`, in
/// `target/fuzz/seeds/<target>`.
fn seeds_without_regressions(root: &Path, target: &str, seeds: &Path) -> Result<PathBuf> {
    let dir = root.join(TARGET_DIR).join("seeds").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in files(seeds) {
        let Some(name) = f.file_name() else { continue };
        if !name.to_string_lossy().starts_with("regress-") {
            std::fs::copy(&f, dir.join(name))
                .with_context(|| format!("copying {}", f.display()))?;
        }
    }
    Ok(dir)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The files in `dir` that were not there before.
fn new_artifacts(dir: &Path, before: &[PathBuf]) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(|p| p.display().to_string())
        .collect()
}

/// libFuzzer's "Test unit written to PATH".
fn written_unit(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| p.trim().to_string())
    })
}

fn print_summary(outcomes: &[Outcome]) {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    eprintln!("xtask fuzz: target            secs    execs  execs/s  rss MB  corpus  result");
    for o in outcomes {
        eprintln!(
            "xtask fuzz: {:<16} {:>6} {:>8} {:>8} {:>7} {:>7}  {}",
            o.target,
            o.wall.as_secs(),
            show(o.execs),
            show(o.per_sec),
            show(o.peak_rss_mb),
            o.corpus,
            if o.failure.is_some() { "FAILED" } else { "ok" }
        );
    }
}
