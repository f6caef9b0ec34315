//! `xdpathd`: one daemon per host NIC.
//!
//! Start-up, in order (docs/ARCHITECTURE.md, Control path): configuration
//! (file, then flags) -> preflight (every problem printed with its fix,
//! nothing touched) -> the NIC's channel count (only with `set_channels`)
//! -> stale pin directories removed -> flow table loaded from its state
//! file -> XDP classifier loaded, maps pinned, not attached -> the guests
//! (their registry from the state directory, the configuration's guests
//! over it) and their MAC/IP entries and the rules projected into the maps
//! -> per guest its AF_XDP sockets, its vhost-user socket and its server's
//! thread -> the API socket -> and only then the XDP attach, followed by
//! the wire's broadcast slow path. Every step that can fail runs before the
//! attach, so a start that fails never attaches XDP: under
//! `Restart=on-failure` a bad state file or a busy socket does not blip the
//! NIC every two seconds. What a failed start leaves: the pins it reused
//! (a killed daemon's, for the next start); nothing it created.
//!
//! SIGTERM/SIGINT, or the dataplane ending on its own, shut down in the
//! teardown order of docs/ARCHITECTURE.md (concurrency rules): XSKMAP
//! entries out (traffic fails open) -> workers stopped and joined ->
//! sockets closed -> XDP detached and maps unpinned.
//! The flow table's state file stays for the next start.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use xdpath_api::{Action, XdpAttachMode};
use xdpath_control::api::server::{self, Limits, SocketAccess};
use xdpath_control::api::{router, ControlState, Tables};
use xdpath_control::config::DaemonConfig;
use xdpath_control::flood::WireFlood;
use xdpath_control::flow_table::FlowTable;
use xdpath_control::guests::{GuestSet, OnExit};
use xdpath_control::platform::Kernel;
use xdpath_control::{preflight, Classifier, ClassifierConfig};
use xdpath_dataplane::XskFactory;

#[derive(Parser, Debug)]
#[command(
    name = "xdpathd",
    version,
    about = "xdpath daemon: XDP classifier, AF_XDP socket pool and vhost-user backend for one host NIC"
)]
struct Flags {
    /// TOML config file; flags given here override its settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Host NIC to attach to.
    #[arg(long)]
    iface: Option<String>,
    /// Queue pairs (NIC queues used = guest queue pairs offered), 1 to 16.
    #[arg(long)]
    queues: Option<u16>,
    // Help as an attribute: rustdoc would read <iface> as an HTML tag.
    #[arg(
        long,
        help = "vhost-user socket for the guest [default: /run/xdpath/<iface>.vhost.sock]"
    )]
    vhost_socket: Option<PathBuf>,
    /// Mode of the vhost-user socket, octal [default: 0660].
    #[arg(long, value_name = "MODE")]
    vhost_socket_mode: Option<String>,
    /// Owner of the vhost-user socket, a user name or uid [default: root].
    #[arg(long, value_name = "USER")]
    vhost_socket_owner: Option<String>,
    /// Group of the vhost-user socket, a group name or gid [default: root].
    #[arg(long, value_name = "GROUP")]
    vhost_socket_group: Option<String>,
    /// The guest's MAC address, e.g. 52:54:00:12:34:56.
    #[arg(long)]
    guest_mac: Option<String>,
    /// A guest IP address for ARP/ND steering (repeatable).
    #[arg(long)]
    guest_ip: Vec<String>,
    #[arg(long, help = "API socket [default: /run/xdpath/<iface>.api.sock]")]
    api_socket: Option<PathBuf>,
    /// Group that may use the API socket besides root.
    #[arg(long)]
    api_group: Option<String>,
    /// Action for frames no rule matches: host, drop or guest.
    #[arg(long, value_enum)]
    default_action: Option<Action>,
    /// The guest (by name) frames no rule matches go to with
    /// --default-action guest [default: the one-guest shorthand guest,
    /// when it is the only one].
    #[arg(long, value_name = "NAME")]
    default_guest: Option<String>,
    /// XDP attach mode: native, or generic (slower, works on any driver).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpAttachMode>,
    /// Replace an XDP program already attached to the interface.
    #[arg(long)]
    force: bool,
    /// Busy-poll sockets under load (a core per queue pair).
    #[arg(long)]
    busy_poll: bool,
    /// Adaptive polling: after moving frames a worker keeps serving its
    /// queue pair until nothing moved for this many microseconds (0 = off,
    /// at most 1000) [default: 50].
    #[arg(long, value_name = "US")]
    poll_idle_us: Option<u32>,
    /// Guest MTU offered and enforced.
    #[arg(long)]
    mtu: Option<u16>,
    /// Directory for the flow table's state file [default: /var/lib/xdpath].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Most exact rules the API lets the table hold [default: 1048576, what
    /// the map holds].
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// Most prefix rules the API lets the table hold [default: 65536].
    #[arg(long, value_name = "N")]
    max_prefixes: Option<u32>,
    /// Run the preflight checks, print them and exit (0 if all pass).
    #[arg(long)]
    check: bool,
    /// Set the NIC's receive queue count to --queues (`ethtool -L`) instead
    /// of refusing a NIC with more or fewer queues. Some drivers reset their
    /// queues when the count changes.
    #[arg(long)]
    set_channels: bool,
    /// Root of the per-interface pin directories, on a BPF file system
    /// [default: /sys/fs/bpf/xdpath].
    #[arg(long, value_name = "DIR")]
    pin_root: Option<PathBuf>,
    /// Remove the stale pin directories under the pin root (their interface
    /// does not exist in this network namespace and nothing uses their
    /// maps), print them and exit.
    #[arg(long)]
    remove_stale_pins: bool,
    /// Enter this network namespace (as named by `ip netns`) first. Only the
    /// network namespace changes, so pins stay on the host's bpffs; `ip
    /// netns exec` would hide /sys/fs/bpf behind a fresh sysfs.
    #[arg(long)]
    netns: Option<String>,
}

/// Moves this (still single-threaded) process into network namespace `ns`;
/// every thread started later inherits it.
fn enter_netns(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    if ns.is_empty() || ns.contains('/') {
        bail!("--netns {ns:?} is not a namespace name as `ip netns list` shows them");
    }
    let path = std::path::Path::new("/run/netns").join(ns);
    let f = std::fs::File::open(&path).with_context(|| {
        format!(
            "--netns {ns}: cannot open {} (see `ip netns list`)",
            path.display()
        )
    })?;
    // SAFETY: setns with a valid namespace fd; the process has no other
    // threads yet.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {ns}"));
    }
    Ok(())
}

/// The settings: the config file's, with the flags over them. Text that
/// needs parsing (the interface, the guest's MAC and IPs) goes into the
/// settings table, so it is read once, by the same code and with the same
/// errors (naming the setting) as the file's; flags clap already typed are
/// set on the result.
fn config(f: &Flags) -> Result<DaemonConfig> {
    let mut t = match &f.config {
        Some(p) => DaemonConfig::read_table(p)?,
        None => toml::Table::new(),
    };
    if let Some(v) = &f.iface {
        t.insert("iface".into(), v.clone().into());
    }
    if !t.contains_key("iface") {
        bail!("--iface is required (or a --config file that sets iface)");
    }
    if let Some(v) = &f.guest_mac {
        t.insert("guest_mac".into(), v.clone().into());
    }
    if !f.guest_ip.is_empty() {
        t.insert("guest_ip".into(), f.guest_ip.clone().into());
    }
    for (key, v) in [
        ("default_guest", &f.default_guest),
        ("vhost_socket_mode", &f.vhost_socket_mode),
        ("vhost_socket_owner", &f.vhost_socket_owner),
        ("vhost_socket_group", &f.vhost_socket_group),
    ] {
        if let Some(v) = v {
            t.insert(key.into(), v.clone().into());
        }
    }
    let mut c = match &f.config {
        Some(p) => DaemonConfig::from_table(t).map_err(|e| match e {
            xdpath_control::config::ConfigError::Settings(detail) => {
                xdpath_control::config::ConfigError::File {
                    path: p.clone(),
                    detail,
                }
            }
            other => other,
        })?,
        None => DaemonConfig::from_table(t)?,
    };
    if let Some(v) = f.queues {
        c.queues = v;
    }
    if f.vhost_socket.is_some() {
        c.vhost_socket = f.vhost_socket.clone();
    }
    if f.api_socket.is_some() {
        c.api_socket = f.api_socket.clone();
    }
    if f.api_group.is_some() {
        c.api_group = f.api_group.clone();
    }
    if let Some(v) = f.default_action {
        c.default_action = v;
    }
    if let Some(v) = f.xdp_mode {
        c.xdp_mode = v;
    }
    c.force |= f.force;
    c.busy_poll |= f.busy_poll;
    if let Some(v) = f.poll_idle_us {
        c.poll_idle_us = v;
    }
    if let Some(v) = f.mtu {
        c.mtu = v;
    }
    if f.state_dir.is_some() {
        c.state_dir = f.state_dir.clone();
    }
    c.set_channels |= f.set_channels;
    if f.pin_root.is_some() {
        c.pin_root = f.pin_root.clone();
    }
    if let Some(v) = f.max_flows {
        c.max_flows = v;
    }
    if let Some(v) = f.max_prefixes {
        c.max_prefixes = v;
    }
    c.validate()?;
    Ok(c)
}

fn main() {
    let flags = Flags::parse();
    if let Some(ns) = &flags.netns {
        if let Err(e) = enter_netns(ns) {
            eprintln!("xdpathd: {e:#}");
            std::process::exit(1);
        }
    }
    // Colour only on a terminal: not into files or the journal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let code = match run(&flags) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xdpathd: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(flags: &Flags) -> Result<()> {
    if flags.remove_stale_pins {
        return remove_stale_pins(flags);
    }
    raise_fd_limit();
    let cfg = config(flags)?;
    let issues = preflight::check(&cfg);
    if flags.check || !issues.is_empty() {
        for i in &issues {
            eprintln!("{i}");
        }
        if flags.check {
            for n in preflight::notes(&cfg) {
                eprintln!("{n}");
            }
        }
        if issues.is_empty() {
            println!("preflight: all checks passed for {}", cfg.iface);
            return Ok(());
        }
        bail!(
            "{} preflight check(s) failed; nothing was changed",
            issues.len()
        );
    }

    // Every step up to the attach may fail; none of them touches the
    // interface's traffic.
    if cfg.set_channels {
        let (before, after) = preflight::set_rx_queues(&cfg.iface, u32::from(cfg.queues))
            .with_context(|| {
                format!(
                    "setting {} to {} receive queues (--set-channels)",
                    cfg.iface, cfg.queues
                )
            })?;
        if before != after {
            tracing::info!(iface = %cfg.iface, from = before.rx_queues(), to = after.rx_queues(), "receive queues set (--set-channels)");
        }
    }
    for (pin, res) in xdpath_control::pins::remove_stale(&cfg.pin_root()) {
        match res {
            Ok(()) => tracing::info!("removed the stale pin directory {pin}"),
            Err(e) => tracing::warn!("removing the stale pin directory {pin}: {e}"),
        }
    }

    // The flow table: the state file is the source of truth of the rules.
    let state_file = cfg.state_file();
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let flows = FlowTable::load(&state_file)?;

    // The classifier: loaded, maps pinned, configured; not attached.
    let mut ccfg = ClassifierConfig::new(&cfg.iface);
    ccfg.mode = cfg.xdp_mode;
    ccfg.force = cfg.force;
    ccfg.default_action = cfg.default_action.into();
    // The default guest's id is set once the guests are known (below).
    ccfg.pin_root = cfg.pin_root();
    let classifier = Classifier::load(&ccfg)?;
    let prog_id = classifier.prog_id()?;

    let tables = Arc::new(Mutex::new(Tables { classifier, flows }));
    // The guests' sockets and servers (the AF_XDP sockets bind without the
    // program attached; the XSKMAP is only a map), then the API listener.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let on_exit: OnExit = Arc::new(move |name: &str, r| {
        match r {
            Ok(()) => tracing::error!(guest = %name, "the guest's dataplane ended"),
            Err(e) => tracing::error!(guest = %name, "the guest's dataplane failed: {e}"),
        }
        let _ = done_tx.send(true);
    });
    // The guests: the registry from the state directory with the
    // configuration's guests over it, projected into the guest tables
    // (which syncs the table into the maps: rules and guest entries are
    // projected, and whatever else the pinned maps hold, say a MAC of an
    // earlier configuration, is removed).
    let factory = XskFactory::for_iface(&cfg.iface, cfg.busy_poll);
    let guests = GuestSet::<Kernel>::load(&cfg, factory, tables.clone(), on_exit)?;
    if let Some(name) = cfg.default_guest_name() {
        let id = guests
            .id_of(&name)
            .with_context(|| format!("setting `default_guest`: no guest is named {name:?}"))?;
        tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .classifier
            .set_default_port(id)?;
    }
    guests.start_all()?;
    let api = match bind_api(&cfg) {
        Ok(a) => a,
        Err(e) => {
            guests.stop_all();
            return Err(e);
        }
    };
    let api_file = RemoveOnDrop(Some(cfg.api_socket()));
    let state = Arc::new(ControlState::<Kernel> {
        tables,
        guests,
        cfg: cfg.clone(),
        started: Instant::now(),
        prog_id,
        api_stats: Arc::new(server::ConnStats::default()),
        flood: std::sync::OnceLock::new(),
    });

    // The last step: attach. From here on the NIC's frames are classified.
    let attached = state
        .tables
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .classifier
        .attach_program();
    let live = attached.is_ok();
    let mut flood = None;
    let served = match attached {
        Ok(()) => {
            // Broadcast and multicast from the wire to every guest.
            match WireFlood::start(&cfg.iface, state.guests.switch(), FLOOD_RATE) {
                Ok(f) => {
                    let _ = state.flood.set(f.stats());
                    flood = Some(f);
                }
                Err(e) => tracing::warn!(
                    "guests will not get the wire's broadcasts: opening the slow path failed: {e}"
                ),
            }
            tracing::info!(
                iface = %cfg.iface, queues = cfg.queues, guests = state.guests.running().len(),
                api = %cfg.api_socket().display(),
                "xdpathd ready"
            );
            serve_api(&cfg, state.clone(), api, done_rx)
        }
        Err(e) => {
            drop(api);
            Err(anyhow::Error::new(e))
        }
    };

    // Teardown, in order, whatever ended the run.
    if live {
        tracing::info!(
            "shutting down: XSKMAP entries out, workers stopped, sockets closed, XDP detached"
        );
    } else {
        tracing::info!("start-up failed at the attach: servers stopped, sockets closed");
    }
    if let Some(f) = flood {
        f.stop();
    }
    state.guests.stop_all();
    drop(api_file);
    let state = Arc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("API state still in use at shutdown"))?;
    drop(state.guests);
    let tables = Arc::try_unwrap(state.tables)
        .map_err(|_| anyhow::anyhow!("the maps are still in use at shutdown"))?
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if tables.classifier.is_attached() {
        tables.classifier.shutdown()?;
    } else {
        // Never attached: pins it reused stay for the next start.
        drop(tables.classifier);
    }
    served?;
    Ok(())
}

/// Open files 64 guests need: per guest and queue a socket, eventfds, a
/// timer and the workers' epolls, plus its vhost-user listener, relay and
/// memory regions; with room to spare.
const FD_LIMIT_WANTED: u64 = 16384;

/// Raises the soft open-file limit towards [`FD_LIMIT_WANTED`] (at most
/// the hard limit): the default 1024 does not hold 64 guests.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = FD_LIMIT_WANTED.min(lim.rlim_max);
    if lim.rlim_cur >= want {
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = want;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::debug!(from = before, to = want, "open-file limit raised");
    } else {
        tracing::warn!(
            limit = before,
            "could not raise the open-file limit; 64 guests need about {FD_LIMIT_WANTED}"
        );
    }
}

/// Bound on the wire's broadcast and multicast frames copied to the
/// guests, per second (`xdpath_control::flood`).
const FLOOD_RATE: u32 = xdpath_control::flood::DEFAULT_RATE;

/// A socket file removed when this goes out of scope, unless disarmed: the
/// listeners bound before the attach, if a later step fails.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `--remove-stale-pins`: unpin what [`xdpath_control::pins`] calls stale
/// under the pin root and say what was removed.
fn remove_stale_pins(flags: &Flags) -> Result<()> {
    let root = flags
        .pin_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(xdpath_control::classifier::DEFAULT_PIN_ROOT));
    let mut failed = 0;
    let mut removed = 0;
    for (pin, res) in xdpath_control::pins::remove_stale(&root) {
        match res {
            Ok(()) => {
                removed += 1;
                println!("removed the stale pin directory {pin}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("xdpathd: removing the stale pin directory {pin}: {e}");
            }
        }
    }
    if removed == 0 && failed == 0 {
        println!("no stale pin directory under {}", root.display());
    }
    if failed > 0 {
        bail!("{failed} stale pin director(ies) could not be removed");
    }
    Ok(())
}

/// Binds the API socket, never reachable with looser permissions than
/// 0660 root:`api_group` (`api::server::bind` sets them in a private
/// directory and renames the socket into place).
fn bind_api(cfg: &DaemonConfig) -> Result<std::os::unix::net::UnixListener> {
    let path = cfg.api_socket();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let access = SocketAccess {
        mode: 0o660,
        owner: Some(0),
        group: Some(api_gid(cfg.api_group.as_deref())?),
    };
    server::bind(&path, access)
        .with_context(|| format!("binding the API socket {}", path.display()))
}

/// Serves the API until SIGTERM/SIGINT or until the dataplane ends. The
/// socket is never reachable with looser permissions than 0660 root:group
/// (`api::server::bind`); the server's limits are `api::server::Limits`'
/// defaults; a slow client never delays the shutdown.
fn serve_api(
    _cfg: &DaemonConfig,
    state: Arc<ControlState<Kernel>>,
    listener: std::os::unix::net::UnixListener,
    mut dataplane_done: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener =
            tokio::net::UnixListener::from_std(listener).context("serving the API socket")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = dataplane_done.wait_for(|ended| *ended) => tracing::error!("a guest's dataplane ended"),
            }
        };
        let stats = state.api_stats.clone();
        server::serve(listener, router(state), Limits::default(), stats, shutdown).await;
        Ok(())
    })
}

/// The gid of `api_group` (root's when none).
fn api_gid(group: Option<&str>) -> Result<u32> {
    let Some(g) = group else {
        return Ok(0);
    };
    let c = std::ffi::CString::new(g).context("group name")?;
    // SAFETY: getgrnam with a valid C string; the result is only read
    // before any other call that could reuse its storage.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("setting `api_group`: group {g:?} does not exist");
    }
    // SAFETY: gr is a valid pointer returned by getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}
