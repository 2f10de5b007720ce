//! The kernel's TLS record walker on crafted TLS streams, through BPF_PROG_TEST_RUN:
//! handshake history and facts, records across segments and several per segment, split
//! ClientHellos, lengths that lie, and the events the walk raises. Keeping its place in a
//! reordered or partly unseen stream is `kernel_tls_sync.rs`.

use detector_common::{
    Counter, EventKind, Side, dir_flags,
    tls::{
        alert::{FATAL, HANDSHAKE_FAILURE, UNRECOGNIZED_NAME},
        content_type::{APPLICATION_DATA as APPDATA, HANDSHAKE},
        extension::{PRE_SHARED_KEY, PSK_KEY_EXCHANGE_MODES, SESSION_TICKET, SUPPORTED_VERSIONS},
        handshake as hs,
        version::{TLS1_2, TLS1_3, offered_bit},
    },
    tls_flags,
};
use detector_user::{
    kernel::event::{Abort, ResumptionMethod},
    output::diagnosis::Kind,
};
use tests::{
    frames::{
        self, ACK, Conversation, FIN, Hello, RST, handshake, record, record_header, versions_ext,
    },
    harness::{Harness, diagnose},
    sessions::{ccs, sealed, tls12_session},
};

#[test]
fn full_tls12_handshake_history_and_facts_without_events() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let client = Hello::client("shop.example").with(SESSION_TICKET, vec![]);
    let frames = tls12_session(&mut conv, &client, &Hello::server());
    let events = h.run_all(&frames);
    assert!(
        events.is_empty(),
        "a clean session raises nothing: {events:?}"
    );
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    let history = String::from_utf8_lossy(&flow.tls.history[..12]).into_owned();
    assert_eq!(history, "CsxknGIFifDd");
    assert_eq!(flow.tls.history_len, 12);
    assert_eq!(flow.tls.negotiated_version, TLS1_2);
    assert_ne!(flow.tls.flags & tls_flags::HANDSHAKE_DONE, 0);
    assert_ne!(flow.tls.flags & tls_flags::SNI, 0);
    assert_eq!(
        flow.tls.session_ticket_len, 0,
        "an empty ticket is no resumption"
    );
    assert_eq!(flow.tls.flags & tls_flags::ABBREVIATED, 0);
    for side in [Side::Client, Side::Server] {
        let d = flow.dir[side as usize];
        assert_ne!(d.flags & dir_flags::SYNCED, 0, "{side:?} still walking");
    }
    // ClientHello, the server's flight (one record), 3 + 2 finishing records, 2 of data.
    assert_eq!(h.counter(Counter::TlsRecords), 9);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
}

#[test]
fn record_header_cut_by_a_segment_end_and_several_records_per_segment() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut frames = vec![conv.syn_ack()];
    frames.push(conv.client(&frames::client_hello("a.example")));
    // ServerHello record, then a fatal alert whose header is cut after 2 bytes.
    let mut data = record(HANDSHAKE, &Hello::server().server_hello());
    let cut = data.len() + 2;
    data.extend(frames::alert(FATAL, HANDSHAKE_FAILURE));
    frames.extend(conv.server_segments(&data, &[cut]));
    let events = h.run_all(&frames);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::PlaintextAlert, EventKind::HandshakeAborted]
    );
    let a = events[0].alert.unwrap();
    assert_eq!((a.level, a.description), (FATAL, HANDSHAKE_FAILURE));
    assert_eq!(events[1].history, "Csl");
}

#[test]
fn client_hello_split_over_segments_still_yields_its_facts() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let hello = Hello::client("resume.example")
        .with(SUPPORTED_VERSIONS, versions_ext(&[TLS1_3, TLS1_2]))
        .with(SESSION_TICKET, vec![0x77; 192])
        .with(PSK_KEY_EXCHANGE_MODES, vec![1, 1])
        .with(PRE_SHARED_KEY, vec![0; 40]);
    let rec = record(HANDSHAKE, &hello.client_hello());
    // Cut inside the supported_versions extension header.
    let cut = rec
        .windows(2)
        .position(|w| w == SUPPORTED_VERSIONS.to_be_bytes())
        .unwrap()
        + 1;
    let mut f = vec![conv.syn_ack()];
    f.extend(conv.client_segments(&rec, &[cut]));
    f.push(conv.server(&frames::alert(FATAL, HANDSHAKE_FAILURE)));
    let events = h.run_all(&f);
    let aborted = events
        .iter()
        .find(|e| e.kind == EventKind::HandshakeAborted)
        .expect("abort event");
    assert_eq!(aborted.tls.session_ticket_len, 192);
    assert_ne!(aborted.tls.flags & tls_flags::PSK_OFFERED, 0);
    assert_eq!(
        aborted.tls.offered_versions,
        offered_bit(TLS1_3) | offered_bit(TLS1_2)
    );
    assert_eq!(
        aborted.tls.resumption_offered(),
        Some(ResumptionMethod::Tls13Psk)
    );
    let d = diagnose(&events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ResumptionRejected);
    assert_eq!(d[0].detail_json()["method"], "tls13_psk");
    assert_eq!(d[0].detail_json()["description"], "handshake_failure");
}

#[test]
fn lengths_that_lie_raise_nothing_and_are_counted() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = vec![conv.syn_ack(), conv.client(&frames::client_hello("a"))];
    // A ServerHello, then a handshake record claiming 0x7fff bytes: not TLS.
    let mut data = record(HANDSHAKE, &Hello::server().server_hello());
    data.extend(record_header(HANDSHAKE, 0x7fff));
    data.extend([hs::SERVER_HELLO, 0, 0, 4]);
    data.extend(frames::alert(FATAL, HANDSHAKE_FAILURE));
    f.push(conv.server(&data));
    // The walker has stopped reading this side: an alert-like record later in a longer
    // segment is not evidence enough to start again.
    let mut later = frames::alert(FATAL, HANDSHAKE_FAILURE);
    later.extend([0x99; 30]);
    f.push(conv.server(&later));
    let events = h.run_all(&f);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
    assert_eq!(
        h.counter(Counter::SyncLostImplausible),
        1,
        "why it was lost"
    );
    assert_eq!(h.counter(Counter::TlsResynced), 0);

    // A ServerHello whose extension length runs past its message: parsing stops there.
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut sh = Hello::server().server_hello();
    let n = sh.len();
    sh[n - 2..].copy_from_slice(&[0xff, 0xff]); // (no extensions: cipher, compression)
    let f = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("a")),
        conv.server(&record(HANDSHAKE, &sh)),
    ];
    assert!(h.run_all(&f).is_empty());
}

#[test]
fn plaintext_hello_request_is_reported() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("a")),
        conv.server(&record(HANDSHAKE, &handshake(hs::HELLO_REQUEST, &[]))),
    ];
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::HelloRequest);
    assert_eq!(events[0].sender, Side::Server);
    let d = diagnose(&events);
    assert_eq!(d[0].kind, Kind::ServerHelloRequest);
    assert_eq!(d[0].detail_json()["encrypted"], false);
}

#[test]
fn encrypted_handshake_after_app_data_is_renegotiation() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(HANDSHAKE, 32)));
    f.push(conv.client(&sealed(HANDSHAKE, 250)));
    f.push(conv.server(&sealed(HANDSHAKE, 3000)));
    let events = h.run_all(&f);
    let who: Vec<(EventKind, Side)> = events.iter().map(|e| (e.kind, e.sender)).collect();
    assert_eq!(
        who,
        [
            (EventKind::Renegotiation, Side::Server),
            (EventKind::Renegotiation, Side::Client)
        ],
        "reported once per side"
    );
    assert_eq!(events[0].history, "CsxknGIFifDdh");
    let d = diagnose(&events);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ServerHelloRequest);
    assert_eq!(d[0].detail_json()["client_renegotiated"], true);
}

#[test]
fn client_renegotiation_alone() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.client(&sealed(HANDSHAKE, 250)));
    let d = diagnose(&h.run_all(&f));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ClientRenegotiation);
}

/// A TLS 1.3 session whose server ends with a close_notify-sized record and then `close`
/// (FIN, or RST when the client's own close_notify crossed it).
fn tls13_session_closed_by_server(close: u8) {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let client = Hello::client("a").with(SUPPORTED_VERSIONS, versions_ext(&[TLS1_3]));
    let server = Hello::server().with(SUPPORTED_VERSIONS, TLS1_3.to_be_bytes().to_vec());
    let mut flight = record(HANDSHAKE, &server.server_hello());
    flight.extend(ccs());
    flight.extend(sealed(APPDATA, 2500)); // EncryptedExtensions..Finished
    let mut f = vec![
        conv.syn_ack(),
        conv.client(&record(HANDSHAKE, &client.client_hello())),
    ];
    f.extend(conv.server_segments(&flight, &[1400]));
    let mut cfin = ccs();
    cfin.extend(sealed(APPDATA, 53));
    f.push(conv.client(&cfin));
    f.push(conv.server(&sealed(APPDATA, 500)));
    // A handshake-typed record is impossible after TLS 1.3's hello: no renegotiation.
    f.push(conv.server(&sealed(APPDATA, 19)));
    f.push(conv.server_flags(ACK | close));
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Tls13CloseHeuristic);
    assert_eq!(events[0].sender, Side::Server);
    assert_eq!(events[0].tls.negotiated_version, Some(TLS1_3));
    assert!(events[0].tls.handshake_done());
}

#[test]
fn tls13_session_close_heuristic_and_no_renegotiation() {
    tls13_session_closed_by_server(FIN);
}

#[test]
fn tls13_close_heuristic_also_on_rst() {
    tls13_session_closed_by_server(RST);
}

#[test]
fn reset_after_client_hello_is_a_handshake_reset() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("a")),
        conv.server_flags(RST | ACK),
        conv.server_flags(RST | ACK),
    ];
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "reported once: {events:?}");
    assert_eq!(events[0].abort, Some(Abort::Rst));
    let d = diagnose(&events);
    assert_eq!(d[0].kind, Kind::HandshakeReset);
    assert_eq!(d[0].detail_json()["server_hello_seen"], false);
}

#[test]
fn resumption_accepted_by_session_id_echo_and_abbreviated_handshake() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let id: Vec<u8> = (0..32).collect();
    let client = Hello {
        session_id: id.clone(),
        ..Hello::client("a")
    };
    let server = Hello {
        session_id: id,
        ..Hello::server()
    };
    let mut flight = record(HANDSHAKE, &server.server_hello());
    flight.extend(ccs());
    flight.extend(sealed(HANDSHAKE, 40));
    let mut cfin = ccs();
    cfin.extend(sealed(HANDSHAKE, 40));
    let f = vec![
        conv.syn_ack(),
        conv.client(&record(HANDSHAKE, &client.client_hello())),
        conv.server(&flight),
        conv.client(&cfin),
        conv.client(&sealed(APPDATA, 100)),
    ];
    assert!(h.run_all(&f).is_empty());
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    let want = tls_flags::SESSION_ID_ECHOED | tls_flags::ABBREVIATED | tls_flags::HANDSHAKE_DONE;
    assert_eq!(flow.tls.flags & want, want, "flags {:#x}", flow.tls.flags);
    assert_eq!(String::from_utf8_lossy(&flow.tls.history[..7]), "CsifIFD");
}

#[test]
fn sni_is_kept_in_its_own_map() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("portal.example.org")),
        conv.server(&frames::alert(FATAL, UNRECOGNIZED_NAME)),
    ];
    let events = h.run_all(&f);
    let sni = h.kernel.take_sni().expect("SNI map");
    assert_eq!(
        sni.lookup(conv.client_addr(), conv.server_addr())
            .as_deref(),
        Some("portal.example.org")
    );
    assert_ne!(events[0].tls.flags & tls_flags::SNI, 0);
}

/// A TLS 1.3-style session whose ServerHello selects `version` (a draft code, or one not
/// defined yet), with application data both ways and an ordinary close from both sides.
fn session_with_version(version: u16, psk: bool) -> (Vec<frames::Frame>, Conversation) {
    let mut conv = Conversation::v4(443);
    let mut client = Hello::client("a").with(SUPPORTED_VERSIONS, versions_ext(&[version]));
    let mut server = Hello::server().with(SUPPORTED_VERSIONS, version.to_be_bytes().to_vec());
    if psk {
        client = client
            .with(PSK_KEY_EXCHANGE_MODES, vec![1, 1])
            .with(PRE_SHARED_KEY, vec![0x5c; 80]);
        server = server.with(PRE_SHARED_KEY, vec![0, 0]);
    }
    let mut flight = record(HANDSHAKE, &server.server_hello());
    flight.extend(sealed(APPDATA, 900));
    let mut f = vec![
        conv.syn_ack(),
        conv.client(&record(HANDSHAKE, &client.client_hello())),
        conv.server(&flight),
        conv.client(&sealed(APPDATA, 53)),
        conv.client(&sealed(APPDATA, 300)),
        conv.server(&sealed(APPDATA, 3000)),
    ];
    f.push(conv.client_flags(ACK | FIN));
    f.push(conv.server_flags(ACK | FIN));
    (f, conv)
}

/// Application data from both sides after a ServerHello means the session was established,
/// whatever version code it chose: the close is no aborted handshake, an accepted PSK no
/// rejected resumption.
#[test]
fn unknown_version_codes_with_data_both_ways_are_established() {
    for version in [0x7f17u16, 0x7f1c, 0x0305] {
        for psk in [false, true] {
            let mut h = Harness::new();
            let (f, conv) = session_with_version(version, psk);
            let events = h.run_all(&f);
            assert!(events.is_empty(), "{version:#x} psk {psk}: {events:?}");
            let flow = h.flow(conv.client_addr(), conv.server_addr());
            assert_eq!(flow.tls.negotiated_version, version);
            assert_ne!(flow.tls.flags & tls_flags::HANDSHAKE_DONE, 0);
            assert!(diagnose(&events).is_empty());
        }
    }
}

/// A ClientHello answered by bytes that cannot start a TLS record: an HTML page without a
/// status line (Python's http.server answering what it takes for HTTP/0.9), mail and SSH
/// banners. Each is a ClientHello sent to a plaintext port.
#[test]
fn client_hello_answered_by_plaintext_that_is_not_http() {
    let answers: [(&[u8], &str); 4] = [
        (b"<!DOCTYPE HTML>\n<html lang=\"en\">", "html"),
        (b"220 mail.example ESMTP ready\r\n", "banner"),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", "banner"),
        (b"HTTP/1.1 400 Bad Request\r\n", "http"),
    ];
    for (answer, word) in answers {
        let mut h = Harness::new();
        let mut conv = Conversation::v4(8080);
        let f = vec![
            conv.syn_ack(),
            conv.client(&frames::client_hello("a")),
            conv.server(answer),
            conv.server_flags(ACK | FIN),
        ];
        let events = h.run_all(&f);
        let kinds: Vec<(EventKind, Side)> = events.iter().map(|e| (e.kind, e.sender)).collect();
        assert_eq!(
            kinds[0],
            (EventKind::ProtocolMismatch, Side::Server),
            "{word}: {events:?}"
        );
        let d = diagnose(&events);
        assert_eq!(d.len(), 1, "{word}: {d:?}");
        assert_eq!(d[0].kind, Kind::TlsToPlaintextPort);
        assert_eq!(d[0].detail_json()["answer"], word);
    }
}

/// (started, completed, failed) handshakes as the kernel counts them.
fn handshakes(h: &Harness) -> (u64, u64, u64) {
    (
        h.counter(Counter::HandshakesStarted),
        h.counter(Counter::HandshakesCompleted),
        h.counter(Counter::HandshakesFailed),
    )
}

/// The handshake totals behind the failure ratio: one start per flow whose ClientHello was
/// seen (a renegotiating ClientHello is not a second one), one completion or one failure
/// each, and nothing for a flow picked up mid-stream.
#[test]
fn handshakes_are_counted_once_per_flow_by_result() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // A client renegotiation in the clear after data: still the same handshake count.
    f.push(conv.client(&frames::client_hello("a")));
    f.push(conv.client_flags(ACK | FIN));
    h.run_all(&f);
    assert_eq!(
        handshakes(&h),
        (1, 1, 0),
        "finished, then renegotiated, then closed"
    );

    // Refused by a fatal alert, then the RST after it: one failure.
    let mut conv = Conversation::new(([10, 0, 0, 9].into(), 40_001), ([10, 0, 0, 2].into(), 443));
    h.run_all(&[
        conv.syn_ack(),
        conv.client(&frames::client_hello("b")),
        conv.server(&frames::alert(FATAL, HANDSHAKE_FAILURE)),
        conv.server_flags(ACK | RST),
    ]);
    assert_eq!(handshakes(&h), (2, 1, 1));

    // Ciphertext of a flow older than the detector: no handshake seen, none counted.
    let mut conv = Conversation::v4(8443);
    let mut two = sealed(APPDATA, 100);
    two.extend(sealed(APPDATA, 50));
    h.run_all(&[conv.server(&two), conv.client(&sealed(APPDATA, 80))]);
    assert_eq!(handshakes(&h), (2, 1, 1));
}
