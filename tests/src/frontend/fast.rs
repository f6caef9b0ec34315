//! Fixed-buffer fast paths of the test frontend, for benchmarks.
//!
//! The general paths of [`TestFrontend`] allocate per frame (chain records,
//! buffer-area extents, the received bytes), which is right for tests that
//! inspect frames and wrong for a guest that must not be the bottleneck of
//! a throughput benchmark. After [`TestFrontend::fast_start`] a queue pair
//! runs like a polling guest driver (Linux virtio-net's NAPI loop): every
//! descriptor slot of its two vrings owns one fixed buffer for good, RX
//! slots are re-posted the moment their used entry is read, TX slots are
//! refilled in place, avail entries are published (and kicks decided) once
//! per burst, and the backend's calls are suppressed while the guest polls
//! and re-armed only before it sleeps (used_event with EVENT_IDX, the
//! avail ring's NO_INTERRUPT flag without). Nothing here allocates or makes
//! a syscall per frame.
//!
//! Used entries are still untrusted: an id that is not an outstanding slot
//! of this vring is skipped and counted in [`TestFrontend::bad_used`].
//! Once a pair is in fast mode, the general send/recv paths must not be
//! used on it.

use super::{TestFrontend, Vring, CALL_POLL, NET_HDR_LEN};
use anyhow::{ensure, Result};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes per fixed buffer: a virtio-net header plus the largest frame.
const BUF: u64 = 2048;

/// Fixed buffers of one vring in fast mode: slot `s` always uses `bufs[s]`.
pub(super) struct Fixed {
    bufs: Vec<u64>,
    /// Slots the guest holds (TX: free to fill; RX: none after start).
    free: Vec<u16>,
    /// Slots the backend holds.
    out: Vec<bool>,
}

impl Fixed {
    /// Takes back slot `id` from the backend; None if it was not out.
    fn take(&mut self, id: u32) -> Option<u16> {
        let s = u16::try_from(id).ok()?;
        let o = self.out.get_mut(usize::from(s))?;
        if !*o {
            return None;
        }
        *o = false;
        Some(s)
    }
}

/// What one fast RX call consumed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// Frames received.
    pub frames: u64,
    /// Their bytes, without the virtio-net header.
    pub bytes: u64,
}

impl Vring {
    /// Lets the backend call again once it moves past what we consumed.
    fn arm_calls(&self, mem: &GuestMemoryMmap, event_idx: bool) {
        if event_idx {
            self.arm_used_event(mem, true);
        } else {
            super::store16(mem, self.avail, 0, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// Asks the backend not to call: with EVENT_IDX a used_event left
    /// behind is never crossed again (until the index wraps).
    fn suppress_calls(&self, mem: &GuestMemoryMmap, event_idx: bool) {
        if !event_idx {
            super::store16(
                mem,
                self.avail,
                VRING_AVAIL_F_NO_INTERRUPT as u16,
                Ordering::Relaxed,
            );
        }
    }
}

impl TestFrontend {
    /// Switches queue pair `qp` to fixed buffers: every slot of both
    /// vrings gets its own buffer, all RX slots are posted, calls are
    /// suppressed. The pair must have nothing in flight.
    pub fn fast_start(&mut self, qp: u16) -> Result<()> {
        let hdr = self.hdr_len;
        for vi in [2 * usize::from(qp), 2 * usize::from(qp) + 1] {
            ensure!(vi < self.vrings.len(), "queue pair {qp} does not exist");
            let size = self.vrings[vi].size;
            ensure!(
                self.vrings[vi].free.len() == usize::from(size) && self.vrings[vi].fixed.is_none(),
                "vring {vi} has chains in flight or is in fast mode already"
            );
            let mut bufs = Vec::with_capacity(usize::from(size));
            for _ in 0..size {
                let a = self.alloc.alloc(BUF).ok_or_else(|| {
                    anyhow::anyhow!("guest memory too small for {size} fixed buffers")
                })?;
                // A zeroed header once: TX frames never carry offloads.
                let _ = self
                    .guest
                    .mem
                    .write_slice(&[0u8; NET_HDR_LEN][..hdr], GuestAddress(a));
                bufs.push(a);
            }
            let v = &mut self.vrings[vi];
            v.free.clear();
            let rx = vi % 2 == 0;
            let mut fixed = Fixed {
                free: if rx {
                    Vec::new()
                } else {
                    (0..size).rev().collect()
                },
                out: vec![false; usize::from(size)],
                bufs,
            };
            let mem = &self.guest.mem;
            v.suppress_calls(mem, self.event_idx);
            if rx {
                for s in 0..size {
                    v.write_desc(
                        mem,
                        s,
                        super::RawDesc {
                            addr: fixed.bufs[usize::from(s)],
                            len: BUF as u32,
                            flags: super::VRING_DESC_F_WRITE as u16,
                            next: 0,
                        },
                    );
                    v.put_avail(mem, s);
                    fixed.out[usize::from(s)] = true;
                }
                v.publish(mem, self.event_idx);
            }
            v.fixed = Some(fixed);
        }
        Ok(())
    }

    /// Consumes what the backend delivered on RX vring `2*qp`, re-posting
    /// every buffer at once; waits up to `timeout` (re-arming calls) only
    /// when nothing is there. Frames fit one buffer, so one used entry is
    /// one frame.
    pub fn fast_rx(&mut self, qp: u16, timeout: Duration) -> Burst {
        self.fast_rx_with(qp, timeout, |_| {})
    }

    /// [`fast_rx`](Self::fast_rx) handing each frame's bytes (header
    /// removed) to `f` before its buffer is re-posted.
    pub fn fast_rx_with(&mut self, qp: u16, timeout: Duration, mut f: impl FnMut(&[u8])) -> Burst {
        let vi = 2 * usize::from(qp);
        let deadline = Instant::now() + timeout;
        loop {
            let Some(v) = self.vrings.get_mut(vi) else {
                return Burst::default();
            };
            let b = rx_burst(
                v,
                &self.guest.mem,
                &mut self.bad,
                self.hdr_len,
                self.event_idx,
                &mut f,
            );
            if b.frames > 0 {
                return b;
            }
            let now = Instant::now();
            if now >= deadline {
                return b;
            }
            self.fast_wait(vi, deadline - now);
        }
    }

    /// [`fast_rx`](Self::fast_rx) over several pairs: one burst from each,
    /// and a wait on all their calls when none had anything.
    pub fn fast_rx_any(&mut self, qps: &[u16], timeout: Duration) -> Burst {
        let mut total = Burst::default();
        for &qp in qps {
            let b = self.fast_rx(qp, Duration::ZERO);
            total.frames += b.frames;
            total.bytes += b.bytes;
        }
        if total.frames == 0 {
            let vis: Vec<usize> = qps.iter().map(|&q| 2 * usize::from(q)).collect();
            self.fast_wait_all(&vis, timeout);
        }
        total
    }

    /// Sleeps on vring `vi`'s call for up to `timeout` (calls re-armed for
    /// the wait only), unless used entries are already there.
    fn fast_wait(&self, vi: usize, timeout: Duration) {
        self.fast_wait_all(&[vi], timeout);
    }

    /// Sleeps until any of vrings `vis` is called or `timeout` passes
    /// (calls re-armed for the wait only), unless one has used entries.
    fn fast_wait_all(&self, vis: &[usize], timeout: Duration) {
        let (mem, ev) = (&self.guest.mem, self.event_idx);
        let rings: Vec<&Vring> = vis.iter().filter_map(|&i| self.vrings.get(i)).collect();
        for v in &rings {
            v.arm_calls(mem, ev);
        }
        if !rings.iter().any(|v| v.has_used(mem)) {
            let mut fds: Vec<libc::pollfd> = rings
                .iter()
                .map(|v| libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&v.call),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = timeout.min(CALL_POLL).as_millis() as i32;
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the
            // duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            for (v, p) in rings.iter().zip(&fds) {
                if p.revents & libc::POLLIN != 0 && v.call.read().is_ok() {
                    v.call_seen.store(true, Ordering::Relaxed);
                }
            }
        }
        for v in &rings {
            v.suppress_calls(mem, ev);
        }
    }

    /// Queues up to `max` frames on TX vring `2*qp+1`, taking them from
    /// `frames` round-robin starting at `*cursor` (advanced), after reaping
    /// completed slots. Publishes once; returns how many were queued (0
    /// when the ring is full: see [`fast_tx_wait`](Self::fast_tx_wait)).
    pub fn fast_tx(
        &mut self,
        qp: u16,
        frames: &[Vec<u8>],
        cursor: &mut usize,
        max: usize,
    ) -> usize {
        let vi = 2 * usize::from(qp) + 1;
        if frames.is_empty() {
            return 0;
        }
        let hdr = self.hdr_len;
        let mem = &self.guest.mem;
        let Some(v) = self.vrings.get_mut(vi) else {
            return 0;
        };
        let Some(mut fixed) = v.fixed.take() else {
            return 0;
        };
        reap_fixed(v, &mut fixed, mem, &mut self.bad);
        let mut n = 0;
        while n < max {
            let Some(s) = fixed.free.pop() else { break };
            let frame = &frames[*cursor % frames.len()];
            *cursor = cursor.wrapping_add(1);
            queue_tx(v, &mut fixed, mem, s, hdr, frame);
            n += 1;
        }
        if n > 0 {
            v.publish(mem, self.event_idx);
        }
        v.fixed = Some(fixed);
        n
    }

    /// Waits up to `timeout` for the backend to complete TX slots on any
    /// of pairs `qps` (after [`fast_tx`](Self::fast_tx) found them full).
    pub fn fast_tx_wait(&mut self, qps: &[u16], timeout: Duration) {
        let vis: Vec<usize> = qps.iter().map(|&q| 2 * usize::from(q) + 1).collect();
        self.fast_wait_all(&vis, timeout);
    }

    /// Echoes what arrives on pair `qp`: each received frame goes back out
    /// on the pair's TX vring with its MAC addresses swapped (a
    /// request/response peer). Waits up to `timeout` when nothing arrives;
    /// returns how many frames were echoed (a frame is dropped when the TX
    /// ring is full).
    pub fn fast_echo(&mut self, qp: u16, timeout: Duration) -> usize {
        let rxi = 2 * usize::from(qp);
        if rxi + 1 >= self.vrings.len() {
            return 0;
        }
        let (hdr, event_idx) = (self.hdr_len, self.event_idx);
        let (head, tail) = self.vrings.split_at_mut(rxi + 1);
        let (rx, tx) = (&mut head[rxi], &mut tail[0]);
        let Some(mut txf) = tx.fixed.take() else {
            return 0;
        };
        let mem = &self.guest.mem;
        reap_fixed(tx, &mut txf, mem, &mut self.bad);
        let mut echoed = 0;
        let mut out = [0u8; BUF as usize];
        let b = rx_burst(rx, mem, &mut self.bad, hdr, event_idx, |frame| {
            let Some(s) = txf.free.pop() else { return };
            let out = &mut out[..frame.len()];
            out.copy_from_slice(frame);
            if out.len() >= 12 {
                let (dst, src) = out.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
            }
            queue_tx(tx, &mut txf, mem, s, hdr, out);
            echoed += 1;
        });
        if echoed > 0 {
            tx.publish(mem, event_idx);
        }
        tx.fixed = Some(txf);
        if b.frames == 0 {
            self.fast_wait(rxi, timeout);
        }
        echoed
    }
}

/// Consumes the used entries of RX vring `v` in fast mode, handing each
/// frame to `f` and re-posting its buffer; publishes once.
fn rx_burst(
    v: &mut Vring,
    mem: &GuestMemoryMmap,
    bad: &mut u64,
    hdr: usize,
    event_idx: bool,
    mut f: impl FnMut(&[u8]),
) -> Burst {
    let mut b = Burst::default();
    let Some(mut fixed) = v.fixed.take() else {
        return b;
    };
    let mut scratch = [0u8; BUF as usize];
    while let Some((id, len)) = v.pop_used(mem, bad) {
        let Some(s) = fixed.take(id) else {
            *bad += 1;
            continue;
        };
        let n = (len as usize).min(BUF as usize).saturating_sub(hdr);
        b.frames += 1;
        b.bytes += n as u64;
        let data = &mut scratch[..n];
        if mem
            .read_slice(data, GuestAddress(fixed.bufs[usize::from(s)] + hdr as u64))
            .is_ok()
        {
            f(data);
        }
        v.put_avail(mem, s);
        fixed.out[usize::from(s)] = true;
    }
    if b.frames > 0 {
        v.publish(mem, event_idx);
    }
    v.fixed = Some(fixed);
    b
}

/// Returns completed TX slots of `v` to `fixed.free`.
fn reap_fixed(v: &mut Vring, fixed: &mut Fixed, mem: &GuestMemoryMmap, bad: &mut u64) {
    while let Some((id, _)) = v.pop_used(mem, bad) {
        match fixed.take(id) {
            Some(s) => {
                fixed.free.push(s);
                v.completed += 1;
            }
            None => *bad += 1,
        }
    }
}

/// Writes `frame` into slot `s`'s buffer (after the header written once)
/// and makes the slot available (published by the caller).
fn queue_tx(
    v: &mut Vring,
    fixed: &mut Fixed,
    mem: &GuestMemoryMmap,
    s: u16,
    hdr: usize,
    frame: &[u8],
) {
    let addr = fixed.bufs[usize::from(s)];
    let len = frame.len().min(BUF as usize - hdr);
    let _ = mem.write_slice(&frame[..len], GuestAddress(addr + hdr as u64));
    v.write_desc(
        mem,
        s,
        super::RawDesc {
            addr,
            len: (hdr + len) as u32,
            flags: 0,
            next: 0,
        },
    );
    v.put_avail(mem, s);
    fixed.out[usize::from(s)] = true;
}
