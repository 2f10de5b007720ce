//! The contract between the kernel program and the agent: map names, the flow key and
//! state kept per flow, the events sent through the ring buffer, and counter indices.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so that the kernel
//! (which hashes keys byte by byte) and the agent (which reads events byte by byte) agree
//! on every byte.
#![no_std]

/// Map and program names, as they appear in the compiled object.
pub mod names {
    pub const XDP_PROGRAM: &str = "detector_xdp";
    pub const TC_PROGRAM: &str = "detector_tc";
    pub const FLOWS: &str = "FLOWS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const TLS_PORTS: &str = "TLS_PORTS";
}

/// Default number of flows the kernel tracks; the agent can change it at load time.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 65_536;
/// Size of the kernel → agent ring buffer in bytes (a power of two, page aligned).
pub const EVENT_RING_BYTES: u32 = 1 << 20;
/// How many ports the TLS port set can hold.
pub const MAX_TLS_PORTS: u32 = 64;
/// Ports treated as TLS when the operator names none.
pub const DEFAULT_TLS_PORTS: [u16; 7] = [443, 465, 636, 853, 993, 995, 8443];
/// Bytes of the triggering payload copied into an event, so the agent can show them.
pub const SNIPPET_LEN: usize = 16;

/// An IP address as 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so that one
/// key type serves both families.
pub type Addr = [u8; 16];

/// A flow under a direction-normalised key: the endpoint that sorts lower (address, then
/// port) is `a`. Both directions of a connection therefore find the same entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_a: Addr,
    pub addr_b: Addr,
    pub port_a: u16,
    pub port_b: u16,
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
}

/// What the kernel keeps per flow. Updated in place through a map-value pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Initial sequence number per side, indexed by [`Side`]; valid with `SYNACK_SEEN`.
    pub isn: [u32; 2],
    /// First-payload class per side, indexed by [`Side`] ([`PayloadClass`] values).
    pub first_class: [u8; 2],
    pub flags: u8,
    pub _pad: [u8; 5],
}

/// Why an event was sent: bits of [`Event::reasons`]. One packet can have several.
pub mod reasons {
    /// A plaintext TLS alert record (type 21, length 2).
    pub const PLAINTEXT_ALERT: u8 = 1 << 0;
    /// The first payloads of the two sides disagree on the protocol, or an HTTP request
    /// went to a TLS port.
    pub const PROTOCOL_MISMATCH: u8 = 1 << 1;
}

/// One suspicious packet, as sent through the ring buffer. It carries the flow's facts so
/// the agent never needs per-packet traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The program's clock: boot time in nanoseconds live, capture time (Unix epoch
    /// nanoseconds) in replay.
    pub ts_ns: u64,
    pub flow_first_seen_ns: u64,
    pub client_addr: Addr,
    pub server_addr: Addr,
    pub client_port: u16,
    pub server_port: u16,
    /// [`reasons`] bits.
    pub reasons: u8,
    /// [`Side`] that sent the packet.
    pub sender: u8,
    /// First-payload classes ([`PayloadClass`]) of client and server at the time.
    pub client_first: u8,
    pub server_first: u8,
    /// [`flow_flags`] of the flow.
    pub flow_flags: u8,
    pub alert_level: u8,
    pub alert_description: u8,
    /// How many bytes of `snippet` are valid.
    pub snippet_len: u8,
    /// The first bytes of the packet's TCP payload.
    pub snippet: [u8; SNIPPET_LEN],
    pub tcp_seq: u32,
    pub payload_len: u32,
    pub _pad: u32,
}

/// Configuration the agent writes into the single-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// When non-zero, the program's clock: replay sets it to each packet's capture time.
    /// Zero means the kernel's boot-time clock.
    pub clock_override_ns: u64,
}

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
}

impl Counter {
    pub const COUNT: u32 = 8;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Packets,
        Counter::TcpPackets,
        Counter::TlsRecords,
        Counter::EventsEmitted,
        Counter::EventsDropped,
        Counter::FlowsCreated,
        Counter::Fragments,
        Counter::Truncated,
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
}

// The kernel writes these layouts and the agent reads them; a silent change of size would
// make one misread the other, so pin them.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 36);
const _: () = assert!(core::mem::size_of::<FlowState>() == 32);
const _: () = assert!(core::mem::size_of::<Event>() == 88);
