//! `lab`: every field case of BRIEF.md reproduced by real software in network namespaces,
//! with labelled captures; tshark next to the detector; and a demo. Run by `cargo xtask lab`
//! and `cargo xtask demo` (as root), which build the agent first.
//!
//! ```text
//! lab [SCENARIO ...] [--out DIR]      play scenarios (all by default; a word may be a
//!                                     prefix such as `clean`), write DIR/NAME.pcap,
//!                                     NAME.expected.json, NAME.live.json, NAME.replay.json
//! lab --list                          one line per scenario
//! lab --compare [DIR] [SCENARIO ...]  tshark's view of each capture next to the detector's
//! lab --demo                          the agent on a lab router, one scenario per field case
//! lab --soak MINUTES                  clean traffic for MINUTES with the agent live; fails
//!                                     on any diagnosis or TLS sync loss
//! ```
//!
//! SIGINT or SIGTERM ends the run after the current scenario (whose lab is torn down as
//! usual); a second one exits at once, and the next lab's sweep removes what is left.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tests::{
    agent::parse_lines,
    lab::Lab,
    scenarios::{
        self, DEMO, Expected, IDLE_THRESHOLD_S, SCENARIOS, Scenario, identities, known_failing,
        short_diagnosis, summary_of,
    },
};

/// Set by the first SIGINT/SIGTERM; checked between scenarios.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // Second signal: the user insists. Only async-signal-safe calls here.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only touches an atomic and calls _exit.
        unsafe { libc::signal(sig, handler) };
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

const USAGE: &str = "usage: lab [SCENARIO ...] [--out DIR] | --list | --compare [DIR] [SCENARIO ...] \
     | --demo | --soak MINUTES";

#[derive(Default)]
struct Args {
    words: Vec<String>,
    out: Option<PathBuf>,
    list: bool,
    compare: Option<Option<PathBuf>>,
    demo: bool,
    soak_minutes: Option<f64>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--list" => a.list = true,
            "--demo" => a.demo = true,
            "--soak" => {
                let m = it.next().context("--soak needs a number of minutes")?;
                let m: f64 = m.parse().with_context(|| format!("--soak {m}"))?;
                ensure!(m > 0.0 && m <= 24.0 * 60.0, "--soak {m}: 0 to 1440 minutes");
                a.soak_minutes = Some(m);
            }
            "--out" => a.out = Some(it.next().context("--out needs a directory")?.into()),
            "--compare" => {
                let dir = it.next_if(|n| !n.starts_with('-') && Path::new(n).is_dir());
                a.compare = Some(dir.map(PathBuf::from));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            _ => a.words.push(arg),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    install_signal_handlers();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let args = parse_args()?;
    if args.list {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/lab"));
    // SAFETY: geteuid cannot fail.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the lab creates network namespaces and loads BPF programs: run it as root \
         (`cargo xtask lab` does)"
    );
    let detector = scenarios::detector_path()?;
    if let Some(dir) = args.compare {
        return compare(&dir.unwrap_or(out), &args.words, &detector);
    }
    if args.demo {
        return demo(&detector);
    }
    if let Some(minutes) = args.soak_minutes {
        return soak(&detector, Duration::from_secs_f64(minutes * 60.0));
    }
    run_scenarios(&scenarios::select(&args.words)?, &out, &detector)
}

// ---------------------------------------------------------------------------------------
// --soak
// ---------------------------------------------------------------------------------------

fn soak(detector: &Path, duration: Duration) -> Result<ExitCode> {
    eprintln!(
        "lab: soak for {:.1} min: clean traffic, agent restarts, a spoofed flood",
        duration.as_secs_f64() / 60.0
    );
    let report = tests::soak::soak(detector, duration, &|m| eprintln!("soak: {m}"))?;
    println!("{report}");
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("lab: the soak was not clean (diagnoses or TLS sync losses above)");
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------------------------------
// --list
// ---------------------------------------------------------------------------------------

fn list() {
    let total: u32 = SCENARIOS.iter().map(|s| s.approx_s).sum();
    println!("{:<29} {:>4} {:>5}  plays", "scenario", "case", "~secs");
    for s in SCENARIOS {
        let needs = if s.needs.is_empty() {
            String::new()
        } else {
            format!(" [needs {}]", s.needs.join(", "))
        };
        println!(
            "{:<29} {:>4} {:>5}  {}{needs}",
            s.name,
            s.case_label(),
            s.approx_s,
            s.plays
        );
    }
    println!(
        "{} scenarios, about {total} s in all; quick subset (regression suite): {}",
        SCENARIOS.len(),
        scenarios::QUICK.join(" ")
    );
}

// ---------------------------------------------------------------------------------------
// Running scenarios
// ---------------------------------------------------------------------------------------

struct Row {
    name: String,
    case: String,
    expected: String,
    obtained: String,
    verdict: String,
    secs: String,
    problems: Vec<String>,
}

fn run_scenarios(picked: &[&'static Scenario], out: &Path, detector: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = false;
    for (i, s) in picked.iter().enumerate() {
        if stopping() {
            eprintln!("lab: interrupted; {} scenario(s) not run", picked.len() - i);
            break;
        }
        eprintln!(
            "\n=== [{}/{}] {} (field case {}): {}",
            i + 1,
            picked.len(),
            s.name,
            s.case_label(),
            s.plays
        );
        let missing = s.missing_programs();
        if !missing.is_empty() {
            eprintln!(
                "lab: skipping {}: {} not installed",
                s.name,
                missing.join(", ")
            );
            rows.push(Row {
                name: s.name.into(),
                case: s.case_label(),
                expected: String::new(),
                obtained: String::new(),
                verdict: "skipped".into(),
                secs: "-".into(),
                problems: vec![format!("{} not installed", missing.join(", "))],
            });
            continue;
        }
        let row = match play_one(s, out, detector) {
            Ok(row) => row,
            Err(e) => {
                let (verdict, why) = if stopping() {
                    ("interrupted", "interrupted by a signal".to_string())
                } else {
                    ("ERROR", format!("{e:#}"))
                };
                Row {
                    name: s.name.into(),
                    case: s.case_label(),
                    expected: String::new(),
                    obtained: String::new(),
                    verdict: verdict.into(),
                    secs: "-".into(),
                    problems: vec![why],
                }
            }
        };
        eprintln!("--- {}: {}", row.name, row.verdict);
        for p in &row.problems {
            eprintln!("    {p}");
        }
        failed |= !matches!(row.verdict.as_str(), "ok" | "known" | "skipped");
        rows.push(row);
    }
    print_summary(&rows, out, started.elapsed());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn play_one(s: &Scenario, out: &Path, detector: &Path) -> Result<Row> {
    let outcome = scenarios::run(s, out, detector)?;
    let (replayed, summary) =
        scenarios::replay(detector, &outcome.pcap, s.idle_threshold_s, s.agent_args)?;
    let replay_path = out.join(format!("{}.replay.json", s.name));
    let lines: String = replayed.iter().map(|d| format!("{d}\n")).collect();
    fs::write(&replay_path, lines).with_context(|| format!("writing {}", replay_path.display()))?;
    let mut problems: Vec<String> = outcome
        .expected
        .check(&replayed)
        .into_iter()
        .map(|p| format!("replay: {p}"))
        .collect();
    problems.extend(
        outcome
            .expected
            .check(&outcome.live)
            .into_iter()
            .map(|p| format!("live: {p}")),
    );
    if identities(&outcome.live) != identities(&replayed) {
        problems.push("live and replay disagree".into());
    }
    if let Some(line) = summary.lines().last() {
        eprintln!("    replay: {line}");
    }
    let (live_s, replay_s) = (summary_of(&outcome.live), summary_of(&replayed));
    let obtained = if live_s == replay_s {
        live_s
    } else {
        format!("live: {live_s}; replay: {replay_s}")
    };
    let verdict = match (problems.is_empty(), known_failing(s.name)) {
        (true, _) => "ok",
        (false, Some(_)) => "known",
        (false, None) => "MISMATCH",
    };
    Ok(Row {
        name: s.name.into(),
        case: s.case_label(),
        expected: outcome.expected.summary(),
        obtained,
        verdict: verdict.into(),
        secs: format!("{:.1}", outcome.duration.as_secs_f64()),
        problems,
    })
}

fn print_summary(rows: &[Row], out: &Path, took: Duration) {
    println!();
    let table = Table::new(&[
        ("scenario", 28),
        ("case", 4),
        ("expected", 34),
        ("obtained (live = replay)", 34),
        ("verdict", 11),
        ("secs", 5),
    ]);
    table.header();
    for r in rows {
        table.row(&[
            &r.name,
            &r.case,
            &r.expected,
            &r.obtained,
            &r.verdict,
            &r.secs,
        ]);
    }
    let ok = rows.iter().filter(|r| r.verdict == "ok").count();
    println!(
        "{ok}/{} as expected, in {:.0} s; files in {}",
        rows.len(),
        took.as_secs_f64(),
        out.display()
    );
    for r in rows.iter().filter(|r| !r.problems.is_empty()) {
        println!("{} ({}):", r.name, r.verdict);
        if let Some(why) = known_failing(&r.name) {
            println!("  known failing: {why}");
        }
        for p in &r.problems {
            println!("  {p}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixed-width tables
// ---------------------------------------------------------------------------------------

struct Table {
    cols: Vec<(String, usize)>,
}

impl Table {
    fn new(cols: &[(&str, usize)]) -> Table {
        Table {
            cols: cols.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
        }
    }

    fn header(&self) {
        let names: Vec<&str> = self.cols.iter().map(|(n, _)| n.as_str()).collect();
        self.row(&names);
        let rule: Vec<String> = self.cols.iter().map(|(_, w)| "─".repeat(*w)).collect();
        println!("{}", rule.join(" "));
    }

    /// One row; cells longer than their column wrap onto continuation lines.
    fn row(&self, cells: &[&str]) {
        let mut wrapped: Vec<Vec<String>> = cells
            .iter()
            .zip(&self.cols)
            .map(|(c, (_, w))| wrap(c, *w))
            .collect();
        let height = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
        // A rule column ("│") runs down every line of the row.
        for (cell, text) in wrapped.iter_mut().zip(cells) {
            if *text == "│" {
                *cell = vec![text.to_string(); height];
            }
        }
        for line in 0..height {
            let parts: Vec<String> = wrapped
                .iter()
                .zip(&self.cols)
                .map(|(cell, (_, w))| pad(cell.get(line).map_or("", String::as_str), *w))
                .collect();
            println!("{}", parts.join(" ").trim_end());
        }
    }
}

fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n >= w {
        s.chars().take(w).collect()
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// Greedy word wrap to `w` columns; words longer than `w` are cut.
fn wrap(s: &str, w: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        let mut word: String = word.to_string();
        while word.chars().count() > w {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            let head: String = word.chars().take(w).collect();
            word = word.chars().skip(w).collect();
            lines.push(head);
        }
        let need = cur.chars().count() + usize::from(!cur.is_empty()) + word.chars().count();
        if need > w && !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

// ---------------------------------------------------------------------------------------
// --compare: tshark next to the detector
// ---------------------------------------------------------------------------------------

/// Fields asked of tshark, in this order.
const TSHARK_FIELDS: [&str; 22] = [
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
const TSHARK_FILTER: &str = "tls || http || tcp.flags.reset==1 || tcp.flags.fin==1 || \
     tcp.analysis.retransmission || (tcp.flags.syn==1 && tcp.flags.ack==1)";

/// Frames shown per stream before eliding the middle (first 10, last 6).
const HEAD_ROWS: usize = 10;
const TAIL_ROWS: usize = 6;

struct Frame {
    time: f64,
    stream: u64,
    src: String,
    dst: String,
    synack: bool,
    delta: f64,
    fields: String,
    info: String,
}

fn endpoint(ip: &str, port: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        _ => format!("{ip}:{port}"),
    }
}

fn tshark(pcap: &Path) -> Result<Vec<Frame>> {
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
fn short_info(info: &str) -> String {
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

fn compare(dir: &Path, words: &[String], detector: &Path) -> Result<ExitCode> {
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

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn compare_one(pcap: &Path, detector: &Path) -> Result<()> {
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

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The frames to show: all, or the first and last few with `None` standing for the rest.
fn elide<'a>(fs: &[&'a Frame]) -> Vec<Option<&'a Frame>> {
    if fs.len() <= HEAD_ROWS + TAIL_ROWS + 1 {
        return fs.iter().copied().map(Some).collect();
    }
    let mut v: Vec<Option<&Frame>> = fs[..HEAD_ROWS].iter().copied().map(Some).collect();
    v.push(None);
    v.extend(fs[fs.len() - TAIL_ROWS..].iter().copied().map(Some));
    v
}

/// A diagnosis as short paragraphs for the right-hand column.
fn describe(d: &Value) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------
// --demo
// ---------------------------------------------------------------------------------------

/// Metric families worth showing after the demo.
const DEMO_METRICS: [&str; 9] = [
    "detector_diagnoses_total",
    "detector_tls_alerts_total",
    "detector_idle_gap_seconds_count",
    "detector_idle_gap_seconds_sum",
    "detector_inferred_idle_timeout",
    "detector_kernel_packets_total",
    "detector_kernel_tls_records_total",
    "detector_kernel_flows_created_total",
    "detector_kernel_events_dropped_total",
];

fn demo(detector: &Path) -> Result<ExitCode> {
    println!(
        "Demo: a client, a router and a server in network namespaces; the detector runs on \
         the router (XDP on both veths, --idle-threshold {IDLE_THRESHOLD_S} s). Each step \
         below is real software; diagnoses print as the agent emits them.\n"
    );
    let lab = Lab::routed()?;
    let agent = scenarios::agent_on_router(&lab, detector, IDLE_THRESHOLD_S, &[])?;
    let done = Arc::new(AtomicBool::new(false));
    let printer = {
        let path = agent.process.stdout_path().to_path_buf();
        let done = Arc::clone(&done);
        thread::spawn(move || follow(&path, &done))
    };
    let mut seen = 0;
    for name in DEMO {
        if stopping() {
            break;
        }
        let s = scenarios::find(name).context("demo scenario")?;
        let missing = s.missing_programs();
        if !missing.is_empty() {
            println!("\n▷ {name}: skipped ({} not installed)", missing.join(", "));
            continue;
        }
        let case = s
            .field_case
            .map_or_else(String::new, |c| format!(" (field case {c})"));
        println!("\n▷ {}{case}: {}", s.name, s.plays);
        let played = match s.play(&lab) {
            Ok(p) => p,
            Err(e) => {
                println!("  (scenario failed: {e:#})");
                continue;
            }
        };
        let want = seen + played.must.len();
        let got = agent.collect(want, Duration::from_secs(10))?;
        // Past the correlation window, so this step's diagnoses are all out.
        thread::sleep(Duration::from_millis(900));
        if played.must.is_empty() && got.len() == seen {
            println!("  (no diagnosis, as it should be)");
        }
        seen = agent.diagnoses()?.len();
        drop(played);
    }
    let metrics = agent.metrics(&lab).unwrap_or_default();
    let _ = agent.stop()?;
    done.store(true, Ordering::SeqCst);
    let _ = printer.join();
    println!("\n/metrics (the interesting lines):");
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        if DEMO_METRICS.iter().any(|m| line.starts_with(m)) {
            println!("  {line}");
        }
    }
    drop(lab);
    Ok(ExitCode::SUCCESS)
}

/// Prints the agent's diagnoses as they are written, until `done` (then the rest).
fn follow(path: &Path, done: &AtomicBool) {
    let mut printed = 0usize;
    loop {
        let finished = done.load(Ordering::SeqCst);
        if let Ok(text) = fs::read_to_string(path) {
            // Only complete lines.
            let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
            if let Ok(ds) = parse_lines(complete) {
                for d in ds.iter().skip(printed) {
                    println!("{}", pretty(d));
                    let _ = io::stdout().flush();
                }
                printed = printed.max(ds.len());
            }
        }
        if finished {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `HH:MM:SS.mmm  kind  client → server  evidence`.
fn pretty(d: &Value) -> String {
    let ts = d["ts"].as_str().unwrap_or("");
    let time = ts
        .split_once('T')
        .map_or(ts, |(_, t)| t.trim_end_matches('Z'));
    let time: String = time.chars().take(12).collect();
    format!(
        "  {time:<12}  {:<21} {} → {}  {}",
        d["kind"].as_str().unwrap_or("?"),
        d["client"].as_str().unwrap_or("?"),
        d["server"].as_str().unwrap_or("?"),
        d["evidence"].as_str().unwrap_or("")
    )
}
