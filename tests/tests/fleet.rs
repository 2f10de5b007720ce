//! Fleet aggregation, for real: three agents on three "hosts" (the client, router and
//! server namespaces of a lab), two edge Prometheus servers scraping them (one per
//! "cluster", with `external_labels`) and remote-writing into a global Prometheus that
//! loads `deploy/prometheus/detector.fleet.rules.yml`. Failures are played so that each
//! host sees a different number; the global server must give the exact fleet total and
//! per-host values, and the fleet recording rules must roll them up.
//!
//! Needs root, nginx, curl and Debian's `prometheus` like the other live tests.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use detector_lab::{
    Lab, NginxSite,
    agent::{LiveAgent, detector_bin},
    fixture::{root, serial},
    prometheus::{Prometheus, sample_value},
    url,
};

const T: Duration = Duration::from_secs(15);
/// Bound for the global server to hold what the agents counted (two scrape and
/// remote-write hops of about a second each, with margin for a loaded machine).
const BUDGET: Duration = Duration::from_secs(60);
const METRICS_PORT: u16 = 9863;

/// An edge server's configuration: scrape `targets` (host name, address) every second, the
/// host's name as the `instance` label (two hosts here have the same loopback address), and
/// remote-write everything to `global` with this edge's `cluster` label.
fn edge_config(cluster: &str, targets: &[(&str, String)], global: &str) -> String {
    let mut c = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  \
         external_labels:\n    cluster: {cluster}\n\
         scrape_configs:\n  - job_name: detector\n    static_configs:\n"
    );
    for (host, addr) in targets {
        c.push_str(&format!(
            "      - targets: [\"{addr}\"]\n        labels:\n          instance: {host}\n"
        ));
    }
    c.push_str(&format!(
        "remote_write:\n  - url: http://{global}/api/v1/write\n    queue_config:\n      \
         batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n"
    ));
    c
}

/// The value of each series of `expr` by the value of its label `by`.
fn by_label(prom: &Prometheus, expr: &str, by: &str) -> Result<BTreeMap<String, f64>> {
    prom.query(expr)?
        .iter()
        .map(|s| {
            let key = s["metric"][by].as_str().unwrap_or_default().to_string();
            let v = sample_value(s).with_context(|| format!("{expr}: {s}"))?;
            Ok((key, v))
        })
        .collect()
}

/// Polls `expr` at the global server until it is `want` (bounded).
fn wait_for(prom: &Prometheus, expr: &str, by: &str, want: &BTreeMap<String, f64>) -> Result<()> {
    let deadline = Instant::now() + BUDGET;
    loop {
        let got = by_label(prom, expr, by)?;
        if &got == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "`{expr}` by {by} is {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn edge_servers_remote_write_fleet_totals_and_per_host_values() -> Result<()> {
    if !root("the fleet test") {
        return Ok(());
    }
    let _turn = serial();
    let lab = Lab::routed()?;
    let (router, rc, rs) = lab.router_parts()?;
    let (client, server) = (lab.client_ns().to_string(), lab.server_ns().to_string());
    let ip = |iface: &str| -> Result<String> {
        Ok(lab.iface(iface).context("a lab interface")?.v4.to_string())
    };
    let (rc_ip, rs_ip) = (ip(&rc)?, ip(&rs)?);

    // Three hosts, each with its agent on its own interface and its endpoint on every
    // address of its namespace.
    let bin = detector_bin()?;
    let listen = format!("0.0.0.0:{METRICS_PORT}");
    let agent =
        |ns: &str, iface: &str| LiveAgent::start_listening(&bin, &lab, ns, &[iface], &[], &listen);
    let host_a = agent(&client, lab.client_if())?;
    let host_b = agent(&router, &rc)?;
    let host_c = agent(&server, lab.server_if())?;

    // The global server on the router, reached by both edges; the fleet rules load there.
    let rules = fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/detector.fleet.rules.yml"),
    )?;
    let global = Prometheus::start(
        &lab,
        &router,
        "global",
        "0.0.0.0",
        &format!("global:\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n"),
        &["--web.enable-remote-write-receiver"],
    )?;
    // Edge e1 in the client namespace scrapes hosts a and b; edge e2 on the server, host c.
    let local = format!("127.0.0.1:{METRICS_PORT}");
    let _e1 = Prometheus::start(
        &lab,
        &client,
        "edge-e1",
        "127.0.0.1",
        &edge_config(
            "e1",
            &[
                ("a", local.clone()),
                ("b", format!("{rc_ip}:{METRICS_PORT}")),
            ],
            &format!("{rc_ip}:{}", global.port),
        ),
        &[],
    )?;
    let _e2 = Prometheus::start(
        &lab,
        &server,
        "edge-e2",
        "127.0.0.1",
        &edge_config("e2", &[("c", local)], &format!("{rs_ip}:{}", global.port)),
        &[],
    )?;
    let up: BTreeMap<String, f64> = ["a", "b", "c"].map(|h| (h.to_string(), 1.0)).into();
    wait_for(&global, r#"up{job="detector"}"#, "instance", &up)
        .context("every host scraped and written through to the global server")?;

    // Field case 3 (plaintext HTTP to a TLS port) from different places, so each host sees
    // a different number: client to server (a, b and c see it), the router itself to the
    // server (leaves by rs: only c), the client to the router (a and b).
    let site = NginxSite {
        tls: true,
        port: 443,
        ..Default::default()
    };
    let _nginx_server = lab.nginx(&server, site.clone())?;
    let _nginx_router = lab.nginx(&router, site)?;
    let server_url = url("http", IpAddr::V4(lab.server_v4()), 443, "/");
    let router_url = url("http", rc_ip.parse()?, 443, "/");
    let curl = |ns: &str, target: &str, times: usize| -> Result<()> {
        for _ in 0..times {
            lab.run(ns, &["curl", "-sS", "--max-time", "5", target], T)?;
        }
        Ok(())
    };
    curl(&client, &server_url, 2)?;
    curl(&router, &server_url, 3)?;
    curl(&client, &router_url, 1)?;
    let per_host = [("a", 3.0), ("b", 3.0), ("c", 5.0)];
    for (agent, (host, n)) in [&host_a, &host_b, &host_c].into_iter().zip(per_host) {
        let d = agent.wait_for(n as usize, T)?;
        ensure!(
            d.iter().all(|d| d["kind"] == "http_to_tls_port"),
            "host {host}: {d:?}"
        );
    }

    // Per host, and the fleet total, as the global server has them.
    let want: BTreeMap<String, f64> = per_host.map(|(h, n)| (h.to_string(), n)).into();
    wait_for(
        &global,
        r#"sum by (instance) (detector_diagnoses_total{kind="http_to_tls_port"})"#,
        "instance",
        &want,
    )?;
    let total = global.value(r#"sum(detector_diagnoses_total{kind="http_to_tls_port"})"#)?;
    assert_eq!(total, Some(11.0));
    // Clusters come from the edges' external labels.
    let clusters = by_label(
        &global,
        r#"sum by (cluster) (detector_diagnoses_total{kind="http_to_tls_port"})"#,
        "cluster",
    )?;
    assert_eq!(
        clusters,
        [("e1".to_string(), 6.0), ("e2".to_string(), 5.0)].into()
    );

    // The fleet rules: the kind's rate across hosts, and the top hosts, c first.
    let deadline = Instant::now() + BUDGET;
    global.wait_value(
        r#"fleet:detector_diagnoses:rate5m{kind="http_to_tls_port"}"#,
        deadline,
        |v| v > 0.0,
    )?;
    let top = loop {
        let top = by_label(&global, "fleet:detector_top_hosts:rate5m", "instance")?;
        if top.len() == 3 || Instant::now() > deadline {
            break top;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(top.len(), 3, "{top:?}");
    let first = top
        .iter()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .map(|(h, _)| h.as_str());
    assert_eq!(first, Some("c"), "{top:?}");

    for agent in [host_a, host_b, host_c] {
        agent.stop()?;
    }
    Ok(())
}
