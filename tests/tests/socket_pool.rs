//! The socket pool's XSKMAP writes against the connection events, without
//! root: the real vhost-user server over in-memory ports ([`MemBridge`]),
//! the in-repo frontend as the guest, an in-memory XSKMAP, and the pool's
//! step hook ([`SocketPool::on_step`]) as the seam that puts a guest's
//! disconnect, or its connect, exactly between two steps of a socket
//! replacement.
//!
//! Whatever the interleaving, once both are done the XSKMAP must hold, for
//! every queue, the socket its worker reads while a guest is connected, and
//! nothing while none is: an entry for a socket nobody reads drops the
//! queue's traffic instead of failing open to the host.

use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};
use xdpath_control::socket_pool::{MemSocketMap, ReplaceStep, SocketPool, SocketState};
use xdpath_dataplane::{ConnectionEvent, MemFactory};
use xdpath_tests::bridge::{to_guest, MemBridge, WAIT};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::wait_until;

const PAIRS: u16 = 2;

/// What the seam does once, when the replacement of a queue reaches a step.
type Action = Box<dyn FnOnce() + Send>;

struct Rig {
    bridge: MemBridge,
    pool: Arc<SocketPool<MemFactory>>,
    map: Arc<Mutex<MemSocketMap>>,
    /// (queue, step, action): run once by the step hook.
    seam: Arc<Mutex<Option<(u32, ReplaceStep, Action)>>>,
    /// The connection events the server delivered, in order ("up"/"down").
    events: Arc<Mutex<Vec<&'static str>>>,
}

/// One test at a time: `a_socket_closed_before_the_up_event_is_not_registered`
/// needs the fd number the old socket frees to go to the file it opens,
/// and the other tests open and close fds (sockets, eventfds) meanwhile.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FDS: Mutex<()> = Mutex::new(());
    FDS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn opts() -> FrontendOptions {
    FrontendOptions {
        queue_pairs: PAIRS,
        enabled_pairs: PAIRS,
        ..FrontendOptions::default()
    }
}

/// The pool over the bridge's factory, wired to the server's connection
/// events as xdpathd does, with `up` run in the Up event before the pool
/// hears of it.
fn rig_with(up: impl Fn(&[(u32, i32)]) + Send + 'static) -> Rig {
    let seam: Arc<Mutex<Option<(u32, ReplaceStep, Action)>>> = Arc::new(Mutex::new(None));
    let factory = MemBridge::factory(PAIRS);
    let (pool, ports) = SocketPool::create(factory.clone(), u32::from(PAIRS)).expect("pool");
    let s = seam.clone();
    let pool = Arc::new(pool.on_step(move |queue, step| {
        let mut slot = s.lock().unwrap_or_else(PoisonError::into_inner);
        if slot
            .as_ref()
            .is_some_and(|(q, st, _)| *q == queue && *st == step)
        {
            let (_, _, action) = slot.take().expect("checked");
            drop(slot);
            action();
        }
    }));
    let map = Arc::new(Mutex::new(MemSocketMap::new()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (p, m, e) = (pool.clone(), map.clone(), events.clone());
    let bridge = MemBridge::start(factory, ports, move |server| {
        server.on_connection(move |ev| match ev {
            ConnectionEvent::Up(fds) => {
                up(fds);
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                p.register_all(&mut *m, fds).expect("register");
                e.lock().unwrap().push("up");
            }
            ConnectionEvent::Down => {
                let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
                p.unregister_all(&mut *m);
                e.lock().unwrap().push("down");
            }
        });
    });
    Rig {
        bridge,
        pool,
        map,
        seam,
        events,
    }
}

impl Rig {
    fn entry(&self, q: u32) -> Option<i32> {
        self.map.lock().unwrap().entry(q)
    }

    fn events(&self) -> Vec<&'static str> {
        self.events.lock().unwrap().clone()
    }

    /// Connects a guest and waits until the Up event was handled.
    fn connect(&self) -> TestFrontend {
        let n = self.events().len();
        let fe = self.bridge.connect(opts());
        assert!(
            wait_until(WAIT, || self.events().len() > n),
            "the Up event ran"
        );
        fe
    }

    /// At `step` of queue `q`'s replacement, runs `action`.
    fn at(&self, q: u32, step: ReplaceStep, action: impl FnOnce() + Send + 'static) {
        *self.seam.lock().unwrap() = Some((q, step, Box::new(action)));
    }

    /// Replaces queue `q`'s socket; the seam must have fired.
    fn replace(&self, q: u32) {
        let info = self
            .pool
            .replace(q, &*self.map, &self.bridge.handle)
            .expect("replace");
        assert_eq!(info.state, SocketState::Bound);
        assert!(self.seam.lock().unwrap().is_none(), "the seam fired");
    }

    /// With a guest connected: every queue's entry is its current socket.
    fn assert_steered(&self, when: &str) {
        for q in 0..u32::from(PAIRS) {
            let port = self.bridge.queue(q).attached_fd();
            assert!(port.is_some(), "{when}: queue {q} has a socket");
            assert_eq!(
                self.entry(q),
                port,
                "{when}: queue {q} is steered to the socket its worker reads"
            );
        }
    }

    /// Without a guest: no entry at all (traffic fails open).
    fn assert_failed_open(&self, when: &str) {
        for q in 0..u32::from(PAIRS) {
            assert_eq!(
                self.entry(q),
                None,
                "{when}: queue {q} has an XSKMAP entry though no guest reads it"
            );
        }
    }

    /// A frame for the guest on queue `q` reaches a connected guest.
    fn delivers(&self, fe: &mut TestFrontend, q: u16, i: u32) {
        fe.post_rx_buffers(q, 8, 2048);
        let f = to_guest(q, i, 100);
        assert!(self.bridge.queue(u32::from(q)).inject(&f), "a port is open");
        let got: Vec<Vec<u8>> = fe.recv(q, 1, WAIT).into_iter().map(|g| g.data).collect();
        assert_eq!(got, [f], "queue {q}");
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

const STEPS: [ReplaceStep; 4] = [
    ReplaceStep::EntryOut,
    ReplaceStep::Released,
    ReplaceStep::Opened,
    ReplaceStep::EntryIn,
];

/// The guest disconnects between two steps of a replacement of queue 0:
/// afterwards no queue is steered (fail open), and a guest that connects
/// next is steered to the new socket.
#[test]
fn a_disconnect_between_the_steps_of_a_replacement_leaves_no_entry() {
    let _serial = one_at_a_time();
    for step in STEPS {
        let r = rig();
        let fe = Arc::new(Mutex::new(Some(r.connect())));
        r.assert_steered("connected");
        let (f, events) = (fe.clone(), r.events.clone());
        r.at(0, step, move || {
            drop(f.lock().unwrap().take());
            assert!(
                wait_until(WAIT, || events.lock().unwrap().len() == 2),
                "the Down event ran"
            );
        });
        r.replace(0);
        assert_eq!(r.events(), ["up", "down"], "{step:?}");
        r.assert_failed_open(&format!("disconnect after {step:?}"));

        let mut fe = r.connect();
        r.assert_steered(&format!("reconnect after {step:?}"));
        r.delivers(&mut fe, 0, 1);
        r.delivers(&mut fe, 1, 2);
    }
}

/// The guest connects between two steps of a replacement of queue 0:
/// afterwards every queue, queue 0 included, is steered to the socket its
/// worker reads.
#[test]
fn a_connect_between_the_steps_of_a_replacement_steers_the_new_socket() {
    let _serial = one_at_a_time();
    for step in STEPS {
        let r = rig();
        r.assert_failed_open("no guest yet");
        let fe: Arc<Mutex<Option<TestFrontend>>> = Arc::new(Mutex::new(None));
        let (f, events) = (fe.clone(), r.events.clone());
        let sock = r.bridge.sock.clone();
        r.at(0, step, move || {
            let c = TestFrontend::connect(&sock, opts()).expect("frontend");
            *f.lock().unwrap() = Some(c);
            assert!(
                wait_until(WAIT, || events.lock().unwrap().len() == 1),
                "the Up event ran"
            );
        });
        r.replace(0);
        r.assert_steered(&format!("connect after {step:?}"));
        let mut fe = fe.lock().unwrap().take().expect("connected");
        r.delivers(&mut fe, 0, 1);
        r.delivers(&mut fe, 1, 2);
    }
}

/// A replacement that runs while the server delivers the Up event, after it
/// read the sockets' fds: the reported fd of queue 0 is closed by then (and
/// its number taken by another file), and must not be registered.
#[test]
fn a_socket_closed_before_the_up_event_is_not_registered() {
    let _serial = one_at_a_time();
    // The replacement runs inside the first Up event, before the pool hears
    // of it; the pool is filled in once the rig exists.
    let late: Arc<Mutex<Option<Arc<Rig>>>> = Arc::new(Mutex::new(None));
    let held: Arc<Mutex<Vec<File>>> = Arc::new(Mutex::new(Vec::new()));
    let (l, h) = (late.clone(), held.clone());
    let r = Arc::new(rig_with(move |fds| {
        let Some(r) = l.lock().unwrap().take() else {
            return;
        };
        let reported = fds.iter().find(|(q, _)| *q == 0).map(|&(_, fd)| fd);
        assert_eq!(reported, r.bridge.queue(0).attached_fd(), "read before");
        // Once the old socket is closed, its number goes to another file.
        let h2 = h.clone();
        r.at(0, ReplaceStep::Released, move || {
            h2.lock()
                .unwrap()
                .push(File::open("/dev/null").expect("/dev/null"));
        });
        r.replace(0);
        assert_ne!(
            r.bridge.queue(0).attached_fd(),
            reported,
            "queue 0 has a new socket"
        );
    }));
    *late.lock().unwrap() = Some(r.clone());
    let mut fe = r.connect();
    assert!(late.lock().unwrap().is_none(), "the replacement ran");
    r.assert_steered("after the Up event");
    r.delivers(&mut fe, 0, 1);
    drop(held);
}
