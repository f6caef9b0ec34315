//! Counter definitions for userspace: the names every counter is shown
//! under (CLI columns, JSON fields, metric names) come from here and only
//! from here, so renaming a counter is a compile error wherever it is shown
//! by name rather than a blank column.
//!
//! - The classifier's per-CPU block [`Counters`] (defined
//!   with the other kernel-shared types) gets [`Counters::NAMES`] and
//!   [`Counters::fields`]. They are generated from an exhaustive destructuring
//!   of the struct, so a field added to `Counters` and not listed here does
//!   not compile.
//! - The per-queue-pair counters of the dataplane's workers are defined
//!   here by the `counters!` macro: [`QueueCounters`] (the atomics one
//!   worker writes), [`Tally`] (what one batch adds) and [`CounterSnapshot`]
//!   (what anyone reads), with their names and help texts.
//!
//! This module exists only with the `std` feature: the XDP program builds
//! this crate without it.
//!
//! Ownership (see docs/ARCHITECTURE.md, concurrency rules): each queue
//! pair's worker is the only writer of its [`QueueCounters`]; it adds a
//! [`Tally`] once per batch (no atomic per frame). Anyone may read a
//! [`CounterSnapshot`] at any time; values are monotonic but fields of one
//! snapshot may be a batch apart.

use crate::Counters;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Gives a plain struct of `u64` counters its names and a name/value view.
/// The destructuring has no `..`, so the list must name every field.
macro_rules! named_fields {
    ($ty:ident { $($name:ident),* $(,)? }) => {
        impl $ty {
            /// The counters' names, in declaration order.
            pub const NAMES: [&'static str; [$(stringify!($name)),*].len()] =
                [$(stringify!($name)),*];

            /// Name and value of every counter, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); Self::NAMES.len()] {
                let $ty { $($name),* } = *self;
                [$((stringify!($name), $name)),*]
            }
        }
    };
}

named_fields!(Counters {
    frames,
    action_host,
    action_guest,
    action_drop,
    class_exact,
    class_prefix,
    class_mac,
    class_neigh,
    class_default,
    parse_errors,
    redirect_no_socket,
    redirects,
    meta_errors,
});

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Shared, atomically updated counters of one queue pair.
        #[derive(Debug, Default)]
        pub struct QueueCounters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// What one batch adds to [`QueueCounters`]; owned by the worker.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Tally {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// A point-in-time copy of [`QueueCounters`]; its JSON form (with
        /// the `serde` feature) is an object of these fields. A field the
        /// object lacks reads as 0, so a client knows a daemon from before
        /// a counter was added.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(default))]
        pub struct CounterSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl QueueCounters {
            /// Adds a batch's tally (called by the owning worker only, once
            /// per batch; inlined into the worker as when it lived there).
            #[inline]
            pub fn add(&self, t: &Tally) {
                $(if t.$name != 0 { self.$name.fetch_add(t.$name, Relaxed); })*
            }

            /// Reads all counters.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl CounterSnapshot {
            /// The counters' names, in declaration order.
            pub const NAMES: [&'static str; [$(stringify!($name)),*].len()] =
                [$(stringify!($name)),*];

            /// Each counter's documentation, line by line (each without
            /// its leading space), in declaration order: help texts for
            /// metrics and API documents.
            pub const DOCS: [&'static [&'static str]; [$(stringify!($name)),*].len()] =
                [$(&[$(trim_doc($doc)),*]),*];

            /// Name and value of every counter, in declaration order (for
            /// tables and metrics).
            pub fn fields(&self) -> [(&'static str, u64); Self::NAMES.len()] {
                [$((stringify!($name), self.$name),)*]
            }
        }
    };
}

/// Strips the one leading space rustdoc keeps in `#[doc = " text"]`.
const fn trim_doc(s: &'static str) -> &'static str {
    match s.as_bytes() {
        [b' ', rest @ ..] => match core::str::from_utf8(rest) {
            Ok(t) => t,
            Err(_) => s,
        },
        _ => s,
    }
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
    /// Guest TX chains rejected: a frame shorter than an Ethernet header
    /// (14 bytes).
    tx_drop_short,
    /// Guest frames switched to another local guest (unicast to its MAC;
    /// they never reach the wire). Counted by the sender's pair. Every
    /// guest TX chain is exactly one of tx_frames, tx_switched or a
    /// tx_drop_ counter.
    tx_switched,
    /// Copies of guest broadcast and multicast frames given to the other
    /// local guests (the frame itself goes to the wire, in tx_frames).
    tx_flooded,
    /// Copies of broadcast and multicast frames another local guest could
    /// not take (not connected, or its inbox full); the frame itself went
    /// to the wire.
    tx_flood_dropped,
    /// Unicast frames for another local guest that it could not take (its
    /// frontend is not connected, or its inbox is full): dropped.
    tx_drop_switch,
    /// Guest frames dropped by anti-spoofing: a source MAC not the
    /// guest's, or a source IP / ARP sender not one of its addresses.
    tx_drop_spoofed,
    /// Times TX stopped because no UMEM frame or XSK TX slot was free; the
    /// chains stay in the guest's ring and are retried (not dropped).
    tx_xsk_ring_full,
    /// Malformed descriptors: index out of range, loop or chain longer than
    /// the ring, bad indirect table, address outside guest memory, or an RX
    /// frame that would need more chains or descriptors than the per-frame
    /// limit. The queue is marked broken (NEEDS_RESET) and stops until it
    /// is reset.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_fields() {
        let c = Counters {
            frames: 1,
            meta_errors: 13,
            ..Counters::default()
        };
        let f = c.fields();
        assert_eq!(f.len(), Counters::NAMES.len());
        assert_eq!(f[0], ("frames", 1));
        assert_eq!(f[12], ("meta_errors", 13));
        let t = Tally {
            rx_frames: 3,
            xdp_tx_ring_empty: 9,
            ..Tally::default()
        };
        let q = QueueCounters::default();
        q.add(&t);
        q.add(&t);
        let s = q.snapshot();
        assert_eq!(s.fields()[0], ("rx_frames", 6));
        assert_eq!(
            s.fields()[CounterSnapshot::NAMES.len() - 1],
            ("xdp_tx_ring_empty", 18)
        );
        assert_eq!(
            CounterSnapshot::DOCS[0],
            ["Frames delivered to the guest (wire -> guest)."]
        );
        assert_eq!(CounterSnapshot::DOCS[3].len(), 2);
        assert!(CounterSnapshot::DOCS
            .iter()
            .all(|d| !d.is_empty() && d.iter().all(|l| !l.starts_with(' '))));
    }
}
