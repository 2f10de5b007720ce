//! The `/metrics` endpoint: a minimal HTTP/1.1 responder, enough for Prometheus scrapes.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use detector_common::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::metrics::Metrics;
use crate::kernel::{Counters, FlowTable};

/// Default `--listen` address. 9464 would be OpenTelemetry's; 9863 is not in Prometheus'
/// list of registered exporter ports (as of this writing), and loopback keeps the endpoint
/// private unless the operator opens it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9863";

/// The endpoint's listening socket.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics scrapes on {addr}"))?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Kernel counters are read
/// at scrape time, so they are never staler than the scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    counters: Counters,
    flows: FlowTable,
    unconfirmed: FlowTable,
) -> anyhow::Result<()> {
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                continue;
            }
        };
        let metrics = metrics.clone();
        let counters = counters.clone();
        let flows = flows.clone();
        let unconfirmed = unconfirmed.clone();
        tokio::spawn(async move {
            // One small request per connection; a scrape never sends more than a few
            // hundred bytes of headers.
            let mut buf = vec![0u8; 4096];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
                metrics.refresh_top(time::OffsetDateTime::now_utc());
                if let Ok(values) = counters.read() {
                    metrics.refresh_kernel(&values);
                    match flows.count() {
                        Ok(present) => metrics
                            .refresh_evictions(values[Counter::FlowsCreated as usize], present),
                        Err(e) => log::warn!("metrics: {e:#}"),
                    }
                    match unconfirmed.count() {
                        Ok(present) => metrics.refresh_unconfirmed_evictions(&values, present),
                        Err(e) => log::warn!("metrics: {e:#}"),
                    }
                }
                match metrics.render() {
                    Ok(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Err(e) => {
                        log::warn!("metrics: {e:#}");
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                    }
                }
            } else {
                log::debug!("metrics: {peer} asked for {path:?}");
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
