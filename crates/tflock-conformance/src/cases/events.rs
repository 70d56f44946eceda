//! Events, health, metrics and close.

use std::time::Duration;

use tflock_core::{BackendError, ErrorCode, EventKind, TryLockError};

use crate::Harness;
use crate::support::*;

/// `lock.acquired` and `lock.released` carry the resource, its key, the owner, the
/// fencing token and the backend's time.
pub async fn lock_events_carry_resource_owner_and_token<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let mut events = fx.backend.subscribe();
    let lock = fx.lock(request(&r, "o/r#1")).await;
    let acquired = next_event(&mut events, EventKind::LockAcquired, &r).await;
    assert_eq!(acquired.key, r.lock_key());
    assert_eq!(acquired.owner, "o/r#1");
    assert_eq!(acquired.fencing_token, Some(lock.fencing_token));
    assert_eq!(
        acquired.at, lock.acquired_at,
        "the event's time is the grant's"
    );

    fx.advance(Duration::from_secs(5));
    fx.unlock(&lock).await;
    let released = next_event(&mut events, EventKind::LockReleased, &r).await;
    assert_eq!(released.owner, "o/r#1");
    assert_eq!(released.fencing_token, Some(lock.fencing_token));
    assert_eq!(released.at, fx.now());
}

/// `queue.entered` and `queue.left` follow a queue entry by its id.
pub async fn queue_events_follow_an_entry<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    fx.lock(request(&r, "holder")).await;
    let mut events = fx.backend.subscribe();
    let placement = fx.reserve(request(&r, "a")).await;
    let entered = next_event(&mut events, EventKind::QueueEntered, &r).await;
    assert_eq!(entered.owner, "a");
    assert_eq!(
        entered.entry_id.as_deref(),
        Some(placement.entry_id.as_str())
    );
    fx.backend
        .cancel_queue_entry(&placement.entry_id, None)
        .await
        .expect("cancel");
    let left = next_event(&mut events, EventKind::QueueLeft, &r).await;
    assert_eq!(left.owner, "a");
    assert_eq!(left.entry_id.as_deref(), Some(placement.entry_id.as_str()));
}

/// HealthCheck of a working store is healthy and names the backend.
pub async fn health_check_reports_healthy<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let health = bounded("health_check", fx.backend.health_check())
        .await
        .expect("health_check");
    assert!(health.healthy, "a fresh store is unhealthy: {health:?}");
    assert_eq!(health.backend, fx.backend.name());
}

/// GetMetrics counts held locks, queue entries, hand-offs and expiries.
pub async fn metrics_count_locks_queue_handoffs_and_expiries<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let (r1, r2) = (resource("o/r1"), resource("o/r2"));
    let first = fx.lock(request(&r1, "a")).await;
    fx.lock(request(&r2, "b").with_ttl(Duration::from_secs(10)))
        .await;
    fx.reserve(request(&r1, "c")).await;
    let m = fx.backend.get_metrics().await.expect("get_metrics");
    assert_eq!((m.active_locks, m.queue_depth), (2, 1), "{m:?}");
    assert_eq!((m.handoffs, m.expiries), (0, 0), "{m:?}");

    fx.unlock(&first).await;
    let m = fx.backend.get_metrics().await.expect("get_metrics");
    assert_eq!(
        (m.active_locks, m.queue_depth, m.handoffs),
        (2, 0, 1),
        "{m:?}"
    );

    fx.advance(Duration::from_secs(10));
    wait_until("the expired lease is counted", async || {
        let m = fx.backend.get_metrics().await.expect("get_metrics");
        m.expiries == 1 && m.active_locks == 1
    })
    .await;
}

/// Close answers blocked waiters with `backend_unavailable` and refuses later calls
/// the same way (fail closed: no grant).
pub async fn close_answers_waiters_and_later_calls_with_backend_unavailable<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    fx.lock(request(&r, "holder")).await;
    let (waiter, _) = fx
        .spawn_waiter(request(&r, "a").with_wait(Duration::from_secs(300)))
        .await;
    bounded("close", fx.backend.close()).await;
    let answer = join("the waiter at close", waiter).await;
    assert!(
        matches!(
            answer,
            Err(TryLockError::Backend(BackendError::Unavailable(_)))
        ),
        "a waiter at close: expected backend_unavailable, got {answer:?}"
    );
    let later = bounded(
        "try_lock after close",
        fx.backend.try_lock(request(&resource("o/other"), "b")),
    )
    .await;
    match later {
        Err(e) => assert_eq!(e.code(), ErrorCode::BackendUnavailable, "{e:?}"),
        Ok(a) => panic!("a call after close: expected backend_unavailable, got {a:?}"),
    }
}
