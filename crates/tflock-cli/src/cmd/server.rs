//! `tflock server`: the HTTP API on the configured backend until SIGINT or SIGTERM.
//!
//! Settings come from flags > `ATLANTIS_ENHANCED_LOCKING_*` > the config file >
//! defaults. Without an API token the server refuses any address that is not loopback.
//! Shutdown is graceful: waiting acquires are answered `backend_unavailable`, then the
//! store is closed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tflock_config::{BackendKind, TflockConfig};
use tflock_core::SystemClock;
use tflock_server::{AppState, Limits, Secret, Tokens, WebhookConfig};

use crate::args::{GlobalArgs, ServerArgs};
use crate::exit::{CliResult, Exit, Failure};
use crate::open::{OpenFailure, open_backend};
use crate::target::{forget_server_address, record_server_address};

/// How long shutdown waits for requests in flight before closing the store anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The server's flags as a tree shaped like the config file.
fn flags(args: &ServerArgs) -> serde_json::Value {
    let mut f = json!({"enhanced_locking": {}});
    let el = &mut f["enhanced_locking"];
    if let Some(l) = &args.listen {
        el["server"]["listen"] = json!(l);
    }
    if let Some(t) = &args.api_token {
        el["server"]["api_token"] = json!(t);
    }
    if let Some(t) = &args.admin_token {
        el["server"]["admin_token"] = json!(t);
    }
    if let Some(d) = &args.data {
        el["embedded"]["path"] = json!(d);
    }
    f
}

fn tokens(config: &TflockConfig) -> CliResult<Tokens> {
    let token = |key: &str, value: &Option<String>| -> CliResult<Option<Secret>> {
        match value {
            None => Ok(None),
            Some(v) => Secret::new(v.clone()).map(Some).ok_or_else(|| {
                Failure::usage(format!("{key} is set but empty; unset it or give a token"))
            }),
        }
    };
    let s = &config.enhanced_locking.server;
    Ok(Tokens {
        api: token("enhanced_locking.server.api_token", &s.api_token)?,
        admin: token("enhanced_locking.server.admin_token", &s.admin_token)?,
    })
}

/// The addresses `listen` names, refused when they are not all loopback and no API
/// token protects the mutating calls.
async fn listen_addrs(listen: &str, tokens: &Tokens) -> CliResult<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot resolve the listen address '{listen}': {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::usage(format!(
            "the listen address '{listen}' resolves to nothing"
        )));
    }
    if tokens.api.is_none()
        && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(Failure::usage(format!(
            "refusing to listen on {open} without an API token: anyone who can reach it \
             could take and release locks. Set ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN \
             (and ..._ADMIN_TOKEN), or listen on a loopback address such as 127.0.0.1:4141"
        )));
    }
    Ok(addrs)
}

pub async fn run(global: &GlobalArgs, args: ServerArgs) -> CliResult<Exit> {
    let loaded = crate::load(global, flags(&args), true)?;
    let config = &loaded.config;
    let el = &config.enhanced_locking;
    if !el.enabled {
        return Err(Failure::usage(format!(
            "enhanced locking is disabled (enhanced_locking.enabled: false, from {}); \
             set it to true to serve locks",
            loaded.source_of("enhanced_locking.enabled")
        )));
    }
    let tokens = tokens(config)?;
    let listen = el.server.listen.clone();
    let addrs = listen_addrs(&listen, &tokens).await?;
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .map_err(|e| Failure::error(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::error(format!("cannot read the bound address: {e}")))?;

    let opened = open_backend(el, Arc::new(SystemClock))
        .await
        .map_err(|e| match e {
            OpenFailure::Embedded(tflock_embedded::OpenError::Settings(s)) => {
                Failure::usage(format!("invalid setting {s}"))
            }
            OpenFailure::Embedded(e) => Failure::unavailable(e.to_string()),
            OpenFailure::Redis(e) => {
                Failure::unavailable(format!("cannot start the Redis backend: {e}"))
            }
        })?;
    let store: Option<PathBuf> =
        (el.backend != BackendKind::Redis).then(|| el.embedded.path.clone());
    if let Some(path) = &store {
        record_server_address(path, &format!("http://{local}"));
    }

    match (&tokens.api, &tokens.admin) {
        (None, None) => tracing::warn!(
            "no API token configured: mutating calls are unauthenticated (allowed because \
             the server listens on loopback only)"
        ),
        (None, Some(_)) => tracing::warn!(
            "no API token configured: mutating calls are unauthenticated; admin calls need the admin token"
        ),
        (Some(_), None) => tracing::info!("no admin token configured: admin calls are disabled"),
        (Some(_), Some(_)) => tracing::info!("API and admin tokens configured"),
    }
    tracing::info!(
        listen = %local,
        store = %opened.description,
        backend = opened.inner.name(),
        config = %loaded.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "none".into()),
        version = env!("CARGO_PKG_VERSION"),
        "tflock server listening"
    );

    // The server holds a waiting acquire open as long as the backend may wait.
    let limits = Limits {
        max_wait: el.max_timeout,
        ..Limits::default()
    };
    // legacy_fallback (docs/atlantis.md): locks still held in Atlantis's store count.
    let backend = match legacy_fallback(el, opened.backend.clone()).await {
        Ok(b) => b,
        Err(e) => {
            opened.close().await;
            return Err(e);
        }
    };
    // With Redis several servers may share the store: join their cluster (registry,
    // leader election, the leader's sweeps and roll-ups; docs/cluster.md).
    let cluster = match &opened.redis {
        Some(redis) => {
            let c = &el.cluster;
            let config = tflock_cluster::ClusterConfig {
                advertise_address: Some(
                    c.advertise_address
                        .clone()
                        .unwrap_or_else(|| local.to_string()),
                ),
                heartbeat_interval: c.heartbeat_interval,
                node_ttl: c.node_ttl,
                leader_lease: c.leader_lease,
                rollup_interval: c.rollup_interval,
                ..tflock_cluster::ClusterConfig::default()
            };
            match tflock_cluster::Cluster::start(redis.clone(), config).await {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    opened.close().await;
                    return Err(Failure::unavailable(format!(
                        "cannot join the cluster: {e}"
                    )));
                }
            }
        }
        None => None,
    };
    let mut state = AppState::new(backend, tokens)
        .with_health(opened.health.clone())
        .with_limits(limits);
    if let Some(c) = &cluster {
        state = state.with_cluster(c.clone());
    }
    if el.terraform.enabled {
        match terraform_backend(el, opened.redis.as_ref()).await {
            Ok(config) => state = state.with_terraform(config),
            Err(e) => {
                opened.close().await;
                return Err(e);
            }
        }
    }
    if !el.server.webhooks.is_empty() {
        let secret = el.server.webhook_secret.clone().and_then(Secret::new);
        tracing::info!(
            receivers = el.server.webhooks.len(),
            signed = secret.is_some(),
            "posting events to webhooks"
        );
        state = state.with_webhooks(WebhookConfig::new(el.server.webhooks.clone(), secret));
    }
    // The VCS webhook receiver (docs/atlantis.md): a closed pull request releases its
    // locks, legacy ones included (it acts on the wrapped backend). It checks the
    // provider's signature or token itself, so it sits outside the bearer-token checks.
    let github = el
        .server
        .github_webhook_secret
        .clone()
        .filter(|s| !s.is_empty());
    let gitlab = el
        .server
        .gitlab_webhook_token
        .clone()
        .filter(|s| !s.is_empty());
    if github.is_some() || gitlab.is_some() {
        tracing::info!(
            github = github.is_some(),
            gitlab = gitlab.is_some(),
            "receiving VCS webhooks at /api/vcs/github and /api/vcs/gitlab"
        );
        let hooks = tflock_migrate::webhook_router(state.backend().clone(), github, gitlab);
        state = state.with_routes(hooks);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(tflock_server::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));

    let result: CliResult<()> = tokio::select! {
        r = &mut server => flatten(r),
        signal = shutdown_signal() => {
            match signal {
                Ok(name) => tracing::info!(signal = name, "shutting down"),
                Err(e) => tracing::warn!(error = %e, "cannot watch signals; shutting down"),
            }
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => flatten(r),
                Err(_) => {
                    tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; closing anyway");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    if let Some(c) = &cluster {
        // Gives up the lead at once (no wait for the lease) and leaves the registry.
        c.shutdown().await;
    }
    opened.close().await;
    if let Some(path) = &store {
        forget_server_address(path);
    }
    tracing::info!("store closed");
    result.map(|()| Exit::Success)
}

/// Terraform's http backend (docs/terraform.md): its states on the active store, a
/// redb file beside the embedded lock store or the same Redis.
async fn terraform_backend(
    el: &tflock_config::EnhancedLocking,
    redis: Option<&Arc<tflock_redis::RedisBackend>>,
) -> CliResult<tflock_server::terraform::TerraformConfig> {
    let tf = &el.terraform;
    let options = tflock_tfstate::StoreOptions {
        max_state_bytes: tf.max_state_bytes,
        keep_versions: tf.keep_versions,
    };
    let store: Arc<dyn tflock_tfstate::StateStore> = match redis {
        Some(r) => Arc::new(tflock_tfstate::RedisStates::new(Arc::clone(r), options)),
        None => {
            let path = tf.state_path.clone().unwrap_or_else(|| {
                let mut p = el.embedded.path.clone().into_os_string();
                p.push(".tfstate");
                PathBuf::from(p)
            });
            let opened = tflock_tfstate::EmbeddedStates::open(&path, options).map_err(|e| {
                Failure::unavailable(format!(
                    "cannot open the Terraform state store {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(path = %path.display(), "Terraform states in the embedded store");
            Arc::new(opened)
        }
    };
    let mut config = tflock_server::terraform::TerraformConfig::new(store);
    config.lock_ttl = tf.lock_ttl;
    config.queue_grace = tf.queue_grace;
    config.long_poll = tf.long_poll;
    // The fair queue is made of reservations: without the priority queue there are
    // none, and a held state is answered 423 like any other http backend's.
    config.fair_queue = tf.fair_queue && el.enable_priority_queue;
    if tf.fair_queue && !el.enable_priority_queue {
        tracing::warn!(
            "enhanced_locking.enable_priority_queue is false: Terraform clients are not queued \
             (a held state is answered 423; whoever polls first after an unlock wins)"
        );
    }
    config.max_state_bytes = tf.max_state_bytes;
    Ok(config)
}

/// With `legacy_fallback: true`, wraps the store in `tflock_migrate::LegacyFallback`
/// over `legacy.boltdb_path` or `legacy.redis_url`, read once now so that a bad
/// source stops start-up.
async fn legacy_fallback(
    el: &tflock_config::EnhancedLocking,
    backend: tflock_core::SharedBackend,
) -> CliResult<tflock_core::SharedBackend> {
    if !el.legacy_fallback {
        return Ok(backend);
    }
    let source = tflock_migrate::LegacySource::from_settings(
        el.legacy.boltdb_path.clone(),
        el.legacy.redis_url.as_deref(),
    )
    .map_err(|e| Failure::usage(format!("enhanced_locking.{}: {}", e.field, e.message)))?
    .ok_or_else(|| {
        Failure::usage(
            "enhanced_locking.legacy_fallback is true but neither legacy.boltdb_path nor \
             legacy.redis_url is set",
        )
    })?;
    let described = source.describe();
    let options = tflock_migrate::LegacyOptions {
        settings: el.lock_settings(),
        ..tflock_migrate::LegacyOptions::default()
    };
    let wrapped =
        tflock_migrate::LegacyFallback::new(backend, source, options, Arc::new(SystemClock));
    wrapped
        .reload()
        .await
        .map_err(|e| Failure::unavailable(e.to_string()))?;
    tracing::info!(source = %described, "legacy_fallback on: locks held in Atlantis's store count as held");
    Ok(wrapped)
}

fn flatten(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> CliResult<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::error(format!("the server failed: {e}"))),
        Err(e) => Err(Failure::error(format!("the server task failed: {e}"))),
    }
}

/// Completes on SIGINT or SIGTERM, naming which.
async fn shutdown_signal() -> Result<&'static str, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(|e| format!("SIGINT: {e}")),
        _ = term.recv() => Ok("SIGTERM"),
    }
}
