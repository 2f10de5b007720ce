//! Kernel events, decoded from ring-buffer bytes into typed Rust values.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use detector_common::{Addr, Event, PayloadClass, Side, flow_flags, reasons};

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
    /// Program clock, see [`crate::clock`].
    pub ts_ns: u64,
    pub flow_first_seen_ns: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub sender: Side,
    pub plaintext_alert: Option<Alert>,
    pub protocol_mismatch: bool,
    pub client_first: PayloadClass,
    pub server_first: PayloadClass,
    /// The kernel saw the SYN-ACK, so roles are known rather than guessed.
    pub handshake_seen: bool,
    pub tls_port: bool,
    /// The first bytes of the packet's payload.
    pub snippet: Vec<u8>,
    pub tcp_seq: u32,
    pub payload_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
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
        let snippet_len = usize::from(e.snippet_len).min(e.snippet.len());
        Ok(KernelEvent {
            ts_ns: e.ts_ns,
            flow_first_seen_ns: e.flow_first_seen_ns,
            client: SocketAddr::new(ip(e.client_addr), e.client_port),
            server: SocketAddr::new(ip(e.server_addr), e.server_port),
            sender: Side::from_u8(e.sender).ok_or(DecodeError::Field {
                field: "sender",
                value: e.sender,
            })?,
            plaintext_alert: (e.reasons & reasons::PLAINTEXT_ALERT != 0).then_some(Alert {
                level: e.alert_level,
                description: e.alert_description,
            }),
            protocol_mismatch: e.reasons & reasons::PROTOCOL_MISMATCH != 0,
            client_first: class("client_first", e.client_first)?,
            server_first: class("server_first", e.server_first)?,
            handshake_seen: e.flow_flags & flow_flags::SYNACK_SEEN != 0,
            tls_port: e.flow_flags & flow_flags::TLS_PORT != 0,
            snippet: e.snippet[..snippet_len].to_vec(),
            tcp_seq: e.tcp_seq,
            payload_len: e.payload_len,
        })
    }
}

/// The kernel stores IPv4 as IPv4-mapped IPv6; show it as plain IPv4.
pub fn ip(a: Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The inverse of [`ip`], for building keys and crafted packets.
pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
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
        let mut snippet = [0u8; 16];
        snippet[..7].copy_from_slice(&[0x15, 3, 1, 0, 2, 2, 10]);
        Event {
            ts_ns: 5,
            flow_first_seen_ns: 1,
            client_addr: addr("10.0.0.1".parse().unwrap()),
            server_addr: addr("10.0.0.2".parse().unwrap()),
            client_port: 40000,
            server_port: 443,
            reasons: reasons::PLAINTEXT_ALERT,
            sender: Side::Server as u8,
            client_first: PayloadClass::HttpRequest as u8,
            server_first: PayloadClass::TlsRecord as u8,
            flow_flags: flow_flags::SYNACK_SEEN | flow_flags::TLS_PORT,
            alert_level: 2,
            alert_description: 10,
            snippet_len: 7,
            snippet,
            tcp_seq: 9,
            payload_len: 7,
            _pad: 0,
        }
    }

    #[test]
    fn decodes_every_field() {
        let e = KernelEvent::decode(&raw(&sample())).unwrap();
        assert_eq!(e.client, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(e.server, "10.0.0.2:443".parse().unwrap());
        assert_eq!(e.sender, Side::Server);
        assert_eq!(
            e.plaintext_alert,
            Some(Alert {
                level: 2,
                description: 10
            })
        );
        assert!(!e.protocol_mismatch);
        assert_eq!(e.client_first, PayloadClass::HttpRequest);
        assert!(e.handshake_seen && e.tls_port);
        assert_eq!(e.snippet, vec![0x15, 3, 1, 0, 2, 2, 10]);
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
    }

    #[test]
    fn ipv6_stays_ipv6() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(ip(addr(v6)), v6);
    }
}
