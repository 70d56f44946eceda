//! The server's limits: request head size, JSON nesting depth, time limits (a call
//! that does not wait, an admin call, a waiting acquire bounded by its own wait plus
//! slack) and the connection cap. Slow backend calls come from a real Redis that is
//! paused (SIGSTOP), not from a fake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_server::{AppState, Limits, Tokens};
use tflock_testkit::{RedisOptions, RedisServer};
use tokio::io::AsyncWriteExt;

use crate::common::{EVENTUALLY, Options, Store, TestServer, assert_error, redis_config, resource};

fn with_limits(limits: Limits) -> Options {
    Options {
        limits,
        ..Options::default()
    }
}

#[tokio::test]
async fn an_oversized_request_head_is_431() {
    let s = TestServer::start_with(
        Store::Embedded,
        with_limits(Limits {
            max_header_bytes: 4096,
            ..Limits::default()
        }),
    )
    .await;
    let resp = s
        .client
        .get(s.url("/api/v1/locks"))
        .header("x-padding", "p".repeat(5000))
        .send()
        .await
        .expect("send");
    let status = resp.status();
    let body: Value = resp.json().await.expect("a JSON answer");
    assert_error(
        status,
        &body,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "invalid_request",
        None,
    );
    // A long query string counts too.
    let (status, _) = s
        .get(&format!("/api/v1/locks?repo={}", "r".repeat(5000)))
        .await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Under the cap is fine.
    let resp = s
        .client
        .get(s.url("/api/v1/locks"))
        .header("x-padding", "p".repeat(3000))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);

    // A head far past the cap never reaches the router: hyper refuses it (431, or the
    // connection closed while the head was still arriving). The server serves on.
    match s
        .client
        .get(s.url("/api/v1/locks"))
        .header("x-padding", "p".repeat(1024 * 1024))
        .send()
        .await
    {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    let (status, _) = s.get("/api/v1/locks").await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await;
}

/// `n` nested arrays as the value of `resource`.
fn nested(n: usize) -> String {
    format!(
        r#"{{"owner": "o/r#1", "resource": {}{}}}"#,
        "[".repeat(n),
        "]".repeat(n)
    )
}

#[tokio::test]
async fn json_nested_too_deep_is_400() {
    let s = TestServer::start(Store::Embedded).await;
    let send = |body: String| {
        let req = s
            .client
            .post(s.url("/api/v1/locks/acquire"))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("a JSON answer"))
        }
    };
    for depth in [33, 1_000, 30_000] {
        let (status, body) = send(nested(depth - 1)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nests deeper than 32 levels")),
            "{body}"
        );
    }
    // 32 levels pass the depth check and fail as an ordinary bad field.
    let (status, body) = send(nested(31)).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("resource[0]"),
    );
    // Brackets inside strings are not nesting.
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": resource("o/r", "default"), "owner": "o/r#1",
                   "note": "[".repeat(1000)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.shutdown().await;
}

/// A server over Redis whose calls can be made to hang: Redis is paused and the
/// backend's own timeouts are far longer than the server's limits.
async fn over_a_pausable_redis(limits: Limits) -> (TestServer, Arc<RedisServer>) {
    let redis =
        tokio::task::spawn_blocking(|| Arc::new(RedisServer::start(RedisOptions::default())))
            .await
            .expect("start redis");
    let config = RedisConfig {
        read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        ..redis_config(&redis)
    };
    let backend: SharedBackend =
        RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
            .await
            .expect("connect");
    let state = AppState::new(backend.clone(), Tokens::none()).with_limits(limits);
    let s =
        TestServer::serve_state(Store::Redis, state, backend, vec![Box::new(redis.clone())]).await;
    (s, redis)
}

async fn pause(redis: &Arc<RedisServer>) {
    let r = redis.clone();
    tokio::task::spawn_blocking(move || r.pause())
        .await
        .expect("pause");
}

async fn resume(redis: &Arc<RedisServer>) {
    let r = redis.clone();
    tokio::task::spawn_blocking(move || r.resume())
        .await
        .expect("resume");
}

/// Sends `req` and answers (status, body, how long it took).
async fn timed(req: reqwest::RequestBuilder) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[tokio::test]
async fn a_call_that_hangs_is_cut_at_the_request_timeout() {
    let (s, redis) = over_a_pausable_redis(Limits {
        request_timeout: Duration::from_millis(300),
        admin_timeout: Duration::from_millis(800),
        ..Limits::default()
    })
    .await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    pause(&redis).await;

    let (status, body, took) = timed(s.client.get(s.url("/api/v1/locks"))).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        None,
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("within 300ms") && m.contains("outcome is unknown")),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let (status, _, took) = timed(
        s.client
            .post(s.url("/api/v1/locks/acquire"))
            .json(&json!({"resource": resource("o/r", "other"), "owner": "o/r#2"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        took < Duration::from_secs(3),
        "a non-waiting acquire: {took:?}"
    );
    // Admin calls have their own, longer bound.
    let (status, body, took) = timed(s.client.get(s.url("/api/v1/admin/export"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );

    resume(&redis).await;
    let started = Instant::now();
    loop {
        let (status, _) = s.get("/api/v1/locks").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < EVENTUALLY, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_acquire_is_bounded_by_its_wait_plus_slack() {
    let (s, redis) = over_a_pausable_redis(Limits {
        request_timeout: Duration::from_millis(200),
        wait_slack: Duration::from_millis(400),
        ..Limits::default()
    })
    .await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;

    // A healthy wait runs past request_timeout, to its own end.
    let (status, body, took) = timed(
        s.client
            .post(s.url("/api/v1/locks/acquire"))
            .json(&json!({"resource": r, "owner": "o/r#2", "wait": "1s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reason"], "timeout", "{body}");
    assert!(took >= Duration::from_millis(950), "{took:?}");

    // A backend that never ends the wait: the server answers at wait + slack.
    pause(&redis).await;
    let (status, body, took) = timed(
        s.client
            .post(s.url("/api/v1/locks/acquire"))
            .json(&json!({"resource": r, "owner": "o/r#3", "wait": "500ms"})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        None,
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("within 900ms")),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    resume(&redis).await;
    s.shutdown().await;
}

async fn a_wait_is_clamped_to_max_wait(store: Store) {
    let s = TestServer::start_with(
        store,
        with_limits(Limits {
            max_wait: Duration::from_millis(500),
            ..Limits::default()
        }),
    )
    .await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, body, took) = timed(
        s.client
            .post(s.url("/api/v1/locks/acquire"))
            .json(&json!({"resource": r, "owner": "o/r#2", "wait": "1h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false);
    assert_eq!(body["reason"], "timeout", "{body}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(s.queue(&r).await["entries"], json!([]));
    s.shutdown().await;
}

#[tokio::test]
async fn connections_above_the_cap_wait_for_a_free_one() {
    let s = TestServer::start_with(
        Store::Embedded,
        with_limits(Limits {
            max_connections: 2,
            ..Limits::default()
        }),
    )
    .await;
    // Two connections that are open but send nothing take both places.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(s.addr)
            .await
            .expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        idle.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::new();
    let third = fresh
        .get(s.url("/healthz"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        third.as_ref().is_err_and(reqwest::Error::is_timeout),
        "a third connection was served: {third:?}"
    );

    // One closes: the next client is served.
    drop(idle.pop());
    let resp = tokio::time::timeout(
        EVENTUALLY,
        reqwest::Client::new().get(s.url("/healthz")).send(),
    )
    .await
    .expect("served once a place is free")
    .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(idle);
    s.shutdown().await;
}

/// Reads until the server closes the connection; answers how long that took and
/// what was read.
async fn read_until_closed(c: &mut tokio::net::TcpStream) -> (Duration, String) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(EVENTUALLY, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stayed open for {EVENTUALLY:?}"),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

#[tokio::test]
async fn slow_and_idle_connections_lose_their_place() {
    let s = TestServer::start_with(
        Store::Embedded,
        with_limits(Limits {
            header_read_timeout: Duration::from_millis(500),
            ..Limits::default()
        }),
    )
    .await;
    // A head that never completes.
    let mut slow = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let (took, _) = read_until_closed(&mut slow).await;
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A keep-alive connection, idle after one answer.
    let mut idle = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (took, answer) = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    s.shutdown().await;
}

crate::on_both_backends!(a_wait_is_clamped_to_max_wait);
