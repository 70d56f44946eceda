//! [`HttpBackend`]: the [`Backend`] contract over the HTTP API
//! (`docs/api.md`), so every CLI command runs the same code whether it
//! talks to a server or opens a store directly.
//!
//! The API's error body (`{"error": {"code", "message", "field"}}`) is mapped back to
//! the operation's error by its code: `not_owner` becomes [`UnlockError::NotOwner`],
//! `backend_unavailable` a [`BackendError::Unavailable`], and so on. Two codes have no
//! operation error of their own: `unauthorized` and `forbidden` come back as an
//! invalid request on the field `authorization`, naming the server's reason. A server
//! that cannot be reached is `backend_unavailable`: fail closed, like any backend.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, ErrorCode, ImportError,
    ImportOptions, ImportReport, InvalidRequest, LeaseId, Lock, LockEvent, LockFilter, LockPage,
    LockRequest, LockResponse, Owner, PullUnlockResponse, QueryError, QueueEntryView, QueueStatus,
    RefreshError, Resource, Snapshot, TransferAuth, TransferError, TryLockError, UnlockError,
    UnlockResponse, WaitSpec,
};
use tokio::sync::broadcast;

/// How long a call that does not wait may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to a waiting acquire's wait, for the server to answer after its deadline.
const WAIT_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait a `wait: default` may mean (the server clamps to its max_timeout).
const DEFAULT_WAIT_BOUND: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A tflock server, as a backend.
pub struct HttpBackend {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    events: broadcast::Sender<LockEvent>,
    sse: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A call that failed: the server's error, or no usable answer.
#[derive(Debug)]
enum CallError {
    Api(tflock_core::Error),
    Transport(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: tflock_core::Error,
}

impl HttpBackend {
    /// A client of the server at `base` (`http://host:port`, a bare `host:port` is
    /// read as `http://`), sending `token` as the bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<HttpBackend, String> {
        let base = normalise_base(base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("tflock-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let (events, _) = broadcast::channel(1024);
        Ok(HttpBackend {
            base,
            client,
            token: token.filter(|t| !t.is_empty()),
            events,
            sse: Mutex::new(None),
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/health/locking` as the server wrote it, with its status.
    pub async fn health_report(&self) -> Result<(u16, Value), BackendError> {
        let resp = self
            .request(Method::GET, "/api/health/locking", CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| {
            BackendError::Unavailable(format!(
                "{} answered /api/health/locking with something that is not JSON: {e}",
                self.base
            ))
        })?;
        Ok((status, body))
    }

    /// `GET /api/cluster`: the servers sharing the store, the leader and its epoch.
    pub async fn cluster(&self) -> Result<Value, BackendError> {
        let resp = self
            .request(Method::GET, "/api/cluster", CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| {
            BackendError::Unavailable(format!(
                "{} answered /api/cluster with something that is not JSON: {e}",
                self.base
            ))
        })?;
        if !status.is_success() {
            return Err(BackendError::Unavailable(format!(
                "{} answered /api/cluster with {status}: {body}",
                self.base
            )));
        }
        Ok(body)
    }

    /// Whether a tflock server answers `GET /healthz` within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let resp = self
            .request(Method::GET, "/healthz", timeout)
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("/healthz answered {}", resp.status()))
        }
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    fn transport(&self, e: reqwest::Error) -> BackendError {
        BackendError::Unavailable(format!(
            "cannot reach the tflock server at {}: {}",
            self.base,
            describe_reqwest(&e)
        ))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<&[(&str, String)]>,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let mut rb = self.request(method.clone(), path, timeout);
        if let Some(q) = query {
            rb = rb.query(q);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            CallError::Transport(format!(
                "cannot reach the tflock server at {}: {}",
                self.base,
                describe_reqwest(&e)
            ))
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            CallError::Transport(format!(
                "the tflock server at {} broke off its answer to {method} {path}: {}",
                self.base,
                describe_reqwest(&e)
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CallError::Api(tflock_core::Error::new(
                    ErrorCode::Internal,
                    format!(
                        "{} answered {method} {path} with a body this tflock cannot read: {e}",
                        self.base
                    ),
                ))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => Err(CallError::Api(b.error)),
            Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
                Err(CallError::Api(tflock_core::Error::new(
                    ErrorCode::BackendUnavailable,
                    format!("{} answered {status}", self.base),
                )))
            }
            Err(_) => Err(CallError::Api(tflock_core::Error::new(
                ErrorCode::Internal,
                format!(
                    "{} answered {method} {path} with {status} and no tflock error (is it a tflock server?)",
                    self.base
                ),
            ))),
        }
    }

    fn ensure_events(&self) {
        let mut sse = self.sse.lock().unwrap_or_else(|p| p.into_inner());
        if sse.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rb = self.request(Method::GET, "/api/events", Duration::from_secs(365 * 86400));
        let tx = self.events.clone();
        *sse = Some(rt.spawn(read_events(rb, tx)));
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(h) = self.sse.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

/// Reads `GET /api/events` (Server-Sent Events) into `tx`, reconnecting after a
/// dropped stream, until nobody listens any more.
async fn read_events(rb: reqwest::RequestBuilder, tx: broadcast::Sender<LockEvent>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.receiver_count() == 0 {
            return;
        }
        let Some(req) = rb.try_clone() else { return };
        if let Ok(mut resp) = req.send().await
            && resp.status().is_success()
        {
            backoff = Duration::from_millis(100);
            let mut buf = String::new();
            let mut data = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line = buf[..nl].trim_end_matches('\r').to_string();
                    buf.drain(..=nl);
                    if line.is_empty() {
                        if let Ok(ev) = serde_json::from_str::<LockEvent>(&data) {
                            let _ = tx.send(ev);
                        }
                        data.clear();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if tx.receiver_count() == 0 {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A reqwest error with its causes, once each ("connection failed: ...").
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

fn normalise_base(base: &str) -> Result<String, String> {
    let b = base.trim().trim_end_matches('/');
    if b.is_empty() {
        return Err("the server URL is empty".into());
    }
    let b = if b.contains("://") {
        b.to_string()
    } else {
        format!("http://{b}")
    };
    if !(b.starts_with("http://") || b.starts_with("https://")) {
        return Err(format!("'{base}' is not an http:// or https:// URL"));
    }
    reqwest::Url::parse(&b).map_err(|e| format!("'{base}' is not a URL: {e}"))?;
    Ok(b)
}

/// Percent-encodes one path segment.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn resource_query(r: &Resource) -> Vec<(&'static str, String)> {
    vec![
        ("repo", r.repo.clone()),
        ("path", r.path.clone()),
        ("workspace", r.workspace.clone()),
        ("project_name", r.project_name.clone()),
    ]
}

/// `"field: message"` back to its parts (the server writes invalid requests so).
fn invalid(e: &tflock_core::Error) -> InvalidRequest {
    let field = e.field.clone().unwrap_or_else(|| "request".into());
    let message = e
        .message
        .strip_prefix(&format!("{field}: "))
        .unwrap_or(&e.message)
        .to_string();
    InvalidRequest::new(field, message)
}

/// The parts of the mapping every operation shares: transport failures, invalid
/// requests, auth, unavailability; `specific` maps the operation's own codes.
fn map_err<E>(e: CallError, specific: impl FnOnce(&tflock_core::Error) -> Option<E>) -> E
where
    E: From<InvalidRequest> + From<BackendError>,
{
    let e = match e {
        CallError::Transport(m) => return BackendError::Unavailable(m).into(),
        CallError::Api(e) => e,
    };
    if let Some(mapped) = specific(&e) {
        return mapped;
    }
    match e.code {
        ErrorCode::InvalidRequest => invalid(&e).into(),
        ErrorCode::Unauthorized | ErrorCode::Forbidden => InvalidRequest::new(
            "authorization",
            format!("the server refused the call ({}): {}", e.code, e.message),
        )
        .into(),
        ErrorCode::BackendUnavailable => BackendError::Unavailable(
            e.message
                .strip_prefix("backend unavailable: ")
                .unwrap_or(&e.message)
                .to_string(),
        )
        .into(),
        ErrorCode::Internal => BackendError::Internal(
            e.message
                .strip_prefix("internal backend error: ")
                .unwrap_or(&e.message)
                .to_string(),
        )
        .into(),
        other => BackendError::Internal(format!("unexpected {other} answer: {}", e.message)).into(),
    }
}

fn no_specific<E>(_: &tflock_core::Error) -> Option<E> {
    None
}

fn owner_json(o: &Owner) -> Value {
    let mut v = json!({"owner": o.owner, "note": o.note});
    if let Some(u) = &o.user {
        v["user"] = json!(u);
    }
    if let Some(p) = &o.pull {
        v["pull"] = json!(p);
    }
    v
}

#[derive(Deserialize)]
struct LockBody {
    lock: Lock,
}

#[derive(Deserialize)]
struct EntriesBody {
    entries: Vec<QueueEntryView>,
}

#[derive(Deserialize)]
struct CancelledBody {
    cancelled: QueueEntryView,
}

#[async_trait]
impl Backend for HttpBackend {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        let timeout = match (request.wait, request.reserve) {
            (Some(WaitSpec::For(d)), false) => d + WAIT_MARGIN,
            (Some(WaitSpec::Default), false) => DEFAULT_WAIT_BOUND + WAIT_MARGIN,
            _ => CALL_TIMEOUT,
        };
        let body = serde_json::to_value(&request)
            .map_err(|e| BackendError::Internal(format!("cannot encode the request: {e}")))?;
        self.call(
            Method::POST,
            "/api/v1/locks/acquire",
            None,
            Some(body),
            timeout,
        )
        .await
        .map_err(|e| {
            map_err(e, |e| {
                (e.code == ErrorCode::QueueFull).then(|| TryLockError::QueueFull {
                    max: e
                        .message
                        .split(|c: char| !c.is_ascii_digit())
                        .find_map(|n| n.parse().ok())
                        .unwrap_or(0),
                })
            })
        })
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        let body = json!({"resource": resource, "lease_id": lease_id});
        self.call(
            Method::POST,
            "/api/v1/locks/release",
            None,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| map_err(e, unlock_specific))
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<tflock_core::FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        let mut body = json!({"resource": resource, "force": true});
        if let Some(t) = expected_token {
            body["expected_token"] = json!(t.0);
        }
        self.call(
            Method::POST,
            "/api/v1/locks/release",
            None,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| map_err(e, unlock_specific))
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        let body = json!({"repo": repo, "pull": pull});
        self.call(
            Method::POST,
            "/api/v1/locks/release-pull",
            None,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| map_err(e, unlock_specific))
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        let body = json!({
            "resource": resource,
            "lease_id": lease_id,
            "ttl": humantime::format_duration(ttl).to_string(),
        });
        self.call::<LockBody>(
            Method::POST,
            "/api/v1/locks/refresh",
            None,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
        .map(|b| b.lock)
        .map_err(|e| {
            map_err(e, |e| {
                matches!(
                    e.code,
                    ErrorCode::LeaseLost | ErrorCode::NotFound | ErrorCode::NotOwner
                )
                .then_some(RefreshError::LeaseLost)
            })
        })
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        let mut body = json!({"resource": resource, "to": owner_json(&to)});
        match auth {
            TransferAuth::Lease(l) => body["lease_id"] = json!(l),
            TransferAuth::Admin => body["force"] = json!(true),
        }
        self.call::<LockBody>(
            Method::POST,
            "/api/v1/locks/transfer",
            None,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
        .map(|b| b.lock)
        .map_err(|e| {
            map_err(e, |e| match e.code {
                ErrorCode::NotFound => Some(TransferError::NotFound),
                ErrorCode::LeaseLost | ErrorCode::NotOwner => Some(TransferError::LeaseLost),
                _ => None,
            })
        })
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        let q = resource_query(resource);
        match self
            .call::<LockBody>(Method::GET, "/api/v1/lock", Some(&q), None, CALL_TIMEOUT)
            .await
        {
            Ok(b) => Ok(Some(b.lock)),
            Err(CallError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(map_err(e, no_specific)),
        }
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("repo", filter.repo),
            ("owner", filter.owner),
            ("user", filter.user),
            ("cursor", filter.cursor),
            ("limit", filter.limit.map(|n| n.to_string())),
        ] {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        self.call(Method::GET, "/api/v1/locks", Some(&q), None, CALL_TIMEOUT)
            .await
            .map_err(|e| map_err(e, no_specific))
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        let q = resource_query(resource);
        self.call(Method::GET, "/api/v1/queue", Some(&q), None, CALL_TIMEOUT)
            .await
            .map_err(|e| map_err(e, no_specific))
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        let path = format!("/api/v1/queue/user/{}", segment(username));
        self.call::<EntriesBody>(Method::GET, &path, None, None, CALL_TIMEOUT)
            .await
            .map(|b| b.entries)
            .map_err(|e| map_err(e, no_specific))
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        let mut path = format!("/api/v1/queue/{}", segment(entry_id));
        if let Some(r) = expected_resource {
            // The server checks the entry still waits in this resource's queue in the
            // same atomic step as the cancel.
            let q = serde_urlencoded::to_string([
                ("repo", r.repo.as_str()),
                ("path", r.path.as_str()),
                ("workspace", r.workspace.as_str()),
                ("project_name", r.project_name.as_str()),
            ])
            .map_err(|e| CancelError::Backend(BackendError::Internal(e.to_string())))?;
            path = format!("{path}?{q}");
        }
        self.call::<CancelledBody>(Method::DELETE, &path, None, None, CALL_TIMEOUT)
            .await
            .map(|b| b.cancelled)
            .map_err(|e| {
                map_err(e, |e| {
                    (e.code == ErrorCode::NotFound).then_some(CancelError::NotFound)
                })
            })
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        let (status, body) = self.health_report().await?;
        // The server's own check is `check` (older servers: `health`).
        if let Some(h) = ["check", "health", "last_check"]
            .iter()
            .filter_map(|k| body.get(*k))
            .find_map(|h| serde_json::from_value::<BackendHealth>(h.clone()).ok())
            .filter(|h| h.healthy && status < 300)
        {
            return Ok(h);
        }
        let why = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server reports its backend unhealthy ({status})"));
        Err(BackendError::Unavailable(why))
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        let (_, body) = self.health_report().await?;
        body.get("metrics")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "{} gave no backend metrics in /api/health/locking",
                    self.base
                ))
            })
    }

    async fn export(&self) -> Result<Snapshot, BackendError> {
        self.call(
            Method::GET,
            "/api/v1/admin/export",
            None,
            None,
            CALL_TIMEOUT * 5,
        )
        .await
        .map_err(|e| {
            let e: QueryError = map_err(e, |e| {
                (e.code == ErrorCode::NotFound).then(|| {
                    QueryError::Backend(BackendError::Internal(format!(
                        "the server has no admin export ({}); is it an older tflock?",
                        e.message
                    )))
                })
            });
            match e {
                QueryError::Backend(b) => b,
                other => BackendError::Internal(other.to_string()),
            }
        })
    }

    async fn import(
        &self,
        snapshot: Snapshot,
        options: ImportOptions,
    ) -> Result<ImportReport, ImportError> {
        let q = [
            ("dry_run", options.dry_run.to_string()),
            ("overwrite", options.overwrite.to_string()),
        ];
        let body = serde_json::to_value(&snapshot)
            .map_err(|e| BackendError::Internal(format!("cannot encode the snapshot: {e}")))?;
        self.call(
            Method::POST,
            "/api/v1/admin/import",
            Some(&q),
            Some(body),
            CALL_TIMEOUT * 5,
        )
        .await
        .map_err(|e| {
            map_err(e, |e| {
                (e.code == ErrorCode::NotFound).then(|| {
                    ImportError::Backend(BackendError::Internal(format!(
                        "the server has no admin import ({}); is it an older tflock?",
                        e.message
                    )))
                })
            })
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        let rx = self.events.subscribe();
        self.ensure_events();
        rx
    }

    async fn close(&self) {
        if let Some(h) = self.sse.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

fn unlock_specific(e: &tflock_core::Error) -> Option<UnlockError> {
    match e.code {
        ErrorCode::NotFound => Some(UnlockError::NotFound),
        ErrorCode::NotOwner | ErrorCode::LeaseLost => Some(UnlockError::NotOwner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_normalised() {
        assert_eq!(
            normalise_base("127.0.0.1:4141").unwrap(),
            "http://127.0.0.1:4141"
        );
        assert_eq!(normalise_base("http://h:1/").unwrap(), "http://h:1");
        assert!(normalise_base("ftp://h").is_err());
        assert!(normalise_base("").is_err());
    }

    #[test]
    fn invalid_requests_keep_their_field() {
        let e = tflock_core::Error {
            code: ErrorCode::InvalidRequest,
            message: "resource.path: '..' segments are not allowed".into(),
            field: Some("resource.path".into()),
        };
        let back: UnlockError = map_err(CallError::Api(e), unlock_specific);
        assert_eq!(back.field(), Some("resource.path"));
        assert_eq!(
            back.to_string(),
            "resource.path: '..' segments are not allowed"
        );
    }

    #[test]
    fn codes_map_to_operation_errors() {
        let api = |code| CallError::Api(tflock_core::Error::new(code, "x"));
        assert_eq!(
            map_err(api(ErrorCode::NotOwner), unlock_specific),
            UnlockError::NotOwner
        );
        assert_eq!(
            map_err(api(ErrorCode::NotFound), unlock_specific),
            UnlockError::NotFound
        );
        let e: UnlockError = map_err(api(ErrorCode::BackendUnavailable), unlock_specific);
        assert_eq!(e.code(), ErrorCode::BackendUnavailable);
        let e: UnlockError = map_err(api(ErrorCode::Forbidden), unlock_specific);
        assert_eq!(e.field(), Some("authorization"));
        let e: UnlockError = map_err(CallError::Transport("down".into()), unlock_specific);
        assert_eq!(e.code(), ErrorCode::BackendUnavailable);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
