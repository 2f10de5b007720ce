//! The contract between the kernel program and the agent: map names, the flow key and
//! state kept per flow, the events sent through the ring buffer, and counter indices.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so that the kernel
//! (which hashes keys byte by byte) and the agent (which reads events byte by byte) agree
//! on every byte.
#![no_std]

pub mod tls;

/// Map and program names, as they appear in the compiled object.
pub mod names {
    pub const XDP_PROGRAM: &str = "detector_xdp";
    pub const TC_PROGRAM: &str = "detector_tc";
    pub const XDP_SLOW_PATH: &str = "detector_xdp_slow";
    pub const TC_SLOW_PATH: &str = "detector_tc_slow";
    pub const XDP_SLOW_ARRAY: &str = "XDP_SLOW";
    pub const TC_SLOW_ARRAY: &str = "TC_SLOW";
    pub const FLOWS: &str = "FLOWS";
    pub const UNCONFIRMED: &str = "UNCONFIRMED";
    pub const SNI: &str = "SNI";
    pub const SCRATCH: &str = "SCRATCH";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const TLS_PORTS: &str = "TLS_PORTS";
}

/// Default number of flows the kernel tracks; the agent can change it at load time.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 65_536;
/// Default size of the table of unconfirmed flows (seen from one side only so far). A
/// flood of one-sided packets (scans, spoofed segments, SYN-ACKs of a SYN flood) churns
/// this table only, never the confirmed flows in the main one.
pub const DEFAULT_UNCONFIRMED_TABLE_SIZE: u32 = 16_384;
/// Size of the kernel → agent ring buffer in bytes (a power of two, page aligned).
pub const EVENT_RING_BYTES: u32 = 1 << 20;
/// How many ports the TLS port set can hold.
pub const MAX_TLS_PORTS: u32 = 64;
/// Ports treated as TLS when the operator names none.
pub const DEFAULT_TLS_PORTS: [u16; 7] = [443, 465, 636, 853, 993, 995, 8443];
/// Largest record length TLS allows (2^14 + 2048); anything longer is not TLS.
pub const MAX_TLS_RECORD: u32 = (1 << 14) + 2048;
/// Bytes of the triggering payload copied into an event, so the agent can show them.
pub const SNIPPET_LEN: usize = 16;

/// An IP address: 16 bytes in network order, IPv4 stored IPv4-mapped (`::ffff:a.b.c.d`)
/// so that one key type serves both families. Held as two 64-bit words because BPF code
/// then moves an address in two registers; as `[u8; 16]` the compiler keeps, and spills,
/// each byte in a register of its own, which alone can exhaust BPF's 512-byte stack.
pub type Addr = [u64; 2];

/// Converts between [`Addr`] and the 16 network-order bytes it holds.
pub const fn addr_from_bytes(b: [u8; 16]) -> Addr {
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u8; 16], Addr>(b) }
}

pub const fn addr_to_bytes(a: Addr) -> [u8; 16] {
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// A flow under a direction-normalised key: the endpoint that sorts lower (address, then
/// port) is `a`. Both directions of a connection therefore find the same entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_a: Addr,
    pub addr_b: Addr,
    pub port_a: u16,
    pub port_b: u16,
    pub _pad: u32,
}

impl FlowKey {
    /// The key for a packet from `src` to `dst`, and whether `src` is endpoint `a`.
    /// Endpoints order by address, then port, compared as big-endian numbers.
    #[inline(always)]
    pub fn normalised(src: &Addr, sport: u16, dst: &Addr, dport: u16) -> (FlowKey, bool) {
        let src_first = endpoint_le(src, sport, dst, dport);
        let key = if src_first {
            FlowKey {
                addr_a: *src,
                addr_b: *dst,
                port_a: sport,
                port_b: dport,
                _pad: 0,
            }
        } else {
            FlowKey {
                addr_a: *dst,
                addr_b: *src,
                port_a: dport,
                port_b: sport,
                _pad: 0,
            }
        };
        (key, src_first)
    }
}

#[inline(always)]
fn endpoint_le(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    // Words hold network-order bytes: from_be turns them into comparable numbers.
    let (a_hi, b_hi) = (u64::from_be(a[0]), u64::from_be(b[0]));
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    let (a_lo, b_lo) = (u64::from_be(a[1]), u64::from_be(b[1]));
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    a_port <= b_port
}

/// Who said it, by role in the connection (not by ingress/egress).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Server = 1,
}

impl Side {
    pub const fn from_u8(v: u8) -> Option<Side> {
        match v {
            0 => Some(Side::Client),
            1 => Some(Side::Server),
            _ => None,
        }
    }
}

/// What the first payload of one side of a flow looked like.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadClass {
    /// No payload from this side yet.
    None = 0,
    /// The first payload was seen, but not at the start of the stream (the handshake was
    /// not observed, or earlier bytes were missed), so it says nothing about the protocol.
    NotAtStart = 1,
    /// A TLS handshake record holding a ClientHello.
    ClientHello = 2,
    /// Any other well-formed TLS record header.
    TlsRecord = 3,
    /// An HTTP request line (`GET `, `POST `, ...).
    HttpRequest = 4,
    /// An HTTP response (`HTTP/`).
    HttpResponse = 5,
    /// Anything else.
    Other = 6,
}

impl PayloadClass {
    pub const fn from_u8(v: u8) -> Option<PayloadClass> {
        Some(match v {
            0 => PayloadClass::None,
            1 => PayloadClass::NotAtStart,
            2 => PayloadClass::ClientHello,
            3 => PayloadClass::TlsRecord,
            4 => PayloadClass::HttpRequest,
            5 => PayloadClass::HttpResponse,
            6 => PayloadClass::Other,
            _ => return None,
        })
    }

    pub const fn is_tls(self) -> bool {
        matches!(self, PayloadClass::ClientHello | PayloadClass::TlsRecord)
    }
}

/// Bits of [`FlowState::flags`].
pub mod flow_flags {
    /// The SYN-ACK was seen, so roles and initial sequence numbers are known.
    pub const SYNACK_SEEN: u8 = 1 << 0;
    /// The client is endpoint `a` of the key.
    pub const CLIENT_IS_A: u8 = 1 << 1;
    /// The server port is in the configured TLS port set.
    pub const TLS_PORT: u8 = 1 << 2;
    /// TLS was first seen in the middle of the stream: the handshake was not observed.
    pub const MIDSTREAM_TLS: u8 = 1 << 3;
    /// The handshake ended before it finished, and that was reported (once per flow).
    pub const ABORT_REPORTED: u8 = 1 << 4;
    /// No SYN-ACK was seen: the flow was picked up mid-stream (older than the agent, or
    /// evicted earlier, or one side's traffic only). Its start and its idle gap are unknown.
    pub const MIDSTREAM: u8 = 1 << 5;
}

/// What the record walker expects at [`Direction::cursor`].
pub mod item {
    /// A TLS record header (type, version, length).
    pub const RECORD: u8 = 0;
    /// A handshake message header (type, 3-byte length) inside a plaintext record.
    pub const HANDSHAKE: u8 = 1;
    /// ClientHello/ServerHello fields, in wire order.
    pub const HELLO_VERSION: u8 = 2;
    pub const HELLO_SESSION_ID: u8 = 3;
    pub const HELLO_CIPHER_SUITES: u8 = 4;
    pub const HELLO_COMPRESSION: u8 = 5;
    pub const HELLO_EXTENSIONS: u8 = 6;
    pub const EXTENSION: u8 = 7;
    /// The two bytes of a plaintext alert.
    pub const ALERT_BODY: u8 = 8;
}

/// Bits of [`Direction::flags`]: what one side has done.
pub mod dir_flags {
    /// The record walker knows where this side's next record starts.
    pub const SYNCED: u16 = 1 << 0;
    /// This side sent ChangeCipherSpec: its later records are encrypted.
    pub const CCS: u16 = 1 << 1;
    /// This side sent application data (a type-23 record).
    pub const APPDATA: u16 = 1 << 2;
    /// This side sent its hello (ClientHello / ServerHello).
    pub const HELLO: u16 = 1 << 3;
    /// This side sent a Certificate (a full, not an abbreviated, handshake).
    pub const CERTIFICATE: u16 = 1 << 4;
    /// This side sent its Finished (the first encrypted handshake record after CCS).
    pub const FINISHED: u16 = 1 << 5;
    pub const FIN: u16 = 1 << 6;
    pub const RST: u16 = 1 << 7;
    /// The record walker is inside a ClientHello/ServerHello and parses its fields.
    pub const IN_HELLO: u16 = 1 << 8;
    /// The last handshake message continues in the next handshake record.
    pub const MSG_CONTINUES: u16 = 1 << 9;
    /// Renegotiation by this side was reported (once per side and flow).
    pub const RENEGOTIATED: u16 = 1 << 10;
    /// Headers read ahead of a reordering gap are kept (`Direction::ahead_*`).
    pub const AHEAD: u16 = 1 << 11;
}

/// Bits of [`Tls::flags`]: facts about the session, from both hellos.
pub mod tls_flags {
    /// The ClientHello carried a pre_shared_key extension (TLS 1.3 resumption).
    pub const PSK_OFFERED: u16 = 1 << 0;
    /// The ClientHello carried psk_key_exchange_modes.
    pub const PSK_MODES: u16 = 1 << 1;
    /// The ServerHello echoed the ClientHello's session ID (TLS 1.2 resumption accepted).
    pub const SESSION_ID_ECHOED: u16 = 1 << 2;
    /// The ServerHello selected a pre-shared key (TLS 1.3 resumption accepted).
    pub const PSK_ACCEPTED: u16 = 1 << 3;
    /// The server's ChangeCipherSpec followed its ServerHello with no Certificate: an
    /// abbreviated (resumed) TLS 1.2 handshake.
    pub const ABBREVIATED: u16 = 1 << 4;
    /// Both sides finished the handshake.
    pub const HANDSHAKE_DONE: u16 = 1 << 5;
    /// The ClientHello carried an SNI, stored in the `SNI` map under the flow key.
    pub const SNI: u16 = 1 << 6;
}

/// Zeek-style history letters kept per flow (client upper case, server lower case).
pub const HISTORY_LEN: usize = 16;

/// One side's byte stream: where the next TLS item is, and what the side has done.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Direction {
    /// Bytes of a header that straddled a segment end, big-endian in the low bits.
    pub pend: u64,
    pub last_seen_ns: u64,
    /// The idle gap before the packet that carried the last record header walked (a TLS
    /// 1.3 close is judged at the FIN that follows the record, but its gap is this one).
    pub last_record_gap_ns: u64,
    /// Sequence number of the next item ([`item`]) to read.
    pub cursor: u32,
    /// Where the current record ends.
    pub rec_end: u32,
    /// Where the current handshake message ends.
    pub msg_end: u32,
    /// Where the current hello's extensions end.
    pub ext_end: u32,
    /// One past the highest sequence number seen from this side.
    pub max_end: u32,
    pub isn: u32,
    pub item: u8,
    pub pend_len: u8,
    /// [`dir_flags`] bits.
    pub flags: u16,
    /// First-payload class ([`PayloadClass`]).
    pub first_class: u8,
    /// Type and length of the last record header walked.
    pub last_record_type: u8,
    pub last_record_len: u16,
    /// Application-data headers read ahead of a reordering gap: `ahead_records` of them,
    /// the first at `ahead_at`, the next header after them at `ahead_next`, whose first
    /// `ahead_pend_len` bytes are `ahead_pend` when a segment end cut it.
    pub ahead_pend: u64,
    /// One past the highest sequence number of the segments the walker has looked at.
    pub walked_end: u32,
    pub ahead_at: u32,
    pub ahead_next: u32,
    /// Bytes below `walked_end` not seen yet: the hole a reordering opened, which fills
    /// from `hole_start` up (empty when equal).
    pub hole_start: u32,
    pub hole_end: u32,
    pub ahead_records: u16,
    pub ahead_last_len: u16,
    pub ahead_pend_len: u8,
    /// Why the walker last lost its place (the kernel program's `Loss`), for its log.
    pub lost_why: u8,
    pub _pad: [u8; 6],
}

/// TLS facts of a flow: the hellos' contents and the message history.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tls {
    /// First bytes of the ClientHello's session ID, to see whether the server echoes it.
    pub session_id_prefix: u64,
    /// Letters used so far (may exceed [`HISTORY_LEN`]; the rest are dropped). 64 bits
    /// because BPF's atomic fetch-and-add, which appends take, is 64-bit in Rust's core.
    pub history_len: u64,
    /// Versions offered, bit n = 0x0300 + n (SSL 3.0 … TLS 1.3).
    pub offered_versions: u8,
    pub session_id_len: u8,
    pub session_ticket_len: u16,
    /// The ServerHello's version (supported_versions wins over the legacy field).
    pub negotiated_version: u16,
    /// [`tls_flags`] bits.
    pub flags: u16,
    pub history: [u8; HISTORY_LEN],
}

/// What the kernel keeps per flow. Updated in place through a map-value pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Indexed by [`Side`].
    pub dir: [Direction; 2],
    pub tls: Tls,
    /// [`flow_flags`] bits.
    pub flags: u8,
    /// Side (+1) that resumed after an idle gap and has had no answer yet; 0 if none.
    pub idle_resumer: u8,
    /// [`Side`] whose packet created the flow: a packet from the other side confirms it.
    pub opener: u8,
    /// Retransmissions by `idle_resumer` with no answer since it resumed.
    pub idle_retransmits: u8,
    pub _pad: [u8; 4],
    /// The gap before that resumption.
    pub idle_gap_ns: u64,
}

/// An SNI host name, kept out of the per-packet state in its own map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Sni {
    pub len: u8,
    pub name: [u8; SNI_MAX],
}

/// Longest SNI kept; longer names are cut.
pub const SNI_MAX: usize = 64;

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
    /// mid-stream ([`flow_flags::MIDSTREAM`]) whose first sender retransmits with no
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
    /// [`dir_flags`] of client and server.
    pub dir_flags: [u16; 2],
    pub tls: TlsSummary,
    /// [`EventKind`].
    pub kind: u8,
    /// [`Side`] that sent the packet.
    pub sender: u8,
    /// First-payload classes ([`PayloadClass`]) of client and server at the time.
    pub client_first: u8,
    pub server_first: u8,
    /// [`flow_flags`] of the flow.
    pub flow_flags: u8,
    pub alert_level: u8,
    pub alert_description: u8,
    /// Kind-specific: for `HandshakeAborted`, one of [`abort`].
    pub detail: u8,
    /// How many bytes of `snippet` are valid.
    pub snippet_len: u8,
    pub history_len: u8,
    pub _pad: [u8; 4],
}

/// The TLS facts an event carries (a copy of [`Tls`] without the history).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsSummary {
    pub offered_versions: u8,
    pub session_id_len: u8,
    pub session_ticket_len: u16,
    pub negotiated_version: u16,
    pub flags: u16,
}

/// Configuration the agent writes into the single-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// When non-zero, the program's clock: replay sets it to each packet's capture time.
    /// Zero means the kernel's boot-time clock.
    pub clock_override_ns: u64,
    /// Quiet time after which a flow counts as idle; closes, resets and resumptions after
    /// at least this gap are reported.
    pub idle_threshold_ns: u64,
    /// When the detector started, on the program's clock: a flow first seen mid-stream
    /// is only suspicious once the detector has run longer than the idle threshold.
    pub started_ns: u64,
}

/// Default idle threshold.
pub const DEFAULT_IDLE_THRESHOLD_NS: u64 = 30_000_000_000;

/// Indices into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Packets = 0,
    TcpPackets = 1,
    TlsRecords = 2,
    EventsEmitted = 3,
    EventsDropped = 4,
    FlowsCreated = 5,
    /// IP fragments, which leave unparsed (only the first carries TCP ports).
    Fragments = 6,
    /// Packets cut short inside a header they claimed to have.
    Truncated = 7,
    /// Times the record walker lost its place in a stream (implausible header, gap it
    /// could not bridge, more records in one packet than it walks).
    TlsSyncLost = 8,
    /// Times it found its place again from evidence (mid-stream pickup, after a loss).
    TlsResynced = 9,
    /// Packets the slow-path program could not be reached for (it is installed at load
    /// time, so this stays zero).
    TailCallFailed = 10,
    /// Flows entered in the unconfirmed table (seen from one side so far).
    UnconfirmedCreated = 11,
    /// Abstention: a flow first seen mid-stream was answered by its peer and adopted as
    /// healthy; its start was not seen, so it is never judged for it.
    MidstreamAdopted = 12,
    /// Abstention: an unconfirmed flow was answered by a RST only (a scan, a spoofed
    /// segment, or a flow older than the agent): no evidence of what the path did.
    UnconfirmedReset = 13,
    /// Times the record walker bridged a reordering gap with headers it had read ahead.
    TlsReadAhead = 14,
    /// Abstention: an end (RST, FIN) was not judged because the packet followed or
    /// acknowledged bytes the detector never saw (a capture drop, a packet outside its
    /// view): a handshake may have finished, traffic may have flowed, unseen.
    UnseenBytes = 15,
    /// Times the record walker, waiting for bytes that went by unread, found its place
    /// again where one-size records put the next header (see the kernel's
    /// `bridge_by_length`).
    TlsBridgedByLength = 16,
}

impl Counter {
    pub const COUNT: u32 = 17;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Packets,
        Counter::TcpPackets,
        Counter::TlsRecords,
        Counter::EventsEmitted,
        Counter::EventsDropped,
        Counter::FlowsCreated,
        Counter::Fragments,
        Counter::Truncated,
        Counter::TlsSyncLost,
        Counter::TlsResynced,
        Counter::TailCallFailed,
        Counter::UnconfirmedCreated,
        Counter::MidstreamAdopted,
        Counter::UnconfirmedReset,
        Counter::TlsReadAhead,
        Counter::UnseenBytes,
        Counter::TlsBridgedByLength,
    ];

    /// The counter's name in metrics (without prefix and `_total`).
    pub const fn metric_name(self) -> &'static str {
        match self {
            Counter::Packets => "kernel_packets",
            Counter::TcpPackets => "kernel_tcp_packets",
            Counter::TlsRecords => "kernel_tls_records",
            Counter::EventsEmitted => "kernel_events_emitted",
            Counter::EventsDropped => "kernel_events_dropped",
            Counter::FlowsCreated => "kernel_flows_created",
            Counter::Fragments => "kernel_ip_fragments",
            Counter::Truncated => "kernel_truncated_packets",
            Counter::TlsSyncLost => "kernel_tls_sync_lost",
            Counter::TlsResynced => "kernel_tls_resynced",
            Counter::TailCallFailed => "kernel_slow_path_tail_call_failed",
            Counter::UnconfirmedCreated => "kernel_unconfirmed_flows_created",
            Counter::MidstreamAdopted => "kernel_abstained_midstream_adopted",
            Counter::UnconfirmedReset => "kernel_abstained_unconfirmed_reset",
            Counter::TlsReadAhead => "kernel_tls_read_ahead",
            Counter::UnseenBytes => "kernel_abstained_unseen_bytes",
            Counter::TlsBridgedByLength => "kernel_tls_bridged_by_length",
        }
    }

    pub const fn help(self) -> &'static str {
        match self {
            Counter::Packets => "Packets seen by the kernel program",
            Counter::TcpPackets => "TCP packets seen by the kernel program",
            Counter::TlsRecords => "TLS record headers recognised by the kernel program",
            Counter::EventsEmitted => "Events sent to the agent through the ring buffer",
            Counter::EventsDropped => {
                "Events the kernel could not deliver because the ring buffer was full"
            }
            Counter::FlowsCreated => "Flows created in the kernel flow table",
            Counter::Fragments => "IP fragments left unparsed",
            Counter::Truncated => "Packets shorter than the headers they announce",
            Counter::TlsSyncLost => {
                "Times the TLS record walker lost its place in a stream and stopped reading it"
            }
            Counter::TlsResynced => {
                "Times the TLS record walker found record boundaries again from evidence"
            }
            Counter::TailCallFailed => "Packets the slow-path program could not be reached for",
            Counter::UnconfirmedCreated => {
                "Flows entered in the kernel's unconfirmed table (seen from one side so far)"
            }
            Counter::MidstreamAdopted => {
                "Flows first seen mid-stream that their peer answered: adopted, never judged"
            }
            Counter::UnconfirmedReset => {
                "Unconfirmed flows answered by a RST only: no evidence, no diagnosis"
            }
            Counter::TlsReadAhead => {
                "Times the TLS record walker bridged a reordering gap with headers read ahead"
            }
            Counter::UnseenBytes => {
                "Ends not judged: the packet followed or acknowledged bytes never seen"
            }
            Counter::TlsBridgedByLength => {
                "Times the TLS record walker found its place again from one-size record lengths"
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) plain data whose every byte is initialised (padding
    // is explicit) and for which any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Sni {}
}

// The kernel writes these layouts and the agent reads them; a silent change of size would
// make one misread the other, so pin them.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Direction>() == 96);
const _: () = assert!(core::mem::size_of::<Tls>() == 40);
const _: () = assert!(core::mem::size_of::<FlowState>() == 264);
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::size_of::<Sni>() == 1 + SNI_MAX);
