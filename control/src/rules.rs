//! Flow-table rules: the JSON form, validation whose errors name the field,
//! the validated form the [`FlowTable`](crate::flow_table::FlowTable) keeps,
//! and the conversion to (and back from) the BPF map keys.
//!
//! They live in `xdpath_api::rules`, with the other types the API takes and
//! lists (the rules' JSON is the API's), and are re-exported here under the
//! names the control plane has always used. Semantic validation is
//! `FlowRuleSpec::validate` / `PrefixRuleSpec::validate`, called by the
//! flow table on every write.

pub use xdpath_api::rules::*;
