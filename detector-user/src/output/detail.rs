//! A diagnosis's `detail` object: one typed struct per family of kinds, with the facts every
//! diagnosis of a session shares. Field order is the JSON key order, which is part of the
//! output contract (lines diff well, and consumers compare them), so fields are listed in
//! the order they appear, optional ones skipped when absent.

use std::borrow::Cow;

use detector_common::{Side, tls::alert};
use serde::{Serialize, Serializer};

use super::diagnosis::side_name;
use crate::kernel::event::{Abort, Alert, ResumptionMethod};

#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub kind: KindDetail,
    #[serde(flatten)]
    pub session: SessionDetail,
}

impl Detail {
    /// The idle gap the diagnosis rests on, where one was measured.
    pub fn gap_s(&self) -> Option<f64> {
        match &self.kind {
            KindDetail::Idle(IdleDetail::Drop { gap_s, .. }) => *gap_s,
            KindDetail::Idle(IdleDetail::End { gap_s, .. }) => Some(*gap_s),
            _ => None,
        }
    }
}

/// What the judge of the diagnosis's kind found.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum KindDetail {
    Renegotiation(RenegotiationDetail),
    Idle(IdleDetail),
    Mismatch(MismatchDetail),
    HandshakeEnd(HandshakeEndDetail),
    FatalAlert(FatalAlertDetail),
}

/// What the session tells, whatever went wrong in it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_history: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "is_false")]
    pub midstream: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub alerts_omitted: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub encrypted_alerts_omitted: u32,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum RenegotiationDetail {
    ServerHelloRequest {
        #[serde(serialize_with = "side")]
        sender: Side,
        /// The request came inside an encrypted record, not as a plaintext HelloRequest.
        encrypted: bool,
        client_renegotiated: bool,
    },
    ClientRenegotiation {
        #[serde(serialize_with = "side")]
        sender: Side,
        encrypted: bool,
        server_answered: bool,
    },
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum IdleDetail {
    /// The path dropped the flow: its resumption went unanswered, or was reset.
    Drop {
        #[serde(flatten)]
        context: IdleContext,
        #[serde(serialize_with = "side")]
        sender: Side,
        how: IdleDropHow,
        /// Unknown for a flow first seen mid-stream.
        #[serde(skip_serializing_if = "Option::is_none")]
        gap_s: Option<f64>,
    },
    /// A side ended the flow after the gap.
    End {
        #[serde(flatten)]
        context: IdleContext,
        #[serde(serialize_with = "side")]
        sender: Side,
        gap_s: f64,
        how: IdleEndHow,
    },
}

/// The idle threshold in force, and what the path's timeout is estimated at.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct IdleContext {
    pub idle_threshold_s: f64,
    #[serde(flatten)]
    pub inferred: Option<TimeoutEstimate>,
}

/// The idle timeout on the path to one server endpoint, as estimated from its flows' gaps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TimeoutEstimate {
    #[serde(rename = "inferred_idle_timeout_s")]
    pub seconds: f64,
    /// Flows whose idle gaps the estimate rests on.
    #[serde(rename = "inferred_from_flows")]
    pub flows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleDropHow {
    /// Resumed after a gap, then retransmitted with no answer.
    UnansweredRetransmission,
    /// Resumed after a gap and answered by a RST.
    RstAnswer,
    /// First seen mid-stream, then retransmitted with no answer.
    MidstreamUnansweredRetransmission,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleEndHow {
    Rst,
    Fin,
    EncryptedAlert,
    #[serde(rename = "tls13_close_heuristic")]
    Tls13CloseHeuristic,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum MismatchDetail {
    HttpToTlsPort {
        #[serde(serialize_with = "side")]
        sender: Side,
        tls_port: bool,
        server_answer: ServerAnswer,
        /// Hex of the first bytes.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_bytes: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        server_bytes: Option<String>,
        alerts: Vec<AlertDetail>,
    },
    TlsToPlaintextPort {
        #[serde(serialize_with = "side")]
        sender: Side,
        answer: PlaintextAnswer,
        #[serde(skip_serializing_if = "Option::is_none")]
        server_bytes: Option<String>,
    },
}

/// How a server answered a plaintext HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerAnswer {
    TlsAlert,
    Tls,
    Http,
    NoneSeen,
    Other,
}

/// What a plaintext server sent back to a ClientHello, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaintextAnswer {
    /// An HTTP status line (`HTTP/1.1 400 Bad Request`).
    Http,
    /// An HTML page with no status line (Python's `http.server` error page, `<!DOCTYPE`).
    Html,
    /// A printable text line: the greeting of a line protocol (`220 smtp ready`,
    /// `SSH-2.0-OpenSSH`, `+OK`, `* OK`).
    Banner,
    Other,
}

/// A handshake ended before it finished (handshake_reset, resumption_rejected).
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeEndDetail {
    #[serde(serialize_with = "side")]
    pub sender: Side,
    #[serde(serialize_with = "abort")]
    pub ended_by: Abort,
    #[serde(flatten)]
    pub alert: Option<AlertCode>,
    pub server_hello_seen: bool,
    pub offered_versions: Vec<Cow<'static, str>>,
    #[serde(flatten)]
    pub resumption: Option<Resumption>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct AlertCode {
    pub description: &'static str,
    pub code: u8,
}

impl From<Alert> for AlertCode {
    fn from(a: Alert) -> AlertCode {
        AlertCode {
            description: alert::description_name(a.description),
            code: a.description,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Resumption {
    pub method: ResumptionMethod,
    pub accepted: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FatalAlertDetail {
    /// The first fatal alert.
    #[serde(flatten)]
    pub first: AlertDetail,
    pub during_handshake: bool,
    pub alerts: Vec<AlertDetail>,
}

/// One plaintext alert, as seen on the wire.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AlertDetail {
    #[serde(serialize_with = "side")]
    pub sender: Side,
    pub level: &'static str,
    pub description: &'static str,
    pub code: u8,
}

impl AlertDetail {
    pub fn new(sender: Side, a: Alert) -> AlertDetail {
        AlertDetail {
            sender,
            level: alert::level_name(a.level),
            description: alert::description_name(a.description),
            code: a.description,
        }
    }
}

fn side<S: Serializer>(s: &Side, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(side_name(*s))
}

fn abort<S: Serializer>(a: &Abort, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(a.as_str())
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
