//! Outgoing webhooks against a real receiver: a small axum server on 127.0.0.1 that
//! records every delivery. Signatures are checked with an HMAC computed here, not
//! with the server's own function.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use tflock_server::{Secret, WebhookConfig};
use tokio::task::JoinHandle;

use crate::common::{EVENTUALLY, Options, Store, TestServer, resource};

const SECRET: &str = "webhook-secret-for-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// 500 to the first request, 200 afterwards.
    FailOnce,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Behaviour,
}

struct RunningReceiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl RunningReceiver {
    async fn start(behaviour: Behaviour) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook/{token}", post(receive))
            .with_state(Receiver {
                received: received.clone(),
                behaviour,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/hook/secret-path-token",
            listener.local_addr().expect("addr")
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RunningReceiver {
            url,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < EVENTUALLY,
                "only {} of {n} deliveries arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let n = {
        let mut got = r.received.lock().unwrap_or_else(|p| p.into_inner());
        got.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        got.len()
    };
    match r.behaviour {
        Behaviour::Ok => AxumStatus::OK,
        Behaviour::FailOnce if n == 1 => AxumStatus::INTERNAL_SERVER_ERROR,
        Behaviour::FailOnce => AxumStatus::NO_CONTENT,
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            AxumStatus::OK
        }
    }
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Checks the `X-Tflock-Signature` of `r` against an HMAC-SHA256 of its body.
fn assert_signed(r: &Received) {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header(r, "x-tflock-signature"), format!("sha256={hex}"));
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        initial_backoff: Duration::from_millis(200),
        ..WebhookConfig::new(vec![url.to_string()], Secret::new(SECRET))
    }
}

async fn every_event_is_posted_as_signed_json(store: Store) {
    let receiver = RunningReceiver::start(Behaviour::Ok).await;
    let s = TestServer::start_with(
        store,
        Options {
            webhooks: Some(config(&receiver.url)),
            ..Options::default()
        },
    )
    .await;
    let r = resource("o/r", "default");
    let lock = s.lock(&r, "o/r#1").await;
    let (status, _) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": lock["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let got = receiver.wait_for(2).await;
    let events: Vec<Value> = got
        .iter()
        .map(|d| serde_json::from_slice(&d.body).expect("a JSON body"))
        .collect();
    assert_eq!(events[0]["event"], "lock.acquired");
    assert_eq!(events[0]["owner"], "o/r#1");
    assert_eq!(events[0]["key"], "o/r/./default/");
    assert_eq!(events[0]["fencing_token"], lock["fencing_token"]);
    assert!(events[0]["at"].is_string());
    assert_eq!(events[1]["event"], "lock.released");
    for (d, e) in got.iter().zip(&events) {
        assert_signed(d);
        assert_eq!(header(d, "content-type"), "application/json");
        assert_eq!(
            header(d, "x-tflock-event"),
            e["event"].as_str().expect("name")
        );
        assert_eq!(header(d, "x-tflock-delivery").len(), 32);
    }
    assert_ne!(
        header(&got[0], "x-tflock-delivery"),
        header(&got[1], "x-tflock-delivery")
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(r#"tflock_webhook_deliveries_total{receiver="0",outcome="delivered"} 2"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("secret-path-token"),
        "URLs are never labels"
    );
    s.shutdown().await;
}

async fn a_failed_delivery_is_retried_with_back_off(store: Store) {
    let receiver = RunningReceiver::start(Behaviour::FailOnce).await;
    let s = TestServer::start_with(
        store,
        Options {
            webhooks: Some(config(&receiver.url)),
            ..Options::default()
        },
    )
    .await;
    s.lock(&resource("o/r", "default"), "o/r#1").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        header(&got[0], "x-tflock-delivery"),
        header(&got[1], "x-tflock-delivery"),
        "a retry is the same delivery"
    );
    assert_eq!(got[0].body, got[1].body);
    assert_signed(&got[1]);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(200),
        "retried after the back-off, not at once: {gap:?}"
    );
    // Delivered on the second attempt: no third.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 2);
    let metrics = s.metrics().await;
    for want in [
        r#"tflock_webhook_retries_total{receiver="0"} 1"#,
        r#"tflock_webhook_deliveries_total{receiver="0",outcome="delivered"} 1"#,
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }
    s.shutdown().await;
}

async fn a_hanging_receiver_never_slows_lock_operations(store: Store) {
    let hanging = RunningReceiver::start(Behaviour::Hang).await;
    let healthy = RunningReceiver::start(Behaviour::Ok).await;
    let s = TestServer::start_with(
        store,
        Options {
            webhooks: Some(WebhookConfig {
                queue_capacity: 8,
                timeout: Duration::from_secs(60),
                ..WebhookConfig::new(
                    vec![hanging.url.clone(), healthy.url.clone()],
                    Secret::new(SECRET),
                )
            }),
            ..Options::default()
        },
    )
    .await;
    let r = resource("o/r", "default");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let lock = s.lock(&r, &format!("o/r#{i}")).await;
        let (status, _) = s
            .post(
                "/api/v1/locks/release",
                json!({"resource": r, "lease_id": lock["lease_id"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        slowest = slowest.max(t.elapsed());
    }
    let total = started.elapsed();
    assert!(
        slowest < Duration::from_millis(500),
        "an acquire and release took {slowest:?} with a hanging receiver"
    );
    assert!(total < Duration::from_secs(10), "{total:?}");
    // The healthy receiver got every event; the hanging one holds one delivery open
    // and its queue dropped the oldest of the rest.
    let got = healthy.wait_for(80).await;
    assert_eq!(got.len(), 80);
    assert_eq!(hanging.wait_for(1).await.len(), 1);
    let metrics = s.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"tflock_webhook_dropped_total{receiver="0"} "#))
        .and_then(|v| v.parse().ok())
        .expect("a dropped count for the hanging receiver");
    assert_eq!(dropped, 80 - 1 - 8, "{metrics}");
    assert!(
        metrics.contains(r#"tflock_webhook_queue_depth{receiver="0"} 8"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tflock_webhook_dropped_total{receiver="1"} 0"#),
        "{metrics}"
    );
    // Nor does it hold up shutdown.
    let stopping = Instant::now();
    s.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

crate::on_both_backends!(
    every_event_is_posted_as_signed_json,
    a_failed_delivery_is_retried_with_back_off,
    a_hanging_receiver_never_slows_lock_operations,
);
