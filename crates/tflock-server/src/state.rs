//! What every handler shares: the backend, the tokens, the limits, the optional health
//! handle and webhooks, the metrics and the shutdown flag.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tflock_core::{SharedBackend, Timestamp};
use tflock_health::Health;
use tokio::sync::watch;

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::webhooks::{WebhookConfig, Webhooks};

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
/// - `admin`: needed by admin calls (force release, force transfer, release-pull,
///   export, import).
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
///
/// Built with [`AppState::new`] and configured with the `with_*` methods before it is
/// first cloned (they panic on a shared state: configuration is not meant to change
/// under running requests).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    backend: SharedBackend,
    tokens: Tokens,
    limits: Limits,
    /// The backend's breaker and health window, when the backend is a
    /// `tflock_health::GuardedBackend`: the health report and `Retry-After` come from it.
    health: Option<Arc<Health>>,
    /// Outgoing webhooks; dropping the state stops their tasks.
    webhooks: Option<Webhooks>,
    /// This node's identity for `/api/cluster`.
    node_id: String,
    /// The cluster manager (Redis with several servers): `/api/cluster` asks it.
    cluster: Option<Arc<tflock_cluster::Cluster>>,
    /// Routes served beside the API that authenticate by themselves (the VCS webhook
    /// receiver checks the provider's signature, not a bearer token).
    extra_routes: Option<axum::Router>,
    /// Terraform's http state backend at `/tf/...` (docs/terraform.md).
    terraform: Option<crate::terraform::TerraformConfig>,
    started_at: Timestamp,
    /// The address [`crate::serve`] listens on, once it does.
    listen: OnceLock<SocketAddr>,
    metrics: Metrics,
    /// Set to `true` once shutdown begins. Long-lived requests (a waiting acquire, an
    /// event stream) watch it and end, so a graceful shutdown never waits for them.
    closing: watch::Sender<bool>,
}

impl AppState {
    /// State over `backend` with the given tokens, default [`Limits`], no health
    /// handle and no webhooks.
    pub fn new(backend: SharedBackend, tokens: Tokens) -> Self {
        let (closing, _) = watch::channel(false);
        AppState {
            inner: Arc::new(Inner {
                backend,
                tokens,
                limits: Limits::default(),
                health: None,
                webhooks: None,
                node_id: tflock_core::random_hex(8),
                cluster: None,
                extra_routes: None,
                terraform: None,
                started_at: Timestamp::from_system_time(std::time::SystemTime::now()),
                listen: OnceLock::new(),
                metrics: Metrics::new(),
                closing,
            }),
        }
    }

    fn configure(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner)
            .expect("configure an AppState (with_*) before cloning it or serving it")
    }

    /// Reports health from `health` (the handle of the `GuardedBackend` this state
    /// serves): `/api/health/locking` shows its breaker state, HealthMetrics and
    /// PerformanceMetrics, and `backend_unavailable` answers carry its `Retry-After`
    /// while the breaker is open. Run `tflock_health::spawn_monitor` beside it so the
    /// report's health check stays fresh.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.configure().health = Some(health);
        self
    }

    /// Sets the server's limits (body, header and JSON depth caps, time limits,
    /// connection cap).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.configure().limits = limits;
        self
    }

    /// Starts posting every event to the configured webhooks. Must be called inside a
    /// Tokio runtime (it spawns the delivery tasks); they stop when the state is
    /// dropped. A config without URLs does nothing.
    pub fn with_webhooks(mut self, config: WebhookConfig) -> Self {
        let webhooks =
            (!config.urls.is_empty()).then(|| Webhooks::start(config, self.backend().subscribe()));
        self.configure().webhooks = webhooks;
        self
    }

    /// Serves `routes` beside the API, outside its bearer-token checks (they must
    /// authenticate requests themselves), under the same limits and logging.
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        let inner = self.configure();
        inner.extra_routes = Some(match inner.extra_routes.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Serves Terraform's and OpenTofu's http state backend at `/tf/{name}` over
    /// `config.store` (docs/terraform.md).
    pub fn with_terraform(mut self, config: crate::terraform::TerraformConfig) -> Self {
        self.configure().terraform = Some(config);
        self
    }

    /// The Terraform backend, when [`AppState::with_terraform`] set one.
    pub fn terraform(&self) -> Option<&crate::terraform::TerraformConfig> {
        self.inner.terraform.as_ref()
    }

    /// The routes given to [`AppState::with_routes`].
    pub(crate) fn extra_routes(&self) -> Option<&axum::Router> {
        self.inner.extra_routes.as_ref()
    }

    /// Names this node in `/api/cluster` (default: random hex, new at every start).
    pub fn with_node_id(mut self, id: impl Into<String>) -> Self {
        self.configure().node_id = id.into();
        self
    }

    /// Answers `/api/cluster` from `cluster` (every live node, the leader, its epoch),
    /// and names this node by the cluster's node id.
    pub fn with_cluster(mut self, cluster: Arc<tflock_cluster::Cluster>) -> Self {
        let inner = self.configure();
        inner.node_id = cluster.node_id().to_string();
        inner.cluster = Some(cluster);
        self
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<tflock_cluster::Cluster>> {
        self.inner.cluster.as_ref()
    }

    pub fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn health(&self) -> Option<&Arc<Health>> {
        self.inner.health.as_ref()
    }

    pub(crate) fn webhooks(&self) -> Option<&Webhooks> {
        self.inner.webhooks.as_ref()
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub(crate) fn started_at(&self) -> Timestamp {
        self.inner.started_at
    }

    pub(crate) fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen.get().copied()
    }

    pub(crate) fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.inner.listen.set(addr);
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Tells long-lived requests to finish: waiting acquires answer
    /// `backend_unavailable` (their queue entries are removed), event streams end.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Whether [`AppState::begin_shutdown`] has been called.
    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
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
            .field("limits", &self.inner.limits)
            .field("health", &self.inner.health.is_some())
            .field(
                "webhooks",
                &self.inner.webhooks.as_ref().map_or(0, Webhooks::receivers),
            )
            .finish_non_exhaustive()
    }
}
