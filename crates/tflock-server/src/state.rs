//! What every handler shares: the backend, the tokens, the metrics and the shutdown flag.

use std::fmt;
use std::sync::Arc;

use tflock_core::SharedBackend;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// A bearer token. Its `Debug` form is redacted so a token never lands in a log, even
/// when a whole config or state is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A token; `None` when `value` is empty, because an empty token would let every
    /// caller that sends `Authorization: Bearer ` through.
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let value = value.into();
        (!value.is_empty()).then_some(Secret(value))
    }

    /// The token itself, for comparison only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The bearer tokens the server accepts.
///
/// - `api`: needed by every mutating call once set (the admin token works too).
/// - `admin`: needed by admin calls (force release, force transfer, release-pull).
///
/// With neither set every call is open, which the `tflock` binary only allows on a
/// loopback address. With only `api` set, admin calls are refused (403): an operator
/// who protects the API has not chosen who may force-unlock.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub api: Option<Secret>,
    pub admin: Option<Secret>,
}

impl Tokens {
    /// No tokens: every call is open.
    pub fn none() -> Self {
        Tokens::default()
    }

    /// Whether any token is configured.
    pub fn any(&self) -> bool {
        self.api.is_some() || self.admin.is_some()
    }
}

/// The state of one server; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    backend: SharedBackend,
    tokens: Tokens,
    metrics: Metrics,
    /// Set to `true` once shutdown begins. Long-lived requests (a waiting acquire, an
    /// event stream) watch it and end, so a graceful shutdown never waits for them.
    closing: watch::Sender<bool>,
}

impl AppState {
    /// State over `backend` with the given tokens.
    pub fn new(backend: SharedBackend, tokens: Tokens) -> Self {
        let (closing, _) = watch::channel(false);
        AppState {
            inner: Arc::new(Inner {
                backend,
                tokens,
                metrics: Metrics::new(),
                closing,
            }),
        }
    }

    pub fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Tells long-lived requests to finish: waiting acquires answer
    /// `backend_unavailable` (their queue entries are removed), event streams end.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Completes once [`AppState::begin_shutdown`] has been called.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut rx = self.inner.closing.subscribe();
        async move {
            // `wait_for` fails only when the sender is gone, which means the state is
            // gone: treat it as shutdown too.
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.backend.name())
            .field("tokens", &self.inner.tokens)
            .finish_non_exhaustive()
    }
}
