//! The server with a circuit breaker (`AppState::with_health` over a
//! `tflock_health::GuardedBackend`): the health report shows the breaker and the
//! spec's metrics, `backend_unavailable` answers carry the breaker's `Retry-After`,
//! and a Redis that stops answering (SIGSTOP) opens the breaker, which half-opens and
//! closes again once Redis is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_health::{BreakerSettings, GuardedBackend, Health, spawn_monitor};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_server::{AppState, Limits, Tokens};
use tflock_testkit::{RedisOptions, RedisServer};

use crate::common::{EVENTUALLY, Store, TestServer, open_backend, redis_config, resource};

/// GET `path` until `accept` holds for (status, Retry-After, body), within `bound`.
async fn poll_until(
    s: &TestServer,
    path: &str,
    bound: Duration,
    what: &str,
    accept: impl Fn(StatusCode, Option<u64>, &Value) -> bool,
) -> (StatusCode, Option<u64>, Value) {
    let started = Instant::now();
    loop {
        let resp = s.client.get(s.url(path)).send().await.expect("send");
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if accept(status, retry_after, &body) {
            return (status, retry_after, body);
        }
        assert!(
            started.elapsed() < bound,
            "{what}: not within {bound:?}; last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_paused_redis_opens_the_breaker_and_recovery_closes_it() {
    let redis =
        tokio::task::spawn_blocking(|| Arc::new(RedisServer::start(RedisOptions::default())))
            .await
            .expect("start redis");
    let config = RedisConfig {
        read_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_millis(500),
        ..redis_config(&redis)
    };
    let inner: SharedBackend =
        RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
            .await
            .expect("connect");
    let reset = Duration::from_secs(2);
    let health = Arc::new(Health::new(
        "redis",
        BreakerSettings {
            failure_threshold: 2,
            reset_timeout: reset,
            half_open_max_requests: 1,
        },
        true,
        Arc::new(SystemClock),
    ));
    let guarded: SharedBackend = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    let monitor = spawn_monitor(
        inner.clone(),
        health.clone(),
        Duration::from_millis(100),
        Duration::from_millis(300),
    );
    let state = AppState::new(guarded.clone(), Tokens::none())
        .with_health(health.clone())
        .with_limits(Limits {
            request_timeout: Duration::from_secs(1),
            ..Limits::default()
        });
    let s =
        TestServer::serve_state(Store::Redis, state, guarded, vec![Box::new(redis.clone())]).await;

    // Healthy: breaker closed, the monitor's check and the spec's metrics shown.
    s.lock(&resource("o/r", "default"), "o/r#1").await;
    let (_, _, body) = poll_until(
        &s,
        "/api/health/locking",
        EVENTUALLY,
        "a first check",
        |st, _, b| st == StatusCode::OK && !b["health"]["last_health_check"].is_null(),
    )
    .await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["backend"], "redis");
    assert_eq!(body["circuit_breaker"], "closed");
    assert_eq!(body["health"]["circuit_breaker_state"], "closed");
    assert!(
        body["health"]["connections_active"].as_i64() >= Some(1),
        "{body}"
    );
    assert!(body["health"]["memory_usage"].as_i64() > Some(0), "{body}");
    assert_eq!(body["check"]["healthy"], true, "{body}");
    assert_eq!(body["performance"]["active_locks"], 1, "{body}");
    assert!(
        body["performance"]["operations"].as_u64() >= Some(1),
        "{body}"
    );
    assert!(
        body["performance"]["operations_per_second"].as_f64() > Some(0.0),
        "{body}"
    );
    assert_eq!(body["metrics"]["active_locks"], 1, "{body}");

    // Redis stops answering: failed checks open the breaker.
    let paused = redis.clone();
    tokio::task::spawn_blocking(move || paused.pause())
        .await
        .expect("pause");
    let (status, retry_after, body) = poll_until(
        &s,
        "/api/health/locking",
        EVENTUALLY,
        "the breaker opens",
        |_, _, b| b["circuit_breaker"] == "open",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["health"]["circuit_breaker_state"], "open");
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");
    assert!(
        matches!(retry_after, Some(1..=2)),
        "Retry-After is the breaker's remaining reset time: {retry_after:?}"
    );

    // Calls fail fast with the breaker's Retry-After instead of waiting on Redis.
    let started = Instant::now();
    let resp = s
        .client
        .get(s.url("/api/v1/locks"))
        .send()
        .await
        .expect("send");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: Option<u64> = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    assert!(matches!(retry_after, Some(1..=2)), "{retry_after:?}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "backend_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("circuit breaker is open")),
        "{body}"
    );
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let before = health.breaker.transitions();
    let text = s.metrics().await;
    let after = health.breaker.transitions();
    assert!(
        text.contains("tflock_circuit_breaker_state 2"),
        "the breaker's state is a gauge"
    );
    // Its state changes are counted where Prometheus sees them (they once went to a
    // global recorder nobody installed).
    let opened = breaker_transitions(&text);
    assert!(opened >= 1, "closed -> open counted: {text}");
    assert!(
        (before..=after).contains(&opened),
        "the breaker's own count, {before}..={after}, scraped: {opened}"
    );

    // Redis is back. With the monitor stopped nothing probes, so the breaker is seen
    // half-open once its reset time has passed...
    monitor.abort();
    let resumed = redis.clone();
    tokio::task::spawn_blocking(move || resumed.resume())
        .await
        .expect("resume");
    let (status, _, body) = poll_until(
        &s,
        "/api/health/locking",
        reset + EVENTUALLY,
        "the breaker half-opens",
        |_, _, b| b["circuit_breaker"] == "half_open",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["health"]["circuit_breaker_state"], "half_open");
    // ...reading health spends no probe: it is still half-open.
    let (_, body) = s.get("/api/health/locking").await;
    assert_eq!(body["circuit_breaker"], "half_open", "{body}");

    // The monitor runs again: its next check is the probe; it succeeds and closes
    // the breaker.
    let monitor = spawn_monitor(
        inner.clone(),
        health.clone(),
        Duration::from_millis(100),
        Duration::from_millis(300),
    );
    let (_, _, body) = poll_until(
        &s,
        "/api/health/locking",
        reset + EVENTUALLY,
        "the breaker closes",
        |st, _, b| st == StatusCode::OK && b["circuit_breaker"] == "closed",
    )
    .await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["health"]["circuit_breaker_state"], "closed");
    assert!(body.get("error").is_none(), "{body}");
    let (status, body) = s.get("/api/v1/locks").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let closed = breaker_transitions(&s.metrics().await);
    assert!(
        closed >= opened + 2,
        "open -> half-open -> closed counted: {opened} then {closed}"
    );
    monitor.abort();
    s.shutdown().await;
}

/// `tflock_circuit_breaker_transitions_total` in a scrape.
fn breaker_transitions(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tflock_circuit_breaker_transitions_total "))
        .unwrap_or_else(|| panic!("no breaker transitions series:\n{metrics}"))
        .trim()
        .parse()
        .expect("a count")
}

/// Over the embedded store: a closed store fails calls until the breaker opens, and
/// from then on `Retry-After` is the breaker's (30 s), not the default 1 s.
#[tokio::test]
async fn retry_after_comes_from_the_breaker_while_it_is_open() {
    let (inner, keep) = open_backend(
        Store::Embedded,
        LockSettings::default(),
        Arc::new(SystemClock),
    )
    .await;
    let health = Arc::new(Health::new(
        "embedded",
        BreakerSettings {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(30),
            half_open_max_requests: 1,
        },
        true,
        Arc::new(SystemClock),
    ));
    let guarded: SharedBackend = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    let state = AppState::new(guarded.clone(), Tokens::none()).with_health(health.clone());
    let s = TestServer::serve_state(Store::Embedded, state, guarded, keep).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, body) = s.get("/api/health/locking").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["circuit_breaker"], "closed");
    assert_eq!(body["backend"], "embedded");
    assert!(
        body["health"]["last_health_check"].is_null(),
        "no monitor ran: {body}"
    );

    inner.close().await;
    let acquire = json!({"resource": r, "owner": "o/r#2"});
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = s
            .client
            .post(s.url("/api/v1/locks/acquire"))
            .json(&acquire)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        seen.push(
            resp.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse::<u64>()
                .expect("seconds"),
        );
    }
    assert_eq!(seen[..2], [1, 1], "closed breaker: the default {seen:?}");
    assert!(
        seen[3] > 20 && seen[3] <= 30,
        "open breaker: its reset time {seen:?}"
    );
    let resp = s
        .client
        .get(s.url("/api/health/locking"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after > 20, "{retry_after}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["circuit_breaker"], "open");
    assert!(
        body["performance"]["error_rate"].as_f64() > Some(0.0),
        "{body}"
    );
    s.shutdown().await;
}

/// Issue 16 point 3: Redis losing tflock's data (here `FLUSHDB`) is reported by a
/// server as an operator sees it: `/api/health/locking` unhealthy with reason
/// `data_lost` while the breaker stays closed (Redis answers), the counter on
/// `/metrics`, the `store.data_lost` event, and acquires answered `lock_delay`
/// until the delay ends, then granted with a token above the one before.
#[tokio::test]
async fn a_redis_data_loss_is_reported_and_delays_grants() {
    let redis =
        tokio::task::spawn_blocking(|| Arc::new(RedisServer::start(RedisOptions::default())))
            .await
            .expect("start redis");
    let settings = LockSettings {
        lock_delay: Duration::from_secs(2),
        ..LockSettings::default()
    };
    let inner: SharedBackend =
        RedisBackend::connect(redis_config(&redis), settings, Arc::new(SystemClock))
            .await
            .expect("connect");
    let health = Arc::new(Health::new(
        "redis",
        BreakerSettings {
            failure_threshold: 2,
            reset_timeout: Duration::from_secs(2),
            half_open_max_requests: 1,
        },
        true,
        Arc::new(SystemClock),
    ));
    let guarded: SharedBackend = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    let _monitor = spawn_monitor(
        inner.clone(),
        health.clone(),
        Duration::from_millis(100),
        Duration::from_millis(500),
    );
    let mut events = guarded.subscribe();
    let state = AppState::new(guarded.clone(), Tokens::none()).with_health(health.clone());
    let s =
        TestServer::serve_state(Store::Redis, state, guarded, vec![Box::new(redis.clone())]).await;
    let r = resource("o/lost", "default");
    let before = s.lock(&r, "o/lost#1").await["fencing_token"]
        .as_u64()
        .expect("a token");

    redis.redis_cli(["FLUSHDB"]);
    let (status, _, body) = poll_until(
        &s,
        "/api/health/locking",
        EVENTUALLY,
        "the loss reported",
        |_, _, b| b["check"]["details"]["reason"] == "data_lost",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["circuit_breaker"], "closed", "Redis answers: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("data_lost")),
        "{body}"
    );
    let text = s.metrics().await;
    assert!(
        text.lines().any(|l| l == "tflock_store_data_loss_total 1"),
        "{text}"
    );
    let event = tokio::time::timeout(EVENTUALLY, async {
        loop {
            if let Ok(e) = events.recv().await
                && e.event == tflock_core::EventKind::StoreDataLost
            {
                return e;
            }
        }
    })
    .await
    .expect("a store.data_lost event");
    assert_eq!(event.event.as_str(), "store.data_lost");

    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/lost#2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false, "{body}");
    assert_eq!(body["reason"], "lock_delay", "{body}");
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/lost#3", "wait": "30s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["acquired"], true,
        "a waiter outlasts the delay: {body}"
    );
    assert!(
        body["lock"]["fencing_token"].as_u64() > Some(before),
        "{body}"
    );
    s.shutdown().await;
}
