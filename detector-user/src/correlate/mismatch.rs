//! Field case 3: plaintext where TLS is expected, or TLS where plaintext is.

use std::net::SocketAddr;

use detector_common::{PayloadClass, Side, tls::alert};
use serde_json::{Map, json};

use super::{
    Found,
    handshake::alerts_json,
    session::{Bytes, SeenAlert, Session},
};
use crate::output::diagnosis::{Kind, hex};

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
            let answer_word = match answer {
                Some(c) if c.is_tls() && !server_alerts.is_empty() => "tls_alert",
                Some(c) if c.is_tls() => "tls",
                Some(PayloadClass::HttpResponse) => "http",
                Some(PayloadClass::None) | None => "none_seen",
                Some(_) => "other",
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
            let mut detail = Map::new();
            detail.insert("sender".into(), json!("client"));
            detail.insert("tls_port".into(), json!(s.tls_port));
            detail.insert("server_answer".into(), json!(answer_word));
            if let Some(b) = &s.client_bytes {
                detail.insert("client_bytes".into(), json!(hex(&b.head)));
            }
            if let Some(b) = &s.server_bytes {
                detail.insert("server_bytes".into(), json!(hex(&b.head)));
            }
            detail.insert("alerts".into(), alerts_json(&s.alerts));
            Some((Kind::HttpToTlsPort, evidence, detail))
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
            let mut detail = Map::new();
            detail.insert("sender".into(), json!("server"));
            detail.insert("answer".into(), json!(answer.as_str()));
            if let Some(b) = &s.server_bytes {
                detail.insert("server_bytes".into(), json!(hex(&b.head)));
            }
            Some((Kind::TlsToPlaintextPort, evidence, detail))
        }
        _ => None,
    }
}

/// What a plaintext server sent back to a ClientHello, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlaintextAnswer {
    /// An HTTP status line (`HTTP/1.1 400 Bad Request`).
    Http,
    /// An HTML page with no status line (Python's `http.server` error page, `<!DOCTYPE`).
    Html,
    /// A printable text line: the greeting of a line protocol (`220 smtp ready`,
    /// `SSH-2.0-OpenSSH`, `+OK`, `* OK`).
    Banner,
    Other,
}

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

    fn as_str(self) -> &'static str {
        match self {
            PlaintextAnswer::Http => "http",
            PlaintextAnswer::Html => "html",
            PlaintextAnswer::Banner => "banner",
            PlaintextAnswer::Other => "other",
        }
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
