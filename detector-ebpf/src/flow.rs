//! Per-flow state: roles, first payloads, the TCP lifecycle, and handing TLS bytes to the
//! record walker.

use aya_ebpf::bindings::BPF_NOEXIST;
use detector_common::{
    Counter, EventKind, FlowKey, FlowState, PayloadClass, Side, abort, dir_flags, flow_flags,
};

use crate::{
    FLOWS, SCRATCH, TLS_PORTS, WALK_ARGS, count,
    emit::{Cx, Extra, emit},
    packet::Packet,
    parse::{Tcp, tcp_flags},
    payload, tls,
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

    let cx = Cx {
        p,
        key: &key,
        t,
        now,
        sender,
    };

    if t.payload_len > 0 {
        if flow.dir[side].first_class == PayloadClass::None as u8 {
            first_payload(&cx, flow);
        }
        if tls::wants_walk(flow, side, t) {
            walk_in_own_program(&cx);
        }
    }
    finish(&cx, flow);
}

/// Hands the packet to the record walker, a program of its own reached by tail call: the
/// verifier then checks the walker from one clean state instead of once for every path
/// through this program, which it cannot afford. Returns only if the tail call fails.
#[inline(always)]
fn walk_in_own_program<P: Packet>(cx: &Cx<P>) {
    let Some(args) = WALK_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch; the tail call runs on this CPU right away.
    unsafe {
        *args = WalkArgs {
            key: *cx.key,
            now: cx.now,
            seq: cx.t.seq,
            payload_off: cx.t.payload_off as u32,
            payload_len: cx.t.payload_len as u32,
            tcp_flags: cx.t.flags,
            sender: cx.sender as u8,
        };
        P::walkers().tail_call(cx.p.ctx(), 0);
    }
    count(Counter::TailCallFailed);
}

/// The walker program's body: the packet's TLS records, then the rest of the packet.
#[inline(always)]
pub fn resume_walk<P: Packet>(p: &P) {
    let Some(args) = WALK_ARGS.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU scratch written just before the tail call that got us here.
    let args = unsafe { &*args };
    let Some(flow) = FLOWS.get_ptr_mut(args.key) else {
        return;
    };
    // SAFETY: as in `track`.
    let flow = unsafe { &mut *flow };
    let t = Tcp {
        src: [0; 2],
        dst: [0; 2],
        sport: 0,
        dport: 0,
        seq: args.seq,
        ack: 0,
        flags: args.tcp_flags,
        payload_off: args.payload_off as usize,
        payload_len: args.payload_len as usize,
    };
    let sender = if args.sender == Side::Server as u8 {
        Side::Server
    } else {
        Side::Client
    };
    let cx = Cx {
        p,
        key: &args.key,
        t: &t,
        now: args.now,
        sender,
    };
    tls::walk(&cx, flow);
    finish(&cx, flow);
}

/// What a packet's TCP flags end: a RST, or this side's FIN.
#[inline(always)]
fn finish<P: Packet>(cx: &Cx<P>, flow: &mut FlowState) {
    let t = cx.t;
    let side = cx.sender as usize;
    if t.flags & tcp_flags::RST != 0 {
        flow.dir[side].flags |= dir_flags::RST;
        if let Some(extra) = tls::handshake_aborted(flow, abort::RST, None) {
            emit(cx, flow, EventKind::HandshakeAborted, extra);
        }
    } else if t.flags & tcp_flags::FIN != 0 && flow.dir[side].flags & dir_flags::FIN == 0 {
        flow.dir[side].flags |= dir_flags::FIN;
        tls::tls13_close(cx, flow);
        if let Some(extra) = tls::handshake_aborted(flow, abort::FIN, None) {
            emit(cx, flow, EventKind::HandshakeAborted, extra);
        }
    }
}

/// What the main program hands the walker program (per-CPU, across the tail call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WalkArgs {
    key: FlowKey,
    now: u64,
    seq: u32,
    payload_off: u32,
    payload_len: u32,
    tcp_flags: u8,
    sender: u8,
}

/// Classifies the side's first payload, starts the record walker on TLS, and reports
/// protocol mismatches.
#[inline(always)]
fn first_payload<P: Packet>(cx: &Cx<P>, flow: &mut FlowState) {
    let side = cx.sender as usize;
    let isn = flow.dir[side].isn;
    let at_start = flow.flags & flow_flags::SYNACK_SEEN != 0 && cx.t.seq == isn.wrapping_add(1);
    let class = if at_start {
        // Only first payloads are read here: on every other packet the walker reads what
        // it needs, and most packets need nothing.
        payload::classify(&payload::read_head(
            cx.p,
            cx.t.payload_off,
            cx.t.payload_len,
        ))
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
    count(Counter::FlowsCreated);
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
