//! Target `vhost_user`: message sequences against the real backend — a
//! `Server<MemPort>` on an in-memory wire, its relay, vhost-user-backend
//! and the workers — driven by raw messages on its socket, with a guest
//! that writes rings into the memory it shares and kicks, and a wire that
//! injects frames.
//!
//! Input, in order: a config byte (bit 0: two queue pairs; bit 1:
//! adaptive polling on; bit 2: no MAC; bit 3: the frontend never reads
//! replies; bit 4: the driver is offered one pair only), then operations ([`Op`], at most [`MAX_OPS`]) until the input
//! ends: every frontend request with fuzzed fields (memory tables of up to
//! nine regions whose memfds may be shorter than the region, overlapping
//! or huge; vring messages for any index, in any order; features at any
//! time), raw messages, a whole well-formed handshake in one operation
//! ([`Op::Setup`], so the fuzzer reaches traffic), guest actions on the
//! rings that handshake laid out (RX buffers, TX frames, kicks, raw
//! pokes), frames from the wire, a flood of requests, sync points and
//! reconnects. The input ends with a sync; then the server is stopped.
//!
//! Properties:
//! - the process lives (no crash, no panic on any thread) and the server
//!   does not end on its own while the frontend misbehaves;
//! - `ServerHandle::stop` makes `Server::run` return within
//!   [`STOP_LIMIT`];
//! - afterwards the fds, threads and memory mappings are back to what
//!   they were before the server started.
//!
//! Heavier than the others: every input builds a server, spawns workers,
//! the relay and the reply reader, and joins them all. Iterations are
//! bounded by [`MAX_OPS`], the flood size and the sync waits.

use crate::input::Reader;
use crate::process::{self, Bounded};
use crate::wire::{self, req, FLAG_NEED_REPLY, PROTOCOL_FEATURES, VERSION_1};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;
use xdpath_dataplane::{
    CounterSnapshot, MemPort, MemWire, NetConfig, Server, ServerError, ServerHandle,
};

/// Operations per input at most.
pub const MAX_OPS: usize = 48;
/// How long `Server::run` may take to return after `stop`.
pub const STOP_LIMIT: Duration = Duration::from_secs(3);
/// How long a sync point waits for the backend's answer.
const SYNC_LIMIT: Duration = Duration::from_millis(500);
/// How long a connect waits for the server to take the frontend.
const ACCEPT_LIMIT: Duration = Duration::from_secs(1);
/// A send that takes longer means the backend stopped reading.
const SEND_LIMIT: Duration = Duration::from_millis(100);
/// Largest memfd the harness creates (regions may claim more).
const MAX_MEMFD: u64 = 4 << 20;
/// The handshake's ring size.
const RING: u16 = 256;
/// The handshake's guest memory: one region at 0.
const SETUP_MEM: u64 = 1 << 20;
/// The handshake's frontend address of guest address 0.
const SETUP_UADDR: u64 = 0x7f00_0000_0000;
/// Where the handshake's buffers start.
const BUFFERS: u64 = 0x8_0000;

/// Operation codes (the op byte modulo the count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// The whole handshake: features (a `u64` mask over what is offered),
    /// one memory region, every vring laid out, kicked, called, enabled.
    Setup = 0,
    /// GET_FEATURES.
    GetFeatures,
    /// SET_FEATURES with a raw `u64`.
    SetFeatures,
    /// SET_OWNER.
    SetOwner,
    /// RESET_OWNER.
    ResetOwner,
    /// SET_MEM_TABLE: count byte (`% 10`), then per region: guest page
    /// (`u16`), size code, frontend address page (`u16`), offset page
    /// (byte), memfd code (0 whole, 1 half, 2 none beyond the offset, 3
    /// one page); a flags byte (bit 0: one fd short).
    MemTable,
    /// SET_VRING_NUM: index byte, `u32`.
    VringNum,
    /// SET_VRING_ADDR: index, flags, then desc, used, avail as offsets
    /// (`u32`) from the first region's frontend address, log `u64`.
    VringAddr,
    /// SET_VRING_BASE: index, `u32`.
    VringBase,
    /// GET_VRING_BASE: index.
    GetVringBase,
    /// SET_VRING_KICK: `u64` (bit 8: no fd).
    VringKick,
    /// SET_VRING_CALL: `u64` (bit 8: no fd).
    VringCall,
    /// SET_VRING_ERR: `u64` (bit 8: no fd).
    VringErr,
    /// GET_PROTOCOL_FEATURES.
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES: `u64`.
    SetProtocolFeatures,
    /// GET_QUEUE_NUM.
    GetQueueNum,
    /// SET_VRING_ENABLE: index, `u32`.
    VringEnable,
    /// GET_CONFIG: offset, size (`u32` each), flags `u32`.
    GetConfig,
    /// SET_CONFIG: offset, size, flags, then `size % 256` pattern bytes.
    SetConfig,
    /// Any message: request `u32`, flags `u32`, size `u32`, a length
    /// byte and that many payload bytes, an fd-count byte (`% 4`).
    Raw,
    /// Guest: RX buffers on the handshake's vring of pair `b % 2`: count
    /// byte, length `u16`.
    PostRx,
    /// Guest: a TX frame on pair `b % 2`: length `u16`, flags byte (bit 0:
    /// header and frame in separate descriptors).
    SendTx,
    /// Guest: kick vring `b % 4`.
    Kick,
    /// Guest: address field (`u64` guest address), length byte, bytes.
    Poke,
    /// Wire: queue byte (`% 2`), count byte (`1 + b % 64`), length
    /// (`u16`): that many frames injected on the queue.
    Inject,
    /// Sync: GET_FEATURES and wait (bounded) for the answer.
    Sync,
    /// `u16` GET_FEATURES at once (the frontend may not read the answers);
    /// all floods of one input send at most [`FLOOD_BUDGET`].
    Flood,
    /// Hang up and connect again.
    Reconnect,
    /// Wait (at most [`SETTLE_LIMIT`]) until the workers' counters stop
    /// moving: the traffic so far has been handled.
    Settle,
}

/// GET_FEATURES all floods of one input send at most: enough to fill the
/// socket buffers both ways many times over, and one input stays cheap
/// (48 floods of 65535 took 26 s).
pub const FLOOD_BUDGET: u16 = 8192;
/// How many [`Op`]s there are.
pub const OP_COUNT: u8 = 29;
/// How long [`Op::Settle`] waits at most.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(200);

impl Op {
    fn from_byte(b: u8) -> Self {
        const ALL: [Op; OP_COUNT as usize] = [
            Op::Setup,
            Op::GetFeatures,
            Op::SetFeatures,
            Op::SetOwner,
            Op::ResetOwner,
            Op::MemTable,
            Op::VringNum,
            Op::VringAddr,
            Op::VringBase,
            Op::GetVringBase,
            Op::VringKick,
            Op::VringCall,
            Op::VringErr,
            Op::GetProtocolFeatures,
            Op::SetProtocolFeatures,
            Op::GetQueueNum,
            Op::VringEnable,
            Op::GetConfig,
            Op::SetConfig,
            Op::Raw,
            Op::PostRx,
            Op::SendTx,
            Op::Kick,
            Op::Poke,
            Op::Inject,
            Op::Sync,
            Op::Flood,
            Op::Reconnect,
            Op::Settle,
        ];
        ALL[usize::from(b % OP_COUNT)]
    }
}

/// The guest's side of one region: the memfd and the harness's own
/// mapping of the part the memfd really holds.
struct GuestRegion {
    gpa: u64,
    mem: Option<GuestMemoryMmap>,
}

/// The guest driver's state of one handshake vring.
#[derive(Debug, Clone, Copy, Default)]
struct Ring {
    desc: u64,
    avail: u64,
    next_desc: u16,
    avail_idx: u16,
}

/// One frontend connection and the guest behind it.
struct Frontend {
    sock: UnixStream,
    reader: Option<std::thread::JoinHandle<()>>,
    /// GET_FEATURES answers read so far, and whether the stream ended.
    answers: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
    get_features_sent: u64,
    mute: bool,
    /// The backend stopped reading (a send timed out or failed).
    dead: bool,
    regions: Vec<GuestRegion>,
    rings: Vec<Ring>,
    buffers: u64,
    kicks: Vec<Option<EventFd>>,
    /// Fds the frontend keeps for the vrings (calls, errs).
    keep: Vec<EventFd>,
}

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name and valid flags; it
    // returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"xdpath-fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is the fresh memfd; the File takes sole ownership.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(size).expect("size a memfd");
    f
}

impl Frontend {
    fn connect(path: &std::path::Path, mute: bool) -> Option<Self> {
        let sock = UnixStream::connect(path).ok()?;
        wire::send_timeout(&sock, SEND_LIMIT);
        let answers = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let reader = (!mute).then(|| {
            let s = sock.try_clone().expect("dup");
            let (answers, ended) = (answers.clone(), ended.clone());
            std::thread::spawn(move || {
                while let Ok(Some(m)) = wire::recv(&s) {
                    if m.request == req::GET_FEATURES {
                        answers.fetch_add(1, Ordering::AcqRel);
                    }
                }
                ended.store(1, Ordering::Release);
            })
        });
        Some(Self {
            sock,
            reader,
            answers,
            ended,
            get_features_sent: 0,
            mute,
            dead: false,
            regions: Vec::new(),
            rings: Vec::new(),
            buffers: BUFFERS,
            kicks: Vec::new(),
            keep: Vec::new(),
        })
    }

    fn send(&mut self, request: u32, flags: u32, payload: &[u8], fds: &[i32]) {
        if self.dead {
            return;
        }
        let mut b = wire::header(request, flags, payload.len() as u32).to_vec();
        b.extend_from_slice(payload);
        if wire::send(&self.sock, &b, fds).is_err() {
            self.dead = true;
        }
        if request == req::GET_FEATURES && !self.dead {
            self.get_features_sent += 1;
        }
    }

    fn request(&mut self, request: u32, payload: &[u8]) {
        self.send(request, VERSION_1, payload, &[]);
    }

    /// Asks for the features and waits (bounded) until every GET_FEATURES
    /// so far is answered: everything sent before was handled.
    fn sync(&mut self) {
        if self.mute || self.dead {
            return;
        }
        self.request(req::GET_FEATURES, &[]);
        let want = self.get_features_sent;
        process::wait_until(SYNC_LIMIT, || {
            self.answers.load(Ordering::Acquire) >= want || self.ended.load(Ordering::Acquire) != 0
        });
    }

    fn vring_state(&mut self, request: u32, index: u32, num: u32) {
        let mut p = index.to_ne_bytes().to_vec();
        p.extend_from_slice(&num.to_ne_bytes());
        self.request(request, &p);
    }

    /// SET_VRING_KICK/CALL/ERR with a fresh eventfd unless `value` says
    /// no fd; kicks are kept to kick with later.
    fn vring_fd(&mut self, request: u32, value: u64) {
        let nofd = value & 0x100 != 0;
        let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).expect("eventfd");
        let fds = if nofd { vec![] } else { vec![efd.as_raw_fd()] };
        self.send(request, VERSION_1, &value.to_ne_bytes(), &fds);
        let index = (value & 0xff) as usize;
        if request == req::SET_VRING_KICK && !nofd && index < 32 {
            if self.kicks.len() <= index {
                self.kicks.resize_with(index + 1, || None);
            }
            self.kicks[index] = Some(efd);
        } else if !nofd {
            self.keep.push(efd);
        }
    }

    fn mem_table(&mut self, regions: &[(u64, u64, u64, u64, u64)], short_fds: bool) {
        // (gpa, size, uaddr, offset, memfd length)
        let mut payload = (regions.len() as u32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_ne_bytes());
        let mut files = Vec::new();
        self.regions.clear();
        for &(gpa, size, uaddr, offset, flen) in regions {
            for v in [gpa, size, uaddr, offset] {
                payload.extend_from_slice(&v.to_ne_bytes());
            }
            let f = memfd(flen);
            // The harness maps only what the memfd holds past the offset.
            let real = size.min(flen.saturating_sub(offset));
            let mem = (real > 0 && offset % 4096 == 0)
                .then(|| {
                    let fo = FileOffset::new(f.try_clone().ok()?, offset);
                    let r = GuestRegionMmap::from_range(GuestAddress(gpa), real as usize, Some(fo))
                        .ok()?;
                    GuestMemoryMmap::from_regions(vec![r]).ok()
                })
                .flatten();
            self.regions.push(GuestRegion { gpa, mem });
            files.push(f);
        }
        let n = files.len().saturating_sub(usize::from(short_fds));
        let fds: Vec<i32> = files[..n].iter().map(AsRawFd::as_raw_fd).collect();
        self.send(req::SET_MEM_TABLE, VERSION_1, &payload, &fds);
    }

    /// Writes guest memory where the harness mapped it.
    fn poke(&self, gpa: u64, bytes: &[u8]) {
        for r in &self.regions {
            if let Some(m) = &r.mem {
                if gpa >= r.gpa && m.write_slice(bytes, GuestAddress(gpa)).is_ok() {
                    return;
                }
            }
        }
    }

    fn kick(&self, vring: usize) {
        if let Some(Some(k)) = self.kicks.get(vring) {
            let _ = k.write(1);
        }
    }

    /// The handshake of a well-behaved frontend (what the in-repo test
    /// frontend and QEMU send), with the features masked by `mask`.
    fn setup(&mut self, queue_pairs: u16, offered: u64, mask: u64) {
        self.request(req::GET_FEATURES, &[]);
        self.request(req::SET_OWNER, &[]);
        self.request(req::GET_PROTOCOL_FEATURES, &[]);
        // MQ | REPLY_ACK | CONFIG.
        let proto: u64 = (1 << 0) | (1 << 3) | (1 << 9);
        self.request(req::SET_PROTOCOL_FEATURES, &proto.to_ne_bytes());
        self.request(req::GET_QUEUE_NUM, &[]);
        let features = (offered & !mask) | PROTOCOL_FEATURES;
        self.request(req::SET_FEATURES, &features.to_ne_bytes());
        self.mem_table(&[(0, SETUP_MEM, SETUP_UADDR, 0, SETUP_MEM)], false);
        self.rings.clear();
        self.buffers = BUFFERS;
        for i in 0..u32::from(2 * queue_pairs) {
            let base = 0x1_0000 * u64::from(i + 1);
            let ring = Ring {
                desc: base,
                avail: base + 0x1000,
                next_desc: 0,
                avail_idx: 0,
            };
            let used = base + 0x2000;
            self.vring_state(req::SET_VRING_NUM, i, u32::from(RING));
            self.vring_state(req::SET_VRING_BASE, i, 0);
            let mut p = i.to_ne_bytes().to_vec();
            p.extend_from_slice(&0u32.to_ne_bytes());
            for a in [ring.desc, used, ring.avail] {
                p.extend_from_slice(&(SETUP_UADDR + a).to_ne_bytes());
            }
            p.extend_from_slice(&0u64.to_ne_bytes());
            self.request(req::SET_VRING_ADDR, &p);
            self.vring_fd(req::SET_VRING_KICK, u64::from(i));
            self.vring_fd(req::SET_VRING_CALL, u64::from(i));
            self.vring_state(req::SET_VRING_ENABLE, i, 1);
            self.rings.push(ring);
        }
        self.sync();
    }

    /// Adds a chain of `(addr, len, writable)` buffers to handshake ring
    /// `v` and makes it available.
    fn add_chain(&mut self, v: usize, bufs: &[(u64, u32, bool)]) {
        let Some(mut ring) = self.rings.get(v).copied() else {
            return;
        };
        let head = ring.next_desc;
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = (ring.next_desc + k as u16) % RING;
            let mut flags = if writable { 2u16 } else { 0 };
            if k + 1 < bufs.len() {
                flags |= 1;
            }
            let next = (i + 1) % RING;
            self.poke(
                ring.desc + 16 * u64::from(i),
                &crate::queue_pair::descriptor(addr, len, flags, next),
            );
        }
        ring.next_desc = (ring.next_desc + bufs.len() as u16) % RING;
        let slot = u64::from(ring.avail_idx % RING);
        self.poke(ring.avail + 4 + 2 * slot, &head.to_le_bytes());
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        self.poke(ring.avail + 2, &ring.avail_idx.to_le_bytes());
        self.rings[v] = ring;
    }

    fn buffer(&mut self, len: u64) -> u64 {
        if self.buffers + len > SETUP_MEM {
            self.buffers = BUFFERS;
        }
        let at = self.buffers;
        self.buffers += len.next_multiple_of(64);
        at
    }

    fn hang_up(mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// Connects a frontend and waits (bounded) until the server took it, so
/// that what follows does not race the previous connection's teardown.
fn connect(path: &std::path::Path, mute: bool, handle: &ServerHandle<MemPort>) -> Option<Frontend> {
    let before = handle.connections();
    let f = Frontend::connect(path, mute)?;
    process::wait_until(ACCEPT_LIMIT, || handle.connections() > before);
    Some(f)
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "xdpath-fuzz-vu-{}-{}.sock",
        std::process::id(),
        SOCKETS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs one input; returns every pair's counters at the end (for the
/// seeds' tests).
pub fn run(data: &[u8]) -> Vec<CounterSnapshot> {
    // One whole session first, so that state the process sets up once
    // (thread-locals, lazily opened files) is in the baseline.
    static WARM: Once = Once::new();
    WARM.call_once(|| {
        session(&[0, 0], None);
    });
    let baseline = (process::fds(), process::threads());
    session(data, Some(baseline))
}

fn session(data: &[u8], baseline: Option<(usize, usize)>) -> Vec<CounterSnapshot> {
    let mut r = Reader::new(data);
    let cfg_bits = r.u8();
    let queue_pairs: u16 = if cfg_bits & 1 != 0 { 2 } else { 1 };
    let mute = cfg_bits & 8 != 0;
    let cfg = NetConfig {
        queue_pairs,
        // A device offering its driver fewer pairs than it has.
        offered_pairs: if cfg_bits & 16 != 0 { 1 } else { queue_pairs },
        mac: (cfg_bits & 4 == 0).then_some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        mtu: 1500,
        max_queue_size: 1024,
        poll_idle: if cfg_bits & 2 != 0 {
            Duration::from_micros(50)
        } else {
            Duration::ZERO
        },
        link: None,
    };
    let offered = xdpath_dataplane::virtio_net::offered_features(cfg.mac.is_some());
    let wire = MemWire::new(u32::from(queue_pairs));
    let ports: Vec<MemPort> = (0..u32::from(queue_pairs))
        .map(|q| MemPort::open(wire.queue(q).expect("a wire queue"), 64, 64, 2048).expect("port"))
        .collect();
    let path = socket_path();
    let server = Server::new(&path, cfg, ports).expect("the server starts");
    let handle = server.handle();
    let mut run = Bounded::spawn("fuzz-server", move || server.run());

    let mut front = connect(&path, mute, &handle);
    let mut flood_left = FLOOD_BUDGET;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = Op::from_byte(r.u8());
        if op == Op::Settle {
            let mut last = handle.all_counters();
            let mut quiet = std::time::Instant::now();
            process::wait_until(SETTLE_LIMIT, || {
                let now = handle.all_counters();
                if now != last {
                    last = now;
                    quiet = std::time::Instant::now();
                }
                quiet.elapsed() >= Duration::from_millis(10)
            });
            continue;
        }
        let Some(f) = front.as_mut() else {
            if op == Op::Reconnect {
                front = connect(&path, mute, &handle);
            }
            continue;
        };
        match op {
            Op::Setup => f.setup(queue_pairs, offered, r.u64()),
            Op::GetFeatures => f.request(req::GET_FEATURES, &[]),
            Op::SetFeatures => f.request(req::SET_FEATURES, &r.u64().to_ne_bytes()),
            Op::SetOwner => f.request(req::SET_OWNER, &[]),
            Op::ResetOwner => f.request(req::RESET_OWNER, &[]),
            Op::MemTable => {
                let n = r.u8() % 10;
                let regions: Vec<(u64, u64, u64, u64, u64)> = (0..n)
                    .map(|_| {
                        let gpa = u64::from(r.u16()) << 12;
                        let size = match r.u8() {
                            c @ 0..=127 => (u64::from(c) + 1) << 12,
                            c @ 128..=253 => u64::from(c) << 20,
                            254 => 1 << 40,
                            _ => !0xfff,
                        };
                        let uaddr = SETUP_UADDR + (u64::from(r.u16()) << 12);
                        let offset = u64::from(r.u8()) << 12;
                        let flen = match r.u8() % 4 {
                            0 => size.saturating_add(offset),
                            1 => offset + size / 2,
                            2 => offset,
                            _ => 4096,
                        }
                        .min(MAX_MEMFD);
                        (gpa, size, uaddr, offset, flen)
                    })
                    .collect();
                let short = r.bool();
                f.mem_table(&regions, short);
            }
            Op::VringNum => {
                let (i, n) = (u32::from(r.u8()), r.u32());
                f.vring_state(req::SET_VRING_NUM, i, n);
            }
            Op::VringAddr => {
                let i = u32::from(r.u8());
                let flags = r.u32();
                let mut p = i.to_ne_bytes().to_vec();
                p.extend_from_slice(&flags.to_ne_bytes());
                for _ in 0..3 {
                    p.extend_from_slice(&(SETUP_UADDR + u64::from(r.u32())).to_ne_bytes());
                }
                p.extend_from_slice(&r.u64().to_ne_bytes());
                f.request(req::SET_VRING_ADDR, &p);
            }
            Op::VringBase => {
                let (i, n) = (u32::from(r.u8()), r.u32());
                f.vring_state(req::SET_VRING_BASE, i, n);
            }
            Op::GetVringBase => {
                let i = u32::from(r.u8());
                f.vring_state(req::GET_VRING_BASE, i, 0);
            }
            Op::VringKick => f.vring_fd(req::SET_VRING_KICK, r.u64()),
            Op::VringCall => f.vring_fd(req::SET_VRING_CALL, r.u64()),
            Op::VringErr => f.vring_fd(req::SET_VRING_ERR, r.u64()),
            Op::GetProtocolFeatures => f.request(req::GET_PROTOCOL_FEATURES, &[]),
            Op::SetProtocolFeatures => {
                f.request(req::SET_PROTOCOL_FEATURES, &r.u64().to_ne_bytes());
            }
            Op::GetQueueNum => f.request(req::GET_QUEUE_NUM, &[]),
            Op::VringEnable => {
                let (i, n) = (u32::from(r.u8()), r.u32());
                f.vring_state(req::SET_VRING_ENABLE, i, n);
            }
            Op::GetConfig | Op::SetConfig => {
                let (offset, size, flags) = (r.u32(), r.u32(), r.u32());
                let mut p = offset.to_ne_bytes().to_vec();
                p.extend_from_slice(&size.to_ne_bytes());
                p.extend_from_slice(&flags.to_ne_bytes());
                p.extend((0..size % 256).map(|i| i as u8));
                let request = if op == Op::GetConfig {
                    req::GET_CONFIG
                } else {
                    req::SET_CONFIG
                };
                f.request(request, &p);
            }
            Op::Raw => {
                let (request, flags, size) = (r.u32(), r.u32(), r.u32());
                let n = usize::from(r.u8());
                let body = r.bytes(n).to_vec();
                let nfds = usize::from(r.u8() % 4);
                let efd = EventFd::new(libc::EFD_CLOEXEC).expect("eventfd");
                let mut b = wire::header(request, flags, size).to_vec();
                b.extend_from_slice(&body);
                if !f.dead && wire::send(&f.sock, &b, &vec![efd.as_raw_fd(); nfds]).is_err() {
                    f.dead = true;
                }
            }
            Op::PostRx => {
                let v = 2 * usize::from(r.u8() % 2);
                let n = 1 + r.u8() % 64;
                let len = match r.u16() {
                    0 => 2048,
                    l => u32::from(l),
                };
                for _ in 0..n {
                    let at = f.buffer(u64::from(len));
                    f.add_chain(v, &[(at, len, true)]);
                }
                f.kick(v);
            }
            Op::SendTx => {
                let v = 2 * usize::from(r.u8() % 2) + 1;
                let len = u64::from(r.u16() % 2048) + 14;
                let split = r.bool();
                let at = f.buffer(12 + len);
                let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
                f.poke(at, &[0u8; 12]);
                f.poke(at + 12, &frame);
                if split {
                    f.add_chain(v, &[(at, 12, false), (at + 12, len as u32, false)]);
                } else {
                    f.add_chain(v, &[(at, 12 + len as u32, false)]);
                }
                f.kick(v);
            }
            Op::Kick => f.kick(usize::from(r.u8() % 4)),
            Op::Poke => {
                let gpa = r.u64() % (2 * SETUP_MEM);
                let n = usize::from(r.u8());
                let bytes = r.bytes(n).to_vec();
                f.poke(gpa, &bytes);
            }
            Op::Inject => {
                let q = u32::from(r.u8() % 2) % u32::from(queue_pairs);
                let n = 1 + r.u8() % 64;
                let len = usize::from(r.u16() % 2048).max(14);
                if let Some(q) = wire.queue(q) {
                    for k in 0..n {
                        let frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ k).collect();
                        q.inject(&frame);
                    }
                }
            }
            Op::Sync => f.sync(),
            Op::Flood => {
                let n = r.u16().min(flood_left);
                flood_left -= n;
                let one = wire::header(req::GET_FEATURES, VERSION_1 | FLAG_NEED_REPLY, 0);
                let mut batch = Vec::with_capacity(one.len() * 64);
                for k in 0..n {
                    batch.extend_from_slice(&one);
                    if batch.len() == one.len() * 64 || k + 1 == n {
                        if f.dead || wire::send(&f.sock, &batch, &[]).is_err() {
                            f.dead = true;
                            break;
                        }
                        batch.clear();
                    }
                }
            }
            Op::Settle => {}
            Op::Reconnect => {
                if let Some(old) = front.take() {
                    old.hang_up();
                }
                front = connect(&path, mute, &handle);
            }
        }
    }
    if let Some(f) = front.as_mut() {
        f.sync();
    }

    // The server is still serving: nothing a frontend sends may end it.
    if let Some(res) = run.join_within(Duration::ZERO) {
        panic!("the server ended while a frontend was connected: {res:?}");
    }
    let counters = handle.all_counters();
    handle.stop();
    let res: Option<Result<(), ServerError>> = run.join_within(STOP_LIMIT);
    assert!(
        res.is_some(),
        "Server::run did not return within {STOP_LIMIT:?} of stop (frontend {})",
        if mute { "not reading" } else { "reading" }
    );
    if let Some(f) = front.take() {
        f.hang_up();
    }
    // The handle keeps the queue pairs (ports, timers, eventfds) alive.
    drop(handle);
    drop(wire);
    let _ = std::fs::remove_file(&path);
    if let Some((fds, threads)) = baseline {
        let now = process::settle_fds(fds, Duration::from_millis(500));
        assert_eq!(now, fds, "fds after stop: {:?}", process::fd_list());
        process::wait_until(Duration::from_millis(500), || process::threads() == threads);
        assert_eq!(process::threads(), threads, "threads after stop");
        process::wait_until(Duration::from_millis(500), || guest_mappings() == 0);
        assert_eq!(guest_mappings(), 0, "guest memory still mapped after stop");
    }
    counters
}

/// Mappings of the guest memfds (the harness's and the backend's).
fn guest_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |s| {
        s.lines()
            .filter(|l| l.contains("xdpath-fuzz-guest"))
            .count()
    })
}
