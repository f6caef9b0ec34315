//! The projection of the table into the maps: what the four maps must hold
//! for a table, the atomic switch of a group of maps to the other
//! generation (with its rollback), and `sync`, which makes maps of unknown
//! contents hold exactly the table.
//!
//! This layer reaches the maps only through [`RuleMaps`], and never touches
//! the state files: the durable step of a switch is a closure its caller
//! passes in. The states are described in the docs of [`super`].

use super::guests::GuestEntries;
use super::rule_set::RuleSet;
use super::{FlowTableError, Result};
use crate::classifier::ClassifierError;
use crate::maps::{
    Flows, Generations, Group, Macs, MapTable, MapsId, Neigh, Prefixes, RuleMap, RuleMaps,
};
use crate::rules::{FlowRule, PrefixRule};
use std::collections::HashMap;
use xdpath_common::{AddrKey, FlowKey, MacKey, PrefixData, RuleValue};

/// Where the table's projection stands (see the module docs of [`super`],
/// "States of the table").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// UNPROJECTED, and no state file was found at load: the first sync
    /// adopts the rules of the maps' active generation (a daemon that lost
    /// its state file but not its maps), so they are not silently dropped.
    Unadopted,
    /// UNPROJECTED: the maps are not known to hold the table (after a load,
    /// or after a failure that could not be rolled back). The next call
    /// that touches maps syncs first.
    Unprojected,
    /// PROJECTED: the maps `maps` hold exactly the table in the generations
    /// `gens`, which are the active ones, and nothing else.
    Projected {
        /// The maps projected into.
        maps: MapsId,
        /// The active generations.
        gens: Generations,
    },
}

/// How far a switch has come, which says what a failure must undo (see
/// the module docs of [`super`], "States of the table").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SwitchState {
    /// PROJECTED(g): nothing written yet.
    Projected,
    /// STAGED: the new contents are being or have been written into the
    /// spare generation of each switched group; frames do not see them.
    Staged,
    /// SWITCHED: `CONFIG` names the new generations and no frame is still
    /// classified against the old ones. Only the durable step is left.
    Switched,
}

/// What the maps hold after a failed switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MapsAfter {
    /// As before the switch: the table is still PROJECTED.
    AsBefore,
    /// Not known, because a rollback step failed: the table is UNPROJECTED.
    Unknown,
}

/// A failed [`switch`].
pub(super) struct SwitchError {
    pub(super) error: FlowTableError,
    pub(super) maps: MapsAfter,
}

/// What the maps must hold: the table.
#[derive(Clone, Copy)]
pub(super) struct Want<'a> {
    pub(super) flows: &'a RuleSet<FlowRule>,
    pub(super) prefixes: &'a RuleSet<PrefixRule>,
    pub(super) guests: &'a GuestEntries,
}

/// Entries of the four maps: read from them, or to be written.
#[derive(Debug, Default)]
pub(super) struct Entries {
    flows: Vec<(FlowKey, RuleValue)>,
    prefixes: Vec<((u32, PrefixData), RuleValue)>,
    macs: Vec<(MacKey, RuleValue)>,
    neigh: Vec<(AddrKey, RuleValue)>,
}

/// Where a map's entries are in [`Entries`].
trait Slot: RuleMap {
    const INDEX: usize;
    fn list(e: &Entries) -> &Vec<(Self::Key, RuleValue)>;
    fn list_mut(e: &mut Entries) -> &mut Vec<(Self::Key, RuleValue)>;
}

macro_rules! slot {
    ($m:ty, $f:ident, $i:expr) => {
        impl Slot for $m {
            const INDEX: usize = $i;
            fn list(e: &Entries) -> &Vec<(<$m as RuleMap>::Key, RuleValue)> {
                &e.$f
            }
            fn list_mut(e: &mut Entries) -> &mut Vec<(<$m as RuleMap>::Key, RuleValue)> {
                &mut e.$f
            }
        }
    };
}

slot!(Flows, flows, 0);
slot!(Prefixes, prefixes, 1);
slot!(Macs, macs, 2);
slot!(Neigh, neigh, 3);

/// Entries written so far, per map (by [`Slot::INDEX`]).
type Written = [usize; 4];

fn read_map<M: Slot, R: MapTable<M>>(maps: &R, out: &mut Entries) -> Result<()> {
    *M::list_mut(out) = maps.entries()?;
    Ok(())
}

fn keep_map<M: Slot>(src: &Entries, dst: &mut Entries, keep: &impl Fn(Group, u8) -> bool) {
    M::list_mut(dst).extend(
        M::list(src)
            .iter()
            .filter(|(k, _)| keep(M::GROUP, M::generation(k)))
            .copied(),
    );
}

fn insert_map<M: Slot, R: MapTable<M>>(
    maps: &mut R,
    e: &Entries,
    written: &mut Written,
) -> std::result::Result<(), ClassifierError> {
    let list = M::list(e);
    let res = maps.insert(list);
    written[M::INDEX] = match &res {
        Ok(()) => list.len(),
        Err(b) => b.done,
    };
    res.map_err(|b| b.source)
}

fn remove_map<M: Slot, R: MapTable<M>>(
    maps: &mut R,
    e: &Entries,
    upto: Option<&Written>,
) -> std::result::Result<(), ClassifierError> {
    let list = M::list(e);
    let n = upto.map_or(list.len(), |w| w[M::INDEX].min(list.len()));
    // In pieces, so that a million keys are not copied out at once (the old
    // generation's entries are held already); one call when they fit.
    let mut rest = &list[..n];
    let mut keys: Vec<M::Key> = Vec::with_capacity(rest.len().min(REMOVE_PIECE));
    loop {
        let (now, later) = rest.split_at(rest.len().min(REMOVE_PIECE));
        keys.clear();
        keys.extend(now.iter().map(|(k, _)| *k));
        maps.remove(&keys).map_err(|b| b.source)?;
        if later.is_empty() {
            return Ok(());
        }
        rest = later;
    }
}

/// Keys removed per call by `remove_map`.
const REMOVE_PIECE: usize = 1 << 16;

/// Entries of map `M` in generation `gen` of `now` that `want` does not
/// hold with the same value, and whether the two are equal there.
fn compare_map<M: Slot>(now: &Entries, want: &Entries, gen: u8) -> (usize, bool) {
    let wanted: HashMap<M::Key, RuleValue> = M::list(want).iter().copied().collect();
    let mut present = 0;
    let mut foreign = 0;
    for (k, v) in M::list(now).iter().filter(|(k, _)| M::generation(k) == gen) {
        present += 1;
        if wanted.get(k) != Some(v) {
            foreign += 1;
        }
    }
    (foreign, foreign == 0 && present == wanted.len())
}

impl Entries {
    /// The entries of the table's maps in `groups`, in generations `gens`.
    pub(super) fn of_table(want: Want<'_>, gens: Generations, groups: &[Group]) -> Self {
        let mut e = Self::default();
        if groups.contains(&Group::Rules) {
            let g = gens.rules;
            e.flows = want
                .flows
                .rules()
                .map(|r| (r.bpf_key(g), r.bpf_value()))
                .collect();
            e.prefixes = want
                .prefixes
                .rules()
                .map(|r| (r.bpf_key(g), r.bpf_value()))
                .collect();
        }
        if groups.contains(&Group::Guests) {
            e.macs = want.guests.mac_entries(gens.guests);
            e.neigh = want.guests.neigh_entries(gens.guests);
        }
        e
    }

    /// The `FLOWS` entries.
    pub(super) fn flows(&self) -> &[(FlowKey, RuleValue)] {
        &self.flows
    }

    /// The `PREFIXES` entries.
    pub(super) fn prefixes(&self) -> &[((u32, PrefixData), RuleValue)] {
        &self.prefixes
    }

    /// Everything the maps hold.
    pub(super) fn read(maps: &impl RuleMaps) -> Result<Self> {
        let mut e = Self::default();
        read_map::<Flows, _>(maps, &mut e)?;
        read_map::<Prefixes, _>(maps, &mut e)?;
        read_map::<Macs, _>(maps, &mut e)?;
        read_map::<Neigh, _>(maps, &mut e)?;
        Ok(e)
    }

    /// The entries whose (group, generation) `keep` accepts.
    fn filter(&self, keep: impl Fn(Group, u8) -> bool) -> Self {
        let mut e = Self::default();
        keep_map::<Flows>(self, &mut e, &keep);
        keep_map::<Prefixes>(self, &mut e, &keep);
        keep_map::<Macs>(self, &mut e, &keep);
        keep_map::<Neigh>(self, &mut e, &keep);
        e
    }

    fn is_empty(&self) -> bool {
        self.flows.is_empty()
            && self.prefixes.is_empty()
            && self.macs.is_empty()
            && self.neigh.is_empty()
    }

    /// Writes every entry, map after map; `written` says how far it got.
    fn insert_into(
        &self,
        maps: &mut impl RuleMaps,
        written: &mut Written,
    ) -> std::result::Result<(), ClassifierError> {
        insert_map::<Flows, _>(maps, self, written)?;
        insert_map::<Prefixes, _>(maps, self, written)?;
        insert_map::<Macs, _>(maps, self, written)?;
        insert_map::<Neigh, _>(maps, self, written)
    }

    /// Removes the keys of every entry (or of the first `upto` of each map).
    pub(super) fn remove_from(
        &self,
        maps: &mut impl RuleMaps,
        upto: Option<&Written>,
    ) -> std::result::Result<(), ClassifierError> {
        remove_map::<Flows, _>(maps, self, upto)?;
        remove_map::<Prefixes, _>(maps, self, upto)?;
        remove_map::<Macs, _>(maps, self, upto)?;
        remove_map::<Neigh, _>(maps, self, upto)
    }

    /// For `group`: how many entries of `self` in generation `gen` `want`
    /// lacks, and whether that generation holds exactly `want`.
    fn compare(&self, want: &Entries, group: Group, gen: u8) -> (usize, bool) {
        let (a, b) = match group {
            Group::Rules => (
                compare_map::<Flows>(self, want, gen),
                compare_map::<Prefixes>(self, want, gen),
            ),
            Group::Guests => (
                compare_map::<Macs>(self, want, gen),
                compare_map::<Neigh>(self, want, gen),
            ),
        };
        (a.0 + b.0, a.1 && b.1)
    }
}

/// Switches `groups` of the maps from generations `from` to the other
/// generation holding `want`: STAGED (the new contents written into the
/// spare generations, which must be empty), SWITCHED (one `CONFIG` update,
/// then wait for readers), then `commit` (the durable step). Returns the new
/// generations; the old ones still hold the old contents, which the caller
/// removes once it has committed.
///
/// On error everything written is undone in reverse (switched back, waited
/// for, unstaged) and [`SwitchError::maps`] says whether that worked.
pub(super) fn switch<R: RuleMaps>(
    maps: &mut R,
    from: Generations,
    groups: &[Group],
    want: Want<'_>,
    commit: impl FnOnce() -> Result<()>,
) -> std::result::Result<Generations, SwitchError> {
    let to = groups.iter().fold(from, |g, &group| g.flipped(group));
    let staged = Entries::of_table(want, to, groups);
    let mut state = SwitchState::Projected;
    let mut written = Written::default();
    let run = || -> Result<()> {
        state = SwitchState::Staged;
        staged.insert_into(maps, &mut written)?;
        maps.set_generations(to)?;
        maps.wait_for_readers();
        state = SwitchState::Switched;
        commit()
    };
    match run() {
        Ok(()) => Ok(to),
        Err(error) => Err(SwitchError {
            error,
            maps: roll_back(maps, state, from, &staged, &written),
        }),
    }
}

/// Undoes a switch that failed in `state`.
fn roll_back<R: RuleMaps>(
    maps: &mut R,
    state: SwitchState,
    from: Generations,
    staged: &Entries,
    written: &Written,
) -> MapsAfter {
    let unstage = |maps: &mut R| match staged.remove_from(maps, Some(written)) {
        Ok(()) => MapsAfter::AsBefore,
        Err(e) => {
            tracing::warn!("flow table: removing a staged generation: {e}; the maps will be projected again on the next change");
            MapsAfter::Unknown
        }
    };
    match state {
        SwitchState::Projected => MapsAfter::AsBefore,
        SwitchState::Staged => unstage(maps),
        SwitchState::Switched => match maps.set_generations(from) {
            Ok(()) => {
                maps.wait_for_readers();
                unstage(maps)
            }
            Err(e) => {
                tracing::error!(
                    "flow table: switching back after a failure: {e}; the maps will be projected again on the next change"
                );
                MapsAfter::Unknown
            }
        },
    }
}

/// Makes maps whose contents are `now` (read at generations `gens`) hold
/// exactly `want` in the active generations and nothing else. Writes
/// nothing if they already do. Otherwise everything outside the active
/// generations goes first, then each group whose active generation is not
/// exact is switched to the other one (atomically, both groups in one
/// `CONFIG` update), and what the old generation held is deleted.
///
/// Returns the generations now active. On error the active generations are
/// as they were, or, if the switch went through, hold the table; either way
/// the maps may hold more than the table and the caller must consider them
/// unprojected.
pub(super) fn sync<R: RuleMaps>(
    maps: &mut R,
    gens: Generations,
    now: &Entries,
    want: Want<'_>,
) -> Result<Generations> {
    let wanted = Entries::of_table(want, gens, &[Group::Rules, Group::Guests]);
    let (foreign_r, exact_r) = now.compare(&wanted, Group::Rules, gens.rules);
    let (foreign_g, exact_g) = now.compare(&wanted, Group::Guests, gens.guests);
    let junk = now.filter(|group, gen| gen != gens.of(group));
    if exact_r && exact_g && junk.is_empty() {
        tracing::info!(?gens, "flow table: the maps already hold the table");
        return Ok(gens);
    }
    if foreign_r + foreign_g > 0 {
        tracing::warn!(
            entries = foreign_r + foreign_g,
            "flow table: the maps hold entries the table does not; they are replaced by the table"
        );
    }
    // The spare generations must be empty before a switch; entries of any
    // other generation value are junk too.
    junk.remove_from(maps, None)?;
    let flip: Vec<Group> = [(Group::Rules, exact_r), (Group::Guests, exact_g)]
        .into_iter()
        .filter(|(_, exact)| !exact)
        .map(|(g, _)| g)
        .collect();
    if flip.is_empty() {
        return Ok(gens);
    }
    let to = switch(maps, gens, &flip, want, || Ok(())).map_err(|e| e.error)?;
    // Whatever the old generation held (the old table, and entries written
    // around it) goes too.
    let old = now.filter(|group, gen| flip.contains(&group) && gen == gens.of(group));
    old.remove_from(maps, None)?;
    Ok(to)
}
