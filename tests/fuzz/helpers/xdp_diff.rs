//! The XDP classifier against a reference model, frame by frame, through
//! `BPF_PROG_TEST_RUN`: the differential check behind the privileged test
//! in `tests/tests/classifier.rs` and the cargo-fuzz target
//! `tests/fuzz/fuzz_targets/xdp_classifier.rs`, which both include this
//! file by path. It needs only aya, `xdpath-common` (feature `user`) and
//! etherparse, so the fuzz build pulls in neither the control crate nor its
//! nested eBPF build.
//!
//! - [`Harness`] loads the classifier object (never attached to an
//!   interface), writes a [`Case`]'s configuration and rules into its maps,
//!   runs the frame once, reads the decision back from the counters and
//!   removes the rules again. The XSKMAP stays empty, so a guest decision
//!   fails open to `XDP_PASS`; the counters (`redirect_no_socket`) still
//!   tell it apart from a host decision, and that is what is compared.
//! - [`reference`] decides the same case from the frame as etherparse reads
//!   it, with the classifier's policy ("How far a frame is parsed" in
//!   `ebpf/xdpath-ebpf/src/main.rs`) written out independently and the maps
//!   modelled as lists (hash maps by key, the LPM trie by longest prefix).
//! - [`check`] holds the properties: (a) a frame the reference drops is
//!   dropped (a drop rule is never bypassed); (b) a frame is redirected
//!   only where the reference redirects it; (c) the counters are exact (one
//!   action, one class or `parse_errors`) and (d) both agree on the action
//!   and on which table decided.
//! - [`Case::from_bytes`] turns any byte string into a case: a frame built
//!   from choices the bytes make (VLAN tags, IPv4 options and fragments,
//!   IPv6 extension header chains, TCP/UDP/ICMP/ND, ARP, cuts and flipped
//!   bytes) or taken verbatim, and a few rules aimed at what the reference
//!   parsed from that frame, so lookups hit.

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray};
use aya::programs::Xdp;
use aya::{Ebpf, TestRun, TestRunOptions};
use etherparse::{
    ArpHardwareId, ArpPacketSlice, EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice,
    Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice,
    SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use std::fmt;
use xdpath_common::{
    Action, AddrKey, Config, Counters, FlowKey, MacKey, PrefixData, RuleClass, RuleValue,
    FAMILY_V4, FAMILY_V6, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_MACS, MAP_NEIGH, MAP_PREFIXES,
    PREFIX_HEADER_BITS, PROGRAM_NAME,
};

/// `XDP_DROP` and `XDP_PASS` as the program returns them.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Frames the kernel's test run takes without fragments, with room to spare.
pub const MAX_FRAME: usize = 1514;
/// Bits of an LPM key's data (`PrefixData`): the trie's `max_prefixlen`.
const LPM_MAX_BITS: u32 = 8 * core::mem::size_of::<PrefixData>() as u32;

/// What happens to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed to the host stack.
    Host,
    /// Redirected to a guest's socket (here: would be; the XSKMAP is empty).
    Guest,
    /// Dropped.
    Drop,
}

/// A decision: what happens and which table decided (`None`: no table
/// could, counted in `parse_errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What happens.
    pub verdict: Verdict,
    /// Which table decided.
    pub class: Option<RuleClass>,
}

/// One rule or table entry, as it goes into the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// An exact rule (`FLOWS`).
    Exact(FlowKey, RuleValue),
    /// A prefix rule (`PREFIXES`): the trie prefix length (16 header bits
    /// plus the address bits) and the key data.
    Prefix(u32, PrefixData, RuleValue),
    /// A guest MAC (`MACS`).
    Mac(MacKey, RuleValue),
    /// A guest address for ARP/ND (`NEIGH`).
    Neigh(AddrKey, RuleValue),
}

/// A frame, the configuration and the rules it meets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The `CONFIG` entry.
    pub config: Config,
    /// Inserted in this order (a later rule with the same key replaces an
    /// earlier one, as in the maps).
    pub rules: Vec<Rule>,
    /// The frame, 14 to [`MAX_FRAME`] bytes.
    pub frame: Vec<u8>,
}

/// What the program did with a case.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The program's return value.
    pub ret: u32,
    /// How the counters moved.
    pub counters: Counters,
}

/// Why the harness could not run a case.
#[derive(Debug)]
pub enum HarnessError {
    /// Loading the object, the program or a map failed.
    Load(String),
    /// A map update, lookup or delete failed.
    Map(&'static str, MapError),
    /// `BPF_PROG_TEST_RUN` failed.
    Run(aya::programs::ProgramError),
    /// The frame is shorter than an Ethernet header or longer than
    /// [`MAX_FRAME`].
    FrameLength(usize),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Load(e) => write!(f, "Loading the classifier failed: {e}."),
            Self::Map(map, _) => write!(f, "A system call on map {map} failed."),
            Self::Run(_) => write!(f, "BPF_PROG_TEST_RUN failed."),
            Self::FrameLength(n) => write!(
                f,
                "A frame of {n} bytes cannot be run: 14 to {MAX_FRAME} bytes."
            ),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Map(_, e) => Some(e),
            Self::Run(e) => Some(e),
            Self::Load(_) | Self::FrameLength(_) => None,
        }
    }
}

/// The classifier loaded for test runs: its program and its maps.
pub struct Harness {
    ebpf: Ebpf,
    flows: HashMap<MapData, FlowKey, RuleValue>,
    prefixes: LpmTrie<MapData, PrefixData, RuleValue>,
    macs: HashMap<MapData, MacKey, RuleValue>,
    neigh: HashMap<MapData, AddrKey, RuleValue>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counters>,
    /// What `CONFIG` and `COUNTERS` held after the last run, to save a
    /// system call each per run; `None` after a failure.
    last: Option<(Config, Counters)>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, HarnessError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| HarnessError::Load(format!("the object has no map {name}")))?;
    T::try_from(map).map_err(|e| HarnessError::Map(name, e))
}

/// Whether a map call failed only because the key was already gone (a
/// case that inserted the same key twice removes it twice).
fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.kind() == std::io::ErrorKind::NotFound)
}

impl Harness {
    /// Loads `object` (the classifier's ELF) and its program, attached to
    /// nothing. Needs root (CAP_BPF and CAP_NET_ADMIN).
    pub fn load(object: &[u8]) -> Result<Self, HarnessError> {
        let mut ebpf = Ebpf::load(object).map_err(|e| HarnessError::Load(chain(&e)))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| HarnessError::Load(format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| HarnessError::Load(chain(&e)))?;
        prog.load().map_err(|e| HarnessError::Load(chain(&e)))?;
        Ok(Self {
            flows: take(&mut ebpf, MAP_FLOWS)?,
            prefixes: take(&mut ebpf, MAP_PREFIXES)?,
            macs: take(&mut ebpf, MAP_MACS)?,
            neigh: take(&mut ebpf, MAP_NEIGH)?,
            config: take(&mut ebpf, MAP_CONFIG)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            ebpf,
            last: None,
        })
    }

    fn counters(&self) -> Result<Counters, HarnessError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(|e| HarnessError::Map(MAP_COUNTERS, e))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Runs `case` once: configuration and rules in, one test run, the
    /// counters' movement out, the rules removed again (also when the run
    /// fails).
    pub fn run(&mut self, case: &Case) -> Result<Outcome, HarnessError> {
        if case.frame.len() < 14 || case.frame.len() > MAX_FRAME {
            return Err(HarnessError::FrameLength(case.frame.len()));
        }
        let before = match self.last.take() {
            Some((config, counters)) if config == case.config => counters,
            _ => {
                self.config
                    .set(0, case.config, 0)
                    .map_err(|e| HarnessError::Map(MAP_CONFIG, e))?;
                self.counters()?
            }
        };
        let ran = self
            .insert(&case.rules)
            .and_then(|()| self.run_frame(&case.frame));
        let removed = self.remove(&case.rules);
        let (ret, after) = ran?;
        removed?;
        self.last = Some((case.config, after));
        Ok(Outcome {
            ret,
            counters: delta(&after, &before),
        })
    }

    fn insert(&mut self, rules: &[Rule]) -> Result<(), HarnessError> {
        for r in rules {
            match r {
                Rule::Exact(k, v) => self.flows.insert(k, v, 0).map_err(|e| (MAP_FLOWS, e)),
                Rule::Prefix(len, d, v) => self
                    .prefixes
                    .insert(&aya::maps::lpm_trie::Key::new(*len, *d), v, 0)
                    .map_err(|e| (MAP_PREFIXES, e)),
                Rule::Mac(k, v) => self.macs.insert(k, v, 0).map_err(|e| (MAP_MACS, e)),
                Rule::Neigh(k, v) => self.neigh.insert(k, v, 0).map_err(|e| (MAP_NEIGH, e)),
            }
            .map_err(|(m, e)| HarnessError::Map(m, e))?;
        }
        Ok(())
    }

    fn remove(&mut self, rules: &[Rule]) -> Result<(), HarnessError> {
        for r in rules {
            match r {
                Rule::Exact(k, _) => self.flows.remove(k).map_err(|e| (MAP_FLOWS, e)),
                Rule::Prefix(len, d, _) => self
                    .prefixes
                    .remove(&aya::maps::lpm_trie::Key::new(*len, *d))
                    .map_err(|e| (MAP_PREFIXES, e)),
                Rule::Mac(k, _) => self.macs.remove(k).map_err(|e| (MAP_MACS, e)),
                Rule::Neigh(k, _) => self.neigh.remove(k).map_err(|e| (MAP_NEIGH, e)),
            }
            .or_else(|(m, e)| {
                if not_found(&e) {
                    Ok(())
                } else {
                    Err(HarnessError::Map(m, e))
                }
            })?;
        }
        Ok(())
    }

    /// One test run: the return value and the counters after it.
    fn run_frame(&mut self, frame: &[u8]) -> Result<(u32, Counters), HarnessError> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| HarnessError::Load(format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| HarnessError::Load(chain(&e)))?;
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .map_err(HarnessError::Run)?;
        Ok((res.return_value, self.counters()?))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `after - before`, field by field (wrapping: a counter never goes back,
/// and a violation shows as a huge number rather than a panic).
pub fn delta(after: &Counters, before: &Counters) -> Counters {
    Counters {
        frames: after.frames.wrapping_sub(before.frames),
        action_host: after.action_host.wrapping_sub(before.action_host),
        action_guest: after.action_guest.wrapping_sub(before.action_guest),
        action_drop: after.action_drop.wrapping_sub(before.action_drop),
        class_exact: after.class_exact.wrapping_sub(before.class_exact),
        class_prefix: after.class_prefix.wrapping_sub(before.class_prefix),
        class_mac: after.class_mac.wrapping_sub(before.class_mac),
        class_neigh: after.class_neigh.wrapping_sub(before.class_neigh),
        class_default: after.class_default.wrapping_sub(before.class_default),
        parse_errors: after.parse_errors.wrapping_sub(before.parse_errors),
        redirect_no_socket: after
            .redirect_no_socket
            .wrapping_sub(before.redirect_no_socket),
        redirects: after.redirects.wrapping_sub(before.redirects),
        meta_errors: after.meta_errors.wrapping_sub(before.meta_errors),
    }
}

impl Outcome {
    /// The decision the counters show, or why they are not exact: one
    /// frame, one action, one class or `parse_errors`, no redirect (the
    /// XSKMAP is empty), and a return value that fits the action.
    pub fn decision(&self) -> Result<Decision, String> {
        let c = &self.counters;
        let actions = [c.action_host, c.action_guest, c.action_drop];
        let classes = [
            c.class_exact,
            c.class_prefix,
            c.class_mac,
            c.class_neigh,
            c.class_default,
            c.parse_errors,
        ];
        let one = |xs: &[u64]| xs.iter().all(|&x| x <= 1) && xs.iter().sum::<u64>() == 1;
        if c.frames != 1 || !one(&actions) || !one(&classes) {
            return Err(format!(
                "counters not exact: one frame must move one action and one class or parse_errors: {c:?}"
            ));
        }
        if c.action_guest != 0 || c.redirects != 0 || c.redirect_no_socket > c.action_host {
            return Err(format!(
                "counters not exact: redirected with an empty XSKMAP: {c:?}"
            ));
        }
        let verdict = if c.action_drop == 1 {
            Verdict::Drop
        } else if c.redirect_no_socket == 1 {
            Verdict::Guest
        } else {
            Verdict::Host
        };
        let want_ret = if verdict == Verdict::Drop {
            XDP_DROP
        } else {
            XDP_PASS
        };
        if self.ret != want_ret {
            return Err(format!(
                "returned {} for a {verdict:?} decision: {c:?}",
                self.ret
            ));
        }
        let class = if c.class_exact == 1 {
            Some(RuleClass::Exact)
        } else if c.class_prefix == 1 {
            Some(RuleClass::Prefix)
        } else if c.class_mac == 1 {
            Some(RuleClass::Mac)
        } else if c.class_neigh == 1 {
            Some(RuleClass::Neigh)
        } else if c.class_default == 1 {
            Some(RuleClass::Default)
        } else {
            None
        };
        Ok(Decision { verdict, class })
    }
}

/// A broken property, with everything needed to replay it.
#[derive(Debug)]
pub struct Violation {
    /// Which property, in words.
    pub property: &'static str,
    /// What the program did.
    pub got: Result<Decision, String>,
    /// What the reference says.
    pub want: Decision,
    /// How the reference parsed the frame.
    pub parsed: String,
    /// The case.
    pub case: Case,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  program:   {:?}\n  reference: {:?}\n  parsed as: {}\n  config:    {:?}\n  rules:     {:?}\n  frame:     {}",
            self.property,
            self.got,
            self.want,
            self.parsed,
            self.case.config,
            self.case.rules,
            hex(&self.case.frame)
        )
    }
}

/// The frame as hex, for replay.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks `got` (what the program did with `case`) against the reference.
pub fn check(case: &Case, got: &Outcome) -> Result<(), Box<Violation>> {
    let parsed = parse(&case.frame, &case.config);
    let want = decide(&parsed, case);
    let fail = |property, got| {
        Err(Box::new(Violation {
            property,
            got,
            want,
            parsed: format!("{parsed:?}"),
            case: case.clone(),
        }))
    };
    let d = match got.decision() {
        Ok(d) => d,
        Err(e) => return fail("(c) the counters are exact", Err(e)),
    };
    if want.verdict == Verdict::Drop && d.verdict != Verdict::Drop {
        return fail("(a) a frame the rules drop is dropped", Ok(d));
    }
    if d.verdict == Verdict::Guest && want.verdict != Verdict::Guest {
        return fail(
            "(b) a frame is redirected only where a guest rule or entry matches",
            Ok(d),
        );
    }
    if d != want {
        return fail("(d) program and reference agree", Ok(d));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The reference: etherparse reads the headers, the policy is written out.

/// How far the reference parsed a frame (the program's `Level`, plus the
/// frames that do not reach L3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Not even L3 (an IP header cut or invalid, ARP cut or not
    /// Ethernet/IPv4, a VLAN tag cut).
    Error,
    /// ARP, or an EtherType the classifier does not parse.
    L2,
    /// IP whose transport header could not be read.
    L3,
    /// A non-first fragment.
    Fragment,
    /// IP with a complete transport header.
    L4,
}

/// What the reference read from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// How far it got.
    pub level: Level,
    /// The destination MAC's key.
    pub mac: MacKey,
    /// The exact key (valid from L3 on).
    pub flow: FlowKey,
    /// The ARP or ND target's key, if the frame has one.
    pub neigh: Option<AddrKey>,
}

impl Parsed {
    /// The prefix lookup key: trie length and data.
    pub fn prefix(&self) -> (u32, PrefixData) {
        let bits = if self.flow.family == FAMILY_V4 {
            32
        } else {
            128
        };
        (
            PREFIX_HEADER_BITS + bits,
            PrefixData {
                gen: self.flow.gen,
                family: self.flow.family,
                addr: self.flow.dst,
                _pad: [0; 2],
            },
        )
    }
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
/// Extension headers the walk gets past.
const EXT_HEADERS: [u8; 5] = [0, 43, 44, 51, 60];
/// How many extension headers the walk gets past.
const MAX_EXT_HEADERS: usize = 6;
/// The transport header must start at or before this byte of the frame.
const MAX_L4_OFFSET: usize = 512;

/// Reads `frame` as the classifier's policy says, with etherparse.
pub fn parse(frame: &[u8], cfg: &Config) -> Parsed {
    let rules_gen = cfg.active_gen & 1;
    let guest_gen = cfg.guest_gen & 1;
    let mut p = Parsed {
        level: Level::Error,
        mac: MacKey::new(guest_gen, [0; 6]),
        flow: FlowKey {
            gen: rules_gen,
            ..FlowKey::default()
        },
        neigh: None,
    };
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return p;
    };
    p.mac = MacKey::new(guest_gen, eth.destination());
    let mut ether_type = eth.ether_type();
    let mut off = eth.slice().len();
    if ether_type == EtherType::VLAN_TAGGED_FRAME || ether_type == EtherType::PROVIDER_BRIDGING {
        let Ok(vlan) = SingleVlanHeaderSlice::from_slice(&frame[off..]) else {
            return p;
        };
        ether_type = vlan.ether_type();
        off += vlan.slice().len();
    }
    match ether_type {
        EtherType::ARP => {
            let Ok(arp) = ArpPacketSlice::from_slice(&frame[off..]) else {
                return p;
            };
            if arp.hw_addr_type() != ArpHardwareId::ETHERNET
                || arp.proto_addr_type() != EtherType::IPV4
                || arp.hw_addr_size() != 6
                || arp.proto_addr_size() != 4
            {
                return p;
            }
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(arp.target_protocol_addr());
            p.neigh = Some(AddrKey {
                gen: guest_gen,
                family: FAMILY_V4,
                _pad: [0; 2],
                addr,
            });
            p.level = Level::L2;
        }
        EtherType::IPV4 => {
            let Ok(ip) = Ipv4HeaderSlice::from_slice(&frame[off..]) else {
                return p;
            };
            if usize::from(ip.total_len()) < ip.slice().len() {
                return p;
            }
            p.flow.family = FAMILY_V4;
            p.flow.proto = ip.protocol().0;
            p.flow.src[..4].copy_from_slice(&ip.source());
            p.flow.dst[..4].copy_from_slice(&ip.destination());
            p.level = if ip.fragments_offset().value() != 0 {
                Level::Fragment
            } else {
                let l4 = off + ip.slice().len();
                match transport(frame, l4, &mut p.flow) {
                    Some(_) => Level::L4,
                    None => Level::L3,
                }
            };
        }
        EtherType::IPV6 => {
            let Ok(ip) = Ipv6HeaderSlice::from_slice(&frame[off..]) else {
                return p;
            };
            p.flow.family = FAMILY_V6;
            p.flow.src = ip.source();
            p.flow.dst = ip.destination();
            (p.level, p.neigh) = ipv6_rest(
                frame,
                off + ip.slice().len(),
                ip.next_header().0,
                guest_gen,
                &mut p.flow,
            );
        }
        _ => p.level = Level::L2,
    }
    p
}

/// The IPv6 extension header walk and the transport header; `flow.proto`
/// ends as the first header the walk did not get past.
fn ipv6_rest(
    frame: &[u8],
    mut l4: usize,
    mut nh: u8,
    guest_gen: u8,
    flow: &mut FlowKey,
) -> (Level, Option<AddrKey>) {
    flow.proto = nh;
    for _ in 0..MAX_EXT_HEADERS {
        if !EXT_HEADERS.contains(&nh) {
            break;
        }
        let rest = frame.get(l4..).unwrap_or_default();
        let (next, len, non_first) = match nh {
            IPPROTO_FRAGMENT => match Ipv6FragmentHeaderSlice::from_slice(rest) {
                Ok(h) => (h.next_header().0, 8, h.fragment_offset().value() != 0),
                Err(_) => return (Level::L3, None),
            },
            // RFC 4302 forbids a zero payload length and etherparse refuses
            // it; Linux (ipv6_skip_exthdr) reads it as an 8-byte header, and
            // so does the classifier.
            IPPROTO_AH if rest.get(1) == Some(&0) => match rest.get(..8) {
                Some(h) => (h[0], 8, false),
                None => return (Level::L3, None),
            },
            IPPROTO_AH => match IpAuthHeaderSlice::from_slice(rest) {
                Ok(h) => (h.next_header().0, h.slice().len(), false),
                Err(_) => return (Level::L3, None),
            },
            _ => match Ipv6RawExtHeaderSlice::from_slice(rest) {
                Ok(h) => (h.next_header().0, h.slice().len(), false),
                Err(_) => return (Level::L3, None),
            },
        };
        if l4 + len > MAX_L4_OFFSET {
            return (Level::L3, None);
        }
        if non_first {
            flow.proto = next;
            return (Level::Fragment, None);
        }
        nh = next;
        flow.proto = nh;
        l4 += len;
    }
    if EXT_HEADERS.contains(&nh) {
        return (Level::L3, None);
    }
    let Some(icmp_type) = transport(frame, l4, flow) else {
        return (Level::L3, None);
    };
    if nh != IPPROTO_ICMPV6 || (icmp_type != 135 && icmp_type != 136) {
        return (Level::L4, None);
    }
    // The ND target: 16 bytes after the 8-byte ICMPv6 header.
    match frame.get(l4 + 8..l4 + 24) {
        Some(t) => {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(t);
            (
                Level::L4,
                Some(AddrKey {
                    gen: guest_gen,
                    family: FAMILY_V6,
                    _pad: [0; 2],
                    addr,
                }),
            )
        }
        None => (Level::L3, None),
    }
}

/// The transport header at `l4`: `Some(ICMP type or 0)` when complete,
/// `None` when cut or invalid. The ports go into `flow` as soon as the
/// frame shows them (4 bytes), complete header or not.
fn transport(frame: &[u8], l4: usize, flow: &mut FlowKey) -> Option<u8> {
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let rest = frame.get(l4..).unwrap_or_default();
    match flow.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = rest.get(..4)?;
            flow.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
            flow.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
            if flow.proto == IPPROTO_TCP {
                TcpHeaderSlice::from_slice(rest).ok().map(|_| 0)
            } else {
                UdpHeaderSlice::from_slice(rest).ok().map(|_| 0)
            }
        }
        // The 8-byte header every ICMP and ICMPv6 message starts with
        // (etherparse's slices also check message-specific lengths, which
        // the classifier does not).
        IPPROTO_ICMP | IPPROTO_ICMPV6 => rest.get(..8).map(|h| h[0]),
        _ => Some(0),
    }
}

/// Bits `0..len` of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], len: u32) -> bool {
    let full = (len / 8) as usize;
    let rest = len % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

fn prefix_bytes(d: &PrefixData) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0] = d.gen;
    b[1] = d.family;
    b[2..18].copy_from_slice(&d.addr);
    b[18..].copy_from_slice(&d._pad);
    b
}

/// The maps as lists: the last insert of a key wins.
fn lookup_exact(case: &Case, key: &FlowKey) -> Option<RuleValue> {
    case.rules.iter().rev().find_map(|r| match r {
        Rule::Exact(k, v) if k == key => Some(*v),
        _ => None,
    })
}

fn lookup_prefix(case: &Case, len: u32, data: &PrefixData) -> Option<RuleValue> {
    let key = prefix_bytes(data);
    let mut best: Option<(u32, RuleValue)> = None;
    // Later inserts of the same (length, masked bits) replace earlier ones,
    // so among equal lengths the last one wins.
    for r in &case.rules {
        if let Rule::Prefix(l, d, v) = r {
            if *l <= len
                && *l <= LPM_MAX_BITS
                && prefix_eq(&prefix_bytes(d), &key, *l)
                && best.is_none_or(|(bl, _)| *l >= bl)
            {
                best = Some((*l, *v));
            }
        }
    }
    best.map(|(_, v)| v)
}

fn lookup_mac(case: &Case, key: &MacKey) -> Option<RuleValue> {
    case.rules.iter().rev().find_map(|r| match r {
        Rule::Mac(k, v) if k == key => Some(*v),
        _ => None,
    })
}

fn lookup_neigh(case: &Case, key: &AddrKey) -> Option<RuleValue> {
    case.rules.iter().rev().find_map(|r| match r {
        Rule::Neigh(k, v) if k == key => Some(*v),
        _ => None,
    })
}

fn verdict(action: u32) -> Verdict {
    match Action::from_u32(action) {
        Some(Action::Guest) => Verdict::Guest,
        Some(Action::Drop) => Verdict::Drop,
        // Unknown actions fail open to the host.
        Some(Action::Host) | None => Verdict::Host,
    }
}

/// What the policy decides for a parsed frame.
pub fn decide(p: &Parsed, case: &Case) -> Decision {
    let cfg = &case.config;
    let by = |v: RuleValue, class| Decision {
        verdict: verdict(v.action),
        class: Some(class),
    };
    let unclassified = Decision {
        verdict: if cfg.default_action == Action::Drop as u32 {
            Verdict::Drop
        } else {
            Verdict::Host
        },
        class: None,
    };
    if p.level == Level::Error {
        return unclassified;
    }
    if p.level != Level::L2 {
        if let Some(v) = lookup_exact(case, &p.flow) {
            return by(v, RuleClass::Exact);
        }
        let (len, data) = p.prefix();
        if let Some(v) = lookup_prefix(case, len, &data) {
            return by(v, RuleClass::Prefix);
        }
    }
    if p.level == Level::L3 {
        return unclassified;
    }
    if let Some(v) = lookup_mac(case, &p.mac) {
        return by(v, RuleClass::Mac);
    }
    if let Some(v) = p.neigh.and_then(|k| lookup_neigh(case, &k)) {
        return by(v, RuleClass::Neigh);
    }
    Decision {
        verdict: verdict(cfg.default_action),
        class: Some(RuleClass::Default),
    }
}

/// The reference's decision for `case`.
pub fn reference(case: &Case) -> Decision {
    decide(&parse(&case.frame, &case.config), case)
}

// ---------------------------------------------------------------------------
// Cases from bytes.

/// Reads choices from a byte string; zeros once it is used up.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn rest(&mut self) -> &[u8] {
        let r = self.data.get(self.pos..).unwrap_or_default();
        self.pos = self.data.len();
        r
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// Addresses the generated frames and rules share, so lookups hit.
const MACS: [[u8; 6]; 4] = [
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef],
    [0xff; 6],
    [0x33, 0x33, 0xff, 0x00, 0x00, 0x10],
];
const V4: [[u8; 4]; 4] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 88, 1, 5],
    [192, 168, 7, 9],
];
const V6: [[u8; 16]; 4] = [
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    [0xfd, 0, 0, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];
const PORTS: [u16; 4] = [53, 80, 4000, 5000];
const PROTOS: [u8; 8] = [6, 17, 1, 58, 6, 17, 47, 59];

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A transport header for `proto` and some payload.
fn l4_bytes(r: &mut Bytes<'_>, proto: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    match proto {
        IPPROTO_TCP => {
            l4.extend_from_slice(&r.pick(&PORTS).to_be_bytes());
            l4.extend_from_slice(&r.pick(&PORTS).to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            let doff = if r.below(4) == 0 { r.u8() >> 4 } else { 5 };
            l4.push(doff << 4);
            l4.extend_from_slice(&[0x02, 4, 0, 0, 0, 0, 0]);
            let opts = usize::from(doff.saturating_sub(5)) * 4;
            l4.extend(std::iter::repeat_n(1u8, opts));
        }
        IPPROTO_UDP => {
            l4.extend_from_slice(&r.pick(&PORTS).to_be_bytes());
            l4.extend_from_slice(&r.pick(&PORTS).to_be_bytes());
            l4.extend_from_slice(&[0, 8, 0, 0]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ty = r.pick(&[8, 0, 135, 136, 128, 3]);
            l4.extend_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]);
            if ty == 135 || ty == 136 {
                l4.extend_from_slice(&r.pick(&V6));
            }
        }
        _ => {}
    }
    let n = r.below(24);
    l4.extend(r.bytes(n));
    l4
}

fn ipv4_packet(r: &mut Bytes<'_>) -> Vec<u8> {
    let ihl = if r.below(4) == 0 { r.u8() & 0x0f } else { 5 };
    let hl = usize::from(ihl.max(5)) * 4;
    let proto = if r.below(8) == 0 {
        r.u8()
    } else {
        r.pick(&PROTOS)
    };
    let frag: u16 = match r.below(6) {
        0 => 0x2000,                          // MF, offset 0: a first fragment
        1 => 1 + r.u16() % 0x1fff,            // a last fragment
        2 => 0x2000 | (1 + r.u16() % 0x1fff), // a middle fragment
        3 => 0x4000,                          // DF
        _ => 0,
    };
    let payload = l4_bytes(r, proto);
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | ihl;
    let total = if r.below(8) == 0 {
        r.u16()
    } else {
        (hl + payload.len()) as u16
    };
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&r.pick(&V4));
    h[16..20].copy_from_slice(&r.pick(&V4));
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&payload);
    h
}

fn ipv6_packet(r: &mut Bytes<'_>) -> Vec<u8> {
    let proto = if r.below(8) == 0 {
        r.u8()
    } else {
        r.pick(&PROTOS)
    };
    // The extension headers, innermost last.
    let n = r.pick(&[0, 0, 1, 1, 2, 3, 5, 6, 7, 8]);
    let mut exts: Vec<(u8, Vec<u8>)> = Vec::new();
    for _ in 0..n {
        let (ty, body) = match r.below(8) {
            0 => (0, vec![0u8; 8 * (1 + r.below(3))]),
            1 => (43, vec![0u8; 8 * (1 + r.below(3))]),
            // Now and then a long one, to reach the offset limit.
            2 => (60, {
                let words = if r.below(4) == 0 {
                    r.below(64)
                } else {
                    r.below(3)
                };
                vec![0u8; 8 * (1 + words)]
            }),
            3 => (44, {
                // first fragment, atomic fragment, non-first fragment
                let f: u16 = r.pick(&[1, 0, 8, 9, 0x1001]);
                let mut b = vec![0u8; 8];
                b[2..4].copy_from_slice(&f.to_be_bytes());
                b
            }),
            4 => (51, vec![0u8; 4 * (2 + r.below(4))]),
            _ => (r.pick(&[0, 60, 44, 51]), vec![0u8; 8]),
        };
        exts.push((ty, body));
    }
    let mut chain = l4_bytes(r, proto);
    let mut next = proto;
    for (ty, mut body) in exts.into_iter().rev() {
        body[0] = next;
        body[1] = match ty {
            44 => 0,
            51 => (body.len() / 4 - 2) as u8,
            _ => (body.len() / 8 - 1) as u8,
        };
        body.extend_from_slice(&chain);
        chain = body;
        next = ty;
    }
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&r.pick(&V6));
    h[24..40].copy_from_slice(&r.pick(&V6));
    h.extend_from_slice(&chain);
    h
}

fn arp_packet(r: &mut Bytes<'_>) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    let odd = r.below(6) == 0;
    a.extend_from_slice(&(if odd { r.u16() } else { 1 }).to_be_bytes());
    a.extend_from_slice(&(if odd { r.u16() } else { 0x0800 }).to_be_bytes());
    a.extend_from_slice(&if odd {
        [r.u8() % 8, r.u8() % 8]
    } else {
        [6, 4]
    });
    a.extend_from_slice(&u16::from(1 + r.u8() % 2).to_be_bytes());
    a.extend_from_slice(&MACS[0]);
    a.extend_from_slice(&r.pick(&V4));
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&r.pick(&V4));
    a
}

fn frame_from(r: &mut Bytes<'_>) -> Vec<u8> {
    let mode = r.u8();
    if mode & 0x0f == 0 {
        // Verbatim: the rest of the input is the frame.
        let mut f = r.rest().to_vec();
        f.resize(f.len().clamp(14, MAX_FRAME), 0);
        return f;
    }
    let mut f = Vec::new();
    f.extend_from_slice(&r.pick(&MACS));
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    let kind = r.below(8);
    let ether_type: u16 = match kind {
        0..=2 => 0x0800,
        3..=5 => 0x86dd,
        6 => 0x0806,
        _ => r.u16(),
    };
    match r.below(8) {
        0 => f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]),
        1 => f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07]),
        2 => f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07, 0x81, 0x00, 0x00, 0x08]),
        _ => {}
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    match ether_type {
        0x0800 => f.extend(ipv4_packet(r)),
        0x86dd => f.extend(ipv6_packet(r)),
        0x0806 => f.extend(arp_packet(r)),
        _ => {
            let n = r.below(48);
            f.extend(r.bytes(n));
        }
    }
    // Cut it somewhere, flip a few bytes.
    if r.below(4) == 0 {
        let keep = 14 + usize::from(r.u16()) % (f.len() - 13);
        f.truncate(keep);
    }
    for _ in 0..r.pick(&[0, 0, 0, 1, 2]) {
        let at = usize::from(r.u16()) % f.len();
        f[at] ^= r.u8() | 1;
    }
    f.truncate(MAX_FRAME);
    f
}

fn rule_value(r: &mut Bytes<'_>, id: u32) -> RuleValue {
    let action = match r.below(8) {
        0..=2 => Action::Guest as u32,
        3..=5 => Action::Drop as u32,
        6 => Action::Host as u32,
        _ => 3 + u32::from(r.u8()),
    };
    RuleValue {
        action,
        port: u32::from(r.u8() % 4),
        rule_id: id,
        _pad: 0,
    }
}

/// A rule aimed at what the reference read from the frame, changed a
/// little now and then so that near misses are tried too.
fn rule_from(r: &mut Bytes<'_>, p: &Parsed, cfg: &Config, id: u32) -> Rule {
    let v = rule_value(r, id);
    let sel = r.u8();
    // One rule in eight lives in the inactive generation.
    let flip = u8::from(sel & 0x07 == 0);
    let rules_gen = (cfg.active_gen & 1) ^ flip;
    let guest_gen = (cfg.guest_gen & 1) ^ flip;
    let ip = p.level != Level::Error && p.level != Level::L2;
    let family = if ip {
        p.flow.family
    } else {
        r.pick(&[FAMILY_V4, FAMILY_V6])
    };
    let addr = |r: &mut Bytes<'_>| {
        if family == FAMILY_V4 {
            v4(r.pick(&V4))
        } else {
            r.pick(&V6)
        }
    };
    match (sel >> 3) % 4 {
        0 => {
            let mut k = if ip {
                p.flow
            } else {
                FlowKey {
                    family,
                    proto: r.pick(&PROTOS),
                    src: addr(r),
                    dst: addr(r),
                    ..FlowKey::default()
                }
            };
            k.gen = rules_gen;
            match r.below(6) {
                0 => {
                    k.src_port = 0;
                    k.dst_port = 0;
                }
                1 => k.dst_port = r.pick(&PORTS).to_be(),
                2 => k.src = addr(r),
                3 => k.proto = r.pick(&PROTOS),
                _ => {}
            }
            Rule::Exact(k, v)
        }
        1 => {
            let bits: u32 = if family == FAMILY_V4 { 32 } else { 128 };
            let mut d = PrefixData {
                gen: rules_gen,
                family,
                addr: if ip && r.below(4) != 0 {
                    p.flow.dst
                } else {
                    addr(r)
                },
                _pad: [0; 2],
            };
            let len = match r.below(16) {
                // Now and then a length the control plane never writes
                // (shorter than the header bits, or into the pad bytes).
                0 => u32::from(r.u8()) % (LPM_MAX_BITS + 1),
                _ => PREFIX_HEADER_BITS + u32::from(r.u8()) % (bits + 1),
            };
            if r.below(4) == 0 {
                d.addr[r.below(16)] ^= 0x80 >> r.below(8);
            }
            Rule::Prefix(len, d, v)
        }
        2 => {
            let mac = if r.below(4) != 0 {
                p.mac.mac
            } else {
                r.pick(&MACS)
            };
            Rule::Mac(MacKey::new(guest_gen, mac), v)
        }
        _ => {
            let mut k = match p.neigh {
                Some(k) if r.below(4) != 0 => k,
                _ => AddrKey {
                    family,
                    addr: addr(r),
                    ..AddrKey::default()
                },
            };
            k.gen = guest_gen;
            Rule::Neigh(k, v)
        }
    }
}

impl Case {
    /// A case from any byte string (the fuzz input, or seeded random bytes
    /// in the privileged test). See the module docs.
    pub fn from_bytes(data: &[u8]) -> Case {
        let mut r = Bytes { data, pos: 0 };
        let head = r.u8();
        let default_action = match (head >> 2) & 7 {
            0..=2 => Action::Host as u32,
            3 | 4 => Action::Guest as u32,
            5 | 6 => Action::Drop as u32,
            _ => 3 + u32::from(head >> 5),
        };
        let config = Config {
            active_gen: head & 1,
            guest_gen: (head >> 1) & 1,
            _pad: [0; 2],
            default_action,
            default_port: 1,
            flags: u32::from(head >> 7),
        };
        let n_rules = r.below(7);
        // The rule bytes come first so that the verbatim frame can take
        // the rest of the input; the frame is built before the rules are.
        let rule_bytes = r.bytes(n_rules * 8);
        let frame = frame_from(&mut r);
        let parsed = parse(&frame, &config);
        let mut rr = Bytes {
            data: &rule_bytes,
            pos: 0,
        };
        let rules = (0..n_rules)
            .map(|i| rule_from(&mut rr, &parsed, &config, i as u32 + 1))
            .collect();
        Case {
            config,
            rules,
            frame,
        }
    }
}
