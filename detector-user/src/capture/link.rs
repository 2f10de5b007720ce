//! Link types: every packet leaves the reader as an Ethernet frame, since that is all the
//! kernel program parses.

use std::ops::Range;

use super::input::HEADROOM;

pub(super) const LINKTYPE_ETHERNET: u32 = 1;
/// `DLT_RAW` as written by some older BSD-derived tools instead of 101.
pub(super) const DLT_RAW_BSD: u32 = 12;
pub(super) const LINKTYPE_RAW: u32 = 101;
pub(super) const LINKTYPE_LINUX_SLL: u32 = 113;
pub(super) const LINKTYPE_IPV4: u32 = 228;
pub(super) const LINKTYPE_IPV6: u32 = 229;
pub(super) const LINKTYPE_LINUX_SLL2: u32 = 276;

pub(super) const ETH_HEADER_LEN: usize = 14;
pub(super) const SLL_HEADER_LEN: usize = 16;
pub(super) const SLL2_HEADER_LEN: usize = 20;
pub(super) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(super) const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Rewrites a captured packet, the bytes at `data` in `buf`, as an Ethernet frame in
/// place, returning where the frame now lies with the correspondingly adjusted original
/// length, or `None` if the link type is one we cannot map.
///
/// A header other than Ethernet is replaced by one of [`ETH_HEADER_LEN`] bytes written
/// just before the packet's network layer, over the old header and, where that is
/// shorter, the bytes before `data`: the reader always leaves room there
/// ([`HEADROOM`]), so no packet is copied.
///
/// Synthesised headers use all-zero MAC addresses: the detector keys flows on
/// IP addresses and ports, and zero MACs make the rewrite obvious in a dump.
/// For cooked captures the protocol field is already an EtherType (in network
/// byte order), and any 802.1Q tag the kernel left in place follows it, which
/// is exactly the Ethernet layout, so the payload stays unchanged.
pub(super) fn to_ethernet(
    link_type: u32,
    buf: &mut [u8],
    data: Range<usize>,
    orig_len: u32,
) -> Option<(Range<usize>, u32)> {
    let d = &buf[data.clone()];
    let be16 = |at: usize| d.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (hdr_len, ethertype) = match link_type {
        LINKTYPE_ETHERNET => return Some((data, orig_len)),
        LINKTYPE_LINUX_SLL => (SLL_HEADER_LEN, be16(14)?),
        LINKTYPE_LINUX_SLL2 => (SLL2_HEADER_LEN, be16(0)?),
        LINKTYPE_RAW | DLT_RAW_BSD => match d.first()? >> 4 {
            4 => (0, ETHERTYPE_IPV4),
            6 => (0, ETHERTYPE_IPV6),
            _ => return None,
        },
        LINKTYPE_IPV4 => (0, ETHERTYPE_IPV4),
        LINKTYPE_IPV6 => (0, ETHERTYPE_IPV6),
        _ => return None,
    };
    if hdr_len > d.len() {
        return None;
    }
    let network = data.start + hdr_len;
    // data.start >= HEADROOM >= ETH_HEADER_LEN: the reader's promise.
    let frame = network - ETH_HEADER_LEN;
    buf[frame..frame + 12].fill(0);
    buf[frame + 12..network].copy_from_slice(&ethertype.to_be_bytes());
    let orig_len = orig_len
        .saturating_sub(hdr_len as u32)
        .saturating_add(ETH_HEADER_LEN as u32);
    Some((frame..data.end, orig_len))
}

const _: () = assert!(HEADROOM >= ETH_HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{reader::*, test_capture::*};

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
}
