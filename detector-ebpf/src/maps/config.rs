//! What the agent decides: the clock and thresholds, and the ports where TLS is expected.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap},
};
use detector_common::{Config, DEFAULT_IDLE_THRESHOLD_NS, MAX_TLS_PORTS};

use crate::packet::Packet;

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Server ports where TLS is expected (the value is unused).
#[map]
static TLS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_TLS_PORTS, 0);

/// The program's clock and the time thresholds it is judged by.
pub struct Clock {
    pub now: u64,
    pub idle_ns: u64,
    pub started_ns: u64,
}

/// The program's clock: in replay the capture time `p` carries, boot time live.
#[inline(always)]
pub fn clock<P: Packet>(p: &P) -> Clock {
    let (override_ns, idle_ns, started_ns, in_meta) = match CONFIG.get(0) {
        Some(c) => (
            c.clock_override_ns,
            c.idle_threshold_ns,
            c.started_ns,
            c.clock_in_meta,
        ),
        None => (0, DEFAULT_IDLE_THRESHOLD_NS, 0, 0),
    };
    // Zero is "no timestamp" to the agent, which never hands it over (replay.rs).
    let replayed = if in_meta != 0 {
        p.replay_time().filter(|&t| t != 0)
    } else {
        None
    };
    let now = match replayed {
        Some(t) => t,
        None if override_ns != 0 => override_ns,
        // SAFETY: helper without preconditions.
        None => unsafe { bpf_ktime_get_boot_ns() },
    };
    Clock {
        now,
        idle_ns,
        started_ns,
    }
}

#[inline(always)]
pub fn is_tls_port(port: u16) -> bool {
    // SAFETY: the value is a plain u8 marker; we only test for presence.
    unsafe { TLS_PORTS.get(port).is_some() }
}
