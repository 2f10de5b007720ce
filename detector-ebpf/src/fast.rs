//! The fast path, run for every TCP packet: the flow's tables, roles and timestamps. It
//! raises nothing itself: a packet that may (a payload the walker or the first-payload
//! checks want, a RST or FIN, a quiet gap behind it) goes on to the slow path.

use detector_common::{Counter, FlowKey, FlowState, PayloadClass, Side, flow_flags};

use crate::{
    maps::{
        config::{self, Clock},
        counters, flows, tail,
    },
    packet::Packet,
    parse::{Tcp, tcp_flags},
    slow::SlowArgs,
    tls,
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

    // Everything that can raise an event runs in the slow path; this one only keeps the
    // books. Most packets stop here.
    let rst_or_fin = t.flags & (tcp_flags::RST | tcp_flags::FIN) != 0;
    let payload = t.payload_len > 0;
    let interesting = rst_or_fin
        || gap_ns >= clock.idle_ns
        || flow.idle_resumer != 0
        || (payload
            && (flow.dir[side].first_class == PayloadClass::None as u8
                || tls::wants_walk(flow, side, seg_end)));
    if interesting {
        let args = SlowArgs {
            key,
            now,
            gap_ns,
            idle_ns: clock.idle_ns,
            seg: t.segment(),
            sender: sender as u8,
            unconfirmed,
            retransmission,
        };
        tail::to_slow_path(p, &args);
    }
}

/// Creates the flow, unconfirmed, from a SYN-ACK or a first payload (see flows.rs). The
/// state is built in a per-CPU scratch slot: it is too large for the BPF stack.
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
