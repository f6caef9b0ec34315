//! Reading a fuzz input as a sequence of small fields, and writing one
//! (for the seeds).
//!
//! Every target decodes its input with a [`Reader`]: fixed-size
//! little-endian fields, read in a fixed order, zero once the input is
//! used up. So any byte string is a valid input, a short one means "all
//! defaults", and each target chooses its fields so that zero is the
//! common, well-formed case. The seeds are written with a [`Writer`] in
//! the same order by the same module that reads them (`seeds`), so the
//! two cannot drift apart unnoticed: `cargo test` decodes every seed.

/// Reads fields off the front of a fuzz input; zeros once it is used up.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The low bit of one byte.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Writes fields in the order a [`Reader`] reads them.
#[derive(Debug, Default, Clone)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a flag as one byte.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Appends two bytes, little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends four bytes, little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// The input written so far.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_run_out_as_zeros() {
        let data = Writer::new()
            .u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX)
            .bytes(b"ab")
            .finish();
        let mut r = Reader::new(&data);
        assert_eq!(
            (r.u8(), r.u16(), r.u32(), r.u64()),
            (7, 0x1234, 0xdead_beef, u64::MAX)
        );
        assert_eq!(r.u16(), u16::from_le_bytes(*b"ab"));
        assert!(r.is_empty());
        assert_eq!((r.u8(), r.u32(), r.bytes(4)), (0, 0, &[][..]));
    }
}
