//! Least privilege: the capabilities the agent needs, a clear error when they are missing,
//! and giving up every other one once the programs are attached.
//!
//! Loading the programs needs `CAP_BPF` (maps, programs, BTF), `CAP_NET_ADMIN` (network
//! program types, attaching XDP and TC) and `CAP_PERFMON`: without it the verifier forbids
//! pointer arithmetic in the form the compiler emits for packet bounds checks (`scalar +=
//! packet pointer`, "pointer arithmetic with it prohibited for !root"). After attaching, the
//! agent keeps only `CAP_BPF` and `CAP_NET_ADMIN`, so it can attach again to an interface
//! that is deleted and re-created; reading maps and the ring buffer through the fds it holds
//! needs none. The live test `live_privilege` runs the agent as `nobody` with just these.

use anyhow::{Context as _, bail};
use caps::{CapSet, Capability, CapsHashSet};

/// What loading and attaching needs.
pub const TO_LOAD: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// What stays once the programs are attached.
pub const KEPT: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

/// Fails with the missing capabilities named, and how to grant them, when the effective
/// set lacks any that loading needs.
pub fn check() -> anyhow::Result<()> {
    let effective =
        caps::read(None, CapSet::Effective).context("reading this process's capabilities")?;
    let mut missing: Vec<String> = TO_LOAD
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    bail!(
        "missing capabilities {}: run as root, or grant them (systemd: \
         AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON; or `setpriv \
         --ambient-caps +bpf,+net_admin,+perfmon ...`)",
        missing.join(", ")
    )
}

/// Gives up every capability beyond [`KEPT`], for good: the bounding set shrinks so no
/// exec can regain them, nothing is inheritable or ambient, and no-new-privileges is set.
/// Returns the effective set that remains.
pub fn drop_unneeded() -> anyhow::Result<CapsHashSet> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    // Order matters: shrinking the bounding set needs CAP_SETPCAP, which goes with the
    // permitted set, so the bounding set comes first.
    let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // Effective must stay within permitted, so it shrinks first.
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting no-new-privileges");
    }
    caps::read(None, CapSet::Effective).context("reading the capabilities left")
}

/// A capability set as `CAP_A,CAP_B`, sorted, for logs.
pub fn describe(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    names.sort();
    names.join(",")
}
