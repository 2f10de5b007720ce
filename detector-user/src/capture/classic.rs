//! Classic pcap: one link type and one timestamp resolution for the whole file.

use std::io::Read;

use super::{
    input::{Endian, Input},
    reader::{MAX_RECORD_LEN, PcapError, RawPacket, corrupt},
};

pub(super) const PCAP_MAGIC_MICRO: u32 = 0xa1b2_c3d4;
pub(super) const PCAP_MAGIC_NANO: u32 = 0xa1b2_3c4d;
pub(super) const PCAP_HEADER_LEN: usize = 24;
pub(super) const PCAP_RECORD_HEADER_LEN: usize = 16;

/// Classic pcap: one link type and one timestamp resolution for the whole file.
pub(super) struct PcapState {
    pub(super) endian: Endian,
    pub(super) nanos: bool,
    pub(super) link_type: u32,
}

impl PcapState {
    pub(super) fn next_record<R: Read>(
        &self,
        input: &mut Input<R>,
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
                format!(
                    "packet record claims {incl_len} captured bytes, more than the \
                     {MAX_RECORD_LEN} any snapshot length allows"
                ),
            ));
        }
        let data = input.body(incl_len, start, WHAT)?;
        let frac_ns = if self.nanos { ts_frac } else { ts_frac * 1_000 };
        Ok(Some(RawPacket {
            // Cannot overflow: u32::MAX seconds is well inside u64 nanoseconds.
            ts_ns: ts_sec * 1_000_000_000 + frac_ns,
            link_type: self.link_type,
            data,
            orig_len,
        }))
    }
}
