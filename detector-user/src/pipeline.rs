//! Events in, diagnoses out: decode each ring-buffer record, count it, correlate it, and
//! print what the correlator concludes. Live and replay share this path, so they print the
//! same lines for the same packets.

use std::{collections::BTreeMap, io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;

use crate::{
    correlate::Correlator,
    kernel::{
        SniMap,
        clock::Clock,
        event::DecodeError,
        reader::{EventReader, Sighting},
    },
    output::{
        diagnosis::{Abstention, Diagnosis, Kind},
        metrics::Metrics,
    },
};

/// How long a session must be quiet before it is judged: long enough for the server's
/// answer to a bad first packet, short enough that a diagnosis shows promptly.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(2);
/// Server endpoints whose inferred idle timeout is exported (the label is an address, so
/// it is bounded to the endpoints with the most evidence).
pub const INFERRED_TIMEOUTS_EXPORTED: usize = 20;
/// Program time between exports of the timeout estimates at most (the live agent ticks
/// this often anyway).
pub const TIMEOUTS_EXPORT_EVERY: Duration = Duration::from_millis(250);
/// Sessions held at once in the correlator.
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;

/// Bytes of JSON lines held before they are written: a batch of many diagnoses (a flush
/// at shutdown) is written in parts rather than held whole.
const LINES_BUFFERED: usize = 64 * 1024;

pub struct Pipeline<W: Write> {
    reader: EventReader,
    correlator: Correlator,
    metrics: Arc<Metrics>,
    out: W,
    /// The diagnoses' JSON lines, built here and written with one call per batch (or per
    /// [`LINES_BUFFERED`] bytes); kept between batches so that writing them allocates
    /// nothing once it has grown.
    lines: Vec<u8>,
    /// No session can be quiet for the window before this program time (a lower bound:
    /// events only move sessions' quiet later, or open new ones, which lower it).
    quiet_until: u64,
    window_ns: u64,
    events: u64,
    diagnoses: u64,
    by_kind: BTreeMap<Kind, u64>,
    /// What the metrics were last given, so that an event that changes neither costs
    /// nothing there: the timeout estimates' generation (and the program time it was
    /// exported at), the correlator's abstentions.
    timeouts_exported: Option<(u64, u64)>,
    abstained_exported: [u64; Abstention::ALL.len()],
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
            reader: EventReader::new(sni),
            correlator: Correlator::new(clock, window, DEFAULT_MAX_SESSIONS)
                .with_idle_threshold(idle_threshold),
            metrics,
            out,
            lines: Vec::new(),
            quiet_until: 0,
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            events: 0,
            diagnoses: 0,
            by_kind: BTreeMap::new(),
            timeouts_exported: None,
            abstained_exported: [0; Abstention::ALL.len()],
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn diagnoses(&self) -> u64 {
        self.diagnoses
    }

    /// Diagnoses written so far, by kind.
    pub fn diagnoses_by_kind(&self) -> &BTreeMap<Kind, u64> {
        &self.by_kind
    }

    pub fn on_record(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let decoded = self.reader.decode(bytes);
        self.on_decoded(decoded)
    }

    /// A record decoded elsewhere (by a replay worker, beside the kernel maps it read the
    /// SNI from), taken exactly as [`Pipeline::on_record`] takes its own.
    pub fn on_decoded(&mut self, decoded: Result<Sighting, DecodeError>) -> anyhow::Result<()> {
        match decoded {
            Ok(Sighting { event, sni }) => {
                self.events += 1;
                self.metrics.on_event(&event);
                // A session's quiet starts at its latest event (`Session::last_ns`).
                self.quiet_until = self
                    .quiet_until
                    .min(event.ts_ns.saturating_add(self.window_ns));
                let pushed = self.correlator.ingest(&event, sni);
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
        // Before the shortcut below: estimates change with events, not with expiry.
        self.export_timeouts(now_ns, false);
        // Replay ticks once per packet: most ticks find nothing to judge, and know it
        // without scanning the sessions (nor refreshing metrics nothing changed).
        if now_ns < self.quiet_until {
            return Ok(());
        }
        let done = self.correlator.expire(now_ns);
        self.quiet_until = if self.window_ns == 0 {
            0
        } else {
            self.correlator.next_expiry().unwrap_or(u64::MAX)
        };
        self.emit(done)
    }

    /// Judges everything still open.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        let done = self.correlator.flush();
        self.export_timeouts(0, true);
        self.emit(done)
    }

    fn emit(&mut self, diagnoses: Vec<Diagnosis>) -> anyhow::Result<()> {
        if !diagnoses.is_empty() {
            self.lines.clear();
            for d in diagnoses {
                self.metrics.on_diagnosis(&d);
                self.diagnoses += 1;
                *self.by_kind.entry(d.kind).or_default() += 1;
                serde_json::to_writer(&mut self.lines, &d).context("writing a diagnosis")?;
                self.lines.push(b'\n');
                if self.lines.len() >= LINES_BUFFERED {
                    self.write_lines()?;
                }
            }
            self.write_lines()?;
            self.out.flush().context("flushing diagnoses")?;
        }
        self.metrics
            .set_sessions(self.correlator.open_sessions(), self.correlator.evicted());
        for (i, reason) in Abstention::ALL.into_iter().enumerate() {
            let total = self.correlator.abstained(reason);
            if reason.kernel_counter().is_none() && total != self.abstained_exported[i] {
                self.metrics.refresh_abstained(reason, total);
                self.abstained_exported[i] = total;
            }
        }
        Ok(())
    }

    fn write_lines(&mut self) -> anyhow::Result<()> {
        self.out
            .write_all(&self.lines)
            .context("writing diagnoses")?;
        self.lines.clear();
        Ok(())
    }

    /// Hands the best-supported timeout estimates to the metrics if they changed, at most
    /// once per [`TIMEOUTS_EXPORT_EVERY`] of program time (`now_ns`) unless `now` says to
    /// do it regardless: they change with idle events, which a busy agent sees many of a
    /// second, and a scrape comes far less often.
    fn export_timeouts(&mut self, now_ns: u64, now: bool) {
        let generation = self.correlator.timeouts().generation();
        let due = match self.timeouts_exported {
            Some((exported, at)) => {
                exported != generation
                    && (now || now_ns.saturating_sub(at) >= TIMEOUTS_EXPORT_EVERY.as_nanos() as u64)
            }
            None => true,
        };
        if due {
            self.timeouts_exported = Some((generation, now_ns));
            self.metrics
                .set_timeouts(&self.correlator.timeouts().top(INFERRED_TIMEOUTS_EXPORTED));
        }
    }
}

#[cfg(test)]
mod tests {
    use detector_common::{Event, EventKind, PayloadClass, Side, abort, dir_flags, family};

    use super::*;

    fn record(e: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data with explicit padding.
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    /// A pipeline on capture time with the default window, writing into a buffer.
    fn capture_pipeline(metrics: &Arc<Metrics>) -> Pipeline<Vec<u8>> {
        Pipeline::new(
            Clock::Capture,
            DEFAULT_WINDOW,
            Duration::from_secs(30),
            metrics.clone(),
            None,
            Vec::new(),
        )
    }

    #[test]
    fn timeout_estimates_reach_the_metric_on_ticks_at_most_every_250_ms() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut p = capture_pipeline(&metrics);
        let idle = |kind: EventKind, client_port: u16, gap_s: u64, ts_ns: u64| {
            // SAFETY: all-zero is a valid Event.
            let mut e: Event = unsafe { std::mem::zeroed() };
            e.kind = kind as u8;
            e.family = family::V6;
            e.ts_ns = ts_ns;
            e.gap_ns = gap_s * 1_000_000_000;
            e.client_port = client_port;
            e.server_port = 443;
            e.sender = Side::Server as u8;
            record(&e)
        };
        let exported = |m: &Metrics| {
            m.render().unwrap().lines().find_map(|l| {
                l.strip_prefix("detector_inferred_idle_timeout_seconds{server=\"[::]:443\"} ")
                    .map(str::to_string)
            })
        };
        let ms = 1_000_000;
        p.on_record(&idle(EventKind::IdleSurvived, 1, 30, 1_000 * ms))
            .unwrap();
        p.on_record(&idle(EventKind::IdleRst, 2, 350, 1_000 * ms))
            .unwrap();
        assert_eq!(
            exported(&metrics),
            None,
            "exported on a tick, not per event"
        );
        p.tick(1_000 * ms).unwrap();
        assert_eq!(exported(&metrics).as_deref(), Some("350"));
        // A shorter fatal gap lowers the estimate: shown at the first tick 250 ms after
        // the last export.
        p.on_record(&idle(EventKind::IdleRst, 3, 300, 1_100 * ms))
            .unwrap();
        p.tick(1_100 * ms).unwrap();
        assert_eq!(exported(&metrics).as_deref(), Some("350"));
        p.tick(1_250 * ms).unwrap();
        assert_eq!(exported(&metrics).as_deref(), Some("300"));
        // And whatever changed last is exported when the pipeline finishes.
        p.on_record(&idle(EventKind::IdleRst, 4, 200, 1_300 * ms))
            .unwrap();
        p.finish().unwrap();
        assert_eq!(exported(&metrics).as_deref(), Some("200"));
    }

    #[test]
    fn correlator_abstentions_reach_the_metric() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut p = capture_pipeline(&metrics);
        // SAFETY: all-zero is a valid Event.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = EventKind::HandshakeAborted as u8;
        e.detail = abort::FIN;
        e.family = family::V6;
        e.ts_ns = 1;
        e.client_port = 40000;
        e.server_port = 443;
        e.sender = Side::Client as u8;
        e.client_first = PayloadClass::ClientHello as u8;
        e.server_first = PayloadClass::TlsRecord as u8;
        // Both sides sent application data after the ServerHello.
        e.dir_flags = [
            dir_flags::HELLO | dir_flags::APPDATA,
            dir_flags::HELLO | dir_flags::APPDATA,
        ];
        p.on_record(&record(&e)).unwrap();
        p.finish().unwrap();
        assert_eq!(p.diagnoses(), 0);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("detector_abstained_total{reason=\"established_by_data\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn many_diagnoses_at_once_are_written_whole_and_in_order() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut p = capture_pipeline(&metrics);
        // Enough reset handshakes, judged in one flush, that their lines pass the bytes
        // held before a write.
        let sessions: u16 = 400;
        for n in 0..sessions {
            // SAFETY: all-zero is a valid Event.
            let mut e: Event = unsafe { std::mem::zeroed() };
            e.kind = EventKind::HandshakeAborted as u8;
            e.detail = abort::RST;
            e.family = family::V6;
            e.ts_ns = 1_000 + u64::from(n);
            e.client_port = 10_000 + n;
            e.server_port = 443;
            e.sender = Side::Server as u8;
            e.client_first = PayloadClass::ClientHello as u8;
            p.on_record(&record(&e)).unwrap();
        }
        p.finish().unwrap();
        assert_eq!(p.diagnoses(), u64::from(sessions));
        let out = std::str::from_utf8(&p.out).unwrap();
        assert!(out.len() > LINES_BUFFERED, "{} bytes", out.len());
        assert!(out.ends_with('\n'));
        let ports: Vec<u16> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["kind"], "handshake_reset", "{l}");
                let client: std::net::SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
                client.port()
            })
            .collect();
        assert_eq!(ports, (10_000..10_000 + sessions).collect::<Vec<_>>());
    }
}
