//! `detector replay` on captures written from crafted frames: clock, segmentation of
//! super-packets, and clear errors that lose nothing found before them.

use std::{path::PathBuf, process::Command};

use detector_lab::{
    agent::{detector_bin, replay},
    pcapfile,
};
use tests::frames::{self, Conversation};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
/// 2026-01-01T00:00:00Z in nanoseconds.
const T0: u64 = 1_767_225_600_000_000_000;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("detector-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// An HTTP request to 443 answered by the alert, then a ClientHello answered by HTTP 400
/// whose answer is one 10 KB super-packet, as captured on a host with GRO.
fn two_failures() -> Vec<(u64, Vec<u8>)> {
    let mut http = Conversation::v4(443);
    let mut hello = Conversation::new(
        ("10.1.0.1".parse().unwrap(), 40_100),
        ("10.2.0.1".parse().unwrap(), 80),
    );
    let mut big_answer = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
    big_answer.resize(10_000, b'x');
    let frames = [
        http.syn_ack(),
        http.client(GET),
        http.server(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x0a]),
        hello.syn_ack(),
        hello.client(&frames::client_hello("example.org")),
        hello.server(&big_answer),
    ];
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| (T0 + i as u64 * 1_000_000, f.build()))
        .collect()
}

#[test]
fn replay_uses_capture_time_and_segments_super_packets() {
    let path = tmp("two.pcap");
    pcapfile::write(&path, &two_failures()).unwrap();
    let (d, summary) = replay(&path, &[]).unwrap();
    let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["http_to_tls_port", "tls_to_plaintext_port"],
        "{d:#?}"
    );
    // The capture's clock, not the wall clock.
    assert_eq!(d[0]["ts"], "2026-01-01T00:00:00.001Z");
    assert_eq!(d[0]["detail"]["server_answer"], "tls_alert");
    assert!(
        d[1]["evidence"].as_str().unwrap().contains("HTTP/1.1 400"),
        "{}",
        d[1]
    );
    // 10 000 payload bytes → 7 segments of at most 1448.
    assert!(summary.contains("6 packets (12 frames"), "{summary}");
}

#[test]
fn truncated_capture_names_file_and_offset_after_its_diagnoses() {
    let path = tmp("cut.pcap");
    pcapfile::write(&path, &two_failures()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Cut inside the last record's data.
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let out = Command::new(detector_bin().unwrap())
        .arg("replay")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first session's diagnosis was found before the damage and is not lost.
    assert!(stdout.contains("\"http_to_tls_port\""), "stdout: {stdout}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("offset"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn not_a_capture_is_a_clear_error() {
    let path = tmp("garbage.pcap");
    std::fs::write(&path, b"this is not a capture file at all").unwrap();
    let out = Command::new(detector_bin().unwrap())
        .arg("replay")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("garbage.pcap"), "{stderr}");
    let missing = Command::new(detector_bin().unwrap())
        .args(["replay", "/nonexistent/x.pcap"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.pcap"));
}

/// A host name no one should see as written: a right-to-left override (which shows
/// `evil` as `live`), a C1 control both as UTF-8 and as a raw byte, a zero-width space,
/// a byte-order mark, a backslash that could pose as an escape, and an ANSI colour.
const HOSTILE_SNI: &[u8] =
    b"a\xe2\x80\xaelive\xc2\x85\x9bb\xe2\x80\x8bc\xef\xbb\xbf\\x41\x1b[31m.test";
/// How the agent must show it: printable ASCII, every other byte as `\xNN`.
const HOSTILE_SNI_SHOWN: &str =
    r"a\xe2\x80\xaelive\xc2\x85\x9bb\xe2\x80\x8bc\xef\xbb\xbf\\x41\x1b[31m.test";
/// An HTTP request to port 443 whose path tries to end its quoted field in the evidence
/// and write some of its own, with a bidi override inside the 16 bytes the kernel keeps.
const FORGING_REQUEST: &[u8] = b"GET /\"; ok\xe2\x80\xaeb HTTP/1.1\r\nHost: x\r\n\r\n";

/// A ClientHello carrying `name` as its SNI, byte for byte.
fn client_hello_naming(name: &[u8]) -> Vec<u8> {
    use detector_common::tls::{content_type, extension};
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(extension::SERVER_NAME_HOST);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut hello = frames::Hello::client("x");
    hello.extensions = vec![(extension::SERVER_NAME, sni)];
    frames::tls10(frames::record(
        content_type::HANDSHAKE,
        &hello.client_hello(),
    ))
}

/// Wire bytes reach stdout escaped, through the real kernel program: a hostile SNI (kept
/// by the kernel in its SNI map) in a fatal-alert diagnosis, and a request forging
/// evidence structure in an http_to_tls_port diagnosis.
#[test]
fn wire_bytes_come_out_escaped_and_quoted() {
    let mut named = Conversation::new(
        ("10.1.0.7".parse().unwrap(), 40_700),
        ("10.2.0.7".parse().unwrap(), 443),
    );
    let mut forging = Conversation::new(
        ("10.1.0.8".parse().unwrap(), 40_800),
        ("10.2.0.8".parse().unwrap(), 443),
    );
    let frames = [
        named.syn_ack(),
        named.client(&client_hello_naming(HOSTILE_SNI)),
        // handshake_failure, fatal.
        named.server(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]),
        forging.syn_ack(),
        forging.client(FORGING_REQUEST),
    ];
    let capture: Vec<(u64, Vec<u8>)> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| (T0 + i as u64 * 1_000_000, f.build()))
        .collect();
    let path = tmp("hostile.pcap");
    pcapfile::write(&path, &capture).unwrap();
    let out = Command::new(detector_bin().unwrap())
        .arg("replay")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not one byte a terminal could act on or render deceptively.
    if let Some(b) = out
        .stdout
        .iter()
        .find(|&&b| b != b'\n' && !(0x20..=0x7e).contains(&b))
    {
        panic!(
            "byte {b:#04x} in stdout: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let d = detector_lab::agent::parse_lines(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(d.len(), 2, "{d:#?}");
    let of_kind = |k: &str| {
        d.iter()
            .find(|x| x["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in {d:#?}"))
    };

    let alert = of_kind("fatal_alert");
    assert_eq!(alert["sni"], HOSTILE_SNI_SHOWN, "{alert}");

    let mismatch = of_kind("http_to_tls_port");
    let evidence = mismatch["evidence"].as_str().unwrap();
    // The request's 16 bytes, quoted, with its quote and its override escaped.
    let quoted = r#""GET /\x22; ok\xe2\x80\xaeb H""#;
    assert_eq!(
        evidence_pieces(evidence),
        [
            format!("client's first payload {quoted}... is an HTTP request to TLS port 443"),
            "no answer from the server seen".to_string(),
        ],
        "{evidence}"
    );
    // The hex in detail keeps every byte as sent.
    assert_eq!(
        mismatch["detail"]["client_bytes"],
        "47 45 54 20 2f 22 3b 20 6f 6b e2 80 ae 62 20 48"
    );
}

/// Evidence split into its sentences as a reader would: at "; " outside double quotes.
fn evidence_pieces(evidence: &str) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut quoted = false;
    let mut chars = evidence.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == ';' && !quoted && chars.peek() == Some(&' ') {
            chars.next();
            pieces.push(String::new());
            continue;
        }
        pieces.last_mut().unwrap().push(c);
    }
    assert!(!quoted, "an unterminated quote in {evidence}");
    pieces
}

/// A capture whose first records cannot start the clock (a runt, a record without a
/// timestamp), then a flow first seen mid-stream that retransmits into silence, 0.6 s
/// after the first real timestamp. The detector has then run for 0.6 s, far less than the
/// idle threshold, so the flow cannot have been idle that long unseen: no diagnosis. A
/// clock started at the epoch (by the zero timestamp) or never started (by the runt)
/// would call it an idle_timeout_drop; the control, whose clock really started 40 s
/// earlier, shows that it would be seen.
#[test]
fn records_that_cannot_start_the_clock_are_skipped_and_counted() {
    use detector_common::tls::content_type;
    let data = frames::record(content_type::APPLICATION_DATA, &[0x17; 100]);
    let mut other = Conversation::new(
        ("10.1.0.5".parse().unwrap(), 40_500),
        ("10.2.0.5".parse().unwrap(), 443),
    );
    let mut late = Conversation::new(
        ("10.1.0.9".parse().unwrap(), 50_000),
        ("10.2.0.1".parse().unwrap(), 443),
    );
    let resume = late.client(&data).build();
    let silence = [
        (T0, resume.clone()),
        (T0 + 200_000_000, resume.clone()),
        (T0 + 600_000_000, resume),
    ];
    let run = |name: &str, head: Vec<(u64, Vec<u8>)>| {
        let path = tmp(name);
        pcapfile::write(&path, &[head, silence.to_vec()].concat()).unwrap();
        replay(&path, &["--idle-threshold", "30"]).unwrap()
    };

    let unseen_start = other.client(&data).build();
    let (d, summary) = run(
        "no-clock.pcap",
        vec![
            (T0 - 3_600_000_000_000, vec![0; 10]),
            (0, unseen_start.clone()),
        ],
    );
    assert!(d.is_empty(), "{d:#?}");
    assert!(
        summary.contains(
            "5 packets (3 frames, 2 skipped: 0 unsupported link type, 1 runt, 1 without timestamp)"
        ),
        "{summary}"
    );

    let (d, summary) = run("clock.pcap", vec![(T0 - 40_000_000_000, unseen_start)]);
    let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["idle_timeout_drop"], "{d:#?}");
    assert!(summary.contains("0 skipped"), "{summary}");
}

/// A record claiming more bytes than any snapshot length: an error naming the file, the
/// offset and the limit, not an attempt to read 300 KB.
#[test]
fn oversized_record_is_a_clear_error() {
    let path = tmp("oversized.pcap");
    pcapfile::write(&path, &two_failures()[..1]).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let second = bytes.len();
    for v in [1u32, 0, 300_000, 300_000] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&[0; 1000]);
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new(detector_bin().unwrap())
        .arg("replay")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for part in [
        path.display().to_string(),
        format!("offset {second}"),
        "300000 captured bytes".into(),
        "262144".into(),
    ] {
        assert!(stderr.contains(&part), "{part:?} not in {stderr}");
    }
}

/// Values that make no sense are refused when the command line is read, before any
/// file is opened or anything loaded, with the flag and its range.
#[test]
fn senseless_flag_values_are_refused_at_start() {
    for (args, range) in [
        (
            &["replay", "/nonexistent/x.pcap", "--idle-threshold", "0"][..],
            "0.1 to 604800",
        ),
        (
            &["replay", "/nonexistent/x.pcap", "--idle-threshold", "NaN"],
            "0.1 to 604800",
        ),
        (
            &["replay", "/nonexistent/x.pcap", "--correlation-window", "0"],
            "0.01 to 3600",
        ),
        (
            &[
                "replay",
                "/nonexistent/x.pcap",
                "--correlation-window",
                "-1",
            ],
            "0.01 to 3600",
        ),
        (
            &["run", "--iface", "lo", "--flow-table-size", "4000000000"],
            "1 to 4194304",
        ),
        (
            &["run", "--iface", "lo", "--flow-table-size", "0"],
            "1 to 4194304",
        ),
        (
            &["run", "--iface", "lo", "--unconfirmed-table-size", "0"],
            "1 to 4194304",
        ),
    ] {
        let out = Command::new(detector_bin().unwrap())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap's usage error.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[args.len() - 2]), "{args:?}: {stderr}");
        assert!(stderr.contains(range), "{args:?}: {stderr}");
        assert!(!stderr.contains("/nonexistent"), "{args:?}: {stderr}");
    }
}

/// `detector replay --workers N FILE`: stdout, and stderr's first line (the summary).
fn replay_on(workers: usize, path: &std::path::Path, extra: &[&str]) -> (Vec<u8>, String, String) {
    let out = Command::new(detector_bin().unwrap())
        .arg("replay")
        .arg(path)
        .args(["--workers", &workers.to_string()])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", path.display());
    let mut lines = stderr.lines();
    let summary = lines.next().unwrap_or_default().to_string();
    let shares = lines.next().unwrap_or_default().to_string();
    (out.stdout, summary, shares)
}

/// Workers that were handed packets, from the `workers: N (packets: a, b, ...)` line.
fn busy_workers(shares: &str) -> usize {
    let list = shares
        .split_once("packets: ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no share list in {shares:?}"));
    list.split(", ")
        .filter(|n| n.parse::<u64>().expect("a count") > 0)
        .count()
}

/// Many sessions interleaved, of every kind the crafted frames can show, several to one
/// server (whose idle-timeout estimate is built from flows that land on different
/// workers), idle gaps past a 1 s threshold.
fn many_sessions() -> Vec<(u64, Vec<u8>)> {
    use detector_common::tls::{alert, content_type};
    let data = frames::record(content_type::APPLICATION_DATA, &[0x17; 200]);
    let mut timed: Vec<(u64, Vec<u8>)> = Vec::new();
    for k in 0..48u16 {
        let mut c = Conversation::new(
            (
                format!("10.1.{}.{}", k / 100, 1 + k % 100).parse().unwrap(),
                41_000 + k,
            ),
            (
                "10.2.0.1".parse().unwrap(),
                if k % 6 == 3 { 80 } else { 443 },
            ),
        );
        let start = T0 + u64::from(k) * 37_000_000;
        let step = |i: u64| start + i * 3_000_000;
        let mut frames = vec![c.syn(), c.syn_ack()];
        match k % 6 {
            0 => {
                frames.push(c.client(GET));
                frames.push(c.server(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x0a]));
            }
            1 => {
                frames.push(c.client(&frames::client_hello("a.example")));
                frames.push(c.server(&frames::alert(alert::FATAL, alert::UNKNOWN_CA)));
            }
            2 => {
                frames.push(c.client(&frames::client_hello("b.example")));
                frames.push(c.server_flags(frames::RST | frames::ACK));
            }
            3 => {
                frames.push(c.client(&frames::client_hello("c.example")));
                frames.push(c.server(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
            }
            _ => {
                // Data both ways, then, after an idle gap, data that goes unanswered or
                // answered: timeouts survived and died on one server.
                frames.push(c.client(&data));
                frames.push(c.server(&data));
                let resume = c.client(&data);
                let mut late = vec![resume.clone(), resume.clone(), resume];
                if k % 6 == 5 {
                    late.truncate(1);
                    late.push(c.server(&data));
                }
                let gap = 1_500_000_000 + u64::from(k) * 10_000_000;
                for (i, f) in late.iter().enumerate() {
                    timed.push((step(4) + gap + i as u64 * 200_000_000, f.build()));
                }
            }
        }
        for (i, f) in frames.iter().enumerate() {
            timed.push((step(i as u64), f.build()));
        }
    }
    timed.sort_by_key(|(ts, _)| *ts);
    timed
}

/// The output does not depend on how many workers replay: byte for byte the same
/// diagnoses and the same summary with 1, 2 and 5 workers, on crafted sessions of every
/// kind and on the lab captures kept with the fuzz seeds (real nginx, openssl and curl
/// traffic), while the sharded runs did spread the packets over several workers.
#[test]
fn sharded_replay_prints_what_one_worker_prints() {
    let crafted = tmp("many.pcap");
    pcapfile::write(&crafted, &many_sessions()).unwrap();
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pcap_reader");
    let mut captures = vec![(crafted.clone(), vec!["--idle-threshold", "1"])];
    for entry in std::fs::read_dir(&seeds).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("lab-")
        {
            captures.push((path, vec![]));
        }
    }
    assert!(
        captures.len() >= 5,
        "the lab captures are missing from {}",
        seeds.display()
    );
    for (path, extra) in &captures {
        let (one, summary, _) = replay_on(1, path, extra);
        assert!(
            !one.is_empty(),
            "{}: no diagnoses to compare",
            path.display()
        );
        for workers in [2, 5] {
            let (many, many_summary, shares) = replay_on(workers, path, extra);
            assert!(
                one == many,
                "{} with {workers} workers:\n{}\nwith one:\n{}",
                path.display(),
                String::from_utf8_lossy(&many),
                String::from_utf8_lossy(&one)
            );
            assert_eq!(many_summary, summary, "{}", path.display());
            if *path == crafted {
                assert!(busy_workers(&shares) >= 2, "not sharded: {shares}");
            }
        }
    }
    let (one, _, _) = replay_on(1, &crafted, &["--idle-threshold", "1"]);
    let kinds: std::collections::BTreeSet<String> =
        detector_lab::agent::parse_lines(&String::from_utf8_lossy(&one))
            .unwrap()
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect();
    // Every kind the crafted sessions play, timeouts on the shared server included.
    for kind in [
        "http_to_tls_port",
        "fatal_alert",
        "handshake_reset",
        "tls_to_plaintext_port",
        "idle_timeout_drop",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
}
