//! The system programs the tests drive (real servers, clients and capture tools), installed
//! from Debian's packages when missing.

use std::process::{Command, Stdio};

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

/// On PATH, or in the sbin directories a non-login root shell may leave out of it.
fn on_path(program: &str) -> bool {
    which::which(program).is_ok() || which::which_in(program, Some("/usr/sbin:/sbin"), "/").is_ok()
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
    let running_before = running(SERVICE, &services);
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
        stop_service(SERVICE, service);
    }
    Ok(())
}

/// The service front end Debian has with systemd and without it.
const SERVICE: &str = "service";

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
fn service_running(ctl: &str, name: &str) -> bool {
    Command::new(ctl)
        .args([name, "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn running<'a>(ctl: &str, services: &[&'a str]) -> Vec<&'a str> {
    services
        .iter()
        .copied()
        .filter(|s| service_running(ctl, s))
        .collect()
}

fn stop_service(ctl: &str, name: &str) {
    let stopped = Command::new(ctl)
        .args([name, "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match stopped {
        Ok(s) if s.success() => eprintln!("xtask: stopped {name}, which its installation started"),
        // The package may ship no such service (node exporter is only recommended), or the
        // host may have no service manager at all: nothing was started, so nothing to stop.
        _ if !service_running(ctl, name) => {}
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
        assert!(!service_running(SERVICE, "xtask-no-such-service-here"));
        assert!(!service_running("/nonexistent/service", "nginx"));
    }

    /// Against a stand-in `service` that keeps its running set in a file: an nginx the
    /// host ran before the install stays up, the Prometheus the install started is
    /// stopped, and a service the package did not ship is left alone quietly.
    #[test]
    fn install_started_services_are_stopped_and_others_kept() {
        use std::fs;

        let dir = std::env::temp_dir().join(format!("xtask-service-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let ctl = dir.join("service");
        crate::script::write_executable(
            &ctl,
            &format!(
                "case \"$2\" in\n\
                 status) grep -qx \"$1\" {d}/running ;;\n\
                 stop) grep -qx \"$1\" {d}/running || exit 1; echo \"$1\" >> {d}/stopped; \
                 grep -vx \"$1\" {d}/running > {d}/left; mv {d}/left {d}/running ;;\n\
                 *) exit 1 ;;\n\
                 esac"
            ),
        );
        let ctl = ctl.to_str().unwrap();
        fs::write(dir.join("running"), "nginx\n").unwrap();

        let services = services_of(&["nginx", "prometheus"]);
        let before = running(ctl, &services);
        assert_eq!(before, ["nginx"]);
        // The install starts Prometheus (the node exporter is not installed).
        fs::write(dir.join("running"), "nginx\nprometheus\n").unwrap();
        for s in to_stop(&services, &before) {
            stop_service(ctl, s);
        }
        assert_eq!(
            fs::read_to_string(dir.join("stopped")).unwrap(),
            "prometheus\n"
        );
        assert_eq!(fs::read_to_string(dir.join("running")).unwrap(), "nginx\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
