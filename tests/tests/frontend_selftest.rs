//! Self-test of the in-repo vhost-user frontend (`xdpath_tests::frontend`).
//!
//! A minimal vhost-user-net backend built on vhost-user-backend runs in the
//! test process: one worker thread per queue pair loops every frame from TX
//! vring 2i+1 back to RX vring 2i (header stripped, a new header with
//! `num_buffers` written, mergeable RX buffers when negotiated). Everything
//! the tests check goes through `TestFrontend`: the handshake, 1 and 2
//! queue pairs, EVENT_IDX on and off, MRG_RXBUF on and off, contiguous,
//! split and indirect TX chains, hand-built chains, late vring enable,
//! GET_CONFIG, calls, ring wrap-around and disconnect. No root, no network.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    Error as DaemonError, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_NEXT,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use xdpath_tests::frontend::{FrontendOptions, RawDesc, RxFrame, TestFrontend};
use xdpath_tests::wait_until;

const HDR: usize = 12;
/// Frames taken off TX but not yet delivered to RX, per pair.
const STASH_MAX: usize = 1024;
const WAIT: Duration = Duration::from_secs(5);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

const fn bit(b: u32) -> u64 {
    1u64 << b
}

// ---------------------------------------------------------------------------
// The loopback backend.

/// An RX chain taken off the avail ring, waiting for (the rest of) a frame.
struct RxBuf {
    head: u16,
    segs: Vec<(GuestAddress, u32)>,
    cap: usize,
}

/// Owned by the pair's worker thread (the mutex is never contended).
#[derive(Default)]
struct PairState {
    stash: VecDeque<Vec<u8>>,
    reserved: VecDeque<RxBuf>,
    dropped: u64,
}

#[derive(Clone)]
struct Loopback {
    pairs: usize,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    state: Arc<Vec<Mutex<PairState>>>,
    acked: Arc<AtomicU64>,
}

impl Loopback {
    fn new(pairs: usize, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> Self {
        Self {
            pairs,
            mem,
            state: Arc::new((0..pairs).map(|_| Mutex::default()).collect()),
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves frames TX -> RX for one pair until neither ring has work.
    fn run_pair(&self, pair: usize, rx: &VringRwLock, tx: &VringRwLock) {
        // One snapshot per call: the table may have been replaced since.
        let mem = self.mem.memory();
        let mrg = self.acked.load(Ordering::Relaxed) & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let Some(state) = self.state.get(pair) else {
            return;
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            drain_tx(&mem, tx, &mut st);
            fill_rx(&mem, rx, &mut st, mrg);
            let more_tx = rearm(&mem, tx);
            let more_rx = rearm(&mem, rx);
            let tx_work = more_tx && st.stash.len() < STASH_MAX;
            let rx_work = more_rx && !st.stash.is_empty();
            if !tx_work && !rx_work {
                break;
            }
        }
    }
}

fn usable(g: &vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>) -> bool {
    g.is_enabled() && g.get_queue().ready()
}

/// TX chains -> stash (header stripped), each completed with len 0.
fn drain_tx(mem: &GuestMemoryMmap, tx: &VringRwLock, st: &mut PairState) {
    let mut g = tx.get_mut();
    if !usable(&g) {
        return;
    }
    let q = g.get_queue_mut();
    let _ = q.disable_notification(mem);
    let mut done = 0;
    while st.stash.len() < STASH_MAX {
        let Some(chain) = q.iter(mem).ok().and_then(|mut it| it.next()) else {
            break;
        };
        let head = chain.head_index();
        let mut bytes = Vec::new();
        let ok = chain
            .reader(mem)
            .map(|mut r| r.read_to_end(&mut bytes).is_ok())
            .unwrap_or(false);
        if ok && bytes.len() >= HDR {
            bytes.drain(..HDR);
            st.stash.push_back(bytes);
        } else {
            st.dropped += 1;
        }
        if q.add_used(mem, head, 0).is_err() {
            st.dropped += 1;
            break;
        }
        done += 1;
    }
    if done > 0 && q.needs_notification(mem).unwrap_or(true) {
        let _ = g.signal_used_queue();
    }
}

/// Stash -> RX buffers, with a header carrying `num_buffers`.
fn fill_rx(mem: &GuestMemoryMmap, rx: &VringRwLock, st: &mut PairState, mrg: bool) {
    let mut g = rx.get_mut();
    if !usable(&g) {
        return;
    }
    let q = g.get_queue_mut();
    let _ = q.disable_notification(mem);
    let mut done = 0;
    while let Some(need) = st.stash.front().map(|f| f.len() + HDR) {
        // Reserve buffers until the frame fits (mergeable) or one is there.
        loop {
            let enough = if mrg {
                st.reserved.iter().map(|b| b.cap).sum::<usize>() >= need
            } else {
                !st.reserved.is_empty()
            };
            if enough {
                break;
            }
            let Some(chain) = q.iter(mem).ok().and_then(|mut it| it.next()) else {
                break;
            };
            let head = chain.head_index();
            let segs: Vec<_> = chain.writable().map(|d| (d.addr(), d.len())).collect();
            let cap = segs.iter().map(|s| s.1 as usize).sum();
            st.reserved.push_back(RxBuf { head, segs, cap });
        }
        let nbufs = if mrg {
            let mut have = 0;
            let mut n = 0;
            for b in &st.reserved {
                if have >= need {
                    break;
                }
                have += b.cap;
                n += 1;
            }
            if have < need {
                break; // wait for more buffers
            }
            n
        } else {
            match st.reserved.front() {
                None => break,
                Some(b) if b.cap < need => {
                    // Too big for one buffer without MRG_RXBUF: drop it.
                    st.stash.pop_front();
                    st.dropped += 1;
                    continue;
                }
                Some(_) => 1,
            }
        };
        let Some(frame) = st.stash.pop_front() else {
            break;
        };
        let mut bytes = vec![0u8; HDR];
        bytes[10..12].copy_from_slice(&(nbufs as u16).to_le_bytes());
        bytes.extend_from_slice(&frame);
        let mut off = 0;
        for _ in 0..nbufs {
            let Some(b) = st.reserved.pop_front() else {
                break;
            };
            let mut written = 0u32;
            for &(addr, len) in &b.segs {
                if off >= bytes.len() {
                    break;
                }
                let n = (len as usize).min(bytes.len() - off);
                if mem.write_slice(&bytes[off..off + n], addr).is_err() {
                    st.dropped += 1;
                    break;
                }
                off += n;
                written += n as u32;
            }
            let _ = q.add_used(mem, b.head, written);
            done += 1;
        }
    }
    if done > 0 && q.needs_notification(mem).unwrap_or(true) {
        let _ = g.signal_used_queue();
    }
}

/// Re-enables notifications; true if the driver added work meanwhile.
fn rearm(mem: &GuestMemoryMmap, v: &VringRwLock) -> bool {
    let mut g = v.get_mut();
    if !usable(&g) {
        return false;
    }
    g.get_queue_mut().enable_notification(mem).unwrap_or(false)
}

impl VhostUserBackend for Loopback {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.pairs
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_NET_F_MQ)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    // The library sets EVENT_IDX on every Queue itself.
    fn set_event_idx(&self, _enabled: bool) {}

    /// virtio_net_config: mac, status (LINK_UP), max_virtqueue_pairs, mtu.
    /// A range beyond it gets the "failed" (empty) answer.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = MAC.to_vec();
        cfg.extend_from_slice(&1u16.to_le_bytes());
        cfg.extend_from_slice(&(self.pairs as u16).to_le_bytes());
        cfg.extend_from_slice(&1500u16.to_le_bytes());
        let (start, end) = (offset as usize, offset as usize + size as usize);
        cfg.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        // Same GuestMemoryAtomic as `self.mem`; run_pair reloads it per call.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs).map(|i| 0b11u64 << (2 * i)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> std::io::Result<()> {
        // 0 = RX kick, 1 = TX kick (indices within this thread's pair).
        if device_event < 2 && vrings.len() == 2 {
            self.run_pair(thread_id, &vrings[0], &vrings[1]);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Harness: one backend, one connection, in a temp dir.

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Harness {
    dir: PathBuf,
    path: PathBuf,
    done: mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<Vec<Mutex<PairState>>>,
}

impl Harness {
    /// A fresh, empty temp dir for one backend socket.
    fn fresh_dir(tag: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "xdpath-fe-selftest-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn start(pairs: usize) -> Self {
        Self::start_in(pairs, Self::fresh_dir("b"))
    }

    /// Listens on `dir/vhost-user.sock` (the harness removes `dir`).
    fn start_in(pairs: usize, dir: PathBuf) -> Self {
        let path = dir.join("vhost-user.sock");
        let mut listener = Listener::new(&path, true).expect("listen");
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Loopback::new(pairs, mem.clone());
        let state = backend.state.clone();
        let mut daemon =
            VhostUserDaemon::new("loopback".to_string(), backend, mem).expect("daemon");
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loopback-daemon".into())
            .spawn(move || {
                let r = daemon.start(&mut listener).and_then(|()| daemon.wait());
                // Joins the worker threads (through their exit events).
                drop(daemon);
                drop(listener);
                let r = match r {
                    Ok(())
                    | Err(DaemonError::HandleRequest(
                        VhostUserError::Disconnected | VhostUserError::PartialMessage,
                    )) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(r);
            })
            .expect("spawn daemon");
        Self {
            dir,
            path,
            done,
            thread: Some(thread),
            state,
        }
    }

    fn dropped(&self) -> u64 {
        self.state
            .iter()
            .map(|s| s.lock().map(|s| s.dropped).unwrap_or(0))
            .sum()
    }

    /// Call after the frontend is dropped: the daemon must see the
    /// disconnect and stop its workers in time.
    fn finish(mut self) {
        match self.done.recv_timeout(WAIT) {
            Ok(r) => r.expect("daemon ended with an error"),
            Err(_) => panic!("daemon did not finish within {WAIT:?} of the disconnect"),
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("daemon thread");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn opts(pairs: u16, event_idx: bool, mrg_rxbuf: bool) -> FrontendOptions {
    FrontendOptions {
        queue_pairs: pairs,
        enabled_pairs: pairs,
        event_idx,
        mrg_rxbuf,
        ..FrontendOptions::default()
    }
}

/// A frame whose bytes depend on `seed` and position.
fn frame(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(97) ^ (i >> 8)) as u8)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Contiguous,
    Split,
    Indirect,
}

fn send(fe: &mut TestFrontend, qp: u16, f: &[u8], mode: Mode) -> bool {
    match mode {
        Mode::Contiguous => fe.send(qp, f, false),
        Mode::Split => fe.send(qp, f, true),
        Mode::Indirect => fe.send_indirect(qp, f),
    }
}

fn recv_one(fe: &mut TestFrontend, qp: u16, what: &str) -> RxFrame {
    let mut got = fe.recv(qp, 1, WAIT);
    assert_eq!(
        got.len(),
        1,
        "{what}: no frame on pair {qp} within {WAIT:?}"
    );
    got.remove(0)
}

// ---------------------------------------------------------------------------
// Tests.

fn loopback_case(pairs: u16, event_idx: bool) {
    let h = Harness::start(pairs.into());
    let mut fe = TestFrontend::connect(&h.path, opts(pairs, event_idx, true)).expect("connect");

    let f = fe.negotiated_features();
    for (b, name) in [
        (bit(VIRTIO_F_VERSION_1), "VERSION_1"),
        (bit(VIRTIO_NET_F_MQ), "MQ"),
        (bit(VIRTIO_NET_F_MRG_RXBUF), "MRG_RXBUF"),
        (bit(VIRTIO_RING_F_INDIRECT_DESC), "INDIRECT_DESC"),
        (
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            "PROTOCOL_FEATURES",
        ),
    ] {
        assert_ne!(f & b, 0, "{name} not negotiated: {f:#x}");
    }
    assert_eq!(f & bit(VIRTIO_RING_F_EVENT_IDX) != 0, event_idx);
    assert_eq!(fe.hdr_len(), 12);

    for qp in 0..pairs {
        assert_eq!(fe.post_rx_buffers(qp, 128, 2048), 128);
    }
    let mut seed = 0;
    for qp in 0..pairs {
        let mut sent = 0;
        for len in [60usize, 1500, 4000] {
            for mode in [Mode::Contiguous, Mode::Split, Mode::Indirect] {
                seed += 1;
                let data = frame(len, seed);
                assert!(send(&mut fe, qp, &data, mode), "send {len} {mode:?}");
                sent += 1;
                let what = format!("pair {qp}, {len} bytes, {mode:?}");
                let got = recv_one(&mut fe, qp, &what);
                assert_eq!(got.data.len(), data.len(), "{what}: length");
                assert!(got.data == data, "{what}: bytes differ");
                let want_bufs = if len + HDR > 2048 { 2 } else { 1 };
                assert_eq!(got.num_buffers, want_bufs, "{what}: num_buffers");
            }
        }
        let mut done = 0;
        assert!(
            wait_until(WAIT, || {
                done += fe.tx_completed(qp);
                done == sent
            }),
            "pair {qp}: {done} of {sent} TX chains completed"
        );
    }
    // Nothing leaked across pairs.
    for qp in 0..pairs {
        assert!(fe.recv(qp, 1, Duration::from_millis(100)).is_empty());
    }

    // A burst: many frames queued before any is read (kick suppression and
    // notification paths under load).
    for qp in 0..pairs {
        let posted = fe.post_rx_buffers(qp, 200, 2048);
        assert!(posted >= 100, "only {posted} RX buffers posted");
        let frames: Vec<_> = (0..100).map(|i| frame(60 + i * 13, 1000 + i)).collect();
        for (i, data) in frames.iter().enumerate() {
            let mode = [Mode::Contiguous, Mode::Split, Mode::Indirect][i % 3];
            assert!(send(&mut fe, qp, data, mode), "burst send {i}");
        }
        let got = fe.recv(qp, frames.len(), WAIT);
        assert_eq!(got.len(), frames.len(), "burst on pair {qp}");
        for (i, (g, w)) in got.iter().zip(&frames).enumerate() {
            assert!(g.data == *w, "burst frame {i} on pair {qp} differs");
            assert_eq!(g.num_buffers, 1);
        }
    }
    assert_eq!(fe.bad_used(), 0);
    assert_eq!(h.dropped(), 0);
    drop(fe);
    h.finish();
}

#[test]
fn one_pair_event_idx() {
    loopback_case(1, true);
}

#[test]
fn one_pair_no_event_idx() {
    loopback_case(1, false);
}

#[test]
fn two_pairs_event_idx() {
    loopback_case(2, true);
}

#[test]
fn two_pairs_no_event_idx() {
    loopback_case(2, false);
}

#[test]
fn without_mergeable_buffers() {
    let h = Harness::start(1);
    let mut fe = TestFrontend::connect(&h.path, opts(1, true, false)).expect("connect");
    assert_eq!(fe.negotiated_features() & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(fe.hdr_len(), 12);

    assert_eq!(fe.post_rx_buffers(0, 2, 2048), 2);
    // Too big for one 2048-byte buffer: the backend drops it.
    assert!(fe.send(0, &frame(4000, 1), false));
    assert!(fe.recv(0, 1, Duration::from_millis(300)).is_empty());
    assert!(wait_until(WAIT, || h.dropped() == 1));
    let small = frame(1500, 2);
    assert!(fe.send(0, &small, true));
    let got = recv_one(&mut fe, 0, "1500 without MRG_RXBUF");
    assert!(got.data == small);
    assert_eq!(got.num_buffers, 1);

    // Large buffers: 4000 bytes arrive whole.
    assert_eq!(fe.post_rx_buffers(0, 4, 8192), 4);
    let tiny = frame(60, 3);
    assert!(fe.send_indirect(0, &tiny));
    assert!(recv_one(&mut fe, 0, "60 without MRG_RXBUF").data == tiny);
    let big = frame(4000, 4);
    assert!(fe.send(0, &big, false));
    let got = recv_one(&mut fe, 0, "4000 in an 8192-byte buffer");
    assert!(got.data == big);
    assert_eq!(got.num_buffers, 1);
    assert_eq!(fe.bad_used(), 0);
    drop(fe);
    h.finish();
}

#[test]
fn late_vring_enable() {
    let h = Harness::start(2);
    let o = FrontendOptions {
        queue_pairs: 2,
        enabled_pairs: 1,
        ..FrontendOptions::default()
    };
    let mut fe = TestFrontend::connect(&h.path, o).expect("connect");
    assert_eq!(fe.post_rx_buffers(0, 16, 2048), 16);
    assert_eq!(fe.post_rx_buffers(1, 16, 2048), 16);
    let f1 = frame(300, 1);
    assert!(fe.send(1, &f1, false));
    // Pair 1 is disabled: the backend must leave its rings alone.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fe.used_idx(3), 0, "disabled TX vring consumed");
    assert!(fe.recv(1, 1, Duration::from_millis(10)).is_empty());
    // Pair 0 works meanwhile.
    let f0 = frame(200, 2);
    assert!(fe.send(0, &f0, true));
    assert!(recv_one(&mut fe, 0, "pair 0").data == f0);

    fe.set_vring_enable(2, true).expect("enable RX 2");
    fe.set_vring_enable(3, true).expect("enable TX 3");
    let got = recv_one(&mut fe, 1, "pair 1 after enable");
    assert!(got.data == f1);
    assert!(wait_until(WAIT, || fe.used_idx(3) == 1));
    drop(fe);
    h.finish();
}

#[test]
fn raw_chains_and_guest_memory() {
    let h = Harness::start(1);
    let mut fe = TestFrontend::connect(&h.path, FrontendOptions::default()).expect("connect");

    let scratch = fe.alloc(100);
    fe.write_guest(scratch, b"hello guest");
    assert_eq!(fe.read_guest(scratch, 11), b"hello guest");

    assert_eq!(fe.post_rx_buffers(0, 8, 2048), 8);
    // A valid hand-built 2-descriptor chain on TX vring 1.
    let data = frame(700, 9);
    let hdr_addr = fe.alloc(HDR as u64);
    let data_addr = fe.alloc(data.len() as u64);
    fe.write_guest(hdr_addr, &[0u8; HDR]);
    fe.write_guest(data_addr, &data);
    let s0 = fe.desc_slot(1, 0);
    let s1 = fe.desc_slot(1, 1);
    assert_ne!(s0, s1);
    let chain = [
        RawDesc {
            addr: hdr_addr,
            len: HDR as u32,
            flags: VRING_DESC_F_NEXT as u16,
            next: s1,
        },
        RawDesc {
            addr: data_addr,
            len: data.len() as u32,
            flags: 0,
            next: 0,
        },
    ];
    assert!(fe.push_raw_chain(1, &chain));
    assert!(recv_one(&mut fe, 0, "raw chain").data == data);
    assert!(wait_until(WAIT, || fe.used_idx(1) == 1));
    assert_eq!(fe.tx_completed(0), 1);

    // A descriptor pointing outside guest memory: the backend consumes and
    // drops it; the frontend gets its slot back.
    let bad = [RawDesc {
        addr: 1 << 40,
        len: 100,
        flags: 0,
        next: 0,
    }];
    assert!(fe.push_raw_chain(1, &bad));
    assert!(wait_until(WAIT, || fe.used_idx(1) == 2));
    assert_eq!(fe.tx_completed(0), 1);
    assert_eq!(h.dropped(), 1);
    assert!(fe.recv(0, 1, Duration::from_millis(100)).is_empty());
    assert_eq!(fe.bad_used(), 0);

    // The ring still works.
    let after = frame(64, 10);
    assert!(fe.send(0, &after, false));
    assert!(recv_one(&mut fe, 0, "after raw chains").data == after);
    drop(fe);
    h.finish();
}

#[test]
fn calls_config_and_mem_table() {
    let h = Harness::start(2);
    let mut fe = TestFrontend::connect(&h.path, opts(2, true, true)).expect("connect");
    assert!(fe
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));

    let cfg = fe.get_config(12).expect("GET_CONFIG");
    assert_eq!(&cfg[0..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([cfg[8], cfg[9]]),
        2,
        "max_virtqueue_pairs"
    );
    // The backend refuses a range beyond its config: an error, not a hang,
    // and the connection stays usable.
    let t = Instant::now();
    assert!(fe.get_config(64).is_err());
    assert!(t.elapsed() < WAIT);
    fe.update_mem_table().expect("SET_MEM_TABLE again");
    fe.update_mem_table().expect("SET_MEM_TABLE a third time");

    assert!(!fe.take_call(0));
    assert_eq!(fe.post_rx_buffers(0, 4, 2048), 4);
    let data = frame(128, 5);
    assert!(fe.send(0, &data, false));
    assert!(wait_until(WAIT, || fe.used_idx(0) == 1));
    assert!(wait_until(WAIT, || fe.take_call(0)), "no call on RX");
    assert!(!fe.take_call(0), "call not cleared");
    assert!(fe.take_call(1), "no call on TX");
    let got = fe.recv(0, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert!(got[0].data == data);
    drop(fe);
    h.finish();
}

/// A small ring wrapped many times, and the 16-bit ring indices wrapped
/// past 65535, with EVENT_IDX on and off.
#[test]
fn ring_wrap() {
    for event_idx in [true, false] {
        let h = Harness::start(1);
        let o = FrontendOptions {
            queue_size: 16,
            event_idx,
            ..FrontendOptions::default()
        };
        let mut fe = TestFrontend::connect(&h.path, o).expect("connect");
        let mut sent = 0usize;
        let t = Instant::now();
        while sent < 70_000 {
            let n = fe.post_rx_buffers(0, 16, 256);
            assert!(n > 0, "no RX room after {sent} frames");
            let batch: Vec<_> = (0..n.min(8))
                .map(|i| {
                    let mut f = vec![0u8; 60];
                    f[..8].copy_from_slice(&((sent + i) as u64).to_le_bytes());
                    f
                })
                .collect();
            let mut queued = 0;
            for f in &batch {
                if !fe.send(0, f, false) {
                    break;
                }
                queued += 1;
            }
            assert!(queued > 0, "TX ring stuck after {sent} frames");
            let got = fe.recv(0, queued, WAIT);
            assert_eq!(got.len(), queued, "after {sent} frames");
            for (g, w) in got.iter().zip(&batch) {
                assert!(g.data == *w, "frame {} differs", sent);
            }
            sent += queued;
            assert!(t.elapsed() < Duration::from_secs(60), "too slow");
        }
        fe.tx_completed(0);
        // The avail index wrapped (TX), the used one too (RX).
        assert!(fe.avail_idx(1) < 10_000, "TX avail idx {}", fe.avail_idx(1));
        assert_eq!(fe.bad_used(), 0);
        drop(fe);
        h.finish();
    }
}

#[test]
fn connect_waits_for_a_late_backend() {
    let dir = Harness::fresh_dir("late");
    let path = dir.join("vhost-user.sock");
    let (tx, rx) = mpsc::channel();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let _ = tx.send(Harness::start_in(1, dir));
    });
    let mut fe = TestFrontend::connect(&path, FrontendOptions::default()).expect("connect");
    let h = rx.recv_timeout(WAIT).expect("backend started");
    starter.join().expect("starter thread");
    assert_eq!(fe.post_rx_buffers(0, 2, 2048), 2);
    let data = frame(90, 1);
    assert!(fe.send(0, &data, false));
    assert!(recv_one(&mut fe, 0, "late backend").data == data);
    drop(fe);
    h.finish();
}

#[test]
fn connect_gives_up_after_five_seconds() {
    let dir = Harness::fresh_dir("none");
    let path = dir.join("nobody.sock");
    let t = Instant::now();
    assert!(TestFrontend::connect(&path, FrontendOptions::default()).is_err());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
