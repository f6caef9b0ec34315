//! Rule sets: the rules of one kind (exact or prefix) held in memory, by id
//! and by what they match. This layer knows nothing of maps or files; it
//! decides whether a rule may join a set (id space, match space, capacity)
//! and validates a whole list into a new set for a bulk replace: at once
//! (`RuleSet::plan`), or rule by rule as a list arrives from a stream
//! ([`BulkRules`]).

use super::{FlowTableError, Result};
use crate::rules::{
    FlowRule, FlowRuleSpec, GuestNames, PrefixRule, PrefixRuleSpec, RuleError, RuleKind,
};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
/// The hasher of the rule sets' maps: seeded per map, and several times
/// faster than the standard one on 40-byte keys (a million-rule replace
/// hashes every key once).
type Hasher = foldhash::fast::RandomState;
use std::hash::Hash;
use xdpath_common::{FlowKey, MAX_FLOWS, MAX_PREFIXES};

/// What the table needs to know about a rule type ([`FlowRule`],
/// [`PrefixRule`]).
pub trait TableRule: Copy + Serialize {
    /// What two rules must not share: they would match the same frames.
    type Match: Hash + Eq + Copy + std::fmt::Debug + Send;
    /// The rule as the API takes it.
    type Spec;
    /// Flow or prefix.
    const KIND: RuleKind;
    /// How many the maps hold.
    const LIMIT: u32;
    /// The rule's id.
    fn id(&self) -> u32;
    /// What it matches.
    fn matches(&self) -> Self::Match;
    /// The same rule under another id.
    fn with_id(self, id: u32) -> Self;
    /// The id a spec gives, if it gives one.
    fn spec_id(spec: &Self::Spec) -> Option<u32>;
    /// Validates a spec; `assign` is the id when it gives none; its guest
    /// is resolved by `guests`.
    fn validate(
        spec: &Self::Spec,
        assign: u32,
        guests: &dyn GuestNames,
    ) -> std::result::Result<Self, RuleError>;
    /// The guest the rule sends to, if its action is `guest`.
    fn guest(&self) -> Option<u32>;
}

impl TableRule for FlowRule {
    type Match = FlowKey;
    type Spec = FlowRuleSpec;
    const KIND: RuleKind = RuleKind::Flow;
    const LIMIT: u32 = MAX_FLOWS;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> FlowKey {
        self.bpf_key(0)
    }
    fn with_id(self, id: u32) -> Self {
        Self { id, ..self }
    }
    fn spec_id(spec: &FlowRuleSpec) -> Option<u32> {
        spec.id
    }
    fn validate(
        spec: &FlowRuleSpec,
        assign: u32,
        guests: &dyn GuestNames,
    ) -> std::result::Result<Self, RuleError> {
        spec.validate(assign, guests)
    }
    fn guest(&self) -> Option<u32> {
        self.action.guest_port()
    }
}

impl TableRule for PrefixRule {
    type Match = (u8, [u8; 16], u32);
    type Spec = PrefixRuleSpec;
    const KIND: RuleKind = RuleKind::Prefix;
    const LIMIT: u32 = MAX_PREFIXES;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> Self::Match {
        let (len, d) = self.bpf_key(0);
        (d.family, d.addr, len)
    }
    fn with_id(self, id: u32) -> Self {
        Self { id, ..self }
    }
    fn spec_id(spec: &PrefixRuleSpec) -> Option<u32> {
        spec.id
    }
    fn validate(
        spec: &PrefixRuleSpec,
        assign: u32,
        guests: &dyn GuestNames,
    ) -> std::result::Result<Self, RuleError> {
        spec.validate(assign, guests)
    }
    fn guest(&self) -> Option<u32> {
        self.action.guest_port()
    }
}

/// The ids rules without one get: after the highest id given, or (when
/// that would run out) the lowest ids nobody gave.
fn fresh_ids(given: &HashSet<u32, Hasher>, missing: usize) -> Box<dyn Iterator<Item = u32> + '_> {
    let max_given = given.iter().copied().max().unwrap_or(0);
    if (u32::MAX - max_given) as usize >= missing {
        Box::new(max_given + 1..=u32::MAX)
    } else {
        Box::new((1..=u32::MAX).filter(|i| !given.contains(i)))
    }
}

/// A bulk list validated rule by rule as it arrives, for a list read from
/// a stream: the same checks and the same ids as `RuleSet::plan`, without
/// holding the list's specs; of several problems, the first in list order
/// is reported (`plan` checks every id first). [`BulkRules::push`]
/// validates one rule (its syntax, an id given twice, the limit) and
/// compares what it matches with the rules before it; [`BulkRules::finish`]
/// assigns the missing ids (after the highest given one, in list order)
/// and refuses the first two rules that match the same frames.
#[derive(Debug)]
pub struct BulkRules<R: TableRule> {
    /// The rules so far, each with whether its id was given.
    rules: Vec<(R, bool)>,
    /// What each rule so far matches, with its place in the list (its id
    /// once `finish` assigned them).
    by_match: HashMap<R::Match, u32, Hasher>,
    given: HashSet<u32, Hasher>,
    /// Rules without an id, in the whole list.
    missing: usize,
    /// The first rule that matches what an earlier one does: the earlier's
    /// place and its own. The list is refused for it; the ids given after
    /// it are still noted (they decide the ids the two rules get).
    conflict: Option<(usize, usize)>,
    limit: usize,
}

impl<R: TableRule> BulkRules<R> {
    /// An empty list that takes at most `limit` rules (and never more than
    /// the maps hold), with room for `expect` of them.
    pub fn new(limit: usize, expect: usize) -> Self {
        let limit = limit.min(R::LIMIT as usize);
        let room = expect.min(limit);
        Self {
            rules: Vec::with_capacity(room),
            by_match: HashMap::with_capacity_and_hasher(room, Hasher::default()),
            given: HashSet::default(),
            missing: 0,
            conflict: None,
            limit,
        }
    }

    /// Rules so far.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The place of the first rule that matches what an earlier one does
    /// (`finish` refuses the list for it), if one does.
    pub fn conflict_at(&self) -> Option<usize> {
        self.conflict.map(|(_, later)| later)
    }

    /// Validates the next rule of the list. Errors: the rule is not valid
    /// (with its index), its id was given before, or the list would hold
    /// more than the limit. A rule matching what an earlier one does is
    /// refused by [`BulkRules::finish`] (it needs the ids), and nothing
    /// after it is checked.
    pub fn push(&mut self, spec: &R::Spec, guests: &dyn GuestNames) -> Result<()> {
        let id = R::spec_id(spec);
        if self.conflict.is_some() {
            self.note_after_conflict(id);
            return Ok(());
        }
        // A stand-in id for a rule without one; `finish` assigns it.
        let rule = R::validate(spec, 1, guests).map_err(|e| e.at(self.rules.len()))?;
        self.push_valid(rule, id)
    }

    /// [`BulkRules::push`] for a rule its caller validated (with a stand-in
    /// id when `id`, the id its spec gave, is `None`).
    pub fn push_valid(&mut self, rule: R, id: Option<u32>) -> Result<()> {
        if self.conflict.is_some() {
            self.note_after_conflict(id);
            return Ok(());
        }
        let index = self.rules.len();
        if index >= self.limit {
            return Err(FlowTableError::Capacity {
                kind: R::KIND,
                limit: u32::try_from(self.limit).unwrap_or(u32::MAX),
                requested: index.saturating_add(1),
            });
        }
        match id {
            None => self.missing += 1,
            Some(id) => {
                if !self.given.insert(id) {
                    return Err(FlowTableError::DuplicateId { kind: R::KIND, id });
                }
            }
        }
        // The limit is far below u32::MAX.
        let place = u32::try_from(index).unwrap_or(u32::MAX);
        match self.by_match.entry(rule.matches()) {
            std::collections::hash_map::Entry::Occupied(earlier) => {
                self.conflict = Some((*earlier.get() as usize, index));
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(place);
            }
        }
        self.rules.push((rule, id.is_some()));
        Ok(())
    }

    /// After a conflict only the ids matter: they decide the ids the two
    /// rules get.
    fn note_after_conflict(&mut self, id: Option<u32>) {
        match id {
            None => self.missing += 1,
            Some(id) => {
                self.given.insert(id);
            }
        }
    }

    /// The new set: missing ids assigned, and no two rules matching the
    /// same frames (a `Conflict` names the later rule and the earlier one).
    pub fn finish(self) -> Result<NewRules<R>> {
        let Self {
            mut rules,
            mut by_match,
            given,
            missing,
            conflict,
            ..
        } = self;
        {
            let mut fresh = fresh_ids(&given, missing);
            for (r, was_given) in rules.iter_mut().filter(|(_, g)| !*g) {
                // Capacity is far below the id space: there is always one.
                *r = r.with_id(fresh.next().unwrap_or(u32::MAX));
                *was_given = true;
            }
        }
        drop(given);
        let id_at = |i: usize| rules.get(i).map_or(0, |(r, _)| r.id());
        if let Some((earlier, later)) = conflict {
            return Err(FlowTableError::Conflict {
                kind: R::KIND,
                id: id_at(later),
                existing: id_at(earlier),
            });
        }
        for place in by_match.values_mut() {
            *place = id_at(*place as usize);
        }
        let by_id = rules.into_iter().map(|(r, _)| (r.id(), r)).collect();
        Ok(NewRules(RuleSet { by_id, by_match }))
    }
}

/// A validated set of rules of one kind, ready to replace the table's
/// ([`BulkRules::finish`]).
#[derive(Debug)]
pub struct NewRules<R: TableRule>(pub(super) RuleSet<R>);

impl<R: TableRule> NewRules<R> {
    /// How many rules.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Whether any of them sends to guest `port`.
    pub fn name_guest(&self, port: u32) -> bool {
        self.0.count_for_guest(port) > 0
    }
}

/// The rules of one kind, by id and by what they match.
#[derive(Clone, Debug)]
pub(super) struct RuleSet<R: TableRule> {
    by_id: BTreeMap<u32, R>,
    by_match: HashMap<R::Match, u32, Hasher>,
}

impl<R: TableRule> Default for RuleSet<R> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_match: HashMap::default(),
        }
    }
}

impl<R: TableRule> RuleSet<R> {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The rules, sorted by id.
    pub(super) fn rules(&self) -> impl Iterator<Item = &R> {
        self.by_id.values()
    }

    pub(super) fn get(&self, id: u32) -> Option<&R> {
        self.by_id.get(&id)
    }

    /// How many rules send to guest `port`.
    pub(super) fn count_for_guest(&self, port: u32) -> usize {
        self.by_id
            .values()
            .filter(|r| r.guest() == Some(port))
            .count()
    }

    /// The same set without the rules that send to guest `port`.
    pub(super) fn without_guest(&self, port: u32) -> Self {
        let mut set = self.clone();
        set.by_id.retain(|_, r| r.guest() != Some(port));
        set.by_match.retain(|_, id| set.by_id.contains_key(id));
        set
    }

    /// Why `r` cannot join the set, if it cannot.
    pub(super) fn refuse(&self, r: &R) -> Option<FlowTableError> {
        if self.by_id.contains_key(&r.id()) {
            return Some(FlowTableError::DuplicateId {
                kind: R::KIND,
                id: r.id(),
            });
        }
        self.by_match
            .get(&r.matches())
            .map(|&existing| FlowTableError::Conflict {
                kind: R::KIND,
                id: r.id(),
                existing,
            })
    }

    /// Why `r` cannot be added to the set, if it cannot: id, match or
    /// capacity.
    pub(super) fn check_add(&self, r: &R) -> Result<()> {
        if let Some(e) = self.refuse(r) {
            return Err(e);
        }
        Self::check_capacity(self.len() + 1)
    }

    pub(super) fn insert(&mut self, r: R) -> Result<()> {
        if let Some(e) = self.refuse(&r) {
            return Err(e);
        }
        self.by_match.insert(r.matches(), r.id());
        self.by_id.insert(r.id(), r);
        Ok(())
    }

    pub(super) fn remove(&mut self, id: u32) -> Option<R> {
        let r = self.by_id.remove(&id)?;
        self.by_match.remove(&r.matches());
        Some(r)
    }

    pub(super) fn check_capacity(requested: usize) -> Result<()> {
        if requested > R::LIMIT as usize {
            return Err(FlowTableError::Capacity {
                kind: R::KIND,
                limit: R::LIMIT,
                requested,
            });
        }
        Ok(())
    }

    /// The id a new rule gets: one more than the highest, or the lowest
    /// free one once the highest is `u32::MAX`.
    pub(super) fn next_id(&self) -> u32 {
        match self.by_id.last_key_value() {
            None => 1,
            Some((&max, _)) if max < u32::MAX => max + 1,
            Some(_) => (1..u32::MAX)
                .find(|i| !self.by_id.contains_key(i))
                .unwrap_or(u32::MAX),
        }
    }

    /// Validates a whole list into a new set: ids given must be unique,
    /// missing ones are assigned after the highest given one, no two rules
    /// may match the same frames, and the size must fit.
    pub(super) fn plan<S>(
        specs: &[S],
        spec_id: impl Fn(&S) -> Option<u32>,
        validate: impl Fn(&S, u32) -> std::result::Result<R, RuleError>,
    ) -> Result<Self> {
        Self::check_capacity(specs.len())?;
        let mut given = HashSet::with_capacity_and_hasher(specs.len(), Hasher::default());
        for (i, s) in specs.iter().enumerate() {
            if let Some(id) = spec_id(s) {
                if id == 0 {
                    return Err(RuleError::new("id", "rule ids start at 1.").at(i).into());
                }
                if !given.insert(id) {
                    return Err(FlowTableError::DuplicateId { kind: R::KIND, id });
                }
            }
        }
        let missing = specs.len() - given.len();
        let mut fresh = fresh_ids(&given, missing);
        let mut set = Self::default();
        set.by_match.reserve(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let assign = match spec_id(s) {
                Some(id) => id,
                // Capacity is far below the id space: there is always one.
                None => fresh.next().unwrap_or(u32::MAX),
            };
            let r = validate(s, assign).map_err(|e| e.at(i))?;
            set.insert(r)?;
        }
        Ok(set)
    }
}

/// The table's rules, both kinds: what the store persists.
#[derive(Clone, Debug, Default)]
pub(super) struct Rules {
    pub(super) flows: RuleSet<FlowRule>,
    pub(super) prefixes: RuleSet<PrefixRule>,
}

impl Rules {
    /// Rules of both kinds.
    pub(super) fn len(&self) -> usize {
        self.flows.len() + self.prefixes.len()
    }
}

impl<R: TableRule> Serialize for RuleSet<R> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.by_id.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::LegacyIds;
    use crate::rules::{FlowRuleSpec, PrefixRuleSpec};

    fn prefix(id: u32, p: &str) -> PrefixRule {
        PrefixRuleSpec::new(p, "drop")
            .validate(id, &LegacyIds)
            .unwrap()
    }

    #[test]
    fn bulk_plans_assign_ids_and_refuse_duplicates() {
        let spec = |id: Option<u32>, port: u16| {
            let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "drop");
            s.id = id;
            s.dst_port = port;
            s
        };
        let plan = |v: &[FlowRuleSpec]| {
            RuleSet::<FlowRule>::plan(
                v,
                |s| s.id,
                |s: &FlowRuleSpec, id| s.validate(id, &LegacyIds),
            )
        };
        let set = plan(&[
            spec(None, 1),
            spec(Some(10), 2),
            spec(None, 3),
            spec(Some(4), 4),
        ])
        .unwrap();
        let ids: Vec<u32> = set.rules().map(|r| r.id).collect();
        assert_eq!(ids, vec![4, 10, 11, 12]);
        assert_eq!(set.by_id[&11].dst_port, 1, "missing ids in list order");
        assert!(matches!(
            plan(&[spec(Some(3), 1), spec(Some(3), 2)]),
            Err(FlowTableError::DuplicateId { id: 3, .. })
        ));
        assert!(matches!(
            plan(&[spec(Some(3), 1), spec(None, 1)]),
            Err(FlowTableError::Conflict {
                existing: 3,
                id: 4,
                ..
            })
        ));
        match plan(&[spec(None, 1), spec(Some(0), 2)]) {
            Err(FlowTableError::Invalid(e)) => assert_eq!((e.field(), e.index()), ("id", Some(1))),
            other => panic!("{other:?}"),
        }
        let mut bad = spec(None, 2);
        bad.src = "x".into();
        match plan(&[spec(None, 1), bad]) {
            Err(e @ FlowTableError::Invalid(_)) => {
                assert_eq!(e.field(), Some("src"));
                assert!(e.to_string().starts_with("Rule 1: field `src`"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Ids near the top of the range fall back to the lowest free ones.
        let set = plan(&[spec(Some(u32::MAX), 1), spec(None, 2)]).unwrap();
        assert_eq!(
            set.by_id.keys().copied().collect::<Vec<_>>(),
            vec![1, u32::MAX]
        );
        let big = vec![spec(None, 1); MAX_FLOWS as usize + 1];
        match plan(&big) {
            Err(e @ FlowTableError::Capacity { .. }) => {
                assert!(e.to_string().contains(&MAX_FLOWS.to_string()), "{e}");
                assert_eq!(e.http_status(), 507);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_list_validated_as_it_arrives_gets_what_a_whole_list_gets() {
        let spec = |id: Option<u32>, port: u16| {
            let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "drop");
            s.id = id;
            s.dst_port = port;
            s
        };
        let bulk = |v: &[FlowRuleSpec], limit: usize| -> Result<RuleSet<FlowRule>> {
            let mut b = BulkRules::<FlowRule>::new(limit, v.len());
            for s in v {
                b.push(s, &LegacyIds)?;
            }
            b.finish().map(|n| n.0)
        };
        let list = [
            spec(None, 1),
            spec(Some(10), 2),
            spec(None, 3),
            spec(Some(4), 4),
        ];
        let planned = RuleSet::<FlowRule>::plan(
            &list,
            |s| s.id,
            |s: &FlowRuleSpec, id| s.validate(id, &LegacyIds),
        )
        .unwrap();
        let streamed = bulk(&list, 100).unwrap();
        let rules = |s: &RuleSet<FlowRule>| s.rules().copied().collect::<Vec<_>>();
        assert_eq!(rules(&streamed), rules(&planned));
        assert_eq!(streamed.by_match, planned.by_match);
        assert!(matches!(
            bulk(&[spec(Some(3), 1), spec(Some(3), 2)], 100),
            Err(FlowTableError::DuplicateId { id: 3, .. })
        ));
        assert!(matches!(
            bulk(&[spec(Some(3), 1), spec(None, 1)], 100),
            Err(FlowTableError::Conflict {
                existing: 3,
                id: 4,
                ..
            })
        ));
        // The first error in list order wins, with the ids plan gives:
        // a conflict before a bad rule, a bad rule before a conflict, ids
        // given after the conflict move the assigned ones.
        let mut bad = spec(None, 9);
        bad.src = "x".into();
        for list in [
            vec![spec(None, 1), spec(None, 1), bad.clone()],
            vec![spec(None, 1), bad.clone(), spec(None, 1)],
            vec![
                spec(None, 1),
                spec(Some(7), 2),
                spec(None, 1),
                spec(Some(50), 3),
            ],
            vec![
                spec(Some(u32::MAX), 1),
                spec(None, 2),
                spec(None, 2),
                spec(Some(1), 3),
            ],
        ] {
            let planned = RuleSet::<FlowRule>::plan(
                &list,
                |s| s.id,
                |s: &FlowRuleSpec, id| s.validate(id, &LegacyIds),
            )
            .map(|s| rules(&s))
            .map_err(|e| e.to_string());
            let streamed = bulk(&list, 100)
                .map(|s| rules(&s))
                .map_err(|e| e.to_string());
            assert_eq!(streamed, planned, "{list:?}");
        }
        // One difference: plan checks every id before anything else; a
        // list read as it arrives reports its first refused rule.
        let list = [
            spec(None, 1),
            spec(None, 1),
            spec(Some(5), 3),
            spec(Some(5), 4),
        ];
        assert!(matches!(
            RuleSet::<FlowRule>::plan(
                &list,
                |s| s.id,
                |s: &FlowRuleSpec, id| s.validate(id, &LegacyIds)
            ),
            Err(FlowTableError::DuplicateId { id: 5, .. })
        ));
        assert!(matches!(
            bulk(&list, 100),
            Err(FlowTableError::Conflict {
                id: 7,
                existing: 6,
                ..
            })
        ));
        let mut bad = spec(None, 2);
        bad.src = "x".into();
        match bulk(&[spec(None, 1), bad], 100) {
            Err(e @ FlowTableError::Invalid(_)) => {
                assert!(e.to_string().starts_with("Rule 1: field `src`"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // The limit, and never more than the maps hold.
        assert!(matches!(
            bulk(&[spec(None, 1), spec(None, 2), spec(None, 3)], 2),
            Err(FlowTableError::Capacity {
                limit: 2,
                requested: 3,
                ..
            })
        ));
        assert_eq!(
            BulkRules::<FlowRule>::new(usize::MAX, 0).limit,
            MAX_FLOWS as usize
        );
        let set = bulk(&[spec(Some(u32::MAX), 1), spec(None, 2)], 100).unwrap();
        assert_eq!(
            set.by_id.keys().copied().collect::<Vec<_>>(),
            vec![1, u32::MAX]
        );
    }

    #[test]
    fn next_id_continues_after_the_highest() {
        let mut s = RuleSet::<PrefixRule>::default();
        assert_eq!(s.next_id(), 1);
        s.insert(prefix(5, "10.0.0.0/8")).unwrap();
        assert_eq!(s.next_id(), 6);
        s.insert(prefix(u32::MAX, "10.1.0.0/16")).unwrap();
        assert_eq!(s.next_id(), 1);
        assert!(matches!(
            s.insert(prefix(9, "10.0.0.0/8")),
            Err(FlowTableError::Conflict { existing: 5, .. })
        ));
        s.remove(5);
        s.insert(prefix(9, "10.0.0.0/8")).unwrap();
    }
}
