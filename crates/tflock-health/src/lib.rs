//! Health for any tflock backend: a circuit breaker that fails closed, a periodic
//! health monitor, and the spec's HealthMetrics and PerformanceMetrics.
//!
//! # Layout
//!
//! - [`breaker`]: the closed / open / half-open state machine on an injectable clock,
//!   and the probe schedule the monitor follows while it is open (250 ms ± 50 ms; the
//!   first answered check closes it, `reset_timeout` is only an upper bound).
//! - [`window`]: latency percentiles, throughput and error rate over the last 60 s.
//! - [`guarded`]: [`GuardedBackend`], a [`tflock_core::Backend`] that puts every call
//!   of an inner backend behind the breaker and into the window, and the monitor task.
//!
//! The breaker fails *closed*: while it is open no call reaches the store, so no grant
//! can be reported, and callers get `backend_unavailable` at once instead of waiting
//! for a timeout.

pub mod breaker;
pub mod guarded;
pub mod window;

pub use breaker::{BreakerSettings, BreakerState, CircuitBreaker, ProbeSchedule};
pub use guarded::{
    GuardedBackend, Health, HealthMetrics, HealthReport, PerformanceMetrics, spawn_monitor,
};
pub use window::{Window, WindowStats};
