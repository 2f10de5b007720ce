//! Field case 3 of docs/field-cases.md: plaintext HTTP to a TLS port, and the reverse.

use std::any::Any;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, ensure};

use crate::{
    certs::{DEFAULT_CN, cert_args},
    clients::*,
    netns::Lab,
    process::LabProcess,
    servers::{NginxSite, url},
};

use super::{expect::*, runner::*, *};

pub(crate) fn http_to_nginx_tls(lab: &Lab, v6: bool) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            port: 443,
            ipv6: true,
            ..Default::default()
        },
    )?;
    let (client, server): (IpAddr, IpAddr) = if v6 {
        (lab.client_v6().into(), lab.server_v6().into())
    } else {
        (lab.client_v4().into(), lab.server_v4().into())
    };
    let out = curl(lab, &[&url("http", server, 443, "/")])?;
    let body = String::from_utf8_lossy(&out.stdout);
    ensure!(
        body.contains("400"),
        "nginx should answer 400 to plaintext HTTP on its TLS port, got {body:?}"
    );
    Ok(Played::new(
        vec![Must::new(
            "http_to_tls_port",
            client,
            SocketAddr::new(server, 443),
            "client",
        )],
        MustNot::kinds(&["fatal_alert", "tls_to_plaintext_port", "handshake_reset"]),
    )
    .keep(nginx))
}

pub(crate) fn http_to_nginx_tls_v4(lab: &Lab) -> Result<Played> {
    http_to_nginx_tls(lab, false)
}

pub(crate) fn http_to_nginx_tls_v6(lab: &Lab) -> Result<Played> {
    http_to_nginx_tls(lab, true)
}

pub(crate) fn http_to_s_server(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 8443, &args)?;
    let server = s4(lab, 8443);
    let out = curl(lab, &[&url("http", server.ip(), 8443, "/")])?;
    ensure!(
        !out.status.success(),
        "s_server should not answer plaintext HTTP: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(Played::new(
        vec![Must::new("http_to_tls_port", c4(lab), server, "client")],
        MustNot::kinds(&["fatal_alert", "tls_to_plaintext_port", "handshake_reset"]),
    )
    .keep(srv))
}

pub(crate) fn tls_to_nginx_80(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(lab.server_ns(), NginxSite::plain(80))?;
    tls_to_plaintext(lab, s4(lab, 80), nginx)
}

/// s_client's ClientHello to a plaintext server, which must make the handshake fail.
pub(crate) fn client_hello_to_plaintext(lab: &Lab, server: SocketAddr) -> Result<()> {
    let (ok, text) = run_text(
        lab,
        &[
            "sh",
            "-c",
            &format!("openssl s_client -connect {server} -servername {DEFAULT_CN} </dev/null"),
        ],
    )?;
    ensure!(!ok, "s_client to a plaintext server should fail:\n{text}");
    Ok(())
}

/// `python3 -c BANNER HOST PORT TEXT`: a plaintext server that reads the client's first
/// bytes, answers `TEXT\r\n` and reads until the client closes. SMTP and SSH servers send
/// their banner on accept; waiting for the client's bytes first keeps the order on the wire
/// (ClientHello, then banner) the same in every run.
pub(crate) const BANNER_SERVER: &str = r#"
import socket, sys
host, port, banner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.create_server((host, port))
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    c.settimeout(10)
    try:
        if c.recv(4096):
            c.sendall(banner.encode() + b"\r\n")
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
"#;

/// A ClientHello to a plaintext server (listening) that answers with something other than
/// an HTTP status line.
pub(crate) fn tls_to_plaintext(lab: &Lab, server: SocketAddr, srv: impl Any) -> Result<Played> {
    client_hello_to_plaintext(lab, server)?;
    Ok(Played::new(
        vec![Must::new(
            "tls_to_plaintext_port",
            c4(lab),
            server,
            "server",
        )],
        MustNot::kinds(&["fatal_alert", "http_to_tls_port", "handshake_reset"]),
    )
    .keep(srv))
}

pub(crate) fn banner_server(
    lab: &Lab,
    port: u16,
    banner: &str,
) -> Result<(SocketAddr, LabProcess)> {
    let server = s4(lab, port);
    let srv = lab.spawn(
        lab.server_ns(),
        &format!("banner-{port}"),
        &[
            "python3",
            "-c",
            BANNER_SERVER,
            &server.ip().to_string(),
            &port.to_string(),
            banner,
        ],
    )?;
    srv.wait_for_output("listening", T)?;
    Ok((server, srv))
}

/// Python's http.server takes the ClientHello for an HTTP/0.9 request and answers with an
/// HTML error page, without a status line.
pub(crate) fn tls_to_python_http(lab: &Lab) -> Result<Played> {
    let server = s4(lab, 8080);
    let srv = lab.spawn(
        lab.server_ns(),
        "http.server",
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            &server.ip().to_string(),
            "8080",
        ],
    )?;
    lab.wait_tcp(lab.server_ns(), server.ip(), server.port(), T)?;
    tls_to_plaintext(lab, server, srv)
}

pub(crate) fn tls_to_smtp_banner(lab: &Lab) -> Result<Played> {
    let (server, srv) = banner_server(lab, 25, "220 mail.server.test ESMTP Postfix (Debian/GNU)")?;
    tls_to_plaintext(lab, server, srv)
}

pub(crate) fn tls_to_ssh_banner(lab: &Lab) -> Result<Played> {
    let (server, srv) = banner_server(lab, 22, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")?;
    tls_to_plaintext(lab, server, srv)
}
