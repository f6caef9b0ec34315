//! The vhost-user-net device, as seen by one frontend connection.
//!
//! A [`NetBackend`] lives for one connection (the server builds a fresh one
//! per frontend). It offers the virtio-net features and vhost-user protocol
//! features, serves the config space, and routes every epoll event of a
//! worker thread to that thread's [`QueuePair`]:
//!
//! | event id              | source                         | action        |
//! |-----------------------|--------------------------------|---------------|
//! | 0                     | kick of RX vring 2i            | deliver RX    |
//! | 1                     | kick of TX vring 2i+1          | transmit      |
//! | `num_queues + 1`      | port fd (XSK) readable         | deliver RX    |
//! | `num_queues + 2`      | TX retry timer                 | transmit      |
//! | `num_queues + 3`      | handoff inbox (other pairs)    | deliver RX    |
//!
//! (vhost-user-backend numbers vring events by their position inside the
//! thread's `queues_per_thread` mask, and reserves ids up to `num_queues`.)
//!
//! Shared state, all small and named: the guest memory (`GuestMemoryAtomic`,
//! a snapshot swap; each batch takes one snapshot), the negotiated features
//! (one atomic), the queue pairs (one mutex each, taken once per event by
//! their own worker only), the exit eventfds of this connection's workers.
//! The running connection's [`Connection`] (first error, shutdown, worker
//! epoll handlers) is shared with the server and its handle.
//!
//! [`NetBackend`] and [`Connection`] are generic over the queue pairs'
//! [`FramePort`], like everything above the port (see [`crate::port`]).

use crate::port::FramePort;
use crate::queue_pair::{DataPathFeatures, QueueMailbox, QueuePair};
use crate::virtio_net::{config_space, offered_features};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{ShutdownHandle, VringEpollHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// Device-level settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Queue pairs the device has (1..=16): one per NIC queue, each with
    /// its worker and its AF_XDP port. The vhost-user queue count
    /// (GET_QUEUE_NUM) is twice this.
    pub queue_pairs: u16,
    /// Queue pairs offered to the guest's driver (1..=`queue_pairs`): the
    /// config space's `max_virtqueue_pairs`. A frontend that reads it
    /// enables at most this many; frames arriving on the other pairs' NIC
    /// queues reach the enabled pairs through the handoff, as for any pair
    /// the guest leaves disabled. A frontend told to use more (QEMU's own
    /// `queues=` does not read the config space) still gets them served.
    pub offered_pairs: u16,
    /// MAC address in the config space (VIRTIO_NET_F_MAC), if any.
    pub mac: Option<[u8; 6]>,
    /// MTU in the config space (VIRTIO_NET_F_MTU).
    pub mtu: u16,
    /// Largest vring size accepted.
    pub max_queue_size: u16,
    /// Adaptive polling ([`QueuePair::poll_while_busy`]): after an event
    /// that moved frames, a worker keeps serving its pair until nothing has
    /// moved for this long (0 = purely event driven). Idle pairs never
    /// poll.
    pub poll_idle: std::time::Duration,
    /// The guest among several: its id, the switch of all local guests
    /// and its anti-spoofing policy (`None`: one guest, every TX frame to
    /// the wire, no checks).
    pub link: Option<crate::queue_pair::GuestLink>,
}

/// Default of [`NetConfig::poll_idle`].
pub const DEFAULT_POLL_IDLE: std::time::Duration = std::time::Duration::from_micros(50);
/// Longest a worker polls before it looks at epoll again.
const POLL_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// Event id of the port's fd (the XSK), relative to `num_queues`.
pub const XSK_EVENT_OFFSET: u16 = 1;
/// Event id of the TX retry timer, relative to `num_queues`.
pub const TIMER_EVENT_OFFSET: u16 = 2;
/// Event id of the handoff inbox, relative to `num_queues`.
pub const HANDOFF_EVENT_OFFSET: u16 = 3;

/// The epoll handler of one worker of a connection.
pub type WorkerHandler<P> = Arc<VringEpollHandler<Arc<NetBackend<P>>>>;

/// State of the current connection shared between the server, its handle
/// and the workers: the first worker error, how to end the connection
/// (the library's shutdown handle, and the frontend's socket under the
/// relay), and the workers' epoll handlers (to add an fd to a running
/// worker).
pub struct Connection<P: FramePort> {
    first_error: Mutex<Option<String>>,
    shutdown: Mutex<Option<ShutdownHandle>>,
    frontend: Mutex<Option<std::os::unix::net::UnixStream>>,
    handlers: Mutex<Vec<WorkerHandler<P>>>,
}

impl<P: FramePort> Default for Connection<P> {
    fn default() -> Self {
        Self {
            first_error: Mutex::new(None),
            shutdown: Mutex::new(None),
            frontend: Mutex::new(None),
            handlers: Mutex::new(Vec::new()),
        }
    }
}

impl<P: FramePort> Connection<P> {
    /// Records `err` if it is the first, and ends the connection: every
    /// worker then stops and is joined by the server, in order.
    pub fn fail(&self, err: String) {
        tracing::error!("{err}; stopping all workers");
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(err);
        self.end();
    }

    /// Ends the connection (if any): the library's side, and the
    /// frontend's socket, so the relay ends even in the middle of a
    /// message.
    pub fn end(&self) {
        if let Some(h) = self
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            h.shutdown();
        }
        if let Some(s) = self
            .frontend
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sets (or clears) the frontend's socket (a clone of the relay's).
    pub fn set_frontend(&self, s: Option<std::os::unix::net::UnixStream>) {
        *self.frontend.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }

    /// Takes the first recorded worker error.
    pub fn take_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Sets (or clears) what the running connection consists of.
    pub fn set(&self, shutdown: Option<ShutdownHandle>, handlers: Vec<WorkerHandler<P>>) {
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner) = shutdown;
        *self.handlers.lock().unwrap_or_else(PoisonError::into_inner) = handlers;
    }

    /// Whether a connection (and so a set of workers) is running.
    pub fn is_running(&self) -> bool {
        !self
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Removes `fd` from the epoll of worker `qp`, if a connection runs.
    pub fn remove_fd(&self, qp: usize, fd: RawFd, id: u64) {
        let handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = handlers.get(qp) {
            let _ = h.unregister_listener(fd, EventSet::IN, id);
        }
    }

    /// Adds `fd` to the epoll of worker `qp`, if a connection runs.
    /// Returns whether a worker took it.
    pub fn add_fd(&self, qp: usize, fd: RawFd, id: u64) -> io::Result<bool> {
        let handlers = self.handlers.lock().unwrap_or_else(PoisonError::into_inner);
        match handlers.get(qp) {
            Some(h) => h.register_listener(fd, EventSet::IN, id).map(|()| true),
            None => Ok(false),
        }
    }
}

/// The device for one frontend connection.
pub struct NetBackend<P: FramePort> {
    cfg: NetConfig,
    pairs: Vec<Arc<Mutex<QueuePair<P>>>>,
    /// The pairs' mailboxes, reachable without their mutex.
    mailboxes: Vec<Arc<QueueMailbox<P>>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    acked: AtomicU64,
    conn: Arc<Connection<P>>,
    /// Raw fds of the exit-event consumers handed to vhost-user-backend,
    /// which registers them in its epoll and never closes them. The server
    /// closes them once this connection's workers are joined.
    exit_consumers: Mutex<Vec<RawFd>>,
}

impl<P: FramePort> std::fmt::Debug for NetBackend<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<P: FramePort> NetBackend<P> {
    /// A device over `pairs` (one per queue pair, in order) and the
    /// connection's guest memory.
    pub fn new(
        cfg: NetConfig,
        pairs: Vec<Arc<Mutex<QueuePair<P>>>>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        conn: Arc<Connection<P>>,
    ) -> Self {
        let mailboxes = pairs
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).mailbox())
            .collect();
        Self {
            cfg,
            pairs,
            mailboxes,
            mem,
            acked: AtomicU64::new(0),
            conn,
            exit_consumers: Mutex::new(Vec::new()),
        }
    }

    fn num_queues_u16(&self) -> u16 {
        2 * self.cfg.queue_pairs
    }

    fn features_in_use(&self) -> DataPathFeatures {
        let acked = self.acked.load(Ordering::Relaxed);
        DataPathFeatures {
            mrg_rxbuf: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            indirect: acked & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0,
        }
    }

    /// Closes the exit-event fds of this connection's (joined) workers.
    pub fn close_exit_fds(&self) {
        let fds = std::mem::take(
            &mut *self
                .exit_consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for fd in fds {
            // SAFETY: each fd is a dup we created in `exit_event`, which
            // vhost-user-backend took with into_raw_fd() and never closes;
            // its epoll is gone (the workers were joined), so we own it.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
    }
}

impl<P: FramePort> VhostUserBackend for NetBackend<P> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.num_queues_u16())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.cfg.max_queue_size)
    }

    fn features(&self) -> u64 {
        offered_features(self.cfg.mac.is_some())
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Not CONFIGURE_MEM_SLOTS: with it QEMU 7.2 updates the memory table
        // region by region while the guest boots, and vhost-user-backend
        // 0.24 refuses the sequence ("memory regions intersect"); whole
        // tables (SET_MEM_TABLE) work with every frontend.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend already applies EVENT_IDX to every vring.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = config_space(self.cfg.mac, self.cfg.offered_pairs, self.cfg.mtu);
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // The handler swapped the snapshot inside the atomic we share; the
        // workers take a fresh snapshot every batch.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.cfg.queue_pairs)
            .map(|i| 0b11u64 << (2 * i))
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let efd =
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).ok()?;
        let consumer = efd.try_clone().ok()?;
        let notifier = efd.try_clone().ok()?;
        let consumer_fd = std::os::fd::IntoRawFd::into_raw_fd(consumer);
        self.exit_consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(consumer_fd);
        let notifier_fd = std::os::fd::IntoRawFd::into_raw_fd(notifier);
        // SAFETY: both fds are fresh dups of an eventfd that we own; each
        // wrapper takes sole ownership of its fd.
        Some(unsafe {
            (
                EventConsumer::from_raw_fd(consumer_fd),
                EventNotifier::from_raw_fd(notifier_fd),
            )
        })
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // A message to the owning worker: it clears the vring's broken
        // state between batches (the frontend is resetting the vring).
        if let Some(mailbox) = self.mailboxes.get((queue_index / 2) as usize) {
            if queue_index.is_multiple_of(2) {
                mailbox.reset_rx.store(true, Ordering::Release);
            } else {
                mailbox.reset_tx.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let (Some(pair), [rx, tx]) = (self.pairs.get(thread_id), vrings) else {
            tracing::error!(thread_id, "event for an unknown worker; ignored");
            return Ok(());
        };
        let features = self.features_in_use();
        let nq = self.num_queues_u16();
        let mut qp = pair.lock().unwrap_or_else(PoisonError::into_inner);
        if qp.apply_mailbox() {
            qp.process_tx(tx, &self.mem, features);
        }
        if device_event == nq + XSK_EVENT_OFFSET
            && evset.intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            // The interface under the socket is gone. Closing the port
            // takes it out of this epoll; the connection ends in order.
            qp.socket_failed(None);
        }
        match device_event {
            0 => {
                qp.note_rx_vring(rx);
                qp.process_rx(rx, &self.mem, features);
            }
            1 => qp.process_tx(tx, &self.mem, features),
            e if e == nq + XSK_EVENT_OFFSET => qp.process_rx(rx, &self.mem, features),
            e if e == nq + TIMER_EVENT_OFFSET => {
                qp.timer_fired();
                qp.process_tx(tx, &self.mem, features);
            }
            e if e == nq + HANDOFF_EVENT_OFFSET => qp.process_handoff(rx, &self.mem, features),
            other => tracing::debug!(thread_id, event = other, "unexpected event; ignored"),
        }
        qp.poll_while_busy(rx, tx, &self.mem, features, self.cfg.poll_idle, POLL_MAX);
        qp.flush_counters();
        if let Some(err) = qp.take_failure() {
            drop(qp);
            self.conn.fail(err);
        }
        // Errors are never returned: vhost-user-backend would end this
        // worker thread silently. Data path faults are counted instead.
        Ok(())
    }
}
