//! Attaching the loaded programs to interfaces: XDP on ingress (native where it helps),
//! the TC classifier on egress.

use std::path::Path;

use anyhow::Context as _;
use aya::programs::{TcAttachType, XdpMode};

use super::{Kernel, explain_privileges};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native XDP where it helps, generic (skb) XDP on virtual devices and where native
    /// attach fails.
    Auto,
    Native,
    Skb,
}

pub fn attach(
    kernel: &mut Kernel,
    iface: &str,
    mode: XdpModeArg,
    egress: bool,
) -> anyhow::Result<()> {
    let xdp = kernel.xdp()?;
    let chosen = match mode {
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Skb => XdpMode::Skb,
        XdpModeArg::Auto if is_virtual(iface) => {
            // Native XDP on veth splits GSO super-packets into MTU frames and cuts TCP
            // throughput about 5x; generic XDP costs almost nothing there.
            log::info!("{iface} is a virtual device: using generic (skb) XDP");
            XdpMode::Skb
        }
        XdpModeArg::Auto => XdpMode::Driver,
    };
    match xdp.attach(iface, chosen) {
        Ok(_) => log::info!("XDP attached to {iface} ({chosen:?} mode)"),
        Err(e) if mode == XdpModeArg::Auto && chosen == XdpMode::Driver => {
            log::info!("native XDP on {iface} failed ({e}); falling back to generic (skb) XDP");
            xdp.attach(iface, XdpMode::Skb)
                .map_err(anyhow::Error::from)
                .map_err(explain_privileges)
                .with_context(|| format!("attaching XDP to {iface}"))?;
        }
        Err(e) => {
            return Err(explain_privileges(e.into()))
                .with_context(|| format!("attaching XDP to {iface} in {chosen:?} mode"));
        }
    }
    if egress {
        kernel
            .tc()?
            .attach(iface, TcAttachType::Egress)
            .map_err(anyhow::Error::from)
            .map_err(explain_privileges)
            .with_context(|| format!("attaching the TC egress classifier to {iface}"))?;
        log::info!("TC egress classifier attached to {iface}");
    }
    Ok(())
}

/// Virtual devices (veth, bridges, tunnels) live under /sys/devices/virtual.
fn is_virtual(iface: &str) -> bool {
    Path::new("/sys/devices/virtual/net").join(iface).exists()
}
