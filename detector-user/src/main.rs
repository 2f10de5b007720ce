//! `detector`: TLS/TCP failure diagnoses from an XDP program, live or from a capture.

use std::{
    net::SocketAddr, num::NonZeroUsize, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use clap::{Parser, Subcommand};
use detector_user::{
    kernel::{Options, attach::XdpModeArg},
    live::{self, RunOptions},
    output::{http::DEFAULT_LISTEN, metrics::Metrics},
    pipeline, replay,
};

#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct KernelArgs {
    /// A server port where TLS is expected (repeat for several). Defaults to 443, 465, 636,
    /// 853, 993, 995 and 8443.
    #[arg(long = "tls-port", value_name = "N")]
    tls_ports: Vec<u16>,
    /// Flows the kernel tracks at once; the least recently seen are evicted beyond it.
    /// 1 to 4194304; the kernel allocates all of it at start, about 0.5 KiB per entry.
    #[arg(long, value_name = "N", default_value_t = detector_common::DEFAULT_FLOW_TABLE_SIZE,
          value_parser = table_size, allow_negative_numbers = true)]
    flow_table_size: u32,
    /// Flows seen from one side only (no answer yet) the kernel tracks at once, in a table
    /// of their own so that floods of them (scans, spoofed segments) never evict confirmed
    /// flows; the least recently seen are evicted beyond it. 1 to 4194304, allocated at
    /// start like the flow table.
    #[arg(long, value_name = "N", default_value_t = detector_common::DEFAULT_UNCONFIRMED_TABLE_SIZE,
          value_parser = table_size, allow_negative_numbers = true)]
    unconfirmed_table_size: u32,
    /// Seconds a session must be quiet before its events are judged together; 0.01 to
    /// 3600.
    #[arg(long, value_name = "SECONDS", default_value_t = pipeline::DEFAULT_WINDOW.as_secs_f64(),
          value_parser = correlation_window, allow_negative_numbers = true)]
    correlation_window: f64,
    /// Seconds of quiet after which a flow counts as idle: closes, resets and resumptions
    /// after at least this gap are diagnosed (idle_close, rst_after_idle, idle_timeout_drop);
    /// 0.1 to 604800 (a week).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = idle_threshold,
          allow_negative_numbers = true)]
    idle_threshold: f64,
    /// Bytes of the ring buffer the kernel sends events through: a power of two and a
    /// multiple of the page size. Events that find it full are dropped and counted
    /// (detector_kernel_events_dropped_total).
    #[arg(long, value_name = "BYTES", default_value_t = detector_common::EVENT_RING_BYTES,
          value_parser = ring_size, allow_negative_numbers = true)]
    ring_size: u32,
}

/// Kernel flow tables are preallocated when the program loads (LRU hash maps), so a size
/// costs its memory up front: the bound keeps a typo from asking for gigabytes.
const MAX_TABLE_SIZE: u32 = 4 << 20;
/// Shorter than a round trip, every pause would be idle.
const IDLE_THRESHOLD_S: (f64, f64) = (0.1, 7.0 * 86_400.0);
/// Sessions wait this long in memory before they are judged.
const CORRELATION_WINDOW_S: (f64, f64) = (0.01, 3_600.0);

fn table_size(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of entries"))?;
    if !(1..=u64::from(MAX_TABLE_SIZE)).contains(&n) {
        return Err(format!("{n} entries: a table holds 1 to {MAX_TABLE_SIZE}"));
    }
    Ok(n as u32)
}

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    detector_user::kernel::check_ring_size(n).map_err(|e| format!("{e:#}"))?;
    Ok(n)
}

fn idle_threshold(s: &str) -> Result<f64, String> {
    seconds_within(s, IDLE_THRESHOLD_S)
}

fn correlation_window(s: &str) -> Result<f64, String> {
    seconds_within(s, CORRELATION_WINDOW_S)
}

/// A number of seconds inside `(min, max)`; NaN and infinities are not numbers of seconds.
fn seconds_within(s: &str, (min, max): (f64, f64)) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < min || v > max {
        return Err(format!("{s} s is out of range: {min} to {max} seconds"));
    }
    Ok(v)
}

impl KernelArgs {
    fn options(&self) -> Options {
        let mut o = Options {
            flow_table_size: self.flow_table_size,
            unconfirmed_table_size: self.unconfirmed_table_size,
            ring_size: self.ring_size,
            // In range: checked by the parser.
            idle_threshold: Duration::from_secs_f64(self.idle_threshold),
            ..Options::default()
        };
        if !self.tls_ports.is_empty() {
            o.tls_ports = self.tls_ports.clone();
        }
        o
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.correlation_window)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and print diagnoses as JSON lines; serve Prometheus metrics.
    Run {
        /// Interface to watch (repeat for several).
        #[arg(long = "iface", value_name = "NAME", required = true)]
        ifaces: Vec<String>,
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        xdp_mode: XdpModeArg,
        /// Do not attach the TC egress classifier: for routers and mirror ports, where both
        /// directions of a session arrive as ingress.
        #[arg(long)]
        no_egress: bool,
        /// Address for the /metrics endpoint.
        #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// TLS and basic auth for the endpoint, from a web config file in the format
        /// node_exporter and the other Prometheus exporters share (`tls_server_config`,
        /// `basic_auth_users` with bcrypt hashes). Read once at startup.
        #[arg(long = "web.config.file", value_name = "PATH")]
        web_config: Option<PathBuf>,
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Run a pcap/pcapng capture through the same kernel program and print its diagnoses.
    Replay {
        file: PathBuf,
        /// Kernel programs replaying at once, each on its share of the capture's flows (the
        /// output does not depend on it). Defaults to the number of CPUs.
        #[arg(long, value_name = "N")]
        workers: Option<NonZeroUsize>,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on, with the chain of causes, never a backtrace.
            eprintln!("detector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            ifaces,
            xdp_mode,
            no_egress,
            listen,
            web_config,
            kernel,
        } => {
            let opts = RunOptions {
                ifaces,
                xdp_mode,
                egress: !no_egress,
                listen,
                web_config,
                window: kernel.window(),
                kernel: kernel.options(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(live::run(opts, std::io::stdout()))
        }
        Command::Replay {
            file,
            workers,
            kernel,
        } => {
            let metrics = Arc::new(Metrics::new()?);
            let workers = workers.unwrap_or_else(replay::default_workers);
            let summary = replay::replay(
                &file,
                &kernel.options(),
                kernel.window(),
                workers,
                metrics,
                std::io::stdout().lock(),
            )?;
            eprintln!("{summary}");
            eprintln!("{}", summary.workers_line());
            eprint!("{}", summary.table());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn kernel_args(args: &[&str]) -> Options {
        let cli = Cli::try_parse_from([&["detector", "replay", "x.pcap"], args].concat()).unwrap();
        let Command::Replay { kernel, .. } = cli.command else {
            unreachable!("parsed as replay");
        };
        kernel.options()
    }

    fn parse_error(args: &[&str]) -> String {
        match Cli::try_parse_from([&["detector", "replay", "x.pcap"], args].concat()) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn senseless_values_are_refused_with_the_flag_and_the_range() {
        for (args, says) in [
            (&["--idle-threshold", "0"][..], "0.1 to 604800"),
            (&["--idle-threshold", "-5"], "0.1 to 604800"),
            (&["--idle-threshold", "NaN"], "0.1 to 604800"),
            (&["--idle-threshold", "inf"], "0.1 to 604800"),
            (&["--idle-threshold", "1e300"], "0.1 to 604800"),
            (&["--idle-threshold", "soon"], "not a number of seconds"),
            (&["--correlation-window", "0"], "0.01 to 3600"),
            (&["--correlation-window", "-0.5"], "0.01 to 3600"),
            (&["--correlation-window", "86400"], "0.01 to 3600"),
            (&["--flow-table-size", "0"], "1 to 4194304"),
            (&["--flow-table-size", "4000000000"], "1 to 4194304"),
            (&["--flow-table-size", "99999999999999"], "1 to 4194304"),
            (&["--flow-table-size", "-1"], "not a whole number"),
            (&["--unconfirmed-table-size", "0"], "1 to 4194304"),
            (&["--unconfirmed-table-size", "4194305"], "1 to 4194304"),
        ] {
            let e = parse_error(args);
            assert!(e.contains(args[0]), "{args:?}: {e}");
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn values_at_the_bounds_are_taken() {
        let o = kernel_args(&[
            "--idle-threshold",
            "0.1",
            "--flow-table-size",
            "4194304",
            "--unconfirmed-table-size",
            "1",
        ]);
        assert_eq!(o.idle_threshold, Duration::from_millis(100));
        assert_eq!((o.flow_table_size, o.unconfirmed_table_size), (4 << 20, 1));
        let cli = Cli::try_parse_from([
            "detector",
            "replay",
            "x.pcap",
            "--correlation-window",
            "3600",
            "--idle-threshold",
            "604800",
        ])
        .unwrap();
        let Command::Replay { kernel, .. } = cli.command else {
            unreachable!("parsed as replay");
        };
        assert_eq!(kernel.window(), Duration::from_secs(3600));
        assert_eq!(
            kernel.options().idle_threshold,
            Duration::from_secs(604_800)
        );
    }

    #[test]
    fn table_sizes_default_and_can_be_set() {
        let o = kernel_args(&[]);
        assert_eq!(o.flow_table_size, detector_common::DEFAULT_FLOW_TABLE_SIZE);
        assert_eq!(
            o.unconfirmed_table_size,
            detector_common::DEFAULT_UNCONFIRMED_TABLE_SIZE
        );
        let o = kernel_args(&[
            "--flow-table-size",
            "1024",
            "--unconfirmed-table-size",
            "99",
        ]);
        assert_eq!((o.flow_table_size, o.unconfirmed_table_size), (1024, 99));
    }

    #[test]
    fn ring_size_defaults_and_can_be_set() {
        assert_eq!(
            kernel_args(&[]).ring_size,
            detector_common::EVENT_RING_BYTES
        );
        assert_eq!(kernel_args(&["--ring-size", "8192"]).ring_size, 8192);
        for bad in ["5000", "0", "-4096", "lots"] {
            let e = parse_error(&["--ring-size", bad]);
            assert!(e.contains("--ring-size"), "{bad}: {e}");
        }
        assert!(parse_error(&["--ring-size", "6144"]).contains("power of two"));
    }
}
