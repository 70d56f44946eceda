//! Bearer tokens: mutating calls need the API (or admin) token, admin calls the admin
//! token; reads are open.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tflock_server::{Secret, Tokens};

use crate::common::{ADMIN_TOKEN, API_TOKEN, Options, Store, TestServer, assert_error, resource};

async fn mutating_calls_need_a_valid_token(store: Store) {
    let s = TestServer::start_with(store, Options::with_tokens()).await;
    let r = resource("o/r", "default");
    let acquire = json!({"resource": r, "owner": "o/r#1"});

    let resp = s
        .client
        .post(s.url("/api/v1/locks/acquire"))
        .json(&acquire)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        !body.to_string().contains(API_TOKEN),
        "tokens are never echoed"
    );

    let (status, body) = s
        .post_as("/api/v1/locks/acquire", acquire.clone(), "wrong")
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let resp = s
        .client
        .post(s.url("/api/v1/locks/acquire"))
        .header("authorization", format!("Basic {API_TOKEN}"))
        .json(&acquire)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Bad input from an unauthenticated caller is refused as unauthenticated: the
    // token is checked before the body is read.
    let resp = s
        .client
        .post(s.url("/api/v1/locks/acquire"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (status, body) = s
        .post_as("/api/v1/locks/acquire", acquire.clone(), API_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lease = body["lock"]["lease_id"].clone();

    // Reads are open.
    let (status, _) = s.get("/api/v1/locks").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.get("/api/locks").await;
    assert_eq!(status, StatusCode::OK);

    // The admin token also works for ordinary mutating calls.
    let (status, body) = s
        .post_as(
            "/api/v1/locks/refresh",
            json!({"resource": r, "lease_id": lease, "ttl": "10m"}),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = s.delete("/api/v1/queue/abc").await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let (status, body) = s
        .call(Method::DELETE, "/api/v1/queue/abc", None, Some(API_TOKEN))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    s.shutdown().await;
}

async fn admin_calls_need_the_admin_token(store: Store) {
    let s = TestServer::start_with(store, Options::with_tokens()).await;
    let r = resource("o/r", "default");
    let (status, _) = s
        .post_as(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#1", "pull": {"num": 1}}),
            API_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let force_release = json!({"resource": r, "force": true});
    let force_transfer = json!({"resource": r, "force": true, "to": {"owner": "o/r#2"}});
    let release_pull = json!({"repo": "o/r", "pull": 1});
    for (path, body) in [
        ("/api/v1/locks/release", &force_release),
        ("/api/v1/locks/transfer", &force_transfer),
        ("/api/v1/locks/release-pull", &release_pull),
    ] {
        let (status, answer) = s.post_as(path, body.clone(), API_TOKEN).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden", None);
        let (status, answer) = s.post(path, body.clone()).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        );
    }

    let (status, body) = s
        .post_as("/api/v1/locks/transfer", force_transfer, ADMIN_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lock"]["owner"], "o/r#2");
    let (status, body) = s
        .post_as("/api/v1/locks/release", force_release, ADMIN_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .post_as("/api/v1/locks/release-pull", release_pull, ADMIN_TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.shutdown().await;
}

async fn without_an_admin_token_admin_calls_are_disabled(store: Store) {
    let s = TestServer::start_with(
        store,
        Options {
            tokens: Tokens {
                api: Secret::new(API_TOKEN),
                admin: None,
            },
            ..Options::default()
        },
    )
    .await;
    let (status, body) = s
        .post_as(
            "/api/v1/locks/release-pull",
            json!({"repo": "o/r", "pull": 1}),
            API_TOKEN,
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden", None);
    s.shutdown().await;
}

#[tokio::test]
async fn an_empty_token_is_no_token() {
    assert!(Secret::new("").is_none());
    assert_eq!(
        format!("{:?}", Secret::new("hunter2")),
        "Some(Secret(<redacted>))"
    );
}

/// Collects what the server and the store log. Installed as the process-wide
/// subscriber (once, for the whole test binary): a thread-scoped one misses events
/// whose callsites other test threads registered first.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

pub(crate) fn captured_logs() -> &'static Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tflock_server=trace,tflock_web=trace,tflock_embedded=trace,tflock_redis=trace,tflock_health=trace,tflock_core=trace,axum=trace,tower_http=trace",
            ))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test installs a global subscriber");
        captured
    })
}

async fn tokens_are_never_logged(store: Store) {
    let captured = captured_logs();
    let s = TestServer::start_with(store, Options::with_tokens()).await;
    let r = resource("o/r", "default");
    let acquire = json!({"resource": r, "owner": "o/r#1"});
    for token in [API_TOKEN, ADMIN_TOKEN, "a-wrong-token"] {
        s.post_as("/api/v1/locks/acquire", acquire.clone(), token)
            .await;
        s.post_as(
            "/api/v1/locks/release-pull",
            json!({"repo": "o/r", "pull": 1}),
            token,
        )
        .await;
    }
    s.shutdown().await;

    let logs =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    assert!(
        logs.contains("/api/v1/locks/release-pull"),
        "the requests were logged: {logs}"
    );
    for secret in [API_TOKEN, ADMIN_TOKEN, "a-wrong-token"] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}

crate::on_both_backends!(
    mutating_calls_need_a_valid_token,
    admin_calls_need_the_admin_token,
    without_an_admin_token_admin_calls_are_disabled,
    tokens_are_never_logged,
);
