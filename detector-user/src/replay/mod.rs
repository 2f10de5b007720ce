//! `detector replay`: a capture file through the very same compiled XDP program, with the
//! capture's timestamps as the program's clock, on as many programs as there are workers.

mod shard;
mod worker;

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write},
    num::NonZeroUsize,
    path::Path,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, channel, sync_channel},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use self::worker::Totals;
use self::worker::{Batch, Report};
use crate::{
    capture,
    kernel::{Options, clock::Clock},
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
    /// Of `tls_sync_lost`, by why (the reason labels of the kernel's metric).
    pub tls_sync_lost_by: Vec<(&'static str, u64)>,
    pub tls_read_ahead: u64,
    pub tls_bridged_by_length: u64,
    /// Each worker's share, in worker order.
    pub workers: Vec<Totals>,
    /// The slowest worker's loading of its program (the workers load at once).
    pub load_time: Duration,
    /// From the first packet read to the last one's events merged.
    pub run_time: Duration,
    /// CPU time of the thread reading the capture and of the one merging events.
    pub reader_cpu: Duration,
    pub merge_cpu: Duration,
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
             lost: {} ({}reordering gaps bridged: {}, places found again by record length: {})",
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
            self.sync_lost_reasons(),
            self.tls_read_ahead,
            self.tls_bridged_by_length
        )
    }
}

impl Summary {
    /// `reason N, ...; ` for the reasons the walker lost its place for, or nothing.
    fn sync_lost_reasons(&self) -> String {
        let lost: Vec<String> = self
            .tls_sync_lost_by
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        if lost.is_empty() {
            String::new()
        } else {
            format!("{}; ", lost.join(", "))
        }
    }

    /// How the packets were shared out: `workers: N (packets: a, b, ...)`.
    pub fn workers_line(&self) -> String {
        let each: Vec<String> = self.workers.iter().map(|w| w.packets.to_string()).collect();
        format!(
            "workers: {} (packets: {})",
            self.workers.len(),
            each.join(", ")
        )
    }

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

/// One worker per CPU this process may run on.
pub fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Packets per chunk: the reader hands each worker its share of a chunk at once, and the
/// merge takes the chunk back whole, so that channel traffic is per chunk, not per packet.
const CHUNK: usize = 1024;
/// Chunks a worker may have waiting, and reports the merge may have waiting per worker.
const QUEUED_CHUNKS: usize = 4;

/// Replays `path` on `workers` kernel programs, writing diagnoses to `out`. On a truncated
/// or corrupt file, the diagnoses found up to the bad spot are written first, then the
/// error names the offset.
///
/// The capture's flows are spread over the workers ([`shard`]), each with its own program
/// and maps, so each worker sees whole flows in capture order. The events the workers'
/// programs raise are merged back into capture order, packet by packet, and go through one
/// pipeline, whose clock advances packet by packet as before: the correlator sees exactly
/// the events, in exactly the order, one program would have given it, so the output does
/// not depend on the number of workers (per-server facts such as the idle-timeout estimate
/// span flows of several workers).
pub fn replay(
    path: &Path,
    opts: &Options,
    window: Duration,
    workers: NonZeroUsize,
    metrics: Arc<Metrics>,
    out: impl Write,
) -> anyhow::Result<Summary> {
    let reader = capture::Reader::open(path)
        .with_context(|| format!("{}: cannot read as a capture", path.display()))?;
    let n = workers.get();
    // No SNI map here: each worker decodes its events beside its own maps.
    let mut pipeline = Pipeline::new(
        Clock::Capture,
        window,
        opts.idle_threshold,
        metrics,
        None,
        out,
    );
    let bar = progress(path);
    std::thread::scope(|scope| {
        let mut inputs = Vec::with_capacity(n);
        let mut reports = Vec::with_capacity(n);
        let (spare_tx, spare_rx) = channel();
        for i in 0..n {
            let (batch_tx, batch_rx) = sync_channel::<Batch>(QUEUED_CHUNKS);
            let (report_tx, report_rx) = sync_channel(QUEUED_CHUNKS);
            let spare_tx = spare_tx.clone();
            std::thread::Builder::new()
                .name(format!("replay-{i}"))
                .spawn_scoped(scope, move || {
                    worker::run(opts, batch_rx, report_tx, spare_tx)
                })
                .context("starting a replay worker")?;
            inputs.push(batch_tx);
            reports.push(report_rx);
        }
        let mut summary = Summary::default();
        for r in &reports {
            match next_report(r)? {
                Report::Loaded(took) => summary.load_time = summary.load_time.max(took),
                _ => bail!("a replay worker reported before loading its program"),
            }
        }
        let started = Instant::now();
        let merge_cpu = thread_cpu();
        let (plan_tx, plan_rx) = sync_channel(QUEUED_CHUNKS * 4);
        std::thread::Builder::new()
            .name("replay-read".into())
            .spawn_scoped(scope, move || read(reader, inputs, &spare_rx, plan_tx))
            .context("starting the capture reader")?;
        let end = merge(&plan_rx, &reports, &mut pipeline, &bar)?;
        for r in &reports {
            match next_report(r)? {
                Report::Totals(t) => summary.workers.push(t),
                _ => bail!("a replay worker went on after its input ended"),
            }
        }
        summary.run_time = started.elapsed();
        bar.finish_and_clear();
        pipeline.finish()?;
        summary.merge_cpu = thread_cpu().saturating_sub(merge_cpu);
        summary.reader_cpu = end.cpu;
        summary.packets = end.packets;
        summary.skipped = end.skipped;
        for w in &summary.workers {
            summary.frames += w.frames;
            summary.events_dropped += w.events_dropped;
            summary.tls_sync_lost += w.tls_sync_lost;
            summary.tls_read_ahead += w.tls_read_ahead;
            summary.tls_bridged_by_length += w.tls_bridged_by_length;
            if summary.tls_sync_lost_by.is_empty() {
                summary.tls_sync_lost_by = w.tls_sync_lost_by.clone();
            } else {
                for (sum, (_, n)) in summary.tls_sync_lost_by.iter_mut().zip(&w.tls_sync_lost_by) {
                    sum.1 += n;
                }
            }
        }
        summary.by_kind = pipeline.diagnoses_by_kind().clone();
        summary.events = pipeline.events();
        summary.diagnoses = pipeline.diagnoses();
        end.result
            .map_err(anyhow::Error::new)
            .with_context(|| format!("{}: replay stopped after {}", path.display(), summary))?;
        Ok(summary)
    })
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clock exists on every kernel we load on.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A worker's next report; its error, or the news that it stopped without one.
fn next_report(r: &Receiver<anyhow::Result<Report>>) -> anyhow::Result<Report> {
    r.recv()
        .map_err(|_| anyhow!("a replay worker stopped without saying why"))?
}

/// What the merge needs of each packet of a chunk, in capture order.
enum Slot {
    /// Not run (counted in [`Skipped`]).
    Skipped,
    /// Run at capture time `ts` by worker `worker`.
    Run { ts: u64, worker: usize },
}

/// From the reader to the merge.
enum Read {
    /// One chunk, whose batches the workers have been sent; the file offset after it.
    Chunk(Vec<Slot>, u64),
    /// The capture ended (or broke): the reader's counts, and why it stopped.
    End(End),
}

struct End {
    cpu: Duration,
    packets: u64,
    skipped: Skipped,
    result: Result<(), capture::PcapError>,
}

/// Reads the capture, starts the clock, and deals each packet to its flow's worker.
fn read(
    mut reader: capture::Reader<std::fs::File>,
    inputs: Vec<SyncSender<Batch>>,
    spare: &Receiver<Batch>,
    plans: SyncSender<Read>,
) {
    let mut clock = CaptureClock::default();
    let mut shards = shard::Shards::new(inputs.len());
    let mut started_ns = None;
    let cpu = thread_cpu();
    let mut end = End {
        cpu: Duration::ZERO,
        packets: 0,
        skipped: Skipped::default(),
        result: Ok(()),
    };
    loop {
        let mut slots = Vec::with_capacity(CHUNK);
        let mut batches: Vec<Batch> = inputs
            .iter()
            .map(|_| spare.try_recv().unwrap_or_else(|_| Batch::new(None)))
            .collect();
        let mut over = false;
        while slots.len() < CHUNK {
            let packet = match reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => {
                    over = true;
                    break;
                }
                Err(e) => {
                    end.result = Err(e);
                    over = true;
                    break;
                }
            };
            end.packets += 1;
            if packet.frame.len() < MIN_FRAME {
                end.skipped.runt += 1;
                slots.push(Slot::Skipped);
                continue;
            }
            let Some((ts, first)) = clock.at(packet.ts_ns) else {
                end.skipped.no_timestamp += 1;
                slots.push(Slot::Skipped);
                continue;
            };
            if first {
                started_ns = Some(ts);
            }
            let worker = shards.worker_of(packet.frame);
            batches[worker].push(slots.len() as u32, end.packets, ts, packet.frame);
            slots.push(Slot::Run { ts, worker });
        }
        for (mut batch, input) in batches.into_iter().zip(&inputs) {
            batch.started_ns = started_ns;
            if input.send(batch).is_err() {
                // That worker failed; the merge hears why from it.
                return;
            }
        }
        if plans.send(Read::Chunk(slots, reader.offset())).is_err() {
            return;
        }
        if over {
            end.skipped.link_type = reader.skipped();
            end.cpu = thread_cpu().saturating_sub(cpu);
            let _ = plans.send(Read::End(end));
            return;
        }
    }
}

/// Feeds the workers' events to the pipeline in capture order, packet by packet, each
/// packet's events followed by the clock's step to its time, as one program would have
/// done it.
fn merge<W: Write>(
    plans: &Receiver<Read>,
    reports: &[Receiver<anyhow::Result<Report>>],
    pipeline: &mut Pipeline<W>,
    bar: &ProgressBar,
) -> anyhow::Result<End> {
    loop {
        let Ok(read) = plans.recv() else {
            // The reader stopped early: a worker refused its share, and says why.
            for r in reports {
                if let Ok(Err(e)) = r.try_recv() {
                    return Err(e);
                }
            }
            bail!("the capture reader stopped without saying why");
        };
        let (slots, offset) = match read {
            Read::Chunk(slots, offset) => (slots, offset),
            Read::End(end) => return Ok(end),
        };
        let mut done = Vec::with_capacity(reports.len());
        for r in reports {
            match next_report(r)? {
                Report::Done(d) => done.push(d.events.into_iter().peekable()),
                _ => bail!("a replay worker skipped a batch"),
            }
        }
        for (slot, s) in slots.into_iter().enumerate() {
            let Slot::Run { ts, worker } = s else {
                continue;
            };
            if let Some((_, raised)) = done[worker].next_if(|(at, _)| *at as usize == slot) {
                for sighting in raised {
                    pipeline.on_decoded(sighting)?;
                }
            }
            pipeline.tick(ts)?;
        }
        bar.set_position(offset);
        bar.set_message(format!("{} diagnoses", pipeline.diagnoses()));
    }
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
    fn summary_names_why_the_walker_lost_its_place() {
        let lost = Summary {
            tls_sync_lost: 3,
            tls_sync_lost_by: vec![
                ("implausible_header", 0),
                ("passed_unread", 1),
                ("gap_too_long", 2),
            ],
            tls_read_ahead: 7,
            tls_bridged_by_length: 1,
            ..Summary::default()
        };
        assert!(
            lost.to_string().ends_with(
                "TLS sync lost: 3 (passed_unread 1, gap_too_long 2; reordering gaps \
                 bridged: 7, places found again by record length: 1)"
            ),
            "{lost}"
        );
        assert!(
            Summary::default().to_string().ends_with(
                "TLS sync lost: 0 (reordering gaps bridged: 0, places found again by \
                 record length: 0)"
            ),
            "{}",
            Summary::default()
        );
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
