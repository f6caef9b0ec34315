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
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use table::{cell, Column};
use xdpath_api::client::{ClientError, Upload};
use xdpath_api::rules::{FlowRuleSpec, GuestRef, PrefixRuleSpec, ProtoSpec};
use xdpath_api::{
    Action, Endpoint, GuestInfo, GuestSpec, MacAddr, QueueSocket, QueueStats, QueueStatus,
    Replaced, Stats,
};

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
    /// Guests (VMs): add, list, show, delete.
    Guest {
        #[command(subcommand)]
        op: GuestOp,
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
enum GuestOp {
    /// Add a guest, then print it and how to start QEMU (or libvirt) on it, e.g. `xdpctl guest add web1 --mac 52:54:00:12:34:56 --ip 10.0.0.5`.
    Add {
        /// Its name: 1 to 15 lowercase letters, digits, '-' or '_', starting with a letter or digit.
        name: String,
        /// Its MAC address (unicast), e.g. 52:54:00:12:34:56.
        #[arg(long)]
        mac: MacAddr,
        /// An address of the guest whose ARP/ND is steered to it (repeatable).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// Queue pairs offered to it [default: all of the daemon's].
        #[arg(long)]
        queues: Option<u16>,
        #[arg(
            long,
            value_name = "PATH",
            help = "Its vhost-user socket [default: /run/xdpath/<IFACE>.<NAME>.vhost.sock]"
        )]
        vhost_socket: Option<PathBuf>,
        /// The socket's mode, octal (e.g. 0660) [default: the daemon's].
        #[arg(long, value_name = "MODE")]
        socket_mode: Option<String>,
        /// The socket's owner, a user name or uid (e.g. the user QEMU runs as).
        #[arg(long, value_name = "USER")]
        socket_owner: Option<String>,
        /// The socket's group, a group name or gid.
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Let the guest send frames from any source MAC and address
        /// (anti-spoofing is on by default).
        #[arg(long)]
        no_anti_spoof: bool,
        /// Client mode: the guest's QEMU listens on the socket
        /// (`server=on`) and xdpathd connects to it.
        #[arg(long)]
        client: bool,
    },
    /// List the guests.
    List,
    /// Show one guest, and how to start QEMU (or libvirt) on it.
    Show {
        /// Its name.
        name: String,
    },
    /// Delete a guest (refused while rules send to it, unless --force).
    Del {
        /// Its name.
        name: String,
        /// Also delete the rules that send to it, in the same step.
        #[arg(long)]
        force: bool,
    },
}

/// Where matching frames go.
#[derive(clap::Args, Debug)]
struct ActionArgs {
    /// guest, host or drop.
    #[arg(long, value_enum)]
    action: Action,
    /// The guest (by name) for --action guest [default: the guest with
    /// id 1, if there is one]; a number is taken as a guest id.
    #[arg(long, value_name = "NAME")]
    guest: Option<String>,
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

use xdpath_api::drops;

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
fn guest_columns() -> [Column<GuestInfo>; 12] {
    let [name, id, mac] = columns!(GuestInfo: name, id, mac);
    let [connected] = columns!(GuestInfo: connected);
    let [rx_frames, tx_frames, rx_bytes, tx_bytes, drops] =
        columns!(GuestInfo: rx_frames, tx_frames, rx_bytes, tx_bytes, drops);
    [
        name,
        id,
        mac,
        ("ips", |g: &GuestInfo| ips_text(&g.ips).into()),
        ("socket", |g: &GuestInfo| {
            g.vhost_socket.display().to_string().into()
        }),
        connected,
        ("pairs", |g: &GuestInfo| {
            format!("{}/{}", g.pairs_enabled, g.queues).into()
        }),
        rx_frames,
        tx_frames,
        rx_bytes,
        tx_bytes,
        drops,
    ]
}

/// Addresses joined by commas (`-` for none).
fn ips_text(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "-".into();
    }
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A guest's MAC, or `-` for a guest reached by rules only.
fn mac_text(g: &GuestInfo) -> String {
    g.mac.map_or_else(|| "-".into(), |m| m.to_string())
}

/// `xdpctl guest show`: one line per field, in the API's order.
fn guest_text(g: &GuestInfo) -> String {
    let rows: [(&str, String); 22] = [
        ("name", g.name.clone()),
        ("id", g.id.to_string()),
        ("mac", mac_text(g)),
        ("anti_spoof", g.anti_spoof.to_string()),
        ("vhost_client", g.vhost_client.to_string()),
        ("ips", ips_text(&g.ips)),
        ("queues", g.queues.to_string()),
        ("vhost_socket", g.vhost_socket.display().to_string()),
        ("socket_mode", format!("{:04o}", g.socket_mode)),
        (
            "socket_owner",
            g.socket_owner.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "socket_group",
            g.socket_group.clone().unwrap_or_else(|| "-".into()),
        ),
        ("connected", g.connected.to_string()),
        ("pairs_enabled", g.pairs_enabled.to_string()),
        ("rx_frames", g.rx_frames.to_string()),
        ("rx_bytes", g.rx_bytes.to_string()),
        ("tx_frames", g.tx_frames.to_string()),
        ("tx_bytes", g.tx_bytes.to_string()),
        ("tx_switched", g.tx_switched.to_string()),
        ("tx_flooded", g.tx_flooded.to_string()),
        ("tx_drop_spoofed", g.tx_drop_spoofed.to_string()),
        ("drops", g.drops.to_string()),
        ("rules", g.rules.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<16} {v}\n")).collect()
}

/// How to start QEMU on the guest's socket: the guest's RAM shared with
/// the daemon, the socket (reconnecting), the netdev with its queue pairs
/// and the device with its MAC and 2N+2 vectors.
fn qemu_snippet(g: &GuestInfo) -> String {
    let (n, q, sock, mac) = (&g.name, g.queues, g.vhost_socket.display(), mac_text(g));
    // Client mode: QEMU listens and xdpathd connects.
    let side = if g.vhost_client {
        "server=on,wait=off"
    } else {
        "reconnect=1"
    };
    format!(
        "QEMU (the guest's RAM must be shared with xdpathd; size= is the guest's -m):\n\
         \x20 -object memory-backend-memfd,id=mem,size=RAM,share=on -numa node,memdev=mem \\\n\
         \x20 -chardev socket,id={n},path={sock},{side} \\\n\
         \x20 -netdev vhost-user,id={n},chardev={n},queues={q} \\\n\
         \x20 -device virtio-net-pci,netdev={n},mac={mac},mq=on,vectors={}\n",
        2 * u32::from(q) + 2
    )
}

/// The same for libvirt: the interface, and the shared memory it needs.
fn libvirt_snippet(g: &GuestInfo) -> String {
    format!(
        "libvirt (and <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>):\n\
         \x20 <interface type='vhostuser'>\n\
         \x20   <mac address='{}'/>\n\
         \x20   <source type='unix' path='{}' mode='{}'>{}\n\
         \x20   </source>\n\
         \x20   <model type='virtio'/>\n\
         \x20   <driver queues='{}'/>\n\
         \x20 </interface>\n",
        mac_text(g),
        g.vhost_socket.display(),
        if g.vhost_client { "server" } else { "client" },
        if g.vhost_client {
            ""
        } else {
            "\n      <reconnect enabled='yes' timeout='1'/>"
        },
        g.queues
    )
}

/// A guest, then how to start a VM on it.
fn print_guest(g: &GuestInfo) {
    print!(
        "{}\n{}\n{}",
        guest_text(g),
        qemu_snippet(g),
        libvirt_snippet(g)
    );
}

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

/// `--guest`: a guest id when it reads as a number (the legacy form),
/// else a name (the daemon checks both).
fn guest_ref(text: &str) -> GuestRef {
    text.parse::<u32>()
        .map_or_else(|_| GuestRef::Name(text.to_string()), GuestRef::Id)
}

/// `--proto`: a number when it reads as one, else a name (the daemon
/// checks both).
fn proto(text: &str) -> ProtoSpec {
    text.parse::<u64>()
        .map_or_else(|_| ProtoSpec::Name(text.to_string()), ProtoSpec::Number)
}

/// Runs a guest command and prints the result: the daemon's JSON with
/// `--json`, else text.
fn guest(cli: &Cli, sock: &Path, op: &GuestOp) -> Result<()> {
    match op {
        GuestOp::Add {
            name,
            mac,
            ips,
            queues,
            vhost_socket,
            socket_mode,
            socket_owner,
            socket_group,
            no_anti_spoof,
            client,
        } => {
            let socket_mode = socket_mode
                .as_deref()
                .map(|m| xdpath_api::guests::parse_file_mode(&Value::String(m.to_string())))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--socket-mode: {e}"))?;
            let spec = GuestSpec {
                name: name.clone(),
                mac: Some(*mac),
                anti_spoof: no_anti_spoof.then_some(false),
                vhost_client: client.then_some(true),
                ips: ips.clone(),
                queues: *queues,
                vhost_socket: vhost_socket.clone(),
                socket_mode,
                socket_owner: socket_owner.clone(),
                socket_group: socket_group.clone(),
            };
            let v = call(
                sock,
                Endpoint::AddGuest,
                "",
                Some(&serde_json::to_value(spec)?),
            )?;
            if cli.json {
                print_json(&v);
            } else {
                print_guest(&typed(Endpoint::AddGuest, &v)?);
            }
        }
        GuestOp::List => {
            let v = call(sock, Endpoint::ListGuests, "", None)?;
            if cli.json {
                print_json(&v);
            } else {
                let guests: Vec<GuestInfo> = typed(Endpoint::ListGuests, &v)?;
                table::typed(&guests, &guest_columns());
            }
        }
        GuestOp::Show { name } => {
            let v = call(sock, Endpoint::GetGuest, name, None)?;
            if cli.json {
                print_json(&v);
            } else {
                print_guest(&typed(Endpoint::GetGuest, &v)?);
            }
        }
        GuestOp::Del { name, force } => {
            let e = Endpoint::DeleteGuest;
            let query = if *force { "?force=true" } else { "" };
            xdpath_api::client::call(
                sock,
                e.method().as_str(),
                &format!("{}{query}", e.uri(name)),
                None,
            )?;
            if !cli.json {
                println!("deleted guest {name}");
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
                    guest: action.guest.as_deref().map(guest_ref),
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
                    guest: action.guest.as_deref().map(guest_ref),
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
        Cmd::Guest { op } => guest(cli, &sock, op)?,
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

    fn web1(queues: u16) -> GuestInfo {
        let mut spec = GuestSpec::new("web1", "52:54:00:12:34:56".parse().unwrap());
        spec.ips = vec!["10.0.0.5".parse().unwrap()];
        GuestInfo::new(
            2,
            &spec,
            "/run/xdpath/eth1.web1.vhost.sock".into(),
            queues,
            0o660,
        )
    }

    #[test]
    fn a_new_guest_comes_with_its_qemu_and_libvirt_lines() {
        assert_eq!(
            qemu_snippet(&web1(4)),
            "QEMU (the guest's RAM must be shared with xdpathd; size= is the guest's -m):\n\
             \x20 -object memory-backend-memfd,id=mem,size=RAM,share=on -numa node,memdev=mem \\\n\
             \x20 -chardev socket,id=web1,path=/run/xdpath/eth1.web1.vhost.sock,reconnect=1 \\\n\
             \x20 -netdev vhost-user,id=web1,chardev=web1,queues=4 \\\n\
             \x20 -device virtio-net-pci,netdev=web1,mac=52:54:00:12:34:56,mq=on,vectors=10\n"
        );
        assert!(qemu_snippet(&web1(1)).ends_with("queues=1 \\\n  -device virtio-net-pci,netdev=web1,mac=52:54:00:12:34:56,mq=on,vectors=4\n"));
        let l = libvirt_snippet(&web1(2));
        assert!(l.contains("  <interface type='vhostuser'>\n    <mac address='52:54:00:12:34:56'/>\n    <source type='unix' path='/run/xdpath/eth1.web1.vhost.sock' mode='client'>\n"), "{l}");
        assert!(l.contains("    <driver queues='2'/>\n"), "{l}");
        // Client mode: QEMU listens, xdpathd connects.
        let mut client = web1(2);
        client.vhost_client = true;
        assert!(qemu_snippet(&client).contains(",server=on,wait=off \\\n"));
        let l = libvirt_snippet(&client);
        assert!(
            l.contains("mode='server'>\n    </source>") && !l.contains("reconnect"),
            "{l}"
        );
        let t = guest_text(&web1(2));
        assert!(t.starts_with("name             web1\nid               2\nmac              52:54:00:12:34:56\nanti_spoof       true\nvhost_client     false\nips              10.0.0.5\nqueues           2\n"), "{t}");
        assert!(
            t.contains("socket_mode      0660\nsocket_owner     -\n"),
            "{t}"
        );
        assert_eq!(ips_text(&[]), "-");
        let cols = guest_columns();
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            [
                "name",
                "id",
                "mac",
                "ips",
                "socket",
                "connected",
                "pairs",
                "rx_frames",
                "tx_frames",
                "rx_bytes",
                "tx_bytes",
                "drops"
            ]
        );
        assert_eq!((cols[6].1)(&web1(2)), "0/2");
    }

    #[test]
    fn guest_commands_parse_and_rules_name_guests() {
        let cli = Cli::try_parse_from([
            "xdpctl",
            "guest",
            "add",
            "web1",
            "--mac",
            "52:54:00:12:34:56",
            "--ip",
            "10.0.0.5",
            "--ip",
            "fd00::5",
            "--queues",
            "2",
            "--socket-mode",
            "0600",
        ])
        .unwrap();
        let Cmd::Guest {
            op:
                GuestOp::Add {
                    name,
                    ips,
                    queues,
                    socket_mode,
                    ..
                },
        } = cli.cmd
        else {
            panic!("{cli:?}")
        };
        assert_eq!(
            (name.as_str(), ips.len(), queues, socket_mode.as_deref()),
            ("web1", 2, Some(2), Some("0600"))
        );
        assert!(Cli::try_parse_from(["xdpctl", "guest", "add", "web1", "--mac", "zz"]).is_err());
        assert!(
            Cli::try_parse_from(["xdpctl", "guest", "add", "web1"]).is_err(),
            "--mac is required"
        );
        let cli = Cli::try_parse_from(["xdpctl", "guest", "del", "web1", "--force"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Guest {
                op: GuestOp::Del { force: true, .. }
            }
        ));
        assert_eq!(guest_ref("web1"), GuestRef::Name("web1".into()));
        assert_eq!(guest_ref("3"), GuestRef::Id(3));
    }
}
