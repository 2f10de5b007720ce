//! One CPU at a time reads a flow's bytes. The record walker's state (cursor, pending
//! header bytes, the read-ahead chain) is a sequence of dependent updates; two CPUs
//! walking one flow at once interleave them and leave a cursor pointing nowhere. That
//! happens in earnest: on a veth device a packet is processed on the CPU that sent it,
//! and a TCP sender transmits one flow from process context and from the softirq its
//! ACKs arrive in, so a direction's packets sit in two CPUs' backlogs at once.
//!
//! The owner word in the flow's entry is taken with a compare-and-exchange and given
//! back with an exchange (both full barriers on BPF). Holder and waiter are never on the
//! same CPU (a program runs to its end with bottom halves off), so waiting is bounded by
//! one walk. The word holds when it was taken, so an owner that never gave it back (a
//! copy of a held entry, an aborted run) is taken over instead of blinding the flow.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};
use detector_common::{Counter, FlowState, OWNER_STALE, owner_stamp as stamp};

use crate::maps::counters;

/// Attempts to take a held flow: each is one compare-and-exchange, a few ns uncontended
/// and a cache-line transfer (~100 ns) contended, so the wait is bounded near 0.4 ms: far
/// beyond a walk (a few µs), and beyond the stalls a holder meets on a busy host (512
/// attempts, ~50 µs, left a packet unread in a CI soak: 1 of 20 waits), yet below the 1 ms
/// after which an owner counts as stale.
const ATTEMPTS: u32 = 4096;

/// One attempt: whether the flow was free and is now ours.
#[inline(always)]
fn attempt(flow: &mut FlowState, mine: u32) -> bool {
    cas(flow, 0, mine)
}

#[inline(always)]
fn cas(flow: &mut FlowState, old: u32, new: u32) -> bool {
    // SAFETY: `owner` is an aligned u32 inside a map value that stays valid for the run.
    // core's atomics have no compare-and-exchange on BPF; the instruction (BPF_CMPXCHG)
    // exists and the intrinsic lowers to it.
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u32,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(&mut flow.owner, old, new)
        .1
    }
}

/// Takes the flow if nobody holds it, without waiting (the fast path, which hands a
/// held flow's packet to the slow path instead).
#[inline(always)]
pub fn try_take(flow: &mut FlowState, now_ns: u64) -> bool {
    attempt(flow, stamp(now_ns))
}

/// Takes the flow, waiting a bounded time for another CPU's walk to end; a stale owner
/// is taken over. False (counted) if the owner held on past the wait: the packet then
/// goes unread, which the walker meets as a hole in the stream.
#[inline(always)]
pub fn take(flow: &mut FlowState, now_ns: u64) -> bool {
    let mine = stamp(now_ns);
    attempt(flow, mine) || wait_for(flow, mine)
}

/// The contended case of [`take`], a function of its own: the verifier then carries no
/// trace of the wait into the slow path, which it would otherwise check once per way the
/// wait can end.
#[inline(never)]
fn wait_for(flow: &mut FlowState, mine: u32) -> bool {
    counters::inc(Counter::FlowOwnerWaits);
    let mut wait = Wait {
        flow: flow as *mut FlowState,
        mine,
        taken: false,
    };
    // SAFETY: `wait_step` has the callback signature bpf_loop expects, and `wait` lives
    // on this frame for the whole call.
    unsafe {
        bpf_loop(
            ATTEMPTS,
            wait_step as *mut c_void,
            (&mut wait as *mut Wait).cast(),
            0,
        );
    }
    if wait.taken {
        return true;
    }
    let held = flow.owner;
    if held != 0 && mine.wrapping_sub(held) >= OWNER_STALE && cas(flow, held, mine) {
        counters::inc(Counter::FlowOwnerStale);
        return true;
    }
    counters::inc(Counter::FlowOwnerBusy);
    false
}

/// Gives the flow back.
#[inline(always)]
pub fn give_back(flow: &mut FlowState) {
    // SAFETY: as in `cas`. An exchange rather than a plain store: it orders the walk's
    // writes before the release on every architecture.
    unsafe {
        core::intrinsics::atomic_xchg::<u32, { core::intrinsics::AtomicOrdering::SeqCst }>(
            &mut flow.owner,
            0,
        );
    }
}

struct Wait {
    flow: *mut FlowState,
    mine: u32,
    taken: bool,
}

extern "C" fn wait_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `take` passed, to a live `Wait` whose flow
    // pointer is a map value valid for the run.
    let wait = unsafe { &mut *ctx.cast::<Wait>() };
    let flow = unsafe { &mut *wait.flow };
    if attempt(flow, wait.mine) {
        wait.taken = true;
        return 1;
    }
    0
}
