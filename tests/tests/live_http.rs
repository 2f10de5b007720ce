//! The agent's HTTP endpoint under load and its attachments under faults, live in lab
//! namespaces: scrapers and idle connections while events flow, the connection limit
//! reached (answered scrapers kept, a request sent a moment after connecting answered), a
//! request split across segments, health and readiness, an interface deleted and
//! re-created, a second agent on the same interface, SIGKILL.
//!
//! (Over 600 lines: one test binary, whose tests share the lab with a TLS server, the
//! scrapers and the readiness polling.)

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{SchedClassifier, TcAttachType};
use detector_common::names;
use detector_lab::{
    Lab, Nginx, NginxSite,
    agent::{LiveAgent, detector_bin, metric},
    fixture::{root, serial},
    in_netns, url,
};

const LISTEN: &str = "127.0.0.1:9863";
const T: Duration = Duration::from_secs(15);

/// A direct lab with nginx serving TLS on 443 in the server namespace.
fn lab_with_tls_server() -> Result<(Lab, Nginx)> {
    let lab = Lab::direct()?;
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            port: 443,
            ..Default::default()
        },
    )?;
    Ok((lab, nginx))
}

/// `n` plaintext HTTP requests to the TLS port, one session each: `n` `http_to_tls_port`
/// diagnoses.
fn http_to_tls_port(lab: &Lab, n: usize) -> Result<()> {
    let target = url("http", lab.server_v4().into(), 443, "/");
    for _ in 0..n {
        // nginx answers 400; curl's exit status says nothing we need.
        lab.run(
            lab.client_ns(),
            &["curl", "-sS", "--max-time", "5", &target],
            T,
        )?;
    }
    Ok(())
}

/// A response: status, headers (lower-cased names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
fn read_response(s: &mut TcpStream) -> Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        ensure!(buf.len() < 64 * 1024, "response head too long");
        let n = s.read(&mut chunk).context("reading a response")?;
        ensure!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("status line of {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("content-length in {head:?}"))?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).context("reading a response body")?;
        ensure!(n > 0, "connection closed inside a response body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn connect(ns: &str) -> Result<TcpStream> {
    let addr: SocketAddr = LISTEN.parse()?;
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?
    .context("connecting to the agent's endpoint")
}

/// One GET on a fresh connection.
fn get(ns: &str, path: &str) -> Result<Response> {
    let mut s = connect(ns)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut s)
}

fn scrape(ns: &str) -> Result<String> {
    let r = get(ns, "/metrics")?;
    ensure!(r.status == 200, "/metrics answered {}", r.status);
    Ok(String::from_utf8(r.body)?)
}

/// Kernel events emitted and dropped, and diagnoses so far.
fn events(ns: &str, agent: &LiveAgent) -> Result<(f64, f64, usize)> {
    let m = scrape(ns)?;
    let emitted = metric(&m, "detector_kernel_events_emitted_total").context("emitted")?;
    let dropped = metric(&m, "detector_kernel_events_dropped_total").context("dropped")?;
    Ok((emitted, dropped, agent.diagnoses()?.len()))
}

/// Sessions played in each phase.
const SESSIONS: usize = 60;
const SCRAPERS: usize = 64;
const IDLE: usize = 2000;
/// The agent's connection limit and header timeout (detector_user::output::http).
const MAX_CONNECTIONS: usize = detector_user::output::http::MAX_CONNECTIONS;
const HTTP_HEADER_TIMEOUT: Duration = detector_user::output::http::HEADER_TIMEOUT;
const CONNECT_GRACE: Duration = detector_user::output::http::CONNECT_GRACE;
const DISPLACE_WAIT: Duration = detector_user::output::http::DISPLACE_WAIT;

#[test]
fn scrapers_and_idle_connections_cost_no_events() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let (lab, _nginx) = lab_with_tls_server()?;
    let ns = lab.server_ns().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[lab.server_if()], &[])?;

    // Without load: what the traffic gives.
    let before = events(&ns, &agent)?;
    http_to_tls_port(&lab, SESSIONS)?;
    agent.wait_for(SESSIONS, T)?;
    let quiet = events(&ns, &agent)?;

    // The same traffic with scrapers and idle connections.
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let idle_opened = Arc::new(AtomicU64::new(0));
    let idle_closed_by_agent = Arc::new(AtomicU64::new(0));
    let idle = {
        let (ns, stop, opened, closed) = (
            ns.clone(),
            stop.clone(),
            idle_opened.clone(),
            idle_closed_by_agent.clone(),
        );
        thread::spawn(move || hold_idle(&ns, &stop, &opened, &closed))
    };
    let scrapers: Vec<_> = (0..SCRAPERS)
        .map(|_| {
            let (ns, stop, scrapes) = (ns.clone(), stop.clone(), scrapes.clone());
            thread::spawn(move || scrape_until(&ns, &stop, &scrapes))
        })
        .collect();
    let started = Instant::now();
    // All idle connections open before traffic starts; they are reopened as the agent
    // closes them while it flows.
    while idle_opened.load(Ordering::Relaxed) < IDLE as u64 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{} idle connections opened in 30 s",
            idle_opened.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let played = http_to_tls_port(&lab, SESSIONS);
    let diagnosed = agent.collect(2 * SESSIONS, T);
    // Idle blocking threads linger for seconds, so this sees what the scrapes needed.
    let threads = threads_of(agent.process.pid());
    stop.store(true, Ordering::Relaxed);
    let load_took = started.elapsed();
    let idle = idle.join().expect("idle holder panicked");
    let scraper_results: Vec<Result<()>> = scrapers
        .into_iter()
        .map(|t| t.join().expect("scraper panicked"))
        .collect();
    played?;
    ensure!(
        diagnosed?.len() == 2 * SESSIONS,
        "{} sessions under load were not all diagnosed; agent output:\n{}",
        SESSIONS,
        agent.process.output()
    );
    let loaded = events(&ns, &agent)?;
    let idle_left = idle?;
    for r in scraper_results {
        r?;
    }
    let threads = threads?;
    // The event loop, the occupancy counter and the renderer: not one per scraper (the
    // systemd unit allows 64 tasks).
    assert!(
        threads.len() <= 3,
        "{} threads under {SCRAPERS} scrapers: {threads:?}",
        threads.len()
    );
    let scrapes = scrapes.load(Ordering::Relaxed);
    eprintln!(
        "under load for {load_took:?}: {scrapes} scrapes answered by {SCRAPERS} scrapers \
         ({} agent threads), {} idle connections opened, {} of them closed by the agent",
        threads.len(),
        idle_opened.load(Ordering::Relaxed),
        idle_closed_by_agent.load(Ordering::Relaxed)
    );
    let (quiet_emitted, quiet_dropped) = (quiet.0 - before.0, quiet.1 - before.1);
    let (load_emitted, load_dropped) = (loaded.0 - quiet.0, loaded.1 - quiet.1);
    eprintln!(
        "events: quiet {quiet_emitted} emitted, {quiet_dropped} dropped; under load \
         {load_emitted} emitted, {load_dropped} dropped"
    );
    assert_eq!(quiet.2 - before.2, SESSIONS, "diagnoses without load");
    assert_eq!(loaded.2 - quiet.2, SESSIONS, "diagnoses under load");
    assert!(
        load_dropped <= quiet_dropped,
        "the load cost events: {load_dropped} dropped under load, {quiet_dropped} without"
    );
    assert!(load_emitted > 0.0, "no events under load");
    assert!(
        scrapes >= SCRAPERS as u64,
        "only {scrapes} scrapes answered"
    );
    assert!(
        idle_opened.load(Ordering::Relaxed) >= IDLE as u64,
        "the idle connections were not all opened"
    );
    // The agent held at most its connection limit: it closed the rest.
    assert!(
        idle_left <= MAX_CONNECTIONS,
        "{idle_left} idle connections still open, over the limit of {MAX_CONNECTIONS}"
    );
    assert!(
        idle_closed_by_agent.load(Ordering::Relaxed)
            >= idle_opened.load(Ordering::Relaxed) - MAX_CONNECTIONS as u64,
        "the agent closed too few idle connections"
    );
    agent.stop()?;
    Ok(())
}

/// Names of the threads of process `pid`, from /proc.
fn threads_of(pid: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(t?.path().join("comm")).unwrap_or_default();
        names.push(comm.trim().to_owned());
    }
    names.sort();
    Ok(names)
}

/// Keeps [`IDLE`] connections open that never send a request, reopening those the agent
/// closes, until `stop`; counts both. Then waits (bounded) for the agent to bring them
/// within its limit, and returns how many are still open.
fn hold_idle(ns: &str, stop: &AtomicBool, opened: &AtomicU64, closed: &AtomicU64) -> Result<usize> {
    let mut socks: Vec<TcpStream> = Vec::with_capacity(IDLE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        ensure!(Instant::now() < deadline, "idle holder ran past its bound");
        socks = still_open(socks, closed)?;
        let missing = IDLE - socks.len();
        let fresh = in_netns(ns, move || -> Result<Vec<TcpStream>> {
            let addr: SocketAddr = LISTEN.parse()?;
            let mut v = Vec::with_capacity(missing);
            for _ in 0..missing {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => v.push(s),
                    // A full accept queue: try again next round.
                    Err(_) => break,
                }
            }
            Ok(v)
        })??;
        for s in fresh {
            s.set_nonblocking(true)?;
            opened.fetch_add(1, Ordering::Relaxed);
            socks.push(s);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let settle = Instant::now() + HTTP_HEADER_TIMEOUT;
    while socks.len() > MAX_CONNECTIONS && Instant::now() < settle {
        thread::sleep(Duration::from_millis(100));
        socks = still_open(socks, closed)?;
    }
    Ok(socks.len())
}

/// The sockets the agent has not closed (a non-blocking peek would block); counts the rest.
fn still_open(socks: Vec<TcpStream>, closed: &AtomicU64) -> Result<Vec<TcpStream>> {
    let mut kept = Vec::with_capacity(socks.len());
    for s in socks {
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => kept.push(s),
            Ok(n) if n > 0 => bail!("the agent sent something on a connection that asked nothing"),
            // EOF or a reset: closed by the agent.
            _ => {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(kept)
}

/// Scrapes over one kept-alive connection, as Prometheus does, until `stop`; every request
/// must be answered in full.
fn scrape_until(ns: &str, stop: &AtomicBool, count: &AtomicU64) -> Result<()> {
    let mut s = connect(ns)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        ensure!(Instant::now() < deadline, "scraper ran past its bound");
        let asked = Instant::now();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")?;
        let r = read_response(&mut s).context("a scrape over a kept-alive connection")?;
        ensure!(r.status == 200, "scrape answered {}", r.status);
        ensure!(
            String::from_utf8_lossy(&r.body).contains("detector_kernel_events_emitted_total"),
            "scrape without the kernel's counters"
        );
        ensure!(
            asked.elapsed() < Duration::from_secs(5),
            "a scrape took {:?}",
            asked.elapsed()
        );
        count.fetch_add(1, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One scrape over the kept-alive connection `s`.
fn scrape_on(s: &mut TcpStream) -> Result<Response> {
    write!(s, "GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")?;
    read_response(s)
}

/// `n` kept-alive connections, each answered one scrape.
fn answered_scrapers(ns: &str, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|i| {
            let mut s = connect(ns)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let r = scrape_on(&mut s).with_context(|| format!("scraper {i}'s first scrape"))?;
            ensure!(
                r.status == 200,
                "scraper {i}'s first scrape answered {}",
                r.status
            );
            Ok(s)
        })
        .collect()
}

/// Each scraper scrapes again over its kept-alive connection and must be answered; the
/// last one's metrics text.
fn scrape_again(scrapers: &mut [TcpStream]) -> Result<String> {
    let mut last = String::new();
    for (i, s) in scrapers.iter_mut().enumerate() {
        let r = scrape_on(s).with_context(|| {
            format!("scraper {i}'s second scrape over its kept-alive connection")
        })?;
        ensure!(
            r.status == 200,
            "scraper {i}'s second scrape answered {}",
            r.status
        );
        last = String::from_utf8(r.body)?;
    }
    Ok(last)
}

/// The endpoint's own counters in a metrics text: connections displaced, and refused.
fn connection_counters(text: &str) -> (Option<f64>, Option<f64>) {
    (
        metric(text, "detector_http_connections_displaced_total"),
        metric(text, "detector_http_connections_refused_total"),
    )
}

/// Every slot held by a scraper that has been answered and keeps its connection: a
/// newcomer is refused (503) rather than one of them displaced, and all are answered again.
#[test]
fn answered_scrapers_keep_their_connections_when_the_slots_are_full() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let lab = Lab::direct()?;
    let ns = lab.server_ns().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[lab.server_if()], &[])?;

    let mut scrapers = answered_scrapers(&ns, MAX_CONNECTIONS)?;
    let mut late = connect(&ns)?;
    late.set_read_timeout(Some(Duration::from_secs(10)))?;
    let asked = Instant::now();
    let refused = scrape_on(&mut late).context("the newcomer's request")?;
    let refused_after = asked.elapsed();
    let last = scrape_again(&mut scrapers)?;
    eprintln!(
        "newcomer answered {} after {refused_after:?}",
        refused.status
    );
    assert_eq!(
        refused.status, 503,
        "the newcomer over a full house of scrapers"
    );
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(
        String::from_utf8_lossy(&refused.body).contains("too many connections"),
        "refusal body {:?}",
        String::from_utf8_lossy(&refused.body)
    );
    // It waited for a slot to free before giving up.
    assert!(
        refused_after >= DISPLACE_WAIT,
        "refused after {refused_after:?}, before waiting {DISPLACE_WAIT:?} for a slot"
    );
    assert_eq!(connection_counters(&last), (Some(0.0), Some(1.0)));
    agent.stop()?;
    Ok(())
}

/// A client that connects and sends its request a moment later (as a scraper thread the
/// scheduler delays between connect and write does) is not displaced as a socket that
/// only holds a slot; one that stays silent past the grace is.
#[test]
fn a_request_sent_a_moment_after_connecting_is_answered_when_full() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let lab = Lab::direct()?;
    let ns = lab.server_ns().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[lab.server_if()], &[])?;

    // The slots, full: scrapers, then a client that has not written yet, then one that
    // never will.
    let mut scrapers = answered_scrapers(&ns, MAX_CONNECTIONS - 2)?;
    let before = Instant::now();
    let mut slow = connect(&ns)?;
    slow.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut silent = connect(&ns)?;
    silent.set_read_timeout(Some(Duration::from_secs(10)))?;
    // A newcomer overflows them at once.
    let mut newcomer = connect(&ns)?;
    newcomer.set_read_timeout(Some(Duration::from_secs(10)))?;
    let overflowed = before.elapsed();
    ensure!(
        overflowed < CONNECT_GRACE / 2,
        "connecting took {overflowed:?}: too slow to write within the grace"
    );
    // Accepted after `before`: this is within its grace.
    thread::sleep((before + CONNECT_GRACE / 2).saturating_duration_since(Instant::now()));
    let r = scrape_on(&mut slow).context("a request sent a moment after connecting")?;
    assert_eq!(r.status, 200, "the slow client's request");

    // The silent one makes room for the newcomer once past its grace.
    let mut b = [0u8; 1];
    let n = silent.read(&mut b).context("the silent connection")?;
    let closed_after = before.elapsed();
    assert_eq!(n, 0, "the agent sent bytes unasked");
    assert!(
        closed_after >= CONNECT_GRACE && closed_after < DISPLACE_WAIT,
        "the silent connection was closed after {closed_after:?}: not once past its grace"
    );
    let r = scrape_on(&mut newcomer).context("the newcomer's request")?;
    assert_eq!(r.status, 200, "the newcomer's request");
    scrape_again(&mut scrapers)?;
    let text = String::from_utf8(scrape_on(&mut slow)?.body)?;
    eprintln!(
        "overflowed {overflowed:?} after the slow client connected; silent one closed after {closed_after:?}"
    );
    assert_eq!(connection_counters(&text), (Some(1.0), Some(0.0)));
    agent.stop()?;
    Ok(())
}

#[test]
fn split_requests_health_readiness_and_gzip() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let (lab, _nginx) = lab_with_tls_server()?;
    let ns = lab.server_ns().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[lab.server_if()], &[])?;

    // A request in two segments, 200 ms apart.
    let mut s = connect(&ns)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GE")?;
    thread::sleep(Duration::from_millis(200));
    s.write_all(b"T /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")?;
    let r = read_response(&mut s)?;
    assert_eq!(r.status, 200, "split request");
    assert!(String::from_utf8_lossy(&r.body).contains("detector_build_info"));
    // Kept alive: a second request on the same connection, gzip asked for.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nAccept-Encoding: gzip\r\n\r\n")?;
    let r = read_response(&mut s)?;
    assert_eq!(r.status, 200, "second request on a kept-alive connection");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..]).read_to_string(&mut text)?;
    assert!(
        text.contains("detector_build_info"),
        "gzip body: {text:.200}"
    );

    let r = get(&ns, "/healthz")?;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok\n"[..]));
    let r = get(&ns, "/readyz")?;
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (200, "ready\n")
    );
    assert_eq!(get(&ns, "/nowhere")?.status, 404);

    // A connection that never sends a request is closed after the header timeout.
    let mut idle = connect(&ns)?;
    idle.set_read_timeout(Some(Duration::from_secs(15)))?;
    let opened = Instant::now();
    let mut b = [0u8; 1];
    let n = idle.read(&mut b).unwrap_or(0);
    let waited = opened.elapsed();
    assert_eq!(n, 0, "the agent sent bytes unasked");
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&waited),
        "an idle connection was closed after {waited:?}, not the 5 s header timeout"
    );
    agent.stop()?;
    Ok(())
}

/// The veth pair of a direct lab, deleted and created again with the same names and
/// addresses.
fn recreate_link(lab: &Lab) -> Result<()> {
    let (c, s) = (lab.client_if().to_owned(), lab.server_if().to_owned());
    let (cns, sns) = (lab.client_ns().to_owned(), lab.server_ns().to_owned());
    lab.run_ok(
        &cns,
        &[
            "ip", "link", "add", &c, "type", "veth", "peer", "name", &s, "netns", &sns,
        ],
        T,
    )?;
    for (ns, i) in [(&cns, &c), (&sns, &s)] {
        lab.run_ok(ns, &["ip", "link", "set", i, "up"], T)?;
    }
    for (ns, i, v4, v6) in [
        (&cns, &c, lab.client_v4(), lab.client_v6()),
        (&sns, &s, lab.server_v4(), lab.server_v6()),
    ] {
        lab.run_ok(ns, &["ip", "addr", "add", &format!("{v4}/24"), "dev", i], T)?;
        lab.run_ok(
            ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                i,
                "nodad",
            ],
            T,
        )?;
    }
    Ok(())
}

/// Polls /readyz until its status is `want` (bounded); returns the body and the wait.
fn readyz_until(ns: &str, want: u16, within: Duration) -> Result<(String, Duration)> {
    let started = Instant::now();
    loop {
        let r = get(ns, "/readyz")?;
        if r.status == want {
            return Ok((
                String::from_utf8_lossy(&r.body).into_owned(),
                started.elapsed(),
            ));
        }
        ensure!(
            started.elapsed() < within,
            "/readyz still {} after {within:?}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interface_deleted_and_recreated_is_reattached() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let (lab, _nginx) = lab_with_tls_server()?;
    let ns = lab.server_ns().to_owned();
    let iface = lab.server_if().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[&iface], &[])?;
    http_to_tls_port(&lab, 1)?;
    agent.wait_for(1, T)?;
    readyz_until(&ns, 200, T)?;

    lab.run_ok(&ns, &["ip", "link", "del", &iface], T)?;
    let (why, _) = readyz_until(&ns, 503, Duration::from_secs(5))?;
    assert_eq!(why, format!("{iface}: not attached\n"));
    // Still not ready a while later: nothing to attach to.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        get(&ns, "/readyz")?.status,
        503,
        "ready without its interface"
    );

    recreate_link(&lab)?;
    let (_, took) = readyz_until(&ns, 200, Duration::from_secs(5))?;
    eprintln!("re-attached {took:?} after the interface came back");
    let out = lab.run_ok(&ns, &["ip", "-d", "link", "show", "dev", &iface], T)?;
    assert!(out.contains("xdp"), "no XDP on the new interface:\n{out}");
    // nginx's listener survives its address going and coming back.
    lab.wait_tcp(&ns, lab.server_v4().into(), 443, T)?;
    http_to_tls_port(&lab, 1)?;
    let d = agent.wait_for(2, T)?;
    assert_eq!(d[1]["kind"], "http_to_tls_port", "{d:?}");
    agent.stop()?;
    Ok(())
}

/// What of ours is attached to `iface` in `ns`: (XDP per `ip -d link`, tc filters on egress
/// per `tc filter show`, TCX egress programs named like ours).
fn attached(lab: &Lab, ns: &str, iface: &str) -> Result<(bool, String, usize)> {
    let link = lab.run_ok(ns, &["ip", "-d", "link", "show", "dev", iface], T)?;
    let xdp = link.contains("prog/xdp") || link.lines().any(|l| l.trim_start().starts_with("xdp"));
    let filters = lab.run_ok(ns, &["tc", "filter", "show", "dev", iface, "egress"], T)?;
    let name = iface.to_owned();
    let tcx = in_netns(ns, move || {
        SchedClassifier::query_tcx(&name, TcAttachType::Egress)
    })?
    .context("querying TCX egress programs")?
    .1
    .iter()
    .filter(|p| {
        p.name_as_str()
            .is_some_and(|n| names::TC_PROGRAM.starts_with(n) && !n.is_empty())
    })
    .count();
    Ok((xdp, filters.trim().to_owned(), tcx))
}

#[test]
fn sigkill_leaves_nothing_attached() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let lab = Lab::direct()?;
    let ns = lab.server_ns().to_owned();
    let iface = lab.server_if().to_owned();
    let agent = LiveAgent::start(&lab, &ns, &[&iface], &[])?;
    let (xdp, _, tcx) = attached(&lab, &ns, &iface)?;
    assert!(xdp && tcx == 1, "attached: xdp {xdp}, tcx {tcx}");
    agent.process.signal(libc::SIGKILL)?;
    agent.process.wait_timeout(T)?;
    // The kernel releases links when their last fd closes, with the process.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = attached(&lab, &ns, &iface)?;
        if now == (false, String::new(), 0) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still attached 5 s after SIGKILL: {now:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn second_agent_on_the_same_interface_is_refused() -> Result<()> {
    if !root("live agents") {
        return Ok(());
    }
    let _turn = serial();
    let (lab, _nginx) = lab_with_tls_server()?;
    let ns = lab.server_ns().to_owned();
    let iface = lab.server_if().to_owned();
    let first = LiveAgent::start(&lab, &ns, &[&iface], &[])?;
    let bin = detector_bin()?.display().to_string();
    let second = lab.spawn(
        &ns,
        "detector-2",
        &[&bin, "run", "--iface", &iface, "--listen", "127.0.0.1:9864"],
    )?;
    let status = second.wait_timeout(Duration::from_secs(30))?;
    let err = second.stderr();
    assert!(!status.success(), "the second agent ran: {err}");
    assert!(
        err.contains(&format!("{iface} already has an XDP program attached")),
        "unclear error from the second agent:\n{err}"
    );
    let (xdp, _, tcx) = attached(&lab, &ns, &iface)?;
    assert!(
        xdp && tcx == 1,
        "the first agent's attachments: xdp {xdp}, tcx {tcx}"
    );
    assert_eq!(get(&ns, "/readyz")?.status, 200);
    http_to_tls_port(&lab, 1)?;
    let d = first.wait_for(1, T)?;
    assert_eq!(d[0]["kind"], "http_to_tls_port", "{d:?}");
    first.stop()?;
    Ok(())
}
