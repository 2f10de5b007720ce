//! Bounds-checked reads from a packet, the same way for XDP and TC.
//!
//! XDP frames are linear, so reads go straight to packet memory. A TC egress skb can be a
//! GSO super-packet whose payload sits in page fragments beyond the linear head, so reads
//! there go through `bpf_skb_load_bytes`, which reaches the fragments too.

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use detector_common::REPLAY_META_LEN;

/// Direct reads stop here: it keeps every offset provably bounded for the verifier (whose
/// own limit for packet pointers is 64 KiB), and no header we parse lies deeper.
pub const MAX_OFFSET: usize = 0xffff;
/// Helper copies (`load_into`) reach further: a GRO/GSO super-packet's payload can end past
/// 64 KiB, and a record header there must still be read. BIG TCP tops out at 512 KiB.
pub const MAX_LOAD_OFFSET: usize = 1 << 19;

pub trait Packet {
    type Ctx: EbpfContext;
    /// The program type, which says where its slow path is (see maps/tail.rs).
    const TYPE: ProgramType;

    fn ctx(&self) -> &Self::Ctx;

    /// Total packet length in bytes, including any non-linear part.
    fn len(&self) -> usize;

    /// Reads a plain-data `T` at `off`, or `None` if it does not fit in the packet.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;

    /// The program type's load-bytes helper: `len` bytes at `off` into `dst`.
    fn copy_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> bool;

    /// The capture time a replayed frame carries in front of it (see
    /// `Config::clock_in_meta`); only asked for in replay. TC has no such metadata.
    #[inline(always)]
    fn replay_time(&self) -> Option<u64> {
        None
    }

    /// Copies `len` bytes (1 to `N`) at `off` into `buf`, reaching data a direct read cannot
    /// (a variable-length window, non-linear skb data). Returns false if out of bounds.
    #[inline(always)]
    fn load_into<const N: usize>(&self, off: usize, len: usize, buf: &mut [u8; N]) -> bool {
        if off > MAX_LOAD_OFFSET || len == 0 || len > N {
            return false;
        }
        let len = verifier_len::<N>(len);
        self.copy_bytes(off as u32, buf.as_mut_ptr().cast(), len as u32)
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.read::<[u8; 2]>(off).map(u16::from_be_bytes)
    }
}

pub enum ProgramType {
    Xdp,
    Tc,
}

pub struct Xdp(pub XdpContext);

impl Packet for Xdp {
    type Ctx = XdpContext;
    const TYPE: ProgramType = ProgramType::Xdp;

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

    #[inline(always)]
    fn copy_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> bool {
        // SAFETY: the caller (`load_into`) bounds dst and len; the helper checks the packet.
        unsafe { bpf_xdp_load_bytes(self.0.as_ptr().cast(), off, dst, len) == 0 }
    }

    #[inline(always)]
    fn replay_time(&self) -> Option<u64> {
        let meta = self.0.metadata();
        if meta + REPLAY_META_LEN > self.0.metadata_end() {
            return None;
        }
        // SAFETY: the metadata holds at least REPLAY_META_LEN bytes (checked above).
        Some(unsafe { core::ptr::read_unaligned(meta as *const u64) })
    }
}

pub struct Tc(pub TcContext);

impl Packet for Tc {
    type Ctx = TcContext;
    const TYPE: ProgramType = ProgramType::Tc;

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

    #[inline(always)]
    fn copy_bytes(&self, off: u32, dst: *mut c_void, len: u32) -> bool {
        // SAFETY: the caller (`load_into`) bounds dst and len; the helper checks the packet.
        unsafe { bpf_skb_load_bytes(self.0.as_ptr().cast(), off, dst, len) == 0 }
    }
}

/// `len` again, in a form whose bounds the verifier can see ([1, N]). The compiler folds
/// the range check before it into one unsigned comparison on `len - 1` and then deletes
/// any mask as redundant, so the verifier never learns the lower bound. A volatile read
/// hides the value from the optimiser; the mask that follows is then kept and proves the
/// bounds to the verifier.
#[inline(always)]
fn verifier_len<const N: usize>(len: usize) -> usize {
    const { assert!(N.is_power_of_two()) };
    // SAFETY: reads a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    (len.wrapping_sub(1) & (N - 1)) + 1
}
