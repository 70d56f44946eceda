//! Latency and outcome statistics over a sliding window (the spec's
//! PerformanceMetrics), kept in HDR histograms.
//!
//! The window is six ten-second slots; a slot older than the window is cleared when
//! the clock reaches it again, so reading merges at most the last 60 s. Time comes
//! from the injectable clock, so tests control which slot a sample lands in.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tflock_core::{SharedClock, Timestamp};

const SLOTS: usize = 6;
const SLOT_MICROS: u64 = 10_000_000;

struct Slot {
    /// Which 10 s period this slot holds (time / 10 s).
    period: u64,
    latency_us: Histogram<u64>,
    errors: u64,
}

/// A sliding window of call latencies and errors.
pub struct Window {
    clock: SharedClock,
    slots: Mutex<Vec<Slot>>,
}

/// What the window saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    pub operations: u64,
    pub operations_per_second: f64,
    pub average_latency: Duration,
    pub p95_latency: Duration,
    pub p99_latency: Duration,
    pub error_rate: f64,
}

impl Window {
    pub fn new(clock: SharedClock) -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                period: u64::MAX,
                // 1 µs to 1 hour at 3 significant digits.
                latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid histogram bounds"),
                errors: 0,
            })
            .collect();
        Window {
            clock,
            slots: Mutex::new(slots),
        }
    }

    fn period(now: Timestamp) -> u64 {
        now.as_micros() / SLOT_MICROS
    }

    /// Records one call.
    pub fn record(&self, latency: Duration, error: bool) {
        let period = Self::period(self.clock.now());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[(period % SLOTS as u64) as usize];
        if slot.period != period {
            slot.period = period;
            slot.latency_us.reset();
            slot.errors = 0;
        }
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 3_600_000_000);
        slot.latency_us.saturating_record(us);
        if error {
            slot.errors += 1;
        }
    }

    /// Statistics over the last 60 s.
    pub fn stats(&self) -> WindowStats {
        let now = self.clock.now();
        let current = Self::period(now);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        let mut errors = 0;
        let mut oldest = current;
        for s in slots.iter().filter(|s| {
            s.period != u64::MAX && s.period + (SLOTS as u64) > current && s.period <= current
        }) {
            merged.add(&s.latency_us).expect("same bounds");
            errors += s.errors;
            oldest = oldest.min(s.period);
        }
        let ops = merged.len();
        // Seconds covered: from the start of the oldest slot with data to now.
        let covered = (now.as_micros().saturating_sub(oldest * SLOT_MICROS) as f64 / 1e6).max(1.0);
        let us = |v: u64| Duration::from_micros(v);
        WindowStats {
            operations: ops,
            operations_per_second: ops as f64 / covered,
            average_latency: if ops == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(merged.mean() / 1e6)
            },
            p95_latency: if ops == 0 {
                Duration::ZERO
            } else {
                us(merged.value_at_quantile(0.95))
            },
            p99_latency: if ops == 0 {
                Duration::ZERO
            } else {
                us(merged.value_at_quantile(0.99))
            },
            error_rate: if ops == 0 {
                0.0
            } else {
                errors as f64 / ops as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tflock_core::ManualClock;

    use super::*;

    #[test]
    fn percentiles_match_a_known_distribution() {
        let clock = ManualClock::new(Timestamp(1_000 * SLOT_MICROS));
        let w = Window::new(Arc::new(clock.clone()));
        // 1..=1000 µs, once each: p95 = 950 µs, p99 = 990 µs, mean 500.5 µs.
        for us in 1..=1000u64 {
            w.record(Duration::from_micros(us), us % 100 == 0);
        }
        clock.advance(Duration::from_secs(5));
        let s = w.stats();
        assert_eq!(s.operations, 1000);
        let close = |d: Duration, want_us: f64| {
            (d.as_secs_f64() * 1e6 - want_us).abs() <= want_us * 0.002 + 1.0
        };
        assert!(close(s.p95_latency, 950.0), "p95 {:?}", s.p95_latency);
        assert!(close(s.p99_latency, 990.0), "p99 {:?}", s.p99_latency);
        assert!(
            close(s.average_latency, 500.5),
            "avg {:?}",
            s.average_latency
        );
        assert!((s.error_rate - 0.01).abs() < 1e-9);
        assert!(
            (s.operations_per_second - 200.0).abs() < 1e-6,
            "{}",
            s.operations_per_second
        );
    }

    #[test]
    fn samples_older_than_the_window_drop_out() {
        let clock = ManualClock::new(Timestamp(1_000 * SLOT_MICROS));
        let w = Window::new(Arc::new(clock.clone()));
        w.record(Duration::from_millis(100), true);
        clock.advance(Duration::from_secs(30));
        w.record(Duration::from_millis(1), false);
        assert_eq!(w.stats().operations, 2);
        clock.advance(Duration::from_secs(35));
        let s = w.stats();
        assert_eq!(s.operations, 1, "the 65 s old sample is gone");
        assert_eq!(s.error_rate, 0.0);
        assert!(s.p99_latency < Duration::from_millis(2));
    }
}
