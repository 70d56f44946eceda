//! From a loaded configuration to a running backend: `embedded` opens the single-file
//! store, `redis` connects to Redis; either is wrapped in a
//! [`tflock_health::GuardedBackend`] (circuit breaker and metrics window, per the
//! `circuit_breaker` and `enable_metrics` settings) with its health monitor running
//! every `redis.health_check_interval`.
//!
//! `tflock server` serves what this opens; the CLI's direct commands use it too.

use std::sync::Arc;
use std::time::Duration;

use tflock_config::{BackendKind, EnhancedLocking, RedisSettings};
use tflock_core::{SharedBackend, SharedClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig, OpenError};
use tflock_health::{BreakerSettings, GuardedBackend, Health, spawn_monitor};
use tflock_redis::{ConnectError, RedisBackend, RedisConfig};

/// A backend opened from the configuration, behind its breaker.
pub struct Opened {
    /// The guarded backend: what callers use.
    pub backend: SharedBackend,
    /// The store itself (the monitor checks it directly, bypassing the breaker).
    pub inner: SharedBackend,
    /// Breaker state, health and performance metrics.
    pub health: Arc<Health>,
    /// What was opened, for logs (`embedded ./tflock-data/locks.redb`,
    /// `redis standalone localhost:6379`).
    pub description: String,
    /// The Redis backend itself when the store is Redis: the cluster manager
    /// (`tflock-cluster`) runs on it.
    pub redis: Option<Arc<RedisBackend>>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Opened {
    /// Stops the monitor and closes the store.
    pub async fn close(&self) {
        self.monitor.abort();
        self.backend.close().await;
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

/// Why the backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenFailure {
    #[error(transparent)]
    Embedded(#[from] OpenError),
    #[error("cannot start the Redis backend: {0}")]
    Redis(#[from] ConnectError),
}

/// The `redis:` block as the Redis backend takes it.
pub fn redis_config(r: &RedisSettings) -> RedisConfig {
    RedisConfig {
        addresses: r.addresses.clone(),
        password: r.password.clone(),
        auth_method: match r.auth_method {
            tflock_config::AuthMethod::Password => tflock_redis::AuthMethod::Password,
            tflock_config::AuthMethod::Acl => tflock_redis::AuthMethod::Acl,
        },
        username: r.username.clone(),
        db: r.db,
        pool_size: r.pool_size,
        key_prefix: r.key_prefix.clone(),
        connection_timeout: r.connection_timeout,
        read_timeout: r.read_timeout,
        write_timeout: r.write_timeout,
        dial_timeout: r.dial_timeout,
        pool_timeout: r.pool_timeout,
        max_retries: r.max_retries,
        min_retry_backoff: r.min_retry_backoff,
        max_retry_backoff: r.max_retry_backoff,
        cluster_mode: r.cluster_mode,
        sentinel: tflock_redis::SentinelConfig {
            master_name: r.sentinel.master_name.clone(),
            addresses: r.sentinel.addresses.clone(),
        },
        tls_enabled: r.tls_enabled,
        tls_cert_file: r.tls_cert_file.clone(),
        tls_key_file: r.tls_key_file.clone(),
        tls_ca_file: r.tls_ca_file.clone(),
        min_replicas_ack: r.min_replicas_ack,
        require_persistence: r.require_persistence,
    }
}

/// The spec's `circuit_breaker` block (it applies to every backend).
pub fn breaker_settings(r: &RedisSettings) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: r.circuit_breaker.failure_threshold,
        reset_timeout: r.circuit_breaker.reset_timeout,
        half_open_max_requests: r.circuit_breaker.half_open_max_requests,
    }
}

/// Opens the configured backend, guards it and starts its monitor. Needs a tokio
/// runtime.
pub async fn open_backend(el: &EnhancedLocking, clock: SharedClock) -> Result<Opened, OpenFailure> {
    let settings = el.lock_settings();
    let mut redis = None;
    let (inner, description): (SharedBackend, String) = match el.backend {
        // `boltdb` is turned into `embedded` by the loader (with a warning); read it
        // the same way here in case a caller built the config by hand.
        BackendKind::Embedded | BackendKind::Boltdb => {
            let b = EmbeddedBackend::open(
                EmbeddedConfig {
                    path: el.embedded.path.clone(),
                    settings,
                },
                clock.clone(),
            )
            .await?;
            (b, format!("embedded {}", el.embedded.path.display()))
        }
        BackendKind::Redis => {
            let cfg = redis_config(&el.redis);
            let b = RedisBackend::connect(cfg, settings, clock.clone()).await?;
            let where_ = if el.redis.sentinel.master_name.is_some() {
                el.redis.sentinel.addresses.join(",")
            } else {
                el.redis.addresses.join(",")
            };
            let d = format!("redis {} {where_}", b.mode());
            redis = Some(b.clone());
            (b, d)
        }
    };
    let health = Arc::new(Health::new(
        inner.name(),
        breaker_settings(&el.redis),
        el.enable_metrics,
        clock,
    ));
    let backend: SharedBackend = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    // A check may take up to the read timeout on Redis; never longer than the interval.
    let check_timeout = el
        .redis
        .read_timeout
        .max(Duration::from_secs(2))
        .min(el.redis.health_check_interval.max(Duration::from_secs(1)));
    let monitor = spawn_monitor(
        inner.clone(),
        health.clone(),
        el.redis.health_check_interval,
        check_timeout,
    );
    Ok(Opened {
        backend,
        inner,
        health,
        description,
        redis,
        monitor,
    })
}
