//! Ethernet → (802.1Q/802.1ad) → IPv4/IPv6 → TCP, down to where the payload starts.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};
use detector_common::{Addr, family};

use crate::{maps::options, packet::Packet};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Tags walked before giving up: QinQ is two; more is not something we parse.
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up on finding TCP.
const MAX_IPV6_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Why a packet leaves before the TCP logic.
pub enum Skip {
    /// Not TCP over IP, or an IPv6 header chain we do not walk.
    NotTcp,
    /// An IP fragment: only the first carries the TCP header, and we keep no reassembly.
    Fragment,
    /// A header runs past the end of the packet, or holds an impossible length.
    Malformed,
}

/// The parts of a TCP/IP packet the flow logic uses.
pub struct Tcp {
    /// [`family`] of the IP header.
    pub family: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The advertised window, unscaled.
    pub window: u16,
    /// Bytes of TCP options, which end where the payload starts.
    pub options_len: u8,
    pub payload_off: usize,
    pub payload_len: usize,
}

impl Tcp {
    #[inline(always)]
    pub fn segment(&self) -> Segment {
        Segment {
            seq: self.seq,
            ack: self.ack,
            payload_off: self.payload_off as u32,
            payload_len: self.payload_len as u32,
            flags: self.flags,
        }
    }
}

/// A segment's TCP numbers without addresses and ports (the flow key has those): what the
/// slow path is handed of a packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub payload_off: u32,
    pub payload_len: u32,
    pub flags: u8,
}

impl Segment {
    /// The sequence number after the payload.
    #[inline(always)]
    pub fn end(&self) -> u32 {
        self.seq.wrapping_add(self.payload_len)
    }
}

/// Reads whole headers at once: one bounds check per header is cheaper, and single-byte
/// reads at variable offsets compile to a comparison the verifier cannot use.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Tcp, Skip> {
    let mut off = 12;
    let mut ethertype = p.be16_at(off).ok_or(Skip::Malformed)?;
    off += 2;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = p.be16_at(off + 2).ok_or(Skip::Malformed)?;
        off += 4;
    }
    let l3 = off;
    debug_assert!(l3 >= ETH_HLEN);

    let (fam, src, dst, l4, l3_end) = match ethertype {
        ETH_P_IPV4 => {
            let ip: [u8; 20] = p.read(l3).ok_or(Skip::Malformed)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(Skip::Malformed);
            }
            let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            // More-fragments flag or a non-zero offset.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err(Skip::Fragment);
            }
            if ip[9] != IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            if tot_len != 0 && tot_len < ihl {
                return Err(Skip::Malformed);
            }
            // TSO/BIG TCP super-packets on egress may carry tot_len 0: the skb length rules.
            let end = if tot_len == 0 { p.len() } else { l3 + tot_len };
            let src = v4_mapped(u32::from_le_bytes([ip[12], ip[13], ip[14], ip[15]]));
            let dst = v4_mapped(u32::from_le_bytes([ip[16], ip[17], ip[18], ip[19]]));
            (family::V4, src, dst, l3 + ihl, end)
        }
        ETH_P_IPV6 => {
            // Fixed fields, then the addresses straight into place (copying them out of
            // one 40-byte buffer costs a stack slot per byte with 32-bit subregisters).
            let fixed: [u8; 8] = p.read(l3).ok_or(Skip::Malformed)?;
            let payload_len = u16::from_be_bytes([fixed[4], fixed[5]]) as usize;
            let mut next = fixed[6];
            let src = addr_at(p, l3 + 8)?;
            let dst = addr_at(p, l3 + 24)?;
            let mut l4 = l3 + IPV6_HLEN;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        // Next header and length in 8-octet units, not counting the first.
                        let h: [u8; 2] = p.read(l4).ok_or(Skip::Malformed)?;
                        next = h[0];
                        l4 += (h[1] as usize + 1) * 8;
                    }
                    NEXTHDR_FRAGMENT => return Err(Skip::Fragment),
                    _ => break,
                }
            }
            if next != IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            // A zero payload length is a jumbogram or a GSO super-packet: the packet rules.
            let end = if payload_len == 0 {
                p.len()
            } else {
                l3 + IPV6_HLEN + payload_len
            };
            (family::V6, src, dst, l4, end)
        }
        _ => return Err(Skip::NotTcp),
    };

    let tcp: [u8; 20] = p.read(l4).ok_or(Skip::Malformed)?;
    let doff = ((tcp[12] >> 4) as usize) * 4;
    if doff < 20 {
        return Err(Skip::Malformed);
    }
    let payload_off = l4 + doff;
    // The IP header's idea of the end can exceed what was captured (snap length) or be
    // shorter than the frame (Ethernet padding): the payload is what both agree on.
    let end = if l3_end < p.len() { l3_end } else { p.len() };
    if payload_off > end {
        return Err(Skip::Malformed);
    }
    Ok(Tcp {
        family: fam,
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        options_len: (doff - 20) as u8,
        payload_off,
        payload_len: end - payload_off,
    })
}

/// TCP option kinds the window-scale search walks over.
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WINDOW: u8 = 3;
const TCPOLEN_WINDOW: u8 = 3;
/// The largest shift RFC 7323 allows; a larger one is used as this.
const MAX_WSCALE: u8 = 14;
/// TCP options are at most 40 bytes: the walk takes at most that many steps.
const MAX_OPTIONS: usize = 40;

/// The window-scale option's shift, if the segment carries one (only SYNs may).
/// Not inlined: the fast path calls it for SYN-ACKs only. The options are walked by
/// bpf_loop, so that the verifier checks one step, not one path per combination of
/// option lengths, which is beyond its budget.
#[inline(never)]
pub fn window_scale<P: Packet>(p: &P, t: &Tcp) -> Option<u8> {
    let len = t.options_len as usize;
    if len == 0 || len > MAX_OPTIONS {
        return None;
    }
    let walk = options::walk()?;
    walk.len = len as u64;
    walk.at = 0;
    walk.shift = NO_SHIFT;
    if !p.load_into(t.payload_off - len, len, &mut walk.opts) {
        return None;
    }
    // bpf_loop takes its context on the stack only: it holds the walk's address.
    let mut job = walk as *mut OptionWalk;
    // SAFETY: `option_step` has the callback signature bpf_loop expects; `job` lives on
    // this frame and the walk is this CPU's, both valid for the whole call.
    unsafe {
        bpf_loop(
            MAX_OPTIONS as u32,
            option_step as *mut c_void,
            (&mut job as *mut *mut OptionWalk).cast(),
            0,
        );
    }
    (walk.shift != NO_SHIFT).then_some(walk.shift as u8)
}

/// `OptionWalk::shift` until a window-scale option is found.
const NO_SHIFT: u64 = 0xff;

/// A walk over one segment's TCP options (kept in map memory, see maps/options.rs).
#[repr(C)]
pub struct OptionWalk {
    opts: [u8; 64],
    len: u64,
    /// Offset of the next option.
    at: u64,
    shift: u64,
}

/// One option: the window scale ends the walk, as do the end of the options and anything
/// malformed; others are stepped over. Returns 1 to stop.
extern "C" fn option_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `window_scale` passed, to the address of a
    // live walk.
    let w = unsafe { &mut **ctx.cast::<*mut OptionWalk>() };
    let (len, at) = (w.len, w.at);
    if at >= len {
        return 1;
    }
    let kind = option_byte(&w.opts, at);
    if kind == TCPOPT_EOL {
        return 1;
    }
    if kind == TCPOPT_NOP {
        w.at = at + 1;
        return 0;
    }
    if at + 1 >= len {
        return 1;
    }
    let olen = option_byte(&w.opts, at + 1);
    if kind == TCPOPT_WINDOW && olen == TCPOLEN_WINDOW && at + 2 < len {
        let shift = option_byte(&w.opts, at + 2);
        w.shift = if shift > MAX_WSCALE {
            MAX_WSCALE
        } else {
            shift
        } as u64;
        return 1;
    }
    if olen < 2 {
        return 1;
    }
    w.at = at + olen as u64;
    0
}

/// `opts[i]` with the index masked in a way the compiler keeps: where it can see the
/// bound already, it drops a plain mask, and the verifier, which cannot, refuses the
/// read. A volatile read hides the bound from the compiler.
#[inline(always)]
fn option_byte(opts: &[u8; 64], i: u64) -> u8 {
    // SAFETY: reads a local.
    let i = unsafe { core::ptr::read_volatile(&i) } & 63;
    opts[i as usize]
}

/// An IPv6 address, copied by the load-bytes helper straight into its two words.
#[inline(always)]
fn addr_at<P: Packet>(p: &P, off: usize) -> Result<Addr, Skip> {
    let mut a: Addr = [0; 2];
    // SAFETY: an Addr is 16 bytes; viewing it as bytes is valid for any contents.
    let bytes = unsafe { &mut *a.as_mut_ptr().cast::<[u8; 16]>() };
    if p.load_into(off, 16, bytes) {
        Ok(a)
    } else {
        Err(Skip::Malformed)
    }
}

/// `::ffff:a.b.c.d` from the address's bytes read as a little-endian word (so that the
/// bytes land in memory order).
#[inline(always)]
fn v4_mapped(le: u32) -> Addr {
    [0, 0xffff_0000 | (le as u64) << 32]
}
