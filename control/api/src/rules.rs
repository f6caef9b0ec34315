//! Flow-table rules: the JSON form the API and the CLI exchange, validation
//! whose errors name the offending field, the validated form the
//! daemon's flow table (`xdpath_control::flow_table`) keeps, and the conversion to
//! (and back from) the BPF map keys of `xdpath-common`.
//!
//! # Wire format
//!
//! ```json
//! {"id": 7, "src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp",
//!  "src_port": 1000, "dst_port": 53, "action": "guest", "guest": 1}
//! {"id": 8, "prefix": "10.88.0.0/16", "action": "drop"}
//! ```
//!
//! - `id`: 1 to 2^32-1, unique within its kind (exact rules and prefix rules
//!   have separate id spaces). May be left out of a new rule: the table
//!   assigns one.
//! - `src`, `dst`: IPv4 or IPv6 text, both of the same family. `prefix`:
//!   `address/length`, length at most 32 (IPv4) or 128 (IPv6), no host bits.
//! - `proto`: `"tcp"`, `"udp"`, `"icmp"` (IPv4 only), `"icmpv6"` (IPv6 only)
//!   or a number 0 to 255. Names are case-insensitive; listings use the
//!   lower-case name when there is one for the rule's family.
//! - `src_port`, `dst_port`: optional, default 0; non-zero only with TCP or
//!   UDP. The classifier puts port 0 into the key of every frame without
//!   ports (other protocols, non-first fragments), so such rules match on 0.
//! - `action`: `"guest"`, `"host"` or `"drop"` (case-insensitive). `guest`:
//!   the guest a rule with action guest sends to, by name (`"web1"`), or
//!   by its numeric id (accepted for compatibility with the one-guest
//!   daemon, where the guest was port 1; see [`GuestRef`]); refused with
//!   the other actions. Left out, it is the guest with id 1 if there is
//!   one, else the rule is refused (``Field `guest`: name the guest this
//!   rule sends to.``).
//! - Unknown fields are refused. `null` counts as absent for the optional
//!   fields.
//!
//! The input types ([`FlowRuleSpec`], [`PrefixRuleSpec`]) hold exactly what
//! the JSON says, with JSON types checked but nothing else, so every semantic
//! check happens in one place: [`FlowRuleSpec::validate`] and
//! [`PrefixRuleSpec::validate`], which the daemon's flow table calls on every
//! write. They take the guests' names ([`GuestNames`]): a rule naming a
//! guest that does not exist is refused there, and the validated rule
//! holds the guest's numeric id (its port). Rules read back from the state
//! file or the maps hold ids and are validated with [`LegacyIds`].
//! Listings show names: [`FlowRule::listed`], [`PrefixRule::listed`]. The validated types ([`FlowRule`], [`PrefixRule`]) serialize to the
//! same shape (through their spec), with the id and both ports always
//! present.
//!
//! Reading JSON: one visitor reads a rule object field by field (known
//! fields, each at most once), then checks each value's JSON type by name;
//! a refusal is kept with the rule's place in a list. The daemon's entry
//! points are [`FlowRuleSpec::from_json`] and, for bulk lists,
//! [`read_flow_specs`], which reads a list from a stream one rule at a time
//! (the text is never held whole) and stops after a given number of rules;
//! [`flow_specs_from_json`] reads a list from text; each has a prefix twin.
//! Plain serde (`serde_json::from_str`) works too, with the same sentences
//! for everything but malformed JSON. No message repeats more than
//! [`ECHO_MAX`] characters of a value it was given ([`echo`]).
//!
//! Every error is a [`RuleError`]: [`RuleError::field`] is the JSON field
//! name, and the message is a sentence that names it, e.g.
//! ``Field `dst`: "10.0.0.300" is not an IPv4 or IPv6 address.``, or in a
//! list ``Rule 3: field `dst`: ...``.
//!
//! The conversion to and from the classifier's map keys and values
//! (`xdpath_common`) lives here too, with the types it converts.

mod stream;

pub use stream::MAX_STRING;

pub use crate::guests::{GuestNames, GuestTable, LegacyIds};
use crate::Action;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use xdpath_common::{FlowKey, PrefixData, RuleValue, FAMILY_V4, FAMILY_V6};

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// The guest (id) of action guest when `guest` is left out, if a guest
/// with this id exists (the one-guest shorthand guest).
pub const DEFAULT_GUEST_PORT: u32 = 1;

/// How a rule names its guest: by name, or by numeric id (the legacy
/// form, and the stored one). JSON: a string or an integer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum GuestRef {
    /// A guest name, e.g. `"web1"`.
    Name(String),
    /// A guest id (the classifier's guest port), e.g. `1`.
    Id(u32),
}

impl From<&str> for GuestRef {
    fn from(s: &str) -> Self {
        Self::Name(s.to_string())
    }
}

impl From<u32> for GuestRef {
    fn from(n: u32) -> Self {
        Self::Id(n)
    }
}

impl fmt::Display for GuestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Id(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for GuestRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_guest(Some(Value::deserialize(d)?))
            .map_err(|e| de::Error::custom(e.reason()))?
            .ok_or_else(|| de::Error::custom("expected a guest name or id, got null."))
    }
}

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for GuestRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GuestRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The guest a rule with action guest sends to: its name, or (the legacy form) its numeric id",
            "oneOf": [
                { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,14}$" },
                { "type": "integer", "minimum": 0, "maximum": u32::MAX }
            ]
        })
    }
}

/// The two kinds of rules; each has its own id space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    /// Exact 5-tuple rules (`FLOWS`).
    Flow,
    /// Destination prefix rules (`PREFIXES`).
    Prefix,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flow => "flow",
            Self::Prefix => "prefix",
        })
    }
}

/// A rule that is not valid, naming the field at fault.
///
/// The message is a sentence: ``Field `dst`: "10.0.0.300" is not an IPv4 or
/// IPv6 address.``, or for a rule inside a list, ``Rule 3: field `dst`:
/// ...``.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct RuleError {
    field: String,
    index: Option<usize>,
    reason: String,
}

impl RuleError {
    /// An error about `field`; `reason` is a sentence without the field
    /// prefix.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            index: None,
            reason: reason.into(),
        }
    }

    /// The JSON field at fault (`"rule"` when the rule as a whole is, e.g.
    /// not a JSON object).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The position of the rule in the list it came in, if it came in one.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// The reason, without the field prefix.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error for the rule at `index` of a list.
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    fn message(&self) -> String {
        match self.index {
            None => format!("Field `{}`: {}", self.field, self.reason),
            Some(i) => format!("Rule {i}: field `{}`: {}", self.field, self.reason),
        }
    }
}

type Result<T> = std::result::Result<T, RuleError>;

/// What a matching frame gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Redirect to the AF_XDP socket of the frame's rx queue, for this
    /// guest port.
    Guest {
        /// Guest port id (reported in the metadata block).
        port: u32,
    },
    /// Pass to the host stack.
    Host,
    /// Drop.
    Drop,
}

impl RuleAction {
    /// The action without its guest port.
    pub fn action(&self) -> Action {
        match self {
            Self::Guest { .. } => Action::Guest,
            Self::Host => Action::Host,
            Self::Drop => Action::Drop,
        }
    }

    /// The JSON name: `guest`, `host` or `drop`.
    pub fn name(&self) -> &'static str {
        self.action().name()
    }

    /// The guest port of action guest.
    pub fn guest_port(&self) -> Option<u32> {
        match self {
            Self::Guest { port } => Some(*port),
            _ => None,
        }
    }

    fn from_json(action: &str, guest: Option<&GuestRef>, guests: &dyn GuestNames) -> Result<Self> {
        let a = action
            .parse::<Action>()
            .map_err(|e| RuleError::new("action", e.to_string()))?;
        if a != Action::Guest {
            if guest.is_some() {
                return Err(RuleError::new(
                    "guest",
                    format!(
                        "a guest applies to action guest only, not to action {}.",
                        a.name()
                    ),
                ));
            }
            return Ok(if a == Action::Host {
                Self::Host
            } else {
                Self::Drop
            });
        }
        let port = match guest {
            None => guests
                .name_of(DEFAULT_GUEST_PORT)
                .map(|_| DEFAULT_GUEST_PORT)
                .ok_or_else(|| RuleError::new("guest", "name the guest this rule sends to."))?,
            Some(GuestRef::Name(n)) => guests
                .id_of(n)
                .ok_or_else(|| RuleError::new("guest", format!("no guest named {}.", echo(n))))?,
            Some(GuestRef::Id(i)) => guests
                .name_of(*i)
                .map(|_| *i)
                .ok_or_else(|| RuleError::new("guest", format!("no guest has id {i}.")))?,
        };
        Ok(Self::Guest { port })
    }

    fn to_bpf(self, rule_id: u32) -> RuleValue {
        let port = self.guest_port().unwrap_or(0);
        RuleValue {
            action: xdpath_common::Action::from(self.action()) as u32,
            port,
            rule_id,
            _pad: 0,
        }
    }

    fn from_bpf(v: &RuleValue) -> Result<Self> {
        match xdpath_common::Action::from_u32(v.action).map(Action::from) {
            Some(Action::Guest) => Ok(Self::Guest { port: v.port }),
            Some(Action::Host) if v.port == 0 => Ok(Self::Host),
            Some(Action::Drop) if v.port == 0 => Ok(Self::Drop),
            Some(a) => Err(RuleError::new(
                "guest",
                format!("action {a:?} carries guest port {}.", v.port),
            )),
            None => Err(RuleError::new(
                "action",
                format!("{} is not an action the classifier knows.", v.action),
            )),
        }
    }
}

/// `proto` as given: a name or a number, checked by `validate`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ProtoSpec {
    /// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"` (case-insensitive).
    Name(String),
    /// A protocol number; valid from 0 to 255.
    Number(u64),
}

impl From<&str> for ProtoSpec {
    fn from(s: &str) -> Self {
        Self::Name(s.to_string())
    }
}

impl From<u8> for ProtoSpec {
    fn from(n: u8) -> Self {
        Self::Number(n.into())
    }
}

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for ProtoSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Proto".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "tcp, udp, icmp (IPv4 only), icmpv6 (IPv6 only) or a protocol number 0-255; names are case-insensitive",
            "oneOf": [
                { "type": "string" },
                { "type": "integer", "minimum": 0, "maximum": 255 }
            ]
        })
    }
}

/// The canonical `proto` of a validated rule: the name when there is one
/// for `family`, the number otherwise.
fn proto_json(proto: u8, family: u8) -> ProtoSpec {
    match proto_name(proto, family) {
        Some(name) => ProtoSpec::Name(name.to_string()),
        None => ProtoSpec::Number(proto.into()),
    }
}

/// The name of protocol `proto` for `family`, if it has one.
fn proto_name(proto: u8, family: u8) -> Option<&'static str> {
    match (proto, family) {
        (IPPROTO_TCP, _) => Some("tcp"),
        (IPPROTO_UDP, _) => Some("udp"),
        (IPPROTO_ICMP, FAMILY_V4) => Some("icmp"),
        (IPPROTO_ICMPV6, FAMILY_V6) => Some("icmpv6"),
        _ => None,
    }
}

fn family_of(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

fn family_name(f: u8) -> &'static str {
    if f == FAMILY_V4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn parse_addr(field: &str, text: &str) -> Result<IpAddr> {
    text.parse::<IpAddr>().map_err(|_| {
        RuleError::new(
            field,
            format!("{} is not an IPv4 or IPv6 address.", echo(text)),
        )
    })
}

fn addr_bytes(a: &IpAddr) -> [u8; 16] {
    let mut o = [0u8; 16];
    match a {
        IpAddr::V4(v4) => o[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => o = v6.octets(),
    }
    o
}

fn addr_from_bytes(field: &str, family: u8, b: &[u8; 16]) -> Result<IpAddr> {
    match family {
        FAMILY_V4 => {
            if b[4..].iter().any(|&x| x != 0) {
                return Err(RuleError::new(
                    field,
                    "an IPv4 key has non-zero bytes after the address.",
                ));
            }
            Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(*b))),
        f => Err(RuleError::new(
            field,
            format!("{f} is not an address family (4 or 6)."),
        )),
    }
}

fn check_id(id: u32) -> Result<u32> {
    if id == 0 {
        return Err(RuleError::new("id", "rule ids start at 1."));
    }
    Ok(id)
}

/// An exact 5-tuple rule as given (JSON types checked, nothing else): the
/// JSON the API takes, and (with the id) the JSON it lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "openapi",
    schemars(rename = "FlowRule", deny_unknown_fields)
)]
pub struct FlowRuleSpec {
    /// The rule id (1 or more); assigned by the daemon if left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schemars(range(min = 1)))]
    pub id: Option<u32>,
    /// Source address, IPv4 or IPv6.
    pub src: String,
    /// Destination address, of the same family as `src`.
    pub dst: String,
    /// Protocol name or number.
    pub proto: ProtoSpec,
    /// Source port (0 = none); tcp and udp only.
    #[cfg_attr(feature = "openapi", schemars(default))]
    pub src_port: u16,
    /// Destination port (0 = none); tcp and udp only.
    #[cfg_attr(feature = "openapi", schemars(default))]
    pub dst_port: u16,
    /// What a matching frame gets: `guest`, `host` or `drop`
    /// (case-insensitive).
    #[cfg_attr(feature = "openapi", schemars(with = "Action"))]
    pub action: String,
    /// The guest, by name (or legacy numeric id), with action guest only;
    /// left out: the guest with id 1 if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestRef>,
}

impl FlowRuleSpec {
    /// The JSON fields, in the order they are listed (and shown as columns).
    pub const FIELDS: [&'static str; 8] = [
        "id", "src", "dst", "proto", "src_port", "dst_port", "action", "guest",
    ];

    /// A spec without id, ports or guest port.
    pub fn new(
        src: impl Into<String>,
        dst: impl Into<String>,
        proto: impl Into<ProtoSpec>,
        action: impl Into<String>,
    ) -> Self {
        Self {
            id: None,
            src: src.into(),
            dst: dst.into(),
            proto: proto.into(),
            src_port: 0,
            dst_port: 0,
            action: action.into(),
            guest: None,
        }
    }

    /// Parses one rule from JSON text.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        one_from_json(text)
    }

    /// Reads one rule from a JSON value (an object).
    pub fn from_value(v: &Value) -> Result<Self> {
        one_from_value(v)
    }

    /// Validates the spec into a rule. The rule gets the spec's id, or
    /// `assign` when the spec has none; its guest is resolved by `guests`
    /// (a guest it names must exist).
    pub fn validate(&self, assign: u32, guests: &dyn GuestNames) -> Result<FlowRule> {
        let id = check_id(self.id.unwrap_or(assign))?;
        let src = parse_addr("src", &self.src)?;
        let dst = parse_addr("dst", &self.dst)?;
        let family = family_of(&src);
        if family_of(&dst) != family {
            return Err(RuleError::new(
                "dst",
                format!(
                    "{dst} is {} but `src` {src} is {}; both must be of the same family.",
                    family_name(family_of(&dst)),
                    family_name(family)
                ),
            ));
        }
        let proto = match &self.proto {
            ProtoSpec::Number(n) => u8::try_from(*n).map_err(|_| {
                RuleError::new("proto", format!("{n} is not a protocol number (0 to 255)."))
            })?,
            ProtoSpec::Name(name) => match (name.to_ascii_lowercase().as_str(), family) {
                ("tcp", _) => IPPROTO_TCP,
                ("udp", _) => IPPROTO_UDP,
                ("icmp", FAMILY_V4) => IPPROTO_ICMP,
                ("icmpv6", FAMILY_V6) => IPPROTO_ICMPV6,
                ("icmp", _) => {
                    return Err(RuleError::new(
                        "proto",
                        "icmp is IPv4's; with IPv6 addresses use icmpv6.",
                    ))
                }
                ("icmpv6", _) => {
                    return Err(RuleError::new(
                        "proto",
                        "icmpv6 is IPv6's; with IPv4 addresses use icmp.",
                    ))
                }
                _ => {
                    return Err(RuleError::new(
                        "proto",
                        format!(
                            "{} is not a protocol name (tcp, udp, icmp, icmpv6); \
                             give other protocols as a number 0 to 255.",
                            echo(name)
                        ),
                    ))
                }
            },
        };
        for (field, port) in [("src_port", self.src_port), ("dst_port", self.dst_port)] {
            if port != 0 && proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(RuleError::new(
                    field,
                    format!(
                        "ports apply to tcp and udp only; protocol {} matches with port 0 \
                         (leave the port out).",
                        proto_label(proto, family)
                    ),
                ));
            }
        }
        let action = RuleAction::from_json(&self.action, self.guest.as_ref(), guests)?;
        Ok(FlowRule {
            id,
            src,
            dst,
            proto,
            src_port: self.src_port,
            dst_port: self.dst_port,
            action,
        })
    }
}

fn proto_label(proto: u8, family: u8) -> String {
    match proto_json(proto, family) {
        ProtoSpec::Name(n) => n,
        ProtoSpec::Number(n) => n.to_string(),
    }
}

/// A destination prefix rule as given (JSON types checked, nothing else):
/// the JSON the API takes, and (with the id) the JSON it lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "openapi",
    schemars(rename = "PrefixRule", deny_unknown_fields)
)]
pub struct PrefixRuleSpec {
    /// The rule id (1 or more); assigned by the daemon if left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schemars(range(min = 1)))]
    pub id: Option<u32>,
    /// Destination prefix `address/length` with zero host bits, IPv4 or
    /// IPv6.
    pub prefix: String,
    /// What a matching frame gets: `guest`, `host` or `drop`
    /// (case-insensitive).
    #[cfg_attr(feature = "openapi", schemars(with = "Action"))]
    pub action: String,
    /// The guest, by name (or legacy numeric id), with action guest only;
    /// left out: the guest with id 1 if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestRef>,
}

impl PrefixRuleSpec {
    /// The JSON fields, in the order they are listed (and shown as columns).
    pub const FIELDS: [&'static str; 4] = ["id", "prefix", "action", "guest"];

    /// A spec without id or guest port.
    pub fn new(prefix: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            id: None,
            prefix: prefix.into(),
            action: action.into(),
            guest: None,
        }
    }

    /// Parses one rule from JSON text.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        one_from_json(text)
    }

    /// Reads one rule from a JSON value (an object).
    pub fn from_value(v: &Value) -> Result<Self> {
        one_from_value(v)
    }

    /// Validates the spec into a rule. The rule gets the spec's id, or
    /// `assign` when the spec has none; its guest is resolved by `guests`
    /// (a guest it names must exist).
    pub fn validate(&self, assign: u32, guests: &dyn GuestNames) -> Result<PrefixRule> {
        let id = check_id(self.id.unwrap_or(assign))?;
        let text = &self.prefix;
        let quoted = || echo(text);
        let Some((a, l)) = text.split_once('/') else {
            return Err(RuleError::new(
                "prefix",
                format!(
                    "{} is not a prefix of the form address/length, such as 10.0.0.0/8.",
                    quoted()
                ),
            ));
        };
        let addr = a.parse::<IpAddr>().map_err(|_| {
            RuleError::new(
                "prefix",
                format!(
                    "{} in {} is not an IPv4 or IPv6 address.",
                    echo(a),
                    quoted()
                ),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) {
            l.parse::<u32>().ok()
        } else {
            None
        }
        .filter(|&n| n <= max)
        .ok_or_else(|| {
            RuleError::new(
                "prefix",
                format!(
                    "{} in {} is not a prefix length for {} (0 to {max}).",
                    echo(l),
                    quoted(),
                    family_name(family_of(&addr))
                ),
            )
        })? as u8;
        let net = mask(&addr, len);
        if net != addr {
            return Err(RuleError::new(
                "prefix",
                format!(
                    "{} has host bits set; the network is {net}/{len}.",
                    quoted()
                ),
            ));
        }
        let action = RuleAction::from_json(&self.action, self.guest.as_ref(), guests)?;
        Ok(PrefixRule {
            id,
            addr,
            len,
            action,
        })
    }
}

/// `addr` with everything after the first `len` bits cleared.
fn mask(addr: &IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(*a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(*a) & m))
        }
    }
}

/// A validated exact rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowRule {
    /// The rule id (1 or more), reported in the metadata block.
    pub id: u32,
    /// Source address.
    pub src: IpAddr,
    /// Destination address, of the same family as `src`.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port; non-zero only for TCP and UDP.
    pub src_port: u16,
    /// Destination port; non-zero only for TCP and UDP.
    pub dst_port: u16,
    /// What a matching frame gets.
    pub action: RuleAction,
}

impl FlowRule {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub fn family(&self) -> u8 {
        family_of(&self.src)
    }

    /// The BPF key of this rule in generation `gen`.
    pub fn bpf_key(&self, gen: u8) -> FlowKey {
        FlowKey {
            gen,
            family: self.family(),
            proto: self.proto,
            _pad: 0,
            src_port: self.src_port.to_be(),
            dst_port: self.dst_port.to_be(),
            src: addr_bytes(&self.src),
            dst: addr_bytes(&self.dst),
        }
    }

    /// The BPF value of this rule.
    pub fn bpf_value(&self) -> RuleValue {
        self.action.to_bpf(self.id)
    }

    /// Reads a rule back from a map entry (any generation). Fails for
    /// entries the daemon's flow table never writes.
    pub fn from_bpf(key: &FlowKey, value: &RuleValue) -> Result<Self> {
        if key._pad != 0 || value._pad != 0 {
            return Err(RuleError::new(
                "rule",
                "the map entry has non-zero padding.",
            ));
        }
        let src = addr_from_bytes("src", key.family, &key.src)?;
        let dst = addr_from_bytes("dst", key.family, &key.dst)?;
        let rule = FlowRule {
            id: check_id(value.rule_id)?,
            src,
            dst,
            proto: key.proto,
            src_port: u16::from_be(key.src_port),
            dst_port: u16::from_be(key.dst_port),
            action: RuleAction::from_bpf(value)?,
        };
        // Round trip through the spec, so the same rules apply.
        rule.to_spec().validate(rule.id, &LegacyIds)
    }

    /// The spec that validates to this rule.
    pub fn to_spec(&self) -> FlowRuleSpec {
        FlowRuleSpec {
            id: Some(self.id),
            src: self.src.to_string(),
            dst: self.dst.to_string(),
            proto: proto_json(self.proto, self.family()),
            src_port: self.src_port,
            dst_port: self.dst_port,
            action: self.action.name().to_string(),
            guest: self.action.guest_port().map(GuestRef::Id),
        }
    }
}

/// A validated prefix rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixRule {
    /// The rule id (1 or more), reported in the metadata block.
    pub id: u32,
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length in address bits.
    pub len: u8,
    /// What a matching frame gets.
    pub action: RuleAction,
}

impl PrefixRule {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub fn family(&self) -> u8 {
        family_of(&self.addr)
    }

    /// The BPF key of this rule in generation `gen`: the prefix length in
    /// address bits (as the classifier's `insert_prefix` takes it) and the
    /// data.
    pub fn bpf_key(&self, gen: u8) -> (u32, PrefixData) {
        (
            self.len.into(),
            PrefixData {
                gen,
                family: self.family(),
                addr: addr_bytes(&self.addr),
                _pad: [0; 2],
            },
        )
    }

    /// The BPF value of this rule.
    pub fn bpf_value(&self) -> RuleValue {
        self.action.to_bpf(self.id)
    }

    /// Reads a rule back from a map entry (`prefix_len` in address bits).
    pub fn from_bpf(prefix_len: u32, data: &PrefixData, value: &RuleValue) -> Result<Self> {
        if data._pad != [0; 2] || value._pad != 0 {
            return Err(RuleError::new(
                "rule",
                "the map entry has non-zero padding.",
            ));
        }
        let addr = addr_from_bytes("prefix", data.family, &data.addr)?;
        let rule = PrefixRule {
            id: check_id(value.rule_id)?,
            addr,
            len: u8::try_from(prefix_len).map_err(|_| {
                RuleError::new("prefix", format!("length {prefix_len} is too long."))
            })?,
            action: RuleAction::from_bpf(value)?,
        };
        rule.to_spec().validate(rule.id, &LegacyIds)
    }

    /// The spec that validates to this rule.
    pub fn to_spec(&self) -> PrefixRuleSpec {
        PrefixRuleSpec {
            id: Some(self.id),
            prefix: PrefixText(self.addr, self.len).to_string(),
            action: self.action.name().to_string(),
            guest: self.action.guest_port().map(GuestRef::Id),
        }
    }
}
// ----- JSON -----
//
// One visitor reads a rule (`read_object`): an object, field by field; a
// known field's value is kept as JSON, at most once; an unknown or repeated
// field is noted and its value skipped. The values are then typed by
// `Wire::from_fields`, by name, so each message names its field and says
// what was given. A refusal is kept as a value (`Checked`), not as a serde
// error, so a list can report its first bad rule with the rule's index and
// still read on (malformed JSON further on is reported as such), and so a
// list can be read from a stream one rule at a time, without its text
// (`read_list`). Nothing a message repeats from the input is longer than
// `ECHO_MAX` characters (`echo`).

/// How many characters of a value given by a client an error message
/// repeats; the rest is cut (see [`echo`]).
pub const ECHO_MAX: usize = 64;

/// `text` quoted for a message, cut after [`ECHO_MAX`] characters (with its
/// whole length said), so that an error never sends a huge value back.
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_MAX) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// `name` cut after [`ECHO_MAX`] characters, unquoted (a field name as the
/// client spelled it).
fn echo_name(name: &str) -> String {
    match name.char_indices().nth(ECHO_MAX) {
        None => name.to_string(),
        Some((cut, _)) => format!("{}...", &name[..cut]),
    }
}

/// What reading JSON needs to know about a rule type.
trait Wire: Sized {
    /// "an exact rule" / "a prefix rule".
    const WHAT: &'static str;
    /// The fields, as named in JSON (at most 32).
    const FIELDS: &'static [&'static str];
    /// Types each value, naming its field on error.
    fn from_fields(f: Fields) -> Result<Self>;
}

/// The values of a rule object's known fields, by their place in
/// `Wire::FIELDS`; `null` reads as absent.
struct Fields {
    names: &'static [&'static str],
    values: Vec<Option<Value>>,
}

impl Fields {
    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.values.get_mut(i).and_then(Option::take)
    }
}

impl Wire for FlowRuleSpec {
    const WHAT: &'static str = "an exact rule";
    const FIELDS: &'static [&'static str] = &Self::FIELDS;

    fn from_fields(mut f: Fields) -> Result<Self> {
        const NEEDS: &str = "an exact rule needs src, dst, proto and action";
        Ok(Self {
            id: opt_u32("id", f.take("id"))?,
            src: req_str("src", f.take("src"), NEEDS)?,
            dst: req_str("dst", f.take("dst"), NEEDS)?,
            proto: req_proto(f.take("proto"))?,
            src_port: opt_port("src_port", f.take("src_port"))?,
            dst_port: opt_port("dst_port", f.take("dst_port"))?,
            action: req_str("action", f.take("action"), NEEDS)?,
            guest: opt_guest(f.take("guest"))?,
        })
    }
}

impl Wire for PrefixRuleSpec {
    const WHAT: &'static str = "a prefix rule";
    const FIELDS: &'static [&'static str] = &Self::FIELDS;

    fn from_fields(mut f: Fields) -> Result<Self> {
        const NEEDS: &str = "a prefix rule needs prefix and action";
        Ok(Self {
            id: opt_u32("id", f.take("id"))?,
            prefix: req_str("prefix", f.take("prefix"), NEEDS)?,
            action: req_str("action", f.take("action"), NEEDS)?,
            guest: opt_guest(f.take("guest"))?,
        })
    }
}

fn req_str(field: &str, v: Option<Value>, needs: &str) -> Result<String> {
    match v {
        None => Err(RuleError::new(field, format!("missing; {needs}."))),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(RuleError::new(
            field,
            format!("expected a string, got {}.", show(&v)),
        )),
    }
}

fn opt_u32(field: &str, v: Option<Value>) -> Result<Option<u32>> {
    v.map(|v| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                RuleError::new(
                    field,
                    format!("expected an integer 0 to {}, got {}.", u32::MAX, show(&v)),
                )
            })
    })
    .transpose()
}

/// A guest name (checked when the rule is validated) or a legacy id.
fn opt_guest(v: Option<Value>) -> Result<Option<GuestRef>> {
    v.map(|v| match v {
        Value::String(s) => Ok(GuestRef::Name(s)),
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(GuestRef::Id)
            .ok_or_else(|| {
                RuleError::new(
                    "guest",
                    format!(
                        "expected a guest name or a guest id 0 to {}, got {}.",
                        u32::MAX,
                        show(&v)
                    ),
                )
            }),
    })
    .transpose()
}

fn opt_port(field: &str, v: Option<Value>) -> Result<u16> {
    match v {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                RuleError::new(
                    field,
                    format!("{} is not a port number (0 to 65535).", show(&v)),
                )
            }),
    }
}

/// A name, or a number (its range is `validate`'s to check).
fn req_proto(v: Option<Value>) -> Result<ProtoSpec> {
    match v {
        None => Err(RuleError::new(
            "proto",
            "missing; an exact rule needs src, dst, proto and action.",
        )),
        Some(Value::String(s)) => Ok(ProtoSpec::Name(s)),
        Some(v) => v.as_u64().map(ProtoSpec::Number).ok_or_else(|| {
            RuleError::new(
                "proto",
                format!(
                    "expected a protocol name or a number 0 to 255, got {}.",
                    show(&v)
                ),
            )
        }),
    }
}

/// A short rendering of a JSON value for messages: at most 40 characters,
/// written only that far (a huge value is not serialized whole).
fn show(v: &Value) -> String {
    const MAX: usize = 40;
    /// Collects up to `MAX` characters, then refuses more.
    struct Upto(String, usize);
    impl fmt::Write for Upto {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.1 == MAX {
                    return Err(fmt::Error);
                }
                self.0.push(c);
                self.1 += 1;
            }
            Ok(())
        }
    }
    let mut out = Upto(String::new(), 0);
    match fmt::write(&mut out, format_args!("{v}")) {
        Ok(()) => out.0,
        Err(_) => format!("{}...", out.0),
    }
}

/// What a value that is not an object is, for a message: `7`, `null`,
/// `"x"`, `an array`.
struct NotObject(String);

/// One rule read from JSON: the rule, or why it is refused. The refusal is
/// kept as a value, so a list can report it with the rule's index.
struct Checked<T>(Result<T>);

/// Reads a rule object (the shared part of both visitors).
fn read_object<'de, T: Wire, A: MapAccess<'de>>(
    mut map: A,
) -> std::result::Result<Checked<T>, A::Error> {
    let mut values: Vec<Option<Value>> = vec![None; T::FIELDS.len()];
    let mut seen = 0u64;
    let mut bad: Option<RuleError> = None;
    while let Some(key) = map.next_key_seed(KeySeed(T::FIELDS))? {
        match (key, &bad) {
            (_, Some(_)) => {
                map.next_value::<IgnoredAny>()?;
            }
            (Key::Unknown(name), None) => {
                bad = Some(unknown_field::<T>(&name));
                map.next_value::<IgnoredAny>()?;
            }
            (Key::Known(i), None) if seen & (1 << i) != 0 => {
                bad = Some(RuleError::new(
                    T::FIELDS.get(i).copied().unwrap_or("rule"),
                    "given twice.",
                ));
                map.next_value::<IgnoredAny>()?;
            }
            (Key::Known(i), None) => {
                seen |= 1 << i;
                let v = map.next_value::<Option<Value>>()?;
                if let Some(slot) = values.get_mut(i) {
                    *slot = v;
                }
            }
        }
    }
    Ok(Checked(match bad {
        Some(e) => Err(e),
        None => T::from_fields(Fields {
            names: T::FIELDS,
            values,
        }),
    }))
}

/// A key of a rule object: the place of a known field, or an unknown name
/// (cut to [`ECHO_MAX`] characters). Known names are matched without
/// allocating.
enum Key {
    Known(usize),
    Unknown(String),
}

struct KeySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key, E> {
        Ok(match self.0.iter().position(|n| *n == v) {
            Some(i) if i < 64 => Key::Known(i),
            _ => Key::Unknown(echo_name(v)),
        })
    }
}

/// Reads a rule that must be an object (plain serde: anything else is
/// serde's own `invalid type` error).
struct ObjectOnly<T>(std::marker::PhantomData<T>);

impl<'de, T: Wire> Visitor<'de> for ObjectOnly<T> {
    type Value = Checked<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (a JSON object)", T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Checked<T>, A::Error> {
        read_object(map)
    }
}

/// Reads any JSON value as a rule: an object is read as one; anything else
/// is a refusal that says what it is.
struct AnyValue<T>(std::marker::PhantomData<T>);

impl<T> AnyValue<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<'de, T: Wire> DeserializeSeed<'de> for AnyValue<T> {
    type Value = Checked<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Checked<T>, D::Error> {
        d.deserialize_any(self)
    }
}

fn not_object<T: Wire>(what: NotObject) -> Checked<T> {
    Checked(Err(RuleError::new(
        "rule",
        format!("{} must be a JSON object, not {}.", T::WHAT, what.0),
    )))
}

/// The `visit_*` methods of every JSON value but an object and an array:
/// `$wrap(self, NotObject)` is the visitor's answer for each.
macro_rules! visit_scalars {
    ($out:ty, $wrap:expr) => {
        fn visit_bool<Er: de::Error>(self, v: bool) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject(v.to_string())))
        }
        fn visit_i64<Er: de::Error>(self, v: i64) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject(v.to_string())))
        }
        fn visit_u64<Er: de::Error>(self, v: u64) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject(v.to_string())))
        }
        fn visit_f64<Er: de::Error>(self, v: f64) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject(v.to_string())))
        }
        fn visit_str<Er: de::Error>(self, v: &str) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject(echo(v))))
        }
        fn visit_unit<Er: de::Error>(self) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject("null".into())))
        }
        fn visit_none<Er: de::Error>(self) -> std::result::Result<$out, Er> {
            Ok($wrap(self, NotObject("null".into())))
        }
    };
}

impl<'de, T: Wire> Visitor<'de> for AnyValue<T> {
    type Value = Checked<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (a JSON object)", T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Checked<T>, A::Error> {
        read_object(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Checked<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_object::<T>(NotObject("an array".into())))
    }

    visit_scalars!(Checked<T>, |_, what| not_object::<T>(what));
}

/// Why reading a list of rules stopped: a malformed list or rule, a rule
/// the caller refused, too many rules, or the source failing.
#[derive(Debug)]
pub enum ListError<E> {
    /// The text is not a JSON array of rules, or the rule at the index the
    /// error carries is not a rule (400). Malformed JSON anywhere is
    /// reported as such, before any other refusal.
    Rule(RuleError),
    /// The caller refused a rule (the first one it refused): its error.
    Refused(E),
    /// The list holds more than this many rules; reading stopped at the
    /// first one too many.
    TooMany(usize),
    /// Reading the text failed: the source's own error.
    Io(std::io::Error),
}

/// Where a list stands while it is read.
struct ListState<E> {
    /// The first rule refused, by the shape or by the caller.
    first_bad: Option<ListError<E>>,
    /// What the document is when it is not an array.
    not_list: Option<NotObject>,
    /// Rules read.
    count: usize,
    /// Reading stopped early: too many rules.
    stopped: bool,
}

/// Reads a JSON array of rules, handing each good rule to `each` in order
/// until one is refused; stops early after `max` rules.
struct ListVisitor<'s, T, E, F> {
    state: &'s mut ListState<E>,
    max: usize,
    each: F,
    kind: std::marker::PhantomData<T>,
}

/// The message of the serde error that ends reading early (never shown).
const STOP: &str = "xdpath: stop reading the list";

impl<'de, T, E, F> Visitor<'de> for ListVisitor<'_, T, E, F>
where
    T: Wire,
    F: FnMut(usize, T) -> std::result::Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of rules")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        loop {
            let index = self.state.count;
            if index >= self.max || self.state.first_bad.is_some() {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                if index >= self.max {
                    self.state.stopped = true;
                    return Err(de::Error::custom(STOP));
                }
            } else {
                match seq.next_element_seed(AnyValue::<T>::new())? {
                    None => return Ok(()),
                    Some(Checked(Ok(rule))) => {
                        if let Err(e) = (self.each)(index, rule) {
                            self.state.first_bad = Some(ListError::Refused(e));
                        }
                    }
                    Some(Checked(Err(e))) => {
                        self.state.first_bad = Some(ListError::Rule(e.at(index)));
                    }
                }
            }
            self.state.count = index.saturating_add(1);
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.state.not_list = Some(NotObject("an object".into()));
        Ok(())
    }

    visit_scalars!((), |me: Self, what| {
        me.state.not_list = Some(what);
    });
}

fn unknown_field<T: Wire>(name: &str) -> RuleError {
    RuleError::new(
        name,
        format!(
            "unknown field; {} has the fields {}.",
            T::WHAT,
            T::FIELDS.join(", ")
        ),
    )
}

fn not_json(e: &serde_json::Error) -> RuleError {
    RuleError::new("rule", format!("the request is not valid JSON ({e})."))
}

/// Reads a JSON array of rules from `de`: see [`read_flow_specs`].
fn read_list<'de, R, T, E>(
    mut de: serde_json::Deserializer<R>,
    max: usize,
    each: impl FnMut(usize, T) -> std::result::Result<(), E>,
) -> std::result::Result<usize, ListError<E>>
where
    R: serde_json::de::Read<'de>,
    T: Wire,
{
    let mut state = ListState {
        first_bad: None,
        not_list: None,
        count: 0,
        stopped: false,
    };
    let read = de.deserialize_any(ListVisitor {
        state: &mut state,
        max,
        each,
        kind: std::marker::PhantomData,
    });
    if state.stopped {
        return Err(state.first_bad.unwrap_or(ListError::TooMany(max)));
    }
    let ended = read.and_then(|()| de.end());
    if let Err(e) = ended {
        return Err(match e.classify() {
            serde_json::error::Category::Io => {
                let io: std::io::Error = e.into();
                match stream::rule_error(&io) {
                    // A string too long ends reading; a rule refused
                    // before it is still the first.
                    Some(long) => state.first_bad.unwrap_or(ListError::Rule(long)),
                    None => ListError::Io(io),
                }
            }
            _ => ListError::Rule(not_json(&e)),
        });
    }
    if let Some(what) = state.not_list {
        return Err(ListError::Rule(RuleError::new(
            "rules",
            format!("expected a JSON array of rules, not {}.", what.0),
        )));
    }
    match state.first_bad {
        Some(e) => Err(e),
        None => Ok(state.count),
    }
}

/// Reads a JSON array of exact rules from `reader` as it arrives (the body
/// of a bulk replace), without holding its text: each rule is handed to
/// `each` with its index, in order, until `each` refuses one; the rest is
/// still read, so malformed JSON further on is reported as such. Reading
/// stops at once when the list holds more than `max` rules, or holds a
/// string (a value or a field name) longer than [`MAX_STRING`] bytes (a
/// [`ListError::Rule`] naming the rule and the field): nothing held while
/// reading grows with the text but the rules `each` keeps. Returns how many
/// rules the list holds.
///
/// `reader` is read in pieces of up to 64 KiB (it needs no buffer of its
/// own).
pub fn read_flow_specs<R: std::io::Read, E>(
    reader: R,
    max: usize,
    each: impl FnMut(usize, FlowRuleSpec) -> std::result::Result<(), E>,
) -> std::result::Result<usize, ListError<E>> {
    stream::read(reader, max, each)
}

/// [`read_flow_specs`] for prefix rules.
pub fn read_prefix_specs<R: std::io::Read, E>(
    reader: R,
    max: usize,
    each: impl FnMut(usize, PrefixRuleSpec) -> std::result::Result<(), E>,
) -> std::result::Result<usize, ListError<E>> {
    stream::read(reader, max, each)
}

fn one_from_json<T: Wire>(text: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let Checked(rule) = AnyValue::<T>::new()
        .deserialize(&mut de)
        .map_err(|e| not_json(&e))?;
    let rule = rule?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(rule)
}

fn one_from_value<T: Wire>(v: &Value) -> Result<T> {
    let Checked(rule) = AnyValue::<T>::new()
        .deserialize(v)
        .map_err(|e| RuleError::new("rule", format!("{} is not readable: {e}.", T::WHAT)))?;
    rule
}

fn list_from_json<T: Wire>(text: &[u8]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let read = read_list(
        serde_json::Deserializer::from_slice(text),
        usize::MAX,
        |_, rule| {
            out.push(rule);
            Ok::<(), std::convert::Infallible>(())
        },
    );
    match read {
        Ok(_) => Ok(out),
        Err(ListError::Rule(e)) => Err(e),
        Err(ListError::Refused(never)) => match never {},
        // Neither happens with a slice and no limit; say so if it does.
        Err(ListError::TooMany(_) | ListError::Io(_)) => Err(RuleError::new(
            "rules",
            "the list could not be read (internal error).",
        )),
    }
}

/// Parses a JSON array of exact rules (the body of a bulk replace). Errors
/// carry the index of the rule at fault.
pub fn flow_specs_from_json(text: &[u8]) -> Result<Vec<FlowRuleSpec>> {
    list_from_json(text)
}

/// Parses a JSON array of prefix rules (the body of a bulk replace). Errors
/// carry the index of the rule at fault.
pub fn prefix_specs_from_json(text: &[u8]) -> Result<Vec<PrefixRuleSpec>> {
    list_from_json(text)
}

/// Plain serde: the same reading, with every refusal as a sentence naming
/// its field (malformed JSON, and a rule that is not an object, keep
/// serde's own message).
fn plain<'de, T: Wire, D: Deserializer<'de>>(d: D) -> std::result::Result<T, D::Error> {
    let Checked(rule) = d.deserialize_map(ObjectOnly(std::marker::PhantomData))?;
    rule.map_err(de::Error::custom)
}

impl<'de> Deserialize<'de> for FlowRuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        plain(d)
    }
}

impl<'de> Deserialize<'de> for PrefixRuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        plain(d)
    }
}

/// A value serialized as its `Display` text, written straight into the
/// output (no string is built: a million rules are listed and snapshotted).
struct AsText<T>(T);

impl<T: fmt::Display> Serialize for AsText<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `address/length`.
struct PrefixText(IpAddr, u8);

impl fmt::Display for PrefixText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// The `guest` field of a listed rule: the guest's name when `names` is
/// given and knows it, else its id.
fn serialize_guest<S: serde::ser::SerializeStruct>(
    st: &mut S,
    port: Option<u32>,
    names: Option<&dyn GuestNames>,
) -> std::result::Result<(), S::Error> {
    match (port, names) {
        (None, _) => st.skip_field("guest"),
        (Some(p), Some(n)) => match n.name_of(p) {
            Some(name) => st.serialize_field("guest", &name),
            None => st.serialize_field("guest", &p),
        },
        (Some(p), None) => st.serialize_field("guest", &p),
    }
}

impl FlowRule {
    fn serialize_as<S: Serializer>(
        &self,
        s: S,
        names: Option<&dyn GuestNames>,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let guest = self.action.guest_port();
        let mut st = s.serialize_struct("FlowRule", 7 + usize::from(guest.is_some()))?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("src", &AsText(self.src))?;
        st.serialize_field("dst", &AsText(self.dst))?;
        match proto_name(self.proto, self.family()) {
            Some(name) => st.serialize_field("proto", name)?,
            None => st.serialize_field("proto", &u64::from(self.proto))?,
        }
        st.serialize_field("src_port", &self.src_port)?;
        st.serialize_field("dst_port", &self.dst_port)?;
        st.serialize_field("action", self.action.name())?;
        serialize_guest(&mut st, guest, names)?;
        st.end()
    }

    /// The rule as the API lists it: its guest by name (by id when
    /// `guests` does not know it).
    pub fn listed<'a>(&'a self, guests: &'a dyn GuestNames) -> Listed<'a, FlowRule> {
        Listed { rule: self, guests }
    }
}

impl PrefixRule {
    fn serialize_as<S: Serializer>(
        &self,
        s: S,
        names: Option<&dyn GuestNames>,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let guest = self.action.guest_port();
        let mut st = s.serialize_struct("PrefixRule", 3 + usize::from(guest.is_some()))?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("prefix", &AsText(PrefixText(self.addr, self.len)))?;
        st.serialize_field("action", self.action.name())?;
        serialize_guest(&mut st, guest, names)?;
        st.end()
    }

    /// The rule as the API lists it: its guest by name (by id when
    /// `guests` does not know it).
    pub fn listed<'a>(&'a self, guests: &'a dyn GuestNames) -> Listed<'a, PrefixRule> {
        Listed { rule: self, guests }
    }
}

/// A rule as the API lists it, its guest by name ([`FlowRule::listed`],
/// [`PrefixRule::listed`]); [`ListedRules`] does a whole list.
pub struct Listed<'a, R> {
    rule: &'a R,
    guests: &'a dyn GuestNames,
}

impl Serialize for Listed<'_, FlowRule> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.rule.serialize_as(s, Some(self.guests))
    }
}

impl Serialize for Listed<'_, PrefixRule> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.rule.serialize_as(s, Some(self.guests))
    }
}

/// A list of rules as the API lists it (guests by name), serialized
/// straight from the rules.
pub struct ListedRules<'a, R> {
    /// The rules.
    pub rules: &'a [R],
    /// Their guests' names.
    pub guests: &'a dyn GuestNames,
}

impl<R> Serialize for ListedRules<'_, R>
where
    for<'b> Listed<'b, R>: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.rules.iter().map(|rule| Listed {
            rule,
            guests: self.guests,
        }))
    }
}

/// The stored form (the state file): the guest by id, with its id, both
/// ports always present; the same fields in the same order as
/// [`FlowRule::to_spec`]. The API lists [`FlowRule::listed`].
impl Serialize for FlowRule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.serialize_as(s, None)
    }
}

/// The stored form (the state file): the guest by id, with its id. The
/// API lists [`PrefixRule::listed`].
impl Serialize for PrefixRule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.serialize_as(s, None)
    }
}

/// Validates a stored rule (e.g. from the state file), which must carry
/// its id.
fn stored<T, E: de::Error>(
    id: Option<u32>,
    validate: impl FnOnce(u32) -> Result<T>,
) -> std::result::Result<T, E> {
    let id =
        id.ok_or_else(|| E::custom(RuleError::new("id", "missing; a stored rule has its id.")))?;
    validate(id).map_err(E::custom)
}

/// Reads a rule with its id (a stored rule, e.g. from the state file).
impl<'de> Deserialize<'de> for FlowRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let spec = FlowRuleSpec::deserialize(d)?;
        stored(spec.id, |id| spec.validate(id, &LegacyIds))
    }
}

/// Reads a rule with its id (a stored rule, e.g. from the state file).
impl<'de> Deserialize<'de> for PrefixRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let spec = PrefixRuleSpec::deserialize(d)?;
        stored(spec.id, |id| spec.validate(id, &LegacyIds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(json: &str) -> Result<FlowRule> {
        FlowRuleSpec::from_json(json.as_bytes())?.validate(99, &LegacyIds)
    }

    fn prefix(json: &str) -> Result<PrefixRule> {
        PrefixRuleSpec::from_json(json.as_bytes())?.validate(99, &LegacyIds)
    }

    #[test]
    fn the_documented_examples_parse() {
        let r = flow(
            r#"{"id": 7, "src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp",
                "src_port": 1000, "dst_port": 53, "action": "guest", "guest": 1}"#,
        )
        .unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.src, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((r.proto, r.src_port, r.dst_port), (17, 1000, 53));
        assert_eq!(r.action, RuleAction::Guest { port: 1 });
        let p = prefix(r#"{"id": 8, "prefix": "10.88.0.0/16", "action": "drop"}"#).unwrap();
        assert_eq!((p.id, p.len, p.action), (8, 16, RuleAction::Drop));
    }

    #[test]
    fn stored_rules_round_trip_and_need_their_id() {
        let r = flow(
            r#"{"id": 7, "src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "action": "drop"}"#,
        )
        .unwrap();
        let back: FlowRule = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let p = prefix(r#"{"id": 8, "prefix": "10.88.0.0/16", "action": "drop"}"#).unwrap();
        let back: PrefixRule = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        for e in [
            serde_json::from_str::<FlowRule>(
                r#"{"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "action": "drop"}"#,
            )
            .unwrap_err(),
            serde_json::from_str::<PrefixRule>(r#"{"prefix": "10.88.0.0/16", "action": "drop"}"#)
                .unwrap_err(),
        ] {
            assert!(e.to_string().contains("a stored rule has its id"), "{e}");
        }
    }

    #[test]
    fn defaults_and_assigned_ids() {
        let r =
            flow(r#"{"src": "fd00::2", "dst": "fd00::1", "proto": "icmpv6", "action": "guest"}"#)
                .unwrap();
        assert_eq!(r.id, 99);
        assert_eq!((r.proto, r.src_port, r.dst_port), (58, 0, 0));
        assert_eq!(
            r.action,
            RuleAction::Guest {
                port: DEFAULT_GUEST_PORT
            }
        );
        let r = flow(r#"{"id": null, "src": "1.2.3.4", "dst": "1.2.3.5", "proto": 47, "action": "HOST", "guest": null}"#)
            .unwrap();
        assert_eq!((r.id, r.proto, r.action), (99, 47, RuleAction::Host));
    }

    fn err_field(r: Result<impl fmt::Debug>) -> (String, String) {
        let e = r.expect_err("must be refused");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("`{}`", e.field())),
            "message must name the field: {msg}"
        );
        assert!(msg.ends_with('.'), "a sentence: {msg}");
        (e.field().to_string(), msg)
    }

    #[test]
    fn bad_flow_rules_name_their_field() {
        let base = |over: &str| {
            let mut v: Value = serde_json::from_str(
                r#"{"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "action": "drop"}"#,
            )
            .unwrap();
            let o: Value = serde_json::from_str(over).unwrap();
            for (k, x) in o.as_object().unwrap() {
                v[k] = x.clone();
            }
            v.to_string()
        };
        let cases = [
            (
                r#"{"dst": "10.0.0.300"}"#,
                "dst",
                "is not an IPv4 or IPv6 address",
            ),
            (r#"{"src": "fe80::1%eth0"}"#, "src", "is not an IPv4"),
            (r#"{"dst": "fd00::1"}"#, "dst", "same family"),
            (r#"{"dst": 5}"#, "dst", "expected a string"),
            (r#"{"proto": "sctp"}"#, "proto", "not a protocol name"),
            (r#"{"proto": 300}"#, "proto", "0 to 255"),
            (r#"{"proto": 99999999999}"#, "proto", "0 to 255"),
            (r#"{"proto": -1}"#, "proto", "expected a protocol name"),
            (r#"{"proto": "icmpv6"}"#, "proto", "IPv6's"),
            (
                r#"{"proto": "icmp", "src_port": 5}"#,
                "src_port",
                "tcp and udp only",
            ),
            (
                r#"{"proto": 1, "dst_port": 5}"#,
                "dst_port",
                "tcp and udp only",
            ),
            (r#"{"dst_port": 70000}"#, "dst_port", "not a port number"),
            (r#"{"dst_port": "53"}"#, "dst_port", "not a port number"),
            (r#"{"action": "forward"}"#, "action", "not an action"),
            (r#"{"guest": 3}"#, "guest", "action guest only"),
            (r#"{"id": 0}"#, "id", "start at 1"),
            (r#"{"id": 4294967296}"#, "id", "expected an integer"),
            (r#"{"id": 1.5}"#, "id", "expected an integer"),
            (r#"{"colour": "red"}"#, "colour", "unknown field"),
            (r#"{"src": null}"#, "src", "missing"),
        ];
        for (over, field, text) in cases {
            let (f, msg) = err_field(flow(&base(over)));
            assert_eq!(f, field, "{over}: {msg}");
            assert!(msg.contains(text), "{over}: {msg}");
        }
        let (f, _) = err_field(flow("[1]"));
        assert_eq!(f, "rule");
        let (f, _) = err_field(flow("{"));
        assert_eq!(f, "rule");
        let e = flow(&base(r#"{"dst": "10.0.0.300"}"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Field `dst`: \"10.0.0.300\" is not an IPv4 or IPv6 address."
        );
    }

    #[test]
    fn bad_prefix_rules_name_their_field() {
        let cases = [
            (
                r#"{"prefix": "10.88.0.0", "action": "drop"}"#,
                "prefix",
                "address/length",
            ),
            (
                r#"{"prefix": "10.88.0.0/33", "action": "drop"}"#,
                "prefix",
                "0 to 32",
            ),
            (
                r#"{"prefix": "fd00::/129", "action": "drop"}"#,
                "prefix",
                "0 to 128",
            ),
            (
                r#"{"prefix": "10.88.0.0/+8", "action": "drop"}"#,
                "prefix",
                "prefix length",
            ),
            (
                r#"{"prefix": "10.88.0.0/", "action": "drop"}"#,
                "prefix",
                "prefix length",
            ),
            (
                r#"{"prefix": "10.88.1.0/16", "action": "drop"}"#,
                "prefix",
                "host bits set; the network is 10.88.0.0/16",
            ),
            (
                r#"{"prefix": "fd00::1/64", "action": "drop"}"#,
                "prefix",
                "fd00::/64",
            ),
            (
                r#"{"prefix": "x/8", "action": "drop"}"#,
                "prefix",
                "not an IPv4",
            ),
            (
                r#"{"prefix": "10.0.0.0/8", "action": "host", "guest": 2}"#,
                "guest",
                "action guest only",
            ),
            (r#"{"prefix": "10.0.0.0/8"}"#, "action", "missing"),
            (
                r#"{"prefix": "10.0.0.0/8", "action": "drop", "src": "1.1.1.1"}"#,
                "src",
                "unknown field",
            ),
        ];
        for (json, field, text) in cases {
            let (f, msg) = err_field(prefix(json));
            assert_eq!(f, field, "{json}: {msg}");
            assert!(msg.contains(text), "{json}: {msg}");
        }
        let p = prefix(r#"{"prefix": "0.0.0.0/0", "action": "guest", "guest": 4}"#).unwrap();
        assert_eq!((p.len, p.action), (0, RuleAction::Guest { port: 4 }));
        let p = prefix(r#"{"prefix": "::/0", "action": "host"}"#).unwrap();
        assert_eq!(p.len, 0);
    }

    #[test]
    fn json_shape_errors_name_their_field() {
        let cases: [(&[u8], &str, &str); 7] = [
            (
                br#"{"src": "1.1.1.1", "src": "1.1.1.2"}"#,
                "src",
                "given twice",
            ),
            (b"[1]", "rule", "must be a JSON object, not an array"),
            (b"7", "rule", "not 7"),
            (b"null", "rule", "not null"),
            (br#""x""#, "rule", "not \"x\""),
            (b"{", "rule", "not valid JSON"),
            (
                br#"{"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"} x"#,
                "rule",
                "not valid JSON",
            ),
        ];
        for (text, field, says) in cases {
            let e = FlowRuleSpec::from_json(text).unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(e.to_string().contains(says), "{says}: {e}");
        }
        // Through plain serde (e.g. an HTTP framework's JSON extractor) the
        // message is the same sentence.
        let e = serde_json::from_str::<Vec<PrefixRuleSpec>>(
            r#"[{"prefix": "1.0.0.0/8", "action": 5}]"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Field `action`: expected a string, got 5."),
            "{e}"
        );
        let v: Value =
            serde_json::from_str(r#"{"prefix": "1.0.0.0/8", "action": "drop", "guest": -1}"#)
                .unwrap();
        assert_eq!(PrefixRuleSpec::from_value(&v).unwrap_err().field(), "guest");
    }

    #[test]
    fn list_errors_carry_the_index() {
        let e = flow_specs_from_json(
            br#"[{"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"},
                 {"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop", "x": 1}]"#,
        )
        .unwrap_err();
        assert_eq!((e.field(), e.index()), ("x", Some(1)));
        assert!(e.to_string().starts_with("Rule 1: field `x`:"), "{e}");
        let e = prefix_specs_from_json(br#"{"prefix": "1.0.0.0/8"}"#).unwrap_err();
        assert_eq!(e.field(), "rules");
    }

    #[test]
    fn list_shape_errors_carry_the_index_and_the_first_bad_rule_wins() {
        let ok = r#"{"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"}"#;
        let list = |items: &[&str]| format!("[{}]", items.join(","));
        let e = flow_specs_from_json(list(&[ok, ok, "7"]).as_bytes()).unwrap_err();
        assert_eq!((e.field(), e.index()), ("rule", Some(2)));
        assert_eq!(
            e.to_string(),
            "Rule 2: field `rule`: an exact rule must be a JSON object, not 7."
        );
        let dup = r#"{"src": "1.1.1.1", "src": "1.1.1.3", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"}"#;
        let e = flow_specs_from_json(list(&[ok, dup]).as_bytes()).unwrap_err();
        assert_eq!((e.field(), e.index()), ("src", Some(1)));
        assert!(e.to_string().ends_with("given twice."), "{e}");
        // A bad value in rule 1 and another in rule 3: rule 1 is reported.
        let bad1 = r#"{"src": 1, "dst": "1.1.1.2", "proto": "tcp", "action": "drop"}"#;
        let bad3 = r#"{"src": "1.1.1.1", "dst": 2, "proto": "tcp", "action": "drop"}"#;
        let e = flow_specs_from_json(list(&[ok, bad1, ok, bad3]).as_bytes()).unwrap_err();
        assert_eq!((e.field(), e.index()), ("src", Some(1)));
        assert_eq!(
            e.to_string(),
            "Rule 1: field `src`: expected a string, got 1."
        );
        // Malformed JSON after a bad rule is still malformed JSON.
        let e = flow_specs_from_json(format!("[{bad1}, {{").as_bytes()).unwrap_err();
        assert_eq!(e.field(), "rule");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        for (body, says) in [
            ("7", "not 7."),
            ("\"x\"", "not \"x\"."),
            ("null", "not null."),
        ] {
            let e = prefix_specs_from_json(body.as_bytes()).unwrap_err();
            assert_eq!((e.field(), e.index()), ("rules", None), "{body}");
            assert!(e.to_string().ends_with(says), "{body}: {e}");
        }
        let good = prefix_specs_from_json(
            br#"[{"prefix": "10.0.0.0/8", "action": "drop"}, {"prefix": "fd00::/8", "action": "host", "id": 4}]"#,
        )
        .unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(good[1].id, Some(4));
        assert_eq!(flow_specs_from_json(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn a_streamed_list_is_read_rule_by_rule_and_stops_at_its_cap() {
        let ok = r#"{"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"}"#;
        let list = |items: &[&str]| format!("[{}]", items.join(","));
        let text = list(&[ok, ok, ok]);
        let mut seen = Vec::new();
        let n = read_flow_specs(text.as_bytes(), 3, |i, s: FlowRuleSpec| {
            seen.push((i, s.proto));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!((n, seen.len()), (3, 3));
        assert_eq!(seen[2], (2, ProtoSpec::Name("tcp".into())));
        // One too many: reading stops there, before the broken end.
        let mut seen = 0;
        let e = read_flow_specs(format!("[{ok},{ok},{ok}, {{").as_bytes(), 2, |_, _| {
            seen += 1;
            Ok::<(), ()>(())
        })
        .unwrap_err();
        assert!(matches!(e, ListError::TooMany(2)), "{e:?}");
        assert_eq!(seen, 2);
        // The caller's refusal is the first bad rule: nothing more is
        // handed over, and it beats one rule too many.
        let mut seen = Vec::new();
        let e = read_flow_specs(list(&[ok, ok, ok, ok]).as_bytes(), 3, |i, _| {
            seen.push(i);
            if i == 1 {
                Err("no")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(e, ListError::Refused("no")), "{e:?}");
        assert_eq!(seen, vec![0, 1]);
        // A bad rule, then malformed JSON: malformed JSON wins.
        let e = read_prefix_specs(
            r#"[{"prefix": 1}, {"#.as_bytes(),
            9,
            |_, _| Ok::<(), ()>(()),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ListError::Rule(r) if r.reason().contains("not valid JSON")),
            "{e:?}"
        );
        // Not a list.
        let e = read_prefix_specs(&b"{\"a\": [1]}"[..], 9, |_, _| Ok::<(), ()>(())).unwrap_err();
        assert!(
            matches!(&e, ListError::Rule(r) if r.field() == "rules" && r.reason().ends_with("not an object.")),
            "{e:?}"
        );
        // A string too long: the rule and the field, before the parser
        // holds it.
        let long = format!(
            r#"[{ok}, {{"src": "1.1.1.1", "dst": "{}", "proto": "tcp", "action": "drop"}}]"#,
            "9".repeat(1 << 20)
        );
        let e = read_flow_specs(long.as_bytes(), 9, |_, _| Ok::<(), ()>(())).unwrap_err();
        assert!(
            matches!(&e, ListError::Rule(r) if (r.field(), r.index()) == ("dst", Some(1))),
            "{e:?}"
        );
        // The source's own error comes back as it is.
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "stalled"))
            }
        }
        let e = read_flow_specs(Broken, 9, |_, _| Ok::<(), ()>(())).unwrap_err();
        assert!(
            matches!(&e, ListError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut),
            "{e:?}"
        );
    }

    #[test]
    fn echoed_values_are_cut_short() {
        assert_eq!(echo("10.0.0.300"), "\"10.0.0.300\"");
        let long = "é".repeat(1000);
        let e = echo(&long);
        assert!(e.starts_with(&format!("{:?}", "é".repeat(ECHO_MAX))), "{e}");
        assert!(e.ends_with("... (2000 bytes)"), "{e}");
        let spec = FlowRuleSpec::new("1.1.1.1", "x".repeat(1 << 20), "udp", "drop");
        let msg = spec.validate(1, &LegacyIds).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.ends_with("is not an IPv4 or IPv6 address."), "{msg}");
        for (spec, field) in [
            (
                FlowRuleSpec::new("1.1.1.1", "1.1.1.2", "y".repeat(5000).as_str(), "drop"),
                "proto",
            ),
            (
                FlowRuleSpec::new("1.1.1.1", "1.1.1.2", "udp", "z".repeat(5000)),
                "action",
            ),
        ] {
            let e = spec.validate(1, &LegacyIds).unwrap_err();
            assert_eq!(e.field(), field);
            assert!(e.to_string().len() < 250, "{e}");
        }
        for p in [
            "w".repeat(5000),
            format!("{}/8", "w".repeat(5000)),
            format!("10.0.0.0/{}", "8".repeat(5000)),
            format!("10.0.0.1/8{}", ""),
        ] {
            let e = PrefixRuleSpec::new(p.as_str(), "drop")
                .validate(1, &LegacyIds)
                .unwrap_err();
            assert!(e.to_string().len() < 300, "{e}");
        }
        let e = flow(&format!(
            r#"{{"src": "1.1.1.1", "{}": 1}}"#,
            "k".repeat(5000)
        ))
        .unwrap_err();
        assert!(e.field().len() < 100 && e.to_string().len() < 400, "{e}");
        let e = flow(&format!(r#"{{"src": [{}]}}"#, "1,".repeat(5000) + "1")).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn the_listed_fields_are_the_json_fields() {
        let spec = FlowRuleSpec {
            id: Some(1),
            guest: Some(GuestRef::Id(2)),
            ..FlowRuleSpec::new("1.1.1.1", "1.1.1.2", "udp", "guest")
        };
        let v = serde_json::to_value(&spec).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = FlowRuleSpec::FIELDS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
        let text = serde_json::to_string(&spec).unwrap();
        let order: Vec<usize> = FlowRuleSpec::FIELDS
            .iter()
            .map(|f| text.find(&format!("\"{f}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let p = PrefixRuleSpec {
            id: Some(1),
            guest: Some(GuestRef::Id(2)),
            ..PrefixRuleSpec::new("10.0.0.0/8", "guest")
        };
        let v = serde_json::to_value(&p).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = PrefixRuleSpec::FIELDS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        // Every listed field is accepted, and only those.
        for f in FlowRuleSpec::FIELDS {
            let e = FlowRuleSpec::from_json(format!("{{\"{f}\": null}}").as_bytes()).unwrap_err();
            assert!(e.to_string().contains("missing"), "{f}: {e}");
        }
        let e = FlowRuleSpec::from_value(&serde_json::json!([1])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Field `rule`: an exact rule must be a JSON object, not an array."
        );
    }

    #[test]
    fn json_round_trips() {
        for json in [
            r#"{"id":7,"src":"10.0.0.2","dst":"10.0.0.1","proto":"udp","src_port":1000,"dst_port":53,"action":"guest","guest":1}"#,
            r#"{"id":9,"src":"fd00::2","dst":"fd00::1","proto":"icmpv6","src_port":0,"dst_port":0,"action":"drop"}"#,
            r#"{"id":10,"src":"fd00::2","dst":"fd00::1","proto":1,"src_port":0,"dst_port":0,"action":"host"}"#,
            r#"{"id":11,"src":"10.1.1.1","dst":"10.1.1.2","proto":"tcp","src_port":0,"dst_port":22,"action":"guest","guest":7}"#,
        ] {
            let r: FlowRule = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), json);
            let spec = r.to_spec();
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            let back: FlowRuleSpec = serde_json::from_str(json).unwrap();
            assert_eq!(back, spec);
            // And through the BPF key and value.
            assert_eq!(
                FlowRule::from_bpf(&r.bpf_key(1), &r.bpf_value()).unwrap(),
                r
            );
        }
        // Numbers with a name are listed by name.
        let r =
            flow(r#"{"id":3,"src":"1.1.1.1","dst":"1.1.1.2","proto":6,"action":"drop"}"#).unwrap();
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains(r#""proto":"tcp""#));
        for json in [
            r#"{"id":8,"prefix":"10.88.0.0/16","action":"drop"}"#,
            r#"{"id":12,"prefix":"fd00:88::/32","action":"guest","guest":3}"#,
        ] {
            let p: PrefixRule = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&p).unwrap(), json);
            assert_eq!(serde_json::to_string(&p.to_spec()).unwrap(), json);
            let (len, data) = p.bpf_key(0);
            assert_eq!(PrefixRule::from_bpf(len, &data, &p.bpf_value()).unwrap(), p);
        }
        let e = serde_json::from_str::<FlowRule>(
            r#"{"src":"1.1.1.1","dst":"1.1.1.2","proto":6,"action":"drop"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Field `id`"), "{e}");
        let e = serde_json::from_str::<FlowRuleSpec>(
            r#"{"src":"1.1.1.1","dst":"1.1.1.2","proto":6,"action":"drop","bogus":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Field `bogus`"), "{e}");
    }

    #[test]
    fn rules_serialize_as_their_specs() {
        let rules = [
            r#"{"id":7,"src":"10.0.0.2","dst":"10.0.0.1","proto":"udp","src_port":1000,"dst_port":53,"action":"guest","guest":1}"#,
            r#"{"id":9,"src":"fd00::2","dst":"fd00::1","proto":"icmpv6","action":"drop"}"#,
            r#"{"id":10,"src":"fd00::2","dst":"fd00::1","proto":1,"action":"host"}"#,
            r#"{"id":11,"src":"10.1.1.1","dst":"10.1.1.2","proto":"ICMP","action":"HOST"}"#,
            r#"{"id":12,"src":"10.1.1.1","dst":"10.1.1.2","proto":58,"action":"guest","guest":4294967295}"#,
        ];
        for json in rules {
            let r = flow(json).unwrap();
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                serde_json::to_string(&r.to_spec()).unwrap()
            );
        }
        for json in [
            r#"{"id":8,"prefix":"10.88.0.0/16","action":"drop"}"#,
            r#"{"id":12,"prefix":"fd00:88::/32","action":"guest","guest":3}"#,
            r#"{"id":13,"prefix":"::/0","action":"Guest"}"#,
        ] {
            let p = prefix(json).unwrap();
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                serde_json::to_string(&p.to_spec()).unwrap()
            );
        }
    }

    #[test]
    fn bpf_keys_are_in_wire_order() {
        let r = flow(r#"{"id":5,"src":"10.0.0.2","dst":"10.0.0.1","proto":"udp","src_port":1000,"dst_port":53,"action":"guest","guest":2}"#)
            .unwrap();
        let k = r.bpf_key(1);
        assert_eq!((k.gen, k.family, k.proto), (1, FAMILY_V4, 17));
        assert_eq!(k.src_port.to_ne_bytes(), 1000u16.to_be_bytes());
        assert_eq!(k.dst_port.to_ne_bytes(), 53u16.to_be_bytes());
        assert_eq!(&k.src[..5], &[10, 0, 0, 2, 0]);
        let v = r.bpf_value();
        assert_eq!(
            (v.action, v.port, v.rule_id),
            (xdpath_common::Action::Guest as u32, 2, 5)
        );
        let p = prefix(r#"{"id":6,"prefix":"10.88.0.0/16","action":"drop"}"#).unwrap();
        let (len, d) = p.bpf_key(0);
        assert_eq!(
            (len, d.gen, d.family, &d.addr[..4]),
            (16, 0, FAMILY_V4, &[10, 88, 0, 0][..])
        );
        // Entries a table never writes are refused.
        let mut bad = v;
        bad.rule_id = 0;
        assert_eq!(FlowRule::from_bpf(&k, &bad).unwrap_err().field(), "id");
        let mut bad = v;
        bad.action = 9;
        assert_eq!(FlowRule::from_bpf(&k, &bad).unwrap_err().field(), "action");
    }

    #[test]
    fn rules_name_guests_and_list_them_by_name() {
        let guests: GuestTable = [(1, "default".to_string()), (3, "web1".to_string())]
            .into_iter()
            .collect();
        let by = |json: &str, g: &dyn GuestNames| {
            FlowRuleSpec::from_json(json.as_bytes())
                .and_then(|s| s.validate(5, g))
                .map(|r| r.action)
        };
        let base = r#""src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "action": "guest""#;
        assert_eq!(
            by(&format!(r#"{{{base}, "guest": "web1"}}"#), &guests),
            Ok(RuleAction::Guest { port: 3 })
        );
        // A number is the legacy form: a guest id.
        assert_eq!(
            by(&format!(r#"{{{base}, "guest": 3}}"#), &guests),
            Ok(RuleAction::Guest { port: 3 })
        );
        // Left out: guest 1, when it exists.
        assert_eq!(
            by(&format!("{{{base}}}"), &guests),
            Ok(RuleAction::Guest { port: 1 })
        );
        let only_web: GuestTable = [(3, "web1".to_string())].into_iter().collect();
        for (json, g, want) in [
            (format!(r#"{{{base}, "guest": "db"}}"#), &guests, "Field `guest`: no guest named \"db\"."),
            (format!(r#"{{{base}, "guest": 2}}"#), &guests, "Field `guest`: no guest has id 2."),
            (format!("{{{base}}}"), &only_web, "Field `guest`: name the guest this rule sends to."),
            (
                r#"{"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "action": "drop", "guest": "web1"}"#.to_string(),
                &guests,
                "Field `guest`: a guest applies to action guest only, not to action drop.",
            ),
            (format!(r#"{{{base}, "guest": true}}"#), &guests, "Field `guest`: expected a guest name or a guest id 0 to 4294967295, got true."),
        ] {
            let e = by(&json, g).unwrap_err();
            assert_eq!((e.to_string().as_str(), e.field()), (want, "guest"), "{json}");
        }
        let p = PrefixRuleSpec::from_json(
            br#"{"prefix": "10.0.0.0/8", "action": "guest", "guest": "web1"}"#,
        )
        .unwrap()
        .validate(4, &guests)
        .unwrap();
        assert_eq!(p.action, RuleAction::Guest { port: 3 });
        // Listings name the guest; the stored form keeps the id, and reads
        // back with it.
        let f = FlowRuleSpec::from_json(format!(r#"{{{base}, "guest": "web1"}}"#).as_bytes())
            .unwrap()
            .validate(5, &guests)
            .unwrap();
        assert_eq!(
            serde_json::to_value(f.listed(&guests)).unwrap()["guest"],
            "web1"
        );
        assert_eq!(
            serde_json::to_value(p.listed(&guests)).unwrap()["guest"],
            "web1"
        );
        assert_eq!(
            serde_json::to_value(f.listed(&only_web)).unwrap()["guest"],
            "web1"
        );
        let gone = GuestTable::new();
        assert_eq!(serde_json::to_value(f.listed(&gone)).unwrap()["guest"], 3);
        let stored = serde_json::to_string(&f).unwrap();
        assert!(
            stored.ends_with(r#""action":"guest","guest":3}"#),
            "{stored}"
        );
        assert_eq!(serde_json::from_str::<FlowRule>(&stored).unwrap(), f);
        let list = serde_json::to_value(ListedRules {
            rules: &[f, f],
            guests: &guests,
        })
        .unwrap();
        assert_eq!(list[1]["guest"], "web1");
        // The spec's own JSON keeps the form it was given.
        let spec =
            FlowRuleSpec::from_json(format!(r#"{{{base}, "guest": "web1"}}"#).as_bytes()).unwrap();
        assert_eq!(spec.guest, Some(GuestRef::Name("web1".into())));
        assert_eq!(serde_json::to_value(&spec).unwrap()["guest"], "web1");
        assert_eq!(
            serde_json::from_value::<GuestRef>(serde_json::json!(7)).unwrap(),
            GuestRef::Id(7)
        );
        // Bulk lists, streamed, read names too.
        let text = format!(r#"[{{{base}, "guest": "web1"}}, {{{base}, "guest": 1}}]"#);
        let mut got = Vec::new();
        read_flow_specs(text.as_bytes(), 10, |_, s| {
            got.push(s.guest);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![Some(GuestRef::Name("web1".into())), Some(GuestRef::Id(1))]
        );
    }
}
