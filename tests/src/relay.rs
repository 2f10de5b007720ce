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
//! Resumption offered means (the same reading as the detector's, see BRIEF.md):
//! - TLS 1.3: a `pre_shared_key` extension (41);
//! - TLS 1.2 ticket: a non-empty `session_ticket` extension (35);
//! - TLS 1.2 session ID: a non-empty session ID when the ClientHello offers nothing above
//!   TLS 1.2 (TLS 1.3 clients send a random 32-byte legacy session ID in every hello, for
//!   middlebox compatibility, so that one means nothing).
//!
//! Everything is bounded: the ClientHello buffer ([`MAX_HELLO_BYTES`]), the wait for it
//! ([`HELLO_TIMEOUT`]), the upstream connect, and the relay's life: dropping the [`Relay`]
//! stops accepting and ends every connection within a poll interval or two.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::lab::in_netns;

/// The relay's answer to a resumption attempt: alert record, TLS 1.2 record version,
/// length 2, fatal (2), handshake_failure (40).
pub const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
/// Most bytes buffered while waiting for the ClientHello (several maximal records).
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// How long a client may take to send its whole ClientHello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to the upstream server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often blocked accepts and reads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// After the alert, how long the relay waits for the client to close first (so that the
/// relay's FIN, not a RST, ends the connection when the client still sends something).
const LINGER: Duration = Duration::from_secs(2);
/// Largest TLS record body (2^14 + 2048, the TLSCiphertext bound).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// How a client offered to resume; names match the detector's `detail.method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    Tls12SessionId,
    Tls12SessionTicket,
    Tls13Psk,
}

impl Resumption {
    /// The detector's name for this method.
    pub fn as_str(self) -> &'static str {
        match self {
            Resumption::Tls12SessionId => "tls12_session_id",
            Resumption::Tls12SessionTicket => "tls12_session_ticket",
            Resumption::Tls13Psk => "tls13_psk",
        }
    }
}

impl fmt::Display for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the relay read from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// Length of the session ID (0..=32).
    pub session_id_len: u8,
    /// Length of the `session_ticket` extension's data, when the extension is present.
    pub session_ticket_len: Option<usize>,
    /// A `pre_shared_key` extension is present.
    pub psk: bool,
    /// Versions listed in `supported_versions` (empty when the extension is absent).
    pub supported_versions: Vec<u16>,
    /// The first host name of `server_name`.
    pub sni: Option<String>,
}

impl ClientHelloInfo {
    /// Whether the hello offers TLS 1.3 (or anything above TLS 1.2).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions
            .iter()
            .any(|&v| v > 0x0303 && !is_grease(v))
    }

    /// The resumption this hello offers, if any (PSK first, then ticket, then session ID,
    /// as a server would try them).
    pub fn resumption(&self) -> Option<Resumption> {
        if self.psk {
            Some(Resumption::Tls13Psk)
        } else if self.session_ticket_len.is_some_and(|n| n > 0) {
            Some(Resumption::Tls12SessionTicket)
        } else if self.session_id_len > 0 && !self.offers_tls13() {
            Some(Resumption::Tls12SessionId)
        } else {
            None
        }
    }
}

/// GREASE values (RFC 8701) are `0x?a?a`; clients may list them among the versions.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Result of looking at the first bytes a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// The bytes so far are a valid beginning: read more.
    NeedMore,
    /// A complete ClientHello; `consumed` is the length of the records that carried it.
    Complete {
        info: ClientHelloInfo,
        consumed: usize,
    },
    /// Not a ClientHello (not TLS, another record type, or malformed), and why.
    NotClientHello(String),
}

/// Parses the ClientHello at the start of `buf`, which may be split over several
/// handshake records and may be incomplete (then [`Hello::NeedMore`]).
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        // Is the handshake message complete?
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Hello::NotClientHello(format!(
                    "handshake type {} where a ClientHello (1) was expected",
                    handshake[0]
                ));
            }
            let len = u24(&handshake[1..4]);
            if len + 4 > MAX_HELLO_BYTES {
                return Hello::NotClientHello(format!("ClientHello of {len} bytes is too long"));
            }
            if handshake.len() >= len + 4 {
                return match parse_hello_body(&handshake[4..4 + len]) {
                    Ok(info) => Hello::Complete {
                        info,
                        consumed: pos,
                    },
                    Err(why) => Hello::NotClientHello(why),
                };
            }
        }
        let Some(header) = buf.get(pos..pos + 5) else {
            return check_partial_header(&buf[pos..]);
        };
        if header[0] != 22 {
            return Hello::NotClientHello(format!(
                "record type {} where a handshake record (22) was expected; first bytes {:02x?}",
                header[0],
                &buf[..buf.len().min(8)]
            ));
        }
        if header[1] != 3 {
            return Hello::NotClientHello(format!(
                "record version {:02x}{:02x} is not TLS",
                header[1], header[2]
            ));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Hello::NotClientHello(format!("record length {len} is not TLS"));
        }
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Hello::NeedMore;
        };
        handshake.extend_from_slice(body);
        pos += 5 + len;
    }
}

/// A record header cut short: read more if what is there could start a handshake record.
fn check_partial_header(rest: &[u8]) -> Hello {
    match rest {
        [] | [22] | [22, 3] | [22, 3, _] | [22, 3, _, _] => Hello::NeedMore,
        _ => Hello::NotClientHello(format!("first bytes {rest:02x?} are not a TLS handshake")),
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A bounds-checked reader over one message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "ClientHello truncated in {what}: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u8(what)?;
        self.take(n.into(), what)
    }

    fn vec16(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u16(what)?;
        self.take(n.into(), what)
    }

    fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
}

fn parse_hello_body(body: &[u8]) -> Result<ClientHelloInfo, String> {
    let mut c = Cursor { buf: body, pos: 0 };
    let mut info = ClientHelloInfo {
        legacy_version: c.u16("legacy_version")?,
        ..Default::default()
    };
    c.take(32, "random")?;
    let session_id = c.vec8("session_id")?;
    if session_id.len() > 32 {
        return Err(format!("session ID of {} bytes", session_id.len()));
    }
    info.session_id_len = session_id.len() as u8;
    c.vec16("cipher_suites")?;
    c.vec8("compression_methods")?;
    if c.rest() == 0 {
        // No extensions at all (old clients).
        return Ok(info);
    }
    let mut ext = Cursor {
        buf: c.vec16("extensions")?,
        pos: 0,
    };
    while ext.rest() > 0 {
        let typ = ext.u16("extension type")?;
        let data = ext.vec16("extension data")?;
        match typ {
            EXT_SERVER_NAME => info.sni = parse_sni(data)?,
            EXT_SESSION_TICKET => info.session_ticket_len = Some(data.len()),
            EXT_PRE_SHARED_KEY => info.psk = true,
            EXT_SUPPORTED_VERSIONS => {
                let mut v = Cursor { buf: data, pos: 0 };
                let list = v.vec8("supported_versions")?;
                info.supported_versions = list
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
                    .collect();
            }
            _ => {}
        }
    }
    Ok(info)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, String> {
    let mut c = Cursor { buf: data, pos: 0 };
    let mut list = Cursor {
        buf: c.vec16("server_name list")?,
        pos: 0,
    };
    while list.rest() > 0 {
        let name_type = list.u8("server_name type")?;
        let name = list.vec16("server_name")?;
        if name_type == 0 {
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
    }
    Ok(None)
}

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

type Log = Arc<Mutex<Vec<Connection>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

struct Ctx {
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

fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>) {
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

fn handle(client: TcpStream, peer: SocketAddr, ctx: &Ctx) {
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
fn read_client_hello(mut client: &TcpStream, ctx: &Ctx) -> io::Result<(Vec<u8>, Hello)> {
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

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The inspector's answer: the fatal alert, then FIN; waits (bounded) for the client to
/// close so the connection ends with FINs rather than a RST.
/// Closes with a RST: SO_LINGER with a zero timeout makes close() abort the connection.
fn reset(client: TcpStream) {
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

fn reject(mut client: TcpStream, ctx: &Ctx) {
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
fn forward(client: TcpStream, upstream: TcpStream, first: &[u8], ctx: &Ctx) -> io::Result<()> {
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

fn pump(mut from: &TcpStream, mut to: &TcpStream, stop: &AtomicBool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message (type 1) with these fields.
    fn hello(session_id: &[u8], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([0x5a; 32]);
        body.push(session_id.len() as u8);
        body.extend(session_id);
        body.extend([0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend([0x01, 0x00]);
        let mut e = Vec::new();
        for (t, d) in exts {
            e.extend(t.to_be_bytes());
            e.extend((d.len() as u16).to_be_bytes());
            e.extend(d);
        }
        body.extend((e.len() as u16).to_be_bytes());
        body.extend(e);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// `msg` in handshake records of at most `max` body bytes, record version 0x0301.
    fn records(msg: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in msg.chunks(max) {
            out.extend([22, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend((name.len() as u16).to_be_bytes());
        d.extend(name.as_bytes());
        (EXT_SERVER_NAME, d)
    }

    fn versions(v: &[u16]) -> (u16, Vec<u8>) {
        let mut d = vec![(v.len() * 2) as u8];
        for x in v {
            d.extend(x.to_be_bytes());
        }
        (EXT_SUPPORTED_VERSIONS, d)
    }

    fn info(bytes: &[u8]) -> ClientHelloInfo {
        match parse_client_hello(bytes) {
            Hello::Complete { info, consumed } => {
                assert_eq!(consumed, bytes.len());
                info
            }
            other => panic!("expected a complete hello, got {other:?}"),
        }
    }

    #[test]
    fn fresh_tls12_hello_offers_nothing() {
        let msg = hello(&[], &[sni("server.test"), (EXT_SESSION_TICKET, vec![])]);
        let i = info(&records(&msg, 16384));
        assert_eq!(i.legacy_version, 0x0303);
        assert_eq!(i.session_id_len, 0);
        assert_eq!(i.session_ticket_len, Some(0));
        assert_eq!(i.sni.as_deref(), Some("server.test"));
        assert!(!i.psk && !i.offers_tls13());
        assert_eq!(i.resumption(), None);
    }

    #[test]
    fn tls12_session_id_is_resumption_only_without_tls13() {
        let id = [7u8; 32];
        let i = info(&records(&hello(&id, &[]), 16384));
        assert_eq!(i.session_id_len, 32);
        assert_eq!(i.session_ticket_len, None);
        assert_eq!(i.resumption(), Some(Resumption::Tls12SessionId));
        // A TLS 1.3 client's compatibility session ID is not a resumption offer, even
        // with a GREASE version in front.
        let msg = hello(&id, &[versions(&[0x0a0a, 0x0304, 0x0303])]);
        let i = info(&records(&msg, 16384));
        assert!(i.offers_tls13());
        assert_eq!(i.supported_versions, [0x0a0a, 0x0304, 0x0303]);
        assert_eq!(i.resumption(), None);
        // supported_versions listing only TLS 1.2 (and GREASE) keeps it a resumption.
        let msg = hello(&id, &[versions(&[0x1a1a, 0x0303])]);
        assert_eq!(
            info(&records(&msg, 16384)).resumption(),
            Some(Resumption::Tls12SessionId)
        );
    }

    #[test]
    fn ticket_and_psk() {
        let msg = hello(&[1; 32], &[(EXT_SESSION_TICKET, vec![0xab; 160])]);
        let i = info(&records(&msg, 16384));
        assert_eq!(i.session_ticket_len, Some(160));
        assert_eq!(i.resumption(), Some(Resumption::Tls12SessionTicket));
        let msg = hello(
            &[2; 32],
            &[
                sni("server.test"),
                versions(&[0x0304]),
                (45, vec![1, 1]),
                (EXT_PRE_SHARED_KEY, vec![0; 40]),
            ],
        );
        let i = info(&records(&msg, 16384));
        assert!(i.psk && i.offers_tls13());
        assert_eq!(i.resumption(), Some(Resumption::Tls13Psk));
        assert_eq!(Resumption::Tls13Psk.as_str(), "tls13_psk");
    }

    #[test]
    fn every_prefix_needs_more_then_completes() {
        let msg = hello(
            &[],
            &[sni("server.test"), (EXT_SESSION_TICKET, vec![9; 20])],
        );
        for max in [16384, 50, 7] {
            let bytes = records(&msg, max);
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_client_hello(&bytes[..cut]),
                    Hello::NeedMore,
                    "records of {max}, cut at {cut}"
                );
            }
            let i = info(&bytes);
            assert_eq!(i.session_ticket_len, Some(20));
            assert_eq!(i.resumption(), Some(Resumption::Tls12SessionTicket));
        }
        // Bytes after the hello (a second record) are not consumed.
        let mut bytes = records(&msg, 16384);
        let len = bytes.len();
        bytes.extend([20, 3, 3, 0, 1, 1]);
        assert!(matches!(
            parse_client_hello(&bytes),
            Hello::Complete { consumed, .. } if consumed == len
        ));
    }

    #[test]
    fn not_a_client_hello() {
        let not = |b: &[u8]| matches!(parse_client_hello(b), Hello::NotClientHello(_));
        assert!(not(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(not(b"G"));
        assert!(not(&[22, 4]));
        assert!(not(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]));
        // Record too long, or empty.
        assert!(not(&[22, 3, 1, 0x48, 0x01]));
        assert!(not(&[22, 3, 1, 0, 0]));
        // A ServerHello.
        assert!(not(&records(&[2, 0, 0, 2, 3, 3], 100)));
        // Declared extension longer than the extensions block.
        let mut msg = hello(&[], &[(EXT_SESSION_TICKET, vec![1; 4])]);
        let n = msg.len();
        msg[n - 5] = 0x40; // the ticket's length (low byte): 64 > 4
        assert!(not(&records(&msg, 16384)));
        // Session ID longer than 32.
        let msg = hello(&[0; 33], &[]);
        assert!(not(&records(&msg, 16384)));
    }

    #[test]
    fn hello_without_extensions() {
        let mut body = vec![0x03, 0x01];
        body.extend([0; 32]);
        body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
        let mut msg = vec![1, 0, 0, body.len() as u8];
        msg.extend(body);
        let i = info(&records(&msg, 16384));
        assert_eq!(i.legacy_version, 0x0301);
        assert_eq!(i.resumption(), None);
    }

    /// The relay on loopback, no namespace: a fresh hello is forwarded to an echo server,
    /// a resuming one gets the alert and a clean close.
    #[test]
    fn relay_forwards_fresh_and_rejects_resuming_clients() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        let echo_thread = thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let relay = Relay::start(None, "127.0.0.1:0".parse().unwrap(), upstream).unwrap();
        let addr = relay.local_addr();

        // Fresh: split into two writes; the echo returns it all, then the close.
        let fresh = records(&hello(&[], &[sni("a.test")]), 16384);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&fresh[..10]).unwrap();
        thread::sleep(Duration::from_millis(100));
        c.write_all(&fresh[10..]).unwrap();
        c.write_all(b"more").unwrap();
        let mut got = vec![0u8; fresh.len() + 4];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got[..fresh.len()], &fresh[..]);
        assert_eq!(&got[fresh.len()..], b"more");
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        echo_thread.join().unwrap();

        // Resuming: the alert, then EOF.
        let resuming = records(&hello(&[3; 32], &[]), 16384);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&resuming).unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, HANDSHAKE_FAILURE_ALERT);

        let conns = relay.wait_connections(2, Duration::from_secs(5)).unwrap();
        assert_eq!(conns[0].verdict, Verdict::Forwarded);
        assert_eq!(
            conns[0].hello.as_ref().unwrap().sni.as_deref(),
            Some("a.test")
        );
        assert_eq!(
            conns[1].verdict,
            Verdict::Rejected(Resumption::Tls12SessionId)
        );
        assert_eq!(conns[1].client, c.local_addr().unwrap());
        let start = Instant::now();
        drop(relay);
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
