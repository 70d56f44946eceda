//! Health, readiness, the locking health report, Prometheus metrics and the SSE event
//! stream.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{EVENTUALLY, Store, TestServer, resource};

async fn health_endpoints_report_a_healthy_backend(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, body) = s.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ready", "backend": store.name()}));

    let (status, body) = s.get("/api/health/locking").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["backend"], store.name());
    assert_eq!(body["circuit_breaker"], "none", "no breaker configured");
    assert_eq!(body["health"]["circuit_breaker_state"], "none");
    assert!(body["health"]["response_time"].is_string(), "{body}");
    assert!(body["health"]["last_health_check"].is_string(), "{body}");
    assert_eq!(body["check"]["healthy"], true);
    assert_eq!(body["metrics"]["active_locks"], 1);
    assert_eq!(body["metrics"]["queue_depth"], 0);
    assert_eq!(body["performance"]["active_locks"], 1);
    assert_eq!(body["performance"]["queue_depth"], 0);
    assert!(
        body["performance"]["operations"].as_u64() >= Some(1),
        "{body}"
    );
    assert!(body["performance"]["p99_latency"].is_string(), "{body}");
    assert_eq!(body["performance"]["error_rate"], 0.0);
    assert!(body.get("error").is_none(), "{body}");
    if store == Store::Redis {
        assert!(
            body["health"]["connections_active"].as_i64() >= Some(1),
            "Redis reports its clients: {body}"
        );
        assert!(body["health"]["memory_usage"].as_i64() > Some(0), "{body}");
    }
    s.shutdown().await;
}

async fn metrics_count_operations_and_show_locks_and_queue_depth(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;
    let (status, _) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#2", "reserve": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": "00000000000000000000000000000000"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let resp = s.client.get(s.url("/metrics")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|ct| ct.starts_with("text/plain")),
    );
    let text = resp.text().await.expect("text");
    for want in [
        r#"tflock_operations_total{operation="acquire",outcome="acquired"} 1"#,
        r#"tflock_operations_total{operation="acquire",outcome="queued"} 1"#,
        r#"tflock_operations_total{operation="release",outcome="not_owner"} 1"#,
        r#"tflock_operation_duration_seconds_bucket{operation="acquire",le="#,
        "tflock_active_locks 1",
        "tflock_queue_depth 1",
        "tflock_backend_up 1",
        r#"tflock_http_requests_total{method="POST",route="/api/v1/locks/acquire",status="200"} 2"#,
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    s.shutdown().await;
}

/// Reads the SSE stream until `n` events have arrived; answers `(event, data)` pairs.
async fn read_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, serde_json::Value)> {
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(EVENTUALLY, resp.chunk())
            .await
            .expect("an event in time")
            .expect("read")
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            if let (Some(name), Some(data)) = (name, data) {
                events.push((name, data));
            }
        }
    }
    events
}

async fn events_stream_lock_and_queue_events(store: Store) {
    let s = TestServer::start(store).await;
    let mut stream = s
        .client
        .get(s.url("/api/events"))
        .send()
        .await
        .expect("send");
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .is_ok_and(|ct| ct.starts_with("text/event-stream"))
    );
    // The subscription is taken before the headers are sent, so this is seen.
    let r = resource("o/r", "default");
    let lock = s.lock(&r, "o/r#1").await;
    let (status, _) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": lock["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = read_events(&mut stream, 2).await;
    assert_eq!(events[0].0, "lock.acquired");
    assert_eq!(events[0].1["event"], "lock.acquired");
    assert_eq!(events[0].1["owner"], "o/r#1");
    assert_eq!(events[0].1["key"], "o/r/./default/");
    assert_eq!(events[0].1["fencing_token"], lock["fencing_token"]);
    assert_eq!(events[1].0, "lock.released");

    // Shutdown ends the stream instead of waiting for it.
    let stopped = tokio::time::timeout(Duration::from_secs(10), s.shutdown()).await;
    assert!(stopped.is_ok(), "an open event stream held up shutdown");
}

crate::on_both_backends!(
    health_endpoints_report_a_healthy_backend,
    metrics_count_operations_and_show_locks_and_queue_depth,
    events_stream_lock_and_queue_events,
);
