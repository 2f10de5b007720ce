//! Small TCP servers and clients of our own for the idle-gap tests (field cases 4 and 5
//! (docs/field-cases.md)), a router that forgets idle flows the way a load balancer does,
//! and a scratch directory.
//!
//! The idle logic is not TLS-specific, so these speak plain TCP. Sockets are made inside a
//! lab namespace with [`in_netns`] and then used from ordinary threads; every blocking
//! call has a bound (accept deadlines, read timeouts), so no thread outlives its test for
//! long even when the lab (and with it the namespace) is gone.

use std::{
    fs,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Lab, in_netns};

/// Bound for connecting and for each read or write of the helpers below.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening socket on `addr` inside `ns`.
pub fn listen(ns: &str, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {ns}"))
}

/// A connection from inside `ns` to `addr`, with [`IO_TIMEOUT`] on reads and writes.
pub fn connect(ns: &str, addr: SocketAddr) -> Result<TcpStream> {
    let s = in_netns(ns, || TcpStream::connect_timeout(&addr, IO_TIMEOUT))?
        .with_context(|| format!("connecting to {addr} from {ns}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// `SO_LINGER {on, 0}`: closing the socket then sends a RST instead of a FIN (and drops
/// whatever is still unsent or unacknowledged, so the kernel stops retransmitting it).
pub fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized `linger` for SO_LINGER.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts one connection, waiting at most until `deadline`.
pub fn accept_until(listener: &TcpListener, deadline: Instant) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no connection before the deadline",
                    ));
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An echo server: accepts `conns` connections (each within `accept_within` of the last)
/// and echoes each on a thread of its own until the peer closes (then closes too, with a
/// FIN) or a read times out. The handle returns once every connection was accepted.
pub fn spawn_echo(
    listener: TcpListener,
    conns: usize,
    accept_within: Duration,
) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        for _ in 0..conns {
            let mut s = accept_until(&listener, Instant::now() + accept_within)?;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Ok(())
    })
}

/// A server that accepts one connection (within `accept_within`), reads the client's
/// request, answers `reply`, stays idle for `idle`, and then resets the connection
/// (`SO_LINGER` 0 and close): a peer giving up on an idle flow with a RST.
pub fn spawn_reset_after_idle(
    listener: TcpListener,
    accept_within: Duration,
    reply: &'static [u8],
    idle: Duration,
) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut s = accept_until(&listener, Instant::now() + accept_within)?;
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed before its request",
            ));
        }
        s.write_all(reply)?;
        thread::sleep(idle);
        set_linger_zero(&s)?;
        drop(s);
        Ok(())
    })
}

/// Writes `msg` and reads back exactly as many bytes (from an echo server).
pub fn echo_round(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(io::Error::other(format!(
            "echo returned {back:?} for {msg:?}"
        )));
    }
    Ok(())
}

/// A clean close: FIN, then wait (bounded) for the peer's FIN.
pub fn close_cleanly(mut s: TcpStream) -> io::Result<()> {
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(())
}

/// Makes the router forget idle flows and refuse to pick them up again, as the load
/// balancer of field case 5 (docs/field-cases.md) does: conntrack's established timeout
/// becomes `established_s` in `ns` (the sysctl is per network namespace), and forwarded
/// packets of flows conntrack does not know (state new, or invalid when it refuses to pick
/// them up) are dropped unless they are a SYN. Returns the rules as `nft list ruleset`
/// shows.
pub fn forget_idle_flows(lab: &Lab, ns: &str, established_s: u32) -> Result<String> {
    const T: Duration = Duration::from_secs(10);
    let rules = "table inet dlab_idle {\n\
        \tchain forward {\n\
        \t\ttype filter hook forward priority filter; policy accept;\n\
        \t\tct state new,invalid tcp flags & (fin|syn|rst|ack) != syn counter drop\n\
        \t}\n\
        }\n";
    let file = lab.dir().join(format!("nft-{ns}.conf"));
    fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    let file = file.to_str().context("lab dir is UTF-8")?;
    lab.run_ok(ns, &["nft", "-f", file], T)
        .context("loading the nftables rules (is the nftables package installed?)")?;
    // The rule's conntrack match loads nf_conntrack, which is what brings the sysctl.
    let key = "net.netfilter.nf_conntrack_tcp_timeout_established";
    lab.run_ok(ns, &["sysctl", "-w", &format!("{key}={established_s}")], T)?;
    let now = lab.run_ok(ns, &["sysctl", "-n", key], T)?;
    if now.trim() != established_s.to_string() {
        bail!("{key} is {now:?} in {ns} after setting it to {established_s}");
    }
    lab.run_ok(ns, &["nft", "list", "ruleset"], T)
}

/// Packets the [`forget_idle_flows`] rule dropped so far.
pub fn forgotten_drops(lab: &Lab, ns: &str) -> Result<u64> {
    let out = lab.run_ok(
        ns,
        &["nft", "list", "chain", "inet", "dlab_idle", "forward"],
        Duration::from_secs(10),
    )?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
        .with_context(|| format!("no packet counter in:\n{out}"))
}

/// A temporary directory of this process, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "idle-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
