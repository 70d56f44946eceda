//! The safety rules of issue 15 at the API: lease ids are checked before any store
//! sees them (an empty one is nobody's), a force unlock may name the lease it means
//! (`expected_token`), a cancel the queue it means (the resource in the query), and a
//! `request_id` is a secret that no answer, event, page, metric or log line shows.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::captured_logs;
use crate::common::{Store, TestServer, assert_error, query, resource};

/// The holder's lock as `GET /api/v1/lock` reports it.
async fn holder(s: &TestServer, r: &Value) -> Value {
    let (status, body) = s.get(&format!("/api/v1/lock?{}", query(r))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["lock"].clone()
}

async fn empty_or_malformed_lease_ids_are_refused_and_change_nothing(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let lock = s.lock(&r, "o/r#1").await;
    let token = lock["fencing_token"].clone();
    for bad in [
        "",
        "short",
        "has spaces in it, not a lease",
        "\u{7f}xxxxxxxxxxxxxxxxxxx",
    ] {
        for (path, body) in [
            (
                "/api/v1/locks/release",
                json!({"resource": r, "lease_id": bad}),
            ),
            (
                "/api/v1/locks/refresh",
                json!({"resource": r, "lease_id": bad, "ttl": "1h"}),
            ),
            (
                "/api/v1/locks/transfer",
                json!({"resource": r, "lease_id": bad, "to": {"owner": "o/r#9"}}),
            ),
            (
                "/api/v1/locks/acquire",
                json!({"resource": r, "owner": "o/r#1", "lease_id": bad}),
            ),
        ] {
            let (status, answer) = s.post(path, body).await;
            assert_error(
                status,
                &answer,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("lease_id"),
            );
            let now = holder(&s, &r).await;
            assert_eq!(now["owner"], "o/r#1", "{path} with {bad:?}: {now}");
            assert_eq!(now["fencing_token"], token, "{path} with {bad:?}: {now}");
            assert_eq!(now["expires_at"], lock["expires_at"], "{path} with {bad:?}");
        }
    }
    // The holder's own lease still works.
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": lock["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.shutdown().await;
}

async fn force_release_with_expected_token_checks_the_live_lease(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let first = s.lock(&r, "o/r#1").await;
    let old = first["fencing_token"].as_u64().unwrap();

    // expected_token goes with force only.
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": first["lease_id"], "expected_token": old}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("expected_token"),
    );
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "expected_token": old}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("expected_token"),
    );
    assert_eq!(holder(&s, &r).await["owner"], "o/r#1");

    // The lock changes hands: a force naming the old lease ends nothing.
    let (status, body) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": r, "lease_id": first["lease_id"], "to": {"owner": "o/r#2"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["lock"]["fencing_token"].as_u64().unwrap();
    assert!(new > old);
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "force": true, "expected_token": old}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_owner", None);
    let now = holder(&s, &r).await;
    assert_eq!(now["owner"], "o/r#2");
    assert_eq!(now["fencing_token"], new);

    // Naming the live lease releases it.
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "force": true, "expected_token": new}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["released"]["owner"], "o/r#2");
    let (status, _) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

async fn cancel_with_an_expected_resource_checks_the_queue(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let other = resource("o/r", "staging");
    s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#2", "reserve": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entry = body["queue"]["entry_id"].as_str().unwrap().to_string();

    // Part of a resource: refused, naming the first missing part.
    let (status, body) = s.delete(&format!("/api/v1/queue/{entry}?repo=o%2Fr")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("path"),
    );
    let (status, body) = s
        .delete(&format!(
            "/api/v1/queue/{entry}?repo=o%2Fr&path=.&project_name="
        ))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("workspace"),
    );
    // A bad part: refused, naming it.
    let (status, body) = s
        .delete(&format!(
            "/api/v1/queue/{entry}?repo=norepo&path=.&workspace=default&project_name="
        ))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("repo"),
    );
    // Another resource's queue: not found, and the entry stays.
    let (status, body) = s
        .delete(&format!("/api/v1/queue/{entry}?{}", query(&other)))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(s.queue(&r).await["entries"][0]["entry_id"], entry.as_str());
    // Its own resource: cancelled.
    let (status, body) = s
        .delete(&format!("/api/v1/queue/{entry}?{}", query(&r)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancelled"]["entry_id"], entry.as_str());
    assert_eq!(s.queue(&r).await["entries"], json!([]));
    s.shutdown().await;
}

/// A call answered as text, whatever it holds.
async fn raw(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> String {
    let mut req = s.client.request(method, s.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert!(status.is_success(), "{path}: {status} {text}");
    text
}

async fn request_ids_and_lease_ids_are_never_shown(store: Store) {
    let captured = captured_logs();
    let s = TestServer::start(store).await;
    let r = resource("o/secret-check", "default");
    let tag = tflock_core::random_hex(4);
    let holder_rid = format!("holder-request-id-{tag}-5be1");
    let reserve_rid = format!("reservation-request-id-{tag}-a9d3");
    let wait_rid = format!("waiter-request-id-{tag}-17c2");

    // Everything the server streams, from before the first call.
    let mut stream = s
        .client
        .get(s.url("/api/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), StatusCode::OK);
    let sse = tokio::spawn(async move {
        let mut text = String::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(end, stream.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.matches("queue.left").count() >= 2 {
                break;
            }
        }
        text
    });

    let mut shown = Vec::new();
    let acquire = json!({"resource": r, "owner": "o/secret-check#1", "request_id": holder_rid,
                         "user": {"username": "hana"}});
    shown.push(
        raw(
            &s,
            Method::POST,
            "/api/v1/locks/acquire",
            Some(acquire.clone()),
        )
        .await,
    );
    // A retry is answered from the present: still without the id.
    let again = raw(&s, Method::POST, "/api/v1/locks/acquire", Some(acquire)).await;
    let lease = serde_json::from_str::<Value>(&again).unwrap()["lock"]["lease_id"]
        .as_str()
        .expect("the retry holds the grant")
        .to_string();
    shown.push(again);

    let reserve = json!({"resource": r, "owner": "o/secret-check#2", "reserve": true,
                         "request_id": reserve_rid, "user": {"username": "rita"}});
    let reserved = raw(
        &s,
        Method::POST,
        "/api/v1/locks/acquire",
        Some(reserve.clone()),
    )
    .await;
    let entry = serde_json::from_str::<Value>(&reserved).unwrap()["queue"]["entry_id"]
        .as_str()
        .expect("a reservation")
        .to_string();
    shown.push(reserved);
    shown.push(raw(&s, Method::POST, "/api/v1/locks/acquire", Some(reserve)).await);

    let waiter = {
        let client = s.client.clone();
        let url = s.url("/api/v1/locks/acquire");
        let body = json!({"resource": r, "owner": "o/secret-check#3", "wait": "60s",
                          "request_id": wait_rid, "user": {"username": "wendy"}});
        tokio::spawn(async move {
            let resp = client.post(url).json(&body).send().await.expect("send");
            resp.text().await.expect("body")
        })
    };
    let q = s.wait_for_queue_len(&r, 2).await;
    let waiter_entry = q["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["owner"] == "o/secret-check#3")
        .expect("the waiter is queued")["entry_id"]
        .as_str()
        .unwrap()
        .to_string();

    let rq = query(&r);
    for path in [
        format!("/api/v1/queue?{rq}"),
        "/api/v1/queue/user/rita".to_string(),
        "/api/v1/queue/user/wendy".to_string(),
        "/api/v1/queue/user/hana".to_string(),
        "/api/v1/locks".to_string(),
        format!("/api/v1/lock?{rq}"),
        "/api/locks".to_string(),
        "/".to_string(),
        format!("/ui/lock?{rq}"),
        "/metrics".to_string(),
    ] {
        let text = raw(&s, Method::GET, &path, None).await;
        shown.push(format!("GET {path}: {text}"));
    }
    shown.push(
        raw(
            &s,
            Method::DELETE,
            &format!("/api/v1/queue/{entry}?{rq}"),
            None,
        )
        .await,
    );
    shown.push(
        raw(
            &s,
            Method::DELETE,
            &format!("/api/v1/queue/{waiter_entry}"),
            None,
        )
        .await,
    );
    shown.push(format!(
        "waiter: {}",
        tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("the cancelled waiter answers")
            .expect("waiter task")
    ));
    shown.push(format!("events: {}", sse.await.expect("events task")));
    shown.push(
        raw(
            &s,
            Method::POST,
            "/api/v1/locks/refresh",
            Some(json!({"resource": r, "lease_id": lease, "ttl": "1h"})),
        )
        .await,
    );
    shown.push(
        raw(
            &s,
            Method::POST,
            "/api/v1/locks/release",
            Some(json!({"resource": r, "lease_id": lease})),
        )
        .await,
    );
    s.shutdown().await;

    let logs =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    assert!(
        logs.contains("path=/api/v1/locks/acquire"),
        "the calls were logged: {logs}"
    );
    let events = shown.iter().find(|t| t.starts_with("events: ")).unwrap();
    assert!(
        events.contains("queue.entered") && events.contains("queue.left"),
        "{events}"
    );
    for secret in [&holder_rid, &reserve_rid, &wait_rid] {
        for text in &shown {
            assert!(!text.contains(secret.as_str()), "{secret} is shown: {text}");
        }
        assert!(!logs.contains(secret.as_str()), "{secret} is logged");
    }
    assert!(!logs.contains(&lease), "the lease id is logged");
}

crate::on_both_backends!(
    empty_or_malformed_lease_ids_are_refused_and_change_nothing,
    force_release_with_expected_token_checks_the_live_lease,
    cancel_with_an_expected_resource_checks_the_queue,
    request_ids_and_lease_ids_are_never_shown,
);
