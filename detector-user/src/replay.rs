//! `detector replay`: a capture file through the very same compiled XDP program, with the
//! capture's timestamps as the program's clock.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use detector_common::Counter;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    capture::{self, segment},
    kernel::{Kernel, Options, clock::Clock},
    output::{diagnosis::Kind, metrics::Metrics},
    pipeline::Pipeline,
};

/// Frames shorter than an Ethernet header are refused by BPF_PROG_TEST_RUN.
const MIN_FRAME: usize = 14;

#[derive(Debug, Default)]
pub struct Summary {
    pub packets: u64,
    /// Frames handed to the program (super-packets count once per segment).
    pub frames: u64,
    /// Packets not handed to the program, by why.
    pub skipped: Skipped,
    pub events: u64,
    pub events_dropped: u64,
    pub diagnoses: u64,
    pub by_kind: BTreeMap<Kind, u64>,
    /// Times the record walker lost its place, and reordering gaps it bridged: how well
    /// the capture could be followed.
    pub tls_sync_lost: u64,
    pub tls_read_ahead: u64,
}

/// Packets of a capture that never reach the program. Every packet read is either run
/// (as one frame or several segments) or counted here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Link types that cannot be presented as Ethernet (or raw IP of no known version).
    pub link_type: u64,
    /// Shorter than an Ethernet header.
    pub runt: u64,
    /// No timestamp (zero) before any packet that had one: the clock cannot start there.
    pub no_timestamp: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.link_type + self.runt + self.no_timestamp
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.skipped;
        write!(
            f,
            "replayed {} packets ({} frames, {} skipped: {} unsupported link type, {} runt, \
             {} without timestamp); kernel events: {} ({} dropped); diagnoses: {}; TLS sync \
             lost: {} (reordering gaps bridged: {})",
            self.packets,
            self.frames,
            s.total(),
            s.link_type,
            s.runt,
            s.no_timestamp,
            self.events,
            self.events_dropped,
            self.diagnoses,
            self.tls_sync_lost,
            self.tls_read_ahead
        )
    }
}

impl Summary {
    /// The diagnoses by kind as an aligned table, most frequent first.
    pub fn table(&self) -> String {
        if self.by_kind.is_empty() {
            return "no diagnoses\n".to_string();
        }
        let mut rows: Vec<(&Kind, &u64)> = self.by_kind.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let width = rows
            .iter()
            .map(|(k, _)| k.as_str().len())
            .max()
            .unwrap_or(0);
        let mut t = format!("{:<width$}  diagnoses\n", "kind");
        for (kind, n) in rows {
            t.push_str(&format!("{:<width$}  {n:>9}\n", kind.as_str()));
        }
        t
    }
}

/// A progress bar over the file's bytes, on stderr when it is a terminal; hidden
/// otherwise (a pipe, a log, a test).
fn progress(path: &Path) -> ProgressBar {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}  {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Packets between progress updates: the bar redraws on its own schedule, this only
/// bounds how often the position is handed over.
const PROGRESS_EVERY: u64 = 4096;

/// The program's clock from the capture's timestamps. Zero means "no timestamp" in a
/// capture (a simple packet block before any other, a writer that zeroed times) and
/// "use the kernel's clock" to the program, so it is never handed over: a packet without
/// a timestamp runs at the time of the packet before it, and one before any timestamped
/// packet is skipped, since starting the clock at the epoch would make the first real
/// timestamp look like decades of idleness.
#[derive(Debug, Default)]
struct CaptureClock {
    last_ns: Option<u64>,
}

impl CaptureClock {
    /// The time to run a packet at, and whether it is the first (the program's start).
    fn at(&mut self, ts_ns: u64) -> Option<(u64, bool)> {
        let first = self.last_ns.is_none();
        let ts = if ts_ns == 0 { self.last_ns? } else { ts_ns };
        self.last_ns = Some(ts);
        Some((ts, first))
    }
}

/// Replays `path`, writing diagnoses to `out`. On a truncated or corrupt file, the
/// diagnoses found up to the bad spot are written first, then the error names the offset.
pub fn replay(
    path: &Path,
    opts: &Options,
    window: Duration,
    metrics: Arc<Metrics>,
    out: impl Write,
) -> anyhow::Result<Summary> {
    let mut reader = capture::Reader::open(path)
        .with_context(|| format!("{}: cannot read as a capture", path.display()))?;
    let mut kernel = Kernel::load(opts)?;
    let sni = kernel.take_sni();
    let mut pipeline = Pipeline::new(
        Clock::Capture,
        window,
        opts.idle_threshold,
        metrics,
        sni,
        out,
    );
    let mut summary = Summary::default();
    let mut clock = CaptureClock::default();
    let bar = progress(path);

    let result = loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        summary.packets += 1;
        if summary.packets % PROGRESS_EVERY == 0 {
            bar.set_position(reader.offset());
            bar.set_message(format!("{} diagnoses", pipeline.diagnoses()));
        }
        if packet.frame.len() < MIN_FRAME {
            summary.skipped.runt += 1;
            continue;
        }
        let Some((ts, first)) = clock.at(packet.ts_ns) else {
            summary.skipped.no_timestamp += 1;
            continue;
        };
        if first {
            kernel.set_started(ts)?;
        }
        kernel.set_clock(ts)?;
        for frame in segment::split(&packet.frame) {
            kernel.run_xdp(&frame).with_context(|| {
                format!(
                    "{}: running packet {} through the program",
                    path.display(),
                    summary.packets
                )
            })?;
            summary.frames += 1;
        }
        for record in kernel.drain_events() {
            pipeline.on_record(&record)?;
        }
        pipeline.tick(ts)?;
    };

    bar.finish_and_clear();
    pipeline.finish()?;
    summary.skipped.link_type = reader.skipped();
    summary.by_kind = pipeline.diagnoses_by_kind().clone();
    summary.events = pipeline.events();
    summary.diagnoses = pipeline.diagnoses();
    let counters = kernel.counters();
    summary.events_dropped = counters.get(Counter::EventsDropped)?;
    summary.tls_sync_lost = counters.get(Counter::TlsSyncLost)?;
    summary.tls_read_ahead = counters.get(Counter::TlsReadAhead)?;
    result.with_context(|| format!("{}: replay stopped after {}", path.display(), summary))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_kinds_most_frequent_first() {
        let s = Summary {
            by_kind: [
                (Kind::FatalAlert, 2),
                (Kind::HttpToTlsPort, 12),
                (Kind::IdleClose, 2),
            ]
            .into(),
            ..Summary::default()
        };
        assert_eq!(
            s.table(),
            "kind              diagnoses\n\
             http_to_tls_port         12\n\
             fatal_alert               2\n\
             idle_close                2\n"
        );
        assert_eq!(Summary::default().table(), "no diagnoses\n");
    }

    #[test]
    fn capture_clock_starts_at_the_first_timestamp_and_fills_gaps() {
        let mut c = CaptureClock::default();
        assert_eq!(c.at(0), None, "no clock to start from");
        assert_eq!(c.at(0), None);
        assert_eq!(c.at(5_000), Some((5_000, true)));
        assert_eq!(
            c.at(0),
            Some((5_000, false)),
            "the time of the packet before"
        );
        assert_eq!(c.at(7_000), Some((7_000, false)));
    }

    #[test]
    fn summary_names_every_reason_for_a_skipped_packet() {
        let s = Summary {
            packets: 10,
            frames: 7,
            skipped: Skipped {
                link_type: 1,
                runt: 2,
                no_timestamp: 3,
            },
            ..Summary::default()
        };
        let text = s.to_string();
        assert!(
            text.starts_with(
                "replayed 10 packets (7 frames, 6 skipped: 1 unsupported link type, 2 runt, \
                 3 without timestamp)"
            ),
            "{text}"
        );
    }
}
