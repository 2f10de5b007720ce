//! Tiny capture writers for the reader's tests.

use std::io::Cursor;

use super::{
    classic::{PCAP_MAGIC_MICRO, PCAP_MAGIC_NANO},
    pcapng::{NG_BYTE_ORDER_MAGIC, NG_EPB, NG_IDB, NG_SPB},
    reader::{Packet, PcapError, Reader},
};

/// Byte sink that writes integers in a chosen byte order.
pub(super) struct W {
    pub(super) big: bool,
    pub(super) out: Vec<u8>,
}

impl W {
    pub(super) fn new(big: bool) -> Self {
        W {
            big,
            out: Vec::new(),
        }
    }
    fn put<const N: usize>(&mut self, le: [u8; N], be: [u8; N]) -> &mut Self {
        self.out.extend_from_slice(if self.big { &be } else { &le });
        self
    }
    pub(super) fn u16(&mut self, v: u16) -> &mut Self {
        self.put(v.to_le_bytes(), v.to_be_bytes())
    }
    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.put(v.to_le_bytes(), v.to_be_bytes())
    }
    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.put(v.to_le_bytes(), v.to_be_bytes())
    }
    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    pub(super) fn pad4(&mut self) -> &mut Self {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self
    }
}

pub(super) fn pcap_header(big: bool, nanos: bool, link: u32) -> W {
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

pub(super) fn pcap_record(w: &mut W, sec: u32, frac: u32, data: &[u8], orig: u32) {
    w.u32(sec)
        .u32(frac)
        .u32(data.len() as u32)
        .u32(orig)
        .bytes(data);
}

/// Appends a pcapng block with correct leading and trailing lengths.
pub(super) fn ng_block(w: &mut W, block_type: u32, body: &[u8]) {
    let padded = body.len().next_multiple_of(4);
    let total = (padded + 12) as u32;
    w.u32(block_type).u32(total).bytes(body).pad4().u32(total);
}

pub(super) fn ng_shb(w: &mut W) {
    let mut b = W::new(w.big);
    b.u32(NG_BYTE_ORDER_MAGIC).u16(1).u16(0).u64(u64::MAX);
    ng_block(w, 0x0a0d_0d0a, &b.out);
}

/// `opts` are (code, value) pairs; an end-of-options marker is appended.
pub(super) fn ng_idb(w: &mut W, link: u16, snaplen: u32, opts: &[(u16, &[u8])]) {
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

pub(super) fn ng_epb(w: &mut W, iface: u32, ticks: u64, data: &[u8], orig: u32) {
    let mut b = W::new(w.big);
    b.u32(iface)
        .u32((ticks >> 32) as u32)
        .u32(ticks as u32)
        .u32(data.len() as u32)
        .u32(orig)
        .bytes(data);
    ng_block(w, NG_EPB, &b.out);
}

pub(super) fn ng_spb(w: &mut W, data: &[u8], orig: u32) {
    let mut b = W::new(w.big);
    b.u32(orig).bytes(data);
    ng_block(w, NG_SPB, &b.out);
}

/// Reads a whole capture, returning packets and the terminating result.
pub(super) fn read_all(bytes: &[u8]) -> (Vec<Packet>, Result<(), PcapError>, u64) {
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

pub(super) fn read_ok(bytes: &[u8]) -> Vec<Packet> {
    let (pkts, res, _) = read_all(bytes);
    res.unwrap();
    pkts
}

pub(super) fn eth_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub(super) const IPV4_STUB: &[u8] = &[0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1];
pub(super) const IPV6_STUB: &[u8] = &[0x60, 0, 0, 0, 0, 0, 6, 64];

pub(super) fn assert_truncated(res: Result<(), PcapError>, offset: u64) {
    match res {
        Err(PcapError::Truncated { offset: o, .. }) => assert_eq!(o, offset),
        other => panic!("expected Truncated at {offset}, got {other:?}"),
    }
}

pub(super) fn assert_corrupt(res: Result<(), PcapError>, offset: u64) -> String {
    match res {
        Err(PcapError::Corrupt { offset: o, reason }) => {
            assert_eq!(o, offset, "{reason}");
            reason
        }
        other => panic!("expected Corrupt at {offset}, got {other:?}"),
    }
}
