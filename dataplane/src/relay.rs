//! A vhost-user relay between the frontend and vhost-user-backend's request
//! handler: one frontend quirk, and the checks the library does not make.
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
//! The frontend is untrusted; the relay ends the connection (and logs why)
//! when it
//! - holds more than [`MAX_HELD`] early SET_VRING_ENABLE requests, or one
//!   that is not exactly a vring state (8 bytes) or carries descriptors;
//! - sends a memory table (SET_MEM_TABLE, ADD_MEM_REG) whose regions do
//!   not lie inside their files (checked with `fstat` before the library
//!   maps them: touching a mapping past the end of its file would kill the
//!   daemon with SIGBUS), or whose file is not a regular file (a memfd,
//!   hugetlbfs or tmpfs file);
//! - stops in the middle of a message for [`MESSAGE_TIMEOUT`], or does not
//!   take a reply within it. Between messages the frontend may be silent
//!   for as long as it likes (a healthy QEMU is, for hours).
//!
//! Framing: the request codes, header flags, payload types and size limits
//! are the `vhost` crate's (`FrontendReq`, `VhostUserHeaderFlag`,
//! `VhostUserU64`, `VhostUserVringState`, `MAX_MSG_SIZE`,
//! `MAX_ATTACHED_FD_ENTRIES`); descriptors travel with vmm-sys-util's
//! `ScmSocket`. vhost 0.18 keeps its message header and socket endpoint
//! private, so the 12-byte header (`Header`) is declared here, in the
//! layout the spec gives; memory regions are read field by field (32 bytes
//! each, the spec's layout).
//!
//! One relay thread per connection, owning both sockets; it ends when
//! either side closes (the server shuts the frontend's socket down to stop
//! it), closing the other.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserU64, VhostUserVringState, MAX_ATTACHED_FD_ENTRIES,
    MAX_MSG_SIZE,
};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `VHOST_USER_F_PROTOCOL_FEATURES`, the feature bit whose ack ends the hold.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Protocol version 1, the only one (the low two flag bits).
const VERSION_1: u32 = 0x1;

/// How long the rest of a message may take once its first byte arrived,
/// and how long a reply may wait for the frontend to take it.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Early SET_VRING_ENABLE requests held at most: each vring of the largest
/// device enabled and disabled.
pub const MAX_HELD: usize = 4 * crate::virtio_net::MAX_QUEUE_PAIRS as usize;

/// Size of `VhostUserMemory` (region count and padding) in front of the
/// regions of SET_MEM_TABLE, of the padding in front of ADD_MEM_REG's
/// region, and of one region.
const MEM_HDR: usize = 8;
const SINGLE_REGION_PAD: usize = 8;
const REGION: usize = 32;

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

/// Why the relay ended a connection on its own.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The frontend broke a rule (see the module documentation).
    #[error("vhost-user frontend refused: {0}")]
    Refused(String),
    /// The frontend stopped in the middle of a message or left a reply
    /// untaken for [`MESSAGE_TIMEOUT`].
    #[error("vhost-user frontend stalled: {0}")]
    Stalled(String),
    /// A socket failed.
    #[error("vhost-user relay I/O: {0}")]
    Io(#[from] io::Error),
}

fn refused(what: String) -> RelayError {
    RelayError::Refused(what)
}

/// Waits until `fd` is readable or `deadline` passes (false).
fn readable_by(fd: RawFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc > 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` from `s`, all of it by `deadline` (a message has begun).
fn read_exact_by(s: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> Result<(), RelayError> {
    let mut got = 0;
    while got < buf.len() {
        if !readable_by(s.as_raw_fd(), deadline)? {
            return Err(RelayError::Stalled(format!(
                "a message stopped {} bytes short for {MESSAGE_TIMEOUT:?}",
                buf.len() - got
            )));
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one message (header with any SCM_RIGHTS fds, then the payload).
/// Waits for the first bytes as long as it takes; the rest must follow
/// within [`MESSAGE_TIMEOUT`]. `Ok(None)` on a clean end of stream.
fn recv(s: &mut UnixStream) -> Result<Option<Msg>, RelayError> {
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
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    if got < HDR {
        read_exact_by(s, &mut hdr.as_mut_slice()[got..], deadline)?;
    }
    let size = hdr.size as usize;
    if size > MAX_MSG_SIZE {
        return Err(refused(format!(
            "payload of {size} bytes (at most {MAX_MSG_SIZE})"
        )));
    }
    let mut payload = vec![0u8; size];
    read_exact_by(s, &mut payload, deadline)?;
    Ok(Some(Msg { hdr, payload, fds }))
}

/// Writes one message, its fds attached to the first bytes. The socket's
/// send timeout bounds how long a peer that takes nothing can hold it.
fn send(s: &mut UnixStream, m: &Msg) -> Result<(), RelayError> {
    if m.fds.len() > MAX_ATTACHED_FD_ENTRIES {
        return Err(refused(format!("{} fds on one message", m.fds.len())));
    }
    let stalled = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            RelayError::Stalled(format!("a reply was not taken within {MESSAGE_TIMEOUT:?}"))
        }
        _ => RelayError::Io(e),
    };
    let fds: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let parts: [&[u8]; 2] = [m.hdr.as_slice(), &m.payload];
    let sent = s
        .send_with_fds(&parts, &fds)
        .map_err(|e| stalled(io::Error::from(e)))?;
    // A stream socket may take fewer bytes; the fds went with the first.
    let mut rest = sent;
    for part in parts {
        let skip = rest.min(part.len());
        rest -= skip;
        s.write_all(&part[skip..]).map_err(stalled)?;
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

/// The `u64` at `at` of `bytes`, in the platform's byte order.
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

/// Checks one memory region (`REGION` bytes at `at` of `payload`) against
/// its file: a regular file, and `[mmap_offset, mmap_offset + size)` inside
/// it.
fn check_region(payload: &[u8], at: usize, fd: &OwnedFd, i: usize) -> Result<(), RelayError> {
    let field = |off: usize| {
        u64_at(payload, at + off).ok_or_else(|| refused(format!("memory region {i} is truncated")))
    };
    let (gpa, size, offset) = (field(0)?, field(8)?, field(24)?);
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is an open descriptor we own; `st` is a valid buffer
    // for one stat structure, read only after fstat succeeded.
    let st = unsafe {
        if libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error().into());
        }
        st.assume_init()
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(format!(
            "memory region {i} (guest {gpa:#x}) is not backed by a regular file or memfd"
        )));
    }
    let file_len = u64::try_from(st.st_size).unwrap_or(0);
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(refused(format!(
            "memory region {i} (guest {gpa:#x}, {size} bytes at file offset {offset}) \
             does not lie inside its file of {file_len} bytes"
        )));
    }
    Ok(())
}

/// Checks a memory table message before the library maps it.
fn check_memory(m: &Msg) -> Result<(), RelayError> {
    if m.hdr.is(FrontendReq::SET_MEM_TABLE) {
        let n = m
            .payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes) as usize;
        let want = n.checked_mul(REGION).and_then(|r| r.checked_add(MEM_HDR));
        if want != Some(m.payload.len()) || m.fds.len() != n {
            return Err(refused(format!(
                "SET_MEM_TABLE of {n} regions has {} bytes and {} fds",
                m.payload.len(),
                m.fds.len()
            )));
        }
        for (i, fd) in m.fds.iter().enumerate() {
            check_region(&m.payload, MEM_HDR + i * REGION, fd, i)?;
        }
    } else if m.hdr.is(FrontendReq::ADD_MEM_REG) {
        let [fd] = m.fds.as_slice() else {
            return Err(refused(format!("ADD_MEM_REG with {} fds", m.fds.len())));
        };
        if m.payload.len() != SINGLE_REGION_PAD + REGION {
            return Err(refused(format!("ADD_MEM_REG of {} bytes", m.payload.len())));
        }
        check_region(&m.payload, SINGLE_REGION_PAD, fd, 0)?;
    }
    Ok(())
}

/// Relays between `front` (the frontend) and `back` (vhost-user-backend)
/// until either side closes or the frontend breaks a rule; then closes
/// both.
pub fn run(front: UnixStream, back: UnixStream) {
    match relay(front, back) {
        Ok(()) => tracing::debug!("vhost-user relay ended"),
        Err(RelayError::Io(e)) => tracing::debug!("vhost-user relay ended: {e}"),
        Err(e) => tracing::error!("{e}; connection closed"),
    }
}

fn relay(mut front: UnixStream, mut back: UnixStream) -> Result<(), RelayError> {
    let result = (|| {
        for s in [&front, &back] {
            s.set_write_timeout(Some(MESSAGE_TIMEOUT))?;
        }
        let mut acked = false;
        let mut held: Vec<Msg> = Vec::new();
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
                return Err(e.into());
            }
            if fds[0].revents != 0 {
                let Some(mut m) = recv(&mut front)? else {
                    return Ok(());
                };
                if m.hdr.is(FrontendReq::SET_VRING_ENABLE) && !acked {
                    let state = std::mem::size_of::<VhostUserVringState>();
                    if m.payload.len() != state || !m.fds.is_empty() {
                        return Err(refused(format!(
                            "early SET_VRING_ENABLE of {} bytes with {} fds (a vring state is \
                             {state} bytes, without fds)",
                            m.payload.len(),
                            m.fds.len()
                        )));
                    }
                    if held.len() >= MAX_HELD {
                        return Err(refused(format!(
                            "more than {MAX_HELD} SET_VRING_ENABLE before SET_FEATURES acked \
                             PROTOCOL_FEATURES"
                        )));
                    }
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
                    check_memory(&m)?;
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
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = back.shutdown(std::net::Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A relay between two socket pairs: (frontend's end, backend's end,
    /// the relay thread).
    fn start() -> (UnixStream, UnixStream, std::thread::JoinHandle<()>) {
        let (qemu, front) = UnixStream::pair().unwrap();
        let (back, backend) = UnixStream::pair().unwrap();
        for s in [&qemu, &backend] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (qemu, backend, std::thread::spawn(move || run(front, back)))
    }

    /// The relay ended the connection: both sides see the end, nothing was
    /// forwarded, the thread is done.
    fn assert_ended(mut qemu: UnixStream, mut backend: UnixStream, t: std::thread::JoinHandle<()>) {
        assert!(
            recv(&mut backend).unwrap().is_none(),
            "the backend sees the end and nothing else"
        );
        assert!(recv(&mut qemu).unwrap().is_none(), "the frontend too");
        t.join().unwrap();
    }

    fn eventfd() -> OwnedFd {
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // SAFETY: dup of a valid fd; the result is owned by the OwnedFd.
        unsafe { OwnedFd::from_raw_fd(libc::dup(efd.as_raw_fd())) }
    }

    const STATE: [u8; 8] = [2, 0, 0, 0, 1, 0, 0, 0];

    #[test]
    fn early_vring_enables_are_bounded_in_number() {
        let (mut qemu, backend, t) = start();
        for _ in 0..MAX_HELD {
            send(
                &mut qemu,
                &msg(SET_VRING_ENABLE, VERSION_1, &STATE, Vec::new()),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "{MAX_HELD} are held");
        send(
            &mut qemu,
            &msg(SET_VRING_ENABLE, VERSION_1, &STATE, Vec::new()),
        )
        .unwrap();
        assert_ended(qemu, backend, t);
    }

    #[test]
    fn an_early_vring_enable_must_be_a_vring_state_without_fds() {
        let (mut qemu, backend, t) = start();
        send(
            &mut qemu,
            &msg(SET_VRING_ENABLE, VERSION_1, &[0; 12], Vec::new()),
        )
        .unwrap();
        assert_ended(qemu, backend, t);

        let (mut qemu, backend, t) = start();
        send(
            &mut qemu,
            &msg(SET_VRING_ENABLE, VERSION_1, &STATE, vec![eventfd()]),
        )
        .unwrap();
        assert_ended(qemu, backend, t);
    }

    /// A memfd of `len` bytes.
    fn memfd(len: u64) -> OwnedFd {
        // SAFETY: a valid NUL-terminated name; returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"relay-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nothing else owns.
        let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.set_len(len).unwrap();
        f.into()
    }

    /// SET_MEM_TABLE payload: (guest address, size, file offset) per region.
    fn mem_table(regions: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        for &(gpa, size, off) in regions {
            for v in [gpa, size, 0x7f00_0000_0000 + gpa, off] {
                p.extend_from_slice(&v.to_ne_bytes());
            }
        }
        p
    }

    const SET_MEM_TABLE: u32 = 5;
    const ADD_MEM_REG: u32 = 37;

    #[test]
    fn memory_regions_must_lie_inside_their_files() {
        const MB: u64 = 1 << 20;
        // Inside: forwarded with both fds.
        let (mut qemu, mut backend, t) = start();
        let table = mem_table(&[(0, MB, 0), (MB, MB, MB)]);
        send(
            &mut qemu,
            &msg(
                SET_MEM_TABLE,
                VERSION_1,
                &table,
                vec![memfd(MB), memfd(2 * MB)],
            ),
        )
        .unwrap();
        let m = recv(&mut backend).unwrap().unwrap();
        assert_eq!((m.hdr.request, m.fds.len()), (SET_MEM_TABLE, 2));
        assert_eq!(m.payload, table);
        drop(qemu);
        t.join().unwrap();

        // Past the end, an offset that overflows, a region count that
        // disagrees with the fds, a file that is not a regular file: the
        // library never sees them.
        let (r, w) = UnixStream::pair().unwrap();
        let cases: Vec<(Vec<u8>, Vec<OwnedFd>)> = vec![
            (
                mem_table(&[(0, MB, 0), (MB, 2 * MB, 0)]),
                vec![memfd(MB), memfd(MB)],
            ),
            (mem_table(&[(0, MB, u64::MAX - 10)]), vec![memfd(MB)]),
            (mem_table(&[(0, MB, 0), (MB, MB, 0)]), vec![memfd(MB)]),
            (mem_table(&[(0, MB, 0)]), vec![OwnedFd::from(r)]),
        ];
        drop(w);
        for (payload, fds) in cases {
            let (mut qemu, backend, t) = start();
            send(&mut qemu, &msg(SET_MEM_TABLE, VERSION_1, &payload, fds)).unwrap();
            assert_ended(qemu, backend, t);
        }
        // ADD_MEM_REG too.
        let (mut qemu, backend, t) = start();
        let mut one = vec![0u8; 8];
        one.extend_from_slice(&mem_table(&[(0, 2 * MB, 0)])[8..]);
        send(
            &mut qemu,
            &msg(ADD_MEM_REG, VERSION_1, &one, vec![memfd(MB)]),
        )
        .unwrap();
        assert_ended(qemu, backend, t);
    }

    /// A frontend that stops in the middle of a message is cut off after
    /// `MESSAGE_TIMEOUT`; one that is silent between messages is not.
    #[test]
    fn a_message_cut_short_times_out_but_silence_between_messages_does_not() {
        let (mut half, half_backend, half_relay) = start();
        let (_silent, _silent_backend, silent_relay) = start();
        let started = Instant::now();
        let hdr = Header {
            request: SET_FEATURES,
            flags: VERSION_1,
            size: 8,
        };
        half.write_all(&hdr.as_slice()[..6]).unwrap();
        assert_ended(half, half_backend, half_relay);
        let took = started.elapsed();
        assert!(took >= MESSAGE_TIMEOUT, "ended after {took:?}");
        assert!(!silent_relay.is_finished(), "a silent frontend stays");
    }
}
