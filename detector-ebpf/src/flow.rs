//! Per-flow state and the events it raises.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_log_ebpf::{debug, warn};
use detector_common::{
    Addr, Counter, Event, FlowKey, FlowState, PayloadClass, Side, flow_flags, reasons,
};

use crate::{
    EVENTS, FLOWS, TLS_PORTS, count,
    packet::Packet,
    parse::{Tcp, tcp_flags},
    payload::{self, Head},
};

/// Runs the flow logic for one TCP packet.
#[inline(always)]
pub fn track<P: Packet>(p: &P, t: &Tcp, now: u64) {
    // Normalise direction: the endpoint that sorts lower is `a`.
    let sender_is_a = endpoint_le(&t.src, t.sport, &t.dst, t.dport);
    let key = if sender_is_a {
        FlowKey {
            addr_a: t.src,
            addr_b: t.dst,
            port_a: t.sport,
            port_b: t.dport,
        }
    } else {
        FlowKey {
            addr_a: t.dst,
            addr_b: t.src,
            port_a: t.dport,
            port_b: t.sport,
        }
    };

    let syn = t.flags & tcp_flags::SYN != 0;
    let ack = t.flags & tcp_flags::ACK != 0;
    if syn && !ack {
        // A bare SYN never creates state: a SYN flood must not evict real flows.
        return;
    }

    let state = match FLOWS.get_ptr_mut(key) {
        // SAFETY: map values stay valid for the program's run; fields are written in place
        // and a torn read between CPUs at worst re-classifies one payload.
        Some(s) => unsafe { &mut *s },
        None => {
            let Some(s) = create(&key, t, sender_is_a, now) else {
                return;
            };
            s
        }
    };

    let client_is_a = state.flags & flow_flags::CLIENT_IS_A != 0;
    let sender = if sender_is_a == client_is_a {
        Side::Client
    } else {
        Side::Server
    };

    if syn {
        // A SYN-ACK on a known flow: a retransmission, or the 4-tuple reused by a new
        // connection, which starts over.
        let retransmit =
            state.flags & flow_flags::SYNACK_SEEN != 0 && state.isn[Side::Server as usize] == t.seq;
        if !retransmit {
            *state = synack_state(t, sender_is_a, now);
        }
        return;
    }
    state.last_seen_ns = now;

    if t.payload_len == 0 {
        return;
    }
    let head = payload::read_head(p, t.payload_off, t.payload_len);
    if payload::is_tls_header(&head) {
        count(Counter::TlsRecords);
    }

    let mut why = 0u8;
    let side = sender as usize;
    let first = state.first_class[side] == PayloadClass::None as u8;
    if first {
        let at_start =
            state.flags & flow_flags::SYNACK_SEEN != 0 && t.seq == state.isn[side].wrapping_add(1);
        let class = if at_start {
            payload::classify(&head)
        } else {
            PayloadClass::NotAtStart
        };
        state.first_class[side] = class as u8;
        if mismatch(state, sender, class) {
            why |= reasons::PROTOCOL_MISMATCH;
        }
    }

    let alert = payload::plaintext_alert(&head);
    // Without record walking, only a record known to start here is trusted: the side's
    // first payload, or a segment holding exactly one alert record.
    if alert.is_some() && (first || t.payload_len == 7) {
        why |= reasons::PLAINTEXT_ALERT;
    }

    if why != 0 {
        emit(p, &key, state, t, &head, sender, why, alert, now);
    }
}

/// Whether this first payload contradicts what the port or the peer said.
#[inline(always)]
fn mismatch(state: &FlowState, sender: Side, class: PayloadClass) -> bool {
    match sender {
        Side::Client => {
            class == PayloadClass::HttpRequest && state.flags & flow_flags::TLS_PORT != 0
        }
        Side::Server => {
            let client = state.first_class[Side::Client as usize];
            if client == PayloadClass::HttpRequest as u8 {
                // Answered in TLS, or any answer at all on a TLS port (it is the evidence
                // the agent shows next to the request).
                class.is_tls() || state.flags & flow_flags::TLS_PORT != 0
            } else {
                client == PayloadClass::ClientHello as u8 && class == PayloadClass::HttpResponse
            }
        }
    }
}

#[inline(always)]
fn create(key: &FlowKey, t: &Tcp, sender_is_a: bool, now: u64) -> Option<&'static mut FlowState> {
    let syn = t.flags & tcp_flags::SYN != 0;
    let state = if syn {
        synack_state(t, sender_is_a, now)
    } else if t.payload_len > 0 {
        midstream_state(key, now)
    } else {
        return None;
    };
    // Another CPU may have created it meanwhile: then its entry is as good as ours.
    let _ = FLOWS.insert(key, state, BPF_NOEXIST as u64);
    count(Counter::FlowsCreated);
    // SAFETY: as in `track`.
    FLOWS.get_ptr_mut(key).map(|s| unsafe { &mut *s })
}

/// State for a flow whose SYN-ACK we see: its sender is the server.
#[inline(always)]
fn synack_state(t: &Tcp, sender_is_a: bool, now: u64) -> FlowState {
    let mut flags = flow_flags::SYNACK_SEEN;
    if !sender_is_a {
        flags |= flow_flags::CLIENT_IS_A;
    }
    if is_tls_port(t.sport) {
        flags |= flow_flags::TLS_PORT;
    }
    let mut isn = [0u32; 2];
    isn[Side::Server as usize] = t.seq;
    isn[Side::Client as usize] = t.ack.wrapping_sub(1);
    FlowState {
        first_seen_ns: now,
        last_seen_ns: now,
        isn,
        first_class: [0; 2],
        flags,
        _pad: [0; 5],
    }
}

/// State for a flow picked up mid-stream: roles are guessed from the ports (a TLS port,
/// else the lower port, is the server's).
#[inline(always)]
fn midstream_state(key: &FlowKey, now: u64) -> FlowState {
    let a_tls = is_tls_port(key.port_a);
    let b_tls = is_tls_port(key.port_b);
    let server_is_a = if a_tls != b_tls {
        a_tls
    } else {
        key.port_a <= key.port_b
    };
    let mut flags = 0;
    if !server_is_a {
        flags |= flow_flags::CLIENT_IS_A;
    }
    if (server_is_a && a_tls) || (!server_is_a && b_tls) {
        flags |= flow_flags::TLS_PORT;
    }
    FlowState {
        first_seen_ns: now,
        last_seen_ns: now,
        isn: [0; 2],
        first_class: [0; 2],
        flags,
        _pad: [0; 5],
    }
}

/// Orders endpoints by address, then port. Written out on 64-bit halves because a slice
/// comparison would compile to a memcmp call, which BPF does not have.
#[inline(always)]
fn endpoint_le(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    let half = |x: &Addr, i: usize| {
        u64::from_be_bytes([
            x[i],
            x[i + 1],
            x[i + 2],
            x[i + 3],
            x[i + 4],
            x[i + 5],
            x[i + 6],
            x[i + 7],
        ])
    };
    let (a_hi, b_hi) = (half(a, 0), half(b, 0));
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    let (a_lo, b_lo) = (half(a, 8), half(b, 8));
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    a_port <= b_port
}

#[inline(always)]
fn is_tls_port(port: u16) -> bool {
    // SAFETY: the value is a plain u8 marker; we only test for presence.
    unsafe { TLS_PORTS.get(port).is_some() }
}

#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn emit<P: Packet>(
    p: &P,
    key: &FlowKey,
    state: &FlowState,
    t: &Tcp,
    head: &Head,
    sender: Side,
    why: u8,
    alert: Option<(u8, u8)>,
    now: u64,
) {
    let client_is_a = state.flags & flow_flags::CLIENT_IS_A != 0;
    let (client_addr, client_port, server_addr, server_port) = if client_is_a {
        (key.addr_a, key.port_a, key.addr_b, key.port_b)
    } else {
        (key.addr_b, key.port_b, key.addr_a, key.port_a)
    };
    let (alert_level, alert_description) = alert.unwrap_or((0, 0));
    let event = Event {
        ts_ns: now,
        flow_first_seen_ns: state.first_seen_ns,
        client_addr,
        server_addr,
        client_port,
        server_port,
        reasons: why,
        sender: sender as u8,
        client_first: state.first_class[Side::Client as usize],
        server_first: state.first_class[Side::Server as usize],
        flow_flags: state.flags,
        alert_level,
        alert_description,
        snippet_len: head.len as u8,
        snippet: head.bytes,
        tcp_seq: t.seq,
        payload_len: t.payload_len as u32,
        _pad: 0,
    };
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
            count(Counter::EventsEmitted);
            debug!(p.ctx(), "event: reasons {} sender {}", why, sender as u8);
        }
        None => {
            count(Counter::EventsDropped);
            warn!(p.ctx(), "ring buffer full: event dropped");
        }
    }
}
