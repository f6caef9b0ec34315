//! Rule sets: the rules of one kind (exact or prefix) held in memory, by id
//! and by what they match. This layer knows nothing of maps or files; it
//! decides whether a rule may join a set (id space, match space, capacity)
//! and validates a whole list into a new set for a bulk replace.

use super::{FlowTableError, Result};
use crate::rules::{FlowRule, PrefixRule, RuleError, RuleKind};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use xdpath_common::{FlowKey, MAX_FLOWS, MAX_PREFIXES};

/// What the table needs to know about a rule type.
pub(super) trait TableRule: Copy + Serialize {
    /// What two rules must not share: they would match the same frames.
    type Match: Hash + Eq + Copy;
    const KIND: RuleKind;
    const LIMIT: u32;
    fn id(&self) -> u32;
    fn matches(&self) -> Self::Match;
}

impl TableRule for FlowRule {
    type Match = FlowKey;
    const KIND: RuleKind = RuleKind::Flow;
    const LIMIT: u32 = MAX_FLOWS;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> FlowKey {
        self.bpf_key(0)
    }
}

impl TableRule for PrefixRule {
    type Match = (u8, [u8; 16], u32);
    const KIND: RuleKind = RuleKind::Prefix;
    const LIMIT: u32 = MAX_PREFIXES;
    fn id(&self) -> u32 {
        self.id
    }
    fn matches(&self) -> Self::Match {
        let (len, d) = self.bpf_key(0);
        (d.family, d.addr, len)
    }
}

/// The rules of one kind, by id and by what they match.
#[derive(Clone, Debug)]
pub(super) struct RuleSet<R: TableRule> {
    by_id: BTreeMap<u32, R>,
    by_match: HashMap<R::Match, u32>,
}

impl<R: TableRule> Default for RuleSet<R> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_match: HashMap::new(),
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
        let mut given = HashSet::with_capacity(specs.len());
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
        let max_given = given.iter().copied().max().unwrap_or(0);
        let mut fresh: Box<dyn Iterator<Item = u32>> = if (u32::MAX - max_given) as usize >= missing
        {
            Box::new(max_given + 1..=u32::MAX)
        } else {
            Box::new((1..=u32::MAX).filter(|i| !given.contains(i)))
        };
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
    use crate::rules::{FlowRuleSpec, PrefixRuleSpec};

    fn prefix(id: u32, p: &str) -> PrefixRule {
        PrefixRuleSpec::new(p, "drop").validate(id).unwrap()
    }

    #[test]
    fn bulk_plans_assign_ids_and_refuse_duplicates() {
        let spec = |id: Option<u32>, port: u16| {
            let mut s = FlowRuleSpec::new("10.0.0.2", "10.0.0.1", "udp", "drop");
            s.id = id;
            s.dst_port = port;
            s
        };
        let plan =
            |v: &[FlowRuleSpec]| RuleSet::<FlowRule>::plan(v, |s| s.id, FlowRuleSpec::validate);
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
