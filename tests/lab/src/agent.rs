//! The real `detector` binary, run live inside a lab namespace or on a capture.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{Lab, LabProcess};

/// The `detector` binary: `$DETECTOR_BIN`, else next to this executable (`target/release/`
/// for the lab binary), else one level up (`target/release/deps/` for test binaries).
pub fn detector_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DETECTOR_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "DETECTOR_BIN={} does not exist", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has a directory")?;
    for candidate in [dir.join("detector"), dir.join("../detector")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no detector binary next to {}: build it first (`cargo build --release -p \
         detector-user --bin detector`) or set DETECTOR_BIN",
        exe.display()
    )
}

/// Parses the JSON lines the agent printed.
pub fn parse_lines(stdout: &str) -> Result<Vec<Value>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("diagnosis line {l:?}")))
        .collect()
}

/// The live agent's `--correlation-window`: short, since tests wait for diagnoses and
/// nothing in the lab is slow. Replays compared with a live run use the same.
pub const CORRELATION_WINDOW_S: f64 = 0.5;

pub struct LiveAgent {
    pub process: LabProcess,
    ns: String,
    listen: String,
}

impl LiveAgent {
    /// Starts `detector run` in `ns` on `ifaces` and waits until it is attached.
    pub fn start(lab: &Lab, ns: &str, ifaces: &[&str], extra: &[&str]) -> Result<LiveAgent> {
        LiveAgent::start_with(&detector_bin()?, lab, ns, ifaces, extra)
    }

    /// The same with an explicit agent binary (for programs outside cargo's test layout).
    pub fn start_with(
        bin: &Path,
        lab: &Lab,
        ns: &str,
        ifaces: &[&str],
        extra: &[&str],
    ) -> Result<LiveAgent> {
        LiveAgent::start_listening(bin, lab, ns, ifaces, extra, "127.0.0.1:9863")
    }

    /// The same with the metrics endpoint on `listen` (an address other namespaces reach,
    /// for a Prometheus elsewhere in the lab).
    pub fn start_listening(
        bin: &Path,
        lab: &Lab,
        ns: &str,
        ifaces: &[&str],
        extra: &[&str],
        listen: &str,
    ) -> Result<LiveAgent> {
        let listen = listen.to_string();
        let mut args: Vec<String> = vec![bin.display().to_string(), "run".into()];
        for i in ifaces {
            args.extend(["--iface".into(), i.to_string()]);
        }
        args.extend(["--listen".into(), listen.clone()]);
        args.extend([
            "--correlation-window".into(),
            CORRELATION_WINDOW_S.to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = lab.spawn(ns, "detector", &args)?;
        let wait = attach_wait();
        process
            .wait_for_output("watching", wait)
            .with_context(|| format!("the agent did not attach within {wait:?}"))?;
        Ok(LiveAgent {
            process,
            ns: ns.to_string(),
            listen,
        })
    }

    pub fn diagnoses(&self) -> Result<Vec<Value>> {
        parse_lines(&self.process.stdout())
    }

    /// Waits (bounded) until at least `n` diagnoses have been printed.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let d = self.collect(n, timeout)?;
        ensure!(
            d.len() >= n,
            "{} diagnoses after {timeout:?}, expected {n}; agent output:\n{}",
            d.len(),
            self.process.output()
        );
        Ok(d)
    }

    /// Waits (bounded) for `n` diagnoses and returns what there is either way, for
    /// callers that judge the result themselves.
    pub fn collect(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.diagnoses()?;
            if d.len() >= n || Instant::now() > deadline {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Scrapes /metrics from inside the agent's namespace.
    pub fn metrics(&self, lab: &Lab) -> Result<String> {
        lab.run_ok(
            &self.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}/metrics", self.listen),
            ],
            Duration::from_secs(10),
        )
    }

    /// SIGTERM, and the agent must exit cleanly (detaching its programs).
    pub fn stop(self) -> Result<Vec<Value>> {
        self.process.signal(libc::SIGTERM)?;
        let status = self.process.wait_timeout(Duration::from_secs(10))?;
        ensure!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.process.output()
        );
        self.diagnoses()
    }
}

/// `detector replay FILE`: the diagnoses, and stderr (which holds the summary).
pub fn replay(file: &Path, extra: &[&str]) -> Result<(Vec<Value>, String)> {
    replay_with(&detector_bin()?, file, extra)
}

/// `DETECTOR replay FILE ARGS...`: the diagnoses, and stderr (which holds the summary).
pub fn replay_with(
    detector: &Path,
    file: &Path,
    args: &[impl AsRef<OsStr>],
) -> Result<(Vec<Value>, String)> {
    let out = Command::new(detector)
        .arg("replay")
        .arg(file)
        .args(args)
        .output()
        .with_context(|| format!("running {} replay", detector.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "detector replay {} failed: {stderr}",
        file.display()
    );
    Ok((parse_lines(&String::from_utf8_lossy(&out.stdout))?, stderr))
}

/// A diagnosis reduced to what must match between runs: kind, client, server.
pub fn identity(d: &Value) -> (String, String, String) {
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    (s("kind"), s("client"), s("server"))
}

/// The value of one series (`name` or `name{labels}`, exactly as exposed) in a /metrics
/// text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// How long the agent may take to load, verify and attach its programs. The kernel's
/// verifier walks about 330,000 instructions of them: half a second on a host; under the
/// VM leg's emulation (TCG), which `cargo xtask vmtest` announces in
/// `DETECTOR_LAB_EMULATED`, the kernel tests' loads of the same programs took 7 s each on
/// a quiet machine and 17 s on a busy one, too close to the host's 20 s.
fn attach_wait() -> Duration {
    if std::env::var_os("DETECTOR_LAB_EMULATED").is_some() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(20)
    }
}

/// How often the record walker lost its place in a replay, from `detector replay`'s
/// summary line (`... TLS sync lost: N (...)`).
pub fn replay_sync_lost(summary: &str) -> Option<u64> {
    let rest = summary.rsplit_once("TLS sync lost: ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Abstentions by reason from a /metrics text: `detector_abstained_total{reason="R"}`.
pub fn abstentions(text: &str) -> std::collections::BTreeMap<String, f64> {
    by_reason(text, "detector_abstained_total")
}

/// The series of a metric labelled by `reason` alone, by reason.
pub fn by_reason(text: &str, metric: &str) -> std::collections::BTreeMap<String, f64> {
    let labelled = format!("{metric}{{reason=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(labelled.as_str()))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}
