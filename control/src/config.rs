//! The daemon's configuration: an optional TOML file, overridden by flags.
//!
//! [`DaemonConfig`] holds typed values: the guest's MAC and IPs, the
//! default action and the attach mode are parsed once, when the settings
//! are read ([`DaemonConfig::from_table`]: the file's table with the flags
//! merged over it, read by serde through `serde_path_to_error`, so every
//! error names its setting). [`DaemonConfig::validate`] then checks ranges
//! and combinations (every error names the setting and says how to fix it)
//! before anything is touched. The same names are used as TOML keys and as
//! `--flags` (`vhost_socket` / `--vhost-socket`).
//!
//! Guests: `[[guest]]` tables ([`DaemonConfig::guests`], each a
//! `GuestSpec`, errors naming `guest[i].<key>`, tables counted from 0),
//! and the one-guest shorthand `guest_mac`, `guest_ip`, `vhost_socket`
//! ([`DaemonConfig::shorthand_guest`]: the guest `default`, id 1). Both
//! may be combined as long as no name, MAC, socket or address collides
//! ([`DaemonConfig::guest_registry`]).

use crate::guest_registry::{GuestDefaults, GuestError, GuestRegistry};
use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use xdpath_api::guests::{check_guest_name, SHORTHAND_GUEST};
use xdpath_api::{Action, GuestSpec, MacAddr, XdpAttachMode};

/// Where the daemon puts its files unless told otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/xdpath";
/// Where the flow table's state file lives unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpath";
/// Guest port id of the (one) guest.
pub const GUEST_PORT: u32 = 1;

/// A user or group (`group`) name or number resolved to its id; an
/// unknown one is an error naming `setting`.
fn resolve_id(setting: &str, name: Option<&str>, group: bool) -> Result<Option<u32>, ConfigError> {
    name.map(|n| {
        lookup_id(n, group).ok_or_else(|| {
            invalid(
                setting,
                format!(
                    "{} {n:?} does not exist; give a name from {} or a number.",
                    if group { "group" } else { "user" },
                    if group { "/etc/group" } else { "/etc/passwd" }
                ),
            )
        })
    })
    .transpose()
}

/// Everything `xdpathd` needs to run on one NIC.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Host NIC to attach to.
    pub iface: String,
    /// Queue pairs (= NIC queues used, = guest queue pairs offered).
    #[serde(default = "one")]
    pub queues: u16,
    /// vhost-user socket path for the guest.
    #[serde(default)]
    pub vhost_socket: Option<PathBuf>,
    /// Mode of the vhost-user socket (octal text like "0660", or a TOML
    /// integer such as 0o660).
    #[serde(default = "vhost_socket_mode", deserialize_with = "file_mode")]
    pub vhost_socket_mode: u32,
    /// Owner of the vhost-user socket (user name or uid); the daemon's own
    /// (root) if unset.
    #[serde(default)]
    pub vhost_socket_owner: Option<String>,
    /// Group of the vhost-user socket (group name or gid); the daemon's own
    /// (root) if unset.
    #[serde(default)]
    pub vhost_socket_group: Option<String>,
    /// The guest's MAC address (steered to the guest, told to it).
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// The guest's IP addresses, for ARP/ND steering.
    #[serde(default, deserialize_with = "ip_list")]
    pub guest_ip: Vec<IpAddr>,
    /// API socket path.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Group allowed to use the API socket (besides root).
    #[serde(default)]
    pub api_group: Option<String>,
    /// Action for frames no rule matches.
    #[serde(default)]
    pub default_action: Action,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpAttachMode,
    /// Replace an XDP program already attached to the interface.
    #[serde(default)]
    pub force: bool,
    /// Poll sockets busily under load instead of sleeping (lower latency,
    /// a core per queue pair).
    #[serde(default)]
    pub busy_poll: bool,
    /// Adaptive polling: after moving frames, a worker keeps serving its
    /// queue pair without sleeping until nothing moved for this many
    /// microseconds (0 = purely event driven; at most 1000). Idle pairs
    /// never poll.
    #[serde(default = "poll_idle_us")]
    pub poll_idle_us: u32,
    /// Guest MTU offered and enforced.
    #[serde(default = "mtu")]
    pub mtu: u16,
    /// Directory of the flow table's state file.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Set the NIC's receive queue count to `queues` at start
    /// (`ethtool -L`) instead of refusing a NIC with another count.
    #[serde(default)]
    pub set_channels: bool,
    /// Root of the per-interface pin directories (on a BPF file system).
    #[serde(default)]
    pub pin_root: Option<PathBuf>,
    /// Most exact rules the API lets the table hold (1 to what the maps
    /// hold, `xdpath_common::MAX_FLOWS`).
    #[serde(default = "max_flows")]
    pub max_flows: u32,
    /// Most prefix rules the API lets the table hold (1 to
    /// `xdpath_common::MAX_PREFIXES`).
    #[serde(default = "max_prefixes")]
    pub max_prefixes: u32,
    /// The guests the file declares (`[[guest]]` tables, each with the
    /// keys of a [`GuestSpec`]). They win over the same names in the
    /// guests' state file.
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestSpec>,
    /// The guest frames no rule matches go to with `default_action =
    /// "guest"` (its name); may be left out when the one-guest shorthand
    /// guest is the only guest.
    #[serde(default)]
    pub default_guest: Option<String>,
}

fn max_flows() -> u32 {
    xdpath_common::MAX_FLOWS
}

fn max_prefixes() -> u32 {
    xdpath_common::MAX_PREFIXES
}

fn one() -> u16 {
    1
}

fn mtu() -> u16 {
    1500
}

fn poll_idle_us() -> u32 {
    50
}

fn vhost_socket_mode() -> u32 {
    0o660
}

/// Reads a file mode: octal text ("0660", "660") or an integer, at most
/// 0777 (the API's reading, `xdpath_api::guests::file_mode`).
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    xdpath_api::guests::file_mode(d)
}

/// A user (`passwd`) or group name, or a numeric id, as an id.
fn lookup_id(name: &str, group: bool) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    if group {
        // SAFETY: all-zero is a valid `group` to be filled in.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        // SAFETY: valid C string, output struct and buffer of the given
        // length; getgrnam_r is thread-safe and writes only into them.
        let rc = unsafe {
            libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut found)
        };
        (rc == 0 && !found.is_null()).then_some(gr.gr_gid)
    } else {
        // SAFETY: all-zero is a valid `passwd` to be filled in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        // SAFETY: as for getgrnam_r above.
        let rc = unsafe {
            libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found)
        };
        (rc == 0 && !found.is_null()).then_some(pw.pw_uid)
    }
}

/// Reads a list of addresses, each refused with a sentence naming it.
fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not an IPv4 or IPv6 address."))
            })
        })
        .collect()
}

/// Largest `poll_idle_us`.
pub const MAX_POLL_IDLE_US: u32 = 1000;

/// A configuration error: the setting and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a bad value (or is not a setting).
    #[error("Setting `{setting}`: {problem}")]
    Invalid {
        /// The setting's name.
        setting: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The settings as a whole are wrong, e.g. a required one is missing.
    #[error("Settings: {0}")]
    Settings(String),
    /// The config file could not be read or parsed.
    #[error("Config file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// A guest refusal as a setting's problem: the reason without the field
/// prefix (the setting names it).
fn problem(e: &GuestError) -> String {
    match e {
        GuestError::Invalid(s) => s.reason.clone(),
        other => {
            let text = other.to_string();
            match text.split_once("`: ") {
                Some((_, rest)) if text.starts_with('`') => rest.to_string(),
                _ => text,
            }
        }
    }
}

fn invalid(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        problem: problem.into(),
    }
}

/// Whether `name` can be a Linux interface name (1 to 15 bytes, no '/',
/// no whitespace, no NUL).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.contains('/')
        && !name.contains(char::is_whitespace)
        && !name.contains('\0')
}

/// Parses "52:54:00:12:34:56".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.parse::<MacAddr>().ok().map(MacAddr::octets)
}

impl DaemonConfig {
    /// Reads a TOML file's settings as a table (to merge flags over it
    /// before [`DaemonConfig::from_table`]).
    pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
        let file_err = |detail: String| ConfigError::File {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        text.parse::<toml::Table>()
            .map_err(|e| file_err(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_table(Self::read_table(path)?).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            detail: match e {
                ConfigError::Settings(d) => d,
                other => other.to_string(),
            },
        })
    }

    /// Reads TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Settings(e.to_string()))?;
        Self::from_table(table)
    }

    /// Types every setting of `table` (each value parsed once, here); an
    /// error names the setting.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            // `guest_mac`, or inside a `[[guest]]` table `guest[1].mac`
            // (tables counted from 0).
            let mut setting: Option<String> = None;
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => {
                        setting = Some(match setting {
                            None => key.clone(),
                            Some(s) => format!("{s}.{key}"),
                        });
                    }
                    serde_path_to_error::Segment::Seq { index } => {
                        if let Some(s) = &mut setting {
                            s.push_str(&format!("[{index}]"));
                        }
                    }
                    _ => {}
                }
            }
            let problem = e.inner().message().to_string();
            match setting {
                // An empty key (`"" = 0`) names nothing: the problem (the
                // settings there are) is the message.
                Some(setting) if !setting.is_empty() => ConfigError::Invalid { setting, problem },
                _ => ConfigError::Settings(problem),
            }
        })
    }

    /// The guests' state file, next to the flow table's:
    /// `<state_dir>/<iface>.guests.json`.
    pub fn guest_file(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
            .join(format!("{}.guests.json", self.iface))
    }

    /// What the daemon fills in for a guest that leaves it out.
    pub fn guest_defaults(&self) -> GuestDefaults {
        GuestDefaults {
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            iface: self.iface.clone(),
            queues: self.queues,
        }
    }

    /// The one-guest shorthand as a guest: named `default` (id 1 when
    /// added), with `guest_mac`, `guest_ip` and the socket `vhost_socket`
    /// (default `/run/xdpath/<iface>.vhost.sock`, as before guests had
    /// names). It exists when any of `guest_mac`, `guest_ip` and
    /// `vhost_socket` is set, as the one guest did; without `guest_mac` it
    /// is reached by rules only (and picks its own MAC).
    /// `vhost_socket_mode`, `_owner` and `_group` are the daemon's defaults
    /// for every guest's socket, this one's included.
    pub fn shorthand_guest(&self) -> Option<GuestSpec> {
        if self.guest_mac.is_none() && self.guest_ip.is_empty() && self.vhost_socket.is_none() {
            return None;
        }
        let mut g = GuestSpec::new(SHORTHAND_GUEST, MacAddr([0; 6]));
        g.mac = self.guest_mac;
        g.ips = self.guest_ip.clone();
        g.vhost_socket = Some(self.vhost_socket());
        Some(g)
    }

    /// The guest frames no rule matches go to under `default_action =
    /// "guest"`: `default_guest`, or the shorthand guest when it is the
    /// only guest the configuration declares.
    pub fn default_guest_name(&self) -> Option<String> {
        if let Some(g) = &self.default_guest {
            return Some(g.clone());
        }
        match (self.shorthand_guest(), self.guests.is_empty()) {
            (Some(s), true) => Some(s.name),
            _ => None,
        }
    }

    /// The configured guests (the shorthand one with id 1, then the
    /// `[[guest]]` tables in order) in a registry without a file: checks
    /// them together, each error naming its setting.
    pub fn guest_registry(&self) -> Result<GuestRegistry, ConfigError> {
        let mut r = GuestRegistry::new(self.guest_defaults());
        if let Some(s) = self.shorthand_guest() {
            r.add_with_id(1, s).map_err(|e| {
                let setting = match e.field() {
                    Some("ips") => "guest_ip",
                    Some("vhost_socket") => "vhost_socket",
                    _ => "guest_mac",
                };
                invalid(setting, problem(&e))
            })?;
        }
        for (i, g) in self.guests.iter().enumerate() {
            r.add(g.clone()).map_err(|e| {
                let field = e.field().unwrap_or("name");
                invalid(&format!("guest[{i}].{field}"), problem(&e))
            })?;
        }
        Ok(r)
    }

    /// The vhost-user socket path (default `/run/xdpath/<iface>.vhost.sock`).
    pub fn vhost_socket(&self) -> PathBuf {
        self.vhost_socket.clone().unwrap_or_else(|| {
            Path::new(DEFAULT_RUN_DIR).join(format!("{}.vhost.sock", self.iface))
        })
    }

    /// Mode, owner and group of the vhost-user socket, the names resolved
    /// (an unknown user or group is an error naming its setting).
    pub fn vhost_socket_permissions(
        &self,
    ) -> Result<xdpath_dataplane::SocketPermissions, ConfigError> {
        Ok(xdpath_dataplane::SocketPermissions {
            mode: self.vhost_socket_mode,
            owner: resolve_id(
                "vhost_socket_owner",
                self.vhost_socket_owner.as_deref(),
                false,
            )?,
            group: resolve_id(
                "vhost_socket_group",
                self.vhost_socket_group.as_deref(),
                true,
            )?,
        })
    }

    /// Mode, owner and group of guest `spec`'s vhost-user socket: its own
    /// `socket_mode`, `socket_owner`, `socket_group`, or the daemon's
    /// `vhost_socket_*`; an unknown user or group is an error naming the
    /// field (`socket_owner`, `socket_group`).
    pub fn guest_socket_permissions(
        &self,
        spec: &GuestSpec,
    ) -> Result<xdpath_dataplane::SocketPermissions, xdpath_api::GuestSpecError> {
        let mut d = self
            .vhost_socket_permissions()
            .map_err(|e| xdpath_api::GuestSpecError::new("socket_owner", e.to_string()))?;
        if let Some(m) = spec.socket_mode {
            d.mode = m;
        }
        for (field, name, group, slot) in [
            ("socket_owner", &spec.socket_owner, false, &mut d.owner),
            ("socket_group", &spec.socket_group, true, &mut d.group),
        ] {
            if let Some(n) = name {
                *slot = Some(lookup_id(n, group).ok_or_else(|| {
                    xdpath_api::GuestSpecError::new(
                        field,
                        format!(
                            "{} {n:?} does not exist; give a name from {} or a number.",
                            if group { "group" } else { "user" },
                            if group { "/etc/group" } else { "/etc/passwd" }
                        ),
                    )
                })?);
            }
        }
        Ok(d)
    }

    /// The API socket path (default `/run/xdpath/<iface>.api.sock`).
    pub fn api_socket(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_RUN_DIR).join(format!("{}.api.sock", self.iface)))
    }

    /// The root of the pin directories (default `/sys/fs/bpf/xdpath`).
    pub fn pin_root(&self) -> PathBuf {
        self.pin_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::classifier::DEFAULT_PIN_ROOT))
    }

    /// The flow table's state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
            .join(format!("{}.flows.json", self.iface))
    }

    /// Checks every setting; nothing is touched before this passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        valid_ifname(&self.iface).then_some(()).ok_or_else(|| {
            invalid(
                "iface",
                format!(
                    "{:?} is not a valid interface name (1 to 15 bytes, no '/' or spaces).",
                    self.iface
                ),
            )
        })?;
        if self.poll_idle_us > MAX_POLL_IDLE_US {
            return Err(invalid(
                "poll_idle_us",
                format!(
                    "{} is more than {MAX_POLL_IDLE_US} microseconds; use 0 to turn polling off.",
                    self.poll_idle_us
                ),
            ));
        }
        if self.queues == 0 || self.queues > xdpath_dataplane::virtio_net::MAX_QUEUE_PAIRS {
            return Err(invalid(
                "queues",
                format!(
                    "{} is out of range; use 1 to {}.",
                    self.queues,
                    xdpath_dataplane::virtio_net::MAX_QUEUE_PAIRS
                ),
            ));
        }
        if let Some(mac) = self.guest_mac {
            if mac.is_multicast() {
                return Err(invalid(
                    "guest_mac",
                    format!("{mac} is a multicast address; a guest needs a unicast one."),
                ));
            }
        }
        let guests = self.guest_registry()?;
        for (i, g) in self.guests.iter().enumerate() {
            self.guest_socket_permissions(g)
                .map_err(|e| invalid(&format!("guest[{i}].{}", e.field), e.reason))?;
        }
        if let Some(name) = &self.default_guest {
            check_guest_name(name).map_err(|e| invalid("default_guest", e.reason))?;
            if self.default_action != Action::Guest {
                return Err(invalid(
                    "default_guest",
                    format!(
                        "applies to default_action = \"guest\" only, not to {:?}.",
                        self.default_action.name()
                    ),
                ));
            }
            if !self.guests.is_empty() && guests.get(name).is_none() {
                return Err(invalid(
                    "default_guest",
                    format!(
                        "no guest named {name:?} is configured; name one of {}.",
                        guests
                            .iter()
                            .map(|g| format!("{:?}", g.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        if self.default_action == Action::Guest && self.default_guest_name().is_none() {
            return Err(invalid(
                "default_action",
                if self.guests.is_empty() {
                    "`guest` needs a guest; set default_guest to a guest's name (or guest_mac for the one-guest shorthand)."
                } else {
                    "`guest` needs a guest; with [[guest]] tables, set default_guest to the name of the one frames no rule matches go to."
                },
            ));
        }
        for (setting, v, max) in [
            ("max_flows", self.max_flows, xdpath_common::MAX_FLOWS),
            (
                "max_prefixes",
                self.max_prefixes,
                xdpath_common::MAX_PREFIXES,
            ),
        ] {
            if v == 0 || v > max {
                return Err(invalid(
                    setting,
                    format!("{v} is out of range; use 1 to {max} (what the maps hold)."),
                ));
            }
        }
        if !(68..=9000).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format!("{} is out of range; use 68 to 9000.", self.mtu),
            ));
        }
        self.vhost_socket_permissions()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DaemonConfig {
        toml::from_str("iface = \"eth1\"").expect("minimal config")
    }

    #[test]
    fn a_minimal_file_gets_defaults() {
        let c = base();
        assert_eq!(
            (c.queues, c.mtu, c.default_action, c.xdp_mode),
            (1, 1500, Action::Host, XdpAttachMode::Native)
        );
        assert_eq!(c.poll_idle_us, 50);
        assert!(!c.set_channels);
        assert_eq!(c.pin_root(), PathBuf::from("/sys/fs/bpf/xdpath"));
        assert_eq!(
            c.vhost_socket_permissions().unwrap(),
            xdpath_dataplane::SocketPermissions {
                mode: 0o660,
                owner: None,
                group: None
            }
        );
        assert_eq!((c.max_flows, c.max_prefixes), (1 << 20, 1 << 16));
        assert_eq!(
            c.vhost_socket(),
            PathBuf::from("/run/xdpath/eth1.vhost.sock")
        );
        c.validate().unwrap();
    }

    #[test]
    fn bad_settings_name_themselves() {
        let cases: &[(&str, &str)] = &[
            ("iface = \"a/b\"", "iface"),
            ("iface = \"e\"\nqueues = 0", "queues"),
            ("iface = \"e\"\npoll_idle_us = 1001", "poll_idle_us"),
            ("iface = \"e\"\nqueues = 17", "queues"),
            (
                "iface = \"e\"\nguest_mac = \"zz:00:00:00:00:00\"",
                "guest_mac",
            ),
            (
                "iface = \"e\"\nguest_mac = \"01:00:00:00:00:01\"",
                "guest_mac",
            ),
            ("iface = \"e\"\nguest_ip = [\"10.0.0.300\"]", "guest_ip"),
            (
                "iface = \"e\"\ndefault_action = \"guest\"",
                "default_action",
            ),
            ("iface = \"e\"\nmtu = 20000", "mtu"),
            (
                "iface = \"e\"\nvhost_socket_mode = \"0999\"",
                "vhost_socket_mode",
            ),
            (
                "iface = \"e\"\nvhost_socket_mode = \"1777\"",
                "vhost_socket_mode",
            ),
            (
                "iface = \"e\"\nvhost_socket_mode = 512",
                "vhost_socket_mode",
            ),
            (
                "iface = \"e\"\nvhost_socket_owner = \"no-such-user-xdpath\"",
                "vhost_socket_owner",
            ),
            (
                "iface = \"e\"\nvhost_socket_group = \"no-such-group-xdpath\"",
                "vhost_socket_group",
            ),
            ("iface = \"e\"\nmax_flows = 0", "max_flows"),
            ("iface = \"e\"\nmax_flows = 1048577", "max_flows"),
            ("iface = \"e\"\nmax_prefixes = 65537", "max_prefixes"),
            ("iface = \"e\"\nmax_prefixes = -1", "max_prefixes"),
        ];
        for (text, setting) in cases {
            // A value that does not parse is refused when the settings are
            // read; one that parses but does not fit, by `validate`.
            let e = DaemonConfig::from_toml(text)
                .and_then(|c| c.validate())
                .expect_err(text)
                .to_string();
            assert!(e.contains(&format!("`{setting}`")), "{text}: {e}");
        }
        assert!(
            toml::from_str::<DaemonConfig>("iface = \"e\"\nnope = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(toml::from_str::<DaemonConfig>("iface = \"e\"\nxdp_mode = \"fast\"").is_err());
    }

    #[test]
    fn values_are_typed_once_and_errors_are_sentences() {
        let c = DaemonConfig::from_toml(
            "iface = \"e\"\nguest_mac = \"52:54:00:AB:CD:02\"\nguest_ip = [\"10.0.0.5\", \"fd00::5\"]\ndefault_action = \"drop\"\nxdp_mode = \"generic\"",
        )
        .unwrap();
        assert_eq!(c.guest_mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 2])));
        assert_eq!(
            c.guest_ip,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(
            (c.default_action, c.xdp_mode),
            (Action::Drop, XdpAttachMode::Generic)
        );
        let e = DaemonConfig::from_toml("iface = \"e\"\nguest_mac = \"zz:00:00:00:00:00\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Setting `guest_mac`: \"zz:00:00:00:00:00\" is not a MAC address like 52:54:00:12:34:56."
        );
        let e = DaemonConfig::from_toml("iface = \"e\"\nguest_ip = [\"10.0.0.1\", \"10.0.0.300\"]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Setting `guest_ip`: \"10.0.0.300\" is not an IPv4 or IPv6 address."
        );
        let e = DaemonConfig::from_toml("iface = \"e\"\nnope = 1")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Setting `nope`: unknown field"), "{e}");
        let e = DaemonConfig::from_toml("queues = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iface"), "{e}");
        // A flag merged over a file's table is read the same way.
        let mut t: toml::Table = "iface = \"e\"\nmtu = 9000".parse().unwrap();
        t.insert("guest_mac".into(), "52:54:00:00:00:0g".into());
        let e = DaemonConfig::from_table(t).unwrap_err().to_string();
        assert!(e.starts_with("Setting `guest_mac`: "), "{e}");
        assert_eq!(
            parse_mac("52:54:00:ab:cd:02"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 2])
        );
    }

    #[test]
    fn vhost_socket_permissions_are_read_and_resolved() {
        let c = DaemonConfig::from_toml(
            "iface = \"e\"\nvhost_socket_mode = \"0600\"\nvhost_socket_owner = \"root\"\nvhost_socket_group = \"0\"",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.vhost_socket_permissions().unwrap(),
            xdpath_dataplane::SocketPermissions {
                mode: 0o600,
                owner: Some(0),
                group: Some(0)
            }
        );
        let c = DaemonConfig::from_toml("iface = \"e\"\nvhost_socket_mode = 0o640").unwrap();
        assert_eq!(c.vhost_socket_mode, 0o640);
        let e = DaemonConfig::from_toml("iface = \"e\"\nvhost_socket_mode = \"rw\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Setting `vhost_socket_mode`: \"rw\" is not a file mode; use octal permission bits such as \"0660\"."
        );
        let e =
            DaemonConfig::from_toml("iface = \"e\"\nvhost_socket_group = \"no-such-group-xdpath\"")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
        assert_eq!(
            e,
            "Setting `vhost_socket_group`: group \"no-such-group-xdpath\" does not exist; give a name from /etc/group or a number."
        );
    }

    const TWO_GUESTS: &str = "iface = \"eth1\"\nqueues = 4\n\
        [[guest]]\nname = \"web1\"\nmac = \"52:54:00:00:00:01\"\nips = [\"10.0.0.5\", \"fd00::5\"]\nqueues = 2\n\
        socket_mode = \"0600\"\nsocket_owner = \"root\"\nsocket_group = \"0\"\n\
        [[guest]]\nname = \"db\"\nmac = \"52:54:00:00:00:02\"\nvhost_socket = \"/run/vm/db.sock\"\nsocket_mode = 0o640\n";

    #[test]
    fn guest_tables_are_read_and_checked_together() {
        let c = DaemonConfig::from_toml(TWO_GUESTS).unwrap();
        assert_eq!(c.guests.len(), 2);
        let web = &c.guests[0];
        assert_eq!(
            (
                web.name.as_str(),
                web.queues,
                web.socket_mode,
                web.socket_owner.as_deref()
            ),
            ("web1", Some(2), Some(0o600), Some("root"))
        );
        assert_eq!(c.guests[1].socket_mode, Some(0o640));
        assert_eq!(c.shorthand_guest(), None);
        c.validate().unwrap();
        let r = c.guest_registry().unwrap();
        let ids: Vec<(u32, &str)> = r.iter().map(|g| (g.id, g.name())).collect();
        assert_eq!(ids, vec![(1, "web1"), (2, "db")]);
        assert_eq!(
            r.vhost_socket(&c.guests[0]),
            PathBuf::from("/run/xdpath/eth1.web1.vhost.sock")
        );
        assert_eq!(
            c.guest_file(),
            PathBuf::from("/var/lib/xdpath/eth1.guests.json")
        );
        let cases: &[(&str, &str)] = &[
            ("[[guest]]\nname = \"Web 1\"\nmac = \"52:54:00:00:00:09\"", "Setting `guest[2].name`: \"Web 1\" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit."),
            ("[[guest]]\nname = \"web1\"\nmac = \"52:54:00:00:00:09\"", "Setting `guest[2].name`: \"web1\" is guest \"web1\"'s already."),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:02\"", "Setting `guest[2].mac`: 52:54:00:00:00:02 is guest \"db\"'s already."),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\nvhost_socket = \"/run/vm/db.sock\"", "Setting `guest[2].vhost_socket`: /run/vm/db.sock is guest \"db\"'s already."),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\nips = [\"fd00::5\"]", "Setting `guest[2].ips`: fd00::5 is guest \"web1\"'s already."),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\nqueues = 5", "Setting `guest[2].queues`: 5 queue pairs; this daemon has 4 (--queues)."),
            ("[[guest]]\nname = \"x\"\nmac = \"zz\"", "Setting `guest[2].mac`: \"zz\" is not a MAC address like 52:54:00:12:34:56."),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\ncolor = 1", "Setting `guest[2].color`: unknown field `color`, expected one of `name`, `mac`, `ips`, `queues`, `vhost_socket`, `anti_spoof`, `vhost_client`, `socket_mode`, `socket_owner`, `socket_group`"),
            ("[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\nsocket_mode = \"rw\"", "Setting `guest[2].socket_mode`: \"rw\" is not a file mode; use octal permission bits such as \"0660\"."),
            ("guest_mac = \"52:54:00:00:00:01\"", "Setting `guest[0].mac`: 52:54:00:00:00:01 is guest \"default\"'s already."),
        ];
        for (extra, want) in cases {
            // Top-level keys must come before the tables.
            let text = if extra.starts_with("[[") {
                format!("{TWO_GUESTS}{extra}")
            } else {
                format!("{extra}\n{TWO_GUESTS}")
            };
            let e = DaemonConfig::from_toml(&text)
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert_eq!(&e, want, "{extra}");
        }
    }

    #[test]
    fn an_empty_key_is_refused_naming_the_settings() {
        // Found by the config_toml fuzz target: `'' = 0`.
        let e = DaemonConfig::from_toml("'' = 0\n").unwrap_err();
        assert!(matches!(e, ConfigError::Settings(_)), "{e}");
        assert!(e.to_string().contains("`iface`"), "{e}");
    }

    #[test]
    fn the_shorthand_is_the_guest_default_with_id_1() {
        let c = DaemonConfig::from_toml(
            "iface = \"eth1\"\nguest_mac = \"52:54:00:00:00:aa\"\nguest_ip = [\"10.0.0.9\"]\ndefault_action = \"guest\"",
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.shorthand_guest().unwrap();
        assert_eq!(s.name, "default");
        assert_eq!(s.ips, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            s.vhost_socket,
            Some(PathBuf::from("/run/xdpath/eth1.vhost.sock"))
        );
        assert_eq!(c.default_guest_name().as_deref(), Some("default"));
        let r = c.guest_registry().unwrap();
        assert_eq!(r.by_id(1).map(|g| g.name()), Some("default"));
        // With tables too: allowed without collisions, ids after 1; the
        // default guest must then be named.
        let both = format!("guest_mac = \"52:54:00:00:00:aa\"\n{TWO_GUESTS}");
        let c = DaemonConfig::from_toml(&both).unwrap();
        c.validate().unwrap();
        let ids: Vec<(u32, String)> = c
            .guest_registry()
            .unwrap()
            .iter()
            .map(|g| (g.id, g.name().to_string()))
            .collect();
        assert_eq!(
            ids,
            vec![(1, "default".into()), (2, "web1".into()), (3, "db".into())]
        );
        let e = DaemonConfig::from_toml(&format!("default_action = \"guest\"\n{both}"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Setting `default_action`: `guest` needs a guest; with [[guest]] tables, set default_guest to the name of the one frames no rule matches go to.");
        let c = DaemonConfig::from_toml(&format!(
            "default_action = \"guest\"\ndefault_guest = \"db\"\n{both}"
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.default_guest_name().as_deref(), Some("db"));
        for (extra, want) in [
            ("default_action = \"guest\"\ndefault_guest = \"nope\"", "Setting `default_guest`: no guest named \"nope\" is configured; name one of \"default\", \"web1\", \"db\"."),
            ("default_guest = \"db\"", "Setting `default_guest`: applies to default_action = \"guest\" only, not to \"host\"."),
            ("default_action = \"guest\"\ndefault_guest = \"DB\"", "Setting `default_guest`: \"DB\" is not a guest name; use 1 to 15 lowercase letters, digits, '-' or '_' starting with a letter or digit."),
        ] {
            let e = DaemonConfig::from_toml(&format!("{extra}\n{both}"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert_eq!(e, want, "{extra}");
        }
        let ip_only = DaemonConfig::from_toml("iface = \"e\"\nguest_ip = [\"10.0.0.1\"]").unwrap();
        ip_only.validate().unwrap();
        let g = ip_only.shorthand_guest().expect("the shorthand guest");
        assert_eq!((g.name.as_str(), g.mac, g.ips.len()), ("default", None, 1));
        let e = DaemonConfig::from_toml(&format!(
            "{TWO_GUESTS}[[guest]]\nname = \"x\"\nmac = \"52:54:00:00:00:09\"\nsocket_group = \"no-such-group-xdpath\""
        ))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(e, "Setting `guest[2].socket_group`: group \"no-such-group-xdpath\" does not exist; give a name from /etc/group or a number.");
        let c = DaemonConfig::from_toml("iface = \"e\"\nvhost_socket_mode = \"0640\"").unwrap();
        let mut g = GuestSpec::new("a", MacAddr([0x52, 0, 0, 0, 0, 1]));
        assert_eq!(c.guest_socket_permissions(&g).unwrap().mode, 0o640);
        g.socket_mode = Some(0o600);
        g.socket_owner = Some("0".into());
        let p = c.guest_socket_permissions(&g).unwrap();
        assert_eq!((p.mode, p.owner, p.group), (0o600, Some(0), None));
        // A socket alone declares the shorthand guest without a MAC (one
        // reached by rules only, as the one guest could be).
        let c = DaemonConfig::from_toml("iface = \"e\"\nvhost_socket = \"/run/x.sock\"").unwrap();
        c.validate().unwrap();
        let g = c.shorthand_guest().expect("the shorthand guest");
        assert_eq!((g.name.as_str(), g.mac), ("default", None));
        let c = DaemonConfig::from_toml("iface = \"e\"").unwrap();
        assert_eq!(c.shorthand_guest(), None, "no one-guest setting: no guest");
    }
}
