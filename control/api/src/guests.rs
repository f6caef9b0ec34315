//! Guests as the API names them: what a user declares ([`GuestSpec`], the
//! body of `POST /v1/guests` and a `[[guest]]` table of the config file),
//! what the daemon lists ([`GuestInfo`]), the checks of a spec whose
//! errors name the field ([`GuestSpecError`]), and the seam through which
//! rules name guests ([`GuestNames`]).
//!
//! # Names
//!
//! A guest name is a short identifier: 1 to [`MAX_NAME_LEN`] (15)
//! characters, lower-case ASCII letters, digits, `-` and `_`, starting with
//! a letter or a digit (`web1`, `db-0`, `tenant_a`). It fits an interface
//! name and a file name, so the default vhost-user socket
//! `<run_dir>/<iface>.<name>.vhost.sock` ([`default_vhost_socket`]) is
//! always a plain file name. Names are case-sensitive and upper case is
//! refused, so `Web1` and `web1` cannot both exist.
//!
//! # Ids
//!
//! Every guest also has a numeric id 1 to [`MAX_GUESTS`] (the XDP
//! program's "guest port", carried in map values and the metadata block),
//! assigned by the daemon: the lowest free one. Users name guests; ids are
//! shown, and accepted in rules for compatibility with the one-guest
//! daemon (where the guest was port 1).

use crate::MacAddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Most guests one daemon serves (ids 1 to 64).
pub const MAX_GUESTS: u32 = 64;

/// Longest guest name, in characters.
pub const MAX_NAME_LEN: usize = 15;

/// Most addresses one guest declares.
pub const MAX_GUEST_IPS: usize = 16;

/// Longest path a Unix socket can be bound at (`sun_path` holds 108 bytes
/// with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The name of the guest the one-guest flags (`--guest-mac`, `--guest-ip`,
/// `--vhost-socket`) declare; it gets id 1.
pub const SHORTHAND_GUEST: &str = "default";

/// A guest as a user declares it: the body of `POST /v1/guests`, and one
/// `[[guest]]` table of the daemon's config file (same keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct GuestSpec {
    /// The guest's name: 1 to 15 lower-case letters, digits, `-` or `_`,
    /// starting with a letter or digit. Unique in the daemon.
    #[cfg_attr(
        feature = "openapi",
        schemars(length(min = 1, max = 15), regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))
    )]
    pub name: String,
    /// The guest's MAC address: unicast, not all-zero, unique in the daemon.
    /// Frames to it are steered to the guest, and it is told to the guest.
    /// Required through the API; only the one-guest shorthand may leave it
    /// out (`--vhost-socket` without `--guest-mac`: a guest reached by
    /// rules only, which picks its own MAC and is not switched to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The guest's addresses (at most 16, no duplicates, no multicast or
    /// unspecified address): ARP and ND for them are steered to the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Queue pairs offered to the guest (1 to the daemon's `--queues`);
    /// absent: all of the daemon's queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schemars(range(min = 1)))]
    pub queues: Option<u16>,
    /// The vhost-user socket the guest's frontend connects to (an absolute
    /// path, at most 107 bytes); absent: `<run_dir>/<iface>.<name>.vhost.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<PathBuf>,
    /// Anti-spoofing (default on): frames the guest sends must carry its
    /// MAC as their source and, if it declares addresses, one of them as
    /// their IPv4/IPv6 source or ARP sender; others are dropped and
    /// counted (`tx_drop_spoofed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_spoof: Option<bool>,
    /// Client mode (default off): the guest's QEMU listens on
    /// `vhost_socket` (`server=on`) and owns the file, and xdpathd connects
    /// to it, again after each disconnect or restart, as OVS's
    /// `dpdkvhostuserclient` ports do. The socket's mode, owner and group
    /// are then QEMU's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_client: Option<bool>,
    /// Mode of the vhost-user socket: octal text such as `"0660"`, or an
    /// integer; absent: the daemon's `vhost_socket_mode`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_file_mode",
        serialize_with = "ser_opt_file_mode"
    )]
    #[cfg_attr(feature = "openapi", schemars(with = "Option<FileModeSchema>"))]
    pub socket_mode: Option<u32>,
    /// Owner of the vhost-user socket (user name or uid); absent: the
    /// daemon's `vhost_socket_owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<String>,
    /// Group of the vhost-user socket (group name or gid); absent: the
    /// daemon's `vhost_socket_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
}

/// The schema of a file mode: octal text or an integer.
#[cfg(feature = "openapi")]
pub struct FileModeSchema;

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for FileModeSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileMode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Permission bits: octal text such as \"0660\", or an integer up to 511 (0o777).",
            "oneOf": [
                { "type": "string", "pattern": "^[0-7]{1,4}$" },
                { "type": "integer", "minimum": 0, "maximum": 511 }
            ]
        })
    }
}

/// Reads a file mode: octal text (`"0660"`, `"660"`) or an integer, at
/// most `0o777`. The error says what was given.
pub fn parse_file_mode(v: &Value) -> Result<u32, String> {
    let (mode, shown) = match v {
        Value::String(t) => (
            (!t.is_empty() && t.len() <= 4)
                .then(|| u32::from_str_radix(t, 8).ok())
                .flatten(),
            crate::rules::echo(t),
        ),
        Value::Number(n) => (
            n.as_u64().and_then(|n| u32::try_from(n).ok()),
            n.as_u64()
                .map_or_else(|| n.to_string(), |m| format!("{m:#o}")),
        ),
        other => (None, other.to_string()),
    };
    mode.filter(|m| *m <= 0o777).ok_or_else(|| {
        format!("{shown} is not a file mode; use octal permission bits such as \"0660\".")
    })
}

/// serde: a file mode as [`parse_file_mode`] reads it (TOML integers and
/// strings included).
pub fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Number(i64),
    }
    let v = match Mode::deserialize(d)? {
        Mode::Text(t) => Value::String(t),
        Mode::Number(n) => Value::from(n),
    };
    parse_file_mode(&v).map_err(serde::de::Error::custom)
}

fn opt_file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    file_mode(d).map(Some)
}

fn ser_opt_file_mode<S: Serializer>(m: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.collect_str(&format_args!("{m:04o}")),
        None => s.serialize_none(),
    }
}

/// A guest spec, or a guest change, that is refused: the field at fault
/// and why. The message names the field:
/// ``` `name`: "Web 1" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit. ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct GuestSpecError {
    /// The field (`name`, `mac`, `ips`, `queues`, `vhost_socket`,
    /// `socket_mode`, `socket_owner`, `socket_group`; `guest` for a body
    /// that is not a guest at all).
    pub field: String,
    /// The reason, a sentence.
    pub reason: String,
}

impl GuestSpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Whether `name` is a guest name (see the module docs).
pub fn is_guest_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Checks a guest name; the error names the field `name`.
pub fn check_guest_name(name: &str) -> Result<(), GuestSpecError> {
    if is_guest_name(name) {
        return Ok(());
    }
    Err(GuestSpecError::new(
        "name",
        format!(
            "{} is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit.",
            crate::rules::echo(name)
        ),
    ))
}

/// The default vhost-user socket of guest `name` of the daemon on `iface`:
/// `<run_dir>/<iface>.<name>.vhost.sock`.
pub fn default_vhost_socket(run_dir: &Path, iface: &str, name: &str) -> PathBuf {
    run_dir.join(format!("{iface}.{name}.vhost.sock"))
}

impl GuestSpec {
    /// The JSON fields, in order.
    pub const FIELDS: [&'static str; 10] = [
        "name",
        "mac",
        "ips",
        "queues",
        "vhost_socket",
        "vhost_client",
        "anti_spoof",
        "socket_mode",
        "socket_owner",
        "socket_group",
    ];

    /// A spec with a name and a MAC, everything else defaulted.
    pub fn new(name: impl Into<String>, mac: MacAddr) -> Self {
        Self {
            name: name.into(),
            mac: Some(mac),
            anti_spoof: None,
            vhost_client: None,
            ips: Vec::new(),
            queues: None,
            vhost_socket: None,
            socket_mode: None,
            socket_owner: None,
            socket_group: None,
        }
    }

    /// Parses a spec from JSON text (the body of `POST /v1/guests`); every
    /// refusal names its field (unknown fields included).
    pub fn from_json(text: &[u8]) -> Result<Self, GuestSpecError> {
        let v: Value = serde_json::from_slice(text).map_err(|e| {
            GuestSpecError::new("guest", format!("the request is not valid JSON ({e})."))
        })?;
        Self::from_value(v)
    }

    /// Reads a spec from a JSON value; every refusal names its field.
    pub fn from_value(v: Value) -> Result<Self, GuestSpecError> {
        Self::parse(v, true)
    }

    /// Like [`GuestSpec::from_value`], `mac` optional: the one-guest
    /// shorthand guest as a daemon's state file stores it when it was
    /// declared without `--guest-mac` (see [`GuestSpec::mac`]).
    pub fn from_value_mac_optional(v: Value) -> Result<Self, GuestSpecError> {
        Self::parse(v, false)
    }

    fn parse(v: Value, mac_required: bool) -> Result<Self, GuestSpecError> {
        let Value::Object(mut o) = v else {
            return Err(GuestSpecError::new(
                "guest",
                "a guest must be a JSON object with at least name and mac.",
            ));
        };
        if let Some(k) = o.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(GuestSpecError::new(
                crate::rules::echo(k).trim_matches('"'),
                format!(
                    "unknown field; a guest has the fields {}.",
                    Self::FIELDS.join(", ")
                ),
            ));
        }
        fn field<T: serde::de::DeserializeOwned>(
            o: &mut Map<String, Value>,
            name: &str,
        ) -> Result<Option<T>, GuestSpecError> {
            match o.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|e| GuestSpecError::new(name, sentence(&e.to_string()))),
            }
        }
        let needs = |f: &str| {
            GuestSpecError::new(
                f,
                "missing; a guest needs at least name and mac.".to_string(),
            )
        };
        let name: String = field(&mut o, "name")?.ok_or_else(|| needs("name"))?;
        let mac: Option<MacAddr> = field(&mut o, "mac")?;
        if mac_required && mac.is_none() {
            return Err(needs("mac"));
        }
        let socket_mode = match o.remove("socket_mode") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(parse_file_mode(&v).map_err(|e| GuestSpecError::new("socket_mode", e))?)
            }
        };
        Ok(Self {
            name,
            mac,
            anti_spoof: field(&mut o, "anti_spoof")?,
            vhost_client: field(&mut o, "vhost_client")?,
            ips: field(&mut o, "ips")?.unwrap_or_default(),
            queues: field(&mut o, "queues")?,
            vhost_socket: field(&mut o, "vhost_socket")?,
            socket_mode,
            socket_owner: field(&mut o, "socket_owner")?,
            socket_group: field(&mut o, "socket_group")?,
        })
    }

    /// Checks everything a spec alone can say (the daemon then checks
    /// `queues` against its own and uniqueness against the other guests).
    pub fn validate(&self) -> Result<(), GuestSpecError> {
        check_guest_name(&self.name)?;
        let mac = self.mac.unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 1]));
        if mac.is_multicast() {
            return Err(GuestSpecError::new(
                "mac",
                format!("{mac} is a multicast address; a guest needs a unicast one."),
            ));
        }
        if mac.octets() == [0; 6] {
            return Err(GuestSpecError::new(
                "mac",
                "00:00:00:00:00:00 is not a usable address; give the guest's unicast MAC.",
            ));
        }
        if self.ips.len() > MAX_GUEST_IPS {
            return Err(GuestSpecError::new(
                "ips",
                format!(
                    "{} addresses given; a guest has at most {MAX_GUEST_IPS}.",
                    self.ips.len()
                ),
            ));
        }
        for (i, ip) in self.ips.iter().enumerate() {
            if ip.is_multicast() || ip.is_unspecified() {
                return Err(GuestSpecError::new(
                    "ips",
                    format!(
                        "{ip} is a {} address; give the guest's unicast addresses.",
                        if ip.is_multicast() {
                            "multicast"
                        } else {
                            "unspecified"
                        }
                    ),
                ));
            }
            if self.ips[..i].contains(ip) {
                return Err(GuestSpecError::new("ips", format!("{ip} is listed twice.")));
            }
        }
        if self.queues == Some(0) {
            return Err(GuestSpecError::new(
                "queues",
                "0 queue pairs; give 1 or more, or leave it out for all of the daemon's.",
            ));
        }
        if let Some(p) = &self.vhost_socket {
            check_socket_path(p)?;
        }
        if let Some(m) = self.socket_mode {
            if m > 0o777 {
                return Err(GuestSpecError::new(
                    "socket_mode",
                    format!(
                        "{m:#o} is not a file mode; use octal permission bits such as \"0660\"."
                    ),
                ));
            }
        }
        for (field, v) in [
            ("socket_owner", &self.socket_owner),
            ("socket_group", &self.socket_group),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 256 || v.contains(['\0', '/', ':']) || v.trim() != v {
                    return Err(GuestSpecError::new(
                        field,
                        format!(
                            "{} is not a user or group name or id.",
                            crate::rules::echo(v)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The socket the guest's frontend connects to: `vhost_socket`, or
    /// [`default_vhost_socket`].
    pub fn vhost_socket_or_default(&self, run_dir: &Path, iface: &str) -> PathBuf {
        self.vhost_socket
            .clone()
            .unwrap_or_else(|| default_vhost_socket(run_dir, iface, &self.name))
    }
}

/// Checks a vhost-user socket path: absolute, at most
/// [`MAX_SOCKET_PATH`] bytes, naming a file.
pub fn check_socket_path(p: &Path) -> Result<(), GuestSpecError> {
    use std::os::unix::ffi::OsStrExt;
    let shown = crate::rules::echo(&p.to_string_lossy());
    let bytes = p.as_os_str().as_bytes();
    if !p.is_absolute() {
        return Err(GuestSpecError::new(
            "vhost_socket",
            format!("{shown} is not an absolute path."),
        ));
    }
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(GuestSpecError::new(
            "vhost_socket",
            format!(
                "{shown} is longer than {MAX_SOCKET_PATH} bytes, the most a Unix socket path holds."
            ),
        ));
    }
    if p.file_name().is_none() || bytes.ends_with(b"/") || bytes.contains(&0) {
        return Err(GuestSpecError::new(
            "vhost_socket",
            format!("{shown} does not name a file."),
        ));
    }
    Ok(())
}

/// serde's message as a sentence: capital letter, final period.
fn sentence(msg: &str) -> String {
    let mut s = msg.trim_end_matches('.').to_string();
    s.push('.');
    s
}

/// One guest as `GET /v1/guests` lists it: its id, what was declared
/// (with the daemon's defaults filled in), and how it is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct GuestInfo {
    /// The guest's id (1 to 64): the XDP program's guest port.
    #[cfg_attr(feature = "openapi", schemars(range(min = 1, max = 64)))]
    pub id: u32,
    /// The guest's name.
    pub name: String,
    /// The guest's MAC address (absent: a shorthand guest reached by rules
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Whether its frames' sources are checked (anti-spoofing).
    #[serde(default = "on")]
    pub anti_spoof: bool,
    /// Client mode: xdpathd connects to the socket the guest's QEMU
    /// listens on.
    #[serde(default)]
    pub vhost_client: bool,
    /// The guest's addresses (ARP/ND steered to it).
    pub ips: Vec<IpAddr>,
    /// Queue pairs offered to the guest.
    pub queues: u16,
    /// The vhost-user socket its frontend connects to.
    pub vhost_socket: PathBuf,
    /// The socket's mode, as octal text (`"0660"`).
    #[serde(deserialize_with = "file_mode", serialize_with = "ser_file_mode")]
    #[cfg_attr(feature = "openapi", schemars(with = "FileModeSchema"))]
    pub socket_mode: u32,
    /// The socket's owner as declared (absent: the daemon's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<String>,
    /// The socket's group as declared (absent: the daemon's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Whether a frontend is connected now.
    pub connected: bool,
    /// Queue pairs the guest has enabled.
    pub pairs_enabled: u16,
    /// Frames delivered to the guest (wire -> guest).
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames the guest sent (guest -> wire).
    pub tx_frames: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames the guest sent to another local guest (switched, never on
    /// the wire).
    #[serde(default)]
    pub tx_switched: u64,
    /// Copies of the guest's broadcast and multicast frames given to the
    /// other local guests.
    #[serde(default)]
    pub tx_flooded: u64,
    /// The guest's frames dropped by anti-spoofing (also in `drops`).
    #[serde(default)]
    pub tx_drop_spoofed: u64,
    /// Frames dropped on the guest's queue pairs, both ways
    /// ([`crate::drops`] of its pairs).
    pub drops: u64,
    /// Rules (exact and prefix) whose action sends to this guest.
    pub rules: u64,
}

/// Anti-spoofing's default in answers that do not say (older daemons).
fn on() -> bool {
    true
}

fn ser_file_mode<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{m:04o}"))
}

impl GuestInfo {
    /// A guest's listing with its counters at zero and no frontend: the
    /// spec's fields, with the socket, the queue pairs and the socket mode
    /// resolved by the daemon.
    pub fn new(id: u32, spec: &GuestSpec, vhost_socket: PathBuf, queues: u16, mode: u32) -> Self {
        Self {
            id,
            name: spec.name.clone(),
            mac: spec.mac,
            anti_spoof: spec.anti_spoof.unwrap_or(true) && spec.mac.is_some(),
            vhost_client: spec.vhost_client.unwrap_or(false),
            ips: spec.ips.clone(),
            queues: spec.queues.unwrap_or(queues),
            vhost_socket,
            socket_mode: spec.socket_mode.unwrap_or(mode),
            socket_owner: spec.socket_owner.clone(),
            socket_group: spec.socket_group.clone(),
            connected: false,
            pairs_enabled: 0,
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            tx_switched: 0,
            tx_flooded: 0,
            tx_drop_spoofed: 0,
            drops: 0,
            rules: 0,
        }
    }
}

/// How rules name guests: by name on the wire, by id inside. The flow
/// table's conversion of a wire rule takes one of these, so a rule naming
/// a guest that does not exist is refused (naming the field `guest`) and
/// changes nothing, and a listing shows names.
pub trait GuestNames {
    /// The id of the guest called `name`, if there is one.
    fn id_of(&self, name: &str) -> Option<u32>;
    /// The name of the guest with id `id`, if there is one.
    fn name_of(&self, id: u32) -> Option<String>;
}

/// The stored form's resolver: every id is a guest (named by its number),
/// and no name is known. Rules read back from the state file
/// or the maps use it (they hold ids); so does a daemon that has no guest
/// registry (the one-guest behaviour: any port, default 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyIds;

impl GuestNames for LegacyIds {
    fn id_of(&self, _name: &str) -> Option<u32> {
        None
    }

    fn name_of(&self, id: u32) -> Option<String> {
        Some(id.to_string())
    }
}

/// A snapshot of the guests' names and ids (plain data, `Send`), for work
/// done away from the registry, e.g. a bulk list checked on its own
/// thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestTable {
    by_id: BTreeMap<u32, String>,
}

impl GuestTable {
    /// No guests.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or renames) guest `id`.
    pub fn insert(&mut self, id: u32, name: impl Into<String>) {
        self.by_id.insert(id, name.into());
    }

    /// The guests, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.by_id.iter().map(|(i, n)| (*i, n.as_str()))
    }
}

impl FromIterator<(u32, String)> for GuestTable {
    fn from_iter<I: IntoIterator<Item = (u32, String)>>(iter: I) -> Self {
        Self {
            by_id: iter.into_iter().collect(),
        }
    }
}

impl GuestNames for GuestTable {
    fn id_of(&self, name: &str) -> Option<u32> {
        self.by_id
            .iter()
            .find_map(|(i, n)| (n == name).then_some(*i))
    }

    fn name_of(&self, id: u32) -> Option<String> {
        self.by_id.get(&id).cloned()
    }
}

impl<T: GuestNames + ?Sized> GuestNames for &T {
    fn id_of(&self, name: &str) -> Option<u32> {
        (**self).id_of(name)
    }

    fn name_of(&self, id: u32) -> Option<String> {
        (**self).name_of(id)
    }
}

impl fmt::Display for GuestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mac {
            Some(m) => write!(f, "{} ({m})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mac() -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, 1])
    }

    fn err(v: Value) -> String {
        GuestSpec::from_value(v)
            .and_then(|s| s.validate().map(|()| s))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names() {
        for ok in ["a", "web1", "db-0", "tenant_a", "0", "abcdefghijklmno"] {
            assert!(is_guest_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Web1",
            "web 1",
            "-a",
            "_a",
            "abcdefghijklmnop",
            "a.b",
            "é",
        ] {
            assert!(!is_guest_name(bad), "{bad}");
        }
        assert_eq!(
            check_guest_name("Web 1").unwrap_err().to_string(),
            "`name`: \"Web 1\" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit."
        );
    }

    #[test]
    fn a_spec_reads_and_writes_its_json() {
        let s = GuestSpec::from_json(
            br#"{"name": "web1", "mac": "52:54:00:00:00:01", "ips": ["10.0.0.5", "fd00::5"],
                 "queues": 2, "vhost_socket": "/run/x/w.sock", "socket_mode": "0600",
                 "socket_owner": "qemu", "socket_group": "kvm"}"#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.socket_mode, Some(0o600));
        assert_eq!(s.queues, Some(2));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["socket_mode"], "0600");
        assert_eq!(GuestSpec::from_value(v.clone()).unwrap(), s);
        assert_eq!(serde_json::from_value::<GuestSpec>(v).unwrap(), s);
        let min = GuestSpec::from_value(json!({"name": "a", "mac": "52:54:00:00:00:01"})).unwrap();
        assert_eq!(min, GuestSpec::new("a", mac()));
        assert_eq!(
            serde_json::to_value(&min).unwrap(),
            json!({"name": "a", "mac": "52:54:00:00:00:01"})
        );
        let m = GuestSpec::from_value(
            json!({"name": "a", "mac": "52:54:00:00:00:01", "socket_mode": 432}),
        )
        .unwrap();
        assert_eq!(m.socket_mode, Some(0o660));
        assert_eq!(
            min.vhost_socket_or_default(Path::new("/run/xdpath"), "eth1"),
            PathBuf::from("/run/xdpath/eth1.a.vhost.sock")
        );
    }

    #[test]
    fn every_refusal_names_its_field() {
        let base = || json!({"name": "web1", "mac": "52:54:00:00:00:01"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let cases: Vec<(Value, &str)> = vec![
            (json!({"mac": "52:54:00:00:00:01"}), "`name`: missing; a guest needs at least name and mac."),
            (json!({"name": "a"}), "`mac`: missing; a guest needs at least name and mac."),
            (with("name", json!("Web 1")), "`name`: \"Web 1\" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit."),
            (with("name", json!(7)), "`name`: invalid type: integer `7`, expected a string."),
            (with("mac", json!("zz")), "`mac`: \"zz\" is not a MAC address like 52:54:00:12:34:56."),
            (with("mac", json!("01:00:5e:00:00:01")), "`mac`: 01:00:5e:00:00:01 is a multicast address; a guest needs a unicast one."),
            (with("mac", json!("00:00:00:00:00:00")), "`mac`: 00:00:00:00:00:00 is not a usable address; give the guest's unicast MAC."),
            (with("ips", json!(["10.0.0.1", "10.0.0.1"])), "`ips`: 10.0.0.1 is listed twice."),
            (with("ips", json!(["224.0.0.1"])), "`ips`: 224.0.0.1 is a multicast address; give the guest's unicast addresses."),
            (with("ips", json!(["::"])), "`ips`: :: is a unspecified address; give the guest's unicast addresses."),
            (with("ips", json!((1..=17).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>())), "`ips`: 17 addresses given; a guest has at most 16."),
            (with("queues", json!(0)), "`queues`: 0 queue pairs; give 1 or more, or leave it out for all of the daemon's."),
            (with("vhost_socket", json!("rel.sock")), "`vhost_socket`: \"rel.sock\" is not an absolute path."),
            (with("vhost_socket", json!(format!("/{}", "a".repeat(120)))), "`vhost_socket`: "),
            (with("socket_mode", json!("0999")), "`socket_mode`: \"0999\" is not a file mode; use octal permission bits such as \"0660\"."),
            (with("socket_mode", json!(512)), "`socket_mode`: 0o1000 is not a file mode; use octal permission bits such as \"0660\"."),
            (with("socket_owner", json!("")), "`socket_owner`: \"\" is not a user or group name or id."),
            (with("color", json!("red")), "`color`: unknown field; a guest has the fields name, mac, ips, queues, vhost_socket, vhost_client, anti_spoof, socket_mode, socket_owner, socket_group."),
            (json!([1]), "`guest`: a guest must be a JSON object with at least name and mac."),
        ];
        for (v, want) in cases {
            let got = err(v.clone());
            assert!(got.starts_with(want), "{v}: {got}");
        }
        assert!(GuestSpec::from_json(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("`guest`: the request is not valid JSON"));
    }

    #[test]
    fn info_round_trips_and_resolvers_answer() {
        let mut s = GuestSpec::new("web1", mac());
        s.ips = vec!["10.0.0.5".parse().unwrap()];
        let i = GuestInfo::new(3, &s, PathBuf::from("/run/a.sock"), 4, 0o660);
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["socket_mode"], "0660");
        assert_eq!(v["queues"], 4);
        assert_eq!(serde_json::from_value::<GuestInfo>(v).unwrap(), i);
        let t: GuestTable = [(1, "default".to_string()), (3, "web1".to_string())]
            .into_iter()
            .collect();
        assert_eq!(t.id_of("web1"), Some(3));
        assert_eq!(t.name_of(1).as_deref(), Some("default"));
        assert_eq!(t.name_of(2), None);
        assert_eq!(LegacyIds.id_of("default"), None);
        assert_eq!(LegacyIds.name_of(9).as_deref(), Some("9"));
    }
}
