//! Kernel events → per-session diagnoses.
//!
//! The kernel reports single packets; a diagnosis needs the session's story: an HTTP
//! request to port 443 is the cause, the server's `15 03 01 00 02 02 0a` a few
//! milliseconds later is its consequence, not a second failure. So events are held per
//! session until the session has been quiet for a correlation window, then judged together.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use detector_common::{PayloadClass, Side};
use serde_json::{Map, Value, json};

use crate::{
    clock::Clock,
    diagnosis::{
        Diagnosis, Kind, alert_description_name, alert_level_name, hex, show_bytes, side_name,
    },
    event::{Alert, KernelEvent},
};

type SessionKey = (SocketAddr, SocketAddr);

pub struct Correlator {
    clock: Clock,
    window_ns: u64,
    max_sessions: usize,
    sessions: HashMap<SessionKey, Session>,
    evicted: u64,
}

#[derive(Default)]
struct Session {
    first_ns: u64,
    last_ns: u64,
    tls_port: bool,
    client_first: Option<PayloadClass>,
    client_bytes: Option<Bytes>,
    server_first: Option<PayloadClass>,
    server_bytes: Option<Bytes>,
    alerts: Vec<SeenAlert>,
}

/// The first bytes of a payload, and whether the payload went on beyond them.
struct Bytes {
    head: Vec<u8>,
    cut: bool,
}

impl Bytes {
    fn shown(&self) -> String {
        let s = show_bytes(&self.head);
        if self.cut { format!("{s}...") } else { s }
    }
}

#[derive(Clone, Copy)]
struct SeenAlert {
    sender: Side,
    alert: Alert,
    tcp_seq: u32,
}

impl Correlator {
    pub fn new(clock: Clock, window: Duration, max_sessions: usize) -> Correlator {
        Correlator {
            clock,
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            max_sessions: max_sessions.max(1),
            sessions: HashMap::new(),
            evicted: 0,
        }
    }

    /// Sessions judged early because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Adds an event; returns diagnoses of sessions pushed out to make room.
    pub fn ingest(&mut self, e: &KernelEvent) -> Vec<Diagnosis> {
        let key = (e.client, e.server);
        let mut out = Vec::new();
        if !self.sessions.contains_key(&key) && self.sessions.len() >= self.max_sessions {
            // Judge the quietest session now rather than lose what it holds.
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_ns)
                .map(|(k, _)| *k)
            {
                let s = self.sessions.remove(&oldest).expect("key just found");
                self.evicted += 1;
                out.extend(self.judge(oldest, s));
            }
        }
        let s = self.sessions.entry(key).or_insert_with(|| Session {
            first_ns: e.ts_ns,
            ..Session::default()
        });
        s.last_ns = s.last_ns.max(e.ts_ns);
        s.tls_port |= e.tls_port;
        // The kernel sends each side's first-payload class with every event; keep the
        // first real one and the bytes of the packet that was that first payload.
        if e.client_first != PayloadClass::None {
            s.client_first.get_or_insert(e.client_first);
        }
        if e.server_first != PayloadClass::None {
            s.server_first.get_or_insert(e.server_first);
        }
        if e.protocol_mismatch {
            let slot = match e.sender {
                Side::Client => &mut s.client_bytes,
                Side::Server => &mut s.server_bytes,
            };
            slot.get_or_insert_with(|| Bytes {
                head: e.snippet.clone(),
                cut: e.payload_len as usize > e.snippet.len(),
            });
        }
        if let Some(alert) = e.plaintext_alert {
            // A retransmitted alert is the same alert.
            let dup = s
                .alerts
                .iter()
                .any(|a| a.sender == e.sender && a.tcp_seq == e.tcp_seq);
            if !dup {
                s.alerts.push(SeenAlert {
                    sender: e.sender,
                    alert,
                    tcp_seq: e.tcp_seq,
                });
            }
        }
        out
    }

    /// Judges sessions quiet for longer than the window at program time `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Diagnosis> {
        let window = self.window_ns;
        let done: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.last_ns) >= window)
            .map(|(k, _)| *k)
            .collect();
        self.take(done)
    }

    /// Judges every open session (end of a replay, shutdown).
    pub fn flush(&mut self) -> Vec<Diagnosis> {
        let all: Vec<SessionKey> = self.sessions.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, keys: Vec<SessionKey>) -> Vec<Diagnosis> {
        let mut sessions: Vec<(SessionKey, Session)> = keys
            .into_iter()
            .filter_map(|k| self.sessions.remove(&k).map(|s| (k, s)))
            .collect();
        // Output in time order, whatever order the hash map holds them in.
        sessions.sort_by_key(|(k, s)| (s.first_ns, *k));
        sessions
            .into_iter()
            .flat_map(|(k, s)| self.judge(k, s))
            .collect()
    }

    fn judge(&self, (client, server): SessionKey, s: Session) -> Vec<Diagnosis> {
        let make = |kind, evidence, detail| Diagnosis {
            ts: self.clock.to_wall(s.first_ns),
            kind,
            client,
            server,
            sni: None,
            evidence,
            detail,
        };
        let mut out = Vec::new();
        let server_alerts: Vec<&SeenAlert> = s
            .alerts
            .iter()
            .filter(|a| a.sender == Side::Server)
            .collect();
        let mut alerts_explained = false;

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
                        alert_level_name(a.alert.level),
                        alert_description_name(a.alert.description)
                    ));
                }
                alerts_explained = true;
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
                out.push(make(Kind::HttpToTlsPort, evidence, detail));
            }
            (Some(PayloadClass::ClientHello), Some(PayloadClass::HttpResponse)) => {
                let evidence = vec![
                    format!(
                        "client's first payload is a TLS ClientHello (record type 22, \
                         handshake type 1) to port {}",
                        server.port()
                    ),
                    format!(
                        "server answered in plaintext HTTP: {}",
                        s.server_bytes
                            .as_ref()
                            .map(Bytes::shown)
                            .unwrap_or_default()
                    ),
                ];
                let mut detail = Map::new();
                detail.insert("sender".into(), json!("server"));
                if let Some(b) = &s.server_bytes {
                    detail.insert("server_bytes".into(), json!(hex(&b.head)));
                }
                out.push(make(Kind::TlsToPlaintextPort, evidence, detail));
            }
            _ => {}
        }

        if !alerts_explained {
            let fatal: Vec<&SeenAlert> = s.alerts.iter().filter(|a| a.alert.level == 2).collect();
            if let Some(first) = fatal.first() {
                let evidence = fatal
                    .iter()
                    .map(|a| {
                        format!(
                            "{} sent plaintext alert record 15 03 xx 00 02 {:02x} {:02x}: {} {} ({})",
                            side_name(a.sender),
                            a.alert.level,
                            a.alert.description,
                            alert_level_name(a.alert.level),
                            alert_description_name(a.alert.description),
                            a.alert.description
                        )
                    })
                    .collect();
                let mut detail = Map::new();
                detail.insert("sender".into(), json!(side_name(first.sender)));
                detail.insert("level".into(), json!(alert_level_name(first.alert.level)));
                detail.insert(
                    "description".into(),
                    json!(alert_description_name(first.alert.description)),
                );
                detail.insert("code".into(), json!(first.alert.description));
                detail.insert("alerts".into(), alerts_json(&s.alerts));
                out.push(make(Kind::FatalAlert, evidence, detail));
            }
        }
        out
    }
}

fn alerts_json(alerts: &[SeenAlert]) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                json!({
                    "sender": side_name(a.sender),
                    "level": alert_level_name(a.alert.level),
                    "description": alert_description_name(a.alert.description),
                    "code": a.alert.description,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sender: Side) -> KernelEvent {
        KernelEvent {
            ts_ns: 1_000,
            flow_first_seen_ns: 0,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:443".parse().unwrap(),
            sender,
            plaintext_alert: None,
            protocol_mismatch: false,
            client_first: PayloadClass::None,
            server_first: PayloadClass::None,
            handshake_seen: true,
            tls_port: true,
            snippet: vec![],
            tcp_seq: 1,
            payload_len: 0,
        }
    }

    fn correlator() -> Correlator {
        Correlator::new(Clock::Capture, Duration::from_secs(1), 16)
    }

    #[test]
    fn http_request_and_server_alert_make_one_diagnosis() {
        let mut c = correlator();
        let mut req = event(Side::Client);
        req.protocol_mismatch = true;
        req.client_first = PayloadClass::HttpRequest;
        req.snippet = b"GET / HTTP/1.1\r\nHo".to_vec();
        req.payload_len = 40;
        let mut answer = event(Side::Server);
        answer.ts_ns = 2_000;
        answer.protocol_mismatch = true;
        answer.client_first = PayloadClass::HttpRequest;
        answer.server_first = PayloadClass::TlsRecord;
        answer.plaintext_alert = Some(Alert {
            level: 2,
            description: 10,
        });
        answer.snippet = vec![0x15, 3, 1, 0, 2, 2, 10];
        assert!(c.ingest(&req).is_empty());
        assert!(c.ingest(&answer).is_empty());
        assert!(
            c.expire(2_000 + 999_999_999).is_empty(),
            "window not over yet"
        );
        let d = c.expire(2_000 + 1_000_000_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::HttpToTlsPort);
        assert_eq!(d[0].detail["server_answer"], "tls_alert");
        let ev = d[0].evidence.join("; ");
        assert!(ev.contains("'GET / HTTP/1.1'..."), "{ev}");
        assert!(ev.contains("fatal unexpected_message"), "{ev}");
        assert_eq!(c.open_sessions(), 0);
    }

    #[test]
    fn lone_fatal_alert_names_sender_and_description() {
        let mut c = correlator();
        let mut a = event(Side::Client);
        a.plaintext_alert = Some(Alert {
            level: 2,
            description: 48,
        });
        c.ingest(&a);
        c.ingest(&a); // retransmission
        let d = c.flush();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::FatalAlert);
        assert_eq!(d[0].detail["sender"], "client");
        assert_eq!(d[0].detail["description"], "unknown_ca");
        assert_eq!(d[0].detail["alerts"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn warning_alert_alone_is_no_diagnosis() {
        let mut c = correlator();
        let mut a = event(Side::Server);
        a.plaintext_alert = Some(Alert {
            level: 1,
            description: 0,
        });
        c.ingest(&a);
        assert!(c.flush().is_empty());
    }

    #[test]
    fn full_table_judges_the_quietest_session_instead_of_losing_it() {
        let mut c = Correlator::new(Clock::Capture, Duration::from_secs(1), 1);
        let mut a = event(Side::Server);
        a.plaintext_alert = Some(Alert {
            level: 2,
            description: 40,
        });
        c.ingest(&a);
        let mut b = a.clone();
        b.client = "10.0.0.9:1".parse().unwrap();
        let pushed = c.ingest(&b);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].client, a.client);
        assert_eq!(c.evicted(), 1);
    }
}
