//! Forged packets through the compiled kernel program: a RST must fall in the receiver's
//! window to end or time a flow, a SYN-ACK with a new ISN restarts a flow only after a new
//! SYN, and IPv4-mapped IPv6 flows never share state with IPv4 ones. Whatever is ignored
//! is counted.

use std::{net::IpAddr, time::Duration};

use detector_common::{
    Counter, EventKind, Side, dir_flags, flow_flags,
    tls::{
        alert::{FATAL, HANDSHAKE_FAILURE},
        content_type::{APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE},
        handshake::CERTIFICATE,
    },
};
use detector_user::{kernel::event::Abort, output::diagnosis::Kind};
use tests::{
    frames::{self, ACK, Conversation, Hello, RST, SYN, handshake, record},
    harness::{Harness, diagnose, diagnose_idle},
};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
/// Far outside any window the tests' endpoints advertise (64 KiB unscaled).
const FAR: u32 = 0x4000_0000;

/// A session whose ClientHello went out and that waits for the ServerHello: a RST now is
/// a handshake reset.
fn mid_handshake(h: &mut Harness) -> Conversation {
    let mut conv = Conversation::v4(443);
    let events = h.run_all(&[
        conv.syn_ack(),
        conv.client(&frames::client_hello("forgery.example")),
    ]);
    assert!(events.is_empty(), "{events:?}");
    conv
}

fn rst_at(conv: &mut Conversation, from_server: bool, seq_offset: u32) -> frames::Frame {
    let mut f = if from_server {
        conv.server_flags(ACK | RST)
    } else {
        conv.client_flags(ACK | RST)
    };
    f.seq = f.seq.wrapping_add(seq_offset);
    f
}

#[test]
fn rst_outside_the_window_is_ignored_and_counted() {
    let mut h = Harness::new();
    let mut conv = mid_handshake(&mut h);
    let before = h.flow(conv.client_addr(), conv.server_addr());
    for offset in [FAR, 0u32.wrapping_sub(1), 65_536 + 1] {
        let events = h.run(&rst_at(&mut conv, true, offset));
        assert!(events.is_empty(), "offset {offset}: {events:?}");
    }
    // Behind the stream, with no ACK: nothing in it speaks of unseen bytes, so taken at
    // its word it would end the handshake.
    let mut behind = conv.server_flags(RST);
    behind.seq = behind.seq.wrapping_sub(100_000);
    assert!(h.run(&behind).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 4);
    assert_eq!(h.counter(Counter::UnseenBytes), 0);
    let after = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(
        after.dir[Side::Server as usize].flags,
        before.dir[Side::Server as usize].flags,
        "an ignored RST leaves no mark on the flow"
    );
    assert_eq!(after.last_seen_ns, before.last_seen_ns);

    // The real server's RST, at its next sequence number: a handshake reset.
    let events = h.run(&rst_at(&mut conv, true, 0));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::HandshakeAborted);
    assert_eq!(events[0].abort, Some(Abort::Rst));
    let d = diagnose(&events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::HandshakeReset);
    assert_eq!(h.counter(Counter::RstOutsideWindow), 4);
}

/// RFC 5961 has an endpoint challenge an in-window RST that is not exact; a passive
/// observer cannot, and believes it. Its sequence number then speaks of bytes the
/// detector never saw, so what it would end is not judged (an abstention, counted).
#[test]
fn rst_inside_the_window_but_not_exact_is_believed_not_judged() {
    let mut h = Harness::new();
    let mut conv = mid_handshake(&mut h);
    // The client advertised 65 535 bytes unscaled: 60 000 past its ACK is inside.
    let events = h.run(&rst_at(&mut conv, true, 60_000));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::RstOutsideWindow), 0);
    assert_eq!(h.counter(Counter::UnseenBytes), 1);
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_ne!(flow.dir[Side::Server as usize].flags & dir_flags::RST, 0);
}

/// The window is the receiver's last advertised one, scaled by the shift its SYN-ACK
/// announced; a window of zero takes only the exact sequence number.
#[test]
fn rst_window_follows_the_scaled_advertised_window() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut synack = conv.syn_ack();
    // NOP, window scale 7 (the server's receive windows are in units of 128 bytes).
    synack.tcp_options = vec![1, 3, 3, 7];
    synack.window = 64_240;
    h.run(&synack);
    h.run(&conv.client(&frames::client_hello("scaled.example")));
    let mut ack = conv.server_flags(ACK);
    ack.window = 1_000; // 128 000 bytes
    assert!(h.run(&ack).is_empty());

    // The client's RSTs land in the server's window, 1000 << 7 bytes: 150 000 past its
    // ACK is outside (inside, had the largest shift been assumed for it).
    assert!(h.run(&rst_at(&mut conv, false, 150_000)).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 1);
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(flow.wscale[Side::Server as usize], 7);
    assert_eq!(flow.dir[Side::Client as usize].flags & dir_flags::RST, 0);
    // 100 000 past is inside: believed (and, past bytes never seen, not judged).
    assert!(h.run(&rst_at(&mut conv, false, 100_000)).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 1);
    assert_eq!(h.counter(Counter::UnseenBytes), 1);
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_ne!(flow.dir[Side::Client as usize].flags & dir_flags::RST, 0);

    // A closed window: only the exact next sequence number of the sender is believed.
    let mut h = Harness::new();
    let mut conv = mid_handshake(&mut h);
    let mut zero = conv.client_flags(ACK);
    zero.window = 0;
    h.run(&zero);
    assert!(h.run(&rst_at(&mut conv, true, 1)).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 1);
    assert_eq!(h.run(&rst_at(&mut conv, true, 0)).len(), 1);
}

/// Field case 4's RST after idle and field case 5's RST answer, forged: neither a
/// diagnosis nor a mark on the flow; the real ones still diagnose.
#[test]
fn forged_rst_after_idle_is_no_diagnosis() {
    let idle = Duration::from_secs(30);
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut flight = record(HANDSHAKE, &Hello::server().server_hello());
    flight.extend(record(HANDSHAKE, &handshake(CERTIFICATE, &[0x30; 300])));
    let mut cfin = record(CHANGE_CIPHER_SPEC, &[1]);
    cfin.extend(record(HANDSHAKE, &[0xa5; 40]));
    let established = h.run_all(&[
        conv.syn_ack(),
        conv.client(&frames::client_hello("idle.example")),
        conv.server(&flight),
        conv.client(&cfin),
        conv.server(&cfin),
        conv.client(&record(APPLICATION_DATA, &[0xa5; 200])),
        conv.server(&record(APPLICATION_DATA, &[0xa5; 900])),
    ]);
    assert!(established.is_empty(), "{established:?}");
    h.advance(Duration::from_secs(61));
    assert!(h.run(&rst_at(&mut conv, true, FAR)).is_empty());
    assert!(h.run(&rst_at(&mut conv, false, FAR)).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 2);

    // The client resumes; a forged answer is ignored, the real one is the drop.
    let mut events = h.run(&conv.client(&record(APPLICATION_DATA, &[0xa5; 80])));
    events.extend(h.run(&rst_at(&mut conv, true, FAR)));
    assert!(events.is_empty(), "{events:?}");
    events.extend(h.run(&rst_at(&mut conv, true, 0)));
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.sender)).collect();
    assert_eq!(kinds, [(EventKind::IdleRstAnswer, Side::Server)]);
    let d = diagnose_idle(&events, idle);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::IdleTimeoutDrop);
    assert_eq!(h.counter(Counter::RstOutsideWindow), 3);
}

/// One-sided traffic answered by a forged RST: the unconfirmed flow is kept (a forger
/// cannot clear it), and only a RST in the window counts as the answer.
#[test]
fn forged_rst_on_an_unconfirmed_flow_is_ignored() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    assert!(h.run(&conv.client(&[0x41])).is_empty());
    let mut forged = conv.server_flags(RST);
    forged.seq = forged.seq.wrapping_add(FAR);
    assert!(h.run(&forged).is_empty());
    assert_eq!(h.counter(Counter::RstOutsideWindow), 1);
    assert_eq!(h.counter(Counter::UnconfirmedReset), 0);
    assert!(h.run(&conv.server_flags(RST)).is_empty());
    assert_eq!(h.counter(Counter::UnconfirmedReset), 1);
}

#[test]
fn forged_synack_with_a_new_isn_leaves_the_flow_alone() {
    let mut h = Harness::new();
    let mut conv = mid_handshake(&mut h);
    let before = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(
        before.flags & flow_flags::CLIENT_IS_A,
        flow_flags::CLIENT_IS_A
    );

    // From the client's address: taken as it is, it would make the client the server.
    let mut swap = conv.client_flags(SYN | ACK);
    swap.seq = 7_777_777;
    // From the server's address, with a new ISN and an ACK for no SYN seen.
    let mut restart = conv.syn_ack();
    restart.seq = restart.seq.wrapping_add(1_000_000);
    restart.ack = 123_456;
    for f in [&swap, &restart] {
        assert!(h.run(f).is_empty());
    }
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 2);
    let after = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(after.flags, before.flags, "roles unchanged");
    assert_eq!(after.first_seen_ns, before.first_seen_ns, "not restarted");
    for side in [Side::Client as usize, Side::Server as usize] {
        assert_eq!(after.dir[side].isn, before.dir[side].isn);
        assert_eq!(after.dir[side].flags, before.dir[side].flags);
    }

    // The session goes on as it was: the server's fatal alert is the server's.
    let events = h.run(&conv.server(&frames::tls10(frames::alert(FATAL, HANDSHAKE_FAILURE))));
    let d = diagnose(&events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::FatalAlert);
    assert_eq!(d[0].client, conv.client_addr());
    assert_eq!(d[0].detail_json()["sender"], "server");
}

#[test]
fn new_syn_then_synack_restarts_the_flow() {
    let mut h = Harness::new();
    let conv = mid_handshake(&mut h);
    let old = h.flow(conv.client_addr(), conv.server_addr());
    let mut again = Conversation::v4(443).renumbered(3_000_000, 9_000_000);

    // A retransmission of the flow's own SYN is no new connection.
    let mut own_syn = conv.syn();
    own_syn.seq = old.dir[Side::Client as usize].isn;
    h.run(&own_syn);
    let mut early = again.syn_ack();
    early.ack = own_syn.seq.wrapping_add(1);
    assert!(h.run(&early).is_empty());
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 1);

    // A new SYN, then a SYN-ACK that acknowledges another sequence number: still no.
    h.run(&again.syn());
    let mut wrong_ack = again.syn_ack();
    wrong_ack.ack = wrong_ack.ack.wrapping_add(5);
    h.run(&wrong_ack);
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 2);
    assert_eq!(
        h.flow(conv.client_addr(), conv.server_addr()).dir[Side::Server as usize].isn,
        old.dir[Side::Server as usize].isn
    );

    // The SYN-ACK of that SYN: the 4-tuple's new connection, classified afresh.
    let events = h.run_all(&[again.syn_ack(), again.client(GET)]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::ProtocolMismatch);
    assert_eq!(events[0].client, again.client_addr());
    let new = h.flow(again.client_addr(), again.server_addr());
    assert_eq!(new.dir[Side::Server as usize].isn, 9_000_000);
    assert_eq!(new.dir[Side::Client as usize].isn, 3_000_000);
    assert!(new.first_seen_ns > old.first_seen_ns);
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 2);
}

/// `::ffff:10.1.0.1` over IPv6 and `10.1.0.1` over IPv4 hold the same address words: their
/// flows must still be two, each with its own state, events and addresses.
#[test]
fn ipv4_mapped_ipv6_flows_are_apart_from_ipv4_flows() {
    let mut h = Harness::new();
    let mut v4 = mid_handshake(&mut h);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut mapped = Conversation::new(
        (ip("::ffff:10.1.0.1"), 40_000),
        (ip("::ffff:10.2.0.1"), 443),
    );
    let v4_before = h.flow(v4.client_addr(), v4.server_addr());

    // The mapped flow's SYN-ACK is no forged SYN-ACK on the IPv4 flow: a flow of its own.
    let events = h.run_all(&[mapped.syn_ack(), mapped.client(GET)]);
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 0);
    assert_eq!(h.counter(Counter::FlowsCreated), 2);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].client, mapped.client_addr());
    assert!(events[0].client.is_ipv6(), "{}", events[0].client);
    assert!(events[0].server.is_ipv6(), "{}", events[0].server);

    // A RST on the mapped flow ends that one only.
    let events = h.run(&mapped.server_flags(ACK | RST));
    assert!(events.iter().all(|e| e.client.is_ipv6()), "{events:?}");
    let v4_after = h.flow(v4.client_addr(), v4.server_addr());
    assert_eq!(
        v4_after.dir[Side::Server as usize].flags,
        v4_before.dir[Side::Server as usize].flags
    );
    assert_eq!(
        h.flow(mapped.client_addr(), mapped.server_addr()).dir[Side::Server as usize].flags
            & dir_flags::RST,
        dir_flags::RST
    );
    assert_eq!(
        v4_after.dir[Side::Server as usize].flags & dir_flags::RST,
        0
    );

    // The IPv4 flow still diagnoses as itself, with IPv4 addresses.
    let events = h.run(&v4.server_flags(ACK | RST));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].client, v4.client_addr());
    assert!(events[0].client.is_ipv4());
}
