//! Field case 4 of docs/field-cases.md: the reverse proxy's keep-alive timeout.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};

use crate::{
    certs::{DEFAULT_CN, s_client_args},
    clients::*,
    netns::Lab,
    process::LabProcess,
    servers::{Nginx, NginxSite},
    util::tail,
};

use super::{expect::*, runner::*, *};

/// s_client sends one HTTP/1.1 request on a keep-alive connection and stays connected;
/// nginx closes it after `keepalive_timeout` of quiet (TLS 1.2: an encrypted alert record
/// and FIN; TLS 1.3: a 19-byte application-data record, the close_notify, and FIN).
pub(crate) fn idle_close_nginx(lab: &Lab, version: &str) -> Result<Played> {
    let nginx = keepalive_nginx(lab)?;
    let connect = s4(lab, 443);
    let cli = keepalive_request(lab, &nginx, version)?;
    wait_server_close(&cli)?;
    Ok(Played::new(
        vec![idle_close_by_nginx(lab, connect)],
        MustNot::kinds(&[
            "rst_after_idle",
            "idle_timeout_drop",
            "fatal_alert",
            "handshake_reset",
        ]),
    )
    .keep(nginx))
}

/// One HTTP/1.1 request on a keep-alive connection to `nginx` (port 443), answered; the
/// connection then stays open (stdin too) until nginx closes it.
pub(crate) fn keepalive_request(lab: &Lab, nginx: &Nginx, version: &str) -> Result<LabProcess> {
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let args = s_client_args(s4(lab, 443), &tls.ca_cert, &[version])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), &format!("s_client{version}"), &args)?;
    cli.wait_for_output("Verify return code", T)?;
    cli.write_stdin(format!("GET / HTTP/1.1\r\nHost: {DEFAULT_CN}\r\n\r\n").as_bytes())?;
    cli.wait_for_output("HTTP/1.1 200 OK", T)?;
    Ok(cli)
}

/// nginx closes; s_client reads the close_notify and exits. Stdin stays open, so the close
/// is nginx's.
pub(crate) fn wait_server_close(cli: &LabProcess) -> Result<()> {
    let status = cli
        .wait_timeout(Duration::from_secs(u64::from(KEEPALIVE_TIMEOUT_S) + 10))
        .context("nginx did not close the idle keep-alive connection")?;
    ensure!(
        cli.output().contains("closed"),
        "s_client exited ({status}) without seeing nginx close:\n{}",
        tail(&cli.output(), 3000)
    );
    Ok(())
}

/// The diagnosis nginx's keep-alive close must give.
pub(crate) fn idle_close_by_nginx(lab: &Lab, connect: SocketAddr) -> Must {
    Must::new("idle_close", c4(lab), connect, "server").gap(f64::from(KEEPALIVE_TIMEOUT_S), 0.5)
}

pub(crate) fn idle_close_nginx_tls12(lab: &Lab) -> Result<Played> {
    idle_close_nginx(lab, "-tls1_2")
}

pub(crate) fn idle_close_nginx_tls13(lab: &Lab) -> Result<Played> {
    idle_close_nginx(lab, "-tls1_3")
}

/// nginx over TLS 1.2 and 1.3 on the server's port 443, closing keep-alive connections
/// after [`KEEPALIVE_TIMEOUT_S`] of quiet.
pub(crate) fn keepalive_nginx(lab: &Lab) -> Result<Nginx> {
    lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            keepalive_timeout_s: Some(KEEPALIVE_TIMEOUT_S),
            ..Default::default()
        },
    )
}
