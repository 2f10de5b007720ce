//! Runners: one scenario in a lab of its own with the agent live on the router, and replay.

use std::{
    any::Any,
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    agent::{LiveAgent, replay_with},
    netns::Lab,
    util::tail,
};

use super::{expect::*, registry::*, *};

/// After the last traffic, longer than the correlation window, so that a late extra
/// diagnosis would show.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

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
    let idle = idle_threshold_s.to_string();
    let window = CORRELATION_WINDOW_S.to_string();
    let mut args = vec!["--idle-threshold", &idle];
    args.extend_from_slice(extra);
    args.extend(["--correlation-window", &window]);
    replay_with(detector, pcap, &args)
}

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
    pub(crate) fn new(must: Vec<Must>, must_not: MustNot) -> Played {
        Played {
            must,
            must_not,
            keep: Vec::new(),
        }
    }

    pub(crate) fn keep(mut self, thing: impl Any) -> Played {
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
