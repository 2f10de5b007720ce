//! Turning the kernel program's clock into wall-clock time.
//!
//! Live, the program stamps events with `CLOCK_BOOTTIME` nanoseconds (it keeps counting
//! through suspend, unlike the monotonic clock); replay stamps them with the capture's
//! Unix-epoch nanoseconds. A [`Clock`] knows which, and converts.
//!
//! Live conversion reads the realtime clock at conversion time, microseconds to
//! milliseconds after the event, and subtracts the boot time elapsed since the event: an
//! offset measured once at start would drift from wall time after an NTP step or a suspend.

use time::OffsetDateTime;

#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Boot time: wall = realtime now - (boot time now - event's boot time).
    Boot,
    /// The program's time already is Unix-epoch time.
    Capture,
}

impl Clock {
    pub fn boot() -> Clock {
        Clock::Boot
    }

    /// Unix-epoch nanoseconds for a program timestamp.
    pub fn to_unix_ns(self, program_ns: u64) -> i128 {
        match self {
            Clock::Boot => {
                let (wall, boot) = (realtime_ns(), boottime_ns());
                wall - (i128::from(boot) - i128::from(program_ns))
            }
            Clock::Capture => program_ns as i128,
        }
    }

    pub fn to_wall(self, program_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.to_unix_ns(program_ns))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the live program's clock.
pub fn boottime_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME) as u64
}

/// `CLOCK_REALTIME` now, in Unix-epoch nanoseconds.
fn realtime_ns() -> i128 {
    read(libc::CLOCK_REALTIME)
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every kernel we load on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event stamped now converts to the realtime clock now, and one stamped a second
    /// ago to a second before it: the conversion follows the realtime clock, not an offset
    /// frozen at start.
    #[test]
    fn live_events_convert_to_realtime_at_conversion() {
        let before = realtime_ns();
        let now = Clock::boot().to_unix_ns(boottime_ns());
        let earlier = Clock::boot().to_unix_ns(boottime_ns() - 1_000_000_000);
        let after = realtime_ns();
        // Less the boot time that passed between stamping and converting (well under 1 ms).
        assert!(
            (before - 1_000_000..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
        let gap = now - earlier;
        assert!(
            (999_000_000..1_010_000_000).contains(&gap),
            "a second apart on the boot clock, {gap} ns apart on the wall"
        );
    }
}
