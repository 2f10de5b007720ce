//! Builds the kernel program for the bpf target so that the agent can embed it.
//!
//! This is what aya-build does, with one difference that matters: the BPF CPU is v3
//! (kernel 5.12+), for the atomic fetch-and-add the flow history needs. aya-build owns
//! RUSTFLAGS and always asks for the generic (v1) CPU.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

const PACKAGE: &str = "detector-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("the agent crate has no parent directory"))?
        .join(PACKAGE);
    let common_dir = ebpf_dir.with_file_name("detector-common");
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    if !on_path("bpf-linker") {
        bail!(
            "bpf-linker is not on PATH: build through `cargo xtask build`, which installs it \
             (cached) and puts it on PATH"
        );
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let rustflags = [
        &format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", PACKAGE])
        .args(["--bins", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer (stable) build's compiler must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    let out = cmd
        .output()
        .context("running `rustup run nightly cargo build` for the eBPF crate")?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF program failed ({}); the compiler's messages are above. It needs \
             the nightly toolchain with rust-src: `cargo xtask build` sets that up",
            out.status
        );
    }
    // The program, and the reference programs `cargo xtask bench` measures it against.
    for bin in [PACKAGE, "detector-bench"] {
        let built = target_dir.join(TARGET).join("release").join(bin);
        let dst = out_dir.join(bin);
        fs::copy(&built, &dst)
            .with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    which::which(program).is_ok()
}
