//! The kernels the VM boots: a Debian `linux-image-*-amd64` package, downloaded and
//! unpacked into the cache (the host's own boot setup is never touched), or one the user
//! unpacked or downloaded already.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{capture, run};

/// A kernel ready to boot: its image and its module tree (with `modules.dep`).
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, the name of its module directory.
    pub release: String,
    pub image: PathBuf,
    /// `lib/modules/RELEASE` of the unpacked package.
    pub modules: PathBuf,
}

/// Finds or prepares the kernel `spec` names: a path (a `.deb`, or a directory holding an
/// unpacked package: `boot/vmlinuz-*` and `lib/modules/*`), or a version (`6.1`,
/// `6.1.0-57`, `6.12`) resolved to the newest matching Debian package.
pub fn prepare(spec: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let path = Path::new(spec);
    if path.is_dir() {
        return find_in(path);
    }
    if path.is_file() {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("the kernel package's file name")?;
        let dest = cache.join(name);
        if !ready(&dest) {
            unpack(path, &dest)?;
        }
        return find_in(&dest.join("root"));
    }
    if spec.contains('/') {
        bail!("kernel {spec}: no such file or directory");
    }
    let package = package_for(spec)?;
    let dest = cache.join(&package);
    if !ready(&dest) {
        let work = cache.join(format!("{package}.download"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        eprintln!("xtask: downloading {package}");
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&work))
        .with_context(|| format!("downloading {package}"))?;
        let deb = fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
        unpack(&deb, &dest)?;
        let _ = fs::remove_dir_all(&work);
    }
    find_in(&dest.join("root"))
}

fn ready(dest: &Path) -> bool {
    dest.join("ready").exists()
}

/// Unpacks a kernel package into `dest/root` and writes its `modules.dep` (Debian builds
/// it at installation, so the package has none).
fn unpack(deb: &Path, dest: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(dest);
    let root = dest.join("root");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let (_, release) = image_in(&root)?;
    run(Command::new("busybox")
        .arg("depmod")
        .arg("-b")
        .arg(&root)
        .arg(&release))
    .context("writing modules.dep")?;
    fs::write(dest.join("ready"), "")?;
    Ok(())
}

/// The image and module tree of an unpacked package.
fn find_in(root: &Path) -> anyhow::Result<Kernel> {
    let (image, release) = image_in(root)?;
    let modules = root.join("lib/modules").join(&release);
    if !modules.join("modules.dep").is_file() {
        bail!(
            "{} has no modules.dep (run `busybox depmod -b {} {release}`)",
            modules.display(),
            root.display()
        );
    }
    Ok(Kernel {
        release,
        image,
        modules,
    })
}

/// `boot/vmlinuz-RELEASE` of an unpacked package, and RELEASE.
fn image_in(root: &Path) -> anyhow::Result<(PathBuf, String)> {
    let boot = root.join("boot");
    let image = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("matched above")
        .to_string();
    Ok((image, release))
}

/// The newest Debian package of kernel `version` for amd64 (the generic flavour: not
/// cloud, rt, unsigned or debug symbols).
fn package_for(version: &str) -> anyhow::Result<String> {
    let search = || {
        capture(Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!("^linux-image-{}", version.replace('.', "\\.")),
        ]))
    };
    let mut found = newest(version, &search()?);
    if found.is_none() {
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get update")?;
        found = newest(version, &search()?);
    }
    found.with_context(|| {
        format!(
            "no Debian package linux-image-{version}*-amd64 (see `apt-cache search \
             linux-image-{version}`)"
        )
    })
}

/// Of `apt-cache search` output, the generic amd64 image of `version` with the highest
/// version numbers.
fn newest(version: &str, listing: &str) -> Option<String> {
    let prefix = format!("linux-image-{version}");
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            let Some(rest) = name.strip_prefix(&prefix) else {
                return false;
            };
            let Some(middle) = rest.strip_suffix("-amd64") else {
                return false;
            };
            // `6.1` must not match 6.12; flavours carry a word before `-amd64`.
            (middle.is_empty() || middle.starts_with(['.', '-']))
                && !["cloud", "rt", "unsigned", "dbg"]
                    .iter()
                    .any(|f| middle.split(['-', '+']).any(|part| part == *f))
        })
        .max_by_key(|name| numbers(name))
        .map(str::to_string)
}

fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-57-amd64-dbg - Debug symbols for linux-image-6.1.0-57-amd64
linux-image-6.12.117+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.9+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12-amd64 - Linux for 64-bit PCs (meta-package)
";

    #[test]
    fn a_version_names_its_newest_generic_image() {
        assert_eq!(
            newest("6.1", LISTING).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            newest("6.1.0-9", LISTING).as_deref(),
            Some("linux-image-6.1.0-9-amd64")
        );
        // The meta-package sorts below the images it points at.
        assert_eq!(
            newest("6.12", LISTING).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(newest("6.2", LISTING), None);
        assert_eq!(newest("6.1.0-5", LISTING), None);
    }
}
