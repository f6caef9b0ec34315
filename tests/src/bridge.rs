//! Complete bridges for tests, from the wire to xdpath's vhost-user server
//! (the guest is the caller's [`TestFrontend`]):
//!
//! - [`Bridge`] (root): a private netns + veth pair, the XDP classifier on
//!   the host end steering [`GUEST_MAC`] to AF_XDP sockets (one per queue),
//!   the server over them, and the peer namespace as the wire (an AF_XDP
//!   socket per queue to send on exactly that queue, an AF_PACKET capture
//!   for what the guest transmits). Dropping it tears down in the order of
//!   docs/ARCHITECTURE.md: server (workers joined, sockets closed),
//!   classifier (detach, unpin), namespaces.
//! - [`MemBridge`] (no root): the same server, relay and workers over
//!   in-memory ports on an in-memory NIC ([`MemWire`]): the test injects
//!   frames on a queue and captures what the guest sends there. No
//!   classifier: every injected frame goes to the queue's port.

use crate::frames::*;
use crate::frontend::{FrontendOptions, TestFrontend};
use crate::packet::Receiver;
use crate::topology::{Topology, PEER_IP, PEER_MAC};
use crate::wait_until;
use crate::xsk::XskReceiver;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use xdpath_common::{Action, RuleValue};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_dataplane::backend::DEFAULT_POLL_IDLE;
use xdpath_dataplane::{
    CounterSnapshot, MemFactory, MemPort, MemWire, NetConfig, PortFactory, Server, ServerError,
    ServerHandle, XskConfig, XskPort,
};

/// The guest's MAC: the classifier steers it to the guest.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];
/// The guest's IPv4 address.
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 20];
/// How long the tests wait for frames to arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// The MTU the server offers the guest.
pub const MTU: u16 = 1500;

static SOCKETS: AtomicU32 = AtomicU32::new(0);

/// Everything between the wire and the guest, torn down on drop in the
/// order of docs/ARCHITECTURE.md: server (workers joined, sockets closed), then the
/// classifier (detach, unpin), then the namespaces.
pub struct Bridge {
    server: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
    /// The server's handle.
    pub handle: ServerHandle<XskPort>,
    classifier: Option<Classifier>,
    /// The vhost-user socket the guest connects to.
    pub sock: PathBuf,
    /// One AF_XDP socket per peer queue, to send on that queue.
    pub wire_tx: Vec<XskReceiver>,
    /// Captures what arrives at the peer.
    pub wire_rx: Receiver,
    queue_pairs: u16,
    // Last: dropped after everything that lives in it.
    topo: Topology,
}

impl Bridge {
    /// Builds everything for `queue_pairs` queue pairs.
    pub fn new(queue_pairs: u16) -> Self {
        Self::with_frames(queue_pairs, XskConfig::new("", 0).frames)
    }

    /// Like [`Bridge::new`] with `frames` UMEM frames per socket (half of
    /// them serve TX), to make TX run out of frames quickly.
    pub fn with_frames(queue_pairs: u16, frames: u32) -> Self {
        Self::build(queue_pairs, frames, true, DEFAULT_POLL_IDLE)
    }

    /// Like [`Bridge::new`] but the peer queues are left free (no wire
    /// AF_XDP sockets; `wire_tx` is empty) for a benchmark's generator, and
    /// the workers poll for `poll_idle` after moving frames.
    pub fn without_wire_sockets(queue_pairs: u16, poll_idle: Duration) -> Self {
        Self::build(queue_pairs, XskConfig::new("", 0).frames, false, poll_idle)
    }

    fn build(queue_pairs: u16, frames: u32, wire_sockets: bool, poll_idle: Duration) -> Self {
        let topo = Topology::new(u32::from(queue_pairs)).expect("topology");
        let (classifier, ports) =
            guest_sockets(&topo, u32::from(queue_pairs), frames).expect("classifier and sockets");
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        let sock =
            std::env::temp_dir().join(format!("xdpath-test-{}-{n}.sock", std::process::id()));
        let cfg = NetConfig {
            queue_pairs,
            offered_pairs: queue_pairs,
            mac: Some(GUEST_MAC),
            mtu: MTU,
            max_queue_size: 1024,
            poll_idle,
            link: None,
        };
        let server = Server::new(&sock, cfg, ports).expect("vhost-user server");
        let handle = server.handle();
        let server = std::thread::spawn(move || server.run());
        let peer_if = topo.peer_if.clone();
        let (wire_tx, wire_rx) = topo.in_peer(|| {
            let tx = (0..u32::from(queue_pairs))
                .filter(|_| wire_sockets)
                .map(|q| XskReceiver::bind(&peer_if, q).expect("peer AF_XDP socket"))
                .collect();
            (tx, Receiver::new(&peer_if).expect("peer capture"))
        });
        Self {
            server: Some(server),
            handle,
            classifier: Some(classifier),
            sock,
            wire_tx,
            wire_rx,
            queue_pairs,
            topo,
        }
    }

    /// The namespaces and veth pair.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The host end of the veth pair (the "NIC").
    pub fn host_if(&self) -> &str {
        &self.topo.host_if
    }

    /// Runs `f` on a thread inside the host namespace.
    pub fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.topo.in_host(f)
    }

    /// The host network namespace.
    pub fn host_ns(&self) -> &str {
        &self.topo.host_ns
    }

    /// The classifier on the host end.
    pub fn classifier(&mut self) -> &mut Classifier {
        self.classifier
            .as_mut()
            .expect("the classifier lives until drop")
    }

    /// Waits up to `timeout` for the server thread to end by itself and
    /// returns its result (`None` if it is still running).
    pub fn server_result(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<(), xdpath_dataplane::ServerError>> {
        if !wait_until(timeout, || {
            self.server.as_ref().is_none_or(|t| t.is_finished())
        }) {
            return None;
        }
        let t = self.server.take()?;
        Some(t.join().expect("server thread panicked"))
    }

    /// The peer (wire) end of the veth pair.
    pub fn peer_if(&self) -> &str {
        &self.topo.peer_if
    }

    /// Runs `f` on a thread inside the peer namespace.
    pub fn in_peer<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.topo.in_peer(f)
    }

    /// Connects the in-repo frontend.
    pub fn connect(&self, opts: FrontendOptions) -> TestFrontend {
        TestFrontend::connect(&self.sock, opts).expect("frontend connects and negotiates")
    }

    /// Counters of queue pair `qp`.
    pub fn counters(&self, qp: u16) -> CounterSnapshot {
        counters_of(&self.handle, qp)
    }

    /// Waits until `f` holds for the counters of `qp`; returns the last
    /// ones read.
    pub fn wait_counters(&self, qp: u16, f: impl Fn(&CounterSnapshot) -> bool) -> CounterSnapshot {
        wait_counters_of(&self.handle, qp, f)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.server.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("server ended with: {e}"),
                Err(_) => eprintln!("server thread panicked"),
            }
        }
        if let Some(c) = self.classifier.take() {
            let _ = c.shutdown();
        }
        let _ = std::fs::remove_file(&self.sock);
        let _ = self.queue_pairs;
        let _ = &self.topo;
    }
}

/// RX frames of each in-memory port of a [`MemBridge`].
pub const MEM_RX_FRAMES: usize = 256;
/// TX frames of each in-memory port of a [`MemBridge`].
pub const MEM_TX_FRAMES: usize = 256;
/// Frame size of the in-memory ports (a UMEM's default).
pub const MEM_FRAME_SIZE: usize = 2048;
/// Largest vring a [`MemBridge`] accepts (QEMU's limit is 1024; larger
/// rings give a test's guest more slack when it gets little CPU).
pub const MEM_MAX_QUEUE_SIZE: u16 = 4096;

/// xdpath's vhost-user server over in-memory ports, running on its own
/// thread; needs no root. Dropping it stops the server and joins it.
pub struct MemBridge {
    server: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
    /// The server's handle.
    pub handle: ServerHandle<MemPort>,
    /// The in-memory NIC: inject and capture frames per queue.
    pub wire: MemWire,
    /// Opens more ports on `wire` (socket replacement).
    pub factory: MemFactory,
    /// The vhost-user socket.
    pub sock: PathBuf,
}

impl MemBridge {
    /// A server with `queue_pairs` pairs, one port per queue of a fresh
    /// wire.
    pub fn new(queue_pairs: u16) -> Self {
        Self::with_setup(queue_pairs, |_| {})
    }

    /// Like [`MemBridge::new`], the server set up by `setup` (e.g.
    /// [`Server::set_faults`]) before it runs.
    pub fn with_setup(queue_pairs: u16, setup: impl FnOnce(&mut Server<MemPort>)) -> Self {
        let factory = Self::factory(queue_pairs);
        let ports = (0..u32::from(queue_pairs))
            .map(|q| factory.open(q))
            .collect::<Result<Vec<_>, _>>()
            .expect("in-memory ports");
        Self::start(factory, ports, setup)
    }

    /// The factory of a fresh wire of `queues` queues, with this bridge's
    /// port geometry.
    pub fn factory(queues: u16) -> MemFactory {
        MemFactory::new(
            MemWire::new(u32::from(queues)),
            MEM_RX_FRAMES,
            MEM_TX_FRAMES,
            MEM_FRAME_SIZE,
        )
    }

    /// A server over `ports` (opened by `factory`, in queue order), set up
    /// by `setup` (e.g. [`Server::on_connection`]) before it runs.
    pub fn start(
        factory: MemFactory,
        ports: Vec<MemPort>,
        setup: impl FnOnce(&mut Server<MemPort>),
    ) -> Self {
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        let sock = std::env::temp_dir().join(format!("xdpath-mem-{}-{n}.sock", std::process::id()));
        let cfg = NetConfig {
            queue_pairs: u16::try_from(ports.len()).expect("queue pairs"),
            offered_pairs: u16::try_from(ports.len()).expect("queue pairs"),
            mac: Some(GUEST_MAC),
            mtu: MTU,
            max_queue_size: MEM_MAX_QUEUE_SIZE,
            poll_idle: DEFAULT_POLL_IDLE,
            link: None,
        };
        let mut server = Server::new(&sock, cfg, ports).expect("vhost-user server");
        setup(&mut server);
        let handle = server.handle();
        let server = std::thread::Builder::new()
            .name("mem-server".into())
            .spawn(move || server.run())
            .expect("server thread");
        Self {
            server: Some(server),
            handle,
            wire: factory.wire().clone(),
            factory,
            sock,
        }
    }

    /// Connects the in-repo frontend.
    pub fn connect(&self, opts: FrontendOptions) -> TestFrontend {
        TestFrontend::connect(&self.sock, opts).expect("frontend connects and negotiates")
    }

    /// Wire queue `q`.
    pub fn queue(&self, q: u32) -> &xdpath_dataplane::MemQueue {
        self.wire.queue(q).expect("the wire has this queue")
    }

    /// Counters of queue pair `qp`.
    pub fn counters(&self, qp: u16) -> CounterSnapshot {
        counters_of(&self.handle, qp)
    }

    /// Waits until `f` holds for the counters of `qp`; returns the last
    /// ones read.
    pub fn wait_counters(&self, qp: u16, f: impl Fn(&CounterSnapshot) -> bool) -> CounterSnapshot {
        wait_counters_of(&self.handle, qp, f)
    }

    /// Waits up to `timeout` for the server thread to end by itself and
    /// returns its result (`None` if it is still running).
    pub fn server_result(&mut self, timeout: Duration) -> Option<Result<(), ServerError>> {
        if !wait_until(timeout, || {
            self.server.as_ref().is_none_or(|t| t.is_finished())
        }) {
            return None;
        }
        let t = self.server.take()?;
        Some(t.join().expect("server thread panicked"))
    }
}

impl Drop for MemBridge {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.server.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("server ended with: {e}"),
                Err(_) => eprintln!("server thread panicked"),
            }
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// The classifier on `topo`'s host end steering [`GUEST_MAC`] to AF_XDP
/// sockets, one per queue `0..queues` (copy mode, `frames` UMEM frames
/// each), registered in its XSKMAP.
pub fn guest_sockets(
    topo: &Topology,
    queues: u32,
    frames: u32,
) -> anyhow::Result<(Classifier, Vec<XskPort>)> {
    let host_if = topo.host_if.clone();
    topo.in_host(|| {
        let mut c = Classifier::attach(&ClassifierConfig::new(&host_if))?;
        c.insert_mac(
            GUEST_MAC,
            &RuleValue {
                action: Action::Guest as u32,
                port: 1,
                rule_id: 1,
                _pad: 0,
            },
        )?;
        let mut ports = Vec::new();
        for q in 0..queues {
            let mut cfg = XskConfig::new(&host_if, q);
            cfg.force_copy = true;
            cfg.frames = frames;
            let p = XskPort::bind(&cfg)?;
            c.register_socket(q, &p)?;
            ports.push(p);
        }
        Ok((c, ports))
    })
}

/// Counters of queue pair `qp` of the server behind `handle`.
fn counters_of<P: xdpath_dataplane::FramePort>(
    handle: &ServerHandle<P>,
    qp: u16,
) -> CounterSnapshot {
    handle.counters(usize::from(qp)).expect("queue pair exists")
}

/// Waits (up to [`WAIT`]) until `f` holds for the counters of queue pair
/// `qp`; returns the last ones read.
fn wait_counters_of<P: xdpath_dataplane::FramePort>(
    handle: &ServerHandle<P>,
    qp: u16,
    f: impl Fn(&CounterSnapshot) -> bool,
) -> CounterSnapshot {
    let mut c = counters_of(handle, qp);
    wait_until(WAIT, || {
        c = counters_of(handle, qp);
        f(&c)
    });
    c
}

/// A frame for the guest: dst = guest MAC, tagged payload.
pub fn to_guest(qp: u16, i: u32, payload: usize) -> Vec<u8> {
    eth(
        GUEST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(
            PEER_IP,
            GUEST_IP,
            17,
            &udp(5000 + qp, 6000, &tagged(i, payload)),
        ),
    )
}

/// A frame from the guest to the peer.
pub fn from_guest(qp: u16, i: u32, payload: usize) -> Vec<u8> {
    eth(
        PEER_MAC,
        GUEST_MAC,
        ETH_P_IP,
        &ipv4(
            GUEST_IP,
            PEER_IP,
            17,
            &udp(7000 + qp, 8000, &tagged(i, payload)),
        ),
    )
}
