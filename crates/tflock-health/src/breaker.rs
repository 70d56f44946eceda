//! The circuit breaker: closed, open, half-open, on an injectable clock.
//!
//! Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls
//! fail at once with `backend_unavailable` and a retry-after, so callers never hang on
//! a dead store; after `reset_timeout` the next call finds it half-open. Half-open: at
//! most `half_open_max_requests` probes pass at a time; one success closes it, one
//! failure opens it again. Every transition is logged and counted.
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

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::{SharedClock, Timestamp};

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

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Timestamp,
    probes_in_flight: u32,
    /// Counts half-open periods; a probe permit carries the one it was taken in.
    half_open_generation: u64,
    transitions: u64,
}

/// A circuit breaker. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    clock: SharedClock,
    inner: Mutex<Inner>,
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
            clock,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Timestamp::ZERO,
                probes_in_flight: 0,
                half_open_generation: 0,
                transitions: 0,
            }),
        }
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
        metrics::counter!("tflock_breaker_transitions_total", "from" => from.as_str(), "to" => to.as_str()).increment(1);
        metrics::gauge!("tflock_breaker_state").set(to.gauge());
        match to {
            BreakerState::Open => tracing::warn!(
                from = from.as_str(),
                reason = why,
                "circuit breaker opened: backend calls fail fast"
            ),
            BreakerState::HalfOpen => tracing::info!(
                from = from.as_str(),
                "circuit breaker half-open: probing the backend"
            ),
            BreakerState::Closed => tracing::info!(
                from = from.as_str(),
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
                let until = inner.opened_at.add(self.settings.reset_timeout);
                Err(Rejected {
                    retry_after: until.since(self.clock.now()).max(Duration::from_secs(1)),
                    state: BreakerState::Open,
                })
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight >= self.settings.half_open_max_requests {
                    Err(Rejected {
                        retry_after: Duration::from_secs(1),
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

    /// Reports a health check's outcome (it does not need a permit: checks must run
    /// while the breaker is open, or it could never learn the backend is back).
    pub fn record_check(&self, success: bool) {
        let mut inner = self.lock();
        self.advance(&mut inner);
        // A successful check while open does not close the breaker by itself: it waits
        // for the reset timeout, then real calls probe.
        if inner.state == BreakerState::Open && success {
            return;
        }
        let probe = inner.state == BreakerState::HalfOpen;
        self.outcome(&mut inner, success, probe);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tflock_core::ManualClock;

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
        let p = b.try_acquire().unwrap();
        b.record(p, true);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
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
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(29));
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn failed_health_checks_count_and_a_good_check_while_open_waits_for_the_timeout() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.record_check(false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(30));
        b.record_check(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.transitions(), 3);
    }
}
