//! The HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for supervisors,
//! on hyper's HTTP/1.1 server in the agent's own runtime.
//!
//! Bounded in every resource: at most [`MAX_CONNECTIONS`] connections; a connection must
//! send a request within [`HEADER_TIMEOUT`] of connecting, and one kept alive is closed
//! after [`IDLE_TIMEOUT`] without a request. When every slot is taken, a newcomer displaces
//! a connection that has not sent a request and has had [`CONNECT_GRACE`] to do so (the
//! longest-open that sent nothing, else the longest-open with a request head or TLS
//! handshake begun), so sockets that only hold a slot cannot lock scrapers out, and a
//! client that sends its request a moment after connecting is not taken for one of them.
//! A connection that has sent a request (a kept-alive scraper between scrapes) is never
//! displaced: closing it would break its next scrape, so when no other slot can be freed
//! within [`DISPLACE_WAIT`] the newcomer is refused instead, with a 503 over plain HTTP.
//! Both are counted: `detector_http_connections_displaced_total`,
//! `detector_http_connections_refused_total`. A
//! scrape reads the kernel counters and renders on a thread of its own, never on the event
//! loop, and reads flow-table occupancy from what [`super::occupancy`] last counted, so its
//! cost does not depend on the flow table's size.
//!
//! With a web config ([`super::web_config`]) it serves HTTPS (the TLS handshake counts
//! against [`HEADER_TIMEOUT`]) and requires basic auth on every path, the probes included
//! (as exporter-toolkit does: a Kubernetes probe sends the header with `httpHeaders`). A
//! password is checked by bcrypt on a blocking thread, at most [`AUTH_THREADS`] at a time,
//! never on the event loop.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use flate2::{Compression, write::GzEncoder};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot},
    time::Instant,
};

use tokio_rustls::TlsAcceptor;

use super::{
    health::Health,
    metrics::Metrics,
    web_config::{BasicAuth, WebConfig},
};
use crate::kernel::Counters;

/// Default `--listen` address. 9464 would be OpenTelemetry's; 9863 is not in Prometheus'
/// list of registered exporter ports (as of this writing), and loopback keeps the endpoint
/// private unless the operator opens it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9863";

/// Open connections at most. Prometheus keeps one per target; a few hundred leave room for
/// several servers, curl and probes.
pub const MAX_CONNECTIONS: usize = 256;
/// From connecting (or from the start of a request's headers) to the end of the headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection without a request for this long is closed: longer than
/// Prometheus' default one-minute scrape interval, so its connection is reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a connection asked to close may take to finish its request.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long a newcomer waits for a slot (a displaced connection closing, or one coming to
/// the end of its grace) before it is refused.
pub const DISPLACE_WAIT: Duration = Duration::from_secs(1);
/// A new connection is not displaced before it has had this long to send something: a
/// client's first bytes follow its handshake at once, but its process may be descheduled
/// between connect and write. While a flood of connections that send nothing holds the
/// slots, newcomers are thus let in at most [`MAX_CONNECTIONS`] per grace.
pub const CONNECT_GRACE: Duration = Duration::from_millis(250);
/// bcrypt verifications at once: each takes a core for tens of milliseconds, and the agent
/// must not starve its event loop's core (or exceed its task limit) when many scrapers, or
/// someone guessing passwords, connect at once.
pub const AUTH_THREADS: usize = 2;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request may reach.
#[derive(Clone)]
struct State {
    health: Arc<Health>,
    /// Where displacements and refusals are counted.
    metrics: Arc<Metrics>,
    /// Renders scrapes on a thread of its own: one thread however many scrapers (the
    /// systemd unit allows 64 tasks), and never the event loop's.
    renderer: mpsc::SyncSender<RenderJob>,
    /// Basic auth required, with the permits for bcrypt verifications.
    auth: Option<(Arc<BasicAuth>, Arc<Semaphore>)>,
}

/// A scrape to render (gzip or not), and where its response goes.
type RenderJob = (bool, oneshot::Sender<anyhow::Result<Response<Full<Bytes>>>>);

/// Starts the render thread; it ends when every sender is gone.
fn start_renderer(
    metrics: Arc<Metrics>,
    counters: Counters,
) -> anyhow::Result<mpsc::SyncSender<RenderJob>> {
    // At most one job per open connection is ever waiting.
    let (tx, rx) = mpsc::sync_channel::<RenderJob>(MAX_CONNECTIONS);
    std::thread::Builder::new()
        .name("metrics-render".into())
        .spawn(move || {
            for (gzip, reply) in rx {
                let _ = reply.send(scrape(&metrics, &counters, gzip));
            }
        })
        .context("starting the metrics render thread")?;
    Ok(tx)
}

/// A connection as the acceptor sees it: whether it is serving a request, and how to ask
/// it to close.
struct Conn {
    accepted: Instant,
    /// Sent a byte (a request head or TLS handshake begun).
    heard: AtomicBool,
    /// Requests being served.
    busy: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Asked to close already (so not chosen twice).
    displaced: AtomicBool,
    close: Notify,
}

impl Conn {
    fn new(accepted: Instant) -> Conn {
        Conn {
            accepted,
            heard: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            displaced: AtomicBool::new(false),
            close: Notify::new(),
        }
    }
}

/// What [`Conns::displace_one`] did.
#[derive(Debug, PartialEq)]
enum Room {
    /// Asked a connection to close.
    Asked,
    /// None may be displaced before then, when the oldest candidate's grace ends.
    NotBefore(Instant),
    /// Every connection has sent a request or is closing already.
    Full,
}

/// The open connections, oldest first (ids grow with accept order).
#[derive(Default)]
struct Conns(Mutex<BTreeMap<u64, Arc<Conn>>>);

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to close a connection that has sent no request, is not closing already and
    /// has had [`CONNECT_GRACE`]: the longest-open that sent nothing, else the longest-open
    /// that began a request head or TLS handshake. Never one that has sent a request: an
    /// answered scraper between scrapes would find its connection closed at the next.
    fn displace_one(&self, now: Instant) -> Room {
        let map = self.lock();
        let mut soonest: Option<Instant> = None;
        for heard in [false, true] {
            // Ids grow with accept order: the first found is the longest-open.
            let oldest = map.values().find(|c| {
                c.requests.load(Ordering::Relaxed) == 0
                    && c.busy.load(Ordering::Relaxed) == 0
                    && !c.displaced.load(Ordering::Relaxed)
                    && c.heard.load(Ordering::Relaxed) == heard
            });
            let Some(c) = oldest else { continue };
            let of_age = c.accepted + CONNECT_GRACE;
            if of_age <= now {
                c.displaced.store(true, Ordering::Relaxed);
                c.close.notify_one();
                return Room::Asked;
            }
            soonest = Some(soonest.map_or(of_age, |s| s.min(of_age)));
        }
        soonest.map_or(Room::Full, Room::NotBefore)
    }

    /// Makes room for a newcomer and waits for it, which leaves further newcomers in the
    /// kernel's accept queue meanwhile; `None` when no slot frees within [`DISPLACE_WAIT`].
    async fn make_room(&self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let deadline = Instant::now() + DISPLACE_WAIT;
        loop {
            let retry = match self.displace_one(Instant::now()) {
                Room::NotBefore(t) => t.min(deadline),
                // A connection closing of its own accord (a scrape with `Connection: close`)
                // frees a slot too.
                Room::Asked | Room::Full => deadline,
            };
            if let Ok(Ok(p)) = tokio::time::timeout_at(retry, permits.clone().acquire_owned()).await
            {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
}

/// Binds `addr`; the server then runs until the returned future is dropped.
pub async fn bind(addr: SocketAddr, web: &WebConfig) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics scrapes on {addr}"))?;
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.users.is_some() {
        " (basic auth)"
    } else {
        ""
    };
    log::info!("metrics on {scheme}://{addr}/metrics, health on /healthz and /readyz{auth}");
    if web.users.is_some() && web.tls.is_none() {
        log::warn!("basic auth without TLS: passwords cross the network in the clear");
    }
    Ok(listener)
}

/// Serves requests on `listener` until dropped; returns only if accepting fails for good.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    counters: Counters,
    health: Arc<Health>,
    web: WebConfig,
) -> anyhow::Result<()> {
    let state = State {
        health,
        metrics: metrics.clone(),
        renderer: start_renderer(metrics, counters)?,
        auth: web
            .users
            .map(|u| (Arc::new(u), Arc::new(Semaphore::new(AUTH_THREADS)))),
    };
    let tls = web.tls.map(TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let conns = Arc::new(Conns::default());
    let mut next_id = 0u64;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            // Out of fds, a connection reset before accept: the listener itself is fine.
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match conns.make_room(&permits).await {
                Some(p) => p,
                None => {
                    log::debug!(
                        "metrics: {peer} refused: all {MAX_CONNECTIONS} connections have sent \
                         a request or are closing"
                    );
                    state.metrics.on_http_refused();
                    refuse(sock, tls.is_none());
                    continue;
                }
            },
        };
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn::new(Instant::now()));
        conns.lock().insert(id, conn.clone());
        let conns = conns.clone();
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let sock = Heard {
                io: sock,
                conn: conn.clone(),
            };
            match tls {
                None => serve_connection(sock, conn, state).await,
                Some(tls) => {
                    if let Some(sock) = handshake(&tls, sock, &conn, &state, peer).await {
                        serve_connection(sock, conn, state).await;
                    }
                }
            }
            conns.lock().remove(&id);
            drop(permit);
        });
    }
}

/// The server side of a TLS handshake, bounded by [`HEADER_TIMEOUT`] and abandoned if the
/// connection is displaced meanwhile; `None` when it did not complete.
async fn handshake(
    tls: &TlsAcceptor,
    sock: Heard<TcpStream>,
    conn: &Conn,
    state: &State,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Heard<TcpStream>>> {
    tokio::select! {
        r = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(sock)) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                log::debug!("metrics: TLS handshake with {peer} failed: {e}");
                None
            }
            Err(_) => {
                log::debug!("metrics: TLS handshake with {peer} timed out");
                None
            }
        },
        _ = conn.close.notified() => {
            state.metrics.on_http_displaced();
            None
        }
    }
}

/// Refuses a newcomer: over plain HTTP with a 503 saying why (over TLS there is no
/// session to answer in, so it is just closed).
fn refuse(sock: TcpStream, plain: bool) {
    let Ok(mut sock) = sock.into_std() else {
        return;
    };
    if !plain {
        return;
    }
    // What it has sent already is read (the socket does not block), so closing ends with
    // a FIN after the answer, not a reset that could discard it.
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match sock.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let body =
        format!("too many connections: all {MAX_CONNECTIONS} have sent requests or are closing\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write(answer.as_bytes());
}

/// The socket as hyper or the TLS acceptor reads it: marks the connection heard at its
/// first byte, so one that has begun a request or handshake is displaced only after those
/// that sent nothing.
struct Heard<S> {
    io: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn serve_connection<S>(sock: S, conn: Arc<Conn>, state: State)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let last_active = Arc::new(Mutex::new(Instant::now()));
    let metrics = state.metrics.clone();
    let service = {
        let conn = conn.clone();
        let last_active = last_active.clone();
        service_fn(move |req: Request<Incoming>| {
            let conn = conn.clone();
            let last_active = last_active.clone();
            let state = state.clone();
            async move {
                conn.requests.fetch_add(1, Ordering::Relaxed);
                conn.busy.fetch_add(1, Ordering::Relaxed);
                let response = respond(&req, &state).await;
                *last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                conn.busy.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(sock), service);
    tokio::pin!(connection);
    // Set once the connection is asked to close: it may finish the request in progress.
    let mut closing: Option<Instant> = None;
    loop {
        let timeout = if conn.requests.load(Ordering::Relaxed) == 0 {
            HEADER_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        let idle_since = *last_active.lock().unwrap_or_else(|p| p.into_inner());
        // While a request is in progress its end resets the clock: look again later.
        let deadline = (idle_since + timeout).max(Instant::now() + Duration::from_millis(500));
        tokio::select! {
            // The connection first: a request that arrived with the request to close is
            // read, and keeps it open.
            biased;
            r = connection.as_mut() => {
                if let Err(e) = r {
                    log::debug!("metrics: connection ended: {e}");
                }
                return;
            }
            _ = conn.close.notified(), if closing.is_none() => {
                if never_asked(&conn) {
                    metrics.on_http_displaced();
                    return;
                }
                // It sent a request since it was chosen: it stays, and the newcomer waits
                // for another slot.
                conn.displaced.store(false, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_none() => {
                let idle_since = *last_active.lock().unwrap_or_else(|p| p.into_inner());
                if conn.busy.load(Ordering::Relaxed) == 0 && idle_since.elapsed() >= timeout {
                    if never_asked(&conn) {
                        return;
                    }
                    closing = Some(Instant::now() + CLOSE_GRACE);
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => {
                log::debug!("metrics: connection did not finish closing in {CLOSE_GRACE:?}: dropped");
                return;
            }
        }
    }
}

/// A connection that has not sent a whole request head: nothing is lost by dropping it at
/// once, and hyper's graceful shutdown would wait for a first request that may never come.
/// (After a request, graceful shutdown lets hyper finish writing the response.)
fn never_asked(conn: &Conn) -> bool {
    conn.requests.load(Ordering::Relaxed) == 0 && conn.busy.load(Ordering::Relaxed) == 0
}

async fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if let Some((users, permits)) = &state.auth {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let allowed = match header {
            // No credentials: nothing to verify.
            None => false,
            Some(header) => {
                let Ok(_permit) = permits.acquire().await else {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "auth unavailable\n");
                };
                let users = users.clone();
                tokio::task::spawn_blocking(move || users.check(Some(&header)))
                    .await
                    .unwrap_or(false)
            }
        };
        if !allowed {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic"),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" | "/" => {
            let gzip = accepts_gzip(req.headers().get_all(header::ACCEPT_ENCODING));
            let (reply, response) = oneshot::channel();
            let rendered = match state.renderer.try_send((gzip, reply)) {
                Ok(()) => response.await,
                Err(_) => {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "metrics busy\n");
                }
            };
            match rendered {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    log::warn!("metrics: {e:#}");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n"),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.health.not_ready() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &why),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

/// Reads the kernel counters and renders every metric (blocking: map syscalls, encoding).
fn scrape(
    metrics: &Metrics,
    counters: &Counters,
    gzip: bool,
) -> anyhow::Result<Response<Full<Bytes>>> {
    metrics.refresh_top(time::OffsetDateTime::now_utc());
    let values = counters.read()?;
    metrics.refresh_kernel(&values);
    let body = metrics.render()?;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, TEXT_FORMAT)
        .header(header::VARY, "Accept-Encoding");
    let body = if gzip {
        response = response.header(header::CONTENT_ENCODING, "gzip");
        let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        enc.write_all(body.as_bytes())
            .and_then(|()| enc.finish())
            .context("compressing metrics")?
    } else {
        body.into_bytes()
    };
    response
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| anyhow!("building the metrics response: {e}"))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether `Accept-Encoding` admits gzip: a `gzip` (or `x-gzip`) coding whose quality is
/// not zero, or `*` with a non-zero quality when gzip is not named.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a header::HeaderValue>) -> bool {
    let mut star = false;
    for v in values {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return !q_zero;
            }
            if coding == "*" {
                star = !q_zero;
            }
        }
    }
    star
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(v: &str) -> bool {
        accepts_gzip([&header::HeaderValue::from_str(v).unwrap()])
    }

    /// Connections accepted these many milliseconds before `now`, in accept order.
    fn open(now: Instant, ages_ms: &[u64]) -> (Conns, Vec<Arc<Conn>>) {
        let conns = Conns::default();
        let v: Vec<Arc<Conn>> = ages_ms
            .iter()
            .map(|&ms| Arc::new(Conn::new(now - Duration::from_millis(ms))))
            .collect();
        for (id, c) in v.iter().enumerate() {
            conns.lock().insert(id as u64, c.clone());
        }
        (conns, v)
    }

    fn displaced(v: &[Arc<Conn>]) -> Vec<bool> {
        v.iter()
            .map(|c| c.displaced.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn answered_scrapers_are_not_displaced_while_others_close() {
        // Kept-alive scrapers between scrapes, and silent connections displaced already
        // and still closing: nothing may be asked to close.
        let now = Instant::now();
        let (conns, v) = open(now, &[9000, 8000, 7000, 6000]);
        for c in [&v[0], &v[2]] {
            c.requests.store(1, Ordering::Relaxed);
        }
        for c in [&v[1], &v[3]] {
            c.displaced.store(true, Ordering::Relaxed);
        }
        assert_eq!(conns.displace_one(now), Room::Full);
        assert_eq!(displaced(&v), [false, true, false, true]);
    }

    #[test]
    fn silent_before_heard_longest_open_first_after_the_grace() {
        let now = Instant::now();
        let g = CONNECT_GRACE.as_millis() as u64;
        let (conns, v) = open(now, &[4 * g, 3 * g, 2 * g, g, g / 2]);
        v[0].heard.store(true, Ordering::Relaxed);
        v[3].requests.store(1, Ordering::Relaxed);
        assert_eq!(conns.displace_one(now), Room::Asked);
        assert_eq!(displaced(&v), [false, true, false, false, false]);
        assert_eq!(conns.displace_one(now), Room::Asked);
        assert_eq!(displaced(&v), [false, true, true, false, false]);
        // The silent one left is in its grace: the one that began a request goes first.
        assert_eq!(conns.displace_one(now), Room::Asked);
        assert_eq!(displaced(&v), [true, true, true, false, false]);
        assert_eq!(
            conns.displace_one(now),
            Room::NotBefore(v[4].accepted + CONNECT_GRACE)
        );
        assert_eq!(displaced(&v), [true, true, true, false, false]);
        // A connection being answered is not displaced either.
        v[4].busy.store(1, Ordering::Relaxed);
        v[4].requests.store(1, Ordering::Relaxed);
        assert_eq!(conns.displace_one(now + CONNECT_GRACE), Room::Full);
    }

    #[test]
    fn gzip_only_when_asked_and_not_refused() {
        assert!(gz("gzip"));
        assert!(gz("gzip, deflate, br"));
        assert!(gz("deflate, GZIP;q=0.5"));
        assert!(gz("*"));
        assert!(!gz("identity"));
        assert!(!gz("gzip;q=0"));
        assert!(!gz("gzip; q=0.0, *"));
        assert!(!gz("br"));
        assert!(!accepts_gzip([]));
    }
}
