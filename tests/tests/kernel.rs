//! The compiled kernel program on crafted frames, through BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use detector_common::{
    Counter, EventKind, PayloadClass, Side,
    tls::{
        alert::{CLOSE_NOTIFY, FATAL, UNEXPECTED_MESSAGE, WARNING},
        content_type::{APPLICATION_DATA, HANDSHAKE},
        handshake::SERVER_HELLO,
    },
};
use detector_user::output::diagnosis::Kind;
use tests::{
    frames::{self, Conversation, Frame, SYN, handshake, record, tls10},
    harness::{Harness, diagnose},
};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";

fn v6(client: &str, server: &str, port: u16) -> Conversation {
    Conversation::new(
        (client.parse().unwrap(), 40_000),
        (server.parse().unwrap(), port),
    )
}

/// An HTTP request to port 443 after a seen handshake: the event every L2/L3 variant
/// must reach.
fn http_to_443(mut conv: Conversation) -> (Vec<tests::frames::Frame>, Conversation) {
    let frames = vec![conv.syn(), conv.syn_ack(), conv.client(GET)];
    (frames, conv)
}

fn assert_http_mismatch(h: &mut Harness, conv: Conversation) {
    let (frames, conv) = http_to_443(conv);
    let events = h.run_all(&frames);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.kind, EventKind::ProtocolMismatch);
    assert_eq!(e.sender, Side::Client);
    assert_eq!(e.client, conv.client.into());
    assert_eq!(e.server, conv.server.into());
    assert_eq!(e.client_first, PayloadClass::HttpRequest);
    assert!(e.handshake_seen && e.tls_port);
    assert_eq!(e.snippet, GET[..16]);
}

#[test]
fn plain_ethernet_ipv4() {
    assert_http_mismatch(&mut Harness::new(), Conversation::v4(443));
}

#[test]
fn vlan_802_1q() {
    let mut conv = Conversation::v4(443);
    conv.template.vlans = vec![(0x8100, 100)];
    assert_http_mismatch(&mut Harness::new(), conv);
}

#[test]
fn qinq_802_1ad() {
    let mut conv = Conversation::v4(443);
    conv.template.vlans = vec![(0x88a8, 10), (0x8100, 20)];
    assert_http_mismatch(&mut Harness::new(), conv);
}

#[test]
fn ipv4_with_options() {
    let mut conv = Conversation::v4(443);
    // Record-route option (type 7, length 11, pointer 4), padded to 12 bytes.
    conv.template.ipv4_options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_http_mismatch(&mut Harness::new(), conv);
}

#[test]
fn ipv6_plain_and_with_extension_headers() {
    assert_http_mismatch(&mut Harness::new(), v6("fd00::1", "fd00::2", 443));
    let mut conv = v6("fd00::1", "fd00::2", 443);
    // Hop-by-hop (PadN) then destination options (PadN).
    conv.template.ipv6_ext = vec![(0, vec![1, 4, 0, 0, 0, 0]), (60, vec![1, 4, 0, 0, 0, 0])];
    let mut h = Harness::new();
    assert_http_mismatch(&mut h, conv);
}

#[test]
fn vlan_and_ipv6_extension_together() {
    let mut conv = v6("fd00::1", "fd00::2", 443);
    conv.template.vlans = vec![(0x8100, 7)];
    conv.template.ipv6_ext = vec![(43, vec![0, 0, 0, 0, 0, 0])];
    assert_http_mismatch(&mut Harness::new(), conv);
}

#[test]
fn truncation_at_every_header_byte_passes_without_event() {
    let variants: Vec<Conversation> = vec![Conversation::v4(443), {
        let mut c = v6("fd00::1", "fd00::2", 443);
        c.template.vlans = vec![(0x88a8, 1), (0x8100, 2)];
        c.template.ipv6_ext = vec![(0, vec![1, 4, 0, 0, 0, 0])];
        c
    }];
    for mut conv in variants {
        let mut h = Harness::new();
        h.run_all(&[conv.syn_ack()]);
        let frame = conv.client(GET);
        let bytes = frame.build();
        let [l2, l3, l4] = frame.header_ends();
        let truncated_before = h.counter(Counter::Truncated);
        // Below 14 bytes BPF_PROG_TEST_RUN refuses the frame before the program runs.
        for cut in 14..l4 {
            let events = h.run_raw(&bytes[..cut]);
            assert!(events.is_empty(), "cut at {cut}: {events:?}");
        }
        // Every cut inside IP or TCP headers is a malformed packet, counted.
        let counted = h.counter(Counter::Truncated) - truncated_before;
        assert!(
            counted >= (l4 - l3) as u64,
            "only {counted} truncated packets counted for cuts in {l2}..{l4}"
        );
        // The whole frame still produces its event: the flow was not derailed.
        assert_eq!(h.run_raw(&bytes).len(), 1);
    }
}

#[test]
fn server_plaintext_alert_is_reported_with_sender() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut frames = vec![conv.syn_ack()];
    frames.push(conv.client(&frames::client_hello("example.org")));
    frames.push(conv.server(&tls10(frames::alert(FATAL, UNEXPECTED_MESSAGE))));
    let events = h.run_all(&frames);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    // The alert, and the handshake it ended.
    assert_eq!(
        kinds,
        [EventKind::PlaintextAlert, EventKind::HandshakeAborted],
        "{events:?}"
    );
    let a = events[0].alert.expect("an alert");
    assert_eq!((a.level, a.description), (FATAL, UNEXPECTED_MESSAGE));
    assert_eq!(events[0].sender, Side::Server);
    assert_eq!(
        events[1].abort,
        Some(detector_user::kernel::event::Abort::Alert)
    );
    assert_eq!(events[1].history, "Cl");
    let d = diagnose(&events);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::FatalAlert);
    assert_eq!(d[0].detail_json()["sender"], "server");
    assert_eq!(d[0].detail_json()["description"], "unexpected_message");
}

#[test]
fn http_request_to_443_answered_by_alert_is_one_diagnosis() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut frames = vec![conv.syn_ack(), conv.client(GET)];
    frames.push(conv.server(&tls10(frames::alert(FATAL, UNEXPECTED_MESSAGE))));
    let events = h.run_all(&frames);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::ProtocolMismatch,
            EventKind::ProtocolMismatch,
            EventKind::PlaintextAlert
        ]
    );
    let d = diagnose(&events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::HttpToTlsPort);
    assert_eq!(d[0].client, conv.client.into());
    assert_eq!(d[0].detail_json()["server_answer"], "tls_alert");
}

#[test]
fn http_answered_in_tls_on_an_unlisted_port() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(4433);
    let frames = vec![
        conv.syn_ack(),
        conv.client(GET),
        conv.server(&frames::alert(FATAL, UNEXPECTED_MESSAGE)),
    ];
    let events = h.run_all(&frames);
    // The request alone is not suspicious on 4433; the TLS answer makes it so.
    assert_eq!(events[0].kind, EventKind::ProtocolMismatch, "{events:?}");
    assert_eq!(events[0].sender, Side::Server);
    let d = diagnose(&events);
    assert_eq!(d[0].kind, Kind::HttpToTlsPort);
    assert_eq!(d[0].detail_json()["tls_port"], false);
}

#[test]
fn client_hello_answered_by_http_400() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(80);
    let frames = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("example.org")),
        conv.server(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n\r\n"),
    ];
    let events = h.run_all(&frames);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].client_first, PayloadClass::ClientHello);
    assert_eq!(events[0].server_first, PayloadClass::HttpResponse);
    let d = diagnose(&events);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::TlsToPlaintextPort);
    assert_eq!(d[0].server, conv.server.into());
}

#[test]
fn clean_tls_and_clean_http_raise_nothing() {
    let mut h = Harness::new();
    let mut tls = Conversation::v4(443);
    let mut frames = vec![tls.syn_ack(), tls.client(&frames::client_hello("a"))];
    frames.push(tls.server(&record(HANDSHAKE, &handshake(SERVER_HELLO, &[]))));
    frames.push(tls.client(&record(APPLICATION_DATA, &[1, 2, 3])));
    let mut http = Conversation::new(
        ("10.1.0.1".parse().unwrap(), 40_001),
        ("10.2.0.1".parse().unwrap(), 80),
    );
    frames.extend([
        http.syn_ack(),
        http.client(GET),
        http.server(b"HTTP/1.1 200 OK\r\n\r\n"),
    ]);
    assert!(h.run_all(&frames).is_empty());
    assert_eq!(h.counter(Counter::FlowsCreated), 2);
    assert!(h.counter(Counter::TlsRecords) >= 3);
}

#[test]
fn bare_syn_creates_no_flow() {
    let mut h = Harness::new();
    for port in 0..50u16 {
        let conv = Conversation::new(
            ("10.1.0.1".parse().unwrap(), 30_000 + port),
            ("10.2.0.1".parse().unwrap(), 443),
        );
        h.run(&conv.syn());
    }
    assert_eq!(h.counter(Counter::FlowsCreated), 0);
    assert_eq!(h.counter(Counter::TcpPackets), 50);
}

#[test]
fn mid_stream_http_bytes_are_not_trusted() {
    // No SYN-ACK seen: the first payload might be any point of the stream.
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let events = h.run_all(&[
        conv.client(GET),
        conv.server(&frames::alert(WARNING, CLOSE_NOTIFY)),
    ]);
    assert!(
        events.iter().all(|e| e.kind != EventKind::ProtocolMismatch),
        "{events:?}"
    );
    assert_eq!(h.counter(Counter::FlowsCreated), 1);
}

#[test]
fn roles_come_from_the_handshake_not_the_direction() {
    // The client listens on the lower port: a guess by port would swap roles.
    let mut h = Harness::new();
    let mut conv = Conversation::new(
        ("10.9.0.1".parse().unwrap(), 22),
        ("10.1.0.1".parse().unwrap(), 8443),
    );
    let events = h.run_all(&[conv.syn_ack(), conv.client(GET)]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].client, conv.client.into());
    assert_eq!(events[0].server, conv.server.into());
}

#[test]
fn configured_tls_ports_replace_the_defaults() {
    let mut h = Harness::with(detector_user::kernel::Options {
        tls_ports: vec![10443],
        ..Default::default()
    });
    let mut on_default = Conversation::v4(443);
    let mut on_custom = Conversation::new(
        ("10.1.0.1".parse().unwrap(), 40_002),
        ("10.2.0.1".parse().unwrap(), 10443),
    );
    assert!(
        h.run_all(&[on_default.syn_ack(), on_default.client(GET)])
            .is_empty()
    );
    assert_eq!(
        h.run_all(&[on_custom.syn_ack(), on_custom.client(GET)])
            .len(),
        1
    );
}

#[test]
fn retransmitted_synack_keeps_state_and_reused_tuple_resets_it() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let synack = conv.syn_ack();
    let events = h.run_all(&[synack.clone(), synack, conv.client(GET)]);
    assert_eq!(
        events.len(),
        1,
        "retransmitted SYN-ACK must not lose the roles"
    );
    // The same 4-tuple reused by a new connection: its SYN, new ISNs, classified afresh.
    let mut again = Conversation::v4(443).renumbered(5_000_000, 1_050_000);
    assert_eq!(
        h.run_all(&[again.syn(), again.syn_ack(), again.client(GET)])
            .len(),
        1
    );
    assert_eq!(h.counter(Counter::SynAckWithoutSyn), 0);
}

#[test]
fn non_tcp_and_fragments_leave_early() {
    let mut h = Harness::new();
    let mut udp = Frame::tcp(
        "10.1.0.1".parse::<IpAddr>().unwrap(),
        1,
        "10.2.0.1".parse().unwrap(),
        443,
    );
    udp.protocol = 17;
    udp.payload = GET.to_vec();
    let mut frag = udp.clone();
    frag.protocol = 6;
    frag.flags = SYN;
    frag.ipv4_frag = 0x2000; // more fragments
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(h.run(&udp).is_empty());
    assert!(h.run(&frag).is_empty());
    assert!(h.run_raw(&arp).is_empty());
    assert_eq!(h.counter(Counter::Packets), 3);
    assert_eq!(h.counter(Counter::TcpPackets), 0);
    assert_eq!(h.counter(Counter::Fragments), 1);
    assert_eq!(h.counter(Counter::FlowsCreated), 0);
}

#[test]
fn program_size_as_loaded() {
    let h = Harness::new();
    let counts = h.kernel.instruction_counts().unwrap();
    for (name, n, verified) in counts {
        println!("{name}: {n} instructions as loaded (after verification), {verified} verified");
        assert!(n > 100, "{name}: {n} instructions is implausibly small");
        // The verifier's own limit is 1M processed; a program this size stays far below.
        assert!(n < 20_000, "{name}: {n} instructions");
    }
}

/// Replay hands each frame over behind its capture time as XDP metadata: with replay's
/// switch on, the program's clock is that time (the event is stamped with it), one test
/// run per frame. With the switch off, as live, the same metadata is someone else's and
/// changes nothing: the clock is the one set by the agent. With the switch on but no
/// metadata in front of a frame, the clock falls back to the agent's as well.
#[test]
fn replay_time_comes_from_metadata_only_when_replay_says_so() {
    use detector_user::kernel::test_run::push_frame;
    let meta_ts = 1_800_000_000_000_000_000;
    let stamped = |h: &mut Harness, with_meta: bool| {
        let set_ns = h.now_ns + 5_000_000;
        h.now_ns = set_ns;
        h.kernel.set_clock(set_ns).unwrap();
        let (frames, _) = http_to_443(Conversation::new(
            (
                "10.1.0.1".parse().unwrap(),
                40_000 + (set_ns / 1_000_000 % 1000) as u16,
            ),
            ("10.2.0.1".parse().unwrap(), 443),
        ));
        for f in &frames {
            if with_meta {
                let mut input = Vec::new();
                push_frame(&mut input, meta_ts, &f.build());
                assert_eq!(h.kernel.run_xdp_replayed(&input).unwrap(), 2, "XDP_PASS");
            } else {
                assert_eq!(h.kernel.run_xdp(&f.build()).unwrap(), 2, "XDP_PASS");
            }
        }
        let events = h.drain();
        assert_eq!(events.len(), 1, "{events:?}");
        (events[0].ts_ns, set_ns)
    };

    let mut live = Harness::new();
    let (ts, set) = stamped(&mut live, true);
    assert_eq!(ts, set, "live: the metadata's time must not be taken");

    let mut replay = Harness::new();
    replay.kernel.set_clock_in_meta(true).unwrap();
    let (ts, _) = stamped(&mut replay, true);
    assert_eq!(ts, meta_ts, "replay: the frame's own time");
    let (ts, set) = stamped(&mut replay, false);
    assert_eq!(ts, set, "replay without metadata: the agent's clock");
}
