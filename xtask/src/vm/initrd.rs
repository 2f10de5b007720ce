//! The VM's initramfs: busybox and the modules that mount the host's root over 9p with a
//! tmpfs overlay (so the guest writes without touching the host), then hands over to the
//! guest script on that root. Built once per kernel, next to it in the cache.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernel::Kernel;

/// What must load before the root can be mounted: PCI virtio transport, 9p over it, and
/// overlayfs.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Mount tags of the 9p shares qemu exports (see `super::qemu_args`).
pub const ROOT_TAG: &str = "hostroot";
pub const OUT_TAG: &str = "vmout";

/// PID 1 of the initramfs. `VMTEST_SCRIPT` and `VMTEST_OUT` come from the kernel
/// command line (the kernel hands unknown `name=value` parameters to init as environment).
const INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
fail() { echo "vmtest-init: $*" > /dev/console; $bb poweroff -f; }
for m in $(cat /modules.order); do $bb insmod "/modules/$m" || fail "insmod $m"; done
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose @ROOT_TAG@ /lower || fail "mounting the host root"
$bb mount -t tmpfs -o mode=0755 tmpfs /upper
$bb mkdir -p /upper/u /upper/w
$bb mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay root"
$bb mkdir -p "/newroot$VMTEST_OUT"
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 @OUT_TAG@ "/newroot$VMTEST_OUT" || fail "mounting $VMTEST_OUT"
$bb umount /proc /sys /dev
exec $bb switch_root /newroot /bin/bash "$VMTEST_SCRIPT"
"#;

/// Writes (once) and returns the initramfs for `kernel`, under `dir`.
pub fn build(kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join(format!("initrd-{}.cpio", kernel.release));
    if out.is_file() {
        return Ok(out);
    }
    let busybox = which::which("busybox").context("busybox (package busybox-static)")?;
    let stage = dir.join(format!("initrd-{}.stage", kernel.release));
    let _ = fs::remove_dir_all(&stage);
    for d in [
        "bin", "modules", "proc", "sys", "dev", "lower", "upper", "newroot",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy(&busybox, stage.join("bin/busybox")).context("copying busybox")?;
    let order = load_order(kernel, BOOT_MODULES)?;
    let mut names = Vec::new();
    for rel in &order {
        let file = Path::new(rel)
            .file_name()
            .expect("a module path")
            .to_string_lossy();
        let src = kernel.modules.join(rel);
        // Debian compresses modules from 6.12 on; busybox's insmod takes them plain.
        let name = match file.strip_suffix(".xz") {
            Some(plain) => {
                let out = Command::new(&busybox)
                    .arg("xzcat")
                    .arg(&src)
                    .output()
                    .with_context(|| format!("decompressing module {rel}"))?;
                if !out.status.success() {
                    bail!("decompressing module {rel} failed ({})", out.status);
                }
                fs::write(stage.join("modules").join(plain), out.stdout)?;
                plain.to_string()
            }
            None => {
                fs::copy(&src, stage.join("modules").join(&*file))
                    .with_context(|| format!("copying module {rel}"))?;
                file.into_owned()
            }
        };
        names.push(name);
    }
    fs::write(stage.join("modules.order"), names.join("\n") + "\n")?;
    let init = INIT
        .replace("@ROOT_TAG@", ROOT_TAG)
        .replace("@OUT_TAG@", OUT_TAG);
    fs::write(stage.join("init"), init)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    cpio(&busybox, &stage, &out)?;
    let _ = fs::remove_dir_all(&stage);
    Ok(out)
}

/// `busybox cpio -o -H newc` of everything under `stage`, paths relative to it.
fn cpio(busybox: &Path, stage: &Path, out: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect(stage, stage, &mut files)?;
    let partial = out.with_extension("partial");
    let mut child = Command::new(busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&partial)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting busybox cpio")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(files.join("\n").as_bytes())?;
    if !child.wait()?.success() {
        bail!("busybox cpio failed");
    }
    fs::rename(&partial, out)?;
    Ok(())
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        out.push(p.strip_prefix(base)?.to_string_lossy().into_owned());
        if p.is_dir() {
            collect(base, &p, out)?;
        }
    }
    Ok(())
}

/// The module files (relative to the module tree) that load `wanted`, each after what it
/// depends on; modules built into the kernel are left out.
fn load_order(kernel: &Kernel, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let dep = fs::read_to_string(kernel.modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    resolve(&dep, &builtin, wanted)
}

fn resolve(dep: &str, builtin: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    // Plain or xz-compressed, `_` or `-` in the file name.
    let files = |name: &str| -> Vec<String> {
        let dashed = name.replace('_', "-");
        [".ko", ".ko.xz"]
            .into_iter()
            .flat_map(|ext| [format!("/{name}{ext}"), format!("/{dashed}{ext}")])
            .collect()
    };
    let by_name = |name: &str| {
        deps.keys()
            .copied()
            .find(|k| files(name).iter().any(|f| k.ends_with(f)))
    };
    let is_builtin = |name: &str| {
        builtin
            .lines()
            .any(|l| files(name).iter().any(|f| l.ends_with(f)))
    };
    let mut order = Vec::new();
    fn visit<'a>(
        m: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 64 {
            bail!("module dependencies of {m} loop");
        }
        if order.iter().any(|o| o == m) {
            return Ok(());
        }
        for d in deps.get(m).map(Vec::as_slice).unwrap_or_default() {
            visit(d, deps, order, depth + 1)?;
        }
        order.push(m.to_string());
        Ok(())
    }
    for name in wanted {
        match by_name(name) {
            Some(m) => visit(m, &deps, &mut order, 0)?,
            None if is_builtin(name) => {}
            None => bail!("the kernel has no module {name} and does not build it in"),
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let dep = "\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko
kernel/drivers/virtio/virtio.ko:
";
        let builtin = "kernel/fs/overlayfs/overlay.ko\n";
        assert_eq!(
            resolve(dep, builtin, &["9pnet_virtio", "9p", "overlay"]).unwrap(),
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
        assert!(resolve(dep, builtin, &["veth"]).is_err());
        // Debian 6.12's modules are compressed.
        let dep = "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\nkernel/net/9p/9pnet.ko.xz:\n";
        assert_eq!(
            resolve(dep, "", &["9pnet_virtio"]).unwrap(),
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz"
            ]
        );
    }
}
