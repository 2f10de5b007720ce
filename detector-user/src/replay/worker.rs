//! A replay worker: a kernel program of its own (its own maps) on one share of the
//! capture's flows, run frame by frame, with the events each packet raised decoded next
//! to the maps they refer to.

use std::{
    sync::mpsc::{Receiver, Sender, SyncSender},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use detector_common::{Counter, REPLAY_META_LEN, SYNC_LOST};

use crate::{
    capture::segment,
    kernel::{
        Kernel, Options,
        event::DecodeError,
        reader::{EventReader, Sighting},
        test_run::push_frame,
    },
};

/// One chunk's share of packets for one worker, each behind its capture time as the
/// program takes it ([`push_frame`]).
pub struct Batch {
    /// The program's start on the capture's clock (the first timestamped packet).
    pub started_ns: Option<u64>,
    buf: Vec<u8>,
    packets: Vec<Entry>,
}

struct Entry {
    /// Place of the packet in its chunk.
    slot: u32,
    /// Place in the capture, counted from 1, for errors.
    number: u64,
    start: usize,
    end: usize,
}

impl Batch {
    pub fn new(started_ns: Option<u64>) -> Batch {
        Batch {
            started_ns,
            buf: Vec::new(),
            packets: Vec::new(),
        }
    }

    pub fn push(&mut self, slot: u32, number: u64, ts_ns: u64, frame: &[u8]) {
        let start = self.buf.len();
        push_frame(&mut self.buf, ts_ns, frame);
        self.packets.push(Entry {
            slot,
            number,
            start,
            end: self.buf.len(),
        });
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Empties the batch for another chunk, keeping its memory: the reader takes batches
    /// back from the workers rather than growing a fresh megabyte per chunk.
    fn clear(&mut self) {
        self.started_ns = None;
        self.buf.clear();
        self.packets.clear();
    }
}

/// What a worker made of a batch: the records each packet raised (by slot, in order),
/// decoded.
#[derive(Default)]
pub struct Done {
    pub events: Vec<(u32, Vec<Result<Sighting, DecodeError>>)>,
    pub frames: u64,
}

/// What a worker tells the merge, in this order: loaded, one [`Done`] per batch, then its
/// totals once its input ends. Any error ends the stream.
pub enum Report {
    Loaded(Duration),
    Done(Done),
    Totals(Totals),
}

/// A worker's share of the summary.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub packets: u64,
    pub frames: u64,
    /// Time spent running its packets (from its first batch to its last, less waiting).
    pub busy: Duration,
    /// CPU time of its thread after loading: what its packets cost, however busy the
    /// machine was.
    pub cpu: Duration,
    pub events_dropped: u64,
    pub tls_sync_lost: u64,
    /// Of `tls_sync_lost`, by why (the kernel's reason counters, in [`Counter::ALL`] order).
    pub tls_sync_lost_by: Vec<(&'static str, u64)>,
    pub tls_read_ahead: u64,
    pub tls_bridged_by_length: u64,
}

/// Loads a kernel program and runs every batch that arrives until the input closes,
/// handing each batch back empty through `spare`. Errors are reported, not returned: the
/// merge owns the outcome.
pub fn run(
    opts: &Options,
    input: Receiver<Batch>,
    reports: SyncSender<anyhow::Result<Report>>,
    spare: Sender<Batch>,
) {
    let outcome = serve(opts, &input, &reports, &spare);
    if let Err(e) = outcome {
        // The merge may have stopped already; then nobody needs the error.
        let _ = reports.send(Err(e));
    }
}

fn serve(
    opts: &Options,
    input: &Receiver<Batch>,
    reports: &SyncSender<anyhow::Result<Report>>,
    spare: &Sender<Batch>,
) -> anyhow::Result<()> {
    let loading = Instant::now();
    let mut kernel = Kernel::load_xdp(opts)?;
    kernel.set_clock_in_meta(true)?;
    let reader = EventReader::new(kernel.take_sni());
    let gone = || anyhow!("the replay's merge stopped");
    reports
        .send(Ok(Report::Loaded(loading.elapsed())))
        .map_err(|_| gone())?;
    let mut totals = Totals::default();
    let cpu = super::thread_cpu();
    let mut started = false;
    let mut segment_buf = Vec::new();
    while let Ok(mut batch) = input.recv() {
        let t = Instant::now();
        if !started && let Some(ns) = batch.started_ns {
            kernel.set_started(ns)?;
            started = true;
        }
        let mut done = Done::default();
        for p in &batch.packets {
            let input = &batch.buf[p.start..p.end];
            let frame = &input[REPLAY_META_LEN..];
            let run = |kernel: &mut Kernel, input: &[u8]| {
                kernel
                    .run_xdp_replayed(input)
                    .with_context(|| format!("running packet {} through the program", p.number))
            };
            if frame.len() <= segment::MAX_FRAME {
                run(&mut kernel, input)?;
                done.frames += 1;
            } else {
                let ts = u64::from_ne_bytes(input[..REPLAY_META_LEN].try_into()?);
                for seg in segment::split(frame) {
                    segment_buf.clear();
                    push_frame(&mut segment_buf, ts, &seg);
                    run(&mut kernel, &segment_buf)?;
                    done.frames += 1;
                }
            }
            let mut raised = Vec::new();
            while let Some(record) = kernel.events().next() {
                raised.push(reader.decode(&record));
            }
            if !raised.is_empty() {
                done.events.push((p.slot, raised));
            }
        }
        totals.packets += batch.len() as u64;
        totals.frames += done.frames;
        totals.busy += t.elapsed();
        reports.send(Ok(Report::Done(done))).map_err(|_| gone())?;
        batch.clear();
        // The reader may have finished: then the batch is simply dropped.
        let _ = spare.send(batch);
    }
    totals.cpu = super::thread_cpu().saturating_sub(cpu);
    let counters = kernel.counters().read()?;
    totals.events_dropped = counters[Counter::EventsDropped as usize];
    totals.tls_sync_lost = counters[Counter::TlsSyncLost as usize];
    totals.tls_sync_lost_by = Counter::ALL
        .iter()
        .filter_map(|&c| match c.family() {
            Some((family, reason)) if family.metric == SYNC_LOST.metric => {
                Some((reason, counters[c as usize]))
            }
            _ => None,
        })
        .collect();
    totals.tls_read_ahead = counters[Counter::TlsReadAhead as usize];
    totals.tls_bridged_by_length = counters[Counter::TlsBridgedByLength as usize];
    reports
        .send(Ok(Report::Totals(totals)))
        .map_err(|_| gone())?;
    Ok(())
}
