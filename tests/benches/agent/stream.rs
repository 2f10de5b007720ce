//! Recorded event streams: ring-buffer records exactly as the kernel program emits them
//! (`detector_common::Event`, byte for byte), for sessions that each tell one of the field
//! cases' stories, started at a steady rate and interleaved in time order as the ring
//! buffer delivers them.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr},
};

use detector_common::{
    Event, EventKind, PayloadClass, Side, abort, dir_flags, family, flow_flags,
    tls::{
        alert::{FATAL, HANDSHAKE_FAILURE, PROTOCOL_VERSION},
        version::TLS1_2,
    },
};
use detector_user::kernel::event::addr;

/// Program time between a session's events.
pub const EVENT_SPACING_NS: u64 = 10_000_000;
/// Where program time starts (a capture's epoch nanoseconds, roughly now).
const T0: u64 = 1_800_000_000_000_000_000;
/// A gap the path survived, and a longer one after which it forgot the flow: together
/// they give each server a timeout estimate.
const SURVIVED_GAP_NS: u64 = 30_000_000_000;
const FATAL_GAP_NS: u64 = 350_000_000_000;

/// What the stream's sessions look like.
#[derive(Clone, Copy)]
pub struct Shape {
    pub sessions: u32,
    /// Program time between the starts of consecutive sessions: with the correlation
    /// window, it sets how many sessions are open at once.
    pub start_spacing_ns: u64,
    /// Distinct server endpoints the sessions go to.
    pub servers: u32,
    /// One session in this many ends in a failure (or an abstention) the agent judges;
    /// the others close cleanly, some after surviving an idle gap.
    pub failing_every: u32,
}

/// The failures' stories, one per failing session in turn; each is the few events the
/// kernel reports for it.
const FAILURES: u32 = 7;

/// Which story a session tells: `Some(n)` the n-th failure, `None` a clean close.
fn story(shape: &Shape, session: u32) -> Option<u32> {
    session
        .is_multiple_of(shape.failing_every)
        .then(|| (session / shape.failing_every) % FAILURES)
}

fn events_of(shape: &Shape, session: u32) -> u32 {
    match story(shape, session) {
        Some(5 | 6) => 1,
        Some(_) => 2,
        // Both close_notify alerts, after an idle gap survived for every other one.
        None if session.is_multiple_of(2) => 2,
        None => 3,
    }
}

/// The stream's records in time order, generated as they are consumed: only the sessions
/// with events still to come inside one session's lifetime are held.
pub struct Records {
    shape: Shape,
    next_session: u32,
    /// (time, session, event index) of each started session's next event.
    pending: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Records {
    pub fn new(shape: Shape) -> Records {
        Records {
            shape,
            next_session: 0,
            pending: BinaryHeap::new(),
        }
    }
}

impl Iterator for Records {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let next_start = (self.next_session < self.shape.sessions)
            .then(|| start_of(&self.shape, self.next_session));
        let take_new = match (next_start, self.pending.peek()) {
            (Some(start), Some(Reverse((ts, _, _)))) => start <= *ts,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let (ts, session, k) = if take_new {
            let s = self.next_session;
            self.next_session += 1;
            (next_start.expect("a session left"), s, 0)
        } else {
            self.pending.pop()?.0
        };
        if k + 1 < events_of(&self.shape, session) {
            self.pending
                .push(Reverse((ts + EVENT_SPACING_NS, session, k + 1)));
        }
        Some(event(&self.shape, session, k, ts))
    }
}

fn start_of(shape: &Shape, session: u32) -> u64 {
    T0 + u64::from(session) * shape.start_spacing_ns
}

/// The raw bytes of a record, as read from the ring buffer.
pub fn bytes(e: &Event) -> &[u8] {
    // SAFETY: Event is repr(C) plain data with explicit padding.
    unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), size_of::<Event>()) }
}

/// Event `k` of `session`, at program time `ts`.
fn event(shape: &Shape, session: u32, k: u32, ts: u64) -> Event {
    // SAFETY: all-zero is a valid Event.
    let mut e: Event = unsafe { std::mem::zeroed() };
    e.ts_ns = ts;
    e.flow_first_seen_ns = start_of(shape, session) - 1_000_000;
    e.family = family::V4;
    let [a, b, c, d] = session.to_be_bytes();
    let client = Ipv4Addr::new(10, a.wrapping_add(1), b, c);
    e.client_addr = addr(IpAddr::V4(client));
    e.client_port = 1024 + u16::from(d) * 200;
    let server = session % shape.servers;
    let [_, _, sh, sl] = server.to_be_bytes();
    e.server_addr = addr(IpAddr::V4(Ipv4Addr::new(192, 0, sh, sl)));
    e.server_port = 443;
    e.flow_flags = flow_flags::SYNACK_SEEN | flow_flags::TLS_PORT;
    e.client_first = PayloadClass::ClientHello as u8;
    e.server_first = PayloadClass::TlsRecord as u8;
    e.tls.offered_versions = 1 << 3;
    e.tls.negotiated_version = TLS1_2;
    e.tcp_seq = 1000 + k * 100;
    let story = story(shape, session);
    let history: &[u8] = match story {
        Some(0) => b"C",
        Some(1) => b"CsL",
        _ => b"CsSiIcD",
    };
    e.history[..history.len()].copy_from_slice(history);
    e.history_len = history.len() as u8;
    let established = [
        dir_flags::HELLO | dir_flags::APPDATA | dir_flags::CCS,
        dir_flags::HELLO | dir_flags::APPDATA | dir_flags::CCS,
    ];
    let Some(story) = story else {
        // A clean close: an idle gap survived (every other session), then both sides'
        // close_notify, encrypted.
        let survived_first = session % 2 == 1;
        e.dir_flags = established;
        if survived_first && k == 0 {
            e.kind = EventKind::IdleSurvived as u8;
            e.sender = Side::Client as u8;
            e.gap_ns = SURVIVED_GAP_NS;
        } else {
            e.kind = EventKind::EncryptedAlert as u8;
            let client_first = k == u32::from(survived_first);
            e.sender = if client_first {
                Side::Client
            } else {
                Side::Server
            } as u8;
            e.record_len = 26;
        }
        return e;
    };
    match (story, k) {
        // An HTTP request to the TLS port, and the server's alert in answer.
        (0, 0) => {
            e.kind = EventKind::ProtocolMismatch as u8;
            e.sender = Side::Client as u8;
            e.client_first = PayloadClass::HttpRequest as u8;
            e.server_first = PayloadClass::None as u8;
            let get = b"GET / HTTP/1.1\r\nHost: a.example\r\n";
            let n = get.len().min(e.snippet.len());
            e.snippet[..n].copy_from_slice(&get[..n]);
            e.snippet_len = n as u8;
            e.payload_len = 78;
        }
        (0, _) => alert(&mut e, FATAL, PROTOCOL_VERSION),
        // A handshake ended by the server's fatal alert.
        (1, 0) => alert(&mut e, FATAL, HANDSHAKE_FAILURE),
        (1, _) => {
            alert(&mut e, FATAL, HANDSHAKE_FAILURE);
            e.kind = EventKind::HandshakeAborted as u8;
            e.detail = abort::ALERT;
        }
        // Idle gaps: one survived, and a later, longer one ended by the server's RST.
        (2, 0) | (4, 0) => {
            e.kind = EventKind::IdleSurvived as u8;
            e.sender = Side::Client as u8;
            e.gap_ns = SURVIVED_GAP_NS;
            e.dir_flags = established;
        }
        (2, _) => {
            e.kind = EventKind::IdleRst as u8;
            e.sender = Side::Server as u8;
            e.gap_ns = FATAL_GAP_NS;
            e.dir_flags = established;
        }
        // A close after idle: the encrypted alert, then the FIN.
        (3, 0) => {
            e.kind = EventKind::EncryptedAlert as u8;
            e.sender = Side::Server as u8;
            e.record_len = 26;
            e.gap_ns = FATAL_GAP_NS;
            e.dir_flags = established;
        }
        (3, _) => {
            e.kind = EventKind::IdleFin as u8;
            e.sender = Side::Server as u8;
            e.gap_ns = FATAL_GAP_NS;
            e.dir_flags = established;
        }
        // A resumption after idle answered by a RST: the path forgot the flow.
        (4, _) => {
            e.kind = EventKind::IdleRstAnswer as u8;
            e.sender = Side::Server as u8;
            e.gap_ns = FATAL_GAP_NS;
            e.dir_flags = established;
        }
        // A RST ending a session whose data both sides already exchanged: an abstention.
        (5, _) => {
            e.kind = EventKind::HandshakeAborted as u8;
            e.detail = abort::RST;
            e.sender = Side::Server as u8;
            e.dir_flags = established;
        }
        // A gap the flow survived, and nothing else.
        _ => {
            e.kind = EventKind::IdleSurvived as u8;
            e.sender = Side::Server as u8;
            e.gap_ns = SURVIVED_GAP_NS;
            e.dir_flags = established;
        }
    }
    e
}

fn alert(e: &mut Event, lvl: u8, desc: u8) {
    e.kind = EventKind::PlaintextAlert as u8;
    e.sender = Side::Server as u8;
    e.alert_level = lvl;
    e.alert_description = desc;
    e.record_len = 2;
    e.dir_flags = [dir_flags::HELLO, 0];
}
