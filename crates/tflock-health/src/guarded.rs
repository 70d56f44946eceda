//! [`GuardedBackend`]: every call of an inner backend behind the circuit breaker and
//! into the metrics window; [`spawn_monitor`]: the periodic health check that feeds the
//! breaker; [`Health`]: what `/api/health/locking` and `tflock health` report.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, ErrorCode, LeaseId, Lock,
    LockEvent, LockFilter, LockPage, LockRequest, LockResponse, Owner, PullUnlockResponse,
    QueryError, QueueEntryView, QueueStatus, RefreshError, Resource, SharedBackend, SharedClock,
    Timestamp, TransferAuth, TransferError, TryLockError, UnlockError, UnlockResponse,
};

use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
use crate::window::Window;

/// The spec's HealthMetrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMetrics {
    pub connections_active: i64,
    pub connections_total: i64,
    #[serde(with = "humantime_serde")]
    pub response_time: Duration,
    pub memory_usage: i64,
    pub slow_queries: i64,
    pub last_health_check: Option<Timestamp>,
    pub circuit_breaker_state: BreakerState,
}

/// The spec's PerformanceMetrics (over the last 60 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceMetrics {
    pub operations_per_second: f64,
    #[serde(with = "humantime_serde")]
    pub average_latency: Duration,
    #[serde(with = "humantime_serde")]
    pub p95_latency: Duration,
    #[serde(with = "humantime_serde")]
    pub p99_latency: Duration,
    pub error_rate: f64,
    pub queue_depth: u64,
    pub active_locks: u64,
}

/// Everything `/api/health/locking` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub backend: String,
    pub healthy: bool,
    pub circuit_breaker_state: BreakerState,
    pub health: HealthMetrics,
    pub performance: PerformanceMetrics,
    /// The last health check's own findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<BackendHealth>,
    /// Why the last check failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Shared health state of one backend.
pub struct Health {
    backend_name: &'static str,
    pub breaker: CircuitBreaker,
    /// `None` with `enable_metrics: false`: nothing is timed or recorded.
    pub window: Option<Window>,
    clock: SharedClock,
    last: Mutex<(Option<BackendHealth>, Option<String>, Option<Timestamp>)>,
}

impl Health {
    pub fn new(
        backend_name: &'static str,
        breaker: BreakerSettings,
        enable_metrics: bool,
        clock: SharedClock,
    ) -> Self {
        Health {
            backend_name,
            breaker: CircuitBreaker::new(breaker, clock.clone()),
            window: enable_metrics.then(|| Window::new(clock.clone())),
            clock,
            last: Mutex::new((None, None, None)),
        }
    }

    /// Records a health check's result. For the breaker, any check that got an
    /// answer (`Ok`, also with `healthy: false`) is a success: its question is "does
    /// the store answer", and a store that answers but reports a problem (a
    /// persistence warning, data lost) is reported unhealthy, not cut off. See
    /// [`crate::breaker`].
    pub fn record_check(&self, result: Result<BackendHealth, String>) {
        self.breaker.record_check(result.is_ok());
        let now = self.clock.now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(h) => *last = (Some(h), None, Some(now)),
            Err(e) => {
                last.1 = Some(e);
                last.2 = Some(now);
            }
        }
    }

    /// The report, with lock and queue counts from `metrics` when the backend gave them.
    pub fn report(&self, counts: Option<BackendMetrics>) -> HealthReport {
        let state = self.breaker.state();
        let (check, error, at) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let detail = |keys: &[&str]| -> i64 {
            check
                .as_ref()
                .and_then(|c| {
                    keys.iter()
                        .find_map(|k| c.details.get(*k).and_then(|v| v.as_i64()))
                })
                .unwrap_or(0)
        };
        let stats = self.window.as_ref().map(|w| w.stats());
        let counts = counts.unwrap_or_default();
        let healthy = state == BreakerState::Closed
            && error.is_none()
            && check.as_ref().is_none_or(|c| c.healthy);
        HealthReport {
            backend: self.backend_name.to_string(),
            healthy,
            circuit_breaker_state: state,
            health: HealthMetrics {
                connections_active: detail(&["connections_active", "connected_clients"]),
                connections_total: detail(&["connections_total", "total_connections_received"]),
                response_time: check.as_ref().map(|c| c.response_time).unwrap_or_default(),
                memory_usage: detail(&["memory_usage", "used_memory", "memory_usage_bytes"]),
                slow_queries: detail(&["slow_queries", "slowlog_len"]),
                last_health_check: at,
                circuit_breaker_state: state,
            },
            performance: PerformanceMetrics {
                operations_per_second: stats.map_or(0.0, |s| s.operations_per_second),
                average_latency: stats.map_or(Duration::ZERO, |s| s.average_latency),
                p95_latency: stats.map_or(Duration::ZERO, |s| s.p95_latency),
                p99_latency: stats.map_or(Duration::ZERO, |s| s.p99_latency),
                error_rate: stats.map_or(0.0, |s| s.error_rate),
                queue_depth: counts.queue_depth,
                active_locks: counts.active_locks,
            },
            last_check: check,
            last_error: error,
        }
    }

    /// While the breaker refuses calls: how long until it may let one through.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.breaker.try_acquire() {
            Ok(p) => {
                // Only asked, not used: give the probe slot back.
                p.release();
                None
            }
            Err(r) => Some(r.retry_after),
        }
    }
}

impl CircuitBreaker {
    /// Returns a permit without reporting an outcome (the same as dropping it).
    pub fn record_unused(&self, permit: crate::breaker::Permit<'_>) {
        self.release(permit);
    }
}

/// An operation error with a stable code.
trait Coded {
    fn error_code(&self) -> ErrorCode;
}

macro_rules! coded {
    ($($t:ty),*) => { $(impl Coded for $t { fn error_code(&self) -> ErrorCode { self.code() } })* };
}
coded!(
    TryLockError,
    UnlockError,
    RefreshError,
    TransferError,
    CancelError,
    QueryError,
    tflock_core::ImportError
);

impl Coded for BackendError {
    fn error_code(&self) -> ErrorCode {
        self.code()
    }
}

/// A backend behind the breaker, timed into the window.
pub struct GuardedBackend {
    inner: SharedBackend,
    health: Arc<Health>,
}

impl GuardedBackend {
    pub fn new(inner: SharedBackend, health: Arc<Health>) -> Self {
        GuardedBackend { inner, health }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    async fn call<T, E, F>(&self, timed: bool, f: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<BackendError> + Coded,
    {
        // The permit lives in this future: if the future is dropped before the call
        // ends (caller cancelled, timeout), dropping the permit gives its probe slot
        // back (see `breaker`), and the call counts as neither outcome.
        let permit = match self.health.breaker.try_acquire() {
            Ok(p) => p,
            Err(r) => {
                return Err(BackendError::Unavailable(format!(
                    "circuit breaker is {}: the backend failed repeatedly; retry in {}s",
                    r.state.as_str().replace('_', "-"),
                    r.retry_after.as_secs().max(1)
                ))
                .into());
            }
        };
        // Only a timed call with a window to record it in is timed.
        let window = self.health.window.as_ref().filter(|_| timed);
        let start = window.map(|_| Instant::now());
        let r = f.await;
        let failed = matches!(
            r.as_ref().err().map(Coded::error_code),
            Some(ErrorCode::BackendUnavailable | ErrorCode::Internal)
        );
        permit.record(!failed);
        if let (Some(w), Some(start)) = (window, start) {
            w.record(start.elapsed(), failed);
        }
        r
    }
}

#[async_trait]
impl Backend for GuardedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        // A waiting call's duration is mostly queueing, not backend latency.
        let timed = request.wait.is_none();
        self.call(timed, self.inner.try_lock(request)).await
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        self.call(true, self.inner.unlock(resource, lease_id)).await
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<tflock_core::FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        self.call(true, self.inner.force_unlock(resource, expected_token))
            .await
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        self.call(true, self.inner.unlock_by_pull(repo, pull)).await
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        self.call(true, self.inner.refresh_lock(resource, lease_id, ttl))
            .await
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        self.call(true, self.inner.transfer_lock(resource, auth, to))
            .await
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        self.call(true, self.inner.get_lock(resource)).await
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        self.call(true, self.inner.list_locks(filter)).await
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        self.call(true, self.inner.get_queue_status(resource)).await
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        self.call(true, self.inner.get_user_queue(username)).await
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        self.call(
            true,
            self.inner.cancel_queue_entry(entry_id, expected_resource),
        )
        .await
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        // Not behind the breaker: a check must reach the store to learn it is back.
        self.inner.health_check().await
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        self.call(false, self.inner.get_metrics()).await
    }

    async fn export(&self) -> Result<tflock_core::Snapshot, BackendError> {
        self.call(false, self.inner.export()).await
    }

    async fn import(
        &self,
        snapshot: tflock_core::Snapshot,
        options: tflock_core::ImportOptions,
    ) -> Result<tflock_core::ImportReport, tflock_core::ImportError> {
        self.call(false, self.inner.import(snapshot, options)).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LockEvent> {
        self.inner.subscribe()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// Checks the backend every `interval` (each check bounded by `timeout`) and feeds
/// the result to the breaker. While the breaker is open or half-open it checks on the
/// breaker's [`crate::breaker::ProbeSchedule`] instead (250 ms ± 50 ms by default,
/// never slower than `interval`), and a breaker that opens between two checks wakes it
/// at once, so an answering store closes the breaker within one probe delay plus one
/// round trip. Stops when `health` is the last reference left.
pub fn spawn_monitor(
    inner: SharedBackend,
    health: Arc<Health>,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&health);
    let opened = health.breaker.opened_signal();
    drop(health);
    tokio::spawn(async move {
        loop {
            let r = tokio::time::timeout(timeout, inner.health_check()).await;
            let Some(health) = weak.upgrade() else { return };
            let result = match r {
                Ok(Ok(h)) => Ok(h),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "health check timed out after {}",
                    humantime::format_duration(timeout)
                )),
            };
            if let Err(e) = &result {
                // While probing an open breaker this repeats every probe: debug, not
                // warn (the breaker's own transitions are logged at warn and info).
                if health.breaker.state() == BreakerState::Closed {
                    tracing::warn!(error = %e, "backend health check failed");
                } else {
                    tracing::debug!(error = %e, "backend health check (probe) failed");
                }
            }
            health.record_check(result);
            let delay = health.breaker.next_check_in(interval);
            drop(health);
            // Either the delay passes or the breaker opens (a stored permit from an
            // earlier opening only brings one check forward: harmless).
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = opened.notified() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tflock_core::{Clock, ManualClock};

    use super::*;

    fn check(healthy: bool, clock: &ManualClock) -> BackendHealth {
        let mut details = serde_json::Map::new();
        if !healthy {
            details.insert("reason".into(), "data_lost".into());
        }
        BackendHealth {
            backend: "redis".into(),
            healthy,
            response_time: Duration::from_millis(1),
            checked_at: clock.now(),
            details,
        }
    }

    /// The boundary with data-loss detection: a store that answers its check but
    /// reports itself unhealthy is reachable, so the breaker closes (calls reach it);
    /// the report still says unhealthy, with the check's reason.
    #[test]
    fn an_answered_but_unhealthy_check_closes_the_breaker_and_is_reported_unhealthy() {
        let clock = ManualClock::starting_now();
        let health = Health::new(
            "redis",
            BreakerSettings {
                failure_threshold: 2,
                reset_timeout: Duration::from_secs(30),
                half_open_max_requests: 1,
            },
            false,
            Arc::new(clock.clone()),
        );
        health.record_check(Err("connection refused".into()));
        health.record_check(Err("connection refused".into()));
        assert_eq!(health.breaker.state(), BreakerState::Open);
        assert!(!health.report(None).healthy);

        clock.advance(Duration::from_millis(250));
        health.record_check(Ok(check(false, &clock)));
        assert_eq!(health.breaker.state(), BreakerState::Closed);
        let report = health.report(None);
        assert!(!report.healthy, "{report:?}");
        assert_eq!(report.circuit_breaker_state, BreakerState::Closed);
        assert_eq!(
            report.last_check.as_ref().unwrap().details["reason"],
            "data_lost"
        );
        assert_eq!(health.retry_after(), None, "calls pass");

        // While closed, unhealthy answers never count as failures either.
        for _ in 0..5 {
            health.record_check(Ok(check(false, &clock)));
        }
        assert_eq!(health.breaker.state(), BreakerState::Closed);
        health.record_check(Ok(check(true, &clock)));
        assert!(health.report(None).healthy);
    }
}
