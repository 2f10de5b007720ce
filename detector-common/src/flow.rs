//! What the kernel keeps per flow: each side's stream position and deeds, the TLS facts
//! of the hellos, and the SNI kept apart.

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
    /// This side sent an ACK: `Direction::acked` and `Direction::wnd` hold its last.
    pub const ACKED: u16 = 1 << 12;
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
    /// This side's last advertised receive window, in its own scaled units (see
    /// [`FlowState::wscale`]); valid with [`dir_flags::ACKED`].
    pub wnd: u16,
    /// The highest acknowledgment number this side sent: the peer's next sequence number
    /// as this side expects it (its RCV.NXT as far as the flow has seen); valid with
    /// [`dir_flags::ACKED`]. A RST from the peer is believed only near it (RFC 5961 §3).
    pub acked: u32,
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
    /// Window-scale shift of each side ([`Side`]-indexed): the SYN-ACK's option for the
    /// server; 0 where scaling is off (no option in the SYN-ACK) and where the shift is
    /// not known (the client's, which only its SYN carries, and any side of a flow picked
    /// up mid-stream). Taking an unknown shift as 0 gives the smallest window a RST can
    /// fall in: an unknown shift never makes the detector believe a RST it would not
    /// believe knowing it.
    pub wscale: [u8; 2],
    /// Whether a bare SYN for this 4-tuple with a new initial sequence number was seen
    /// while the flow lived, and from which endpoint of the key ([`new_syn`]). Only then
    /// may a SYN-ACK with a new ISN start the flow over.
    pub new_syn: u8,
    pub _pad: u8,
    /// The gap before that resumption.
    pub idle_gap_ns: u64,
    /// The sequence number of that SYN: the SYN-ACK that starts over acknowledges it.
    pub new_syn_seq: u32,
    /// Who is reading this flow's bytes: 0 when nobody, else [`owner_stamp`] of the time
    /// a CPU took it. The walker's state must have one writer at a time, and on a virtual
    /// device one direction's packets are processed on several CPUs at once (the kernel
    /// program's `owner` module).
    pub owner: u32,
}

/// [`FlowState::owner`] for a CPU that takes the flow at `now_ns`: the time in units of
/// 1,024 ns (wrapping every 73 minutes), odd so that it is never 0 (free).
pub const fn owner_stamp(now_ns: u64) -> u32 {
    (now_ns >> 10) as u32 | 1
}

/// An owner older than this, in [`owner_stamp`] units (about 1 ms), never gave the flow
/// back: no walk takes that long, so another CPU takes it over.
pub const OWNER_STALE: u32 = 1 << 10;

/// Values of [`FlowState::new_syn`]: which endpoint of the key sent the new SYN.
pub mod new_syn {
    pub const NONE: u8 = 0;
    pub const FROM_A: u8 = 1;
    pub const FROM_B: u8 = 2;
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
