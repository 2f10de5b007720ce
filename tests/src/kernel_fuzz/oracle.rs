//! What a frame is, read by a parser of its own (not the kernel program's code), and what
//! an event raised by that frame may say. The fuzzer holds every event and every counter
//! move of the kernel program against this reading.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use detector_common::{EventKind, Side};
use detector_user::kernel::event::{Abort, KernelEvent};

/// How the kernel program must classify a frame: each class moves one counter (besides
/// `packets`), and only a TCP segment may raise events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    Tcp(Segment),
    /// IP but not TCP, a link type other than IP, or an IPv6 header chain longer than the
    /// program walks: counted nowhere but in `packets`.
    NotTcp,
    /// An IP fragment (IPv4 offset or more-fragments, IPv6 fragment header).
    Fragment,
    /// A header cut short or holding an impossible length.
    Malformed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub flags: u8,
    /// Where the TCP header starts and where the payload starts and ends in the frame.
    pub l3: usize,
    pub l4: usize,
    pub payload: (usize, usize),
}

const VLAN_TAGS_WALKED: usize = 2;
const IPV6_EXT_WALKED: usize = 4;
const TCP_HEADER: usize = 20;
pub const RST: u8 = 0x04;
pub const FIN: u8 = 0x01;

fn be16(f: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]))
}

fn bytes<const N: usize>(f: &[u8], o: usize) -> Option<[u8; N]> {
    f.get(o..o + N)?.try_into().ok()
}

/// Reads `f` as Ethernet (up to two 802.1Q/802.1ad tags), IPv4 or IPv6 (hop-by-hop,
/// routing and destination options headers, up to four), TCP: the rules the README and
/// the program's documentation give, written out again.
pub fn classify(f: &[u8]) -> Class {
    use Class::*;
    let Some(mut ethertype) = be16(f, 12) else {
        return Malformed;
    };
    let mut l3 = 14;
    for _ in 0..VLAN_TAGS_WALKED {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let Some(inner) = be16(f, l3 + 2) else {
            return Malformed;
        };
        ethertype = inner;
        l3 += 4;
    }
    let (src_ip, dst_ip, l4, ip_end): (IpAddr, IpAddr, usize, usize) = match ethertype {
        0x0800 => {
            let Some(h) = bytes::<20>(f, l3) else {
                return Malformed;
            };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return Malformed;
            }
            if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                return Fragment;
            }
            if h[9] != 6 {
                return NotTcp;
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if total != 0 && total < ihl {
                return Malformed;
            }
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            let end = if total == 0 { f.len() } else { l3 + total };
            (src.into(), dst.into(), l3 + ihl, end)
        }
        0x86dd => {
            let Some(h) = bytes::<40>(f, l3) else {
                return Malformed;
            };
            let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let mut next = h[6];
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).expect("16 bytes"));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).expect("16 bytes"));
            let mut l4 = l3 + 40;
            for _ in 0..IPV6_EXT_WALKED {
                match next {
                    0 | 43 | 60 => {
                        let Some(e) = bytes::<2>(f, l4) else {
                            return Malformed;
                        };
                        next = e[0];
                        l4 += (usize::from(e[1]) + 1) * 8;
                    }
                    44 => return Fragment,
                    _ => break,
                }
            }
            if next != 6 {
                return NotTcp;
            }
            let end = if plen == 0 { f.len() } else { l3 + 40 + plen };
            (src.into(), dst.into(), l4, end)
        }
        _ => return NotTcp,
    };
    let Some(t) = bytes::<TCP_HEADER>(f, l4) else {
        return Malformed;
    };
    let doff = usize::from(t[12] >> 4) * 4;
    let start = l4 + doff;
    let end = ip_end.min(f.len());
    if doff < TCP_HEADER || start > end {
        return Malformed;
    }
    Tcp(Segment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([t[0], t[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([t[2], t[3]])),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
        l3,
        l4,
        payload: (start, end),
    })
}

/// The payload bytes of each direction of each flow lately seen, by sequence number, so
/// that a value the program read across a segment boundary (a header whose first bytes
/// came in an earlier segment) can be found again.
#[derive(Default)]
pub struct Streams {
    dirs: HashMap<(SocketAddr, SocketAddr), Recent>,
}

/// A direction's latest segments: (sequence number, payload).
type Recent = VecDeque<(u32, Vec<u8>)>;

/// Segments kept per direction; the program keeps at most one pending header's bytes.
const KEPT_SEGMENTS: usize = 16;
/// Directions kept before all are forgotten (the fuzzer's flows are few; random frames
/// make many one-off ones).
const KEPT_DIRECTIONS: usize = 4096;

impl Streams {
    pub fn record(&mut self, s: &Segment, frame: &[u8]) {
        if s.payload.0 == s.payload.1 {
            return;
        }
        if self.dirs.len() >= KEPT_DIRECTIONS {
            self.dirs.clear();
        }
        let q = self.dirs.entry((s.src, s.dst)).or_default();
        if q.len() == KEPT_SEGMENTS {
            q.pop_front();
        }
        q.push_back((s.seq, frame[s.payload.0..s.payload.1].to_vec()));
    }

    /// Whether any kept segment of the direction held `byte` at sequence number `at`.
    fn held(&self, s: &Segment, at: u32, byte: u8) -> bool {
        self.dirs.get(&(s.src, s.dst)).is_some_and(|q| {
            q.iter().any(|(seq, data)| {
                let i = at.wrapping_sub(*seq) as usize;
                data.get(i) == Some(&byte)
            })
        })
    }
}

/// Checks one event against the frame that raised it; `Err` says what is wrong.
/// `streams` must already hold the frame's own segment.
pub fn check_event(
    e: &KernelEvent,
    s: &Segment,
    frame: &[u8],
    now_ns: u64,
    idle_ns: u64,
    streams: &Streams,
) -> Result<(), String> {
    let payload = &frame[s.payload.0..s.payload.1];
    let (sender, receiver) = match e.sender {
        Side::Client => (e.client, e.server),
        Side::Server => (e.server, e.client),
    };
    if (sender, receiver) != (s.src, s.dst) {
        return Err(format!(
            "event says {sender} sent to {receiver} (client {}, server {}); the frame goes \
             from {} to {}",
            e.client, e.server, s.src, s.dst
        ));
    }
    if e.ts_ns != now_ns {
        return Err(format!(
            "event time {} but the clock read {now_ns}",
            e.ts_ns
        ));
    }
    if e.flow_first_seen_ns > now_ns {
        return Err(format!(
            "flow first seen at {}, after the event's own time",
            e.flow_first_seen_ns
        ));
    }
    // (Not IdleFin: a FIN right behind an alert is reported whatever its gap, for the
    // agent to judge the close by the alert's.)
    if e.kind == EventKind::IdleRst && e.gap_ns < idle_ns {
        return Err(format!(
            "{:?} after a gap of {} ns, below the idle threshold",
            e.kind, e.gap_ns
        ));
    }
    if e.kind == EventKind::HelloRequest && e.sender != Side::Server {
        return Err("a HelloRequest event from the client".into());
    }
    if e.tcp_seq != s.seq {
        return Err(format!(
            "event seq {} but the frame's is {}",
            e.tcp_seq, s.seq
        ));
    }
    if e.payload_len as usize != payload.len() {
        return Err(format!(
            "event payload length {} but the frame carries {}",
            e.payload_len,
            payload.len()
        ));
    }
    let head = &payload[..payload.len().min(detector_common::SNIPPET_LEN)];
    if e.snippet != head {
        return Err(format!(
            "snippet {:02x?} is not the payload's head {head:02x?}",
            e.snippet
        ));
    }
    let flag = |f: u8, what: &str| {
        if s.flags & f == 0 {
            Err(format!("{:?} event on a frame without {what}", e.kind))
        } else {
            Ok(())
        }
    };
    match (e.kind, e.abort) {
        (EventKind::HandshakeAborted, Some(Abort::Rst))
        | (EventKind::IdleRst | EventKind::IdleRstAnswer, _) => flag(RST, "RST")?,
        (EventKind::HandshakeAborted, Some(Abort::Fin)) | (EventKind::IdleFin, _) => {
            flag(FIN, "FIN")?
        }
        _ => {}
    }
    let alert_expected = matches!(
        (e.kind, e.abort),
        (EventKind::PlaintextAlert, _) | (EventKind::HandshakeAborted, Some(Abort::Alert))
    );
    match (alert_expected, e.alert) {
        (true, None) => return Err(format!("{:?} event without its alert", e.kind)),
        (true, Some(a)) => {
            // The alert body's last byte is the one that completed it, in this frame; the
            // level before it may have come in an earlier segment.
            let found = payload.iter().enumerate().any(|(i, &b)| {
                let at = s.seq.wrapping_add(i as u32);
                b == a.description && streams.held(s, at.wrapping_sub(1), a.level)
            });
            if !found {
                return Err(format!(
                    "alert {}/{} is not in the frame's bytes (nor completed by them)",
                    a.level, a.description
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{Conversation, Frame};

    #[test]
    fn reads_what_the_frame_builder_wrote() {
        let mut conv = Conversation::v4(443);
        conv.template.vlans = vec![(0x88a8, 3), (0x8100, 4)];
        conv.template.ipv4_options = vec![1, 1, 1, 1];
        let f = conv.client(b"hello");
        let bytes = f.build();
        let Class::Tcp(s) = classify(&bytes) else {
            panic!("not TCP: {:?}", classify(&bytes));
        };
        assert_eq!(s.src, conv.client_addr());
        assert_eq!(s.dst, conv.server_addr());
        assert_eq!(&bytes[s.payload.0..s.payload.1], b"hello");
        let [_, l3, l4] = f.header_ends();
        assert_eq!((s.l4, s.payload.0), (l3, l4));
    }

    #[test]
    fn sorts_what_is_not_a_segment() {
        let mut f = Frame::tcp("fd00::1".parse().unwrap(), 1, "fd00::2".parse().unwrap(), 2);
        f.ipv6_ext = vec![(44, vec![0; 6])];
        assert_eq!(classify(&f.build()), Class::Fragment);
        f.ipv6_ext = vec![(60, vec![0; 6]); 5];
        assert_eq!(
            classify(&f.build()),
            Class::NotTcp,
            "a fifth header is not walked"
        );
        f.ipv6_ext = vec![];
        let b = f.build();
        assert_eq!(classify(&b[..b.len() - 1]), Class::Malformed);
        let mut g = Conversation::v4(80).client(b"x");
        g.protocol = 17;
        assert_eq!(classify(&g.build()), Class::NotTcp);
    }
}
