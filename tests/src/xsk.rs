//! A minimal AF_XDP socket for tests (xsk-rs), bound to one queue: it
//! receives (and reads the classifier's metadata block), and it sends on
//! exactly its own queue, which on veth means the frames arrive on the same
//! rx queue index of the other end, for any queue (XPS can only reach as
//! many queues as there are CPUs).

use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use xdpath_common::{XdpMeta, XDP_META_LEN};
use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

const FRAMES: u32 = 1024;

/// One received frame and the metadata block in front of it, if valid.
#[derive(Debug, Clone)]
pub struct Received {
    /// The frame bytes.
    pub data: Vec<u8>,
    /// The classifier's metadata block (magic checked by the caller).
    pub meta: XdpMeta,
}

/// An AF_XDP socket on one queue with its own UMEM. Create it on a thread
/// inside the interface's namespace.
pub struct XskReceiver {
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    tx: TxQueue,
    comp: CompQueue,
    /// Frames free for sending.
    free: Vec<FrameDesc>,
}

impl std::fmt::Debug for XskReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskReceiver").finish_non_exhaustive()
    }
}

impl XskReceiver {
    /// Binds to `iface` queue `queue` (copy mode, need_wakeup) and fills
    /// the fill ring.
    pub fn bind(iface: &str, queue: u32) -> Result<Self> {
        let umem_cfg = UmemConfig::builder()
            .build()
            .map_err(|e| anyhow!("UMEM config: {e}"))?;
        let (umem, mut descs) = Umem::new(
            umem_cfg,
            NonZeroU32::new(FRAMES).context("frame count")?,
            false,
        )
        .map_err(|e| anyhow!("UMEM: {e}"))?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(512).map_err(|e| anyhow!("{e}"))?)
            .tx_queue_size(QueueSize::new(512).map_err(|e| anyhow!("{e}"))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let ifname: Interface = iface.parse().map_err(|e| anyhow!("interface name: {e}"))?;
        // SAFETY: this UMEM is not shared with any other socket.
        let (tx, rx, fq_cq) = unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, queue) }
            .map_err(|e| anyhow!("AF_XDP socket on {iface} queue {queue}: {e}"))?;
        let (mut fill, comp) = fq_cq.context("a fresh UMEM always gets fill/completion rings")?;
        // Half the frames receive, half send. Never offer more than the
        // ring holds: produce is all-or-nothing.
        let free = descs.split_off(descs.len() / 2);
        let offer = descs.len().min(fill.nb_free_exact() as usize);
        // SAFETY: these frames are not in use anywhere else.
        let n = unsafe { fill.produce(&descs[..offer]) };
        if n != offer {
            return Err(anyhow!("fill ring took {n} of {offer} frames"));
        }
        Ok(Self {
            umem,
            rx,
            fill,
            tx,
            comp,
            free,
        })
    }

    /// The socket fd, for registration in the XSKMAP.
    pub fn fd(&self) -> &xsk_rs::socket::Fd {
        self.rx.fd()
    }

    /// Receives until `want` frames arrived or `timeout` passed; returns
    /// what arrived. Frames are handed back to the fill ring.
    pub fn recv(&mut self, want: usize, timeout: Duration) -> Result<Vec<Received>> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut batch = vec![FrameDesc::default(); 64];
        while out.len() < want {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // SAFETY: descriptors come back from our own RX ring.
            let n = unsafe {
                self.rx
                    .poll_and_consume(&mut batch, left.as_millis().min(100) as i32)
            }
            .context("poll AF_XDP RX")?;
            for d in &batch[..n] {
                // SAFETY: the frame was handed to us by the RX ring and is
                // not in the fill ring until we produce it below.
                let data = unsafe { self.umem.data(d) };
                let bytes = data.contents();
                // SAFETY: the kernel writes data at XDP_PACKET_HEADROOM (256
                // bytes) into the frame; the metadata block, when present,
                // is the XDP_META_LEN bytes right before it, inside the same
                // UMEM frame.
                let meta = unsafe {
                    bytes
                        .as_ptr()
                        .sub(XDP_META_LEN)
                        .cast::<XdpMeta>()
                        .read_unaligned()
                };
                out.push(Received {
                    data: bytes.to_vec(),
                    meta,
                });
            }
            if n > 0 {
                // SAFETY: giving back the frames we just consumed.
                let m = unsafe { self.fill.produce(&batch[..n]) };
                if m != n {
                    return Err(anyhow!("fill ring refused {} frames", n - m));
                }
            }
        }
        Ok(out)
    }

    /// Sends `frames` on this socket's queue; returns once the kernel has
    /// completed all of them (or fails after `timeout`).
    pub fn send(&mut self, frames: &[Vec<u8>], timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let mut done = vec![FrameDesc::default(); 64];
        let mut in_flight = 0usize;
        let mut next = 0usize;
        while next < frames.len() || in_flight > 0 {
            if Instant::now() > end {
                return Err(anyhow!(
                    "AF_XDP send: {} of {} frames not completed",
                    frames.len() - next + in_flight,
                    frames.len()
                ));
            }
            // SAFETY: completions return frames we sent from this UMEM.
            let c = unsafe { self.comp.consume(&mut done) };
            self.free.extend_from_slice(&done[..c]);
            in_flight -= c;
            while next < frames.len() && self.tx.nb_free(1) > 0 {
                let Some(mut d) = self.free.pop() else { break };
                // SAFETY: the frame is ours (free list) and in no ring.
                let mut data = unsafe { self.umem.data_mut(&mut d) };
                data.cursor()
                    .write_all(&frames[next])
                    .context("frame larger than a UMEM frame")?;
                // SAFETY: the frame was just written and is in no ring.
                if unsafe { self.tx.produce_one(&d) } != 1 {
                    self.free.push(d);
                    break;
                }
                next += 1;
                in_flight += 1;
            }
            if self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Waits `quiet` and returns how many frames arrived in that time.
    pub fn drain(&mut self, quiet: Duration) -> Result<usize> {
        Ok(self.recv(usize::MAX, quiet)?.len())
    }
}
