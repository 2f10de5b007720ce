//! `cargo xtask bench --live`: what the detector costs a real TLS download. nginx serves a
//! file over TLS to curl across the veth pair of a lab (two network namespaces, created and
//! removed here), once per mode and round, the modes interleaved round by round so that
//! the machine's drift hits them all alike:
//!
//! - no program;
//! - empty programs on the client: the bench object's empty XDP program on ingress and its
//!   empty TC program on egress, the hooks and XDP mode (generic on a veth) the agent uses;
//! - the detector on the client, where the download arrives through XDP ingress;
//! - the same empty programs on the server;
//! - the detector on the server, where the download leaves through TC egress.
//!
//! Prints each mode's median, minimum and maximum in Gb/s, the detector's ratio to the
//! empty programs on the same side and to no program, and the kernel counters the agent
//! exported after each detector run. `LIVE_MIB` (default 512) and `LIVE_ROUNDS` (default
//! 5) change the download size and the rounds.

use std::{env, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use detector_lab::{Lab, Nginx, NginxSite, agent::LiveAgent, in_netns, path_str};
use detector_user::kernel::BENCH_OBJECT;

/// The ratio to the empty programs on the same side the detector must reach.
const TARGET: f64 = 0.95;

/// How long one download may take before the run is abandoned.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Empty(Side),
    Detector(Side),
}

const MODES: [Mode; 5] = [
    Mode::None,
    Mode::Empty(Side::Client),
    Mode::Detector(Side::Client),
    Mode::Empty(Side::Server),
    Mode::Detector(Side::Server),
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "no program",
            Mode::Empty(Side::Client) => "empty, client",
            Mode::Detector(Side::Client) => "detector, client (XDP ingress)",
            Mode::Empty(Side::Server) => "empty, server",
            Mode::Detector(Side::Server) => "detector, server (TC egress)",
        }
    }
}

/// The kernel counters printed after each detector run (metric names without prefix).
const COUNTERS: [&str; 7] = [
    "kernel_packets",
    "kernel_tls_records",
    "kernel_tls_fast_path_packets",
    "kernel_slow_path_packets",
    "kernel_tls_sync_lost",
    "kernel_events_found",
    "kernel_events_dropped",
];

fn env_u32(name: &str, default: u32) -> Result<u32> {
    match env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// The bench object's empty programs, attached to one interface until [`detach`]ed.
///
/// [`detach`]: EmptyPrograms::detach
struct EmptyPrograms {
    xdp: XdpLinkId,
    tc: SchedClassifierLinkId,
}

impl EmptyPrograms {
    fn attach(bench: &mut Ebpf, ns: &str, iface: &str) -> Result<Self> {
        // ifindex and the attachments are per namespace: made from a thread inside it.
        in_netns(ns, || -> Result<_> {
            let p: &mut Xdp = bench
                .program_mut("bench_empty")
                .context("bench_empty")?
                .try_into()?;
            // Generic XDP: the mode the agent chooses on a virtual device.
            let xdp = p
                .attach(iface, XdpMode::Skb)
                .with_context(|| format!("attaching the empty XDP program to {iface}"))?;
            let p: &mut SchedClassifier = bench
                .program_mut("bench_empty_tc")
                .context("bench_empty_tc")?
                .try_into()?;
            let tc = p
                .attach(iface, TcAttachType::Egress)
                .with_context(|| format!("attaching the empty TC program to {iface}"))?;
            Ok(EmptyPrograms { xdp, tc })
        })?
    }

    /// Detaching closes the links' descriptors, which works from any namespace. A program
    /// left attached would load the next modes, so failing to detach ends the run.
    fn detach(self, bench: &mut Ebpf) -> Result<()> {
        let p: &mut Xdp = bench
            .program_mut("bench_empty")
            .context("bench_empty")?
            .try_into()?;
        p.detach(self.xdp)
            .context("detaching the empty XDP program")?;
        let p: &mut SchedClassifier = bench
            .program_mut("bench_empty_tc")
            .context("bench_empty_tc")?
            .try_into()?;
        p.detach(self.tc)
            .context("detaching the empty TC program")?;
        Ok(())
    }
}

/// One download of `/big`: Gb/s, from curl's own count of bytes and time.
fn download(lab: &Lab, nginx: &Nginx, ca: &str, bytes: u64) -> Result<f64> {
    let url = nginx.url(IpAddr::from(lab.server_v4()), "/big");
    let limit = DOWNLOAD_LIMIT.as_secs().to_string();
    let out = lab.run_ok(
        lab.client_ns(),
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            &limit,
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            &url,
        ],
        DOWNLOAD_LIMIT + Duration::from_secs(10),
    )?;
    let mut fields = out.split_whitespace();
    let (Some(size), Some(secs)) = (fields.next(), fields.next()) else {
        bail!("curl printed {out:?}");
    };
    let size: u64 = size.parse().with_context(|| format!("size in {out:?}"))?;
    let secs: f64 = secs.parse().with_context(|| format!("time in {out:?}"))?;
    ensure!(size == bytes, "downloaded {size} bytes, expected {bytes}");
    ensure!(secs > 0.0, "curl reported no time: {out:?}");
    Ok(size as f64 * 8.0 / secs / 1e9)
}

/// The counters of [`COUNTERS`] from the agent's metrics.
fn counters(text: &str) -> Result<String> {
    let mut out = Vec::new();
    for name in COUNTERS {
        let series = format!("detector_{name}_total");
        let v = detector_lab::agent::metric(text, &series).with_context(|| {
            let head: String = text.chars().take(400).collect();
            format!("{series} missing from the agent's metrics, which began: {head:?}")
        })?;
        out.push(format!("{name}={v}"));
    }
    Ok(out.join(" "))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the live bench creates network namespaces and loads BPF programs: run it as root"
    );
    let mib = env_u32("LIVE_MIB", 512)?;
    let rounds = env_u32("LIVE_ROUNDS", 5)?;
    ensure!(
        mib > 0 && rounds > 0,
        "LIVE_MIB and LIVE_ROUNDS must be positive"
    );
    let bytes = u64::from(mib) << 20;

    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the reference programs")?;
    {
        let p: &mut Xdp = bench
            .program_mut("bench_empty")
            .context("bench_empty")?
            .try_into()?;
        p.load()?;
        let p: &mut SchedClassifier = bench
            .program_mut("bench_empty_tc")
            .context("bench_empty_tc")?
            .try_into()?;
        p.load()?;
    }

    let lab = Lab::direct()?;
    let nginx = lab.nginx(
        lab.server_ns(),
        NginxSite {
            tls: true,
            big_mib: mib,
            ..Default::default()
        },
    )?;
    let tls = nginx.tls.clone().context("TLS site has a certificate")?;
    let ca = path_str(&tls.ca_cert)?.to_string();
    // One unmeasured download: the file into the page cache, the sockets' buffers grown.
    download(&lab, &nginx, &ca, bytes).context("warm-up download")?;

    println!(
        "TLS download of {mib} MiB across a veth pair (nginx -> curl), {rounds} rounds, \
         modes interleaved"
    );
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 1..=rounds {
        for (i, mode) in MODES.into_iter().enumerate() {
            let v = match mode {
                Mode::None => download(&lab, &nginx, &ca, bytes)?,
                Mode::Empty(side) => {
                    let (ns, iface) = match side {
                        Side::Client => (lab.client_ns(), lab.client_if()),
                        Side::Server => (lab.server_ns(), lab.server_if()),
                    };
                    let attached = EmptyPrograms::attach(&mut bench, ns, iface)?;
                    let v = download(&lab, &nginx, &ca, bytes)?;
                    attached.detach(&mut bench)?;
                    v
                }
                Mode::Detector(side) => {
                    let (ns, iface) = match side {
                        Side::Client => (lab.client_ns(), lab.client_if()),
                        Side::Server => (lab.server_ns(), lab.server_if()),
                    };
                    let agent = LiveAgent::start(&lab, ns, &[iface], &[])?;
                    let v = download(&lab, &nginx, &ca, bytes)?;
                    let text = agent.metrics(&lab)?;
                    let diagnoses = agent.stop()?;
                    ensure!(
                        diagnoses.is_empty(),
                        "the agent diagnosed a clean download: {diagnoses:?}"
                    );
                    println!(
                        "  round {round}, {}: {v:.2} Gb/s; {}",
                        mode.name(),
                        counters(&text)?
                    );
                    v
                }
            };
            gbps[i].push(v);
        }
    }

    let med: Vec<f64> = gbps.iter().map(|v| median(v)).collect();
    println!("{:<32} {:>8} {:>8} {:>8}", "mode", "median", "min", "max");
    for (i, mode) in MODES.into_iter().enumerate() {
        let min = gbps[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = gbps[i].iter().copied().fold(0.0, f64::max);
        println!(
            "{:<32} {:>8.2} {:>8.2} {:>8.2}  Gb/s",
            mode.name(),
            med[i],
            min,
            max
        );
    }
    let of = |m: Mode| med[MODES.iter().position(|x| *x == m).expect("a listed mode")];
    let none = of(Mode::None);
    // Each round's ratio as well: modes of one round ran back to back, under much the same
    // load from the rest of the machine.
    let round_ratio = |a: Mode, b: Mode| {
        let (a, b) = (
            &gbps[MODES.iter().position(|x| *x == a).expect("a listed mode")],
            &gbps[MODES.iter().position(|x| *x == b).expect("a listed mode")],
        );
        let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        median(&r)
    };
    for side in [Side::Client, Side::Server] {
        let (det, empty) = (of(Mode::Detector(side)), of(Mode::Empty(side)));
        let ratio = det / empty;
        println!(
            "target: {} >= {TARGET}x the empty programs on the same side: {ratio:.3}x \
             ({}; median of the rounds' ratios {:.3}x); {:.3}x no program (rounds: {:.3}x)",
            Mode::Detector(side).name(),
            if ratio >= TARGET { "met" } else { "NOT met" },
            round_ratio(Mode::Detector(side), Mode::Empty(side)),
            det / none,
            round_ratio(Mode::Detector(side), Mode::None),
        );
    }
    Ok(())
}
