//! The races the seed documents are about, exercised on purpose: frontends
//! connecting and disconnecting in a loop (some mid-traffic) while the
//! wire keeps sending on every queue, the memory table is re-sent and RX
//! vrings are disabled and re-enabled while their workers poll. Afterwards
//! the process has exactly the fds and threads it had before (no leaked
//! worker, epoll, eventfd or socket), and the server still bridges traffic.
//!
//! One test in its own binary, so nothing else running in this process
//! moves the counts. Bounded in rounds and time. Needs root (marked ignored).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_tests::bridge::{from_guest, to_guest, Bridge, WAIT};
use xdpath_tests::frontend::FrontendOptions;
use xdpath_tests::process::{assert_back_to, fd_list, reconnect_session, threads};
use xdpath_tests::{require_root, wait_until};

const ROUNDS: u64 = 16;
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn frontends_come_and_go_under_traffic_without_leaks() {
    require_root();
    let mut b = Bridge::new(2);
    let mut wire = std::mem::take(&mut b.wire_tx);
    // Warm-up: one full session, so lazily created process state (thread
    // pools of libraries, logging) is in the baseline.
    reconnect_session(0, |o| b.connect(o));
    assert!(wait_until(WAIT, || b.handle.connections() == 1));
    std::thread::sleep(Duration::from_millis(300));
    let fds0 = fd_list();
    let threads0 = threads();

    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            // The wire: both queues, until the loop ends (bounded anyway).
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 200_000 && start.elapsed() < DEADLINE {
                for (q, tx) in wire.iter_mut().enumerate() {
                    let frames = [to_guest(q as u16, i, 64), to_guest(q as u16, i + 1, 64)];
                    if tx.send(&frames, Duration::from_secs(2)).is_ok() {
                        sent.fetch_add(2, Ordering::Relaxed);
                    }
                }
                i += 2;
            }
        });
        for round in 1..=ROUNDS {
            if start.elapsed() > DEADLINE {
                break;
            }
            reconnect_session(round, |o| b.connect(o));
            assert!(
                wait_until(WAIT, || b.handle.connections() == round + 1),
                "round {round}: the server did not take the frontend"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let rounds = b.handle.connections() - 1;
    assert!(rounds >= 8, "only {rounds} rounds in {DEADLINE:?}");
    assert!(sent.load(Ordering::Relaxed) > 0, "the wire sent nothing");

    // The last connection is torn down asynchronously: wait for the counts
    // to come back, then compare exactly.
    assert_back_to(&format!("after {rounds} sessions"), &fds0, threads0);

    // Still serving: a new frontend gets traffic both ways.
    let mut fe = b.connect(FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        ..FrontendOptions::default()
    });
    fe.post_rx_buffers(1, 64, 2048);
    let f = to_guest(1, 424242, 64);
    wire[1].send(std::slice::from_ref(&f), WAIT).unwrap();
    let got = fe.recv(1, 1, WAIT);
    assert_eq!(
        got.first().map(|g| &g.data),
        Some(&f),
        "wire -> guest after the loop"
    );
    let g = from_guest(0, 434343, 64);
    assert!(fe.send(0, &g, false));
    let got = b
        .wire_rx
        .recv_matching(1, WAIT, |x| x == g.as_slice())
        .unwrap();
    assert_eq!(got.len(), 1, "guest -> wire after the loop");
    let c0 = b.counters(0);
    let c1 = b.counters(1);
    assert_eq!(c0.bad_descriptor + c1.bad_descriptor, 0, "{c0:?} {c1:?}");
    b.wire_tx = wire;
}
