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
