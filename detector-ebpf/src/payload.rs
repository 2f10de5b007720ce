//! What the first bytes of a TCP payload say about its protocol.

use detector_common::{
    PayloadClass, SNIPPET_LEN,
    tls::{content_type, handshake},
};

use crate::{packet::Packet, tls};

/// The first bytes of a payload, zero padded.
pub struct Head {
    pub bytes: [u8; SNIPPET_LEN],
    pub len: usize,
}

#[inline(always)]
pub fn read_head<P: Packet>(p: &P, off: usize, payload_len: usize) -> Head {
    let mut bytes = [0u8; SNIPPET_LEN];
    let len = if payload_len < SNIPPET_LEN {
        payload_len
    } else {
        SNIPPET_LEN
    };
    if !p.load_into(off, len, &mut bytes) {
        return Head { bytes, len: 0 };
    }
    Head { bytes, len }
}

/// A TLS record header with a body: a first payload that starts with an empty record is
/// not taken for TLS.
#[inline(always)]
fn is_tls_header(h: &Head) -> bool {
    let b = &h.bytes;
    let len = u16::from_be_bytes([b[3], b[4]]) as u32;
    h.len >= 5 && len > 0 && tls::plausible(b[0], b[1], b[2], len)
}

#[inline(always)]
pub fn classify(h: &Head) -> PayloadClass {
    if is_tls_header(h) {
        if h.bytes[0] == content_type::HANDSHAKE
            && h.len >= 6
            && h.bytes[5] == handshake::CLIENT_HELLO
        {
            return PayloadClass::ClientHello;
        }
        return PayloadClass::TlsRecord;
    }
    if starts_with(h, b"HTTP/") {
        return PayloadClass::HttpResponse;
    }
    if is_http_request(h) {
        return PayloadClass::HttpRequest;
    }
    PayloadClass::Other
}

/// An HTTP/1.x request line, or the HTTP/2 cleartext preface (`PRI * HTTP/2.0`).
#[inline(always)]
fn is_http_request(h: &Head) -> bool {
    // Dispatch on the first byte so the common case costs one comparison.
    match h.bytes[0] {
        b'G' => starts_with(h, b"GET "),
        b'P' => {
            starts_with(h, b"POST ")
                || starts_with(h, b"PUT ")
                || starts_with(h, b"PATCH ")
                || starts_with(h, b"PRI * ")
        }
        b'H' => starts_with(h, b"HEAD "),
        b'D' => starts_with(h, b"DELETE "),
        b'O' => starts_with(h, b"OPTIONS "),
        b'C' => starts_with(h, b"CONNECT "),
        b'T' => starts_with(h, b"TRACE "),
        _ => false,
    }
}

#[inline(always)]
fn starts_with<const N: usize>(h: &Head, prefix: &[u8; N]) -> bool {
    if h.len < N {
        return false;
    }
    let mut i = 0;
    while i < N {
        if h.bytes[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}
