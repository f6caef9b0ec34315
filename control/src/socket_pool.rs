//! The AF_XDP socket pool: one socket per NIC queue, created up front,
//! registered in the XSKMAP while a guest's workers run (a dead worker's
//! entry goes: its traffic fails open to the host), replaced on request.
//!
//! Ownership (docs/ARCHITECTURE.md, concurrency rules): the sockets
//! themselves belong to the dataplane's workers once handed over; the pool
//! keeps only what the control plane needs to know about each queue, in
//! one mutex that is never held across a blocking call (binding a socket,
//! waiting for a worker, waiting for the maps' lock). A replacement is a
//! sequence of messages, in the teardown order of docs/ARCHITECTURE.md:
//! XSKMAP entry out (the queue fails open to the host) -> the worker
//! releases its socket -> open a new one (retried while the kernel frees
//! the queue) -> XSKMAP entry in (only while a guest's workers run) -> the
//! worker installs it.
//!
//! # Who writes the XSKMAP, in which order
//!
//! Two threads write a queue's entry: the server's, through the connection
//! events ([`SocketPool::register_all`] when a guest's workers run,
//! [`SocketPool::unregister_all`] when they stopped), and the one running a
//! replacement. The pool's mutex orders them, with two records:
//! - `connected`, set and cleared by the connection events themselves (not
//!   read from the server, whose state may already have moved on while an
//!   event is on its way);
//! - per queue, the fd of the socket its worker owns or is about to be
//!   given, and `None` from the moment a replacement takes the entry out
//!   until its new socket exists.
//!
//! Every XSKMAP write happens with both records locked (the maps' lock
//! first, then the pool's), and only a recorded fd is ever registered, and
//! only while `connected`. So whatever the interleaving, once the events
//! and the replacement are done, the map holds exactly the current socket
//! of every queue while a guest is connected and nothing otherwise; a
//! disconnect can never leave an entry for a socket nobody reads, and an
//! fd is never registered after its socket was released (the only release
//! is a replacement's, which clears the record first). The fds a
//! connection event reports are not trusted for the same reason: a
//! replacement may have closed one since the server read it.
//!
//! A replacement calls an optional hook after each of its steps
//! ([`SocketPool::on_step`], [`ReplaceStep`]): the deterministic seam the
//! tests use to put a connection event exactly between two steps.
//!
//! Both kernel boundaries are traits, so the sequence runs without root:
//! sockets come from a [`PortFactory`] (`XskFactory` binds AF_XDP sockets,
//! `MemFactory` opens in-memory ports), and the XSKMAP writes go through
//! [`SocketMap`] (implemented here for the [`Classifier`], and by the
//! in-memory [`MemSocketMap`]).
//!
//! If the daemon dies, the kernel closes its sockets and drops them from
//! the XSKMAP by itself: traffic fails open to the host.

use crate::classifier::Classifier;
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use xdpath_dataplane::{PortFactory, ServerHandle};

/// How long a worker may take to apply a socket change, and how long a
/// queue's new socket is retried while the kernel frees the queue.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts to open a queue's new socket.
const REOPEN_PAUSE: Duration = Duration::from_millis(10);

/// The XSKMAP writes the pool makes: steer a guest's traffic on a queue to
/// its socket, or take the entry out so that traffic fails open to the
/// host. Entries are XSKMAP slots ([`xdpath_common::xsk_slot`]: one per
/// guest and queue; guest 1's slots are the queue numbers).
pub trait SocketMap {
    /// Why a write failed.
    type Error: std::fmt::Display;

    /// Points entry `slot` at the socket `fd`.
    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> Result<(), Self::Error>;

    /// Removes entry `slot` (none there is not an error).
    fn unregister(&mut self, slot: u32) -> Result<(), Self::Error>;
}

impl SocketMap for Classifier {
    type Error = crate::ClassifierError;

    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> Result<(), Self::Error> {
        self.register_socket(slot, &fd)
    }

    fn unregister(&mut self, slot: u32) -> Result<(), Self::Error> {
        self.unregister_socket(slot)
    }
}

/// One write to a [`MemSocketMap`], in the order made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapWrite {
    /// `register(slot, fd)`.
    Register(u32, RawFd),
    /// `unregister(slot)`.
    Unregister(u32),
}

/// An in-memory XSKMAP for tests: the entries, every write in order, and
/// writes made to fail on purpose.
#[derive(Debug, Default)]
pub struct MemSocketMap {
    entries: BTreeMap<u32, RawFd>,
    writes: Vec<MapWrite>,
    fail_writes: u32,
}

impl MemSocketMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fd entry `slot` points at, if any (guest 1's slot of a queue
    /// is the queue number).
    pub fn entry(&self, slot: u32) -> Option<RawFd> {
        self.entries.get(&slot).copied()
    }

    /// Every entry, by slot.
    pub fn entries(&self) -> &BTreeMap<u32, RawFd> {
        &self.entries
    }

    /// Every write that succeeded, in order.
    pub fn writes(&self) -> &[MapWrite] {
        &self.writes
    }

    /// The next `n` writes fail and change nothing.
    pub fn fail_writes(&mut self, n: u32) {
        self.fail_writes = n;
    }

    fn refuse(&mut self) -> Result<(), std::io::Error> {
        if self.fail_writes == 0 {
            return Ok(());
        }
        self.fail_writes -= 1;
        Err(std::io::Error::other("the XSKMAP write failed (injected)"))
    }
}

impl AsMut<MemSocketMap> for MemSocketMap {
    fn as_mut(&mut self) -> &mut MemSocketMap {
        self
    }
}

impl SocketMap for MemSocketMap {
    type Error = std::io::Error;

    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> Result<(), Self::Error> {
        self.refuse()?;
        self.entries.insert(slot, fd.as_raw_fd());
        self.writes.push(MapWrite::Register(slot, fd.as_raw_fd()));
        Ok(())
    }

    fn unregister(&mut self, slot: u32) -> Result<(), Self::Error> {
        self.refuse()?;
        self.entries.remove(&slot);
        self.writes.push(MapWrite::Unregister(slot));
        Ok(())
    }
}

/// What the pool knows about one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    /// A socket is bound, registered and owned by the worker.
    Bound,
    /// Being replaced right now.
    Replacing,
    /// No socket: the queue fails open to the host.
    Released,
    /// The last replacement failed; the message says why.
    Failed(String),
}

/// One queue as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    /// Queue index (= queue pair index).
    pub queue: u32,
    /// Socket state.
    pub state: SocketState,
    /// Sockets created for this queue so far (1 + replacements).
    pub generation: u32,
}

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No such queue.
    #[error("Queue {0} does not exist.")]
    NoSuchQueue(u32),
    /// The guest id has no XSKMAP entries (ids are 1..=MAX_GUESTS).
    #[error("Guest id {0} is out of range; ids are 1 to {max}.", max = xdpath_common::MAX_GUESTS)]
    NoSuchGuest(u32),
    /// A replacement of this queue is already running.
    #[error("Queue {0} is being replaced already.")]
    Busy(u32),
    /// Creating a socket failed.
    #[error("Creating the AF_XDP socket of queue {queue} failed: {detail}")]
    Socket {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
    /// The XSKMAP could not be written.
    #[error("Registering queue {queue} in the XSKMAP failed: {detail}")]
    Map {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
    /// The worker did not take the change.
    #[error("The worker of queue {queue} did not apply the change: {detail}")]
    Worker {
        /// Queue.
        queue: u32,
        /// Why.
        detail: String,
    },
}

/// A step of [`SocketPool::replace`], reported to the hook of
/// [`SocketPool::on_step`] once it is done (no lock held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceStep {
    /// 1. The queue's XSKMAP entry is out: it fails open to the host.
    EntryOut,
    /// 2. The worker released its socket.
    Released,
    /// 3. The new socket is open.
    Opened,
    /// 4. The new socket is recorded, and registered if a guest is
    ///    connected.
    EntryIn,
    /// 5. The worker installed the new socket.
    Installed,
}

type StepHook = Box<dyn Fn(u32, ReplaceStep) + Send + Sync>;

/// What the pool's mutex guards (see the module docs).
#[derive(Debug)]
struct PoolState {
    queues: Vec<QueueInfo>,
    /// Per queue: the fd of the socket its worker owns or is about to be
    /// given; `None` while a replacement has none to offer.
    fds: Vec<Option<RawFd>>,
    /// A guest's workers run (between the connection events Up and Down).
    connected: bool,
}

/// The pool of one guest on one interface (its socket on every queue),
/// over the factory `F` that opens its sockets.
pub struct SocketPool<F> {
    factory: F,
    /// The guest id whose XSKMAP entries the pool writes.
    guest: u32,
    timeout: Duration,
    state: Mutex<PoolState>,
    on_step: Option<StepHook>,
}

impl<F: std::fmt::Debug> std::fmt::Debug for SocketPool<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketPool")
            .field("factory", &self.factory)
            .field("timeout", &self.timeout)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<F: PortFactory> SocketPool<F> {
    /// Opens one socket per queue `0..queues` through `factory` (each
    /// retried for up to [`WORKER_TIMEOUT`] while its queue is busy); returns
    /// the pool and the sockets for the dataplane server (in queue order).
    /// The sockets are registered in the XSKMAP only while a guest's
    /// workers run ([`SocketPool::register_all`] and
    /// [`SocketPool::unregister_all`], driven by the server's connection
    /// events): without a guest, its traffic fails open to the host.
    pub fn create(factory: F, queues: u32) -> Result<(Self, Vec<F::Port>), PoolError> {
        // A queue may still be held for a moment by a socket closed just
        // before (a daemon killed and restarted at once): the kernel frees
        // it asynchronously.
        let ports = (0..queues)
            .map(|queue| open_retrying(&factory, queue, WORKER_TIMEOUT))
            .collect::<Result<Vec<_>, _>>()?;
        let infos = (0..queues)
            .map(|queue| QueueInfo {
                queue,
                state: SocketState::Bound,
                generation: 1,
            })
            .collect();
        let fds = ports.iter().map(|p| Some(p.as_fd().as_raw_fd())).collect();
        Ok((
            Self {
                factory,
                guest: 1,
                timeout: WORKER_TIMEOUT,
                state: Mutex::new(PoolState {
                    queues: infos,
                    fds,
                    connected: false,
                }),
                on_step: None,
            },
            ports,
        ))
    }

    /// The same pool, writing the XSKMAP entries of guest `guest` (1 when
    /// not set: the entries are the queue numbers). Ids outside
    /// `1..=MAX_GUESTS` are refused.
    pub fn for_guest(mut self, guest: u32) -> Result<Self, PoolError> {
        if xdpath_common::xsk_slot(guest, 0).is_none() {
            return Err(PoolError::NoSuchGuest(guest));
        }
        self.guest = guest;
        Ok(self)
    }

    /// The guest whose entries the pool writes.
    pub fn guest(&self) -> u32 {
        self.guest
    }

    /// The XSKMAP entry of this pool's guest on `queue` (queues beyond
    /// `MAX_QUEUES` have none: the pool never creates them).
    fn slot(&self, queue: u32) -> Result<u32, PoolError> {
        xdpath_common::xsk_slot(self.guest, queue).ok_or(PoolError::NoSuchQueue(queue))
    }

    /// The same pool, calling `hook(queue, step)` after each step of a
    /// replacement, with no lock held: a test seam (a connection event can
    /// be made to happen exactly there). Without a hook a step costs one
    /// test of an `Option`.
    pub fn on_step(mut self, hook: impl Fn(u32, ReplaceStep) + Send + Sync + 'static) -> Self {
        self.on_step = Some(Box::new(hook));
        self
    }

    fn step(&self, queue: u32, step: ReplaceStep) {
        if let Some(h) = &self.on_step {
            h(queue, step);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The same pool, waiting at most `timeout` (instead of
    /// [`WORKER_TIMEOUT`]) for a worker and for a queue's new socket.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The factory the pool opens sockets with.
    pub fn factory(&self) -> &F {
        &self.factory
    }

    /// Connection event Up (a guest's workers run): the pool is connected
    /// from now on, and every queue that has a socket is steered to it.
    /// `maps` is the caller's, locked (the maps' lock comes before the
    /// pool's). `fds` are the (queue, fd) pairs the dataplane reported;
    /// they are only compared with the pool's records, never registered (a
    /// replacement may have closed one since they were read). A queue
    /// being replaced is steered by its replacement. Every queue is tried;
    /// the first failure is returned.
    pub fn register_all(
        &self,
        maps: &mut impl SocketMap,
        fds: &[(u32, RawFd)],
    ) -> Result<(), PoolError> {
        let mut st = self.lock();
        st.connected = true;
        let mut first_err = None;
        for (queue, fd) in st.fds.iter().enumerate() {
            let queue = queue as u32;
            let Some(fd) = *fd else {
                continue;
            };
            if let Some(&(_, reported)) = fds.iter().find(|(q, _)| *q == queue) {
                if reported != fd {
                    tracing::debug!(
                        queue,
                        reported,
                        fd,
                        "the connection event reported another socket than the pool's"
                    );
                }
            }
            // SAFETY: a recorded fd is that of the socket the queue's worker
            // owns or is about to be given (module docs): the record is
            // cleared, under this lock, before the only release of a socket
            // (a replacement's) is sent, and set only once the new socket is
            // open and kept until its worker holds it. A socket that failed
            // (its interface vanished) is closed by its worker too, but that
            // ends the server, so no connection event follows.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let written = match self.slot(queue) {
                Ok(slot) => maps.register(slot, fd).map_err(|e| PoolError::Map {
                    queue,
                    detail: e.to_string(),
                }),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The queues and their sockets.
    pub fn list(&self) -> Vec<QueueInfo> {
        self.lock().queues.clone()
    }

    /// Whether the pool steers traffic to the sockets: a guest's workers
    /// run (between [`SocketPool::register_all`] and
    /// [`SocketPool::unregister_all`]).
    pub fn connected(&self) -> bool {
        self.lock().connected
    }

    fn set(&self, queue: u32, state: SocketState, bump: bool) {
        let mut st = self.lock();
        if let Some(info) = st.queues.get_mut(queue as usize) {
            info.state = state;
            if bump {
                info.generation += 1;
            }
        }
    }

    /// Replaces queue `queue`'s socket with a fresh one. `maps` (the
    /// classifier, or what holds it) is locked only around the XSKMAP
    /// writes.
    pub fn replace<T, M>(
        &self,
        queue: u32,
        maps: &Mutex<T>,
        server: &ServerHandle<F::Port>,
    ) -> Result<QueueInfo, PoolError>
    where
        T: AsMut<M>,
        M: SocketMap,
    {
        {
            let mut st = self.lock();
            let info = st
                .queues
                .get_mut(queue as usize)
                .ok_or(PoolError::NoSuchQueue(queue))?;
            if info.state == SocketState::Replacing {
                return Err(PoolError::Busy(queue));
            }
            info.state = SocketState::Replacing;
        }
        let result = self.replace_steps(queue, maps, server);
        match &result {
            Ok(()) => self.set(queue, SocketState::Bound, true),
            Err(e) => self.set(queue, SocketState::Failed(e.to_string()), false),
        }
        result?;
        Ok(self.list().swap_remove(queue as usize))
    }

    fn replace_steps<T, M>(
        &self,
        queue: u32,
        maps: &Mutex<T>,
        server: &ServerHandle<F::Port>,
    ) -> Result<(), PoolError>
    where
        T: AsMut<M>,
        M: SocketMap,
    {
        let map_err = |e: M::Error| PoolError::Map {
            queue,
            detail: e.to_string(),
        };
        let slot = self.slot(queue)?;
        // 1. Fail open first; from here on no event registers the old
        //    socket (its record is cleared with the entry).
        {
            let mut m = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mut st = self.lock();
            m.as_mut().unregister(slot).map_err(map_err)?;
            if let Some(fd) = st.fds.get_mut(queue as usize) {
                *fd = None;
            }
        }
        self.step(queue, ReplaceStep::EntryOut);
        // 2. The worker lets go of its socket (blocking; no lock held).
        server
            .release_socket(queue as usize, self.timeout)
            .map_err(|e| PoolError::Worker {
                queue,
                detail: e.to_string(),
            })?;
        self.step(queue, ReplaceStep::Released);
        // 3. A new socket on the same queue. The kernel frees the queue from
        //    the old socket asynchronously (its buffer pool is torn down by
        //    a workqueue after close), so opening may fail for a moment.
        let port = open_retrying(&self.factory, queue, self.timeout)?;
        self.step(queue, ReplaceStep::Opened);
        // 4. Recorded, so a guest that connects from now on is steered to
        //    it, and traffic to it now if a guest's workers run (without a
        //    guest the queue stays failed open), decided and written under
        //    the same locks as the connection events.
        {
            let mut m = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mut st = self.lock();
            if st.connected {
                m.as_mut().register(slot, port.as_fd()).map_err(map_err)?;
            }
            if let Some(fd) = st.fds.get_mut(queue as usize) {
                *fd = Some(port.as_fd().as_raw_fd());
            }
        }
        self.step(queue, ReplaceStep::EntryIn);
        // 5. The worker takes it (the port moves into its mailbox, so its fd
        //    stays open whatever the outcome).
        server
            .install_socket(queue as usize, port, self.timeout)
            .map_err(|e| PoolError::Worker {
                queue,
                detail: e.to_string(),
            })?;
        self.step(queue, ReplaceStep::Installed);
        Ok(())
    }

    /// Connection event Down (a guest's workers stopped), and teardown
    /// step 1: the pool is not connected from now on, and every queue's
    /// XSKMAP entry goes, so traffic fails open to the host. `maps` is the
    /// caller's, locked.
    pub fn unregister_all(&self, maps: &mut impl SocketMap) {
        let mut st = self.lock();
        st.connected = false;
        for info in &st.queues {
            if let Ok(slot) = self.slot(info.queue) {
                let _ = maps.unregister(slot);
            }
        }
    }
}

fn open<F: PortFactory>(factory: &F, queue: u32) -> Result<F::Port, PoolError> {
    factory.open(queue).map_err(|e| PoolError::Socket {
        queue,
        detail: e.to_string(),
    })
}

/// Opens queue `queue`'s port, retrying for up to `timeout` while it fails
/// (the kernel frees a queue from a closed socket asynchronously); the last
/// error if it never works.
fn open_retrying<F: PortFactory>(
    factory: &F,
    queue: u32,
    timeout: Duration,
) -> Result<F::Port, PoolError> {
    let deadline = Instant::now() + timeout;
    loop {
        match open(factory, queue) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(REOPEN_PAUSE),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The replacement sequence on in-memory ports and an in-memory
    //! XSKMAP, against a real (not connected) dataplane server: without a
    //! frontend there are no workers, so the server applies socket changes
    //! itself, as the worker would first thing.

    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use xdpath_dataplane::{MemFactory, MemPort, MemWire, NetConfig, Server};

    struct Rig {
        wire: MemWire,
        pool: SocketPool<MemFactory>,
        server: Server<MemPort>,
        path: std::path::PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(queues: u16) -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "xdpath-pool-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let wire = MemWire::new(u32::from(queues));
        let factory = MemFactory::new(wire.clone(), 64, 64, 2048);
        let (pool, ports) = SocketPool::create(factory, u32::from(queues)).expect("pool");
        let cfg = NetConfig {
            queue_pairs: queues,
            offered_pairs: queues,
            mac: None,
            mtu: 1500,
            max_queue_size: 256,
            poll_idle: Duration::ZERO,
            link: None,
        };
        let server = Server::new(&path, cfg, ports).expect("server");
        Rig {
            wire,
            pool: pool.with_timeout(Duration::from_millis(500)),
            server,
            path,
        }
    }

    #[test]
    fn replace_takes_the_entry_out_waits_for_the_queue_and_installs_a_new_port() {
        let r = rig(2);
        let q0 = r.wire.queue(0).expect("queue 0").clone();
        let maps = Mutex::new(MemSocketMap::new());
        // A guest was connected before (every queue steered to its socket)
        // and left (every entry out).
        let old_fd = q0.attached_fd().expect("a port is open");
        let fd1 = r.wire.queue(1).and_then(|q| q.attached_fd()).expect("fd");
        r.pool
            .register_all(&mut *maps.lock().unwrap(), &[(0, old_fd), (1, fd1)])
            .expect("register");
        assert!(r.pool.connected());
        r.pool.unregister_all(&mut *maps.lock().unwrap());
        assert!(!r.pool.connected());
        // The kernel still holds the queue for two more attempts.
        q0.refuse_opens(2);
        let info = r
            .pool
            .replace(0, &maps, &r.server.handle())
            .expect("replace");
        assert_eq!(
            info,
            QueueInfo {
                queue: 0,
                state: SocketState::Bound,
                generation: 2
            }
        );
        let maps = maps.into_inner().unwrap();
        assert_eq!(
            maps.writes()[4..],
            [MapWrite::Unregister(0)],
            "entry out; no frontend, so no entry in: the queue stays failed open"
        );
        assert_eq!(
            maps.writes()[..4],
            [
                MapWrite::Register(0, old_fd),
                MapWrite::Register(1, fd1),
                MapWrite::Unregister(0),
                MapWrite::Unregister(1)
            ],
            "the guest before"
        );
        assert_eq!(maps.entry(0), None);
        let s = q0.stats();
        assert_eq!((s.opened, s.refused), (2, 2), "retried while busy");
        // The old port is closed (the queue took a new one) and the new one
        // lives on in the pair (a dropped port would leave the queue).
        assert_eq!(q0.attached(), Some(2));
        assert_eq!(r.wire.queue(1).and_then(|q| q.attached()), Some(1));
        assert_eq!(r.pool.list()[1].generation, 1, "queue 1 untouched");
    }

    #[test]
    fn a_failed_step_is_reported_and_leaves_the_queue_failed() {
        let r = rig(1);
        let handle = r.server.handle();
        let maps = Mutex::new(MemSocketMap::new());
        maps.lock().unwrap().fail_writes(1);
        let err = r.pool.replace(0, &maps, &handle).unwrap_err();
        assert!(matches!(err, PoolError::Map { queue: 0, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "Registering queue 0 in the XSKMAP failed: the XSKMAP write failed (injected)"
        );
        let info = &r.pool.list()[0];
        assert_eq!(info.state, SocketState::Failed(err.to_string()));
        assert_eq!(info.generation, 1);
        let q0 = r.wire.queue(0).expect("queue 0");
        assert_eq!(q0.attached(), Some(1), "the worker kept its port");

        // The queue's interface is gone: no new port within the timeout.
        q0.vanish();
        let err = r.pool.replace(0, &maps, &handle).unwrap_err();
        assert!(
            matches!(&err, PoolError::Socket { queue: 0, detail } if detail.contains("No such device")),
            "{err}"
        );
        assert!(matches!(r.pool.list()[0].state, SocketState::Failed(_)));
        assert_eq!(
            r.pool.replace(1, &maps, &handle).unwrap_err().to_string(),
            "Queue 1 does not exist."
        );
    }

    #[test]
    fn create_waits_for_a_queue_the_kernel_still_holds() {
        let wire = MemWire::new(2);
        // A socket closed just before (a daemon killed and restarted at
        // once) still holds queue 1 for three attempts.
        wire.queue(1).expect("queue 1").refuse_opens(3);
        let factory = MemFactory::new(wire.clone(), 64, 64, 2048);
        let (pool, ports) = SocketPool::create(factory, 2).expect("pool");
        assert_eq!(ports.len(), 2);
        let s = wire.queue(1).expect("queue 1").stats();
        assert_eq!((s.opened, s.refused), (1, 3), "retried while busy");
        assert!(pool.list().iter().all(|q| q.state == SocketState::Bound));
    }

    #[test]
    fn unregister_all_takes_every_entry_out() {
        let r = rig(2);
        let mut maps = MemSocketMap::new();
        let fds: Vec<(u32, RawFd)> = (0..2)
            .map(|q| {
                (
                    q,
                    r.wire.queue(q).and_then(|x| x.attached_fd()).expect("fd"),
                )
            })
            .collect();
        r.pool.register_all(&mut maps, &fds).expect("register");
        assert_eq!(
            (maps.entry(0), maps.entry(1)),
            (Some(fds[0].1), Some(fds[1].1))
        );
        r.pool.unregister_all(&mut maps);
        assert_eq!((maps.entry(0), maps.entry(1)), (None, None));
    }
}
