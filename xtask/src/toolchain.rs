//! What building the kernel program needs beyond stable Rust: the nightly toolchain with
//! rust-src (for `-Z build-std=core`), and bpf-linker built against that nightly's own
//! libLLVM, so the LLVM versions match by construction and no system LLVM is needed.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::cmd::{capture, run};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13";

/// Makes sure nightly, rust-src and a matching bpf-linker exist; returns a PATH value with
/// bpf-linker's directory in front.
pub fn ensure() -> anyhow::Result<OsString> {
    ensure_nightly()?;
    let bin = ensure_bpf_linker()?;
    let mut paths = vec![bin];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).context("building PATH")
}

fn ensure_nightly() -> anyhow::Result<()> {
    let installed = capture(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is needed to build the eBPF program (nightly toolchain); install it from rustup.rs",
    )?;
    if !installed.lines().any(|l| l.starts_with(NIGHTLY)) {
        bail!(
            "the nightly toolchain is missing; install it with \
             `rustup toolchain install nightly --component rust-src`"
        );
    }
    let components = capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
            .context("adding rust-src to nightly (needed for -Z build-std=core)")?;
    }
    Ok(())
}

/// The directory of nightly's libLLVM shared library and its file name.
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot =
        capture(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let name = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM shared library in {}: the nightly toolchain should ship one",
                lib.display()
            )
        })?;
    Ok((lib, name))
}

/// LLVM's major version from the library name (`libLLVM.so.22.1-rust-...` or
/// `libLLVM-22-rust-...so`).
fn llvm_major(name: &str) -> anyhow::Result<u32> {
    let digits: String = name
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .with_context(|| format!("reading LLVM's version from {name}"))
}

pub fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("tls-detector")
}

/// bpf-linker, built once per nightly LLVM and cached outside the repository.
fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let (lib, name) = nightly_llvm()?;
    let root = cache_dir()
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}"))
        .join(&name);
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    let major = llvm_major(&name)?;
    // bpf-linker's build looks for `lib/libLLVM.so` under LLVM_PREFIX; point both names
    // it may link against at nightly's own library.
    let prefix = cache_dir().join("llvm-prefix").join(&name);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", name.as_str()] {
        let dst = prefix_lib.join(link);
        let _ = fs::remove_file(&dst);
        std::os::unix::fs::symlink(lib.join(&name), &dst)
            .with_context(|| format!("linking {}", dst.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} \
         (once; cached in {})",
        root.display()
    );
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version"])
        .arg(format!("^{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .context(
        "building bpf-linker failed; it needs network access to crates.io and a C toolchain (gcc)",
    )?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_both_library_names() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").unwrap(),
            22
        );
        assert_eq!(llvm_major("libLLVM-21-rust-1.90.0-nightly.so").unwrap(), 21);
        assert!(llvm_major("libLLVM.so.x").is_err());
    }
}
