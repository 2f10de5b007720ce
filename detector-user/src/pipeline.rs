//! Events in, diagnoses out: decode each ring-buffer record, count it, correlate it, and
//! print what the correlator concludes. Live and replay share this path, so they print the
//! same lines for the same packets.

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;

use crate::{
    clock::Clock, correlate::Correlator, diagnosis::Diagnosis, event::KernelEvent, kernel::SniMap,
    metrics::Metrics,
};

/// How long a session must be quiet before it is judged: long enough for the server's
/// answer to a bad first packet, short enough that a diagnosis shows promptly.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(2);
/// Server endpoints whose inferred idle timeout is exported (the label is an address, so
/// it is bounded to the endpoints with the most evidence).
pub const INFERRED_TIMEOUTS_EXPORTED: usize = 20;
/// Sessions held at once in the correlator.
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;

pub struct Pipeline<W: Write> {
    correlator: Correlator,
    sni: Option<SniMap>,
    metrics: Arc<Metrics>,
    out: W,
    events: u64,
    diagnoses: u64,
}

impl<W: Write> Pipeline<W> {
    pub fn new(
        clock: Clock,
        window: Duration,
        idle_threshold: Duration,
        metrics: Arc<Metrics>,
        sni: Option<SniMap>,
        out: W,
    ) -> Pipeline<W> {
        Pipeline {
            correlator: Correlator::new(clock, window, DEFAULT_MAX_SESSIONS)
                .with_idle_threshold(idle_threshold),
            sni,
            metrics,
            out,
            events: 0,
            diagnoses: 0,
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn diagnoses(&self) -> u64 {
        self.diagnoses
    }

    pub fn on_record(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match KernelEvent::decode(bytes) {
            Ok(e) => {
                self.events += 1;
                self.metrics.on_event(&e);
                let sni = match &self.sni {
                    Some(map) if !self.correlator.has_sni(&e) => map.lookup(e.client, e.server),
                    _ => None,
                };
                let pushed = self.correlator.ingest(&e, sni);
                self.emit(pushed)
            }
            Err(err) => {
                // Counted and exported; one bad record must not stop the agent.
                self.metrics.on_decode_error();
                log::warn!("dropping an undecodable kernel event: {err}");
                Ok(())
            }
        }
    }

    /// Judges sessions that went quiet by program time `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> anyhow::Result<()> {
        let done = self.correlator.expire(now_ns);
        self.emit(done)
    }

    /// Judges everything still open.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        let done = self.correlator.flush();
        self.emit(done)
    }

    fn emit(&mut self, diagnoses: Vec<Diagnosis>) -> anyhow::Result<()> {
        for d in diagnoses {
            self.metrics.on_diagnosis(&d);
            self.diagnoses += 1;
            serde_json::to_writer(&mut self.out, &d.to_json()).context("writing a diagnosis")?;
            self.out.write_all(b"\n").context("writing a diagnosis")?;
        }
        self.out.flush().context("flushing diagnoses")?;
        self.metrics
            .set_sessions(self.correlator.open_sessions(), self.correlator.evicted());
        self.metrics
            .set_timeouts(&self.correlator.timeouts().top(INFERRED_TIMEOUTS_EXPORTED));
        Ok(())
    }
}
