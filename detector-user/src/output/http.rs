//! The HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for supervisors,
//! on hyper's HTTP/1.1 server in the agent's own runtime.
//!
//! Bounded in every resource: at most [`MAX_CONNECTIONS`] connections (when full, a new one
//! displaces an idle one, first those that never sent a request, so idle or slow sockets
//! cannot lock scrapers out); a connection must send a request within [`HEADER_TIMEOUT`]
//! of connecting, and one kept alive is closed after [`IDLE_TIMEOUT`] without a request. A
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
    io::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
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
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, oneshot},
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
/// How long a new connection waits for a displaced one to close before it is refused.
const DISPLACE_WAIT: Duration = Duration::from_secs(1);
/// bcrypt verifications at once: each takes a core for tens of milliseconds, and the agent
/// must not starve its event loop's core (or exceed its task limit) when many scrapers, or
/// someone guessing passwords, connect at once.
pub const AUTH_THREADS: usize = 2;

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request may reach.
#[derive(Clone)]
struct State {
    health: Arc<Health>,
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
    /// Requests being served.
    busy: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Asked to close already (so not chosen twice).
    displaced: AtomicBool,
    close: Notify,
}

/// The open connections, oldest first (ids grow with accept order).
#[derive(Default)]
struct Conns(Mutex<BTreeMap<u64, Arc<Conn>>>);

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks a connection with no request in progress to close: the longest-open one that
    /// never sent a request, else the longest-open one; false when every connection is
    /// busy. A kept-alive scraper thus outlives sockets that only hold a slot.
    fn displace_one(&self) -> bool {
        let map = self.lock();
        let idle = |c: &&Arc<Conn>| {
            c.busy.load(Ordering::Relaxed) == 0 && !c.displaced.load(Ordering::Relaxed)
        };
        let victim = map
            .values()
            .filter(idle)
            .find(|c| c.requests.load(Ordering::Relaxed) == 0)
            .or_else(|| map.values().find(idle));
        match victim {
            Some(c) => {
                c.displaced.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
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
            // Full: make room and wait for it here, which leaves further newcomers in the
            // kernel's accept queue meanwhile instead of refusing them.
            Err(_) => {
                let displaced = conns.displace_one();
                match tokio::time::timeout(DISPLACE_WAIT, permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        log::debug!(
                            "metrics: {peer} refused: {MAX_CONNECTIONS} connections busy \
                             (one displaced: {displaced})"
                        );
                        drop(sock);
                        continue;
                    }
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            displaced: AtomicBool::new(false),
            close: Notify::new(),
        });
        conns.lock().insert(id, conn.clone());
        let conns = conns.clone();
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            match tls {
                None => serve_connection(sock, conn, state).await,
                Some(tls) => {
                    if let Some(sock) = handshake(&tls, sock, &conn, peer).await {
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
    sock: TcpStream,
    conn: &Conn,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
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
        _ = conn.close.notified() => None,
    }
}

async fn serve_connection<S>(sock: S, conn: Arc<Conn>, state: State)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let last_active = Arc::new(Mutex::new(Instant::now()));
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
            r = connection.as_mut() => {
                if let Err(e) = r {
                    log::debug!("metrics: connection ended: {e}");
                }
                return;
            }
            _ = conn.close.notified(), if closing.is_none() => {
                if never_asked(&conn) {
                    return;
                }
                closing = Some(Instant::now() + CLOSE_GRACE);
                connection.as_mut().graceful_shutdown();
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
