//! The agent attached live in lab namespaces, with real nginx, openssl and curl; then the
//! capture of the same traffic through `detector replay`.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use detector_lab::{
    Lab, LabProcess, Nginx, NginxSite,
    agent::{LiveAgent, identity, metric},
    fixture::{RouterRun, Watch, replay_matches},
    url,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

/// What the field-case-3 (docs/field-cases.md) traffic must produce: (kind, client IP,
/// server ip:port).
struct Expected {
    kind: &'static str,
    client: IpAddr,
    server: String,
}

/// The servers of a played scenario (kept running until dropped) and what must be seen.
struct Played {
    expected: Vec<Expected>,
    _servers: (Nginx, Nginx, LabProcess),
}

/// Starts real servers in the server namespace, plays bad and clean traffic from the
/// client namespace, and returns what must be diagnosed.
fn play_field_case_3(lab: &Lab) -> Result<Played> {
    let s_ns = lab.server_ns();
    let c_ns = lab.client_ns();
    let (c4, c6) = (IpAddr::V4(lab.client_v4()), IpAddr::V6(lab.client_v6()));
    let (s4, s6) = (IpAddr::V4(lab.server_v4()), IpAddr::V6(lab.server_v6()));
    let tls = lab.nginx(
        s_ns,
        NginxSite {
            tls: true,
            port: 443,
            ipv6: true,
            ..Default::default()
        },
    )?;
    let plain = lab.nginx(
        s_ns,
        NginxSite {
            tls: false,
            port: 80,
            ipv6: true,
            ..Default::default()
        },
    )?;
    let files = tls.tls.clone().context("TLS site has a certificate")?;
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let s_server = lab.s_server(s_ns, 8443, &["-cert", &cert, "-key", &key, "-www"])?;
    let ca = files.ca_cert.display().to_string();

    let curl = |args: &[&str]| -> Result<std::process::Output> {
        let mut full = vec!["curl", "-sS", "--max-time", "5"];
        full.extend_from_slice(args);
        lab.run(c_ns, &full, T)
    };
    // Clean controls first: none of these may produce a diagnosis.
    for _ in 0..3 {
        let out = curl(&["--cacert", &ca, &url("https", s4, 443, "/")])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "clean HTTPS");
    }
    let out = curl(&["--cacert", &ca, &url("https", s6, 443, "/")])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "clean HTTPS v6"
    );
    for _ in 0..2 {
        let out = curl(&[&url("http", s4, 80, "/")])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "clean HTTP");
    }

    // Plaintext HTTP to TLS ports: nginx answers 400, s_server gives up.
    let out = curl(&[&url("http", s4, 443, "/")])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("400"),
        "nginx should answer 400 to plain HTTP on its TLS port"
    );
    curl(&[&url("http", s6, 443, "/")])?;
    curl(&[&url("http", s4, 8443, "/")])?;
    // A ClientHello to the plaintext server.
    lab.run(
        c_ns,
        &[
            "sh",
            "-c",
            &format!("openssl s_client -connect {s4}:80 </dev/null"),
        ],
        T,
    )?;

    let expected = vec![
        Expected {
            kind: "http_to_tls_port",
            client: c4,
            server: format!("{s4}:443"),
        },
        Expected {
            kind: "http_to_tls_port",
            client: c6,
            server: format!("[{s6}]:443"),
        },
        Expected {
            kind: "http_to_tls_port",
            client: c4,
            server: format!("{s4}:8443"),
        },
        Expected {
            kind: "tls_to_plaintext_port",
            client: c4,
            server: format!("{s4}:80"),
        },
    ];
    Ok(Played {
        expected,
        _servers: (tls, plain, s_server),
    })
}

fn assert_matches(got: &[Value], expected: &[Expected], what: &str) {
    let mut got_ids: Vec<(String, IpAddr, String)> = got
        .iter()
        .map(|d| {
            let (kind, client, server) = identity(d);
            let client_ip: std::net::SocketAddr = client.parse().expect("client is ip:port");
            (kind, client_ip.ip(), server)
        })
        .collect();
    let mut want: Vec<(String, IpAddr, String)> = expected
        .iter()
        .map(|e| (e.kind.to_string(), e.client, e.server.clone()))
        .collect();
    got_ids.sort();
    want.sort();
    assert_eq!(got_ids, want, "{what}: diagnoses differ; got {got:#?}");
    for d in got {
        assert!(d["community_id"].as_str().unwrap().starts_with("1:"));
        assert!(!d["evidence"].as_str().unwrap().is_empty());
        assert!(d["ts"].as_str().unwrap().contains('T'));
    }
}

fn check_metrics(text: &str, expected: &[Expected]) {
    let count = |k: &str| expected.iter().filter(|e| e.kind == k).count() as f64;
    for kind in ["http_to_tls_port", "tls_to_plaintext_port"] {
        assert_eq!(
            metric(
                text,
                &format!("detector_diagnoses_total{{kind=\"{kind}\"}}")
            ),
            Some(count(kind)),
            "metric for {kind} in:\n{text}"
        );
    }
    assert_eq!(
        metric(text, "detector_kernel_events_dropped_total"),
        Some(0.0)
    );
    assert!(metric(text, "detector_kernel_packets_total").unwrap_or(0.0) > 0.0);
}

#[test]
fn router_sees_both_directions_as_ingress() -> Result<()> {
    let RouterRun {
        lab,
        router,
        capture,
        agent,
        ..
    } = RouterRun::start(Watch::BothSides, &[])?;
    // `-i any` writes Linux cooked (SLL2) frames, and sees each forwarded packet twice.
    let cooked = lab.capture(&router, "any", lab.dir().join("router-any.pcap"))?;

    let played = play_field_case_3(&lab)?;
    let expected = &played.expected;
    let live = agent.wait_for(expected.len(), T)?;
    // Give stragglers (a second diagnosis per session would be a bug) a window to show.
    std::thread::sleep(Duration::from_millis(1200));
    check_metrics(&agent.metrics(&lab)?, expected);
    let live_final = agent.stop()?;
    assert_eq!(
        live_final.len(),
        live.len(),
        "late extra diagnoses: {live_final:#?}"
    );
    assert_matches(&live_final, expected, "live on the router");

    for pcap in [capture.stop()?, cooked.stop()?] {
        let summary = replay_matches(&pcap, &live_final);
        assert!(summary.contains("diagnoses"), "{summary}");
    }
    Ok(())
}

#[test]
fn server_host_sees_its_replies_through_tc_egress() -> Result<()> {
    let lab = Lab::direct()?;
    let s_ns = lab.server_ns().to_string();
    let s_if = lab.server_if().to_string();
    let capture = lab.capture(&s_ns, &s_if, lab.dir().join("server.pcap"))?;
    let agent = LiveAgent::start(&lab, &s_ns, &[&s_if], &[])?;

    let played = play_field_case_3(&lab)?;
    let expected = &played.expected;
    let live = agent.wait_for(expected.len(), T)?;
    std::thread::sleep(Duration::from_millis(1200));
    let metrics = agent.metrics(&lab)?;
    check_metrics(&metrics, expected);
    let live_final = agent.stop()?;
    assert_eq!(
        live_final.len(),
        live.len(),
        "late extra diagnoses: {live_final:#?}"
    );
    assert_matches(&live_final, expected, "live on the server");
    // The server's answers (nginx's 400, the HTTP reply to the ClientHello) leave by
    // egress: only the TC program can have seen them.
    let tls_to_plain = live_final
        .iter()
        .find(|d| d["kind"] == "tls_to_plaintext_port")
        .expect("tls_to_plaintext_port");
    assert!(
        tls_to_plain["evidence"]
            .as_str()
            .unwrap()
            .contains("HTTP/1.1 400"),
        "{tls_to_plain}"
    );

    let summary = replay_matches(&capture.stop()?, &live_final);
    assert!(summary.contains("diagnoses"), "{summary}");
    Ok(())
}

#[test]
fn missing_interface_is_a_one_line_error() -> Result<()> {
    let out = std::process::Command::new(detector_lab::agent::detector_bin()?)
        .args(["run", "--iface", "no-such-if0"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("detector:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no-such-if0") && lines[0].contains("does not exist"));
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_full_flow_table_counts_its_evictions() -> Result<()> {
    let lab = Lab::routed()?;
    let (router, rc, rs) = lab.router_parts()?;
    // A table of 4 flows, and 12 connections through the router.
    let agent = LiveAgent::start(
        &lab,
        &router,
        &[&rc, &rs],
        &["--no-egress", "--flow-table-size", "4"],
    )?;
    let _plain = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: false,
            port: 80,
            ..Default::default()
        },
    )?;
    let target = url("http", IpAddr::V4(lab.server_v4()), 80, "/");
    for _ in 0..12 {
        let out = lab.run(
            lab.client_ns(),
            &["curl", "-sS", "--max-time", "5", &target],
            T,
        )?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
    // Occupancy is counted off the event loop once per period (a 4-entry table is walked
    // in microseconds): two periods on, the last count saw every flow above.
    std::thread::sleep(2 * detector_user::output::occupancy::MIN_PERIOD);
    let text = agent.metrics(&lab)?;
    let created = metric(&text, "detector_kernel_flows_created_total").unwrap_or(0.0);
    let evicted = metric(&text, "detector_kernel_flows_evicted_total").unwrap_or(-1.0);
    assert!(created >= 12.0, "{text}");
    // LRU keeps at most 4 (fewer with per-CPU free lists): the rest were evicted.
    assert!(evicted >= created - 4.0 && evicted <= created, "{text}");
    agent.stop()?;
    Ok(())
}

/// Whether the running kernel has TCX links (6.6), from its release string.
fn kernel_has_tcx() -> Result<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((major, minor) >= (6, 6))
}

/// The TC egress attachment leaves nothing behind. With TCX (6.6+) a killed agent's link
/// dies with it and no qdisc is involved. Before 6.6 the agent adds the clsact qdisc and
/// a netlink filter; a killed agent's filter stays, the next agent removes it before
/// attaching its own, and an agent that exits removes its filter, and the qdisc when it
/// added it.
#[test]
fn egress_attachment_leaves_nothing_behind() -> Result<()> {
    let lab = Lab::direct()?;
    let ns = lab.server_ns().to_string();
    let dev = lab.server_if().to_string();
    let ours = |what: &str| -> Result<usize> {
        let out = lab.run_ok(&ns, &["tc", what, "show", "dev", &dev, "egress"], T)?;
        // One line per filter (tc names both the filter and its program).
        Ok(out
            .lines()
            .filter(|l| l.contains(detector_common::names::TC_PROGRAM))
            .count())
    };
    let filters = || ours("filter");
    let clsact = || -> Result<bool> {
        Ok(lab
            .run_ok(&ns, &["tc", "qdisc", "show", "dev", &dev], T)?
            .contains("clsact"))
    };
    let tcx = kernel_has_tcx()?;
    assert!(!clsact()?, "a fresh veth has no clsact qdisc");

    let first = LiveAgent::start(&lab, &ns, &[&dev], &[])?;
    // A TCX link is no `tc filter`; the netlink filter is one, named after the program.
    assert_eq!(filters()?, usize::from(!tcx));
    assert_eq!(clsact()?, !tcx);
    first.process.signal(libc::SIGKILL)?;
    first.process.wait_timeout(Duration::from_secs(10))?;
    assert_eq!(filters()?, usize::from(!tcx), "after SIGKILL");

    let second = LiveAgent::start(&lab, &ns, &[&dev], &[])?;
    assert_eq!(filters()?, usize::from(!tcx), "one filter, not two");
    assert_eq!(
        second
            .process
            .stderr()
            .contains("removed the TC egress filter a previous detector left"),
        !tcx,
        "{}",
        second.process.stderr()
    );
    second.stop()?;
    assert_eq!(filters()?, 0, "after a clean exit");
    // The qdisc was the killed agent's: the second found it and leaves it.
    assert_eq!(clsact()?, !tcx);

    if !tcx {
        lab.run_ok(&ns, &["tc", "qdisc", "del", "dev", &dev, "clsact"], T)?;
        let third = LiveAgent::start(&lab, &ns, &[&dev], &[])?;
        assert!(clsact()?);
        third.stop()?;
        assert!(!clsact()?, "the qdisc the agent added is removed on exit");
    }
    Ok(())
}
