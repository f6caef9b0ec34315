//! `xdpctl`: a thin client of the `xdpathd` API.
//!
//! Human tables by default, `--json` for scripts. Exit codes: 0 success,
//! 1 error (the daemon refused, or it cannot be reached), 2 usage.
//! The request bodies are built here from flags; all validation happens in
//! the daemon, whose error (naming the field) is printed as is.

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "xdpctl",
    version,
    about = "Control a running xdpathd: flows, prefixes, guests, queues, stats",
    propagate_version = true
)]
struct Cli {
    /// API socket of the daemon [default: the only /run/xdpath/*.api.sock, or /run/xdpath/<IFACE>.api.sock with --iface].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Interface whose daemon to talk to (picks /run/xdpath/<IFACE>.api.sock).
    #[arg(long, global = true)]
    iface: Option<String>,
    /// Print the daemon's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Exact 5-tuple rules.
    Flow {
        #[command(subcommand)]
        op: FlowOp,
    },
    /// Destination prefix rules.
    Prefix {
        #[command(subcommand)]
        op: PrefixOp,
    },
    /// Guests and their vhost-user sockets.
    Guest {
        #[command(subcommand)]
        op: ListOnly,
    },
    /// Queues and their AF_XDP sockets.
    Queue {
        #[command(subcommand)]
        op: QueueOp,
    },
    /// Classifier and per-queue counters.
    Stats {
        /// Repeat every N seconds (default 1) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1")]
        watch: Option<u64>,
    },
    /// Is the daemon up, and what is it doing.
    Health,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum ListOnly {
    /// List them.
    List,
}

/// Where matching frames go.
#[derive(clap::Args, Debug)]
struct ActionArgs {
    /// guest, host or drop.
    #[arg(long, value_parser = ["guest", "host", "drop"])]
    action: String,
    /// Guest port for --action guest (default 1).
    #[arg(long)]
    guest: Option<u32>,
    /// Rule id (assigned by the daemon if omitted).
    #[arg(long)]
    id: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum FlowOp {
    /// Add an exact rule, e.g. `xdpctl flow add --src 10.0.0.2 --dst 10.0.0.1 --proto udp --dport 53 --action guest`.
    Add {
        /// Source address (IPv4 or IPv6).
        #[arg(long)]
        src: String,
        /// Destination address (same family).
        #[arg(long)]
        dst: String,
        /// tcp, udp, icmp, icmpv6 or a protocol number.
        #[arg(long)]
        proto: String,
        /// Source port (tcp/udp).
        #[arg(long)]
        sport: Option<u16>,
        /// Destination port (tcp/udp).
        #[arg(long)]
        dport: Option<u16>,
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Delete the rule with this id.
    Del {
        /// Rule id.
        id: String,
    },
    /// List the rules.
    List,
    /// Replace all rules at once from a JSON file (an array of rules; `-` reads stdin).
    Replace {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PrefixOp {
    /// Add a prefix rule, e.g. `xdpctl prefix add 10.88.0.0/16 --action drop`.
    Add {
        /// Destination prefix, e.g. 10.0.0.0/8 or fd00::/64.
        prefix: String,
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Delete the rule with this id.
    Del {
        /// Rule id.
        id: String,
    },
    /// List the rules.
    List,
    /// Replace all prefix rules at once from a JSON file (`-` reads stdin).
    Replace {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum QueueOp {
    /// List queues, socket states and counters.
    List,
    /// Replace a queue's AF_XDP socket with a fresh one.
    Replace {
        /// Queue index.
        queue: u32,
    },
}

const RUN_DIR: &str = "/run/xdpath";

fn socket_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(i) = &cli.iface {
        return Ok(Path::new(RUN_DIR).join(format!("{i}.api.sock")));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(RUN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".api.sock"))
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no xdpathd API socket in {RUN_DIR}: is the daemon running? (or give --socket PATH)"
        ),
        _ => bail!(
            "several daemons run ({}); pick one with --iface or --socket",
            found.len()
        ),
    }
}

/// Calls the API; a refusal carries the daemon's message (naming the
/// field).
fn call(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    Ok(xdpath_control::client::call(sock, method, path, body)?)
}

fn action_json(a: &ActionArgs, o: &mut Map<String, Value>) {
    o.insert("action".into(), json!(a.action));
    if let Some(g) = a.guest {
        o.insert("guest".into(), json!(g));
    }
    if let Some(id) = a.id {
        o.insert("id".into(), json!(id));
    }
}

fn read_json_file(f: &Path) -> Result<Value> {
    let text = if f == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints an array of objects as a table with the given columns.
fn table(rows: &Value, cols: &[&str]) {
    let rows: Vec<&Value> = rows
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(r.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let s: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r);
    }
}

fn print_stats(v: &Value) {
    println!("classifier:");
    if let Some(o) = v.get("classifier").and_then(Value::as_object) {
        for (k, val) in o {
            println!("  {k:<22} {:>12}", cell(Some(val)));
        }
    }
    let queues = v.get("queues").cloned().unwrap_or(Value::Null);
    let cols = [
        "queue",
        "rx_frames",
        "tx_frames",
        "rx_drop_no_guest_buffer",
        "rx_handed_off",
        "tx_xsk_ring_full",
        "bad_descriptor",
        "xdp_rx_dropped",
    ];
    println!("queues:");
    table(&queues, &cols);
}

/// One kind of rule: its API path, its name, its table columns.
struct RuleKind {
    path: &'static str,
    noun: &'static str,
    cols: &'static [&'static str],
}

const FLOWS: RuleKind = RuleKind {
    path: "/v1/flows",
    noun: "flow",
    cols: &[
        "id", "src", "dst", "proto", "src_port", "dst_port", "action", "guest",
    ],
};

const PREFIXES: RuleKind = RuleKind {
    path: "/v1/prefixes",
    noun: "prefix",
    cols: &["id", "prefix", "action", "guest"],
};

/// What to do with the rules of one kind.
enum RuleOp<'a> {
    Add(Value),
    Del(&'a str),
    List,
    Replace(&'a Path),
}

/// Runs `op` on the rules of kind `k` and prints the result: the daemon's
/// JSON with `--json`, else a table (or a line).
fn rules(cli: &Cli, sock: &Path, k: &RuleKind, op: RuleOp<'_>) -> Result<()> {
    let print_json =
        |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match op {
        RuleOp::Add(body) => {
            let v = call(sock, "POST", k.path, Some(&body))?;
            if cli.json {
                print_json(&v);
            } else {
                table(&json!([v]), k.cols);
            }
        }
        RuleOp::Del(id) => {
            call(sock, "DELETE", &format!("{}/{id}", k.path), None)?;
            if !cli.json {
                println!("deleted {} {id}", k.noun);
            }
        }
        RuleOp::List => {
            let v = call(sock, "GET", k.path, None)?;
            if cli.json {
                print_json(&v);
            } else {
                table(&v, k.cols);
            }
        }
        RuleOp::Replace(file) => {
            let v = call(sock, "PUT", k.path, Some(&read_json_file(file)?))?;
            if cli.json {
                print_json(&v);
            } else {
                println!(
                    "{} {} rules in place",
                    v.as_array().map_or(0, Vec::len),
                    k.noun
                );
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("xdpctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Cmd::Completions { shell } = &cli.cmd {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "xdpctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let sock = socket_path(cli)?;
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match &cli.cmd {
        Cmd::Flow { op } => match op {
            FlowOp::Add {
                src,
                dst,
                proto,
                sport,
                dport,
                action,
            } => {
                let mut o = Map::new();
                o.insert("src".into(), json!(src));
                o.insert("dst".into(), json!(dst));
                o.insert(
                    "proto".into(),
                    proto
                        .parse::<u64>()
                        .map_or_else(|_| json!(proto), |n| json!(n)),
                );
                if let Some(p) = sport {
                    o.insert("src_port".into(), json!(p));
                }
                if let Some(p) = dport {
                    o.insert("dst_port".into(), json!(p));
                }
                action_json(action, &mut o);
                rules(cli, &sock, &FLOWS, RuleOp::Add(Value::Object(o)))?;
            }
            FlowOp::Del { id } => rules(cli, &sock, &FLOWS, RuleOp::Del(id))?,
            FlowOp::List => rules(cli, &sock, &FLOWS, RuleOp::List)?,
            FlowOp::Replace { file } => rules(cli, &sock, &FLOWS, RuleOp::Replace(file))?,
        },
        Cmd::Prefix { op } => match op {
            PrefixOp::Add { prefix, action } => {
                let mut o = Map::new();
                o.insert("prefix".into(), json!(prefix));
                action_json(action, &mut o);
                rules(cli, &sock, &PREFIXES, RuleOp::Add(Value::Object(o)))?;
            }
            PrefixOp::Del { id } => rules(cli, &sock, &PREFIXES, RuleOp::Del(id))?,
            PrefixOp::List => rules(cli, &sock, &PREFIXES, RuleOp::List)?,
            PrefixOp::Replace { file } => rules(cli, &sock, &PREFIXES, RuleOp::Replace(file))?,
        },
        Cmd::Guest { op: ListOnly::List } => out(&call(&sock, "GET", "/v1/guests", None)?, &|v| {
            table(
                v,
                &[
                    "port",
                    "mac",
                    "vhost_socket",
                    "queue_pairs",
                    "mtu",
                    "connected",
                    "connections",
                ],
            )
        }),
        Cmd::Queue { op } => match op {
            QueueOp::List => out(&call(&sock, "GET", "/v1/queues", None)?, &|v| {
                let rows: Vec<Value> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|q| {
                                let c = q.get("counters");
                                json!({
                                    "queue": q.get("queue"), "socket": q.get("socket"), "socket_generation": q.get("socket_generation"),
                                    "rx_frames": c.and_then(|c| c.get("rx_frames")), "tx_frames": c.and_then(|c| c.get("tx_frames")),
                                    "drops": c.map(|c| ["rx_drop_no_guest_buffer", "rx_drop_no_guest", "rx_drop_oversize", "tx_drop_oversize", "tx_drop_empty", "tx_drop_write_only"].iter().filter_map(|k| c.get(*k).and_then(Value::as_u64)).sum::<u64>()),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(
                    &Value::Array(rows),
                    &[
                        "queue",
                        "socket",
                        "socket_generation",
                        "rx_frames",
                        "tx_frames",
                        "drops",
                    ],
                );
            }),
            QueueOp::Replace { queue } => {
                let v = call(&sock, "POST", &format!("/v1/queues/{queue}/replace"), None)?;
                out(&v, &|v| {
                    println!(
                        "queue {queue}: socket replaced (generation {})",
                        cell(v.get("generation"))
                    )
                });
            }
        },
        Cmd::Stats { watch } => loop {
            let v = call(&sock, "GET", "/v1/stats", None)?;
            out(&v, &print_stats);
            let Some(secs) = watch else { break };
            std::thread::sleep(Duration::from_secs((*secs).max(1)));
            if !cli.json {
                println!();
            }
        },
        Cmd::Health => out(&call(&sock, "GET", "/v1/health", None)?, &|v| {
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    println!("{k:<16} {}", cell(Some(val)));
                }
            }
        }),
        Cmd::Completions { .. } => {}
    }
    Ok(())
}
