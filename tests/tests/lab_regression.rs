//! The lab as a regression suite: a quick subset of its scenarios (field cases 1 to 4
//! (docs/field-cases.md) and two clean controls, `detector_lab::scenarios::QUICK`), played
//! by the very code `cargo xtask lab` runs, then each capture replayed with `detector
//! replay` at the scenario's idle threshold. The replayed diagnoses must be exactly the
//! expected ones (every `must`, with the right kind, client IP, server, sender and gap;
//! nothing else; nothing of `must_not`), the live agent on the router must have found
//! the same (kind, client, server) set, and replay with three workers must print byte
//! for byte what one prints.
//!
//! Scenarios in `KNOWN_FAILING` are played and reported but not asserted. Needs root, like
//! the other live tests; skipped with a note otherwise.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Result, ensure};
use detector_lab::{
    agent::{detector_bin, metric},
    fixture::{Judged, play_and_replay},
    scenarios::{self, QUICK, identities, known_failing, short_diagnosis},
};

/// Where a run's files go: kept when a scenario fails, for a post-mortem.
fn out_dir() -> PathBuf {
    std::env::temp_dir().join(format!("lab-regression-{}", std::process::id()))
}

/// Plays and checks `name`; returns the live agent's metrics (None when skipped).
fn regress(name: &str) -> Result<Option<String>> {
    let out = out_dir();
    let Some(j) = play_and_replay(name, &out, "the lab regression suite")? else {
        return Ok(None);
    };
    let problems = j.outcome.expected.check(&j.replayed);
    let agree = identities(&j.outcome.live) == identities(&j.replayed);
    println!(
        "{name}: {:.1} s; expected {}; replayed {}; live {}",
        j.took.as_secs_f64(),
        j.outcome.expected.summary(),
        scenarios::summary_of(&j.replayed),
        scenarios::summary_of(&j.outcome.live)
    );
    if let Some(why) = known_failing(name) {
        println!("{name} is known to fail ({why}); now: {problems:?}, live agrees: {agree}");
        return Ok(Some(j.outcome.metrics));
    }
    let show = |v: &[serde_json::Value]| {
        v.iter()
            .map(short_diagnosis)
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    assert!(
        problems.is_empty(),
        "{name}: replay of {} differs from {}:\n  {}\nreplayed:\n  {}\nsummary: {}",
        j.outcome.pcap.display(),
        j.outcome.expected_path.display(),
        problems.join("\n  "),
        show(&j.replayed),
        j.summary
    );
    assert!(
        agree,
        "{name}: the live agent ({}) and replay disagree:\nlive:\n  {}\nreplayed:\n  {}",
        j.outcome.live_path.display(),
        show(&j.outcome.live),
        show(&j.replayed)
    );
    sharding_changes_nothing(&j)?;
    for f in [
        &j.outcome.pcap,
        &j.outcome.expected_path,
        &j.outcome.live_path,
    ] {
        let _ = fs::remove_file(f);
    }
    let _ = fs::remove_dir(&out);
    Ok(Some(j.outcome.metrics))
}

/// The scenario's capture replayed as the suite replays it, once with one worker and
/// once with three: byte for byte the same diagnoses and the same summary.
fn sharding_changes_nothing(j: &Judged) -> Result<()> {
    let idle = j.scenario.idle_threshold_s.to_string();
    let window = scenarios::CORRELATION_WINDOW_S.to_string();
    let run = |workers: &str| -> Result<(Vec<u8>, String)> {
        let out = Command::new(detector_bin()?)
            .arg("replay")
            .arg(&j.outcome.pcap)
            .args(["--idle-threshold", &idle])
            .args(j.scenario.agent_args)
            .args(["--correlation-window", &window, "--workers", workers])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "replay failed: {stderr}");
        Ok((out.stdout, stderr.lines().next().unwrap_or_default().into()))
    };
    let (one, one_summary) = run("1")?;
    let (three, three_summary) = run("3")?;
    assert!(
        one == three,
        "{}: 3 workers printed\n{}\n1 worker printed\n{}",
        j.outcome.pcap.display(),
        String::from_utf8_lossy(&three),
        String::from_utf8_lossy(&one)
    );
    assert_eq!(three_summary, one_summary, "{}", j.outcome.pcap.display());
    Ok(())
}

/// A clean scenario's handshakes as the live agent counted them: every one started
/// completed, none failed.
fn all_handshakes_completed(name: &str) -> Result<()> {
    let Some(metrics) = regress(name)? else {
        return Ok(());
    };
    let count = |result: &str| {
        metric(
            &metrics,
            &format!("detector_tls_handshakes_total{{result=\"{result}\"}}"),
        )
    };
    let started = count("started").unwrap_or_default();
    assert!(started >= 1.0, "{name}: no handshake counted:\n{metrics}");
    assert_eq!(count("completed"), Some(started), "{name}:\n{metrics}");
    assert_eq!(count("failed"), Some(0.0), "{name}:\n{metrics}");
    Ok(())
}

#[test]
fn quick_subset_is_what_this_file_runs() {
    // Keep this list and the tests below in step with `scenarios::QUICK`: the names stand
    // here again on purpose, so that a change of QUICK shows as a failure of this test.
    let here = [
        "reneg-tls12",
        "resume-rejected-tls13-psk",
        "http-to-nginx-tls-v4",
        "idle-close-nginx-tls12",
        "clean-tls13",
        "clean-resume-tls12-ticket",
    ];
    assert_eq!(QUICK, here);
    let cases: Vec<Option<u8>> = QUICK
        .iter()
        .map(|n| scenarios::find(n).expect("a scenario").field_case)
        .collect();
    for case in 1..=4 {
        assert!(cases.contains(&Some(case)), "field case {case}");
    }
    assert!(cases.iter().filter(|c| c.is_none()).count() >= 2);
}

#[test]
fn field_case_1_renegotiation() -> Result<()> {
    regress("reneg-tls12").map(drop)
}

#[test]
fn field_case_2_resumption_rejected() -> Result<()> {
    regress("resume-rejected-tls13-psk").map(drop)
}

#[test]
fn field_case_3_http_to_tls_port() -> Result<()> {
    regress("http-to-nginx-tls-v4").map(drop)
}

#[test]
fn field_case_4_idle_close() -> Result<()> {
    regress("idle-close-nginx-tls12").map(drop)
}

#[test]
fn clean_tls13() -> Result<()> {
    all_handshakes_completed("clean-tls13")
}

#[test]
fn clean_resumption_by_ticket() -> Result<()> {
    all_handshakes_completed("clean-resume-tls12-ticket")
}
