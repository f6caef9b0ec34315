//! Several guests' AF_XDP sockets on one NIC queue, sharing the queue's
//! UMEM (`XskFactory`, XDP_SHARED_UMEM): on a private netns + veth pair
//! with the classifier on the host end, two ports ("guests") opened on
//! queue 0 through one factory both transmit to the peer; the XSKMAP slot
//! decides which of them receives; the first socket's port closes and the
//! other keeps receiving (more frames than the fill ring holds, so the
//! shared fill ring is restocked) and transmitting; when the last port
//! closes the queue is released and a new port opens on it.
//!
//! Every test needs root and is marked ignored: a non-root run lists them
//! as ignored; `cargo xtask test` as root runs them. The topology (its
//! namespaces and veth pair, uniquely named per process and test) and the
//! classifier are removed on drop, even when a test fails.

use std::time::{Duration, Instant};
use xdpath_common::{Action, RuleValue};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_dataplane::port::Push;
use xdpath_dataplane::{FramePort, PortFactory, XskConfig, XskFactory, XskPort};
use xdpath_tests::bridge::{from_guest, to_guest, GUEST_MAC, WAIT};
use xdpath_tests::packet::{Receiver, Sender};
use xdpath_tests::topology::Topology;
use xdpath_tests::{require_root, wait_until};

/// Frames per exchange.
const N: u32 = 40;
/// How long a port is watched for frames it must not get.
const QUIET: Duration = Duration::from_millis(300);

/// Reads `port` until `want` frames arrived or `timeout` passed, then for
/// `QUIET` more, so extra frames are seen too; returns them all.
fn recv(port: &mut XskPort, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut descs = vec![<XskPort as FramePort>::Desc::default(); 64];
    let mut got = Vec::new();
    let mut end = Instant::now() + timeout;
    let mut settled = false;
    // Bounded in time; the count is bounded by the frames the peer sent.
    while Instant::now() < end {
        let n = port.rx_consume(&mut descs);
        got.extend(descs[..n].iter().map(|d| port.rx_data(d).to_vec()));
        port.rx_release(&descs[..n]);
        if got.len() >= want && !settled {
            settled = true;
            end = Instant::now() + QUIET;
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// Sends `frames` through `port` in batches, reaping completions; true if
/// all were committed within `WAIT`.
fn send(port: &mut XskPort, frames: &[Vec<u8>]) -> bool {
    let end = Instant::now() + WAIT;
    let mut next = 0;
    while next < frames.len() && Instant::now() < end {
        port.reap_completions();
        let cap = port.tx_capacity();
        if cap == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let mut batch = port.tx_batch();
        for f in frames[next..].iter().take(cap) {
            let copy = |buf: &mut [u8]| {
                buf.copy_from_slice(f);
                Ok::<(), ()>(())
            };
            assert_eq!(batch.push(f.len(), copy), Push::Staged);
        }
        let staged = batch.len();
        batch.commit().expect("the socket is alive");
        next += staged;
    }
    next == frames.len()
}

/// The wire side: a sender and a capture in the peer namespace.
struct Peer {
    tx: Sender,
    rx: Receiver,
}

impl Peer {
    fn new(t: &Topology) -> Self {
        let peer_if = t.peer_if.clone();
        t.in_peer(move || Peer {
            tx: Sender::new(&peer_if).expect("AF_PACKET sender"),
            rx: Receiver::new(&peer_if).expect("AF_PACKET capture"),
        })
    }

    /// Sends frames to the guest's MAC tagged `first..first + n`.
    fn to_guest(&self, first: u32, n: u32) -> Vec<Vec<u8>> {
        let frames: Vec<Vec<u8>> = (first..first + n).map(|i| to_guest(0, i, 64)).collect();
        self.tx
            .send_on_queue(0, &frames)
            .expect("send from the peer");
        frames
    }

    /// What the guests transmitted (source: the guest's MAC), waiting for
    /// `want` frames, then `QUIET` for extras.
    fn captured(&self, want: usize) -> Vec<Vec<u8>> {
        let is_guest = |f: &[u8]| f.len() > 12 && f[6..12] == GUEST_MAC;
        let mut got = self
            .rx
            .recv_matching(want, WAIT, is_guest)
            .expect("capture");
        got.extend(self.rx.recv_matching(1, QUIET, is_guest).expect("capture"));
        got
    }
}

/// The classifier on the host end, steering the guest's MAC to the
/// XSKMAP slot of the receiving queue.
fn classifier(t: &Topology) -> Classifier {
    let host_if = t.host_if.clone();
    t.in_host(move || {
        let mut c = Classifier::attach(&ClassifierConfig::new(&host_if)).expect("attach XDP");
        c.insert_mac(
            GUEST_MAC,
            &RuleValue {
                action: Action::Guest as u32,
                port: 1,
                rule_id: 1,
                _pad: 0,
            },
        )
        .expect("guest MAC rule");
        c
    })
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn guests_share_a_queue_and_close_in_any_order() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut c = classifier(&t);
    let peer = Peer::new(&t);
    let mut cfg = XskConfig::new(&t.host_if, 0);
    cfg.force_copy = true;
    let factory = XskFactory::new(cfg);
    let f = factory.clone();
    let (mut a, mut b) = t.in_host(move || {
        let a = f.open(0).expect("guest A's socket on queue 0");
        let b = f.open(0).expect("guest B's socket on the same queue");
        (a, b)
    });
    assert!(a.shares_umem_with(&b), "one UMEM for the queue");
    assert_eq!(factory.ports_on(0), 2);

    // TX: both guests reach the peer, every frame once.
    let from_a: Vec<Vec<u8>> = (0..N).map(|i| from_guest(0, i, 100)).collect();
    let from_b: Vec<Vec<u8>> = (0..N).map(|i| from_guest(1, i, 100)).collect();
    assert!(send(&mut a, &from_a), "A sends");
    assert!(send(&mut b, &from_b), "B sends");
    let want: Vec<Vec<u8>> = from_a.iter().chain(&from_b).cloned().collect();
    assert_eq!(
        sorted(peer.captured(want.len())),
        sorted(want),
        "what both guests sent, each frame once"
    );

    // RX: the XSKMAP slot picks the socket.
    c.register_socket(0, &a).expect("A in slot 0");
    let sent = peer.to_guest(0, N);
    assert_eq!(recv(&mut a, sent.len(), WAIT), sent, "A gets its frames");
    assert!(recv(&mut b, 0, QUIET).is_empty(), "B gets none of them");
    c.register_socket(0, &b).expect("B in slot 0");
    let sent = peer.to_guest(N, N);
    assert_eq!(recv(&mut b, sent.len(), WAIT), sent, "B gets its frames");
    assert!(recv(&mut a, 0, QUIET).is_empty(), "A gets none any more");

    // The first socket's port closes (it is in no XSKMAP slot): B goes on
    // receiving, through more frames than the fill ring holds (so frames
    // B released are what the kernel fills again), and sending.
    drop(a);
    assert_eq!(factory.ports_on(0), 1);
    let fill_ring = factory.config(0).ring_size;
    let rounds = fill_ring / 500 + 2;
    for r in 0..rounds {
        let sent = peer.to_guest(1000 + r * 500, 500);
        let got = recv(&mut b, sent.len(), WAIT);
        assert_eq!(got.len(), sent.len(), "round {r}: every frame, once");
        assert_eq!(got, sent, "round {r}: in order, byte for byte");
    }
    let later: Vec<Vec<u8>> = (N..2 * N).map(|i| from_guest(1, i, 100)).collect();
    assert!(send(&mut b, &later), "B sends after A closed");
    assert_eq!(sorted(peer.captured(later.len())), sorted(later));

    // The last port closes: the queue is released, a new port opens on it
    // (with a fresh UMEM, once the kernel has freed the queue).
    c.unregister_socket(0).expect("slot 0 out");
    drop(b);
    assert_eq!(factory.ports_on(0), 0, "nothing holds the queue");
    let f = factory.clone();
    let mut p = t.in_host(move || {
        let mut p = None;
        wait_until(WAIT, || {
            p = f.open(0).ok();
            p.is_some()
        });
        p.expect("a new port opens once the queue is free")
    });
    c.register_socket(0, &p).expect("the new port in slot 0");
    let sent = peer.to_guest(5000, N);
    assert_eq!(recv(&mut p, sent.len(), WAIT), sent);
    let out: Vec<Vec<u8>> = (0..N).map(|i| from_guest(2, i, 100)).collect();
    assert!(send(&mut p, &out));
    assert_eq!(sorted(peer.captured(out.len())), sorted(out));
    c.unregister_socket(0).expect("slot 0 out");
}

/// The second guest's port closes first: the first one is not disturbed,
/// and a third guest's port joins the queue while it lives.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_later_guest_closes_and_another_joins() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut c = classifier(&t);
    let peer = Peer::new(&t);
    let mut cfg = XskConfig::new(&t.host_if, 0);
    cfg.force_copy = true;
    let factory = XskFactory::new(cfg);
    let f = factory.clone();
    let (mut a, b) = t.in_host(move || (f.open(0).expect("A"), f.open(0).expect("B")));
    // B held frames of its own (its TX cache) when it closed: they are
    // back for A, which sends more than a cache's worth.
    drop(b);
    c.register_socket(0, &a).expect("A in slot 0");
    let sent = peer.to_guest(0, N);
    assert_eq!(recv(&mut a, sent.len(), WAIT), sent);
    let out: Vec<Vec<u8>> = (0..300).map(|i| from_guest(0, i, 100)).collect();
    assert!(send(&mut a, &out));
    assert_eq!(sorted(peer.captured(out.len())), sorted(out));
    let f = factory.clone();
    let mut d = t.in_host(move || f.open(0).expect("a third guest joins"));
    assert!(d.shares_umem_with(&a));
    assert_eq!(factory.ports_on(0), 2);
    c.register_socket(0, &d).expect("D in slot 0");
    let sent = peer.to_guest(N, N);
    assert_eq!(recv(&mut d, sent.len(), WAIT), sent);
    assert!(recv(&mut a, 0, QUIET).is_empty());
    c.unregister_socket(0).expect("slot 0 out");
}

/// Two factories made separately do not share: the second one's socket on
/// a bound queue fails (EBUSY), as another process's would.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn separate_factories_do_not_share_a_queue() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let host_if = t.host_if.clone();
    t.in_host(move || {
        let one = XskFactory::new(XskConfig::new(&host_if, 0));
        let two = XskFactory::new(XskConfig::new(&host_if, 0));
        let _a = one.open(0).expect("first");
        let err = two.open(0).expect_err("a second UMEM on a bound queue");
        assert!(err.to_string().contains("busy"), "{err}");
    });
}

/// The interface goes away and comes back under the same name while a
/// port holds the queue's old UMEM: the factory's next open starts a fresh
/// UMEM on the new interface instead of joining the dead one, and the new
/// port transmits.
#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP"]
fn a_factory_starts_afresh_when_its_interface_came_back() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let mut cfg = XskConfig::new(&t.host_if, 0);
    cfg.force_copy = true;
    let factory = XskFactory::new(cfg);
    let f = factory.clone();
    let old = t.in_host(move || f.open(0).expect("a port on the first interface"));
    let run = |args: &[&str]| xdpath_tests::topology::run("ip", args).expect("ip");
    run(&["-n", &t.host_ns, "link", "del", &t.host_if]);
    run(&[
        "-n", &t.host_ns, "link", "add", &t.host_if, "type", "veth", "peer", "name", &t.peer_if,
        "netns", &t.peer_ns,
    ]);
    run(&["-n", &t.host_ns, "link", "set", &t.host_if, "up"]);
    run(&["-n", &t.peer_ns, "link", "set", &t.peer_if, "up"]);
    let peer = Peer::new(&t);
    let f = factory.clone();
    let mut new = t.in_host(move || f.open(0).expect("a port on the new interface"));
    assert!(!new.shares_umem_with(&old), "not the dead interface's UMEM");
    assert_eq!(factory.ports_on(0), 1, "the factory follows the new one");
    drop(old);
    let out: Vec<Vec<u8>> = (0..N).map(|i| from_guest(0, i, 100)).collect();
    assert!(send(&mut new, &out));
    assert_eq!(sorted(peer.captured(out.len())), sorted(out));
    // Another guest joins the new interface's UMEM.
    let f = factory.clone();
    let other = t.in_host(move || f.open(0).expect("a second guest"));
    assert!(other.shares_umem_with(&new));
}
