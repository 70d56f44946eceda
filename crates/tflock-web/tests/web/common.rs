//! A real tflock server (the API server's router, which merges the web page) on an
//! ephemeral loopback port over the real embedded store in a temporary directory,
//! and small HTTP helpers for pages and forms.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_health::{BreakerSettings, GuardedBackend, Health};
use tflock_server::{AppState, Secret, Tokens, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for "this happens soon". Generous: CI shares two cores with compiling
/// and with Chromium.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

pub const API_TOKEN: &str = "web-test-api-token-5b1f0c";
pub const ADMIN_TOKEN: &str = "web-test-admin-token-e93a77";

/// How to start a server.
#[derive(Clone)]
pub struct Options {
    pub tokens: Tokens,
    /// Put the store behind a `GuardedBackend` and give the server its `Health`.
    pub health: bool,
}

impl Options {
    /// API and admin tokens set, no health handle.
    pub fn tokens() -> Self {
        Options {
            tokens: Tokens {
                api: Secret::new(API_TOKEN),
                admin: Secret::new(ADMIN_TOKEN),
            },
            health: false,
        }
    }

    /// No token at all (a loopback development server).
    pub fn open() -> Self {
        Options {
            tokens: Tokens::none(),
            health: false,
        }
    }
}

pub struct TestServer {
    pub base: String,
    /// Follows no redirects, keeps no cookies: every test says what it sends.
    pub client: reqwest::Client,
    opts: Options,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedBackend::open(
            EmbeddedConfig {
                path: dir.path().join("locks.redb"),
                settings: LockSettings::default(),
            },
            Arc::new(SystemClock),
        )
        .await
        .expect("open the embedded store");
        let store: SharedBackend = store;
        let state = if opts.health {
            let health = Arc::new(Health::new(
                "embedded",
                BreakerSettings::default(),
                true,
                Arc::new(SystemClock),
            ));
            let guarded: SharedBackend = Arc::new(GuardedBackend::new(store, health.clone()));
            AppState::new(guarded, opts.tokens.clone()).with_health(health)
        } else {
            AppState::new(store, opts.tokens.clone())
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            opts,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A JSON API call with the API token (when one is set).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        if self.opts.tokens.api.is_some() {
            req = req.bearer_auth(API_TOKEN);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /api/v1/locks/acquire`, asserting a 200.
    pub async fn acquire(&self, body: Value) -> Value {
        let (status, v) = self
            .api(reqwest::Method::POST, "/api/v1/locks/acquire", Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "acquire: {v}");
        v
    }

    /// The holder's owner string, or `None` when the lock is free.
    pub async fn holder(&self, r: &Value) -> Option<String> {
        let q = serde_urlencoded::to_string([
            ("repo", r["repo"].as_str().unwrap()),
            ("path", r["path"].as_str().unwrap()),
            ("workspace", r["workspace"].as_str().unwrap()),
            ("project_name", r["project_name"].as_str().unwrap()),
        ])
        .unwrap();
        let (status, v) = self
            .api(reqwest::Method::GET, &format!("/api/v1/lock?{q}"), None)
            .await;
        match status {
            StatusCode::OK => Some(v["lock"]["owner"].as_str().unwrap().to_string()),
            StatusCode::NOT_FOUND => None,
            s => panic!("GET /api/v1/lock: {s} {v}"),
        }
    }

    /// The owners in a lock's queue, in grant order.
    pub async fn queue(&self, r: &Value) -> Vec<String> {
        let q = serde_urlencoded::to_string([
            ("repo", r["repo"].as_str().unwrap()),
            ("path", r["path"].as_str().unwrap()),
            ("workspace", r["workspace"].as_str().unwrap()),
            ("project_name", r["project_name"].as_str().unwrap()),
        ])
        .unwrap();
        let (status, v) = self
            .api(reqwest::Method::GET, &format!("/api/v1/queue?{q}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["owner"].as_str().unwrap().to_string())
            .collect()
    }

    /// A page, with extra headers (e.g. a cookie).
    pub async fn page(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("send");
        let (status, h) = (resp.status(), resp.headers().clone());
        (status, h, resp.text().await.expect("body"))
    }

    /// A form post, with extra headers.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self.client.post(self.url(path)).form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("send");
        let (status, h) = (resp.status(), resp.headers().clone());
        (status, h, resp.text().await.expect("body"))
    }

    /// Logs in with the admin token; answers the `Cookie` header value to send.
    pub async fn login(&self) -> String {
        let (status, h, body) = self
            .post_form("/ui/login", &[("token", ADMIN_TOKEN), ("next", "/")], &[])
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let set = h
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap();
        set.split(';').next().unwrap().to_string()
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(EVENTUALLY, task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A resource as the API takes it.
pub fn resource(repo: &str, path: &str, workspace: &str, project: &str) -> Value {
    json!({"repo": repo, "path": path, "workspace": workspace, "project_name": project})
}

/// The lock page's address of `r`.
pub fn lock_page(r: &Value) -> String {
    format!(
        "/ui/lock?{}",
        serde_urlencoded::to_string([
            ("repo", r["repo"].as_str().unwrap()),
            ("path", r["path"].as_str().unwrap()),
            ("workspace", r["workspace"].as_str().unwrap()),
            ("project_name", r["project_name"].as_str().unwrap()),
        ])
        .unwrap()
    )
}

/// The value of the first `name="{field}" value="..."` in `html`.
pub fn form_value(html: &str, field: &str) -> Option<String> {
    let marker = format!(r#"name="{field}" value=""#);
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_string())
}

/// Polls `check` until it answers `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
