//! Per-queue-pair counters.
//!
//! Each queue pair's worker is the only writer of its [`QueueCounters`]:
//! it accumulates into a plain [`Tally`] during a batch and adds the tally
//! to the atomics once per batch (no atomic per frame). Anyone may read a
//! [`CounterSnapshot`] at any time without stopping the worker; values are
//! monotonic but fields of one snapshot may be a batch apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Shared, atomically updated counters of one queue pair.
        #[derive(Debug, Default)]
        pub struct QueueCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// What one batch adds to [`QueueCounters`]; owned by the worker.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Tally {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// A point-in-time copy of [`QueueCounters`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl QueueCounters {
            /// Adds a batch's tally (called by the owning worker only).
            pub fn add(&self, t: &Tally) {
                $(if t.$name != 0 { self.$name.fetch_add(t.$name, Relaxed); })*
            }

            /// Reads all counters.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl CounterSnapshot {
            /// Field names and values, in declaration order (for tables and
            /// metrics).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Frames delivered to the guest (wire -> guest).
    rx_frames,
    /// Bytes delivered to the guest, without the virtio-net header.
    rx_bytes,
    /// Frames dropped because the guest had posted no (or too few) RX buffers.
    rx_drop_no_guest_buffer,
    /// Frames dropped because no frontend was connected or the RX vring was
    /// not enabled.
    rx_drop_no_guest,
    /// Frames passed to another queue pair's worker because the guest has
    /// not enabled this pair's RX vring (delivered there, counted there as
    /// rx_frames).
    rx_handed_off,
    /// Frames dropped because they do not fit a single RX chain and
    /// mergeable buffers were not negotiated.
    rx_drop_oversize,
    /// Frames dropped because the RX vring is stopped after a malformed
    /// chain (see `bad_descriptor`), until the frontend resets it.
    rx_bad_chain,
    /// Frames sent to the wire (guest -> wire).
    tx_frames,
    /// Bytes sent to the wire.
    tx_bytes,
    /// Guest TX chains rejected: frame larger than MTU + headers.
    tx_drop_oversize,
    /// Guest TX chains rejected: a zero-length or empty chain.
    tx_drop_empty,
    /// Guest TX chains rejected: a device-writable buffer in a TX chain.
    tx_drop_write_only,
    /// Times TX stopped because no UMEM frame or XSK TX slot was free; the
    /// chains stay in the guest's ring and are retried (not dropped).
    tx_xsk_ring_full,
    /// Malformed descriptors: index out of range, loop or chain longer than
    /// the ring, bad indirect table, address outside guest memory. The
    /// queue is marked broken (NEEDS_RESET) and stops until it is reset.
    bad_descriptor,
    /// The avail index moved by more than the ring size.
    bad_avail_index,
    /// Guest notifications (interrupts) sent.
    guest_notifications,
    /// Kernel wake-ups (sendto) for the XSK TX ring.
    xsk_tx_wakeups,
    /// Worker batches run (RX and TX).
    batches,
    /// XDP_STATISTICS rx_dropped (kernel: RX ring full or bad frame).
    xdp_rx_dropped,
    /// XDP_STATISTICS rx_invalid_descs.
    xdp_rx_invalid_descs,
    /// XDP_STATISTICS tx_invalid_descs.
    xdp_tx_invalid_descs,
    /// XDP_STATISTICS rx_ring_full.
    xdp_rx_ring_full,
    /// XDP_STATISTICS rx_fill_ring_empty_descs (fill ring was empty).
    xdp_rx_fill_ring_empty,
    /// XDP_STATISTICS tx_ring_empty_descs.
    xdp_tx_ring_empty,
}

impl QueueCounters {
    /// Stores the kernel's XDP_STATISTICS (absolute values).
    pub fn set_xdp_stats(&self, s: &crate::port::PortStats) {
        self.xdp_rx_dropped.store(s.rx_dropped, Relaxed);
        self.xdp_rx_invalid_descs.store(s.rx_invalid_descs, Relaxed);
        self.xdp_tx_invalid_descs.store(s.tx_invalid_descs, Relaxed);
        self.xdp_rx_ring_full.store(s.rx_ring_full, Relaxed);
        self.xdp_rx_fill_ring_empty
            .store(s.rx_fill_ring_empty_descs, Relaxed);
        self.xdp_tx_ring_empty.store(s.tx_ring_empty_descs, Relaxed);
    }
}
