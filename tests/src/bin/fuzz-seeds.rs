//! Writes the seed corpora of the libFuzzer targets (tests/fuzz/seeds/TARGET/): small
//! captures in every format and link type the reader takes, real ring-buffer records of
//! the kernel program (run on crafted sessions through BPF_PROG_TEST_RUN), and
//! super-packets for the segmenter. Needs root (the kernel program). Lab captures
//! (`cargo xtask lab`) cut to their first packets join the pcap seeds when given:
//!
//! fuzz-seeds OUT_DIR [LAB_CAPTURE.pcap ...]

use std::{fs, path::Path};

use anyhow::{Context as _, bail};
use detector_common::tls::{
    alert::{FATAL, HANDSHAKE_FAILURE},
    content_type::{APPLICATION_DATA, HANDSHAKE},
    handshake::HELLO_REQUEST,
};
use tests::{
    frames::{self, Conversation, RST, client_hello, handshake, record},
    harness::Harness,
};

/// Packets kept of a lab capture: its handshake, a few KB.
const LAB_PACKETS: usize = 12;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        bail!("usage: fuzz-seeds OUT_DIR [LAB_CAPTURE.pcap ...]");
    };
    let out = Path::new(&out);
    let session = session_frames();
    let ts = |i: usize| 1_700_000_000_000_000_000 + i as u64 * 1_234_567;

    let pcap = out.join("pcap_reader");
    fs::create_dir_all(&pcap)?;
    let timed: Vec<(u64, Vec<u8>)> = session
        .iter()
        .enumerate()
        .map(|(i, f)| (ts(i), f.clone()))
        .collect();
    tests::kernel_fuzz::write_reproducer(&pcap.join("session-ns.pcap"), &timed)?;
    let mut micro_be = pcap_header(true, false, 1);
    let mut sll = pcap_header(false, false, 113);
    let mut raw = pcap_header(false, true, 101);
    for (i, f) in session.iter().take(4).enumerate() {
        pcap_record(&mut micro_be, true, i as u32, f);
        // Linux cooked: packet type, ARPHRD, address length and address, protocol.
        let mut c = vec![0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        c.extend_from_slice(&f[12..]);
        pcap_record(&mut sll, false, i as u32, &c);
        pcap_record(&mut raw, false, i as u32, &f[14..]);
    }
    fs::write(pcap.join("be-micro.pcap"), micro_be)?;
    fs::write(pcap.join("sll.pcap"), sll)?;
    fs::write(pcap.join("raw-ip.pcap"), raw)?;
    fs::write(pcap.join("session.pcapng"), pcapng(&session[..4]))?;
    for lab in args {
        let packets = detector_lab::pcapfile::read(Path::new(&lab))?;
        let name = Path::new(&lab)
            .file_stem()
            .context("a capture's file name")?
            .to_string_lossy()
            .into_owned();
        let cut: Vec<_> = packets.into_iter().take(LAB_PACKETS).collect();
        tests::kernel_fuzz::write_reproducer(&pcap.join(format!("lab-{name}.pcap")), &cut)?;
    }

    let events = out.join("event_decode");
    fs::create_dir_all(&events)?;
    let mut h = Harness::new();
    let mut n = 0;
    for f in &session {
        h.kernel.set_clock(h.now_ns)?;
        h.now_ns += 1_000_000;
        h.kernel.run_xdp(f)?;
        for raw in h.kernel.drain_events() {
            fs::write(events.join(format!("event-{n}.bin")), raw)?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("the crafted sessions raised no event");
    }

    let seg = out.join("segment");
    fs::create_dir_all(&seg)?;
    for (name, v6) in [("super-v4.bin", false), ("super-v6.bin", true)] {
        let mut conv = if v6 {
            Conversation::new(
                ("fd00::1".parse().unwrap(), 40_000),
                ("fd00::2".parse().unwrap(), 443),
            )
        } else {
            Conversation::v4(443)
        };
        let data: Vec<u8> = (0..4_000u32).map(|i| i as u8).collect();
        fs::write(seg.join(name), conv.client(&data).build())?;
    }
    println!("seeds written to {} ({n} events)", out.display());
    Ok(())
}

/// Frames of sessions that raise events: an HTTP request to 443, a fatal alert, a
/// HelloRequest, a reset handshake.
fn session_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut c = Conversation::v4(443);
    out.extend([c.syn(), c.syn_ack(), c.client(b"GET / HTTP/1.1\r\n\r\n")]);
    let mut c = Conversation::new(
        ("fd00::1".parse().unwrap(), 40_001),
        ("fd00::2".parse().unwrap(), 443),
    );
    out.extend([
        c.syn(),
        c.syn_ack(),
        c.client(&client_hello("seed.example")),
        c.server(&frames::alert(FATAL, HANDSHAKE_FAILURE)),
    ]);
    let mut c = Conversation::v4(8443);
    out.extend([
        c.syn_ack(),
        c.client(&client_hello("seed.example")),
        c.server(&record(HANDSHAKE, &frames::Hello::server().server_hello())),
        c.client(&record(APPLICATION_DATA, &[7; 40])),
        c.server(&record(APPLICATION_DATA, &[8; 40])),
        c.server(&record(HANDSHAKE, &handshake(HELLO_REQUEST, &[]))),
        c.server_flags(RST),
    ]);
    out.iter().map(|f| f.build()).collect()
}

fn pcap_header(big: bool, nanos: bool, link: u32) -> Vec<u8> {
    let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    let mut h = Vec::new();
    let put32 = |h: &mut Vec<u8>, v: u32| {
        h.extend(if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        })
    };
    put32(&mut h, magic);
    let (maj, min) = (2u16, 4u16);
    h.extend(if big {
        maj.to_be_bytes()
    } else {
        maj.to_le_bytes()
    });
    h.extend(if big {
        min.to_be_bytes()
    } else {
        min.to_le_bytes()
    });
    put32(&mut h, 0);
    put32(&mut h, 0);
    put32(&mut h, 65_535);
    put32(&mut h, link);
    h
}

fn pcap_record(out: &mut Vec<u8>, big: bool, sec: u32, data: &[u8]) {
    for v in [
        1_700_000_000 + sec,
        500,
        data.len() as u32,
        data.len() as u32,
    ] {
        out.extend(if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        });
    }
    out.extend_from_slice(data);
}

/// A little-endian pcapng: section header, an Ethernet interface with nanosecond
/// timestamps, enhanced packet blocks and one simple packet block.
fn pcapng(frames: &[Vec<u8>]) -> Vec<u8> {
    fn block(out: &mut Vec<u8>, typ: u32, body: &[u8]) {
        let mut b = body.to_vec();
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        let len = (12 + b.len()) as u32;
        out.extend(typ.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(b);
        out.extend(len.to_le_bytes());
    }
    let mut out = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend(1u16.to_le_bytes());
    shb.extend(0u16.to_le_bytes());
    shb.extend((-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = 1u16.to_le_bytes().to_vec();
    idb.extend(0u16.to_le_bytes());
    idb.extend(0u32.to_le_bytes());
    // if_tsresol = 9 (nanoseconds), then the end of options.
    idb.extend([9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    block(&mut out, 1, &idb);
    let (last, rest) = frames.split_last().expect("frames");
    for (i, f) in rest.iter().enumerate() {
        let ts = 1_700_000_000_000_000_000u64 + i as u64;
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend(((ts >> 32) as u32).to_le_bytes());
        epb.extend((ts as u32).to_le_bytes());
        epb.extend((f.len() as u32).to_le_bytes());
        epb.extend((f.len() as u32).to_le_bytes());
        epb.extend_from_slice(f);
        block(&mut out, 6, &epb);
    }
    let mut spb = (last.len() as u32).to_le_bytes().to_vec();
    spb.extend_from_slice(last);
    block(&mut out, 3, &spb);
    out
}
