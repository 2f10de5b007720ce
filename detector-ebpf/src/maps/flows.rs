//! The flow tables: confirmed flows, and flows seen from one side only so far. Until the
//! other side answers a flow lives in a table of its own, so that one-sided floods
//! (spoofed segments, scans, the SYN-ACKs of a SYN flood) churn that table and never evict
//! confirmed flows. The agent sizes both at load time.
//!
//! SAFETY (for the `&'static mut` handed out here): map values stay valid for the
//! program's run. Each direction's fields are written by that direction's packets; see
//! tls/items.rs `history` for the one field both write.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use detector_common::{
    Counter, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_UNCONFIRMED_TABLE_SIZE, FlowKey, FlowState,
    flow_flags,
};

use crate::maps::counters;

#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

#[map]
static UNCONFIRMED: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_UNCONFIRMED_TABLE_SIZE, 0);

/// Per-CPU room to build a flow's state: it is too large for the BPF stack.
#[map]
static SCRATCH: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// The flow's state and whether it is still unconfirmed. Confirmed flows are looked up
/// first: they carry nearly all packets.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<(&'static mut FlowState, bool)> {
    // SAFETY (both): see the module's comment.
    if let Some(s) = FLOWS.get_ptr_mut(key) {
        return Some((unsafe { &mut *s }, false));
    }
    UNCONFIRMED
        .get_ptr_mut(key)
        .map(|s| (unsafe { &mut *s }, true))
}

/// The flow's state in the table the caller knows it is in.
#[inline(always)]
pub fn get(key: &FlowKey, unconfirmed: bool) -> Option<&'static mut FlowState> {
    let s = if unconfirmed {
        UNCONFIRMED.get_ptr_mut(key)
    } else {
        FLOWS.get_ptr_mut(key)
    };
    // SAFETY: see the module's comment.
    s.map(|s| unsafe { &mut *s })
}

/// This CPU's room to build a new flow's state in.
#[inline(always)]
pub fn scratch() -> Option<&'static mut FlowState> {
    // SAFETY: per-CPU scratch value, ours for the duration of this program run.
    Some(unsafe { &mut *SCRATCH.get_ptr_mut(0)? })
}

/// Adds a flow seen from one side; returns its entry.
#[inline(always)]
pub fn add_unconfirmed(key: &FlowKey, state: &FlowState) -> Option<&'static mut FlowState> {
    // Another CPU may have created it meanwhile: then its entry is as good as ours.
    if UNCONFIRMED.insert(key, state, BPF_NOEXIST as u64).is_ok() {
        counters::inc(Counter::UnconfirmedCreated);
    }
    get(key, true)
}

/// A flow seen from one side only and answered by a RST: nothing two-sided to keep.
#[inline(always)]
pub fn forget_unconfirmed(key: &FlowKey) {
    let _ = UNCONFIRMED.remove(key);
}

/// Moves an answered flow into the confirmed table. Only one CPU's insert wins and counts
/// (created minus present is what the agent reports as evicted).
#[inline(never)]
pub fn confirm(key: &FlowKey, flow: &FlowState) -> Option<&'static mut FlowState> {
    // Copied with no owner: another CPU may be reading the unconfirmed entry right now,
    // and its give-back reaches that entry, never the copy (see owner.rs).
    let copy = scratch()?;
    *copy = *flow;
    copy.owner = 0;
    if FLOWS.insert(key, copy, BPF_NOEXIST as u64).is_ok() {
        counters::inc(Counter::FlowsCreated);
        if flow.flags & flow_flags::MIDSTREAM != 0 {
            // A flow older than us, or one the table evicted, that its peer answers:
            // healthy, whatever our uptime. Its start was not seen, so never judged.
            counters::inc(Counter::MidstreamAdopted);
        }
    }
    forget_unconfirmed(key);
    get(key, false)
}
