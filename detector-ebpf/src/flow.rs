//! Per-flow state: roles, first payloads, the TCP lifecycle, and handing TLS bytes to the
//! record walker.

use aya_log_ebpf::warn;
use detector_common::{
    Counter, Direction, EventKind, FlowKey, FlowState, PayloadClass, Side, abort, dir_flags,
    flow_flags, tls::content_type,
};

use crate::{
    emit::{Cx, Extra, Found},
    maps::{
        config::{self, Clock},
        counters, events, flows, tail,
    },
    packet::Packet,
    parse::{Tcp, tcp_flags},
    payload, tls,
};

/// Runs the flow logic for one TCP packet.
#[inline(always)]
pub fn track<P: Packet>(p: &P, t: &Tcp, clock: &Clock) {
    let now = clock.now;
    let (key, sender_is_a) = FlowKey::normalised(&t.src, t.sport, &t.dst, t.dport);

    let syn = t.flags & tcp_flags::SYN != 0;
    if syn && t.flags & tcp_flags::ACK == 0 {
        // A bare SYN never creates state: a SYN flood must not evict real flows.
        return;
    }

    let (mut flow, mut unconfirmed) = match flows::lookup(&key) {
        Some(found) => found,
        None => match create(&key, t, sender_is_a, clock) {
            Some(s) => (s, true),
            None => return,
        },
    };

    let client_is_a = flow.flags & flow_flags::CLIENT_IS_A != 0;
    let sender = if sender_is_a == client_is_a {
        Side::Client
    } else {
        Side::Server
    };
    if unconfirmed && sender as u8 != flow.opener {
        if t.flags & tcp_flags::RST != 0 {
            // Answered by a RST only: a scan, a spoofed segment, a connection older than
            // us that its peer forgot. Nothing two-sided was seen, so nothing is judged.
            counters::inc(Counter::UnconfirmedReset);
            flows::forget_unconfirmed(&key);
            return;
        }
        // Both sides seen: the flow is real and moves to the confirmed table.
        match flows::confirm(&key, flow) {
            Some(s) => (flow, unconfirmed) = (s, false),
            None => return,
        }
    }

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
    // How long the flow was quiet before this packet (zero for a flow's first packet).
    let gap_ns = now.saturating_sub(flow.last_seen_ns);
    flow.last_seen_ns = now;
    let side = sender as usize;
    flow.dir[side].last_seen_ns = now;
    // max_end means nothing before this side's first payload: the first one is never a
    // retransmission.
    let seg_end = t.seq.wrapping_add(t.payload_len as u32);
    let first = flow.dir[side].first_class == PayloadClass::None as u8;
    let retransmission =
        t.payload_len > 0 && !first && !tls::before(flow.dir[side].max_end, seg_end);
    if t.payload_len > 0 && !retransmission {
        flow.dir[side].max_end = seg_end;
    }

    // Everything that can raise an event runs in a program of its own (see
    // `slow_path`); this one only keeps the books. Most packets stop here.
    let rst_or_fin = t.flags & (tcp_flags::RST | tcp_flags::FIN) != 0;
    let payload = t.payload_len > 0;
    let interesting = rst_or_fin
        || gap_ns >= clock.idle_ns
        || flow.idle_resumer != 0
        || (payload
            && (flow.dir[side].first_class == PayloadClass::None as u8
                || tls::wants_walk(flow, side, t)));
    if interesting {
        let args = SlowArgs {
            key,
            now,
            gap_ns,
            idle_ns: clock.idle_ns,
            seq: t.seq,
            ack: t.ack,
            payload_off: t.payload_off as u32,
            payload_len: t.payload_len as u32,
            tcp_flags: t.flags,
            sender: sender as u8,
            unconfirmed,
            retransmission,
        };
        tail::to_slow_path(p, &args);
    }
}

/// The slow-path program's body: a program of its own, reached by tail call, with the
/// first-payload checks, the TLS record walker and every event. The verifier then checks
/// that logic once from a clean state instead of once for every path through the fast
/// path, which it cannot afford. Events found along the way are emitted together at the
/// end, from one place, for the same verifier reasons.
#[inline(always)]
pub fn slow_path<P: Packet>(p: &P) {
    let Some(args) = tail::slow_args() else {
        return;
    };
    let Some(flow) = flows::get(&args.key, args.unconfirmed) else {
        return;
    };
    let t = Tcp {
        src: [0; 2],
        dst: [0; 2],
        sport: 0,
        dport: 0,
        seq: args.seq,
        ack: args.ack,
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
        gap_ns: args.gap_ns,
        idle_ns: args.idle_ns,
        sender,
    };
    let side = sender as usize;
    // In map memory rather than on the stack: the verifier tracks stack values exactly,
    // and every combination of "events found so far" would be a state of its own at the
    // walker's bpf_loop; map contents are just unknown numbers to it.
    let Some(found) = events::found() else {
        return;
    };
    idle_resumption(&cx, flow, args.retransmission, found);
    if t.payload_len > 0 {
        if flow.dir[side].first_class == PayloadClass::None as u8 {
            first_payload(&cx, flow, found);
        }
        if tls::wants_walk(flow, side, &t) {
            let synced = flow.dir[side].flags & dir_flags::SYNCED != 0;
            tls::walk(&cx, flow, found);
            // Rare and worth a line in the agent's log (counted in the metrics too).
            if synced && flow.dir[side].flags & dir_flags::SYNCED == 0 {
                warn!(
                    p.ctx(),
                    "TLS record walker lost its place in a stream (seq {}, cursor {}, why {})",
                    t.seq,
                    flow.dir[side].cursor,
                    flow.dir[side].lost_why
                );
            }
        }
    }
    finish(&cx, flow, found);
    found.emit_all(&cx, flow);
}

/// Field case 5: a side that speaks after an idle gap either gets an answer (the flow
/// survived the gap) or keeps retransmitting into silence (something on the path forgot
/// the flow). Either is reported once, with the gap, for the timeout estimate.
#[inline(always)]
fn idle_resumption<P: Packet>(
    cx: &Cx<P>,
    flow: &mut FlowState,
    retransmission: bool,
    found: &mut Found,
) {
    let me = cx.sender as u8 + 1;
    let rst = cx.t.flags & tcp_flags::RST != 0;
    if cx.gap_ns >= cx.idle_ns && !rst {
        flow.idle_resumer = me;
        flow.idle_gap_ns = cx.gap_ns;
        flow.idle_retransmits = 0;
        return;
    }
    let waiting = flow.idle_resumer;
    if waiting == 0 || waiting == NO_LONGER_WAITING {
        return;
    }
    let extra = Extra {
        gap_ns: Some(flow.idle_gap_ns),
        ..Extra::default()
    };
    if waiting != me {
        flow.idle_resumer = 0;
        if rst {
            found.push(EventKind::IdleRstAnswer, extra);
        } else if flow.idle_gap_ns != 0 {
            // Survived gaps bound the path's timeout; a mid-stream flow's gap is unknown
            // (zero) and bounds nothing.
            found.push(EventKind::IdleSurvived, extra);
        }
    } else if retransmission {
        // One retransmission into silence can be the tail-loss probe of a packet lost on
        // a healthy path, which its answer will follow; a second, after the backoff, is a
        // sender still talking into a path that forgot the flow.
        flow.idle_retransmits += 1;
        if flow.idle_retransmits >= UNANSWERED_RETRANSMITS {
            flow.idle_resumer = NO_LONGER_WAITING;
            found.push(EventKind::IdleRetransmit, extra);
        }
    }
}

/// Retransmissions with no answer that make a resumption after idle a drop.
const UNANSWERED_RETRANSMITS: u8 = 2;

/// `idle_resumer` once its unanswered retransmission was reported.
const NO_LONGER_WAITING: u8 = 0xff;

/// What a packet's TCP flags end: a RST, or this side's FIN.
#[inline(always)]
fn finish<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, found: &mut Found) {
    let t = cx.t;
    let side = cx.sender as usize;
    let idle = cx.gap_ns >= cx.idle_ns;
    let rst = t.flags & tcp_flags::RST != 0;
    let first_fin = t.flags & tcp_flags::FIN != 0 && flow.dir[side].flags & dir_flags::FIN == 0;
    if !rst && !first_fin {
        return;
    }
    // What an end says (a handshake cut short, a close after idle) rests on having seen
    // everything before it; if the packet follows or acknowledges bytes we never saw (a
    // capture drop, a packet outside our view), it says nothing.
    let seen = seen_through(flow, side, t);
    let mut judged = |kind: EventKind, extra: Extra| {
        if seen {
            found.push(kind, extra);
        } else {
            counters::inc(Counter::UnseenBytes);
        }
    };
    // TLS 1.3's close: a close_notify-sized record, then FIN, or RST when the peer's own
    // close_notify crossed it. Judged at the FIN or RST, timed at the record before it.
    if tls::tls13_close(cx, flow) && flow.dir[side].flags & (dir_flags::FIN | dir_flags::RST) == 0 {
        let extra = Extra {
            gap_ns: Some(flow.dir[side].last_record_gap_ns),
            ..Extra::default()
        };
        judged(EventKind::Tls13CloseHeuristic, extra);
    }
    if rst {
        flow.dir[side].flags |= dir_flags::RST;
        if idle {
            judged(EventKind::IdleRst, Extra::default());
        }
        if let Some(extra) = tls::handshake_aborted(flow, abort::RST, None) {
            judged(EventKind::HandshakeAborted, extra);
        }
    } else {
        flow.dir[side].flags |= dir_flags::FIN;
        // A FIN right behind an alert belongs to that close (proxies send both), which
        // may have come after an idle gap even if the FIN itself did not.
        if idle || flow.dir[side].last_record_type == content_type::ALERT {
            judged(EventKind::IdleFin, Extra::default());
        }
        if let Some(extra) = tls::handshake_aborted(flow, abort::FIN, None) {
            judged(EventKind::HandshakeAborted, extra);
        }
    }
}

/// Whether the detector saw every byte this packet speaks of: the sender's stream up to
/// the packet's end, and the peer's up to what the packet acknowledges (less the peer's
/// FIN, which takes a sequence number but carries no byte).
#[inline(always)]
fn seen_through(flow: &FlowState, side: usize, t: &Tcp) -> bool {
    let end = t.seq.wrapping_add(t.payload_len as u32);
    if !stream_seen_to(&flow.dir[side], end) {
        return false;
    }
    if t.flags & tcp_flags::ACK == 0 {
        return true;
    }
    let peer = &flow.dir[1 - side];
    let fin = (peer.flags & dir_flags::FIN != 0) as u32;
    stream_seen_to(peer, t.ack.wrapping_sub(fin))
}

/// Whether one side's bytes before `to` were all seen: up to its first sequence number if
/// it sent nothing; else a walked TLS stream's next header is not before `to` (a header
/// before it would have gone by unread), and any other stream reached `to`.
#[inline(always)]
fn stream_seen_to(d: &Direction, to: u32) -> bool {
    if d.first_class == PayloadClass::None as u8 {
        return to == d.isn.wrapping_add(1);
    }
    let reached = if d.flags & dir_flags::SYNCED != 0 {
        d.cursor
    } else {
        d.max_end
    };
    !tls::before(reached, to)
}

/// What the fast path hands the slow path (per-CPU, across the tail call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SlowArgs {
    pub key: FlowKey,
    pub now: u64,
    pub gap_ns: u64,
    pub idle_ns: u64,
    pub seq: u32,
    pub ack: u32,
    pub payload_off: u32,
    pub payload_len: u32,
    pub tcp_flags: u8,
    pub sender: u8,
    /// Which table holds the flow.
    pub unconfirmed: bool,
    pub retransmission: bool,
}

/// Classifies the side's first payload, starts the record walker on TLS, and reports
/// protocol mismatches.
#[inline(always)]
fn first_payload<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, found: &mut Found) {
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
        found.push(EventKind::ProtocolMismatch, Extra::default());
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
                // A ClientHello answered by bytes that cannot start a TLS record: an HTTP
                // status line, an HTML page, a banner.
                client == PayloadClass::ClientHello as u8
                    && matches!(class, PayloadClass::HttpResponse | PayloadClass::Other)
            }
        }
    }
}

/// Creates the flow, unconfirmed, from a SYN-ACK or a first payload (see maps/flows.rs).
/// The state is built in a per-CPU scratch slot: it is too large for the BPF stack.
#[inline(never)]
fn create(
    key: &FlowKey,
    t: &Tcp,
    sender_is_a: bool,
    clock: &Clock,
) -> Option<&'static mut FlowState> {
    let syn = t.flags & tcp_flags::SYN != 0;
    if !syn && t.payload_len == 0 {
        return None;
    }
    let scratch = flows::scratch()?;
    if syn {
        init_synack(scratch, key, t, sender_is_a, clock.now);
    } else {
        init_midstream(scratch, key, sender_is_a, clock);
    }
    flows::add_unconfirmed(key, scratch)
}

/// A flow whose SYN-ACK we see: its sender is the server.
#[inline(always)]
fn init_synack(flow: &mut FlowState, key: &FlowKey, t: &Tcp, sender_is_a: bool, now: u64) {
    reset(flow, now);
    flow.flags = flow_flags::SYNACK_SEEN;
    // The SYN-ACK's sender is the server; the client's next packet confirms the flow.
    flow.opener = Side::Server as u8;
    if !sender_is_a {
        flow.flags |= flow_flags::CLIENT_IS_A;
    }
    let server_port = if sender_is_a { key.port_a } else { key.port_b };
    if config::is_tls_port(server_port) {
        flow.flags |= flow_flags::TLS_PORT;
    }
    flow.dir[Side::Server as usize].isn = t.seq;
    flow.dir[Side::Client as usize].isn = t.ack.wrapping_sub(1);
}

/// A flow picked up mid-stream: roles are guessed from the ports (a TLS port, else the
/// lower port, is the server's).
#[inline(always)]
fn init_midstream(flow: &mut FlowState, key: &FlowKey, sender_is_a: bool, clock: &Clock) {
    reset(flow, clock.now);
    flow.flags = flow_flags::MIDSTREAM;
    let a_tls = config::is_tls_port(key.port_a);
    let b_tls = config::is_tls_port(key.port_b);
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
    let opener = if sender_is_a == server_is_a {
        Side::Server
    } else {
        Side::Client
    };
    flow.opener = opener as u8;
    // Once we have run longer than the idle threshold, a flow we never saw had been quiet
    // at least that long (or was evicted): like a resumption after a gap, it is waiting
    // for an answer, and a retransmission into silence is evidence that the path dropped
    // it. Its gap is unknown, so reported as zero.
    if clock.now.saturating_sub(clock.started_ns) >= clock.idle_ns {
        flow.idle_resumer = opener as u8 + 1;
        flow.idle_gap_ns = 0;
    }
}

#[inline(always)]
fn reset(flow: &mut FlowState, now: u64) {
    // SAFETY: FlowState is plain data for which all-zero is the empty state.
    unsafe { core::ptr::write_bytes(flow as *mut FlowState, 0, 1) };
    flow.first_seen_ns = now;
    flow.last_seen_ns = now;
}
