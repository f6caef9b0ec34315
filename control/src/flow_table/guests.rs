//! Guest entries: what the XDP program steers to guests apart from the
//! rules, the guest MAC table (`MACS`) and the guest addresses answered by
//! ARP/ND steering (`NEIGH`).
//!
//! The flow table projects them next to the rules, in their own generation
//! (`Config::guest_gen`, see `xdpath_common`, Generations), so changing them
//! is one atomic switch that does not touch the rules. They are not
//! persisted by the flow table: whoever owns the table hands them over (the
//! daemon, from its configuration `--guest-mac` and `--guest-ip`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use xdpath_common::{Action, AddrKey, MacKey, RuleValue};

/// The guest MAC and address entries, each with the value the program
/// applies (normally [`Action::Guest`] with the guest's port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestEntries {
    macs: BTreeMap<[u8; 6], RuleValue>,
    addrs: BTreeMap<IpAddr, RuleValue>,
}

impl GuestEntries {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries of one guest on port `port`: frames to `mac`, and ARP
    /// and ND for each of `ips`, go to that guest (rule id 0).
    pub fn for_guest(port: u32, mac: Option<[u8; 6]>, ips: &[IpAddr]) -> Self {
        let value = RuleValue {
            action: Action::Guest as u32,
            port,
            rule_id: 0,
            _pad: 0,
        };
        let mut g = Self::new();
        if let Some(mac) = mac {
            g.insert_mac(mac, value);
        }
        for ip in ips {
            g.insert_addr(*ip, value);
        }
        g
    }

    /// Frames to `mac` get `value`; returns the value it replaced.
    pub fn insert_mac(&mut self, mac: [u8; 6], value: RuleValue) -> Option<RuleValue> {
        self.macs.insert(mac, value)
    }

    /// ARP and ND whose target is `ip` get `value`; returns the value it
    /// replaced.
    pub fn insert_addr(&mut self, ip: IpAddr, value: RuleValue) -> Option<RuleValue> {
        self.addrs.insert(ip, value)
    }

    /// Removes the entry of `mac`.
    pub fn remove_mac(&mut self, mac: [u8; 6]) -> Option<RuleValue> {
        self.macs.remove(&mac)
    }

    /// Removes the entry of `ip`.
    pub fn remove_addr(&mut self, ip: IpAddr) -> Option<RuleValue> {
        self.addrs.remove(&ip)
    }

    /// The MAC entries, by MAC.
    pub fn macs(&self) -> impl Iterator<Item = ([u8; 6], RuleValue)> + '_ {
        self.macs.iter().map(|(m, v)| (*m, *v))
    }

    /// The address entries, by address.
    pub fn addrs(&self) -> impl Iterator<Item = (IpAddr, RuleValue)> + '_ {
        self.addrs.iter().map(|(a, v)| (*a, *v))
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty() && self.addrs.is_empty()
    }

    /// The `MACS` entries in generation `gen`.
    pub(super) fn mac_entries(&self, gen: u8) -> Vec<(MacKey, RuleValue)> {
        self.macs().map(|(m, v)| (MacKey::new(gen, m), v)).collect()
    }

    /// The `NEIGH` entries in generation `gen`.
    pub(super) fn neigh_entries(&self, gen: u8) -> Vec<(AddrKey, RuleValue)> {
        self.addrs()
            .map(|(a, v)| (AddrKey::new(gen, a), v))
            .collect()
    }
}
