//! Per-CPU room where the window-scale search walks a SYN-ACK's TCP options.

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::parse::OptionWalk;

/// In map memory rather than on the stack: the verifier tracks stack values exactly, so
/// every (options length, offset) pair of the walk would be a state of its own, beyond its
/// budget; map contents are just unknown numbers to it.
#[map]
static OPTION_WALK: PerCpuArray<OptionWalk> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's walk, as the last one left it.
#[inline(always)]
pub fn walk() -> Option<&'static mut OptionWalk> {
    // SAFETY: per-CPU scratch, ours for this program run.
    Some(unsafe { &mut *OPTION_WALK.get_ptr_mut(0)? })
}
