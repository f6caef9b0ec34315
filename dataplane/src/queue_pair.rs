//! One queue pair: the bridge between one frame port (an AF_XDP socket in
//! production, see [`crate::port`]) and one virtio-net RX/TX vring pair.
//! This is the data path; read it top to bottom.
//!
//! ```text
//!  wire -> NIC rxq i -> XDP -> XSK i RX ring --process_rx--> guest RX vring 2i -> notify
//!  guest TX vring 2i+1 --process_tx--> UMEM frame -> XSK i TX ring -> wake kernel -> wire
//!                                      (completions return frames to the free list)
//! ```
//!
//! [`QueuePair`] is generic over its [`FramePort`] and monomorphized for
//! each (the daemon's `XskPort`, the tests' and benchmarks' `MemPort`);
//! the batch size ([`BATCH`]) is the port module's.
//!
//! Ownership: a [`QueuePair`] is owned by the worker thread of pair i (the
//! vhost-user-backend epoll thread whose `queues_per_thread` mask is
//! `0b11 << 2i`). Its port (socket, UMEM, frame lists), scratch vectors,
//! timer and batch tally are touched by that thread only; the backend keeps
//! it in a mutex taken once per event, never per frame. Other threads talk to it
//! through [`QueueMailbox`] (atomic flags it reads between batches) and read
//! its [`QueueCounters`] without stopping it.
//!
//! Per frame there is no allocation, no lock and no syscall: the vring lock
//! is taken once per batch, scratch vectors are reused, the kernel is woken
//! once per 32 TX frames (copy mode's limit) and the guest is notified once
//! per batch when it asks to be.
//!
//! Backpressure: if the guest has no RX buffers, frames are dropped and
//! counted (no other queue waits). If no UMEM frame or XSK TX slot is free,
//! guest TX chains stay in the guest's ring and a short timer retries after
//! completions; nothing is dropped.
//!
//! A malformed chain (see [`crate::chain`]) marks its vring broken: that
//! vring stops until the frontend resets it, every other vring goes on.
//!
//! Budgets (docs/ARCHITECTURE.md, Concurrency rules, rule 6): every chain
//! popped counts, whatever becomes of it. A TX batch pops at most
//! [`BATCH`] chains, rejected ones included, and one event runs at most
//! `TX_ROUNDS` batches before the worker yields to RX through its timer.
//! An RX frame takes at most [`chain::MAX_CHAINS_PER_FRAME`] chains and
//! reads at most [`chain::MAX_DESCS_PER_FRAME`] descriptors; a frame that
//! needs more stops the vring like a malformed chain. An RX batch is at
//! most [`BATCH`] frames from the port, a handoff delivery at most
//! [`BATCH`] frames from the inbox (the doorbell rings again if more wait).
//! So one event costs a bounded amount of work whatever the guest posts,
//! and a guest cannot keep its worker (and the vring lock the frontend's
//! GET_VRING_BASE needs) from its other events or from stopping.
//!
//! A pair whose RX vring the guest has not enabled hands its frames to the
//! worker of an enabled pair ([`crate::handoff`]); that worker delivers
//! them to its own vring.

use crate::chain::{self, ChainError, Segment};
use crate::counters::{QueueCounters, Tally};
use crate::handoff::{Handoff, Peers};
use crate::port::{FramePort, Push, BATCH};
use crate::switch::{deliver, GuestSwitch, Route, TxGuard};
use crate::virtio_net::{rx_header, ETH_HLEN, HDR_LEN};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::timerfd::TimerFd;

/// TX batches per event before the worker yields to RX (via the timer).
const TX_ROUNDS: usize = 4;
/// Retry delay when TX is out of UMEM frames or XSK slots.
const TX_RETRY: Duration = Duration::from_micros(50);
/// Delay to resume TX after yielding (just "next epoll round").
const TX_YIELD: Duration = Duration::from_micros(1);
/// How often the kernel's XDP_STATISTICS are copied into the counters.
const STATS_EVERY: Duration = Duration::from_millis(100);
/// `signal_on_start` index of the pair's RX vring.
const RX_RING: usize = 0;
/// `signal_on_start` index of the pair's TX vring.
const TX_RING: usize = 1;

/// A change of the pair's port (AF_XDP socket), sent by the control plane.
pub enum SocketChange<P> {
    /// Close the port: the kernel removes its socket from the XSKMAP and
    /// the queue's traffic fails open to the host. Guest TX waits in its
    /// ring.
    Release,
    /// Use this port from now on (the old one, if any, is closed).
    Install(Box<P>),
}

impl<P> std::fmt::Debug for SocketChange<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Release => "Release",
            Self::Install(_) => "Install",
        })
    }
}

/// Messages from other threads, applied by the worker between batches
/// (after the sender rang the pair's doorbell, the handoff eventfd).
#[derive(Debug)]
pub struct QueueMailbox<P> {
    /// The frontend stopped or reset the RX vring: clear its broken state.
    pub reset_rx: AtomicBool,
    /// Same for the TX vring.
    pub reset_tx: AtomicBool,
    /// A socket change waiting to be applied (see [`QueueMailbox::post_socket`]).
    socket: Mutex<Option<SocketChange<P>>>,
    /// Set after `socket` was filled: the worker takes the lock only then,
    /// so checking the mailbox between batches (and in the polling loop)
    /// costs three atomic loads.
    socket_pending: AtomicBool,
    /// Socket changes applied so far (the sender waits on this).
    pub socket_changes_applied: AtomicU64,
}

impl<P> Default for QueueMailbox<P> {
    fn default() -> Self {
        Self {
            reset_rx: AtomicBool::new(false),
            reset_tx: AtomicBool::new(false),
            socket: Mutex::new(None),
            socket_pending: AtomicBool::new(false),
            socket_changes_applied: AtomicU64::new(0),
        }
    }
}

impl<P> QueueMailbox<P> {
    /// Leaves a socket change for the worker (replacing one not yet
    /// applied); the caller then rings the pair's doorbell.
    pub fn post_socket(&self, change: SocketChange<P>) {
        *self.socket.lock().unwrap_or_else(PoisonError::into_inner) = Some(change);
        self.socket_pending.store(true, Ordering::Release);
    }

    /// Takes the pending socket change, if any.
    fn take_socket(&self) -> Option<SocketChange<P>> {
        if !self.socket_pending.swap(false, Ordering::Acquire) {
            return None;
        }
        self.socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Features negotiated on the current connection that the data path uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPathFeatures {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several RX chains.
    pub mrg_rxbuf: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
}

/// Why a guest TX frame did not go to the wire (the fill step of a TX
/// push refused it; the UMEM frame goes back to the free list).
enum TxFill {
    /// The chain is malformed: the vring stops.
    Broken(ChainError),
    /// Anti-spoofing refused it.
    Spoofed,
    /// It went to another local guest instead.
    Switched,
}

/// What a queue pair knows of its guest among several: its id, the switch
/// shared by every guest, and its anti-spoofing policy.
#[derive(Debug, Clone)]
pub struct GuestLink {
    /// The guest's id.
    pub id: u32,
    /// The switch of all local guests.
    pub switch: Arc<GuestSwitch>,
    /// What the guest may send as its source.
    pub guard: TxGuard,
}

/// Why a vring stops until it is reset.
enum VringStop {
    Broken(ChainError),
    BadAvailIndex,
}

/// One queue pair: socket, scratch and state of the worker that owns it.
///
/// Generic over its wire side so that the same code runs on an AF_XDP
/// socket ([`crate::xsk::XskPort`]) and on the in-memory
/// [`crate::mem_port::MemPort`] of tests and benchmarks; each is
/// monomorphized, nothing is dispatched dynamically.
pub struct QueuePair<P: FramePort> {
    index: u16,
    /// `None` after a release or a socket failure, until a new one is
    /// installed.
    port: Option<P>,
    peers: Arc<Peers>,
    counters: Arc<QueueCounters>,
    mailbox: Arc<QueueMailbox<P>>,
    timer: TimerFd,
    timer_armed: bool,
    /// Largest frame the guest may send (MTU + Ethernet + one VLAN tag),
    /// capped by the UMEM frame.
    max_tx_frame: usize,
    rx_broken: bool,
    tx_broken: bool,
    /// Per vring (RX, TX): the next signal of this connection goes out
    /// whatever EVENT_IDX says. A backend killed between adding used
    /// entries and signalling them leaves the guest's `used_event` behind
    /// the used index the new connection starts from; the guest waits for
    /// that lost interrupt, and every later crossing check says no, so the
    /// ring would stay silent (seen with QEMU after `kill -9`: frames
    /// delivered, never read, then no RX buffers). One spurious interrupt
    /// per connection is harmless to the driver.
    signal_on_start: [bool; 2],
    /// Set when the socket died; the backend ends the connection.
    failure: Option<String>,
    tally: Tally,
    /// Frames moved so far in either direction (adaptive polling watches
    /// it to see whether a round did anything).
    work: u64,
    /// Inside [`QueuePair::poll_while_busy`]: guest TX kicks stay off and
    /// the TX round budget does not arm the timer (the loop comes back).
    polling: bool,
    /// `work` when the last polling loop ended.
    polled_work: u64,
    last_stats: Instant,
    // Scratch, reused every batch.
    rx_descs: Vec<P::Desc>,
    segs: Vec<Segment>,
    rx_segs: Vec<Segment>,
    rx_chains: Vec<(u16, usize, usize)>,
    tx_heads: Vec<u16>,
    /// Set when the pair's guest is one of several (switching and
    /// anti-spoofing on TX); `None`: every frame goes to the wire.
    link: Option<GuestLink>,
}

impl<P: FramePort> std::fmt::Debug for QueuePair<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("index", &self.index)
            .field("rx_broken", &self.rx_broken)
            .field("tx_broken", &self.tx_broken)
            .finish_non_exhaustive()
    }
}

impl<P: FramePort> QueuePair<P> {
    /// Wraps `port` as queue pair `index`; `mtu` bounds guest TX frames;
    /// `peers` is the handoff table shared by all pairs of the server.
    pub fn new(index: u16, port: P, mtu: u16, peers: Arc<Peers>) -> std::io::Result<Self> {
        let max_tx_frame = (usize::from(mtu) + 14 + 4).min(port.max_frame_len());
        Ok(Self {
            index,
            port: Some(port),
            peers,
            counters: Arc::new(QueueCounters::default()),
            mailbox: Arc::new(QueueMailbox::default()),
            timer: TimerFd::new()?,
            timer_armed: false,
            max_tx_frame,
            rx_broken: false,
            tx_broken: false,
            signal_on_start: [false; 2],
            failure: None,
            tally: Tally::default(),
            work: 0,
            polling: false,
            polled_work: 0,
            last_stats: Instant::now(),
            rx_descs: vec![P::Desc::default(); BATCH],
            segs: Vec::with_capacity(1024),
            rx_segs: Vec::with_capacity(1024),
            rx_chains: Vec::with_capacity(64),
            tx_heads: Vec::with_capacity(BATCH),
            link: None,
        })
    }

    /// Makes this pair's guest one of several: TX frames are checked by
    /// `link.guard` and switched through `link.switch`.
    pub fn set_link(&mut self, link: Option<GuestLink>) {
        self.link = link;
    }

    /// Queue pair index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The counters, for readers on other threads.
    pub fn counters(&self) -> Arc<QueueCounters> {
        self.counters.clone()
    }

    /// The mailbox, for other threads.
    pub fn mailbox(&self) -> Arc<QueueMailbox<P>> {
        self.mailbox.clone()
    }

    /// The port's fd (epoll: readable = frames to receive; the XSKMAP
    /// names the socket by it), if the pair has a port.
    pub fn port_fd(&self) -> Option<RawFd> {
        self.port.as_ref().map(|p| p.as_fd().as_raw_fd())
    }

    /// The pair's port, if it has one (tests and benchmarks load and
    /// inspect a [`crate::mem_port::MemPort`] through this).
    pub fn port(&self) -> Option<&P> {
        self.port.as_ref()
    }

    /// The pair's port, mutably; only the owning worker may call this.
    pub fn port_mut(&mut self) -> Option<&mut P> {
        self.port.as_mut()
    }

    /// The TX retry timer's fd (epoll: readable = retry TX).
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Starts a new frontend connection: pending messages applied,
    /// nothing broken, no timer.
    pub fn begin_connection(&mut self) {
        self.apply_mailbox();
        self.rx_broken = false;
        self.tx_broken = false;
        self.signal_on_start = [true; 2];
        if self.timer_armed {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    /// Applies messages from other threads. Called at the start of every
    /// event, i.e. between batches. Returns true when a socket was
    /// installed (guest TX that waited for it can go now).
    pub fn apply_mailbox(&mut self) -> bool {
        if self.mailbox.reset_rx.swap(false, Ordering::AcqRel) {
            self.rx_broken = false;
        }
        if self.mailbox.reset_tx.swap(false, Ordering::AcqRel) {
            self.tx_broken = false;
        }
        let installed = match self.mailbox.take_socket() {
            None => return false,
            Some(SocketChange::Release) => {
                self.port = None;
                tracing::info!(queue_pair = self.index, "AF_XDP socket released");
                false
            }
            Some(SocketChange::Install(p)) => {
                self.port = Some(*p);
                tracing::info!(queue_pair = self.index, "AF_XDP socket installed");
                true
            }
        };
        self.mailbox
            .socket_changes_applied
            .fetch_add(1, Ordering::AcqRel);
        installed
    }

    /// The socket reported an error (its interface went away): close it and
    /// record the failure.
    pub fn socket_failed(&mut self, err: Option<std::io::Error>) {
        let port = self.port.take();
        let detail = err
            .or_else(|| port.map(|p| p.socket_error()))
            .map_or_else(|| "no socket".to_string(), |e| e.to_string());
        self.failure.get_or_insert_with(|| {
            format!("queue pair {}: AF_XDP socket failed: {detail}", self.index)
        });
    }

    /// The failure recorded since the last call, if any.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// The retry timer fired: consume it.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
        self.timer_armed = false;
    }

    fn arm_timer(&mut self, after: Duration) {
        if !self.timer_armed && self.timer.reset(after, None).is_ok() {
            self.timer_armed = true;
        }
    }

    /// Publishes the batch tally (and, at most every 100 ms, the kernel's
    /// XDP statistics) to the shared counters.
    pub fn flush_counters(&mut self) {
        self.tally.batches += 1;
        self.counters.add(&self.tally);
        self.tally = Tally::default();
        if self.last_stats.elapsed() >= STATS_EVERY {
            self.last_stats = Instant::now();
            if let Some(Ok(s)) = self.port.as_ref().map(P::stats) {
                self.counters.set_xdp_stats(&s);
            }
        }
    }

    // ------------------------------------------------------ adaptive polling

    /// Adaptive polling, called after an event: while frames keep moving,
    /// serve both directions again without going back to epoll, until
    /// nothing has moved for `idle` or `max` has passed (then epoll takes
    /// over, so other events are never starved). An idle pair never polls:
    /// the loop only runs after an event that moved frames. Under load it
    /// saves, per batch, the epoll round trip, the guest's TX kick (kicks
    /// stay off while polling) and often the wake-up of this thread.
    /// `idle` zero turns it off.
    pub fn poll_while_busy(
        &mut self,
        rx: &VringRwLock,
        tx: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        features: DataPathFeatures,
        idle: Duration,
        max: Duration,
    ) {
        if idle.is_zero() || self.work == self.polled_work {
            self.polled_work = self.work;
            return;
        }
        let start = Instant::now();
        let mut last_work = start;
        let mut seen = self.work;
        self.polling = true;
        loop {
            if self.apply_mailbox() {
                last_work = Instant::now();
            }
            if self.port.is_none() || self.failure.is_some() {
                break;
            }
            self.process_rx(rx, mem, features);
            self.process_tx(tx, mem, features);
            let now = Instant::now();
            if self.work != seen {
                seen = self.work;
                last_work = now;
                self.flush_counters();
            } else if now.duration_since(last_work) >= idle {
                break;
            }
            if now.duration_since(start) >= max {
                break;
            }
            std::hint::spin_loop();
        }
        self.polling = false;
        // Kicks back on (and whatever slipped in before that is sent).
        self.process_tx(tx, mem, features);
        self.polled_work = self.work;
    }

    // ---------------------------------------------------------------- RX

    /// Wire -> guest: one batch from the XSK RX ring into the guest's RX
    /// vring. Frames that cannot be delivered are dropped and counted; the
    /// UMEM frames always go straight back to the fill ring.
    pub fn process_rx(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        features: DataPathFeatures,
    ) {
        let Some(port) = self.port.as_mut() else {
            return;
        };
        let n = port.rx_consume(&mut self.rx_descs);
        if n == 0 {
            return;
        }
        self.work += n as u64;
        // One guest memory snapshot and one vring lock per batch.
        let mem = mem.memory();
        let mut state = vring.get_mut();
        let enabled = state.get_queue().ready() && state.is_enabled();
        self.peers.set_enabled(self.index, enabled);
        if !enabled || self.rx_broken {
            drop(state);
            if enabled {
                self.tally.rx_bad_chain += n as u64;
            } else {
                self.hand_off(n);
            }
            self.release_rx(n);
            return;
        }
        let mut delivered = 0u64;
        let mut stop = None;
        {
            let queue = state.get_queue_mut();
            let mut out_of_buffers = false;
            for i in 0..n {
                if out_of_buffers || stop.is_some() {
                    self.tally.rx_drop_no_guest_buffer += 1;
                    continue;
                }
                let Some(data) = self.port.as_ref().map(|p| p.rx_data(&self.rx_descs[i])) else {
                    break;
                };
                let outcome = rx_one(
                    queue,
                    &mem,
                    data,
                    features,
                    &mut self.segs,
                    &mut self.rx_segs,
                    &mut self.rx_chains,
                );
                let len = data.len();
                out_of_buffers = matches!(outcome, Ok(RxOne::NoBuffer));
                stop = account(&mut self.tally, outcome, len, &mut delivered);
            }
        }
        self.release_rx(n);
        if let Some(e) = stop {
            self.break_vring(true, e);
        }
        // Also with nothing delivered (the ring was already empty): the
        // first signal of a connection is owed regardless.
        if delivered > 0 || self.signal_on_start[RX_RING] {
            self.notify_guest(&mut state, RX_RING);
        }
    }

    fn release_rx(&mut self, n: usize) {
        if let Some(p) = self.port.as_mut() {
            p.rx_release(&self.rx_descs[..n]);
        }
    }

    /// This pair's RX vring is disabled: pass the `n` received frames to
    /// an enabled pair's worker, or count them dropped if there is none.
    fn hand_off(&mut self, n: usize) {
        let target = self
            .peers
            .target_for(self.index)
            .filter(|&t| t != usize::from(self.index))
            .and_then(|t| self.peers.handoff(t));
        let (Some(h), Some(port)) = (target, self.port.as_ref()) else {
            self.tally.rx_drop_no_guest += n as u64;
            return;
        };
        for d in &self.rx_descs[..n] {
            if h.offer(port.rx_data(d)) {
                self.tally.rx_handed_off += 1;
            } else {
                self.tally.rx_drop_no_guest_buffer += 1;
            }
        }
        h.wake();
    }

    /// Frames other pairs handed to this one: deliver them to this pair's
    /// RX vring, then return their buffers.
    pub fn process_handoff(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        features: DataPathFeatures,
    ) {
        let mem = mem.memory();
        let mut state = vring.get_mut();
        let enabled = state.get_queue().ready() && state.is_enabled();
        self.peers.set_enabled(self.index, enabled);
        let Some(h) = self.peers.handoff(usize::from(self.index)) else {
            return;
        };
        h.consume_wake();
        let mut delivered = 0u64;
        let mut stop = None;
        // One batch per event, like the port's RX: if more wait, the
        // doorbell rings again and epoll brings this worker back after its
        // other events.
        for i in 0..=BATCH {
            if i == BATCH {
                if h.has_waiting() {
                    h.wake();
                }
                break;
            }
            let Some((buf, len)) = h.take() else { break };
            let frame = &buf[..len];
            if !enabled {
                self.tally.rx_drop_no_guest += 1;
            } else if self.rx_broken || stop.is_some() {
                self.tally.rx_bad_chain += 1;
            } else {
                let outcome = rx_one(
                    state.get_queue_mut(),
                    &mem,
                    frame,
                    features,
                    &mut self.segs,
                    &mut self.rx_segs,
                    &mut self.rx_chains,
                );
                stop = account(&mut self.tally, outcome, len, &mut delivered);
            }
            h.give_back(buf);
        }
        if let Some(e) = stop {
            self.break_vring(true, e);
        }
        if delivered > 0 {
            self.notify_guest(&mut state, RX_RING);
        }
    }

    /// The handoff eventfd (epoll: readable = frames from other pairs).
    pub fn handoff_fd(&self) -> Option<RawFd> {
        self.peers
            .handoff(usize::from(self.index))
            .map(|h| h.wake_fd())
    }

    /// Publishes whether this pair's RX vring is enabled (on its kick or
    /// enable event), so other pairs know where to hand frames.
    pub fn note_rx_vring(&mut self, vring: &VringRwLock) {
        let state = vring.get_ref();
        self.peers
            .set_enabled(self.index, state.get_queue().ready() && state.is_enabled());
    }

    fn break_vring(&mut self, rx: bool, why: VringStop) {
        let vring = if rx {
            2 * self.index
        } else {
            2 * self.index + 1
        };
        match why {
            VringStop::Broken(e) => {
                self.tally.bad_descriptor += 1;
                tracing::warn!(
                    queue_pair = self.index,
                    vring,
                    "malformed descriptor chain: {e}; vring stopped until reset"
                );
            }
            VringStop::BadAvailIndex => {
                self.tally.bad_avail_index += 1;
                tracing::warn!(
                    queue_pair = self.index,
                    vring,
                    "avail index moved past the ring; vring stopped until reset"
                );
            }
        }
        if rx {
            self.rx_broken = true;
        } else {
            self.tx_broken = true;
        }
    }

    /// Signals the guest about `ring` (RX_RING or TX_RING) if EVENT_IDX
    /// asks for it, or if it is the connection's first signal there (see
    /// `signal_on_start`; kept until the frontend has given a call fd).
    fn notify_guest(
        &mut self,
        state: &mut VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
        ring: usize,
    ) {
        // Always asked: it also resets the library's count of entries added.
        let needed = state.needs_notification().unwrap_or(true);
        let first = state.get_call().is_some()
            && self
                .signal_on_start
                .get_mut(ring)
                .is_some_and(std::mem::take);
        if (needed || first) && state.signal_used_queue().is_ok() {
            self.tally.guest_notifications += 1;
        }
    }

    // ---------------------------------------------------------------- TX

    /// Guest -> wire: move guest TX chains into UMEM frames and the XSK TX
    /// ring, in batches, until the guest's ring is empty, the socket is
    /// full (then a timer retries) or the round budget is used (then the
    /// worker yields to RX and resumes on the timer).
    pub fn process_tx(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
        features: DataPathFeatures,
    ) {
        let Some(port) = self.port.as_mut() else {
            // No socket: the chains wait in the guest's ring until one is
            // installed (the install wakes this worker).
            return;
        };
        port.reap_completions();
        let mem = mem.memory();
        let mut state = vring.get_mut();
        if !(state.get_queue().ready() && state.is_enabled()) || self.tx_broken {
            return;
        }
        let mut used_any = false;
        let mut rounds = 0;
        'notify: loop {
            let _ = state.get_queue_mut().disable_notification(&*mem);
            loop {
                let cap = self.port.as_mut().map_or(0, P::tx_capacity).min(BATCH);
                if cap == 0 {
                    // Keep the chains in the guest's ring; retry after
                    // completions have freed frames.
                    self.tally.tx_xsk_ring_full += 1;
                    self.arm_timer(TX_RETRY);
                    break 'notify;
                }
                let (ring_empty, used, stop) =
                    self.tx_batch(state.get_queue_mut(), &mem, features, cap);
                used_any |= used;
                if let Some(why) = stop {
                    self.break_vring(false, why);
                    break 'notify;
                }
                rounds += 1;
                if ring_empty {
                    break;
                }
                if rounds >= TX_ROUNDS {
                    if !self.polling {
                        self.arm_timer(TX_YIELD);
                    }
                    break 'notify;
                }
            }
            if self.polling {
                // The polling loop looks again soon: no kicks meanwhile.
                break;
            }
            // Re-arm guest kicks; if chains arrived meanwhile, go again.
            match state.get_queue_mut().enable_notification(&*mem) {
                Ok(true) if rounds < TX_ROUNDS => continue,
                Ok(true) => {
                    self.arm_timer(TX_YIELD);
                    break;
                }
                _ => break,
            }
        }
        if used_any {
            self.notify_guest(&mut state, TX_RING);
        }
    }

    /// One TX batch: at most `cap` chains popped, whatever becomes of
    /// them. Returns (guest ring empty, any used entry added, reason to
    /// stop the vring).
    fn tx_batch(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        features: DataPathFeatures,
        cap: usize,
    ) -> (bool, bool, Option<VringStop>) {
        let max_frame = self.max_tx_frame;
        let Self {
            port,
            segs,
            tx_heads,
            tally,
            work,
            link,
            index,
            ..
        } = self;
        let Some(port) = port.as_mut() else {
            return (true, false, None);
        };
        let sc = TxScratch {
            segs,
            tx_heads,
            tally,
            work,
            max_frame,
        };
        let out = match link.as_ref() {
            // One guest alone: every frame to the wire, nothing checked; this
            // instance is the single-guest path as it always was.
            None => tx_chains(port, queue, mem, features, cap, sc, &mut ToWire),
            Some(l) => {
                // One load of the switch's table per batch, no lock.
                let table = l.switch.load();
                let mut sw = Switching {
                    me: l.id,
                    guard: &l.guard,
                    table: &table,
                    queue: *index,
                    wakes: Wakes::new(),
                    counts: [0; 5],
                };
                let out = tx_chains(port, queue, mem, features, cap, sc, &mut sw);
                let [switched, flooded, dropped, spoofed, flood_dropped] = sw.counts;
                tally.tx_switched += switched;
                tally.tx_flooded += flooded;
                tally.tx_drop_switch += dropped;
                tally.tx_drop_spoofed += spoofed;
                tally.tx_flood_dropped += flood_dropped;
                // The other guests' workers, woken once per batch each.
                sw.wakes.wake_all();
                out
            }
        };
        if let Some(e) = out.dead {
            self.socket_failed(Some(e));
        }
        (out.ring_empty, out.used, out.stop)
    }
}

/// The queue pair's scratch and tally a TX batch works with.
struct TxScratch<'a> {
    segs: &'a mut Vec<Segment>,
    tx_heads: &'a mut Vec<u16>,
    tally: &'a mut Tally,
    work: &'a mut u64,
    max_frame: usize,
}

/// What a TX batch does with a frame once its bytes are in a UMEM frame:
/// let it go to the wire (`Ok`), or keep it from it (`Err`; the frame goes
/// back to the free list).
trait TxFilter {
    fn filter(&mut self, frame: &[u8]) -> Result<(), TxFill>;
}

/// One guest alone: everything goes to the wire.
struct ToWire;

impl TxFilter for ToWire {
    #[inline(always)]
    fn filter(&mut self, _frame: &[u8]) -> Result<(), TxFill> {
        Ok(())
    }
}

/// One guest of several: anti-spoofing and switching (`crate::switch`).
struct Switching<'t> {
    me: u32,
    guard: &'t TxGuard,
    table: &'t crate::switch::SwitchTable,
    queue: u16,
    /// The other guests' handoffs to wake after the batch (each once).
    wakes: Wakes<'t>,
    /// switched, flooded, unicast dropped, spoofed, flood copies dropped.
    counts: [u64; 5],
}

/// The handoffs a TX batch delivered to, each woken once after the batch:
/// a fixed array, so switching allocates nothing. A batch reaches at most
/// one pair of each other guest (its pair for this NIC queue), so
/// [`xdpath_common::MAX_GUESTS`] entries hold them; should a target pair
/// change mid-batch and the array fill up, the handoff is woken at once.
struct Wakes<'t> {
    set: [Option<&'t Handoff>; xdpath_common::MAX_GUESTS as usize],
    len: usize,
}

impl<'t> Wakes<'t> {
    fn new() -> Self {
        Self {
            set: [None; xdpath_common::MAX_GUESTS as usize],
            len: 0,
        }
    }

    /// Remembers `h` to wake after the batch, unless it is there already.
    fn add(&mut self, h: &'t Handoff) {
        let known = &self.set[..self.len];
        if known.iter().flatten().any(|w| std::ptr::eq(*w, h)) {
            return;
        }
        match self.set.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(h);
                self.len += 1;
            }
            None => h.wake(),
        }
    }

    /// Wakes every handoff remembered.
    fn wake_all(&self) {
        for h in self.set[..self.len].iter().flatten() {
            h.wake();
        }
    }
}

impl TxFilter for Switching<'_> {
    #[inline(never)]
    fn filter(&mut self, buf: &[u8]) -> Result<(), TxFill> {
        if let Err(why) = self.guard.check(buf) {
            tracing::trace!(pair = self.queue, ?why, "spoofed guest frame dropped");
            self.counts[3] += 1;
            return Err(TxFill::Spoofed);
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&buf[..6]);
        match self.table.route(self.me, &dst) {
            Route::Wire => Ok(()),
            Route::Local(to) => {
                let (ok, dropped) = offer(to, self.queue, buf, &mut self.wakes);
                self.counts[0] += ok;
                self.counts[2] += dropped;
                Err(TxFill::Switched)
            }
            Route::Flood => {
                for to in self.table.ports().iter().filter(|p| p.id != self.me) {
                    let (ok, dropped) = offer(to, self.queue, buf, &mut self.wakes);
                    self.counts[1] += ok;
                    self.counts[4] += dropped;
                }
                Ok(())
            }
        }
    }
}

/// One TX batch: at most `cap` chains popped, whatever becomes of them;
/// each frame's bytes are copied into a UMEM frame, then `filter` decides
/// whether it goes to the wire. Returns (guest ring empty, any used entry
/// added, reason to stop the vring).
///
/// Not inlined: each filter's instance is then one function as the single
/// batch loop was, and LLVM inlines the vring and guest-memory helpers
/// into it as before (inlined into `tx_batch` twice, the single-guest path
/// ran 13% more instructions per frame under callgrind).
#[inline(never)]
fn tx_chains<P: FramePort, F: TxFilter>(
    port: &mut P,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    features: DataPathFeatures,
    cap: usize,
    s: TxScratch<'_>,
    filter: &mut F,
) -> TxOutcome {
    let table = GuestAddress(queue.desc_table());
    let size = queue.size();
    let TxScratch {
        segs,
        tx_heads,
        tally,
        work,
        max_frame,
    } = s;
    tx_heads.clear();
    let mut used = false;
    let mut ring_empty = false;
    let mut stop = None;
    let mut batch = port.tx_batch();
    // Every chain popped counts against the batch, rejected ones too:
    // a guest that keeps its ring full of bad chains gets `cap` of them
    // looked at per batch, like good ones (docs/ARCHITECTURE.md,
    // Concurrency rules, rule 6).
    let mut popped = 0;
    while popped < cap {
        let head = match pop(queue, mem) {
            Ok(Some(h)) => {
                popped += 1;
                *work += 1;
                h
            }
            Ok(None) => {
                ring_empty = true;
                break;
            }
            Err(()) => {
                stop = Some(VringStop::BadAvailIndex);
                break;
            }
        };
        // One more than the queue size: the indirect descriptor and a
        // full table; the queue-size check (`TooLong`) comes first.
        let mut budget = u32::from(size) + 1;
        let info = match chain::walk(mem, table, size, head, features.indirect, &mut budget, segs) {
            Ok(info) => info,
            Err(e) => {
                stop = Some(VringStop::Broken(e));
                break;
            }
        };
        // Rejected chains are returned to the guest at once (used
        // length 0) and counted; the vring goes on.
        let reject = if info.writable > 0 {
            Some(&mut tally.tx_drop_write_only)
        } else if info.readable <= HDR_LEN as u64 {
            Some(&mut tally.tx_drop_empty)
        } else if info.readable - (HDR_LEN as u64) < ETH_HLEN as u64 {
            Some(&mut tally.tx_drop_short)
        } else if info.readable - HDR_LEN as u64 > max_frame as u64 {
            Some(&mut tally.tx_drop_oversize)
        } else {
            None
        };
        if let Some(counter) = reject {
            *counter += 1;
            used |= queue.add_used(mem, head, 0).is_ok();
            continue;
        }
        let len = (info.readable - HDR_LEN as u64) as usize;
        let pushed = batch.push(len, |buf| {
            chain::read_into(mem, segs, HDR_LEN, buf).map_err(TxFill::Broken)?;
            filter.filter(buf)
        });
        match pushed {
            Push::Staged => {
                tx_heads.push(head);
                tally.tx_bytes += len as u64;
            }
            Push::NoFrame => {
                queue.go_to_previous_position();
                break;
            }
            Push::TooLong => {
                tally.tx_drop_oversize += 1;
                used |= queue.add_used(mem, head, 0).is_ok();
            }
            Push::Failed(TxFill::Switched | TxFill::Spoofed) => {
                used |= queue.add_used(mem, head, 0).is_ok();
            }
            Push::Failed(TxFill::Broken(e)) => {
                stop = Some(VringStop::Broken(e));
                break;
            }
        }
    }
    let mut dead = None;
    let staged = batch.len() as u64;
    match batch.commit() {
        Ok(w) => {
            tally.xsk_tx_wakeups += w;
            tally.tx_frames += staged;
        }
        Err(e) => dead = Some(e),
    }
    // The frames were copied: the guest may reuse its buffers now.
    for &head in tx_heads.iter() {
        used |= queue.add_used(mem, head, 0).is_ok();
    }
    TxOutcome {
        ring_empty,
        used,
        stop,
        dead,
    }
}

/// What one TX batch did ([`tx_chains`]).
struct TxOutcome {
    /// The guest's ring is empty.
    ring_empty: bool,
    /// A used entry was added.
    used: bool,
    /// Why the vring stops, if it does.
    stop: Option<VringStop>,
    /// The socket died on commit (the frames are lost with it; their
    /// chains were returned all the same so the guest does not stall).
    dead: Option<std::io::Error>,
}

/// Offers `frame` to local guest `to` (see [`crate::switch::deliver`]);
/// remembers its handoff in `wakes` (once) to wake after the batch.
/// Returns (delivered, dropped) as counts.
fn offer<'t>(
    to: &'t crate::switch::Port,
    queue: u16,
    frame: &[u8],
    wakes: &mut Wakes<'t>,
) -> (u64, u64) {
    match deliver(to, queue, frame) {
        Some(h) => {
            wakes.add(h);
            (1, 0)
        }
        None => (0, 1),
    }
}

/// Outcome of delivering one frame.
enum RxOne {
    Delivered,
    NoBuffer,
    Oversize,
}

/// Counts the outcome of delivering one frame of `len` bytes; returns the
/// reason to stop the vring, if any.
fn account(
    tally: &mut Tally,
    outcome: Result<RxOne, VringStop>,
    len: usize,
    delivered: &mut u64,
) -> Option<VringStop> {
    match outcome {
        Ok(RxOne::Delivered) => {
            *delivered += 1;
            tally.rx_frames += 1;
            tally.rx_bytes += len as u64;
            None
        }
        Ok(RxOne::NoBuffer) => {
            tally.rx_drop_no_guest_buffer += 1;
            None
        }
        Ok(RxOne::Oversize) => {
            tally.rx_drop_oversize += 1;
            None
        }
        Err(e) => {
            tally.rx_drop_no_guest_buffer += 1;
            Some(e)
        }
    }
}

/// Pops the next available chain head; `Err` if the avail index is bogus.
fn pop(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<u16>, ()> {
    let mut it = queue.iter(mem).map_err(|_| ())?;
    Ok(it.next().map(|c| c.head_index()))
}

/// Chains popped for one frame. Unless committed, dropping it puts them
/// back in the avail ring (xdpilone-style reserve/commit).
struct RxReservation<'q> {
    queue: &'q mut Queue,
    popped: usize,
}

impl Drop for RxReservation<'_> {
    fn drop(&mut self) {
        for _ in 0..self.popped {
            self.queue.go_to_previous_position();
        }
    }
}

/// Delivers one frame: reserve enough RX chains (one, or several with
/// mergeable buffers), write header and frame across them, commit.
fn rx_one(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    features: DataPathFeatures,
    segs: &mut Vec<Segment>,
    all_segs: &mut Vec<Segment>,
    chains: &mut Vec<(u16, usize, usize)>,
) -> Result<RxOne, VringStop> {
    let need = (HDR_LEN + frame.len()) as u64;
    let table = GuestAddress(queue.desc_table());
    let size = queue.size();
    all_segs.clear();
    chains.clear();
    let mut res = RxReservation { queue, popped: 0 };
    let mut cap = 0u64;
    // One budget for all the chains of this frame, and a cap on their
    // number: the work per frame is bounded whatever the guest posts.
    let mut budget = chain::MAX_DESCS_PER_FRAME;
    while cap < need {
        if res.popped >= chain::MAX_CHAINS_PER_FRAME {
            return Err(VringStop::Broken(ChainError::TooManyChains));
        }
        let Some(head) = pop(res.queue, mem).map_err(|()| VringStop::BadAvailIndex)? else {
            return Ok(RxOne::NoBuffer);
        };
        res.popped += 1;
        let info = chain::walk(mem, table, size, head, features.indirect, &mut budget, segs)
            .map_err(VringStop::Broken)?;
        if info.readable > 0 || info.writable == 0 {
            // RX buffers must be device-writable only.
            return Err(VringStop::Broken(ChainError::WrongDirection));
        }
        if !features.mrg_rxbuf && info.writable < need {
            return Ok(RxOne::Oversize);
        }
        let start = all_segs.len();
        all_segs.extend_from_slice(segs);
        chains.push((head, start, all_segs.len()));
        cap += info.writable;
    }
    // Commit: from here the chains are used.
    let queue = &mut *res.queue;
    res.popped = 0;
    let hdr = rx_header(chains.len() as u16);
    let mut stream: [&[u8]; 2] = [&hdr, frame];
    for &(head, s, e) in chains.iter() {
        let written =
            chain::write_from(mem, &all_segs[s..e], &stream).map_err(VringStop::Broken)?;
        // Advance the (header, frame) stream by what this chain took.
        let mut left = written as usize;
        for part in stream.iter_mut() {
            let t = left.min(part.len());
            *part = &part[t..];
            left -= t;
        }
        queue
            .add_used(mem, head, written)
            .map_err(|_| VringStop::Broken(ChainError::UsedRing))?;
    }
    Ok(RxOne::Delivered)
}

#[cfg(test)]
mod tests {
    //! The data path on an in-memory port and a mock guest: the same
    //! `process_rx` / `process_tx` the AF_XDP path runs, checked byte for
    //! byte.

    use super::*;
    use crate::bench_support::{MockGuest, MockVring};
    use crate::mem_port::MemPort;

    const NO_MRG: DataPathFeatures = DataPathFeatures {
        mrg_rxbuf: false,
        indirect: false,
    };
    const MRG: DataPathFeatures = DataPathFeatures {
        mrg_rxbuf: true,
        indirect: false,
    };

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn pair(port: MemPort) -> QueuePair<MemPort> {
        let peers = Arc::new(Peers::new(1, 2048).expect("handoff eventfd"));
        QueuePair::new(0, port, 1500, peers).expect("timerfd")
    }

    fn setup() -> (MockGuest, MockVring) {
        let mut guest = MockGuest::new(4 << 20).expect("guest memory");
        let vq = guest.vring(256, true).expect("vring");
        (guest, vq)
    }

    #[test]
    fn rx_frames_reach_the_guest_with_header_and_exact_bytes() {
        let (mut guest, mut rxq) = setup();
        let bufs = guest.post_rx(&mut rxq, 8, 2048).expect("post RX");
        let frames = [frame(60, 1), frame(1500, 2), frame(64, 3)];
        let mut port = MemPort::new(64, 64, 2048).expect("eventfd");
        for f in &frames {
            assert!(port.push_rx(f));
        }
        let mut qp = pair(port);
        qp.process_rx(rxq.vring(), guest.memory(), NO_MRG);

        let used = rxq.take_used().expect("used ring");
        assert_eq!(used.len(), frames.len());
        for (i, ((head, len), f)) in used.iter().zip(&frames).enumerate() {
            assert_eq!(*head, bufs[i].0, "chains are used in order");
            assert_eq!(*len as usize, HDR_LEN + f.len());
            let got = guest.read(bufs[i].1, *len as usize).expect("read");
            assert_eq!(got[..HDR_LEN], rx_header(1), "virtio-net header");
            assert_eq!(&got[HDR_LEN..], &f[..], "frame {i}");
        }
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!(c.rx_frames, 3);
        assert_eq!(c.rx_bytes, 60 + 1500 + 64);
        assert_eq!(c.guest_notifications, 1);
        assert_eq!(rxq.take_interrupts(), 1, "one interrupt per batch");
        let port = qp.port().expect("port").counts();
        assert_eq!((port.rx_consumed, port.rx_released), (3, 3));
    }

    /// A backend killed between adding used entries and signalling them
    /// leaves the guest's `used_event` behind; EVENT_IDX alone would then
    /// never signal again. A new connection's first delivery signals
    /// anyway, once; later ones follow EVENT_IDX again.
    #[test]
    fn a_new_connection_signals_the_guest_even_if_event_idx_lags_behind() {
        let (mut guest, mut rxq) = setup();
        guest.post_rx(&mut rxq, 8, 2048).expect("post RX");
        let mut qp = pair(MemPort::new(64, 64, 2048).expect("eventfd"));
        let mut deliver = |qp: &mut QueuePair<MemPort>, seed: u8| {
            assert!(qp.port_mut().expect("port").push_rx(&frame(60, seed)));
            qp.process_rx(rxq.vring(), guest.memory(), NO_MRG);
            assert_eq!(rxq.take_used().expect("used ring").len(), 1);
            rxq.take_interrupts()
        };
        // used_event is 0 (never updated by the guest): the first entry
        // crosses it, the next ones do not.
        assert_eq!(deliver(&mut qp, 1), 1);
        assert_eq!(deliver(&mut qp, 2), 0, "EVENT_IDX suppresses");
        qp.begin_connection();
        assert_eq!(deliver(&mut qp, 3), 1, "a new connection signals once");
        assert_eq!(deliver(&mut qp, 4), 0, "then EVENT_IDX again");
    }

    #[test]
    fn rx_frames_merge_across_small_buffers_and_drop_without_buffers() {
        let (mut guest, mut rxq) = setup();
        let bufs = guest.post_rx(&mut rxq, 3, 1024).expect("post RX");
        let frames = [frame(1500, 9), frame(100, 8), frame(100, 7)];
        let mut port = MemPort::new(64, 64, 2048).expect("eventfd");
        for f in &frames {
            assert!(port.push_rx(f));
        }
        let mut qp = pair(port);
        qp.process_rx(rxq.vring(), guest.memory(), MRG);

        // 12 + 1500 bytes over two 1024-byte buffers; the second frame gets
        // the third buffer; the third frame finds none and is dropped.
        let used = rxq.take_used().expect("used ring");
        assert_eq!(
            used,
            [(bufs[0].0, 1024), (bufs[1].0, 488), (bufs[2].0, 112)]
        );
        let mut got = guest.read(bufs[0].1, 1024).expect("read");
        got.extend(guest.read(bufs[1].1, 488).expect("read"));
        assert_eq!(got[..HDR_LEN], rx_header(2), "num_buffers = 2");
        assert_eq!(&got[HDR_LEN..], &frames[0][..]);
        let got = guest.read(bufs[2].1, 112).expect("read");
        assert_eq!(
            (&got[..HDR_LEN], &got[HDR_LEN..]),
            (&rx_header(1)[..], &frames[1][..])
        );
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!((c.rx_frames, c.rx_bytes), (2, 1600));
        assert_eq!(c.rx_drop_no_guest_buffer, 1);
        assert_eq!(qp.port().expect("port").counts().rx_released, 3);
    }

    #[test]
    fn guest_tx_chains_reach_the_port_byte_exact() {
        let (mut guest, mut txq) = setup();
        let hdr = [0u8; HDR_LEN];
        let frames = [frame(64, 4), frame(1500, 5), frame(1514, 6)];
        let mut heads = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            heads.push(
                guest
                    .post_tx(&mut txq, &hdr, f, i % 2 == 1)
                    .expect("post TX"),
            );
        }
        // Larger than MTU + Ethernet + VLAN: returned unsent and counted.
        let big = guest
            .post_tx(&mut txq, &hdr, &frame(1519, 0), false)
            .expect("post TX");
        let mut qp = pair(MemPort::new(0, 64, 2048).expect("eventfd"));
        qp.process_tx(txq.vring(), guest.memory(), NO_MRG);

        let port = qp.port().expect("port");
        let sent: Vec<&[u8]> = port.tx_completed().collect();
        assert_eq!(sent.len(), frames.len());
        for (i, (s, f)) in sent.iter().zip(&frames).enumerate() {
            assert_eq!(*s, &f[..], "frame {i}");
        }
        let mut used = txq.take_used().expect("used ring");
        used.sort_unstable();
        let mut want: Vec<(u16, u32)> = heads.iter().chain([&big]).map(|&h| (h, 0)).collect();
        want.sort_unstable();
        assert_eq!(used, want, "every chain goes back to the guest");
        assert_eq!(port.counts().tx_frames, 3);
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!((c.tx_frames, c.tx_bytes), (3, 64 + 1500 + 1514));
        assert_eq!(c.tx_drop_oversize, 1);
        assert_eq!(c.guest_notifications, 1);

        // The next call reaps the completions: the frames are free again.
        qp.process_tx(txq.vring(), guest.memory(), NO_MRG);
        assert_eq!(qp.port().expect("port").tx_free(), 64);
    }

    fn eth_frame(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], seed: u8) -> Vec<u8> {
        let mut f = frame(98, seed);
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[26..30].copy_from_slice(&src_ip);
        f
    }

    /// Several guests: a frame to another local guest's MAC goes into that
    /// guest's inbox and not to the wire; a broadcast goes to both; a
    /// spoofed frame to neither; anything else to the wire only.
    #[test]
    fn guest_tx_is_switched_flooded_or_refused_by_destination_and_source() {
        use crate::switch::{GuestSwitch, Port, SwitchTable, TxGuard};
        let (mac1, mac2, mac3) = (
            [0x52, 0x54, 0, 0, 0, 1],
            [0x52, 0x54, 0, 0, 0, 2],
            [0x52, 0x54, 0, 0, 0, 3],
        );
        let ip1 = [10, 0, 0, 1];
        let switch = Arc::new(GuestSwitch::new());
        let peers1 = Arc::new(Peers::new(1, 2048).unwrap());
        let peers2 = Arc::new(Peers::new(1, 2048).unwrap());
        let peers3 = Arc::new(Peers::new(1, 2048).unwrap());
        peers2.set_enabled(0, true);
        // Guest 3 is known but not connected: what goes to it is dropped.
        switch.publish(SwitchTable::new(vec![
            Port {
                id: 1,
                mac: mac1,
                peers: peers1.clone(),
            },
            Port {
                id: 2,
                mac: mac2,
                peers: peers2.clone(),
            },
            Port {
                id: 3,
                mac: mac3,
                peers: peers3.clone(),
            },
        ]));
        let (mut guest, mut txq) = setup();
        let hdr = [0u8; HDR_LEN];
        let to2 = eth_frame(mac2, mac1, ip1, 1);
        let bcast = eth_frame([0xff; 6], mac1, ip1, 2);
        let out = eth_frame([0x02, 0, 0, 0, 0, 9], mac1, ip1, 3);
        let spoof_mac = eth_frame(mac2, [0x02, 0, 0, 0, 0, 7], ip1, 4);
        let spoof_ip = eth_frame(out[..6].try_into().unwrap(), mac1, [10, 0, 0, 66], 5);
        let to3 = eth_frame(mac3, mac1, ip1, 6);
        for f in [&to2, &bcast, &out, &spoof_mac, &spoof_ip, &to3] {
            guest.post_tx(&mut txq, &hdr, f, false).expect("post TX");
        }
        let mut qp = QueuePair::new(0, MemPort::new(0, 64, 2048).unwrap(), 1500, peers1).unwrap();
        qp.set_link(Some(GuestLink {
            id: 1,
            switch,
            guard: TxGuard::new(mac1, &[std::net::IpAddr::from(ip1)]),
        }));
        qp.process_tx(txq.vring(), guest.memory(), NO_MRG);

        let sent: Vec<Vec<u8>> = qp
            .port()
            .unwrap()
            .tx_completed()
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(
            sent,
            [bcast.clone(), out],
            "the wire gets the broadcast and the foreign MAC"
        );
        let h2 = peers2.handoff(0).unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| h2.take())
            .map(|(b, n)| b[..n].to_vec())
            .collect();
        assert_eq!(
            got,
            [to2, bcast],
            "guest 2 gets its unicast and the broadcast"
        );
        assert!(peers3.handoff(0).unwrap().take().is_none());
        assert_eq!(txq.take_used().unwrap().len(), 6, "every chain goes back");
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!(
            (
                c.tx_frames,
                c.tx_switched,
                c.tx_flooded,
                c.tx_drop_switch,
                c.tx_drop_spoofed,
                c.tx_flood_dropped
            ),
            (2, 1, 1, 1, 2, 1),
            "guest 3's unicast and broadcast copy are dropped: not connected"
        );
    }

    /// Issue 11, #1: rejected chains count against the batch. A ring whose
    /// every entry is the same header-only chain gives one call
    /// `TX_ROUNDS * BATCH` chains, not the whole ring (before the fix: all
    /// 1024, and as many more as a guest re-posts meanwhile).
    #[test]
    fn tx_pops_at_most_its_budget_of_rejected_chains_per_call() {
        let mut guest = MockGuest::new(4 << 20).expect("guest memory");
        let mut txq = guest.vring(1024, true).expect("vring");
        let hdr = guest.alloc(HDR_LEN as u64, 64).expect("alloc");
        let head = txq
            .add_chain(&[(hdr, HDR_LEN as u32, false)])
            .expect("chain");
        for _ in 0..1024 {
            txq.make_available(head).expect("avail");
        }
        let mut qp = pair(MemPort::new(0, 64, 2048).expect("eventfd"));
        qp.process_tx(txq.vring(), guest.memory(), NO_MRG);
        let used = txq.take_used().expect("used ring");
        assert_eq!(used.len(), TX_ROUNDS * BATCH);
        assert!(
            qp.timer_armed,
            "the worker yields and comes back on its timer"
        );
        qp.flush_counters();
        assert_eq!(
            qp.counters().snapshot().tx_drop_empty,
            (TX_ROUNDS * BATCH) as u64
        );
    }

    /// Guest frames shorter than an Ethernet header are dropped and
    /// counted; one of exactly 14 bytes goes out.
    #[test]
    fn tx_frames_shorter_than_an_ethernet_header_are_dropped_and_counted() {
        let (mut guest, mut txq) = setup();
        let hdr = [0u8; HDR_LEN];
        for len in [1, 13, 14] {
            guest
                .post_tx(&mut txq, &hdr, &frame(len, 1), len == 13)
                .expect("post TX");
        }
        let mut qp = pair(MemPort::new(0, 64, 2048).expect("eventfd"));
        qp.process_tx(txq.vring(), guest.memory(), NO_MRG);
        let sent: Vec<&[u8]> = qp.port().expect("port").tx_completed().collect();
        assert_eq!(sent, [&frame(14, 1)[..]]);
        assert_eq!(txq.take_used().expect("used").len(), 3, "all returned");
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!((c.tx_drop_short, c.tx_frames, c.tx_drop_empty), (2, 1, 0));
    }

    /// Issue 11, #3: RX chains that share descriptors and pad them with
    /// empty buffers. Every avail entry names the same chain of 1024
    /// descriptors, 1023 empty and one of a single byte: a 1500-byte frame
    /// needs 1512 such chains. Before the fix the worker walked all 1024
    /// chains the ring offered (about a million descriptors) and grew its
    /// scratch vectors to a million segments for one frame; now the
    /// frame's descriptor budget stops it after `MAX_DESCS_PER_FRAME`, the
    /// vring stops (counted) and the scratch does not grow.
    #[test]
    fn rx_work_per_frame_is_bounded_whatever_the_chains_look_like() {
        let mut guest = MockGuest::new(8 << 20).expect("guest memory");
        let mut rxq = guest.vring(1024, true).expect("vring");
        let buf = guest.alloc(64, 64).expect("alloc");
        let mut descs = vec![(buf, 0, true); 1023];
        descs.push((buf, 1, true));
        let head = rxq.add_chain(&descs).expect("chain");
        for _ in 0..1024 {
            rxq.make_available(head).expect("avail");
        }
        let mut port = MemPort::new(64, 64, 2048).expect("eventfd");
        assert!(port.push_rx(&frame(1500, 1)));
        assert!(port.push_rx(&frame(60, 2)));
        let mut qp = pair(port);
        let scratch = (qp.segs.capacity(), qp.rx_segs.capacity());
        qp.process_rx(rxq.vring(), guest.memory(), MRG);
        assert_eq!(
            (qp.segs.capacity(), qp.rx_segs.capacity()),
            scratch,
            "the scratch vectors did not grow"
        );
        assert!(rxq.take_used().expect("used").is_empty());
        assert!(qp.rx_broken);
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!(
            (c.bad_descriptor, c.rx_frames, c.rx_drop_no_guest_buffer),
            (1, 0, 2)
        );
    }

    /// The chain cap: single-byte RX chains (no empty buffers, so the
    /// descriptor budget is not what stops it) would give a 60-byte frame
    /// 72 chains; it may take at most `MAX_CHAINS_PER_FRAME`. A frame
    /// spread over three chains, as real guests do, still arrives.
    #[test]
    fn a_frame_takes_at_most_the_chain_cap() {
        let (mut guest, mut rxq) = setup();
        let bufs = guest.post_rx(&mut rxq, 3, 700).expect("post RX");
        let mut port = MemPort::new(64, 64, 2048).expect("eventfd");
        let big = frame(1514, 3);
        assert!(port.push_rx(&big));
        let mut qp = pair(port);
        qp.process_rx(rxq.vring(), guest.memory(), MRG);
        let used = rxq.take_used().expect("used");
        assert_eq!(used, [(bufs[0].0, 700), (bufs[1].0, 700), (bufs[2].0, 126)]);

        guest.post_rx(&mut rxq, 100, 1).expect("post RX");
        assert!(qp.port_mut().expect("port").push_rx(&frame(60, 4)));
        qp.process_rx(rxq.vring(), guest.memory(), MRG);
        assert!(rxq.take_used().expect("used").is_empty());
        assert!(qp.rx_broken);
        qp.flush_counters();
        let c = qp.counters().snapshot();
        assert_eq!((c.rx_frames, c.bad_descriptor), (1, 1));
    }
}
