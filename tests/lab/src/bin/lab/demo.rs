//! `--demo`: the agent on a lab router, one scenario per field case, diagnoses as they come.

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use detector_lab::{
    Lab,
    agent::parse_lines,
    scenarios::{self, DEMO, IDLE_THRESHOLD_S},
};

use crate::stopping;

/// Metric families worth showing after the demo.
pub(crate) const DEMO_METRICS: [&str; 9] = [
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

pub(crate) fn demo(detector: &Path) -> Result<ExitCode> {
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
pub(crate) fn follow(path: &Path, done: &AtomicBool) {
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
pub(crate) fn pretty(d: &Value) -> String {
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
