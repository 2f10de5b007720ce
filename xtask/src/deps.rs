//! The system programs the tests drive (real servers, clients and capture tools), installed
//! from Debian's packages when missing.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cmd::run;

/// (program looked for on PATH, Debian package that provides it)
pub const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("nginx", "nginx"),
    ("tcpdump", "tcpdump"),
    ("python3", "python3"),
    ("nft", "nftables"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
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
    // Debian starts a packaged daemon as soon as it is installed (nginx on :80, Prometheus
    // on :9090); the tests run their own on loopback and in namespaces. What was running
    // before is left running.
    let services: Vec<&str> = services_of(&missing);
    let running_before: Vec<&str> = services
        .iter()
        .copied()
        .filter(|s| service_running(s))
        .collect();
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
    for service in to_stop(&services, &running_before) {
        stop_service(service);
    }
    Ok(())
}

/// Daemons a package starts on installation, by package.
const PACKAGE_SERVICES: &[(&str, &[&str])] = &[
    ("nginx", &["nginx"]),
    ("prometheus", &["prometheus", "prometheus-node-exporter"]),
];

fn services_of(packages: &[&str]) -> Vec<&'static str> {
    PACKAGE_SERVICES
        .iter()
        .filter(|(pkg, _)| packages.contains(pkg))
        .flat_map(|(_, services)| services.iter().copied())
        .collect()
}

/// Services the install started: those of the installed packages that were not running
/// before it.
fn to_stop<'a>(services: &[&'a str], running_before: &[&str]) -> Vec<&'a str> {
    services
        .iter()
        .copied()
        .filter(|s| !running_before.contains(s))
        .collect()
}

/// `service NAME status` works under systemd (it asks systemctl) and under SysV init
/// scripts alike (containers without systemd); exit status 0 means running. No `service`
/// program, or an unknown service, reads as not running, which is right for a package that
/// is not installed yet.
fn service_running(name: &str) -> bool {
    Command::new("service")
        .args([name, "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn stop_service(name: &str) {
    let stopped = Command::new("service")
        .args([name, "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match stopped {
        Ok(s) if s.success() => eprintln!("xtask: stopped {name}, which its installation started"),
        // The package may ship no such service (node exporter is only recommended), or the
        // host may have no service manager at all: nothing was started, so nothing to stop.
        _ if !service_running(name) => {}
        Ok(s) => {
            eprintln!("xtask: warning: {name} is running and `service {name} stop` failed ({s})")
        }
        Err(e) => eprintln!("xtask: warning: {name} is running and could not be stopped: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_services_the_install_started_are_stopped() {
        assert_eq!(services_of(&["curl", "openssl"]), Vec::<&str>::new());
        let services = services_of(&["nginx", "prometheus", "tcpdump"]);
        assert_eq!(
            services,
            ["nginx", "prometheus", "prometheus-node-exporter"]
        );
        assert_eq!(
            to_stop(&services, &[]),
            ["nginx", "prometheus", "prometheus-node-exporter"]
        );
        // An nginx the host was already running is its own business.
        assert_eq!(
            to_stop(&services, &["nginx"]),
            ["prometheus", "prometheus-node-exporter"]
        );
    }

    #[test]
    fn an_unknown_service_is_not_running() {
        assert!(!service_running("xtask-no-such-service-here"));
    }
}
