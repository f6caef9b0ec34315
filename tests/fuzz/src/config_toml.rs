//! Target `config_toml`: the daemon's configuration file
//! (`DaemonConfig::from_toml`, then `validate`), as `xdpathd --config`
//! reads it.
//!
//! Input: the TOML text (bytes that are not UTF-8 are replaced, as a
//! reader that insisted on UTF-8 would refuse them first).
//!
//! Properties:
//! - no panic, and reading is deterministic;
//! - every error names what is wrong: a bad setting names the setting (a
//!   field of the configuration, or the unknown key the file has) in
//!   backquotes; an error about the settings as a whole is a TOML syntax
//!   error (it says where: a line) or names a field in backquotes (a
//!   missing one).

use xdpath_control::config::{ConfigError, DaemonConfig};

/// The configuration's settings, as TOML keys.
const SETTINGS: &[&str] = &[
    "iface",
    "queues",
    "vhost_socket",
    "guest_mac",
    "guest_ip",
    "api_socket",
    "api_group",
    "default_action",
    "xdp_mode",
    "force",
    "busy_poll",
    "poll_idle_us",
    "mtu",
    "state_dir",
    "vhost_socket_mode",
    "vhost_socket_owner",
    "vhost_socket_group",
    "set_channels",
    "pin_root",
    "max_flows",
    "max_prefixes",
    "default_guest",
    "guest",
];

/// Whether `setting` names a `[[guest]]` table or one of its keys (a
/// field or the unknown key the table has): `guest[<n>]`,
/// `guest[<n>].<key>`.
fn is_guest_setting(setting: &str) -> bool {
    let Some(rest) = setting.strip_prefix("guest[") else {
        return false;
    };
    match rest.split_once(']') {
        Some((n, "")) => n.parse::<usize>().is_ok(),
        Some((n, key)) => {
            n.parse::<usize>().is_ok() && key.strip_prefix('.').is_some_and(|k| !k.is_empty())
        }
        None => false,
    }
}

fn check_error(e: &ConfigError, text: &str) {
    let msg = e.to_string();
    match e {
        ConfigError::Invalid { setting, .. } => {
            assert!(!setting.is_empty(), "an error without a setting: {msg}");
            assert!(
                msg.contains(&format!("`{setting}`")),
                "the message does not name {setting:?}: {msg}"
            );
            let table = text.parse::<toml::Table>().ok();
            assert!(
                SETTINGS.contains(&setting.as_str())
                    || is_guest_setting(setting)
                    || table.is_some_and(|t| t.contains_key(setting.as_str())),
                "{setting:?} is neither a setting nor a key of the file: {msg}"
            );
        }
        ConfigError::Settings(detail) => {
            let syntax = text.parse::<toml::Table>().is_err();
            assert!(
                (syntax && detail.contains("line"))
                    || SETTINGS.iter().any(|s| detail.contains(&format!("`{s}`"))),
                "an error about the settings that names nothing: {msg}"
            );
        }
        ConfigError::File { .. } => panic!("reading text cannot be a file error: {msg}"),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = DaemonConfig::from_toml(&text);
    let second = DaemonConfig::from_toml(&text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "reading is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "reading is deterministic"),
        _ => panic!("reading is not deterministic"),
    }
    match first {
        Ok(cfg) => {
            if let Err(e) = cfg.validate() {
                check_error(&e, &text);
                assert!(
                    matches!(e, ConfigError::Invalid { .. }),
                    "validate names a setting: {e}"
                );
            }
        }
        Err(e) => check_error(&e, &text),
    }
}
