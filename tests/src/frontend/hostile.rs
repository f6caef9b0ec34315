//! Hostile guest behaviour of the test frontend, for the hardening tests.
//!
//! [`TestFrontend::flood_tx`] turns one TX vring into a flood: a thread
//! keeps the avail ring full of one and the same chain (a lone virtio-net
//! header, which the backend must reject), re-publishing every entry the
//! backend consumes at once, so the ring is never empty however fast the
//! backend works. Chains sharing descriptors are a driver bug the backend
//! cannot tell from a fast guest; it must bound its work anyway. The
//! flood runs until its [`TxFlood`] guard is dropped; the vring is
//! unusable afterwards (the frontend's bookkeeping of it is stale). The
//! flooding thread runs at the lowest priority (nice 19), as if on a vCPU
//! of its own: it needs little CPU to keep the ring full, and the test's
//! other threads (the wire, the guest's reader) are not starved by it.

use super::{load16, store16, TestFrontend, NET_HDR_LEN};
use anyhow::{ensure, Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the flood kicks the backend at most (its kicks only matter
/// when the backend sleeps; the ring is refilled without them).
const KICK_EVERY: Duration = Duration::from_millis(1);

/// A running TX flood; dropping it stops and joins the flooding thread.
pub struct TxFlood {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TxFlood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxFlood")
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

impl TxFlood {
    /// Avail entries published so far (each one a chain the backend pops).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

impl Drop for TxFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TestFrontend {
    /// Floods TX vring `2*qp+1` with header-only chains (see the module
    /// documentation) until the returned guard is dropped. The vring must
    /// have nothing in flight.
    pub fn flood_tx(&mut self, qp: u16) -> Result<TxFlood> {
        let vi = 2 * usize::from(qp) + 1;
        ensure!(vi < self.vrings.len(), "queue pair {qp} does not exist");
        let hdr = self.alloc(NET_HDR_LEN as u64);
        self.write_guest(hdr, &[0u8; NET_HDR_LEN]);
        let mem = self.guest.mem.clone();
        let v = &mut self.vrings[vi];
        ensure!(
            v.free.len() == usize::from(v.size),
            "vring {vi} has chains in flight"
        );
        let head = v.free.pop().context("a free descriptor slot")?;
        v.write_desc(
            &mem,
            head,
            super::RawDesc {
                addr: hdr,
                len: NET_HDR_LEN as u32,
                flags: 0,
                next: 0,
            },
        );
        let (size, avail, used) = (v.size, v.avail, v.used);
        for pos in 0..u64::from(size) {
            store16(&mem, avail + 4 + 2 * pos, head, Ordering::Relaxed);
        }
        let kick = v.kick.try_clone().context("cloning the kick eventfd")?;
        let mut next = v.next_avail;
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (stop2, published2) = (stop.clone(), published.clone());
        let thread = std::thread::Builder::new()
            .name("tx-flood".into())
            .spawn(move || {
                // The flood stands for a guest vCPU of its own: at the
                // lowest priority it keeps the ring full all the same (it
                // needs a moment now and then), without starving the
                // test's wire and reader threads of this machine's CPUs.
                // SAFETY: setpriority on this thread (tid 0 = the caller);
                // raising one's own nice value needs no privilege.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                let mut last_kick = Instant::now() - KICK_EVERY;
                while !stop2.load(Ordering::Relaxed) {
                    // Everything the backend consumed goes straight back:
                    // the avail index stays a whole ring ahead of the
                    // used index.
                    let target = load16(&mem, used + 2, Ordering::Acquire).wrapping_add(size);
                    let more = target.wrapping_sub(next);
                    if more != 0 && more <= size {
                        next = target;
                        store16(&mem, avail + 2, next, Ordering::Release);
                        published2.fetch_add(u64::from(more), Ordering::Relaxed);
                    }
                    if last_kick.elapsed() >= KICK_EVERY {
                        last_kick = Instant::now();
                        let _ = kick.write(1);
                    }
                    std::hint::spin_loop();
                }
            })
            .context("starting the flood thread")?;
        Ok(TxFlood {
            stop,
            published,
            thread: Some(thread),
        })
    }
}
