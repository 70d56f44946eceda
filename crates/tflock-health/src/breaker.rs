//! The circuit breaker: closed, open, half-open, on an injectable clock.
//!
//! Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls
//! fail at once with `backend_unavailable` and a retry-after, so callers never hang on
//! a dead store. Half-open: at most `half_open_max_requests` calls pass at a time as
//! probes; one success closes it, one failure opens it again. Every transition is
//! logged and counted.
//!
//! # Probing while open: `reset_timeout` is an upper bound, not a penalty
//!
//! While open, the health monitor ([`crate::spawn_monitor`]) checks the store every
//! [`ProbeSchedule`] (250 ms ± 50 ms by default) instead of every
//! `health_check_interval`, and a check that gets an answer
//! ([`CircuitBreaker::record_check`] with `true`) closes the breaker at once: a store
//! that restarted in half a second is usable again a fraction of a second later, not
//! after the rest of a 30 s `reset_timeout`. The probe is the monitor's real health
//! check (a round trip to every node), never a caller's call, so no lock request is
//! spent on a store that may still be down and nothing is sent twice. The jitter keeps
//! several servers on one store from probing in step. `reset_timeout` still bounds
//! how long the breaker stays open: if no check has closed it by then (no monitor
//! runs, or the check fails for a reason real calls do not share), the next call
//! finds it half-open and real calls probe, as before.
//!
//! A check answers "does the store answer", not "is all well": a check that returned
//! at all (`Ok`, even with `healthy: false`, e.g. a persistence warning or detected
//! data loss) is a success for the breaker; what it found is only reported. Keeping
//! the breaker open would not make such a store safer, it would only stop every call,
//! including the ones that let holders finish.
//!
//! # Permits give their slot back exactly once
//!
//! A call holds a [`Permit`] while it runs. In half-open the permit is one of the
//! `half_open_max_requests` probe slots, so a slot that is never returned is a breaker
//! that refuses every call until a health check happens to change its state. Calls are
//! futures and futures get dropped (the caller went away, `tokio::time::timeout` fired,
//! the task was aborted), so returning the slot cannot rely on the caller reaching a
//! `record` line: the permit borrows its breaker and returns its slot in `Drop`.
//! [`Permit::record`] (an outcome) and [`Permit::release`] (no outcome) consume it and
//! do the same, so every path (success, failure, unused, dropped) returns the slot
//! once. A dropped call counts as neither success nor failure: nothing is known about
//! the backend. Each half-open period has its own generation, and a probe permit only
//! frees a slot of the period it was taken in: a probe that outlives its period (the
//! breaker reopened and went half-open again meanwhile) cannot free a slot of the new
//! one and let more than `half_open_max_requests` probes through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::{SharedClock, Timestamp};
use tokio::sync::Notify;

/// The spec's three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open: the `/metrics` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// The spec's `circuit_breaker` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
    pub half_open_max_requests: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            half_open_max_requests: 3,
        }
    }
}

/// How often the monitor checks the store while the breaker is not closed: every
/// `interval ± jitter`, uniformly spread (never more often than `interval - jitter`,
/// never less often than `interval + jitter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSchedule {
    pub interval: Duration,
    pub jitter: Duration,
}

impl Default for ProbeSchedule {
    fn default() -> Self {
        ProbeSchedule {
            interval: Duration::from_millis(250),
            jitter: Duration::from_millis(50),
        }
    }
}

impl ProbeSchedule {
    /// The delay for a uniform draw `unit` in `[0, 1]` (clamped): `interval - jitter`
    /// at 0, `interval + jitter` at 1.
    pub fn delay(&self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let low = self.interval.saturating_sub(self.jitter);
        let span = (self.interval + self.jitter).saturating_sub(low);
        low + span.mul_f64(unit)
    }

    /// The longest delay this schedule gives.
    pub fn max_delay(&self) -> Duration {
        self.interval + self.jitter
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Timestamp,
    probes_in_flight: u32,
    /// Counts half-open periods; a probe permit carries the one it was taken in.
    half_open_generation: u64,
    transitions: u64,
    /// When the monitor will check next while the breaker is not closed (set by
    /// [`CircuitBreaker::next_check_in`]); `None` when no monitor schedules checks,
    /// so the retry-after falls back to the reset timeout.
    next_probe_at: Option<Timestamp>,
}

/// A circuit breaker. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    probe: ProbeSchedule,
    clock: SharedClock,
    inner: Mutex<Inner>,
    /// Woken when the breaker opens, so a monitor sleeping a long
    /// `health_check_interval` starts probing at once.
    opened: Arc<Notify>,
}

/// Permission to make one call; report its outcome with [`Permit::record`] (or
/// [`CircuitBreaker::record`]). Dropping it unreported, e.g. because the call's future
/// was dropped, counts as neither outcome and gives a half-open probe slot back.
#[derive(Debug)]
#[must_use = "report the call's outcome with Permit::record"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// `Some(generation)` for a half-open probe holding a slot; taken (set to `None`)
    /// when the slot is returned, so it is returned once.
    probe: Option<u64>,
}

impl Permit<'_> {
    /// Whether this permit holds a half-open probe slot.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Reports the call's outcome: `true` when the backend answered (any answer that
    /// is not a backend failure counts as success). Returns the probe slot.
    pub fn record(mut self, success: bool) {
        let breaker = self.breaker;
        let mut inner = breaker.lock();
        let probe = self.give_back(&mut inner);
        breaker.outcome(&mut inner, success, probe);
    }

    /// Gives the permit back without an outcome (a probe slot is freed). The same as
    /// dropping it.
    pub fn release(self) {
        drop(self);
    }

    /// Frees the probe slot if this permit still holds one; true if it was a probe.
    fn give_back(&mut self, inner: &mut Inner) -> bool {
        match self.probe.take() {
            Some(generation) => {
                if inner.state == BreakerState::HalfOpen && inner.half_open_generation == generation
                {
                    inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                }
                true
            }
            None => false,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe.is_some() {
            let mut inner = self.breaker.lock();
            self.give_back(&mut inner);
        }
    }
}

/// The breaker refused the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// When a retry may succeed.
    pub retry_after: Duration,
    pub state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings, clock: SharedClock) -> Self {
        CircuitBreaker {
            settings,
            probe: ProbeSchedule::default(),
            clock,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Timestamp::ZERO,
                probes_in_flight: 0,
                half_open_generation: 0,
                transitions: 0,
                next_probe_at: None,
            }),
            opened: Arc::new(Notify::new()),
        }
    }

    /// The same breaker probing on `probe` instead of [`ProbeSchedule::default`].
    pub fn with_probe_schedule(mut self, probe: ProbeSchedule) -> Self {
        self.probe = probe;
        self
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    pub fn probe_schedule(&self) -> ProbeSchedule {
        self.probe
    }

    /// Notified (one stored permit) whenever the breaker opens.
    pub fn opened_signal(&self) -> Arc<Notify> {
        self.opened.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now (an open breaker whose reset timeout has passed reads half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner);
        inner.state
    }

    /// State changes since start.
    pub fn transitions(&self) -> u64 {
        self.lock().transitions
    }

    fn set(&self, inner: &mut Inner, to: BreakerState, why: &str) {
        if inner.state == to {
            return;
        }
        let from = inner.state;
        inner.state = to;
        inner.transitions += 1;
        match to {
            BreakerState::Open => {
                // A monitor, if one runs, probes from now on at the probe schedule.
                if inner.next_probe_at.is_some() {
                    inner.next_probe_at = Some(self.clock.now());
                }
                self.opened.notify_one();
                tracing::warn!(
                    from = from.as_str(),
                    reason = why,
                    "circuit breaker opened: backend calls fail fast"
                )
            }
            BreakerState::HalfOpen => tracing::info!(
                from = from.as_str(),
                reason = why,
                "circuit breaker half-open: probing the backend"
            ),
            BreakerState::Closed => tracing::info!(
                from = from.as_str(),
                reason = why,
                "circuit breaker closed: backend healthy again"
            ),
        }
    }

    fn advance(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && self.clock.now() >= inner.opened_at.add(self.settings.reset_timeout)
        {
            inner.probes_in_flight = 0;
            inner.half_open_generation += 1;
            self.set(inner, BreakerState::HalfOpen, "reset timeout passed");
        }
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut inner = self.lock();
        self.advance(&mut inner);
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                breaker: self,
                probe: None,
            }),
            BreakerState::Open => {
                let now = self.clock.now();
                let reset = inner.opened_at.add(self.settings.reset_timeout).since(now);
                // The next check may close it: then a retry can succeed. Its round
                // trip is not known; the longest probe delay stands in for it.
                let retry_after = match inner.next_probe_at {
                    Some(at) => (at.since(now) + self.probe.max_delay()).min(reset),
                    None => reset,
                };
                Err(Rejected {
                    retry_after,
                    state: BreakerState::Open,
                })
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight >= self.settings.half_open_max_requests {
                    Err(Rejected {
                        retry_after: self.probe.max_delay(),
                        state: BreakerState::HalfOpen,
                    })
                } else {
                    inner.probes_in_flight += 1;
                    Ok(Permit {
                        breaker: self,
                        probe: Some(inner.half_open_generation),
                    })
                }
            }
        }
    }

    /// Reports a call's outcome: `true` when the backend answered (any answer that is
    /// not a backend failure counts as success). The same as [`Permit::record`].
    pub fn record(&self, permit: Permit<'_>, success: bool) {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "a permit of another breaker"
        );
        permit.record(success);
    }

    /// Gives a permit back without an outcome (a probe slot is freed). The same as
    /// dropping it.
    pub fn release(&self, permit: Permit<'_>) {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "a permit of another breaker"
        );
        permit.release();
    }

    /// Reports a health check's outcome: `true` when the store answered the check
    /// (whatever it reported about itself). Checks need no permit: they must run while
    /// the breaker is open, or it could never learn the store is back.
    ///
    /// Open or half-open: an answer closes the breaker at once; a failure keeps it
    /// open (from open, the reset timeout still counts from the opening, so it stays
    /// an upper bound; from half-open it reopens, as a failed probe call does).
    /// Closed: a failure counts towards `failure_threshold` like a failed call.
    pub fn record_check(&self, success: bool) {
        let mut inner = self.lock();
        self.advance(&mut inner);
        if success {
            inner.consecutive_failures = 0;
            if inner.state != BreakerState::Closed {
                self.set(&mut inner, BreakerState::Closed, "health check answered");
            }
            return;
        }
        if inner.state == BreakerState::Open {
            return;
        }
        let probe = inner.state == BreakerState::HalfOpen;
        self.outcome(&mut inner, false, probe);
    }

    /// How long the monitor waits before its next check: `health_check_interval`
    /// while closed; while open or half-open one jittered [`ProbeSchedule`] delay
    /// (never longer than `health_check_interval`). Records when that check is due,
    /// for the retry-after of refused calls.
    pub fn next_check_in(&self, health_check_interval: Duration) -> Duration {
        self.next_check_in_with(health_check_interval, uniform())
    }

    /// [`CircuitBreaker::next_check_in`] with the jitter's uniform draw given.
    pub fn next_check_in_with(&self, health_check_interval: Duration, unit: f64) -> Duration {
        let mut inner = self.lock();
        self.advance(&mut inner);
        let delay = match inner.state {
            BreakerState::Closed => health_check_interval,
            BreakerState::Open | BreakerState::HalfOpen => {
                self.probe.delay(unit).min(health_check_interval)
            }
        };
        inner.next_probe_at = Some(self.clock.now().add(delay));
        delay
    }

    fn outcome(&self, inner: &mut Inner, success: bool, probe: bool) {
        if success {
            inner.consecutive_failures = 0;
            if inner.state == BreakerState::HalfOpen && probe {
                self.set(inner, BreakerState::Closed, "probe succeeded");
            }
            return;
        }
        inner.consecutive_failures += 1;
        match inner.state {
            BreakerState::Closed
                if inner.consecutive_failures >= self.settings.failure_threshold =>
            {
                inner.opened_at = self.clock.now();
                self.set(inner, BreakerState::Open, "failure threshold reached");
            }
            BreakerState::HalfOpen => {
                inner.opened_at = self.clock.now();
                self.set(inner, BreakerState::Open, "probe failed");
            }
            _ => {}
        }
    }
}

/// A uniform draw in `[0, 1)` for the probe jitter. Not for secrets: std's
/// `RandomState` is seeded from the operating system once per thread and its hasher
/// output is spread well enough to keep servers from probing in step, without a
/// random-number crate for one number every 250 ms.
fn uniform() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tflock_core::{Clock, ManualClock};

    use super::*;

    fn breaker() -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let b = CircuitBreaker::new(
            BreakerSettings {
                failure_threshold: 3,
                reset_timeout: Duration::from_secs(30),
                half_open_max_requests: 2,
            },
            Arc::new(clock.clone()),
        );
        (b, clock)
    }

    fn fail(b: &CircuitBreaker) {
        let p = b.try_acquire().unwrap();
        b.record(p, false);
    }

    #[test]
    fn closed_stays_closed_below_the_threshold_and_successes_reset_the_count() {
        let (b, _) = breaker();
        fail(&b);
        fail(&b);
        assert_a_success_restarts_the_count(&b);
    }

    #[test]
    fn closed_opens_at_the_threshold() {
        let (b, _) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.state, BreakerState::Open);
        assert_eq!(r.retry_after, Duration::from_secs(30));
    }

    #[test]
    fn open_turns_half_open_after_reset_timeout() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(29));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_lets_through_at_most_n_probes() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::HalfOpen);
        drop((p1, p2));
    }

    #[test]
    fn dropped_half_open_permits_give_their_probe_slots_back() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        // Both probe slots taken, then the calls are dropped (cancelled) unreported.
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::HalfOpen);
        drop(p1);
        drop(p2);
        // Neither outcome: still half-open, and both slots are free again.
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p3 = b.try_acquire().expect("a slot freed by a dropped permit");
        let p4 = b
            .try_acquire()
            .expect("the other slot freed by a dropped permit");
        assert!(b.try_acquire().is_err());
        drop(p3);
        b.record(p4, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_from_an_earlier_half_open_period_frees_no_slot_of_the_next() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        let old = b.try_acquire().unwrap();
        // Another probe fails: open again, then half-open again with fresh slots.
        let p = b.try_acquire().unwrap();
        b.record(p, false);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(30));
        let n1 = b.try_acquire().unwrap();
        let n2 = b.try_acquire().unwrap();
        // The old probe ends now: it must not free one of the new period's slots.
        drop(old);
        assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::HalfOpen);
        n1.release();
        let n3 = b.try_acquire().expect("n1's slot");
        drop((n2, n3));
    }

    #[test]
    fn every_path_returns_the_slot_once() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        // Unused (released), dropped, and a closed-state permit: none frees more than
        // its own slot.
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        b.release(p1);
        drop(p2);
        let p3 = b.try_acquire().unwrap();
        let p4 = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err());
        // A success closes it; the other probe's later drop changes nothing.
        p3.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        drop(p4);
        let c = b.try_acquire().unwrap();
        assert!(!c.is_probe());
        drop(c);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_success_closes() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        let p = b.try_acquire().unwrap();
        b.record(p, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[test]
    fn half_open_failure_reopens_for_a_full_reset_timeout() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        let p = b.try_acquire().unwrap();
        b.record(p, false);
        assert_open_for_a_full_reset_timeout(&b, &clock);
    }

    #[test]
    fn failed_health_checks_count_and_a_good_check_while_open_closes_it_at_once() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_check(false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        // Before: the good check was ignored until the 30 s reset timeout had passed.
        clock.advance(Duration::from_millis(250));
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.try_acquire().unwrap().is_probe());
        assert_eq!(b.transitions(), 2, "closed -> open -> closed");
    }

    /// A closed breaker passes a call (no probe) whose success restarts the failure
    /// count: two failures after it, below the threshold of 3, leave it closed.
    fn assert_a_success_restarts_the_count(b: &CircuitBreaker) {
        let p = b.try_acquire().expect("closed: calls pass");
        assert!(!p.is_probe());
        b.record(p, true);
        fail(b);
        fail(b);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Just reopened: open for a full reset timeout (30 s), then half-open.
    fn assert_open_for_a_full_reset_timeout(b: &CircuitBreaker, clock: &ManualClock) {
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(29));
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    fn open(b: &CircuitBreaker) {
        for _ in 0..3 {
            fail(b);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn the_monitor_probes_on_the_probe_schedule_while_open_and_its_interval_while_closed() {
        let (b, clock) = breaker();
        let interval = Duration::from_secs(10);
        assert_eq!(b.next_check_in_with(interval, 0.5), interval);
        open(&b);
        let probe = b.probe_schedule();
        assert_eq!(probe, ProbeSchedule::default());
        assert_eq!(
            b.next_check_in_with(interval, 0.0),
            Duration::from_millis(200)
        );
        assert_eq!(
            b.next_check_in_with(interval, 0.5),
            Duration::from_millis(250)
        );
        assert_eq!(
            b.next_check_in_with(interval, 1.0),
            Duration::from_millis(300)
        );
        // A faster health_check_interval is never slowed down by the probe schedule.
        assert_eq!(
            b.next_check_in_with(Duration::from_millis(100), 1.0),
            Duration::from_millis(100)
        );
        // Half-open (reset timeout passed) probes on the schedule too.
        clock.advance(Duration::from_secs(30));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.next_check_in_with(interval, 0.5),
            Duration::from_millis(250)
        );
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.next_check_in_with(interval, 0.5), interval);
    }

    #[test]
    fn an_open_breaker_closes_on_the_first_answering_probe() {
        let (b, clock) = breaker();
        open(&b);
        let interval = Duration::from_secs(10);
        // Store down: each probe fails and the breaker stays open, refusing calls.
        for _ in 0..8 {
            let d = b.next_check_in_with(interval, 0.5);
            clock.advance(d);
            b.record_check(false);
            assert_eq!(b.state(), BreakerState::Open);
            assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::Open);
        }
        // Two seconds into a 30 s reset timeout the store answers: closed now.
        let d = b.next_check_in_with(interval, 0.5);
        clock.advance(d);
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Closed);
        // And the failure count starts from zero: it takes the full threshold again.
        assert_a_success_restarts_the_count(&b);
    }

    #[test]
    fn reset_timeout_is_an_upper_bound_that_failed_probes_do_not_extend() {
        let (b, clock) = breaker();
        open(&b);
        let opened = clock.now();
        let interval = Duration::from_secs(10);
        // Probes fail for the whole reset timeout: it still ends 30 s after opening.
        loop {
            let d = b.next_check_in_with(interval, 1.0);
            if clock.now().add(d) >= opened.add(Duration::from_secs(30)) {
                break;
            }
            clock.advance(d);
            b.record_check(false);
            assert_eq!(b.state(), BreakerState::Open);
        }
        clock.advance(opened.add(Duration::from_secs(30)).since(clock.now()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_max_requests_is_honoured_when_the_reset_timeout_passes_without_a_good_probe() {
        let (b, clock) = breaker();
        open(&b);
        clock.advance(Duration::from_secs(30));
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.state, BreakerState::HalfOpen);
        assert!(r.retry_after <= b.probe_schedule().max_delay(), "{r:?}");
        // A good health check closes it while the probe calls still run.
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Closed);
        drop((p1, p2));
        assert!(!b.try_acquire().unwrap().is_probe());
    }

    #[test]
    fn a_failed_check_while_half_open_reopens_for_a_full_reset_timeout() {
        let (b, clock) = breaker();
        open(&b);
        clock.advance(Duration::from_secs(30));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record_check(false);
        assert_open_for_a_full_reset_timeout(&b, &clock);
    }

    #[test]
    fn the_probe_jitter_is_bounded_and_spread() {
        let s = ProbeSchedule::default();
        assert_eq!(s.delay(0.0), Duration::from_millis(200));
        assert_eq!(s.delay(1.0), Duration::from_millis(300));
        assert_eq!(s.delay(-3.0), Duration::from_millis(200));
        assert_eq!(s.delay(7.0), Duration::from_millis(300));
        assert_eq!(s.delay(f64::NAN), Duration::from_millis(250));
        assert_eq!(s.max_delay(), Duration::from_millis(300));
        // A jitter larger than the interval never gives a negative delay.
        let wide = ProbeSchedule {
            interval: Duration::from_millis(100),
            jitter: Duration::from_millis(500),
        };
        assert_eq!(wide.delay(0.0), Duration::ZERO);
        assert_eq!(wide.delay(1.0), Duration::from_millis(600));

        let (b, _) = breaker();
        open(&b);
        let draws: Vec<Duration> = (0..2000)
            .map(|_| b.next_check_in(Duration::from_secs(10)))
            .collect();
        let (lo, hi) = (Duration::from_millis(200), Duration::from_millis(300));
        assert!(draws.iter().all(|d| (lo..=hi).contains(d)), "{draws:?}");
        let min = draws.iter().min().unwrap();
        let max = draws.iter().max().unwrap();
        // Spread: 2,000 uniform draws over 100 ms land within 10 ms of both ends.
        assert!(*min < Duration::from_millis(210), "{min:?}");
        assert!(*max > Duration::from_millis(290), "{max:?}");
    }

    #[test]
    fn refused_calls_are_told_to_retry_after_the_next_probe_when_a_monitor_probes() {
        let (b, _) = breaker();
        open(&b);
        // No monitor scheduled a check: only the reset timeout can let a call through.
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(30)
        );
        let d = b.next_check_in_with(Duration::from_secs(10), 0.5);
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.retry_after, d + b.probe_schedule().max_delay());
        // Opened again later: the retry-after follows the monitor at once.
        b.record_check(true);
        open(&b);
        assert!(
            b.try_acquire().unwrap_err().retry_after <= b.probe_schedule().max_delay(),
            "probing from the moment it opens"
        );
    }

    #[tokio::test]
    async fn opening_wakes_a_waiting_monitor() {
        let (b, _) = breaker();
        let signal = b.opened_signal();
        let waiter = tokio::spawn(async move { signal.notified().await });
        tokio::task::yield_now().await;
        open(&b);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the monitor was woken")
            .unwrap();
    }
}
