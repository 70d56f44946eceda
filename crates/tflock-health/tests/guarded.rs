//! The breaker around a real (embedded) backend: failures open it, it then refuses
//! calls without reaching the store, and the report shows each state.

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, ErrorCode, LockRequest, LockSettings, ManualClock, Resource, SharedBackend,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_health::{BreakerSettings, BreakerState, GuardedBackend, Health};

#[tokio::test]
async fn failures_open_the_breaker_and_it_recovers_after_reset_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let store = EmbeddedBackend::open(
        EmbeddedConfig {
            path: dir.path().join("l.redb"),
            settings: LockSettings::default(),
        },
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let inner: SharedBackend = store.clone();
    let health = Arc::new(Health::new(
        "embedded",
        BreakerSettings {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(30),
            half_open_max_requests: 1,
        },
        true,
        Arc::new(clock.clone()),
    ));
    let guarded = GuardedBackend::new(inner.clone(), health.clone());
    let r = Resource::new("o/r", ".", "default", "").unwrap();

    // Healthy: calls pass and are measured.
    let l = guarded
        .try_lock(LockRequest::new(r.clone(), "a"))
        .await
        .unwrap()
        .lock
        .unwrap();
    guarded
        .unlock(&r, l.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let report = health.report(None);
    assert_eq!(report.circuit_breaker_state, BreakerState::Closed);
    assert!(report.healthy);
    assert!(report.performance.operations_per_second > 0.0);

    // The store goes away: every call fails; the third opens the breaker.
    store.close().await;
    for _ in 0..3 {
        let e = guarded
            .try_lock(LockRequest::new(r.clone(), "a"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BackendUnavailable);
        assert!(!e.to_string().contains("circuit breaker"), "{e}");
    }
    assert_eq!(health.breaker.state(), BreakerState::Open);
    let e = guarded
        .try_lock(LockRequest::new(r.clone(), "a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BackendUnavailable);
    assert!(e.to_string().contains("circuit breaker is open"), "{e}");
    assert_eq!(health.retry_after(), Some(Duration::from_secs(30)));
    let report = health.report(None);
    assert!(!report.healthy);
    assert_eq!(report.circuit_breaker_state, BreakerState::Open);
    assert!(report.performance.error_rate > 0.0);

    // After the reset timeout it lets one probe through; the store is still closed, so
    // the probe fails and it opens again.
    clock.advance(Duration::from_secs(30));
    assert_eq!(health.breaker.state(), BreakerState::HalfOpen);
    assert_eq!(
        health.report(None).circuit_breaker_state,
        BreakerState::HalfOpen
    );
    let e = guarded.get_lock(&r).await.unwrap_err();
    assert!(
        !e.to_string().contains("circuit breaker"),
        "the probe reached the store: {e}"
    );
    assert_eq!(health.breaker.state(), BreakerState::Open);
}

#[tokio::test]
async fn health_checks_feed_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let store = EmbeddedBackend::open(
        EmbeddedConfig {
            path: dir.path().join("l.redb"),
            settings: LockSettings::default(),
        },
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let health = Arc::new(Health::new(
        "embedded",
        BreakerSettings {
            failure_threshold: 2,
            ..Default::default()
        },
        true,
        Arc::new(clock.clone()),
    ));
    health.record_check(store.health_check().await.map_err(|e| e.to_string()));
    let report = health.report(Some(store.get_metrics().await.unwrap()));
    assert!(report.healthy);
    assert!(report.health.last_health_check.is_some());
    store.close().await;
    for _ in 0..2 {
        health.record_check(store.health_check().await.map_err(|e| e.to_string()));
    }
    let report = health.report(None);
    assert_eq!(report.circuit_breaker_state, BreakerState::Open);
    assert!(report.last_error.is_some());
}

#[tokio::test]
async fn metrics_off_records_nothing() {
    let clock = ManualClock::starting_now();
    let health = Health::new(
        "embedded",
        BreakerSettings::default(),
        false,
        Arc::new(clock),
    );
    assert!(health.window.is_none());
    assert_eq!(health.report(None).performance.operations_per_second, 0.0);
}
