//! The kernel's TLS record walker on crafted TLS streams, through BPF_PROG_TEST_RUN:
//! records across segments and several per segment, retransmission, reordering, mid-stream
//! pickup, split ClientHellos, lengths that lie, and the events the walk raises.

use detector_common::{
    Counter, EventKind, Side, dir_flags,
    tls::{
        alert::{FATAL, HANDSHAKE_FAILURE, UNRECOGNIZED_NAME},
        content_type::{ALERT, APPLICATION_DATA as APPDATA, CHANGE_CIPHER_SPEC as CCS, HANDSHAKE},
        extension::{PRE_SHARED_KEY, PSK_KEY_EXCHANGE_MODES, SESSION_TICKET, SUPPORTED_VERSIONS},
        handshake as hs,
        version::{TLS1_2, TLS1_3, offered_bit},
    },
    tls_flags,
};
use detector_user::{
    kernel::event::{Abort, KernelEvent, ResumptionMethod},
    output::diagnosis::Kind,
};
use tests::{
    frames::{
        self, ACK, Conversation, FIN, Hello, RST, handshake, record, record_header, versions_ext,
    },
    harness::{Harness, diagnose},
};

fn ccs() -> Vec<u8> {
    record(CCS, &[1])
}

/// An encrypted record of `len` bytes of type `t` (contents are noise to the walker).
fn sealed(t: u8, len: usize) -> Vec<u8> {
    record(t, &vec![0xa5; len])
}

/// The server's first flight of a full TLS 1.2 handshake in one record:
/// ServerHello, Certificate (1.5 KB), ServerKeyExchange, ServerHelloDone.
fn server_flight_tls12(hello: &Hello) -> Vec<u8> {
    let mut msgs = hello.server_hello();
    msgs.extend(handshake(hs::CERTIFICATE, &vec![0x30; 1500]));
    msgs.extend(handshake(hs::SERVER_KEY_EXCHANGE, &[0x03; 100]));
    msgs.extend(handshake(hs::SERVER_HELLO_DONE, &[]));
    record(HANDSHAKE, &msgs)
}

/// Client key exchange, ChangeCipherSpec and Finished, as three records in one segment.
fn client_finish_tls12() -> Vec<u8> {
    let mut seg = record(HANDSHAKE, &handshake(hs::CLIENT_KEY_EXCHANGE, &[0x04; 66]));
    seg.extend(ccs());
    seg.extend(sealed(HANDSHAKE, 40));
    seg
}

/// A TLS 1.2 session up to application data both ways; returns the frames in order.
fn tls12_session(conv: &mut Conversation, client: &Hello, server: &Hello) -> Vec<frames::Frame> {
    let mut f = vec![conv.syn_ack()];
    f.push(conv.client(&record(HANDSHAKE, &client.client_hello())));
    // The server flight spans three segments; record and message headers fall anywhere.
    f.extend(conv.server_segments(&server_flight_tls12(server), &[700, 700]));
    f.push(conv.client(&client_finish_tls12()));
    let mut fin = ccs();
    fin.extend(sealed(HANDSHAKE, 40));
    f.push(conv.server(&fin));
    f.push(conv.client(&sealed(APPDATA, 300)));
    f.push(conv.server(&sealed(APPDATA, 2000)));
    f
}

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
fn retransmissions_change_nothing() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let syn_ack = conv.syn_ack();
    let hello = conv.client(&frames::client_hello("a.example"));
    let answer = conv.server(&frames::alert(FATAL, HANDSHAKE_FAILURE));
    let events = h.run_all(&[
        syn_ack,
        hello.clone(),
        hello.clone(),
        answer.clone(),
        answer,
        hello,
    ]);
    assert_eq!(events.len(), 2, "one alert, one abort: {events:?}");
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(flow.tls.history_len, 2, "no letter twice");
}

#[test]
fn reordered_body_segments_keep_sync() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // A 3000-byte record in three segments, then an encrypted alert in its own segment;
    // the record's middle segment arrives last.
    let mut segs = conv.server_segments(&sealed(APPDATA, 3000), &[1000, 1000]);
    let alert = conv.server(&sealed(ALERT, 26));
    segs.swap(1, 2);
    f.extend(segs);
    f.push(alert);
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
    assert_eq!(events[0].sender, Side::Server);
    assert_eq!(events[0].record_len, 26);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
}

#[test]
fn reordered_header_segment_loses_sync_instead_of_guessing() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // Record A ends inside segment 2, where record B (an encrypted alert) starts; segment
    // 2 arrives before segment 1, so B's header goes by before the walker knows where it is.
    let mut data = sealed(APPDATA, 1600);
    data.extend(sealed(ALERT, 26));
    let mut segs = conv.server_segments(&data, &[1000]);
    segs.swap(0, 1);
    f.extend(segs);
    let events = h.run_all(&f);
    assert!(events.is_empty(), "nothing may be guessed: {events:?}");
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
}

#[test]
fn mid_stream_pickup_resyncs_only_on_evidence() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    // No handshake seen. Ciphertext that happens to start like a header is not enough...
    let mut noise = record_header(APPDATA, 256);
    noise.extend(vec![0x5a; 700]);
    assert!(h.run(&conv.server(&noise)).is_empty());
    assert_eq!(h.counter(Counter::TlsResynced), 0);
    // ...two whole records filling a segment exactly are.
    let mut two = sealed(APPDATA, 100);
    two.extend(sealed(APPDATA, 50));
    assert!(h.run(&conv.server(&two)).is_empty());
    assert_eq!(h.counter(Counter::TlsResynced), 1);
    let events = h.run(&conv.server(&sealed(ALERT, 26)));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
    assert!(events[0].midstream_tls);
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
        conv.server(&sealed(APPDATA, 4000)),
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

/// Records counted by the walker for the `tls12_session` alone.
fn session_records() -> u64 {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    h.run_all(&tls12_session(
        &mut conv,
        &Hello::client("a"),
        &Hello::server(),
    ));
    h.counter(Counter::TlsRecords)
}

/// A TLS 1.2 session, then the server's bulk data: one record that sets the size the
/// read-ahead expects, twelve more of that size and an encrypted alert, cut into segments
/// of `sizes` and delivered in `order`. Returns the harness and the events.
fn reordered_bulk(sizes: &[usize], order: &[usize]) -> (Harness, Vec<KernelEvent>) {
    const LEN: usize = 1_000;
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, LEN)));
    let mut data = Vec::new();
    for _ in 0..12 {
        data.extend(sealed(APPDATA, LEN));
    }
    data.extend(sealed(ALERT, 26));
    let segs = conv.server_segments(&data, sizes);
    assert_eq!(segs.len(), order.len());
    f.extend(order.iter().map(|&i| segs[i].clone()));
    let events = h.run_all(&f);
    (h, events)
}

/// What both reordering cases must end with: no place lost, one gap bridged, every header
/// counted once (the session's, thirteen records and the alert), the alert reported.
fn assert_bridged(h: &Harness, events: &[KernelEvent]) {
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
    assert_eq!(h.counter(Counter::TlsReadAhead), 1);
    assert_eq!(
        h.counter(Counter::TlsRecords),
        session_records() + 1 + 12 + 1
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// Bulk transfer reordered across CPUs (a veth's per-CPU backlogs, or two CPUs sending):
/// a later segment arrives before the one holding the header it continues from. Its
/// headers are read ahead where one-size records put them, and taken when the walker's
/// own count of lengths gets there.
#[test]
fn reordered_bulk_records_keep_sync_by_reading_ahead() {
    // Headers at 0, 1005, 2010, ...: segment 1 holds 3015..5025, segment 2 6030..8040.
    let (h, events) = reordered_bulk(&[3_000, 3_000, 3_000, 3_000], &[0, 2, 1, 3, 4]);
    assert_bridged(&h, &events);
}

/// The same when both the hole and the early block are super-packets split into MTU-sized
/// segments (as replay and native XDP see them): the chain read ahead goes on from segment
/// to segment, through a header cut by a segment end, and a cursor that lands in the part
/// of the hole still to come waits for it.
#[test]
fn reordered_super_packet_split_into_segments_keeps_sync() {
    // Headers at 0, 1005, ...: the segment ending at 7037 cuts the header at 7035. The
    // hole (3000..6000, two segments) is filled after the four of the early block.
    let (h, events) = reordered_bulk(
        &[3_000, 1_500, 1_500, 1_037, 700, 700, 563, 3_000],
        &[0, 3, 4, 5, 6, 1, 2, 7, 8],
    );
    assert_bridged(&h, &events);
}

/// The same reordering where the headers are not where one-size records would put them:
/// nothing was read ahead there, so the walker loses its place rather than guess.
#[test]
fn reordered_records_of_other_sizes_still_lose_sync() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, 1_000)));
    let mut data = Vec::new();
    for len in [1_000, 1_000, 1_000, 700, 1_000, 1_000, 1_000, 1_000, 1_000] {
        data.extend(sealed(APPDATA, len));
    }
    let mut segs = conv.server_segments(&data, &[3_000, 3_000]);
    segs.swap(1, 2);
    f.extend(segs);
    assert!(h.run_all(&f).is_empty());
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
}

/// A handshake's end judged on a capture that lost packets: the client's Finished and
/// first data never reached the detector, and its FIN (which follows them) would look like
/// a handshake cut short. The FIN's sequence number shows bytes went by unseen: abstain.
#[test]
fn an_end_after_unseen_bytes_is_not_judged() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let client = Hello::client("a").with(SUPPORTED_VERSIONS, versions_ext(&[TLS1_3]));
    let server = Hello::server().with(SUPPORTED_VERSIONS, TLS1_3.to_be_bytes().to_vec());
    let mut flight = record(HANDSHAKE, &server.server_hello());
    flight.extend(sealed(APPDATA, 900));
    let f = vec![
        conv.syn_ack(),
        conv.client(&record(HANDSHAKE, &client.client_hello())),
        conv.server(&flight),
    ];
    assert!(h.run_all(&f).is_empty());
    // Lost on the way to the detector: the client's Finished and request.
    let _unseen = conv.client(&sealed(APPDATA, 53));
    let events = h.run(&conv.client_flags(ACK | FIN));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::UnseenBytes), 1);

    // The same from the other side: the server's answer went unseen, and the client's
    // RST acknowledges it.
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = vec![conv.syn_ack(), conv.client(&frames::client_hello("a"))];
    assert!(h.run_all(&f).is_empty());
    let _unseen = conv.server(&record(HANDSHAKE, &Hello::server().server_hello()));
    let events = h.run(&conv.client_flags(ACK | RST));
    assert!(
        events.is_empty(),
        "no ServerHello seen is not no ServerHello: {events:?}"
    );
    assert_eq!(h.counter(Counter::UnseenBytes), 1);
}

/// A bulk stream whose segment `[3000, 6000)` never reaches the walker, then more than the
/// walker waits for (1 MiB), ending with an encrypted alert; the records are one size,
/// except `odd` (its index) when given.
fn bulk_with_unseen_segment(odd: Option<usize>) -> (Harness, Vec<KernelEvent>) {
    const LEN: usize = 1_000;
    const RECORDS: usize = 1_200;
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, LEN)));
    let mut data = Vec::new();
    for i in 0..RECORDS {
        data.extend(sealed(APPDATA, if odd == Some(i) { 700 } else { LEN }));
    }
    data.extend(sealed(ALERT, 26));
    let segs = conv.server_segments(&data, &vec![3_000; data.len() / 3_000]);
    f.extend(
        segs.iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, s)| s.clone()),
    );
    let events = h.run_all(&f);
    (h, events)
}

/// Bytes the walker waited for went by unread (or never came): once the stream is far
/// past, the next header where one-size records put it, with a chain to the segment's end,
/// gives the walker its place back.
#[test]
fn a_walker_stranded_in_a_bulk_stream_finds_its_place_by_record_lengths() {
    let (h, events) = bulk_with_unseen_segment(None);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// The same with one record of another size among the unseen ones: every header after
/// it moved, the lengths refute the bridge, and the walker loses its place.
#[test]
fn records_of_another_size_refute_the_bridge() {
    let (h, _) = bulk_with_unseen_segment(Some(4));
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 0);
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
}
