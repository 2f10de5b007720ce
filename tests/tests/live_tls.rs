//! TLS field cases 1 and 2 (docs/field-cases.md) live, with real OpenSSL: server-initiated
//! renegotiation, resumption attempts killed by an inline inspector (our own relay, see
//! `detector_lab::relay`), plaintext handshake alerts, and clean sessions
//! (renegotiation-free, resumed, bulk) that must give nothing. Every scenario also replays
//! its capture through `detector replay`, which must agree with what the agent found live.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use detector_lab::{
    DEFAULT_CN, NginxSite,
    agent::metric,
    cert_args,
    clients::{T, run_text, session_line},
    fixture::{RouterRun, SETTLE, Watch, finish, ids, replay_matches, serial},
    path_str,
    relay::{Relay, Resumption, Verdict},
    s_client_args,
    scenarios::{
        clean::{RESUMPTIONS, interactive, new_session, resume_accepted},
        renegotiation::renegotiated_session,
        resumption::resume_offered,
    },
    url,
};
use serde_json::Value;

/// The relay tests' set-up: tcpdump and the agent (with TC egress, for the relay's
/// answers) on the router's client side, and where a relay on the router listens: its
/// client-side address, port 443.
fn relay_run() -> Result<(RouterRun, SocketAddr)> {
    let run = RouterRun::start(Watch::ClientSide, &[])?;
    let relay_ip = run.lab.iface(&run.rc).context("router client iface")?.v4;
    Ok((run, SocketAddr::new(relay_ip.into(), 443)))
}

fn client_ip(d: &Value) -> IpAddr {
    let c: SocketAddr = d["client"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("client is ip:port in {d}"));
    c.ip()
}

fn history(d: &Value) -> &str {
    d["detail"]["ssl_history"].as_str().unwrap_or("")
}

/// Field case 1 (docs/field-cases.md): OpenSSL's s_server renegotiates (command `r`,
/// "Renegotiate the SSL session (TLSv1.2 and below only)" in OpenSSL 3's s_server; `R` also
/// requests a client certificate) in the middle of a TLS 1.2 session with application data
/// flowing both ways. After the handshake its HelloRequest is encrypted: what the router
/// sees is a handshake record from the server after application data, then the client's
/// (encrypted) renegotiation handshake. One session, one `server_hello_request`.
#[test]
fn server_hello_request_from_openssl_renegotiation() -> Result<()> {
    let _serial = serial();
    let RouterRun {
        lab,
        capture,
        agent,
        ..
    } = RouterRun::start(Watch::BothSides, &[])?;

    // -msg: s_client prints every handshake message, so the test can see the
    // HelloRequest arrive and the second handshake complete.
    let (mut srv, mut cli, connect) = renegotiated_session(&lab)?;
    srv.write_stdin(b"after renegotiation from the server\n")?;
    cli.wait_for_output("after renegotiation from the server", T)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;

    let (live, metrics) = finish(agent, &lab, 1)?;
    let d = &live[0];
    println!("server_hello_request: {d}");
    println!(
        "server_hello_request ssl_history (OpenSSL s_server `r`, TLS 1.2): {}",
        history(d)
    );
    assert_eq!(d["kind"], "server_hello_request", "{d}");
    assert_eq!(client_ip(d), IpAddr::from(lab.client_v4()), "{d}");
    assert_eq!(d["server"], connect.to_string(), "{d}");
    assert_eq!(d["sni"], DEFAULT_CN, "{d}");
    assert_eq!(d["detail"]["sender"], "server", "{d}");
    assert_eq!(d["detail"]["encrypted"], true, "{d}");
    assert_eq!(d["detail"]["client_renegotiated"], true, "{d}");
    assert!(!history(d).is_empty(), "{d}");
    assert_eq!(
        metric(&metrics, "detector_kernel_events_dropped_total"),
        Some(0.0)
    );

    replay_matches(&capture.stop()?, &live);
    Ok(())
}

/// Field case 2 (docs/field-cases.md): an inline inspector without state for cached
/// sessions (our relay on the router) kills every resumption attempt with a plaintext
/// handshake_failure alert. The agent sits on the router's client-side veth only, where the
/// relay's answers leave by egress, so it runs with TC egress. For each method, a full
/// handshake first (through the relay, nothing to diagnose) saves the session, and a second
/// connection offers it.
#[test]
fn resumption_rejected_by_inspecting_relay() -> Result<()> {
    let _serial = serial();
    let (run, relay_addr) = relay_run()?;
    let (lab, router, capture, agent) = (&run.lab, run.router.as_str(), run.capture, run.agent);

    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let _srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let relay = Relay::start(
        Some(router),
        relay_addr,
        SocketAddr::new(lab.server_v4().into(), 443),
    )?;

    let methods: [(Resumption, &[&str]); 3] = [
        (Resumption::Tls12SessionId, &["-tls1_2", "-no_ticket"]),
        (Resumption::Tls12SessionTicket, &["-tls1_2"]),
        (Resumption::Tls13Psk, &["-tls1_3"]),
    ];
    for (i, (method, flags)) in methods.iter().enumerate() {
        let (out, ok, text) = resume_offered(lab, relay_addr, &tls.ca_cert, *method, flags)?;
        assert!(session_line(&out).starts_with("New, "), "{method}: {out}");
        let sess = lab.dir().join(format!("{method}.sess"));
        assert!(
            sess.is_file(),
            "{method}: s_client wrote no session to {}:\n{out}",
            sess.display()
        );
        assert!(
            !ok && text.contains("alert handshake failure"),
            "{method}: the resuming client should have got the relay's alert:\n{text}"
        );
        let conns = relay.wait_connections(2 * i + 2, T)?;
        assert_eq!(
            conns[2 * i].verdict,
            Verdict::Forwarded,
            "{method}: {conns:#?}"
        );
        assert_eq!(
            conns[2 * i + 1].verdict,
            Verdict::Rejected(*method),
            "{method}: {conns:#?}"
        );
    }

    let conns = relay.connections();
    assert_eq!(conns.len(), 6, "{conns:#?}");
    let (live, metrics) = finish(agent, lab, 3)?;
    let want: BTreeSet<(String, String, String)> = conns
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Rejected(_)))
        .map(|c| {
            (
                "resumption_rejected".to_string(),
                c.client.to_string(),
                relay_addr.to_string(),
            )
        })
        .collect();
    assert_eq!(ids(&live), want, "{live:#?}");
    for c in &conns {
        let Verdict::Rejected(method) = c.verdict else {
            continue;
        };
        let d = live
            .iter()
            .find(|d| d["client"] == c.client.to_string())
            .expect("a diagnosis per rejected connection");
        println!("resumption_rejected {method} ssl_history: {}", history(d));
        assert_eq!(d["sni"], DEFAULT_CN, "{d}");
        let detail = &d["detail"];
        assert_eq!(detail["method"], method.as_str(), "{d}");
        assert_eq!(detail["accepted"], false, "{d}");
        assert_eq!(detail["ended_by"], "fatal_alert", "{d}");
        // The relay speaks for the server.
        assert_eq!(detail["sender"], "server", "{d}");
        assert_eq!(detail["description"], "handshake_failure", "{d}");
        assert!(!history(d).is_empty(), "{d}");
    }
    assert_eq!(
        metric(&metrics, "detector_kernel_events_dropped_total"),
        Some(0.0)
    );
    drop(relay);

    replay_matches(&capture.stop()?, &live);
    Ok(())
}

/// Plaintext fatal alerts from OpenSSL handshakes that fail: the client rejecting a
/// certificate from a CA it does not trust (TLS 1.2 and 1.3), and a TLS 1.3-only server
/// refusing a TLS 1.2-only client; over IPv4 and IPv6.
///
/// What OpenSSL 3 (3.0.x here) actually sends, checked with tshark on the captures: for
/// "unable to get local issuer certificate" (verify error 20) the client sends unknown_ca
/// (48), not bad_certificate or certificate_unknown; and it sends it in plaintext in TLS 1.3
/// too (`15 03 03 00 02 02 30`), because it has not yet switched its write side to the
/// handshake keys (that happens with its second flight). The version mismatch gets
/// protocol_version (70) from the server, in plaintext, before any ServerHello.
#[test]
fn openssl_handshake_failures() -> Result<()> {
    let _serial = serial();
    let RouterRun {
        lab,
        capture,
        agent,
        ..
    } = RouterRun::start(Watch::BothSides, &[])?;

    let trusted = lab.tls_cert(DEFAULT_CN)?;
    let untrusted = lab.untrusted_cert()?;
    let _bad_ca = lab.s_server(lab.server_ns(), 443, &cert_args(&untrusted)?)?;
    let mut args = vec!["-tls1_3".to_string()];
    args.extend(cert_args(&trusted)?);
    let _tls13_only = lab.s_server(lab.server_ns(), 8443, &args)?;

    let (c4, c6) = (IpAddr::from(lab.client_v4()), IpAddr::from(lab.client_v6()));
    let (s4, s6) = (IpAddr::from(lab.server_v4()), IpAddr::from(lab.server_v6()));
    // (client flags, server, what s_client must say, expected client IP, sender, alert)
    let cases = [
        (
            ["-tls1_2", "-verify_return_error"],
            SocketAddr::new(s4, 443),
            "unable to get local issuer certificate",
            c4,
            "client",
            "unknown_ca",
        ),
        (
            ["-tls1_3", "-verify_return_error"],
            SocketAddr::new(s6, 443),
            "unable to get local issuer certificate",
            c6,
            "client",
            "unknown_ca",
        ),
        (
            ["-tls1_2", "-verify_return_error"],
            SocketAddr::new(s4, 8443),
            "alert protocol version",
            c4,
            "server",
            "protocol_version",
        ),
        (
            ["-tls1_2", "-verify_return_error"],
            SocketAddr::new(s6, 8443),
            "alert protocol version",
            c6,
            "server",
            "protocol_version",
        ),
    ];
    let mut want = Vec::new();
    for (flags, server, says, client, sender, description) in &cases {
        let (ok, text) = run_text(&lab, &s_client_args(*server, &trusted.ca_cert, flags)?)?;
        assert!(
            !ok && text.contains(says),
            "{flags:?} to {server}: expected a failure saying {says:?}:\n{text}"
        );
        want.push((
            "fatal_alert".to_string(),
            *client,
            server.to_string(),
            sender.to_string(),
            description.to_string(),
        ));
    }

    let (live, _) = finish(agent, &lab, cases.len())?;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut got: Vec<(String, IpAddr, String, String, String)> = live
        .iter()
        .map(|d| {
            println!(
                "fatal_alert {} from the {} to {}: ssl_history {}",
                s(&d["detail"]["description"]),
                s(&d["detail"]["sender"]),
                s(&d["server"]),
                history(d)
            );
            (
                s(&d["kind"]),
                client_ip(d),
                s(&d["server"]),
                s(&d["detail"]["sender"]),
                s(&d["detail"]["description"]),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{live:#?}");
    for d in &live {
        assert_eq!(d["detail"]["level"], "fatal", "{d}");
        assert_eq!(d["detail"]["during_handshake"], true, "{d}");
        assert_eq!(d["sni"], DEFAULT_CN, "{d}");
        assert!(!history(d).is_empty(), "{d}");
    }
    // IPv6 endpoints are written in brackets.
    assert!(
        live.iter()
            .filter(|d| client_ip(d).is_ipv6())
            .all(|d| s(&d["client"]).starts_with('[') && s(&d["server"]).starts_with('[')),
        "{live:#?}"
    );

    replay_matches(&capture.stop()?, &live);
    Ok(())
}

/// Sessions that are fine must give no diagnosis at all: TLS 1.2 and 1.3 with data both
/// ways, successful resumptions by each method, and a 20 MiB download; and the kernel
/// program must never lose its place in the record stream.
#[test]
fn clean_sessions_give_nothing() -> Result<()> {
    let _serial = serial();
    let RouterRun {
        lab,
        capture,
        agent,
        ..
    } = RouterRun::start(Watch::BothSides, &[])?;

    let s_ns = lab.server_ns();
    let s4 = IpAddr::from(lab.server_v4());
    let nginx = lab.nginx(
        s_ns,
        NginxSite {
            tls: true,
            big_mib: 20,
            ..Default::default()
        },
    )?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let mut srv = lab.s_server(s_ns, 4433, &cert_args(&tls)?)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let _www = lab.s_server(s_ns, 8443, &args)?;

    // Interactive sessions, data both ways.
    for version in ["-tls1_2", "-tls1_3"] {
        let lines = [(
            format!("client line {version}\n"),
            format!("server line {version}\n"),
        )];
        let connect = SocketAddr::new(s4, 4433);
        let out = interactive(&lab, &mut srv, connect, &tls.ca_cert, version, &lines)?;
        assert!(
            session_line(&out).starts_with(new_session(version)),
            "{out}"
        );
    }

    let mut phases = vec![("interactive TLS 1.2 and 1.3", agent.metrics(&lab)?)];

    // Resumption straight to the server: offered and accepted.
    let www = SocketAddr::new(s4, 8443);
    for (method, flags) in RESUMPTIONS {
        resume_accepted(&lab, www, &tls.ca_cert, method, flags)?;
    }

    phases.push(("resumptions", agent.metrics(&lab)?));

    // Bulk: 20 MiB over TLS.
    let ca = path_str(&tls.ca_cert)?;
    let out = lab.run_ok(
        lab.client_ns(),
        &[
            "curl",
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url("https", s4, nginx.port, "/big"),
        ],
        Duration::from_secs(70),
    )?;
    assert_eq!(out, (20u64 << 20).to_string());

    thread::sleep(SETTLE);
    let metrics = agent.metrics(&lab)?;
    phases.push(("20 MiB download", metrics.clone()));
    let agent_out = agent.process.output();
    let live = agent.stop()?;
    // Cumulative counters after each phase, so a failure says which traffic caused it.
    for (phase, text) in &phases {
        println!(
            "after {phase}: detector_kernel_tls_records_total {:?}, \
             detector_kernel_tls_sync_lost_total {:?}, detector_kernel_tls_resynced_total {:?}, \
             detector_kernel_tls_read_ahead_total {:?}",
            metric(text, "detector_kernel_tls_records_total"),
            metric(text, "detector_kernel_tls_sync_lost_total"),
            metric(text, "detector_kernel_tls_resynced_total"),
            metric(text, "detector_kernel_tls_read_ahead_total"),
        );
    }
    let records = metric(&metrics, "detector_kernel_tls_records_total");
    assert!(live.is_empty(), "{live:#?}\nagent output:\n{agent_out}");
    assert!(records.unwrap_or(0.0) > 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "detector_kernel_events_dropped_total"),
        Some(0.0)
    );
    replay_matches(&capture.stop()?, &live);
    // Last, so that the checks above still run when only this fails: the kernel's record
    // walker must follow every one of these streams from the first byte to the last.
    assert_eq!(
        metric(&metrics, "detector_kernel_tls_sync_lost_total"),
        Some(0.0),
        "the kernel lost its place in a TLS stream of a clean session:\n{metrics}"
    );
    Ok(())
}

/// A relay that resets every connection once the ClientHello is in: handshake_reset, with
/// the reset coming from the server side and no ServerHello before it.
#[test]
fn relay_reset_after_client_hello_is_handshake_reset() -> Result<()> {
    let _serial = serial();
    let (run, relay_addr) = relay_run()?;
    let (lab, router, capture, agent) = (&run.lab, run.router.as_str(), run.capture, run.agent);
    let relay = Relay::start_resetting(Some(router), relay_addr)?;
    let tls = lab.tls_cert(DEFAULT_CN)?;

    let out = lab.run(
        lab.client_ns(),
        &s_client_args(relay_addr, &tls.ca_cert, &["-tls1_2"])?,
        T,
    )?;
    assert!(!out.status.success(), "the handshake must fail");
    let conns = relay.wait_connections(1, T)?;
    assert_eq!(conns[0].verdict, Verdict::Reset, "{conns:#?}");

    let live = agent.wait_for(1, T)?;
    thread::sleep(Duration::from_millis(800));
    let live_final = agent.stop()?;
    assert_eq!(live_final.len(), live.len(), "{live_final:#?}");
    assert_eq!(live_final.len(), 1, "{live_final:#?}");
    let d = &live_final[0];
    assert_eq!(d["kind"], "handshake_reset", "{d}");
    assert_eq!(d["server"], relay_addr.to_string());
    assert_eq!(d["detail"]["ended_by"], "rst");
    assert_eq!(d["detail"]["sender"], "server");
    assert_eq!(d["detail"]["server_hello_seen"], false);
    assert_eq!(d["sni"], DEFAULT_CN);
    replay_matches(&capture.stop()?, &live_final);
    Ok(())
}
