//! Precision: connections older than the agent, spoofed segments, client renegotiation.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    certs::path_str,
    clients::*,
    idle_lab::forget_idle_flows,
    long_lived::{LongLived, Version},
    netns::Lab,
    servers::url,
    spoof::{Flood, route_answers_into_lab, spawn_flood},
};

use super::{
    expect::*,
    keepalive::*,
    middlebox::*,
    renegotiation::{after_second_handshake, tls12_session},
    runner::*,
};

/// Port of the long-lived connections' server.
pub(crate) const LONG_LIVED_PORT: u16 = 443;

/// How long a connection opened before the agent stays quiet before it resumes, counted
/// from its last answer: past the idle threshold.
pub(crate) const LONG_IDLE: Duration = Duration::from_secs(4);

/// How long after its start the agent must have run before a connection resumes: longer
/// than the idle threshold, so "first seen mid-stream" cannot be explained by the agent
/// having just started (the case issue 8 found diagnosed wrongly).
pub(crate) const AGENT_RUN_BEFORE_RESUME: Duration = Duration::from_secs(3);

/// How long a dropped flow's client retransmits before its connection is destroyed.
pub(crate) const RETRANSMIT_FOR: Duration = Duration::from_millis(1500);

pub(crate) fn open_long_lived_tls12(lab: &Lab) -> Result<LongLived> {
    LongLived::open(lab, LONG_LIVED_PORT, Version::Tls12, 1)
}

pub(crate) fn open_long_lived_tls13(lab: &Lab) -> Result<LongLived> {
    LongLived::open(lab, LONG_LIVED_PORT, Version::Tls13, 1)
}

/// Waits until the connection has idled [`LONG_IDLE`] and the agent (started just before
/// `resume` was called, at `agent_started`) has run [`AGENT_RUN_BEFORE_RESUME`].
pub(crate) fn wait_to_resume(last_answer: Instant, agent_started: Instant) {
    let at = (last_answer + LONG_IDLE).max(agent_started + AGENT_RUN_BEFORE_RESUME);
    thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// The connection resumes and the server answers: healthy, whatever the agent missed.
pub(crate) fn midstream_adopted(_lab: &Lab, mut opened: LongLived) -> Result<Played> {
    let agent_started = Instant::now();
    let mut c = opened.clients.pop().context("one connection was opened")?;
    wait_to_resume(c.last_answer, agent_started);
    c.exchange("after the agent started")?;
    c.exchange("and once more")?;
    c.close()?;
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(opened.server))
}

/// The router starts filtering while the connection idles: its conntrack never saw the
/// connection start, so the resumed request is a "new" non-SYN packet and dropped, as a
/// load balancer that forgot the flow would. The client retransmits into silence until
/// its connection is destroyed.
pub(crate) fn midstream_dropped(lab: &Lab, mut opened: LongLived) -> Result<Played> {
    let agent_started = Instant::now();
    let mut c = opened.clients.pop().context("one connection was opened")?;
    let (router, _, _) = lab.router_parts()?;
    forget_idle_flows(lab, &router, CONNTRACK_TIMEOUT_S)?;
    wait_to_resume(c.last_answer, agent_started);
    c.send("into the void")?;
    thread::sleep(RETRANSMIT_FOR);
    ensure!(
        c.answered() == 1,
        "the router should have dropped the resumed connection:\n{}",
        c.process.output()
    );
    c.kill(lab)?;
    Ok(Played::new(
        vec![Must::new(
            "idle_timeout_drop",
            c4(lab),
            opened.server.addr,
            "client",
        )],
        MustNot::kinds(&[
            "rst_after_idle",
            "idle_close",
            "handshake_reset",
            "fatal_alert",
        ]),
    )
    .keep(opened.server))
}

/// Size of the agent's flow table in `flood-spoofed`.
pub const FLOOD_FLOW_TABLE: u32 = 64;

/// Spoofed segments in `flood-spoofed`: ten times the table.
pub const FLOOD_SEGMENTS: u32 = 10 * FLOOD_FLOW_TABLE;

/// Spoofed one-byte segments from random sources to nginx's 443 while real sessions run:
/// clean keep-alive sessions (nothing), plaintext HTTP to 443 (`http_to_tls_port`) and an
/// idle keep-alive connection nginx closes (`idle_close`) must come out exactly as without
/// the flood.
pub(crate) fn flood_spoofed(lab: &Lab) -> Result<Played> {
    let nginx = keepalive_nginx(lab)?;
    route_answers_into_lab(lab)?;
    let connect = s4(lab, 443);
    let target = std::net::SocketAddrV4::new(lab.server_v4(), 443);
    let flood = spawn_flood(
        lab.client_ns(),
        Flood {
            target,
            count: FLOOD_SEGMENTS,
            duration: Duration::from_secs(4),
        },
    );
    let idle = keepalive_request(lab, &nginx, "-tls1_2")?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let ca = path_str(&tls.ca_cert)?;
    let s = IpAddr::from(lab.server_v4());
    for round in 0..2 {
        let out = curl(
            lab,
            &[
                "--cacert",
                ca,
                &nginx.url(s, &format!("/a{round}")),
                &nginx.url(s, &format!("/b{round}")),
            ],
        )?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == "ok\nok\n",
            "clean keep-alive session during the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = curl(lab, &[&url("http", s, 443, "/")])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("400"),
        "nginx should answer 400 to plaintext HTTP on 443"
    );
    wait_server_close(&idle)?;
    let report = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    ensure!(
        report.sent == FLOOD_SEGMENTS,
        "sent {} of {FLOOD_SEGMENTS} spoofed segments",
        report.sent
    );
    Ok(Played::new(
        vec![
            Must::new("http_to_tls_port", c4(lab), connect, "client"),
            idle_close_by_nginx(lab, connect),
        ],
        MustNot::kinds(&["idle_timeout_drop", "rst_after_idle", "handshake_reset"]),
    )
    .keep(nginx))
}

/// The client renegotiates on its own: s_client's `R` command, allowed by s_server's
/// `-client_renegotiation` (OpenSSL 3 refuses client renegotiation by default).
pub(crate) fn client_reneg_tls12(lab: &Lab) -> Result<Played> {
    let (mut srv, mut cli, connect) =
        tls12_session(lab, &["-client_renegotiation"], "s_client-client-reneg")?;
    cli.write_stdin(b"R\n")?;
    after_second_handshake(&mut srv, &mut cli)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(Played::new(
        vec![Must::new(
            "client_renegotiation",
            c4(lab),
            connect,
            "client",
        )],
        MustNot::kinds(&[
            "server_hello_request",
            "fatal_alert",
            "idle_close",
            "rst_after_idle",
        ]),
    )
    .keep(srv))
}
