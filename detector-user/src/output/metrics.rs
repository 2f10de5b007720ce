//! Prometheus metrics (served by [`super::http`]).
//!
//! Labels come from closed sets (diagnosis kind, alert level/description, side); addresses
//! and names appear only in views bounded by construction (the top endpoints per kind, the
//! timeout estimates), so cardinality stays bounded however much traffic is seen.

use std::{
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use detector_common::{Counter, EventKind, tls::alert};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{
    detail::TimeoutEstimate,
    diagnosis::{Abstention, Diagnosis, Kind, side_name},
    top::{Row, TopServers},
};
use crate::kernel::event::KernelEvent;

pub struct Metrics {
    pub registry: Registry,
    /// `detector_diagnoses_total` by kind (indexed like [`Kind::ALL`]), looked up once.
    diagnoses: [IntCounter; Kind::ALL.len()],
    alerts: IntCounterVec,
    encrypted_alerts: IntCounterVec,
    /// `encrypted_alerts` by sender, looked up once: every clean TLS 1.2 close is two
    /// events of this kind, the most common the agent sees. Made on first use, so a
    /// series appears only once counted, as with the other labels.
    encrypted_by_side: [OnceLock<IntCounter>; 2],
    decode_errors: IntCounter,
    http_displaced: IntCounter,
    http_refused: IntCounter,
    sessions_evicted: IntCounter,
    sessions_open: IntGauge,
    idle_gaps: HistogramVec,
    /// `idle_gaps` by kind, looked up on first use (a series appears once observed).
    idle_gaps_by_kind: [OnceLock<Histogram>; Kind::ALL.len()],
    inferred_timeout: GaugeVec,
    inferred_flows: IntGaugeVec,
    kernel: Vec<(Counter, IntCounter)>,
    flows_evicted: IntCounter,
    unconfirmed_evicted: IntCounter,
    abstained: IntCounterVec,
    top: Mutex<TopServers>,
    top_gauge: IntGaugeVec,
}

/// Endpoints per kind in the top view, and its trailing window.
pub const TOP_K: usize = 10;
pub const TOP_WINDOW: Duration = Duration::from_secs(3600);

/// Idle-gap buckets that resolve the timeouts that matter: 60 s, nginx's and WAFs' 120 s,
/// 300 s, the AWS load balancers' 350 s, 600 s and an hour.
pub const IDLE_GAP_BUCKETS: [f64; 16] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 350.0, 400.0, 600.0, 900.0, 1800.0,
    3600.0, 7200.0,
];

impl Metrics {
    pub fn new() -> anyhow::Result<Metrics> {
        let registry = Registry::new_custom(Some("detector".into()), None)?;
        let diagnoses = IntCounterVec::new(
            Opts::new("diagnoses_total", "Diagnoses emitted, by kind"),
            &["kind"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new(
                "tls_alerts_total",
                "Plaintext TLS alert records seen, by level, description and sender",
            ),
            &["level", "description", "sender"],
        )?;
        let encrypted_alerts = IntCounterVec::new(
            Opts::new(
                "tls_encrypted_alerts_total",
                "Encrypted TLS alert records seen (content unreadable), by sender",
            ),
            &["sender"],
        )?;
        let decode_errors = IntCounter::new(
            "event_decode_errors_total",
            "Kernel events the agent could not decode (kernel/agent version mismatch)",
        )?;
        let http_displaced = IntCounter::new(
            "http_connections_displaced_total",
            "Connections to this endpoint closed to make room for a newcomer (they had sent no request)",
        )?;
        let http_refused = IntCounter::new(
            "http_connections_refused_total",
            "Connections to this endpoint refused: every slot held one that had sent a request or was closing",
        )?;
        let sessions_evicted = IntCounter::new(
            "sessions_evicted_total",
            "Sessions judged before their correlation window ended because the table was full",
        )?;
        let sessions_open = IntGauge::new(
            "sessions_open",
            "Sessions with events waiting for their correlation window to end",
        )?;
        let idle_gaps = HistogramVec::new(
            HistogramOpts::new(
                "idle_gap_seconds",
                "Idle gap before a close, reset or drop, by diagnosis kind",
            )
            .buckets(IDLE_GAP_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let inferred_timeout = GaugeVec::new(
            Opts::new(
                "inferred_idle_timeout_seconds",
                "Estimated idle timeout on the path to a server endpoint (shortest fatal gap \
                 longer than every survived one)",
            ),
            &["server"],
        )?;
        let inferred_flows = IntGaugeVec::new(
            Opts::new(
                "inferred_idle_timeout_flows",
                "Flows whose idle gaps the inferred timeout rests on",
            ),
            &["server"],
        )?;
        let build = IntGauge::with_opts(
            Opts::new("build_info", "Build of the detector agent")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1);
        let flows_evicted = IntCounter::new(
            "kernel_flows_evicted_total",
            "Flows the kernel's LRU flow table evicted to make room (created minus present; \
             present is counted off the event loop every second, or every 20 walks' time on \
             big tables, and this lags by as much)",
        )?;
        registry.register(Box::new(flows_evicted.clone()))?;
        let unconfirmed_evicted = IntCounter::new(
            "kernel_unconfirmed_flows_evicted_total",
            "Flows seen from one side only that the kernel's unconfirmed table evicted to make \
             room (created minus confirmed minus reset minus present; present is counted \
             off the event loop every second, or every 20 walks' time on big tables, and this \
             lags by as much)",
        )?;
        registry.register(Box::new(unconfirmed_evicted.clone()))?;
        let abstained = IntCounterVec::new(
            Opts::new(
                "abstained_total",
                "Times the detector declined to diagnose for lack of evidence, by reason",
            ),
            &["reason"],
        )?;
        for r in Abstention::ALL {
            abstained.with_label_values(&[r.as_str()]);
        }
        registry.register(Box::new(abstained.clone()))?;
        let top_gauge = IntGaugeVec::new(
            Opts::new(
                "top_server_diagnoses",
                format!(
                    "Diagnoses in the last {} s by server endpoint and SNI: the {TOP_K} \
                     endpoints with most per kind, and server=\"other\" for the rest; refreshed \
                     at each scrape, so quiet endpoints drop out",
                    TOP_WINDOW.as_secs()
                ),
            ),
            &["kind", "server", "sni"],
        )?;
        registry.register(Box::new(top_gauge.clone()))?;
        let mut kernel = Vec::new();
        let mut families: Vec<(&'static str, IntCounterVec)> = Vec::new();
        for c in Counter::ALL {
            if let Some((family, value)) = c.family() {
                let vec = match families.iter().find(|(name, _)| *name == family.metric) {
                    Some((_, vec)) => vec.clone(),
                    None => {
                        let vec = IntCounterVec::new(
                            Opts::new(format!("{}_total", family.metric), family.help),
                            &[family.label],
                        )?;
                        registry.register(Box::new(vec.clone()))?;
                        families.push((family.metric, vec.clone()));
                        vec
                    }
                };
                kernel.push((c, vec.with_label_values(&[value])));
                continue;
            }
            let m = IntCounter::new(format!("{}_total", c.metric_name()), c.help())?;
            registry.register(Box::new(m.clone()))?;
            kernel.push((c, m));
        }
        for m in [
            Box::new(diagnoses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(alerts.clone()),
            Box::new(encrypted_alerts.clone()),
            Box::new(decode_errors.clone()),
            Box::new(http_displaced.clone()),
            Box::new(http_refused.clone()),
            Box::new(sessions_evicted.clone()),
            Box::new(sessions_open.clone()),
            Box::new(idle_gaps.clone()),
            Box::new(inferred_timeout.clone()),
            Box::new(inferred_flows.clone()),
            Box::new(build),
        ] {
            registry.register(m)?;
        }
        Ok(Metrics {
            registry,
            diagnoses: Kind::ALL.map(|k| diagnoses.with_label_values(&[k.as_str()])),
            alerts,
            encrypted_alerts,
            encrypted_by_side: Default::default(),
            decode_errors,
            http_displaced,
            http_refused,
            sessions_evicted,
            sessions_open,
            idle_gaps,
            idle_gaps_by_kind: Default::default(),
            inferred_timeout,
            inferred_flows,
            kernel,
            flows_evicted,
            unconfirmed_evicted,
            abstained,
            top: Mutex::new(TopServers::new(TOP_K, TOP_WINDOW)),
            top_gauge,
        })
    }

    pub fn on_event(&self, e: &KernelEvent) {
        match (e.kind, e.alert) {
            (EventKind::PlaintextAlert, Some(a)) => self
                .alerts
                .with_label_values(&[
                    alert::level_name(a.level),
                    alert::description_name(a.description),
                    side_name(e.sender),
                ])
                .inc(),
            (EventKind::EncryptedAlert, _) => self.encrypted_by_side[e.sender as usize]
                .get_or_init(|| {
                    self.encrypted_alerts
                        .with_label_values(&[side_name(e.sender)])
                })
                .inc(),
            _ => {}
        }
    }

    pub fn on_decode_error(&self) {
        self.decode_errors.inc();
    }

    pub fn on_http_displaced(&self) {
        self.http_displaced.inc();
    }

    pub fn on_http_refused(&self) {
        self.http_refused.inc();
    }

    pub fn on_diagnosis(&self, d: &Diagnosis) {
        // `Kind::ALL` lists the kinds in declaration order.
        let kind = d.kind as usize;
        self.diagnoses[kind].inc();
        self.top
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(d.kind, d.server, d.sni.as_deref(), d.ts);
        if let Some(gap) = d.detail.gap_s() {
            self.idle_gaps_by_kind[kind]
                .get_or_init(|| self.idle_gaps.with_label_values(&[d.kind.as_str()]))
                .observe(gap);
        }
    }

    /// Replaces the exported timeout estimates (the set of endpoints can change).
    pub fn set_timeouts(&self, estimates: &[(SocketAddr, TimeoutEstimate)]) {
        self.inferred_timeout.reset();
        self.inferred_flows.reset();
        for (server, est) in estimates {
            let label = server.to_string();
            self.inferred_timeout
                .with_label_values(&[label.as_str()])
                .set(est.seconds);
            self.inferred_flows
                .with_label_values(&[label.as_str()])
                .set(est.flows as i64);
        }
    }

    pub fn set_sessions(&self, open: usize, evicted_total: u64) {
        self.sessions_open.set(open as i64);
        let seen = self.sessions_evicted.get();
        self.sessions_evicted
            .inc_by(evicted_total.saturating_sub(seen));
    }

    /// Brings the kernel counters, and the abstentions the kernel counts, up to the
    /// values in the maps (they only grow).
    pub fn refresh_kernel(&self, values: &[u64; Counter::COUNT as usize]) {
        for (c, m) in &self.kernel {
            let v = values[*c as usize];
            m.inc_by(v.saturating_sub(m.get()));
        }
        for r in Abstention::ALL {
            if let Some(c) = r.kernel_counter() {
                self.refresh_abstained(r, values[c as usize]);
            }
        }
    }

    /// Brings `detector_abstained_total{reason}` up to `total` (each reason has one source,
    /// the kernel or the correlator, which counts from the start).
    pub fn refresh_abstained(&self, reason: Abstention, total: u64) {
        let m = self.abstained.with_label_values(&[reason.as_str()]);
        m.inc_by(total.saturating_sub(m.get()));
    }

    /// Evictions from the confirmed flow table so far: flows created minus flows present
    /// (entries leave it only by eviction).
    pub fn refresh_evictions(&self, created: u64, present: u64) {
        let evicted = created.saturating_sub(present);
        self.flows_evicted
            .inc_by(evicted.saturating_sub(self.flows_evicted.get()));
    }

    /// Evictions from the unconfirmed table so far. An entry leaves it by moving to the
    /// confirmed table (counted as a flow created there), by a RST answer (counted as an
    /// abstention), or by eviction: so created, minus those two, minus present.
    pub fn refresh_unconfirmed_evictions(
        &self,
        values: &[u64; Counter::COUNT as usize],
        present: u64,
    ) {
        let evicted = values[Counter::UnconfirmedCreated as usize]
            .saturating_sub(values[Counter::FlowsCreated as usize])
            .saturating_sub(values[Counter::UnconfirmedReset as usize])
            .saturating_sub(present);
        self.unconfirmed_evicted
            .inc_by(evicted.saturating_sub(self.unconfirmed_evicted.get()));
    }

    /// Replaces the exported top view with the one at `now`.
    pub fn refresh_top(&self, now: time::OffsetDateTime) {
        let rows = self
            .top
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .view(now);
        self.top_gauge.reset();
        for Row {
            kind,
            server,
            sni,
            diagnoses,
        } in rows
        {
            let server = server.map_or_else(|| "other".to_string(), |s| s.to_string());
            // Already escaped where it was read (`output::escape`): printable ASCII only.
            let sni = sni.unwrap_or_default();
            self.top_gauge
                .with_label_values(&[kind.as_str(), server.as_str(), sni.as_str()])
                .set(diagnoses as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .context("encoding metrics")?;
        Ok(String::from_utf8(buf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_counters_are_one_metric_by_result() {
        let m = Metrics::new().unwrap();
        let mut v = [0u64; Counter::COUNT as usize];
        v[Counter::HandshakesStarted as usize] = 10;
        v[Counter::HandshakesCompleted as usize] = 7;
        v[Counter::HandshakesFailed as usize] = 2;
        m.refresh_kernel(&v);
        m.refresh_kernel(&v);
        let text = m.render().unwrap();
        for line in [
            "detector_tls_handshakes_total{result=\"started\"} 10",
            "detector_tls_handshakes_total{result=\"completed\"} 7",
            "detector_tls_handshakes_total{result=\"failed\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("detector_tls_handshakes_started"), "{text}");
    }

    #[test]
    fn sync_losses_are_exported_in_total_and_by_reason() {
        let m = Metrics::new().unwrap();
        let mut v = [0u64; Counter::COUNT as usize];
        v[Counter::TlsSyncLost as usize] = 3;
        v[Counter::SyncLostPassedUnread as usize] = 2;
        v[Counter::SyncLostGapTooLong as usize] = 1;
        m.refresh_kernel(&v);
        let text = m.render().unwrap();
        for line in [
            "detector_kernel_tls_sync_lost_total 3",
            "detector_kernel_tls_sync_lost_by_reason_total{reason=\"passed_unread\"} 2",
            "detector_kernel_tls_sync_lost_by_reason_total{reason=\"gap_too_long\"} 1",
            "detector_kernel_tls_sync_lost_by_reason_total{reason=\"implausible_header\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("detector_kernel_tls_sync_lost_passed_unread"),
            "{text}"
        );
    }

    #[test]
    fn top_view_is_refreshed_and_bounded() {
        let m = Metrics::new().unwrap();
        let t0 = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
        // A right-to-left override and a zero-width space inside the name, escaped as the
        // kernel stage hands an SNI on.
        let sni = crate::output::escape::escape("a\u{202e}b\u{200b}".as_bytes());
        {
            let mut top = m.top.lock().unwrap();
            top.record(Kind::FatalAlert, server, Some(&sni), t0);
            top.record(Kind::FatalAlert, server, Some(&sni), t0);
        }
        m.refresh_top(t0);
        let text = m.render().unwrap();
        let line = "detector_top_server_diagnoses{kind=\"fatal_alert\",server=\"192.0.2.1:443\",\
                    sni=\"a\\\\xe2\\\\x80\\\\xaeb\\\\xe2\\\\x80\\\\x8b\"} 2";
        assert!(text.contains(line), "{line} missing from\n{text}");
        m.refresh_top(t0 + TOP_WINDOW + TOP_WINDOW);
        let text = m.render().unwrap();
        assert!(!text.contains("detector_top_server_diagnoses{"), "{text}");
    }

    #[test]
    fn exposes_prefixed_names_and_zeroed_kinds() {
        let m = Metrics::new().unwrap();
        let mut v = [0u64; Counter::COUNT as usize];
        v[Counter::EventsDropped as usize] = 3;
        m.refresh_kernel(&v);
        m.refresh_kernel(&v); // idempotent: values are absolute
        let text = m.render().unwrap();
        assert!(
            text.contains("detector_kernel_events_dropped_total 3"),
            "{text}"
        );
        assert!(text.contains("detector_diagnoses_total{kind=\"http_to_tls_port\"} 0"));
        assert!(text.contains("detector_build_info{version="));
    }

    #[test]
    fn abstentions_come_from_kernel_and_correlator_under_one_name() {
        let m = Metrics::new().unwrap();
        let text = m.render().unwrap();
        for r in Abstention::ALL {
            assert!(
                text.contains(&format!(
                    "detector_abstained_total{{reason=\"{}\"}} 0",
                    r.as_str()
                )),
                "{text}"
            );
        }
        let mut v = [0u64; Counter::COUNT as usize];
        v[Counter::MidstreamAdopted as usize] = 4;
        v[Counter::UnconfirmedReset as usize] = 2000;
        m.refresh_kernel(&v);
        m.refresh_kernel(&v);
        m.refresh_abstained(Abstention::EstablishedByData, 3);
        m.refresh_abstained(Abstention::EstablishedByData, 3);
        let text = m.render().unwrap();
        for line in [
            "detector_abstained_total{reason=\"midstream_adopted\"} 4",
            "detector_abstained_total{reason=\"unconfirmed_reset\"} 2000",
            "detector_abstained_total{reason=\"established_by_data\"} 3",
            "detector_abstained_total{reason=\"renegotiation_answer_only\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_kernel_counter_is_exported_with_its_help() {
        let text = Metrics::new().unwrap().render().unwrap();
        // Counters of a family are one metric with a label (e.g. `detector_tls_handshakes_total`).
        for c in Counter::ALL.iter().filter(|c| c.family().is_none()) {
            let help = format!("# HELP detector_{}_total {}", c.metric_name(), c.help());
            assert!(text.contains(&help), "{help} missing from\n{text}");
        }
        // Where found events went is told apart: each help names its own reason.
        let reasons = [
            Counter::EventsEmitted,
            Counter::EventsDropped,
            Counter::EventsOverCap,
        ];
        assert!(Counter::EventsEmitted.help().contains("delivered"));
        assert!(
            Counter::EventsDropped
                .help()
                .contains("ring buffer was full")
        );
        assert!(
            Counter::EventsOverCap
                .help()
                .contains("cap of 4 events per packet")
        );
        for (i, a) in reasons.iter().enumerate() {
            for b in &reasons[i + 1..] {
                assert_ne!(a.help(), b.help());
            }
        }
    }

    #[test]
    fn unconfirmed_evictions_are_what_left_the_table_unexplained() {
        let m = Metrics::new().unwrap();
        let mut v = [0u64; Counter::COUNT as usize];
        // 3000 one-sided flows entered the table; 100 were answered and confirmed, 1000
        // were answered by a RST, 900 are still there: 1000 were evicted.
        v[Counter::UnconfirmedCreated as usize] = 3000;
        v[Counter::FlowsCreated as usize] = 100;
        v[Counter::UnconfirmedReset as usize] = 1000;
        m.refresh_unconfirmed_evictions(&v, 900);
        m.refresh_unconfirmed_evictions(&v, 900);
        // Confirmed flows present: the two tables are counted apart.
        m.refresh_evictions(v[Counter::FlowsCreated as usize], 60);
        let text = m.render().unwrap();
        assert!(
            text.contains("detector_kernel_unconfirmed_flows_evicted_total 1000"),
            "{text}"
        );
        assert!(
            text.contains("detector_kernel_flows_evicted_total 40"),
            "{text}"
        );
    }
}
