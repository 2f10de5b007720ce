//! Per-flow state: roles, first payloads, the TCP lifecycle, and handing TLS bytes to the
//! record walker.

use aya_ebpf::bindings::BPF_NOEXIST;
use detector_common::{
    EventKind, FlowKey, FlowState, PayloadClass, Side, abort, dir_flags, flow_flags,
};

use crate::{
    FLOWS, SCRATCH, TLS_PORTS, count,
    emit::{Cx, Extra, emit},
    packet::Packet,
    parse::{Tcp, tcp_flags},
    payload::{self, Head},
    tls,
};

/// Runs the flow logic for one TCP packet.
#[inline(always)]
pub fn track<P: Packet>(p: &P, t: &Tcp, now: u64) {
    let (key, sender_is_a) = FlowKey::normalised(&t.src, t.sport, &t.dst, t.dport);

    let syn = t.flags & tcp_flags::SYN != 0;
    if syn && t.flags & tcp_flags::ACK == 0 {
        // A bare SYN never creates state: a SYN flood must not evict real flows.
        return;
    }

    let flow = match FLOWS.get_ptr_mut(key) {
        // SAFETY: map values stay valid for the program's run. Each direction's fields
        // are written by that direction's packets; see tls.rs for the shared history.
        Some(s) => unsafe { &mut *s },
        None => match create(&key, t, sender_is_a, now) {
            Some(s) => s,
            None => return,
        },
    };

    let client_is_a = flow.flags & flow_flags::CLIENT_IS_A != 0;
    let sender = if sender_is_a == client_is_a {
        Side::Client
    } else {
        Side::Server
    };

    if syn {
        // A SYN-ACK on a known flow: a retransmission, or the 4-tuple reused by a new
        // connection, which starts over.
        let server = &flow.dir[Side::Server as usize];
        let retransmit = flow.flags & flow_flags::SYNACK_SEEN != 0 && server.isn == t.seq;
        if !retransmit {
            init_synack(flow, &key, t, sender_is_a, now);
        }
        return;
    }
    flow.last_seen_ns = now;
    let side = sender as usize;
    flow.dir[side].last_seen_ns = now;

    let head = if t.payload_len > 0 {
        payload::read_head(p, t.payload_off, t.payload_len)
    } else {
        Head::EMPTY
    };
    let cx = Cx {
        p,
        key: &key,
        t,
        head: &head,
        now,
        sender,
    };

    if t.payload_len > 0 {
        if flow.dir[side].first_class == PayloadClass::None as u8 {
            first_payload(&cx, flow);
        }
        tls::walk(&cx, flow);
    }

    if t.flags & tcp_flags::RST != 0 {
        flow.dir[side].flags |= dir_flags::RST;
        tls::handshake_aborted(&cx, flow, abort::RST, None);
    } else if t.flags & tcp_flags::FIN != 0 && flow.dir[side].flags & dir_flags::FIN == 0 {
        flow.dir[side].flags |= dir_flags::FIN;
        tls::tls13_close(&cx, flow);
        tls::handshake_aborted(&cx, flow, abort::FIN, None);
    }
}

/// Classifies the side's first payload, starts the record walker on TLS, and reports
/// protocol mismatches.
#[inline(always)]
fn first_payload<P: Packet>(cx: &Cx<P>, flow: &mut FlowState) {
    let side = cx.sender as usize;
    let isn = flow.dir[side].isn;
    let at_start = flow.flags & flow_flags::SYNACK_SEEN != 0 && cx.t.seq == isn.wrapping_add(1);
    let class = if at_start {
        payload::classify(cx.head)
    } else {
        PayloadClass::NotAtStart
    };
    flow.dir[side].first_class = class as u8;
    if class.is_tls() {
        tls::sync_at_start(flow, side, cx.t.seq);
    }
    if mismatch(flow, cx.sender, class) {
        emit(cx, flow, EventKind::ProtocolMismatch, Extra::default());
    }
}

/// Whether this first payload contradicts what the port or the peer said.
#[inline(always)]
fn mismatch(flow: &FlowState, sender: Side, class: PayloadClass) -> bool {
    match sender {
        Side::Client => {
            class == PayloadClass::HttpRequest && flow.flags & flow_flags::TLS_PORT != 0
        }
        Side::Server => {
            let client = flow.dir[Side::Client as usize].first_class;
            if client == PayloadClass::HttpRequest as u8 {
                // Answered in TLS, or any answer at all on a TLS port (it is the evidence
                // the agent shows next to the request).
                class.is_tls() || flow.flags & flow_flags::TLS_PORT != 0
            } else {
                client == PayloadClass::ClientHello as u8 && class == PayloadClass::HttpResponse
            }
        }
    }
}

/// Creates the flow from a SYN-ACK or a first payload. The state is built in a per-CPU
/// scratch slot: it is too large for the BPF stack.
#[inline(never)]
fn create(key: &FlowKey, t: &Tcp, sender_is_a: bool, now: u64) -> Option<&'static mut FlowState> {
    let syn = t.flags & tcp_flags::SYN != 0;
    if !syn && t.payload_len == 0 {
        return None;
    }
    // SAFETY: per-CPU scratch value, ours for the duration of this program run.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    if syn {
        init_synack(scratch, key, t, sender_is_a, now);
    } else {
        init_midstream(scratch, key, now);
    }
    // Another CPU may have created it meanwhile: then its entry is as good as ours.
    let _ = FLOWS.insert(key, scratch, BPF_NOEXIST as u64);
    count(detector_common::Counter::FlowsCreated);
    // SAFETY: as in `track`.
    FLOWS.get_ptr_mut(key).map(|s| unsafe { &mut *s })
}

/// A flow whose SYN-ACK we see: its sender is the server.
#[inline(always)]
fn init_synack(flow: &mut FlowState, key: &FlowKey, t: &Tcp, sender_is_a: bool, now: u64) {
    reset(flow, now);
    flow.flags = flow_flags::SYNACK_SEEN;
    if !sender_is_a {
        flow.flags |= flow_flags::CLIENT_IS_A;
    }
    let server_port = if sender_is_a { key.port_a } else { key.port_b };
    if is_tls_port(server_port) {
        flow.flags |= flow_flags::TLS_PORT;
    }
    flow.dir[Side::Server as usize].isn = t.seq;
    flow.dir[Side::Client as usize].isn = t.ack.wrapping_sub(1);
}

/// A flow picked up mid-stream: roles are guessed from the ports (a TLS port, else the
/// lower port, is the server's).
#[inline(always)]
fn init_midstream(flow: &mut FlowState, key: &FlowKey, now: u64) {
    reset(flow, now);
    let a_tls = is_tls_port(key.port_a);
    let b_tls = is_tls_port(key.port_b);
    let server_is_a = if a_tls != b_tls {
        a_tls
    } else {
        key.port_a <= key.port_b
    };
    if !server_is_a {
        flow.flags |= flow_flags::CLIENT_IS_A;
    }
    if (server_is_a && a_tls) || (!server_is_a && b_tls) {
        flow.flags |= flow_flags::TLS_PORT;
    }
}

#[inline(always)]
fn reset(flow: &mut FlowState, now: u64) {
    // SAFETY: FlowState is plain data for which all-zero is the empty state.
    unsafe { core::ptr::write_bytes(flow as *mut FlowState, 0, 1) };
    flow.first_seen_ns = now;
    flow.last_seen_ns = now;
}

#[inline(always)]
fn is_tls_port(port: u16) -> bool {
    // SAFETY: the value is a plain u8 marker; we only test for presence.
    unsafe { TLS_PORTS.get(port).is_some() }
}
