//! A real tflock server on an ephemeral loopback port over a real backend (the
//! embedded store in a temporary directory, or Redis under a fresh key prefix on a
//! shared `redis-server`), and a small JSON client for it.
//!
//! Tests written once as `async fn name(store: Store)` run on both backends through
//! [`on_both_backends!`], which makes `embedded::name` and `redis::name` tests.

#![allow(dead_code)]

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tflock_core::{LockSettings, ManualClock, SharedBackend, SharedClock, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_server::{AppState, Limits, Secret, Tokens, WebhookConfig, serve};
use tflock_testkit::{RedisOptions, RedisServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for "this happens soon" (a queue entry appears or goes away, a waiter
/// wakes). Generous: CI shares two cores with compiling.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

pub const API_TOKEN: &str = "api-token-for-tests";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// Which real backend a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded store in a temporary directory.
    Embedded,
    /// Redis: a fresh key prefix on the shared `redis-server` ([`shared_redis`]).
    Redis,
}

/// Makes `embedded::<name>` and `redis::<name>` tests of each `async fn <name>(Store)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Store::Embedded).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Store::Redis).await
                }
            )*
        }
    };
}

/// The `redis-server` the Redis tests of this binary share, each under its own key
/// prefix. Started on first use; stopped when no running test holds it any more, so
/// a run never leaves it (or its directory) behind.
pub fn shared_redis() -> Arc<RedisServer> {
    static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(RedisServer::start(RedisOptions::default()));
    *slot = Arc::downgrade(&server);
    server
}

/// A Redis configuration for `server` under a fresh key prefix, with timeouts short
/// enough for failure tests and long enough for a loaded two-core machine.
pub fn redis_config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        key_prefix: format!("tflock-http-test:{}:", tflock_core::random_hex(6)),
        connection_timeout: Duration::from_secs(2),
        dial_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        pool_timeout: Duration::from_secs(2),
        ..RedisConfig::standalone(server.addr().to_string())
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub backend: SharedBackend,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// What the backend needs kept alive: a temporary directory, a Redis server.
    _keep: Vec<Box<dyn Any + Send + Sync>>,
}

/// How to start a server.
pub struct Options {
    pub tokens: Tokens,
    pub settings: LockSettings,
    pub clock: SharedClock,
    pub limits: Limits,
    pub webhooks: Option<WebhookConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: Tokens::none(),
            settings: LockSettings::default(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            webhooks: None,
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

/// A fresh, empty backend of kind `store`, and what must outlive it.
pub async fn open_backend(
    store: Store,
    settings: LockSettings,
    clock: SharedClock,
) -> (SharedBackend, Vec<Box<dyn Any + Send + Sync>>) {
    match store {
        Store::Embedded => {
            let dir = tempfile::tempdir().expect("tempdir");
            let backend = EmbeddedBackend::open(
                EmbeddedConfig {
                    path: dir.path().join("locks.redb"),
                    settings,
                },
                clock,
            )
            .await
            .expect("open the embedded store");
            let backend: SharedBackend = backend;
            (backend, vec![Box::new(dir)])
        }
        Store::Redis => {
            let server = tokio::task::spawn_blocking(shared_redis)
                .await
                .expect("start redis");
            let backend = RedisBackend::connect(redis_config(&server), settings, clock)
                .await
                .expect("connect to redis");
            let backend: SharedBackend = backend;
            (backend, vec![Box::new(server)])
        }
    }
}

impl Store {
    /// The backend's name as the API reports it.
    pub fn name(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Redis => "redis",
        }
    }
}

impl TestServer {
    pub async fn start(store: Store) -> Self {
        Self::start_with(store, Options::default()).await
    }

    pub async fn start_with(store: Store, opts: Options) -> Self {
        let (backend, keep) = open_backend(store, opts.settings, opts.clock).await;
        let mut state = AppState::new(backend.clone(), opts.tokens).with_limits(opts.limits);
        if let Some(w) = opts.webhooks {
            state = state.with_webhooks(w);
        }
        Self::serve_state(store, state, backend, keep).await
    }

    /// Serves `state` (over `backend`, which [`TestServer::shutdown`] closes).
    pub async fn serve_state(
        store: Store,
        state: AppState,
        backend: SharedBackend,
        keep: Vec<Box<dyn Any + Send + Sync>>,
    ) -> Self {
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
            store,
            shutdown: Some(tx),
            task: Some(task),
            _keep: keep,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; answers the status and the body as JSON (`Value::Null` when
    /// the body is not JSON).
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

    pub async fn get_as(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, Some(token)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None, None).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text")
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
