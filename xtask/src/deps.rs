//! The system programs the tests drive (real servers, clients and capture tools), installed
//! from Debian's packages when missing.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd::run;

/// Programs the lab plays with, as (program looked for on PATH, Debian package that
/// provides it). `nft` (field case 5 of docs/field-cases.md) and `tshark` (for
/// `lab --compare`) are installed when the lab needs them but are optional.
pub const LAB_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("nginx", "nginx"),
    ("tcpdump", "tcpdump"),
    ("python3", "python3"),
];

/// What the tests need beyond the lab's programs.
pub const MORE_TEST_PROGRAMS: &[(&str, &str)] = &[
    ("nft", "nftables"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("strace", "strace"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file())
}

/// Installs the Debian packages behind any missing program; says exactly what is missing
/// when it cannot.
pub fn ensure(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = programs
        .iter()
        .filter(|(prog, _)| !on_path(prog))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing packages: {list}; install them with `sudo apt-get install {list}`");
    }
    if !on_path("apt-get") {
        bail!("missing packages: {list}, and there is no apt-get here to install them with");
    }
    eprintln!("xtask: installing {list}");
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {list}"))?;
    if missing.contains(&"prometheus") {
        // Debian starts the packaged server on :9090; the tests run their own on loopback.
        let _ = Command::new("service")
            .args(["prometheus", "stop"])
            .status();
        let _ = Command::new("service")
            .args(["prometheus-node-exporter", "stop"])
            .status();
    }
    Ok(())
}
