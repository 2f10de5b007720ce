//! Tearing labs down: a lab's own on drop, and what labs of dead processes left behind.

use std::{env, fs, io, process::Child, sync::Mutex, thread};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{Lab, NAME_PREFIX, NETNS_RUN_DIR, STOP_GRACE},
    process::{Backoff, host_ok, terminate_all},
    util::{lock, log},
};

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace with processes in it outlives `ip netns del`, and so
        // would its veths.
        let procs = std::mem::take(&mut *lock(&self.procs));
        let refs: Vec<&Mutex<Child>> = procs.iter().map(|p| &**p).collect();
        terminate_all(&refs, STOP_GRACE);
        // Then whatever else got in (grandchildren, commands started by other means).
        for ns in &self.created_ns {
            if let Err(e) = kill_netns_pids(ns) {
                log(&self.tag, &format!("{e:#}"));
            }
        }
        for ns in self.created_ns.iter().rev() {
            if let Err(e) = host_ok(&["ip", "netns", "del", ns]) {
                log(&self.tag, &format!("{e:#}"));
            }
        }
        if env::var_os("LAB_KEEP").is_some_and(|v| v == "1") {
            // The marker keeps sweep_stale from deleting what the user asked to keep.
            let _ = fs::write(self.dir.join(".keep"), b"LAB_KEEP=1\n");
            log(
                &self.tag,
                &format!("LAB_KEEP=1: kept {}", self.dir.display()),
            );
        } else {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                log(&self.tag, &format!("removing {}: {e}", self.dir.display()));
            }
            if thread::panicking() {
                log(
                    &self.tag,
                    "removed the lab dir; rerun with LAB_KEEP=1 to keep it for inspection",
                );
            }
        }
    }
}

/// Removes namespaces and temp dirs that labs of dead processes left behind (a run killed
/// by SIGINT or SIGKILL skips Drop): for each name with [`NAME_PREFIX`] whose tag encodes a
/// pid that no longer exists, kills the processes still in the namespace, deletes it, and
/// deletes the temp dir unless it was kept with `LAB_KEEP=1`. Labs of live processes, even
/// other test binaries running concurrently, are left alone. Returns how many namespaces
/// were removed. Called by every [`Lab::new`].
///
/// Liveness is judged in this process's pid namespace: labs made from a container with its
/// own pid namespace but the host's `/var/run/netns` would look dead from outside it.
pub fn sweep_stale() -> Result<usize> {
    let mut removed = 0;
    match fs::read_dir(NETNS_RUN_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = owner_pid(&name) else {
                    continue;
                };
                if pid_alive(pid) {
                    continue;
                }
                if let Err(e) = kill_netns_pids(&name) {
                    eprintln!("[lab] sweep: {e:#}");
                }
                match host_ok(&["ip", "netns", "del", &name]) {
                    Ok(_) => {
                        eprintln!("[lab] sweep: removed netns {name} of dead pid {pid}");
                        removed += 1;
                    }
                    // A concurrent sweep may have been first.
                    Err(_) if !entry.path().exists() => {}
                    Err(e) => eprintln!("[lab] sweep: {e:#}"),
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(pid) = owner_pid(&name)
                && !pid_alive(pid)
                && path.is_dir()
                && !path.join(".keep").exists()
            {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
    Ok(removed)
}

/// Pid encoded in a lab name (`dlab-PPPPPPNNN` or `dlab-PPPPPPNNN-role`).
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let tag = rest.get(..9)?;
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let after = &rest[9..];
    if !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    u32::from_str_radix(&tag[..6], 16).ok()
}

/// Whether `pid` may still be running; errs towards "alive", since wrongly sweeping a live
/// lab would break a concurrent test.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks whether the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// SIGKILLs every process still in `ns` until none is left (bounded by [`STOP_GRACE`]).
pub(crate) fn kill_netns_pids(ns: &str) -> Result<()> {
    let me = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let mut backoff = Backoff::new(STOP_GRACE);
    loop {
        let pids: Vec<libc::pid_t> = host_ok(&["ip", "netns", "pids", ns])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != me && p > 0)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for &p in &pids {
            // SAFETY: plain kill(2) on a pid that `ip netns pids` just reported in our namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if !backoff.wait() {
            bail!("processes {pids:?} still in netns {ns} after SIGKILL");
        }
    }
}
