//! Kernel events → per-session diagnoses.
//!
//! The kernel reports single packets; a diagnosis needs the session's story: an HTTP
//! request to port 443 is the cause, the server's `15 03 01 00 02 02 0a` a few
//! milliseconds later is its consequence, not a second failure; a client's renegotiation
//! right after the server's HelloRequest is the answer to it. So events are held per
//! session until the session has been quiet for a correlation window, then judged
//! together, and each session gets at most one diagnosis per root cause.
//!
//! This module decides when sessions are judged; [`table`] holds them, [`session`] what
//! each session keeps, one module per family of judges what it concludes, [`timeout`] the
//! idle-timeout estimate.

mod handshake;
mod idle;
mod key;
mod mismatch;
mod renegotiation;
mod resumption;
mod session;
mod table;
mod timeout;

use std::{net::SocketAddr, time::Duration};

use detector_common::EventKind;

pub use self::{session::MAX_ALERTS_KEPT, timeout::TimeoutEstimator};
use self::{session::Session, table::Table};
use crate::{
    kernel::{
        clock::Clock,
        event::{KernelEvent, version_name},
    },
    output::{
        detail::{Detail, KindDetail, SessionDetail},
        diagnosis::{Abstention, Diagnosis, Kind},
    },
};

type SessionKey = (SocketAddr, SocketAddr);

pub struct Correlator {
    clock: Clock,
    window_ns: u64,
    idle_ns: u64,
    max_sessions: usize,
    sessions: Table,
    evicted: u64,
    timeouts: TimeoutEstimator,
    /// Abstentions decided here, indexed like [`Abstention::ALL`].
    abstained: [u64; Abstention::ALL.len()],
}

impl Correlator {
    pub fn new(clock: Clock, window: Duration, max_sessions: usize) -> Correlator {
        Correlator {
            clock,
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            idle_ns: detector_common::DEFAULT_IDLE_THRESHOLD_NS,
            max_sessions: max_sessions.max(1),
            sessions: Table::default(),
            evicted: 0,
            timeouts: TimeoutEstimator::default(),
            abstained: [0; Abstention::ALL.len()],
        }
    }

    /// The idle threshold the kernel reports by; alerts after this much quiet are closes.
    pub fn with_idle_threshold(mut self, idle: Duration) -> Correlator {
        self.idle_ns = idle.as_nanos().min(u64::MAX as u128) as u64;
        self
    }

    pub fn timeouts(&self) -> &TimeoutEstimator {
        &self.timeouts
    }

    /// Sessions judged early because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Abstentions the correlator decided so far for `reason` (kernel reasons are counted
    /// by the kernel, and stay zero here).
    pub fn abstained(&self, reason: Abstention) -> u64 {
        Abstention::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.abstained[i])
    }

    fn abstain(&mut self, reason: Abstention) {
        if let Some(i) = Abstention::ALL.iter().position(|r| *r == reason) {
            self.abstained[i] += 1;
        }
    }

    /// Adds an event (with its connection's SNI, if known); returns diagnoses of
    /// sessions it ended: one pushed out to make room, or the previous connection on a
    /// reused 4-tuple.
    pub fn ingest(&mut self, e: &KernelEvent, sni: Option<String>) -> Vec<Diagnosis> {
        let key = (e.client, e.server);
        let mut out = Vec::new();
        // The kernel restarted the flow (a new connection on the same 4-tuple, or the
        // flow evicted and picked up again): what the old session holds is judged now,
        // and nothing of it (its name above all) carries over to the new one.
        let mut open = false;
        if let Some(s) = self.sessions.get(&key) {
            if s.flow_first_seen_ns == e.flow_first_seen_ns {
                open = true;
            } else {
                let old = self.sessions.remove(&key).expect("key just found");
                out.extend(self.judge(key, &old));
            }
        }
        if !open && self.sessions.len() >= self.max_sessions {
            // Judge the quietest session now rather than lose what it holds.
            if let Some((oldest, s)) = self.sessions.pop_quietest_if(|_| true) {
                self.evicted += 1;
                out.extend(self.judge(oldest, &s));
            }
        }
        let idle_ns = self.idle_ns;
        // Gaps after which the path dropped the flow (a reset, retransmissions into
        // silence) feed the timeout estimate. A peer closing after idle is that peer's
        // own timeout, and says nothing about the path.
        // A flow first seen mid-stream resumes after a gap nobody measured (zero); once
        // adopted, its later gaps are measured like any flow's.
        let known_gap = e.gap_ns != 0;
        if known_gap
            && matches!(
                e.kind,
                EventKind::IdleRst | EventKind::IdleRetransmit | EventKind::IdleRstAnswer
            )
        {
            self.timeouts.died(e.server, e.gap_ns);
        }
        if e.kind == EventKind::IdleSurvived {
            self.timeouts.survived(e.server, e.gap_ns);
        }
        let abstained =
            self.sessions
                .update(key, || Session::new(e), |s| s.record(e, sni, idle_ns));
        if let Some(reason) = abstained {
            self.abstain(reason);
        }
        out
    }

    /// Judges sessions quiet for longer than the window at program time `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Diagnosis> {
        let window = self.window_ns;
        // The table gives the quietest first: the expired ones are a prefix of it.
        let mut done = Vec::new();
        while let Some(s) = self
            .sessions
            .pop_quietest_if(|last_ns| now_ns.saturating_sub(last_ns) >= window)
        {
            done.push(s);
        }
        self.judge_all(done)
    }

    /// The earliest program time at which [`Correlator::expire`] would judge a session
    /// open now; None when none is open. Replay asks once per packet whether to expire,
    /// and this lets it skip expiry until then.
    pub fn next_expiry(&self) -> Option<u64> {
        self.sessions
            .quietest_last_ns()
            .map(|last| last.saturating_add(self.window_ns))
    }

    /// Judges every open session (end of a replay, shutdown).
    pub fn flush(&mut self) -> Vec<Diagnosis> {
        let all = self.sessions.drain();
        self.judge_all(all)
    }

    fn judge_all(&mut self, sessions: Vec<(SessionKey, Session)>) -> Vec<Diagnosis> {
        // Output in the sessions' time order, whatever order they left the table in
        // (sorting positions rather than the sessions, which are large to move).
        let mut order: Vec<(u64, SessionKey, usize)> = sessions
            .iter()
            .enumerate()
            .map(|(i, (k, s))| (s.first_ns, *k, i))
            .collect();
        order.sort_unstable();
        let mut out = Vec::new();
        for (_, k, i) in order {
            out.extend(self.judge(k, &sessions[i].1));
        }
        out
    }

    fn judge(&mut self, (client, server): SessionKey, s: &Session) -> Vec<Diagnosis> {
        let mut found: Vec<Found> = Vec::new();
        if let Err(reason) = renegotiation::renegotiation(s, &mut found) {
            self.abstain(reason);
        }
        found.extend(idle::idle(s, self.idle_ns, self.timeouts.estimate(server)));
        // A protocol mismatch is the root cause of whatever ended the session after it
        // (nginx's 400 and close, OpenSSL's alert): those are evidence, not diagnoses.
        // So is a rejected resumption of the alert that ended its handshake.
        if let Some(d) = mismatch::protocol_mismatch(s, server) {
            found.push(d);
        } else if let Some(d) = resumption::resumption_rejected(s) {
            found.push(d);
        } else {
            found.extend(handshake::handshake_reset(s));
            found.extend(handshake::fatal_alert(s));
        }
        found
            .into_iter()
            .map(|(kind, evidence, detail)| {
                let session = SessionDetail {
                    ssl_history: (!s.history.is_empty()).then(|| s.history.to_string()),
                    tls_version: s.tls.negotiated_version.map(version_name),
                    midstream: s.midstream,
                    alerts_omitted: s.alerts_omitted,
                    encrypted_alerts_omitted: s.encrypted_alerts_omitted,
                };
                Diagnosis {
                    ts: self.clock.to_wall(s.first_ns),
                    kind,
                    client,
                    server,
                    sni: s.sni.clone(),
                    evidence,
                    detail: Detail {
                        kind: detail,
                        session,
                    },
                }
            })
            .collect()
    }
}

/// What a judge concludes: the kind, the evidence in words, the kind's detail.
type Found = (Kind, Vec<String>, KindDetail);

#[cfg(test)]
mod tests;
