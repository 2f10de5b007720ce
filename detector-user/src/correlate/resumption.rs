//! Field case 2: a resumption the server would not take, and the handshake it ended.

use super::{
    Found,
    handshake::{end_detail, killed_by},
    session::Session,
};
use crate::{
    kernel::event::{ResumptionMethod, TlsFacts},
    output::{
        detail::{HandshakeEndDetail, KindDetail, Resumption},
        diagnosis::Kind,
    },
};

/// A handshake in which the client offered to resume, ended before it finished (by an
/// alert, a RST or a FIN): the failed resumption is the root cause, and explains any
/// alert that ended it.
pub(super) fn resumption_rejected(s: &Session) -> Option<Found> {
    let end = s.aborted?;
    let method = s.tls.resumption_offered()?;
    let accepted = s.tls.resumption_accepted();
    let evidence = vec![
        format!(
            "client offered to resume a cached session ({})",
            method_words(method, &s.tls)
        ),
        if !s.server_hello_seen {
            "no ServerHello came back".into()
        } else if accepted {
            "the server accepted the resumption (echoed the session / abbreviated handshake)".into()
        } else {
            "the server did not accept it (full handshake)".into()
        },
        format!(
            "the handshake was ended by {} before it finished",
            killed_by(end)
        ),
    ];
    let detail = HandshakeEndDetail {
        resumption: Some(Resumption { method, accepted }),
        ..end_detail(s, end)
    };
    Some((
        Kind::ResumptionRejected,
        evidence,
        KindDetail::HandshakeEnd(detail),
    ))
}

fn method_words(method: ResumptionMethod, tls: &TlsFacts) -> String {
    match method {
        ResumptionMethod::Tls13Psk => "TLS 1.3 pre_shared_key extension".into(),
        ResumptionMethod::Tls12SessionTicket => format!(
            "TLS 1.2 session_ticket extension, {} bytes",
            tls.session_ticket_len
        ),
        ResumptionMethod::Tls12SessionId => {
            format!("TLS 1.2 session ID, {} bytes", tls.session_id_len)
        }
    }
}
