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
//! Only the standard library is used: the maintained crate does not keep these
//! promises (the module documentation of `capture` lists where it falls short).

use std::{
    fs::File,
    io::{self, Read},
    ops::Range,
    path::Path,
};

use super::{
    classic::{PCAP_HEADER_LEN, PCAP_MAGIC_MICRO, PCAP_MAGIC_NANO, PcapState},
    input::{Endian, Input},
    link::to_ethernet,
    pcapng::{NG_SHB, NgState},
};

/// Most captured bytes a packet record may hold: 256 KiB, libpcap's maximum
/// snapshot length for the link types replay reads (tcpdump's default `-s`).
/// A record claiming more is a corrupt length field, and trusting it would mean
/// a huge allocation or a long pointless read.
pub(super) const MAX_RECORD_LEN: u32 = 256 * 1024;
/// Largest pcapng block read into memory: a packet of [`MAX_RECORD_LEN`] bytes
/// plus its block's fixed fields and room for options. Blocks replay has no use
/// for are skipped without being held, whatever their length.
pub(super) const MAX_BLOCK_LEN: u32 = MAX_RECORD_LEN + 64 * 1024;

/// One captured packet as the reader hands it out: the frame still lies in the reader's
/// buffer, valid until the next read. [`Frame::to_packet`] keeps a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// As [`Packet::ts_ns`].
    pub ts_ns: u64,
    /// As [`Packet::frame`].
    pub frame: &'a [u8],
    /// As [`Packet::orig_len`].
    pub orig_len: u32,
}

impl Frame<'_> {
    pub fn to_packet(&self) -> Packet {
        Packet {
            ts_ns: self.ts_ns,
            frame: self.frame.to_vec(),
            orig_len: self.orig_len,
        }
    }
}

/// One captured packet, already converted to Ethernet framing, in memory of its own.
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

pub(super) fn corrupt(offset: u64, reason: impl Into<String>) -> PcapError {
    PcapError::Corrupt {
        offset,
        reason: reason.into(),
    }
}

/// Reads packets one at a time from a pcap or pcapng stream.
///
/// The reader buffers its input in large blocks itself (no `BufReader` is needed) and
/// hands each frame out where it lies in that buffer: a link-layer header other than
/// Ethernet is rewritten in place, so reading a packet neither allocates nor copies it.
///
/// After an error the reader is finished: further calls to
/// [`Reader::next_packet`] return `Ok(None)`, because the position in the
/// stream is no longer on a record boundary and resynchronising would mean
/// guessing.
pub struct Reader<R: Read> {
    input: Input<R>,
    format: Format,
    skipped: u64,
    done: bool,
}

impl Reader<File> {
    /// Opens a capture file and reads its file (or first section) header.
    pub fn open(path: &Path) -> Result<Self, PcapError> {
        let file = File::open(path).map_err(|source| PcapError::Io { offset: 0, source })?;
        Self::new(file)
    }
}

impl<R: Read> Reader<R> {
    /// Starts reading a capture, consuming its file header (pcap) or first
    /// section header block (pcapng) so that format problems show up before
    /// the caller sets anything else up.
    pub fn new(r: R) -> Result<Self, PcapError> {
        let mut input = Input::new(r);
        let mut magic = [0u8; 4];
        input.read_full(&mut magic, 0, "file header")?;
        let format = if magic == NG_SHB {
            let mut hdr = [0u8; 8];
            hdr[..4].copy_from_slice(&magic);
            input.read_full(&mut hdr[4..], 0, "section header block")?;
            let mut ng = NgState {
                endian: Endian::Little,
                interfaces: Vec::new(),
                last_ts_ns: 0,
            };
            ng.read_section_header(&mut input, 0, &hdr)?;
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
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, PcapError> {
        if self.done {
            return Ok(None);
        }
        match self.read_next() {
            Ok(Some(p)) => Ok(Some(Frame {
                ts_ns: p.ts_ns,
                frame: &self.input.buf()[p.frame],
                orig_len: p.orig_len,
            })),
            other => {
                self.done = true;
                other.map(|_| None)
            }
        }
    }

    /// [`Reader::next_frame`], copied out of the reader.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, PcapError> {
        Ok(self.next_frame()?.map(|f| f.to_packet()))
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

    fn read_next(&mut self) -> Result<Option<Located>, PcapError> {
        loop {
            let raw = match &mut self.format {
                Format::Pcap(st) => st.next_record(&mut self.input)?,
                Format::PcapNg(st) => st.next_record(&mut self.input)?,
            };
            let Some(raw) = raw else {
                return Ok(None);
            };
            match to_ethernet(raw.link_type, self.input.buf_mut(), raw.data, raw.orig_len) {
                Some((frame, orig_len)) => {
                    return Ok(Some(Located {
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
/// lives in the input's buffer at the given range.
pub(super) struct RawPacket {
    pub(super) ts_ns: u64,
    pub(super) link_type: u32,
    pub(super) data: Range<usize>,
    pub(super) orig_len: u32,
}

/// A packet converted to Ethernet, where it lies in the input's buffer.
struct Located {
    ts_ns: u64,
    frame: Range<usize>,
    orig_len: u32,
}

enum Format {
    Pcap(PcapState),
    PcapNg(NgState),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, ErrorKind};

    use crate::capture::{link::*, test_capture::*};

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
    fn pcap_record_length_cap_is_the_snaplen_limit() {
        let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
        let big = vec![0u8; MAX_RECORD_LEN as usize];
        pcap_record(&mut w, 1, 0, &big, MAX_RECORD_LEN);
        let second = w.out.len();
        w.u32(2)
            .u32(0)
            .u32(MAX_RECORD_LEN + 1)
            .u32(MAX_RECORD_LEN + 1);
        w.bytes(&[0; 64]);
        let (pkts, res, _) = read_all(&w.out);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].frame.len(), 256 * 1024);
        let reason = assert_corrupt(res, second as u64);
        assert!(reason.contains("262145"), "{reason}");
        assert!(reason.contains("262144"), "{reason}");
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

    /// Records of every size up to the largest, over several of the reader's blocks, so
    /// that records straddle its block boundaries and the buffer moves under them.
    #[test]
    fn records_across_block_boundaries_come_out_whole() {
        let sizes = [60usize, 1_514, 70_000, MAX_RECORD_LEN as usize, 9_000, 3];
        let mut w = pcap_header(false, true, LINKTYPE_ETHERNET);
        let mut want = Vec::new();
        for i in 0..80usize {
            let mut f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
            f.resize(sizes[i % sizes.len()], 0);
            f.iter_mut()
                .skip(14)
                .enumerate()
                .for_each(|(j, b)| *b = (i * 7 + j) as u8);
            pcap_record(&mut w, 1, i as u32, &f, f.len() as u32);
            want.push(f);
        }
        assert!(w.out.len() > 3 * (1 << 20), "more than three blocks");
        let got = read_ok(&w.out);
        assert_eq!(got.len(), want.len());
        for (i, (p, f)) in got.iter().zip(&want).enumerate() {
            assert_eq!(&p.frame, f, "record {i}");
            assert_eq!(p.ts_ns, 1_000_000_000 + i as u64);
        }
    }

    /// Raw IP in a simple packet block has the fewest bytes in front of it (the block
    /// header and the original length): the Ethernet header written in place must not
    /// reach outside the reader's buffer, whether the block is the first thing in it or
    /// follows a skipped block larger than the buffer.
    #[test]
    fn raw_ip_in_simple_packet_blocks_gets_its_header_in_place() {
        let want = [&[0u8; 12][..], &[0x08, 0x00], IPV4_STUB].concat();
        for big_block_first in [false, true] {
            let mut w = W::new(false);
            ng_shb(&mut w);
            ng_idb(&mut w, LINKTYPE_RAW as u16, 0, &[]);
            if big_block_first {
                ng_block(&mut w, 0x0000_0bad, &vec![9; 3 << 20]);
            }
            ng_spb(&mut w, IPV4_STUB, IPV4_STUB.len() as u32);
            ng_spb(&mut w, IPV4_STUB, IPV4_STUB.len() as u32);
            let pkts = read_ok(&w.out);
            assert_eq!(pkts.len(), 2);
            assert!(pkts.iter().all(|p| p.frame == want), "{pkts:?}");
        }
    }

    #[test]
    fn frames_borrowed_and_copied_agree() {
        let mut w = pcap_header(false, false, LINKTYPE_LINUX_SLL2);
        let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 4, 6];
        sll2.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(IPV6_STUB);
        pcap_record(&mut w, 1, 0, &sll2, sll2.len() as u32);
        pcap_record(&mut w, 2, 0, &sll2, sll2.len() as u32);
        let copied = read_ok(&w.out);
        let mut r = Reader::new(Cursor::new(&w.out)).unwrap();
        for p in &copied {
            let f = r.next_frame().unwrap().unwrap();
            assert_eq!(f.to_packet(), *p);
        }
        assert!(r.next_frame().unwrap().is_none());
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
}
