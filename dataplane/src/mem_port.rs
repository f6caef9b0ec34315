//! An in-memory [`FramePort`]: the test and benchmark double of an AF_XDP
//! socket. No syscalls, no root, no NIC.
//!
//! A [`MemPort`] owns one byte arena cut into frames the way a UMEM is
//! (`frame_size` bytes each, data after [`XDP_PACKET_HEADROOM`]), split
//! once into RX frames and TX frames:
//!
//! - RX: the test plays the wire with [`MemPort::push_rx`] (copy a frame
//!   into a free RX frame and queue it on the RX ring). The queue pair
//!   consumes, reads and releases frames exactly as it does on an
//!   `XskPort`; released frames return to the fill list. A benchmark
//!   re-queues the frames released so far with [`MemPort::rx_replay`],
//!   which redelivers the same bytes without copying them again.
//! - TX: the queue pair reserves, fills and commits frames through the
//!   same [`crate::port::TxBatch`] as on an `XskPort`. A commit hands the
//!   frames to the "wire", which completes them at once: they wait on the
//!   completion list (readable with [`MemPort::tx_completed`]) until the
//!   next `reap_completions` returns them to the free list.
//!
//! Like every port, a `MemPort` belongs to one queue-pair worker; it does
//! not lock.

use crate::port::{FramePort, Push};
use crate::xsk::{XdpStats, XDP_PACKET_HEADROOM};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

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

/// An in-memory port (see the module documentation).
pub struct MemPort {
    arena: Box<[u8]>,
    frame_size: usize,
    max_frame_len: usize,
    /// Received frames waiting for `rx_consume`.
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
}

impl std::fmt::Debug for MemPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPort")
            .field("rx_queued", &self.rx_ring.len())
            .field("tx_free", &self.tx_free.len())
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl MemPort {
    /// A port of `rx_frames` RX frames and `tx_frames` TX frames of
    /// `frame_size` bytes each (2048 or 4096, like a UMEM).
    ///
    /// # Panics
    /// If `frame_size` is not larger than the headroom, or the frame count
    /// does not fit a `u32`.
    pub fn new(rx_frames: usize, tx_frames: usize, frame_size: usize) -> Self {
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
        Self {
            arena: vec![0u8; total * frame_size].into_boxed_slice(),
            frame_size,
            max_frame_len: frame_size - XDP_PACKET_HEADROOM,
            rx_ring: VecDeque::with_capacity(rx_frames),
            fill,
            tx_free,
            staged: Vec::with_capacity(tx_frames),
            completed: Vec::with_capacity(tx_frames),
            counts: MemPortCounts::default(),
        }
    }

    fn offset(&self, frame: u32) -> usize {
        frame as usize * self.frame_size + XDP_PACKET_HEADROOM
    }

    fn bytes(&self, d: &MemDesc) -> &[u8] {
        let off = self.offset(d.frame);
        &self.arena[off..off + d.len as usize]
    }

    /// The wire delivers `frame`: it is copied into a free RX frame and
    /// queued on the RX ring. False (nothing queued) if no RX frame is
    /// free or the frame is empty or longer than `max_frame_len`.
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

    /// The wire delivers again, in the same order, every frame released
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

    /// Frames queued on the RX ring, not yet consumed.
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
}

impl FramePort for MemPort {
    type Desc = MemDesc;

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn rx_consume(&mut self, descs: &mut [MemDesc]) -> usize {
        let n = descs.len().min(self.rx_ring.len());
        for (slot, d) in descs.iter_mut().zip(self.rx_ring.drain(..n)) {
            *slot = d;
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
        self.counts.tx_commits += 1;
        self.counts.tx_frames += self.staged.len() as u64;
        self.counts.tx_bytes += self.staged.iter().map(|d| u64::from(d.len)).sum::<u64>();
        self.completed.append(&mut self.staged);
        Ok(0)
    }

    fn tx_abort(&mut self) {
        self.tx_free.extend(self.staged.drain(..).map(|d| d.frame));
    }

    fn stats(&self) -> io::Result<XdpStats> {
        Ok(XdpStats::default())
    }

    fn socket_error(&self) -> io::Error {
        io::Error::other("an in-memory port has no socket")
    }

    fn fd(&self) -> RawFd {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_frames_cycle_and_replay() {
        let mut p = MemPort::new(2, 0, 2048);
        assert!(p.push_rx(b"one"));
        assert!(p.push_rx(b"two"));
        assert!(!p.push_rx(b"three"), "no free RX frame");
        assert!(!p.push_rx(&[0; 2048 - 255]), "too long");
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
        let mut p = MemPort::new(0, 2, 2048);
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
}
