//! `detector run`: attach to interfaces, read events as they come, serve metrics, detach
//! cleanly on SIGINT/SIGTERM.

use std::{
    io::Write,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    kernel::{
        Kernel, Options,
        attach::{Attachments, XdpModeArg},
        clock::{Clock, boottime_ns},
        link_events::LinkEvents,
    },
    output::{health::Health, http, metrics::Metrics, occupancy, web_config::WebConfig},
    pipeline::Pipeline,
    privilege,
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub xdp_mode: XdpModeArg,
    pub egress: bool,
    pub listen: SocketAddr,
    /// `--web.config.file`: TLS and basic auth for the endpoint.
    pub web_config: Option<PathBuf>,
    pub window: Duration,
    pub kernel: Options,
}

/// How often quiet sessions are judged.
const TICK: Duration = Duration::from_millis(250);

pub async fn run(opts: RunOptions, out: impl Write) -> anyhow::Result<()> {
    if opts.ifaces.is_empty() {
        bail!("no interface given: name one or more with --iface");
    }
    for name in &opts.ifaces {
        if !Path::new("/sys/class/net").join(name).exists() {
            bail!(
                "interface {name} does not exist here (see `ip link`; inside a network \
                 namespace, run the detector with `ip netns exec NS`)"
            );
        }
    }
    // Read while still root (key files usually are root's only), and before anything is
    // attached, so a bad file changes nothing.
    let web = match &opts.web_config {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::default(),
    };
    let mut kernel = Kernel::load(&opts.kernel)?;
    log::info!("{}", kernel.features.describe());
    // Bound before attaching (a taken port must not attach anything, even briefly) and
    // before privileges go (a port below 1024 still works for root).
    let listener = http::bind(opts.listen, &web).await?;
    // Subscribed before attaching, so an interface deleted meanwhile is noticed.
    let links = LinkEvents::open()?;
    let mut attachments =
        Attachments::attach_all(&mut kernel, &opts.ifaces, opts.xdp_mode, opts.egress)?;
    let health = Arc::new(Health::new(&opts.ifaces));
    publish(&health, &attachments);
    let kept = privilege::drop_unneeded().context("dropping privileges after attaching")?;
    log::info!(
        "attached; capabilities kept: {}",
        privilege::describe(&kept)
    );

    let metrics = Arc::new(Metrics::new()?);
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        kernel.counters(),
        health.clone(),
        web,
    ));
    let _occupancy = occupancy::Sampler::start(
        metrics.clone(),
        kernel.counters(),
        kernel.flow_table()?,
        kernel.unconfirmed_table()?,
    )?;
    let sni = kernel.take_sni();
    let mut pipeline = Pipeline::new(
        Clock::boot(),
        opts.window,
        opts.kernel.idle_threshold,
        metrics,
        sni,
        out,
    );

    let events = readable(kernel.events().as_raw_fd())
        .context("registering the event ring buffer with the reactor")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(TICK);
    let mut server = server;

    log::info!(
        "watching {} (egress {}); diagnoses go to stdout",
        opts.ifaces.join(", "),
        if opts.egress { "on" } else { "off" }
    );
    loop {
        health.loop_turned();
        tokio::select! {
            ready = events.readable() => {
                let mut guard = ready?;
                for record in kernel.drain_events() {
                    pipeline.on_record(&record)?;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => pipeline.tick(boottime_ns())?,
            deleted = links.next() => {
                if attachments.reconcile(&mut kernel, &deleted?) {
                    publish(&health, &attachments);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            // The metrics listener only ends on error (e.g. its port is taken).
            r = &mut server => {
                return match r {
                    Ok(Ok(())) => bail!("metrics server stopped"),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                };
            }
        }
    }
    log::info!("signal received: judging open sessions, then detaching");
    for record in kernel.drain_events() {
        pipeline.on_record(&record)?;
    }
    pipeline.finish()?;
    server.abort();
    // Returning drops the reactor registrations, then (declared earlier, dropped later)
    // the programs, which detaches them from every interface.
    Ok(())
}

/// Tells `/readyz` which interfaces are attached.
fn publish(health: &Health, attachments: &Attachments) {
    for (iface, attached) in attachments.state() {
        health.set_attached(iface, attached);
    }
}

/// A borrowed fd for the reactor: the ring buffer owns it.
struct RawFdHandle(RawFd);

/// Registers a borrowed fd for readiness. Callers declare the result after the fd's owner,
/// so it is dropped first.
fn readable(fd: RawFd) -> std::io::Result<AsyncFd<RawFdHandle>> {
    // SAFETY: `fd` belongs to the kernel program's ring buffer, which outlives the
    // registration (see above) and never changes its fd.
    unsafe { AsyncFd::register_with_interest(RawFdHandle(fd), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

impl AsRawFd for RawFdHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
