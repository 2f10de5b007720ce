//! The hand-over from the fast path to the slow path: a tail call into a program of its
//! own (see slow.rs for why), with the fast path's findings in per-CPU memory.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
};
use detector_common::Counter;

use crate::{
    maps::counters,
    packet::{Packet, ProgramType},
    slow::SlowArgs,
};

/// The slow-path programs; one array per program type, as the kernel requires.
#[map]
static XDP_SLOW: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static TC_SLOW: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static SLOW_ARGS: PerCpuArray<SlowArgs> = PerCpuArray::with_max_entries(1, 0);

/// Runs the slow path on this packet with `args`. Returns only if the tail call fails
/// (counted).
#[inline(always)]
pub fn to_slow_path<P: Packet>(p: &P, args: &SlowArgs) {
    let Some(slot) = SLOW_ARGS.get_ptr_mut(0) else {
        return;
    };
    let programs = match P::TYPE {
        ProgramType::Xdp => &XDP_SLOW,
        ProgramType::Tc => &TC_SLOW,
    };
    // SAFETY: per-CPU scratch; the tail call runs on this CPU right away.
    unsafe {
        *slot = *args;
        programs.tail_call(p.ctx(), 0);
    }
    counters::inc(Counter::TailCallFailed);
}

/// What the fast path handed over, in the slow-path program it tail-called.
#[inline(always)]
pub fn slow_args() -> Option<&'static SlowArgs> {
    // SAFETY: per-CPU scratch written just before the tail call that got us here.
    Some(unsafe { &*SLOW_ARGS.get_ptr(0)? })
}
