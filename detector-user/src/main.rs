//! `detector`: TLS/TCP failure diagnoses from an XDP program, live or from a capture.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

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
    #[arg(long, value_name = "N", default_value_t = detector_common::DEFAULT_FLOW_TABLE_SIZE)]
    flow_table_size: u32,
    /// Flows seen from one side only (no answer yet) the kernel tracks at once, in a table
    /// of their own so that floods of them (scans, spoofed segments) never evict confirmed
    /// flows; the least recently seen are evicted beyond it.
    #[arg(long, value_name = "N", default_value_t = detector_common::DEFAULT_UNCONFIRMED_TABLE_SIZE)]
    unconfirmed_table_size: u32,
    /// Seconds a session must be quiet before its events are judged together.
    #[arg(long, value_name = "SECONDS", default_value_t = pipeline::DEFAULT_WINDOW.as_secs_f64())]
    correlation_window: f64,
    /// Seconds of quiet after which a flow counts as idle: closes, resets and resumptions
    /// after at least this gap are diagnosed (idle_close, rst_after_idle, idle_timeout_drop).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    idle_threshold: f64,
    /// Bytes of the ring buffer the kernel sends events through: a power of two and a
    /// multiple of the page size. Events that find it full are dropped and counted
    /// (detector_kernel_events_dropped_total).
    #[arg(long, value_name = "BYTES", default_value_t = detector_common::EVENT_RING_BYTES)]
    ring_size: u32,
}

impl KernelArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let mut o = Options {
            flow_table_size: self.flow_table_size,
            unconfirmed_table_size: self.unconfirmed_table_size,
            ring_size: self.ring_size,
            idle_threshold: Duration::try_from_secs_f64(self.idle_threshold)
                .map_err(|e| anyhow::anyhow!("--idle-threshold {}: {e}", self.idle_threshold))?,
            ..Options::default()
        };
        if !self.tls_ports.is_empty() {
            o.tls_ports = self.tls_ports.clone();
        }
        Ok(o)
    }

    fn window(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.correlation_window)
            .map_err(|e| anyhow::anyhow!("--correlation-window {}: {e}", self.correlation_window))
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
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Run a pcap/pcapng capture through the same kernel program and print its diagnoses.
    Replay {
        file: PathBuf,
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
            kernel,
        } => {
            let opts = RunOptions {
                ifaces,
                xdp_mode,
                egress: !no_egress,
                listen,
                window: kernel.window()?,
                kernel: kernel.options()?,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(live::run(opts, std::io::stdout()))
        }
        Command::Replay { file, kernel } => {
            let metrics = Arc::new(Metrics::new()?);
            let summary = replay::replay(
                &file,
                &kernel.options()?,
                kernel.window()?,
                metrics,
                std::io::stdout().lock(),
            )?;
            eprintln!("{summary}");
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
        kernel.options().unwrap()
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
    }
}
