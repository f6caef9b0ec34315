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
use xdpath_dataplane::bench_support::rig::{BatchRig, Case};
use xdpath_dataplane::port::BATCH;

/// Measures `rig.step()` alone, `reset` before each call untimed.
fn measure(rig: &mut BatchRig, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        rig.reset().expect("reset the rig");
        let t = Instant::now();
        rig.step();
        total += t.elapsed();
    }
    total
}

fn bench(c: &mut Criterion, group: &str, cases: &[(&str, Case)]) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH as u64));
    for &(name, case) in cases {
        let mut rig = BatchRig::new(case).expect("the rig");
        rig.check().expect("one call moves a full batch");
        g.bench_function(name, |b| b.iter_custom(|iters| measure(&mut rig, iters)));
    }
    g.finish();
}

fn bench_rx(c: &mut Criterion) {
    let rx = |frame_len, buf_len, mrg_rxbuf| Case::Rx {
        frame_len,
        buf_len,
        mrg_rxbuf,
    };
    bench(
        c,
        "rx_batch",
        &[
            ("64B/no_mrg", rx(64, 1536, false)),
            ("64B/mrg", rx(64, 1536, true)),
            ("1500B/no_mrg", rx(1500, 1536, false)),
            ("1500B/mrg", rx(1500, 1536, true)),
            ("1500B/mrg_1024", rx(1500, 1024, true)),
        ],
    );
}

fn bench_tx(c: &mut Criterion) {
    let tx = |frame_len, split| Case::Tx { frame_len, split };
    bench(
        c,
        "tx_batch",
        &[
            ("64B/1desc", tx(64, false)),
            ("64B/2desc", tx(64, true)),
            ("1500B/1desc", tx(1500, false)),
            ("1500B/2desc", tx(1500, true)),
        ],
    );
}

criterion_group!(benches, bench_rx, bench_tx);
criterion_main!(benches);
