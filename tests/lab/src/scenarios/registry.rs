//! The registry: every scenario with its field case (docs/field-cases.md), what it plays
//! and how long it takes; the regression and demo subsets; look-up by name or prefix.

use anyhow::{Context as _, Result, bail};

use crate::{long_lived::LongLived, netns::Lab, process::find_program};

use super::{
    clean::*, handshake::*, keepalive::*, middlebox::*, plaintext::*, precision::*,
    renegotiation::*, resumption::*, runner::*, *,
};

/// Scenarios that show the detector wrong: (name, what goes wrong). The regression suite
/// does not assert these; the lab still records the correct expectation for them.
pub const KNOWN_FAILING: &[(&str, &str)] = &[];

/// The regression suite's subset: field cases 1 to 4 (docs/field-cases.md) and two clean
/// controls, each a few seconds.
pub const QUICK: &[&str] = &[
    "reneg-tls12",
    "resume-rejected-tls13-psk",
    "http-to-nginx-tls-v4",
    "idle-close-nginx-tls12",
    "clean-tls13",
    "clean-resume-tls12-ticket",
];

/// What `cargo xtask demo` plays into one lab: one scenario per field case (and a clean
/// one), field case 5 (docs/field-cases.md) last since it changes the router's firewall.
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
    /// Field case of docs/field-cases.md it reproduces, `None` for handshake failures and
    /// controls.
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
    pub(crate) play: Play,
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

/// Every scenario, in the order `--list` shows and a full run plays them. Entries are alike
/// by design (variants of one field case differ in a version or a method): a table of
/// records, each readable on its own.
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
