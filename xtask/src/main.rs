//! `cargo xtask`: build, run, test and lint the detector, setting up what the eBPF build
//! and the tests need on the way.

mod cmd;
mod deps;
mod fuzz;
mod install;
mod kube;
#[cfg(test)]
mod script;
mod toolchain;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::cmd::run;

#[derive(Parser)]
#[command(about = "Build, run and test the TLS/TCP failure detector")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel program and the agent (release).
    Build,
    /// Build, then run the agent as root: `cargo xtask run -- run --iface eth0`.
    Run {
        /// Arguments for the `detector` binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then install the agent, its systemd unit (deploy/systemd/detector.service) and
    /// its settings (/etc/default/detector, kept when present); checks the unit with
    /// `systemd-analyze verify`.
    Install {
        /// Where the binary goes (PREFIX/bin/detector); the unit names it there.
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: PathBuf,
        /// A staging root to install below instead of `/` (for packaging).
        #[arg(long, value_name = "DIR", default_value = "/")]
        destdir: PathBuf,
    },
    /// Validate the Kubernetes manifests (deploy/kubernetes) offline against the schemas
    /// of Kubernetes 1.31 and of the Prometheus Operator's PodMonitor.
    Manifests,
    /// Everything CI runs: formatting, lints (userspace and eBPF), unit, kernel, live and
    /// replay tests, then `vmtest --suite quick` on Linux 6.1. Needs root (BPF, network
    /// namespaces).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// The kernel-program tests and live scenarios on other kernels, each booted in qemu
    /// over this system's files (KVM where it works, TCG otherwise). Needs root.
    Vmtest {
        /// A kernel: a version whose newest Debian `linux-image-VERSION*-amd64` package is
        /// downloaded and unpacked into the cache (`6.1`, `6.12`, `6.1.0-57`), a `.deb`, or
        /// a directory holding an unpacked one. Repeat for several; 6.1 when none given.
        #[arg(long = "kernel", value_name = "VERSION|PATH")]
        kernels: Vec<String>,
        /// `quick` is what `cargo xtask test` runs; `full` every kernel-program test binary
        /// and more live scenarios.
        #[arg(long, value_enum, default_value = "full")]
        suite: vm::Suite,
        #[arg(long, value_enum, default_value = "auto")]
        accel: vm::Accel,
    },
    /// cargo fmt --check and clippy -D warnings, for userspace and for the eBPF crate.
    Lint,
    /// Fuzzing: each libFuzzer target (pcap_reader, event_decode, segment; cargo-fuzz on
    /// nightly, installed when missing) for N seconds, then the kernel program on
    /// generated frames through BPF_PROG_TEST_RUN (target `kernel`; needs root). Reports
    /// executions and any crash with its reproducer.
    Fuzz {
        /// Seconds per libFuzzer target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Frames for the kernel program's run (0 skips it).
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        kernel_frames: u64,
        /// Seed of the kernel run's frame generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Targets to run; all when none given.
        targets: Vec<String>,
    },
    /// The kernel program against an empty XDP program and a minimal flow tracker, on the
    /// same frames in one run (BPF_PROG_TEST_RUN); then the agent's events per second on
    /// recorded event streams, its memory with 65,536 open sessions, and the kernel's
    /// memory per tracked flow. Needs root.
    Bench {
        /// Instead: `detector replay` of FILE (or of a capture of bulk downloads and short
        /// sessions written once under target/bench) with one worker and with one per
        /// CPU, against the test-run floor of one core and against tshark.
        #[arg(long, value_name = "FILE", num_args = 0..=1, conflicts_with = "live")]
        replay: Option<Option<PathBuf>>,
        /// Instead: TLS downloads (nginx -> curl) across a lab's veth pair with no program,
        /// empty programs and the detector on either side, modes interleaved round by
        /// round (`LIVE_MIB`, default 512, and `LIVE_ROUNDS`, default 5).
        #[arg(long)]
        live: bool,
    },
    /// The lab: every field case played by real software (nginx, openssl, curl, nftables)
    /// in network namespaces, with the agent live on the router; writes OUT/NAME.pcap,
    /// NAME.expected.json, NAME.live.json. Needs root.
    // These options mirror the lab binary's own (tests/lab/src/bin/lab/main.rs), which is
    // built and run from here: xtask does not link the lab (that would build the eBPF
    // programs before anything else), so it keeps its own copy of their descriptions.
    Lab {
        /// Scenarios to play (names, or prefixes such as `clean`); all when none given.
        scenarios: Vec<String>,
        /// Directory for the captures and labels [default: target/lab].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// List the scenarios: name, field case, what it plays, about how long.
        #[arg(long)]
        list: bool,
        /// Instead of playing: tshark's view of each capture in DIR [default: target/lab]
        /// next to the detector's diagnoses from `detector replay`.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        compare: Option<Option<PathBuf>>,
    },
    /// The detector at work with no traffic of interest around: the agent on a lab router,
    /// one scenario per field case, diagnoses as they come, then the metrics. Needs root.
    Demo,
    /// Clean lab traffic for N minutes with the agent live on the router (short sessions,
    /// keep-alives, bulk both ways, resumptions, long-lived connections idle past the
    /// threshold, agent restarts, a spoofed-segment flood); prints sessions, diagnoses,
    /// abstentions, TLS sync losses and evictions; fails on any diagnosis or sync loss.
    /// Needs root.
    Soak {
        #[arg(long, default_value_t = 15.0)]
        minutes: f64,
    },
}

fn main() -> std::process::ExitCode {
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Task::Build => {
            build()?;
            Ok(())
        }
        Task::Run { args } => {
            let bin = build()?;
            let mut cmd = if deps::is_root() {
                Command::new(&bin)
            } else {
                // Loading BPF programs and attaching to interfaces needs privileges.
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.args(&args);
            let status = cmd
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Install { prefix, destdir } => {
            let bin = build()?;
            let layout = install::Layout { destdir, prefix };
            for f in install::install(&bin, &layout)? {
                eprintln!("xtask: installed {}", f.display());
            }
            if !install::verify(&layout)? {
                eprintln!("xtask: systemd-analyze not found: the unit was not verified");
            }
            eprintln!(
                "xtask: set the interfaces in {}, then `systemctl daemon-reload && \
                 systemctl enable --now detector`",
                layout.settings().display()
            );
            Ok(())
        }
        Task::Manifests => {
            for line in kube::validate(&kube::manifests_dir())? {
                println!("{line}");
            }
            Ok(())
        }
        Task::Test { filter } => test(filter.as_deref()),
        Task::Bench { replay, live } => {
            if !deps::is_root() {
                bail!("the benchmark loads BPF programs: run it as root");
            }
            if live {
                deps::ensure(deps::LAB_PROGRAMS)?;
            }
            let path = toolchain::ensure()?;
            if live {
                // The agent the live bench starts (next to the bench binary's directory).
                build_detector(&path)?;
                return run(cargo(&path).args(["bench", "--package", "tests", "--bench", "live"]));
            }
            match replay {
                None => {
                    run(cargo(&path).args(["bench", "--package", "tests", "--bench", "kernel"]))?;
                    run(cargo(&path).args(["bench", "--package", "tests", "--bench", "agent"]))
                }
                Some(file) => {
                    let mut c = cargo(&path);
                    c.args(["bench", "--package", "tests", "--bench", "replay", "--"]);
                    if let Some(f) = file {
                        // The bench runs in the tests crate's directory.
                        c.arg(
                            std::path::absolute(&f)
                                .with_context(|| format!("{}: no such capture", f.display()))?,
                        );
                    }
                    run(&mut c)
                }
            }
        }
        Task::Vmtest {
            mut kernels,
            suite,
            accel,
        } => {
            if kernels.is_empty() {
                kernels.push(CI_KERNEL.to_string());
            }
            let path = toolchain::ensure()?;
            vm::vmtest(
                &path,
                &vm::Request {
                    kernels,
                    suite,
                    accel,
                },
            )
        }
        Task::Lint => {
            let path = toolchain::ensure()?;
            lint(&path)
        }
        Task::Fuzz {
            seconds,
            kernel_frames,
            seed,
            targets,
        } => {
            let path = toolchain::ensure()?;
            fuzz::fuzz(
                &path,
                &fuzz::Request {
                    seconds,
                    kernel_frames,
                    seed,
                    targets,
                },
            )
        }
        Task::Lab {
            scenarios,
            out,
            list,
            compare,
        } => {
            let mut args: Vec<OsString> = Vec::new();
            if list {
                args.push("--list".into());
            } else {
                let out = out.unwrap_or_else(|| workspace_root().join("target/lab"));
                args.extend(["--out".into(), out.clone().into_os_string()]);
                if let Some(dir) = compare {
                    args.push("--compare".into());
                    args.push(dir.unwrap_or(out).into_os_string());
                }
            }
            args.extend(scenarios.into_iter().map(OsString::from));
            lab(&args, !list, compare_requested(&args))
        }
        Task::Demo => lab(&["--demo".into()], true, false),
        Task::Soak { minutes } => lab(&["--soak".into(), minutes.to_string().into()], true, false),
    }
}

fn compare_requested(args: &[OsString]) -> bool {
    args.iter().any(|a| a == "--compare")
}

/// Builds the agent and the `lab` binary (crate detector-lab, tests/lab), then runs `lab ARGS` as root from
/// the workspace root. While it runs, this process ignores SIGINT: a Ctrl-C reaches the lab
/// too, which finishes its current scenario, tears its namespaces down and exits.
fn lab(args: &[OsString], needs_root: bool, compare: bool) -> anyhow::Result<()> {
    if needs_root {
        if !deps::is_root() {
            bail!(
                "the lab creates network namespaces and loads BPF programs: run it as root \
                 (`sudo -E cargo xtask ...`)"
            );
        }
        deps::ensure(deps::LAB_PROGRAMS)?;
        if let Err(e) = deps::ensure(&[("nft", "nftables")]) {
            eprintln!("xtask: {e:#}; the field-case-5 scenario (nftables router) will be skipped");
        }
        if compare {
            deps::ensure(&[("tshark", "tshark")])?;
        }
    }
    let path = toolchain::ensure()?;
    build_detector(&path)?;
    run(cargo(&path).args([
        "build",
        "--release",
        "--package",
        "detector-lab",
        "--bin",
        "lab",
    ]))?;
    let target = target_dir();
    let bin = target.join("release/lab");
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("DETECTOR_BIN", target.join("release/detector"));
    // SAFETY: ignoring SIGINT in this process only; restored below.
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = cmd.status();
    // SAFETY: restoring the disposition saved above.
    unsafe { libc::signal(libc::SIGINT, previous) };
    let status = status.with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace) or `target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(path: &OsString) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root()).env("PATH", path);
    c
}

/// Builds the release agent binary alone, for what runs it (live and replay tests, the
/// lab, the VM leg, the live bench).
fn build_detector(path: &OsString) -> anyhow::Result<()> {
    run(cargo(path).args([
        "build",
        "--release",
        "--package",
        "detector-user",
        "--bin",
        "detector",
    ]))
}

/// Builds the agent (which embeds the kernel program); returns the binary's path.
fn build() -> anyhow::Result<PathBuf> {
    let path = toolchain::ensure()?;
    run(cargo(&path).args(["build", "--release", "--package", "detector-user"]))?;
    Ok(workspace_root().join("target/release/detector"))
}

fn lint(path: &OsString) -> anyhow::Result<()> {
    run(cargo(path).args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // --release shares the build (and the embedded eBPF object) with `test` and `build`.
    run(cargo(path).args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo(path)
        .args([
            "+nightly",
            "clippy",
            "--package",
            "detector-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))
    .context("clippy on the eBPF crate")?;
    Ok(())
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    if !deps::is_root() {
        bail!(
            "the tests load BPF programs and create network namespaces: run them as root \
             (`sudo -E cargo xtask test`)"
        );
    }
    deps::ensure(&[deps::LAB_PROGRAMS, deps::MORE_TEST_PROGRAMS].concat())?;
    let path = toolchain::ensure()?;
    lint(&path)?;
    // The live and replay tests run the agent binary; `cargo test` does not build the
    // binaries of a package without integration tests of its own.
    build_detector(&path)?;
    let mut c = cargo(&path);
    c.args(["test", "--workspace", "--release"]);
    if let Some(f) = filter {
        c.arg(f);
    }
    run(&mut c)?;
    // The kernel program's fuzz smoke is the `kernel_fuzz` test above; the decoders' runs
    // under libFuzzer are here.
    if filter.is_none() {
        fuzz::smoke(&path)?;
        // The same program on the oldest kernel fleets commonly run, in a VM.
        vm::vmtest(
            &path,
            &vm::Request {
                kernels: vec![CI_KERNEL.to_string()],
                suite: vm::Suite::Quick,
                accel: vm::Accel::Auto,
            },
        )?;
    }
    Ok(())
}

/// The kernel `cargo xtask test` also runs its VM leg on: 6.1 LTS (Debian 12, Amazon Linux
/// 2023), the oldest that fleets commonly run, and without TCX.
const CI_KERNEL: &str = "6.1";
