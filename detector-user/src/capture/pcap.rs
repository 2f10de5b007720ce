//! Streaming reader for pcap and pcapng capture files.
//!
//! Replay feeds recorded traffic through the same XDP program that watches
//! live interfaces, so every packet handed out here is an Ethernet frame no
//! matter how it was captured: `tcpdump -i any` writes Linux cooked headers
//! (SLL/SLL2), tunnels and VPNs give raw IP, and the kernel program only knows
//! how to parse Ethernet. Frames from other link types are dropped and counted
//! so the caller can tell the user how much of the file was ignored.
//!
//! Captures can be far larger than memory, and are frequently cut short (a
//! `tcpdump` killed mid-write, a partial download), so the reader works one
//! record at a time and reports where in the file things went wrong rather
//! than failing with a bare "unexpected end of file".
//!
//! Only the standard library is used; the formats are small enough that a
//! dependency would cost more in review than the code below.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::Path;

/// Largest record we are willing to buffer. Real link layers top out around
/// 256 KiB (libpcap's own maximum snaplen); anything claiming more than this is
/// a corrupt length field, and trusting it would mean a huge allocation or a
/// long pointless read.
const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

const PCAP_MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANO: u32 = 0xa1b2_3c4d;
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;

/// The section header block type reads the same in both byte orders, which is
/// what lets a reader find it before it knows the section's endianness.
const NG_SHB: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const NG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const NG_IDB: u32 = 0x0000_0001;
const NG_OPB: u32 = 0x0000_0002;
const NG_SPB: u32 = 0x0000_0003;
const NG_EPB: u32 = 0x0000_0006;
/// Block type, block length and trailing block length.
const NG_BLOCK_OVERHEAD: u32 = 12;

const OPT_ENDOFOPT: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

const LINKTYPE_ETHERNET: u32 = 1;
/// `DLT_RAW` as written by some older BSD-derived tools instead of 101.
const DLT_RAW_BSD: u32 = 12;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETH_HEADER_LEN: usize = 14;
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// One captured packet, already converted to Ethernet framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Capture time in nanoseconds since the Unix epoch, whatever resolution
    /// the file used, so timestamps from different files and interfaces can be
    /// compared directly.
    pub ts_ns: u64,
    /// The packet as an Ethernet frame (possibly cut short by the capture's
    /// snapshot length).
    pub frame: Vec<u8>,
    /// Length of the packet on the wire, adjusted by the same amount as the
    /// link-layer header was when the frame was rewritten to Ethernet, so that
    /// `orig_len - frame.len()` is still the number of bytes the capture
    /// dropped.
    pub orig_len: u32,
}

/// Why a capture could not be read.
///
/// Offsets are byte positions in the input where the offending record or
/// block starts, so a message can point the user at the spot with a hex
/// editor or tell them how much of a cut-off file is still usable.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The underlying reader failed (not end-of-file: that is [`Self::Truncated`]).
    #[error("I/O error at offset {offset}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The input does not start with a pcap or pcapng magic number. `magic` is
    /// the first four bytes read as a big-endian number, so it matches what a
    /// hex dump shows.
    #[error("not a pcap or pcapng capture (file starts with 0x{magic:08x})")]
    NotACapture { magic: u32 },
    /// The input ended in the middle of a header, record or block.
    #[error("truncated {what} at offset {offset}")]
    Truncated { offset: u64, what: &'static str },
    /// A header or block contradicts itself or the format.
    #[error("corrupt capture at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

impl PcapError {
    /// Where in the input the problem starts, if it has a position.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Io { offset, .. }
            | Self::Truncated { offset, .. }
            | Self::Corrupt { offset, .. } => Some(*offset),
            Self::NotACapture { .. } => Some(0),
        }
    }
}

fn corrupt(offset: u64, reason: impl Into<String>) -> PcapError {
    PcapError::Corrupt {
        offset,
        reason: reason.into(),
    }
}

/// Reads packets one at a time from a pcap or pcapng stream.
///
/// The reader does no buffering of its own beyond the current record; wrap
/// unbuffered sources in a [`BufReader`] (as [`Reader::open`] does).
///
/// After an error the reader is finished: further calls to
/// [`Reader::next_packet`] return `Ok(None)`, because the position in the
/// stream is no longer on a record boundary and resynchronising would mean
/// guessing.
pub struct Reader<R: Read> {
    input: Input<R>,
    format: Format,
    /// Scratch space for record and block bodies, reused so that a long
    /// capture doesn't allocate twice per packet.
    buf: Vec<u8>,
    skipped: u64,
    done: bool,
}

impl Reader<BufReader<File>> {
    /// Opens a capture file and reads its file (or first section) header.
    pub fn open(path: &Path) -> Result<Self, PcapError> {
        let file = File::open(path).map_err(|source| PcapError::Io { offset: 0, source })?;
        Self::new(BufReader::with_capacity(64 * 1024, file))
    }
}

impl<R: Read> Reader<R> {
    /// Starts reading a capture, consuming its file header (pcap) or first
    /// section header block (pcapng) so that format problems show up before
    /// the caller sets anything else up.
    pub fn new(r: R) -> Result<Self, PcapError> {
        let mut input = Input { r, offset: 0 };
        let mut magic = [0u8; 4];
        input.read_full(&mut magic, 0, "file header")?;
        let mut buf = Vec::new();
        let format = if magic == NG_SHB {
            let mut hdr = [0u8; 8];
            hdr[..4].copy_from_slice(&magic);
            input.read_full(&mut hdr[4..], 0, "section header block")?;
            let mut ng = NgState {
                endian: Endian::Little,
                interfaces: Vec::new(),
                last_ts_ns: 0,
            };
            ng.read_section_header(&mut input, &mut buf, 0, &hdr)?;
            Format::PcapNg(ng)
        } else {
            let (endian, nanos) = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
                (PCAP_MAGIC_MICRO, _) => (Endian::Little, false),
                (PCAP_MAGIC_NANO, _) => (Endian::Little, true),
                (_, PCAP_MAGIC_MICRO) => (Endian::Big, false),
                (_, PCAP_MAGIC_NANO) => (Endian::Big, true),
                _ => {
                    return Err(PcapError::NotACapture {
                        magic: u32::from_be_bytes(magic),
                    });
                }
            };
            let mut rest = [0u8; PCAP_HEADER_LEN - 4];
            input.read_full(&mut rest, 0, "pcap file header")?;
            // The top bits of the link type field can carry FCS information
            // (see pcap-linktype(7)); only the low bits name the link type.
            let link_type = endian.u32(&rest[16..20]) & 0x03ff_ffff;
            Format::Pcap(PcapState {
                endian,
                nanos,
                link_type,
            })
        };
        Ok(Self {
            input,
            format,
            buf,
            skipped: 0,
            done: false,
        })
    }

    /// Returns the next packet, or `Ok(None)` when the input ends cleanly on a
    /// record boundary.
    ///
    /// Packets whose link type cannot be turned into Ethernet are not returned
    /// but counted in [`Reader::skipped`], so one odd interface in a pcapng
    /// file does not stop the replay of the others.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, PcapError> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_next();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    /// Number of packets dropped so far because they could not be presented
    /// as Ethernet: unsupported link types, raw IP whose version nibble is
    /// neither 4 nor 6, or a cooked header cut short by the snapshot length.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes consumed from the input so far. Between calls this is the offset
    /// of the next record, which is handy for progress reporting.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    fn read_next(&mut self) -> Result<Option<Packet>, PcapError> {
        loop {
            let raw = match &mut self.format {
                Format::Pcap(st) => st.next_record(&mut self.input, &mut self.buf)?,
                Format::PcapNg(st) => st.next_record(&mut self.input, &mut self.buf)?,
            };
            let Some(raw) = raw else {
                return Ok(None);
            };
            let data = &self.buf[raw.data.0..raw.data.1];
            match to_ethernet(raw.link_type, data, raw.orig_len) {
                Some((frame, orig_len)) => {
                    return Ok(Some(Packet {
                        ts_ns: raw.ts_ns,
                        frame,
                        orig_len,
                    }));
                }
                None => self.skipped += 1,
            }
        }
    }
}

/// A packet as found in the file, before link-layer conversion. The data
/// lives in the reader's scratch buffer at the given range.
struct RawPacket {
    ts_ns: u64,
    link_type: u32,
    data: (usize, usize),
    orig_len: u32,
}

enum Format {
    Pcap(PcapState),
    PcapNg(NgState),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    // Callers always pass slices of exactly the right length, taken from
    // buffers whose size has already been checked.
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    fn u64(self, b: &[u8]) -> u64 {
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
struct Input<R> {
    r: R,
    offset: u64,
}

impl<R: Read> Input<R> {
    /// Fills `buf` as far as the input allows and returns how many bytes were
    /// read; fewer than `buf.len()` means end of file.
    fn fill(&mut self, buf: &mut [u8], start: u64) -> Result<usize, PcapError> {
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
    fn read_full(
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
    fn read_record_start(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, PcapError> {
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
    fn read_body(
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
    fn skip(&mut self, len: u32, start: u64, what: &'static str) -> Result<(), PcapError> {
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

/// Classic pcap: one link type and one timestamp resolution for the whole file.
struct PcapState {
    endian: Endian,
    nanos: bool,
    link_type: u32,
}

impl PcapState {
    fn next_record<R: Read>(
        &self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<RawPacket>, PcapError> {
        const WHAT: &str = "packet record";
        let start = input.offset;
        let mut hdr = [0u8; PCAP_RECORD_HEADER_LEN];
        if !input.read_record_start(&mut hdr, WHAT)? {
            return Ok(None);
        }
        let e = self.endian;
        let ts_sec = u64::from(e.u32(&hdr[0..4]));
        let ts_frac = u64::from(e.u32(&hdr[4..8]));
        let incl_len = e.u32(&hdr[8..12]);
        let orig_len = e.u32(&hdr[12..16]);
        if incl_len > MAX_RECORD_LEN {
            return Err(corrupt(
                start,
                format!("packet record claims {incl_len} captured bytes"),
            ));
        }
        input.read_body(buf, incl_len, start, WHAT)?;
        let frac_ns = if self.nanos { ts_frac } else { ts_frac * 1_000 };
        Ok(Some(RawPacket {
            // Cannot overflow: u32::MAX seconds is well inside u64 nanoseconds.
            ts_ns: ts_sec * 1_000_000_000 + frac_ns,
            link_type: self.link_type,
            data: (0, buf.len()),
            orig_len,
        }))
    }
}

/// Timestamp unit of a pcapng interface, from its `if_tsresol` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsResol {
    /// Units of 10^-n seconds.
    Decimal(u8),
    /// Units of 2^-n seconds.
    Binary(u8),
}

impl TsResol {
    fn from_option(v: u8) -> Self {
        if v & 0x80 == 0 {
            TsResol::Decimal(v)
        } else {
            TsResol::Binary(v & 0x7f)
        }
    }

    /// Converts a raw timestamp to nanoseconds. Works in u128 so that no
    /// resolution the option can express overflows mid-calculation; units
    /// finer than a nanosecond are truncated.
    fn to_ns(self, ticks: u64) -> u128 {
        let ticks = u128::from(ticks);
        match self {
            // exp <= 127, and ticks * 10^9 < 2^94, so the shift is exact.
            TsResol::Binary(exp) => (ticks * 1_000_000_000) >> exp,
            TsResol::Decimal(exp) if exp <= 9 => ticks * 10u128.pow(u32::from(9 - exp)),
            TsResol::Decimal(exp) => match 10u128.checked_pow(u32::from(exp - 9)) {
                Some(div) => ticks / div,
                // A unit so small that any 64-bit count is under 1 ns.
                None => 0,
            },
        }
    }
}

struct Interface {
    link_type: u32,
    snaplen: u32,
    resol: TsResol,
    /// `if_tsoffset`: seconds to add to every timestamp, used by writers that
    /// store times relative to some epoch other than 1970.
    offset_s: i64,
}

impl Interface {
    fn ts_ns(&self, ticks: u64) -> u64 {
        let ns = self.resol.to_ns(ticks) as i128 + i128::from(self.offset_s) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// pcapng: a sequence of sections, each with its own byte order and its own
/// interfaces, every interface with its own link type and clock resolution.
struct NgState {
    endian: Endian,
    interfaces: Vec<Interface>,
    /// Simple packet blocks carry no timestamp; reusing the previous packet's
    /// keeps replay time monotonic instead of jumping back to 1970.
    last_ts_ns: u64,
}

fn ng_block_name(block_type: u32) -> &'static str {
    match block_type {
        NG_IDB => "interface description block",
        NG_OPB => "packet block",
        NG_SPB => "simple packet block",
        NG_EPB => "enhanced packet block",
        _ => "pcapng block",
    }
}

impl NgState {
    fn next_record<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<RawPacket>, PcapError> {
        loop {
            let start = input.offset;
            let mut hdr = [0u8; 8];
            if !input.read_record_start(&mut hdr, "pcapng block header")? {
                return Ok(None);
            }
            if hdr[..4] == NG_SHB {
                self.read_section_header(input, buf, start, &hdr)?;
                continue;
            }
            let block_type = self.endian.u32(&hdr[0..4]);
            let what = ng_block_name(block_type);
            let total_len = check_block_len(self.endian.u32(&hdr[4..8]), start)?;
            let body_len = total_len - NG_BLOCK_OVERHEAD;
            match block_type {
                NG_IDB | NG_EPB | NG_SPB | NG_OPB => input.read_body(buf, body_len, start, what)?,
                _ => input.skip(body_len, start, what)?,
            }
            self.check_trailer(input, total_len, start, what)?;
            let packet = match block_type {
                NG_IDB => {
                    self.interfaces.push(parse_idb(self.endian, buf, start)?);
                    continue;
                }
                NG_EPB => self.parse_epb(buf, start, false)?,
                NG_OPB => self.parse_epb(buf, start, true)?,
                NG_SPB => self.parse_spb(buf, start)?,
                _ => continue,
            };
            self.last_ts_ns = packet.ts_ns;
            return Ok(Some(packet));
        }
    }

    /// Handles a section header block whose first 8 bytes are in `hdr`. A new
    /// section may switch byte order and always starts without interfaces.
    fn read_section_header<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
        start: u64,
        hdr: &[u8; 8],
    ) -> Result<(), PcapError> {
        const WHAT: &str = "section header block";
        let mut bom = [0u8; 4];
        input.read_full(&mut bom, start, WHAT)?;
        let endian = if u32::from_le_bytes(bom) == NG_BYTE_ORDER_MAGIC {
            Endian::Little
        } else if u32::from_be_bytes(bom) == NG_BYTE_ORDER_MAGIC {
            Endian::Big
        } else {
            return Err(corrupt(
                start,
                format!(
                    "bad byte-order magic 0x{:08x} in section header block",
                    u32::from_be_bytes(bom)
                ),
            ));
        };
        let total_len = check_block_len(endian.u32(&hdr[4..8]), start)?;
        // Fixed part: byte-order magic, version, section length.
        if total_len < NG_BLOCK_OVERHEAD + 16 {
            return Err(corrupt(
                start,
                format!("section header block of {total_len} bytes is too short"),
            ));
        }
        input.read_body(buf, total_len - NG_BLOCK_OVERHEAD - 4, start, WHAT)?;
        self.endian = endian;
        self.check_trailer(input, total_len, start, WHAT)?;
        let major = endian.u16(&buf[0..2]);
        let minor = endian.u16(&buf[2..4]);
        // A different major version may lay blocks out differently; reading
        // on would produce garbage packets rather than an error.
        if major != 1 {
            return Err(corrupt(
                start,
                format!("unsupported pcapng version {major}.{minor}"),
            ));
        }
        self.interfaces.clear();
        Ok(())
    }

    /// The trailing copy of the block length is the only integrity check the
    /// format has; a mismatch means we have lost track of block boundaries.
    fn check_trailer<R: Read>(
        &self,
        input: &mut Input<R>,
        total_len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let mut t = [0u8; 4];
        input.read_full(&mut t, start, what)?;
        let trailer = self.endian.u32(&t);
        if trailer != total_len {
            return Err(corrupt(
                start,
                format!("{what} length {total_len} disagrees with trailing length {trailer}"),
            ));
        }
        Ok(())
    }

    fn interface(&self, id: u32, start: u64) -> Result<&Interface, PcapError> {
        self.interfaces.get(id as usize).ok_or_else(|| {
            corrupt(
                start,
                format!(
                    "packet refers to interface {id}, but the section defines {}",
                    self.interfaces.len()
                ),
            )
        })
    }

    /// Enhanced packet blocks, and the obsolete packet blocks that share their
    /// layout except for a 16-bit interface id (still written by some old
    /// tools).
    fn parse_epb(&self, body: &[u8], start: u64, obsolete: bool) -> Result<RawPacket, PcapError> {
        const FIXED: usize = 20;
        let name = if obsolete {
            "packet block"
        } else {
            "enhanced packet block"
        };
        if body.len() < FIXED {
            return Err(corrupt(start, format!("{name} too short")));
        }
        let e = self.endian;
        let if_id = if obsolete {
            u32::from(e.u16(&body[0..2]))
        } else {
            e.u32(&body[0..4])
        };
        let ticks = (u64::from(e.u32(&body[4..8])) << 32) | u64::from(e.u32(&body[8..12]));
        let cap_len = e.u32(&body[12..16]);
        let orig_len = e.u32(&body[16..20]);
        if cap_len as usize > body.len() - FIXED {
            return Err(corrupt(
                start,
                format!(
                    "{name} claims {cap_len} captured bytes but holds only {}",
                    body.len() - FIXED
                ),
            ));
        }
        let iface = self.interface(if_id, start)?;
        Ok(RawPacket {
            ts_ns: iface.ts_ns(ticks),
            link_type: iface.link_type,
            data: (FIXED, FIXED + cap_len as usize),
            orig_len,
        })
    }

    /// Simple packet blocks record no captured length: it is the original
    /// length limited by the interface's snaplen, and the block body (whose
    /// tail is only padding) bounds it as well.
    fn parse_spb(&self, body: &[u8], start: u64) -> Result<RawPacket, PcapError> {
        if body.len() < 4 {
            return Err(corrupt(start, "simple packet block too short"));
        }
        let orig_len = self.endian.u32(&body[0..4]);
        let iface = self.interface(0, start)?;
        let mut cap_len = (orig_len as usize).min(body.len() - 4);
        if iface.snaplen != 0 {
            cap_len = cap_len.min(iface.snaplen as usize);
        }
        Ok(RawPacket {
            ts_ns: self.last_ts_ns,
            link_type: iface.link_type,
            data: (4, 4 + cap_len),
            orig_len,
        })
    }
}

fn check_block_len(len: u32, start: u64) -> Result<u32, PcapError> {
    if len < NG_BLOCK_OVERHEAD || !len.is_multiple_of(4) || len > MAX_RECORD_LEN {
        return Err(corrupt(start, format!("invalid pcapng block length {len}")));
    }
    Ok(len)
}

fn parse_idb(e: Endian, body: &[u8], start: u64) -> Result<Interface, PcapError> {
    if body.len() < 8 {
        return Err(corrupt(start, "interface description block too short"));
    }
    let mut iface = Interface {
        link_type: u32::from(e.u16(&body[0..2])),
        snaplen: e.u32(&body[4..8]),
        resol: TsResol::Decimal(6),
        offset_s: 0,
    };
    let mut opts = &body[8..];
    while opts.len() >= 4 {
        let code = e.u16(&opts[0..2]);
        let len = usize::from(e.u16(&opts[2..4]));
        if code == OPT_ENDOFOPT {
            break;
        }
        let padded = len.next_multiple_of(4);
        // The last option's padding may legitimately run into the block end.
        if 4 + len > opts.len() {
            return Err(corrupt(
                start,
                format!("interface option {code} overruns its block"),
            ));
        }
        let value = &opts[4..4 + len];
        match (code, len) {
            (OPT_IF_TSRESOL, 1) => iface.resol = TsResol::from_option(value[0]),
            (OPT_IF_TSOFFSET, 8) => iface.offset_s = e.u64(value) as i64,
            (OPT_IF_TSRESOL | OPT_IF_TSOFFSET, _) => {
                return Err(corrupt(
                    start,
                    format!("interface option {code} has bad length {len}"),
                ));
            }
            _ => {}
        }
        opts = &opts[(4 + padded).min(opts.len())..];
    }
    Ok(iface)
}

/// Rewrites a captured packet as an Ethernet frame, returning it with the
/// correspondingly adjusted original length, or `None` if the link type is
/// one we cannot map.
///
/// Synthesised headers use all-zero MAC addresses: the detector keys flows on
/// IP addresses and ports, and zero MACs make the rewrite obvious in a dump.
/// For cooked captures the protocol field is already an EtherType (in network
/// byte order), and any 802.1Q tag the kernel left in place follows it, which
/// is exactly the Ethernet layout, so the payload is copied unchanged.
fn to_ethernet(link_type: u32, data: &[u8], orig_len: u32) -> Option<(Vec<u8>, u32)> {
    let be16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (hdr_len, ethertype) = match link_type {
        LINKTYPE_ETHERNET => return Some((data.to_vec(), orig_len)),
        LINKTYPE_LINUX_SLL => (SLL_HEADER_LEN, be16(14)?),
        LINKTYPE_LINUX_SLL2 => (SLL2_HEADER_LEN, be16(0)?),
        LINKTYPE_RAW | DLT_RAW_BSD => match data.first()? >> 4 {
            4 => (0, ETHERTYPE_IPV4),
            6 => (0, ETHERTYPE_IPV6),
            _ => return None,
        },
        LINKTYPE_IPV4 => (0, ETHERTYPE_IPV4),
        LINKTYPE_IPV6 => (0, ETHERTYPE_IPV6),
        _ => return None,
    };
    let payload = data.get(hdr_len..)?;
    let mut frame = Vec::with_capacity(ETH_HEADER_LEN + payload.len());
    frame.extend_from_slice(&[0u8; 12]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    let orig_len = orig_len
        .saturating_sub(hdr_len as u32)
        .saturating_add(ETH_HEADER_LEN as u32);
    Some((frame, orig_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    // ---- tiny capture writers ----------------------------------------------

    /// Byte sink that writes integers in a chosen byte order.
    struct W {
        big: bool,
        out: Vec<u8>,
    }

    impl W {
        fn new(big: bool) -> Self {
            W {
                big,
                out: Vec::new(),
            }
        }
        fn u16(&mut self, v: u16) -> &mut Self {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.out.extend_from_slice(&b);
            self
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.out.extend_from_slice(&b);
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.out.extend_from_slice(&b);
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.out.extend_from_slice(b);
            self
        }
        fn pad4(&mut self) -> &mut Self {
            while !self.out.len().is_multiple_of(4) {
                self.out.push(0);
            }
            self
        }
    }

    fn pcap_header(big: bool, nanos: bool, link: u32) -> W {
        let mut w = W::new(big);
        w.u32(if nanos {
            PCAP_MAGIC_NANO
        } else {
            PCAP_MAGIC_MICRO
        })
        .u16(2)
        .u16(4)
        .u32(0)
        .u32(0)
        .u32(65535)
        .u32(link);
        w
    }

    fn pcap_record(w: &mut W, sec: u32, frac: u32, data: &[u8], orig: u32) {
        w.u32(sec)
            .u32(frac)
            .u32(data.len() as u32)
            .u32(orig)
            .bytes(data);
    }

    /// Appends a pcapng block with correct leading and trailing lengths.
    fn ng_block(w: &mut W, block_type: u32, body: &[u8]) {
        let padded = body.len().next_multiple_of(4);
        let total = (padded + 12) as u32;
        w.u32(block_type).u32(total).bytes(body).pad4().u32(total);
    }

    fn ng_shb(w: &mut W) {
        let mut b = W::new(w.big);
        b.u32(NG_BYTE_ORDER_MAGIC).u16(1).u16(0).u64(u64::MAX);
        ng_block(w, 0x0a0d_0d0a, &b.out);
    }

    /// `opts` are (code, value) pairs; an end-of-options marker is appended.
    fn ng_idb(w: &mut W, link: u16, snaplen: u32, opts: &[(u16, &[u8])]) {
        let mut b = W::new(w.big);
        b.u16(link).u16(0).u32(snaplen);
        for (code, value) in opts {
            b.u16(*code).u16(value.len() as u16).bytes(value).pad4();
        }
        if !opts.is_empty() {
            b.u16(0).u16(0);
        }
        ng_block(w, NG_IDB, &b.out);
    }

    fn ng_epb(w: &mut W, iface: u32, ticks: u64, data: &[u8], orig: u32) {
        let mut b = W::new(w.big);
        b.u32(iface)
            .u32((ticks >> 32) as u32)
            .u32(ticks as u32)
            .u32(data.len() as u32)
            .u32(orig)
            .bytes(data);
        ng_block(w, NG_EPB, &b.out);
    }

    fn ng_spb(w: &mut W, data: &[u8], orig: u32) {
        let mut b = W::new(w.big);
        b.u32(orig).bytes(data);
        ng_block(w, NG_SPB, &b.out);
    }

    /// Reads a whole capture, returning packets and the terminating result.
    fn read_all(bytes: &[u8]) -> (Vec<Packet>, Result<(), PcapError>, u64) {
        let mut r = match Reader::new(Cursor::new(bytes)) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Err(e), 0),
        };
        let mut pkts = Vec::new();
        loop {
            match r.next_packet() {
                Ok(Some(p)) => pkts.push(p),
                Ok(None) => return (pkts, Ok(()), r.skipped()),
                Err(e) => return (pkts, Err(e), r.skipped()),
            }
        }
    }

    fn read_ok(bytes: &[u8]) -> Vec<Packet> {
        let (pkts, res, _) = read_all(bytes);
        res.unwrap();
        pkts
    }

    fn eth_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const IPV4_STUB: &[u8] = &[0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1];
    const IPV6_STUB: &[u8] = &[0x60, 0, 0, 0, 0, 0, 6, 64];

    fn assert_truncated(res: Result<(), PcapError>, offset: u64) {
        match res {
            Err(PcapError::Truncated { offset: o, .. }) => assert_eq!(o, offset),
            other => panic!("expected Truncated at {offset}, got {other:?}"),
        }
    }

    fn assert_corrupt(res: Result<(), PcapError>, offset: u64) -> String {
        match res {
            Err(PcapError::Corrupt { offset: o, reason }) => {
                assert_eq!(o, offset, "{reason}");
                reason
            }
            other => panic!("expected Corrupt at {offset}, got {other:?}"),
        }
    }

    // ---- classic pcap ------------------------------------------------------

    #[test]
    fn pcap_all_four_magics() {
        let f1 = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let f2 = eth_frame(ETHERTYPE_IPV6, IPV6_STUB);
        for big in [false, true] {
            for nanos in [false, true] {
                let mut w = pcap_header(big, nanos, LINKTYPE_ETHERNET);
                pcap_record(&mut w, 1_700_000_000, 123_456, &f1, 1500);
                pcap_record(&mut w, 1_700_000_001, 999_999, &f2, f2.len() as u32);
                let pkts = read_ok(&w.out);
                let unit = if nanos { 1 } else { 1_000 };
                assert_eq!(pkts.len(), 2, "big={big} nanos={nanos}");
                assert_eq!(pkts[0].ts_ns, 1_700_000_000_000_000_000 + 123_456 * unit);
                assert_eq!(pkts[1].ts_ns, 1_700_000_001_000_000_000 + 999_999 * unit);
                assert_eq!(pkts[0].frame, f1);
                assert_eq!(pkts[0].orig_len, 1500);
                assert_eq!(pkts[1].frame, f2);
                assert_eq!(pkts[1].orig_len, f2.len() as u32);
            }
        }
    }

    #[test]
    fn pcap_link_type_fcs_bits_are_ignored() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let mut w = pcap_header(false, false, 0x1000_0000 | LINKTYPE_ETHERNET);
        pcap_record(&mut w, 1, 0, &f, f.len() as u32);
        assert_eq!(read_ok(&w.out)[0].frame, f);
    }

    #[test]
    fn garbage_magic_is_not_a_capture() {
        let (_, res, _) = read_all(b"GIF89a\x01\x00\x01\x00 more bytes here ....");
        match res {
            Err(PcapError::NotACapture { magic }) => assert_eq!(magic, 0x4749_4638),
            other => panic!("{other:?}"),
        }
        // gzip'd captures are a common mistake.
        let (_, res, _) = read_all(&[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0]);
        assert!(matches!(
            res,
            Err(PcapError::NotACapture { magic: 0x1f8b_0800 })
        ));
        assert_eq!(
            PcapError::NotACapture { magic: 0x1f8b_0800 }.to_string(),
            "not a pcap or pcapng capture (file starts with 0x1f8b0800)"
        );
    }

    #[test]
    fn empty_input_is_truncated_header() {
        let (_, res, _) = read_all(&[]);
        assert_truncated(res, 0);
    }

    /// Cutting a 2-packet capture at every byte must yield exactly the
    /// packets that are complete, then a clean end at record boundaries or a
    /// truncation error pointing at the start of the cut record.
    fn check_every_truncation(full: &[u8], header_len: usize, boundaries: &[usize]) {
        let all = read_ok(full);
        assert_eq!(all.len(), 2);
        assert_eq!(boundaries.len(), 2);
        let record_starts = [header_len, boundaries[0]];
        for cut in 0..=full.len() {
            let (pkts, res, _) = read_all(&full[..cut]);
            if cut < header_len {
                assert!(pkts.is_empty());
                assert_truncated(res, 0);
                continue;
            }
            let complete = boundaries.iter().filter(|&&b| b <= cut).count();
            assert_eq!(pkts, all[..complete], "cut at {cut}");
            if cut == header_len || boundaries.contains(&cut) {
                assert!(res.is_ok(), "cut at {cut}: {res:?}");
            } else {
                assert_truncated(res, record_starts[complete] as u64);
            }
        }
    }

    #[test]
    fn pcap_truncation_at_every_offset() {
        let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
        pcap_record(&mut w, 10, 1, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
        let b1 = w.out.len();
        pcap_record(&mut w, 11, 2, &eth_frame(ETHERTYPE_IPV6, IPV6_STUB), 200);
        let b2 = w.out.len();
        check_every_truncation(&w.out, PCAP_HEADER_LEN, &[b1, b2]);

        // And the message the CLI will print.
        let (_, res, _) = read_all(&w.out[..b1 + 3]);
        assert_eq!(
            res.unwrap_err().to_string(),
            format!("truncated packet record at offset {b1}")
        );
    }

    #[test]
    fn pcapng_truncation_at_every_offset() {
        for big in [false, true] {
            let mut w = W::new(big);
            ng_shb(&mut w);
            let shb_len = w.out.len();
            ng_idb(&mut w, LINKTYPE_ETHERNET as u16, 0, &[]);
            let idb_end = w.out.len();
            ng_epb(&mut w, 0, 5, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
            let b1 = w.out.len();
            ng_epb(&mut w, 0, 6, &eth_frame(ETHERTYPE_IPV6, IPV6_STUB), 200);
            let b2 = w.out.len();
            // The IDB yields no packet, so ending right after it is clean and
            // cutting inside it is a truncated block at its start.
            let all = read_ok(&w.out);
            for cut in 0..=w.out.len() {
                let (pkts, res, _) = read_all(&w.out[..cut]);
                let complete = [b1, b2].iter().filter(|&&b| b <= cut).count();
                assert_eq!(pkts, all[..complete], "cut at {cut}");
                let expect_trunc_at = if cut < shb_len {
                    Some(0)
                } else if cut == shb_len || cut == idb_end || cut == b1 || cut == b2 {
                    None
                } else if cut < idb_end {
                    Some(shb_len)
                } else if cut < b1 {
                    Some(idb_end)
                } else {
                    Some(b1)
                };
                match expect_trunc_at {
                    None => assert!(res.is_ok(), "cut at {cut}: {res:?}"),
                    Some(o) => assert_truncated(res, o as u64),
                }
            }
        }
    }

    #[test]
    fn pcap_absurd_record_length_is_corrupt() {
        let mut w = pcap_header(true, false, LINKTYPE_ETHERNET);
        pcap_record(&mut w, 1, 0, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
        let second = w.out.len();
        w.u32(2).u32(0).u32(MAX_RECORD_LEN + 1).u32(64);
        let (pkts, res, _) = read_all(&w.out);
        assert_eq!(pkts.len(), 1);
        assert_corrupt(res, second as u64);
    }

    #[test]
    fn reader_is_fused_after_an_error() {
        let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
        w.u32(1).u32(0).u32(10).u32(10).bytes(&[1, 2, 3]);
        let mut r = Reader::new(Cursor::new(&w.out)).unwrap();
        assert!(r.next_packet().is_err());
        assert!(r.next_packet().unwrap().is_none());
    }

    /// Delivers one byte per read and sometimes reports `Interrupted`, to
    /// prove nothing assumes a read fills its buffer.
    struct Dribble<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::Error::from(ErrorKind::Interrupted));
            }
            let Some((&first, rest)) = self.data.split_first() else {
                return Ok(0);
            };
            if buf.is_empty() {
                return Ok(0);
            }
            buf[0] = first;
            self.data = rest;
            Ok(1)
        }
    }

    #[test]
    fn short_reads_and_interrupts() {
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, LINKTYPE_ETHERNET as u16, 0, &[]);
        ng_block(&mut w, 0x0000_0bad, &[7; 13]);
        ng_epb(&mut w, 0, 5, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
        let expected = read_ok(&w.out);
        let mut r = Reader::new(Dribble {
            data: &w.out,
            calls: 0,
        })
        .unwrap();
        let mut got = Vec::new();
        while let Some(p) = r.next_packet().unwrap() {
            got.push(p);
        }
        assert_eq!(got, expected);
        assert_eq!(r.offset(), w.out.len() as u64);
    }

    #[test]
    fn offset_tracks_record_boundaries() {
        let mut w = pcap_header(false, true, LINKTYPE_ETHERNET);
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        pcap_record(&mut w, 1, 0, &f, 60);
        pcap_record(&mut w, 2, 0, &f, 60);
        let mut r = Reader::new(Cursor::new(&w.out)).unwrap();
        assert_eq!(r.offset(), 24);
        r.next_packet().unwrap().unwrap();
        assert_eq!(r.offset(), (24 + 16 + f.len()) as u64);
        r.next_packet().unwrap().unwrap();
        assert!(r.next_packet().unwrap().is_none());
        assert_eq!(r.offset(), w.out.len() as u64);
    }

    #[test]
    fn open_reads_a_file() {
        let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        pcap_record(&mut w, 3, 4, &f, 60);
        let path = std::env::temp_dir().join(format!("pcap-open-test-{}.pcap", std::process::id()));
        std::fs::write(&path, &w.out).unwrap();
        let mut r = Reader::open(&path).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(p.frame, f);
        assert_eq!(p.ts_ns, 3_000_004_000);
        assert!(r.next_packet().unwrap().is_none());

        let missing = Reader::open(Path::new("/nonexistent/dir/x.pcap"));
        assert!(matches!(missing, Err(PcapError::Io { offset: 0, .. })));
    }

    // ---- link types --------------------------------------------------------

    fn one_packet_pcap(link: u32, data: &[u8], orig: u32) -> (Vec<Packet>, u64) {
        let mut w = pcap_header(false, false, link);
        pcap_record(&mut w, 1, 0, data, orig);
        let (pkts, res, skipped) = read_all(&w.out);
        res.unwrap();
        (pkts, skipped)
    }

    #[test]
    fn sll_becomes_ethernet() {
        // packet type 0 (to us), ARPHRD_ETHER, 6-byte address, IPv4.
        let mut sll = vec![0, 0, 0, 1, 0, 6, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0, 0];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(IPV4_STUB);
        let (pkts, _) = one_packet_pcap(LINKTYPE_LINUX_SLL, &sll, 1000);
        let mut want = vec![0u8; 12];
        want.extend_from_slice(&[0x08, 0x00]);
        want.extend_from_slice(IPV4_STUB);
        assert_eq!(pkts[0].frame, want);
        // 16-byte cooked header replaced by a 14-byte Ethernet one.
        assert_eq!(pkts[0].orig_len, 998);
    }

    #[test]
    fn sll_keeps_vlan_tag_after_header() {
        let mut sll = vec![0, 4, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x81, 0x00];
        let tag_and_ip: Vec<u8> = [&[0x00, 0x2a, 0x08, 0x00][..], IPV4_STUB].concat();
        sll.extend_from_slice(&tag_and_ip);
        let (pkts, _) = one_packet_pcap(LINKTYPE_LINUX_SLL, &sll, sll.len() as u32);
        let want = [&[0u8; 12][..], &[0x81, 0x00], &tag_and_ip].concat();
        assert_eq!(pkts[0].frame, want);
        assert_eq!(pkts[0].orig_len, want.len() as u32);
    }

    #[test]
    fn sll2_becomes_ethernet() {
        // protocol, reserved, ifindex 3, ARPHRD_ETHER, outgoing, 6-byte addr.
        let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 4, 6];
        sll2.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(IPV6_STUB);
        let (pkts, _) = one_packet_pcap(LINKTYPE_LINUX_SLL2, &sll2, sll2.len() as u32);
        let want = [&[0u8; 12][..], &[0x86, 0xdd], IPV6_STUB].concat();
        assert_eq!(pkts[0].frame, want);
        assert_eq!(pkts[0].orig_len, want.len() as u32);
    }

    #[test]
    fn raw_ip_link_types() {
        let v4 = [&[0u8; 12][..], &[0x08, 0x00], IPV4_STUB].concat();
        let v6 = [&[0u8; 12][..], &[0x86, 0xdd], IPV6_STUB].concat();
        for link in [LINKTYPE_RAW, DLT_RAW_BSD] {
            let (p, _) = one_packet_pcap(link, IPV4_STUB, IPV4_STUB.len() as u32);
            assert_eq!(p[0].frame, v4);
            assert_eq!(p[0].orig_len, v4.len() as u32);
            let (p, _) = one_packet_pcap(link, IPV6_STUB, 40);
            assert_eq!(p[0].frame, v6);
            assert_eq!(p[0].orig_len, 54);
            // Neither IPv4 nor IPv6, or empty: nothing to call it.
            let (p, skipped) = one_packet_pcap(link, &[0x50, 0, 0, 0], 4);
            assert!(p.is_empty());
            assert_eq!(skipped, 1);
            let (p, skipped) = one_packet_pcap(link, &[], 0);
            assert!(p.is_empty());
            assert_eq!(skipped, 1);
        }
        // The family-specific link types trust the header, not the nibble.
        let (p, _) = one_packet_pcap(LINKTYPE_IPV4, IPV4_STUB, 20);
        assert_eq!(p[0].frame, v4);
        let (p, _) = one_packet_pcap(LINKTYPE_IPV6, IPV6_STUB, 40);
        assert_eq!(p[0].frame, v6);
    }

    #[test]
    fn unsupported_link_types_are_counted_not_returned() {
        let mut w = pcap_header(false, false, 105); // 802.11
        pcap_record(&mut w, 1, 0, &[0; 30], 30);
        pcap_record(&mut w, 2, 0, &[0; 30], 30);
        let (pkts, res, skipped) = read_all(&w.out);
        res.unwrap();
        assert!(pkts.is_empty());
        assert_eq!(skipped, 2);
        // A cooked header cut short by the snaplen has no protocol to use.
        let (pkts, skipped) = one_packet_pcap(LINKTYPE_LINUX_SLL, &[0; 10], 60);
        assert!(pkts.is_empty());
        assert_eq!(skipped, 1);
    }

    // ---- pcapng ------------------------------------------------------------

    #[test]
    fn pcapng_both_endiannesses_default_microseconds() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        for big in [false, true] {
            let mut w = W::new(big);
            ng_shb(&mut w);
            ng_idb(&mut w, 1, 262_144, &[]);
            ng_epb(&mut w, 0, 1_700_000_000_123_456, &f, 1514);
            let pkts = read_ok(&w.out);
            assert_eq!(pkts.len(), 1);
            assert_eq!(pkts[0].ts_ns, 1_700_000_000_123_456_000);
            assert_eq!(pkts[0].frame, f);
            assert_eq!(pkts[0].orig_len, 1514);
        }
    }

    #[test]
    fn pcapng_timestamp_resolutions_and_offset() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        for big in [false, true] {
            let mut w = W::new(big);
            ng_shb(&mut w);
            // 0: nanoseconds.
            ng_idb(&mut w, 1, 0, &[(OPT_IF_TSRESOL, &[9])]);
            // 1: 2^-20 s, with a comment option first to exercise skipping.
            ng_idb(
                &mut w,
                1,
                0,
                &[(1, b"eth1 x"), (OPT_IF_TSRESOL, &[0x80 | 20])],
            );
            // 2: milliseconds relative to 1_600_000_000 s.
            let off = if big {
                1_600_000_000u64.to_be_bytes()
            } else {
                1_600_000_000u64.to_le_bytes()
            };
            ng_idb(
                &mut w,
                1,
                0,
                &[(OPT_IF_TSRESOL, &[3]), (OPT_IF_TSOFFSET, &off)],
            );
            // 3: picoseconds (finer than we keep).
            ng_idb(&mut w, 1, 0, &[(OPT_IF_TSRESOL, &[12])]);
            ng_epb(&mut w, 0, 1_700_000_000_123_456_789, &f, 60);
            // 5 s + 3/4 s + one tick of 2^-20 s (953.674... ns).
            ng_epb(&mut w, 1, (5 << 20) | (3 << 18) | 1, &f, 60);
            ng_epb(&mut w, 2, 42_250, &f, 60);
            ng_epb(&mut w, 3, 1_000_000_000_000_999, &f, 60);
            let pkts = read_ok(&w.out);
            let ts: Vec<u64> = pkts.iter().map(|p| p.ts_ns).collect();
            assert_eq!(
                ts,
                [
                    1_700_000_000_123_456_789,
                    5_750_000_953,
                    1_600_000_042_250_000_000,
                    1_000_000_000_000,
                ],
                "big={big}"
            );
        }
    }

    #[test]
    fn tsresol_conversion_edges() {
        assert_eq!(TsResol::Binary(0).to_ns(2), 2_000_000_000);
        assert_eq!(TsResol::Binary(30).to_ns(1 << 30), 1_000_000_000);
        assert_eq!(TsResol::Binary(127).to_ns(u64::MAX), 0);
        assert_eq!(TsResol::Decimal(0).to_ns(7), 7_000_000_000);
        assert_eq!(TsResol::Decimal(127).to_ns(u64::MAX), 0);
        assert_eq!(TsResol::from_option(0x8a), TsResol::Binary(10));
        assert_eq!(TsResol::from_option(0x06), TsResol::Decimal(6));
        let iface = Interface {
            link_type: 1,
            snaplen: 0,
            resol: TsResol::Decimal(0),
            offset_s: -10,
        };
        assert_eq!(iface.ts_ns(3), 0, "negative times clamp to the epoch");
    }

    #[test]
    fn pcapng_simple_packet_block_uses_previous_timestamp_and_snaplen() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 20, &[]);
        ng_spb(&mut w, &f[..20], f.len() as u32); // before any timestamp
        ng_epb(&mut w, 0, 7_000_001, &f[..20], f.len() as u32);
        ng_spb(&mut w, &f[..20], f.len() as u32);
        ng_spb(&mut w, &f[..10], 10); // shorter than snaplen
        let pkts = read_ok(&w.out);
        let ts: Vec<u64> = pkts.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, [0, 7_000_001_000, 7_000_001_000, 7_000_001_000]);
        assert_eq!(pkts[2].frame, f[..20]);
        assert_eq!(pkts[2].orig_len, f.len() as u32);
        assert_eq!(pkts[3].frame, f[..10]);
    }

    #[test]
    fn pcapng_skips_unknown_blocks_and_converts_per_interface() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let mut w = W::new(true);
        ng_shb(&mut w);
        ng_block(&mut w, 4, &[0; 8]); // name resolution
        ng_idb(&mut w, LINKTYPE_LINUX_SLL2 as u16, 0, &[]);
        ng_idb(&mut w, 105, 0, &[]); // 802.11: unsupported
        ng_idb(&mut w, LINKTYPE_ETHERNET as u16, 0, &[]);
        ng_block(&mut w, 5, &[0; 20]); // interface statistics
        ng_block(&mut w, 0x4000_0bad, &[1, 2, 3]); // custom, odd body
        let sll2 = [
            &[0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6][..],
            &[0; 8],
            IPV6_STUB,
        ]
        .concat();
        ng_epb(&mut w, 0, 1, &sll2, sll2.len() as u32);
        ng_epb(&mut w, 1, 2, &[0; 24], 24);
        ng_epb(&mut w, 2, 3, &f, f.len() as u32);
        let (pkts, res, skipped) = read_all(&w.out);
        res.unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(pkts.len(), 2);
        assert_eq!(
            pkts[0].frame,
            [&[0u8; 12][..], &[0x86, 0xdd], IPV6_STUB].concat()
        );
        assert_eq!(pkts[0].ts_ns, 1_000);
        assert_eq!(pkts[1].frame, f);
        assert_eq!(pkts[1].ts_ns, 3_000);
    }

    #[test]
    fn pcapng_obsolete_packet_block() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[]);
        let mut b = W::new(false);
        b.u16(0)
            .u16(0)
            .u32(0)
            .u32(77)
            .u32(f.len() as u32)
            .u32(99)
            .bytes(&f);
        ng_block(&mut w, NG_OPB, &b.out);
        let pkts = read_ok(&w.out);
        assert_eq!(pkts[0].ts_ns, 77_000);
        assert_eq!(pkts[0].frame, f);
        assert_eq!(pkts[0].orig_len, 99);
    }

    #[test]
    fn pcapng_multiple_sections_reset_byte_order_and_interfaces() {
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[(OPT_IF_TSRESOL, &[9])]);
        ng_epb(&mut w, 0, 1_000, &f, 60);
        // Second section, big-endian, whose interface 0 is raw IP in µs.
        let mut be = W::new(true);
        ng_shb(&mut be);
        ng_idb(&mut be, LINKTYPE_RAW as u16, 0, &[]);
        ng_epb(&mut be, 0, 2_000, IPV4_STUB, 20);
        w.bytes(&be.out);
        let second_section = w.out.len();
        // Third section has no interfaces, so its packet is corrupt.
        ng_shb(&mut w);
        let bad_epb = w.out.len();
        ng_epb(&mut w, 0, 1, &f, 60);
        let (pkts, res, _) = read_all(&w.out);
        assert_eq!(pkts.len(), 2);
        assert_eq!(pkts[0].ts_ns, 1_000);
        assert_eq!(pkts[0].frame, f);
        assert_eq!(pkts[1].ts_ns, 2_000_000);
        assert_eq!(pkts[1].frame[12..14], [0x08, 0x00]);
        assert!(second_section < bad_epb);
        let reason = assert_corrupt(res, bad_epb as u64);
        assert!(reason.contains("interface 0"), "{reason}");
    }

    #[test]
    fn pcapng_bad_block_lengths_are_corrupt() {
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[]);
        let at = w.out.len() as u64;
        let prefix = w.out.clone();

        for bad_len in [8u32, 30, MAX_RECORD_LEN + 4] {
            let mut w = W::new(false);
            w.bytes(&prefix).u32(NG_EPB).u32(bad_len).bytes(&[0; 64]);
            let (_, res, _) = read_all(&w.out);
            let reason = assert_corrupt(res, at);
            assert!(reason.contains(&bad_len.to_string()), "{reason}");
        }

        // Trailing length disagreeing with the leading one.
        let mut w = W::new(false);
        w.bytes(&prefix).u32(0x0bad).u32(16).u32(0).u32(20);
        let (_, res, _) = read_all(&w.out);
        let reason = assert_corrupt(res, at);
        assert!(reason.contains("trailing"), "{reason}");

        // Captured length larger than the block.
        let mut w = W::new(false);
        let mut b = W::new(false);
        b.u32(0).u32(0).u32(0).u32(100).u32(100).bytes(&[0; 8]);
        w.bytes(&prefix);
        ng_block(&mut w, NG_EPB, &b.out);
        let (_, res, _) = read_all(&w.out);
        assert_corrupt(res, at);
    }

    #[test]
    fn pcapng_bad_section_headers() {
        // Byte-order magic that is neither order.
        let mut w = W::new(false);
        w.bytes(&NG_SHB).u32(28).u32(0xdead_beef).bytes(&[0; 16]);
        let (_, res, _) = read_all(&w.out);
        assert_corrupt(res, 0);

        // Unknown major version.
        let mut w = W::new(true);
        let mut b = W::new(true);
        b.u32(NG_BYTE_ORDER_MAGIC).u16(2).u16(0).u64(0);
        ng_block(&mut w, 0x0a0d_0d0a, &b.out);
        let (_, res, _) = read_all(&w.out);
        let reason = assert_corrupt(res, 0);
        assert!(reason.contains("2.0"), "{reason}");

        // if_tsresol with the wrong size.
        let mut w = W::new(false);
        ng_shb(&mut w);
        let at = w.out.len() as u64;
        ng_idb(&mut w, 1, 0, &[(OPT_IF_TSRESOL, &[9, 9])]);
        let (_, res, _) = read_all(&w.out);
        assert_corrupt(res, at);
    }
}
