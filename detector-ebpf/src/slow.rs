//! The slow path: a program of its own, reached by tail call from the fast path, with the
//! first-payload checks, the TLS record walker and every event. The verifier then checks
//! that logic once from a clean state instead of once for every path through the fast
//! path, which it cannot afford. Events found along the way are emitted together at the
//! end, from one place, for the same verifier reasons.

use detector_common::{
    Counter, Direction, EventKind, FlowKey, FlowState, PayloadClass, Side, abort, dir_flags,
    flow_flags, tls::content_type,
};

use crate::{
    emit::{Cx, Extra, Found},
    maps::{counters, events, flows, tail},
    owner,
    packet::Packet,
    parse::{Segment, tcp_flags},
    payload, tls,
};

/// What the fast path hands the slow path (per-CPU, across the tail call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SlowArgs {
    pub key: FlowKey,
    pub now: u64,
    pub gap_ns: u64,
    pub idle_ns: u64,
    pub seg: Segment,
    pub sender: u8,
    /// Which table holds the flow.
    pub unconfirmed: bool,
    pub retransmission: bool,
}

/// The slow-path program's body.
#[inline(always)]
pub fn run<P: Packet>(p: &P) {
    let Some(args) = tail::slow_args() else {
        return;
    };
    counters::inc(Counter::SlowPathPackets);
    let Some(flow) = flows::get(&args.key, args.unconfirmed) else {
        // Evicted by another CPU between the fast path's lookup and now.
        counters::inc(Counter::SlowPathFlowGone);
        return;
    };
    let sender = if args.sender == Side::Server as u8 {
        Side::Server
    } else {
        Side::Client
    };
    let cx = Cx {
        p,
        key: &args.key,
        seg: &args.seg,
        now: args.now,
        gap_ns: args.gap_ns,
        idle_ns: args.idle_ns,
        sender,
    };
    // In map memory rather than on the stack: the verifier tracks stack values exactly,
    // and every combination of "events found so far" would be a state of its own at the
    // walker's bpf_loop; map contents are just unknown numbers to it.
    let Some(found) = events::found() else {
        return;
    };
    // Another CPU may be reading this flow (see owner.rs): its walk ends first.
    if !owner::take(flow, args.now) {
        return;
    }
    read(&cx, flow, args.retransmission, found);
    // Given back before the events are copied out, not after: code behind the emit loop
    // has the verifier check the whole slow path 1.7 times over. What an event copies of
    // the flow (versions, flags, history letters) the other side's walk may still add
    // to; the walker's position, which concurrency would corrupt, it does not read.
    owner::give_back(flow);
    found.emit_all(&cx, flow);
}

/// What the packet's payload and flags say, the flow held.
#[inline(always)]
fn read<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, retransmission: bool, found: &mut Found) {
    let seg = cx.seg;
    let side = cx.sender as usize;
    idle_resumption(cx, flow, retransmission, found);
    if seg.payload_len > 0 {
        if flow.dir[side].first_class == PayloadClass::None as u8 {
            first_payload(cx, flow, found);
        }
        // A lost place is counted (kernel_tls_sync_lost), never logged: a sender can lose
        // it at will, once per segment, and must not be able to flood the agent's log.
        if tls::wants_walk(flow, side, seg.end()) {
            tls::walk(cx, flow, found);
        }
    }
    finish(cx, flow, found);
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
    let rst = cx.seg.flags & tcp_flags::RST != 0;
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
    let seg = cx.seg;
    let side = cx.sender as usize;
    let idle = cx.gap_ns >= cx.idle_ns;
    let rst = seg.flags & tcp_flags::RST != 0;
    let first_fin = seg.flags & tcp_flags::FIN != 0 && flow.dir[side].flags & dir_flags::FIN == 0;
    if !rst && !first_fin {
        return;
    }
    // What an end says (a handshake cut short, a close after idle) rests on having seen
    // everything before it; if the packet follows or acknowledges bytes we never saw (a
    // capture drop, a packet outside our view), it says nothing.
    let seen = seen_through(flow, side, seg);
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
fn seen_through(flow: &FlowState, side: usize, seg: &Segment) -> bool {
    if !stream_seen_to(&flow.dir[side], seg.end()) {
        return false;
    }
    if seg.flags & tcp_flags::ACK == 0 {
        return true;
    }
    let peer = &flow.dir[1 - side];
    let fin = (peer.flags & dir_flags::FIN != 0) as u32;
    stream_seen_to(peer, seg.ack.wrapping_sub(fin))
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

/// Classifies the side's first payload, starts the record walker on TLS, and reports
/// protocol mismatches.
#[inline(always)]
fn first_payload<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, found: &mut Found) {
    let side = cx.sender as usize;
    let isn = flow.dir[side].isn;
    let at_start = flow.flags & flow_flags::SYNACK_SEEN != 0 && cx.seg.seq == isn.wrapping_add(1);
    let class = if at_start {
        // Only first payloads are read here: on every other packet the walker reads what
        // it needs, and most packets need nothing.
        payload::classify(&payload::read_head(
            cx.p,
            cx.seg.payload_off as usize,
            cx.seg.payload_len as usize,
        ))
    } else {
        PayloadClass::NotAtStart
    };
    flow.dir[side].first_class = class as u8;
    if class.is_tls() {
        tls::sync_at_start(flow, side, cx.seg.seq);
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
