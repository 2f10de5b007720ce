//! pcapng: sections, each with its own byte order and interfaces, every interface with its
//! own link type and clock resolution.
//!
//! (Over 600 lines: nearly half is its tests, which build blocks byte by byte for every
//! byte order, resolution and truncation; the parser itself is under 400.)

use std::io::Read;

use super::{
    input::{Endian, Input},
    reader::{MAX_BLOCK_LEN, MAX_RECORD_LEN, PcapError, RawPacket, corrupt},
};

/// The section header block type reads the same in both byte orders, which is
/// what lets a reader find it before it knows the section's endianness.
pub(super) const NG_SHB: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
pub(super) const NG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
pub(super) const NG_IDB: u32 = 0x0000_0001;
pub(super) const NG_OPB: u32 = 0x0000_0002;
pub(super) const NG_SPB: u32 = 0x0000_0003;
pub(super) const NG_EPB: u32 = 0x0000_0006;
/// Block type, block length and trailing block length.
pub(super) const NG_BLOCK_OVERHEAD: u32 = 12;
/// Interfaces one section may describe. Real captures have a handful (tshark on
/// every interface of a big router, a few hundred); the bound keeps a crafted
/// file from growing the list with every 20-byte block.
pub(super) const MAX_INTERFACES: usize = 4096;

pub(super) const OPT_ENDOFOPT: u16 = 0;
pub(super) const OPT_IF_TSRESOL: u16 = 9;
pub(super) const OPT_IF_TSOFFSET: u16 = 14;

/// Timestamp unit of a pcapng interface, from its `if_tsresol` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TsResol {
    /// Units of 10^-n seconds.
    Decimal(u8),
    /// Units of 2^-n seconds.
    Binary(u8),
}

impl TsResol {
    pub(super) fn from_option(v: u8) -> Self {
        if v & 0x80 == 0 {
            TsResol::Decimal(v)
        } else {
            TsResol::Binary(v & 0x7f)
        }
    }

    /// Converts a raw timestamp to nanoseconds. Works in u128 so that no
    /// resolution the option can express overflows mid-calculation; units
    /// finer than a nanosecond are truncated.
    pub(super) fn to_ns(self, ticks: u64) -> u128 {
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

pub(super) struct Interface {
    pub(super) link_type: u32,
    pub(super) snaplen: u32,
    pub(super) resol: TsResol,
    /// `if_tsoffset`: seconds to add to every timestamp, used by writers that
    /// store times relative to some epoch other than 1970.
    pub(super) offset_s: i64,
}

impl Interface {
    pub(super) fn ts_ns(&self, ticks: u64) -> u64 {
        let ns = self.resol.to_ns(ticks) as i128 + i128::from(self.offset_s) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// pcapng: a sequence of sections, each with its own byte order and its own
/// interfaces, every interface with its own link type and clock resolution.
pub(super) struct NgState {
    pub(super) endian: Endian,
    pub(super) interfaces: Vec<Interface>,
    /// Simple packet blocks carry no timestamp; reusing the previous packet's
    /// keeps replay time monotonic instead of jumping back to 1970.
    pub(super) last_ts_ns: u64,
}

pub(super) fn ng_block_name(block_type: u32) -> &'static str {
    match block_type {
        NG_IDB => "interface description block",
        NG_OPB => "packet block",
        NG_SPB => "simple packet block",
        NG_EPB => "enhanced packet block",
        _ => "pcapng block",
    }
}

impl NgState {
    pub(super) fn next_record<R: Read>(
        &mut self,
        input: &mut Input<R>,
    ) -> Result<Option<RawPacket>, PcapError> {
        loop {
            let start = input.offset;
            let mut hdr = [0u8; 8];
            if !input.read_record_start(&mut hdr, "pcapng block header")? {
                return Ok(None);
            }
            if hdr[..4] == NG_SHB {
                self.read_section_header(input, start, &hdr)?;
                continue;
            }
            let block_type = self.endian.u32(&hdr[0..4]);
            let what = ng_block_name(block_type);
            let held = matches!(block_type, NG_IDB | NG_EPB | NG_SPB | NG_OPB);
            let total_len = check_block_len(self.endian.u32(&hdr[4..8]), start, held)?;
            let body_len = total_len - NG_BLOCK_OVERHEAD;
            if !held {
                input.skip(body_len, start, what)?;
                self.check_trailer(input, total_len, start, what)?;
                continue;
            }
            let body = self.held_body(input, body_len, total_len, start, what)?;
            let b = &input.buf()[body.clone()];
            let packet = match block_type {
                NG_IDB => {
                    if self.interfaces.len() == MAX_INTERFACES {
                        return Err(corrupt(
                            start,
                            format!(
                                "more than {MAX_INTERFACES} interfaces in one section, \
                                 the most replay reads"
                            ),
                        ));
                    }
                    self.interfaces.push(parse_idb(self.endian, b, start)?);
                    continue;
                }
                NG_EPB => self.parse_epb(b, start, false)?,
                NG_OPB => self.parse_epb(b, start, true)?,
                _ => self.parse_spb(b, start)?,
            };
            self.last_ts_ns = packet.ts_ns;
            // The parsers place the data within the body; the reader wants it in the
            // input's buffer.
            let data = body.start + packet.data.start..body.start + packet.data.end;
            return Ok(Some(RawPacket { data, ..packet }));
        }
    }

    /// A held block's body, read together with its trailing length (which is checked),
    /// in one piece of the input's buffer.
    fn held_body<R: Read>(
        &self,
        input: &mut Input<R>,
        body_len: u32,
        total_len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, PcapError> {
        let with_trailer = input.body(body_len + 4, start, what)?;
        let trailer_at = with_trailer.end - 4;
        self.check_length(
            &input.buf()[trailer_at..with_trailer.end],
            total_len,
            start,
            what,
        )?;
        Ok(with_trailer.start..trailer_at)
    }

    /// Handles a section header block whose first 8 bytes are in `hdr`. A new
    /// section may switch byte order and always starts without interfaces.
    pub(super) fn read_section_header<R: Read>(
        &mut self,
        input: &mut Input<R>,
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
        let total_len = check_block_len(endian.u32(&hdr[4..8]), start, true)?;
        // Fixed part: byte-order magic, version, section length.
        if total_len < NG_BLOCK_OVERHEAD + 16 {
            return Err(corrupt(
                start,
                format!("section header block of {total_len} bytes is too short"),
            ));
        }
        self.endian = endian;
        let body = self.held_body(
            input,
            total_len - NG_BLOCK_OVERHEAD - 4,
            total_len,
            start,
            WHAT,
        )?;
        let buf = &input.buf()[body];
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
    pub(super) fn check_trailer<R: Read>(
        &self,
        input: &mut Input<R>,
        total_len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let mut t = [0u8; 4];
        input.read_full(&mut t, start, what)?;
        self.check_length(&t, total_len, start, what)
    }

    fn check_length(
        &self,
        trailer: &[u8],
        total_len: u32,
        start: u64,
        what: &'static str,
    ) -> Result<(), PcapError> {
        let trailer = self.endian.u32(trailer);
        if trailer != total_len {
            return Err(corrupt(
                start,
                format!("{what} length {total_len} disagrees with trailing length {trailer}"),
            ));
        }
        Ok(())
    }

    pub(super) fn interface(&self, id: u32, start: u64) -> Result<&Interface, PcapError> {
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
    pub(super) fn parse_epb(
        &self,
        body: &[u8],
        start: u64,
        obsolete: bool,
    ) -> Result<RawPacket, PcapError> {
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
        if cap_len > MAX_RECORD_LEN {
            return Err(corrupt(
                start,
                format!(
                    "{name} claims {cap_len} captured bytes, more than the {MAX_RECORD_LEN} \
                     any snapshot length allows"
                ),
            ));
        }
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
            data: FIXED..FIXED + cap_len as usize,
            orig_len,
        })
    }

    /// Simple packet blocks record no captured length: it is the original
    /// length limited by the interface's snaplen, and the block body (whose
    /// tail is only padding) bounds it as well.
    pub(super) fn parse_spb(&self, body: &[u8], start: u64) -> Result<RawPacket, PcapError> {
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
            data: 4..4 + cap_len,
            orig_len,
        })
    }
}

/// A block's length, checked; `held` blocks are read into memory, so they are bounded by
/// [`MAX_BLOCK_LEN`].
pub(super) fn check_block_len(len: u32, start: u64, held: bool) -> Result<u32, PcapError> {
    if len < NG_BLOCK_OVERHEAD || !len.is_multiple_of(4) {
        return Err(corrupt(start, format!("invalid pcapng block length {len}")));
    }
    if held && len > MAX_BLOCK_LEN {
        return Err(corrupt(
            start,
            format!("pcapng block length {len} is more than the {MAX_BLOCK_LEN} a packet needs"),
        ));
    }
    Ok(len)
}

pub(super) fn parse_idb(e: Endian, body: &[u8], start: u64) -> Result<Interface, PcapError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{link::*, test_capture::*};

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

        for bad_len in [8u32, 30, MAX_BLOCK_LEN + 4] {
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
    fn pcapng_interface_list_is_bounded() {
        let mut w = W::new(false);
        ng_shb(&mut w);
        for _ in 0..MAX_INTERFACES {
            ng_idb(&mut w, 1, 0, &[]);
        }
        let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
        ng_epb(&mut w, (MAX_INTERFACES - 1) as u32, 1, &f, 60);
        let full = w.out.clone();
        assert_eq!(read_ok(&full).len(), 1, "the last allowed interface works");
        let one_more = w.out.len() as u64;
        ng_idb(&mut w, 1, 0, &[]);
        let (pkts, res, _) = read_all(&w.out);
        assert_eq!(pkts.len(), 1);
        let reason = assert_corrupt(res, one_more);
        assert!(reason.contains("4096 interfaces"), "{reason}");

        // A new section starts a new list.
        let mut w = W::new(false);
        w.bytes(&full);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[]);
        ng_epb(&mut w, 0, 2, &f, 60);
        assert_eq!(read_ok(&w.out).len(), 2);
    }

    #[test]
    fn pcapng_packet_sizes_are_capped_at_the_snaplen_limit() {
        let big = vec![0u8; MAX_RECORD_LEN as usize];
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[]);
        ng_epb(&mut w, 0, 1, &big, MAX_RECORD_LEN);
        // A block the reader has no use for is skipped, not held, whatever its size.
        ng_block(&mut w, 0x0000_0bad, &vec![0; 2 * MAX_BLOCK_LEN as usize]);
        let at = w.out.len() as u64;
        let pkts = read_ok(&w.out);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].frame.len(), MAX_RECORD_LEN as usize);
        // One byte more than the limit, in a block that fits: corrupt, at its offset.
        let bigger = vec![0u8; MAX_RECORD_LEN as usize + 1];
        ng_epb(&mut w, 0, 2, &bigger, MAX_RECORD_LEN + 1);
        let (pkts, res, _) = read_all(&w.out);
        assert_eq!(pkts.len(), 1);
        let reason = assert_corrupt(res, at);
        assert!(reason.contains("262145 captured bytes"), "{reason}");
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
