//! `cargo xtask`: build, run, test and lint the detector, setting up what the eBPF build
//! and the tests need on the way.

mod cmd;
mod deps;
mod toolchain;

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
    /// Everything CI runs: formatting, lints (userspace and eBPF), unit, kernel, live and
    /// replay tests. Needs root (BPF, network namespaces).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// cargo fmt --check and clippy -D warnings, for userspace and for the eBPF crate.
    Lint,
    /// The kernel program against an empty XDP program and a minimal flow tracker, on the
    /// same frames in one run (BPF_PROG_TEST_RUN). Needs root.
    Bench,
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
        Task::Test { filter } => test(filter.as_deref()),
        Task::Bench => {
            if !deps::is_root() {
                bail!("the benchmark loads BPF programs: run it as root");
            }
            let path = toolchain::ensure()?;
            run(cargo(&path).args(["bench", "--package", "tests", "--bench", "kernel"]))
        }
        Task::Lint => {
            let path = toolchain::ensure()?;
            lint(&path)
        }
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
    deps::ensure(deps::TEST_PROGRAMS)?;
    let path = toolchain::ensure()?;
    lint(&path)?;
    // The live and replay tests run the agent binary; `cargo test` does not build the
    // binaries of a package without integration tests of its own.
    run(cargo(&path).args([
        "build",
        "--release",
        "--package",
        "detector-user",
        "--bin",
        "detector",
    ]))?;
    let mut c = cargo(&path);
    c.args(["test", "--workspace", "--release"]);
    if let Some(f) = filter {
        c.arg(f);
    }
    run(&mut c)
}
