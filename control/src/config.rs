//! The daemon's configuration: an optional TOML file, overridden by flags.
//!
//! [`DaemonConfig`] is plain data, validated once by [`DaemonConfig::validate`]
//! (every error names the setting and says how to fix it) before anything is
//! touched. The same names are used as TOML keys and as `--flags`
//! (`vhost_socket` / `--vhost-socket`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use xdpath_common::Action;

/// Where the daemon puts its files unless told otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/xdpath";
/// Where the flow table's state file lives unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpath";

/// XDP attach mode setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode.
    #[default]
    Native,
    /// Generic (skb) mode, slower; only when asked.
    Generic,
}

/// Default action setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Pass to the host stack.
    #[default]
    Host,
    /// Drop.
    Drop,
    /// Send to the guest.
    Guest,
}

impl DefaultAction {
    /// The map value.
    pub fn action(self) -> Action {
        match self {
            Self::Host => Action::Host,
            Self::Drop => Action::Drop,
            Self::Guest => Action::Guest,
        }
    }
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
    /// The guest's MAC address (steered to the guest, told to it).
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// The guest's IP addresses, for ARP/ND steering.
    #[serde(default)]
    pub guest_ip: Vec<String>,
    /// API socket path.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Group allowed to use the API socket (besides root).
    #[serde(default)]
    pub api_group: Option<String>,
    /// Action for frames no rule matches.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
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

/// Largest `poll_idle_us`.
pub const MAX_POLL_IDLE_US: u32 = 1000;

/// A configuration error: the setting and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a bad value.
    #[error("Setting `{setting}`: {problem}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The config file could not be read or parsed.
    #[error("Config file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
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
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl DaemonConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// The vhost-user socket path (default `/run/xdpath/<iface>.vhost.sock`).
    pub fn vhost_socket(&self) -> PathBuf {
        self.vhost_socket.clone().unwrap_or_else(|| {
            Path::new(DEFAULT_RUN_DIR).join(format!("{}.vhost.sock", self.iface))
        })
    }

    /// The API socket path (default `/run/xdpath/<iface>.api.sock`).
    pub fn api_socket(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| Path::new(DEFAULT_RUN_DIR).join(format!("{}.api.sock", self.iface)))
    }

    /// The flow table's state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
            .join(format!("{}.flows.json", self.iface))
    }

    /// The guest MAC, parsed.
    pub fn guest_mac(&self) -> Option<[u8; 6]> {
        self.guest_mac.as_deref().and_then(parse_mac)
    }

    /// The guest IPs, parsed.
    pub fn guest_ips(&self) -> Vec<std::net::IpAddr> {
        self.guest_ip
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
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
        if let Some(m) = &self.guest_mac {
            let Some(mac) = parse_mac(m) else {
                return Err(invalid(
                    "guest_mac",
                    format!("{m:?} is not a MAC address like 52:54:00:12:34:56."),
                ));
            };
            if mac[0] & 1 == 1 {
                return Err(invalid(
                    "guest_mac",
                    format!("{m} is a multicast address; a guest needs a unicast one."),
                ));
            }
        }
        for ip in &self.guest_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "guest_ip",
                    format!("{ip:?} is not an IPv4 or IPv6 address."),
                ));
            }
        }
        if self.default_action == DefaultAction::Guest && self.guest_mac.is_none() {
            return Err(invalid(
                "default_action",
                "`guest` needs a guest; set guest_mac too.",
            ));
        }
        if !(68..=9000).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format!("{} is out of range; use 68 to 9000.", self.mtu),
            ));
        }
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
            (1, 1500, DefaultAction::Host, XdpModeSetting::Native)
        );
        assert_eq!(c.poll_idle_us, 50);
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
        ];
        for (text, setting) in cases {
            let c: DaemonConfig = toml::from_str(text).expect(text);
            let e = c.validate().expect_err(text).to_string();
            assert!(e.contains(&format!("`{setting}`")), "{text}: {e}");
        }
        assert!(
            toml::from_str::<DaemonConfig>("iface = \"e\"\nnope = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(toml::from_str::<DaemonConfig>("iface = \"e\"\nxdp_mode = \"fast\"").is_err());
    }
}
