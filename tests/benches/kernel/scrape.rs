//! The cost of a `/metrics` scrape with a full flow table, before and after occupancy was
//! counted off the event loop.
//!
//! "Per-scrape walk" is the work every scrape used to do on the agent's only runtime
//! thread, the one that drains the ring buffer: count both flow tables entry by entry, read
//! the counters, render. "Endpoint" is a scrape of the real endpoint now (round trip over a
//! kept-alive loopback connection) while the occupancy thread walks the table beside it;
//! "loop stall" is how late a 1 ms timer on the endpoint's runtime fired during those
//! scrapes, i.e. how long event reading would have waited.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::HashMap;
use detector_common::{Counter, FlowKey, FlowState, names};
use detector_user::{
    kernel::{Kernel, Options, event::flow_key},
    output::{health::Health, http, metrics::Metrics, occupancy},
};

/// Flow-table sizes measured: the default and the largest a deployment is likely to set.
const SIZES: [u32; 2] = [65_536, 1_048_576];
/// Scrapes timed per size.
const SCRAPES: usize = 20;

pub fn run() -> Result<()> {
    println!();
    println!("/metrics scrape with a full flow table ({SCRAPES} scrapes; ms: median / max)");
    println!(
        "{:>10} {:>10} {:>22} {:>22} {:>16} {:>14}",
        "table size",
        "present",
        "per-scrape walk (old)",
        "endpoint (now)",
        "loop stall (now)",
        "occupancy walk"
    );
    for size in SIZES {
        measure(size)?;
    }
    Ok(())
}

fn measure(size: u32) -> Result<()> {
    let kernel = Kernel::load(&Options {
        flow_table_size: size,
        ..Options::default()
    })
    .with_context(|| format!("loading the program with a {size}-entry flow table"))?;
    let mut kernel = kernel;
    fill(&mut kernel, size)?;
    let (flows, unconfirmed, counters) = (
        kernel.flow_table()?,
        kernel.unconfirmed_table()?,
        kernel.counters(),
    );
    // An LRU map may start evicting a little before max_entries (its free list is split
    // between CPUs): "full" is as full as inserting `size` flows makes it.
    let present = flows.count()?;
    ensure!(
        present >= u64::from(size) * 9 / 10,
        "only {present} of {size} flows present after filling"
    );

    // Before: the walk inside every scrape.
    let metrics = Arc::new(Metrics::new()?);
    let mut old = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let values = counters.read()?;
        metrics.refresh_kernel(&values);
        let present = flows.count()?;
        metrics.refresh_evictions(values[Counter::FlowsCreated as usize], present);
        let present = unconfirmed.count()?;
        metrics.refresh_unconfirmed_evictions(&values, present);
        metrics.render()?;
        old.push(t.elapsed());
    }

    // Now: the endpoint, with the occupancy thread walking beside it.
    let walk = {
        let t = Instant::now();
        flows.count()?;
        t.elapsed()
    };
    let _sampler = occupancy::Sampler::start(
        metrics.clone(),
        counters.clone(),
        flows.clone(),
        unconfirmed.clone(),
    )?;
    let stall_ns = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = {
        let (metrics, counters, stall_ns, done) = (
            metrics.clone(),
            counters.clone(),
            stall_ns.clone(),
            done.clone(),
        );
        thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener =
                    http::bind((Ipv4Addr::LOCALHOST, 0).into(), &Default::default()).await?;
                addr_tx.send(listener.local_addr()?)?;
                let health = Arc::new(Health::new(&[]));
                let server = tokio::spawn(http::serve(
                    listener,
                    metrics,
                    counters,
                    health,
                    Default::default(),
                ));
                // The event loop's stand-in: a 1 ms timer, and how late it fires.
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let late = last.elapsed().saturating_sub(Duration::from_millis(1));
                    stall_ns.fetch_max(late.as_nanos() as u64, Ordering::Relaxed);
                    last = Instant::now();
                }
                server.abort();
                Ok(())
            })
        })
    };
    let addr: SocketAddr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut now = Vec::new();
    stall_ns.store(0, Ordering::Relaxed);
    for _ in 0..SCRAPES {
        let t = Instant::now();
        scrape(&mut conn)?;
        now.push(t.elapsed());
    }
    let stall = Duration::from_nanos(stall_ns.load(Ordering::Relaxed));
    done.store(true, Ordering::Relaxed);
    server.join().expect("server thread panicked")?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        format!("{:.2} / {:.2}", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
    };
    println!(
        "{:>10} {:>10} {:>22} {:>22} {:>16.2} {:>14.1}",
        size,
        present,
        stats(&mut old),
        stats(&mut now),
        ms(stall),
        ms(walk)
    );
    Ok(())
}

/// Fills the confirmed flow table with `size` distinct flows from userspace.
fn fill(kernel: &mut Kernel, size: u32) -> Result<()> {
    let mut map: HashMap<_, FlowKey, FlowState> =
        HashMap::try_from(kernel.ebpf.map_mut(names::FLOWS).context("FLOWS")?)?;
    let state = FlowState::default();
    for i in 0..size {
        let client = Ipv4Addr::from(0x0a00_0000 | (i >> 8));
        let port = 1024 + (i & 0xff) as u16;
        let key = flow_key(
            SocketAddr::new(client.into(), port),
            SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), 443),
        );
        map.insert(key, state, 0)
            .with_context(|| format!("inserting flow {i} of {size}"))?;
    }
    Ok(())
}

/// One GET /metrics over a kept-alive connection; the whole body read.
fn scrape(conn: &mut TcpStream) -> Result<()> {
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut chunk)?;
        ensure!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head_text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        ensure!(head_text.starts_with("http/1.1 200"), "{head_text}");
        let len: usize = head_text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("content-length")?;
        if buf.len() >= head + 4 + len {
            return Ok(());
        }
    }
}
