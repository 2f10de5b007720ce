//! What the agent tells the kernel program at load time.

/// Configuration the agent writes into the single-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// When non-zero, the program's clock (tests set it before each crafted frame). Zero
    /// means the kernel's boot-time clock.
    pub clock_override_ns: u64,
    /// Quiet time after which a flow counts as idle; closes, resets and resumptions after
    /// at least this gap are reported.
    pub idle_threshold_ns: u64,
    /// When the detector started, on the program's clock: a flow first seen mid-stream
    /// is only suspicious once the detector has run longer than the idle threshold.
    pub started_ns: u64,
    /// Non-zero only in replay: every frame handed to the XDP program carries its capture
    /// time in its XDP metadata ([`REPLAY_META_LEN`] bytes, Unix-epoch nanoseconds in the
    /// host's byte order), so one BPF_PROG_TEST_RUN per frame sets the clock and runs the
    /// program. Live, the metadata in front of a frame belongs to whoever put it there (a
    /// driver, another XDP program) and is never read, since this stays zero.
    pub clock_in_meta: u64,
}

/// Bytes of XDP metadata a replayed frame carries: its capture time.
pub const REPLAY_META_LEN: usize = 8;

/// Default idle threshold.
pub const DEFAULT_IDLE_THRESHOLD_NS: u64 = 30_000_000_000;
