//! Target `relay`: `xdpath_dataplane::relay::run` between two socket
//! pairs, fed arbitrary messages, raw bytes and fd counts from the
//! frontend side and messages from the backend side.
//!
//! Input, in order: a mode byte (bit 0: the frontend never reads what the
//! relay sends it; bit 1: the backend side hangs up at the end instead of
//! the frontend; bit 2: a frontend that stopped in the middle of a message
//! stays connected when the backend hangs up), then operations until the
//! input ends (at most [`MAX_OPS`]):
//! - a frontend message (op byte bits 6-7 = 0): request byte (0xff: a raw
//!   `u32` follows), flags byte (XORed with VERSION_1), fd-count byte (`%
//!   8`; 8 to 15 mean 33, one more than a message may carry), payload
//!   length (`u16`, at most 4096 + 16), the payload's first 8 bytes (a
//!   `u64`, so SET_FEATURES can ack PROTOCOL_FEATURES), the rest a pattern;
//! - raw frontend bytes (bits 6-7 = 1): a length byte and that many bytes,
//!   which may be half a message or garbage;
//! - a header that lies about its size (bits 6-7 = 2): request byte, size
//!   `u32`, then a length byte and that many payload bytes;
//! - a backend message (bits 6-7 = 3): request byte, payload length
//!   (`u16 % 4097`), sent towards the frontend.
//!
//! Properties:
//! - it ends: once either side hangs up, the relay returns within
//!   [`END_LIMIT`]; if the backend hung up while the frontend, still
//!   connected, stopped in the middle of a message (issue 11 #10), within
//!   [`STALL_LIMIT`] (the relay's read timeout once a message has begun
//!   must be shorter); if the frontend does not read, within `END_LIMIT`
//!   plus the relay's write timeout (`relay::MESSAGE_TIMEOUT`);
//! - nothing leaks: afterwards the process has the fds it had before; and
//!   while it runs, once a marker sent after everything else has come
//!   through, the relay holds no fd it received (an early
//!   SET_VRING_ENABLE carrying fds must not be kept);
//! - what it forwards is well framed (whole messages, payloads of at most
//!   `MAX_MSG_SIZE`), in both directions; and while the input is a clean
//!   message sequence, what reaches the backend is a subsequence of what
//!   the relay's contract says it forwards (every message, early
//!   SET_VRING_ENABLEs held until the SET_FEATURES that acks
//!   PROTOCOL_FEATURES and then without NEED_REPLY), with nothing but
//!   held enables left out before the last message that came through, and
//!   every message with its fds. The contract knows what the relay
//!   refuses (and ends on): an early enable that is not a plain vring
//!   state or one too many, and a memory table whose regions are not in
//!   regular files (this target's fds are eventfds).

use crate::input::Reader;
use crate::process::{self, Bounded};
use crate::wire::{self, req, Message, FLAG_NEED_REPLY, FLAG_REPLY, VERSION_1};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;
use xdpath_dataplane::relay;

/// Operations per input at most.
pub const MAX_OPS: usize = 64;
/// How long the relay may take to end once a side hung up.
pub const END_LIMIT: Duration = Duration::from_secs(2);
/// How long it may take when the backend hung up and the frontend stalled
/// in the middle of a message (its read timeout, plus margin).
pub const STALL_LIMIT: Duration = Duration::from_secs(10);
/// How long the harness waits for the marker.
const MARKER_LIMIT: Duration = Duration::from_secs(1);
/// A send that takes longer means the peer stopped reading.
const SEND_LIMIT: Duration = Duration::from_millis(200);

/// The marker's payload.
const MARKER: &[u8; 8] = b"xdpmark!";

/// What a reader thread saw.
#[derive(Debug, Default)]
struct Seen {
    msgs: Vec<Message>,
    /// The stream broke a frame: half a message at the end, or a payload
    /// over the limit.
    framing: Option<String>,
}

fn reader(s: UnixStream, seen: Arc<Mutex<Seen>>) {
    loop {
        match wire::recv(&s) {
            Ok(Some(m)) => seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .msgs
                .push(m),
            Ok(None) => return,
            Err(e) => {
                let mut g = seen.lock().unwrap_or_else(PoisonError::into_inner);
                // A reset connection is an end, not a framing error.
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) {
                    g.framing = Some(e.to_string());
                }
                return;
            }
        }
    }
}

/// Where the frontend's byte stream stands in the relay's framing.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of a header read so far.
    hdr: Vec<u8>,
    /// Payload bytes still to come.
    left: usize,
    /// The relay refuses what it got and ends.
    dead: bool,
}

impl Framing {
    fn feed(&mut self, mut bytes: &[u8], nfds: usize) {
        self.dead |= nfds > wire::MAX_FDS;
        while !bytes.is_empty() && !self.dead {
            if self.left > 0 {
                let t = self.left.min(bytes.len());
                self.left -= t;
                bytes = &bytes[t..];
                continue;
            }
            let t = (wire::HDR - self.hdr.len()).min(bytes.len());
            self.hdr.extend_from_slice(&bytes[..t]);
            bytes = &bytes[t..];
            if self.hdr.len() == wire::HDR {
                let size = u32::from_ne_bytes(self.hdr[8..12].try_into().expect("4 bytes"));
                self.hdr.clear();
                match usize::try_from(size) {
                    Ok(n) if n <= wire::MAX_MSG_SIZE => self.left = n,
                    _ => self.dead = true,
                }
            }
        }
    }

    /// The frontend stopped inside a message the relay accepts.
    fn mid_message(&self) -> bool {
        !self.dead && (!self.hdr.is_empty() || self.left > 0)
    }
}

/// The relay's contract, fed the frontend's messages in order.
#[derive(Debug, Default)]
struct Contract {
    acked: bool,
    held: Vec<Message>,
    /// Everything the backend should get, in order.
    forwarded: Vec<Message>,
}

impl Contract {
    /// Takes the frontend's next message; false when the relay refuses it
    /// (and ends), so nothing after it is described.
    fn feed(&mut self, m: Message) -> bool {
        if m.request == req::SET_VRING_ENABLE && !self.acked {
            // Held only as a vring state without fds, and only so many.
            if m.payload.len() != VRING_STATE || m.fds != 0 || self.held.len() >= relay::MAX_HELD {
                return false;
            }
            let mut m = m;
            m.flags &= !FLAG_NEED_REPLY;
            self.held.push(m);
        } else if m.request == req::SET_FEATURES {
            let v = m
                .payload
                .get(..8)
                .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
            self.forwarded.push(m);
            if v & wire::PROTOCOL_FEATURES != 0 {
                self.acked = true;
                self.forwarded.append(&mut self.held);
            }
        } else if m.request == req::SET_MEM_TABLE || m.request == req::ADD_MEM_REG {
            // The relay checks every region against its file with fstat;
            // the fds this target sends are eventfds, never regular
            // files, so only an empty table (no regions, no fds) passes.
            let regions = m.payload.get(..4).map_or(u32::MAX, |b| {
                u32::from_ne_bytes(b.try_into().expect("4 bytes"))
            });
            let empty = m.request == req::SET_MEM_TABLE
                && regions == 0
                && m.payload.len() == MEM_HDR
                && m.fds == 0;
            if !empty {
                return false;
            }
            self.forwarded.push(m);
        } else {
            self.forwarded.push(m);
        }
        true
    }
}

/// A vring state's size (`VhostUserVringState`).
const VRING_STATE: usize = 8;
/// The memory table's header (a region count and padding).
const MEM_HDR: usize = 8;

/// Runs one input; returns the messages that reached the backend (for
/// the seeds' tests).
pub fn run(data: &[u8]) -> usize {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let front_mute = mode & 1 != 0;
    let backend_hangs_up = mode & 2 != 0;
    let stall = mode & 4 != 0;
    let mut framing = Framing::default();

    let baseline = process::fds();
    let (front_peer, front) = UnixStream::pair().expect("socketpair");
    let (back, back_peer) = UnixStream::pair().expect("socketpair");
    wire::send_timeout(&front_peer, SEND_LIMIT);
    wire::send_timeout(&back_peer, SEND_LIMIT);
    let mut relay = Bounded::spawn("relay", move || {
        xdpath_dataplane::relay::run(front, back);
    });
    let at_backend = Arc::new(Mutex::new(Seen::default()));
    let at_front = Arc::new(Mutex::new(Seen::default()));
    let back_reader = {
        let s = back_peer.try_clone().expect("dup");
        let seen = at_backend.clone();
        std::thread::spawn(move || reader(s, seen))
    };
    let front_reader = (!front_mute).then(|| {
        let s = front_peer.try_clone().expect("dup");
        let seen = at_front.clone();
        std::thread::spawn(move || reader(s, seen))
    });

    let efd = EventFd::new(libc::EFD_CLOEXEC).expect("eventfd");
    let mut contract = Contract::default();
    // The input is still a clean message sequence the contract describes.
    let mut clean = true;
    // Whether the relay still takes what each side sends.
    let mut front_ok = true;
    let mut back_ok = true;
    let mut back_sent: Vec<Message> = Vec::new();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op >> 6 {
            0 => {
                let request = match r.u8() {
                    0xff => r.u32(),
                    b => u32::from(b),
                };
                let flags = u32::from(r.u8()) ^ VERSION_1;
                let nfds = match r.u8() % 16 {
                    n @ 0..=7 => usize::from(n),
                    _ => wire::MAX_FDS + 1,
                };
                let len = usize::from(r.u16()) % (wire::MAX_MSG_SIZE + 17);
                let first = r.u64().to_ne_bytes();
                let payload: Vec<u8> = (0..len)
                    .map(|i| first.get(i).copied().unwrap_or((i as u8).wrapping_mul(13)))
                    .collect();
                let mut bytes = wire::header(request, flags, len as u32).to_vec();
                bytes.extend_from_slice(&payload);
                let fds = vec![efd.as_raw_fd(); nfds];
                if front_ok {
                    front_ok = wire::send(&front_peer, &bytes, &fds).is_ok();
                    framing.feed(&bytes, nfds);
                }
                if len > wire::MAX_MSG_SIZE || nfds > wire::MAX_FDS || !front_ok {
                    // The relay refuses it and ends; nothing after it is
                    // described by the contract.
                    clean = false;
                } else if clean {
                    clean = contract.feed(Message {
                        request,
                        flags,
                        payload,
                        fds: nfds,
                    });
                }
            }
            1 => {
                let n = usize::from(r.u8());
                let bytes = r.bytes(n);
                if front_ok {
                    front_ok = wire::send(&front_peer, bytes, &[]).is_ok();
                    framing.feed(bytes, 0);
                }
                clean &= bytes.is_empty();
            }
            2 => {
                let request = u32::from(r.u8());
                let size = r.u32();
                let n = usize::from(r.u8());
                let mut bytes = wire::header(request, VERSION_1, size).to_vec();
                bytes.extend_from_slice(r.bytes(n));
                if front_ok {
                    front_ok = wire::send(&front_peer, &bytes, &[]).is_ok();
                    framing.feed(&bytes, 0);
                }
                clean = false;
            }
            _ => {
                let request = u32::from(r.u8());
                let len = usize::from(r.u16()) % (wire::MAX_MSG_SIZE + 1);
                let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0x5a).collect();
                let mut bytes = wire::header(request, VERSION_1 | FLAG_REPLY, len as u32).to_vec();
                bytes.extend_from_slice(&payload);
                if back_ok {
                    back_ok = wire::send(&back_peer, &bytes, &[]).is_ok();
                    if back_ok {
                        back_sent.push(Message {
                            request,
                            flags: VERSION_1 | FLAG_REPLY,
                            payload,
                            fds: 0,
                        });
                    }
                }
            }
        }
    }
    drop(efd);

    // Held fds: once a marker sent after everything has reached the
    // backend, every fd the frontend sent is either at the backend
    // (closed there on receipt) or still in the relay.
    if clean && front_ok {
        let marker = {
            let mut b = wire::header(req::GET_FEATURES, VERSION_1, 8).to_vec();
            b.extend_from_slice(MARKER);
            b
        };
        if wire::send(&front_peer, &marker, &[]).is_ok() {
            let came = process::wait_until(MARKER_LIMIT, || {
                at_backend
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .msgs
                    .last()
                    .is_some_and(|m| m.payload == MARKER)
            });
            if came {
                // Our four sockets and the two reader clones (one if the
                // frontend is mute) are all we should find.
                let ours = 4 + 1 + usize::from(!front_mute);
                let held = process::fds().saturating_sub(baseline + ours);
                assert_eq!(
                    held,
                    0,
                    "the relay holds {held} fds it received (early SET_VRING_ENABLE with fds?): {:?}",
                    process::fd_list()
                );
                contract.feed(Message {
                    request: req::GET_FEATURES,
                    flags: VERSION_1,
                    payload: MARKER.to_vec(),
                    fds: 0,
                });
            }
        }
    }

    // One side hangs up: the relay must end and close the other. A
    // frontend that stopped in the middle of a message (and cannot be
    // told from one that is slow, until a timeout) hangs up too, unless
    // the input asks to see that timeout.
    let mid_message = front_ok && framing.mid_message();
    let stalled = backend_hangs_up && mid_message && stall;
    if stalled {
        // Let the relay forward what came before and start reading the
        // unfinished message, so that it is waiting for the frontend (and
        // not failing to write to a backend that already hung up).
        let count = || {
            at_backend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .msgs
                .len()
        };
        let mut last = count();
        let mut quiet = std::time::Instant::now();
        process::wait_until(MARKER_LIMIT, || {
            let now = count();
            if now != last {
                last = now;
                quiet = std::time::Instant::now();
            }
            quiet.elapsed() >= Duration::from_millis(20)
        });
    }
    if backend_hangs_up {
        let _ = back_peer.shutdown(std::net::Shutdown::Both);
        if mid_message && !stall {
            let _ = front_peer.shutdown(std::net::Shutdown::Both);
        }
    } else {
        let _ = front_peer.shutdown(std::net::Shutdown::Both);
    }
    // A frontend that does not read holds the relay in a write for up to
    // the relay's MESSAGE_TIMEOUT (it may start after the hang-up, while
    // the relay still forwards what the backend sent before it).
    let limit = if stalled {
        STALL_LIMIT
    } else if front_mute {
        END_LIMIT + relay::MESSAGE_TIMEOUT
    } else {
        END_LIMIT
    };
    assert!(
        relay.join_within(limit).is_some(),
        "the relay did not end within {limit:?} after the {} hung up (frontend {}{})",
        if backend_hangs_up {
            "backend"
        } else {
            "frontend"
        },
        if front_mute { "not reading" } else { "reading" },
        if stalled {
            ", stalled in the middle of a message: issue 11 #10"
        } else {
            ""
        },
    );
    let _ = front_peer.shutdown(std::net::Shutdown::Both);
    let _ = back_peer.shutdown(std::net::Shutdown::Both);
    let _ = back_reader.join();
    if let Some(t) = front_reader {
        let _ = t.join();
    }
    drop((front_peer, back_peer));
    let now = process::settle_fds(baseline, Duration::from_millis(500));
    assert_eq!(
        now,
        baseline,
        "fds after the relay ended: {:?}",
        process::fd_list()
    );

    let at_backend =
        std::mem::take(&mut *at_backend.lock().unwrap_or_else(PoisonError::into_inner));
    let at_front = std::mem::take(&mut *at_front.lock().unwrap_or_else(PoisonError::into_inner));
    if !backend_hangs_up {
        assert_eq!(at_backend.framing, None, "the backend got a broken frame");
    }
    if !front_mute && backend_hangs_up {
        assert_eq!(at_front.framing, None, "the frontend got a broken frame");
    }
    if clean && !backend_hangs_up {
        check_forwarded(&contract.forwarded, &at_backend.msgs);
    }
    if clean && front_ok && !front_mute && backend_hangs_up {
        // Every message of the backend reaches the frontend, in order
        // (between the relay's own answers to early enables).
        let mut want = back_sent.iter().peekable();
        for m in &at_front.msgs {
            if want.peek() == Some(&m) {
                want.next();
            }
        }
        assert!(
            want.peek().is_none(),
            "{} of {} backend messages did not reach the frontend",
            want.count(),
            back_sent.len()
        );
    }
    at_backend.msgs.len()
}

/// What reached the backend is a subsequence of the contract's list, and
/// before the last message that came through only held enables may be
/// missing.
fn check_forwarded(want: &[Message], got: &[Message]) {
    let mut w = 0;
    for (i, m) in got.iter().enumerate() {
        loop {
            let Some(next) = want.get(w) else {
                panic!(
                    "message {i} at the backend ({} {:#x}, {} bytes, {} fds) is not one the frontend sent, in order",
                    m.request,
                    m.flags,
                    m.payload.len(),
                    m.fds
                );
            };
            w += 1;
            if next == m {
                break;
            }
            assert!(
                next.request == req::SET_VRING_ENABLE,
                "the relay left out message {} {:#x} ({} bytes) before message {i}",
                next.request,
                next.flags,
                next.payload.len()
            );
        }
    }
}
