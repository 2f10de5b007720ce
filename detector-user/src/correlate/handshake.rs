//! Handshakes that ended before they finished, and fatal alerts.

use detector_common::{Side, tls::alert};

use super::{
    Found,
    session::{SeenAlert, Session},
};
use crate::{
    kernel::event::{Abort, Alert},
    output::{
        detail::{AlertDetail, FatalAlertDetail, HandshakeEndDetail, KindDetail},
        diagnosis::{Kind, side_name},
    },
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
pub(super) fn end_detail(s: &Session, (how, sender, alert): HandshakeEnd) -> HandshakeEndDetail {
    HandshakeEndDetail {
        sender,
        ended_by: how,
        alert: alert.map(Into::into),
        server_hello_seen: s.server_hello_seen,
        offered_versions: s.tls.offered(),
        resumption: None,
    }
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
    let detail = KindDetail::HandshakeEnd(end_detail(s, end));
    Some((Kind::HandshakeReset, evidence, detail))
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
    let detail = FatalAlertDetail {
        first: AlertDetail::new(first.sender, first.alert),
        during_handshake: !s.tls.handshake_done() && !s.established,
        alerts: alerts_detail(&s.alerts),
    };
    Some((Kind::FatalAlert, evidence, KindDetail::FatalAlert(detail)))
}

pub(super) fn alerts_detail(alerts: &[SeenAlert]) -> Vec<AlertDetail> {
    alerts
        .iter()
        .map(|a| AlertDetail::new(a.sender, a.alert))
        .collect()
}
