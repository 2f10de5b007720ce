//! The set-up the live tests share: a routed lab with tcpdump and the agent on its router
//! ([`RouterRun`]), finishing and replaying such a run, taking turns, and playing a
//! scenario of the registry with its capture replayed ([`play_and_replay`]).

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::{
    Capture, Lab,
    agent::{LiveAgent, detector_bin, identity, replay},
    scenarios::{self, Outcome, Scenario},
    util::lock,
};

/// Bound for the agent's diagnoses to show.
const T: Duration = Duration::from_secs(15);
/// After the last traffic: longer than the agent's correlation window (0.5 s), so a late
/// second diagnosis for a session would show.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// What the agent on the router watches, and where tcpdump listens.
#[derive(Clone, Copy, Debug)]
pub enum Watch {
    /// Both router veths with `--no-egress` (every packet reaches one of them as ingress);
    /// tcpdump on the server-side veth, `router.pcap`.
    BothSides,
    /// The router's client-side veth only, with TC egress (so what the router itself
    /// answers, e.g. a relay on it, is seen); tcpdump there, `router-client-side.pcap`.
    ClientSide,
}

/// A routed lab with tcpdump and the agent on its router. Destructure it in a test (fields
/// in this order, so the agent stops first and the lab goes last).
pub struct RouterRun {
    pub lab: Lab,
    pub router: String,
    /// The router's client-side and server-side veths.
    pub rc: String,
    pub rs: String,
    pub capture: Capture,
    pub agent: LiveAgent,
}

impl RouterRun {
    /// A fresh routed lab, tcpdump started and attached, then the agent (`extra`: further
    /// options) started on the router as `watch` says.
    pub fn start(watch: Watch, extra: &[&str]) -> Result<RouterRun> {
        let lab = Lab::routed()?;
        let (router, rc, rs) = lab.router_parts()?;
        let (capture, agent) = match watch {
            Watch::BothSides => {
                let capture = lab.capture(&router, &rs, "router.pcap")?;
                let mut args = vec!["--no-egress"];
                args.extend_from_slice(extra);
                let agent = LiveAgent::start(&lab, &router, &[&rc, &rs], &args)?;
                (capture, agent)
            }
            Watch::ClientSide => {
                let capture = lab.capture(&router, &rc, "router-client-side.pcap")?;
                let agent = LiveAgent::start(&lab, &router, &[&rc], extra)?;
                (capture, agent)
            }
        };
        Ok(RouterRun {
            lab,
            router,
            rc,
            rs,
            capture,
            agent,
        })
    }
}

/// Stops the agent once `expected` diagnoses are in and a settling pause has passed, and
/// checks nothing showed up late: the diagnoses, and /metrics scraped before the stop.
pub fn finish(agent: LiveAgent, lab: &Lab, expected: usize) -> Result<(Vec<Value>, String)> {
    let live = agent.wait_for(expected, T)?;
    thread::sleep(SETTLE);
    let metrics = agent.metrics(lab)?;
    let out = agent.process.output();
    let fin = agent.stop()?;
    ensure!(
        fin.len() == expected && live.len() == expected,
        "expected {expected} diagnoses, got {} (then {} at stop); agent output:\n{out}",
        live.len(),
        fin.len()
    );
    Ok((fin, metrics))
}

/// (kind, client, server) of each diagnosis.
pub fn ids(v: &[Value]) -> BTreeSet<(String, String, String)> {
    v.iter().map(identity).collect()
}

/// Replays `capture` through `detector replay` (default options) and asserts that it found
/// what the live agent found, by (kind, client, server); returns replay's summary.
pub fn replay_matches(capture: &Path, live: &[Value]) -> String {
    let (replayed, summary) = replay(capture, &[]).expect("replay");
    assert_eq!(
        ids(&replayed),
        ids(live),
        "replay of {} disagrees with live; replayed {replayed:#?}\nsummary: {summary}",
        capture.display()
    );
    summary
}

/// The tests of one binary take turns where they start agents: loading one runs the BPF
/// verifier for seconds of CPU time, several at once on a small machine can outlast the
/// agent's start-up bound, and a scenario's timing (idle gaps) would depend on its
/// neighbours.
static SERIAL: Mutex<()> = Mutex::new(());

/// This test's turn (a failed test poisons the lock; the next one may still run).
pub fn serial() -> MutexGuard<'static, ()> {
    lock(&SERIAL)
}

/// Whether we are root; if not, says the test is skipped, since `what` needs root.
pub fn root(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: {what} needs root");
    }
    root
}

/// A scenario of the registry played in a lab of its own, and its capture replayed. Holds
/// the test's turn ([`serial`]) until dropped, so that what the test does with the files
/// (checking, removing them and the shared output directory) is done before the next
/// scenario starts.
pub struct Judged {
    pub scenario: &'static Scenario,
    /// Wall time of the play and the replay.
    pub took: Duration,
    pub outcome: Outcome,
    /// `detector replay` of the capture at the scenario's idle threshold and options.
    pub replayed: Vec<Value>,
    /// Replay's summary (stderr).
    pub summary: String,
    _turn: MutexGuard<'static, ()>,
}

/// Plays scenario `name` (writing its files into `out`) and replays its capture, one test
/// at a time ([`serial`], held by the result); `None` when not root (`what` needs root) or
/// a program the scenario needs is missing.
pub fn play_and_replay(name: &str, out: &Path, what: &str) -> Result<Option<Judged>> {
    if !root(what) {
        return Ok(None);
    }
    let turn = serial();
    let started = Instant::now();
    let s = scenarios::find(name).with_context(|| format!("no scenario {name}"))?;
    let missing = s.missing_programs();
    if !missing.is_empty() {
        eprintln!("skipping {name}: {} not installed", missing.join(", "));
        return Ok(None);
    }
    let detector = detector_bin()?;
    let outcome = scenarios::run(s, out, &detector)?;
    let (replayed, summary) =
        scenarios::replay(&detector, &outcome.pcap, s.idle_threshold_s, s.agent_args)?;
    Ok(Some(Judged {
        scenario: s,
        took: started.elapsed(),
        outcome,
        replayed,
        summary,
        _turn: turn,
    }))
}
