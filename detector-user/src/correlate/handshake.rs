//! Handshakes that ended before they finished, and fatal alerts.

use detector_common::{Side, tls::alert};
use serde_json::{Map, Value, json};

use super::{
    Found,
    session::{SeenAlert, Session},
};
use crate::{
    kernel::event::{Abort, Alert},
    output::diagnosis::{Kind, side_name},
};

/// How a handshake ended early: by what, from which side, with which alert.
pub(super) type HandshakeEnd = (Abort, Side, Option<Alert>);

/// The end in words: "a fatal alert unknown_ca from the server", "RST from the client".
pub(super) fn killed_by((how, sender, alert): HandshakeEnd) -> String {
    match (how, alert) {
        (Abort::Alert, Some(a)) => format!(
            "a fatal alert {} from the {}",
            alert::description_name(a.description),
            side_name(sender)
        ),
        _ => format!(
            "{} from the {}",
            how.as_str().to_uppercase(),
            side_name(sender)
        ),
    }
}

/// What every diagnosis of an ended handshake tells about the end.
pub(super) fn end_detail(s: &Session, (how, sender, alert): HandshakeEnd) -> Map<String, Value> {
    let mut detail = Map::new();
    detail.insert("sender".into(), json!(side_name(sender)));
    detail.insert("ended_by".into(), json!(how.as_str()));
    if let Some(a) = alert {
        detail.insert(
            "description".into(),
            json!(alert::description_name(a.description)),
        );
        detail.insert("code".into(), json!(a.description));
    }
    detail.insert("server_hello_seen".into(), json!(s.server_hello_seen));
    detail.insert("offered_versions".into(), json!(s.tls.offered()));
    detail
}

/// Handshake failures: a handshake the client did not try to resume, ended by a RST or FIN
/// before it finished. One ended by a plaintext fatal alert is diagnosed as fatal_alert,
/// with the end as context.
pub(super) fn handshake_reset(s: &Session) -> Option<Found> {
    let end = s.aborted?;
    if end.0 == Abort::Alert {
        return None;
    }
    let evidence = vec![format!(
        "the handshake was ended by {} after the ClientHello, {}",
        killed_by(end),
        if s.server_hello_seen {
            "after the ServerHello but before the handshake finished"
        } else {
            "with no ServerHello"
        }
    )];
    Some((Kind::HandshakeReset, evidence, end_detail(s, end)))
}

/// A plaintext fatal alert not explained by a protocol mismatch or a rejected resumption.
pub(super) fn fatal_alert(s: &Session) -> Option<Found> {
    let fatal: Vec<&SeenAlert> = s.alerts.iter().filter(|a| a.alert.level == 2).collect();
    let first = fatal.first()?;
    let mut evidence: Vec<String> = fatal
        .iter()
        .map(|a| {
            format!(
                "{} sent plaintext alert record 15 03 xx 00 02 {:02x} {:02x}: {} {} ({})",
                side_name(a.sender),
                a.alert.level,
                a.alert.description,
                alert::level_name(a.alert.level),
                alert::description_name(a.alert.description),
                a.alert.description
            )
        })
        .collect();
    if s.alerts_omitted > 0 {
        evidence.push(format!("and {} more alerts", s.alerts_omitted));
    }
    if s.aborted.is_some() {
        evidence.push("the handshake had not finished".into());
    }
    let mut detail = Map::new();
    detail.insert("sender".into(), json!(side_name(first.sender)));
    detail.insert("level".into(), json!(alert::level_name(first.alert.level)));
    detail.insert(
        "description".into(),
        json!(alert::description_name(first.alert.description)),
    );
    detail.insert("code".into(), json!(first.alert.description));
    detail.insert(
        "during_handshake".into(),
        json!(!s.tls.handshake_done() && !s.established),
    );
    detail.insert("alerts".into(), alerts_json(&s.alerts));
    Some((Kind::FatalAlert, evidence, detail))
}

pub(super) fn alerts_json(alerts: &[SeenAlert]) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                json!({
                    "sender": side_name(a.sender),
                    "level": alert::level_name(a.alert.level),
                    "description": alert::description_name(a.alert.description),
                    "code": a.alert.description,
                })
            })
            .collect(),
    )
}
