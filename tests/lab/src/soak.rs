//! The soak: clean traffic for minutes with the agent live on a lab router, which must give
//! no diagnosis at all (issue 8: operators page on these).
//!
//! One routed lab for the whole run. Rounds of the lab's clean scenarios (short sessions,
//! keep-alives, resumptions, HTTP/2, bulk transfers both ways) play back to back, while
//! long-lived TLS connections (Python ssl, opened before the first agent started) idle past
//! the threshold and resume, the agent is restarted twice (so the long-lived connections
//! are met mid-stream), and one bounded spoofed-segment flood runs during a round. The
//! metrics of every agent instance are scraped before it stops and summed.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    Lab,
    agent::{LiveAgent, abstentions, by_reason, metric},
    long_lived::{LongLived, Version},
    scenarios::{self, IDLE_THRESHOLD_S},
    spoof::{Flood, route_answers_into_lab, spawn_flood},
};

/// The clean scenarios a round plays, in order (bulk only every [`BULK_EVERY`] rounds: it
/// moves 240 MiB).
const ROUND: &[&str] = &[
    "clean-tls12",
    "clean-tls13",
    "clean-resume-tls12-id",
    "clean-resume-tls12-ticket",
    "clean-resume-tls13-psk",
    "clean-keepalive",
    "clean-http2",
    "clean-http80",
];
const BULK: &str = "clean-bulk-both-ways";
const BULK_EVERY: u32 = 3;
/// Ports of the long-lived connections' servers (TLS 1.2, TLS 1.3): none of the
/// scenarios' ports.
const LONG_LIVED_PORTS: (u16, u16) = (9443, 9444);
/// Long-lived connections per TLS version.
const LONG_LIVED: usize = 2;
/// A long-lived connection resumes once it has idled this long: past the threshold.
const LONG_IDLE: Duration = Duration::from_secs(4);
/// The flood: segments, and over how long.
const FLOOD_SEGMENTS: u32 = 2_000;
const FLOOD_FOR: Duration = Duration::from_secs(5);
/// How many times the agent is restarted during a run.
const RESTARTS: u32 = 2;

/// What a soak saw.
#[derive(Default)]
pub struct SoakReport {
    pub duration: Duration,
    /// Clean scenario plays, by scenario.
    pub plays: BTreeMap<String, u32>,
    /// Long-lived connections resumed after idling past the threshold (and answered).
    pub resumptions: u32,
    pub agent_starts: u32,
    pub flood_segments: u32,
    /// Every diagnosis of every agent instance (each should never have been).
    pub diagnoses: Vec<Value>,
    /// `detector_abstained_total` by reason, summed over agent instances.
    pub abstained: BTreeMap<String, f64>,
    pub sync_lost: f64,
    /// TLS sync losses by what was playing when the live counter rose.
    pub sync_lost_during: BTreeMap<String, f64>,
    /// TLS sync losses by the reason the walker stopped for.
    pub sync_lost_by_reason: BTreeMap<String, f64>,
    /// Router captures of the bulk plays the walker lost its place in, kept for replay
    /// (`detector replay FILE` reproduces the loss).
    pub kept_captures: Vec<PathBuf>,
    pub flows_created: f64,
    pub unconfirmed_created: f64,
    pub flows_evicted: f64,
    pub events_dropped: f64,
    /// Packets that waited while another CPU read their flow: the concurrency the
    /// kernel's flow owner serialises (see its owner.rs).
    pub flow_owner_waits: f64,
    /// Packets left unread because the owner held on past the wait, and owners taken
    /// over as stale: either is a packet the walker may have missed.
    pub flow_owner_busy: f64,
    pub flow_owner_stale: f64,
}

impl SoakReport {
    /// Whether the run was clean: no diagnosis, the walker never lost its place nor left
    /// a packet unread.
    pub fn clean(&self) -> bool {
        self.diagnoses.is_empty()
            && self.sync_lost == 0.0
            && self.flow_owner_busy == 0.0
            && self.flow_owner_stale == 0.0
    }

    /// Clean sessions played (scenario plays count the sessions they open; a long-lived
    /// resumption counts once).
    pub fn clean_plays(&self) -> u32 {
        self.plays.values().sum::<u32>() + self.resumptions
    }

    fn add_metrics(&mut self, text: &str) {
        let get = |series: &str| metric(text, series).unwrap_or(0.0);
        self.sync_lost += get("detector_kernel_tls_sync_lost_total");
        self.flows_created += get("detector_kernel_flows_created_total");
        self.unconfirmed_created += get("detector_kernel_unconfirmed_flows_created_total");
        self.flows_evicted += get("detector_kernel_flows_evicted_total");
        self.events_dropped += get("detector_kernel_events_dropped_total");
        self.flow_owner_waits += get("detector_kernel_flow_owner_waits_total");
        self.flow_owner_busy += get("detector_kernel_flow_owner_busy_total");
        self.flow_owner_stale += get("detector_kernel_flow_owner_stale_total");
        for (reason, n) in by_reason(text, "detector_kernel_tls_sync_lost_by_reason_total") {
            *self.sync_lost_by_reason.entry(reason).or_default() += n;
        }
        for (reason, n) in abstentions(text) {
            *self.abstained.entry(reason).or_default() += n;
        }
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: {:.0} s, {} agent starts",
            self.duration.as_secs_f64(),
            self.agent_starts
        )?;
        writeln!(
            f,
            "clean plays: {} ({} scenario plays, {} long-lived resumptions after idle)",
            self.clean_plays(),
            self.plays.values().sum::<u32>(),
            self.resumptions
        )?;
        for (name, n) in &self.plays {
            writeln!(f, "  {name}: {n}")?;
        }
        writeln!(
            f,
            "flows: {} confirmed created, {} unconfirmed created ({} spoofed segments), {} \
             evicted; kernel events dropped: {}",
            self.flows_created,
            self.unconfirmed_created,
            self.flood_segments,
            self.flows_evicted,
            self.events_dropped
        )?;
        writeln!(
            f,
            "flows read by two CPUs at once: {} packets waited, {} left unread, {} stale \
             owners taken over",
            self.flow_owner_waits, self.flow_owner_busy, self.flow_owner_stale
        )?;
        writeln!(f, "tls sync losses: {}", self.sync_lost)?;
        for (reason, n) in self.sync_lost_by_reason.iter().filter(|(_, n)| **n > 0.0) {
            writeln!(f, "  {reason}: {n}")?;
        }
        for (what, n) in &self.sync_lost_during {
            writeln!(f, "  during {what}: {n}")?;
        }
        for pcap in &self.kept_captures {
            writeln!(f, "  router capture kept: {}", pcap.display())?;
        }
        if self.abstained.is_empty() {
            writeln!(f, "abstentions: none counted")?;
        } else {
            writeln!(f, "abstentions:")?;
            for (reason, n) in &self.abstained {
                writeln!(f, "  {reason}: {n}")?;
            }
        }
        writeln!(f, "diagnoses: {}", self.diagnoses.len())?;
        for d in &self.diagnoses {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// Plays the soak for `duration` with the agent binary `detector`; `log` gets progress.
pub fn soak(detector: &Path, duration: Duration, log: &dyn Fn(&str)) -> Result<SoakReport> {
    let started = Instant::now();
    let mut report = SoakReport::default();
    let lab = Lab::routed()?;
    route_answers_into_lab(&lab)?;
    let mut long_lived = vec![
        LongLived::open(&lab, LONG_LIVED_PORTS.0, Version::Tls12, LONG_LIVED)?,
        LongLived::open(&lab, LONG_LIVED_PORTS.1, Version::Tls13, LONG_LIVED)?,
    ];
    let start_agent = |report: &mut SoakReport| -> Result<LiveAgent> {
        report.agent_starts += 1;
        scenarios::agent_on_router(&lab, detector, IDLE_THRESHOLD_S, &[])
    };
    let mut agent = start_agent(&mut report)?;
    let restart_every = duration / (RESTARTS + 1);
    let mut next_restart = started + restart_every;
    let flood_at = started + duration / 4;
    let mut flood = None;
    let mut round = 0;
    let mut sync_watch = SyncWatch::default();
    while started.elapsed() < duration {
        round += 1;
        let mut names: Vec<&str> = ROUND.to_vec();
        if round % BULK_EVERY == 1 {
            names.push(BULK);
        }
        for name in names {
            if flood.is_none() && Instant::now() >= flood_at {
                log(&format!(
                    "flood: {FLOOD_SEGMENTS} spoofed segments over {FLOOD_FOR:?}"
                ));
                let target = std::net::SocketAddrV4::new(lab.server_v4(), 443);
                flood = Some(spawn_flood(
                    lab.client_ns(),
                    Flood {
                        target,
                        count: FLOOD_SEGMENTS,
                        duration: FLOOD_FOR,
                    },
                ));
            }
            let s = scenarios::find(name).with_context(|| format!("no scenario {name}"))?;
            // Bulk transfers are where the walker meets reordering: their router capture
            // is kept if it loses its place, so the loss can be replayed and bisected.
            let capture = if name == BULK {
                let (router, rc, _) = lab.router_parts()?;
                Some(lab.capture_bulk(&router, &rc, format!("soak-bulk-{round}.pcap"))?)
            } else {
                None
            };
            drop(s.play(&lab)?);
            *report.plays.entry(name.to_string()).or_default() += 1;
            let lost = sync_watch.after(&lab, &agent, name, &mut report, log)?;
            if let Some(capture) = capture {
                let pcap = capture.stop_complete()?;
                if lost {
                    let kept = std::env::temp_dir().join(format!(
                        "soak-sync-lost-{}-round-{round}.pcap",
                        std::process::id()
                    ));
                    fs::copy(&pcap, &kept)
                        .with_context(|| format!("keeping {}", pcap.display()))?;
                    report.kept_captures.push(kept);
                }
                fs::remove_file(&pcap).with_context(|| format!("removing {}", pcap.display()))?;
            }
            report.resumptions += resume_idle(&mut long_lived)?;
            sync_watch.after(&lab, &agent, "long-lived resumptions", &mut report, log)?;
            if Instant::now() >= next_restart && report.agent_starts <= RESTARTS {
                log(&format!(
                    "restarting the agent ({:.0} s in)",
                    started.elapsed().as_secs_f64()
                ));
                collect(&lab, agent, &mut report)?;
                agent = start_agent(&mut report)?;
                sync_watch = SyncWatch::default();
                next_restart += restart_every;
            }
            if started.elapsed() >= duration {
                break;
            }
        }
        log(&format!(
            "round {round} done, {:.0} s in, {} diagnoses so far",
            started.elapsed().as_secs_f64(),
            report.diagnoses.len() + agent.diagnoses()?.len()
        ));
    }
    if let Some(f) = flood {
        let sent = f
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        report.flood_segments = sent.sent;
    }
    // The long-lived connections close cleanly while the agent still watches: each right
    // after an exchange, since a close after an idle gap is an idle_close by definition.
    for ll in long_lived {
        for mut c in ll.clients {
            c.exchange("goodbye")?;
            c.close()?;
        }
    }
    thread::sleep(Duration::from_millis(1500));
    collect(&lab, agent, &mut report)?;
    report.duration = started.elapsed();
    Ok(report)
}

/// Every long-lived connection idle for [`LONG_IDLE`] sends a line and must get its echo:
/// idle past the threshold, resumed, answered. Returns how many resumed.
fn resume_idle(long_lived: &mut [LongLived]) -> Result<u32> {
    let mut n = 0;
    for c in long_lived.iter_mut().flat_map(|l| l.clients.iter_mut()) {
        if c.last_answer.elapsed() >= LONG_IDLE {
            c.exchange("resumed after idle")?;
            n += 1;
        }
    }
    Ok(n)
}

/// Scrapes an agent instance's metrics, stops it and keeps its diagnoses.
fn collect(lab: &Lab, agent: LiveAgent, report: &mut SoakReport) -> Result<()> {
    let text = agent.metrics(lab)?;
    report.add_metrics(&text);
    report.diagnoses.extend(agent.stop()?);
    Ok(())
}

/// Follows the live agent's `tls_sync_lost` counter between plays, so a loss is pinned on
/// the traffic that caused it (the total comes from [`collect`]). `after` says whether it
/// rose.
#[derive(Default)]
struct SyncWatch {
    seen: f64,
}

impl SyncWatch {
    fn after(
        &mut self,
        lab: &Lab,
        agent: &LiveAgent,
        what: &str,
        report: &mut SoakReport,
        log: &dyn Fn(&str),
    ) -> Result<bool> {
        let now =
            metric(&agent.metrics(lab)?, "detector_kernel_tls_sync_lost_total").unwrap_or(0.0);
        if now > self.seen {
            log(&format!(
                "tls sync lost {} time(s) during {what}",
                now - self.seen
            ));
            *report.sync_lost_during.entry(what.to_string()).or_default() += now - self.seen;
            self.seen = now;
            return Ok(true);
        }
        Ok(false)
    }
}
