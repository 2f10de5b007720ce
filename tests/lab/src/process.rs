//! Processes inside lab namespaces: supervised servers and clients ([`LabProcess`]),
//! commands run to completion under a time bound, waiting for a listener, PATH look-ups.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Read, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::{
    netns::{Lab, PROXY_VARS, SETUP_TIMEOUT, STOP_GRACE, SharedChild},
    util::{display_cmd, lock, read_lossy, sanitize, tail},
};

/// Bound for reading the rest of a pipe after its writer exited; only a grandchild that
/// kept the pipe open can make this expire.
pub(crate) const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Hard cap on polling iterations, on top of every time bound.
pub(crate) const MAX_POLLS: u32 = 100_000;

/// Polling starts at 1 ms (setup steps are usually done in a few) and backs off to this.
pub(crate) const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A process running inside a lab namespace, stopped (SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]) when dropped, and in any case when its [`Lab`] is dropped.
///
/// Output goes to files rather than pipes so that a chatty server can never block on a
/// full pipe while a test is busy elsewhere, and so the files outlive the process for
/// post-mortems (`LAB_KEEP=1`).
#[derive(Debug)]
pub struct LabProcess {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) command: String,
    pub(crate) pid: u32,
    pub(crate) child: SharedChild,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout_path: PathBuf,
    pub(crate) stderr_path: PathBuf,
}

impl LabProcess {
    /// Name given at spawn (also the stem of the output files).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace the process runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The full command line, as shown in errors.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Pid of the program itself: `ip netns exec` execs it rather than forking.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// File receiving stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// File receiving stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Stdout, then stderr behind a `--- stderr ---` line when there is any: one string to
    /// search, since tools disagree on which stream gets what (openssl prints handshake
    /// results to stdout and alerts to stderr).
    pub fn output(&self) -> String {
        let mut out = self.stdout();
        let err = self.stderr();
        if !err.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("--- stderr ---\n");
            out.push_str(&err);
        }
        out
    }

    /// Writes to the process's stdin and flushes. Only for processes spawned with
    /// [`Lab::spawn_with_stdin`] (or [`Lab::s_server`]): openssl's s_server and s_client take
    /// commands (`Q`, `R`, `k`) and payload on stdin, and keep the connection up while it is
    /// open.
    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            anyhow!(
                "`{}` has no stdin pipe (spawned without one, or closed)",
                self.command
            )
        })?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "writing {} bytes to stdin of `{}`",
                    bytes.len(),
                    self.command
                )
            })
    }

    /// Closes stdin, so the process sees EOF (s_client then closes its connection).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.child)
            .try_wait()
            .with_context(|| format!("checking on `{}`", self.command))
    }

    /// Waits for the process to exit on its own, at most `timeout`; it is left running
    /// when the time is up, so the caller decides what a timeout means.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut backoff = Backoff::new(timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if !backoff.wait() {
                bail!("`{}` still running after {timeout:?}", self.command);
            }
        }
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) unless the process has already been reaped;
    /// returns whether it was sent. Checking and signalling under one lock means the pid
    /// can never belong to some other process by then.
    pub fn signal(&self, sig: libc::c_int) -> Result<bool> {
        signal_child(&self.child, sig).with_context(|| format!("signalling `{}`", self.command))
    }

    /// Polls the output files until `needle` appears; fails early, with the output, if
    /// the process exits without printing it.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let mut backoff = Backoff::new(timeout);
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // It may have printed and exited between the two checks.
                if self.output().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "`{}` exited ({status}) without printing {needle:?}; output:\n{}",
                    self.command,
                    tail(&self.output(), 4000)
                );
            }
            if !backoff.wait() {
                bail!(
                    "`{}` did not print {needle:?} within {timeout:?}; output:\n{}",
                    self.command,
                    tail(&self.output(), 4000)
                );
            }
        }
    }

    /// Closes stdin, then SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns the exit
    /// status when the process could be reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stdin = None;
        terminate_all(&[&self.child], STOP_GRACE);
        lock(&self.child).try_wait().ok().flatten()
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Lab {
    /// Starts `args` inside `ns` with stdin at /dev/null, stdout and stderr to files in the
    /// lab dir named after `name`.
    pub fn spawn(&self, ns: &str, name: &str, args: &[impl AsRef<OsStr>]) -> Result<LabProcess> {
        self.spawn_inner(ns, name, args, false)
    }

    /// Like [`Lab::spawn`], but keeps a pipe to stdin open for
    /// [`LabProcess::write_stdin`]: openssl s_client/s_server quit on stdin EOF.
    pub fn spawn_with_stdin(
        &self,
        ns: &str,
        name: &str,
        args: &[impl AsRef<OsStr>],
    ) -> Result<LabProcess> {
        self.spawn_inner(ns, name, args, true)
    }

    pub(crate) fn spawn_inner(
        &self,
        ns: &str,
        name: &str,
        args: &[impl AsRef<OsStr>],
        with_stdin: bool,
    ) -> Result<LabProcess> {
        self.check_ns(ns)?;
        let stem = format!("{:03}-{}", self.next_seq(), sanitize(name));
        let stdout_path = self.dir.join(format!("{stem}.stdout"));
        let stderr_path = self.dir.join(format!("{stem}.stderr"));
        let (mut cmd, command) = netns_command(ns, args)?;
        let file = |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        cmd.stdout(file(&stdout_path)?)
            .stderr(file(&stderr_path)?)
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let stdin = child.stdin.take();
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.procs).push(Arc::clone(&child));
        Ok(LabProcess {
            name: name.to_owned(),
            ns: ns.to_owned(),
            command,
            pid,
            child,
            stdin,
            stdout_path,
            stderr_path,
        })
    }

    /// Runs `args` inside `ns` to completion and returns its output whatever the exit
    /// status (failing commands are often the point of a test). Killed after `timeout`,
    /// which is then an error naming the command and holding what it printed so far.
    pub fn run(&self, ns: &str, args: &[impl AsRef<OsStr>], timeout: Duration) -> Result<Output> {
        self.check_ns(ns)?;
        let (cmd, command) = netns_command(ns, args)?;
        run_command(cmd, &command, timeout)
    }

    /// Like [`Lab::run`], but a non-zero exit is an error (with stderr); returns stdout.
    pub fn run_ok(
        &self,
        ns: &str,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
    ) -> Result<String> {
        self.check_ns(ns)?;
        let (cmd, command) = netns_command(ns, args)?;
        check_output(run_command(cmd, &command, timeout)?, &command)
    }

    /// Waits until something in `ns` listens on TCP `addr:port` (a wildcard listener of the
    /// same family counts). Reads `ss -ltn` rather than connecting, because a probe
    /// connection would be seen by the detector and captures, and would use up servers
    /// started with `-naccept 1`.
    pub fn wait_tcp(&self, ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> Result<()> {
        self.wait_listening(ns, &[addr], port, timeout, None)
    }

    /// Waits for a listener on `port` at any of `addrs`; with `proc`, stops waiting as soon
    /// as that process has died, and says why.
    pub(crate) fn wait_listening(
        &self,
        ns: &str,
        addrs: &[IpAddr],
        port: u16,
        timeout: Duration,
        proc: Option<&LabProcess>,
    ) -> Result<()> {
        self.check_ns(ns)?;
        let mut backoff = Backoff::new(timeout);
        loop {
            let listeners = self.run_ok(ns, &["ss", "-Hltn"], SETUP_TIMEOUT)?;
            if addrs.iter().any(|a| ss_listens(&listeners, *a, port)) {
                return Ok(());
            }
            if let Some(p) = proc
                && let Some(status) = p.try_wait()?
            {
                bail!(
                    "`{}` exited ({status}) before listening on port {port} in netns {ns}; output:\n{}",
                    p.command,
                    tail(&p.output(), 4000)
                );
            }
            if !backoff.wait() {
                bail!(
                    "nothing listened on {addrs:?} port {port} in netns {ns} within {timeout:?}; \
                     listeners there:\n{listeners}"
                );
            }
        }
    }
}

/// Runs `args` in the host namespace with a hard timeout (see [`Lab::run`]): for the few
/// steps that need no network, like reading a pcap with `tcpdump -r`.
pub fn run_host(args: &[impl AsRef<OsStr>], timeout: Duration) -> Result<Output> {
    ensure!(!args.is_empty(), "run_host: no command given");
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    run_command(cmd, &display_cmd(args), timeout)
}

/// `ip netns exec NS ARGS...`, with the proxy variables removed (see [`PROXY_VARS`]).
pub(crate) fn netns_command(ns: &str, args: &[impl AsRef<OsStr>]) -> Result<(Command, String)> {
    ensure!(!args.is_empty(), "no command given to run in netns {ns}");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    Ok((cmd, format!("ip netns exec {ns} {}", display_cmd(args))))
}

/// A host command that must succeed within [`SETUP_TIMEOUT`]; returns its stdout.
pub(crate) fn host_ok(args: &[impl AsRef<OsStr>]) -> Result<String> {
    check_output(run_host(args, SETUP_TIMEOUT)?, &display_cmd(args))
}

pub(crate) fn check_output(out: Output, command: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{command}` failed ({}): {}",
            out.status,
            tail(
                if stderr.trim().is_empty() {
                    &stdout
                } else {
                    &stderr
                },
                4000
            )
            .trim()
        );
    }
    Ok(stdout)
}

/// Runs `cmd` with piped output and a hard timeout. Pipes are drained by helper threads so
/// a command printing more than a pipe buffer cannot deadlock against our polling.
pub(crate) fn run_command(mut cmd: Command, command: &str, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{command}`"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut backoff = Backoff::new(timeout);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{command}`"))?
        {
            break Some(status);
        }
        if !backoff.wait() {
            let _ = child.kill();
            reap_bounded(&mut child, STOP_GRACE);
            break None;
        }
    };
    let (stdout, stderr) = (collect(&stdout), collect(&stderr));
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{command}` timed out after {timeout:?} and was killed; stdout: {:?}; stderr: {:?}",
            tail(&String::from_utf8_lossy(&stdout), 4000),
            tail(&String::from_utf8_lossy(&stderr), 4000)
        ),
    }
}

pub(crate) fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// What a drain thread read; empty if a grandchild still holds the pipe open after
/// [`PIPE_DRAIN_GRACE`] (the thread is then left to finish on its own).
pub(crate) fn collect(rx: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(PIPE_DRAIN_GRACE).unwrap_or_default()
}

pub(crate) fn reap_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut backoff = Backoff::new(limit);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if !backoff.wait() {
            return None;
        }
    }
}

pub(crate) fn signal_child(child: &Mutex<Child>, sig: libc::c_int) -> Result<bool> {
    let mut c = lock(child);
    if c.try_wait()?.is_some() {
        return Ok(false);
    }
    // Not reaped yet, so the pid is still this child's (possibly a zombie).
    let pid = libc::pid_t::try_from(c.id())?;
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(true)
}

/// SIGTERM to all, SIGKILL to those still running after `grace`, all in parallel so that a
/// lab with many processes still stops within a few seconds.
pub(crate) fn terminate_all(children: &[&Mutex<Child>], grace: Duration) {
    let exited = |c: &Mutex<Child>| !matches!(lock(c).try_wait(), Ok(None));
    for c in children {
        let _ = signal_child(c, libc::SIGTERM);
    }
    for sig in [None, Some(libc::SIGKILL)] {
        if let Some(sig) = sig {
            for c in children.iter().filter(|c| !exited(c)) {
                let _ = signal_child(c, sig);
            }
        }
        let mut backoff = Backoff::new(grace);
        loop {
            if children.iter().all(|c| exited(c)) {
                return;
            }
            if !backoff.wait() {
                break;
            }
        }
    }
}

/// Bounded polling: exponential backoff from 1 ms to [`MAX_POLL_INTERVAL`], ending after a
/// time limit or [`MAX_POLLS`] attempts, whichever comes first.
pub(crate) struct Backoff {
    pub(crate) start: Instant,
    pub(crate) limit: Duration,
    pub(crate) delay: Duration,
    pub(crate) polls: u32,
}

impl Backoff {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            start: Instant::now(),
            limit,
            delay: Duration::from_millis(1),
            polls: 0,
        }
    }

    /// Sleeps before the next attempt; false once the budget is spent (the caller has
    /// then made its last check).
    pub(crate) fn wait(&mut self) -> bool {
        let elapsed = self.start.elapsed();
        if elapsed >= self.limit || self.polls >= MAX_POLLS {
            return false;
        }
        self.polls += 1;
        thread::sleep(self.delay.min(self.limit - elapsed));
        self.delay = (self.delay * 2).min(MAX_POLL_INTERVAL);
        true
    }
}

/// Whether `ss -Hltn` output shows a listener on `port` that accepts connections to `addr`:
/// the address itself, or a wildcard of its family (`*` is a dual-stack wildcard).
pub(crate) fn ss_listens(ss: &str, addr: IpAddr, port: u16) -> bool {
    ss.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|local| {
            let Some((host, p)) = local.rsplit_once(':') else {
                return false;
            };
            if p.parse() != Ok(port) {
                return false;
            }
            let host = host.split('%').next().unwrap_or(host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host == "*" {
                return true;
            }
            match host.parse::<IpAddr>() {
                Ok(h) => h == addr || (h.is_unspecified() && h.is_ipv4() == addr.is_ipv4()),
                Err(_) => false,
            }
        })
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    which::which(program).ok()
}

/// `program` on PATH, else in /usr/bin, /usr/sbin or /sbin (where packages install, not
/// all on every user's PATH).
pub fn find_program(program: &str) -> Option<PathBuf> {
    find_in_path(program)
        .or_else(|| which::which_in(program, Some("/usr/bin:/usr/sbin:/sbin"), "/").ok())
}
