//! Minimal rtnetlink: which XDP program is attached to an interface, and
//! detaching one (for `--force`).
//!
//! aya attaches through bpf_link and has no public query, so this module
//! speaks RTM_GETLINK / RTM_SETLINK itself. It owns nothing beyond the
//! socket of one call; every call opens and closes its own socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const XDP_ATTACHED_NONE: u8 = 0;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;

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

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
const HDR: usize = 16;
/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32,
/// change u32.
const IFI: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, ifindex: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // len, patched in finish()
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes()); // seq
    buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
    buf.push(libc::AF_UNSPEC as u8);
    buf.push(0);
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

fn finish(buf: &mut [u8]) {
    let len = (buf.len() as u32).to_ne_bytes();
    buf[..4].copy_from_slice(&len);
}

/// Sends `req` and returns the first reply message (header included).
fn transact(req: &[u8]) -> io::Result<Vec<u8>> {
    let fd = socket()?;
    // SAFETY: req is a valid buffer of req.len() bytes.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if buf.len() < HDR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let code = buf
            .get(HDR..HDR + 4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(-libc::EIO);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(buf)
}

/// Iterates the netlink attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & !NLA_F_NESTED;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// The XDP program attached to `ifindex`, if any.
pub fn xdp_query(ifindex: u32) -> io::Result<Option<Attached>> {
    let mut req = Vec::with_capacity(64);
    header(&mut req, libc::RTM_GETLINK, 0, ifindex);
    finish(&mut req);
    let reply = transact(&req)?;
    let len =
        (u32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize).min(reply.len());
    let Some(body) = reply.get(HDR + IFI..len) else {
        return Ok(None);
    };
    let Some((_, xdp)) = attrs(body).find(|(ty, _)| *ty == IFLA_XDP) else {
        return Ok(None);
    };
    let mut mode = XDP_ATTACHED_NONE;
    let mut prog_id = 0;
    for (ty, p) in attrs(xdp) {
        match ty {
            IFLA_XDP_ATTACHED if !p.is_empty() => mode = p[0],
            IFLA_XDP_PROG_ID if p.len() >= 4 => {
                prog_id = u32::from_ne_bytes([p[0], p[1], p[2], p[3]])
            }
            _ => {}
        }
    }
    let mode = match mode {
        XDP_ATTACHED_DRV => AttachMode::Driver,
        XDP_ATTACHED_SKB => AttachMode::Generic,
        XDP_ATTACHED_HW => AttachMode::Hardware,
        XDP_ATTACHED_MULTI => AttachMode::Multi,
        _ => return Ok(None),
    };
    Ok(Some(Attached { prog_id, mode }))
}

/// Detaches the netlink-attached XDP program of `ifindex` in `mode`. Fails
/// with EBUSY when the program is held by a bpf_link of another process.
pub fn xdp_detach(ifindex: u32, mode: AttachMode) -> io::Result<()> {
    let mut req = Vec::with_capacity(64);
    header(&mut req, libc::RTM_SETLINK, libc::NLM_F_ACK as u16, ifindex);
    let mut nested = Vec::new();
    attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &mode.flags().to_ne_bytes());
    attr(&mut req, IFLA_XDP | NLA_F_NESTED, &nested);
    finish(&mut req);
    transact(&req).map(drop)
}
