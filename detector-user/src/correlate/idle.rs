//! Field cases 4 and 5: flows ended, or dropped, after they had been idle.

use super::{
    Found,
    session::{IdleHow, Session},
};
use crate::output::{
    detail::{IdleContext, IdleDetail, IdleDropHow, IdleEndHow, KindDetail, TimeoutEstimate},
    diagnosis::{Kind, side_name},
};

/// What ended, or dropped, a flow after it had been idle.
pub(super) fn idle(s: &Session, idle_ns: u64, estimate: Option<TimeoutEstimate>) -> Option<Found> {
    let secs = |ns: u64| ns as f64 / 1e9;
    let context = IdleContext {
        idle_threshold_s: secs(idle_ns),
        inferred: estimate,
    };
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
            IdleDropHow::UnansweredRetransmission => format!(
                "{} resumed after {:.1} s idle and retransmitted with no answer: something on \
                 the path forgot the flow{inferred}",
                side_name(side),
                secs(gap)
            ),
            IdleDropHow::RstAnswer => format!(
                "the flow resumed after {:.1} s idle and the {} answered with a RST: the peer \
                 or something on the path forgot the flow{inferred}",
                secs(gap),
                side_name(side)
            ),
            IdleDropHow::MidstreamUnansweredRetransmission => format!(
                "flow first seen mid-stream (no handshake) after the detector had run longer \
                 than the idle threshold, and the {} retransmitted with no answer: the path \
                 lost its state or sent its start elsewhere",
                side_name(side)
            ),
        }];
        if let Some(end) = s.idle_end.filter(|e| e.how == IdleHow::Rst) {
            evidence.push(format!("then a RST from the {}", side_name(end.sender)));
        }
        let detail = IdleDetail::Drop {
            context,
            sender: side,
            how,
            // A flow first seen mid-stream resumed after a gap nobody measured.
            gap_s: (how != IdleDropHow::MidstreamUnansweredRetransmission).then(|| secs(gap)),
        };
        return Some((Kind::IdleTimeoutDrop, evidence, KindDetail::Idle(detail)));
    }
    let end = s.idle_end?;
    let who = side_name(end.sender);
    let gap = secs(end.gap_ns);
    let (kind, how, words) = match end.how {
        IdleHow::Rst => (
            Kind::RstAfterIdle,
            IdleEndHow::Rst,
            format!("{who} sent RST after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::Fin => (
            Kind::IdleClose,
            IdleEndHow::Fin,
            format!("{who} closed (FIN, no alert) after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::EncryptedAlert(len) => (
            Kind::IdleClose,
            IdleEndHow::EncryptedAlert,
            format!(
                "{who} sent an encrypted alert ({len} bytes; after idle, a close_notify){} \
                 after the flow was idle for {gap:.1} s",
                if end.fin { " with FIN" } else { "" }
            ),
        ),
        IdleHow::Tls13Close => (
            Kind::IdleClose,
            IdleEndHow::Tls13CloseHeuristic,
            format!(
                "{who} sent a short final TLS 1.3 record (close_notify sized, a heuristic) and \
                 closed after the flow was idle for {gap:.1} s"
            ),
        ),
    };
    let detail = IdleDetail::End {
        context,
        sender: end.sender,
        gap_s: gap,
        how,
    };
    Some((
        kind,
        vec![format!("{words}{inferred}")],
        KindDetail::Idle(detail),
    ))
}
