//! Events to the agent, written straight into the ring buffer (an event does not fit
//! on the BPF stack next to everything else).

use aya_log_ebpf::warn;
use detector_common::{Counter, Event, EventKind, FlowKey, FlowState, Side, flow_flags};

use crate::{EVENTS, count, packet::Packet, parse::Tcp, payload::Head};

/// Everything an event needs to know about the packet that raised it.
pub struct Cx<'a, P: Packet> {
    pub p: &'a P,
    pub key: &'a FlowKey,
    pub t: &'a Tcp,
    pub head: &'a Head,
    pub now: u64,
    pub sender: Side,
}

/// Kind-specific fields; the rest of the event is the flow's facts.
#[derive(Default)]
pub struct Extra {
    pub alert: Option<(u8, u8)>,
    pub record_len: u16,
    pub detail: u8,
}

/// Not inlined: it is called from a dozen places, and one copy keeps the program small.
#[inline(never)]
pub fn emit<P: Packet>(cx: &Cx<P>, flow: &FlowState, kind: EventKind, extra: Extra) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventsDropped);
        warn!(cx.p.ctx(), "ring buffer full: event dropped");
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, exclusively ours, properly sized record; it is
    // zeroed first so that no byte (padding included) leaks stale ring-buffer memory.
    unsafe {
        core::ptr::write_bytes(e, 0, 1);
        let e = &mut *e;
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
        e.flow_first_seen_ns = flow.first_seen_ns;
        e.kind = kind as u8;
        e.sender = cx.sender as u8;
        e.client_first = flow.dir[Side::Client as usize].first_class;
        e.server_first = flow.dir[Side::Server as usize].first_class;
        e.flow_flags = flow.flags;
        if let Some((level, description)) = extra.alert {
            e.alert_level = level;
            e.alert_description = description;
        }
        e.detail = extra.detail;
        e.record_len = extra.record_len;
        e.snippet = cx.head.bytes;
        e.snippet_len = cx.head.len as u8;
        e.history = flow.tls.history;
        e.history_len = if flow.tls.history_len > 255 {
            255
        } else {
            flow.tls.history_len as u8
        };
        e.tcp_seq = cx.t.seq;
        e.payload_len = cx.t.payload_len as u32;
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
    count(Counter::EventsEmitted);
}
