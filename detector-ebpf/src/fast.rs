//! The fast path, run for every TCP packet: the flow's tables, roles and timestamps. It
//! raises nothing itself: a packet that may (a payload the walker or the first-payload
//! checks want, a RST or FIN, a quiet gap behind it) goes on to the slow path.

use detector_common::{
    Counter, Direction, FlowKey, FlowState, PayloadClass, Side, dir_flags, flow_flags, new_syn,
};

use crate::{
    maps::{
        config::{self, Clock},
        counters, flows, tail,
    },
    owner,
    packet::Packet,
    parse::{self, Tcp, tcp_flags},
    slow::SlowArgs,
    tls, verifier,
};

/// Runs the flow logic for one TCP packet.
#[inline(always)]
pub fn track<P: Packet>(p: &P, t: &Tcp, clock: &Clock) {
    let now = clock.now;
    let (key, sender_is_a) = FlowKey::normalised(t.family, &t.src, t.sport, &t.dst, t.dport);

    let syn = t.flags & tcp_flags::SYN != 0;
    if syn && t.flags & tcp_flags::ACK == 0 {
        // A bare SYN never creates state: a SYN flood must not evict real flows.
        note_new_syn(&key, t, sender_is_a);
        return;
    }

    let (mut flow, mut unconfirmed) = match flows::lookup(&key) {
        Some(found) => found,
        None => match create(p, &key, t, sender_is_a, clock) {
            Some(s) => (s, true),
            None => return,
        },
    };

    let client_is_a = flow.flags & flow_flags::CLIENT_IS_A != 0;
    let sender = verifier::side(if sender_is_a == client_is_a {
        Side::Client
    } else {
        Side::Server
    });
    let rst = t.flags & tcp_flags::RST != 0;
    if rst && !rst_believed(flow, sender, t.seq) {
        // Before anything else: a forged RST must neither confirm, end nor time a flow.
        counters::inc(Counter::RstOutsideWindow);
        return;
    }
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
        // A SYN-ACK on a known flow: a retransmission (or the one that just created the
        // flow), or the 4-tuple reused by a new connection, which starts over. Only a new
        // SYN, which the SYN-ACK acknowledges, shows the reuse: without one, a SYN-ACK
        // with a new ISN is a forgery or a stray and must not reset the flow or swap its
        // roles.
        let server = &flow.dir[Side::Server as usize];
        let retransmit = flow.flags & flow_flags::SYNACK_SEEN != 0 && server.isn == t.seq;
        if retransmit {
            return;
        }
        let syn_from_peer = if sender_is_a {
            new_syn::FROM_B
        } else {
            new_syn::FROM_A
        };
        if flow.new_syn != syn_from_peer || t.ack != flow.new_syn_seq.wrapping_add(1) {
            counters::inc(Counter::SynAckWithoutSyn);
            return;
        }
        init_synack(p, flow, &key, t, sender_is_a, now);
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
    if t.flags & tcp_flags::ACK != 0 && !rst {
        note_ack(&mut flow.dir[side], t);
    }

    // Everything that can raise an event runs in the slow path; this one only keeps the
    // books. Most packets stop here.
    let rst_or_fin = rst || t.flags & tcp_flags::FIN != 0;
    let payload = t.payload_len > 0;
    // Nothing but its payload can make this packet raise anything.
    let plain = !rst_or_fin && gap_ns < clock.idle_ns && flow.idle_resumer == 0;
    if plain
        && (!payload
            || (flow.dir[side].first_class != PayloadClass::None as u8
                && !tls::wants_walk(flow, side, seg_end)))
    {
        return;
    }
    let seg = t.segment();
    // Bulk TLS: every packet holds a record header (a GSO super-packet several), which
    // the walker needs. Plain application-data headers are stepped over here, without
    // the tail call; the slow path gets everything else.
    if plain && flow.dir[side].first_class != PayloadClass::None as u8 && owner::try_take(flow, now)
    {
        let stepped = tls::step_bulk(p, flow, side, &seg, gap_ns);
        owner::give_back(flow);
        if stepped {
            return;
        }
    }
    let args = SlowArgs {
        key,
        now,
        gap_ns,
        idle_ns: clock.idle_ns,
        seg,
        sender: sender as u8,
        unconfirmed,
        retransmission,
    };
    tail::to_slow_path(p, &args);
}

/// Creates the flow, unconfirmed, from a SYN-ACK or a first payload (see flows.rs). The
/// state is built in a per-CPU scratch slot: it is too large for the BPF stack.
#[inline(never)]
fn create<P: Packet>(
    p: &P,
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
        init_synack(p, scratch, key, t, sender_is_a, clock.now);
    } else {
        init_midstream(scratch, key, sender_is_a, clock);
    }
    flows::add_unconfirmed(key, scratch)
}

/// A flow whose SYN-ACK we see: its sender is the server.
#[inline(always)]
fn init_synack<P: Packet>(
    p: &P,
    flow: &mut FlowState,
    key: &FlowKey,
    t: &Tcp,
    sender_is_a: bool,
    now: u64,
) {
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
    // The server's shift is the SYN-ACK's option (sent only if the SYN offered scaling
    // too); the client's, which only its SYN carries, stays unknown: 0 (see
    // `FlowState::wscale`). Without the option neither side scales.
    let shift = parse::window_scale(p, t).unwrap_or(0);
    flow.wscale[Side::Server as usize] = shift;
    // The SYN-ACK's own window is never scaled: kept in scaled units (rounded down), as
    // every later window is.
    let server = &mut flow.dir[Side::Server as usize];
    server.acked = t.ack;
    server.wnd = t.window >> (shift & 15);
    server.flags |= dir_flags::ACKED;
}

/// A bare SYN on a live flow's 4-tuple: a retransmission of the flow's own SYN, or a new
/// connection on the same 4-tuple, after which (only) a SYN-ACK may start the flow over.
#[inline(always)]
fn note_new_syn(key: &FlowKey, t: &Tcp, sender_is_a: bool) {
    let Some((flow, _)) = flows::lookup(key) else {
        return;
    };
    let client_is_a = flow.flags & flow_flags::CLIENT_IS_A != 0;
    let own_syn = flow.flags & flow_flags::SYNACK_SEEN != 0
        && sender_is_a == client_is_a
        && t.seq == flow.dir[Side::Client as usize].isn;
    if own_syn {
        return;
    }
    flow.new_syn = if sender_is_a {
        new_syn::FROM_A
    } else {
        new_syn::FROM_B
    };
    flow.new_syn_seq = t.seq;
}

/// Keeps what the sender's ACK says of its receive side: how far it has the peer's
/// stream, and its window.
#[inline(always)]
fn note_ack(d: &mut Direction, t: &Tcp) {
    // Acknowledgments only move forward; an older one arriving late says nothing new.
    if d.flags & dir_flags::ACKED == 0 || tls::before(d.acked, t.ack) {
        d.acked = t.ack;
    }
    d.wnd = t.window;
    d.flags |= dir_flags::ACKED;
}

/// Whether a RST from `sender` could be the real sender's (RFC 5961 §3): its sequence
/// number is the sender's next as the flow has seen it (the exact match a genuine RST
/// carries), or lies in the receiver's window, [RCV.NXT, RCV.NXT + RCV.WND), with RCV.NXT
/// the receiver's latest acknowledgment. RFC 5961 has an endpoint answer an in-window
/// but inexact RST with a challenge ACK and wait for an exact one; a passive observer
/// cannot challenge, so such a RST is believed: a blind forger still has to hit a window
/// among 2^32 sequence numbers. With no acknowledgment from the receiver seen, only the
/// exact match counts.
#[inline(always)]
fn rst_believed(flow: &FlowState, sender: Side, seq: u32) -> bool {
    let (me, peer, peer_shift) = match sender {
        Side::Client => (
            &flow.dir[Side::Client as usize],
            &flow.dir[Side::Server as usize],
            flow.wscale[Side::Server as usize],
        ),
        Side::Server => (
            &flow.dir[Side::Server as usize],
            &flow.dir[Side::Client as usize],
            flow.wscale[Side::Client as usize],
        ),
    };
    // The sender's next sequence number: after its payload if it sent any, else after
    // its SYN if the handshake was seen; a FIN takes one more.
    let fin = (me.flags & dir_flags::FIN != 0) as u32;
    let next = if me.first_class != PayloadClass::None as u8 {
        Some(me.max_end)
    } else if flow.flags & flow_flags::SYNACK_SEEN != 0 {
        Some(me.isn.wrapping_add(1))
    } else {
        None
    };
    if next.is_some_and(|n| n.wrapping_add(fin) == seq) {
        return true;
    }
    if peer.flags & dir_flags::ACKED == 0 {
        return false;
    }
    // A zero window still takes the exact RCV.NXT (RFC 5961 §3).
    let wnd = ((peer.wnd as u32) << (peer_shift & 15)).max(1);
    seq.wrapping_sub(peer.acked) < wnd
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
