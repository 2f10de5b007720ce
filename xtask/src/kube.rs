//! Offline validation of the Kubernetes manifests (deploy/kubernetes): built-in kinds
//! against the schemas of a pinned Kubernetes version (PyPI's `kubernetes-validate`,
//! strict), the PodMonitor against the Prometheus Operator's CRD schema vendored in
//! xtask/schemas, and kustomization.yaml against the directory. The Python packages live in
//! a venv cached outside the repository, created on first use.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{capture, describe},
    toolchain::cache_dir,
};

/// The Kubernetes version whose schemas the manifests must satisfy: the oldest the
/// DaemonSet is meant for.
pub const KUBERNETES_VERSION: &str = "1.31";

/// Every package of the venv, pinned, so a validation today is the validation tomorrow.
const REQUIREMENTS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "PyYAML==6.0.4",
    "importlib_resources==7.1.0",
    "packaging==26.4",
    "typing_extensions==4.16.0",
];

const VENV_NAME: &str = "venv-kubernetes-validate-1.37.0";

const SCRIPT: &str = include_str!("kube_validate.py");

/// The Prometheus Operator's PodMonitor CRD, at the version named in the file's header.
const CRDS: &[&str] = &["schemas/monitoring.coreos.com_podmonitors-v0.93.0.yaml"];

/// The manifests shipped with the project.
pub fn manifests_dir() -> PathBuf {
    crate::workspace_root().join("deploy/kubernetes")
}

/// The venv's python, created with `python3 -m venv` and the pinned packages on first use.
fn python() -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // Held while the venv is checked and made, by this and any other process or thread
    // (flock excludes every other open file description): none sees half a venv.
    let lock_path = cache.join(format!("{VENV_NAME}.lock"));
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", lock_path.display()));
    }
    let venv = cache.join(VENV_NAME);
    let python = venv.join("bin/python");
    // Written last: a venv whose install was interrupted is made again.
    let complete = venv.join(".complete");
    if complete.is_file() {
        return Ok(python);
    }
    eprintln!(
        "xtask: installing {} into {} (once)",
        REQUIREMENTS[0],
        venv.display()
    );
    make_venv(&venv)?;
    capture(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(["--disable-pip-version-check", "--no-input"])
            .args(REQUIREMENTS),
    )
    .context("installing kubernetes-validate and jsonschema from PyPI")?;
    fs::write(&complete, b"").with_context(|| format!("writing {}", complete.display()))?;
    Ok(python)
}

/// `python3 -m venv VENV`; on Debian, whose python3 leaves `venv`'s pip bootstrap to the
/// package python3-venv, that package is installed when missing (as root).
fn make_venv(venv: &Path) -> anyhow::Result<()> {
    let attempt = || {
        let _ = fs::remove_dir_all(venv);
        capture(Command::new("python3").args(["-m", "venv"]).arg(venv))
    };
    let Err(first) = attempt() else {
        return Ok(());
    };
    let ensurepip = Command::new("python3")
        .args(["-c", "import ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ensurepip || !crate::deps::is_root() || !Path::new("/usr/bin/apt-get").is_file() {
        return Err(first).context(
            "creating the venv for kubernetes-validate (on Debian: apt-get install python3-venv)",
        );
    }
    eprintln!("xtask: installing python3-venv");
    crate::cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing python3-venv")?;
    attempt().context("creating the venv for kubernetes-validate")?;
    Ok(())
}

/// Validates the manifests in `dir` (a kustomize directory); returns one line per resource
/// checked, or fails with every problem found.
pub fn validate(dir: &Path) -> anyhow::Result<Vec<String>> {
    let python = python()?;
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(&python);
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(dir)
        .arg(KUBERNETES_VERSION)
        .args(CRDS.iter().map(|c| xtask.join(c)));
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", describe(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the manifests in {} are not valid ({}):\n{}{}",
            dir.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the shipped manifests with the first `from` in file `name` made `to`.
    fn edited_copy(tag: &str, name: &str, from: &str, to: &str) -> anyhow::Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("xtask-kube-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d)?;
        for e in fs::read_dir(manifests_dir())? {
            let e = e?;
            fs::copy(e.path(), d.join(e.file_name()))?;
        }
        let path = d.join(name);
        let text = fs::read_to_string(&path)?;
        assert!(text.contains(from), "{name} has no {from:?} to change");
        fs::write(&path, text.replacen(from, to, 1))?;
        Ok(d)
    }

    fn rejected(dir: &Path, expect: &str) -> anyhow::Result<()> {
        let err = match validate(dir) {
            Ok(lines) => panic!("{} passed: {lines:?}", dir.display()),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    /// Every shipped manifest passes, each checked against a schema (none skipped).
    #[test]
    fn shipped_manifests_are_valid() -> anyhow::Result<()> {
        let lines = validate(&manifests_dir())?;
        for expected in [
            "ok namespace.yaml: Namespace tls-detector against Kubernetes 1.31 (strict)",
            "ok configmap.yaml: ConfigMap tls-detector against Kubernetes 1.31 (strict)",
            "ok daemonset.yaml: DaemonSet tls-detector against Kubernetes 1.31 (strict)",
            "ok podmonitor.yaml: PodMonitor tls-detector against its CRD schema",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected:?} not in {lines:?}"
            );
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
        Ok(())
    }

    /// A misspelt field of a built-in kind fails (strict schemas).
    #[test]
    fn misspelt_daemonset_field_fails() -> anyhow::Result<()> {
        let d = edited_copy(
            "ds",
            "daemonset.yaml",
            "readOnlyRootFilesystem:",
            "readOnlyRootFileSystem:",
        )?;
        rejected(&d, "'readOnlyRootFileSystem' was unexpected")
    }

    /// A wrong type in a built-in kind fails.
    #[test]
    fn mistyped_daemonset_value_fails() -> anyhow::Result<()> {
        let d = edited_copy(
            "port",
            "daemonset.yaml",
            "containerPort: 9863",
            "containerPort: \"9863\"",
        )?;
        rejected(&d, "is not of type 'integer'")
    }

    /// The PodMonitor is held to the CRD's schema: an unknown field and a malformed
    /// duration both fail.
    #[test]
    fn invalid_podmonitor_fails() -> anyhow::Result<()> {
        let d = edited_copy(
            "pm-field",
            "podmonitor.yaml",
            "podMetricsEndpoints:",
            "podMetricEndpoints:",
        )?;
        rejected(&d, "'podMetricEndpoints' was unexpected")?;
        let d = edited_copy(
            "pm-interval",
            "podmonitor.yaml",
            "interval: 30s",
            "interval: 30 seconds",
        )?;
        rejected(
            &d,
            "spec.podMetricsEndpoints.0.interval: '30 seconds' does not match",
        )
    }

    /// A manifest left out of kustomization.yaml, and a kind with no schema, both fail.
    #[test]
    fn unlisted_or_unknown_manifest_fails() -> anyhow::Result<()> {
        let d = edited_copy(
            "unlisted",
            "kustomization.yaml",
            "  - podmonitor.yaml\n",
            "",
        )?;
        rejected(&d, "podmonitor.yaml is not among its resources")?;
        let d = edited_copy(
            "unknown",
            "podmonitor.yaml",
            "kind: PodMonitor",
            "kind: PodMonitors",
        )?;
        rejected(&d, "no schema for monitoring.coreos.com/v1 PodMonitors")
    }

    /// The `- ITEM` lines right after the line `key:` in `yaml`.
    fn list_after(yaml: &str, key: &str) -> Vec<String> {
        yaml.lines()
            .skip_while(|l| l.trim() != key)
            .skip(1)
            .map_while(|l| l.trim().strip_prefix("- ").map(str::to_owned))
            .collect()
    }

    /// The DaemonSet grants exactly the capabilities the systemd unit grants (those the
    /// agent needs to load, see detector-user's privilege module), and drops all others.
    #[test]
    fn daemonset_capabilities_are_the_units() -> anyhow::Result<()> {
        let unit = include_str!("../../deploy/systemd/detector.service");
        let ds = fs::read_to_string(manifests_dir().join("daemonset.yaml"))?;
        let mut from_unit: Vec<String> = unit
            .lines()
            .find_map(|l| l.strip_prefix("AmbientCapabilities="))
            .context("the unit has no AmbientCapabilities=")?
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect();
        let mut added = list_after(&ds, "add:");
        from_unit.sort();
        added.sort();
        assert_eq!(added, from_unit);
        assert_eq!(list_after(&ds, "drop:"), ["ALL"]);
        for setting in [
            "privileged: false",
            "allowPrivilegeEscalation: false",
            "readOnlyRootFilesystem: true",
            "hostNetwork: true",
        ] {
            assert!(ds.contains(setting), "daemonset.yaml lacks {setting}");
        }
        Ok(())
    }
}
