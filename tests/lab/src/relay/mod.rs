//! A tiny inline "TLS inspector" for live tests of field case 2 (resumed sessions rejected
//! by inline TLS inspection).
//!
//! [`Relay`] listens on one address and forwards each TCP connection to an upstream server,
//! like a transparent proxy. Before forwarding, it reads the client's ClientHello (which
//! may arrive in several segments and, in principle, several records) and, when the client
//! offers to resume a cached session, does what the field's inspecting firewall did: it
//! has no state for that session, so it answers with the plaintext fatal alert
//! `15 03 03 00 02 02 28` (handshake_failure) and closes. Everything else is forwarded
//! byte for byte in both directions until either side closes.
//!
//! Resumption offered means (the same reading as the detector's, see field case 2 of
//! docs/field-cases.md):
//! - TLS 1.3: a `pre_shared_key` extension (41);
//! - TLS 1.2 ticket: a non-empty `session_ticket` extension (35);
//! - TLS 1.2 session ID: a non-empty session ID when the ClientHello offers nothing above
//!   TLS 1.2 (TLS 1.3 clients send a random 32-byte legacy session ID in every hello, for
//!   middlebox compatibility, so that one means nothing).
//!
//! Everything is bounded: the ClientHello buffer ([`MAX_HELLO_BYTES`]), the wait for it
//! ([`HELLO_TIMEOUT`]), the upstream connect, and the relay's life: dropping the [`Relay`]
//! stops accepting and ends every connection within a poll interval or two.

mod hello;
#[cfg(test)]
mod tests;

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{netns::in_netns, util::lock};

pub use self::hello::*;

/// The relay's answer to a resumption attempt: alert record, TLS 1.2 record version,
/// length 2, fatal (2), handshake_failure (40).
pub const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

/// Most bytes buffered while waiting for the ClientHello (several maximal records).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;

/// How long a client may take to send its whole ClientHello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on connecting to the upstream server.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often blocked accepts and reads look at the stop flag.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// After the alert, how long the relay waits for the client to close first (so that the
/// relay's FIN, not a RST, ends the connection when the client still sends something).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// What the relay did with one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Resumption offered: answered with [`HANDSHAKE_FAILURE_ALERT`] and closed.
    Rejected(Resumption),
    /// Forwarded to the upstream server.
    Forwarded,
    /// Reset right after the ClientHello (a relay started with [`Relay::start_resetting`]).
    Reset,
    /// Closed without forwarding (the client sent nothing in time, the upstream refused,
    /// an I/O error), and why.
    Failed(String),
}

/// One connection the relay accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The client's address as the relay saw it.
    pub client: SocketAddr,
    /// The parsed ClientHello, when the first bytes were one.
    pub hello: Option<ClientHelloInfo>,
    /// Why the first bytes were not a ClientHello, when they were not.
    pub not_hello: Option<String>,
    pub verdict: Verdict,
}

pub(crate) type Log = Arc<Mutex<Vec<Connection>>>;

/// A running relay; dropping it stops it (bounded: threads notice within [`POLL`]).
pub struct Relay {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Log,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `listen` (port 0 picks one; see [`Relay::local_addr`]) and forwards to
    /// `upstream`. With `ns`, both the listener and every upstream socket live in that
    /// network namespace (by its `ip netns` name); without, in the caller's.
    pub fn start(ns: Option<&str>, listen: SocketAddr, upstream: SocketAddr) -> Result<Relay> {
        Relay::start_with(ns, listen, upstream, false)
    }

    /// A relay that answers every ClientHello with a TCP reset, as an inline device that
    /// kills a handshake it does not like does.
    pub fn start_resetting(ns: Option<&str>, listen: SocketAddr) -> Result<Relay> {
        // No upstream is ever dialled; the address only fills the field.
        Relay::start_with(ns, listen, listen, true)
    }

    fn start_with(
        ns: Option<&str>,
        listen: SocketAddr,
        upstream: SocketAddr,
        reset_all: bool,
    ) -> Result<Relay> {
        let listener = match ns {
            Some(ns) => in_netns(ns, || TcpListener::bind(listen))?,
            None => TcpListener::bind(listen),
        }
        .with_context(|| format!("relay: binding {listen}"))?;
        listener
            .set_nonblocking(true)
            .context("relay: nonblocking listener")?;
        let listen = listener.local_addr().context("relay: local address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let ctx = Arc::new(Ctx {
            ns: ns.map(str::to_owned),
            upstream,
            reset_all,
            stop: Arc::clone(&stop),
            log: Arc::clone(&log),
        });
        let acceptor = thread::Builder::new()
            .name(format!("relay {listen}"))
            .spawn(move || accept_loop(&listener, &ctx))
            .context("relay: spawning the accept thread")?;
        Ok(Relay {
            listen,
            stop,
            log,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Connections so far, in the order the relay decided on them.
    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.log).clone()
    }

    /// Waits (bounded) until the relay has decided on `n` connections; returns them all.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> Result<Vec<Connection>> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.connections();
            if c.len() >= n {
                return Ok(c);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "relay decided on {} connections in {timeout:?}, expected {n}: {c:#?}",
                c.len()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

pub(crate) struct Ctx {
    ns: Option<String>,
    upstream: SocketAddr,
    /// Reset every connection once its ClientHello is in (a middlebox that kills TLS).
    reset_all: bool,
    stop: Arc<AtomicBool>,
    log: Log,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn record(&self, c: Connection) {
        lock(&self.log).push(c);
    }

    fn connect_upstream(&self) -> io::Result<TcpStream> {
        let connect = || TcpStream::connect_timeout(&self.upstream, CONNECT_TIMEOUT);
        match &self.ns {
            Some(ns) => in_netns(ns, connect).map_err(io::Error::other)?,
            None => connect(),
        }
    }
}

pub(crate) fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !ctx.stopped() {
        match listener.accept() {
            Ok((stream, peer)) => {
                let ctx = Arc::clone(ctx);
                let spawned = thread::Builder::new()
                    .name(format!("relay conn {peer}"))
                    .spawn(move || handle(stream, peer, &ctx));
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(e) => eprintln!("[relay] cannot spawn a thread for {peer}: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("[relay] accept: {e}");
                thread::sleep(POLL);
            }
        }
        workers.retain(|w| !w.is_finished());
    }
    for w in workers {
        let _ = w.join();
    }
}

pub(crate) fn handle(client: TcpStream, peer: SocketAddr, ctx: &Ctx) {
    let mut conn = Connection {
        client: peer,
        hello: None,
        not_hello: None,
        verdict: Verdict::Forwarded,
    };
    let first = match read_client_hello(&client, ctx) {
        Ok(x) => x,
        Err(e) => {
            conn.verdict = Verdict::Failed(format!("reading the ClientHello: {e}"));
            ctx.record(conn);
            return;
        }
    };
    let (buffered, hello) = first;
    match hello {
        Hello::Complete { info, .. } => {
            let resumption = info.resumption();
            conn.hello = Some(info);
            if ctx.reset_all {
                conn.verdict = Verdict::Reset;
                ctx.record(conn);
                reset(client);
                return;
            }
            if let Some(method) = resumption {
                conn.verdict = Verdict::Rejected(method);
                ctx.record(conn);
                reject(client, ctx);
                return;
            }
        }
        Hello::NotClientHello(why) => conn.not_hello = Some(why),
        Hello::NeedMore => conn.not_hello = Some("the client closed mid-ClientHello".into()),
    }
    let upstream = match ctx.connect_upstream() {
        Ok(s) => s,
        Err(e) => {
            conn.verdict = Verdict::Failed(format!("connecting to {}: {e}", ctx.upstream));
            ctx.record(conn);
            return;
        }
    };
    ctx.record(conn);
    if let Err(e) = forward(client, upstream, &buffered, ctx) {
        eprintln!("[relay] {peer}: {e}");
    }
}

/// Reads until the first bytes are a complete ClientHello, or clearly not one, or the
/// client closed; returns what was read and the verdict on it.
pub(crate) fn read_client_hello(mut client: &TcpStream, ctx: &Ctx) -> io::Result<(Vec<u8>, Hello)> {
    client.set_read_timeout(Some(POLL))?;
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match client.read(&mut chunk) {
            Ok(0) => return Ok((buf, Hello::NeedMore)),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                match parse_client_hello(&buf) {
                    Hello::NeedMore if buf.len() < MAX_HELLO_BYTES => {}
                    Hello::NeedMore => {
                        return Ok((
                            buf,
                            Hello::NotClientHello(format!(
                                "no complete ClientHello in the first {MAX_HELLO_BYTES} bytes"
                            )),
                        ));
                    }
                    done => return Ok((buf, done)),
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
        if ctx.stopped() {
            return Err(io::Error::other("relay stopped"));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} bytes and no complete ClientHello after {HELLO_TIMEOUT:?}",
                    buf.len()
                ),
            ));
        }
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The inspector's answer: the fatal alert, then FIN; waits (bounded) for the client to
/// close so the connection ends with FINs rather than a RST.
/// Closes with a RST: SO_LINGER with a zero timeout makes close() abort the connection.
pub(crate) fn reset(client: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(client);
}

pub(crate) fn reject(mut client: TcpStream, ctx: &Ctx) {
    if client.write_all(&HANDSHAKE_FAILURE_ALERT).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline && !ctx.stopped() {
        match client.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

/// Copies both ways until both directions are closed (each EOF is passed on as a
/// half-close), an error breaks the connection, or the relay stops.
pub(crate) fn forward(
    client: TcpStream,
    upstream: TcpStream,
    first: &[u8],
    ctx: &Ctx,
) -> io::Result<()> {
    (&upstream).write_all(first)?;
    for s in [&client, &upstream] {
        s.set_read_timeout(Some(POLL))?;
        s.set_nodelay(true)?;
    }
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let stop = Arc::clone(&ctx.stop);
    let up = thread::Builder::new()
        .name("relay client->server".into())
        .spawn(move || pump(&c2, &u2, &stop))?;
    pump(&upstream, &client, &ctx.stop);
    let _ = up.join();
    Ok(())
}

pub(crate) fn pump(mut from: &TcpStream, mut to: &TcpStream, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    // Broken or stopped: end both directions, which also wakes the other pump.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
