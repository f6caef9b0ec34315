//! What a queue pair needs of its frame port, as a trait.
//!
//! A [`FramePort`] is the wire side of one queue pair: an RX ring the
//! worker takes received frames from and gives them back to, and a TX side
//! it reserves frames of, fills and commits. [`crate::xsk::XskPort`] (an
//! AF_XDP socket) is the real one; [`crate::mem_port::MemPort`] is an
//! in-memory double for unit tests and benchmarks that need no root and no
//! NIC.
//!
//! Ownership: a port belongs to exactly one queue-pair worker, which calls
//! every method here; nothing is shared, so nothing locks. Frames named by
//! a [`FramePort::Desc`] belong to the worker between `rx_consume` and
//! `rx_release` (RX) and between a [`TxBatch::push`] and the batch's
//! commit or drop (TX); otherwise they belong to the port (or its kernel).
//!
//! [`crate::queue_pair::QueuePair`] is generic over the port, so the real
//! path is monomorphized for `XskPort`: no dynamic dispatch per frame.

use crate::xsk::XdpStats;
use std::io;
use std::os::fd::RawFd;

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
pub trait FramePort {
    /// Names one frame of the port's buffer memory (for `XskPort`, xsk-rs's
    /// `FrameDesc`). `Default` is a placeholder for scratch arrays.
    type Desc: Copy + Default;

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

    /// The kernel's XDP_STATISTICS for this port.
    fn stats(&self) -> io::Result<XdpStats>;

    /// Why the port failed (for the failure report).
    fn socket_error(&self) -> io::Error;

    /// The fd to poll for received frames, or -1 if the port has none.
    fn fd(&self) -> RawFd;
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
