//! The server's lifecycle without root, over in-memory ports: frontends
//! connecting and disconnecting in a loop (some mid-traffic) while the wire
//! keeps injecting on every queue, the memory table is re-sent and RX
//! vrings are disabled and re-enabled while their workers poll; then
//! connection set-ups fail as without fds or threads (the `ServerFaults`
//! seam) and the server goes on; then a port fails as a socket whose
//! interface vanished. Afterwards the process has
//! exactly the fds and threads it had before: after the reconnects those of
//! the idle server, after the failure those from before the server (every
//! worker, epoll, eventfd, timer and port closed and joined). The
//! privileged twin over AF_XDP sockets is `lifecycle`.
//!
//! One test in its own binary, so nothing else running in this process
//! moves the counts. Bounded in rounds and time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_dataplane::{ServerError, ServerFaults, SetupStep};
use xdpath_tests::bridge::{from_guest, to_guest, MemBridge, WAIT};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::process::{assert_back_to, fd_list, reconnect_session, settled, threads};
use xdpath_tests::wait_until;

const ROUNDS: u64 = 16;
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn reconnects_and_a_failing_port_leave_no_fds_or_threads() {
    // Warm-up: a whole server life, so lazily created process state
    // (thread pools of libraries, the temp dir) is in the first baseline.
    {
        let b = MemBridge::new(2);
        reconnect_session(0, |o| b.connect(o));
        assert!(wait_until(WAIT, || b.handle.connections() == 1));
    }
    let fds_before_server = fd_list();
    let threads_before_server = threads();

    let faults = ServerFaults::new();
    let mut b = {
        let f = faults.clone();
        MemBridge::with_setup(2, move |s| s.set_faults(f))
    };
    reconnect_session(0, |o| b.connect(o));
    assert!(wait_until(WAIT, || b.handle.connections() == 1));
    assert!(wait_until(WAIT, || !b.handle.connected()));
    let (fds0, threads0) = settled();

    let stop = AtomicBool::new(false);
    let injected = AtomicU64::new(0);
    let start = Instant::now();
    let queues = [b.queue(0).clone(), b.queue(1).clone()];
    std::thread::scope(|s| {
        s.spawn(|| {
            // The wire: both queues, until the loop ends (bounded anyway).
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 400_000 && start.elapsed() < DEADLINE {
                for (q, wire) in queues.iter().enumerate() {
                    for f in [to_guest(q as u16, i, 64), to_guest(q as u16, i + 1, 64)] {
                        if wire.inject(&f) {
                            injected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                i += 2;
                std::thread::sleep(Duration::from_micros(200));
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
    assert!(
        injected.load(Ordering::Relaxed) > 0,
        "the wire took nothing"
    );
    let delivered: u64 = (0..2).map(|q| b.counters(q).rx_frames).sum();
    assert!(delivered > 0, "no injected frame reached a guest");

    // The last connection is torn down asynchronously.
    assert_back_to(&format!("after {rounds} sessions"), &fds0, threads0);

    // Issue 11, #13: connection set-ups fail as when the process is out
    // of threads (before the accept, and after it: that frontend is
    // closed) or of fds (the accept). Each is logged and retried after a
    // pause; before the fix the first one ended the server.
    faults.fail(SetupStep::Workers, 2);
    faults.fail(SetupStep::Accept, 3);
    faults.fail(SetupStep::Relay, 2);
    let failures = b.handle.setup_failures();
    let opts = FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        ..FrontendOptions::default()
    };
    let mut attempts = 0;
    let mut fe = loop {
        attempts += 1;
        match TestFrontend::connect(&b.sock, opts.clone()) {
            Ok(fe) => break fe,
            Err(e) if attempts < 5 => eprintln!("attempt {attempts}: {e:#}"),
            Err(e) => panic!("no frontend served after {attempts} attempts: {e:#}"),
        }
    };
    assert_eq!(
        b.handle.setup_failures() - failures,
        7,
        "every planned failure happened"
    );
    assert_eq!(attempts, 3, "two frontends were closed after the accept");
    for step in [SetupStep::Workers, SetupStep::Accept, SetupStep::Relay] {
        assert_eq!(faults.pending(step), 0);
    }

    // Still serving: the frontend gets traffic both ways.
    fe.post_rx_buffers(1, 64, 2048);
    let f = to_guest(1, 424242, 64);
    assert!(b.queue(1).inject(&f));
    let got = fe.recv(1, 1, WAIT);
    assert_eq!(
        got.first().map(|g| &g.data),
        Some(&f),
        "wire -> guest after the loop"
    );
    let _ = b.queue(0).take_sent();
    let g = from_guest(0, 434343, 64);
    assert!(fe.send(0, &g, false));
    assert_eq!(
        b.queue(0).wait_sent(1, WAIT),
        [g],
        "guest -> wire after the loop"
    );
    let c0 = b.counters(0);
    let c1 = b.counters(1);
    assert_eq!(c0.bad_descriptor + c1.bad_descriptor, 0, "{c0:?} {c1:?}");

    // Queue 1's interface vanishes; the next guest frame there fails the
    // port, which ends the connection and the server with the error.
    b.queue(1).vanish();
    assert!(fe.send(1, &from_guest(1, 1, 64), false));
    let result = b.server_result(WAIT).expect("the server ends by itself");
    let Err(err @ ServerError::Worker(_)) = result else {
        panic!("the server must end with the worker's error, not {result:?}");
    };
    assert_eq!(
        err.to_string(),
        "Worker error: queue pair 1: AF_XDP socket failed: No such device or address (os error 6)."
    );
    assert!(!b.handle.connected());
    assert!(
        fe.set_vring_enable(0, true).is_err(),
        "the frontend's connection is closed"
    );
    assert!(!b.sock.exists(), "the socket file goes with the server");
    drop(fe);
    drop(b);
    assert_back_to(
        "after the failure",
        &fds_before_server,
        threads_before_server,
    );
}
