//! The correlator through its public face: events in, diagnoses out.

use detector_common::{PayloadClass, Side, dir_flags, tls_flags};

use super::*;
use crate::{
    kernel::event::{Abort, Alert, History, Snippet, TlsFacts},
    output::escape::hex,
};

fn event(kind: EventKind, sender: Side) -> KernelEvent {
    KernelEvent {
        kind,
        ts_ns: 1_000,
        flow_first_seen_ns: 0,
        gap_ns: 0,
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "10.0.0.2:443".parse().unwrap(),
        sender,
        alert: None,
        abort: None,
        client_first: PayloadClass::None,
        server_first: PayloadClass::None,
        handshake_seen: true,
        tls_port: true,
        midstream_tls: false,
        midstream: false,
        record_len: 0,
        snippet: Snippet::default(),
        tcp_seq: 1,
        payload_len: 0,
        history: History::default(),
        client_flags: 0,
        server_flags: 0,
        tls: TlsFacts::default(),
    }
}

fn correlator() -> Correlator {
    Correlator::new(Clock::Capture, Duration::from_secs(1), 16)
}

fn alert(level: u8, description: u8) -> Option<Alert> {
    Some(Alert { level, description })
}

#[test]
fn http_request_and_server_alert_make_one_diagnosis() {
    let mut c = correlator();
    let mut req = event(EventKind::ProtocolMismatch, Side::Client);
    req.client_first = PayloadClass::HttpRequest;
    req.snippet = Snippet::new(b"GET / HTTP/1.1\r\n");
    req.payload_len = 40;
    let mut answer = event(EventKind::ProtocolMismatch, Side::Server);
    answer.ts_ns = 2_000;
    answer.client_first = PayloadClass::HttpRequest;
    answer.server_first = PayloadClass::TlsRecord;
    answer.snippet = Snippet::new(&[0x15, 3, 1, 0, 2, 2, 10]);
    let mut a = answer.clone();
    a.kind = EventKind::PlaintextAlert;
    a.alert = alert(2, 10);
    for e in [&req, &answer, &a] {
        assert!(c.ingest(e, None).is_empty());
    }
    assert!(
        c.expire(2_000 + 999_999_999).is_empty(),
        "window not over yet"
    );
    let d = c.expire(2_000 + 1_000_000_000);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::HttpToTlsPort);
    assert_eq!(d[0].detail_json()["server_answer"], "tls_alert");
    let ev = d[0].evidence.join("; ");
    assert!(ev.contains("\"GET / HTTP/1.1\"..."), "{ev}");
    assert!(ev.contains("fatal unexpected_message"), "{ev}");
    assert_eq!(c.open_sessions(), 0);
}

#[test]
fn lone_fatal_alert_names_sender_and_description() {
    let mut c = correlator();
    let mut a = event(EventKind::PlaintextAlert, Side::Client);
    a.alert = alert(2, 48);
    a.history = "CsxknL".into();
    c.ingest(&a, Some("example.org".into()));
    c.ingest(&a, None); // retransmission
    let d = c.flush();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::FatalAlert);
    assert_eq!(d[0].detail_json()["sender"], "client");
    assert_eq!(d[0].detail_json()["description"], "unknown_ca");
    assert_eq!(d[0].detail_json()["ssl_history"], "CsxknL");
    assert_eq!(d[0].sni.as_deref(), Some("example.org"));
    assert_eq!(d[0].detail_json()["alerts"].as_array().unwrap().len(), 1);
}

#[test]
fn warning_alert_alone_is_no_diagnosis() {
    let mut c = correlator();
    let mut a = event(EventKind::PlaintextAlert, Side::Server);
    a.alert = alert(1, 0);
    c.ingest(&a, None);
    assert!(c.flush().is_empty());
}

#[test]
fn resumption_killed_by_alert_is_one_resumption_rejected() {
    let mut c = correlator();
    let tls = TlsFacts {
        offered_versions: 1 << 3,
        session_ticket_len: 160,
        ..TlsFacts::default()
    };
    let mut a = event(EventKind::PlaintextAlert, Side::Server);
    a.alert = alert(2, 40);
    a.tls = tls;
    let mut ab = a.clone();
    ab.kind = EventKind::HandshakeAborted;
    ab.abort = Some(Abort::Alert);
    c.ingest(&a, None);
    c.ingest(&ab, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ResumptionRejected);
    assert_eq!(d[0].detail_json()["method"], "tls12_session_ticket");
    assert_eq!(d[0].detail_json()["accepted"], false);
    assert_eq!(d[0].detail_json()["description"], "handshake_failure");
    assert_eq!(d[0].detail_json()["sender"], "server");
}

#[test]
fn reset_after_client_hello_is_handshake_reset() {
    let mut c = correlator();
    let mut ab = event(EventKind::HandshakeAborted, Side::Server);
    ab.abort = Some(Abort::Rst);
    c.ingest(&ab, None);
    let d = c.flush();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::HandshakeReset);
    assert_eq!(d[0].detail_json()["server_hello_seen"], false);
}

#[test]
fn client_answer_to_hello_request_is_not_client_renegotiation() {
    let mut c = correlator();
    // As the kernel reports them: each side's mark is set with its own report.
    let mut s = event(EventKind::Renegotiation, Side::Server);
    s.record_len = 32;
    s.server_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
    let mut cl = event(EventKind::Renegotiation, Side::Client);
    cl.ts_ns = 2_000;
    cl.record_len = 300;
    cl.server_flags = s.server_flags;
    cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
    c.ingest(&s, None);
    c.ingest(&cl, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ServerHelloRequest);
    assert_eq!(d[0].detail_json()["sender"], "server");
    assert_eq!(d[0].detail_json()["client_renegotiated"], true);
    assert_eq!(d[0].detail_json()["encrypted"], true);
}

#[test]
fn client_answer_to_plaintext_hello_request_is_one_server_hello_request() {
    let mut c = correlator();
    let hr = event(EventKind::HelloRequest, Side::Server);
    // A plaintext HelloRequest does not mark the server as renegotiated.
    let mut cl = event(EventKind::Renegotiation, Side::Client);
    cl.ts_ns = 2_000;
    cl.record_len = 300;
    cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
    c.ingest(&hr, None);
    c.ingest(&cl, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ServerHelloRequest);
    assert_eq!(d[0].detail_json()["encrypted"], false);
    assert_eq!(d[0].detail_json()["client_renegotiated"], true);
}

#[test]
fn server_answer_to_client_renegotiation_is_not_a_hello_request() {
    // openssl s_client's `R`: the client's handshake record comes first, the server's
    // records answer it.
    let mut c = correlator();
    let mut cl = event(EventKind::Renegotiation, Side::Client);
    cl.record_len = 300;
    cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
    cl.server_flags = dir_flags::APPDATA;
    let mut sv = event(EventKind::Renegotiation, Side::Server);
    sv.ts_ns = 2_000;
    sv.record_len = 1200;
    sv.client_flags = cl.client_flags;
    sv.server_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
    c.ingest(&cl, None);
    c.ingest(&sv, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ClientRenegotiation);
    assert_eq!(d[0].detail_json()["sender"], "client");
    assert_eq!(d[0].detail_json()["server_answered"], true);
    assert_eq!(c.abstained(Abstention::RenegotiationAnswerOnly), 0);
}

#[test]
fn marks_decide_the_initiator_even_out_of_order() {
    // The server's answer delivered first (its timestamp earlier, say from another
    // CPU's clock): the marks still say the client started.
    let mut c = correlator();
    let mut sv = event(EventKind::Renegotiation, Side::Server);
    sv.record_len = 1200;
    sv.client_flags = dir_flags::RENEGOTIATED;
    sv.server_flags = dir_flags::RENEGOTIATED;
    let mut cl = event(EventKind::Renegotiation, Side::Client);
    cl.ts_ns = 2_000;
    cl.record_len = 300;
    cl.client_flags = dir_flags::RENEGOTIATED;
    c.ingest(&sv, None);
    c.ingest(&cl, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::ClientRenegotiation);
}

#[test]
fn a_renegotiation_answer_alone_is_an_abstention() {
    let mut c = correlator();
    let mut sv = event(EventKind::Renegotiation, Side::Server);
    sv.record_len = 1200;
    sv.client_flags = dir_flags::RENEGOTIATED;
    c.ingest(&sv, None);
    assert!(c.flush().is_empty());
    assert_eq!(c.abstained(Abstention::RenegotiationAnswerOnly), 1);
}

#[test]
fn client_initiated_renegotiation() {
    let mut c = correlator();
    let mut cl = event(EventKind::Renegotiation, Side::Client);
    cl.record_len = 300;
    cl.tls.flags = tls_flags::HANDSHAKE_DONE;
    c.ingest(&cl, None);
    let d = c.flush();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, Kind::ClientRenegotiation);
}

#[test]
fn full_table_judges_the_quietest_session_instead_of_losing_it() {
    let mut c = Correlator::new(Clock::Capture, Duration::from_secs(1), 1);
    let mut a = event(EventKind::PlaintextAlert, Side::Server);
    a.alert = alert(2, 40);
    c.ingest(&a, None);
    let mut b = a.clone();
    b.client = "10.0.0.9:1".parse().unwrap();
    let pushed = c.ingest(&b, None);
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].client, a.client);
    assert_eq!(c.evicted(), 1);
}

#[test]
fn the_quietest_by_last_event_goes_first_whatever_order_events_came_in() {
    let mut c = Correlator::new(Clock::Capture, Duration::from_secs(1), 3);
    let at = |port: u16, ts_ns: u64| {
        let mut e = event(EventKind::PlaintextAlert, Side::Server);
        e.alert = alert(2, 40);
        e.client = SocketAddr::from(([10, 0, 0, 1], port));
        e.ts_ns = ts_ns;
        e
    };
    let clients = |d: &[Diagnosis]| d.iter().map(|d| d.client.port()).collect::<Vec<_>>();
    for (port, ts) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        assert!(c.ingest(&at(port, ts), None).is_empty());
    }
    // Session 1 is heard from again, so session 2 is now the quietest; an event that
    // comes late (older than its session's last) moves nothing.
    assert!(c.ingest(&at(1, 4_000), None).is_empty());
    assert!(c.ingest(&at(3, 500), None).is_empty());
    let pushed = c.ingest(&at(4, 5_000), None);
    assert_eq!(clients(&pushed), [2]);
    assert_eq!(c.evicted(), 1);
    assert!(
        c.expire(3_000 + 999_999_999).is_empty(),
        "none quiet for 1 s yet"
    );
    // Sessions 3 (last event at 3 µs) and 1 (at 4 µs) are over, judged in the order of
    // their first events; session 4 is not.
    let d = c.expire(4_000 + 1_000_000_000);
    assert_eq!(clients(&d), [1, 3]);
    assert_eq!(c.open_sessions(), 1);
    assert_eq!(clients(&c.flush()), [4]);
}

/// A ClientHello answered by `answer` (the server's first bytes, classed by the
/// kernel as `class`), then the server's FIN ending the handshake.
fn client_hello_answered(class: PayloadClass, answer: &[u8]) -> Vec<Diagnosis> {
    let mut c = correlator();
    let mut mismatch = event(EventKind::ProtocolMismatch, Side::Server);
    mismatch.tls_port = false;
    mismatch.client_first = PayloadClass::ClientHello;
    mismatch.server_first = class;
    mismatch.snippet = Snippet::new(answer);
    mismatch.payload_len = 200;
    let mut end = mismatch.clone();
    end.kind = EventKind::HandshakeAborted;
    end.abort = Some(Abort::Fin);
    end.snippet = Snippet::default();
    end.ts_ns = 2_000;
    c.ingest(&mismatch, None);
    c.ingest(&end, None);
    c.flush()
}

#[test]
fn client_hello_answered_in_plaintext_is_tls_to_plaintext_port() {
    // Each answer is as much as the kernel sends of it (SNIPPET_LEN bytes at most).
    for (class, bytes, answer) in [
        (PayloadClass::HttpResponse, &b"HTTP/1.1 400 Bad"[..], "http"),
        (PayloadClass::Other, b"<!DOCTYPE HTML P", "html"),
        (PayloadClass::Other, b"220 smtp ready\r\n", "banner"),
        (PayloadClass::Other, b"SSH-2.0-OpenSSH_", "banner"),
        (PayloadClass::Other, b"\x00\x00\x00\x01\xff", "other"),
    ] {
        let d = client_hello_answered(class, bytes);
        assert_eq!(d.len(), 1, "{answer}: {d:?}");
        assert_eq!(d[0].kind, Kind::TlsToPlaintextPort, "{answer}");
        assert_eq!(d[0].detail_json()["answer"], answer);
        assert_eq!(d[0].detail_json()["server_bytes"], hex(bytes));
        assert_eq!(d[0].detail_json()["sender"], "server");
    }
}

#[test]
fn unexplained_other_answer_without_its_bytes_is_no_mismatch() {
    // The server's first payload was classed "other" but its bytes never arrived:
    // no evidence of a plaintext server, so the abort is judged as it is.
    let mut c = correlator();
    let mut end = event(EventKind::HandshakeAborted, Side::Server);
    end.abort = Some(Abort::Rst);
    end.client_first = PayloadClass::ClientHello;
    end.server_first = PayloadClass::Other;
    c.ingest(&end, None);
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::HandshakeReset);
}

#[test]
fn alerts_are_capped_with_a_count_of_the_rest() {
    let mut c = correlator();
    for i in 0..20 {
        let mut a = event(EventKind::PlaintextAlert, Side::Server);
        a.alert = alert(2, 40);
        a.tcp_seq = 1000 + i;
        c.ingest(&a, None);
        let mut enc = event(EventKind::EncryptedAlert, Side::Client);
        enc.record_len = 26;
        enc.tcp_seq = 5000 + i;
        c.ingest(&enc, None);
    }
    let mut hr = event(EventKind::HelloRequest, Side::Server);
    hr.ts_ns = 3_000;
    c.ingest(&hr, None);
    let d = c.flush();
    let fatal = d.iter().find(|d| d.kind == Kind::FatalAlert).unwrap();
    assert_eq!(
        fatal.detail_json()["alerts"].as_array().unwrap().len(),
        MAX_ALERTS_KEPT
    );
    assert_eq!(fatal.detail_json()["alerts_omitted"], 20 - MAX_ALERTS_KEPT);
    assert_eq!(
        fatal.detail_json()["encrypted_alerts_omitted"],
        20 - MAX_ALERTS_KEPT
    );
    let hello = d
        .iter()
        .find(|d| d.kind == Kind::ServerHelloRequest)
        .unwrap();
    assert!(
        hello
            .evidence
            .join("; ")
            .contains("and 12 more encrypted alerts")
    );
}

#[test]
fn a_session_keeps_the_first_name_of_its_connection() {
    let mut c = correlator();
    let mut e = event(EventKind::PlaintextAlert, Side::Server);
    e.alert = alert(2, 40);
    c.ingest(&e, None);
    c.ingest(&e, Some("a.example".into()));
    c.ingest(&e, Some("b.example".into()));
    let d = c.flush();
    assert_eq!(d[0].sni.as_deref(), Some("a.example"));
}

#[test]
fn reused_four_tuple_judges_the_old_connection_and_forgets_its_name() {
    let mut c = correlator();
    let mut old = event(EventKind::PlaintextAlert, Side::Client);
    old.alert = alert(2, 48);
    old.flow_first_seen_ns = 100;
    old.tls.flags = tls_flags::SNI;
    assert!(c.ingest(&old, Some("old.example".into())).is_empty());
    let mut new = event(EventKind::HandshakeAborted, Side::Server);
    new.abort = Some(Abort::Rst);
    new.flow_first_seen_ns = 5_000;
    new.ts_ns = 6_000;
    let judged = c.ingest(&new, None);
    assert_eq!(judged.len(), 1, "{judged:?}");
    assert_eq!(judged[0].kind, Kind::FatalAlert);
    assert_eq!(judged[0].sni.as_deref(), Some("old.example"));
    let d = c.flush();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::HandshakeReset);
    assert_eq!(d[0].sni, None);
    assert!(
        d[0].detail_json()
            .get("alerts")
            .is_none_or(|a| a.as_array().is_some_and(|a| a.is_empty()))
    );
}

#[test]
fn data_from_both_sides_means_established_whatever_the_version() {
    // A TLS 1.3 draft version code the kernel does not know: its ordinary close, and
    // an accepted PSK resumption's, must not read as failed handshakes.
    for psk in [false, true] {
        let mut c = correlator();
        let mut end = event(EventKind::HandshakeAborted, Side::Client);
        end.abort = Some(Abort::Fin);
        end.tls.negotiated_version = Some(0x7f17);
        if psk {
            end.tls.flags = tls_flags::PSK_OFFERED | tls_flags::PSK_ACCEPTED;
        }
        end.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
        end.server_flags = dir_flags::HELLO | dir_flags::APPDATA;
        c.ingest(&end, None);
        assert!(c.flush().is_empty(), "psk {psk}");
        assert_eq!(c.abstained(Abstention::EstablishedByData), 1);
    }
    // Data from one side only is no such evidence.
    let mut c = correlator();
    let mut end = event(EventKind::HandshakeAborted, Side::Server);
    end.abort = Some(Abort::Rst);
    end.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
    end.server_flags = dir_flags::HELLO;
    c.ingest(&end, None);
    assert_eq!(c.flush()[0].kind, Kind::HandshakeReset);
    assert_eq!(c.abstained(Abstention::EstablishedByData), 0);
}

#[test]
fn unknown_version_is_shown_as_hex_and_data_both_ways_is_established() {
    let mut c = correlator();
    let mut a = event(EventKind::PlaintextAlert, Side::Server);
    a.alert = alert(2, 40);
    a.tls.negotiated_version = Some(0x7f17);
    c.ingest(&a, None);
    let d = c.flush();
    assert_eq!(d[0].detail_json()["tls_version"], "0x7f17");
    assert_eq!(d[0].detail_json()["during_handshake"], true);
    a.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
    a.server_flags = dir_flags::HELLO | dir_flags::APPDATA;
    c.ingest(&a, None);
    assert_eq!(c.flush()[0].detail_json()["during_handshake"], false);
}
