//! Walking one descriptor chain of a split virtqueue, trusting nothing.
//!
//! Guest memory is untrusted input. [`walk`] reads a chain from its head,
//! follows `next` links and at most one indirect table, and checks every
//! step: index inside the table, no chain longer than the table (which is
//! how loops end), no nested indirect table, indirect tables of whole
//! descriptors and at most the queue size, and every buffer inside guest
//! memory. It records the buffers in a caller-owned scratch vector (no
//! allocation per chain once it has grown) and returns totals.
//!
//! Work per walk is bounded by the caller's descriptor budget as well as by
//! the queue size: a walk stops with [`ChainError::TooManyDescriptors`] once
//! it has read the descriptors it was given. Zero-length buffers carry no
//! bytes and are not recorded (they still count against both bounds). The
//! receive path gives all the chains of one frame one budget of
//! [`MAX_DESCS_PER_FRAME`] and takes at most [`MAX_CHAINS_PER_FRAME`]
//! chains for a frame (docs/ARCHITECTURE.md, Concurrency rules, rule 6),
//! so a guest that shares descriptors between chains or pads them with
//! empty buffers costs a bounded amount of work per frame, and the scratch
//! vectors stay small.
//!
//! virtio-queue's own `DescriptorChain` iterator stops silently on most of
//! these errors; we need the reason, so the walk is done here. Only the
//! avail ring (pop / roll back) and the used ring go through virtio-queue.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// Descriptors the receive path reads at most for one frame, over all the
/// chains it takes (indirect descriptors and zero-length buffers
/// included). A Linux or DPDK guest needs one to three.
pub const MAX_DESCS_PER_FRAME: u32 = 256;

/// RX chains one frame may take with mergeable buffers (`num_buffers`).
/// Frames are at most one port frame (4 KiB); guests post buffers of 1.5
/// KiB or more, so a frame takes one to three.
pub const MAX_CHAINS_PER_FRAME: usize = 64;

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (RX direction).
    pub writable: bool,
}

/// Totals of a walked chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainInfo {
    /// Bytes in device-readable buffers.
    pub readable: u64,
    /// Bytes in device-writable buffers.
    pub writable: u64,
    /// Whether a readable buffer follows a writable one (spec violation).
    pub misordered: bool,
}

/// Why a chain is malformed. Each of these breaks the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} is outside a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table size.
        size: u16,
    },
    /// More descriptors than the table holds: a loop, or a chain longer
    /// than the ring.
    #[error("chain is longer than its table (a loop)")]
    TooLong,
    /// An indirect descriptor inside an indirect table, or with NEXT set,
    /// or indirect descriptors not negotiated.
    #[error("indirect descriptor is not allowed here")]
    BadIndirect,
    /// An indirect table that is empty, not whole descriptors, or larger
    /// than the queue.
    #[error("indirect table of {len} bytes is invalid")]
    BadIndirectTable {
        /// The table length in bytes.
        len: u32,
    },
    /// A buffer of the wrong direction: readable in an RX chain (TX chains
    /// with writable buffers are rejected, not fatal).
    #[error("RX chain has a device-readable buffer or no writable one")]
    WrongDirection,
    /// One frame's chains have more descriptors than
    /// [`MAX_DESCS_PER_FRAME`] (or the walk's own budget).
    #[error("a frame's chains span more than {MAX_DESCS_PER_FRAME} descriptors")]
    TooManyDescriptors,
    /// One frame would take more than [`MAX_CHAINS_PER_FRAME`] RX chains.
    #[error("a frame would take more than {MAX_CHAINS_PER_FRAME} RX chains")]
    TooManyChains,
    /// The used ring could not be written.
    #[error("the used ring is outside guest memory")]
    UsedRing,
    /// A descriptor or buffer lies (partly) outside guest memory.
    #[error("address {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// Walks the chain starting at `head` of the descriptor table at
/// `desc_table` (a ring of `queue_size` entries), appending its non-empty
/// buffers to `segs` (cleared first). Every descriptor read (an indirect
/// one included) takes one from `budget`; the walk fails with
/// [`ChainError::TooManyDescriptors`] rather than read one more when it is
/// zero.
pub fn walk(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    indirect_ok: bool,
    budget: &mut u32,
    segs: &mut Vec<Segment>,
) -> Result<ChainInfo, ChainError> {
    segs.clear();
    let mut info = ChainInfo::default();
    let mut table = desc_table;
    let mut size = queue_size;
    let mut index = head;
    let mut in_indirect = false;
    // Every descriptor of a chain counts against the queue size, indirect
    // ones included (virtio 1.2, 2.7.5.3.1).
    let mut left = u32::from(queue_size);
    loop {
        if *budget == 0 {
            return Err(ChainError::TooManyDescriptors);
        }
        *budget -= 1;
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        let at =
            table
                .checked_add(u64::from(index) * DESC_SIZE)
                .ok_or(ChainError::OutOfMemory {
                    addr: table.0,
                    len: DESC_SIZE,
                })?;
        let desc: Descriptor = read_obj(mem, at).ok_or(ChainError::OutOfMemory {
            addr: at.0,
            len: DESC_SIZE,
        })?;
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            if in_indirect || !indirect_ok || flags & VRING_DESC_F_NEXT != 0 {
                return Err(ChainError::BadIndirect);
            }
            let len = desc.len();
            let entries = u64::from(len) / DESC_SIZE;
            if len == 0 || u64::from(len) % DESC_SIZE != 0 || entries > u64::from(queue_size) {
                return Err(ChainError::BadIndirectTable { len });
            }
            table = desc.addr();
            size = entries as u16;
            index = 0;
            in_indirect = true;
            continue;
        }
        if left == 0 {
            return Err(ChainError::TooLong);
        }
        left -= 1;
        let len = desc.len();
        if len > 0 && !in_memory(mem, desc.addr(), len) {
            return Err(ChainError::OutOfMemory {
                addr: desc.addr().0,
                len: u64::from(len),
            });
        }
        let writable = flags & VRING_DESC_F_WRITE != 0;
        // An empty buffer carries nothing: not recorded, so it cannot grow
        // the scratch vectors.
        if len > 0 {
            if writable {
                info.writable += u64::from(len);
            } else {
                if info.writable > 0 {
                    info.misordered = true;
                }
                info.readable += u64::from(len);
            }
            segs.push(Segment {
                addr: desc.addr(),
                len,
                writable,
            });
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(info);
        }
        index = desc.next();
    }
}

/// The region holding all of `[addr, addr + len)` and the offset of `addr`
/// in it, if one region holds it all.
#[inline]
fn region_of(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> Option<(&GuestRegionMmap, MemoryRegionAddress)> {
    let r = mem.find_region(addr)?;
    let off = addr.0.checked_sub(r.start_addr().0)?;
    let end = off.checked_add(len as u64)?;
    (end <= r.len()).then_some((r, MemoryRegionAddress(off)))
}

// Guest memory accesses of the data path. A buffer inside one region (the
// common case: a chain's buffers were checked by `walk`) is one region
// lookup and one bounds-checked copy; one that spans regions takes
// vm-memory's general path over the whole memory.

/// Reads `buf.len()` bytes at `addr`; `None` if they are not all guest
/// memory.
#[inline]
fn read_slice(mem: &GuestMemoryMmap, buf: &mut [u8], addr: GuestAddress) -> Option<()> {
    match region_of(mem, addr, buf.len()) {
        Some((r, off)) => r.read_slice(buf, off).ok(),
        None => mem.read_slice(buf, addr).ok(),
    }
}

/// Writes `buf` at `addr`; `None` if it does not all land in guest memory.
#[inline]
fn write_slice(mem: &GuestMemoryMmap, buf: &[u8], addr: GuestAddress) -> Option<()> {
    match region_of(mem, addr, buf.len()) {
        Some((r, off)) => r.write_slice(buf, off).ok(),
        None => mem.write_slice(buf, addr).ok(),
    }
}

/// Reads one `T` at `addr`.
#[inline]
fn read_obj<T: ByteValued + Default>(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<T> {
    let mut v = T::default();
    read_slice(mem, v.as_mut_slice(), addr)?;
    Some(v)
}

/// Whether `[addr, addr + len)` is guest memory. One region lookup in the
/// common case; buffers that span regions take vm-memory's slower walk.
fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    if let Some(r) = mem.find_region(addr) {
        let off = addr.0 - r.start_addr().0;
        if off
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= r.len())
        {
            return true;
        }
    }
    GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// Copies the device-readable bytes of `segs`, skipping the first `skip`
/// bytes, into `out` (which must be exactly as long as what remains).
pub fn read_into(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut skip: usize,
    out: &mut [u8],
) -> Result<(), ChainError> {
    let mut pos = 0;
    for s in segs.iter().filter(|s| !s.writable) {
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(out.len() - pos);
        let addr = s.addr.unchecked_add(skip as u64);
        read_slice(mem, &mut out[pos..pos + take], addr).ok_or(ChainError::OutOfMemory {
            addr: addr.0,
            len: take as u64,
        })?;
        pos += take;
        skip = 0;
        if pos == out.len() {
            break;
        }
    }
    Ok(())
}

/// Writes `parts` (concatenated) into the device-writable buffers of
/// `segs`; returns the bytes written (the used length).
pub fn write_from(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    parts: &[&[u8]],
) -> Result<u32, ChainError> {
    let mut written = 0u32;
    let mut segs = segs.iter().filter(|s| s.writable);
    let mut cur = segs.next();
    let mut seg_off = 0usize;
    for part in parts {
        let mut part = *part;
        while !part.is_empty() {
            let Some(s) = cur else {
                return Ok(written);
            };
            let room = s.len as usize - seg_off;
            if room == 0 {
                cur = segs.next();
                seg_off = 0;
                continue;
            }
            let n = room.min(part.len());
            let addr = s.addr.unchecked_add(seg_off as u64);
            write_slice(mem, &part[..n], addr).ok_or(ChainError::OutOfMemory {
                addr: addr.0,
                len: n as u64,
            })?;
            written += n as u32;
            seg_off += n;
            part = &part[n..];
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: u64 = 0x1000;
    const BUF: u64 = 0x8000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("anonymous guest memory")
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u16, d: Descriptor) {
        m.write_obj(d, GuestAddress(table + u64::from(i) * DESC_SIZE))
            .expect("write descriptor");
    }

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    #[test]
    fn a_two_buffer_chain_is_walked_and_copied() {
        let m = mem();
        put(&m, TABLE, 0, Descriptor::new(BUF, 12, NEXT, 3));
        put(&m, TABLE, 3, Descriptor::new(BUF + 100, 5, 0, 0));
        m.write_slice(&[7; 12], GuestAddress(BUF)).unwrap();
        m.write_slice(b"hello", GuestAddress(BUF + 100)).unwrap();
        let mut segs = Vec::new();
        let mut budget = 64;
        let info = walk(&m, GuestAddress(TABLE), 8, 0, true, &mut budget, &mut segs).unwrap();
        assert_eq!((info.readable, info.writable, segs.len()), (17, 0, 2));
        assert_eq!(budget, 62, "one per descriptor read");
        let mut out = [0u8; 5];
        read_into(&m, &segs, 12, &mut out).unwrap();
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn malformed_chains_are_named() {
        let m = mem();
        let mut segs = Vec::new();
        // Loop: 0 -> 1 -> 0.
        put(&m, TABLE, 0, Descriptor::new(BUF, 4, NEXT, 1));
        put(&m, TABLE, 1, Descriptor::new(BUF, 4, NEXT, 0));
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs),
            Err(ChainError::TooLong)
        );
        // Next out of range.
        put(&m, TABLE, 0, Descriptor::new(BUF, 4, NEXT, 9));
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs),
            Err(ChainError::IndexOutOfRange { index: 9, size: 8 })
        );
        // Buffer outside guest memory.
        put(&m, TABLE, 0, Descriptor::new(0x1f000, 0x2000, 0, 0));
        assert!(matches!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs),
            Err(ChainError::OutOfMemory { .. })
        ));
        // Indirect table not a multiple of 16, indirect not negotiated,
        // nested indirect.
        put(&m, TABLE, 0, Descriptor::new(0x4000, 20, INDIRECT, 0));
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs),
            Err(ChainError::BadIndirectTable { len: 20 })
        );
        put(&m, TABLE, 0, Descriptor::new(0x4000, 32, INDIRECT, 0));
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, false, &mut 64, &mut segs),
            Err(ChainError::BadIndirect)
        );
        put(&m, 0x4000, 0, Descriptor::new(0x5000, 16, INDIRECT, 0));
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs),
            Err(ChainError::BadIndirect)
        );
        // A valid indirect chain of two writable buffers.
        put(&m, 0x4000, 0, Descriptor::new(BUF, 8, WRITE | NEXT, 1));
        put(&m, 0x4000, 1, Descriptor::new(BUF + 8, 8, WRITE, 0));
        let info = walk(&m, GuestAddress(TABLE), 8, 0, true, &mut 64, &mut segs).unwrap();
        assert_eq!((info.readable, info.writable), (0, 16));
        let n = write_from(&m, &segs, &[b"0123", b"456789abcdefXYZ"]).unwrap();
        assert_eq!(n, 16, "writes stop at the end of the buffers");
        let mut back = [0u8; 16];
        m.read_slice(&mut back, GuestAddress(BUF)).unwrap();
        assert_eq!(&back, b"0123456789abcdef");
    }

    #[test]
    fn empty_buffers_are_skipped_and_the_budget_bounds_the_walk() {
        let m = mem();
        let mut segs = Vec::new();
        // 0 (empty) -> 1 (8 bytes) -> 2 (empty) -> 3 (4 bytes), writable.
        put(&m, TABLE, 0, Descriptor::new(BUF, 0, WRITE | NEXT, 1));
        put(&m, TABLE, 1, Descriptor::new(BUF, 8, WRITE | NEXT, 2));
        put(&m, TABLE, 2, Descriptor::new(BUF, 0, WRITE | NEXT, 3));
        put(&m, TABLE, 3, Descriptor::new(BUF + 8, 4, WRITE, 0));
        let mut budget = 10;
        let info = walk(&m, GuestAddress(TABLE), 8, 0, true, &mut budget, &mut segs).unwrap();
        assert_eq!((info.writable, segs.len(), budget), (12, 2, 6));
        assert!(segs.iter().all(|s| s.len > 0), "{segs:?}");
        // The same chain with three descriptors left: refused before the
        // fourth is read.
        let mut budget = 3;
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut budget, &mut segs),
            Err(ChainError::TooManyDescriptors)
        );
        assert_eq!(budget, 0);
        // An indirect descriptor counts too.
        put(&m, TABLE, 0, Descriptor::new(0x4000, 16, INDIRECT, 0));
        put(&m, 0x4000, 0, Descriptor::new(BUF, 8, WRITE, 0));
        let mut budget = 2;
        walk(&m, GuestAddress(TABLE), 8, 0, true, &mut budget, &mut segs).unwrap();
        assert_eq!(budget, 0);
        let mut budget = 1;
        assert_eq!(
            walk(&m, GuestAddress(TABLE), 8, 0, true, &mut budget, &mut segs),
            Err(ChainError::TooManyDescriptors)
        );
    }

    /// A buffer across two regions takes the general path and is copied
    /// whole; one past the end of memory is refused.
    #[test]
    fn buffers_spanning_regions_are_copied_and_outside_ones_refused() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .expect("two regions");
        let at = 0x10000 - 6;
        let segs = [Segment {
            addr: GuestAddress(at),
            len: 12,
            writable: true,
        }];
        assert_eq!(write_from(&m, &segs, &[b"0123456789ab"]), Ok(12));
        let ro = [Segment {
            writable: false,
            ..segs[0]
        }];
        let mut out = [0u8; 12];
        read_into(&m, &ro, 0, &mut out).unwrap();
        assert_eq!(&out, b"0123456789ab");
        let past = [Segment {
            addr: GuestAddress(0x20000 - 4),
            len: 8,
            writable: true,
        }];
        assert!(matches!(
            write_from(&m, &past, &[b"01234567"]),
            Err(ChainError::OutOfMemory { .. })
        ));
        assert_eq!(read_obj::<u64>(&m, GuestAddress(0x20000 - 4)), None);
        assert_eq!(
            read_obj::<u32>(&m, GuestAddress(at + 4)),
            Some(u32::from_ne_bytes(*b"4567"))
        );
    }
}
