//! Clients of the lab's servers (openssl s_client, curl) and waiting on their output,
//! shared by the scenarios and the live tests.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{netns::Lab, process::LabProcess, util::tail};

/// Bound for each step of a scenario (a client run, a server answer).
pub(crate) const T: Duration = Duration::from_secs(15);

pub(crate) fn c4(lab: &Lab) -> IpAddr {
    lab.client_v4().into()
}

pub(crate) fn s4(lab: &Lab, port: u16) -> SocketAddr {
    SocketAddr::new(lab.server_v4().into(), port)
}

/// Runs a client to completion and returns stdout and stderr together.
pub(crate) fn run_text(lab: &Lab, args: &[impl AsRef<std::ffi::OsStr>]) -> Result<(bool, String)> {
    let out = lab.run(lab.client_ns(), args, T)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

pub(crate) fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Waits (bounded) until `needle` shows at least `n` times in the output of `p`.
pub(crate) fn wait_count(p: &LabProcess, needle: &str, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = p.output();
        if count(&out, needle) >= n {
            return Ok(());
        }
        if Instant::now() > deadline || p.try_wait()?.is_some() {
            bail!(
                "{needle:?} seen {} times, expected {n}, in the output of `{}`:\n{}",
                count(&out, needle),
                p.command(),
                tail(&out, 3000)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP exchange with an `s_server -www`; returns s_client's output.
pub(crate) fn www_get(lab: &Lab, name: &str, args: &[String]) -> Result<String> {
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), name, args)?;
    cli.write_stdin(b"GET / HTTP/1.0\r\n\r\n")?;
    cli.wait_for_output("</HTML>", T)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(cli.output())
}

/// The first "New, ..." or "Reused, ..." line s_client printed about its session.
pub(crate) fn session_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or("")
}

pub(crate) fn curl(lab: &Lab, extra: &[&str]) -> Result<std::process::Output> {
    let mut args = vec!["curl", "-sS", "--max-time", "10", "--noproxy", "*"];
    args.extend_from_slice(extra);
    lab.run(lab.client_ns(), &args, T)
}
