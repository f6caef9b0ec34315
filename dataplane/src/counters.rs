//! Per-queue-pair counters.
//!
//! The counters are defined once, in `xdpath_common::counters` (names, help
//! texts, the per-batch [`Tally`] and the [`CounterSnapshot`] anyone reads),
//! so the CLI, the API and the metrics show them under the same names
//! without depending on the dataplane. This module adds what only the
//! dataplane knows: storing the kernel's XDP_STATISTICS.
//!
//! Each queue pair's worker is the only writer of its [`QueueCounters`]:
//! it accumulates into a plain [`Tally`] during a batch and adds the tally
//! to the atomics once per batch (no atomic per frame). Anyone may read a
//! [`CounterSnapshot`] at any time without stopping the worker; values are
//! monotonic but fields of one snapshot may be a batch apart.

use std::sync::atomic::Ordering::Relaxed;
pub use xdpath_common::counters::{CounterSnapshot, Tally};

/// Shared, atomically updated counters of one queue pair: the common
/// definition (`add`, `snapshot` and the fields through `Deref`) plus
/// [`QueueCounters::set_xdp_stats`].
#[derive(Debug, Default)]
pub struct QueueCounters(xdpath_common::counters::QueueCounters);

impl std::ops::Deref for QueueCounters {
    type Target = xdpath_common::counters::QueueCounters;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
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
