//! The soak guest (`xdpath_soak::guest`, the logic of the
//! `xdpath-soak-frontend` process) against xdpath's vhost-user server over
//! in-memory ports: no root needed. The server is stopped and another one
//! started on the same socket path, as a daemon killed and restarted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xdpath_dataplane::backend::DEFAULT_POLL_IDLE;
use xdpath_dataplane::{MemWire, NetConfig, PortFactory, Server, ServerError, ServerHandle};
use xdpath_soak::guest::{self, Event};
use xdpath_tests::bridge::MemBridge;

const WAIT: Duration = Duration::from_secs(10);

/// A server with one queue pair on `sock`, over a fresh in-memory wire.
struct Backend {
    handle: ServerHandle<xdpath_dataplane::MemPort>,
    wire: MemWire,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Backend {
    fn start(sock: &Path) -> Self {
        let _ = std::fs::remove_file(sock);
        let factory = MemBridge::factory(1);
        let ports = vec![factory.open(0).expect("an in-memory port")];
        let cfg = NetConfig {
            queue_pairs: 1,
            offered_pairs: 1,
            mac: Some(xdpath_soak::GUEST_MAC),
            mtu: 1500,
            max_queue_size: 1024,
            poll_idle: DEFAULT_POLL_IDLE,
            link: None,
        };
        let server = Server::new(sock, cfg, ports).expect("vhost-user server");
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        Self {
            handle,
            wire: factory.wire().clone(),
            thread: Some(thread),
        }
    }

    /// The guest's frames and ours both ways: inject until the guest
    /// reports session `n` received something, and wait for its frames.
    fn traffic_both_ways(&self, events: &Receiver<Event>, n: u64) {
        let q = self.wire.queue(0).expect("queue 0");
        let end = Instant::now() + WAIT;
        let mut got_rx = false;
        let mut seq = 0;
        while !got_rx {
            assert!(
                Instant::now() < end,
                "no frame reached the guest in session {n}"
            );
            q.inject(&xdpath_soak::to_guest_frame(seq));
            seq += 1;
            while let Ok(e) = events.recv_timeout(Duration::from_millis(20)) {
                if let Event::Traffic { session, rx, .. } = e {
                    got_rx |= session == n && rx > 0;
                }
            }
        }
        let sent = q.wait_sent(1, WAIT);
        let port = xdpath_soak::session_port(n).to_be_bytes();
        assert!(
            sent.iter().any(|f| f.get(34..36) == Some(&port[..])),
            "the guest's frames of session {n} reach the wire: {} frames",
            sent.len()
        );
    }

    fn stop(mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xdpath-soak-{name}-{}.sock", std::process::id()))
}

/// Runs the guest on its own thread; its events arrive on the receiver.
fn spawn_guest(
    sock: &Path,
    reconnect: bool,
    stop: &'static AtomicBool,
) -> (JoinHandle<anyhow::Result<()>>, Receiver<Event>) {
    let (tx, rx) = channel();
    let o = guest::GuestOptions {
        socket: sock.to_path_buf(),
        queue_pairs: 1,
        reconnect,
        tx_pps: 500,
        deadline: Duration::from_secs(60),
        mac: xdpath_soak::GUEST_MAC,
        dst_mac: xdpath_soak::SINK_MAC,
        ip: xdpath_soak::GUEST_IP,
        dst_ip: xdpath_tests::topology::PEER_IP,
        dst_port: xdpath_soak::FROM_GUEST_PORT,
        listen: false,
    };
    let t = std::thread::spawn(move || guest::run(&o, stop, &mut |e| drop(tx.send(e))));
    (t, rx)
}

fn wait_event(events: &Receiver<Event>, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    let end = Instant::now() + WAIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if f(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

#[test]
fn the_guest_redials_a_restarted_backend_and_traffic_resumes() {
    static STOP: AtomicBool = AtomicBool::new(false);
    let sock = sock_path("reconnect");
    let a = Backend::start(&sock);
    let (guest, events) = spawn_guest(&sock, true, &STOP);
    wait_event(&events, "session 1", |e| *e == Event::Up { session: 1 });
    a.traffic_both_ways(&events, 1);

    // The backend dies; another starts on the same path a little later.
    a.stop();
    let down = wait_event(&events, "the end of session 1", |e| {
        matches!(e, Event::Down { session: 1, .. })
    });
    std::thread::sleep(Duration::from_millis(300));
    let b = Backend::start(&sock);
    wait_event(&events, "session 2", |e| *e == Event::Up { session: 2 });
    b.traffic_both_ways(&events, 2);

    STOP.store(true, Ordering::Relaxed);
    guest.join().expect("guest thread").expect("the guest ran");
    drop(b);
    let _ = std::fs::remove_file(&sock);
    assert!(matches!(down, Event::Down { .. }));
}

#[test]
fn without_reconnect_the_guest_ends_with_its_backend() {
    static STOP: AtomicBool = AtomicBool::new(false);
    let sock = sock_path("once");
    let a = Backend::start(&sock);
    let (guest, events) = spawn_guest(&sock, false, &STOP);
    wait_event(&events, "session 1", |e| *e == Event::Up { session: 1 });
    a.traffic_both_ways(&events, 1);
    // A frame for another MAC is counted apart (stray), a broadcast not
    // at all.
    let q = a.wire.queue(0).expect("queue 0");
    let mut other = xdpath_soak::to_guest_frame(1000);
    other[..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x50, 0xa0, 0x77]);
    let mut bcast = xdpath_soak::to_guest_frame(1001);
    bcast[..6].copy_from_slice(&[0xff; 6]);
    q.inject(&bcast);
    q.inject(&other);
    wait_event(&events, "a stray frame counted", |e| {
        matches!(
            e,
            Event::Traffic {
                session: 1,
                stray: 1,
                ..
            }
        )
    });
    let t = Instant::now();
    a.stop();
    let r = guest.join().expect("guest thread");
    assert!(r.is_ok(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "it noticed within its liveness checks: {:?}",
        t.elapsed()
    );
    wait_event(&events, "the end of session 1", |e| {
        matches!(e, Event::Down { session: 1, .. })
    });
    let _ = std::fs::remove_file(&sock);
    assert!(!STOP.load(Ordering::Relaxed));
}
