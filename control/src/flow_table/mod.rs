//! The flow table: exact 5-tuple rules and destination prefix rules, held by
//! the control plane, persisted in state files, and projected, together with
//! the guest entries its owner hands it, into the classifier's `FLOWS`,
//! `PREFIXES`, `MACS` and `NEIGH` maps.
//!
//! # Layers
//!
//! Each in its own file of `control/src/flow_table/`:
//!
//! - `rule_set.rs`: the rules in memory, by id and by match; validation of
//!   single rules and of whole lists against the id space, the match space
//!   and the capacity.
//! - `store.rs`: the durable copy, a snapshot and a journal under a lock
//!   (its docs describe the files and how they are replaced), with a
//!   fault-injection seam ([`StoreFaults`]).
//! - `projection.rs`: what the maps must hold, the atomic switch of a group
//!   of maps to the other generation with its rollback, and `sync`; it
//!   reaches the maps only through [`RuleMaps`].
//! - `guests.rs`: the guest MAC and address entries ([`GuestEntries`]).
//! - `mod.rs`: [`FlowTable`], which sequences the layers and owns the
//!   states below.
//!
//! # Ownership
//!
//! - The [`FlowTable`] in memory is the source of truth. Its state files are
//!   its durable copy; the BPF maps are its projection. Neither is ever read
//!   back to decide what the table holds, except once: [`FlowTable::sync`]
//!   of a table that found no state file on disk adopts the rules it finds
//!   in the pinned maps (a daemon that lost its state file but not its
//!   maps), so they are not silently dropped.
//! - The guest entries are handed to the table by its owner (the daemon,
//!   from its configuration) and are not persisted by it.
//! - The table is the only writer of `FLOWS`, `PREFIXES`, `MACS`, `NEIGH`
//!   and of the two generation fields of `Config`. The rest of `Config`
//!   belongs to whoever configured the classifier; a switch rewrites it
//!   unchanged. The table holds no maps: every call that touches maps takes
//!   them as `&mut impl RuleMaps`, so writers are serialised by whoever owns
//!   both (the daemon: one mutex). The table is `Send` and not internally
//!   synchronised.
//! - The XDP program reads `Config` once per frame and looks up only entries
//!   of the active generations: `active_gen` for the rules, `guest_gen` for
//!   the guest tables (see `xdpath_common`, Generations, for why they are
//!   separate).
//! - One table per state file: [`FlowTable::load`] takes an exclusive lock
//!   (`<state>.lock`) that lasts as long as the table.
//!
//! # States of one rule
//!
//! A single add or delete changes one entry in the active generation (one
//! map update: atomic per entry). `RuleState` is where it stands:
//!
//! ```text
//!  (absent) --validate--> VALID --map write--> WRITTEN --journal fsync--> ACTIVE
//!     ^                     |                     |
//!     +-- error: nothing ---+-- error: map write -+
//!         changed               undone (if that fails: UNPROJECTED)
//! ```
//!
//! - VALID: checked against the rule syntax ([`crate::rules`]), the id space
//!   (unique, 1 or more), the match space (no other rule of the same kind
//!   matches exactly the same frames) and the capacity. Nothing has been
//!   written.
//! - WRITTEN: the map holds the change (the entry written, or for a delete
//!   removed) but the journal does not. If the journal cannot be written,
//!   the map write is undone and the call fails.
//! - ACTIVE: durable; the table in memory has the change. Only ACTIVE rules
//!   are listed by [`FlowTable::flows`] / [`FlowTable::prefixes`] and the API.
//!
//! # States of the table
//!
//! [`Projection`] is where the table's projection stands between calls; a
//! switch passes through STAGED and SWITCHED within one call (`SwitchState`
//! in `projection.rs`):
//!
//! ```text
//!  UNADOPTED --sync: adopt--+
//!                           v
//!  UNPROJECTED --------- sync -------> PROJECTED(g) --stage--> STAGED --flip, wait--> SWITCHED --commit--> PROJECTED(g')
//!       ^                               ^    |                   |                       |
//!       |                               |    +- single add/delete in g                   |
//!       |                               +-------- error: undone (flipped back, unstaged) +
//!       +----------- a rollback step failed; or deleting the old generation failed -------
//! ```
//!
//! - UNADOPTED: after [`FlowTable::load`] found no state file: the first
//!   sync that succeeds adopts the rules of the maps' active generation and
//!   writes them to the state file.
//! - UNPROJECTED: after [`FlowTable::load`], or after a failure that could
//!   not be rolled back. The maps are not trusted: the next call that
//!   touches them runs [`FlowTable::sync`] first, which repairs them to
//!   exactly the table. So does any call on maps of another identity (pins
//!   recreated).
//! - PROJECTED(g): the active generations `g` (one for the rules, one for
//!   the guest tables) hold exactly the table and the other generations
//!   nothing.
//! - STAGED: a bulk replace, a guest change or a sync is writing the
//!   complete new contents of the group it changes (rules: `FLOWS` and
//!   `PREFIXES`; guests: `MACS` and `NEIGH`) into that group's other
//!   generation; the program does not see them.
//! - SWITCHED: the generation of the group (of both, for a sync that needs
//!   both) was flipped in `Config` with one map update, and
//!   [`RuleMaps::wait_for_readers`] returned, so no frame is still
//!   classified against the old generation. Then the commit: a bulk replace
//!   writes its snapshot; if that fails, the flip is undone and the call
//!   fails.
//! - Then the old generation of the group is deleted and the table is
//!   PROJECTED(g'). If that deletion fails the call still succeeds (the
//!   change is in effect and durable) and the table is UNPROJECTED, so the
//!   next call clears the leftovers.
//!
//! A frame therefore sees either the whole old table or the whole new one,
//! never a mix, and a failed call leaves the table, the state files and
//! (after rollback) the maps as they were, or, where a rollback step itself
//! failed, the table UNPROJECTED so that the next call repairs the maps.

mod guests;
mod projection;
mod rule_set;
mod store;

pub use guests::GuestEntries;
pub use projection::Projection;
pub use rule_set::{BulkRules, NewRules, TableRule};
pub use store::{StoreFaults, StoreStep};

use crate::classifier::ClassifierError;
use crate::maps::{Flows, Generations, Group, MapTable, Prefixes, RuleMap, RuleMaps};
use crate::rules::{
    FlowRule, FlowRuleSpec, GuestNames, PrefixRule, PrefixRuleSpec, RuleError, RuleKind,
};
use projection::{Entries, MapsAfter, Want};
use rule_set::{RuleSet, Rules};
use std::path::{Path, PathBuf};
use store::{state_err, JournalOp, Store};
use xdpath_common::RuleValue;

/// Compaction happens once the journal has at least this many entries and
/// at least as many as the table has rules.
const COMPACT_MIN: usize = 1024;

/// Errors of the flow table. [`FlowTableError::http_status`] gives the
/// status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum FlowTableError {
    /// A rule is not valid (400).
    #[error(transparent)]
    Invalid(#[from] RuleError),
    /// The id is taken, or given twice in one list (409).
    #[error("{} rule id {id} is already taken.", title(*kind))]
    DuplicateId {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id.
        id: u32,
    },
    /// Another rule of the same kind matches exactly the same frames (409).
    #[error(
        "{} rule {id} matches {} as {kind} rule {existing}; change or delete that one instead.",
        title(*kind),
        match kind { RuleKind::Flow => "the same 5-tuple", RuleKind::Prefix => "the same prefix" }
    )]
    Conflict {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id of the refused rule.
        id: u32,
        /// The id of the rule it collides with.
        existing: u32,
    },
    /// No rule has this id (404).
    #[error("There is no {kind} rule with id {id}.")]
    UnknownId {
        /// Flow or prefix.
        kind: RuleKind,
        /// The id.
        id: u32,
    },
    /// The change would exceed the table's capacity (507).
    #[error("The table holds at most {limit} {kind} rules; this change would make {requested}.")]
    Capacity {
        /// Flow or prefix.
        kind: RuleKind,
        /// The limit (`MAX_FLOWS` or `MAX_PREFIXES`).
        limit: u32,
        /// The size the change asked for.
        requested: usize,
    },
    /// A map operation failed; the change was rolled back (500).
    #[error("Writing the classifier maps failed; the table is unchanged: {0}")]
    Map(#[from] ClassifierError),
    /// The state files could not be read, written or locked (500).
    #[error("State file {}: {detail}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a sentence.
        detail: String,
    },
}

fn title(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Flow => "Flow",
        RuleKind::Prefix => "Prefix",
    }
}

impl FlowTableError {
    /// The JSON field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(e.field()),
            Self::DuplicateId { .. } | Self::UnknownId { .. } => Some("id"),
            _ => None,
        }
    }

    /// The HTTP status of the API's answer: 400 invalid, 404 unknown id,
    /// 409 duplicate id or conflicting rule, 507 capacity, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::UnknownId { .. } => 404,
            Self::DuplicateId { .. } | Self::Conflict { .. } => 409,
            Self::Capacity { .. } => 507,
            Self::Map(_) | Self::State { .. } => 500,
        }
    }
}

type Result<T> = std::result::Result<T, FlowTableError>;

/// Where a single-rule change stands (see the module docs, "States of one
/// rule"): what a failure must undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleState {
    /// Checked; nothing written.
    Valid,
    /// The map holds the change; the journal does not.
    Written,
    /// Durable.
    Active,
}

/// A single-rule change of one entry of map `M` in the active generation.
#[derive(Clone, Copy, Debug)]
enum Change<K> {
    /// Write `value` at `key`.
    Add { key: K, value: RuleValue },
    /// Remove `key`, which holds `value` (put back on rollback).
    Delete { key: K, value: RuleValue },
}

impl<K: Copy + std::fmt::Debug> Change<K> {
    /// VALID -> WRITTEN.
    fn write<M: RuleMap<Key = K>>(
        &self,
        maps: &mut impl MapTable<M>,
    ) -> std::result::Result<(), ClassifierError> {
        match *self {
            Change::Add { key, value } => maps.insert(&[(key, value)]).map_err(|e| e.source),
            Change::Delete { key, .. } => {
                if maps.remove(&[key]).map_err(|e| e.source)? == 0 {
                    tracing::warn!(
                        map = M::NAME,
                        ?key,
                        "flow table: the entry was missing from the map"
                    );
                }
                Ok(())
            }
        }
    }

    /// Undoes [`Change::write`].
    fn undo<M: RuleMap<Key = K>>(
        &self,
        maps: &mut impl MapTable<M>,
    ) -> std::result::Result<(), ClassifierError> {
        match *self {
            Change::Add { key, .. } => maps.remove(&[key]).map(|_| ()),
            Change::Delete { key, value } => maps.insert(&[(key, value)]),
        }
        .map_err(|e| e.source)
    }
}

/// Deletes what generation `from` of `groups` held for `old`, after a
/// switch away from it. Returns whether that worked.
fn retire(maps: &mut impl RuleMaps, from: Generations, groups: &[Group], old: Want<'_>) -> bool {
    match Entries::of_table(old, from, groups).remove_from(maps, None) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                ?groups,
                "flow table: deleting the old generation: {e}; the maps will be projected again on the next change"
            );
            false
        }
    }
}

/// The valid rules of generation `gen` of the maps' contents `now`, for a
/// table that found no state file.
fn adoptable(gen: u8, now: &Entries) -> Rules {
    let mut rules = Rules::default();
    for (k, v) in now.flows().iter().filter(|(k, _)| k.gen == gen) {
        if let Err(e) = FlowRule::from_bpf(k, v)
            .map_err(FlowTableError::from)
            .and_then(|r| rules.flows.insert(r))
        {
            tracing::warn!("not adopting a FLOWS entry of the pinned maps: {e}");
        }
    }
    for ((l, d), v) in now.prefixes().iter().filter(|((_, d), _)| d.gen == gen) {
        if let Err(e) = PrefixRule::from_bpf(*l, d, v)
            .map_err(FlowTableError::from)
            .and_then(|r| rules.prefixes.insert(r))
        {
            tracing::warn!("not adopting a PREFIXES entry of the pinned maps: {e}");
        }
    }
    rules
}

/// The flow table. See the module docs for the ownership rules, the states
/// and the layers.
#[derive(Debug)]
pub struct FlowTable {
    store: Store,
    rules: Rules,
    guests: GuestEntries,
    projection: Projection,
}

impl FlowTable {
    /// Loads the table from `state_path` (and its journal), creating the
    /// directory if needed. A missing state file is an empty table; a file
    /// that cannot be read, parsed or validated is an error naming it (and
    /// left as it is). The table has no guest entries and is UNPROJECTED
    /// (UNADOPTED without a state file) until [`FlowTable::sync`].
    pub fn load(state_path: &Path) -> Result<Self> {
        let (store, loaded) = Store::open(state_path)?;
        let t = FlowTable {
            store,
            rules: loaded.rules,
            guests: GuestEntries::new(),
            projection: if loaded.found {
                Projection::Unprojected
            } else {
                Projection::Unadopted
            },
        };
        tracing::info!(
            path = %state_path.display(),
            flows = t.rules.flows.len(),
            prefixes = t.rules.prefixes.len(),
            epoch = t.store.epoch(),
            journal_ops = t.store.journal_ops(),
            "flow table loaded"
        );
        Ok(t)
    }

    /// For tests: every disk operation of the store from now on is a step
    /// of `faults` (see [`StoreFaults`]); `None` removes the plan.
    pub fn set_store_faults(&mut self, faults: Option<StoreFaults>) {
        self.store.set_faults(faults);
    }

    /// The state file this table was loaded from.
    pub fn state_path(&self) -> &Path {
        self.store.path()
    }

    /// Where the table's projection stands.
    pub fn projection(&self) -> Projection {
        self.projection
    }

    /// The active rule generation of the projection (0 when not projected).
    pub fn generation(&self) -> u8 {
        match self.projection {
            Projection::Projected { gens, .. } => gens.rules,
            Projection::Unadopted | Projection::Unprojected => 0,
        }
    }

    /// Exact rules, sorted by id.
    pub fn flows(&self) -> Vec<FlowRule> {
        self.rules.flows.rules().copied().collect()
    }

    /// Prefix rules, sorted by id.
    pub fn prefixes(&self) -> Vec<PrefixRule> {
        self.rules.prefixes.rules().copied().collect()
    }

    /// One exact rule.
    pub fn flow(&self, id: u32) -> Option<FlowRule> {
        self.rules.flows.get(id).copied()
    }

    /// One prefix rule.
    pub fn prefix(&self, id: u32) -> Option<PrefixRule> {
        self.rules.prefixes.get(id).copied()
    }

    /// Number of exact rules.
    pub fn flow_count(&self) -> usize {
        self.rules.flows.len()
    }

    /// Number of prefix rules.
    pub fn prefix_count(&self) -> usize {
        self.rules.prefixes.len()
    }

    /// The guest entries the table projects.
    pub fn guests(&self) -> &GuestEntries {
        &self.guests
    }

    fn want(&self) -> Want<'_> {
        Want {
            flows: &self.rules.flows,
            prefixes: &self.rules.prefixes,
            guests: &self.guests,
        }
    }

    /// Projects the whole table, guest entries included, into `maps`:
    /// afterwards the active generations hold exactly the table and the
    /// other generations nothing. If the maps already hold exactly that,
    /// nothing is written; otherwise every group whose active generation
    /// differs is written into its other generation and switched to
    /// atomically, and everything else is deleted.
    ///
    /// A table that found no state file at load (UNADOPTED) adopts the
    /// valid rules of the maps' active generation: it projects them, then
    /// writes them to the state file. If either fails, nothing is adopted
    /// and the next sync tries again. Guest entries are never adopted.
    pub fn sync(&mut self, maps: &mut impl RuleMaps) -> Result<()> {
        let id = maps.identity()?;
        let gens = maps.generations()?;
        let now = Entries::read(maps)?;
        let adopted = match self.projection {
            Projection::Unadopted => Some(adoptable(gens.rules, &now)),
            Projection::Unprojected | Projection::Projected { .. } => None,
        };
        // From here on the maps are not trusted until the sync is done.
        let unprojected = match adopted {
            Some(_) => Projection::Unadopted,
            None => Projection::Unprojected,
        };
        self.projection = unprojected;
        let want = match &adopted {
            Some(rules) => Want {
                flows: &rules.flows,
                prefixes: &rules.prefixes,
                guests: &self.guests,
            },
            None => self.want(),
        };
        let gens = projection::sync(maps, gens, &now, want)?;
        if let Some(rules) = adopted.filter(|r| r.len() > 0) {
            let epoch = self.store.epoch() + 1;
            self.store
                .write_snapshot(epoch, &rules.flows, &rules.prefixes)?;
            self.store.start_epoch(epoch);
            tracing::info!(
                flows = rules.flows.len(),
                prefixes = rules.prefixes.len(),
                "flow table: no state file; adopted the rules of the pinned maps"
            );
            self.rules = rules;
        }
        self.projection = Projection::Projected { maps: id, gens };
        tracing::info!(
            ?gens,
            flows = self.rules.flows.len(),
            prefixes = self.rules.prefixes.len(),
            "flow table projected into the maps"
        );
        Ok(())
    }

    /// The active generations of `maps`, syncing first if this table is not
    /// projected into them.
    fn projected(&mut self, maps: &mut impl RuleMaps) -> Result<Generations> {
        if let Projection::Projected { maps: id, gens } = self.projection {
            if maps.identity()? == id {
                return Ok(gens);
            }
        }
        self.sync(maps)?;
        match self.projection {
            Projection::Projected { gens, .. } => Ok(gens),
            Projection::Unadopted | Projection::Unprojected => Err(state_err(
                self.store.path(),
                "is not projected after a sync (internal error).",
            )),
        }
    }

    /// Replaces the guest entries: afterwards the guest tables hold exactly
    /// `guests`, switched to in one step (frames see the old entries or the
    /// new ones), the rules untouched. On error the table keeps its old
    /// entries.
    ///
    /// On a table that is not projected yet (start-up) this is a
    /// [`FlowTable::sync`] with the new entries, which also removes
    /// whatever else `MACS` and `NEIGH` hold (entries of an earlier
    /// configuration, say).
    pub fn set_guests(&mut self, maps: &mut impl RuleMaps, guests: GuestEntries) -> Result<()> {
        if let Projection::Projected { maps: id, gens } = self.projection {
            if maps.identity()? == id {
                if guests == self.guests {
                    return Ok(());
                }
                let want = Want {
                    guests: &guests,
                    ..self.want()
                };
                let to = match projection::switch(maps, gens, &[Group::Guests], want, || Ok(())) {
                    Ok(to) => to,
                    Err(e) => {
                        if e.maps == MapsAfter::Unknown {
                            self.projection = Projection::Unprojected;
                        }
                        return Err(e.error);
                    }
                };
                let old = std::mem::replace(&mut self.guests, guests);
                self.projection = Projection::Projected { maps: id, gens: to };
                let old = Want {
                    guests: &old,
                    ..self.want()
                };
                if !retire(maps, gens, &[Group::Guests], old) {
                    self.projection = Projection::Unprojected;
                }
                return Ok(());
            }
        }
        let old = std::mem::replace(&mut self.guests, guests);
        if let Err(e) = self.sync(maps) {
            self.guests = old;
            return Err(e);
        }
        Ok(())
    }

    /// How many rules (exact and prefix) send to guest `port`.
    pub fn rules_for_guest(&self, port: u32) -> usize {
        self.rules.flows.count_for_guest(port) + self.rules.prefixes.count_for_guest(port)
    }

    /// Removes a guest from the maps: the rules that send to guest `port`
    /// go, and the guest entries become `guests` (the remaining guests'),
    /// both in one atomic switch (one `CONFIG` update flips the rule and
    /// the guest generation: a frame sees the guest with its rules or
    /// neither), with the snapshot of the remaining rules as the commit.
    /// Returns how many rules went. On error the table, its state file and
    /// the maps are as they were.
    pub fn remove_guest(
        &mut self,
        maps: &mut impl RuleMaps,
        port: u32,
        guests: GuestEntries,
    ) -> Result<usize> {
        self.projected(maps)?;
        let removed = self.rules_for_guest(port);
        let flows = self.rules.flows.without_guest(port);
        let prefixes = self.rules.prefixes.without_guest(port);
        self.replace_with(maps, Some(flows), Some(prefixes), Some(guests))?;
        Ok(removed)
    }

    /// A bulk replace of the rules (`None` keeps that kind as it is):
    /// switched to with the snapshot as the commit, then the old generation
    /// deleted. Returns the rule generation switched to.
    fn replace(
        &mut self,
        maps: &mut impl RuleMaps,
        flows: Option<RuleSet<FlowRule>>,
        prefixes: Option<RuleSet<PrefixRule>>,
    ) -> Result<u8> {
        self.replace_with(maps, flows, prefixes, None)
    }

    /// [`FlowTable::replace`], and with `guests` the guest entries in the
    /// same switch (one `CONFIG` update flips both generations).
    fn replace_with(
        &mut self,
        maps: &mut impl RuleMaps,
        flows: Option<RuleSet<FlowRule>>,
        prefixes: Option<RuleSet<PrefixRule>>,
        guests: Option<GuestEntries>,
    ) -> Result<u8> {
        let Projection::Projected { maps: id, gens } = self.projection else {
            return Err(state_err(
                self.store.path(),
                "is not projected (internal error).",
            ));
        };
        let epoch = self.store.epoch() + 1;
        let want = Want {
            flows: flows.as_ref().unwrap_or(&self.rules.flows),
            prefixes: prefixes.as_ref().unwrap_or(&self.rules.prefixes),
            guests: guests.as_ref().unwrap_or(&self.guests),
        };
        let groups: &[Group] = if guests.is_some() {
            &[Group::Rules, Group::Guests]
        } else {
            &[Group::Rules]
        };
        let store = &self.store;
        let res = projection::switch(maps, gens, groups, want, || {
            store.write_snapshot(epoch, want.flows, want.prefixes)
        });
        let to = match res {
            Ok(to) => to,
            Err(e) => {
                if e.maps == MapsAfter::Unknown {
                    self.projection = Projection::Unprojected;
                }
                return Err(e.error);
            }
        };
        self.store.start_epoch(epoch);
        let old_flows = flows.map(|f| std::mem::replace(&mut self.rules.flows, f));
        let old_prefixes = prefixes.map(|p| std::mem::replace(&mut self.rules.prefixes, p));
        let old_guests = guests.map(|g| std::mem::replace(&mut self.guests, g));
        self.projection = Projection::Projected { maps: id, gens: to };
        let old = Want {
            flows: old_flows.as_ref().unwrap_or(&self.rules.flows),
            prefixes: old_prefixes.as_ref().unwrap_or(&self.rules.prefixes),
            guests: old_guests.as_ref().unwrap_or(&self.guests),
        };
        if !retire(maps, gens, groups, old) {
            self.projection = Projection::Unprojected;
        }
        Ok(to.rules)
    }

    /// Runs a single-rule change through VALID -> WRITTEN -> ACTIVE (the
    /// caller validated it and commits it to memory on success).
    fn single<M: RuleMap, R: RuleMaps + MapTable<M>>(
        &mut self,
        maps: &mut R,
        change: Change<M::Key>,
        op: JournalOp,
    ) -> Result<()> {
        let mut state = RuleState::Valid;
        let mut run = || -> Result<()> {
            change.write::<M>(maps)?;
            state = RuleState::Written;
            self.persist_op(&op)?;
            state = RuleState::Active;
            Ok(())
        };
        let Err(e) = run() else {
            return Ok(());
        };
        match state {
            RuleState::Valid => {}
            RuleState::Written => {
                if let Err(e2) = change.undo::<M>(maps) {
                    tracing::error!(
                        map = M::NAME,
                        "flow table: rolling back a single change: {e2}; the maps will be projected again on the next change"
                    );
                    self.projection = Projection::Unprojected;
                }
            }
            // Durable: nothing fails after it, and it is never undone.
            RuleState::Active => {}
        }
        Err(e)
    }

    fn persist_op(&mut self, op: &JournalOp) -> Result<()> {
        if self.store.journal_broken() {
            self.compact()?;
        }
        self.store.append(op)
    }

    fn compact(&mut self) -> Result<()> {
        let epoch = self.store.epoch() + 1;
        self.store
            .write_snapshot(epoch, &self.rules.flows, &self.rules.prefixes)?;
        self.store.start_epoch(epoch);
        Ok(())
    }

    fn maybe_compact(&mut self) {
        let n = self.store.journal_ops();
        if n >= COMPACT_MIN && n >= self.rules.len() {
            if let Err(e) = self.compact() {
                tracing::warn!("flow table: compacting the journal: {e}; will retry");
            }
        }
    }

    /// Adds one exact rule (id assigned if the spec has none) in the active
    /// generation, its guest resolved by `guests` (a guest it names must
    /// exist). Returns the rule as stored.
    pub fn add_flow(
        &mut self,
        maps: &mut impl RuleMaps,
        spec: FlowRuleSpec,
        guests: &dyn GuestNames,
    ) -> Result<FlowRule> {
        let gens = self.projected(maps)?;
        let rule = spec.validate(self.rules.flows.next_id(), guests)?;
        self.rules.flows.check_add(&rule)?;
        let change = Change::Add {
            key: rule.bpf_key(gens.rules),
            value: rule.bpf_value(),
        };
        self.single::<Flows, _>(maps, change, JournalOp::AddFlow { rule })?;
        self.rules.flows.insert(rule)?;
        self.maybe_compact();
        Ok(rule)
    }

    /// Deletes exact rule `id`.
    pub fn delete_flow(&mut self, maps: &mut impl RuleMaps, id: u32) -> Result<()> {
        let gens = self.projected(maps)?;
        let Some(rule) = self.flow(id) else {
            return Err(FlowTableError::UnknownId {
                kind: RuleKind::Flow,
                id,
            });
        };
        let change = Change::Delete {
            key: rule.bpf_key(gens.rules),
            value: rule.bpf_value(),
        };
        self.single::<Flows, _>(maps, change, JournalOp::DeleteFlow { id })?;
        self.rules.flows.remove(id);
        self.maybe_compact();
        Ok(())
    }

    /// Replaces all exact rules at once: the prefix rules stay, the program
    /// sees the old table or the new one, never a mix. Ids given must be
    /// unique; missing ones are assigned after the highest given one.
    /// Guests are resolved by `guests`.
    pub fn replace_flows(
        &mut self,
        maps: &mut impl RuleMaps,
        rules: Vec<FlowRuleSpec>,
        guests: &dyn GuestNames,
    ) -> Result<Vec<FlowRule>> {
        RuleSet::<FlowRule>::check_capacity(rules.len())?;
        self.projected(maps)?;
        let set = RuleSet::plan(&rules, |s| s.id, |s, id| s.validate(id, guests))?;
        self.replace(maps, Some(set), None)?;
        Ok(self.flows())
    }

    /// Replaces all exact rules at once with a set validated as it arrived
    /// ([`BulkRules`]): the same switch as [`FlowTable::replace_flows`].
    /// Returns the rule generation the classifier now reads.
    pub fn replace_flow_rules(
        &mut self,
        maps: &mut impl RuleMaps,
        rules: NewRules<FlowRule>,
    ) -> Result<u8> {
        self.projected(maps)?;
        self.replace(maps, Some(rules.0), None)
    }

    /// Adds one prefix rule (id assigned if the spec has none) in the active
    /// generation, its guest resolved by `guests`. Returns the rule as
    /// stored.
    pub fn add_prefix(
        &mut self,
        maps: &mut impl RuleMaps,
        spec: PrefixRuleSpec,
        guests: &dyn GuestNames,
    ) -> Result<PrefixRule> {
        let gens = self.projected(maps)?;
        let rule = spec.validate(self.rules.prefixes.next_id(), guests)?;
        self.rules.prefixes.check_add(&rule)?;
        let change = Change::Add {
            key: rule.bpf_key(gens.rules),
            value: rule.bpf_value(),
        };
        self.single::<Prefixes, _>(maps, change, JournalOp::AddPrefix { rule })?;
        self.rules.prefixes.insert(rule)?;
        self.maybe_compact();
        Ok(rule)
    }

    /// Deletes prefix rule `id`.
    pub fn delete_prefix(&mut self, maps: &mut impl RuleMaps, id: u32) -> Result<()> {
        let gens = self.projected(maps)?;
        let Some(rule) = self.prefix(id) else {
            return Err(FlowTableError::UnknownId {
                kind: RuleKind::Prefix,
                id,
            });
        };
        let change = Change::Delete {
            key: rule.bpf_key(gens.rules),
            value: rule.bpf_value(),
        };
        self.single::<Prefixes, _>(maps, change, JournalOp::DeletePrefix { id })?;
        self.rules.prefixes.remove(id);
        self.maybe_compact();
        Ok(())
    }

    /// Replaces all prefix rules at once with a set validated as it arrived
    /// ([`BulkRules`]): the same switch as [`FlowTable::replace_prefixes`].
    /// Returns the rule generation the classifier now reads.
    pub fn replace_prefix_rules(
        &mut self,
        maps: &mut impl RuleMaps,
        rules: NewRules<PrefixRule>,
    ) -> Result<u8> {
        self.projected(maps)?;
        self.replace(maps, None, Some(rules.0))
    }

    /// Replaces all prefix rules at once: the exact rules stay, the program
    /// sees the old table or the new one, never a mix. Ids given must be
    /// unique; missing ones are assigned after the highest given one.
    /// Guests are resolved by `guests`.
    pub fn replace_prefixes(
        &mut self,
        maps: &mut impl RuleMaps,
        rules: Vec<PrefixRuleSpec>,
        guests: &dyn GuestNames,
    ) -> Result<Vec<PrefixRule>> {
        RuleSet::<PrefixRule>::check_capacity(rules.len())?;
        self.projected(maps)?;
        let set = RuleSet::plan(&rules, |s| s.id, |s, id| s.validate(id, guests))?;
        self.replace(maps, None, Some(set))?;
        Ok(self.prefixes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::FakeMaps;
    use crate::rules::LegacyIds;

    /// A private directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("xdpath-ft-unit-{}-{name}", std::process::id()));
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

    fn spec(port: u16) -> FlowRuleSpec {
        let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "guest");
        s.dst_port = port;
        s
    }

    #[test]
    fn the_table_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<FlowTable>();
        send::<FlowTableError>();
    }

    #[test]
    fn a_missing_state_file_is_an_unadopted_empty_table() {
        let d = Dir::new("missing");
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!((t.flows(), t.prefixes()), (vec![], vec![]));
        assert_eq!(t.projection(), Projection::Unadopted);
        assert_eq!(t.generation(), 0);
        assert!(t.guests().is_empty());
        assert!(!d.state().exists(), "loading writes nothing");
    }

    #[test]
    fn rules_name_guests_and_an_unknown_one_changes_nothing() {
        use crate::rules::{GuestRef, GuestTable, RuleAction};
        let d = Dir::new("guest-names");
        let mut maps = FakeMaps::new();
        let mut t = FlowTable::load(&d.state()).unwrap();
        let guests: GuestTable = [(2, "web1".to_string())].into_iter().collect();
        let mut named = spec(1);
        named.guest = Some(GuestRef::Name("web1".into()));
        let r = t.add_flow(&mut maps, named, &guests).unwrap();
        assert_eq!(r.action, RuleAction::Guest { port: 2 });
        let mut p = PrefixRuleSpec::new("10.8.0.0/16", "guest");
        p.guest = Some(GuestRef::Name("web1".into()));
        let pr = t.add_prefix(&mut maps, p, &guests).unwrap();
        assert_eq!((r.id, pr.id), (1, 1));
        assert_eq!(t.rules_for_guest(2), 2);
        assert_eq!(t.rules_for_guest(1), 0);
        let before = (t.flows(), t.prefixes(), maps.contents());
        let mut unknown = spec(2);
        unknown.guest = Some(GuestRef::Name("db".into()));
        for (s, want) in [
            (unknown, "Field `guest`: no guest named \"db\"."),
            // No guest 1 here: a rule must name its guest.
            (spec(3), "Field `guest`: name the guest this rule sends to."),
        ] {
            let e = t.add_flow(&mut maps, s.clone(), &guests).unwrap_err();
            assert_eq!((e.http_status(), e.field()), (400, Some("guest")));
            assert!(e.to_string().contains(want), "{e}");
            let drop = FlowRuleSpec::new("10.0.0.9", "10.0.0.1", "tcp", "drop");
            let e = t
                .replace_flows(&mut maps, vec![drop, s], &guests)
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("Rule 1: field{}", &want["Field".len()..])
            );
            assert_eq!(
                (t.flows(), t.prefixes(), maps.contents()),
                before,
                "nothing changed"
            );
        }
        drop(t);
        // The state file holds ids and loads without the names.
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!((t.flows(), t.prefixes()), (before.0, before.1));
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_table() {
        let d = Dir::new("compact");
        let mut maps = FakeMaps::new();
        let mut t = FlowTable::load(&d.state()).unwrap();
        t.add_flow(&mut maps, spec(1), &LegacyIds).unwrap();
        for _ in 0..COMPACT_MIN {
            let r = t.add_flow(&mut maps, spec(2), &LegacyIds).unwrap();
            t.delete_flow(&mut maps, r.id).unwrap();
        }
        assert!(t.store.journal_ops() < COMPACT_MIN, "compacted");
        assert!(t.store.epoch() >= 1);
        let want = (t.flows(), t.prefixes());
        drop(t);
        let t = FlowTable::load(&d.state()).unwrap();
        assert_eq!((t.flows(), t.prefixes()), want);
        assert_eq!(t.projection(), Projection::Unprojected, "state was found");
    }

    #[test]
    fn errors_map_to_http_statuses() {
        let kind = RuleKind::Flow;
        let cases: [(FlowTableError, u16, Option<&str>); 6] = [
            (RuleError::new("dst", "bad.").into(), 400, Some("dst")),
            (FlowTableError::UnknownId { kind, id: 1 }, 404, Some("id")),
            (FlowTableError::DuplicateId { kind, id: 1 }, 409, Some("id")),
            (
                FlowTableError::Conflict {
                    kind,
                    id: 2,
                    existing: 1,
                },
                409,
                None,
            ),
            (
                FlowTableError::Capacity {
                    kind,
                    limit: 1,
                    requested: 2,
                },
                507,
                None,
            ),
            (state_err(Path::new("/x"), "is broken."), 500, None),
        ];
        for (e, status, field) in cases {
            assert_eq!((e.http_status(), e.field()), (status, field), "{e}");
            assert!(e.to_string().ends_with('.'), "{e}");
        }
    }
}
