//! Flow-table occupancy, for the eviction metrics, counted on a thread of its own.
//!
//! The kernel cannot tell what its LRU tables evicted, only what it created; evictions are
//! created minus present. Counting what is present walks the table, one syscall per entry
//! (about a second for a million entries), so it must run neither on the event loop nor per
//! scrape: this thread walks both tables at a bounded period and updates the metrics, which
//! scrapes then only read.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::metrics::Metrics;
use crate::kernel::{Counters, FlowTable};

/// The shortest period between two walks (shorter than the live tests' settling pause, so
/// their last scrape counts what their traffic left). The eviction metrics' help texts
/// state it.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// A walk may take at most 1/BUDGET of the period (so at most 5% of one core).
const BUDGET: u32 = 20;

/// Stops the sampler when dropped (and waits for a walk in progress to end).
pub struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// Counts now, then every [`MIN_PERIOD`] or more (BUDGET times the last walk's duration,
    /// whichever is longer).
    pub fn start(
        metrics: Arc<Metrics>,
        counters: Counters,
        flows: FlowTable,
        unconfirmed: FlowTable,
    ) -> anyhow::Result<Sampler> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("flow-occupancy".into())
            .spawn(move || {
                loop {
                    let started = Instant::now();
                    if let Err(e) = sample(&metrics, &counters, &flows, &unconfirmed) {
                        log::warn!("counting flow-table occupancy: {e:#}");
                    }
                    let period = MIN_PERIOD.max(started.elapsed() * BUDGET);
                    match stopped.recv_timeout(period) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .context("starting the flow-occupancy thread")?;
        Ok(Sampler {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample(
    metrics: &Metrics,
    counters: &Counters,
    flows: &FlowTable,
    unconfirmed: &FlowTable,
) -> anyhow::Result<()> {
    // Counters first: a flow created during the walk may then be counted present but not
    // created, which can only understate evictions, never invent one.
    let values = counters.read()?;
    let present = flows.count()?;
    metrics.refresh_evictions(
        values[detector_common::Counter::FlowsCreated as usize],
        present,
    );
    let present = unconfirmed.count()?;
    metrics.refresh_unconfirmed_evictions(&values, present);
    Ok(())
}
