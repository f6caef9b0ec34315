//! Target `rules_json`: the API's rule parsing (`xdpath_api::rules`), one
//! rule and a list, exact and prefix rules, as the daemon reads request
//! bodies.
//!
//! Input: a mode byte (bit 0: prefix rules, bit 1: a list), then the JSON
//! text.
//!
//! Properties:
//! - no panic;
//! - every error names a field: `field()` is not empty, the message says
//!   it in backquotes, and a list's error carries the rule's index (and
//!   says it) exactly when it is about one rule;
//! - plain serde (`serde_json::from_slice`) and the daemon's entry point
//!   accept the same single rules, with the same values;
//! - a rule that validates round-trips: its JSON (as listed) reads back and
//!   validates to the same rule.

use serde::de::DeserializeOwned;
use serde::Serialize;
use xdpath_api::rules::{
    flow_specs_from_json, prefix_specs_from_json, FlowRule, FlowRuleSpec, LegacyIds, PrefixRule,
    PrefixRuleSpec, RuleError,
};

/// What the target needs of a rule kind.
trait Kind: DeserializeOwned + PartialEq + std::fmt::Debug {
    type Rule: Serialize + PartialEq + std::fmt::Debug + Copy;
    fn one(text: &[u8]) -> Result<Self, RuleError>;
    fn list(text: &[u8]) -> Result<Vec<Self>, RuleError>;
    fn validate(&self, assign: u32) -> Result<Self::Rule, RuleError>;
    fn id(rule: &Self::Rule) -> u32;
}

impl Kind for FlowRuleSpec {
    type Rule = FlowRule;
    fn one(text: &[u8]) -> Result<Self, RuleError> {
        FlowRuleSpec::from_json(text)
    }
    fn list(text: &[u8]) -> Result<Vec<Self>, RuleError> {
        flow_specs_from_json(text)
    }
    fn validate(&self, assign: u32) -> Result<FlowRule, RuleError> {
        FlowRuleSpec::validate(self, assign, &LegacyIds)
    }
    fn id(rule: &FlowRule) -> u32 {
        rule.id
    }
}

impl Kind for PrefixRuleSpec {
    type Rule = PrefixRule;
    fn one(text: &[u8]) -> Result<Self, RuleError> {
        PrefixRuleSpec::from_json(text)
    }
    fn list(text: &[u8]) -> Result<Vec<Self>, RuleError> {
        prefix_specs_from_json(text)
    }
    fn validate(&self, assign: u32) -> Result<PrefixRule, RuleError> {
        PrefixRuleSpec::validate(self, assign, &LegacyIds)
    }
    fn id(rule: &PrefixRule) -> u32 {
        rule.id
    }
}

/// An error names its field, and its place in a list only in a list.
fn check_error(e: &RuleError, list: bool) {
    let msg = e.to_string();
    // An object key "" is a field too: `{"": 1}` is refused naming it.
    assert!(
        !e.field().is_empty() || e.reason().starts_with("unknown field"),
        "an error without a field: {msg}"
    );
    assert!(
        msg.contains(&format!("`{}`", e.field())),
        "the message does not name field {:?}: {msg}",
        e.field()
    );
    match e.index() {
        Some(i) => {
            assert!(list, "a single rule's error has index {i}: {msg}");
            assert!(
                msg.starts_with(&format!("Rule {i}: ")),
                "the message does not say rule {i}: {msg}"
            );
        }
        None => assert!(
            !msg.starts_with("Rule "),
            "an error without index says a rule: {msg}"
        ),
    }
}

/// A valid spec's rule round-trips through its listed JSON.
fn check_rule<K: Kind>(spec: &K) {
    let rule = match spec.validate(7) {
        Ok(r) => r,
        Err(e) => {
            check_error(&e, false);
            return;
        }
    };
    let text = serde_json::to_vec(&rule).expect("a rule serializes");
    let back = K::one(&text).unwrap_or_else(|e| {
        panic!(
            "a listed rule does not read back ({e}): {}",
            String::from_utf8_lossy(&text)
        )
    });
    let again = back
        .validate(K::id(&rule))
        .unwrap_or_else(|e| panic!("a listed rule does not validate ({e})"));
    assert_eq!(again, rule, "a rule round-trips through its JSON");
}

fn run_kind<K: Kind>(text: &[u8], list: bool) {
    if list {
        match K::list(text) {
            Ok(specs) => specs.iter().for_each(check_rule),
            Err(e) => check_error(&e, true),
        }
        return;
    }
    let ours = K::one(text);
    let plain = serde_json::from_slice::<K>(text);
    match (&ours, &plain) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "plain serde reads the same rule"),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "the entry point and plain serde disagree: {:?} against {:?}",
            ours.as_ref().map(|_| ()),
            plain.as_ref().map(|_| ())
        ),
    }
    match ours {
        Ok(spec) => check_rule(&spec),
        Err(e) => check_error(&e, false),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let list = mode & 2 != 0;
    if mode & 1 == 0 {
        run_kind::<FlowRuleSpec>(text, list);
    } else {
        run_kind::<PrefixRuleSpec>(text, list);
    }
}
