//! Kernel events, decoded from ring-buffer bytes into typed Rust values.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::Deref,
};

use detector_common::{
    Addr, Event, EventKind, FlowKey, HISTORY_LEN, PayloadClass, SNIPPET_LEN, Side, abort,
    addr_from_bytes, addr_to_bytes, family, flow_flags,
    tls::version::{self, is_grease},
    tls_flags,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {got} bytes, expected {expected}: agent and kernel program disagree")]
    Size { got: usize, expected: usize },
    #[error("event field {field} holds {value}, which no known value matches")]
    Field { field: &'static str, value: u8 },
}

/// One suspicious packet reported by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: EventKind,
    /// Program clock, see [`super::clock`].
    pub ts_ns: u64,
    pub flow_first_seen_ns: u64,
    /// How long the flow was quiet before the packet (idle resumption events: the gap
    /// before the resumption).
    pub gap_ns: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub sender: Side,
    /// Level and description, for plaintext alerts (and handshakes they ended).
    pub alert: Option<Alert>,
    /// How a handshake ended early, for `HandshakeAborted`.
    pub abort: Option<Abort>,
    pub client_first: PayloadClass,
    pub server_first: PayloadClass,
    /// The kernel saw the SYN-ACK, so roles are known rather than guessed.
    pub handshake_seen: bool,
    pub tls_port: bool,
    /// TLS was picked up mid-stream: no handshake facts.
    pub midstream_tls: bool,
    /// The flow itself was picked up mid-stream (no SYN-ACK seen): its start and any gap
    /// before it are unknown.
    pub midstream: bool,
    /// Length of the record behind the event (alerts, handshake records).
    pub record_len: u16,
    /// The first bytes of the packet's payload.
    pub snippet: Snippet,
    pub tcp_seq: u32,
    pub payload_len: u32,
    /// Zeek-style ssl_history letters so far (client upper case, server lower case).
    pub history: History,
    /// [`dir_flags`] of client and server.
    pub client_flags: u16,
    pub server_flags: u16,
    pub tls: TlsFacts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Alert,
    Rst,
    Fin,
}

impl Abort {
    pub fn as_str(self) -> &'static str {
        match self {
            Abort::Alert => "fatal_alert",
            Abort::Rst => "rst",
            Abort::Fin => "fin",
        }
    }
}

/// How a client offered to resume a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ResumptionMethod {
    /// TLS 1.3 pre_shared_key extension.
    #[serde(rename = "tls13_psk")]
    Tls13Psk,
    /// TLS 1.2 session_ticket extension.
    #[serde(rename = "tls12_session_ticket")]
    Tls12SessionTicket,
    /// TLS 1.2 session ID.
    #[serde(rename = "tls12_session_id")]
    Tls12SessionId,
}

/// What the hellos said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// Bit n: version 0x0300 + n offered.
    pub offered_versions: u8,
    pub session_id_len: u8,
    pub session_ticket_len: u16,
    /// The ServerHello's version, if one was seen (a GREASE value counts as none).
    pub negotiated_version: Option<u16>,
    /// [`tls_flags`] bits.
    pub flags: u16,
}

impl TlsFacts {
    /// How the client offered to resume, if it did: TLS 1.3 PSK, a TLS 1.2 ticket, or a
    /// TLS 1.2 session ID (in that order of precedence: a TLS 1.3 client also sends a
    /// random legacy session ID, which is not a resumption offer when a PSK is absent and
    /// the client offers TLS 1.3).
    pub fn resumption_offered(&self) -> Option<ResumptionMethod> {
        if self.flags & tls_flags::PSK_OFFERED != 0 {
            Some(ResumptionMethod::Tls13Psk)
        } else if self.session_ticket_len > 0 {
            Some(ResumptionMethod::Tls12SessionTicket)
        } else if self.session_id_len > 0 && self.offered_versions & (1 << 4) == 0 {
            Some(ResumptionMethod::Tls12SessionId)
        } else {
            None
        }
    }

    pub fn resumption_accepted(&self) -> bool {
        self.flags
            & (tls_flags::SESSION_ID_ECHOED | tls_flags::PSK_ACCEPTED | tls_flags::ABBREVIATED)
            != 0
    }

    pub fn handshake_done(&self) -> bool {
        self.flags & tls_flags::HANDSHAKE_DONE != 0
    }

    /// Offered versions as names ("TLS1.2", ...).
    pub fn offered(&self) -> Vec<Cow<'static, str>> {
        (0..=4)
            .filter(|n| self.offered_versions & (1 << n) != 0)
            .map(|n| version_name(version::SSL3_0 + n))
            .collect()
    }
}

/// The first bytes of a payload, held inline as the kernel sends them (at most
/// [`SNIPPET_LEN`]): an event costs no allocation to decode, and a session none to keep
/// them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Snippet {
    len: u8,
    bytes: [u8; SNIPPET_LEN],
}

impl Snippet {
    /// The first [`SNIPPET_LEN`] bytes of `bytes`: the kernel never sends more.
    pub fn new(bytes: &[u8]) -> Snippet {
        let mut s = Snippet::default();
        let n = bytes.len().min(SNIPPET_LEN);
        s.bytes[..n].copy_from_slice(&bytes[..n]);
        s.len = n as u8;
        s
    }
}

impl Deref for Snippet {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq<[u8]> for Snippet {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Snippet {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

/// Zeek-style ssl_history letters, held inline (at most [`HISTORY_LEN`]) for the same
/// reason as [`Snippet`]. Always ASCII letters and `?`: a byte that is not a letter (the
/// kernel's map is memory a bug could fill with anything) reads as `?`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    len: u8,
    letters: [u8; HISTORY_LEN],
}

impl History {
    /// The first [`HISTORY_LEN`] of `letters`, anything but an ASCII letter shown as `?`.
    pub fn new(letters: &[u8]) -> History {
        let mut h = History::default();
        let n = letters.len().min(HISTORY_LEN);
        for (to, &c) in h.letters.iter_mut().zip(&letters[..n]) {
            *to = if c.is_ascii_alphabetic() { c } else { b'?' };
        }
        h.len = n as u8;
        h
    }

    pub fn as_str(&self) -> &str {
        let letters = &self.letters[..usize::from(self.len)];
        // SAFETY: `new` is the only writer of `letters`, and writes ASCII only.
        unsafe { std::str::from_utf8_unchecked(letters) }
    }
}

impl From<&str> for History {
    fn from(s: &str) -> History {
        History::new(s.as_bytes())
    }
}

impl Deref for History {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for History {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for History {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A version's name; codes the detector does not know (TLS 1.3 drafts `0x7f0e`..`0x7f1c`,
/// whatever comes next) are shown as their hex code, so that the reader can still tell
/// them apart. Only diagnosis details show it, never a metric label.
pub fn version_name(v: u16) -> Cow<'static, str> {
    match version::name(v) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("{v:#06x}")),
    }
}

impl KernelEvent {
    pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
        let expected = size_of::<Event>();
        if bytes.len() != expected {
            return Err(DecodeError::Size {
                got: bytes.len(),
                expected,
            });
        }
        // SAFETY: the length matches and Event is plain data valid for any bit pattern;
        // read_unaligned because ring-buffer records are only 8-byte aligned by contract.
        let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let class =
            |field, v| PayloadClass::from_u8(v).ok_or(DecodeError::Field { field, value: v });
        let kind = EventKind::from_u8(e.kind).ok_or(DecodeError::Field {
            field: "kind",
            value: e.kind,
        })?;
        let snippet_len = usize::from(e.snippet_len).min(e.snippet.len());
        let history_len = usize::from(e.history_len).min(e.history.len());
        // The kind says whether the event carries an alert, not a zero level: a record
        // with level 0 is on the wire too, and dropping its bytes here would lose the
        // event further on.
        let alert = matches!(
            (kind, e.detail),
            (EventKind::PlaintextAlert, _) | (EventKind::HandshakeAborted, abort::ALERT)
        )
        .then_some(Alert {
            level: e.alert_level,
            description: e.alert_description,
        });
        let abort = match (kind, e.detail) {
            (EventKind::HandshakeAborted, abort::ALERT) => Some(Abort::Alert),
            (EventKind::HandshakeAborted, abort::RST) => Some(Abort::Rst),
            (EventKind::HandshakeAborted, abort::FIN) => Some(Abort::Fin),
            (EventKind::HandshakeAborted, v) => {
                return Err(DecodeError::Field {
                    field: "detail",
                    value: v,
                });
            }
            _ => None,
        };
        Ok(KernelEvent {
            kind,
            ts_ns: e.ts_ns,
            flow_first_seen_ns: e.flow_first_seen_ns,
            gap_ns: e.gap_ns,
            client: SocketAddr::new(ip(e.family, e.client_addr)?, e.client_port),
            server: SocketAddr::new(ip(e.family, e.server_addr)?, e.server_port),
            sender: Side::from_u8(e.sender).ok_or(DecodeError::Field {
                field: "sender",
                value: e.sender,
            })?,
            alert,
            abort,
            client_first: class("client_first", e.client_first)?,
            server_first: class("server_first", e.server_first)?,
            handshake_seen: e.flow_flags & flow_flags::SYNACK_SEEN != 0,
            tls_port: e.flow_flags & flow_flags::TLS_PORT != 0,
            midstream_tls: e.flow_flags & flow_flags::MIDSTREAM_TLS != 0,
            midstream: e.flow_flags & flow_flags::MIDSTREAM != 0,
            record_len: e.record_len,
            snippet: Snippet::new(&e.snippet[..snippet_len]),
            tcp_seq: e.tcp_seq,
            payload_len: e.payload_len,
            history: History::new(&e.history[..history_len]),
            client_flags: e.dir_flags[0],
            server_flags: e.dir_flags[1],
            tls: TlsFacts {
                offered_versions: e.tls.offered_versions,
                session_id_len: e.tls.session_id_len,
                session_ticket_len: e.tls.session_ticket_len,
                negotiated_version: (e.tls.negotiated_version != 0
                    && !is_grease(e.tls.negotiated_version))
                .then_some(e.tls.negotiated_version),
                flags: e.tls.flags,
            },
        })
    }
}

/// The kernel stores IPv4 as IPv4-mapped IPv6 and says which family a flow is: an IPv4
/// flow's address shown as plain IPv4, an IPv6 flow's as IPv6 even when it is IPv4-mapped
/// (`::ffff:a.b.c.d`), so the two never look like one flow.
pub fn ip(fam: u8, a: Addr) -> Result<IpAddr, DecodeError> {
    let v6 = Ipv6Addr::from(addr_to_bytes(a));
    match (fam, v6.to_ipv4_mapped()) {
        (family::V4, Some(v4)) => Ok(IpAddr::V4(v4)),
        (family::V6, _) => Ok(IpAddr::V6(v6)),
        _ => Err(DecodeError::Field {
            field: "family",
            value: fam,
        }),
    }
}

/// The inverse of [`ip`], for building keys and crafted packets.
pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => addr_from_bytes(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => addr_from_bytes(v6.octets()),
    }
}

/// The [`family`] an address travels over.
pub fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => family::V4,
        IpAddr::V6(_) => family::V6,
    }
}

/// The kernel's key for the flow between `client` and `server` (of one family).
pub fn flow_key(client: SocketAddr, server: SocketAddr) -> FlowKey {
    FlowKey::normalised(
        family_of(client.ip()),
        &addr(client.ip()),
        client.port(),
        &addr(server.ip()),
        server.port(),
    )
    .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(e: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data with explicit padding.
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    fn sample() -> Event {
        // SAFETY: all-zero is a valid Event.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = EventKind::HandshakeAborted as u8;
        e.detail = abort::ALERT;
        e.ts_ns = 5;
        e.family = family::V4;
        e.client_addr = addr("10.0.0.1".parse().unwrap());
        e.server_addr = addr("10.0.0.2".parse().unwrap());
        e.client_port = 40000;
        e.server_port = 443;
        e.sender = Side::Server as u8;
        e.client_first = PayloadClass::ClientHello as u8;
        e.server_first = PayloadClass::TlsRecord as u8;
        e.flow_flags = flow_flags::SYNACK_SEEN | flow_flags::TLS_PORT;
        e.alert_level = 2;
        e.alert_description = 40;
        e.history[..3].copy_from_slice(b"CsL");
        e.history_len = 3;
        e.tls.session_ticket_len = 192;
        e.tls.negotiated_version = 0x0303;
        e
    }

    #[test]
    fn decodes_every_field() {
        let e = KernelEvent::decode(&raw(&sample())).unwrap();
        assert_eq!(e.kind, EventKind::HandshakeAborted);
        assert_eq!(e.abort, Some(Abort::Alert));
        assert_eq!(e.client, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(e.server, "10.0.0.2:443".parse().unwrap());
        assert_eq!(e.sender, Side::Server);
        assert_eq!(
            e.alert,
            Some(Alert {
                level: 2,
                description: 40
            })
        );
        assert_eq!(e.history, "CsL");
        assert_eq!(e.tls.negotiated_version, Some(0x0303));
        assert_eq!(
            e.tls.resumption_offered(),
            Some(ResumptionMethod::Tls12SessionTicket)
        );
        assert!(e.handshake_seen && e.tls_port);
    }

    #[test]
    fn history_shows_only_letters_and_lengths_are_clipped() {
        let mut e = sample();
        e.history[..4].copy_from_slice(b"C\xe2s\x00");
        e.history_len = 4;
        e.snippet = *b"0123456789abcdef";
        // Lengths beyond the arrays (a kernel/agent mismatch) read as the whole array.
        e.snippet_len = 200;
        let d = KernelEvent::decode(&raw(&e)).unwrap();
        assert_eq!(d.history, "C?s?");
        assert_eq!(d.snippet, &b"0123456789abcdef"[..]);
        e.history_len = 200;
        e.history = [b'D'; HISTORY_LEN];
        let d = KernelEvent::decode(&raw(&e)).unwrap();
        assert_eq!(d.history.len(), HISTORY_LEN);
        assert!(d.history.bytes().all(|c| c == b'D'));
    }

    #[test]
    fn rejects_wrong_size_and_unknown_values() {
        let bytes = raw(&sample());
        assert!(matches!(
            KernelEvent::decode(&bytes[..10]),
            Err(DecodeError::Size { got: 10, .. })
        ));
        let mut bad = sample();
        bad.sender = 7;
        assert_eq!(
            KernelEvent::decode(&raw(&bad)),
            Err(DecodeError::Field {
                field: "sender",
                value: 7
            })
        );
        let mut bad = sample();
        bad.kind = 99;
        assert!(KernelEvent::decode(&raw(&bad)).is_err());
    }

    #[test]
    fn tls13_legacy_session_id_is_not_a_resumption_offer() {
        let facts = TlsFacts {
            offered_versions: 1 << 4 | 1 << 3,
            session_id_len: 32,
            ..TlsFacts::default()
        };
        assert_eq!(facts.resumption_offered(), None);
        let tls12 = TlsFacts {
            offered_versions: 1 << 3,
            session_id_len: 32,
            ..TlsFacts::default()
        };
        assert_eq!(
            tls12.resumption_offered(),
            Some(ResumptionMethod::Tls12SessionId)
        );
    }

    #[test]
    fn unknown_versions_show_as_hex() {
        assert_eq!(version_name(0x0303), "TLS1.2");
        assert_eq!(version_name(0x0304), "TLS1.3");
        assert_eq!(version_name(0x7f17), "0x7f17");
        assert_eq!(version_name(0x0305), "0x0305");
        assert_eq!(version_name(0x0001), "0x0001");
    }

    #[test]
    fn grease_is_never_a_negotiated_version() {
        assert!(is_grease(0x0a0a) && is_grease(0x7a7a) && is_grease(0xfafa));
        assert!(!is_grease(0x0a1a) && !is_grease(0x0303) && !is_grease(0x7f17));
        let mut e = sample();
        e.tls.negotiated_version = 0x2a2a;
        assert_eq!(
            KernelEvent::decode(&raw(&e))
                .unwrap()
                .tls
                .negotiated_version,
            None
        );
        e.tls.negotiated_version = 0x7f17;
        assert_eq!(
            KernelEvent::decode(&raw(&e))
                .unwrap()
                .tls
                .negotiated_version,
            Some(0x7f17)
        );
    }

    /// Fuzzer input (kernel, seed 1, frame 1237): a plaintext alert record `15 03 03 00 02
    /// 00 40`, level 0. The event lost its alert in decoding, so the agent dropped it.
    #[test]
    fn an_alert_of_level_zero_keeps_its_bytes() {
        let mut e = sample();
        e.kind = EventKind::PlaintextAlert as u8;
        e.detail = 0;
        e.alert_level = 0;
        e.alert_description = 0x40;
        assert_eq!(
            KernelEvent::decode(&raw(&e)).unwrap().alert,
            Some(Alert {
                level: 0,
                description: 0x40
            })
        );
        e.kind = EventKind::IdleRst as u8;
        assert_eq!(KernelEvent::decode(&raw(&e)).unwrap().alert, None);
    }

    #[test]
    fn ipv6_stays_ipv6() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(ip(family::V6, addr(v6)), Ok(v6));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_not_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(addr(mapped), addr(v4), "the same address words");
        assert_eq!(ip(family::V6, addr(mapped)), Ok(mapped));
        assert_eq!(ip(family::V4, addr(v4)), Ok(v4));
        let peer: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let mapped_peer: SocketAddr = "[::ffff:10.0.0.2]:443".parse().unwrap();
        assert_ne!(
            flow_key(SocketAddr::new(mapped, 40000), mapped_peer),
            flow_key(SocketAddr::new(v4, 40000), peer)
        );
    }

    #[test]
    fn unknown_family_or_unmapped_ipv4_is_refused() {
        let mut e = sample();
        e.family = 0;
        assert!(matches!(
            KernelEvent::decode(&raw(&e)),
            Err(DecodeError::Field {
                field: "family",
                ..
            })
        ));
        let mut e = sample();
        e.client_addr = addr("fd00::1".parse().unwrap());
        assert!(KernelEvent::decode(&raw(&e)).is_err());
    }
}
