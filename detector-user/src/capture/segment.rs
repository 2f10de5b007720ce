//! Software segmentation of oversized captured frames.
//!
//! Captures taken on a host hold GSO/GRO super-packets of up to 64 KB, but
//! BPF_PROG_TEST_RUN hands an XDP program at most one page. Native XDP on veth meets the
//! same super-packets split into MTU frames, so replay splits them the same way: the
//! program sees what it would see live, segment by segment, with sequence numbers intact.
//! Checksums are left as they are: the program does not verify them.

use super::ethernet::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, network_layer};

/// Frames up to this size go to the program whole (one 4 KiB page less XDP head- and
/// tailroom leaves a little more; stay clear of the edge).
pub const MAX_FRAME: usize = 3_000;
/// Payload bytes per segment when splitting, as on a 1500-byte MTU with timestamps.
pub const SEGMENT_PAYLOAD: usize = 1_448;

/// Splits `frame` into frames of at most [`MAX_FRAME`] bytes when it is a TCP super-packet;
/// otherwise returns it as the only element. A frame that is too large but cannot be
/// parsed is cut to [`MAX_FRAME`] (the program sees its headers and first bytes). Never
/// empty: every frame reaches the program in some form.
pub fn split(frame: &[u8]) -> Vec<Vec<u8>> {
    if frame.len() <= MAX_FRAME {
        return vec![frame.to_vec()];
    }
    match locate(frame) {
        Some(l) => resegment(frame, &l),
        None => vec![frame[..MAX_FRAME].to_vec()],
    }
}

/// Where the headers of an Ethernet/IP/TCP frame are.
struct Layout {
    l3: usize,
    ipv4: bool,
    l4: usize,
    payload: usize,
    end: usize,
}

fn locate(f: &[u8]) -> Option<Layout> {
    let be16 = |o: usize| Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]));
    let (ethertype, l3) = network_layer(f)?;
    let (ipv4, l4, ip_end) = match ethertype {
        ETH_P_IPV4 => {
            let ihl = usize::from(*f.get(l3)? & 0x0f) * 4;
            if *f.get(l3 + 9)? != IPPROTO_TCP || be16(l3 + 6)? & 0x3fff != 0 || ihl < 20 {
                return None;
            }
            let tot = usize::from(be16(l3 + 2)?);
            (true, l3 + ihl, if tot == 0 { f.len() } else { l3 + tot })
        }
        // Extension headers are rare on super-packets; those we leave to truncation.
        ETH_P_IPV6 if *f.get(l3 + 6)? == IPPROTO_TCP => {
            let plen = usize::from(be16(l3 + 4)?);
            (
                false,
                l3 + 40,
                if plen == 0 { f.len() } else { l3 + 40 + plen },
            )
        }
        _ => return None,
    };
    let doff = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    let payload = l4 + doff;
    let end = ip_end.min(f.len());
    (doff >= 20 && payload <= end).then_some(Layout {
        l3,
        ipv4,
        l4,
        payload,
        end,
    })
}

fn resegment(f: &[u8], l: &Layout) -> Vec<Vec<u8>> {
    let header = &f[..l.payload];
    let payload = &f[l.payload..l.end];
    let seq = u32::from_be_bytes(f[l.l4 + 4..l.l4 + 8].try_into().expect("4 bytes"));
    let flags = f[l.l4 + 13];
    // No payload (the frame's length is trailing bytes past the IP packet's end): the
    // headers alone, which still carry the segment's flags, sequence and ACK numbers.
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(SEGMENT_PAYLOAD).collect()
    };
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut out = Vec::with_capacity(header.len() + chunk.len());
            out.extend_from_slice(header);
            out.extend_from_slice(chunk);
            let s = seq.wrapping_add((i * SEGMENT_PAYLOAD) as u32);
            out[l.l4 + 4..l.l4 + 8].copy_from_slice(&s.to_be_bytes());
            if i != last {
                // FIN and PSH belong to the end of the super-packet only.
                out[l.l4 + 13] = flags & !0x09;
            }
            let l3_len = out.len() - l.l3;
            if l.ipv4 {
                out[l.l3 + 2..l.l3 + 4].copy_from_slice(&(l3_len as u16).to_be_bytes());
            } else {
                out[l.l3 + 4..l.l3 + 6].copy_from_slice(&((l3_len - 40) as u16).to_be_bytes());
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(payload_len: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload_len) as u16).to_be_bytes());
        f[23] = 6;
        f[34 + 4..34 + 8].copy_from_slice(&1000u32.to_be_bytes());
        f[34 + 12] = 5 << 4;
        f[34 + 13] = flags;
        f.extend((0..payload_len).map(|i| i as u8));
        f
    }

    #[test]
    fn small_frames_pass_whole() {
        let f = ipv4_tcp(100, 0x18);
        assert_eq!(split(&f), vec![f]);
    }

    #[test]
    fn oversized_frame_without_payload_goes_as_its_headers() {
        // A RST whose frame carries 5000 bytes past the IP packet's end (trailer, padding).
        let mut f = ipv4_tcp(0, 0x14);
        let headers = f.clone();
        f.resize(f.len() + 5_000, 0xee);
        assert_eq!(split(&f), vec![headers]);
    }

    #[test]
    fn no_frame_splits_into_nothing() {
        for len in [0usize, 1, 13, 14, 60, MAX_FRAME, MAX_FRAME + 1, 70_000] {
            let junk = vec![0x45u8; len];
            assert!(!split(&junk).is_empty(), "{len} bytes of junk");
        }
        for payload in [0usize, 1, SEGMENT_PAYLOAD, 5_000, 65_000] {
            let mut f = ipv4_tcp(payload, 0x10);
            f.resize(f.len().max(MAX_FRAME + 1), 0);
            assert!(!split(&f).is_empty(), "{payload} bytes of payload");
        }
    }

    #[test]
    fn super_packet_splits_with_contiguous_sequence_numbers() {
        let f = ipv4_tcp(10_000, 0x19); // ACK|PSH|FIN
        let parts = split(&f);
        assert_eq!(parts.len(), 10_000usize.div_ceil(SEGMENT_PAYLOAD));
        let mut expect_seq = 1000u32;
        let mut rebuilt = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= MAX_FRAME);
            let seq = u32::from_be_bytes(p[38..42].try_into().unwrap());
            assert_eq!(seq, expect_seq);
            let ip_len = u16::from_be_bytes([p[16], p[17]]) as usize;
            assert_eq!(ip_len, p.len() - 14);
            let fin = p[47] & 0x01 != 0;
            assert_eq!(fin, i == parts.len() - 1, "FIN only on the last segment");
            expect_seq += (p.len() - 54) as u32;
            rebuilt.extend_from_slice(&p[54..]);
        }
        assert_eq!(rebuilt, f[54..]);
    }
}
