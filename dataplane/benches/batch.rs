//! Worker batch micro-benchmarks, without root: one `QueuePair` on an
//! in-memory port (`MemPort`) and a mock guest (anonymous guest memory,
//! a 256-entry split vring behind vhost-user-backend's `VringRwLock`, with
//! EVENT_IDX and a call eventfd). The code measured is the real data path:
//! `process_rx` / `process_tx`, chain walks, copies, used ring, counters
//! and the guest notification (one eventfd write per batch, because the
//! mock guest asks for an interrupt every time).
//!
//! - `rx_batch/<len>/<mode>`: one `process_rx` delivering a full batch
//!   (64 frames of `len` bytes) into RX buffers of 1536 bytes, one
//!   descriptor each (what Linux posts), without (`no_mrg`) and with
//!   (`mrg`) VIRTIO_NET_F_MRG_RXBUF; `1500B/mrg_1024` gives each frame two
//!   1024-byte buffers (the merge path proper).
//! - `tx_batch/<len>/<layout>`: one `process_tx` moving 64 guest TX chains
//!   into the port, header and frame in one descriptor (`1desc`) or two
//!   (`2desc`).
//!
//! Before every measured call, untimed, the guest reposts the chains the
//! device used and the port redelivers (RX) or has completed (TX) the
//! frames, so each call sees a full ring and a full port. Throughput is in
//! frames. Run with
//! `cargo bench -p xdpath-dataplane --bench batch [-- <filter>]`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use xdpath_dataplane::bench_support::{MockGuest, MockVring};
use xdpath_dataplane::handoff::Peers;
use xdpath_dataplane::mem_port::MemPort;
use xdpath_dataplane::port::BATCH;
use xdpath_dataplane::queue_pair::{DataPathFeatures, QueuePair};
use xdpath_dataplane::virtio_net::HDR_LEN;

/// Entries of each vring.
const QUEUE: u16 = 256;
/// UMEM-like frame size of the port.
const FRAME_SIZE: usize = 2048;
/// Guest MTU (bounds TX frames).
const MTU: u16 = 1500;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn features(mrg_rxbuf: bool) -> DataPathFeatures {
    DataPathFeatures {
        mrg_rxbuf,
        indirect: false,
    }
}

fn queue_pair(port: MemPort) -> QueuePair<MemPort> {
    let peers = Peers::new(1, FRAME_SIZE).expect("handoff eventfd");
    QueuePair::new(0, port, MTU, peers.into()).expect("timerfd")
}

/// One worker and one guest vring.
struct Rig {
    guest: MockGuest,
    vq: MockVring,
    qp: QueuePair<MemPort>,
    features: DataPathFeatures,
}

impl Rig {
    /// RX: the guest posts a full ring of `buf_len`-byte buffers; the port
    /// holds one batch of `frame_len`-byte frames.
    fn rx(frame_len: usize, buf_len: u32, mrg_rxbuf: bool) -> Self {
        let mut guest = MockGuest::new(4 << 20).expect("guest memory");
        let mut vq = guest.vring(QUEUE, true).expect("vring");
        guest
            .post_rx(&mut vq, usize::from(QUEUE), buf_len)
            .expect("post RX buffers");
        let mut port = MemPort::new(BATCH, BATCH, FRAME_SIZE).expect("eventfd");
        for i in 0..BATCH {
            assert!(port.push_rx(&frame(frame_len, i as u8)), "load the port");
        }
        Self {
            guest,
            vq,
            qp: queue_pair(port),
            features: features(mrg_rxbuf),
        }
    }

    /// TX: the guest posts one batch of chains carrying `frame_len`-byte
    /// frames, header and frame in one descriptor or (`split`) two.
    fn tx(frame_len: usize, split: bool) -> Self {
        let mut guest = MockGuest::new(4 << 20).expect("guest memory");
        let mut vq = guest.vring(QUEUE, true).expect("vring");
        for i in 0..BATCH {
            guest
                .post_tx(&mut vq, &[0; HDR_LEN], &frame(frame_len, i as u8), split)
                .expect("post TX chain");
        }
        vq.request_interrupt().expect("used_event");
        Self {
            guest,
            vq,
            qp: queue_pair(MemPort::new(0, 4 * BATCH, FRAME_SIZE).expect("eventfd")),
            features: features(false),
        }
    }

    /// Untimed, before every call: the guest reposts what was used, the
    /// port redelivers what was released, the counters are published (as
    /// the backend does after every event).
    fn reset(&mut self) {
        self.vq.recycle().expect("recycle used chains");
        if let Some(p) = self.qp.port_mut() {
            p.rx_replay();
        }
        self.qp.flush_counters();
    }

    fn rx_batch(&mut self) {
        self.qp
            .process_rx(self.vq.vring(), self.guest.memory(), self.features);
    }

    fn tx_batch(&mut self) {
        self.qp
            .process_tx(self.vq.vring(), self.guest.memory(), self.features);
    }

    /// Runs `step` once and checks it moved a full batch (so the figures
    /// are never those of a drop path).
    fn check(&mut self, step: fn(&mut Self)) {
        let before = self.qp.counters().snapshot();
        self.reset();
        step(self);
        self.qp.flush_counters();
        let after = self.qp.counters().snapshot();
        let moved = (after.rx_frames - before.rx_frames) + (after.tx_frames - before.tx_frames);
        assert_eq!(moved, BATCH as u64, "one call moves a full batch");
        assert_eq!(after.guest_notifications - before.guest_notifications, 1);
        let drops = after.rx_drop_no_guest_buffer + after.rx_drop_oversize + after.tx_drop_oversize;
        assert_eq!(drops, 0, "nothing dropped");
    }

    /// Measures `step` alone, `reset` before each call untimed.
    fn measure(&mut self, iters: u64, step: fn(&mut Self)) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.reset();
            let t = Instant::now();
            step(self);
            total += t.elapsed();
        }
        total
    }
}

fn bench_rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("rx_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cases: [(&str, usize, u32, bool); 5] = [
        ("64B/no_mrg", 64, 1536, false),
        ("64B/mrg", 64, 1536, true),
        ("1500B/no_mrg", 1500, 1536, false),
        ("1500B/mrg", 1500, 1536, true),
        ("1500B/mrg_1024", 1500, 1024, true),
    ];
    for (name, frame_len, buf_len, mrg) in cases {
        let mut rig = Rig::rx(frame_len, buf_len, mrg);
        rig.check(Rig::rx_batch);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rig.measure(iters, Rig::rx_batch))
        });
    }
    g.finish();
}

fn bench_tx(c: &mut Criterion) {
    let mut g = c.benchmark_group("tx_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cases: [(&str, usize, bool); 4] = [
        ("64B/1desc", 64, false),
        ("64B/2desc", 64, true),
        ("1500B/1desc", 1500, false),
        ("1500B/2desc", 1500, true),
    ];
    for (name, frame_len, split) in cases {
        let mut rig = Rig::tx(frame_len, split);
        rig.check(Rig::tx_batch);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| rig.measure(iters, Rig::tx_batch))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_rx, bench_tx);
criterion_main!(benches);
