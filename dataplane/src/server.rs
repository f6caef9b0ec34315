//! The vhost-user server: one listening socket, one frontend at a time,
//! reconnects forever until stopped.
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
//! connection, and after step 4 [`Server::run`] returns it. Errors of the
//! server itself (listener gone, daemon cannot be built) end `run` too.
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
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

    /// Frontend connections served so far (including the current one).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
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
    listener: Listener,
    pairs: Vec<Arc<Mutex<QueuePair<P>>>>,
    peers: Arc<Peers>,
    handle: ServerHandle<P>,
    on_connection: Option<ConnectionHook>,
}

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
    /// pair per port, in order (`ports[i]` serves vrings 2i and 2i+1).
    pub fn new(path: &Path, cfg: NetConfig, ports: Vec<P>) -> Result<Self, ServerError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(ServerError::Config(format!(
                "queue pairs must be 1 to {MAX_QUEUE_PAIRS}, not {}",
                cfg.queue_pairs
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
            let qp = QueuePair::new(i as u16, port, cfg.mtu, peers.clone())
                .map_err(io_err("creating a timerfd"))?;
            counters.push(qp.counters());
            pairs.push(Arc::new(Mutex::new(qp)));
        }
        let listener = Listener::new(path, true).map_err(|e| ServerError::Listen {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(io_err("creating an eventfd"))?;
        let handle = ServerHandle {
            stop: Arc::new(stop),
            stopping: Arc::new(AtomicBool::new(false)),
            conn: Arc::new(Connection::default()),
            pairs: pairs.clone(),
            peers: peers.clone(),
            nq: 2 * cfg.queue_pairs,
            counters,
            connections: Arc::new(AtomicU64::new(0)),
        };
        Ok(Self {
            cfg,
            path: path.to_path_buf(),
            listener,
            pairs,
            peers,
            handle,
            on_connection: None,
        })
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
    pub fn run(mut self) -> Result<(), ServerError> {
        let result = self.serve();
        // The socket file goes with the server.
        let _ = std::fs::remove_file(&self.path);
        result
    }

    fn serve(&mut self) -> Result<(), ServerError> {
        loop {
            if !self.wait_for_frontend()? {
                return Ok(());
            }
            self.serve_one()?;
            if let Some(err) = self.handle.conn.take_error() {
                return Err(ServerError::Worker(err));
            }
            if self.handle.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    /// Waits until a frontend is connecting (true) or stop was asked (false).
    fn wait_for_frontend(&self) -> Result<bool, ServerError> {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
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
        let Some(front) = self
            .listener
            .accept()
            .map_err(|e| ServerError::Daemon(e.to_string()))?
        else {
            return Ok(()); // the frontend went away before it was accepted
        };
        // Unique per connection in this process (several servers may run in
        // one process, e.g. tests), so no two handlers can meet.
        static RELAYS: AtomicU64 = AtomicU64::new(0);
        let private = std::env::temp_dir().join(format!(
            "xdpath-relay-{}-{}.sock",
            std::process::id(),
            RELAYS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&private);
        let inner = std::os::unix::net::UnixListener::bind(&private)
            .map_err(io_err("binding the relay socket"))?;
        let started = daemon.start_client(&private.to_string_lossy());
        let back = started
            .map_err(|e| ServerError::Daemon(e.to_string()))
            .and_then(|()| {
                inner
                    .accept()
                    .map(|(s, _)| s)
                    .map_err(io_err("accepting the relay connection"))
            });
        drop(inner);
        let _ = std::fs::remove_file(&private);
        let back = back?;
        let relay = std::thread::Builder::new()
            .name("vhost-user-relay".into())
            .spawn(move || crate::relay::run(front, back))
            .map_err(io_err("starting the relay thread"))?;
        self.handle.connections.fetch_add(1, Ordering::AcqRel);
        self.handle.conn.set(daemon.shutdown_handle(), handlers);
        // A stop that raced with the accept.
        if self.handle.stopping.load(Ordering::Acquire) {
            daemon.request_shutdown();
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
