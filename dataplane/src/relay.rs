//! A vhost-user relay between the frontend and vhost-user-backend's request
//! handler, for one frontend quirk.
//!
//! QEMU 7.2 (virtio-net realize attaching and detaching queue pairs) sends
//! VHOST_USER_SET_VRING_ENABLE before its VHOST_USER_SET_FEATURES has acked
//! VHOST_USER_F_PROTOCOL_FEATURES: it treats the bit as negotiated once the
//! backend offered it. The spec only says such requests "should" follow the
//! ack; vhost-user-backend 0.24 rejects them ("inactive feature") and drops
//! the connection, and QEMU falls back to a NIC with no backend.
//!
//! The relay passes every message through unchanged, file descriptors
//! included, except SET_VRING_ENABLE requests that arrive before the ack:
//! it holds them (answering the frontend itself when it asked for a reply)
//! and sends them on right after the SET_FEATURES that acks the bit, so the
//! backend sees what the frontend meant, in an order it accepts.
//!
//! Framing: the request codes, header flags, payload types and size limits
//! are the `vhost` crate's (`FrontendReq`, `VhostUserHeaderFlag`,
//! `VhostUserU64`, `MAX_MSG_SIZE`, `MAX_ATTACHED_FD_ENTRIES`); descriptors
//! travel with vmm-sys-util's `ScmSocket`. vhost 0.18 keeps its message
//! header and socket endpoint private, so the 12-byte header (`Header`) is
//! declared here, in the layout the spec gives.
//!
//! One relay thread per connection, owning both sockets; it ends when
//! either side closes, closing the other.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserU64, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VHOST_USER_F_PROTOCOL_FEATURES`, the feature bit whose ack ends the hold.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Protocol version 1, the only one (the low two flag bits).
const VERSION_1: u32 = 0x1;

/// The vhost-user message header: request code, flags, payload size, in
/// the platform's byte order (the spec's "native endian").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}

// SAFETY: three u32 fields, no padding; every bit pattern is a valid value.
unsafe impl ByteValued for Header {}

const HDR: usize = std::mem::size_of::<Header>();

impl Header {
    fn is(&self, req: FrontendReq) -> bool {
        self.request == u32::from(req)
    }

    fn has(&self, flag: VhostUserHeaderFlag) -> bool {
        self.flags & flag.bits() != 0
    }
}

/// One vhost-user message with its descriptors.
struct Msg {
    hdr: Header,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    /// The payload read as a `u64` (SET_FEATURES), if it holds one.
    fn payload_u64(&self) -> Option<u64> {
        let mut v = VhostUserU64::default();
        let bytes = self.payload.get(..std::mem::size_of::<VhostUserU64>())?;
        v.as_mut_slice().copy_from_slice(bytes);
        Some(v.value)
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one message (header with any SCM_RIGHTS fds, then the payload).
/// `Ok(None)` on a clean end of stream.
fn recv(s: &mut UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = Header::default();
    let mut raw_fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_slice().as_mut_ptr().cast(),
        iov_len: HDR,
    }];
    // SAFETY: the iovec points at `hdr`, a ByteValued value of HDR bytes
    // that outlives the call; any bytes written there are a valid Header.
    let (got, nfds) =
        unsafe { s.recv_with_fds(&mut iov, &mut raw_fds) }.map_err(io::Error::from)?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds.min(raw_fds.len())]
        .iter()
        // SAFETY: the kernel installed these descriptors in this process
        // for this message; nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    if got < HDR {
        s.read_exact(&mut hdr.as_mut_slice()[got..])?;
    }
    let size = hdr.size as usize;
    if size > MAX_MSG_SIZE {
        return Err(invalid(format!(
            "vhost-user payload of {size} bytes (at most {MAX_MSG_SIZE})"
        )));
    }
    let mut payload = vec![0u8; size];
    s.read_exact(&mut payload)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

/// Writes one message, its fds attached to the first bytes.
fn send(s: &mut UnixStream, m: &Msg) -> io::Result<()> {
    if m.fds.len() > MAX_ATTACHED_FD_ENTRIES {
        return Err(invalid(format!("{} fds on one message", m.fds.len())));
    }
    let fds: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let parts: [&[u8]; 2] = [m.hdr.as_slice(), &m.payload];
    let sent = s.send_with_fds(&parts, &fds).map_err(io::Error::from)?;
    // A stream socket may take fewer bytes; the fds went with the first.
    let mut rest = sent;
    for part in parts {
        let skip = rest.min(part.len());
        rest -= skip;
        s.write_all(&part[skip..])?;
    }
    Ok(())
}

/// The reply a backend gives to a SET_VRING_ENABLE that asked for one:
/// success (a zero `u64`).
fn enable_ack() -> Msg {
    let body = VhostUserU64::new(0);
    Msg {
        hdr: Header {
            request: u32::from(FrontendReq::SET_VRING_ENABLE),
            flags: VERSION_1 | VhostUserHeaderFlag::REPLY.bits(),
            size: std::mem::size_of::<VhostUserU64>() as u32,
        },
        payload: body.as_slice().to_vec(),
        fds: Vec::new(),
    }
}

/// Relays between `front` (the frontend) and `back` (vhost-user-backend)
/// until either side closes; then closes both.
pub fn run(mut front: UnixStream, mut back: UnixStream) {
    let mut acked = false;
    let mut held: Vec<Msg> = Vec::new();
    let result = (|| -> io::Result<()> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: front.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: back.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                let Some(mut m) = recv(&mut front)? else {
                    return Ok(());
                };
                if m.hdr.is(FrontendReq::SET_VRING_ENABLE) && !acked {
                    if m.hdr.has(VhostUserHeaderFlag::NEED_REPLY) {
                        // Answer "success" ourselves, as the backend will
                        // once it gets the request.
                        send(&mut front, &enable_ack())?;
                        m.hdr.flags &= !VhostUserHeaderFlag::NEED_REPLY.bits();
                    }
                    held.push(m);
                } else if m.hdr.is(FrontendReq::SET_FEATURES) {
                    let features = m.payload_u64().unwrap_or(0);
                    send(&mut back, &m)?;
                    if features & PROTOCOL_FEATURES != 0 {
                        acked = true;
                        for h in held.drain(..) {
                            send(&mut back, &h)?;
                        }
                    }
                } else {
                    send(&mut back, &m)?;
                }
            }
            if fds[1].revents != 0 {
                let Some(m) = recv(&mut back)? else {
                    return Ok(());
                };
                send(&mut front, &m)?;
            }
        }
    })();
    if let Err(e) = result {
        tracing::debug!("vhost-user relay ended: {e}");
    }
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = back.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SET_FEATURES: u32 = 2;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_ENABLE: u32 = 18;
    const FLAG_REPLY: u32 = 0x4;
    const FLAG_NEED_REPLY: u32 = 0x8;

    fn msg(request: u32, flags: u32, payload: &[u8], fds: Vec<OwnedFd>) -> Msg {
        Msg {
            hdr: Header {
                request,
                flags,
                size: payload.len() as u32,
            },
            payload: payload.to_vec(),
            fds,
        }
    }

    fn nothing_pending(s: &UnixStream) -> bool {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 0 }
    }

    #[test]
    fn the_header_has_the_spec_layout() {
        let h = Header {
            request: SET_VRING_ENABLE,
            flags: VERSION_1 | FLAG_NEED_REPLY,
            size: 8,
        };
        let mut want = Vec::new();
        for v in [SET_VRING_ENABLE, VERSION_1 | FLAG_NEED_REPLY, 8] {
            want.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(h.as_slice(), &want[..]);
        assert_eq!((u32::from(FrontendReq::SET_FEATURES), SET_FEATURES), (2, 2));
    }

    #[test]
    fn early_vring_enable_is_answered_held_and_replayed_after_the_feature_ack() {
        let (mut qemu, front) = UnixStream::pair().unwrap();
        let (back, mut backend) = UnixStream::pair().unwrap();
        for s in [&qemu, &backend] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let relay = std::thread::spawn(move || run(front, back));

        // QEMU 7.2: SET_VRING_ENABLE(vring 2, on) with NEED_REPLY, before
        // SET_FEATURES. The relay answers it and holds it.
        let state = [2u8, 0, 0, 0, 1, 0, 0, 0];
        send(
            &mut qemu,
            &msg(
                SET_VRING_ENABLE,
                VERSION_1 | FLAG_NEED_REPLY,
                &state,
                Vec::new(),
            ),
        )
        .unwrap();
        let reply = recv(&mut qemu).unwrap().expect("a reply");
        assert_eq!(
            (reply.hdr.request, reply.hdr.flags, reply.payload.as_slice()),
            (SET_VRING_ENABLE, VERSION_1 | FLAG_REPLY, &[0u8; 8][..])
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(nothing_pending(&backend), "held, not forwarded yet");

        // Any other request passes through at once, with its fds.
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // SAFETY: dup of a valid fd; the result is owned by `dup`.
        let dup = unsafe { OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd())) };
        send(
            &mut qemu,
            &msg(
                SET_VRING_KICK,
                VERSION_1,
                &[3, 0, 0, 0, 0, 0, 0, 0],
                vec![dup],
            ),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.hdr.request, m.fds.len()),
            (SET_VRING_KICK, 1),
            "SET_VRING_KICK with its eventfd"
        );
        // The fd is the same eventfd: a write through it is seen by ours.
        let mut f = std::fs::File::from(m.fds.into_iter().next().unwrap());
        f.write_all(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(efd.read().unwrap(), 1);

        // SET_FEATURES acking PROTOCOL_FEATURES: forwarded, then the held
        // request, without NEED_REPLY (QEMU has its answer already).
        let features = (PROTOCOL_FEATURES | 1 << 32).to_le_bytes();
        send(
            &mut qemu,
            &msg(SET_FEATURES, VERSION_1, &features, Vec::new()),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.hdr.request, m.payload.as_slice()),
            (SET_FEATURES, &features[..])
        );
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.hdr.request, m.hdr.flags, m.payload.as_slice()),
            (SET_VRING_ENABLE, VERSION_1, &state[..])
        );

        // After the ack, SET_VRING_ENABLE passes straight through.
        send(
            &mut qemu,
            &msg(
                SET_VRING_ENABLE,
                VERSION_1 | FLAG_NEED_REPLY,
                &state,
                Vec::new(),
            ),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(m.hdr.flags, VERSION_1 | FLAG_NEED_REPLY);
        // Backend replies go back unchanged.
        send(
            &mut backend,
            &msg(
                SET_VRING_ENABLE,
                VERSION_1 | FLAG_REPLY,
                &[0; 8],
                Vec::new(),
            ),
        )
        .unwrap();
        assert_eq!(
            recv(&mut qemu).unwrap().unwrap().hdr.request,
            SET_VRING_ENABLE
        );

        // The frontend goes away: the relay closes the backend's side and
        // ends.
        drop(qemu);
        assert!(
            recv(&mut backend).unwrap().is_none(),
            "the backend sees the disconnect"
        );
        relay.join().unwrap();
    }

    #[test]
    fn an_oversized_payload_ends_the_relay() {
        let (mut qemu, front) = UnixStream::pair().unwrap();
        let (back, mut backend) = UnixStream::pair().unwrap();
        backend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let relay = std::thread::spawn(move || run(front, back));
        let hdr = Header {
            request: SET_FEATURES,
            flags: VERSION_1,
            size: (MAX_MSG_SIZE + 1) as u32,
        };
        qemu.write_all(hdr.as_slice()).unwrap();
        assert!(
            recv(&mut backend).unwrap().is_none(),
            "nothing forwarded; the backend sees the end"
        );
        relay.join().unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            recv(&mut qemu).unwrap().is_none(),
            "the frontend sees the end"
        );
    }
}
