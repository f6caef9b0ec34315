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
//!   wire. [`MemQueue::inject`] hands a frame to the queue's port; it
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
//! there, for [`MemQueue::take_sent`] / [`MemQueue::wait_sent`].
//!
//! Failures, as the kernel shows them: while a port is open on a queue,
//! opening another one there fails with EBUSY (as binding a second socket
//! to a NIC queue does), and [`MemQueue::refuse_opens`] makes the next
//! opens fail the same way, as while the kernel frees a closed socket's
//! queue. [`MemQueue::vanish`] plays an interface that went away: the next
//! TX commit fails with ENXIO, `socket_error` says ENXIO, opens fail with
//! ENODEV and injected frames find no port.
//!
//! Ownership: a `MemPort` belongs to one queue-pair worker and does not lock
//! on its own frames. A port on a wire shares one small, named piece of
//! state with the wire's users: its queue's [`MemQueue`] (one mutex over the
//! waiting frames, the captured TX frames and the attachment, and an atomic
//! "frames waiting" flag that `rx_consume` reads without the lock). The
//! eventfd's state changes only under that mutex, so it cannot disagree
//! with the waiting frames: a producer signals when the first frame arrives,
//! the consumer clears it when it takes the last one.

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
    /// Injected frames queued for the queue's port.
    pub delivered: u64,
    /// Injected frames that found no port (none open, or the interface
    /// vanished); on a real NIC they would fail open to the host.
    pub unclaimed: u64,
    /// Injected frames dropped: empty, longer than the port's frames, or
    /// the port's backlog full.
    pub dropped: u64,
    /// Frames ports transmitted on this queue.
    pub sent: u64,
    /// Transmitted frames dropped from the capture because nobody took
    /// them (more than [`WIRE_SENT_FRAMES`]).
    pub sent_overflow: u64,
    /// Ports opened on this queue.
    pub opened: u64,
    /// Opens refused (queue busy or interface gone).
    pub refused: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The port open on a wire queue, as the queue sees it.
struct Attached {
    id: u64,
    wake: Arc<EventFd>,
    max_frame_len: usize,
}

/// A wire queue's state behind its mutex.
#[derive(Default)]
struct WireState {
    port: Option<Attached>,
    /// Injected frames waiting for the port's `rx_consume`.
    waiting: VecDeque<Vec<u8>>,
    /// Frames transmitted, oldest first, until the test takes them.
    sent: VecDeque<Vec<u8>>,
    refuse_opens: u32,
    next_id: u64,
    stats: MemQueueStats,
}

/// One queue of the in-memory NIC.
struct WireQueue {
    index: u32,
    state: Mutex<WireState>,
    /// `state.waiting` is not empty. Written under the mutex; the port
    /// reads it without the mutex to skip the lock when nothing waits.
    waiting: AtomicBool,
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
/// [`MemPort`] at a time. Clones are handles on the same queue.
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
                waiting: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                sent_cv: Condvar::new(),
            }),
        }
    }

    /// The queue's index on its wire.
    pub fn index(&self) -> u32 {
        self.inner.index
    }

    /// The wire delivers `frame` to the queue's port: it waits for the
    /// port's `rx_consume`, and the port's fd is readable until then.
    /// False (counted) when no port is open, the interface vanished, the
    /// frame is empty or longer than the port's frames, or
    /// [`WIRE_QUEUE_FRAMES`] frames wait already.
    pub fn inject(&self, frame: &[u8]) -> bool {
        let q = &self.inner;
        let mut st = lock(&q.state);
        let Some(max) = st.port.as_ref().map(|p| p.max_frame_len) else {
            st.stats.unclaimed += 1;
            return false;
        };
        if frame.is_empty() || frame.len() > max || st.waiting.len() >= WIRE_QUEUE_FRAMES {
            st.stats.dropped += 1;
            return false;
        }
        if st.waiting.is_empty() {
            // First waiting frame: the fd becomes readable (under the
            // lock, so the consumer cannot clear it in between).
            q.waiting.store(true, Ordering::Release);
            if let Some(p) = &st.port {
                let _ = p.wake.write(1);
            }
        }
        st.waiting.push_back(frame.to_vec());
        st.stats.delivered += 1;
        true
    }

    /// Takes every frame transmitted on this queue so far, oldest first.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        lock(&self.inner.state).sent.drain(..).collect()
    }

    /// Waits up to `timeout` until at least `n` transmitted frames are
    /// there, then takes them all (fewer if the time ran out).
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
        st.sent.drain(..).collect()
    }

    /// The next `n` opens on this queue fail with EBUSY, as while the
    /// kernel still frees the queue from a closed socket.
    pub fn refuse_opens(&self, n: u32) {
        lock(&self.inner.state).refuse_opens = n;
    }

    /// The interface goes away: the open port's next TX commit fails with
    /// ENXIO (its socket error says so too), new opens fail with ENODEV,
    /// waiting and later injected frames find no port.
    pub fn vanish(&self) {
        let q = &self.inner;
        let mut st = lock(&q.state);
        q.gone.store(true, Ordering::Release);
        st.stats.unclaimed += st.waiting.len() as u64;
        st.waiting.clear();
        q.waiting.store(false, Ordering::Release);
        if let Some(p) = st.port.take() {
            let _ = p.wake.read();
        }
    }

    /// Whether [`MemQueue::vanish`] was called.
    pub fn vanished(&self) -> bool {
        self.inner.gone.load(Ordering::Acquire)
    }

    /// The id of the port open on this queue (ids count up from 1 per
    /// queue), if one is.
    pub fn attached(&self) -> Option<u64> {
        lock(&self.inner.state).port.as_ref().map(|p| p.id)
    }

    /// The fd of the port open on this queue, if one is.
    pub fn attached_fd(&self) -> Option<RawFd> {
        lock(&self.inner.state)
            .port
            .as_ref()
            .map(|p| p.wake.as_raw_fd())
    }

    /// Injected frames waiting for the port's `rx_consume`.
    pub fn waiting(&self) -> usize {
        lock(&self.inner.state).waiting.len()
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

    /// Opens a port like [`MemPort::new`] on wire queue `queue`: frames
    /// injected there reach it, frames it sends are captured there.
    ///
    /// # Errors
    /// EBUSY while another port is open on the queue or the queue refuses
    /// opens ([`MemQueue::refuse_opens`]), ENODEV once it vanished, or the
    /// eventfd's error.
    pub fn open(
        queue: &MemQueue,
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
        } else if st.port.is_some() {
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
        st.port = Some(Attached {
            id: st.next_id,
            wake: port.wake.clone(),
            max_frame_len: port.max_frame_len,
        });
        port.link = Some(Link {
            queue: queue.clone(),
            id: st.next_id,
        });
        Ok(port)
    }

    /// The id of this port on its wire queue (see [`MemQueue::attached`]),
    /// if it is on one.
    pub fn id(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.id)
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
        let mut n = 0;
        while n < out.len() {
            let Some(mut d) = self.fill.pop() else {
                break;
            };
            let Some(frame) = st.waiting.pop_front() else {
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
        if st.waiting.is_empty() {
            q.waiting.store(false, Ordering::Release);
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
        let q = &link.queue.inner;
        let mut st = lock(&q.state);
        if st.port.as_ref().is_some_and(|p| p.id == link.id) {
            st.port = None;
            st.stats.unclaimed += st.waiting.len() as u64;
            st.waiting.clear();
            q.waiting.store(false, Ordering::Release);
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
                .is_some_and(|l| l.queue.inner.waiting.load(Ordering::Acquire))
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
                st.sent.push_back(self.bytes(d).to_vec());
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

/// Opens [`MemPort`]s of one geometry on the queues of a [`MemWire`]: the
/// in-memory [`PortFactory`].
#[derive(Debug, Clone)]
pub struct MemFactory {
    wire: MemWire,
    rx_frames: usize,
    tx_frames: usize,
    frame_size: usize,
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
        }
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
        MemPort::open(q, self.rx_frames, self.tx_frames, self.frame_size)
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
}
