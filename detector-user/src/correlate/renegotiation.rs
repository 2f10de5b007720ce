//! Field case 1: renegotiation, and which side started it.

use detector_common::Side;

use super::{
    Found,
    session::{Renegotiation, Session},
};
use crate::output::{
    detail::{KindDetail, RenegotiationDetail},
    diagnosis::{Abstention, Kind, side_name},
};

/// Field case 1: who started a renegotiation. Attribution follows who sent the first
/// handshake record after application data (a plaintext HelloRequest is the server's);
/// the other side's handshake records are its answer, told in the same diagnosis, never a
/// second one. Errs with the abstention when the session holds only an answer, whose
/// start was judged with an earlier window or lost.
pub(super) fn renegotiation(s: &Session, found: &mut Vec<Found>) -> Result<(), Abstention> {
    let server = s.renegotiation[Side::Server as usize];
    let client = s.renegotiation[Side::Client as usize];
    if server.is_none() && client.is_none() && s.hello_request_ns.is_none() {
        return Ok(());
    }
    let start = |r: Option<Renegotiation>| r.filter(|r| !r.answering).map(|r| r.ts_ns);
    let server_start = match (s.hello_request_ns, start(server)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let initiator = match (server_start, start(client)) {
        (Some(sv), Some(cl)) if cl < sv => Side::Client,
        (Some(_), _) => Side::Server,
        (None, Some(_)) => Side::Client,
        (None, None) => return Err(Abstention::RenegotiationAnswerOnly),
    };
    let record = |side: &str, r: Renegotiation| {
        if r.record_len == 0 {
            format!("a plaintext {side}")
        } else {
            format!("an encrypted handshake record ({} bytes)", r.record_len)
        }
    };
    let mut evidence = Vec::new();
    let (kind, detail) = match initiator {
        Side::Server => {
            if s.hello_request_ns.is_some() {
                evidence.push(
                    "server sent a plaintext HelloRequest (handshake type 0, empty body: \
                     16 03 0x 00 04 00 00 00 00)"
                        .to_string(),
                );
            }
            if let Some(r) = server.filter(|r| !r.answering) {
                evidence.push(format!(
                    "server sent {} after application data had flowed, before any from the \
                     client: a HelloRequest (TLS 1.2 renegotiation request)",
                    record("HelloRequest", r)
                ));
            }
            if let Some(r) = client {
                evidence.push(format!(
                    "client answered with a renegotiation handshake: {}",
                    record("ClientHello", r)
                ));
            }
            let detail = RenegotiationDetail::ServerHelloRequest {
                sender: initiator,
                encrypted: s.hello_request_ns.is_none(),
                client_renegotiated: client.is_some(),
            };
            (Kind::ServerHelloRequest, detail)
        }
        Side::Client => {
            let r = client.expect("the client started it");
            evidence.push(format!(
                "client sent {} after application data had flowed, before any from the \
                 server: client-initiated renegotiation (TLS 1.2 or older)",
                record("ClientHello", r)
            ));
            if let Some(answer) = server {
                evidence.push(format!(
                    "server answered with {}",
                    record("handshake record", answer)
                ));
            }
            let detail = RenegotiationDetail::ClientRenegotiation {
                sender: initiator,
                encrypted: r.record_len != 0,
                server_answered: server.is_some(),
            };
            (Kind::ClientRenegotiation, detail)
        }
    };
    for (side, len) in s.encrypted_alerts.iter() {
        evidence.push(format!(
            "{} then sent an encrypted alert ({len} bytes)",
            side_name(*side)
        ));
    }
    if s.encrypted_alerts_omitted > 0 {
        evidence.push(format!(
            "and {} more encrypted alerts",
            s.encrypted_alerts_omitted
        ));
    }
    found.push((kind, evidence, KindDetail::Renegotiation(detail)));
    Ok(())
}
