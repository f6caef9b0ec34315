//! DPDK's virtio_user PMD (`dpdk-testpmd`, DPDK 22.11) as a third-party
//! vhost-user frontend against xdpath's backend.
//!
//! testpmd plays the guest: one virtio_user port with two queue pairs, in
//! forwarding mode `macswap`, so every frame it receives goes back out with
//! the two Ethernet addresses swapped. A frame the wire sends to the guest's
//! MAC on peer queue q therefore crosses the bridge both ways: wire -> XDP
//! -> AF_XDP socket q -> queue pair q -> virtio RX -> testpmd -> virtio TX
//! -> xdpath -> AF_XDP TX -> wire, where it must come back byte for byte
//! with the MACs swapped.
//!
//! Then testpmd is killed with SIGKILL while frames keep arriving (no
//! vhost-user goodbye at all) and a new testpmd connects to the same
//! socket: the backend, never restarted, must accept it and forward again.
//!
//! Needs root and DPDK with hugepages (`cargo xtask setup` installs both);
//! it is marked ignored, so a non-root run lists it as ignored. When it
//! fails, the message carries testpmd's command line and output.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use xdpath_dataplane::CounterSnapshot;
use xdpath_tests::bridge::{to_guest, Bridge, GUEST_MAC};
use xdpath_tests::require_root;
use xdpath_tests::testpmd::{Testpmd, TestpmdConfig};
use xdpath_tests::topology::PEER_MAC;

const QUEUE_PAIRS: u16 = 2;
/// Frames per queue in each measured round.
const FRAMES: u32 = 100;
/// UDP payload length of the test frames (142-byte frames).
const PAYLOAD: usize = 100;
/// testpmd start + vhost-user handshake + first frame forwarded (about
/// 0.6 s on an idle machine).
const START: Duration = Duration::from_secs(30);
/// Waits for frames and counters: the machine has 2 CPUs, testpmd's
/// forwarding lcore keeps one busy, and other tests run alongside.
const WAIT: Duration = Duration::from_secs(15);
/// Offset of the tag `frames::tagged` writes at the start of the UDP payload.
const TAG: usize = 14 + 20 + 8;
/// Offset of the UDP source port (5000 + queue pair, see `to_guest`).
const SPORT: usize = 14 + 20;
/// Round (high half of the tag) of the frames sent while testpmd is killed
/// and restarted.
const GAP_ROUND: u32 = 0xffff;

/// Panics with testpmd's command line and output appended.
fn fail(pmd: &Testpmd, msg: &str) -> ! {
    panic!(
        "{msg}\n--- command: {}\n--- testpmd output:\n{}",
        pmd.command(),
        pmd.log()
    );
}

/// `f` with destination and source MAC swapped: what macswap sends back.
fn swapped(f: &[u8]) -> Vec<u8> {
    let mut s = f.to_vec();
    s[..6].copy_from_slice(&f[6..12]);
    s[6..12].copy_from_slice(&f[..6]);
    s
}

/// Tags: the round in the high half, the frame number in the low half, so
/// a late frame of one round never counts for another.
fn tag(round: u32, i: u32) -> u32 {
    (round << 16) | (i & 0xffff)
}

fn round_of(f: &[u8]) -> Option<u32> {
    let t = u32::from_be_bytes(f.get(TAG..TAG + 4)?.try_into().ok()?);
    Some(t >> 16)
}

fn queue_of(f: &[u8]) -> Option<u16> {
    let port = u16::from_be_bytes(f.get(SPORT..SPORT + 2)?.try_into().ok()?);
    port.checked_sub(5000).filter(|q| *q < QUEUE_PAIRS)
}

/// A frame testpmd sent back to the peer: dst = peer, src = guest.
fn returned(f: &[u8]) -> bool {
    f.len() > TAG + 4 && f[..6] == PEER_MAC && f[6..12] == GUEST_MAC
}

/// Whether `f` is a returned frame of `round`; counts returned frames of
/// the gap in `stale` (the capture reads and drops every frame it does not
/// keep, so this is the one place to see them).
fn returned_of(f: &[u8], round: u32, stale: &AtomicUsize) -> bool {
    if !returned(f) {
        return false;
    }
    let r = round_of(f);
    if r == Some(GAP_ROUND) {
        stale.fetch_add(1, Ordering::Relaxed);
    }
    r == Some(round)
}

fn all_counters(b: &Bridge) -> Vec<CounterSnapshot> {
    (0..QUEUE_PAIRS).map(|qp| b.counters(qp)).collect()
}

/// Starts testpmd on the bridge's socket; waits for the backend's
/// connection number `connection`, then for forwarding on every queue pair
/// (probe frames of round `round`, one per queue every 200 ms, until one
/// came back from each queue).
fn start(b: &mut Bridge, connection: u64, round: u32, stale: &AtomicUsize) -> Testpmd {
    let mut cfg = TestpmdConfig::new(&b.sock, QUEUE_PAIRS, "macswap");
    cfg.mac = Some(GUEST_MAC);
    // Feature negotiation and memory table in the output, for failures.
    cfg.eal_extra
        .push("--log-level=pmd.net.virtio.*:debug".into());
    let t0 = Instant::now();
    let mut pmd = Testpmd::spawn(&cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let end = t0 + START;
    while b.handle.connections() < connection {
        if let Some(s) = pmd.exited() {
            fail(&pmd, &format!("testpmd ended before connecting: {s}"));
        }
        if Instant::now() >= end {
            fail(
                &pmd,
                &format!(
                    "the backend saw {} connections after {START:?}, want {connection}",
                    b.handle.connections()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let connected = t0.elapsed();
    let mut back = [false; QUEUE_PAIRS as usize];
    let mut i = 0u32;
    while back.contains(&false) {
        if let Some(s) = pmd.exited() {
            fail(&pmd, &format!("testpmd ended before forwarding: {s}"));
        }
        if Instant::now() >= end {
            fail(
                &pmd,
                &format!(
                    "no frame came back within {START:?} (back per queue: {back:?}, \
                     connections: {}, counters: {:?})",
                    b.handle.connections(),
                    all_counters(b)
                ),
            );
        }
        for q in (0..QUEUE_PAIRS).filter(|q| !back[usize::from(*q)]) {
            let f = to_guest(q, tag(round, i), PAYLOAD);
            if let Err(e) = b.wire_tx[usize::from(q)].send(&[f], WAIT) {
                fail(&pmd, &format!("peer could not send a probe: {e:#}"));
            }
        }
        i += 1;
        let got = b
            .wire_rx
            .recv_matching(usize::MAX, Duration::from_millis(200), |f| {
                returned_of(f, round, stale)
            })
            .expect("peer capture");
        for q in got.iter().filter_map(|f| queue_of(f)) {
            back[usize::from(q)] = true;
        }
    }
    assert_eq!(
        b.handle.connections(),
        connection,
        "one connection per testpmd"
    );
    let log = pmd.log();
    let features = log
        .lines()
        .find(|l| l.contains("set features:"))
        .unwrap_or("(no `set features` line)");
    eprintln!(
        "testpmd pid {}: connected after {connected:?}, forwarding after {:?} \
         ({i} probe rounds); {}",
        pmd.pid(),
        t0.elapsed(),
        features.trim()
    );
    pmd
}

/// Waits until no rx/tx counter of any queue pair moved for 300 ms (late
/// frames are through) and returns the counters.
fn settled(b: &Bridge) -> Vec<CounterSnapshot> {
    let end = Instant::now() + WAIT;
    let mut last = all_counters(b);
    let mut since = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = all_counters(b);
        let moved = now.iter().zip(&last).any(|(n, l)| {
            (
                n.rx_frames,
                n.tx_frames,
                n.rx_drop_no_guest,
                n.rx_handed_off,
            ) != (
                l.rx_frames,
                l.tx_frames,
                l.rx_drop_no_guest,
                l.rx_handed_off,
            )
        });
        if moved {
            since = Instant::now();
            last = now;
        } else if since.elapsed() >= Duration::from_millis(300) {
            return now;
        }
    }
    last
}

/// One measured round: FRAMES frames to the guest on every peer queue. All
/// must come back exactly once, each queue's in order, with the MACs
/// swapped; every queue pair must have received what was sent on its queue
/// and transmitted, and the totals must match.
fn round_trip(b: &mut Bridge, pmd: &Testpmd, round: u32, stale: &AtomicUsize) {
    let before = settled(b);
    let sent: Vec<Vec<Vec<u8>>> = (0..QUEUE_PAIRS)
        .map(|q| {
            (0..FRAMES)
                .map(|i| to_guest(q, tag(round, i), PAYLOAD))
                .collect()
        })
        .collect();
    let total = sent.iter().map(Vec::len).sum::<usize>();
    let started = Instant::now();
    // Capture while sending: a few hundred frames left until after could
    // overflow the capture socket's buffer.
    let (got, sent_ok) = std::thread::scope(|s| {
        let rx = &b.wire_rx;
        let capture =
            s.spawn(move || rx.recv_matching(total, WAIT, |f| returned_of(f, round, stale)));
        let sent_ok: Result<(), String> = sent.iter().enumerate().try_for_each(|(q, frames)| {
            b.wire_tx[q]
                .send(frames, WAIT)
                .map_err(|e| format!("peer send on queue {q}: {e:#}"))
        });
        (capture.join(), sent_ok)
    });
    let elapsed = started.elapsed();
    if let Err(e) = sent_ok {
        fail(pmd, &format!("round {round}: {e}"));
    }
    let got = match got {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => fail(pmd, &format!("round {round}: peer capture: {e:#}")),
        Err(_) => fail(pmd, &format!("round {round}: capture thread panicked")),
    };
    // Nothing more of this round may follow (no duplicates).
    let extra = b
        .wire_rx
        .recv_matching(usize::MAX, Duration::from_millis(300), |f| {
            returned_of(f, round, stale)
        })
        .expect("peer capture");
    let mut by_queue: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
    for f in got.into_iter().chain(extra) {
        match queue_of(&f) {
            Some(q) => by_queue.entry(q).or_default().push(f),
            None => fail(pmd, &format!("round {round}: unexpected frame {f:02x?}")),
        }
    }
    let after = settled(b);
    for (q, frames) in sent.iter().enumerate() {
        let back = by_queue.remove(&(q as u16)).unwrap_or_default();
        if back.len() != frames.len() {
            fail(
                pmd,
                &format!(
                    "round {round}, queue {q}: {} frames came back for {} sent\n\
                     counters before: {before:?}\ncounters after: {after:?}",
                    back.len(),
                    frames.len(),
                ),
            );
        }
        for (i, (g, f)) in back.iter().zip(frames).enumerate() {
            assert_eq!(
                g,
                &swapped(f),
                "round {round}, queue {q}, frame {i}: not the sent frame with its MACs swapped"
            );
        }
    }
    let mut tx_total = 0;
    for qp in 0..usize::from(QUEUE_PAIRS) {
        let (a, z) = (&before[qp], &after[qp]);
        let delta = |f: fn(&CounterSnapshot) -> u64| f(z) - f(a);
        assert_eq!(
            delta(|c| c.rx_frames),
            u64::from(FRAMES),
            "round {round}: rx_frames of queue pair {qp} (sent on its queue)"
        );
        assert_eq!(
            delta(|c| c.rx_bytes),
            sent[qp].iter().map(|f| f.len() as u64).sum::<u64>(),
            "round {round}: rx_bytes of queue pair {qp}"
        );
        for (name, d) in [
            (
                "rx_drop_no_guest_buffer",
                delta(|c| c.rx_drop_no_guest_buffer),
            ),
            ("rx_drop_no_guest", delta(|c| c.rx_drop_no_guest)),
            ("rx_handed_off", delta(|c| c.rx_handed_off)),
        ] {
            assert_eq!(d, 0, "round {round}: {name} of queue pair {qp} moved");
        }
        assert!(
            z.tx_frames > a.tx_frames,
            "round {round}: tx_frames of queue pair {qp} did not move"
        );
        tx_total += delta(|c| c.tx_frames);
        // Faults the backend must never see from a well-behaved driver.
        for (name, v) in z.fields() {
            let fault = name.starts_with("tx_drop")
                || name.starts_with("bad_")
                || name == "rx_bad_chain"
                || name == "rx_drop_oversize";
            assert!(
                !fault || v == 0,
                "round {round}: queue pair {qp}: {name} = {v}"
            );
        }
    }
    assert_eq!(
        tx_total,
        u64::from(FRAMES) * u64::from(QUEUE_PAIRS),
        "round {round}: tx_frames over all queue pairs"
    );
    eprintln!(
        "round {round}: {total} frames wire -> testpmd -> wire in {elapsed:?}; \
         per pair (rx, tx): {:?}",
        before
            .iter()
            .zip(&after)
            .map(|(a, z)| (z.rx_frames - a.rx_frames, z.tx_frames - a.tx_frames))
            .collect::<Vec<_>>()
    );
}

/// Kills testpmd with SIGKILL while the wire keeps sending to the guest
/// (bursts of 8 frames on alternating queues every 5 ms, from 100 ms
/// before the kill to 300 ms after it). Returns the frames sent.
fn kill_under_traffic(b: &mut Bridge, mut pmd: Testpmd) -> usize {
    let stop = AtomicBool::new(false);
    let (sent, status) = std::thread::scope(|s| {
        let tx = &mut b.wire_tx;
        let stop = &stop;
        let sender = s.spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let q = (n / 8) as usize % tx.len();
                let burst: Vec<Vec<u8>> = (n..n + 8)
                    .map(|i| to_guest(q as u16, tag(GAP_ROUND, i), PAYLOAD))
                    .collect();
                tx[q].send(&burst, WAIT).map_err(|e| format!("{e:#}"))?;
                n += 8;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<usize, String>(n as usize)
        });
        std::thread::sleep(Duration::from_millis(100));
        let status = pmd.kill();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (sender.join(), status)
    });
    let status = status.unwrap_or_else(|e| fail(&pmd, &format!("{e:#}")));
    if status.code().is_some() {
        fail(
            &pmd,
            &format!("testpmd ended by itself ({status}) before the SIGKILL"),
        );
    }
    match sent {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => fail(&pmd, &format!("peer send during the kill: {e}")),
        Err(_) => fail(&pmd, "sender thread panicked"),
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, AF_XDP, DPDK testpmd with hugepages"]
fn testpmd_two_queue_pairs_macswap_survives_sigkill_and_reconnect() {
    require_root();
    // As root a missing DPDK is a failure, not a skip: CI installs it.
    if let Err(e) = Testpmd::binary().and_then(|_| Testpmd::check_hugepages()) {
        panic!("{e:#}");
    }
    let t0 = Instant::now();
    let stale = AtomicUsize::new(0);
    let mut b = Bridge::new(QUEUE_PAIRS);

    let pmd = start(&mut b, 1, 1, &stale);
    round_trip(&mut b, &pmd, 2, &stale);

    let gap = kill_under_traffic(&mut b, pmd);
    assert_eq!(
        b.handle.connections(),
        1,
        "no new connection without a frontend"
    );
    let at_kill = settled(&b);
    // Read what came back before the kill (counted in `stale`).
    b.wire_rx
        .recv_matching(usize::MAX, Duration::from_millis(300), |f| {
            returned_of(f, u32::MAX, &stale)
        })
        .expect("peer capture");
    let stale_at_kill = stale.load(Ordering::Relaxed);

    // Same socket, same backend: a new frontend.
    let pmd = start(&mut b, 2, 3, &stale);
    round_trip(&mut b, &pmd, 4, &stale);
    let end = all_counters(&b);
    drop(pmd);
    eprintln!(
        "{gap} frames sent around the kill: {stale_at_kill} came back before it, {} after the \
         restart; rx_drop_no_guest {} (at the kill: {}); test took {:?}",
        stale.load(Ordering::Relaxed) - stale_at_kill,
        end.iter().map(|c| c.rx_drop_no_guest).sum::<u64>(),
        at_kill.iter().map(|c| c.rx_drop_no_guest).sum::<u64>(),
        t0.elapsed()
    );
}
