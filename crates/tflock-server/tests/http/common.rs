//! A real tflock server on an ephemeral loopback port over the real embedded backend
//! in a temporary directory, and a small JSON client for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tflock_core::{Backend, LockSettings, ManualClock, SharedBackend, SharedClock, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_server::{AppState, Secret, Tokens, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for "this happens soon" (a queue entry appears or goes away, a waiter
/// wakes). Generous: CI shares two cores with compiling.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

pub const API_TOKEN: &str = "api-token-for-tests";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub backend: Arc<EmbeddedBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// How to start a server.
pub struct Options {
    pub tokens: Tokens,
    pub settings: LockSettings,
    pub clock: SharedClock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: Tokens::none(),
            settings: LockSettings::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Options {
    /// Both tokens set.
    pub fn with_tokens() -> Self {
        Options {
            tokens: Tokens {
                api: Secret::new(API_TOKEN),
                admin: Secret::new(ADMIN_TOKEN),
            },
            ..Options::default()
        }
    }

    pub fn with_clock(clock: ManualClock) -> Self {
        Options {
            clock: Arc::new(clock),
            ..Options::default()
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = EmbeddedBackend::open(
            EmbeddedConfig {
                path: dir.path().join("locks.redb"),
                settings: opts.settings,
            },
            opts.clock,
        )
        .await
        .expect("open the embedded store");
        let shared: SharedBackend = backend.clone();
        let state = AppState::new(shared, opts.tokens);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            backend,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; answers the status and the body as JSON (`Value::Null` when
    /// the body is not JSON, which every API answer is).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&body), None).await
    }

    pub async fn post_as(&self, path: &str, body: Value, token: &str) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&body), Some(token))
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None, None).await
    }

    /// Acquires `resource` for `owner` and returns the answer's lock (asserting it was
    /// granted).
    pub async fn lock(&self, resource: &Value, owner: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/locks/acquire",
                json!({"resource": resource, "owner": owner}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["acquired"], true, "{body}");
        body["lock"].clone()
    }

    /// The queue of `resource` (GET /api/v1/queue).
    pub async fn queue(&self, resource: &Value) -> Value {
        let (status, body) = self
            .get(&format!("/api/v1/queue?{}", query(resource)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the queue of `resource` until it has `n` entries, within [`EVENTUALLY`].
    pub async fn wait_for_queue_len(&self, resource: &Value, n: usize) -> Value {
        let start = tokio::time::Instant::now();
        loop {
            let q = self.queue(resource).await;
            let len = q["entries"].as_array().map_or(0, Vec::len);
            if len == n {
                return q;
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "queue never reached {n} entries: {q}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Signals shutdown and waits for the server to stop (bounded), then closes the
    /// backend, as the binary does.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(EVENTUALLY, task)
                .await
                .expect("server stops within the bound")
                .expect("server task")
                .expect("serve");
        }
        self.backend.close().await;
    }
}

/// A resource in the API's JSON form.
pub fn resource(repo: &str, workspace: &str) -> Value {
    json!({"repo": repo, "path": ".", "workspace": workspace, "project_name": ""})
}

/// A resource as the query string of GET /api/v1/lock and /api/v1/queue.
pub fn query(resource: &Value) -> String {
    let s = |k: &str| resource[k].as_str().unwrap_or_default().to_string();
    serde_urlencoded::to_string([
        ("repo", s("repo")),
        ("path", s("path")),
        ("workspace", s("workspace")),
        ("project_name", s("project_name")),
    ])
    .expect("encode query")
}

/// Asserts an error answer: status, code and (when given) field.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    want: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}
