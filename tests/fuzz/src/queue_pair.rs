//! Target `queue_pair`: `QueuePair::process_rx` and `process_tx` over a
//! `MemPort`, with arbitrary guest rings, indices, features and port
//! geometry; the fuzzer plays the guest driver and the wire.
//!
//! Input, in order:
//! - the memory [`Layout`] (large regions allowed, for 32768-entry rings);
//! - features (bit 0 MRG_RXBUF, bit 1 INDIRECT_DESC), the MTU (`u16`, 0 =
//!   1500, else 68 + v % 8933), the port (frame size bit, RX frames, TX
//!   frames; 0 = 64);
//! - the RX vring, then the TX vring ([`VringSpec`]): size code, the three
//!   ring address fields, next avail and next used, flags;
//! - then operations ([`Op`]) until the input ends (at most [`MAX_OPS`]):
//!   frames onto the port, `process_rx`, `process_tx`, raw pokes,
//!   descriptor writes and fills, avail entries, a raw avail index, vring
//!   resets and state changes.
//!
//! Properties, checked around every `process_rx` / `process_tx`:
//! - pops are bounded: a TX call pops at most [`TX_POP_BUDGET`] chains
//!   (`TX_ROUNDS` batches of `BATCH`, rejected chains included); no call
//!   pops more than the guest made available;
//! - frames are conserved: every frame RX takes from the port is
//!   delivered, handed off or counted as dropped, and goes back to the
//!   port; over the run, every frame the port took is consumed or still
//!   queued; every TX chain popped is sent (the port got it) or counted as
//!   rejected, and gets its used entry;
//! - used entries are valid: RX uses exactly the chains it popped, in
//!   avail order, with lengths within each chain's writable capacity and
//!   adding up to the delivered bytes plus headers, and each delivered
//!   frame reads back from guest memory with its header (`num_buffers`)
//!   and exact bytes; TX uses exactly the popped chains, with length 0;
//!   the used index is published.
//!
//! The used-entry checks need guest memory the device did not overwrite
//! behind the model's back: they are made when the used ring, the avail
//! ring, the descriptor table, the indirect tables and the buffers the
//! popped chains name do not overlap (the model's walk, [`Model`], bounded
//! in work). A guest that overlaps them still gets every other check.

use crate::guest::Layout;
use crate::input::Reader;
use std::sync::Arc;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use xdpath_dataplane::handoff::Peers;
use xdpath_dataplane::port::BATCH;
use xdpath_dataplane::queue_pair::{DataPathFeatures, GuestLink, QueuePair};
use xdpath_dataplane::switch::{GuestSwitch, Port as SwitchPort, SwitchTable, TxGuard};
use xdpath_dataplane::virtio_net::{rx_header, HDR_LEN};
use xdpath_dataplane::{CounterSnapshot, FramePort, MemPort};

/// Operations per input at most.
pub const MAX_OPS: usize = 256;
/// Most chains one `process_tx` may pop: `TX_ROUNDS` (4) batches of
/// `BATCH`, every popped chain counted (docs/ARCHITECTURE.md, "One frame,
/// guest to wire", and Concurrency rules, rule 6).
pub const TX_POP_BUDGET: u16 = 4 * BATCH as u16;
/// Largest vring (and the queues' maximum).
const MAX_QUEUE: u16 = 32768;
/// Avail entries the model looks at per call (more popped chains than
/// this are not checked one by one; the code under test has no such
/// excuse).
const MODEL_WINDOW: u16 = 512;
/// Descriptors the model reads per call at most.
const MODEL_BUDGET: usize = 8192;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Operation codes (the op byte modulo [`OP_COUNT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `n` (1 + byte % 64) frames of one length (`u16`, 0 = 60) onto the
    /// port, bytes from a seed byte.
    Frames = 0,
    /// `process_rx`.
    Rx = 1,
    /// `process_tx`.
    Tx = 2,
    /// Address field, length byte, bytes: written into guest memory.
    Poke = 3,
    /// Vring byte, index, address field, `len` (u32), flags (u16), next.
    Desc = 4,
    /// Vring byte, head (u16), count byte (1 + n), stride (u16): that many
    /// avail entries (head, head + stride, ...), then the avail index.
    Avail = 5,
    /// Vring byte, first index, count (u16), address field, address step
    /// (u16), `len` (u32), flags (u16): descriptors first.. each with
    /// `next` = its index + 1 (a long chain).
    Fill = 6,
    /// Flags byte: bit 0 resets RX, bit 1 TX (the frontend's
    /// GET_VRING_BASE); the mailbox is applied.
    Reset = 7,
    /// Vring byte, raw avail index (u16).
    AvailIdx = 8,
    /// Vring byte, flags: bit 0 not ready, bit 1 disabled.
    State = 9,
}

/// How many [`Op`]s there are.
pub const OP_COUNT: u8 = 10;

impl Op {
    fn from_byte(b: u8) -> Self {
        match b % OP_COUNT {
            0 => Op::Frames,
            1 => Op::Rx,
            2 => Op::Tx,
            3 => Op::Poke,
            4 => Op::Desc,
            5 => Op::Avail,
            6 => Op::Fill,
            7 => Op::Reset,
            8 => Op::AvailIdx,
            _ => Op::State,
        }
    }
}

/// A vring as the input gives it.
#[derive(Debug, Clone, Copy)]
pub struct VringSpec {
    /// `size = 1 << ((code + 8) % 16)` (0 = 256); a code of 16 or more
    /// means a raw `u16` size follows (invalid sizes are ignored by the
    /// queue, which keeps its maximum).
    pub size_code: u8,
}

/// Reads a vring and builds it.
fn read_vring(r: &mut Reader<'_>, layout: &Layout, mem: &Mem) -> VringRwLock {
    let code = r.u8();
    let size = if code >= 16 {
        r.u16()
    } else {
        1u16 << ((code + 8) % 16)
    };
    let desc = layout.addr(r);
    let avail = layout.addr(r);
    let used = layout.addr(r);
    let next_avail = r.u16();
    let next_used = r.u16();
    let flags = r.u8();
    let vring = VringRwLock::new(mem.clone(), MAX_QUEUE).expect("a valid maximum");
    vring.set_queue_size(size);
    // Misaligned addresses are refused and leave the ring unset.
    let _ = vring.set_queue_info(desc, avail, used);
    vring.set_queue_next_avail(next_avail);
    vring.set_queue_next_used(next_used);
    vring.set_queue_event_idx(flags & 1 != 0);
    vring.set_queue_ready(flags & 2 == 0);
    vring.set_enabled(flags & 4 == 0);
    vring
}

/// The queue state the checks need.
#[derive(Debug, Clone, Copy)]
struct QueueState {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

fn queue_state(v: &VringRwLock) -> QueueState {
    let s = v.get_ref();
    let q = s.get_queue();
    QueueState {
        size: q.size(),
        desc: q.desc_table(),
        avail: q.avail_ring(),
        used: q.used_ring(),
        next_avail: q.next_avail(),
        next_used: q.next_used(),
    }
}

fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> Option<u16> {
    mem.read_obj::<u16>(GuestAddress(addr))
        .ok()
        .map(u16::from_le)
}

/// One chain as the model walks it.
#[derive(Debug, Clone, Default)]
struct ModelChain {
    /// Writable buffers `(addr, len)`, in order.
    writable: Vec<(u64, u64)>,
    /// Sum of the writable lengths.
    capacity: u64,
    /// What the device reads to follow it: indirect tables, readable
    /// buffers.
    reads: Vec<(u64, u64)>,
}

/// The model's view, before a call, of the chains it may pop: for the
/// first entries of the avail window (at most [`MODEL_WINDOW`], within
/// [`MODEL_BUDGET`] descriptors), their writable buffers and what the
/// device reads to find them.
#[derive(Debug, Default)]
struct Model {
    /// Entries between next avail and the avail index, if the index reads
    /// and is not past the ring.
    pending: Option<u16>,
    /// The avail ring and the descriptor table.
    rings: Vec<(u64, u64)>,
    /// Heads of the first window entries, each with its walked chain.
    chains: Vec<(u16, ModelChain)>,
}

impl Model {
    /// Walks the first chains of the avail window the way the spec reads
    /// them (NEXT links, one level of indirect tables), bounded per chain
    /// by the queue size and in total by [`MODEL_BUDGET`].
    fn read(mem: &GuestMemoryMmap, q: &QueueState) -> Self {
        let mut m = Model::default();
        let size = u64::from(q.size);
        m.rings.push((q.avail, 6 + 2 * size));
        m.rings.push((q.desc, 16 * size));
        if q.size == 0 {
            return m;
        }
        let Some(idx) = read_u16(mem, q.avail.wrapping_add(2)) else {
            return m;
        };
        let pending = idx.wrapping_sub(q.next_avail);
        if pending > q.size {
            return m;
        }
        m.pending = Some(pending);
        let mut budget = MODEL_BUDGET;
        'window: for k in 0..pending.min(MODEL_WINDOW) {
            let slot = u64::from(q.next_avail.wrapping_add(k) % q.size);
            let Some(head) = read_u16(mem, q.avail.wrapping_add(4 + 2 * slot)) else {
                break;
            };
            let mut chain = ModelChain::default();
            let (mut table, mut tsize, mut i) = (q.desc, q.size, head);
            let mut indirect = false;
            let mut steps = 0u32;
            loop {
                if budget == 0 {
                    break 'window;
                }
                budget -= 1;
                if i >= tsize || steps > u32::from(q.size) {
                    break;
                }
                steps += 1;
                let at = table.wrapping_add(16 * u64::from(i));
                let Ok(d) = mem.read_obj::<[u8; 16]>(GuestAddress(at)) else {
                    break;
                };
                let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
                let len = u64::from(u32::from_le_bytes(d[8..12].try_into().expect("4 bytes")));
                let flags = u32::from(u16::from_le_bytes([d[12], d[13]]));
                let next = u16::from_le_bytes([d[14], d[15]]);
                if flags & VRING_DESC_F_INDIRECT != 0 {
                    if indirect || len < 16 {
                        break;
                    }
                    indirect = true;
                    chain.reads.push((addr, len));
                    table = addr;
                    tsize = u16::try_from(len / 16).unwrap_or(u16::MAX);
                    i = 0;
                    continue;
                }
                if flags & VRING_DESC_F_WRITE != 0 {
                    chain.writable.push((addr, len));
                    chain.capacity += len;
                } else {
                    chain.reads.push((addr, len));
                }
                if flags & VRING_DESC_F_NEXT == 0 {
                    break;
                }
                i = next;
            }
            m.chains.push((head, chain));
        }
        m
    }

    /// The first `n` chains, if the model walked that many.
    fn popped(&self, n: u16) -> Option<&[(u16, ModelChain)]> {
        self.chains.get(..usize::from(n))
    }
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    let (a_end, b_end) = (a.0.saturating_add(a.1), b.0.saturating_add(b.1));
    a.1 > 0 && b.1 > 0 && a.0 < b_end && b.0 < a_end
}

/// The used ring's bytes (with the avail-event field).
fn used_range(q: &QueueState) -> (u64, u64) {
    (q.used, 6 + 8 * u64::from(q.size))
}

/// Sum of the counters whose names start with `prefix`.
fn sum_prefix(c: &CounterSnapshot, prefix: &str) -> u64 {
    c.fields()
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

fn delta(after: &CounterSnapshot, before: &CounterSnapshot, name: &str) -> u64 {
    let get = |c: &CounterSnapshot| {
        c.fields()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    };
    get(after) - get(before)
}

/// The harness: one queue pair, its port, the guest's memory and vrings,
/// and what the wire gave the port.
struct Harness {
    layout: Layout,
    mem: Mem,
    rx: VringRwLock,
    tx: VringRwLock,
    qp: QueuePair<MemPort>,
    features: DataPathFeatures,
    /// Frames the port took, in order, with a running index.
    pushed: Vec<Vec<u8>>,
    /// Frames `process_rx` consumed so far (an index into `pushed`).
    consumed: usize,
}

impl Harness {
    fn counters(&mut self) -> CounterSnapshot {
        self.qp.flush_counters();
        self.qp.counters().snapshot()
    }

    fn port_counts(&self) -> xdpath_dataplane::mem_port::MemPortCounts {
        self.qp.port().expect("the pair keeps its port").counts()
    }

    fn rx(&mut self) {
        let mem = self.mem.memory();
        let q0 = queue_state(&self.rx);
        let model = Model::read(&mem, &q0);
        let c0 = self.counters();
        let p0 = self.port_counts();
        self.qp.process_rx(&self.rx, &self.mem, self.features);
        let c1 = self.counters();
        let p1 = self.port_counts();
        let q1 = queue_state(&self.rx);

        let consumed = p1.rx_consumed - p0.rx_consumed;
        assert_eq!(
            p1.rx_released - p0.rx_released,
            consumed,
            "every RX frame taken goes back to the port"
        );
        assert!(consumed <= BATCH as u64, "{consumed} frames in one batch");
        let delivered = delta(&c1, &c0, "rx_frames");
        let outcomes = delivered
            + (sum_prefix(&c1, "rx_drop_") - sum_prefix(&c0, "rx_drop_"))
            + delta(&c1, &c0, "rx_bad_chain")
            + delta(&c1, &c0, "rx_handed_off");
        assert_eq!(
            outcomes, consumed,
            "RX frames taken from the port = delivered + handed off + dropped ({c0:?} -> {c1:?})"
        );
        let first_frame = self.consumed;
        self.consumed += consumed as usize;

        let popped = q1.next_avail.wrapping_sub(q0.next_avail);
        let used = q1.next_used.wrapping_sub(q0.next_used);
        let broken = delta(&c1, &c0, "bad_descriptor") + delta(&c1, &c0, "bad_avail_index") > 0;
        let chains = model.popped(popped);
        let clean = chains.is_some_and(|c| self.clean_for_rx(&model, c, &q0));
        if let (true, Some(pending)) = (clean, model.pending) {
            assert!(
                popped <= pending,
                "RX popped {popped} chains of {pending} available"
            );
        }
        assert!(used <= popped, "RX used {used} chains but popped {popped}");
        if broken {
            return;
        }
        assert_eq!(used, popped, "RX uses every chain it keeps");
        if !self.features.mrg_rxbuf {
            assert_eq!(u64::from(used), delivered, "one chain per frame");
        } else {
            assert!(u64::from(used) >= delivered, "at least a chain per frame");
        }
        let (true, Some(chains)) = (clean, chains) else {
            return;
        };
        if used == 0 {
            return;
        }
        let entries = read_used(&mem, &q0, used);
        assert_eq!(
            read_u16(&mem, q0.used.wrapping_add(2)),
            Some(q1.next_used),
            "the used index is published"
        );
        let ids: Vec<u16> = entries.iter().map(|e| e.0).collect();
        let heads: Vec<u16> = chains.iter().map(|c| c.0).collect();
        assert_eq!(ids, heads, "RX uses the chains it popped, in order");
        let mut total = 0u64;
        for (&(id, len), (_, chain)) in entries.iter().zip(chains) {
            assert!(
                u64::from(len) <= chain.capacity,
                "used length {len} of chain {id} exceeds its {} writable bytes",
                chain.capacity
            );
            total += u64::from(len);
        }
        assert_eq!(
            total,
            delta(&c1, &c0, "rx_bytes") + HDR_LEN as u64 * delivered,
            "used lengths = delivered bytes + one header per frame"
        );
        let frames = &self.pushed[first_frame..first_frame + consumed as usize];
        self.check_rx_contents(&mem, &entries, chains, frames);
    }

    /// No byte the device writes (used ring, the popped chains' writable
    /// buffers) overlaps anything it reads to find chains (avail ring,
    /// descriptor table, indirect tables, readable buffers), and the
    /// writable buffers do not overlap each other, so the model's view of
    /// guest memory stays true through the call.
    fn clean_for_rx(&self, model: &Model, chains: &[(u16, ModelChain)], q: &QueueState) -> bool {
        let used = used_range(q);
        if !self.layout.contains(used.0, used.1) {
            return false;
        }
        let writes: Vec<(u64, u64)> = std::iter::once(used)
            .chain(chains.iter().flat_map(|c| c.1.writable.iter().copied()))
            .collect();
        let reads: Vec<(u64, u64)> = model
            .rings
            .iter()
            .copied()
            .chain(chains.iter().flat_map(|c| c.1.reads.iter().copied()))
            .collect();
        if writes.len() + reads.len() > 4096 {
            return false;
        }
        for (i, &w) in writes.iter().enumerate() {
            if reads.iter().any(|&r| overlap(w, r))
                || writes[i + 1..].iter().any(|&o| overlap(w, o))
            {
                return false;
            }
        }
        true
    }

    /// Each delivered frame reads back, header first, from the chains it
    /// used; frames are delivered in order (dropped ones skipped).
    fn check_rx_contents(
        &self,
        mem: &GuestMemoryMmap,
        entries: &[(u16, u32)],
        chains: &[(u16, ModelChain)],
        frames: &[Vec<u8>],
    ) {
        let mut next_frame = 0;
        let mut i = 0;
        while i < entries.len() {
            // The header may span chains (a driver should not post
            // buffers shorter than it, but may).
            let mut bytes = Vec::new();
            let mut k = i;
            while bytes.len() < HDR_LEN && k < entries.len() {
                bytes.extend(read_chain(mem, &chains[k].1, entries[k].1));
                k += 1;
            }
            assert!(bytes.len() >= HDR_LEN, "the used RX chains hold a header");
            let n = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
            assert!(
                n >= k - i && i + n <= entries.len(),
                "num_buffers {n} at used entry {i} of {}",
                entries.len()
            );
            assert!(
                self.features.mrg_rxbuf || n == 1,
                "num_buffers {n} without MRG_RXBUF"
            );
            for ((_, chain), e) in chains[k..i + n].iter().zip(&entries[k..i + n]) {
                bytes.extend(read_chain(mem, chain, e.1));
            }
            assert_eq!(bytes[..HDR_LEN], rx_header(n as u16), "the RX header");
            let got = &bytes[HDR_LEN..];
            let found = frames[next_frame..].iter().position(|f| f[..] == *got);
            let Some(pos) = found else {
                panic!(
                    "a delivered frame ({} bytes) is none of the frames taken, in order",
                    got.len()
                );
            };
            next_frame += pos + 1;
            i += n;
        }
    }

    fn tx(&mut self) {
        let mem = self.mem.memory();
        let q0 = queue_state(&self.tx);
        let model = Model::read(&mem, &q0);
        let c0 = self.counters();
        let p0 = self.port_counts();
        self.qp.process_tx(&self.tx, &self.mem, self.features);
        let c1 = self.counters();
        let p1 = self.port_counts();
        let q1 = queue_state(&self.tx);

        let sent = delta(&c1, &c0, "tx_frames");
        assert_eq!(
            p1.tx_frames - p0.tx_frames,
            sent,
            "TX frames counted = frames the port sent"
        );
        assert_eq!(
            p1.tx_bytes - p0.tx_bytes,
            delta(&c1, &c0, "tx_bytes"),
            "TX bytes counted = bytes the port sent"
        );
        // Every chain is sent, switched to another guest, or rejected
        // (tx_drop_*, spoofed and undeliverable switched frames included).
        let rejected = sum_prefix(&c1, "tx_drop_") - sum_prefix(&c0, "tx_drop_")
            + delta(&c1, &c0, "tx_switched");
        let popped = q1.next_avail.wrapping_sub(q0.next_avail);
        let used = q1.next_used.wrapping_sub(q0.next_used);
        let broken = delta(&c1, &c0, "bad_descriptor");
        assert!(
            popped <= TX_POP_BUDGET,
            "one process_tx popped {popped} chains (budget {TX_POP_BUDGET}); sent {sent}, rejected {rejected}"
        );
        let used_ring_ok = self.layout.contains(q0.used, 6 + 8 * u64::from(q0.size));
        let chains = model.popped(popped);
        // The device writes only the used ring: nothing it reads may be
        // under it.
        let clean = used_ring_ok
            && chains.is_some_and(|c| {
                let u = used_range(&q0);
                !model
                    .rings
                    .iter()
                    .chain(c.iter().flat_map(|c| c.1.reads.iter()))
                    .any(|&r| overlap(u, r))
            });
        if let (true, Some(pending)) = (clean, model.pending) {
            assert!(
                popped <= pending,
                "TX popped {popped} chains of {pending} available"
            );
        }
        assert!(
            u64::from(used) <= sent + rejected,
            "TX used {used} chains, sent {sent}, rejected {rejected}"
        );
        if !used_ring_ok {
            return;
        }
        assert_eq!(
            u64::from(used),
            sent + rejected,
            "every TX chain popped is sent or rejected, and used"
        );
        assert_eq!(
            u64::from(popped),
            u64::from(used) + broken,
            "TX pops = used chains + the malformed one that stopped the vring"
        );
        let (true, Some(chains)) = (clean, chains) else {
            return;
        };
        if used == 0 {
            return;
        }
        let entries = read_used(&mem, &q0, used);
        let mut ids: Vec<u16> = entries.iter().map(|e| e.0).collect();
        // The malformed chain, if any, was popped last.
        let mut want: Vec<u16> = chains[..usize::from(used)].iter().map(|c| c.0).collect();
        ids.sort_unstable();
        want.sort_unstable();
        assert_eq!(ids, want, "TX uses exactly the chains it popped");
        assert!(entries.iter().all(|e| e.1 == 0), "TX used lengths are 0");
    }
}

/// `n` used entries from the slot of `q.next_used` on.
fn read_used(mem: &GuestMemoryMmap, q: &QueueState, n: u16) -> Vec<(u16, u32)> {
    (0..n)
        .map(|k| {
            let slot = u64::from(q.next_used.wrapping_add(k) % q.size);
            let e: [u8; 8] = mem
                .read_obj(GuestAddress(q.used.wrapping_add(4 + 8 * slot)))
                .expect("the used ring is memory");
            let id = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(e[4..8].try_into().expect("4 bytes"));
            let id = u16::try_from(id).unwrap_or_else(|_| panic!("used id {id} is not a u16"));
            (id, len)
        })
        .collect()
}

/// The first `len` bytes of a chain's writable buffers.
fn read_chain(mem: &GuestMemoryMmap, c: &ModelChain, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut left = u64::from(len);
    for &(addr, l) in &c.writable {
        let take = l.min(left);
        let mut buf = vec![0u8; take as usize];
        mem.read_slice(&mut buf, GuestAddress(addr))
            .expect("a used buffer is memory");
        out.extend(buf);
        left -= take;
        if left == 0 {
            break;
        }
    }
    out
}

/// Runs one input; returns the pair's counters (for the seeds' tests).
pub fn run(data: &[u8]) -> CounterSnapshot {
    let mut r = Reader::new(data);
    let layout = Layout::read(&mut r, true);
    let mem: Mem = GuestMemoryAtomic::new(layout.memory());
    let fbits = r.u8();
    let features = DataPathFeatures {
        mrg_rxbuf: fbits & 1 != 0,
        indirect: fbits & 2 != 0,
    };
    let mtu = match r.u16() {
        0 => 1500,
        v => 68 + v % 8933,
    };
    let frame_size = if r.bool() { 4096 } else { 2048 };
    let rx_frames = match r.u8() {
        0 => 64,
        v => usize::from(v),
    };
    let tx_frames = match r.u8() {
        0 => 64,
        v => usize::from(v),
    };
    let rx = read_vring(&mut r, &layout, &mem);
    let tx = read_vring(&mut r, &layout, &mem);
    let port = MemPort::new(rx_frames, tx_frames, frame_size).expect("eventfd");
    let peers = Arc::new(Peers::new(1, frame_size).expect("handoff eventfd"));
    let mut qp = QueuePair::new(0, port, mtu, peers.clone()).expect("timerfd");
    if fbits & 4 != 0 {
        // One guest of two: its frames are checked (anti-spoofing, with a
        // MAC and an address from the input) and switched to the other
        // guest (connected or not) by their destination MAC.
        let mac = [0x52, 0x54, 0, 0, 0, r.u8()];
        let other_mac = [0x52, 0x54, 0, 0, 1, r.u8()];
        let other = Arc::new(Peers::new(1, frame_size).expect("handoff eventfd"));
        other.set_enabled(0, fbits & 8 != 0);
        let switch = Arc::new(GuestSwitch::new());
        switch.publish(SwitchTable::new(vec![
            SwitchPort { id: 1, mac, peers },
            SwitchPort {
                id: 2,
                mac: other_mac,
                peers: other,
            },
        ]));
        let guard = if fbits & 16 != 0 {
            TxGuard::new(mac, &[std::net::IpAddr::from([10, 0, 0, r.u8()])])
        } else {
            TxGuard::off()
        };
        qp.set_link(Some(GuestLink {
            id: 1,
            switch,
            guard,
        }));
    }
    let mut h = Harness {
        layout,
        mem,
        rx,
        tx,
        qp,
        features,
        pushed: Vec::new(),
        consumed: 0,
    };

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match Op::from_byte(r.u8()) {
            Op::Frames => {
                let n = 1 + r.u8() % 64;
                let len = match r.u16() {
                    0 => 60,
                    v => usize::from(v),
                };
                let seed = r.u8();
                let port = h.qp.port_mut().expect("the pair keeps its port");
                // Longer than a port frame: refused (one is enough to see
                // it; building megabytes of them is not).
                let len = len.min(port.max_frame_len() + 1);
                let mut f: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                    .collect();
                for k in 0..n {
                    // Each frame differs in its first byte.
                    f[0] = seed ^ k;
                    if port.push_rx(&f) {
                        h.pushed.push(f.clone());
                    }
                }
            }
            Op::Rx => h.rx(),
            Op::Tx => h.tx(),
            Op::Poke => {
                let at = h.layout.addr(&mut r);
                let len = usize::from(r.u8());
                let bytes = r.bytes(len);
                h.layout.poke(&h.mem.memory(), at, bytes);
            }
            Op::Desc => {
                let v = h.vring(r.u8());
                let index = r.u16();
                let addr = h.layout.addr(&mut r);
                let (len, flags, next) = (r.u32(), r.u16(), r.u16());
                let q = queue_state(v);
                let at = q.desc.wrapping_add(16 * u64::from(index));
                h.layout
                    .poke(&h.mem.memory(), at, &descriptor(addr, len, flags, next));
            }
            Op::Avail => {
                let v = h.vring(r.u8());
                let (head, count, stride) = (r.u16(), 1 + u16::from(r.u8()), r.u16());
                let q = queue_state(v);
                let mem = h.mem.memory();
                let idx = read_u16(&mem, q.avail.wrapping_add(2)).unwrap_or(0);
                if q.size > 0 {
                    for k in 0..count {
                        let slot = u64::from(idx.wrapping_add(k) % q.size);
                        let e = head.wrapping_add(k.wrapping_mul(stride));
                        h.layout
                            .poke(&mem, q.avail.wrapping_add(4 + 2 * slot), &e.to_le_bytes());
                    }
                }
                h.layout.poke(
                    &mem,
                    q.avail.wrapping_add(2),
                    &idx.wrapping_add(count).to_le_bytes(),
                );
            }
            Op::Fill => {
                let v = h.vring(r.u8());
                let (first, count) = (r.u16(), r.u16());
                let addr = h.layout.addr(&mut r);
                let (step, len, flags) = (r.u16(), r.u32(), r.u16());
                let q = queue_state(v);
                let n = count.min(q.size.saturating_sub(first));
                let mut table = Vec::with_capacity(16 * usize::from(n));
                for k in 0..n {
                    let a = addr.wrapping_add(u64::from(k) * u64::from(step));
                    let next = first.wrapping_add(k).wrapping_add(1);
                    table.extend_from_slice(&descriptor(a, len, flags, next));
                }
                let at = q.desc.wrapping_add(16 * u64::from(first));
                h.layout.poke(&h.mem.memory(), at, &table);
            }
            Op::Reset => {
                let f = r.u8();
                let mb = h.qp.mailbox();
                if f & 1 != 0 {
                    mb.reset_rx
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                if f & 2 != 0 {
                    mb.reset_tx
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                h.qp.apply_mailbox();
            }
            Op::AvailIdx => {
                let v = h.vring(r.u8());
                let idx = r.u16();
                let q = queue_state(v);
                h.layout
                    .poke(&h.mem.memory(), q.avail.wrapping_add(2), &idx.to_le_bytes());
            }
            Op::State => {
                let v = h.vring(r.u8());
                let f = r.u8();
                v.set_queue_ready(f & 1 == 0);
                v.set_enabled(f & 2 == 0);
            }
        }
    }
    let port = h.qp.port().expect("the pair keeps its port");
    assert_eq!(
        h.pushed.len() as u64,
        port.counts().rx_consumed + port.rx_queued() as u64,
        "every frame the port took was consumed or is still queued"
    );
    h.counters()
}

impl Harness {
    fn vring(&self, b: u8) -> &VringRwLock {
        if b & 1 == 0 {
            &self.rx
        } else {
            &self.tx
        }
    }
}

/// A split-ring descriptor's 16 bytes.
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}
