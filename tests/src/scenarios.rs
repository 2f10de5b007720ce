//! The lab's scenarios: every field case of BRIEF.md (and handshake failures, and clean
//! controls) played by real software in a fresh routed [`Lab`], with the agent running live
//! on the router and tcpdump capturing there. Shared by `cargo xtask lab` (the `lab` binary),
//! `cargo xtask demo` and the regression suite (`tests/lab_regression.rs`), so the three
//! cannot drift apart.
//!
//! A scenario knows what must be diagnosed (an [`Expected`]: kind, client IP, server,
//! sender, and for idle cases the gap with a tolerance) and what must not. [`run`] plays one
//! and writes `NAME.pcap`, `NAME.expected.json` and `NAME.live.json` into an output dir;
//! [`Expected::check`] judges any list of diagnoses (live or replayed) against it.
//!
//! Long field timeouts are scaled down: nginx's keep-alive timeout is 3 s (the field's WAF:
//! 120 s), the router's conntrack forgets established flows after 4 s (the field's load
//! balancer: 350 s), and the agent's `--idle-threshold` is [`IDLE_THRESHOLD_S`] (2 s)
//! accordingly.

use std::{
    any::Any,
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    agent::{LiveAgent, parse_lines},
    idle_lab::forget_idle_flows,
    lab::{
        DEFAULT_CN, Lab, LabProcess, Nginx, NginxSite, cert_args, path_str, run_host,
        s_client_args, url,
    },
    long_lived::{LongLived, Version},
    relay::{Relay, Resumption, Verdict},
    spoof::{Flood, route_answers_into_lab, spawn_flood},
};

/// The agent's `--idle-threshold` in every scenario: below the scaled-down timeouts (3 s
/// keep-alive, 4 s conntrack), above anything a clean scenario pauses for.
pub const IDLE_THRESHOLD_S: f64 = 2.0;
/// The agent's `--correlation-window` in replay, as live (see [`LiveAgent`]).
pub const CORRELATION_WINDOW_S: f64 = crate::agent::CORRELATION_WINDOW_S;
/// nginx's `keepalive_timeout` in the field-case-4 scenarios (the field's 120 s, scaled).
pub const KEEPALIVE_TIMEOUT_S: u32 = 3;
/// The router's conntrack timeout for established TCP flows in field case 5 (350 s, scaled).
pub const CONNTRACK_TIMEOUT_S: u32 = 4;
/// `ssl_protocols` of every TLS nginx here: nginx 1.22 (Debian 12) leaves TLS 1.3 off
/// unless told.
pub const NGINX_PROTOCOLS: &str = "TLSv1.2 TLSv1.3";

/// Bound for each step of a scenario (a client run, a server answer).
const T: Duration = Duration::from_secs(15);
/// After the last traffic, longer than the correlation window, so that a late extra
/// diagnosis would show.
const SETTLE: Duration = Duration::from_millis(1500);

/// Scenarios that show the detector wrong: (name, what goes wrong). The regression suite
/// does not assert these; the lab still records the correct expectation for them.
pub const KNOWN_FAILING: &[(&str, &str)] = &[];

/// The regression suite's subset: field cases 1 to 4 and two clean controls, each a few
/// seconds.
pub const QUICK: &[&str] = &[
    "reneg-tls12",
    "resume-rejected-tls13-psk",
    "http-to-nginx-tls-v4",
    "idle-close-nginx-tls12",
    "clean-tls13",
    "clean-resume-tls12-ticket",
];

/// What `cargo xtask demo` plays into one lab: one scenario per field case (and a clean
/// one), field case 5 last since it changes the router's firewall.
pub const DEMO: &[&str] = &[
    "clean-keepalive",
    "reneg-tls12",
    "resume-rejected-tls12-ticket",
    "http-to-nginx-tls-v4",
    "tls-to-nginx-80",
    "hs-unknown-ca",
    "idle-close-nginx-tls12",
    "conntrack-idle-drop",
];

/// One scenario of the lab.
pub struct Scenario {
    /// Name: file stem of its outputs, and how it is picked on the command line.
    pub name: &'static str,
    /// BRIEF.md field case it reproduces, `None` for handshake failures and controls.
    pub field_case: Option<u8>,
    /// What it plays, in a sentence.
    pub plays: &'static str,
    /// Rough duration of one run, seconds, including lab setup and the agent's start.
    pub approx_s: u32,
    /// The agent's `--idle-threshold` for it.
    pub idle_threshold_s: f64,
    /// The agent's other options for it (live and in replay), e.g. a small flow table.
    pub agent_args: &'static [&'static str],
    /// Programs it needs beyond the lab's usual ones; missing ones skip it.
    pub needs: &'static [&'static str],
    play: Play,
}

/// How a scenario is played relative to the agent's start.
pub enum Play {
    /// The agent watches from the start: every connection's handshake is seen.
    Watched(fn(&Lab) -> Result<Played>),
    /// Connections opened before the agent starts (every agent restart or upgrade meets
    /// them): `open` runs first, the agent starts, then `resume` carries on with what
    /// `open` opened.
    OpenedBefore {
        open: fn(&Lab) -> Result<LongLived>,
        resume: fn(&Lab, LongLived) -> Result<Played>,
    },
}

impl Scenario {
    /// Plays the scenario in `lab` (routed), which may already have an agent running; an
    /// [`Play::OpenedBefore`] scenario then opens and resumes at once (the agent sees its
    /// connections start: [`run`] is what starts the agent in between).
    pub fn play(&self, lab: &Lab) -> Result<Played> {
        let played = match &self.play {
            Play::Watched(play) => play(lab),
            Play::OpenedBefore { open, resume } => open(lab).and_then(|o| resume(lab, o)),
        };
        played.with_context(|| format!("scenario {}", self.name))
    }

    /// Programs of [`Scenario::needs`] not found on PATH.
    pub fn missing_programs(&self) -> Vec<&'static str> {
        self.needs
            .iter()
            .copied()
            .filter(|p| find_program(p).is_none())
            .collect()
    }

    /// `1`, `2`, ... or `-`.
    pub fn case_label(&self) -> String {
        self.field_case
            .map_or_else(|| "-".to_string(), |c| c.to_string())
    }
}

/// Every scenario, in the order `--list` shows and a full run plays them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "reneg-tls12",
        field_case: Some(1),
        plays: "TLS 1.2 s_server sends an (encrypted) HelloRequest mid-session (`r`); s_client \
             renegotiates",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(reneg_tls12),
    },
    Scenario {
        name: "resume-rejected-tls12-id",
        field_case: Some(2),
        plays: "s_client resumes by TLS 1.2 session ID through the inspecting relay, which \
             answers handshake_failure",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(resume_rejected_tls12_id),
    },
    Scenario {
        name: "resume-rejected-tls12-ticket",
        field_case: Some(2),
        plays: "s_client resumes by TLS 1.2 session ticket through the inspecting relay, which \
             answers handshake_failure",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(resume_rejected_tls12_ticket),
    },
    Scenario {
        name: "resume-rejected-tls13-psk",
        field_case: Some(2),
        plays: "s_client resumes by TLS 1.3 PSK through the inspecting relay, which answers \
             handshake_failure",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(resume_rejected_tls13_psk),
    },
    Scenario {
        name: "http-to-nginx-tls-v4",
        field_case: Some(3),
        plays: "curl sends plaintext HTTP to nginx's TLS port 443 over IPv4; nginx answers 400",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(http_to_nginx_tls_v4),
    },
    Scenario {
        name: "http-to-nginx-tls-v6",
        field_case: Some(3),
        plays: "curl sends plaintext HTTP to nginx's TLS port 443 over IPv6; nginx answers 400",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(http_to_nginx_tls_v6),
    },
    Scenario {
        name: "http-to-s-server",
        field_case: Some(3),
        plays: "curl sends plaintext HTTP to openssl s_server on 8443, which just closes",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(http_to_s_server),
    },
    Scenario {
        name: "tls-to-nginx-80",
        field_case: Some(3),
        plays: "s_client sends a ClientHello to plaintext nginx on port 80, which answers \
             HTTP/1.1 400",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(tls_to_nginx_80),
    },
    Scenario {
        name: "idle-close-nginx-tls12",
        field_case: Some(4),
        plays: "TLS 1.2 keep-alive connection idles; nginx (keepalive_timeout 3 s) closes with \
             an encrypted alert and FIN",
        approx_s: 8,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(idle_close_nginx_tls12),
    },
    Scenario {
        name: "idle-close-nginx-tls13",
        field_case: Some(4),
        plays: "TLS 1.3 keep-alive connection idles; nginx (keepalive_timeout 3 s) closes with \
             close_notify and FIN",
        approx_s: 8,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(idle_close_nginx_tls13),
    },
    Scenario {
        name: "conntrack-idle-drop",
        field_case: Some(5),
        plays: "nftables router, conntrack forgets established flows after 4 s: sessions idle \
             4.6 s and 6 s are dropped (client retransmits into silence), 2.5 s and 3.5 s \
             survive",
        approx_s: 11,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["nft"],
        play: Play::Watched(conntrack_idle_drop),
    },
    Scenario {
        name: "hs-unknown-ca",
        field_case: None,
        plays: "s_client rejects a certificate from an unknown CA (TLS 1.2 over IPv4, TLS 1.3 \
             over IPv6)",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(hs_unknown_ca),
    },
    Scenario {
        name: "hs-protocol-version",
        field_case: None,
        plays: "TLS 1.2-only s_client against a TLS 1.3-only s_server: protocol_version alert",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(hs_protocol_version),
    },
    Scenario {
        name: "hs-no-shared-cipher",
        field_case: None,
        plays: "TLS 1.2 s_client and s_server with disjoint cipher lists: handshake_failure alert",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(hs_no_shared_cipher),
    },
    Scenario {
        name: "clean-tls12",
        field_case: None,
        plays: "clean control: interactive TLS 1.2 s_client/s_server session, data both ways",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_tls12),
    },
    Scenario {
        name: "clean-tls13",
        field_case: None,
        plays: "clean control: interactive TLS 1.3 s_client/s_server session, data both ways",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_tls13),
    },
    Scenario {
        name: "clean-resume-tls12-id",
        field_case: None,
        plays: "clean control: TLS 1.2 session-ID resumption accepted by s_server",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_resume_tls12_id),
    },
    Scenario {
        name: "clean-resume-tls12-ticket",
        field_case: None,
        plays: "clean control: TLS 1.2 session-ticket resumption accepted by s_server",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_resume_tls12_ticket),
    },
    Scenario {
        name: "clean-resume-tls13-psk",
        field_case: None,
        plays: "clean control: TLS 1.3 PSK resumption accepted by s_server",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_resume_tls13_psk),
    },
    Scenario {
        name: "clean-http2",
        field_case: None,
        plays: "clean control: curl --http2 to nginx (ALPN h2), two requests on one connection",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_http2),
    },
    Scenario {
        name: "clean-large-download",
        field_case: None,
        plays: "clean control: curl downloads 20 MiB from nginx over TLS",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_large_download),
    },
    Scenario {
        name: "clean-keepalive",
        field_case: None,
        plays: "clean control: keep-alive sessions to nginx (curl, 3 requests; s_client, 2 \
             requests 1 s apart), closed by the client",
        approx_s: 6,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_keepalive),
    },
    Scenario {
        name: "clean-http80",
        field_case: None,
        plays: "clean control: plain HTTP to nginx on port 80, IPv4 and IPv6",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_http80),
    },
    Scenario {
        name: "midstream-adopted-tls12",
        field_case: None,
        plays: "a TLS 1.2 connection (Python ssl) opened before the agent starts idles 4 s, \
             then resumes and is answered: adopted mid-stream, nothing to diagnose",
        approx_s: 12,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3"],
        play: Play::OpenedBefore {
            open: open_long_lived_tls12,
            resume: midstream_adopted,
        },
    },
    Scenario {
        name: "midstream-adopted-tls13",
        field_case: None,
        plays: "a TLS 1.3 connection (Python ssl) opened before the agent starts idles 4 s, \
             then resumes and is answered: adopted mid-stream, nothing to diagnose",
        approx_s: 12,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3"],
        play: Play::OpenedBefore {
            open: open_long_lived_tls13,
            resume: midstream_adopted,
        },
    },
    Scenario {
        name: "midstream-dropped-tls12",
        field_case: Some(5),
        plays: "a TLS 1.2 connection opened before the agent starts idles 4 s; the router's \
             nftables now drop it, so the resumed request is retransmitted into silence",
        approx_s: 13,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3", "nft"],
        play: Play::OpenedBefore {
            open: open_long_lived_tls12,
            resume: midstream_dropped,
        },
    },
    Scenario {
        name: "midstream-dropped-tls13",
        field_case: Some(5),
        plays: "a TLS 1.3 connection opened before the agent starts idles 4 s; the router's \
             nftables now drop it, so the resumed request is retransmitted into silence",
        approx_s: 13,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3", "nft"],
        play: Play::OpenedBefore {
            open: open_long_lived_tls13,
            resume: midstream_dropped,
        },
    },
    Scenario {
        name: "flood-spoofed",
        field_case: None,
        plays: "640 spoofed one-byte segments from 198.18.0.0/15 to nginx's 443 (agent flow \
             table of 64) while curl sessions run, plaintext HTTP hits 443 and nginx closes an \
             idle keep-alive",
        approx_s: 12,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &["--flow-table-size", "64"],
        needs: &[],
        play: Play::Watched(flood_spoofed),
    },
    Scenario {
        name: "client-reneg-tls12",
        field_case: None,
        plays: "TLS 1.2 s_client renegotiates on its own (`R`) against s_server \
             -client_renegotiation",
        approx_s: 8,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(client_reneg_tls12),
    },
    Scenario {
        name: "tls-to-python-http",
        field_case: Some(3),
        plays: "s_client sends a ClientHello to Python's http.server, which answers an HTML \
             error page without a status line",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3"],
        play: Play::Watched(tls_to_python_http),
    },
    Scenario {
        name: "tls-to-smtp-banner",
        field_case: Some(3),
        plays: "s_client sends a ClientHello to port 25, answered by an SMTP `220 ` banner",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3"],
        play: Play::Watched(tls_to_smtp_banner),
    },
    Scenario {
        name: "tls-to-ssh-banner",
        field_case: Some(3),
        plays: "s_client sends a ClientHello to port 22, answered by an `SSH-2.0-` banner",
        approx_s: 5,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &["python3"],
        play: Play::Watched(tls_to_ssh_banner),
    },
    Scenario {
        name: "clean-bulk-both-ways",
        field_case: None,
        plays: "clean control: per TLS version (1.2, 1.3) three 20 MiB downloads from nginx on \
             one connection and three 20 MiB uploads (WebDAV PUT) on another",
        approx_s: 12,
        idle_threshold_s: IDLE_THRESHOLD_S,
        agent_args: &[],
        needs: &[],
        play: Play::Watched(clean_bulk_both_ways),
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Scenarios picked by command-line words: an exact name, or a prefix (`clean`,
/// `resume-rejected`) standing for every scenario it starts; all when `words` is empty.
pub fn select(words: &[String]) -> Result<Vec<&'static Scenario>> {
    if words.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    let mut picked: Vec<&'static Scenario> = Vec::new();
    for w in words {
        let hits: Vec<&'static Scenario> = match find(w) {
            Some(s) => vec![s],
            None => SCENARIOS
                .iter()
                .filter(|s| s.name.starts_with(w.as_str()))
                .collect(),
        };
        if hits.is_empty() {
            bail!(
                "no scenario is called or starts with {w:?}; `--list` shows them: {}",
                SCENARIOS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for h in hits {
            if !picked.iter().any(|p| p.name == h.name) {
                picked.push(h);
            }
        }
    }
    Ok(picked)
}

/// Why a scenario is known to show the detector wrong, if it is.
pub fn known_failing(name: &str) -> Option<&'static str> {
    KNOWN_FAILING
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

// ---------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------

/// One diagnosis that must be found.
#[derive(Clone, Debug, PartialEq)]
pub struct Must {
    pub kind: String,
    pub client_ip: IpAddr,
    /// `ip:port`, IPv6 in brackets, as the agent writes it.
    pub server: String,
    /// `detail.sender` of the diagnosis.
    pub sender: Option<String>,
    /// `detail.gap_s`, seconds, for idle kinds.
    pub gap_s: Option<f64>,
    /// How far `detail.gap_s` may be from `gap_s`.
    pub gap_tolerance: Option<f64>,
}

impl Must {
    fn new(kind: &str, client: IpAddr, server: SocketAddr, sender: &str) -> Must {
        Must {
            kind: kind.to_string(),
            client_ip: client,
            server: server.to_string(),
            sender: Some(sender.to_string()),
            gap_s: None,
            gap_tolerance: None,
        }
    }

    fn gap(mut self, gap_s: f64, tolerance: f64) -> Must {
        self.gap_s = Some(gap_s);
        self.gap_tolerance = Some(tolerance);
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "client_ip": self.client_ip.to_string(),
            "server": self.server,
            "sender": self.sender,
            "gap_s": self.gap_s,
            "gap_tolerance": self.gap_tolerance,
        })
    }

    fn from_json(v: &Value) -> Result<Must> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Ok(Must {
            kind: s("kind").context("must: kind")?,
            client_ip: s("client_ip")
                .context("must: client_ip")?
                .parse()
                .context("must: client_ip")?,
            server: s("server").context("must: server")?,
            sender: s("sender"),
            gap_s: v["gap_s"].as_f64(),
            gap_tolerance: v["gap_tolerance"].as_f64(),
        })
    }

    /// Whether diagnosis `d` is this one.
    pub fn matches(&self, d: &Value) -> bool {
        let ip_of = |s: &str| s.parse::<SocketAddr>().ok().map(|a| a.ip());
        d["kind"] == self.kind.as_str()
            && d["client"].as_str().and_then(ip_of) == Some(self.client_ip)
            && d["server"] == self.server.as_str()
            && self
                .sender
                .as_deref()
                .is_none_or(|s| d["detail"]["sender"] == s)
            && match (self.gap_s, d["detail"]["gap_s"].as_f64()) {
                (None, _) => true,
                (Some(want), Some(got)) => (got - want).abs() <= self.gap_tolerance.unwrap_or(0.0),
                (Some(_), None) => false,
            }
    }

    /// One line for tables and messages.
    pub fn short(&self) -> String {
        let mut s = format!("{} {} → {}", self.kind, self.client_ip, self.server);
        if let Some(by) = &self.sender {
            s.push_str(&format!(" by {by}"));
        }
        if let Some(g) = self.gap_s {
            s.push_str(&format!(
                " gap {g:.1}±{:.1}s",
                self.gap_tolerance.unwrap_or(0.0)
            ));
        }
        s
    }
}

/// What must not be diagnosed.
#[derive(Clone, Debug, PartialEq)]
pub enum MustNot {
    /// None of these kinds.
    Kinds(Vec<String>),
    /// No diagnosis at all (clean controls).
    Nothing,
}

impl MustNot {
    fn kinds(kinds: &[&str]) -> MustNot {
        MustNot::Kinds(kinds.iter().map(|k| k.to_string()).collect())
    }
}

/// The string `must_not` holds for clean controls.
pub const NO_DIAGNOSIS: &str = "no diagnosis at all";

/// A scenario's `NAME.expected.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub scenario: String,
    pub field_case: Option<u8>,
    pub idle_threshold_s: f64,
    pub must: Vec<Must>,
    pub must_not: MustNot,
}

impl Expected {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "field_case": self.field_case,
            "idle_threshold_s": self.idle_threshold_s,
            "must": self.must.iter().map(Must::to_json).collect::<Vec<_>>(),
            "must_not": match &self.must_not {
                MustNot::Kinds(k) => json!(k),
                MustNot::Nothing => json!(NO_DIAGNOSIS),
            },
        })
    }

    pub fn from_json(v: &Value) -> Result<Expected> {
        let must_not = match &v["must_not"] {
            Value::String(s) if s == NO_DIAGNOSIS => MustNot::Nothing,
            Value::Array(a) => MustNot::Kinds(
                a.iter()
                    .map(|k| k.as_str().map(str::to_string).context("must_not: a kind"))
                    .collect::<Result<_>>()?,
            ),
            other => bail!("must_not: {other}"),
        };
        Ok(Expected {
            scenario: v["scenario"].as_str().context("scenario")?.to_string(),
            field_case: v["field_case"].as_u64().and_then(|c| u8::try_from(c).ok()),
            idle_threshold_s: v["idle_threshold_s"].as_f64().context("idle_threshold_s")?,
            must: v["must"]
                .as_array()
                .context("must")?
                .iter()
                .map(Must::from_json)
                .collect::<Result<_>>()?,
            must_not,
        })
    }

    /// Reads `NAME.expected.json`.
    pub fn read(path: &Path) -> Result<Expected> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Expected::from_json(&v).with_context(|| format!("in {}", path.display()))
    }

    /// Everything wrong with `got` against this expectation: a `must` not found, a
    /// diagnosis no `must` accounts for, a `must_not` kind; empty when it is exactly right.
    pub fn check(&self, got: &[Value]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut left: Vec<&Value> = got.iter().collect();
        for m in &self.must {
            match left.iter().position(|d| m.matches(d)) {
                Some(i) => {
                    left.remove(i);
                }
                None => problems.push(format!("missing: {}", m.short())),
            }
        }
        for d in &left {
            problems.push(format!("unexpected: {}", short_diagnosis(d)));
        }
        match &self.must_not {
            MustNot::Nothing => {}
            MustNot::Kinds(kinds) => {
                for d in got {
                    if kinds.iter().any(|k| d["kind"] == k.as_str()) {
                        problems.push(format!("must not: {}", short_diagnosis(d)));
                    }
                }
            }
        }
        problems
    }

    /// The `must` list in one line (`nothing` for clean controls).
    pub fn summary(&self) -> String {
        if self.must.is_empty() {
            return "nothing".into();
        }
        self.must
            .iter()
            .map(|m| {
                let mut s = m.kind.clone();
                if let Some(by) = &m.sender {
                    s.push_str(&format!("/{by}"));
                }
                if let Some(g) = m.gap_s {
                    s.push_str(&format!(" {g:.1}s"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A diagnosis in one line: kind, client → server, sender, gap.
pub fn short_diagnosis(d: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = format!(
        "{} {} → {}",
        s(&d["kind"]),
        s(&d["client"]),
        s(&d["server"])
    );
    if let Some(by) = d["detail"]["sender"].as_str() {
        out.push_str(&format!(" by {by}"));
    }
    if let Some(g) = d["detail"]["gap_s"].as_f64() {
        out.push_str(&format!(" gap {g:.2}s"));
    }
    out
}

/// Diagnoses in one line, like [`Expected::summary`].
pub fn summary_of(got: &[Value]) -> String {
    if got.is_empty() {
        return "nothing".into();
    }
    got.iter()
        .map(|d| {
            let mut s = d["kind"].as_str().unwrap_or("?").to_string();
            if let Some(by) = d["detail"]["sender"].as_str() {
                s.push_str(&format!("/{by}"));
            }
            if let Some(g) = d["detail"]["gap_s"].as_f64() {
                s.push_str(&format!(" {g:.1}s"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// (kind, client, server) of each diagnosis: what live and replay must agree on.
pub fn identities(got: &[Value]) -> BTreeSet<(String, String, String)> {
    got.iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("client"), s("server"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The agent, and replay
// ---------------------------------------------------------------------------------------

/// The `detector` binary: `$DETECTOR_BIN`, else next to this executable (`target/release/`
/// for the lab binary), else one level up (`target/release/deps/` for test binaries).
pub fn detector_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DETECTOR_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "DETECTOR_BIN={} does not exist", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has a directory")?;
    for candidate in [dir.join("detector"), dir.join("../detector")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no detector binary next to {}: build it first (`cargo build --release -p \
         detector-user --bin detector`) or set DETECTOR_BIN",
        exe.display()
    )
}

/// The agent running live on the lab's router: XDP on both router veths, `--no-egress`
/// (both directions of every session arrive there as ingress); `extra` are further
/// options (a scenario's [`Scenario::agent_args`]).
pub fn agent_on_router(
    lab: &Lab,
    detector: &Path,
    idle_threshold_s: f64,
    extra: &[&str],
) -> Result<LiveAgent> {
    let (router, rc, rs) = lab.router_parts()?;
    let idle = idle_threshold_s.to_string();
    let mut args = vec!["--no-egress", "--idle-threshold", &idle];
    args.extend_from_slice(extra);
    LiveAgent::start_with(detector, lab, &router, &[&rc, &rs], &args)
}

/// `detector replay PCAP` with the scenario's idle threshold and the lab's correlation
/// window, and `extra` options (a scenario's [`Scenario::agent_args`]): the diagnoses, and
/// stderr (the summary).
pub fn replay(
    detector: &Path,
    pcap: &Path,
    idle_threshold_s: f64,
    extra: &[&str],
) -> Result<(Vec<Value>, String)> {
    let out = Command::new(detector)
        .arg("replay")
        .arg(pcap)
        .args(["--idle-threshold", &idle_threshold_s.to_string()])
        .args(extra)
        .args(["--correlation-window", &CORRELATION_WINDOW_S.to_string()])
        .output()
        .with_context(|| format!("running {} replay", detector.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "detector replay {} failed: {stderr}",
        pcap.display()
    );
    Ok((parse_lines(&String::from_utf8_lossy(&out.stdout))?, stderr))
}

// ---------------------------------------------------------------------------------------
// Running one scenario in a lab of its own
// ---------------------------------------------------------------------------------------

/// What a scenario left behind.
pub struct Outcome {
    pub expected: Expected,
    /// The live agent's diagnoses.
    pub live: Vec<Value>,
    /// The live agent's /metrics, scraped just before it stopped.
    pub metrics: String,
    /// `OUT/NAME.pcap`.
    pub pcap: PathBuf,
    pub expected_path: PathBuf,
    pub live_path: PathBuf,
    /// Wall time of the whole run, lab setup to teardown.
    pub duration: Duration,
}

/// Plays `s` in a fresh routed lab with the agent live on the router and tcpdump on the
/// router's client-side veth (which sees every packet the router receives from the client,
/// also those its firewall drops, and every packet it forwards to the client), then writes
/// `NAME.pcap`, `NAME.expected.json` and `NAME.live.json` into `out`.
pub fn run(s: &Scenario, out: &Path, detector: &Path) -> Result<Outcome> {
    let started = Instant::now();
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let lab = Lab::routed()?;
    let (router, rc, _) = lab.router_parts()?;
    let capture = lab.capture(&router, &rc, format!("{}.pcap", s.name))?;
    // Connections of an OpenedBefore scenario are up before the agent, as after a restart.
    // The capture is already running, so replay sees them whole; only the live agent meets
    // them mid-stream.
    let opened = match &s.play {
        Play::OpenedBefore { open, .. } => {
            Some(open(&lab).with_context(|| format!("scenario {}: opening", s.name))?)
        }
        Play::Watched(_) => None,
    };
    let agent = agent_on_router(&lab, detector, s.idle_threshold_s, s.agent_args)?;
    let played = match (&s.play, opened) {
        (Play::OpenedBefore { resume, .. }, Some(o)) => {
            resume(&lab, o).with_context(|| format!("scenario {}", s.name))
        }
        _ => s.play(&lab),
    };
    let played = match played {
        Ok(p) => p,
        Err(e) => {
            return Err(e.context(format!(
                "agent output so far:\n{}",
                tail(&agent.process.output(), 3000)
            )));
        }
    };
    agent.collect(played.must.len(), Duration::from_secs(8))?;
    thread::sleep(SETTLE);
    let metrics = agent.metrics(&lab)?;
    let stdout = agent.process.stdout_path().to_path_buf();
    let live = agent.stop()?;
    let raw = fs::read_to_string(&stdout)
        .with_context(|| format!("reading the agent's output {}", stdout.display()))?;
    let pcap_tmp = capture.stop()?;
    let pcap = out.join(format!("{}.pcap", s.name));
    fs::copy(&pcap_tmp, &pcap)
        .with_context(|| format!("copying {} to {}", pcap_tmp.display(), pcap.display()))?;
    let expected = Expected {
        scenario: s.name.to_string(),
        field_case: s.field_case,
        idle_threshold_s: s.idle_threshold_s,
        must: played.must.clone(),
        must_not: played.must_not.clone(),
    };
    let expected_path = out.join(format!("{}.expected.json", s.name));
    let text = serde_json::to_string_pretty(&expected.to_json())? + "\n";
    fs::write(&expected_path, text)
        .with_context(|| format!("writing {}", expected_path.display()))?;
    let live_path = out.join(format!("{}.live.json", s.name));
    fs::write(&live_path, &raw).with_context(|| format!("writing {}", live_path.display()))?;
    drop(played);
    drop(lab);
    Ok(Outcome {
        expected,
        live,
        metrics,
        pcap,
        expected_path,
        live_path,
        duration: started.elapsed(),
    })
}

/// What a scenario played: what must be seen, and the servers (and router changes) to keep
/// until the agent has stopped, so that no teardown traffic mixes in.
pub struct Played {
    pub must: Vec<Must>,
    pub must_not: MustNot,
    keep: Vec<Box<dyn Any>>,
}

impl Played {
    fn new(must: Vec<Must>, must_not: MustNot) -> Played {
        Played {
            must,
            must_not,
            keep: Vec::new(),
        }
    }

    fn keep(mut self, thing: impl Any) -> Played {
        self.keep.push(Box::new(thing));
        self
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        // Latest first: a relay before the server behind it.
        while let Some(k) = self.keep.pop() {
            drop(k);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the scenarios
// ---------------------------------------------------------------------------------------

fn c4(lab: &Lab) -> IpAddr {
    lab.client_v4().into()
}

fn s4(lab: &Lab, port: u16) -> SocketAddr {
    SocketAddr::new(lab.server_v4().into(), port)
}

/// Runs a client to completion and returns stdout and stderr together.
fn run_text(lab: &Lab, args: &[impl AsRef<std::ffi::OsStr>]) -> Result<(bool, String)> {
    let out = lab.run(lab.client_ns(), args, T)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Waits (bounded) until `needle` shows at least `n` times in the output of `p`.
fn wait_count(p: &LabProcess, needle: &str, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = p.output();
        if count(&out, needle) >= n {
            return Ok(());
        }
        if Instant::now() > deadline || p.try_wait()?.is_some() {
            bail!(
                "{needle:?} seen {} times, expected {n}, in the output of `{}`:\n{}",
                count(&out, needle),
                p.command(),
                tail(&out, 3000)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP exchange with an `s_server -www`; returns s_client's output.
fn www_get(lab: &Lab, name: &str, args: &[String]) -> Result<String> {
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), name, args)?;
    cli.write_stdin(b"GET / HTTP/1.0\r\n\r\n")?;
    cli.wait_for_output("</HTML>", T)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(cli.output())
}

/// The first "New, ..." or "Reused, ..." line s_client printed about its session.
fn session_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or("")
}

fn curl(lab: &Lab, extra: &[&str]) -> Result<std::process::Output> {
    let mut args = vec!["curl", "-sS", "--max-time", "10", "--noproxy", "*"];
    args.extend_from_slice(extra);
    lab.run(lab.client_ns(), &args, T)
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------
// Field case 1: renegotiation
// ---------------------------------------------------------------------------------------

fn reneg_tls12(lab: &Lab) -> Result<Played> {
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

// ---------------------------------------------------------------------------------------
// Field case 2: resumption rejected by an inline inspector
// ---------------------------------------------------------------------------------------

/// The relay (`tests::relay`) plays the inspecting firewall in front of s_server: it listens
/// on the server's address, port 443, and forwards to s_server on the server's loopback,
/// so the router sees client ↔ inspector traffic like the field's capture points did. A
/// full handshake first (forwarded, nothing to diagnose) saves the session; the second
/// connection offers it, and the relay kills it with a plaintext handshake_failure alert.
fn resume_rejected(lab: &Lab, method: Resumption, flags: &[&str]) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 4433, &args)?;
    let listen = s4(lab, 443);
    let relay = Relay::start(
        Some(lab.server_ns()),
        listen,
        SocketAddr::from(([127, 0, 0, 1], 4433)),
    )?;
    let sess = lab.dir().join(format!("{method}.sess"));
    let sess = path_str(&sess)?;
    let mut first = flags.to_vec();
    first.extend(["-sess_out", sess]);
    let out = www_get(
        lab,
        &format!("s_client-{method}-full"),
        &s_client_args(listen, &tls.ca_cert, &first)?,
    )?;
    ensure!(
        session_line(&out).starts_with("New, "),
        "{method}: first handshake: {out}"
    );
    let mut second = flags.to_vec();
    second.extend(["-sess_in", sess]);
    let (ok, text) = run_text(lab, &s_client_args(listen, &tls.ca_cert, &second)?)?;
    ensure!(
        !ok && text.contains("alert handshake failure"),
        "{method}: the resuming client should have got the relay's alert:\n{text}"
    );
    let conns = relay.wait_connections(2, T)?;
    ensure!(
        conns[0].verdict == Verdict::Forwarded && conns[1].verdict == Verdict::Rejected(method),
        "{method}: relay verdicts {conns:#?}"
    );
    Ok(Played::new(
        vec![Must::new("resumption_rejected", c4(lab), listen, "server")],
        MustNot::kinds(&["fatal_alert", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv)
    .keep(relay))
}

fn resume_rejected_tls12_id(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls12SessionId, &["-tls1_2", "-no_ticket"])
}

fn resume_rejected_tls12_ticket(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls12SessionTicket, &["-tls1_2"])
}

fn resume_rejected_tls13_psk(lab: &Lab) -> Result<Played> {
    resume_rejected(lab, Resumption::Tls13Psk, &["-tls1_3"])
}

// ---------------------------------------------------------------------------------------
// Field case 3: plaintext HTTP to a TLS port, and the reverse
// ---------------------------------------------------------------------------------------

fn http_to_nginx_tls(lab: &Lab, v6: bool) -> Result<Played> {
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

fn http_to_nginx_tls_v4(lab: &Lab) -> Result<Played> {
    http_to_nginx_tls(lab, false)
}

fn http_to_nginx_tls_v6(lab: &Lab) -> Result<Played> {
    http_to_nginx_tls(lab, true)
}

fn http_to_s_server(lab: &Lab) -> Result<Played> {
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

fn tls_to_nginx_80(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: false,
            port: 80,
            ..Default::default()
        },
    )?;
    let server = s4(lab, 80);
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
    .keep(nginx))
}

/// s_client's ClientHello to a plaintext server, which must make the handshake fail.
fn client_hello_to_plaintext(lab: &Lab, server: SocketAddr) -> Result<()> {
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
const BANNER_SERVER: &str = r#"
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
fn tls_to_plaintext(lab: &Lab, server: SocketAddr, srv: LabProcess) -> Result<Played> {
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

fn banner_server(lab: &Lab, port: u16, banner: &str) -> Result<(SocketAddr, LabProcess)> {
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
fn tls_to_python_http(lab: &Lab) -> Result<Played> {
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

fn tls_to_smtp_banner(lab: &Lab) -> Result<Played> {
    let (server, srv) = banner_server(lab, 25, "220 mail.server.test ESMTP Postfix (Debian/GNU)")?;
    tls_to_plaintext(lab, server, srv)
}

fn tls_to_ssh_banner(lab: &Lab) -> Result<Played> {
    let (server, srv) = banner_server(lab, 22, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")?;
    tls_to_plaintext(lab, server, srv)
}

// ---------------------------------------------------------------------------------------
// Field case 4: the reverse proxy's keep-alive timeout
// ---------------------------------------------------------------------------------------

/// s_client sends one HTTP/1.1 request on a keep-alive connection and stays connected;
/// nginx closes it after `keepalive_timeout` of quiet (TLS 1.2: an encrypted alert record
/// and FIN; TLS 1.3: a 19-byte application-data record, the close_notify, and FIN).
fn idle_close_nginx(lab: &Lab, version: &str) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            keepalive_timeout_s: Some(KEEPALIVE_TIMEOUT_S),
            ..Default::default()
        },
    )?;
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
fn keepalive_request(lab: &Lab, nginx: &Nginx, version: &str) -> Result<LabProcess> {
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
fn wait_server_close(cli: &LabProcess) -> Result<()> {
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
fn idle_close_by_nginx(lab: &Lab, connect: SocketAddr) -> Must {
    Must::new("idle_close", c4(lab), connect, "server").gap(f64::from(KEEPALIVE_TIMEOUT_S), 0.5)
}

fn idle_close_nginx_tls12(lab: &Lab) -> Result<Played> {
    idle_close_nginx(lab, "-tls1_2")
}

fn idle_close_nginx_tls13(lab: &Lab) -> Result<Played> {
    idle_close_nginx(lab, "-tls1_3")
}

// ---------------------------------------------------------------------------------------
// Field case 5: a stateful middlebox forgets idle flows
// ---------------------------------------------------------------------------------------

/// The nftables table the field-case-5 scenario installs on the router.
const NFT_TABLE: &str = "dlab_idle_lb";

/// Undoes the router's stateful firewall when dropped (the demo plays more scenarios in the
/// same lab afterwards).
struct RouterFirewall {
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
fn stateful_router(lab: &Lab) -> Result<RouterFirewall> {
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
fn conntrack_idle_drop(lab: &Lab) -> Result<Played> {
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
fn local_port(lab: &Lab, pid: u32) -> Result<u16> {
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

// ---------------------------------------------------------------------------------------
// Handshake failures
// ---------------------------------------------------------------------------------------

fn hs_unknown_ca(lab: &Lab) -> Result<Played> {
    let trusted = lab.tls_cert(DEFAULT_CN)?;
    let untrusted = lab.untrusted_cert()?;
    let srv = lab.s_server(lab.server_ns(), 443, &cert_args(&untrusted)?)?;
    let mut must = Vec::new();
    for (flags, client, server) in [
        (["-tls1_2", "-verify_return_error"], c4(lab), s4(lab, 443)),
        (
            ["-tls1_3", "-verify_return_error"],
            IpAddr::from(lab.client_v6()),
            SocketAddr::new(lab.server_v6().into(), 443),
        ),
    ] {
        let (ok, text) = run_text(lab, &s_client_args(server, &trusted.ca_cert, &flags)?)?;
        ensure!(
            !ok && text.contains("unable to get local issuer certificate"),
            "{flags:?}: expected an unknown-CA failure:\n{text}"
        );
        must.push(Must::new("fatal_alert", client, server, "client"));
    }
    Ok(Played::new(
        must,
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}

fn hs_protocol_version(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-tls1_3".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let server = s4(lab, 443);
    let (ok, text) = run_text(
        lab,
        &s_client_args(server, &tls.ca_cert, &["-tls1_2", "-verify_return_error"])?,
    )?;
    ensure!(
        !ok && text.contains("alert protocol version"),
        "expected a protocol_version alert:\n{text}"
    );
    Ok(Played::new(
        vec![Must::new("fatal_alert", c4(lab), server, "server")],
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}

fn hs_no_shared_cipher(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec![
        "-tls1_2".to_string(),
        "-cipher".into(),
        "ECDHE-ECDSA-AES256-GCM-SHA384".into(),
    ];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let server = s4(lab, 443);
    let (ok, text) = run_text(
        lab,
        &s_client_args(
            server,
            &tls.ca_cert,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        )?,
    )?;
    ensure!(
        !ok && text.contains("alert handshake failure"),
        "expected a handshake_failure alert:\n{text}"
    );
    Ok(Played::new(
        vec![Must::new("fatal_alert", c4(lab), server, "server")],
        MustNot::kinds(&["resumption_rejected", "handshake_reset", "http_to_tls_port"]),
    )
    .keep(srv))
}

// ---------------------------------------------------------------------------------------
// Precision: connections older than the agent, spoofed segments, client renegotiation
// ---------------------------------------------------------------------------------------

/// Port of the long-lived connections' server.
const LONG_LIVED_PORT: u16 = 443;
/// How long a connection opened before the agent stays quiet before it resumes, counted
/// from its last answer: past the idle threshold.
const LONG_IDLE: Duration = Duration::from_secs(4);
/// How long after its start the agent must have run before a connection resumes: longer
/// than the idle threshold, so "first seen mid-stream" cannot be explained by the agent
/// having just started (the case issue 8 found diagnosed wrongly).
const AGENT_RUN_BEFORE_RESUME: Duration = Duration::from_secs(3);
/// How long a dropped flow's client retransmits before its connection is destroyed.
const RETRANSMIT_FOR: Duration = Duration::from_millis(1500);

fn open_long_lived_tls12(lab: &Lab) -> Result<LongLived> {
    LongLived::open(lab, LONG_LIVED_PORT, Version::Tls12, 1)
}

fn open_long_lived_tls13(lab: &Lab) -> Result<LongLived> {
    LongLived::open(lab, LONG_LIVED_PORT, Version::Tls13, 1)
}

/// Waits until the connection has idled [`LONG_IDLE`] and the agent (started just before
/// `resume` was called, at `agent_started`) has run [`AGENT_RUN_BEFORE_RESUME`].
fn wait_to_resume(last_answer: Instant, agent_started: Instant) {
    let at = (last_answer + LONG_IDLE).max(agent_started + AGENT_RUN_BEFORE_RESUME);
    thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// The connection resumes and the server answers: healthy, whatever the agent missed.
fn midstream_adopted(_lab: &Lab, mut opened: LongLived) -> Result<Played> {
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
fn midstream_dropped(lab: &Lab, mut opened: LongLived) -> Result<Played> {
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
fn flood_spoofed(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            tls_protocols: Some(NGINX_PROTOCOLS),
            keepalive_timeout_s: Some(KEEPALIVE_TIMEOUT_S),
            ..Default::default()
        },
    )?;
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
fn client_reneg_tls12(lab: &Lab) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-tls1_2".to_string(), "-client_renegotiation".to_string()];
    args.extend(cert_args(&tls)?);
    let mut srv = lab.s_server(lab.server_ns(), 443, &args)?;
    let connect = s4(lab, 443);
    let cli_args = s_client_args(connect, &tls.ca_cert, &["-tls1_2", "-msg"])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), "s_client-client-reneg", &cli_args)?;
    cli.write_stdin(b"hello from the client\n")?;
    srv.wait_for_output("hello from the client", T)?;
    srv.write_stdin(b"hello from the server\n")?;
    cli.wait_for_output("hello from the server", T)?;
    cli.write_stdin(b"R\n")?;
    wait_count(&cli, "], ClientHello\n", 2, T)?;
    wait_count(&cli, "], ServerHello\n", 2, T)?;
    cli.write_stdin(b"after renegotiation from the client\n")?;
    srv.wait_for_output("after renegotiation from the client", T)?;
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

// ---------------------------------------------------------------------------------------
// Clean controls: nothing may be diagnosed
// ---------------------------------------------------------------------------------------

fn clean_interactive(lab: &Lab, version: &str) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut srv = lab.s_server(lab.server_ns(), 4433, &cert_args(&tls)?)?;
    let args = s_client_args(s4(lab, 4433), &tls.ca_cert, &[version])?;
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), &format!("s_client{version}"), &args)?;
    for i in 0..3 {
        let (to_srv, to_cli) = (
            format!("client line {i} {version}\n"),
            format!("server line {i} {version}\n"),
        );
        cli.write_stdin(to_srv.as_bytes())?;
        srv.wait_for_output(&to_srv, T)?;
        srv.write_stdin(to_cli.as_bytes())?;
        cli.wait_for_output(&to_cli, T)?;
    }
    cli.close_stdin();
    cli.wait_timeout(T)?;
    let want = if version == "-tls1_2" {
        "New, TLSv1.2"
    } else {
        "New, TLSv1.3"
    };
    ensure!(
        session_line(&cli.output()).starts_with(want),
        "{}",
        cli.output()
    );
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(srv))
}

fn clean_tls12(lab: &Lab) -> Result<Played> {
    clean_interactive(lab, "-tls1_2")
}

fn clean_tls13(lab: &Lab) -> Result<Played> {
    clean_interactive(lab, "-tls1_3")
}

/// Resumption straight to s_server: offered and accepted.
fn clean_resume(lab: &Lab, method: &str, flags: &[&str]) -> Result<Played> {
    let tls = lab.tls_cert(DEFAULT_CN)?;
    let mut args = vec!["-www".to_string()];
    args.extend(cert_args(&tls)?);
    let srv = lab.s_server(lab.server_ns(), 8443, &args)?;
    let www = s4(lab, 8443);
    let sess = lab.dir().join(format!("clean-{method}.sess"));
    let sess = path_str(&sess)?;
    let mut first = flags.to_vec();
    first.extend(["-sess_out", sess]);
    let out = www_get(
        lab,
        &format!("s_client-{method}-full"),
        &s_client_args(www, &tls.ca_cert, &first)?,
    )?;
    ensure!(session_line(&out).starts_with("New, "), "{method}: {out}");
    let mut second = flags.to_vec();
    second.extend(["-sess_in", sess]);
    let out = www_get(
        lab,
        &format!("s_client-{method}-resumed"),
        &s_client_args(www, &tls.ca_cert, &second)?,
    )?;
    ensure!(
        session_line(&out).starts_with("Reused, "),
        "{method}: not resumed:\n{out}"
    );
    Ok(Played::new(Vec::new(), MustNot::Nothing).keep(srv))
}

fn clean_resume_tls12_id(lab: &Lab) -> Result<Played> {
    clean_resume(lab, "tls12_session_id", &["-tls1_2", "-no_ticket"])
}

fn clean_resume_tls12_ticket(lab: &Lab) -> Result<Played> {
    clean_resume(lab, "tls12_session_ticket", &["-tls1_2"])
}

fn clean_resume_tls13_psk(lab: &Lab) -> Result<Played> {
    clean_resume(lab, "tls13_psk", &["-tls1_3"])
}

/// nginx 1.22 enables HTTP/2 per `listen`, which [`Lab::nginx`] writes itself: the h2
/// server is a second `server` block through `extra_http`.
fn clean_http2(lab: &Lab) -> Result<Played> {
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

fn clean_large_download(lab: &Lab) -> Result<Played> {
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
fn clean_bulk_both_ways(lab: &Lab) -> Result<Played> {
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
fn curl_long(lab: &Lab, extra: &[&str]) -> Result<String> {
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

fn clean_keepalive(lab: &Lab) -> Result<Played> {
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

fn clean_http80(lab: &Lab) -> Result<Played> {
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: false,
            port: 80,
            ipv6: true,
            ..Default::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lists_name_real_scenarios() {
        let names: BTreeSet<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SCENARIOS.len());
        for n in QUICK
            .iter()
            .chain(DEMO)
            .chain(KNOWN_FAILING.iter().map(|(n, _)| n))
        {
            assert!(find(n).is_some(), "{n}");
        }
        for case in 1..=5 {
            assert!(
                SCENARIOS.iter().any(|s| s.field_case == Some(case)),
                "field case {case}"
            );
        }
    }

    #[test]
    fn select_by_name_and_prefix() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(select(&[]).unwrap().len(), SCENARIOS.len());
        let picked = select(&w(&["resume-rejected", "reneg-tls12"])).unwrap();
        let names: Vec<&str> = picked.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "resume-rejected-tls12-id",
                "resume-rejected-tls12-ticket",
                "resume-rejected-tls13-psk",
                "reneg-tls12"
            ]
        );
        assert!(select(&w(&["nope"])).is_err());
    }

    #[test]
    fn expected_round_trips_and_checks() {
        let e = Expected {
            scenario: "x".into(),
            field_case: Some(4),
            idle_threshold_s: 2.0,
            must: vec![
                Must::new(
                    "idle_close",
                    "10.0.0.1".parse().unwrap(),
                    "10.0.0.2:443".parse().unwrap(),
                    "server",
                )
                .gap(3.0, 0.5),
            ],
            must_not: MustNot::kinds(&["rst_after_idle"]),
        };
        assert_eq!(Expected::from_json(&e.to_json()).unwrap(), e);
        let d = |kind: &str, gap: f64| {
            json!({"kind": kind, "client": "10.0.0.1:5000", "server": "10.0.0.2:443",
                   "detail": {"sender": "server", "gap_s": gap}})
        };
        assert!(e.check(&[d("idle_close", 3.2)]).is_empty());
        assert_eq!(e.check(&[d("idle_close", 3.9)]).len(), 2, "gap out, extra");
        assert_eq!(e.check(&[]).len(), 1);
        assert_eq!(
            e.check(&[d("idle_close", 3.0), d("rst_after_idle", 3.0)])
                .len(),
            2,
            "extra and must_not"
        );
        let clean = Expected {
            must: vec![],
            must_not: MustNot::Nothing,
            ..e
        };
        assert_eq!(clean.to_json()["must_not"], NO_DIAGNOSIS);
        assert_eq!(Expected::from_json(&clean.to_json()).unwrap(), clean);
        assert_eq!(clean.check(&[d("idle_close", 3.0)]).len(), 1);
    }
}
