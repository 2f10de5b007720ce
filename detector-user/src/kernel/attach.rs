//! Attaching the loaded programs to interfaces: XDP on ingress (native where it helps),
//! the TC classifier on egress; and keeping them attached when an interface goes away and
//! comes back.
//!
//! Both attachments are kernel links owned by file descriptors (a bpf_link for XDP, TCX for
//! TC from Linux 6.6), so the kernel detaches them when the process dies, however it dies.
//! Before 6.6 TC is a netlink filter (named after the program) on the interface's `clsact`
//! qdisc, which the agent adds when it is missing. On exit the agent removes its filter,
//! and the qdisc when it added it and no other filter uses it. A filter outlives a killed
//! agent: the next agent on that interface removes it before attaching its own.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType, TcError, XdpError, XdpMode,
    tc::{
        NlOptions, SchedClassifierLinkId, TcAttachOptions, qdisc_add_clsact, qdisc_detach_program,
    },
    xdp::XdpLinkId,
};
use detector_common::names;

use super::{Kernel, clsact, explain_privileges};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native XDP where it helps, generic (skb) XDP on virtual devices and where native
    /// attach fails.
    Auto,
    Native,
    Skb,
}

/// One interface's attachments.
struct Attached {
    ifindex: u32,
    xdp: XdpLinkId,
    tc: Option<SchedClassifierLinkId>,
    /// The agent added the interface's clsact qdisc (netlink attachment only).
    own_qdisc: bool,
}

struct Slot {
    name: String,
    attached: Option<Attached>,
}

/// The configured interfaces and what is attached to each now.
pub struct Attachments {
    mode: XdpModeArg,
    egress: bool,
    slots: Vec<Slot>,
}

impl Attachments {
    /// Attaches to every interface; any failure is fatal (and detaches what was attached,
    /// when the program is dropped).
    pub fn attach_all(
        kernel: &mut Kernel,
        ifaces: &[String],
        mode: XdpModeArg,
        egress: bool,
    ) -> anyhow::Result<Attachments> {
        let mut a = Attachments {
            mode,
            egress,
            slots: Vec::new(),
        };
        for name in ifaces {
            let attached = attach(kernel, name, mode, egress)?;
            a.slots.push(Slot {
                name: name.clone(),
                attached: Some(attached),
            });
        }
        Ok(a)
    }

    /// Interfaces and whether each is attached now.
    pub fn state(&self) -> impl Iterator<Item = (&str, bool)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), s.attached.is_some()))
    }

    /// Brings the attachments in line with the interfaces that exist now: forgets those
    /// whose interface is gone (the kernel detached them with it, as it did for those in
    /// `deleted`, interface indexes reported deleted since the last call) and attaches to
    /// configured interfaces that exist but are not attached. Returns whether anything
    /// changed. Failures are logged, not fatal: the next link event retries.
    pub fn reconcile(&mut self, kernel: &mut Kernel, deleted: &[u32]) -> bool {
        let mut changed = false;
        for slot in &mut self.slots {
            let now = ifindex(&slot.name);
            if let Some(a) = &slot.attached
                && (now != Some(a.ifindex) || deleted.contains(&a.ifindex))
            {
                let a = slot.attached.take().expect("checked above");
                log::warn!(
                    "{} went away (index {}): detached until it comes back",
                    slot.name,
                    a.ifindex
                );
                // The kernel already released the links with the device; this only drops
                // our handles on them.
                if let Ok(xdp) = kernel.xdp() {
                    let _ = xdp.detach(a.xdp);
                }
                if let (Some(tc), Ok(prog)) = (a.tc, kernel.tc()) {
                    let _ = prog.detach(tc);
                }
                changed = true;
            }
            if slot.attached.is_none() && ifindex(&slot.name).is_some() {
                match attach(kernel, &slot.name, self.mode, self.egress) {
                    Ok(a) => {
                        log::info!("{} is back (index {}): re-attached", slot.name, a.ifindex);
                        slot.attached = Some(a);
                        changed = true;
                    }
                    Err(e) => log::warn!("re-attaching to {}: {e:#}", slot.name),
                }
            }
        }
        changed
    }
}

impl Drop for Attachments {
    /// The links and filters go when the programs are dropped (after this: they are
    /// declared first); a qdisc the agent added goes here, its filter with it.
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(a) = &slot.attached
                && a.own_qdisc
                && ifindex(&slot.name) == Some(a.ifindex)
            {
                remove_qdisc(&slot.name, a.ifindex);
            }
        }
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn attach(
    kernel: &mut Kernel,
    iface: &str,
    mode: XdpModeArg,
    egress: bool,
) -> anyhow::Result<Attached> {
    let Some(index) = ifindex(iface) else {
        bail!("interface {iface} does not exist");
    };
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
    let xdp_link = match xdp.attach_to_if_index(index, chosen) {
        Ok(l) => {
            log::info!("XDP attached to {iface} ({chosen:?} mode)");
            l
        }
        Err(e) if occupied(&e) => return Err(xdp_taken(iface, e)),
        Err(e) if mode == XdpModeArg::Auto && chosen == XdpMode::Driver => {
            log::info!("native XDP on {iface} failed ({e}); falling back to generic (skb) XDP");
            match xdp.attach_to_if_index(index, XdpMode::Skb) {
                Ok(l) => l,
                Err(e) if occupied(&e) => return Err(xdp_taken(iface, e)),
                Err(e) => {
                    return Err(explain_privileges(e.into()))
                        .with_context(|| format!("attaching XDP to {iface}"));
                }
            }
        }
        Err(e) => {
            return Err(explain_privileges(e.into()))
                .with_context(|| format!("attaching XDP to {iface} in {chosen:?} mode"));
        }
    };
    let (tc_link, own_qdisc) = if egress {
        match attach_tc(kernel, iface, index) {
            Ok((l, own)) => (Some(l), own),
            Err(e) => {
                // Leave nothing half-attached.
                let _ = kernel.xdp().map(|x| x.detach(xdp_link));
                return Err(e);
            }
        }
    } else {
        (None, false)
    };
    Ok(Attached {
        ifindex: index,
        xdp: xdp_link,
        tc: tc_link,
        own_qdisc,
    })
}

/// Attaches the TC egress classifier; returns its link and whether the agent added the
/// clsact qdisc for it.
fn attach_tc(
    kernel: &mut Kernel,
    iface: &str,
    index: u32,
) -> anyhow::Result<(SchedClassifierLinkId, bool)> {
    let tcx = kernel.features.tcx;
    let mut own_qdisc = false;
    if tcx {
        // TCX lets several programs share a hook, so a second detector would not fail to
        // attach there: look for ours first. Naming the programs found needs
        // CAP_SYS_ADMIN, which an agent with only the capabilities it needs lacks (and
        // which is gone after attaching); the XDP attachment, made first, refuses a second
        // detector anyway.
        match SchedClassifier::query_tcx(iface, TcAttachType::Egress) {
            Ok((_, programs)) => {
                if programs.iter().any(|p| p.name_as_str() == Some(tc_name())) {
                    bail!(
                        "{iface} already has a detector's TC egress program attached: is \
                         another detector running on it? (`bpftool net show dev {iface}`)"
                    );
                }
            }
            Err(e) => log::debug!("not checking {iface}'s TCX egress programs: {e}"),
        }
    } else {
        match qdisc_add_clsact(iface) {
            Ok(()) => own_qdisc = true,
            Err(TcError::NetlinkError(n)) if n.raw_os_error() == Some(libc::EEXIST) => {
                // The qdisc was there: a filter of ours on it is a killed agent's (the XDP
                // attachment just made shows no other detector runs here).
                match qdisc_detach_program(iface, TcAttachType::Egress, names::TC_PROGRAM) {
                    Ok(()) => log::warn!(
                        "removed the TC egress filter a previous detector left on {iface} \
                         (it was stopped before it could detach)"
                    ),
                    Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("looking for a left-over filter on {iface}: {e}"),
                }
            }
            Err(e) => {
                return Err(explain_privileges(e.into()))
                    .with_context(|| format!("adding the clsact qdisc to {iface}"));
            }
        }
    }
    let options = if tcx {
        TcAttachOptions::TcxOrder(Default::default())
    } else {
        TcAttachOptions::Netlink(NlOptions::default())
    };
    let link = kernel
        .tc()?
        .attach_with_options(iface, TcAttachType::Egress, options)
        .map_err(anyhow::Error::from)
        .map_err(explain_privileges)
        .with_context(|| format!("attaching the TC egress classifier to {iface}"));
    let link = match link {
        Ok(l) => l,
        Err(e) => {
            if own_qdisc {
                remove_qdisc(iface, index);
            }
            return Err(e);
        }
    };
    log::info!(
        "TC egress classifier attached to {iface} ({})",
        if tcx {
            "TCX link"
        } else if own_qdisc {
            "netlink filter on a clsact qdisc added for it"
        } else {
            "netlink filter on the existing clsact qdisc"
        }
    );
    Ok((link, own_qdisc))
}

/// Deletes the clsact qdisc the agent added, unless a filter not of ours is on it now.
/// Our own filter goes with it.
fn remove_qdisc(iface: &str, index: u32) {
    match clsact::filters(index) {
        Ok(filters) => {
            let others = filters
                .iter()
                .filter(|f| !(f.egress && f.bpf_name.as_deref() == Some(names::TC_PROGRAM)))
                .count();
            if others > 0 {
                log::info!(
                    "left the clsact qdisc on {iface} in place: {others} other filter(s) use it"
                );
                return;
            }
        }
        Err(e) => {
            log::warn!("not removing the clsact qdisc of {iface}: listing its filters: {e}");
            return;
        }
    }
    match clsact::delete(index) {
        Ok(()) => log::info!("removed the clsact qdisc the detector added to {iface}"),
        // Gone with its interface.
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
        Err(e) => log::warn!("removing the clsact qdisc of {iface}: {e}"),
    }
}

/// The kernel truncates program names to 15 bytes.
fn tc_name() -> &'static str {
    &names::TC_PROGRAM[..names::TC_PROGRAM.len().min(15)]
}

/// Whether attaching failed because the hook already holds another XDP program: a bpf_link
/// refuses to replace one (EBUSY), and native and generic XDP cannot coexist (EEXIST).
fn occupied(e: &ProgramError) -> bool {
    let code = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    };
    matches!(code, Some(libc::EBUSY) | Some(libc::EEXIST))
}

fn xdp_taken(iface: &str, e: ProgramError) -> anyhow::Error {
    anyhow::Error::from(e).context(format!(
        "{iface} already has an XDP program attached (another detector running on it?); \
         it was left as it is. See `ip -d link show {iface}`"
    ))
}

/// Virtual devices (veth, bridges, tunnels) live under /sys/devices/virtual.
fn is_virtual(iface: &str) -> bool {
    Path::new("/sys/devices/virtual/net").join(iface).exists()
}
