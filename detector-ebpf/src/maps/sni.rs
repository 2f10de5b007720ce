//! SNI host names of flows, kept out of the per-packet state; sized like the flow table.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use detector_common::{DEFAULT_FLOW_TABLE_SIZE, FlowKey, SNI_MAX, Sni};

#[map]
static SNI: LruHashMap<FlowKey, Sni> = LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Per-CPU room to build a name in: it is too large for the BPF stack.
#[map]
static SNI_SCRATCH: PerCpuArray<Sni> = PerCpuArray::with_max_entries(1, 0);

/// Keeps the flow's host name, `len` bytes that `fill` writes (and says whether it could);
/// returns whether it was kept.
#[inline(always)]
pub fn store(key: &FlowKey, len: u8, fill: impl FnOnce(&mut [u8; SNI_MAX]) -> bool) -> bool {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch value, ours for the duration of this program run.
    let sni = unsafe { &mut *scratch };
    if !fill(&mut sni.name) {
        return false;
    }
    sni.len = len;
    SNI.insert(key, sni, 0).is_ok()
}
