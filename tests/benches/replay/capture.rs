//! The capture `cargo xtask bench --replay` measures when given none, written the same
//! way every time: the kind of traffic replay's figures were first taken on (bulk
//! downloads and short sessions, segmented at an MTU of 1500 as with offloads off), so
//! that figures from different runs and machines compare.
//!
//! Three TLS downloads of 60 MB each run side by side (16 KiB records across 1448-byte
//! segments, an ACK every fourth segment), while 200 short sessions come and go: most
//! are clean TLS 1.3 exchanges; one in twenty ends its handshake with a fatal alert,
//! one in twenty with a RST, one in twenty is a TLS 1.2 session whose server sends a
//! HelloRequest. About 157,000 packets.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use detector_common::tls::{
    alert::{FATAL, HANDSHAKE_FAILURE},
    content_type::{APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE},
    handshake::HELLO_REQUEST,
    version::{TLS1_2, TLS1_3},
};
use tests::frames::{self, ACK, Conversation, FIN, Hello, RST, handshake, record, versions_ext};

const DOWNLOADS: usize = 3;
const DOWNLOAD_BYTES: usize = 60_000_000;
const SHORT_SESSIONS: usize = 200;
const MSS: usize = 1448;
/// A full TLS record's plaintext, as servers send bulk data.
const RECORD_PLAINTEXT: usize = 16_384;
/// The AEAD tag and inner content type of a TLS 1.3 record.
const RECORD_OVERHEAD: usize = 17;
const ACK_EVERY: usize = 4;
/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000_000_000;
/// Between packets of the downloads (about 3 Gb/s together).
const BULK_GAP_NS: u64 = 4_000;
/// Between packets of a short session.
const SHORT_GAP_NS: u64 = 150_000;

/// Writes the capture to `path` unless a complete one is there; returns its packets.
pub fn ensure(path: &Path) -> Result<u64> {
    let done = path.with_extension("packets");
    if let Ok(n) = std::fs::read_to_string(&done)
        && path.exists()
        && let Ok(n) = n.trim().parse()
    {
        return Ok(n);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    let n = write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    // Written last: a capture without it is incomplete and is written again.
    std::fs::write(&done, n.to_string())?;
    Ok(n)
}

/// A classic pcap with nanosecond timestamps, Ethernet frames.
struct Pcap {
    w: BufWriter<File>,
    packets: u64,
}

impl Pcap {
    fn create(path: &Path) -> Result<Pcap> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        // Magic (nanosecond resolution), version 2.4, zone, accuracy, snap length, Ethernet.
        w.write_all(&0xa1b2_3c4d_u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        for v in [0u32, 0, 262_144, 1] {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(Pcap { w, packets: 0 })
    }

    fn packet(&mut self, ts_ns: u64, frame: &[u8]) -> Result<()> {
        let len = frame.len() as u32;
        for v in [
            (ts_ns / 1_000_000_000) as u32,
            (ts_ns % 1_000_000_000) as u32,
            len,
            len,
        ] {
            self.w.write_all(&v.to_le_bytes())?;
        }
        self.w.write_all(frame)?;
        self.packets += 1;
        Ok(())
    }
}

fn write(path: &Path) -> Result<u64> {
    let mut out = Pcap::create(path)?;
    let short = short_sessions();
    let mut next_short = 0;
    let mut downloads: Vec<Download> = (0..DOWNLOADS).map(Download::new).collect();
    let mut t = T0;
    loop {
        let mut any = false;
        for d in &mut downloads {
            for frame in d.step() {
                any = true;
                while let Some((ts, f)) = short.get(next_short).filter(|(ts, _)| *ts <= t) {
                    out.packet(*ts, f)?;
                    next_short += 1;
                }
                out.packet(t, &frame)?;
                t += BULK_GAP_NS;
            }
        }
        if !any {
            break;
        }
    }
    for (ts, f) in &short[next_short..] {
        out.packet(*ts, f)?;
    }
    out.w.flush()?;
    Ok(out.packets)
}

/// One download: handshake, a request, the server's records until DOWNLOAD_BYTES, close.
struct Download {
    conv: Conversation,
    /// Frames of the handshake and of the end, handed out before and after the data.
    opening: Vec<Vec<u8>>,
    /// Server bytes not yet segmented (part of the last record).
    pending: Vec<u8>,
    plaintext_sent: usize,
    segments: usize,
    closed: bool,
}

impl Download {
    fn new(i: usize) -> Download {
        let mut conv = Conversation::new(
            (
                format!("10.1.0.{}", 10 + i).parse().unwrap(),
                50_000 + i as u16,
            ),
            ("10.2.0.1".parse().unwrap(), 443),
        );
        let opening = tls13_opening(&mut conv, "bulk.example");
        Download {
            conv,
            opening,
            pending: Vec::new(),
            plaintext_sent: 0,
            segments: 0,
            closed: false,
        }
    }

    /// The next frames of the download (one segment and perhaps its ACK); none at the end.
    fn step(&mut self) -> Vec<Vec<u8>> {
        if !self.opening.is_empty() {
            return vec![self.opening.remove(0)];
        }
        if self.closed {
            return Vec::new();
        }
        while self.pending.len() < MSS && self.plaintext_sent < DOWNLOAD_BYTES {
            let n = RECORD_PLAINTEXT.min(DOWNLOAD_BYTES - self.plaintext_sent);
            self.pending
                .extend(record(APPLICATION_DATA, &vec![0x5a; n + RECORD_OVERHEAD]));
            self.plaintext_sent += n;
        }
        if self.pending.is_empty() {
            self.closed = true;
            return tls13_close(&mut self.conv);
        }
        let n = MSS.min(self.pending.len());
        let seg: Vec<u8> = self.pending.drain(..n).collect();
        let mut out = vec![self.conv.server(&seg).build()];
        self.segments += 1;
        if self.segments.is_multiple_of(ACK_EVERY) {
            out.push(self.conv.client_flags(ACK).build());
        }
        out
    }
}

/// SYN, SYN-ACK, ACK, then a TLS 1.3 handshake (middlebox-compatible, as browsers and
/// OpenSSL send it) and the client's request.
fn tls13_opening(conv: &mut Conversation, host: &str) -> Vec<Vec<u8>> {
    let hello = Hello::client(host).with(
        detector_common::tls::extension::SUPPORTED_VERSIONS,
        versions_ext(&[TLS1_3, TLS1_2]),
    );
    let server_hello = Hello::server().with(
        detector_common::tls::extension::SUPPORTED_VERSIONS,
        TLS1_3.to_be_bytes().to_vec(),
    );
    let mut flight = record(HANDSHAKE, &server_hello.server_hello());
    flight.extend(record(CHANGE_CIPHER_SPEC, &[1]));
    flight.extend(record(APPLICATION_DATA, &[0xa5; 900]));
    let mut finished = record(CHANGE_CIPHER_SPEC, &[1]);
    finished.extend(record(APPLICATION_DATA, &[0xa5; 53]));
    vec![
        conv.syn().build(),
        conv.syn_ack().build(),
        conv.client_flags(ACK).build(),
        conv.client(&frames::tls10(record(HANDSHAKE, &hello.client_hello())))
            .build(),
        conv.server(&flight).build(),
        conv.client(&finished).build(),
        conv.client(&record(APPLICATION_DATA, &[0xa5; 120])).build(),
    ]
}

/// close_notify (encrypted) and FIN from both sides.
fn tls13_close(conv: &mut Conversation) -> Vec<Vec<u8>> {
    let notify = record(APPLICATION_DATA, &[0xa5; 19]);
    let server = conv.server(&notify).build();
    let client = conv.client(&notify).build();
    let server_fin = conv.server_flags(FIN | ACK).build();
    let client_fin = conv.client_flags(FIN | ACK).build();
    vec![server, client, server_fin, client_fin]
}

/// Every short session's frames with their times, in time order.
fn short_sessions() -> Vec<(u64, Vec<u8>)> {
    // Spread over the time the downloads take.
    let downloads_packets = DOWNLOADS * DOWNLOAD_BYTES / MSS * (ACK_EVERY + 1) / ACK_EVERY;
    let span = downloads_packets as u64 * BULK_GAP_NS;
    let mut all = Vec::new();
    for k in 0..SHORT_SESSIONS {
        let mut conv = Conversation::new(
            (
                format!("10.1.{}.{}", 1 + k / 200, 1 + k % 200)
                    .parse()
                    .unwrap(),
                40_000 + k as u16,
            ),
            (format!("10.2.0.{}", 2 + k % 8).parse().unwrap(), 443),
        );
        let frames = match k % 20 {
            0 => {
                let mut f = opening_to_client_hello(&mut conv);
                f.push(
                    conv.server(&frames::alert(FATAL, HANDSHAKE_FAILURE))
                        .build(),
                );
                f.push(conv.server_flags(FIN | ACK).build());
                f.push(conv.client_flags(FIN | ACK).build());
                f
            }
            1 => {
                let mut f = opening_to_client_hello(&mut conv);
                f.push(conv.server_flags(RST | ACK).build());
                f
            }
            2 => hello_request_session(&mut conv),
            _ => {
                let mut f = tls13_opening(&mut conv, "short.example");
                f.push(conv.server(&record(APPLICATION_DATA, &[0xa5; 700])).build());
                f.push(conv.server(&record(APPLICATION_DATA, &[0xa5; 300])).build());
                f.push(conv.client_flags(ACK).build());
                f.extend(tls13_close(&mut conv));
                f
            }
        };
        let start = T0 + span * k as u64 / SHORT_SESSIONS as u64;
        all.extend(
            frames
                .into_iter()
                .enumerate()
                .map(|(i, f)| (start + i as u64 * SHORT_GAP_NS, f)),
        );
    }
    all.sort_by_key(|(ts, _)| *ts);
    all
}

fn opening_to_client_hello(conv: &mut Conversation) -> Vec<Vec<u8>> {
    vec![
        conv.syn().build(),
        conv.syn_ack().build(),
        conv.client_flags(ACK).build(),
        conv.client(&frames::client_hello("short.example")).build(),
    ]
}

/// A TLS 1.2 session in its application-data phase whose server sends a plaintext
/// HelloRequest, which the client ignores before closing.
fn hello_request_session(conv: &mut Conversation) -> Vec<Vec<u8>> {
    let mut f = opening_to_client_hello(conv);
    f.push(
        conv.server(&record(HANDSHAKE, &Hello::server().server_hello()))
            .build(),
    );
    let mut finished = record(CHANGE_CIPHER_SPEC, &[1]);
    finished.extend(record(HANDSHAKE, &[0xa5; 40]));
    f.push(conv.client(&finished).build());
    f.push(conv.server(&finished).build());
    f.push(conv.client(&record(APPLICATION_DATA, &[0xa5; 100])).build());
    f.push(conv.server(&record(APPLICATION_DATA, &[0xa5; 400])).build());
    f.push(
        conv.server(&record(HANDSHAKE, &handshake(HELLO_REQUEST, &[])))
            .build(),
    );
    f.push(conv.client_flags(FIN | ACK).build());
    f.push(conv.server_flags(FIN | ACK).build());
    f
}
