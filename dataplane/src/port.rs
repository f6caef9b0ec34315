//! What a queue pair needs of its frame port, as traits, and the few facts
//! every port shares.
//!
//! A [`FramePort`] is the wire side of one queue pair: an RX ring the
//! worker takes received frames from and gives them back to, a TX side it
//! reserves frames of, fills and commits, and an fd that is readable while
//! received frames wait. [`crate::xsk::XskPort`] (an AF_XDP socket) is the
//! real one; [`crate::mem_port::MemPort`] is an in-memory double for tests
//! and benchmarks that need no root and no NIC. A [`PortFactory`] opens a
//! fresh port on a queue, for socket replacement and for each guest's own
//! port on a queue ([`crate::xsk::XskFactory`],
//! [`crate::mem_port::MemFactory`]).
//!
//! This module also owns what the ports and the queue pair share: the batch
//! size ([`BATCH`]), the headroom in front of every received frame
//! ([`XDP_PACKET_HEADROOM`]) and the port statistics ([`PortStats`]). It
//! depends on no port and on no queue pair.
//!
//! Ownership: a port belongs to exactly one queue-pair worker, which calls
//! every [`FramePort`] method (a port is an owned `Send + 'static` value:
//! the control plane opens it and hands it over). What a port shares with
//! other ports is its own business and never locks per frame: the
//! `XskPort`s of one NIC queue share the queue's UMEM state behind one
//! lock taken at most once per batch operation ([`crate::xsk`]);
//! `MemPort`s share nothing but their wire queue. Frames named by a [`FramePort::Desc`] belong to the worker
//! between `rx_consume` and `rx_release` (RX) and between a
//! [`TxBatch::push`] and the batch's commit or drop (TX); otherwise they
//! belong to the port (or its kernel).
//!
//! Everything above the port ([`crate::queue_pair::QueuePair`],
//! [`crate::backend::NetBackend`], [`crate::server::Server`]) is generic
//! over it, so the real path is monomorphized for `XskPort`: no dynamic
//! dispatch per frame.

use std::io;
use std::os::fd::AsFd;

/// Frames per batch: what a worker takes from a port (and from a guest
/// vring) at most per round, and the kernel's busy-poll budget.
pub const BATCH: usize = 64;

/// Headroom in front of every received frame in a port's buffer memory
/// (the kernel's XDP_PACKET_HEADROOM; `MemPort` lays out its frames the
/// same way).
pub const XDP_PACKET_HEADROOM: usize = 256;

/// A port's drop statistics, laid out as the kernel's
/// `struct xdp_statistics` (AF_XDP's XDP_STATISTICS socket option fills
/// it directly). Ports without a kernel report zeros.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Dropped for reasons other than invalid descriptors.
    pub rx_dropped: u64,
    /// Dropped due to invalid descriptors.
    pub rx_invalid_descs: u64,
    /// Dropped due to invalid descriptors.
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// Outcome of [`TxBatch::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Push<E> {
    /// The frame was filled and staged.
    Staged,
    /// No free frame: retry after completions.
    NoFrame,
    /// `len` exceeds the port's frame; nothing was reserved.
    TooLong,
    /// The fill closure failed; the frame went back to the free list.
    Failed(E),
}

/// The wire side of a queue pair (see the module documentation).
///
/// The `tx_*` methods below `tx_capacity` are the raw steps of a TX batch;
/// callers use them through [`TxBatch`] ([`FramePort::tx_batch`]), which
/// guarantees that frames staged but not committed return to the port.
///
/// [`AsFd`]: the fd a worker polls; it is readable while received frames
/// wait for `rx_consume` (an AF_XDP socket, or `MemPort`'s eventfd), and it
/// names the port in the classifier's XSKMAP.
pub trait FramePort: AsFd + Send + 'static {
    /// Names one frame of the port's buffer memory (for `XskPort`, xsk-rs's
    /// `FrameDesc`). `Default` is a placeholder for scratch arrays.
    type Desc: Copy + Default + Send;

    /// Largest frame (Ethernet header included) one port frame holds.
    fn max_frame_len(&self) -> usize;

    /// Takes up to `descs.len()` received frames from the RX ring; returns
    /// how many were written to the front of `descs`.
    fn rx_consume(&mut self, descs: &mut [Self::Desc]) -> usize;

    /// The bytes of a frame returned by `rx_consume` and not yet released.
    fn rx_data(&self, desc: &Self::Desc) -> &[u8];

    /// Gives consumed RX frames back (to the fill ring).
    fn rx_release(&mut self, descs: &[Self::Desc]);

    /// Takes back frames the wire has finished sending; returns how many.
    fn reap_completions(&mut self) -> usize;

    /// How many frames a TX batch can stage right now.
    fn tx_capacity(&mut self) -> usize;

    /// Reserves a frame of `len` bytes, lets `fill` write all of it and
    /// stages it for the next [`FramePort::tx_commit`]. On any outcome but
    /// [`Push::Staged`] the frame (if one was reserved) is free again.
    fn tx_push<E>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Push<E>;

    /// Frames staged and not yet committed.
    fn tx_staged(&self) -> usize;

    /// Hands the staged frames to the wire; returns the kernel wake-ups
    /// made, or the error of a dead socket (the frames are then lost).
    fn tx_commit(&mut self) -> io::Result<u64>;

    /// Returns staged, uncommitted frames to the free list.
    fn tx_abort(&mut self);

    /// Starts a TX batch (reserve, fill, commit; drop returns the frames).
    fn tx_batch(&mut self) -> TxBatch<'_, Self>
    where
        Self: Sized,
    {
        debug_assert_eq!(self.tx_staged(), 0);
        TxBatch { port: self }
    }

    /// The port's drop statistics (the kernel's XDP_STATISTICS for an
    /// AF_XDP socket).
    fn stats(&self) -> io::Result<PortStats>;

    /// Why the port failed (for the failure report).
    fn socket_error(&self) -> io::Error;
}

/// Opens ports on queues: how the control plane replaces a queue pair's
/// port (close the old one, open a new one on the same queue). A factory
/// may open several live ports on one queue (one per guest: each
/// `XskFactory` open is a new socket sharing the queue's UMEM; each
/// `MemFactory::for_guest` factory opens that guest's port).
pub trait PortFactory {
    /// The ports it opens.
    type Port: FramePort;
    /// Why opening failed; a queue still held by a closing port is an
    /// error the caller may retry.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a fresh port on `queue`; whether it may coexist with another
    /// live port of this factory on the queue is the factory's rule.
    fn open(&self, queue: u32) -> Result<Self::Port, Self::Error>;
}

/// A TX batch in the xdpilone style: reserve a frame, fill it, and either
/// `commit` the batch or drop it, which returns every staged frame to the
/// port's free list.
pub struct TxBatch<'a, P: FramePort> {
    port: &'a mut P,
}

impl<P: FramePort> TxBatch<'_, P> {
    /// Reserves one frame of `len` bytes and lets `fill` write all of it.
    #[inline]
    pub fn push<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Push<E> {
        self.port.tx_push(len, fill)
    }

    /// Frames staged so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.port.tx_staged()
    }

    /// True when nothing was staged.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands the staged frames to the wire; returns the wake-ups made, or
    /// the error of a dead socket.
    #[inline]
    pub fn commit(self) -> io::Result<u64> {
        if self.is_empty() {
            return Ok(0);
        }
        self.port.tx_commit()
    }
}

impl<P: FramePort> Drop for TxBatch<'_, P> {
    fn drop(&mut self) {
        // Uncommitted frames go back to the free list (no-op after commit).
        self.port.tx_abort();
    }
}
