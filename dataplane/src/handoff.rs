//! Handing received frames to another queue pair's worker.
//!
//! A guest may enable fewer queue pairs than the device offers (a
//! one-vCPU Linux guest starts with one), while the NIC still spreads
//! frames over all its queues. The worker of a pair whose RX vring is
//! disabled does not touch another pair's vring (docs/ARCHITECTURE.md,
//! concurrency rules: changes are messages to the owner); it passes the
//! frame as a message to the worker of an enabled pair.
//!
//! Each pair owns one [`Handoff`]: an inbox (bounded lock-free queue of
//! filled buffers), a pool of empty buffers allocated once, and an eventfd
//! that wakes the owner. A producer takes a buffer from the target's pool,
//! copies the frame in, pushes it to the target's inbox and wakes it; the
//! owner delivers it to its own RX vring and returns the buffer to its
//! pool. A buffer belongs to exactly one side at any time, nothing is
//! allocated per frame, and a full pool means a counted drop, never a wait.
//!
//! [`Peers`] is the small shared table behind this: every pair's handoff
//! and a bitmask of RX vrings seen enabled, where each worker writes only
//! its own bit.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use vmm_sys_util::eventfd::EventFd;

/// Buffers per pair for frames handed over by other pairs.
pub const HANDOFF_SLOTS: usize = 256;

/// A frame in transit: its buffer and length.
pub type Parcel = (Box<[u8]>, usize);

/// The inbox and buffer pool of one queue pair.
pub struct Handoff {
    inbox: ArrayQueue<Parcel>,
    pool: ArrayQueue<Box<[u8]>>,
    wake: EventFd,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("queued", &self.inbox.len())
            .field("free", &self.pool.len())
            .finish()
    }
}

impl Handoff {
    /// Allocates the pool: `HANDOFF_SLOTS` buffers of `frame_len` bytes.
    pub fn new(frame_len: usize) -> std::io::Result<Self> {
        let pool = ArrayQueue::new(HANDOFF_SLOTS);
        for _ in 0..HANDOFF_SLOTS {
            let _ = pool.push(vec![0u8; frame_len].into_boxed_slice());
        }
        Ok(Self {
            inbox: ArrayQueue::new(HANDOFF_SLOTS),
            pool,
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Producer side: copies `frame` into a pooled buffer and queues it.
    /// Returns false (the caller counts a drop) if no buffer is free or
    /// the frame does not fit.
    pub fn offer(&self, frame: &[u8]) -> bool {
        let Some(mut buf) = self.pool.pop() else {
            return false;
        };
        if frame.len() > buf.len() {
            let _ = self.pool.push(buf);
            return false;
        }
        buf[..frame.len()].copy_from_slice(frame);
        match self.inbox.push((buf, frame.len())) {
            Ok(()) => true,
            Err((buf, _)) => {
                let _ = self.pool.push(buf);
                false
            }
        }
    }

    /// Producer side: wakes the owner (once per batch).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Owner side: the eventfd to register in the owner's epoll.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wake.as_raw_fd()
    }

    /// Owner side: clears the wake-up.
    pub fn consume_wake(&self) {
        let _ = self.wake.read();
    }

    /// Owner side: the next queued frame.
    pub fn take(&self) -> Option<Parcel> {
        self.inbox.pop()
    }

    /// Owner side: whether frames wait in the inbox.
    pub fn has_waiting(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// Owner side: returns a buffer to the pool.
    pub fn give_back(&self, buf: Box<[u8]>) {
        let _ = self.pool.push(buf);
    }
}

/// Shared by all queue pairs of a server.
#[derive(Debug)]
pub struct Peers {
    handoffs: Vec<Handoff>,
    /// Bit i: pair i's RX vring was enabled when its worker last looked.
    /// Written by worker i only (its own bit).
    rx_enabled: AtomicU64,
}

impl Peers {
    /// One handoff per pair.
    pub fn new(pairs: usize, frame_len: usize) -> std::io::Result<Self> {
        Ok(Self {
            handoffs: (0..pairs)
                .map(|_| Handoff::new(frame_len))
                .collect::<Result<_, _>>()?,
            rx_enabled: AtomicU64::new(0),
        })
    }

    /// Pair `i`'s handoff.
    pub fn handoff(&self, i: usize) -> Option<&Handoff> {
        self.handoffs.get(i)
    }

    /// Worker `i` publishes whether its RX vring is enabled.
    pub fn set_enabled(&self, i: u16, enabled: bool) {
        let bit = 1u64 << i;
        if enabled {
            self.rx_enabled.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.rx_enabled.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Whether any pair's RX vring was seen enabled (a frontend is
    /// connected and its driver is up).
    pub fn any_enabled(&self) -> bool {
        self.rx_enabled.load(Ordering::Acquire) != 0
    }

    /// How many pairs' RX vrings were seen enabled.
    pub fn enabled_count(&self) -> u16 {
        self.rx_enabled.load(Ordering::Acquire).count_ones() as u16
    }

    /// Forgets all enabled bits (a new frontend connection).
    pub fn reset(&self) {
        self.rx_enabled.store(0, Ordering::Release);
    }

    /// The enabled pair that takes over for disabled pair `i`: the
    /// `(i mod k)`-th of the k enabled pairs, so disabled pairs spread
    /// evenly. While no pair has published its state yet (a connection is
    /// starting), pair 0: virtio-net always uses receiveq1 once the driver
    /// is up, and pair 0's worker delivers or counts the drop itself.
    pub fn target_for(&self, i: u16) -> Option<usize> {
        let mask = self.rx_enabled.load(Ordering::Acquire);
        let k = mask.count_ones();
        if k == 0 {
            return (i != 0).then_some(0);
        }
        let mut nth = u32::from(i) % k;
        let mut m = mask;
        loop {
            let bit = m.trailing_zeros();
            if nth == 0 {
                return Some(bit as usize);
            }
            nth -= 1;
            m &= m - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_pairs_spread_over_enabled_ones() {
        let p = Peers::new(4, 64).unwrap();
        assert_eq!(
            (p.target_for(3), p.target_for(0)),
            (Some(0), None),
            "pair 0 until someone publishes"
        );
        p.set_enabled(0, true);
        assert_eq!((p.target_for(1), p.target_for(3)), (Some(0), Some(0)));
        p.set_enabled(2, true);
        assert_eq!((p.target_for(1), p.target_for(3)), (Some(2), Some(2)));
        assert_eq!(p.target_for(0), Some(0));
        p.set_enabled(0, false);
        assert_eq!(p.target_for(1), Some(2));
    }

    #[test]
    fn buffers_change_hands_and_come_back() {
        let h = Handoff::new(64).unwrap();
        for i in 0..HANDOFF_SLOTS {
            assert!(h.offer(&[i as u8; 10]), "slot {i}");
        }
        assert!(!h.offer(&[0; 10]), "pool exhausted: a counted drop");
        assert!(!Handoff::new(8).unwrap().offer(&[0; 9]), "too long");
        let (buf, len) = h.take().unwrap();
        assert_eq!((&buf[..len], len), (&[0u8; 10][..], 10));
        h.give_back(buf);
        assert!(h.offer(&[1; 3]));
    }
}
