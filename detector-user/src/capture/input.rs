//! Reading a capture's bytes: the stream with the offset every error names, and the byte
//! order of the section being read.

use std::io::{self, ErrorKind, Read};

use super::reader::PcapError;

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

/// The input stream plus the count of bytes taken from it, which is what
/// every error offset is measured against.
pub(super) struct Input<R> {
    pub(super) r: R,
    pub(super) offset: u64,
}

impl<R: Read> Input<R> {
    /// Fills `buf` as far as the input allows and returns how many bytes were
    /// read; fewer than `buf.len()` means end of file.
    pub(super) fn fill(&mut self, buf: &mut [u8], start: u64) -> Result<usize, PcapError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.offset += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PcapError::Io {
                        offset: start,
                        source,
                    });
                }
            }
        }
        Ok(n)
    }

    /// Reads a header that must be there: any shortfall is truncation of the
    /// thing starting at `start`.
    pub(super) fn read_full(
        &mut self,
        buf: &mut [u8],
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        if self.fill(buf, start)? == buf.len() {
            Ok(())
        } else {
            Err(PcapError::Truncated {
                offset: start,
                what,
            })
        }
    }

    /// Reads the header that begins a record. `Ok(false)` means the input
    /// ended exactly before it, which is how a well-formed capture ends.
    pub(super) fn read_record_start(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
    ) -> Result<bool, PcapError> {
        let start = self.offset;
        match self.fill(buf, start)? {
            0 => Ok(false),
            n if n == buf.len() => Ok(true),
            _ => Err(PcapError::Truncated {
                offset: start,
                what,
            }),
        }
    }

    /// Replaces the contents of `buf` with the next `len` bytes.
    ///
    /// Reading through `take` lets the vector grow with the data actually
    /// present, so a truncated file that claims a big record does not cause
    /// a big allocation up front.
    pub(super) fn read_body(
        &mut self,
        buf: &mut Vec<u8>,
        len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        buf.clear();
        let got = (&mut self.r)
            .take(u64::from(len))
            .read_to_end(buf)
            .map_err(|source| PcapError::Io {
                offset: start,
                source,
            })?;
        self.offset += got as u64;
        if got == len as usize {
            Ok(())
        } else {
            Err(PcapError::Truncated {
                offset: start,
                what,
            })
        }
    }

    /// Discards `len` bytes without holding them in memory, for blocks we
    /// have no use for (name resolution, statistics, custom blocks...).
    pub(super) fn skip(
        &mut self,
        len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let got = io::copy(&mut (&mut self.r).take(u64::from(len)), &mut io::sink()).map_err(
            |source| PcapError::Io {
                offset: start,
                source,
            },
        )?;
        self.offset += got;
        if got == u64::from(len) {
            Ok(())
        } else {
            Err(PcapError::Truncated {
                offset: start,
                what,
            })
        }
    }
}
