//! [`MacAddr`]: an Ethernet address, parsed once where it enters (config
//! file, flags, JSON) and shown as `52:54:00:12:34:56`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six bytes, in wire order.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// A group (multicast or broadcast) address: the I/G bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        Self(b)
    }
}

/// Lower-case hex pairs joined by colons.
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Text that is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address like 52:54:00:12:34:56.")]
pub struct BadMac(pub String);

/// Parses six two-digit hex pairs joined by colons, e.g.
/// `52:54:00:12:34:56`.
impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Self(out)),
            Some(_) => Err(bad()),
        }
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for MacAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MacAddr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$",
            "description": "An Ethernet MAC address, e.g. 52:54:00:12:34:56.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows() {
        let m: MacAddr = "52:54:00:AB:cd:02".parse().unwrap();
        assert_eq!(m.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 2]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:02");
        assert!(!m.is_multicast());
        assert!(MacAddr([1, 0, 0, 0, 0, 1]).is_multicast());
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:02:03",
            "zz:00:00:00:00:00",
            "5:54:00:ab:cd:02",
            "+5:54:00:ab:cd:02",
            "525400abcd02",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>().unwrap_err().to_string(),
                format!("{bad:?} is not a MAC address like 52:54:00:12:34:56.")
            );
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"52:54:00:ab:cd:02\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), m);
    }
}
