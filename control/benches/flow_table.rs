//! Flow-table benchmarks.
//!
//! - `rules/validate_100k` and `rules/parse_json_100k` (no privileges): the
//!   in-memory work of a bulk request of 100,000 exact rules.
//! - `flow_table_fake/replace_100k_by_100k` (no privileges): the same swap
//!   as `flow_table/replace_100k_by_100k` below against the in-memory
//!   `FakeMaps`: the table's own work (validation, staging, snapshot) without
//!   the system calls.
//! - `flow_table/replace_100k_into_empty` (root): a bulk insert of 100,000
//!   exact rules through `FlowTable::replace_flows` into the real maps of a
//!   classifier attached to a veth in a private network namespace: validate,
//!   stage into the inactive generation, switch, wait for readers, write the
//!   snapshot. `flow_table/replace_100k_by_100k` swaps 100,000 rules for
//!   100,000 others (the old generation is deleted too).
//!
//! As non-root the map benchmarks print why they skip. Run with
//! `cargo bench -p xdpath-control --bench flow_table`.

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};
use xdpath_control::flow_table::FlowTable;
use xdpath_control::maps::FakeMaps;
use xdpath_control::rules::{flow_specs_from_json, FlowRuleSpec, LegacyIds};
use xdpath_control::{Classifier, ClassifierConfig};

const N: usize = 100_000;

/// `n` distinct UDP rules; `salt` makes a different set with other keys.
fn specs(n: usize, salt: u8) -> Vec<FlowRuleSpec> {
    (0..n)
        .map(|i| {
            let mut s = FlowRuleSpec::new(
                format!("10.{salt}.{}.{}", (i >> 8) & 0xff, i & 0xff),
                "10.200.0.1",
                "udp",
                if i % 2 == 0 { "guest" } else { "drop" },
            );
            s.src_port = 1000 + (i >> 16) as u16;
            s.dst_port = 53;
            s
        })
        .collect()
}

fn bench_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let list = specs(N, 1);
    g.bench_function("validate_100k", |b| {
        b.iter(|| {
            for (i, s) in list.iter().enumerate() {
                black_box(s.validate(i as u32 + 1, &LegacyIds).expect("valid"));
            }
        })
    });
    let json = serde_json::to_vec(&list).expect("serialize");
    g.bench_function("parse_json_100k", |b| {
        b.iter(|| black_box(flow_specs_from_json(&json).expect("parse")))
    });
    g.finish();
}

fn bench_fake(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("xdpath-bench-fake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let mut maps = FakeMaps::new();
        let mut table = FlowTable::load(&dir.join("flows.json")).expect("load");
        table.sync(&mut maps).expect("sync");
        let sets = [specs(N, 1), specs(N, 2)];
        let mut g = c.benchmark_group("flow_table_fake");
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(10);
        let mut which = 0;
        g.bench_function("replace_100k_by_100k", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    which ^= 1;
                    let list = sets[which].clone();
                    let t0 = Instant::now();
                    black_box(
                        table
                            .replace_flows(&mut maps, list, &LegacyIds)
                            .expect("replace"),
                    );
                    total += t0.elapsed();
                }
                total
            })
        });
        g.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A private namespace with one veth pair, removed on drop.
struct Netns {
    name: String,
    iface: String,
}

impl Netns {
    fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let me = Self {
            name: format!("xdpb-{pid}"),
            iface: format!("xb{pid}a"),
        };
        let peer = format!("xb{pid}b");
        me.ip(&["netns", "add", &me.name])?;
        me.ip(&[
            "-n", &me.name, "link", "add", &me.iface, "type", "veth", "peer", "name", &peer,
        ])?;
        me.ip(&["-n", &me.name, "link", "set", &me.iface, "up"])?;
        me.ip(&["-n", &me.name, "link", "set", &peer, "up"])?;
        Ok(me)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("open netns: {e}"))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs in the bench process's main thread, which enters the namespace
/// (criterion's state cannot move to another thread).
fn bench_maps(c: &mut Criterion) -> Result<(), String> {
    let ns = Netns::new()?;
    ns.enter()?;
    let dir = std::env::temp_dir().join(format!("xdpath-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let res = (|| -> Result<(), String> {
        let mut cl =
            Classifier::attach(&ClassifierConfig::new(&ns.iface)).map_err(|e| e.to_string())?;
        let mut table = FlowTable::load(&dir.join("flows.json")).map_err(|e| e.to_string())?;
        table.sync(&mut cl).map_err(|e| e.to_string())?;
        let sets = [specs(N, 1), specs(N, 2)];
        let mut g = c.benchmark_group("flow_table");
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(10));
        g.bench_function("replace_100k_into_empty", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    table
                        .replace_flows(&mut cl, Vec::new(), &LegacyIds)
                        .expect("empty");
                    let list = sets[0].clone();
                    let t0 = Instant::now();
                    black_box(
                        table
                            .replace_flows(&mut cl, list, &LegacyIds)
                            .expect("replace"),
                    );
                    total += t0.elapsed();
                }
                total
            })
        });
        let mut which = 0;
        g.bench_function("replace_100k_by_100k", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    which ^= 1;
                    let list = sets[which].clone();
                    let t0 = Instant::now();
                    black_box(
                        table
                            .replace_flows(&mut cl, list, &LegacyIds)
                            .expect("replace"),
                    );
                    total += t0.elapsed();
                }
                total
            })
        });
        g.finish();
        drop(table);
        cl.shutdown().map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_rules(&mut c);
    bench_fake(&mut c);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping flow_table map benchmarks: needs root (network namespace, XDP, BPF maps)"
        );
    } else if let Err(e) = bench_maps(&mut c) {
        eprintln!("flow_table map benchmarks failed: {e}");
        std::process::exit(1);
    }
    c.final_summary();
}
