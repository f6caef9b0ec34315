//! An in-repo vhost-user **frontend** for tests: it plays QEMU's part so a
//! test can exchange frames with a vhost-user-net backend without a VM.
//!
//! [`TestFrontend::connect`] dials the backend's Unix socket and performs the
//! handshake QEMU performs (features, protocol features, queue count, memory
//! table, vring setup, vring enable) through `vhost::vhost_user::Frontend`.
//! Guest memory is one memfd, mapped `MAP_SHARED` here and handed to the
//! backend in `SET_MEM_TABLE` as a single region at guest address 0. The
//! frontend then acts as the guest's virtio-net driver: it lays out split
//! virtqueues in that memory, posts RX buffers, queues TX frames (one
//! descriptor, a header/data chain, or an indirect table), publishes them
//! with the memory ordering the virtio spec asks for, kicks only when the
//! backend wants a kick (`avail_event` with EVENT_IDX, `VRING_USED_F_NO_NOTIFY`
//! without), and reads used rings, reassembling mergeable RX buffers.
//!
//! It needs no privileges (a memfd and a Unix socket), so the non-root
//! tests drive the dataplane's server with it over an in-memory wire.
//! [`FrontendOptions::early_vring_enable`] makes it send SET_VRING_ENABLE
//! before SET_FEATURES acks PROTOCOL_FEATURES, as QEMU 7.2 does (by hand on
//! the socket: `vhost::Frontend` refuses that order).
//!
//! What the backend writes into the used rings is treated as untrusted: bad
//! ids, lengths beyond a buffer, or a used index that runs ahead of what was
//! posted are skipped or clamped and counted ([`TestFrontend::bad_used`]),
//! never a panic.
//!
//! Memory layout (guest physical addresses): page 0 is left unused (a ring
//! at address 0 would look "unset" to virtio-queue); then each vring gets a
//! 4 KiB aligned block holding its descriptor table (16-byte aligned), avail
//! ring (2-byte aligned) and, on the next 4 KiB boundary, its used ring;
//! everything after the rings is a buffer area served by a first-fit
//! allocator shared by RX buffers, TX frames, indirect tables and
//! [`TestFrontend::alloc`].
//!
//! Slot numbers for hand-built chains: every vring keeps a stack of free
//! descriptor slots. [`TestFrontend::desc_slot`]`(vring, i)` tells which slot
//! the `i`-th descriptor of the next [`TestFrontend::push_raw_chain`] call on
//! that vring will occupy, so a caller can fill in `next` fields (or point
//! them somewhere invalid on purpose) before pushing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod fast;
mod hostile;
pub use fast::Burst;
pub use hostile::TxFlood;

/// Length of the virtio-net header with VERSION_1 or MRG_RXBUF.
const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFF: usize = 10;
/// Alignment (and granularity) of the buffer allocator.
const ALLOC_ALIGN: u64 = 64;
const PAGE: u64 = 4096;
/// How long one wait on a call eventfd lasts before the used ring is
/// re-read anyway (a backend may legitimately suppress the call).
const CALL_POLL: Duration = Duration::from_millis(10);
/// vhost-user request code of GET_CONFIG and the config space size limit.
const REQ_GET_CONFIG: u32 = 24;
/// vhost-user request code of SET_VRING_ENABLE.
const REQ_SET_VRING_ENABLE: u32 = 18;
const CONFIG_SPACE_MAX: u32 = 0x1000;
const VHOST_USER_HDR_LEN: usize = 12;
const VHOST_USER_CONFIG_HDR_LEN: usize = 12;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// What [`TestFrontend::connect`] sets up.
#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// Queue pairs to set up (`2 * queue_pairs` vrings).
    pub queue_pairs: u16,
    /// How many pairs get `SET_VRING_ENABLE(1)` (at most `queue_pairs`);
    /// the rest stay disabled.
    pub enabled_pairs: u16,
    /// Descriptors per vring (a power of two, at most 32768).
    pub queue_size: u16,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` if the backend offers it.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_NET_F_MRG_RXBUF` if the backend offers it.
    pub mrg_rxbuf: bool,
    /// Guest memory bytes: one memfd region at guest address 0.
    pub mem_size: usize,
    /// Send the SET_VRING_ENABLE requests the way QEMU 7.2 does: before
    /// SET_FEATURES acks VHOST_USER_F_PROTOCOL_FEATURES (enable for the
    /// vrings of the first `enabled_pairs` pairs, disable for the rest),
    /// and not again after the vring setup. A backend that drops or
    /// rejects them leaves every vring disabled, or the connection dead.
    pub early_vring_enable: bool,
    /// A hostile frontend: the size SET_MEM_TABLE claims for the guest
    /// memory region, when it differs from the memfd's `mem_size` (a
    /// region reaching past the end of its file).
    pub claimed_mem_size: Option<usize>,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            queue_pairs: 1,
            enabled_pairs: 1,
            queue_size: 256,
            event_idx: true,
            mrg_rxbuf: true,
            mem_size: 64 << 20,
            early_vring_enable: false,
            claimed_mem_size: None,
        }
    }
}

/// One descriptor of a hand-built chain, written to the descriptor table
/// verbatim (see [`TestFrontend::push_raw_chain`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor (only meaningful with `VRING_DESC_F_NEXT`).
    pub next: u16,
}

/// One frame received on an RX vring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The frame without the virtio-net header.
    pub data: Vec<u8>,
    /// `num_buffers` from the frame's virtio-net header.
    pub num_buffers: u16,
}

/// Why a chain is in flight; decides what its used entry means.
enum ChainKind {
    /// One device-writable RX buffer.
    Rx { addr: u64, len: u32 },
    /// A TX frame (any layout).
    Tx,
    /// A hand-built chain; only its slots are freed on completion.
    Raw,
}

/// A chain the backend owns until it shows up in the used ring.
struct Chain {
    slots: Vec<u16>,
    /// Buffer-area allocations to free on completion: (addr, len).
    bufs: Vec<(u64, u64)>,
    kind: ChainKind,
}

/// A mergeable RX frame whose buffers have not all been used yet.
struct PartialFrame {
    data: Vec<u8>,
    remaining: u16,
    num_buffers: u16,
}

/// Driver-side state of one split virtqueue.
struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    /// Set when an internal wait consumed a call, so `take_call` still sees it.
    call_seen: AtomicBool,
    /// Our avail idx (the next one to publish).
    next_avail: u16,
    /// avail idx at the last kick decision (the "old" of vring_need_event).
    kicked_at: u16,
    /// Next used idx to consume.
    last_used: u16,
    /// Free descriptor slots; `pop()` hands out the next one.
    free: Vec<u16>,
    /// In-flight chains by head slot.
    inflight: Vec<Option<Chain>>,
    /// Mergeable RX frame being reassembled.
    partial: Option<PartialFrame>,
    /// Chains completed (TX and raw) not yet reported by `tx_completed`.
    completed: usize,
    /// A used idx already reported as running ahead (counted once).
    bad_idx_seen: Option<u16>,
    /// Kicks sent (eventfd writes).
    kicks: u64,
    /// Fixed-buffer mode for benchmarks ([`fast`]), once started.
    fixed: Option<fast::Fixed>,
}

impl Vring {
    fn avail_used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    fn used_avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, slot: u16, d: RawDesc) {
        write_desc_at(mem, self.desc + 16 * u64::from(slot), d);
    }

    fn put_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let pos = u64::from(self.next_avail % self.size);
        store16(mem, self.avail + 4 + 2 * pos, head, Ordering::Relaxed);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes the avail entries written so far and kicks if the backend
    /// asked for it.
    fn publish(&mut self, mem: &GuestMemoryMmap, event_idx: bool) {
        // Entries (and the descriptors they name) before the index.
        fence(Ordering::Release);
        store16(mem, self.avail + 2, self.next_avail, Ordering::Release);
        // The index store before reading the backend's suppression state
        // (pairs with the fence in the backend's enable_notification).
        fence(Ordering::SeqCst);
        let old = self.kicked_at;
        let new = self.next_avail;
        self.kicked_at = new;
        if old == new {
            return;
        }
        let kick = if event_idx {
            let event = load16(mem, self.used_avail_event_addr(), Ordering::Relaxed);
            vring_need_event(event, new, old)
        } else {
            load16(mem, self.used, Ordering::Relaxed) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if kick {
            self.kicks += 1;
            let _ = self.kick.write(1);
        }
    }

    /// Asks for a call once the backend moves past what we have consumed.
    fn arm_used_event(&self, mem: &GuestMemoryMmap, event_idx: bool) {
        if event_idx {
            store16(
                mem,
                self.avail_used_event_addr(),
                self.last_used,
                Ordering::Relaxed,
            );
            fence(Ordering::SeqCst);
        }
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        load16(mem, self.used + 2, Ordering::Acquire)
    }

    fn has_used(&self, mem: &GuestMemoryMmap) -> bool {
        self.used_idx(mem) != self.last_used
    }

    /// Next used entry (id, len), or None. A used idx further ahead than the
    /// ring size is counted (once) and nothing is consumed.
    fn pop_used(&mut self, mem: &GuestMemoryMmap, bad: &mut u64) -> Option<(u32, u32)> {
        let idx = self.used_idx(mem);
        if idx == self.last_used {
            return None;
        }
        if idx.wrapping_sub(self.last_used) > self.size {
            if self.bad_idx_seen != Some(idx) {
                self.bad_idx_seen = Some(idx);
                *bad += 1;
            }
            return None;
        }
        let pos = u64::from(self.last_used % self.size);
        let mut elem = [0u8; 8];
        let addr = GuestAddress(self.used + 4 + 8 * pos);
        if mem.read_slice(&mut elem, addr).is_err() {
            *bad += 1;
            return None;
        }
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        Some((id, len))
    }

    /// Takes the in-flight chain `id` and frees its slots; None (counted)
    /// when `id` is not a head we handed out.
    fn take_chain(&mut self, id: u32, bad: &mut u64) -> Option<Chain> {
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.inflight.get_mut(i))
            .and_then(Option::take);
        match chain {
            Some(c) => {
                for &s in c.slots.iter().rev() {
                    self.free.push(s);
                }
                Some(c)
            }
            None => {
                *bad += 1;
                None
            }
        }
    }
}

/// virtio's `vring_need_event`: kick/call when `event` lies in `[old, new)`.
fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn store16(mem: &GuestMemoryMmap, addr: u64, val: u16, order: Ordering) {
    // Our own ring addresses, always inside guest memory.
    let _ = mem.store(val.to_le(), GuestAddress(addr), order);
}

fn load16(mem: &GuestMemoryMmap, addr: u64, order: Ordering) -> u16 {
    mem.load::<u16>(GuestAddress(addr), order)
        .map(u16::from_le)
        .unwrap_or(0)
}

fn write_desc_at(mem: &GuestMemoryMmap, addr: u64, d: RawDesc) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    let _ = mem.write_slice(&b, GuestAddress(addr));
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// First-fit allocator over the buffer area, coalescing on free.
struct Allocator {
    /// Free extents: start -> len.
    free: BTreeMap<u64, u64>,
}

impl Allocator {
    fn new(start: u64, end: u64) -> Self {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        Self { free }
    }

    fn rounded(len: u64) -> u64 {
        align_up(len.max(1), ALLOC_ALIGN)
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = Self::rounded(len);
        let (&start, &have) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        Some(start)
    }

    fn free(&mut self, addr: u64, len: u64) {
        let mut start = addr;
        let mut len = Self::rounded(len);
        if let Some((&p, &pl)) = self.free.range(..addr).next_back() {
            if p + pl == addr {
                self.free.remove(&p);
                start = p;
                len += pl;
            }
        }
        let end = start + len;
        if let Some(nl) = self.free.remove(&end) {
            len += nl;
        }
        self.free.insert(start, len);
    }
}

/// Guest memory: one memfd region at guest address 0.
struct GuestMem {
    mem: GuestMemoryMmap,
    region: VhostUserMemoryRegionInfo,
    size: u64,
    host_base: u64,
}

impl GuestMem {
    fn new(size: usize) -> Result<Self> {
        // SAFETY: the name is a valid NUL-terminated string; memfd_create
        // has no other preconditions and returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"xdpath-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)
            .context("sizing the guest memfd")?;
        // MmapRegion::from_file maps MAP_SHARED, so the backend's mapping of
        // the same memfd sees our writes and we see its.
        let mapping = MmapRegion::<()>::from_file(FileOffset::new(file, 0), size)
            .map_err(|e| anyhow!("mmap of the guest memfd: {e}"))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(0))
            .ok_or_else(|| anyhow!("guest region overflows"))?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(&region)
            .map_err(|e| anyhow!("guest region info: {e}"))?;
        let host_base = info.userspace_addr;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| anyhow!("guest memory: {e}"))?;
        Ok(Self {
            mem,
            region: info,
            size: size as u64,
            host_base,
        })
    }
}

/// A vhost-user frontend acting as QEMU plus a virtio-net guest driver.
pub struct TestFrontend {
    frontend: Frontend,
    /// Second handle on the connection: raw GET_CONFIG with a timeout, and
    /// shutdown on drop.
    sock: UnixStream,
    guest: GuestMem,
    vrings: Vec<Vring>,
    alloc: Allocator,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    event_idx: bool,
    mrg_rxbuf: bool,
    hdr_len: usize,
    bad: u64,
}

impl std::fmt::Debug for TestFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFrontend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("vrings", &self.vrings.len())
            .field("bad", &self.bad)
            .finish_non_exhaustive()
    }
}

/// How a frontend reaches its backend.
enum Dial<'a> {
    /// It connects to the backend's socket (QEMU's default).
    Connect(&'a Path),
    /// The backend connects to it (QEMU `server=on`).
    Accept(&'a std::os::unix::net::UnixListener),
}

/// The next connection on `l`, within `total`.
fn accept_within(l: &std::os::unix::net::UnixListener, total: Duration) -> Result<UnixStream> {
    l.set_nonblocking(true)?;
    let end = Instant::now() + total;
    let stream = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("waiting for the backend to connect"),
        }
    };
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn connect_retry(path: &Path, total: Duration) -> Result<UnixStream> {
    let end = Instant::now() + total;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
    }
}

/// Sends SET_VRING_ENABLE(`vring`, `enable`) on `sock` by hand, bypassing
/// `vhost::Frontend`, which refuses it before PROTOCOL_FEATURES is acked;
/// with `need_reply` waits (up to 5 s) for the reply and checks it says
/// success.
fn raw_vring_enable(sock: &UnixStream, vring: u32, enable: bool, need_reply: bool) -> Result<()> {
    let mut flags = 1u32; // version 1
    if need_reply {
        flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
    }
    let mut msg = Vec::with_capacity(VHOST_USER_HDR_LEN + 8);
    msg.extend_from_slice(&REQ_SET_VRING_ENABLE.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&8u32.to_le_bytes());
    msg.extend_from_slice(&vring.to_le_bytes());
    msg.extend_from_slice(&u32::from(enable).to_le_bytes());
    (&*sock)
        .write_all(&msg)
        .context("sending SET_VRING_ENABLE")?;
    if !need_reply {
        return Ok(());
    }
    let mut reply = [0u8; VHOST_USER_HDR_LEN + 8];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < reply.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !poll_in(sock.as_raw_fd(), left) {
            bail!("no reply to SET_VRING_ENABLE within 5 s");
        }
        match (&*sock).read(&mut reply[got..]) {
            Ok(0) => bail!("backend closed the connection"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the SET_VRING_ENABLE reply"),
        }
    }
    let word = |i: usize| u32::from_le_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
    ensure!(
        word(0) == REQ_SET_VRING_ENABLE
            && word(4) & VhostUserHeaderFlag::REPLY.bits() != 0
            && word(8) == 8,
        "unexpected reply to SET_VRING_ENABLE: request {}, flags {:#x}, size {}",
        word(0),
        word(4),
        word(8)
    );
    let status = u64::from_le_bytes([
        reply[12], reply[13], reply[14], reply[15], reply[16], reply[17], reply[18], reply[19],
    ]);
    ensure!(status == 0, "backend refused SET_VRING_ENABLE ({status})");
    Ok(())
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_in(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the
    // count is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

impl TestFrontend {
    /// Connects to the backend's listening socket at `path` and performs the
    /// QEMU-like handshake: GET_FEATURES, SET_OWNER, GET_PROTOCOL_FEATURES,
    /// SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, CONFIG where offered),
    /// GET_QUEUE_NUM if MQ, SET_FEATURES (VERSION_1, PROTOCOL_FEATURES, MQ,
    /// MRG_RXBUF/EVENT_IDX per options, INDIRECT_DESC, each if offered),
    /// SET_MEM_TABLE with the memfd region, then per vring SET_VRING_NUM,
    /// SET_VRING_ADDR, SET_VRING_BASE(0), SET_VRING_CALL, SET_VRING_KICK, and
    /// SET_VRING_ENABLE(1) for the vrings of the first `enabled_pairs` pairs
    /// (with `early_vring_enable`, SET_VRING_ENABLE for every vring right
    /// before SET_FEATURES instead, as QEMU 7.2 does).
    /// With REPLY_ACK every request that has no reply of its own asks for
    /// one, so a backend's refusal surfaces here as an error.
    /// Retries the connect for up to 5 s (the backend may still be starting).
    pub fn connect(path: &Path, opts: FrontendOptions) -> Result<Self> {
        Self::start(Dial::Connect(path), opts)
    }

    /// The same frontend on a socket it listens on, as QEMU with
    /// `server=on` does: waits (up to 5 s) for the backend to connect to
    /// `listener`, then sets the device up as [`TestFrontend::connect`].
    pub fn accept(
        listener: &std::os::unix::net::UnixListener,
        opts: FrontendOptions,
    ) -> Result<Self> {
        Self::start(Dial::Accept(listener), opts)
    }

    fn start(dial: Dial<'_>, opts: FrontendOptions) -> Result<Self> {
        ensure!(opts.queue_pairs >= 1, "queue_pairs must be at least 1");
        ensure!(
            opts.enabled_pairs <= opts.queue_pairs,
            "enabled_pairs {} > queue_pairs {}",
            opts.enabled_pairs,
            opts.queue_pairs
        );
        ensure!(
            opts.queue_size.is_power_of_two() && opts.queue_size <= 32768,
            "queue_size {} is not a power of two <= 32768",
            opts.queue_size
        );
        let nvrings = 2 * usize::from(opts.queue_pairs);
        ensure!(nvrings <= 256, "too many queue pairs");

        // Ring layout: (desc, avail, used) per vring, from page 1 on.
        let qs = u64::from(opts.queue_size);
        let mut rings_end = PAGE;
        let mut layout = Vec::with_capacity(nvrings);
        for _ in 0..nvrings {
            let desc = rings_end;
            let avail = desc + 16 * qs;
            let used = align_up(avail + 6 + 2 * qs, PAGE);
            rings_end = align_up(used + 6 + 8 * qs, PAGE);
            layout.push((desc, avail, used));
        }
        ensure!(
            rings_end + (1 << 20) <= opts.mem_size as u64,
            "mem_size {} too small: rings need {rings_end} bytes plus a 1 MiB buffer area",
            opts.mem_size
        );

        let stream = match dial {
            Dial::Connect(path) => connect_retry(path, Duration::from_secs(5))?,
            Dial::Accept(l) => accept_within(l, Duration::from_secs(5))?,
        };
        let sock = stream
            .try_clone()
            .context("cloning the vhost-user socket")?;
        let mut fe = Frontend::from_stream(stream, nvrings as u64);

        let offered = fe.get_features().context("GET_FEATURES")?;
        ensure!(
            offered & bit(VIRTIO_F_VERSION_1) != 0,
            "backend does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"
        );
        fe.set_owner().context("SET_OWNER")?;

        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let has_proto = offered & proto_bit != 0;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if has_proto {
            let p = fe
                .get_protocol_features()
                .context("GET_PROTOCOL_FEATURES")?;
            // What this frontend can honour. Not CONFIGURE_MEM_SLOTS (we
            // always send SET_MEM_TABLE), nor anything needing a backend
            // request channel, inflight tracking, logging or status.
            protocol = p
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG);
            fe.set_protocol_features(protocol)
                .context("SET_PROTOCOL_FEATURES")?;
        }
        if opts.queue_pairs > 1 {
            ensure!(
                offered & bit(VIRTIO_NET_F_MQ) != 0,
                "{} queue pairs wanted but the backend does not offer VIRTIO_NET_F_MQ",
                opts.queue_pairs
            );
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = fe.get_queue_num().context("GET_QUEUE_NUM")?;
            ensure!(
                n >= nvrings as u64,
                "backend supports {n} queues, {nvrings} wanted"
            );
        } else {
            ensure!(
                opts.queue_pairs == 1,
                "several queue pairs need VHOST_USER_PROTOCOL_F_MQ"
            );
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Like QEMU: requests without a reply of their own get acked.
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if opts.early_vring_enable {
            ensure!(
                has_proto,
                "early SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES"
            );
            let ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
            for i in 0..nvrings {
                let enable = i < 2 * usize::from(opts.enabled_pairs);
                raw_vring_enable(&sock, i as u32, enable, ack)
                    .with_context(|| format!("early SET_VRING_ENABLE {i} {}", u8::from(enable)))?;
            }
        }

        let mut features = bit(VIRTIO_F_VERSION_1);
        if has_proto {
            features |= proto_bit;
        }
        for (want, b) in [
            (true, VIRTIO_NET_F_MQ),
            (opts.mrg_rxbuf, VIRTIO_NET_F_MRG_RXBUF),
            (opts.event_idx, VIRTIO_RING_F_EVENT_IDX),
            (true, VIRTIO_RING_F_INDIRECT_DESC),
        ] {
            if want && offered & bit(b) != 0 {
                features |= bit(b);
            }
        }
        fe.set_features(features).context("SET_FEATURES")?;
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mrg_rxbuf = features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;

        let guest = GuestMem::new(opts.mem_size)?;
        let mut region = guest.region;
        if let Some(claimed) = opts.claimed_mem_size {
            region.memory_size = claimed as u64;
        }
        fe.set_mem_table(&[region]).context("SET_MEM_TABLE")?;

        let mut vrings = Vec::with_capacity(nvrings);
        for &(desc, avail, used) in &layout {
            vrings.push(Vring {
                size: opts.queue_size,
                desc,
                avail,
                used,
                kick: EventFd::new(EFD_NONBLOCK).context("kick eventfd")?,
                call: EventFd::new(EFD_NONBLOCK).context("call eventfd")?,
                call_seen: AtomicBool::new(false),
                next_avail: 0,
                kicked_at: 0,
                last_used: 0,
                free: (0..opts.queue_size).rev().collect(),
                inflight: (0..opts.queue_size).map(|_| None).collect(),
                partial: None,
                completed: 0,
                bad_idx_seen: None,
                kicks: 0,
                fixed: None,
            });
        }
        // Fresh memfd pages are zero: flags, indices, used_event and
        // avail_event all start at 0.
        let alloc = Allocator::new(rings_end, guest.size);

        for (i, v) in vrings.iter().enumerate() {
            fe.set_vring_num(i, v.size)
                .with_context(|| format!("SET_VRING_NUM {i}"))?;
            let cfg = VringConfigData {
                queue_max_size: v.size,
                queue_size: v.size,
                flags: 0,
                // vhost-user wants the frontend's virtual addresses here.
                desc_table_addr: guest.host_base + v.desc,
                used_ring_addr: guest.host_base + v.used,
                avail_ring_addr: guest.host_base + v.avail,
                log_addr: None,
            };
            fe.set_vring_addr(i, &cfg)
                .with_context(|| format!("SET_VRING_ADDR {i}"))?;
            fe.set_vring_base(i, 0)
                .with_context(|| format!("SET_VRING_BASE {i}"))?;
            fe.set_vring_call(i, &v.call)
                .with_context(|| format!("SET_VRING_CALL {i}"))?;
            fe.set_vring_kick(i, &v.kick)
                .with_context(|| format!("SET_VRING_KICK {i}"))?;
        }
        if has_proto && !opts.early_vring_enable {
            for i in 0..2 * usize::from(opts.enabled_pairs) {
                fe.set_vring_enable(i, true)
                    .with_context(|| format!("SET_VRING_ENABLE {i} 1"))?;
            }
        }

        Ok(Self {
            frontend: fe,
            sock,
            guest,
            vrings,
            alloc,
            features,
            protocol,
            event_idx,
            mrg_rxbuf,
            hdr_len: NET_HDR_LEN,
            bad: 0,
        })
    }

    /// The virtio feature bits acked with SET_FEATURES.
    pub fn negotiated_features(&self) -> u64 {
        self.features
    }

    /// The vhost-user protocol features acked with SET_PROTOCOL_FEATURES.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Virtio-net header length in use: 12 (VERSION_1 / MRG_RXBUF).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Descriptors per vring.
    pub fn queue_size(&self) -> u16 {
        self.vrings[0].size
    }

    /// Used-ring entries the backend got wrong so far: ids that are not an
    /// in-flight head, lengths beyond the posted buffer (clamped), RX
    /// buffers too short for a header, `num_buffers` of 0, and used indices
    /// running more than a ring ahead. Each was skipped or clamped.
    pub fn bad_used(&self) -> u64 {
        self.bad
    }

    /// Posts `n` device-writable buffers of `buf_len` bytes each on RX vring
    /// `2*qp` (one descriptor per buffer) and kicks (if the backend wants a
    /// kick). Returns how many were posted (limited by free ring slots and
    /// buffer memory).
    pub fn post_rx_buffers(&mut self, qp: u16, n: usize, buf_len: u32) -> usize {
        let vi = 2 * usize::from(qp);
        let Some(v) = self.vrings.get_mut(vi) else {
            return 0;
        };
        let mem = &self.guest.mem;
        let mut posted = 0;
        while posted < n {
            if v.free.is_empty() {
                break;
            }
            let Some(addr) = self.alloc.alloc(u64::from(buf_len)) else {
                break;
            };
            let Some(slot) = v.free.pop() else {
                break;
            };
            v.write_desc(
                mem,
                slot,
                RawDesc {
                    addr,
                    len: buf_len,
                    flags: VRING_DESC_F_WRITE as u16,
                    next: 0,
                },
            );
            v.inflight[usize::from(slot)] = Some(Chain {
                slots: vec![slot],
                bufs: vec![(addr, u64::from(buf_len))],
                kind: ChainKind::Rx { addr, len: buf_len },
            });
            v.put_avail(mem, slot);
            posted += 1;
        }
        if posted > 0 {
            v.publish(mem, self.event_idx);
        }
        posted
    }

    /// Reads used entries of RX vring `2*qp` until `want` frames were
    /// reassembled or `timeout` passed. Mergeable buffers are concatenated
    /// per the header's `num_buffers`. Returns each frame without the
    /// virtio-net header plus its `num_buffers`. Used buffers go back to the
    /// allocator. A frame still missing buffers at the timeout is kept and
    /// completed by a later call.
    pub fn recv(&mut self, qp: u16, want: usize, timeout: Duration) -> Vec<RxFrame> {
        let vi = 2 * usize::from(qp);
        let mut out = Vec::new();
        if vi >= self.vrings.len() || want == 0 {
            return out;
        }
        let deadline = Instant::now() + timeout;
        loop {
            while out.len() < want {
                let v = &mut self.vrings[vi];
                let Some((id, len)) = v.pop_used(&self.guest.mem, &mut self.bad) else {
                    break;
                };
                if let Some(f) = self.rx_entry(vi, id, len) {
                    out.push(f);
                }
            }
            let v = &self.vrings[vi];
            v.arm_used_event(&self.guest.mem, self.event_idx);
            if out.len() >= want {
                break;
            }
            if v.has_used(&self.guest.mem) {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.wait_call(vi, (deadline - now).min(CALL_POLL));
        }
        out
    }

    /// Handles one used RX entry; returns a frame when one is complete.
    fn rx_entry(&mut self, vi: usize, id: u32, len: u32) -> Option<RxFrame> {
        let v = &mut self.vrings[vi];
        let chain = v.take_chain(id, &mut self.bad)?;
        let ChainKind::Rx { addr, len: blen } = chain.kind else {
            // A raw chain pushed on an RX vring came back.
            for &(a, l) in &chain.bufs {
                self.alloc.free(a, l);
            }
            v.completed += 1;
            return None;
        };
        let n = if len > blen {
            self.bad += 1;
            blen
        } else {
            len
        };
        let mut data = vec![0u8; n as usize];
        let _ = self.guest.mem.read_slice(&mut data, GuestAddress(addr));
        for &(a, l) in &chain.bufs {
            self.alloc.free(a, l);
        }
        let hdr = self.hdr_len;
        match v.partial.take() {
            Some(mut p) => {
                p.data.extend_from_slice(&data);
                p.remaining -= 1;
                if p.remaining == 0 {
                    Some(RxFrame {
                        data: p.data,
                        num_buffers: p.num_buffers,
                    })
                } else {
                    v.partial = Some(p);
                    None
                }
            }
            None => {
                if data.len() < hdr {
                    self.bad += 1;
                    return None;
                }
                let nb = u16::from_le_bytes([data[NUM_BUFFERS_OFF], data[NUM_BUFFERS_OFF + 1]]);
                let parts = if !self.mrg_rxbuf {
                    1
                } else if nb == 0 {
                    self.bad += 1;
                    1
                } else {
                    nb
                };
                data.drain(..hdr);
                if parts <= 1 {
                    Some(RxFrame {
                        data,
                        num_buffers: nb,
                    })
                } else {
                    v.partial = Some(PartialFrame {
                        data,
                        remaining: parts - 1,
                        num_buffers: nb,
                    });
                    None
                }
            }
        }
    }

    /// Waits up to `timeout` for a call on vring `vi`; a consumed call is
    /// remembered for [`take_call`](Self::take_call).
    fn wait_call(&self, vi: usize, timeout: Duration) {
        let v = &self.vrings[vi];
        if poll_in(v.call.as_raw_fd(), timeout) && v.call.read().is_ok() {
            v.call_seen.store(true, Ordering::Relaxed);
        }
    }

    /// Frees the buffers of completed chains on vring `vi` and adds them to
    /// its completion count.
    fn reap(&mut self, vi: usize) {
        let Some(v) = self.vrings.get_mut(vi) else {
            return;
        };
        while let Some((id, _len)) = v.pop_used(&self.guest.mem, &mut self.bad) {
            if let Some(c) = v.take_chain(id, &mut self.bad) {
                for &(a, l) in &c.bufs {
                    self.alloc.free(a, l);
                }
                v.completed += 1;
            }
        }
        v.arm_used_event(&self.guest.mem, self.event_idx);
    }

    /// Allocates `len` bytes per entry of `lens`, all or nothing.
    fn alloc_all(&mut self, lens: &[u64]) -> Option<Vec<u64>> {
        let mut got = Vec::with_capacity(lens.len());
        for &l in lens {
            match self.alloc.alloc(l) {
                Some(a) => got.push(a),
                None => {
                    for (&a, &l) in got.iter().zip(lens) {
                        self.alloc.free(a, l);
                    }
                    return None;
                }
            }
        }
        Some(got)
    }

    /// Queues one frame on TX vring `2*qp+1`: a zeroed virtio-net header
    /// then the frame, as ONE descriptor (header and data contiguous) if
    /// `split` is false, else as a 2-descriptor chain (header, data). Kicks
    /// if the backend wants a kick. Returns false if the ring (or buffer
    /// memory) has no room. Completed TX chains are reaped first; they are
    /// still reported by [`tx_completed`](Self::tx_completed).
    pub fn send(&mut self, qp: u16, frame: &[u8], split: bool) -> bool {
        let vi = 2 * usize::from(qp) + 1;
        if vi >= self.vrings.len() {
            return false;
        }
        self.reap(vi);
        let hdr = self.hdr_len;
        let need = if split { 2 } else { 1 };
        if self.vrings[vi].free.len() < need {
            return false;
        }
        let hdr_bytes = vec![0u8; hdr];
        let (slots, bufs) = if split {
            let lens = [hdr as u64, frame.len() as u64];
            let Some(a) = self.alloc_all(&lens) else {
                return false;
            };
            let mem = &self.guest.mem;
            let _ = mem.write_slice(&hdr_bytes, GuestAddress(a[0]));
            let _ = mem.write_slice(frame, GuestAddress(a[1]));
            let v = &mut self.vrings[vi];
            let (Some(s0), Some(s1)) = (v.free.pop(), v.free.pop()) else {
                return false;
            };
            v.write_desc(
                mem,
                s0,
                RawDesc {
                    addr: a[0],
                    len: hdr as u32,
                    flags: VRING_DESC_F_NEXT as u16,
                    next: s1,
                },
            );
            v.write_desc(
                mem,
                s1,
                RawDesc {
                    addr: a[1],
                    len: frame.len() as u32,
                    flags: 0,
                    next: 0,
                },
            );
            (vec![s0, s1], vec![(a[0], lens[0]), (a[1], lens[1])])
        } else {
            let total = (hdr + frame.len()) as u64;
            let Some(a) = self.alloc.alloc(total) else {
                return false;
            };
            let mem = &self.guest.mem;
            let _ = mem.write_slice(&hdr_bytes, GuestAddress(a));
            let _ = mem.write_slice(frame, GuestAddress(a + hdr as u64));
            let v = &mut self.vrings[vi];
            let Some(s0) = v.free.pop() else {
                return false;
            };
            v.write_desc(
                mem,
                s0,
                RawDesc {
                    addr: a,
                    len: total as u32,
                    flags: 0,
                    next: 0,
                },
            );
            (vec![s0], vec![(a, total)])
        };
        self.launch(vi, slots, bufs, ChainKind::Tx);
        true
    }

    /// Same as [`send`](Self::send) but the chain (header descriptor, data
    /// descriptor) is placed in an INDIRECT descriptor table that takes one
    /// ring slot. Sent whether or not VIRTIO_RING_F_INDIRECT_DESC was
    /// negotiated (check [`negotiated_features`](Self::negotiated_features)).
    pub fn send_indirect(&mut self, qp: u16, frame: &[u8]) -> bool {
        let vi = 2 * usize::from(qp) + 1;
        if vi >= self.vrings.len() {
            return false;
        }
        self.reap(vi);
        if self.vrings[vi].free.is_empty() {
            return false;
        }
        let hdr = self.hdr_len;
        let lens = [32u64, hdr as u64, frame.len() as u64];
        let Some(a) = self.alloc_all(&lens) else {
            return false;
        };
        let mem = &self.guest.mem;
        let _ = mem.write_slice(&vec![0u8; hdr], GuestAddress(a[1]));
        let _ = mem.write_slice(frame, GuestAddress(a[2]));
        write_desc_at(
            mem,
            a[0],
            RawDesc {
                addr: a[1],
                len: hdr as u32,
                flags: VRING_DESC_F_NEXT as u16,
                next: 1,
            },
        );
        write_desc_at(
            mem,
            a[0] + 16,
            RawDesc {
                addr: a[2],
                len: frame.len() as u32,
                flags: 0,
                next: 0,
            },
        );
        let v = &mut self.vrings[vi];
        let Some(s0) = v.free.pop() else {
            return false;
        };
        v.write_desc(
            mem,
            s0,
            RawDesc {
                addr: a[0],
                len: 32,
                flags: VRING_DESC_F_INDIRECT as u16,
                next: 0,
            },
        );
        let bufs = lens.iter().zip(&a).map(|(&l, &x)| (x, l)).collect();
        self.launch(vi, vec![s0], bufs, ChainKind::Tx);
        true
    }

    /// Records a chain whose descriptors are written, makes its head
    /// available and publishes.
    fn launch(&mut self, vi: usize, slots: Vec<u16>, bufs: Vec<(u64, u64)>, kind: ChainKind) {
        let head = slots[0];
        let v = &mut self.vrings[vi];
        v.inflight[usize::from(head)] = Some(Chain { slots, bufs, kind });
        v.put_avail(&self.guest.mem, head);
        v.publish(&self.guest.mem, self.event_idx);
    }

    /// Consumes used entries of TX vring `2*qp+1` and returns how many
    /// chains the backend completed since the last call (including chains
    /// reaped inside `send`).
    pub fn tx_completed(&mut self, qp: u16) -> usize {
        let vi = 2 * usize::from(qp) + 1;
        if vi >= self.vrings.len() {
            return 0;
        }
        self.reap(vi);
        std::mem::take(&mut self.vrings[vi].completed)
    }

    /// The descriptor slot that the `i`-th descriptor of the next
    /// [`push_raw_chain`](Self::push_raw_chain) on `vring` will occupy
    /// (`i = 0` is the head), or `u16::MAX` if fewer than `i + 1` slots are
    /// free. Valid until the next call that posts or reaps on that vring
    /// (on a TX vring `push_raw_chain` reaps first, so call
    /// [`tx_completed`](Self::tx_completed) before asking).
    pub fn desc_slot(&self, vring: u16, i: usize) -> u16 {
        let Some(v) = self.vrings.get(usize::from(vring)) else {
            return u16::MAX;
        };
        if i >= v.free.len() {
            return u16::MAX;
        }
        v.free[v.free.len() - 1 - i]
    }

    /// Publishes a hand-built chain on vring `vring` (absolute index): writes
    /// `descs` verbatim into the descriptor table at the slots
    /// [`desc_slot`](Self::desc_slot)`(vring, 0..descs.len())` (the caller's
    /// `next` fields are used as given, so loops and out-of-range nexts are
    /// possible), puts the first slot in the avail ring and kicks (if the
    /// backend wants a kick). If the backend completes it, its slots are
    /// freed (counted by `tx_completed` for the pair that owns the vring).
    /// Buffers are the caller's (see [`alloc`](Self::alloc)). Returns false
    /// if `descs` is empty or not enough slots are free.
    pub fn push_raw_chain(&mut self, vring: u16, descs: &[RawDesc]) -> bool {
        let vi = usize::from(vring);
        if vi >= self.vrings.len() || descs.is_empty() {
            return false;
        }
        if vi % 2 == 1 && self.vrings[vi].free.len() < descs.len() {
            self.reap(vi);
        }
        let v = &mut self.vrings[vi];
        if v.free.len() < descs.len() {
            return false;
        }
        let mut slots = Vec::with_capacity(descs.len());
        for d in descs {
            let Some(s) = v.free.pop() else {
                return false;
            };
            v.write_desc(&self.guest.mem, s, *d);
            slots.push(s);
        }
        self.launch(vi, slots, Vec::new(), ChainKind::Raw);
        true
    }

    /// Allocates `len` bytes of guest memory for a test and returns its
    /// guest address (64-byte aligned). Never freed; panics when guest
    /// memory is exhausted (a test sizing error).
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.alloc
            .alloc(len)
            .unwrap_or_else(|| panic!("guest memory exhausted allocating {len} bytes"))
    }

    /// Writes `data` at guest address `addr`. Panics if the range is not
    /// inside guest memory (a test bug).
    pub fn write_guest(&self, addr: u64, data: &[u8]) {
        self.guest
            .mem
            .write_slice(data, GuestAddress(addr))
            .unwrap_or_else(|e| panic!("write_guest {addr:#x}+{}: {e}", data.len()));
    }

    /// Reads `len` bytes at guest address `addr`. Panics if the range is not
    /// inside guest memory (a test bug).
    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.guest
            .mem
            .read_slice(&mut buf, GuestAddress(addr))
            .unwrap_or_else(|e| panic!("read_guest {addr:#x}+{len}: {e}"));
        buf
    }

    /// The used ring's idx of `vring` as the backend last wrote it (0 for an
    /// unknown vring).
    pub fn used_idx(&self, vring: u16) -> u16 {
        self.vrings
            .get(usize::from(vring))
            .map_or(0, |v| v.used_idx(&self.guest.mem))
    }

    /// The avail ring's idx of `vring` as published so far.
    pub fn avail_idx(&self, vring: u16) -> u16 {
        self.vrings
            .get(usize::from(vring))
            .map_or(0, |v| v.next_avail)
    }

    /// Kicks sent on `vring` so far (publishes the backend asked to hear
    /// about; with EVENT_IDX or NO_NOTIFY usually fewer than publishes).
    pub fn kicks(&self, vring: u16) -> u64 {
        self.vrings.get(usize::from(vring)).map_or(0, |v| v.kicks)
    }

    /// SET_VRING_ENABLE for one vring.
    pub fn set_vring_enable(&mut self, vring: u16, enable: bool) -> Result<()> {
        self.frontend
            .set_vring_enable(usize::from(vring), enable)
            .with_context(|| format!("SET_VRING_ENABLE {vring} {}", u8::from(enable)))
    }

    /// Re-sends SET_MEM_TABLE with the same memfd region (as QEMU does
    /// several times during boot).
    pub fn update_mem_table(&mut self) -> Result<()> {
        self.frontend
            .set_mem_table(&[self.guest.region])
            .context("SET_MEM_TABLE")?;
        Ok(())
    }

    /// The backend's device config space (GET_CONFIG, offset 0), first `len`
    /// bytes, if CONFIG was negotiated. Sent on the socket directly rather
    /// than through `vhost::Frontend::get_config`, which blocks forever when
    /// a backend answers with its "failed" (size 0) reply; here that reply,
    /// or none within 5 s, is an error.
    pub fn get_config(&mut self, len: u32) -> Result<Vec<u8>> {
        ensure!(
            self.protocol.contains(VhostUserProtocolFeatures::CONFIG),
            "VHOST_USER_PROTOCOL_F_CONFIG was not negotiated"
        );
        ensure!(
            (1..=CONFIG_SPACE_MAX).contains(&len),
            "config length {len} outside 1..={CONFIG_SPACE_MAX}"
        );
        let body_len = VHOST_USER_CONFIG_HDR_LEN + len as usize;
        let mut msg = Vec::with_capacity(VHOST_USER_HDR_LEN + body_len);
        msg.extend_from_slice(&REQ_GET_CONFIG.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes()); // version 1
        msg.extend_from_slice(&(body_len as u32).to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes()); // offset
        msg.extend_from_slice(&len.to_le_bytes()); // size
        msg.extend_from_slice(&0u32.to_le_bytes()); // flags
        msg.resize(VHOST_USER_HDR_LEN + body_len, 0);
        (&self.sock).write_all(&msg).context("sending GET_CONFIG")?;

        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hdr = [0u8; VHOST_USER_HDR_LEN];
        self.read_exact_by(&mut hdr, deadline)?;
        let code = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        ensure!(
            code == REQ_GET_CONFIG && flags & VhostUserHeaderFlag::REPLY.bits() != 0,
            "unexpected reply to GET_CONFIG: request {code}, flags {flags:#x}"
        );
        ensure!(
            (VHOST_USER_CONFIG_HDR_LEN..=VHOST_USER_CONFIG_HDR_LEN + CONFIG_SPACE_MAX as usize)
                .contains(&size),
            "GET_CONFIG reply of {size} bytes"
        );
        let mut body = vec![0u8; size];
        self.read_exact_by(&mut body, deadline)?;
        let rsize = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        if rsize == 0 {
            bail!("backend failed GET_CONFIG (reply size 0)");
        }
        ensure!(
            rsize == len && size == VHOST_USER_CONFIG_HDR_LEN + len as usize,
            "GET_CONFIG reply has {rsize} bytes of config, {len} asked"
        );
        Ok(body.split_off(VHOST_USER_CONFIG_HDR_LEN))
    }

    fn read_exact_by(&self, buf: &mut [u8], deadline: Instant) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !poll_in(self.sock.as_raw_fd(), left) {
                bail!("no reply from the backend within 5 s");
            }
            match (&self.sock).read(&mut buf[got..]) {
                Ok(0) => bail!("backend closed the connection"),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading a vhost-user reply"),
            }
        }
        Ok(())
    }

    /// Whether the backend signalled the call eventfd of `vring` since the
    /// last check (reads and clears it, non-blocking). Calls consumed while
    /// `recv` waited count too.
    pub fn take_call(&self, vring: u16) -> bool {
        let Some(v) = self.vrings.get(usize::from(vring)) else {
            return false;
        };
        let seen = v.call_seen.swap(false, Ordering::Relaxed);
        v.call.read().is_ok() || seen
    }
}

impl Drop for TestFrontend {
    fn drop(&mut self) {
        // The backend sees the disconnect even if a clone of the fd lingers.
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec() {
        // Kick when the event index lies in [old, new).
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(1, 1, 0));
        assert!(vring_need_event(5, 8, 3));
        assert!(!vring_need_event(8, 8, 3));
        assert!(!vring_need_event(2, 8, 3));
        // Across the 16-bit wrap.
        assert!(vring_need_event(65535, 2, 65534));
        assert!(vring_need_event(0, 2, 65534));
        assert!(!vring_need_event(2, 2, 65534));
        assert!(!vring_need_event(3, 3, 3));
    }

    #[test]
    fn allocator_reuses_and_coalesces() {
        let mut a = Allocator::new(4096, 4096 + 1024);
        let x = a.alloc(100).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(1).unwrap();
        assert_eq!((x, y, z), (4096, 4096 + 128, 4096 + 256));
        assert!(a.alloc(1024).is_none());
        a.free(y, 100);
        a.free(x, 100);
        a.free(z, 1);
        assert_eq!(a.free.len(), 1, "{:?}", a.free);
        assert_eq!(a.alloc(1024), Some(4096));
    }

    #[test]
    fn frontend_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TestFrontend>();
    }
}
