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

use serde::{Deserialize, Deserializer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use xdpath_api::{Action, MacAddr, XdpAttachMode};

/// Where the daemon puts its files unless told otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/xdpath";
/// Where the flow table's state file lives unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpath";
/// Guest port id of the (one) guest.
pub const GUEST_PORT: u32 = 1;

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
/// 0777.
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Number(u32),
    }
    let (mode, shown) = match Mode::deserialize(d)? {
        Mode::Text(t) => (u32::from_str_radix(&t, 8).ok(), format!("{t:?}")),
        Mode::Number(n) => (Some(n), format!("{n:#o}")),
    };
    mode.filter(|m| *m <= 0o777).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{shown} is not a file mode; use octal permission bits such as \"0660\"."
        ))
    })
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
            let setting = e.path().iter().find_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            });
            let problem = e.inner().message().to_string();
            match setting {
                Some(setting) => ConfigError::Invalid { setting, problem },
                None => ConfigError::Settings(problem),
            }
        })
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
        let id = |setting: &str, name: &Option<String>, group: bool| {
            name.as_deref()
                .map(|n| {
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
        };
        Ok(xdpath_dataplane::SocketPermissions {
            mode: self.vhost_socket_mode,
            owner: id("vhost_socket_owner", &self.vhost_socket_owner, false)?,
            group: id("vhost_socket_group", &self.vhost_socket_group, true)?,
        })
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
        if self.default_action == Action::Guest && self.guest_mac.is_none() {
            return Err(invalid(
                "default_action",
                "`guest` needs a guest; set guest_mac too.",
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
}
