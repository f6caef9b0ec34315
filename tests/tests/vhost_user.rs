//! The vhost-user server end to end without root: the real `Server`, its
//! relay and workers, the in-repo frontend (memfd guest memory) as the
//! guest, and in-memory ports on an in-memory NIC as the wire
//! ([`MemBridge`]). What only the kernel can show (bind, XDP, XSKMAP) is
//! left to the privileged tests (`dataplane`, `lifecycle`).
//!
//! Covered here: traffic both ways, byte for byte, with exact counters; a
//! guest that enables fewer pairs than offered (handoff); QEMU 7.2's early
//! SET_VRING_ENABLE (held and replayed by the relay); releasing and
//! installing a queue's port through the server's handle; and the socket
//! pool's replacement over the in-memory factory and XSKMAP. Reconnects and
//! a failing port, which count the process's fds and threads, have their
//! own binary (`vhost_user_lifecycle`).

use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use xdpath_control::socket_pool::{
    MapWrite, MemSocketMap, QueueInfo, SocketMap, SocketPool, SocketState,
};
use xdpath_dataplane::{ConnectionEvent, CounterSnapshot, MemWire, PortFactory};
use xdpath_tests::bridge::{from_guest, to_guest, MemBridge, WAIT};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::wait_until;

fn opts(queue_pairs: u16, enabled_pairs: u16) -> FrontendOptions {
    FrontendOptions {
        queue_pairs,
        enabled_pairs,
        ..FrontendOptions::default()
    }
}

/// Injects `frames` on wire queue `q`; every one must find the port.
fn inject(b: &MemBridge, q: u32, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        assert!(b.queue(q).inject(f), "queue {q} frame {i} found no port");
    }
}

/// Receives `n` frames on pair `qp`'s RX vring.
fn recv(fe: &mut TestFrontend, qp: u16, n: usize) -> Vec<Vec<u8>> {
    let got: Vec<Vec<u8>> = fe.recv(qp, n, WAIT).into_iter().map(|f| f.data).collect();
    assert_eq!(
        got.len(),
        n,
        "pair {qp}: {} of {n} frames arrived",
        got.len()
    );
    got
}

/// Sends `frames` from the guest on pair `qp`, alternating one-descriptor
/// and header/data chains.
fn send(fe: &mut TestFrontend, qp: u16, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        assert!(fe.send(qp, f, i % 2 == 1), "pair {qp}: TX ring full");
    }
}

fn bytes(frames: &[Vec<u8>]) -> u64 {
    frames.iter().map(|f| f.len() as u64).sum()
}

/// Nothing dropped, rejected or broken.
fn assert_clean(c: &CounterSnapshot) {
    let bad = c.rx_drop_no_guest_buffer
        + c.rx_drop_no_guest
        + c.rx_drop_oversize
        + c.rx_bad_chain
        + c.tx_drop_oversize
        + c.tx_drop_empty
        + c.tx_drop_write_only
        + c.bad_descriptor
        + c.bad_avail_index;
    assert_eq!(bad, 0, "{c:?}");
}

#[test]
fn frames_cross_both_ways_byte_exact_with_exact_counters() {
    let b = MemBridge::new(2);
    let mut fe = b.connect(opts(2, 2));
    let payloads = [18, 46, 200, 1000, 1472];
    for qp in 0..2u16 {
        assert_eq!(fe.post_rx_buffers(qp, 64, 2048), 64);
        let down: Vec<Vec<u8>> = (0..20)
            .map(|i| to_guest(qp, i, payloads[i as usize % payloads.len()]))
            .collect();
        inject(&b, u32::from(qp), &down);
        assert_eq!(
            recv(&mut fe, qp, down.len()),
            down,
            "wire -> guest, pair {qp}"
        );

        let up: Vec<Vec<u8>> = (0..20)
            .map(|i| from_guest(qp, i, payloads[i as usize % payloads.len()]))
            .collect();
        send(&mut fe, qp, &up);
        assert_eq!(
            b.queue(u32::from(qp)).wait_sent(up.len(), WAIT),
            up,
            "guest -> wire, pair {qp}"
        );

        let c = b.wait_counters(qp, |c| c.rx_frames == 20 && c.tx_frames == 20);
        assert_eq!(
            (c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes),
            (20, bytes(&down), 20, bytes(&up)),
            "pair {qp}"
        );
        assert_eq!(c.rx_handed_off, 0);
        assert_clean(&c);
    }
    assert_eq!(fe.bad_used(), 0);
    assert_eq!(b.handle.connections(), 1);
    assert!(b.handle.connected());
}

#[test]
fn a_guest_with_fewer_pairs_than_offered_still_gets_every_frame() {
    let b = MemBridge::new(4);
    let mut fe = b.connect(opts(4, 1));
    fe.post_rx_buffers(0, 256, 2048);
    let mut sent = BTreeSet::new();
    for q in 0..4u16 {
        let frames: Vec<Vec<u8>> = (0..30).map(|i| to_guest(q, i, 64)).collect();
        inject(&b, u32::from(q), &frames);
        sent.extend(frames);
    }
    let got: BTreeSet<Vec<u8>> = recv(&mut fe, 0, sent.len()).into_iter().collect();
    assert_eq!(got, sent, "every queue's frames reach the one enabled pair");

    let c0 = b.wait_counters(0, |c| c.rx_frames == 120);
    assert_eq!((c0.rx_frames, c0.rx_handed_off), (120, 0));
    assert_clean(&c0);
    for qp in 1..4 {
        let c = b.wait_counters(qp, |c| c.rx_handed_off == 30);
        assert_eq!((c.rx_handed_off, c.rx_frames), (30, 0), "pair {qp}");
        assert_clean(&c);
    }
}

#[test]
fn qemu_7_2s_early_vring_enable_is_held_and_replayed() {
    let b = MemBridge::new(2);
    // SET_VRING_ENABLE(1) for pair 0 and (0) for pair 1, all before
    // SET_FEATURES, and never again: without the relay the backend drops
    // the connection at the first one; if they were lost, no vring would
    // be enabled and nothing below would arrive.
    let mut fe = b.connect(FrontendOptions {
        early_vring_enable: true,
        ..opts(2, 1)
    });
    fe.post_rx_buffers(0, 64, 2048);
    let down: Vec<Vec<u8>> = (0..10).map(|i| to_guest(0, i, 100)).collect();
    let via_1: Vec<Vec<u8>> = (0..10).map(|i| to_guest(1, i, 100)).collect();
    inject(&b, 0, &down);
    assert_eq!(
        recv(&mut fe, 0, 10),
        down,
        "wire -> guest on the enabled pair"
    );
    inject(&b, 1, &via_1);
    assert_eq!(
        recv(&mut fe, 0, 10),
        via_1,
        "the disabled pair hands its frames over"
    );
    let up: Vec<Vec<u8>> = (0..10).map(|i| from_guest(0, i, 100)).collect();
    send(&mut fe, 0, &up);
    assert_eq!(b.queue(0).wait_sent(10, WAIT), up, "guest -> wire");

    let c1 = b.wait_counters(1, |c| c.rx_handed_off == 10);
    assert_eq!(c1.rx_handed_off, 10);
    let c0 = b.wait_counters(0, |c| c.rx_frames == 20 && c.tx_frames == 10);
    assert_eq!((c0.rx_frames, c0.tx_frames), (20, 10));
    assert_clean(&c0);
    assert!(b.handle.connected());
    assert_eq!(b.handle.connections(), 1);
}

#[test]
fn a_released_queue_fails_open_and_a_new_port_takes_over() {
    let b = MemBridge::new(1);
    let q = b.queue(0);
    let mut fe = b.connect(opts(1, 1));
    fe.post_rx_buffers(0, 64, 2048);
    let f1 = to_guest(0, 1, 64);
    inject(&b, 0, std::slice::from_ref(&f1));
    assert_eq!(recv(&mut fe, 0, 1), [f1]);
    assert_eq!(q.attached(), Some(1));

    b.handle
        .release_socket(0, WAIT)
        .expect("the worker releases its port");
    assert_eq!(q.attached(), None, "the worker closed its port");
    assert!(
        !q.inject(&to_guest(0, 2, 64)),
        "no port: the frame fails open"
    );
    assert_eq!(q.stats().unclaimed, 1);
    // Guest TX waits in its ring while the pair has no port, and the
    // worker sleeps rather than spinning on it.
    let g = from_guest(0, 3, 64);
    assert!(fe.send(0, &g, false));
    let batches = b.counters(0).batches;
    std::thread::sleep(Duration::from_millis(200));
    assert!(q.take_sent().is_empty(), "nothing to send it with");
    let spun = b.counters(0).batches - batches;
    assert!(
        spun < 50,
        "{spun} batches without a port: the worker must sleep"
    );

    let port = b.factory.open(0).expect("the queue is free again");
    b.handle
        .install_socket(0, port, WAIT)
        .expect("the worker installs the new port");
    assert_eq!(q.attached(), Some(2));
    assert_eq!(
        q.wait_sent(1, WAIT),
        [g],
        "the waiting guest frame leaves through the new port"
    );
    let f4 = to_guest(0, 4, 64);
    inject(&b, 0, std::slice::from_ref(&f4));
    assert_eq!(recv(&mut fe, 0, 1), [f4], "and the new port receives");
    let c = b.wait_counters(0, |c| c.rx_frames == 2 && c.tx_frames == 1);
    assert_eq!((c.rx_frames, c.tx_frames), (2, 1));
    assert_clean(&c);
}

/// The in-memory XSKMAP, noting at every write which port the wire queue
/// has open at that moment (to check the order of a replacement).
struct Steering {
    map: MemSocketMap,
    wire: MemWire,
    /// (write, id of the port open on that queue when it was made).
    seen: Vec<(MapWrite, Option<u64>)>,
}

impl Steering {
    fn note(&mut self, queue: u32) {
        let open = self.wire.queue(queue).and_then(|q| q.attached());
        if let Some(&w) = self.map.writes().last() {
            self.seen.push((w, open));
        }
    }
}

impl AsMut<Steering> for Steering {
    fn as_mut(&mut self) -> &mut Steering {
        self
    }
}

impl SocketMap for Steering {
    type Error = std::io::Error;

    fn register(&mut self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), Self::Error> {
        self.map.register(queue, fd)?;
        self.note(queue);
        Ok(())
    }

    fn unregister(&mut self, queue: u32) -> Result<(), Self::Error> {
        self.map.unregister(queue)?;
        self.note(queue);
        Ok(())
    }
}

#[test]
fn socket_pool_replace_steers_the_queue_through_a_new_port() {
    let factory = MemBridge::factory(2);
    let wire = factory.wire().clone();
    let (pool, ports) = SocketPool::create(factory.clone(), 2).expect("pool");
    let pool = Arc::new(pool);
    let steering = Arc::new(Mutex::new(Steering {
        map: MemSocketMap::new(),
        wire: wire.clone(),
        seen: Vec::new(),
    }));
    // As xdpathd does: steer the queues only while a guest's workers run.
    let (p, s) = (pool.clone(), steering.clone());
    let b = MemBridge::start(factory, ports, move |server| {
        server.on_connection(move |ev| {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            match ev {
                ConnectionEvent::Up(fds) => p.register_all(&mut *s, fds).expect("register"),
                ConnectionEvent::Down => p.unregister_all(&mut *s),
            }
        });
    });
    let entry = |q| steering.lock().unwrap().map.entry(q);
    let mut fe = b.connect(opts(2, 2));
    assert!(
        wait_until(WAIT, || entry(1).is_some()),
        "steered on connect"
    );
    for q in 0..2 {
        assert_eq!(entry(q), b.queue(q).attached_fd(), "queue {q}");
        fe.post_rx_buffers(q as u16, 64, 2048);
    }
    steering.lock().unwrap().seen.clear();

    // The kernel still holds the queue for three attempts after the close.
    b.queue(0).refuse_opens(3);
    let info = pool.replace(0, &steering, &b.handle).expect("replace");
    assert_eq!(
        info,
        QueueInfo {
            queue: 0,
            state: SocketState::Bound,
            generation: 2
        }
    );
    let new_fd = b.queue(0).attached_fd().expect("a new port is open");
    assert_eq!(
        steering.lock().unwrap().seen,
        [
            (MapWrite::Unregister(0), Some(1)),
            (MapWrite::Register(0, new_fd), Some(2)),
        ],
        "entry out while the old port is open; entry in once the new one is"
    );
    let s = b.queue(0).stats();
    assert_eq!((s.opened, s.refused), (2, 3), "retried while busy");

    // Traffic goes through the new port, both ways; queue 1 is untouched.
    for q in 0..2u32 {
        let down = to_guest(q as u16, 7, 300);
        inject(&b, q, std::slice::from_ref(&down));
        assert_eq!(recv(&mut fe, q as u16, 1), [down], "queue {q}");
        let up = from_guest(q as u16, 8, 300);
        send(&mut fe, q as u16, std::slice::from_ref(&up));
        assert_eq!(b.queue(q).wait_sent(1, WAIT), [up], "queue {q}");
    }
    assert_eq!(pool.list()[1].generation, 1);
    assert_eq!(b.queue(1).attached(), Some(1));

    // Without a guest the queues fail open, and a replacement keeps it so.
    drop(fe);
    assert!(
        wait_until(WAIT, || entry(0).is_none() && entry(1).is_none()),
        "entries out when the guest goes"
    );
    assert!(wait_until(WAIT, || !b.handle.connected()));
    steering.lock().unwrap().seen.clear();
    pool.replace(1, &steering, &b.handle).expect("replace");
    assert_eq!(
        steering.lock().unwrap().seen,
        [(MapWrite::Unregister(1), Some(1))],
        "no entry in without a guest"
    );
    assert_eq!(b.queue(1).attached(), Some(2));
    assert_eq!(entry(1), None);
}
