//! The flow table against the real classifier: rules added, deleted and
//! bulk-replaced through `FlowTable` steer real frames; a bulk replace under
//! traffic is never seen half-applied; guest entries are switched in their
//! own generation and stale ones do not survive a restart; concurrent
//! writers, bad input and a restart leave the table, the maps and the state
//! file consistent. (Every rollback path is tested without root against the
//! fake maps: `control/tests/flow_table_rollback.rs`.)
//!
//! Each test gets its own netns + veth pair and its own state directory,
//! both removed even when the test fails. Every test needs root and is
//! marked ignored: `cargo xtask test` as root runs them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xdpath_common::{
    AddrKey, Counters, FlowKey, MacKey, RuleClass, RuleValue, MAX_FLOWS, MAX_PREFIXES,
    XDP_META_MAGIC,
};
use xdpath_control::flow_table::{FlowTable, FlowTableError, GuestEntries, Projection};
use xdpath_control::maps::{Macs, Neigh, RuleMaps};
use xdpath_control::rules::{
    FlowRule, FlowRuleSpec, GuestRef, LegacyIds, PrefixRule, PrefixRuleSpec,
};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_tests::frames::*;
use xdpath_tests::packet::Sender;
use xdpath_tests::topology::{Topology, HOST_IP, HOST_MAC, PEER_IP, PEER_MAC};
use xdpath_tests::xsk::XskReceiver;
use xdpath_tests::{require_root, wait_until};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(300);

/// A private state directory, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "xdpath-ft-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create state dir");
        Self(p)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip4(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// The guests the rules of these tests name.
const TEST_GUESTS: u32 = 3;

/// Registers the socket of queue 0 as every test guest's (the XSKMAP has
/// one entry per guest and queue; one socket may sit in several).
fn register_for_guests(c: &mut Classifier, xsk: &XskReceiver) {
    for g in 1..=TEST_GUESTS {
        let slot = xdpath_common::xsk_slot(g, 0).expect("slot");
        c.register_socket(slot, xsk.fd()).expect("register socket");
    }
}

fn udp_spec(id: Option<u32>, sport: u16, dport: u16, action: &str) -> FlowRuleSpec {
    let mut s = FlowRuleSpec::new(ip4(PEER_IP), ip4(HOST_IP), "udp", action);
    s.id = id;
    s.src_port = sport;
    s.dst_port = dport;
    s
}

fn udp_frame(dst: [u8; 4], sport: u16, dport: u16, i: u32) -> Vec<u8> {
    eth(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(PEER_IP, dst, 17, &udp(sport, dport, &tagged(i, 16))),
    )
}

/// UDP destination port of a frame built by `udp_frame`.
fn frame_dport(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[36], f[37]])
}

fn delta(a: &Counters, b: &Counters) -> Counters {
    Counters {
        frames: a.frames - b.frames,
        action_host: a.action_host - b.action_host,
        action_guest: a.action_guest - b.action_guest,
        action_drop: a.action_drop - b.action_drop,
        class_exact: a.class_exact - b.class_exact,
        class_prefix: a.class_prefix - b.class_prefix,
        class_mac: a.class_mac - b.class_mac,
        class_neigh: a.class_neigh - b.class_neigh,
        class_default: a.class_default - b.class_default,
        parse_errors: a.parse_errors - b.parse_errors,
        redirect_no_socket: a.redirect_no_socket - b.redirect_no_socket,
        redirects: a.redirects - b.redirects,
        meta_errors: a.meta_errors - b.meta_errors,
    }
}

/// Waits until the classifier has seen `n` more frames than `before`, then
/// a little longer so an unexpected extra frame shows up too.
fn settle(c: &Classifier, before: &Counters, n: u64) -> Counters {
    wait_until(WAIT, || {
        c.counters().expect("counters").frames - before.frames >= n
    });
    std::thread::sleep(Duration::from_millis(100));
    delta(&c.counters().expect("counters"), before)
}

fn attach(t: &Topology) -> Classifier {
    Classifier::attach(&ClassifierConfig::new(&t.host_if)).expect("attach classifier")
}

fn peer_sender(t: &Topology) -> Sender {
    let peer_if = t.peer_if.clone();
    t.in_peer(move || Sender::new(&peer_if).expect("AF_PACKET sender"))
}

/// Every map entry in a sortable, comparable form: (gen, key bytes, value).
type RawFlow = (u8, u8, u8, u16, u16, [u8; 16], [u8; 16], u32, u32, u32);
type RawPrefix = (u8, u8, u32, [u8; 16], u32, u32, u32);

fn raw_maps(c: &Classifier) -> (Vec<RawFlow>, Vec<RawPrefix>) {
    let mut f: Vec<RawFlow> = c
        .flow_entries()
        .expect("read FLOWS")
        .into_iter()
        .map(|(k, v)| {
            (
                k.gen, k.family, k.proto, k.src_port, k.dst_port, k.src, k.dst, v.action, v.port,
                v.rule_id,
            )
        })
        .collect();
    let mut p: Vec<RawPrefix> = c
        .prefix_entries()
        .expect("read PREFIXES")
        .into_iter()
        .map(|(l, d, v)| (d.gen, d.family, l, d.addr, v.action, v.port, v.rule_id))
        .collect();
    f.sort_unstable();
    p.sort_unstable();
    (f, p)
}

/// The maps hold exactly the table, in its generations, and those are the
/// active ones: the rules, and the guest entries in the guest tables.
fn assert_maps_hold(c: &Classifier, table: &FlowTable) {
    let Projection::Projected { gens, .. } = table.projection() else {
        panic!("the table is not projected: {:?}", table.projection());
    };
    assert_eq!(
        c.config().unwrap().guest_gen,
        gens.guests,
        "guest generation"
    );
    let mut macs: Vec<(MacKey, RuleValue)> = c.entries_of::<Macs>().expect("read MACS");
    macs.sort_by_key(|e| e.0);
    let want: Vec<(MacKey, RuleValue)> = table
        .guests()
        .macs()
        .map(|(m, v)| (MacKey::new(gens.guests, m), v))
        .collect();
    assert_eq!(macs, want, "MACS differs from the guest entries");
    let mut neigh: Vec<(AddrKey, RuleValue)> = c.entries_of::<Neigh>().expect("read NEIGH");
    neigh.sort_by_key(|e| e.0);
    let mut want: Vec<(AddrKey, RuleValue)> = table
        .guests()
        .addrs()
        .map(|(a, v)| (AddrKey::new(gens.guests, a), v))
        .collect();
    want.sort_by_key(|e| e.0);
    assert_eq!(neigh, want, "NEIGH differs from the guest entries");
    let gen = table.generation();
    assert_eq!(gen, gens.rules);
    assert_eq!(c.config().unwrap().active_gen, gen, "active generation");
    let fe = c.flow_entries().unwrap();
    assert!(
        fe.iter().all(|(k, _)| k.gen == gen),
        "FLOWS has entries outside generation {gen}"
    );
    let mut flows: Vec<FlowRule> = fe
        .iter()
        .map(|(k, v)| FlowRule::from_bpf(k, v).expect("a valid FLOWS entry"))
        .collect();
    flows.sort_by_key(|r| r.id);
    assert_eq!(flows, table.flows(), "FLOWS differs from the table");
    let pe = c.prefix_entries().unwrap();
    assert!(
        pe.iter().all(|(_, d, _)| d.gen == gen),
        "PREFIXES has entries outside generation {gen}"
    );
    let mut prefixes: Vec<PrefixRule> = pe
        .iter()
        .map(|(l, d, v)| PrefixRule::from_bpf(*l, d, v).expect("a valid PREFIXES entry"))
        .collect();
    prefixes.sort_by_key(|r| r.id);
    assert_eq!(
        prefixes,
        table.prefixes(),
        "PREFIXES differs from the table"
    );
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn add_and_delete_steer_traffic() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let tx = peer_sender(&t);
    let dir = StateDir::new();
    t.in_host(|| {
        let mut c = attach(&t);
        let mut xsk = XskReceiver::bind(&t.host_if, 0).expect("bind AF_XDP socket");
        register_for_guests(&mut c, &xsk);
        let mut table = FlowTable::load(&dir.file("flows.json")).expect("load");
        table.sync(&mut c).expect("sync");

        // To an address the host does not have: after the delete the host
        // stack drops the frames silently (no ICMP, so no ARP either).
        const ELSEWHERE: [u8; 4] = [10, 77, 0, 9];
        let mut spec = udp_spec(None, 4000, 5000, "guest");
        spec.dst = ip4(ELSEWHERE);
        spec.guest = Some(GuestRef::Id(3));
        let rule = table.add_flow(&mut c, spec, &LegacyIds).expect("add");
        assert_eq!(rule.id, 1, "first assigned id");
        assert_maps_hold(&c, &table);

        let frames: Vec<_> = (0..10)
            .map(|i| udp_frame(ELSEWHERE, 4000, 5000, i))
            .collect();
        let before = c.counters().unwrap();
        tx.send_on_queue(0, &frames).unwrap();
        let got = xsk.recv(10, WAIT).unwrap();
        assert_eq!(got.len(), 10, "frames of the rule reach the socket");
        for g in &got {
            assert_eq!(g.meta.magic, XDP_META_MAGIC);
            assert_eq!(
                (g.meta.class, g.meta.rule_id, g.meta.port),
                (RuleClass::Exact as u8, rule.id, 3)
            );
        }
        let d = settle(&c, &before, 10);
        assert_eq!(
            (d.frames, d.class_exact, d.action_guest),
            (10, 10, 10),
            "{d:?}"
        );

        table.delete_flow(&mut c, rule.id).expect("delete");
        assert!(table.flows().is_empty());
        assert_maps_hold(&c, &table);
        let before = c.counters().unwrap();
        tx.send_on_queue(0, &frames).unwrap();
        let d = settle(&c, &before, 10);
        assert_eq!(
            (d.frames, d.class_default, d.action_host, d.action_guest),
            (10, 10, 10, 0),
            "after the delete the frames go to the host: {d:?}"
        );
        assert_eq!(xsk.drain(QUIET).unwrap(), 0);

        // A prefix rule the same way: drop, then gone.
        let p = table
            .add_prefix(
                &mut c,
                PrefixRuleSpec::new("10.88.0.0/16", "drop"),
                &LegacyIds,
            )
            .expect("add prefix");
        let to_prefix: Vec<_> = (0..10)
            .map(|i| udp_frame([10, 88, 3, 4], 1, 2, i))
            .collect();
        let before = c.counters().unwrap();
        tx.send_on_queue(0, &to_prefix).unwrap();
        let d = settle(&c, &before, 10);
        assert_eq!((d.class_prefix, d.action_drop), (10, 10), "{d:?}");
        table.delete_prefix(&mut c, p.id).expect("delete prefix");
        let before = c.counters().unwrap();
        tx.send_on_queue(0, &to_prefix).unwrap();
        let d = settle(&c, &before, 10);
        assert_eq!(
            (d.class_default, d.action_host, d.action_drop),
            (10, 10, 0),
            "{d:?}"
        );
        assert_maps_hold(&c, &table);
        drop(table);
        c.shutdown().unwrap();
    });
}

/// Rule set `A` or `B` of the swap test: both cover every port with one
/// exact rule each, with disjoint ids and different guest ports, so the
/// metadata of every frame says which set classified it.
const SWAP_PORTS: u16 = 1024;
const SWAP_BASE_PORT: u16 = 1000;
const A_FIRST_ID: u32 = 1;
const B_FIRST_ID: u32 = 100_001;

fn swap_set(b: bool) -> Vec<FlowRuleSpec> {
    (0..SWAP_PORTS)
        .map(|i| {
            let first = if b { B_FIRST_ID } else { A_FIRST_ID };
            let mut s = udp_spec(Some(first + u32::from(i)), 7, SWAP_BASE_PORT + i, "guest");
            s.guest = Some(GuestRef::Id(if b { 2 } else { 1 }));
            s
        })
        .collect()
}

/// Which set classified a received frame; panics on anything that belongs
/// to neither set or to the wrong port.
fn set_of(g: &xdpath_tests::xsk::Received) -> bool {
    let m = g.meta;
    assert_eq!(m.magic, XDP_META_MAGIC, "metadata block missing");
    assert_eq!(
        m.class,
        RuleClass::Exact as u8,
        "a frame not decided by an exact rule: the table had a gap"
    );
    let port = frame_dport(&g.data);
    assert!(
        (SWAP_BASE_PORT..SWAP_BASE_PORT + SWAP_PORTS).contains(&port),
        "unexpected frame"
    );
    let i = u32::from(port - SWAP_BASE_PORT);
    if m.rule_id == A_FIRST_ID + i {
        assert_eq!(m.port, 1, "rule id of A with the guest port of B");
        false
    } else if m.rule_id == B_FIRST_ID + i {
        assert_eq!(m.port, 2, "rule id of B with the guest port of A");
        true
    } else {
        panic!(
            "frame to port {port} classified by rule {} of neither set",
            m.rule_id
        );
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What one run of the swap experiment saw.
#[derive(Debug)]
struct SwapRun {
    swaps: usize,
    frames: usize,
    /// Changes of set between consecutive frames, in arrival order.
    transitions: usize,
    sent: u64,
    counters: Counters,
}

/// Runs traffic over every port of the swap sets (in a shuffled order per
/// round, from CPU 0) while `swap(i)` is called `swaps` times from CPU 1,
/// and records which set classified each frame, in arrival order (one rx
/// queue: the program runs frame after frame, and the socket's ring keeps
/// that order).
fn swap_run(
    counters: &dyn Fn() -> Counters,
    tx: &Sender,
    xsk: &mut XskReceiver,
    swaps: usize,
    mut swap: impl FnMut(usize) + Send,
) -> SwapRun {
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = counters();
    let mut sets = Vec::new();
    let done_swaps = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(0);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut order: Vec<u16> = (0..SWAP_PORTS).collect();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for i in (1..order.len()).rev() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    order.swap(i, (rng % (i as u64 + 1)) as usize);
                }
                for &p in &order {
                    let f = udp_frame(HOST_IP, 7, SWAP_BASE_PORT + p, seq);
                    seq = seq.wrapping_add(1);
                    if tx.send(&f).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let swapper = s.spawn(|| {
            pin_to_cpu(1);
            let mut n = 0;
            while n < swaps && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(40));
                swap(n);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(25));
            stop.store(true, Ordering::Relaxed);
            n
        });
        while !stop.load(Ordering::Relaxed) {
            for g in xsk.recv(256, Duration::from_millis(5)).unwrap() {
                sets.push(set_of(&g));
            }
        }
        for g in xsk.recv(usize::MAX, QUIET).unwrap() {
            sets.push(set_of(&g));
        }
        swapper.join().unwrap()
    });
    let counters = delta(&counters(), &before);
    SwapRun {
        swaps: done_swaps,
        frames: sets.len(),
        transitions: sets.windows(2).filter(|w| w[0] != w[1]).count(),
        sent: sent.load(Ordering::Relaxed),
        counters,
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn bulk_replace_under_traffic_is_never_half_applied() {
    require_root();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Topology::new(1).expect("topology");
    let tx = peer_sender(&t);
    let dir = StateDir::new();
    t.in_host(|| {
        let mut c = attach(&t);
        let mut xsk = XskReceiver::bind(&t.host_if, 0).expect("bind AF_XDP socket");
        register_for_guests(&mut c, &xsk);
        let mut table = FlowTable::load(&dir.file("flows.json")).expect("load");
        table.sync(&mut c).expect("sync");
        // A few prefixes ride along and must survive every flow swap.
        table
            .replace_prefixes(
                &mut c,
                vec![
                    PrefixRuleSpec::new("10.88.0.0/16", "drop"),
                    PrefixRuleSpec::new("fd00:88::/32", "host"),
                ],
                &LegacyIds,
            )
            .unwrap();
        let sets = [swap_set(false), swap_set(true)];
        table
            .replace_flows(&mut c, sets[0].clone(), &LegacyIds)
            .unwrap();
        let prefixes = table.prefixes();

        const SWAPS: usize = 20;
        let shared = Mutex::new((&mut table, &mut c));
        let counters = || shared.lock().unwrap().1.counters().unwrap();
        let run = swap_run(&counters, &tx, &mut xsk, SWAPS, |n| {
            let mut g = shared.lock().unwrap();
            let (table, c) = &mut *g;
            table
                .replace_flows(&mut **c, sets[(n + 1) % 2].clone(), &LegacyIds)
                .expect("replace");
        });
        eprintln!("atomic replace: {run:?}");
        assert_eq!(run.swaps, SWAPS, "all swaps done within the time bound");
        assert!(run.frames > 1000, "enough frames to judge: {run:?}");
        assert!(run.frames as u64 <= run.sent, "{run:?}");
        let d = run.counters;
        assert_eq!(
            (
                d.class_default,
                d.parse_errors,
                d.action_host,
                d.action_drop
            ),
            (0, 0, 0, 0),
            "every frame was decided by an exact rule of A or B: {run:?}"
        );
        assert_eq!(d.class_exact, d.frames, "{run:?}");
        assert!(
            run.transitions <= run.swaps,
            "frames switched between the sets more often than the sets were swapped: \
             a replace was visible half-applied: {run:?}"
        );
        assert!(
            run.transitions * 2 >= run.swaps,
            "the swaps were hardly observed; the test proves nothing: {run:?}"
        );
        let (table, c) = shared.into_inner().unwrap();
        assert_eq!(table.prefixes(), prefixes, "prefixes survive flow swaps");
        assert_maps_hold(c, table);

        // After the last swap every frame sees the final set.
        let final_b = SWAPS % 2 == 1;
        let frames: Vec<_> = (0..SWAP_PORTS)
            .map(|p| udp_frame(HOST_IP, 7, SWAP_BASE_PORT + p, u32::from(p)))
            .collect();
        tx.send_on_queue(0, &frames).unwrap();
        let got = xsk.recv(frames.len(), WAIT).unwrap();
        assert!(!got.is_empty());
        assert!(got.iter().all(|g| set_of(g) == final_b));

        // Negative control: the same detector against a replace that is not
        // atomic (B written over A entry by entry in the active generation)
        // must fire, or the assertions above prove nothing.
        if cpus >= 2 {
            let gen = table.generation();
            let keys: Vec<(FlowKey, [RuleValue; 2])> = table
                .flows()
                .iter()
                .map(|r| {
                    let i = r.dst_port - SWAP_BASE_PORT;
                    let spec = |b: bool| {
                        sets[usize::from(b)][usize::from(i)]
                            .validate(0, &LegacyIds)
                            .unwrap()
                            .bpf_value()
                    };
                    (r.bpf_key(gen), [spec(false), spec(true)])
                })
                .collect();
            let shared = Mutex::new(&mut *c);
            let counters = || shared.lock().unwrap().counters().unwrap();
            let run = swap_run(&counters, &tx, &mut xsk, SWAPS, |n| {
                let mut c = shared.lock().unwrap();
                let to_b = (n + usize::from(final_b)) % 2 == 0;
                for (k, v) in &keys {
                    c.insert_flow(k, &v[usize::from(to_b)]).unwrap();
                }
            });
            eprintln!("non-atomic control: {run:?}");
            assert!(
                run.transitions > run.swaps,
                "the detector did not see a non-atomic replace: {run:?}"
            );
            // Put the maps back to what the table says.
            let c = shared.into_inner().unwrap();
            table.sync(c).unwrap();
            assert_maps_hold(c, table);
        } else {
            eprintln!("one CPU: skipping the non-atomic control run");
        }
        drop(xsk);
    });
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn concurrent_writers_never_corrupt_the_table() {
    require_root();
    const THREADS: u32 = 4;
    const OPS: u32 = 60;
    let t = Topology::new(1).expect("topology");
    let dir = StateDir::new();
    let path = dir.file("flows.json");
    t.in_host(|| {
        let mut c = attach(&t);
        let mut table = FlowTable::load(&path).expect("load");
        table.sync(&mut c).expect("sync");
        let shared = Mutex::new((table, c));
        // Thread k owns flow ids k*1000+1.. and source port 2000+k; it adds
        // every rule, re-adds one (refused), deletes every third. Thread 0
        // also bulk-replaces the prefixes every 10 operations, which moves
        // everybody's flows to the other generation.
        let prefix_set = |round: u32| -> Vec<PrefixRuleSpec> {
            (0..8)
                .map(|j| {
                    let mut p = PrefixRuleSpec::new(format!("10.{}.{j}.0/24", 100 + round), "drop");
                    p.id = Some(round * 100 + j + 1);
                    p
                })
                .collect()
        };
        std::thread::scope(|s| {
            for k in 0..THREADS {
                let shared = &shared;
                s.spawn(move || {
                    for i in 0..OPS {
                        let id = k * 1000 + i + 1;
                        let spec = udp_spec(Some(id), 2000 + k as u16, 3000 + i as u16, "drop");
                        {
                            let mut g = shared.lock().unwrap();
                            let (table, c) = &mut *g;
                            table.add_flow(c, spec.clone(), &LegacyIds).expect("add");
                        }
                        {
                            let mut g = shared.lock().unwrap();
                            let (table, c) = &mut *g;
                            let e = table
                                .add_flow(c, spec, &LegacyIds)
                                .expect_err("re-add is refused");
                            assert!(
                                matches!(e, FlowTableError::DuplicateId { id: x, .. } if x == id)
                            );
                        }
                        if i % 3 == 2 {
                            let mut g = shared.lock().unwrap();
                            let (table, c) = &mut *g;
                            table.delete_flow(c, id - 1).expect("delete");
                        }
                        if k == 0 && i % 10 == 9 {
                            let mut g = shared.lock().unwrap();
                            let (table, c) = &mut *g;
                            table
                                .replace_prefixes(c, prefix_set(i / 10), &LegacyIds)
                                .expect("replace prefixes");
                        }
                    }
                });
            }
        });
        let (table, mut c) = shared.into_inner().unwrap();

        // The serial result: all adds minus the deleted ones, last prefix set.
        let mut want: Vec<FlowRule> = (0..THREADS)
            .flat_map(|k| {
                (0..OPS).filter(|i| i % 3 != 1).map(move |i| {
                    udp_spec(
                        Some(k * 1000 + i + 1),
                        2000 + k as u16,
                        3000 + i as u16,
                        "drop",
                    )
                    .validate(0, &LegacyIds)
                    .unwrap()
                })
            })
            .collect();
        want.sort_by_key(|r| r.id);
        assert_eq!(table.flows(), want, "flows differ from the serial result");
        let mut want_p: Vec<PrefixRule> = prefix_set((OPS - 1) / 10)
            .iter()
            .map(|p| p.validate(0, &LegacyIds).unwrap())
            .collect();
        want_p.sort_by_key(|r| r.id);
        assert_eq!(
            table.prefixes(),
            want_p,
            "prefixes differ from the serial result"
        );
        assert_maps_hold(&c, &table);

        // And the state files say the same.
        drop(table);
        let mut table = FlowTable::load(&path).expect("reload");
        assert_eq!(table.flows(), want);
        assert_eq!(table.prefixes(), want_p);
        table.sync(&mut c).expect("sync");
        assert_maps_hold(&c, &table);
        drop(table);
        c.shutdown().unwrap();
    });
}

/// Everything a failed write must leave alone.
#[derive(Debug, PartialEq)]
struct Everything {
    flows: Vec<FlowRule>,
    prefixes: Vec<PrefixRule>,
    gen: u8,
    active_gen: u8,
    maps: (Vec<RawFlow>, Vec<RawPrefix>),
    state: Option<Vec<u8>>,
    journal: Option<Vec<u8>>,
}

fn everything(table: &FlowTable, c: &Classifier, path: &Path) -> Everything {
    let mut journal = path.as_os_str().to_owned();
    journal.push(".journal");
    Everything {
        flows: table.flows(),
        prefixes: table.prefixes(),
        gen: table.generation(),
        active_gen: c.config().unwrap().active_gen,
        maps: raw_maps(c),
        state: std::fs::read(path).ok(),
        journal: std::fs::read(journal).ok(),
    }
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn bad_input_changes_nothing() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let dir = StateDir::new();
    let path = dir.file("flows.json");
    t.in_host(|| {
        let mut c = attach(&t);
        let mut table = FlowTable::load(&path).expect("load");
        table.sync(&mut c).expect("sync");
        // Some content in both the snapshot and the journal, generation 1.
        table
            .replace_flows(
                &mut c,
                vec![
                    udp_spec(Some(1), 1, 53, "guest"),
                    udp_spec(Some(2), 2, 53, "host"),
                ],
                &LegacyIds,
            )
            .unwrap();
        table
            .add_prefix(
                &mut c,
                PrefixRuleSpec::new("10.88.0.0/16", "drop"),
                &LegacyIds,
            )
            .unwrap();
        table
            .add_flow(&mut c, udp_spec(None, 3, 53, "drop"), &LegacyIds)
            .unwrap();
        assert_eq!(table.generation(), 1);
        let before = everything(&table, &c, &path);
        assert!(before.state.is_some() && before.journal.is_some());

        let with = |f: &dyn Fn(&mut FlowRuleSpec)| {
            let mut s = udp_spec(None, 9, 99, "drop");
            f(&mut s);
            s
        };
        type Op<'a> =
            Box<dyn Fn(&mut FlowTable, &mut Classifier) -> Result<(), FlowTableError> + 'a>;
        let add = |s: FlowRuleSpec| -> Op<'_> {
            Box::new(move |t, c| t.add_flow(c, s.clone(), &LegacyIds).map(|_| ()))
        };
        let addp = |p: &str, a: &str, g: Option<u32>| -> Op<'_> {
            let mut s = PrefixRuleSpec::new(p, a);
            s.guest = g.map(GuestRef::Id);
            Box::new(move |t, c| t.add_prefix(c, s.clone(), &LegacyIds).map(|_| ()))
        };
        let big_flows = vec![udp_spec(None, 9, 99, "drop"); MAX_FLOWS as usize + 1];
        let big_prefixes =
            vec![PrefixRuleSpec::new("10.0.0.0/8", "drop"); MAX_PREFIXES as usize + 1];
        let mut bad_bulk = vec![udp_spec(None, 10, 1, "drop"), udp_spec(None, 10, 2, "drop")];
        bad_bulk.push(with(&|s| s.dst = "10.0.0.300".into()));
        // (what, operation, expected status, expected field)
        let cases: Vec<(&str, Op<'_>, u16, Option<&str>)> = vec![
            (
                "bad address",
                add(with(&|s| s.dst = "10.0.0.300".into())),
                400,
                Some("dst"),
            ),
            (
                "bad source",
                add(with(&|s| s.src = "peer".into())),
                400,
                Some("src"),
            ),
            (
                "mixed families",
                add(with(&|s| s.dst = "fd00::1".into())),
                400,
                Some("dst"),
            ),
            (
                "ports with icmp",
                add(with(&|s| s.proto = "icmp".into())),
                400,
                Some("src_port"),
            ),
            (
                "unknown protocol name",
                add(with(&|s| s.proto = "sctp".into())),
                400,
                Some("proto"),
            ),
            (
                "protocol 300",
                add(with(&|s| {
                    s.proto = xdpath_control::rules::ProtoSpec::Number(300)
                })),
                400,
                Some("proto"),
            ),
            (
                "icmpv6 with IPv4",
                add(with(&|s| {
                    s.proto = "icmpv6".into();
                    s.src_port = 0;
                    s.dst_port = 0;
                })),
                400,
                Some("proto"),
            ),
            (
                "bad action",
                add(with(&|s| s.action = "forward".into())),
                400,
                Some("action"),
            ),
            (
                "guest port with drop",
                add(with(&|s| s.guest = Some(GuestRef::Id(2)))),
                400,
                Some("guest"),
            ),
            ("id 0", add(with(&|s| s.id = Some(0))), 400, Some("id")),
            (
                "duplicate id",
                add(with(&|s| s.id = Some(2))),
                409,
                Some("id"),
            ),
            (
                "duplicate 5-tuple",
                add(udp_spec(Some(50), 1, 53, "drop")),
                409,
                None,
            ),
            (
                "unknown id delete",
                Box::new(|t, c| t.delete_flow(c, 999)),
                404,
                Some("id"),
            ),
            (
                "prefix without length",
                addp("10.0.0.0", "drop", None),
                400,
                Some("prefix"),
            ),
            (
                "prefix too long",
                addp("10.0.0.0/33", "drop", None),
                400,
                Some("prefix"),
            ),
            (
                "host bits set",
                addp("10.88.1.0/16", "drop", None),
                400,
                Some("prefix"),
            ),
            (
                "prefix guest port with host",
                addp("10.9.0.0/16", "host", Some(1)),
                400,
                Some("guest"),
            ),
            (
                "duplicate prefix",
                addp("10.88.0.0/16", "host", None),
                409,
                None,
            ),
            (
                "unknown prefix delete",
                Box::new(|t, c| t.delete_prefix(c, 999)),
                404,
                Some("id"),
            ),
            (
                "bulk with one bad rule",
                Box::new(move |t, c| t.replace_flows(c, bad_bulk.clone(), &LegacyIds).map(|_| ())),
                400,
                Some("dst"),
            ),
            (
                "bulk with a duplicate id",
                Box::new(|t, c| {
                    t.replace_flows(
                        c,
                        vec![
                            udp_spec(Some(4), 1, 1, "drop"),
                            udp_spec(Some(4), 1, 2, "drop"),
                        ],
                        &LegacyIds,
                    )
                    .map(|_| ())
                }),
                409,
                Some("id"),
            ),
            (
                "bulk with a duplicate 5-tuple",
                Box::new(|t, c| {
                    t.replace_flows(
                        c,
                        vec![udp_spec(None, 1, 1, "drop"), udp_spec(None, 1, 1, "host")],
                        &LegacyIds,
                    )
                    .map(|_| ())
                }),
                409,
                None,
            ),
            (
                "bulk prefixes with host bits",
                Box::new(|t, c| {
                    t.replace_prefixes(
                        c,
                        vec![
                            PrefixRuleSpec::new("10.1.0.0/16", "drop"),
                            PrefixRuleSpec::new("fd00::1/64", "drop"),
                        ],
                        &LegacyIds,
                    )
                    .map(|_| ())
                }),
                400,
                Some("prefix"),
            ),
            (
                "too many flows",
                Box::new(move |t, c| {
                    t.replace_flows(c, big_flows.clone(), &LegacyIds)
                        .map(|_| ())
                }),
                507,
                None,
            ),
            (
                "too many prefixes",
                Box::new(move |t, c| {
                    t.replace_prefixes(c, big_prefixes.clone(), &LegacyIds)
                        .map(|_| ())
                }),
                507,
                None,
            ),
        ];
        for (what, op, status, field) in cases {
            let e = op(&mut table, &mut c).expect_err(what);
            assert_eq!(e.http_status(), status, "{what}: {e}");
            assert_eq!(e.field(), field, "{what}: {e}");
            let msg = e.to_string();
            if let Some(f) = field {
                assert!(
                    msg.contains(&format!("`{f}`")) || f == "id",
                    "{what}: message names the field: {msg}"
                );
            }
            assert!(msg.ends_with('.'), "{what}: a sentence: {msg}");
            if let FlowTableError::Capacity { limit, .. } = &e {
                assert!(
                    msg.contains(&limit.to_string()),
                    "{what}: names the limit: {msg}"
                );
            }
            if let FlowTableError::Conflict { existing, .. } = &e {
                // Every conflict above is with the rule of id 1 of its kind.
                assert_eq!(*existing, 1, "{what}: {msg}");
                assert!(
                    msg.contains("rule 1;"),
                    "{what}: names the other rule: {msg}"
                );
            }
            assert_eq!(
                everything(&table, &c, &path),
                before,
                "{what} changed something"
            );
        }
        drop(table);
        c.shutdown().unwrap();
    });
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn state_survives_a_restart() {
    require_root();
    let t = Topology::new(1).expect("topology");
    let tx = peer_sender(&t);
    let dir = StateDir::new();
    let path = dir.file("state/flows.json");
    t.in_host(|| {
        // A table with history: snapshot (bulk replace) + journal.
        let (flows, prefixes) = {
            let mut c = attach(&t);
            let mut table = FlowTable::load(&path).expect("load");
            table.sync(&mut c).unwrap();
            table
                .replace_flows(&mut c, (0..50).map(|i| udp_spec(None, 1, 100 + i, "guest")).collect(), &LegacyIds)
                .unwrap();
            table
                .add_prefix(&mut c, PrefixRuleSpec::new("10.88.0.0/16", "drop"), &LegacyIds)
                .unwrap();
            let mut v6 = PrefixRuleSpec::new("fd00:88::/32", "guest");
            v6.guest = Some(GuestRef::Id(4));
            table.add_prefix(&mut c, v6, &LegacyIds).unwrap();
            table.delete_flow(&mut c, 7).unwrap();
            let mut icmp = FlowRuleSpec::new("fd00::2", "fd00::1", "icmpv6", "drop");
            icmp.id = Some(500);
            table.add_flow(&mut c, icmp, &LegacyIds).unwrap();
            table.add_flow(&mut c, udp_spec(None, 5, 5, "drop"), &LegacyIds).unwrap();
            assert_maps_hold(&c, &table);
            // A second table on the same state file is refused.
            let e = FlowTable::load(&path).expect_err("the state file is locked");
            assert!(e.to_string().contains("in use"), "{e}");
            let r = (table.flows(), table.prefixes());
            drop(table);
            c.shutdown().unwrap();
            r
        };
        assert_eq!(flows.len(), 51);
        assert_eq!(flows.last().unwrap().id, 501, "ids continue after the highest");

        // Restart: fresh maps, the table comes back from the files.
        let mut c = attach(&t);
        assert!(c.flow_entries().unwrap().is_empty(), "fresh maps");
        let mut table = FlowTable::load(&path).expect("reload");
        assert_eq!((table.flows(), table.prefixes()), (flows.clone(), prefixes.clone()));
        table.sync(&mut c).unwrap();
        assert_maps_hold(&c, &table);
        // And the projection is live: the drop prefix drops.
        let before = c.counters().unwrap();
        let fs: Vec<_> = (0..5).map(|i| udp_frame([10, 88, 1, 1], 1, 1, i)).collect();
        tx.send_on_queue(0, &fs).unwrap();
        let d = settle(&c, &before, 5);
        assert_eq!((d.class_prefix, d.action_drop), (5, 5), "{d:?}");

        // Pinned maps with leftovers of both generations (a daemon killed
        // mid-switch, or writes around the table): sync makes them exact.
        let stray = udp_spec(Some(9999), 9, 9, "drop").validate(0, &LegacyIds).unwrap();
        c.insert_flow(&stray.bpf_key(0), &stray.bpf_value()).unwrap();
        c.insert_flow(&stray.bpf_key(1), &stray.bpf_value()).unwrap();
        let sp = PrefixRuleSpec::new("10.99.0.0/16", "drop").validate(77, &LegacyIds).unwrap();
        let (l, d0) = sp.bpf_key(table.generation() ^ 1);
        c.insert_prefix(l, &d0, &sp.bpf_value()).unwrap();
        let victim = table.flows()[0];
        c.remove_flow(&victim.bpf_key(table.generation())).unwrap();
        table.sync(&mut c).unwrap();
        assert_maps_hold(&c, &table);
        assert_eq!(table.flows(), flows, "sync never changes the table");

        // No state file but pinned maps with rules: adopted, not dropped.
        let other = dir.file("other/flows.json");
        let mut adopted = FlowTable::load(&other).expect("load without a file");
        assert!(adopted.flows().is_empty());
        adopted.sync(&mut c).unwrap();
        assert_eq!((adopted.flows(), adopted.prefixes()), (flows.clone(), prefixes.clone()));
        assert_maps_hold(&c, &adopted);
        drop(adopted);
        let again = FlowTable::load(&other).expect("the adoption was written down");
        assert_eq!(again.flows(), flows);
        drop(again);

        // A corrupt state file is an error naming it, and stays as it was.
        drop(table);
        let bad = dir.file("bad/flows.json");
        std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
        let garbage = br#"{"format": "xdpath-flow-table", "version": 1, "epoch": 1, "flows": [{"id": 1, "src": "10.0.0.300"#;
        std::fs::write(&bad, garbage).unwrap();
        let e = FlowTable::load(&bad).expect_err("corrupt state file");
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&bad).unwrap(), garbage);
        // A valid file with an invalid rule, too.
        let snap = std::fs::read_to_string(&path).unwrap();
        let broken = snap.replacen("\"proto\":\"udp\"", "\"proto\":\"icmp\"", 1);
        assert_ne!(snap, broken);
        std::fs::write(&bad, &broken).unwrap();
        let e = FlowTable::load(&bad).expect_err("invalid rule in the state file");
        let msg = e.to_string();
        assert!(
            msg.contains(&bad.display().to_string()) && msg.contains("Field `src_port`"),
            "{msg}"
        );
        // A torn last journal line (an append that never returned) is
        // dropped; a broken line before the end is an error.
        let mut journal = path.as_os_str().to_owned();
        journal.push(".journal");
        let journal = PathBuf::from(journal);
        let j = std::fs::read(&journal).expect("the journal exists");
        let mut torn = j.clone();
        torn.extend_from_slice(br#"{"op":"delete_flow","#);
        std::fs::write(&journal, &torn).unwrap();
        let table = FlowTable::load(&path).expect("a torn tail is dropped");
        assert_eq!(table.flows(), flows);
        drop(table);
        let mut mid = torn.clone();
        mid.extend_from_slice(b"\n");
        mid.extend_from_slice(br#"{"op":"delete_flow","id":1}"#);
        mid.extend_from_slice(b"\n");
        std::fs::write(&journal, &mid).unwrap();
        let e = FlowTable::load(&path).expect_err("a broken journal line");
        assert!(e.to_string().contains(&journal.display().to_string()), "{e}");
        std::fs::write(&journal, &j).unwrap();
        c.shutdown().unwrap();
    });
}

#[test]
#[ignore = "needs root: network namespaces, XDP, pinned BPF maps"]
fn guest_entries_switch_in_their_own_generation() {
    require_root();
    const MAC_A: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 0xb];
    const MAC_OLD: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 0x99];
    const IP_A: [u8; 4] = [10, 77, 0, 10];
    const IP_B: [u8; 4] = [10, 77, 0, 11];
    const ELSEWHERE: [u8; 4] = [10, 66, 0, 9];
    let t = Topology::new(1).expect("topology");
    let tx = peer_sender(&t);
    let dir = StateDir::new();
    t.in_host(|| {
        let mut c = attach(&t);
        let mut xsk = XskReceiver::bind(&t.host_if, 0).expect("bind AF_XDP socket");
        register_for_guests(&mut c, &xsk);
        // What a killed daemon with an older configuration left behind.
        let old = RuleValue {
            action: xdpath_common::Action::Guest as u32,
            port: 9,
            rule_id: 0,
            _pad: 0,
        };
        c.insert_mac(MAC_OLD, &old).unwrap();
        c.insert_neigh(&AddrKey::new(0, IP_B.into()), &old).unwrap();
        let mut table = FlowTable::load(&dir.file("flows.json")).expect("load");
        table
            .replace_flows(&mut c, vec![udp_spec(Some(1), 1, 1, "drop")], &LegacyIds)
            .unwrap();
        let to = |mac: [u8; 6], i: u32| {
            eth(
                mac,
                PEER_MAC,
                ETH_P_IP,
                &ipv4(PEER_IP, ELSEWHERE, 17, &udp(7, 7, &tagged(i, 16))),
            )
        };
        let arp_for = |ip: [u8; 4]| {
            eth(
                [0xff; 6],
                PEER_MAC,
                ETH_P_ARP,
                &arp_request(PEER_MAC, PEER_IP, ip),
            )
        };
        // Start-up: the table's guest entries in, the stale ones out.
        let a = GuestEntries::for_guest(3, Some(MAC_A), &[IP_A.into()]);
        table.set_guests(&mut c, a).unwrap();
        assert_maps_hold(&c, &table);
        let rules_gen = table.generation();

        let check =
            |c: &Classifier, xsk: &mut XskReceiver, frames: Vec<Vec<u8>>, class: RuleClass| {
                let n = frames.len();
                let before = c.counters().unwrap();
                tx.send_on_queue(0, &frames).unwrap();
                let got = xsk.recv(n, WAIT).unwrap();
                assert_eq!(got.len(), n, "{class:?}: frames reach the socket");
                for g in &got {
                    assert_eq!((g.meta.class, g.meta.port), (class as u8, 3), "{class:?}");
                }
                let d = settle(c, &before, n as u64);
                assert_eq!(d.action_guest, n as u64, "{d:?}");
            };
        let to_host = |c: &Classifier, xsk: &mut XskReceiver, frames: Vec<Vec<u8>>| {
            let n = frames.len() as u64;
            let before = c.counters().unwrap();
            tx.send_on_queue(0, &frames).unwrap();
            let d = settle(c, &before, n);
            assert_eq!(
                (d.class_default, d.action_host, d.action_guest),
                (n, n, 0),
                "{d:?}"
            );
            assert_eq!(xsk.drain(QUIET).unwrap(), 0);
        };
        check(
            &c,
            &mut xsk,
            (0..5).map(|i| to(MAC_A, i)).collect(),
            RuleClass::Mac,
        );
        check(&c, &mut xsk, vec![arp_for(IP_A)], RuleClass::Neigh);
        to_host(&c, &mut xsk, (0..5).map(|i| to(MAC_OLD, i)).collect());
        to_host(&c, &mut xsk, vec![arp_for(IP_B)]);

        // A change is one switch of the guest generation; the rules stay.
        let b = GuestEntries::for_guest(3, Some(MAC_B), &[IP_B.into()]);
        let guest_gen = c.config().unwrap().guest_gen;
        table.set_guests(&mut c, b).unwrap();
        assert_maps_hold(&c, &table);
        assert_eq!(c.config().unwrap().guest_gen, guest_gen ^ 1);
        assert_eq!(table.generation(), rules_gen, "the rules were not switched");
        check(
            &c,
            &mut xsk,
            (0..5).map(|i| to(MAC_B, i)).collect(),
            RuleClass::Mac,
        );
        check(&c, &mut xsk, vec![arp_for(IP_B)], RuleClass::Neigh);
        to_host(&c, &mut xsk, (0..5).map(|i| to(MAC_A, i)).collect());
        to_host(&c, &mut xsk, vec![arp_for(IP_A)]);
        drop(xsk);
        drop(table);
        c.shutdown().unwrap();
    });
}
