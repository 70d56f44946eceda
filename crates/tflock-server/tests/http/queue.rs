//! Queues over HTTP: waiting acquires (granted on unlock, timed out, abandoned by a
//! client that disconnects, ended by shutdown), reservations, the user queue and
//! cancellation.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tflock_core::LockSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{EVENTUALLY, Options, Store, TestServer, assert_error, query, resource};

async fn a_waiting_acquire_is_granted_the_moment_the_holder_unlocks(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let first = s.lock(&r, "o/r#1").await;

    let client = s.client.clone();
    let url = s.url("/api/v1/locks/acquire");
    let body = json!({"resource": r, "owner": "o/r#2", "wait": "60s"});
    let waiter = tokio::spawn(async move {
        let resp = client.post(url).json(&body).send().await.expect("send");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        (status, body, Instant::now())
    });

    let q = s.wait_for_queue_len(&r, 1).await;
    assert_eq!(q["entries"][0]["owner"], "o/r#2");
    assert_eq!(q["entries"][0]["kind"], "waiter");
    assert_eq!(q["entries"][0]["position"], 1);
    assert_eq!(q["lock"]["owner"], "o/r#1");
    assert!(q["lock"].get("lease_id").is_none());
    assert!(
        !waiter.is_finished(),
        "the waiter is held open while the lock is held"
    );

    let released_at = Instant::now();
    let (status, released) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": first["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["granted_to"]["owner"], "o/r#2", "{released}");

    let (status, body, answered_at) = tokio::time::timeout(EVENTUALLY, waiter)
        .await
        .expect("the waiter is answered")
        .expect("waiter task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], true, "{body}");
    assert_eq!(body["lock"]["owner"], "o/r#2");
    assert!(
        body["lock"]["lease_id"].is_string(),
        "the new holder gets its lease"
    );
    assert!(body["lock"]["fencing_token"].as_u64() > first["fencing_token"].as_u64());
    // "The moment": well under a second on a loaded two-core machine; no polling loop.
    let handoff = answered_at.saturating_duration_since(released_at);
    assert!(
        handoff < Duration::from_secs(2),
        "hand-off took {handoff:?}"
    );

    let (_, got) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_eq!(got["lock"]["owner"], "o/r#2");
    assert_eq!(s.queue(&r).await["entries"], json!([]));
    s.shutdown().await;
}

async fn a_waiter_that_disconnects_leaves_the_queue(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let first = s.lock(&r, "o/r#1").await;

    // A raw HTTP/1.1 request, so the test controls exactly when the socket closes.
    let body = json!({"resource": r, "owner": "o/r#2", "wait": "60s"}).to_string();
    let request = format!(
        "POST /api/v1/locks/acquire HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        s.addr,
        body.len(),
        body
    );
    let mut socket = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    socket.write_all(request.as_bytes()).await.expect("write");
    socket.flush().await.expect("flush");
    s.wait_for_queue_len(&r, 1).await;

    // Nothing has been answered yet: the request is held open.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await;
    assert!(early.is_err(), "the waiting request was answered early");

    drop(socket);
    s.wait_for_queue_len(&r, 0).await;
    // It was the server that dropped the call (the handler future went away with the
    // connection), not the wait running out.
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .contains(r#"tflock_operations_total{operation="acquire_wait",outcome="abandoned"} 1"#),
        "{metrics}"
    );

    // The lock is not handed to the departed caller: unlocking leaves it free.
    let (status, released) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": first["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert!(released.get("granted_to").is_none(), "{released}");
    let (status, _) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

async fn a_wait_that_runs_out_answers_timeout(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#2", "wait": "200ms"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false);
    assert_eq!(body["reason"], "timeout");
    assert_eq!(body["lock"]["owner"], "o/r#1");
    assert!(body["lock"].get("lease_id").is_none());
    assert_eq!(s.queue(&r).await["entries"], json!([]));
    s.shutdown().await;
}

async fn shutdown_ends_a_waiting_acquire_with_backend_unavailable(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let client = s.client.clone();
    let url = s.url("/api/v1/locks/acquire");
    let body = json!({"resource": r, "owner": "o/r#2", "wait": "5m"});
    let waiter = tokio::spawn(async move {
        let resp = client.post(url).json(&body).send().await.expect("send");
        let retry_after = resp.headers().get("retry-after").cloned();
        (
            resp.status(),
            retry_after,
            resp.json::<serde_json::Value>().await.expect("json"),
        )
    });
    s.wait_for_queue_len(&r, 1).await;
    let backend = s.backend.clone();
    let started = Instant::now();
    s.shutdown().await;
    assert!(started.elapsed() < EVENTUALLY);
    let (status, retry_after, body) = tokio::time::timeout(EVENTUALLY, waiter)
        .await
        .expect("the waiter is answered")
        .expect("waiter task");
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        None,
    );
    assert!(retry_after.is_some(), "503 carries Retry-After");
    drop(backend);
}

async fn reservations_user_queue_and_cancellation(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#2", "user": {"username": "dave"},
                   "reserve": true, "priority": "critical"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false);
    let entry_id = body["queue"]["entry_id"]
        .as_str()
        .expect("entry id")
        .to_string();
    assert_eq!(body["queue"]["position"], 1);

    let q = s.queue(&r).await;
    assert_eq!(q["entries"][0]["entry_id"], entry_id.as_str());
    assert_eq!(q["entries"][0]["kind"], "reservation");
    assert_eq!(q["entries"][0]["priority"], "critical");
    assert_eq!(q["entries"][0]["effective_priority"], "critical");

    let (status, mine) = s.get("/api/v1/queue/user/dave").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["entries"][0]["entry_id"], entry_id.as_str());
    let (_, none) = s.get("/api/v1/queue/user/erin").await;
    assert_eq!(none["entries"], json!([]));

    let (status, cancelled) = s.delete(&format!("/api/v1/queue/{entry_id}")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["cancelled"]["entry_id"], entry_id.as_str());
    assert_eq!(s.queue(&r).await["entries"], json!([]));
    let (status, body) = s.delete(&format!("/api/v1/queue/{entry_id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    s.shutdown().await;
}

async fn a_cancelled_waiter_is_answered_cancelled(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let client = s.client.clone();
    let url = s.url("/api/v1/locks/acquire");
    let body = json!({"resource": r, "owner": "o/r#2", "wait": "60s"});
    let waiter = tokio::spawn(async move {
        let resp = client.post(url).json(&body).send().await.expect("send");
        (
            resp.status(),
            resp.json::<serde_json::Value>().await.expect("json"),
        )
    });
    let q = s.wait_for_queue_len(&r, 1).await;
    let entry_id = q["entries"][0]["entry_id"]
        .as_str()
        .expect("entry id")
        .to_string();
    let (status, _) = s.delete(&format!("/api/v1/queue/{entry_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = tokio::time::timeout(EVENTUALLY, waiter)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false);
    assert_eq!(body["reason"], "cancelled");
    s.shutdown().await;
}

async fn a_full_queue_answers_queue_full(store: Store) {
    let s = TestServer::start_with(
        store,
        Options {
            settings: LockSettings {
                max_queue_size: 1,
                ..LockSettings::default()
            },
            ..Options::default()
        },
    )
    .await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let reserve = |owner: &str| json!({"resource": r, "owner": owner, "reserve": true});
    let (status, body) = s.post("/api/v1/locks/acquire", reserve("o/r#2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.post("/api/v1/locks/acquire", reserve("o/r#3")).await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        None,
    );
    s.shutdown().await;
}

crate::on_both_backends!(
    a_waiting_acquire_is_granted_the_moment_the_holder_unlocks,
    a_waiter_that_disconnects_leaves_the_queue,
    a_wait_that_runs_out_answers_timeout,
    shutdown_ends_a_waiting_acquire_with_backend_unavailable,
    reservations_user_queue_and_cancellation,
    a_cancelled_waiter_is_answered_cancelled,
    a_full_queue_answers_queue_full,
);
