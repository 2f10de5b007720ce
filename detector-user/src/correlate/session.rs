//! What the correlator holds per session between events: the first sighting of each kind
//! of trouble, enough for the judges to tell the session's story.

use std::ops::Deref;

use detector_common::{EventKind, PayloadClass, Side, dir_flags};

use crate::{
    kernel::event::{Abort, Alert, History, KernelEvent, Snippet, TlsFacts},
    output::{detail::IdleDropHow, diagnosis::Abstention, escape::show_bytes},
};

/// Alerts (plaintext, and encrypted) kept per session; the rest are only counted, so that
/// a peer sending alerts in a loop cannot grow the agent's memory.
pub const MAX_ALERTS_KEPT: usize = 8;

#[derive(Default)]
pub(super) struct Session {
    /// The kernel's first sighting of the flow: a different one on a later event means
    /// the 4-tuple now carries another connection.
    pub(super) flow_first_seen_ns: u64,
    pub(super) first_ns: u64,
    pub(super) last_ns: u64,
    pub(super) tls_port: bool,
    pub(super) midstream: bool,
    pub(super) sni: Option<String>,
    pub(super) client_first: Option<PayloadClass>,
    pub(super) client_bytes: Option<Bytes>,
    pub(super) server_first: Option<PayloadClass>,
    pub(super) server_bytes: Option<Bytes>,
    /// At most [`MAX_ALERTS_KEPT`]; `alerts_omitted` counts the rest.
    pub(super) alerts: Vec<SeenAlert>,
    pub(super) alerts_omitted: u32,
    /// Sender and record length, at most [`MAX_ALERTS_KEPT`]; the rest are counted.
    /// Inline: every clean TLS 1.2 close has two, so most sessions would otherwise
    /// allocate for them.
    pub(super) encrypted_alerts: Kept<(Side, u16), MAX_ALERTS_KEPT>,
    pub(super) encrypted_alerts_omitted: u32,
    /// When the server's first plaintext HelloRequest came.
    pub(super) hello_request_ns: Option<u64>,
    /// The first handshake record after application data, per side.
    pub(super) renegotiation: [Option<Renegotiation>; 2],
    pub(super) tls13_close: Option<Side>,
    pub(super) aborted: Option<(Abort, Side, Option<Alert>)>,
    /// The first end after an idle gap: who, how long, and how.
    pub(super) idle_end: Option<IdleEnd>,
    /// An idle resumption that went unanswered, or a flow first seen mid-stream.
    pub(super) idle_drop: Option<(IdleDropHow, Side, u64)>,
    /// The latest history and facts (later events know more).
    pub(super) history: History,
    pub(super) tls: TlsFacts,
    pub(super) server_hello_seen: bool,
    /// Both sides sent application data after the ServerHello: see
    /// [`established_by_data`].
    pub(super) established: bool,
}

/// Up to `N` items, held inline.
#[derive(Clone, Copy)]
pub(super) struct Kept<T: Copy, const N: usize> {
    len: u8,
    /// Those past `len` are fillers, never read.
    items: [T; N],
}

impl<T: Copy, const N: usize> Kept<T, N> {
    const fn new(filler: T) -> Self {
        assert!(N <= u8::MAX as usize);
        Kept {
            len: 0,
            items: [filler; N],
        }
    }

    /// Keeps `item` if there is room; false if there was none.
    pub(super) fn push(&mut self, item: T) -> bool {
        let Some(slot) = self.items.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = item;
        self.len += 1;
        true
    }
}

impl<T: Copy, const N: usize> Deref for Kept<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }
}

impl<const N: usize> Default for Kept<(Side, u16), N> {
    fn default() -> Self {
        Kept::new((Side::Client, 0))
    }
}

/// The first bytes of a payload, and whether the payload went on beyond them.
pub(super) struct Bytes {
    pub(super) head: Snippet,
    pub(super) cut: bool,
}

impl Bytes {
    pub(super) fn shown(&self) -> String {
        let s = show_bytes(&self.head);
        if self.cut { format!("{s}...") } else { s }
    }
}

#[derive(Clone, Copy)]
pub(super) struct IdleEnd {
    pub(super) sender: Side,
    pub(super) gap_ns: u64,
    pub(super) how: IdleHow,
    /// A FIN from the same side came with it (alert and FIN, as proxies close).
    pub(super) fin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleHow {
    Rst,
    Fin,
    EncryptedAlert(u16),
    Tls13Close,
}

#[derive(Clone, Copy)]
pub(super) struct Renegotiation {
    pub(super) ts_ns: u64,
    /// Length of the record (0 for a plaintext ClientHello).
    pub(super) record_len: u16,
    /// The other side had already started a renegotiation, so this one answers it.
    pub(super) answering: bool,
}

#[derive(Clone, Copy)]
pub(super) struct SeenAlert {
    pub(super) sender: Side,
    pub(super) alert: Alert,
    pub(super) tcp_seq: u32,
}

impl Session {
    pub(super) fn new(e: &KernelEvent) -> Session {
        Session {
            flow_first_seen_ns: e.flow_first_seen_ns,
            first_ns: e.ts_ns,
            ..Session::default()
        }
    }

    /// Folds in one event of this connection (with its SNI, if known); returns the
    /// abstention the event decided, if any.
    pub(super) fn record(
        &mut self,
        e: &KernelEvent,
        sni: Option<String>,
        idle_ns: u64,
    ) -> Option<Abstention> {
        let mut abstained = None;
        self.last_ns = self.last_ns.max(e.ts_ns);
        self.tls_port |= e.tls_port;
        self.midstream |= e.midstream_tls;
        if self.sni.is_none() {
            self.sni = sni;
        }
        if e.history.len() >= self.history.len() {
            self.history = e.history;
        }
        self.tls = e.tls;
        self.server_hello_seen |= e.server_flags & dir_flags::HELLO != 0;
        self.established |= established_by_data(e);
        // Every event carries each side's first-payload class; keep the first real one.
        if e.client_first != PayloadClass::None {
            self.client_first.get_or_insert(e.client_first);
        }
        if e.server_first != PayloadClass::None {
            self.server_first.get_or_insert(e.server_first);
        }
        match e.kind {
            EventKind::ProtocolMismatch => {
                let slot = match e.sender {
                    Side::Client => &mut self.client_bytes,
                    Side::Server => &mut self.server_bytes,
                };
                slot.get_or_insert_with(|| Bytes {
                    head: e.snippet,
                    cut: e.payload_len as usize > e.snippet.len(),
                });
            }
            EventKind::PlaintextAlert => {
                if let Some(alert) = e.alert {
                    // A retransmitted alert is the same alert (among those kept: past the
                    // cap, a retransmission is counted again, which only inflates a count).
                    let dup = self
                        .alerts
                        .iter()
                        .any(|a| a.sender == e.sender && a.tcp_seq == e.tcp_seq);
                    if !dup && self.alerts.len() < MAX_ALERTS_KEPT {
                        self.alerts.push(SeenAlert {
                            sender: e.sender,
                            alert,
                            tcp_seq: e.tcp_seq,
                        });
                    } else if !dup {
                        self.alerts_omitted += 1;
                    }
                }
            }
            EventKind::EncryptedAlert => {
                if !self.encrypted_alerts.push((e.sender, e.record_len)) {
                    self.encrypted_alerts_omitted += 1;
                }
                if e.gap_ns >= idle_ns {
                    self.idle_end.get_or_insert(IdleEnd {
                        sender: e.sender,
                        gap_ns: e.gap_ns,
                        how: IdleHow::EncryptedAlert(e.record_len),
                        fin: false,
                    });
                }
            }
            EventKind::IdleFin => match &mut self.idle_end {
                Some(end) if end.sender == e.sender => end.fin = true,
                Some(_) => {}
                None if e.gap_ns >= idle_ns => {
                    self.idle_end = Some(IdleEnd {
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
                self.idle_end.get_or_insert(IdleEnd {
                    sender: e.sender,
                    gap_ns: e.gap_ns,
                    how: IdleHow::Rst,
                    fin: false,
                });
            }
            EventKind::IdleRetransmit => {
                let how = if e.midstream && e.gap_ns == 0 {
                    IdleDropHow::MidstreamUnansweredRetransmission
                } else {
                    IdleDropHow::UnansweredRetransmission
                };
                self.idle_drop.get_or_insert((how, e.sender, e.gap_ns));
            }
            EventKind::IdleRstAnswer => {
                // The resumer is the RST's peer; the drop is told from its side.
                self.idle_drop
                    .get_or_insert((IdleDropHow::RstAnswer, e.sender, e.gap_ns));
            }
            // Counted by the timeout estimate, which outlives sessions.
            EventKind::IdleSurvived => {}
            EventKind::HelloRequest => {
                self.hello_request_ns.get_or_insert(e.ts_ns);
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
                    || (e.sender == Side::Client && self.hello_request_ns.is_some());
                self.renegotiation[e.sender as usize].get_or_insert(Renegotiation {
                    ts_ns: e.ts_ns,
                    record_len: e.record_len,
                    answering,
                });
            }
            EventKind::Tls13CloseHeuristic => {
                self.tls13_close = Some(e.sender);
                if e.gap_ns >= idle_ns {
                    self.idle_end.get_or_insert(IdleEnd {
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
                    self.aborted.get_or_insert((how, e.sender, e.alert));
                }
            }
        }
        abstained
    }
}

/// Application data (type 23) from both sides after a ServerHello: the handshake finished
/// as far as the packets show, whatever the version code, so no later end of the session
/// is a failed handshake.
fn established_by_data(e: &KernelEvent) -> bool {
    e.client_flags & dir_flags::APPDATA != 0
        && e.server_flags & dir_flags::APPDATA != 0
        && e.server_flags & dir_flags::HELLO != 0
}
