//! What the agent tells the kernel program at load time.

/// Configuration the agent writes into the single-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// When non-zero, the program's clock: replay sets it to each packet's capture time.
    /// Zero means the kernel's boot-time clock.
    pub clock_override_ns: u64,
    /// Quiet time after which a flow counts as idle; closes, resets and resumptions after
    /// at least this gap are reported.
    pub idle_threshold_ns: u64,
    /// When the detector started, on the program's clock: a flow first seen mid-stream
    /// is only suspicious once the detector has run longer than the idle threshold.
    pub started_ns: u64,
}

/// Default idle threshold.
pub const DEFAULT_IDLE_THRESHOLD_NS: u64 = 30_000_000_000;
