//! Which replay worker a captured frame goes to: every packet of one flow, both
//! directions, to the same worker, so that each worker's kernel program sees each of its
//! flows whole and in order.
//!
//! The flow is read the way the kernel program reads it (detector-ebpf `parse.rs`): up
//! to two VLAN tags, IPv4 with options, IPv6 through up to four extension headers, then
//! the TCP ports. Where the program finds a TCP flow this finds the same one; frames it
//! does not track (fragments, other protocols, broken headers) leave no flow state, so
//! where they go changes nothing, and they are spread by their addresses.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use crate::capture::ethernet::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, network_layer};

const MAX_IPV6_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;

/// The worker (of `workers`) for `frame`.
pub fn worker_of(frame: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    (flow_hash(frame) % workers as u64) as usize
}

/// A hash of the frame's flow that does not depend on its direction.
fn flow_hash(frame: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some((a, b)) = endpoints(frame) {
        // Both directions hash alike: the endpoints in a fixed order.
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        lo.hash(&mut h);
        hi.hash(&mut h);
    }
    h.finish()
}

/// An endpoint as the flow key holds it: address bytes (4 or 16) and port (0 where there
/// is no TCP header to read).
type Endpoint<'a> = (&'a [u8], u16);

fn endpoints(f: &[u8]) -> Option<(Endpoint<'_>, Endpoint<'_>)> {
    let be16 = |o: usize| Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]));
    let (ethertype, l3) = network_layer(f)?;
    let (src, dst, l4) = match ethertype {
        ETH_P_IPV4 => {
            let ip = f.get(l3..l3 + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let tcp = ip[9] == IPPROTO_TCP && be16(l3 + 6)? & 0x3fff == 0;
            (&ip[12..16], &ip[16..20], tcp.then_some(l3 + ihl))
        }
        ETH_P_IPV6 => {
            let ip = f.get(l3..l3 + 40)?;
            let mut next = ip[6];
            let mut l4 = l3 + 40;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                if !matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST) {
                    break;
                }
                let h = f.get(l4..l4 + 2)?;
                next = h[0];
                l4 += (usize::from(h[1]) + 1) * 8;
            }
            (&ip[8..24], &ip[24..40], (next == IPPROTO_TCP).then_some(l4))
        }
        _ => return None,
    };
    let ports = l4.and_then(|l4| Some((be16(l4)?, be16(l4 + 2)?)));
    let (sport, dport) = ports.unwrap_or((0, 0));
    Some(((src, sport), (dst, dport)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ethernet::ETH_P_8021Q;

    fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for _ in vlans {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, vlans: &[u16]) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV4, vlans);
        let mut ip = [0u8; 24];
        ip[0] = 0x46; // with 4 bytes of options
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    fn v6(src: u8, sport: u16, dst: u8, dport: u16, hop_by_hop: bool) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6, &[]);
        let mut ip = [0u8; 40];
        ip[6] = if hop_by_hop { NEXTHDR_HOP } else { IPPROTO_TCP };
        ip[23] = src;
        ip[39] = dst;
        f.extend_from_slice(&ip);
        if hop_by_hop {
            f.extend_from_slice(&[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0]);
        }
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    #[test]
    fn both_directions_of_a_flow_hash_alike() {
        let (c, s) = ([10, 1, 0, 1], [10, 2, 0, 1]);
        assert_eq!(
            flow_hash(&v4(c, 40_000, s, 443, &[])),
            flow_hash(&v4(s, 443, c, 40_000, &[]))
        );
        assert_eq!(
            flow_hash(&v4(c, 40_000, s, 443, &[1, 2])),
            flow_hash(&v4(s, 443, c, 40_000, &[1, 2])),
            "behind two VLAN tags"
        );
        assert_eq!(
            flow_hash(&v6(1, 40_000, 2, 443, true)),
            flow_hash(&v6(2, 443, 1, 40_000, true)),
            "behind an extension header"
        );
        assert_eq!(
            flow_hash(&v6(1, 40_000, 2, 443, true)),
            flow_hash(&v6(1, 40_000, 2, 443, false)),
            "the flow, not the header chain, decides"
        );
    }

    #[test]
    fn flows_spread_over_workers() {
        let workers = 4;
        let mut used = [0usize; 4];
        for port in 40_000..40_400 {
            let w = worker_of(&v4([10, 1, 0, 1], port, [10, 2, 0, 1], 443, &[]), workers);
            used[w] += 1;
        }
        // 400 flows of one client and server: every worker gets a fair share.
        assert!(used.iter().all(|&n| n > 60), "{used:?}");
        assert!(
            (0..50).all(|i| worker_of(&[i; 70], 1) == 0),
            "one worker takes all"
        );
        // Frames with no flow still go somewhere valid.
        assert!(worker_of(&[0xff; 5], workers) < workers);
    }
}
