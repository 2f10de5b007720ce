//! Which replay worker a captured frame goes to: every packet of one flow, both
//! directions, to the same worker, so that each worker's kernel program sees each of its
//! flows whole and in order.
//!
//! A flow goes, when first seen, to the worker that has been dealt the fewest bytes so
//! far, and stays there. Hashing flows onto workers would be simpler, but captures are
//! often dominated by a few bulk transfers, and a hash puts two or three of them on one
//! worker as often as not (three downloads over two workers: one time in four, all on
//! one), while dealing by load puts them apart. The table of flows seen is bounded
//! ([`MAX_FLOWS`]); a flow first seen once it is full goes by its hash, which needs no
//! memory and still sends every packet of that flow to one worker.
//!
//! The flow is read the way the kernel program reads it (detector-ebpf `parse.rs`): up
//! to two VLAN tags, IPv4 with options, IPv6 through up to four extension headers, then
//! the TCP ports. Where the program finds a TCP flow this finds the same one; frames it
//! does not track (fragments, other protocols, broken headers) leave no flow state, so
//! where they go changes nothing, and they are dealt by their addresses.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use crate::capture::ethernet::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, network_layer};

const MAX_IPV6_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Flows whose worker is remembered: about 24 MB of table at most.
pub const MAX_FLOWS: usize = 1 << 20;

/// Deals frames to workers by flow.
pub struct Shards {
    workers: usize,
    /// The worker of each flow seen, by its hash: two flows with the same hash share a
    /// worker, which is only a little less balance.
    flows: HashMap<u64, u16, BuildHasherDefault<Prehashed>>,
    /// Frame bytes dealt to each worker so far.
    load: Vec<u64>,
}

impl Shards {
    pub fn new(workers: usize) -> Shards {
        assert!(
            (1..=usize::from(u16::MAX)).contains(&workers),
            "{workers} workers"
        );
        Shards {
            workers,
            flows: HashMap::default(),
            load: vec![0; workers],
        }
    }

    /// The worker for `frame`.
    pub fn worker_of(&mut self, frame: &[u8]) -> usize {
        if self.workers == 1 {
            return 0;
        }
        let h = flow_hash(frame);
        let worker = match self.flows.get(&h) {
            Some(&w) => usize::from(w),
            None if self.flows.len() < MAX_FLOWS => {
                let (w, _) = self
                    .load
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, bytes)| *bytes)
                    .expect("at least one worker");
                self.flows.insert(h, w as u16);
                w
            }
            None => (h % self.workers as u64) as usize,
        };
        self.load[worker] += frame.len() as u64;
        worker
    }
}

/// The hasher of a table whose keys are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

/// A hash of the frame's flow that does not depend on its direction.
fn flow_hash(frame: &[u8]) -> u64 {
    let mut h = Mix::default();
    if let Some((a, b)) = endpoints(frame) {
        // Both directions hash alike: the endpoints in a fixed order.
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        for (addr, port) in [lo, hi] {
            h.bytes(addr);
            h.word(u64::from(port));
        }
    }
    h.finish()
}

/// A fast hash of a few words (one multiply per word, MurmurHash3's finaliser at the end
/// so that every bit of the result depends on every input bit): this runs once per
/// packet, where SipHash cost as much as reading the packet.
#[derive(Default)]
struct Mix(u64);

impl Mix {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    /// Addresses are 4 or 16 bytes; the length goes in too, so that no IPv4 address
    /// hashes like the start of an IPv6 one.
    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        for c in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
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
        let mut shards = Shards::new(4);
        let mut used = [0usize; 4];
        for port in 40_000..40_400 {
            let w = shards.worker_of(&v4([10, 1, 0, 1], port, [10, 2, 0, 1], 443, &[]));
            used[w] += 1;
        }
        // 400 flows of one client and server, of one packet each: dealt by load, every
        // worker gets a quarter.
        assert_eq!(used, [100; 4]);
        let mut one = Shards::new(1);
        assert!(
            (0..50).all(|i| one.worker_of(&[i; 70]) == 0),
            "one worker takes all"
        );
        // Frames with no flow still go somewhere valid.
        assert!(shards.worker_of(&[0xff; 5]) < 4);
    }

    /// Three bulk transfers starting together over two workers: never all on one (by
    /// hash, one time in four), and each keeps its worker, both directions, throughout.
    #[test]
    fn bulk_flows_go_to_the_least_loaded_worker_and_stay() {
        let (s, client) = ([10, 2, 0, 1], [10, 1, 0, 1]);
        let mut shards = Shards::new(2);
        let mut first = Vec::new();
        for port in [40_000, 40_001, 40_002] {
            let mut syn = v4(client, port, s, 443, &[]);
            syn.resize(74, 0);
            first.push(shards.worker_of(&syn));
        }
        assert_eq!(first, [0, 1, 0]);
        let mut bytes = [0usize; 2];
        for round in 0..1_000 {
            for (i, port) in [40_000, 40_001, 40_002].into_iter().enumerate() {
                let mut data = v4(s, 443, client, port, &[]);
                data.resize(1_514, 0);
                let w = shards.worker_of(&data);
                assert_eq!(w, first[i], "round {round}, flow {i}");
                bytes[w] += data.len();
                let ack = v4(client, port, s, 443, &[]);
                assert_eq!(shards.worker_of(&ack), first[i], "its ACKs too");
            }
        }
        assert!(bytes[1] > 0 && bytes[0] > 0, "{bytes:?}");
    }

    #[test]
    fn a_full_table_deals_new_flows_by_hash() {
        let mut shards = Shards::new(3);
        let flow = |port: u16| v4([10, 1, 0, 1], port, [10, 2, 0, 1], 443, &[]);
        // Filling the table a flow at a time is slow in a test; stand in for it.
        for h in 0..MAX_FLOWS as u64 {
            shards
                .flows
                .insert(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 0);
        }
        let late = flow(50_000);
        let w = shards.worker_of(&late);
        assert_eq!(w, (flow_hash(&late) % 3) as usize);
        assert_eq!(
            shards.flows.len(),
            MAX_FLOWS,
            "nothing added past the bound"
        );
        let back = v4([10, 2, 0, 1], 443, [10, 1, 0, 1], 50_000, &[]);
        assert!((0..10).all(|_| shards.worker_of(&back) == w));
    }
}
