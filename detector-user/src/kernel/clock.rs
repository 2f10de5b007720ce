//! Turning the kernel program's clock into wall-clock time.
//!
//! Live, the program stamps events with `CLOCK_BOOTTIME` nanoseconds (it keeps counting
//! through suspend, unlike the monotonic clock); replay stamps them with the capture's
//! Unix-epoch nanoseconds. A [`Clock`] knows which, and converts.

use time::OffsetDateTime;

#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Boot time: wall = boot + offset, measured once at start.
    Boot { wall_minus_boot_ns: i128 },
    /// The program's time already is Unix-epoch time.
    Capture,
}

impl Clock {
    pub fn boot() -> Clock {
        let boot = boottime_ns() as i128;
        let wall = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Clock::Boot {
            wall_minus_boot_ns: wall - boot,
        }
    }

    /// Unix-epoch nanoseconds for a program timestamp.
    pub fn to_unix_ns(self, program_ns: u64) -> i128 {
        match self {
            Clock::Boot { wall_minus_boot_ns } => program_ns as i128 + wall_minus_boot_ns,
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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on every kernel we load on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
