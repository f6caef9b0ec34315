//! Guest-to-guest switching and anti-spoofing on guest TX.
//!
//! Several guests on one NIC cannot reach each other through the wire (a
//! frame sent out of a NIC port does not come back in on it), so a guest's
//! TX worker switches: a frame for another local guest's MAC goes straight
//! into that guest's RX and never reaches the wire; broadcast and multicast
//! go to the wire and to every other local guest; anything else goes to
//! the wire (docs/ARCHITECTURE.md, "Several guests").
//!
//! What lives here:
//! - [`GuestSwitch`]: the table of local guests (MAC -> the guest's
//!   handoff table, [`Peers`]), shared by every guest's workers and
//!   replaced whole by the control plane when a guest comes or goes
//!   (`arc_swap`: a worker loads it once per batch, without a lock; a
//!   replaced table lives on until the last batch using it ends).
//! - [`TxGuard`]: one guest's anti-spoofing policy (its MAC and addresses),
//!   checked on every frame it sends.
//! - [`Route`]: what becomes of one frame.
//!
//! Delivery into another guest uses that guest's handoff inboxes
//! (`crate::handoff`): the sending worker copies the frame into a pooled
//! buffer of the target's pair and wakes that pair's worker, which alone
//! writes its RX vring (concurrency rule 1). A full inbox, or a target
//! whose frontend is not connected, is a counted drop, never a wait.

use crate::handoff::Peers;
use arc_swap::ArcSwap;
use std::net::IpAddr;
use std::sync::Arc;

/// One local guest as the switch sees it.
#[derive(Debug, Clone)]
pub struct Port {
    /// The guest's id.
    pub id: u32,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Its server's handoff table: frames for it go into an inbox there.
    pub peers: Arc<Peers>,
}

/// The local guests, by MAC (a handful: a linear scan beats hashing).
#[derive(Debug, Default)]
pub struct SwitchTable {
    ports: Vec<Port>,
}

impl SwitchTable {
    /// A table of `ports`.
    pub fn new(ports: Vec<Port>) -> Self {
        Self { ports }
    }

    /// The guests in the table.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Where a frame sent by guest `from` goes, by its destination MAC.
    #[inline]
    pub fn route(&self, from: u32, dst: &[u8; 6]) -> Route<'_> {
        if self.ports.len() < 2 {
            // Nobody to switch to: the single-guest path is one branch.
            return Route::Wire;
        }
        if dst[0] & 1 != 0 {
            return Route::Flood;
        }
        match self.ports.iter().find(|p| &p.mac == dst) {
            Some(p) if p.id != from => Route::Local(p),
            _ => Route::Wire,
        }
    }
}

/// What becomes of one guest TX frame.
#[derive(Debug)]
pub enum Route<'a> {
    /// To the wire only.
    Wire,
    /// To another local guest only.
    Local(&'a Port),
    /// Broadcast or multicast: to the wire and to every other local
    /// guest.
    Flood,
}

/// The switch shared by all guests of one daemon (see the module docs).
#[derive(Debug, Default)]
pub struct GuestSwitch {
    table: ArcSwap<SwitchTable>,
}

impl GuestSwitch {
    /// An empty switch: every frame goes to the wire.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current table (a worker loads it once per batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<SwitchTable>> {
        self.table.load()
    }

    /// Replaces the table (the control plane, when a guest comes or goes).
    pub fn publish(&self, table: SwitchTable) {
        self.table.store(Arc::new(table));
    }
}

/// Delivers `frame` into guest `to`'s RX, through the inbox of the pair
/// that takes frames arriving on queue `queue`. Returns the handoff to
/// wake, or `None` when the frame was dropped (the guest's frontend is not
/// connected, or its inbox is full).
pub fn deliver<'a>(to: &'a Port, queue: u16, frame: &[u8]) -> Option<&'a crate::handoff::Handoff> {
    if !to.peers.any_enabled() {
        return None;
    }
    let pair = to.peers.target_for(queue)?;
    let h = to.peers.handoff(pair)?;
    h.offer(frame).then_some(h)
}

/// Why a guest's frame was refused by its [`TxGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoof {
    /// The source MAC is not the guest's.
    Mac,
    /// The source IP (IPv4, IPv6) or the ARP sender address is not one of
    /// the guest's.
    Ip,
}

/// One guest's anti-spoofing policy: its frames must carry its own source
/// MAC and, if it declares addresses, one of them as the IPv4/IPv6 source
/// or ARP sender. Off when the guest has no MAC or turned it off.
#[derive(Debug, Clone, Default)]
pub struct TxGuard {
    mac: Option<[u8; 6]>,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_ARP: [u8; 2] = [0x08, 0x06];

impl TxGuard {
    /// No checks.
    pub fn off() -> Self {
        Self::default()
    }

    /// Frames must come from `mac` and, if `ips` is not empty, from one
    /// of `ips`.
    pub fn new(mac: [u8; 6], ips: &[IpAddr]) -> Self {
        let mut g = Self {
            mac: Some(mac),
            ..Self::default()
        };
        for ip in ips {
            match ip {
                IpAddr::V4(a) => g.v4.push(a.octets()),
                IpAddr::V6(a) => g.v6.push(a.octets()),
            }
        }
        g
    }

    /// Whether the guard checks anything.
    pub fn is_on(&self) -> bool {
        self.mac.is_some()
    }

    /// Checks one frame (Ethernet header first; at least 14 bytes).
    /// Frames too short to show the address checked pass the IP check:
    /// they carry none. IPv6 from the unspecified address (duplicate
    /// address detection) passes.
    #[inline]
    pub fn check(&self, frame: &[u8]) -> Result<(), Spoof> {
        let Some(mac) = &self.mac else {
            return Ok(());
        };
        if frame.get(6..12) != Some(&mac[..]) {
            return Err(Spoof::Mac);
        }
        if self.v4.is_empty() && self.v6.is_empty() {
            return Ok(());
        }
        let Some(ethertype) = frame.get(12..14) else {
            return Ok(());
        };
        let ok = if ethertype == ETH_P_IP {
            frame
                .get(26..30)
                .is_none_or(|src| self.v4.iter().any(|a| a[..] == *src) || src == [0; 4])
        } else if ethertype == ETH_P_ARP {
            frame
                .get(28..32)
                .is_none_or(|spa| self.v4.iter().any(|a| a[..] == *spa) || spa == [0; 4])
        } else if ethertype == ETH_P_IPV6 {
            frame.get(22..38).is_none_or(|src| {
                self.v6.iter().any(|a| a[..] == *src)
                    || src == [0; 16]
                    // Link-local addresses (fe80::/10) are the guest's own
                    // business on the segment (ND, RA).
                    || (src[0] == 0xfe && src[1] & 0xc0 == 0x80)
            })
        } else {
            true
        };
        if ok {
            Ok(())
        } else {
            Err(Spoof::Ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: u32, last: u8) -> Port {
        Port {
            id,
            mac: [0x52, 0x54, 0, 0, 0, last],
            peers: Arc::new(Peers::new(2, 256).unwrap()),
        }
    }

    #[test]
    fn frames_are_switched_by_destination_mac() {
        let t = SwitchTable::new(vec![port(1, 1), port(2, 2), port(3, 3)]);
        assert!(matches!(t.route(1, &[0x52, 0x54, 0, 0, 0, 2]), Route::Local(p) if p.id == 2));
        assert!(
            matches!(t.route(1, &[0x52, 0x54, 0, 0, 0, 1]), Route::Wire),
            "own MAC"
        );
        assert!(matches!(t.route(1, &[0x52, 0x54, 0, 0, 0, 9]), Route::Wire));
        assert!(matches!(t.route(1, &[0xff; 6]), Route::Flood));
        assert!(matches!(
            t.route(1, &[0x33, 0x33, 0, 0, 0, 1]),
            Route::Flood
        ));
        let one = SwitchTable::new(vec![port(1, 1)]);
        assert!(matches!(one.route(1, &[0xff; 6]), Route::Wire), "alone");
    }

    #[test]
    fn delivery_goes_into_the_target_inbox_and_a_full_inbox_drops() {
        let p = port(2, 2);
        assert!(deliver(&p, 1, &[7u8; 60]).is_none(), "not connected");
        p.peers.set_enabled(0, true);
        let mut n = 0;
        while deliver(&p, 1, &[7u8; 60]).is_some() {
            n += 1;
            assert!(n <= crate::handoff::HANDOFF_SLOTS);
        }
        assert_eq!(n, crate::handoff::HANDOFF_SLOTS);
        let h = p.peers.handoff(0).unwrap();
        let (buf, len) = h.take().unwrap();
        assert_eq!(&buf[..len], &[7u8; 60][..]);
    }

    fn frame(src_mac: [u8; 6], ethertype: [u8; 2], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn spoofed_sources_are_refused() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let g = TxGuard::new(
            mac,
            &["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        let mut v4 = vec![0x45; 20];
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(g.check(&frame(mac, ETH_P_IP, &v4)), Ok(()));
        assert_eq!(g.check(&frame([2; 6], ETH_P_IP, &v4)), Err(Spoof::Mac));
        v4[12..16].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(g.check(&frame(mac, ETH_P_IP, &v4)), Err(Spoof::Ip));
        let mut arp = vec![0u8; 28];
        arp[14..18].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(g.check(&frame(mac, ETH_P_ARP, &arp)), Err(Spoof::Ip));
        arp[14..18].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(g.check(&frame(mac, ETH_P_ARP, &arp)), Ok(()));
        let mut v6 = vec![0x60; 40];
        let fd1: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        v6[8..24].copy_from_slice(&fd1.octets());
        assert_eq!(g.check(&frame(mac, ETH_P_IPV6, &v6)), Ok(()));
        v6[8..24].copy_from_slice(&[0xfd; 16]);
        assert_eq!(g.check(&frame(mac, ETH_P_IPV6, &v6)), Err(Spoof::Ip));
        let ll: std::net::Ipv6Addr = "fe80::5054:ff:fe00:1".parse().unwrap();
        v6[8..24].copy_from_slice(&ll.octets());
        assert_eq!(g.check(&frame(mac, ETH_P_IPV6, &v6)), Ok(()));
        assert_eq!(TxGuard::off().check(&frame([2; 6], ETH_P_IP, &v4)), Ok(()));
        let mac_only = TxGuard::new(mac, &[]);
        assert_eq!(mac_only.check(&frame(mac, ETH_P_IP, &v4)), Ok(()));
    }
}
