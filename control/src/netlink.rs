//! rtnetlink for XDP: which program is attached to an interface
//! ([`xdp_query`], RTM_GETLINK) and detaching one ([`xdp_detach`],
//! RTM_SETLINK, for `--force`).
//!
//! aya attaches through bpf_link and has no public query, so this module
//! asks the kernel itself, with `netlink-packet-route` building the
//! requests and parsing the `IFLA_XDP` attribute and `netlink-sys` for the
//! socket. Of a link reply only `IFLA_XDP` is parsed: an attribute this
//! module does not read (and the crate may not know) cannot fail a query.
//! Kernel errors come back as [`io::Error`] with their errno. It owns
//! nothing beyond the socket of one call; every call opens and closes its
//! own socket.

use netlink_packet_core::{
    DecodeError, Emitable, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator, Parseable, ParseableParametrized, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkMessage, LinkXdp, XdpAttached};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use std::io;

/// `RTM_NEWLINK`, the kernel's answer to `RTM_GETLINK`.
const RTM_NEWLINK: u16 = libc::RTM_NEWLINK;
/// The `IFLA_XDP` attribute of a link message.
const IFLA_XDP: u16 = libc::IFLA_XDP;
/// Room for one link reply (a few KiB in practice).
const REPLY_BUFFER: usize = 32 * 1024;

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode.
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
    /// Several modes at once.
    Multi,
}

impl AttachMode {
    /// The `XDP_FLAGS_*_MODE` bit for detaching in this mode.
    fn flags(self) -> u32 {
        match self {
            Self::Generic => 1 << 1,
            Self::Driver => 1 << 2,
            Self::Hardware => 1 << 3,
            Self::Multi => 0,
        }
    }
}

/// An XDP program found on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The kernel's program id (`bpftool prog show id N`).
    pub prog_id: u32,
    /// Attach mode.
    pub mode: AttachMode,
}

/// The XDP program attached to `ifindex`, if any.
pub fn xdp_query(ifindex: u32) -> io::Result<Option<Attached>> {
    let reply = transact(RouteNetlinkMessage::GetLink(link(ifindex)), 0)?;
    Ok(parse_xdp(&reply)?.as_deref().and_then(attached))
}

/// Detaches the netlink-attached XDP program of `ifindex` in `mode`. Fails
/// with EBUSY when the program is held by a bpf_link of another process.
pub fn xdp_detach(ifindex: u32, mode: AttachMode) -> io::Result<()> {
    let mut msg = link(ifindex);
    msg.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(mode.flags()),
    ]));
    let reply = transact(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
    parse_xdp(&reply).map(drop)
}

/// A link message for `ifindex` with no attributes.
fn link(ifindex: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg
}

/// One request, as it goes on the wire.
fn request(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    req.header.flags = NLM_F_REQUEST | flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    buf
}

/// Sends one request and returns the kernel's first reply message.
fn transact(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<u8>> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.send(&request(msg, flags), 0)?;
    let mut reply = Vec::with_capacity(REPLY_BUFFER);
    socket.recv(&mut reply, 0)?;
    Ok(reply)
}

fn invalid(e: DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink reply: {e}"),
    )
}

/// Reads one reply: a kernel error becomes its errno, an acknowledgement
/// gives `None`, a link message the content of its `IFLA_XDP` attribute
/// (`None` without one).
fn parse_xdp(reply: &[u8]) -> io::Result<Option<Vec<LinkXdp>>> {
    let msg = NetlinkBuffer::new_checked(reply).map_err(invalid)?;
    match msg.message_type() {
        NLMSG_ERROR => {
            let payload = msg.payload();
            let err = ErrorBuffer::new_checked(&payload)
                .and_then(|b| ErrorMessage::parse(&b))
                .map_err(invalid)?;
            match err.code {
                None => Ok(None),
                Some(_) => Err(err.to_io()),
            }
        }
        RTM_NEWLINK => {
            let payload = msg.payload();
            let header = LinkHeader::parse(payload).map_err(invalid)?;
            let nlas = payload.get(header.buffer_len()..).unwrap_or_default();
            for nla in NlasIterator::new(nlas) {
                let nla = nla.map_err(invalid)?;
                if nla.kind() != IFLA_XDP {
                    continue;
                }
                if let LinkAttribute::Xdp(xdp) =
                    LinkAttribute::parse_with_param(&nla, header.interface_family)
                        .map_err(invalid)?
                {
                    return Ok(Some(xdp));
                }
            }
            Ok(None)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply of type {other}"),
        )),
    }
}

/// The program an `IFLA_XDP` attribute reports, if one is attached.
fn attached(xdp: &[LinkXdp]) -> Option<Attached> {
    let mut mode = None;
    let mut prog_id = 0;
    for a in xdp {
        match a {
            LinkXdp::Attached(XdpAttached::Driver) => mode = Some(AttachMode::Driver),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(AttachMode::Generic),
            LinkXdp::Attached(XdpAttached::Hardware) => mode = Some(AttachMode::Hardware),
            LinkXdp::Attached(XdpAttached::Multiple) => mode = Some(AttachMode::Multi),
            LinkXdp::ProgId(id) => prog_id = *id,
            _ => {}
        }
    }
    mode.map(|mode| Attached { prog_id, mode })
}

/// Replies captured from a 6.18 kernel (x86_64, so native byte order is
/// little endian) for a veth in a private namespace: without XDP, with a
/// program in generic and in driver mode, after a detach, the detach's
/// acknowledgement, and RTM_GETLINK for an interface index that does not
/// exist.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const NONE: &[u8] = include_bytes!("netlink/getlink-none.bin");
    const GENERIC: &[u8] = include_bytes!("netlink/getlink-generic.bin");
    const DRIVER: &[u8] = include_bytes!("netlink/getlink-driver.bin");
    const AFTER_DETACH: &[u8] = include_bytes!("netlink/getlink-after-detach.bin");
    const ACK: &[u8] = include_bytes!("netlink/setlink-ack.bin");
    const ENODEV: &[u8] = include_bytes!("netlink/getlink-enodev.bin");

    fn query(reply: &[u8]) -> io::Result<Option<Attached>> {
        Ok(parse_xdp(reply)?.as_deref().and_then(attached))
    }

    #[test]
    fn programs_are_found_with_their_mode_and_id() {
        assert_eq!(
            query(GENERIC).expect("generic"),
            Some(Attached {
                prog_id: 293,
                mode: AttachMode::Generic
            })
        );
        assert_eq!(
            query(DRIVER).expect("driver"),
            Some(Attached {
                prog_id: 298,
                mode: AttachMode::Driver
            })
        );
    }

    #[test]
    fn an_interface_without_a_program_has_none() {
        assert_eq!(query(NONE).expect("none"), None);
        assert_eq!(query(AFTER_DETACH).expect("after detach"), None);
    }

    #[test]
    fn an_acknowledgement_is_success() {
        assert!(parse_xdp(ACK).expect("ack").is_none());
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        let e = query(ENODEV).expect_err("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }

    #[test]
    fn truncated_or_foreign_replies_are_invalid_data_never_a_panic() {
        for n in 0..DRIVER.len() {
            if let Err(e) = query(&DRIVER[..n]) {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{n} bytes: {e}");
            }
        }
        let mut done = ACK.to_vec();
        done[4] = 3; // NLMSG_DONE
        let e = query(&done).expect_err("not a link reply");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("type 3"), "{e}");
    }

    #[test]
    fn requests_are_what_the_kernel_expects() {
        let get = request(RouteNetlinkMessage::GetLink(link(7)), 0);
        #[rustfmt::skip]
        let want: &[u8] = &[
            32, 0, 0, 0, 18, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr: RTM_GETLINK, REQUEST, seq 1
            0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ifinfomsg: AF_UNSPEC, index 7
        ];
        assert_eq!(get, want);
        let mut msg = link(7);
        msg.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(AttachMode::Driver.flags()),
        ]));
        let set = request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK);
        #[rustfmt::skip]
        let want: &[u8] = &[
            52, 0, 0, 0, 19, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, // RTM_SETLINK, REQUEST | ACK
            0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            20, 0, 43, 0, // IFLA_XDP
            8, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, // IFLA_XDP_FD -1
            8, 0, 3, 0, 4, 0, 0, 0, // IFLA_XDP_FLAGS XDP_FLAGS_DRV_MODE
        ];
        assert_eq!(set, want);
    }
}
