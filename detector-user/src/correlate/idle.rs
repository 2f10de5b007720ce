//! Field cases 4 and 5: flows ended, or dropped, after they had been idle.

use serde_json::{Map, json};

use super::{
    Found,
    session::{IdleDrop, IdleHow, Session},
    timeout::TimeoutEstimate,
};
use crate::output::diagnosis::{Kind, side_name};

/// Field cases 4 and 5: what ended, or dropped, a flow after it had been idle.
pub(super) fn idle(s: &Session, idle_ns: u64, estimate: Option<TimeoutEstimate>) -> Option<Found> {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut detail = Map::new();
    detail.insert("idle_threshold_s".into(), json!(secs(idle_ns)));
    if let Some(est) = estimate {
        detail.insert("inferred_idle_timeout_s".into(), json!(est.seconds));
        detail.insert("inferred_from_flows".into(), json!(est.flows));
    }
    let inferred = estimate
        .map(|e| {
            format!(
                "; idle timeout on the path to this server estimated at {:.1} s from {} flows",
                e.seconds, e.flows
            )
        })
        .unwrap_or_default();
    if let Some((how, side, gap)) = s.idle_drop {
        let mut evidence = vec![match how {
            IdleDrop::Retransmission => format!(
                "{} resumed after {:.1} s idle and retransmitted with no answer: something on \
                 the path forgot the flow{inferred}",
                side_name(side),
                secs(gap)
            ),
            IdleDrop::RstAnswer => format!(
                "the flow resumed after {:.1} s idle and the {} answered with a RST: the peer \
                 or something on the path forgot the flow{inferred}",
                secs(gap),
                side_name(side)
            ),
            IdleDrop::Midstream => format!(
                "flow first seen mid-stream (no handshake) after the detector had run longer \
                 than the idle threshold, and the {} retransmitted with no answer: the path \
                 lost its state or sent its start elsewhere",
                side_name(side)
            ),
        }];
        if let Some(end) = s.idle_end.filter(|e| e.how == IdleHow::Rst) {
            evidence.push(format!("then a RST from the {}", side_name(end.sender)));
        }
        detail.insert("sender".into(), json!(side_name(side)));
        detail.insert(
            "how".into(),
            json!(match how {
                IdleDrop::Retransmission => "unanswered_retransmission",
                IdleDrop::RstAnswer => "rst_answer",
                IdleDrop::Midstream => "midstream_unanswered_retransmission",
            }),
        );
        if how != IdleDrop::Midstream {
            detail.insert("gap_s".into(), json!(secs(gap)));
        }
        return Some((Kind::IdleTimeoutDrop, evidence, detail));
    }
    let end = s.idle_end?;
    let who = side_name(end.sender);
    let gap = secs(end.gap_ns);
    detail.insert("sender".into(), json!(who));
    detail.insert("gap_s".into(), json!(gap));
    let (kind, how, words) = match end.how {
        IdleHow::Rst => (
            Kind::RstAfterIdle,
            "rst",
            format!("{who} sent RST after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::Fin => (
            Kind::IdleClose,
            "fin",
            format!("{who} closed (FIN, no alert) after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::EncryptedAlert(len) => (
            Kind::IdleClose,
            "encrypted_alert",
            format!(
                "{who} sent an encrypted alert ({len} bytes; after idle, a close_notify){} \
                 after the flow was idle for {gap:.1} s",
                if end.fin { " with FIN" } else { "" }
            ),
        ),
        IdleHow::Tls13Close => (
            Kind::IdleClose,
            "tls13_close_heuristic",
            format!(
                "{who} sent a short final TLS 1.3 record (close_notify sized, a heuristic) and \
                 closed after the flow was idle for {gap:.1} s"
            ),
        ),
    };
    detail.insert("how".into(), json!(how));
    Some((kind, vec![format!("{words}{inferred}")], detail))
}
