//! The committed seed corpus, generated: for each target, named inputs
//! that reach its interesting states (a well-formed chain, a full
//! handshake with traffic, a valid state file, ...), written with the
//! same field order the target reads (see [`crate::input`]).
//!
//! `XDPATH_BLESS=1 cargo test seeds` (in `tests/fuzz`) writes them to
//! `corpus/<target>/seed-<name>`; without it the test checks that the
//! committed files are what this module generates. Reproducers of
//! defects the fuzzers found are kept next to them as `regress-<what>`
//! (crash inputs, committed as found, not generated here): they must pass
//! once the defect is fixed.

use crate::guest::{Layout, RegionSpec, PAGE};
use crate::input::Writer;
use crate::wire::{req, PROTOCOL_FEATURES};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Named inputs of one target.
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every target's seeds.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("chain_walk", chain_walk()),
        ("queue_pair", queue_pair()),
        ("relay", relay()),
        ("vhost_user", vhost_user()),
        ("rules_json", rules_json()),
        ("config_toml", config_toml()),
        ("flow_table_load", flow_table_load()),
    ]
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    crate::queue_pair::descriptor(addr, len, flags, next)
}

// ----- chain_walk -----

/// A chain_walk input: layout, table, queue size, head, indirect, skip,
/// parts, then pokes.
struct Chain {
    w: Writer,
    layout: Layout,
}

impl Chain {
    fn new(
        regions: &[RegionSpec],
        table: (u8, u16),
        qsize: u16,
        head: u16,
        indirect: bool,
    ) -> Self {
        let mut w = Writer::new();
        Layout::write(&mut w, regions);
        let layout = Layout::read(&mut crate::input::Reader::new(&w.clone().finish()), false);
        Layout::write_addr(&mut w, table.0, table.1);
        w.u16(qsize.wrapping_sub(256)).u16(head).bool(!indirect);
        Self { w, layout }
    }

    fn io(mut self, skip: u16, parts: &[u16]) -> Self {
        self.w.u16(skip).u8(parts.len() as u8);
        for &p in parts {
            self.w.u16(p);
        }
        self
    }

    fn at(&self, region: u8, off: u64) -> u64 {
        self.layout.region_start(region) + off
    }

    fn poke(mut self, region: u8, off: u16, bytes: &[u8]) -> Self {
        Layout::write_addr(&mut self.w, region, off);
        self.w.u8(bytes.len() as u8).bytes(bytes);
        self
    }

    fn desc(self, region: u8, table_off: u16, i: u16, d: [u8; 16]) -> Self {
        self.poke(region, table_off + 16 * i, &d)
    }

    fn done(mut self) -> Vec<u8> {
        self.w.finish()
    }
}

fn chain_walk() -> Seeds {
    let small = |gap, pages: u8| RegionSpec {
        gap_pages: gap,
        size_code: pages - 1,
    };
    let mut out = Vec::new();
    // Header then frame, in one region.
    let c = Chain::new(&[small(0, 8)], (0, 0x100), 256, 0, true).io(12, &[100, 60]);
    let (h, f) = (c.at(0, 0x2000), c.at(0, 0x3000));
    out.push((
        "two-readable",
        c.desc(0, 0x100, 0, desc(h, 12, NEXT, 3))
            .desc(0, 0x100, 3, desc(f, 200, 0, 0))
            .poke(0, 0x2000, &[0xaa; 12])
            .poke(0, 0x3000, b"frame bytes")
            .done(),
    ));
    // Writable buffers, the second spanning two adjacent regions.
    let c = Chain::new(&[small(1, 2), small(0, 2)], (0, 0x40), 64, 5, true).io(0, &[12, 3000]);
    let (a, b) = (c.at(0, 0x100), c.at(0, 0x1f00));
    out.push((
        "writable-spanning-regions",
        c.desc(0, 0x40, 5, desc(a, 12, NEXT | WRITE, 6))
            .desc(0, 0x40, 6, desc(b, 0x1000, WRITE, 0))
            .done(),
    ));
    // An indirect table in the second region: readable, then writable.
    let c = Chain::new(&[small(0, 2), small(2, 2)], (0, 0), 128, 1, true).io(4, &[64]);
    let (t, r, w) = (c.at(1, 0x800), c.at(0, 0x1000), c.at(1, 0x100));
    out.push((
        "indirect",
        c.desc(0, 0, 1, desc(t, 48, INDIRECT, 0))
            .desc(1, 0x800, 0, desc(r, 16, NEXT, 1))
            .desc(1, 0x800, 1, desc(w, 32, NEXT | WRITE, 2))
            .desc(1, 0x800, 2, desc(w + 64, 32, WRITE, 0))
            .done(),
    ));
    // A loop, a buffer in a gap, a nested indirect table.
    let c = Chain::new(&[small(0, 1), small(1, 1)], (0, 0x200), 16, 0, true).io(0, &[]);
    let x = c.at(0, 0x800);
    out.push((
        "loop",
        c.desc(0, 0x200, 0, desc(x, 8, NEXT, 1))
            .desc(0, 0x200, 1, desc(x, 8, NEXT, 0))
            .done(),
    ));
    let c = Chain::new(&[small(0, 1), small(1, 1)], (0, 0x200), 16, 0, true).io(0, &[]);
    let gap = c.at(0, PAGE + 0x10);
    out.push((
        "buffer-in-gap",
        c.desc(0, 0x200, 0, desc(gap, 8, 0, 0)).done(),
    ));
    let c = Chain::new(&[small(0, 2)], (0, 0x200), 16, 0, true).io(0, &[]);
    let t = c.at(0, 0x400);
    out.push((
        "nested-indirect",
        c.desc(0, 0x200, 0, desc(t, 16, INDIRECT, 0))
            .desc(0, 0x400, 0, desc(t, 16, INDIRECT, 0))
            .done(),
    ));
    // Writable then readable (misordered), and zero-length descriptors.
    let c = Chain::new(&[small(0, 4)], (0, 0), 32, 2, false).io(0, &[40]);
    let b = c.at(0, 0x2000);
    out.push((
        "misordered-zero-length",
        c.desc(0, 0, 2, desc(b, 0, NEXT | WRITE, 3))
            .desc(0, 0, 3, desc(b, 20, NEXT | WRITE, 4))
            .desc(0, 0, 4, desc(u64::MAX, 0, NEXT, 5))
            .desc(0, 0, 5, desc(b + 100, 30, 0, 0))
            .done(),
    ));
    out
}

// ----- queue_pair -----

/// A queue_pair input.
struct Qp {
    w: Writer,
    layout: Layout,
}

/// A vring at fixed offsets of region 0: desc, avail, used.
#[derive(Clone, Copy)]
struct QpRing {
    size_code: u8,
    desc: u16,
    avail: u16,
    used: u16,
    flags: u8,
}

const QP_RX: QpRing = QpRing {
    size_code: 0,
    desc: 0x1000,
    avail: 0x3000,
    used: 0x4000,
    flags: 1,
};
const QP_TX: QpRing = QpRing {
    size_code: 0,
    desc: 0x6000,
    avail: 0x8000,
    used: 0x9000,
    flags: 1,
};
/// Where the seeds' buffers start (region 0).
const QP_BUF: u16 = 0xa000;

impl Qp {
    fn new(region_code: u8, features: u8, rx: QpRing, tx: QpRing) -> Self {
        Self::with_port(region_code, features, (0, 0), rx, tx)
    }

    /// `port`: RX and TX frame counts (0 = 64).
    fn with_port(region_code: u8, features: u8, port: (u8, u8), rx: QpRing, tx: QpRing) -> Self {
        let mut w = Writer::new();
        Layout::write(
            &mut w,
            &[RegionSpec {
                gap_pages: 0,
                size_code: region_code,
            }],
        );
        let mut layout_bytes = w.clone().finish();
        layout_bytes.push(0);
        let layout = Layout::read(&mut crate::input::Reader::new(&layout_bytes), true);
        w.u8(features).u16(0).bool(false).u8(port.0).u8(port.1);
        for ring in [rx, tx] {
            w.u8(ring.size_code);
            for off in [ring.desc, ring.avail, ring.used] {
                Layout::write_addr(&mut w, 0, off);
            }
            w.u16(0).u16(0).u8(ring.flags);
        }
        Self { w, layout }
    }

    fn addr(&self, off: u64) -> u64 {
        self.layout.region_start(0) + off
    }

    fn frames(mut self, n: u8, len: u16, seed: u8) -> Self {
        self.w.u8(0).u8(n - 1).u16(len).u8(seed);
        self
    }

    fn rx(mut self) -> Self {
        self.w.u8(1);
        self
    }

    fn tx(mut self) -> Self {
        self.w.u8(2);
        self
    }

    fn poke(mut self, off: u16, bytes: &[u8]) -> Self {
        self.w.u8(3);
        Layout::write_addr(&mut self.w, 0, off);
        self.w.u8(bytes.len() as u8).bytes(bytes);
        self
    }

    fn desc(mut self, vring: u8, i: u16, buf: u16, len: u32, flags: u16, next: u16) -> Self {
        self.w.u8(4).u8(vring).u16(i);
        Layout::write_addr(&mut self.w, 0, buf);
        self.w.u32(len).u16(flags).u16(next);
        self
    }

    fn raw_desc(mut self, vring: u8, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> Self {
        self.w.u8(4).u8(vring).u16(i);
        Layout::write_raw_addr(&mut self.w, addr);
        self.w.u32(len).u16(flags).u16(next);
        self
    }

    fn avail(mut self, vring: u8, head: u16, count: u16, stride: u16) -> Self {
        self.w
            .u8(5)
            .u8(vring)
            .u16(head)
            .u8((count - 1) as u8)
            .u16(stride);
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        mut self,
        vring: u8,
        first: u16,
        count: u16,
        buf: u16,
        step: u16,
        len: u32,
        flags: u16,
    ) -> Self {
        self.w.u8(6).u8(vring).u16(first).u16(count);
        Layout::write_addr(&mut self.w, 0, buf);
        self.w.u16(step).u32(len).u16(flags);
        self
    }

    fn reset(mut self, flags: u8) -> Self {
        self.w.u8(7).u8(flags);
        self
    }

    fn avail_idx(mut self, vring: u8, idx: u16) -> Self {
        self.w.u8(8).u8(vring).u16(idx);
        self
    }

    fn done(mut self) -> Vec<u8> {
        self.w.finish()
    }
}

fn queue_pair() -> Seeds {
    // 64 pages (256 KiB): rings below 0xa000, buffers above.
    const R: u8 = 128;
    const MRG: u8 = 1;
    const IND: u8 = 2;
    let mut out = Vec::new();
    out.push((
        "rx-one-buffer-each",
        Qp::new(R, 0, QP_RX, QP_TX)
            .frames(4, 60, 1)
            .fill(0, 0, 8, QP_BUF, 0x800, 2048, WRITE)
            .avail(0, 0, 8, 1)
            .rx()
            .frames(12, 1514, 2)
            .rx()
            .done(),
    ));
    out.push((
        "rx-mergeable-small-buffers",
        Qp::new(R, MRG, QP_RX, QP_TX)
            .fill(0, 0, 32, QP_BUF, 0x200, 512, WRITE)
            .avail(0, 0, 32, 1)
            .frames(3, 1500, 3)
            .frames(2, 60, 4)
            .rx()
            .done(),
    ));
    out.push((
        "rx-two-descriptor-chains-and-oversize",
        Qp::new(R, 0, QP_RX, QP_TX)
            .desc(0, 0, QP_BUF, 12, WRITE | NEXT, 1)
            .desc(0, 1, QP_BUF + 0x100, 100, WRITE, 0)
            .desc(0, 2, QP_BUF + 0x200, 12, WRITE | NEXT, 3)
            .desc(0, 3, QP_BUF + 0x300, 2000, WRITE, 0)
            .avail(0, 0, 2, 2)
            .frames(1, 1500, 6)
            .frames(2, 90, 5)
            .rx()
            .done(),
    ));
    out.push((
        "rx-indirect",
        Qp::new(R, IND | MRG, QP_RX, QP_TX)
            .desc(0, 0, QP_BUF, 32, INDIRECT, 0)
            .done_with(|q| {
                let (a, b) = (
                    q.addr(u64::from(QP_BUF) + 0x400),
                    q.addr(u64::from(QP_BUF) + 0x800),
                );
                q.poke(QP_BUF, &desc(a, 600, WRITE | NEXT, 1))
                    .poke(QP_BUF + 16, &desc(b, 900, WRITE, 0))
                    .avail(0, 0, 1, 0)
                    .frames(1, 1400, 7)
                    .rx()
            }),
    ));
    out.push((
        "rx-ring-disabled-then-reset",
        Qp::new(R, 0, QP_RX, QP_TX)
            .fill(0, 0, 4, QP_BUF, 0x800, 2048, WRITE)
            .avail(0, 0, 4, 1)
            .raw_desc(0, 0, u64::MAX - 8, 2048, WRITE, 0)
            .frames(2, 60, 8)
            .rx()
            .frames(1, 60, 11)
            .rx()
            .reset(1)
            .fill(0, 0, 1, QP_BUF, 0, 2048, WRITE)
            .frames(2, 60, 9)
            .rx()
            .done(),
    ));
    let frame: Vec<u8> = (0..60u8).collect();
    out.push((
        "tx-frames-and-rejects",
        Qp::new(R, 0, QP_RX, QP_TX)
            .poke(QP_BUF + 12, &frame)
            .desc(1, 0, QP_BUF, 72, 0, 0)
            .desc(1, 1, QP_BUF, 12, NEXT, 2)
            .desc(1, 2, QP_BUF + 12, 60, 0, 0)
            .desc(1, 3, QP_BUF, 12, 0, 0)
            .desc(1, 4, QP_BUF, 72, WRITE, 0)
            .desc(1, 5, QP_BUF, 12, NEXT, 6)
            .desc(1, 6, QP_BUF, 9000, 0, 0)
            .avail(1, 0, 1, 0)
            .avail(1, 1, 1, 0)
            .avail(1, 3, 2, 1)
            .avail(1, 5, 1, 0)
            .tx()
            .tx()
            .done(),
    ));
    out.push((
        "tx-indirect-and-bad-avail-index",
        Qp::new(R, IND, QP_RX, QP_TX)
            .desc(1, 0, QP_BUF + 0x100, 32, INDIRECT, 0)
            .done_with(|q| {
                let (h, f) = (q.addr(u64::from(QP_BUF)), q.addr(u64::from(QP_BUF) + 12));
                q.poke(QP_BUF + 0x100, &desc(h, 12, NEXT, 1))
                    .poke(QP_BUF + 0x110, &desc(f, 100, 0, 0))
                    .avail(1, 0, 1, 0)
                    .tx()
                    .avail_idx(1, 1000)
                    .tx()
                    .reset(2)
                    .tx()
            }),
    ));
    out.push((
        "tx-out-of-frames",
        // Fewer TX frames than chains: the rest waits in the ring.
        Qp::with_port(R, 0, (0, 8), QP_RX, QP_TX)
            .poke(QP_BUF + 12, &frame)
            .fill(1, 0, 40, QP_BUF, 0, 72, 0)
            .avail(1, 0, 40, 1)
            .tx()
            .tx()
            .done(),
    ));
    out.push((
        "both-ways",
        Qp::new(R, MRG | IND, QP_RX, QP_TX)
            .fill(0, 0, 16, QP_BUF, 0x400, 1024, WRITE)
            .avail(0, 0, 16, 1)
            .poke(QP_BUF + 0x4000 + 12, &frame)
            .fill(1, 0, 8, QP_BUF + 0x4000, 0, 72, 0)
            .avail(1, 0, 8, 1)
            .frames(8, 900, 10)
            .rx()
            .tx()
            .rx()
            .done(),
    ));
    out
}

impl Qp {
    fn done_with(self, f: impl FnOnce(Self) -> Self) -> Vec<u8> {
        f(self).done()
    }
}

// ----- relay -----

/// A relay input.
struct Relay(Writer);

impl Relay {
    fn new(mode: u8) -> Self {
        let mut w = Writer::new();
        w.u8(mode);
        Self(w)
    }

    fn msg(mut self, request: u8, flags: u8, fds: u8, len: u16, first: u64) -> Self {
        self.0
            .u8(0)
            .u8(request)
            .u8(flags)
            .u8(fds)
            .u16(len)
            .u64(first);
        self
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.u8(0x40).u8(bytes.len() as u8).bytes(bytes);
        self
    }

    fn lie(mut self, request: u8, size: u32, bytes: &[u8]) -> Self {
        self.0
            .u8(0x80)
            .u8(request)
            .u32(size)
            .u8(bytes.len() as u8)
            .bytes(bytes);
        self
    }

    fn back(mut self, request: u8, len: u16) -> Self {
        self.0.u8(0xc0).u8(request).u16(len);
        self
    }

    fn done(mut self) -> Vec<u8> {
        self.0.finish()
    }
}

fn relay() -> Seeds {
    const NEED_REPLY: u8 = 0x8;
    let enable = req::SET_VRING_ENABLE as u8;
    let features = req::SET_FEATURES as u8;
    let kick = req::SET_VRING_KICK as u8;
    let ack = PROTOCOL_FEATURES | 1 << 32;
    vec![
        (
            "qemu-early-enable",
            Relay::new(0)
                .msg(req::GET_FEATURES as u8, 0, 0, 0, 0)
                .back(req::GET_FEATURES as u8, 8)
                .msg(enable, NEED_REPLY, 0, 8, 0x1_0000_0002)
                .msg(enable, NEED_REPLY, 0, 8, 0x1_0000_0003)
                .msg(kick, 0, 1, 8, 3)
                .msg(features, 0, 0, 8, ack)
                .msg(enable, NEED_REPLY, 0, 8, 0x1_0000_0002)
                .back(enable, 8)
                .done(),
        ),
        (
            "backend-hangs-up",
            Relay::new(2)
                .msg(features, 0, 0, 8, 0)
                .msg(kick, 0, 1, 8, 0)
                .back(1, 8)
                .back(0, 4096)
                .done(),
        ),
        (
            "memory-table-not-in-a-file",
            Relay::new(2)
                .msg(features, 0, 0, 8, 0)
                .msg(req::SET_MEM_TABLE as u8, 0, 1, 40, 1)
                .back(1, 8)
                .done(),
        ),
        (
            "garbage-and-half-a-header",
            Relay::new(0)
                .msg(req::SET_OWNER as u8, 0, 0, 0, 0)
                .raw(&[1, 0, 0, 0, 1, 0])
                .done(),
        ),
        (
            "lying-size",
            Relay::new(0).lie(kick, 100, &[1, 2, 3, 4]).done(),
        ),
        (
            "oversize-and-too-many-fds",
            Relay::new(0)
                .msg(0xfe, 0, 0, 0, 0)
                .msg(kick, 0, 9, 8, 0)
                .msg(features, 0, 0, 4097, 0)
                .done(),
        ),
    ]
}

// ----- vhost_user -----

/// A vhost_user input.
struct Vu(Writer);

impl Vu {
    fn new(cfg: u8) -> Self {
        let mut w = Writer::new();
        w.u8(cfg);
        Self(w)
    }

    fn op(mut self, op: crate::vhost_user::Op) -> Self {
        self.0.u8(op as u8);
        self
    }

    fn setup(self, mask: u64) -> Self {
        let mut s = self.op(crate::vhost_user::Op::Setup);
        s.0.u64(mask);
        s
    }

    fn post_rx(self, pair: u8, n: u8, len: u16) -> Self {
        let mut s = self.op(crate::vhost_user::Op::PostRx);
        s.0.u8(pair).u8(n - 1).u16(len);
        s
    }

    fn send_tx(self, pair: u8, len: u16, split: bool) -> Self {
        let mut s = self.op(crate::vhost_user::Op::SendTx);
        s.0.u8(pair).u16(len).bool(split);
        s
    }

    fn inject(self, queue: u8, n: u8, len: u16) -> Self {
        let mut s = self.op(crate::vhost_user::Op::Inject);
        s.0.u8(queue).u8(n - 1).u16(len);
        s
    }

    fn state(self, op: crate::vhost_user::Op, index: u8, num: u32) -> Self {
        let mut s = self.op(op);
        s.0.u8(index).u32(num);
        s
    }

    fn u64_op(self, op: crate::vhost_user::Op, v: u64) -> Self {
        let mut s = self.op(op);
        s.0.u64(v);
        s
    }

    /// One region: guest page, size code, frontend page, offset page,
    /// memfd code.
    fn mem_table(self, regions: &[(u16, u8, u16, u8, u8)], short_fds: bool) -> Self {
        let mut s = self.op(crate::vhost_user::Op::MemTable);
        s.0.u8(regions.len() as u8);
        for &(gpa, size, ua, off, fcode) in regions {
            s.0.u16(gpa).u8(size).u16(ua).u8(off).u8(fcode);
        }
        s.0.bool(short_fds);
        s
    }

    fn poke(self, gpa: u64, bytes: &[u8]) -> Self {
        let mut s = self.op(crate::vhost_user::Op::Poke);
        s.0.u64(gpa).u8(bytes.len() as u8).bytes(bytes);
        s
    }

    fn flood(self, n: u16) -> Self {
        let mut s = self.op(crate::vhost_user::Op::Flood);
        s.0.u16(n);
        s
    }

    fn done(mut self) -> Vec<u8> {
        self.0.finish()
    }
}

fn vhost_user() -> Seeds {
    use crate::vhost_user::Op;
    // Without MRG_RXBUF (bit 15) and EVENT_IDX (bit 29).
    let plain = (1 << 15) | (1 << 29);
    vec![
        (
            "handshake-and-traffic",
            Vu::new(0)
                .setup(0)
                .post_rx(0, 16, 2048)
                .inject(0, 8, 100)
                .send_tx(0, 60, false)
                .send_tx(0, 1500, true)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
        (
            "two-pairs-features-change-mid-traffic",
            Vu::new(1 | 2)
                .setup(plain)
                .post_rx(0, 8, 1024)
                .post_rx(1, 8, 1024)
                .inject(0, 16, 1400)
                .inject(1, 16, 1400)
                .u64_op(Op::SetFeatures, 1 << 32)
                .send_tx(1, 200, false)
                .inject(1, 4, 60)
                .state(Op::VringEnable, 2, 0)
                .inject(1, 4, 60)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
        (
            "vring-messages-out-of-order",
            Vu::new(0)
                .state(Op::VringNum, 0, 256)
                .u64_op(Op::VringKick, 0)
                .state(Op::VringEnable, 40, 1)
                .state(Op::GetVringBase, 1, 0)
                .op(Op::GetFeatures)
                .u64_op(Op::SetFeatures, PROTOCOL_FEATURES)
                .op(Op::SetOwner)
                .state(Op::VringBase, 1, 7)
                .u64_op(Op::VringCall, 0x101)
                .state(Op::VringNum, 1, 3)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
        (
            "memory-table-overlapping",
            Vu::new(0)
                .setup(0)
                .mem_table(&[(0, 15, 0, 0, 0), (8, 15, 0x100, 0, 0)], false)
                .post_rx(0, 4, 2048)
                .inject(0, 4, 60)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
        (
            "memory-table-resent-and-reconnect",
            Vu::new(1)
                .setup(0)
                .mem_table(&[(0, 200, 0, 0, 0)], false)
                .post_rx(0, 4, 2048)
                .inject(0, 4, 60)
                .op(Op::Reconnect)
                .setup(0)
                .send_tx(0, 100, false)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
        (
            "memory-table-fd-missing-and-huge",
            Vu::new(0)
                .mem_table(&[(0, 3, 0, 0, 0), (16, 3, 16, 0, 0)], true)
                .op(Op::Sync)
                .mem_table(&[(0x100, 254, 0, 0, 0)], false)
                .op(Op::Sync)
                .op(Op::Settle)
                .done(),
        ),
    ]
}

// ----- rules_json -----

fn rules_json() -> Seeds {
    let with = |mode: u8, text: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(text.as_bytes());
        v
    };
    vec![
        (
            "flow",
            with(
                0,
                r#"{"id": 7, "src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "src_port": 1000, "dst_port": 53, "action": "guest", "guest": 1}"#,
            ),
        ),
        (
            "flow-v6-number",
            with(
                0,
                r#"{"src": "fd00::2", "dst": "fd00::10", "proto": 132, "action": "DROP", "guest": null}"#,
            ),
        ),
        (
            "flow-errors",
            with(
                0,
                r#"{"src": "10.0.0.300", "dst": "fd00::1", "proto": "icmp", "dst_port": 80, "action": "host", "guest": 2, "src": "x"}"#,
            ),
        ),
        (
            "prefix",
            with(
                1,
                r#"{"id": 8, "prefix": "10.88.0.0/16", "action": "drop"}"#,
            ),
        ),
        (
            "prefix-host-bits",
            with(
                1,
                r#"{"prefix": "fd00:88::1/32", "action": "guest", "guest": 4294967295}"#,
            ),
        ),
        (
            "flow-list",
            with(
                2,
                r#"[{"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "tcp", "action": "guest"}, {"src": "1.1.1.1", "dst": "2.2.2.2", "proto": "udp", "dst_port": 70000, "action": "host"}, 3]"#,
            ),
        ),
        (
            "prefix-list",
            with(
                3,
                r#"[{"prefix": "0.0.0.0/0", "action": "host"}, {"id": 0, "prefix": "::/0", "action": "drop", "nope": 1}]"#,
            ),
        ),
        ("not-json", with(0, r#"{"src": "10.0.0.1", "dst""#)),
        ("list-not-array", with(2, r#"{"src": "10.0.0.1"}"#)),
    ]
}

// ----- config_toml -----

fn config_toml() -> Seeds {
    vec![
        ("minimal", b"iface = \"eth1\"\n".to_vec()),
        (
            "full",
            br#"iface = "xdp0"
queues = 2
vhost_socket = "/run/xdpath/xdp0.vhost.sock"
guest_mac = "52:54:00:12:34:56"
guest_ip = ["10.0.0.2", "fd00::2"]
api_socket = "/run/xdpath/xdp0.api.sock"
api_group = "kvm"
default_action = "drop"
xdp_mode = "generic"
force = true
busy_poll = false
poll_idle_us = 100
mtu = 9000
state_dir = "/var/lib/xdpath"
"#
            .to_vec(),
        ),
        (
            "bad-values",
            b"iface = \"a/b\"\nqueues = 17\nguest_mac = \"01:00:00:00:00:01\"\nmtu = 20\n".to_vec(),
        ),
        ("unknown-key", b"iface = \"e\"\nnope = 1\n".to_vec()),
        (
            "wrong-type",
            b"iface = 5\nguest_ip = \"10.0.0.1\"\n".to_vec(),
        ),
        ("syntax", b"iface = \"e\nqueues = [\n".to_vec()),
        ("missing-iface", b"queues = 1\n".to_vec()),
        // Found by the smoke run: an empty key named no setting.
        ("empty-key", b"'' = 0\n".to_vec()),
        (
            "guests",
            br#"iface = "xdp0"
queues = 2
default_action = "guest"
default_guest = "web1"
[[guest]]
name = "web1"
mac = "52:54:00:00:00:11"
ips = ["10.0.0.11"]
vhost_client = true
[[guest]]
name = "db1"
mac = "52:54:00:00:00:11"
anti_spoof = false
"#
            .to_vec(),
        ),
    ]
}

// ----- flow_table_load -----

fn flow_table_load() -> Seeds {
    let flow = r#"{"id":1,"src":"10.0.0.2","dst":"10.0.0.1","proto":"udp","src_port":1000,"dst_port":53,"action":"guest","guest":1}"#;
    let flow2 = r#"{"id":2,"src":"fd00::2","dst":"fd00::1","proto":"tcp","src_port":0,"dst_port":80,"action":"drop"}"#;
    let prefix = r#"{"id":1,"prefix":"10.88.0.0/16","action":"host"}"#;
    let snapshot = |epoch: u64, flows: &str, prefixes: &str| {
        format!(
            r#"{{"format":"xdpath-flow-table","version":1,"epoch":{epoch},"flows":[{flows}],"prefixes":[{prefixes}]}}"#
        )
    };
    let input = |flags: u8, snap: &str, journal: &str| {
        let mut w = Writer::new();
        w.u8(flags)
            .u16(snap.len() as u16)
            .bytes(snap.as_bytes())
            .bytes(journal.as_bytes());
        w.finish()
    };
    let header = |epoch: u64| format!("{{\"journal\":\"xdpath-flow-table\",\"epoch\":{epoch}}}\n");
    let add_flow = |rule: &str| format!("{{\"op\":\"add_flow\",\"rule\":{rule}}}\n");
    let add_prefix = |rule: &str| format!("{{\"op\":\"add_prefix\",\"rule\":{rule}}}\n");
    let s3 = snapshot(3, flow, prefix);
    vec![
        ("snapshot-only", input(2, &s3, "")),
        (
            "snapshot-and-journal",
            input(
                0,
                &s3,
                &format!(
                    "{}{}{}{{\"op\":\"delete_flow\",\"id\":1}}\n{{\"op\":\"delete_prefix\",\"id\":1}}\n",
                    header(3),
                    add_flow(flow2),
                    add_prefix(r#"{"id":5,"prefix":"fd00::/8","action":"guest","guest":2}"#)
                ),
            ),
        ),
        (
            "journal-torn-last-line",
            input(0, &s3, &format!("{}{}{{\"op\":\"add", header(3), add_flow(flow2))),
        ),
        ("journal-stale", input(0, &s3, &format!("{}{}", header(2), add_flow(flow2)))),
        ("journal-ahead", input(0, &s3, &header(4))),
        ("journal-only", input(1, "", &format!("{}{}", header(0), add_flow(flow)))),
        (
            "duplicate-and-conflict",
            input(
                0,
                &snapshot(1, &format!("{flow},{flow}"), ""),
                &format!("{}{}", header(1), add_flow(flow)),
            ),
        ),
        ("not-json", input(2, "{\"format\":", "")),
        ("wrong-format", input(2, &s3.replace("xdpath-flow-table", "other"), "")),
    ]
}

// ----- regressions -----

/// Inputs that reproduce known defects, written as
/// `corpus/<target>/regress-<name>`: each fails its target until the
/// defect is fixed, and guards it afterwards. (Reproducers the fuzzers
/// find are committed the same way, as found.)
pub fn regressions() -> Vec<(&'static str, Seeds)> {
    vec![
        ("queue_pair", queue_pair_regressions()),
        ("relay", relay_regressions()),
        ("vhost_user", vhost_user_regressions()),
    ]
}

fn queue_pair_regressions() -> Seeds {
    const R: u8 = 128;
    const MRG: u8 = 1;
    // Issue 11 #1: rejected TX chains (here: header-only) do not count
    // against the batch budget; one process_tx pops all 300.
    let tx512 = QpRing {
        size_code: 1,
        desc: 0xc000,
        avail: 0xe000,
        used: 0xf000,
        flags: 1,
    };
    let tx_budget = Qp::new(R, 0, QP_RX, tx512)
        .desc(1, 0, QP_BUF, 12, 0, 0)
        .avail(1, 0, 256, 0)
        .avail(1, 0, 44, 0)
        .tx()
        .done();
    // Issue 11 #3: with MRG_RXBUF, 32768 avail entries naming one chain of
    // 32767 zero-length writable descriptors and one 1-byte buffer: every
    // frame pops 1512 chains and walks 32768 descriptors for each (about
    // 50 million per frame, and a scratch vector of as many segments).
    let rx_quadratic = {
        let mut w = Writer::new();
        let regions = [
            RegionSpec {
                gap_pages: 0,
                size_code: 131,
            },
            RegionSpec {
                gap_pages: 0,
                size_code: 128,
            },
            RegionSpec {
                gap_pages: 0,
                size_code: 129,
            },
            RegionSpec {
                gap_pages: 0,
                size_code: 0,
            },
        ];
        Layout::write(&mut w, &regions);
        w.u8(MRG).u16(0).bool(false).u8(0).u8(0);
        // RX: 32768 entries; desc in region 0, avail in 1, used in 2.
        w.u8(7);
        for region in [0, 1, 2] {
            Layout::write_addr(&mut w, region, 0);
        }
        w.u16(0).u16(0).u8(1);
        // TX: unused.
        w.u8(0);
        for off in [QP_TX.desc, QP_TX.avail, QP_TX.used] {
            Layout::write_addr(&mut w, 3, off % 0x1000);
        }
        w.u16(0).u16(0).u8(1);
        // Fill: descriptors 0..32767, zero-length, writable, chained.
        w.u8(6).u8(0).u16(0).u16(32767);
        Layout::write_addr(&mut w, 3, 0);
        w.u16(0).u32(0).u16(WRITE | NEXT);
        // Descriptor 32767: one writable byte, the end of the chain.
        w.u8(4).u8(0).u16(32767);
        Layout::write_addr(&mut w, 3, 0x100);
        w.u32(1).u16(WRITE).u16(0);
        // Avail index 32768: every entry (zero) names head 0.
        w.u8(8).u8(0).u16(32768);
        // 64 frames of 1500 bytes, one process_rx.
        w.u8(0).u8(63).u16(1500).u8(0).u8(1);
        w.finish()
    };
    vec![
        ("issue11-1-tx-rejects-unbudgeted", tx_budget),
        ("issue11-3-rx-quadratic-mergeable", rx_quadratic),
    ]
}

fn relay_regressions() -> Seeds {
    let enable = req::SET_VRING_ENABLE as u8;
    // Issue 11 #2: an early SET_VRING_ENABLE with fds is held with its
    // fds, without limit, until SET_FEATURES acks PROTOCOL_FEATURES.
    let held = Relay::new(0)
        .msg(enable, 0, 2, 8, 0x1_0000_0000)
        .msg(enable, 0, 3, 8, 0x1_0000_0001)
        .done();
    // A frontend that never reads: once the relay's writes to it block,
    // the relay stops, and does not end when the backend hangs up (the
    // server's stop then waits for it forever).
    let mut mute = Relay::new(1 | 2);
    for _ in 0..64 {
        mute = mute.back(req::GET_FEATURES as u8, 4096);
    }
    // Issue 11 #10: a frontend that stops in the middle of a message (a
    // header announcing 100 bytes, 4 sent) and stays connected: the relay
    // waits for the rest forever, and does not end when the backend hangs
    // up.
    let stalled = Relay::new(2 | 4)
        .msg(req::SET_OWNER as u8, 0, 0, 0, 0)
        .lie(req::SET_VRING_KICK as u8, 100, &[1, 2, 3, 4])
        .done();
    vec![
        ("issue11-2-early-enable-fds-held", held),
        ("issue11-10-frontend-stalls-mid-message", stalled),
        (
            "relay-blocked-on-a-frontend-that-does-not-read",
            mute.done(),
        ),
    ]
}

fn vhost_user_regressions() -> Seeds {
    use crate::vhost_user::Op;
    // A memory table whose memfd (4 MiB) is shorter than its region (253
    // MiB), and an RX buffer past the memfd's end: the worker's write
    // there is a SIGBUS (issue 11, "guest memory fds are checked with
    // fstat before mapping").
    let mut bad = [0u8; 16];
    bad.copy_from_slice(&desc(8 << 20, 2048, WRITE, 0));
    let short_memfd = Vu::new(0)
        .setup(0)
        .mem_table(&[(0, 253, 0, 0, 1)], false)
        .op(Op::Sync)
        .post_rx(0, 1, 2048)
        .poke(0x1_0000, &bad)
        .inject(0, 1, 100)
        .op(Op::Sync)
        .op(Op::Settle)
        .done();
    // A frontend that sends requests and never reads the answers: the
    // relay blocks writing to it, the request handler blocks writing to
    // the relay, and stop never returns.
    let flood = Vu::new(8)
        .setup(0)
        .flood(crate::vhost_user::FLOOD_BUDGET)
        .done();
    vec![
        ("short-memfd-sigbus", short_memfd),
        ("stop-blocked-by-a-frontend-that-does-not-read", flood),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The targets count the process's fds: one test at a time.
    fn serial() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn corpus() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
    }

    /// With `XDPATH_BLESS=1`, writes the seeds; otherwise checks that the
    /// committed ones are what this module generates.
    #[test]
    fn seeds_are_committed() {
        let _one = serial();
        let bless = std::env::var_os("XDPATH_BLESS").is_some();
        let seeds = all().into_iter().map(|(t, s)| (t, "seed", s));
        let regress = regressions().into_iter().map(|(t, s)| (t, "regress", s));
        for (target, kind, seeds) in seeds.chain(regress) {
            let dir = corpus().join(target);
            if bless {
                std::fs::create_dir_all(&dir).expect("create the corpus directory");
            }
            for (name, data) in seeds {
                let path = dir.join(format!("{kind}-{name}"));
                if bless {
                    std::fs::write(&path, &data).expect("write a seed");
                } else {
                    let got = std::fs::read(&path).unwrap_or_else(|e| {
                        panic!("{}: {e}; run XDPATH_BLESS=1 cargo test", path.display())
                    });
                    assert!(
                        got == data,
                        "{} is stale; run XDPATH_BLESS=1 cargo test",
                        path.display()
                    );
                }
            }
        }
    }

    fn seed(target: &str, name: &str) -> Vec<u8> {
        all()
            .into_iter()
            .find(|(t, _)| *t == target)
            .and_then(|(_, s)| s.into_iter().find(|(n, _)| *n == name))
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no seed {target}/{name}"))
    }

    /// The seeds reach what they are named after.
    #[test]
    fn seeds_reach_their_states() {
        let _one = serial();
        use xdpath_dataplane::chain::ChainError;
        let walk = |n| crate::chain_walk::run(&seed("chain_walk", n));
        assert_eq!(
            walk("two-readable").map(|i| (i.readable, i.writable)),
            Ok((212, 0))
        );
        assert_eq!(
            walk("writable-spanning-regions").map(|i| i.writable),
            Ok(12 + 0x1000)
        );
        assert_eq!(
            walk("indirect").map(|i| (i.readable, i.writable)),
            Ok((16, 64))
        );
        assert_eq!(walk("loop"), Err(ChainError::TooLong));
        assert!(matches!(
            walk("buffer-in-gap"),
            Err(ChainError::OutOfMemory { .. })
        ));
        assert_eq!(walk("nested-indirect"), Err(ChainError::BadIndirect));
        assert!(walk("misordered-zero-length").is_ok_and(|i| i.misordered));

        let qp = |n| crate::queue_pair::run(&seed("queue_pair", n));
        let c = qp("rx-one-buffer-each");
        assert_eq!((c.rx_frames, c.rx_drop_no_guest_buffer), (8, 8), "{c:?}");
        let c = qp("rx-mergeable-small-buffers");
        assert_eq!(c.rx_frames, 5, "{c:?}");
        let c = qp("rx-two-descriptor-chains-and-oversize");
        assert_eq!((c.rx_frames, c.rx_drop_oversize), (2, 1), "{c:?}");
        let c = qp("rx-indirect");
        assert_eq!(c.rx_frames, 1, "{c:?}");
        let c = qp("rx-ring-disabled-then-reset");
        assert_eq!(
            (c.bad_descriptor, c.rx_bad_chain, c.rx_frames),
            (1, 1, 2),
            "{c:?}"
        );
        let c = qp("tx-frames-and-rejects");
        assert_eq!(
            (
                c.tx_frames,
                c.tx_drop_empty,
                c.tx_drop_write_only,
                c.tx_drop_oversize
            ),
            (2, 1, 1, 1),
            "{c:?}"
        );
        let c = qp("tx-indirect-and-bad-avail-index");
        assert_eq!(
            (c.tx_frames, c.bad_avail_index),
            (1, 2),
            "still bogus after the reset"
        );
        let c = qp("tx-out-of-frames");
        assert_eq!((c.tx_frames, c.tx_xsk_ring_full > 0), (16, true), "{c:?}");
        let c = qp("both-ways");
        assert_eq!((c.rx_frames, c.tx_frames), (8, 8), "{c:?}");

        let relay = |n| crate::relay::run(&seed("relay", n));
        assert_eq!(relay("qemu-early-enable"), 7, "all of it, and the marker");
        assert_eq!(relay("oversize-and-too-many-fds"), 1);

        let vu = |n| crate::vhost_user::run(&seed("vhost_user", n));
        let c = vu("handshake-and-traffic");
        assert_eq!((c[0].rx_frames, c[0].tx_frames), (8, 2), "{c:?}");
        let c = vu("two-pairs-features-change-mid-traffic");
        assert!(c[0].rx_frames + c[1].rx_frames > 0, "{c:?}");
        let c = vu("memory-table-resent-and-reconnect");
        assert_eq!(c[0].tx_frames, 1, "{c:?}");
    }

    /// Every committed input (seeds and regression reproducers) passes
    /// its target. `XDPATH_FUZZ_ONLY=<target>[/<part of a file name>]` and
    /// `XDPATH_FUZZ_SKIP_REGRESS=1` narrow it down.
    #[test]
    fn committed_inputs_pass() {
        let _one = serial();
        let only = std::env::var("XDPATH_FUZZ_ONLY").ok();
        let (only, part) = match only.as_deref().map(|o| o.split_once('/')) {
            Some(Some((t, p))) => (Some(t.to_string()), Some(p.to_string())),
            _ => (only, None),
        };
        let skip_regress = std::env::var_os("XDPATH_FUZZ_SKIP_REGRESS").is_some();
        for (target, _) in all() {
            if only.as_deref().is_some_and(|o| o != target) {
                continue;
            }
            let Ok(dir) = std::fs::read_dir(corpus().join(target)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if (skip_regress && name.starts_with("regress-"))
                    || part.as_deref().is_some_and(|p| !name.contains(p))
                {
                    continue;
                }
                eprintln!("{target}: {name}");
                let data = std::fs::read(&f).expect("read a corpus file");
                assert!(crate::run(target, &data), "no target {target}");
            }
        }
    }
}
