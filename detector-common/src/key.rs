//! The flow key: both directions of a connection under one direction-normalised key.

/// An IP address: 16 bytes in network order, IPv4 stored IPv4-mapped (`::ffff:a.b.c.d`)
/// so that one key type serves both families (which [`FlowKey::family`] keeps apart). Held as two 64-bit words because BPF code
/// then moves an address in two registers; as `[u8; 16]` the compiler keeps, and spills,
/// each byte in a register of its own, which alone can exhaust BPF's 512-byte stack.
pub type Addr = [u64; 2];

/// Converts between [`Addr`] and the 16 network-order bytes it holds.
pub const fn addr_from_bytes(b: [u8; 16]) -> Addr {
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(b) }
}

pub const fn addr_to_bytes(a: Addr) -> [u8; 16] {
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// The IP version a flow travels over ([`FlowKey::family`], [`crate::Event::family`]).
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// A flow under a direction-normalised key: the endpoint that sorts lower (address, then
/// port) is `a`. Both directions of a connection therefore find the same entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_a: Addr,
    pub addr_b: Addr,
    pub port_a: u16,
    pub port_b: u16,
    /// [`family`]: an IPv4 flow and an IPv6 flow between IPv4-mapped addresses
    /// (`::ffff:a.b.c.d`) hold the same address words, and must never share an entry (a
    /// sender could otherwise write into, or end, the other's state).
    pub family: u8,
    /// Padding, zero. Two fields rather than `[u8; 3]`: BPF code zeroes those with a
    /// call to a byte-loop `memset` on every packet, these with two stores.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    /// The key for a packet from `src` to `dst` over IP version `family`, and whether
    /// `src` is endpoint `a`. Endpoints order by address, then port, compared as
    /// big-endian numbers.
    #[inline(always)]
    pub fn normalised(
        family: u8,
        src: &Addr,
        sport: u16,
        dst: &Addr,
        dport: u16,
    ) -> (FlowKey, bool) {
        let src_first = endpoint_le(src, sport, dst, dport);
        let key = if src_first {
            FlowKey {
                addr_a: *src,
                addr_b: *dst,
                port_a: sport,
                port_b: dport,
                family,
                _pad: 0,
                _pad2: 0,
            }
        } else {
            FlowKey {
                addr_a: *dst,
                addr_b: *src,
                port_a: dport,
                port_b: sport,
                family,
                _pad: 0,
                _pad2: 0,
            }
        };
        (key, src_first)
    }
}

#[inline(always)]
fn endpoint_le(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    // Words hold network-order bytes: from_be turns them into comparable numbers.
    let (a_hi, b_hi) = (u64::from_be(a[0]), u64::from_be(b[0]));
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    let (a_lo, b_lo) = (u64::from_be(a[1]), u64::from_be(b[1]));
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    a_port <= b_port
}
