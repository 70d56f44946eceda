//! The one polling loop. Waiting is for a condition, never for a length of time, and
//! never forever: each wait has a deadline and, past it, panics saying what it waited
//! for, what it last saw, and whatever context (log tails) the caller adds.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait (a server answering, a cluster forming, a failover) may take
/// before the harness gives up. Generous: a loaded two-core CI machine running several
/// test binaries at once is slow, and a healthy wait ends as soon as its condition holds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls `probe` until it returns `Ok`, backing off from 10 ms to 200 ms between calls.
/// Panics after `timeout` with `what`, the last `Err`, and `context()`.
pub(crate) fn poll_until<T>(
    timeout: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> Result<T, String>,
    context: impl FnOnce() -> String,
) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if started.elapsed() >= timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nlast observation: {last}\n{}",
                context()
            );
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Calls `probe` until it returns `Ok` and returns its value; panics after `timeout`
/// with `what` and the last `Err`. For tests waiting on a condition of their own, e.g.
/// a lock being granted after a failover, instead of sleeping a guessed duration.
pub fn wait_until<T>(
    timeout: Duration,
    what: impl Display,
    probe: impl FnMut() -> Result<T, String>,
) -> T {
    poll_until(timeout, what, probe, String::new)
}
