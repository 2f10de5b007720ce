//! A short soak in CI (issue 8): a minute of the lab's clean traffic with the agent live on
//! the router, through agent restarts, long-lived connections idling past the threshold and
//! a spoofed-segment flood, must give no diagnosis and no TLS sync loss. `cargo xtask soak`
//! runs the same for longer (15 minutes by default).

use std::time::Duration;

use anyhow::{Result, ensure};
use detector_lab::{agent::detector_bin, soak::soak};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn one_minute_soak_gives_no_diagnosis() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the soak needs root");
        return Ok(());
    }
    let report = soak(&detector_bin()?, MINUTE, &|m| eprintln!("soak: {m}"))?;
    println!("{report}");
    // That the mix was played at all, before judging it.
    ensure!(report.agent_starts >= 2, "no agent restart:\n{report}");
    ensure!(
        report.resumptions > 0,
        "no long-lived resumption:\n{report}"
    );
    ensure!(report.flood_segments > 0, "no flood:\n{report}");
    ensure!(
        report.clean(),
        "clean traffic gave diagnoses or TLS sync losses:\n{report}"
    );
    Ok(())
}
