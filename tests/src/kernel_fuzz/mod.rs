//! The compiled kernel program fuzzed through BPF_PROG_TEST_RUN: valid, mutated and
//! random frames (see [`generate`]); every run must succeed with XDP_PASS, every ring-buffer
//! event must decode with the agent's decoder and agree with an independent reading of the
//! frame that raised it (see [`oracle`]), and the program's counters must move exactly as
//! that reading says (each frame one packet; each TCP segment, fragment or malformed frame
//! its counter; every event emitted delivered).

pub mod generate;
pub mod oracle;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use detector_common::Counter;
use detector_user::kernel::{Kernel, Options, event::KernelEvent};

use crate::harness::XDP_PASS;
use generate::Generator;
use oracle::{Class, Streams, check_event, classify};

pub struct Config {
    pub seed: u64,
    pub frames: u64,
    /// Stop early after this long (the frames run so far are reported).
    pub max_time: Option<Duration>,
    /// The program's idle threshold: short, so idle gaps cost no frames.
    pub idle: Duration,
    /// Where to write a violation's reproducer (the frames before it as a pcap).
    pub artifacts: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            seed: 1,
            frames: 30_000,
            max_time: None,
            idle: Duration::from_secs(2),
            artifacts: None,
        }
    }
}

/// A frame the program or its events got wrong.
#[derive(Debug)]
pub struct Violation {
    /// Position of the frame in the run (0-based): the seed and this reproduce it.
    pub index: u64,
    pub what: String,
    pub frame: Vec<u8>,
    /// The frames up to and including this one, as a pcap for `detector replay`.
    pub reproducer: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    pub elapsed: Duration,
    pub by_origin: BTreeMap<String, u64>,
    pub tcp: u64,
    pub not_tcp: u64,
    pub fragments: u64,
    pub malformed: u64,
    pub events: u64,
    pub events_by_kind: BTreeMap<String, u64>,
    /// Counter moves over the whole run, by metric name.
    pub counters: BTreeMap<&'static str, u64>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Violations kept before the run stops: one is enough to act on, a few show a pattern.
const MAX_VIOLATIONS: usize = 10;
/// Frames between counter checks (each check is one syscall per counter).
const BATCH: u64 = 4_096;
/// Frames kept for a reproducer.
const HISTORY: usize = 256;

/// Counters whose moves the independent reading predicts exactly.
const CHECKED: [Counter; 5] = [
    Counter::Packets,
    Counter::TcpPackets,
    Counter::Fragments,
    Counter::Truncated,
    Counter::EventsEmitted,
];

pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let opts = Options {
        idle_threshold: cfg.idle,
        ..Options::default()
    };
    let mut kernel = Kernel::load(&opts).context("loading the kernel program (are you root?)")?;
    let mut now_ns: u64 = 1_700_000_000_000_000_000;
    kernel.set_started(now_ns)?;
    let counters = kernel.counters();
    let start_counts = counters.read()?;
    let mut batch_start = start_counts;
    let mut expected = [0u64; Counter::COUNT as usize];
    let idle_ns = u64::try_from(cfg.idle.as_nanos()).context("idle threshold")?;
    let mut frames = Generator::new(cfg.seed, cfg.idle);
    let mut streams = Streams::default();
    let mut history: std::collections::VecDeque<(u64, Vec<u8>)> = Default::default();
    let mut report = Report::default();
    let started = Instant::now();
    let violation = |report: &mut Report,
                     history: &std::collections::VecDeque<(u64, Vec<u8>)>,
                     index: u64,
                     what: String,
                     frame: &[u8]| {
        let reproducer = cfg.artifacts.as_ref().and_then(|dir| {
            let path = dir.join(format!("kernel-seed{}-frame{index}.pcap", cfg.seed));
            let frames: Vec<_> = history.iter().cloned().collect();
            std::fs::create_dir_all(dir).ok()?;
            write_reproducer(&path, &frames).ok().map(|_| path)
        });
        report.violations.push(Violation {
            index,
            what,
            frame: frame.to_vec(),
            reproducer,
        });
    };

    for index in 0..cfg.frames {
        if report.violations.len() >= MAX_VIOLATIONS
            || cfg.max_time.is_some_and(|t| started.elapsed() >= t)
        {
            break;
        }
        let next = frames.next_frame();
        now_ns += next.advance_ns;
        let frame = next.frame;
        *report
            .by_origin
            .entry(format!("{:?}", next.how))
            .or_default() += 1;
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((now_ns, frame.clone()));
        kernel.set_clock(now_ns)?;
        report.frames += 1;
        expected[Counter::Packets as usize] += 1;
        match kernel.run_xdp(&frame) {
            Ok(XDP_PASS) => {}
            Ok(v) => violation(
                &mut report,
                &history,
                index,
                format!("verdict {v}, not XDP_PASS"),
                &frame,
            ),
            Err(e) => violation(
                &mut report,
                &history,
                index,
                format!("BPF_PROG_TEST_RUN failed: {e:#}"),
                &frame,
            ),
        }
        let raw = kernel.drain_events();
        let class = classify(&frame);
        match &class {
            Class::Tcp(s) => {
                report.tcp += 1;
                expected[Counter::TcpPackets as usize] += 1;
                streams.record(s, &frame);
            }
            Class::NotTcp => report.not_tcp += 1,
            Class::Fragment => {
                report.fragments += 1;
                expected[Counter::Fragments as usize] += 1;
            }
            Class::Malformed => {
                report.malformed += 1;
                expected[Counter::Truncated as usize] += 1;
            }
        }
        expected[Counter::EventsEmitted as usize] += raw.len() as u64;
        report.events += raw.len() as u64;
        for bytes in &raw {
            let problem = match KernelEvent::decode(bytes) {
                Err(e) => Some(format!("the agent's decoder rejects an event: {e}")),
                Ok(e) => {
                    *report
                        .events_by_kind
                        .entry(format!("{:?}", e.kind))
                        .or_default() += 1;
                    match &class {
                        Class::Tcp(s) => check_event(&e, s, &frame, now_ns, idle_ns, &streams)
                            .err()
                            .map(|m| format!("{m}; event {e:?}")),
                        other => Some(format!("event from a frame read as {other:?}: {e:?}")),
                    }
                }
            };
            if let Some(what) = problem {
                violation(&mut report, &history, index, what, &frame);
            }
        }
        if (index + 1) % BATCH == 0 || index + 1 == cfg.frames {
            let now = counters.read()?;
            if let Some(what) = counter_mismatch(&batch_start, &now, &expected) {
                violation(
                    &mut report,
                    &history,
                    index,
                    format!(
                        "counters over frames {}..={index}: {what}",
                        (index + 1).saturating_sub(BATCH)
                    ),
                    &frame,
                );
            }
            batch_start = now;
            expected = [0; Counter::COUNT as usize];
        }
    }
    report.elapsed = started.elapsed();
    let end = counters.read()?;
    for c in Counter::ALL {
        report
            .counters
            .insert(c.metric_name(), end[c as usize] - start_counts[c as usize]);
    }
    Ok(report)
}

fn counter_mismatch(
    before: &[u64; Counter::COUNT as usize],
    after: &[u64; Counter::COUNT as usize],
    expected: &[u64; Counter::COUNT as usize],
) -> Option<String> {
    let wrong: Vec<String> = CHECKED
        .iter()
        .chain(&[Counter::TailCallFailed])
        .filter_map(|&c| {
            let moved = after[c as usize] - before[c as usize];
            let want = expected[c as usize];
            (moved != want).then(|| format!("{} moved {moved}, expected {want}", c.metric_name()))
        })
        .collect();
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

/// Writes `path` as a pcap of the frames, for replay; used for reproducers.
pub fn write_reproducer(path: &Path, frames: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
    detector_lab::pcapfile::write(path, frames)
}
