//! A mock guest for benchmarks and tests: anonymous guest memory and split
//! virtqueues whose driver side the caller plays. Not API.
//!
//! [`MockGuest`] owns the guest memory (one anonymous region from address
//! 0, wrapped in the `GuestMemoryAtomic` the queue pair reads through) and
//! a bump allocator over it. [`MockVring`] is one split virtqueue in that
//! memory behind the same `VringRwLock` vhost-user-backend gives a worker:
//! size, ring addresses, ready, enabled, optional EVENT_IDX and a call
//! eventfd, as after the frontend's SET_VRING_* messages. The caller writes
//! descriptors and the avail ring (little-endian split layout) and reads
//! the used ring, as a virtio driver would.
//!
//! This module is compiled into the library, hidden from the docs, rather
//! than behind a cargo feature: a feature switched on by a dev-dependency
//! would rebuild the dataplane and everything above it whenever cargo
//! alternates between building binaries and tests, and
//! `cargo bench --bench batch` would need `--features`.

use std::fs::File;
use std::io;
use std::num::Wrapping;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::Ordering;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory, as the frontend shares it.
pub type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

fn mem_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("mock guest memory: {e}"))
}

/// Guest memory with a bump allocator.
pub struct MockGuest {
    mem: Mem,
    size: u64,
    next: u64,
}

impl std::fmt::Debug for MockGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockGuest")
            .field("size", &self.size)
            .field("allocated", &self.next)
            .finish()
    }
}

impl MockGuest {
    /// `size` bytes of anonymous guest memory at guest address 0. The
    /// first page is never handed out (address 0 means "unset" to
    /// virtio-queue).
    pub fn new(size: usize) -> io::Result<Self> {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(mem_err)?;
        Ok(Self {
            mem: GuestMemoryAtomic::new(m),
            size: size as u64,
            next: 0x1000,
        })
    }

    /// The memory, as the queue pair takes it.
    pub fn memory(&self) -> &Mem {
        &self.mem
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> io::Result<GuestAddress> {
        let at = self.next.next_multiple_of(align);
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| mem_err(format!("{len} more bytes do not fit")))?;
        self.next = end;
        Ok(GuestAddress(at))
    }

    /// Writes `bytes` at `addr`.
    pub fn write(&self, addr: GuestAddress, bytes: &[u8]) -> io::Result<()> {
        self.mem.memory().write_slice(bytes, addr).map_err(mem_err)
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, addr)
            .map_err(mem_err)?;
        Ok(v)
    }

    /// A split virtqueue of `size` entries (a power of two) in this memory,
    /// ready and enabled, with a call eventfd, and EVENT_IDX if `event_idx`.
    pub fn vring(&mut self, size: u16, event_idx: bool) -> io::Result<MockVring> {
        let n = u64::from(size);
        let desc = self.alloc(16 * n, 4096)?;
        let avail = self.alloc(6 + 2 * n, 4096)?;
        let used = self.alloc(6 + 8 * n, 4096)?;
        let vring = VringRwLock::new(self.mem.clone(), size).map_err(mem_err)?;
        vring.set_queue_size(size);
        vring
            .set_queue_info(desc.0, avail.0, used.0)
            .map_err(mem_err)?;
        vring.set_queue_event_idx(event_idx);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let call = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let fd = call.try_clone()?.into_raw_fd();
        // SAFETY: `fd` is a fresh dup of our eventfd that nothing else
        // owns; the File (then vhost-user-backend's notifier) takes it.
        vring.set_call(Some(unsafe { File::from_raw_fd(fd) }));
        Ok(MockVring {
            vring,
            mem: self.mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: Wrapping(0),
            used_seen: Wrapping(0),
            event_idx,
            call,
        })
    }

    /// Adds `n` RX chains of one device-writable buffer of `buf_len` bytes
    /// each to `vq` and makes them available. Returns each chain's head
    /// and buffer address.
    pub fn post_rx(
        &mut self,
        vq: &mut MockVring,
        n: usize,
        buf_len: u32,
    ) -> io::Result<Vec<(u16, GuestAddress)>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let buf = self.alloc(u64::from(buf_len), 64)?;
            let head = vq.add_chain(&[(buf, buf_len, true)])?;
            vq.make_available(head)?;
            out.push((head, buf));
        }
        vq.request_interrupt()?;
        Ok(out)
    }

    /// Adds a TX chain carrying `hdr` then `frame` to `vq`, in one buffer
    /// or (`split`) one buffer each, and makes it available. Returns the
    /// head.
    pub fn post_tx(
        &mut self,
        vq: &mut MockVring,
        hdr: &[u8],
        frame: &[u8],
        split: bool,
    ) -> io::Result<u16> {
        let (h, f) = (hdr.len() as u32, frame.len() as u32);
        let head = if split {
            let a = self.alloc(u64::from(h), 64)?;
            let b = self.alloc(u64::from(f), 64)?;
            self.write(a, hdr)?;
            self.write(b, frame)?;
            vq.add_chain(&[(a, h, false), (b, f, false)])?
        } else {
            let a = self.alloc(u64::from(h + f), 64)?;
            self.write(a, hdr)?;
            self.write(a.unchecked_add(u64::from(h)), frame)?;
            vq.add_chain(&[(a, h + f, false)])?
        };
        vq.make_available(head)?;
        Ok(head)
    }
}

/// One split virtqueue whose driver side the caller plays.
pub struct MockVring {
    vring: VringRwLock,
    mem: Mem,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// Next unused descriptor (descriptors are written once, never freed).
    next_desc: u16,
    /// The driver's avail index.
    avail_idx: Wrapping<u16>,
    /// Used entries the driver has read.
    used_seen: Wrapping<u16>,
    event_idx: bool,
    call: EventFd,
}

impl std::fmt::Debug for MockVring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVring")
            .field("size", &self.size)
            .field("avail_idx", &self.avail_idx.0)
            .field("used_seen", &self.used_seen.0)
            .finish_non_exhaustive()
    }
}

impl MockVring {
    /// The vring, as the worker gets it.
    pub fn vring(&self) -> &VringRwLock {
        &self.vring
    }

    /// Writes a chain of `(address, length, device-writable)` buffers into
    /// fresh descriptors; returns its head.
    pub fn add_chain(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> io::Result<u16> {
        let n = u16::try_from(bufs.len()).map_err(mem_err)?;
        if n == 0 || u32::from(self.next_desc) + u32::from(n) > u32::from(self.size) {
            return Err(mem_err("descriptor table is full"));
        }
        let head = self.next_desc;
        let m = self.mem.memory();
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = Descriptor::new(addr.0, len, flags, idx + 1);
            m.write_obj(d, self.desc.unchecked_add(16 * u64::from(idx)))
                .map_err(mem_err)?;
        }
        self.next_desc += n;
        Ok(head)
    }

    /// Puts `head` in the avail ring and publishes the new avail index.
    pub fn make_available(&mut self, head: u16) -> io::Result<()> {
        let m = self.mem.memory();
        let slot = u64::from(self.avail_idx.0 % self.size);
        m.write_obj(head.to_le(), self.avail.unchecked_add(4 + 2 * slot))
            .map_err(mem_err)?;
        self.avail_idx += 1;
        m.store(
            self.avail_idx.0.to_le(),
            self.avail.unchecked_add(2),
            Ordering::Release,
        )
        .map_err(mem_err)
    }

    /// With EVENT_IDX, asks for an interrupt at the next used entry (what
    /// Linux's `virtqueue_enable_cb` does); without, interrupts are never
    /// suppressed anyway.
    pub fn request_interrupt(&self) -> io::Result<()> {
        if !self.event_idx {
            return Ok(());
        }
        let m = self.mem.memory();
        let used_idx: u16 = m
            .load(self.used.unchecked_add(2), Ordering::Acquire)
            .map_err(mem_err)?;
        let used_event = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        m.store(used_idx, used_event, Ordering::Release)
            .map_err(mem_err)
    }

    /// Used entries `(head, length)` the device added since the last call.
    pub fn take_used(&mut self) -> io::Result<Vec<(u16, u32)>> {
        let mut out = Vec::new();
        self.read_used(usize::MAX, |head, len| out.push((head, len)))?;
        Ok(out)
    }

    /// Makes every chain the device used since the last call available
    /// again, as is (a driver reposting its buffers), and asks for an
    /// interrupt. Returns how many. Allocates nothing.
    pub fn recycle(&mut self) -> io::Result<usize> {
        let mut n = 0;
        let mut heads = [0u16; 64];
        loop {
            let mut k = 0;
            self.read_used(heads.len(), |head, _| {
                heads[k] = head;
                k += 1;
            })?;
            for &h in &heads[..k] {
                self.make_available(h)?;
            }
            n += k;
            if k < heads.len() {
                break;
            }
        }
        self.request_interrupt()?;
        Ok(n)
    }

    /// Reads up to `max` new used entries, oldest first.
    fn read_used(&mut self, max: usize, mut f: impl FnMut(u16, u32)) -> io::Result<()> {
        let m = self.mem.memory();
        let used_idx = u16::from_le(
            m.load(self.used.unchecked_add(2), Ordering::Acquire)
                .map_err(mem_err)?,
        );
        let mut done = 0;
        while self.used_seen.0 != used_idx && done < max {
            let slot = u64::from(self.used_seen.0 % self.size);
            let elem: [u32; 2] = m
                .read_obj(self.used.unchecked_add(4 + 8 * slot))
                .map_err(mem_err)?;
            let head = u16::try_from(u32::from_le(elem[0])).map_err(mem_err)?;
            f(head, u32::from_le(elem[1]));
            self.used_seen += 1;
            done += 1;
        }
        Ok(())
    }

    /// Interrupts (call eventfd writes) since the last call.
    pub fn take_interrupts(&self) -> u64 {
        self.call.read().unwrap_or(0)
    }
}

/// One worker batch on a mock guest, as both micro-benchmarks run it
/// (`dataplane/benches/batch.rs` times it, `dataplane/benches/instructions.rs`
/// counts its instructions under callgrind): one [`crate::queue_pair::QueuePair`] on a
/// [`crate::mem_port::MemPort`] and one 256-entry guest vring with EVENT_IDX.
pub mod rig {
    use super::{MockGuest, MockVring};
    use crate::handoff::Peers;
    use crate::mem_port::MemPort;
    use crate::port::BATCH;
    use crate::queue_pair::{DataPathFeatures, QueuePair};
    use crate::virtio_net::HDR_LEN;
    use std::io;

    /// Entries of the vring.
    pub const QUEUE: u16 = 256;
    /// UMEM-like frame size of the port.
    pub const FRAME_SIZE: usize = 2048;
    /// Guest MTU (bounds TX frames).
    pub const MTU: u16 = 1500;

    /// What one call of [`BatchRig::step`] measures.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Case {
        /// `process_rx` delivering `BATCH` frames of `frame_len` bytes into
        /// guest buffers of `buf_len` bytes, one descriptor each.
        Rx {
            /// Frame length.
            frame_len: usize,
            /// Guest RX buffer length.
            buf_len: u32,
            /// VIRTIO_NET_F_MRG_RXBUF negotiated.
            mrg_rxbuf: bool,
        },
        /// `process_tx` moving `BATCH` guest chains of `frame_len`-byte
        /// frames, header and frame in one descriptor or (`split`) two.
        Tx {
            /// Frame length.
            frame_len: usize,
            /// Header and frame in separate descriptors.
            split: bool,
        },
    }

    /// Frame `len` bytes long whose bytes depend on `seed`.
    pub fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// One worker and one guest vring, loaded for one [`Case`].
    pub struct BatchRig {
        guest: MockGuest,
        vq: MockVring,
        qp: QueuePair<MemPort>,
        features: DataPathFeatures,
        rx: bool,
    }

    impl std::fmt::Debug for BatchRig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BatchRig").field("rx", &self.rx).finish()
        }
    }

    impl BatchRig {
        /// The guest posts a full ring of RX buffers (RX) or one batch of TX
        /// chains (TX); the port holds one batch of frames (RX).
        pub fn new(case: Case) -> io::Result<Self> {
            let mut guest = MockGuest::new(4 << 20)?;
            let mut vq = guest.vring(QUEUE, true)?;
            let (port, mrg_rxbuf, rx) = match case {
                Case::Rx {
                    frame_len,
                    buf_len,
                    mrg_rxbuf,
                } => {
                    guest.post_rx(&mut vq, usize::from(QUEUE), buf_len)?;
                    let mut port = MemPort::new(BATCH, BATCH, FRAME_SIZE)?;
                    for i in 0..BATCH {
                        if !port.push_rx(&frame(frame_len, i as u8)) {
                            return Err(io::Error::other("the port takes no more frames"));
                        }
                    }
                    (port, mrg_rxbuf, true)
                }
                Case::Tx { frame_len, split } => {
                    for i in 0..BATCH {
                        guest.post_tx(&mut vq, &[0; HDR_LEN], &frame(frame_len, i as u8), split)?;
                    }
                    vq.request_interrupt()?;
                    (MemPort::new(0, 4 * BATCH, FRAME_SIZE)?, false, false)
                }
            };
            let peers = Peers::new(1, FRAME_SIZE)?;
            Ok(Self {
                guest,
                vq,
                qp: QueuePair::new(0, port, MTU, peers.into())?,
                features: DataPathFeatures {
                    mrg_rxbuf,
                    indirect: false,
                },
                rx,
            })
        }

        /// Before every measured call: the guest reposts what was used, the
        /// port redelivers what was released, the counters are published
        /// (as the backend does after every event).
        pub fn reset(&mut self) -> io::Result<()> {
            self.vq.recycle()?;
            if let Some(p) = self.qp.port_mut() {
                p.rx_replay();
            }
            self.qp.flush_counters();
            Ok(())
        }

        /// The measured call: one `process_rx` or `process_tx`. Inlined, so
        /// the data path is compiled in the measuring crate as it is in a
        /// crate that runs `Server<P>`.
        #[inline]
        pub fn step(&mut self) {
            if self.rx {
                self.qp
                    .process_rx(self.vq.vring(), self.guest.memory(), self.features);
            } else {
                self.qp
                    .process_tx(self.vq.vring(), self.guest.memory(), self.features);
            }
        }

        /// Runs one reset and one step and checks that the step moved a
        /// full batch with one guest notification and no drop, so a
        /// measurement is never that of a drop path.
        pub fn check(&mut self) -> Result<(), String> {
            let before = self.qp.counters().snapshot();
            self.reset().map_err(|e| e.to_string())?;
            self.step();
            self.qp.flush_counters();
            let after = self.qp.counters().snapshot();
            let moved = (after.rx_frames - before.rx_frames) + (after.tx_frames - before.tx_frames);
            let notified = after.guest_notifications - before.guest_notifications;
            let dropped = (after.rx_drop_no_guest_buffer - before.rx_drop_no_guest_buffer)
                + (after.rx_drop_oversize - before.rx_drop_oversize)
                + (after.tx_drop_oversize - before.tx_drop_oversize);
            if (moved, notified, dropped) != (BATCH as u64, 1, 0) {
                return Err(format!(
                    "one call moved {moved} frames (want {BATCH}), notified {notified} times \
                     (want 1) and dropped {dropped} (want 0)"
                ));
            }
            Ok(())
        }
    }
}
