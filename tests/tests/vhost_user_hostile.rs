//! Hostile guests and frontends against the vhost-user server, without
//! root: the real `Server`, relay and workers over in-memory ports
//! ([`MemBridge`]), driven by the in-repo frontend or by hand-made
//! vhost-user messages. Each test names the defect of issue 11 it guards
//! and shows that the server stays responsive: other traffic flows, stop
//! completes, the next frontend is served.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use xdpath_dataplane::relay::{MAX_HELD, MESSAGE_TIMEOUT};
use xdpath_tests::bridge::{from_guest, to_guest, MemBridge, MEM_MAX_QUEUE_SIZE, WAIT};
use xdpath_tests::frontend::{FrontendOptions, TestFrontend};
use xdpath_tests::wait_until;

const GET_FEATURES: u32 = 1;
const SET_VRING_ENABLE: u32 = 18;
/// Version 1 in the header flags.
const V1: u32 = 1;
/// A vring state: vring 0, enabled.
const ENABLE_0: [u8; 8] = [0, 0, 0, 0, 1, 0, 0, 0];

/// One vhost-user message as bytes (the spec's native-endian header).
fn raw_msg(request: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + payload.len());
    for v in [request, V1, payload.len() as u32] {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    m.extend_from_slice(payload);
    m
}

/// A frontend speaking raw bytes, once the server is ready for it.
fn connect_raw(b: &MemBridge) -> UnixStream {
    let s = UnixStream::connect(&b.sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    s
}

/// Whether the server closes `s` within `t` (replies are skipped).
fn closed_within(s: &mut UnixStream, t: Duration) -> bool {
    let end = Instant::now() + t;
    let mut buf = [0u8; 256];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => {}
        }
    }
    false
}

/// The server serves `fe` both ways on pair 0.
fn assert_serves(b: &MemBridge, fe: &mut TestFrontend, tag: u32) {
    fe.post_rx_buffers(0, 8, 2048);
    let down = to_guest(0, tag, 100);
    assert!(b.queue(0).inject(&down));
    let got = fe.recv(0, 1, WAIT);
    assert_eq!(got.first().map(|f| &f.data), Some(&down), "wire -> guest");
    let _ = b.queue(0).take_sent();
    let up = from_guest(0, tag, 100);
    assert!(fe.send(0, &up, false));
    assert_eq!(b.queue(0).wait_sent(1, WAIT), [up], "guest -> wire");
}

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
        queue_size: MEM_MAX_QUEUE_SIZE,
        ..FrontendOptions::default()
    });
    // A full RX ring: 400 ms of frames at the wire's rate, so the guest's
    // reader loses none when it gets little CPU on a busy machine.
    let n = usize::from(MEM_MAX_QUEUE_SIZE);
    assert_eq!(fe.post_rx_buffers(0, n, 2048), n);
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
         (at most 1% may be); the backend took {flooded} flooding chains meanwhile; \
         counters {:?}, wire {:?}",
        b.counters(0),
        b.queue(0).stats()
    );
    eprintln!(
        "{received} of {offered} frames read while the backend took {flooded} flooding chains"
    );
    assert!(
        flooded > offered,
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

/// Issue 11, #2: the relay holds SET_VRING_ENABLE that comes before
/// SET_FEATURES acks PROTOCOL_FEATURES; it holds at most `MAX_HELD`, and
/// only exact vring states without descriptors. Before the fix it held
/// any number, of any size, with any fds, for as long as the frontend
/// never acked.
#[test]
fn early_vring_enables_are_bounded_and_must_be_vring_states() {
    let b = MemBridge::new(1);
    let mut s = connect_raw(&b);
    for _ in 0..MAX_HELD {
        s.write_all(&raw_msg(SET_VRING_ENABLE, &ENABLE_0))
            .expect("send");
    }
    assert!(
        !closed_within(&mut s, Duration::from_millis(200)),
        "{MAX_HELD} early enables are held"
    );
    s.write_all(&raw_msg(SET_VRING_ENABLE, &ENABLE_0))
        .expect("send");
    assert!(
        closed_within(&mut s, WAIT),
        "one more than {MAX_HELD} ends the connection"
    );

    let mut s = connect_raw(&b);
    s.write_all(&raw_msg(SET_VRING_ENABLE, &[0; 64]))
        .expect("send");
    assert!(
        closed_within(&mut s, WAIT),
        "64 bytes are not a vring state"
    );

    let mut s = connect_raw(&b);
    let fds: Vec<UnixStream> = (0..8).map(|_| connect_raw_pair()).collect();
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let m = raw_msg(SET_VRING_ENABLE, &ENABLE_0);
    s.send_with_fds(&[&m[..]], &raw).expect("send with fds");
    assert!(
        closed_within(&mut s, WAIT),
        "an early enable carries no fds"
    );

    // QEMU 7.2's order still works, on the same server.
    let mut fe = b.connect(FrontendOptions {
        early_vring_enable: true,
        ..FrontendOptions::default()
    });
    assert_serves(&b, &mut fe, 1);
    assert_eq!(b.handle.connections(), 4);
}

/// A socket to pass as an fd.
fn connect_raw_pair() -> UnixStream {
    UnixStream::pair().expect("socketpair").0
}

/// Issue 11, #10: a frontend that stops in the middle of a message. The
/// relay waits for the rest for `MESSAGE_TIMEOUT` only, so the next
/// frontend is served; and stop ends the connection at once, half a
/// message or not. Before the fix the relay waited for the rest forever:
/// no other frontend was ever served, and stop never completed.
#[test]
fn a_frontend_stuck_mid_message_blocks_neither_the_next_one_nor_stop() {
    let mut b = MemBridge::new(1);
    let mut half = connect_raw(&b);
    half.write_all(&raw_msg(GET_FEATURES, &[])[..6])
        .expect("half a header");
    let sock = b.sock.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(TestFrontend::connect(&sock, FrontendOptions::default()));
    });
    let mut fe = rx
        .recv_timeout(MESSAGE_TIMEOUT + WAIT)
        .expect("the next frontend is served")
        .expect("and completes its handshake");
    assert!(
        closed_within(&mut half, Duration::ZERO) || closed_within(&mut half, WAIT),
        "the stuck frontend was cut off"
    );
    assert_serves(&b, &mut fe, 2);
    drop(fe);
    assert!(wait_until(WAIT, || !b.handle.connected()));

    // Stop while a frontend is in the middle of a message.
    let mut half = connect_raw(&b);
    assert!(wait_until(WAIT, || b.handle.connections() == 3));
    half.write_all(&raw_msg(GET_FEATURES, &[])[..6])
        .expect("half a header");
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    b.handle.stop();
    let result = b.server_result(Duration::from_secs(1));
    assert!(
        result.is_some(),
        "stop did not complete within 1 s (the relay's timeout is {MESSAGE_TIMEOUT:?})"
    );
    assert!(result.is_some_and(|r| r.is_ok()));
    eprintln!("stop completed in {:?}", asked.elapsed());
    assert!(closed_within(&mut half, WAIT));
}

/// Guest memory is checked before it is mapped: a frontend whose memory
/// table claims more than its memfd holds is refused (touching the
/// mapping past the end of the file would kill the daemon with SIGBUS).
/// Before the fix the backend mapped the region, and the first descriptor
/// pointing past the file's end crashed the process.
#[test]
fn a_memory_region_larger_than_its_file_is_refused_before_it_is_mapped() {
    let b = MemBridge::new(1);
    let refused = TestFrontend::connect(
        &b.sock,
        FrontendOptions {
            mem_size: 16 << 20,
            claimed_mem_size: Some(64 << 20),
            ..FrontendOptions::default()
        },
    );
    let err = match refused {
        Ok(_) => panic!("the backend accepted a 64 MiB region backed by a 16 MiB memfd"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("SET_MEM_TABLE"), "{err}");
    let mut fe = b.connect(FrontendOptions::default());
    assert_serves(&b, &mut fe, 3);
    assert_eq!(b.handle.connections(), 2);
}

/// Guest frames shorter than an Ethernet header never reach the wire;
/// they are counted in `tx_drop_short`.
#[test]
fn guest_frames_shorter_than_an_ethernet_header_are_dropped_and_counted() {
    let b = MemBridge::new(1);
    let mut fe = b.connect(FrontendOptions::default());
    for len in [1, 13] {
        assert!(fe.send(0, &vec![0xab; len], false));
    }
    let ok = from_guest(0, 4, 18);
    assert!(fe.send(0, &ok, true));
    assert_eq!(b.queue(0).wait_sent(1, WAIT), [ok]);
    let c = b.wait_counters(0, |c| c.tx_drop_short == 2 && c.tx_frames == 1);
    assert_eq!((c.tx_drop_short, c.tx_frames, c.tx_drop_empty), (2, 1, 0));
    assert!(b.queue(0).take_sent().is_empty(), "nothing else went out");
}

/// The vhost-user socket has the mode, owner and group asked for from the
/// moment it exists at its path (`SocketPermissions`; the daemon's
/// `--vhost-socket-mode/-owner/-group`).
#[test]
fn the_vhost_user_socket_has_the_permissions_asked() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use xdpath_dataplane::{NetConfig, PortFactory, Server, SocketPermissions};
    let factory = MemBridge::factory(1);
    let dir = std::env::temp_dir().join(format!("xdpath-perm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("vhost.sock");
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let cfg = NetConfig {
        queue_pairs: 1,
        offered_pairs: 1,
        mac: None,
        mtu: 1500,
        max_queue_size: 256,
        poll_idle: Duration::ZERO,
        link: None,
    };
    let server = Server::with_permissions(
        &path,
        SocketPermissions {
            mode: 0o600,
            owner: Some(uid),
            group: Some(gid),
        },
        cfg.clone(),
        vec![factory.open(0).expect("port")],
    )
    .expect("server");
    let meta = std::fs::symlink_metadata(&path).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o600, uid, gid)
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["vhost.sock"], "no staging directory left behind");
    drop(server);
    assert!(!path.exists(), "the socket goes with the server");

    // The default is 0660; a mode beyond 0777 is refused.
    let server =
        Server::new(&path, cfg.clone(), vec![factory.open(0).expect("port")]).expect("server");
    let mode = std::fs::metadata(&path).expect("socket").mode() & 0o7777;
    assert_eq!(mode, 0o660);
    drop(server);
    let err = Server::with_permissions(
        &path,
        SocketPermissions {
            mode: 0o4660,
            ..SocketPermissions::default()
        },
        cfg,
        vec![factory.open(0).expect("port")],
    )
    .expect_err("setuid bits are refused")
    .to_string();
    assert_eq!(
        err,
        "Invalid dataplane configuration: socket mode 4660 has bits beyond 0777."
    );
    let _ = std::fs::remove_dir(&dir);
}
