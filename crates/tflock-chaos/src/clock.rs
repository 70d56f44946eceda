//! The one clock every process of a run writes its history with.
//!
//! `std::time::Instant` is opaque and per process; the checker compares the instants of
//! different processes (clients and nemesis), so every time in a history is
//! `CLOCK_MONOTONIC` read explicitly through `clock_gettime`, in nanoseconds: one clock
//! for all processes on the machine, never stepped by NTP or an operator.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    u64::try_from(ts.tv_sec).expect("monotonic seconds are positive") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("nanoseconds are positive")
}

/// Milliseconds as nanoseconds.
pub const fn ms(ms: u64) -> u64 {
    ms * 1_000_000
}
