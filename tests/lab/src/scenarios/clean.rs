//! Clean controls: nothing may be diagnosed.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    certs::{DEFAULT_CN, cert_args, path_str, s_client_args},
    clients::*,
    netns::Lab,
    process::LabProcess,
    servers::{NginxSite, url},
};

use super::{expect::*, runner::*, *};

pub(crate) fn clean_interactive(lab: &Lab, version: &str) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut srv = lab.s_server(lab.server_ns(), 4433, &cert_args(&tls)?)?;
    let lines: Vec<(String, String)> = (0..3)
        .map(|i| {
            (
                format!("client line {i} {version}\n"),
                format!("server line {i} {version}\n"),
            )
        })
        .collect();
    let out = interactive(lab, &mut srv, s4(lab, 4433), &tls.ca_cert, version, &lines)?;
    ensure!(
        session_line(&out).starts_with(new_session(version)),
        "{out}"
    );
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(srv))
}

/// An interactive s_client session with `version` (`-tls1_2`, `-tls1_3`) to `srv`, an
/// s_server at `connect`: each (to the server, to the client) line pair is sent and waited
/// for at the other end, then the client closes. Returns s_client's output.
pub fn interactive(
    lab: &Lab,
    srv: &mut LabProcess,
    connect: SocketAddr,
    ca: &Path,
    version: &str,
    lines: &[(String, String)],
) -> Result<String> {
    let args = s_client_args(connect, ca, &[version])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), &format!("s_client{version}"), &args)?;
    for (to_srv, to_cli) in lines {
        cli.write_stdin(to_srv.as_bytes())?;
        srv.wait_for_output(to_srv, T)?;
        srv.write_stdin(to_cli.as_bytes())?;
        cli.wait_for_output(to_cli, T)?;
    }
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(cli.output())
}

/// How s_client names a new session of `version` (`-tls1_2`, `-tls1_3`).
pub fn new_session(version: &str) -> &'static str {
    if version == "-tls1_2" {
        "New, TLSv1.2"
    } else {
        "New, TLSv1.3"
    }
}

pub(crate) fn clean_tls12(lab: &Lab) -> Result<Played> {
    clean_interactive(lab, "-tls1_2")
}

pub(crate) fn clean_tls13(lab: &Lab) -> Result<Played> {
    clean_interactive(lab, "-tls1_3")
}

/// Resumption straight to s_server: offered and accepted.
pub(crate) fn clean_resume(lab: &Lab, (method, flags): (&str, &[&str])) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 8443, &args)?;
    let www = s4(lab, 8443);
    resume_accepted(lab, www, &tls.ca_cert, method, flags)?;
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(srv))
}

/// Two HTTP exchanges with `www`, an s_server `-www`, with `flags`: a full handshake that
/// saves its session to LAB_DIR/clean-METHOD.sess (s_client must say `New, `), then one
/// that resumes it (s_client must say `Reused, `).
pub fn resume_accepted(
    lab: &Lab,
    www: SocketAddr,
    ca: &Path,
    method: &str,
    flags: &[&str],
) -> Result<()> {
    let stem = format!("clean-{method}");
    let (out, resume) = save_session(lab, www, ca, (method, &stem), flags)?;
    ensure!(session_line(&out).starts_with("New, "), "{method}: {out}");
    let out = www_get(lab, &format!("s_client-{method}-resumed"), &resume)?;
    ensure!(
        session_line(&out).starts_with("Reused, "),
        "{method}: not resumed:\n{out}"
    );
    Ok(())
}

/// The resumption methods of the clean controls: (name, s_client's flags).
pub const RESUMPTIONS: [(&str, &[&str]); 3] = [
    ("tls12_session_id", &["-tls1_2", "-no_ticket"]),
    ("tls12_session_ticket", &["-tls1_2"]),
    ("tls13_psk", &["-tls1_3"]),
];

pub(crate) fn clean_resume_tls12_id(lab: &Lab) -> Result<Played> {
    clean_resume(lab, RESUMPTIONS[0])
}

pub(crate) fn clean_resume_tls12_ticket(lab: &Lab) -> Result<Played> {
    clean_resume(lab, RESUMPTIONS[1])
}

pub(crate) fn clean_resume_tls13_psk(lab: &Lab) -> Result<Played> {
    clean_resume(lab, RESUMPTIONS[2])
}

/// nginx 1.22 enables HTTP/2 per `listen`, which [`Lab::nginx`] writes itself: the h2
/// server is a second `server` block through `extra_http`.
pub(crate) fn clean_http2(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let h2 = s4(lab, 8443);
    let extra = format!(
        "server {{ listen {h2} ssl http2; server_name _; ssl_protocols {NGINX_PROTOCOLS}; \
         ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \"ok\\n\"; }} }}",
        path_str(&tls.cert)?,
        path_str(&tls.key)?
    );
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            cert: Some(&tls),
            extra_http: &extra,
            ..Default::default()
        },
    )?;
    lab.wait_tcp(lab.server_ns(), h2.ip(), h2.port(), T)?;
    let ca = path_str(&tls.ca_cert)?;
    let out = curl(
        lab,
        &[
            "--http2",
            "--cacert",
            ca,
            "-w",
            " %{http_version}\n",
            &url("https", h2.ip(), h2.port(), "/"),
            &url("https", h2.ip(), h2.port(), "/again"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && count(&text, "ok\n 2\n") == 2,
        "expected two HTTP/2 answers, got {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(nginx))
}

pub(crate) fn clean_large_download(lab: &Lab) -> Result<Played> {
    const MIB: u32 = 20;
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            big_mib: MIB,
            ..Default::default()
        },
    )?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let out = curl(
        lab,
        &[
            "--cacert",
            path_str(&tls.ca_cert)?,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &nginx.url(lab.server_v4().into(), "/big"),
        ],
    )?;
    let got = String::from_utf8_lossy(&out.stdout);
    ensure!(
        got == (u64::from(MIB) << 20).to_string(),
        "downloaded {got} bytes, expected {MIB} MiB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(nginx))
}

/// Size of each transfer of `clean-bulk-both-ways`.
pub const BULK_MIB: u32 = 20;

/// Transfers of each direction per TLS version in `clean-bulk-both-ways`.
pub const BULK_TRANSFERS: u32 = 3;

/// Bulk transfers both ways per TLS version: downloads of `/big` on one keep-alive
/// connection, and uploads by WebDAV PUT (nginx stores the body, so all of it crosses) on
/// another. The record walker must follow every stream to its end.
pub(crate) fn clean_bulk_both_ways(lab: &Lab) -> Result<Played> {
    let uploads = lab.dir().join("uploads");
    fs::create_dir_all(&uploads).with_context(|| format!("creating {}", uploads.display()))?;
    let upload_location = format!(
        "location /upload/ {{ dav_methods PUT; create_full_put_path on; \
         client_max_body_size {}m; root {}; }}",
        BULK_MIB * 2,
        path_str(&uploads)?
    );
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            big_mib: BULK_MIB,
            extra_server: &upload_location,
            ..Default::default()
        },
    )?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let ca = path_str(&tls.ca_cert)?;
    let body = lab.big_file(BULK_MIB)?;
    let body = path_str(&body)?;
    let s = IpAddr::from(lab.server_v4());
    let size = (u64::from(BULK_MIB) << 20).to_string();
    for (flag, max) in [("--tlsv1.2", "1.2"), ("--tlsv1.3", "1.3")] {
        let with = |w: &str| -> Vec<String> {
            ["--cacert", ca, flag, "--tls-max", max, "-w", w]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let mut down = with("%{size_download}\n");
        let mut up = with("%{size_upload} %{http_code}\n");
        for i in 0..BULK_TRANSFERS {
            down.extend(["-o".into(), "/dev/null".into(), nginx.url(s, "/big")]);
            up.extend([
                "-T".into(),
                body.into(),
                nginx.url(s, &format!("/upload/{max}-{i}")),
            ]);
        }
        let args: Vec<&str> = down.iter().map(String::as_str).collect();
        let out = curl_long(lab, &args)?;
        ensure!(
            out.lines().all(|l| l == size) && out.lines().count() == BULK_TRANSFERS as usize,
            "TLS {max} downloads: {out:?}"
        );
        let args: Vec<&str> = up.iter().map(String::as_str).collect();
        let out = curl_long(lab, &args)?;
        // 201 Created, or 204 No Content when a soak round overwrites an earlier upload.
        ensure!(
            out.lines()
                .all(|l| l == format!("{size} 201") || l == format!("{size} 204"))
                && out.lines().count() == BULK_TRANSFERS as usize,
            "TLS {max} uploads (size, status): {out:?}"
        );
    }
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(nginx))
}

/// curl for bulk transfers (a minute each at most); stdout, which must succeed.
pub(crate) fn curl_long(lab: &Lab, extra: &[&str]) -> Result<String> {
    let mut args = vec!["curl", "-sS", "--max-time", "60", "--noproxy", "*"];
    args.extend_from_slice(extra);
    let out = lab.run(lab.client_ns(), &args, Duration::from_secs(130))?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn clean_keepalive(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            ..Default::default()
        },
    )?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let ca = path_str(&tls.ca_cert)?;
    let s = IpAddr::from(lab.server_v4());
    let out = curl(
        lab,
        &[
            "--cacert",
            ca,
            "-w",
            "%{num_connects}\n",
            &nginx.url(s, "/a"),
            &nginx.url(s, "/b"),
            &nginx.url(s, "/c"),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text == "ok\n1\nok\n0\nok\n0\n",
        "curl should reuse one connection for three requests: {text:?}"
    );
    // A keep-alive session with a pause well below the idle threshold, closed by the client.
    let args = s_client_args(s4(lab, 443), &tls.ca_cert, &["-tls1_2"])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), "s_client-keepalive", &args)?;
    let request = format!("GET / HTTP/1.1\r\nHost: {DEFAULT_CN}\r\n\r\n");
    cli.write_stdin(request.as_bytes())?;
    cli.wait_for_output("HTTP/1.1 200 OK", T)?;
    thread::sleep(Duration::from_secs(1));
    cli.write_stdin(request.as_bytes())?;
    wait_count(&cli, "HTTP/1.1 200 OK", 2, T)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(nginx))
}

pub(crate) fn clean_http80(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            ipv6: true,
            ..NginxSite::plain(80)
        },
    )?;
    for addr in lab.server_addrs() {
        let out = curl(lab, &[&nginx.url(addr, "/")])?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == "ok\n",
            "plain HTTP to {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(nginx))
}
