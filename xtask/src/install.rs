//! `cargo xtask install`: the agent, its systemd unit and its settings file put in place,
//! the unit checked by `systemd-analyze verify` where systemd is installed.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where the unit's `ExecStart=` expects the binary; rewritten for another `--prefix`.
const UNIT_BINARY: &str = "/usr/local/bin/detector";
const UNIT: &str = include_str!("../../deploy/systemd/detector.service");
const SETTINGS: &str = include_str!("../../deploy/systemd/detector.env");

/// Where things go: the binary under `prefix`, unit and settings under `/etc`, all of it
/// below `destdir` (a staging root for packaging; `/` for this host).
pub struct Layout {
    pub destdir: PathBuf,
    pub prefix: PathBuf,
}

impl Layout {
    /// The binary's path as the running system sees it (what `ExecStart=` names).
    fn binary(&self) -> PathBuf {
        self.prefix.join("bin/detector")
    }

    /// `path` (absolute, as the running system sees it) below `destdir`.
    fn staged(&self, path: &Path) -> PathBuf {
        self.destdir
            .join(path.strip_prefix("/").expect("paths here are absolute"))
    }

    pub fn unit(&self) -> PathBuf {
        self.staged(Path::new("/etc/systemd/system/detector.service"))
    }

    pub fn settings(&self) -> PathBuf {
        self.staged(Path::new("/etc/default/detector"))
    }
}

/// The unit with `ExecStart=` pointing at the binary under the layout's prefix.
pub fn unit_text(layout: &Layout) -> anyhow::Result<String> {
    if !layout.prefix.is_absolute() {
        bail!(
            "--prefix {} must be an absolute path (the unit names the binary by it)",
            layout.prefix.display()
        );
    }
    let binary = layout.binary();
    let binary = binary
        .to_str()
        .context("the prefix is not valid UTF-8, which a unit file cannot name")?;
    if binary.contains(char::is_whitespace) {
        bail!("--prefix {binary} holds whitespace, which ExecStart= would split");
    }
    let needle = format!("ExecStart={UNIT_BINARY} ");
    if UNIT.matches(&needle).count() != 1 {
        bail!("deploy/systemd/detector.service must start {UNIT_BINARY} exactly once");
    }
    Ok(UNIT.replace(&needle, &format!("ExecStart={binary} ")))
}

/// Copies `binary` and writes the unit and (unless one exists: it is the operator's) the
/// settings file. Returns what was written.
pub fn install(binary: &Path, layout: &Layout) -> anyhow::Result<Vec<PathBuf>> {
    let unit = unit_text(layout)?;
    let bin = layout.staged(&layout.binary());
    let mut written = Vec::new();
    write(&bin, |to| fs::copy(binary, to).map(drop), 0o755)?;
    written.push(bin);
    write(&layout.unit(), |to| fs::write(to, &unit), 0o644)?;
    written.push(layout.unit());
    if layout.settings().exists() {
        eprintln!(
            "xtask: keeping {} as it is (a fresh copy is in deploy/systemd/detector.env)",
            layout.settings().display()
        );
    } else {
        write(&layout.settings(), |to| fs::write(to, SETTINGS), 0o644)?;
        written.push(layout.settings());
    }
    Ok(written)
}

fn write(
    to: &Path,
    put: impl FnOnce(&Path) -> std::io::Result<()>,
    mode: u32,
) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    put(to).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// `systemd-analyze verify` on the installed unit, as a copy naming the staged binary (so
/// a unit staged below a `destdir` can be checked before it is in place). `Ok(false)` when
/// systemd-analyze is not installed.
pub fn verify(layout: &Layout) -> anyhow::Result<bool> {
    let staged = Layout {
        destdir: PathBuf::from("/"),
        prefix: layout.staged(&layout.prefix),
    };
    let dir = std::env::temp_dir().join(format!("xtask-verify-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join("detector.service");
    fs::write(&copy, unit_text(&staged)?).with_context(|| format!("writing {}", copy.display()))?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output();
    let _ = fs::remove_dir_all(&dir);
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        r => r.context("running systemd-analyze verify")?,
    };
    // verify exits 0 on some warnings; anything it says is a finding.
    let said = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !said.trim().is_empty() {
        bail!(
            "systemd-analyze verify {}: {}",
            layout.unit().display(),
            said.trim()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn prefix_must_be_absolute_and_whole() {
        for bad in ["usr/local", "/opt/my tools"] {
            let l = Layout {
                destdir: "/".into(),
                prefix: bad.into(),
            };
            assert!(unit_text(&l).is_err(), "{bad}");
        }
    }

    /// The shipped unit, installed below a staging root for another prefix, names the
    /// binary there and passes `systemd-analyze verify`; the settings file an operator
    /// edited is kept.
    #[test]
    fn staged_install_names_its_binary_and_verifies() -> anyhow::Result<()> {
        let root = staging("verify");
        let layout = Layout {
            destdir: root.clone(),
            prefix: "/opt/detector".into(),
        };
        // Any executable stands in for the agent: verify checks that ExecStart= can run.
        let written = install(Path::new("/bin/true"), &layout)?;
        assert_eq!(written.len(), 3, "{written:?}");
        let unit = fs::read_to_string(layout.unit())?;
        assert!(unit.contains("ExecStart=/opt/detector/bin/detector run $DETECTOR_ARGS"));
        assert!(!unit.contains(UNIT_BINARY));
        let mode = fs::metadata(root.join("opt/detector/bin/detector"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(
            verify(&layout)?,
            "systemd-analyze is missing (Debian package systemd; `cargo xtask test` installs it)"
        );

        fs::write(layout.settings(), "DETECTOR_ARGS=\"--iface lab0\"\n")?;
        let again = install(Path::new("/bin/true"), &layout)?;
        assert_eq!(again.len(), 2, "settings kept: {again:?}");
        assert_eq!(
            fs::read_to_string(layout.settings())?,
            "DETECTOR_ARGS=\"--iface lab0\"\n"
        );
        fs::remove_dir_all(&root)?;
        Ok(())
    }
}
