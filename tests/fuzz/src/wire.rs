//! vhost-user framing for the harnesses that play a frontend or a
//! backend: the 12-byte header (request, flags, size, native endian), a
//! payload, file descriptors attached to the first bytes.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Header length.
pub const HDR: usize = 12;
/// `VHOST_USER_VERSION` (flags bits 0-1).
pub const VERSION_1: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the sender wants a reply (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload (the `vhost` crate's `MAX_MSG_SIZE`).
pub const MAX_MSG_SIZE: usize = 0x1000;
/// Most fds on one message (the `vhost` crate's `MAX_ATTACHED_FD_ENTRIES`).
pub const MAX_FDS: usize = 32;

/// Frontend request codes the harnesses use.
#[allow(missing_docs)]
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const ADD_MEM_REG: u32 = 37;
}

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// One message as read off a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// The payload (as long as the header's size says).
    pub payload: Vec<u8>,
    /// How many fds came with it (they are closed on receipt).
    pub fds: usize,
}

/// A header's bytes.
pub fn header(request: u32, flags: u32, size: u32) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..4].copy_from_slice(&request.to_ne_bytes());
    h[4..8].copy_from_slice(&flags.to_ne_bytes());
    h[8..12].copy_from_slice(&size.to_ne_bytes());
    h
}

/// Writes `bytes` with `fds` attached to the first of them.
pub fn send(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let sent = s.send_with_fds(&[bytes], fds).map_err(io::Error::from)?;
    let mut w = s;
    w.write_all(&bytes[sent..])
}

/// Reads one message; `Ok(None)` at a clean end of stream (nothing of a
/// next message read). Received fds are closed at once. A payload size
/// over [`MAX_MSG_SIZE`] is an error (InvalidData).
pub fn recv(s: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR];
    let mut got = 0;
    let mut fds = 0;
    while got < HDR {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: hdr[got..].as_mut_ptr().cast(),
            iov_len: HDR - got,
        }];
        // SAFETY: the iovec points at the rest of `hdr`, which outlives the
        // call; the kernel writes at most `iov_len` bytes there.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
        for &fd in &raw[..nfds.min(MAX_FDS)] {
            // SAFETY: the kernel just installed `fd` for us; nothing else
            // owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        fds += nfds;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("end of stream after {got} bytes of a header"),
            ));
        }
        got += n;
    }
    let request = u32::from_ne_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let flags = u32::from_ne_bytes(hdr[4..8].try_into().expect("4 bytes"));
    let size = u32::from_ne_bytes(hdr[8..12].try_into().expect("4 bytes")) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("payload of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size];
    let mut r = s;
    r.read_exact(&mut payload)?;
    Ok(Some(Message {
        request,
        flags,
        payload,
        fds,
    }))
}

/// Sets a send timeout (a harness must never block forever on a peer
/// that stopped reading).
pub fn send_timeout(s: &UnixStream, t: std::time::Duration) {
    let _ = s.set_write_timeout(Some(t));
}
