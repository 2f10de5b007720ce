//! Field case 3: plaintext where TLS is expected, or TLS where plaintext is.

use std::net::SocketAddr;

use detector_common::{PayloadClass, Side, tls::alert};

use super::{
    Found,
    handshake::alerts_detail,
    session::{Bytes, SeenAlert, Session},
};
use crate::output::{
    detail::{KindDetail, MismatchDetail, PlaintextAnswer, ServerAnswer},
    diagnosis::Kind,
    escape::hex,
};

/// Field case 3: plaintext HTTP where TLS is expected, or a ClientHello to a plaintext
/// server.
pub(super) fn protocol_mismatch(s: &Session, server: SocketAddr) -> Option<Found> {
    let server_alerts: Vec<&SeenAlert> = s
        .alerts
        .iter()
        .filter(|a| a.sender == Side::Server)
        .collect();
    match (s.client_first, s.server_first) {
        (Some(PayloadClass::HttpRequest), answer)
            if s.tls_port || answer.is_some_and(PayloadClass::is_tls) =>
        {
            let mut evidence = vec![format!(
                "client's first payload {}is an HTTP request{}",
                s.client_bytes
                    .as_ref()
                    .map(|b| format!("{} ", b.shown()))
                    .unwrap_or_default(),
                if s.tls_port {
                    format!(" to TLS port {}", server.port())
                } else {
                    String::new()
                }
            )];
            let server_answer = match answer {
                Some(c) if c.is_tls() && !server_alerts.is_empty() => ServerAnswer::TlsAlert,
                Some(c) if c.is_tls() => ServerAnswer::Tls,
                Some(PayloadClass::HttpResponse) => ServerAnswer::Http,
                Some(PayloadClass::None) | None => ServerAnswer::NoneSeen,
                Some(_) => ServerAnswer::Other,
            };
            match (answer, &s.server_bytes) {
                (Some(c), Some(b)) if c != PayloadClass::None => evidence.push(format!(
                    "server answered {} {}",
                    if c.is_tls() { "in TLS:" } else { "with" },
                    b.shown()
                )),
                _ => evidence.push("no answer from the server seen".into()),
            }
            for a in &server_alerts {
                evidence.push(format!(
                    "server sent plaintext alert {} {} (how analyzers show 'HTTP continuation')",
                    alert::level_name(a.alert.level),
                    alert::description_name(a.alert.description)
                ));
            }
            let detail = MismatchDetail::HttpToTlsPort {
                sender: Side::Client,
                tls_port: s.tls_port,
                server_answer,
                client_bytes: s.client_bytes.as_ref().map(|b| hex(&b.head)),
                server_bytes: s.server_bytes.as_ref().map(|b| hex(&b.head)),
                alerts: alerts_detail(&s.alerts),
            };
            Some((Kind::HttpToTlsPort, evidence, KindDetail::Mismatch(detail)))
        }
        // Any answer to a ClientHello whose first bytes cannot start a TLS record: the
        // kernel classes it as an HTTP status line or as something else. "Something else"
        // is only diagnosed with the server's bytes in hand (the mismatch event), since
        // they are the evidence.
        (
            Some(PayloadClass::ClientHello),
            Some(class @ (PayloadClass::HttpResponse | PayloadClass::Other)),
        ) if class == PayloadClass::HttpResponse || s.server_bytes.is_some() => {
            let answer = match &s.server_bytes {
                Some(b) => PlaintextAnswer::of(&b.head),
                None => PlaintextAnswer::Http,
            };
            let shown = s
                .server_bytes
                .as_ref()
                .map(Bytes::shown)
                .unwrap_or_default();
            let evidence = vec![
                format!(
                    "client's first payload is a TLS ClientHello (record type 22, handshake \
                     type 1) to port {}",
                    server.port()
                ),
                format!("server answered {}: {shown}", answer.words()),
            ];
            let detail = MismatchDetail::TlsToPlaintextPort {
                sender: Side::Server,
                answer,
                server_bytes: s.server_bytes.as_ref().map(|b| hex(&b.head)),
            };
            Some((
                Kind::TlsToPlaintextPort,
                evidence,
                KindDetail::Mismatch(detail),
            ))
        }
        _ => None,
    }
}

// Told here, where the answer is judged; the type is the output's, which shows it.
impl PlaintextAnswer {
    fn of(head: &[u8]) -> PlaintextAnswer {
        if head.starts_with(b"HTTP/") {
            return PlaintextAnswer::Http;
        }
        let text = head.trim_ascii_start();
        if text.starts_with(b"<") {
            return PlaintextAnswer::Html;
        }
        // The first line (or as much of it as the snippet holds) must be printable ASCII
        // and start with a visible character; a few bytes are too little to call a line.
        let line = head
            .split(|&c| c == b'\r' || c == b'\n')
            .next()
            .unwrap_or_default();
        let printable = line.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
        if line.len() >= 3 && printable && line[0].is_ascii_graphic() {
            return PlaintextAnswer::Banner;
        }
        PlaintextAnswer::Other
    }

    fn words(self) -> &'static str {
        match self {
            PlaintextAnswer::Http => "in plaintext HTTP",
            PlaintextAnswer::Html => "with an HTML page and no HTTP status line",
            PlaintextAnswer::Banner => "with a plaintext protocol banner",
            PlaintextAnswer::Other => "with bytes that cannot start a TLS record",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_answers_are_told_apart() {
        use PlaintextAnswer::*;
        for (bytes, want) in [
            (&b"HTTP/1.0 400 Bad "[..], Http),
            (b"<!DOCTYPE HTML>\n<", Html),
            (b"<html><head>", Html),
            (b"\r\n  <HTML>", Html),
            (b"220 smtp ready\r\n", Banner),
            (b"SSH-2.0-OpenSSH_9", Banner),
            (b"+OK POP3\r\n", Banner),
            (b"* OK IMAP4rev1 ", Banner),
            (b"\x00\x01\x02\x03", Other),
            (b"ok\x80\x81", Other),
            (b"+O", Other),
            (b"", Other),
        ] {
            assert_eq!(PlaintextAnswer::of(bytes), want, "{bytes:?}");
        }
    }
}
