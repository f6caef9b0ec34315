//! The xdpath XDP classifier.
//!
//! For every frame on the host NIC: parse (Ethernet, one 802.1Q/802.1ad tag,
//! ARP, IPv4 with options, IPv6 with up to `MAX_EXT_HEADERS` (6) extension
//! headers, TCP, UDP, ICMP, ICMPv6), then decide in this order:
//!
//! 1. exact 5-tuple rules (`FLOWS`, hash map),
//! 2. destination prefix rules (`PREFIXES`, LPM trie, IPv4 and IPv6),
//! 3. guest MAC table (`MACS`),
//! 4. ARP request/reply or ND solicitation/advertisement whose target
//!    address belongs to a guest (`NEIGH`),
//! 5. the configured default (host out of the box).
//!
//! Every key carries a generation: the rule maps are looked up in
//! `Config.active_gen`, the guest tables in `Config.guest_gen`, both taken
//! from one copy of `CONFIG` per frame (see `xdpath_common`, Generations).
//!
//! Actions: to guest (redirect to the AF_XDP socket of the frame's own rx
//! queue with `XDP_PASS` as the fallback, so a queue without a live socket
//! fails open to the host), to host (`XDP_PASS`), drop (`XDP_DROP`).
//!
//! # How far a frame is parsed, and the fragment policy
//!
//! A rule applies as soon as the frame shows what the rule matches, so a
//! frame that matches a drop rule is never passed because the rest of it was
//! hard to parse. The parser ends at one of these levels (`Level`):
//!
//! | level | what the frame is | consulted, in order | nothing matched |
//! |---|---|---|---|
//! | L4 | IP with its transport header complete (TCP by its data offset, UDP 8 bytes, ICMP/ICMPv6 8 bytes, ND with its target), or a protocol without one | exact (its ports), prefix, MAC, NEIGH (ND), default | default |
//! | fragment | a non-first fragment (IPv4 offset != 0, IPv6 Fragment header offset != 0) | exact (ports 0), prefix, MAC, default | default |
//! | L3 | IP whose destination is known but whose transport header is not: a tiny first fragment, a cut or invalid TCP/UDP/ICMP header, an IPv6 extension header chain longer than the walk, past the frame or past byte `MAX_L4_OFFSET` (512) | exact (ports as far as shown, see below), prefix | host, or drop when the default is drop; counted in `parse_errors` |
//! | L2 | ARP, or an EtherType we do not parse | MAC, NEIGH (ARP) | default |
//! | error | not even L3: IPv4/IPv6 header cut or invalid, ARP cut or not Ethernet/IPv4, VLAN tag cut | nothing | as for L3 |
//!
//! - The exact key's ports are the first four bytes of the TCP or UDP
//!   header whenever the frame carries them and is not a non-first
//!   fragment, even if the rest of the header is cut (the ports of a tiny
//!   first fragment are on the wire, so a flow's drop rule drops it);
//!   otherwise 0. An exact rule with ports 0 thus matches non-first
//!   fragments of its addresses and protocol, and L3 frames that do not show
//!   ports. The key's protocol is the IPv4 protocol field, or the first
//!   IPv6 next-header value the walk did not get past.
//! - An L3 frame no exact or prefix rule decides is never handed to a
//!   guest: neither the MAC table, the ARP/ND table nor a guest default
//!   consults it (a guest would reassemble fragments no rule let in). It
//!   goes to the host, or is dropped when the default action is drop (a
//!   frame hard to parse never gets a better deal than one no rule
//!   matched). The same holds for frames that do not even reach L3.
//! - A non-first fragment is not an error: the first fragment carries the
//!   ports and meets the flow's exact rules; the others follow the ports-0
//!   exact rules, the prefix rules, the MAC table and the default, so a
//!   guest addressed by prefix or MAC gets its whole datagram.
//! - IPv6: the walk gets past at most `MAX_EXT_HEADERS` hop-by-hop,
//!   routing, fragment, destination-options and authentication headers,
//!   each wholly inside the frame; it stops at a non-first fragment's
//!   Fragment header. An atomic fragment (offset 0, no M flag) or a first
//!   fragment is walked through.
//!
//! Counters: every frame moves `frames`, exactly one `action_*` counter,
//! and exactly one `class_*` counter or `parse_errors`. A frame at level L3
//! that an exact or prefix rule decided counts in that rule's class (it was
//! parsed enough for it); one that no rule decided counts in
//! `parse_errors`, as a frame that did not reach L3 does.
//!
//! Every bounds check compares against `data_end` right before the access,
//! with offsets that are bounded constants or masked values, so the verifier
//! can follow them. The layouts of all maps live in `xdpath-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, XskMap},
        helpers::{bpf_xdp_adjust_meta, bpf_xdp_load_bytes},
        macros::{btf_map, xdp},
        maps::lpm_trie::Key,
        programs::XdpContext,
    };
    use core::mem::size_of;
    use xdpath_common::{
        Action, AddrKey, Config, Counters, FlowKey, MacKey, PrefixData, RuleClass, RuleValue,
        XdpMeta, CONFIG_F_META, FAMILY_V4, FAMILY_V6, MAX_FLOWS, MAX_MACS, MAX_NEIGH, MAX_PREFIXES,
        PREFIX_HEADER_BITS, XDP_META_MAGIC, XSK_SLOTS,
    };

    const BPF_F_NO_PREALLOC: usize = 1;

    #[btf_map]
    static XSKS: XskMap<{ XSK_SLOTS as usize }> = XskMap::new();
    #[btf_map]
    static FLOWS: HashMap<FlowKey, RuleValue, { 2 * MAX_FLOWS as usize }, BPF_F_NO_PREALLOC> =
        HashMap::new();
    #[btf_map]
    static PREFIXES: LpmTrie<PrefixData, RuleValue, { 2 * MAX_PREFIXES as usize }> = LpmTrie::new();
    #[btf_map]
    static MACS: HashMap<MacKey, RuleValue, { 2 * MAX_MACS as usize }> = HashMap::new();
    #[btf_map]
    static NEIGH: HashMap<AddrKey, RuleValue, { 2 * MAX_NEIGH as usize }> = HashMap::new();
    #[btf_map]
    static CONFIG: Array<Config, 1> = Array::new();
    #[btf_map]
    static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

    const ETH_HLEN: usize = 14;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    const ETH_P_ARP: u16 = 0x0806;
    const ETH_P_8021Q: u16 = 0x8100;
    const ETH_P_8021AD: u16 = 0x88a8;
    const IPPROTO_ICMP: u8 = 1;
    const IPPROTO_TCP: u8 = 6;
    const IPPROTO_UDP: u8 = 17;
    const IPPROTO_ICMPV6: u8 = 58;
    const IPPROTO_HOPOPTS: u8 = 0;
    const IPPROTO_ROUTING: u8 = 43;
    const IPPROTO_FRAGMENT: u8 = 44;
    const IPPROTO_AH: u8 = 51;
    const IPPROTO_DSTOPTS: u8 = 60;
    /// IPv6 extension headers we walk through, at most this many.
    const MAX_EXT_HEADERS: usize = 6;
    /// Upper bound of any L4 offset we accept (keeps offsets verifiable).
    const MAX_L4_OFFSET: usize = 512;

    /// The frame is malformed or truncated before its L3 destination (or
    /// its ARP target) is known.
    struct ParseError;

    /// How far the parser got; it decides which tables are consulted (see
    /// the module docs, "How far a frame is parsed").
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Level {
        /// Not IP (ARP, or an EtherType we do not parse).
        L2,
        /// IP whose transport header could not be read.
        L3,
        /// A non-first fragment: IP without a transport header by design.
        Fragment,
        /// IP with its transport header complete.
        L4,
    }

    /// Per-frame keys, built in place in a per-CPU map because the BPF
    /// stack (512 bytes) cannot hold them all.
    #[repr(C)]
    pub struct Scratch {
        flow: FlowKey,
        prefix: Key<PrefixData>,
        neigh: AddrKey,
        mac: MacKey,
    }

    #[btf_map]
    static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

    /// The generations this frame is classified against, from one copy of
    /// `CONFIG`.
    #[derive(Clone, Copy)]
    struct Gens {
        /// Of `FLOWS` and `PREFIXES`.
        rules: u8,
        /// Of `MACS` and `NEIGH`.
        guests: u8,
    }

    /// What the parser found; the keys themselves are in [`Scratch`].
    #[derive(Clone, Copy)]
    struct Parsed {
        /// `flow` and `prefix` are valid unless this is [`Level::L2`].
        level: Level,
        /// `neigh` is valid (ARP, or ND solicitation/advertisement).
        neigh: bool,
    }

    /// Returns a pointer to a `T` at `off`, or an error if it would cross
    /// `data_end`.
    ///
    /// At least two bytes must be readable: LLVM rewrites a one-byte check
    /// `p + 1 > end` into `p >= end`, which the verifier does not credit as
    /// a packet range. Every one-byte field we read is followed by another
    /// byte of the same header, so this rejects no valid frame.
    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ParseError> {
        let start = ctx.data();
        let end = ctx.data_end();
        let len = if size_of::<T>() < 2 {
            2
        } else {
            size_of::<T>()
        };
        if start + off + len > end {
            return Err(ParseError);
        }
        Ok((start + off) as *const T)
    }

    #[inline(always)]
    fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ParseError> {
        // SAFETY: ptr_at checked that off..off+size_of::<T>() is inside the
        // packet; the read is unaligned-safe.
        Ok(unsafe { ptr_at::<T>(ctx, off)?.read_unaligned() })
    }

    #[inline(always)]
    fn be16(ctx: &XdpContext, off: usize) -> Result<u16, ParseError> {
        Ok(u16::from_be(load::<u16>(ctx, off)?))
    }

    #[xdp]
    pub fn xdpath(ctx: XdpContext) -> u32 {
        let Some(counters) = COUNTERS.get_ptr_mut(0) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: a per-CPU array slot is only touched by this CPU while the
        // program runs on it (XDP runs with preemption disabled).
        let c = unsafe { &mut *counters };
        c.frames += 1;
        let cfg = CONFIG.get(0).copied().unwrap_or_default();
        let gens = Gens {
            rules: cfg.active_gen & 1,
            guests: cfg.guest_gen & 1,
        };

        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            c.action_host += 1;
            return xdp_action::XDP_PASS;
        };
        // SAFETY: as for the counters, the slot belongs to this CPU.
        let s = unsafe { &mut *scratch };
        let Ok(parsed) = parse(&ctx, gens, s) else {
            return unclassified(c, &cfg);
        };
        let Some((rule, class)) = decide(parsed, s, &cfg) else {
            return unclassified(c, &cfg);
        };
        match class {
            RuleClass::Exact => c.class_exact += 1,
            RuleClass::Prefix => c.class_prefix += 1,
            RuleClass::Mac => c.class_mac += 1,
            RuleClass::Neigh => c.class_neigh += 1,
            RuleClass::Default => c.class_default += 1,
        }
        match Action::from_u32(rule.action) {
            Some(Action::Guest) => {}
            Some(Action::Drop) => {
                c.action_drop += 1;
                return xdp_action::XDP_DROP;
            }
            // Unknown actions are treated as host: fail open.
            Some(Action::Host) | None => {
                c.action_host += 1;
                return xdp_action::XDP_PASS;
            }
        }

        let Some(slot) = xdpath_common::xsk_slot(rule.port, ctx.rx_queue_index()) else {
            c.redirect_no_socket += 1;
            c.action_host += 1;
            return xdp_action::XDP_PASS;
        };
        if XSKS.get(slot).is_none() {
            c.redirect_no_socket += 1;
            c.action_host += 1;
            return xdp_action::XDP_PASS;
        }
        if cfg.flags & CONFIG_F_META != 0 && write_meta(&ctx, &rule, class).is_err() {
            c.meta_errors += 1;
        }
        match XSKS.redirect(slot, xdp_action::XDP_PASS as u64) {
            Ok(action) => {
                c.redirects += 1;
                c.action_guest += 1;
                action
            }
            Err(_) => {
                c.redirect_no_socket += 1;
                c.action_host += 1;
                xdp_action::XDP_PASS
            }
        }
    }

    /// A frame no table may decide (it did not reach L3, or it reached
    /// only L3 and no exact or prefix rule matched): counted in
    /// `parse_errors`, dropped when the default action is drop, passed to
    /// the host otherwise, never redirected.
    #[inline(always)]
    fn unclassified(c: &mut Counters, cfg: &Config) -> u32 {
        c.parse_errors += 1;
        if cfg.default_action == Action::Drop as u32 {
            c.action_drop += 1;
            xdp_action::XDP_DROP
        } else {
            c.action_host += 1;
            xdp_action::XDP_PASS
        }
    }

    /// The rule that decides, or `None` for an L3 frame that no exact or
    /// prefix rule matched.
    #[inline(always)]
    fn decide(p: Parsed, s: &Scratch, cfg: &Config) -> Option<(RuleValue, RuleClass)> {
        if p.level != Level::L2 {
            // SAFETY: hash map values may be replaced concurrently; we copy
            // the value out immediately and never keep the reference.
            if let Some(v) = unsafe { FLOWS.get(&s.flow) } {
                return Some((*v, RuleClass::Exact));
            }
            if let Some(v) = PREFIXES.get(&s.prefix) {
                return Some((*v, RuleClass::Prefix));
            }
        }
        if p.level == Level::L3 {
            return None;
        }
        // SAFETY: as for FLOWS.
        if let Some(v) = unsafe { MACS.get(&s.mac) } {
            return Some((*v, RuleClass::Mac));
        }
        if p.neigh {
            // SAFETY: as for FLOWS.
            if let Some(v) = unsafe { NEIGH.get(&s.neigh) } {
                return Some((*v, RuleClass::Neigh));
            }
        }
        Some((
            RuleValue {
                action: cfg.default_action,
                port: cfg.default_port,
                rule_id: 0,
                _pad: 0,
            },
            RuleClass::Default,
        ))
    }

    #[inline(always)]
    fn write_meta(ctx: &XdpContext, rule: &RuleValue, class: RuleClass) -> Result<(), ()> {
        let len = size_of::<XdpMeta>() as i32;
        // SAFETY: the helper only moves data_meta within the headroom and
        // fails cleanly when there is no room.
        if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
            return Err(());
        }
        let meta = ctx.metadata();
        if meta + size_of::<XdpMeta>() > ctx.data() {
            return Err(());
        }
        let block = XdpMeta {
            magic: XDP_META_MAGIC,
            rule_id: rule.rule_id,
            port: rule.port,
            class: class as u8,
            _pad: [0; 3],
        };
        // SAFETY: checked above that the block fits between data_meta and
        // data.
        unsafe { (meta as *mut XdpMeta).write_unaligned(block) };
        Ok(())
    }

    #[inline(always)]
    fn parse(ctx: &XdpContext, gens: Gens, s: &mut Scratch) -> Result<Parsed, ParseError> {
        let gen = gens.rules;
        s.mac.mac = load(ctx, 0)?;
        s.mac.gen = gens.guests;
        s.mac._pad = 0;
        let mut proto = be16(ctx, 12)?;
        let mut off = ETH_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(ctx, off + 2)?;
            off += 4;
        }
        let mut parsed = Parsed {
            level: Level::L2,
            neigh: false,
        };
        match proto {
            ETH_P_ARP => {
                parse_arp(ctx, off, gens.guests, &mut s.neigh)?;
                parsed.neigh = true;
            }
            ETH_P_IP => {
                parsed.level = parse_ipv4(ctx, off, gen, &mut s.flow)?;
            }
            ETH_P_IPV6 => {
                (parsed.level, parsed.neigh) =
                    parse_ipv6(ctx, off, gens, &mut s.flow, &mut s.neigh)?;
            }
            _ => {}
        }
        if parsed.level != Level::L2 {
            let bits = if s.flow.family == FAMILY_V4 { 32 } else { 128 };
            s.prefix.prefix_len = PREFIX_HEADER_BITS + bits;
            s.prefix.data = PrefixData {
                gen,
                family: s.flow.family,
                addr: s.flow.dst,
                _pad: [0; 2],
            };
        }
        Ok(parsed)
    }

    /// ARP for Ethernet/IPv4; `key` gets the target protocol address in
    /// guest generation `guest_gen`.
    #[inline(always)]
    fn parse_arp(
        ctx: &XdpContext,
        off: usize,
        guest_gen: u8,
        key: &mut AddrKey,
    ) -> Result<(), ParseError> {
        let htype = be16(ctx, off)?;
        let ptype = be16(ctx, off + 2)?;
        let hlen: u8 = load(ctx, off + 4)?;
        let plen: u8 = load(ctx, off + 5)?;
        if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
            return Err(ParseError);
        }
        let tpa: [u8; 4] = load(ctx, off + 24)?;
        *key = AddrKey::default();
        key.gen = guest_gen;
        key.family = FAMILY_V4;
        key.addr[..4].copy_from_slice(&tpa);
        Ok(())
    }

    /// Fills `key` (rule generation); an error when the header itself is
    /// cut or invalid, otherwise how far the frame could be parsed.
    #[inline(always)]
    fn parse_ipv4(
        ctx: &XdpContext,
        off: usize,
        gen: u8,
        key: &mut FlowKey,
    ) -> Result<Level, ParseError> {
        let vihl: u8 = load(ctx, off)?;
        if vihl >> 4 != 4 {
            return Err(ParseError);
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(ParseError);
        }
        let total_len = be16(ctx, off + 2)? as usize;
        if total_len < ihl {
            return Err(ParseError);
        }
        let frag = be16(ctx, off + 6)?;
        let l4proto: u8 = load(ctx, off + 9)?;
        let src: [u8; 4] = load(ctx, off + 12)?;
        let dst: [u8; 4] = load(ctx, off + 16)?;
        // The whole header, options included, must be present.
        let l4 = off + ihl;
        if ctx.data() + l4 > ctx.data_end() {
            return Err(ParseError);
        }
        *key = FlowKey::default();
        key.gen = gen;
        key.family = FAMILY_V4;
        key.proto = l4proto;
        key.src[..4].copy_from_slice(&src);
        key.dst[..4].copy_from_slice(&dst);
        // Non-first fragments carry no L4 header: no ports.
        if frag & 0x1fff != 0 {
            return Ok(Level::Fragment);
        }
        Ok(match parse_l4(ctx, l4, key) {
            Ok(_) => Level::L4,
            Err(ParseError) => Level::L3,
        })
    }

    /// Whether `nh` is an extension header the walk gets past.
    #[inline(always)]
    fn is_ext(nh: u8) -> bool {
        matches!(
            nh,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
        )
    }

    /// Fills `key` (rule generation); an error when the fixed header is cut
    /// or invalid, otherwise how far the frame could be parsed and whether
    /// `target` was filled (ND NS/NA, guest generation).
    #[inline(always)]
    fn parse_ipv6(
        ctx: &XdpContext,
        off: usize,
        gens: Gens,
        key: &mut FlowKey,
        target: &mut AddrKey,
    ) -> Result<(Level, bool), ParseError> {
        let vtc: u8 = load(ctx, off)?;
        if vtc >> 4 != 6 {
            return Err(ParseError);
        }
        let mut nh: u8 = load(ctx, off + 6)?;
        key.gen = gens.rules;
        key.family = FAMILY_V6;
        key._pad = 0;
        key.src_port = 0;
        key.dst_port = 0;
        key.src = load(ctx, off + 8)?;
        key.dst = load(ctx, off + 24)?;
        // From here on the destination is known: whatever fails below makes
        // the frame L3, not an error. `key.proto` is always the first
        // header the walk has not got past.
        key.proto = nh;
        let mut l4 = off + 40;
        for _ in 0..MAX_EXT_HEADERS {
            if !is_ext(nh) {
                break;
            }
            // Next header, length, and (Fragment header) the offset field;
            // every extension header is at least 8 bytes long.
            let Ok(h) = load::<[u8; 4]>(ctx, l4) else {
                return Ok((Level::L3, false));
            };
            let len = match nh {
                // Fragment header: fixed 8 bytes.
                IPPROTO_FRAGMENT => 8,
                // Authentication header: (len + 2) * 4.
                IPPROTO_AH => (h[1] as usize + 2) * 4,
                // Hop-by-hop, routing, destination options: (len + 1) * 8.
                _ => (h[1] as usize + 1) * 8,
            };
            let end = l4 + len;
            // The whole header inside the frame and below the offset limit.
            if end > MAX_L4_OFFSET || ctx.data() + end > ctx.data_end() {
                return Ok((Level::L3, false));
            }
            if nh == IPPROTO_FRAGMENT && u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                // A non-first fragment: what follows is payload.
                key.proto = h[0];
                return Ok((Level::Fragment, false));
            }
            nh = h[0];
            key.proto = nh;
            l4 = end;
        }
        // A chain longer than we walk.
        if is_ext(nh) {
            return Ok((Level::L3, false));
        }
        let l4 = l4 & (MAX_L4_OFFSET * 2 - 1);
        let Ok(icmp_type) = parse_l4(ctx, l4, key) else {
            return Ok((Level::L3, false));
        };
        // Neighbour solicitation (135) or advertisement (136): the target.
        if nh != IPPROTO_ICMPV6 || (icmp_type != 135 && icmp_type != 136) {
            return Ok((Level::L4, false));
        }
        target.gen = gens.guests;
        target.family = FAMILY_V6;
        target._pad = [0; 2];
        // ND is off the fast path: copy with the helper instead of direct
        // packet access at a variable offset, which LLVM tends to
        // rematerialize in a form the verifier cannot follow.
        // SAFETY: the helper bounds-checks against the frame and writes at
        // most 16 bytes into `target.addr`.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                (l4 + 8) as u32,
                target.addr.as_mut_ptr().cast(),
                16,
            )
        };
        if rc != 0 {
            // An ND message without its target is a cut L4 header.
            return Ok((Level::L3, false));
        }
        Ok((Level::L4, true))
    }

    /// Fills the ports of `key` (zero on entry); returns the ICMP/ICMPv6
    /// type (0 otherwise), or an error when the transport header is cut or
    /// invalid. The ports are filled as soon as the frame shows them, even
    /// when the rest of the header then turns out to be cut (a tiny first
    /// fragment).
    #[inline(always)]
    fn parse_l4(ctx: &XdpContext, l4: usize, key: &mut FlowKey) -> Result<u8, ParseError> {
        if l4 > MAX_L4_OFFSET {
            return Err(ParseError);
        }
        match key.proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                let ports: [u16; 2] = load(ctx, l4)?;
                key.src_port = ports[0];
                key.dst_port = ports[1];
                if key.proto == IPPROTO_TCP {
                    let doff: u8 = load(ctx, l4 + 12)?;
                    let hdr = ((doff >> 4) as usize) * 4;
                    if hdr < 20 || ctx.data() + l4 + hdr > ctx.data_end() {
                        return Err(ParseError);
                    }
                } else {
                    let _hdr: u64 = load(ctx, l4)?;
                }
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                // Type, code, checksum and the 4 bytes every message has.
                let hdr: [u8; 8] = load(ctx, l4)?;
                return Ok(hdr[0]);
            }
            _ => {}
        }
        Ok(0)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("xdpath-ebpf builds for bpfel-unknown-none only (see control/build.rs)");
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
