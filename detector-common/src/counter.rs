//! The kernel's counters: indices into the per-CPU `COUNTERS` array, with the metric
//! names the agent exports them under.

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
    /// TLS handshakes started: a flow's first ClientHello seen (flows picked up mid-stream
    /// never count).
    HandshakesStarted = 17,
    /// Of those, handshakes that finished (see the kernel's `check_done`).
    HandshakesCompleted = 18,
    /// Of those, handshakes that ended before finishing: a fatal alert, a RST or a FIN,
    /// once per flow (the `HandshakeAborted` event).
    HandshakesFailed = 19,
}

impl Counter {
    pub const COUNT: u32 = 20;
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
        Counter::HandshakesStarted,
        Counter::HandshakesCompleted,
        Counter::HandshakesFailed,
    ];

    /// The counters exported together as `detector_tls_handshakes_total{result}` instead of
    /// a metric each: this one's `result`.
    pub const fn handshake_result(self) -> Option<&'static str> {
        match self {
            Counter::HandshakesStarted => Some("started"),
            Counter::HandshakesCompleted => Some("completed"),
            Counter::HandshakesFailed => Some("failed"),
            _ => None,
        }
    }

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
            Counter::HandshakesStarted => "tls_handshakes_started",
            Counter::HandshakesCompleted => "tls_handshakes_completed",
            Counter::HandshakesFailed => "tls_handshakes_failed",
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
            Counter::HandshakesStarted => "TLS handshakes started (first ClientHello of a flow)",
            Counter::HandshakesCompleted => "TLS handshakes that finished",
            Counter::HandshakesFailed => {
                "TLS handshakes that ended before finishing (fatal alert, RST or FIN)"
            }
        }
    }
}
