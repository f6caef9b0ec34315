//! The two enums a user names: what a frame gets ([`Action`]) and how the
//! XDP program is attached ([`XdpAttachMode`]).
//!
//! Each is the one definition used by the config file, the daemon's and
//! the CLI's flags (clap `ValueEnum`, feature `clap`), the rules' JSON and
//! the health answer (serde, lower-case names). The classifier's map
//! encoding of an action is `xdpath_common::Action`; [`Action`] converts
//! to it in one place.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a matching frame gets. The default (for frames no rule matches) is
/// the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub enum Action {
    /// Redirect to the AF_XDP socket of the frame's rx queue, for a guest.
    Guest,
    /// Pass to the host stack.
    #[default]
    Host,
    /// Drop.
    Drop,
}

impl Action {
    /// Every action, in the order messages list them.
    pub const ALL: [Action; 3] = [Action::Guest, Action::Host, Action::Drop];

    /// The name used in JSON, TOML and flags: `guest`, `host` or `drop`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::Host => "host",
            Self::Drop => "drop",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} is not an action (guest, host or drop).", crate::rules::echo(.0))]
pub struct UnknownAction(pub String);

/// Parses `guest`, `host` or `drop`, case-insensitively (rules accept
/// `"HOST"`).
impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// The classifier's map encoding.
impl From<Action> for xdpath_common::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Guest => Self::Guest,
            Action::Host => Self::Host,
            Action::Drop => Self::Drop,
        }
    }
}

/// The action a map value encodes.
impl From<xdpath_common::Action> for Action {
    fn from(a: xdpath_common::Action) -> Self {
        match a {
            xdpath_common::Action::Guest => Self::Guest,
            xdpath_common::Action::Host => Self::Host,
            xdpath_common::Action::Drop => Self::Drop,
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub enum XdpAttachMode {
    /// Native (driver) mode: the fast path; fails if the driver lacks XDP.
    #[default]
    Native,
    /// Generic (skb) mode: works everywhere, slower. Only when asked.
    Generic,
}

impl XdpAttachMode {
    /// Both modes.
    pub const ALL: [XdpAttachMode; 2] = [XdpAttachMode::Native, XdpAttachMode::Generic];

    /// The name used in JSON, TOML and flags: `native` or `generic`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Flags take the serde names. Written out rather than derived so the
/// values carry no per-value help (the flags' help lists them on one line).
#[cfg(feature = "clap")]
mod flags {
    use super::{Action, XdpAttachMode};
    use clap::builder::PossibleValue;

    impl clap::ValueEnum for Action {
        fn value_variants<'a>() -> &'a [Self] {
            &Self::ALL
        }

        fn to_possible_value(&self) -> Option<PossibleValue> {
            Some(PossibleValue::new(self.name()))
        }
    }

    impl clap::ValueEnum for XdpAttachMode {
        fn value_variants<'a>() -> &'a [Self] {
            &Self::ALL
        }

        fn to_possible_value(&self) -> Option<PossibleValue> {
            Some(PossibleValue::new(self.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for a in Action::ALL {
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
            assert_eq!(a.name().to_uppercase().parse::<Action>().unwrap(), a);
            let back: xdpath_common::Action = a.into();
            assert_eq!(Action::from(back), a);
        }
        assert_eq!(
            "forward".parse::<Action>().unwrap_err().to_string(),
            "\"forward\" is not an action (guest, host or drop)."
        );
        for m in [XdpAttachMode::Native, XdpAttachMode::Generic] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        assert_eq!(Action::default(), Action::Host);
    }
}
