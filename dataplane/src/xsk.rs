//! One AF_XDP socket with its own UMEM and frame allocator, and the
//! factory that opens them.
//!
//! An [`XskPort`] is owned by exactly one queue-pair worker: the UMEM, the
//! four rings (fill, completion, RX, TX) and the free-frame list are only
//! touched by that worker, so nothing here locks. The frame budget is
//! split once: `fill_frames` frames live in the fill/RX cycle (an RX frame
//! goes back to the fill ring as soon as it was copied to the guest), the
//! rest serve TX (free list -> TX ring -> completion ring -> free list).
//!
//! xsk-rs's `produce` calls are all-or-nothing; every call here offers at
//! most the free slots it just counted.
//!
//! `XskPort` implements [`FramePort`], the interface the queue pair uses
//! (import the trait to call its data-path methods); its inherent methods
//! are only what the trait does not cover (`bind`, `queue`). An
//! [`XskFactory`] is the [`PortFactory`] that binds sockets of one
//! interface with one set of settings (the socket pool's replacements).

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::port::{FramePort, PortFactory, PortStats, Push, BATCH, XDP_PACKET_HEADROOM};

/// How to create an [`XskPort`].
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// Interface name (in the caller's network namespace).
    pub iface: String,
    /// NIC queue to bind to.
    pub queue: u32,
    /// UMEM frame size (2048 or 4096).
    pub frame_size: u32,
    /// Total UMEM frames; half feed RX, half serve TX.
    pub frames: u32,
    /// Size of each of the four rings (power of two).
    pub ring_size: u32,
    /// Force copy mode (veth supports only copy mode anyway); otherwise the
    /// kernel picks zero copy when the driver supports it.
    pub force_copy: bool,
    /// Preferred busy polling: the kernel polls the NIC queue in the
    /// worker's context when it waits (SO_PREFER_BUSY_POLL, SO_BUSY_POLL,
    /// SO_BUSY_POLL_BUDGET) instead of waiting for an interrupt. Lower
    /// latency under load for a core per queue pair; drivers without NAPI
    /// busy polling ignore it.
    pub busy_poll: bool,
}

/// Microseconds the kernel busy-polls per wait when `busy_poll` is set.
pub const BUSY_POLL_USECS: i32 = 20;

impl XskConfig {
    /// Defaults: 2048-byte frames, 4096 frames, 2048-slot rings, auto mode.
    pub fn new(iface: impl Into<String>, queue: u32) -> Self {
        Self {
            iface: iface.into(),
            queue,
            frame_size: 2048,
            frames: 4096,
            ring_size: 2048,
            force_copy: false,
            busy_poll: false,
        }
    }

    /// Largest frame (Ethernet header included) one UMEM frame holds.
    pub fn max_frame_len(&self) -> usize {
        self.frame_size as usize - XDP_PACKET_HEADROOM
    }
}

/// Errors creating a port.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A size in the configuration is not acceptable.
    #[error("AF_XDP configuration is invalid: {0}.")]
    Config(String),
    /// Creating the UMEM failed.
    #[error("Creating the UMEM failed: {0}.")]
    Umem(String),
    /// Creating or binding the socket failed.
    #[error("Binding an AF_XDP socket to {iface} queue {queue} failed: {detail}.")]
    Bind {
        /// Interface name.
        iface: String,
        /// Queue index.
        queue: u32,
        /// What libxdp reported.
        detail: String,
    },
}

/// `setsockopt(fd, SOL_SOCKET, opt, &val)`.
fn set_sockopt(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: `val` is a valid int for the option's size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(fd, SOL_SOCKET, opt)` as an int.
pub fn get_sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` is a writable int of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// An AF_XDP socket bound to one queue, with its UMEM and frames.
pub struct XskPort {
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames free for TX.
    free: Vec<FrameDesc>,
    /// Scratch for completions, reused every batch.
    comp_batch: Vec<FrameDesc>,
    /// Frames of the TX batch being filled, reused every batch.
    staged: Vec<FrameDesc>,
    ring_size: u32,
    max_frame_len: usize,
    queue: u32,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort")
            .field("queue", &self.queue)
            .field("free_tx_frames", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl XskPort {
    /// Creates the UMEM, binds the socket (need_wakeup, our own XDP program
    /// stays: libxdp's is never loaded) and fills the fill ring.
    pub fn bind(cfg: &XskConfig) -> Result<Self, XskError> {
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| XskError::Config(e.to_string()))?;
        let frame_size =
            FrameSize::new(cfg.frame_size).map_err(|e| XskError::Config(e.to_string()))?;
        let frames = NonZeroU32::new(cfg.frames)
            .filter(|n| n.get() >= 2 * 64)
            .ok_or_else(|| {
                XskError::Config(format!(
                    "{} UMEM frames is too few (at least 128)",
                    cfg.frames
                ))
            })?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let (umem, mut descs) =
            Umem::new(umem_cfg, frames, false).map_err(|e| XskError::Umem(e.to_string()))?;
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        if cfg.force_copy {
            bind |= BindFlags::XDP_COPY;
        }
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let bind_err = |detail: String| XskError::Bind {
            iface: cfg.iface.clone(),
            queue: cfg.queue,
            detail,
        };
        let ifname: Interface = cfg
            .iface
            .parse()
            .map_err(|e: std::ffi::NulError| bind_err(e.to_string()))?;
        // SAFETY: the UMEM is fresh and not shared, so the double-free
        // hazard xsk-rs documents for shared UMEMs does not apply.
        let (tx, rx, fq_cq) = unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, cfg.queue) }
            .map_err(|e| bind_err(e.to_string()))?;
        let (mut fill, comp) =
            fq_cq.ok_or_else(|| bind_err("no fill/completion ring for a fresh UMEM".into()))?;
        if cfg.busy_poll {
            let fd = rx.fd().as_raw_fd();
            for (opt, val) in [
                (libc::SO_PREFER_BUSY_POLL, 1),
                (libc::SO_BUSY_POLL, BUSY_POLL_USECS),
                (libc::SO_BUSY_POLL_BUDGET, BATCH as i32),
            ] {
                set_sockopt(fd, opt, val)
                    .map_err(|e| bind_err(format!("enabling busy polling: {e}")))?;
            }
        }
        let to_fill = (descs.len() / 2).min(cfg.ring_size as usize);
        let mut free = Vec::with_capacity(descs.len());
        free.extend(descs.drain(to_fill..));
        // SAFETY: these frames are owned by nobody else yet; the ring has
        // `ring_size` >= `to_fill` free slots.
        let n = unsafe { fill.produce(&descs) };
        if n != descs.len() {
            return Err(bind_err(format!(
                "fill ring accepted {n} of {} frames",
                descs.len()
            )));
        }
        Ok(Self {
            umem,
            rx,
            tx,
            fill,
            comp,
            comp_batch: vec![FrameDesc::default(); cfg.ring_size as usize],
            staged: Vec::with_capacity(cfg.ring_size as usize),
            free,
            ring_size: cfg.ring_size,
            max_frame_len: cfg.max_frame_len(),
            queue: cfg.queue,
        })
    }

    /// The NIC queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Hands `n` filled frames to the kernel and wakes it when it asks to
    /// be woken (copy mode always does). Returns the number of wake-ups, or
    /// the error if the socket is dead (its interface is gone: ENXIO or
    /// ENETDOWN), which epoll never reports for AF_XDP.
    fn tx_submit(&mut self, descs: &[FrameDesc]) -> io::Result<u64> {
        // SAFETY: the frames were filled by us and are in no other ring;
        // `TxBatch` never holds more than `tx_capacity` frames.
        let n = unsafe { self.tx.produce(descs) };
        debug_assert_eq!(n, descs.len());
        if n != descs.len() {
            self.free.extend_from_slice(descs);
            return Ok(0);
        }
        let mut wakeups = 0;
        // Copy mode sends at most 32 frames per sendto: wake until the
        // kernel has taken everything (bounded by the ring size).
        for _ in 0..=(descs.len() / 32 + 1) {
            if !self.tx.needs_wakeup() {
                break;
            }
            wakeups += 1;
            match self.tx.wakeup() {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                    ) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENXIO | libc::ENETDOWN | libc::EBADF)
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(queue = self.queue, "XSK TX wakeup: {e}");
                    break;
                }
            }
            if self.tx.nb_free(self.ring_size) == self.ring_size {
                break;
            }
        }
        Ok(wakeups)
    }
}

impl AsRawFd for XskPort {
    fn as_raw_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

impl AsFd for XskPort {
    /// The socket's fd (for epoll and XSKMAP registration).
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is the socket's, owned by `self.rx` (xsk-rs closes
        // it when the socket is dropped), so it stays open for as long as
        // `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }
}

impl FramePort for XskPort {
    type Desc = FrameDesc;

    #[inline]
    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    #[inline]
    fn rx_consume(&mut self, descs: &mut [FrameDesc]) -> usize {
        // SAFETY: descriptors come from our own RX ring and describe frames
        // of our own UMEM.
        unsafe { self.rx.consume(descs) }
    }

    #[inline]
    fn rx_data(&self, desc: &FrameDesc) -> &[u8] {
        // SAFETY: `desc` came from our RX ring (so it is a frame of this
        // UMEM) and is not in the fill ring until `rx_release` gives it back.
        unsafe { self.umem.data(desc) }.contents()
    }

    #[inline]
    fn rx_release(&mut self, descs: &[FrameDesc]) {
        // The fill ring is not always able to take them all: when the RX
        // ring overflows, copy mode keeps the fill frame of the dropped
        // packet in the kernel's own cache and later delivers through the
        // RX ring again, so more frames than the fill ring holds can be
        // between fill and RX. What does not fit serves TX instead.
        let room = (self.fill.nb_free(descs.len() as u32) as usize).min(descs.len());
        // SAFETY: the frames came from our RX ring and are no longer read;
        // the ring has `room` free slots.
        let n = unsafe { self.fill.produce(&descs[..room]) };
        self.free.extend_from_slice(&descs[n..]);
    }

    /// Moves finished TX frames from the completion ring to the free list.
    #[inline]
    fn reap_completions(&mut self) -> usize {
        // SAFETY: completions describe frames of our UMEM that the kernel no
        // longer uses.
        let n = unsafe { self.comp.consume(&mut self.comp_batch) };
        self.free.extend_from_slice(&self.comp_batch[..n]);
        n
    }

    /// Free frames and free TX ring slots, whichever is fewer.
    #[inline]
    fn tx_capacity(&mut self) -> usize {
        self.free
            .len()
            .min(self.tx.nb_free(self.ring_size) as usize)
    }

    #[inline]
    fn tx_push<E>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Push<E> {
        if len > self.max_frame_len {
            return Push::TooLong;
        }
        let Some(mut desc) = self.free.pop() else {
            return Push::NoFrame;
        };
        // SAFETY: the frame came from our free list: no ring holds it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        data.cursor().set_pos(len);
        let buf = data.contents_mut();
        if buf.len() != len {
            self.free.push(desc);
            return Push::TooLong;
        }
        match fill(buf) {
            Ok(()) => {
                self.staged.push(desc);
                Push::Staged
            }
            Err(e) => {
                self.free.push(desc);
                Push::Failed(e)
            }
        }
    }

    #[inline]
    fn tx_staged(&self) -> usize {
        self.staged.len()
    }

    fn tx_commit(&mut self) -> io::Result<u64> {
        if self.staged.is_empty() {
            return Ok(0);
        }
        let mut staged = std::mem::take(&mut self.staged);
        let wakeups = self.tx_submit(&staged);
        staged.clear();
        self.staged = staged;
        wakeups
    }

    #[inline]
    fn tx_abort(&mut self) {
        self.free.append(&mut self.staged);
    }

    /// The kernel's XDP_STATISTICS for this socket.
    fn stats(&self) -> io::Result<PortStats> {
        let mut s = PortStats::default();
        let mut len = std::mem::size_of::<PortStats>() as libc::socklen_t;
        // SAFETY: `s` is a writable, repr(C) xdp_statistics of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut PortStats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The socket's pending error (SO_ERROR), e.g. ENETDOWN once its
    /// interface is gone.
    fn socket_error(&self) -> io::Error {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` is a writable int of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return io::Error::last_os_error();
        }
        if err == 0 {
            return io::Error::other("the socket signalled an error or hang-up");
        }
        io::Error::from_raw_os_error(err)
    }
}

/// Binds [`XskPort`]s of one interface with one set of settings: the
/// [`PortFactory`] the socket pool replaces sockets with.
#[derive(Debug, Clone)]
pub struct XskFactory {
    template: XskConfig,
}

impl XskFactory {
    /// Sockets like `template` (interface, frames, rings, copy mode, busy
    /// polling); its `queue` is ignored, [`PortFactory::open`] names one.
    pub fn new(template: XskConfig) -> Self {
        Self { template }
    }

    /// Sockets on `iface` with [`XskConfig::new`]'s defaults, and preferred
    /// busy polling if `busy_poll` (what the daemon uses).
    pub fn for_iface(iface: impl Into<String>, busy_poll: bool) -> Self {
        let mut template = XskConfig::new(iface, 0);
        template.busy_poll = busy_poll;
        Self { template }
    }

    /// The configuration a socket on `queue` is bound with.
    pub fn config(&self, queue: u32) -> XskConfig {
        XskConfig {
            queue,
            ..self.template.clone()
        }
    }
}

impl PortFactory for XskFactory {
    type Port = XskPort;
    type Error = XskError;

    fn open(&self, queue: u32) -> Result<XskPort, XskError> {
        XskPort::bind(&self.config(queue))
    }
}
