//! Bytes from the wire made safe to show: every place that puts a peer's bytes (an SNI, a
//! request line, a server's answer) into a JSON line, an evidence sentence or a log line
//! goes through here.
//!
//! The rule is the simplest one that is sound: printable ASCII (0x20..=0x7e) stays as it
//! is, every other byte becomes `\xNN`. That covers C0 and C1 controls, terminal escape
//! sequences, and every non-ASCII character at once, including the invisible ones that
//! change what a reader sees (bidi overrides U+202A–202E and U+2066–2069, zero-width
//! U+200B–200F, U+FEFF), whose UTF-8 bytes are all above 0x7f. A backslash becomes `\\`,
//! so a sender cannot write a `\x..` that reads as an escape; a double quote becomes
//! `\x22`, so a quoted field cannot be ended from inside.

use std::fmt::Write as _;

/// `bytes` with every byte outside printable ASCII, the backslash and the double quote
/// escaped; the result is printable ASCII only.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\x22"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// `bytes` escaped and in double quotes: a field of prose whose end the bytes cannot move.
pub fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", escape(bytes))
}

/// Payload bytes as a reader would want them: a payload that starts as text is shown as its
/// first line, escaped and quoted; anything else as hex.
pub fn show_bytes(b: &[u8]) -> String {
    let printable = b
        .iter()
        .take_while(|c| c.is_ascii_graphic() || **c == b' ')
        .count();
    if printable >= 4 {
        let line = b
            .split(|&c| c == b'\r' || c == b'\n')
            .next()
            .unwrap_or_default();
        quoted(line.trim_ascii_end())
    } else {
        hex(b)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_shown_as_text_or_hex() {
        assert_eq!(
            show_bytes(b"GET / HTTP/1.1\r\nHost: x"),
            "\"GET / HTTP/1.1\""
        );
        assert_eq!(
            show_bytes(&[0x15, 3, 1, 0, 2, 2, 10]),
            "15 03 01 00 02 02 0a"
        );
        // Text that turns into something else is shown whole, escaped.
        assert_eq!(
            show_bytes("GET /\u{202e}lmth.x\"; y".as_bytes()),
            "\"GET /\\xe2\\x80\\xaelmth.x\\x22; y\""
        );
    }

    #[test]
    fn printable_ascii_passes_unchanged() {
        let all: Vec<u8> = (0x20..=0x7e)
            .filter(|b| *b != b'\\' && *b != b'"')
            .collect();
        assert_eq!(escape(&all).as_bytes(), &all[..]);
        assert_eq!(escape(b"GET / HTTP/1.1"), "GET / HTTP/1.1");
    }

    #[test]
    fn every_other_byte_is_hex_escaped() {
        for b in (0u8..0x20).chain(0x7f..=0xff) {
            assert_eq!(escape(&[b]), format!("\\x{b:02x}"), "byte {b:#04x}");
        }
        assert_eq!(escape(b"a\r\n\tb\x1b[31m"), "a\\x0d\\x0a\\x09b\\x1b[31m");
    }

    #[test]
    fn invisible_and_direction_changing_characters_are_shown() {
        // C1 control NEL (U+0085), as UTF-8 and as a raw Latin-1 byte.
        assert_eq!(escape("x\u{85}y".as_bytes()), "x\\xc2\\x85y");
        assert_eq!(escape(b"x\x85y"), "x\\x85y");
        // Bidi overrides and isolates: "evil.com" shown reversed would read "moc.live".
        for c in ['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}']
            .into_iter()
            .chain(['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}'])
            // Zero-width space, non-joiner, joiner, LRM, RLM; byte-order mark.
            .chain([
                '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{feff}',
            ])
        {
            let s = format!("a{c}b");
            let e = escape(s.as_bytes());
            let utf8: String = c
                .encode_utf8(&mut [0; 4])
                .bytes()
                .map(|b| format!("\\x{b:02x}"))
                .collect();
            assert_eq!(e, format!("a{utf8}b"), "U+{:04X}", u32::from(c));
            assert!(e.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }

    #[test]
    fn escapes_cannot_be_forged() {
        // A literal backslash-x from the wire must not read as an escaped byte.
        assert_eq!(escape(b"\\x41"), "\\\\x41");
        assert_ne!(escape(b"\\x41"), escape(b"\x41"));
        // Distinct inputs give distinct outputs: undoing the escape gives the bytes back.
        for input in [&b"\\\\x22"[..], b"\"", b"\\\"", b"\\x5c", b"\x5c"] {
            assert_eq!(unescape(&escape(input)), input, "{input:?}");
        }
    }

    #[test]
    fn a_quoted_field_cannot_be_ended_from_inside() {
        let q = quoted(b"GET /\"; server answered with \"x");
        assert_eq!(q, "\"GET /\\x22; server answered with \\x22x\"");
        // Exactly two double quotes: the ones that delimit the field.
        assert_eq!(q.matches('"').count(), 2);
        assert!(q.starts_with('"') && q.ends_with('"'));
    }

    /// The inverse, to show the escaping loses nothing.
    fn unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1)) {
                (b'\\', Some(b'\\')) => {
                    out.push(b'\\');
                    i += 2;
                }
                (b'\\', Some(b'x')) => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 4;
                }
                (b'\\', _) => panic!("a lone backslash in {s:?}"),
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }
}
