//! Several guests without root: the daemon's real guest set
//! (`GuestSet<InMemory>`: the guest registry, a socket pool and a
//! vhost-user server per guest, the switch between them) over an
//! in-memory NIC, each guest played by the in-repo vhost-user frontend.
//!
//! What a guest sees: the queue pairs it is offered, frames from the wire
//! on every NIC queue, frames from the other guest switched to it and never
//! put on the wire, broadcasts, and its own spoofed frames dropped and
//! counted. The root tests (`guests.rs`) check the same against a real
//! xdpathd, XDP and AF_XDP.

use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xdpath_control::api::Tables;
use xdpath_control::config::DaemonConfig;
use xdpath_control::flow_table::FlowTable;
use xdpath_control::guests::{GuestSet, OnExit};
use xdpath_control::maps::FakeMaps;
use xdpath_control::platform::InMemory;
use xdpath_dataplane::{CounterSnapshot, MemFactory, MemWire};
use xdpath_tests::frames::*;
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::wait_until;

const QUEUES: u16 = 2;
const WAIT: Duration = Duration::from_secs(5);
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
/// The one-guest shorthand guest "default" (id 1, every NIC queue offered).
const A: ([u8; 6], [u8; 4]) = ([0x52, 0x54, 0, 0, 0, 0x11], [10, 0, 0, 11]);
/// Guest "web" (id 2, offered one queue pair).
const B: ([u8; 6], [u8; 4]) = ([0x52, 0x54, 0, 0, 0, 0x22], [10, 0, 0, 22]);

/// The guest set of a daemon with two NIC queues, its in-memory wire and
/// its private state directory (removed on drop, after the guests stop).
struct Rig {
    guests: GuestSet<InMemory>,
    wire: MemWire,
    dir: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.guests.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xdpath-guest-set-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state directory");
        let cfg = DaemonConfig::from_toml(&format!(
            "iface = \"mem0\"\nqueues = {QUEUES}\nguest_mac = \"52:54:00:00:00:11\"\n\
             guest_ip = [\"10.0.0.11\"]\nstate_dir = {:?}\nvhost_socket = {:?}\n",
            dir.display().to_string(),
            dir.join("a.sock").display().to_string(),
        ))
        .expect("config");
        cfg.validate().expect("a valid config");
        let tables = Arc::new(Mutex::new(Tables {
            classifier: FakeMaps::new(),
            flows: FlowTable::load(&cfg.state_file()).expect("flow table"),
        }));
        let wire = MemWire::new(u32::from(QUEUES));
        let factory = MemFactory::new(wire.clone(), 256, 256, 2048);
        let on_exit: OnExit = Arc::new(|name: &str, r| panic!("guest {name} ended: {r:?}"));
        let guests = GuestSet::<InMemory>::load(&cfg, factory, tables, on_exit).expect("guests");
        guests.start_all().expect("guests start");
        let spec = serde_json::from_value(json!({
            "name": "web", "mac": "52:54:00:00:00:22", "ips": ["10.0.0.22"], "queues": 1,
            "vhost_socket": dir.join("b.sock"),
        }))
        .expect("a guest spec");
        let web = guests.add(spec).expect("guest web is added");
        assert_eq!(web.id, 2);
        Self { guests, wire, dir }
    }

    /// Connects a frontend to guest `name`'s socket with `pairs` pairs set
    /// up and enabled, RX buffers posted.
    fn connect(&self, name: &str, pairs: u16) -> TestFrontend {
        let sock = self
            .dir
            .join(if name == "web" { "b.sock" } else { "a.sock" });
        let opts = FrontendOptions {
            queue_pairs: pairs,
            enabled_pairs: pairs,
            ..FrontendOptions::default()
        };
        let mut fe = TestFrontend::connect(&sock, opts)
            .unwrap_or_else(|e| panic!("guest {name} connects: {e:#}"));
        for q in 0..pairs {
            fe.post_rx_buffers(q, 64, 2048);
        }
        assert!(
            wait_until(WAIT, || self.pairs_enabled(name) == pairs),
            "guest {name} has {pairs} pairs enabled"
        );
        fe
    }

    fn pairs_enabled(&self, name: &str) -> u16 {
        self.guests
            .running()
            .iter()
            .find(|g| g.name() == name)
            .map_or(0, |g| g.server().pairs_enabled())
    }

    /// Guest `name`'s counters, summed over its pairs.
    fn counters(&self, name: &str) -> CounterSnapshot {
        let g = self
            .guests
            .running()
            .into_iter()
            .find(|g| g.name() == name)
            .unwrap_or_else(|| panic!("guest {name} runs"));
        let mut sum = CounterSnapshot::default();
        for c in g.server().all_counters() {
            sum.rx_frames += c.rx_frames;
            sum.tx_frames += c.tx_frames;
            sum.tx_switched += c.tx_switched;
            sum.tx_flooded += c.tx_flooded;
            sum.tx_drop_spoofed += c.tx_drop_spoofed;
        }
        sum
    }

    /// Every frame any guest put on the wire so far.
    fn wire_sent(&self) -> Vec<Vec<u8>> {
        (0..u32::from(QUEUES))
            .flat_map(|q| self.wire.queue(q).expect("queue").take_sent())
            .collect()
    }
}

/// A UDP frame from `src` to `dst` (MAC, IP) carrying `tag`.
fn frame(dst: ([u8; 6], [u8; 4]), src: ([u8; 6], [u8; 4]), tag: u32) -> Vec<u8> {
    eth(
        dst.0,
        src.0,
        ETH_P_IP,
        &ipv4(src.1, dst.1, 17, &udp(4000, 7000, &tagged(tag, 32))),
    )
}

/// The frames guest `fe` received on pair 0 (the only one web enables,
/// the one default's tests use) within [`WAIT`], at most `want`.
fn received(fe: &mut TestFrontend, want: usize) -> Vec<Vec<u8>> {
    fe.recv(0, want, WAIT).into_iter().map(|f| f.data).collect()
}

#[test]
fn a_guest_is_offered_its_queue_pairs_and_gets_the_wire_frames_of_every_queue() {
    let rig = Rig::new();
    let mut a = rig.connect("default", 2);
    let mut b = rig.connect("web", 1);
    // max_virtqueue_pairs (struct virtio_net_config bytes 8..10).
    let pairs = |fe: &mut TestFrontend| {
        let c = fe.get_config(12).expect("GET_CONFIG");
        u16::from_le_bytes([c[8], c[9]])
    };
    assert_eq!(pairs(&mut a), QUEUES, "default is offered every NIC queue");
    assert_eq!(pairs(&mut b), 1, "web is offered the one pair it asked for");

    // A frame for web on each NIC queue (RSS spreads a guest's flows over
    // all of them) reaches its one pair: queue 1's through the handoff.
    for q in 0..u32::from(QUEUES) {
        let f = frame(B, (HOST_MAC, HOST_IP), q);
        assert!(rig.wire.queue(q).expect("queue").inject_to(2, &f));
    }
    let got = received(&mut b, 2);
    assert_eq!(got.len(), 2, "both of web's frames arrived on its pair 0");
    // Counters are published once per batch, after its used entries.
    assert!(
        wait_until(WAIT, || rig.counters("web").rx_frames == 2),
        "web counted both: {:?}",
        rig.counters("web")
    );
    assert_eq!(rig.counters("default").rx_frames, 0);
    for q in 0..QUEUES {
        assert!(
            a.recv(q, 1, Duration::from_millis(200)).is_empty(),
            "default got none of web's frames"
        );
    }
}

#[test]
fn guests_are_switched_flooded_and_kept_from_spoofing_without_the_wire_seeing_unicast() {
    let rig = Rig::new();
    let mut a = rig.connect("default", 1);
    let mut b = rig.connect("web", 1);

    // Unicast default -> web: switched, never on the wire.
    let f = frame(B, A, 1);
    assert!(a.send(0, &f, false));
    assert_eq!(received(&mut b, 1), vec![f], "web got default's frame");
    assert!(wait_until(WAIT, || rig.counters("default").tx_switched == 1));
    assert!(
        rig.wire_sent().is_empty(),
        "guest to guest stays off the wire"
    );

    // A broadcast from web: the wire and default, not web itself.
    let bcast = frame(([0xff; 6], [10, 0, 0, 255]), B, 2);
    assert!(b.send(0, &bcast, false));
    assert_eq!(received(&mut a, 1), vec![bcast.clone()]);
    assert!(wait_until(WAIT, || rig.counters("web").tx_flooded == 1));
    let wire: Vec<Vec<u8>> = {
        let mut got = Vec::new();
        assert!(wait_until(WAIT, || {
            got.extend(rig.wire_sent());
            !got.is_empty()
        }));
        got
    };
    assert_eq!(wire, vec![bcast], "the broadcast went to the wire once");
    assert!(
        b.recv(0, 1, Duration::from_millis(300)).is_empty(),
        "a guest does not get its own broadcast"
    );

    // Web spoofing default's MAC, then default's address: dropped, counted,
    // nothing reaches default or the wire.
    let spoofed_mac = frame(A, (A.0, B.1), 3);
    let spoofed_ip = frame(A, (B.0, A.1), 4);
    assert!(b.send(0, &spoofed_mac, false));
    assert!(b.send(0, &spoofed_ip, false));
    assert!(wait_until(WAIT, || rig.counters("web").tx_drop_spoofed == 2));
    assert!(a.recv(0, 1, Duration::from_millis(300)).is_empty());
    assert!(rig.wire_sent().is_empty());
    assert_eq!(rig.counters("web").tx_switched, 0);
    // Every TX chain is accounted for once: sent to the wire (the
    // broadcast), switched, or dropped.
    assert_eq!(b.tx_completed(0), 3);
}
