//! Outgoing webhooks: every event POSTed as JSON to each configured URL.
//!
//! One dispatcher task reads the backend's event stream and puts each event, encoded
//! and signed once, into a bounded queue per receiver; one worker per receiver
//! delivers its queue in order, retrying a failed delivery with exponential back-off
//! a bounded number of times. Lock operations never wait for a receiver: the event
//! stream is a broadcast channel that drops for laggards, and a full queue drops its
//! oldest event (counted in `tflock_webhook_dropped_total`). A receiver that hangs
//! costs at most one `timeout` per attempt, in its own worker only.
//!
//! Each delivery carries:
//!
//! - `Content-Type: application/json`, the body being the event as `/api/events`
//!   sends it (`{"event": "lock.acquired", "resource": {...}, "key", "owner",
//!   "fencing_token"?, "entry_id"?, "at"}`);
//! - `X-Tflock-Event`: the event name;
//! - `X-Tflock-Delivery`: an id, the same on every attempt of one delivery, so a
//!   receiver can drop duplicates (a delivery whose answer was lost is retried);
//! - `X-Tflock-Signature: sha256=<hex>`: HMAC-SHA256 of the exact body bytes keyed
//!   with `server.webhook_secret`, when one is set ([`signature`]).
//!
//! A 2xx answer is success. 408, 429, 5xx, a timeout or a connection failure is
//! retried; any other status is final (the receiver refused the event). Deliveries
//! still queued when the server stops are lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tflock_core::LockEvent;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::state::Secret;

/// The header carrying the body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-tflock-signature";
/// The header carrying the event name.
pub const EVENT_HEADER: &str = "x-tflock-event";
/// The header carrying the delivery id (the same on every attempt).
pub const DELIVERY_HEADER: &str = "x-tflock-delivery";

/// Where and how to post events.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Receivers (`http://` or `https://`). Never logged whole: a webhook URL often
    /// holds a secret in its path or query.
    pub urls: Vec<String>,
    /// Key of the `X-Tflock-Signature` HMAC; without it deliveries are unsigned.
    pub secret: Option<Secret>,
    /// Events each receiver's queue holds; when full the oldest is dropped.
    pub queue_capacity: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Longest one attempt may take (connect, send, answer).
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("receivers", &self.urls.len())
            .field("secret", &self.secret)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookConfig {
    /// `urls` signed with `secret`, with the default queue, retries and timeout: 1024
    /// events per receiver, 6 attempts 0.5s, 1s, 2s, 4s, 8s apart, 5s per attempt.
    pub fn new(urls: Vec<String>, secret: Option<Secret>) -> Self {
        WebhookConfig {
            urls,
            secret,
            queue_capacity: 1024,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }

    /// Checks the URLs and bounds; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (i, url) in self.urls.iter().enumerate() {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("server.webhooks[{i}]: not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "server.webhooks[{i}]: must be an http:// or https:// URL with a host"
                ));
            }
        }
        if self.queue_capacity == 0 {
            return Err("webhook queue_capacity must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("webhook max_attempts must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("webhook timeout must be greater than zero".into());
        }
        Ok(())
    }

    /// The wait after failed attempt number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` keyed with `secret`: the value of
/// `X-Tflock-Signature`. A receiver recomputes it over the raw body it read and
/// compares in constant time.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One event on its way to one receiver.
#[derive(Clone)]
struct Delivery {
    id: String,
    event: &'static str,
    body: Bytes,
    signature: Option<String>,
}

/// One receiver: its queue and its counts.
struct Receiver {
    index: usize,
    url: reqwest::Url,
    queue: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    /// Wakes the worker; a stored permit means "look at the queue again".
    wake: Notify,
    closed: AtomicBool,
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
}

/// A receiver's counts, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiverStats {
    pub receiver: usize,
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub dropped: u64,
    pub queued: usize,
}

impl Receiver {
    fn push(&self, delivery: Delivery) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(delivery);
        }
        self.wake.notify_one();
    }

    /// The next delivery; `None` once the event stream has ended and the queue is
    /// empty.
    async fn pop(&self) -> Option<Delivery> {
        loop {
            if let Some(d) = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            {
                return Some(d);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.wake.notified().await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn host(&self) -> &str {
        self.url.host_str().unwrap_or("?")
    }

    /// Delivers `d`, retrying as configured; counts the outcome.
    async fn deliver(&self, client: &reqwest::Client, config: &WebhookConfig, d: &Delivery) {
        for attempt in 1..=config.max_attempts {
            let mut req = client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, d.event)
                .header(DELIVERY_HEADER, &d.id)
                .body(d.body.clone());
            if let Some(sig) = &d.signature {
                req = req.header(SIGNATURE_HEADER, sig);
            }
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        tracing::warn!(
                            receiver = self.index,
                            host = self.host(),
                            status = status.as_u16(),
                            event = d.event,
                            "webhook receiver refused the event; not retrying"
                        );
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    format!("status {}", status.as_u16())
                }
                // reqwest's error text names the URL: keep only its kind.
                Err(e) if e.is_timeout() => "timed out".to_string(),
                Err(e) if e.is_connect() => "could not connect".to_string(),
                Err(_) => "request failed".to_string(),
            };
            if attempt == config.max_attempts {
                tracing::warn!(
                    receiver = self.index,
                    host = self.host(),
                    event = d.event,
                    attempts = attempt,
                    last = %outcome,
                    "webhook delivery failed; giving up"
                );
                self.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let wait = config.backoff(attempt);
            tracing::debug!(
                receiver = self.index,
                host = self.host(),
                event = d.event,
                attempt,
                last = %outcome,
                retry_in = ?wait,
                "webhook delivery failed; retrying"
            );
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            receiver: self.index,
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.queue.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }
}

/// The running webhooks of one server; dropping it stops their tasks.
pub(crate) struct Webhooks {
    receivers: Vec<Arc<Receiver>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Starts the dispatcher over `events` and one worker per valid URL. An invalid
    /// URL is logged (by index) and skipped: check with [`WebhookConfig::validate`]
    /// first to refuse it instead.
    pub(crate) fn start(config: WebhookConfig, events: broadcast::Receiver<LockEvent>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tflock/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "webhook HTTP client: falling back to defaults");
                reqwest::Client::new()
            });
        let receivers: Vec<Arc<Receiver>> = config
            .urls
            .iter()
            .enumerate()
            .filter_map(|(index, url)| match reqwest::Url::parse(url) {
                Ok(url) => Some(Arc::new(Receiver {
                    index,
                    url,
                    queue: Mutex::new(VecDeque::new()),
                    capacity: config.queue_capacity.max(1),
                    wake: Notify::new(),
                    closed: AtomicBool::new(false),
                    delivered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                })),
                Err(e) => {
                    tracing::warn!(receiver = index, error = %e, "webhook URL is not a URL; skipped");
                    None
                }
            })
            .collect();
        let config = Arc::new(config);
        let mut tasks = Vec::with_capacity(receivers.len() + 1);
        tasks.push(tokio::spawn(dispatch(
            events,
            receivers.clone(),
            config.secret.clone(),
        )));
        for r in &receivers {
            let (r, client, config) = (r.clone(), client.clone(), config.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(d) = r.pop().await {
                    r.deliver(&client, &config, &d).await;
                }
            }));
        }
        Webhooks { receivers, tasks }
    }

    pub(crate) fn receivers(&self) -> usize {
        self.receivers.len()
    }

    pub(crate) fn stats(&self) -> Vec<ReceiverStats> {
        self.receivers.iter().map(|r| r.stats()).collect()
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads the event stream and queues every event for every receiver.
async fn dispatch(
    mut events: broadcast::Receiver<LockEvent>,
    receivers: Vec<Arc<Receiver>>,
    secret: Option<Secret>,
) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let body = match serde_json::to_vec(&event) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not encode an event for webhooks");
                        continue;
                    }
                };
                let delivery = Delivery {
                    id: tflock_core::random_hex(16),
                    event: event.event.as_str(),
                    signature: secret.as_ref().map(|s| signature(s.expose(), &body)),
                    body,
                };
                for r in &receivers {
                    r.push(delivery.clone());
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                for r in &receivers {
                    r.dropped.fetch_add(missed, Ordering::Relaxed);
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                for r in &receivers {
                    r.close();
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = WebhookConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(450),
            ..WebhookConfig::new(vec![], None)
        };
        let waits: Vec<_> = (1..=5).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 450, 450]);
        assert_eq!(c.backoff(200), Duration::from_millis(450));
    }

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_checked_and_never_printed() {
        let c = WebhookConfig::new(vec!["ftp://x".into()], None);
        assert!(c.validate().unwrap_err().contains("server.webhooks[0]"));
        let c = WebhookConfig::new(
            vec!["https://hooks.example/T0/secret-path".into()],
            Secret::new("k"),
        );
        assert!(c.validate().is_ok());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret-path") && !shown.contains("\"k\""),
            "{shown}"
        );
    }
}
