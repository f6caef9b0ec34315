//! Target `chain_walk`: the descriptor-chain walker and its copies
//! (`xdpath_dataplane::chain::{walk, read_into, write_from}`) over
//! arbitrary multi-region guest memory, descriptor tables, indirect
//! tables and heads.
//!
//! Input, in order ([`crate::input::Reader`] fields):
//! - the memory [`Layout`] (small regions: all of memory is compared);
//! - the descriptor table's address field, the queue size (`u16 + 256`,
//!   so zero bytes mean 256), the head, "indirect not negotiated" (bool),
//!   the `skip` of `read_into`, then up to three `write_from` parts
//!   (count byte, then a length each; their bytes are a pattern);
//! - pokes until the input ends: an address field, a length byte and that
//!   many bytes written into guest memory (descriptors, indirect tables,
//!   buffers).
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - no panic, and the walk is deterministic;
//! - bounded work: no more segments than the queue size;
//! - every reported segment (of non-zero length) lies inside guest memory
//!   (the model, [`Layout::contains`]), and the totals add up;
//! - `read_into` returns exactly the bytes the model reads from the
//!   segments; `write_from` writes exactly the parts across the writable
//!   segments, returns that length, and changes no other byte of guest
//!   memory.

use crate::guest::Layout;
use crate::input::Reader;
use vm_memory::GuestAddress;
use xdpath_dataplane::chain::{self, ChainError, Segment};

/// Largest `read_into` output the target allocates.
const MAX_READ: usize = 1 << 16;

/// Runs one input; returns the walk's result (for the seeds' tests).
pub fn run(data: &[u8]) -> Result<chain::ChainInfo, ChainError> {
    let mut r = Reader::new(data);
    let layout = Layout::read(&mut r, false);
    let mem = layout.memory();
    let table = layout.addr(&mut r);
    let queue_size = r.u16().wrapping_add(256);
    let head = r.u16();
    let indirect_ok = !r.bool();
    let skip = usize::from(r.u16());
    let nparts = r.u8() % 4;
    let parts: Vec<Vec<u8>> = (0..nparts)
        .map(|p| {
            let len = usize::from(r.u16() % 4096);
            (0..len)
                .map(|i| (i as u8).wrapping_mul(7) ^ (0xa0 + p))
                .collect()
        })
        .collect();
    while !r.is_empty() {
        let at = layout.addr(&mut r);
        let len = usize::from(r.u8());
        let bytes = r.bytes(len);
        layout.poke(&mem, at, bytes);
    }

    let before = layout.snapshot(&mem);
    let mut segs = vec![Segment {
        addr: GuestAddress(0xdead),
        len: 1,
        writable: true,
    }];
    let mut budget = u32::MAX;
    let res = chain::walk(
        &mem,
        GuestAddress(table),
        queue_size,
        head,
        indirect_ok,
        &mut budget,
        &mut segs,
    );
    let used = u32::MAX - budget;
    let mut again = Vec::new();
    let mut budget2 = u32::MAX;
    let res2 = chain::walk(
        &mem,
        GuestAddress(table),
        queue_size,
        head,
        indirect_ok,
        &mut budget2,
        &mut again,
    );
    assert_eq!(res, res2, "the walk is deterministic");
    assert_eq!(budget, budget2, "the walk's budget use is deterministic");
    // Bounded work: every descriptor read takes one from the budget, and a
    // chain (indirect tables included) reads at most the queue size plus
    // the indirect descriptor that led to its table; a walk that finds the
    // chain too long has read one more.
    let bound = u32::from(queue_size) + if res.is_ok() { 1 } else { 2 };
    assert!(
        used <= bound,
        "{used} descriptors read from a queue of {queue_size} ({res:?})"
    );
    // One descriptor less than it needs, and a walk that succeeded stops
    // with TooManyDescriptors instead of reading one more.
    if res.is_ok() && used > 0 {
        let mut short = used - 1;
        let mut scratch = Vec::new();
        let cut = chain::walk(
            &mem,
            GuestAddress(table),
            queue_size,
            head,
            indirect_ok,
            &mut short,
            &mut scratch,
        );
        assert_eq!(
            cut,
            Err(ChainError::TooManyDescriptors),
            "a budget of {} for a chain of {used} descriptors",
            used - 1
        );
        assert_eq!(short, 0, "a cut walk used its whole budget");
    }
    assert!(
        layout.snapshot(&mem) == before,
        "walking a chain changed guest memory"
    );
    let info = match res {
        Ok(info) => info,
        Err(e) => {
            check_error(e, queue_size);
            return Err(e);
        }
    };
    assert_eq!(segs, again, "the walk is deterministic");
    // A chain of empty buffers walks to no segment (empty buffers are not
    // recorded); the totals below then are zero.
    assert!(
        segs.len() <= usize::from(queue_size),
        "{} segments from a queue of {queue_size}",
        segs.len()
    );
    let mut readable = 0u64;
    let mut writable = 0u64;
    let mut misordered = false;
    for s in &segs {
        assert!(
            layout.contains(s.addr.0, u64::from(s.len)),
            "segment {:#x}+{} is not guest memory ({:?})",
            s.addr.0,
            s.len,
            layout.regions
        );
        if s.writable {
            writable += u64::from(s.len);
        } else {
            misordered |= writable > 0;
            readable += u64::from(s.len);
        }
    }
    assert_eq!(
        (info.readable, info.writable, info.misordered),
        (readable, writable, misordered),
        "totals of {segs:?}"
    );

    // read_into: the model reads the readable segments byte by byte.
    let skip = skip.min(readable as usize);
    let want_len = (readable as usize - skip).min(MAX_READ);
    let mut want = Vec::with_capacity(want_len);
    let mut to_skip = skip;
    'model: for s in segs.iter().filter(|s| !s.writable) {
        for i in 0..u64::from(s.len) {
            if to_skip > 0 {
                to_skip -= 1;
                continue;
            }
            if want.len() == want_len {
                break 'model;
            }
            want.push(layout.byte(&before, s.addr.0 + i).expect("checked above"));
        }
    }
    let mut out = vec![0u8; want_len];
    chain::read_into(&mem, &segs, skip, &mut out).expect("segments inside memory read");
    assert!(out == want, "read_into differs from the model");

    // write_from: the model writes the parts across the writable segments.
    let part_refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let mut model = before.clone();
    let mut stream = parts.iter().flatten().copied();
    'segs: for s in segs.iter().filter(|s| s.writable) {
        for i in 0..u64::from(s.len) {
            let Some(b) = stream.next() else {
                break 'segs;
            };
            assert!(layout.set_byte(&mut model, s.addr.0 + i, b));
        }
    }
    let written = chain::write_from(&mem, &segs, &part_refs).expect("segments inside memory write");
    assert_eq!(
        u64::from(written),
        total.min(writable),
        "write_from's used length"
    );
    assert!(
        layout.snapshot(&mem) == model,
        "write_from wrote outside its segments or wrote wrong bytes"
    );
    Ok(info)
}

/// An error must describe what the walk saw.
fn check_error(e: ChainError, queue_size: u16) {
    match e {
        ChainError::IndexOutOfRange { index, size } => {
            assert!(index >= size && size <= queue_size, "{e}");
        }
        ChainError::BadIndirectTable { len } => {
            assert!(
                len == 0 || len % 16 != 0 || len / 16 > u32::from(queue_size),
                "{e}"
            );
        }
        ChainError::OutOfMemory { len, .. } => assert!(len > 0, "{e}"),
        ChainError::WrongDirection | ChainError::UsedRing => {
            panic!("the walk cannot fail with {e}")
        }
        // TooLong, BadIndirect, and whatever the walk learns to refuse.
        _ => {}
    }
}
