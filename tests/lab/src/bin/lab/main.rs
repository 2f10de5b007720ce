//! `lab`: every field case of docs/field-cases.md reproduced by real software in network namespaces,
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

mod compare;
mod demo;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;

use detector_lab::scenarios::{self, SCENARIOS, Scenario, identities, known_failing, summary_of};

use crate::{compare::compare, demo::demo, table::Table};

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

pub(crate) fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Plays the lab's scenarios (the field cases of docs/field-cases.md, handshake failures and
/// clean controls) with the agent live on a lab router, and writes DIR/NAME.pcap,
/// NAME.expected.json, NAME.live.json and NAME.replay.json. Needs root.
#[derive(Parser)]
#[command(name = "lab")]
struct Args {
    /// Scenarios to play (names, or prefixes such as `clean`); all when none given. With
    /// --compare: the captures to show.
    #[arg(value_name = "SCENARIO")]
    words: Vec<String>,
    /// Directory for the captures and labels [default: target/lab].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// One line per scenario: name, field case, about how long, what it plays.
    #[arg(long)]
    list: bool,
    /// Instead of playing: tshark's view of each capture in DIR [default: the --out
    /// directory] next to the detector's diagnoses from `detector replay`.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    compare: Option<Option<PathBuf>>,
    /// The agent on a lab router, one scenario per field case, diagnoses as they come.
    #[arg(long)]
    demo: bool,
    /// Clean traffic for MINUTES (0 to 1440) with the agent live; fails on any diagnosis
    /// or TLS sync loss.
    #[arg(long, value_name = "MINUTES", value_parser = soak_minutes)]
    soak: Option<f64>,
}

fn soak_minutes(m: &str) -> Result<f64, String> {
    let v: f64 = m.parse().map_err(|e| format!("{m}: {e}"))?;
    if v > 0.0 && v <= 24.0 * 60.0 {
        Ok(v)
    } else {
        Err(format!("{m}: 0 to 1440 minutes"))
    }
}

impl Args {
    fn parse_args() -> Args {
        let mut a = Args::parse();
        // `--compare WORD`: WORD is the directory only if it is one, else a scenario.
        if let Some(Some(dir)) = &a.compare
            && !dir.is_dir()
        {
            a.words.insert(0, dir.to_string_lossy().into_owned());
            a.compare = Some(None);
        }
        a
    }
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
    let args = Args::parse_args();
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
    let detector = detector_lab::agent::detector_bin()?;
    if let Some(dir) = args.compare {
        return compare(&dir.unwrap_or(out), &args.words, &detector);
    }
    if args.demo {
        return demo(&detector);
    }
    if let Some(minutes) = args.soak {
        return soak(&detector, Duration::from_secs_f64(minutes * 60.0));
    }
    run_scenarios(&scenarios::select(&args.words)?, &out, &detector)
}

fn soak(detector: &Path, duration: Duration) -> Result<ExitCode> {
    eprintln!(
        "lab: soak for {:.1} min: clean traffic, agent restarts, a spoofed flood",
        duration.as_secs_f64() / 60.0
    );
    let report = detector_lab::soak::soak(detector, duration, &|m| eprintln!("soak: {m}"))?;
    println!("{report}");
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("lab: the soak was not clean (diagnoses or TLS sync losses above)");
        ExitCode::FAILURE
    })
}

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
