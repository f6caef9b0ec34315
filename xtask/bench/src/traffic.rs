//! Benchmark traffic on the wire side of a topology: a generator, a sink
//! and a request/response pinger, all in the peer namespace, all the same
//! whichever bridge (xdpath, DPDK testpmd, or none) sits on the host end.
//!
//! - [`Generator`]: one AF_XDP socket per peer queue whose UMEM is filled
//!   once with the frame templates; the send loop only recycles
//!   descriptors (completion ring -> TX ring -> wake-up), so no byte is
//!   copied in user space per frame. On veth a frame sent on peer queue i
//!   arrives on host queue i.
//! - [`Sink`]: the xdpath classifier on the peer end with default action
//!   drop: what the bridge transmits is counted in XDP (`action_drop`) and
//!   never reaches the peer's stack. Frames to [`PEER_MAC`] (echoes for
//!   the pinger) go to the AF_XDP socket registered with it.
//!   The generator's queue 0 socket also receives: [`Generator::ping`]
//!   sends one tagged frame at a time to the guest and waits for the echo,
//!   recording round-trip times (one socket per queue is all AF_XDP
//!   allows, so sender and pinger share it).
//!
//! Frame sizes count the Ethernet header and no FCS (veth has none).

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdpath_common::{Action, RuleValue};
use xdpath_control::{Classifier, ClassifierConfig};
use xdpath_tests::frames::{eth, ipv4, tagged, udp, ETH_P_IP};
use xdpath_tests::topology::PEER_MAC;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// Destination MAC of throughput frames from the guest: nobody's, so the
/// sink's default action (drop, counted) takes them.
pub const SINK_MAC: [u8; 6] = [0x02, 0x58, 0x44, 0, 0, 0x99];
/// Bytes of Ethernet + IPv4 + UDP headers in front of the payload.
pub const HEADERS: usize = 14 + 20 + 8;
/// Offset of the 4-byte tag ([`tagged`]) in a benchmark frame.
pub const TAG_OFFSET: usize = HEADERS;

/// `flows` distinct UDP flows (source port and address vary) of `size`
/// bytes each, from (`src_mac`, `src_ip`) to (`dst_mac`, `dst_ip`).
pub fn flow_frames(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    size: usize,
    flows: u32,
) -> Vec<Vec<u8>> {
    (0..flows.max(1))
        .map(|i| {
            let mut sip = src_ip;
            sip[3] = sip[3].wrapping_add((i >> 8) as u8);
            let payload = tagged(i, size.saturating_sub(HEADERS).max(4));
            eth(
                dst_mac,
                src_mac,
                ETH_P_IP,
                &ipv4(sip, dst_ip, 17, &udp(1024 + (i & 0xff) as u16, 9, &payload)),
            )
        })
        .collect()
}

/// Ring sizes and UMEM frames of one generator socket: `GEN_FRAMES` carry
/// templates, `RX_FRAMES` more feed the fill ring, one is the ping request.
const GEN_RING: u32 = 2048;
const GEN_FRAMES: u32 = 4096;
const RX_FRAMES: u32 = 512;
const GEN_FRAME_SIZE: u32 = 2048;
/// How long [`Generator::ping`] waits past its timeout for the kernel to
/// complete a request it has not sent yet before it gives up.
const SEND_GRACE: Duration = Duration::from_secs(2);

/// One generator socket: its UMEM holds the templates for good.
struct GenSock {
    // Kept alive for the rings; never read.
    umem: Umem,
    fill: FillQueue,
    rx: RxQueue,
    tx: TxQueue,
    /// The frame ping requests are written to.
    request: FrameDesc,
    comp: CompQueue,
    free: Vec<FrameDesc>,
    done: Vec<FrameDesc>,
    /// Template length of each frame, by `addr / GEN_FRAME_SIZE` (the
    /// completion ring hands frames back with length 0).
    lens: Vec<usize>,
}

/// A fast AF_XDP frame generator on several queues of one interface.
pub struct Generator {
    socks: Vec<GenSock>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("queues", &self.socks.len())
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Binds one socket per entry of `per_queue` (queue `i` of `iface`,
    /// copy mode) and writes that queue's templates round-robin into every
    /// UMEM frame. Call it in the interface's namespace.
    pub fn new(iface: &str, per_queue: &[Vec<Vec<u8>>]) -> Result<Self> {
        let mut socks = Vec::with_capacity(per_queue.len());
        for (q, templates) in per_queue.iter().enumerate() {
            let ring = QueueSize::new(GEN_RING).map_err(|e| anyhow!("{e}"))?;
            let umem_cfg = UmemConfig::builder()
                .frame_size(FrameSize::new(GEN_FRAME_SIZE).map_err(|e| anyhow!("{e}"))?)
                .comp_queue_size(ring)
                .fill_queue_size(ring)
                .build()
                .map_err(|e| anyhow!("UMEM config: {e}"))?;
            let (umem, mut descs) = Umem::new(
                umem_cfg,
                NonZeroU32::new(GEN_FRAMES + RX_FRAMES + 1).context("frame count")?,
                false,
            )
            .map_err(|e| anyhow!("UMEM: {e}"))?;
            let request = descs.pop().context("UMEM frames")?;
            let rx_descs = descs.split_off(GEN_FRAMES as usize);
            let sock_cfg = SocketConfig::builder()
                .rx_queue_size(ring)
                .tx_queue_size(ring)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            let ifname: Interface = iface.parse().map_err(|e| anyhow!("interface name: {e}"))?;
            // SAFETY: this UMEM is not shared with any other socket.
            let (tx, rx, fq_cq) =
                unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, q as u32) }
                    .map_err(|e| anyhow!("AF_XDP socket on {iface} queue {q}: {e}"))?;
            let (mut fill, comp) =
                fq_cq.context("a fresh UMEM always gets fill/completion rings")?;
            // SAFETY: these frames are in no ring; the fill ring has
            // GEN_RING >= RX_FRAMES free slots.
            if unsafe { fill.produce(&rx_descs) } != rx_descs.len() {
                bail!("fill ring refused the receive frames");
            }
            let mut s = GenSock {
                umem,
                fill,
                rx,
                tx,
                comp,
                request,
                free: descs,
                done: vec![FrameDesc::default(); GEN_RING as usize],
                lens: vec![0; (GEN_FRAMES + RX_FRAMES + 1) as usize],
            };
            s.write_templates(templates)?;
            socks.push(s);
        }
        Ok(Self { socks })
    }

    /// Rewrites every queue's frames with new templates (between runs,
    /// when nothing is in flight).
    pub fn set_templates(&mut self, per_queue: &[Vec<Vec<u8>>]) -> Result<()> {
        for (s, t) in self.socks.iter_mut().zip(per_queue) {
            s.write_templates(t)?;
        }
        Ok(())
    }

    /// The fd of queue `q`'s socket (to register with a [`Sink`]).
    pub fn fd(&self, q: usize) -> Option<&xsk_rs::socket::Fd> {
        self.socks.get(q).map(|s| s.rx.fd())
    }

    /// Up to `count` request/response exchanges on queue 0 within
    /// `budget`: `request` goes out with a fresh tag, and the exchange
    /// ends when a frame with that tag comes back (or after `timeout`,
    /// counted lost).
    pub fn ping(
        &mut self,
        request: &[u8],
        count: usize,
        budget: Duration,
        timeout: Duration,
    ) -> Result<Rtts> {
        let s = self.socks.first_mut().context("no generator socket")?;
        if request.len() < TAG_OFFSET + 4 {
            bail!("a ping request needs at least {} bytes", TAG_OFFSET + 4);
        }
        let mut r = Rtts::default();
        let end = Instant::now() + budget;
        let mut seq: u32 = 0x5000_0000;
        let mut got = vec![FrameDesc::default(); 64];
        let mut req = request.to_vec();
        while r.samples.len() < count && Instant::now() < end {
            seq = seq.wrapping_add(1);
            req[TAG_OFFSET..TAG_OFFSET + 4].copy_from_slice(&seq.to_be_bytes());
            let mut d = s.request;
            {
                // SAFETY: the request frame is in no ring: it was completed
                // (or never sent) before we get here.
                let mut data = unsafe { s.umem.data_mut(&mut d) };
                data.cursor().write_all(&req).context("request too long")?;
            }
            let t0 = Instant::now();
            // SAFETY: the frame holds a complete request and is in no ring.
            if unsafe { s.tx.produce_one(&d) } != 1 {
                bail!("TX ring full while pinging");
            }
            if s.tx.needs_wakeup() {
                let _ = s.tx.wakeup();
            }
            let deadline = t0 + timeout;
            let (mut answered, mut sent) = (false, false);
            while !(answered && sent) && Instant::now() < deadline {
                // SAFETY: completions describe frames of our UMEM.
                if unsafe { s.comp.consume(&mut s.done) } > 0 {
                    sent = true;
                }
                // SAFETY: descriptors come back from our own RX ring.
                let n = unsafe { s.rx.consume(&mut got) };
                for g in &got[..n] {
                    // SAFETY: the frame came from our RX ring and goes back
                    // to the fill ring only below.
                    let data = unsafe { s.umem.data(g) };
                    let tag = data.contents().get(TAG_OFFSET..TAG_OFFSET + 4);
                    if !answered && tag == Some(&seq.to_be_bytes()[..]) {
                        answered = true;
                        r.samples.push(t0.elapsed().as_nanos() as u64);
                    }
                }
                // SAFETY: giving back the frames just consumed.
                if n > 0 && unsafe { s.fill.produce(&got[..n]) } != n {
                    bail!("fill ring refused frames");
                }
                if n == 0 && s.tx.needs_wakeup() {
                    let _ = s.tx.wakeup();
                }
            }
            if !sent {
                // On a loaded machine the kernel can take longer than the
                // timeout to send it: the request frame may be reused only
                // once it is back, so wait for that (bounded) and count
                // the exchange as lost.
                let late = Instant::now() + SEND_GRACE;
                while !sent && Instant::now() < late {
                    let _ = s.tx.wakeup();
                    // SAFETY: completions describe frames of our UMEM.
                    sent = unsafe { s.comp.consume(&mut s.done) } > 0;
                    if !sent {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                if !sent {
                    bail!(
                        "the ping request was not completed by the kernel within {:?}",
                        timeout + SEND_GRACE
                    );
                }
            }
            if !answered {
                r.lost += 1;
            }
        }
        Ok(r)
    }

    /// Sends as fast as the kernel takes frames on the first `queues`
    /// sockets in turn, adding completed (sent) frames to `sent` as they
    /// complete, until `stop` is set; then waits (at most 100 ms) for what
    /// is in flight. Returns the frames completed in this call.
    pub fn run(&mut self, stop: &AtomicBool, sent: &AtomicU64, queues: usize) -> u64 {
        let active = queues.min(self.socks.len());
        let socks = &mut self.socks[..active];
        let mut total = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut done = 0;
            for s in socks.iter_mut() {
                done += s.reap();
                let n = s.free.len().min(s.tx.nb_free(GEN_RING) as usize);
                if n > 0 {
                    let at = s.free.len() - n;
                    // SAFETY: the frames came from our free list (in no
                    // ring) and hold a complete template each.
                    let k = unsafe { s.tx.produce(&s.free[at..]) };
                    s.free.truncate(s.free.len() - k);
                }
                if s.tx.needs_wakeup() {
                    let _ = s.tx.wakeup();
                }
            }
            total += done;
            sent.fetch_add(done, Ordering::Relaxed);
        }
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end && socks.iter().any(|s| s.free.len() < GEN_FRAMES as usize) {
            for s in socks.iter_mut() {
                let _ = s.tx.wakeup();
                total += s.reap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        total
    }
}

impl GenSock {
    fn write_templates(&mut self, templates: &[Vec<u8>]) -> Result<()> {
        if templates.is_empty() {
            bail!("no frame templates");
        }
        // Frames still in flight (rare: a stopped veth queue) keep their
        // old template and length until they complete.
        for (i, d) in self.free.iter_mut().enumerate() {
            // SAFETY: the frame is in no ring (free list); only we touch it.
            let mut data = unsafe { self.umem.data_mut(d) };
            let t = &templates[i % templates.len()];
            let mut c = data.cursor();
            c.set_pos(0);
            c.write_all(t).context("frame larger than a UMEM frame")?;
            if let Some(l) = self.lens.get_mut(d.addr() / GEN_FRAME_SIZE as usize) {
                *l = t.len();
            }
        }
        Ok(())
    }

    /// Takes completed frames back (with their template length); returns
    /// how many.
    fn reap(&mut self) -> u64 {
        // SAFETY: completions describe frames of our UMEM that the kernel
        // is done with.
        let c = unsafe { self.comp.consume(&mut self.done) };
        for d in &mut self.done[..c] {
            let len = self
                .lens
                .get(d.addr() / GEN_FRAME_SIZE as usize)
                .copied()
                .unwrap_or(0);
            // SAFETY: the kernel is done with the frame (completion ring);
            // setting its length touches only the descriptor.
            unsafe { self.umem.data_mut(d) }.cursor().set_pos(len);
        }
        self.free.extend_from_slice(&self.done[..c]);
        c as u64
    }
}

/// The classifier on the peer end as a counting sink.
pub struct Sink {
    classifier: Classifier,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// Attaches on `iface` (call in its namespace): default action drop,
    /// [`PEER_MAC`] to the registered AF_XDP sockets.
    pub fn attach(iface: &str) -> Result<Self> {
        let mut cfg = ClassifierConfig::new(iface);
        cfg.default_action = Action::Drop;
        let mut classifier = Classifier::attach(&cfg).context("attaching the sink")?;
        classifier
            .insert_mac(
                PEER_MAC,
                &RuleValue {
                    action: Action::Guest as u32,
                    port: 1,
                    rule_id: 1,
                    _pad: 0,
                },
            )
            .context("sink: reply MAC rule")?;
        Ok(Self { classifier })
    }

    /// Frames the sink dropped (counted) so far.
    pub fn dropped(&self) -> Result<u64> {
        Ok(self.classifier.counters()?.action_drop)
    }

    /// Frames to [`PEER_MAC`] arriving on `queue` go to `fd`.
    pub fn register(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<()> {
        Ok(self.classifier.register_socket(queue, fd)?)
    }

    /// Detaches and unpins.
    pub fn shutdown(self) -> Result<()> {
        Ok(self.classifier.shutdown()?)
    }
}

/// Round-trip times of one [`Generator::ping`].
#[derive(Debug, Clone, Default)]
pub struct Rtts {
    /// Nanoseconds, one per answered request.
    pub samples: Vec<u64>,
    /// Requests that got no answer within the timeout.
    pub lost: u64,
}
