//! `--compare`: tshark's view of each capture next to the detector's diagnoses.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use detector_lab::scenarios::{self, Expected, IDLE_THRESHOLD_S, short_diagnosis};

use crate::{
    stopping,
    table::{Table, wrap},
};

/// Fields asked of tshark, in this order.
pub(crate) const TSHARK_FIELDS: [&str; 22] = [
    "frame.time_relative",
    "tcp.stream",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "tcp.flags.syn",
    "tcp.flags.ack",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "tcp.len",
    "tcp.time_delta",
    "tls.record.content_type",
    "tls.handshake.type",
    "tls.alert_message.desc",
    "tcp.analysis.retransmission",
    "http.request.method",
    "tls.record.opaque_type",
    "tls.record.length",
    "_ws.col.Info",
];

/// What an analyst filters on: TLS and HTTP, connection setup and teardown, resets and
/// retransmissions.
pub(crate) const TSHARK_FILTER: &str = "tls || http || tcp.flags.reset==1 || tcp.flags.fin==1 || \
     tcp.analysis.retransmission || (tcp.flags.syn==1 && tcp.flags.ack==1)";

/// Frames shown per stream before eliding the middle (first 10, last 6).
pub(crate) const HEAD_ROWS: usize = 10;

pub(crate) const TAIL_ROWS: usize = 6;

pub(crate) struct Frame {
    time: f64,
    stream: u64,
    src: String,
    dst: String,
    synack: bool,
    delta: f64,
    fields: String,
    info: String,
}

pub(crate) fn endpoint(ip: &str, port: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        _ => format!("{ip}:{port}"),
    }
}

pub(crate) fn tshark(pcap: &Path) -> Result<Vec<Frame>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "tcp.calculate_timestamps:TRUE"])
        // s_server's usual ports, so tshark dissects them as TLS too.
        .args(["-d", "tcp.port==4433,tls", "-d", "tcp.port==8443,tls"])
        .args(["-Y", TSHARK_FILTER, "-T", "fields"])
        .args([
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
    for f in TSHARK_FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .context("running tshark (install it: `apt-get install tshark`)")?;
    ensure!(
        out.status.success(),
        "tshark -r {} failed: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frames = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < TSHARK_FIELDS.len() {
            continue;
        }
        let ip = |v4: &str, v6: &str| if v4.is_empty() { v6 } else { v4 }.to_string();
        let (src_ip, dst_ip) = (ip(f[2], f[3]), ip(f[5], f[6]));
        let flag = |s: &str| s == "1" || s == "True";
        let mut tags = Vec::new();
        if flag(f[8]) && flag(f[9]) {
            tags.push("SYN-ACK".to_string());
        }
        if flag(f[10]) {
            tags.push("FIN".into());
        }
        if flag(f[11]) {
            tags.push("RST".into());
        }
        // TLS 1.3 encrypted records carry their type as opaque_type.
        let rec = [f[14], f[19]]
            .iter()
            .filter(|x| !x.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(",");
        if !rec.is_empty() {
            tags.push(format!("rec={rec}"));
            // Lengths tell alerts and close_notify records apart; only for short lists.
            if f[20].split(',').count() <= 2 {
                tags.push(format!("len={}", f[20]));
            }
        }
        if !f[15].is_empty() {
            tags.push(format!("hs={}", f[15]));
        }
        if !f[16].is_empty() {
            tags.push(format!("alert={}", f[16]));
        }
        if !f[17].is_empty() {
            tags.push("retrans".into());
        }
        if !f[18].is_empty() {
            tags.push(format!("http={}", f[18]));
        }
        frames.push(Frame {
            time: f[0].parse().unwrap_or(0.0),
            stream: f[1].parse().unwrap_or(u64::MAX),
            src: endpoint(&src_ip, f[4]),
            dst: endpoint(&dst_ip, f[7]),
            synack: flag(f[8]) && flag(f[9]),
            delta: f[13].parse().unwrap_or(0.0),
            fields: tags.join(" "),
            info: short_info(f[21]),
        });
    }
    Ok(frames)
}

/// tshark's Info column without the TCP boilerplate (`40312 → 443 [FIN, ACK] Seq=...`
/// becomes `[FIN, ACK]`).
pub(crate) fn short_info(info: &str) -> String {
    let mut rest = info.trim();
    // Leading analysis tags such as `[TCP Retransmission] ` stay.
    let mut tags = String::new();
    while rest.starts_with("[TCP") {
        let Some(end) = rest.find("] ") else { break };
        tags.push_str(&rest[..=end]);
        rest = rest[end + 2..].trim_start();
    }
    let is_tcp_line = rest
        .split_whitespace()
        .next()
        .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
        && rest.contains(" → ");
    if is_tcp_line
        && let (Some(a), Some(b)) = (rest.find('['), rest.find(']'))
        && a < b
    {
        let len = rest
            .split_whitespace()
            .find(|w| w.starts_with("Len=") && *w != "Len=0")
            .map(|w| format!(" {w}"))
            .unwrap_or_default();
        return format!("{tags}{}{len}", &rest[a..=b]);
    }
    format!("{tags}{rest}")
}

pub(crate) fn compare(dir: &Path, words: &[String], detector: &Path) -> Result<ExitCode> {
    let mut pcaps: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    pcaps.sort();
    if !words.is_empty() {
        pcaps.retain(|p| {
            let stem = stem(p);
            words
                .iter()
                .any(|w| stem == *w || stem.starts_with(w.as_str()))
        });
    }
    ensure!(
        !pcaps.is_empty(),
        "no captures in {} (run `cargo xtask lab` first)",
        dir.display()
    );
    println!(
        "tshark fields: rec = tls.record.content_type (20 change_cipher_spec, 21 alert, \
         22 handshake, 23 application_data), hs = tls.handshake.type (0 hello_request, \
         1 client_hello, 2 server_hello, 4 new_session_ticket, 11 certificate, ...), alert = \
         tls.alert_message.desc (plaintext alerts only), retrans = tcp.analysis.retransmission; \
         Δt strm = tcp.time_delta, time since the stream's previous frame. Filter: {TSHARK_FILTER}"
    );
    for pcap in &pcaps {
        if stopping() {
            break;
        }
        compare_one(pcap, detector)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn compare_one(pcap: &Path, detector: &Path) -> Result<()> {
    let name = stem(pcap);
    let expected_path = pcap.with_file_name(format!("{name}.expected.json"));
    let expected = expected_path
        .is_file()
        .then(|| Expected::read(&expected_path))
        .transpose()?;
    let idle = expected
        .as_ref()
        .map_or(IDLE_THRESHOLD_S, |e| e.idle_threshold_s);
    let frames = tshark(pcap)?;
    // A scenario's own agent options (a small flow table) apply to its replay too.
    let extra = scenarios::find(&name).map_or(&[][..], |s| s.agent_args);
    let (diagnoses, _) = scenarios::replay(detector, pcap, idle, extra)?;

    let case = expected.as_ref().and_then(|e| e.field_case).map_or_else(
        || "no field case".to_string(),
        |c| format!("field case {c}"),
    );
    println!();
    println!(
        "━━ {name} ({case}; idle threshold {idle} s) ━━ {}",
        pcap.display()
    );
    if let Some(e) = &expected {
        println!("   expected: {}", e.summary());
    }
    let table = Table::new(&[
        ("time", 8),
        ("Δt strm", 7),
        ("dir", 3),
        ("tshark fields", 22),
        ("tshark info", 36),
        ("│", 1),
        ("detector replay", 50),
    ]);
    table.header();
    // Streams in order, each with its frames and the diagnoses of its flow.
    let mut streams: BTreeMap<u64, Vec<&Frame>> = BTreeMap::new();
    for f in &frames {
        streams.entry(f.stream).or_default().push(f);
    }
    let mut shown = vec![false; diagnoses.len()];
    for (stream, fs) in &streams {
        // The server is whoever sent the SYN-ACK; without one, the lower port.
        let (client, server) = match fs.iter().find(|f| f.synack) {
            Some(f) => (f.dst.clone(), f.src.clone()),
            None => {
                let f = fs[0];
                if port_of(&f.src) < port_of(&f.dst) {
                    (f.dst.clone(), f.src.clone())
                } else {
                    (f.src.clone(), f.dst.clone())
                }
            }
        };
        let mut right: Vec<String> = Vec::new();
        for (i, d) in diagnoses.iter().enumerate() {
            if d["client"] == client.as_str() && d["server"] == server.as_str() {
                shown[i] = true;
                right.extend(describe(d));
            }
        }
        if right.is_empty() {
            right.push("(nothing: not diagnosed)".into());
        }
        println!("stream {stream}: {client} → {server}");
        let rows = elide(fs);
        let mut right_lines = right.iter().flat_map(|t| wrap(t, 50));
        for r in &rows {
            let rl = right_lines.next().unwrap_or_default();
            match r {
                Some(f) => table.row(&[
                    &format!("{:.4}", f.time),
                    &format!("{:.3}", f.delta),
                    if f.src == client { "C→S" } else { "S→C" },
                    &f.fields,
                    &f.info,
                    "│",
                    &rl,
                ]),
                None => table.row(&[
                    "",
                    "",
                    "",
                    &format!("… {} more frames", fs.len() - HEAD_ROWS - TAIL_ROWS),
                    "",
                    "│",
                    &rl,
                ]),
            }
        }
        for rl in right_lines {
            table.row(&["", "", "", "", "", "│", &rl]);
        }
    }
    for (d, _) in diagnoses.iter().zip(&shown).filter(|(_, s)| !**s) {
        println!("(flow not in tshark's view) {}", short_diagnosis(d));
    }
    if let Some(e) = &expected {
        let problems = e.check(&diagnoses);
        if problems.is_empty() {
            println!("   replay matches the expectation");
        } else {
            for p in problems {
                println!("   replay vs expectation: {p}");
            }
        }
    }
    Ok(())
}

pub(crate) fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The frames to show: all, or the first and last few with `None` standing for the rest.
pub(crate) fn elide<'a>(fs: &[&'a Frame]) -> Vec<Option<&'a Frame>> {
    if fs.len() <= HEAD_ROWS + TAIL_ROWS + 1 {
        return fs.iter().copied().map(Some).collect();
    }
    let mut v: Vec<Option<&Frame>> = fs[..HEAD_ROWS].iter().copied().map(Some).collect();
    v.push(None);
    v.extend(fs[fs.len() - TAIL_ROWS..].iter().copied().map(Some));
    v
}

/// A diagnosis as short paragraphs for the right-hand column.
pub(crate) fn describe(d: &Value) -> Vec<String> {
    let detail = &d["detail"];
    let mut head = format!("▶ {}", d["kind"].as_str().unwrap_or("?"));
    let mut facts = Vec::new();
    for key in ["sender", "description", "method", "how"] {
        if let Some(v) = detail[key].as_str() {
            facts.push(format!("{key} {v}"));
        }
    }
    if let Some(g) = detail["gap_s"].as_f64() {
        facts.push(format!("gap {g:.2} s"));
    }
    if !facts.is_empty() {
        head.push_str(&format!(" ({})", facts.join(", ")));
    }
    vec![head, d["evidence"].as_str().unwrap_or("").to_string()]
}
