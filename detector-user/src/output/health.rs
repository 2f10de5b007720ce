//! Readiness as `/readyz` reports it: every configured interface attached, and the event
//! loop (which drains the ring buffer) turning. Written by the event loop, read by the
//! HTTP server.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use crate::kernel::clock::boottime_ns;

/// How long the event loop may go without turning before the agent stops being ready. It
/// turns at least every tick (250 ms), so this is many missed ticks, not jitter.
pub const LOOP_STALL: Duration = Duration::from_secs(3);

pub struct Health {
    ifaces: Vec<(String, AtomicBool)>,
    /// `CLOCK_BOOTTIME` of the event loop's last turn; 0 before the first.
    loop_turned_ns: AtomicU64,
}

impl Health {
    /// Every interface starts detached, the loop not yet turning.
    pub fn new(ifaces: &[String]) -> Health {
        Health {
            ifaces: ifaces
                .iter()
                .map(|n| (n.clone(), AtomicBool::new(false)))
                .collect(),
            loop_turned_ns: AtomicU64::new(0),
        }
    }

    pub fn set_attached(&self, iface: &str, attached: bool) {
        for (name, a) in &self.ifaces {
            if name == iface {
                a.store(attached, Ordering::Relaxed);
            }
        }
    }

    /// The event loop calls this on every turn.
    pub fn loop_turned(&self) {
        self.loop_turned_ns.store(boottime_ns(), Ordering::Relaxed);
    }

    /// Why the agent is not ready, one reason per line; `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready_at(boottime_ns())
    }

    fn not_ready_at(&self, now_ns: u64) -> Option<String> {
        let mut why: Vec<String> = self
            .ifaces
            .iter()
            .filter(|(_, a)| !a.load(Ordering::Relaxed))
            .map(|(n, _)| format!("{n}: not attached"))
            .collect();
        let turned = self.loop_turned_ns.load(Ordering::Relaxed);
        if turned == 0 {
            why.push("event loop: not started".into());
        } else if now_ns.saturating_sub(turned) > LOOP_STALL.as_nanos() as u64 {
            why.push(format!(
                "event loop: last turned {:.1} s ago",
                now_ns.saturating_sub(turned) as f64 / 1e9
            ));
        }
        (!why.is_empty()).then(|| why.join("\n") + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_every_interface_attached_and_the_loop_turning() {
        let h = Health::new(&["a".into(), "b".into()]);
        let why = h.not_ready().expect("nothing attached yet");
        assert!(why.contains("a: not attached") && why.contains("b: not attached"));
        assert!(why.contains("not started"), "{why}");
        h.set_attached("a", true);
        h.set_attached("b", true);
        h.loop_turned();
        assert_eq!(h.not_ready(), None);
        h.set_attached("b", false);
        assert_eq!(h.not_ready().as_deref(), Some("b: not attached\n"));
        h.set_attached("b", true);
        let stalled = boottime_ns() + LOOP_STALL.as_nanos() as u64 + 1_000_000_000;
        let why = h.not_ready_at(stalled).expect("loop stalled");
        assert!(why.starts_with("event loop: last turned"), "{why}");
    }
}
