//! Tests of the relay: ClientHello parsing, and forwarding, rejecting and resetting live.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    thread::{self},
    time::{Duration, Instant},
};

use detector_common::tls::extension::{
    PRE_SHARED_KEY as EXT_PRE_SHARED_KEY, SERVER_NAME as EXT_SERVER_NAME,
    SESSION_TICKET as EXT_SESSION_TICKET, SUPPORTED_VERSIONS as EXT_SUPPORTED_VERSIONS,
};

use super::{hello::*, *};

/// A ClientHello handshake message (type 1) with these fields.
fn hello(session_id: &[u8], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x5a; 32]);
    body.push(session_id.len() as u8);
    body.extend(session_id);
    body.extend([0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]);
    let mut e = Vec::new();
    for (t, d) in exts {
        e.extend(t.to_be_bytes());
        e.extend((d.len() as u16).to_be_bytes());
        e.extend(d);
    }
    body.extend((e.len() as u16).to_be_bytes());
    body.extend(e);
    let mut msg = vec![1];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

/// `msg` in handshake records of at most `max` body bytes, record version 0x0301.
fn records(msg: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in msg.chunks(max) {
        out.extend([22, 3, 1]);
        out.extend((part.len() as u16).to_be_bytes());
        out.extend(part);
    }
    out
}

fn sni(name: &str) -> (u16, Vec<u8>) {
    let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(0);
    d.extend((name.len() as u16).to_be_bytes());
    d.extend(name.as_bytes());
    (EXT_SERVER_NAME, d)
}

fn versions(v: &[u16]) -> (u16, Vec<u8>) {
    let mut d = vec![(v.len() * 2) as u8];
    for x in v {
        d.extend(x.to_be_bytes());
    }
    (EXT_SUPPORTED_VERSIONS, d)
}

fn info(bytes: &[u8]) -> ClientHelloInfo {
    match parse_client_hello(bytes) {
        Hello::Complete { info, consumed } => {
            assert_eq!(consumed, bytes.len());
            info
        }
        other => panic!("expected a complete hello, got {other:?}"),
    }
}

#[test]
fn fresh_tls12_hello_offers_nothing() {
    let msg = hello(&[], &[sni("server.test"), (EXT_SESSION_TICKET, vec![])]);
    let i = info(&records(&msg, 16384));
    assert_eq!(i.legacy_version, 0x0303);
    assert_eq!(i.session_id_len, 0);
    assert_eq!(i.session_ticket_len, Some(0));
    assert_eq!(i.sni.as_deref(), Some("server.test"));
    assert!(!i.psk && !i.offers_tls13());
    assert_eq!(i.resumption(), None);
}

#[test]
fn tls12_session_id_is_resumption_only_without_tls13() {
    let id = [7u8; 32];
    let i = info(&records(&hello(&id, &[]), 16384));
    assert_eq!(i.session_id_len, 32);
    assert_eq!(i.session_ticket_len, None);
    assert_eq!(i.resumption(), Some(Resumption::Tls12SessionId));
    // A TLS 1.3 client's compatibility session ID is not a resumption offer, even
    // with a GREASE version in front.
    let msg = hello(&id, &[versions(&[0x0a0a, 0x0304, 0x0303])]);
    let i = info(&records(&msg, 16384));
    assert!(i.offers_tls13());
    assert_eq!(i.supported_versions, [0x0a0a, 0x0304, 0x0303]);
    assert_eq!(i.resumption(), None);
    // supported_versions listing only TLS 1.2 (and GREASE) keeps it a resumption.
    let msg = hello(&id, &[versions(&[0x1a1a, 0x0303])]);
    assert_eq!(
        info(&records(&msg, 16384)).resumption(),
        Some(Resumption::Tls12SessionId)
    );
}

#[test]
fn ticket_and_psk() {
    let msg = hello(&[1; 32], &[(EXT_SESSION_TICKET, vec![0xab; 160])]);
    let i = info(&records(&msg, 16384));
    assert_eq!(i.session_ticket_len, Some(160));
    assert_eq!(i.resumption(), Some(Resumption::Tls12SessionTicket));
    let msg = hello(
        &[2; 32],
        &[
            sni("server.test"),
            versions(&[0x0304]),
            (45, vec![1, 1]),
            (EXT_PRE_SHARED_KEY, vec![0; 40]),
        ],
    );
    let i = info(&records(&msg, 16384));
    assert!(i.psk && i.offers_tls13());
    assert_eq!(i.resumption(), Some(Resumption::Tls13Psk));
    assert_eq!(Resumption::Tls13Psk.as_str(), "tls13_psk");
}

#[test]
fn every_prefix_needs_more_then_completes() {
    let msg = hello(
        &[],
        &[sni("server.test"), (EXT_SESSION_TICKET, vec![9; 20])],
    );
    for max in [16384, 50, 7] {
        let bytes = records(&msg, max);
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_client_hello(&bytes[..cut]),
                Hello::NeedMore,
                "records of {max}, cut at {cut}"
            );
        }
        let i = info(&bytes);
        assert_eq!(i.session_ticket_len, Some(20));
        assert_eq!(i.resumption(), Some(Resumption::Tls12SessionTicket));
    }
    // Bytes after the hello (a second record) are not consumed.
    let mut bytes = records(&msg, 16384);
    let len = bytes.len();
    bytes.extend([20, 3, 3, 0, 1, 1]);
    assert!(matches!(
        parse_client_hello(&bytes),
        Hello::Complete { consumed, .. } if consumed == len
    ));
}

#[test]
fn not_a_client_hello() {
    let not = |b: &[u8]| matches!(parse_client_hello(b), Hello::NotClientHello(_));
    assert!(not(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(not(b"G"));
    assert!(not(&[22, 4]));
    assert!(not(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]));
    // Record too long, or empty.
    assert!(not(&[22, 3, 1, 0x48, 0x01]));
    assert!(not(&[22, 3, 1, 0, 0]));
    // A ServerHello.
    assert!(not(&records(&[2, 0, 0, 2, 3, 3], 100)));
    // Declared extension longer than the extensions block.
    let mut msg = hello(&[], &[(EXT_SESSION_TICKET, vec![1; 4])]);
    let n = msg.len();
    msg[n - 5] = 0x40; // the ticket's length (low byte): 64 > 4
    assert!(not(&records(&msg, 16384)));
    // Session ID longer than 32.
    let msg = hello(&[0; 33], &[]);
    assert!(not(&records(&msg, 16384)));
}

#[test]
fn hello_without_extensions() {
    let mut body = vec![0x03, 0x01];
    body.extend([0; 32]);
    body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
    let mut msg = vec![1, 0, 0, body.len() as u8];
    msg.extend(body);
    let i = info(&records(&msg, 16384));
    assert_eq!(i.legacy_version, 0x0301);
    assert_eq!(i.resumption(), None);
}

/// The relay on loopback, no namespace: a fresh hello is forwarded to an echo server,
/// a resuming one gets the alert and a clean close.
#[test]
fn relay_forwards_fresh_and_rejects_resuming_clients() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = echo.local_addr().unwrap();
    let echo_thread = thread::spawn(move || {
        let (mut s, _) = echo.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let relay = Relay::start(None, "127.0.0.1:0".parse().unwrap(), upstream).unwrap();
    let addr = relay.local_addr();

    // Fresh: split into two writes; the echo returns it all, then the close.
    let fresh = records(&hello(&[], &[sni("a.test")]), 16384);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&fresh[..10]).unwrap();
    thread::sleep(Duration::from_millis(100));
    c.write_all(&fresh[10..]).unwrap();
    c.write_all(b"more").unwrap();
    let mut got = vec![0u8; fresh.len() + 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got[..fresh.len()], &fresh[..]);
    assert_eq!(&got[fresh.len()..], b"more");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    echo_thread.join().unwrap();

    // Resuming: the alert, then EOF.
    let resuming = records(&hello(&[3; 32], &[]), 16384);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&resuming).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, HANDSHAKE_FAILURE_ALERT);

    let conns = relay.wait_connections(2, Duration::from_secs(5)).unwrap();
    assert_eq!(conns[0].verdict, Verdict::Forwarded);
    assert_eq!(
        conns[0].hello.as_ref().unwrap().sni.as_deref(),
        Some("a.test")
    );
    assert_eq!(
        conns[1].verdict,
        Verdict::Rejected(Resumption::Tls12SessionId)
    );
    assert_eq!(conns[1].client, c.local_addr().unwrap());
    let start = Instant::now();
    drop(relay);
    assert!(start.elapsed() < Duration::from_secs(3));
}
