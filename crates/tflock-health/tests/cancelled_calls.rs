//! Issue 15: a call through [`GuardedBackend`] that is cancelled (its future dropped:
//! the caller went away, `tokio::time::timeout` fired, the task was aborted) gives its
//! breaker permit back. In half-open that permit is a probe slot; before the fix a
//! dropped probe kept its slot forever and the breaker refused every later call until
//! a health check happened to change its state.
//!
//! The backend is a real `redis-server`, SIGSTOPped so calls hang; the breaker runs on
//! a manual clock so the reset timeout passes exactly when the test says. No health
//! monitor runs: only the calls themselves move the breaker.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, ErrorCode, LockRequest, LockSettings, ManualClock, Resource, SharedBackend,
    SystemClock,
};
use tflock_health::{BreakerSettings, BreakerState, GuardedBackend, Health};
use tflock_redis::RedisBackend;
use tflock_testkit::{RedisOptions, RedisServer};

const READ_TIMEOUT: Duration = Duration::from_millis(500);
const RESET: Duration = Duration::from_secs(30);
/// How long a cancelled call is left hanging on the stopped server before it is dropped.
const CANCEL_AFTER: Duration = Duration::from_millis(100);

struct Rig {
    server: Arc<RedisServer>,
    guarded: Arc<GuardedBackend>,
    health: Arc<Health>,
    clock: ManualClock,
}

async fn rig(half_open_max_requests: u32) -> Rig {
    let server =
        tokio::task::spawn_blocking(|| Arc::new(RedisServer::start(RedisOptions::default())))
            .await
            .unwrap();
    let config = common::fast_failing_redis(server.addr().to_string(), READ_TIMEOUT);
    let redis = RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect to Redis");
    let clock = ManualClock::starting_now();
    let health = Arc::new(Health::new(
        "redis",
        BreakerSettings {
            failure_threshold: 1,
            reset_timeout: RESET,
            half_open_max_requests,
        },
        true,
        Arc::new(clock.clone()),
    ));
    let inner: SharedBackend = redis;
    let guarded = Arc::new(GuardedBackend::new(inner, health.clone()));
    Rig {
        server,
        guarded,
        health,
        clock,
    }
}

fn resource() -> Resource {
    Resource::new("o/cancel", ".", "default", "").unwrap()
}

async fn pause(server: &Arc<RedisServer>) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.pause())
        .await
        .unwrap();
}

async fn resume(server: &Arc<RedisServer>) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.resume())
        .await
        .unwrap();
}

/// Stops Redis, lets one call fail on it (threshold 1: the breaker opens), then passes
/// the reset timeout on the breaker's clock: the breaker is half-open and Redis still
/// hangs.
async fn half_open_on_a_hanging_redis(rig: &Rig) {
    pause(&rig.server).await;
    let e = rig.guarded.get_lock(&resource()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BackendUnavailable, "{e}");
    assert!(
        !e.to_string().contains("circuit breaker"),
        "reached Redis: {e}"
    );
    assert_eq!(rig.health.breaker.state(), BreakerState::Open);
    rig.clock.advance(RESET);
    assert_eq!(rig.health.breaker.state(), BreakerState::HalfOpen);
}

/// Redis answers again: the next call must be let through as a probe (not refused
/// with "circuit breaker is half-open"), and its success closes the breaker.
async fn next_call_probes_and_closes(rig: &Rig) {
    resume(&rig.server).await;
    let answer = rig.guarded.get_lock(&resource()).await;
    assert!(
        answer.is_ok(),
        "after the cancelled probes the breaker refused the next call: {answer:?}"
    );
    assert_eq!(rig.health.breaker.state(), BreakerState::Closed);
    let l = rig
        .guarded
        .try_lock(LockRequest::new(resource(), "after"))
        .await
        .expect("try_lock once closed");
    assert!(l.acquired, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_half_open_probe_on_a_hanging_redis_gives_its_slot_back() {
    let rig = rig(1).await;
    half_open_on_a_hanging_redis(&rig).await;

    // The one probe goes out and hangs on the stopped server; the caller goes away
    // (the task running the call is aborted, which drops the call's future).
    let g = rig.guarded.clone();
    let call = tokio::spawn(async move { g.get_lock(&resource()).await });
    tokio::time::sleep(CANCEL_AFTER).await;
    assert!(
        !call.is_finished(),
        "the probe should hang on the stopped Redis"
    );
    // While it is in flight the single slot is taken.
    let e = rig.guarded.get_lock(&resource()).await.unwrap_err();
    assert!(
        e.to_string().contains("circuit breaker is half-open"),
        "{e}"
    );
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    // The slot came back with the dropped future: still half-open, a probe may go.
    assert_eq!(rig.health.breaker.state(), BreakerState::HalfOpen);
    next_call_probes_and_closes(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cancelled_by_tokio_timeout_give_their_probe_slots_back() {
    let rig = rig(2).await;
    half_open_on_a_hanging_redis(&rig).await;

    // Rounds of calls bounded by `tokio::time::timeout`, each using every probe slot;
    // Redis hangs, so every one is cancelled. Without the slots coming back, the
    // second round would already be refused by the breaker instead of timing out.
    for round in 0..3 {
        let g1 = rig.guarded.clone();
        let g2 = rig.guarded.clone();
        let (a, b) = tokio::join!(
            tokio::time::timeout(CANCEL_AFTER, async move { g1.get_lock(&resource()).await }),
            tokio::time::timeout(CANCEL_AFTER, async move {
                g2.try_lock(LockRequest::new(resource(), "cancelled")).await
            }),
        );
        assert!(
            a.is_err(),
            "round {round}: get_lock was not cancelled: {a:?}"
        );
        assert!(
            b.is_err(),
            "round {round}: try_lock was not cancelled: {b:?}"
        );
        // A cancelled call is no outcome: the breaker is still half-open.
        assert_eq!(
            rig.health.breaker.state(),
            BreakerState::HalfOpen,
            "round {round}"
        );
    }
    next_call_probes_and_closes(&rig).await;
}
