//! Bounds-checked reads from a packet, the same way for XDP and TC.
//!
//! XDP frames are linear, so reads go straight to packet memory. A TC egress skb can be a
//! GSO super-packet whose payload sits in page fragments beyond the linear head, so reads
//! there go through `bpf_skb_load_bytes`, which reaches the fragments too.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    programs::{TcContext, XdpContext},
};

/// Offsets beyond this are never read: it keeps every offset provably bounded for the
/// verifier, and no header we parse lies deeper in a frame.
pub const MAX_OFFSET: usize = 0xffff;

pub trait Packet {
    type Ctx: EbpfContext;

    fn ctx(&self) -> &Self::Ctx;

    /// Total packet length in bytes, including any non-linear part.
    fn len(&self) -> usize;

    /// Reads a plain-data `T` at `off`, or `None` if it does not fit in the packet.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;

    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        self.read::<u8>(off)
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.read::<[u8; 2]>(off).map(u16::from_be_bytes)
    }

    #[inline(always)]
    fn be32_at(&self, off: usize) -> Option<u32> {
        self.read::<[u8; 4]>(off).map(u32::from_be_bytes)
    }
}

pub struct Xdp(pub XdpContext);

impl Packet for Xdp {
    type Ctx = XdpContext;

    #[inline(always)]
    fn ctx(&self) -> &XdpContext {
        &self.0
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        if off > MAX_OFFSET {
            return None;
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + size_of::<T>() > end {
            return None;
        }
        // SAFETY: the range [start+off, start+off+size_of::<T>()) was checked to lie inside
        // the frame; T is plain data and the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    }
}

pub struct Tc(pub TcContext);

impl Packet for Tc {
    type Ctx = TcContext;

    #[inline(always)]
    fn ctx(&self) -> &TcContext {
        &self.0
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        if off > MAX_OFFSET {
            return None;
        }
        self.0.load::<T>(off).ok()
    }
}
