//! Community ID v1 flow hashing.
//!
//! Zeek, Suricata, Arkime, Elastic and friends can all tag a flow with its
//! "Community ID" (<https://github.com/corelight/community-id-spec>). Emitting
//! the same string from our diagnoses lets an operator pivot from a detector
//! finding to the matching Zeek `conn.log` line or Suricata alert with a plain
//! string search, instead of re-deriving 5-tuples and worrying about which side
//! each tool calls "source".

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest as _, Sha1};

/// Computes the Community ID v1 of a flow, e.g. `"1:LQU9qZlK+B5F3KDmev6m5PMibrg="`.
///
/// The result does not depend on which endpoint is passed as `src`: both
/// directions of a connection must hash to the same ID, otherwise the ID could
/// not be joined against tools that saw the flow from the other side.
///
/// `seed` must match the seed configured in the tools being correlated with
/// (they all default to 0). The ports are hashed as given, which is right for
/// TCP, UDP and SCTP; ICMP type/code mapping and port-less protocols are not
/// this function's concern (the detector only tracks TCP).
///
/// Mixing an IPv4 and an IPv6 endpoint yields a well-defined but meaningless
/// value; no other implementation would produce a matching one.
pub fn community_id_v1(
    seed: u16,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> String {
    let (src_buf, src_len) = octets(src);
    let (dst_buf, dst_len) = octets(dst);
    let (src_addr, dst_addr) = (&src_buf[..src_len], &dst_buf[..dst_len]);

    // The spec orders the endpoints by their network-byte-order encoding,
    // address first and port as tie-breaker. Byte-slice comparison of the
    // packed address matches that exactly (and big-endian u16 order equals
    // numeric order for the ports).
    let (a, a_port, b, b_port) = if (src_addr, sport) <= (dst_addr, dport) {
        (src_addr, sport, dst_addr, dport)
    } else {
        (dst_addr, dport, src_addr, sport)
    };

    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(a);
    h.update(b);
    // One zero byte pads the protocol so the ports land on a 32-bit boundary.
    h.update([proto, 0]);
    h.update(a_port.to_be_bytes());
    h.update(b_port.to_be_bytes());
    format!("1:{}", STANDARD.encode(h.finalize()))
}

/// Packs an address into its wire form without allocating: 4 bytes for IPv4,
/// 16 for IPv6 (an IPv4-mapped IPv6 address stays 16 bytes, as it would on
/// the wire).
fn octets(ip: IpAddr) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            (buf, 4)
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            (buf, 16)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const SCTP: u8 = 132;

    /// (proto, src, sport, dst, dport, ID with seed 0, ID with seed 1), from
    /// the baseline data of the Community ID spec repository
    /// (corelight/community-id-spec, `baseline/README.md` and
    /// `baseline/baseline_{deflt,seed1}.json`).
    const BASELINE: &[(u8, &str, u16, &str, u16, &str, &str)] = &[
        (
            TCP,
            "128.232.110.120",
            34855,
            "66.35.250.204",
            80,
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            "1:3V71V58M3Ksw/yuFALMcW0LAHvc=",
        ),
        (
            UDP,
            "192.168.1.52",
            54585,
            "8.8.8.8",
            53,
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
            "1:Q9We8WO3piVF8yEQBNJF4uiSVrI=",
        ),
        (
            TCP,
            "2001:470:e5bf:dead:4957:2174:e82c:4887",
            63943,
            "2607:f8b0:400c:c03::1a",
            25,
            "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
            "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
        ),
        (
            TCP,
            "1.2.3.4",
            1122,
            "5.6.7.8",
            3344,
            "1:wCb3OG7yAFWelaUydu0D+125CLM=",
            "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
        ),
        (
            UDP,
            "1.2.3.4",
            1122,
            "5.6.7.8",
            3344,
            "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=",
            "1:OShq+iKDAMVouh/4bMxB9Sz4amw=",
        ),
        (
            SCTP,
            "1.2.3.4",
            1122,
            "5.6.7.8",
            3344,
            "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=",
            "1:uitchpn5MMGAQKBJh7bIr/bAr7s=",
        ),
        // Equal ports: only the addresses decide the order.
        (
            SCTP,
            "192.168.170.8",
            7,
            "192.168.170.56",
            7,
            "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
            "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg=",
        ),
        // ICMPv6 neighbour solicitation/advertisement, already mapped to
        // (type, counter-type) "ports" in the baseline; exercises 16-byte
        // addresses that differ only late in the address.
        (
            58,
            "fe80::200:86ff:fe05:80da",
            135,
            "fe80::260:97ff:fe07:69ea",
            136,
            "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
            "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY=",
        ),
    ];

    #[test]
    fn matches_spec_baseline_both_directions_and_seeds() {
        for &(proto, src, sport, dst, dport, seed0, seed1) in BASELINE {
            let src: IpAddr = src.parse().unwrap();
            let dst: IpAddr = dst.parse().unwrap();
            for (seed, want) in [(0, seed0), (1, seed1)] {
                assert_eq!(
                    community_id_v1(seed, src, sport, dst, dport, proto),
                    want,
                    "{src}:{sport} -> {dst}:{dport} proto {proto} seed {seed}"
                );
                assert_eq!(
                    community_id_v1(seed, dst, dport, src, sport, proto),
                    want,
                    "{dst}:{dport} -> {src}:{sport} proto {proto} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn same_address_orders_by_port() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let x = community_id_v1(0, a, 1234, a, 80, TCP);
        assert_eq!(x, community_id_v1(0, a, 80, a, 1234, TCP));
        assert_ne!(x, community_id_v1(0, a, 1234, a, 81, TCP));
    }

    #[test]
    fn protocol_and_seed_change_the_id() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let tcp = community_id_v1(0, a, 1234, b, 80, TCP);
        assert_ne!(tcp, community_id_v1(0, a, 1234, b, 80, UDP));
        assert_ne!(tcp, community_id_v1(2, a, 1234, b, 80, TCP));
        assert!(tcp.starts_with("1:") && tcp.len() == 2 + 28, "{tcp}");
    }
}
