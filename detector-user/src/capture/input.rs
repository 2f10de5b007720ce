//! Reading a capture's bytes: the stream with the offset every error names, and the byte
//! order of the section being read.

use std::{
    io::{ErrorKind, Read},
    ops::Range,
};

use super::reader::{MAX_BLOCK_LEN, PcapError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endian {
    Little,
    Big,
}

impl Endian {
    // Callers always pass slices of exactly the right length, taken from
    // buffers whose size has already been checked.
    pub(super) fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    pub(super) fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    pub(super) fn u64(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Endian::Little => u64::from_le_bytes(a),
            Endian::Big => u64::from_be_bytes(a),
        }
    }
}

/// Bytes always left free in front of the unread data, so that every record body handed
/// out has room before it for the Ethernet header `link::to_ethernet` writes in place of
/// another link layer's (the bytes there, already parsed, are no longer needed).
pub(super) const HEADROOM: usize = 16;
/// Bytes asked of the input per read: few system calls, and a record of up to
/// [`MAX_BLOCK_LEN`] always fits whole, so no record is ever assembled from pieces.
const BLOCK: usize = 1 << 20;
const _: () = assert!(BLOCK >= MAX_BLOCK_LEN as usize);

/// The input stream, read in large blocks into one buffer from which records are parsed
/// where they lie, plus the count of bytes consumed, which is what every error offset is
/// measured against.
///
/// Record bodies are handed out as ranges of that buffer ([`Input::body`]), valid until
/// the next read: a packet leaves the reader without being copied.
pub(super) struct Input<R> {
    r: R,
    buf: Vec<u8>,
    /// The first byte not yet consumed; never below [`HEADROOM`].
    pos: usize,
    /// The end of the bytes read.
    end: usize,
    /// Bytes consumed (parsed or skipped) since the start of the input.
    pub(super) offset: u64,
}

impl<R: Read> Input<R> {
    pub(super) fn new(r: R) -> Self {
        Input {
            r,
            // Zeroed lazily by the allocator (a fresh mapping): only the pages the input
            // fills are ever touched.
            buf: vec![0; HEADROOM + BLOCK],
            pos: HEADROOM,
            end: HEADROOM,
            offset: 0,
        }
    }

    /// The buffer that [`Input::body`] ranges index.
    pub(super) fn buf(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// Makes `n` unconsumed bytes contiguous in the buffer as far as the input allows and
    /// returns how many there are; fewer than `n` means end of file.
    fn fill_to(&mut self, n: usize, start: u64) -> Result<usize, PcapError> {
        debug_assert!(HEADROOM + n <= self.buf.len());
        if self.pos + n > self.buf.len() {
            self.buf.copy_within(self.pos..self.end, HEADROOM);
            self.end -= self.pos - HEADROOM;
            self.pos = HEADROOM;
        }
        while self.end - self.pos < n {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PcapError::Io {
                        offset: start,
                        source,
                    });
                }
            }
        }
        Ok(self.end - self.pos)
    }

    /// Takes the next `n` bytes, or as many as there are and a truncation error for the
    /// thing starting at `start`.
    fn take(&mut self, n: usize, start: u64, what: &'static str) -> Result<usize, PcapError> {
        let got = self.fill_to(n, start)?;
        if got < n {
            self.consume(got);
            return Err(PcapError::Truncated {
                offset: start,
                what,
            });
        }
        let at = self.pos;
        self.consume(n);
        Ok(at)
    }

    /// Reads a header that must be there: any shortfall is truncation of the
    /// thing starting at `start`.
    pub(super) fn read_full(
        &mut self,
        buf: &mut [u8],
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let at = self.take(buf.len(), start, what)?;
        buf.copy_from_slice(&self.buf[at..at + buf.len()]);
        Ok(())
    }

    /// Reads the header that begins a record. `Ok(false)` means the input
    /// ended exactly before it, which is how a well-formed capture ends.
    pub(super) fn read_record_start(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<bool, PcapError> {
        let start = self.offset;
        if self.fill_to(buf.len(), start)? == 0 {
            return Ok(false);
        }
        self.read_full(buf, start, what)?;
        Ok(true)
    }

    /// Consumes the next `len` bytes (at most [`MAX_BLOCK_LEN`]: callers check lengths
    /// against it first) and returns where they are in [`Input::buf`], with at least
    /// [`HEADROOM`] bytes free before them.
    pub(super) fn body(
        &mut self,
        len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<Range<usize>, PcapError> {
        let len = len as usize;
        let at = self.take(len, start, what)?;
        Ok(at..at + len)
    }

    /// Discards `len` bytes, for blocks we have no use for (name resolution,
    /// statistics, custom blocks...), however long: they go through the buffer a block at
    /// a time.
    pub(super) fn skip(
        &mut self,
        len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let mut left = len as usize;
        while left > 0 {
            let got = self.fill_to(left.min(BLOCK), start)?;
            if got == 0 {
                return Err(PcapError::Truncated {
                    offset: start,
                    what,
                });
            }
            self.consume(got.min(left));
            left -= got.min(left);
        }
        Ok(())
    }
}
