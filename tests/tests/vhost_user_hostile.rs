//! Hostile guests and frontends against the vhost-user server, without
//! root: the real `Server`, relay and workers over in-memory ports
//! ([`MemBridge`]), driven by the in-repo frontend or by hand-made
//! vhost-user messages. Each test names the defect of issue 11 it guards
//! and shows that the server stays responsive: other traffic flows, stop
//! completes, the next frontend is served.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::bridge::{to_guest, MemBridge, WAIT};
use xdpath_tests::frontend::FrontendOptions;
use xdpath_tests::wait_until;

/// Frames the wire offers the guest during the flood, and at what rate.
const FLOOD_FRAMES: u64 = 20_000;
const FLOOD_RATE: u64 = 10_000;

/// Issue 11, #1: a guest that keeps its TX ring full of chains the backend
/// rejects (a lone virtio-net header) must not pin its worker. Before the
/// fix rejected chains did not count against the batch, so the worker
/// never left its TX loop: it read none of the frames the wire offered
/// meanwhile and `stop` never completed.
#[test]
fn a_tx_ring_full_of_rejected_chains_neither_starves_rx_nor_blocks_stop() {
    let mut b = MemBridge::new(1);
    let mut fe = b.connect(FrontendOptions {
        queue_size: 1024,
        ..FrontendOptions::default()
    });
    assert_eq!(fe.post_rx_buffers(0, 512, 2048), 512);
    let flood = fe.flood_tx(0).expect("flood");
    assert!(
        wait_until(WAIT, || flood.published() > 100_000),
        "the backend consumes the flood ({} chains)",
        flood.published()
    );

    // The wire offers FLOOD_RATE frames per second to the same guest,
    // which reads and re-posts its buffers all along.
    let published_before = flood.published();
    let done = AtomicBool::new(false);
    let offered = AtomicU64::new(0);
    let mut received = 0u64;
    let queue = b.queue(0).clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            for i in 0..FLOOD_FRAMES {
                let due = start + Duration::from_micros(i * 1_000_000 / FLOOD_RATE);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // A frame the queue refuses (its backlog full) is unread too.
                queue.inject(&to_guest(0, i as u32, 64));
                offered.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Release);
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let finished = done.load(Ordering::Acquire);
            let got = fe.recv(0, 256, Duration::from_millis(20));
            received += got.len() as u64;
            fe.post_rx_buffers(0, got.len(), 2048);
            let all = received >= offered.load(Ordering::Relaxed);
            // After the wire is done: until everything arrived, or nothing
            // more does for a second.
            if finished && (all || got.is_empty() && !drain_more(&mut fe, &mut received)) {
                break;
            }
            assert!(Instant::now() < deadline, "the test ran for 30 s");
        }
    });
    let flooded = flood.published() - published_before;
    let offered = offered.into_inner();
    assert_eq!(offered, FLOOD_FRAMES);
    let unread = offered - received.min(offered);
    assert!(
        unread * 100 <= offered,
        "{unread} of {offered} frames offered during the flood were never read \
         (at most 1% may be); the backend took {flooded} flooding chains meanwhile"
    );
    eprintln!(
        "{received} of {offered} frames read while the backend took {flooded} flooding chains"
    );
    assert!(
        flooded > 10 * offered,
        "the flood went on all along: {flooded} chains"
    );

    // Stop during the flood: the worker returns to its epoll and is joined.
    let asked = Instant::now();
    b.handle.stop();
    let result = b.server_result(WAIT);
    assert!(
        result.is_some(),
        "stop did not complete within {WAIT:?} during the flood"
    );
    assert!(result.is_some_and(|r| r.is_ok()));
    eprintln!("stop completed in {:?} during the flood", asked.elapsed());
    let c = b.counters(0);
    assert!(c.tx_drop_empty > flooded, "{c:?}");
    assert_eq!((c.tx_frames, c.rx_frames), (0, received), "{c:?}");
    drop(flood);
}

/// Waits up to a second for more frames; false if none came.
fn drain_more(fe: &mut xdpath_tests::frontend::TestFrontend, received: &mut u64) -> bool {
    let got = fe.recv(0, 256, Duration::from_secs(1));
    *received += got.len() as u64;
    fe.post_rx_buffers(0, got.len(), 2048);
    !got.is_empty()
}

#[allow(dead_code)]
fn raw(sock: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.flush().expect("flush");
    s
}
