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
//! One relay thread per connection, owning both sockets; it ends when
//! either side closes, closing the other.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

const HDR: usize = 12;
const MAX_FDS: usize = 8;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Largest payload we accept (the biggest vhost-user message, the memory
/// table with 8 regions, is far below).
const MAX_PAYLOAD: usize = 4096;

/// One vhost-user message with its descriptors.
struct Msg {
    hdr: [u8; HDR],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }

    fn set_flags(&mut self, f: u32) {
        self.hdr[4..8].copy_from_slice(&f.to_le_bytes());
    }
}

/// Reads one message (header with any SCM_RIGHTS fds, then the payload).
/// `Ok(None)` on a clean end of stream.
fn recv(s: &mut UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR];
    let mut cbuf = [0u64; 8]; // CMSG_SPACE for 8 fds, 8-byte aligned
    let mut iov = libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR,
    };
    // SAFETY: msghdr is plain data; zeroed is a valid start.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: mh points at valid buffers that outlive the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into cbuf,
    // with the CMSG_* helpers, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    // The kernel installed these fds for us: we own them.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    let got = n as usize;
    if got < HDR {
        s.read_exact(&mut hdr[got..])?;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user payload of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size];
    s.read_exact(&mut payload)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

/// Writes one message, its fds attached to the header.
fn send(s: &mut UnixStream, m: &Msg) -> io::Result<()> {
    if m.fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many fds"));
    }
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: m.hdr.as_ptr() as *mut libc::c_void,
        iov_len: HDR,
    };
    // SAFETY: msghdr is plain data; zeroed is a valid start.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    if !m.fds.is_empty() {
        let bytes = m.fds.len() * std::mem::size_of::<RawFd>();
        // SAFETY: CMSG_SPACE of at most 8 fds fits cbuf (64 bytes); we
        // fill one SCM_RIGHTS header and its data inside it.
        unsafe {
            mh.msg_control = cbuf.as_mut_ptr().cast();
            mh.msg_controllen = libc::CMSG_SPACE(bytes as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in m.fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: mh points at valid buffers that outlive the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if (n as usize) < HDR {
        s.write_all(&m.hdr[n as usize..])?;
    }
    s.write_all(&m.payload)
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
                match m.request() {
                    SET_VRING_ENABLE if !acked => {
                        if m.flags() & FLAG_NEED_REPLY != 0 {
                            // Answer "success" ourselves, as the backend will
                            // once it gets the request.
                            let mut hdr = [0u8; HDR];
                            hdr[0..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                            hdr[4..8].copy_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
                            hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
                            send(
                                &mut front,
                                &Msg {
                                    hdr,
                                    payload: vec![0; 8],
                                    fds: Vec::new(),
                                },
                            )?;
                            m.set_flags(m.flags() & !FLAG_NEED_REPLY);
                        }
                        held.push(m);
                    }
                    SET_FEATURES => {
                        let features = m.payload.get(..8).map_or(0, |b| {
                            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                        });
                        send(&mut back, &m)?;
                        if features & PROTOCOL_FEATURES != 0 {
                            acked = true;
                            for h in held.drain(..) {
                                send(&mut back, &h)?;
                            }
                        }
                    }
                    _ => send(&mut back, &m)?,
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

    fn msg(request: u32, flags: u32, payload: &[u8], fds: Vec<OwnedFd>) -> Msg {
        let mut hdr = [0u8; HDR];
        hdr[0..4].copy_from_slice(&request.to_le_bytes());
        hdr[4..8].copy_from_slice(&flags.to_le_bytes());
        hdr[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Msg {
            hdr,
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
                FLAG_VERSION_1 | FLAG_NEED_REPLY,
                &state,
                Vec::new(),
            ),
        )
        .unwrap();
        let reply = recv(&mut qemu).unwrap().expect("a reply");
        assert_eq!(
            (reply.request(), reply.flags(), reply.payload.as_slice()),
            (SET_VRING_ENABLE, FLAG_VERSION_1 | FLAG_REPLY, &[0u8; 8][..])
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(nothing_pending(&backend), "held, not forwarded yet");

        // Any other request passes through at once, with its fds.
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // SAFETY: dup of a valid fd; the result is owned by `dup`.
        let dup = unsafe { OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd())) };
        send(
            &mut qemu,
            &msg(12, FLAG_VERSION_1, &[3, 0, 0, 0, 0, 0, 0, 0], vec![dup]),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.request(), m.fds.len()),
            (12, 1),
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
            &msg(SET_FEATURES, FLAG_VERSION_1, &features, Vec::new()),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.request(), m.payload.as_slice()),
            (SET_FEATURES, &features[..])
        );
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(
            (m.request(), m.flags(), m.payload.as_slice()),
            (SET_VRING_ENABLE, FLAG_VERSION_1, &state[..])
        );

        // After the ack, SET_VRING_ENABLE passes straight through.
        send(
            &mut qemu,
            &msg(
                SET_VRING_ENABLE,
                FLAG_VERSION_1 | FLAG_NEED_REPLY,
                &state,
                Vec::new(),
            ),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!(m.flags(), FLAG_VERSION_1 | FLAG_NEED_REPLY);
        // Backend replies go back unchanged.
        send(
            &mut backend,
            &msg(
                SET_VRING_ENABLE,
                FLAG_VERSION_1 | FLAG_REPLY,
                &[0; 8],
                Vec::new(),
            ),
        )
        .unwrap();
        assert_eq!(
            recv(&mut qemu).unwrap().unwrap().request(),
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
}
