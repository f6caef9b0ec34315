//! [`FakeMaps`]: the rule maps in plain memory, for tests without root.
//!
//! It behaves as the classifier's maps do for the flow table (batch writes
//! applied in order, absent keys skipped on removal, one `CONFIG` update per
//! generation switch) and can be told to fail.
//!
//! # What counts as a step
//!
//! Faults are placed by step number. The mutating steps, counted from 1 in
//! the order they are attempted, are exactly:
//!
//! - each element of a [`MapTable::insert`] batch (an empty batch is no
//!   step);
//! - each element of a [`MapTable::remove`] batch, whether or not its key is
//!   in the map;
//! - each [`RuleMaps::set_generations`] call.
//!
//! Reads ([`MapTable::entries`], [`RuleMaps::generations`],
//! [`RuleMaps::identity`]) and [`RuleMaps::wait_for_readers`] are not steps
//! and never fail.
//!
//! A failing step changes nothing, and a batch stops there: the elements
//! before it stay applied, as [`BatchError::done`] reports, the rest are not
//! tried. The error is the one the classifier gives for a failed system
//! call, e.g. `Map FLOWS operation failed: bpf_map_update_batch failed:
//! Cannot allocate memory (os error 12).`
//!
//! # XSKMAP and counters
//!
//! For the daemon's API running on the fake (see `crate::platform`), it
//! also keeps the XSKMAP entries (queue -> socket fd number, written through
//! [`SocketMap`], never a fault step) and a classifier counter block that a
//! test sets ([`FakeMaps::set_counters`]).
//!
//! # Readers
//!
//! The fake also checks the one rule the maps cannot enforce: after a
//! generation was switched away from, none of its entries may be removed or
//! overwritten before [`RuleMaps::wait_for_readers`], since a frame may
//! still be classified against it. Breaches are recorded, not refused;
//! [`FakeMaps::violations`] lists them.

use super::{
    BatchError, Flows, Generations, Group, Macs, MapTable, MapsId, Neigh, Prefixes, RuleMap,
    RuleMaps,
};
use crate::classifier::ClassifierError;
use crate::socket_pool::SocketMap;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use xdpath_common::{self as common, AddrKey, Counters, FlowKey, MacKey, PrefixData, RuleValue};

/// A planned failure.
#[derive(Clone, Copy, Debug)]
struct Fault {
    /// The absolute step number that fails first.
    step: u64,
    /// Every later step fails too (until healed).
    sticky: bool,
}

/// Everything the fake maps hold, in key order: what a test compares
/// before and after an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeContents {
    /// The `CONFIG` generations.
    pub gens: Generations,
    /// `FLOWS`, all generations.
    pub flows: Vec<(FlowKey, RuleValue)>,
    /// `PREFIXES` (length in address bits, data), all generations.
    pub prefixes: Vec<((u32, PrefixData), RuleValue)>,
    /// `MACS`, all generations.
    pub macs: Vec<(MacKey, RuleValue)>,
    /// `NEIGH`, all generations.
    pub neigh: Vec<(AddrKey, RuleValue)>,
}

/// The rule maps in memory. See the module docs for the fault steps.
#[derive(Debug)]
pub struct FakeMaps {
    flows: BTreeMap<FlowKey, RuleValue>,
    prefixes: BTreeMap<(u32, PrefixData), RuleValue>,
    macs: BTreeMap<MacKey, RuleValue>,
    neigh: BTreeMap<AddrKey, RuleValue>,
    gens: Generations,
    id: MapsId,
    /// Mutating steps attempted so far.
    steps: u64,
    fault: Option<Fault>,
    waits: u64,
    /// Per group: a generation switched away from since the last wait.
    draining: [Option<u8>; 2],
    violations: Vec<String>,
    /// XSKMAP: queue -> the fd number registered for it.
    xsks: BTreeMap<u32, RawFd>,
    /// What [`FakeMaps::counters`] reports.
    counters: Counters,
}

impl Default for FakeMaps {
    fn default() -> Self {
        Self::new()
    }
}

fn next_id() -> MapsId {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    MapsId([n; 5])
}

fn group_index(g: Group) -> usize {
    match g {
        Group::Rules => 0,
        Group::Guests => 1,
    }
}

/// Implements [`MapTable`] for the fake's map `$m`, stored in field `$f`.
macro_rules! fake_table {
    ($m:ty, $f:ident) => {
        impl MapTable<$m> for FakeMaps {
            fn entries(&self) -> Result<Vec<(<$m as RuleMap>::Key, RuleValue)>, ClassifierError> {
                Ok(self.$f.iter().map(|(k, v)| (*k, *v)).collect())
            }

            fn insert(
                &mut self,
                entries: &[(<$m as RuleMap>::Key, RuleValue)],
            ) -> Result<(), BatchError> {
                for (i, (k, v)) in entries.iter().enumerate() {
                    self.step(<$m>::NAME, "bpf_map_update_batch", libc::ENOMEM)
                        .map_err(|source| BatchError { done: i, source })?;
                    if self.$f.insert(*k, *v).is_some() {
                        self.check_reader::<$m>(k, "an entry overwritten");
                    }
                }
                Ok(())
            }

            fn remove(&mut self, keys: &[<$m as RuleMap>::Key]) -> Result<usize, BatchError> {
                let mut removed = 0;
                for (i, k) in keys.iter().enumerate() {
                    self.step(<$m>::NAME, "bpf_map_delete_batch", libc::EIO)
                        .map_err(|source| BatchError { done: i, source })?;
                    if self.$f.remove(k).is_some() {
                        self.check_reader::<$m>(k, "an entry removed");
                        removed += 1;
                    }
                }
                Ok(removed)
            }
        }
    };
}

fake_table!(Flows, flows);
fake_table!(Prefixes, prefixes);
fake_table!(Macs, macs);
fake_table!(Neigh, neigh);

impl FakeMaps {
    /// Empty maps, both generations 0, no fault planned.
    pub fn new() -> Self {
        Self {
            flows: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            macs: BTreeMap::new(),
            neigh: BTreeMap::new(),
            gens: Generations::default(),
            id: next_id(),
            steps: 0,
            fault: None,
            waits: 0,
            draining: [None; 2],
            violations: Vec::new(),
            xsks: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    /// The fd number registered for `queue` in the XSKMAP, if any.
    pub fn xsk(&self, queue: u32) -> Option<RawFd> {
        self.xsks.get(&queue).copied()
    }

    /// The classifier counters [`FakeMaps::counters`] reports from now on.
    pub fn set_counters(&mut self, c: Counters) {
        self.counters = c;
    }

    /// The classifier's counters, as a test set them.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The `n`th mutating step from now (1 = the next one) fails, once.
    /// Replaces any planned fault.
    pub fn fail_at(&mut self, n: u64) {
        self.fault = Some(Fault {
            step: self.steps + n.max(1),
            sticky: false,
        });
    }

    /// The `n`th mutating step from now and every one after it fail, until
    /// [`FakeMaps::heal`]. Replaces any planned fault.
    pub fn fail_from(&mut self, n: u64) {
        self.fault = Some(Fault {
            step: self.steps + n.max(1),
            sticky: true,
        });
    }

    /// Cancels any planned fault.
    pub fn heal(&mut self) {
        self.fault = None;
    }

    /// Mutating steps attempted since creation (failed ones included).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Calls of [`RuleMaps::wait_for_readers`] since creation.
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// Entries removed or overwritten in a generation that frames may still
    /// have been using (switched away from, not yet waited for). Empty when
    /// every user waited as it must.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Everything the maps hold.
    pub fn contents(&self) -> FakeContents {
        fn all<K: Copy, V: Copy>(m: &BTreeMap<K, V>) -> Vec<(K, V)> {
            m.iter().map(|(k, v)| (*k, *v)).collect()
        }
        FakeContents {
            gens: self.gens,
            flows: all(&self.flows),
            prefixes: all(&self.prefixes),
            macs: all(&self.macs),
            neigh: all(&self.neigh),
        }
    }

    /// Replaces the maps by new, empty ones with a new identity and
    /// generations 0, as when the pins were removed and the program loaded
    /// again. The step count and any planned fault stay.
    pub fn recreate(&mut self) {
        *self = Self {
            steps: self.steps,
            fault: self.fault,
            waits: self.waits,
            violations: std::mem::take(&mut self.violations),
            ..Self::new()
        };
    }

    /// Counts one step; the error if it is planned to fail.
    fn step(&mut self, map: &'static str, call: &str, errno: i32) -> Result<(), ClassifierError> {
        self.steps += 1;
        let fails = match self.fault {
            Some(f) if f.sticky => self.steps >= f.step,
            Some(f) => self.steps == f.step,
            None => false,
        };
        if fails {
            return Err(ClassifierError::Map {
                map,
                detail: format!(
                    "{call} failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            });
        }
        Ok(())
    }

    /// Records a change of `key` of map `M` if its generation may still be
    /// in use by frames.
    fn check_reader<M: RuleMap>(&mut self, key: &M::Key, what: &str) {
        let gen = M::generation(key);
        if self.draining[group_index(M::GROUP)] == Some(gen) {
            self.violations.push(format!(
                "{}: {what} in generation {gen}, which was switched away from without waiting for readers",
                M::NAME
            ));
        }
    }
}

impl SocketMap for FakeMaps {
    type Error = ClassifierError;

    fn register(&mut self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), Self::Error> {
        self.xsks.insert(queue, fd.as_raw_fd());
        Ok(())
    }

    fn unregister(&mut self, queue: u32) -> Result<(), Self::Error> {
        self.xsks.remove(&queue);
        Ok(())
    }
}

impl RuleMaps for FakeMaps {
    fn identity(&self) -> Result<MapsId, ClassifierError> {
        Ok(self.id)
    }

    fn generations(&self) -> Result<Generations, ClassifierError> {
        Ok(self.gens)
    }

    fn set_generations(&mut self, gens: Generations) -> Result<(), ClassifierError> {
        self.step(common::MAP_CONFIG, "bpf_map_update_elem", libc::EIO)?;
        let gens = Generations {
            rules: gens.rules & 1,
            guests: gens.guests & 1,
        };
        for g in [Group::Rules, Group::Guests] {
            if gens.of(g) != self.gens.of(g) {
                self.draining[group_index(g)] = Some(self.gens.of(g));
            }
        }
        self.gens = gens;
        Ok(())
    }

    fn wait_for_readers(&mut self) {
        self.waits += 1;
        self.draining = [None; 2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, gen: u8) -> FlowKey {
        FlowKey {
            gen,
            family: common::FAMILY_V4,
            proto: 17,
            dst_port: port,
            ..FlowKey::default()
        }
    }

    fn value(id: u32) -> RuleValue {
        RuleValue {
            action: common::Action::Drop as u32,
            rule_id: id,
            ..RuleValue::default()
        }
    }

    #[test]
    fn a_batch_stops_at_the_failing_element_and_says_how_far_it_got() {
        let mut m = FakeMaps::new();
        m.fail_at(3);
        let e = m
            .insert_into::<Flows>(&[
                (key(1, 0), value(1)),
                (key(2, 0), value(2)),
                (key(3, 0), value(3)),
                (key(4, 0), value(4)),
            ])
            .expect_err("step 3 fails");
        assert_eq!(e.done, 2);
        assert_eq!(
            e.source.to_string(),
            "Map FLOWS operation failed: bpf_map_update_batch failed: Cannot allocate memory (os error 12)."
        );
        assert_eq!(m.contents().flows.len(), 2);
        assert_eq!(m.steps(), 3);
        // Once: the next step works.
        m.insert_into::<Flows>(&[(key(3, 0), value(3))]).unwrap();
        // Removing an absent key is a step and is skipped.
        m.fail_from(2);
        let e = m
            .remove_from::<Flows>(&[key(9, 0), key(1, 0)])
            .expect_err("step 2 fails");
        assert_eq!(e.done, 1);
        assert!(e.source.to_string().contains("bpf_map_delete_batch"), "{e}");
        let e = m.set_generations(Generations {
            rules: 1,
            guests: 0,
        });
        assert!(e.is_err(), "sticky");
        assert_eq!(m.generations().unwrap(), Generations::default());
        m.heal();
        assert_eq!(m.remove_from::<Flows>(&[key(9, 0), key(1, 0)]).unwrap(), 1);
        assert_eq!(
            m.insert_into::<Flows>(&[]).map(|()| m.steps()).unwrap(),
            9,
            "an empty batch is no step"
        );
    }

    #[test]
    fn removing_a_generation_before_waiting_is_recorded() {
        let mut m = FakeMaps::new();
        m.insert_into::<Flows>(&[(key(1, 0), value(1)), (key(1, 1), value(1))])
            .unwrap();
        m.set_generations(Generations {
            rules: 1,
            guests: 0,
        })
        .unwrap();
        m.remove_from::<Flows>(&[key(1, 1)]).unwrap();
        assert!(
            m.violations().is_empty(),
            "the active generation may change"
        );
        m.remove_from::<Flows>(&[key(1, 0)]).unwrap();
        assert_eq!(m.violations().len(), 1, "{:?}", m.violations());
        m.insert_into::<Flows>(&[(key(1, 0), value(1))]).unwrap();
        m.wait_for_readers();
        m.remove_from::<Flows>(&[key(1, 0)]).unwrap();
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.waits(), 1);
    }

    #[test]
    fn recreated_maps_are_empty_and_have_a_new_identity() {
        let mut m = FakeMaps::new();
        let id = m.identity().unwrap();
        m.insert_into::<Macs>(&[(MacKey::new(0, [2, 0, 0, 0, 0, 1]), value(0))])
            .unwrap();
        m.set_generations(Generations {
            rules: 1,
            guests: 1,
        })
        .unwrap();
        m.recreate();
        assert_ne!(m.identity().unwrap(), id);
        assert_eq!(m.contents(), FakeContents::default());
        assert_eq!(m.steps(), 2);
    }
}
