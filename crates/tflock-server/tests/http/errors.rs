//! Bad input, unknown routes, the body cap and an unavailable backend: every answer
//! is a JSON error with the contract's code and status, naming the field when it can.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Store, TestServer, assert_error, resource};

async fn acquire_raw(s: &TestServer, body: &str) -> (StatusCode, Value) {
    let resp = s
        .client
        .post(s.url("/api/v1/locks/acquire"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn bad_bodies_are_invalid_requests_naming_the_field(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let (status, body) = acquire_raw(&s, "{not json").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    );
    let (status, body) = acquire_raw(&s, "").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    );

    let cases = [
        (
            json!({"resource": r, "owner": "o#1", "priority": "urgent"}),
            "priority",
        ),
        (json!({"resource": r, "owner": "o#1", "ttl": "soon"}), "ttl"),
        (
            json!({"resource": r, "owner": "o#1", "wait": "forever"}),
            "wait",
        ),
        (json!({"resource": r}), "owner"),
        (json!({"owner": "o#1"}), "resource"),
        (
            json!({"resource": {"repo": "o/r"}, "owner": "o#1"}),
            "resource.workspace",
        ),
        (
            json!({"resource": r, "owner": "o#1", "wiat": "30s"}),
            "wiat",
        ),
        (json!({"resource": r, "owner": ""}), "owner"),
        (
            json!({"resource": r, "owner": "o#1", "reserve": "yes"}),
            "reserve",
        ),
        (
            json!({"resource": r, "owner": "o#1", "user": {"teams": []}}),
            "user.username",
        ),
        (
            json!({"resource": {"repo": "o/r", "path": "../x", "workspace": "w"}, "owner": "o#1"}),
            "resource.path",
        ),
        (
            json!({"resource": {"repo": "norepo", "workspace": "w"}, "owner": "o#1"}),
            "resource.repo",
        ),
        (
            json!({"resource": r, "owner": "o#1", "ttl": "1000d"}),
            "ttl",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = s.post("/api/v1/locks/acquire", body.clone()).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field),
        );
    }

    let release_cases = [
        (json!({"resource": r}), "lease_id"),
        (json!({"resource": r, "lease_id": ""}), "lease_id"),
        (
            json!({"resource": r, "lease_id": "x", "force": true}),
            "force",
        ),
    ];
    for (body, field) in release_cases {
        let (status, answer) = s.post("/api/v1/locks/release", body).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field),
        );
    }
    let (status, answer) = s
        .post(
            "/api/v1/locks/refresh",
            json!({"resource": r, "lease_id": "x"}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("ttl"),
    );
    let (status, answer) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": r, "lease_id": "x", "to": {"owner": ""}}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("to.owner"),
    );
    let (status, answer) = s
        .post(
            "/api/v1/locks/release-pull",
            json!({"repo": "o/r", "pull": "one"}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("pull"),
    );

    // Nothing was changed by any of them.
    let (_, list) = s.get("/api/v1/locks").await;
    assert_eq!(list["locks"], json!([]));
    s.shutdown().await;
}

async fn a_body_must_be_sent_as_json(store: Store) {
    let s = TestServer::start(store).await;
    let body = json!({"resource": resource("o/r", "default"), "owner": "o#1"}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = s
            .client
            .post(s.url("/api/v1/locks/acquire"))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("json");
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("content-type"),
        );
    }
    s.shutdown().await;
}

async fn an_oversized_body_is_413_as_json(store: Store) {
    let s = TestServer::start(store).await;
    let big = json!({"resource": resource("o/r", "default"), "owner": "o#1",
                     "note": "x".repeat(tflock_server::MAX_BODY_BYTES)});
    let (status, body) = s.post("/api/v1/locks/acquire", big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        None,
    );
    s.shutdown().await;
}

async fn bad_queries_name_the_parameter(store: Store) {
    let s = TestServer::start(store).await;
    for (path, field) in [
        ("/api/v1/locks?limit=abc", "limit"),
        ("/api/v1/locks?limit=0", "limit"),
        ("/api/v1/locks?limit=100000", "limit"),
        ("/api/v1/locks?cursor=zz", "cursor"),
        ("/api/v1/locks?repository=o/r", "repository"),
        ("/api/v1/lock?repo=o/r", "workspace"),
        ("/api/v1/lock?workspace=default", "repo"),
        ("/api/v1/lock?repo=o/r&workspace=default&path=/abs", "path"),
        ("/api/v1/queue?repo=norepo&workspace=default", "repo"),
    ] {
        let (status, body) = s.get(path).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field),
        );
    }
    s.shutdown().await;
}

async fn unknown_routes_and_methods_answer_json(store: Store) {
    let s = TestServer::start(store).await;
    let (status, body) = s.get("/api/v1/nothing-here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    let (status, body) = s
        .call(Method::GET, "/api/v1/locks/acquire", None, None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        None,
    );
    s.shutdown().await;
}

async fn a_closed_backend_answers_503_with_retry_after(store: Store) {
    let s = TestServer::start(store).await;
    s.backend.close().await;
    let resp = s
        .client
        .post(s.url("/api/v1/locks/acquire"))
        .json(&json!({"resource": resource("o/r", "default"), "owner": "o#1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");

    let (status, body) = s.get("/api/v1/locks").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        None,
    );
    let (status, body) = s.get("/readyz").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        None,
    );
    let (status, body) = s.get("/api/health/locking").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["error"]["code"], "backend_unavailable");
    let (status, _) = s.get("/healthz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the backend"
    );
    s.shutdown().await;
}

crate::on_both_backends!(
    bad_bodies_are_invalid_requests_naming_the_field,
    a_body_must_be_sent_as_json,
    an_oversized_body_is_413_as_json,
    bad_queries_name_the_parameter,
    unknown_routes_and_methods_answer_json,
    a_closed_backend_answers_503_with_retry_after,
);

/// A record the store cannot read (here: a Redis lock record whose owner metadata is
/// not JSON) is 500 `internal`, not a crash and not a made-up answer; the server
/// serves on.
#[tokio::test]
async fn an_unreadable_record_is_500_internal() {
    let redis = tokio::task::spawn_blocking(crate::common::shared_redis)
        .await
        .expect("start redis");
    let config = crate::common::redis_config(&redis);
    let prefix = config.key_prefix.clone();
    let backend: tflock_core::SharedBackend = tflock_redis::RedisBackend::connect(
        config,
        tflock_core::LockSettings::default(),
        std::sync::Arc::new(tflock_core::SystemClock),
    )
    .await
    .expect("connect");
    let state = tflock_server::AppState::new(backend.clone(), tflock_server::Tokens::none());
    let s =
        TestServer::serve_state(Store::Redis, state, backend, vec![Box::new(redis.clone())]).await;
    let r = resource("o/r", "default");
    s.lock(&r, "o/r#1").await;

    let cli = redis.clone();
    tokio::task::spawn_blocking(move || {
        let keys = cli.redis_cli(["KEYS", &format!("{prefix}*lock:*")]);
        let key = keys.lines().next().expect("the lock's record");
        assert_eq!(cli.redis_cli(["HSET", key, "meta", "{not json"]), "0");
    })
    .await
    .expect("corrupt the record");

    let (status, body) = s
        .get(&format!("/api/v1/lock?{}", crate::common::query(&r)))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        None,
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("malformed owner metadata")),
        "{body}"
    );
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await;
}
