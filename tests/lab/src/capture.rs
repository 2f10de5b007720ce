//! Packet captures: tcpdump on a lab interface, and the offloads that decide what it sees.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{
    netns::{LISTEN_TIMEOUT, Lab, SETUP_TIMEOUT},
    process::{LabProcess, find_in_path},
    util::{log, tail},
};

/// Bound for tcpdump to write out its buffer and exit after SIGINT (a full bulk buffer
/// is 320 MiB to write).
pub(crate) const CAPTURE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// tcpdump's kernel buffer: bulk transfers through the lab otherwise outrun tcpdump on a
/// small machine, and a capture with holes replays wrong.
const BUFFER_KIB: u32 = 64 << 10;
/// The buffer of [`Lab::capture_bulk`]: more than the lab's largest transfer captures
/// (about 255 MB for 240 MiB of TLS).
const BULK_BUFFER_KIB: u32 = 320 << 10;

/// A running tcpdump started by [`Lab::capture`].
#[derive(Debug)]
pub struct Capture {
    pub(crate) process: LabProcess,
    pub(crate) path: PathBuf,
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tcpdump process (its stderr ends with the packet counts once stopped).
    pub fn process(&self) -> &LabProcess {
        &self.process
    }

    /// Stops tcpdump with SIGINT, which makes it flush and close the file properly (SIGKILL
    /// could cut the last record), waits for it, and returns the file's path.
    pub fn stop(self) -> Result<PathBuf> {
        self.process.signal(libc::SIGINT)?;
        let status = self
            .process
            .wait_timeout(CAPTURE_STOP_TIMEOUT)
            .context("tcpdump did not exit after SIGINT")?;
        ensure!(
            status.success(),
            "`{}` exited with {status}; output:\n{}",
            self.process.command,
            tail(&self.process.output(), 4000)
        );
        ensure!(
            self.path.is_file(),
            "tcpdump exited but {} does not exist",
            self.path.display()
        );
        Ok(self.path.clone())
    }

    /// [`Capture::stop`], and an error if tcpdump could not keep up ("N packets dropped by
    /// kernel" above zero): a capture with holes cannot show what the detector saw.
    pub fn stop_complete(self) -> Result<PathBuf> {
        self.process.signal(libc::SIGINT)?;
        self.process
            .wait_timeout(CAPTURE_STOP_TIMEOUT)
            .context("tcpdump did not exit after SIGINT")?;
        let stopped = self.process.output();
        let path = self.path.clone();
        let dropped: u64 = stopped
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| {
                format!("tcpdump reported no drop count:\n{}", tail(&stopped, 4000))
            })?;
        ensure!(
            dropped == 0,
            "tcpdump dropped {dropped} packets of {}: the capture has holes",
            path.display()
        );
        ensure!(path.is_file(), "{} does not exist", path.display());
        Ok(path)
    }
}

impl Lab {
    /// Turns TSO, GSO and GRO of `iface` in `ns` on or off. Defaults stay as the kernel
    /// sets them; tests that need to see wire-sized segments at a hook that would
    /// otherwise get aggregates call this. Without ethtool installed this logs a note and
    /// does nothing, so such tests degrade instead of failing on a tool.
    pub fn set_offloads(&self, ns: &str, iface: &str, on: bool) -> Result<()> {
        self.check_ns(ns)?;
        if find_in_path("ethtool").is_none() {
            log(
                &self.tag,
                &format!("ethtool not installed; offloads of {iface} in {ns} left as they are"),
            );
            return Ok(());
        }
        let v = if on { "on" } else { "off" };
        self.run_ok(
            ns,
            &["ethtool", "-K", iface, "tso", v, "gso", v, "gro", v],
            SETUP_TIMEOUT,
        )?;
        Ok(())
    }

    /// Starts tcpdump on `iface` in `ns` writing TCP packets to `path` (relative paths are
    /// in the lab dir), and returns once it is attached, so no early packet is missed.
    pub fn capture(&self, ns: &str, iface: &str, path: impl AsRef<Path>) -> Result<Capture> {
        self.capture_filtered(ns, iface, path, "tcp")
    }

    /// Like [`Lab::capture`] with a pcap filter of the caller's choice (e.g. `"tcp or icmp"`).
    pub fn capture_filtered(
        &self,
        ns: &str,
        iface: &str,
        path: impl AsRef<Path>,
        filter: &str,
    ) -> Result<Capture> {
        self.tcpdump(ns, iface, path.as_ref(), filter, BUFFER_KIB)
    }

    /// [`Lab::capture`] for transfers of hundreds of MiB: with a kernel buffer larger than
    /// the whole capture, so tcpdump loses nothing even when other work on a loaded
    /// machine starves it for the whole transfer (a 64 MiB buffer dropped packets of a
    /// 250 MB capture in 2 runs of 20 while four builds ran).
    pub fn capture_bulk(&self, ns: &str, iface: &str, path: impl AsRef<Path>) -> Result<Capture> {
        self.tcpdump(ns, iface, path.as_ref(), "tcp", BULK_BUFFER_KIB)
    }

    fn tcpdump(
        &self,
        ns: &str,
        iface: &str,
        path: &Path,
        filter: &str,
        buffer_kib: u32,
    ) -> Result<Capture> {
        let path = self.lab_path(path);
        let buffer = buffer_kib.to_string();
        let args: [&OsStr; 16] = [
            "tcpdump".as_ref(),
            "-i".as_ref(),
            iface.as_ref(),
            "-w".as_ref(),
            path.as_os_str(),
            "-B".as_ref(),
            buffer.as_ref(),
            // Packet-buffered output and immediate delivery, so the file is complete
            // as soon as tcpdump exits, even for a capture of a few milliseconds.
            "-U".as_ref(),
            "--immediate-mode".as_ref(),
            "-s".as_ref(),
            "0".as_ref(),
            // Debian's tcpdump otherwise drops to user tcpdump, which cannot write the
            // root-owned lab dir.
            "-Z".as_ref(),
            "root".as_ref(),
            "-n".as_ref(),
            "--".as_ref(),
            filter.as_ref(),
        ];
        let process = self.spawn(ns, &format!("tcpdump-{iface}"), &args)?;
        process
            .wait_for_output("listening on", LISTEN_TIMEOUT)
            .context("tcpdump did not start capturing")?;
        Ok(Capture { process, path })
    }
}
