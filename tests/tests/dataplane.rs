//! The dataplane end to end on real kernel endpoints: a private netns +
//! veth pair, the XDP classifier on the host end steering the guest's MAC
//! to AF_XDP sockets (one per queue), xdpath's vhost-user server bridging
//! them to the in-repo frontend (the "guest"), and the peer namespace as
//! the wire: it sends on a chosen queue through its own AF_XDP socket and
//! captures what the guest transmits with AF_PACKET.
//!
//! Every test needs root and is marked ignored: a non-root run lists them
//! as ignored; `cargo xtask test` as root runs them.

use std::os::fd::AsRawFd;
use std::time::Duration;
use xdpath_dataplane::CounterSnapshot;
use xdpath_tests::bridge::{from_guest, to_guest, Bridge, GUEST_MAC, WAIT};
use xdpath_tests::frontend::{FrontendOptions, RawDesc, TestFrontend};
use xdpath_tests::{require_root, wait_until};

/// Wire -> guest on every queue pair, then guest -> wire, byte for byte,
/// with counters equal to what was sent.
fn both_directions(
    queue_pairs: u16,
    event_idx: bool,
    mrg_rxbuf: bool,
    rx_buf: u32,
    payload: usize,
) {
    let mut b = Bridge::new(queue_pairs);
    let mut fe = b.connect(FrontendOptions {
        queue_pairs,
        enabled_pairs: queue_pairs,
        event_idx,
        mrg_rxbuf,
        ..FrontendOptions::default()
    });
    const N: u32 = 32;
    for qp in 0..queue_pairs {
        let before = b.counters(qp);
        assert!(fe.post_rx_buffers(qp, 128, rx_buf) >= 64);
        let frames: Vec<Vec<u8>> = (0..N).map(|i| to_guest(qp, i, payload)).collect();
        b.wire_tx[usize::from(qp)]
            .send(&frames, WAIT)
            .expect("peer sends on its queue");
        let got = fe.recv(qp, frames.len(), WAIT);
        assert_eq!(
            got.len(),
            frames.len(),
            "queue pair {qp}: frames received by the guest"
        );
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(&g.data, f, "queue pair {qp}: bytes differ");
            if !mrg_rxbuf {
                assert_eq!(g.num_buffers, 1);
            }
        }
        let c = b.wait_counters(qp, |c| c.rx_frames - before.rx_frames >= u64::from(N));
        assert_eq!(
            c.rx_frames - before.rx_frames,
            u64::from(N),
            "rx_frames of queue pair {qp}"
        );
        let bytes: usize = frames.iter().map(Vec::len).sum();
        assert_eq!(c.rx_bytes - before.rx_bytes, bytes as u64);
        for other in (0..queue_pairs).filter(|o| *o != qp) {
            assert!(
                fe.recv(other, 1, Duration::from_millis(20)).is_empty(),
                "frame of queue {qp} on queue pair {other}"
            );
        }
    }
    for qp in 0..queue_pairs {
        let before = b.counters(qp);
        let frames: Vec<Vec<u8>> = (0..N).map(|i| from_guest(qp, i, payload)).collect();
        for (i, f) in frames.iter().enumerate() {
            let sent = match i % 3 {
                0 => fe.send(qp, f, false),
                1 => fe.send(qp, f, true),
                _ => fe.send_indirect(qp, f),
            };
            assert!(sent, "TX ring full");
        }
        let port = 7000 + qp;
        let got = b
            .wire_rx
            .recv_matching(frames.len(), WAIT, |f| {
                f.len() > 37 && f[6..12] == GUEST_MAC && u16::from_be_bytes([f[34], f[35]]) == port
            })
            .unwrap();
        assert_eq!(
            got.len(),
            frames.len(),
            "queue pair {qp}: frames the peer received"
        );
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(g, f, "queue pair {qp}: bytes differ on the wire");
        }
        let c = b.wait_counters(qp, |c| c.tx_frames - before.tx_frames >= u64::from(N));
        assert_eq!(c.tx_frames - before.tx_frames, u64::from(N));
        // The guest got every TX chain back (used), so it can reuse them.
        let mut completed = 0;
        wait_until(WAIT, || {
            completed += fe.tx_completed(qp);
            completed >= N as usize
        });
        assert_eq!(
            completed, N as usize,
            "queue pair {qp}: TX chains returned to the guest"
        );
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn one_queue_pair_both_directions_event_idx_mergeable() {
    require_root();
    both_directions(1, true, true, 2048, 200);
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn four_queue_pairs_both_directions_without_event_idx() {
    require_root();
    both_directions(4, false, true, 2048, 100);
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn full_size_frames_span_several_mergeable_buffers() {
    require_root();
    // 1514-byte frames into 512-byte buffers: num_buffers 3 or more.
    both_directions(2, true, true, 512, 1472 - 8);
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn without_mergeable_buffers_each_frame_uses_one_chain() {
    require_root();
    both_directions(2, true, false, 2048, 1000);
}

/// A hand-built TX chain on queue pair 1 of a fresh connection.
struct BadTx {
    name: &'static str,
    /// Builds the chain; gets the frontend to allocate guest memory.
    build: fn(&mut TestFrontend) -> Vec<RawDesc>,
    /// Reads the counter that must move.
    counter: fn(&CounterSnapshot) -> u64,
    /// Whether the vring stops (true) or only the chain is rejected.
    breaks: bool,
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fn bad_tx_cases() -> Vec<BadTx> {
    vec![
        BadTx {
            name: "write-only TX buffer",
            build: |fe| {
                vec![RawDesc {
                    addr: fe.alloc(128),
                    len: 128,
                    flags: F_WRITE,
                    next: 0,
                }]
            },
            counter: |c| c.tx_drop_write_only,
            breaks: false,
        },
        BadTx {
            name: "zero-length TX buffer",
            build: |fe| {
                vec![RawDesc {
                    addr: fe.alloc(64),
                    len: 0,
                    flags: 0,
                    next: 0,
                }]
            },
            counter: |c| c.tx_drop_empty,
            breaks: false,
        },
        BadTx {
            name: "frame larger than MTU + headers",
            build: |fe| {
                vec![RawDesc {
                    addr: fe.alloc(3000),
                    len: 3000,
                    flags: 0,
                    next: 0,
                }]
            },
            counter: |c| c.tx_drop_oversize,
            breaks: false,
        },
        BadTx {
            name: "buffer outside guest memory",
            build: |_| {
                vec![RawDesc {
                    addr: 1 << 40,
                    len: 100,
                    flags: 0,
                    next: 0,
                }]
            },
            counter: |c| c.bad_descriptor,
            breaks: true,
        },
        BadTx {
            name: "next index outside the ring",
            build: |fe| {
                vec![RawDesc {
                    addr: fe.alloc(64),
                    len: 64,
                    flags: F_NEXT,
                    next: 4000,
                }]
            },
            counter: |c| c.bad_descriptor,
            breaks: true,
        },
        BadTx {
            name: "descriptor loop",
            build: |fe| {
                let a = fe.alloc(64);
                let s0 = fe.desc_slot(3, 0);
                let s1 = fe.desc_slot(3, 1);
                vec![
                    RawDesc {
                        addr: a,
                        len: 64,
                        flags: F_NEXT,
                        next: s1,
                    },
                    RawDesc {
                        addr: a,
                        len: 64,
                        flags: F_NEXT,
                        next: s0,
                    },
                ]
            },
            counter: |c| c.bad_descriptor,
            breaks: true,
        },
        BadTx {
            name: "indirect table not made of whole descriptors",
            build: |fe| {
                vec![RawDesc {
                    addr: fe.alloc(64),
                    len: 20,
                    flags: F_INDIRECT,
                    next: 0,
                }]
            },
            counter: |c| c.bad_descriptor,
            breaks: true,
        },
        BadTx {
            name: "nested indirect table",
            build: |fe| {
                let inner = fe.alloc(16);
                let outer = fe.alloc(16);
                // The table at `outer` holds one descriptor that is itself
                // indirect.
                let mut d = Vec::new();
                d.extend_from_slice(&inner.to_le_bytes());
                d.extend_from_slice(&16u32.to_le_bytes());
                d.extend_from_slice(&F_INDIRECT.to_le_bytes());
                d.extend_from_slice(&0u16.to_le_bytes());
                fe.write_guest(outer, &d);
                vec![RawDesc {
                    addr: outer,
                    len: 16,
                    flags: F_INDIRECT,
                    next: 0,
                }]
            },
            counter: |c| c.bad_descriptor,
            breaks: true,
        },
    ]
}

/// Every malformed TX chain is rejected and counted, the process does not
/// panic, queue pair 0 keeps forwarding both ways, and a reconnect brings
/// the broken vring back.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn malformed_guest_chains_break_only_their_own_queue() {
    require_root();
    let mut b = Bridge::new(2);
    for (round, case) in bad_tx_cases().into_iter().enumerate() {
        let mut fe = b.connect(FrontendOptions {
            queue_pairs: 2,
            enabled_pairs: 2,
            ..FrontendOptions::default()
        });
        let before = b.counters(1);
        let descs = (case.build)(&mut fe);
        assert!(fe.push_raw_chain(3, &descs), "{}: ring full", case.name);
        let c = b.wait_counters(1, |c| (case.counter)(c) > (case.counter)(&before));
        assert_eq!(
            (case.counter)(&c),
            (case.counter)(&before) + 1,
            "{}: counter",
            case.name
        );

        // Queue pair 1 after the bad chain: forwards again, or is stopped.
        let good = from_guest(1, round as u32, 64);
        assert!(fe.send(1, &good, false));
        let got = b
            .wire_rx
            .recv_matching(
                1,
                Duration::from_millis(if case.breaks { 300 } else { 3000 }),
                |f| f == good.as_slice(),
            )
            .unwrap();
        assert_eq!(
            got.len(),
            usize::from(!case.breaks),
            "{}: queue pair 1 after the bad chain",
            case.name
        );

        // Queue pair 0 is unaffected, both ways.
        fe.post_rx_buffers(0, 16, 2048);
        let f0 = to_guest(0, round as u32, 64);
        b.wire_tx[0].send(std::slice::from_ref(&f0), WAIT).unwrap();
        let got = fe.recv(0, 1, WAIT);
        assert_eq!(got.len(), 1, "{}: queue pair 0 still receives", case.name);
        assert_eq!(got[0].data, f0);
        let g0 = from_guest(0, round as u32, 64);
        assert!(fe.send(0, &g0, false));
        let got = b
            .wire_rx
            .recv_matching(1, WAIT, |f| f == g0.as_slice())
            .unwrap();
        assert_eq!(got.len(), 1, "{}: queue pair 0 still sends", case.name);
        drop(fe);
        // The server takes the next frontend (the broken state goes with
        // the old connection).
        assert!(wait_until(WAIT, || b.handle.connections() == round as u64 + 1));
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn rx_chain_with_a_readable_buffer_stops_only_that_vring() {
    require_root();
    let mut b = Bridge::new(2);
    let mut fe = b.connect(FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        ..FrontendOptions::default()
    });
    let a = fe.alloc(2048);
    assert!(fe.push_raw_chain(
        2,
        &[RawDesc {
            addr: a,
            len: 2048,
            flags: 0,
            next: 0
        }]
    ));
    b.wire_tx[1].send(&[to_guest(1, 1, 64)], WAIT).unwrap();
    let c = b.wait_counters(1, |c| c.bad_descriptor > 0);
    assert_eq!(c.bad_descriptor, 1);
    assert_eq!(c.rx_frames, 0);
    fe.post_rx_buffers(0, 16, 2048);
    b.wire_tx[0].send(&[to_guest(0, 2, 64)], WAIT).unwrap();
    assert_eq!(fe.recv(0, 1, WAIT).len(), 1, "queue pair 0 still receives");
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_guest_without_rx_buffers_costs_drops_not_stalls() {
    require_root();
    let mut b = Bridge::new(1);
    let mut fe = b.connect(FrontendOptions::default());
    let frames: Vec<Vec<u8>> = (0..20).map(|i| to_guest(0, i, 64)).collect();
    b.wire_tx[0].send(&frames, WAIT).unwrap();
    let c = b.wait_counters(0, |c| c.rx_drop_no_guest_buffer >= 20);
    assert_eq!((c.rx_drop_no_guest_buffer, c.rx_frames), (20, 0));
    // Buffers posted: traffic flows again.
    fe.post_rx_buffers(0, 64, 2048);
    b.wire_tx[0].send(&frames[..5], WAIT).unwrap();
    assert_eq!(fe.recv(0, 5, WAIT).len(), 5);
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_guest_that_enables_fewer_pairs_still_gets_its_traffic() {
    require_root();
    // Four pairs offered, one enabled (a one-vCPU guest): frames arriving
    // on every NIC queue reach the guest through pair 0.
    let mut b = Bridge::new(4);
    let mut fe = b.connect(FrontendOptions {
        queue_pairs: 4,
        enabled_pairs: 1,
        ..FrontendOptions::default()
    });
    assert_eq!(fe.post_rx_buffers(0, 200, 2048), 200);
    let mut sent = Vec::new();
    for q in 0..4u16 {
        let frames: Vec<Vec<u8>> = (0..10).map(|i| to_guest(q, i, 64)).collect();
        b.wire_tx[usize::from(q)].send(&frames, WAIT).unwrap();
        sent.extend(frames);
    }
    let got = fe.recv(0, sent.len(), WAIT);
    assert_eq!(
        got.len(),
        sent.len(),
        "every frame reaches the one enabled pair"
    );
    let mut got: Vec<Vec<u8>> = got.into_iter().map(|f| f.data).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "bytes differ");
    for q in 1..4u16 {
        let c = b.wait_counters(q, |c| c.rx_handed_off >= 10);
        assert_eq!(
            (c.rx_handed_off, c.rx_drop_no_guest),
            (10, 0),
            "pair {q}: {c:?}"
        );
    }
    assert_eq!(b.wait_counters(0, |c| c.rx_frames >= 40).rx_frames, 40);
    // Enabling pair 1 later: its own frames go to it directly.
    fe.set_vring_enable(2, true).unwrap();
    fe.set_vring_enable(3, true).unwrap();
    fe.post_rx_buffers(1, 16, 2048);
    let f1 = to_guest(1, 99, 64);
    b.wire_tx[1].send(std::slice::from_ref(&f1), WAIT).unwrap();
    let got = fe.recv(1, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, f1);
    assert_eq!(b.wait_counters(1, |c| c.rx_frames >= 1).rx_frames, 1);
}

/// Socket changes are messages the worker applies between batches. The
/// control plane's order: take the XSKMAP entry out (the queue fails open
/// to the host), release the socket, bind a new one on the same queue,
/// register it, install it: traffic reaches the guest again without a
/// reconnect, and the worker never spins meanwhile.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_socket_is_released_and_replaced_while_the_guest_runs() {
    require_root();
    let mut b = Bridge::new(1);
    let mut fe = b.connect(FrontendOptions::default());
    fe.post_rx_buffers(0, 64, 2048);
    let f = to_guest(0, 1, 64);
    b.wire_tx[0].send(std::slice::from_ref(&f), WAIT).unwrap();
    assert_eq!(fe.recv(0, 1, WAIT).len(), 1);

    b.classifier().unregister_socket(0).unwrap();
    b.handle
        .release_socket(0, WAIT)
        .expect("worker releases its socket");
    let before = b.classifier().counters().unwrap();
    let batches = b.counters(0).batches;
    b.wire_tx[0].send(&[to_guest(0, 2, 64)], WAIT).unwrap();
    assert!(
        wait_until(WAIT, || b
            .classifier()
            .counters()
            .unwrap()
            .redirect_no_socket
            > before.redirect_no_socket),
        "guest-bound frames fail open to the host while the queue has no socket"
    );
    assert!(fe.recv(0, 1, Duration::from_millis(300)).is_empty());
    let spun = b.counters(0).batches - batches;
    assert!(
        spun < 50,
        "the worker ran {spun} batches without a socket: it must sleep"
    );

    let host_if = b.host_if().to_string();
    let port = b.in_host(|| {
        let mut cfg = xdpath_dataplane::XskConfig::new(&host_if, 0);
        cfg.force_copy = true;
        // The kernel frees the queue asynchronously after the old socket
        // closed.
        let mut port = None;
        wait_until(WAIT, || {
            port = xdpath_dataplane::XskPort::bind(&cfg).ok();
            port.is_some()
        });
        port.expect("a new socket binds once the old one is closed")
    });
    b.classifier().register_socket(0, &port).unwrap();
    b.handle
        .install_socket(0, port, WAIT)
        .expect("worker installs the new socket");
    let f3 = to_guest(0, 3, 64);
    b.wire_tx[0].send(std::slice::from_ref(&f3), WAIT).unwrap();
    let got = fe.recv(0, 1, WAIT);
    assert_eq!(
        got.first().map(|g| &g.data),
        Some(&f3),
        "traffic reaches the guest through the new socket"
    );
    let g = from_guest(0, 4, 64);
    assert!(fe.send(0, &g, false));
    assert_eq!(
        b.wire_rx
            .recv_matching(1, WAIT, |x| x == g.as_slice())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(b.handle.connections(), 1, "no reconnect was needed");
}

/// The interface under the sockets disappears while a guest is connected:
/// the first worker error is recorded, every worker is stopped and joined,
/// and the server reports it.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_failed_socket_stops_all_workers_and_is_reported() {
    require_root();
    let mut b = Bridge::new(2);
    let mut fe = b.connect(FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        ..FrontendOptions::default()
    });
    fe.post_rx_buffers(0, 16, 2048);
    b.wire_tx[0].send(&[to_guest(0, 1, 64)], WAIT).unwrap();
    assert_eq!(fe.recv(0, 1, WAIT).len(), 1);
    let host_if = b.host_if().to_string();
    xdpath_tests::topology::run("ip", &["-n", b.host_ns(), "link", "del", &host_if])
        .expect("delete the host end");
    // AF_XDP reports a vanished interface not through epoll (its poll mask
    // is empty once unbound) but on the next send (ENXIO): the guest sends.
    assert!(fe.send(1, &from_guest(1, 2, 64), false));
    let result = b
        .server_result(Duration::from_secs(10))
        .expect("the server ends by itself");
    let msg = result.expect_err("a worker error is reported").to_string();
    assert!(
        msg.contains("AF_XDP socket failed") && msg.contains("queue pair 1"),
        "{msg}"
    );
    drop(fe);
}

/// With only 64 UMEM frames for TX, a guest burst of 600 frames runs the
/// socket out of frames again and again: the chains wait in the guest's
/// ring and are retried after completions; every frame reaches the wire,
/// none is dropped.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_full_xsk_tx_ring_holds_guest_frames_instead_of_dropping_them() {
    require_root();
    let b = Bridge::with_frames(1, 128);
    let mut fe = b.connect(FrontendOptions {
        queue_size: 1024,
        ..FrontendOptions::default()
    });
    let frames: Vec<Vec<u8>> = (0..600).map(|i| from_guest(0, i, 200)).collect();
    let mut queued = 0;
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < frames.len() && std::time::Instant::now() < end {
        while queued < frames.len() && fe.send(0, &frames[queued], false) {
            queued += 1;
        }
        fe.tx_completed(0);
        got.extend(
            b.wire_rx
                .recv_matching(frames.len() - got.len(), Duration::from_millis(20), |f| {
                    f.len() > 37 && f[6..12] == GUEST_MAC
                })
                .unwrap(),
        );
    }
    let c = b.counters(0);
    assert_eq!(
        got.len(),
        frames.len(),
        "frames at the wire (capture drops {}, bridge {c:?})",
        b.wire_rx.drops()
    );
    assert_eq!(got, frames, "in order, byte for byte");
    let c = b.wait_counters(0, |c| c.tx_frames >= 600);
    assert_eq!(c.tx_frames, 600);
    assert!(c.tx_xsk_ring_full > 0, "the burst did hit the limit: {c:?}");
    assert_eq!(
        c.tx_drop_oversize + c.tx_drop_empty + c.tx_drop_write_only + c.bad_descriptor,
        0
    );
}

/// Without traffic the workers sleep in epoll: their batch counters stand
/// still while a guest is connected.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn idle_workers_do_not_run() {
    require_root();
    let mut b = Bridge::new(2);
    let mut fe = b.connect(FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 2,
        ..FrontendOptions::default()
    });
    fe.post_rx_buffers(0, 16, 2048);
    b.wire_tx[0].send(&[to_guest(0, 1, 64)], WAIT).unwrap();
    assert_eq!(fe.recv(0, 1, WAIT).len(), 1);
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<u64> = (0..2).map(|q| b.counters(q).batches).collect();
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<u64> = (0..2).map(|q| b.counters(q).batches).collect();
    assert_eq!(after, before, "a worker ran without traffic");
}

/// `busy_poll` really sets preferred busy polling on the socket.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn busy_poll_sets_the_socket_options() {
    require_root();
    let t = xdpath_tests::topology::Topology::new(1).expect("topology");
    let host_if = t.host_if.clone();
    t.in_host(|| {
        let mut cfg = xdpath_dataplane::XskConfig::new(&host_if, 0);
        cfg.busy_poll = true;
        let p = xdpath_dataplane::XskPort::bind(&cfg).expect("bind with busy polling");
        let get = |opt| xdpath_dataplane::xsk::get_sockopt(p.as_raw_fd(), opt).expect("getsockopt");
        // SO_PREFER_BUSY_POLL and SO_BUSY_POLL_BUDGET cannot be read back
        // (ENOPROTOOPT); setting them failed the bind if the kernel refused.
        assert_eq!(
            get(libc::SO_BUSY_POLL),
            xdpath_dataplane::xsk::BUSY_POLL_USECS
        );
        let plain = xdpath_dataplane::XskPort::bind(&xdpath_dataplane::XskConfig::new(&host_if, 0));
        assert!(plain.is_err(), "one socket per queue: the queue is taken");
        drop(p);
        // The kernel frees the queue asynchronously after close.
        let mut plain = None;
        wait_until(WAIT, || {
            plain = xdpath_dataplane::XskPort::bind(&xdpath_dataplane::XskConfig::new(&host_if, 0))
                .ok();
            plain.is_some()
        });
        let plain = plain.expect("the queue is free again after the busy-polling socket closed");
        assert_eq!(
            xdpath_dataplane::xsk::get_sockopt(plain.as_raw_fd(), libc::SO_BUSY_POLL).unwrap(),
            0
        );
    });
}
