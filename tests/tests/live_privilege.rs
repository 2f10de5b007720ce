//! Least privilege, live: the agent started as the shipped systemd unit starts it (a user
//! of no privilege holding only the unit's `AmbientCapabilities=`, within its
//! `CapabilityBoundingSet=`: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) attaches, keeps only
//! CAP_BPF and CAP_NET_ADMIN, and passes a field-case scenario; as root it gives up every
//! capability but those two once attached. What the agent holds is read from its
//! `/proc/PID/status`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use detector_lab::{
    Lab,
    agent::{LiveAgent, detector_bin},
    fixture::{root, serial},
    scenarios,
};

/// CAP_NET_ADMIN (12) and CAP_BPF (39), as the kernel prints capability sets.
const KEPT: u64 = (1 << 12) | (1 << 39);
/// CAP_PERFMON (38): needed to load, given up after.
const PERFMON: u64 = 1 << 38;

/// A directory `nobody` can read: the agent binary is copied there, since the build's own
/// may sit under a home directory `nobody` cannot enter.
///
/// Every test here takes its turn (`serial`) before writing a program it then runs: a file
/// open for writing in this process is inherited by a child another thread forks, until
/// that child execs, and running the file meanwhile fails with "Text file busy".
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("live-privilege-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Scratch(dir))
    }

    /// A script that runs the agent as `nobody` (the unit's `DynamicUser=` is a user of no
    /// privilege too) with exactly the unit's capabilities in every set that passes them
    /// on (bounding, inheritable, ambient), and `exec`s so the agent keeps the script's pid.
    fn unprivileged_agent(&self) -> Result<PathBuf> {
        let unit = Unit::shipped()?;
        assert_eq!(
            unit.ambient, unit.bounding,
            "the unit grants what it bounds"
        );
        let caps = setpriv_caps(&unit.ambient);
        let bin = self.0.join("detector");
        fs::copy(detector_bin()?, &bin).context("copying the agent binary")?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
        let script = self.0.join("detector-as-nobody");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups \
                 --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} {} \"$@\"\n",
                bin.display()
            ),
        )?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        Ok(script)
    }
}

/// The capabilities of deploy/systemd/detector.service.
struct Unit {
    ambient: Vec<String>,
    bounding: Vec<String>,
}

impl Unit {
    fn shipped() -> Result<Unit> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/detector.service");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let list = |key: &str| -> Result<Vec<String>> {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("{} has no {key}=", path.display()))?;
            let mut caps: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            caps.sort();
            Ok(caps)
        };
        assert!(
            text.lines().any(|l| l == "DynamicUser=yes"),
            "the unit runs as no root"
        );
        Ok(Unit {
            ambient: list("AmbientCapabilities")?,
            bounding: list("CapabilityBoundingSet")?,
        })
    }
}

/// `CAP_BPF CAP_NET_ADMIN` as setpriv takes it: `-all,+bpf,+net_admin`.
fn setpriv_caps(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        s.push_str(",+");
        s.push_str(&c.trim_start_matches("CAP_").to_lowercase());
    }
    s
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What `/proc/PID/status` says of a process's privileges.
#[derive(Debug, PartialEq)]
struct Privileges {
    uid: u32,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    bounding: u64,
    ambient: u64,
    no_new_privs: bool,
}

fn privileges(pid: u32) -> Result<Privileges> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<&str> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .with_context(|| format!("{path} has no {name}:\n{status}"))
    };
    let caps = |name: &str| -> Result<u64> {
        u64::from_str_radix(field(name)?, 16).with_context(|| format!("{name} in {path}"))
    };
    Ok(Privileges {
        uid: field("Uid")?
            .split_whitespace()
            .nth(1)
            .context("effective uid")?
            .parse()?,
        effective: caps("CapEff")?,
        permitted: caps("CapPrm")?,
        inheritable: caps("CapInh")?,
        bounding: caps("CapBnd")?,
        ambient: caps("CapAmb")?,
        no_new_privs: field("NoNewPrivs")? == "1",
    })
}

/// The agent's privileges once it says it is attached, and its clean exit after.
fn attached_privileges(agent_bin: &Path) -> Result<Privileges> {
    let lab = Lab::routed()?;
    let (router, rc, _) = lab.router_parts()?;
    let agent = LiveAgent::start_with(agent_bin, &lab, &router, &[&rc], &[])?;
    let p = privileges(agent.process.pid());
    agent
        .stop()
        .context("the agent must still detach and exit cleanly")?;
    p
}

#[test]
fn root_gives_up_every_capability_but_two_once_attached() -> Result<()> {
    if !root("the privilege tests") {
        return Ok(());
    }
    let _turn = serial();
    let p = attached_privileges(&detector_bin()?)?;
    assert_eq!(
        p,
        Privileges {
            uid: 0,
            effective: KEPT,
            permitted: KEPT,
            inheritable: 0,
            bounding: KEPT,
            ambient: 0,
            no_new_privs: true,
        }
    );
    Ok(())
}

#[test]
fn as_the_systemd_unit_starts_it_the_agent_keeps_two_capabilities() -> Result<()> {
    if !root("the privilege tests") {
        return Ok(());
    }
    let _turn = serial();
    let scratch = Scratch::new("attach")?;
    let p = attached_privileges(&scratch.unprivileged_agent()?)?;
    let nobody = 65534;
    assert_eq!(
        Unit::shipped()?.bounding,
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"],
        "the bits below"
    );
    assert_eq!(
        p,
        Privileges {
            uid: nobody,
            effective: KEPT,
            permitted: KEPT,
            inheritable: 0,
            // Without CAP_SETPCAP the agent cannot shrink it; setpriv already did, and with
            // no-new-privileges nothing can raise the other sets into it again.
            bounding: KEPT | PERFMON,
            ambient: 0,
            no_new_privs: true,
        }
    );
    Ok(())
}

/// Field case 3 (HTTP sent to a TLS port) played by the lab with the agent as `nobody`:
/// the live diagnoses must be exactly the expected ones.
#[test]
fn as_the_systemd_unit_starts_it_the_agent_passes_a_live_scenario() -> Result<()> {
    if !root("the privilege tests") {
        return Ok(());
    }
    let _turn = serial();
    let scratch = Scratch::new("scenario")?;
    let agent = scratch.unprivileged_agent()?;
    let s = scenarios::find("http-to-nginx-tls-v4").context("the scenario")?;
    let outcome = scenarios::run(s, &scratch.0.join("out"), &agent)?;
    let problems = outcome.expected.check(&outcome.live);
    assert!(
        problems.is_empty(),
        "live diagnoses of the agent as nobody differ from {}: {problems:?}\nlive: {:?}",
        outcome.expected_path.display(),
        outcome.live
    );
    assert!(!outcome.live.is_empty(), "the scenario expects a diagnosis");
    Ok(())
}

/// Without the capabilities the agent stops before loading anything, naming what is
/// missing and how to grant it.
#[test]
fn without_capabilities_the_error_names_them() -> Result<()> {
    if !root("the privilege tests") {
        return Ok(());
    }
    let _turn = serial();
    let scratch = Scratch::new("none")?;
    let bin = scratch.unprivileged_agent()?.with_file_name("detector");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--iface", "lo"])
        .output()
        .context("running setpriv")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("missing capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{stderr}"
    );
    Ok(())
}

/// Every system call the agent makes through a whole live scenario (load, attach, drop
/// privileges, read events, serve a scrape, detach) is one the unit's `SystemCallFilter=`
/// allows, with the unit's groups expanded by `systemd-analyze syscall-filter`. The agent
/// runs under `strace -f -c`; a shell in front passes SIGTERM on to it (strace itself
/// would detach and leave it running).
#[test]
fn the_agent_makes_only_system_calls_the_unit_allows() -> Result<()> {
    if !root("the privilege tests") {
        return Ok(());
    }
    let _turn = serial();
    let scratch = Scratch::new("syscalls")?;
    let table = scratch.0.join("strace.txt");
    let traced = scratch.0.join("detector-traced");
    fs::write(
        &traced,
        format!(
            "#!/bin/sh\nstrace -f -c -o {} {} \"$@\" &\nstraced=$!\n\
             trap 'kill -TERM $(pgrep -P $straced)' TERM\nwait $straced\nwait $straced\n",
            table.display(),
            detector_bin()?.display()
        ),
    )?;
    fs::set_permissions(&traced, fs::Permissions::from_mode(0o755))?;
    let s = scenarios::find("http-to-nginx-tls-v4").context("the scenario")?;
    let outcome = scenarios::run(s, &scratch.0.join("out"), &traced)?;
    assert!(
        outcome.expected.check(&outcome.live).is_empty(),
        "the traced agent must still diagnose: {:?}",
        outcome.live
    );
    let made = strace_summary(&fs::read_to_string(&table)?)?;
    assert!(made.contains("bpf"), "strace saw the agent: {made:?}");
    let allowed = unit_syscalls()?;
    assert!(
        allowed.contains("bpf") && !allowed.contains("reboot") && !allowed.contains("mount"),
        "the filter as parsed: {allowed:?}"
    );
    let refused: Vec<&String> = made.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?}"
    );
    Ok(())
}

/// The system calls named in `strace -c`'s table: its rows are four or five numbers then
/// a name. strace may write other lines into the same file (one CI run on a loaded machine
/// had a line ending in `...>`, the mark strace gives a call a thread left unfinished),
/// which name no call; the table must still be there in full, closed by its `total` row.
fn strace_summary(table: &str) -> Result<std::collections::BTreeSet<String>> {
    let mut calls = std::collections::BTreeSet::new();
    let mut total = false;
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((name, numbers)) = fields.split_last() else {
            continue;
        };
        let is_row = (4..=5).contains(&numbers.len())
            && numbers.iter().all(|n| n.parse::<f64>().is_ok())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_row {
            continue;
        }
        if *name == "total" {
            total = true;
        } else {
            calls.insert(name.to_string());
        }
    }
    anyhow::ensure!(total, "strace's table has no `total` row: {table}");
    Ok(calls)
}

/// What the shipped unit's `SystemCallFilter=` allows, groups expanded.
fn unit_syscalls() -> Result<std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/detector.service");
    let unit = fs::read_to_string(&path)?;
    let filter = unit
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .context("the unit has a SystemCallFilter=")?;
    assert!(!filter.starts_with('~'), "an allow-list");
    let out = std::process::Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .context("running systemd-analyze (Debian package systemd)")?;
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8(out.stdout)?.lines() {
        if let Some(member) = line.strip_prefix("    ") {
            if !member.starts_with('#')
                && let Some(g) = &current
            {
                groups
                    .entry(g.clone())
                    .or_default()
                    .push(member.trim().to_string());
            }
        } else if line.starts_with('@') {
            current = Some(line.trim().to_string());
        }
    }
    // systemd always allows @default alongside an allow-list.
    let mut todo: Vec<String> = filter.split_whitespace().map(str::to_string).collect();
    todo.push("@default".into());
    let mut allowed = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if name.starts_with('@') {
            let members = groups
                .get(&name)
                .with_context(|| format!("systemd-analyze knows no group {name}"))?;
            todo.extend(members.iter().cloned());
        } else {
            allowed.insert(name);
        }
    }
    Ok(allowed)
}

/// The table parser takes the rows, skips a note strace leaves behind, and refuses a file
/// with no table.
#[test]
fn strace_tables_are_read_row_by_row() -> Result<()> {
    let table = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000600          12        50           bpf
 40.00    0.000400           4       100        26 openat
 <unfinished ...>
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           6       150        26 total
";
    let calls = strace_summary(table)?;
    assert_eq!(
        calls.into_iter().collect::<Vec<_>>(),
        ["bpf".to_string(), "openat".to_string()]
    );
    assert!(strace_summary("strace: Process 12 detached\n").is_err());
    Ok(())
}
