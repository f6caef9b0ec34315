//! `xdpctl`: a thin client of the `xdpathd` API.
//!
//! Human tables by default, `--json` for scripts (the daemon's JSON, keys
//! sorted). Exit codes: 0 success, 1 error (the daemon refused, or it
//! cannot be reached), 2 usage. The request bodies are the API's own types
//! (`xdpath_api`), built here from flags; all validation happens in the
//! daemon, whose error (naming the field) is printed as is.
//!
//! This crate depends on `xdpath-api` and command-line crates only, so it
//! builds on stable Rust without the eBPF toolchain, aya or vhost.

mod table;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use table::{cell, Column};
use xdpath_api::client::{ClientError, Upload};
use xdpath_api::rules::{FlowRuleSpec, PrefixRuleSpec, ProtoSpec};
use xdpath_api::{Action, Endpoint, Guest, QueueSocket, QueueStats, QueueStatus, Replaced, Stats};

#[derive(Parser, Debug)]
#[command(
    name = "xdpctl",
    version,
    about = "Control a running xdpathd: flows, prefixes, guests, queues, stats",
    propagate_version = true
)]
struct Cli {
    // The help texts are attributes, not doc comments: rustdoc would read
    // the <IFACE> placeholders as HTML tags.
    #[arg(
        long = "api-socket",
        alias = "socket",
        global = true,
        value_name = "API_SOCKET",
        help = "API socket of the daemon [default: the only /run/xdpath/*.api.sock, or /run/xdpath/<IFACE>.api.sock with --iface]"
    )]
    api_socket: Option<PathBuf>,
    #[arg(
        long,
        global = true,
        help = "Interface whose daemon to talk to (picks /run/xdpath/<IFACE>.api.sock)"
    )]
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
    #[arg(long, value_enum)]
    action: Action,
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
    /// Replace all rules at once from a JSON file (an array of rules; `-` reads stdin), streamed as it is read.
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
    /// Replace all prefix rules at once from a JSON file (`-` reads stdin), streamed as it is read.
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
    if let Some(s) = &cli.api_socket {
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
            "no xdpathd API socket in {RUN_DIR}: is the daemon running? (or give --api-socket PATH)"
        ),
        _ => bail!(
            "several daemons run ({}); pick one with --iface or --api-socket",
            found.len()
        ),
    }
}

/// Calls `endpoint` (with `arg` in its path); a refusal carries the
/// daemon's message (naming the field).
fn call(sock: &Path, e: Endpoint, arg: &str, body: Option<&Value>) -> Result<Value> {
    Ok(xdpath_api::client::call(
        sock,
        e.method().as_str(),
        &e.uri(arg),
        body,
    )?)
}

/// The daemon's answer as the API type it documents.
fn typed<T: DeserializeOwned>(e: Endpoint, v: &Value) -> Result<T> {
    serde_json::from_value(v.clone()).with_context(|| {
        format!(
            "the daemon's answer to {} {} is not what this xdpctl expects",
            e.method(),
            e.path()
        )
    })
}

/// A rules file (`-`: stdin) to stream to the daemon as it is read: it is
/// never held whole, and the daemon checks it.
fn upload(f: &Path) -> Result<Upload> {
    if f == Path::new("-") {
        return Ok(Upload::reader(std::io::stdin()));
    }
    std::fs::File::open(f)
        .and_then(Upload::file)
        .with_context(|| format!("reading {}", f.display()))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The queue columns of `xdpctl stats`.
const STATS_QUEUE_COLUMNS: [Column<QueueStats>; 8] = {
    let [queue] = columns!(QueueStats: queue);
    let [a, b, c, d, e, f, g] = columns!(QueueStats => counters:
        rx_frames,
        tx_frames,
        rx_drop_no_guest_buffer,
        rx_handed_off,
        tx_xsk_ring_full,
        bad_descriptor,
        xdp_rx_dropped,
    );
    [queue, a, b, c, d, e, f, g]
};

fn print_stats(s: &Stats) {
    println!("classifier:");
    let mut fields = s.classifier.fields();
    // By name, as the daemon's JSON object lists them.
    fields.sort_by_key(|(name, _)| *name);
    for (k, val) in fields {
        println!("  {k:<22} {val:>12}");
    }
    println!("queues:");
    table::typed(&s.queues, &STATS_QUEUE_COLUMNS);
}

/// The counters `xdpctl queue list` adds up as `drops`.
fn drops(c: &xdpath_api::QueueCounterValues) -> u64 {
    [
        c.rx_drop_no_guest_buffer,
        c.rx_drop_no_guest,
        c.rx_drop_oversize,
        c.tx_drop_oversize,
        c.tx_drop_empty,
        c.tx_drop_write_only,
        c.tx_drop_short,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add)
}

/// The columns of `xdpctl queue list`.
fn queue_columns() -> [Column<QueueStatus>; 6] {
    let [queue, socket, socket_generation] =
        columns!(QueueStatus: queue, socket, socket_generation);
    // A queue without counters shows dashes.
    fn counter(q: &QueueStatus, f: fn(&xdpath_api::QueueCounterValues) -> u64) -> Value {
        q.counters.as_ref().map_or(Value::Null, |c| f(c).into())
    }
    macro_rules! counter_column {
        ($name:ident) => {
            (stringify!($name), |q: &QueueStatus| counter(q, |c| c.$name))
        };
    }
    [
        queue,
        socket,
        socket_generation,
        counter_column!(rx_frames),
        counter_column!(tx_frames),
        ("drops", |q: &QueueStatus| counter(q, drops)),
    ]
}

/// The columns of `xdpctl guest list`.
const GUEST_COLUMNS: [Column<Guest>; 7] = columns!(Guest:
    port,
    mac,
    vhost_socket,
    queue_pairs,
    mtu,
    connected,
    connections,
);

/// One kind of rule: its endpoints, its name, its table columns.
struct RuleKind {
    list: Endpoint,
    add: Endpoint,
    replace: Endpoint,
    delete: Endpoint,
    noun: &'static str,
    cols: &'static [&'static str],
}

const FLOWS: RuleKind = RuleKind {
    list: Endpoint::ListFlows,
    add: Endpoint::AddFlow,
    replace: Endpoint::ReplaceFlows,
    delete: Endpoint::DeleteFlow,
    noun: "flow",
    cols: &FlowRuleSpec::FIELDS,
};

const PREFIXES: RuleKind = RuleKind {
    list: Endpoint::ListPrefixes,
    add: Endpoint::AddPrefix,
    replace: Endpoint::ReplacePrefixes,
    delete: Endpoint::DeletePrefix,
    noun: "prefix",
    cols: &PrefixRuleSpec::FIELDS,
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
    match op {
        RuleOp::Add(body) => {
            let v = call(sock, k.add, "", Some(&body))?;
            if cli.json {
                print_json(&v);
            } else {
                table::table(&Value::Array(vec![v]), k.cols);
            }
        }
        RuleOp::Del(id) => {
            call(sock, k.delete, id, None)?;
            if !cli.json {
                println!("deleted {} {id}", k.noun);
            }
        }
        RuleOp::List => {
            let v = call(sock, k.list, "", None)?;
            if cli.json {
                print_json(&v);
            } else {
                table::table(&v, k.cols);
            }
        }
        RuleOp::Replace(file) => {
            let e = k.replace;
            let v = xdpath_api::client::call_upload(
                sock,
                e.method().as_str(),
                &e.uri(""),
                upload(file)?,
            )
            .map_err(|err| match err {
                ClientError::Upload(io) => {
                    anyhow::Error::new(io).context(format!("reading {}", file.display()))
                }
                other => other.into(),
            })?;
            if cli.json {
                print_json(&v);
            } else {
                let done: Replaced = typed(e, &v)?;
                println!("{} {} rules in place", done.count, k.noun);
            }
        }
    }
    Ok(())
}

/// `--proto`: a number when it reads as one, else a name (the daemon
/// checks both).
fn proto(text: &str) -> ProtoSpec {
    text.parse::<u64>()
        .map_or_else(|_| ProtoSpec::Name(text.to_string()), ProtoSpec::Number)
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
    let json = cli.json;
    match &cli.cmd {
        Cmd::Flow { op } => match op {
            FlowOp::Add {
                src,
                dst,
                proto: p,
                sport,
                dport,
                action,
            } => {
                let spec = FlowRuleSpec {
                    id: action.id,
                    src: src.clone(),
                    dst: dst.clone(),
                    proto: proto(p),
                    src_port: sport.unwrap_or(0),
                    dst_port: dport.unwrap_or(0),
                    action: action.action.name().to_string(),
                    guest: action.guest,
                };
                rules(cli, &sock, &FLOWS, RuleOp::Add(serde_json::to_value(spec)?))?;
            }
            FlowOp::Del { id } => rules(cli, &sock, &FLOWS, RuleOp::Del(id))?,
            FlowOp::List => rules(cli, &sock, &FLOWS, RuleOp::List)?,
            FlowOp::Replace { file } => rules(cli, &sock, &FLOWS, RuleOp::Replace(file))?,
        },
        Cmd::Prefix { op } => match op {
            PrefixOp::Add { prefix, action } => {
                let spec = PrefixRuleSpec {
                    id: action.id,
                    prefix: prefix.clone(),
                    action: action.action.name().to_string(),
                    guest: action.guest,
                };
                rules(
                    cli,
                    &sock,
                    &PREFIXES,
                    RuleOp::Add(serde_json::to_value(spec)?),
                )?;
            }
            PrefixOp::Del { id } => rules(cli, &sock, &PREFIXES, RuleOp::Del(id))?,
            PrefixOp::List => rules(cli, &sock, &PREFIXES, RuleOp::List)?,
            PrefixOp::Replace { file } => rules(cli, &sock, &PREFIXES, RuleOp::Replace(file))?,
        },
        Cmd::Guest { op: ListOnly::List } => {
            let v = call(&sock, Endpoint::Guests, "", None)?;
            if json {
                print_json(&v);
            } else {
                let guests: Vec<Guest> = typed(Endpoint::Guests, &v)?;
                table::typed(&guests, &GUEST_COLUMNS);
            }
        }
        Cmd::Queue { op } => match op {
            QueueOp::List => {
                let v = call(&sock, Endpoint::Queues, "", None)?;
                if json {
                    print_json(&v);
                } else {
                    let queues: Vec<QueueStatus> = typed(Endpoint::Queues, &v)?;
                    table::typed(&queues, &queue_columns());
                }
            }
            QueueOp::Replace { queue } => {
                let v = call(&sock, Endpoint::ReplaceQueue, &queue.to_string(), None)?;
                if json {
                    print_json(&v);
                } else {
                    let q: QueueSocket = typed(Endpoint::ReplaceQueue, &v)?;
                    println!(
                        "queue {queue}: socket replaced (generation {})",
                        q.generation
                    );
                }
            }
        },
        Cmd::Stats { watch } => loop {
            let v = call(&sock, Endpoint::Stats, "", None)?;
            if json {
                print_json(&v);
            } else {
                print_stats(&typed(Endpoint::Stats, &v)?);
            }
            let Some(secs) = watch else { break };
            std::thread::sleep(Duration::from_secs((*secs).max(1)));
            if !json {
                println!();
            }
        },
        Cmd::Health => {
            let v = call(&sock, Endpoint::Health, "", None)?;
            if json {
                print_json(&v);
            } else {
                // Check the answer is what the API documents; list every
                // field by name.
                let health: xdpath_api::Health = typed(Endpoint::Health, &v)?;
                if let Value::Object(o) = serde_json::to_value(health)? {
                    for (k, val) in o {
                        println!("{k:<16} {}", cell(Some(&val)));
                    }
                }
            }
        }
        Cmd::Completions { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_is_an_alias_of_api_socket() {
        for flag in ["--api-socket", "--socket"] {
            let cli = Cli::try_parse_from(["xdpctl", flag, "/x/api.sock", "health"]).unwrap();
            assert_eq!(cli.api_socket, Some(PathBuf::from("/x/api.sock")));
        }
        let cli = Cli::try_parse_from(["xdpctl", "flow", "list", "--socket", "/y"]).unwrap();
        assert_eq!(cli.api_socket, Some(PathBuf::from("/y")));
    }

    #[test]
    fn request_bodies_are_the_wire_forms() {
        assert_eq!(proto("udp"), ProtoSpec::Name("udp".into()));
        assert_eq!(proto("300"), ProtoSpec::Number(300));
        assert_eq!(proto("-1"), ProtoSpec::Name("-1".into()));
        let cli = Cli::try_parse_from([
            "xdpctl", "flow", "add", "--src", "1.1.1.1", "--dst", "1.1.1.2", "--proto", "tcp",
            "--action", "drop",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Flow {
                op: FlowOp::Add {
                    action: ActionArgs {
                        action: Action::Drop,
                        ..
                    },
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from([
            "xdpctl",
            "prefix",
            "add",
            "10.0.0.0/8",
            "--action",
            "forward"
        ])
        .is_err());
    }
}
