//! Field case 2 of docs/field-cases.md: resumption rejected by an inline inspector.

use std::{net::SocketAddr, path::Path};

use anyhow::{Result, ensure};

use crate::{
    certs::{DEFAULT_CN, cert_args},
    clients::*,
    netns::Lab,
    relay::{Relay, Resumption, Verdict},
};

use super::{expect::*, runner::*};

/// The relay ([`crate::relay`]) plays the inspecting firewall in front of s_server: it listens
/// on the server's address, port 443, and forwards to s_server on the server's loopback,
/// so the router sees client ↔ inspector traffic like the field's capture points did. A
/// full handshake first (forwarded, nothing to diagnose) saves the session; the second
/// connection offers it, and the relay kills it with a plaintext handshake_failure alert.
pub(crate) fn resume_rejected(lab: &Lab, method: Resumption, flags: &[&str]) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 4433, &args)?;
    let listen = s4(lab, 443);
    let relay = Relay::start(
        Some(lab.server_ns()),
        listen,
        SocketAddr::from(([127, 0, 0, 1], 4433)),
    )?;
    let (first, ok, text) = resume_offered(lab, listen, &tls.ca_cert, method, flags)?;
    ensure!(
        session_line(&first).starts_with("New, "),
        "{method}: first handshake: {first}"
    );
    ensure!(
        !ok && text.contains("alert handshake failure"),
        "{method}: the resuming client should have got the relay's alert:\n{text}"
    );
    let conns = relay.wait_connections(2, T)?;
    ensure!(
        conns[0].verdict == Verdict::Forwarded && conns[1].verdict == Verdict::Rejected(method),
        "{method}: relay verdicts {conns:#?}"
    );
    Ok(Played::new(
        vec![Must::new("resumption_rejected", c4(lab), listen, "server")],
        MustNot::kinds(&["fatal_alert", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv)
    .keep(relay))
}

pub(crate) fn resume_rejected_tls12_id(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls12SessionId, &["-tls1_2", "-no_ticket"])
}

pub(crate) fn resume_rejected_tls12_ticket(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls12SessionTicket, &["-tls1_2"])
}

pub(crate) fn resume_rejected_tls13_psk(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls13Psk, &["-tls1_3"])
}

/// Two s_client connections to `server` (an s_server `-www`, or a relay in front of one)
/// with `flags`: a full handshake that saves its session to LAB_DIR/METHOD.sess, then one
/// that offers it. Returns the first's output, and whether the second succeeded with its
/// output.
pub fn resume_offered(
    lab: &Lab,
    server: SocketAddr,
    ca: &Path,
    method: Resumption,
    flags: &[&str],
) -> Result<(String, bool, String)> {
    let method = method.as_str();
    let (out, resume) = save_session(lab, server, ca, (method, method), flags)?;
    let (ok, text) = run_text(lab, &resume)?;
    Ok((out, ok, text))
}
