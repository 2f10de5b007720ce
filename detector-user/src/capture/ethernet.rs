//! The Ethernet header of a captured frame, read the way the kernel program reads it
//! (detector-ebpf `parse.rs`): up to two VLAN tags before the network layer. Shared by
//! replay's segmentation of super-packets and its sharding by flow.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Tags walked before giving up: QinQ is two.
const MAX_VLAN_TAGS: usize = 2;

pub const IPPROTO_TCP: u8 = 6;

/// The frame's network-layer protocol (its ethertype past any VLAN tags) and where that
/// layer starts.
pub fn network_layer(f: &[u8]) -> Option<(u16, usize)> {
    let be16 = |o: usize| Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?]));
    let mut off = 12;
    let mut ethertype = be16(off)?;
    off += 2;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(off + 2)?;
        off += 4;
    }
    Some((ethertype, off))
}
