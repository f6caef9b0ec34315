//! Every rollback path of the flow table, without root: each operation runs
//! against [`FakeMaps`] failing at step 1, 2, ... (once, then from that step
//! on) until it succeeds, and against a store failing at each of its disk
//! steps. After every failure: the table and its state files are as they
//! were, the maps are as they were (or, where a rollback step itself
//! failed, the table knows it is unprojected and the next call repairs the
//! maps to exactly the table), frames never saw a mix of old and new, and
//! the error says what failed.
//!
//! Steps are those of `xdpath_control::maps::fake` (every batch element
//! and every generation switch) and of `StoreStep` (every disk operation).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use xdpath_common::{AddrKey, FlowKey, MacKey, PrefixData, RuleValue};
use xdpath_control::flow_table::{
    FlowTable, FlowTableError, GuestEntries, Projection, StoreFaults, StoreStep,
};
use xdpath_control::maps::{
    FakeContents, FakeMaps, Flows, Generations, Macs, Neigh, Prefixes, RuleMaps,
};
use xdpath_control::rules::{
    FlowRule, FlowRuleSpec, GuestRef, LegacyIds, PrefixRule, PrefixRuleSpec,
};

/// A private state directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "xdpath-rollback-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }

    fn state(&self) -> PathBuf {
        self.0.join("flows.json")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn journal_of(state: &Path) -> PathBuf {
    let mut j = state.as_os_str().to_owned();
    j.push(".journal");
    PathBuf::from(j)
}

fn flow(id: Option<u32>, port: u16, action: &str) -> FlowRuleSpec {
    let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", action);
    s.id = id;
    s.dst_port = port;
    if action == "guest" {
        s.guest = Some(GuestRef::Id(2));
    }
    s
}

fn prefix(id: Option<u32>, p: &str, action: &str) -> PrefixRuleSpec {
    let mut s = PrefixRuleSpec::new(p, action);
    s.id = id;
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MAC_OLD: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

fn guests_a() -> GuestEntries {
    GuestEntries::for_guest(1, Some(MAC_A), &[ip("10.0.0.5"), ip("fd00::5")])
}

/// A new MAC, one address kept, one replaced.
fn guests_b() -> GuestEntries {
    GuestEntries::for_guest(1, Some(MAC_B), &[ip("10.0.0.6"), ip("fd00::5")])
}

/// What the table holds: rules and guest entries.
#[derive(Clone, Debug, PartialEq)]
struct Contents {
    flows: Vec<FlowRule>,
    prefixes: Vec<PrefixRule>,
    guests: GuestEntries,
}

fn contents(t: &FlowTable) -> Contents {
    Contents {
        flows: t.flows(),
        prefixes: t.prefixes(),
        guests: t.guests().clone(),
    }
}

/// The state files, byte for byte.
fn disk(t: &FlowTable) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let p = t.state_path();
    (std::fs::read(p).ok(), std::fs::read(journal_of(p)).ok())
}

/// What the maps hold for `c` in generations `gens`.
fn projection_of(c: &Contents, gens: Generations) -> FakeContents {
    let mut flows: Vec<(FlowKey, RuleValue)> = c
        .flows
        .iter()
        .map(|r| (r.bpf_key(gens.rules), r.bpf_value()))
        .collect();
    let mut prefixes: Vec<((u32, PrefixData), RuleValue)> = c
        .prefixes
        .iter()
        .map(|r| (r.bpf_key(gens.rules), r.bpf_value()))
        .collect();
    let mut macs: Vec<(MacKey, RuleValue)> = c
        .guests
        .macs()
        .map(|(m, v)| (MacKey::new(gens.guests, m), v))
        .collect();
    let mut neigh: Vec<(AddrKey, RuleValue)> = c
        .guests
        .addrs()
        .map(|(a, v)| (AddrKey::new(gens.guests, a), v))
        .collect();
    flows.sort_by_key(|e| e.0);
    prefixes.sort_by_key(|e| e.0);
    macs.sort_by_key(|e| e.0);
    neigh.sort_by_key(|e| e.0);
    FakeContents {
        gens,
        flows,
        prefixes,
        macs,
        neigh,
    }
}

/// What frames see: the entries of the active generations.
fn visible(m: &FakeContents) -> FakeContents {
    let g = m.gens;
    FakeContents {
        gens: Generations::default(),
        flows: m
            .flows
            .iter()
            .filter(|(k, _)| k.gen == g.rules)
            .map(|(k, v)| (FlowKey { gen: 0, ..*k }, *v))
            .collect(),
        prefixes: m
            .prefixes
            .iter()
            .filter(|((_, d), _)| d.gen == g.rules)
            .map(|((l, d), v)| ((*l, PrefixData { gen: 0, ..*d }), *v))
            .collect(),
        macs: m
            .macs
            .iter()
            .filter(|(k, _)| k.gen == g.guests)
            .map(|(k, v)| (MacKey { gen: 0, ..*k }, *v))
            .collect(),
        neigh: m
            .neigh
            .iter()
            .filter(|(k, _)| k.gen == g.guests)
            .map(|(k, v)| (AddrKey { gen: 0, ..*k }, *v))
            .collect(),
    }
}

/// The table is projected and the maps hold exactly it, in the active
/// generations, and nothing else.
fn assert_exact(m: &FakeMaps, t: &FlowTable, what: &str) {
    let Projection::Projected { maps, gens } = t.projection() else {
        panic!("{what}: the table is not projected: {:?}", t.projection());
    };
    assert_eq!(
        maps,
        m.identity().unwrap(),
        "{what}: projected into these maps"
    );
    assert_eq!(m.generations().unwrap(), gens, "{what}: active generations");
    assert_eq!(
        m.contents(),
        projection_of(&contents(t), gens),
        "{what}: maps"
    );
    assert_eq!(t.generation(), gens.rules);
    assert!(m.violations().is_empty(), "{what}: {:?}", m.violations());
}

/// A map failure says which map and what the kernel (fake) answered, as a
/// sentence, and that the table is unchanged.
fn assert_map_error(e: &FlowTableError, what: &str) {
    let msg = e.to_string();
    assert!(
        msg.starts_with("Writing the classifier maps failed; the table is unchanged: Map "),
        "{what}: {msg}"
    );
    assert!(
        ["FLOWS", "PREFIXES", "MACS", "NEIGH", "CONFIG"]
            .iter()
            .any(|m| msg.contains(&format!("Map {m} operation failed: bpf_map_"))),
        "{what}: names the map and the call: {msg}"
    );
    assert!(msg.contains("(os error "), "{what}: {msg}");
    assert!(msg.ends_with('.'), "{what}: a sentence: {msg}");
    assert_eq!(e.http_status(), 500, "{what}");
}

type Setup = Box<dyn Fn(&Dir) -> (FlowTable, FakeMaps)>;
type Op = Box<dyn Fn(&mut FlowTable, &mut FakeMaps) -> Result<(), FlowTableError>>;

/// An operation and the state it starts from.
struct Case {
    name: &'static str,
    setup: Setup,
    op: Op,
}

/// Rules in the snapshot and in the journal, guest entries A, projected.
fn projected() -> Setup {
    Box::new(|d: &Dir| {
        let mut m = FakeMaps::new();
        let mut t = FlowTable::load(&d.state()).expect("load");
        t.set_guests(&mut m, guests_a()).expect("guests");
        t.replace_flows(
            &mut m,
            vec![
                flow(Some(1), 1, "guest"),
                flow(Some(2), 2, "drop"),
                flow(Some(3), 3, "host"),
            ],
            &LegacyIds,
        )
        .expect("flows");
        t.replace_prefixes(
            &mut m,
            vec![
                prefix(Some(1), "10.88.0.0/16", "drop"),
                prefix(Some(2), "fd00:88::/32", "host"),
            ],
            &LegacyIds,
        )
        .expect("prefixes");
        t.add_flow(&mut m, flow(Some(4), 4, "drop"), &LegacyIds)
            .expect("a journal entry");
        assert_exact(&m, &t, "setup");
        assert!(disk(&t).1.is_some(), "the journal exists");
        (t, m)
    })
}

/// The state files of [`projected`], a fresh load (UNPROJECTED), and maps
/// made by `maps`.
fn reloaded(maps: fn(&FlowTable) -> FakeMaps) -> Setup {
    Box::new(move |d: &Dir| {
        let (t, _) = projected()(d);
        drop(t);
        let t = FlowTable::load(&d.state()).expect("reload");
        assert_eq!(t.projection(), Projection::Unprojected);
        let m = maps(&t);
        (t, m)
    })
}

/// Maps of a killed daemon with an older configuration, written around the
/// table: right, wrong and foreign entries in the active generations, stale
/// ones in the others, and a key of a generation that does not exist.
fn foreign_and_stale(t: &FlowTable) -> FakeMaps {
    let mut m = FakeMaps::new();
    let gens = Generations {
        rules: 1,
        guests: 1,
    };
    let flows = t.flows();
    let mut wrong = flows[1].bpf_value();
    wrong.action = xdpath_common::Action::Host as u32;
    let foreign = flow(Some(99), 99, "drop").validate(0, &LegacyIds).unwrap();
    m.insert_into::<Flows>(&[
        (flows[0].bpf_key(1), flows[0].bpf_value()),
        (flows[1].bpf_key(1), wrong),
        (foreign.bpf_key(1), foreign.bpf_value()),
        (flows[2].bpf_key(0), flows[2].bpf_value()),
    ])
    .unwrap();
    let prefixes = t.prefixes();
    m.insert_into::<Prefixes>(&[
        (prefixes[0].bpf_key(1), prefixes[0].bpf_value()),
        (prefixes[1].bpf_key(0), prefixes[1].bpf_value()),
    ])
    .unwrap();
    let guest = guests_a().macs().next().unwrap().1;
    m.insert_into::<Macs>(&[
        (MacKey::new(1, MAC_OLD), guest),
        (MacKey::new(0, MAC_A), guest),
    ])
    .unwrap();
    m.insert_into::<Neigh>(&[
        (AddrKey::new(1, ip("10.0.0.5")), guest),
        (AddrKey::new(4, ip("10.0.0.7")), guest),
    ])
    .unwrap();
    m.set_generations(gens).unwrap();
    m.wait_for_readers();
    m
}

/// Maps that already hold exactly the table with guest entries A.
fn exact(t: &FlowTable) -> FakeMaps {
    let gens = Generations {
        rules: 1,
        guests: 0,
    };
    let want = projection_of(
        &Contents {
            guests: guests_a(),
            ..contents(t)
        },
        gens,
    );
    let mut m = FakeMaps::new();
    m.insert_into::<Flows>(&want.flows).unwrap();
    m.insert_into::<Prefixes>(&want.prefixes).unwrap();
    m.insert_into::<Macs>(&want.macs).unwrap();
    m.insert_into::<Neigh>(&want.neigh).unwrap();
    m.set_generations(gens).unwrap();
    m.wait_for_readers();
    m
}

fn switch_cases() -> Vec<Case> {
    vec![
        Case {
            name: "replace_flows",
            setup: projected(),
            op: Box::new(|t, m| {
                t.replace_flows(
                    m,
                    vec![
                        flow(Some(2), 2, "drop"),
                        flow(Some(3), 3, "guest"),
                        flow(None, 5, "drop"),
                        flow(None, 6, "host"),
                    ],
                    &LegacyIds,
                )
                .map(|_| ())
            }),
        },
        Case {
            name: "replace_flows with nothing",
            setup: projected(),
            op: Box::new(|t, m| t.replace_flows(m, vec![], &LegacyIds).map(|_| ())),
        },
        Case {
            name: "replace_prefixes",
            setup: projected(),
            op: Box::new(|t, m| {
                t.replace_prefixes(
                    m,
                    vec![
                        prefix(Some(2), "fd00:88::/32", "drop"),
                        prefix(None, "10.99.0.0/16", "drop"),
                    ],
                    &LegacyIds,
                )
                .map(|_| ())
            }),
        },
        Case {
            name: "set_guests (another MAC and address)",
            setup: projected(),
            op: Box::new(|t, m| t.set_guests(m, guests_b())),
        },
        Case {
            name: "set_guests (none)",
            setup: projected(),
            op: Box::new(|t, m| t.set_guests(m, GuestEntries::new())),
        },
        Case {
            name: "remove_guest (its rules and its entries, one switch)",
            setup: projected(),
            op: Box::new(|t, m| t.remove_guest(m, 2, GuestEntries::new()).map(|_| ())),
        },
    ]
}

#[test]
fn removing_a_guest_takes_its_rules_and_entries_and_keeps_the_rest() {
    let d = Dir::new();
    let (mut t, mut m) = projected()(&d);
    assert_eq!(t.rules_for_guest(2), 1);
    let before = m.generations().unwrap();
    assert_eq!(t.remove_guest(&mut m, 2, guests_b()).unwrap(), 1);
    let after = m.generations().unwrap();
    assert_ne!(
        (before.rules, before.guests),
        (after.rules, after.guests),
        "both generations flipped"
    );
    assert_eq!(t.rules_for_guest(2), 0);
    let ids: Vec<u32> = t.flows().iter().map(|r| r.id).collect();
    assert_eq!(ids, [2, 3, 4], "the other rules stay");
    assert_eq!(t.prefixes().len(), 2);
    assert_eq!(t.guests(), &guests_b());
    assert_exact(&m, &t, "after remove_guest");
    // A guest no rule names: nothing but the entries change.
    assert_eq!(t.remove_guest(&mut m, 7, GuestEntries::new()).unwrap(), 0);
    assert_eq!(t.flows().len(), 3);
    assert_exact(&m, &t, "after removing a guest without rules");
    let flows = t.flows();
    drop(t);
    let reloaded = FlowTable::load(&d.state()).unwrap();
    assert_eq!(reloaded.flows(), flows, "the removal is durable");
}

fn sync_cases() -> Vec<Case> {
    vec![
        Case {
            name: "sync from empty maps",
            setup: reloaded(|_| FakeMaps::new()),
            op: Box::new(|t, m| t.sync(m)),
        },
        Case {
            name: "start-up (set_guests) from empty maps",
            setup: reloaded(|_| FakeMaps::new()),
            op: Box::new(|t, m| t.set_guests(m, guests_a())),
        },
        Case {
            name: "sync from foreign and stale entries",
            setup: reloaded(foreign_and_stale),
            op: Box::new(|t, m| t.sync(m)),
        },
        Case {
            name: "start-up (set_guests) from foreign and stale entries",
            setup: reloaded(foreign_and_stale),
            op: Box::new(|t, m| t.set_guests(m, guests_a())),
        },
        Case {
            name: "start-up (set_guests) on maps already exact",
            setup: reloaded(exact),
            op: Box::new(|t, m| t.set_guests(m, guests_a())),
        },
        Case {
            name: "sync adopting the rules of maps without a state file",
            setup: Box::new(|d: &Dir| {
                let other = Dir::new();
                let (t, _) = projected()(&other);
                let m = foreign_and_stale(&t);
                drop(t);
                let t = FlowTable::load(&d.state()).expect("load without a file");
                assert_eq!(t.projection(), Projection::Unadopted);
                (t, m)
            }),
            op: Box::new(|t, m| t.sync(m)),
        },
    ]
}

fn single_cases() -> Vec<Case> {
    vec![
        Case {
            name: "add_flow",
            setup: projected(),
            op: Box::new(|t, m| {
                t.add_flow(m, flow(None, 7, "guest"), &LegacyIds)
                    .map(|_| ())
            }),
        },
        Case {
            name: "delete_flow",
            setup: projected(),
            op: Box::new(|t, m| t.delete_flow(m, 2)),
        },
        Case {
            name: "add_prefix",
            setup: projected(),
            op: Box::new(|t, m| {
                t.add_prefix(m, prefix(None, "10.77.0.0/16", "drop"), &LegacyIds)
                    .map(|_| ())
            }),
        },
        Case {
            name: "delete_prefix",
            setup: projected(),
            op: Box::new(|t, m| t.delete_prefix(m, 1)),
        },
    ]
}

/// What the case does without faults: the contents after, and how many
/// map steps and store steps it takes.
fn reference(case: &Case) -> (Contents, u64, u64) {
    let d = Dir::new();
    let (mut t, mut m) = (case.setup)(&d);
    let faults = StoreFaults::new();
    t.set_store_faults(Some(faults.clone()));
    let start = m.steps();
    (case.op)(&mut t, &mut m).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    assert_exact(&m, &t, case.name);
    (contents(&t), m.steps() - start, faults.steps())
}

/// After a call on `t`: the next call leaves the table holding `want`, the
/// maps exactly the table, and the state files the same rules.
fn assert_repaired(t: &mut FlowTable, m: &mut FakeMaps, want: &Contents, what: &str) {
    // A call that changes nothing, but touches the maps as any call does.
    let guests = t.guests().clone();
    t.set_guests(m, guests)
        .unwrap_or_else(|e| panic!("{what}: the next call: {e}"));
    assert_eq!(&contents(t), want, "{what}");
    assert_exact(m, t, what);
    assert_eq!(
        rules_on_disk(t),
        (want.flows.clone(), want.prefixes.clone()),
        "{what}: the state files"
    );
}

/// The rules `t`'s state files hold, loaded from a copy (the table holds
/// the lock).
fn rules_on_disk(t: &FlowTable) -> (Vec<FlowRule>, Vec<PrefixRule>) {
    let copy = Dir::new();
    std::fs::create_dir_all(&copy.0).unwrap();
    let (state, journal) = disk(t);
    if let Some(s) = state {
        std::fs::write(copy.state(), s).unwrap();
    }
    if let Some(j) = journal {
        std::fs::write(journal_of(&copy.state()), j).unwrap();
    }
    let c = FlowTable::load(&copy.state()).expect("the state files load");
    (c.flows(), c.prefixes())
}

/// Runs `case` with the maps failing at each step, once and from then on.
fn every_map_step(case: &Case) {
    let (want, steps, _) = reference(case);
    for sticky in [false, true] {
        for n in 1..=steps + 1 {
            let what = format!(
                "{}, map step {n} of {steps} failing{}",
                case.name,
                if sticky { " and every one after" } else { "" }
            );
            let d = Dir::new();
            let (mut t, mut m) = (case.setup)(&d);
            let (table0, disk0, maps0, proj0) =
                (contents(&t), disk(&t), m.contents(), t.projection());
            if sticky {
                m.fail_from(n);
            } else {
                m.fail_at(n);
            }
            let start = m.steps();
            let res = (case.op)(&mut t, &mut m);
            let fired = m.steps() - start >= n;
            assert_eq!(fired, n <= steps, "{what}: the operation took another path");
            let maps1 = m.contents();
            match res {
                Err(e) => {
                    assert_map_error(&e, &what);
                    assert_eq!(contents(&t), table0, "{what}: the table changed");
                    assert_eq!(disk(&t), disk0, "{what}: the state files changed");
                    let seen = visible(&maps1);
                    assert!(
                        seen == visible(&maps0)
                            || seen == visible(&projection_of(&want, maps1.gens)),
                        "{what}: frames see neither the old nor the new table: {maps1:?}"
                    );
                    match t.projection() {
                        Projection::Projected { .. } => {
                            assert!(matches!(proj0, Projection::Projected { .. }), "{what}");
                            assert_eq!(maps1, maps0, "{what}: the maps changed");
                        }
                        p => {
                            assert!(
                                sticky || !matches!(proj0, Projection::Projected { .. }),
                                "{what}: a failure that could be rolled back left the table {p:?}"
                            );
                            if proj0 == Projection::Unadopted {
                                assert_eq!(p, Projection::Unadopted, "{what}: nothing adopted");
                            }
                        }
                    }
                    // The call again, with working maps, does what it should.
                    m.heal();
                    (case.op)(&mut t, &mut m).unwrap_or_else(|e| panic!("{what}: again: {e}"));
                }
                Ok(()) => {
                    // Only deleting the old generation may fail without
                    // failing the call: the change is in effect.
                    assert_eq!(contents(&t), want, "{what}");
                    if fired {
                        assert_eq!(t.projection(), Projection::Unprojected, "{what}");
                        assert_eq!(
                            visible(&maps1),
                            visible(&projection_of(&want, maps1.gens)),
                            "{what}: frames see the new table"
                        );
                    }
                }
            }
            assert!(m.violations().is_empty(), "{what}: {:?}", m.violations());
            m.heal();
            assert_repaired(&mut t, &mut m, &want, &what);
        }
    }
}

#[test]
fn a_bulk_switch_rolls_back_at_every_failing_map_step() {
    for case in switch_cases() {
        every_map_step(&case);
    }
}

#[test]
fn a_sync_rolls_back_at_every_failing_map_step() {
    for case in sync_cases() {
        every_map_step(&case);
    }
}

#[test]
fn a_single_change_rolls_back_at_every_failing_map_step() {
    for case in single_cases() {
        every_map_step(&case);
    }
}

#[test]
fn maps_already_exact_are_not_written() {
    let d = Dir::new();
    let (mut t, mut m) = reloaded(exact)(&d);
    let before = m.contents();
    m.fail_from(1);
    t.set_guests(&mut m, guests_a()).expect("no map write");
    assert_eq!(m.contents(), before);
    assert_exact(&m, &t, "exact");
}

#[test]
fn stale_guest_entries_do_not_survive_a_restart() {
    let d = Dir::new();
    let (mut t, mut m) = reloaded(foreign_and_stale)(&d);
    t.set_guests(&mut m, guests_b()).expect("start-up");
    assert_exact(&m, &t, "restart");
    let c = m.contents();
    assert!(c.macs.iter().all(|(k, _)| k.mac == MAC_B), "{:?}", c.macs);
    assert!(
        c.neigh.iter().all(|(k, _)| k.gen == c.gens.guests),
        "{:?}",
        c.neigh
    );
    let flows = t.flows();
    assert_eq!(flows.len(), 4, "sync never changes the rules");
}

#[test]
fn a_guest_change_does_not_rewrite_the_rules() {
    let d = Dir::new();
    let (mut t, mut m) = projected()(&d);
    let rules_before: Vec<_> = m.contents().flows;
    let gens = m.generations().unwrap();
    let start = m.steps();
    t.set_guests(&mut m, guests_b()).unwrap();
    assert_eq!(m.contents().flows, rules_before, "FLOWS untouched");
    assert_eq!(m.generations().unwrap().rules, gens.rules);
    assert_ne!(m.generations().unwrap().guests, gens.guests);
    // 3 entries staged, one switch, 3 old ones deleted.
    assert_eq!(m.steps() - start, 7);
    assert_exact(&m, &t, "guest change");
    assert!(m.waits() > 0);
}

#[test]
fn recreated_maps_are_projected_again() {
    let d = Dir::new();
    let (mut t, mut m) = projected()(&d);
    m.recreate();
    t.add_flow(&mut m, flow(None, 9, "drop"), &LegacyIds)
        .unwrap();
    assert_exact(&m, &t, "recreated");
    assert_eq!(t.flows().len(), 5);
}

/// Runs `case` with the store failing at each of its steps, once.
fn every_store_step(case: &Case) {
    let (want, _, steps) = reference(case);
    for n in 1..=steps + 1 {
        let what = format!("{}, store step {n} of {steps} failing", case.name);
        let d = Dir::new();
        let (mut t, mut m) = (case.setup)(&d);
        let faults = StoreFaults::new();
        t.set_store_faults(Some(faults.clone()));
        let (table0, disk0, maps0, proj0) = (contents(&t), disk(&t), m.contents(), t.projection());
        faults.fail_at(n);
        let res = (case.op)(&mut t, &mut m);
        let log = faults.log();
        let fired = log.len() as u64 >= n;
        assert_eq!(fired, n <= steps, "{what}: the operation took another path");
        match res {
            Err(e) => {
                let msg = e.to_string();
                let (step, file) = &log[(n - 1) as usize];
                assert!(
                    msg.starts_with(&format!("State file {}", t.state_path().display()))
                        || msg.starts_with(&format!(
                            "State file {}",
                            journal_of(t.state_path()).display()
                        )),
                    "{what} ({step:?} on {}): names the file: {msg}",
                    file.display()
                );
                assert!(
                    msg.contains("Input/output error (os error 5)"),
                    "{what}: {msg}"
                );
                assert!(msg.ends_with('.'), "{what}: {msg}");
                assert_eq!(e.http_status(), 500);
                assert_eq!(contents(&t), table0, "{what}: the table changed");
                assert_eq!(disk(&t), disk0, "{what}: the state files changed");
                assert_eq!(t.projection(), proj0, "{what}");
                if matches!(proj0, Projection::Projected { .. }) {
                    assert_eq!(m.contents(), maps0, "{what}: the maps changed");
                }
                faults.heal();
                (case.op)(&mut t, &mut m).unwrap_or_else(|e| panic!("{what}: again: {e}"));
            }
            Ok(()) => {
                if fired {
                    // Only tidying after the commit may fail without
                    // failing the call.
                    assert_eq!(log[(n - 1) as usize].0, StoreStep::Remove, "{what}");
                }
            }
        }
        assert!(m.violations().is_empty(), "{what}: {:?}", m.violations());
        assert_eq!(contents(&t), want, "{what}");
        assert_repaired(&mut t, &mut m, &want, &what);
    }
}

/// The operations that touch the store: every single change, every switch,
/// and the syncs that adopt what the maps hold.
fn store_cases() -> Vec<Case> {
    single_cases()
        .into_iter()
        .chain(switch_cases())
        .chain(
            sync_cases()
                .into_iter()
                .filter(|c| c.name.contains("adopting")),
        )
        .collect()
}

#[test]
fn a_failing_store_step_leaves_memory_disk_and_maps_as_they_were() {
    let cases = store_cases();
    for case in &cases {
        every_store_step(case);
    }
}

#[test]
fn a_failed_journal_append_whose_rollback_fails_is_repaired_by_the_next_call() {
    for add in [true, false] {
        let d = Dir::new();
        let (mut t, mut m) = projected()(&d);
        let faults = StoreFaults::new();
        t.set_store_faults(Some(faults.clone()));
        let (table0, disk0) = (contents(&t), disk(&t));
        faults.fail_nth(StoreStep::Write, 1);
        // The map write works; undoing it does not.
        m.fail_from(2);
        let e = if add {
            t.add_flow(&mut m, flow(None, 7, "drop"), &LegacyIds)
                .map(|_| ())
        } else {
            t.delete_flow(&mut m, 3)
        }
        .expect_err("the journal append fails");
        let msg = e.to_string();
        assert!(
            msg.contains(&journal_of(t.state_path()).display().to_string())
                && msg.contains("cannot be appended to"),
            "{msg}"
        );
        assert_eq!(contents(&t), table0);
        assert_eq!(disk(&t), disk0);
        assert_eq!(t.projection(), Projection::Unprojected);
        m.heal();
        assert_repaired(&mut t, &mut m, &table0, "append then rollback failed");
    }
}

#[test]
fn a_failed_snapshot_whose_switch_back_fails_is_repaired_by_the_next_call() {
    let d = Dir::new();
    let (mut t, mut m) = projected()(&d);
    let faults = StoreFaults::new();
    t.set_store_faults(Some(faults.clone()));
    let (table0, disk0) = (contents(&t), disk(&t));
    faults.fail_nth(StoreStep::Rename, 1);
    // Staging (1 flow, 2 prefixes: steps 1-3) and the switch (4) work;
    // switching back (5) does not.
    m.fail_from(5);
    let e = t
        .replace_flows(&mut m, vec![flow(None, 5, "drop")], &LegacyIds)
        .expect_err("the snapshot fails");
    assert!(
        e.to_string().starts_with(&format!(
            "State file {}: cannot be written",
            t.state_path().display()
        )),
        "{e}"
    );
    assert_eq!(contents(&t), table0);
    assert_eq!(disk(&t), disk0);
    assert_eq!(t.projection(), Projection::Unprojected);
    m.heal();
    assert_repaired(&mut t, &mut m, &table0, "snapshot then switch back failed");
}

// ----- durability: what a reload, and a crash, find after a failing step -----

/// A file's identity (a rename or link keeps it, a rewrite does not):
/// inode and birth time, so a reused inode number is a new file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FileId(u64, Option<std::time::SystemTime>);

/// The state directory after one store step.
#[derive(Clone, Debug)]
struct Point {
    /// Name -> file, the lock file left out.
    listing: std::collections::BTreeMap<String, FileId>,
    /// This step was a directory fsync that succeeded: everything up to
    /// here is durable.
    synced: bool,
}

/// Every state the directory went through, step by step, and every
/// content each file had: what a crash at any point can leave.
#[derive(Debug, Default)]
struct Recorder {
    points: Vec<Point>,
    /// File -> (point, bytes), whenever they changed.
    contents: std::collections::HashMap<FileId, Vec<(usize, Vec<u8>)>>,
}

impl Recorder {
    fn capture(&mut self, dir: &Path, synced: bool) {
        use std::os::unix::fs::MetadataExt;
        let at = self.points.len();
        let mut listing = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") {
                continue;
            }
            let (Ok(meta), Ok(bytes)) = (e.metadata(), std::fs::read(e.path())) else {
                continue;
            };
            let id = FileId(meta.ino(), meta.created().ok());
            let history = self.contents.entry(id.clone()).or_default();
            if history.last().map(|(_, b)| b) != Some(&bytes) {
                history.push((at, bytes));
            }
            listing.insert(name, id);
        }
        self.points.push(Point { listing, synced });
    }

    /// The directories a crash right after point `at` may leave: the
    /// entries as of any point since the last successful directory fsync
    /// (a prefix of the changes since then made it to the disk), each file
    /// with its latest content (file data is fsynced before anything that
    /// depends on it is acknowledged).
    fn crash_images(&self, at: usize) -> Vec<Vec<(String, Vec<u8>)>> {
        let durable = (0..=at).rev().find(|&j| self.points[j].synced).unwrap_or(0);
        (durable..=at)
            .map(|j| {
                self.points[j]
                    .listing
                    .iter()
                    .map(|(name, id)| {
                        let bytes = self.contents[id]
                            .iter()
                            .rev()
                            .find(|(p, _)| *p <= at)
                            .map(|(_, b)| b.clone())
                            .unwrap_or_default();
                        (name.clone(), bytes)
                    })
                    .collect()
            })
            .collect()
    }
}

type Rules = (Vec<FlowRule>, Vec<PrefixRule>);

/// Rules in short: the flows' (id, port) and the prefixes' ids.
fn brief(r: &Rules) -> String {
    let flows: Vec<(u32, u16)> = r.0.iter().map(|f| (f.id, f.dst_port)).collect();
    let prefixes: Vec<u32> = r.1.iter().map(|p| p.id).collect();
    format!("flows {flows:?} prefixes {prefixes:?}")
}

fn rules_of(t: &FlowTable) -> Rules {
    (t.flows(), t.prefixes())
}

/// Loads a directory made of `files` (a crash image); what the table
/// holds, or the load's error.
fn load_image(files: &[(String, Vec<u8>)]) -> Result<Rules, String> {
    let d = Dir::new();
    std::fs::create_dir_all(&d.0).unwrap();
    for (name, bytes) in files {
        std::fs::write(d.0.join(name), bytes).unwrap();
    }
    FlowTable::load(&d.state())
        .map(|t| rules_of(&t))
        .map_err(|e| e.to_string())
}

/// Runs `case` with the store failing at each of its steps, once, then
/// three more operations that succeed; records the state directory after
/// every step. After each operation, every crash image must load to the
/// table as acknowledged (or, right after the failing operation, as it
/// was before it, if it failed), and at the end a plain reload must too.
fn every_store_step_durably(case: &Case) {
    let (after_ok, _, steps) = reference(case);
    let after_ok = (after_ok.flows, after_ok.prefixes);
    for n in 1..=steps + 1 {
        let what = format!("{}, store step {n} of {steps} failing", case.name);
        let d = Dir::new();
        let (mut t, mut m) = (case.setup)(&d);
        let rec = std::sync::Arc::new(std::sync::Mutex::new(Recorder::default()));
        rec.lock().unwrap().capture(&d.0, true);
        let faults = StoreFaults::new();
        let (r, dir) = (rec.clone(), d.0.clone());
        faults.watch(move |step, _, ok| {
            r.lock()
                .unwrap()
                .capture(&dir, step == StoreStep::FsyncDir && ok)
        });
        t.set_store_faults(Some(faults.clone()));
        let before = rules_of(&t);
        faults.fail_at(n);
        // (rules a crash at this boundary may show, what the operation was)
        let mut boundaries: Vec<(usize, Vec<Rules>, String)> = Vec::new();
        let acked = (case.op)(&mut t, &mut m).is_ok();
        faults.heal();
        let allowed = if acked {
            vec![after_ok.clone()]
        } else {
            vec![before.clone(), after_ok.clone()]
        };
        assert!(allowed.contains(&rules_of(&t)), "{what}: in memory");
        boundaries.push((
            rec.lock().unwrap().points.len() - 1,
            allowed,
            case.name.into(),
        ));

        let follow: [(&str, Op); 3] = [
            (
                "add_flow",
                Box::new(|t, m| {
                    t.add_flow(m, flow(None, 40, "drop"), &LegacyIds)
                        .map(|_| ())
                }),
            ),
            (
                "add_prefix",
                Box::new(|t, m| {
                    t.add_prefix(m, prefix(None, "10.40.0.0/16", "host"), &LegacyIds)
                        .map(|_| ())
                }),
            ),
            (
                "delete_flow",
                Box::new(|t, m| {
                    let id = t.flows().iter().find(|r| r.dst_port == 40).unwrap().id;
                    t.delete_flow(m, id)
                }),
            ),
        ];
        for (name, op) in follow {
            op(&mut t, &mut m).unwrap_or_else(|e| panic!("{what}, then {name}: {e}"));
            boundaries.push((
                rec.lock().unwrap().points.len() - 1,
                vec![rules_of(&t)],
                format!("then {name} (acknowledged)"),
            ));
        }
        let rec = rec.lock().unwrap();
        for (at, allowed, after) in &boundaries {
            for (i, image) in rec.crash_images(*at).iter().enumerate() {
                let names: Vec<&str> = image.iter().map(|(n, _)| n.as_str()).collect();
                match load_image(image) {
                    Ok(rules) => assert!(
                        allowed.contains(&rules),
                        "{what}: a crash after {after} (image {i}: {names:?}) loses what was \
                         acknowledged: it loads {}, not one of {:?}",
                        brief(&rules),
                        allowed.iter().map(brief).collect::<Vec<_>>()
                    ),
                    Err(e) => panic!(
                        "{what}: a crash after {after} (image {i}: {names:?}) leaves state \
                         that does not load: {e}"
                    ),
                }
            }
        }
        let want = rules_of(&t);
        drop(t);
        let t = FlowTable::load(&d.state()).expect("reload");
        assert_eq!(
            rules_of(&t),
            want,
            "{what}: a reload finds what was acknowledged"
        );
    }
}

#[test]
fn every_acknowledged_operation_survives_a_reload_and_a_crash_after_any_failing_step() {
    let cases = store_cases();
    for case in &cases {
        every_store_step_durably(case);
    }
}
