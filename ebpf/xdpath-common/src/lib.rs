//! Types shared by the xdpath XDP program and userspace.
//!
//! Everything the kernel side and the user side must agree on byte for byte
//! lives here and nowhere else: map names, map keys and values, the counter
//! block and the metadata block written in front of redirected frames. Both
//! sides compile this crate, so the layouts cannot drift.
//!
//! All structs are `#[repr(C)]` without implicit padding (explicit `_pad`
//! fields instead) so that they are valid map keys (the kernel hashes every
//! byte) and plain-old-data for aya.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the
//! wire (network byte order); userspace converts with `to_be`/`from_be`.
//!
//! # Generations (atomic bulk changes)
//!
//! Every rule map is double-buffered inside itself: every key carries a
//! generation byte (0 or 1) and [`Config`] names the generation the program
//! looks up. A bulk change writes the new contents under the inactive
//! generation, flips the generation in `Config` with one map update, waits
//! for the program runs that may still use the old one, then deletes the old
//! generation. The program copies `Config` once per frame, so a frame sees
//! either the old contents or the new ones, never a mix.
//!
//! There are two independent generations, one per group of maps:
//!
//! - [`Config::active_gen`]: the rules, `FLOWS` ([`FlowKey::gen`]) and
//!   `PREFIXES` ([`PrefixData::gen`]);
//! - [`Config::guest_gen`]: the guest tables, `MACS` ([`MacKey::gen`]) and
//!   `NEIGH` ([`AddrKey::gen`]).
//!
//! They are separate because of what a switch costs: it rewrites every
//! entry of its group. A guest change (a MAC and a few addresses) must not
//! rewrite a million flow rules, and a rule replace need not touch the guest
//! tables. Both live in the same `Config` entry, so a change of rules and
//! guests together (a guest removed with its rules) is still one update
//! that flips both.
#![no_std]

/// Name of the XSKMAP (AF_XDP sockets, indexed by [`xsk_slot`]: guest and
/// NIC rx queue).
pub const MAP_XSKS: &str = "XSKS";
/// Name of the exact 5-tuple rule hash map (`FlowKey` -> `RuleValue`).
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the destination prefix LPM trie (`PrefixKey` -> `RuleValue`).
pub const MAP_PREFIXES: &str = "PREFIXES";
/// Name of the guest MAC table (`MacKey` -> `RuleValue`).
pub const MAP_MACS: &str = "MACS";
/// Name of the guest address table used for ARP/ND (`AddrKey` -> `RuleValue`).
pub const MAP_NEIGH: &str = "NEIGH";
/// Name of the one-entry configuration array (`Config`).
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the per-CPU counter block (`Counters`, one entry).
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "xdpath";
/// Every map the loader pins, in a stable order.
pub const ALL_MAPS: [&str; 7] = [
    MAP_XSKS,
    MAP_FLOWS,
    MAP_PREFIXES,
    MAP_MACS,
    MAP_NEIGH,
    MAP_CONFIG,
    MAP_COUNTERS,
];

/// The highest NIC rx queue index the program can redirect is
/// `MAX_QUEUES - 1`.
pub const MAX_QUEUES: u32 = 64;
/// Guests one program serves: guest ports (ids) are `1..=MAX_GUESTS`.
pub const MAX_GUESTS: u32 = 64;
/// XSKMAP entries: one per guest and NIC queue ([`xsk_slot`]).
pub const XSK_SLOTS: u32 = MAX_QUEUES * MAX_GUESTS;

/// The XSKMAP entry of guest `port`'s socket on NIC rx queue `queue`:
/// `(port - 1) * MAX_QUEUES + queue`, so guest 1's entries are the queue
/// numbers themselves. `None` for port 0, a port above [`MAX_GUESTS`] or a
/// queue from [`MAX_QUEUES`] on: the program then fails open to the host.
///
/// Each guest has its own AF_XDP socket on every queue it uses; the
/// sockets of one queue share that queue's UMEM (the kernel delivers from
/// an XSKMAP only to a socket bound to the arrival queue, and any number
/// of sockets may be bound to one queue with a shared UMEM). An entry is
/// present only while the guest's workers read the socket, which is the
/// guest's liveness: a guest that is absent or disconnected has no entry,
/// and its frames go to the host.
#[inline(always)]
pub const fn xsk_slot(port: u32, queue: u32) -> Option<u32> {
    if port == 0 || port > MAX_GUESTS || queue >= MAX_QUEUES {
        return None;
    }
    Some((port - 1) * MAX_QUEUES + queue)
}
/// Exact rules per generation; the map holds two generations.
pub const MAX_FLOWS: u32 = 1 << 20;
/// Prefix rules per generation; the map holds two generations.
pub const MAX_PREFIXES: u32 = 1 << 16;
/// Guest MAC addresses per generation; the map holds two generations.
pub const MAX_MACS: u32 = 4096;
/// Guest IP addresses answered by ARP/ND steering, per generation; the map
/// holds two generations.
pub const MAX_NEIGH: u32 = 4096;

/// Address family tag used in keys.
pub const FAMILY_V4: u8 = 4;
/// Address family tag used in keys.
pub const FAMILY_V6: u8 = 6;

/// What happens to a frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `XDP_PASS`: the host kernel stack gets it.
    Host = 0,
    /// Redirect to the AF_XDP socket of the rx queue, for guest `port`.
    Guest = 1,
    /// `XDP_DROP`.
    Drop = 2,
}

impl Action {
    /// Decodes the raw value stored in maps; unknown values are `None`.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Host),
            1 => Some(Self::Guest),
            2 => Some(Self::Drop),
            _ => None,
        }
    }
}

/// Which stage of the decision order matched.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleClass {
    /// Exact 5-tuple rule.
    Exact = 1,
    /// Destination prefix rule.
    Prefix = 2,
    /// Guest MAC table.
    Mac = 3,
    /// ARP/ND target address of a guest.
    Neigh = 4,
    /// No rule matched: [`Config::default_action`].
    Default = 5,
}

/// Exact 5-tuple rule key. Addresses: IPv4 in the first 4 bytes, the rest
/// zero. Ports are 0 for protocols without ports, for non-first fragments
/// and for frames cut before their TCP/UDP ports (the fragment policy in
/// the classifier's module docs, `ebpf/xdpath-ebpf/src/main.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Rule generation ([`Config::active_gen`], see the crate docs).
    pub gen: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// Source address, wire order.
    pub src: [u8; 16],
    /// Destination address, wire order.
    pub dst: [u8; 16],
}

/// What a rule does, and which rule it was (reported in metadata).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// An [`Action`] as `u32`.
    pub action: u32,
    /// Guest port id for [`Action::Guest`].
    pub port: u32,
    /// The control plane's id of the rule (0 = none).
    pub rule_id: u32,
    /// Always zero.
    pub _pad: u32,
}

/// Data part of an LPM key: the generation and family bytes come first and
/// are always fully matched, so the trie prefix length is `16 + prefix`.
/// The two pad bytes at the end are never reached by a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixData {
    /// Rule generation ([`Config::active_gen`]).
    pub gen: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Destination address, wire order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Bits of [`PrefixData`] in front of the address.
pub const PREFIX_HEADER_BITS: u32 = 16;

/// Guest MAC table key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacKey {
    /// The MAC address, wire order.
    pub mac: [u8; 6],
    /// Guest-table generation ([`Config::guest_gen`], see the crate docs).
    pub gen: u8,
    /// Always zero.
    pub _pad: u8,
}

impl MacKey {
    /// The key of `mac` in generation `gen`.
    pub const fn new(gen: u8, mac: [u8; 6]) -> Self {
        Self { mac, gen, _pad: 0 }
    }
}

/// Guest address key for ARP/ND steering.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    /// Guest-table generation ([`Config::guest_gen`], see the crate docs).
    pub gen: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// The address, wire order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}

impl AddrKey {
    /// The key of `ip` in generation `gen`.
    pub const fn new(gen: u8, ip: core::net::IpAddr) -> Self {
        let (family, addr) = match ip {
            core::net::IpAddr::V4(a) => {
                let o = a.octets();
                let mut addr = [0u8; 16];
                addr[0] = o[0];
                addr[1] = o[1];
                addr[2] = o[2];
                addr[3] = o[3];
                (FAMILY_V4, addr)
            }
            core::net::IpAddr::V6(a) => (FAMILY_V6, a.octets()),
        };
        Self {
            gen,
            family,
            _pad: [0; 2],
            addr,
        }
    }
}

/// The program's configuration (entry 0 of the CONFIG array).
///
/// The two generation bytes share the first word, which was one `u32`
/// `active_gen` before the guest tables had generations: an entry written
/// by that layout (little-endian 0 or 1) reads as the same rule generation
/// and guest generation 0, and the size stays 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Generation of FLOWS and PREFIXES that the program uses (0 or 1).
    pub active_gen: u8,
    /// Generation of MACS and NEIGH that the program uses (0 or 1).
    pub guest_gen: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// An [`Action`] for frames no rule matched. Zero (host) out of the box.
    pub default_action: u32,
    /// Guest port for a default action of [`Action::Guest`].
    pub default_port: u32,
    /// [`CONFIG_F_META`] and future flags.
    pub flags: u32,
}

/// Write an [`XdpMeta`] block in front of redirected frames.
pub const CONFIG_F_META: u32 = 1;

/// Per-CPU counters, summed by userspace. Every frame the program sees
/// moves exactly one `action_*` counter and exactly one `class_*` or
/// `parse_errors` counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Counters {
    /// Frames the program saw.
    pub frames: u64,
    /// Frames passed to the host stack (including fail-open redirects).
    pub action_host: u64,
    /// Frames redirected to an AF_XDP socket.
    pub action_guest: u64,
    /// Frames dropped by a drop rule or default (including the
    /// `parse_errors` frames under a drop default).
    pub action_drop: u64,
    /// Decisions by exact rules.
    pub class_exact: u64,
    /// Decisions by prefix rules.
    pub class_prefix: u64,
    /// Decisions by the guest MAC table.
    pub class_mac: u64,
    /// Decisions by ARP/ND target.
    pub class_neigh: u64,
    /// Decisions by the default action.
    pub class_default: u64,
    /// Frames no table could decide: malformed or truncated before their
    /// L3 destination, or whose transport header could not be read and
    /// that no exact or prefix rule matched. Passed to the host (dropped
    /// when the default action is drop), never redirected.
    pub parse_errors: u64,
    /// Guest decisions that found no socket for their guest on their rx
    /// queue (the guest is absent or not connected, or the port is not a
    /// guest id) and failed open to the host (also counted in
    /// `action_host`).
    pub redirect_no_socket: u64,
    /// Guest decisions redirected to a socket (equals `action_guest`).
    pub redirects: u64,
    /// Redirected frames whose metadata block could not be written.
    pub meta_errors: u64,
}

impl Counters {
    /// Adds `other` field by field (used to sum per-CPU values).
    pub fn add(&mut self, o: &Counters) {
        self.frames += o.frames;
        self.action_host += o.action_host;
        self.action_guest += o.action_guest;
        self.action_drop += o.action_drop;
        self.class_exact += o.class_exact;
        self.class_prefix += o.class_prefix;
        self.class_mac += o.class_mac;
        self.class_neigh += o.class_neigh;
        self.class_default += o.class_default;
        self.parse_errors += o.parse_errors;
        self.redirect_no_socket += o.redirect_no_socket;
        self.redirects += o.redirects;
        self.meta_errors += o.meta_errors;
    }
}

/// Metadata block the program writes directly in front of a redirected
/// frame (`data_meta`), so userspace does not parse the frame again. In an
/// AF_XDP RX descriptor it sits in the `XDP_META_LEN` bytes before `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMeta {
    /// [`XDP_META_MAGIC`] when the block is valid.
    pub magic: u32,
    /// The matched rule's id (0 for MAC/default decisions without an id).
    pub rule_id: u32,
    /// Guest port the frame is for.
    pub port: u32,
    /// The [`RuleClass`] that decided, as `u8`.
    pub class: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// `b"XDPM"` read as a little-endian `u32`.
pub const XDP_META_MAGIC: u32 = u32::from_le_bytes(*b"XDPM");
/// Size of [`XdpMeta`]; a multiple of 4 as the kernel requires.
pub const XDP_META_LEN: usize = core::mem::size_of::<XdpMeta>();

const _: () = assert!(XDP_META_LEN.is_multiple_of(4) && XDP_META_LEN <= 32);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<PrefixData>() == 20);
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<MacKey>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, has no implicit padding
    // (see the explicit `_pad` fields and the size assertions above) and is
    // valid for any bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PrefixData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
}

// Userspace counter definitions: names for tables, JSON and metrics, and
// the per-queue-pair counters of the dataplane.
#[cfg(feature = "std")]
pub mod counters;
