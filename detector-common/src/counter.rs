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
    /// Ignored: a RST whose sequence number lies outside the receiver's window as the flow
    /// has seen it (RFC 5961 §3), or on a flow where no window was seen to place it in.
    /// A blind forger guesses; the real sender knows where the stream is.
    RstOutsideWindow = 20,
    /// Ignored: a SYN-ACK with a new initial sequence number on a live flow that no new
    /// SYN preceded (a forgery, or a stray): it would restart the flow, swap its roles.
    SynAckWithoutSyn = 21,
    /// Events the slow path found, before delivery: each is then emitted, or dropped for
    /// exactly one reason (`EventsDropped`, `EventsOverCap`).
    EventsFound = 22,
    /// Found events beyond the per-packet cap (4), dropped.
    EventsOverCap = 23,
    /// Packets sent to the slow path whose flow was gone from its table when it ran (the
    /// LRU evicted it in between): whatever events they held were never looked for.
    SlowPathFlowGone = 24,
    /// Of `TlsSyncLost`, by why: a record header TLS does not allow.
    SyncLostImplausible = 25,
    /// More items in one packet than the walker reads.
    SyncLostTooManyItems = 26,
    /// The next header lay in bytes an out-of-order segment had carried, unread.
    SyncLostPassedUnread = 27,
    /// The stream ran further ahead of the cursor than the walker waits, and the lengths
    /// of one-size records did not bridge it.
    SyncLostGapTooLong = 28,
    /// The packet did not hold bytes its headers promised.
    SyncLostUnreadable = 29,
    /// Packets the fast path handed to the slow path (tail calls that arrived).
    SlowPathPackets = 30,
    /// Packets whose record headers the fast path stepped over itself: application data
    /// in order, every header whole in the packet (see the kernel's `step_bulk`).
    TlsFastPathPackets = 31,
    /// Packets whose flow another CPU was reading: they waited for it (one direction's
    /// packets processed on two CPUs at once, as veth devices do).
    FlowOwnerWaits = 32,
    /// Times a flow's reader never gave it back and was taken over after a millisecond.
    FlowOwnerStale = 33,
    /// Packets left unread because another CPU held their flow past the wait: the
    /// walker meets them as a hole in the stream.
    FlowOwnerBusy = 34,
}

/// Counters exported together as one metric with a label, instead of a metric each.
pub struct Family {
    /// The metric's name (without prefix and `_total`).
    pub metric: &'static str,
    pub help: &'static str,
    pub label: &'static str,
}

/// `detector_tls_handshakes_total{result}`.
pub const HANDSHAKES: Family = Family {
    metric: "tls_handshakes",
    help: "TLS handshakes by result: started (a flow's first ClientHello seen), completed \
           (finished), failed (ended by a fatal alert, RST or FIN before finishing); started \
           minus the other two are still open or were never seen to end",
    label: "result",
};

/// `detector_kernel_tls_sync_lost_by_reason_total{reason}`: the losses of
/// `detector_kernel_tls_sync_lost_total`, each under the one reason the walker stopped for.
pub const SYNC_LOST: Family = Family {
    metric: "kernel_tls_sync_lost_by_reason",
    help: "Times the TLS record walker lost its place, by why: implausible_header, \
           too_many_items (in one packet), passed_unread (the next header was in bytes an \
           out-of-order segment carried), gap_too_long (not bridged by record lengths), \
           unreadable (the packet lacked bytes its headers promised)",
    label: "reason",
};

impl Counter {
    pub const COUNT: u32 = 35;
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
        Counter::RstOutsideWindow,
        Counter::SynAckWithoutSyn,
        Counter::EventsFound,
        Counter::EventsOverCap,
        Counter::SlowPathFlowGone,
        Counter::SyncLostImplausible,
        Counter::SyncLostTooManyItems,
        Counter::SyncLostPassedUnread,
        Counter::SyncLostGapTooLong,
        Counter::SyncLostUnreadable,
        Counter::SlowPathPackets,
        Counter::TlsFastPathPackets,
        Counter::FlowOwnerWaits,
        Counter::FlowOwnerStale,
        Counter::FlowOwnerBusy,
    ];

    /// For a counter exported in a [`Family`]: the family, and this counter's label value.
    pub const fn family(self) -> Option<(&'static Family, &'static str)> {
        Some(match self {
            Counter::HandshakesStarted => (&HANDSHAKES, "started"),
            Counter::HandshakesCompleted => (&HANDSHAKES, "completed"),
            Counter::HandshakesFailed => (&HANDSHAKES, "failed"),
            Counter::SyncLostImplausible => (&SYNC_LOST, "implausible_header"),
            Counter::SyncLostTooManyItems => (&SYNC_LOST, "too_many_items"),
            Counter::SyncLostPassedUnread => (&SYNC_LOST, "passed_unread"),
            Counter::SyncLostGapTooLong => (&SYNC_LOST, "gap_too_long"),
            Counter::SyncLostUnreadable => (&SYNC_LOST, "unreadable"),
            _ => return None,
        })
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
            Counter::RstOutsideWindow => "kernel_ignored_rst_outside_window",
            Counter::SynAckWithoutSyn => "kernel_ignored_synack_without_syn",
            Counter::EventsFound => "kernel_events_found",
            Counter::EventsOverCap => "kernel_events_dropped_over_packet_cap",
            Counter::SlowPathFlowGone => "kernel_slow_path_flow_gone",
            Counter::SyncLostImplausible => "kernel_tls_sync_lost_implausible_header",
            Counter::SyncLostTooManyItems => "kernel_tls_sync_lost_too_many_items",
            Counter::SyncLostPassedUnread => "kernel_tls_sync_lost_passed_unread",
            Counter::SyncLostGapTooLong => "kernel_tls_sync_lost_gap_too_long",
            Counter::SyncLostUnreadable => "kernel_tls_sync_lost_unreadable",
            Counter::SlowPathPackets => "kernel_slow_path_packets",
            Counter::TlsFastPathPackets => "kernel_tls_fast_path_packets",
            Counter::FlowOwnerWaits => "kernel_flow_owner_waits",
            Counter::FlowOwnerStale => "kernel_flow_owner_stale",
            Counter::FlowOwnerBusy => "kernel_flow_owner_busy",
        }
    }

    pub const fn help(self) -> &'static str {
        match self {
            Counter::Packets => "Packets seen by the kernel program",
            Counter::TcpPackets => "TCP packets seen by the kernel program",
            Counter::TlsRecords => "TLS record headers recognised by the kernel program",
            Counter::EventsEmitted => {
                "Events delivered into the ring buffer (found = emitted + dropped + dropped over \
                 packet cap)"
            }
            Counter::EventsDropped => {
                "Events found but not delivered because the ring buffer was full (the agent fell \
                 behind or the ring is too small)"
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
            Counter::TailCallFailed => {
                "Packets the slow-path program could not be reached for: their events, if any, \
                 were never looked for"
            }
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
            Counter::RstOutsideWindow => {
                "RSTs ignored: sequence number outside the receiver's window as seen (RFC 5961), \
                 or no window seen"
            }
            Counter::SynAckWithoutSyn => {
                "SYN-ACKs with a new ISN ignored on a live flow: no new SYN preceded them"
            }
            Counter::EventsFound => {
                "Events the kernel found; each is emitted or dropped for exactly one reason"
            }
            Counter::EventsOverCap => {
                "Events found but dropped: beyond the cap of 4 events per packet"
            }
            Counter::SlowPathFlowGone => {
                "Packets whose flow was evicted before the slow path ran: their events, if any, \
                 were never looked for"
            }
            Counter::SyncLostImplausible => "TLS sync lost: a record header TLS does not allow",
            Counter::SyncLostTooManyItems => "TLS sync lost: more items in a packet than walked",
            Counter::SyncLostPassedUnread => {
                "TLS sync lost: the next header went by unread in an out-of-order segment"
            }
            Counter::SyncLostGapTooLong => {
                "TLS sync lost: the stream ran too far past the cursor to bridge"
            }
            Counter::SyncLostUnreadable => {
                "TLS sync lost: the packet lacked bytes its headers promised"
            }
            Counter::SlowPathPackets => "Packets the fast path handed to the slow path",
            Counter::TlsFastPathPackets => {
                "Packets whose TLS application-data record headers the fast path stepped over \
                 without the slow path"
            }
            Counter::FlowOwnerWaits => {
                "Packets that waited while another CPU read the same flow (a direction's packets \
                 processed on two CPUs at once, as on veth)"
            }
            Counter::FlowOwnerStale => {
                "Times a flow's reader never gave it back and was taken over after 1 ms"
            }
            Counter::FlowOwnerBusy => {
                "Packets left unread because another CPU held their flow past the wait (the \
                 record walker meets them as a hole)"
            }
        }
    }
}
