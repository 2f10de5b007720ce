//! Field case 1 of docs/field-cases.md: a server-initiated renegotiation.

use anyhow::Result;

use crate::{
    certs::{DEFAULT_CN, cert_args, s_client_args},
    clients::*,
    netns::Lab,
};

use super::{expect::*, runner::*};

pub(crate) fn reneg_tls12(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-tls1_2".to_string()];
    args.extend(cert_args(&tls)?);
    let mut srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let connect = s4(lab, 443);
    // -msg: s_client prints every handshake message, so the HelloRequest and the second
    // handshake can be waited for.
    let cli_args = s_client_args(connect, &tls.ca_cert, &["-tls1_2", "-msg"])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), "s_client-reneg", &cli_args)?;
    cli.write_stdin(b"hello from the client\n")?;
    srv.wait_for_output("hello from the client", T)?;
    srv.write_stdin(b"hello from the server\n")?;
    cli.wait_for_output("hello from the server", T)?;
    // `r`: renegotiate (TLS 1.2 and below), sending a HelloRequest.
    srv.write_stdin(b"r\n")?;
    srv.wait_for_output("SSL_do_handshake -> 1", T)?;
    cli.wait_for_output("], HelloRequest", T)?;
    wait_count(&cli, "], ClientHello\n", 2, T)?;
    wait_count(&cli, "], ServerHello\n", 2, T)?;
    cli.write_stdin(b"after renegotiation from the client\n")?;
    srv.wait_for_output("after renegotiation from the client", T)?;
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
