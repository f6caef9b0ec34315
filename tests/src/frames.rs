//! Ethernet frame builders for tests. Checksums are filled where the
//! receiver cares (IPv4 header); L4 checksums are left zero because the
//! classifier never checks them and no kernel socket receives these frames.

/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType 802.1Q.
pub const ETH_P_8021Q: u16 = 0x8100;

/// Ethernet header + payload.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet header with one 802.1Q tag + payload.
pub fn eth_vlan(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    eth(dst, src, ETH_P_8021Q, &inner)
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header (IHL 5) + payload.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_raw(5, 0, src, dst, proto, payload)
}

/// IPv4 header with an explicit IHL (options zero-filled when IHL > 5) and
/// fragment field (flags + offset).
pub fn ipv4_raw(
    ihl: u8,
    frag: u16,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let hl = usize::from(ihl.max(5)) * 4;
    let total = (hl + payload.len()) as u16;
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | (ihl & 0x0f);
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + payload (`next` is the first next-header value).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// One 8-byte IPv6 extension header (hop-by-hop/routing/dest options)
/// whose next header is `next`, followed by `payload`.
pub fn ipv6_ext(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0]; // PadN option
    h.extend_from_slice(payload);
    h
}

/// UDP header + payload.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// TCP header with data offset `doff` (words; 5 = no options) + payload.
/// Only the first 20 bytes of header are written: a `doff` larger than 5
/// with a short payload makes the header claim more than the frame has.
pub fn tcp(sport: u16, dport: u16, doff: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = doff << 4;
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&1024u16.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// ICMP/ICMPv6 header: type, code, zero checksum, 4 bytes of rest.
pub fn icmp(ty: u8, code: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(payload);
    h
}

/// ARP request (Ethernet/IPv4) payload.
pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ETH_P_IP.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa);
    a
}

/// ICMPv6 neighbour solicitation payload (type 135) for `target`.
pub fn nd_solicit(target: [u8; 16]) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    m
}

/// Distinct payload for frame `i` so receivers can match bytes.
pub fn tagged(i: u32, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|j| (j as u32).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    if len >= 4 {
        p[..4].copy_from_slice(&i.to_be_bytes());
    }
    p
}

/// IPv6 Fragment header (next header `next`, `offset` in 8-byte units, the
/// M flag `more`, identification `id`) + payload.
pub fn ipv6_frag(next: u8, offset: u16, more: bool, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// `n` destination-options headers (8 bytes each) in front of `payload`,
/// the last one naming `upper` as its next header. The IPv6 header in front
/// names 60 (destination options), or `upper` when `n` is 0.
pub fn ipv6_ext_chain(n: usize, upper: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = payload.to_vec();
    for i in 0..n {
        chain = ipv6_ext(if i == 0 { upper } else { 60 }, &chain);
    }
    chain
}
