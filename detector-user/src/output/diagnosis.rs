//! What the agent reports: one diagnosis per failed session, with its evidence, printed as
//! one JSON object per line.

use std::{fmt, net::SocketAddr};

use detector_common::{Counter, Side};
use serde::{Serialize, Serializer};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{community_id::community_id, detail::Detail};

/// The closed set of diagnosis kinds (docs/field-cases.md). Metric label values come from
/// here, so cardinality stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ServerHelloRequest,
    ClientRenegotiation,
    ResumptionRejected,
    HttpToTlsPort,
    TlsToPlaintextPort,
    FatalAlert,
    IdleClose,
    RstAfterIdle,
    IdleTimeoutDrop,
    HandshakeReset,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::ServerHelloRequest,
        Kind::ClientRenegotiation,
        Kind::ResumptionRejected,
        Kind::HttpToTlsPort,
        Kind::TlsToPlaintextPort,
        Kind::FatalAlert,
        Kind::IdleClose,
        Kind::RstAfterIdle,
        Kind::IdleTimeoutDrop,
        Kind::HandshakeReset,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::ServerHelloRequest => "server_hello_request",
            Kind::ClientRenegotiation => "client_renegotiation",
            Kind::ResumptionRejected => "resumption_rejected",
            Kind::HttpToTlsPort => "http_to_tls_port",
            Kind::TlsToPlaintextPort => "tls_to_plaintext_port",
            Kind::FatalAlert => "fatal_alert",
            Kind::IdleClose => "idle_close",
            Kind::RstAfterIdle => "rst_after_idle",
            Kind::IdleTimeoutDrop => "idle_timeout_drop",
            Kind::HandshakeReset => "handshake_reset",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the detector declined to diagnose something: the closed label set of
/// `detector_abstained_total`. Not having seen something (a handshake older than the agent,
/// one side of a flow, the start of a renegotiation) is never evidence of failure, so these
/// are counted instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abstention {
    /// Kernel: a flow first seen mid-stream was answered by its peer, so it is healthy;
    /// it is adopted and never judged for the start the detector did not see.
    MidstreamAdopted,
    /// Kernel: a flow seen from one side only was answered by a RST only (a scan, a
    /// spoofed segment, a connection older than the agent): nothing two-sided was seen.
    UnconfirmedReset,
    /// Kernel: a RST or FIN that would have ended a handshake or closed after idle came
    /// after, or acknowledged, bytes the detector never saw (a capture drop, a packet
    /// outside its view): what happened in them is unknown.
    UnseenBytes,
    /// Agent: the kernel reported a handshake as ended early, but both sides had already
    /// sent application data after the ServerHello: the session was established, whatever
    /// its version code said.
    EstablishedByData,
    /// Agent: a side's renegotiation handshake answered the other side's, whose start is
    /// not among the session's events (judged with an earlier window, or its event lost).
    RenegotiationAnswerOnly,
}

impl Abstention {
    pub const ALL: [Abstention; 5] = [
        Abstention::MidstreamAdopted,
        Abstention::UnconfirmedReset,
        Abstention::UnseenBytes,
        Abstention::EstablishedByData,
        Abstention::RenegotiationAnswerOnly,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Abstention::MidstreamAdopted => "midstream_adopted",
            Abstention::UnconfirmedReset => "unconfirmed_reset",
            Abstention::UnseenBytes => "unseen_bytes",
            Abstention::EstablishedByData => "established_by_data",
            Abstention::RenegotiationAnswerOnly => "renegotiation_answer_only",
        }
    }

    /// The kernel counter that counts this reason, for reasons the kernel decides; the
    /// others are counted by the correlator.
    pub const fn kernel_counter(self) -> Option<Counter> {
        match self {
            Abstention::MidstreamAdopted => Some(Counter::MidstreamAdopted),
            Abstention::UnconfirmedReset => Some(Counter::UnconfirmedReset),
            Abstention::UnseenBytes => Some(Counter::UnseenBytes),
            Abstention::EstablishedByData | Abstention::RenegotiationAnswerOnly => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Diagnosis {
    pub ts: OffsetDateTime,
    pub kind: Kind,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub sni: Option<String>,
    /// Plain words naming the bytes and records seen.
    pub evidence: Vec<String>,
    pub detail: Detail,
}

impl Diagnosis {
    pub fn community_id(&self) -> Option<String> {
        community_id(self.client, self.server)
    }

    /// The JSON line printed on stdout, as a value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a diagnosis has only string keys")
    }

    /// The `detail` object as JSON, for readers that look fields up by name.
    pub fn detail_json(&self) -> Value {
        serde_json::to_value(&self.detail).expect("a detail has only string keys")
    }
}

/// The JSON line. Field order is fixed so that lines diff well. Every field is written
/// straight into the output (no string is built for it first): a busy agent writes many
/// lines a second.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "rfc3339")]
    ts: OffsetDateTime,
    kind: &'static str,
    #[serde(serialize_with = "endpoint")]
    client: SocketAddr,
    #[serde(serialize_with = "endpoint")]
    server: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    community_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
    #[serde(serialize_with = "display")]
    evidence: Joined<'a>,
    detail: &'a Detail,
}

impl Serialize for Diagnosis {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        Line {
            ts: self.ts,
            kind: self.kind.as_str(),
            client: self.client,
            server: self.server,
            community_id: self.community_id(),
            sni: self.sni.as_deref(),
            evidence: Joined(&self.evidence),
            detail: &self.detail,
        }
        .serialize(ser)
    }
}

/// The evidence sentences as one field, `; ` between them.
struct Joined<'a>(&'a [String]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, sentence) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(sentence)?;
        }
        Ok(())
    }
}

fn display<T: fmt::Display, S: Serializer>(v: &T, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(v)
}

/// An address formatted on the stack, then written as one string: written piece by piece
/// (`collect_str`), each of its many small pieces would be scanned for escapes apart.
fn endpoint<S: Serializer>(addr: &SocketAddr, ser: S) -> Result<S::Ok, S::Error> {
    use std::io::Write as _;
    // The longest is 62 bytes (`[ffff:…:255.255.255.255%4294967295]:65535`).
    const CAP: usize = 80;
    let mut buf = [0u8; CAP];
    let mut rest = &mut buf[..];
    match write!(rest, "{addr}") {
        Ok(()) => {
            let len = CAP - rest.len();
            ser.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
        }
        Err(_) => ser.collect_str(addr),
    }
}

/// RFC 3339, formatted on the stack; a time RFC 3339 cannot show (a year before 0) is an
/// empty string.
fn rfc3339<S: Serializer>(ts: &OffsetDateTime, ser: S) -> Result<S::Ok, S::Error> {
    // The longest RFC 3339 time is 35 bytes (`9999-12-31T23:59:59.999999999+23:59`).
    const CAP: usize = 48;
    let mut buf = [0u8; CAP];
    let mut rest = &mut buf[..];
    // What was written is what the slice lost at its front (`format_into`'s count is
    // not the whole length for every time).
    let len = match ts.format_into(&mut rest, &Rfc3339) {
        Ok(_) => CAP - rest.len(),
        Err(_) => 0,
    };
    ser.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
}

pub fn side_name(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Server => "server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::event::Alert,
        output::detail::{AlertDetail, FatalAlertDetail, KindDetail, SessionDetail},
    };

    #[test]
    fn kinds_are_listed_in_declaration_order() {
        // Metrics index per-kind handles by `kind as usize`.
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k}");
        }
    }

    #[test]
    fn json_line_has_the_contract_fields() {
        let alert = Alert {
            level: 2,
            description: 48,
        };
        let d = Diagnosis {
            ts: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            kind: Kind::FatalAlert,
            client: "[fd00::1]:40000".parse().unwrap(),
            server: "[fd00::2]:443".parse().unwrap(),
            sni: None,
            evidence: vec!["a".into(), "b".into()],
            detail: Detail {
                kind: KindDetail::FatalAlert(FatalAlertDetail {
                    first: AlertDetail::new(Side::Server, alert),
                    during_handshake: true,
                    alerts: vec![AlertDetail::new(Side::Server, alert)],
                }),
                session: SessionDetail {
                    ssl_history: Some("CsL".into()),
                    ..SessionDetail::default()
                },
            },
        };
        let v = d.to_json();
        assert_eq!(v["ts"], "2023-11-14T22:13:20Z");
        assert_eq!(v["kind"], "fatal_alert");
        assert_eq!(v["client"], "[fd00::1]:40000");
        assert_eq!(v["server"], "[fd00::2]:443");
        assert!(v["community_id"].as_str().unwrap().starts_with("1:"));
        assert!(v.get("sni").is_none());
        assert_eq!(v["evidence"], "a; b");
        // Kind's facts first, then the session's, in declaration order.
        assert_eq!(
            serde_json::to_string(&v["detail"]).unwrap(),
            r#"{"sender":"server","level":"fatal","description":"unknown_ca","code":48,"during_handshake":true,"alerts":[{"sender":"server","level":"fatal","description":"unknown_ca","code":48}],"ssl_history":"CsL"}"#
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), v.to_string());
    }

    /// The line as it was built before fields were written straight into the output:
    /// every field made into a string first.
    fn line_from_strings(d: &Diagnosis) -> String {
        #[derive(Serialize)]
        struct Owned<'a> {
            ts: String,
            kind: &'static str,
            client: String,
            server: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            community_id: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            sni: Option<&'a str>,
            evidence: String,
            detail: &'a Detail,
        }
        serde_json::to_string(&Owned {
            ts: d.ts.format(&Rfc3339).unwrap_or_default(),
            kind: d.kind.as_str(),
            client: d.client.to_string(),
            server: d.server.to_string(),
            community_id: d.community_id(),
            sni: d.sni.as_deref(),
            evidence: d.evidence.join("; "),
            detail: &d.detail,
        })
        .unwrap()
    }

    #[test]
    fn line_is_byte_identical_to_one_built_from_strings() {
        let detail = Detail {
            kind: KindDetail::FatalAlert(FatalAlertDetail {
                first: AlertDetail::new(
                    Side::Client,
                    Alert {
                        level: 2,
                        description: 40,
                    },
                ),
                during_handshake: false,
                alerts: vec![],
            }),
            session: SessionDetail::default(),
        };
        let base = Diagnosis {
            ts: OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap(),
            kind: Kind::FatalAlert,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:443".parse().unwrap(),
            sni: None,
            evidence: vec![],
            detail,
        };
        let cases = [
            base.clone(),
            Diagnosis {
                client: "[fd00::1:2]:1".parse().unwrap(),
                server: "[::ffff:10.0.0.2]:8443".parse().unwrap(),
                // Escaped for display, and JSON escapes its backslashes again.
                sni: Some(r#"a\\x22b\xe2\x80\xae.example"#.into()),
                evidence: vec!["one".into(), "two \"quoted\"".into(), String::new()],
                ..base.clone()
            },
            Diagnosis {
                // RFC 3339 cannot show a year before 0: an empty string, as before.
                ts: OffsetDateTime::from_unix_timestamp(-62_167_219_201).unwrap(),
                evidence: vec!["only".into()],
                // Different families (no connection has them): no community_id.
                server: "[fd00::2]:443".parse().unwrap(),
                ..base.clone()
            },
        ];
        for d in &cases {
            let line = serde_json::to_string(d).unwrap();
            assert_eq!(line, line_from_strings(d));
            assert_eq!(line, d.to_json().to_string());
        }
        let line = serde_json::to_string(&cases[0]).unwrap();
        assert!(
            line.starts_with(
                r#"{"ts":"2027-01-15T08:00:00.123456789Z","kind":"fatal_alert","client":"10.0.0.1:40000","server":"10.0.0.2:443","community_id":"1:"#
            ),
            "{line}"
        );
        assert!(line.contains(r#""evidence":"","#), "{line}");
        let line = serde_json::to_string(&cases[2]).unwrap();
        assert!(line.starts_with(r#"{"ts":"","#), "{line}");
        assert!(!line.contains("community_id"), "{line}");
    }
}
