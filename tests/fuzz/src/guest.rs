//! Guest memory for the data-path targets: several anonymous regions with
//! gaps between them, addresses named relative to a region, and a model
//! of that memory to check accesses against.
//!
//! A [`Layout`] is read from the input: one to four regions, in address
//! order, each some pages long, with zero to three pages of gap before it
//! (so buffers can span two adjacent regions, or run into a hole). An
//! address field ([`Layout::addr`]) names a region and an offset into it,
//! which may run past the region's end on purpose, or (selector 0xff) is
//! any 64-bit value. [`Layout::contains`] is the model's answer to "is
//! this range guest memory", written independently of vm-memory and of
//! the code under test.

use crate::input::{Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Page size of the layout's units.
pub const PAGE: u64 = 0x1000;

/// The selector of an address field that carries a raw 64-bit address.
pub const RAW_ADDR: u8 = 0xff;

/// Guest memory regions: `(start, length)`, sorted, not overlapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The regions.
    pub regions: Vec<(u64, u64)>,
}

/// How a layout is written in an input (see [`Layout::read`]).
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec {
    /// Pages of gap before the region (the first region: its start, in
    /// pages); 0 to 3.
    pub gap_pages: u8,
    /// Size code: 0..=127 is 1 to 8 pages (`code % 8 + 1`); 128 and up is
    /// `64 << (code % 4)` pages (256 KiB to 2 MiB), for large rings.
    pub size_code: u8,
}

impl Layout {
    /// Reads a layout: a region count byte (1 + n % 4), then per region a
    /// gap byte and a size byte ([`RegionSpec`]). Large regions are
    /// allowed only if `large` (they cost nothing until touched, but a
    /// target that copies all of memory wants small ones).
    pub fn read(r: &mut Reader<'_>, large: bool) -> Self {
        let n = 1 + usize::from(r.u8() % 4);
        let mut regions = Vec::with_capacity(n);
        let mut at = 0u64;
        for _ in 0..n {
            let gap = u64::from(r.u8() % 4) * PAGE;
            let code = r.u8();
            let pages = if code >= 128 && large {
                64u64 << (code % 4)
            } else {
                u64::from(code % 8) + 1
            };
            let start = at + gap;
            regions.push((start, pages * PAGE));
            at = start + pages * PAGE;
        }
        Self { regions }
    }

    /// Writes a layout for [`Layout::read`].
    pub fn write(w: &mut Writer, regions: &[RegionSpec]) {
        w.u8((regions.len() as u8).wrapping_sub(1));
        for s in regions {
            w.u8(s.gap_pages).u8(s.size_code);
        }
    }

    /// Anonymous memory with this layout.
    pub fn memory(&self) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = self
            .regions
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("anonymous guest memory")
    }

    /// The start of region `i` (modulo the region count).
    pub fn region_start(&self, i: u8) -> u64 {
        self.regions[usize::from(i) % self.regions.len()].0
    }

    /// Reads an address field: a selector byte, then either an offset
    /// (u16) into region `selector % n`, or (selector [`RAW_ADDR`]) a raw
    /// u64.
    pub fn addr(&self, r: &mut Reader<'_>) -> u64 {
        let sel = r.u8();
        if sel == RAW_ADDR {
            return r.u64();
        }
        self.region_start(sel) + u64::from(r.u16())
    }

    /// Writes an address field naming `offset` in region `region`.
    pub fn write_addr(w: &mut Writer, region: u8, offset: u16) {
        w.u8(region).u16(offset);
    }

    /// Writes a raw address field.
    pub fn write_raw_addr(w: &mut Writer, addr: u64) {
        w.u8(RAW_ADDR).u64(addr);
    }

    /// Whether every byte of `[addr, addr + len)` lies in some region
    /// (the model; regions may be adjacent). An empty range is inside.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        for &(s, l) in &self.regions {
            if at >= s && at < s + l {
                at = s + l;
                if at >= end {
                    return true;
                }
            }
        }
        false
    }

    /// Total bytes of memory.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }

    /// Copies all of memory, region by region.
    pub fn snapshot(&self, mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
        self.regions
            .iter()
            .map(|&(s, l)| {
                let mut v = vec![0u8; l as usize];
                mem.read_slice(&mut v, GuestAddress(s))
                    .expect("a region reads whole");
                v
            })
            .collect()
    }

    /// The byte at `addr` of a snapshot, if `addr` is memory.
    pub fn byte(&self, snap: &[Vec<u8>], addr: u64) -> Option<u8> {
        self.regions
            .iter()
            .zip(snap)
            .find(|((s, l), _)| addr >= *s && addr < s + l)
            .map(|((s, _), v)| v[(addr - s) as usize])
    }

    /// Sets the byte at `addr` of a snapshot; false if `addr` is not
    /// memory.
    pub fn set_byte(&self, snap: &mut [Vec<u8>], addr: u64, b: u8) -> bool {
        match self
            .regions
            .iter()
            .zip(snap.iter_mut())
            .find(|((s, l), _)| addr >= *s && addr < s + l)
        {
            Some(((s, _), v)) => {
                v[(addr - s) as usize] = b;
                true
            }
            None => false,
        }
    }

    /// Writes `bytes` at `addr`, the part of them that is memory (a
    /// guest's poke may run off its memory; the rest is dropped).
    pub fn poke(&self, mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
        if self.contains(addr, bytes.len() as u64) {
            let _ = mem.write_slice(bytes, GuestAddress(addr));
            return;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let Some(a) = addr.checked_add(i as u64) else {
                break;
            };
            if self.contains(a, 1) {
                let _ = mem.write_slice(&[b], GuestAddress(a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_knows_gaps_and_adjacent_regions() {
        let l = Layout {
            regions: vec![(0x1000, 0x1000), (0x2000, 0x1000), (0x5000, 0x1000)],
        };
        assert!(l.contains(0x1ff0, 0x20), "spans two adjacent regions");
        assert!(!l.contains(0x2ff0, 0x20), "runs into a gap");
        assert!(!l.contains(0x800, 1));
        assert!(l.contains(u64::MAX, 0));
        assert!(!l.contains(u64::MAX, 2));
        let mem = l.memory();
        l.poke(&mem, 0x2ffe, &[1, 2, 3, 4]);
        let snap = l.snapshot(&mem);
        assert_eq!(
            (
                l.byte(&snap, 0x2ffe),
                l.byte(&snap, 0x2fff),
                l.byte(&snap, 0x3000)
            ),
            (Some(1), Some(2), None)
        );
    }
}
