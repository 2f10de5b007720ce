//! Field case 1 of docs/field-cases.md: a server-initiated renegotiation.

use std::net::SocketAddr;

use anyhow::Result;

use crate::{
    certs::{DEFAULT_CN, cert_args, s_client_args},
    clients::*,
    netns::Lab,
    process::LabProcess,
};

use super::{expect::*, runner::*};

/// A TLS 1.2 session between s_server and s_client (`-msg`, so every handshake message
/// shows) on the server's port 443, lines both ways, then the server renegotiates (`r`,
/// "Renegotiate the SSL session (TLSv1.2 and below only)", sends an encrypted
/// HelloRequest), the client runs the second handshake and sends a line the server has
/// read. Returns the server, the client (its stdin still open) and the server's address.
pub fn renegotiated_session(lab: &Lab) -> Result<(LabProcess, LabProcess, SocketAddr)> {
    let (mut srv, mut cli, connect) = tls12_session(lab, &[], "s_client-reneg")?;
    srv.write_stdin(b"r\n")?;
    srv.wait_for_output("SSL_do_handshake -> 1", T)?;
    cli.wait_for_output("], HelloRequest", T)?;
    // The client answers with a new ClientHello, and the server completes the handshake.
    after_second_handshake(&mut srv, &mut cli)?;
    Ok((srv, cli, connect))
}

/// A TLS 1.2 session between s_server (with `server_flags` too) and s_client `name`
/// (`-msg`: every handshake message shows) on the server's port 443, a line each way.
/// Returns the server, the client (its stdin open) and the server's address.
pub(crate) fn tls12_session(
    lab: &Lab,
    server_flags: &[&str],
    name: &str,
) -> Result<(LabProcess, LabProcess, SocketAddr)> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-tls1_2".to_string()];
    args.extend(server_flags.iter().map(|f| f.to_string()));
    args.extend(cert_args(&tls)?);
    let mut srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let connect = s4(lab, 443);
    let cli_args = s_client_args(connect, &tls.ca_cert, &["-tls1_2", "-msg"])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), name, &cli_args)?;
    cli.write_stdin(b"hello from the client\n")?;
    srv.wait_for_output("hello from the client", T)?;
    srv.write_stdin(b"hello from the server\n")?;
    cli.wait_for_output("hello from the server", T)?;
    Ok((srv, cli, connect))
}

/// Waits until the client has seen a second ClientHello and ServerHello (a renegotiation
/// done), then the client sends a line and the server reads it.
pub(crate) fn after_second_handshake(srv: &mut LabProcess, cli: &mut LabProcess) -> Result<()> {
    wait_count(cli, "], ClientHello\n", 2, T)?;
    wait_count(cli, "], ServerHello\n", 2, T)?;
    cli.write_stdin(b"after renegotiation from the client\n")?;
    srv.wait_for_output("after renegotiation from the client", T)
}

pub(crate) fn reneg_tls12(lab: &Lab) -> Result<Played> {
    let (srv, mut cli, connect) = renegotiated_session(lab)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(Played::new(
        vec![Must::new(
            "server_hello_request",
            c4(lab),
            connect,
            "server",
        )],
        MustNot::kinds(&[
            "client_renegotiation",
            "fatal_alert",
            "idle_close",
            "rst_after_idle",
        ]),
    )
    .keep(srv))
}
