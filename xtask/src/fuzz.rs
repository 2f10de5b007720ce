//! `cargo xtask fuzz`: the agent's decoders under libFuzzer (cargo-fuzz targets in
//! tests/fuzz, built on nightly with AddressSanitizer) and the kernel program under
//! BPF_PROG_TEST_RUN on generated frames (the `kernel-fuzz` binary of crate `tests`).
//! `cargo xtask test` runs a short deterministic smoke of each libFuzzer target.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{capture, describe, run},
    toolchain, workspace_root,
};

/// The libFuzzer targets (tests/fuzz/fuzz_targets/NAME.rs).
pub const LIBFUZZER_TARGETS: &[&str] = &["pcap_reader", "event_decode", "segment"];
/// The kernel program's fuzz run, named like a target.
pub const KERNEL_TARGET: &str = "kernel";

const CARGO_FUZZ_VERSION: &str = "0.13";
/// Seconds per libFuzzer target in `cargo xtask test`.
const SMOKE_SECONDS: u64 = 5;
/// Fixed, so that a smoke run explores the same inputs each time.
const SMOKE_SEED: u64 = 1;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("tests/fuzz")
}

fn out_dir() -> PathBuf {
    crate::target_dir().join("fuzz")
}

/// What `cargo xtask fuzz` was asked to do.
pub struct Request {
    pub seconds: u64,
    pub kernel_frames: u64,
    pub seed: u64,
    pub targets: Vec<String>,
}

pub fn fuzz(path: &OsString, req: &Request) -> anyhow::Result<()> {
    let targets: Vec<&str> = if req.targets.is_empty() {
        LIBFUZZER_TARGETS
            .iter()
            .copied()
            .chain([KERNEL_TARGET])
            .collect()
    } else {
        for t in &req.targets {
            if t != KERNEL_TARGET && !LIBFUZZER_TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t}: the targets are {} and {KERNEL_TARGET}",
                    LIBFUZZER_TARGETS.join(", ")
                );
            }
        }
        req.targets.iter().map(String::as_str).collect()
    };
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    let libfuzzer: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| *t != KERNEL_TARGET)
        .collect();
    if !libfuzzer.is_empty() {
        let path = with_cargo_fuzz(path)?;
        build_targets(&path)?;
        for t in libfuzzer {
            let r = libfuzzer_run(&path, t, req.seconds, None, false)?;
            lines.push(r.summary(t));
            if r.crash.is_some() || !r.ok {
                failed.push(t);
            }
        }
    }
    if targets.contains(&KERNEL_TARGET) && req.kernel_frames > 0 {
        if !crate::deps::is_root() {
            bail!("the kernel fuzz run loads BPF programs: run it as root");
        }
        let artifacts = out_dir().join("artifacts").join(KERNEL_TARGET);
        let status = crate::cargo(path)
            .args([
                "run",
                "--release",
                "--package",
                "tests",
                "--bin",
                "kernel-fuzz",
                "--",
            ])
            .args(["--frames", &req.kernel_frames.to_string()])
            .args(["--seed", &req.seed.to_string()])
            .arg("--artifacts")
            .arg(&artifacts)
            .status()
            .context("running the kernel fuzzer")?;
        match status.code() {
            Some(0) => lines.push(format!("{KERNEL_TARGET}: no violation (report above)")),
            Some(1) => {
                lines.push(format!(
                    "{KERNEL_TARGET}: VIOLATIONS (above; reproducers in {})",
                    artifacts.display()
                ));
                failed.push(KERNEL_TARGET);
            }
            _ => bail!("the kernel fuzzer failed ({status})"),
        }
    }
    println!("\nfuzzing summary:");
    for l in &lines {
        println!("  {l}");
    }
    if !failed.is_empty() {
        bail!("fuzzing found problems in: {}", failed.join(", "));
    }
    Ok(())
}

/// The smoke `cargo xtask test` runs: each libFuzzer target a few seconds from its seeds
/// only, with a fixed seed. (The kernel program's smoke is an ordinary test of crate
/// `tests`, `kernel_fuzz`.)
pub fn smoke(path: &OsString) -> anyhow::Result<()> {
    let path = with_cargo_fuzz(path)?;
    build_targets(&path)?;
    let mut failed = Vec::new();
    for t in LIBFUZZER_TARGETS {
        let r = libfuzzer_run(&path, t, SMOKE_SECONDS, Some(SMOKE_SEED), true)?;
        println!("xtask: fuzz smoke: {}", r.summary(t));
        if r.crash.is_some() || !r.ok {
            failed.push(*t);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz smoke failed for: {}", failed.join(", "));
    }
    Ok(())
}

/// PATH with cargo-fuzz's directory in front, installing it (once, cached beside
/// bpf-linker) when missing or of another version.
fn with_cargo_fuzz(path: &OsString) -> anyhow::Result<OsString> {
    let root = toolchain::cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin");
    let exe = bin.join("cargo-fuzz");
    let installed = exe.is_file()
        && capture(Command::new(&exe).arg("--version")).is_ok_and(|v| {
            v.trim()
                .starts_with(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}."))
        });
    if !installed {
        eprintln!(
            "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (once; cached in {})",
            root.display()
        );
        run(Command::new("cargo")
            .args(["install", "--locked", "--force", "cargo-fuzz", "--version"])
            .arg(format!("^{CARGO_FUZZ_VERSION}"))
            .arg("--root")
            .arg(&root))
        .context("installing cargo-fuzz failed; it needs network access to crates.io")?;
    }
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(path));
    std::env::join_paths(paths).context("building PATH")
}

fn cargo_fuzz(path: &OsString) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root())
        .env("PATH", path)
        .args(["+nightly", "fuzz"]);
    c
}

fn build_targets(path: &OsString) -> anyhow::Result<()> {
    run(cargo_fuzz(path)
        .arg("build")
        .arg("--fuzz-dir")
        .arg(fuzz_dir()))
    .context("building the fuzz targets (nightly, AddressSanitizer)")
}

struct LibfuzzerRun {
    ok: bool,
    seconds: u64,
    executions: Option<u64>,
    corpus: usize,
    crash: Option<PathBuf>,
    log: PathBuf,
}

impl LibfuzzerRun {
    fn summary(&self, target: &str) -> String {
        let execs = self
            .executions
            .map_or_else(|| "? executions".to_string(), |n| format!("{n} executions"));
        match (&self.crash, self.ok) {
            (Some(c), _) => format!(
                "{target}: CRASH after {execs}; reproducer {} (log {})",
                c.display(),
                self.log.display()
            ),
            (None, false) => format!("{target}: FAILED (log {})", self.log.display()),
            (None, true) => format!(
                "{target}: {execs} in {} s, corpus {} inputs, no crash",
                self.seconds, self.corpus
            ),
        }
    }
}

/// Runs one target for `seconds`. Its corpus grows in target/fuzz/corpus/TARGET (or, for
/// a smoke, starts empty each time), fed from the committed seeds in
/// tests/fuzz/seeds/TARGET; crashes go to target/fuzz/artifacts/TARGET.
fn libfuzzer_run(
    path: &OsString,
    target: &str,
    seconds: u64,
    seed: Option<u64>,
    fresh: bool,
) -> anyhow::Result<LibfuzzerRun> {
    let out = out_dir();
    let corpus = out
        .join(if fresh { "smoke-corpus" } else { "corpus" })
        .join(target);
    if fresh {
        let _ = fs::remove_dir_all(&corpus);
    }
    let artifacts = out.join("artifacts").join(target);
    let logs = out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir().join("seeds").join(target);
    let log = logs.join(format!("{target}.log"));
    let mut cmd = cargo_fuzz(path);
    cmd.args(["run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // A slow input is a finding too (e.g. a huge claimed length read byte by byte).
        .arg("-timeout=10");
    if let Some(s) = seed {
        cmd.arg(format!("-seed={s}"));
    }
    let before = list(&artifacts);
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log {})",
        log.display()
    );
    let logfile = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdout(logfile.try_clone()?)
        .stderr(logfile)
        .status()
        .with_context(|| format!("starting {}", describe(&cmd)))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crash = list(&artifacts).into_iter().find(|p| !before.contains(p));
    if !status.success() {
        for l in text
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  | {l}");
        }
    }
    Ok(LibfuzzerRun {
        ok: status.success(),
        seconds,
        executions: final_stat(&text, "number_of_executed_units"),
        corpus: list(&corpus).len(),
        crash,
        log,
    })
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A value of libFuzzer's `-print_final_stats` output (`stat::NAME: VALUE`).
fn final_stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#2\tINITED cov: 10\nDone 1234 runs in 5 second(s)\n\
                   stat::number_of_executed_units: 1234\nstat::average_exec_per_sec:     246\n";
        assert_eq!(final_stat(log, "number_of_executed_units"), Some(1234));
        assert_eq!(final_stat(log, "average_exec_per_sec"), Some(246));
        assert_eq!(final_stat(log, "peak_rss_mb"), None);
    }
}
