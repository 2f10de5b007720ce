//! The counters the agent sums over CPUs and exports.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use detector_common::Counter;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn inc(c: Counter) {
    add(c, 1);
}

#[inline(always)]
pub fn add(c: Counter, n: u64) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently.
        unsafe { *v += n };
    }
}
