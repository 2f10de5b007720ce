//! The event ring the agent reads, and the per-CPU room where the slow path collects the
//! events of one packet before writing them (see `emit::Found`).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use detector_common::{EVENT_RING_BYTES, Event};

use crate::emit::Found;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[map]
static FOUND: PerCpuArray<Found> = PerCpuArray::with_max_entries(1, 0);

/// Room for one event in the ring; `None` when the agent fell behind and it is full.
#[inline(always)]
pub fn reserve() -> Option<RingBufEntry<Event>> {
    EVENTS.reserve::<Event>(0)
}

/// This CPU's collection of found events, emptied.
#[inline(always)]
pub fn found() -> Option<&'static mut Found> {
    // SAFETY: per-CPU scratch, ours for this program run.
    let found = unsafe { &mut *FOUND.get_ptr_mut(0)? };
    found.clear();
    Some(found)
}
