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

/// bpf-linker, built once per nightly LLVM and cached outside the repository. A cached
/// binary is used only if it runs and reports the expected version: a cache left by an
/// older xtask, a half-finished install or a libLLVM that moved would otherwise fail much
/// later, inside the eBPF build, with an error that does not point here.
fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let (lib, name) = nightly_llvm()?;
    let root = cache_dir()
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}"))
        .join(&name);
    let bin = root.join("bin");
    let cached = bin.join("bpf-linker");
    let rebuild = match cached_linker(&cached) {
        Cached::Usable => return Ok(bin),
        Cached::Missing => false,
        Cached::Unusable(why) => {
            eprintln!(
                "xtask: cached {} is unusable ({why}); rebuilding it",
                cached.display()
            );
            true
        }
    };
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
    let mut install = Command::new("cargo");
    // --locked: the dependency versions bpf-linker was released and tested with, not
    // whatever crates.io holds today.
    install
        .args(["install", "--locked", "bpf-linker", "--version"])
        .arg(format!("^{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix);
    if rebuild {
        // cargo's own install record still lists the broken binary as installed.
        install.arg("--force");
    }
    run(&mut install).context(
        "building bpf-linker failed; it needs network access to crates.io and a C toolchain (gcc)",
    )?;
    match cached_linker(&cached) {
        Cached::Usable => Ok(bin),
        Cached::Missing => bail!("cargo install left no {}", cached.display()),
        Cached::Unusable(why) => bail!("the freshly built {} is unusable: {why}", cached.display()),
    }
}

/// What a cached bpf-linker turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Cached {
    Missing,
    Usable,
    Unusable(String),
}

/// Runs `path --version` and checks it names the expected release series.
fn cached_linker(path: &Path) -> Cached {
    if !path.exists() {
        return Cached::Missing;
    }
    let out = match Command::new(path).arg("--version").output() {
        Ok(out) => out,
        Err(e) => return Cached::Unusable(format!("it does not start: {e}")),
    };
    if !out.status.success() {
        return Cached::Unusable(format!(
            "`--version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match linker_version(&text) {
        Some(v) if version_matches(v, BPF_LINKER_VERSION) => Cached::Usable,
        Some(v) => Cached::Unusable(format!("version {v}, expected {BPF_LINKER_VERSION}.x")),
        None => Cached::Unusable(format!("unreadable version output {:?}", text.trim())),
    }
}

/// The version in `bpf-linker --version`'s output (`bpf-linker 0.13.2`).
fn linker_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    (words.next()? == "bpf-linker").then_some(())?;
    words.next()
}

/// Whether `version` is in the `series` release line (`0.13.2` in `0.13`, not `0.130.0`).
fn version_matches(version: &str, series: &str) -> bool {
    version
        .strip_prefix(series)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
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

    #[test]
    fn reads_and_matches_linker_versions() {
        assert_eq!(linker_version("bpf-linker 0.13.2\n"), Some("0.13.2"));
        assert_eq!(linker_version("something-else 0.13.2"), None);
        assert_eq!(linker_version(""), None);
        assert!(version_matches("0.13.2", "0.13"));
        assert!(version_matches("0.13", "0.13"));
        assert!(!version_matches("0.130.0", "0.13"));
        assert!(!version_matches("0.12.9", "0.13"));
    }

    /// A private cache directory with stand-in linkers: the shared cache is never touched.
    #[test]
    fn cached_linker_is_checked_by_running_it() {
        let dir = env::temp_dir().join(format!("xtask-linker-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.join(name);
            crate::script::write_executable(&p, body);
            p
        };
        let good = script("good", "echo 'bpf-linker 0.13.7'");
        let old = script("old", "echo 'bpf-linker 0.12.1'");
        let broken = script("broken", "echo 'error while loading libLLVM' >&2; exit 127");
        let garbage = script("garbage", "echo hello");
        let not_exec = dir.join("not-exec");
        fs::write(&not_exec, "not a program").unwrap();

        assert_eq!(cached_linker(&good), Cached::Usable);
        assert_eq!(cached_linker(&dir.join("absent")), Cached::Missing);
        let unusable = |p: &Path| match cached_linker(p) {
            Cached::Unusable(why) => why,
            other => panic!("{}: {other:?}", p.display()),
        };
        assert!(unusable(&old).contains("0.12.1"));
        assert!(unusable(&broken).contains("libLLVM"));
        assert!(unusable(&garbage).contains("hello"));
        assert!(unusable(&not_exec).contains("does not start"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
