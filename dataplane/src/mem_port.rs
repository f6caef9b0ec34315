//! An in-memory [`FramePort`]: the test and benchmark double of an AF_XDP
//! socket, and the in-memory NIC it sits on. No root, no NIC.
//!
//! A [`MemPort`] owns one byte arena cut into frames the way a UMEM is
//! (`frame_size` bytes each, data after [`XDP_PACKET_HEADROOM`]), split
//! once into RX frames and TX frames, and an eventfd as its pollable fd.
//! Frames reach its RX ring in two ways:
//!
//! - Single-threaded, by the port's owner (benchmarks, unit tests that call
//!   the queue pair themselves): [`MemPort::push_rx`] copies a frame into a
//!   free RX frame and queues it; [`MemPort::rx_replay`] re-queues the
//!   frames released so far, same bytes, no copy. Nobody needs waking, so
//!   these leave the eventfd alone and cost no syscall.
//! - From any thread, through the wire: a [`MemWire`] is an in-memory NIC
//!   whose [`MemQueue`]s outlive the ports opened on them
//!   ([`MemPort::open`], [`MemFactory`]), so a replaced port is on the same
//!   wire. A queue takes one port per guest, as a NIC queue takes one
//!   AF_XDP socket per guest ([`MemPort::open_for`],
//!   [`MemFactory::for_guest`]; the plain ones open as guest
//!   [`DEFAULT_GUEST`]). [`MemQueue::inject_to`] hands a frame to one
//!   guest's port, as the XDP program's redirect to that guest's XSKMAP
//!   slot does ([`MemQueue::inject`]: to guest [`DEFAULT_GUEST`]); it
//!   waits on the wire until the port's `rx_consume` copies it into an RX
//!   frame. The port's eventfd is readable exactly while such frames wait,
//!   so it wakes the worker's (level-triggered) epoll as a socket would.
//!
//! TX is the same for both: the queue pair reserves, fills and commits
//! frames through the same [`crate::port::TxBatch`] as on an `XskPort`. A
//! commit hands the frames to the "wire", which completes them at once:
//! they wait on the completion list (readable with [`MemPort::tx_completed`])
//! until the next `reap_completions` returns them to the free list. A port
//! opened on a wire queue also leaves a copy of every committed frame
//! there, with its guest: the wire is shared, so [`MemQueue::take_sent`] /
//! [`MemQueue::wait_sent`] see every guest's frames, and
//! [`MemQueue::take_sent_by`] tells which guest sent each.
//!
//! Every port keeps its own arena, also when several guests' ports share
//! a queue: sharing the queue's UMEM (fill ring, completion ring, free
//! frames) is an `XskPort` detail ([`crate::xsk`]) that the queue pair
//! never sees, so the double leaves it out.
//!
//! Failures, as the kernel shows them: while a guest's port is open on a
//! queue, opening another one there for the same guest fails with EBUSY
//! (as binding a second UMEM's socket to a bound NIC queue does), and
//! [`MemQueue::refuse_opens`] makes the next opens (of any guest) fail the
//! same way, as while the kernel frees a closed socket's queue.
//! [`MemQueue::vanish`] plays an interface that went away: every port's
//! next TX commit fails with ENXIO, `socket_error` says ENXIO, opens fail
//! with ENODEV and injected frames find no port.
//!
//! Ownership: a `MemPort` belongs to one queue-pair worker and does not lock
//! on its own frames. A port on a wire shares one small, named piece of
//! state with the wire's users: its queue's [`MemQueue`] (one mutex over
//! the attached ports with the frames waiting for each, the captured TX
//! frames and the stats; and per port an atomic "frames waiting" flag that
//! `rx_consume` reads without the lock). The eventfd's state changes only
//! under that mutex, so it cannot disagree with the waiting frames: a
//! producer signals when the first frame for the port arrives, the
//! consumer clears it when it takes the last one.

use crate::port::{FramePort, PortFactory, PortStats, Push, XDP_PACKET_HEADROOM};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Frames a wire queue holds for its port before it drops more (what a
/// NIC's RX ring would hold).
pub const WIRE_QUEUE_FRAMES: usize = 4096;
/// Transmitted frames a wire queue keeps for the test before it drops the
/// oldest.
pub const WIRE_SENT_FRAMES: usize = 65536;

/// One frame of a [`MemPort`]: its index in the arena and its length.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemDesc {
    frame: u32,
    len: u32,
}

/// What a [`MemPort`] has seen, for assertions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemPortCounts {
    /// Frames handed to the queue pair by `rx_consume`.
    pub rx_consumed: u64,
    /// Frames given back by `rx_release`.
    pub rx_released: u64,
    /// Frames committed for TX.
    pub tx_frames: u64,
    /// Bytes committed for TX.
    pub tx_bytes: u64,
    /// Non-empty TX commits.
    pub tx_commits: u64,
    /// Frames returned to the free list by `reap_completions`.
    pub tx_reaped: u64,
}

/// What a [`MemQueue`] has seen, for assertions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemQueueStats {
    /// Injected frames queued for a port (of their guest).
    pub delivered: u64,
    /// Injected frames that found no port (none open for their guest, or
    /// the interface vanished); on a real NIC they would fail open to the
    /// host.
    pub unclaimed: u64,
    /// Injected frames dropped: empty, longer than the port's frames, or
    /// the port's backlog full.
    pub dropped: u64,
    /// Frames ports (of every guest) transmitted on this queue.
    pub sent: u64,
    /// Transmitted frames dropped from the capture because nobody took
    /// them (more than [`WIRE_SENT_FRAMES`]).
    pub sent_overflow: u64,
    /// Ports opened on this queue (of every guest).
    pub opened: u64,
    /// Opens refused (queue busy or interface gone).
    pub refused: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guest whose port [`MemQueue::inject`], [`MemQueue::attached`] and
/// the plain [`MemFactory`] mean.
pub const DEFAULT_GUEST: u32 = 1;

/// A port open on a wire queue, as the queue sees it.
struct Attached {
    id: u64,
    guest: u32,
    wake: Arc<EventFd>,
    max_frame_len: usize,
    /// Injected frames waiting for the port's `rx_consume`.
    waiting: VecDeque<Vec<u8>>,
    /// `waiting` is not empty. Written under the queue's mutex; the port
    /// reads it without the mutex to skip the lock when nothing waits.
    flag: Arc<AtomicBool>,
}

impl Attached {
    /// Drops the waiting frames (counted by the caller) and clears the fd.
    fn clear(&mut self) -> u64 {
        let n = self.waiting.len() as u64;
        self.waiting.clear();
        self.flag.store(false, Ordering::Release);
        let _ = self.wake.read();
        n
    }
}

/// A wire queue's state behind its mutex.
#[derive(Default)]
struct WireState {
    /// The ports open on the queue, at most one per guest.
    ports: Vec<Attached>,
    /// Frames transmitted with their sender's guest, oldest first, until
    /// the test takes them.
    sent: VecDeque<(u32, Vec<u8>)>,
    refuse_opens: u32,
    next_id: u64,
    stats: MemQueueStats,
}

impl WireState {
    fn port_of(&self, guest: u32) -> Option<&Attached> {
        self.ports.iter().find(|p| p.guest == guest)
    }
}

/// One queue of the in-memory NIC.
struct WireQueue {
    index: u32,
    state: Mutex<WireState>,
    /// The interface vanished.
    gone: AtomicBool,
    /// Signalled when frames were transmitted.
    sent_cv: Condvar,
}

/// An in-memory NIC: a fixed set of [`MemQueue`]s, which live as long as
/// the wire while ports come and go on them. Clones share the queues.
#[derive(Debug, Clone)]
pub struct MemWire {
    queues: Arc<[MemQueue]>,
}

impl MemWire {
    /// A NIC with `queues` queues and no port open.
    pub fn new(queues: u32) -> Self {
        Self {
            queues: (0..queues).map(MemQueue::new).collect(),
        }
    }

    /// Queue `q`, if the NIC has it.
    pub fn queue(&self, q: u32) -> Option<&MemQueue> {
        self.queues.get(q as usize)
    }

    /// How many queues the NIC has.
    pub fn queues(&self) -> u32 {
        self.queues.len() as u32
    }
}

/// One queue of a [`MemWire`]: the test's side of the wire (inject,
/// capture, make it fail) and the attachment point of at most one
/// [`MemPort`] per guest at a time. Clones are handles on the same queue.
#[derive(Clone)]
pub struct MemQueue {
    inner: Arc<WireQueue>,
}

impl std::fmt::Debug for MemQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemQueue")
            .field("index", &self.inner.index)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MemQueue {
    fn new(index: u32) -> Self {
        Self {
            inner: Arc::new(WireQueue {
                index,
                state: Mutex::new(WireState::default()),
                gone: AtomicBool::new(false),
                sent_cv: Condvar::new(),
            }),
        }
    }

    /// The queue's index on its wire.
    pub fn index(&self) -> u32 {
        self.inner.index
    }

    /// The wire delivers `frame` to guest [`DEFAULT_GUEST`]'s port on the
    /// queue: [`MemQueue::inject_to`] that guest.
    pub fn inject(&self, frame: &[u8]) -> bool {
        self.inject_to(DEFAULT_GUEST, frame)
    }

    /// The wire delivers `frame` to `guest`'s port on the queue (what the
    /// XDP program's redirect to that guest's XSKMAP slot does): it waits
    /// for the port's `rx_consume`, and the port's fd is readable until
    /// then. False (counted) when the guest has no port open here
    /// (`unclaimed`), the interface vanished (`unclaimed`), the frame is
    /// empty or longer than the port's frames, or [`WIRE_QUEUE_FRAMES`]
    /// frames wait for that port already (`dropped`).
    pub fn inject_to(&self, guest: u32, frame: &[u8]) -> bool {
        let q = &self.inner;
        let mut st = lock(&q.state);
        let WireState { ports, stats, .. } = &mut *st;
        let Some(p) = ports.iter_mut().find(|p| p.guest == guest) else {
            stats.unclaimed += 1;
            return false;
        };
        if frame.is_empty() || frame.len() > p.max_frame_len || p.waiting.len() >= WIRE_QUEUE_FRAMES
        {
            stats.dropped += 1;
            return false;
        }
        if p.waiting.is_empty() {
            // First waiting frame: the fd becomes readable (under the
            // lock, so the consumer cannot clear it in between).
            p.flag.store(true, Ordering::Release);
            let _ = p.wake.write(1);
        }
        p.waiting.push_back(frame.to_vec());
        stats.delivered += 1;
        true
    }

    /// Takes every frame transmitted on this queue so far, by any guest,
    /// oldest first (the wire is shared).
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        lock(&self.inner.state)
            .sent
            .drain(..)
            .map(|(_, f)| f)
            .collect()
    }

    /// Like [`MemQueue::take_sent`], with the guest whose port sent each
    /// frame.
    pub fn take_sent_by(&self) -> Vec<(u32, Vec<u8>)> {
        lock(&self.inner.state).sent.drain(..).collect()
    }

    /// Waits up to `timeout` until at least `n` transmitted frames (of any
    /// guest) are there, then takes them all (fewer if the time ran out).
    pub fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut st = lock(&self.inner.state);
        while st.sent.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .inner
                .sent_cv
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.sent.drain(..).map(|(_, f)| f).collect()
    }

    /// The next `n` opens on this queue (of any guest) fail with EBUSY, as
    /// while the kernel still frees the queue from a closed socket.
    pub fn refuse_opens(&self, n: u32) {
        lock(&self.inner.state).refuse_opens = n;
    }

    /// The interface goes away: every open port's next TX commit fails
    /// with ENXIO (its socket error says so too), new opens fail with
    /// ENODEV, waiting and later injected frames find no port.
    pub fn vanish(&self) {
        let q = &self.inner;
        let mut st = lock(&q.state);
        q.gone.store(true, Ordering::Release);
        let mut lost = 0;
        for mut p in std::mem::take(&mut st.ports) {
            lost += p.clear();
        }
        st.stats.unclaimed += lost;
    }

    /// Whether [`MemQueue::vanish`] was called.
    pub fn vanished(&self) -> bool {
        self.inner.gone.load(Ordering::Acquire)
    }

    /// The id of guest [`DEFAULT_GUEST`]'s port open on this queue (ids
    /// count up from 1 per queue, over all guests), if one is.
    pub fn attached(&self) -> Option<u64> {
        self.attached_of(DEFAULT_GUEST)
    }

    /// The id of `guest`'s port open on this queue, if one is.
    pub fn attached_of(&self, guest: u32) -> Option<u64> {
        lock(&self.inner.state).port_of(guest).map(|p| p.id)
    }

    /// The fd of guest [`DEFAULT_GUEST`]'s port open on this queue, if
    /// one is.
    pub fn attached_fd(&self) -> Option<RawFd> {
        self.attached_fd_of(DEFAULT_GUEST)
    }

    /// The fd of `guest`'s port open on this queue, if one is.
    pub fn attached_fd_of(&self, guest: u32) -> Option<RawFd> {
        lock(&self.inner.state)
            .port_of(guest)
            .map(|p| p.wake.as_raw_fd())
    }

    /// The guests with a port open on this queue, in the order they
    /// opened.
    pub fn attached_guests(&self) -> Vec<u32> {
        lock(&self.inner.state)
            .ports
            .iter()
            .map(|p| p.guest)
            .collect()
    }

    /// Injected frames waiting for guest [`DEFAULT_GUEST`]'s port.
    pub fn waiting(&self) -> usize {
        self.waiting_of(DEFAULT_GUEST)
    }

    /// Injected frames waiting for `guest`'s port's `rx_consume`.
    pub fn waiting_of(&self, guest: u32) -> usize {
        lock(&self.inner.state)
            .port_of(guest)
            .map_or(0, |p| p.waiting.len())
    }

    /// What the queue has seen so far.
    pub fn stats(&self) -> MemQueueStats {
        lock(&self.inner.state).stats
    }
}

/// A port's place on the wire.
struct Link {
    queue: MemQueue,
    id: u64,
    guest: u32,
    /// Frames wait for this port on the wire (`Attached::flag`).
    waiting: Arc<AtomicBool>,
}

/// An in-memory port (see the module documentation).
pub struct MemPort {
    arena: Box<[u8]>,
    frame_size: usize,
    max_frame_len: usize,
    /// Frames the owner queued (`push_rx`, `rx_replay`), waiting for
    /// `rx_consume`; taken before the wire's.
    rx_ring: VecDeque<MemDesc>,
    /// Free RX frames; released ones keep their length (for `rx_replay`),
    /// fresh ones have length 0.
    fill: Vec<MemDesc>,
    /// Free TX frames.
    tx_free: Vec<u32>,
    /// Frames of the TX batch being filled.
    staged: Vec<MemDesc>,
    /// Committed frames the next `reap_completions` frees, in order.
    completed: Vec<MemDesc>,
    counts: MemPortCounts,
    /// The fd the worker polls; readable while wire frames wait.
    wake: Arc<EventFd>,
    /// The wire queue this port is open on, if any.
    link: Option<Link>,
}

impl std::fmt::Debug for MemPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPort")
            .field("queue", &self.link.as_ref().map(|l| l.queue.index()))
            .field("rx_queued", &self.rx_ring.len())
            .field("tx_free", &self.tx_free.len())
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl MemPort {
    /// A port of `rx_frames` RX frames and `tx_frames` TX frames of
    /// `frame_size` bytes each (2048 or 4096, like a UMEM), on no wire:
    /// its owner feeds it with `push_rx`.
    ///
    /// # Errors
    /// If the eventfd cannot be created.
    ///
    /// # Panics
    /// If `frame_size` is not larger than the headroom, or the frame count
    /// does not fit a `u32`.
    pub fn new(rx_frames: usize, tx_frames: usize, frame_size: usize) -> io::Result<Self> {
        assert!(
            frame_size > XDP_PACKET_HEADROOM,
            "frame size {frame_size} leaves no room after the headroom"
        );
        let total = rx_frames + tx_frames;
        assert!(u32::try_from(total).is_ok(), "too many frames");
        let fill = (0..rx_frames as u32)
            .rev()
            .map(|frame| MemDesc { frame, len: 0 })
            .collect();
        let tx_free = (rx_frames as u32..total as u32).rev().collect();
        Ok(Self {
            arena: vec![0u8; total * frame_size].into_boxed_slice(),
            frame_size,
            max_frame_len: frame_size - XDP_PACKET_HEADROOM,
            rx_ring: VecDeque::with_capacity(rx_frames),
            fill,
            tx_free,
            staged: Vec::with_capacity(tx_frames),
            completed: Vec::with_capacity(tx_frames),
            counts: MemPortCounts::default(),
            wake: Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?),
            link: None,
        })
    }

    /// Opens a port like [`MemPort::new`] on wire queue `queue` as guest
    /// [`DEFAULT_GUEST`]: [`MemPort::open_for`] that guest.
    pub fn open(
        queue: &MemQueue,
        rx_frames: usize,
        tx_frames: usize,
        frame_size: usize,
    ) -> io::Result<Self> {
        Self::open_for(queue, DEFAULT_GUEST, rx_frames, tx_frames, frame_size)
    }

    /// Opens a port like [`MemPort::new`] on wire queue `queue` as guest
    /// `guest` (any number names a guest; the daemon's guest ids start at
    /// 1): frames injected there for that guest reach it, frames it sends
    /// are captured there. The port keeps its own arena: ports of several
    /// guests on one queue share no frames (sharing the queue's UMEM is an
    /// `XskPort` detail).
    ///
    /// # Errors
    /// EBUSY while `guest` has a port open on the queue or the queue
    /// refuses opens ([`MemQueue::refuse_opens`]), ENODEV once it
    /// vanished, or the eventfd's error.
    pub fn open_for(
        queue: &MemQueue,
        guest: u32,
        rx_frames: usize,
        tx_frames: usize,
        frame_size: usize,
    ) -> io::Result<Self> {
        let mut st = lock(&queue.inner.state);
        let refuse = if queue.vanished() {
            Some(libc::ENODEV)
        } else if st.refuse_opens > 0 {
            st.refuse_opens -= 1;
            Some(libc::EBUSY)
        } else if st.port_of(guest).is_some() {
            Some(libc::EBUSY)
        } else {
            None
        };
        if let Some(errno) = refuse {
            st.stats.refused += 1;
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut port = Self::new(rx_frames, tx_frames, frame_size)?;
        st.next_id += 1;
        st.stats.opened += 1;
        let flag = Arc::new(AtomicBool::new(false));
        let id = st.next_id;
        st.ports.push(Attached {
            id,
            guest,
            wake: port.wake.clone(),
            max_frame_len: port.max_frame_len,
            waiting: VecDeque::new(),
            flag: flag.clone(),
        });
        port.link = Some(Link {
            queue: queue.clone(),
            id,
            guest,
            waiting: flag,
        });
        Ok(port)
    }

    /// The id of this port on its wire queue (see [`MemQueue::attached`]),
    /// if it is on one.
    pub fn id(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.id)
    }

    /// The guest this port is open for on its wire queue, if it is on one.
    pub fn guest(&self) -> Option<u32> {
        self.link.as_ref().map(|l| l.guest)
    }

    fn offset(&self, frame: u32) -> usize {
        frame as usize * self.frame_size + XDP_PACKET_HEADROOM
    }

    fn bytes(&self, d: &MemDesc) -> &[u8] {
        let off = self.offset(d.frame);
        &self.arena[off..off + d.len as usize]
    }

    /// The owner delivers `frame`: it is copied into a free RX frame and
    /// queued on the RX ring. False (nothing queued) if no RX frame is
    /// free or the frame is empty or longer than `max_frame_len`. Does not
    /// signal the fd (see the module documentation).
    #[must_use]
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty() || frame.len() > self.max_frame_len {
            return false;
        }
        let Some(mut d) = self.fill.pop() else {
            return false;
        };
        let off = self.offset(d.frame);
        self.arena[off..off + frame.len()].copy_from_slice(frame);
        d.len = frame.len() as u32;
        self.rx_ring.push_back(d);
        true
    }

    /// The owner delivers again, in the same order, every frame released
    /// since it was last delivered (same bytes, no copy). Returns how many.
    pub fn rx_replay(&mut self) -> usize {
        let before = self.rx_ring.len();
        let rx = &mut self.rx_ring;
        self.fill.retain(|d| {
            if d.len == 0 {
                return true;
            }
            rx.push_back(*d);
            false
        });
        self.rx_ring.len() - before
    }

    /// Frames queued on the RX ring by the owner, not yet consumed.
    pub fn rx_queued(&self) -> usize {
        self.rx_ring.len()
    }

    /// Frames committed for TX since the last `reap_completions`, in the
    /// order they were sent.
    pub fn tx_completed(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.completed.iter().map(|d| self.bytes(d))
    }

    /// TX frames free right now.
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// What the port has seen so far.
    pub fn counts(&self) -> MemPortCounts {
        self.counts
    }

    /// Moves frames waiting on the wire into free RX frames named in
    /// `out`; returns how many. Clears the fd when none is left waiting.
    fn pull_wire(&mut self, out: &mut [MemDesc]) -> usize {
        let Some(link) = &self.link else {
            return 0;
        };
        let q = &link.queue.inner;
        let mut st = lock(&q.state);
        let Some(me) = st.ports.iter_mut().find(|p| p.id == link.id) else {
            // Detached (the interface vanished): nothing waits for it.
            link.waiting.store(false, Ordering::Release);
            return 0;
        };
        let mut n = 0;
        while n < out.len() {
            let Some(mut d) = self.fill.pop() else {
                break;
            };
            let Some(frame) = me.waiting.pop_front() else {
                self.fill.push(d);
                break;
            };
            // `inject` checked the length against this port's frames
            // (frames waiting for an earlier port were dropped with it).
            let off = d.frame as usize * self.frame_size + XDP_PACKET_HEADROOM;
            let len = frame.len().min(self.max_frame_len);
            self.arena[off..off + len].copy_from_slice(&frame[..len]);
            d.len = len as u32;
            out[n] = d;
            n += 1;
        }
        if me.waiting.is_empty() {
            me.flag.store(false, Ordering::Release);
            let _ = self.wake.read();
        }
        n
    }
}

impl Drop for MemPort {
    fn drop(&mut self) {
        // Closing the port frees its queue; frames waiting for it are lost
        // with it, as with a closed socket's RX ring.
        let Some(link) = &self.link else {
            return;
        };
        let mut st = lock(&link.queue.inner.state);
        if let Some(i) = st.ports.iter().position(|p| p.id == link.id) {
            let lost = st.ports.remove(i).clear();
            st.stats.unclaimed += lost;
        }
    }
}

impl AsFd for MemPort {
    /// The eventfd: readable exactly while injected frames wait.
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self.wake`, which `self` keeps
        // alive (the wire's clone of the Arc only adds to that), so the fd
        // stays open for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.wake.as_raw_fd()) }
    }
}

impl FramePort for MemPort {
    type Desc = MemDesc;

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn rx_consume(&mut self, descs: &mut [MemDesc]) -> usize {
        let mut n = descs.len().min(self.rx_ring.len());
        for (slot, d) in descs.iter_mut().zip(self.rx_ring.drain(..n)) {
            *slot = d;
        }
        // The wire only when frames wait there: one atomic load otherwise.
        if n < descs.len()
            && self
                .link
                .as_ref()
                .is_some_and(|l| l.waiting.load(Ordering::Acquire))
        {
            n += self.pull_wire(&mut descs[n..]);
        }
        self.counts.rx_consumed += n as u64;
        n
    }

    fn rx_data(&self, desc: &MemDesc) -> &[u8] {
        self.bytes(desc)
    }

    fn rx_release(&mut self, descs: &[MemDesc]) {
        self.fill.extend_from_slice(descs);
        self.counts.rx_released += descs.len() as u64;
    }

    fn reap_completions(&mut self) -> usize {
        let n = self.completed.len();
        self.tx_free
            .extend(self.completed.drain(..).map(|d| d.frame));
        self.counts.tx_reaped += n as u64;
        n
    }

    fn tx_capacity(&mut self) -> usize {
        self.tx_free.len()
    }

    fn tx_push<E>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Push<E> {
        if len > self.max_frame_len {
            return Push::TooLong;
        }
        let Some(frame) = self.tx_free.pop() else {
            return Push::NoFrame;
        };
        let off = self.offset(frame);
        match fill(&mut self.arena[off..off + len]) {
            Ok(()) => {
                self.staged.push(MemDesc {
                    frame,
                    len: len as u32,
                });
                Push::Staged
            }
            Err(e) => {
                self.tx_free.push(frame);
                Push::Failed(e)
            }
        }
    }

    fn tx_staged(&self) -> usize {
        self.staged.len()
    }

    fn tx_commit(&mut self) -> io::Result<u64> {
        if self.staged.is_empty() {
            return Ok(0);
        }
        if self.link.as_ref().is_some_and(|l| l.queue.vanished()) {
            // As sendto on a socket whose interface is gone.
            self.tx_abort();
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        if let Some(link) = &self.link {
            let q = &link.queue.inner;
            let mut st = lock(&q.state);
            for d in &self.staged {
                if st.sent.len() >= WIRE_SENT_FRAMES {
                    st.sent.pop_front();
                    st.stats.sent_overflow += 1;
                }
                st.sent.push_back((link.guest, self.bytes(d).to_vec()));
            }
            st.stats.sent += self.staged.len() as u64;
            drop(st);
            q.sent_cv.notify_all();
        }
        self.counts.tx_commits += 1;
        self.counts.tx_frames += self.staged.len() as u64;
        self.counts.tx_bytes += self.staged.iter().map(|d| u64::from(d.len)).sum::<u64>();
        self.completed.append(&mut self.staged);
        Ok(0)
    }

    fn tx_abort(&mut self) {
        self.tx_free.extend(self.staged.drain(..).map(|d| d.frame));
    }

    fn stats(&self) -> io::Result<PortStats> {
        Ok(PortStats::default())
    }

    fn socket_error(&self) -> io::Error {
        match &self.link {
            Some(l) if l.queue.vanished() => io::Error::from_raw_os_error(libc::ENXIO),
            _ => io::Error::other("the in-memory port reported no error"),
        }
    }
}

/// Opens [`MemPort`]s of one geometry on the queues of a [`MemWire`], as
/// one guest: the in-memory [`PortFactory`]. [`MemFactory::new`] opens as
/// guest [`DEFAULT_GUEST`]; [`MemFactory::for_guest`] gives the factory of
/// another guest on the same wire.
#[derive(Debug, Clone)]
pub struct MemFactory {
    wire: MemWire,
    rx_frames: usize,
    tx_frames: usize,
    frame_size: usize,
    guest: u32,
}

impl MemFactory {
    /// Ports of `rx_frames` RX and `tx_frames` TX frames of `frame_size`
    /// bytes (see [`MemPort::new`]) on `wire`'s queues.
    pub fn new(wire: MemWire, rx_frames: usize, tx_frames: usize, frame_size: usize) -> Self {
        Self {
            wire,
            rx_frames,
            tx_frames,
            frame_size,
            guest: DEFAULT_GUEST,
        }
    }

    /// A factory of the same geometry on the same wire whose ports attach
    /// to the queues as guest `guest` (each guest may have one port per
    /// queue; see [`MemPort::open_for`]).
    pub fn for_guest(&self, guest: u32) -> MemFactory {
        MemFactory {
            guest,
            ..self.clone()
        }
    }

    /// The guest this factory's ports attach as.
    pub fn guest(&self) -> u32 {
        self.guest
    }

    /// The wire the ports are opened on.
    pub fn wire(&self) -> &MemWire {
        &self.wire
    }
}

impl PortFactory for MemFactory {
    type Port = MemPort;
    type Error = io::Error;

    /// See [`MemPort::open`]; ENODEV for a queue the wire does not have.
    fn open(&self, queue: u32) -> io::Result<MemPort> {
        let q = self
            .wire
            .queue(queue)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        MemPort::open_for(
            q,
            self.guest,
            self.rx_frames,
            self.tx_frames,
            self.frame_size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(p: &MemPort) -> bool {
        let mut pfd = libc::pollfd {
            fd: p.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn rx_frames_cycle_and_replay() {
        let mut p = MemPort::new(2, 0, 2048).unwrap();
        assert!(p.push_rx(b"one"));
        assert!(p.push_rx(b"two"));
        assert!(!p.push_rx(b"three"), "no free RX frame");
        assert!(!p.push_rx(&[0; 2048 - 255]), "too long");
        assert!(!readable(&p), "the owner's own frames wake nobody");
        let mut d = [MemDesc::default(); 4];
        assert_eq!(p.rx_consume(&mut d), 2);
        assert_eq!(
            (p.rx_data(&d[0]), p.rx_data(&d[1])),
            (&b"one"[..], &b"two"[..])
        );
        p.rx_release(&d[..2]);
        assert_eq!(p.rx_replay(), 2);
        assert_eq!(p.rx_consume(&mut d), 2);
        assert_eq!(
            (p.rx_data(&d[0]), p.rx_data(&d[1])),
            (&b"one"[..], &b"two"[..])
        );
    }

    #[test]
    fn tx_batches_commit_or_give_frames_back() {
        let mut p = MemPort::new(0, 2, 2048).unwrap();
        {
            let mut b = p.tx_batch();
            let abc = |buf: &mut [u8]| {
                buf.copy_from_slice(b"abc");
                Ok::<(), ()>(())
            };
            assert_eq!(b.push(3, abc), Push::Staged);
            assert_eq!(b.push(1, |_| Err("bad")), Push::Failed("bad"));
            assert_eq!(b.push(4000, |_| Ok::<(), ()>(())), Push::TooLong);
            // Dropped uncommitted: the frame comes back.
        }
        assert_eq!(p.tx_free(), 2);
        let mut b = p.tx_batch();
        for _ in 0..2 {
            let sevens = |buf: &mut [u8]| {
                buf.fill(7);
                Ok::<(), ()>(())
            };
            assert_eq!(b.push(2, sevens), Push::Staged);
        }
        assert_eq!(b.push(2, |_| Ok::<(), ()>(())), Push::NoFrame);
        assert_eq!(b.commit().ok(), Some(0));
        assert_eq!(
            p.tx_completed().collect::<Vec<_>>(),
            [&[7u8, 7][..], &[7, 7]]
        );
        assert_eq!(p.reap_completions(), 2);
        assert_eq!(
            (p.tx_free(), p.counts().tx_frames, p.counts().tx_bytes),
            (2, 2, 4)
        );
    }

    #[test]
    fn the_fd_is_readable_exactly_while_wire_frames_wait() {
        let wire = MemWire::new(1);
        let q = wire.queue(0).unwrap();
        assert!(!q.inject(b"early"), "no port: nobody takes it");
        let mut p = MemPort::open(q, 2, 0, 2048).unwrap();
        assert!(!readable(&p));
        for f in [&b"a"[..], b"bb", b"ccc"] {
            assert!(q.inject(f));
            assert!(readable(&p));
        }
        assert!(!q.inject(&[0; 2048 - 255]), "longer than the port's frames");
        // Two RX frames: two frames move, one still waits.
        let mut d = [MemDesc::default(); 4];
        assert_eq!(p.rx_consume(&mut d), 2);
        assert!(readable(&p), "a frame still waits");
        assert_eq!(
            (p.rx_data(&d[0]), p.rx_data(&d[1])),
            (&b"a"[..], &b"bb"[..])
        );
        p.rx_release(&d[..2]);
        assert_eq!(p.rx_consume(&mut d), 1);
        assert_eq!(p.rx_data(&d[0]), b"ccc");
        assert!(!readable(&p), "nothing waits: cleared");
        p.rx_release(&d[..1]);
        assert_eq!(p.rx_consume(&mut d), 0);
        assert!(q.inject(b"late"));
        assert!(readable(&p), "signalled again");
        assert_eq!(
            q.stats(),
            MemQueueStats {
                delivered: 4,
                unclaimed: 1,
                dropped: 1,
                opened: 1,
                ..MemQueueStats::default()
            }
        );
    }

    #[test]
    fn a_queue_takes_one_port_at_a_time_and_outlives_it() {
        let wire = MemWire::new(2);
        let f = MemFactory::new(wire.clone(), 4, 4, 2048);
        let q = wire.queue(1).unwrap();
        let mut p = f.open(1).unwrap();
        assert_eq!(
            f.open(1).unwrap_err().raw_os_error(),
            Some(libc::EBUSY),
            "the queue is taken"
        );
        assert_eq!(f.open(2).unwrap_err().raw_os_error(), Some(libc::ENODEV));
        // TX is captured on the wire, and completes as before.
        let mut b = p.tx_batch();
        assert_eq!(
            b.push(3, |buf| {
                buf.copy_from_slice(b"out");
                Ok::<(), ()>(())
            }),
            Push::Staged
        );
        assert_eq!(b.commit().ok(), Some(0));
        assert_eq!(q.wait_sent(1, Duration::from_secs(1)), [b"out".to_vec()]);
        assert_eq!(p.reap_completions(), 1);
        // Frames waiting for a closed port are lost with it.
        assert!(q.inject(b"lost"));
        assert_eq!(q.attached(), Some(1));
        drop(p);
        assert_eq!((q.attached(), q.waiting()), (None, 0));
        q.refuse_opens(2);
        for _ in 0..2 {
            assert_eq!(f.open(1).unwrap_err().raw_os_error(), Some(libc::EBUSY));
        }
        let mut p = f.open(1).unwrap();
        assert_eq!((p.id(), q.attached()), (Some(2), Some(2)));
        assert_eq!(q.attached_fd(), Some(p.as_fd().as_raw_fd()));
        assert!(q.inject(b"new"));
        let mut d = [MemDesc::default(); 1];
        assert_eq!(p.rx_consume(&mut d), 1);
        assert_eq!(p.rx_data(&d[0]), b"new");
        let s = q.stats();
        assert_eq!((s.opened, s.refused, s.unclaimed, s.sent), (2, 3, 1, 1));
    }

    #[test]
    fn a_vanished_queue_fails_like_a_dead_socket() {
        let wire = MemWire::new(1);
        let q = wire.queue(0).unwrap();
        let mut p = MemPort::open(q, 2, 2, 2048).unwrap();
        assert!(q.inject(b"x"));
        q.vanish();
        assert!(!readable(&p), "waiting frames went with the interface");
        assert!(!q.inject(b"y"));
        let mut b = p.tx_batch();
        assert_eq!(b.push(1, |_| Ok::<(), ()>(())), Push::Staged);
        assert_eq!(
            b.commit().unwrap_err().raw_os_error(),
            Some(libc::ENXIO),
            "sendto on a socket whose interface is gone"
        );
        assert_eq!(p.tx_free(), 2, "the frame is not lost to the port");
        assert_eq!(p.socket_error().raw_os_error(), Some(libc::ENXIO));
        assert_eq!(
            MemPort::open(q, 2, 2, 2048).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert!(q.take_sent().is_empty());
    }

    fn tx_one(p: &mut MemPort, bytes: &[u8]) {
        let mut b = p.tx_batch();
        let copy = |buf: &mut [u8]| {
            buf.copy_from_slice(bytes);
            Ok::<(), ()>(())
        };
        assert_eq!(b.push(bytes.len(), copy), Push::Staged);
        assert_eq!(b.commit().ok(), Some(0));
    }

    #[test]
    fn a_queue_takes_one_port_per_guest() {
        let wire = MemWire::new(1);
        let q = wire.queue(0).unwrap();
        let one = MemFactory::new(wire.clone(), 4, 4, 2048);
        let two = one.for_guest(2);
        assert_eq!((one.guest(), two.guest()), (DEFAULT_GUEST, 2));
        let mut p1 = one.open(0).unwrap();
        let mut p2 = two.open(0).unwrap();
        assert_eq!(
            two.open(0).unwrap_err().raw_os_error(),
            Some(libc::EBUSY),
            "one port per guest and queue"
        );
        assert_eq!(one.open(0).unwrap_err().raw_os_error(), Some(libc::EBUSY));
        assert_eq!((p1.guest(), p2.guest()), (Some(1), Some(2)));
        assert_eq!(q.attached_guests(), [1, 2]);
        assert_eq!((q.attached(), q.attached_of(2)), (p1.id(), p2.id()));
        assert_eq!(q.attached_fd_of(2), Some(p2.as_fd().as_raw_fd()));
        assert_eq!(q.attached_fd(), Some(p1.as_fd().as_raw_fd()));
        assert_eq!(q.attached_of(3), None);

        // Each guest gets exactly its own frames; only its fd wakes.
        assert!(q.inject(b"to one"));
        assert!(q.inject_to(2, b"to two"));
        assert!(q.inject_to(2, b"to two again"));
        assert!(!q.inject_to(3, b"nobody"), "guest 3 has no port here");
        assert_eq!((q.waiting(), q.waiting_of(2)), (1, 2));
        let mut d = [MemDesc::default(); 4];
        assert_eq!(p2.rx_consume(&mut d), 2);
        assert_eq!(
            (p2.rx_data(&d[0]), p2.rx_data(&d[1])),
            (&b"to two"[..], &b"to two again"[..])
        );
        p2.rx_release(&d[..2]);
        assert!(!readable(&p2) && readable(&p1));
        assert_eq!(p1.rx_consume(&mut d), 1);
        assert_eq!(p1.rx_data(&d[0]), b"to one");
        assert!(!readable(&p1));

        // The wire is shared: every guest's TX, with its sender.
        tx_one(&mut p1, b"from one");
        tx_one(&mut p2, b"from two");
        assert_eq!(
            q.take_sent_by(),
            [(1, b"from one".to_vec()), (2, b"from two".to_vec())]
        );
        tx_one(&mut p2, b"again");
        assert_eq!(q.wait_sent(1, Duration::from_secs(1)), [b"again".to_vec()]);

        // Guest 1 closes: guest 2 is not disturbed; frames waiting for
        // guest 1 are lost with its port.
        assert!(q.inject(b"lost"));
        drop(p1);
        assert_eq!(q.attached_guests(), [2]);
        assert!(!q.inject(b"no port"));
        assert!(q.inject_to(2, b"still"));
        assert_eq!(p2.rx_consume(&mut d), 1);
        assert_eq!(p2.rx_data(&d[0]), b"still");
        p2.rx_release(&d[..1]);
        // Guest 1 comes back; refusals apply to every guest.
        let p1 = one.open(0).unwrap();
        assert_eq!(p1.id(), Some(3), "ids count per queue, over all guests");
        q.refuse_opens(1);
        assert_eq!(
            one.for_guest(4).open(0).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        let p4 = one.for_guest(4).open(0).unwrap();
        let s = q.stats();
        assert_eq!(
            (s.delivered, s.unclaimed, s.opened, s.refused, s.sent),
            (5, 3, 4, 3, 3)
        );
        // The interface goes: every guest's port fails.
        q.vanish();
        assert!(q.attached_guests().is_empty());
        assert!(!q.inject_to(2, b"gone"));
        for p in [&p1, &p2, &p4] {
            assert_eq!(p.socket_error().raw_os_error(), Some(libc::ENXIO));
        }
        assert_eq!(two.open(0).unwrap_err().raw_os_error(), Some(libc::ENODEV));
    }
}
