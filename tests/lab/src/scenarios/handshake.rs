//! Handshake failures: an unknown CA, a protocol version, no shared cipher.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, ensure};

use crate::{
    certs::{DEFAULT_CN, cert_args, s_client_args},
    clients::*,
    netns::Lab,
};

use super::{expect::*, runner::*};

pub(crate) fn hs_unknown_ca(lab: &Lab) -> Result<Played> {
    let trusted = lab.tls_cert(DEFAULT_CN)?;
    let untrusted = lab.untrusted_cert()?;
    let srv = lab.s_server(lab.server_ns(), 443, &cert_args(&untrusted)?)?;
    let mut must = Vec::new();
    for (flags, client, server) in [
        (["-tls1_2", "-verify_return_error"], c4(lab), s4(lab, 443)),
        (
            ["-tls1_3", "-verify_return_error"],
            IpAddr::from(lab.client_v6()),
            SocketAddr::new(lab.server_v6().into(), 443),
        ),
    ] {
        let (ok, text) = run_text(lab, &s_client_args(server, &trusted.ca_cert, &flags)?)?;
        ensure!(
            !ok && text.contains("unable to get local issuer certificate"),
            "{flags:?}: expected an unknown-CA failure:\n{text}"
        );
        must.push(Must::new("fatal_alert", client, server, "client"));
    }
    Ok(Played::new(
        must,
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}

pub(crate) fn hs_protocol_version(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-tls1_3".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let server = s4(lab, 443);
    let (ok, text) = run_text(
        lab,
        &s_client_args(server, &tls.ca_cert, &["-tls1_2", "-verify_return_error"])?,
    )?;
    ensure!(
        !ok && text.contains("alert protocol version"),
        "expected a protocol_version alert:\n{text}"
    );
    Ok(Played::new(
        vec![Must::new("fatal_alert", c4(lab), server, "server")],
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}

pub(crate) fn hs_no_shared_cipher(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec![
        "-tls1_2".to_string(),
        "-cipher".into(),
        "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
    ];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let server = s4(lab, 443);
    let (ok, text) = run_text(
        lab,
        &s_client_args(
            server,
            &tls.ca_cert,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        )?,
    )?;
    ensure!(
        !ok && text.contains("alert handshake failure"),
        "expected a handshake_failure alert:\n{text}"
    );
    Ok(Played::new(
        vec![Must::new("fatal_alert", c4(lab), server, "server")],
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}
