//! A minimal AF_XDP receiver for tests (xsk-rs), bound to one queue.

use anyhow::{anyhow, Context, Result};
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
    // Kept so the socket and its rings stay alive.
    _tx: TxQueue,
    _comp: CompQueue,
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
        let (umem, descs) = Umem::new(
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
        // Never offer more than the ring holds: produce is all-or-nothing.
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
            _tx: tx,
            _comp: comp,
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

    /// Waits `quiet` and returns how many frames arrived in that time.
    pub fn drain(&mut self, quiet: Duration) -> Result<usize> {
        Ok(self.recv(usize::MAX, quiet)?.len())
    }
}
