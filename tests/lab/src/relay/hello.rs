//! Reading a ClientHello: where it ends, and whether (and how) it offers to resume.

use std::fmt;

use anyhow::Result;

use detector_common::{
    MAX_TLS_RECORD,
    tls::{
        content_type,
        extension::{PRE_SHARED_KEY, SERVER_NAME, SESSION_TICKET, SUPPORTED_VERSIONS},
        handshake as hs,
        version::{TLS1_2, is_grease},
    },
};

use super::MAX_HELLO_BYTES;

/// Largest TLS record body (2^14 + 2048, the TLSCiphertext bound).
const MAX_RECORD_LEN: usize = MAX_TLS_RECORD as usize;

/// How a client offered to resume; names match the detector's `detail.method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    Tls12SessionId,
    Tls12SessionTicket,
    Tls13Psk,
}

impl Resumption {
    /// The detector's name for this method.
    pub fn as_str(self) -> &'static str {
        match self {
            Resumption::Tls12SessionId => "tls12_session_id",
            Resumption::Tls12SessionTicket => "tls12_session_ticket",
            Resumption::Tls13Psk => "tls13_psk",
        }
    }
}

impl fmt::Display for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the relay read from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Length of the session ID (0..=32).
    pub session_id_len: u8,
    /// Length of the `session_ticket` extension's data, when the extension is present.
    pub session_ticket_len: Option<usize>,
    /// A `pre_shared_key` extension is present.
    pub psk: bool,
    /// Versions listed in `supported_versions` (empty when the extension is absent).
    pub supported_versions: Vec<u16>,
    /// The first host name of `server_name`.
    pub sni: Option<String>,
}

impl ClientHelloInfo {
    /// Whether the hello offers TLS 1.3 (or anything above TLS 1.2).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions
            .iter()
            .any(|&v| v > TLS1_2 && !is_grease(v))
    }

    /// The resumption this hello offers, if any (PSK first, then ticket, then session ID,
    /// as a server would try them).
    pub fn resumption(&self) -> Option<Resumption> {
        if self.psk {
            Some(Resumption::Tls13Psk)
        } else if self.session_ticket_len.is_some_and(|n| n > 0) {
            Some(Resumption::Tls12SessionTicket)
        } else if self.session_id_len > 0 && !self.offers_tls13() {
            Some(Resumption::Tls12SessionId)
        } else {
            None
        }
    }
}

/// Result of looking at the first bytes a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// The bytes so far are a valid beginning: read more.
    NeedMore,
    /// A complete ClientHello; `consumed` is the length of the records that carried it.
    Complete {
        info: ClientHelloInfo,
        consumed: usize,
    },
    /// Not a ClientHello (not TLS, another record type, or malformed), and why.
    NotClientHello(String),
}

/// Parses the ClientHello at the start of `buf`, which may be split over several
/// handshake records and may be incomplete (then [`Hello::NeedMore`]).
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        // Is the handshake message complete?
        if handshake.len() >= 4 {
            if handshake[0] != hs::CLIENT_HELLO {
                return Hello::NotClientHello(format!(
                    "handshake type {} where a ClientHello (1) was expected",
                    handshake[0]
                ));
            }
            let len = u24(&handshake[1..4]);
            if len + 4 > MAX_HELLO_BYTES {
                return Hello::NotClientHello(format!("ClientHello of {len} bytes is too long"));
            }
            if handshake.len() >= len + 4 {
                return match parse_hello_body(&handshake[4..4 + len]) {
                    Ok(info) => Hello::Complete {
                        info,
                        consumed: pos,
                    },
                    Err(why) => Hello::NotClientHello(why),
                };
            }
        }
        let Some(header) = buf.get(pos..pos + 5) else {
            return check_partial_header(&buf[pos..]);
        };
        if header[0] != content_type::HANDSHAKE {
            return Hello::NotClientHello(format!(
                "record type {} where a handshake record (22) was expected; first bytes {:02x?}",
                header[0],
                &buf[..buf.len().min(8)]
            ));
        }
        if header[1] != 3 {
            return Hello::NotClientHello(format!(
                "record version {:02x}{:02x} is not TLS",
                header[1], header[2]
            ));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Hello::NotClientHello(format!("record length {len} is not TLS"));
        }
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Hello::NeedMore;
        };
        handshake.extend_from_slice(body);
        pos += 5 + len;
    }
}

/// A record header cut short: read more if what is there could start a handshake record.
pub(crate) fn check_partial_header(rest: &[u8]) -> Hello {
    match rest {
        [] | [22] | [22, 3] | [22, 3, _] | [22, 3, _, _] => Hello::NeedMore,
        _ => Hello::NotClientHello(format!("first bytes {rest:02x?} are not a TLS handshake")),
    }
}

pub(crate) fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A bounds-checked reader over one message.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "ClientHello truncated in {what}: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u8(what)?;
        self.take(n.into(), what)
    }

    fn vec16(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u16(what)?;
        self.take(n.into(), what)
    }

    fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
}

pub(crate) fn parse_hello_body(body: &[u8]) -> Result<ClientHelloInfo, String> {
    let mut c = Cursor { buf: body, pos: 0 };
    let mut info = ClientHelloInfo {
        legacy_version: c.u16("legacy_version")?,
        ..Default::default()
    };
    c.take(32, "random")?;
    let session_id = c.vec8("session_id")?;
    if session_id.len() > 32 {
        return Err(format!("session ID of {} bytes", session_id.len()));
    }
    info.session_id_len = session_id.len() as u8;
    c.vec16("cipher_suites")?;
    c.vec8("compression_methods")?;
    if c.rest() == 0 {
        // No extensions at all (old clients).
        return Ok(info);
    }
    let mut ext = Cursor {
        buf: c.vec16("extensions")?,
        pos: 0,
    };
    while ext.rest() > 0 {
        let typ = ext.u16("extension type")?;
        let data = ext.vec16("extension data")?;
        match typ {
            SERVER_NAME => info.sni = parse_sni(data)?,
            SESSION_TICKET => info.session_ticket_len = Some(data.len()),
            PRE_SHARED_KEY => info.psk = true,
            SUPPORTED_VERSIONS => {
                let mut v = Cursor { buf: data, pos: 0 };
                let list = v.vec8("supported_versions")?;
                info.supported_versions = list
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
            }
            _ => {}
        }
    }
    Ok(info)
}

pub(crate) fn parse_sni(data: &[u8]) -> Result<Option<String>, String> {
    let mut c = Cursor { buf: data, pos: 0 };
    let mut list = Cursor {
        buf: c.vec16("server_name list")?,
        pos: 0,
    };
    while list.rest() > 0 {
        let name_type = list.u8("server_name type")?;
        let name = list.vec16("server_name")?;
        if name_type == 0 {
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
    }
    Ok(None)
}
