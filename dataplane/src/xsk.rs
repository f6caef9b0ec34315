//! AF_XDP sockets on per-queue shared UMEMs ([`XskPort`]), and the factory
//! that opens them ([`XskFactory`]).
//!
//! One NIC queue, one UMEM. Every port an [`XskFactory`] (or any of its
//! clones) opens on a queue is its own AF_XDP socket with its own RX and TX
//! rings, one per guest (docs/ARCHITECTURE.md, "One frame, wire to
//! guest"): the first one creates the queue's UMEM, binds with the fill and
//! completion rings, and stocks the fill ring; later ones bind to the same
//! (interface, queue) with XDP_SHARED_UMEM. The XDP program picks the
//! socket (XSKMAP slot), so each guest's frames land in its own RX ring.
//!
//! Who owns what:
//!
//! - **Port-private, no lock** (owned by one queue-pair worker): the
//!   socket's RX and TX rings, a cache of free TX frames (refilled to
//!   [`BATCH`] from the shared list), the frames of the TX batch being
//!   filled, and a handle on the UMEM's memory for reading and writing the
//!   frames the port holds.
//! - **Shared by the ports of one queue** (`QueueShared`, behind ONE
//!   mutex): the fill ring, the completion ring and the list of free
//!   frames. The lock is taken at most once per batch operation, never per
//!   frame: `rx_release` (the batch's frames go back to the fill ring),
//!   `reap_completions` (completions to the free list, then the port's
//!   cache topped up), `tx_capacity` when the cache is below [`BATCH`],
//!   `tx_push` when the cache ran empty (once per [`BATCH`] frames, only
//!   in batches larger than the queue pair's), `tx_abort` only when the
//!   cache overflows, and the port's close. The
//!   completion ring is the queue's: a port may reap frames another
//!   guest's port sent; they go to the shared free list, which is what
//!   every port's cache draws from.
//!
//! The frame budget ([`XskConfig::frames`], per queue, not per port) is
//! split once, when the queue's UMEM is created: up to `ring_size` frames
//! (half of them by default) stock the fill ring and cycle fill -> RX ring
//! of whichever socket the program picked -> `rx_release` -> fill ring; the
//! rest serve TX for all the queue's ports (free list -> port cache -> TX
//! ring -> completion ring -> free list). When the fill ring cannot take
//! released RX frames (copy mode keeps a dropped frame's fill entry after
//! an RX-ring overflow, so more frames than the fill ring holds can be
//! between fill and RX), they serve TX instead. Frame accounting lives in
//! `QueueFrames` and `FrameCache`, kernel-free and unit-tested.
//!
//! Sizing with several guests: the budget does not grow with the guests
//! (the defaults, 4096 frames of 2048 bytes, are 8 MiB per queue however
//! many share it). Each port's cache holds at most [`BATCH`] frames between
//! batches (up to twice that while an aborted batch spills), so with the
//! default 2048 TX frames 16 guests' caches hold at most half of them. On
//! RX every socket's ring can hold `ring_size` frames, as many as the fill
//! ring: a guest whose worker falls behind can hold the whole fill budget
//! in its RX ring, and the queue's other guests see fill-ring-empty drops
//! (`rx_fill_ring_empty_descs`) until it catches up. Bounding that needs
//! RX rings smaller than the fill ring; [`XskConfig`] has one `ring_size`
//! for all four rings today. Raise `frames` with the number of guests per
//! queue for more TX frames (the fill ring takes at most `ring_size`).
//!
//! Lifetime: the queue's state lives while any port on it lives (each port
//! holds an `Arc`, the factory only a `Weak`), so the ports of different
//! guests open and close in any order. xsk-rs gives the fill and completion
//! rings to the first socket bound to (interface, queue), and libxdp keeps
//! the first socket's fd as the UMEM's own: holding those rings in the
//! shared state keeps that socket bound until the last port is gone, even
//! after its own port closed. Such a closed first socket must not receive:
//! it is in no XSKMAP slot any more, which the control plane guarantees
//! (XSKMAP entry out before a port is closed, docs/ARCHITECTURE.md,
//! Concurrency rules, rule 5). A closing port gives back everything it
//! holds: its cache, the frames waiting in its RX ring (to the fill ring),
//! and it wakes the kernel until its TX ring is empty (bounded); frames the
//! kernel still sends complete to the shared completion ring. A frame the
//! kernel puts on a socket's RX ring after that drain (traffic racing the
//! XSKMAP removal) is lost to the queue until its state is dropped. When
//! the last port of a queue closes, the UMEM and its rings are freed and
//! the kernel releases the queue, so a replacement (close, reopen, retried
//! while the kernel frees the queue) creates a fresh UMEM. A factory also
//! starts afresh when the interface's index changed (it went away and
//! came back): the old state lives on with its old ports until they close.
//!
//! [`XskPort::bind`] opens a port with a UMEM of its own (no factory, no
//! sharing): a second `bind` on a bound queue fails with EBUSY, as does a
//! port of another factory or process.
//!
//! xsk-rs's `produce` calls are all-or-nothing; every call here offers at
//! most the free slots it just counted.
//!
//! `XskPort` implements [`FramePort`], the interface the queue pair uses
//! (import the trait to call its data-path methods); its inherent methods
//! are only what the trait does not cover (`bind`, `queue`). An
//! [`XskFactory`] is the [`PortFactory`] that binds sockets of one
//! interface with one set of settings (the socket pool's replacements, and
//! one port per guest on each queue).

use std::collections::HashMap;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::port::{FramePort, PortFactory, PortStats, Push, BATCH, XDP_PACKET_HEADROOM};

/// How to create an [`XskPort`].
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// Interface name (in the caller's network namespace).
    pub iface: String,
    /// NIC queue to bind to.
    pub queue: u32,
    /// UMEM frame size (2048 or 4096).
    pub frame_size: u32,
    /// Total UMEM frames of the queue, shared by every port a factory
    /// opens on it: half (at most `ring_size`) stock the fill ring, the
    /// rest serve TX.
    pub frames: u32,
    /// Size of each of the four rings (power of two).
    pub ring_size: u32,
    /// Force copy mode (veth supports only copy mode anyway); otherwise the
    /// kernel picks zero copy when the driver supports it.
    pub force_copy: bool,
    /// Preferred busy polling: the kernel polls the NIC queue in the
    /// worker's context when it waits (SO_PREFER_BUSY_POLL, SO_BUSY_POLL,
    /// SO_BUSY_POLL_BUDGET) instead of waiting for an interrupt. Lower
    /// latency under load for a core per queue pair; drivers without NAPI
    /// busy polling ignore it.
    pub busy_poll: bool,
}

/// Microseconds the kernel busy-polls per wait when `busy_poll` is set.
pub const BUSY_POLL_USECS: i32 = 20;

impl XskConfig {
    /// Defaults: 2048-byte frames, 4096 frames, 2048-slot rings, auto mode.
    pub fn new(iface: impl Into<String>, queue: u32) -> Self {
        Self {
            iface: iface.into(),
            queue,
            frame_size: 2048,
            frames: 4096,
            ring_size: 2048,
            force_copy: false,
            busy_poll: false,
        }
    }

    /// Largest frame (Ethernet header included) one UMEM frame holds.
    pub fn max_frame_len(&self) -> usize {
        self.frame_size as usize - XDP_PACKET_HEADROOM
    }
}

/// Errors creating a port.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size in the configuration is not acceptable.
    #[error("AF_XDP configuration is invalid: {0}.")]
    Config(String),
    /// Creating the UMEM failed.
    #[error("Creating the UMEM failed: {0}.")]
    Umem(String),
    /// Creating or binding the socket failed.
    #[error("Binding an AF_XDP socket to {iface} queue {queue} failed: {detail}.")]
    Bind {
        /// Interface name.
        iface: String,
        /// Queue index.
        queue: u32,
        /// What libxdp reported.
        detail: String,
    },
}

/// `setsockopt(fd, SOL_SOCKET, opt, &val)`.
fn set_sockopt(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: `val` is a valid int for the option's size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(fd, SOL_SOCKET, opt)` as an int.
pub fn get_sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` is a writable int of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// Free TX frames a port's cache is topped up to under the shared lock.
/// The cache lives for one batch: what the batch did not use goes back to
/// the queue's free list when it ends, so idle ports hold no frames (with
/// many guests on a queue, caches kept between batches would hold more
/// frames than the queue has and starve the last ports).
const CACHE_FILL: usize = BATCH;

/// Locks `m`, going on with the data of a poisoned lock: the frame lists
/// stay consistent at every point a panic could leave them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fill and completion rings of one queue's UMEM, as the frame
/// accounting ([`QueueFrames`]) sees them: the kernel's rings
/// ([`KernelRings`]), or plain queues in the unit tests.
trait UmemRings {
    /// Names one frame.
    type Desc: Copy;

    /// Free slots of the fill ring, at most `want`.
    fn fill_room(&mut self, want: usize) -> usize;

    /// Puts `descs` on the fill ring (all or nothing); returns how many.
    ///
    /// # Safety
    /// The frames belong to the caller (no ring holds them, nobody reads
    /// them any more) and the ring has room for all of them.
    unsafe fn fill(&mut self, descs: &[Self::Desc]) -> usize;

    /// Takes up to `out.len()` finished TX frames; returns how many.
    ///
    /// # Safety
    /// The caller is the only consumer of the ring (it holds the queue's
    /// lock).
    unsafe fn complete(&mut self, out: &mut [Self::Desc]) -> usize;
}

/// The kernel's fill and completion rings of a queue's UMEM. Holding them
/// keeps the queue's first socket bound (see the module documentation).
struct KernelRings {
    fill: FillQueue,
    comp: CompQueue,
}

impl UmemRings for KernelRings {
    type Desc = FrameDesc;

    #[inline]
    fn fill_room(&mut self, want: usize) -> usize {
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        (self.fill.nb_free(want) as usize).min(want as usize)
    }

    #[inline]
    unsafe fn fill(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the caller hands over frames of this UMEM that nobody
        // uses and no more than the ring's free slots.
        unsafe { self.fill.produce(descs) }
    }

    #[inline]
    unsafe fn complete(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: completions describe frames of this UMEM the kernel no
        // longer uses; the caller is the ring's only consumer.
        unsafe { self.comp.consume(out) }
    }
}

/// Where the frames of one queue's UMEM are that no port holds: the fill
/// ring, the completion ring and the free list. It sits behind the
/// queue's one mutex; every method is one batch operation.
struct QueueFrames<R: UmemRings> {
    rings: R,
    /// Frames free for TX that no port's cache holds.
    free: Vec<R::Desc>,
    /// Scratch for completions (as many as the ring holds).
    scratch: Vec<R::Desc>,
}

impl<R: UmemRings> QueueFrames<R> {
    fn new(rings: R, free: Vec<R::Desc>, scratch: Vec<R::Desc>) -> Self {
        Self {
            rings,
            free,
            scratch,
        }
    }

    /// RX frames a port is done with go back to the fill ring; what it
    /// cannot take serves TX instead.
    #[inline]
    fn release_rx(&mut self, descs: &[R::Desc]) {
        let room = self.rings.fill_room(descs.len()).min(descs.len());
        // SAFETY: the frames came from a port's RX ring and are no longer
        // read (the caller gave them up); the ring has `room` free slots.
        let n = unsafe { self.rings.fill(&descs[..room]) };
        self.free.extend_from_slice(&descs[n..]);
    }

    /// Moves the queue's finished TX frames (any port's) to the free list.
    /// Returns the completions.
    #[inline]
    fn reap(&mut self) -> usize {
        // SAFETY: the caller holds the queue's lock: the only consumer.
        let n = unsafe { self.rings.complete(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
        n
    }

    /// Fills `cache` up to [`CACHE_FILL`] frames from the free list.
    #[inline]
    fn top_up(&mut self, cache: &mut FrameCache<R::Desc>) {
        let want = CACHE_FILL.saturating_sub(cache.frames.len());
        let take = want.min(self.free.len());
        let from = self.free.len() - take;
        cache.frames.extend(self.free.drain(from..));
    }

    /// Takes back every frame of `frames`.
    fn take_back(&mut self, frames: &mut Vec<R::Desc>) {
        self.free.append(frames);
    }
}

/// A port's own free TX frames, used without the lock.
struct FrameCache<D> {
    frames: Vec<D>,
}

impl<D: Copy> FrameCache<D> {
    fn new() -> Self {
        Self {
            frames: Vec::with_capacity(CACHE_FILL + BATCH),
        }
    }

    /// Free frames this port can take now: its cache if that holds at
    /// least [`CACHE_FILL`] (no lock), otherwise, under the lock (once),
    /// the cache topped up plus what the shared list still has (`pop`
    /// refills from it one batch at a time; another port may take those
    /// meanwhile, so this is an estimate and `pop` may still fail).
    #[inline]
    fn available<R: UmemRings<Desc = D>>(&mut self, shared: &Mutex<QueueFrames<R>>) -> usize {
        if self.frames.len() >= CACHE_FILL {
            return self.frames.len();
        }
        let mut s = lock(shared);
        s.top_up(self);
        self.frames.len() + s.free.len()
    }

    /// One free frame; tops the cache up under the lock when it is empty.
    #[inline]
    fn pop<R: UmemRings<Desc = D>>(&mut self, shared: &Mutex<QueueFrames<R>>) -> Option<D> {
        if let Some(d) = self.frames.pop() {
            return Some(d);
        }
        lock(shared).top_up(self);
        self.frames.pop()
    }

    /// A frame taken by `pop` and not used.
    #[inline]
    fn push(&mut self, d: D) {
        self.frames.push(d);
    }

    /// The end of a batch: frames taken and not sent (`descs`, an aborted
    /// batch) and the cache's rest go back to the shared list, under the
    /// lock once (not at all when there is nothing to give back).
    #[inline]
    fn end_batch<R: UmemRings<Desc = D>>(
        &mut self,
        descs: &mut Vec<D>,
        shared: &Mutex<QueueFrames<R>>,
    ) {
        if descs.is_empty() && self.frames.is_empty() {
            return;
        }
        let mut f = lock(shared);
        f.take_back(descs);
        f.take_back(&mut self.frames);
    }
}

/// What the ports of one queue share (see the module documentation).
struct QueueShared {
    /// The fill and completion rings and the free list: the one lock.
    frames: Mutex<QueueFrames<KernelRings>>,
    /// The UMEM new sockets on the queue share (xsk-rs locks it itself).
    umem: Umem,
    /// The interface's index when the UMEM was bound: a different one
    /// means the interface went away and came back, and the state is stale.
    ifindex: u32,
}

impl QueueShared {
    #[inline]
    fn frames(&self) -> MutexGuard<'_, QueueFrames<KernelRings>> {
        lock(&self.frames)
    }
}

/// The index of interface `iface` in the calling thread's network
/// namespace, or 0 if it has none.
fn ifindex(iface: &std::ffi::CStr) -> u32 {
    // SAFETY: `iface` is a NUL-terminated string that lives across the
    // call; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(iface.as_ptr()) }
}

/// An error and its causes, as one line ("reason: cause").
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The checked settings of one socket.
struct Settings {
    ring: QueueSize,
    frame_size: FrameSize,
    ifname: Interface,
    /// The same name, for if_nametoindex.
    cname: std::ffi::CString,
}

impl Settings {
    fn new(cfg: &XskConfig) -> Result<Self, XskError> {
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| XskError::Config(e.to_string()))?;
        let frame_size =
            FrameSize::new(cfg.frame_size).map_err(|e| XskError::Config(e.to_string()))?;
        let ifname: Interface = cfg
            .iface
            .parse()
            .map_err(|e: std::ffi::NulError| bind_err(cfg, e.to_string()))?;
        let cname =
            std::ffi::CString::new(cfg.iface.as_str()).map_err(|e| bind_err(cfg, e.to_string()))?;
        Ok(Self {
            ring,
            frame_size,
            ifname,
            cname,
        })
    }

    /// Every socket, first or sharing, is configured here, with
    /// XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD: we load our own program, and
    /// xsk-rs requires the flag for a socket on an already bound
    /// (interface, queue) of a shared UMEM (see the SAFETY comments at
    /// `Socket::new`). The bind flags apply to the first socket only: the
    /// kernel takes a sharing socket's mode from the queue's.
    fn socket_config(&self, cfg: &XskConfig) -> SocketConfig {
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        if cfg.force_copy {
            bind |= BindFlags::XDP_COPY;
        }
        SocketConfig::builder()
            .rx_queue_size(self.ring)
            .tx_queue_size(self.ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build()
    }
}

fn bind_err(cfg: &XskConfig, detail: String) -> XskError {
    XskError::Bind {
        iface: cfg.iface.clone(),
        queue: cfg.queue,
        detail,
    }
}

/// Sets preferred busy polling on socket `fd` if `cfg` asks for it.
fn set_busy_poll(cfg: &XskConfig, fd: RawFd) -> Result<(), XskError> {
    if !cfg.busy_poll {
        return Ok(());
    }
    for (opt, val) in [
        (libc::SO_PREFER_BUSY_POLL, 1),
        (libc::SO_BUSY_POLL, BUSY_POLL_USECS),
        (libc::SO_BUSY_POLL_BUDGET, BATCH as i32),
    ] {
        set_sockopt(fd, opt, val)
            .map_err(|e| bind_err(cfg, format!("enabling busy polling: {e}")))?;
    }
    Ok(())
}

/// An AF_XDP socket bound to one queue, sharing the queue's UMEM with the
/// other ports on it (see the module documentation).
pub struct XskPort {
    /// The queue's shared state; the last port's drop frees it.
    shared: Arc<QueueShared>,
    /// A handle on the UMEM's memory: frame bytes without the lock.
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    /// Frames free for TX, this port's own.
    cache: FrameCache<FrameDesc>,
    /// Frames of the TX batch being filled, reused every batch.
    staged: Vec<FrameDesc>,
    ring_size: u32,
    max_frame_len: usize,
    queue: u32,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort")
            .field("queue", &self.queue)
            .field("cached_tx_frames", &self.cache.frames.len())
            .field("ports_on_queue", &Arc::strong_count(&self.shared))
            .finish_non_exhaustive()
    }
}

impl XskPort {
    /// Creates a UMEM of its own for `cfg.queue`, binds the socket
    /// (need_wakeup, our own XDP program stays: libxdp's is never loaded)
    /// and fills the fill ring. The port shares its UMEM with nobody: use
    /// an [`XskFactory`] for several ports on one queue.
    pub fn bind(cfg: &XskConfig) -> Result<Self, XskError> {
        Self::bind_first(cfg).map(|(port, _)| port)
    }

    /// The first socket on a queue: a fresh UMEM and its shared state.
    fn bind_first(cfg: &XskConfig) -> Result<(Self, Arc<QueueShared>), XskError> {
        let set = Settings::new(cfg)?;
        let frames = NonZeroU32::new(cfg.frames)
            .filter(|n| n.get() >= 2 * 64)
            .ok_or_else(|| {
                XskError::Config(format!(
                    "{} UMEM frames is too few (at least 128)",
                    cfg.frames
                ))
            })?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(set.frame_size)
            .fill_queue_size(set.ring)
            .comp_queue_size(set.ring)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let (umem, mut descs) =
            Umem::new(umem_cfg, frames, false).map_err(|e| XskError::Umem(describe(&e)))?;
        let ifindex = ifindex(&set.cname);
        // SAFETY: the UMEM is fresh, so this socket is the first on
        // (interface, queue); every socket carries
        // XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD (`Settings::socket_config`),
        // which xsk-rs requires of the later ones sharing it.
        let (tx, rx, fq_cq) =
            unsafe { xsk_rs::Socket::new(set.socket_config(cfg), &umem, &set.ifname, cfg.queue) }
                .map_err(|e| bind_err(cfg, describe(&e)))?;
        let (mut fill, comp) = fq_cq
            .ok_or_else(|| bind_err(cfg, "no fill/completion ring for a fresh UMEM".into()))?;
        set_busy_poll(cfg, rx.fd().as_raw_fd())?;
        let to_fill = (descs.len() / 2).min(cfg.ring_size as usize);
        let mut free = Vec::with_capacity(descs.len());
        free.extend(descs.drain(to_fill..));
        // SAFETY: these frames are owned by nobody else yet; the ring has
        // `ring_size` >= `to_fill` free slots.
        let n = unsafe { fill.produce(&descs) };
        if n != descs.len() {
            return Err(bind_err(
                cfg,
                format!("fill ring accepted {n} of {} frames", descs.len()),
            ));
        }
        let shared = Arc::new(QueueShared {
            frames: Mutex::new(QueueFrames::new(
                KernelRings { fill, comp },
                free,
                vec![FrameDesc::default(); cfg.ring_size as usize],
            )),
            umem,
            ifindex,
        });
        let port = Self::with(cfg, shared.clone(), tx, rx);
        Ok((port, shared))
    }

    /// A further socket on the queue of `shared`, sharing its UMEM.
    fn bind_shared(cfg: &XskConfig, shared: Arc<QueueShared>) -> Result<Self, XskError> {
        let set = Settings::new(cfg)?;
        // SAFETY: the socket carries XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD
        // (`Settings::socket_config`), as xsk-rs requires for a second
        // socket on a bound (interface, queue) of a shared UMEM.
        let (tx, rx, fq_cq) = unsafe {
            xsk_rs::Socket::new(set.socket_config(cfg), &shared.umem, &set.ifname, cfg.queue)
        }
        .map_err(|e| bind_err(cfg, describe(&e)))?;
        if fq_cq.is_some() {
            // libxdp made a new context: the UMEM is not bound to this
            // device and queue (the interface changed under us). The rings
            // and the socket are deleted on drop.
            return Err(bind_err(
                cfg,
                "the queue's shared UMEM is bound to another device; retry".into(),
            ));
        }
        set_busy_poll(cfg, rx.fd().as_raw_fd())?;
        Ok(Self::with(cfg, shared, tx, rx))
    }

    fn with(cfg: &XskConfig, shared: Arc<QueueShared>, tx: TxQueue, rx: RxQueue) -> Self {
        Self {
            umem: shared.umem.clone(),
            shared,
            rx,
            tx,
            cache: FrameCache::new(),
            staged: Vec::with_capacity(cfg.ring_size as usize),
            ring_size: cfg.ring_size,
            max_frame_len: cfg.max_frame_len(),
            queue: cfg.queue,
        }
    }

    /// The NIC queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether `self` and `other` share one UMEM (are ports on one queue
    /// opened through one factory).
    pub fn shares_umem_with(&self, other: &XskPort) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Hands `n` filled frames to the kernel and wakes it when it asks to
    /// be woken (copy mode always does). Returns the number of wake-ups, or
    /// the error if the socket is dead (its interface is gone: ENXIO or
    /// ENETDOWN), which epoll never reports for AF_XDP.
    fn tx_submit(&mut self, descs: &[FrameDesc]) -> io::Result<u64> {
        // SAFETY: the frames were filled by us and are in no other ring;
        // `TxBatch` never holds more than `tx_capacity` frames.
        let n = unsafe { self.tx.produce(descs) };
        debug_assert_eq!(n, descs.len());
        if n != descs.len() {
            for d in descs {
                self.cache.push(*d);
            }
            return Ok(0);
        }
        let mut wakeups = 0;
        // Copy mode sends at most 32 frames per sendto: wake until the
        // kernel has taken everything (bounded by the ring size).
        for _ in 0..=(descs.len() / 32 + 1) {
            if !self.tx.needs_wakeup() {
                break;
            }
            wakeups += 1;
            match self.tx.wakeup() {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                    ) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENXIO | libc::ENETDOWN | libc::EBADF)
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(queue = self.queue, "XSK TX wakeup: {e}");
                    break;
                }
            }
            if self.tx.nb_free(self.ring_size) == self.ring_size {
                break;
            }
        }
        Ok(wakeups)
    }

    /// On close: wakes the kernel until it took every frame of the TX ring
    /// (they complete to the queue's completion ring), bounded in count
    /// and time; gives up on a dead socket.
    fn flush_tx(&mut self) {
        for _ in 0..(self.ring_size / 32 + 16) {
            if self.tx.nb_free(self.ring_size) == self.ring_size {
                return;
            }
            if self.tx.needs_wakeup() {
                if let Err(e) = self.tx.wakeup() {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENXIO | libc::ENETDOWN | libc::EBADF)
                    ) {
                        return;
                    }
                }
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

impl Drop for XskPort {
    /// Gives back what the port holds (see the module documentation): the
    /// TX ring flushed, the frames waiting in the RX ring to the fill ring,
    /// the cached and staged frames to the free list.
    fn drop(&mut self) {
        self.flush_tx();
        let mut waiting = vec![FrameDesc::default(); self.ring_size as usize];
        // SAFETY: descriptors from our own RX ring, frames of the queue's
        // UMEM; nobody reads them after this.
        let n = unsafe { self.rx.consume(&mut waiting) };
        let mut frames = self.shared.frames();
        frames.release_rx(&waiting[..n]);
        frames.take_back(&mut self.staged);
        frames.take_back(&mut self.cache.frames);
    }
}

impl AsRawFd for XskPort {
    fn as_raw_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

impl AsFd for XskPort {
    /// The socket's fd (for epoll and XSKMAP registration).
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is the socket's, owned by `self.rx` (xsk-rs closes
        // it when the socket is dropped), so it stays open for as long as
        // `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }
}

impl FramePort for XskPort {
    type Desc = FrameDesc;

    #[inline]
    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    #[inline]
    fn rx_consume(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: descriptors come from our own RX ring and describe frames
        // of the queue's UMEM.
        unsafe { self.rx.consume(descs) }
    }

    #[inline]
    fn rx_data(&self, desc: &FrameDesc) -> &[u8] {
        // SAFETY: `desc` came from our RX ring (so it is a frame of this
        // UMEM) and is not in the fill ring until `rx_release` gives it back.
        unsafe { self.umem.data(desc) }.contents()
    }

    /// Back to the queue's fill ring, under the queue's lock (once).
    #[inline]
    fn rx_release(&mut self, descs: &[FrameDesc]) {
        if descs.is_empty() {
            return;
        }
        self.shared.frames().release_rx(descs);
    }

    /// Moves the queue's finished TX frames (this port's and the other
    /// guests') from the completion ring to the free list and tops this
    /// port's cache up, under the queue's lock (once). Returns the frames
    /// reaped.
    #[inline]
    fn reap_completions(&mut self) -> usize {
        self.shared.frames().reap()
    }

    /// Free frames (the cache, or under the lock when it is low the cache
    /// topped up plus the queue's free list) and free TX ring slots,
    /// whichever is fewer.
    #[inline]
    fn tx_capacity(&mut self) -> usize {
        self.cache
            .available(&self.shared.frames)
            .min(self.tx.nb_free(self.ring_size) as usize)
    }

    #[inline]
    fn tx_push<E>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Push<E> {
        if len > self.max_frame_len {
            return Push::TooLong;
        }
        let Some(mut desc) = self.cache.pop(&self.shared.frames) else {
            return Push::NoFrame;
        };
        // SAFETY: the frame came from the free list: no ring holds it, no
        // other port has it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        data.cursor().set_pos(len);
        let buf = data.contents_mut();
        if buf.len() != len {
            self.cache.push(desc);
            return Push::TooLong;
        }
        match fill(buf) {
            Ok(()) => {
                self.staged.push(desc);
                Push::Staged
            }
            Err(e) => {
                self.cache.push(desc);
                Push::Failed(e)
            }
        }
    }

    #[inline]
    fn tx_staged(&self) -> usize {
        self.staged.len()
    }

    fn tx_commit(&mut self) -> io::Result<u64> {
        if self.staged.is_empty() {
            return Ok(0);
        }
        let mut staged = std::mem::take(&mut self.staged);
        let wakeups = self.tx_submit(&staged);
        staged.clear();
        self.staged = staged;
        wakeups
    }

    #[inline]
    /// The end of every batch (a `TxBatch` calls it when dropped, after a
    /// commit too): uncommitted frames and the cache's rest go back to the
    /// queue's free list.
    fn tx_abort(&mut self) {
        self.cache.end_batch(&mut self.staged, &self.shared.frames);
    }

    /// The kernel's XDP_STATISTICS for this socket.
    fn stats(&self) -> io::Result<PortStats> {
        let mut s = PortStats::default();
        let mut len = std::mem::size_of::<PortStats>() as libc::socklen_t;
        // SAFETY: `s` is a writable, repr(C) xdp_statistics of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut PortStats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The socket's pending error (SO_ERROR), e.g. ENETDOWN once its
    /// interface is gone.
    fn socket_error(&self) -> io::Error {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` is a writable int of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return io::Error::last_os_error();
        }
        if err == 0 {
            return io::Error::other("the socket signalled an error or hang-up");
        }
        io::Error::from_raw_os_error(err)
    }
}

/// Binds [`XskPort`]s of one interface with one set of settings: the
/// [`PortFactory`] the socket pool replaces sockets with, and the one that
/// gives every guest its own socket on a queue.
///
/// Clones share the per-queue state: every port opened through this
/// factory or a clone of it on one queue shares that queue's UMEM (see the
/// module documentation). Ports of two factories made separately do not:
/// the second one's bind fails with EBUSY while the first one's queue is
/// bound.
#[derive(Clone)]
pub struct XskFactory {
    template: XskConfig,
    /// Per queue, the shared state while a port on it lives.
    queues: Arc<Mutex<HashMap<u32, Weak<QueueShared>>>>,
}

impl std::fmt::Debug for XskFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskFactory")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl XskFactory {
    /// Sockets like `template` (interface, frames, rings, copy mode, busy
    /// polling); its `queue` is ignored, [`PortFactory::open`] names one.
    pub fn new(template: XskConfig) -> Self {
        Self {
            template,
            queues: Arc::default(),
        }
    }

    /// Sockets on `iface` with [`XskConfig::new`]'s defaults, and preferred
    /// busy polling if `busy_poll` (what the daemon uses).
    pub fn for_iface(iface: impl Into<String>, busy_poll: bool) -> Self {
        let mut template = XskConfig::new(iface, 0);
        template.busy_poll = busy_poll;
        Self::new(template)
    }

    /// The configuration a socket on `queue` is bound with.
    pub fn config(&self, queue: u32) -> XskConfig {
        XskConfig {
            queue,
            ..self.template.clone()
        }
    }

    /// How many ports opened through this factory (or its clones) live on
    /// `queue`, sharing its UMEM.
    pub fn ports_on(&self, queue: u32) -> usize {
        lock(&self.queues)
            .get(&queue)
            .map_or(0, |w| w.strong_count())
    }
}

impl PortFactory for XskFactory {
    type Port = XskPort;
    type Error = XskError;

    /// A new socket on `queue`: sharing the queue's UMEM if a port of this
    /// factory lives there (and the interface is the one it was bound
    /// to), otherwise on a fresh UMEM. The factory's lock is held across
    /// the bind, so two first opens of a queue cannot race.
    fn open(&self, queue: u32) -> Result<XskPort, XskError> {
        let cfg = self.config(queue);
        let mut queues = lock(&self.queues);
        queues.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = queues.get(&queue).and_then(Weak::upgrade) {
            let set = Settings::new(&cfg)?;
            if ifindex(&set.cname) == shared.ifindex {
                return XskPort::bind_shared(&cfg, shared);
            }
            // The interface went away (and maybe came back): the old state
            // stays with its ports; this one starts afresh.
            tracing::debug!(
                iface = cfg.iface,
                queue,
                "the interface changed: a new UMEM for the queue"
            );
        }
        let (port, shared) = XskPort::bind_first(&cfg)?;
        queues.insert(queue, Arc::downgrade(&shared));
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Fill and completion rings as plain queues.
    struct FakeRings {
        fill: VecDeque<u32>,
        fill_cap: usize,
        comp: VecDeque<u32>,
    }

    impl UmemRings for FakeRings {
        type Desc = u32;
        fn fill_room(&mut self, want: usize) -> usize {
            (self.fill_cap - self.fill.len()).min(want)
        }
        unsafe fn fill(&mut self, descs: &[u32]) -> usize {
            assert!(
                descs.len() <= self.fill_cap - self.fill.len(),
                "all or nothing"
            );
            self.fill.extend(descs);
            descs.len()
        }
        unsafe fn complete(&mut self, out: &mut [u32]) -> usize {
            let n = out.len().min(self.comp.len());
            for (o, d) in out.iter_mut().zip(self.comp.drain(..n)) {
                *o = d;
            }
            n
        }
    }

    /// One simulated port: its own rings and what its worker holds.
    #[derive(Default)]
    struct SimPort {
        cache: Option<FrameCache<u32>>,
        rx: VecDeque<u32>,
        tx: VecDeque<u32>,
        staged: Vec<u32>,
    }

    const FRAMES: u32 = 300;
    const RING: usize = 64;

    fn queue() -> Mutex<QueueFrames<FakeRings>> {
        // As `bind_first`: half (at most a ring) to the fill ring.
        let to_fill = (FRAMES as usize / 2).min(RING) as u32;
        Mutex::new(QueueFrames::new(
            FakeRings {
                fill: (0..to_fill).collect(),
                fill_cap: RING,
                comp: VecDeque::new(),
            },
            (to_fill..FRAMES).collect(),
            vec![0; RING],
        ))
    }

    /// Every frame is in exactly one place.
    fn check(q: &Mutex<QueueFrames<FakeRings>>, ports: &[SimPort], step: usize) {
        let f = lock(q);
        let mut all: Vec<u32> = f
            .rings
            .fill
            .iter()
            .chain(&f.rings.comp)
            .chain(&f.free)
            .copied()
            .collect();
        for p in ports {
            all.extend(p.rx.iter().chain(&p.tx).chain(&p.staged));
            all.extend(p.cache.iter().flat_map(|c| c.frames.iter()));
        }
        all.sort_unstable();
        assert_eq!(all, (0..FRAMES).collect::<Vec<_>>(), "step {step}");
    }

    /// What `XskPort::drop` does, with the kernel sending the TX ring.
    fn close(q: &Mutex<QueueFrames<FakeRings>>, p: &mut SimPort) {
        let Some(mut cache) = p.cache.take() else {
            return;
        };
        let mut f = lock(q);
        f.rings.comp.extend(p.tx.drain(..));
        let waiting: Vec<u32> = p.rx.drain(..).collect();
        f.release_rx(&waiting);
        f.take_back(&mut p.staged);
        f.take_back(&mut cache.frames);
    }

    /// Every socket, first or sharing, keeps libxdp from loading its own
    /// program (xsk-rs's condition for sharing a UMEM safely).
    #[test]
    fn every_socket_inhibits_libxdp_program_load() {
        for force_copy in [false, true] {
            let mut cfg = XskConfig::new("eth0", 3);
            cfg.force_copy = force_copy;
            let set = Settings::new(&cfg).unwrap();
            let sc = set.socket_config(&cfg);
            assert!(sc
                .libxdp_flags()
                .contains(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD));
            assert!(sc.bind_flags().contains(BindFlags::XDP_USE_NEED_WAKEUP));
            assert_eq!(sc.bind_flags().contains(BindFlags::XDP_COPY), force_copy);
        }
    }

    /// Ports open, receive, send, abort, reap and close in random order,
    /// against a simulated kernel: no frame is ever lost or duplicated,
    /// and the fill ring is restocked by whichever port releases.
    #[test]
    fn frames_are_conserved_across_ports_opening_and_closing() {
        let q = queue();
        let mut ports: Vec<SimPort> = (0..4).map(|_| SimPort::default()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut delivered, mut sent) = (0usize, 0usize);
        for step in 0..20_000 {
            let i = rnd(ports.len());
            let op = rnd(8);
            let p = &mut ports[i];
            match op {
                0 if p.cache.is_none() => p.cache = Some(FrameCache::new()),
                1 if rnd(8) == 0 => close(&q, p),
                2 if p.cache.is_some() => {
                    // The kernel delivers to this port's socket.
                    let mut f = lock(&q);
                    for _ in 0..rnd(80) {
                        if p.rx.len() >= RING {
                            break;
                        }
                        let Some(d) = f.rings.fill.pop_front() else {
                            break;
                        };
                        p.rx.push_back(d);
                        delivered += 1;
                    }
                }
                3 => {
                    // The worker consumes a batch and releases it.
                    let n = p.rx.len().min(BATCH);
                    let batch: Vec<u32> = p.rx.drain(..n).collect();
                    lock(&q).release_rx(&batch);
                }
                4 => {
                    if let Some(c) = p.cache.as_mut() {
                        let cap = c.available(&q).min(RING - p.tx.len());
                        let want = rnd(cap + 2);
                        for _ in 0..want {
                            match c.pop(&q) {
                                Some(d) => p.staged.push(d),
                                None => break,
                            }
                        }
                        if rnd(3) != 0 && p.staged.len() <= RING - p.tx.len() {
                            p.tx.extend(p.staged.drain(..));
                        }
                        c.end_batch(&mut p.staged, &q);
                        assert!(c.frames.is_empty(), "no frames kept between batches");
                    }
                }
                5 => {
                    // The kernel sends and completes.
                    let n = rnd(p.tx.len() + 1);
                    sent += n;
                    lock(&q).rings.comp.extend(p.tx.drain(..n));
                }
                6 => {
                    lock(&q).reap();
                }
                _ => {}
            }
            if let Some(c) = &ports[i].cache {
                assert!(
                    c.frames.is_empty(),
                    "step {step}: no frames kept between batches"
                );
            }
            check(&q, &ports, step);
        }
        assert!(delivered > 4_000 && sent > 4_000, "{delivered} {sent}");
        for p in &mut ports {
            close(&q, p);
        }
        check(&q, &ports, usize::MAX);
        let f = lock(&q);
        assert_eq!(
            f.rings.fill.len(),
            RING,
            "released RX frames restocked the fill ring"
        );
    }

    /// Frames one port sent are reaped by another and serve it; a closed
    /// port's cache goes back to the queue.
    #[test]
    fn completions_serve_every_port_and_caches_return_on_close() {
        let q = queue();
        let free0 = lock(&q).free.len();
        let mut a = SimPort {
            cache: Some(FrameCache::new()),
            ..SimPort::default()
        };
        let mut b = SimPort {
            cache: Some(FrameCache::new()),
            ..SimPort::default()
        };
        let ca = a.cache.as_mut().unwrap();
        assert_eq!(ca.available(&q), free0, "the cache and the shared list");
        assert_eq!(ca.frames.len(), CACHE_FILL, "topped up to a batch");
        assert_eq!(ca.available(&q), CACHE_FILL, "no lock while full");
        while let Some(d) = ca.frames.pop() {
            a.tx.push_back(d);
        }
        assert_eq!(lock(&q).free.len(), free0 - CACHE_FILL);
        lock(&q).rings.comp.extend(a.tx.drain(..));
        // B reaps A's completions: they go to the shared list, which B's
        // next batch draws from.
        let cb = b.cache.as_mut().unwrap();
        assert_eq!(lock(&q).reap(), CACHE_FILL);
        assert_eq!(lock(&q).free.len(), free0);
        assert_eq!(cb.available(&q), free0, "the cache and the shared list");
        assert_eq!(lock(&q).free.len(), free0 - CACHE_FILL);
        // The end of a batch gives back what it took and did not send,
        // and the cache's rest: an idle port holds no frame.
        let mut unsent: Vec<u32> = (0..BATCH).map(|_| lock(&q).free.pop().unwrap()).collect();
        cb.end_batch(&mut unsent, &q);
        assert!(cb.frames.is_empty() && unsent.is_empty());
        assert_eq!(lock(&q).free.len(), free0, "nothing held between batches");
        close(&q, &mut a);
        close(&q, &mut b);
        assert_eq!(lock(&q).free.len(), free0, "every frame back");
        check(&q, &[a, b], 0);
        // A batch larger than the cache refills it once per batch.
        let mut c = FrameCache::new();
        let n = c.available(&q);
        assert_eq!(n, free0);
        let mut taken: Vec<u32> = (0..n).map_while(|_| c.pop(&q)).collect();
        assert_eq!(taken.len(), n, "every free frame, through the cache");
        assert_eq!(c.pop(&q), None);
        lock(&q).take_back(&mut taken);
        check(&q, &[], 1);
    }
}
