//! `cargo xtask vmtest`: the kernel-program tests and live scenarios on other kernels, each
//! booted in qemu over the running system's files (KVM where it works, TCG emulation
//! otherwise). The test binaries are built on the host; nothing compiles in the guest.

mod guest;
mod initrd;
mod kernel;

use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build_detector, cargo, deps, target_dir, toolchain, workspace_root};

pub use guest::Suite;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a probe boot under it works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

pub struct Request {
    pub kernels: Vec<String>,
    pub suite: Suite,
    pub accel: Accel,
}

/// Programs the VM runner needs on the host, with their Debian packages.
const VM_PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("dpkg-deb", "dpkg"),
];

/// Runs `suite` on every kernel of the request, one after the other; fails when any step
/// on any kernel failed, after all ran.
pub fn vmtest(path: &OsString, req: &Request) -> anyhow::Result<()> {
    if !deps::is_root() {
        bail!("the VM's tests load BPF programs as the guest's root; run xtask as root");
    }
    deps::ensure(&[deps::LAB_PROGRAMS, VM_PROGRAMS].concat())?;
    let binaries = build(path, req.suite)?;
    let cache = toolchain::cache_dir().join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut failed = Vec::new();
    for spec in &req.kernels {
        let k = kernel::prepare(spec, &cache).with_context(|| format!("kernel {spec}"))?;
        let initrd = initrd::build(&k, &cache)?;
        let accel = choose_accel(req.accel, &k)?;
        let out = target_dir().join("vmtest").join(&k.release);
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out)?;
        let steps = guest::steps(req.suite);
        let script = out.join("guest.sh");
        fs::write(&script, guest::script(&k, accel, steps, &out, &binaries))?;
        eprintln!(
            "xtask: vmtest on {} ({} steps, {accel:?}); logs in {}",
            k.release,
            steps.len(),
            out.display()
        );
        let started = Instant::now();
        let deadline = steps.iter().map(|s| s.timeout).sum::<Duration>() + BOOT_ALLOWANCE;
        let boot = boot(&k, &initrd, accel, &script, &out, deadline)?;
        let results = guest::results(&out, steps);
        eprintln!(
            "xtask: vmtest on {}: {} in {:.0} s{}",
            k.release,
            if results.ok { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            if boot.timed_out {
                " (the VM ran out of time and was stopped)"
            } else {
                ""
            }
        );
        for line in &results.lines {
            eprintln!("xtask:   {line}");
        }
        if !results.ok || boot.timed_out {
            failed.push(k.release.clone());
        }
    }
    if !failed.is_empty() {
        bail!("vmtest failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Booting and shutting down, on top of the steps' own time limits.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(120);

/// The test binaries and the agent, built for the host and run as they are in the guest.
pub struct Binaries {
    /// Test target name → executable.
    pub tests: Vec<(String, PathBuf)>,
    pub detector: PathBuf,
}

fn build(path: &OsString, suite: Suite) -> anyhow::Result<Binaries> {
    build_detector(path)?;
    let mut c = cargo(path);
    c.args([
        "test",
        "--release",
        "--package",
        "tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for t in guest::targets(suite) {
        c.args(["--test", t]);
    }
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
        {
            tests.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(Binaries {
        tests,
        detector: target_dir().join("release/detector"),
    })
}

fn choose_accel(want: Accel, k: &kernel::Kernel) -> anyhow::Result<Accel> {
    match want {
        Accel::Tcg => Ok(Accel::Tcg),
        Accel::Kvm => Ok(Accel::Kvm),
        Accel::Auto => {
            if fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_err()
            {
                return Ok(Accel::Tcg);
            }
            Ok(if kvm_boots(k)? {
                Accel::Kvm
            } else {
                eprintln!("xtask: /dev/kvm is there but a KVM guest does not boot: using TCG");
                Accel::Tcg
            })
        }
    }
}

/// Whether `k` starts under KVM: with no root to mount it panics at once, which shows it
/// ran. (Some sandboxes expose /dev/kvm but fail on the first vCPU, or hang.)
fn kvm_boots(k: &kernel::Kernel) -> anyhow::Result<bool> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(machine(Accel::Kvm))
        .arg("-kernel")
        .arg(&k.image)
        .args(["-append", "console=ttyS0 panic=-1", "-serial", "stdio"]);
    let (text, timed_out) = watch(&mut c, Duration::from_secs(30), None)?;
    Ok(!timed_out && text.contains("Linux version"))
}

fn machine(accel: Accel) -> Vec<&'static str> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        _ => ("tcg", "max"),
    };
    vec![
        "-nodefaults",
        "-no-user-config",
        "-machine",
        if accel == "kvm" {
            "q35,accel=kvm"
        } else {
            "q35,accel=tcg"
        },
        "-cpu",
        cpu,
        "-smp",
        "2",
        "-m",
        "3G",
        "-display",
        "none",
        "-no-reboot",
    ]
}

struct Boot {
    timed_out: bool,
}

fn boot(
    k: &kernel::Kernel,
    initrd: &Path,
    accel: Accel,
    script: &Path,
    out: &Path,
    deadline: Duration,
) -> anyhow::Result<Boot> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(machine(accel))
        .arg("-kernel")
        .arg(&k.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet VMTEST_SCRIPT={} VMTEST_OUT={}",
            script.display(),
            out.display()
        ))
        .args(["-serial", "stdio"])
        .arg("-virtfs")
        .arg(format!(
            "local,path=/,mount_tag={},security_model=none,readonly=on,multidevs=remap",
            initrd::ROOT_TAG
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag={},security_model=none,multidevs=remap",
            out.display(),
            initrd::OUT_TAG
        ))
        .current_dir(workspace_root());
    let console = fs::File::create(out.join("console.log"))?;
    let (_, timed_out) = watch(&mut c, deadline, Some(console))?;
    Ok(Boot { timed_out })
}

/// Runs qemu with its serial console on stdout; echoes the guest's `vmtest:` lines and
/// copies everything to `log`; stops it after `limit`. Returns the console text and
/// whether it had to be stopped.
fn watch(
    c: &mut Command,
    limit: Duration,
    mut log: Option<fs::File>,
) -> anyhow::Result<(String, bool)> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let echo = log.is_some();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if echo && line.starts_with("vmtest:") {
                eprintln!("{line}");
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = reader.join().unwrap_or_default();
    let errors = errors.join().unwrap_or_default();
    for line in errors.lines().filter(|l| !l.trim().is_empty()) {
        if echo {
            eprintln!("xtask: qemu: {line}");
        }
    }
    Ok((text, timed_out))
}
