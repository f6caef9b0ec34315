//! The control plane's boundary to the classifier's rule maps: the
//! [`RuleMaps`] trait, and [`FakeMaps`], an in-memory implementation that
//! fails on request.
//!
//! # What the trait covers
//!
//! The four maps the flow table projects into, each a [`RuleMap`]:
//! [`Flows`] (`FLOWS`, exact rules), [`Prefixes`] (`PREFIXES`, prefix
//! rules), [`Macs`] (`MACS`, guest MAC table) and [`Neigh`] (`NEIGH`, guest
//! addresses for ARP/ND). For each: batch insert and remove that report how
//! far a failed batch got ([`BatchError`]), and a read of every entry of
//! every generation ([`MapTable`]). For all of them: the active
//! [`Generations`] (read, and switched with one update of the `CONFIG`
//! entry), a wait until no program run can still use a generation switched
//! away from, and an identity ([`MapsId`]) that changes when the maps are
//! recreated (new pins).
//!
//! # Who implements it
//!
//! - [`Classifier`](crate::Classifier): the real maps of the loaded XDP
//!   program (bpf(2) system calls, membarrier).
//! - [`FakeMaps`]: plain memory, for tests without root. It can be told to
//!   fail at the Nth mutating step (see [`fake`]), so every rollback path of
//!   the flow table can be driven.
//!
//! # Ownership
//!
//! An implementation holds no policy: it writes what it is told. The flow
//! table ([`crate::flow_table`]) decides what the maps hold, and whoever owns
//! both (the daemon: one mutex) serialises the writers. The XDP program only
//! reads these maps.

pub mod fake;

use crate::classifier::ClassifierError;
use std::fmt::Debug;
use std::hash::Hash;
use xdpath_common::{self as common, AddrKey, FlowKey, MacKey, PrefixData, RuleValue};

pub use fake::{FakeContents, FakeMaps};

/// A batch map write that stopped part-way: the first `done` entries were
/// applied, the rest were not.
#[derive(Debug, thiserror::Error)]
#[error("{source} (after {done} entries of the batch)")]
pub struct BatchError {
    /// Entries applied before the failure.
    pub done: usize,
    /// The failure.
    #[source]
    pub source: ClassifierError,
}

/// Which generation field of `CONFIG` selects a map's entries (see
/// `xdpath_common`, Generations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// `FLOWS` and `PREFIXES`: `Config::active_gen`.
    Rules,
    /// `MACS` and `NEIGH`: `Config::guest_gen`.
    Guests,
}

/// The generations the program looks up, as held by the `CONFIG` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Generations {
    /// Of the rules (`FLOWS`, `PREFIXES`): 0 or 1.
    pub rules: u8,
    /// Of the guest tables (`MACS`, `NEIGH`): 0 or 1.
    pub guests: u8,
}

impl Generations {
    /// The generation of `group`.
    pub fn of(self, group: Group) -> u8 {
        match group {
            Group::Rules => self.rules,
            Group::Guests => self.guests,
        }
    }

    /// These generations with `group`'s flipped.
    pub fn flipped(self, group: Group) -> Self {
        match group {
            Group::Rules => Self {
                rules: self.rules ^ 1,
                ..self
            },
            Group::Guests => Self {
                guests: self.guests ^ 1,
                ..self
            },
        }
    }
}

/// The identity of a set of maps. Reopened pins keep their kernel ids, so
/// equal identities mean the same maps (and the same contents); maps that
/// were recreated get new ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapsId(pub [u32; 5]);

/// One of the classifier's rule maps, as a type: [`Flows`], [`Prefixes`],
/// [`Macs`] or [`Neigh`]. Its key carries the generation.
pub trait RuleMap: 'static {
    /// The key, generation included. For `PREFIXES` it is the prefix
    /// length in address bits and the LPM data.
    type Key: Copy + Eq + Ord + Hash + Debug + Send + Sync + 'static;
    /// The map's name in the object and under the pin directory.
    const NAME: &'static str;
    /// The generation field that selects its entries.
    const GROUP: Group;
    /// The generation byte of `key`.
    fn generation(key: &Self::Key) -> u8;
}

/// `FLOWS`: exact 5-tuple rules.
#[derive(Debug)]
pub enum Flows {}
/// `PREFIXES`: destination prefix rules (LPM trie).
#[derive(Debug)]
pub enum Prefixes {}
/// `MACS`: the guest MAC table.
#[derive(Debug)]
pub enum Macs {}
/// `NEIGH`: guest addresses, for ARP/ND steering.
#[derive(Debug)]
pub enum Neigh {}

impl RuleMap for Flows {
    type Key = FlowKey;
    const NAME: &'static str = common::MAP_FLOWS;
    const GROUP: Group = Group::Rules;
    fn generation(key: &FlowKey) -> u8 {
        key.gen
    }
}

impl RuleMap for Prefixes {
    type Key = (u32, PrefixData);
    const NAME: &'static str = common::MAP_PREFIXES;
    const GROUP: Group = Group::Rules;
    fn generation(key: &(u32, PrefixData)) -> u8 {
        key.1.gen
    }
}

impl RuleMap for Macs {
    type Key = MacKey;
    const NAME: &'static str = common::MAP_MACS;
    const GROUP: Group = Group::Guests;
    fn generation(key: &MacKey) -> u8 {
        key.gen
    }
}

impl RuleMap for Neigh {
    type Key = AddrKey;
    const NAME: &'static str = common::MAP_NEIGH;
    const GROUP: Group = Group::Guests;
    fn generation(key: &AddrKey) -> u8 {
        key.gen
    }
}

/// The operations on one rule map `M`.
pub trait MapTable<M: RuleMap> {
    /// Every entry, of all generations, in map order.
    fn entries(&self) -> Result<Vec<(M::Key, RuleValue)>, ClassifierError>;

    /// Inserts or replaces `entries` in order. On failure the first
    /// [`BatchError::done`] entries were written and the rest were not.
    fn insert(&mut self, entries: &[(M::Key, RuleValue)]) -> Result<(), BatchError>;

    /// Removes `keys` in order; keys that are not in the map are skipped.
    /// Returns how many were removed. On failure the first
    /// [`BatchError::done`] keys were processed and the rest were not.
    fn remove(&mut self, keys: &[M::Key]) -> Result<usize, BatchError>;
}

/// The classifier's rule maps, as the flow table uses them. See the module
/// docs.
pub trait RuleMaps:
    MapTable<Flows> + MapTable<Prefixes> + MapTable<Macs> + MapTable<Neigh>
{
    /// The identity of these maps (see [`MapsId`]).
    fn identity(&self) -> Result<MapsId, ClassifierError>;

    /// The generations the program looks up now.
    fn generations(&self) -> Result<Generations, ClassifierError>;

    /// Makes `gens` the generations the program looks up: one update of the
    /// `CONFIG` entry, the rest of the configuration kept as it is. Frames
    /// classified after the update see the new generations; a run already
    /// going may still use the old ones until [`RuleMaps::wait_for_readers`]
    /// returns.
    fn set_generations(&mut self, gens: Generations) -> Result<(), ClassifierError>;

    /// Returns once every program run that started before the call has
    /// finished, so nothing still looks up a generation that was switched
    /// away from before the call.
    fn wait_for_readers(&mut self);

    /// [`MapTable::entries`] of map `M`.
    fn entries_of<M: RuleMap>(&self) -> Result<Vec<(M::Key, RuleValue)>, ClassifierError>
    where
        Self: MapTable<M>,
    {
        MapTable::<M>::entries(self)
    }

    /// [`MapTable::insert`] into map `M`.
    fn insert_into<M: RuleMap>(&mut self, entries: &[(M::Key, RuleValue)]) -> Result<(), BatchError>
    where
        Self: MapTable<M>,
    {
        MapTable::<M>::insert(self, entries)
    }

    /// [`MapTable::remove`] from map `M`.
    fn remove_from<M: RuleMap>(&mut self, keys: &[M::Key]) -> Result<usize, BatchError>
    where
        Self: MapTable<M>,
    {
        MapTable::<M>::remove(self, keys)
    }
}
