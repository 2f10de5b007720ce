//! Field case 5 of docs/field-cases.md: a stateful middlebox forgets idle flows.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    certs::{DEFAULT_CN, path_str, s_client_args},
    clients::*,
    netns::Lab,
    process::run_host,
    servers::NginxSite,
    util::tail,
};

use super::{expect::*, runner::*, *};

/// The router's conntrack timeout for established TCP flows in field case 5
/// (docs/field-cases.md) (350 s, scaled).
pub const CONNTRACK_TIMEOUT_S: u32 = 4;

/// The nftables table the field-case-5 (docs/field-cases.md) scenario installs on the
/// router.
pub(crate) const NFT_TABLE: &str = "dlab_idle_lb";

/// Undoes the router's stateful firewall when dropped (the demo plays more scenarios in the
/// same lab afterwards).
pub(crate) struct RouterFirewall {
    ns: String,
    old_timeout: String,
}

impl Drop for RouterFirewall {
    fn drop(&mut self) {
        let ns = self.ns.as_str();
        let t = Duration::from_secs(10);
        let _ = run_host(
            &[
                "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE,
            ],
            t,
        );
        let _ = run_host(
            &[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                &format!(
                    "net.netfilter.nf_conntrack_tcp_timeout_established={}",
                    self.old_timeout
                ),
            ],
            t,
        );
    }
}

/// Makes the router a stateful firewall like the field's load balancer: conntrack forgets
/// established TCP flows after [`CONNTRACK_TIMEOUT_S`] of quiet, and the forward chain drops
/// every packet that is neither part of a tracked flow nor a SYN.
pub(crate) fn stateful_router(lab: &Lab) -> Result<RouterFirewall> {
    let (router, _, _) = lab.router_parts()?;
    let rules = format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state new tcp flags & (fin | syn | rst | ack) == syn accept\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t}}\n\
         }}\n"
    );
    let file = lab.dir().join("router.nft");
    fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    lab.run_ok(&router, &["nft", "-f", path_str(&file)?], T)?;
    let key = "net.netfilter.nf_conntrack_tcp_timeout_established";
    let old_timeout = lab
        .run_ok(&router, &["sysctl", "-n", key], T)?
        .trim()
        .to_string();
    let guard = RouterFirewall {
        ns: router.clone(),
        old_timeout,
    };
    lab.run_ok(
        &router,
        &[
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={CONNTRACK_TIMEOUT_S}"),
        ],
        T,
    )?;
    Ok(guard)
}

/// Four keep-alive TLS sessions to nginx through the stateful router, each idle for a
/// different time after its first request: 2.5 s and 3.5 s (under the 4 s conntrack
/// timeout: they carry on, and tell the agent those gaps were survivable), 4.6 s and 6 s
/// (conntrack has forgotten them: the next request is dropped and the client retransmits
/// into silence). 1.5 s after each doomed request, both ends of that connection are
/// destroyed (`ss -K`; the router drops their RSTs too) so that neither the client's
/// retransmission backoff nor nginx's eventual close grows into an idle gap of its own.
pub(crate) fn conntrack_idle_drop(lab: &Lab) -> Result<Played> {
    /// (idle before the next request, whether conntrack still knows the flow by then)
    const PLAN: [(Duration, bool); 4] = [
        (Duration::from_millis(2500), true),
        (Duration::from_millis(3500), true),
        (Duration::from_millis(4600), false),
        (Duration::from_millis(6000), false),
    ];
    const RETRANSMIT_FOR: Duration = Duration::from_millis(1500);
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            keepalive_timeout_s: Some(60),
            ..Default::default()
        },
    )?;
    let firewall = stateful_router(lab)?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let connect = s4(lab, 443);
    let request = format!("GET / HTTP/1.1\r\nHost: {DEFAULT_CN}\r\n\r\n");
    // Start every session; each one's idle time counts from its first answer.
    let mut sessions = Vec::new();
    for (i, (idle, _)) in PLAN.iter().enumerate() {
        let args = s_client_args(connect, &tls.ca_cert, &[])?;
        let mut cli = lab.spawn_with_stdin(lab.client_ns(), &format!("s_client-{i}"), &args)?;
        cli.wait_for_output("Verify return code", T)?;
        cli.write_stdin(request.as_bytes())?;
        cli.wait_for_output("HTTP/1.1 200 OK", T)?;
        let since = Instant::now();
        let port = local_port(lab, cli.pid())?;
        sessions.push((cli, since + *idle, since, port));
    }
    // Then act in time order: requests at each session's deadline, kills 1.5 s later.
    enum Step {
        Request(usize),
        Kill(usize),
    }
    let mut steps: Vec<(Instant, Step)> = Vec::new();
    for (i, ((_, at, _, _), (_, lives))) in sessions.iter().zip(PLAN).enumerate() {
        steps.push((*at, Step::Request(i)));
        if !lives {
            steps.push((*at + RETRANSMIT_FOR, Step::Kill(i)));
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    let mut must = Vec::new();
    for (at, step) in steps {
        thread::sleep(at.saturating_duration_since(Instant::now()));
        match step {
            Step::Request(i) => {
                let (cli, _, since, _) = &mut sessions[i];
                let gap = since.elapsed().as_secs_f64();
                cli.write_stdin(request.as_bytes())?;
                if PLAN[i].1 {
                    wait_count(cli, "HTTP/1.1 200 OK", 2, T).with_context(|| {
                        format!(
                            "a session idle {gap:.1} s, under the conntrack timeout, should survive"
                        )
                    })?;
                    cli.close_stdin();
                    cli.wait_timeout(T)?;
                } else {
                    must.push(
                        Must::new("idle_timeout_drop", c4(lab), connect, "client").gap(gap, 0.5),
                    );
                }
            }
            Step::Kill(i) => {
                let (cli, _, _, port) = &mut sessions[i];
                ensure!(
                    count(&cli.output(), "HTTP/1.1 200 OK") == 1,
                    "the router should have dropped the request after {:.1} s idle:\n{}",
                    PLAN[i].0.as_secs_f64(),
                    tail(&cli.output(), 3000)
                );
                let port = format!(":{port}");
                lab.run_ok(
                    lab.client_ns(),
                    &["ss", "-tnK", "state", "established", "sport", "=", &port],
                    T,
                )?;
                // nginx still holds its end (the client's RST died at the router too); close
                // it now rather than with a FIN at teardown, which would be a later close
                // after idle of its own.
                lab.run_ok(
                    lab.server_ns(),
                    &["ss", "-tnK", "state", "established", "dport", "=", &port],
                    T,
                )?;
                if cli.wait_timeout(Duration::from_secs(3)).is_err() {
                    cli.stop();
                }
            }
        }
    }
    Ok(Played::new(
        must,
        MustNot::kinds(&[
            "rst_after_idle",
            "idle_close",
            "handshake_reset",
            "fatal_alert",
        ]),
    )
    .keep(nginx)
    .keep(firewall))
}

/// Local port of the one established TCP connection of process `pid` in the client
/// namespace.
pub(crate) fn local_port(lab: &Lab, pid: u32) -> Result<u16> {
    let ss = lab.run_ok(lab.client_ns(), &["ss", "-tnpH", "state", "established"], T)?;
    let needle = format!("pid={pid},");
    let line = ss
        .lines()
        .find(|l| l.contains(&needle))
        .with_context(|| format!("no established connection of pid {pid}:\n{ss}"))?;
    // Recv-Q Send-Q Local:Port Peer:Port users:(...)
    line.split_whitespace()
        .nth(2)
        .and_then(|local| local.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no local port in {line:?}"))
}
