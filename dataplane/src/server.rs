//! The vhost-user server: one listening socket, one frontend at a time,
//! reconnects forever until stopped. In client mode
//! ([`Server::connecting`]) the frontend listens (QEMU `server=on`) and
//! the server connects to it instead, every [`RECONNECT_PAUSE`] until it
//! is there, and again after each disconnect; the socket file is then
//! the frontend's.
//!
//! Lifecycle of a connection (the QEMU multifd discipline):
//! 1. build a [`NetBackend`] and a `VhostUserDaemon`, which creates one
//!    worker thread per queue pair and returns only when every worker's
//!    epoll is set up;
//! 2. register each pair's XSK fd, timer fd and doorbell (handoff eventfd)
//!    with its own worker, before the frontend is even accepted, so no
//!    traffic reaches a worker that is not ready;
//! 3. accept the frontend, put the relay (`relay`) between it and the
//!    library's request handler, and serve it until it disconnects (cleanly or
//!    killed), [`ServerHandle::stop`] is called, or a worker fails;
//! 4. drop the daemon: every worker gets its exit event and is joined; the
//!    exit fds vhost-user-backend leaks are closed; the queue pairs (with
//!    their sockets, UMEM and counters) stay for the next connection.
//!
//! Data path faults are counted and break only their own vring. A worker
//! error that leaves its pair unusable (its socket failed because the
//! interface went away) is recorded as the first error, ends the
//! connection, and after step 4 [`Server::run`] returns it. A listener
//! that fails (poll reports an error on it) ends `run` too.
//!
//! Setting a connection up can fail for reasons that pass: no fd left
//! (EMFILE) for the accept, an epoll or eventfd, or a thread that cannot be
//! started (EAGAIN). Such a failure is logged and counted
//! ([`ServerHandle::setup_failures`]); the server waits (10 ms, doubling up
//! to 1 s, cut short by a stop) and goes on with the next attempt. A
//! frontend not yet accepted stays in the listener's backlog; one accepted
//! already is closed and reconnects. [`ServerFaults`] makes these failures
//! happen on demand, for tests (checked once per connection attempt, so it
//! costs nothing on the data path).
//!
//! The relay's private socket: vhost-user-backend 0.24 serves a connection
//! it makes itself, to a path (`VhostUserDaemon::start_client`) or from a
//! listener it accepts on (`start`); it takes no connected socket, so a
//! socketpair is not possible. The server binds the relay's listener in a
//! fresh directory only it can enter (`mkdtemp`, mode 0700), accepts only
//! a peer that is this very process (SO_PEERCRED), and removes both at
//! once.
//!
//! The vhost-user socket is bound in a private directory next to its path,
//! given its mode, owner and group ([`SocketPermissions`]) there, and only
//! then renamed into place: no frontend can ever reach it with looser
//! permissions than asked.
//!
//! Stop ([`ServerHandle::stop`]) shuts down the library's connection and
//! the frontend's socket under the relay, so it completes whatever the
//! frontend is doing, half a message included.
//!
//! Socket changes from the control plane ([`ServerHandle::release_socket`],
//! [`ServerHandle::install_socket`]) are messages to the pair's worker,
//! applied between batches; a new socket's fd joins the worker's epoll only
//! after the message is posted.
//!
//! [`Server`] and [`ServerHandle`] are generic over the queue pairs'
//! [`FramePort`]: the daemon runs `Server<XskPort>` (AF_XDP sockets), the
//! non-root tests `Server<MemPort>` (an in-memory wire), with the same
//! code, monomorphized for each.

use crate::backend::{
    Connection, NetBackend, NetConfig, HANDOFF_EVENT_OFFSET, TIMER_EVENT_OFFSET, XSK_EVENT_OFFSET,
};
use crate::counters::{CounterSnapshot, QueueCounters};
use crate::handoff::Peers;
use crate::port::FramePort;
use crate::queue_pair::{QueuePair, SocketChange};
use crate::virtio_net::MAX_QUEUE_PAIRS;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is not usable.
    #[error("Invalid dataplane configuration: {0}.")]
    Config(String),
    /// The listening socket could not be created.
    #[error("Cannot listen on vhost-user socket {path}: {detail}.")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// The error.
        detail: String,
    },
    /// A system call failed.
    #[error("{what} failed: {source}.")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The vhost-user daemon could not be built or run.
    #[error("vhost-user daemon error: {0}.")]
    Daemon(String),
    /// A worker hit an error it cannot recover from; all workers were
    /// stopped and joined.
    #[error("Worker error: {0}.")]
    Worker(String),
    /// No such queue pair.
    #[error("Queue pair {0} does not exist.")]
    NoSuchQueuePair(usize),
    /// A message to a worker was not applied in time.
    #[error("Queue pair {0} did not apply the socket change within {1:?}.")]
    Timeout(usize, Duration),
}

/// First wait after a failed connection set-up; it doubles per failure in
/// a row up to [`SETUP_BACKOFF_MAX`].
pub const SETUP_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between connection set-up attempts.
pub const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the relay's listener waits for the library to connect.
const RELAY_ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Mode, owner and group of the vhost-user socket file. A frontend needs
/// write permission on it to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPermissions {
    /// Permission bits (at most 0o777).
    pub mode: u32,
    /// Owner (uid); `None` leaves the server's own.
    pub owner: Option<u32>,
    /// Group (gid); `None` leaves the server's own.
    pub group: Option<u32>,
}

impl Default for SocketPermissions {
    /// Mode 0660, the server's own owner and group (root for the daemon).
    fn default() -> Self {
        Self {
            mode: 0o660,
            owner: None,
            group: None,
        }
    }
}

/// A step of a connection set-up that [`ServerFaults`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupStep {
    /// Building the device and starting its workers (before the accept),
    /// failing as a thread that cannot be started (EAGAIN).
    Workers,
    /// Accepting the frontend, failing as with no fd left (EMFILE).
    Accept,
    /// Starting the relay thread (after the accept: the frontend is
    /// closed), failing with EAGAIN.
    Relay,
}

/// Planned failures of connection set-ups, for tests: the next `n`
/// attempts of a step fail as the kernel would make them fail
/// ([`SetupStep`]). Clones share the plan. A server without a plan checks
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct ServerFaults(Arc<[AtomicU32; 3]>);

impl ServerFaults {
    /// A plan with no failure.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, step: SetupStep) -> &AtomicU32 {
        &self.0[step as usize]
    }

    /// The next `n` attempts of `step` fail (replacing what was planned).
    pub fn fail(&self, step: SetupStep, n: u32) {
        self.slot(step).store(n, Ordering::Release);
    }

    /// Failures of `step` still planned.
    pub fn pending(&self, step: SetupStep) -> u32 {
        self.slot(step).load(Ordering::Acquire)
    }

    /// Takes one planned failure of `step`: the error to fail with.
    fn take(&self, step: SetupStep) -> Option<std::io::Error> {
        self.slot(step)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| {
                std::io::Error::from_raw_os_error(match step {
                    SetupStep::Accept => libc::EMFILE,
                    SetupStep::Workers | SetupStep::Relay => libc::EAGAIN,
                })
            })
    }
}

/// Handle to a running server: stop it, change sockets, read counters.
pub struct ServerHandle<P: FramePort> {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    conn: Arc<Connection<P>>,
    pairs: Vec<Arc<Mutex<QueuePair<P>>>>,
    peers: Arc<Peers>,
    /// Number of vrings (event ids above it are ours).
    nq: u16,
    counters: Vec<Arc<QueueCounters>>,
    connections: Arc<AtomicU64>,
    setup_failures: Arc<AtomicU64>,
}

impl<P: FramePort> Clone for ServerHandle<P> {
    fn clone(&self) -> Self {
        Self {
            stop: self.stop.clone(),
            stopping: self.stopping.clone(),
            conn: self.conn.clone(),
            pairs: self.pairs.clone(),
            peers: self.peers.clone(),
            nq: self.nq,
            counters: self.counters.clone(),
            connections: self.connections.clone(),
            setup_failures: self.setup_failures.clone(),
        }
    }
}

impl<P: FramePort> std::fmt::Debug for ServerHandle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl<P: FramePort> ServerHandle<P> {
    /// Asks the server to end: the current connection is shut down, its
    /// workers joined, and `run` returns.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        self.conn.end();
    }

    /// Counters of queue pair `qp`.
    pub fn counters(&self, qp: usize) -> Option<CounterSnapshot> {
        self.counters.get(qp).map(|c| c.snapshot())
    }

    /// Counters of every queue pair, in order.
    pub fn all_counters(&self) -> Vec<CounterSnapshot> {
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    /// Whether a frontend is connected right now.
    pub fn connected(&self) -> bool {
        self.conn.is_running()
    }

    /// The server's handoff table: where other guests' workers put the
    /// frames they switch to this guest (`crate::switch`).
    pub fn peers(&self) -> Arc<Peers> {
        self.peers.clone()
    }

    /// Queue pairs whose RX vring the frontend has enabled (0 while none
    /// is connected).
    pub fn pairs_enabled(&self) -> u16 {
        if self.connected() {
            self.peers.enabled_count()
        } else {
            0
        }
    }

    /// Frontend connections served so far (including the current one).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Connection set-ups that failed (and were retried) so far.
    pub fn setup_failures(&self) -> u64 {
        self.setup_failures.load(Ordering::Acquire)
    }

    /// Closes queue pair `qp`'s port (AF_XDP socket). Returns once the
    /// worker applied it. Remove the queue's XSKMAP entry first (the
    /// teardown order of docs/ARCHITECTURE.md): the kernel drops a closed
    /// socket from the map too, but only once its last reference is gone,
    /// which is not guaranteed to happen before the next frame.
    pub fn release_socket(&self, qp: usize, timeout: Duration) -> Result<(), ServerError> {
        self.change_socket(qp, SocketChange::Release, None, timeout)
    }

    /// Gives queue pair `qp` a new port (an AF_XDP socket bound to the same
    /// NIC queue and registered in the XSKMAP by the caller). Returns once
    /// the worker uses it.
    pub fn install_socket(&self, qp: usize, port: P, timeout: Duration) -> Result<(), ServerError> {
        let fd = port.as_fd().as_raw_fd();
        self.change_socket(qp, SocketChange::Install(Box::new(port)), Some(fd), timeout)
    }

    fn change_socket(
        &self,
        qp: usize,
        change: SocketChange<P>,
        new_fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let pair = self.pairs.get(qp).ok_or(ServerError::NoSuchQueuePair(qp))?;
        let doorbell = self
            .peers
            .handoff(qp)
            .ok_or(ServerError::NoSuchQueuePair(qp))?;
        let (mailbox, old_fd) = {
            let qp = pair.lock().unwrap_or_else(PoisonError::into_inner);
            (qp.mailbox(), qp.port_fd())
        };
        let xsk_id = u64::from(self.nq + XSK_EVENT_OFFSET);
        // The old socket leaves the worker's epoll first: whenever the
        // kernel finally releases it, the worker cannot spin on it.
        if let Some(fd) = old_fd {
            self.conn.remove_fd(qp, fd, xsk_id);
        }
        let before = mailbox.socket_changes_applied.load(Ordering::Acquire);
        mailbox.post_socket(change);
        // Message first, then the new fd into the worker's epoll, then the
        // doorbell: the worker swaps sockets before it polls the new one.
        let running = match new_fd {
            Some(fd) => self
                .conn
                .add_fd(qp, fd, xsk_id)
                .map_err(|source| ServerError::Io {
                    what: "adding the new socket to the worker's epoll",
                    source,
                })?,
            None => self.conn.is_running(),
        };
        doorbell.wake();
        let applied = || mailbox.socket_changes_applied.load(Ordering::Acquire) > before;
        let end = Instant::now() + timeout;
        while !applied() {
            if !running {
                // No connection, so no worker: the pairs wait for the next
                // one, and applying the message under the pair's lock is
                // what that worker would do first.
                pair.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply_mailbox();
                continue;
            }
            if Instant::now() > end {
                return Err(ServerError::Timeout(qp, timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

/// The vhost-user-net server over a set of frame ports (AF_XDP sockets
/// for the daemon).
pub struct Server<P: FramePort> {
    cfg: NetConfig,
    path: PathBuf,
    /// How frontends are reached: on our listener, or by connecting to
    /// theirs.
    side: Side,
    pairs: Vec<Arc<Mutex<QueuePair<P>>>>,
    peers: Arc<Peers>,
    handle: ServerHandle<P>,
    on_connection: Option<ConnectionHook>,
    faults: Option<ServerFaults>,
}

/// Which side of the vhost-user socket the server is.
enum Side {
    /// It listens on its own socket; frontends connect (QEMU's default).
    Listen(Listener),
    /// It connects to the frontend's socket, and again after each
    /// disconnect (QEMU `server=on`, OVS's `dpdkvhostuserclient`); the
    /// stream connected and not yet served.
    Connect(Option<UnixStream>),
}

/// Pause between two attempts to connect to a frontend's socket (client
/// mode): how long a restarted frontend waits for us at most.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// What [`Server::on_connection`] stores.
type ConnectionHook = Box<dyn Fn(ConnectionEvent<'_>) + Send>;

/// What [`Server::on_connection`] is told.
#[derive(Debug)]
pub enum ConnectionEvent<'a> {
    /// A frontend is connected and every worker runs: the sockets
    /// (queue, fd) may receive guest traffic now.
    Up(&'a [(u32, RawFd)]),
    /// The frontend is gone and every worker is joined: nobody reads the
    /// sockets until the next connection.
    Down,
}

impl<P: FramePort> std::fmt::Debug for Server<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

impl<P: FramePort> Server<P> {
    /// Listens on `path` (replacing a stale socket file) with one queue
    /// pair per port, in order (`ports[i]` serves vrings 2i and 2i+1); the
    /// socket has the default [`SocketPermissions`] (mode 0660, the
    /// server's owner and group).
    pub fn new(path: &Path, cfg: NetConfig, ports: Vec<P>) -> Result<Self, ServerError> {
        Self::with_permissions(path, SocketPermissions::default(), cfg, ports)
    }

    /// Like [`Server::new`], the socket file with mode, owner and group
    /// `perms`, set before it appears at `path`.
    pub fn with_permissions(
        path: &Path,
        perms: SocketPermissions,
        cfg: NetConfig,
        ports: Vec<P>,
    ) -> Result<Self, ServerError> {
        Self::build(path, Some(perms), cfg, ports)
    }

    /// A server in client mode: the frontend (QEMU with `server=on`)
    /// listens on `path` and owns the socket file; the server connects to
    /// it, and again (every [`RECONNECT_PAUSE`], cut short by a stop)
    /// whenever the connection ends or the frontend is not there yet. A
    /// restarted server is back as soon as it connects, with no frontend
    /// timer in between.
    pub fn connecting(path: &Path, cfg: NetConfig, ports: Vec<P>) -> Result<Self, ServerError> {
        Self::build(path, None, cfg, ports)
    }

    /// Listens on `path` with `perms`, or (`None`) connects to it.
    fn build(
        path: &Path,
        perms: Option<SocketPermissions>,
        cfg: NetConfig,
        ports: Vec<P>,
    ) -> Result<Self, ServerError> {
        if perms.is_some_and(|p| p.mode & !0o777 != 0) {
            return Err(ServerError::Config(format!(
                "socket mode {:o} has bits beyond 0777",
                perms.map_or(0, |p| p.mode)
            )));
        }
        if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(ServerError::Config(format!(
                "queue pairs must be 1 to {MAX_QUEUE_PAIRS}, not {}",
                cfg.queue_pairs
            )));
        }
        if cfg.offered_pairs == 0 || cfg.offered_pairs > cfg.queue_pairs {
            return Err(ServerError::Config(format!(
                "queue pairs offered must be 1 to {}, not {}",
                cfg.queue_pairs, cfg.offered_pairs
            )));
        }
        if ports.len() != usize::from(cfg.queue_pairs) {
            return Err(ServerError::Config(format!(
                "{} AF_XDP ports for {} queue pairs",
                ports.len(),
                cfg.queue_pairs
            )));
        }
        if !cfg.max_queue_size.is_power_of_two() || cfg.max_queue_size > 32768 {
            return Err(ServerError::Config(format!(
                "maximum queue size {} is not a power of two up to 32768",
                cfg.max_queue_size
            )));
        }
        let frame_len = ports.iter().map(P::max_frame_len).max().unwrap_or(0);
        let peers = Arc::new(
            Peers::new(ports.len(), frame_len).map_err(io_err("creating the handoff eventfds"))?,
        );
        let mut pairs = Vec::with_capacity(ports.len());
        let mut counters = Vec::with_capacity(ports.len());
        for (i, port) in ports.into_iter().enumerate() {
            let mut qp = QueuePair::new(i as u16, port, cfg.mtu, peers.clone())
                .map_err(io_err("creating a timerfd"))?;
            qp.set_link(cfg.link.clone());
            counters.push(qp.counters());
            pairs.push(Arc::new(Mutex::new(qp)));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(io_err("creating an eventfd"))?;
        // Last: nothing after it fails, so the socket file never outlives a
        // server that was not built.
        let side = match perms {
            Some(perms) => {
                let listener = bind_secure(path, perms).map_err(|e| ServerError::Listen {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
                Side::Listen(Listener::from(listener))
            }
            None => Side::Connect(None),
        };
        let handle = ServerHandle {
            stop: Arc::new(stop),
            stopping: Arc::new(AtomicBool::new(false)),
            conn: Arc::new(Connection::default()),
            pairs: pairs.clone(),
            peers: peers.clone(),
            nq: 2 * cfg.queue_pairs,
            counters,
            connections: Arc::new(AtomicU64::new(0)),
            setup_failures: Arc::new(AtomicU64::new(0)),
        };
        Ok(Self {
            cfg,
            path: path.to_path_buf(),
            side,
            pairs,
            peers,
            handle,
            on_connection: None,
            faults: None,
        })
    }

    /// Makes connection set-ups fail as `faults` plans (a test seam; see
    /// [`ServerFaults`]).
    pub fn set_faults(&mut self, faults: ServerFaults) {
        self.faults = Some(faults);
    }

    /// The error planned for `step`, if any.
    fn fault(&self, step: SetupStep, what: &'static str) -> Result<(), ServerError> {
        match self.faults.as_ref().and_then(|f| f.take(step)) {
            Some(source) => Err(ServerError::Io { what, source }),
            None => Ok(()),
        }
    }

    /// Calls `f` (on the server's thread, never holding a lock of the
    /// server) when a frontend's workers start and after they stopped, so
    /// the caller can steer traffic to the sockets only while someone reads
    /// them (docs/ARCHITECTURE.md, control path: a dead worker's XSKMAP
    /// entry goes, traffic fails open).
    pub fn on_connection(&mut self, f: impl Fn(ConnectionEvent<'_>) + Send + 'static) {
        self.on_connection = Some(Box::new(f));
    }

    /// A handle to stop the server, change sockets and read counters from
    /// other threads.
    pub fn handle(&self) -> ServerHandle<P> {
        self.handle.clone()
    }

    /// Serves frontends one after another until stopped or a worker fails.
    /// The socket file goes with the server.
    pub fn run(mut self) -> Result<(), ServerError> {
        self.serve()
    }

    fn serve(&mut self) -> Result<(), ServerError> {
        let mut backoff = SETUP_BACKOFF_FIRST;
        loop {
            if !self.wait_for_frontend()? {
                return Ok(());
            }
            match self.serve_one() {
                Ok(()) => backoff = SETUP_BACKOFF_FIRST,
                Err(e) => {
                    // Transient (no fd, no thread): log, wait, go on.
                    self.handle.setup_failures.fetch_add(1, Ordering::AcqRel);
                    tracing::warn!(
                        socket = %self.path.display(),
                        "setting up a vhost-user connection failed: {e}; retrying in {backoff:?}"
                    );
                    if !self.pause(backoff) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(SETUP_BACKOFF_MAX);
                }
            }
            if let Some(err) = self.handle.conn.take_error() {
                return Err(ServerError::Worker(err));
            }
            if self.handle.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    /// Waits `d` or until stop is asked (false).
    fn pause(&self, d: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.handle.stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let end = Instant::now() + d;
        loop {
            if self.handle.stopping.load(Ordering::Acquire) {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut fd, 1, ms) };
        }
    }

    /// Waits until a frontend is connecting (true) or stop was asked
    /// (false). In client mode: until a connection to the frontend's
    /// socket is made.
    fn wait_for_frontend(&mut self) -> Result<bool, ServerError> {
        let listener = match &mut self.side {
            Side::Listen(l) => l.as_raw_fd(),
            Side::Connect(pending) => {
                let mut logged = false;
                loop {
                    if self.handle.stopping.load(Ordering::Acquire) {
                        return Ok(false);
                    }
                    match UnixStream::connect(&self.path) {
                        Ok(s) => {
                            *pending = Some(s);
                            return Ok(true);
                        }
                        Err(e) => {
                            if !logged {
                                tracing::debug!(socket = %self.path.display(), "no frontend to connect to yet: {e}; retrying every {RECONNECT_PAUSE:?}");
                                logged = true;
                            }
                        }
                    }
                    let mut fd = libc::pollfd {
                        fd: self.handle.stop.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = RECONNECT_PAUSE.as_millis() as i32;
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut fd, 1, ms) };
                }
            }
        };
        let mut fds = [
            libc::pollfd {
                fd: listener,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.handle.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if self.handle.stopping.load(Ordering::Acquire) {
                return Ok(false);
            }
            // SAFETY: fds is a valid array of two pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Io {
                    what: "poll on the vhost-user listener",
                    source: e,
                });
            }
            if fds[1].revents != 0 {
                return Ok(false);
            }
            if fds[0].revents & libc::POLLIN != 0 {
                return Ok(true);
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(ServerError::Io {
                    what: "the vhost-user listener",
                    source: std::io::Error::other("listener socket failed"),
                });
            }
        }
    }

    fn serve_one(&mut self) -> Result<(), ServerError> {
        self.fault(SetupStep::Workers, "starting the workers")?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(NetBackend::new(
            self.cfg.clone(),
            self.pairs.clone(),
            mem.clone(),
            self.handle.conn.clone(),
        ));
        self.peers.reset();
        for p in &self.pairs {
            p.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .begin_connection();
        }
        let mut daemon = VhostUserDaemon::new("xdpath-vhost-user".into(), backend.clone(), mem)
            .map_err(|e| ServerError::Daemon(e.to_string()))?;
        let result = self.run_connection(&mut daemon);
        self.handle.conn.set(None, Vec::new());
        self.handle.conn.set_frontend(None);
        // Joins every worker of this connection (exit events, then join).
        drop(daemon);
        backend.close_exit_fds();
        if let Some(f) = &self.on_connection {
            f(ConnectionEvent::Down);
        }
        result
    }

    fn run_connection(
        &mut self,
        daemon: &mut VhostUserDaemon<Arc<NetBackend<P>>>,
    ) -> Result<(), ServerError> {
        let nq = 2 * self.cfg.queue_pairs;
        let handlers = daemon.get_epoll_handlers();
        for (i, h) in handlers.iter().enumerate() {
            let Some(pair) = self.pairs.get(i) else {
                continue;
            };
            let qp = pair.lock().unwrap_or_else(PoisonError::into_inner);
            let fds = [
                qp.port_fd().map(|fd| (fd, nq + XSK_EVENT_OFFSET)),
                Some((qp.timer_fd(), nq + TIMER_EVENT_OFFSET)),
                qp.handoff_fd().map(|fd| (fd, nq + HANDOFF_EVENT_OFFSET)),
            ];
            for (fd, id) in fds.into_iter().flatten() {
                h.register_listener(fd, EventSet::IN, u64::from(id))
                    .map_err(io_err("registering a worker fd"))?;
            }
        }
        // Accept the frontend here and put the relay (see `relay`) between
        // it and the library's request handler, which connects as a client
        // to a private socket.
        self.fault(SetupStep::Accept, "accepting a vhost-user frontend")?;
        let front = match &mut self.side {
            Side::Listen(l) => l.accept().map_err(|e| ServerError::Daemon(e.to_string()))?,
            Side::Connect(pending) => pending.take(),
        };
        let Some(front) = front else {
            return Ok(()); // the frontend went away before it was accepted
        };
        let back = relay_socket(daemon)?;
        let stop_front = front
            .try_clone()
            .map_err(io_err("cloning the frontend's socket"))?;
        self.fault(SetupStep::Relay, "starting the relay thread")?;
        let relay = std::thread::Builder::new()
            .name("vhost-user-relay".into())
            .spawn(move || crate::relay::run(front, back))
            .map_err(io_err("starting the relay thread"))?;
        self.handle.conn.set_frontend(Some(stop_front));
        self.handle.connections.fetch_add(1, Ordering::AcqRel);
        self.handle.conn.set(daemon.shutdown_handle(), handlers);
        // A stop that raced with the accept.
        if self.handle.stopping.load(Ordering::Acquire) {
            self.handle.conn.end();
        }
        tracing::info!(socket = %self.path.display(), "vhost-user frontend connected");
        if let Some(f) = &self.on_connection {
            let fds: Vec<(u32, RawFd)> = self
                .pairs
                .iter()
                .enumerate()
                .filter_map(|(q, p)| {
                    p.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .port_fd()
                        .map(|fd| (q as u32, fd))
                })
                .collect();
            f(ConnectionEvent::Up(&fds));
        }
        match daemon.wait() {
            Ok(()) => tracing::info!("vhost-user frontend disconnected"),
            Err(e) => tracing::info!("vhost-user connection ended: {e}"),
        }
        // The handler closed its end, so the relay ends too.
        let _ = relay.join();
        Ok(())
    }
}

impl<P: FramePort> Drop for Server<P> {
    fn drop(&mut self) {
        // The socket file goes with the server (in client mode it is the
        // frontend's).
        if matches!(self.side, Side::Listen(_)) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A fresh directory only this process's user can enter (`mkdtemp`, mode
/// 0700) inside `parent`; removed, with what was put in it, on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path, prefix: &str) -> std::io::Result<Self> {
        let mut template = parent
            .join(format!("{prefix}XXXXXX"))
            .into_os_string()
            .into_vec();
        template.push(0);
        // SAFETY: `template` is a writable NUL-terminated buffer ending in
        // six X, which mkdtemp replaces in place.
        let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        template.pop();
        Ok(Self(PathBuf::from(OsStr::from_bytes(&template))))
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Ok(d) = std::fs::read_dir(&self.0) {
            for e in d.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Binds a listening socket at `path` that is never reachable with looser
/// permissions than `perms`: bound in a private directory next to `path`,
/// given its owner, group and mode there, then renamed into place
/// (replacing a stale socket file).
fn bind_secure(path: &Path, perms: SocketPermissions) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = PrivateDir::new(parent, ".xdpath-bind-")?;
    let staged = dir.join("sock");
    let listener = UnixListener::bind(&staged)?;
    if perms.owner.is_some() || perms.group.is_some() {
        std::os::unix::fs::chown(&staged, perms.owner, perms.group)?;
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(perms.mode))?;
    std::fs::rename(&staged, path)?;
    Ok(listener)
}

/// The relay's socket to the library's request handler: the library
/// connects (`start_client`) to a listener in a private directory, and
/// only a peer that is this process is accepted (SO_PEERCRED). Directory
/// and socket are gone when this returns.
fn relay_socket<B>(daemon: &mut VhostUserDaemon<B>) -> Result<UnixStream, ServerError>
where
    B: vhost_user_backend::VhostUserBackend + Clone + 'static,
    B::Vring: Clone + Send + Sync,
    B::Bitmap: vhost_user_backend::bitmap::BitmapReplace
        + vm_memory::mmap::NewBitmap
        + Clone
        + Send
        + Sync,
{
    let dir = PrivateDir::new(&std::env::temp_dir(), "xdpath-relay-")
        .map_err(io_err("creating the relay's private directory"))?;
    let path = dir.join("sock");
    let listener = UnixListener::bind(&path).map_err(io_err("binding the relay socket"))?;
    let path = path.to_str().ok_or_else(|| {
        ServerError::Config(format!(
            "the temporary directory {} is not UTF-8",
            std::env::temp_dir().display()
        ))
    })?;
    daemon
        .start_client(path)
        .map_err(|e| ServerError::Daemon(e.to_string()))?;
    accept_own(&listener, Instant::now() + RELAY_ACCEPT_TIMEOUT)
}

/// Accepts the first connection on `listener` whose peer is this process
/// (SO_PEERCRED: same pid and effective uid), dropping any other, until
/// `deadline`.
fn accept_own(listener: &UnixListener, deadline: Instant) -> Result<UnixStream, ServerError> {
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting up the relay socket"))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                // SAFETY: geteuid has no preconditions.
                let euid = unsafe { libc::geteuid() };
                match peer_cred(&s) {
                    Ok(c) if c.pid == std::process::id() as i32 && c.uid == euid => {
                        s.set_nonblocking(false)
                            .map_err(io_err("setting up the relay connection"))?;
                        return Ok(s);
                    }
                    Ok(c) => tracing::warn!(
                        pid = c.pid,
                        uid = c.uid,
                        "refused a connection to the relay's private socket from another process"
                    ),
                    Err(e) => tracing::warn!("refused a relay connection: SO_PEERCRED: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ServerError::Io {
                        what: "waiting for the library's relay connection",
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    });
                }
                let mut fd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut fd, 1, ms) };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ServerError::Io {
                    what: "accepting the relay connection",
                    source: e,
                })
            }
        }
    }
}

/// The credentials of `s`'s peer at connect time.
fn peer_cred(s: &UnixStream) -> std::io::Result<libc::ucred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` is a valid ucred buffer of `len` bytes for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn scratch_dir() -> PrivateDir {
        PrivateDir::new(&std::env::temp_dir(), "xdpath-server-test-").expect("temp dir")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn private_directories_are_private_and_go_away() {
        let d = scratch_dir();
        let meta = std::fs::metadata(&d.0).expect("metadata");
        assert_eq!(meta.mode() & 0o777, 0o700);
        std::fs::write(d.join("x"), b"x").expect("write");
        let path = d.0.clone();
        drop(d);
        assert!(!path.exists());
    }

    #[test]
    fn the_socket_appears_with_the_permissions_asked_and_replaces_a_stale_file() {
        let d = scratch_dir();
        let path = d.join("vhost.sock");
        std::fs::write(&path, b"stale").expect("write");
        for mode in [0o600, 0o660, 0o666] {
            // SAFETY: getuid and getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let perms = SocketPermissions {
                mode,
                owner: Some(uid),
                group: Some(gid),
            };
            let l = bind_secure(&path, perms).expect("bind");
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.mode() & 0o7777, mode);
            assert_eq!(entries(&d.0), ["vhost.sock"], "no staging directory left");
            // The socket at the path is the listener's.
            let _c = UnixStream::connect(&path).expect("connect");
            l.set_nonblocking(true).expect("nonblocking");
            assert!(l.accept().is_ok());
        }
    }

    /// Only a peer that is this process gets the relay's connection: a
    /// connection from another process (a forked child) that comes first
    /// is dropped.
    #[test]
    fn the_relay_socket_takes_only_this_process() {
        let d = scratch_dir();
        let path = d.join("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // Everything the child needs, prepared before the fork.
        // SAFETY: sockaddr_un is plain data; all zeros is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, &b) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *dst = b as libc::c_char;
        }
        let mut ready = [0i32; 2];
        let mut hold = [0i32; 2];
        // SAFETY: two valid arrays of two fds each.
        let pipes = unsafe {
            (
                libc::pipe(ready.as_mut_ptr()),
                libc::pipe(hold.as_mut_ptr()),
            )
        };
        assert_eq!(pipes, (0, 0));
        // SAFETY: the child only makes async-signal-safe calls (socket,
        // connect, write, read, _exit) on memory prepared before the fork.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            // SAFETY: as above; the child never returns into Rust code.
            unsafe {
                // Only the parent may hold the write end it closes to let
                // the child go.
                libc::close(hold[1]);
                libc::close(ready[0]);
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let ok = libc::connect(s, (&addr as *const libc::sockaddr_un).cast(), len) == 0;
                let b = [u8::from(ok)];
                libc::write(ready[1], b.as_ptr().cast(), 1);
                let mut x = [0u8; 1];
                libc::read(hold[0], x.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copies of the child's ends.
        unsafe {
            libc::close(ready[1]);
            libc::close(hold[0]);
        }
        let mut r = [0u8; 1];
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(ready[0], r.as_mut_ptr().cast(), 1) };
        assert_eq!((n, r[0]), (1, 1), "the child connected first");
        let mut own = UnixStream::connect(&path).expect("connect");
        let mut got =
            accept_own(&listener, Instant::now() + Duration::from_secs(5)).expect("accept");
        own.write_all(b"!").expect("write");
        let mut b = [0u8; 1];
        got.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"!", "the accepted connection is ours, not the child's");
        // SAFETY: closing our pipe ends lets the child exit; then reap it.
        unsafe {
            libc::close(hold[1]);
            libc::close(ready[0]);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
        }
    }

    #[test]
    fn planned_faults_are_taken_one_by_one() {
        let f = ServerFaults::new();
        f.fail(SetupStep::Accept, 2);
        let g = f.clone();
        assert_eq!(
            g.take(SetupStep::Accept).and_then(|e| e.raw_os_error()),
            Some(libc::EMFILE)
        );
        assert!(f.take(SetupStep::Relay).is_none());
        assert!(f.take(SetupStep::Accept).is_some());
        assert!(f.take(SetupStep::Accept).is_none());
        assert_eq!(f.pending(SetupStep::Accept), 0);
    }
}
