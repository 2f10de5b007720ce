//! Kernel events → per-session diagnoses.
//!
//! The kernel reports single packets; a diagnosis needs the session's story: an HTTP
//! request to port 443 is the cause, the server's `15 03 01 00 02 02 0a` a few
//! milliseconds later is its consequence, not a second failure; a client's renegotiation
//! right after the server's HelloRequest is the answer to it. So events are held per
//! session until the session has been quiet for a correlation window, then judged
//! together, and each session gets at most one diagnosis per root cause.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use detector_common::{EventKind, PayloadClass, Side, dir_flags, tls::alert, tls_flags};
use serde_json::{Map, Value, json};

use crate::{
    kernel::{
        clock::Clock,
        event::{Abort, Alert, KernelEvent, TlsFacts, version_name},
    },
    output::diagnosis::{Abstention, Diagnosis, Kind, hex, show_bytes, side_name},
};

type SessionKey = (SocketAddr, SocketAddr);

pub struct Correlator {
    clock: Clock,
    window_ns: u64,
    idle_ns: u64,
    max_sessions: usize,
    sessions: HashMap<SessionKey, Session>,
    evicted: u64,
    timeouts: TimeoutEstimator,
    /// Abstentions decided here, indexed like [`Abstention::ALL`].
    abstained: [u64; Abstention::ALL.len()],
}

/// Alerts (plaintext, and encrypted) kept per session; the rest are only counted, so that
/// a peer sending alerts in a loop cannot grow the agent's memory.
pub const MAX_ALERTS_KEPT: usize = 8;

/// Field case 5's question: after how long does something on the path to a server forget
/// idle flows? Each server endpoint's idle gaps are kept in two sets, gaps that flows
/// survived and gaps after which they died; the timeout lies between the longest
/// survived and the shortest fatal gap, and is estimated as the latter.
#[derive(Default)]
pub struct TimeoutEstimator {
    servers: HashMap<SocketAddr, Gaps>,
}

#[derive(Default, Clone)]
struct Gaps {
    survived: u64,
    survived_max_ns: u64,
    died_min_ns: Option<u64>,
    flows: u64,
}

/// An estimate for one server endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeoutEstimate {
    pub seconds: f64,
    /// Flows whose idle gaps the estimate rests on.
    pub flows: u64,
}

/// Server endpoints tracked for timeout estimates; beyond this the quietest are dropped.
const MAX_ESTIMATED_SERVERS: usize = 4096;

impl TimeoutEstimator {
    fn survived(&mut self, server: SocketAddr, gap_ns: u64) {
        let g = self.entry(server);
        g.survived += 1;
        g.survived_max_ns = g.survived_max_ns.max(gap_ns);
        g.flows += 1;
    }

    fn died(&mut self, server: SocketAddr, gap_ns: u64) {
        let g = self.entry(server);
        g.died_min_ns = Some(g.died_min_ns.map_or(gap_ns, |d| d.min(gap_ns)));
        g.flows += 1;
    }

    fn entry(&mut self, server: SocketAddr) -> &mut Gaps {
        if !self.servers.contains_key(&server)
            && self.servers.len() >= MAX_ESTIMATED_SERVERS
            && let Some(k) = self
                .servers
                .iter()
                .min_by_key(|(_, g)| g.flows)
                .map(|(k, _)| *k)
        {
            self.servers.remove(&k);
        }
        self.servers.entry(server).or_default()
    }

    /// The estimate, once flows to the server have both survived idle gaps and died after
    /// a longer one: deaths alone (a server resetting idle clients itself, say) bound
    /// nothing about the path.
    pub fn estimate(&self, server: SocketAddr) -> Option<TimeoutEstimate> {
        let g = self.servers.get(&server)?;
        let died = g.died_min_ns?;
        (g.survived > 0 && died > g.survived_max_ns).then_some(TimeoutEstimate {
            seconds: died as f64 / 1e9,
            flows: g.flows,
        })
    }

    /// The `n` estimates resting on the most flows (metric labels stay bounded).
    pub fn top(&self, n: usize) -> Vec<(SocketAddr, TimeoutEstimate)> {
        let mut all: Vec<(SocketAddr, TimeoutEstimate)> = self
            .servers
            .keys()
            .filter_map(|s| self.estimate(*s).map(|e| (*s, e)))
            .collect();
        all.sort_by(|a, b| b.1.flows.cmp(&a.1.flows).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[derive(Default)]
struct Session {
    /// The kernel's first sighting of the flow: a different one on a later event means
    /// the 4-tuple now carries another connection.
    flow_first_seen_ns: u64,
    first_ns: u64,
    last_ns: u64,
    tls_port: bool,
    midstream: bool,
    sni: Option<String>,
    client_first: Option<PayloadClass>,
    client_bytes: Option<Bytes>,
    server_first: Option<PayloadClass>,
    server_bytes: Option<Bytes>,
    /// At most [`MAX_ALERTS_KEPT`]; `alerts_omitted` counts the rest.
    alerts: Vec<SeenAlert>,
    alerts_omitted: u32,
    /// Sender and record length, at most [`MAX_ALERTS_KEPT`]; the rest are counted.
    encrypted_alerts: Vec<(Side, u16)>,
    encrypted_alerts_omitted: u32,
    /// When the server's first plaintext HelloRequest came.
    hello_request_ns: Option<u64>,
    /// The first handshake record after application data, per side.
    renegotiation: [Option<Renegotiation>; 2],
    tls13_close: Option<Side>,
    aborted: Option<(Abort, Side, Option<Alert>)>,
    /// The first end after an idle gap: who, how long, and how.
    idle_end: Option<IdleEnd>,
    /// An idle resumption that went unanswered, or a flow first seen mid-stream.
    idle_drop: Option<(IdleDrop, Side, u64)>,
    /// The latest history and facts (later events know more).
    history: String,
    tls: TlsFacts,
    server_hello_seen: bool,
    /// Both sides sent application data after the ServerHello: see
    /// [`established_by_data`].
    established: bool,
}

/// The first bytes of a payload, and whether the payload went on beyond them.
struct Bytes {
    head: Vec<u8>,
    cut: bool,
}

impl Bytes {
    fn shown(&self) -> String {
        let s = show_bytes(&self.head);
        if self.cut { format!("{s}...") } else { s }
    }
}

#[derive(Clone, Copy)]
struct IdleEnd {
    sender: Side,
    gap_ns: u64,
    how: IdleHow,
    /// A FIN from the same side came with it (alert and FIN, as proxies close).
    fin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdleHow {
    Rst,
    Fin,
    EncryptedAlert(u16),
    Tls13Close,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdleDrop {
    /// Resumed after a gap, then retransmitted with no answer.
    Retransmission,
    /// Resumed after a gap and answered by a RST.
    RstAnswer,
    /// First seen mid-stream, then retransmitted with no answer.
    Midstream,
}

#[derive(Clone, Copy)]
struct Renegotiation {
    ts_ns: u64,
    /// Length of the record (0 for a plaintext ClientHello).
    record_len: u16,
    /// The other side had already started a renegotiation, so this one answers it.
    answering: bool,
}

#[derive(Clone, Copy)]
struct SeenAlert {
    sender: Side,
    alert: Alert,
    tcp_seq: u32,
}

impl Correlator {
    pub fn new(clock: Clock, window: Duration, max_sessions: usize) -> Correlator {
        Correlator {
            clock,
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            idle_ns: detector_common::DEFAULT_IDLE_THRESHOLD_NS,
            max_sessions: max_sessions.max(1),
            sessions: HashMap::new(),
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

    /// Whether the caller should look this event's SNI up in the kernel's map: only when
    /// the kernel says the flow's ClientHello carried one (else the map may still hold a
    /// previous connection's name under the same flow key), and the session of this very
    /// connection does not know it yet.
    pub fn wants_sni(&self, e: &KernelEvent) -> bool {
        e.tls.flags & tls_flags::SNI != 0
            && !self
                .sessions
                .get(&(e.client, e.server))
                .is_some_and(|s| s.flow_first_seen_ns == e.flow_first_seen_ns && s.sni.is_some())
    }

    /// Adds an event (with the SNI, if the caller found one); returns diagnoses of
    /// sessions it ended: one pushed out to make room, or the previous connection on a
    /// reused 4-tuple.
    pub fn ingest(&mut self, e: &KernelEvent, sni: Option<String>) -> Vec<Diagnosis> {
        let key = (e.client, e.server);
        let mut out = Vec::new();
        // The kernel restarted the flow (a new connection on the same 4-tuple, or the
        // flow evicted and picked up again): what the old session holds is judged now,
        // and nothing of it (its name above all) carries over to the new one.
        if self
            .sessions
            .get(&key)
            .is_some_and(|s| s.flow_first_seen_ns != e.flow_first_seen_ns)
        {
            let old = self.sessions.remove(&key).expect("key just found");
            out.extend(self.judge(key, old));
        }
        if !self.sessions.contains_key(&key) && self.sessions.len() >= self.max_sessions {
            // Judge the quietest session now rather than lose what it holds.
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_ns)
                .map(|(k, _)| *k)
            {
                let s = self.sessions.remove(&oldest).expect("key just found");
                self.evicted += 1;
                out.extend(self.judge(oldest, s));
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
        let s = self.sessions.entry(key).or_insert_with(|| Session {
            flow_first_seen_ns: e.flow_first_seen_ns,
            first_ns: e.ts_ns,
            ..Session::default()
        });
        let mut abstained = None;
        s.last_ns = s.last_ns.max(e.ts_ns);
        s.tls_port |= e.tls_port;
        s.midstream |= e.midstream_tls;
        if s.sni.is_none() {
            s.sni = sni;
        }
        if e.history.len() >= s.history.len() {
            s.history = e.history.clone();
        }
        s.tls = e.tls;
        s.server_hello_seen |= e.server_flags & dir_flags::HELLO != 0;
        s.established |= established_by_data(e);
        // Every event carries each side's first-payload class; keep the first real one.
        if e.client_first != PayloadClass::None {
            s.client_first.get_or_insert(e.client_first);
        }
        if e.server_first != PayloadClass::None {
            s.server_first.get_or_insert(e.server_first);
        }
        match e.kind {
            EventKind::ProtocolMismatch => {
                let slot = match e.sender {
                    Side::Client => &mut s.client_bytes,
                    Side::Server => &mut s.server_bytes,
                };
                slot.get_or_insert_with(|| Bytes {
                    head: e.snippet.clone(),
                    cut: e.payload_len as usize > e.snippet.len(),
                });
            }
            EventKind::PlaintextAlert => {
                if let Some(alert) = e.alert {
                    // A retransmitted alert is the same alert (among those kept: past the
                    // cap, a retransmission is counted again, which only inflates a count).
                    let dup = s
                        .alerts
                        .iter()
                        .any(|a| a.sender == e.sender && a.tcp_seq == e.tcp_seq);
                    if !dup && s.alerts.len() < MAX_ALERTS_KEPT {
                        s.alerts.push(SeenAlert {
                            sender: e.sender,
                            alert,
                            tcp_seq: e.tcp_seq,
                        });
                    } else if !dup {
                        s.alerts_omitted += 1;
                    }
                }
            }
            EventKind::EncryptedAlert => {
                if s.encrypted_alerts.len() < MAX_ALERTS_KEPT {
                    s.encrypted_alerts.push((e.sender, e.record_len));
                } else {
                    s.encrypted_alerts_omitted += 1;
                }
                if e.gap_ns >= idle_ns {
                    s.idle_end.get_or_insert(IdleEnd {
                        sender: e.sender,
                        gap_ns: e.gap_ns,
                        how: IdleHow::EncryptedAlert(e.record_len),
                        fin: false,
                    });
                }
            }
            EventKind::IdleFin => match &mut s.idle_end {
                Some(end) if end.sender == e.sender => end.fin = true,
                Some(_) => {}
                None if e.gap_ns >= idle_ns => {
                    s.idle_end = Some(IdleEnd {
                        sender: e.sender,
                        gap_ns: e.gap_ns,
                        how: IdleHow::Fin,
                        fin: true,
                    })
                }
                // A FIN behind an alert that came before any idle gap: an ordinary close.
                None => {}
            },
            EventKind::IdleRst => {
                s.idle_end.get_or_insert(IdleEnd {
                    sender: e.sender,
                    gap_ns: e.gap_ns,
                    how: IdleHow::Rst,
                    fin: false,
                });
            }
            EventKind::IdleRetransmit => {
                let how = if e.midstream && e.gap_ns == 0 {
                    IdleDrop::Midstream
                } else {
                    IdleDrop::Retransmission
                };
                s.idle_drop.get_or_insert((how, e.sender, e.gap_ns));
            }
            EventKind::IdleRstAnswer => {
                // The resumer is the RST's peer; the drop is told from its side.
                s.idle_drop
                    .get_or_insert((IdleDrop::RstAnswer, e.sender, e.gap_ns));
            }
            EventKind::IdleSurvived => self.timeouts.survived(e.server, e.gap_ns),
            EventKind::HelloRequest => {
                s.hello_request_ns.get_or_insert(e.ts_ns);
            }
            EventKind::Renegotiation => {
                // The kernel marks a side RENEGOTIATED when it reports that side's
                // renegotiation, and every event carries both sides' marks: if the other
                // side's is set, it started first and this side is answering. A plaintext
                // HelloRequest is not marked that way, so it counts here too.
                let other = match e.sender {
                    Side::Client => e.server_flags,
                    Side::Server => e.client_flags,
                };
                let answering = other & dir_flags::RENEGOTIATED != 0
                    || (e.sender == Side::Client && s.hello_request_ns.is_some());
                s.renegotiation[e.sender as usize].get_or_insert(Renegotiation {
                    ts_ns: e.ts_ns,
                    record_len: e.record_len,
                    answering,
                });
            }
            EventKind::Tls13CloseHeuristic => {
                s.tls13_close = Some(e.sender);
                if e.gap_ns >= idle_ns {
                    s.idle_end.get_or_insert(IdleEnd {
                        sender: e.sender,
                        gap_ns: e.gap_ns,
                        how: IdleHow::Tls13Close,
                        fin: true,
                    });
                }
            }
            EventKind::HandshakeAborted if established_by_data(e) => {
                abstained = Some(Abstention::EstablishedByData);
            }
            EventKind::HandshakeAborted => {
                if let Some(how) = e.abort {
                    s.aborted.get_or_insert((how, e.sender, e.alert));
                }
            }
        }
        if let Some(reason) = abstained {
            self.abstain(reason);
        }
        out
    }

    /// Judges sessions quiet for longer than the window at program time `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Diagnosis> {
        let window = self.window_ns;
        let done: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.last_ns) >= window)
            .map(|(k, _)| *k)
            .collect();
        self.take(done)
    }

    /// Judges every open session (end of a replay, shutdown).
    pub fn flush(&mut self) -> Vec<Diagnosis> {
        let all: Vec<SessionKey> = self.sessions.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, keys: Vec<SessionKey>) -> Vec<Diagnosis> {
        let mut sessions: Vec<(SessionKey, Session)> = keys
            .into_iter()
            .filter_map(|k| self.sessions.remove(&k).map(|s| (k, s)))
            .collect();
        // Output in time order, whatever order the hash map holds them in.
        sessions.sort_by_key(|(k, s)| (s.first_ns, *k));
        let mut out = Vec::new();
        for (k, s) in sessions {
            out.extend(self.judge(k, s));
        }
        out
    }

    fn judge(&mut self, (client, server): SessionKey, s: Session) -> Vec<Diagnosis> {
        let mut found: Vec<Found> = Vec::new();
        if let Err(reason) = renegotiation(&s, &mut found) {
            self.abstain(reason);
        }
        found.extend(idle(&s, self.idle_ns, self.timeouts.estimate(server)));
        // A protocol mismatch is the root cause of whatever ended the session after it
        // (nginx's 400 and close, OpenSSL's alert): those are evidence, not diagnoses.
        if let Some(d) = protocol_mismatch(&s, server) {
            found.push(d);
        } else if let Some(d) = aborted_handshake(&s) {
            let explains_alerts = d.0 == Kind::ResumptionRejected;
            found.push(d);
            if !explains_alerts {
                found.extend(fatal_alert(&s));
            }
        } else {
            found.extend(fatal_alert(&s));
        }
        found
            .into_iter()
            .map(|(kind, evidence, mut detail)| {
                if !s.history.is_empty() {
                    detail.insert("ssl_history".into(), json!(s.history));
                }
                if let Some(v) = s.tls.negotiated_version {
                    detail.insert("tls_version".into(), json!(version_name(v)));
                }
                if s.midstream {
                    detail.insert("midstream".into(), json!(true));
                }
                if s.alerts_omitted > 0 {
                    detail.insert("alerts_omitted".into(), json!(s.alerts_omitted));
                }
                if s.encrypted_alerts_omitted > 0 {
                    detail.insert(
                        "encrypted_alerts_omitted".into(),
                        json!(s.encrypted_alerts_omitted),
                    );
                }
                Diagnosis {
                    ts: self.clock.to_wall(s.first_ns),
                    kind,
                    client,
                    server,
                    sni: s.sni.clone(),
                    evidence,
                    detail,
                }
            })
            .collect()
    }
}

type Found = (Kind, Vec<String>, Map<String, Value>);

/// Application data (type 23) from both sides after a ServerHello: the handshake finished
/// as far as the packets show, whatever the version code, so no later end of the session
/// is a failed handshake.
fn established_by_data(e: &KernelEvent) -> bool {
    e.client_flags & dir_flags::APPDATA != 0
        && e.server_flags & dir_flags::APPDATA != 0
        && e.server_flags & dir_flags::HELLO != 0
}

/// Field case 3: plaintext HTTP where TLS is expected, or a ClientHello to a plaintext
/// server.
fn protocol_mismatch(s: &Session, server: SocketAddr) -> Option<Found> {
    let server_alerts: Vec<&SeenAlert> = s
        .alerts
        .iter()
        .filter(|a| a.sender == Side::Server)
        .collect();
    match (s.client_first, s.server_first) {
        (Some(PayloadClass::HttpRequest), answer)
            if s.tls_port || answer.is_some_and(PayloadClass::is_tls) =>
        {
            let mut evidence = vec![format!(
                "client's first payload {}is an HTTP request{}",
                s.client_bytes
                    .as_ref()
                    .map(|b| format!("{} ", b.shown()))
                    .unwrap_or_default(),
                if s.tls_port {
                    format!(" to TLS port {}", server.port())
                } else {
                    String::new()
                }
            )];
            let answer_word = match answer {
                Some(c) if c.is_tls() && !server_alerts.is_empty() => "tls_alert",
                Some(c) if c.is_tls() => "tls",
                Some(PayloadClass::HttpResponse) => "http",
                Some(PayloadClass::None) | None => "none_seen",
                Some(_) => "other",
            };
            match (answer, &s.server_bytes) {
                (Some(c), Some(b)) if c != PayloadClass::None => evidence.push(format!(
                    "server answered {} {}",
                    if c.is_tls() { "in TLS:" } else { "with" },
                    b.shown()
                )),
                _ => evidence.push("no answer from the server seen".into()),
            }
            for a in &server_alerts {
                evidence.push(format!(
                    "server sent plaintext alert {} {} (how analyzers show 'HTTP continuation')",
                    alert::level_name(a.alert.level),
                    alert::description_name(a.alert.description)
                ));
            }
            let mut detail = Map::new();
            detail.insert("sender".into(), json!("client"));
            detail.insert("tls_port".into(), json!(s.tls_port));
            detail.insert("server_answer".into(), json!(answer_word));
            if let Some(b) = &s.client_bytes {
                detail.insert("client_bytes".into(), json!(hex(&b.head)));
            }
            if let Some(b) = &s.server_bytes {
                detail.insert("server_bytes".into(), json!(hex(&b.head)));
            }
            detail.insert("alerts".into(), alerts_json(&s.alerts));
            Some((Kind::HttpToTlsPort, evidence, detail))
        }
        // Any answer to a ClientHello whose first bytes cannot start a TLS record: the
        // kernel classes it as an HTTP status line or as something else. "Something else"
        // is only diagnosed with the server's bytes in hand (the mismatch event), since
        // they are the evidence.
        (
            Some(PayloadClass::ClientHello),
            Some(class @ (PayloadClass::HttpResponse | PayloadClass::Other)),
        ) if class == PayloadClass::HttpResponse || s.server_bytes.is_some() => {
            let answer = match &s.server_bytes {
                Some(b) => PlaintextAnswer::of(&b.head),
                None => PlaintextAnswer::Http,
            };
            let shown = s
                .server_bytes
                .as_ref()
                .map(Bytes::shown)
                .unwrap_or_default();
            let evidence = vec![
                format!(
                    "client's first payload is a TLS ClientHello (record type 22, handshake \
                     type 1) to port {}",
                    server.port()
                ),
                format!("server answered {}: {shown}", answer.words()),
            ];
            let mut detail = Map::new();
            detail.insert("sender".into(), json!("server"));
            detail.insert("answer".into(), json!(answer.as_str()));
            if let Some(b) = &s.server_bytes {
                detail.insert("server_bytes".into(), json!(hex(&b.head)));
            }
            Some((Kind::TlsToPlaintextPort, evidence, detail))
        }
        _ => None,
    }
}

/// What a plaintext server sent back to a ClientHello, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlaintextAnswer {
    /// An HTTP status line (`HTTP/1.1 400 Bad Request`).
    Http,
    /// An HTML page with no status line (Python's `http.server` error page, `<!DOCTYPE`).
    Html,
    /// A printable text line: the greeting of a line protocol (`220 smtp ready`,
    /// `SSH-2.0-OpenSSH`, `+OK`, `* OK`).
    Banner,
    Other,
}

impl PlaintextAnswer {
    fn of(head: &[u8]) -> PlaintextAnswer {
        if head.starts_with(b"HTTP/") {
            return PlaintextAnswer::Http;
        }
        let text = head.trim_ascii_start();
        if text.starts_with(b"<") {
            return PlaintextAnswer::Html;
        }
        // The first line (or as much of it as the snippet holds) must be printable ASCII
        // and start with a visible character; a few bytes are too little to call a line.
        let line = head
            .split(|&c| c == b'\r' || c == b'\n')
            .next()
            .unwrap_or_default();
        let printable = line.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
        if line.len() >= 3 && printable && line[0].is_ascii_graphic() {
            return PlaintextAnswer::Banner;
        }
        PlaintextAnswer::Other
    }

    fn as_str(self) -> &'static str {
        match self {
            PlaintextAnswer::Http => "http",
            PlaintextAnswer::Html => "html",
            PlaintextAnswer::Banner => "banner",
            PlaintextAnswer::Other => "other",
        }
    }

    fn words(self) -> &'static str {
        match self {
            PlaintextAnswer::Http => "in plaintext HTTP",
            PlaintextAnswer::Html => "with an HTML page and no HTTP status line",
            PlaintextAnswer::Banner => "with a plaintext protocol banner",
            PlaintextAnswer::Other => "with bytes that cannot start a TLS record",
        }
    }
}

/// Field case 1: who started a renegotiation. Attribution follows who sent the first
/// handshake record after application data (a plaintext HelloRequest is the server's);
/// the other side's handshake records are its answer, told in the same diagnosis, never a
/// second one. Errs with the abstention when the session holds only an answer, whose
/// start was judged with an earlier window or lost.
fn renegotiation(s: &Session, found: &mut Vec<Found>) -> Result<(), Abstention> {
    let server = s.renegotiation[Side::Server as usize];
    let client = s.renegotiation[Side::Client as usize];
    if server.is_none() && client.is_none() && s.hello_request_ns.is_none() {
        return Ok(());
    }
    let start = |r: Option<Renegotiation>| r.filter(|r| !r.answering).map(|r| r.ts_ns);
    let server_start = match (s.hello_request_ns, start(server)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let initiator = match (server_start, start(client)) {
        (Some(sv), Some(cl)) if cl < sv => Side::Client,
        (Some(_), _) => Side::Server,
        (None, Some(_)) => Side::Client,
        (None, None) => return Err(Abstention::RenegotiationAnswerOnly),
    };
    let record = |side: &str, r: Renegotiation| {
        if r.record_len == 0 {
            format!("a plaintext {side}")
        } else {
            format!("an encrypted handshake record ({} bytes)", r.record_len)
        }
    };
    let mut evidence = Vec::new();
    let mut detail = Map::new();
    detail.insert("sender".into(), json!(side_name(initiator)));
    let kind = match initiator {
        Side::Server => {
            if s.hello_request_ns.is_some() {
                evidence.push(
                    "server sent a plaintext HelloRequest (handshake type 0, empty body: \
                     16 03 0x 00 04 00 00 00 00)"
                        .to_string(),
                );
            }
            if let Some(r) = server.filter(|r| !r.answering) {
                evidence.push(format!(
                    "server sent {} after application data had flowed, before any from the \
                     client: a HelloRequest (TLS 1.2 renegotiation request)",
                    record("HelloRequest", r)
                ));
            }
            if let Some(r) = client {
                evidence.push(format!(
                    "client answered with a renegotiation handshake: {}",
                    record("ClientHello", r)
                ));
            }
            detail.insert("encrypted".into(), json!(s.hello_request_ns.is_none()));
            detail.insert("client_renegotiated".into(), json!(client.is_some()));
            Kind::ServerHelloRequest
        }
        Side::Client => {
            let r = client.expect("the client started it");
            evidence.push(format!(
                "client sent {} after application data had flowed, before any from the \
                 server: client-initiated renegotiation (TLS 1.2 or older)",
                record("ClientHello", r)
            ));
            if let Some(answer) = server {
                evidence.push(format!(
                    "server answered with {}",
                    record("handshake record", answer)
                ));
            }
            detail.insert("encrypted".into(), json!(r.record_len != 0));
            detail.insert("server_answered".into(), json!(server.is_some()));
            Kind::ClientRenegotiation
        }
    };
    for (side, len) in &s.encrypted_alerts {
        evidence.push(format!(
            "{} then sent an encrypted alert ({len} bytes)",
            side_name(*side)
        ));
    }
    if s.encrypted_alerts_omitted > 0 {
        evidence.push(format!(
            "and {} more encrypted alerts",
            s.encrypted_alerts_omitted
        ));
    }
    found.push((kind, evidence, detail));
    Ok(())
}

/// Field case 2 and handshake failures: a handshake that ended before it finished.
fn aborted_handshake(s: &Session) -> Option<Found> {
    let (how, sender, alert) = s.aborted?;
    let killed_by = match (how, alert) {
        (Abort::Alert, Some(a)) => format!(
            "a fatal alert {} from the {}",
            alert::description_name(a.description),
            side_name(sender)
        ),
        _ => format!(
            "{} from the {}",
            how.as_str().to_uppercase(),
            side_name(sender)
        ),
    };
    let mut detail = Map::new();
    detail.insert("sender".into(), json!(side_name(sender)));
    detail.insert("ended_by".into(), json!(how.as_str()));
    if let Some(a) = alert {
        detail.insert(
            "description".into(),
            json!(alert::description_name(a.description)),
        );
        detail.insert("code".into(), json!(a.description));
    }
    detail.insert("server_hello_seen".into(), json!(s.server_hello_seen));
    detail.insert("offered_versions".into(), json!(s.tls.offered()));
    if let Some(method) = s.tls.resumption_offered() {
        let accepted = s.tls.resumption_accepted();
        let mut evidence = vec![format!(
            "client offered to resume a cached session ({})",
            method_words(method, &s.tls)
        )];
        evidence.push(if !s.server_hello_seen {
            "no ServerHello came back".into()
        } else if accepted {
            "the server accepted the resumption (echoed the session / abbreviated handshake)".into()
        } else {
            "the server did not accept it (full handshake)".into()
        });
        evidence.push(format!(
            "the handshake was ended by {killed_by} before it finished"
        ));
        detail.insert("method".into(), json!(method));
        detail.insert("accepted".into(), json!(accepted));
        return Some((Kind::ResumptionRejected, evidence, detail));
    }
    match how {
        // A plaintext fatal alert is diagnosed as fatal_alert, with the abort as context.
        Abort::Alert => None,
        Abort::Rst | Abort::Fin => {
            let evidence = vec![format!(
                "the handshake was ended by {killed_by} after the ClientHello, {}",
                if s.server_hello_seen {
                    "after the ServerHello but before the handshake finished"
                } else {
                    "with no ServerHello"
                }
            )];
            Some((Kind::HandshakeReset, evidence, detail))
        }
    }
}

/// Field cases 4 and 5: what ended, or dropped, a flow after it had been idle.
fn idle(s: &Session, idle_ns: u64, estimate: Option<TimeoutEstimate>) -> Option<Found> {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut detail = Map::new();
    detail.insert("idle_threshold_s".into(), json!(secs(idle_ns)));
    if let Some(est) = estimate {
        detail.insert("inferred_idle_timeout_s".into(), json!(est.seconds));
        detail.insert("inferred_from_flows".into(), json!(est.flows));
    }
    let inferred = estimate
        .map(|e| {
            format!(
                "; idle timeout on the path to this server estimated at {:.1} s from {} flows",
                e.seconds, e.flows
            )
        })
        .unwrap_or_default();
    if let Some((how, side, gap)) = s.idle_drop {
        let mut evidence = vec![match how {
            IdleDrop::Retransmission => format!(
                "{} resumed after {:.1} s idle and retransmitted with no answer: something on \
                 the path forgot the flow{inferred}",
                side_name(side),
                secs(gap)
            ),
            IdleDrop::RstAnswer => format!(
                "the flow resumed after {:.1} s idle and the {} answered with a RST: the peer \
                 or something on the path forgot the flow{inferred}",
                secs(gap),
                side_name(side)
            ),
            IdleDrop::Midstream => format!(
                "flow first seen mid-stream (no handshake) after the detector had run longer \
                 than the idle threshold, and the {} retransmitted with no answer: the path \
                 lost its state or sent its start elsewhere",
                side_name(side)
            ),
        }];
        if let Some(end) = s.idle_end.filter(|e| e.how == IdleHow::Rst) {
            evidence.push(format!("then a RST from the {}", side_name(end.sender)));
        }
        detail.insert("sender".into(), json!(side_name(side)));
        detail.insert(
            "how".into(),
            json!(match how {
                IdleDrop::Retransmission => "unanswered_retransmission",
                IdleDrop::RstAnswer => "rst_answer",
                IdleDrop::Midstream => "midstream_unanswered_retransmission",
            }),
        );
        if how != IdleDrop::Midstream {
            detail.insert("gap_s".into(), json!(secs(gap)));
        }
        return Some((Kind::IdleTimeoutDrop, evidence, detail));
    }
    let end = s.idle_end?;
    let who = side_name(end.sender);
    let gap = secs(end.gap_ns);
    detail.insert("sender".into(), json!(who));
    detail.insert("gap_s".into(), json!(gap));
    let (kind, how, words) = match end.how {
        IdleHow::Rst => (
            Kind::RstAfterIdle,
            "rst",
            format!("{who} sent RST after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::Fin => (
            Kind::IdleClose,
            "fin",
            format!("{who} closed (FIN, no alert) after the flow was idle for {gap:.1} s"),
        ),
        IdleHow::EncryptedAlert(len) => (
            Kind::IdleClose,
            "encrypted_alert",
            format!(
                "{who} sent an encrypted alert ({len} bytes; after idle, a close_notify){} \
                 after the flow was idle for {gap:.1} s",
                if end.fin { " with FIN" } else { "" }
            ),
        ),
        IdleHow::Tls13Close => (
            Kind::IdleClose,
            "tls13_close_heuristic",
            format!(
                "{who} sent a short final TLS 1.3 record (close_notify sized, a heuristic) and \
                 closed after the flow was idle for {gap:.1} s"
            ),
        ),
    };
    detail.insert("how".into(), json!(how));
    Some((kind, vec![format!("{words}{inferred}")], detail))
}

fn method_words(method: &str, tls: &TlsFacts) -> String {
    match method {
        "tls13_psk" => "TLS 1.3 pre_shared_key extension".into(),
        "tls12_session_ticket" => format!(
            "TLS 1.2 session_ticket extension, {} bytes",
            tls.session_ticket_len
        ),
        _ => format!("TLS 1.2 session ID, {} bytes", tls.session_id_len),
    }
}

/// A plaintext fatal alert not explained by a protocol mismatch or a rejected resumption.
fn fatal_alert(s: &Session) -> Option<Found> {
    let fatal: Vec<&SeenAlert> = s.alerts.iter().filter(|a| a.alert.level == 2).collect();
    let first = fatal.first()?;
    let mut evidence: Vec<String> = fatal
        .iter()
        .map(|a| {
            format!(
                "{} sent plaintext alert record 15 03 xx 00 02 {:02x} {:02x}: {} {} ({})",
                side_name(a.sender),
                a.alert.level,
                a.alert.description,
                alert::level_name(a.alert.level),
                alert::description_name(a.alert.description),
                a.alert.description
            )
        })
        .collect();
    if s.alerts_omitted > 0 {
        evidence.push(format!("and {} more alerts", s.alerts_omitted));
    }
    if s.aborted.is_some() {
        evidence.push("the handshake had not finished".into());
    }
    let mut detail = Map::new();
    detail.insert("sender".into(), json!(side_name(first.sender)));
    detail.insert("level".into(), json!(alert::level_name(first.alert.level)));
    detail.insert(
        "description".into(),
        json!(alert::description_name(first.alert.description)),
    );
    detail.insert("code".into(), json!(first.alert.description));
    detail.insert(
        "during_handshake".into(),
        json!(!s.tls.handshake_done() && !s.established),
    );
    detail.insert("alerts".into(), alerts_json(&s.alerts));
    Some((Kind::FatalAlert, evidence, detail))
}

fn alerts_json(alerts: &[SeenAlert]) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                json!({
                    "sender": side_name(a.sender),
                    "level": alert::level_name(a.alert.level),
                    "description": alert::description_name(a.alert.description),
                    "code": a.alert.description,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use detector_common::tls_flags;

    use super::*;

    fn event(kind: EventKind, sender: Side) -> KernelEvent {
        KernelEvent {
            kind,
            ts_ns: 1_000,
            flow_first_seen_ns: 0,
            gap_ns: 0,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:443".parse().unwrap(),
            sender,
            alert: None,
            abort: None,
            client_first: PayloadClass::None,
            server_first: PayloadClass::None,
            handshake_seen: true,
            tls_port: true,
            midstream_tls: false,
            midstream: false,
            record_len: 0,
            snippet: vec![],
            tcp_seq: 1,
            payload_len: 0,
            history: String::new(),
            client_flags: 0,
            server_flags: 0,
            tls: TlsFacts::default(),
        }
    }

    fn correlator() -> Correlator {
        Correlator::new(Clock::Capture, Duration::from_secs(1), 16)
    }

    fn alert(level: u8, description: u8) -> Option<Alert> {
        Some(Alert { level, description })
    }

    #[test]
    fn http_request_and_server_alert_make_one_diagnosis() {
        let mut c = correlator();
        let mut req = event(EventKind::ProtocolMismatch, Side::Client);
        req.client_first = PayloadClass::HttpRequest;
        req.snippet = b"GET / HTTP/1.1\r\nHo".to_vec();
        req.payload_len = 40;
        let mut answer = event(EventKind::ProtocolMismatch, Side::Server);
        answer.ts_ns = 2_000;
        answer.client_first = PayloadClass::HttpRequest;
        answer.server_first = PayloadClass::TlsRecord;
        answer.snippet = vec![0x15, 3, 1, 0, 2, 2, 10];
        let mut a = answer.clone();
        a.kind = EventKind::PlaintextAlert;
        a.alert = alert(2, 10);
        for e in [&req, &answer, &a] {
            assert!(c.ingest(e, None).is_empty());
        }
        assert!(
            c.expire(2_000 + 999_999_999).is_empty(),
            "window not over yet"
        );
        let d = c.expire(2_000 + 1_000_000_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::HttpToTlsPort);
        assert_eq!(d[0].detail["server_answer"], "tls_alert");
        let ev = d[0].evidence.join("; ");
        assert!(ev.contains("'GET / HTTP/1.1'..."), "{ev}");
        assert!(ev.contains("fatal unexpected_message"), "{ev}");
        assert_eq!(c.open_sessions(), 0);
    }

    #[test]
    fn lone_fatal_alert_names_sender_and_description() {
        let mut c = correlator();
        let mut a = event(EventKind::PlaintextAlert, Side::Client);
        a.alert = alert(2, 48);
        a.history = "CsxknL".into();
        c.ingest(&a, Some("example.org".into()));
        c.ingest(&a, None); // retransmission
        let d = c.flush();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::FatalAlert);
        assert_eq!(d[0].detail["sender"], "client");
        assert_eq!(d[0].detail["description"], "unknown_ca");
        assert_eq!(d[0].detail["ssl_history"], "CsxknL");
        assert_eq!(d[0].sni.as_deref(), Some("example.org"));
        assert_eq!(d[0].detail["alerts"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn warning_alert_alone_is_no_diagnosis() {
        let mut c = correlator();
        let mut a = event(EventKind::PlaintextAlert, Side::Server);
        a.alert = alert(1, 0);
        c.ingest(&a, None);
        assert!(c.flush().is_empty());
    }

    #[test]
    fn resumption_killed_by_alert_is_one_resumption_rejected() {
        let mut c = correlator();
        let tls = TlsFacts {
            offered_versions: 1 << 3,
            session_ticket_len: 160,
            ..TlsFacts::default()
        };
        let mut a = event(EventKind::PlaintextAlert, Side::Server);
        a.alert = alert(2, 40);
        a.tls = tls;
        let mut ab = a.clone();
        ab.kind = EventKind::HandshakeAborted;
        ab.abort = Some(Abort::Alert);
        c.ingest(&a, None);
        c.ingest(&ab, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::ResumptionRejected);
        assert_eq!(d[0].detail["method"], "tls12_session_ticket");
        assert_eq!(d[0].detail["accepted"], false);
        assert_eq!(d[0].detail["description"], "handshake_failure");
        assert_eq!(d[0].detail["sender"], "server");
    }

    #[test]
    fn reset_after_client_hello_is_handshake_reset() {
        let mut c = correlator();
        let mut ab = event(EventKind::HandshakeAborted, Side::Server);
        ab.abort = Some(Abort::Rst);
        c.ingest(&ab, None);
        let d = c.flush();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::HandshakeReset);
        assert_eq!(d[0].detail["server_hello_seen"], false);
    }

    #[test]
    fn client_answer_to_hello_request_is_not_client_renegotiation() {
        let mut c = correlator();
        // As the kernel reports them: each side's mark is set with its own report.
        let mut s = event(EventKind::Renegotiation, Side::Server);
        s.record_len = 32;
        s.server_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
        let mut cl = event(EventKind::Renegotiation, Side::Client);
        cl.ts_ns = 2_000;
        cl.record_len = 300;
        cl.server_flags = s.server_flags;
        cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
        c.ingest(&s, None);
        c.ingest(&cl, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::ServerHelloRequest);
        assert_eq!(d[0].detail["sender"], "server");
        assert_eq!(d[0].detail["client_renegotiated"], true);
        assert_eq!(d[0].detail["encrypted"], true);
    }

    #[test]
    fn client_answer_to_plaintext_hello_request_is_one_server_hello_request() {
        let mut c = correlator();
        let hr = event(EventKind::HelloRequest, Side::Server);
        // A plaintext HelloRequest does not mark the server as renegotiated.
        let mut cl = event(EventKind::Renegotiation, Side::Client);
        cl.ts_ns = 2_000;
        cl.record_len = 300;
        cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
        c.ingest(&hr, None);
        c.ingest(&cl, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::ServerHelloRequest);
        assert_eq!(d[0].detail["encrypted"], false);
        assert_eq!(d[0].detail["client_renegotiated"], true);
    }

    #[test]
    fn server_answer_to_client_renegotiation_is_not_a_hello_request() {
        // openssl s_client's `R`: the client's handshake record comes first, the server's
        // records answer it.
        let mut c = correlator();
        let mut cl = event(EventKind::Renegotiation, Side::Client);
        cl.record_len = 300;
        cl.client_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
        cl.server_flags = dir_flags::APPDATA;
        let mut sv = event(EventKind::Renegotiation, Side::Server);
        sv.ts_ns = 2_000;
        sv.record_len = 1200;
        sv.client_flags = cl.client_flags;
        sv.server_flags = dir_flags::APPDATA | dir_flags::RENEGOTIATED;
        c.ingest(&cl, None);
        c.ingest(&sv, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::ClientRenegotiation);
        assert_eq!(d[0].detail["sender"], "client");
        assert_eq!(d[0].detail["server_answered"], true);
        assert_eq!(c.abstained(Abstention::RenegotiationAnswerOnly), 0);
    }

    #[test]
    fn marks_decide_the_initiator_even_out_of_order() {
        // The server's answer delivered first (its timestamp earlier, say from another
        // CPU's clock): the marks still say the client started.
        let mut c = correlator();
        let mut sv = event(EventKind::Renegotiation, Side::Server);
        sv.record_len = 1200;
        sv.client_flags = dir_flags::RENEGOTIATED;
        sv.server_flags = dir_flags::RENEGOTIATED;
        let mut cl = event(EventKind::Renegotiation, Side::Client);
        cl.ts_ns = 2_000;
        cl.record_len = 300;
        cl.client_flags = dir_flags::RENEGOTIATED;
        c.ingest(&sv, None);
        c.ingest(&cl, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::ClientRenegotiation);
    }

    #[test]
    fn a_renegotiation_answer_alone_is_an_abstention() {
        let mut c = correlator();
        let mut sv = event(EventKind::Renegotiation, Side::Server);
        sv.record_len = 1200;
        sv.client_flags = dir_flags::RENEGOTIATED;
        c.ingest(&sv, None);
        assert!(c.flush().is_empty());
        assert_eq!(c.abstained(Abstention::RenegotiationAnswerOnly), 1);
    }

    #[test]
    fn client_initiated_renegotiation() {
        let mut c = correlator();
        let mut cl = event(EventKind::Renegotiation, Side::Client);
        cl.record_len = 300;
        cl.tls.flags = tls_flags::HANDSHAKE_DONE;
        c.ingest(&cl, None);
        let d = c.flush();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::ClientRenegotiation);
    }

    #[test]
    fn full_table_judges_the_quietest_session_instead_of_losing_it() {
        let mut c = Correlator::new(Clock::Capture, Duration::from_secs(1), 1);
        let mut a = event(EventKind::PlaintextAlert, Side::Server);
        a.alert = alert(2, 40);
        c.ingest(&a, None);
        let mut b = a.clone();
        b.client = "10.0.0.9:1".parse().unwrap();
        let pushed = c.ingest(&b, None);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].client, a.client);
        assert_eq!(c.evicted(), 1);
    }

    #[test]
    fn plaintext_answers_are_told_apart() {
        use PlaintextAnswer::*;
        for (bytes, want) in [
            (&b"HTTP/1.0 400 Bad "[..], Http),
            (b"<!DOCTYPE HTML>\n<", Html),
            (b"<html><head>", Html),
            (b"\r\n  <HTML>", Html),
            (b"220 smtp ready\r\n", Banner),
            (b"SSH-2.0-OpenSSH_9", Banner),
            (b"+OK POP3\r\n", Banner),
            (b"* OK IMAP4rev1 ", Banner),
            (b"\x00\x01\x02\x03", Other),
            (b"ok\x80\x81", Other),
            (b"+O", Other),
            (b"", Other),
        ] {
            assert_eq!(PlaintextAnswer::of(bytes), want, "{bytes:?}");
        }
    }

    /// A ClientHello answered by `answer` (the server's first bytes, classed by the
    /// kernel as `class`), then the server's FIN ending the handshake.
    fn client_hello_answered(class: PayloadClass, answer: &[u8]) -> Vec<Diagnosis> {
        let mut c = correlator();
        let mut mismatch = event(EventKind::ProtocolMismatch, Side::Server);
        mismatch.tls_port = false;
        mismatch.client_first = PayloadClass::ClientHello;
        mismatch.server_first = class;
        mismatch.snippet = answer.to_vec();
        mismatch.payload_len = 200;
        let mut end = mismatch.clone();
        end.kind = EventKind::HandshakeAborted;
        end.abort = Some(Abort::Fin);
        end.snippet.clear();
        end.ts_ns = 2_000;
        c.ingest(&mismatch, None);
        c.ingest(&end, None);
        c.flush()
    }

    #[test]
    fn client_hello_answered_in_plaintext_is_tls_to_plaintext_port() {
        for (class, bytes, answer) in [
            (
                PayloadClass::HttpResponse,
                &b"HTTP/1.1 400 Bad "[..],
                "http",
            ),
            (PayloadClass::Other, b"<!DOCTYPE HTML PU", "html"),
            (PayloadClass::Other, b"220 smtp ready\r\n", "banner"),
            (PayloadClass::Other, b"SSH-2.0-OpenSSH_9", "banner"),
            (PayloadClass::Other, b"\x00\x00\x00\x01\xff", "other"),
        ] {
            let d = client_hello_answered(class, bytes);
            assert_eq!(d.len(), 1, "{answer}: {d:?}");
            assert_eq!(d[0].kind, Kind::TlsToPlaintextPort, "{answer}");
            assert_eq!(d[0].detail["answer"], answer);
            assert_eq!(d[0].detail["server_bytes"], hex(bytes));
            assert_eq!(d[0].detail["sender"], "server");
        }
    }

    #[test]
    fn unexplained_other_answer_without_its_bytes_is_no_mismatch() {
        // The server's first payload was classed "other" but its bytes never arrived:
        // no evidence of a plaintext server, so the abort is judged as it is.
        let mut c = correlator();
        let mut end = event(EventKind::HandshakeAborted, Side::Server);
        end.abort = Some(Abort::Rst);
        end.client_first = PayloadClass::ClientHello;
        end.server_first = PayloadClass::Other;
        c.ingest(&end, None);
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::HandshakeReset);
    }

    #[test]
    fn alerts_are_capped_with_a_count_of_the_rest() {
        let mut c = correlator();
        for i in 0..20 {
            let mut a = event(EventKind::PlaintextAlert, Side::Server);
            a.alert = alert(2, 40);
            a.tcp_seq = 1000 + i;
            c.ingest(&a, None);
            let mut enc = event(EventKind::EncryptedAlert, Side::Client);
            enc.record_len = 26;
            enc.tcp_seq = 5000 + i;
            c.ingest(&enc, None);
        }
        let mut hr = event(EventKind::HelloRequest, Side::Server);
        hr.ts_ns = 3_000;
        c.ingest(&hr, None);
        let d = c.flush();
        let fatal = d.iter().find(|d| d.kind == Kind::FatalAlert).unwrap();
        assert_eq!(
            fatal.detail["alerts"].as_array().unwrap().len(),
            MAX_ALERTS_KEPT
        );
        assert_eq!(fatal.detail["alerts_omitted"], 20 - MAX_ALERTS_KEPT);
        assert_eq!(
            fatal.detail["encrypted_alerts_omitted"],
            20 - MAX_ALERTS_KEPT
        );
        let hello = d
            .iter()
            .find(|d| d.kind == Kind::ServerHelloRequest)
            .unwrap();
        assert!(
            hello
                .evidence
                .join("; ")
                .contains("and 12 more encrypted alerts")
        );
    }

    #[test]
    fn sni_is_asked_for_only_when_the_flow_has_one() {
        let mut c = correlator();
        let mut e = event(EventKind::PlaintextAlert, Side::Server);
        e.alert = alert(2, 40);
        assert!(!c.wants_sni(&e), "no SNI flag, no lookup");
        e.tls.flags = tls_flags::SNI;
        assert!(c.wants_sni(&e));
        c.ingest(&e, Some("a.example".into()));
        assert!(!c.wants_sni(&e), "already known");
        let mut next = e.clone();
        next.flow_first_seen_ns = 7;
        assert!(c.wants_sni(&next), "another connection on the same 4-tuple");
    }

    #[test]
    fn reused_four_tuple_judges_the_old_connection_and_forgets_its_name() {
        let mut c = correlator();
        let mut old = event(EventKind::PlaintextAlert, Side::Client);
        old.alert = alert(2, 48);
        old.flow_first_seen_ns = 100;
        old.tls.flags = tls_flags::SNI;
        assert!(c.ingest(&old, Some("old.example".into())).is_empty());
        let mut new = event(EventKind::HandshakeAborted, Side::Server);
        new.abort = Some(Abort::Rst);
        new.flow_first_seen_ns = 5_000;
        new.ts_ns = 6_000;
        let judged = c.ingest(&new, None);
        assert_eq!(judged.len(), 1, "{judged:?}");
        assert_eq!(judged[0].kind, Kind::FatalAlert);
        assert_eq!(judged[0].sni.as_deref(), Some("old.example"));
        let d = c.flush();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, Kind::HandshakeReset);
        assert_eq!(d[0].sni, None);
        assert!(
            d[0].detail
                .get("alerts")
                .is_none_or(|a| a.as_array().is_some_and(|a| a.is_empty()))
        );
    }

    #[test]
    fn data_from_both_sides_means_established_whatever_the_version() {
        // A TLS 1.3 draft version code the kernel does not know: its ordinary close, and
        // an accepted PSK resumption's, must not read as failed handshakes.
        for psk in [false, true] {
            let mut c = correlator();
            let mut end = event(EventKind::HandshakeAborted, Side::Client);
            end.abort = Some(Abort::Fin);
            end.tls.negotiated_version = Some(0x7f17);
            if psk {
                end.tls.flags = tls_flags::PSK_OFFERED | tls_flags::PSK_ACCEPTED;
            }
            end.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
            end.server_flags = dir_flags::HELLO | dir_flags::APPDATA;
            c.ingest(&end, None);
            assert!(c.flush().is_empty(), "psk {psk}");
            assert_eq!(c.abstained(Abstention::EstablishedByData), 1);
        }
        // Data from one side only is no such evidence.
        let mut c = correlator();
        let mut end = event(EventKind::HandshakeAborted, Side::Server);
        end.abort = Some(Abort::Rst);
        end.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
        end.server_flags = dir_flags::HELLO;
        c.ingest(&end, None);
        assert_eq!(c.flush()[0].kind, Kind::HandshakeReset);
        assert_eq!(c.abstained(Abstention::EstablishedByData), 0);
    }

    #[test]
    fn unknown_version_is_shown_as_hex_and_data_both_ways_is_established() {
        let mut c = correlator();
        let mut a = event(EventKind::PlaintextAlert, Side::Server);
        a.alert = alert(2, 40);
        a.tls.negotiated_version = Some(0x7f17);
        c.ingest(&a, None);
        let d = c.flush();
        assert_eq!(d[0].detail["tls_version"], "0x7f17");
        assert_eq!(d[0].detail["during_handshake"], true);
        a.client_flags = dir_flags::HELLO | dir_flags::APPDATA;
        a.server_flags = dir_flags::HELLO | dir_flags::APPDATA;
        c.ingest(&a, None);
        assert_eq!(c.flush()[0].detail["during_handshake"], false);
    }
}
