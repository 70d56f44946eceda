//! What the Redis fault tests share: a [`GuardedBackend`] with its health monitor
//! running, as `tflock server` runs them.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{SharedBackend, SystemClock};
use tflock_health::{BreakerSettings, GuardedBackend, Health, spawn_monitor};
use tflock_redis::RedisConfig;

/// A running health monitor, aborted when dropped.
pub struct Monitor(tokio::task::JoinHandle<()>);

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Guards `inner` with a breaker of `breaker` and starts the monitor: a check every
/// `interval`, each bounded by `check_timeout`.
pub fn guard(
    inner: SharedBackend,
    breaker: BreakerSettings,
    interval: Duration,
    check_timeout: Duration,
) -> (Arc<GuardedBackend>, Arc<Health>, Monitor) {
    let health = Arc::new(Health::new("redis", breaker, true, Arc::new(SystemClock)));
    let guarded = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    let monitor = spawn_monitor(inner, health.clone(), interval, check_timeout);
    (guarded, health, Monitor(monitor))
}

/// The standalone `addr` with every timeout `timeout` and one quick connection retry:
/// a fault test's calls fail fast, so a breaker sees them within its bounds.
pub fn fast_failing_redis(addr: String, timeout: Duration) -> RedisConfig {
    RedisConfig {
        read_timeout: timeout,
        write_timeout: timeout,
        connection_timeout: timeout,
        dial_timeout: timeout,
        pool_timeout: timeout,
        max_retries: 1,
        min_retry_backoff: Duration::from_millis(10),
        max_retry_backoff: Duration::from_millis(50),
        ..RedisConfig::standalone(addr)
    }
}
