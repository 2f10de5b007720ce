//! Events to the agent, written straight into the ring buffer (an event does not fit
//! on the BPF stack next to everything else).

use detector_common::{Counter, EventKind, FlowKey, FlowState, Side, flow_flags};

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};

use crate::{
    maps::{counters, events},
    packet::Packet,
    parse::Segment,
    payload::read_head,
};

/// Everything an event needs to know about the packet that raised it.
pub struct Cx<'a, P: Packet> {
    pub p: &'a P,
    pub key: &'a FlowKey,
    pub seg: &'a Segment,
    pub now: u64,
    /// How long the flow was quiet before this packet.
    pub gap_ns: u64,
    /// The idle threshold in force.
    pub idle_ns: u64,
    pub sender: Side,
}

/// Kind-specific fields; the rest of the event is the flow's facts.
#[derive(Clone, Copy, Default)]
pub struct Extra {
    pub alert: Option<(u8, u8)>,
    pub record_len: u16,
    pub detail: u8,
    /// Overrides the packet's own gap (idle resumption events report the earlier gap).
    pub gap_ns: Option<u64>,
}

/// Not inlined: one copy serves every call site, which keeps the programs small and
/// their stack frames apart.
#[inline(never)]
pub fn emit<P: Packet>(cx: &Cx<P>, flow: &FlowState, kind: EventKind, extra: Extra) {
    let Some(mut entry) = events::reserve() else {
        // Counted and exported; a log line per lost event would only add to the flood.
        // The one reason a found event within the cap is not delivered.
        counters::inc(Counter::EventsDropped);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, exclusively ours, properly sized record. Every
    // field is written below (Event has no implicit padding), so no stale ring-buffer
    // byte leaks; zeroing it first would compile to a memset call, a BPF-to-BPF call that
    // the tail-calling main programs must not contain.
    unsafe {
        let e = &mut *e;
        e.family = cx.key.family;
        e._pad = [0; 3];
        let client_is_a = flow.flags & flow_flags::CLIENT_IS_A != 0;
        let k = cx.key;
        if client_is_a {
            (e.client_addr, e.client_port) = (k.addr_a, k.port_a);
            (e.server_addr, e.server_port) = (k.addr_b, k.port_b);
        } else {
            (e.client_addr, e.client_port) = (k.addr_b, k.port_b);
            (e.server_addr, e.server_port) = (k.addr_a, k.port_a);
        }
        e.ts_ns = cx.now;
        e.gap_ns = extra.gap_ns.unwrap_or(cx.gap_ns);
        e.flow_first_seen_ns = flow.first_seen_ns;
        e.kind = kind as u8;
        e.sender = cx.sender as u8;
        e.client_first = flow.dir[Side::Client as usize].first_class;
        e.server_first = flow.dir[Side::Server as usize].first_class;
        e.flow_flags = flow.flags;
        (e.alert_level, e.alert_description) = extra.alert.unwrap_or((0, 0));
        e.detail = extra.detail;
        e.record_len = extra.record_len;
        let head = read_head(
            cx.p,
            cx.seg.payload_off as usize,
            cx.seg.payload_len as usize,
        );
        copy16(&mut e.snippet, &head.bytes);
        e.snippet_len = head.len as u8;
        copy16(&mut e.history, &flow.tls.history);
        e.history_len = if flow.tls.history_len > 255 {
            255
        } else {
            flow.tls.history_len as u8
        };
        e.tcp_seq = cx.seg.seq;
        e.payload_len = cx.seg.payload_len;
        e.dir_flags = [
            flow.dir[Side::Client as usize].flags,
            flow.dir[Side::Server as usize].flags,
        ];
        e.tls.offered_versions = flow.tls.offered_versions;
        e.tls.session_id_len = flow.tls.session_id_len;
        e.tls.session_ticket_len = flow.tls.session_ticket_len;
        e.tls.negotiated_version = flow.tls.negotiated_version;
        e.tls.flags = flow.tls.flags;
    }
    entry.submit(0);
    counters::inc(Counter::EventsEmitted);
}

/// Events the slow path found, emitted together at its end: emitting at each place an
/// event is found would make the verifier re-check `emit` at every call site for every
/// state there (inside the walker's bpf_loop callback above all), which exhausts its
/// budget.
#[repr(C)]
#[derive(Default)]
pub struct Found {
    n: u8,
    first: Option<(EventKind, Extra)>,
    second: Option<(EventKind, Extra)>,
    third: Option<(EventKind, Extra)>,
    fourth: Option<(EventKind, Extra)>,
}

impl Found {
    /// Keeps the event; a fifth from one packet is counted as dropped over the cap (few
    /// packets carry that many suspicious things). Every event found is counted here,
    /// so that found = emitted + dropped (ring full) + dropped over the cap.
    #[inline(always)]
    pub fn push(&mut self, kind: EventKind, extra: Extra) {
        counters::inc(Counter::EventsFound);
        if self.n >= 4 {
            counters::inc(Counter::EventsOverCap);
            return;
        }
        // The compiler turns the choice of slot into an address computed from `n`, and
        // where it checks a copy of `n` the verifier may not carry the check over to the
        // register it computes with (then the address could be anywhere in its eyes). A
        // volatile read hides the check from the optimiser, so the mask stays and proves
        // the bound.
        // SAFETY: reads a field of `self`.
        let i = unsafe { core::ptr::read_volatile(&self.n) } & 3;
        let slot = match i {
            0 => &mut self.first,
            1 => &mut self.second,
            2 => &mut self.third,
            _ => &mut self.fourth,
        };
        *slot = Some((kind, extra));
        self.n += 1;
    }

    #[inline(always)]
    pub fn clear(&mut self) {
        self.n = 0;
        self.first = None;
        self.second = None;
        self.third = None;
        self.fourth = None;
    }

    #[inline(always)]
    fn slot(&self, i: u64) -> Option<(EventKind, Extra)> {
        match i {
            0 => self.first,
            1 => self.second,
            2 => self.third,
            _ => self.fourth,
        }
    }

    /// Emits what was found, one event per bpf_loop iteration, so that the verifier
    /// checks `emit` once rather than once per slot.
    #[inline(always)]
    pub fn emit_all<P: Packet>(&self, cx: &Cx<P>, flow: &FlowState) {
        if self.n == 0 {
            return;
        }
        let mut job = EmitJob {
            cx: cx as *const Cx<P>,
            flow: flow as *const FlowState,
            found: self as *const Found,
        };
        // bpf_loop runs all `n` (at most 4) iterations: it fails only on flags or counts
        // far beyond these, and the callback never stops it early. So every kept event
        // reaches `emit`, which delivers it or counts it dropped.
        // SAFETY: `emit_step::<P>` has the callback signature bpf_loop expects, and `job`
        // lives on this frame for the whole call.
        unsafe {
            bpf_loop(
                self.n as u32,
                emit_step::<P> as *mut c_void,
                (&mut job as *mut EmitJob<P>).cast(),
                0,
            );
        }
    }
}

struct EmitJob<'a, P: Packet> {
    cx: *const Cx<'a, P>,
    flow: *const FlowState,
    found: *const Found,
}

extern "C" fn emit_step<P: Packet>(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `emit_all` passed, to a live `EmitJob<P>`
    // whose pointers are valid for the duration of the loop.
    let job = unsafe { &*ctx.cast::<EmitJob<P>>() };
    let (cx, flow, found) = unsafe { (&*job.cx, &*job.flow, &*job.found) };
    // Masked so the verifier sees the slot's address stay inside the value.
    if let Some((kind, extra)) = found.slot(index & 3) {
        emit(cx, flow, kind, extra);
    }
    0
}

/// Copies 16 bytes as two words. Both sides are 8-byte aligned (see `Event`); a plain
/// array assignment here compiles to a byte loop.
#[inline(always)]
fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    // SAFETY: both are 16 valid bytes at 8-byte-aligned addresses (Event and FlowState
    // place them so; Head is 8-aligned); any bytes are valid u64s.
    unsafe {
        let s = src.as_ptr().cast::<[u64; 2]>().read();
        dst.as_mut_ptr().cast::<[u64; 2]>().write(s);
    }
}
