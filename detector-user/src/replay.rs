//! `detector replay`: a capture file through the very same compiled XDP program, with the
//! capture's timestamps as the program's clock.

use std::{io::Write, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use detector_common::Counter;

use crate::{
    capture::{self, segment},
    kernel::{Kernel, Options, clock::Clock},
    output::metrics::Metrics,
    pipeline::Pipeline,
};

/// Frames shorter than an Ethernet header are refused by BPF_PROG_TEST_RUN.
const MIN_FRAME: usize = 14;

#[derive(Debug, Default)]
pub struct Summary {
    pub packets: u64,
    /// Frames handed to the program (super-packets count once per segment).
    pub frames: u64,
    /// Packets of link types we cannot turn into Ethernet, or runts.
    pub skipped: u64,
    pub events: u64,
    pub events_dropped: u64,
    pub diagnoses: u64,
    /// Times the record walker lost its place, and reordering gaps it bridged: how well
    /// the capture could be followed.
    pub tls_sync_lost: u64,
    pub tls_read_ahead: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} packets ({} frames, {} skipped); kernel events: {} ({} dropped); \
             diagnoses: {}; TLS sync lost: {} (reordering gaps bridged: {})",
            self.packets,
            self.frames,
            self.skipped,
            self.events,
            self.events_dropped,
            self.diagnoses,
            self.tls_sync_lost,
            self.tls_read_ahead
        )
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

    let result = loop {
        let packet = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        summary.packets += 1;
        if packet.frame.len() < MIN_FRAME {
            summary.skipped += 1;
            continue;
        }
        // Zero would mean "kernel clock" to the program.
        let ts = packet.ts_ns.max(1);
        if summary.packets == 1 {
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

    pipeline.finish()?;
    summary.skipped += reader.skipped();
    summary.events = pipeline.events();
    summary.diagnoses = pipeline.diagnoses();
    let counters = kernel.counters();
    summary.events_dropped = counters.get(Counter::EventsDropped)?;
    summary.tls_sync_lost = counters.get(Counter::TlsSyncLost)?;
    summary.tls_read_ahead = counters.get(Counter::TlsReadAhead)?;
    result.with_context(|| format!("{}: replay stopped after {}", path.display(), summary))?;
    Ok(summary)
}
