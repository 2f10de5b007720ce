//! Community ID v1 flow hashing.
//!
//! Zeek, Suricata, Arkime, Elastic and friends can all tag a flow with its
//! "Community ID" (<https://github.com/corelight/community-id-spec>). Emitting
//! the same string from our diagnoses lets an operator pivot from a detector
//! finding to the matching Zeek `conn.log` line or Suricata alert with a plain
//! string search, instead of re-deriving 5-tuples and worrying about which side
//! each tool calls "source".

use std::net::IpAddr;

/// TCP, the only protocol the detector tracks.
const TCP: u8 = 6;

/// The Community ID v1 of a TCP connection, e.g. `"1:LQU9qZlK+B5F3KDmev6m5PMibrg="`, by
/// the `community-id` crate (checked below against the spec's baseline). It does not
/// depend on which endpoint is passed first, so it joins against tools that saw the flow
/// from the other side. The seed is 0, every tool's default. `None` when the endpoints
/// are of different address families, which no connection has.
pub fn community_id(a: std::net::SocketAddr, b: std::net::SocketAddr) -> Option<String> {
    community_id_v1(0, a.ip(), a.port(), b.ip(), b.port(), TCP).ok()
}

/// Any protocol and seed; for ICMP the "ports" are the type and code.
fn community_id_v1(
    seed: u16,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> Result<String, &'static str> {
    community_id::calculate_community_id(seed, src, dst, Some(sport), Some(dport), proto, false)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    ];

    /// ICMPv6 neighbour solicitation (type 135, code 0) and its advertisement (136) the
    /// other way: the same flow, once the crate maps type and code to the spec's "ports".
    #[test]
    fn matches_spec_baseline_for_icmpv6() {
        let ns: IpAddr = "fe80::200:86ff:fe05:80da".parse().unwrap();
        let na: IpAddr = "fe80::260:97ff:fe07:69ea".parse().unwrap();
        for (seed, want) in [
            (0, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
            (1, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
        ] {
            assert_eq!(community_id_v1(seed, ns, 135, na, 0, 58).unwrap(), want);
            assert_eq!(community_id_v1(seed, na, 136, ns, 0, 58).unwrap(), want);
        }
    }

    #[test]
    fn matches_spec_baseline_both_directions_and_seeds() {
        for &(proto, src, sport, dst, dport, seed0, seed1) in BASELINE {
            let src: IpAddr = src.parse().unwrap();
            let dst: IpAddr = dst.parse().unwrap();
            for (seed, want) in [(0, seed0), (1, seed1)] {
                assert_eq!(
                    community_id_v1(seed, src, sport, dst, dport, proto).unwrap(),
                    want,
                    "{src}:{sport} -> {dst}:{dport} proto {proto} seed {seed}"
                );
                assert_eq!(
                    community_id_v1(seed, dst, dport, src, sport, proto).unwrap(),
                    want,
                    "{dst}:{dport} -> {src}:{sport} proto {proto} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = |port| std::net::SocketAddr::new("10.0.0.1".parse().unwrap(), port);
        let x = community_id(a(1234), a(80));
        assert_eq!(x, community_id(a(80), a(1234)));
        assert_ne!(x, community_id(a(1234), a(81)));
    }

    #[test]
    fn mixed_families_have_none() {
        let v4 = "10.0.0.1:443".parse().unwrap();
        let v6 = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(community_id(v4, v6), None);
    }
}
