//! `xdpathd`: one daemon per host NIC.
//!
//! Start-up, in order (docs/ARCHITECTURE.md, Control path): configuration
//! (file, then flags) -> preflight (every problem printed with its fix,
//! nothing touched) -> the NIC's channel count (only with `set_channels`)
//! -> stale pin directories removed -> flow table loaded from its state
//! file -> XDP classifier loaded, maps pinned, not attached -> guest MAC/IP
//! entries and rules projected into the maps -> AF_XDP socket pool -> the
//! vhost-user socket -> the API socket -> the vhost-user server's thread ->
//! and only then the XDP attach. Every step that can fail runs before the
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
use xdpath_api::{Action, MacAddr, XdpAttachMode};
use xdpath_control::api::server::{self, Limits, SocketAccess};
use xdpath_control::api::{router, ControlState, Tables};
use xdpath_control::config::{DaemonConfig, GUEST_PORT};
use xdpath_control::flow_table::{FlowTable, GuestEntries};
use xdpath_control::platform::Kernel;
use xdpath_control::socket_pool::SocketPool;
use xdpath_control::{preflight, Classifier, ClassifierConfig};
use xdpath_dataplane::{ConnectionEvent, NetConfig, Server, XskFactory};

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

    // The flow table: the state file is the source of truth of the rules,
    // the configuration that of the guest entries.
    let state_file = cfg.state_file();
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut flows = FlowTable::load(&state_file)?;

    // The classifier: loaded, maps pinned, configured; not attached.
    let mut ccfg = ClassifierConfig::new(&cfg.iface);
    ccfg.mode = cfg.xdp_mode;
    ccfg.force = cfg.force;
    ccfg.default_action = cfg.default_action.into();
    ccfg.default_port = GUEST_PORT;
    ccfg.pin_root = cfg.pin_root();
    let mut classifier = Classifier::load(&ccfg)?;
    let prog_id = classifier.prog_id()?;

    // Installing the guest entries syncs the table into the maps: rules
    // and guest entries are projected, and whatever else the pinned maps
    // hold (say a MAC of an earlier configuration) is removed.
    let guests = GuestEntries::for_guest(
        GUEST_PORT,
        cfg.guest_mac.map(MacAddr::octets),
        &cfg.guest_ip,
    );
    flows.set_guests(&mut classifier, guests)?;

    // Sockets (the AF_XDP sockets bind without the program attached; the
    // XSKMAP is a map), then the dataplane and the API's listeners.
    let factory = XskFactory::for_iface(&cfg.iface, cfg.busy_poll);
    let (pool, ports) = SocketPool::create(factory, u32::from(cfg.queues))?;
    let vhost = cfg.vhost_socket();
    if let Some(dir) = vhost.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let net = NetConfig {
        queue_pairs: cfg.queues,
        mac: cfg.guest_mac.map(MacAddr::octets),
        mtu: cfg.mtu,
        max_queue_size: 1024,
        poll_idle: std::time::Duration::from_micros(u64::from(cfg.poll_idle_us)),
    };
    let mut server = Server::with_permissions(&vhost, cfg.vhost_socket_permissions()?, net, ports)?;
    let vhost_file = RemoveOnDrop(Some(vhost.clone()));
    let api = bind_api(&cfg)?;
    let api_file = RemoveOnDrop(Some(cfg.api_socket()));
    let handle = server.handle();
    let state = Arc::new(ControlState::<Kernel> {
        tables: Mutex::new(Tables { classifier, flows }),
        pool,
        server: handle.clone(),
        cfg: cfg.clone(),
        started: Instant::now(),
        prog_id,
        api_stats: Arc::new(server::ConnStats::default()),
    });
    // Steer traffic to the sockets only while a guest's workers read them.
    let events = state.clone();
    server.on_connection(move |ev| {
        let mut t = events
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match ev {
            ConnectionEvent::Up(fds) => {
                if let Err(e) = events.pool.register_all(&mut t.classifier, fds) {
                    tracing::error!("steering the queues to the guest failed: {e}");
                }
            }
            ConnectionEvent::Down => events.pool.unregister_all(&mut t.classifier),
        }
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let dataplane = std::thread::Builder::new()
        .name("vhost-user".into())
        .spawn(move || {
            let r = server.run();
            let _ = done_tx.send(());
            r
        })?;
    // The server removes its socket file when it ends.
    vhost_file.disarm();

    // The last step: attach. From here on the NIC's frames are classified.
    let attached = state
        .tables
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .classifier
        .attach_program();
    let live = attached.is_ok();
    let served = match attached {
        Ok(()) => {
            tracing::info!(
                iface = %cfg.iface, queues = cfg.queues, vhost = %vhost.display(), api = %cfg.api_socket().display(),
                "xdpathd ready: start the guest on the vhost-user socket"
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
        tracing::info!("start-up failed at the attach: server stopped, sockets closed");
    }
    {
        let mut t = state
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.pool.unregister_all(&mut t.classifier);
    }
    handle.stop();
    let dataplane_result = dataplane
        .join()
        .map_err(|_| anyhow::anyhow!("the vhost-user thread panicked"))?;
    drop(api_file);
    let state = Arc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("API state still in use at shutdown"))?;
    let tables = state
        .tables
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if tables.classifier.is_attached() {
        tables.classifier.shutdown()?;
    } else {
        // Never attached: pins it reused stay for the next start.
        drop(tables.classifier);
    }
    served?;
    dataplane_result.context("the dataplane stopped")?;
    Ok(())
}

/// A socket file removed when this goes out of scope, unless disarmed: the
/// listeners bound before the attach, if a later step fails.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

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
    dataplane_done: tokio::sync::oneshot::Receiver<()>,
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
                _ = dataplane_done => tracing::error!("the dataplane ended"),
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
