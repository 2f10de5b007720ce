//! Clients of the lab's servers (openssl s_client, curl) and waiting on their output,
//! shared by the scenarios and the live tests.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    certs::{path_str, s_client_args},
    netns::Lab,
    process::LabProcess,
    util::tail,
};

/// Bound for each step of a scenario (a client run, a server answer).
pub const T: Duration = Duration::from_secs(15);

pub fn c4(lab: &Lab) -> IpAddr {
    lab.client_v4().into()
}

pub fn s4(lab: &Lab, port: u16) -> SocketAddr {
    SocketAddr::new(lab.server_v4().into(), port)
}

/// Runs a client to completion and returns stdout and stderr together.
pub fn run_text(lab: &Lab, args: &[impl AsRef<std::ffi::OsStr>]) -> Result<(bool, String)> {
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

pub fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Waits (bounded) until `needle` shows at least `n` times in the output of `p`.
pub fn wait_count(p: &LabProcess, needle: &str, n: usize, timeout: Duration) -> Result<()> {
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
pub fn www_get(lab: &Lab, name: &str, args: &[String]) -> Result<String> {
    let mut cli = lab.spawn_with_stdin(lab.client_ns(), name, args)?;
    cli.write_stdin(b"GET / HTTP/1.0\r\n\r\n")?;
    cli.wait_for_output("</HTML>", T)?;
    cli.close_stdin();
    cli.wait_timeout(T)?;
    Ok(cli.output())
}

/// The first "New, ..." or "Reused, ..." line s_client printed about its session.
pub fn session_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or("")
}

pub fn curl(lab: &Lab, extra: &[&str]) -> Result<std::process::Output> {
    let mut args = vec!["curl", "-sS", "--max-time", "10", "--noproxy", "*"];
    args.extend_from_slice(extra);
    lab.run(lab.client_ns(), &args, T)
}

/// A full handshake with an s_server `-www` at `server` (or a relay in front of one) with
/// `flags`, saving its session to LAB_DIR/STEM.sess. Returns s_client's output, and the
/// arguments of a second s_client that offers the saved session.
pub fn save_session(
    lab: &Lab,
    server: SocketAddr,
    ca: &Path,
    (method, stem): (&str, &str),
    flags: &[&str],
) -> Result<(String, Vec<String>)> {
    let sess = lab.dir().join(format!("{stem}.sess"));
    let sess = path_str(&sess)?;
    let mut first = flags.to_vec();
    first.extend(["-sess_out", sess]);
    let out = www_get(
        lab,
        &format!("s_client-{method}-full"),
        &s_client_args(server, ca, &first)?,
    )?;
    let mut second = flags.to_vec();
    second.extend(["-sess_in", sess]);
    Ok((out, s_client_args(server, ca, &second)?))
}
