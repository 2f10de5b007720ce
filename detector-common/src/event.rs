//! The events sent through the ring buffer.

use crate::{Addr, HISTORY_LEN, SNIPPET_LEN};

/// What an [`Event`] reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The first payloads contradict the port or each other (HTTP to a TLS port, TLS
    /// answered by `HTTP/`, HTTP answered in TLS).
    ProtocolMismatch = 1,
    /// A plaintext alert record: level and description are in the event.
    PlaintextAlert = 2,
    /// An alert record after the sender's ChangeCipherSpec: its content is encrypted.
    EncryptedAlert = 3,
    /// A plaintext HelloRequest (handshake type 0) from the server.
    HelloRequest = 4,
    /// A handshake record after application data in TLS 1.2 or older: renegotiation.
    Renegotiation = 5,
    /// TLS 1.3: a short last application-data record (close_notify sized) then FIN.
    /// A heuristic: the record is encrypted.
    Tls13CloseHeuristic = 6,
    /// The handshake ended (fatal alert, RST or FIN) before it finished.
    HandshakeAborted = 7,
    /// A RST after the flow was idle for at least the threshold (`gap_ns`).
    IdleRst = 8,
    /// A side's FIN after the flow was idle for at least the threshold.
    IdleFin = 9,
    /// A side resumed after an idle gap and retransmitted twice without any answer (one
    /// retransmission can be a lost packet's tail-loss probe): the path forgot the flow (a
    /// load balancer or firewall idle timeout). Also a flow first seen
    /// mid-stream ([`crate::flow_flags::MIDSTREAM`]) whose first sender retransmits with no
    /// answer, once the detector has run longer than the idle threshold; its gap is then
    /// unknown (`gap_ns` 0).
    IdleRetransmit = 10,
    /// The other side answered a resumption after an idle gap: the flow survived it.
    IdleSurvived = 11,
    /// A side resumed after an idle gap and the answer was a RST (from the peer, or a
    /// middlebox in its name): the peer or the path forgot the flow. The event's sender
    /// is the RST's; `gap_ns` is the gap before the resumption.
    IdleRstAnswer = 12,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::ProtocolMismatch,
            2 => EventKind::PlaintextAlert,
            3 => EventKind::EncryptedAlert,
            4 => EventKind::HelloRequest,
            5 => EventKind::Renegotiation,
            6 => EventKind::Tls13CloseHeuristic,
            7 => EventKind::HandshakeAborted,
            8 => EventKind::IdleRst,
            9 => EventKind::IdleFin,
            10 => EventKind::IdleRetransmit,
            11 => EventKind::IdleSurvived,
            12 => EventKind::IdleRstAnswer,
            _ => return None,
        })
    }
}

/// How a handshake ended early ([`Event::detail`] of a `HandshakeAborted` event).
pub mod abort {
    pub const ALERT: u8 = 1;
    pub const RST: u8 = 2;
    pub const FIN: u8 = 3;
}

/// One suspicious packet, as sent through the ring buffer. It carries the flow's facts so
/// the agent never needs per-packet traffic. Byte arrays sit on 8-byte boundaries so the
/// kernel copies them as words (a byte-by-byte copy loop is costly for the verifier).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The program's clock: boot time in nanoseconds live, capture time (Unix epoch
    /// nanoseconds) in replay.
    pub ts_ns: u64,
    pub flow_first_seen_ns: u64,
    /// How long the flow had been quiet before this packet (for idle kinds: the gap
    /// before the resumption).
    pub gap_ns: u64,
    pub client_addr: Addr,
    pub server_addr: Addr,
    /// The first bytes of the packet's TCP payload.
    pub snippet: [u8; SNIPPET_LEN],
    pub history: [u8; HISTORY_LEN],
    pub tcp_seq: u32,
    pub payload_len: u32,
    pub client_port: u16,
    pub server_port: u16,
    /// Length of the record that triggered the event (alerts, handshake records).
    pub record_len: u16,
    /// [`dir_flags`](crate::dir_flags) of client and server.
    pub dir_flags: [u16; 2],
    pub tls: TlsSummary,
    /// [`EventKind`].
    pub kind: u8,
    /// [`Side`](crate::Side) that sent the packet.
    pub sender: u8,
    /// First-payload classes ([`PayloadClass`](crate::PayloadClass)) of client and server at the time.
    pub client_first: u8,
    pub server_first: u8,
    /// [`flow_flags`](crate::flow_flags) of the flow.
    pub flow_flags: u8,
    pub alert_level: u8,
    pub alert_description: u8,
    /// Kind-specific: for `HandshakeAborted`, one of [`abort`].
    pub detail: u8,
    /// How many bytes of `snippet` are valid.
    pub snippet_len: u8,
    pub history_len: u8,
    /// [`family`](crate::family) of the flow: an IPv4 flow's addresses are IPv4-mapped,
    /// and so may be an IPv6 flow's.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// The TLS facts an event carries (a copy of [`Tls`](crate::Tls) without the history).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsSummary {
    pub offered_versions: u8,
    pub session_id_len: u8,
    pub session_ticket_len: u16,
    pub negotiated_version: u16,
    pub flags: u16,
}
